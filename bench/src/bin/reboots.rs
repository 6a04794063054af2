//! Reboots of the demo appliance under the VM harness: how often one hangs or the guest
//! kernel oopses, and what each way of running qemu costs in boot time.
//!
//! Each option is one VM booted from the demo test image (the one the VM tests boot). All
//! are first booted to `airlock: ready` one after the other, then rebooted round by round,
//! one VM at a time while the others are paused, so that every option sees the same host
//! load; the baseline is the first option listed, and every time is also given as a ratio to
//! it. A reboot is `systemctl reboot` until the appliance's banner again. One that does not get
//! there within `REBOOT_TIMEOUT` counts as a hang, a guest kernel panic as an oops (`int3` or
//! other), `airlock: failed` (a unit that did not start in time) as a stack failure; either
//! way the VM is then powered off and on again and the rounds go on. An option whose first
//! boot fails is dropped, saying so. Oopses are counted from the whole serial log, so one the
//! harness powered a VM off and on past (it does that once per process) is counted too.
//!
//! Options: `mttcg` (one host thread per vCPU, 2 vCPUs, resets inside qemu: the harness as it
//! was), `single` (`-accel tcg,thread=single`, 2 vCPUs), `smp1` (1 vCPU), `fresh` (2 vCPUs in
//! threads, every reset a new qemu process: `-no-reboot`), `single-fresh`.
//!
//! Usage: `cargo build --release -p qemu-tests && cargo run --release -p airlock-bench --bin
//! reboots -- [--reboots N] [--options mttcg,single,...]` (as root).

use airlock_bench::*;
use anyhow::{Context, Result, bail};
use qemu_tests::{GuestReset, TcgThreads, Vm, VmConfig};
use std::time::{Duration, Instant};

/// A first boot pulls the stack's images; under TCG on a busy host that takes up to a quarter
/// of an hour.
const FIRST_BOOT_TIMEOUT: Duration = Duration::from_secs(1800);
/// A second boot takes about a minute under TCG on an idle host, several on a busy one;
/// fifteen minutes is a hang (the report quotes the console, which tells a silent machine from
/// a slow one).
const REBOOT_TIMEOUT: Duration = Duration::from_secs(900);

#[derive(Debug, Clone, Copy)]
struct Choice {
    name: &'static str,
    cpus: u32,
    threads: TcgThreads,
    reset: GuestReset,
}

const CHOICES: &[Choice] = &[
    Choice { name: "mttcg", cpus: 2, threads: TcgThreads::Multi, reset: GuestReset::InPlace },
    Choice { name: "single", cpus: 2, threads: TcgThreads::Single, reset: GuestReset::InPlace },
    Choice { name: "smp1", cpus: 1, threads: TcgThreads::Multi, reset: GuestReset::InPlace },
    Choice { name: "fresh", cpus: 2, threads: TcgThreads::Multi, reset: GuestReset::NewProcess },
    Choice { name: "single-fresh", cpus: 2, threads: TcgThreads::Single, reset: GuestReset::NewProcess },
];

/// What one reboot came to.
#[derive(Debug)]
enum Outcome {
    Ready(Duration),
    Hang(String),
    Oops {
        int3: bool,
        lines: String,
    },
    /// The appliance said `airlock: failed`: a unit of its stack did not start in time.
    StackFailed(String),
}

impl Outcome {
    fn is_ready(&self) -> bool {
        matches!(self, Outcome::Ready(_))
    }
}

struct Tally {
    choice: Choice,
    vm: Vm,
    first_boot: Duration,
    outcomes: Vec<Outcome>,
}

fn config(choice: Choice, image: &std::path::Path) -> VmConfig {
    VmConfig {
        cpus: choice.cpus,
        tcg_threads: choice.threads,
        guest_reset: choice.reset,
        forwards: vec![80],
        ..VmConfig::new(&format!("reboots-{}", choice.name), image)
    }
}

