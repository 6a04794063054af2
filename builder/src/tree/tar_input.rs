//! Filling a tree from a tar stream: plain, gzip or zstd; ustar, GNU and PAX (long names,
//! `SCHILY.xattr.*`, large uid/gid, fractional mtimes); hard links, devices, GNU sparse files and
//! OCI whiteouts, either applied to earlier layers or kept in overlayfs's form.
//!
//! File contents stay in the archive: a regular file becomes a `(archive, offset)` reference.
//! Compressed archives are first decompressed into a spool file (so the references have
//! something to point into); GNU sparse members are expanded into a spool as well. Spools are
//! anonymous files (gone with the process, however it ends), and both kinds of expansion stop
//! at the input's [`ExpansionLimit`] before the bytes are written.

use super::{Content, InputError, Meta, NodeKind, Problem, Timestamp, Tree, path};
use crate::expansion::{self, ExpansionLimit};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

const BLOCK: u64 = 512;

/// What an OCI whiteout entry (`.wh.<name>`, `.wh..wh..opq`) means to the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Not a whiteout: an ordinary entry (a Debian package's tar, a host archive).
    Ignore,
    /// Removes what earlier layers of the tree put there: the merged view of an image.
    Apply,
    /// Kept the way overlayfs (and containers/storage's overlay driver) stores one layer on its
    /// own: `.wh.<name>` becomes a character device 0/0 named `<name>` with no permissions (as
    /// containers/storage's `mknod(path, S_IFCHR, 0)`; the entry's owner and mtime),
    /// `.wh..wh..opq` the attribute `trusted.overlay.opaque=y` of its directory. Other
    /// `.wh..wh.*` entries (aufs's bookkeeping) are dropped.
    Overlay,
}

/// The attribute that marks an overlayfs directory opaque (hiding lower layers' entries).
pub const OVERLAY_OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

/// How to read a tar input.
#[derive(Debug, Clone)]
pub struct TarOptions<'a> {
    /// How to treat OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`).
    pub whiteouts: Whiteouts,
    /// Where decompressed or expanded spool files go (anonymous: they live as long as the
    /// tree, or the process).
    pub spool_dir: &'a Path,
    /// How far decompression and sparse files may expand the input.
    pub limit: ExpansionLimit,
}

