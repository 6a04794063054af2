//! The dm-verity hash tree of a root partition, written natively in the exact layout
//! `veritysetup format` writes, so that `veritysetup verify` (and systemd-veritysetup at boot)
//! accept it and `veritysetup format --salt=… --uuid=…` of the same data gives the same bytes.
//!
//! The format choices are cryptsetup's defaults, fixed here rather than configurable:
//! - hash type (format) 1, the one the kernel and systemd expect by default (type 0 is Chrome
//!   OS's, which appends the salt and packs digests);
//! - SHA-256, 4096-byte data and hash blocks: 128 digests of 32 bytes per hash block;
//! - a 512-byte superblock (version 1) at the start of the hash region, carrying the UUID, the
//!   algorithm, block sizes, the number of data blocks and the salt, so the boot command line
//!   needs only `roothash=`. veritysetup writes only those 512 bytes; the rest of hash block 0
//!   is written here as zeros, so the region's bytes do not depend on what was there before;
//! - the tree starts at hash block 1, levels stored top (nearest the root) first, leaves last;
//!   each digest is `SHA-256(salt ‖ block)`, the root hash `SHA-256(salt ‖ top block)`;
//! - salt (32 bytes) and UUID derive from the build seed ([`VerityParams::from_seed`]), where
//!   veritysetup would draw them at random: same data and seed, same tree and root hash.
//!
//! Hashing is the costly part (one SHA-256 pass over the whole root partition), so the leaves
//! are hashed by one thread per core over disjoint runs of the data, and all-zero data blocks
//! (free space the ext4 writer never touched) reuse one precomputed digest instead of being
//! hashed; where that free space is a hole in the sparse image (reported by `SEEK_DATA`) it
//! is not even read. The tree is kept in memory until written: 1/128 of the data
//! (16 MiB for a 2 GiB root).
//!
//! Following the Discoverable Partitions Specification, the root partition's UUID is the first
//! 128 bits of the root hash and the verity partition's the last 128 ([`RootHash::data_partition_uuid`],
//! [`RootHash::hash_partition_uuid`]), so systemd finds both from `roothash=` alone.

use crate::region::Region;
use crate::seed::Seed;
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::num::NonZeroUsize;
use std::sync::Mutex;
use uuid::Uuid;

/// Data and hash block size (cryptsetup's default for both).
pub const BLOCK_SIZE: u64 = 4096;
const BLOCK: usize = BLOCK_SIZE as usize;
const DIGEST: usize = 32;
/// Digests per hash block: 4096 / 32.
const FANOUT: usize = BLOCK / DIGEST;
const SALT_LEN: usize = 32;
/// The on-disk superblock's size; the rest of hash block 0 is zero.
const SUPERBLOCK_LEN: usize = 512;
/// Data blocks one worker reads and hashes at a time: 64 leaf hash blocks' worth (32 MiB), big
/// enough to keep each thread's reads sequential and the hand-outs rare.
const BLOCKS_PER_TASK: u64 = 64 * FANOUT as u64;
/// Data blocks read at once within a task (1 MiB): the granularity at which holes are skipped.
const BLOCKS_PER_READ: u64 = 2 * FANOUT as u64;

/// The salt and superblock UUID of one hash tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    pub salt: [u8; SALT_LEN],
    pub uuid: Uuid,
}

impl VerityParams {
    /// Salt and UUID owned by `purpose` under the build seed (e.g. `"verity-root-a"`), so a
    /// rebuild of the same root gives the same tree and root hash.
    pub fn from_seed(seed: &Seed, purpose: &str) -> Self {
        Self { salt: seed.bytes(&format!("{purpose}-salt")), uuid: seed.uuid(&format!("{purpose}-uuid")) }
    }
}

/// The root hash: what the UKI's command line carries as `roothash=`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RootHash(pub [u8; DIGEST]);

impl RootHash {
    /// Lower-case hex, as `roothash=`, `veritysetup` and the manifest write it.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The root (data) partition's GPT UUID: the first 128 bits of the hash, byte for byte
    /// (systemd copies the bytes into an id128 without setting version or variant bits).
    pub fn data_partition_uuid(&self) -> Uuid {
        Uuid::from_bytes(self.0[..16].try_into().expect("a 32-byte hash has a first half"))
    }

