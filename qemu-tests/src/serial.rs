//! The guest's serial console, which qemu appends to a file that the harness polls.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How often a waiting harness looks at the file again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The bytes of `path` from `offset` on; a file that does not exist yet reads as empty.
pub fn read_from(path: &Path, offset: u64) -> Result<Vec<u8>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    file.seek(SeekFrom::Start(offset)).with_context(|| format!("seeking to {offset} in {}", path.display()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
}

/// The current length of `path`, 0 if it does not exist yet.
pub fn len(path: &Path) -> Result<u64> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading the size of {}", path.display())),
    }
}

/// Waits until `needle` appears in the console text of `path` after byte `start`, and
/// returns the offset in the file just past its first occurrence there.
///
/// The text is matched as [`readable`] shows it, so `Reached target Multi-User System`
/// matches although systemd colours the unit's description.
///
/// `alive` is asked on every poll whether the writer is still running; once it says no,
/// the file is read one last time (so text written just before the exit still counts) and
/// its error is returned.
pub fn wait_for_text(
    path: &Path,
    start: u64,
    needle: &str,
    timeout: Duration,
    alive: &mut dyn FnMut() -> Result<()>,
) -> Result<u64> {
    let needle = needle.as_bytes();
    if needle.is_empty() {
        return Ok(start);
    }
    let deadline = Instant::now() + timeout;
    let mut cleaner = Cleaner::default();
    let mut read_to = start;
    // Clean text not yet searched, plus the needle's length minus one of text already
    // searched, so a match split across two reads is still found; `ends[i]` is the file
    // offset just past the byte that became `window[i]`.
    let mut window: Vec<u8> = Vec::new();
    let mut ends: Vec<u64> = Vec::new();
    loop {
        let still_alive = alive();
        let fresh = read_from(path, read_to)?;
        cleaner.clean(&fresh, |byte, i| {
            window.push(byte);
            ends.push(read_to + i as u64 + 1);
        });
        read_to += fresh.len() as u64;
        if let Some(i) = find(&window, needle) {
            return Ok(ends[i + needle.len() - 1]);
        }
        still_alive?;
        if Instant::now() >= deadline {
            let text = String::from_utf8_lossy(&read_from(path, start)?).into_owned();
            return Err(anyhow::Error::new(NotSeen(format!(
                "{:?} did not appear on the serial console within {} s; its last lines:\n{}",
                String::from_utf8_lossy(needle),
                timeout.as_secs(),
                crate::command::tail_lines(&readable(&text), 5)
            ))));
        }
        let keep = (needle.len() - 1).min(window.len());
        let searched = window.len() - keep;
        window.drain(..searched);
        ends.drain(..searched);
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The text waited for did not appear in time (and nothing else went wrong).
#[derive(Debug)]
pub struct NotSeen(String);

impl std::fmt::Display for NotSeen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotSeen {}

/// A guest kernel panic seen on the console.
#[derive(Debug)]
pub struct KernelPanic {
    /// The console's last lines up to the panic.
    pub lines: String,
    /// Whether it is the emulator's, not the guest's (see `Vm::wait_for_console_after`): the
    /// `int3` trap that multi-threaded TCG can leave behind when the kernel patches its own
    /// code, or the boot-time timer check failing because TCG on a loaded host delivered no
    /// timer interrupt in time.
    pub emulator_fault: bool,
}

impl std::fmt::Display for KernelPanic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the guest kernel panicked:\n{}", self.lines)
    }
}

impl std::error::Error for KernelPanic {}

const PANIC: &str = "Kernel panic - not syncing";
/// The panic of the kernel's early check that the timer interrupt arrives (`check_timer`):
/// a guest that waited too long for a tick of an emulated clock.
const TIMER_CHECK_PANIC: &str = "Kernel panic - not syncing: IO-APIC + timer doesn't work!";

