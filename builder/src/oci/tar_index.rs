//! An index of the members of an image archive (an OCI archive or a `docker save` tar), so
//! blobs can be read from it in any order without unpacking it.
//!
//! The archive is checked as a whole before anything in it is used: every member path must stay
//! inside the archive (no `..`, no absolute paths, no NUL), no path may appear twice, and only
//! files, directories, symlinks and hard links are allowed. Symlinks (which `docker save` writes
//! for a layer shared by two images) and hard links are followed only to other members of the
//! archive. A gzip- or zstd-compressed archive is first decompressed into an anonymous spool
//! file.

use super::error::ImageError;
use super::media_type::Compression;
use crate::tree::path;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// How many symlinks or hard links one lookup may pass through.
const MAX_LINK_HOPS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Member {
    File {
        offset: u64,
        size: u64,
    },
    Directory,
    /// Target as a normalized path from the archive root.
    Link {
        target: Vec<u8>,
    },
}

#[derive(Debug)]
pub(crate) struct TarIndex {
    file: File,
    members: BTreeMap<Vec<u8>, Member>,
}

fn entry_error(entry: &[u8], problem: impl ToString) -> ImageError {
    ImageError::ArchiveEntry { entry: path::display(entry), problem: problem.to_string() }
}

impl TarIndex {
    /// Reads the member list of the archive at `archive`; compressed archives are spooled,
    /// decompressed, to an anonymous file in `spool_dir`.
    pub fn open(archive: &Path, spool_dir: &Path) -> Result<Self> {
        let shown = archive.display();
        let mut file = File::open(archive).with_context(|| format!("opening archive {shown}"))?;
        let mut head = [0u8; 4];
        let got = file.read_at(&mut head, 0).with_context(|| format!("reading archive {shown}"))?;
        let compression = Compression::sniff(&head[..got]);
        if compression != Compression::None {
            file = decompress_to_spool(file, compression, spool_dir)
                .with_context(|| format!("decompressing archive {shown}"))?;
        }
        let archive_len = file.metadata().with_context(|| format!("reading metadata of {shown}"))?.len();
        let members = index_members(&file, archive_len)?;
        Ok(Self { file, members })
    }

    /// The file member at `name` (following links inside the archive) as a reader and its size;
    /// `None` if there is no such member.
    pub fn open_member(&self, name: &str) -> Result<Option<(MemberReader<'_>, u64)>> {
        let Some((offset, size)) = self.resolve(name)? else {
            return Ok(None);
        };
        Ok(Some((MemberReader { file: &self.file, pos: offset, end: offset + size }, size)))
    }

    /// The first bytes of a member (for sniffing compression).
    pub fn head(&self, name: &str, buf: &mut [u8]) -> Result<usize> {
        let Some((mut reader, _)) = self.open_member(name)? else {
            return Ok(0);
        };
        let mut got = 0;
        while got < buf.len() {
            let n = reader.read(&mut buf[got..]).with_context(|| format!("reading archive member `{name}`"))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    }

    fn resolve(&self, name: &str) -> Result<Option<(u64, u64)>> {
        let mut current = path::normalize(name.as_bytes()).map_err(|p| entry_error(name.as_bytes(), p))?;
        for _ in 0..=MAX_LINK_HOPS {
            match self.members.get(&current) {
                None => return Ok(None),
                Some(Member::File { offset, size }) => return Ok(Some((*offset, *size))),
                Some(Member::Directory) => {
                    return Err(entry_error(&current, "is a directory, expected a file").into());
                }
                Some(Member::Link { target }) => current = target.clone(),
            }
        }
        Err(entry_error(name.as_bytes(), format!("more than {MAX_LINK_HOPS} links in a row (a loop?)")).into())
    }
}

/// Reads the archive's headers, refusing hostile or duplicate members.
fn index_members(file: &File, archive_len: u64) -> Result<BTreeMap<Vec<u8>, Member>> {
    let mut members = BTreeMap::new();
    let mut archive = tar::Archive::new(file);
    let entries = archive.entries_with_seek().context("reading the archive's first header")?;
    for entry in entries {
        let entry = entry.context("reading an archive header")?;
        let raw = entry.path_bytes().into_owned();
        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() {
            continue;
        }
        let name = path::normalize(&raw).map_err(|p| entry_error(&raw, p))?;
        use tar::EntryType as T;
        let member = match entry_type {
            T::Regular | T::Continuous => {
                let offset = entry.raw_file_position();
                let size = entry.size();
                if offset.checked_add(size).is_none_or(|end| end > archive_len) {
                    return Err(entry_error(&raw, "data runs past the end of the archive").into());
                }
                Member::File { offset, size }
            }
            T::Directory => Member::Directory,
            T::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default();
                Member::Link { target: resolve_symlink(&name, &target).map_err(|p| entry_error(&raw, p))? }
            }
            T::Link => {
                let target = entry.link_name_bytes().unwrap_or_default();
                let target = path::normalize(&target)
                    .map_err(|p| entry_error(&raw, format!("hard link target `{}`: {p}", path::display(&target))))?;
                Member::Link { target }
            }
            other => {
                return Err(entry_error(&raw, format!("unsupported entry type {other:?}")).into());
            }
        };
        if name.is_empty() && member == Member::Directory {
            // `./` itself: harmless, and some writers emit it.
            continue;
        }
        if members.insert(name, member).is_some() {
            return Err(entry_error(&raw, "appears more than once in the archive").into());
        }
    }
    Ok(members)
}

