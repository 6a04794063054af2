//! VM test harness for airlock appliance images, in the spirit of the NixOS test driver.
//!
//! A test boots the raw image that `airlock build` wrote under qemu (q35, OVMF, virtio disk
//! on a throw-away qcow2 overlay, a user network that reaches nothing but the forwarded
//! ports) and drives it with verbs that take their verdict from inside the guest:
//!
//! ```no_run
//! use std::time::Duration;
//! use qemu_tests::{BOOT_TIMEOUT, Vm, VmConfig};
//!
//! # fn main() -> anyhow::Result<()> {
//! qemu_tests::init_logging();
//! // Built with `airlock build --test-overlay qemu-tests/guest ...`, which adds the
//! // command channel that `succeed` and friends use.
//! let mut vm = Vm::boot(VmConfig {
//!     forwards: vec![80],
//!     disk_size: Some(8 << 30),
//!     ..VmConfig::new("web", "out/web.raw")
//! })?;
//! vm.wait_for_unit("multi-user.target", BOOT_TIMEOUT)?;
//! vm.succeed("test -e /etc/airlock/release")?;
//! // restrict=on: the guest reaches nothing outside.
//! vm.fail("timeout 5 bash -c 'exec 3<>/dev/tcp/192.0.2.1/443'")?;
//! vm.wait_for_open_port(80, Duration::from_secs(60))?;
//! let url = format!("http://127.0.0.1:{}/", vm.host_port(80));
//! # let _ = url;
//!
//! vm.shutdown(Duration::from_secs(120))?;
//! // The overlay now holds every write of that boot, e.g. for e2fsck on a converted copy.
//! let _overlay = vm.overlay_path();
//! vm.boot_again()?;
//! vm.wait_for_console("Reached target Multi-User System", BOOT_TIMEOUT)?;
//! vm.reboot(Duration::from_secs(120))?; // later calls see the new boot
//! vm.crash()?; // power cut; Drop would kill qemu anyway
//! # Ok(())
//! # }
//! ```
//!
//! If the test panics, or any harness call returned an error (even one the test expected),
//! dropping the [`Vm`] prints the end of its serial log and qemu's stderr; set
//! `AIRLOCK_KEEP_VM_DIR=1` to also keep its directory (overlay, VARS, logs).
//! `AIRLOCK_ACCEL=kvm|tcg` skips the acceleration probe. Timeouts are sized for TCG on an idle
//! host; `AIRLOCK_VM_TIME_SCALE=N` multiplies them on a loaded one.
//!
//! The guest side of the command channel lives in `guest/` (see [`guest_overlay_dir`]); the
//! protocol is described in `src/backdoor.rs`.

mod accel;
mod backdoor;
pub mod command;
mod file_lock;
mod firmware;
mod machine;
mod overlay;
mod ports;
mod qemu_cmdline;
mod qemu_process;
mod qmp;
mod serial;
mod shell;
mod socket;
mod systemd_unit;
pub mod test_image;
pub mod usb_stick;
mod vm;

use std::path::PathBuf;

pub use accel::{Accel, FIRMWARE_BOOT_MANAGER, TcgThreads, probe_accel};
pub use machine::GuestReset;
pub use vm::{BOOT_TIMEOUT, COMMAND_TIMEOUT, StickAt, Vm, VmConfig};

/// The overlay that adds the command channel to a test image:
/// `airlock build --test-overlay <this> ...`. Production images must never get it.
pub fn guest_overlay_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/guest"))
}

/// Sends this crate's logs (argv of every program run, guest commands, accelerator choice)
/// to the test output at `info` level unless `RUST_LOG` says otherwise. Safe to call from
/// every test.
pub fn init_logging() {
    let _ =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).is_test(true).try_init();
}
