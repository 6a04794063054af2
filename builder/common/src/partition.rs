//! The partition table as data: every partition an airlock disk can hold, in disk order, and
//! everything anyone needs to know about it — its GPT type (UAPI Discoverable Partitions
//! Specification), its GPT name, how its unique GUID is made, its size rule, its filesystem and
//! how the booted system finds it.
//!
//! The builder's plan checks `[disk]` sizes against [`SizeRule`]s, the disk writer lays the
//! partitions out in [`TABLE`] order and formats each as its [`Filesystem`] says, fstab, the
//! kernel's `root=` and systemd-repart's configuration are generated from [`FoundBy`], [`Mount`]
//! and [`Definition::grows`], `airlock disk` offers the roles, and readers of an image (the
//! manifest; later the updater and the installer) recognise partitions with [`identify`].
//!
//! A new kind of partition (root verity, a second root slot) is a new [`Role`] and one more
//! [`Definition`] in [`TABLE`]; the compiler then points at every `match` that must learn it.

use crate::gpt::{PartitionEntry, types};
use crate::seed::Seed;
use crate::size::MIB;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// A root filesystem slot: the A/B update layout. An image ships with slot A written and slot B
/// empty; an update writes the slot that is not running. A slot is a place on the disk (the
/// first or second root partition), not a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

/// The longest GPT partition name (UTF-16 code units).
pub const GPT_NAME_MAX: usize = 36;
/// What a root-verity partition's GPT name adds to its root's.
pub const VERITY_SUFFIX: &str = "_verity";
/// The GPT name of a slot that holds nothing (systemd-sysupdate's marker of a free slot).
pub const EMPTY_SLOT_NAME: &str = "_empty";

/// `<name>_<version><suffix>`: a written root slot's GPT name (the Discoverable Partitions
/// Specification's suggested scheme, which systemd-sysupdate's `@v` patterns match).
pub fn versioned_name(name: &str, version: &str, suffix: &str) -> String {
    format!("{name}_{version}{suffix}")
}

/// The appliance a disk is built for: its root slots' GPT names carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageId {
    pub name: String,
    pub version: String,
}

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The EFI system partition: boot loader, kernel, site configuration.
    Esp,
    /// A root filesystem.
    Root(Slot),
    /// The dm-verity hash tree of the root filesystem of the same slot (images built with
    /// verity only).
    RootVerity(Slot),
    /// Everything the appliance writes; last on the disk so it can grow.
    Data,
}

/// Every partition in the order it has on the disk.
pub static TABLE: [&Definition; 6] = [&ESP, &ROOT_A, &ROOT_VERITY_A, &ROOT_B, &ROOT_VERITY_B, &DATA];

impl Role {
    /// Everything about this role's partition.
    pub fn definition(self) -> &'static Definition {
        match self {
            Role::Esp => &ESP,
            Role::Root(Slot::A) => &ROOT_A,
            Role::RootVerity(Slot::A) => &ROOT_VERITY_A,
            Role::Root(Slot::B) => &ROOT_B,
            Role::RootVerity(Slot::B) => &ROOT_VERITY_B,
            Role::Data => &DATA,
        }
    }

    /// Whether a disk has this partition: the root-verity partitions and slot B only with
    /// verity (an update is a verified root; a development image's writable root is not updated).
    pub fn present(self, verity: bool) -> bool {
        !matches!(self, Role::RootVerity(_) | Role::Root(Slot::B)) || verity
    }

    /// The slot of a root or root-verity partition.
    pub fn slot(self) -> Option<Slot> {
        match self {
            Role::Root(slot) | Role::RootVerity(slot) => Some(slot),
            Role::Esp | Role::Data => None,
        }
    }

    /// The stable name of the role (see [`Definition::key`]).
    pub fn key(self) -> &'static str {
        self.definition().key
    }

    /// Where the role's partition goes on the disk relative to the others (its index in
    /// [`TABLE`]).
    pub fn position(self) -> usize {
        TABLE.iter().position(|d| d.role == self).unwrap_or(TABLE.len())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        TABLE.iter().find(|d| d.key == s).map(|d| d.role).ok_or_else(|| {
            let keys: Vec<&str> = TABLE.iter().map(|d| d.key).collect();
            format!("`{s}` is not a partition role (one of: {})", keys.join(", "))
        })
    }
}

impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.key())
    }
}

impl<'de> serde::Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One partition kind.
#[derive(Debug)]
pub struct Definition {
    pub role: Role,
    /// Stable name: the seed purpose of its GUID (`partition:<key>`) and FAT volume id, the
    /// manifest's `role`, `airlock disk`'s report. Changing it changes every image.
    pub key: &'static str,
    /// The GPT partition type (Discoverable Partitions Specification), by which systemd and
    /// [`identify`] recognise it.
    pub type_guid: Uuid,
    /// The type's name in the specification.
    pub type_name: &'static str,
    pub name: GptName,
    pub guid: GuidRule,
    pub size: SizeRule,
    pub filesystem: Filesystem,
    pub found_by: FoundBy,
    /// Where the booted system mounts it, if anywhere.
    pub mount: Option<Mount>,
    /// systemd-repart's name for the type (`Type=` in `repart.d`) when the partition grows
    /// into the rest of the disk on first boot; only the last partition can.
    pub grows: Option<&'static str>,
}

/// The partition's GPT name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GptName {
    Fixed(&'static str),
    /// A written root slot: `<name>_<version><suffix>` ([`versioned_name`]); the role's key on
    /// a disk made for no appliance (`airlock disk`).
    Versioned(&'static str),
    /// A slot the image leaves empty: [`EMPTY_SLOT_NAME`].
    Empty,
}

/// How the partition's unique GUID (its PARTUUID) is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuidRule {
    /// From the build seed: `seed.uuid("partition:<key>")`, so the booted system's fstab and
    /// kernel command line can name it and two builds agree.
    Seeded,
    /// With verity, a half of the root hash (Discoverable Partitions Specification: the root's
    /// UUID is its first 128 bits, the root-verity partition's its last), so systemd finds both
    /// from `roothash=` alone; without verity (root only), [`GuidRule::Seeded`]. The disk writer
    /// sets it once the hash tree is written.
    RootHash(HashHalf),
}

/// Which half of the root hash a partition's UUID is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashHalf {
    First,
    Last,
}

/// How big the partition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRule {
    /// The key of the spec's `[disk]` table that sets it (empty for
    /// [`SizeDefault::HashTreeOfRoot`]: no spec sets a hash tree's size).
    pub spec_key: &'static str,
    pub default: SizeDefault,
    /// The least the plan accepts (a filesystem may need more: FAT32 does).
    pub minimum: u64,
}

/// A partition's size when the spec does not set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeDefault {
    /// The spec must set it.
    Required,
    Bytes(u64),
    /// What the other partitions leave (at most one partition of a disk).
    Rest,
    /// As much as the dm-verity hash tree of the same slot's root partition needs.
    HashTreeOfRoot,
    /// As large as slot A's partition of the same kind: an update for one slot fits the other.
    SlotA,
}

/// The filesystem the builder writes into the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    Fat32 {
        label: &'static str,
    },
    Ext4 {
        label: &'static str,
        reserved_percent: u8,
    },
    /// No filesystem: a dm-verity hash tree (`veritysetup format`'s layout).
    VerityHashTree,
}

impl Filesystem {
    /// The type fstab and mount(8) call it.
    pub fn mount_type(self) -> &'static str {
        match self {
            Filesystem::Fat32 { .. } => "vfat",
            Filesystem::Ext4 { .. } => "ext4",
            Filesystem::VerityHashTree => "none",
        }
    }
}

