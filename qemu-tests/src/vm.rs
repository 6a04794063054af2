//! One virtual machine booted from an airlock image: its files, its qemu, and the
//! NixOS-test-driver-style verbs that tests call on it.

use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::accel::{Accel, TcgThreads, probe_accel};
use crate::backdoor::{self, CommandChannel, Guest};
use crate::firmware::Firmware;
use crate::machine::{GuestReset, Machine};
use crate::overlay::create_overlay;
use crate::ports::{self, Probe, free_local_ports};
use crate::qemu_cmdline::{PortForward, QemuCmdline};
use crate::serial;
use crate::systemd_unit::{self, UnitState, Verdict};

/// Enough for a Debian trixie appliance to reach multi-user.target under TCG (about 40 s
/// measured), or to shut down with the data partition's journal flushed, with room for a slow,
/// shared CI machine: a hang detector, not a speed requirement.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(360);

/// Default for [`VmConfig::command_timeout`]. A request sent while the guest is still
/// booting waits for the boot, so this is larger than [`BOOT_TIMEOUT`].
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(480);

/// Lines of the serial log printed when a test fails.
const FAILURE_LOG_LINES: usize = 80;

/// Set to keep a failed VM's directory (overlay, VARS, serial and qemu logs) for inspection.
const KEEP_DIR_ENV: &str = "AIRLOCK_KEEP_VM_DIR";

/// Multiplies the harness's hang detectors on a loaded host (see [`slow_host`]).
const TIME_SCALE_ENV: &str = "AIRLOCK_VM_TIME_SCALE";

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The raw disk image; never modified (the VM writes to a qcow2 overlay).
    pub image: PathBuf,
    /// Enlarges the overlay to this many bytes, e.g. `8 << 30`; `None` keeps the image size.
    pub disk_size: Option<u64>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Guest TCP ports reachable from the host at 127.0.0.1:[`Vm::host_port`].
    pub forwards: Vec<u16>,
    /// Names the VM in logs and its temporary directory.
    pub name: String,
    /// How long `succeed`, `fail` and `execute` wait, including for the guest to come up.
    pub command_timeout: Duration,
    /// How a reset of the guest is carried out (see [`GuestReset`]).
    pub guest_reset: GuestReset,
    /// Under TCG, how the vCPUs map onto host threads.
    pub tcg_threads: TcgThreads,
    /// Boots OVMF's Secure Boot firmware with empty variables (Setup Mode), as a fresh host
    /// whose owner lets the appliance enroll its keys.
    pub secure_boot: bool,
    /// A USB controller, for [`Vm::plug_usb_drive`].
    pub usb: bool,
    /// A raw image attached as a USB stick (`usb-storage`, through its own qcow2 overlay),
    /// first in the boot order, the virtio disk second; see [`Vm::place_stick`].
    pub usb_stick: Option<PathBuf>,
}

/// Where the USB stick of [`VmConfig::usb_stick`] is from the next qemu start on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickAt {
    /// Plugged in, first in the firmware's boot order.
    First,
    /// Plugged in, after the virtio disk in the boot order.
    AfterDisk,
    /// Pulled out.
    Out,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            image: PathBuf::new(),
            disk_size: None,
            memory_mib: 2048,
            cpus: 2,
            forwards: Vec::new(),
            name: "vm".into(),
            command_timeout: COMMAND_TIMEOUT,
            guest_reset: GuestReset::NewProcess,
            tcg_threads: TcgThreads::Multi,
            secure_boot: false,
            usb: false,
            usb_stick: None,
        }
    }
}

impl VmConfig {
    /// Defaults (2 GiB, 2 CPUs, no forwards) for `image`.
    pub fn new(name: &str, image: impl Into<PathBuf>) -> Self {
        VmConfig { image: image.into(), name: name.into(), ..VmConfig::default() }
    }
}

/// Files of one VM, all inside its temporary directory.
#[derive(Debug)]
struct VmFiles {
    overlay: PathBuf,
    stick: PathBuf,
    vars: PathBuf,
    serial_log: PathBuf,
    qemu_log: PathBuf,
    backdoor_socket: PathBuf,
    qmp_socket: PathBuf,
    events_socket: PathBuf,
}

