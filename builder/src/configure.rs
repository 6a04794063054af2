//! Turning a Debian root filesystem into this appliance: identity files, mounts, the units that
//! make it ready, and the clean slate first boot needs. Everything here edits the tree; nothing
//! is extracted or run.

use crate::clock::BuildClock;
use crate::plan::BuildPlan;
use crate::tree::{Content, Meta, NodeKind, Tree};
use crate::units;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;

/// Where the data partition is mounted.
pub const DATA_MOUNT: &str = "/var/lib/airlock";

/// Units that only cost first-boot time on an appliance (scrubbing, package-manager timers,
/// interactive first-boot prompts).
pub const TIME_SINKS: &[&str] = &[
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "man-db.timer",
    "podman-auto-update.timer",
    "podman-restart.service",
    "systemd-firstboot.service",
];

/// Units airlock always enables.
pub const ALWAYS_ENABLED: &[&str] = &[
    "systemd-networkd.service",
    "systemd-resolved.service",
    "airlock-provision.service",
    "airlock-address.service",
    "airlock-banner.service",
];

/// The persistent journal's folder on the data partition, bind-mounted on `/var/log/journal`:
/// the audit trail grows with the data partition (journald caps it:
/// `overlay/etc/systemd/journald.conf.d/airlock.conf`) and never fills the root filesystem.
pub const JOURNAL_DIR: &str = "journal";

/// The data partition as built: empty but for the journal's folder (`2755 root:systemd-journal`,
/// as systemd's tmpfiles.d makes `/var/log/journal`), which must exist when it is mounted.
pub fn data_tree(root: &Tree, clock: &BuildClock) -> Result<Tree> {
    let gid = crate::preload::account_ids(root, "etc/group", "systemd-journal", &[2])?
        .and_then(|ids| ids.first().copied())
        .context("no group systemd-journal in the root filesystem's /etc/group")?;
    let mut tree = Tree::new();
    let mut meta = Meta::root(0o2755);
    meta.gid = gid;
    meta.mtime = clock.epoch();
    tree.insert(JOURNAL_DIR.as_bytes(), meta, NodeKind::Directory { entries: BTreeMap::new() })
        .map_err(|p| anyhow!("creating {JOURNAL_DIR} on the data partition: {p}"))?;
    Ok(tree)
}

/// Partition identities the root filesystem refers to.
#[derive(Debug, Clone)]
pub struct PartitionIds {
    pub esp: uuid::Uuid,
    pub root: uuid::Uuid,
    pub data: uuid::Uuid,
}

/// Writes the appliance's identity, mounts and readiness wiring, and enables and masks units.
pub fn configure_system(root: &mut Tree, plan: &BuildPlan, ids: &PartitionIds) -> Result<()> {
    root.begin_layer();
    root.put_file("etc/hostname", 0o644, format!("{}\n", plan.hostname))?;
    let short = plan.hostname.split('.').next().unwrap_or(&plan.hostname);
    root.put_file(
        "etc/hosts",
        0o644,
        format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{} {short}\n::1\t\tlocalhost ip6-localhost ip6-loopback\n",
            plan.hostname
        ),
    )?;
    // The data partition is mounted data=journal: file data goes through the journal in the
    // order it was written, so after a power cut the filesystem is as it was at some moment,
    // data included. With the default (data=ordered and delayed allocation) a program that
    // records "done" without fsyncing what it wrote — podman extracting a pulled layer — can
    // come back with the record and empty files (found by the power-cut test).
    root.put_file("etc/fstab",
        0o644,
        format!(
            "# Written by airlock. Partitions are named by their GPT PARTUUIDs.\n\
             PARTUUID={root} / ext4 defaults 0 1\n\
             PARTUUID={data} {DATA_MOUNT} ext4 defaults,data=journal,x-systemd.growfs,x-systemd.after=systemd-repart.service 0 2\n\
             PARTUUID={esp} /efi vfat noauto,x-systemd.automount,umask=0077 0 0\n\
             {DATA_MOUNT}/{JOURNAL_DIR} /var/log/journal none bind,x-systemd.requires-mounts-for={DATA_MOUNT} 0 0\n",
            root = ids.root,
            data = ids.data,
            esp = ids.esp,
        ),
    )?;
    root.put_dir(DATA_MOUNT.trim_start_matches('/'), 0o755)?;
    root.put_dir("var/log/journal", 0o2755)?;
    root.put_dir("efi", 0o700)?;
    root.put_symlink("etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf")?;

    root.put_file(
        "usr/lib/airlock/appliance.env",
        0o644,
        format!("APPLIANCE_NAME={}\nAPPLIANCE_VERSION={}\n", shell_quote(&plan.name), shell_quote(&plan.version)),
    )?;
    // `-` stands for "no URL": the banner waits for the unit but lists no line for it.
    let services: String =
        plan.services.iter().map(|s| format!("{} {} {}\n", s.name, s.unit, s.url.as_deref().unwrap_or("-"))).collect();
    root.put_file("usr/lib/airlock/services", 0o644, services)?;
    let mut ready = String::from("# Written by airlock from the spec's services.\n[Unit]\n");
    for s in &plan.services {
        ready.push_str(&format!("Requires={0}\nAfter={0}\n", s.unit));
    }
    root.put_file("usr/lib/systemd/system/airlock-ready.target.d/services.conf", 0o644, ready)?;

    let registry: &[&str] = if plan.containers.is_empty() { &[] } else { &["docker-registry.service"] };
    for unit in ALWAYS_ENABLED.iter().chain(registry).copied().chain(plan.enable.iter().map(String::as_str)) {
        units::enable(root, unit)?;
    }
    for unit in TIME_SINKS.iter().copied().chain(plan.mask.iter().map(String::as_str)) {
        units::mask(root, unit)?;
    }
    Ok(())
}

