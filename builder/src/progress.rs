//! What a person sees while airlock works: the one place stages report to.
//!
//! A stage ([`stage`]) says what it measures ([`measure`]: bytes or items, with a total when it
//! is known), how far it got ([`bytes`], [`items`]), which phase it is in ([`phase`]) and what it
//! finished ([`item`]). How that is shown depends on the [`Mode`] the command line installs:
//!
//! - [`Mode::Terminal`]: one live bar per stage on stderr (done of total, rate, ETA), replaced by
//!   one line when the stage ends;
//! - [`Mode::Plain`] (a pipe, CI): no control characters, one line per finished stage (its
//!   duration and measure) and one per item;
//! - [`Mode::Quiet`]: nothing but the command's result;
//! - [`Mode::Json`]: one JSON object per line on stdout for every event (`stage_started`,
//!   `phase`, `bytes` at most once a second, `item`, `stage_finished`, `result`).
//!
//! Like `log`, the reporter is process-wide: stages deep in the pipeline report without a handle
//! threaded through every signature. Until [`install`] is called (the library's own tests) every
//! report is dropped. Stages run one after another, so there is one current stage.

use serde_json::json;
use std::io::Write;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Terminal,
    Plain,
    Quiet,
    Json,
}

impl Mode {
    /// The mode for a run: `--json` and `--quiet` as asked, otherwise live bars when stderr is a
    /// terminal that can draw them, plain lines when it is not.
    pub fn choose(json: bool, quiet: bool) -> Mode {
        if json {
            Mode::Json
        } else if quiet {
            Mode::Quiet
        } else if std::io::IsTerminal::is_terminal(&std::io::stderr())
            && std::env::var("TERM").is_ok_and(|t| t != "dumb")
            && std::env::var_os("CI").is_none()
        {
            Mode::Terminal
        } else {
            Mode::Plain
        }
    }
}

/// What a stage counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    /// Things with a name (`files`, `packages`, `phases`, `blobs`).
    Items(&'static str),
}

#[derive(Debug)]
struct Current {
    name: String,
    started: Instant,
    unit: Option<Unit>,
    total: Option<u64>,
    done: u64,
    phase: Option<String>,
    bar: Option<indicatif::ProgressBar>,
    last_json: Instant,
}

#[derive(Debug)]
struct Reporter {
    mode: Mode,
    current: Option<Current>,
}

static REPORTER: OnceLock<Mutex<Reporter>> = OnceLock::new();

/// Sets how this process shows progress (once; later calls change nothing).
pub fn install(mode: Mode) {
    let _ = REPORTER.set(Mutex::new(Reporter { mode, current: None }));
}

/// The installed mode (`Quiet` when none is: reports are dropped).
pub fn mode() -> Mode {
    with(|r| r.mode).unwrap_or(Mode::Quiet)
}

fn with<T>(f: impl FnOnce(&mut Reporter) -> T) -> Option<T> {
    let lock = REPORTER.get()?;
    // A panic while reporting must not silence every later report.
    let mut guard: MutexGuard<'_, Reporter> = lock.lock().unwrap_or_else(|p| p.into_inner());
    Some(f(&mut guard))
}

/// A running stage; ends (as failed, unless [`Stage::finish`] said otherwise) when dropped.
#[derive(Debug)]
#[must_use = "a stage ends when its handle is dropped"]
pub struct Stage {
    ended: bool,
}

/// Starts a stage (ending any stage still running, which only a bug leaves).
pub fn stage(name: &str) -> Stage {
    with(|r| {
        if r.current.is_some() {
            end(r, false);
        }
        let bar = (r.mode == Mode::Terminal).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(style(None, None));
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        if r.mode == Mode::Json {
            emit(json!({"event": "stage_started", "stage": name}));
        }
        let now = Instant::now();
        r.current = Some(Current {
            name: name.to_string(),
            started: now,
            unit: None,
            total: None,
            done: 0,
            phase: None,
            bar,
            last_json: now,
        });
    });
    Stage { ended: false }
}

impl Stage {
    /// Ends the stage; `ok` says whether it succeeded.
    pub fn finish(mut self, ok: bool) {
        self.ended = true;
        with(|r| end(r, ok));
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.ended {
            with(|r| end(r, false));
        }
    }
}

