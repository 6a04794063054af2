//! Directories: linear blocks of entries for small directories, an htree (hashed index) for
//! those that need more than one block, so lookups in large directories stay fast.
//!
//! Linear directories keep the tree's sorted order. An htree's leaves are ordered by name hash
//! (the format requires it), with ties broken by name so the result is still deterministic.

use super::csum::crc32c;
use super::layout::BLOCK_SIZE;
use anyhow::{Result, bail};

/// The checksum tail at the end of every leaf block (a fake entry the kernel skips).
const TAIL: usize = 12;
const LEAF_SPACE: usize = BLOCK_SIZE - TAIL;
/// `.` and `..` at the start of the first block.
const DOTS: usize = 24;
/// dx_root: `.`, `..`, an 8-byte info header, then count/limit and the entries.
const ROOT_ENTRIES_AT: usize = 32;
/// dx_node: a fake empty entry, then count/limit and the entries.
const NODE_ENTRIES_AT: usize = 8;
/// The dx checksum tail after the entries.
const DX_TAIL: usize = 8;
const ROOT_LIMIT: usize = (BLOCK_SIZE - ROOT_ENTRIES_AT - DX_TAIL) / 8;
const NODE_LIMIT: usize = (BLOCK_SIZE - NODE_ENTRIES_AT - DX_TAIL) / 8;
const DX_HASH_HALF_MD4: u8 = 1;
pub(crate) const FT_DIR: u8 = 2;

/// One entry of a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    pub(crate) name: &'a [u8],
    pub(crate) ino: u32,
    pub(crate) file_type: u8,
}

fn rec_len(name_len: usize) -> usize {
    (8 + name_len).next_multiple_of(4)
}

/// Which entries go in which block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `starts[i]`: index of the first entry of block `i`; `blocks >= starts.len()` (the rest
    /// are empty, preallocated blocks).
    Linear {
        starts: Vec<usize>,
        blocks: u64,
    },
    Indexed(Htree),
}

/// An htree directory: block 0 is the root, then `nodes` index blocks (0 when the root points
/// at the leaves directly), then the leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Htree {
    /// Entry indexes in hash order, with their hashes.
    order: Vec<(u32, usize)>,
    /// Index into `order` of the first entry of each leaf.
    leaf_starts: Vec<usize>,
    nodes: usize,
}

