//! Host side of the command channel: a root shell in the guest, reached over a
//! virtio-serial port that qemu exposes on the host as a unix socket.
//!
//! The guest side is `guest/usr/lib/airlock-test/backdoor`, which only test images carry.
//!
//! # Protocol
//! Line-based, ASCII only, fields separated by one space:
//!
//! ```text
//! host -> guest   \n<id> <base64 of the command>\n
//! guest -> host   \n<id> <exit code> <base64 of combined stdout+stderr>\n
//!                 \n<id> ! <base64 of an error message>\n      (request not decodable)
//! ```
//!
//! * `id` is a decimal number, unique per VM. Replies whose id the host is not waiting for
//!   (answers to requests it gave up on, or that a previous boot never finished) are dropped.
//! * The newline before each message ends any half line that a guest reboot left in the
//!   stream: the tail of a request the old boot had begun to read, or the head of a reply
//!   it had begun to write. Both sides ignore empty lines; the guest drops lines whose id
//!   is not a number, the host any line it cannot decode.
//! * Base64 keeps both directions free of newlines, so commands may span lines and output
//!   may be binary and of any length. The guest runs each command with `bash -c`, stdin
//!   from /dev/null, one at a time.
//!
//! # Lifecycle
//! qemu listens on the socket from its start, long before the guest does. The host connects
//! (retrying until the socket exists), then sends a no-op `true` and waits for its answer,
//! resending every few seconds and right after a guest reset; requests written before the
//! guest opens its port wait in qemu. The connection then stays open for the life of that
//! qemu process: a reboot of the guest only restarts the guest script, and after one (qemu
//! reports each reset) the host pings again before its next request. When resets end qemu
//! and the harness starts a new one, the connection ends with the old process; the host
//! connects to the new one, which it tells from a broken channel by the reset count. A
//! request still unanswered when the guest resets fails at once; one that times out marks
//! the channel as not ready, so the next request pings first.

use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::socket;

/// How long one read on the socket blocks before deadlines and qemu are checked again.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How often an unanswered readiness ping is repeated.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// The request that proves the guest side is listening.
const PING: &str = "true";

/// Commands longer than this are shortened in logs.
const LOGGED_COMMAND_CHARS: usize = 300;

/// One request, framed for the wire.
pub fn encode_request(id: u64, command: &str) -> String {
    format!("\n{id} {}\n", BASE64.encode(command))
}

/// How the guest handled a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command ran and exited with this code.
    Exited(i32),
    /// The guest could not decode the request; the output explains why.
    Rejected,
}

/// One decoded answer from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub id: u64,
    pub outcome: Outcome,
    pub output: Vec<u8>,
}

/// Decodes one reply line (without its newline).
pub fn decode_reply(line: &[u8]) -> Result<Reply> {
    let line = std::str::from_utf8(line).context("reply is not ASCII")?;
    let line = line.trim_end_matches('\r');
    let mut fields = line.splitn(3, ' ');
    let id = fields.next().unwrap_or_default();
    let id: u64 = id.parse().with_context(|| format!("reply id {id:?} is not a number"))?;
    let status = fields.next().context("reply has no status")?;
    let outcome = if status == "!" {
        Outcome::Rejected
    } else {
        Outcome::Exited(status.parse().with_context(|| format!("reply status {status:?} is not a number"))?)
    };
    let output = BASE64.decode(fields.next().unwrap_or_default()).context("reply output is not valid base64")?;
    Ok(Reply { id, outcome, output })
}

/// Splits a byte stream into lines, keeping a partial line across reads and timeouts.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// `buf[..scanned]` holds no newline.
    scanned: usize,
}

impl<R: Read> LineReader<R> {
    pub fn new(inner: R) -> Self {
        LineReader { inner, buf: Vec::new(), scanned: 0 }
    }

    /// The next complete line without its newline, or `None` if a read timed out before
    /// one was complete. End of stream is an [`ErrorKind::UnexpectedEof`] error.
    pub fn poll_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                self.scanned = 0;
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            match self.inner.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(ErrorKind::UnexpectedEof, "the other end closed the stream"));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// What the channel needs to know about the VM while it waits.
pub trait Guest {
    /// Fails if the VM is gone (qemu exited), which ends any wait at once.
    fn check_alive(&mut self) -> Result<()>;
    /// How many times the guest was reset (rebooted) since it was powered on.
    fn resets(&self) -> u64;
}

