//! The updater's settings an image carries (`/usr/lib/airlock/update.toml`, in the verified
//! root): written by the builder from the spec's `[update]`, read by the appliance's updater.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where the image carries its settings.
pub const PATH: &str = "/usr/lib/airlock/update.toml";
/// Boots a new version gets to become ready before systemd-boot falls back.
pub const DEFAULT_TRIES: u32 = 3;
/// How long a boot of a new version may take to reach `airlock-ready.target`.
pub const DEFAULT_DEADLINE_SECONDS: u64 = 30 * 60;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    pub tries: u32,
    pub deadline_seconds: u64,
    /// The stack's state directories (absolute, under `/var`), saved before a new version
    /// first starts the stack and restored if it rolls back.
    pub state: Vec<String>,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig { tries: DEFAULT_TRIES, deadline_seconds: DEFAULT_DEADLINE_SECONDS, state: Vec::new() }
    }
}

impl UpdateConfig {
    pub fn to_toml(&self) -> Result<String> {
        let body = toml::to_string(self).context("encoding the update settings")?;
        Ok(format!("# Written by airlock build from the spec's [update]: the updater's settings.\n{body}"))
    }

    pub fn parse(text: &str, origin: &str) -> Result<UpdateConfig> {
        toml::from_str(text).with_context(|| format!("reading {origin}"))
    }

    /// The settings at `path`; an image without the file has the defaults.
    pub fn read(path: &Path) -> Result<UpdateConfig> {
        match crate::input_file::read_capped_text(path, 64 << 10, "update settings") {
            Ok(text) => Self::parse(&text, &path.display().to_string()),
            Err(_) if !path.exists() => Ok(UpdateConfig::default()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_keys() {
        let c = UpdateConfig { tries: 2, deadline_seconds: 600, state: vec!["/var/lib/db".into()] };
        assert_eq!(UpdateConfig::parse(&c.to_toml().unwrap(), "t").unwrap(), c);
        assert!(UpdateConfig::parse("tries = 1\ndeadline_seconds = 5\nstate = []\nreboot = 1\n", "t").is_err());
        assert_eq!(UpdateConfig::read(Path::new("/nonexistent/update.toml")).unwrap(), UpdateConfig::default());
    }
}