impl Layout {
    /// Lays out `entries` (in the tree's order) in at least `min_blocks` blocks.
    pub(crate) fn new(entries: &[Entry<'_>], min_blocks: u64, hash_seed: &[u32; 4]) -> Result<Self> {
        let starts = pack(entries.iter().map(|e| e.name.len()), DOTS);
        if starts.len() <= 1 {
            return Ok(Layout::Linear { starts, blocks: min_blocks.max(1) });
        }
        let mut order: Vec<(u32, usize)> =
            entries.iter().enumerate().map(|(i, e)| (name_hash(e.name, hash_seed), i)).collect();
        order.sort_by(|a, b| a.0.cmp(&b.0).then(entries[a.1].name.cmp(entries[b.1].name)));
        let leaf_starts = pack(order.iter().map(|&(_, i)| entries[i].name.len()), 0);
        let leaves = leaf_starts.len();
        let nodes = if leaves <= ROOT_LIMIT {
            0
        } else if leaves.div_ceil(NODE_LIMIT) <= ROOT_LIMIT {
            leaves.div_ceil(NODE_LIMIT)
        } else {
            bail!("{} entries are more than an ext4 directory without `largedir` can index", entries.len());
        };
        Ok(Layout::Indexed(Htree { order, leaf_starts, nodes }))
    }

    pub(crate) fn blocks(&self) -> u64 {
        match self {
            Layout::Linear { blocks, .. } => *blocks,
            Layout::Indexed(h) => (1 + h.nodes + h.leaf_starts.len()) as u64,
        }
    }

    pub(crate) fn is_indexed(&self) -> bool {
        matches!(self, Layout::Indexed(_))
    }
}

/// Greedy packing of entries with these name lengths into leaf blocks, the first of which
/// already holds `first_used` bytes. Returns the index of the first entry of each block.
fn pack(name_lens: impl Iterator<Item = usize>, first_used: usize) -> Vec<usize> {
    let mut starts = vec![0];
    let mut used = first_used;
    for (i, len) in name_lens.enumerate() {
        let r = rec_len(len);
        if used + r > LEAF_SPACE {
            starts.push(i);
            used = 0;
        }
        used += r;
    }
    starts
}

/// The directory's blocks, in file order.
pub(crate) fn encode(layout: &Layout, entries: &[Entry<'_>], ino: u32, parent: u32, inode_seed: u32) -> Vec<u8> {
    let mut out = vec![0u8; layout.blocks() as usize * BLOCK_SIZE];
    let dots = [Entry { name: b".", ino, file_type: FT_DIR }, Entry { name: b"..", ino: parent, file_type: FT_DIR }];
    match layout {
        Layout::Linear { starts, .. } => {
            for (b, block) in out.chunks_exact_mut(BLOCK_SIZE).enumerate() {
                let mine: Vec<Entry<'_>> = match starts.get(b) {
                    Some(&start) => {
                        let end = starts.get(b + 1).copied().unwrap_or(entries.len());
                        let own = entries[start..end].iter().copied();
                        if b == 0 { dots.iter().copied().chain(own).collect() } else { own.collect() }
                    }
                    None => Vec::new(),
                };
                write_leaf(block, &mine, inode_seed);
            }
        }
        Layout::Indexed(h) => encode_htree(&mut out, h, entries, &dots, inode_seed),
    }
    out
}

fn encode_htree(out: &mut [u8], h: &Htree, entries: &[Entry<'_>], dots: &[Entry<'_>; 2], inode_seed: u32) {
    let leaves = h.leaf_starts.len();
    let first_leaf = 1 + h.nodes;
    // The hash each leaf is filed under; the low bit marks a leaf that continues the previous
    // one's last hash, so lookups know to look back.
    let leaf_hash = |k: usize| -> u32 {
        let at = h.leaf_starts[k];
        let hash = h.order[at].0;
        if k > 0 && h.order[at - 1].0 == hash { hash | 1 } else { hash }
    };
    let (blocks_out, rest) = out.split_at_mut(BLOCK_SIZE);
    let root = blocks_out;
    // `.` and `..` exactly as the kernel's make_indexed_dir writes them: `..` spans the rest of
    // the block, hiding the index from linear readers.
    write_entry(&mut root[0..], &dots[0], 12);
    write_entry(&mut root[12..], &dots[1], BLOCK_SIZE - 12);
    root[28] = DX_HASH_HALF_MD4;
    root[29] = 8; // info_length
    root[30] = u8::from(h.nodes > 0); // indirect_levels
    let root_targets: Vec<(u32, u32)> = if h.nodes == 0 {
        (0..leaves).map(|k| (leaf_hash(k), (first_leaf + k) as u32)).collect()
    } else {
        (0..h.nodes).map(|n| (leaf_hash(n * NODE_LIMIT), (1 + n) as u32)).collect()
    };
    write_dx(root, ROOT_ENTRIES_AT, ROOT_LIMIT, &root_targets, inode_seed);

    let mut blocks = rest.chunks_exact_mut(BLOCK_SIZE);
    for n in 0..h.nodes {
        let node = blocks.next().expect("layout counted the index nodes");
        node[4..6].copy_from_slice(&(BLOCK_SIZE as u16).to_le_bytes());
        let first = n * NODE_LIMIT;
        let last = (first + NODE_LIMIT).min(leaves);
        let targets: Vec<(u32, u32)> = (first..last).map(|k| (leaf_hash(k), (first_leaf + k) as u32)).collect();
        write_dx(node, NODE_ENTRIES_AT, NODE_LIMIT, &targets, inode_seed);
    }
    for (k, block) in blocks.enumerate() {
        let start = h.leaf_starts[k];
        let end = h.leaf_starts.get(k + 1).copied().unwrap_or(h.order.len());
        let mine: Vec<Entry<'_>> = h.order[start..end].iter().map(|&(_, i)| entries[i]).collect();
        write_leaf(block, &mine, inode_seed);
    }
}

/// Writes count/limit and `targets` (hash, block) at `at`, then the dx checksum tail.
fn write_dx(block: &mut [u8], at: usize, limit: usize, targets: &[(u32, u32)], inode_seed: u32) {
    block[at..at + 2].copy_from_slice(&(limit as u16).to_le_bytes());
    block[at + 2..at + 4].copy_from_slice(&(targets.len() as u16).to_le_bytes());
    for (i, &(hash, nr)) in targets.iter().enumerate() {
        let e = at + 8 * i;
        // The first entry's hash slot holds count/limit: it covers everything below the
        // second entry's hash.
        if i > 0 {
            block[e..e + 4].copy_from_slice(&hash.to_le_bytes());
        }
        block[e + 4..e + 8].copy_from_slice(&nr.to_le_bytes());
    }
    let tail = at + 8 * limit;
    let csum = crc32c(inode_seed, &block[..at + 8 * targets.len()]);
    let csum = crc32c(csum, &[0u8; DX_TAIL]);
    block[tail + 4..tail + 8].copy_from_slice(&csum.to_le_bytes());
}

/// Writes `entries` into a leaf block, the last one's record stretched to the checksum tail;
/// an empty block gets one unused entry spanning it.
fn write_leaf(block: &mut [u8], entries: &[Entry<'_>], inode_seed: u32) {
    let mut at = 0;
    for (i, e) in entries.iter().enumerate() {
        let len = if i + 1 == entries.len() { LEAF_SPACE - at } else { rec_len(e.name.len()) };
        write_entry(&mut block[at..], e, len);
        at += len;
    }
    if entries.is_empty() {
        block[4..6].copy_from_slice(&(LEAF_SPACE as u16).to_le_bytes());
    }
    block[LEAF_SPACE + 4..LEAF_SPACE + 6].copy_from_slice(&(TAIL as u16).to_le_bytes());
    block[LEAF_SPACE + 7] = 0xDE;
    let csum = crc32c(inode_seed, &block[..LEAF_SPACE]);
    block[LEAF_SPACE + 8..LEAF_SPACE + 12].copy_from_slice(&csum.to_le_bytes());
}

fn write_entry(out: &mut [u8], e: &Entry<'_>, rec_len: usize) {
    out[0..4].copy_from_slice(&e.ino.to_le_bytes());
    out[4..6].copy_from_slice(&(rec_len as u16).to_le_bytes());
    out[6] = e.name.len() as u8;
    out[7] = e.file_type;
    out[8..8 + e.name.len()].copy_from_slice(e.name);
}

/// The major hash of `name` under half-MD4 with unsigned characters (the superblock says
/// `unsigned_directory_hash`), low bit cleared as the kernel's `ext4fs_dirhash` does.
pub(crate) fn name_hash(name: &[u8], seed: &[u32; 4]) -> u32 {
    let mut buf =
        if seed.iter().any(|&w| w != 0) { *seed } else { [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476] };
    for (i, piece) in name.chunks(32).enumerate() {
        let remaining = name.len() - 32 * i;
        half_md4_transform(&mut buf, &str2hashbuf(piece, remaining));
    }
    let hash = buf[1] & !1;
    // The largest value means "end of directory" to readdir cookies.
    if hash == 0xFFFF_FFFE { 0xFFFF_FFFC } else { hash }
}

/// The kernel's `str2hashbuf_unsigned(msg, len, buf, 8)`: `len` is the length of the rest of
/// the name (it sets the padding even when more than 32 bytes remain).
fn str2hashbuf(piece: &[u8], len: usize) -> [u32; 8] {
    let len32 = len as u32;
    let mut pad = len32 | (len32 << 8);
    pad |= pad << 16;
    let mut out = [pad; 8];
    let mut val = pad;
    let mut word = 0;
    for (i, &c) in piece.iter().enumerate() {
        val = u32::from(c).wrapping_add(val << 8);
        if i % 4 == 3 {
            out[word] = val;
            word += 1;
            val = pad;
        }
    }
    if word < 8 {
        out[word] = val;
    }
    out
}

fn half_md4_transform(buf: &mut [u32; 4], input: &[u32; 8]) {
    fn f(x: u32, y: u32, z: u32) -> u32 {
        z ^ (x & (y ^ z))
    }
    fn g(x: u32, y: u32, z: u32) -> u32 {
        (x & y).wrapping_add((x ^ y) & z)
    }
    fn h(x: u32, y: u32, z: u32) -> u32 {
        x ^ y ^ z
    }
    const K2: u32 = 0o13240474631;
    const K3: u32 = 0o15666365641;
    let [mut a, mut b, mut c, mut d] = *buf;
    macro_rules! round {
        ($f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a.wrapping_add($f($b, $c, $d)).wrapping_add($x).rotate_left($s)
        };
    }
    let x = input;
    round!(f, a, b, c, d, x[0], 3);
    round!(f, d, a, b, c, x[1], 7);
    round!(f, c, d, a, b, x[2], 11);
    round!(f, b, c, d, a, x[3], 19);
    round!(f, a, b, c, d, x[4], 3);
    round!(f, d, a, b, c, x[5], 7);
    round!(f, c, d, a, b, x[6], 11);
    round!(f, b, c, d, a, x[7], 19);

    round!(g, a, b, c, d, x[1].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[3].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[5].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[7].wrapping_add(K2), 13);
    round!(g, a, b, c, d, x[0].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[2].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[4].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[6].wrapping_add(K2), 13);

    round!(h, a, b, c, d, x[3].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[7].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[2].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[6].wrapping_add(K3), 15);
    round!(h, a, b, c, d, x[1].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[5].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[0].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[4].wrapping_add(K3), 15);

    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed debugfs parses from `-s 01020304-0506-0708-090a-0b0c0d0e0f10`.
    const SEED: [u32; 4] = [0x0403_0201, 0x0807_0605, 0x0c0b_0a09, 0x100f_0e0d];

    #[test]
    fn hashes_match_debugfs_dx_hash() {
        // Expected values from `debugfs -R 'dx_hash -h 4 -s <seed> <name>'` (e2fsprogs 1.47).
        assert_eq!(name_hash(b"hello", &SEED), 0xe2dd_f968);
        assert_eq!(name_hash(b"hello", &[0; 4]), 0x1746_da32);
        assert_eq!(name_hash("héllo".as_bytes(), &SEED), 0x78f7_e112);
        let long = format!("{}é", "x".repeat(70));
        assert_eq!(name_hash(long.as_bytes(), &SEED), 0x1b17_203a);
    }

    #[test]
    fn a_hash_split_across_leaves_is_marked_as_continued() {
        let entries: Vec<Entry<'_>> =
            [b"a", b"b", b"c"].iter().map(|n| Entry { name: &n[..], ino: 12, file_type: 1 }).collect();
        // Entries 1 and 2 share hash 20 but land in different leaves.
        let layout =
            Layout::Indexed(Htree { order: vec![(10, 0), (20, 1), (20, 2)], leaf_starts: vec![0, 2], nodes: 0 });
        let bytes = encode(&layout, &entries, 2, 2, 0);
        let second = ROOT_ENTRIES_AT + 8;
        assert_eq!(&bytes[second..second + 8], &[21, 0, 0, 0, 2, 0, 0, 0]);
    }

    fn names(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("file-{i:05}").into_bytes()).collect()
    }

    #[test]
    fn small_directories_are_linear_and_big_ones_indexed() {
        let names = names(5000);
        let entries: Vec<Entry<'_>> = names.iter().map(|n| Entry { name: n, ino: 12, file_type: 1 }).collect();
        let small = Layout::new(&entries[..10], 4, &SEED).unwrap();
        assert!(!small.is_indexed());
        assert_eq!(small.blocks(), 4);
        let big = Layout::new(&entries, 1, &SEED).unwrap();
        assert!(big.is_indexed());
        // 5000 entries of 20 bytes in 4084-byte leaves.
        assert_eq!(big.blocks(), 1 + 5000_u64.div_ceil(4084 / 20));
        let bytes = encode(&big, &entries, 2, 2, 0);
        assert_eq!(bytes.len() as u64, big.blocks() * BLOCK_SIZE as u64);
        // dx_root: `..` spans the block, count/limit follow the info header.
        assert_eq!(u16::from_le_bytes([bytes[16], bytes[17]]), 4084);
        assert_eq!(u16::from_le_bytes([bytes[32], bytes[33]]) as usize, ROOT_LIMIT);
    }
}
