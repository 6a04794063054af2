//! Turning a Debian root filesystem into this appliance: identity files, mounts, the units that
//! make it ready, and the clean slate first boot needs. Everything here edits the tree; nothing
//! is extracted or run.

use crate::clock::BuildClock;
use crate::partition::{self, DATA_MOUNT, FoundBy, Mount, Role, STATE_DIR};
use crate::plan::BuildPlan;
use crate::seed::Seed;
use crate::tree::{Content, Meta, NodeKind, Tree};
use crate::units;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;

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
    // Offline updates (each skips itself on an image without a verified root).
    "airlock-update-boot.service",
    "airlock-boot-check.service",
    "airlock-update-bless.service",
    "airlock-update-deadline.timer",
    // Installing from a stick (skips itself on an image without a verified root).
    "airlock-install.service",
];

/// Home directories and where they live on the data partition (under `/var`).
pub const HOMES: [(&str, &str); 2] = [("root", "roothome"), ("home", "home")];

/// The data partition as built: the root filesystem's whole `/var` (the dpkg database, the
/// state directories packages made, the persistent journal's folder, the appliance's
/// `/var/lib/airlock` with the image's host name), moved out of the root, whose `/var` stays an
/// empty mount point. Everything the appliance writes is under `/var`, `/run` or tmpfs: the
/// root can be read-only (docs/ARCHITECTURE.md, "The state map").
pub fn data_tree(root: &mut Tree, clock: &BuildClock) -> Result<Tree> {
    let gid = crate::preload::account_ids(root, "etc/group", "systemd-journal", &[2])?
        .and_then(|ids| ids.first().copied())
        .context("no group systemd-journal in the root filesystem's /etc/group")?;
    let mut data = root.split_off(DATA_MOUNT.trim_start_matches('/')).context("moving /var to the data partition")?;
    // Home directories are written by whoever logs in (root's Pulumi CLI keeps its state and
    // plugins in ~/.pulumi): they move to the data partition too, linked from where they were,
    // as ostree and bootc systems have them.
    for (dir, on_data) in HOMES {
        if root.lookup(dir).is_none() {
            continue;
        }
        let home = root.split_off(dir).with_context(|| format!("moving /{dir} to the data partition"))?;
        data.graft(on_data, &home).with_context(|| format!("putting /{dir} on the data partition"))?;
        root.remove(dir.as_bytes()).map_err(|p| anyhow!("replacing /{dir} by a link: {p}"))?;
        root.put_symlink(dir, &format!("var/{on_data}"))?;
    }
    // The persistent journal (2755 root:systemd-journal, as tmpfiles.d makes it): journald
    // caps it (`overlay/etc/systemd/journald.conf.d/airlock.conf`), and it grows with the data
    // partition, never filling the root.
    let mut meta = Meta::root(0o2755);
    meta.gid = gid;
    meta.mtime = clock.epoch();
    data.insert(b"log/journal", meta, NodeKind::Directory { entries: BTreeMap::new() })
        .map_err(|p| anyhow!("creating log/journal on the data partition: {p}"))?;
    Ok(data)
}

/// Copies the data partition's first content into the root at
/// [`partition::FACTORY_DATA`]: `airlock install` makes an installed disk's data partition from
/// it (`mke2fs -d`), so the installed system starts from what the image had, whatever the stick
/// it came from went through.
pub fn keep_factory_data(root: &mut Tree, data: &Tree) -> Result<()> {
    if root.lookup("usr/share/factory").is_none() {
        root.put_dir("usr/share/factory", 0o755)?;
    }
    root.graft(partition::FACTORY_DATA.trim_start_matches('/'), data)
        .context("copying the data partition's first content to the root's factory folder")
}

