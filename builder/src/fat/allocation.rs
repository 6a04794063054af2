//! Which clusters each directory and file gets, and the FAT entries that chain them.
//!
//! The volume is written once, so every chain is contiguous and the chains are packed from
//! cluster 2 on, in a fixed order: each directory (breadth-first, the root first, so it lands on
//! cluster 2), immediately followed by the data of its files in name order.

use super::layout::FIRST_DATA_CLUSTER;
use super::listing::{EntryKind, Listing};

/// FAT value closing a chain (any value from 0x0FFFFFF8 works; this is what everyone writes).
const END_OF_CHAIN: u32 = 0x0FFF_FFFF;

/// Clusters a directory of `slots` 32-byte entries takes: at least one, even when empty, for
/// its `.` and `..` (and so the root always has a cluster).
fn directory_clusters(slots: usize, cluster_bytes: u64) -> u64 {
    (slots as u64 * 32).div_ceil(cluster_bytes).max(1)
}

fn file_clusters(size: u32, cluster_bytes: u64) -> u64 {
    u64::from(size).div_ceil(cluster_bytes)
}

/// Data clusters `listing` needs with clusters of `cluster_bytes`.
pub(super) fn clusters_needed(listing: &Listing<'_>, cluster_bytes: u64) -> u64 {
    listing
        .dirs
        .iter()
        .map(|dir| {
            let files: u64 = dir
                .entries
                .iter()
                .map(|e| match e.kind {
                    EntryKind::File { size, .. } => file_clusters(size, cluster_bytes),
                    EntryKind::Directory(_) => 0,
                })
                .sum();
            directory_clusters(dir.slots, cluster_bytes) + files
        })
        .sum()
}

/// A run of clusters: `first .. first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Chain {
    pub first: u32,
    pub count: u32,
}

/// Where everything in a [`Listing`] lives.
#[derive(Debug)]
pub(super) struct Allocation {
    /// The chain of each directory, by index in [`Listing::dirs`].
    pub dirs: Vec<Chain>,
    /// First cluster of each entry, per directory and entry index: a subdirectory's first
    /// cluster, a file's, or 0 for an empty file.
    pub first_clusters: Vec<Vec<u32>>,
    /// Every chain in cluster order, back to back from cluster 2.
    pub chains: Vec<Chain>,
    /// Clusters in use.
    pub used: u32,
}

impl Allocation {
    /// Places `listing` on clusters of `cluster_bytes`. The caller has checked with
    /// [`clusters_needed`] that the volume has room, which also keeps cluster numbers in range.
    pub fn new(listing: &Listing<'_>, cluster_bytes: u64) -> Self {
        let mut next = FIRST_DATA_CLUSTER;
        let mut chains = Vec::new();
        let mut take = |count: u64| -> Chain {
            let count = u32::try_from(count).expect("the caller checked that the chains fit the volume");
            let chain = Chain { first: next, count };
            next += count;
            chains.push(chain);
            chain
        };
        let mut dirs = Vec::with_capacity(listing.dirs.len());
        let mut first_clusters = Vec::with_capacity(listing.dirs.len());
        for dir in &listing.dirs {
            dirs.push(take(directory_clusters(dir.slots, cluster_bytes)));
            let firsts: Vec<u32> = dir
                .entries
                .iter()
                .map(|e| match e.kind {
                    EntryKind::File { size, .. } if size > 0 => take(file_clusters(size, cluster_bytes)).first,
                    // Filled in below, once every directory has its chain.
                    EntryKind::File { .. } | EntryKind::Directory(_) => 0,
                })
                .collect();
            first_clusters.push(firsts);
        }
        for (dir, firsts) in listing.dirs.iter().zip(&mut first_clusters) {
            for (entry, first) in dir.entries.iter().zip(firsts.iter_mut()) {
                if let EntryKind::Directory(sub) = entry.kind {
                    *first = dirs[sub].first;
                }
            }
        }
        Self { dirs, first_clusters, chains, used: next - FIRST_DATA_CLUSTER }
    }

    /// The first free cluster, if any of `clusters` is free.
    pub fn next_free(&self, clusters: u32) -> Option<u32> {
        (self.used < clusters).then_some(FIRST_DATA_CLUSTER + self.used)
    }

    /// The FAT's used part, entry by entry from entry 0: the two reserved entries, then each
    /// chain's links. Entries after these are 0 (free), which the zeroed output already holds.
    pub fn fat_entries(&self, media: u8) -> impl Iterator<Item = u32> + '_ {
        // Entry 0 repeats the media byte; entry 1 has the clean-shutdown and no-error bits set.
        let reserved = [0x0FFF_FF00 | u32::from(media), END_OF_CHAIN];
        reserved.into_iter().chain(self.chains.iter().flat_map(|c| {
            let last = c.first + c.count - 1;
            (c.first..=last).map(move |n| if n == last { END_OF_CHAIN } else { n + 1 })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Content, Meta, NodeKind, Tree};

    fn file(tree: &mut Tree, path: &str, len: usize) {
        tree.insert(
            path.as_bytes(),
            Meta::root(0o644),
            NodeKind::File { size: len as u64, content: Content::Bytes(vec![7u8; len].into()) },
        )
        .unwrap();
    }

    #[test]
    fn packs_directories_then_their_files() {
        let mut t = Tree::new();
        file(&mut t, "B.BIN", 1025);
        file(&mut t, "EMPTY", 0);
        file(&mut t, "SUB/C.BIN", 512);
        let listing = Listing::from_tree(&t, true).unwrap();
        assert_eq!(clusters_needed(&listing, 512), 1 + 3 + 1 + 1);
        let a = Allocation::new(&listing, 512);
        assert_eq!(a.dirs[0], Chain { first: 2, count: 1 });
        // Root entries in name order: B.BIN, EMPTY, SUB.
        assert_eq!(a.first_clusters[0], [3, 0, 6]);
        assert_eq!(a.dirs[1], Chain { first: 6, count: 1 });
        assert_eq!(a.first_clusters[1], [7]);
        assert_eq!(a.used, 6);
        assert_eq!(a.next_free(100), Some(8));
        assert_eq!(a.next_free(6), None);
        let fat: Vec<u32> = a.fat_entries(0xF8).collect();
        let eoc = END_OF_CHAIN;
        assert_eq!(fat, [0x0FFF_FFF8, eoc, eoc, 4, 5, eoc, eoc, eoc]);
    }

    #[test]
    fn big_directories_span_clusters() {
        let mut t = Tree::new();
        for i in 0..100 {
            file(&mut t, &format!("D/F{i}"), 0);
        }
        let listing = Listing::from_tree(&t, false).unwrap();
        // 2 (`.`, `..`) + 100 short names = 102 slots = 3264 bytes.
        assert_eq!(listing.dirs[1].slots, 102);
        let a = Allocation::new(&listing, 512);
        assert_eq!(a.dirs[1].count, 7);
        assert_eq!(clusters_needed(&listing, 4096), 2);
    }
}
