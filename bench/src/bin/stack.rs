//! First boot of the demo stack: from power-on to `airlock: ready`, and how it splits — boot to
//! the registry, and the services' start (database health, migration, API, console), which
//! run their containers from the read-only image store in the root (no pulls; any pull the
//! journal shows is reported). The baseline, in the same run and the same VM: the second boot,
//! which migrates nothing. Also what the images cost in the root: the image store (unpacked)
//! next to the registry's storage (compressed), which both travel in the root.
//!
//! Times inside the guest come from systemd's monotonic timestamps (zero at kernel start) and
//! from the journal's monotonic stamps of podman's pull messages; the wall time of the first
//! boot includes the firmware.
//!
//! Usage: `cargo build --release --workspace && cargo run --release -p airlock-bench --bin
//! stack` (as root). It boots the VM tests' demo image, from their cache or built into it.

use airlock_bench::*;
use anyhow::{Context, Result, bail};
use qemu_tests::{BOOT_TIMEOUT, Vm, VmConfig};
use std::time::{Duration, Instant};

/// First boot under TCG on a busy 2-core host can take minutes.
const FIRST_BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// The demo stack's units, in start order.
const STACK: &[&str] = &["db.service", "migrate.service", "api.service", "console.service"];

/// systemd's monotonic timestamp (µs since kernel start) of `property` of `unit`.
fn mono(vm: &mut Vm, unit: &str, property: &str) -> Result<Duration> {
    let out = vm.succeed(&format!("systemctl show -P {property} {unit}"))?;
    let us: u64 = out.trim().parse().with_context(|| format!("{unit} {property}: `{}`", out.trim()))?;
    if us == 0 {
        bail!("{unit} has no {property}");
    }
    Ok(Duration::from_micros(us))
}

/// One image pull as the journal shows it: podman's first "Trying to pull" for the image and
/// the "Writing manifest" that ends it.
struct Pull {
    image: String,
    start: Duration,
    end: Duration,
}

fn pulls(vm: &mut Vm) -> Result<Vec<Pull>> {
    let units: Vec<String> = STACK.iter().map(|u| format!("-u {u}")).collect();
    let log = vm.succeed(&format!("journalctl -b -o short-monotonic --no-pager {}", units.join(" ")))?;
    let stamp = |line: &str| -> Option<Duration> {
        let inner = line.strip_prefix('[')?.split(']').next()?.trim();
        Some(Duration::from_secs_f64(inner.parse().ok()?))
    };
    let mut out: Vec<Pull> = Vec::new();
    let mut open: Option<usize> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Trying to pull ").nth(1) {
            let image = rest.trim_end_matches("...").trim().to_string();
            if !out.iter().any(|p| p.image == image) {
                out.push(Pull {
                    image,
                    start: stamp(line).context("journal line without a stamp")?,
                    end: Duration::ZERO,
                });
                open = Some(out.len() - 1);
            }
        } else if line.contains("Writing manifest to image destination")
            && let Some(i) = open.take()
        {
            out[i].end = stamp(line).context("journal line without a stamp")?;
        }
    }
    if out.iter().any(|p| p.end.is_zero()) {
        bail!("the journal shows an image pull that did not end:\n{log}");
    }
    Ok(out)
}

/// Writes of the database workload that weighs `data=journal` against `data=ordered`.
const DB_WRITES: u32 = 5000;

/// The stack's own database server (the demo's db image, from the store) under a write-heavy
/// load, with its data on ext4 mounted `data=journal` and `data=ordered` in turn (twice each,
/// alternating): loop files on the data partition, so both pay the same outer filesystem and
/// only the inner mode differs. Returns (mode, writes per second) per run.
fn data_journal_cost(vm: &mut Vm) -> Result<Vec<(&'static str, f64)>> {
    let mut out = Vec::new();
    for (run, mode) in ["journal", "ordered", "journal", "ordered"].into_iter().enumerate() {
        let dir = format!("/run/bench-{run}");
        let img = format!("/var/tmp/bench-{run}.img");
        vm.succeed(&format!(
            "truncate -s 1G {img} && mkfs.ext4 -q -F {img} && mkdir -p {dir} && mount -o loop,data={mode} {img} {dir} \
             && findmnt -no OPTIONS {dir} | grep -q 'data={mode}'"
        ))?;
        let csv = vm.succeed(&format!(
            "podman run --rm --network none -v {dir}:/data --entrypoint /bin/sh demo.airlock.internal/db:1 -c \
             'redis-server --dir /data --appendonly yes --appendfsync always --port 6390 --save \"\" --daemonize yes \
              && sleep 1 && redis-benchmark -p 6390 -t set -n {DB_WRITES} -d 1024 -c 8 --csv'"
        ))?;
        let rps = csv
            .lines()
            .find(|l| l.starts_with("\"SET\""))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
            .with_context(|| format!("no SET rate in redis-benchmark's output:\n{csv}"))?;
        vm.succeed(&format!("umount {dir} && rm {img}"))?;
        out.push((mode, rps));
    }
    Ok(out)
}

