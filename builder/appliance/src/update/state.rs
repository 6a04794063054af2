//! The stack's state across an update: saved before a new version first starts the stack,
//! restored if the appliance rolls back, dropped once the new version is good. The previous
//! version must never run against state the new one migrated.
//!
//! Everything lives on the data partition under `<update dir>` (`/var/lib/airlock/update`):
//!
//! ```text
//! attempt.json         the record: from, to, root hash, phase, failed units, why
//! saved/<n>/           copy n of the spec's state directories (saved.partial/ while copying)
//! ```
//!
//! Each step is a rename or a file replaced atomically, and each is safe to repeat: a power cut
//! while copying leaves `saved.partial/` (removed and copied again), while restoring leaves a
//! record in phase `restoring` whose remaining directories are restored on the next boot.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where an attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The state was saved; the new version may start its stack.
    Saved,
    /// There was no room to save it: the new version did not start its stack.
    NoRoom,
    /// A rollback is putting the saved state back.
    Restoring,
    /// The previous version runs again, on the state saved before the attempt.
    RolledBack,
}

/// The record of the last update attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    pub from: String,
    pub to: String,
    pub root_hash: String,
    pub phase: Phase,
    /// Units that had failed when the new version gave up.
    #[serde(default)]
    pub failed: Vec<String>,
    /// Why it gave up, in words (no room, not ready by the deadline).
    #[serde(default)]
    pub why: String,
}

/// The update state folder and the state directories it protects.
#[derive(Debug, Clone)]
pub struct StateStore {
    pub dir: PathBuf,
    /// The spec's state directories (absolute paths on the data partition).
    pub protect: Vec<PathBuf>,
}

/// What saving found.
#[derive(Debug, PartialEq, Eq)]
pub enum Saved {
    /// Copied now (bytes).
    Now(u64),
    /// Already saved for this attempt (an earlier boot of the same version).
    Earlier,
    /// Not enough room: nothing may start.
    NoRoom { needed: u64, free: u64 },
}

impl StateStore {
    fn record_path(&self) -> PathBuf {
        self.dir.join("attempt.json")
    }

    fn saved(&self) -> PathBuf {
        self.dir.join("saved")
    }

    pub fn attempt(&self) -> Result<Option<Attempt>> {
        let path = self.record_path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn write_attempt(&self, a: &Attempt) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let json = serde_json::to_vec_pretty(a).context("encoding the update record")?;
        super::write_atomically(&self.dir, "attempt.json", &json)
    }