/// What one tar input contributed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TarStats {
    pub entries: u64,
    pub whiteouts: u64,
    pub file_bytes: u64,
    /// Every owner and group an entry names (whiteouts included), as containers/storage
    /// records a layer's `uidset` and `gidset`.
    pub uids: BTreeSet<u32>,
    pub gids: BTreeSet<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn sniff(file: &mut File) -> io::Result<Compression> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        let n = file.read(&mut magic[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(match &magic[..got] {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    })
}

/// An anonymous spool file in `dir` (`O_TMPFILE` where the filesystem has it, else created
/// and unlinked at once): nothing is left behind by any exit.
pub(crate) fn anonymous_spool(dir: &Path) -> Result<File> {
    tempfile::tempfile_in(dir).with_context(|| format!("creating a spool file in {}", dir.display()))
}

/// Applies the tar archive at `archive` to `tree` as a new layer.
pub fn apply_tar(tree: &mut Tree, archive: &Path, opts: &TarOptions<'_>) -> Result<TarStats> {
    let input = archive.display().to_string();
    let whole = |problem| InputError { input: input.clone(), entry: None, problem };
    let mut file = crate::input_file::open_regular(archive, "tar archive")?;
    let compression = sniff(&mut file).with_context(|| format!("reading {input}"))?;

    let tar_file = match compression {
        Compression::None => file,
        Compression::Gzip | Compression::Zstd => {
            let compressed = file.metadata().with_context(|| format!("reading {input}"))?.len();
            let bound = opts.limit.bound(compressed);
            let mut spool = anonymous_spool(opts.spool_dir)?;
            let mut out = io::BufWriter::new(&mut spool);
            let reader = BufReader::new(file);
            let why = || opts.limit.explain(compressed);
            let copied = match compression {
                Compression::Gzip => {
                    expansion::copy_bounded(flate2::read::MultiGzDecoder::new(reader), &mut out, bound, why)
                }
                _ => zstd::stream::read::Decoder::with_buffer(reader)
                    .and_then(|d| expansion::copy_bounded(d, &mut out, bound, why)),
            };
            if let Err(e) = copied {
                let problem = if let Some(too_large) = expansion::too_large(&e) {
                    Problem::TooLarge { detail: too_large.to_string() }
                } else if e.kind() == io::ErrorKind::UnexpectedEof {
                    Problem::Truncated { detail: "compressed stream ends early".into() }
                } else {
                    Problem::Malformed { detail: format!("cannot decompress: {e}") }
                };
                return Err(whole(problem).into());
            }
            out.flush().with_context(|| format!("writing the spool of {input}"))?;
            drop(out);
            spool
        }
    };
    let label = match compression {
        Compression::None => input.clone(),
        _ => format!("the decompressed spool of {input}"),
    };
    apply_archive(tree, &input, super::Archive::new(tar_file, label), opts)
}

/// Applies an already uncompressed tar held in an anonymous spool (e.g. a container layer
/// decompressed while its diff_id was checked); the tree's nodes keep the spool alive.
pub fn apply_spooled_tar(tree: &mut Tree, input: &str, spool: File, opts: &TarOptions<'_>) -> Result<TarStats> {
    let archive = super::Archive::new(spool, format!("the decompressed spool of {input}"));
    apply_archive(tree, input, archive, opts)
}

/// Applies the uncompressed tar in `archive_ref` as a new layer; `input` names it in errors.
fn apply_archive(
    tree: &mut Tree,
    input: &str,
    archive_ref: std::sync::Arc<super::Archive>,
    opts: &TarOptions<'_>,
) -> Result<TarStats> {
    let input = input.to_string();
    let whole = |problem| InputError { input: input.clone(), entry: None, problem };
    tree.begin_layer();
    let mut tar_file = archive_ref.file().try_clone().with_context(|| format!("reading {input}"))?;
    tar_file.seek(SeekFrom::Start(0)).with_context(|| format!("reading {input}"))?;
    let archive_len = tar_file.metadata().with_context(|| format!("reading {input}"))?.len();
    // GNU sparse members expand into one spool per input; together they may expand as far as
    // the input's limit allows for the archive's size.
    let sparse_bound = opts.limit.bound(archive_len);
    let mut sparse_spool: Option<(File, std::sync::Arc<super::Archive>, u64)> = None;
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut stats = TarStats::default();
    // Directories marked opaque (overlay form), with the marker's path for errors.
    let mut opaque_dirs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    // What this layer whited out so far.
    let mut whited_out: HashSet<Vec<u8>> = HashSet::new();
    let mut last_entry = String::from("(start of archive)");

    let mut ar = tar::Archive::new(tar_file);
    let entries = ar.entries_with_seek().map_err(|e| whole(Problem::Malformed { detail: e.to_string() }))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| InputError {
            input: input.clone(),
            entry: Some(format!("after {last_entry}")),
            problem: io_problem(&e),
        })?;
        let raw_path = entry.path_bytes().into_owned();
        last_entry = path::display(&raw_path);
        let fail = |problem| InputError { input: input.clone(), entry: Some(path::display(&raw_path)), problem };
        stats.entries += 1;

        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() {
            continue;
        }
        let norm = path::normalize(&raw_path).map_err(fail)?;
        let pax = pax_records(&mut entry).map_err(|e| fail(io_problem(&e)))?;
        if pax.iter().any(|(k, _)| k.starts_with(b"GNU.sparse.")) {
            return Err(fail(Problem::UnsupportedType { kind: "PAX sparse file (GNU.sparse.*)".into() }).into());
        }

        let header = entry.header();
        let meta = Meta {
            mode: header.mode().map_err(|e| fail(io_problem(&e)))? & 0o7777,
            uid: u32::try_from(header.uid().map_err(|e| fail(io_problem(&e)))?)
                .map_err(|_| fail(Problem::Malformed { detail: "uid does not fit in 32 bits".into() }))?,
            gid: u32::try_from(header.gid().map_err(|e| fail(io_problem(&e)))?)
                .map_err(|_| fail(Problem::Malformed { detail: "gid does not fit in 32 bits".into() }))?,
            mtime: mtime(header, &pax).map_err(fail)?,
            xattrs: xattrs(&pax),
        };
        stats.uids.insert(meta.uid);
        stats.gids.insert(meta.gid);

        if opts.whiteouts != Whiteouts::Ignore
            && let Some(name) = whiteout_name(&norm)
        {
            let prefix = &norm[..norm.len() - name.len() - 4];
            let dir = prefix.strip_suffix(b"/").unwrap_or(prefix);
            stats.whiteouts += 1;
            // Below a directory this layer already whited out (`rm -rf /foo/bar` written as
            // `/.wh.foo` and `/foo/.wh.bar`) a whiteout says nothing more: containers/storage
            // drops it (its mknod fails with ENOTDIR), and so must a reading that merges.
            let components = path::components(dir);
            if (1..=components.len()).any(|n| whited_out.contains(&components[..n].join(&b'/'))) {
                continue;
            }
            let target = [prefix, name].concat();
            match opts.whiteouts {
                Whiteouts::Apply if name == b".wh..opq" => tree.make_opaque(dir).map_err(fail)?,
                Whiteouts::Apply if !name.starts_with(b".wh.") => {
                    tree.whiteout(dir, name).map_err(fail)?;
                    whited_out.insert(target);
                }
                Whiteouts::Overlay if name == b".wh..opq" => opaque_dirs.push((dir.to_vec(), raw_path.clone())),
                Whiteouts::Overlay if !name.starts_with(b".wh.") => {
                    if !seen.insert(target.clone()) {
                        return Err(fail(Problem::Duplicate).into());
                    }
                    let meta = Meta { mode: 0, xattrs: BTreeMap::new(), ..meta };
                    tree.insert(&target, meta, NodeKind::CharDevice { major: 0, minor: 0 }).map_err(fail)?;
                    whited_out.insert(target);
                }
                _ => {}
            }
            continue;
        }

        if !seen.insert(norm.clone()) {
            return Err(fail(Problem::Duplicate).into());
        }
        let device = |fail: &dyn Fn(Problem) -> InputError| -> Result<(u32, u32), InputError> {
            let major = header.device_major().map_err(|e| fail(io_problem(&e)))?.unwrap_or(0);
            let minor = header.device_minor().map_err(|e| fail(io_problem(&e)))?.unwrap_or(0);
            Ok((major, minor))
        };

        use tar::EntryType as T;
        let kind = match entry_type {
            T::Regular | T::Continuous => {
                let size = entry.size();
                let offset = entry.raw_file_position();
                if offset.checked_add(size).is_none_or(|end| end > archive_len) {
                    return Err(fail(Problem::Truncated {
                        detail: format!("{size} bytes of data at offset {offset}, but the archive has {archive_len}"),
                    })
                    .into());
                }
                stats.file_bytes += size;
                NodeKind::File { size, content: Content::Archive { archive: archive_ref.clone(), offset } }
            }
            T::GNUSparse => {
                let (spool, id, used) = match &mut sparse_spool {
                    Some(s) => s,
                    None => {
                        let f = anonymous_spool(opts.spool_dir)?;
                        let archive = super::Archive::new(
                            f.try_clone().context("sharing the sparse spool")?,
                            format!("the sparse spool of {input}"),
                        );
                        sparse_spool.insert((f, archive, 0))
                    }
                };
                // The declared size is checked before a byte is expanded: a few KB of sparse
                // map can claim gigabytes.
                let size = entry.size();
                let total = used.checked_add(size).filter(|t| *t <= sparse_bound);
                let Some(total) = total else {
                    return Err(fail(Problem::TooLarge {
                        detail: format!(
                            "sparse file of {} expands to {}",
                            crate::size::ByteSize(size),
                            opts.limit.explain(archive_len)
                        ),
                    })
                    .into());
                };
                let offset = *used;
                let copied = copy_sparse(&mut entry, spool, offset, size).map_err(|e| fail(io_problem(&e)))?;
                if copied != size {
                    return Err(fail(Problem::Truncated {
                        detail: format!("sparse file gives {copied} of its {size} bytes"),
                    })
                    .into());
                }
                *used = total;
                stats.file_bytes += size;
                NodeKind::File { size, content: Content::Archive { archive: id.clone(), offset } }
            }
            T::Directory => NodeKind::Directory { entries: BTreeMap::new() },
            T::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                if target.is_empty() {
                    return Err(fail(Problem::Malformed { detail: "symlink without a target".into() }).into());
                }
                NodeKind::Symlink { target }
            }
            T::Link => {
                let raw_target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                let target = path::normalize(&raw_target).map_err(|p| {
                    fail(Problem::Malformed {
                        detail: format!("hard link target `{}`: {p}", path::display(&raw_target)),
                    })
                })?;
                let id = tree.link(&norm, &target).map_err(fail)?;
                // As Docker and containers/storage apply a layer: the link's own header sets
                // the shared inode's owner, mode and times, and adds its xattrs. A link to a
                // file of an earlier layer leaves that file as it is (in an overlay store the
                // layer's link is a copy of it, the lower file unchanged).
                if tree.node(id).layer == tree.layer {
                    let node = &mut tree.node_mut(id).meta;
                    let mut xattrs = std::mem::take(&mut node.xattrs);
                    xattrs.extend(meta.xattrs);
                    *node = Meta { xattrs, ..meta };
                }
                continue;
            }
            T::Char => {
                let (major, minor) = device(&fail)?;
                NodeKind::CharDevice { major, minor }
            }
            T::Block => {
                let (major, minor) = device(&fail)?;
                NodeKind::BlockDevice { major, minor }
            }
            T::Fifo => NodeKind::Fifo,
            other => {
                return Err(fail(Problem::UnsupportedType { kind: format!("{other:?}") }).into());
            }
        };
        tree.insert(&norm, meta, kind).map_err(fail)?;
    }
    ar_end_check(ar.into_inner(), archive_len).map_err(whole)?;
    // After every entry: a directory's own entry may follow its opaque marker, and would
    // replace the attribute the marker set.
    for (dir, raw_path) in opaque_dirs {
        let fail = |problem| InputError { input: input.clone(), entry: Some(path::display(&raw_path)), problem };
        tree.mark_opaque(&dir, OVERLAY_OPAQUE_XATTR).map_err(fail)?;
    }
    Ok(stats)
}

