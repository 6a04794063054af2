//! The qemu-system-x86_64 command line: one plain struct in, argv out.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::accel::{Accel, TcgThreads};

/// The program every VM runs.
pub const QEMU_SYSTEM: &str = "qemu-system-x86_64";

/// The virtio-serial port name the guest's `backdoor` script looks for.
pub const BACKDOOR_PORT_NAME: &str = "org.airlock.test.backdoor";

/// A `hostfwd` rule: 127.0.0.1:`host` on the host reaches `guest` in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    pub host: u16,
    pub guest: u16,
}

/// Everything that varies between qemu invocations.
#[derive(Debug, Clone)]
pub struct QemuCmdline {
    pub name: String,
    pub accel: Accel,
    pub tcg_threads: TcgThreads,
    pub memory_mib: u32,
    pub cpus: u32,
    /// OVMF code, mapped read-only.
    pub firmware_code: PathBuf,
    /// The firmware is OVMF's Secure Boot build: the machine gets SMM and a flash only SMM
    /// code may write (without them that firmware stops).
    pub secure_boot: bool,
    /// This VM's private, writable copy of the OVMF variable store.
    pub firmware_vars: PathBuf,
    /// The qcow2 overlay to boot from, as a virtio disk.
    pub disk: Option<PathBuf>,
    /// Adds a user-mode network that reaches nothing (`restrict=on`) but these forwards.
    pub network: Option<Vec<PortForward>>,
    /// The first serial port (the guest's ttyS0) is appended to this file.
    pub serial_log: PathBuf,
    /// Unix socket (qemu is the server) of the virtio-serial command channel.
    pub backdoor_socket: Option<PathBuf>,
    /// Unix sockets (qemu is the server) of QMP monitors.
    pub qmp_sockets: Vec<PathBuf>,
    /// A USB controller (`xhci`), for drives plugged in while the guest runs.
    pub usb: bool,
    /// The virtio disk's place in the firmware's boot order (`bootindex`), when it has one.
    pub disk_bootindex: Option<u32>,
    /// A USB stick on the USB controller (`usb-storage`): its qcow2 overlay and its place in
    /// the boot order.
    pub usb_stick: Option<(PathBuf, u32)>,
    /// A reset of the machine (by the guest, or QMP `system_reset`) ends qemu instead, with a
    /// `SHUTDOWN` event that gives the reset as its reason.
    pub exit_on_reset: bool,
}