/// `systemctl reboot`, then `airlock: ready` again; a failure is classified, then the VM is
/// powered off and on again so the next round finds it ready.
fn reboot(vm: &mut Vm, name: &str) -> Result<Outcome> {
    let started = Instant::now();
    let result = vm.reboot(REBOOT_TIMEOUT).and_then(|()| {
        let left = REBOOT_TIMEOUT.saturating_sub(started.elapsed());
        banner(vm, left)
    });
    let outcome = match result {
        Ok(true) => return Ok(Outcome::Ready(started.elapsed())),
        Ok(false) => Outcome::StackFailed(qemu_tests::command::tail_lines(&vm.console_since_boot(), 8).to_owned()),
        Err(err) => {
            let console = vm.console_since_boot();
            match console.find("Kernel panic - not syncing") {
                Some(at) => {
                    let before = &console[..at];
                    let int3 = before.rfind("Oops: ").is_some_and(|o| before[o..].starts_with("Oops: int3"));
                    let end = at + 60.min(console.len() - at);
                    Outcome::Oops { int3, lines: qemu_tests::command::tail_lines(&console[..end], 25).to_owned() }
                }
                None => {
                    let tail = qemu_tests::command::tail_lines(&console, 8).to_owned();
                    Outcome::Hang(format!("{err:#}\n  console since the reset:\n{tail}"))
                }
            }
        }
    };
    eprintln!("!! {name}: {outcome:?}");
    vm.crash()?;
    vm.boot_again()?;
    if !banner(vm, FIRST_BOOT_TIMEOUT).context("the banner after the power cycle")? {
        bail!("{name}: the stack failed again after the power cycle");
    }
    Ok(outcome)
}

/// Waits for the appliance's verdict on the console: `true` for `airlock: ready`, `false`
/// for `airlock: failed` (a unit that did not start in time, on a host this slow).
fn banner(vm: &mut Vm, timeout: Duration) -> Result<bool> {
    let start = vm.console_len();
    let end = vm.wait_for_console_after(start, "airlock: ", timeout)?;
    // The word after the prefix may not be on the console yet.
    vm.wait_for_console_after(end, "\n", Duration::from_secs(60))?;
    let verdict = vm.serial_log().get(end as usize..).unwrap_or_default().to_owned();
    Ok(verdict.starts_with("ready"))
}

