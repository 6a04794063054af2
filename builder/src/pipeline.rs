//! `airlock build`: from a validated plan to a disk image. [`build`] is the table of contents;
//! each stage is a function named for what it does.

use crate::base_os::{self, Package};
use crate::clock::BuildClock;
use crate::coherence::{self, Scope};
use crate::configure::{self, PartitionIds};
use crate::disk::{self, Filesystem, PartitionRequest, Role};
use crate::embedded;
use crate::esp::{self, Kernel, LoaderEntry};
use crate::lock::Lock;
use crate::manifest::{Appliance, Contents};
use crate::oci::{BlobStore, Image};
use crate::output_file::PartialFile;
use crate::outputs::{self, Format};
use crate::plan::BuildPlan;
use crate::preload;
use crate::release::{self, ReleaseOptions, Released};
use crate::signing::KeyPair;
use crate::tree::{self, Tree};
use crate::units::SYSTEM_UNIT_DIR;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How this build runs (as opposed to what it builds, which is the plan).
#[derive(Debug)]
pub struct BuildOptions {
    pub out_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub clock: BuildClock,
    /// Extra overlays applied last, for test images only (e.g. the VM tests' command channel).
    pub test_overlays: Vec<PathBuf>,
    /// Output formats instead of the spec's `[outputs] formats` (`--format`).
    pub formats: Option<Vec<Format>>,
    /// The key that signs SHA256SUMS, already unlocked (`--sign-key` or `[signing] key`).
    pub signing_key: Option<KeyPair>,
    /// The `airlock` executable copied into the image as its provisioner
    /// (`/usr/lib/airlock/airlock firstboot`): the running binary for `airlock build`.
    pub provisioner: PathBuf,
}

/// What a build produced and how long each stage took.
#[derive(Debug)]
pub struct BuildReport {
    /// `<out>/<name>.raw`; removed at the end when `raw` is not among the formats.
    pub image: PathBuf,
    pub size: u64,
    pub kernel: String,
    pub packages: Vec<Package>,
    /// Every file of the release (formats, packages, SBOM, manifest) and SHA256SUMS(.minisig).
    pub released: Released,
    pub stages: Vec<(&'static str, Duration)>,
}

impl BuildReport {
    /// The file of one output format (e.g. the qcow2 a VM test boots), if it was built.
    pub fn output(&self, format: Format) -> Option<&Path> {
        self.released.format(format)
    }
}

/// Runs a stage with a spinner and records its duration.
struct Stages {
    done: Vec<(&'static str, Duration)>,
}

impl Stages {
    fn run<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_message(name);
        bar.enable_steady_tick(Duration::from_millis(120));
        let start = Instant::now();
        let result = f();
        let took = start.elapsed();
        bar.finish_and_clear();
        match &result {
            Ok(_) => log::info!("{name}: done in {:.1}s", took.as_secs_f64()),
            Err(_) => log::error!("{name}: failed after {:.1}s", took.as_secs_f64()),
        }
        self.done.push((name, took));
        result.with_context(|| format!("stage `{name}`"))
    }
}

/// Builds the appliance image `<out_dir>/<name>.raw` and releases it in the requested formats,
/// with manifest, SBOM, SHA256SUMS and (with a key) its signature.
pub fn build(plan: &BuildPlan, opts: &BuildOptions) -> Result<BuildReport> {
    let mut stages = Stages { done: Vec::new() };
    let ids = partition_ids(plan);
    // First, so a build without its locked images stops before any work; "preload container
    // images" writes these images into the root filesystem from the store.
    let (store, lock, images) = stages.run("verify container images", || verify_container_images(plan, opts))?;
    stages.run("clean leftovers", || clean_leftovers(opts))?;
    let base_tar = stages.run("install base OS", || install_base_os(plan, opts))?;
    let mut root = stages.run("load root tree", || load_root_tree(&base_tar, plan, opts))?;
    let packages = base_os::installed_packages(&root)?;
    stages.run("apply overlays", || apply_overlays(&mut root, plan, &opts.test_overlays, &opts.out_dir))?;
    stages
        .run("preload container images", || preload::preload_images(&mut root, plan, &images, &store, &opts.clock))?;
    stages.run("build mirrors", || {
        crate::mirror_site::build(&mut root, plan, &lock.lock, &store, &opts.out_dir, &opts.clock)
    })?;
    stages.run("configure front door", || crate::front_door::install(&mut root, plan))?;
    stages.run("install provisioner", || configure::install_provisioner(&mut root, &opts.provisioner))?;
    stages.run("configure system", || configure::configure_system(&mut root, plan, &ids))?;
    stages.run("check coherence", || check_coherence(plan, &root))?;
    stages.run("prepare first boot", || configure::prepare_first_boot(&mut root, &opts.clock))?;
    let kernel = esp::find_kernel(&root)?;
    let esp = stages.run("make ESP", || make_esp(&root, &kernel, plan, &ids))?;
    let image = opts.out_dir.join(format!("{}.raw", plan.name));
    let size = stages.run("assemble disk", || assemble_disk(plan, opts, esp, root, &image))?;
    let packages_file = stages.run("record packages", || record_packages(&opts.out_dir, plan, &packages))?;
    let contents = stages.run("record contents", || record_contents(plan, &lock, &store))?;
    let formats = opts.formats.as_deref().unwrap_or(&plan.formats);
    let release = release_options(plan, opts, formats, &kernel.version, &packages, &contents);
    let mut files = stages.run("derive outputs", || release::derive_outputs(&image, &release))?;
    files.push(("packages".to_string(), packages_file));
    let files = stages.run("write manifest", || release::write_manifest(&image, files, &release))?;
    let released = stages.run("sign outputs", || sign_outputs(opts, &release, files))?;
    if !formats.contains(&Format::Raw) {
        outputs::remove_if_present(&image)?;
    }
    Ok(BuildReport { image, size, kernel: kernel.version, packages, released, stages: stages.done })
}

fn release_options<'a>(
    plan: &'a BuildPlan,
    opts: &'a BuildOptions,
    formats: &'a [Format],
    kernel: &str,
    packages: &'a [Package],
    contents: &'a Contents,
) -> ReleaseOptions<'a> {
    ReleaseOptions {
        out_dir: &opts.out_dir,
        appliance: Appliance {
            name: plan.name.clone(),
            version: plan.version.clone(),
            description: plan.description.clone(),
            supplier: plan.supplier.clone(),
        },
        formats,
        vm: plan.vm,
        seed: &plan.seed,
        clock: opts.clock,
        spec_sha256: Some(plan.spec_sha256.clone()),
        kernel: Some(kernel.to_string()),
        packages,
        package_source: format!("debian:{}", plan.base.suite),
        contents,
    }
}

