//! dm-verity hashing benchmark (issue 15: "hashing must not dominate the build").
//!
//! Writes the hash tree of the same data three ways in one run and prints the ratios:
//! - baseline: `veritysetup format --salt=… --uuid=…` (cryptsetup-bin, single-threaded);
//! - airlock's `verity::format` on one thread;
//! - airlock's `verity::format` on every core (what the build uses).
//!
//! All three outputs must be byte-identical, or the benchmark fails.
//!
//! Data: (1) a demo-sized root partition — the root of the image given as argument (e.g.
//! `out/demo.raw`), or else a 2 GiB root written by `airlock disk` from the demo's cached base
//! OS (built if missing) — whose free space is zero blocks, as in a real image; (2) 2 GiB of
//! dense pseudo-random data, the worst case, where no block is zero. The data file is read
//! once before timing, so every contender reads it from the page cache.
//!
//! Usage: `cargo build --release -p airlock && cargo run --release -p airlock-bench --bin verity
//! [IMAGE.raw]`.

use airlock::region::Region;
use airlock::seed::Seed;
use airlock::verity::{self, VerityParams};
use airlock_bench::*;
use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::{Read, Write};
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// DPS partition type of an x86-64 root.
const ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
const GIB: u64 = 1 << 30;

/// Copies the root partition of `image` into `dest`, leaving zero blocks as holes.
fn extract_root(image: &Path, dest: &Path) -> Result<u64> {
    let file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let layout = airlock::gpt::GptLayout::read(&file).with_context(|| format!("reading {}", image.display()))?;
    let root = layout
        .partitions
        .iter()
        .find(|p| p.type_guid.to_string() == ROOT_X86_64)
        .with_context(|| format!("{} has no x86-64 root partition", image.display()))?;
    let out = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    out.set_len(root.size)?;
    let mut buf = vec![0u8; 8 << 20];
    let mut pos = 0;
    while pos < root.size {
        let n = buf.len().min((root.size - pos) as usize);
        file.read_exact_at(&mut buf[..n], root.start + pos)?;
        for (i, block) in buf[..n].chunks(4096).enumerate() {
            if block.iter().any(|&b| b != 0) {
                out.write_all_at(block, pos + i as u64 * 4096)?;
            }
        }
        pos += n as u64;
    }
    Ok(root.size)
}

/// A demo-sized root: `airlock disk` of the demo's base OS into a 2 GiB root partition.
fn build_root(work: &Path, dest: &Path) -> Result<u64> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("bench/ is in the repository")?;
    let plan = airlock::plan::plan(&repo.join("images/demo/appliance.toml"), &Default::default())?;
    let base = plan.base.ensure_tarball(&airlock::cache::cache_dir()?, 1_700_000_000)?;
    let esp = work.join("esp");
    std::fs::create_dir_all(&esp)?;
    let image = work.join("root.raw");
    let airlock = airlock_binary()?;
    run(
        path_str(&airlock)?,
        &[
            "disk",
            "--size",
            "2200MiB",
            "--seed",
            "bench",
            "--esp-size",
            "64MiB",
            "--esp",
            path_str(&esp)?,
            "--root",
            path_str(&base)?,
            "--root-size",
            "2GiB",
            path_str(&image)?,
        ],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    )?;
    let size = extract_root(&image, dest)?;
    std::fs::remove_file(&image)?;
    Ok(size)
}

fn dense(dest: &Path, len: u64) -> Result<u64> {
    let mut out = std::io::BufWriter::new(File::create(dest)?);
    let chunk = pseudo_random(64 << 20, 7);
    let mut written = 0;
    let mut salt = 0u8;
    while written < len {
        // Vary each chunk so no two data blocks are equal.
        let mut c = chunk.clone();
        c[0] = salt;
        salt = salt.wrapping_add(1);
        for block in c.chunks_mut(4096) {
            block[1..9].copy_from_slice(&written.to_le_bytes());
            written += 4096;
        }
        out.write_all(&c)?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(len)
}

fn warm(path: &Path) -> Result<u64> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 8 << 20];
    let mut nonzero = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(nonzero);
        }
        nonzero += buf[..n].chunks(4096).filter(|b| b.iter().any(|&x| x != 0)).count() as u64;
    }
}