fn parse_args() -> Result<(u32, Vec<Choice>)> {
    let mut reboots = 30;
    let mut choices: Vec<Choice> = CHOICES.iter().copied().take(4).collect();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--reboots" => reboots = args.next().context("--reboots needs a number")?.parse()?,
            "--options" => {
                let list = args.next().context("--options needs a list")?;
                choices = list
                    .split(',')
                    .map(|n| CHOICES.iter().find(|c| c.name == n).copied().with_context(|| format!("no option {n}")))
                    .collect::<Result<_>>()?;
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok((reboots, choices))
}

fn main() -> Result<()> {
    qemu_tests::init_logging();
    let (reboots, choices) = parse_args()?;
    let image = demo_test_image()?;
    eprintln!("== image {}", image.image.display());
    let mut tallies = Vec::new();
    let mut dropped = Vec::new();
    for &choice in &choices {
        let started = Instant::now();
        let mut vm = Vm::boot(config(choice, &image.image))?;
        let ready =
            banner(&mut vm, FIRST_BOOT_TIMEOUT).with_context(|| format!("first boot of option {}", choice.name))?;
        let first_boot = started.elapsed();
        if !ready {
            let tail = qemu_tests::command::tail_lines(&vm.console_since_boot(), 8).to_owned();
            eprintln!("== {}: first boot FAILED after {}:\n{tail}", choice.name, secs(first_boot));
            dropped.push(format!(
                "{}: its first boot said `airlock: failed` after {}:\n{tail}",
                choice.name,
                secs(first_boot)
            ));
            vm.crash()?;
            continue;
        }
        eprintln!("== {}: first boot to ready in {}", choice.name, secs(first_boot));
        vm.pause()?;
        tallies.push(Tally { choice, vm, first_boot, outcomes: Vec::new() });
    }
    for d in &dropped {
        println!("dropped {d}");
    }
    if tallies.is_empty() {
        bail!("no option got through its first boot");
    }
    for round in 1..=reboots {
        for t in &mut tallies {
            t.vm.resume()?;
            let outcome = reboot(&mut t.vm, t.choice.name)?;
            eprintln!("== round {round}/{reboots}, {}: {outcome:?}", t.choice.name);
            t.outcomes.push(outcome);
            t.vm.pause()?;
        }
        if round % 5 == 0 && round < reboots {
            report(&tallies, round);
        }
    }
    report(&tallies, reboots);
    Ok(())
}

fn report(tallies: &[Tally], reboots: u32) {
    println!("reboots of images/demo under the harness (accelerator: {})", qemu_tests::probe_accel());
    println!("{reboots} rounds; the options take turns within each round, the others paused");
    let base = &tallies[0];
    let mean = |t: &Tally| -> Option<f64> {
        let ok: Vec<f64> = t
            .outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Ready(d) => Some(d.as_secs_f64()),
                _ => None,
            })
            .collect();
        (!ok.is_empty()).then(|| ok.iter().sum::<f64>() / ok.len() as f64)
    };
    // Per round, the option's reboot time over the baseline's in the same round.
    let ratio = |t: &Tally| -> Option<f64> {
        let pairs: Vec<f64> = t
            .outcomes
            .iter()
            .zip(&base.outcomes)
            .filter_map(|(o, b)| match (o, b) {
                (Outcome::Ready(d), Outcome::Ready(b)) => Some(d.as_secs_f64() / b.as_secs_f64()),
                _ => None,
            })
            .collect();
        (!pairs.is_empty()).then(|| pairs.iter().sum::<f64>() / pairs.len() as f64)
    };
    println!(
        "  {:<14} {:>7} {:>6} {:>9} {:>6} {:>6}   {:>11} {:>9}   {:>11} {:>9}",
        "option", "ready", "hangs", "int3 oops", "other", "stack", "reboot mean", "ratio", "first boot", "ratio"
    );
    for t in tallies {
        let hangs = t.outcomes.iter().filter(|o| matches!(o, Outcome::Hang(_))).count();
        let stack = t.outcomes.iter().filter(|o| matches!(o, Outcome::StackFailed(_))).count();
        // From the whole serial log: the harness may have powered a VM off and on again past
        // one `int3` oops itself (once per thread, saying so), so the outcomes may not show it.
        let log = t.vm.serial_log();
        let panics = log.matches("Kernel panic - not syncing").count();
        let int3 = log.matches("Oops: int3").count();
        let other = panics.saturating_sub(int3);
        let show = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.2}{unit}"));
        println!(
            "  {:<14} {:>7} {:>6} {:>9} {:>6} {:>6}   {:>11} {:>9}   {:>11} {:>9}",
            t.choice.name,
            format!("{}/{}", t.outcomes.iter().filter(|o| o.is_ready()).count(), t.outcomes.len()),
            hangs,
            int3,
            other,
            stack,
            show(mean(t), "s"),
            show(ratio(t), "x"),
            secs(t.first_boot),
            format!("{:.2}x", t.first_boot.as_secs_f64() / base.first_boot.as_secs_f64()),
        );
    }
    for t in tallies {
        for (i, o) in t.outcomes.iter().enumerate() {
            match o {
                Outcome::Ready(_) => {}
                Outcome::Hang(what) => println!("{} reboot {}: hang: {what}", t.choice.name, i + 1),
                Outcome::StackFailed(tail) => println!("{} reboot {}: airlock: failed:\n{tail}", t.choice.name, i + 1),
                Outcome::Oops { int3, lines } => {
                    let kind = if *int3 { "int3 oops" } else { "kernel panic" };
                    println!("{} reboot {}: {kind}:\n{lines}", t.choice.name, i + 1);
                }
            }
        }
    }
}
