//! Build and boot benchmark (issue: bootable appliance).
//!
//! In one run: `airlock build` of `images/demo` with a cold cache (mmdebstrap included) and a
//! warm one, per stage; then boot time to `airlock: ready` under the accelerator the harness
//! picks. Side by side, the baseline: the same package set made the conventional way
//! (`mmdebstrap` to a directory, then the repart-style offline assembly — `mkfs.vfat` + `mcopy`
//! for the ESP, `mke2fs -d` for the root, `sgdisk` for the table; the host's systemd-repart 252
//! would need loop devices for this), booted the same way to its login prompt (multi-user).
//!
//! Usage: `cargo build --release --workspace && cargo run --release -p airlock-bench --bin boot` (as root, for mmdebstrap and
//! `mke2fs -d` of a root-owned tree).

use airlock::pipeline::{BuildOptions, BuildReport};
use airlock_bench::*;
use anyhow::{Context, Result};
use qemu_tests::{BOOT_TIMEOUT, Vm, VmConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const EPOCH: i64 = 1_700_000_000;

/// Pins the demo's container images into `cache` (they are built by
/// `images/demo/containers/build-images`, which must have run).
fn fetch(plan: &airlock::plan::BuildPlan, cache: &Path) -> Result<Duration> {
    let start = Instant::now();
    let opts =
        airlock::fetch::FetchOptions { cache_dir: cache.to_path_buf(), update: true, registry: Default::default() };
    airlock::fetch::fetch(plan, &opts)?;
    Ok(start.elapsed())
}

fn build(plan: &airlock::plan::BuildPlan, cache: &Path, out: &Path) -> Result<(Duration, BuildReport)> {
    build_with(plan, cache, out, None)
}

fn build_with(
    plan: &airlock::plan::BuildPlan,
    cache: &Path,
    out: &Path,
    secure_boot: Option<airlock::secure_boot::OwnerKeys>,
) -> Result<(Duration, BuildReport)> {
    let opts = BuildOptions {
        out_dir: out.to_path_buf(),
        cache_dir: cache.to_path_buf(),
        clock: airlock::clock::BuildClock::fixed(EPOCH),
        test_overlays: Vec::new(),
        // The raw image alone: derived formats are measured by the outputs' own tests.
        formats: Some(vec![airlock::outputs::Format::Raw]),
        signing_key: None,
        appliance: airlock::pipeline::ApplianceProgram::NextToExecutable,
        secure_boot,
    };
    let start = Instant::now();
    let report = airlock::pipeline::build(plan, &opts)?;
    Ok((start.elapsed(), report))
}

fn cmd(program: &str, args: &[&str]) -> Result<Duration> {
    Ok(run(program, args, &[("SOURCE_DATE_EPOCH", "1700000000")])?.wall)
}

/// The conventional image: mmdebstrap to a directory, then an offline repart-style assembly.
fn baseline_image(plan: &airlock::plan::BuildPlan, work: &Path) -> Result<(Duration, Duration, PathBuf)> {
    let root = work.join("baseline-root");
    let packages = plan.base.packages.join(",");
    let mmdebstrap = cmd(
        "mmdebstrap",
        &["--variant=minbase", &format!("--include={packages}"), &plan.base.suite, path_str(&root)?, &plan.base.mirror],
    )?;
    let start = Instant::now();
    let kernel = std::fs::read_dir(root.join("boot"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("vmlinuz-").map(String::from))
        .next()
        .context("no kernel in the baseline root")?;
    let root_uuid = "6b5b4f4e-8c1a-4d5e-9f3a-2b1c0d9e8f7a";
    let esp = work.join("baseline-esp.img");
    cmd("truncate", &["-s", "256M", path_str(&esp)?])?;
    cmd("mkfs.vfat", &["-F", "32", "-S", "512", path_str(&esp)?])?;
    let stage = work.join("baseline-esp");
    for d in ["EFI/BOOT", "loader/entries"] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    std::fs::copy(root.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"), stage.join("EFI/BOOT/BOOTX64.EFI"))?;
    std::fs::copy(root.join(format!("boot/vmlinuz-{kernel}")), stage.join("vmlinuz"))?;
    std::fs::copy(root.join(format!("boot/initrd.img-{kernel}")), stage.join("initrd.img"))?;
    std::fs::write(stage.join("loader/loader.conf"), "timeout 0\n")?;
    std::fs::write(
        stage.join("loader/entries/baseline.conf"),
        format!(
            "title baseline\nlinux /vmlinuz\ninitrd /initrd.img\noptions root=PARTUUID={root_uuid} rw console=tty0 console=ttyS0,115200 systemd.firstboot=off\n"
        ),
    )?;
    for entry in ["EFI", "loader", "vmlinuz", "initrd.img"] {
        cmd("mcopy", &["-s", "-i", path_str(&esp)?, path_str(&stage.join(entry))?, "::/"])?;
    }
    let image = work.join("baseline.raw");
    cmd("truncate", &["-s", "3G", path_str(&image)?])?;
    cmd(
        "sgdisk",
        &[
            "-n",
            "1:1M:+256M",
            "-t",
            "1:ef00",
            "-n",
            "2:0:+2560M",
            "-t",
            "2:4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
            "-u",
            &format!("2:{root_uuid}"),
            path_str(&image)?,
        ],
    )?;
    cmd(
        "dd",
        &[
            &format!("if={}", path_str(&esp)?),
            &format!("of={}", path_str(&image)?),
            "bs=1M",
            "seek=1",
            "conv=notrunc,sparse",
        ],
    )?;
    // Root at 257 MiB, 2560 MiB long = 655360 blocks of 4 KiB.
    cmd(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-d",
            path_str(&root)?,
            "-E",
            &format!("offset={}", 257u64 << 20),
            path_str(&image)?,
            "655360",
        ],
    )?;
    let assemble = start.elapsed();
    std::process::Command::new("rm").args(["-rf", path_str(&root)?, path_str(&stage)?]).status()?;
    Ok((mmdebstrap, assemble, image))
}

/// The demo as its spec says but without verity (a writable root, no hash tree).
fn without_verity(plan: &airlock::plan::BuildPlan) -> airlock::plan::BuildPlan {
    let mut plan = plan.clone();
    plan.disk.verity = false;
    plan.disk.partitions.retain(|p| !matches!(p.role, airlock::partition::Role::RootVerity(_)));
    plan
}

/// The stages that make the verified boot chain, and their sum.
fn chain_stages(report: &BuildReport) -> (Duration, String) {
    const CHAIN: [&str; 3] = ["sign boot loader", "hash root (dm-verity)", "make UKI and ESP"];
    let parts: Vec<(&str, Duration)> =
        report.stages.iter().filter(|(s, _)| CHAIN.contains(s)).map(|(s, d)| (*s, *d)).collect();
    let text = parts.iter().map(|(s, d)| format!("{s} {}", secs(*d))).collect::<Vec<_>>().join(", ");
    (parts.iter().map(|(_, d)| *d).sum(), text)
}

fn boot_until(name: &str, image: &Path, needles: &[&str]) -> Result<Vec<Duration>> {
    boot_until_with(name, image, needles, false)
}

fn boot_until_with(name: &str, image: &Path, needles: &[&str], secure_boot: bool) -> Result<Vec<Duration>> {
    let start = Instant::now();
    let mut vm = Vm::boot(VmConfig { secure_boot, ..VmConfig::new(name, image) })?;
    let mut times = Vec::new();
    for n in needles {
        vm.wait_for_console(n, BOOT_TIMEOUT)?;
        times.push(start.elapsed());
    }
    vm.crash()?;
    Ok(times)
}

fn print_stages(label: &str, total: Duration, report: &BuildReport) {
    println!("  {label:<28} {:>8}", secs(total));
    for (stage, d) in &report.stages {
        println!("    {stage:<26} {:>8}", secs(*d));
    }
}

fn main() -> Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("bench/ is in the repository")?;
    let plan = airlock::plan::plan(&repo.join("images/demo/appliance.toml"), &Default::default())?;
    let work = tempfile::Builder::new().prefix("airlock-bench-boot-").tempdir_in("/var/tmp")?;
    let cache = work.path().join("cache");

    let fetched = fetch(&plan, &cache)?;
    let (cold, cold_report) = build(&plan, &cache, &work.path().join("out-cold"))?;
    let cold = cold + fetched;
    let (warm, warm_report) = build(&plan, &cache, &work.path().join("out-warm"))?;
    let (mm, assemble, baseline) = baseline_image(&plan, work.path())?;
    // The verified chain: the same warm build signed with the owner's keys, and without verity.
    let keys_prefix = work.path().join("keys/owner");
    std::fs::create_dir_all(work.path().join("keys"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    airlock::secure_boot::generate(&keys_prefix, now)?;
    let keys = airlock::secure_boot::OwnerKeys::load(&keys_prefix, now)?;
    let (signed, signed_report) = build_with(&plan, &cache, &work.path().join("out-signed"), Some(keys))?;
    let (plain, plain_report) = build(&without_verity(&plan), &cache, &work.path().join("out-plain"))?;
    let signed_times = boot_until_with("signed", &signed_report.image, &["airlock: ready"], true)?;
    let plain_times = boot_until("plain", &plain_report.image, &["airlock: ready"])?;

    let airlock_times = boot_until("airlock", &warm_report.image, &["airlock: ready", " login:"])?;
    // The login prompt marks multi-user for both: systemd's status lines are truncated, and cut
    // off once getty owns the console, so they make no reliable marker.
    let baseline_times = boot_until("baseline", &baseline, &[" login:"])?;

    println!("build (images/demo, {} packages):", warm_report.packages.len());
    println!("  (cold includes `airlock fetch` of the demo's container images: {})", secs(fetched));
    print_stages("airlock, cold cache", cold, &cold_report);
    print_stages("airlock, warm cache", warm, &warm_report);
    println!(
        "  {:<28} {:>8}   (mmdebstrap {}, assembly {})",
        "baseline: mmdebstrap + mkfs",
        secs(mm + assemble),
        secs(mm),
        secs(assemble)
    );
    println!("  ratio cold / baseline        {:>8.2}x", cold.as_secs_f64() / (mm + assemble).as_secs_f64());
    println!("  ratio warm / baseline        {:>8.2}x", warm.as_secs_f64() / (mm + assemble).as_secs_f64());
    println!("boot (accelerator: {:?}):", qemu_tests::probe_accel());
    println!("  airlock: `airlock: ready`    {:>8}", secs(airlock_times[0]));
    println!("  airlock: login prompt        {:>8}", secs(airlock_times[1]));
    println!("  baseline: login prompt       {:>8}", secs(baseline_times[0]));
    println!(
        "  ratio ready / baseline login {:>8.2}x",
        airlock_times[0].as_secs_f64() / baseline_times[0].as_secs_f64()
    );
    println!(
        "  ratio login / baseline login {:>8.2}x",
        airlock_times[1].as_secs_f64() / baseline_times[0].as_secs_f64()
    );
    let (chain, chain_text) = chain_stages(&signed_report);
    let (plain_chain, plain_text) = chain_stages(&plain_report);
    println!("verified boot (warm builds):");
    println!("  verity + Secure Boot build   {:>8}   (chain {}: {chain_text})", secs(signed), secs(chain));
    println!("  no verity, unsigned build    {:>8}   (chain {}: {plain_text})", secs(plain), secs(plain_chain));
    println!("  ratio build signed / plain   {:>8.2}x", signed.as_secs_f64() / plain.as_secs_f64());
    println!("  ready, verity + Secure Boot  {:>8}   (includes the enrollment reset)", secs(signed_times[0]));
    println!("  ready, no verity             {:>8}", secs(plain_times[0]));
    println!("  ratio ready signed / plain   {:>8.2}x", signed_times[0].as_secs_f64() / plain_times[0].as_secs_f64());
    Ok(())
}
