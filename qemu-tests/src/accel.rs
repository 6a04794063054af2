//! Choosing between KVM and TCG by booting the firmware once, never by trusting /dev/kvm.
//!
//! Under nested virtualization /dev/kvm can exist and open fine while every guest dies:
//! qemu prints `KVM internal error` and hangs, or aborts on a failed MSR write. So the probe
//! boots OVMF alone under KVM and only believes KVM works if the firmware reaches its boot
//! manager (`BdsDxe` on the serial port).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::command;
use crate::firmware::Firmware;
use crate::qemu_cmdline::QemuCmdline;
use crate::serial;

/// What OVMF prints on the serial port when its boot manager starts.
pub const FIRMWARE_BOOT_MANAGER: &str = "BdsDxe";

/// Working KVM reaches the boot manager in a few seconds; TCG needs about as many.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// How qemu executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization, with the host's CPU model.
    Kvm,
    /// qemu's emulator, with its most capable CPU model.
    Tcg,
}

/// Under TCG, how qemu maps the guest's vCPUs onto host threads (ignored under KVM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcgThreads {
    /// One host thread per vCPU (qemu's default for x86 guests on x86 hosts).
    Multi,
    /// One host thread runs every vCPU in turn.
    Single,
}

impl Accel {
    /// `-accel` and `-cpu` for qemu.
    pub fn qemu_args(self, threads: TcgThreads) -> [&'static str; 4] {
        match (self, threads) {
            (Accel::Kvm, _) => ["-accel", "kvm", "-cpu", "host"],
            (Accel::Tcg, TcgThreads::Multi) => ["-accel", "tcg,thread=multi", "-cpu", "max"],
            (Accel::Tcg, TcgThreads::Single) => ["-accel", "tcg,thread=single", "-cpu", "max"],
        }
    }

    fn from_name(name: &str) -> Option<Accel> {
        match name {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// The accelerator for this process's VMs: `AIRLOCK_ACCEL=kvm|tcg` if set, otherwise the
/// result of a KVM test boot. Decided once per process and logged.
pub fn probe_accel() -> Accel {
    static CHOSEN: OnceLock<Accel> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        if let Ok(name) = std::env::var("AIRLOCK_ACCEL") {
            match Accel::from_name(&name) {
                Some(accel) => {
                    log::info!("accelerator: {accel} (AIRLOCK_ACCEL)");
                    return accel;
                }
                None => log::warn!("ignoring AIRLOCK_ACCEL={name:?}: expected kvm or tcg"),
            }
        }
        let accel = match probe_kvm() {
            Ok(Verdict::Works) => Accel::Kvm,
            Ok(Verdict::Broken(reason)) => {
                log::info!("KVM is unusable here: {reason}");
                Accel::Tcg
            }
            Err(e) => {
                log::warn!("the KVM probe itself failed: {e:#}");
                Accel::Tcg
            }
        };
        log::info!("accelerator: {accel} (probed)");
        accel
    })
}

/// What the probe boot showed.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Works,
    Broken(String),
}

