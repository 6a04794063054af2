//! `airlock install`: the appliance, booted from a removable drive (the stick it was flashed
//! to), installs itself onto an internal disk when the site's `airlock.toml` has
//! `[install] disk = ...` (`airlock_common::site::Install`). Run early at every boot by
//! `airlock-install.service`, before provisioning: without an `[install]` table, or booted
//! from a disk that is not removable (an installed system carries the stick's `airlock.toml`),
//! it does nothing and the appliance starts as always.
//!
//! What is written, in an order in which a power cut at any point leaves the stick as it was
//! and the target unbootable until the very end (the next boot from the stick installs again):
//!
//! 1. the target's old partition tables and the first bytes of where its ESP goes are zeroed;
//! 2. the new partition table: the stick's layout (the image's), the data partition grown to
//!    the end of the target, new unique GUIDs for the disk, its ESP and its empty slots (so
//!    the boot loader's `LoaderDevicePartUUID` names one disk: see `BOOT_DISK_LINKS`);
//! 3. each root slot that holds a version, copied, then checked by the kernel: dm-verity is
//!    opened on the target's partitions with the slot's root hash (the running one's is the
//!    signed `roothash=`) and every block is read back through it;
//! 4. the data partition, made afresh from the image's first content in the verified root
//!    (`/usr/share/factory/var`, `mke2fs -d`) and checked with `e2fsck -fn`: the installed
//!    system's first boot is an ordinary first boot, whatever the stick went through;
//! 5. the ESP (the boot loader, the UKIs, the site's `airlock.toml`) copied with its first
//!    4 KiB (the FAT boot sector) held back, read back against the stick's bytes, and the boot
//!    sector written last: until then the target has no filesystem a firmware could boot
//!    from. The firmware finds the loader on the removable-media path (`\EFI\BOOT\BOOTX64.EFI`).

use airlock_common::command::Cmd;
use airlock_common::gpt::{self, GptLayout, PartitionEntry, types};
use airlock_common::partition::{self, EMPTY_SLOT_NAME, ESP_MANIFEST, FACTORY_DATA};
use airlock_common::site::{Install, InstallDisk, InstallThen};
use anyhow::{Context, Result, bail};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The bytes of the ESP written last: its FAT boot sector and what follows up to the backup
/// boot sector.
const ESP_HEAD: u64 = 4096;
/// What is zeroed at each end of the target before anything is written: the MBR and primary
/// GPT at the start, the backup GPT at the end (and any other table's signature there).
const TABLE_AREA: u64 = 1 << 20;
const CHUNK: usize = 4 << 20;

/// A whole disk as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The kernel's name (`sda`, `vda`, `nvme0n1`).
    pub name: String,
    pub size: u64,
    pub model: String,
    pub serial: String,
    /// The kernel calls it removable, or it hangs off a USB bus (a USB stick or disk).
    pub removable: bool,
}

impl Disk {
    pub fn dev(&self) -> PathBuf {
        PathBuf::from(format!("/dev/{}", self.name))
    }
}

impl fmt::Display for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/dev/{} ({}, {}", self.name, self.model, human(self.size))?;
        if !self.serial.is_empty() {
            write!(f, ", serial {}", self.serial)?;
        }
        f.write_str(")")
    }
}

/// A size as people read disk sizes: GiB with one decimal (MiB below 1 GiB).
pub fn human(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    match bytes >= 1 << 30 {
        true => format!("{:.1} GiB", bytes as f64 / GIB),
        false => format!("{} MiB", bytes >> 20),
    }
}

/// Kernel block devices that are not disks one installs onto.
const NOT_DISKS: &[&str] = &["loop", "ram", "zram", "dm-", "sr", "md", "nbd", "fd", "mtdblock"];

