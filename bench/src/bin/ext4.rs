//! ext4 writer benchmark (issue: native ext4 writer).
//!
//! Builds the same root filesystem two ways in one run and prints the ratio:
//! - airlock: `airlock disk --root <tar>` (reads the tar in place, writes ext4 natively);
//! - baseline: extract the tar (`tar -xpf`, as root, to keep owners) and `mke2fs -t ext4 -d`
//!   from the directory; extraction is included, and also reported on its own.
//!
//! Trees: the cached mmdebstrap base OS of `images/demo` (built if missing) and a synthetic
//! 20k-file / 500 MB tree. Usage: `cargo build --release -p airlock && cargo run --release -p
//! airlock-bench --bin ext4`.

use airlock_bench::*;
use anyhow::{Context, Result};
use std::path::Path;

fn synthetic_tar(path: &Path) -> Result<(u64, u64)> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(file));
    let (mut files, mut bytes) = (0u64, 0u64);
    let big = pseudo_random((4 << 20) + 1000, 42);
    for i in 0..20_000u64 {
        // Mostly small files, every 500th a few MiB: about 500 MB in all.
        let size = if i % 500 == 0 { 4 << 20 } else { 2_000 + (i * 7919) % 40_000 } as usize;
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, format!("usr/share/bench/d{:03}/f{i:05}", i % 400), &big[(i as usize % 1000)..][..size])?;
        files += 1;
        bytes += size as u64;
    }
    b.into_inner()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok((files, bytes))
}

fn bench_tree(name: &str, tar_path: &Path, image_mib: u64, work: &Path) -> Result<()> {
    let image_size = format!("{image_mib}MiB");
    let image_size = image_size.as_str();
    let mke2fs_size = format!("{image_mib}M");
    let airlock = airlock_binary()?;
    let esp = work.join("esp");
    std::fs::create_dir_all(&esp)?;
    let out = work.join(format!("{name}-airlock.raw"));
    let a = run(
        path_str(&airlock)?,
        &[
            "disk",
            "--size",
            image_size,
            "--seed",
            "bench",
            "--esp-size",
            "64MiB",
            "--esp",
            path_str(&esp)?,
            "--root",
            path_str(tar_path)?,
            path_str(&out)?,
        ],
        &[("SOURCE_DATE_EPOCH", "1700000000"), ("RUST_LOG", "warn")],
    )?;
    std::fs::remove_file(&out)?;

    let dir = work.join(format!("{name}-extracted"));
    std::fs::create_dir_all(&dir)?;
    let extract = run(
        "tar",
        &["-xpf", path_str(tar_path)?, "-C", path_str(&dir)?, "--numeric-owner", "--xattrs", "--xattrs-include=*"],
        &[],
    )?;
    let img = work.join(format!("{name}-mke2fs.img"));
    let mkfs = run("mke2fs", &["-q", "-F", "-t", "ext4", "-d", path_str(&dir)?, path_str(&img)?, &mke2fs_size], &[])?;
    std::fs::remove_file(&img)?;
    std::process::Command::new("rm").args(["-rf", path_str(&dir)?]).status()?;

    let baseline = extract.wall + mkfs.wall;
    println!("{name}:");
    println!("  airlock disk --root <tar>        {:>8}   peak RSS {}", secs(a.wall), mib(a.peak_rss));
    println!(
        "  baseline: tar -x + mke2fs -d     {:>8}   (extract {}, mke2fs {})",
        secs(baseline),
        secs(extract.wall),
        secs(mkfs.wall)
    );
    println!("  ratio airlock / baseline         {:>8.2}x", a.wall.as_secs_f64() / baseline.as_secs_f64());
    println!("  ratio airlock / mke2fs alone     {:>8.2}x", a.wall.as_secs_f64() / mkfs.wall.as_secs_f64());
    Ok(())
}

fn main() -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix("airlock-bench-")
        .tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))?;
    let synth = work.path().join("synthetic.tar");
    let (files, bytes) = synthetic_tar(&synth)?;
    println!("synthetic tree: {files} files, {}", mib(bytes));
    bench_tree("synthetic", &synth, 1536, work.path())?;

    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("bench/ is in the repository")?;
    let plan = airlock::plan::plan(&repo.join("images/demo/appliance.toml"), &Default::default())?;
    let base = plan.base.ensure_tarball(&airlock::cache::cache_dir()?, 1_700_000_000)?;
    println!("mmdebstrap tree: {} ({})", base.display(), mib(std::fs::metadata(&base)?.len()));
    bench_tree("mmdebstrap", &base, 2048, work.path())?;
    Ok(())
}