/// How the booted system finds the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundBy {
    /// The kernel mounts it as `/` from `root=PARTUUID=<guid>` on its command line; fstab then
    /// names it too, for its mount options and fsck.
    KernelRoot,
    /// Its fstab line names it (systemd-fstab-generator mounts it): by PARTUUID on an image
    /// without verity, by the boot disk's link ([`BOOT_DISK_LINKS`]`/<key>`) with it.
    Fstab,
    /// systemd's veritysetup generator finds it from `roothash=` (its UUID is the hash's last
    /// half) and opens the root through it; nothing mounts it.
    RootHash,
}

/// Where the ESP is mounted on the appliance.
pub const ESP_MOUNT: &str = "/efi";
/// Where udev links the partitions of the disk the boot loader started from (the rule is the
/// builder's `61-airlock-boot-disk.rules`, in the initrd and the root): `by-partuuid/<uuid>`
/// for each, and `<key>` for the partitions whose type is unique on the disk (ESP, data). A
/// stick and the disk it installed carry the same partition UUIDs (the root's are its hash);
/// these links name the boot disk's alone, where `/dev/disk/by-partuuid` names whichever disk
/// udev saw last.
pub const BOOT_DISK_LINKS: &str = "/dev/disk/airlock";
/// The data partition's first content kept in the verified root (the builder copies it there;
/// `airlock install` makes an installed disk's data partition from it).
pub const FACTORY_DATA: &str = "/usr/share/factory/var";
/// The image's own manifest on its ESP (the builder writes it; `inspect` and `airlock install`
/// read it).
pub const ESP_MANIFEST: &str = "airlock/manifest.json";

/// The boot disk's link to the partition with `uuid` (see [`BOOT_DISK_LINKS`]).
pub fn boot_disk_partuuid_link(uuid: &Uuid) -> String {
    format!("{BOOT_DISK_LINKS}/by-partuuid/{uuid}")
}

/// Where the data partition is mounted on the appliance: all of `/var`, so everything Debian
/// and the appliance write at run time is on it and the root can be read-only.
pub const DATA_MOUNT: &str = "/var";
/// The appliance's own state on the data partition (secrets, TLS, SSH host keys, provisioning
/// records, podman's storage, the stack's data).
pub const STATE_DIR: &str = "/var/lib/airlock";

/// Where and how the partition is mounted (one fstab line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mount {
    pub path: &'static str,
    /// The mount point directory's mode in the root filesystem.
    pub mode: u32,
    pub options: &'static str,
    /// fsck's pass (fstab's sixth field): 1 for the root, 2 for others checked, 0 for none.
    pub pass: u8,
    /// Mounted on first access (`x-systemd.automount`) rather than during boot.
    pub on_access: bool,
}

pub static ESP: Definition = Definition {
    role: Role::Esp,
    key: "esp",
    type_guid: types::ESP,
    type_name: "EFI System",
    name: GptName::Fixed("esp"),
    guid: GuidRule::Seeded,
    size: SizeRule { spec_key: "esp_size", default: SizeDefault::Bytes(256 * MIB), minimum: 0 },
    filesystem: Filesystem::Fat32 { label: "ESP" },
    found_by: FoundBy::Fstab,
    // Mounted only when something reads it (first boot's site configuration), and readable by
    // root alone: it holds the site's keys.
    mount: Some(Mount {
        path: ESP_MOUNT,
        mode: 0o700,
        options: "noauto,x-systemd.automount,umask=0077",
        pass: 0,
        on_access: true,
    }),
    grows: None,
};

pub static ROOT_A: Definition = Definition {
    role: Role::Root(Slot::A),
    key: "root-x86-64",
    type_guid: types::LINUX_ROOT_X86_64,
    type_name: "Linux root x86-64",
    name: GptName::Versioned(""),
    guid: GuidRule::RootHash(HashHalf::First),
    size: SizeRule { spec_key: "root_size", default: SizeDefault::Rest, minimum: 256 * MIB },
    filesystem: Filesystem::Ext4 { label: "root", reserved_percent: 5 },
    found_by: FoundBy::KernelRoot,
    mount: Some(Mount { path: "/", mode: 0o755, options: "defaults", pass: 1, on_access: false }),
    grows: None,
};