/// The whole disks under `sys_block` (`/sys/block`), sorted by name.
pub fn list_disks(sys_block: &Path) -> Result<Vec<Disk>> {
    let mut disks = Vec::new();
    let entries = std::fs::read_dir(sys_block).with_context(|| format!("listing {}", sys_block.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("listing {}", sys_block.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if NOT_DISKS.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dir = e.path();
        let attr = |rel: &str| std::fs::read_to_string(dir.join(rel)).map(|s| s.trim().to_string()).unwrap_or_default();
        let sectors: u64 = attr("size").parse().unwrap_or(0);
        if sectors == 0 {
            continue;
        }
        let device = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        let usb = device.components().any(|c| c.as_os_str().to_string_lossy().starts_with("usb"));
        let model = [attr("device/model"), attr("device/vendor")]
            .into_iter()
            .find(|s| !s.is_empty() && !s.starts_with("0x"))
            .unwrap_or_else(|| match name.starts_with("vd") {
                true => "virtio disk".to_string(),
                false => "no model".to_string(),
            });
        let serial = [attr("device/serial"), attr("serial"), attr("device/wwid")]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or_default();
        disks.push(Disk { name, size: sectors * 512, model, serial, removable: attr("removable") == "1" || usb });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
}

/// Why nothing was installed. Each is printed after `airlock: failed`.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NoCandidate { image_size: u64, disks: Vec<Disk> },
    SeveralCandidates { candidates: Vec<Disk> },
    NotADisk { path: PathBuf, why: String },
    IsTheSource { target: Disk },
    TooSmall { target: Disk, image_size: u64 },
    HoldsPartitions { target: Disk, contents: Vec<String> },
}

fn list(disks: &[Disk]) -> String {
    match disks.is_empty() {
        true => "none".to_string(),
        false => disks.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("; "),
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoCandidate { image_size, disks } => write!(
                f,
                "install.disk = \"auto\": no internal (non-removable) disk of at least {} (the image's size); disks: {}",
                human(*image_size),
                list(disks)
            ),
            Refusal::SeveralCandidates { candidates } => write!(
                f,
                "install.disk = \"auto\": more than one internal disk could be the target, name one under /dev/disk/by-id/: {}",
                list(candidates)
            ),
            Refusal::NotADisk { path, why } => write!(f, "install.disk: {}: {why}", path.display()),
            Refusal::IsTheSource { target } => {
                write!(f, "install.disk: {target} is the drive this appliance runs from, not a target")
            }
            Refusal::TooSmall { target, image_size } => {
                write!(f, "install.disk: {target} is smaller than the image ({})", human(*image_size))
            }
            Refusal::HoldsPartitions { target, contents } => write!(
                f,
                "install.disk: {target} is not empty, refusing to overwrite it without install.wipe = true; it holds: {}",
                contents.join("; ")
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// The target `install` names, among `disks`; `source` is the disk the appliance runs from.
pub fn choose(install: &Install, disks: &[Disk], source: &str, image_size: u64) -> Result<Disk, Refusal> {
    let target = match &install.disk {
        InstallDisk::Auto => {
            let candidates: Vec<Disk> =
                disks.iter().filter(|d| !d.removable && d.name != source && d.size >= image_size).cloned().collect();
            match candidates.len() {
                1 => candidates.into_iter().next().ok_or(Refusal::NoCandidate { image_size, disks: Vec::new() })?,
                0 => return Err(Refusal::NoCandidate { image_size, disks: disks.to_vec() }),
                _ => return Err(Refusal::SeveralCandidates { candidates }),
            }
        }
        InstallDisk::Path(path) => {
            let dev = std::fs::canonicalize(path)
                .map_err(|e| Refusal::NotADisk { path: path.clone(), why: format!("not found ({e})") })?;
            let name = dev.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            disks.iter().find(|d| d.name == name).cloned().ok_or_else(|| Refusal::NotADisk {
                path: path.clone(),
                why: format!("{} is not a whole disk (a partition, or not a disk at all)", dev.display()),
            })?
        }
    };
    if target.name == source {
        return Err(Refusal::IsTheSource { target });
    }
    if target.size < image_size {
        return Err(Refusal::TooSmall { target, image_size });
    }
    Ok(target)
}

/// What the target holds before the install.
#[derive(Debug, PartialEq, Eq)]
pub enum Holds {
    Nothing,
    /// An install of this very version that a power cut stopped (its ESP has no boot sector
    /// yet): installed again without `wipe`.
    Interrupted,
    /// Partitions, filesystems or tables: each described.
    Data(Vec<String>),
}

/// What is on `target`: its partitions (lsblk) and the signatures on the whole disk (wipefs);
/// an interrupted install of the running root (`running_root`: its partition UUID) is told apart.
fn holds(target: &Disk, running_root: &Uuid) -> Result<Holds> {
    let dev = target.dev();
    let parts = Cmd::new("lsblk")
        .args(["--raw", "--noheadings", "--bytes", "-o", "NAME,TYPE,SIZE,FSTYPE,PARTLABEL"])
        .arg(&dev)
        .output_text()?;
    let mut contents: Vec<String> = parts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(1) == Some(&"part")).then(|| {
                let size = f.get(2).and_then(|s| s.parse().ok()).map(human).unwrap_or_default();
                let mut d = format!("partition {} ({size}", f[0]);
                for (what, v) in [("filesystem", f.get(3)), ("name", f.get(4))] {
                    if let Some(v) = v.filter(|v| !v.is_empty()) {
                        d.push_str(&format!(", {what} {}", v.replace("\\x20", " ")));
                    }
                }
                d.push(')');
                d
            })
        })
        .collect();
    let signatures =
        Cmd::new("wipefs").args(["--no-act", "--noheadings", "--output", "TYPE,OFFSET"]).arg(&dev).output_text()?;
    contents.extend(signatures.lines().filter(|l| !l.trim().is_empty()).map(|l| {
        let mut f = l.split_whitespace();
        format!("a {} signature at byte {}", f.next().unwrap_or("?"), f.next().unwrap_or("?"))
    }));
    if contents.is_empty() {
        return Ok(Holds::Nothing);
    }
    let file = File::open(&dev).with_context(|| format!("opening {}", dev.display()))?;
    if let Ok(layout) = GptLayout::read(&file)
        && layout.partitions.iter().any(|p| p.guid == *running_root)
        && let Some(esp) = layout.partitions.iter().find(|p| p.type_guid == types::ESP)
    {
        let mut head = [0u8; 512];
        file.read_exact_at(&mut head, esp.start).with_context(|| format!("reading {}", dev.display()))?;
        if head[510..] != [0x55, 0xAA] {
            return Ok(Holds::Interrupted);
        }
    }
    Ok(Holds::Data(contents))
}

/// The image facts the install needs, from the ESP's manifest and the kernel's command line.
#[derive(Debug)]
pub struct Source {
    pub disk: Disk,
    /// The image's size: the least a target may have.
    pub image_size: u64,
    /// The running root hash (hex).
    pub root_hash: String,
    pub name: String,
    pub version: String,
}

#[derive(serde::Deserialize)]
struct ManifestFacts {
    appliance: ManifestAppliance,
    disk: ManifestDisk,
}
#[derive(serde::Deserialize)]
struct ManifestAppliance {
    name: String,
    version: String,
}
#[derive(serde::Deserialize)]
struct ManifestDisk {
    size: u64,
}

/// The disk holding the running system's ESP: the boot disk (udev's link, see
/// `partition::BOOT_DISK_LINKS`).
fn boot_disk_name() -> Result<String> {
    let esp = format!("{}/{}", partition::BOOT_DISK_LINKS, partition::Role::Esp.key());
    let dev = std::fs::canonicalize(&esp).with_context(|| format!("finding the boot disk's ESP ({esp})"))?;
    let disk = crate::update::whole_disk(&dev)?;
    Ok(disk.file_name().context("a device name")?.to_string_lossy().into_owned())
}

/// What happened, for the console.
#[derive(Debug)]
pub enum Outcome {
    /// No `[install]` table: the appliance runs.
    NotAsked,
    /// Booted from a disk that is not removable: an installed system; the appliance runs.
    Installed,
    /// Installed onto the target; `then` follows.
    Done { target: Disk, then: InstallThen, seconds: f64 },
}

/// `airlock install` at boot: reads `[install]` from the site's `airlock.toml` and, booted
/// from a removable drive, installs. A refusal is an error whose text says why (`Refusal`).
pub fn at_boot() -> Result<Outcome> {
    let esp = Path::new(partition::ESP_MOUNT);
    let file = esp.join(airlock_common::site::SITE_FILE);
    if !file.exists() {
        return Ok(Outcome::NotAsked);
    }
    let text =
        airlock_common::input_file::read_capped_text(&file, airlock_common::site::MAX_SITE_FILE, "site configuration")?;
    // A mistake elsewhere in the file is provisioning's to report; only [install] is read here.
    let install = match airlock_common::site::parse(&text, esp) {
        Ok(site) => site.install,
        Err(e) if text.contains("[install]") => return Err(e.context(format!("{}", file.display()))),
        Err(_) => None,
    };
    let Some(install) = install else { return Ok(Outcome::NotAsked) };
    // Every disk the firmware could see is known to the kernel before this runs; udev's links
    // to them may still be coming.
    Cmd::new("udevadm").args(["settle", "--timeout=60"]).run()?;
    let disks = list_disks(Path::new("/sys/block"))?;
    let source_name = boot_disk_name()?;
    let source_disk = disks.iter().find(|d| d.name == source_name).cloned().context("the boot disk in /sys/block")?;
    if !source_disk.removable {
        log::info!("booted from {source_disk}, an internal disk: [install] is for the stick, nothing to install");
        return Ok(Outcome::Installed);
    }
    let manifest_text = airlock_common::input_file::read_capped_text(&esp.join(ESP_MANIFEST), 16 << 20, "manifest")?;
    let facts: ManifestFacts =
        serde_json::from_str(&manifest_text).with_context(|| format!("{} on the ESP", ESP_MANIFEST))?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let root_hash = crate::update::root_hash_of(&cmdline)
        .context("the kernel's command line has no roothash=: only an image with a verified root installs")?;
    let source = Source {
        disk: source_disk,
        image_size: facts.disk.size,
        root_hash,
        name: facts.appliance.name,
        version: facts.appliance.version,
    };
    println!("airlock: installing {} {} from {} (airlock.toml: [install])", source.name, source.version, source.disk);
    let target = choose(&install, &disks, &source.disk.name, source.image_size)?;
    let (running_root, _) = crate::update::halves(&source.root_hash)?;
    match holds(&target, &running_root)? {
        Holds::Nothing => {}
        Holds::Interrupted => println!("airlock: {target} holds an install that did not finish: installing again"),
        Holds::Data(contents) if install.wipe => {
            println!("airlock: install.wipe = true: overwriting {target}, which holds: {}", contents.join("; "))
        }
        Holds::Data(contents) => return Err(Refusal::HoldsPartitions { target, contents }.into()),
    }
    let start = std::time::Instant::now();
    install_onto(&source, &target)?;
    Ok(Outcome::Done { target, then: install.then, seconds: start.elapsed().as_secs_f64() })
}

/// The target's layout: the source's partitions at the same places, the data partition grown
/// to the end of `target_size`, new GUIDs for the disk, the ESP and empty slots.
pub fn target_layout(
    source: &GptLayout,
    target_size: u64,
    fresh: &mut dyn FnMut() -> Result<Uuid>,
) -> Result<GptLayout> {
    let end = gpt::align_down(gpt::last_usable_end(target_size), gpt::ALIGN);
    let last = source.partitions.len().checked_sub(1).context("the source disk has no partitions")?;
    let mut partitions = Vec::new();
    for (i, p) in source.partitions.iter().enumerate() {
        let mut q = p.clone();
        if p.type_guid == types::ESP || p.name == EMPTY_SLOT_NAME {
            q.guid = fresh()?;
        }
        if p.type_guid == types::LINUX_VARIABLE_DATA {
            if i != last {
                bail!("the data partition is not the source disk's last partition");
            }
            if end <= p.start {
                bail!("the target ends before the data partition would start");
            }
            q.size = end - p.start;
        }
        partitions.push(q);
    }
    let layout = GptLayout { disk_size: target_size, disk_guid: fresh()?, partitions };
    layout.validate().context("the target's partition table")?;
    Ok(layout)
}

fn random_uuid() -> Result<Uuid> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("drawing random bytes: {e}"))?;
    Ok(uuid::Builder::from_random_bytes(bytes).into_uuid())
}

