//! The appliance's base OS: a Debian root filesystem as a tarball made by `mmdebstrap`, cached
//! by the hash of everything that determines it.
//!
//! A warm build finds the tarball under `<cache>/base/<key>.tar` and touches no network. The
//! tarball is built under a `.partial` name and renamed only once it is complete, so a killed
//! build never leaves a cache entry that looks valid.

use crate::command::Cmd;
use crate::tree::{NodeKind, Tree};
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Packages every appliance has: a kernel, systemd as init with its network and boot pieces,
/// the tools first boot uses to grow the data partition, and an initrd able to open the
/// dm-verity root (dracut with systemd's veritysetup module, which needs systemd-cryptsetup's
/// generator and dmsetup's udev rules; Debian's default initramfs-tools has no systemd initrd).
pub const BASE_PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "dracut",
    "systemd-cryptsetup",
    "dmsetup",
    "systemd",
    "systemd-sysv",
    "systemd-boot-efi",
    // bootctl: the boot loader's and Secure Boot's state for an administrator (`bootctl
    // status`), and what the updater's boot assessment uses.
    "systemd-boot-tools",
    "systemd-resolved",
    "systemd-repart",
    "udev",
    "dbus",
    "e2fsprogs",
    "kmod",
    "iproute2",
    "openssh-server",
    "systemd-timesyncd",
];

/// Everything that determines the base tarball's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseOs {
    pub suite: String,
    pub mirror: String,
    pub architecture: String,
    /// Sorted and deduplicated.
    pub packages: Vec<String>,
    /// A user-chosen token that forces a fresh tarball when changed (e.g. a date); the archive
    /// itself moves on, so this is how a build pins or refreshes its package set.
    pub refresh: String,
}

/// Bump when the way the tarball is made changes (options, hooks), to invalidate old entries.
const RECIPE_VERSION: &str = "airlock-base-v2";

/// dracut's configuration, written before any package is installed so the kernel's postinst
/// makes the initrd with it: generic (a chroot's host says nothing about the appliance's),
/// systemd's veritysetup module (only included when asked), dm-verity and the disk drivers of
/// VMs and common hardware, and `reproducible` (sorted cpio, mtimes from `SOURCE_DATE_EPOCH`).
pub const DRACUT_CONF: &str = "# Written by airlock: the appliance's initrd opens a dm-verity root.\n\
hostonly=\"no\"\n\
hostonly_cmdline=\"no\"\n\
reproducible=\"yes\"\n\
add_dracutmodules+=\" systemd-veritysetup \"\n\
add_drivers+=\" dm_verity virtio_blk virtio_scsi virtio_pci nvme ahci sd_mod usb_storage uas xhci_pci ehci_pci \"\n\
filesystems+=\" ext4 vfat \"\n";

/// Where [`DRACUT_CONF`] goes in the root filesystem.
pub const DRACUT_CONF_PATH: &str = "etc/dracut.conf.d/50-airlock.conf";

impl BaseOs {
    pub fn new(suite: &str, mirror: &str, extra: &[String], refresh: &str) -> Self {
        let mut packages: Vec<String> =
            BASE_PACKAGES.iter().map(|s| s.to_string()).chain(extra.iter().cloned()).collect();
        packages.sort();
        packages.dedup();
        Self {
            suite: suite.into(),
            mirror: mirror.into(),
            architecture: "amd64".into(),
            packages,
            refresh: refresh.into(),
        }
    }

    /// Adds packages (kept sorted, without duplicates, as [`BaseOs::new`] keeps them).
    pub fn add_packages(&mut self, extra: &[String]) {
        self.packages.extend(extra.iter().cloned());
        self.packages.sort();
        self.packages.dedup();
    }

    /// The cache key: SHA-256 over a canonical rendering of every input.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        for part in [RECIPE_VERSION, DRACUT_CONF, &self.suite, &self.mirror, &self.architecture, &self.refresh] {
            h.update(part.as_bytes());
            h.update(b"\n");
        }
        for p in &self.packages {
            h.update(p.as_bytes());
            h.update(b",");
        }
        hex::encode(h.finalize())
    }

    /// The cached tarball, made with mmdebstrap if it is not there yet.
    pub fn ensure_tarball(&self, cache_root: &Path, source_date_epoch: i64) -> Result<PathBuf> {
        let dir = crate::cache::cache_subdir(cache_root, "base")?;
        let key = self.key();
        let tar = dir.join(format!("{key}.tar"));
        if tar.is_file() {
            log::info!("base OS: cached {} ({} packages requested)", tar.display(), self.packages.len());
            return Ok(tar);
        }
        // Created exclusively and locked (a leftover of a killed run is replaced, a link
        // planted there is not followed, a concurrent build of the same base is refused);
        // mmdebstrap then writes into this very file.
        let output = crate::output_file::PartialFile::create(&tar)?;
        let partial = output.partial_path().to_path_buf();
        let log_path = dir.join(format!("{key}.log"));
        log::info!("base OS: running mmdebstrap for {} (log: {})", self.suite, log_path.display());
        let mut phases = MmdebstrapPhases::default();
        let result = Cmd::new("mmdebstrap")
            .arg("--verbose")
            .arg("--variant=minbase")
            .arg(format!("--architectures={}", self.architecture))
            .arg(format!("--include={}", self.packages.join(",")))
            // Before the packages: the kernel's postinst runs dracut with it.
            .arg(format!(
                "--setup-hook=mkdir -p \"$1/etc/dracut.conf.d\" && printf '%s' '{}' > \"$1/{DRACUT_CONF_PATH}\"",
                DRACUT_CONF.replace('\'', "")
            ))
            .arg("--format=tar")
            .arg(&self.suite)
            .arg(&partial)
            .arg(&self.mirror)
            .env("SOURCE_DATE_EPOCH", source_date_epoch.to_string())
            .run_streaming(Some(&log_path), |line| phases.line(line));
        if let Err(e) = result {
            return Err(e.context(format!("building the {} base OS", self.suite)));
        }
        output.commit()
    }
}

