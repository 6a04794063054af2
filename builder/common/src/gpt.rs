//! The GUID partition table: layout, validation and writing (with the `gpt` crate).
//!
//! The `gpt` crate writes correct headers and entry arrays, but accepts any partition it is
//! given: overlapping, outside the usable area, misaligned. [`GptLayout::validate`] is the gate
//! every layout passes before a byte is written. Every GUID comes from the build seed, so the
//! table is reproducible.

use anyhow::{Context, Result, bail, ensure};
use std::collections::BTreeMap;
use std::fs::File;
use uuid::Uuid;

pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries (what every partitioning tool does, and what flash
/// media erase blocks and 4K-sector disks want).
pub const ALIGN: u64 = 1024 * 1024;
/// Sectors taken at each end by the protective MBR/header and the 128-entry array.
const PRIMARY_SECTORS: u64 = 1 + 1 + 32;
const BACKUP_SECTORS: u64 = 32 + 1;

/// Partition type GUIDs (UAPI Discoverable Partitions Specification).
pub mod types {
    use uuid::{Uuid, uuid};
    pub const ESP: Uuid = uuid!("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    pub const LINUX_ROOT_X86_64: Uuid = uuid!("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    pub const LINUX_ROOT_X86_64_VERITY: Uuid = uuid!("2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5");
    pub const LINUX_VARIABLE_DATA: Uuid = uuid!("4D21B016-B534-45C2-A9FB-5C16E091FD2D");
    pub const LINUX_FILESYSTEM: Uuid = uuid!("0FC63DAF-8483-4772-8E79-3D69D8477DE4");
}

/// One partition: where it is and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionEntry {
    /// GPT partition name (at most 36 UTF-16 code units).
    pub name: String,
    pub type_guid: Uuid,
    pub guid: Uuid,
    /// Byte offset of the first byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
}

impl PartitionEntry {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// A new name and unique GUID for the partition at `index` (0-based, in table order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relabel {
    pub index: usize,
    pub name: String,
    pub guid: Uuid,
}

/// A whole disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptLayout {
    pub disk_size: u64,
    pub disk_guid: Uuid,
    pub partitions: Vec<PartitionEntry>,
}

/// First byte a partition may use, aligned.
pub fn first_usable_aligned() -> u64 {
    align_up(PRIMARY_SECTORS * SECTOR, ALIGN)
}

/// One past the last byte a partition may use on a disk of `disk_size` bytes.
pub fn last_usable_end(disk_size: u64) -> u64 {
    disk_size.saturating_sub(BACKUP_SECTORS * SECTOR)
}

pub fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

pub fn align_down(v: u64, a: u64) -> u64 {
    v / a * a
}