/// Writes the install (see the module's documentation for the order).
pub fn install_onto(source: &Source, target: &Disk) -> Result<()> {
    let src_dev = source.disk.dev();
    let dst_dev = target.dev();
    let src = File::open(&src_dev).with_context(|| format!("opening {}", src_dev.display()))?;
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dst_dev)
        .with_context(|| format!("opening {} for writing", dst_dev.display()))?;
    let layout =
        GptLayout::read(&src).with_context(|| format!("reading the partition table of {}", src_dev.display()))?;
    let new = target_layout(&layout, target.size, &mut random_uuid)?;
    let esp = new.partitions.iter().find(|p| p.type_guid == types::ESP).context("the image has no ESP")?;
    // 1. Old tables and the ESP's head: nothing on the target boots from here on.
    println!("airlock: writing {} onto {target}", source.version);
    let zeros = vec![0u8; TABLE_AREA as usize];
    dst.write_all_at(&zeros, 0).context("clearing the target's partition table")?;
    dst.write_all_at(&zeros, target.size - TABLE_AREA).context("clearing the target's backup partition table")?;
    dst.write_all_at(&zeros[..ESP_HEAD as usize], esp.start).context("clearing the target's ESP")?;
    dst.sync_all().context("syncing the target")?;
    // 2. The partition table, and the kernel's view of it.
    new.write(&dst).context("writing the target's partition table")?;
    dst.sync_all().context("syncing the target")?;
    reread_partitions(&dst_dev)?;
    // 3. The root slots that hold a version, checked through dm-verity.
    let slots = root_slots(&layout)?;
    if !slots.iter().any(|s| s.root_hash == source.root_hash) {
        bail!("the running root ({}) is in none of {}'s slots", source.root_hash, src_dev.display());
    }
    for slot in &slots {
        for part in [&slot.root, &slot.verity] {
            copy_range(&src, part.start, &dst, part.start, part.size)
                .with_context(|| format!("copying {} onto {}", part.name, dst_dev.display()))?;
        }
    }
    dst.sync_all().context("syncing the target")?;
    for slot in &slots {
        verify_slot(target, &new, slot)?;
        println!("airlock: {} checked against its root hash on {}", slot.root.name, dst_dev.display());
    }
    // 4. The data partition, from the image's first content.
    let (data_index, data) = new
        .partitions
        .iter()
        .enumerate()
        .find(|(_, p)| p.type_guid == types::LINUX_VARIABLE_DATA)
        .context("the image has no data partition")?;
    let data_dev = partition_dev(target, data_index + 1);
    make_data(&data_dev, data.size)?;
    // 5. The ESP, its boot sector last.
    let src_esp = layout.partitions.iter().find(|p| p.type_guid == types::ESP).context("the stick has no ESP")?;
    let mut head = vec![0u8; ESP_HEAD as usize];
    src.read_exact_at(&mut head, src_esp.start).with_context(|| format!("reading {}", src_dev.display()))?;
    if head[510..512] != [0x55, 0xAA] {
        bail!("the stick's ESP has no FAT boot sector");
    }
    // The stick's ESP is mounted (airlock.toml was read through /efi): the copy is of the
    // volume as a clean unmount leaves it.
    clear_fat_dirty(&mut head);
    let written = copy_range(&src, src_esp.start + ESP_HEAD, &dst, esp.start + ESP_HEAD, src_esp.size - ESP_HEAD)?;
    dst.sync_all().context("syncing the target")?;
    drop_cache(&dst, esp.start, esp.size)?;
    let back = crate::update::sha256_range(&dst, esp.start + ESP_HEAD, src_esp.size - ESP_HEAD)?;
    if back != written {
        bail!("{}'s ESP reads back differently from the stick's: the disk is failing", dst_dev.display());
    }
    dst.write_all_at(&head, esp.start).context("writing the ESP's boot sector")?;
    dst.sync_all().context("syncing the target")?;
    drop_cache(&dst, esp.start, ESP_HEAD)?;
    let mut back = vec![0u8; ESP_HEAD as usize];
    dst.read_exact_at(&mut back, esp.start).context("reading the ESP's boot sector back")?;
    if back != head {
        bail!("{}'s ESP boot sector reads back differently: the disk is failing", dst_dev.display());
    }
    Ok(())
}