    /// The root-verity partition's GPT UUID: the last 128 bits of the hash.
    pub fn hash_partition_uuid(&self) -> Uuid {
        Uuid::from_bytes(self.0[16..].try_into().expect("a 32-byte hash has a second half"))
    }
}

impl std::fmt::Debug for RootHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootHash({})", self.hex())
    }
}

impl std::fmt::Display for RootHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

/// Number of hash blocks in each tree level for `data_blocks` data blocks, leaves (level 0)
/// first. Empty for a single data block, whose digest is itself the root hash's input.
fn level_sizes(data_blocks: u64) -> Vec<u64> {
    let mut levels = Vec::new();
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(FANOUT as u64);
        levels.push(n);
    }
    levels
}

/// Bytes the hash region needs for `data_len` bytes of data: superblock block plus the tree.
/// The layout uses this to size the root-verity partition.
pub fn hash_region_len(data_len: u64) -> u64 {
    let data_blocks = data_len / BLOCK_SIZE;
    (1 + level_sizes(data_blocks).iter().sum::<u64>()) * BLOCK_SIZE
}

/// Writes the hash tree of all of `data` into `hash` and returns the root hash, hashing with
/// one thread per available core.
pub fn format(data: &Region, hash: &Region, params: &VerityParams) -> Result<RootHash> {
    let threads = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    format_with_threads(data, hash, params, threads)
}

/// [`format`] with a given number of hashing threads (the benchmark compares 1 and all cores).
pub fn format_with_threads(
    data: &Region,
    hash: &Region,
    params: &VerityParams,
    threads: NonZeroUsize,
) -> Result<RootHash> {
    if data.len() % BLOCK_SIZE != 0 || data.is_empty() {
        bail!("the verity data region is {} bytes, not a positive multiple of {BLOCK_SIZE}", data.len());
    }
    let data_blocks = data.len() / BLOCK_SIZE;
    let needed = hash_region_len(data.len());
    if hash.len() < needed {
        bail!(
            "the verity hash region holds {} bytes; the tree of {} data bytes needs {needed}",
            hash.len(),
            data.len()
        );
    }
    let salted = {
        let mut h = Sha256::new();
        h.update(params.salt);
        h
    };
    let sizes = level_sizes(data_blocks);
    let leaves = hash_leaves(data, data_blocks, &salted, threads).context("hashing the verity data blocks")?;

    // Upper levels: each is small (1/128 of the one below), hashed on this thread.
    let mut levels: Vec<Vec<u8>> = Vec::with_capacity(sizes.len());
    let root = if sizes.is_empty() {
        // One data block: its salted digest is the root hash, and there is no tree.
        leaves
    } else {
        levels.push(pack_level(&leaves, sizes[0]));
        for &blocks in &sizes[1..] {
            let below = levels.last().expect("level 0 was pushed");
            let digests = hash_blocks(below, &salted);
            levels.push(pack_level(&digests, blocks));
        }
        let top = levels.last().expect("at least one level");
        hash_blocks(top, &salted)
    };

    hash.write_at(0, &superblock(params, data_blocks)).context("writing the verity superblock")?;
    // Top level first, right after the superblock block; leaves last.
    let mut pos = BLOCK_SIZE;
    for level in levels.iter().rev() {
        hash.write_at(pos, level).context("writing the verity hash tree")?;
        pos += level.len() as u64;
    }
    let mut root_hash = [0u8; DIGEST];
    root_hash.copy_from_slice(&root[..DIGEST]);
    Ok(RootHash(root_hash))
}