/// Writes the appliance's identity, mounts and readiness wiring, and enables and masks units.
/// The updater's settings and the keys it trusts, in the verified root: `update.toml` (from
/// `[update]`) and one minisign `.pub` file per key, named by key id
/// (`UpdatePlan::trusted_keys`: the release key the image is signed with and `[update] keys`).
/// An unsigned image without extra keys trusts none and accepts no update.
pub fn install_update_keys(
    root: &mut Tree,
    keys: &[crate::signing::PublicKey],
    config: &airlock_common::update_config::UpdateConfig,
) -> Result<()> {
    let dir = airlock_common::bundle::TRUSTED_KEYS_DIR.trim_start_matches('/');
    root.put_dir(dir, 0o755)?;
    for key in keys {
        root.put_file(&format!("{dir}/{}.pub", key.key_id()), 0o644, key.to_file_text())?;
    }
    let settings = airlock_common::update_config::PATH.trim_start_matches('/');
    root.put_file(settings, 0o644, config.to_toml()?)?;
    root.put_file(
        &format!("{}/airlock-update-deadline.timer.d/deadline.conf", units::SYSTEM_UNIT_DIR),
        0o644,
        format!(
            "# Written by airlock from the spec's [update] deadline.\n[Timer]\nOnBootSec=\nOnBootSec={}s\n",
            config.deadline_seconds
        ),
    )?;
    Ok(())
}

pub fn configure_system(root: &mut Tree, plan: &BuildPlan) -> Result<()> {
    root.begin_layer();
    // The site may rename the host on any boot and the root is read-only: `/etc/hostname` and
    // `/etc/hosts` link to the appliance's state on the data partition, which starts with the
    // image's names (`airlock firstboot` rewrites them from airlock.toml).
    let short = plan.hostname.split('.').next().unwrap_or(&plan.hostname);
    let hosts = format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{} {short}\n::1\t\tlocalhost ip6-localhost ip6-loopback\n",
        plan.hostname
    );
    for (name, text) in [("hostname", format!("{}\n", plan.hostname)), ("hosts", hosts)] {
        let state = format!("{STATE_DIR}/etc/{name}");
        root.put_file(state.trim_start_matches('/'), 0o644, text)?;
        root.put_symlink(&format!("etc/{name}"), &format!("..{state}"))?;
    }
    root.put_file("etc/fstab", 0o644, fstab(plan.disk.roles(), &plan.disk_seed))?;
    root.put_file(BOOT_DISK_RULES, 0o644, boot_disk_rules(plan.disk.roles()))?;
    // The data partition grows on first boot (systemd-repart), and its filesystem after it: the
    // template orders itself after systemd-repart and binds to var.mount. Not through
    // `x-systemd.growfs`, which would also run in the initrd (which mounts /var, and has no
    // systemd-growfs).
    root.put_symlink(
        "etc/systemd/system/local-fs.target.wants/systemd-growfs@var.service",
        "/usr/lib/systemd/system/systemd-growfs@.service",
    )?;
    for (role, m) in mounts(plan.disk.roles()).filter(|(_, m)| m.path != "/") {
        root.put_dir(m.path.trim_start_matches('/'), m.mode)
            .with_context(|| format!("the {role} partition's mount point"))?;
    }
    for (path, text) in repart_files(plan.disk.roles()) {
        root.put_file(&path, 0o644, text)?;
    }
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

/// The partitions of `roles` that the booted system mounts, in fstab's order: the root first,
/// then the partitions mounted during boot, then those mounted on first access (each group in
/// disk order).
fn mounts(roles: impl Iterator<Item = Role>) -> impl Iterator<Item = (Role, Mount)> {
    let mut mounts: Vec<(Role, Mount)> = roles.filter_map(|r| r.definition().mount.map(|m| (r, m))).collect();
    mounts.sort_by_key(|(_, m)| (m.path != "/", m.on_access));
    mounts.into_iter()
}