/// Copies a sparse member's `size` bytes to `spool` at `offset`, leaving all-zero blocks as
/// holes (a sparse file stays sparse on the build host's disk). Returns the bytes read.
fn copy_sparse(entry: &mut impl Read, spool: &File, offset: u64, size: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    while done < size {
        let want = usize::try_from((size - done).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = entry.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            spool.write_all_at(&buf[..n], offset + done)?;
        }
        done += n as u64;
    }
    // A trailing hole still counts: the file must be long enough for the last read.
    if spool.metadata()?.len() < offset + done {
        spool.set_len(offset + done)?;
    }
    Ok(done)
}

/// After the last entry the tar reader has either consumed an all-zero end-of-archive block or
/// hit end of file; only the first is a complete archive.
fn ar_end_check(mut file: File, archive_len: u64) -> Result<(), Problem> {
    let truncated = |detail: &str| Problem::Truncated { detail: detail.into() };
    let pos = file.stream_position().map_err(|e| truncated(&e.to_string()))?;
    if pos < BLOCK || pos > archive_len {
        return Err(truncated("no end-of-archive marker"));
    }
    let mut block = [0u8; BLOCK as usize];
    file.seek(SeekFrom::Start(pos - BLOCK))
        .and_then(|_| file.read_exact(&mut block))
        .map_err(|e| truncated(&e.to_string()))?;
    if block.iter().any(|&b| b != 0) {
        return Err(truncated("no end-of-archive marker"));
    }
    Ok(())
}

