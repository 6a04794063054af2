//! A write-once FAT32 writer for the EFI system partition.
//!
//! The whole volume is planned before a byte is written: `listing` names every entry for FAT
//! and refuses what FAT cannot hold, `layout` picks the cluster size and FAT size, and
//! `allocation` packs every directory and file into contiguous cluster runs. Writing is then
//! a handful of positioned writes into a zeroed region: the boot sectors, the used part of both
//! FATs, the directories and the file data. Nothing is read back and nothing depends on the
//! host, so the same tree and options always give the same bytes.

mod allocation;
mod boot_sector;
mod dir_entry;
mod layout;
mod listing;
mod names;
pub mod read;
pub(crate) mod timestamp;

pub use layout::min_fat32_size;

use crate::clock::BuildClock;
use crate::region::Region;
use crate::tree::{NodeId, Tree};
use allocation::{Allocation, clusters_needed};
use anyhow::{Context, Result, bail};
use boot_sector::{MEDIA_FIXED_DISK, VolumeIdentity};
use dir_entry::{ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_VOLUME_ID, DOT_NAME, DOTDOT_NAME, ENTRY_SIZE, ShortEntry};
use layout::{BACKUP_BOOT_SECTOR, FAT_COUNT, FSINFO_SECTOR, Geometry, SECTOR_SIZE};
use listing::{EntryKind, Listing};
use timestamp::FatTime;

/// File data is copied through a buffer of this size, so no file is ever held whole in memory.
const COPY_CHUNK: usize = 1 << 20;
/// FAT entries are written this many at a time.
const FAT_CHUNK_ENTRIES: usize = 64 * 1024;