fn sign_outputs(opts: &BuildOptions, release: &ReleaseOptions<'_>, files: Vec<(String, PathBuf)>) -> Result<Released> {
    let comment = release::trusted_comment(&release.appliance, &opts.clock);
    release::sign_outputs(&opts.out_dir, files, opts.signing_key.as_ref(), &comment)
}

fn partition_ids(plan: &BuildPlan) -> PartitionIds {
    PartitionIds {
        esp: Role::Esp.partition_guid(&plan.seed),
        root: Role::Root.partition_guid(&plan.seed),
        data: Role::Data.partition_guid(&plan.seed),
    }
}

/// The lock (with its file's SHA-256, `None` when the spec needs no lock) and the images it pins
/// for the plan's containers, checked blob by blob in the cache; an error tells the user to
/// run `airlock fetch`.
fn verify_container_images(plan: &BuildPlan, opts: &BuildOptions) -> Result<(BlobStore, PinnedLock, Vec<Image>)> {
    let store = crate::fetch::blob_store(&opts.cache_dir)?;
    if plan.containers.is_empty() && plan.mirrors.is_empty() {
        return Ok((store, PinnedLock { lock: Lock::new(), sha256: None }, Vec::new()));
    }
    let (lock, sha256) = crate::lock_check::read_pinned(plan)?;
    let images = crate::lock_check::verify_cached(plan, &lock, &store)?;
    Ok((store, PinnedLock { lock, sha256: Some(sha256) }, images))
}

/// The lock a build uses, with the digest of its file.
struct PinnedLock {
    lock: Lock,
    sha256: Option<String>,
}

/// Every container image and mirrored file the appliance carries, for the manifest and SBOM.
fn record_contents(plan: &BuildPlan, pinned: &PinnedLock, store: &BlobStore) -> Result<Contents> {
    crate::contents::record(plan, &pinned.lock, pinned.sha256.clone(), store)
}

/// What interrupted builds left in the output directory (unlocked `.partial` files) goes
/// before this build adds its own.
fn clean_leftovers(opts: &BuildOptions) -> Result<()> {
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("creating {}", opts.out_dir.display()))?;
    crate::output_file::clean_stale(&opts.out_dir)?;
    Ok(())
}

fn install_base_os(plan: &BuildPlan, opts: &BuildOptions) -> Result<PathBuf> {
    plan.base.ensure_tarball(&opts.cache_dir, opts.clock.epoch)
}

fn load_root_tree(base_tar: &Path, plan: &BuildPlan, opts: &BuildOptions) -> Result<Tree> {
    let mut root = Tree::new();
    tree::apply_path(&mut root, base_tar, &opts.out_dir, plan.disk.size)?;
    Ok(root)
}

