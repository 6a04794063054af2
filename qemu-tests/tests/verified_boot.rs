//! The boots the verified chain must stop, each short (no appliance comes up): the demo's
//! UKI changed by one byte on the ESP is refused by the Secure Boot firmware, so no kernel
//! starts; one byte flipped on the disk in a file the boot reads (systemd itself) stops the
//! boot, and the console names dm-verity as the cause. `boot.rs` boots the same image whole,
//! with a flipped byte in a file nothing reads.
#![allow(clippy::unwrap_used, reason = "a test stops at the first unexpected error")]

mod common;

use common::*;
use qemu_tests::{Vm, VmConfig};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

/// Firmware, enrollment and the refusal, or the initrd up to the switch to the root: no
/// appliance starts, so a few minutes under TCG are plenty.
const STOP_TIMEOUT: Duration = Duration::from_secs(400);

/// Where the UKI's bytes are in the image: its first 4 KiB found on a sector boundary of the
/// ESP, and checked again 2 MiB further (the FAT writer stores a file in one run of clusters).
fn uki_offset(image: &Path, uki: &[u8]) -> u64 {
    let esp = partition(image, Role::Esp);
    let file = std::fs::File::open(image).unwrap();
    let mut sector = vec![0u8; 4096];
    let mut at = esp.start;
    while at + 4096 <= esp.end() {
        file.read_exact_at(&mut sector, at).unwrap();
        if sector == uki[..4096] {
            let mut later = vec![0u8; 4096];
            file.read_exact_at(&mut later, at + (2 << 20)).unwrap();
            assert_eq!(later, uki[2 << 20..(2 << 20) + 4096], "the UKI is stored contiguously");
            return at;
        }
        at += 512;
    }
    panic!("the UKI's first bytes are nowhere on the ESP");
}

/// Prints the console lines that say what happened (the test's output shows the refusal).
fn show(console: &str, words: &[&str]) {
    for line in console.lines().filter(|l| words.iter().any(|w| l.contains(w))) {
        eprintln!("console: {}", line.trim());
    }
}

#[test]
fn a_changed_uki_is_refused_by_the_firmware() {
    qemu_tests::init_logging();
    let built = build_test_image("demo").expect("building the demo test image");
    let work = tempfile::Builder::new().prefix("airlock-verified-boot-").tempdir().unwrap();
    let uki = work.path().join("uki.efi");
    let esp = partition(&built.image, Role::Esp);
    let manifest: airlock::manifest::Manifest =
        serde_json::from_str(&std::fs::read_to_string(built.dir.join("manifest.json")).unwrap()).unwrap();
    let boot = manifest.boot.expect("the manifest records the boot chain");
    assert!(boot.secure_boot, "the demo test image is signed");
    let source = format!("{}@@{}", built.image.display(), esp.start);
    host("mcopy", &["-n", "-i", &source, &format!("::{}", boot.uki), uki.to_str().unwrap()]);
    let bytes = std::fs::read(&uki).unwrap();
    let disk = work.path().join("uki-changed.qcow2");
    // Inside the kernel's section, far from the headers: only the signature can tell.
    disk_with_flipped_byte(&built.image, &disk, uki_offset(&built.image, &bytes) + (2 << 20) + 123);

    let mut vm = Vm::boot(VmConfig { memory_mib: 1024, secure_boot: true, ..VmConfig::new("uki-changed", &disk) })
        .expect("starting qemu");
    // systemd-boot enrolls the owner's keys (and resets); then the firmware, now in user mode,
    // refuses the UKI whose Authenticode digest no longer matches its signature.
    vm.wait_for_console("Custom Secure Boot keys successfully enrolled", STOP_TIMEOUT)
        .expect("systemd-boot enrolls the keys");
    // systemd-boot asks the firmware to load the UKI; the firmware's image verification
    // (db) denies it, and systemd-boot says so.
    let refusal = format!("Error loading {}: Access denied", boot.uki.replace('/', "\\"));
    vm.wait_for_console(&refusal, STOP_TIMEOUT).expect("the firmware refuses the changed UKI");
    let console = vm.serial_log();
    assert!(!console.contains("EFI stub:") && !console.contains("Linux version"), "no kernel started:\n{console}");
    show(&console, &["Enrolling", "enrolled", "Access denied"]);
    vm.crash().unwrap();
}

#[test]
fn a_flipped_byte_in_what_the_boot_reads_stops_it_naming_verity() {
    qemu_tests::init_logging();
    let built = build_test_image("demo").expect("building the demo test image");
    let work = tempfile::Builder::new().prefix("airlock-verified-boot-").tempdir().unwrap();
    // The first block of systemd, which the initrd executes as the root's init.
    let disk = work.path().join("systemd-flipped.qcow2");
    disk_with_flipped_byte(&built.image, &disk, root_file_byte(&built.image, "/usr/lib/systemd/systemd", 64));

    let mut vm =
        Vm::boot(VmConfig { memory_mib: 1024, ..VmConfig::new("systemd-flipped", &disk) }).expect("starting qemu");
    vm.wait_for_console("is corrupted", STOP_TIMEOUT).expect("dm-verity reports the corrupted block");
    let console = vm.serial_log();
    let line = console.lines().find(|l| l.contains("is corrupted")).unwrap_or_default();
    assert!(line.contains("device-mapper: verity"), "the kernel names verity: {line}");
    vm.wait_for_console("Freezing execution", STOP_TIMEOUT).expect("the boot stops");
    let console = vm.serial_log();
    assert!(!console.contains("airlock: ready"), "the appliance never came up");
    show(&console, &["is corrupted", "Failed to execute", "Freezing"]);
    vm.crash().unwrap();
}
