//! `airlock update`: offline A/B updates on the appliance.
//!
//! The disk has two root slots (`airlock_common::partition`, `Slot::A`/`Slot::B`), each a root
//! partition and its dm-verity hash tree. The running slot is the one whose root partition's
//! UUID is the first half of the running `roothash=`; the other is the target. `apply` checks
//! a bundle completely before it writes anything, then writes in an order in which a power cut
//! at any point leaves a disk that boots the running version:
//!
//! 1. the boot entries of whatever the target slot held are removed (nothing can boot a slot
//!    that is about to change);
//! 2. the target slot's partitions are named `_empty`;
//! 3. the root and hash tree are written into them, synced and read back against the signed
//!    digests;
//! 4. they get their names (`<name>_<version>`, `…_verity`) and the UUIDs the new root hash
//!    pins;
//! 5. the new UKI goes onto the ESP last, under a temporary name, synced, then renamed to
//!    `EFI/Linux/<name>_<version>+<tries>.efi`: systemd-boot boots the newest version first
//!    and counts its tries down; `airlock update bless` marks it good once it is ready
//!    (`boot-complete.target`; systemd-bless-boot's renames, see `boot_entries::mark`).
//!
//! Until step 5 completes nothing boots the target slot; after it, the new version boots and,
//! if it never becomes good, systemd-boot falls back to the running version's entry (which has
//! no counter: it is good).
//!
//! Why not systemd-sysupdate for the slot mechanics: it verifies sources only through a
//! GPG-signed `SHA256SUMS` next to loose files (the image would need gpg and its keyring, and
//! the bundle unpacked — a second full write of the root — before anything is checked), while
//! an airlock bundle is one file under one Ed25519 signature (the release key's); airlock's own
//! refusals (another appliance, an older version, a slot too small) come before any write and
//! say why; and the same code runs against an image file in the image tests. The layout stays
//! sysupdate's (`_empty`, `<name>_<version>` names, UAPI.10 versions, boot counting), so
//! either can manage it.

pub mod boot;
pub mod boot_entries;
pub mod state;
pub mod usb;

use airlock_common::bundle::{self, Bundle, Kind};
use airlock_common::gpt::{GptLayout, PartitionEntry, Relabel};
use airlock_common::partition::{self, EMPTY_SLOT_NAME, Role, Slot, VERITY_SUFFIX};
use airlock_common::signing::PublicKey;
use airlock_common::version::{self, Version};
use anyhow::{Context, Result, bail};
use boot_entries::BootEntry;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Where the updater works: the whole disk, the ESP, the trusted keys and the running root.
#[derive(Debug, Clone)]
pub struct Target {
    /// The whole disk (a block device, or an image file in tests).
    pub disk: PathBuf,
    /// The mounted ESP (holding `EFI/Linux`).
    pub esp: PathBuf,
    /// The folder of trusted public keys (`*.pub`).
    pub keys: PathBuf,
    /// The running root hash (hex), from the kernel's command line.
    pub root_hash: String,
}

impl Target {
    /// The running appliance: its `roothash=`, the disk its root partition is on, `/efi` and
    /// the keys in the verified root.
    pub fn system() -> Result<Target> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
        let root_hash = root_hash_of(&cmdline).context(
            "the kernel's command line has no roothash=: this appliance runs without a verified root, which is not updated",
        )?;
        let (uuid, _) = halves(&root_hash)?;
        let disk = disk_of_partition(&uuid)?;
        Ok(Target { disk, esp: partition::ESP_MOUNT.into(), keys: bundle::TRUSTED_KEYS_DIR.into(), root_hash })
    }
}

/// `roothash=`'s value on a kernel command line.
pub fn root_hash_of(cmdline: &str) -> Option<String> {
    cmdline.split_whitespace().find_map(|a| a.strip_prefix("roothash=")).map(str::to_string)
}

/// The UUIDs a root hash gives its root and root-verity partitions: its first and last 128 bits.
pub(crate) fn halves(root_hash: &str) -> Result<(Uuid, Uuid)> {
    let bytes = hex::decode(root_hash).ok().filter(|b| b.len() == 32).context("a root hash is 64 hex digits")?;
    Ok((Uuid::from_slice(&bytes[..16])?, Uuid::from_slice(&bytes[16..])?))
}