/// The host's end of the channel to one VM.
#[derive(Debug)]
pub struct CommandChannel {
    socket: PathBuf,
    conn: Option<LineReader<UnixStream>>,
    /// The guest's reset count when `conn` was made: a later count means that the qemu
    /// process behind it may have ended for a reset.
    connected_at: u64,
    next_id: u64,
    /// The guest's reset count when it last answered; `None` until it has.
    ready_at: Option<u64>,
}

impl CommandChannel {
    /// A channel to the guest behind qemu's socket at `socket`; nothing is connected yet.
    pub fn new(socket: &Path) -> Self {
        CommandChannel { socket: socket.to_owned(), conn: None, connected_at: 0, next_id: 1, ready_at: None }
    }

    /// Forgets the connection, for a new qemu process on the same socket path.
    pub fn reset(&mut self) {
        self.conn = None;
        self.ready_at = None;
    }

    /// Whether the guest has answered since the last reset or lost request.
    pub fn is_ready(&self) -> bool {
        self.ready_at.is_some()
    }

    /// Waits until the guest side answers a no-op; at once if it did since its last reset.
    pub fn wait_ready(&mut self, deadline: Instant, guest: &mut dyn Guest) -> Result<()> {
        if self.ready_at.is_some_and(|resets| resets == guest.resets()) {
            return Ok(());
        }
        self.ready_at = None;
        let started = Instant::now();
        let mut pings = Vec::new();
        let mut last_ping: Option<(Instant, u64)> = None;
        loop {
            guest.check_alive()?;
            let resets = guest.resets();
            // Ping again now and then, and at once after a reset: a request that the guest
            // was reading while it rebooted is lost.
            if last_ping.is_none_or(|(at, seen)| at.elapsed() >= PING_INTERVAL || seen != resets) {
                let id = self.send(PING, deadline, guest)?;
                pings.push(id);
                last_ping = Some((Instant::now(), resets));
            }
            if let Some(reply) = self.poll_reply(guest)? {
                if pings.contains(&reply.id) {
                    log::info!("the guest's command channel answered after {:.1} s", started.elapsed().as_secs_f64());
                    self.ready_at = Some(guest.resets());
                    return Ok(());
                }
                log::debug!("dropping reply {} while waiting for a ping", reply.id);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the guest's command channel did not answer within {} s (is the guest \
                     up, and was the image built with --test-overlay qemu-tests/guest?)",
                    deadline.saturating_duration_since(started).as_secs()
                );
            }
        }
    }

    /// Runs `command` as root in the guest and returns its exit code and combined output.
    ///
    /// Waits for the guest side first if needed; `deadline` covers both. Fails at once if
    /// the guest resets before answering. The command is logged at `level` (polling loops
    /// use `Debug`).
    pub fn execute(
        &mut self,
        command: &str,
        level: log::Level,
        deadline: Instant,
        guest: &mut dyn Guest,
    ) -> Result<(i32, Vec<u8>)> {
        let shown = abbreviate(command);
        self.wait_ready(deadline, guest).with_context(|| format!("running `{shown}` in the guest"))?;
        log::log!(level, "guest$ {shown}");
        let resets = guest.resets();
        let id = self.send(command, deadline, guest)?;
        loop {
            match self.poll_reply(guest)? {
                Some(reply) if reply.id == id => {
                    return match reply.outcome {
                        Outcome::Exited(code) => {
                            log::log!(level, "guest: exit {code}, {} bytes of output", reply.output.len());
                            Ok((code, reply.output))
                        }
                        Outcome::Rejected => bail!(
                            "the guest could not decode the request for `{shown}`: {}",
                            String::from_utf8_lossy(&reply.output).trim()
                        ),
                    };
                }
                Some(reply) => log::debug!("dropping stale reply {}", reply.id),
                None => {}
            }
            if let Err(e) = guest.check_alive() {
                self.ready_at = None;
                return Err(e);
            }
            if guest.resets() != resets {
                self.ready_at = None;
                bail!("the guest was reset before it answered `{shown}`");
            }
            if Instant::now() >= deadline {
                // The answer may still come; its id will no longer match anything.
                self.ready_at = None;
                bail!("`{shown}` got no answer from the guest in time");
            }
        }
    }

    /// Writes one request and returns its id.
    fn send(&mut self, command: &str, deadline: Instant, guest: &mut dyn Guest) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let request = encode_request(id, command);
        loop {
            let conn = self.connection(deadline, guest)?;
            match conn.get_mut().write_all(request.as_bytes()) {
                Ok(()) => return Ok(id),
                Err(e) => {
                    if !self.lost_to_a_reset(guest)? {
                        return Err(e).context("writing to the command channel");
                    }
                }
            }
        }
    }

    /// After a read or write on the connection failed: drops it, and says whether the guest
    /// was reset since it was made, so its qemu process (and the connection with it) may have
    /// ended and a new one be listening. Fails if qemu is gone for good.
    fn lost_to_a_reset(&mut self, guest: &mut dyn Guest) -> Result<bool> {
        self.conn = None;
        self.ready_at = None;
        guest.check_alive()?;
        let reset = guest.resets() != self.connected_at;
        if reset {
            log::info!("the command channel ended with the qemu process of the last boot; connecting again");
        }
        Ok(reset)
    }

    /// Waits up to [`POLL_INTERVAL`] for one reply; lines that are not replies are logged
    /// and dropped.
    fn poll_reply(&mut self, guest: &mut dyn Guest) -> Result<Option<Reply>> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        match conn.poll_line() {
            Ok(Some(line)) if line.is_empty() => Ok(None),
            Ok(Some(line)) => match decode_reply(&line) {
                Ok(reply) => Ok(Some(reply)),
                Err(e) => {
                    log::warn!("ignoring a malformed line from the guest: {e:#}");
                    Ok(None)
                }
            },
            Ok(None) => Ok(None),
            Err(e) => {
                if self.lost_to_a_reset(guest)? {
                    return Ok(None);
                }
                Err(e).context("reading from the command channel")
            }
        }
    }

    fn connection(&mut self, deadline: Instant, guest: &mut dyn Guest) -> Result<&mut LineReader<UnixStream>> {
        if self.conn.is_none() {
            let stream = socket::connect(&self.socket, deadline, &mut || guest.check_alive())
                .context("connecting to the command channel")?;
            stream.set_read_timeout(Some(POLL_INTERVAL)).context("setting a read timeout on the command channel")?;
            self.conn = Some(LineReader::new(stream));
            self.connected_at = guest.resets();
        }
        Ok(self.conn.as_mut().expect("the connection was established just above"))
    }
}

