//! The one way airlock runs an external program.
//!
//! [`Cmd`] logs the argv, closes stdin, captures stderr and puts its tail into the error, so a
//! failing `mmdebstrap` or `qemu-img` explains itself. Nobody calls `std::process::Command`
//! directly elsewhere in the builder.

use anyhow::{Context, Result, bail};
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// How many trailing lines of stderr go into an error.
const STDERR_TAIL: usize = 25;

#[derive(Debug)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<std::path::PathBuf>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self { program: program.as_ref().to_owned(), args: Vec::new(), envs: Vec::new(), cwd: None }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// The command line as a shell would show it (for logs and errors).
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| {
                let s = a.to_string_lossy();
                if s.is_empty() || s.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                    format!("'{}'", s.replace('\'', "'\\''"))
                } else {
                    s.into_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args).stdin(Stdio::null());
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        c
    }

    /// Runs to completion, returning stdout; fails with the exit status and stderr's tail.
    pub fn output(&self) -> Result<Vec<u8>> {
        log::debug!("running {}", self.display());
        let out = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("starting `{}`", self.program.to_string_lossy()))?;
        if !out.status.success() {
            bail!("`{}` failed ({}){}", self.display(), out.status, tail(&out.stderr));
        }
        Ok(out.stdout)
    }

    /// Runs to completion and returns stdout as text.
    pub fn output_text(&self) -> Result<String> {
        let out = self.output()?;
        String::from_utf8(out).with_context(|| format!("`{}` printed something that is not UTF-8", self.display()))
    }

    /// Runs to completion, discarding stdout.
    pub fn run(&self) -> Result<()> {
        self.output().map(|_| ())
    }

    /// Runs with stderr sent to `log` (for long tools whose progress is worth keeping).
    pub fn run_logged(&self, log: &Path) -> Result<()> {
        log::debug!("running {} (log: {})", self.display(), log.display());
        // O_NOFOLLOW: a link planted at the log's name is not written through.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(log)
            .with_context(|| format!("creating log {}", log.display()))?;
        let status = self
            .command()
            .stdout(file.try_clone().context("duplicating a log file handle")?)
            .stderr(file)
            .status()
            .with_context(|| format!("starting `{}`", self.program.to_string_lossy()))?;
        if !status.success() {
            let text = std::fs::read(log).unwrap_or_default();
            bail!("`{}` failed ({status}); log {}{}", self.display(), log.display(), tail(&text));
        }
        Ok(())
    }
}

/// The last lines of a program's output, indented for an error message.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let start = lines.len().saturating_sub(STDERR_TAIL);
    let mut out = String::from(":");
    for l in &lines[start..] {
        out.push_str("\n    ");
        out.push_str(l);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_argv_status_and_stderr_tail() {
        let err = Cmd::new("sh").arg("-c").arg("echo one >&2; echo two >&2; exit 3").run().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`sh -c 'echo one >&2; echo two >&2; exit 3'` failed"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.ends_with("    one\n    two"), "{msg}");
    }

    #[test]
    fn output_and_missing_program() {
        assert_eq!(Cmd::new("printf").arg("a b").output_text().unwrap(), "a b");
        let err = Cmd::new("airlock-no-such-program").run().unwrap_err();
        assert!(err.to_string().contains("starting `airlock-no-such-program`"));
    }
}