/// The whole disk holding the partition with this PARTUUID: through udev's links, or, early in
/// boot before udev has made it, through the verity device the initrd opened (`/dev/mapper/root`:
/// its underlying devices in sysfs are the root and hash partitions, both on the disk).
pub(crate) fn disk_of_partition(uuid: &Uuid) -> Result<PathBuf> {
    // The boot disk's own link first: a stick left in, or the disk it installed, carries
    // partitions with the same UUIDs, and by-partuuid names whichever udev saw last.
    let own = PathBuf::from(partition::boot_disk_partuuid_link(uuid));
    let link = match own.exists() {
        true => own,
        false => PathBuf::from(format!("/dev/disk/by-partuuid/{uuid}")),
    };
    let dev = match std::fs::canonicalize(&link) {
        Ok(dev) => dev,
        Err(e) => {
            let mapper = std::fs::canonicalize("/dev/mapper/root")
                .with_context(|| format!("finding the running root partition ({}: {e})", link.display()))?;
            let dm = mapper.file_name().and_then(|n| n.to_str()).context("a device name")?;
            let slaves = format!("/sys/class/block/{dm}/slaves");
            let mut under: Vec<String> = std::fs::read_dir(&slaves)
                .with_context(|| format!("listing {slaves}"))?
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect();
            under.sort();
            let first = under.first().with_context(|| format!("{slaves} is empty"))?;
            PathBuf::from(format!("/dev/{first}"))
        }
    };
    whole_disk(&dev)
}

/// The whole disk a partition's device node (`/dev/sda2`) is on (`/dev/sda`): a partition's
/// sysfs folder sits inside its disk's.
pub(crate) fn whole_disk(partition: &Path) -> Result<PathBuf> {
    let name = partition.file_name().and_then(|n| n.to_str()).context("a device name")?;
    let sys = std::fs::canonicalize(format!("/sys/class/block/{name}"))
        .with_context(|| format!("finding {name} in sysfs"))?;
    let parent = sys.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).context("the partition's disk")?;
    Ok(PathBuf::from(format!("/dev/{parent}")))
}

/// One root slot as the disk has it.
#[derive(Debug, Clone)]
pub struct SlotState {
    pub slot: Slot,
    /// The root partition's index in the table, and the root-verity partition's.
    pub root_index: usize,
    pub verity_index: usize,
    pub root: PartitionEntry,
    pub verity: PartitionEntry,
    /// `(name, version)` from the GPT name; `None` for `_empty` or a name that is not one.
    pub holds: Option<(String, String)>,
    pub running: bool,
}

/// Both slots and the boot entries.
#[derive(Debug, Clone)]
pub struct Status {
    pub slots: Vec<SlotState>,
    pub entries: Vec<BootEntry>,
}

impl Status {
    pub fn read(target: &Target) -> Result<Status> {
        let file = File::open(&target.disk).with_context(|| format!("opening {}", target.disk.display()))?;
        let layout = GptLayout::read(&file)
            .with_context(|| format!("reading the partition table of {}", target.disk.display()))?;
        let (running_uuid, _) = halves(&target.root_hash)?;
        let roles = partition::identify(&layout.partitions);
        let index = |role: Role| roles.iter().position(|r| *r == Some(role));
        let mut slots = Vec::new();
        for slot in [Slot::A, Slot::B] {
            let (Some(ri), Some(vi)) = (index(Role::Root(slot)), index(Role::RootVerity(slot))) else {
                bail!(
                    "{} has no slot {slot} (root and root-verity partitions): it was not built for updates",
                    target.disk.display()
                );
            };
            let root = layout.partitions[ri].clone();
            let verity = layout.partitions[vi].clone();
            let holds = split_name(&root.name);
            slots.push(SlotState {
                slot,
                root_index: ri,
                verity_index: vi,
                running: root.guid == running_uuid,
                root,
                verity,
                holds,
            });
        }
        if slots.iter().filter(|s| s.running).count() != 1 {
            bail!("neither root slot of {} is the running root (roothash={})", target.disk.display(), target.root_hash);
        }
        let entries = boot_entries::list(&target.esp.join("EFI/Linux"))?;
        Ok(Status { slots, entries })
    }

    pub fn running(&self) -> &SlotState {
        self.slots.iter().find(|s| s.running).unwrap_or(&self.slots[0])
    }

    pub fn other(&self) -> &SlotState {
        self.slots.iter().find(|s| !s.running).unwrap_or(&self.slots[1])
    }

    /// The boot entry of `(name, version)`, if the ESP has one.
    pub fn entry_of(&self, holds: &(String, String)) -> Option<&BootEntry> {
        self.entries.iter().find(|e| e.name == holds.0 && e.version == holds.1)
    }
}

