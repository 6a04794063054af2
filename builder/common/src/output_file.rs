//! Outputs that appear under their final name only when complete.
//!
//! A [`PartialFile`] is created as `.<name>.partial` next to the destination, exclusively
//! (`O_CREAT|O_EXCL|O_NOFOLLOW`: whatever is planted at that name — a symlink to a file worth
//! overwriting, a hard link — is never opened, let alone truncated) and locked (`flock`) while
//! it is written. [`PartialFile::commit`] fsyncs it, renames it to the final name and fsyncs
//! the directory. Dropping it without committing (an error, a panic) removes the partial file,
//! and so does SIGINT or SIGTERM ([`crate::interrupt`]). A killed process leaves only an
//! unlocked dot-file ending in `.partial`, which never looks like a finished image; the next run
//! over the same output removes it ([`clean_stale`]), and refuses to touch one that another
//! running process holds locked.

use crate::interrupt::{self, Registration};
use anyhow::{Context, Result, bail};
use rustix::fs::{FlockOperation, Mode, OFlags};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct PartialFile {
    file: Option<File>,
    partial: PathBuf,
    dest: PathBuf,
    _registration: Registration,
}

impl PartialFile {
    /// Creates the partial file for `dest` (mode 0644 before the umask), replacing a stale
    /// leftover of an interrupted run.
    pub fn create(dest: &Path) -> Result<Self> {
        Self::create_with_mode(dest, 0o644)
    }

    /// Like [`PartialFile::create`], with the file's permission bits set from its creation (a
    /// secret is never readable by others, not even empty).
    pub fn create_with_mode(dest: &Path, mode: u32) -> Result<Self> {
        let name = dest.file_name().with_context(|| format!("output path {} has no file name", dest.display()))?;
        let dir = parent_dir(dest);
        if !dir.is_dir() {
            bail!("output directory {} does not exist", dir.display());
        }
        let partial = dir.join(partial_name(name));
        let mut removed_stale = false;
        let file = loop {
            match create_exclusive(&partial, mode) {
                Ok(file) => break file,
                Err(e) if e.kind() == ErrorKind::AlreadyExists && !removed_stale => {
                    remove_stale(&partial)?;
                    removed_stale = true;
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", partial.display())),
            }
        };
        // Nobody else can hold it yet: it was created just now. The lock tells a later run that
        // this file is being written, not left over.
        rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive)
            .with_context(|| format!("locking {}", partial.display()))?;
        let registration = interrupt::remove_file_on_signal(&partial);
        Ok(Self { file: Some(file), partial, dest: dest.to_path_buf(), _registration: registration })
    }

    pub fn file(&self) -> &File {
        // The file is only taken by `commit`, which consumes self.
        self.file.as_ref().expect("PartialFile used after commit")
    }

    pub fn partial_path(&self) -> &Path {
        &self.partial
    }

    /// Makes the file durable and gives it its final name.
    pub fn commit(mut self) -> Result<PathBuf> {
        let file = self.file.take().expect("PartialFile committed twice");
        file.sync_all().with_context(|| format!("syncing {}", self.partial.display()))?;
        fs::rename(&self.partial, &self.dest)
            .with_context(|| format!("renaming {} to {}", self.partial.display(), self.dest.display()))?;
        // The lock goes with the descriptor, after the rename: a concurrent clean_stale never
        // sees this file unlocked under its partial name.
        drop(file);
        let dir = parent_dir(&self.dest);
        File::open(&dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing directory {}", dir.display()))?;
        Ok(std::mem::take(&mut self.dest))
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            // Best effort: the error that got us here matters more than a failed cleanup. The
            // path is removed while the lock is still held, so no other run's file is hit.
            let _ = fs::remove_file(&self.partial);
            self.file = None;
        }
    }
}

/// `.<name>.partial`.
fn partial_name(name: &std::ffi::OsStr) -> OsString {
    let mut partial = OsString::from(".");
    partial.push(name);
    partial.push(".partial");
    partial
}

fn create_exclusive(path: &Path, mode: u32) -> std::io::Result<File> {
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(mode))?;
    Ok(File::from(fd))
}

