//! Extent trees: the list of runs a file's blocks live in, stored in the inode's `i_block`
//! when there are at most four, otherwise in leaf blocks under index blocks.

use super::csum::crc32c;
use super::layout::{Allocator, BLOCK_SIZE, MAX_EXTENT_LEN};
use anyhow::Result;

const MAGIC: u16 = 0xF30A;
const ENTRY: usize = 12;
const HEADER: usize = 12;
/// Entries that fit in `i_block` after the header.
const ROOT_ENTRIES: usize = 4;
/// Entries that fit in a block after the header, leaving room for the checksum tail.
const BLOCK_ENTRIES: usize = (BLOCK_SIZE - HEADER) / ENTRY;

/// `len` blocks of a file starting at file block `logical`, stored from block `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    pub(crate) logical: u32,
    pub(crate) start: u64,
    pub(crate) len: u16,
}

/// A file's extents, built block by block or run by run in increasing file order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Extents(Vec<Extent>);

impl Extents {
    /// Maps file block `logical` to block `physical`, extending the last extent when both
    /// continue it.
    pub(crate) fn push_block(&mut self, logical: u32, physical: u64) {
        if let Some(last) = self.0.last_mut()
            && u64::from(last.len) < MAX_EXTENT_LEN
            && last.logical + u32::from(last.len) == logical
            && last.start + u64::from(last.len) == physical
        {
            last.len += 1;
            return;
        }
        self.0.push(Extent { logical, start: physical, len: 1 });
    }

    /// Maps `len` file blocks from `logical` on to the run starting at `physical`.
    pub(crate) fn push_run(&mut self, logical: u32, physical: u64, len: u64) {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_EXTENT_LEN);
            self.0.push(Extent {
                logical: logical + u32::try_from(done).expect("file blocks are 32-bit"),
                start: physical + done,
                len: u16::try_from(n).expect("at most MAX_EXTENT_LEN"),
            });
            done += n;
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Extent> {
        self.0.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Blocks mapped (not counting tree blocks).
    pub(crate) fn blocks(&self) -> u64 {
        self.0.iter().map(|e| u64::from(e.len)).sum()
    }
}

/// Tree blocks (leaves and indexes) needed for `extents` extents.
pub(crate) fn tree_blocks(extents: usize) -> u64 {
    let mut nodes = extents;
    let mut total = 0;
    while nodes > ROOT_ENTRIES {
        nodes = nodes.div_ceil(BLOCK_ENTRIES);
        total += nodes as u64;
    }
    total
}

/// An encoded extent tree: the inode's `i_block` and the blocks below it.
#[derive(Debug)]
pub(crate) struct ExtentTree {
    pub(crate) i_block: [u8; 60],
    pub(crate) blocks: Vec<(u64, Box<[u8; BLOCK_SIZE]>)>,
}

/// Encodes `extents`, taking exactly [`tree_blocks`] blocks from `alloc` for the nodes.
/// `inode_seed` keys the node checksums to the owning inode.
pub(crate) fn build(extents: &Extents, alloc: &mut Allocator<'_>, inode_seed: u32) -> Result<ExtentTree> {
    let mut entries: Vec<(u32, [u8; ENTRY])> = extents.0.iter().map(|e| (e.logical, encode_extent(e))).collect();
    let mut blocks = Vec::new();
    let mut depth = 0u16;
    while entries.len() > ROOT_ENTRIES {
        let mut parents = Vec::with_capacity(entries.len().div_ceil(BLOCK_ENTRIES));
        for chunk in entries.chunks(BLOCK_ENTRIES) {
            let nr = alloc.take(1)?.start;
            let mut block = Box::new([0u8; BLOCK_SIZE]);
            encode_node(&mut block[..], chunk, BLOCK_ENTRIES, depth);
            let tail = HEADER + ENTRY * BLOCK_ENTRIES;
            let csum = crc32c(inode_seed, &block[..tail]);
            block[tail..tail + 4].copy_from_slice(&csum.to_le_bytes());
            blocks.push((nr, block));
            parents.push((chunk[0].0, encode_index(chunk[0].0, nr)));
        }
        entries = parents;
        depth += 1;
    }
    let mut i_block = [0u8; 60];
    encode_node(&mut i_block, &entries, ROOT_ENTRIES, depth);
    Ok(ExtentTree { i_block, blocks })
}

fn encode_node(out: &mut [u8], entries: &[(u32, [u8; ENTRY])], max: usize, depth: u16) {
    out[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    let count = u16::try_from(entries.len()).expect("at most BLOCK_ENTRIES");
    out[2..4].copy_from_slice(&count.to_le_bytes());
    let max = u16::try_from(max).expect("at most BLOCK_ENTRIES");
    out[4..6].copy_from_slice(&max.to_le_bytes());
    out[6..8].copy_from_slice(&depth.to_le_bytes());
    for (i, (_, entry)) in entries.iter().enumerate() {
        let at = HEADER + i * ENTRY;
        out[at..at + ENTRY].copy_from_slice(entry);
    }
}

fn encode_extent(e: &Extent) -> [u8; ENTRY] {
    let mut out = [0u8; ENTRY];
    out[0..4].copy_from_slice(&e.logical.to_le_bytes());
    out[4..6].copy_from_slice(&e.len.to_le_bytes());
    out[6..8].copy_from_slice(&((e.start >> 32) as u16).to_le_bytes());
    out[8..12].copy_from_slice(&(e.start as u32).to_le_bytes());
    out
}

fn encode_index(logical: u32, block: u64) -> [u8; ENTRY] {
    let mut out = [0u8; ENTRY];
    out[0..4].copy_from_slice(&logical.to_le_bytes());
    out[4..8].copy_from_slice(&(block as u32).to_le_bytes());
    out[8..10].copy_from_slice(&((block >> 32) as u16).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::super::layout::Geometry;
    use super::*;

    #[test]
    fn blocks_merge_into_extents() {
        let mut e = Extents::default();
        e.push_block(0, 100);
        e.push_block(1, 101);
        e.push_block(3, 102); // a hole at file block 2
        e.push_block(4, 200);
        assert_eq!(e.len(), 3);
        assert_eq!(e.blocks(), 4);
        let mut big = Extents::default();
        big.push_run(0, 1000, 70_000);
        assert_eq!(big.len(), 3);
    }

    #[test]
    fn tree_sizes() {
        assert_eq!(tree_blocks(4), 0);
        assert_eq!(tree_blocks(5), 1);
        assert_eq!(tree_blocks(340 * 4), 4);
        assert_eq!(tree_blocks(340 * 4 + 1), 5 + 1);
    }

    #[test]
    fn build_takes_exactly_the_counted_blocks() {
        let geo = Geometry::new(200_000, 20, None).unwrap();
        for n in [0, 3, 4, 5, 340, 341, 1361, 5000] {
            let mut e = Extents::default();
            for i in 0..n {
                e.push_block(2 * i as u32, 10_000 + 2 * i as u64);
            }
            let mut alloc = Allocator::bounded(&geo);
            let before = alloc.end();
            let tree = build(&e, &mut alloc, 0).unwrap();
            assert_eq!(tree.blocks.len() as u64, tree_blocks(n));
            assert_eq!(alloc.end() - before, tree_blocks(n));
            let depth = u16::from_le_bytes([tree.i_block[6], tree.i_block[7]]);
            assert_eq!(depth > 0, n > 4);
        }
    }
}