/// `/etc/fstab`: every partition the table mounts, named by its seeded PARTUUID. Without verity
/// the root too, for its options and fsck, though the kernel mounts it from `root=`; with
/// verity the initrd opens it from `roothash=` (its PARTUUID is half the root hash, which this
/// file, inside the root, cannot know), read-only and never checked.
pub fn fstab(roles: impl Iterator<Item = Role> + Clone, seed: &Seed) -> String {
    let verity = roles.clone().any(|r| matches!(r, Role::RootVerity(_)));
    let mut text = String::from(match verity {
        true => {
            "# Written by airlock. Partitions are named by udev's links to the boot disk's own\n# (61-airlock-boot-disk.rules).\n# / is the dm-verity device the initrd opened from roothash= (read-only).\n"
        }
        false => "# Written by airlock. Partitions are named by their GPT PARTUUIDs.\n",
    });
    for (role, m) in mounts(roles) {
        let def = role.definition();
        if verity && def.found_by == FoundBy::KernelRoot {
            continue;
        }
        // With verity the image can be installed onto another disk of the same machine, which
        // then carries the same UUIDs: the boot disk's own partition, by udev's link.
        let what = match verity {
            true => format!("{}/{}", partition::BOOT_DISK_LINKS, role.key()),
            false => format!("PARTUUID={}", def.partition_guid(seed)),
        };
        text.push_str(&format!("{what} {} {} {} 0 {}\n", m.path, def.filesystem.mount_type(), m.options, m.pass));
    }
    text
}

/// Where the boot disk's rules go, in the root and in the initrd.
pub const BOOT_DISK_RULES: &str = "usr/lib/udev/rules.d/61-airlock-boot-disk.rules";

/// udev rules linking the partitions of the disk the boot loader started from under
/// [`partition::BOOT_DISK_LINKS`]: udev's blkid builtin marks the whole disk whose ESP has the
/// PARTUUID systemd-boot (or systemd-stub) left in `LoaderDevicePartUUID` by giving it
/// `ID_PART_GPT_AUTO_ROOT_UUID`, which 60-persistent-storage.rules hands down to its
/// partitions. Each then gets `by-partuuid/<uuid>`, and the partitions the table mounts whose
/// type is unique on the disk (ESP, data) `<key>`. Runs after 60-persistent-storage.rules.
pub fn boot_disk_rules(roles: impl Iterator<Item = Role> + Clone) -> String {
    let links = partition::BOOT_DISK_LINKS.trim_start_matches("/dev/");
    let mut text = format!(
        "# Written by airlock: links to the partitions of the disk the boot loader started from, under\n\
         # /dev/{links} (see docs/ARCHITECTURE.md, \"Installing\"). An installed disk and the stick\n\
         # it came from carry the same partition UUIDs; these links name the boot disk's alone.\n\
         SUBSYSTEM!=\"block\", GOTO=\"airlock_boot_disk_end\"\n\
         ACTION==\"remove\", GOTO=\"airlock_boot_disk_end\"\n\
         ENV{{DEVTYPE}}!=\"partition\", GOTO=\"airlock_boot_disk_end\"\n\
         ENV{{ID_PART_GPT_AUTO_ROOT_UUID}}!=\"?*\", GOTO=\"airlock_boot_disk_end\"\n\
         ENV{{ID_PART_ENTRY_UUID}}==\"?*\", SYMLINK+=\"{links}/by-partuuid/$env{{ID_PART_ENTRY_UUID}}\"\n"
    );
    for role in roles.filter(|r| r.definition().found_by == FoundBy::Fstab) {
        text.push_str(&format!(
            "ENV{{ID_PART_ENTRY_TYPE}}==\"{}\", SYMLINK+=\"{links}/{}\"\n",
            role.definition().type_guid,
            role.key()
        ));
    }
    text.push_str("LABEL=\"airlock_boot_disk_end\"\n");
    text
}

/// The files airlock adds to the distribution's initrd (a cpio archive appended to it): the
/// boot disk's rules, which the initrd needs to open the root and mount the data partition.
pub fn initrd_additions(roles: impl Iterator<Item = Role> + Clone, mtime: i64) -> Result<Vec<u8>> {
    let mut entries = Vec::new();
    let mut dir = String::new();
    let (parent, _) = BOOT_DISK_RULES.rsplit_once('/').context("a path")?;
    for part in parent.split('/') {
        if !dir.is_empty() {
            dir.push('/');
        }
        dir.push_str(part);
        entries.push(crate::cpio::Entry::Dir { path: dir.clone(), mode: 0o755 });
    }
    entries.push(crate::cpio::Entry::File {
        path: BOOT_DISK_RULES.into(),
        mode: 0o644,
        content: boot_disk_rules(roles).into_bytes(),
    });
    crate::cpio::archive(&entries, mtime)
}