/// The 4096-byte block 0 of the hash region: the superblock and zeros.
fn superblock(params: &VerityParams, data_blocks: u64) -> Vec<u8> {
    let mut sb = vec![0u8; BLOCK];
    sb[0..8].copy_from_slice(b"verity\0\0");
    sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
    sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type 1 (normal, not Chrome OS)
    sb[16..32].copy_from_slice(params.uuid.as_bytes());
    sb[32..38].copy_from_slice(b"sha256");
    sb[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(SALT_LEN as u16).to_le_bytes());
    sb[88..88 + SALT_LEN].copy_from_slice(&params.salt);
    const { assert!(88 + SALT_LEN <= SUPERBLOCK_LEN) };
    sb
}

/// Salted digests of consecutive 4096-byte blocks, concatenated.
fn hash_blocks(blocks: &[u8], salted: &Sha256) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks.len() / BLOCK * DIGEST);
    for block in blocks.chunks_exact(BLOCK) {
        let mut h = salted.clone();
        h.update(block);
        out.extend_from_slice(&h.finalize());
    }
    out
}

/// Digests packed into `blocks` hash blocks, the tail of the last one zero.
fn pack_level(digests: &[u8], blocks: u64) -> Vec<u8> {
    let mut level = vec![0u8; blocks as usize * BLOCK];
    level[..digests.len()].copy_from_slice(digests);
    level
}

