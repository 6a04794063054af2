//! Reading one file from a FAT32 volume, read-only: how `airlock inspect` finds the manifest and
//! `airlock.toml` on an image's ESP (or a stick's) without mounting it.
//!
//! The volume is hostile: whoever held the stick could write anything, and any FAT driver
//! (Windows, macOS, mtools) may have rewritten the files, fragmented them or used long names
//! the writer here never makes. So every field is checked before it is used, a cluster chain
//! may not loop or leave the volume, and a file is read no further than a cap.

use crate::region::Region;
use anyhow::{Context, Result, bail, ensure};

const ENTRY: usize = 32;
const ATTR_LONG_NAME: u8 = 0x0F;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_VOLUME_ID: u8 = 0x08;
/// FAT32 entries are 28 bits; values from here on end a chain.
const END_OF_CHAIN: u32 = 0x0FFF_FFF8;
const BAD_CLUSTER: u32 = 0x0FFF_FFF7;
/// Directories are read no further than FAT's own limit (65,536 entries of 32 bytes).
const MAX_DIRECTORY: u64 = 65_536 * ENTRY as u64;

/// A FAT32 volume's geometry, from its boot sector.
#[derive(Debug)]
pub struct FatVolume<'a> {
    region: &'a Region<'a>,
    cluster_bytes: u64,
    fat_offset: u64,
    data_offset: u64,
    clusters: u32,
    root_cluster: u32,
}

/// A directory entry found by [`FatVolume::find`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    directory: bool,
    cluster: u32,
    size: u32,
}