/// `<name>_<version>` → `(name, version)`.
fn split_name(gpt_name: &str) -> Option<(String, String)> {
    if gpt_name == EMPTY_SLOT_NAME {
        return None;
    }
    let (name, version) = gpt_name.split_once('_')?;
    Version::parse(version).ok()?;
    Some((name.to_string(), version.to_string()))
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.slots {
            let what = match &s.holds {
                Some((n, v)) => format!("{n} {v}"),
                None => "empty".to_string(),
            };
            let boot = match s.holds.as_ref().and_then(|h| self.entry_of(h)) {
                Some(e) if s.running && matches!(e.state, boot_entries::EntryState::Bad { .. }) => {
                    format!("boot entry {} (on trial: its last try, or back after a downgrade failed)", e.file_name)
                }
                Some(e) if e.state == (boot_entries::EntryState::Bad { done: 0 }) => {
                    format!("boot entry {} (stepped back for a downgrade: boots if the other fails)", e.file_name)
                }
                Some(e) => format!("boot entry {} ({})", e.file_name, e.state),
                None if s.holds.is_some() => "no boot entry".to_string(),
                None => String::new(),
            };
            let running = if s.running { " (running)" } else { "" };
            writeln!(f, "slot {}: {what}{running}{}{boot}", s.slot, if boot.is_empty() { "" } else { ", " })?;
        }
        Ok(())
    }
}

/// The trusted keys: every `*.pub` file of `dir`.
pub fn trusted_keys(dir: &Path) -> Result<Vec<PublicKey>> {
    let mut keys = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    paths.sort();
    for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "pub")) {
        let text = airlock_common::input_file::read_capped_text(&path, 64 << 10, "public key")?;
        keys.push(PublicKey::from_file_text(&text).with_context(|| format!("reading {}", path.display()))?);
    }
    Ok(keys)
}

/// What `apply` is asked to do.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub allow_downgrade: bool,
    pub tries: u32,
}

/// What `apply` did.
#[derive(Debug)]
pub struct Applied {
    pub name: String,
    pub version: String,
    pub from: String,
    pub slot: Slot,
    pub entry: String,
    pub tries: u32,
    /// On a downgrade, the running version's entry as it now is (booted only if the older one
    /// fails).
    pub fell_back: Option<String>,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "staged {} {} in slot {} (boot entry {}): the next boot runs it; if it does not become ready in {} tries, \
             the appliance goes back to {}",
            self.name, self.version, self.slot, self.entry, self.tries, self.from
        )?;
        if let Some(e) = &self.fell_back {
            write!(f, " (a downgrade: {} {} waits as {e})", self.name, self.from)?;
        }
        Ok(())
    }
}

