//! First boot of the demo stack (issue: container images, registry, stack): from power-on to
//! `airlock: ready`, and how it splits — boot to the registry, the image pulls podman makes from
//! the appliance's own registry, and the services' start (database health, migration, API,
//! console). The baseline, in the same run and the same VM: the second boot, which pulls and
//! migrates nothing.
//!
//! Times inside the guest come from systemd's monotonic timestamps (zero at kernel start) and
//! from the journal's monotonic stamps of podman's pull messages; the wall time of the first
//! boot includes the firmware.
//!
//! Usage: `cargo build --release && cargo run --release -p airlock-bench --bin
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
    if out.is_empty() || out.iter().any(|p| p.end.is_zero()) {
        bail!("the journal shows no complete image pull:\n{log}");
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
    let pulled = vm.succeed("du -shx /var/lib/airlock/containers/storage | cut -f1")?;

    vm.reboot(BOOT_TIMEOUT)?;
    vm.wait_for_console("airlock: ready", FIRST_BOOT_TIMEOUT)?;
    let ready2 = mono(&mut vm, "airlock-ready.target", "ActiveEnterTimestampMonotonic")?;
    let registry2 = mono(&mut vm, "docker-registry.service", "ActiveEnterTimestampMonotonic")?;
    let pulls2 = vm.execute("journalctl -b --no-pager | grep -c 'Trying to pull'")?.1;
    vm.crash()?;

    let pull_total: Duration = pulls.iter().map(|p| p.end - p.start).sum();
    let services = ready.saturating_sub(registry).saturating_sub(pull_total);
    println!("first boot of images/demo to `airlock: ready` (accelerator: {:?})", vm.accel());
    println!("  {}", analyze.lines().next().unwrap_or_default());
    println!("  power-on to ready (wall, with firmware) {:>8}", secs(wall));
    println!("  kernel start to ready                   {:>8}", secs(ready));
    println!("    boot to registry up                   {:>8}", secs(registry));
    println!("    image pulls from the local registry   {:>8}   ({pulled} on disk after)", secs(pull_total));
    for p in &pulls {
        println!("      {:<36} {:>8}", p.image, secs(p.end - p.start));
    }
    println!("    service start (the rest)              {:>8}", secs(services));
    for (unit, from, to) in &units {
        println!("      {unit:<36} {:>8}   (started at {}, active at {})", secs(*to - *from), secs(*from), secs(*to));
    }
    println!("second boot (baseline: nothing to pull, migration done)");
    println!(
        "  kernel start to ready                   {:>8}   (registry up at {}; pulls: {})",
        secs(ready2),
        secs(registry2),
        pulls2.trim()
    );
    println!("  ratio first / second boot               {:>8.2}x", ready.as_secs_f64() / ready2.as_secs_f64());
    println!(
        "  share of first boot spent pulling       {:>8.0}%",
        100.0 * pull_total.as_secs_f64() / ready.as_secs_f64()
    );
    Ok(())
}