impl VmFiles {
    fn in_dir(dir: &Path) -> Self {
        VmFiles {
            overlay: dir.join("overlay.qcow2"),
            stick: dir.join("stick.qcow2"),
            vars: dir.join("OVMF_VARS.fd"),
            serial_log: dir.join("serial.log"),
            qemu_log: dir.join("qemu.log"),
            backdoor_socket: dir.join("backdoor.sock"),
            qmp_socket: dir.join("qmp.sock"),
            events_socket: dir.join("qmp-events.sock"),
        }
    }
}

/// A VM booted from an image. Dropping it kills qemu; if the test is failing, the end of
/// the serial log is printed.
#[derive(Debug)]
pub struct Vm {
    cfg: VmConfig,
    accel: Accel,
    /// `None` only while `Drop` decides whether to keep it.
    dir: Option<TempDir>,
    files: VmFiles,
    forwards: Vec<PortForward>,
    machine: Machine,
    channel: CommandChannel,
    /// Set when any harness call failed, so `Drop` shows the log even without a panic.
    failed: bool,
}

impl Vm {
    /// Prepares the VM's overlay and firmware variables and starts qemu; returns without
    /// waiting for the guest.
    pub fn boot(cfg: VmConfig) -> Result<Vm> {
        let name = cfg.name.clone();
        Self::prepare(cfg).with_context(|| format!("booting vm {name}"))
    }

    fn prepare(cfg: VmConfig) -> Result<Vm> {
        if cfg.memory_mib == 0 || cfg.cpus == 0 {
            bail!("memory_mib and cpus must be positive");
        }
        let accel = probe_accel();
        let firmware = if cfg.secure_boot { Firmware::locate_secure_boot()? } else { Firmware::locate()? };
        let dir = tempfile::Builder::new()
            .prefix(&format!("airlock-vm-{}-", short_name(&cfg.name)))
            .tempdir()
            .context("creating the VM's temporary directory")?;
        let files = VmFiles::in_dir(dir.path());
        std::fs::copy(&firmware.vars_template, &files.vars)
            .with_context(|| format!("copying the firmware variables {}", firmware.vars_template.display()))?;
        create_overlay(&cfg.image, &files.overlay, cfg.disk_size)?;
        if let Some(stick) = &cfg.usb_stick {
            create_overlay(stick, &files.stick, None)?;
        }
        let forwards: Vec<PortForward> = free_local_ports(cfg.forwards.len())?
            .into_iter()
            .zip(&cfg.forwards)
            .map(|(host, &guest)| PortForward { host, guest })
            .collect();
        let cmdline = QemuCmdline {
            name: cfg.name.clone(),
            accel,
            tcg_threads: cfg.tcg_threads,
            memory_mib: cfg.memory_mib,
            cpus: cfg.cpus,
            firmware_code: firmware.code.clone(),
            secure_boot: cfg.secure_boot,
            firmware_vars: files.vars.clone(),
            disk: Some(files.overlay.clone()),
            network: Some(forwards.clone()),
            serial_log: files.serial_log.clone(),
            backdoor_socket: Some(files.backdoor_socket.clone()),
            qmp_sockets: vec![files.qmp_socket.clone(), files.events_socket.clone()],
            usb: cfg.usb,
            disk_bootindex: cfg.usb_stick.as_ref().map(|_| 1),
            usb_stick: cfg.usb_stick.as_ref().map(|_| (files.stick.clone(), 0)),
            exit_on_reset: false,
        };
        let mut machine = Machine::new(&cfg.name, cmdline, files.qemu_log.clone(), cfg.guest_reset)?;
        machine.power_on()?;
        let channel = CommandChannel::new(&files.backdoor_socket);
        Ok(Vm { cfg, accel, dir: Some(dir), files, forwards, machine, channel, failed: false })
    }

    /// Starts qemu again on the same overlay and firmware variables, after
    /// [`shutdown`](Vm::shutdown) or [`crash`](Vm::crash).
    pub fn boot_again(&mut self) -> Result<()> {
        self.channel.reset();
        let result = self.machine.power_on().with_context(|| format!("booting vm {} again", self.cfg.name));
        self.note(result)
    }

