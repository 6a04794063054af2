//! ext4's checksum convention (metadata_csum): CRC32c without the final inversion, chained from
//! a seed derived from the filesystem UUID and, for blocks an inode owns, from the inode number.

/// The raw CRC32c register after feeding `data`, starting from `seed` (what the kernel's
/// `ext4_chksum` and e2fsprogs' `ext2fs_crc32c_le` compute). The `crc32c` crate works on
/// finished CRCs, which are the register inverted, hence the two inversions.
pub(crate) fn crc32c(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// The checksum seeds of one filesystem.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Csum {
    fs_seed: u32,
}

impl Csum {
    pub(crate) fn new(uuid: &[u8; 16]) -> Self {
        Self { fs_seed: crc32c(!0, uuid) }
    }

    /// Seed for group descriptors, bitmaps and xattr blocks.
    pub(crate) fn fs_seed(&self) -> u32 {
        self.fs_seed
    }

    /// Seed for an inode and the blocks it owns (extent tree blocks, directory blocks). Every
    /// inode here has generation 0, which is part of the seed.
    pub(crate) fn inode_seed(&self, ino: u32) -> u32 {
        let seed = crc32c(self.fs_seed, &ino.to_le_bytes());
        crc32c(seed, &0u32.to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_register_matches_the_standard_crc() {
        // The standard CRC32c check value of "123456789" is 0xE3069283; the raw register from
        // the all-ones seed is its inverse.
        assert_eq!(crc32c(!0, b"123456789"), !0xE306_9283);
        // Chaining is the same as hashing the concatenation.
        assert_eq!(crc32c(crc32c(7, b"1234"), b"56789"), crc32c(7, b"123456789"));
    }
}
