//! Where everything goes: block groups and their superblock backups, the metadata area (all
//! bitmaps and inode tables packed at the start, which `flex_bg` allows), and a bump allocator
//! that hands out the remaining blocks strictly in order.
//!
//! Allocating in order keeps the used blocks a prefix of the filesystem (plus the superblock
//! backups further on, plus the rare gap an inode table could not straddle), so bitmaps and
//! free counts follow from one cursor and a short list of gaps, with no per-block bookkeeping.

use anyhow::{Result, bail};
use std::ops::Range;

pub(crate) const BLOCK_SIZE: usize = 4096;
pub(crate) const BLOCK: u64 = BLOCK_SIZE as u64;
/// One bitmap block covers 8 * 4096 blocks.
pub(crate) const BLOCKS_PER_GROUP: u64 = 8 * BLOCK;
pub(crate) const INODE_SIZE: usize = 256;
pub(crate) const INODES_PER_BLOCK: u32 = (BLOCK_SIZE / INODE_SIZE) as u32;
/// Group descriptors are 64 bytes with the `64bit` feature.
pub(crate) const DESC_SIZE: usize = 64;
/// An inode bitmap is one block too.
pub(crate) const MAX_INODES_PER_GROUP: u32 = 8 * BLOCK_SIZE as u32;
/// The first inode that is not reserved: `lost+found`.
pub(crate) const FIRST_INO: u32 = 11;
/// The most blocks one initialized extent can map.
pub(crate) const MAX_EXTENT_LEN: u64 = 32768;
/// Descriptors of all groups must fit in group 0 (no `meta_bg`), and 32-bit group counts keep
/// the arithmetic simple: 16 TiB is far beyond any appliance partition.
pub(crate) const MAX_BLOCKS: u64 = (1 << 32) - 1;
/// Below this there is no room for a superblock, descriptors, bitmaps and one inode table.
const MIN_BLOCKS: u64 = 64;

/// Why a region cannot hold a filesystem of the wanted shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GeometryError {
    /// The region is smaller than the smallest possible filesystem.
    BelowMinimum { min_blocks: u64 },
    /// More inodes are wanted than this many groups can carry (32768 each).
    InodesOverCapacity { wanted: u64, capacity: u64, min_blocks: u64 },
    /// More than [`MAX_BLOCKS`].
    OverMaximum,
}

/// The shape of one filesystem: its size, groups and inode tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) blocks: u64,
    pub(crate) groups: u32,
    pub(crate) inodes_per_group: u32,
    /// Blocks of group descriptors after each superblock copy.
    pub(crate) gdt_blocks: u64,
    pub(crate) journal_blocks: u64,
}

impl Geometry {
    /// The geometry for a region of `region_blocks` blocks holding at least `inodes_needed`
    /// inodes (counting the reserved ones); `inode_count` asks for a total instead of deriving
    /// it from the size.
    pub(crate) fn new(region_blocks: u64, inodes_needed: u32, inode_count: Option<u32>) -> Result<Self, GeometryError> {
        if region_blocks < MIN_BLOCKS {
            return Err(GeometryError::BelowMinimum { min_blocks: MIN_BLOCKS });
        }
        if region_blocks > MAX_BLOCKS {
            return Err(GeometryError::OverMaximum);
        }
        let mut blocks = region_blocks;
        loop {
            let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
            let gdt_blocks = gdt_blocks_for(groups);
            let inodes_per_group = inodes_per_group(blocks, groups, inodes_needed, inode_count)?;
            // A last group that cannot pay for its own bitmaps, inode table and superblock
            // backup with 50 blocks to spare is left out, its blocks unused, as mke2fs does:
            // otherwise a slightly larger region could leave less room for files.
            let tail = blocks % BLOCKS_PER_GROUP;
            let backup = if has_super(groups - 1) { 1 + gdt_blocks } else { 0 };
            let overhead = 2 + u64::from(inodes_per_group / INODES_PER_BLOCK) + backup;
            if groups > 1 && tail != 0 && tail < overhead + 50 {
                blocks -= tail;
                continue;
            }
            return Ok(Self {
                blocks,
                groups: u32::try_from(groups).map_err(|_| GeometryError::OverMaximum)?,
                inodes_per_group,
                gdt_blocks,
                journal_blocks: super::journal::default_blocks(blocks),
            });
        }
    }

