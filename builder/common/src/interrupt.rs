//! What an interrupted run leaves behind: nothing it can help.
//!
//! Unfinished outputs (`.<name>.partial`) and scratch folders remove themselves when dropped,
//! but drops do not run when the process is killed by SIGINT (Ctrl-C) or SIGTERM (`kill`,
//! systemd stopping a unit). Each of them registers its path here while it exists; on either
//! signal a watcher thread removes every registered path and then lets the signal take its
//! default course (the process ends by that signal, as the caller expects). Spools need no
//! registration: they are anonymous files (`O_TMPFILE`, or unlinked at once) that the kernel
//! frees on any exit, SIGKILL included. What a SIGKILL or a power cut leaves is found and
//! removed by the next run ([`crate::output_file::clean_stale`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How to remove a registered path.
#[derive(Debug, Clone, Copy)]
enum Kind {
    File,
    Dir,
}

static REGISTERED: Mutex<BTreeMap<u64, (PathBuf, Kind)>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

fn registered() -> std::sync::MutexGuard<'static, BTreeMap<u64, (PathBuf, Kind)>> {
    // A panic while holding the lock cannot leave the map half-updated (single insert/remove).
    REGISTERED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps a path registered for removal on SIGINT/SIGTERM until dropped.
#[derive(Debug)]
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        registered().remove(&self.0);
    }
}

fn register(path: &Path, kind: Kind) -> Registration {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    registered().insert(id, (path.to_path_buf(), kind));
    Registration(id)
}

/// Registers a file to be removed if the process is interrupted.
pub fn remove_file_on_signal(path: &Path) -> Registration {
    register(path, Kind::File)
}

/// Registers a folder (with everything in it) to be removed if the process is interrupted.
pub fn remove_dir_on_signal(path: &Path) -> Registration {
    register(path, Kind::Dir)
}

/// Removes every registered path (best effort: the process is ending).
fn remove_registered() {
    for (path, kind) in registered().values() {
        let _ = match kind {
            Kind::File => std::fs::remove_file(path),
            Kind::Dir => std::fs::remove_dir_all(path),
        };
    }
}

/// Starts the watcher thread; call once, early in `main`. Without it (in library use and
/// tests) nothing changes: signals keep their default action.
pub fn install() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| anyhow::anyhow!("watching for SIGINT and SIGTERM: {e}"))?;
    std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                remove_registered();
                // Ends the process as the signal would have (exit status 128 + signal).
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                std::process::exit(128 + signal);
            }
        })
        .map_err(|e| anyhow::anyhow!("starting the signal watcher: {e}"))?;
    Ok(())
}

/// A scratch folder under the system's temporary directory, removed when dropped and when the
/// process is interrupted.
#[derive(Debug)]
pub struct ScratchDir {
    // Field order: the registration goes first, then the folder.
    _registration: Registration,
    dir: tempfile::TempDir,
}

impl ScratchDir {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        use anyhow::Context;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .with_context(|| format!("creating a scratch folder ({prefix}…) in the temporary directory"))?;
        Ok(Self { _registration: remove_dir_on_signal(dir.path()), dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
