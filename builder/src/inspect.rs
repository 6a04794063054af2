//! Looking inside a raw image (or a stick, read-only) without mounting it: the partition
//! table, each partition's SHA-256, what filesystem it holds and its UUID, and files on the
//! ESP. [`DiskImage`] is the one reader of disks: the manifest (what was built), `verify` (is it
//! still that), `diff` (where do two images part) and `inspect` (what is this) all open images
//! through it.

use crate::gpt::{GptLayout, PartitionEntry};
use crate::partition::{self, Role};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A filesystem recognised by its superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    Vfat,
    Ext4,
    /// A dm-verity hash tree (its superblock's `verity` signature).
    Verity,
    Unknown,
}

/// Recognises FAT32 (the "FAT32   " type string of its boot sector), ext4 (the superblock
/// magic 0xEF53 at byte 1080) and a dm-verity hash tree (`verity\0\0` at byte 0).
pub fn filesystem(file: &File, part: &PartitionEntry) -> Result<FsKind> {
    let mut head = [0u8; 2048];
    let n = head.len().min(usize::try_from(part.size).unwrap_or(usize::MAX));
    file.read_exact_at(&mut head[..n], part.start)
        .with_context(|| format!("reading the start of partition {}", part.name))?;
    if n >= 90 && &head[82..90] == b"FAT32   " && head[510..512] == [0x55, 0xAA] {
        return Ok(FsKind::Vfat);
    }
    if n >= 1082 && head[1080..1082] == [0x53, 0xEF] {
        return Ok(FsKind::Ext4);
    }
    if n >= 8 && &head[..8] == b"verity\0\0" {
        return Ok(FsKind::Verity);
    }
    Ok(FsKind::Unknown)
}

/// SHA-256 of `len` bytes of `file` from `start`.
pub fn sha256_range(file: &File, start: u64, len: u64) -> Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from((len - done).min(buf.len() as u64)).unwrap_or(buf.len());
        file.read_exact_at(&mut buf[..n], start + done)
            .with_context(|| format!("reading {n} bytes at {}", start + done))?;
        hasher.update(&buf[..n]);
        done += n as u64;
        crate::progress::bytes(n as u64);
    }
    Ok(hasher.finalize().into())
}

/// One partition as found in an image.
#[derive(Debug, Clone)]
pub struct InspectedPartition {
    pub number: u32,
    /// What the partition table says it is (`None`: a partition airlock does not make).
    pub role: Option<Role>,
    pub entry: PartitionEntry,
    pub filesystem: FsKind,
    pub sha256: String,
}

/// The partition table of `image` and every partition's filesystem and digest.
pub fn inspect(image: &Path) -> Result<(GptLayout, Vec<InspectedPartition>)> {
    let disk = DiskImage::open(image)?;
    let parts = disk.hash_partitions()?;
    Ok((disk.layout, parts))
}

/// The largest file read from an ESP (the manifest of an appliance with large mirrors).
pub const MAX_ESP_FILE: u64 = 64 << 20;

/// A raw image or a whole-disk device, opened read-only, with its partition table read.
#[derive(Debug)]
pub struct DiskImage {
    pub path: std::path::PathBuf,
    pub file: File,
    pub layout: GptLayout,
    /// Each partition's role, by type (`None`: a partition airlock does not make).
    pub roles: Vec<Option<Role>>,
}

impl DiskImage {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let layout =
            GptLayout::read(&file).with_context(|| format!("reading the partition table of {}", path.display()))?;
        let roles = partition::identify(&layout.partitions);
        Ok(Self { path: path.to_path_buf(), file, layout, roles })
    }

    /// The first partition with this role.
    pub fn partition(&self, role: Role) -> Option<&PartitionEntry> {
        self.layout.partitions.iter().zip(&self.roles).find(|(_, r)| **r == Some(role)).map(|(p, _)| p)
    }

    /// What filesystem a partition holds.
    pub fn filesystem(&self, part: &PartitionEntry) -> Result<FsKind> {
        filesystem(&self.file, part)
    }

    /// The filesystem's own identity: an ext4 UUID, or a FAT volume id (`XXXX-XXXX`).
    pub fn filesystem_id(&self, part: &PartitionEntry) -> Result<Option<String>> {
        let mut head = [0u8; 2048];
        let n = head.len().min(usize::try_from(part.size).unwrap_or(usize::MAX));
        self.file
            .read_exact_at(&mut head[..n], part.start)
            .with_context(|| format!("reading the start of partition {}", part.name))?;
        Ok(match filesystem(&self.file, part)? {
            FsKind::Ext4 => Some(uuid::Uuid::from_slice(&head[1024 + 0x68..1024 + 0x78])?.to_string()),
            FsKind::Vfat => {
                let id = u32::from_le_bytes([head[67], head[68], head[69], head[70]]);
                Some(format!("{:04X}-{:04X}", id >> 16, id & 0xFFFF))
            }
            // The hash tree's superblock UUID (after the signature, version and hash type).
            FsKind::Verity => Some(uuid::Uuid::from_slice(&head[16..32])?.to_string()),
            FsKind::Unknown => None,
        })
    }

    /// A file on the ESP (`None`: no ESP, or no such file), read no further than `cap` bytes.
    pub fn read_esp_file(&self, path: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        let Some(esp) = self.partition(Role::Esp) else { return Ok(None) };
        let region = crate::region::Region::new(&self.file, esp.start, esp.size);
        let volume = crate::fat::read::FatVolume::open(&region)
            .with_context(|| format!("reading the FAT32 ESP of {}", self.path.display()))?;
        volume.read_file(path, cap).with_context(|| format!("reading {path} on the ESP of {}", self.path.display()))
    }

    /// Every partition with its filesystem and SHA-256 (reads the whole disk).
    pub fn hash_partitions(&self) -> Result<Vec<InspectedPartition>> {
        let mut parts = Vec::new();
        crate::progress::phase("hashing partitions");
        let total = self.layout.partitions.iter().map(|p| p.size).sum();
        crate::progress::measure(crate::progress::Unit::Bytes, Some(total));
        for ((i, entry), role) in self.layout.partitions.iter().enumerate().zip(&self.roles) {
            let digest = sha256_range(&self.file, entry.start, entry.size)
                .with_context(|| format!("hashing partition {} ({}) of {}", i + 1, entry.name, self.path.display()))?;
            parts.push(InspectedPartition {
                number: i as u32 + 1,
                role: *role,
                filesystem: filesystem(&self.file, entry)?,
                entry: entry.clone(),
                sha256: hex::encode(digest),
            });
        }
        Ok(parts)
    }
}