    pub(crate) fn inodes(&self) -> u32 {
        u32::try_from(u64::from(self.inodes_per_group) * u64::from(self.groups))
            .expect("Geometry::new keeps the inode count within u32")
    }

    /// Inode-table blocks of one group.
    pub(crate) fn itable_blocks(&self) -> u64 {
        u64::from(self.inodes_per_group / INODES_PER_BLOCK)
    }

    /// The blocks of group `g`.
    pub(crate) fn group_range(&self, g: u32) -> Range<u64> {
        let start = u64::from(g) * BLOCKS_PER_GROUP;
        start..(start + BLOCKS_PER_GROUP).min(self.blocks)
    }

    /// The superblock copy and descriptor table at the start of group `g`, if it has one.
    pub(crate) fn backup_area(&self, g: u64) -> Option<Range<u64>> {
        has_super(g).then(|| {
            let start = g * BLOCKS_PER_GROUP;
            start..start + 1 + self.gdt_blocks
        })
    }

    /// The group of inode `ino` and its index within the group.
    pub(crate) fn inode_group(&self, ino: u32) -> (u32, u32) {
        ((ino - 1) / self.inodes_per_group, (ino - 1) % self.inodes_per_group)
    }
}

/// Inodes per group for a filesystem of `blocks` in `groups` groups.
fn inodes_per_group(
    blocks: u64,
    groups: u64,
    inodes_needed: u32,
    inode_count: Option<u32>,
) -> Result<u32, GeometryError> {
    let wanted = match inode_count {
        Some(n) => u64::from(n.max(inodes_needed)),
        None => (blocks * BLOCK / bytes_per_inode(blocks)).max(u64::from(inodes_needed)),
    };
    // Whole inode-table blocks per group; mke2fs rounds the same way.
    let mut per_group = wanted.div_ceil(groups).next_multiple_of(u64::from(INODES_PER_BLOCK));
    if per_group > u64::from(MAX_INODES_PER_GROUP) {
        let groups_needed = wanted.div_ceil(u64::from(MAX_INODES_PER_GROUP));
        // The last of those groups just large enough to be kept.
        let last = 2 + u64::from(MAX_INODES_PER_GROUP / INODES_PER_BLOCK) + 1 + gdt_blocks_for(groups_needed) + 50;
        return Err(GeometryError::InodesOverCapacity {
            wanted,
            capacity: groups * u64::from(MAX_INODES_PER_GROUP),
            min_blocks: (groups_needed - 1) * BLOCKS_PER_GROUP + last,
        });
    }
    // The total must fit the superblock's 32-bit count: round down, never below what the tree
    // needs (which is itself a u32).
    while per_group * groups > u64::from(u32::MAX) {
        per_group -= u64::from(INODES_PER_BLOCK);
    }
    Ok(u32::try_from(per_group).expect("at most MAX_INODES_PER_GROUP"))
}

/// mke2fs' default `inode_ratio` by filesystem size (mke2fs.conf's `small`, `default` and
/// `big` types): small filesystems get relatively more inodes.
fn bytes_per_inode(blocks: u64) -> u64 {
    const SMALL: u64 = 512 << 20;
    const BIG: u64 = 4 << 40;
    match blocks * BLOCK {
        0..SMALL => 4096,
        SMALL..BIG => 16384,
        _ => 32768,
    }
}

fn gdt_blocks_for(groups: u64) -> u64 {
    (groups * DESC_SIZE as u64).div_ceil(BLOCK)
}

/// `sparse_super`: groups 0 and 1 and the powers of 3, 5 and 7 carry superblock copies.
pub(crate) fn has_super(g: u64) -> bool {
    fn is_power_of(mut n: u64, base: u64) -> bool {
        while n > 1 && n % base == 0 {
            n /= base;
        }
        n == 1
    }
    g <= 1 || is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7)
}

/// Hands out blocks in increasing order, stepping over superblock backups.
#[derive(Debug)]
pub(crate) struct Allocator<'g> {
    geo: &'g Geometry,
    next: u64,
    /// First block of the next superblock backup after `next`: runs stop short of it.
    barrier: u64,
    /// Blocks below `next` left free because a table had to start after a backup.
    gaps: Vec<Range<u64>>,
    /// Allocating past this fails; `u64::MAX` when only measuring how much space a tree takes.
    limit: u64,
}