/// mmdebstrap's phases, in order, as its `I:` lines name them: the measure of the base OS
/// stage (its raw log goes to the cache's `.log` file).
const MMDEBSTRAP_PHASES: &[&str] = &[
    "running apt-get update",
    "downloading packages",
    "extracting archives",
    "installing essential packages",
    "installing remaining packages",
    "cleaning package lists",
    "creating tarball",
    "done",
    // After "done" mmdebstrap still deletes its chroot, which takes a while on a busy disk.
    "removing tempdir",
];

/// Follows mmdebstrap's output: which phase it is in (of [`MMDEBSTRAP_PHASES`]) and, for the
/// packages apt announced (`N newly installed`, once for the essential packages and once for
/// the rest), how many it fetched (`Get:`), unpacked and set up: three steps per package, the
/// stage's measure.
#[derive(Debug, Default)]
struct MmdebstrapPhases {
    reached: usize,
    announced: u64,
    fetched: u64,
    unpacked: u64,
    set_up: u64,
}

impl MmdebstrapPhases {
    fn line(&mut self, line: &str) {
        if let Some(text) = line.strip_prefix("I: ") {
            let found = MMDEBSTRAP_PHASES.iter().position(|p| text.starts_with(p));
            match found.filter(|i| *i >= self.reached) {
                Some(i) => self.reached = i + 1,
                None => return,
            }
        } else if let Some(n) = newly_installed(line) {
            self.announced += n;
            crate::progress::measure(crate::progress::Unit::Items("package steps"), Some(3 * self.announced));
            crate::progress::set_done(self.fetched + self.unpacked + self.set_up);
        } else if line.starts_with("Get:") && self.announced > 0 {
            // (apt-get update's index downloads come before any announcement)
            self.fetched += 1;
            crate::progress::items(1);
        } else if line.starts_with("Unpacking ") {
            self.unpacked += 1;
            crate::progress::items(1);
        } else if line.starts_with("Setting up ") {
            self.set_up += 1;
            crate::progress::items(1);
        } else {
            return;
        }
        let phase = MMDEBSTRAP_PHASES[self.reached.saturating_sub(1)];
        crate::progress::phase(&format!(
            "{}/{} {phase} (of {} packages: {} fetched, {} unpacked, {} set up)",
            self.reached,
            MMDEBSTRAP_PHASES.len(),
            self.announced,
            self.fetched,
            self.unpacked,
            self.set_up
        ));
    }
}

/// N of apt's `0 upgraded, N newly installed, ...`.
fn newly_installed(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once(" upgraded, ")?;
    rest.split_once(" newly installed")?.0.parse().ok()
}

/// One installed Debian package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

/// The installed packages, read from `var/lib/dpkg/status` in the tree (what `dpkg-query -W`
/// would print inside it), sorted by name.
pub fn installed_packages(tree: &Tree) -> Result<Vec<Package>> {
    let Some(id) = tree.lookup("var/lib/dpkg/status") else {
        bail!("the base OS has no var/lib/dpkg/status");
    };
    let NodeKind::File { size, content } = &tree.node(id).kind else {
        bail!("var/lib/dpkg/status is not a regular file");
    };
    let mut bytes = vec![0u8; usize::try_from(*size).context("dpkg status file too large")?];
    tree.content_reader().read_at(content, *size, 0, &mut bytes)?;
    let text = String::from_utf8(bytes).context("var/lib/dpkg/status is not UTF-8")?;
    Ok(parse_dpkg_status(&text))
}

pub fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let field = |name: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string()))
        };
        if field("Status").as_deref() != Some("install ok installed") {
            continue;
        }
        if let (Some(name), Some(version)) = (field("Package"), field("Version")) {
            out.push(Package { name, version, architecture: field("Architecture").unwrap_or_default() });
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_every_input_but_not_package_order() {
        let a = BaseOs::new("trixie", "http://m/debian", &["nginx".into(), "curl".into()], "");
        let b = BaseOs::new("trixie", "http://m/debian", &["curl".into(), "nginx".into(), "curl".into()], "");
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), BaseOs::new("forky", "http://m/debian", &[], "").key());
        assert_ne!(a.key(), BaseOs::new("trixie", "http://n/debian", &["nginx".into(), "curl".into()], "").key());
        assert_ne!(
            a.key(),
            BaseOs::new("trixie", "http://m/debian", &["nginx".into(), "curl".into()], "2026-11").key()
        );
    }

    #[test]
    fn reads_apt_announcements() {
        assert_eq!(newly_installed("0 upgraded, 128 newly installed, 0 to remove and 0 not upgraded."), Some(128));
        assert_eq!(newly_installed("Setting up libc6:amd64 (2.41-12) ..."), None);
    }

    #[test]
    fn parses_dpkg_status() {
        let text = "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.3\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.37-2\nDescription: x\n more\n";
        let p = parse_dpkg_status(text);
        assert_eq!(
            p,
            vec![
                Package { name: "bash".into(), version: "5.2.37-2".into(), architecture: "amd64".into() },
                Package { name: "zlib1g".into(), version: "1:1.3".into(), architecture: "amd64".into() },
            ]
        );
    }
}
