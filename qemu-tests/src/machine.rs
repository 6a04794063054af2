//! The qemu process behind a VM, one at a time: powering it on and off, telling a reset of
//! the guest from a power-off by the reason of qemu's `SHUTDOWN` event, and, when resets
//! get a fresh process ([`GuestReset::NewProcess`]), starting the next one on the same disk
//! and firmware variables.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::qemu_cmdline::QemuCmdline;
use crate::qemu_process::QemuProcess;
use crate::qmp::{self, Qmp, Resets};
use crate::serial;

/// How a reset of the guest (a reboot it asks for, or [`crate::Vm::reset`]) is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestReset {
    /// Inside the running qemu process, as on real hardware.
    InPlace,
    /// qemu exits (`-no-reboot`) and the harness starts a new one on the same overlay and
    /// firmware variables: nothing the emulator held (translated code, device state)
    /// survives into the next boot. The guest cannot tell the difference.
    NewProcess,
}

/// One VM's qemu, and everything needed to start it again.
#[derive(Debug)]
pub struct Machine {
    name: String,
    cmdline: QemuCmdline,
    qemu_log: PathBuf,
    events_socket: PathBuf,
    resets_mode: GuestReset,
    qemu: Option<QemuProcess>,
    /// Follows the current process's QMP events; returns its last `SHUTDOWN` reason.
    events: Option<JoinHandle<Option<String>>>,
    /// Why the current process ended, once [`Machine::exit_reason`] asked.
    exit_reason: Option<Option<String>>,
    starts: u32,
    /// Serial log offset where the current qemu process started.
    start_offset: u64,
    resets: Arc<Resets>,
}

impl Machine {
    /// A machine that is not running yet; see [`Machine::power_on`].
    pub fn new(name: &str, cmdline: QemuCmdline, qemu_log: PathBuf, resets_mode: GuestReset) -> Result<Machine> {
        let events_socket =
            cmdline.qmp_sockets.get(1).cloned().context("the harness needs a second QMP socket for events")?;
        let cmdline = QemuCmdline { exit_on_reset: resets_mode == GuestReset::NewProcess, ..cmdline };
        Ok(Machine {
            name: name.to_owned(),
            cmdline,
            qemu_log,
            events_socket,
            resets_mode,
            qemu: None,
            events: None,
            exit_reason: None,
            starts: 0,
            start_offset: 0,
            resets: Arc::new(Resets::new(0)),
        })
    }