pub static ROOT_VERITY_A: Definition = Definition {
    role: Role::RootVerity(Slot::A),
    key: "root-x86-64-verity",
    type_guid: types::LINUX_ROOT_X86_64_VERITY,
    type_name: "Linux root verity x86-64",
    name: GptName::Versioned(VERITY_SUFFIX),
    guid: GuidRule::RootHash(HashHalf::Last),
    size: SizeRule { spec_key: "", default: SizeDefault::HashTreeOfRoot, minimum: 0 },
    filesystem: Filesystem::VerityHashTree,
    found_by: FoundBy::RootHash,
    mount: None,
    grows: None,
};

/// Slot B's root: empty in a new image, written by an update while slot A runs. Found, once
/// written, by its UUID (the root hash's first half) like slot A's; nothing mounts it otherwise.
pub static ROOT_B: Definition = Definition {
    role: Role::Root(Slot::B),
    key: "root-x86-64-b",
    type_guid: types::LINUX_ROOT_X86_64,
    type_name: "Linux root x86-64",
    name: GptName::Empty,
    guid: GuidRule::RootHash(HashHalf::First),
    size: SizeRule { spec_key: "", default: SizeDefault::SlotA, minimum: 0 },
    filesystem: Filesystem::Ext4 { label: "root", reserved_percent: 5 },
    found_by: FoundBy::RootHash,
    mount: None,
    grows: None,
};

pub static ROOT_VERITY_B: Definition = Definition {
    role: Role::RootVerity(Slot::B),
    key: "root-x86-64-verity-b",
    type_guid: types::LINUX_ROOT_X86_64_VERITY,
    type_name: "Linux root verity x86-64",
    name: GptName::Empty,
    guid: GuidRule::RootHash(HashHalf::Last),
    size: SizeRule { spec_key: "", default: SizeDefault::SlotA, minimum: 0 },
    filesystem: Filesystem::VerityHashTree,
    found_by: FoundBy::RootHash,
    mount: None,
    grows: None,
};

pub static DATA: Definition = Definition {
    role: Role::Data,
    key: "data",
    type_guid: types::LINUX_VARIABLE_DATA,
    type_name: "Linux variable data",
    name: GptName::Fixed("data"),
    guid: GuidRule::Seeded,
    // 32 MiB: the least the ext4 writer and first boot's growth are happy with.
    size: SizeRule { spec_key: "data_size", default: SizeDefault::Required, minimum: 32 * MIB },
    filesystem: Filesystem::Ext4 { label: "data", reserved_percent: 0 },
    found_by: FoundBy::Fstab,
    // data=journal: file data goes through the journal in the order it was written, so after a
    // power cut the filesystem is as it was at some moment, data included. With the default
    // (data=ordered and delayed allocation) a program that records "done" without fsyncing what
    // it wrote — podman extracting a pulled layer — can come back with the record and empty
    // files (found by the power-cut test). Mounted in the initrd (x-initrd.mount), so PID 1
    // finds the instance's machine-id on it when it starts; its filesystem grows after
    // systemd-repart grows the partition (systemd-growfs@var.service, enabled by the build).
    mount: Some(Mount {
        path: DATA_MOUNT,
        mode: 0o755,
        options: "defaults,data=journal,x-initrd.mount",
        pass: 2,
        on_access: false,
    }),
    grows: Some("var"),
};

impl Definition {
    /// The GPT partition name on a disk made for `image` (`None`: for no appliance).
    pub fn gpt_name(&self, image: Option<&ImageId>) -> String {
        match (self.name, image) {
            (GptName::Fixed(name), _) => name.to_string(),
            (GptName::Versioned(suffix), Some(i)) => versioned_name(&i.name, &i.version, suffix),
            (GptName::Versioned(_), None) => self.key.to_string(),
            (GptName::Empty, _) => EMPTY_SLOT_NAME.to_string(),
        }
    }

