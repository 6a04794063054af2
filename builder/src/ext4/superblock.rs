//! The superblock (primary and `sparse_super` backups) and the group descriptor table.

use super::csum::crc32c;
use super::layout::{BLOCKS_PER_GROUP, DESC_SIZE, Geometry};
use super::plan::JOURNAL_INO;

const MAGIC: u16 = 0xEF53;

const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_EXT_ATTR: u32 = 0x8;
const COMPAT_DIR_INDEX: u32 = 0x20;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_LARGE_FILE: u32 = 0x2;
const RO_COMPAT_HUGE_FILE: u32 = 0x8;
const RO_COMPAT_DIR_NLINK: u32 = 0x20;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

pub(crate) const FEATURE_COMPAT: u32 = COMPAT_HAS_JOURNAL | COMPAT_EXT_ATTR | COMPAT_DIR_INDEX;
pub(crate) const FEATURE_INCOMPAT: u32 = INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG;
pub(crate) const FEATURE_RO_COMPAT: u32 = RO_COMPAT_SPARSE_SUPER
    | RO_COMPAT_LARGE_FILE
    | RO_COMPAT_HUGE_FILE
    | RO_COMPAT_DIR_NLINK
    | RO_COMPAT_EXTRA_ISIZE
    | RO_COMPAT_METADATA_CSUM;

/// mke2fs' flex group size: 16 groups. It only steers the kernel's later allocations; where
/// the tables are is recorded in each descriptor.
const LOG_GROUPS_PER_FLEX: u8 = 4;
/// `user_xattr` and `acl` on by default, as mke2fs sets.
const DEFAULT_MOUNT_OPTS: u32 = 0x0004 | 0x0008;
/// Directory hashes treat name bytes as unsigned, whatever the build host's `char`.
const FLAGS_UNSIGNED_HASH: u32 = 0x2;
const DX_HASH_HALF_MD4: u8 = 1;
/// The journal inode's block map is backed up in the superblock.
const JNL_BACKUP_BLOCKS: u8 = 1;
const CHECKSUM_CRC32C: u8 = 1;

pub(crate) const BG_INODE_ZEROED: u16 = 0x4;

/// Everything the superblock records that is not fixed.
#[derive(Debug, Clone)]
pub(crate) struct Superblock<'a> {
    pub(crate) geo: &'a Geometry,
    pub(crate) free_blocks: u64,
    pub(crate) free_inodes: u32,
    pub(crate) reserved_blocks: u64,
    pub(crate) uuid: [u8; 16],
    pub(crate) label: &'a [u8],
    pub(crate) hash_seed: [u8; 16],
    /// Creation, write and check time (seconds since the Unix epoch).
    pub(crate) time: i64,
    /// The journal inode's `i_block` and size, backed up here for e2fsck.
    pub(crate) journal_i_block: [u8; 60],
    pub(crate) journal_size: u64,
}