/// Fails unless the command exited 0; returns its output.
pub fn expect_success(command: &str, code: i32, output: String) -> Result<String> {
    if code != 0 {
        bail!(
            "`{}` exited with {code} in the guest; its output:\n{}",
            abbreviate(command),
            crate::command::tail_lines(&output, 40)
        );
    }
    Ok(output)
}

/// Fails if the command exited 0; returns its output.
pub fn expect_failure(command: &str, code: i32, output: String) -> Result<String> {
    if code == 0 {
        bail!(
            "`{}` succeeded in the guest but was expected to fail; its output:\n{}",
            abbreviate(command),
            crate::command::tail_lines(&output, 40)
        );
    }
    Ok(output)
}

fn abbreviate(command: &str) -> String {
    match command.char_indices().nth(LOGGED_COMMAND_CHARS) {
        Some((cut, _)) => format!("{}…", &command[..cut]),
        None => command.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixListener;
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;

    const GUEST_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/guest/usr/lib/airlock-test/backdoor");

    #[test]
    fn requests_are_newline_framed_base64() {
        assert_eq!(encode_request(7, "echo hi\nexit 3"), "\n7 ZWNobyBoaQpleGl0IDM=\n");
        assert_eq!(encode_request(8, ""), "\n8 \n");
    }

    #[test]
    fn replies_decode() {
        assert_eq!(
            decode_reply(b"12 3 aGVsbG8K").unwrap(),
            Reply { id: 12, outcome: Outcome::Exited(3), output: b"hello\n".to_vec() }
        );
        assert_eq!(decode_reply(b"12 0 ").unwrap(), Reply { id: 12, outcome: Outcome::Exited(0), output: vec![] });
        assert_eq!(decode_reply(b"4 ! Ym9ndXM=").unwrap().outcome, Outcome::Rejected);
        for bad in [&b"x 0 "[..], b"12", b"12 zero ", b"12 0 !!!", b"", b"\xff 0 "] {
            assert!(decode_reply(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// Hands out scripted chunks and timeouts, like a socket with a read timeout.
    struct Scripted(VecDeque<io::Result<Vec<u8>>>);

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.pop_front() {
                None => Ok(0),
                Some(Err(e)) => Err(e),
                Some(Ok(bytes)) => {
                    buf[..bytes.len()].copy_from_slice(&bytes);
                    Ok(bytes.len())
                }
            }
        }
    }

    #[test]
    fn line_reader_survives_partial_reads_and_timeouts() {
        let timeout = || Err(io::Error::from(ErrorKind::WouldBlock));
        let mut reader = LineReader::new(Scripted(VecDeque::from([
            Ok(b"12 0 aGVs".to_vec()),
            timeout(),
            Ok(b"bG8=\n13 1 \n14".to_vec()),
            Err(io::Error::from(ErrorKind::Interrupted)),
            Ok(b" 0 \n".to_vec()),
            Ok(b"15 0 trailing-without-newline".to_vec()),
        ])));
        assert_eq!(reader.poll_line().unwrap(), None);
        assert_eq!(reader.poll_line().unwrap().unwrap(), b"12 0 aGVsbG8=");
        assert_eq!(reader.poll_line().unwrap().unwrap(), b"13 1 ");
        assert_eq!(reader.poll_line().unwrap().unwrap(), b"14 0 ");
        let eof = reader.poll_line().unwrap_err();
        assert_eq!(eof.kind(), ErrorKind::UnexpectedEof);
    }

    #[test]
    fn success_and_failure_expectations() {
        assert_eq!(expect_success("true", 0, "ok".into()).unwrap(), "ok");
        let err = expect_success("grep x /etc/y", 2, "No such file".into()).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("exited with 2") && err.contains("No such file"), "{err}");
        assert_eq!(expect_failure("false", 1, String::new()).unwrap(), "");
        let err = expect_failure("true", 0, String::new()).unwrap_err().to_string();
        assert!(err.contains("expected to fail"), "{err}");
    }

    #[test]
    fn long_commands_are_abbreviated_in_messages() {
        assert_eq!(abbreviate("ls"), "ls");
        let long = "é".repeat(1000);
        assert_eq!(abbreviate(&long).chars().count(), LOGGED_COMMAND_CHARS + 1);
    }

    fn guest_script(stream: &UnixStream, tmp: &Path) -> Child {
        let stdin = OwnedFd::from(stream.try_clone().unwrap());
        let stdout = OwnedFd::from(stream.try_clone().unwrap());
        Command::new("bash")
            .arg(GUEST_SCRIPT)
            .env("AIRLOCK_BACKDOOR_DEVICE", "-")
            .env("TMPDIR", tmp)
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .spawn()
            .unwrap()
    }

    /// The guest script's exact wire format, including its answers to garbage.
    #[test]
    fn guest_script_speaks_the_protocol() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new("bash")
            .arg(GUEST_SCRIPT)
            .env("AIRLOCK_BACKDOOR_DEVICE", "-")
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let input = format!(
            "\n\nnot-a-number {}\n7 !!!!\n{}{}",
            BASE64.encode("echo ignored"),
            encode_request(8, "echo hi; echo err >&2; exit 5"),
            encode_request(9, "cat; printf 'no newline'"),
        );
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(text.starts_with('\n'), "{text}");
        let rejected = decode_reply(lines[0].as_bytes()).unwrap();
        assert_eq!((rejected.id, rejected.outcome), (7, Outcome::Rejected));
        assert_eq!(lines[1], format!("8 5 {}", BASE64.encode("hi\nerr\n")));
        assert_eq!(lines[2], format!("9 0 {}", BASE64.encode("no newline")));
        assert!(text.ends_with('\n'));
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "output file left behind");
    }

    /// The VM as the channel sees it, under the test's control.
    #[derive(Default)]
    struct FakeGuest {
        resets: u64,
        /// From this moment on, the guest counts one more reset.
        reset_at: Option<Instant>,
        dead: bool,
    }

    impl Guest for FakeGuest {
        fn check_alive(&mut self) -> Result<()> {
            if self.dead {
                bail!("qemu exited with signal 9");
            }
            Ok(())
        }

        fn resets(&self) -> u64 {
            self.resets + u64::from(self.reset_at.is_some_and(|at| Instant::now() >= at))
        }
    }

    /// Plays qemu: serves the socket (late), and runs the real guest script on each
    /// connection (late too), so the host side has to wait for both.
    fn fake_qemu(socket: PathBuf, tmp: PathBuf) -> mpsc::Receiver<(UnixStream, Child)> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let listener = UnixListener::bind(&socket).unwrap();
            let (stream, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(500));
            let child = guest_script(&stream, &tmp);
            tx.send((stream, child)).unwrap();
        });
        rx
    }

    #[test]
    fn real_commands_round_trip_through_the_guest_script() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("backdoor.sock");
        let guest = fake_qemu(socket.clone(), dir.path().to_owned());
        let mut channel = CommandChannel::new(&socket);
        let guest_vm = &mut FakeGuest::default();
        let soon = || Instant::now() + Duration::from_secs(60);
        let run = |channel: &mut CommandChannel, guest_vm: &mut FakeGuest, cmd: &str| {
            let (code, out) = channel.execute(cmd, log::Level::Info, soon(), guest_vm).unwrap();
            (code, String::from_utf8(out).unwrap())
        };

        assert!(!channel.is_ready());
        assert_eq!(run(&mut channel, guest_vm, "echo hello; echo oops >&2"), (0, "hello\noops\n".into()));
        assert!(channel.is_ready());
        assert_eq!(run(&mut channel, guest_vm, "exit 3"), (3, String::new()));
        assert_eq!(run(&mut channel, guest_vm, "kill -9 $$"), (137, String::new()));
        assert_eq!(
            run(&mut channel, guest_vm, "printf '%s\\n' \"it's\" \\\n  'two words'\necho $((6*7))"),
            (0, "it's\ntwo words\n42\n".into())
        );
        // A command that reads stdin gets /dev/null, not the rest of the protocol stream.
        assert_eq!(run(&mut channel, guest_vm, "cat"), (0, String::new()));
        assert_eq!(run(&mut channel, guest_vm, "whoami >/dev/null && echo still here"), (0, "still here\n".into()));

        // Binary output, every byte value.
        let (code, bytes) = channel
            .execute(
                "for i in $(seq 0 255); do printf \"\\\\$(printf %03o $i)\"; done",
                log::Level::Info,
                soon(),
                guest_vm,
            )
            .unwrap();
        assert_eq!(code, 0);
        assert_eq!(bytes, (0..=255u8).collect::<Vec<_>>());

        // Long output and a long command.
        let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
        assert_eq!(run(&mut channel, guest_vm, "seq 1 200000"), (0, expected));
        let long_word = "x".repeat(100_000);
        assert_eq!(run(&mut channel, guest_vm, &format!("printf %s {long_word} | wc -c")), (0, "100000\n".into()));

        // An answer that comes too late is dropped, not taken for the next command's.
        let err = channel
            .execute("sleep 2; echo late", log::Level::Info, Instant::now() + Duration::from_millis(500), guest_vm)
            .unwrap_err();
        assert!(err.to_string().contains("no answer"), "{err:#}");
        assert!(!channel.is_ready());
        assert_eq!(run(&mut channel, guest_vm, "echo now"), (0, "now\n".into()));

        // A guest reboot: the script dies mid-command and a new one starts on the same host
        // connection. The old boot left half lines in both directions: the tail of a request
        // it had begun to read, and the head of a reply it had begun to write. qemu reports
        // the reset, which fails the pending request at once.
        let (stream, mut child) = guest.recv().unwrap();
        guest_vm.reset_at = Some(Instant::now() + Duration::from_millis(300));
        let err = channel.execute("sleep 3", log::Level::Info, soon(), guest_vm).unwrap_err();
        assert!(err.to_string().contains("was reset before it answered"), "{err:#}");
        assert!(!channel.is_ready());
        child.kill().unwrap();
        child.wait().unwrap();
        (&stream).write_all(b"17 0 aGFsZiBh").unwrap();
        let host_end = channel.conn.as_mut().unwrap().get_mut();
        host_end.write_all(b"ZiBhIHJlcXVlc3Q=").unwrap();
        let mut rebooted = guest_script(&stream, dir.path());
        assert_eq!(run(&mut channel, guest_vm, "echo after reboot"), (0, "after reboot\n".into()));
        // A reset reported between requests: the next one pings first.
        guest_vm.resets += 5;
        assert_eq!(run(&mut channel, guest_vm, "echo pinged"), (0, "pinged\n".into()));

        // A reset that ended qemu (-no-reboot): the connection ends with the process, and the
        // next request goes to the new process on the same socket path.
        rebooted.kill().unwrap();
        rebooted.wait().unwrap();
        drop(stream);
        std::fs::remove_file(&socket).unwrap();
        let next = fake_qemu(socket.clone(), dir.path().to_owned());
        guest_vm.resets += 1;
        assert_eq!(run(&mut channel, guest_vm, "echo next process"), (0, "next process\n".into()));
        let (stream, mut rebooted) = next.recv().unwrap();

        // The same without a reset is a broken channel, and says so.
        rebooted.kill().unwrap();
        rebooted.wait().unwrap();
        drop(stream);
        let err = channel.execute("true", log::Level::Info, soon(), guest_vm).unwrap_err();
        assert!(format!("{err:#}").contains("command channel"), "{err:#}");

        // A dead qemu fails a request at once instead of at its deadline.
        guest_vm.dead = true;
        let far = Instant::now() + Duration::from_secs(600);
        let err = channel.execute("true", log::Level::Info, far, guest_vm).unwrap_err();
        assert_eq!(err.root_cause().to_string(), "qemu exited with signal 9");
    }
}
