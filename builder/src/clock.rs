//! The build's clock: `SOURCE_DATE_EPOCH`, and how file timestamps derive from it.

use crate::tree::{Meta, Timestamp};
use anyhow::{Context, Result};

/// Which timestamps a filesystem writer stamps on inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtimePolicy {
    /// Every inode gets the build epoch (the default: inputs' own times do not leak in).
    Epoch,
    /// Keep each node's own mtime, clamped to the build epoch (never later than it).
    KeepClamped,
}

/// The single notion of "now" of one build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildClock {
    pub epoch: i64,
    pub policy: MtimePolicy,
}

impl BuildClock {
    pub fn fixed(epoch: i64) -> Self {
        Self { epoch, policy: MtimePolicy::Epoch }
    }

    /// `SOURCE_DATE_EPOCH` when set (see reproducible-builds.org), else the current time.
    pub fn from_env() -> Result<Self> {
        match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => {
                let epoch = v
                    .trim()
                    .parse::<i64>()
                    .with_context(|| format!("SOURCE_DATE_EPOCH=`{v}` is not a whole number of seconds"))?;
                Ok(Self::fixed(epoch))
            }
            Err(_) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .context("the system clock is before 1970")?;
                Ok(Self::fixed(now.as_secs() as i64))
            }
        }
    }

    pub fn epoch(&self) -> Timestamp {
        Timestamp::from_secs(self.epoch)
    }

    /// The build time as RFC 3339 UTC (`2023-11-14T22:13:20Z`), for manifests and signatures.
    pub fn rfc3339(&self) -> String {
        let days = self.epoch.div_euclid(86_400);
        let secs = self.epoch.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
    }

    /// The timestamp to write for a node with metadata `meta`.
    pub fn stamp(&self, meta: &Meta) -> Timestamp {
        match self.policy {
            MtimePolicy::Epoch => self.epoch(),
            MtimePolicy::KeepClamped => meta.mtime.min(self.epoch()),
        }
    }
}

/// The civil date `(year, month, day)` of a day number since 1970-01-01 (proleptic Gregorian;
/// the inverse of `fat::timestamp::days_from_civil`).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_or_fixes() {
        let mut meta = Meta::root(0o644);
        meta.mtime = Timestamp { secs: 2_000_000_000, nanos: 5 };
        let fixed = BuildClock::fixed(1_700_000_000);
        assert_eq!(fixed.stamp(&meta), Timestamp::from_secs(1_700_000_000));
        let keep = BuildClock { policy: MtimePolicy::KeepClamped, ..fixed };
        assert_eq!(keep.stamp(&meta), Timestamp::from_secs(1_700_000_000));
        meta.mtime = Timestamp { secs: 5, nanos: 7 };
        assert_eq!(keep.stamp(&meta), Timestamp { secs: 5, nanos: 7 });
    }

    #[test]
    fn rfc3339() {
        assert_eq!(BuildClock::fixed(1_700_000_000).rfc3339(), "2023-11-14T22:13:20Z");
        assert_eq!(BuildClock::fixed(0).rfc3339(), "1970-01-01T00:00:00Z");
    }
}
