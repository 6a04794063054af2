//! Where a file's bytes are, and reading them back without holding whole files in memory.

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An uncompressed tar archive or a spool file that file contents point into. Held by `Arc`
/// from every file node that uses it, so contents can move between trees (the ESP takes the
/// kernel from the root filesystem's tar) and a temporary spool lives exactly as long as a node
/// needs it.
#[derive(Debug)]
pub struct Archive {
    path: PathBuf,
    /// Deletes a temporary spool when the last node using it is gone.
    _spool: Option<tempfile::TempPath>,
}

impl Archive {
    pub(crate) fn new(path: PathBuf, spool: Option<tempfile::TempPath>) -> Arc<Self> {
        Arc::new(Self { path, _spool: spool })
    }

    pub fn path(&self) -> &Path {
        &self.path
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

/// Reads file contents for writers, keeping the most recently used archive open (writers read
/// one archive's files in a row).
#[derive(Debug, Default)]
pub struct ContentReader {
    open: Option<(Arc<Archive>, File)>,
}

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
                // Host files are opened per call: a build reads each one once, sequentially.
                let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
                let len = file.metadata().with_context(|| format!("reading metadata of {}", path.display()))?.len();
                if len != size {
                    bail!("{} changed while the image was built: {size} bytes became {len}", path.display());
                }
                file.read_exact_at(buf, pos).with_context(|| format!("reading {}", path.display()))?;
            }
            Content::Archive { archive, offset } => {
                let reuse = matches!(&self.open, Some((a, _)) if Arc::ptr_eq(a, archive));
                if !reuse {
                    let file =
                        File::open(archive.path()).with_context(|| format!("opening {}", archive.path().display()))?;
                    self.open = Some((archive.clone(), file));
                }
                let (_, file) = self.open.as_ref().expect("opened above");
                file.read_exact_at(buf, offset + pos)
                    .with_context(|| format!("reading {}", archive.path().display()))?;
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
