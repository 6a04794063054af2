//! Looking inside a raw image without mounting it: the partition table, each partition's
//! SHA-256 and what filesystem it holds. Shared by the manifest (what was built), `verify`
//! (is it still that) and `diff` (where do two images part).

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
    let file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let layout =
        GptLayout::read(&file).with_context(|| format!("reading the partition table of {}", image.display()))?;
    let mut parts = Vec::new();
    let roles = partition::identify(&layout.partitions);
    for ((i, entry), role) in layout.partitions.iter().enumerate().zip(roles) {
        let digest = sha256_range(&file, entry.start, entry.size)
            .with_context(|| format!("hashing partition {} ({}) of {}", i + 1, entry.name, image.display()))?;
        parts.push(InspectedPartition {
            number: i as u32 + 1,
            role,
            filesystem: filesystem(&file, entry)?,
            entry: entry.clone(),
            sha256: hex::encode(digest),
        });
    }
    Ok((layout, parts))
}
