//! Mirror benchmark (issue: the Pulumi CLI and package mirrors): the demo's mirror set.
//!
//! In one run: `airlock fetch` of the demo's mirrors into an empty cache (resolving with the
//! host's pip and npm and downloading everything) and again with the lock and cache warm; the
//! "build mirrors" stage (verifying every file, generating the indexes, installing the CLI)
//! into an empty tree; and the mirror's size (locked files and generated documents). The
//! baseline is reading the same locked bytes once from the cache (what any copy of the mirror
//! costs at least). Reported, never asserted.
//!
//! Usage: `images/demo/fixtures/build-fixtures && cargo run --release -p airlock-bench --bin mirrors`

use airlock::tree::{NodeKind, Tree};
use airlock_bench::*;
use anyhow::{Context, Result};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(Duration, T)> {
    let start = Instant::now();
    let v = f()?;
    Ok((start.elapsed(), v))
}

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("bench/ is in the repository")?;
    let demo = root.join("images/demo/appliance.toml");
    let work = tempfile::Builder::new().prefix("airlock-bench-mirrors-").tempdir()?;
    // The demo's spec without its containers (their cost is the boot benchmark's), in a copy
    // with its own lock; its fixtures and overlay folders are linked so relative paths resolve.
    let text = std::fs::read_to_string(&demo)?;
    let cut = text.find("[[containers]]").unwrap_or(text.len());
    let pulumi = text.find("[pulumi]").context("the demo spec has a [pulumi] section")?;
    let spec_dir = work.path().join("spec");
    std::fs::create_dir_all(&spec_dir)?;
    for linked in ["fixtures", "overlay"] {
        std::os::unix::fs::symlink(root.join("images/demo").join(linked), spec_dir.join(linked))?;
    }
    let spec = spec_dir.join("appliance.toml");
    std::fs::write(&spec, format!("{}\n{}", &text[..cut.min(pulumi)], &text[pulumi..]))?;
    let plan = airlock::plan::plan(&spec, &airlock::plan::HostContext::default())?;
    let cache = work.path().join("cache");
    let opts = airlock::fetch::FetchOptions { cache_dir: cache.clone(), update: false, registry: Default::default() };

    let (cold, report) = timed(|| airlock::fetch::fetch(&plan, &opts))?;
    let (warm, again) = timed(|| airlock::fetch::fetch(&plan, &opts))?;
    let lock = airlock::lock_check::read_for_build(&plan)?;
    let store = airlock::fetch::blob_store(&cache)?;

    // Baseline: read every locked byte once.
    let (read_once, locked_bytes) = timed(|| {
        let mut total = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        for set in &lock.mirrors {
            for f in &set.files {
                let mut file = std::fs::File::open(store.path(&f.digest()?))?;
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
            }
        }
        Ok(total)
    })?;

    let clock = airlock::clock::BuildClock::fixed(1_700_000_000);
    let fresh = airlock::fetch::blob_store(&cache)?;
    let (build, tree) = timed(|| {
        let mut tree = Tree::new();
        airlock::mirror_site::build(&mut tree, &plan, &lock, &fresh, work.path(), &clock)?;
        Ok(tree)
    })?;
    let prefix = format!("{}/", airlock::mirror::ROOT);
    let (mut served, mut files) = (0u64, 0usize);
    for (path, id) in tree.walk() {
        if let NodeKind::File { size, .. } = &tree.node(id).kind
            && path.starts_with(prefix.as_bytes())
        {
            served += size;
            files += 1;
        }
    }

    let sets: Vec<&str> = plan.mirrors.sets.iter().map(|s| s.name()).collect();
    println!("demo mirror sets: {}", sets.join(", "));
    for (set, _, n) in &report.mirrors {
        let bytes: u64 = lock.mirror_set(set).map_or(0, |s| s.files.iter().map(|f| f.size).sum());
        println!("  {set:<7} {n:>4} files  {}", mib(bytes));
    }
    println!("fetch, empty cache:        {} ({} downloaded)", secs(cold), mib(report.downloaded_bytes));
    println!("fetch, lock + cache warm:  {} ({} downloaded)", secs(warm), mib(again.downloaded_bytes));
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!("build mirrors stage:       {}", ms(build));
    println!("baseline, read bytes once: {}", ms(read_once));
    println!(
        "  build / baseline: {:.2}x   cold fetch / baseline: {:.1}x",
        build.as_secs_f64() / read_once.as_secs_f64().max(1e-6),
        cold.as_secs_f64() / read_once.as_secs_f64().max(1e-6)
    );
    println!("mirror size: {files} files, {} served ({} locked)", mib(served), mib(locked_bytes));
    Ok(())
}
