//! Byte sizes as users write them (`512MiB`, `2G`, `4096`), parsed and printed.

use std::fmt;
use std::str::FromStr;

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;
pub const TIB: u64 = 1024 * GIB;

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid size `{input}`: {why} (examples: 4096, 512MiB, 2GiB, 1.5G)")]
pub struct SizeError {
    input: String,
    why: &'static str,
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(input: &str) -> Result<Self, SizeError> {
        let err = |why| SizeError { input: input.to_string(), why };
        let s = input.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        if number.is_empty() {
            return Err(err("no number"));
        }
        let multiplier = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" | "k" => KIB,
            "M" | "MiB" => MIB,
            "G" | "GiB" => GIB,
            "T" | "TiB" => 1024 * GIB,
            "KB" | "kB" => 1000,
            "MB" => 1000 * 1000,
            "GB" => 1000 * 1000 * 1000,
            "TB" => 1000 * 1000 * 1000 * 1000,
            _ => return Err(err("unknown unit")),
        };
        let bytes = if let Some((whole, frac)) = number.split_once('.') {
            let whole: u64 = whole.parse().map_err(|_| err("bad number"))?;
            if frac.is_empty() || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("bad fraction"));
            }
            let scale = 10u64.pow(frac.len() as u32);
            let frac: u64 = frac.parse().map_err(|_| err("bad fraction"))?;
            let whole_bytes = whole.checked_mul(multiplier).ok_or_else(|| err("too large"))?;
            let frac_bytes = (u128::from(frac) * u128::from(multiplier) / u128::from(scale)) as u64;
            whole_bytes.checked_add(frac_bytes).ok_or_else(|| err("too large"))?
        } else {
            let n: u64 = number.parse().map_err(|_| err("bad number"))?;
            n.checked_mul(multiplier).ok_or_else(|| err("too large"))?
        };
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    /// Exact when the size is a whole number of a binary unit, otherwise one decimal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, name) in
            [(1024 * 1024 * TIB, "EiB"), (1024 * TIB, "PiB"), (TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")]
        {
            if b >= unit {
                return if b % unit == 0 {
                    write!(f, "{}{name}", b / unit)
                } else {
                    write!(f, "{:.1}{name}", b as f64 / unit as f64)
                };
            }
        }
        write!(f, "{b}B")
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    /// Accepts a string with a unit (`"512MiB"`) or a plain integer of bytes.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(ByteSize(b)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
        assert_eq!("512MiB".parse(), Ok(ByteSize(512 * MIB)));
        assert_eq!("2G".parse(), Ok(ByteSize(2 * GIB)));
        assert_eq!("1.5GiB".parse(), Ok(ByteSize(3 * GIB / 2)));
        assert_eq!("10MB".parse(), Ok(ByteSize(10_000_000)));
    }

    #[test]
    fn rejects_garbage() {
        assert!("".parse::<ByteSize>().is_err());
        assert!("MiB".parse::<ByteSize>().is_err());
        assert!("12XB".parse::<ByteSize>().is_err());
        assert!("99999999999999999999".parse::<ByteSize>().is_err());
        assert!("1.".parse::<ByteSize>().is_err());
    }

    #[test]
    fn displays_exact_or_rounded() {
        assert_eq!(ByteSize(512 * MIB).to_string(), "512MiB");
        assert_eq!(ByteSize(3 * GIB / 2).to_string(), "1.5GiB");
        assert_eq!(ByteSize(100).to_string(), "100B");
        assert_eq!(ByteSize(16 * TIB).to_string(), "16TiB");
        assert_eq!(ByteSize(u64::MAX).to_string(), "16.0EiB");
    }
}