impl<'g> Allocator<'g> {
    /// An allocator that fails when the filesystem is full.
    pub(crate) fn bounded(geo: &'g Geometry) -> Self {
        Self::with_limit(geo, geo.blocks)
    }

    /// An allocator that runs on past the end, to measure how many blocks a tree needs.
    pub(crate) fn measuring(geo: &'g Geometry) -> Self {
        Self::with_limit(geo, u64::MAX)
    }

    fn with_limit(geo: &'g Geometry, limit: u64) -> Self {
        let mut alloc = Self { geo, next: 0, barrier: 0, gaps: Vec::new(), limit };
        alloc.settle();
        alloc
    }

    /// Steps over the superblock backup `next` sits on, and finds the next one.
    fn settle(&mut self) {
        let g = self.next / BLOCKS_PER_GROUP;
        if let Some(area) = self.geo.backup_area(g) {
            self.next = self.next.max(area.end);
        }
        let next_group = (g + 1..).find(|&g| has_super(g)).expect("there is always a further power of 3");
        self.barrier = next_group * BLOCKS_PER_GROUP;
    }

    /// The next free run of at most `max` (> 0) blocks.
    pub(crate) fn take(&mut self, max: u64) -> Result<Range<u64>> {
        debug_assert!(max > 0);
        if self.next >= self.barrier {
            self.settle();
        }
        let len = max.min(self.barrier - self.next);
        let run = self.next..self.next + len;
        self.next = run.end;
        self.check_limit()?;
        Ok(run)
    }

    /// `n` contiguous blocks (an inode table), skipping a backup rather than straddling it.
    pub(crate) fn take_contiguous(&mut self, n: u64) -> Result<u64> {
        // Every group has room for the largest inode table after its backup.
        debug_assert!(n <= BLOCKS_PER_GROUP / 2);
        loop {
            if self.next >= self.barrier {
                self.settle();
            }
            if self.barrier - self.next >= n {
                return Ok(self.take(n)?.start);
            }
            self.gaps.push(self.next..self.barrier);
            self.next = self.barrier;
        }
    }

    fn check_limit(&self) -> Result<()> {
        if self.next > self.limit {
            bail!("the filesystem ran out of space: {} blocks needed, {} available", self.next, self.limit);
        }
        Ok(())
    }

    /// One past the last block handed out.
    pub(crate) fn end(&self) -> u64 {
        self.next
    }

    /// The block bitmap of group `g`, with the bits past a short last group set as the
    /// format requires; and the number of free blocks in the group.
    pub(crate) fn block_bitmap(&self, g: u32, bitmap: &mut [u8; BLOCK_SIZE]) -> u64 {
        bitmap.fill(0);
        let range = self.geo.group_range(g);
        let base = range.start;
        let local = |r: Range<u64>| {
            let start = r.start.clamp(range.start, range.end) - base;
            let end = r.end.clamp(range.start, range.end) - base;
            start..end
        };
        set_bits(bitmap, local(0..self.next), true);
        for gap in &self.gaps {
            set_bits(bitmap, local(gap.clone()), false);
        }
        if let Some(area) = self.geo.backup_area(u64::from(g)) {
            set_bits(bitmap, local(area), true);
        }
        let len = range.end - base;
        let used: u64 = bitmap.iter().map(|b| u64::from(b.count_ones())).sum();
        set_bits(bitmap, len..BLOCKS_PER_GROUP, true);
        len - used
    }
}

/// The metadata blocks of one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupTables {
    pub(crate) block_bitmap: u64,
    pub(crate) inode_bitmap: u64,
    pub(crate) inode_table: u64,
}

/// Places every group's bitmaps and inode table at the front, block bitmaps first, then inode
/// bitmaps, then inode tables, as mke2fs orders them within a flex group.
pub(crate) fn place_tables(alloc: &mut Allocator<'_>) -> Result<Vec<GroupTables>> {
    let geo = alloc.geo;
    let mut block_bitmaps = Vec::with_capacity(geo.groups as usize);
    for _ in 0..geo.groups {
        block_bitmaps.push(alloc.take(1)?.start);
    }
    let mut inode_bitmaps = Vec::with_capacity(geo.groups as usize);
    for _ in 0..geo.groups {
        inode_bitmaps.push(alloc.take(1)?.start);
    }
    let mut tables = Vec::with_capacity(geo.groups as usize);
    for (block_bitmap, inode_bitmap) in block_bitmaps.into_iter().zip(inode_bitmaps) {
        tables.push(GroupTables {
            block_bitmap,
            inode_bitmap,
            inode_table: alloc.take_contiguous(geo.itable_blocks())?,
        });
    }
    Ok(tables)
}

