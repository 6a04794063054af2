//! Shared pieces of the benchmarks: timing child processes, sampling their peak memory, and
//! printing results as ratios against a baseline measured in the same run.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A finished child process: how long it took and its peak resident set size.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub wall: Duration,
    /// Peak RSS in bytes (`VmHWM`, sampled every 5 ms until the process exits).
    pub peak_rss: u64,
}

fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs `program args`, timing it and sampling its peak RSS; fails with stderr if it fails.
pub fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Run> {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        if let Some(hwm) = vm_hwm(pid) {
            peak = peak.max(hwm);
        }
        if let Some(status) = child.try_wait().context("waiting for a benchmark process")? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = start.elapsed();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err).ok();
        }
        bail!("`{program} {}` failed ({status}): {err}", args.join(" "));
    }
    Ok(Run { wall, peak_rss: peak })
}

/// The demo's test image (with the VM tests' command channel), from the cache the VM tests
/// share under the target directory, with the same appliance program they install
/// (`appliance-under-test`), so the benchmark boots the very image the tests boot.
pub fn demo_test_image() -> Result<qemu_tests::test_image::TestImage> {
    test_image(&qemu_tests::test_image::Recipe::image("demo"))
}

/// A recipe's test image (e.g. a later release of the demo), like [`demo_test_image`].
pub fn test_image(recipe: &qemu_tests::test_image::Recipe) -> Result<qemu_tests::test_image::TestImage> {
    let exe = std::env::current_exe().context("locating the benchmark binary")?;
    let profile_dir = exe.parent().context("benchmark binary has no directory")?;
    let appliance = profile_dir.join("appliance-under-test");
    if !appliance.exists() {
        bail!("{} not found: run `cargo build --release -p qemu-tests` first", appliance.display());
    }
    let target = profile_dir.parent().context("the profile directory is inside the target directory")?;
    qemu_tests::test_image::test_image(recipe, &appliance, &target.join("tmp"))
}

/// The `airlock` binary built next to this benchmark (same profile).
pub fn airlock_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the benchmark binary")?;
    let dir = exe.parent().context("benchmark binary has no directory")?;
    let airlock = dir.join("airlock");
    if !airlock.exists() {
        bail!("{} not found: run `cargo build --release --workspace` first", airlock.display());
    }
    Ok(airlock)
}

pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

pub fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Deterministic pseudo-random bytes (xorshift).
pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    seed |= 1;
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}
