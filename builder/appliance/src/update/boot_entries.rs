//! The UKIs on the ESP (`EFI/Linux/<name>_<version>[+LEFT[-DONE]].efi`) and their boot counting
//! state, as systemd-boot reads them (Boot Loader Specification, "Boot counting"): no counter is
//! a good entry; `+LEFT` with LEFT > 0 is still being tried; `+0` is bad, booted only when
//! nothing else is left. systemd-boot counts down on each try; systemd-bless-boot drops the
//! counter once the boot is good.

use anyhow::{Context, Result, bail};
use std::fmt;
use std::path::Path;

/// One UKI on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    pub file_name: String,
    pub name: String,
    pub version: String,
    pub state: EntryState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// No counter: blessed, or installed with the image.
    Good,
    /// Being tried: `left` tries remain, `done` were made.
    Trying { left: u32, done: u32 },
    /// Out of tries: systemd-boot passed it over.
    Bad { done: u32 },
}

impl EntryState {
    /// Whether the entry carries a counter. The running version's entry with a counter is on
    /// trial, even at `+0-DONE`: systemd-boot counts a try down before it starts it, so the
    /// last try runs from an entry that already reads "no tries left".
    pub fn counting(self) -> bool {
        !matches!(self, EntryState::Good)
    }

    fn done(self) -> u32 {
        match self {
            EntryState::Good => 0,
            EntryState::Trying { done, .. } | EntryState::Bad { done } => done,
        }
    }
}

impl fmt::Display for EntryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryState::Good => f.write_str("good"),
            EntryState::Trying { left, done } => write!(f, "on trial: {left} tries left, {done} made"),
            EntryState::Bad { done } => write!(f, "bad: failed {done} tries"),
        }
    }
}

/// Parses `<name>_<version>[+LEFT[-DONE]].efi`.
pub fn parse(file_name: &str) -> Option<BootEntry> {
    let stem = file_name.strip_suffix(".efi")?;
    let (base, state) = match stem.rsplit_once('+') {
        Some((base, counter)) => {
            let (left, done) = match counter.split_once('-') {
                Some((l, d)) => (l.parse::<u32>().ok()?, d.parse::<u32>().ok()?),
                None => (counter.parse::<u32>().ok()?, 0),
            };
            let state = if left == 0 { EntryState::Bad { done } } else { EntryState::Trying { left, done } };
            (base, state)
        }
        None => (stem, EntryState::Good),
    };
    let (name, version) = base.split_once('_')?;
    airlock_common::version::Version::parse(version).ok()?;
    Some(BootEntry { file_name: file_name.to_string(), name: name.to_string(), version: version.to_string(), state })
}

/// The entries in `dir` (`EFI/Linux`), sorted by file name; files that are not entries are left
/// out.
pub fn list(dir: &Path) -> Result<Vec<BootEntry>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        if let Some(entry) = e.file_name().to_str().and_then(parse) {
            out.push(entry);
        }
    }
    out.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    Ok(out)
}

/// Removes every entry of `(name, version)`, whatever its counter, and syncs the folder.
pub fn remove_for(dir: &Path, entries: &[BootEntry], which: Option<(&str, &str)>) -> Result<()> {
    let Some((name, version)) = which else { return Ok(()) };
    let mut removed = false;
    for e in entries.iter().filter(|e| e.name == name && e.version == version) {
        let path = dir.join(&e.file_name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed = true,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", path.display())),
        }
    }
    if removed {
        super::sync_dir(dir)?;
    }
    Ok(())
}

/// Whether the ESP holds `size` more bytes once the target slot's entry is gone.
pub fn check_room(dir: &Path, size: u64, entries: &[BootEntry], freed_by: Option<&(String, String)>) -> Result<()> {
    let st = rustix::fs::statvfs(dir).with_context(|| format!("reading the free space of {}", dir.display()))?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let freed: u64 = entries
        .iter()
        .filter(|e| freed_by.is_some_and(|(n, v)| e.name == *n && e.version == *v))
        .filter_map(|e| std::fs::metadata(dir.join(&e.file_name)).ok())
        .map(|m| m.len())
        .sum();
    // The temporary copy needs the room before the old entry goes: counted with a margin.
    if free + freed < size + (1 << 20) {
        bail!("refused: the ESP has {} bytes free, the new UKI needs {size}", free + freed);
    }
    Ok(())
}