/// Clears the "mounted, not cleanly unmounted" flag Linux sets in a FAT boot sector while the
/// volume is mounted (bit 0 of byte 65 on FAT32, 37 on FAT12/16; the backup boot sector keeps
/// it clear), so that `fsck.vfat` finds the copy clean.
pub fn clear_fat_dirty(boot_sector: &mut [u8]) {
    if boot_sector.len() < 90 {
        return;
    }
    let at = match &boot_sector[82..87] == b"FAT32" {
        true => 65,
        false => 37,
    };
    boot_sector[at] &= !1;
}

/// `/dev/<disk><n>` or `/dev/<disk>p<n>` (when the disk's name ends in a digit).
fn partition_dev(disk: &Disk, number: usize) -> PathBuf {
    let sep = if disk.name.ends_with(|c: char| c.is_ascii_digit()) { "p" } else { "" };
    PathBuf::from(format!("/dev/{}{sep}{number}", disk.name))
}

/// Tells the kernel the table changed and waits for udev's devices.
fn reread_partitions(dev: &Path) -> Result<()> {
    Cmd::new("partx")
        .args(["--update"])
        .arg(dev)
        .run()
        .or_else(|_| Cmd::new("blockdev").arg("--rereadpt").arg(dev).run())?;
    Cmd::new("udevadm").args(["settle", "--timeout=60"]).run()
}

