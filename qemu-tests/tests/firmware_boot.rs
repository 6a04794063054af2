//! Boots the real qemu with OVMF and a blank disk (firmware only, no OS) to prove the
//! harness end to end without an appliance image: the accelerator probe, overlay creation,
//! starting and killing qemu, serial-log polling, QMP, `boot_again`, and the serial log
//! printed when a test fails. Needs qemu-system-x86, qemu-utils and ovmf.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use qemu_tests::{FIRMWARE_BOOT_MANAGER, Vm, VmConfig, init_logging, probe_accel};

/// The firmware reaches its boot manager in a few seconds, even under TCG.
const FIRMWARE_TIMEOUT: Duration = Duration::from_secs(60);

/// Set in the child process that `a_panicking_test_prints_the_serial_log` runs.
const PANIC_CHILD_ENV: &str = "QEMU_TESTS_PANIC_CHILD";

fn blank_image(dir: &Path) -> Result<PathBuf> {
    let image = dir.join("blank.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).context("writing a blank image")?;
    Ok(image)
}

fn firmware_vm(name: &str, image: &Path) -> VmConfig {
    VmConfig { memory_mib: 256, cpus: 1, forwards: vec![80], disk_size: Some(64 << 20), ..VmConfig::new(name, image) }
}

#[test]
fn firmware_boots_and_the_harness_controls_qemu() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let image = blank_image(dir.path())?;
    let mut vm = Vm::boot(firmware_vm("firmware", &image))?;
    eprintln!("accelerator: {}", vm.accel());

    vm.wait_for_console(FIRMWARE_BOOT_MANAGER, FIRMWARE_TIMEOUT)?;
    ensure!(vm.is_running());
    ensure!(vm.host_port(80) != 0);

    // The disk is a qcow2 overlay over the untouched image, enlarged as asked. qemu holds
    // a write lock on it, hence -U.
    let info = qemu_tests::command::run(
        Command::new("qemu-img").args(["info", "-U", "--output=json"]).arg(vm.overlay_path()),
    )?;
    ensure!(info.contains("\"virtual-size\": 67108864"), "{info}");
    ensure!(info.contains(image.to_str().context("UTF-8 temp path")?), "{info}");

    // Without an OS nothing handles the ACPI power button, so a clean shutdown cannot
    // succeed: this exercises QMP system_powerdown and the kill after the timeout.
    let err = vm.shutdown(Duration::from_secs(5)).expect_err("firmware alone cannot power off");
    ensure!(format!("{err:#}").contains("did not power off"), "{err:#}");
    ensure!(!vm.is_running());

    // Same overlay and VARS again; the console wait only looks at the new start.
    vm.boot_again()?;
    ensure!(vm.serial_log().contains("start 2 of vm firmware"));
    vm.wait_for_console(FIRMWARE_BOOT_MANAGER, FIRMWARE_TIMEOUT)?;
    ensure!(vm.console_since_boot().contains(FIRMWARE_BOOT_MANAGER));
    ensure!(vm.serial_log().matches(FIRMWARE_BOOT_MANAGER).count() >= 2);

    // A reset (what a guest reboot looks like) restarts the console: the text of the boot
    // before it no longer counts. By default the reset ends qemu and the harness starts the
    // next process on the same disk and variables.
    vm.reset()?;
    ensure!(!vm.console_since_boot().contains("start 2 of vm firmware"));
    ensure!(vm.serial_log().contains("after a reset (host-qmp-system-reset)"), "{}", vm.serial_log());
    ensure!(vm.is_running());
    vm.wait_for_console(FIRMWARE_BOOT_MANAGER, FIRMWARE_TIMEOUT)?;
    ensure!(vm.console_since_boot().contains(FIRMWARE_BOOT_MANAGER));

    vm.crash()?;
    ensure!(!vm.is_running());
    // Waiting on a dead VM fails at once instead of at the timeout.
    let err = vm.wait_for_console("never printed", Duration::from_secs(600)).expect_err("qemu is gone");
    ensure!(format!("{err:#}").contains("qemu"), "{err:#}");
    let err = vm.succeed("true").expect_err("qemu is gone");
    ensure!(format!("{err:#}").contains("qemu"), "{err:#}");

    ensure!(std::fs::read(&image)? == vec![0u8; 1 << 20], "the image was modified");
    Ok(())
}

/// Runs itself in a child process whose test panics while a VM is up, and checks that the
/// VM's drop printed the serial log.
#[test]
fn a_panicking_test_prints_the_serial_log() -> Result<()> {
    init_logging();
    if std::env::var_os(PANIC_CHILD_ENV).is_some() {
        let dir = tempfile::tempdir()?;
        let mut vm = Vm::boot(firmware_vm("doomed", &blank_image(dir.path())?))?;
        vm.wait_for_console(FIRMWARE_BOOT_MANAGER, FIRMWARE_TIMEOUT)?;
        panic!("deliberate panic with a VM up");
    }
    let out = Command::new(std::env::current_exe()?)
        .args(["--exact", "a_panicking_test_prints_the_serial_log", "--nocapture"])
        .env(PANIC_CHILD_ENV, "1")
        // The child needs no second probe.
        .env("AIRLOCK_ACCEL", probe_accel().to_string())
        .output()
        .context("running the panicking child test")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "the child test passed:\n{stderr}");
    ensure!(stderr.contains("deliberate panic with a VM up"), "{stderr}");
    ensure!(stderr.contains("===== vm doomed: last 80 lines of"), "{stderr}");
    let report = &stderr[stderr.find("===== vm doomed").unwrap_or(0)..];
    ensure!(report.contains(FIRMWARE_BOOT_MANAGER), "{stderr}");
    ensure!(report.contains("===== vm doomed: end ====="), "{stderr}");
    Ok(())
}
