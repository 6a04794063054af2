//! Deterministic identifiers derived from the build seed.
//!
//! Every GUID, volume id and hash seed in an image comes from here, so that two builds with the
//! same seed produce the same bytes. Each value is `SHA-256("airlock\0" || seed || "\0" || purpose)`,
//! cut to size; distinct purposes give independent values.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The build seed: a user-chosen string (for example the appliance name and version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed(String);

impl Seed {
    pub fn new(seed: impl Into<String>) -> Self {
        Self(seed.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// 32 bytes owned by `purpose` (for example `"gpt-disk"` or `"ext4-root-hash-seed"`).
    pub fn bytes(&self, purpose: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"airlock\0");
        hasher.update(self.0.as_bytes());
        hasher.update(b"\0");
        hasher.update(purpose.as_bytes());
        let digest = hasher.finalize();
        let mut out = [0u8; 32];
        out.copy_from_slice(&digest);
        out
    }

    /// A random-looking (RFC 9562 version 4 layout) UUID owned by `purpose`.
    pub fn uuid(&self, purpose: &str) -> Uuid {
        let bytes = self.bytes(purpose);
        let mut raw = [0u8; 16];
        raw.copy_from_slice(&bytes[..16]);
        uuid::Builder::from_random_bytes(raw).into_uuid()
    }

    /// A 32-bit value owned by `purpose` (FAT volume ids, hash seeds).
    pub fn u32(&self, purpose: &str) -> u32 {
        let bytes = self.bytes(purpose);
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_and_purposes_are_independent() {
        let a = Seed::new("demo");
        let b = Seed::new("demo");
        assert_eq!(a.uuid("gpt-disk"), b.uuid("gpt-disk"));
        assert_ne!(a.uuid("gpt-disk"), a.uuid("gpt-esp"));
        assert_ne!(a.uuid("gpt-disk"), Seed::new("demo2").uuid("gpt-disk"));
        assert_eq!(a.uuid("x").get_version_num(), 4);
    }

    #[test]
    fn seed_and_purpose_boundary_is_unambiguous() {
        // "ab" + "c" must not collide with "a" + "bc".
        assert_ne!(Seed::new("ab").bytes("c"), Seed::new("a").bytes("bc"));
    }
}