impl Superblock<'_> {
    /// The 1024-byte superblock as stored in group `group`.
    pub(crate) fn encode(&self, group: u32) -> [u8; 1024] {
        let geo = self.geo;
        let mut sb = [0u8; 1024];
        let put32 = |sb: &mut [u8; 1024], off: usize, v: u32| sb[off..off + 4].copy_from_slice(&v.to_le_bytes());
        let put16 = |sb: &mut [u8; 1024], off: usize, v: u16| sb[off..off + 2].copy_from_slice(&v.to_le_bytes());
        put32(&mut sb, 0x00, geo.inodes());
        put32(&mut sb, 0x04, geo.blocks as u32);
        put32(&mut sb, 0x08, self.reserved_blocks as u32);
        put32(&mut sb, 0x0C, self.free_blocks as u32);
        put32(&mut sb, 0x10, self.free_inodes);
        put32(&mut sb, 0x14, 0); // s_first_data_block: 0 with 4 KiB blocks
        put32(&mut sb, 0x18, 2); // s_log_block_size: 1024 << 2
        put32(&mut sb, 0x1C, 2); // s_log_cluster_size
        put32(&mut sb, 0x20, BLOCKS_PER_GROUP as u32);
        put32(&mut sb, 0x24, BLOCKS_PER_GROUP as u32);
        put32(&mut sb, 0x28, geo.inodes_per_group);
        // Superblock times are unsigned, with 8 more high bits at 0x274.
        let time = self.time.clamp(0, (1 << 40) - 1) as u64;
        put32(&mut sb, 0x30, time as u32); // s_wtime
        put16(&mut sb, 0x36, u16::MAX); // s_max_mnt_count: -1, no mount-count checks
        put16(&mut sb, 0x38, MAGIC);
        put16(&mut sb, 0x3A, 1); // s_state: clean
        put16(&mut sb, 0x3C, 1); // s_errors: continue
        put32(&mut sb, 0x40, time as u32); // s_lastcheck
        put32(&mut sb, 0x4C, 1); // s_rev_level: dynamic
        put32(&mut sb, 0x54, super::layout::FIRST_INO);
        put16(&mut sb, 0x58, super::layout::INODE_SIZE as u16);
        put16(&mut sb, 0x5A, group as u16);
        put32(&mut sb, 0x5C, FEATURE_COMPAT);
        put32(&mut sb, 0x60, FEATURE_INCOMPAT);
        put32(&mut sb, 0x64, FEATURE_RO_COMPAT);
        sb[0x68..0x78].copy_from_slice(&self.uuid);
        sb[0x78..0x78 + self.label.len()].copy_from_slice(self.label);
        put32(&mut sb, 0xE0, JOURNAL_INO);
        sb[0xEC..0xFC].copy_from_slice(&self.hash_seed);
        sb[0xFC] = DX_HASH_HALF_MD4;
        sb[0xFD] = JNL_BACKUP_BLOCKS;
        put16(&mut sb, 0xFE, DESC_SIZE as u16);
        put32(&mut sb, 0x100, DEFAULT_MOUNT_OPTS);
        put32(&mut sb, 0x108, time as u32); // s_mkfs_time
        // s_jnl_blocks: i_block, then i_size_high and i_size.
        sb[0x10C..0x148].copy_from_slice(&self.journal_i_block);
        put32(&mut sb, 0x148, (self.journal_size >> 32) as u32);
        put32(&mut sb, 0x14C, self.journal_size as u32);
        put32(&mut sb, 0x150, (geo.blocks >> 32) as u32);
        put32(&mut sb, 0x154, (self.reserved_blocks >> 32) as u32);
        put32(&mut sb, 0x158, (self.free_blocks >> 32) as u32);
        put16(&mut sb, 0x15C, 32); // s_min_extra_isize
        put16(&mut sb, 0x15E, 32); // s_want_extra_isize
        put32(&mut sb, 0x160, FLAGS_UNSIGNED_HASH);
        sb[0x174] = LOG_GROUPS_PER_FLEX;
        sb[0x175] = CHECKSUM_CRC32C;
        let time_hi = (time >> 32) as u8;
        sb[0x274] = time_hi; // s_wtime_hi
        sb[0x276] = time_hi; // s_mkfs_time_hi
        sb[0x277] = time_hi; // s_lastcheck_hi
        let csum = crc32c(!0, &sb[..0x3FC]);
        put32(&mut sb, 0x3FC, csum);
        sb
    }
}

/// One group's descriptor.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GroupDesc {
    pub(crate) block_bitmap: u64,
    pub(crate) inode_bitmap: u64,
    pub(crate) inode_table: u64,
    pub(crate) free_blocks: u32,
    pub(crate) free_inodes: u32,
    pub(crate) used_dirs: u32,
    pub(crate) flags: u16,
    pub(crate) block_bitmap_csum: u32,
    pub(crate) inode_bitmap_csum: u32,
    pub(crate) itable_unused: u32,
}

impl GroupDesc {
    /// The 64-byte descriptor of group `group`, checksummed with the filesystem seed.
    pub(crate) fn encode(&self, group: u32, fs_seed: u32) -> [u8; DESC_SIZE] {
        let mut d = [0u8; DESC_SIZE];
        let put32 = |d: &mut [u8; DESC_SIZE], off: usize, v: u32| d[off..off + 4].copy_from_slice(&v.to_le_bytes());
        let put16 = |d: &mut [u8; DESC_SIZE], off: usize, v: u16| d[off..off + 2].copy_from_slice(&v.to_le_bytes());
        put32(&mut d, 0x00, self.block_bitmap as u32);
        put32(&mut d, 0x04, self.inode_bitmap as u32);
        put32(&mut d, 0x08, self.inode_table as u32);
        put16(&mut d, 0x0C, self.free_blocks as u16);
        put16(&mut d, 0x0E, self.free_inodes as u16);
        put16(&mut d, 0x10, self.used_dirs as u16);
        put16(&mut d, 0x12, self.flags);
        put16(&mut d, 0x18, self.block_bitmap_csum as u16);
        put16(&mut d, 0x1A, self.inode_bitmap_csum as u16);
        put16(&mut d, 0x1C, self.itable_unused as u16);
        put32(&mut d, 0x20, (self.block_bitmap >> 32) as u32);
        put32(&mut d, 0x24, (self.inode_bitmap >> 32) as u32);
        put32(&mut d, 0x28, (self.inode_table >> 32) as u32);
        put16(&mut d, 0x2C, (self.free_blocks >> 16) as u16);
        put16(&mut d, 0x2E, (self.free_inodes >> 16) as u16);
        put16(&mut d, 0x30, (self.used_dirs >> 16) as u16);
        put16(&mut d, 0x32, (self.itable_unused >> 16) as u16);
        put16(&mut d, 0x38, (self.block_bitmap_csum >> 16) as u16);
        put16(&mut d, 0x3A, (self.inode_bitmap_csum >> 16) as u16);
        // Checksummed with bg_checksum still zero; only the low 16 bits are kept.
        let csum = crc32c(crc32c(fs_seed, &group.to_le_bytes()), &d);
        put16(&mut d, 0x1E, csum as u16);
        d
    }
}
