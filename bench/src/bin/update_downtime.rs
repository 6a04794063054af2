//! Offline updates (issue 17): the downtime of an update — from `systemctl reboot` after the
//! bundle is staged to `airlock: ready` on the new version — against a plain reboot of the same
//! appliance (the baseline), in one VM, round by round.
//!
//! Each round boots a fresh VM from the demo test image (0.1.0, the image the VM tests boot)
//! to ready (not timed), reboots it (the baseline), plugs in a USB stick holding the bundle of
//! the demo built as 0.2.0 (signed with the test cache's TEST release key, as in
//! `qemu-tests/tests/boot.rs`), applies it with `airlock update apply` and reboots into it. An
//! update's boot does more than a plain one: the new version's first try saves the stack's
//! state, and its stack starts from a root it has not run before. The apply is timed too
//! (under TCG; `bench/src/bin/update.rs` measures it natively against `dd`).
//!
//! Usage: `cargo build --release --workspace && cargo run --release -p airlock-bench --bin
//! update_downtime -- [--rounds N]` (as root).

use airlock_bench::*;
use anyhow::{Context, Result, bail};
use qemu_tests::test_image::Recipe;
use qemu_tests::{Vm, VmConfig};
use std::time::{Duration, Instant};

const FIRST_BOOT_TIMEOUT: Duration = Duration::from_secs(1800);
const TIMEOUT: Duration = Duration::from_secs(1200);

/// `systemctl reboot`, then the banner of `version` on the console (its `appliance:` line);
/// returns the time in between. The banner must say ready.
fn reboot_to(vm: &mut Vm, version: &str) -> Result<Duration> {
    let started = Instant::now();
    let offset = vm.console_len();
    vm.reboot(TIMEOUT)?;
    vm.wait_for_console_after(offset, &format!("appliance: demo {version}"), TIMEOUT)?;
    let took = started.elapsed();
    let banner = vm.succeed("cat /run/airlock/banner")?;
    if !banner.starts_with("airlock: ready\n") {
        bail!("demo {version} did not come up ready: {banner}");
    }
    Ok(took)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    qemu_tests::init_logging();
    let mut rounds = 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => rounds = args.next().context("--rounds needs a number")?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    let first = demo_test_image()?;
    let next = test_image(&Recipe::image("demo").release("0.2.0", Vec::new()))?;
    let (v1, v2) = (first.plan.version.clone(), next.plan.version.clone());
    let work = tempfile::Builder::new().prefix("airlock-bench-downtime-").tempdir()?;
    let bundle = next.bundle();
    let stick = qemu_tests::usb_stick::fat_stick(work.path(), "BUNDLES", &[(&format!("demo_{v2}.update"), &bundle)])?;
    let (mut plain, mut update, mut apply) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut vm = Vm::boot(VmConfig { usb: true, forwards: vec![80], ..VmConfig::new("downtime", &first.image) })?;
        vm.wait_for_console("airlock: ready", FIRST_BOOT_TIMEOUT).context("the first boot")?;
        plain.push(reboot_to(&mut vm, &v1)?);
        vm.plug_usb_drive("bundles", &stick)?;
        let started = Instant::now();
        vm.succeed(&format!(
            "for i in $(seq 60); do [ -e /dev/disk/by-label/BUNDLES ] && break; sleep 1; done; \
             mkdir -p /run/bundles && mount -o ro /dev/disk/by-label/BUNDLES /run/bundles && \
             airlock update apply /run/bundles/demo_{v2}.update && umount /run/bundles"
        ))?;
        apply.push(started.elapsed());
        update.push(reboot_to(&mut vm, &v2)?);
        eprintln!(
            "== round {}/{rounds}: plain reboot {}, apply {}, reboot into {v2} {}",
            round + 1,
            secs(plain[round]),
            secs(apply[round]),
            secs(update[round])
        );
        vm.shutdown(Duration::from_secs(180))?;
    }
    let (p, u, a) = (median(plain), median(update), median(apply));
    println!("update downtime (reboot to `airlock: ready` on the new version), {rounds} rounds, TCG, medians:");
    println!("  plain reboot (baseline)     {}", secs(p));
    println!("  reboot into the update      {}  ({:.2}x the baseline)", secs(u), u.as_secs_f64() / p.as_secs_f64());
    println!("  apply (under TCG, not down) {}", secs(a));
    Ok(())
}
