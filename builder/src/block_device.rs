//! Which block devices are in use: mounts from `/proc/self/mountinfo`, and the relations
//! between disks, their partitions and the devices stacked on them (device mapper, md) from
//! sysfs. `airlock flash` refuses a target that this module says is in use.

use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A block device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    pub fn from_rdev(rdev: u64) -> Self {
        // Linux's dev_t encoding (glibc's gnu_dev_major/minor).
        let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff);
        let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff);
        Self { major: major as u32, minor: minor as u32 }
    }

    fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.trim().split_once(':')?;
        Some(Self { major: a.parse().ok()?, minor: b.parse().ok()? })
    }
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub dev: DevNum,
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text (proc(5): `id parent major:minor root mount-point options
/// [optional fields...] - fstype source super-options`).
pub fn parse_mountinfo(text: &str) -> Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-");
        let (Some(sep), true) = (sep, fields.len() >= 7) else {
            bail!("mountinfo line {}: unexpected format: {line:?}", i + 1);
        };
        let dev = DevNum::parse(fields[2])
            .with_context(|| format!("mountinfo line {}: bad device {:?}", i + 1, fields[2]))?;
        let fs_type = fields.get(sep + 1).copied().unwrap_or_default();
        let source = fields.get(sep + 2).copied().unwrap_or_default();
        mounts.push(Mount {
            dev,
            mount_point: unescape(fields[4]),
            fs_type: fs_type.to_string(),
            source: unescape(source),
        });
    }
    Ok(mounts)
}

/// The mount that `/` is (the last one mounted on `/` wins, as in the kernel).
pub fn root_mount(mounts: &[Mount]) -> Option<&Mount> {
    mounts.iter().rev().find(|m| m.mount_point == "/")
}

/// Block device relations as sysfs shows them. `root` is `/sys` on a real system and a fake
/// tree in tests.
#[derive(Debug, Clone)]
pub struct Sysfs {
    pub root: PathBuf,
}

impl Sysfs {
    pub fn system() -> Self {
        Self { root: PathBuf::from("/sys") }
    }

    /// The device's directory (`/sys/dev/block/M:m`, resolved).
    fn dir(&self, dev: DevNum) -> Option<PathBuf> {
        std::fs::canonicalize(self.root.join(format!("dev/block/{dev}"))).ok()
    }

    fn dev_of(dir: &Path) -> Option<DevNum> {
        DevNum::parse(&std::fs::read_to_string(dir.join("dev")).ok()?)
    }

    fn children(dir: &Path, sub: Option<&str>) -> Vec<PathBuf> {
        let base = match sub {
            Some(s) => dir.join(s),
            None => dir.to_path_buf(),
        };
        let Ok(entries) = std::fs::read_dir(&base) else { return Vec::new() };
        let mut out: Vec<PathBuf> =
            entries.filter_map(|e| e.ok()).filter_map(|e| std::fs::canonicalize(e.path()).ok()).collect();
        out.sort();
        out
    }

    /// The whole disk a partition belongs to (a whole disk is its own).
    pub fn whole_disk(&self, dev: DevNum) -> DevNum {
        match self.dir(dev) {
            Some(d) if d.join("partition").exists() => d.parent().and_then(Self::dev_of).unwrap_or(dev),
            _ => dev,
        }
    }

    /// The device, its partitions and everything stacked on any of them (holders), transitively.
    pub fn family(&self, dev: DevNum) -> BTreeSet<DevNum> {
        let mut out = BTreeSet::from([dev]);
        let mut todo: Vec<PathBuf> = self.dir(dev).into_iter().collect();
        while let Some(dir) = todo.pop() {
            let mut next =
                Self::children(&dir, None).into_iter().filter(|c| c.join("partition").exists()).collect::<Vec<_>>();
            next.extend(Self::children(&dir, Some("holders")));
            for n in next {
                if let Some(d) = Self::dev_of(&n)
                    && out.insert(d)
                {
                    todo.push(n);
                }
            }
        }
        out
    }

    /// The whole disks a device ultimately lives on, through device mapper and md `slaves`.
    pub fn backing_disks(&self, dev: DevNum) -> BTreeSet<DevNum> {
        let mut out = BTreeSet::new();
        let mut todo = vec![dev];
        let mut seen = BTreeSet::new();
        while let Some(d) = todo.pop() {
            if !seen.insert(d) {
                continue;
            }
            let slaves: Vec<DevNum> = self
                .dir(d)
                .map(|dir| Self::children(&dir, Some("slaves")).iter().filter_map(|s| Self::dev_of(s)).collect())
                .unwrap_or_default();
            if slaves.is_empty() {
                out.insert(self.whole_disk(d));
            } else {
                todo.extend(slaves);
            }
        }
        out
    }
}

/// Why a block device must not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InUse {
    #[error("holds the running system: / ({root_source}) lives on it")]
    RunningSystem { root_source: String },
    #[error("is mounted: {device} ({dev}) on {mount_point}")]
    Mounted { device: String, dev: DevNum, mount_point: String },
}

