//! Where a file's bytes are, and reading them back without holding whole files in memory.

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Index of an archive (an uncompressed tar or a spool file) registered with a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArchiveId(pub(crate) u32);

/// The source of a regular file's bytes. The size lives next to it in
/// [`NodeKind::File`](super::NodeKind::File).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A file on the build host, read when the image is written.
    Host(Arc<Path>),
    /// `size` bytes at `offset` of a registered archive (an uncompressed tar, or the spool that
    /// holds decompressed or sparse-expanded data).
    Archive { archive: ArchiveId, offset: u64 },
    /// Small generated files (loader entries, unit symlinks' neighbours, configuration).
    Bytes(Arc<[u8]>),
}

#[derive(Debug)]
struct ArchiveFile {
    path: PathBuf,
    /// Keeps a temporary spool alive (and deletes it) with the tree.
    _spool: Option<tempfile::TempPath>,
}

/// The archives a tree's contents refer to.
#[derive(Debug, Default)]
pub struct Archives {
    files: Vec<ArchiveFile>,
}

impl Archives {
    pub(crate) fn register(
        &mut self,
        path: PathBuf,
        spool: Option<tempfile::TempPath>,
    ) -> ArchiveId {
        let id = ArchiveId(u32::try_from(self.files.len()).expect("more than 2^32 archives"));
        self.files.push(ArchiveFile {
            path,
            _spool: spool,
        });
        id
    }

    fn path(&self, id: ArchiveId) -> &Path {
        &self.files[id.0 as usize].path
    }
}

/// Reads file contents for writers, keeping recently used files open.
#[derive(Debug)]
pub struct ContentReader<'a> {
    archives: &'a Archives,
    open_archives: Vec<Option<File>>,
}

impl<'a> ContentReader<'a> {
    pub(crate) fn new(archives: &'a Archives) -> Self {
        Self {
            archives,
            open_archives: Vec::new(),
        }
    }

    /// Fills `buf` with the bytes at `pos` of a file of `size` bytes whose bytes are `content`.
    /// `pos + buf.len()` must not exceed `size`.
    pub fn read_at(
        &mut self,
        content: &Content,
        size: u64,
        pos: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        if pos
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > size)
        {
            bail!(
                "read of {} bytes at {pos} past the end of a {size}-byte file",
                buf.len()
            );
        }
        match content {
            Content::Bytes(bytes) => {
                let start = pos as usize;
                let src = bytes
                    .get(start..start + buf.len())
                    .context("generated file shorter than its size")?;
                buf.copy_from_slice(src);
            }
            Content::Host(path) => {
                // Host files are opened per call: a build reads each one once, sequentially.
                let file =
                    File::open(path).with_context(|| format!("opening {}", path.display()))?;
                let len = file
                    .metadata()
                    .with_context(|| format!("reading metadata of {}", path.display()))?
                    .len();
                if len != size {
                    bail!(
                        "{} changed while the image was built: {size} bytes became {len}",
                        path.display()
                    );
                }
                file.read_exact_at(buf, pos)
                    .with_context(|| format!("reading {}", path.display()))?;
            }
            Content::Archive { archive, offset } => {
                let idx = archive.0 as usize;
                if self.open_archives.len() <= idx {
                    self.open_archives.resize_with(idx + 1, || None);
                }
                if self.open_archives[idx].is_none() {
                    let path = self.archives.path(*archive);
                    let file =
                        File::open(path).with_context(|| format!("opening {}", path.display()))?;
                    self.open_archives[idx] = Some(file);
                }
                let file = self.open_archives[idx].as_ref().expect("opened above");
                file.read_exact_at(buf, offset + pos).with_context(|| {
                    format!("reading {}", self.archives.path(*archive).display())
                })?;
            }
        }
        Ok(())
    }

    /// A sequential reader over one file's bytes.
    pub fn open<'r>(&'r mut self, content: &'r Content, size: u64) -> ContentStream<'r, 'a> {
        ContentStream {
            reader: self,
            content,
            size,
            pos: 0,
        }
    }
}

/// A [`Read`] over one file's bytes (see [`ContentReader::open`]).
#[derive(Debug)]
pub struct ContentStream<'r, 'a> {
    reader: &'r mut ContentReader<'a>,
    content: &'r Content,
    size: u64,
    pos: u64,
}

impl Read for ContentStream<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.size - self.pos).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.reader
            .read_at(self.content, self.size, self.pos, &mut buf[..n])
            .map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}
