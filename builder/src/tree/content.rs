//! Where a file's bytes are, and reading them back without holding whole files in memory.

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// An uncompressed tar archive or a spool file that file contents point into. Held by `Arc`
/// from every file node that uses it, so contents can move between trees (the ESP takes the
/// kernel from the root filesystem's tar). It holds the open file: a spool is an anonymous file
/// (no name, freed by the kernel when the last node using it is gone or the process ends,
/// however it ends), and an archive on disk is read from the file that was checked, whatever
/// its path names later.
#[derive(Debug)]
pub struct Archive {
    file: File,
    /// What it is, for messages: the input's path, or `spool of <input>`.
    label: String,
}

impl Archive {
    pub(crate) fn new(file: File, label: String) -> Arc<Self> {
        Arc::new(Self { file, label })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Archives are the same when they are the same object (two opens of one file are not merged).
impl PartialEq for Archive {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Archive {}

/// The source of a regular file's bytes. The size lives next to it in
/// [`NodeKind::File`](super::NodeKind::File).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A file on the build host, read when the image is written.
    Host(Arc<Path>),
    /// Bytes at `offset` of an archive (an uncompressed tar, or the spool that holds
    /// decompressed or sparse-expanded data).
    Archive { archive: Arc<Archive>, offset: u64 },
    /// Small generated files (loader entries, configuration, embedded files).
    Bytes(Arc<[u8]>),
}

/// Reads file contents for writers.
#[derive(Debug, Default)]
pub struct ContentReader {}

impl ContentReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fills `buf` with the bytes at `pos` of a file of `size` bytes whose bytes are `content`.
    /// `pos + buf.len()` must not exceed `size`.
    pub fn read_at(&mut self, content: &Content, size: u64, pos: u64, buf: &mut [u8]) -> Result<()> {
        if pos.checked_add(buf.len() as u64).is_none_or(|end| end > size) {
            bail!("read of {} bytes at {pos} past the end of a {size}-byte file", buf.len());
        }
        match content {
            Content::Bytes(bytes) => {
                let start = pos as usize;
                let src = bytes.get(start..start + buf.len()).context("generated file shorter than its size")?;
                buf.copy_from_slice(src);
            }
            Content::Host(path) => {
                // Host files are opened per call: a build reads each one once, sequentially. Only
                // a regular file is read: one swapped for a FIFO since it was listed must not
                // hang the build.
                let file = crate::input_file::open_regular(path, "file")?;
                let len = file.metadata().with_context(|| format!("reading metadata of {}", path.display()))?.len();
                if len != size {
                    bail!("{} changed while the image was built: {size} bytes became {len}", path.display());
                }
                file.read_exact_at(buf, pos).with_context(|| format!("reading {}", path.display()))?;
            }
            Content::Archive { archive, offset } => {
                let at = offset.checked_add(pos).context("file offset overflows")?;
                archive.file().read_exact_at(buf, at).with_context(|| format!("reading {}", archive.label()))?;
            }
        }
        Ok(())
    }

    /// A sequential reader over one file's bytes.
    pub fn open<'r>(&'r mut self, content: &'r Content, size: u64) -> ContentStream<'r> {
        ContentStream { reader: self, content, size, pos: 0 }
    }
}

/// A [`Read`] over one file's bytes (see [`ContentReader::open`]).
#[derive(Debug)]
pub struct ContentStream<'r> {
    reader: &'r mut ContentReader,
    content: &'r Content,
    size: u64,
    pos: u64,
}

impl Read for ContentStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.size - self.pos).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.reader.read_at(self.content, self.size, self.pos, &mut buf[..n]).map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}
