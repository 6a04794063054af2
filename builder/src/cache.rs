//! The user's cache directory: base OS tarballs, container blobs and mirror files, each stored
//! under a name derived from what determines its content.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// `$AIRLOCK_CACHE_DIR`, else `$XDG_CACHE_HOME/airlock`, else `~/.cache/airlock`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("AIRLOCK_CACHE_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(d).join("airlock"));
    }
    let home = std::env::var_os("HOME").context("neither AIRLOCK_CACHE_DIR, XDG_CACHE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/airlock"))
}

/// A subdirectory of the cache, created if needed.
pub fn cache_subdir(root: &Path, name: &str) -> Result<PathBuf> {
    let d = root.join(name);
    std::fs::create_dir_all(&d).with_context(|| format!("creating cache directory {}", d.display()))?;
    Ok(d)
}