/// Runs `f` as a stage named `name`.
pub fn run_stage<T, E>(name: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let s = stage(name);
    let result = f();
    s.finish(result.is_ok());
    result
}

/// From now on the current stage counts `unit`, from zero, up to `total` if it is known.
pub fn measure(unit: Unit, total: Option<u64>) {
    with(|r| {
        let Some(c) = r.current.as_mut() else { return };
        c.unit = Some(unit);
        c.total = total;
        c.done = 0;
        if let Some(bar) = &c.bar {
            bar.set_style(style(Some(unit), total));
            bar.set_length(total.unwrap_or(0));
            bar.set_position(0);
            bar.reset_eta();
        }
    });
}

/// Adds `n` bytes to what the current stage has done, if it counts bytes (a reader deep down
/// counts what it reads without knowing what the stage measures).
pub fn bytes(n: u64) {
    with(|r| {
        if r.current.as_ref().is_some_and(|c| c.unit == Some(Unit::Bytes)) {
            moved(r, |done| done.saturating_add(n));
        }
    });
}

/// Adds `n` things to what the current stage has done, if it counts things.
pub fn items(n: u64) {
    with(|r| {
        if r.current.as_ref().is_some_and(|c| matches!(c.unit, Some(Unit::Items(_)))) {
            moved(r, |done| done.saturating_add(n));
        }
    });
}

/// What the current stage has done so far (0 without one).
pub fn done() -> u64 {
    with(|r| r.current.as_ref().map_or(0, |c| c.done)).unwrap_or(0)
}

/// Sets what the current stage has done (for tools that report a position, not a step).
pub fn set_done(n: u64) {
    with(|r| moved(r, |_| n));
}

fn moved(r: &mut Reporter, to: impl FnOnce(u64) -> u64) {
    let mode = r.mode;
    let Some(c) = r.current.as_mut() else { return };
    c.done = to(c.done);
    if let Some(bar) = &c.bar {
        bar.set_position(c.done);
    }
    if mode == Mode::Json && c.last_json.elapsed() >= Duration::from_secs(1) {
        c.last_json = Instant::now();
        emit(
            json!({"event": "progress", "stage": c.name, "unit": unit_name(c.unit), "done": c.done, "total": c.total}),
        );
    }
}

/// The phase the current stage is in (e.g. mmdebstrap's "installing essential packages"):
/// shown next to its bar, and as an event in JSON.
pub fn phase(text: &str) {
    with(|r| {
        let mode = r.mode;
        let Some(c) = r.current.as_mut() else { return };
        c.phase = Some(text.to_string());
        if let Some(bar) = &c.bar {
            bar.set_message(text.to_string());
        }
        if mode == Mode::Json {
            emit(json!({"event": "phase", "stage": c.name, "phase": text}));
        }
    });
}

/// One thing the current stage finished (a container image, a mirror set): a line of its own,
/// except with `--quiet`.
pub fn item(text: &str) {
    with(|r| {
        let stage = r.current.as_ref().map(|c| c.name.clone());
        match r.mode {
            Mode::Quiet => {}
            Mode::Json => emit(json!({"event": "item", "stage": stage, "text": text})),
            Mode::Plain => println!("{text}"),
            Mode::Terminal => above(r, || println!("{text}")),
        }
    });
}

/// The command's result: printed on stdout in every mode (an event in JSON).
pub fn result(text: &str) {
    let shown = with(|r| match r.mode {
        Mode::Json => emit(json!({"event": "result", "text": text})),
        Mode::Terminal => above(r, || println!("{text}")),
        Mode::Plain | Mode::Quiet => println!("{text}"),
    });
    if shown.is_none() {
        println!("{text}");
    }
}

/// A log line, written above the live bar so the two do not tear each other.
#[derive(Debug, Clone, Copy)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let result = with(|r| above(r, || std::io::stderr().write_all(buf)));
        match result {
            Some(r) => r.map(|()| buf.len()),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A reader that reports every byte it reads to the current stage.
#[derive(Debug)]
pub struct Counting<R>(pub R);

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        bytes(n as u64);
        Ok(n)
    }
}