    /// The partition's unique GUID for a build seed; for [`GuidRule::RootHash`], what it is
    /// until the hash is known (and without verity).
    pub fn partition_guid(&self, seed: &Seed) -> Uuid {
        seed.uuid(&format!("partition:{}", self.key))
    }

    /// The mount point, for roles the booted system mounts.
    pub fn mount_path(&self) -> Option<&'static str> {
        self.mount.map(|m| m.path)
    }
}

/// The role of each partition of a table read from a disk (`None` for a partition airlock
/// does not make): by type GUID, the n-th partition of a type taking the n-th role of that type
/// in [`TABLE`] order (so a second root partition would be slot B).
pub fn identify(partitions: &[PartitionEntry]) -> Vec<Option<Role>> {
    let mut seen: Vec<Uuid> = Vec::new();
    partitions
        .iter()
        .map(|p| {
            let nth = seen.iter().filter(|t| **t == p.type_guid).count();
            seen.push(p.type_guid);
            TABLE.iter().filter(|d| d.type_guid == p.type_guid).nth(nth).map(|d| d.role)
        })
        .collect()
}

/// The partition of `role` in a table read from a disk.
pub fn find(partitions: &[PartitionEntry], role: Role) -> Option<&PartitionEntry> {
    partitions.iter().zip(identify(partitions)).find(|(_, r)| *r == Some(role)).map(|(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: [Role; 6] = [
        Role::Esp,
        Role::Root(Slot::A),
        Role::RootVerity(Slot::A),
        Role::Root(Slot::B),
        Role::RootVerity(Slot::B),
        Role::Data,
    ];

    #[test]
    fn every_role_has_one_definition_in_the_table() {
        assert_eq!(TABLE.len(), ROLES.len());
        for role in ROLES {
            assert_eq!(role.definition().role, role, "{role:?}");
            assert_eq!(TABLE.iter().filter(|d| d.role == role).count(), 1, "{role:?}");
            assert_eq!(role.key().parse::<Role>(), Ok(role));
        }
        let err = "swap".parse::<Role>().unwrap_err();
        assert!(
            err.contains("esp, root-x86-64, root-x86-64-verity, root-x86-64-b, root-x86-64-verity-b, data"),
            "{err}"
        );
    }

    /// Written partitions have names of their own; the empty slot's two partitions share
    /// `_empty`, told apart by type.
    #[test]
    fn keys_and_gpt_names_are_unique_and_fit() {
        let image = ImageId { name: "pulumi-selfhosted".into(), version: "2026.12.6".into() };
        for (i, a) in TABLE.iter().enumerate() {
            for id in [None, Some(&image)] {
                assert!(a.gpt_name(id).encode_utf16().count() <= GPT_NAME_MAX, "{}", a.key);
            }
            for b in &TABLE[..i] {
                assert_ne!(a.key, b.key);
                if a.name != GptName::Empty || b.name != GptName::Empty {
                    assert_ne!(a.gpt_name(Some(&image)), b.gpt_name(Some(&image)), "{} {}", a.key, b.key);
                } else {
                    assert_ne!(a.type_guid, b.type_guid);
                }
            }
        }
        assert_eq!(ROOT_A.gpt_name(Some(&image)), "pulumi-selfhosted_2026.12.6");
        assert_eq!(ROOT_VERITY_A.gpt_name(Some(&image)), "pulumi-selfhosted_2026.12.6_verity");
        assert_eq!(ROOT_B.gpt_name(Some(&image)), "_empty");
        assert_eq!(ROOT_A.gpt_name(None), "root-x86-64");
    }

    #[test]
    fn slot_b_mirrors_slot_a() {
        for (a, b) in [(&ROOT_A, &ROOT_B), (&ROOT_VERITY_A, &ROOT_VERITY_B)] {
            assert_eq!((a.type_guid, a.guid, a.filesystem), (b.type_guid, b.guid, b.filesystem));
            assert_eq!(b.size.default, SizeDefault::SlotA);
            assert_eq!(b.mount, None, "nothing mounts slot B but its root hash");
        }
        assert!(!Role::Root(Slot::B).present(false) && Role::Root(Slot::B).present(true));
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Role::RootVerity(Slot::B).slot(), Some(Slot::B));
    }

    /// The disk's order is the table's: the ESP first (firmware finds it anywhere, people look
    /// there first), data last (the only partition that grows, and only the last one can).
    #[test]
    fn disk_order_puts_the_growing_partition_last() {
        let keys: Vec<&str> = TABLE.iter().map(|d| d.key).collect();
        assert_eq!(keys, ["esp", "root-x86-64", "root-x86-64-verity", "root-x86-64-b", "root-x86-64-verity-b", "data"]);
        let growing: Vec<usize> = TABLE.iter().enumerate().filter(|(_, d)| d.grows.is_some()).map(|(i, _)| i).collect();
        assert_eq!(growing, [TABLE.len() - 1]);
        assert_eq!(Role::Data.position(), 5);
    }

    #[test]
    fn at_most_one_partition_takes_the_rest() {
        assert_eq!(TABLE.iter().filter(|d| d.size.default == SizeDefault::Rest).count(), 1);
    }

    /// The PARTUUIDs the VM tests and booted images rely on (`partition:root-x86-64`): images of
    /// earlier versions must keep theirs.
    #[test]
    fn partition_guids_come_from_the_seed_by_key() {
        let seed = Seed::new("demo-0.1.0");
        for d in TABLE {
            assert_eq!(d.partition_guid(&seed), seed.uuid(&format!("partition:{}", d.key)));
        }
        assert_ne!(ESP.partition_guid(&seed), DATA.partition_guid(&seed));
    }

    #[test]
    fn mounts_are_consistent() {
        let roots: Vec<&Definition> = TABLE.iter().filter(|d| d.found_by == FoundBy::KernelRoot).copied().collect();
        assert_eq!(roots.len(), 1, "exactly one partition is the kernel's root");
        assert_eq!(roots[0].mount_path(), Some("/"));
        for d in TABLE {
            if let Some(m) = d.mount {
                assert!(m.path.starts_with('/'), "{}", d.key);
                assert_eq!(m.on_access, m.options.contains("x-systemd.automount"), "{}", d.key);
                assert_eq!(m.pass == 1, m.path == "/", "{}: fsck pass 1 is the root's", d.key);
            }
        }
    }

    fn entry(type_guid: Uuid, n: u128) -> PartitionEntry {
        PartitionEntry { name: String::new(), type_guid, guid: Uuid::from_u128(n), start: 0, size: 0 }
    }

    #[test]
    fn partitions_read_from_a_disk_are_recognised_by_type() {
        let table = [
            entry(types::ESP, 1),
            entry(types::LINUX_ROOT_X86_64, 2),
            entry(types::LINUX_FILESYSTEM, 3),
            entry(types::LINUX_VARIABLE_DATA, 4),
            entry(types::LINUX_ROOT_X86_64, 5),
        ];
        // The second root partition is slot B's, wherever it is; a third has no role.
        let mut with_third = table.to_vec();
        with_third.push(entry(types::LINUX_ROOT_X86_64, 6));
        assert_eq!(
            identify(&with_third),
            [Some(Role::Esp), Some(Role::Root(Slot::A)), None, Some(Role::Data), Some(Role::Root(Slot::B)), None]
        );
        assert_eq!(find(&table, Role::Data).map(|p| p.guid), Some(Uuid::from_u128(4)));
        assert_eq!(find(&table[..1], Role::Data), None);
    }

    #[test]
    fn roles_serialise_as_their_keys() {
        let json = serde_json::to_string(&[Role::Esp, Role::Root(Slot::A)]).unwrap();
        assert_eq!(json, r#"["esp","root-x86-64"]"#);
        let back: Vec<Role> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, [Role::Esp, Role::Root(Slot::A)]);
        assert!(serde_json::from_str::<Role>(r#""boot""#).is_err());
    }
}