fn io_problem(e: &io::Error) -> Problem {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Problem::Truncated { detail: e.to_string() }
    } else {
        Problem::Malformed { detail: e.to_string() }
    }
}

type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

fn pax_records<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<PaxRecords> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            out.push((ext.key_bytes().to_vec(), ext.value_bytes().to_vec()));
        }
    }
    Ok(out)
}

fn pax_value<'p>(pax: &'p PaxRecords, key: &[u8]) -> Option<&'p [u8]> {
    pax.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_slice())
}

/// The entry's mtime: PAX `mtime` (which may carry a fraction and be negative) wins over the
/// header's octal field.
fn mtime(header: &tar::Header, pax: &PaxRecords) -> Result<Timestamp, Problem> {
    let bad = |detail: String| Problem::Malformed { detail };
    if let Some(v) = pax_value(pax, b"mtime") {
        let s = std::str::from_utf8(v).map_err(|_| bad("PAX mtime is not text".into()))?;
        return parse_pax_time(s).ok_or_else(|| bad(format!("PAX mtime `{s}` is not a number")));
    }
    let secs = header.mtime().map_err(|e| bad(e.to_string()))?;
    Ok(Timestamp { secs: i64::try_from(secs).map_err(|_| bad("mtime out of range".into()))?, nanos: 0 })
}