fn main() -> Result<()> {
    // The VM tests' demo image: its command channel reads systemd's and the journal's stamps.
    let image = demo_test_image()?;
    let start = Instant::now();
    let mut vm = Vm::boot(VmConfig::new("stack", &image.image))?;
    vm.wait_for_console("airlock: ready", FIRST_BOOT_TIMEOUT)?;
    let wall = start.elapsed();
    let analyze = vm.succeed("systemd-analyze")?;
    let registry = mono(&mut vm, "docker-registry.service", "ActiveEnterTimestampMonotonic")?;
    let ready = mono(&mut vm, "airlock-ready.target", "ActiveEnterTimestampMonotonic")?;
    let mut units = Vec::new();
    for unit in STACK {
        units.push((
            unit,
            mono(&mut vm, unit, "InactiveExitTimestampMonotonic")?,
            mono(&mut vm, unit, "ActiveEnterTimestampMonotonic")?,
        ));
    }
    let pulls = pulls(&mut vm)?;
    let written = vm.succeed("du -shx /var/lib/airlock/containers/storage | cut -f1")?;
    let store = vm.succeed("du -sb /usr/lib/containers/storage | cut -f1")?;
    let registry_storage = vm.succeed("du -sb /usr/share/airlock/registry | cut -f1")?;
    let root_used = vm.succeed("df -B1 --output=used / | tail -1")?;

    vm.reboot(BOOT_TIMEOUT)?;
    vm.wait_for_console("airlock: ready", FIRST_BOOT_TIMEOUT)?;
    let ready2 = mono(&mut vm, "airlock-ready.target", "ActiveEnterTimestampMonotonic")?;
    let registry2 = mono(&mut vm, "docker-registry.service", "ActiveEnterTimestampMonotonic")?;
    let pulls2 = vm.execute("journalctl -b --no-pager | grep -c 'Trying to pull'")?.1;
    let journaling = data_journal_cost(&mut vm)?;
    vm.crash()?;

    let pull_total: Duration = pulls.iter().map(|p| p.end - p.start).sum();
    let services = ready.saturating_sub(registry);
    let mib = |bytes: &str| -> Result<String> {
        let b: u64 = bytes.trim().parse().with_context(|| format!("a size: `{}`", bytes.trim()))?;
        Ok(format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)))
    };
    println!("first boot of images/demo to `airlock: ready` (accelerator: {:?})", vm.accel());
    println!("  {}", analyze.lines().next().unwrap_or_default());
    println!("  power-on to ready (wall, with firmware) {:>8}", secs(wall));
    println!("  kernel start to ready                   {:>8}", secs(ready));
    println!("    boot to registry up                   {:>8}", secs(registry));
    println!("    registry up to ready                  {:>8}", secs(services));
    for (unit, from, to) in &units {
        println!("      {unit:<36} {:>8}   (started at {}, active at {})", secs(*to - *from), secs(*from), secs(*to));
    }
    println!("    image pulls                           {:>8}   ({} pulls)", secs(pull_total), pulls.len());
    for p in &pulls {
        println!("      {:<36} {:>8}", p.image, secs(p.end - p.start));
    }
    println!("  podman's writable storage after         {:>8}", written.trim());
    println!("second boot (baseline: migration done)");
    println!(
        "  kernel start to ready                   {:>8}   (registry up at {}; pulls: {})",
        secs(ready2),
        secs(registry2),
        pulls2.trim()
    );
    println!("  ratio first / second boot               {:>8.2}x", ready.as_secs_f64() / ready2.as_secs_f64());
    println!(
        "the stack's database (redis, AOF fsync always, {DB_WRITES} SETs of 1 KiB) on ext4 in a loop file on /var"
    );
    for (mode, rps) in &journaling {
        println!("  data={mode:<8} {:>10.0} writes/s", rps);
    }
    let mean = |m: &str| {
        let v: Vec<f64> = journaling.iter().filter(|(k, _)| *k == m).map(|(_, r)| *r).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    println!("  ratio data=ordered / data=journal       {:>8.2}x", mean("ordered") / mean("journal"));
    println!("the images in the root filesystem");
    println!("  image store, unpacked                   {:>10}", mib(&store)?);
    println!("  registry storage, compressed            {:>10}", mib(&registry_storage)?);
    println!("  root filesystem used                    {:>10}", mib(&root_used)?);
    Ok(())
}
