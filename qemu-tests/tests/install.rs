//! Installing from a USB stick onto the host's disk (`airlock install`, issue 18), in one test
//! so that its VMs run one after the other:
//!
//! 1. the demo image on a USB stick (`usb-storage`, first in the boot order) whose ESP's
//!    `airlock.toml` says `[install] disk = "auto"`, `then = "poweroff"` and a host name, next
//!    to a virtio disk that already holds a partition table: refused (`airlock: failed` and what
//!    the disk holds), and the disk's bytes unchanged (`qemu-img compare` against its image);
//! 2. the same stick next to an empty virtio disk: `airlock: installed to /dev/vda (...)`, the
//!    VM powers off, and the disk is judged from outside (`sgdisk -v`, `e2fsck -fn`,
//!    `fsck.vfat -n`; the ESP's PARTUUID its own, the root's the stick's);
//! 3. the stick pulled out, the virtio disk boots alone: `airlock: ready`, the host name from the
//!    stick's `airlock.toml`, the data partition (and its filesystem) filling the disk;
//! 4. the stick plugged in again but after the virtio disk in the boot order: both disks carry
//!    the same root partition UUIDs, and the installed system mounts its own root (through
//!    dm-verity), data partition and ESP, which the test shows.
#![allow(clippy::unwrap_used, reason = "a test stops at the first unexpected error")]

mod common;