/// The salted digest of every data block, in order, hashed by `threads` workers that each take
/// the next run of [`BLOCKS_PER_TASK`] blocks.
fn hash_leaves(data: &Region, data_blocks: u64, salted: &Sha256, threads: NonZeroUsize) -> Result<Vec<u8>> {
    let zero_digest = {
        let mut h = salted.clone();
        h.update([0u8; BLOCK]);
        h.finalize()
    };
    let mut digests = vec![0u8; data_blocks as usize * DIGEST];
    let tasks = Mutex::new(digests.chunks_mut(BLOCKS_PER_TASK as usize * DIGEST).enumerate());
    let workers = threads.get().min(data_blocks.div_ceil(BLOCKS_PER_TASK) as usize);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut buf = vec![0u8; BLOCKS_PER_READ as usize * BLOCK];
                    loop {
                        let next = tasks.lock().map_err(|_| anyhow::anyhow!("a hashing thread panicked"))?.next();
                        let Some((task, out)) = next else { return Ok(()) };
                        let first = task as u64 * BLOCKS_PER_TASK;
                        for (i, out) in out.chunks_mut(BLOCKS_PER_READ as usize * DIGEST).enumerate() {
                            let at = (first + i as u64 * BLOCKS_PER_READ) * BLOCK_SIZE;
                            let len = out.len() / DIGEST * BLOCK;
                            // A hole in the sparse image (space no writer touched) reads as
                            // zeros: its digests are known without reading it.
                            if data.next_data(at)? >= at + len as u64 {
                                out.chunks_exact_mut(DIGEST).for_each(|d| d.copy_from_slice(&zero_digest));
                                continue;
                            }
                            let buf = &mut buf[..len];
                            data.read_at(at, buf)?;
                            for (block, digest) in buf.chunks_exact(BLOCK).zip(out.chunks_exact_mut(DIGEST)) {
                                if is_zero(block) {
                                    digest.copy_from_slice(&zero_digest);
                                } else {
                                    let mut h = salted.clone();
                                    h.update(block);
                                    digest.copy_from_slice(&h.finalize());
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().map_err(|_| anyhow::anyhow!("a hashing thread panicked"))?)
    })?;
    Ok(digests)
}

/// Whether a block is all zeros (compared a machine word at a time; far cheaper than hashing).
fn is_zero(block: &[u8]) -> bool {
    let words = block.chunks_exact(16);
    let rest = words.remainder();
    rest.iter().all(|&b| b == 0) && words.into_iter().all(|w| u128::from_ne_bytes(w.try_into().expect("16 bytes")) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_cryptsetups_layout() {
        // The reference's worked example: 1 GiB of data → 3 levels of 2048, 16 and 1 blocks,
        // 2066 hash blocks with the superblock's.
        assert_eq!(level_sizes(262_144), vec![2048, 16, 1]);
        assert_eq!(hash_region_len(1 << 30), 2066 * 4096);
        assert_eq!(level_sizes(1), Vec::<u64>::new());
        assert_eq!(level_sizes(128), vec![1]);
        assert_eq!(level_sizes(129), vec![2, 1]);
        assert_eq!(hash_region_len(4096), 4096);
    }

    #[test]
    fn partition_uuids_are_the_halves_of_the_root_hash() {
        // systemd/mkosi#1612: this root hash gives these two partition UUIDs.
        let hash: [u8; 32] = hex::decode("954172dfee9aaab2d90a0ab162ee6bc5a6a77ede951fad19f0f94df0d7266a93")
            .unwrap()
            .try_into()
            .unwrap();
        let root = RootHash(hash);
        assert_eq!(root.data_partition_uuid().to_string(), "954172df-ee9a-aab2-d90a-0ab162ee6bc5");
        assert_eq!(root.hash_partition_uuid().to_string(), "a6a77ede-951f-ad19-f0f9-4df0d7266a93");
    }

    fn sample(blocks: u64) -> Vec<u8> {
        // Mixed content: numbered blocks with every third one zero (as free space is).
        let mut data = vec![0u8; (blocks * BLOCK_SIZE) as usize];
        for (i, block) in data.chunks_exact_mut(BLOCK).enumerate() {
            if i % 3 != 1 {
                block[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                block[4000] = 0xa5;
            }
        }
        data
    }

    fn run(data: &[u8], threads: usize) -> (RootHash, Vec<u8>) {
        let file = tempfile::tempfile().unwrap();
        let hash_len = hash_region_len(data.len() as u64) + 8192;
        file.set_len(data.len() as u64 + hash_len).unwrap();
        let d = Region::new(&file, 0, data.len() as u64);
        d.write_at(0, data).unwrap();
        // Garbage in the hash region must not survive (the zeroed tail of block 0).
        let h = Region::new(&file, data.len() as u64, hash_len);
        h.write_at(0, &vec![0xee; hash_len as usize]).unwrap();
        let params = VerityParams::from_seed(&Seed::new("test"), "verity");
        let root = format_with_threads(&d, &h, &params, NonZeroUsize::new(threads).unwrap()).unwrap();
        let mut out = vec![0u8; hash_region_len(data.len() as u64) as usize];
        h.read_at(0, &mut out).unwrap();
        (root, out)
    }

    #[test]
    fn same_tree_with_any_thread_count_and_data_changes_the_root() {
        let data = sample(BLOCKS_PER_TASK * 2 + 300);
        let (one, tree_one) = run(&data, 1);
        let (four, tree_four) = run(&data, 4);
        assert_eq!(one, four);
        assert_eq!(tree_one, tree_four);
        assert!(tree_one[SUPERBLOCK_LEN..BLOCK].iter().all(|&b| b == 0), "block 0's tail is zeroed");
        let mut changed = data.clone();
        changed[5 * BLOCK + 17] ^= 1;
        assert_ne!(run(&changed, 2).0, one);
    }

    #[test]
    fn single_block_root_is_the_salted_block_digest() {
        let data = sample(1);
        let (root, tree) = run(&data, 2);
        let params = VerityParams::from_seed(&Seed::new("test"), "verity");
        let mut h = Sha256::new();
        h.update(params.salt);
        h.update(&data);
        assert_eq!(root.0.as_slice(), h.finalize().as_slice());
        assert_eq!(tree.len(), BLOCK, "only the superblock block");
    }

    #[test]
    fn refuses_bad_regions() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        let params = VerityParams::from_seed(&Seed::new("t"), "v");
        let err = format(&Region::new(&file, 0, 5000), &Region::new(&file, 8192, 8192), &params).unwrap_err();
        assert!(err.to_string().contains("not a positive multiple of 4096"), "{err}");
        let err = format(&Region::new(&file, 0, 129 * 4096), &Region::new(&file, 600_000, 8192), &params).unwrap_err();
        assert!(err.to_string().contains("needs 16384"), "{err}");
    }

    #[test]
    fn zero_check() {
        assert!(is_zero(&[0u8; BLOCK]));
        let mut b = [0u8; BLOCK];
        b[BLOCK - 1] = 1;
        assert!(!is_zero(&b));
    }
}
