//! The one way this crate runs external programs (qemu-img, qemu-system-x86_64, ...).
//!
//! Every call logs its argv, closes stdin, and on failure puts the exit status and the tail
//! of stderr into the error, so a failing test says what was run and what the tool said.

use std::fs::File;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

/// How much of a failing program's stderr goes into the error.
const STDERR_TAIL_LINES: usize = 20;

/// Renders `cmd` as a shell-like line for logs and errors.
pub fn display(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&crate::shell::quote(&arg.to_string_lossy()));
    }
    line
}

/// Runs `cmd` to completion and returns its stdout (lossily decoded).
///
/// Fails if the program cannot be started or exits non-zero; the error names the command
/// and carries the last lines of its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    log::info!("running {line}");
    let output = cmd.stdin(Stdio::null()).output().with_context(|| format!("starting `{line}`"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("`{line}` failed with {}:\n{}", output.status, tail_lines(&stderr, STDERR_TAIL_LINES));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Starts a long-running `cmd` in the background with stdout and stderr going to `log`.
pub fn spawn(cmd: &mut Command, log: File) -> Result<Child> {
    let line = display(cmd);
    log::info!("starting {line}");
    let stderr = log.try_clone().with_context(|| format!("duplicating the log file handle for `{line}`"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(stderr))
        .spawn()
        .with_context(|| format!("starting `{line}`"))
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> &str {
    let trimmed = text.trim_end();
    let start = match n.checked_sub(1) {
        Some(skip) => trimmed.rmatch_indices('\n').nth(skip).map_or(0, |(i, _)| i + 1),
        None => trimmed.len(),
    };
    &trimmed[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a\nb\nc", 5), "a\nb\nc");
        assert_eq!(tail_lines("", 3), "");
        assert_eq!(tail_lines("only", 1), "only");
    }

    #[test]
    fn run_returns_stdout() {
        let out = run(Command::new("sh").args(["-c", "echo hello"])).unwrap();
        assert_eq!(out, "hello\n");
    }

    #[test]
    fn run_puts_stderr_and_argv_into_the_error() {
        let err = run(Command::new("sh").args(["-c", "echo broken pipe dream >&2; exit 3"])).unwrap_err().to_string();
        assert!(err.contains("broken pipe dream"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("sh -c"), "{err}");
    }

    #[test]
    fn missing_program_is_named() {
        let err = run(&mut Command::new("/nonexistent/qemu-img")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/qemu-img"), "{err}");
    }
}
