//! Upper bounds on what an image may declare, checked before anything is read.
//!
//! Descriptors come from the image itself, so a hostile one can claim any size; these caps stop
//! a build from filling the disk or memory on the strength of a number in a JSON file.

use super::error::ImageError;
use std::fmt::Display;

/// Size caps for blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest layer (or any other blob) accepted, in bytes.
    pub max_blob_size: u64,
    /// Largest JSON document (index, manifest, config, `manifest.json`) accepted, in bytes. These
    /// are read into memory.
    pub max_json_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_blob_size: 64 << 30, max_json_size: 4 << 20 }
    }
}

impl Limits {
    /// Refuses a blob larger than [`Limits::max_blob_size`].
    pub fn check_blob(&self, what: &str, digest: &dyn Display, size: u64) -> Result<(), ImageError> {
        check(what, digest.to_string(), size, self.max_blob_size)
    }

    /// Refuses a JSON document larger than [`Limits::max_json_size`].
    pub fn check_json(&self, what: &str, digest: &dyn Display, size: u64) -> Result<(), ImageError> {
        check(what, digest.to_string(), size, self.max_json_size)
    }
}

fn check(what: &str, digest: String, size: u64, limit: u64) -> Result<(), ImageError> {
    if size > limit {
        return Err(ImageError::TooLarge { what: what.to_string(), digest, size, limit });
    }
    Ok(())
}
