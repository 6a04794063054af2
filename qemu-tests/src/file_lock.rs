//! Advisory locks on files (`flock`), for state that several test processes share.
//!
//! A lock belongs to the open file, so two threads of one process that each open the file
//! exclude each other as two processes do; it is released when the [`FileLock`] is dropped,
//! or by the kernel when the process dies, so a killed test leaves no stale lock behind.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{FlockOperation, flock};

/// A held lock on one file.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Waits for an exclusive lock on `path`, creating the file if needed.
    pub fn exclusive(path: &Path) -> Result<FileLock> {
        Self::take(path, FlockOperation::LockExclusive)
    }

    /// Waits for a shared lock on `path`, creating the file if needed.
    pub fn shared(path: &Path) -> Result<FileLock> {
        Self::take(path, FlockOperation::LockShared)
    }

    /// An exclusive lock on `path` if nobody holds any lock on it now.
    pub fn try_exclusive(path: &Path) -> Result<Option<FileLock>> {
        let file = open(path)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(FileLock { file, path: path.to_owned() })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }

    /// Turns an exclusive lock into a shared one. The kernel may drop the lock for a moment
    /// while converting it, so callers hold another lock that keeps rivals out meanwhile.
    pub fn downgrade(&self) -> Result<()> {
        flock(&self.file, FlockOperation::LockShared)
            .with_context(|| format!("sharing the lock on {}", self.path.display()))
    }

    fn take(path: &Path, operation: FlockOperation) -> Result<FileLock> {
        let file = open(path)?;
        flock(&file, operation).with_context(|| format!("locking {}", path.display()))?;
        Ok(FileLock { file, path: path.to_owned() })
    }
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening the lock file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_and_shared_locks_exclude_as_flock_says() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = FileLock::exclusive(&path).unwrap();
        assert!(FileLock::try_exclusive(&path).unwrap().is_none(), "an exclusive lock keeps others out");
        held.downgrade().unwrap();
        let reader = FileLock::shared(&path).unwrap();
        assert!(FileLock::try_exclusive(&path).unwrap().is_none(), "shared locks keep a writer out");
        drop(held);
        drop(reader);
        assert!(FileLock::try_exclusive(&path).unwrap().is_some(), "dropping releases");
    }
}