    /// Waits until `needle` appears on the serial console after the last (re)boot: after the
    /// current qemu started, or after the guest's last reset inside it (a reboot, or
    /// [`reset`](Vm::reset)). ANSI escape sequences and carriage returns are removed before
    /// matching, so systemd's coloured status lines match as plain text.
    pub fn wait_for_console(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let start = self.console_start();
        let result = self.wait_for_console_after(start, needle, timeout).map(drop);
        self.note(result)
    }

    /// Waits until `needle` appears on the serial console after byte `offset` of
    /// [`serial_log`](Vm::serial_log) (see [`console_len`](Vm::console_len)); returns the
    /// offset just past it, to wait for a later occurrence.
    ///
    /// A guest kernel panic ends the wait at once, quoting the console. One kind is the
    /// emulator's, not the guest's: under multi-threaded TCG the kernel's live patching of its
    /// own code (an `int3` written over an instruction, then removed) can race with another
    /// vCPU's translated copy, which then traps on an `int3` that is no longer there
    /// (`Oops: int3`, then `Kernel panic`; under TCG with vCPUs in parallel threads, see
    /// [`TcgThreads`]). Another is a host too loaded to emulate the clock in time: the kernel's
    /// early check that the timer interrupt arrives gives up (`IO-APIC + timer doesn't work!`;
    /// seen at a load average of 12 on 2 cores). Either is answered by powering the VM off and
    /// on again, once per test, said on the terminal; a second one fails the test.
    pub fn wait_for_console_after(&mut self, offset: u64, needle: &str, timeout: Duration) -> Result<u64> {
        log::info!("{}: waiting for {needle:?} on the console", self.cfg.name);
        let deadline = Instant::now() + slow_host(timeout);
        let mut offset = offset;
        let result = loop {
            let (machine, log) = (&mut self.machine, &self.files.serial_log);
            let mut watch = || -> Result<()> {
                machine.keep_alive()?;
                match serial::kernel_panic(log, offset)? {
                    Some(panic) => Err(anyhow::Error::new(panic)),
                    None => Ok(()),
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            match serial::wait_for_text(log, offset, needle, remaining, &mut watch) {
                Ok(end) => break Ok(end),
                Err(e) => match e.downcast_ref::<serial::KernelPanic>() {
                    Some(panic) if panic.emulator_fault && self.accel == Accel::Tcg => {
                        let why = "the guest kernel's panic is the emulator's (an int3 multi-threaded TCG left \
                                   behind, or the early timer check a loaded host made fail), not the appliance's";
                        if !self.power_cycle_once(why)? {
                            break Err(e);
                        }
                        offset = self.machine.console_start();
                    }
                    _ => break Err(e),
                },
            }
        };
        let result = result.with_context(|| format!("waiting for {needle:?} on the console of vm {}", self.cfg.name));
        self.note(result)
    }

    /// Powers the VM off and on again to get past a failure that is the emulator's, once per
    /// test (libtest runs each test on its own thread): says so on the terminal, past the
    /// test's captured output, and returns `false` (doing nothing) if the test already had
    /// its one.
    fn power_cycle_once(&mut self, why: &str) -> Result<bool> {
        thread_local! {
            static POWER_CYCLES: Cell<u32> = const { Cell::new(0) };
        }
        let name = &self.cfg.name;
        if POWER_CYCLES.with(Cell::get) >= 1 {
            log::error!("{name}: {why}, and this test already had its one power cycle: failing");
            return Ok(false);
        }
        POWER_CYCLES.with(|n| n.set(n.get() + 1));
        let notice = format!(
            "\n!!!!! qemu-tests: vm {name}: POWER CYCLE to get past a failure: {why}. \
             A test gets one; the next failure fails it. !!!!!\n"
        );
        log::warn!("{}", notice.trim());
        // Straight to the terminal: libtest keeps a passing test's captured output to itself.
        let _ignored_if_stderr_is_gone = std::io::stderr().write_all(notice.as_bytes());
        self.crash()?;
        self.boot_again()?;
        Ok(true)
    }

    /// Like [`wait_for_console_after`](Vm::wait_for_console_after), for a test that does
    /// not know whether `needle` will come in time: `Ok(None)` if it did not appear within
    /// `timeout`, while a kernel panic or a qemu that exited still fails at once. Never powers
    /// the VM off and on, so timed tests (power cuts) keep their meaning.
    pub fn watch_console(&mut self, offset: u64, needle: &str, timeout: Duration) -> Result<Option<u64>> {
        log::info!("{}: watching for {needle:?} on the console for up to {} s", self.cfg.name, timeout.as_secs());
        let (machine, log) = (&mut self.machine, &self.files.serial_log);
        let mut watch = || -> Result<()> {
            machine.keep_alive()?;
            match serial::kernel_panic(log, offset)? {
                Some(panic) => Err(anyhow::Error::new(panic)),
                None => Ok(()),
            }
        };
        let result = match serial::wait_for_text(log, offset, needle, timeout, &mut watch) {
            Ok(end) => Ok(Some(end)),
            Err(e) if e.downcast_ref::<serial::NotSeen>().is_some() => Ok(None),
            Err(e) => Err(e),
        };
        let result = result.with_context(|| format!("watching the console of vm {} for {needle:?}", self.cfg.name));
        self.note(result)
    }

    /// Lets the guest run for `duration`, failing at once if its kernel panics (on the
    /// console after byte `offset`) or qemu exits meanwhile.
    pub fn run_for(&mut self, offset: u64, duration: Duration) -> Result<()> {
        let deadline = Instant::now() + duration;
        let result = loop {
            if let Err(e) = self.machine.keep_alive() {
                break Err(e);
            }
            match serial::kernel_panic(&self.files.serial_log, offset) {
                Ok(None) => {}
                Ok(Some(panic)) => break Err(anyhow::Error::new(panic)),
                Err(e) => break Err(e),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        };
        let result =
            result.with_context(|| format!("letting vm {} run for {:.1} s", self.cfg.name, duration.as_secs_f64()));
        self.note(result)
    }

    /// Current length of the serial log, for [`wait_for_console_after`](Vm::wait_for_console_after).
    pub fn console_len(&self) -> u64 {
        serial::len(&self.files.serial_log).unwrap_or(0)
    }

    /// Runs `cmd` as root in the guest (`bash -c`); fails, quoting its output, unless it
    /// exits 0. Returns stdout and stderr, interleaved.
    pub fn succeed(&mut self, cmd: &str) -> Result<String> {
        let result = self.execute(cmd).and_then(|(code, out)| backdoor::expect_success(cmd, code, out));
        self.note(result)
    }

    /// Runs `cmd` as root in the guest; fails if it exits 0.
    pub fn fail(&mut self, cmd: &str) -> Result<String> {
        let result = self.execute(cmd).and_then(|(code, out)| backdoor::expect_failure(cmd, code, out));
        self.note(result)
    }

    /// Runs `cmd` as root in the guest; returns its exit code and output (lossy UTF-8).
    pub fn execute(&mut self, cmd: &str) -> Result<(i32, String)> {
        let (code, out) = self.execute_raw(cmd)?;
        Ok((code, String::from_utf8_lossy(&out).into_owned()))
    }

    /// Like [`execute`](Vm::execute), with the output as bytes.
    pub fn execute_raw(&mut self, cmd: &str) -> Result<(i32, Vec<u8>)> {
        let deadline = Instant::now() + slow_host(self.cfg.command_timeout);
        let result = self.run_until(cmd, log::Level::Info, deadline);
        self.note(result)
    }

    fn run_until(&mut self, cmd: &str, level: log::Level, deadline: Instant) -> Result<(i32, Vec<u8>)> {
        let mut guest = Liveness { machine: &mut self.machine };
        self.channel.execute(cmd, level, deadline, &mut guest).with_context(|| format!("vm {}", self.cfg.name))
    }

    /// Waits until `systemctl is-active` would say `active`; fails at once, with the unit's
    /// status, if the unit failed or is inactive with no jobs left that could start it.
    pub fn wait_for_unit(&mut self, unit: &str, timeout: Duration) -> Result<()> {
        log::info!("{}: waiting for unit {unit}", self.cfg.name);
        let result = self
            .wait_for_unit_inner(unit, timeout)
            .with_context(|| format!("waiting for unit {unit} in vm {}", self.cfg.name));
        self.note(result)
    }

    fn wait_for_unit_inner(&mut self, unit: &str, timeout: Duration) -> Result<()> {
        let timeout = slow_host(timeout);
        let deadline = Instant::now() + timeout;
        let query = systemd_unit::state_command(unit);
        let mut last: Option<UnitState> = None;
        loop {
            let out = match self.run_until(&query, log::Level::Debug, deadline) {
                Ok((_, out)) => out,
                Err(e) => match last {
                    Some(state) if Instant::now() >= deadline && self.is_running() => {
                        bail!("still not active after {} s: {state}", timeout.as_secs())
                    }
                    _ => return Err(e),
                },
            };
            let state = UnitState::parse(&String::from_utf8_lossy(&out));
            match state.verdict() {
                Verdict::Active => return Ok(()),
                Verdict::Failed => bail!("the unit failed:\n{}", self.unit_status(unit)),
                Verdict::Hopeless(reason) => {
                    bail!("{reason} ({state}):\n{}", self.unit_status(unit))
                }
                Verdict::Waiting => {}
            }
            if Instant::now() >= deadline {
                bail!("still not active after {} s: {state}", timeout.as_secs());
            }
            last = Some(state);
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn unit_status(&mut self, unit: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        match self.run_until(&systemd_unit::status_command(unit), log::Level::Info, deadline) {
            Ok((_, out)) => String::from_utf8_lossy(&out).into_owned(),
            Err(e) => format!("(its status could not be read: {e:#})"),
        }
    }

    /// Waits until a guest service on `guest_port` is reachable from the host through its
    /// forward: something listens on the port in the guest (per /proc/net/tcp{,6}), and a
    /// connection to 127.0.0.1:[`host_port`](Vm::host_port) is answered, or at least kept
    /// open, after an HTTP `HEAD` request.
    pub fn wait_for_open_port(&mut self, guest_port: u16, timeout: Duration) -> Result<()> {
        log::info!("{}: waiting for guest port {guest_port}", self.cfg.name);
        let result = self
            .wait_for_open_port_inner(guest_port, timeout)
            .with_context(|| format!("waiting for guest port {guest_port} of vm {} to open", self.cfg.name));
        self.note(result)
    }

    fn wait_for_open_port_inner(&mut self, guest_port: u16, timeout: Duration) -> Result<()> {
        let host_port = self.forward(guest_port)?;
        let timeout = slow_host(timeout);
        let deadline = Instant::now() + timeout;
        let mut checked = false;
        loop {
            let table = match self.run_until(ports::GUEST_TCP_TABLE, log::Level::Debug, deadline) {
                Ok((_, table)) => table,
                Err(_) if checked && Instant::now() >= deadline && self.is_running() => {
                    bail!("nothing listened on it in the guest within {} s", timeout.as_secs())
                }
                Err(e) => return Err(e),
            };
            if ports::listens_on(&String::from_utf8_lossy(&table), guest_port) {
                break;
            }
            if Instant::now() >= deadline {
                bail!("nothing listened on it in the guest within {} s", timeout.as_secs());
            }
            checked = true;
            std::thread::sleep(Duration::from_secs(1));
        }
        loop {
            self.machine.keep_alive()?;
            match ports::probe_forward(host_port, Duration::from_secs(2)) {
                Probe::Answered | Probe::Silent => return Ok(()),
                Probe::Closed(reason) if Instant::now() >= deadline => bail!(
                    "the guest listens, but 127.0.0.1:{host_port} does not reach it ({reason}); \
                     does the service listen only on the guest's loopback?"
                ),
                Probe::Closed(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// The host port (on 127.0.0.1) forwarded to `guest_port`.
    ///
    /// # Panics
    /// If `guest_port` is not in [`VmConfig::forwards`]: that is a bug in the test.
    pub fn host_port(&self, guest_port: u16) -> u16 {
        self.forward(guest_port).unwrap_or_else(|e| panic!("vm {}: {e}", self.cfg.name))
    }

    fn forward(&self, guest_port: u16) -> Result<u16> {
        self.forwards
            .iter()
            .find(|f| f.guest == guest_port)
            .map(|f| f.host)
            .with_context(|| format!("guest port {guest_port} is not forwarded: add it to VmConfig::forwards"))
    }

    /// Powers the guest off cleanly and waits for qemu to exit: `systemctl poweroff` through
    /// the command channel if it has answered before, otherwise an ACPI power-button press.
    /// If qemu is still running after `timeout`, it is killed and this fails.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<()> {
        log::info!("{}: shutting down", self.cfg.name);
        let result = self.shutdown_inner(timeout).with_context(|| format!("shutting down vm {}", self.cfg.name));
        self.note(result)
    }

    fn shutdown_inner(&mut self, timeout: Duration) -> Result<()> {
        let timeout = slow_host(timeout);
        let deadline = Instant::now() + timeout;
        if !self.is_running() {
            return Ok(());
        }
        let mut asked = false;
        if self.channel.is_ready() {
            let soon = deadline.min(Instant::now() + Duration::from_secs(30));
            match self.run_until("systemctl poweroff --no-block", log::Level::Info, soon) {
                Ok((0, _)) => asked = true,
                Ok((code, out)) => {
                    log::warn!("systemctl poweroff exited with {code}: {}", String::from_utf8_lossy(&out).trim())
                }
                Err(e) => log::warn!("asking for poweroff through the channel: {e:#}"),
            }
        }
        if !asked {
            let remaining = deadline.saturating_duration_since(Instant::now());
            self.machine.qmp(remaining.min(Duration::from_secs(30)))?.execute("system_powerdown")?;
        }
        let status = self.machine.wait_power_off(deadline.saturating_duration_since(Instant::now()))?;
        self.channel.reset();
        match status {
            Some(status) => {
                log::info!("{}: qemu exited with {status}", self.cfg.name);
                Ok(())
            }
            None => {
                self.machine.kill()?;
                bail!("the guest did not power off within {} s; qemu was killed", timeout.as_secs())
            }
        }
    }

    /// Cuts the power: kills qemu at once. The overlay keeps what the guest had written, as
    /// after a power loss.
    pub fn crash(&mut self) -> Result<()> {
        log::info!("{}: crashing (killing qemu)", self.cfg.name);
        self.channel.reset();
        let result = self.machine.kill().with_context(|| format!("crashing vm {}", self.cfg.name));
        self.note(result)
    }

    /// Reboots the guest cleanly (`systemctl reboot` through the command channel) and
    /// returns once the harness saw the reset (and, under [`GuestReset::NewProcess`], started
    /// the next qemu), so later commands and console waits go to the new boot.
    pub fn reboot(&mut self, timeout: Duration) -> Result<()> {
        log::info!("{}: rebooting", self.cfg.name);
        let result = self.reboot_inner(timeout).with_context(|| format!("rebooting vm {}", self.cfg.name));
        self.note(result)
    }

    fn reboot_inner(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + slow_host(timeout);
        let seen = self.machine.resets().count();
        let (code, out) = self.run_until("systemctl reboot --no-block", log::Level::Info, deadline)?;
        backdoor::expect_success("systemctl reboot", code, String::from_utf8_lossy(&out).into())?;
        self.wait_for_reset(seen, deadline)
    }

    fn wait_for_reset(&mut self, seen: u64, deadline: Instant) -> Result<()> {
        while self.machine.resets().count() == seen {
            self.machine.keep_alive()?;
            if Instant::now() >= deadline {
                bail!("qemu reported no reset of the guest in time");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Presses the reset button (QMP `system_reset`): the guest restarts at once, without
    /// shutting down. Returns once the reset was seen, so that console waits afterwards only
    /// look at the new boot.
    pub fn reset(&mut self) -> Result<()> {
        log::info!("{}: resetting", self.cfg.name);
        let result = self.reset_inner().with_context(|| format!("resetting vm {}", self.cfg.name));
        self.note(result)
    }

    fn reset_inner(&mut self) -> Result<()> {
        self.machine.keep_alive()?;
        let seen = self.machine.resets().count();
        self.machine.qmp(Duration::from_secs(30))?.execute("system_reset")?;
        self.wait_for_reset(seen, Instant::now() + Duration::from_secs(30))
    }

    /// Plugs a USB drive holding `image` (a raw file, read-only) into the running guest, as
    /// `id` (QMP `blockdev-add` and `device_add usb-storage`). Needs [`VmConfig::usb`]. A drive
    /// stays until the next qemu process (a reboot under
    /// [`GuestReset::NewProcess`](crate::GuestReset::NewProcess) pulls it out).
    pub fn plug_usb_drive(&mut self, id: &str, image: &Path) -> Result<()> {
        log::info!("{}: plugging in USB drive {id} ({})", self.cfg.name, image.display());
        let result = self
            .plug_usb_inner(id, image)
            .with_context(|| format!("plugging USB drive {id} into vm {}", self.cfg.name));
        self.note(result)
    }

    fn plug_usb_inner(&mut self, id: &str, image: &Path) -> Result<()> {
        if !self.cfg.usb {
            bail!("the VM has no USB controller (VmConfig::usb)");
        }
        let image = image.canonicalize().with_context(|| format!("finding {}", image.display()))?;
        let mut qmp = self.machine.qmp(Duration::from_secs(30))?;
        qmp.execute_with(
            "blockdev-add",
            serde_json::json!({
                "node-name": id, "driver": "raw", "read-only": true,
                "file": { "driver": "file", "filename": image, "read-only": true },
            }),
        )?;
        qmp.execute_with(
            "device_add",
            serde_json::json!({ "driver": "usb-storage", "bus": "xhci.0", "drive": id, "id": id, "removable": true }),
        )
    }

    /// Moves the USB stick of [`VmConfig::usb_stick`] for the next qemu process: the next
    /// power-on, or the next reboot under [`GuestReset::NewProcess`](crate::GuestReset::NewProcess).
    /// The stick keeps what the guest wrote to it (its overlay).
    pub fn place_stick(&mut self, at: StickAt) -> Result<()> {
        log::info!("{}: USB stick {at:?} from the next start", self.cfg.name);
        if self.cfg.usb_stick.is_none() {
            let e = anyhow::anyhow!("vm {} has no USB stick (VmConfig::usb_stick)", self.cfg.name);
            return self.note(Err(e));
        }
        let cmdline = self.machine.cmdline_mut();
        let (stick, disk) = match at {
            StickAt::First => (Some((self.files.stick.clone(), 0)), Some(1)),
            StickAt::AfterDisk => (Some((self.files.stick.clone(), 1)), Some(0)),
            StickAt::Out => (None, None),
        };
        cmdline.usb_stick = stick;
        cmdline.disk_bootindex = disk;
        Ok(())
    }

    /// Waits up to `timeout` for the guest to power itself off (qemu exits); fails if it does
    /// not, or if qemu ended another way.
    pub fn wait_power_off(&mut self, timeout: Duration) -> Result<()> {
        log::info!("{}: waiting for the guest to power off", self.cfg.name);
        let result = match self.machine.wait_power_off(slow_host(timeout)) {
            Ok(Some(status)) => {
                self.channel.reset();
                log::info!("{}: qemu exited with {status}", self.cfg.name);
                Ok(())
            }
            Ok(None) => Err(anyhow::anyhow!("the guest did not power off within {} s", timeout.as_secs())),
            Err(e) => Err(e),
        };
        self.note(result.with_context(|| format!("vm {}", self.cfg.name)))
    }

    /// The USB stick's qcow2 overlay (what the guest wrote to it, backed by the image).
    pub fn stick_overlay_path(&self) -> Option<&Path> {
        self.cfg.usb_stick.as_ref().map(|_| self.files.stick.as_path())
    }

    /// Freezes the guest (QMP `stop`): its vCPUs and its clock stand still until
    /// [`resume`](Vm::resume), so it costs the host nothing meanwhile.
    pub fn pause(&mut self) -> Result<()> {
        let result = self.machine.qmp(Duration::from_secs(30)).and_then(|mut q| q.execute("stop"));
        self.note(result.with_context(|| format!("pausing vm {}", self.cfg.name)))
    }

    /// Lets a [`pause`](Vm::pause)d guest run again (QMP `cont`).
    pub fn resume(&mut self) -> Result<()> {
        let result = self.machine.qmp(Duration::from_secs(30)).and_then(|mut q| q.execute("cont"));
        self.note(result.with_context(|| format!("resuming vm {}", self.cfg.name)))
    }

    /// Whether qemu is running (a guest that is being reset into a new qemu counts).
    pub fn is_running(&mut self) -> bool {
        self.machine.keep_alive().is_ok()
    }

    /// The whole serial log: every boot of this VM, each after a `----- qemu-tests: start N`
    /// line.
    pub fn serial_log(&self) -> String {
        match serial::read_from(&self.files.serial_log, 0) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(cannot read the serial log: {e:#})"),
        }
    }

    /// The serial log since the last (re)boot, as [`wait_for_console`](Vm::wait_for_console)
    /// sees it.
    pub fn console_since_boot(&self) -> String {
        match serial::read_from(&self.files.serial_log, self.console_start()) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(cannot read the serial log: {e:#})"),
        }
    }

    /// The qcow2 overlay that holds everything the guest wrote (backed by the image).
    pub fn overlay_path(&self) -> &Path {
        &self.files.overlay
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    fn console_start(&self) -> u64 {
        self.machine.console_start()
    }

    fn note<T>(&mut self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn print_failure_report(&self) {
        let log = serial::readable(&self.serial_log());
        eprintln!(
            "===== vm {}: last {FAILURE_LOG_LINES} lines of {} =====\n{}",
            self.cfg.name,
            self.files.serial_log.display(),
            crate::command::tail_lines(&log, FAILURE_LOG_LINES)
        );
        if let Some(tail) = self.machine.log_tail().filter(|t| !t.trim().is_empty()) {
            eprintln!("===== vm {}: qemu's stderr =====\n{tail}", self.cfg.name);
        }
        eprintln!("===== vm {}: end =====", self.cfg.name);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Err(e) = self.machine.kill() {
            eprintln!("vm {}: {e:#}", self.cfg.name);
        }
        if std::thread::panicking() || self.failed {
            self.print_failure_report();
            if let Some(dir) = self.dir.take().filter(|_| std::env::var_os(KEEP_DIR_ENV).is_some()) {
                eprintln!("vm {}: kept {}", self.cfg.name, dir.keep().display());
            }
        }
    }
}

/// The VM as the command channel sees it.
struct Liveness<'a> {
    machine: &'a mut Machine,
}

impl Guest for Liveness<'_> {
    fn check_alive(&mut self) -> Result<()> {
        self.machine.keep_alive()
    }

    fn resets(&self) -> u64 {
        self.machine.resets().count()
    }
}

/// A timeout of the harness's waits, multiplied by `AIRLOCK_VM_TIME_SCALE` (a whole number,
/// default 1) for a host so loaded that TCG guests crawl. Only hang detectors are scaled,
/// never the durations a test means (`run_for`, `watch_console`: when a power cut lands).
///
/// # Panics
/// If the variable is set to anything but a positive whole number: a typo must not pass as 1.
fn slow_host(timeout: Duration) -> Duration {
    static SCALE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let scale = *SCALE.get_or_init(|| match std::env::var(TIME_SCALE_ENV) {
        Err(_) => 1,
        Ok(v) => match v.parse::<u32>() {
            Ok(n) if n >= 1 => {
                log::info!("{TIME_SCALE_ENV}={n}: the harness waits {n} times as long before it calls a guest hung");
                n
            }
            _ => panic!("{TIME_SCALE_ENV}={v:?} is not a positive whole number"),
        },
    });
    timeout * scale
}

/// A VM name fit for a file name prefix: unix socket paths must stay under 108 bytes.
fn short_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).take(20).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let cfg = VmConfig::new("web", "out/web.raw");
        assert_eq!((cfg.memory_mib, cfg.cpus), (2048, 2));
        assert_eq!(cfg.image, PathBuf::from("out/web.raw"));
        assert!(cfg.forwards.is_empty() && cfg.disk_size.is_none());
    }

    #[test]
    fn short_names_are_file_name_safe() {
        assert_eq!(short_name("web/1 test"), "web-1-test");
        assert_eq!(short_name(&"x".repeat(50)).len(), 20);
    }
}