impl<'a> FatVolume<'a> {
    /// Reads and checks the boot sector.
    pub fn open(region: &'a Region<'a>) -> Result<Self> {
        let mut bs = [0u8; 512];
        region.read_at(0, &mut bs).context("reading the boot sector")?;
        ensure!(bs[510..512] == [0x55, 0xAA], "no boot sector signature");
        let u16_at = |o: usize| u64::from(u16::from_le_bytes([bs[o], bs[o + 1]]));
        let u32_at = |o: usize| u32::from_le_bytes([bs[o], bs[o + 1], bs[o + 2], bs[o + 3]]);
        let bytes_per_sector = u16_at(11);
        let sectors_per_cluster = u64::from(bs[13]);
        let reserved = u16_at(14);
        let fats = u64::from(bs[16]);
        let fat_sectors = u64::from(u32_at(36));
        let total_sectors = match u16_at(19) {
            0 => u64::from(u32_at(32)),
            n => n,
        };
        ensure!(
            matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096),
            "{bytes_per_sector} bytes per sector is not FAT's"
        );
        ensure!(
            sectors_per_cluster.is_power_of_two() && sectors_per_cluster <= 128,
            "{sectors_per_cluster} sectors per cluster is not FAT's"
        );
        ensure!(u16_at(17) == 0 && fat_sectors > 0, "not FAT32 (a FAT12/16 root directory or no FAT32 size)");
        ensure!(reserved > 0 && fats > 0, "no reserved sectors or no FAT");
        let data_sector = reserved + fats * fat_sectors;
        ensure!(
            total_sectors > data_sector && total_sectors * bytes_per_sector <= region.len(),
            "the volume's {total_sectors} sectors do not fit the partition"
        );
        let clusters = (total_sectors - data_sector) / sectors_per_cluster;
        // The FAT must have an entry for every cluster.
        ensure!(fat_sectors * bytes_per_sector / 4 >= clusters + 2, "the FAT is smaller than the volume");
        Ok(Self {
            region,
            cluster_bytes: bytes_per_sector * sectors_per_cluster,
            fat_offset: reserved * bytes_per_sector,
            data_offset: data_sector * bytes_per_sector,
            clusters: u32::try_from(clusters).context("more clusters than FAT32 can number")?,
            root_cluster: u32_at(44),
        })
    }

    /// The file at `path` (`/`-separated, matched without regard to case, as FAT does), read
    /// whole if it is no longer than `cap` bytes; `None` when there is no such file.
    pub fn read_file(&self, path: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        let mut dir = self.root_cluster;
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let Some((file, dirs)) = parts.split_last() else { bail!("no file name in `{path}`") };
        for name in dirs {
            match self.find(dir, name)? {
                Some(Found { directory: true, cluster, .. }) => dir = cluster,
                _ => return Ok(None),
            }
        }
        let Some(found) = self.find(dir, file)? else { return Ok(None) };
        ensure!(!found.directory, "`{path}` is a directory");
        let size = u64::from(found.size);
        ensure!(size <= cap, "`{path}` holds {size} bytes, more than the {cap} read");
        let bytes = self.read_chain(found.cluster, size).with_context(|| format!("reading `{path}`"))?;
        Ok(Some(bytes))
    }

    /// The entry named `name` in the directory starting at `cluster`.
    fn find(&self, cluster: u32, name: &str) -> Result<Option<Found>> {
        let bytes = self.read_chain(cluster, MAX_DIRECTORY).context("reading a directory")?;
        let mut long: Vec<(u8, [u16; 13])> = Vec::new();
        for e in bytes.chunks_exact(ENTRY) {
            match e[0] {
                0x00 => break,
                0xE5 => {
                    long.clear();
                    continue;
                }
                _ => {}
            }
            let attr = e[11];
            if attr & 0x3F == ATTR_LONG_NAME {
                let mut units = [0u16; 13];
                let offsets = (1..11).step_by(2).chain((14..26).step_by(2)).chain((28..32).step_by(2));
                for (u, o) in units.iter_mut().zip(offsets) {
                    *u = u16::from_le_bytes([e[o], e[o + 1]]);
                }
                long.push((e[13], units));
                continue;
            }
            let long_name = long_name(&long, &e[..11]);
            long.clear();
            if attr & ATTR_VOLUME_ID != 0 {
                continue;
            }
            let entry_name = long_name.unwrap_or_else(|| short_name(e));
            if entry_name.eq_ignore_ascii_case(name) {
                let hi = u32::from(u16::from_le_bytes([e[20], e[21]]));
                let lo = u32::from(u16::from_le_bytes([e[26], e[27]]));
                let size = u32::from_le_bytes([e[28], e[29], e[30], e[31]]);
                return Ok(Some(Found { directory: attr & ATTR_DIRECTORY != 0, cluster: hi << 16 | lo, size }));
            }
        }
        Ok(None)
    }

    /// Up to `len` bytes from the chain starting at `first` (a directory: the whole chain, up to
    /// `len`; a file: exactly `len`, which the chain must hold).
    fn read_chain(&self, first: u32, len: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        if len == 0 {
            return Ok(out);
        }
        let mut cluster = first;
        let mut seen = std::collections::HashSet::new();
        // A chain cannot be longer than the volume: more steps means it loops.
        for _ in 0..=self.clusters {
            ensure!(seen.insert(cluster), "the cluster chain from {first} loops");
            ensure!(
                (2..self.clusters + 2).contains(&cluster),
                "cluster {cluster} is outside the volume's {} clusters",
                self.clusters
            );
            let take = (len - out.len() as u64).min(self.cluster_bytes);
            let at = self.data_offset + u64::from(cluster - 2) * self.cluster_bytes;
            let start = out.len();
            out.resize(start + take as usize, 0);
            self.region.read_at(at, &mut out[start..]).with_context(|| format!("reading cluster {cluster}"))?;
            if out.len() as u64 == len {
                return Ok(out);
            }
            let next = self.fat_entry(cluster)?;
            if next >= END_OF_CHAIN {
                return Ok(out);
            }
            ensure!(next != BAD_CLUSTER && next != 0, "cluster {cluster}'s chain is broken (next: {next:#x})");
            cluster = next;
        }
        bail!("the cluster chain from {first} loops")
    }

    fn fat_entry(&self, cluster: u32) -> Result<u32> {
        let mut b = [0u8; 4];
        self.region
            .read_at(self.fat_offset + u64::from(cluster) * 4, &mut b)
            .with_context(|| format!("reading the FAT entry of cluster {cluster}"))?;
        Ok(u32::from_le_bytes(b) & 0x0FFF_FFFF)
    }
}