fn above<T>(r: &Reporter, f: impl FnOnce() -> T) -> T {
    match r.current.as_ref().and_then(|c| c.bar.as_ref()) {
        Some(bar) => bar.suspend(f),
        None => f(),
    }
}

fn end(r: &mut Reporter, ok: bool) {
    let Some(c) = r.current.take() else { return };
    let took = c.started.elapsed();
    let line = summary(&c, took, ok);
    match r.mode {
        Mode::Quiet => {}
        Mode::Json => emit(json!({
            "event": "stage_finished",
            "stage": c.name,
            "ok": ok,
            "duration_s": (took.as_secs_f64() * 1000.0).round() / 1000.0,
            "unit": unit_name(c.unit),
            "done": c.done,
            "total": c.total,
        })),
        Mode::Plain => eprintln!("{line}"),
        Mode::Terminal => {
            if let Some(bar) = &c.bar {
                bar.finish_and_clear();
            }
            eprintln!("{line}");
        }
    }
}

/// `stage: 12.3s, 1.2 GiB at 100.0 MiB/s`: what a finished stage did.
fn summary(c: &Current, took: Duration, ok: bool) -> String {
    let secs = took.as_secs_f64();
    let mut line = format!("{} {}: {secs:.1}s", if ok { "done" } else { "FAILED" }, c.name);
    match c.unit {
        Some(Unit::Bytes) if c.done > 0 => {
            let rate = if secs > 0.0 { (c.done as f64 / secs) as u64 } else { 0 };
            line.push_str(&format!(", {} at {}/s", crate::size::ByteSize(c.done), crate::size::ByteSize(rate)));
        }
        Some(Unit::Items(what)) if c.done > 0 || c.total.is_some() => {
            line.push_str(&format!(", {} {what}", c.done));
            if let Some(total) = c.total.filter(|t| *t != c.done) {
                line.push_str(&format!(" of {total}"));
            }
        }
        _ => {}
    }
    line
}

fn unit_name(unit: Option<Unit>) -> Option<&'static str> {
    unit.map(|u| match u {
        Unit::Bytes => "bytes",
        Unit::Items(what) => what,
    })
}

fn style(unit: Option<Unit>, total: Option<u64>) -> indicatif::ProgressStyle {
    let template = match (unit, total) {
        (Some(Unit::Bytes), Some(_)) => {
            "{spinner} {prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {wide_msg}"
                .to_string()
        }
        (Some(Unit::Bytes), None) => {
            "{spinner} {prefix} {bytes} {binary_bytes_per_sec} ({elapsed}) {wide_msg}".to_string()
        }
        (Some(Unit::Items(what)), Some(_)) => {
            format!("{{spinner}} {{prefix}} [{{bar:30}}] {{pos}}/{{len}} {what} eta {{eta}} ({{elapsed}}) {{wide_msg}}")
        }
        (Some(Unit::Items(what)), None) => format!("{{spinner}} {{prefix}} {{pos}} {what} ({{elapsed}}) {{wide_msg}}"),
        (None, _) => "{spinner} {prefix} ({elapsed}) {wide_msg}".to_string(),
    };
    indicatif::ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
        .progress_chars("=> ")
}

fn emit(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) must not end the build: the events are a view of it.
    let _ = writeln!(out, "{value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current(unit: Option<Unit>, total: Option<u64>, done: u64) -> Current {
        let now = Instant::now();
        Current { name: "hash".into(), started: now, unit, total, done, phase: None, bar: None, last_json: now }
    }

    #[test]
    fn summaries_say_what_was_done_and_how_fast() {
        let s = summary(&current(Some(Unit::Bytes), Some(4 << 20), 4 << 20), Duration::from_secs(2), true);
        assert_eq!(s, "done hash: 2.0s, 4MiB at 2MiB/s");
        let s = summary(&current(Some(Unit::Items("files")), Some(5), 3), Duration::from_millis(500), false);
        assert_eq!(s, "FAILED hash: 0.5s, 3 files of 5");
        let s = summary(&current(None, None, 0), Duration::from_millis(100), true);
        assert_eq!(s, "done hash: 0.1s");
        // Plain lines carry no control characters.
        assert!(!s.chars().any(char::is_control));
    }
}
