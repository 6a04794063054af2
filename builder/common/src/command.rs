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

impl Cmd {
    /// Runs to completion with stdout and stderr written to `log` line by line as they come,
    /// each line (split at `\n` or `\r`, as progress meters redraw) also handed to `on_line`:
    /// how a long tool's own progress reaches the user without its raw output.
    pub fn run_streaming(&self, log: Option<&Path>, mut on_line: impl FnMut(&str)) -> Result<()> {
        use std::io::Write;
        log::debug!("running {}", self.display());
        let shown_log = log.map_or(String::new(), |l| format!("; log {}", l.display()));
        let mut writer: Box<dyn Write> = match log {
            // O_NOFOLLOW: a link planted at the log's name is not written through.
            Some(log) => Box::new(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(log)
                    .with_context(|| format!("creating log {}", log.display()))?,
            )),
            None => Box::new(std::io::sink()),
        };
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{}`", self.program.to_string_lossy()))?;
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let readers: Vec<Box<dyn std::io::Read + Send>> = [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        let threads: Vec<_> = readers
            .into_iter()
            .map(|r| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut r = std::io::BufReader::new(r);
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        // A progress meter ends its lines with `\r`: each redraw is a line.
                        match read_line_cr(&mut r, &mut line) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {
                                if tx.send(line.clone()).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let mut kept: Vec<u8> = Vec::new();
        for line in rx {
            writer.write_all(&line).and_then(|()| writer.write_all(b"\n")).context("writing the log")?;
            let text = String::from_utf8_lossy(&line);
            on_line(text.trim_end());
            kept.extend_from_slice(&line);
            kept.push(b'\n');
            // Only the tail goes into an error.
            if kept.len() > 64 << 10 {
                kept.drain(..kept.len() - (32 << 10));
            }
        }
        writer.flush().context("writing the log")?;
        for t in threads {
            let _ = t.join();
        }
        let status = child.wait().with_context(|| format!("waiting for `{}`", self.program.to_string_lossy()))?;
        if !status.success() {
            bail!("`{}` failed ({status}){shown_log}{}", self.display(), tail(&kept));
        }
        Ok(())
    }
}

/// Reads up to and without the next `\n` or `\r` into `line`; returns the bytes consumed.
fn read_line_cr(r: &mut impl std::io::BufRead, line: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut consumed = 0;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(consumed);
        }
        match buf.iter().position(|b| *b == b'\n' || *b == b'\r') {
            Some(i) => {
                line.extend_from_slice(&buf[..i]);
                r.consume(i + 1);
                return Ok(consumed + i + 1);
            }
            None => {
                let n = buf.len();
                line.extend_from_slice(buf);
                r.consume(n);
                consumed += n;
            }
        }
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
    fn streaming_hands_over_lines_of_both_streams_and_logs_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut seen = Vec::new();
        Cmd::new("sh")
            .arg("-c")
            .arg("printf 'a\\rb\\n'; echo c >&2")
            .run_streaming(Some(&log), |l| seen.push(l.to_string()))
            .unwrap();
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"]);
        let err = Cmd::new("sh").arg("-c").arg("echo why >&2; exit 4").run_streaming(None, |_| {}).unwrap_err();
        assert!(err.to_string().contains("exit status: 4"), "{err}");
        assert!(err.to_string().ends_with("    why"), "{err}");
    }

    #[test]
    fn output_and_missing_program() {
        assert_eq!(Cmd::new("printf").arg("a b").output_text().unwrap(), "a b");
        let err = Cmd::new("airlock-no-such-program").run().unwrap_err();
        assert!(err.to_string().contains("starting `airlock-no-such-program`"));
    }
}