/// Resolves a symlink's target against the directory holding `link`, lexically, refusing
/// targets that leave the archive.
fn resolve_symlink(link: &[u8], target: &[u8]) -> Result<Vec<u8>, String> {
    if target.is_empty() {
        return Err("symlink without a target".into());
    }
    if target.first() == Some(&b'/') || target.contains(&0) {
        return Err(format!("symlink target `{}` points outside the archive", path::display(target)));
    }
    let mut parts: Vec<&[u8]> = path::components(link);
    parts.pop();
    for comp in target.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err(format!("symlink target `{}` points outside the archive", path::display(target)));
                }
            }
            _ => parts.push(comp),
        }
    }
    Ok(parts.join(&b'/'))
}

/// Decompresses an archive into an anonymous spool file, no further than [`MAX_RATIO`] times
/// its size (it goes into the blob store, not an image, so only the ratio bounds it).
///
/// [`MAX_RATIO`]: crate::expansion::MAX_RATIO
fn decompress_to_spool(file: File, compression: Compression, spool_dir: &Path) -> Result<File> {
    use crate::expansion::{ExpansionLimit, copy_bounded};
    let mut spool = crate::tree::tar_input::anonymous_spool(spool_dir)?;
    let compressed = file.metadata().context("reading the archive's size")?.len();
    let limit = ExpansionLimit::ratio_only();
    let bound = limit.bound(compressed);
    let why = || limit.explain(compressed);
    let reader = BufReader::new(file);
    let copied = match compression {
        Compression::Gzip => copy_bounded(flate2::read::MultiGzDecoder::new(reader), &mut spool, bound, why),
        Compression::Zstd => {
            zstd::stream::read::Decoder::with_buffer(reader).and_then(|d| copy_bounded(d, &mut spool, bound, why))
        }
        Compression::None => io::copy(&mut { reader }, &mut spool),
    };
    copied.context("decompressing")?;
    spool.seek(io::SeekFrom::Start(0)).context("rewinding the spool file")?;
    Ok(spool)
}

/// A [`Read`] over one member's bytes, with positioned reads so several can be open at once.
#[derive(Debug)]
pub(crate) struct MemberReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for MemberReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.end - self.pos).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        if got == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive shrank while it was read"));
        }
        self.pos += got as u64;
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_only() {
        assert_eq!(resolve_symlink(b"abc/layer.tar", b"../def/layer.tar").unwrap(), b"def/layer.tar");
        assert_eq!(resolve_symlink(b"a", b"./b").unwrap(), b"b");
        assert!(resolve_symlink(b"abc/layer.tar", b"../../etc/passwd").is_err());
        assert!(resolve_symlink(b"a", b"/etc/passwd").is_err());
        assert!(resolve_symlink(b"a", b"").is_err());
    }
}