fn probe_kvm() -> Result<Verdict> {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return Ok(Verdict::Broken(format!("cannot open /dev/kvm: {e}")));
    }
    let firmware = Firmware::locate()?;
    let dir = tempfile::Builder::new()
        .prefix("airlock-kvm-probe-")
        .tempdir()
        .context("creating a directory for the KVM probe")?;
    let vars = dir.path().join("OVMF_VARS.fd");
    std::fs::copy(&firmware.vars_template, &vars)
        .with_context(|| format!("copying {} for the KVM probe", firmware.vars_template.display()))?;
    let serial_log = dir.path().join("serial.log");
    let qemu_log = dir.path().join("qemu.log");
    let cmdline = QemuCmdline {
        name: "airlock-kvm-probe".into(),
        accel: Accel::Kvm,
        tcg_threads: TcgThreads::Multi,
        memory_mib: 256,
        cpus: 1,
        firmware_code: firmware.code,
        secure_boot: false,
        firmware_vars: vars,
        disk: None,
        network: None,
        serial_log: serial_log.clone(),
        backdoor_socket: None,
        qmp_sockets: Vec::new(),
        usb: false,
        disk_bootindex: None,
        usb_stick: None,
        exit_on_reset: false,
    };
    let log = File::create(&qemu_log).with_context(|| format!("creating {}", qemu_log.display()))?;
    let mut child = command::spawn(&mut cmdline.command()?, log)?;

    let deadline = Instant::now() + PROBE_TIMEOUT;
    let verdict = loop {
        let exited = child.try_wait().context("polling the KVM probe's qemu")?;
        let serial = serial::read_from(&serial_log, 0)?;
        let stderr = String::from_utf8_lossy(&serial::read_from(&qemu_log, 0)?).into_owned();
        if let Some(verdict) = judge(&serial, &stderr, exited) {
            break verdict;
        }
        if Instant::now() >= deadline {
            break Verdict::Broken(format!(
                "the firmware printed no {FIRMWARE_BOOT_MANAGER:?} within {} s",
                PROBE_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The probe's qemu may hang forever (that is the failure being probed for), so kill it.
    if let Err(e) = child.kill() {
        log::debug!("killing the KVM probe's qemu: {e}");
    }
    child.wait().context("reaping the KVM probe's qemu")?;
    Ok(verdict)
}

/// Judges the probe from what it printed so far; `None` means "keep waiting".
fn judge(serial: &[u8], stderr: &str, exited: Option<ExitStatus>) -> Option<Verdict> {
    if let Some(line) = stderr.lines().find(|l| l.contains("KVM internal error")) {
        return Some(Verdict::Broken(format!("qemu said: {line}")));
    }
    if serial::find(serial, FIRMWARE_BOOT_MANAGER.as_bytes()).is_some() {
        return Some(Verdict::Works);
    }
    exited.map(|status| {
        Verdict::Broken(format!(
            "qemu exited with {status} before the firmware started:\n{}",
            command::tail_lines(stderr, 5)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn firmware_output_means_kvm_works() {
        let serial = b"\x1b[2JBdsDxe: loading Boot0001 \"EFI Internal Shell\"";
        assert_eq!(judge(serial, "", None), Some(Verdict::Works));
    }

    #[test]
    fn internal_error_means_broken_even_while_qemu_hangs() {
        let stderr = "KVM internal error. Suberror: 1\nemulation failure\nEAX=00000000\n";
        let verdict = judge(b"", stderr, None);
        assert!(matches!(&verdict, Some(Verdict::Broken(r)) if r.contains("KVM internal error")), "{verdict:?}");
    }

    /// What this machine's qemu 7.2 does under nested KVM: abort on an MSR write.
    #[test]
    fn an_early_exit_means_broken() {
        let stderr = "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n\
                      qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: \
                      Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n";
        let verdict = judge(b"", stderr, Some(ExitStatus::from_raw(134)));
        assert!(matches!(&verdict, Some(Verdict::Broken(r)) if r.contains("failed to set MSR")), "{verdict:?}");
    }

    #[test]
    fn silence_means_keep_waiting() {
        assert_eq!(judge(b"\x1b[2J", "", None), None);
    }

    #[test]
    fn accel_arguments() {
        assert_eq!(Accel::Kvm.qemu_args(TcgThreads::Single), ["-accel", "kvm", "-cpu", "host"]);
        assert_eq!(Accel::Tcg.qemu_args(TcgThreads::Multi), ["-accel", "tcg,thread=multi", "-cpu", "max"]);
        assert_eq!(Accel::Tcg.qemu_args(TcgThreads::Single), ["-accel", "tcg,thread=single", "-cpu", "max"]);
        assert_eq!(Accel::from_name("tcg"), Some(Accel::Tcg));
        assert_eq!(Accel::from_name("KVM"), None);
    }
}