/// Sets or clears bits `range` (bit i is bit i%8 of byte i/8, as ext4 bitmaps are).
pub(crate) fn set_bits(bitmap: &mut [u8], range: Range<u64>, value: bool) {
    for bit in range {
        let (byte, mask) = ((bit / 8) as usize, 1u8 << (bit % 8));
        if value {
            bitmap[byte] |= mask;
        } else {
            bitmap[byte] &= !mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_super_groups() {
        let with: Vec<u64> = (0..100).filter(|&g| has_super(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }

    #[test]
    fn inode_count_follows_size_and_needs() {
        // What mke2fs -t ext4 makes of 200 MiB and of 1 GiB.
        let geo = Geometry::new(51200, 100, None).unwrap();
        assert_eq!(geo.groups, 2);
        assert_eq!(geo.inodes(), 51200);
        assert_eq!(geo.journal_blocks, 4096);
        let geo = Geometry::new(262_144, 100, None).unwrap();
        assert_eq!(geo.inodes(), 65536);
        let geo = Geometry::new(51200, 60000, None).unwrap();
        assert!(geo.inodes() >= 60000);
        assert_eq!(geo.inodes_per_group % 16, 0);
        assert!(matches!(Geometry::new(1000, 40000, None), Err(GeometryError::InodesOverCapacity { .. })));
    }

    #[test]
    fn a_last_group_too_short_to_pay_for_itself_is_dropped() {
        let geo = Geometry::new(BLOCKS_PER_GROUP + 1, 20, None).unwrap();
        assert_eq!((geo.groups, geo.blocks), (1, BLOCKS_PER_GROUP));
        // Group 2 has no backup: its bitmaps, its inode table and 50 blocks.
        let inodes = Some(3 * 2048);
        let overhead = 2 + 2048 / 16;
        let geo = Geometry::new(2 * BLOCKS_PER_GROUP + overhead + 49, 20, inodes).unwrap();
        assert_eq!((geo.groups, geo.blocks), (2, 2 * BLOCKS_PER_GROUP));
        let geo = Geometry::new(2 * BLOCKS_PER_GROUP + overhead + 50, 20, inodes).unwrap();
        assert_eq!((geo.groups, geo.inodes_per_group), (3, 2048));
    }

    #[test]
    fn allocation_steps_over_backups_and_counts_free_blocks() {
        let geo = Geometry::new(2 * BLOCKS_PER_GROUP, 20, None).unwrap();
        let mut alloc = Allocator::bounded(&geo);
        assert_eq!(alloc.take(5).unwrap(), 2..7);
        alloc.take(BLOCKS_PER_GROUP - 7).unwrap();
        assert_eq!(alloc.take(3).unwrap(), BLOCKS_PER_GROUP + 2..BLOCKS_PER_GROUP + 5);
        let mut bitmap = [0u8; BLOCK_SIZE];
        assert_eq!(alloc.block_bitmap(0, &mut bitmap), 0);
        assert_eq!(alloc.block_bitmap(1, &mut bitmap), BLOCKS_PER_GROUP - 5);
        assert_eq!(bitmap[0], 0b1_1111);
        assert!(alloc.take(BLOCKS_PER_GROUP).is_err());
    }

    #[test]
    fn tables_do_not_straddle_a_backup() {
        let geo = Geometry::new(2 * BLOCKS_PER_GROUP, 20, None).unwrap();
        let mut alloc = Allocator::bounded(&geo);
        alloc.take(BLOCKS_PER_GROUP - 10).unwrap();
        let start = alloc.take_contiguous(16).unwrap();
        assert_eq!(start, BLOCKS_PER_GROUP + 2);
        let mut bitmap = [0u8; BLOCK_SIZE];
        assert_eq!(alloc.block_bitmap(0, &mut bitmap), 8);
    }
}