/// airlock's own overlay and units, then the image's overlays and unit folders, then test-only
/// overlays: later layers win.
fn apply_overlays(root: &mut Tree, plan: &BuildPlan, test_overlays: &[PathBuf], spool: &Path) -> Result<()> {
    embedded::apply(root, embedded::OVERLAY, "")?;
    embedded::apply(root, embedded::SYSTEMD, SYSTEM_UNIT_DIR)?;
    // An overlay may be a tar: nothing it holds can outgrow the disk.
    for dir in &plan.overlays {
        tree::apply_path(root, dir, spool, plan.disk.size)?;
    }
    for dir in &plan.unit_dirs {
        tree::host_dir::apply_dir_at(root, dir, SYSTEM_UNIT_DIR.as_bytes(), Default::default())?;
    }
    for dir in test_overlays {
        log::warn!("applying test-only overlay {}: this image is for tests", dir.display());
        tree::apply_path(root, dir, spool, plan.disk.size)?;
    }
    Ok(())
}

/// Every unit, service and container image the appliance names must be in the image.
fn check_coherence(plan: &BuildPlan, root: &Tree) -> Result<()> {
    for note in coherence::check(plan, root, Scope::WholeRoot)? {
        log::info!("{note}");
    }
    Ok(())
}

/// `airlock build --check`: everything that can be judged without the network or the base OS —
/// the spec (already a plan), the overlays' units and quadlet files against it, and the lock if
/// there is one. Returns notes on what only a build can check.
pub fn check(plan: &BuildPlan) -> Result<Vec<String>> {
    // Spools are anonymous files: the system's temporary directory holds them while the check
    // runs and nothing stays behind.
    let spool = std::env::temp_dir();
    let mut tree = Tree::new();
    apply_overlays(&mut tree, plan, &[], &spool)?;
    let mut notes = coherence::check(plan, &tree, Scope::OverlaysOnly)?;
    notes.extend(crate::lock_check::check_against_spec(plan)?);
    Ok(notes)
}

fn make_esp(root: &Tree, kernel: &Kernel, plan: &BuildPlan, ids: &PartitionIds) -> Result<Tree> {
    let mut options = vec![
        format!("root=PARTUUID={}", ids.root),
        "rw".to_string(),
        "console=tty0".to_string(),
        "console=ttyS0,115200".to_string(),
        "systemd.firstboot=off".to_string(),
    ];
    options.extend(plan.kernel_cmdline.iter().cloned());
    let entry =
        LoaderEntry { title: format!("{} {}", plan.name, plan.version), version: plan.version.clone(), options };
    let mut esp = esp::make_esp(root, kernel, &entry)?;
    let short = plan.hostname.split('.').next().unwrap_or(&plan.hostname);
    esp::add_site_config(&mut esp, &crate::firstboot::site::default_file(short))?;
    Ok(esp)
}

fn assemble_disk(plan: &BuildPlan, opts: &BuildOptions, esp: Tree, root: Tree, image: &Path) -> Result<u64> {
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let data = configure::data_tree(&root, &opts.clock)?;
    let requests = vec![
        PartitionRequest {
            role: Role::Esp,
            size: Some(plan.disk.esp),
            fs: Filesystem::Fat32 { tree: esp, label: "ESP".into() },
        },
        PartitionRequest {
            role: Role::Root,
            size: plan.disk.root,
            fs: Filesystem::Ext4 { tree: root, label: "root".into(), reserved_percent: 5 },
        },
        PartitionRequest {
            role: Role::Data,
            size: Some(plan.disk.data),
            fs: Filesystem::Ext4 { tree: data, label: "data".into(), reserved_percent: 0 },
        },
    ];
    let disk_plan = disk::plan(plan.disk.size, plan.seed.clone(), opts.clock, requests)?;
    let report = disk::write(&disk_plan, image)?;
    for line in &report.partitions {
        log::info!("{line}");
    }
    Ok(report.size)
}

/// `<out>/<name>.packages`: the installed Debian packages, one `name version architecture` per
/// line (the SBOM's source).
fn record_packages(out_dir: &Path, plan: &BuildPlan, packages: &[Package]) -> Result<PathBuf> {
    let path = out_dir.join(format!("{}.packages", plan.name));
    let partial = PartialFile::create(&path)?;
    let mut w = std::io::BufWriter::new(partial.file());
    for p in packages {
        writeln!(w, "{} {} {}", p.name, p.version, p.architecture)?;
    }
    w.flush().with_context(|| format!("writing {}", path.display()))?;
    drop(w);
    partial.commit()
}
