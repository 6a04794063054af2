//! The journal (inode 8): its size, and the jbd2 superblock of an empty, clean journal.
//!
//! Only the superblock is written; the journal's other blocks stay zero. `s_start = 0` says
//! there is nothing to replay.

use super::csum::crc32c;

const JBD2_MAGIC: u32 = 0xC03B_3998;
const JBD2_SUPERBLOCK_V2: u32 = 4;
/// Journal block numbers are 64-bit, as on every `64bit` filesystem once mounted.
const JBD2_INCOMPAT_64BIT: u32 = 0x2;
/// Checksums v3, which the kernel enables on `metadata_csum` filesystems anyway.
const JBD2_INCOMPAT_CSUM_V3: u32 = 0x10;
const JBD2_CRC32C: u8 = 4;
/// jbd2 refuses journals shorter than this.
pub(crate) const MIN_BLOCKS: u64 = 1024;

/// Journal size for a filesystem of `fs_blocks` blocks: mke2fs' table, but never without a
/// journal.
pub(crate) fn default_blocks(fs_blocks: u64) -> u64 {
    // (filesystem blocks below which, journal blocks), from 128 MiB and 4 MiB up.
    const TABLE: [(u64, u64); 7] = [
        (32_768, MIN_BLOCKS),
        (262_144, 4096),
        (524_288, 8192),
        (4_194_304, 16_384),
        (8_388_608, 32_768),
        (16_777_216, 65_536),
        (33_554_432, 131_072),
    ];
    TABLE.iter().find(|&&(below, _)| fs_blocks < below).map_or(262_144, |&(_, journal)| journal)
}

/// The next smaller journal size of the table, down to the minimum: what a filesystem too
/// tight for its default journal gets instead.
pub(crate) fn smaller(blocks: u64) -> Option<u64> {
    [131_072, 65_536, 32_768, 16_384, 8192, 4096, MIN_BLOCKS].into_iter().find(|&b| b < blocks)
}

/// The jbd2 superblock (big-endian, unlike the rest of ext4) of a journal of `blocks` blocks of
/// `block_size` bytes (the filesystem's: the layout asks this module for the journal's size, so
/// the block size is handed down rather than imported back).
pub(crate) fn superblock(blocks: u32, block_size: u32, uuid: &[u8; 16]) -> [u8; 1024] {
    let mut sb = [0u8; 1024];
    let mut put = |off: usize, v: u32| sb[off..off + 4].copy_from_slice(&v.to_be_bytes());
    put(0x00, JBD2_MAGIC);
    put(0x04, JBD2_SUPERBLOCK_V2);
    put(0x0C, block_size);
    put(0x10, blocks);
    put(0x14, 1); // s_first: the first log block, right after this superblock
    put(0x18, 1); // s_sequence: the first transaction id
    put(0x28, JBD2_INCOMPAT_64BIT | JBD2_INCOMPAT_CSUM_V3);
    put(0x40, 1); // s_nr_users: the filesystem itself
    sb[0x30..0x40].copy_from_slice(uuid);
    sb[0x50] = JBD2_CRC32C;
    // Computed with the checksum field still zero, as jbd2 verifies it.
    let csum = crc32c(!0, &sb);
    sb[0xFC..0x100].copy_from_slice(&csum.to_be_bytes());
    sb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_mke2fs() {
        assert_eq!(default_blocks(2048), 1024);
        assert_eq!(default_blocks(51_200), 4096);
        assert_eq!(default_blocks(1 << 30), 262_144);
        assert_eq!(smaller(4096), Some(1024));
        assert_eq!(smaller(1024), None);
    }

    #[test]
    fn superblock_fields() {
        let sb = superblock(4096, 4096, &[7; 16]);
        assert_eq!(&sb[0x0C..0x10], &4096u32.to_be_bytes());
        assert_eq!(&sb[..4], &[0xC0, 0x3B, 0x39, 0x98]);
        assert_eq!(&sb[0x10..0x14], &4096u32.to_be_bytes());
        let mut zeroed = sb;
        zeroed[0xFC..0x100].fill(0);
        assert_eq!(sb[0xFC..0x100], crc32c(!0, &zeroed).to_be_bytes());
    }
}