/// The first kernel panic on the console of `path` after byte `start`, if any.
pub fn kernel_panic(path: &Path, start: u64) -> Result<Option<KernelPanic>> {
    let text = readable(&String::from_utf8_lossy(&read_from(path, start)?));
    let Some(at) = text.find(PANIC) else { return Ok(None) };
    let before = &text[..at];
    let end = text[at..].find('\n').map_or(text.len(), |n| at + n);
    Ok(Some(KernelPanic {
        lines: crate::command::tail_lines(&text[..end], 40).to_string(),
        emulator_fault: before.rfind("Oops: ").is_some_and(|o| before[o..].starts_with("Oops: int3"))
            || text[at..].starts_with(TIMER_CHECK_PANIC),
    }))
}

/// Position of the first `needle` in `haystack`; an empty needle is found at 0.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Console text for humans: ANSI escape sequences and carriage returns removed.
pub fn readable(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    Cleaner::default().clean(text.as_bytes(), |byte, _| out.push(byte));
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes ANSI escape sequences and carriage returns from console output that arrives in
/// pieces; a sequence split between two pieces is still removed.
///
/// Works on bytes: escape sequences are ASCII, and UTF-8 never uses ASCII values inside a
/// multi-byte character.
#[derive(Debug, Default)]
struct Cleaner {
    state: EscapeState,
}

#[derive(Debug, Default, Clone, Copy)]
enum EscapeState {
    #[default]
    Text,
    /// After ESC.
    Escape,
    /// After ESC [ (a control sequence), until its final byte in `@`..=`~`.
    Csi,
}

impl Cleaner {
    /// Calls `emit(byte, index in raw)` for every byte of `raw` that is text.
    fn clean(&mut self, raw: &[u8], mut emit: impl FnMut(u8, usize)) {
        for (i, &byte) in raw.iter().enumerate() {
            self.state = match (self.state, byte) {
                (EscapeState::Text, 0x1b) => EscapeState::Escape,
                (EscapeState::Text, b'\r') => EscapeState::Text,
                (EscapeState::Text, _) => {
                    emit(byte, i);
                    EscapeState::Text
                }
                (EscapeState::Escape, b'[') => EscapeState::Csi,
                // Two-byte escapes (ESC c, ESC 7, ...): drop the second byte too.
                (EscapeState::Escape, _) => EscapeState::Text,
                (EscapeState::Csi, b'@'..=b'~') => EscapeState::Text,
                (EscapeState::Csi, _) => EscapeState::Csi,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn kernel_panics_are_found_and_the_emulators_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let boot = "[   15.7] systemd[1]: Queued start job for default target graphical.target.\n";
        std::fs::write(&log, boot).unwrap();
        assert!(kernel_panic(&log, 0).unwrap().is_none());
        let int3 = "[   15.8] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n[   15.8] RIP: 0010:kmem_cache_free+0x103/0x440\n\
                    [   15.9] Kernel panic - not syncing: Fatal exception in interrupt\n[   15.9] ---[ end Kernel panic ]---\n";
        std::fs::write(&log, format!("{boot}{int3}")).unwrap();
        let panic = kernel_panic(&log, 0).unwrap().unwrap();
        assert!(panic.emulator_fault);
        assert!(panic.lines.ends_with("Kernel panic - not syncing: Fatal exception in interrupt"), "{}", panic.lines);
        // Only what comes after `start` counts: a panic of an earlier boot is not this one's.
        assert!(kernel_panic(&log, std::fs::metadata(&log).unwrap().len()).unwrap().is_none());
        // Any other panic is the guest's own.
        // The early timer check that a loaded TCG host can fail is the emulator's too.
        let timer = "[    0.036000] ..... failed :\n[    0.036000] Kernel panic - not syncing: IO-APIC + timer doesn't work!  Boot with apic=debug and send a report.\n";
        std::fs::write(&log, format!("{boot}{timer}")).unwrap();
        assert!(kernel_panic(&log, 0).unwrap().unwrap().emulator_fault);
        let other = "[    2.0] Oops: general protection fault: 0000 [#1]\n[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs\n";
        std::fs::write(&log, format!("{int3}{other}")).unwrap();
        let start = int3.len() as u64;
        assert!(!kernel_panic(&log, start).unwrap().unwrap().emulator_fault);
    }

    #[test]
    fn readable_strips_escapes_and_carriage_returns() {
        let raw = "\u{1b}[2J\u{1b}[01;01H\u{1b}[=3hBdsDxe: loading\r\n\u{1b}[1m\u{1b}[33mmap\u{1b}[0m: none\r\n";
        assert_eq!(readable(raw), "BdsDxe: loading\nmap: none\n");
    }

    #[test]
    fn escapes_split_between_reads_are_still_removed() {
        let mut out = Vec::new();
        let mut cleaner = Cleaner::default();
        for piece in [&b"[  OK  ] Reached target \x1b[0;1"[..], b";39mMulti-User", b" System\x1b", b"[0m.\r\n"] {
            cleaner.clean(piece, |b, _| out.push(b));
        }
        assert_eq!(out, b"[  OK  ] Reached target Multi-User System.\n");
    }

    /// systemd colours unit descriptions; the needle is matched against the plain text,
    /// and the offset returned is in the raw file.
    #[test]
    fn coloured_text_matches_plain_needles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let raw = "[\u{1b}[0;32m  OK  \u{1b}[0m] Reached target \u{1b}[0;1;39mMulti-User System\u{1b}[0m.\r\n";
        std::fs::write(&path, raw).unwrap();
        let end = wait_for_text(&path, 0, "Reached target Multi-User System", Duration::ZERO, &mut || Ok(())).unwrap();
        assert_eq!(&raw[end as usize..], "\u{1b}[0m.\r\n");
        assert_eq!(wait_for_text(&path, 5, "", Duration::ZERO, &mut || Ok(())).unwrap(), 5);
    }

    #[test]
    fn find_locates_needles() {
        assert_eq!(find(b"abcdef", b"cd"), Some(2));
        assert_eq!(find(b"abc", b"abcd"), None);
        assert_eq!(find(b"abc", b""), Some(0));
    }

    #[test]
    fn missing_file_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_from(&dir.path().join("nope"), 0).unwrap().is_empty());
        assert_eq!(len(&dir.path().join("nope")).unwrap(), 0);
    }

    /// Another thread appends to the log in small pieces, splitting the needle.
    #[test]
    fn waits_for_text_appended_by_another_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let writer_path = path.clone();
        let writer = std::thread::spawn(move || {
            let mut f = File::create(&writer_path).unwrap();
            for piece in ["boot 1\n", "Welcome to De", "bian GNU/Li", "nux!\n", "login: "] {
                std::thread::sleep(Duration::from_millis(150));
                f.write_all(piece.as_bytes()).unwrap();
                f.flush().unwrap();
            }
        });
        let end = wait_for_text(&path, 0, "Debian GNU/Linux", Duration::from_secs(30), &mut || Ok(())).unwrap();
        writer.join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(&text[..end as usize], "boot 1\nWelcome to Debian GNU/Linux");
    }

    #[test]
    fn text_before_the_start_offset_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, "first boot: READY\nsecond boot: ").unwrap();
        let start = "first boot: READY\n".len() as u64;
        let err = wait_for_text(&path, start, "READY", Duration::ZERO, &mut || Ok(())).unwrap_err();
        assert!(err.downcast_ref::<NotSeen>().is_some(), "a timeout is told from other failures: {err:#}");
        let err = err.to_string();
        assert!(err.contains("did not appear"), "{err}");
        assert!(err.contains("second boot"), "{err}");
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"READY").unwrap();
        let end = wait_for_text(&path, start, "READY", Duration::ZERO, &mut || Ok(())).unwrap();
        assert_eq!(end, len(&path).unwrap());
    }

    #[test]
    fn a_dead_writer_fails_the_wait_early_but_its_last_words_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, "kernel panic").unwrap();
        let dead = &mut || -> Result<()> { anyhow::bail!("qemu exited") };
        let err = wait_for_text(&path, 0, "login:", Duration::from_secs(600), dead).unwrap_err();
        assert_eq!(err.to_string(), "qemu exited");
        assert!(wait_for_text(&path, 0, "panic", Duration::from_secs(600), dead).is_ok());
    }
}