/// The long name the collected entries spell for the short entry `short` (`None` when they do
/// not belong to it: a checksum mismatch means a driver that knows no long names renamed it).
fn long_name(parts: &[(u8, [u16; 13])], short: &[u8]) -> Option<String> {
    if parts.is_empty() {
        return None;
    }
    let sum = short.iter().fold(0u8, |s, b| s.rotate_right(1).wrapping_add(*b));
    if parts.iter().any(|(checksum, _)| *checksum != sum) {
        return None;
    }
    let mut units = Vec::new();
    // Stored last part first: the entry nearest the short entry holds the name's start.
    for (_, chunk) in parts.iter().rev() {
        units.extend(chunk.iter().copied().take_while(|u| *u != 0 && *u != 0xFFFF));
    }
    String::from_utf16(&units).ok()
}

/// An 8.3 name as `NAME.EXT`, lower-cased where the entry's case flags say so.
fn short_name(e: &[u8]) -> String {
    let part = |bytes: &[u8], lower: bool| {
        let s: String = bytes.iter().map(|b| *b as char).collect::<String>().trim_end().to_string();
        if lower { s.to_ascii_lowercase() } else { s }
    };
    let base = part(&e[..8], e[12] & 0x08 != 0);
    let ext = part(&e[8..11], e[12] & 0x10 != 0);
    if ext.is_empty() { base } else { format!("{base}.{ext}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::BuildClock;
    use crate::fat::{FatOptions, write_fat32};
    use crate::tree::Tree;

    #[test]
    fn reads_back_what_the_writer_wrote_by_long_and_short_names() {
        let mut tree = Tree::new();
        tree.put_file("airlock.toml", 0o644, b"hostname = \"x\"\n").unwrap();
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        tree.put_file("airlock/manifest.json", 0o644, big.clone()).unwrap();
        tree.put_file("EFI/BOOT/BOOTX64.EFI", 0o644, b"MZ").unwrap();
        let file = tempfile::tempfile().unwrap();
        let size = 64 << 20;
        file.set_len(size).unwrap();
        let region = Region::new(&file, 0, size);
        let opts = FatOptions { volume_id: 1, label: "ESP".into(), clock: BuildClock::fixed(0), hidden_sectors: 0 };
        write_fat32(&tree, &region, &opts).unwrap();
        let volume = FatVolume::open(&region).unwrap();
        assert_eq!(volume.read_file("airlock.toml", 1024).unwrap().unwrap(), b"hostname = \"x\"\n");
        assert_eq!(volume.read_file("/AIRLOCK/Manifest.JSON", 1 << 20).unwrap().unwrap(), big);
        assert_eq!(volume.read_file("efi/boot/bootx64.efi", 16).unwrap().unwrap(), b"MZ");
        assert_eq!(volume.read_file("nothing.toml", 16).unwrap(), None);
        let err = volume.read_file("airlock/manifest.json", 1000).unwrap_err();
        assert!(err.to_string().contains("more than the 1000 read"), "{err}");
    }

    #[test]
    fn refuses_what_is_not_fat32_and_chains_that_loop() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        let region = Region::new(&file, 0, 1 << 20);
        assert!(FatVolume::open(&region).unwrap_err().to_string().contains("no boot sector signature"));

        let mut tree = Tree::new();
        tree.put_file("a.txt", 0o644, vec![7u8; 10_000]).unwrap();
        let file = tempfile::tempfile().unwrap();
        let size = 40 << 20;
        file.set_len(size).unwrap();
        let region = Region::new(&file, 0, size);
        let opts = FatOptions { volume_id: 1, label: String::new(), clock: BuildClock::fixed(0), hidden_sectors: 0 };
        write_fat32(&tree, &region, &opts).unwrap();
        let volume = FatVolume::open(&region).unwrap();
        let found = volume.find(volume.root_cluster, "a.txt").unwrap().unwrap();
        // Point the file's first cluster at itself: a loop a hostile stick could hold.
        let at = volume.fat_offset + u64::from(found.cluster) * 4;
        region.write_at(at, &found.cluster.to_le_bytes()).unwrap();
        let err = volume.read_file("a.txt", 1 << 20).unwrap_err();
        assert!(format!("{err:#}").contains("loops"), "{err:#}");
    }
}