/// A root slot that holds a version: its partitions and the root hash their UUIDs make.
#[derive(Debug, Clone)]
pub struct RootSlot {
    pub root: PartitionEntry,
    pub verity: PartitionEntry,
    pub root_hash: String,
}

/// The slots of `layout` that hold a version: each root partition not named `_empty`, with
/// the root-verity partition whose UUID completes its root hash.
pub fn root_slots(layout: &GptLayout) -> Result<Vec<RootSlot>> {
    let mut slots = Vec::new();
    for root in layout.partitions.iter().filter(|p| p.type_guid == types::LINUX_ROOT_X86_64) {
        if root.name == EMPTY_SLOT_NAME {
            continue;
        }
        let verity_name = format!("{}{}", root.name, partition::VERITY_SUFFIX);
        let verity = layout
            .partitions
            .iter()
            .find(|p| p.type_guid == types::LINUX_ROOT_X86_64_VERITY && p.name == verity_name)
            .with_context(|| format!("root partition {} has no {verity_name} partition", root.name))?;
        let root_hash = format!("{}{}", hex::encode(root.guid.as_bytes()), hex::encode(verity.guid.as_bytes()));
        slots.push(RootSlot { root: root.clone(), verity: verity.clone(), root_hash });
    }
    Ok(slots)
}

