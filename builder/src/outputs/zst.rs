//! `<name>.raw.zst`: the raw image compressed with zstd.
//!
//! Always in multithreaded mode, even with one worker: zstd's single-threaded and multithreaded
//! modes produce different bytes, but multithreaded output is the same for any worker count, so
//! the file does not depend on how many cores the build host has. The frame records the image's
//! size, which `airlock flash` uses to check the target before decompressing anything.

use crate::output_file::PartialFile;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// A middle level: most of level 19's ratio on disk images, at a speed that keeps a multi-GiB
/// image within seconds per core.
const LEVEL: i32 = 6;

pub fn compress(raw: &Path, dest: &Path) -> Result<()> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    compress_with(raw, dest, workers)
}

fn compress_with(raw: &Path, dest: &Path, workers: u32) -> Result<()> {
    let mut input = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let size = input.metadata().with_context(|| format!("reading {}", raw.display()))?.len();
    let partial = PartialFile::create(dest)?;
    let shown = partial.partial_path().display().to_string();
    let mut encoder = zstd::stream::write::Encoder::new(BufWriter::new(partial.file()), LEVEL)
        .with_context(|| format!("starting zstd for {shown}"))?;
    encoder.multithread(workers.max(1)).context("switching zstd to multithreaded mode")?;
    encoder.include_checksum(true).context("asking zstd for a content checksum")?;
    encoder.include_contentsize(true).context("asking zstd to record the image size")?;
    encoder.set_pledged_src_size(Some(size)).context("telling zstd the image size")?;
    crate::progress::phase("compressing to raw.zst");
    std::io::copy(&mut crate::progress::Counting(&mut input), &mut encoder)
        .with_context(|| format!("compressing {} into {shown}", raw.display()))?;
    let mut writer = encoder.finish().with_context(|| format!("finishing {shown}"))?;
    writer.flush().with_context(|| format!("writing {shown}"))?;
    drop(writer);
    partial.commit()?;
    Ok(())
}

/// The decompressed size a `.zst` file's first frame records, if it does.
pub fn content_size(path: &Path) -> Result<Option<u64>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    content_size_of(&file).with_context(|| format!("reading {}", path.display()))
}

/// [`content_size`] of an open file (read at offset 0, the file position untouched).
pub fn content_size_of(file: &File) -> Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 18];
    let n = file.read_at(&mut head, 0)?;
    match zstd::zstd_safe::get_frame_content_size(&head[..n]) {
        Ok(size) => Ok(size),
        Err(_) => anyhow::bail!("it does not start with a zstd frame"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_records_its_size_and_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("x.raw");
        let mut data = vec![0u8; 24 << 20];
        for (i, b) in data.iter_mut().enumerate().step_by(7) {
            *b = (i % 251) as u8;
        }
        std::fs::write(&raw, &data).unwrap();
        let a = dir.path().join("a.raw.zst");
        let b = dir.path().join("b.raw.zst");
        // Different worker counts, same bytes: what makes the output independent of the host.
        compress_with(&raw, &a, 1).unwrap();
        compress_with(&raw, &b, 3).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(content_size(&a).unwrap(), Some(data.len() as u64));
        let back = zstd::decode_all(File::open(&a).unwrap()).unwrap();
        assert_eq!(back, data);
    }
}