fn airlock_format(data: &Path, hash: &Path, params: &VerityParams, threads: usize) -> Result<(Duration, String)> {
    let data_file = File::open(data)?;
    let len = data_file.metadata()?.len();
    let hash_file = File::options().read(true).write(true).create(true).truncate(true).open(hash)?;
    let hash_len = verity::hash_region_len(len);
    hash_file.set_len(hash_len)?;
    let start = Instant::now();
    let root = verity::format_with_threads(
        &Region::new(&data_file, 0, len),
        &Region::new(&hash_file, 0, hash_len),
        params,
        NonZeroUsize::new(threads).context("zero threads")?,
    )?;
    hash_file.sync_all()?;
    Ok((start.elapsed(), root.hex()))
}

fn bench(name: &str, data: &Path, work: &Path) -> Result<()> {
    let len = std::fs::metadata(data)?.len();
    let nonzero = warm(data)?;
    println!(
        "\n{name}: {} of data, {:.0} % of its blocks non-zero",
        mib(len),
        100.0 * nonzero as f64 / (len / 4096) as f64
    );
    let params = VerityParams::from_seed(&Seed::new("bench"), "verity-root-a");
    let reference = work.join("ref.hash");
    let root_file = work.join("ref.roothash");
    let base = run(
        "veritysetup",
        &[
            "format",
            &format!("--salt={}", hex_str(&params.salt)),
            &format!("--uuid={}", params.uuid),
            &format!("--root-hash-file={}", path_str(&root_file)?),
            path_str(data)?,
            path_str(&reference)?,
        ],
        &[],
    )?;
    let reference_root = std::fs::read_to_string(&root_file)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ours = work.join("airlock.hash");
    let (one, root_one) = airlock_format(data, &ours, &params, 1)?;
    same(&reference, &ours, &reference_root, &root_one)?;
    let (all, root_all) = airlock_format(data, &ours, &params, cores)?;
    same(&reference, &ours, &reference_root, &root_all)?;
    let rate = |d: Duration| format!("{:>6.0} MiB/s", len as f64 / (1 << 20) as f64 / d.as_secs_f64());
    println!("  baseline: veritysetup format     {:>8}  {}", secs(base.wall), rate(base.wall));
    println!("  airlock, 1 thread                {:>8}  {}", secs(one), rate(one));
    println!("  airlock, {cores} threads                {:>8}  {}", secs(all), rate(all));
    println!("  ratio airlock 1 thread / baseline  {:>6.2}x", one.as_secs_f64() / base.wall.as_secs_f64());
    println!("  ratio airlock {cores} threads / baseline {:>6.2}x", all.as_secs_f64() / base.wall.as_secs_f64());
    println!("  hash trees byte-identical, root hash {}", reference_root.trim());
    for f in [&reference, &ours, &root_file] {
        std::fs::remove_file(f)?;
    }
    Ok(())
}

fn same(reference: &Path, ours: &Path, reference_root: &str, root: &str) -> Result<()> {
    if reference_root.trim() != root {
        bail!("root hash {root} differs from veritysetup's {}", reference_root.trim());
    }
    if std::fs::read(reference)? != std::fs::read(ours)? {
        bail!("airlock's hash tree differs from veritysetup's");
    }
    Ok(())
}

fn hex_str(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn main() -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix("airlock-bench-")
        .tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))?;
    let data = work.path().join("data.img");
    match std::env::args_os().nth(1) {
        Some(image) => {
            extract_root(Path::new(&image), &data)?;
            bench(&format!("root partition of {}", image.to_string_lossy()), &data, work.path())?;
        }
        None => {
            build_root(work.path(), &data)?;
            bench("demo base OS as a 2 GiB root partition", &data, work.path())?;
        }
    }
    dense(&data, 2 * GIB)?;
    bench("2 GiB of dense pseudo-random data (worst case)", &data, work.path())?;
    Ok(())
}