    /// On a boot of `to` on trial (from `from`): saves the state directories unless this
    /// attempt already did, after checking that the data partition has room for the copy.
    pub fn save(&self, from: &str, to: &str, root_hash: &str) -> Result<Saved> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let st = rustix::fs::statvfs(&self.dir)
            .with_context(|| format!("reading the free space of {}", self.dir.display()))?;
        self.save_with_free(from, to, root_hash, st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// [`StateStore::save`] with the data partition's free bytes given.
    pub(crate) fn save_with_free(&self, from: &str, to: &str, root_hash: &str, free: u64) -> Result<Saved> {
        if let Some(a) = self.attempt()?
            && a.root_hash == root_hash
            && a.phase == Phase::Saved
            && self.saved().exists()
        {
            return Ok(Saved::Earlier);
        }
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let partial = self.dir.join("saved.partial");
        remove_all(&partial)?;
        remove_all(&self.saved())?;
        let needed: u64 = self.protect.iter().map(|d| tree_bytes(d)).sum::<Result<u64>>()?;
        // A margin for the filesystem's own blocks (directories, the journal's data=journal copies).
        let margin = needed / 20 + (16 << 20);
        if needed + margin > free {
            self.write_attempt(&Attempt {
                from: from.into(),
                to: to.into(),
                root_hash: root_hash.into(),
                phase: Phase::NoRoom,
                failed: Vec::new(),
                why: format!("no room to save the stack's state ({needed} bytes and {margin} to spare; {free} free)"),
            })?;
            return Ok(Saved::NoRoom { needed: needed + margin, free });
        }
        std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
        for (i, d) in self.protect.iter().enumerate() {
            let dest = partial.join(i.to_string());
            if d.exists() {
                copy_tree(d, &dest)?;
            }
        }
        sync(&partial)?;
        std::fs::rename(&partial, self.saved()).context("committing the saved state")?;
        super::sync_dir(&self.dir)?;
        self.write_attempt(&Attempt {
            from: from.into(),
            to: to.into(),
            root_hash: root_hash.into(),
            phase: Phase::Saved,
            failed: Vec::new(),
            why: String::new(),
        })?;
        Ok(Saved::Now(needed))
    }

    /// On a good boot of `running` after an attempt that went back to it: puts the saved
    /// state back (each directory by rename; the failed version's is kept beside it as
    /// `<dir>.failed-<version>`) and records the rollback. Returns the record, or `None` when
    /// the last attempt did not roll back to `running`.
    pub fn restore_after_rollback(&self, running: &str) -> Result<Option<Attempt>> {
        let Some(mut a) = self.attempt()? else { return Ok(None) };
        if a.from != running || a.to == running {
            return Ok(None);
        }
        match a.phase {
            Phase::RolledBack => return Ok(Some(a)),
            Phase::NoRoom => {
                a.phase = Phase::RolledBack;
                self.write_attempt(&a)?;
                return Ok(Some(a));
            }
            Phase::Saved | Phase::Restoring => {}
        }
        if !self.saved().exists() {
            bail!("the update record says the state was saved, but {} is missing", self.saved().display());
        }
        a.phase = Phase::Restoring;
        self.write_attempt(&a)?;
        for (i, d) in self.protect.iter().enumerate() {
            let copy = self.saved().join(i.to_string());
            if !copy.exists() {
                // Restored before a power cut, or the directory did not exist when saved.
                continue;
            }
            let aside = aside_name(d, &a.to);
            remove_all(&aside)?;
            if d.exists() {
                std::fs::rename(d, &aside).with_context(|| format!("moving {} aside", d.display()))?;
            }
            if let Some(parent) = d.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::rename(&copy, d).with_context(|| format!("restoring {}", d.display()))?;
            if let Some(parent) = d.parent() {
                super::sync_dir(parent)?;
            }
        }
        remove_all(&self.saved())?;
        a.phase = Phase::RolledBack;
        self.write_attempt(&a)?;
        Ok(Some(a))
    }

    /// On a good boot of the version the last attempt installed: the saved state is no longer
    /// needed.
    pub fn commit(&self, running: &str) -> Result<bool> {
        let Some(a) = self.attempt()? else { return Ok(false) };
        if a.to != running || a.phase != Phase::Saved {
            return Ok(false);
        }
        remove_all(&self.saved())?;
        std::fs::remove_file(self.record_path()).context("removing the update record")?;
        super::sync_dir(&self.dir)?;
        Ok(true)
    }
}

fn aside_name(d: &Path, version: &str) -> PathBuf {
    let name = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    d.with_file_name(format!("{name}.failed-{version}"))
}

fn remove_all(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display())),
        Ok(_) => std::fs::remove_file(p).with_context(|| format!("removing {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// The bytes a tree's files take (allocated blocks, so sparse files count as stored).
fn tree_bytes(p: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let m = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    let mut total = m.blocks() * 512;
    if m.is_dir() {
        for e in std::fs::read_dir(p).with_context(|| format!("listing {}", p.display()))? {
            total += tree_bytes(&e.with_context(|| format!("listing {}", p.display()))?.path())?;
        }
    }
    Ok(total)
}

/// `cp -a` (owners, modes, times, xattrs, hard links, sparse files), then nothing else.
fn copy_tree(src: &Path, dest: &Path) -> Result<()> {
    airlock_common::command::Cmd::new("cp")
        .args(["-a", "--reflink=auto", "--sparse=always", "--no-target-directory"])
        .arg(src)
        .arg(dest)
        .run()
        .with_context(|| format!("saving {}", src.display()))
}

fn sync(p: &Path) -> Result<()> {
    airlock_common::command::Cmd::new("sync").arg("-f").arg(p).run().with_context(|| format!("syncing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(root: &Path) -> StateStore {
        StateStore { dir: root.join("update"), protect: vec![root.join("db"), root.join("never-made")] }
    }

    /// Saved once per attempt; restored after a rollback (the failed version's state kept
    /// aside), reported on every later boot; dropped once the new version is good.
    #[test]
    fn save_restore_and_commit() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        std::fs::create_dir_all(t.path().join("db")).unwrap();
        std::fs::write(t.path().join("db/records"), "one record\n").unwrap();
        assert!(matches!(s.save("0.2.0", "0.3.0", "aa").unwrap(), Saved::Now(_)));
        assert_eq!(s.save("0.2.0", "0.3.0", "aa").unwrap(), Saved::Earlier, "a second trial boot saves nothing");
        // The new version migrates.
        std::fs::write(t.path().join("db/records"), "migrated\n").unwrap();
        // Back on 0.2.0: restored.
        assert_eq!(s.restore_after_rollback("0.3.0").unwrap(), None, "not a rollback to 0.3.0");
        let a = s.restore_after_rollback("0.2.0").unwrap().unwrap();
        assert_eq!((a.from.as_str(), a.to.as_str(), a.phase), ("0.2.0", "0.3.0", Phase::RolledBack));
        assert_eq!(std::fs::read_to_string(t.path().join("db/records")).unwrap(), "one record\n");
        assert_eq!(std::fs::read_to_string(t.path().join("db.failed-0.3.0/records")).unwrap(), "migrated\n");
        assert!(!t.path().join("never-made").exists());
        assert_eq!(s.restore_after_rollback("0.2.0").unwrap().unwrap().phase, Phase::RolledBack, "said again");
        assert_eq!(std::fs::read_to_string(t.path().join("db/records")).unwrap(), "one record\n", "restored once");

        // A later attempt that becomes good drops its copy and its record.
        assert!(matches!(s.save("0.2.0", "0.3.1", "bb").unwrap(), Saved::Now(_)));
        assert!(!s.commit("0.2.0").unwrap());
        assert!(s.commit("0.3.1").unwrap());
        assert!(s.attempt().unwrap().is_none() && !t.path().join("update/saved").exists());
    }

    /// A power cut during a restore leaves phase `restoring`; the next boot finishes it.
    #[test]
    fn an_interrupted_restore_is_finished() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        std::fs::create_dir_all(t.path().join("db")).unwrap();
        std::fs::write(t.path().join("db/records"), "before\n").unwrap();
        s.save("1", "2", "cc").unwrap();
        std::fs::write(t.path().join("db/records"), "after\n").unwrap();
        let mut a = s.attempt().unwrap().unwrap();
        a.phase = Phase::Restoring;
        s.write_attempt(&a).unwrap();
        assert_eq!(s.restore_after_rollback("1").unwrap().unwrap().phase, Phase::RolledBack);
        assert_eq!(std::fs::read_to_string(t.path().join("db/records")).unwrap(), "before\n");
    }

    /// Without room, nothing is copied and the record says why; the rollback then has nothing
    /// to restore.
    #[test]
    fn no_room_is_recorded_and_nothing_is_copied() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        std::fs::create_dir_all(t.path().join("db")).unwrap();
        std::fs::write(t.path().join("db/records"), vec![7u8; 1 << 20]).unwrap();
        match s.save_with_free("1", "2", "dd", 8 << 20).unwrap() {
            Saved::NoRoom { needed, free } => assert!(needed > (1 << 20) && free == 8 << 20, "{needed} {free}"),
            other => panic!("expected no room, got {other:?}"),
        }
        assert!(!t.path().join("update/saved").exists() && !t.path().join("update/saved.partial").exists());
        let a = s.attempt().unwrap().unwrap();
        assert!(a.phase == Phase::NoRoom && a.why.contains("no room"), "{a:?}");
        assert_eq!(s.restore_after_rollback("1").unwrap().unwrap().phase, Phase::RolledBack);
        assert_eq!(std::fs::read(t.path().join("db/records")).unwrap().len(), 1 << 20, "untouched");
        // With room, the same state is saved.
        assert!(matches!(s.save_with_free("1", "2", "dd", 1 << 30).unwrap(), Saved::Now(n) if n >= 1 << 20));
    }
}