/// Copies `len` bytes; returns the SHA-256 of what was read.
fn copy_range(src: &File, from: u64, dst: &File, to: u64, len: u64) -> Result<String> {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from((len - at).min(CHUNK as u64)).unwrap_or(CHUNK);
        src.read_exact_at(&mut buf[..n], from + at).context("reading the stick")?;
        dst.write_all_at(&buf[..n], to + at).context("writing the target")?;
        hash.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hex::encode(hash.finalize()))
}

fn drop_cache(file: &File, start: u64, len: u64) -> Result<()> {
    rustix::fs::fadvise(file, start, std::num::NonZeroU64::new(len), rustix::fs::Advice::DontNeed)
        .context("dropping the target's cached pages")
}

/// Opens dm-verity on the target's copy of `slot` with its root hash and reads every block
/// through it: the kernel checks each against the hash tree, and the tree against the hash.
fn verify_slot(target: &Disk, layout: &GptLayout, slot: &RootSlot) -> Result<()> {
    let index = |p: &PartitionEntry| layout.partitions.iter().position(|q| q.guid == p.guid).map(|i| i + 1);
    let (Some(r), Some(v)) = (index(&slot.root), index(&slot.verity)) else {
        bail!("slot {} is not in the target's table", slot.root.name);
    };
    let (root_dev, verity_dev) = (partition_dev(target, r), partition_dev(target, v));
    let volume = "airlock-install-check";
    Cmd::new(VERITYSETUP).args(["attach", volume]).arg(&root_dev).arg(&verity_dev).arg(&slot.root_hash).run()?;
    let read = (|| -> Result<u64> {
        let mut mapped = File::open(format!("/dev/mapper/{volume}")).context("opening the verity device")?;
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = std::io::Read::read(&mut mapped, &mut buf).with_context(|| {
                format!("{} on {} does not match its root hash at byte {total}", slot.root.name, root_dev.display())
            })?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    })();
    let detached = Cmd::new(VERITYSETUP).args(["detach", volume]).run();
    let total = read?;
    detached?;
    log::info!("{}: {total} bytes read through dm-verity", slot.root.name);
    Ok(())
}

/// systemd's dm-verity helper (systemd-cryptsetup's package).
const VERITYSETUP: &str = "/usr/lib/systemd/systemd-veritysetup";

/// A fresh ext4 filesystem (label `data`) holding [`FACTORY_DATA`], as large as its partition.
fn make_data(dev: &Path, size: u64) -> Result<()> {
    println!("airlock: making the data partition ({}) from the image's first content", human(size));
    Cmd::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "data", "-m", "0", "-E", "nodiscard", "-d", FACTORY_DATA])
        .arg(dev)
        .run()
        .context("making the target's data partition")?;
    Cmd::new("e2fsck").args(["-fn"]).arg(dev).run().context("checking the target's data partition")
}