/// How to write the volume.
#[derive(Debug, Clone)]
pub struct FatOptions {
    /// The volume serial number (derive it from the build seed).
    pub volume_id: u32,
    /// At most 11 ASCII characters, stored upper-cased (`ESP`); empty for no label.
    pub label: String,
    /// Where every entry's timestamps come from.
    pub clock: BuildClock,
    /// LBA at which the partition starts on its disk, recorded in the boot sector.
    pub hidden_sectors: u32,
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatReport {
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// Data clusters of the volume.
    pub clusters: u32,
    pub free_clusters: u32,
    /// Regular-file entries (a hard-linked file counts, and is stored, once per name).
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
}

/// Writes `tree` as a FAT32 filesystem filling `region`, which must read as zeros.
pub fn write_fat32(tree: &Tree, region: &Region<'_>, opts: &FatOptions) -> Result<FatReport> {
    let label =
        names::volume_label(&opts.label).with_context(|| format!("volume label `{}` cannot be used", opts.label))?;
    let listing = Listing::from_tree(tree, label.is_some())?;
    let geometry = choose_geometry(&listing, region.len())?;
    let allocation = Allocation::new(&listing, geometry.cluster_bytes());
    let identity = VolumeIdentity { volume_id: opts.volume_id, label, hidden_sectors: opts.hidden_sectors };
    write_boot_region(region, &geometry, &identity, &allocation)?;
    write_fats(region, &geometry, &allocation)?;
    write_directories(tree, region, &geometry, &listing, &allocation, opts, label)?;
    write_file_data(tree, region, &geometry, &listing, &allocation)?;
    Ok(FatReport {
        cluster_size: u32::try_from(geometry.cluster_bytes()).expect("layout keeps clusters at or below 32 KiB"),
        clusters: geometry.clusters,
        free_clusters: geometry.clusters - allocation.used,
        files: listing.files,
        dirs: listing.dirs.len() as u64,
    })
}

/// The preferred layout that has room for the content; smaller clusters are tried before giving
/// up, since they waste less on many small files.
fn choose_geometry(listing: &Listing<'_>, region_len: u64) -> Result<Geometry> {
    let candidates = layout::candidates(layout::total_sectors(region_len)?)?;
    for g in &candidates {
        if clusters_needed(listing, g.cluster_bytes()) <= u64::from(g.clusters) {
            return Ok(*g);
        }
    }
    // Report against the layout that came closest.
    let (g, needed_bytes) = candidates
        .iter()
        .map(|g| (g, clusters_needed(listing, g.cluster_bytes()) * g.cluster_bytes()))
        .min_by_key(|(g, needed_bytes)| needed_bytes.saturating_sub(g.data_bytes()))
        .expect("`candidates` fails rather than return an empty list");
    bail!(
        "the files and directories need {needed_bytes} bytes (in {}-byte clusters), but the \
         {region_len}-byte partition holds only {} bytes of them ({} clusters)",
        g.cluster_bytes(),
        g.data_bytes(),
        g.clusters
    );
}

/// The boot sector and FSInfo, each with its backup.
fn write_boot_region(
    region: &Region<'_>,
    g: &Geometry,
    identity: &VolumeIdentity,
    allocation: &Allocation,
) -> Result<()> {
    let boot = boot_sector::boot_sector(g, identity);
    let free = g.clusters - allocation.used;
    let fsinfo = boot_sector::fsinfo_sector(free, allocation.next_free(g.clusters));
    for (base, what) in [(0, "boot sector"), (BACKUP_BOOT_SECTOR, "backup boot sector")] {
        region.write_at(u64::from(base) * SECTOR_SIZE, &boot).with_context(|| format!("writing the FAT32 {what}"))?;
        region
            .write_at(u64::from(base + FSINFO_SECTOR) * SECTOR_SIZE, &fsinfo)
            .with_context(|| format!("writing the FAT32 {what}'s FSInfo sector"))?;
    }
    Ok(())
}

/// The used part of both FAT copies; the free entries after it are the region's zeros.
fn write_fats(region: &Region<'_>, g: &Geometry, allocation: &Allocation) -> Result<()> {
    let mut entries = allocation.fat_entries(MEDIA_FIXED_DISK).peekable();
    let mut buf = Vec::with_capacity(FAT_CHUNK_ENTRIES * 4);
    let mut offset = 0u64;
    while entries.peek().is_some() {
        buf.clear();
        for entry in entries.by_ref().take(FAT_CHUNK_ENTRIES) {
            buf.extend_from_slice(&entry.to_le_bytes());
        }
        for copy in 0..FAT_COUNT {
            region.write_at(g.fat_offset(copy) + offset, &buf).with_context(|| format!("writing FAT #{}", copy + 1))?;
        }
        offset += buf.len() as u64;
    }
    Ok(())
}

/// Every directory's entries, in its clusters.
fn write_directories(
    tree: &Tree,
    region: &Region<'_>,
    g: &Geometry,
    listing: &Listing<'_>,
    allocation: &Allocation,
    opts: &FatOptions,
    label: Option<[u8; 11]>,
) -> Result<()> {
    let time_of = |node: NodeId| FatTime::from_timestamp(opts.clock.stamp(&tree.node(node).meta));
    for (index, dir) in listing.dirs.iter().enumerate() {
        let mut bytes = Vec::with_capacity(dir.slots * ENTRY_SIZE);
        let mut push = |entry: ShortEntry| bytes.extend_from_slice(&entry.encode());
        match dir.parent {
            None => {
                if let Some(label) = label {
                    push(ShortEntry {
                        name: label,
                        attr: ATTR_VOLUME_ID,
                        first_cluster: 0,
                        size: 0,
                        time: time_of(dir.node),
                    });
                }
            }
            Some(parent) => {
                push(ShortEntry {
                    name: DOT_NAME,
                    attr: ATTR_DIRECTORY,
                    first_cluster: allocation.dirs[index].first,
                    size: 0,
                    time: time_of(dir.node),
                });
                push(ShortEntry {
                    name: DOTDOT_NAME,
                    attr: ATTR_DIRECTORY,
                    // The root is named by cluster 0 here, whatever cluster it starts at.
                    first_cluster: if parent == 0 { 0 } else { allocation.dirs[parent].first },
                    size: 0,
                    time: time_of(listing.dirs[parent].node),
                });
            }
        }
        for (entry, &first_cluster) in dir.entries.iter().zip(&allocation.first_clusters[index]) {
            if let Some(long) = &entry.name.long {
                let checksum = names::short_name_checksum(&entry.name.short);
                for slot in dir_entry::long_name_entries(long, checksum) {
                    bytes.extend_from_slice(&slot);
                }
            }
            let (attr, size) = match entry.kind {
                EntryKind::File { size, .. } => (ATTR_ARCHIVE, size),
                EntryKind::Directory(_) => (ATTR_DIRECTORY, 0),
            };
            bytes.extend_from_slice(
                &ShortEntry { name: entry.name.short, attr, first_cluster, size, time: time_of(entry.node) }.encode(),
            );
        }
        // The rest of the last cluster stays zero: a zero first byte ends a directory.
        region
            .write_at(g.cluster_offset(allocation.dirs[index].first), &bytes)
            .with_context(|| format!("writing directory `/{}`", listing.path(index)))?;
    }
    Ok(())
}

/// Every file's bytes, streamed into its clusters.
fn write_file_data(
    tree: &Tree,
    region: &Region<'_>,
    g: &Geometry,
    listing: &Listing<'_>,
    allocation: &Allocation,
) -> Result<()> {
    let mut reader = tree.content_reader();
    let mut buf = vec![0u8; COPY_CHUNK];
    for (index, (dir, firsts)) in listing.dirs.iter().zip(&allocation.first_clusters).enumerate() {
        for (entry, &first_cluster) in dir.entries.iter().zip(firsts) {
            let EntryKind::File { size, content } = entry.kind else {
                continue;
            };
            if size == 0 {
                continue;
            }
            let start = g.cluster_offset(first_cluster);
            let size = u64::from(size);
            let mut pos = 0u64;
            while pos < size {
                let n = (size - pos).min(COPY_CHUNK as u64) as usize;
                let chunk = &mut buf[..n];
                reader
                    .read_at(content, size, pos, chunk)
                    .with_context(|| format!("reading `{}` for the FAT32 volume", listing.entry_path(index, entry)))?;
                // The region reads as zeros already; skipping zero runs keeps the image sparse.
                if chunk.iter().any(|&b| b != 0) {
                    region.write_at(start + pos, chunk).with_context(|| {
                        format!("writing `{}` into the FAT32 volume", listing.entry_path(index, entry))
                    })?;
                }
                pos += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Content, Meta, NodeKind};
    use std::collections::BTreeMap;

    const MIB: u64 = 1 << 20;

    fn opts() -> FatOptions {
        FatOptions {
            volume_id: 0xA1B2_C3D4,
            label: "esp".into(),
            clock: BuildClock::fixed(1_700_000_000),
            hidden_sectors: 2048,
        }
    }

    fn file(tree: &mut Tree, path: &str, bytes: Vec<u8>) {
        tree.insert(
            path.as_bytes(),
            Meta::root(0o644),
            NodeKind::File { size: bytes.len() as u64, content: Content::Bytes(bytes.into()) },
        )
        .unwrap();
    }

    fn image(len: u64) -> std::fs::File {
        let f = tempfile::tempfile().unwrap();
        f.set_len(len).unwrap();
        f
    }

    fn read(f: &std::fs::File, pos: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        Region::new(f, 0, f.metadata().unwrap().len()).read_at(pos, &mut buf).unwrap();
        buf
    }

    #[test]
    fn too_small_partition_is_refused_with_both_sizes() {
        let f = image(32 * MIB);
        let err = write_fat32(&Tree::new(), &Region::new(&f, 0, 32 * MIB), &opts()).unwrap_err().to_string();
        assert!(err.contains("33554432-byte partition is too small"), "{err}");
        assert!(err.contains(&min_fat32_size().to_string()), "{err}");
    }

    #[test]
    fn content_that_does_not_fit_is_refused_with_both_sizes() {
        let mut t = Tree::new();
        file(&mut t, "big.bin", vec![1u8; 40 * MIB as usize]);
        let f = image(40 * MIB);
        let err = write_fat32(&t, &Region::new(&f, 0, 40 * MIB), &opts()).unwrap_err().to_string();
        // 80 Ki clusters of data plus one for the root directory.
        assert!(err.contains(&format!("need {} bytes", 40 * MIB + 512)), "{err}");
        assert!(err.contains("the 41943040-byte partition holds only"), "{err}");
    }

    #[test]
    fn bad_label_is_refused() {
        let f = image(40 * MIB);
        let err = write_fat32(
            &Tree::new(),
            &Region::new(&f, 0, 40 * MIB),
            &FatOptions { label: "EFI:SYSTEM".into(), ..opts() },
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("volume label `EFI:SYSTEM`"), "{err:#}");
    }

    #[test]
    fn root_subdirectories_and_fsinfo_are_laid_out_as_planned() {
        let mut t = Tree::new();
        file(&mut t, "EFI/BOOT/BOOTX64.EFI", vec![0x4D; 1000]);
        t.insert(b"EFI/Linux", Meta::root(0o755), NodeKind::Directory { entries: BTreeMap::new() }).unwrap();
        let f = image(64 * MIB);
        let report = write_fat32(&t, &Region::new(&f, 0, 64 * MIB), &opts()).unwrap();
        assert_eq!(report.cluster_size, 512);
        assert_eq!((report.files, report.dirs), (1, 4));
        // Root, EFI, then EFI's subdirectories (BOOT and its file, Linux).
        assert_eq!(report.clusters - report.free_clusters, 1 + 1 + 1 + 2 + 1);

        let boot = read(&f, 0, 512);
        assert_eq!(read(&f, 6 * 512, 512), boot);
        assert_eq!(read(&f, 7 * 512, 512), read(&f, 512, 512));
        let fsinfo = read(&f, 512, 512);
        let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        assert_eq!(u32_at(&fsinfo, 488), report.free_clusters);
        assert_eq!(u32_at(&fsinfo, 492), 2 + 6);

        let fat_sectors = u64::from(u32_at(&boot, 36));
        let cluster = |n: u64| (32 + 2 * fat_sectors + (n - 2)) * 512;
        let root = read(&f, cluster(2), 64);
        assert_eq!(&root[..11], b"ESP        ");
        assert_eq!(root[11], ATTR_VOLUME_ID);
        assert_eq!(&root[32..43], b"EFI        ");
        let efi = read(&f, cluster(3), 5 * 32);
        assert_eq!(&efi[..11], b".          ");
        assert_eq!(efi[26], 3);
        assert_eq!(&efi[32..43], b"..         ");
        assert_eq!(efi[32 + 26], 0, "`..` names the root as cluster 0");
        assert_eq!(&efi[64..75], b"BOOT       ");
        // `Linux` needs a long name: one long-name entry, then its short entry.
        assert_eq!(efi[96], 0x41);
        assert_eq!(&efi[128..139], b"LINUX      ");
        assert_eq!(efi[128 + 26], 7);
        let boot_dir = read(&f, cluster(4), 96);
        assert_eq!(boot_dir[32 + 26], 3, "`..` names EFI by its cluster");
        assert_eq!(boot_dir[64 + 26], 5);
        assert_eq!(read(&f, cluster(5), 2), [0x4D, 0x4D]);
    }
}
