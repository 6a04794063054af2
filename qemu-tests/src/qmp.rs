//! A minimal client for QMP, qemu's JSON machine protocol, over a unix socket.
//!
//! The harness sends only argument-less commands (`system_powerdown`) and reads only the
//! kind of each reply, the name of each event and the reason of a `SHUTDOWN`, so a few string
//! checks replace a JSON library. qemu writes one JSON object per line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{serial, socket};

/// How long a command may take to be answered.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects to the socket qemu serves at `path` (retrying while qemu starts up) and
    /// leaves capability negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let stream = socket::connect(path, Instant::now() + timeout, &mut || Ok(()))?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).context("setting a read timeout on the QMP socket")?;
        let mut qmp = Qmp { path: path.to_owned(), reader: BufReader::new(stream) };
        match classify(&qmp.read_line()?) {
            Message::Greeting => {}
            other => bail!("expected the QMP greeting on {}, got {other:?}", path.display()),
        }
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    /// Runs an argument-less command and waits for its reply, skipping events.
    pub fn execute(&mut self, command: &str) -> Result<()> {
        log::info!("QMP {}: {command}", self.path.display());
        self.send(command, format!("{{\"execute\": \"{command}\"}}\n"))
    }

    /// Runs `command` with `arguments` (a JSON object) and waits for its reply, skipping events.
    pub fn execute_with(&mut self, command: &str, arguments: serde_json::Value) -> Result<()> {
        log::info!("QMP {}: {command} {arguments}", self.path.display());
        self.send(command, format!("{}\n", serde_json::json!({ "execute": command, "arguments": arguments })))
    }

    fn send(&mut self, command: &str, request: String) -> Result<()> {
        self.reader
            .get_mut()
            .write_all(request.as_bytes())
            .with_context(|| format!("sending QMP command {command}"))?;
        loop {
            match classify(&self.read_line()?) {
                Message::Return => return Ok(()),
                Message::Error(desc) => bail!("QMP command {command} failed: {desc}"),
                Message::Event(_) | Message::Greeting | Message::Other => {}
            }
        }
    }

    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .with_context(|| format!("reading from QMP socket {}", self.path.display()))?;
        if n == 0 {
            bail!("qemu closed QMP socket {}", self.path.display());
        }
        Ok(line)
    }
}

/// Resets of the guest since the machine was powered on: seen by [`watch_events`] inside one
/// qemu process, or the restarts of qemu after a reset when it exits on one.
#[derive(Debug)]
pub struct Resets {
    count: AtomicU64,
    console_offset: AtomicU64,
}