use common::*;
use qemu_tests::{StickAt, Vm, VmConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The stick's boot to the install step, the install itself (copying and reading back the
/// root through dm-verity under TCG) and the power-off.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(1500);
/// A first boot of the installed system to `airlock: ready` under TCG.
const READY_TIMEOUT: Duration = Duration::from_secs(900);
/// The virtio disk the appliance installs onto: twice the demo image.
const TARGET_SIZE: u64 = 8 << 30;

const SITE: &str = "hostname = \"enclave-1\"\n\n[install]\ndisk = \"auto\"\nthen = \"poweroff\"\n";

/// A sparse copy of `image` with `text` as the ESP's `airlock.toml` (mtools).
fn stick_with_site(image: &Path, dir: &Path, text: &str) -> PathBuf {
    let stick = dir.join("stick.raw");
    host("cp", &["--sparse=always", image.to_str().unwrap(), stick.to_str().unwrap()]);
    let esp = partition(&stick, Role::Esp);
    let site = dir.join("airlock.toml");
    std::fs::write(&site, text).unwrap();
    let volume = format!("{}@@{}", stick.display(), esp.start);
    host("mcopy", &["-o", "-i", &volume, site.to_str().unwrap(), "::airlock.toml"]);
    assert_eq!(host("mtype", &["-i", &volume, "::airlock.toml"]), text);
    stick
}

/// An empty sparse file of `size` bytes.
fn empty_disk(path: &Path, size: u64) -> PathBuf {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
    path.to_path_buf()
}

/// What follows `needle` on the first console line holding it since the VM's last boot (a
/// unit's output reaches the console after journald's `[time] program[pid]: `).
fn console_line(vm: &Vm, needle: &str) -> String {
    let console = vm.console_since_boot();
    let line = console.lines().find(|l| l.contains(needle)).unwrap_or_default();
    line[line.find(needle).unwrap_or(0)..].trim().to_string()
}

#[test]
fn a_stick_installs_onto_the_hosts_disk_which_then_boots_as_itself() {
    qemu_tests::init_logging();
    let built = build_test_image("demo").expect("building the demo test image");
    let work = tempfile::Builder::new().prefix("airlock-install-").tempdir().unwrap();
    let stick = stick_with_site(&built.image, work.path(), SITE);
    let image_root = partition(&built.image, Role::Root(Slot::A));

    // 1. A disk that holds a partition table, no `wipe`: refused, untouched.
    let used = empty_disk(&work.path().join("used.raw"), TARGET_SIZE);
    host("sgdisk", &["-o", "-n", "1:1MiB:+64MiB", "-t", "1:8300", "-c", "1:site-data", used.to_str().unwrap()]);
    let mut vm = Vm::boot(VmConfig { usb_stick: Some(stick.clone()), ..VmConfig::new("install-refused", &used) })
        .expect("starting qemu");
    vm.wait_for_console("airlock: failed", INSTALL_TIMEOUT).expect("the stick refuses the disk");
    vm.wait_for_console("refusing to overwrite", Duration::from_secs(60)).expect("the console says why");
    let why = console_line(&vm, "install.disk: ");
    eprintln!("console: {why}");
    assert!(why.contains("install.disk: /dev/vda (virtio disk, 8.0 GiB"), "names the disk: {why}");
    assert!(why.contains("install.wipe = true"), "says how to overwrite it: {why}");
    assert!(why.contains("partition vda1 (64 MiB, name site-data)"), "lists what is on it: {why}");
    assert!(!vm.console_since_boot().contains("airlock: installed"), "nothing installed");
    // Nothing was written to the disk: its overlay reads the same as the image it was made from.
    let same = host("qemu-img", &["compare", "-U", used.to_str().unwrap(), vm.overlay_path().to_str().unwrap()]);
    assert!(same.contains("Images are identical"), "{same}");
    vm.crash().unwrap();

    // 2. An empty disk: installed, then the VM powers off.
    let empty = empty_disk(&work.path().join("empty.raw"), TARGET_SIZE);
    let mut vm = Vm::boot(VmConfig {
        usb_stick: Some(stick.clone()),
        command_timeout: READY_TIMEOUT,
        ..VmConfig::new("install", &empty)
    })
    .expect("starting qemu");
    vm.wait_for_console("airlock: installed to ", INSTALL_TIMEOUT).expect("the stick installs");
    let installed = console_line(&vm, "airlock: installed to ");
    eprintln!("console: {installed}");
    assert!(installed.starts_with("airlock: installed to /dev/vda (virtio disk, 8.0 GiB)"), "{installed}");
    let console = vm.console_since_boot();
    assert!(console.contains("checked against its root hash on /dev/vda"), "the root is read back through dm-verity");
    assert!(!console.contains("airlock: ready"), "the stick installs instead of running the appliance");
    vm.wait_power_off(Duration::from_secs(300)).expect("then = \"poweroff\"");

    // Judged from outside: the table, each filesystem, the identities.
    let disk = work.path().join("installed.raw");
    host("qemu-img", &["convert", "-O", "raw", vm.overlay_path().to_str().unwrap(), disk.to_str().unwrap()]);
    let verify = host("sgdisk", &["-v", disk.to_str().unwrap()]);
    assert!(verify.contains("No problems found"), "sgdisk -v: {verify}");
    let layout = airlock::gpt::GptLayout::read(&std::fs::File::open(&disk).unwrap()).unwrap();
    let stick_layout = airlock::gpt::GptLayout::read(&std::fs::File::open(&stick).unwrap()).unwrap();
    let find = |l: &airlock::gpt::GptLayout, role| airlock::partition::find(&l.partitions, role).unwrap().clone();
    let (esp, root, data) = (find(&layout, Role::Esp), find(&layout, Role::Root(Slot::A)), find(&layout, Role::Data));
    assert_eq!(root.guid, image_root.guid, "the root's PARTUUID is its root hash's half, on both disks");
    assert_ne!(esp.guid, find(&stick_layout, Role::Esp).guid, "the installed ESP has its own PARTUUID");
    assert_ne!(layout.disk_guid, stick_layout.disk_guid, "the installed disk has its own GUID");
    assert!(data.end() > TARGET_SIZE - (2 << 20), "the data partition ends at the disk's end: {data:?}");
    e2fsck_partitions(vm.overlay_path(), &[Role::Root(Slot::A), Role::Data]);
    let volume = format!("{}@@{}", disk.display(), esp.start);
    assert_eq!(host("mtype", &["-i", &volume, "::airlock.toml"]), SITE, "the stick's airlock.toml came along");
    let esp_copy = work.path().join("esp.img");
    host(
        "dd",
        &[
            &format!("if={}", disk.display()),
            &format!("of={}", esp_copy.display()),
            "bs=1M",
            &format!("skip={}", esp.start >> 20),
            &format!("count={}", esp.size >> 20),
            "status=none",
        ],
    );
    host("fsck.vfat", &["-n", esp_copy.to_str().unwrap()]);
    std::fs::remove_file(&disk).unwrap();
    std::fs::remove_file(&esp_copy).unwrap();

    // 3. The stick pulled out: the installed disk boots alone, an ordinary first boot.
    vm.place_stick(StickAt::Out).unwrap();
    vm.boot_again().unwrap();
    vm.wait_for_console("airlock: ready", READY_TIMEOUT).expect("the installed system becomes ready");
    assert_eq!(vm.succeed("hostname").unwrap().trim(), "enclave-1", "the site's host name from the stick");
    let sizes = vm.succeed("lsblk -bndo SIZE /dev/vda /dev/vda6; df -B1 --output=size /var | tail -1").unwrap();
    let sizes: Vec<u64> = sizes.split_whitespace().map(|n| n.parse().unwrap()).collect();
    eprintln!("disk {} bytes, data partition {}, /var {}", sizes[0], sizes[1], sizes[2]);
    assert_eq!(sizes[0], TARGET_SIZE);
    assert!(sizes[1] > TARGET_SIZE / 2, "the data partition fills the disk: {sizes:?}");
    assert!(sizes[2] > sizes[1] / 10 * 9, "and its filesystem fills the partition: {sizes:?}");
    let nothing = vm.succeed("journalctl -b -o cat -u airlock-install.service").unwrap();
    assert!(nothing.contains("an internal disk"), "the installed system installs nothing: {nothing}");

    // 4. The stick back in, after the disk in the boot order: the same UUIDs on both disks.
    vm.place_stick(StickAt::AfterDisk).unwrap();
    vm.reboot(Duration::from_secs(300)).unwrap();
    vm.wait_for_console("airlock: ready", READY_TIMEOUT).expect("the installed system boots with the stick in");
    let table = vm.succeed("ls /efi >/dev/null; lsblk -o NAME,PARTUUID,MOUNTPOINTS /dev/vda /dev/sda").unwrap();
    eprintln!("{table}");
    let root_uuid = root.guid.to_string();
    let owners = vm.succeed(&format!("lsblk -rno NAME,PARTUUID | awk '$2 == \"{root_uuid}\" {{print $1}}'")).unwrap();
    let mut owners: Vec<&str> = owners.split_whitespace().collect();
    owners.sort_unstable();
    assert_eq!(owners, ["sda2", "vda2"], "both disks carry the root's UUID");
    let mounted = vm
        .succeed(
            "ls /sys/class/block/$(basename $(readlink -f /dev/mapper/root))/slaves | sort; \
             findmnt -no SOURCE /var; findmnt -no SOURCE /efi | tail -1",
        )
        .unwrap();
    let mounted: Vec<&str> = mounted.split_whitespace().collect();
    assert_eq!(mounted, ["vda2", "vda3", "/dev/vda6", "/dev/vda1"], "root (dm-verity over), /var and /efi");
    let links = vm
        .succeed(&format!("readlink -f /dev/disk/by-partuuid/{root_uuid} /dev/disk/airlock/by-partuuid/{root_uuid}"))
        .unwrap();
    eprintln!("by-partuuid and the boot disk's link: {}", links.split_whitespace().collect::<Vec<_>>().join(" and "));
    assert_eq!(links.split_whitespace().nth(1), Some("/dev/vda2"), "the boot disk's link names the installed disk");
    vm.shutdown(Duration::from_secs(300)).unwrap();
}
