//! A bounded byte range of an output image (one partition), written with positioned writes.
//!
//! Filesystem writers get a [`Region`] rather than the whole file, so a writer bug cannot
//! scribble over a neighbouring partition or the GPT: every write is checked against the bounds.
//! Bytes never written stay holes in the sparse output file and read as zeros.

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::os::unix::fs::FileExt;

#[derive(Debug, Clone, Copy)]
pub struct Region<'a> {
    file: &'a File,
    offset: u64,
    len: u64,
}

impl<'a> Region<'a> {
    /// The range `offset .. offset + len` of `file`. The file must already be at least that long
    /// (output images are sized with `set_len` before anything is written).
    pub fn new(file: &'a File, offset: u64, len: u64) -> Self {
        Self { file, offset, len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of this region within the whole image.
    pub fn image_offset(&self) -> u64 {
        self.offset
    }

    /// Writes `buf` at `pos` (relative to the region start).
    pub fn write_at(&self, pos: u64, buf: &[u8]) -> Result<()> {
        let end = pos.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= self.len => {}
            _ => bail!(
                "write of {} bytes at {pos} is outside the {}-byte region at image offset {}",
                buf.len(),
                self.len,
                self.offset
            ),
        }
        self.file
            .write_all_at(buf, self.offset + pos)
            .with_context(|| format!("writing {} bytes at image offset {}", buf.len(), self.offset + pos))?;
        crate::progress::bytes(buf.len() as u64);
        Ok(())
    }

    /// Reads back `buf.len()` bytes at `pos` (relative to the region start).
    pub fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        if pos.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            bail!("read of {} bytes at {pos} is outside the {}-byte region", buf.len(), self.len);
        }
        self.file
            .read_exact_at(buf, self.offset + pos)
            .with_context(|| format!("reading {} bytes at image offset {}", buf.len(), self.offset + pos))
    }
}

impl Region<'_> {
    /// The first position at or after `pos` (relative to the region start) that may hold data,
    /// or the region's length if the rest is a hole. Holes read as zeros, so a reader may skip
    /// them; on filesystems without hole reporting everything counts as data.
    pub fn next_data(&self, pos: u64) -> Result<u64> {
        if pos >= self.len {
            return Ok(self.len);
        }
        match rustix::fs::seek(self.file, rustix::fs::SeekFrom::Data(self.offset + pos)) {
            Ok(at) => Ok(at.saturating_sub(self.offset).clamp(pos, self.len)),
            // No data after this offset at all.
            Err(rustix::io::Errno::NXIO) => Ok(self.len),
            Err(e) => Err(std::io::Error::from(e))
                .with_context(|| format!("looking for data at image offset {}", self.offset + pos)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_bounded() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(100).unwrap();
        let r = Region::new(&f, 10, 20);
        r.write_at(0, b"abc").unwrap();
        r.write_at(17, b"xyz").unwrap();
        assert!(r.write_at(18, b"xyz").is_err());
        assert!(r.write_at(u64::MAX, b"x").is_err());
        let mut buf = [0u8; 3];
        f.read_exact_at(&mut buf, 10).unwrap();
        assert_eq!(&buf, b"abc");
    }

    #[test]
    fn next_data_skips_holes_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::options().read(true).write(true).create_new(true).open(dir.path().join("sparse")).unwrap();
        f.set_len(64 << 20).unwrap();
        let r = Region::new(&f, 1 << 20, 62 << 20);
        r.write_at(40 << 20, b"data").unwrap();
        let at = r.next_data(0).unwrap();
        // Filesystems report holes at their own granularity (or not at all): never past the data.
        assert!(at <= 40 << 20, "{at}");
        assert_eq!(r.next_data(41 << 20).unwrap(), 62 << 20, "nothing after the data");
        assert_eq!(r.next_data(40 << 20).unwrap(), 40 << 20);
        assert_eq!(r.next_data(99 << 20).unwrap(), 62 << 20);
    }
}
