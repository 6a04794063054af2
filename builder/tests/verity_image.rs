//! The dm-verity hash tree judged by cryptsetup's `veritysetup` (package cryptsetup-bin): it
//! verifies airlock's tree with the returned root hash, reads the seeded salt and UUID from its
//! superblock, writes byte-identical trees from the same data, salt and UUID, and refuses the
//! data once any single byte of it changes. A missing veritysetup fails the test.

#![allow(clippy::unwrap_used, reason = "a test should stop at the first unexpected error")]

mod support;

use airlock::region::Region;
use airlock::seed::Seed;
use airlock::verity::{self, RootHash, VerityParams};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use support::{tool, tool_ok};

/// Where the data and hash regions sit inside the test "disk", as partitions would.
const DATA_OFFSET: u64 = 1 << 20;

/// Blocks left as a hole of the sparse disk file: free space, as airlock's ext4 writer leaves
/// it; longer than one 1 MiB read, so the tree builder skips it without reading.
const HOLE: std::ops::Range<usize> = 1000..1700;

/// Deterministic data of `blocks` 4 KiB blocks: pseudo-random bytes with zero blocks scattered
/// and one long run of them ([`HOLE`]).
fn sample_data(blocks: u64) -> Vec<u8> {
    let mut data = vec![0u8; (blocks * 4096) as usize];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, block) in data.chunks_exact_mut(4096).enumerate() {
        if i % 7 == 3 || i % 7 == 4 || HOLE.contains(&i) {
            continue; // free space
        }
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
    }
    data
}

/// Writes `data` into a disk file at [`DATA_OFFSET`], formats its tree into the region after
/// it with airlock, and copies both regions out as separate files for veritysetup.
fn format_with_airlock(dir: &Path, data: &[u8], seed: &str) -> (RootHash, VerityParams) {
    let disk = File::options().read(true).write(true).create_new(true).open(dir.join("disk.img")).unwrap();
    let data_len = data.len() as u64;
    let hash_offset = DATA_OFFSET + data_len;
    // A partition is usually bigger than the tree: the rest must stay as it was (zeros here).
    let hash_len = verity::hash_region_len(data_len) + (1 << 16);
    disk.set_len(hash_offset + hash_len + (1 << 20)).unwrap();
    let data_region = Region::new(&disk, DATA_OFFSET, data_len);
    // Only non-zero blocks are written: zero ones stay holes of the sparse file.
    for (i, block) in data.chunks(4096).enumerate() {
        if block.iter().any(|&b| b != 0) {
            data_region.write_at(i as u64 * 4096, block).unwrap();
        }
    }
    let params = VerityParams::from_seed(&Seed::new(seed), "verity-root-a");
    let root = verity::format(&data_region, &Region::new(&disk, hash_offset, hash_len), &params).unwrap();

    let mut hash = vec![0u8; verity::hash_region_len(data_len) as usize];
    disk.read_exact_at(&mut hash, hash_offset).unwrap();
    let mut rest = vec![0u8; (hash_len - hash.len() as u64) as usize];
    disk.read_exact_at(&mut rest, hash_offset + hash.len() as u64).unwrap();
    assert!(rest.iter().all(|&b| b == 0), "nothing written past the tree");
    fs::write(dir.join("data.img"), data).unwrap();
    fs::write(dir.join("hash.img"), &hash).unwrap();
    fs::remove_file(dir.join("disk.img")).unwrap();
    (root, params)
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}

fn verify(dir: &Path, data: &str, root: &RootHash) -> std::process::Output {
    tool("veritysetup", &["verify", &path(dir, data), &path(dir, "hash.img"), &root.hex()])
}

/// One tree size end to end against veritysetup.
fn judge(blocks: u64, flips: &[u64]) {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let data = sample_data(blocks);
    let (root, params) = format_with_airlock(dir, &data, "demo 1.0");

    let ok = verify(dir, "data.img", &root);
    assert!(ok.status.success(), "veritysetup verify refused airlock's tree of {blocks} blocks: {ok:?}");

    let dump = tool_ok("veritysetup", &["dump", &path(dir, "hash.img")]);
    let field = |name: &str| {
        dump.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no `{name}` in veritysetup dump:\n{dump}"))
    };
    assert_eq!(field("UUID:"), params.uuid.to_string(), "{dump}");
    assert_eq!(field("Salt:"), hex::encode(params.salt), "{dump}");
    assert_eq!(field("Hash type:"), "1", "{dump}");
    assert_eq!(field("Data blocks:"), blocks.to_string(), "{dump}");
    assert_eq!(field("Hash algorithm:"), "sha256", "{dump}");

    // The reference tree: veritysetup format with the same salt and UUID.
    let out = tool_ok(
        "veritysetup",
        &[
            "format",
            &format!("--salt={}", hex::encode(params.salt)),
            &format!("--uuid={}", params.uuid),
            &format!("--root-hash-file={}", path(dir, "ref.roothash")),
            &path(dir, "data.img"),
            &path(dir, "ref.img"),
        ],
    );
    let reference_root = fs::read_to_string(dir.join("ref.roothash")).unwrap();
    assert_eq!(reference_root.trim(), root.hex(), "root hash differs from veritysetup's:\n{out}");
    let ours = fs::read(dir.join("hash.img")).unwrap();
    let theirs = fs::read(dir.join("ref.img")).unwrap();
    assert_eq!(ours.len(), theirs.len(), "hash device length");
    if let Some(at) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        panic!("hash device differs from veritysetup's at byte {at} ({blocks} data blocks)");
    }

    for &at in flips {
        let mut bad = data.clone();
        bad[at as usize] ^= 0x01;
        fs::write(dir.join("bad.img"), &bad).unwrap();
        let out = verify(dir, "bad.img", &root);
        assert!(!out.status.success(), "veritysetup accepted data with byte {at} flipped");
        // veritysetup names the corrupt data block (or, with a single block and no tree, the
        // root hash itself).
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expected = if blocks == 1 {
            "Verification of root hash failed".to_string()
        } else {
            format!("Verification failed at position {}.", at / 4096 * 4096)
        };
        assert!(stderr.contains(&expected), "with byte {at} flipped, veritysetup said: {stderr}");
    }
}

#[test]
fn one_block_no_tree() {
    judge(1, &[0, 4095]);
}

#[test]
fn one_full_leaf_block_and_one_past_it() {
    judge(128, &[127 * 4096 + 5]);
    judge(129, &[128 * 4096]);
}

#[test]
fn three_levels_bytes_flipped_everywhere() {
    // 128 * 128 + 5 blocks: three levels (2 + 130 hash blocks below the top) and data that
    // spans several hashing tasks, so each thread's share is checked.
    let blocks = 128 * 128 + 5;
    let len = blocks * 4096;
    // First byte, a zero block, the middle of the hole, mid-run, a task boundary, last byte.
    judge(blocks, &[0, 3 * 4096 + 100, 1350 * 4096 + 7, len / 2 + 1, 8192 * 4096 - 1, len - 1]);
}

#[test]
fn different_seeds_different_trees_same_seed_same_bytes() {
    let data = sample_data(300);
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let (root_a, _) = format_with_airlock(a.path(), &data, "demo 1.0");
    let (root_b, _) = format_with_airlock(b.path(), &data, "demo 1.0");
    let (root_c, _) = format_with_airlock(c.path(), &data, "demo 1.1");
    assert_eq!(root_a, root_b);
    assert_eq!(fs::read(a.path().join("hash.img")).unwrap(), fs::read(b.path().join("hash.img")).unwrap());
    assert_ne!(root_a, root_c, "the salt comes from the seed");
}
