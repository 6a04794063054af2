//! `airlock diff a.raw b.raw`: when two builds that should be identical are not, where do they
//! part? The partition table entry by entry, each partition's bytes, and inside ext4
//! partitions the files (added, removed, or changed in type, mode, owner, time, size, contents
//! or link target; read with `ext4-view`). For FAT and other partitions the answer is the
//! partition and the byte ranges.

use crate::gpt::{GptLayout, PartitionEntry};
use crate::inspect::{DiskImage, FsKind};
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const BLOCK: u64 = 1 << 20;

/// Findings, one line each; empty when the images are identical.
#[derive(Debug, Default)]
pub struct DiffReport {
    pub lines: Vec<String>,
    /// Partitions (by GPT name) whose bytes differ.
    pub partitions: Vec<String>,
    /// Paths inside ext4 partitions that differ, as `<partition>:<path>`.
    pub paths: Vec<String>,
}

impl DiffReport {
    pub fn identical(&self) -> bool {
        self.lines.is_empty()
    }
}

impl fmt::Display for DiffReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lines.is_empty() {
            return writeln!(f, "identical");
        }
        for l in &self.lines {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

/// Byte ranges where `len` bytes from `a_start` in `a` and `b_start` in `b` differ, in MiB
/// blocks: (number of differing blocks, first differing offset relative to the start).
fn compare_bytes(a: &File, a_start: u64, b: &File, b_start: u64, len: u64) -> Result<(u64, Option<u64>)> {
    let mut ba = vec![0u8; BLOCK as usize];
    let mut bb = vec![0u8; BLOCK as usize];
    let (mut blocks, mut first) = (0, None);
    let mut off = 0;
    while off < len {
        let n = usize::try_from((len - off).min(BLOCK)).unwrap_or(BLOCK as usize);
        a.read_exact_at(&mut ba[..n], a_start + off).context("reading the first image")?;
        b.read_exact_at(&mut bb[..n], b_start + off).context("reading the second image")?;
        if ba[..n] != bb[..n] {
            blocks += 1;
            if first.is_none() {
                let i = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y).unwrap_or(0);
                first = Some(off + i as u64);
            }
        }
        off += n as u64;
    }
    Ok((blocks, first))
}

pub fn diff(a_path: &Path, b_path: &Path, limit: usize) -> Result<DiffReport> {
    // The reader `airlock inspect` uses too.
    let (da, db) = (DiskImage::open(a_path)?, DiskImage::open(b_path)?);
    let (a, b, la, lb) = (&da.file, &db.file, &da.layout, &db.layout);
    let mut r = DiffReport::default();
    if la.disk_size != lb.disk_size {
        r.lines.push(format!("disk size: {} vs {}", la.disk_size, lb.disk_size));
    }
    if la.disk_guid != lb.disk_guid {
        r.lines.push(format!("disk GUID: {} vs {}", la.disk_guid, lb.disk_guid));
    }
    if la.partitions.len() != lb.partitions.len() {
        r.lines.push(format!("partition count: {} vs {}", la.partitions.len(), lb.partitions.len()));
    }
    for (i, (pa, pb)) in la.partitions.iter().zip(&lb.partitions).enumerate() {
        let label = format!("partition {} ({})", i + 1, pa.name);
        if pa != pb {
            r.lines.push(format!("{label}: GPT entry differs: {pa:?} vs {pb:?}"));
        }
        let len = pa.size.min(pb.size);
        let (blocks, first) = compare_bytes(a, pa.start, b, pb.start, len)?;
        let Some(first) = first else { continue };
        r.partitions.push(pa.name.clone());
        r.lines.push(format!(
            "{label}: contents differ in {blocks} of {} MiB blocks, first at byte {first} of the partition",
            len.div_ceil(BLOCK)
        ));
        let kinds = (da.filesystem(pa)?, db.filesystem(pb)?);
        if kinds == (FsKind::Ext4, FsKind::Ext4) {
            match ext4_differences(a, pa, b, pb) {
                Ok(diffs) => {
                    if diffs.is_empty() {
                        r.lines.push(format!("  {label}: every file is the same; the filesystem metadata differs"));
                    }
                    for (n, (path, what)) in diffs.iter().enumerate() {
                        r.paths.push(format!("{}:{path}", pa.name));
                        if n < limit {
                            r.lines.push(format!("  {path}: {what}"));
                        }
                    }
                    if diffs.len() > limit {
                        r.lines.push(format!("  ... and {} more paths", diffs.len() - limit));
                    }
                }
                Err(e) => r.lines.push(format!("  {label}: cannot read the ext4 filesystems: {e:#}")),
            }
        }
    }
    // Everything outside the partitions: the protective MBR, both GPT copies, gaps.
    let outside = outside_ranges(la, la.disk_size.min(lb.disk_size));
    for (start, end) in outside {
        if la == lb {
            let (blocks, first) = compare_bytes(a, start, b, start, end - start)?;
            if let Some(first) = first {
                r.lines.push(format!(
                    "bytes {start}..{end} outside the partitions differ ({blocks} MiB blocks, first at byte {})",
                    start + first
                ));
            }
        }
    }
    Ok(r)
}

