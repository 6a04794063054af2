//! Updates from a USB stick, for an operator without a shell: when a removable drive appears
//! (udev → `airlock-usb-update@<dev>.service`), its filesystem is mounted read-only, the newest
//! bundle in its `airlock-update/` folder is applied as `airlock update apply` would, and the
//! console says what happened. Everything on the stick is untrusted: only regular files named
//! `*.update` are looked at, and a bundle is written only after its signature and every payload
//! check out (`apply`).

use super::{Applied, ApplyOptions, Target};
use airlock_common::command::Cmd;
use airlock_common::version::Version;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The folder on the stick that holds bundles.
pub const FOLDER: &str = "airlock-update";
/// Where a stick is mounted while it is read.
pub const MOUNT_DIR: &str = "/run/airlock/usb";

/// What a stick held.
#[derive(Debug)]
pub enum Outcome {
    /// No `airlock-update/` folder, or no bundle in it.
    Nothing(String),
    /// A bundle was staged.
    Staged { file: String, applied: Applied },
}

/// What a stick's folder holds: its bundles with their versions, and the entries left out.
type Listing = (Vec<(Version, PathBuf)>, Vec<String>);

/// The bundles of `folder`, newest version first: regular files named `<name>_<version>.update`
/// (the version as `airlock build` names them; the signed header decides what is applied).
/// Other entries are listed in `ignored`, with why.
pub fn bundles(folder: &Path) -> Result<Listing> {
    let mut found = Vec::new();
    let mut ignored = Vec::new();
    let entries = std::fs::read_dir(folder).with_context(|| format!("listing {}", folder.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("listing {}", folder.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".update") else { continue };
        let meta = std::fs::symlink_metadata(e.path()).with_context(|| format!("reading {}", e.path().display()))?;
        if !meta.is_file() {
            ignored.push(format!("{name}: not a regular file"));
            continue;
        }
        match stem.split_once('_').map(|(_, v)| Version::parse(v)) {
            Some(Ok(v)) => found.push((v, e.path())),
            _ => ignored.push(format!("{name}: not named <name>_<version>.update")),
        }
    }
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    Ok((found, ignored))
}

/// Applies the newest bundle on the removable drive `device` (a partition, or a disk with a
/// filesystem and no partition table) to `target`. The drive is mounted read-only under
/// [`MOUNT_DIR`] and unmounted before this returns, whatever happened. The caller has checked
/// that it is not on the appliance's own disk ([`on_disk`]).
pub fn apply_from(device: &Path, target: &Target, opts: &ApplyOptions) -> Result<Outcome> {
    let name = device.file_name().and_then(|n| n.to_str()).context("a device name")?;
    let mount_point = Path::new(MOUNT_DIR).join(name);
    std::fs::create_dir_all(&mount_point).with_context(|| format!("creating {}", mount_point.display()))?;
    Cmd::new("mount")
        .args(["-o", "ro,nosuid,nodev,noexec"])
        .arg(device)
        .arg(&mount_point)
        .run()
        .with_context(|| format!("{} holds no filesystem this appliance reads", device.display()))?;
    let outcome = apply_mounted(&mount_point, target, opts);
    let unmounted = Cmd::new("umount").arg(&mount_point).run();
    std::fs::remove_dir(&mount_point).ok();
    let outcome = outcome?;
    unmounted.with_context(|| format!("unmounting {}", mount_point.display()))?;
    Ok(outcome)
}

fn apply_mounted(root: &Path, target: &Target, opts: &ApplyOptions) -> Result<Outcome> {
    let folder = root.join(FOLDER);
    if !std::fs::symlink_metadata(&folder).is_ok_and(|m| m.is_dir()) {
        return Ok(Outcome::Nothing(format!("no folder {FOLDER}/")));
    }
    let (found, ignored) = bundles(&folder)?;
    for why in &ignored {
        log::warn!("{FOLDER}/{why}");
    }
    let Some((_, newest)) = found.first() else {
        return Ok(Outcome::Nothing(format!("no <name>_<version>.update file in {FOLDER}/")));
    };
    let file = newest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A stick left in after its update was staged and booted: nothing to say but that.
    if let Some((_, running)) = super::Status::read(target)?.running().holds.clone()
        && let (Ok(running), Some((newest_version, _))) = (Version::parse(&running), found.first())
        && *newest_version <= running
    {
        return Ok(Outcome::Nothing(format!("{file} is not newer than the running version {running}")));
    }
    if found.len() > 1 {
        log::info!("{FOLDER}/ holds {} bundles: the newest, {file}, is applied", found.len());
    }
    let applied = super::apply(target, newest, opts).with_context(|| format!("{FOLDER}/{file}"))?;
    Ok(Outcome::Staged { file, applied })
}

/// Whether the block device `device` is `disk` or one of its partitions (through sysfs): an
/// appliance that boots from a USB stick sees its own disk appear, which is not an update.
pub fn on_disk(device: &Path, disk: &Path) -> Result<bool> {
    let dev = std::fs::canonicalize(device).with_context(|| format!("finding {}", device.display()))?;
    let disk = std::fs::canonicalize(disk).with_context(|| format!("finding {}", disk.display()))?;
    if dev == disk {
        return Ok(true);
    }
    let (Some(dev_name), Some(disk_name)) = (dev.file_name(), disk.file_name()) else {
        bail!("{} or {} is not a device", dev.display(), disk.display());
    };
    // A partition's sysfs folder sits inside its disk's.
    let sys = std::fs::canonicalize(Path::new("/sys/class/block").join(dev_name))
        .with_context(|| format!("finding {} in sysfs", dev.display()))?;
    Ok(sys.parent().and_then(|p| p.file_name()) == Some(disk_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_named_bundle_comes_first_and_the_rest_is_said() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["demo_0.2.0.update", "demo_0.10.0.update", "demo_0.9.1-test.update", "notes.txt", "x.update"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        std::fs::create_dir(dir.path().join("demo_1.0.0.update")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("demo_2.0.0.update")).unwrap();
        let (found, mut ignored) = bundles(dir.path()).unwrap();
        let names: Vec<String> =
            found.iter().map(|(_, p)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["demo_0.10.0.update", "demo_0.9.1-test.update", "demo_0.2.0.update"]);
        ignored.sort();
        assert_eq!(
            ignored,
            [
                "demo_1.0.0.update: not a regular file",
                "demo_2.0.0.update: not a regular file",
                "x.update: not named <name>_<version>.update"
            ]
        );
    }

    #[test]
    fn a_mounted_stick_without_the_folder_or_a_bundle_is_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target {
            disk: "/nonexistent".into(),
            esp: "/nonexistent".into(),
            keys: "/nonexistent".into(),
            root_hash: String::new(),
        };
        let opts = ApplyOptions { allow_downgrade: false, tries: 1 };
        let out = apply_mounted(dir.path(), &target, &opts).unwrap();
        assert!(matches!(&out, Outcome::Nothing(why) if why == "no folder airlock-update/"), "{out:?}");
        std::fs::create_dir(dir.path().join(FOLDER)).unwrap();
        std::fs::write(dir.path().join(FOLDER).join("README"), b"").unwrap();
        let out = apply_mounted(dir.path(), &target, &opts).unwrap();
        assert!(matches!(&out, Outcome::Nothing(why) if why.starts_with("no <name>_<version>.update")), "{out:?}");
    }
}
