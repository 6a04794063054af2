//! Where everything goes on a FAT32 volume: sector and cluster sizes, the size of each FAT, and
//! how many data clusters that leaves.
//!
//! ```text
//! sector 0   boot sector        sector 6   backup boot sector
//! sector 1   FSInfo             sector 7   backup FSInfo
//! sector 32  FAT #1, then FAT #2, then the data clusters (cluster 2 first: the root directory)
//! ```

use anyhow::{Result, bail};

pub(super) const SECTOR_SIZE: u64 = 512;
pub(super) const RESERVED_SECTORS: u32 = 32;
pub(super) const FAT_COUNT: u32 = 2;
pub(super) const BACKUP_BOOT_SECTOR: u32 = 6;
pub(super) const FSINFO_SECTOR: u32 = 1;
/// Clusters 0 and 1 exist only as FAT entries; data clusters are numbered from 2.
pub(super) const FIRST_DATA_CLUSTER: u32 = 2;
/// Fewer clusters than this and every driver decides the volume is FAT16, whatever the BPB says.
pub(super) const MIN_CLUSTERS: u32 = 65_525;
/// FAT32 entries are 28 bits and values from 0x0FFFFFF7 up are reserved, so cluster numbers stop
/// at 0x0FFFFFF6; counting from 2, that is fewer than 0x0FFFFFF5 clusters.
pub(super) const MAX_CLUSTERS: u32 = 0x0FFF_FFF4;
const FAT_ENTRY_SIZE: u64 = 4;
/// Microsoft's ceiling on the cluster size (64 KiB upsets some drivers and tools).
const MAX_SECTORS_PER_CLUSTER: u32 = 64;

/// The layout of one FAT32 volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    pub total_sectors: u32,
    pub sectors_per_cluster: u32,
    /// Sectors of one FAT.
    pub fat_sectors: u32,
    /// Data clusters (numbered 2 ..= clusters + 1).
    pub clusters: u32,
}

impl Geometry {
    /// The layout of a volume of `total_sectors` with clusters of `sectors_per_cluster`, or
    /// `None` when the cluster count would be outside what FAT32 allows.
    pub fn new(total_sectors: u32, sectors_per_cluster: u32) -> Option<Self> {
        let spc = u64::from(sectors_per_cluster);
        let total = u64::from(total_sectors);
        let clusters_with = |fat_sectors: u64| {
            total.saturating_sub(u64::from(RESERVED_SECTORS) + u64::from(FAT_COUNT) * fat_sectors) / spc
        };
        let sectors_needed =
            |fat_sectors: u64| ((clusters_with(fat_sectors) + 2) * FAT_ENTRY_SIZE).div_ceil(SECTOR_SIZE);
        // The FAT size and the cluster count depend on each other. A bigger FAT leaves fewer
        // clusters to describe, so "a FAT of n sectors is big enough" is false up to some n and
        // true from there on: bisect for the smallest such n. A FAT of `sectors_needed(0)`
        // sectors is always big enough (it could describe the whole volume as clusters), and
        // a FAT of 0 sectors never is.
        let (mut too_small, mut big_enough) = (0, sectors_needed(0));
        while big_enough - too_small > 1 {
            let mid = too_small + (big_enough - too_small) / 2;
            if sectors_needed(mid) <= mid {
                big_enough = mid;
            } else {
                too_small = mid;
            }
        }
        let fat_sectors = big_enough;
        let clusters = clusters_with(fat_sectors);
        if clusters < u64::from(MIN_CLUSTERS) || clusters > u64::from(MAX_CLUSTERS) {
            return None;
        }
        Some(Self {
            total_sectors,
            sectors_per_cluster,
            // Both fit: the FAT is smaller than the volume, and clusters <= MAX_CLUSTERS.
            fat_sectors: u32::try_from(fat_sectors).ok()?,
            clusters: u32::try_from(clusters).ok()?,
        })
    }

    pub fn cluster_bytes(&self) -> u64 {
        u64::from(self.sectors_per_cluster) * SECTOR_SIZE
    }