fn outside_ranges(layout: &GptLayout, disk: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut cursor = 0;
    let mut parts: Vec<&PartitionEntry> = layout.partitions.iter().collect();
    parts.sort_by_key(|p| p.start);
    for p in parts {
        if p.start > cursor {
            out.push((cursor, p.start.min(disk)));
        }
        cursor = cursor.max(p.end());
    }
    if cursor < disk {
        out.push((cursor, disk));
    }
    out
}

/// A partition of an image file, as ext4-view reads it.
struct PartitionReader {
    file: File,
    start: u64,
    size: u64,
}

impl ext4_view::Ext4Read for PartitionReader {
    fn read(&mut self, start_byte: u64, dst: &mut [u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if start_byte.saturating_add(dst.len() as u64) > self.size {
            return Err(format!("read of {} bytes at {start_byte} past the partition's end", dst.len()).into());
        }
        self.file.read_exact_at(dst, self.start + start_byte).map_err(|e| Box::new(e) as _)
    }
}

/// What a path is, for comparison.
#[derive(Debug, PartialEq, Eq)]
struct FileFacts {
    kind: String,
    mode: u16,
    owner: (u32, u32),
    mtime: (i64, u32),
    size: u64,
    /// SHA-256 of a regular file's contents, or a symlink's target.
    content: String,
}

fn ext4_files(file: &File, part: &PartitionEntry) -> Result<BTreeMap<String, FileFacts>> {
    let reader = PartitionReader {
        file: file.try_clone().context("duplicating a file handle")?,
        start: part.start,
        size: part.size,
    };
    let fs = ext4_view::Ext4::load(Box::new(reader)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = BTreeMap::new();
    let mut dirs = vec![ext4_view::PathBuf::try_from("/").map_err(|e| anyhow::anyhow!("{e}"))?];
    while let Some(dir) = dirs.pop() {
        let entries = fs.read_dir(&dir).map_err(|e| anyhow::anyhow!("listing {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| anyhow::anyhow!("listing {}: {e}", dir.display()))?;
            let name = entry.file_name();
            if name.as_ref() == b"." || name.as_ref() == b".." {
                continue;
            }
            let path = entry.path();
            let shown = path.display().to_string();
            let meta = entry.metadata().map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
            let kind = format!("{:?}", meta.file_type());
            let content = if meta.is_dir() {
                dirs.push(path.clone());
                String::new()
            } else if meta.is_symlink() {
                fs.read_link(&path).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?.display().to_string()
            } else if meta.file_type() == ext4_view::FileType::Regular {
                hex::encode(Sha256::digest(fs.read(&path).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?))
            } else {
                String::new()
            };
            let mtime = meta.modified();
            out.insert(
                shown,
                FileFacts {
                    kind,
                    mode: meta.mode(),
                    owner: (meta.uid(), meta.gid()),
                    mtime: (mtime.seconds(), mtime.nanoseconds()),
                    size: meta.len(),
                    content,
                },
            );
        }
    }
    Ok(out)
}

/// Paths that differ between two ext4 partitions, sorted, with what differs.
fn ext4_differences(a: &File, pa: &PartitionEntry, b: &File, pb: &PartitionEntry) -> Result<Vec<(String, String)>> {
    let fa = ext4_files(a, pa).context("reading the first image's filesystem")?;
    let fb = ext4_files(b, pb).context("reading the second image's filesystem")?;
    let mut out = Vec::new();
    for (path, x) in &fa {
        match fb.get(path) {
            None => out.push((path.clone(), "only in the first image".to_string())),
            Some(y) if x != y => {
                let mut what = Vec::new();
                if x.kind != y.kind {
                    what.push(format!("type {} vs {}", x.kind, y.kind));
                }
                if x.mode != y.mode {
                    what.push(format!("mode {:o} vs {:o}", x.mode, y.mode));
                }
                if x.owner != y.owner {
                    what.push(format!("owner {:?} vs {:?}", x.owner, y.owner));
                }
                if x.mtime != y.mtime {
                    what.push(format!("mtime {:?} vs {:?}", x.mtime, y.mtime));
                }
                if x.size != y.size {
                    what.push(format!("size {} vs {}", x.size, y.size));
                }
                if x.content != y.content {
                    what.push("contents".to_string());
                }
                out.push((path.clone(), what.join(", ")));
            }
            Some(_) => {}
        }
    }
    for path in fb.keys().filter(|p| !fa.contains_key(*p)) {
        out.push((path.clone(), "only in the second image".to_string()));
    }
    out.sort();
    Ok(out)
}
