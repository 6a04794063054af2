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
}