/// The kernel command line's `root=`: the partition the table says the kernel mounts as `/`.
pub fn kernel_root(roles: impl Iterator<Item = Role>, seed: &Seed) -> Result<String> {
    let mut roots = roles.filter(|r| r.definition().found_by == FoundBy::KernelRoot);
    match (roots.next(), roots.next()) {
        (Some(r), None) => Ok(format!("root=PARTUUID={}", r.definition().partition_guid(seed))),
        (None, _) => bail!("the disk has no root partition for the kernel to mount"),
        (Some(a), Some(b)) => bail!("the kernel can mount one root partition, not both {a} and {b}"),
    }
}

/// systemd-repart's configuration (`/usr/lib/repart.d`) for each partition that grows into the
/// rest of the disk on first boot: repart matches it by type and grows it; its filesystem
/// follows (`systemd-growfs@var.service`).
fn repart_files(roles: impl Iterator<Item = Role>) -> Vec<(String, String)> {
    roles
        .filter_map(|role| role.definition().grows.map(|repart_type| (role, repart_type)))
        .map(|(role, repart_type)| {
            (
                format!("usr/lib/repart.d/50-airlock-{}.conf", role.key()),
                format!(
                    "# The {role} partition ({}) is the last one on the disk and grows into whatever\n\
                     # space the disk has on first boot: one image fits a 16 GB stick and a 500 GB VM disk alike.\n\
                     # The filesystem follows (systemd-growfs@var.service).\n\
                     [Partition]\nType={repart_type}\n",
                    role.definition().type_name
                ),
            )
        })
        .collect()
}

/// Where the appliance's own program (`airlock-appliance`: `airlock firstboot`, run by
/// `airlock-provision.service`) lives in the image: on `PATH`, as `airlock`.
pub const APPLIANCE_PROGRAM: &str = "usr/bin/airlock";

/// The ELF header fields of an x86-64 Linux executable: magic, 64-bit, little-endian, version 1.
const ELF_X86_64_IDENT: [u8; 7] = [0x7f, b'E', b'L', b'F', 2, 1, 1];
const ELF_MACHINE_X86_64: u16 = 62;