fn parse_pax_time(s: &str) -> Option<Timestamp> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let secs: i64 = whole.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos_str: String = frac.chars().take(9).collect();
    while nanos_str.len() < 9 {
        nanos_str.push('0');
    }
    let nanos: u32 = nanos_str.parse().ok()?;
    Some(if neg && nanos > 0 {
        Timestamp { secs: -secs - 1, nanos: 1_000_000_000 - nanos }
    } else if neg {
        Timestamp { secs: -secs, nanos: 0 }
    } else {
        Timestamp { secs, nanos }
    })
}

fn xattrs(pax: &PaxRecords) -> BTreeMap<Vec<u8>, Vec<u8>> {
    pax.iter().filter_map(|(k, v)| k.strip_prefix(b"SCHILY.xattr.").map(|name| (name.to_vec(), v.clone()))).collect()
}

/// For `dir/.wh.name`, returns `name` (with `.wh..wh..opq` returned as `.wh..opq`).
fn whiteout_name(path: &[u8]) -> Option<&[u8]> {
    let last = path.rsplit(|&b| b == b'/').next()?;
    last.strip_prefix(b".wh.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time("1700000000.5"), Some(Timestamp { secs: 1_700_000_000, nanos: 500_000_000 }));
        assert_eq!(parse_pax_time("12"), Some(Timestamp { secs: 12, nanos: 0 }));
        assert_eq!(parse_pax_time("-1.25"), Some(Timestamp { secs: -2, nanos: 750_000_000 }));
        assert_eq!(parse_pax_time("x"), None);
    }

    #[test]
    fn whiteout_names() {
        assert_eq!(whiteout_name(b"a/.wh.b"), Some(&b"b"[..]));
        assert_eq!(whiteout_name(b".wh..wh..opq"), Some(&b".wh..opq"[..]));
        assert_eq!(whiteout_name(b"a/b.wh.c"), None);
    }
}
