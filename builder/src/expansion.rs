//! How far a compressed input may expand before airlock stops reading it.
//!
//! A gzip of 18 MB inflates to 4 GiB; a GNU sparse tar of 10 KB declares a 3 GiB file. Every
//! decompression and sparse expansion of an input is bounded twice, before the bytes are
//! written anywhere:
//! - by what the destination can hold (the partition or disk the tree goes to, the image size
//!   a manifest states): more cannot fit, so reading on is wasted disk and time;
//! - by a ratio, [`MAX_RATIO`] times the compressed size (with [`RATIO_FLOOR`] for small
//!   inputs): real archives (root filesystems, container layers, kernels) stay far below it,
//!   bombs far above. An input that truly expands further is unpacked by hand and given as a
//!   folder.

use crate::size::{ByteSize, MIB};
use std::io::{self, Read, Write};

/// The most a compressed input may expand, as a multiple of its compressed size. Debian root
/// filesystems compress about 3–4:1, container layers about 3:1, kernels and initrds not at all.
pub const MAX_RATIO: u64 = 100;

/// Inputs may always expand to this much, whatever their ratio (a small archive of a few
/// zero-filled files is legitimate and harmless).
pub const RATIO_FLOOR: u64 = 64 * MIB;

/// The bound for one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpansionLimit {
    /// What the destination can hold.
    pub capacity: u64,
}

impl ExpansionLimit {
    /// A destination that holds `capacity` bytes.
    pub fn capacity(capacity: u64) -> Self {
        Self { capacity }
    }

    /// No destination bound (only the ratio applies): for inputs that do not go to an image.
    pub fn ratio_only() -> Self {
        Self { capacity: u64::MAX }
    }

    /// The most an input of `compressed` bytes may expand to.
    pub fn bound(&self, compressed: u64) -> u64 {
        self.capacity.min(compressed.saturating_mul(MAX_RATIO).max(RATIO_FLOOR))
    }

    /// Why `bound(compressed)` stopped an input, for its error.
    pub fn explain(&self, compressed: u64) -> String {
        let by_ratio = compressed.saturating_mul(MAX_RATIO).max(RATIO_FLOOR);
        if self.capacity <= by_ratio {
            format!("more than its destination holds ({})", ByteSize(self.capacity))
        } else {
            format!(
                "more than {MAX_RATIO} times its compressed size of {} ({}); a real archive does not, a \
                 decompression bomb does (unpack it yourself and give the folder if it is genuine)",
                ByteSize(compressed),
                ByteSize(by_ratio)
            )
        }
    }
}

/// The error of a stream stopped at its bound.
#[derive(Debug, thiserror::Error)]
#[error("expands to {why}")]
pub struct TooLarge {
    pub why: String,
}

/// Copies `reader` into `out`, failing with [`TooLarge`] (inside an `io::Error` of kind
/// `Other`) as soon as more than `bound` bytes come out. Returns the bytes copied.
pub fn copy_bounded(reader: impl Read, out: &mut impl Write, bound: u64, why: impl Fn() -> String) -> io::Result<u64> {
    let mut limited = reader.take(bound.saturating_add(1));
    let copied = io::copy(&mut limited, out)?;
    if copied > bound {
        return Err(io::Error::other(TooLarge { why: why() }));
    }
    Ok(copied)
}

/// The [`TooLarge`] inside an I/O error, if that is what stopped a copy.
pub fn too_large(e: &io::Error) -> Option<&TooLarge> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<TooLarge>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_take_the_smaller_of_capacity_and_ratio() {
        let l = ExpansionLimit::capacity(10 * MIB);
        assert_eq!(l.bound(1), 10 * MIB);
        let l = ExpansionLimit::capacity(u64::MAX);
        assert_eq!(l.bound(1), RATIO_FLOOR);
        assert_eq!(l.bound(10 * MIB), 1000 * MIB);
        assert_eq!(l.bound(u64::MAX), u64::MAX);
        assert!(l.explain(10 * MIB).contains("100 times its compressed size of 10MiB"));
        assert!(ExpansionLimit::capacity(MIB).explain(10 * MIB).contains("its destination holds (1MiB)"));
    }

    #[test]
    fn a_copy_stops_one_byte_past_the_bound() {
        let mut out = Vec::new();
        assert_eq!(copy_bounded(&[7u8; 10][..], &mut out, 10, String::new).unwrap(), 10);
        let mut out = Vec::new();
        let err = copy_bounded(&[7u8; 11][..], &mut out, 10, || "too much".into()).unwrap_err();
        assert_eq!(too_large(&err).unwrap().why, "too much");
        assert_eq!(out.len(), 11, "no more than bound + 1 bytes are read");
    }
}
