//! Outputs that appear under their final name only when complete.
//!
//! A [`PartialFile`] is created as `.<name>.partial` next to the destination. [`PartialFile::commit`]
//! fsyncs it, renames it to the final name and fsyncs the directory. Dropping it without
//! committing (an error, a panic) removes the partial file. A killed process leaves only a
//! dot-file ending in `.partial`, which never looks like a finished image; the next run over the
//! same output replaces it.

use anyhow::{Context, Result, bail};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct PartialFile {
    file: Option<File>,
    partial: PathBuf,
    dest: PathBuf,
}

impl PartialFile {
    /// Creates (truncating any stale leftover) the partial file for `dest`.
    pub fn create(dest: &Path) -> Result<Self> {
        let name = dest.file_name().with_context(|| format!("output path {} has no file name", dest.display()))?;
        let dir = parent_dir(dest);
        if !dir.is_dir() {
            bail!("output directory {} does not exist", dir.display());
        }
        let mut partial_name = std::ffi::OsString::from(".");
        partial_name.push(name);
        partial_name.push(".partial");
        let partial = dir.join(partial_name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        Ok(Self { file: Some(file), partial, dest: dest.to_path_buf() })
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
        drop(file);
        fs::rename(&self.partial, &self.dest)
            .with_context(|| format!("renaming {} to {}", self.partial.display(), self.dest.display()))?;
        let dir = parent_dir(&self.dest);
        File::open(&dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing directory {}", dir.display()))?;
        Ok(std::mem::take(&mut self.dest))
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Best effort: the error that got us here matters more than a failed cleanup.
            let _ = fs::remove_file(&self.partial);
        }
    }
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
}