    /// Byte offset of FAT number `copy` (0 or 1).
    pub fn fat_offset(&self, copy: u32) -> u64 {
        (u64::from(RESERVED_SECTORS) + u64::from(copy) * u64::from(self.fat_sectors)) * SECTOR_SIZE
    }

    /// Byte offset of data cluster `cluster` (2 or more).
    pub fn cluster_offset(&self, cluster: u32) -> u64 {
        let data_start = self.fat_offset(FAT_COUNT);
        data_start + u64::from(cluster - FIRST_DATA_CLUSTER) * self.cluster_bytes()
    }

    /// Bytes of the data clusters together.
    pub fn data_bytes(&self) -> u64 {
        u64::from(self.clusters) * self.cluster_bytes()
    }
}

/// Sectors of a partition of `len` bytes (a partial last sector is left unused).
pub(super) fn total_sectors(len: u64) -> Result<u32> {
    let sectors = len / SECTOR_SIZE;
    match u32::try_from(sectors) {
        Ok(sectors) => Ok(sectors),
        Err(_) => bail!(
            "the {len}-byte partition is too large for FAT32, which counts 512-byte sectors in 32 \
             bits (at most {} bytes)",
            u64::from(u32::MAX) * SECTOR_SIZE
        ),
    }
}

/// The cluster size Microsoft's format tool picks for a FAT32 volume of `bytes`, in sectors.
fn preferred_sectors_per_cluster(bytes: u64) -> u32 {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    match bytes {
        b if b <= 260 * MIB => 1,
        b if b <= 8 * GIB => 8,
        b if b <= 16 * GIB => 16,
        b if b <= 32 * GIB => 32,
        _ => 64,
    }
}

/// Every valid layout of a volume of `total_sectors`, best first: the preferred cluster size,
/// then smaller ones (more room for many small files), then larger ones. Fails when FAT32
/// cannot use a partition that size at all.
pub(super) fn candidates(total_sectors: u32) -> Result<Vec<Geometry>> {
    let preferred = preferred_sectors_per_cluster(u64::from(total_sectors) * SECTOR_SIZE);
    let smaller = std::iter::successors(Some(preferred), |&s| (s > 1).then_some(s / 2));
    let larger =
        std::iter::successors(Some(preferred * 2), |&s| Some(s * 2)).take_while(|&s| s <= MAX_SECTORS_PER_CLUSTER);
    let found: Vec<Geometry> = smaller.chain(larger).filter_map(|spc| Geometry::new(total_sectors, spc)).collect();
    if found.is_empty() {
        let bytes = u64::from(total_sectors) * SECTOR_SIZE;
        if bytes < min_fat32_size() {
            bail!(
                "the {bytes}-byte partition is too small for FAT32: even with 512-byte clusters \
                 it would have fewer than {MIN_CLUSTERS} clusters; it must be at least {} bytes",
                min_fat32_size()
            );
        }
        bail!("no FAT32 cluster size from 512 bytes to 32 KiB suits a {bytes}-byte partition");
    }
    Ok(found)
}