impl QemuCmdline {
    /// The arguments after the program name.
    pub fn args(&self) -> Result<Vec<String>> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
        push(&["-name", &self.name.replace(',', ",,")]);
        if self.secure_boot {
            push(&["-machine", "q35,smm=on"]);
            push(&["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            // OVMF with SMM and S3 can hang on resume paths (edk2 before 098c5570).
            push(&["-global", "ICH9-LPC.disable_s3=1"]);
        } else {
            push(&["-machine", "q35"]);
        }
        push(&self.accel.qemu_args(self.tcg_threads));
        push(&["-m", &self.memory_mib.to_string()]);
        push(&["-smp", &self.cpus.to_string()]);
        push(&["-nodefaults", "-display", "none", "-vga", "none"]);
        push(&["-drive", &format!("if=pflash,format=raw,readonly=on,file={}", option_path(&self.firmware_code)?)]);
        push(&["-drive", &format!("if=pflash,format=raw,file={}", option_path(&self.firmware_vars)?)]);
        if let Some(disk) = &self.disk {
            push(&["-drive", &format!("if=none,id=d0,file={},format=qcow2", option_path(disk)?)]);
            match self.disk_bootindex {
                Some(i) => push(&["-device", &format!("virtio-blk-pci,drive=d0,bootindex={i}")]),
                None => push(&["-device", "virtio-blk-pci,drive=d0"]),
            }
        }
        if self.usb || self.usb_stick.is_some() {
            push(&["-device", "qemu-xhci,id=xhci"]);
        }
        if let Some((stick, bootindex)) = &self.usb_stick {
            push(&["-drive", &format!("if=none,id=stick,file={},format=qcow2", option_path(stick)?)]);
            push(&["-device", &format!("usb-storage,bus=xhci.0,drive=stick,id=stick,bootindex={bootindex}")]);
        }
        if let Some(forwards) = &self.network {
            let mut netdev = String::from("user,id=n0,restrict=on");
            for f in forwards {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
            }
            push(&["-netdev", &netdev]);
            push(&["-device", "virtio-net-pci,netdev=n0"]);
        }
        push(&["-chardev", &format!("file,id=ser0,path={},append=on", option_path(&self.serial_log)?)]);
        push(&["-serial", "chardev:ser0"]);
        if let Some(socket) = &self.backdoor_socket {
            push(&["-device", "virtio-serial-pci,id=vser0"]);
            push(&["-chardev", &format!("socket,id=bd,path={},server=on,wait=off", option_path(socket)?)]);
            push(&["-device", &format!("virtserialport,bus=vser0.0,chardev=bd,name={BACKDOOR_PORT_NAME}")]);
        }
        for socket in &self.qmp_sockets {
            push(&["-qmp", &format!("unix:{},server=on,wait=off", option_path(socket)?)]);
        }
        if self.exit_on_reset {
            push(&["-no-reboot"]);
        }
        Ok(a)
    }

    /// A ready-to-spawn [`Command`].
    pub fn command(&self) -> Result<Command> {
        let mut cmd = Command::new(QEMU_SYSTEM);
        cmd.args(self.args()?);
        Ok(cmd)
    }
}

/// A path as a qemu option value: UTF-8, with commas doubled (qemu's escape for them).
fn option_path(path: &Path) -> Result<String> {
    let s = path.to_str().with_context(|| format!("qemu option paths must be UTF-8: {}", path.display()))?;
    Ok(s.replace(',', ",,"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usb_stick_and_the_disk_get_their_boot_order() {
        let cmdline =
            QemuCmdline { disk_bootindex: Some(1), usb_stick: Some(("/tmp/vm/stick.qcow2".into(), 0)), ..sample() };
        let args = cmdline.args().unwrap().join(" ");
        assert!(args.contains("-device virtio-blk-pci,drive=d0,bootindex=1"), "{args}");
        assert!(args.contains("-device qemu-xhci,id=xhci"), "{args}");
        assert!(args.contains("-drive if=none,id=stick,file=/tmp/vm/stick.qcow2,format=qcow2"), "{args}");
        assert!(args.contains("-device usb-storage,bus=xhci.0,drive=stick,id=stick,bootindex=0"), "{args}");
        let plain = sample().args().unwrap().join(" ");
        assert!(plain.contains("-device virtio-blk-pci,drive=d0 ") && !plain.contains("xhci"), "{plain}");
    }

    fn sample() -> QemuCmdline {
        QemuCmdline {
            name: "web".into(),
            accel: Accel::Tcg,
            tcg_threads: TcgThreads::Single,
            memory_mib: 2048,
            cpus: 2,
            firmware_code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            secure_boot: false,
            firmware_vars: "/tmp/vm/OVMF_VARS.fd".into(),
            disk: Some("/tmp/vm/overlay.qcow2".into()),
            network: Some(vec![PortForward { host: 40001, guest: 80 }, PortForward { host: 40002, guest: 5000 }]),
            serial_log: "/tmp/vm/serial.log".into(),
            backdoor_socket: Some("/tmp/vm/backdoor.sock".into()),
            qmp_sockets: vec!["/tmp/vm/qmp.sock".into()],
            usb: false,
            disk_bootindex: None,
            usb_stick: None,
            exit_on_reset: true,
        }
    }

    #[test]
    fn full_command_line() {
        let args = sample().args().unwrap().join(" ");
        assert_eq!(
            args,
            "-name web -machine q35 -accel tcg,thread=single -cpu max -m 2048 -smp 2 \
             -nodefaults -display none -vga none \
             -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
             -drive if=pflash,format=raw,file=/tmp/vm/OVMF_VARS.fd \
             -drive if=none,id=d0,file=/tmp/vm/overlay.qcow2,format=qcow2 \
             -device virtio-blk-pci,drive=d0 \
             -netdev user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40001-:80,hostfwd=tcp:127.0.0.1:40002-:5000 \
             -device virtio-net-pci,netdev=n0 \
             -chardev file,id=ser0,path=/tmp/vm/serial.log,append=on -serial chardev:ser0 \
             -device virtio-serial-pci,id=vser0 \
             -chardev socket,id=bd,path=/tmp/vm/backdoor.sock,server=on,wait=off \
             -device virtserialport,bus=vser0.0,chardev=bd,name=org.airlock.test.backdoor \
             -qmp unix:/tmp/vm/qmp.sock,server=on,wait=off \
             -no-reboot"
        );
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let cmdline = QemuCmdline { accel: Accel::Kvm, ..sample() };
        let args = cmdline.args().unwrap().join(" ");
        assert!(args.contains("-accel kvm -cpu host"), "{args}");
    }

    #[test]
    fn firmware_only_has_no_disk_network_or_channel() {
        let cmdline = QemuCmdline { disk: None, network: None, backdoor_socket: None, qmp_sockets: vec![], ..sample() };
        let args = cmdline.args().unwrap();
        for absent in ["-netdev", "virtio-blk-pci,drive=d0", "-qmp", "virtio-serial-pci,id=vser0"] {
            assert!(!args.iter().any(|a| a == absent), "{absent} in {args:?}");
        }
        assert!(args.iter().any(|a| a == "-serial"));
    }

    #[test]
    fn an_empty_forward_list_still_isolates_the_guest() {
        let cmdline = QemuCmdline { network: Some(vec![]), ..sample() };
        let args = cmdline.args().unwrap();
        assert!(args.iter().any(|a| a == "user,id=n0,restrict=on"), "{args:?}");
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let cmdline = QemuCmdline { disk: Some("/tmp/a,b/overlay.qcow2".into()), ..sample() };
        let args = cmdline.args().unwrap();
        assert!(args.iter().any(|a| a == "if=none,id=d0,file=/tmp/a,,b/overlay.qcow2,format=qcow2"), "{args:?}");
    }

    #[test]
    fn the_guest_script_looks_for_the_same_port() {
        let script =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/guest/usr/lib/airlock-test/backdoor"))
                .unwrap();
        assert!(script.contains(&format!("AIRLOCK_BACKDOOR_PORT:-{BACKDOOR_PORT_NAME}}}")));
    }

    #[test]
    fn command_runs_qemu_system() {
        let cmd = sample().command().unwrap();
        assert_eq!(cmd.get_program(), QEMU_SYSTEM);
    }
}