/// Whether the block device `target` (or a partition of it, or anything stacked on it) is the
/// running system's disk or mounted.
pub fn in_use(target: DevNum, mounts: &[Mount], sysfs: &Sysfs) -> Option<InUse> {
    let disk = sysfs.whole_disk(target);
    if let Some(root) = root_mount(mounts) {
        let root_disks = sysfs.backing_disks(root.dev);
        if root.dev == target || root_disks.contains(&disk) || root_disks.contains(&target) {
            return Some(InUse::RunningSystem { root_source: root.source.clone() });
        }
    }
    let family = sysfs.family(target);
    mounts.iter().find(|m| family.contains(&m.dev)).map(|m| InUse::Mounted {
        device: m.source.clone(),
        dev: m.dev,
        mount_point: m.mount_point.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw
28 27 8:1 / /boot/efi rw,relatime shared:2 - vfat /dev/sda1 rw
40 27 253:0 / /srv/my\\040data rw,relatime - ext4 /dev/mapper/vg-data rw
41 27 8:33 / /media/usb rw,nosuid master:7 - vfat /dev/sdc1 rw
";

    /// A fake /sys: sda (sda1, sda2), sdb (sdb1, under dm-0), sdc (sdc1), sdd (nothing).
    fn fake_sysfs() -> (tempfile::TempDir, Sysfs) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let mk = |path: &str, dev: &str, partition: bool| {
            let d = r.join("devices").join(path);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
            if partition {
                fs::write(d.join("partition"), "1\n").unwrap();
            }
            fs::create_dir_all(r.join("dev/block")).unwrap();
            std::os::unix::fs::symlink(&d, r.join("dev/block").join(dev)).unwrap();
            d
        };
        mk("sda", "8:0", false);
        mk("sda/sda1", "8:1", true);
        mk("sda/sda2", "8:2", true);
        mk("sdb", "8:16", false);
        let sdb1 = mk("sdb/sdb1", "8:17", true);
        let dm = mk("dm-0", "253:0", false);
        fs::create_dir_all(sdb1.join("holders")).unwrap();
        std::os::unix::fs::symlink(&dm, sdb1.join("holders/dm-0")).unwrap();
        fs::create_dir_all(dm.join("slaves")).unwrap();
        std::os::unix::fs::symlink(&sdb1, dm.join("slaves/sdb1")).unwrap();
        mk("sdc", "8:32", false);
        mk("sdc/sdc1", "8:33", true);
        mk("sdd", "8:48", false);
        let s = Sysfs { root: r.to_path_buf() };
        (t, s)
    }

    fn dev(major: u32, minor: u32) -> DevNum {
        DevNum { major, minor }
    }

    #[test]
    fn parses_mountinfo_with_optional_fields_and_escapes() {
        let m = parse_mountinfo(MOUNTINFO).unwrap();
        assert_eq!(m.len(), 5);
        assert_eq!(root_mount(&m).unwrap().source, "/dev/sda2");
        assert_eq!(m[3].mount_point, "/srv/my data");
        assert_eq!((m[4].dev, m[4].fs_type.as_str()), (dev(8, 33), "vfat"));
        assert!(parse_mountinfo("garbage\n").is_err());
    }

    #[test]
    fn refuses_the_system_disk_mounted_disks_and_stacked_devices() {
        let (_t, sys) = fake_sysfs();
        let m = parse_mountinfo(MOUNTINFO).unwrap();
        // The disk holding / and each of its partitions.
        for d in [dev(8, 0), dev(8, 1), dev(8, 2)] {
            assert!(matches!(in_use(d, &m, &sys), Some(InUse::RunningSystem { .. })), "{d}");
        }
        // sdb is not mounted itself, but dm-0 on its partition is.
        let sdb = in_use(dev(8, 16), &m, &sys).unwrap();
        assert_eq!(sdb.to_string(), "is mounted: /dev/mapper/vg-data (253:0) on /srv/my data");
        // A whole disk whose partition is mounted.
        assert!(matches!(in_use(dev(8, 32), &m, &sys), Some(InUse::Mounted { .. })));
        assert_eq!(in_use(dev(8, 48), &m, &sys), None, "an unused disk may be written");
        assert_eq!(sys.whole_disk(dev(8, 33)), dev(8, 32));
        assert_eq!(sys.backing_disks(dev(253, 0)), BTreeSet::from([dev(8, 16)]));
    }

    #[test]
    fn root_on_device_mapper_protects_the_disk_underneath() {
        let (_t, sys) = fake_sysfs();
        let m = parse_mountinfo("1 0 253:0 / / rw - ext4 /dev/mapper/vg-root rw\n").unwrap();
        assert!(matches!(in_use(dev(8, 16), &m, &sys), Some(InUse::RunningSystem { .. })));
        assert_eq!(in_use(dev(8, 48), &m, &sys), None);
    }

    #[test]
    fn decodes_rdev() {
        // makedev(8, 17) and makedev(259, 1048576) as glibc encodes them.
        assert_eq!(DevNum::from_rdev(0x811), dev(8, 17));
        assert_eq!(DevNum::from_rdev((259 << 8) | ((1_048_576u64 & 0xffff_ff00) << 12)), dev(259, 1_048_576));
    }
}
