//! Opening the files users hand to airlock (specs, keys, archives, images, site files) as the
//! hostile inputs they may be: only regular files are read — a FIFO, a character device such as
//! `/dev/zero` or a socket would hang the open or never end the read — and whole-file reads are
//! capped, so that a file of a gigabyte where a page was expected costs an error, not the memory.

use anyhow::{Context, Result, bail};
use rustix::fs::{Mode, OFlags};
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Opens `path` for reading, refusing anything but a regular file. `what` names the input in
/// errors ("the spec", "tar archive").
///
/// The open itself cannot hang: it is made with `O_NONBLOCK` (which opens a FIFO without
/// waiting for a writer), the type is checked on the opened descriptor (no window between check
/// and use), and blocking mode is restored for the regular file that remains.
pub fn open_regular(path: &Path, what: &str) -> Result<File> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty())
        .map_err(std::io::Error::from)
        .with_context(|| format!("opening {what} {}", path.display()))?;
    let stat = rustix::fs::fstat(&fd)
        .map_err(std::io::Error::from)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    if kind != rustix::fs::FileType::RegularFile {
        bail!("{what} {} is a {}, not a regular file", path.display(), describe(kind));
    }
    rustix::fs::fcntl_setfl(&fd, OFlags::empty())
        .map_err(std::io::Error::from)
        .with_context(|| format!("opening {what} {}", path.display()))?;
    Ok(File::from(fd))
}

fn describe(kind: rustix::fs::FileType) -> &'static str {
    use rustix::fs::FileType as T;
    match kind {
        T::Directory => "directory",
        T::Fifo => "FIFO (named pipe)",
        T::CharacterDevice => "character device",
        T::BlockDevice => "block device",
        T::Socket => "socket",
        T::Symlink => "symlink",
        _ => "special file",
    }
}

/// Reads a whole regular file of at most `max` bytes (see [`open_regular`]); a larger one is
/// an error naming the limit, and no more than `max + 1` bytes are ever read.
pub fn read_capped(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let file = open_regular(path, what)?;
    read_capped_from(file, max, what, path)
}

/// [`read_capped`] as text: UTF-8 is required.
pub fn read_capped_text(path: &Path, max: u64, what: &str) -> Result<String> {
    let bytes = read_capped(path, max, what)?;
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{what} {} is not UTF-8 text", path.display()))
}

/// Reads at most `max` bytes of an open file, failing if it holds more.
pub fn read_capped_from(file: File, max: u64, what: &str, path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    if bytes.len() as u64 > max {
        bail!(
            "{what} {} is larger than {} (the most airlock reads for it)",
            path.display(),
            crate::size::ByteSize(max)
        );
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        let err = open_regular(&fifo, "tar archive").unwrap_err().to_string();
        assert!(err.contains("is a FIFO (named pipe), not a regular file"), "{err}");
        let err = open_regular(Path::new("/dev/zero"), "the spec").unwrap_err().to_string();
        assert!(err.contains("the spec /dev/zero is a character device"), "{err}");
        let err = open_regular(dir.path(), "the spec").unwrap_err();
        assert!(format!("{err:#}").contains("directory"), "{err:#}");
    }

    #[test]
    fn reads_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"12345").unwrap();
        assert_eq!(read_capped(&f, 5, "x").unwrap(), b"12345");
        let err = read_capped(&f, 4, "site file").unwrap_err().to_string();
        assert!(err.contains("is larger than 4B"), "{err}");
    }
}