/// Removes what sits at a partial file's name, unless a running process is writing it.
fn remove_stale(partial: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(partial).with_context(|| format!("reading {}", partial.display()))?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        // Removing the link touches only the link, never what it points to.
        log::warn!("removing the symlink planted at {}; outputs are never written through links", partial.display());
    } else if !kind.is_file() {
        bail!("{} exists and is not a regular file; remove it and run again", partial.display());
    } else if is_locked(partial)? {
        bail!("{} is being written by another airlock process; wait for it or stop it", partial.display());
    } else {
        log::info!("removing {}, left by an interrupted run", partial.display());
    }
    match fs::remove_file(partial) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", partial.display())),
    }
}

/// Whether a process holds the `flock` of the partial file at `path`.
fn is_locked(path: &Path) -> Result<bool> {
    // O_NONBLOCK: a FIFO put there must not hang the open; O_NOFOLLOW: a link swapped in since
    // the check is not followed.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(e) => return Err(std::io::Error::from(e)).with_context(|| format!("opening {}", path.display())),
    };
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared) {
        Ok(()) => Ok(false),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(true),
        Err(e) => Err(std::io::Error::from(e)).with_context(|| format!("testing the lock of {}", path.display())),
    }
}

/// Removes what interrupted runs left in an output directory: unlocked `.*.partial` files and
/// the named spool files of earlier airlock versions (`.airlock-spool-*`, `.airlock-sparse-*`,
/// `.airlock-layer-*`; spools are anonymous now). Returns how many were removed.
pub fn clean_stale(dir: &Path) -> Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name();
        let bytes = name.as_bytes();
        let old_spool =
            [&b".airlock-spool-"[..], b".airlock-sparse-", b".airlock-layer-"].iter().any(|p| bytes.starts_with(p));
        let partial = bytes.starts_with(b".") && bytes.ends_with(b".partial");
        if !old_spool && !partial {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().with_context(|| format!("reading {}", path.display()))?;
        if !(kind.is_file() || kind.is_symlink()) || (kind.is_file() && is_locked(&path)?) {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                log::info!("removed {}, left by an interrupted run", path.display());
                removed += 1;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(removed)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.raw");
        let p = PartialFile::create(&dest).unwrap();
        p.file().write_all(b"hello").unwrap();
        assert!(!dest.exists());
        assert!(p.partial_path().exists());
        let partial = p.partial_path().to_path_buf();
        p.commit().unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"hello");
        assert!(!partial.exists());
    }

    #[test]
    fn dropped_without_commit_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.raw");
        let p = PartialFile::create(&dest).unwrap();
        p.file().write_all(b"half").unwrap();
        drop(p);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let err = PartialFile::create(Path::new("/nonexistent-dir-airlock/out.raw")).unwrap_err();
        assert!(err.to_string().contains("output directory /nonexistent-dir-airlock does not exist"));
    }

    #[test]
    fn a_planted_symlink_is_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        symlink(&victim, dir.path().join(".out.raw.partial")).unwrap();
        let p = PartialFile::create(&dir.path().join("out.raw")).unwrap();
        p.file().write_all(b"image").unwrap();
        p.commit().unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(dir.path().join("out.raw")).unwrap(), b"image");
    }

    #[test]
    fn a_planted_hard_link_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        fs::hard_link(&victim, dir.path().join(".out.raw.partial")).unwrap();
        let p = PartialFile::create(&dir.path().join("out.raw")).unwrap();
        p.file().write_all(b"image").unwrap();
        p.commit().unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn a_partial_being_written_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.raw");
        let first = PartialFile::create(&dest).unwrap();
        let err = PartialFile::create(&dest).unwrap_err();
        assert!(format!("{err:#}").contains("is being written by another airlock process"), "{err:#}");
        assert_eq!(clean_stale(dir.path()).unwrap(), 0);
        assert!(first.partial_path().exists());
        drop(first);
    }

    #[test]
    fn stale_leftovers_are_cleaned_and_the_mode_is_set_at_creation() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".old.raw.partial"), b"half").unwrap();
        fs::write(dir.path().join(".airlock-spool-abc"), b"spool").unwrap();
        fs::write(dir.path().join("kept.raw"), b"done").unwrap();
        assert_eq!(clean_stale(dir.path()).unwrap(), 2);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["kept.raw"]);

        let p = PartialFile::create_with_mode(&dir.path().join("secret"), 0o600).unwrap();
        assert_eq!(p.file().metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }
}