impl Resets {
    /// No resets yet; console text counts from `console_offset`.
    pub fn new(console_offset: u64) -> Self {
        Resets { count: AtomicU64::new(0), console_offset: AtomicU64::new(console_offset) }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Length of the serial log when the last reset was seen: text before it belongs to an
    /// earlier boot.
    pub fn console_offset(&self) -> u64 {
        self.console_offset.load(Ordering::SeqCst)
    }

    pub fn record(&self, console_offset: u64) {
        self.console_offset.store(console_offset, Ordering::SeqCst);
        self.count.fetch_add(1, Ordering::SeqCst);
    }
}

/// Follows QMP events on `path` until qemu exits, recording each guest reset inside the
/// process (`RESET`) in `resets` with the serial log's length at that moment. The thread
/// returns the reason of the last `SHUTDOWN` event (`guest-reset`, `guest-shutdown`,
/// `host-qmp-system-reset`, ...), which says why qemu ended, or `None` if there was none (it
/// was killed) or the events could not be followed (said in the log).
///
/// The event is read a moment after the reset, so the first bytes the firmware prints
/// could fall before the recorded offset; the firmware's first words are escape codes, and
/// its first text comes seconds later.
pub fn watch_events(path: PathBuf, serial_log: PathBuf, resets: Arc<Resets>) -> Result<JoinHandle<Option<String>>> {
    std::thread::Builder::new()
        .name("qmp-events".into())
        .spawn(move || {
            let mut qmp = match Qmp::connect(&path, Duration::from_secs(30)) {
                Ok(qmp) => qmp,
                Err(e) => {
                    log::warn!("not watching qemu's events: {e:#}");
                    return None;
                }
            };
            // Events arrive whenever the guest does something; qemu's exit ends the stream.
            if let Err(e) = qmp.reader.get_ref().set_read_timeout(None) {
                log::warn!("not watching qemu's events: {e}");
                return None;
            }
            let mut shutdown = None;
            while let Ok(line) = qmp.read_line() {
                let Message::Event(name) = classify(&line) else { continue };
                log::debug!("QMP event {name}");
                match name.as_str() {
                    "RESET" => match serial::len(&serial_log) {
                        Ok(len) => {
                            log::info!("guest reset: console text counts from byte {len}");
                            resets.record(len);
                        }
                        Err(e) => log::warn!("after a guest reset: {e:#}"),
                    },
                    "SHUTDOWN" => {
                        let reason = string_field(&line, "reason").unwrap_or_else(|| "unknown".into());
                        log::info!("qemu is shutting down: {reason}");
                        shutdown = Some(reason);
                    }
                    _ => {}
                }
            }
            shutdown
        })
        .context("starting the QMP event thread")
}

/// Whether a `SHUTDOWN` reason is a reset of the machine (by the guest, or QMP
/// `system_reset`), which qemu turns into its exit under `-no-reboot`.
pub fn is_reset(reason: &str) -> bool {
    matches!(reason, "guest-reset" | "host-qmp-system-reset")
}

/// The kinds of line qemu sends on a QMP socket.
#[derive(Debug, PartialEq, Eq)]
enum Message {
    Greeting,
    Return,
    Error(String),
    Event(String),
    Other,
}

fn classify(line: &str) -> Message {
    let body = line.trim().trim_start_matches('{').trim_start();
    if body.starts_with("\"QMP\"") {
        Message::Greeting
    } else if body.starts_with("\"return\"") {
        Message::Return
    } else if body.starts_with("\"error\"") {
        Message::Error(string_field(line, "desc").unwrap_or_else(|| line.trim().to_owned()))
    } else if let Some(name) = string_field(line, "event") {
        Message::Event(name)
    } else {
        Message::Other
    }
}

/// The string value of the first `"key": "..."` in `line`.
fn string_field(line: &str, key: &str) -> Option<String> {
    let quoted_key = format!("\"{key}\"");
    let after_key = &line[line.find(&quoted_key)? + quoted_key.len()..];
    let value = after_key.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_what_qemu_sends() {
        let greeting = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18"}, "capabilities": ["oob"]}}"#;
        assert_eq!(classify(greeting), Message::Greeting);
        assert_eq!(classify("{\"return\": {}}\r\n"), Message::Return);
        assert_eq!(
            classify(r#"{"error": {"class": "CommandNotFound", "desc": "The command \"nope\" has not been found"}}"#),
            Message::Error("The command \"nope\" has not been found".into())
        );
        assert_eq!(
            classify(
                r#"{"timestamp": {"seconds": 1732847000, "microseconds": 5}, "event": "RESET", "data": {"guest": true, "reason": "guest-reset"}}"#
            ),
            Message::Event("RESET".into())
        );
        let shutdown = r#"{"timestamp": {"seconds": 1732847001, "microseconds": 7}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-reset"}}"#;
        assert_eq!(classify(shutdown), Message::Event("SHUTDOWN".into()));
        assert_eq!(string_field(shutdown, "reason").as_deref(), Some("guest-reset"));
        assert!(is_reset("guest-reset") && is_reset("host-qmp-system-reset"));
        assert!(!is_reset("guest-shutdown") && !is_reset("host-signal"));
        assert_eq!(classify("{}"), Message::Other);
    }

    /// A fake qemu on a socketpair-like unix listener: greeting, capabilities, an event
    /// before the reply.
    #[test]
    fn execute_skips_events_and_reports_errors() {
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            writer.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n").unwrap();
            let mut requests = Vec::new();
            for reply in [
                "{\"return\": {}}\r\n",
                "{\"timestamp\": {}, \"event\": \"POWERDOWN\"}\r\n{\"return\": {}}\r\n",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\r\n",
                "{\"return\": {}}\r\n",
            ] {
                line.clear();
                reader.read_line(&mut line).unwrap();
                requests.push(line.trim().to_owned());
                writer.write_all(reply.as_bytes()).unwrap();
            }
            requests
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(10)).unwrap();
        qmp.execute("system_powerdown").unwrap();
        let err = qmp.execute("quit").unwrap_err().to_string();
        assert_eq!(err, "QMP command quit failed: no");
        qmp.execute_with("device_add", serde_json::json!({ "driver": "usb-storage", "id": "stick" })).unwrap();
        assert_eq!(
            server.join().unwrap(),
            [
                r#"{"execute": "qmp_capabilities"}"#,
                r#"{"execute": "system_powerdown"}"#,
                r#"{"execute": "quit"}"#,
                r#"{"arguments":{"driver":"usb-storage","id":"stick"},"execute":"device_add"}"#
            ]
        );
    }
}