/// Prints the outcome on the console and carries out `then`.
pub fn finish(outcome: &Outcome) -> Result<()> {
    let Outcome::Done { target, then, seconds } = outcome else { return Ok(()) };
    let mut console = std::io::stdout();
    writeln!(
        console,
        "airlock: installed to /dev/{} ({}, {}) in {seconds:.0} s",
        target.name,
        target.model,
        human(target.size)
    )?;
    writeln!(console, "airlock: remove the stick; the appliance starts from /dev/{} ({})", target.name, then.as_str())?;
    console.flush()?;
    let verb = match then {
        InstallThen::Reboot => "reboot",
        InstallThen::Poweroff => "poweroff",
    };
    Cmd::new("systemctl").args([verb, "--no-block"]).run()
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_common::gpt::ALIGN;

    fn disk(name: &str, gib: u64, removable: bool) -> Disk {
        Disk {
            name: name.into(),
            size: gib << 30,
            model: "QEMU HARDDISK".into(),
            serial: format!("S{name}"),
            removable,
        }
    }

    fn install(disk: InstallDisk, wipe: bool) -> Install {
        Install { disk, then: InstallThen::Poweroff, wipe }
    }

    #[test]
    fn auto_picks_the_only_internal_disk_large_enough() {
        let disks = [disk("sda", 16, true), disk("vda", 8, false), disk("vdb", 2, false)];
        let t = choose(&install(InstallDisk::Auto, false), &disks, "sda", 4 << 30).unwrap();
        assert_eq!(t.name, "vda");
        assert_eq!(t.to_string(), "/dev/vda (QEMU HARDDISK, 8.0 GiB, serial Svda)");
    }

    #[test]
    fn auto_refuses_none_or_several_listing_the_disks() {
        let disks = [disk("sda", 16, true), disk("vdb", 2, false)];
        let e = choose(&install(InstallDisk::Auto, false), &disks, "sda", 4 << 30).unwrap_err();
        assert!(matches!(e, Refusal::NoCandidate { .. }));
        let text = e.to_string();
        assert!(
            text.contains("at least 4.0 GiB") && text.contains("/dev/vdb (QEMU HARDDISK, 2.0 GiB, serial Svdb)"),
            "{text}"
        );
        let disks = [disk("sda", 16, true), disk("vda", 8, false), disk("nvme0n1", 500, false)];
        let e = choose(&install(InstallDisk::Auto, false), &disks, "sda", 4 << 30).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("more than one") && text.contains("/dev/vda") && text.contains("/dev/nvme0n1"), "{text}");
        assert!(!text.contains("/dev/sda"), "the stick is no candidate: {text}");
    }

    #[test]
    fn a_named_disk_must_be_another_whole_disk_large_enough() {
        let dir = tempfile::tempdir().unwrap();
        let link = |name: &str, to: &str| {
            let p = dir.path().join(name);
            std::os::unix::fs::symlink(to, &p).unwrap();
            p
        };
        // canonicalize needs the target to exist: stand-ins for /dev/sda and /dev/vda.
        for dev in ["sda", "vda", "vda1"] {
            std::fs::write(dir.path().join(dev), b"").unwrap();
        }
        let disks = [disk("sda", 16, true), disk("vda", 2, false)];
        let e =
            choose(&install(InstallDisk::Path(link("usb-stick", "sda")), false), &disks, "sda", 1 << 30).unwrap_err();
        assert!(matches!(e, Refusal::IsTheSource { .. }), "{e}");
        let e = choose(&install(InstallDisk::Path(link("nvme", "vda")), false), &disks, "sda", 4 << 30).unwrap_err();
        assert_eq!(
            e.to_string(),
            "install.disk: /dev/vda (QEMU HARDDISK, 2.0 GiB, serial Svda) is smaller than the image (4.0 GiB)"
        );
        let e = choose(&install(InstallDisk::Path(link("part", "vda1")), false), &disks, "sda", 1 << 30).unwrap_err();
        assert!(e.to_string().contains("not a whole disk"), "{e}");
        let e =
            choose(&install(InstallDisk::Path(dir.path().join("absent")), false), &disks, "sda", 1 << 30).unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
        let t = choose(&install(InstallDisk::Path(link("ok", "vda")), false), &disks, "sda", 1 << 30).unwrap();
        assert_eq!(t.name, "vda");
    }

    fn part(name: &str, type_guid: Uuid, start: u64, size: u64, guid: u128) -> PartitionEntry {
        PartitionEntry { name: name.into(), type_guid, guid: Uuid::from_u128(guid), start, size }
    }

    fn stick() -> GptLayout {
        GptLayout {
            disk_size: 64 * ALIGN,
            disk_guid: Uuid::from_u128(100),
            partitions: vec![
                part("esp", types::ESP, ALIGN, 8 * ALIGN, 1),
                part("demo_0.1.0", types::LINUX_ROOT_X86_64, 9 * ALIGN, 16 * ALIGN, 2),
                part("demo_0.1.0_verity", types::LINUX_ROOT_X86_64_VERITY, 25 * ALIGN, ALIGN, 3),
                part(EMPTY_SLOT_NAME, types::LINUX_ROOT_X86_64, 26 * ALIGN, 16 * ALIGN, 4),
                part(EMPTY_SLOT_NAME, types::LINUX_ROOT_X86_64_VERITY, 42 * ALIGN, ALIGN, 5),
                part("data", types::LINUX_VARIABLE_DATA, 43 * ALIGN, 20 * ALIGN, 6),
            ],
        }
    }

    #[test]
    fn the_target_keeps_the_places_grows_data_and_gets_its_own_esp_and_disk_ids() {
        let mut n = 1000u128;
        let new = target_layout(&stick(), 256 * ALIGN, &mut || {
            n += 1;
            Ok(Uuid::from_u128(n))
        })
        .unwrap();
        let old = stick();
        for (a, b) in old.partitions.iter().zip(&new.partitions) {
            assert_eq!((a.start, &a.name, a.type_guid), (b.start, &b.name, b.type_guid));
        }
        assert_ne!(new.partitions[0].guid, old.partitions[0].guid, "the ESP's PARTUUID names one disk");
        assert_eq!(new.partitions[1].guid, old.partitions[1].guid, "the root's UUID is its hash's half");
        assert_eq!(new.partitions[2].guid, old.partitions[2].guid);
        assert_ne!(new.partitions[3].guid, old.partitions[3].guid);
        assert_eq!(new.partitions[5].guid, old.partitions[5].guid);
        assert_ne!(new.disk_guid, old.disk_guid);
        assert_eq!(new.partitions[5].end(), gpt::align_down(gpt::last_usable_end(256 * ALIGN), ALIGN));
        assert!(target_layout(&stick(), 40 * ALIGN, &mut || Ok(Uuid::from_u128(7))).is_err(), "too small");
    }

    #[test]
    fn slots_that_hold_a_version_give_their_root_hash() {
        let slots = root_slots(&stick()).unwrap();
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0].root.name, "demo_0.1.0");
        assert_eq!(slots[0].root_hash, format!("{:032x}{:032x}", 2, 3));
        let (a, b) = crate::update::halves(&slots[0].root_hash).unwrap();
        assert_eq!((a, b), (Uuid::from_u128(2), Uuid::from_u128(3)));
    }

    #[test]
    fn the_copied_fat_boot_sector_is_clean() {
        let mut fat32 = vec![0u8; 512];
        fat32[82..90].copy_from_slice(b"FAT32   ");
        fat32[65] = 0x01;
        fat32[37] = 0x01;
        clear_fat_dirty(&mut fat32);
        assert_eq!((fat32[65], fat32[37]), (0, 1), "FAT32's flag only");
        let mut fat16 = vec![0u8; 512];
        fat16[54..62].copy_from_slice(b"FAT16   ");
        fat16[37] = 0x03;
        clear_fat_dirty(&mut fat16);
        assert_eq!(fat16[37], 0x02);
    }

    #[test]
    fn disks_are_read_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |name: &str, files: &[(&str, &str)]| {
            for (rel, v) in files {
                let p = dir.path().join(name).join(rel);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, v).unwrap();
            }
        };
        mk("vda", &[("size", "16777216\n"), ("removable", "0\n"), ("device/vendor", "0x1af4\n"), ("serial", "\n")]);
        mk("sda", &[("size", "8388608\n"), ("removable", "1\n"), ("device/model", "QEMU HARDDISK   \n")]);
        mk("loop0", &[("size", "100\n")]);
        mk("sr0", &[("size", "0\n")]);
        let disks = list_disks(dir.path()).unwrap();
        assert_eq!(
            disks,
            [
                Disk {
                    name: "sda".into(),
                    size: 4 << 30,
                    model: "QEMU HARDDISK".into(),
                    serial: String::new(),
                    removable: true
                },
                Disk {
                    name: "vda".into(),
                    size: 8 << 30,
                    model: "virtio disk".into(),
                    serial: String::new(),
                    removable: false
                },
            ]
        );
        assert_eq!(partition_dev(&disks[1], 6), PathBuf::from("/dev/vda6"));
        let nvme = Disk { name: "nvme0n1".into(), ..disks[1].clone() };
        assert_eq!(partition_dev(&nvme, 2), PathBuf::from("/dev/nvme0n1p2"));
    }
}