    /// Starts qemu (after a power-off, or for the first time): a fresh reset count.
    pub fn power_on(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("qemu is still running: power it off first");
        }
        self.spawn("")?;
        // A fresh record per power-on, so a late event from a killed process is moot.
        self.resets = Arc::new(Resets::new(self.start_offset));
        self.watch_events()
    }

    /// Cuts the power: kills qemu at once. The disk keeps what the guest had written.
    pub fn kill(&mut self) -> Result<()> {
        // A reset the guest asked for just before the cut must not start a new process.
        self.events = None;
        self.exit_reason = Some(None);
        match self.qemu.as_mut() {
            Some(qemu) => qemu.kill(),
            None => Ok(()),
        }
    }

    /// Fails unless the guest's machine is running. When qemu exited because the guest was
    /// reset (under [`GuestReset::NewProcess`]), starts the next process first.
    pub fn keep_alive(&mut self) -> Result<()> {
        let qemu = self.qemu.as_mut().context("qemu is not running")?;
        let Some(status) = qemu.poll_exit()? else { return Ok(()) };
        let reason = self.exit_reason();
        if self.resets_mode == GuestReset::NewProcess && reason.as_deref().is_some_and(qmp::is_reset) {
            return self.restart_after_reset(reason.as_deref().unwrap_or_default());
        }
        bail!("{}", self.describe_exit(status, reason.as_deref()))
    }

    /// Waits up to `timeout` for qemu to exit by itself (a power-off); `None` if it is still
    /// running. Fails if it ended for another reason, such as a reset.
    pub fn wait_power_off(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let qemu = self.qemu.as_mut().context("qemu is not running")?;
        let Some(status) = qemu.wait_exit(timeout)? else { return Ok(None) };
        match self.exit_reason() {
            Some(reason) if reason != "guest-shutdown" && reason != "host-qmp-quit" => {
                bail!("{}", self.describe_exit(status, Some(&reason)))
            }
            _ => Ok(Some(status)),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.qemu.as_mut().is_some_and(|q| matches!(q.poll_exit(), Ok(None)))
    }

    /// A QMP command connection to the running qemu.
    pub fn qmp(&self, timeout: Duration) -> Result<Qmp> {
        let socket = self.cmdline.qmp_sockets.first().context("the harness needs a QMP socket for commands")?;
        Qmp::connect(socket, timeout)
    }

    /// The command line the next qemu process starts with (after a power-off, or a reset
    /// under [`GuestReset::NewProcess`]).
    pub fn cmdline_mut(&mut self) -> &mut QemuCmdline {
        &mut self.cmdline
    }

    /// Resets of the guest since the last power-on.
    pub fn resets(&self) -> &Resets {
        &self.resets
    }

    /// The serial log offset where the current boot began: the start of the current qemu
    /// process, or the last reset inside it.
    pub fn console_start(&self) -> u64 {
        self.start_offset.max(self.resets.console_offset())
    }

    /// The last lines qemu wrote to stderr.
    pub fn log_tail(&self) -> Option<String> {
        self.qemu.as_ref().map(QemuProcess::log_tail)
    }

    fn restart_after_reset(&mut self, reason: &str) -> Result<()> {
        log::info!(
            "{}: the machine was reset ({reason}); qemu exited as told (-no-reboot), starting it again \
             on the same disk and firmware variables",
            self.name
        );
        self.spawn(&format!(", after a reset ({reason})"))?;
        self.resets.record(self.start_offset);
        self.watch_events()
    }

    fn spawn(&mut self, why: &str) -> Result<()> {
        self.starts += 1;
        let serial_log = &self.cmdline.serial_log;
        let banner = format!(
            "\n----- qemu-tests: start {} of vm {} ({}){why} -----\n",
            self.starts, self.name, self.cmdline.accel
        );
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(serial_log)
            .and_then(|mut f| f.write_all(banner.as_bytes()))
            .with_context(|| format!("writing to {}", serial_log.display()))?;
        self.start_offset = serial::len(serial_log)?;
        let sockets = self.cmdline.qmp_sockets.iter().chain(&self.cmdline.backdoor_socket);
        for socket in sockets {
            match std::fs::remove_file(socket) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", socket.display())),
            }
        }
        self.events = None;
        self.exit_reason = None;
        self.qemu = Some(QemuProcess::spawn(&self.cmdline, &self.qemu_log)?);
        Ok(())
    }

    fn watch_events(&mut self) -> Result<()> {
        let thread =
            qmp::watch_events(self.events_socket.clone(), self.cmdline.serial_log.clone(), Arc::clone(&self.resets))?;
        self.events = Some(thread);
        Ok(())
    }

    /// The reason of the exited process's last `SHUTDOWN` event. Its event thread ends with
    /// the process, having read every event qemu sent before exiting.
    fn exit_reason(&mut self) -> Option<String> {
        if let Some(reason) = &self.exit_reason {
            return reason.clone();
        }
        let reason = match self.events.take().map(JoinHandle::join) {
            Some(Ok(reason)) => reason,
            Some(Err(_)) => {
                log::warn!("{}: the QMP event thread panicked", self.name);
                None
            }
            None => None,
        };
        self.exit_reason = Some(reason.clone());
        reason
    }

    fn describe_exit(&self, status: ExitStatus, reason: Option<&str>) -> String {
        let why = match reason {
            Some(reason) => format!(" (qemu's shutdown reason: {reason})"),
            None => String::new(),
        };
        format!(
            "qemu exited with {status}{why}; the end of its log {}:\n{}",
            self.qemu_log.display(),
            self.log_tail().unwrap_or_default()
        )
    }
}
