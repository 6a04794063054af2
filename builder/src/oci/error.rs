//! The ways an image can be refused, as data (so callers and tests can tell them apart).
//!
//! Each error names the blob or entry at fault; the image it belongs to is added as context by
//! the reader (`reading image oci-archive:/srv/api.tar:1`).

use super::digest::Digest;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("{what} {expected} has the wrong content: its bytes hash to {actual}")]
    DigestMismatch { what: String, expected: Digest, actual: Digest },
    #[error("{what} {digest} is {actual} bytes, but its descriptor says {expected}")]
    SizeMismatch { what: String, digest: Digest, expected: u64, actual: u64 },
    #[error("{what} {digest} declares {size} bytes, more than the limit of {limit} bytes")]
    TooLarge { what: String, digest: String, size: u64, limit: u64 },
    #[error("{what} {digest} has media type `{media_type}`, which airlock does not handle")]
    UnknownMediaType { what: String, digest: String, media_type: String },
    #[error("{what} {digest} is not in the image (looked for `{location}`)")]
    MissingBlob { what: String, digest: Digest, location: String },
    #[error("no {wanted} image: the index offers {offered}")]
    NoMatchingPlatform { wanted: String, offered: String },
    #[error("the image is for {actual}, not {wanted}")]
    WrongPlatform { wanted: String, actual: String },
    #[error("archive entry `{entry}`: {problem}")]
    ArchiveEntry { entry: String, problem: String },
    #[error("{0}")]
    Invalid(String),
}