/// The boot's verdict on an entry being tried, as systemd-bless-boot writes it: `good` drops
/// the counter (`<base>.efi`: booted as any other from now on), `bad` sets the tries left to 0
/// (`<base>+0-DONE.efi`: passed over while anything else is left). Returns the new file name,
/// or `None` when there is nothing to rename (no counter, or already bad).
pub fn mark(dir: &Path, entry: &BootEntry, good: bool) -> Result<Option<String>> {
    if !entry.state.counting() {
        return Ok(None);
    }
    let base = format!("{}_{}", entry.name, entry.version);
    let name = if good { format!("{base}.efi") } else { format!("{base}+0-{}.efi", entry.state.done()) };
    if name == entry.file_name {
        return Ok(None);
    }
    let (from, to) = (dir.join(&entry.file_name), dir.join(&name));
    std::fs::rename(&from, &to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    super::sync_dir(dir)?;
    Ok(Some(name))
}

/// A good entry steps back for a downgrade: `<base>.efi` → `<base>+0.efi` (no tries left, none
/// made). systemd-boot then boots any entry with tries before it, and it again when none is
/// left. Returns the new file name.
pub fn step_back(dir: &Path, entry: &BootEntry) -> Result<String> {
    let name = format!("{}_{}+0.efi", entry.name, entry.version);
    let (from, to) = (dir.join(&entry.file_name), dir.join(&name));
    std::fs::rename(&from, &to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    super::sync_dir(dir)?;
    Ok(name)
}

/// Installs the UKI as `<base>+<tries>.efi` (temporary name, sync, rename); returns its file
/// name.
pub fn install(dir: &Path, base: &str, tries: u32, uki: &[u8]) -> Result<String> {
    let name = format!("{base}+{tries}.efi");
    super::write_atomically(dir, &name, uki)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_as_systemd_boot_counts() {
        let e = parse("demo_0.1.0.efi").unwrap();
        assert_eq!((e.name.as_str(), e.version.as_str(), e.state), ("demo", "0.1.0", EntryState::Good));
        assert_eq!(parse("demo_0.2.0+3.efi").unwrap().state, EntryState::Trying { left: 3, done: 0 });
        assert_eq!(parse("demo_0.2.0+2-1.efi").unwrap().state, EntryState::Trying { left: 2, done: 1 });
        assert_eq!(parse("demo_0.3.0+0-3.efi").unwrap().state, EntryState::Bad { done: 3 });
        assert_eq!(parse("pulumi-selfhosted_1.0.0-test+1.efi").unwrap().version, "1.0.0-test");
        for not in ["demo.efi", "demo_0.1.0.conf", "demo_v1.efi", "demo_0.1.0+x.efi", "auto-windows.efi"] {
            assert_eq!(parse(not), None, "{not}");
        }
    }

    #[test]
    fn install_and_remove_leave_only_what_they_say() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("demo_0.1.0.efi"), b"old").unwrap();
        std::fs::write(dir.path().join("demo_0.2.0+0-3.efi"), b"failed").unwrap();
        std::fs::write(dir.path().join("README"), b"not an entry").unwrap();
        let entries = list(dir.path()).unwrap();
        assert_eq!(entries.len(), 2);
        remove_for(dir.path(), &entries, Some(("demo", "0.2.0"))).unwrap();
        assert_eq!(install(dir.path(), "demo_0.2.0", 3, b"new").unwrap(), "demo_0.2.0+3.efi");
        let names: Vec<String> = list(dir.path()).unwrap().into_iter().map(|e| e.file_name).collect();
        assert_eq!(names, ["demo_0.1.0.efi", "demo_0.2.0+3.efi"]);
        assert_eq!(std::fs::read(dir.path().join("demo_0.2.0+3.efi")).unwrap(), b"new");
        assert!(!dir.path().join(".demo_0.2.0+3.efi.partial").exists());
        check_room(dir.path(), 1024, &[], None).unwrap();
        let err = check_room(dir.path(), u64::MAX / 2, &[], None).unwrap_err().to_string();
        assert!(err.contains("refused: the ESP has"), "{err}");
    }

    #[test]
    fn marks_rename_as_systemd_bless_boot_does() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["demo_0.1.0.efi", "demo_0.2.0+2-1.efi", "demo_0.3.0+1-2.efi", "demo_0.4.0+0-1.efi"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let entries = list(dir.path()).unwrap();
        assert_eq!(mark(dir.path(), &entries[0], true).unwrap(), None, "a good entry stays as it is");
        assert_eq!(mark(dir.path(), &entries[1], true).unwrap().as_deref(), Some("demo_0.2.0.efi"));
        assert_eq!(mark(dir.path(), &entries[2], false).unwrap().as_deref(), Some("demo_0.3.0+0-2.efi"));
        // The last try runs from `+0-DONE`: good still drops the counter.
        assert_eq!(mark(dir.path(), &entries[3], true).unwrap().as_deref(), Some("demo_0.4.0.efi"));
        let after: Vec<(String, EntryState)> =
            list(dir.path()).unwrap().into_iter().map(|e| (e.file_name, e.state)).collect();
        assert_eq!(
            after,
            [
                ("demo_0.1.0.efi".to_string(), EntryState::Good),
                ("demo_0.2.0.efi".to_string(), EntryState::Good),
                ("demo_0.3.0+0-2.efi".to_string(), EntryState::Bad { done: 2 }),
                ("demo_0.4.0.efi".to_string(), EntryState::Good),
            ]
        );
        assert_eq!(std::fs::read(dir.path().join("demo_0.2.0.efi")).unwrap(), b"demo_0.2.0+2-1.efi");
    }
}