impl GptLayout {
    /// Refuses anything the firmware or the kernel would trip over: a disk size that is not whole
    /// sectors or too small, partitions that are misaligned, empty, outside the usable area or
    /// overlapping, names too long, GUIDs repeated.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.disk_size % SECTOR == 0, "disk size {} is not a multiple of {SECTOR} bytes", self.disk_size);
        let min = first_usable_aligned() + ALIGN + BACKUP_SECTORS * SECTOR;
        ensure!(
            self.disk_size >= min,
            "disk size {} is too small for a GPT disk (at least {min} bytes)",
            self.disk_size
        );
        ensure!(!self.partitions.is_empty(), "the partition table is empty");
        ensure!(self.partitions.len() <= 128, "{} partitions, GPT holds 128", self.partitions.len());
        let lo = first_usable_aligned();
        let hi = last_usable_end(self.disk_size);
        let mut guids = vec![self.disk_guid];
        for (i, p) in self.partitions.iter().enumerate() {
            let n = i + 1;
            ensure!(p.size > 0, "partition {n} ({}) is empty", p.name);
            ensure!(p.start % ALIGN == 0, "partition {n} ({}) starts at {}, not on a 1 MiB boundary", p.name, p.start);
            ensure!(p.size % SECTOR == 0, "partition {n} ({}) size {} is not whole sectors", p.name, p.size);
            ensure!(
                p.start >= lo,
                "partition {n} ({}) starts at {} inside the primary GPT area (< {lo})",
                p.name,
                p.start
            );
            ensure!(
                p.end() <= hi,
                "partition {n} ({}) ends at byte {} past the last usable byte {} of a {}-byte disk",
                p.name,
                p.end(),
                hi,
                self.disk_size
            );
            ensure!(
                p.name.encode_utf16().count() <= 36,
                "partition {n} name `{}` is longer than 36 UTF-16 units",
                p.name
            );
            for (j, q) in self.partitions.iter().enumerate().take(i) {
                if p.start < q.end() && q.start < p.end() {
                    bail!("partition {n} ({}) overlaps partition {} ({})", p.name, j + 1, q.name);
                }
            }
            ensure!(!guids.contains(&p.guid), "partition {n} ({}) reuses GUID {}", p.name, p.guid);
            guids.push(p.guid);
        }
        Ok(())
    }

    /// Writes the protective MBR, the primary and backup headers and entry arrays. The file (or
    /// block device) must already be `disk_size` bytes long.
    pub fn write(&self, file: &File) -> Result<()> {
        self.validate()?;
        // A block device has no length in its metadata; its end says how large it is.
        let len = std::io::Seek::seek(&mut &*file, std::io::SeekFrom::End(0)).context("finding the disk's size")?;
        ensure!(len == self.disk_size, "image is {len} bytes, the layout expects {}", self.disk_size);
        let mut device = file;
        let last_lba = u32::try_from(self.disk_size / SECTOR - 1).unwrap_or(u32::MAX);
        gpt::mbr::ProtectiveMBR::with_lb_size(last_lba)
            .overwrite_lba0(&mut device)
            .context("writing the protective MBR")?;
        let mut disk = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
            .create_from_device(device, Some(self.disk_guid))
            .context("initializing GPT headers")?;
        let parts: BTreeMap<u32, gpt::partition::Partition> = self
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let entry = gpt::partition::Partition {
                    part_type_guid: gpt::partition_types::Type {
                        guid: p.type_guid,
                        os: gpt::partition_types::OperatingSystem::None,
                    },
                    part_guid: p.guid,
                    first_lba: p.start / SECTOR,
                    last_lba: p.end() / SECTOR - 1,
                    flags: 0,
                    name: p.name.clone(),
                };
                (i as u32 + 1, entry)
            })
            .collect();
        disk.update_partitions(parts).context("setting GPT partition entries")?;
        disk.write().context("writing GPT headers and partition entries")?;
        Ok(())
    }

    /// Gives existing partitions (by their place in [`GptLayout::read`]'s list) new names and
    /// unique GUIDs and leaves everything else — types, places, sizes, flags, the other entries
    /// — as the disk has it; both copies of the table are rewritten, then read back and checked.
    /// What the updater uses on a whole disk (a block device or an image file) whose partitions
    /// are in use: nothing moves, so the running kernel's view stays right.
    pub fn relabel(file: &File, changes: &[Relabel]) -> Result<()> {
        let disk = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
            .open_from_device(file)
            .context("opening the GPT for writing")?;
        let mut parts = disk.partitions().clone();
        let used: Vec<u32> = parts.iter().filter(|(_, p)| p.is_used()).map(|(id, _)| *id).collect();
        for c in changes {
            ensure!(c.name.encode_utf16().count() <= 36, "partition name `{}` is longer than 36 UTF-16 units", c.name);
            let id = *used.get(c.index).with_context(|| format!("the disk has no partition {}", c.index + 1))?;
            let p = parts.get_mut(&id).context("a listed partition")?;
            p.name = c.name.clone();
            p.part_guid = c.guid;
        }
        let guids: Vec<Uuid> = parts.values().filter(|p| p.is_used()).map(|p| p.part_guid).collect();
        for (i, g) in guids.iter().enumerate() {
            ensure!(!guids[..i].contains(g), "two partitions would share the GUID {g}");
        }
        let mut disk = disk;
        disk.update_partitions(parts).context("setting GPT partition entries")?;
        disk.write().context("writing GPT headers and partition entries")?;
        let back = GptLayout::read(file).context("reading the partition table back")?;
        for c in changes {
            let p = back.partitions.get(c.index).context("a relabelled partition is gone")?;
            ensure!(
                p.name == c.name && p.guid == c.guid,
                "partition {} reads back as {} {}, not {} {}",
                c.index + 1,
                p.name,
                p.guid,
                c.name,
                c.guid
            );
        }
        Ok(())
    }

    /// Reads the partition table of an image (for `inspect` and `verify`).
    pub fn read(file: &File) -> Result<Self> {
        // A block device (a stick) has no length in its metadata; its end says how large it is.
        let disk_size =
            std::io::Seek::seek(&mut &*file, std::io::SeekFrom::End(0)).context("finding the image's size")?;
        let disk = gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
            .open_from_device(file)
            .context("reading the GPT")?;
        let partitions = disk
            .partitions()
            .values()
            .filter(|p| p.is_used())
            .map(|p| PartitionEntry {
                name: p.name.clone(),
                type_guid: p.part_type_guid.guid,
                guid: p.part_guid,
                start: p.first_lba * SECTOR,
                size: (p.last_lba + 1 - p.first_lba) * SECTOR,
            })
            .collect();
        Ok(Self { disk_size, disk_guid: *disk.guid(), partitions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &str, start: u64, size: u64, n: u128) -> PartitionEntry {
        PartitionEntry { name: name.into(), type_guid: types::ESP, guid: Uuid::from_u128(n), start, size }
    }

    fn layout(parts: Vec<PartitionEntry>) -> GptLayout {
        GptLayout { disk_size: 64 * ALIGN, disk_guid: Uuid::from_u128(99), partitions: parts }
    }

    #[test]
    fn accepts_a_good_layout() {
        layout(vec![part("esp", ALIGN, 16 * ALIGN, 1), part("root", 17 * ALIGN, 46 * ALIGN, 2)]).validate().unwrap();
    }

    #[test]
    fn rejects_bad_layouts() {
        let cases = [
            (vec![part("a", ALIGN, 8 * ALIGN, 1), part("b", 8 * ALIGN, 8 * ALIGN, 2)], "overlaps partition 1"),
            (vec![part("a", ALIGN + SECTOR, ALIGN, 1)], "not on a 1 MiB boundary"),
            (vec![part("a", 0, ALIGN, 1)], "inside the primary GPT area"),
            (vec![part("a", ALIGN, 63 * ALIGN, 1)], "past the last usable byte"),
            (vec![part("a", ALIGN, 0, 1)], "is empty"),
            (vec![part("a", ALIGN, ALIGN, 1), part("b", 2 * ALIGN, ALIGN, 1)], "reuses GUID"),
            (vec![part(&"x".repeat(37), ALIGN, ALIGN, 1)], "longer than 36"),
        ];
        for (parts, want) in cases {
            let err = layout(parts).validate().unwrap_err().to_string();
            assert!(err.contains(want), "`{err}` should mention `{want}`");
        }
    }

    /// Relabelling changes the names and GUIDs asked for and nothing else; a GUID twice is refused.
    #[test]
    fn relabels_in_place() {
        let f = tempfile::tempfile().unwrap();
        let l = layout(vec![part("esp", ALIGN, 16 * ALIGN, 1), part("_empty", 17 * ALIGN, 46 * ALIGN, 2)]);
        f.set_len(l.disk_size).unwrap();
        l.write(&f).unwrap();
        GptLayout::relabel(&f, &[Relabel { index: 1, name: "demo_0.2.0".into(), guid: Uuid::from_u128(7) }]).unwrap();
        let mut want = l.clone();
        want.partitions[1].name = "demo_0.2.0".into();
        want.partitions[1].guid = Uuid::from_u128(7);
        assert_eq!(GptLayout::read(&f).unwrap(), want);
        let err =
            GptLayout::relabel(&f, &[Relabel { index: 1, name: "x".into(), guid: Uuid::from_u128(1) }]).unwrap_err();
        assert!(err.to_string().contains("share the GUID"), "{err}");
        let err =
            GptLayout::relabel(&f, &[Relabel { index: 5, name: "x".into(), guid: Uuid::from_u128(9) }]).unwrap_err();
        assert!(err.to_string().contains("no partition 6"), "{err}");
    }

    #[test]
    fn writes_and_reads_back() {
        let f = tempfile::tempfile().unwrap();
        let l = layout(vec![part("esp", ALIGN, 16 * ALIGN, 1), part("root", 17 * ALIGN, 46 * ALIGN, 2)]);
        f.set_len(l.disk_size).unwrap();
        l.write(&f).unwrap();
        assert_eq!(GptLayout::read(&f).unwrap(), l);
    }
}