/// Where the provisioner (this binary, run as `airlock firstboot`) lives in the image.
pub const PROVISIONER: &str = "usr/lib/airlock/airlock";

/// Copies the `airlock` executable into the image as its provisioner. The build host and the
/// appliance are both Debian amd64 and the appliance's glibc is the same or newer, so the
/// binary runs there as it is (it needs nothing beyond libc, libm and libgcc_s).
pub fn install_provisioner(root: &mut Tree, exe: &std::path::Path) -> Result<()> {
    let md = std::fs::metadata(exe).with_context(|| format!("the provisioner {}", exe.display()))?;
    if !md.is_file() {
        bail!("the provisioner {} is not a regular file", exe.display());
    }
    root.begin_layer();
    root.insert(
        PROVISIONER.as_bytes(),
        Meta::root(0o755),
        NodeKind::File { size: md.len(), content: Content::Host(exe.into()) },
    )
    .map_err(|p| anyhow!("writing /{PROVISIONER}: {p}"))?;
    Ok(())
}

/// Leaves nothing that must be unique to an instance: an empty machine-id (so systemd treats the
/// first boot as such), no SSH host keys, no random seed. Stamps `/etc/.updated` and
/// `/var/.updated` so the "needs update" units (ldconfig, catalog, sysusers) stay quiet.
pub fn prepare_first_boot(root: &mut Tree, clock: &BuildClock) -> Result<()> {
    root.begin_layer();
    root.put_file("etc/machine-id", 0o444, Vec::new())?;
    for path in ["var/lib/dbus/machine-id", "var/lib/systemd/random-seed", "var/lib/systemd/credential.secret"] {
        root.remove(path.as_bytes()).map_err(|p| anyhow!("removing {path}: {p}"))?;
    }
    if let Some(ssh) = root.lookup("etc/ssh") {
        let keys: Vec<Vec<u8>> =
            root.entries(ssh).filter(|(n, _)| n.starts_with(b"ssh_host_")).map(|(n, _)| n.to_vec()).collect();
        for k in keys {
            let mut p = b"etc/ssh/".to_vec();
            p.extend_from_slice(&k);
            root.remove(&p).map_err(|e| anyhow!("removing SSH host key: {e}"))?;
        }
    }
    let stamp = format!("# airlock\nTIMESTAMP_NSEC={}\n", i128::from(clock.epoch) * 1_000_000_000);
    root.put_file("etc/.updated", 0o644, stamp.clone())?;
    root.put_file("var/.updated", 0o644, stamp)?;
    Ok(())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_boot_slate_is_clean() {
        let mut t = Tree::new();
        t.put_file("etc/machine-id", 0o444, "0123456789abcdef\n").unwrap();
        t.put_file("etc/ssh/ssh_host_ed25519_key", 0o600, "secret").unwrap();
        t.put_file("etc/ssh/sshd_config", 0o644, "x").unwrap();
        t.put_file("var/lib/systemd/random-seed", 0o600, "seed").unwrap();
        prepare_first_boot(&mut t, &BuildClock::fixed(1_700_000_000)).unwrap();
        let id = t.lookup("etc/machine-id").unwrap();
        assert!(matches!(&t.node(id).kind, NodeKind::File { size: 0, .. }));
        assert!(t.lookup("etc/ssh/ssh_host_ed25519_key").is_none());
        assert!(t.lookup("etc/ssh/sshd_config").is_some());
        assert!(t.lookup("var/lib/systemd/random-seed").is_none());
        assert!(t.lookup("etc/.updated").is_some());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
