//! One running qemu-system-x86_64 and what it said on stderr.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::command;
use crate::qemu_cmdline::QemuCmdline;

/// Lines of qemu's stderr quoted when it exits unexpectedly.
const LOG_TAIL_LINES: usize = 15;

/// A qemu process; see [`QemuProcess::kill`] for how it ends.
#[derive(Debug)]
pub struct QemuProcess {
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl QemuProcess {
    /// Starts qemu with stdout and stderr appended to `log`.
    pub fn spawn(cmdline: &QemuCmdline, log: &Path) -> Result<QemuProcess> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening qemu's log {}", log.display()))?;
        let child = command::spawn(&mut cmdline.command()?, file)?;
        Ok(QemuProcess { child, log: log.to_owned(), exited: None })
    }

    /// The exit status, if qemu has exited.
    pub fn poll_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().context("checking on qemu")?;
        }
        Ok(self.exited)
    }

    /// Waits up to `timeout` for qemu to exit by itself; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ends qemu at once with SIGKILL, like pulling the power cord: the disk keeps what the
    /// guest had written, with nothing flushed on its behalf. Does nothing if qemu exited.
    pub fn kill(&mut self) -> Result<()> {
        if self.poll_exit()?.is_some() {
            return Ok(());
        }
        self.child.kill().context("killing qemu")?;
        self.exited = Some(self.child.wait().context("reaping qemu")?);
        Ok(())
    }

    /// The last lines qemu wrote to stderr.
    pub fn log_tail(&self) -> String {
        match std::fs::read(&self.log) {
            Ok(bytes) => command::tail_lines(&String::from_utf8_lossy(&bytes), LOG_TAIL_LINES).to_owned(),
            Err(e) => format!("(cannot read {}: {e})", self.log.display()),
        }
    }
}
