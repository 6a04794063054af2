//! FAT's packed local-time dates and times, written as UTC.
//!
//! A FAT date counts years from 1980 in 7 bits, so it can say 1980-01-01 through 2107-12-31;
//! times have two-second resolution, plus a creation field in 10 ms units for the rest. FAT has
//! no time zone: we write UTC, as the UEFI firmware and Linux's default `tz=UTC` mounts read it.

use crate::tree::Timestamp;

/// One instant as FAT stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FatTime {
    /// Bits 15-9 years since 1980, 8-5 month, 4-0 day.
    pub date: u16,
    /// Bits 15-11 hours, 10-5 minutes, 4-0 seconds / 2.
    pub time: u16,
    /// 10 ms units (0..=199) past `time`: the odd second and the fraction. Only the creation
    /// time has room for it.
    pub hundredths: u8,
}

const SECS_PER_DAY: i64 = 86_400;
/// 1980-01-01T00:00:00Z, the earliest instant FAT can store.
const FAT_FIRST_SEC: i64 = days_from_civil(1980, 1, 1) * SECS_PER_DAY;
/// 2107-12-31T23:59:59Z, the last second FAT can store.
const FAT_LAST_SEC: i64 = days_from_civil(2108, 1, 1) * SECS_PER_DAY - 1;

impl FatTime {
    /// `ts` in FAT form, clamped into the range FAT can store.
    pub fn from_timestamp(ts: Timestamp) -> Self {
        let (secs, nanos) = if ts.secs < FAT_FIRST_SEC {
            (FAT_FIRST_SEC, 0)
        } else if ts.secs > FAT_LAST_SEC {
            (FAT_LAST_SEC, 999_999_999)
        } else {
            // A malformed `nanos` past one second must not spill into the next field.
            (ts.secs, ts.nanos.min(999_999_999))
        };
        let days = secs.div_euclid(SECS_PER_DAY);
        let in_day = secs.rem_euclid(SECS_PER_DAY);
        let (year, month, day) = crate::clock::civil_from_days(days);
        let (hour, minute, second) = (in_day / 3600, in_day / 60 % 60, in_day % 60);
        // The clamp above keeps every field inside its bit width, so the casts are exact.
        let date = (((year - 1980) as u16) << 9) | ((month as u16) << 5) | day as u16;
        let time = ((hour as u16) << 11) | ((minute as u16) << 5) | (second / 2) as u16;
        let hundredths = ((second % 2) * 100) as u8 + (nanos / 10_000_000) as u8;
        Self { date, time, hundredths }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
const fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fat(secs: i64, nanos: u32) -> FatTime {
        FatTime::from_timestamp(Timestamp { secs, nanos })
    }

    fn unpack(t: FatTime) -> (u16, u16, u16, u16, u16, u16, u8) {
        (
            1980 + (t.date >> 9),
            (t.date >> 5) & 15,
            t.date & 31,
            t.time >> 11,
            (t.time >> 5) & 63,
            (t.time & 31) * 2,
            t.hundredths,
        )
    }

    #[test]
    fn civil_round_trips() {
        for days in [-719_468, -1, 0, 1, 3652, 11_016, 19_782, 50_000, 2_932_896] {
            let (y, m, d) = crate::clock::civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(crate::clock::civil_from_days(0), (1970, 1, 1));
        assert_eq!(crate::clock::civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn converts_known_instants() {
        // 2023-11-14T22:13:20Z
        assert_eq!(unpack(fat(1_700_000_000, 0)), (2023, 11, 14, 22, 13, 20, 0));
        // An odd second and a fraction land in the 10 ms field.
        assert_eq!(unpack(fat(1_700_000_001, 250_000_000)), (2023, 11, 14, 22, 13, 20, 125));
        // 2000-02-29T23:59:59Z, a leap day.
        assert_eq!(unpack(fat(951_868_799, 0)), (2000, 2, 29, 23, 59, 58, 100));
    }

    #[test]
    fn clamps_to_fat_range() {
        assert_eq!(unpack(fat(0, 0)), (1980, 1, 1, 0, 0, 0, 0));
        assert_eq!(unpack(fat(i64::MIN, 5)), (1980, 1, 1, 0, 0, 0, 0));
        assert_eq!(unpack(fat(FAT_FIRST_SEC, 0)).0, 1980);
        let last = (2107, 12, 31, 23, 59, 58, 199);
        assert_eq!(unpack(fat(FAT_LAST_SEC, 999_999_999)), last);
        assert_eq!(unpack(fat(FAT_LAST_SEC + 1, 0)), last);
        assert_eq!(unpack(fat(i64::MAX, 0)), last);
        assert_eq!(FAT_FIRST_SEC, 315_532_800);
    }

    #[test]
    fn bad_nanos_do_not_overflow_the_field() {
        assert_eq!(fat(1_700_000_001, u32::MAX).hundredths, 199);
    }
}
