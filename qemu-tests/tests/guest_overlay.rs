//! The test-only guest overlay (`qemu-tests/guest`) is complete and self-consistent, and
//! nothing that goes into production images refers to it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use qemu_tests::guest_overlay_dir;

const UNIT: &str = "airlock-test-backdoor.service";

fn in_overlay(target: &str) -> PathBuf {
    guest_overlay_dir().join(target.trim_start_matches('/'))
}

fn unit_file() -> Result<String> {
    let path = in_overlay(&format!("/usr/lib/systemd/system/{UNIT}"));
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

#[test]
fn the_unit_is_enabled_early_by_a_symlink() -> Result<()> {
    let link = in_overlay(&format!("/etc/systemd/system/sysinit.target.wants/{UNIT}"));
    let target = std::fs::read_link(&link).with_context(|| format!("reading {}", link.display()))?;
    ensure!(target == Path::new("/usr/lib/systemd/system").join(UNIT), "{}", target.display());
    let unit = unit_file()?;
    ensure!(unit.contains("\nDefaultDependencies=no\n"), "{unit}");
    ensure!(unit.contains("\nWantedBy=sysinit.target\n"), "{unit}");
    Ok(())
}

#[test]
fn the_unit_starts_an_executable_script_from_the_overlay() -> Result<()> {
    let unit = unit_file()?;
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).context("no ExecStart=")?;
    let script = in_overlay(exec);
    let mode =
        std::fs::metadata(&script).with_context(|| format!("{exec} is not in the overlay"))?.permissions().mode();
    ensure!(mode & 0o111 == 0o111, "{exec} has mode {mode:o}");
    let check = Command::new("bash").arg("-n").arg(&script).output()?;
    ensure!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    Ok(())
}

/// The command channel must only ever reach images through `--test-overlay`.
#[test]
fn production_sources_do_not_mention_the_backdoor() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut offenders = Vec::new();
    for dir in ["overlay", "systemd", "images"] {
        scan(&root.join(dir), &mut offenders)?;
    }
    ensure!(offenders.is_empty(), "test-only files referenced from: {offenders:?}");
    Ok(())
}

fn scan(path: &Path, offenders: &mut Vec<PathBuf>) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let name_hit = mentions_backdoor(path.to_string_lossy().as_bytes());
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            scan(&entry?.path(), offenders)?;
        }
    } else if meta.is_symlink() {
        if name_hit || std::fs::read_link(path)?.to_string_lossy().contains("airlock-test") {
            offenders.push(path.to_owned());
        }
    } else {
        let bytes = std::fs::read(path)?;
        if name_hit || mentions_backdoor(&bytes) {
            offenders.push(path.to_owned());
        }
    }
    Ok(())
}

fn mentions_backdoor(bytes: &[u8]) -> bool {
    [&b"airlock-test-backdoor"[..], b"airlock-test/backdoor", b"qemu-tests/guest"]
        .iter()
        .any(|needle| bytes.windows(needle.len()).any(|w| w == *needle))
}
