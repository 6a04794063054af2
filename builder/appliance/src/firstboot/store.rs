//! Durable, atomic writes on the appliance: a file appears under its final name only complete
//! and synced (`.partial`, fsync, rename, fsync of the directory), with its mode set before any
//! byte is written, so a power cut leaves either the old file or the new one, never half.

use airlock_common::output_file::PartialFile;
use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `path` atomically with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let partial = PartialFile::create(path)?;
    partial
        .file()
        .set_permissions(Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", partial.partial_path().display()))?;
    let mut f = partial.file();
    f.write_all(bytes).with_context(|| format!("writing {}", partial.partial_path().display()))?;
    partial.commit()?;
    Ok(())
}

/// Writes `path` only when its content or mode differs (so re-applying a setting on every boot
/// costs nothing and changes no timestamps). Returns whether it wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
    if let Ok(md) = fs::metadata(path)
        && md.permissions().mode() & 0o7777 == mode
        && fs::read(path).is_ok_and(|old| old == bytes)
    {
        return Ok(false);
    }
    write_atomic(path, bytes, mode)?;
    Ok(true)
}

/// Removes `path` if it exists, durably.
pub fn remove_durably(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("/"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Creates `dir` (and parents) with `mode` and syncs its parent, or fixes the mode of an
/// existing one.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
    }
    fs::set_permissions(dir, Permissions::from_mode(mode)).with_context(|| format!("chmod {}", dir.display()))
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing directory {}", dir.display()))
}

/// Appends one line to a log and syncs it before returning (a record that survives a power cut
/// the moment this returns).
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.set_permissions(Permissions::from_mode(0o600))?;
    writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_with_mode_and_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_atomic(&p, b"one", 0o600).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!write_if_changed(&p, b"one", 0o600).unwrap());
        assert!(write_if_changed(&p, b"two", 0o600).unwrap());
        assert!(write_if_changed(&p, b"two", 0o644).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // No leftovers next to it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        remove_durably(&p).unwrap();
        remove_durably(&p).unwrap();
        assert!(!p.exists());
    }
}
