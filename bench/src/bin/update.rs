//! Offline updates (issue 17): what a bundle costs to carry and to apply.
//!
//! - size: the update bundle (`<name>_<version>.update`) against the whole image's `raw.zst`
//!   (what a re-flash carries) and against the root and hash tree it replaces, uncompressed;
//! - apply: `airlock update apply` of the bundle into slot B of a copy of the 0.1.0 image
//!   (verify every byte, decompress, write, sync, read back, relabel, install the UKI), paired
//!   run by run against the yardstick `dd` of the same decompressed bytes into the same place
//!   with `conv=fsync`: the goal is apply bounded by disk write speed.
//!
//! Downtime (reboot to `airlock: ready` on the new version) needs the boot assessment and the
//! VM test; it is not measured here yet.
//!
//! It builds the demo twice (as 0.1.0 and 0.2.0, signed with a fresh release key) from a copy
//! of `images/demo` (so the repository is not written), with `raw` and `raw.zst`.
//!
//! Usage: `cargo build --release --workspace && cargo run --release -p airlock-bench --bin update`.

use airlock_bench::*;
use anyhow::{Context, Result, bail};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Builds the demo copy in `spec_dir` as `version` into `out`.
fn build(airlock: &Path, spec_dir: &Path, version: &str, key: &Path, out: &Path) -> Result<()> {
    let spec = spec_dir.join("appliance.toml");
    let text = fs::read_to_string(&spec)?;
    let current = text.lines().find(|l| l.starts_with("version = ")).context("the demo spec has a version")?;
    fs::write(&spec, text.replacen(current, &format!("version = \"{version}\""), 1))?;
    eprintln!("building demo {version} ...");
    sh(
        s(airlock),
        &["build", s(&spec), "--out", s(out), "--format", "raw,raw.zst", "--sign-key", s(&key.with_extension("key"))],
    )?;
    Ok(())
}

fn main() -> Result<()> {
    let airlock = airlock_binary()?;
    let appliance = airlock.with_file_name("airlock-appliance");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the repository")?.to_path_buf();
    let work = tempfile::Builder::new().prefix("airlock-bench-update-").tempdir_in(repo.join("target"))?;
    let w = work.path();
    // The demo's folder, files hard-linked (the spec is replaced, never written through).
    let demo = w.join("demo");
    sh("cp", &["-al", s(&repo.join("images/demo")), s(&demo)])?;
    fs::remove_file(demo.join("appliance.toml"))?;
    fs::copy(repo.join("images/demo/appliance.toml"), demo.join("appliance.toml"))?;
    let key = w.join("release");
    sh(s(&airlock), &["keygen", "--no-passphrase", "--out", s(&key)])?;
    let (old, new) = (w.join("0.1.0"), w.join("0.2.0"));
    build(&airlock, &demo, "0.1.0", &key, &old)?;
    build(&airlock, &demo, "0.2.0", &key, &new)?;

    let bundle = new.join("demo_0.2.0.update");
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let manifest = airlock::manifest::Manifest::parse(&fs::read_to_string(old.join("manifest.json"))?)?;
    let root_hash = manifest
        .boot
        .and_then(|b| b.verity)
        .map(|v| v.root_hash)
        .context("the 0.1.0 manifest records its root hash")?;
    let image = old.join("demo.raw");
    let layout = airlock::gpt::GptLayout::read(&fs::File::open(&image)?)?;
    let (root_b, verity_b) = (&layout.partitions[3], &layout.partitions[4]);
    let new_layout = airlock::gpt::GptLayout::read(&fs::File::open(new.join("demo.raw"))?)?;
    let (root_new, verity_new) = (&new_layout.partitions[1], &new_layout.partitions[2]);
    println!("bundle:          {:>12} bytes", size(&bundle));
    println!(
        "raw.zst (0.2.0): {:>12} bytes  (bundle / raw.zst = {:.2})",
        size(&new.join("demo.raw.zst")),
        size(&bundle) as f64 / size(&new.join("demo.raw.zst")) as f64
    );
    println!(
        "root + hash tree, uncompressed: {:>12} bytes  (bundle / that = {:.2})",
        root_new.size + verity_new.size,
        size(&bundle) as f64 / (root_new.size + verity_new.size) as f64
    );

    // The target: a copy of the 0.1.0 disk, its ESP's entry in a folder, the key trusted.
    let disk = w.join("disk.raw");
    sh("cp", &["--sparse=always", s(&image), s(&disk)])?;
    let esp = w.join("esp");
    fs::create_dir_all(esp.join("EFI/Linux"))?;
    fs::write(esp.join("EFI/Linux/demo_0.1.0.efi"), b"the running version's UKI")?;
    let keys = w.join("keys");
    fs::create_dir_all(&keys)?;
    fs::copy(key.with_extension("pub"), keys.join("release.pub"))?;
    // The yardstick's input: the same bytes the bundle decompresses to, in one file.
    let payload = w.join("payload.raw");
    {
        let src = fs::File::open(new.join("demo.raw"))?;
        let dst = fs::File::create(&payload)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        for part in [root_new, verity_new] {
            let mut done = 0u64;
            while done < part.size {
                let n = (part.size - done).min(buf.len() as u64) as usize;
                src.read_exact_at(&mut buf[..n], part.start + done)?;
                dst.write_all_at(&buf[..n], at)?;
                done += n as u64;
                at += n as u64;
            }
        }
    }
    if verity_b.start != root_b.end() {
        bail!("slot B's hash tree does not follow its root: the yardstick writes one run");
    }
    let apply = format!(
        "{} update --disk {} --esp {} --keys {} --root-hash {root_hash} apply {}",
        s(&appliance),
        s(&disk),
        s(&esp),
        s(&keys),
        s(&bundle)
    );
    let dd = format!(
        "dd if={} of={} bs=1M seek={} oflag=seek_bytes conv=notrunc,fsync status=none",
        s(&payload),
        s(&disk),
        root_b.start
    );
    println!("\napply (A) against dd of the same decompressed bytes with fsync (B):");
    let report = sh(
        "farm-bench",
        &["-n", "5", "--warmup", "1", "--timeout", "1800", "--vs", &format!("sh -c '{dd}'"), "--", "sh", "-c", &apply],
    )?;
    print!("{report}");
    Ok(())
}