/// Checks the bundle at `path` completely, then writes it into the slot that is not running
/// and installs its boot entry with `tries` (see the module's documentation for the order).
/// Every refusal names its reason and comes before anything is written.
pub fn apply(target: &Target, path: &Path, opts: &ApplyOptions) -> Result<Applied> {
    let keys = trusted_keys(&target.keys)?;
    let b = Bundle::open(path, &keys).context("refused")?;
    let status = Status::read(target)?;
    let running = status.running().clone();
    let other = status.other().clone();
    let (name, from) = running.holds.clone().with_context(|| {
        format!("the running slot {} is named `{}`, not <name>_<version>", running.slot, running.root.name)
    })?;
    let h = &b.header;
    if h.appliance != name {
        bail!("refused: {} is an update for appliance `{}`, this appliance is `{name}`", path.display(), h.appliance);
    }
    let (new, old) =
        (Version::parse(&h.version).map_err(anyhow::Error::msg)?, Version::parse(&from).map_err(anyhow::Error::msg)?);
    if version::same(&new, &old) && !opts.allow_downgrade {
        bail!("refused: {} is {name} {}, the version this appliance runs", path.display(), h.version);
    }
    if new < old && !opts.allow_downgrade {
        bail!(
            "refused: {} is {name} {}, older than the running {from} (--allow-downgrade installs it, still only if signed)",
            path.display(),
            h.version
        );
    }
    if h.root_hash == target.root_hash {
        bail!("refused: {} holds the running root (root hash {})", path.display(), h.root_hash);
    }
    for (kind, part) in [(Kind::Root, &other.root), (Kind::Verity, &other.verity)] {
        let size = h.payload(kind).size;
        if size > part.size {
            bail!(
                "refused: the bundle's {kind} ({size} bytes) does not fit slot {}'s partition ({} bytes)",
                other.slot,
                part.size
            );
        }
    }
    let tries = opts.tries.clamp(1, 9);
    log::info!("checking every byte of {}", path.display());
    b.check_payloads(&mut |_| {}).context("refused")?;
    let uki = b.read_small(Kind::Uki).context("refused")?;
    let linux = target.esp.join("EFI/Linux");
    boot_entries::check_room(&linux, uki.len() as u64, &status.entries, other.holds.as_ref())?;

    // 1. Nothing may boot the target slot while it changes.
    boot_entries::remove_for(&linux, &status.entries, other.holds.as_ref().map(|h| (h.0.as_str(), h.1.as_str())))?;
    boot_entries::remove_for(&linux, &status.entries, Some((name.as_str(), h.version.as_str())))?;
    // 2. The slot is free.
    let disk = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&target.disk)
        .with_context(|| format!("opening {} for writing", target.disk.display()))?;
    GptLayout::relabel(
        &disk,
        &[
            Relabel { index: other.root_index, name: EMPTY_SLOT_NAME.into(), guid: other.root.guid },
            Relabel { index: other.verity_index, name: EMPTY_SLOT_NAME.into(), guid: other.verity.guid },
        ],
    )?;
    disk.sync_all().with_context(|| format!("syncing {}", target.disk.display()))?;
    // 3. Root and hash tree, checked as written and read back.
    for (kind, part) in [(Kind::Root, &other.root), (Kind::Verity, &other.verity)] {
        log::info!("writing the {kind} into slot {} ({})", other.slot, target.disk.display());
        write_payload(&b, kind, &disk, part)?;
    }
    disk.sync_all().with_context(|| format!("syncing {}", target.disk.display()))?;
    for (kind, part) in [(Kind::Root, &other.root), (Kind::Verity, &other.verity)] {
        let p = h.payload(kind);
        // From the disk, not from the page cache the write left behind.
        rustix::fs::fadvise(&disk, part.start, std::num::NonZeroU64::new(p.size), rustix::fs::Advice::DontNeed)
            .with_context(|| format!("dropping the cached pages of slot {}", other.slot))?;
        let back = sha256_range(&disk, part.start, p.size)?;
        if back != p.sha256 {
            bail!(
                "slot {}'s {kind} partition reads back differently from what was written: the disk is failing",
                other.slot
            );
        }
    }
    // 4. Names and the UUIDs the new root hash pins.
    let root_name = partition::versioned_name(&name, &h.version, "");
    let (root_uuid, verity_uuid) = halves(&h.root_hash)?;
    GptLayout::relabel(
        &disk,
        &[
            Relabel { index: other.root_index, name: root_name.clone(), guid: root_uuid },
            Relabel {
                index: other.verity_index,
                name: partition::versioned_name(&name, &h.version, VERITY_SUFFIX),
                guid: verity_uuid,
            },
        ],
    )?;
    disk.sync_all().with_context(|| format!("syncing {}", target.disk.display()))?;
    // 5. The boot entry, last.
    let entry = boot_entries::install(&linux, &root_name, tries, &uki)?;
    // 6. A downgrade: systemd-boot boots the newest version it may, so the running (newer)
    //    version's entry steps back to "no tries left": the older one boots first, and if it
    //    fails every try, the running one is the newest of the entries left and boots again
    //    (`boot::on_boot` then makes it good again). A power cut before this step leaves the
    //    running version first: the downgrade did not take, nothing is lost.
    let mut fell_back = None;
    if new < old
        && let Some(e) = status.entry_of(&(name.clone(), from.clone()))
    {
        fell_back = Some(boot_entries::step_back(&linux, e)?);
    }
    Ok(Applied { name, version: h.version.clone(), from, slot: other.slot, entry, tries, fell_back })
}

/// Decompresses the payload into the partition's range, never past it.
fn write_payload(b: &Bundle, kind: Kind, disk: &File, part: &PartitionEntry) -> Result<()> {
    let mut at = 0u64;
    // Not hashed here: the slot is read back from the disk against the signed digest.
    b.unpack_payload(kind, &mut |chunk| {
        let end = at + chunk.len() as u64;
        if end > part.size {
            bail!("the {kind} payload runs past its partition");
        }
        disk.write_all_at(chunk, part.start + at).context("writing the slot")?;
        at = end;
        Ok(())
    })?;
    Ok(())
}

pub(crate) fn sha256_range(file: &File, start: u64, len: u64) -> Result<String> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from((len - at).min(buf.len() as u64)).unwrap_or(buf.len());
        file.read_exact_at(&mut buf[..n], start + at).context("reading the slot back")?;
        hash.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hex::encode(hash.finalize()))
}

/// Flushes a file's data and its directory entry.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

/// Writes `bytes` to `dir/name` through airlock's partial files (created exclusively as
/// `.<name>.partial`, synced, renamed, the folder synced). Unlike `firstboot::store::write_atomic`
/// it sets no mode: the ESP's FAT refuses a chmod its mount options do not allow.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let partial = airlock_common::output_file::PartialFile::create(&dir.join(name))?;
    let mut f = partial.file();
    f.write_all(bytes).with_context(|| format!("writing {}", partial.partial_path().display()))?;
    partial.commit()?;
    Ok(())
}
