//! Content digests: `sha256:<64 lowercase hex>`, and hashing while bytes stream past.
//!
//! Only SHA-256 is accepted. It is what every registry, `docker save` and skopeo produce, and
//! refusing the rest keeps blob file names (`sha256/<hex>`) trivially safe: 64 hex characters
//! can never form a path component like `..`.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::{self, Read};

/// A SHA-256 content digest.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    /// 64 lowercase hex characters (checked by every constructor).
    hex: String,
}

/// Why a string is not a digest airlock accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest `{0}` does not use sha256 (the only algorithm airlock accepts)")]
    NotSha256(String),
    #[error("digest `{0}` is not `sha256:` followed by 64 lowercase hex characters")]
    Malformed(String),
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`; anything else (other algorithms, uppercase hex, a
    /// wrong length, surrounding whitespace) is refused.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(DigestError::Malformed(s.to_string()));
        };
        if algorithm != "sha256" {
            return Err(DigestError::NotSha256(s.to_string()));
        }
        Self::from_hex(hex).map_err(|_| DigestError::Malformed(s.to_string()))
    }

    /// A digest from its 64 lowercase hex characters (as in `blobs/sha256/<hex>`).
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err(DigestError::Malformed(format!("sha256:{hex}")));
        }
        Ok(Self { hex: hex.to_string() })
    }

    /// The digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(hasher: Sha256) -> Self {
        Self { hex: hex::encode(hasher.finalize()) }
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The digest in oci-spec's type, for building manifests.
    pub fn to_oci(&self) -> oci_spec::image::Digest {
        // Our digests are always valid sha256 digests, which oci-spec accepts.
        oci_spec::image::Digest::try_from(self.to_string()).expect("a valid sha256 digest is a valid OCI digest")
    }

    /// Converts oci-spec's digest (which admits any registered algorithm) into ours.
    pub fn from_oci(d: &oci_spec::image::Digest) -> Result<Self, DigestError> {
        Self::parse(d.as_ref())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A [`Read`] adaptor that hashes and counts every byte read through it.
#[derive(Debug)]
pub struct DigestingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> DigestingReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new(), len: 0 }
    }

    /// The digest and length of everything read.
    pub fn finish(self) -> (Digest, u64) {
        (Digest::from_hasher(self.hasher), self.len)
    }
}

impl<R: Read> Read for DigestingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_sha256() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Digest::of_bytes(b""));
        assert_eq!(Digest::from_oci(&d.to_oci()).unwrap(), d);
    }

    #[test]
    fn refuses_everything_else() {
        let hex = &EMPTY[7..];
        for bad in [
            String::new(),
            hex.to_string(),
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha256:{}", &hex[1..]),
            format!("sha256:{hex}0"),
            format!("sha256: {}", &hex[1..]),
            format!("sha256:{}/..", &hex[3..]),
            format!(" sha256:{hex}"),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad}");
        }
        assert!(matches!(Digest::parse(&format!("sha512:{hex}{hex}")), Err(DigestError::NotSha256(_))));
    }

    #[test]
    fn digesting_reader_hashes_what_passes() {
        let mut r = DigestingReader::new(&b"hello"[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        let (d, len) = r.finish();
        assert_eq!(len, 5);
        assert_eq!(d, Digest::of_bytes(b"hello"));
    }
}