/// Smallest partition size in bytes that can hold a FAT32 filesystem: 65,525 clusters of one
/// sector, their FATs and the reserved sectors.
pub fn min_fat32_size() -> u64 {
    let fat_sectors = ((u64::from(MIN_CLUSTERS) + 2) * FAT_ENTRY_SIZE).div_ceil(SECTOR_SIZE);
    let sectors = u64::from(RESERVED_SECTORS) + u64::from(FAT_COUNT) * fat_sectors + u64::from(MIN_CLUSTERS);
    sectors * SECTOR_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn sectors(bytes: u64) -> u32 {
        total_sectors(bytes).unwrap()
    }

    /// The layout invariants, checked from first principles.
    fn assert_consistent(g: &Geometry) {
        let used = u64::from(RESERVED_SECTORS)
            + u64::from(FAT_COUNT) * u64::from(g.fat_sectors)
            + u64::from(g.clusters) * u64::from(g.sectors_per_cluster);
        assert!(used <= u64::from(g.total_sectors), "{g:?} overruns the volume");
        // Less than one cluster is left over.
        assert!(u64::from(g.total_sectors) - used < u64::from(g.sectors_per_cluster));
        // The FAT holds an entry for every cluster plus the two reserved ones...
        let entries = u64::from(g.fat_sectors) * SECTOR_SIZE / 4;
        assert!(entries >= u64::from(g.clusters) + 2, "{g:?}: FAT too small");
        // ...and one sector less would not hold the clusters it would leave.
        let smaller_fat = u64::from(g.fat_sectors) - 1;
        let clusters_then =
            (u64::from(g.total_sectors) - u64::from(RESERVED_SECTORS) - u64::from(FAT_COUNT) * smaller_fat)
                / u64::from(g.sectors_per_cluster);
        assert!(smaller_fat * SECTOR_SIZE / 4 < clusters_then + 2, "{g:?}: FAT larger than needed");
        assert!((MIN_CLUSTERS..=MAX_CLUSTERS).contains(&g.clusters));
    }

    #[test]
    fn minimum_size_is_exact() {
        let min = min_fat32_size();
        assert_eq!(min, 66_581 * 512);
        let g = Geometry::new(sectors(min), 1).unwrap();
        assert_eq!(g.clusters, MIN_CLUSTERS);
        assert_consistent(&g);
        assert_eq!(Geometry::new(sectors(min) - 1, 1), None);
        assert!(candidates(sectors(min) - 1).is_err());
    }

    #[test]
    fn too_small_partition_error_names_both_sizes() {
        let err = candidates(sectors(32 * MIB)).unwrap_err().to_string();
        assert!(err.contains(&(32 * MIB).to_string()), "{err}");
        assert!(err.contains(&min_fat32_size().to_string()), "{err}");
    }

    #[test]
    fn fat_size_is_a_fixed_point() {
        for bytes in [
            min_fat32_size(),
            min_fat32_size() + 512 * 129,
            64 * MIB,
            100 * MIB + 3 * 512,
            260 * MIB,
            261 * MIB,
            300 * MIB,
            GIB,
            8 * GIB + 4096,
            33 * GIB,
            2047 * GIB,
        ] {
            for g in candidates(sectors(bytes)).unwrap() {
                assert_consistent(&g);
            }
        }
        // A sweep across sizes catches off-by-one sectors at FAT sector boundaries.
        let start = sectors(min_fat32_size());
        for total in (start..start + 3000).step_by(7) {
            assert_consistent(&Geometry::new(total, 1).unwrap());
        }
    }

    #[test]
    fn preferred_cluster_sizes_follow_microsoft() {
        let first = |bytes| candidates(sectors(bytes)).unwrap()[0].cluster_bytes();
        assert_eq!(first(64 * MIB), 512);
        assert_eq!(first(260 * MIB), 512);
        assert_eq!(first(300 * MIB), 4096);
        assert_eq!(first(8 * GIB), 4096);
        assert_eq!(first(16 * GIB), 8192);
        assert_eq!(first(32 * GIB), 16384);
        assert_eq!(first(100 * GIB), 32768);
        let order: Vec<u64> = candidates(sectors(300 * MIB)).unwrap().iter().map(Geometry::cluster_bytes).collect();
        assert_eq!(order, [4096, 2048, 1024, 512]);
    }

    #[test]
    fn huge_partitions() {
        assert!(total_sectors(u64::from(u32::MAX) * 512 + 511).is_ok());
        assert!(total_sectors(u64::from(u32::MAX) * 512 + 512).is_err());
        // 512-byte clusters on 200 GiB would need more clusters than FAT32 numbers.
        assert_eq!(Geometry::new(sectors(200 * GIB), 1), None);
        let g = candidates(sectors(2047 * GIB)).unwrap()[0];
        assert_eq!(g.cluster_bytes(), 32768);
    }

    #[test]
    fn offsets() {
        let g = Geometry::new(sectors(64 * MIB), 1).unwrap();
        assert_eq!(g.fat_offset(0), 32 * 512);
        assert_eq!(g.fat_offset(1), (32 + u64::from(g.fat_sectors)) * 512);
        assert_eq!(g.cluster_offset(2), (32 + 2 * u64::from(g.fat_sectors)) * 512);
        assert_eq!(g.cluster_offset(3) - g.cluster_offset(2), 512);
    }
}