/// Installs the appliance's own program. The build host and the appliance are both Debian
/// amd64 and the appliance's glibc is the same or newer, so the binary runs there as it is (it
/// needs nothing beyond libc, libm and libgcc_s); anything but an x86-64 ELF executable is
/// refused here rather than at first boot.
pub fn install_appliance_program(root: &mut Tree, exe: &std::path::Path) -> Result<()> {
    let md = std::fs::metadata(exe).with_context(|| format!("the appliance program {}", exe.display()))?;
    if !md.is_file() {
        bail!("the appliance program {} is not a regular file", exe.display());
    }
    let mut header = [0u8; 20];
    std::io::Read::read_exact(
        &mut std::fs::File::open(exe).with_context(|| format!("opening {}", exe.display()))?,
        &mut header,
    )
    .with_context(|| format!("reading the ELF header of {}", exe.display()))?;
    if header[..7] != ELF_X86_64_IDENT || u16::from_le_bytes([header[18], header[19]]) != ELF_MACHINE_X86_64 {
        bail!("the appliance program {} is not an x86-64 Linux executable", exe.display());
    }
    root.begin_layer();
    root.insert(
        APPLIANCE_PROGRAM.as_bytes(),
        Meta::root(0o755),
        NodeKind::File { size: md.len(), content: Content::Host(exe.into()) },
    )
    .map_err(|p| anyhow!("writing /{APPLIANCE_PROGRAM}: {p}"))?;
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

    /// /var and the home folders leave the root for the data partition, keeping their
    /// contents and metadata; the root keeps an empty /var and links to the homes.
    #[test]
    fn var_and_homes_move_to_the_data_partition() {
        let mut root = Tree::new();
        root.put_file("etc/group", 0o644, "root:x:0:\nsystemd-journal:x:999:\n").unwrap();
        root.put_file("var/lib/dpkg/status", 0o644, "Package: x\n").unwrap();
        root.put_dir("var/log", 0o755).unwrap();
        root.put_file("root/.pulumi/plugins/p", 0o755, "plugin").unwrap();
        root.put_file("usr/bin/x", 0o755, "x").unwrap();
        let data = data_tree(&mut root, &BuildClock::fixed(1_700_000_000)).unwrap();
        assert_eq!(data.read_text("lib/dpkg/status").unwrap().as_deref(), Some("Package: x\n"));
        assert_eq!(data.read_text("roothome/.pulumi/plugins/p").unwrap().as_deref(), Some("plugin"));
        let journal = data.node(data.lookup("log/journal").unwrap());
        assert_eq!((journal.meta.mode, journal.meta.gid), (0o2755, 999));
        assert_eq!(root.entries(root.lookup("var").unwrap()).count(), 0, "the root's /var is empty");
        assert!(
            matches!(&root.node(root.lookup("root").unwrap()).kind, NodeKind::Symlink { target } if target == b"var/roothome")
        );
        assert!(root.lookup("home").is_none(), "no /home, no link");
        assert!(root.lookup("usr/bin/x").is_some());
    }

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

    /// fstab names each partition the table mounts by its seeded PARTUUID: the root first (not
    /// with verity: the initrd opens it from the root hash), /var (in the initrd too), the ESP
    /// (mounted on first access) last.
    #[test]
    fn fstab_comes_from_the_partition_table() {
        use crate::partition::Slot;
        let seed = Seed::new("demo-0.1.0");
        let roles = [Role::Esp, Role::Root(Slot::A), Role::Data];
        let id = |role: Role| role.definition().partition_guid(&seed);
        let data_and_esp = format!(
            "PARTUUID={} /var ext4 defaults,data=journal,x-initrd.mount 0 2\n\
             PARTUUID={} /efi vfat noauto,x-systemd.automount,umask=0077 0 0\n",
            id(Role::Data),
            id(Role::Esp)
        );
        let want = format!(
            "# Written by airlock. Partitions are named by their GPT PARTUUIDs.\n\
             PARTUUID={} / ext4 defaults 0 1\n{data_and_esp}",
            id(roles[1]),
        );
        assert_eq!(fstab(roles.into_iter(), &seed), want);
        assert_eq!(id(roles[1]), seed.uuid("partition:root-x86-64"));
        // With verity, the boot disk's own partitions, by udev's links (an installed disk and
        // its stick carry the same PARTUUIDs).
        let verity = [Role::Esp, Role::Root(Slot::A), Role::RootVerity(Slot::A), Role::Data];
        let want = "# Written by airlock. Partitions are named by udev's links to the boot disk's own\n\
                    # (61-airlock-boot-disk.rules).\n\
                    # / is the dm-verity device the initrd opened from roothash= (read-only).\n\
                    /dev/disk/airlock/data /var ext4 defaults,data=journal,x-initrd.mount 0 2\n\
                    /dev/disk/airlock/esp /efi vfat noauto,x-systemd.automount,umask=0077 0 0\n";
        assert_eq!(fstab(verity.into_iter(), &seed), want);
    }

    /// The boot disk's rules link every partition of the disk udev marked as the loader's by
    /// its PARTUUID, and the ESP and data partitions (the links fstab names) by their types.
    #[test]
    fn the_boot_disk_rules_name_what_fstab_and_the_command_line_use() {
        use crate::partition::Slot;
        let roles = [Role::Esp, Role::Root(Slot::A), Role::RootVerity(Slot::A), Role::Data];
        let rules = boot_disk_rules(roles.into_iter());
        assert!(rules.contains("ENV{ID_PART_GPT_AUTO_ROOT_UUID}!=\"?*\", GOTO=\"airlock_boot_disk_end\"\n"), "{rules}");
        assert!(rules.contains("SYMLINK+=\"disk/airlock/by-partuuid/$env{ID_PART_ENTRY_UUID}\""), "{rules}");
        assert!(
            rules.contains(
                "ENV{ID_PART_ENTRY_TYPE}==\"c12a7328-f81f-11d2-ba4b-00a0c93ec93b\", SYMLINK+=\"disk/airlock/esp\""
            ),
            "{rules}"
        );
        assert!(
            rules.contains(
                "ENV{ID_PART_ENTRY_TYPE}==\"4d21b016-b534-45c2-a9fb-5c16e091fd2d\", SYMLINK+=\"disk/airlock/data\""
            ),
            "{rules}"
        );
        assert_eq!(
            rules.matches("SYMLINK+=").count(),
            3,
            "the roots only by PARTUUID (two slots share a type): {rules}"
        );
        for line in fstab(roles.into_iter(), &Seed::new("x")).lines().filter(|l| !l.starts_with('#')) {
            let link = line.split(' ').next().unwrap().trim_start_matches("/dev/");
            assert!(rules.contains(&format!("SYMLINK+=\"{link}\"")), "fstab's {link} has no rule");
        }
        // The initrd's copy, as cpio lists it.
        let archive = initrd_additions(roles.into_iter(), 1_700_000_000).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-id", "--quiet", "--no-absolute-filenames"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("cpio is installed");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), &archive).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read_to_string(dir.path().join(BOOT_DISK_RULES)).unwrap(), rules);
    }

    #[test]
    fn the_kernel_mounts_the_tables_root() {
        let seed = Seed::new("demo-0.1.0");
        let roles = [Role::Esp, Role::Root(partition::Slot::A), Role::Data];
        assert_eq!(
            kernel_root(roles.into_iter(), &seed).unwrap(),
            format!("root=PARTUUID={}", seed.uuid("partition:root-x86-64"))
        );
        let err = kernel_root([Role::Esp, Role::Data].into_iter(), &seed).unwrap_err().to_string();
        assert!(err.contains("no root partition"), "{err}");
    }

    /// systemd-repart grows the data partition (the one the table says grows) and no other.
    #[test]
    fn repart_grows_the_growing_partition() {
        let files = repart_files([Role::Esp, Role::Root(partition::Slot::A), Role::Data].into_iter());
        assert_eq!(files.len(), 1);
        let (path, text) = &files[0];
        assert_eq!(path, "usr/lib/repart.d/50-airlock-data.conf");
        assert_eq!(
            text,
            "# The data partition (Linux variable data) is the last one on the disk and grows into whatever\n\
             # space the disk has on first boot: one image fits a 16 GB stick and a 500 GB VM disk alike.\n\
             # The filesystem follows (systemd-growfs@var.service).\n\
             [Partition]\nType=var\n"
        );
    }

    #[test]
    fn only_an_x86_64_executable_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("airlock-appliance");
        std::fs::write(&script, "#!/bin/sh\necho not a program for the appliance\n").unwrap();
        let err = install_appliance_program(&mut Tree::new(), &script).unwrap_err().to_string();
        assert!(err.contains("is not an x86-64 Linux executable"), "{err}");
        let missing = install_appliance_program(&mut Tree::new(), &dir.path().join("none")).unwrap_err();
        assert!(format!("{missing:#}").contains("the appliance program"), "{missing:#}");
        // This test's own executable is one (the builder only runs on x86-64 Linux hosts).
        let mut t = Tree::new();
        install_appliance_program(&mut t, &std::env::current_exe().unwrap()).unwrap();
        let id = t.lookup(APPLIANCE_PROGRAM).unwrap();
        assert_eq!(t.node(id).meta.mode, 0o755);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
