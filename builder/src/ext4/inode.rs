//! 256-byte inodes: the fields airlock sets, nanosecond timestamps, device numbers, the
//! checksum; and the inode tables they are written to.

use super::csum::Csum;
use super::layout::{BLOCK, Geometry, GroupTables, INODE_SIZE};
use super::xattr::{self, Attr};
use crate::region::Region;
use crate::tree::Timestamp;
use anyhow::{Context, Result};

pub(crate) const EXTENTS_FL: u32 = 0x8_0000;
pub(crate) const INDEX_FL: u32 = 0x1000;
/// Room for the extra fields up to `i_projid`, as mke2fs sets.
const EXTRA_ISIZE: u16 = 32;
const EXTRA_END: usize = 128 + EXTRA_ISIZE as usize;

/// The fields of one inode that airlock sets; everything else stays zero.
#[derive(Debug, Clone)]
pub(crate) struct Inode {
    /// `st_mode`: type and permission bits.
    pub(crate) mode: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) size: u64,
    pub(crate) links: u16,
    /// 4 KiB blocks owned: data, extent tree, xattr block.
    pub(crate) blocks: u64,
    pub(crate) flags: u32,
    pub(crate) i_block: [u8; 60],
    pub(crate) file_acl: u64,
    pub(crate) time: Timestamp,
}

impl Default for Inode {
    fn default() -> Self {
        Self {
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            links: 0,
            blocks: 0,
            flags: 0,
            i_block: [0; 60],
            file_acl: 0,
            time: Timestamp::default(),
        }
    }
}

impl Inode {
    /// The on-disk inode `ino`, with in-inode attributes `inline` and its checksum.
    pub(crate) fn encode(&self, ino: u32, inline: &[Attr<'_>], csum: &Csum) -> [u8; INODE_SIZE] {
        let mut b = [0u8; INODE_SIZE];
        let put16 = |b: &mut [u8; INODE_SIZE], off: usize, v: u16| b[off..off + 2].copy_from_slice(&v.to_le_bytes());
        put16(&mut b, 0x00, self.mode);
        put16(&mut b, 0x02, self.uid as u16);
        put16(&mut b, 0x18, self.gid as u16);
        put16(&mut b, 0x1A, self.links);
        put16(&mut b, 0x74, ((self.blocks * 8) >> 32) as u16);
        put16(&mut b, 0x76, (self.file_acl >> 32) as u16);
        put16(&mut b, 0x78, (self.uid >> 16) as u16);
        put16(&mut b, 0x7A, (self.gid >> 16) as u16);
        put16(&mut b, 0x80, EXTRA_ISIZE);
        let put32 = |b: &mut [u8; INODE_SIZE], off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put32(&mut b, 0x04, self.size as u32);
        put32(&mut b, 0x6C, (self.size >> 32) as u32);
        // i_blocks counts 512-byte sectors (no HUGE_FILE_FL): 48 bits reach far beyond 16 TiB.
        put32(&mut b, 0x1C, (self.blocks * 8) as u32);
        put32(&mut b, 0x20, self.flags);
        put32(&mut b, 0x68, self.file_acl as u32);
        let (secs, extra) = encode_time(self.time);
        // atime, ctime, mtime and crtime are all the same instant.
        for (time_off, extra_off) in [(0x08, 0x8C), (0x0C, 0x84), (0x10, 0x88), (0x90, 0x94)] {
            put32(&mut b, time_off, secs);
            put32(&mut b, extra_off, extra);
        }
        b[0x28..0x64].copy_from_slice(&self.i_block);
        xattr::encode_inline(inline, &mut b[EXTRA_END..]);
        // The checksum covers the whole inode with both checksum fields still zero.
        let sum = super::csum::crc32c(csum.inode_seed(ino), &b);
        put16(&mut b, 0x7C, sum as u16);
        put16(&mut b, 0x82, (sum >> 16) as u16);
        b
    }
}

/// Seconds (low 32 bits, signed) and the extra word: two epoch bits extending the seconds to
/// 34 bits, then the nanoseconds. Times outside 1901..2446 are clamped to that range.
pub(crate) fn encode_time(t: Timestamp) -> (u32, u32) {
    let min = i64::from(i32::MIN);
    let max = i64::from(i32::MAX) + (3 << 32);
    let secs = t.secs.clamp(min, max);
    let low = secs as i32;
    let epoch = ((secs - i64::from(low)) >> 32) as u32 & 3;
    let nanos = t.nanos.min(999_999_999);
    (low as u32, epoch | (nanos << 2))
}

/// `i_block` of a device inode, encoded as the kernel does: the old 16-bit form in word 0 when
/// both numbers fit in a byte, else the new 32-bit form in word 1.
pub(crate) fn device_block(major: u32, minor: u32) -> [u8; 60] {
    let mut i_block = [0u8; 60];
    if major < 256 && minor < 256 {
        let old = (major << 8) | minor;
        i_block[0..4].copy_from_slice(&old.to_le_bytes());
    } else {
        let new = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        i_block[4..8].copy_from_slice(&new.to_le_bytes());
    }
    i_block
}

/// Buffers consecutive inodes and writes them to their group's inode table in runs.
#[derive(Debug)]
pub(crate) struct InodeTables<'a> {
    region: &'a Region<'a>,
    geo: &'a Geometry,
    tables: Vec<GroupTables>,
    first: u32,
    buf: Vec<u8>,
}

/// Flush after this many bytes so memory stays flat however many inodes there are.
const FLUSH_AT: usize = 1 << 20;

impl<'a> InodeTables<'a> {
    pub(crate) fn new(region: &'a Region<'a>, geo: &'a Geometry, tables: Vec<GroupTables>) -> Self {
        Self { region, geo, tables, first: 0, buf: Vec::with_capacity(FLUSH_AT) }
    }

    pub(crate) fn push(&mut self, ino: u32, inode: &[u8; INODE_SIZE]) -> Result<()> {
        if !self.buf.is_empty() {
            let next = self.first + (self.buf.len() / INODE_SIZE) as u32;
            let same_group = self.geo.inode_group(ino).0 == self.geo.inode_group(self.first).0;
            if ino != next || !same_group || self.buf.len() >= FLUSH_AT {
                self.flush()?;
            }
        }
        if self.buf.is_empty() {
            self.first = ino;
        }
        self.buf.extend_from_slice(inode);
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let (group, index) = self.geo.inode_group(self.first);
        let pos = self.tables[group as usize].inode_table * BLOCK + u64::from(index) * INODE_SIZE as u64;
        self.region.write_at(pos, &self.buf).with_context(|| format!("writing the inode table of group {group}"))?;
        self.buf.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_carry_epoch_bits_and_nanoseconds() {
        assert_eq!(encode_time(Timestamp { secs: 1, nanos: 5 }), (1, 5 << 2));
        assert_eq!(encode_time(Timestamp::from_secs(-1)), (u32::MAX, 0));
        // 2038-01-19T03:14:08Z, one past i32::MAX, needs the first epoch bit.
        assert_eq!(encode_time(Timestamp::from_secs(1 << 31)), (1 << 31, 1));
        assert_eq!(encode_time(Timestamp::from_secs(i64::MAX)).1 & 3, 3);
    }

    #[test]
    fn devices_use_the_old_encoding_when_it_fits() {
        let b = device_block(8, 1);
        assert_eq!(&b[..8], &[1, 8, 0, 0, 0, 0, 0, 0]);
        let b = device_block(259, 0x12345);
        assert_eq!(&b[..4], &[0; 4]);
        let new = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        assert_eq!(new, 0x45 | (259 << 8) | (0x12300 << 12));
    }
}
