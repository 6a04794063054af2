//! `airlock build` and `airlock disk`: from a validated plan (or `airlock disk`'s trees) to a
//! released disk image. [`build`] is the table of contents; each stage is a function named for
//! what it does. [`disk`] runs the same stage functions from "assemble disk" on, as
//! `systemd-repart` is both a tool and mkosi's stage.

use crate::base_os::{self, Package};
use crate::clock::BuildClock;
use crate::coherence::{self, Scope};
use crate::configure;
use crate::disk::{self, DiskReport, DiskWriter, PartitionRequest};
use crate::embedded;
use crate::esp::{self, BootRecord, BootSetup, Kernel};
use crate::image_store;
use crate::lock::Lock;
use crate::manifest::{Appliance, Contents};
use crate::oci::{BlobStore, Image};
use crate::output_file::PartialFile;
use crate::outputs::{self, Format, VmHardware};
use crate::partition::{self, ImageId, Role, Slot};
use crate::plan::BuildPlan;
use crate::preload;
use crate::release::{self, ReleaseOptions, Released};
use crate::secure_boot::OwnerKeys;
use crate::seed::Seed;
use crate::signing::KeyPair;
use crate::tree::{self, Tree};
use crate::units::SYSTEM_UNIT_DIR;
use crate::verity::RootHash;
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
    /// The appliance's own program, installed in the image as `/usr/bin/airlock`.
    pub appliance: ApplianceProgram,
    /// The owner's Secure Boot keys, already loaded and checked (`--secure-boot-key` or
    /// `[signing] secure_boot`).
    pub secure_boot: Option<OwnerKeys>,
}

/// Where the build finds the appliance's own program (`airlock-appliance`, which must not be
/// the builder: it runs on the appliance and links none of the builder's online code).
#[derive(Debug, Clone)]
pub enum ApplianceProgram {
    /// `airlock-appliance` next to the running executable, where `cargo build` puts both.
    NextToExecutable,
    /// This file (the VM tests' own build of it).
    At(PathBuf),
}

/// The appliance program's file name, as cargo builds it.
pub const APPLIANCE_PROGRAM: &str = "airlock-appliance";

impl ApplianceProgram {
    /// The file to install; a missing one is an error that says how to build it.
    pub fn path(&self) -> Result<PathBuf> {
        let path = match self {
            ApplianceProgram::At(path) => path.clone(),
            ApplianceProgram::NextToExecutable => {
                let exe = std::env::current_exe().context("finding the running executable")?;
                exe.parent().context("the running executable has no directory")?.join(APPLIANCE_PROGRAM)
            }
        };
        if !path.is_file() {
            let profile = if cfg!(debug_assertions) { "" } else { " --release" };
            anyhow::bail!(
                "the appliance program {} is missing: build it with `cargo build{profile} -p {APPLIANCE_PROGRAM}` \
                 (or `cargo build{profile}` at the repository's root, which builds it with airlock)",
                path.display()
            );
        }
        Ok(path)
    }
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

/// Runs each stage under [`crate::progress`] (which shows it) and records its duration.
#[derive(Default)]
struct Stages {
    done: Vec<(&'static str, Duration)>,
}

impl Stages {
    fn run<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let result = crate::progress::run_stage(name, f);
        let took = start.elapsed();
        log::debug!("{name}: {} after {:.1}s", if result.is_ok() { "done" } else { "failed" }, took.as_secs_f64());
        self.done.push((name, took));
        result.with_context(|| format!("stage `{name}`"))
    }
}

/// Builds the appliance image `<out_dir>/<name>.raw` and releases it in the requested formats,
/// with manifest, SBOM, SHA256SUMS and (with a key) its signature.
pub fn build(plan: &BuildPlan, opts: &BuildOptions) -> Result<BuildReport> {
    announce_test_build(plan, opts)?;
    let mut stages = Stages::default();
    let appliance = opts.appliance.path()?;
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
    let image_store = stages.run("unpack container images", || {
        let (lock, out) = (&lock.lock, &opts.out_dir);
        image_store::unpack_container_images(&mut root, plan, lock, &images, &store, &packages, out, &opts.clock)
    })?;
    stages.run("build mirrors", || {
        crate::mirror_site::build(&mut root, plan, &lock.lock, &store, &opts.out_dir, &opts.clock)
    })?;
    stages.run("configure front door", || crate::front_door::install(&mut root, plan))?;
    stages.run("install appliance program", || configure::install_appliance_program(&mut root, &appliance))?;
    stages.run("configure system", || {
        configure::configure_system(&mut root, plan)?;
        let keys = plan.update.trusted_keys(opts.signing_key.as_ref().map(KeyPair::public_key));
        configure::install_update_keys(&mut root, &keys, &plan.update.config)
    })?;
    stages.run("check coherence", || check_coherence(plan, &root))?;
    stages.run("prepare first boot", || configure::prepare_first_boot(&mut root, &opts.clock))?;
    if let Some(keys) = &opts.secure_boot {
        stages.run("sign boot loader", || esp::install_signed_loader(&mut root, keys))?;
    }
    let kernel = esp::find_kernel(&root)?;
    let data = stages.run("move /var to the data partition", || {
        let data = configure::data_tree(&mut root, &opts.clock)?;
        configure::keep_factory_data(&mut root, &data)?;
        Ok(data)
    })?;
    let contents =
        stages.run("record contents", || Ok(Contents { image_store, ..record_contents(plan, &lock, &store)? }))?;
    let formats = opts.formats.as_deref().unwrap_or(&plan.formats);
    // The root is written and hashed first: the UKI on the ESP carries its root hash.
    let image = opts.out_dir.join(format!("{}.raw", plan.name));
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let image_id = ImageId { name: plan.name.clone(), version: plan.version.clone() };
    let layout = disk::lay_out(plan.disk.size, &plan.disk_seed, Some(&image_id), &partition_sizes(plan))?;
    let mut writer = DiskWriter::create(&layout, &plan.seed, opts.clock, &image)?;
    stages.run("write root", || {
        disk::measure(&[&root]);
        writer.write_tree(Role::Root(Slot::A), &root)
    })?;
    let root_hash = match plan.disk.verity {
        true => Some(stages.run("hash root (dm-verity)", || {
            let hash = writer.write_hash_tree(Slot::A)?;
            writer.leave_empty(Role::Root(Slot::B))?;
            writer.leave_empty(Role::RootVerity(Slot::B))?;
            Ok(hash)
        })?),
        false => None,
    };
    let (esp, release) = stages.run("make UKI and ESP", || {
        let (mut esp, boot) =
            make_esp(&root, &kernel, plan, root_hash.as_ref(), opts.secure_boot.as_ref(), opts.clock.epoch)?;
        let keys = plan.update.trusted_keys(opts.signing_key.as_ref().map(KeyPair::public_key));
        let boot = boot_record(plan, boot, root_hash.as_ref(), &keys);
        let release = release_options(plan, opts, formats, &kernel.version, boot, &packages, &contents);
        add_image_manifest(&mut esp, &release, plan)?;
        Ok((esp, release))
    })?;
    stages.run("write ESP and data", || {
        disk::measure(&[&esp, &data]);
        writer.write_tree(Role::Esp, &esp)?;
        writer.write_tree(Role::Data, &data)
    })?;
    let disk = stages.run("finish disk", || writer.finish())?;
    disk.partitions.iter().for_each(|line| crate::progress::item(&format!("  {line}")));
    let packages_file = stages.run("record packages", || record_packages(&opts.out_dir, plan, &packages))?;
    let mut extra = vec![("packages".to_string(), packages_file)];
    match (&root_hash, &opts.signing_key) {
        (Some(hash), Some(key)) => {
            let inputs = crate::update_bundle::BundleInputs {
                name: &plan.name,
                version: &plan.version,
                root_hash: &hash.hex(),
                uki: &release.boot.as_ref().map(|b| b.uki.clone()).unwrap_or_default(),
            };
            let bundle = stages
                .run("write update bundle", || crate::update_bundle::write(&image, &opts.out_dir, &inputs, key))?;
            extra.push(("update".to_string(), bundle));
        }
        (Some(_), None) => log::info!("no update bundle: an unsigned build cannot update an appliance (--sign-key)"),
        (None, _) => log::info!("no update bundle: an image without verity (`[disk] verity = false`) has no slots"),
    }
    // derive outputs, write manifest, sign outputs: the stages `airlock disk` runs too.
    let released = release_image(&mut stages, &image, &release, opts.signing_key.as_ref(), extra)?;
    Ok(BuildReport { image, size: disk.size, kernel: kernel.version, packages, released, stages: stages.done })
}

/// What `airlock disk` assembles, and how it is released.
#[derive(Debug)]
pub struct DiskJob {
    /// The raw image to write (`<name>.raw` when it is released).
    pub image: PathBuf,
    pub size: u64,
    pub seed: Seed,
    pub clock: BuildClock,
    pub partitions: Vec<PartitionRequest>,
    /// `None`: the raw image alone.
    pub release: Option<DiskRelease>,
}

/// The companions `airlock build` writes, for an image of `airlock disk`: no kernel, packages
/// or spec digest.
#[derive(Debug)]
pub struct DiskRelease {
    pub appliance: Appliance,
    pub formats: Vec<Format>,
    pub signing_key: Option<KeyPair>,
}

/// `airlock disk`: the "assemble disk" stage on trees the caller loaded, then, with a release,
/// the release stages of [`build`].
pub fn disk(job: DiskJob) -> Result<(DiskReport, Option<Released>)> {
    let mut stages = Stages::default();
    let report =
        stages.run("assemble disk", || assemble_disk(&job.image, job.size, &job.seed, job.clock, job.partitions))?;
    let Some(r) = &job.release else { return Ok((report, None)) };
    let out_dir = match job.image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let release = ReleaseOptions {
        out_dir: &out_dir,
        appliance: r.appliance.clone(),
        test_build: None,
        formats: &r.formats,
        vm: VmHardware { cpus: 2, memory_mib: 2048 },
        seed: &job.seed,
        clock: job.clock,
        spec_sha256: None,
        kernel: None,
        boot: None,
        packages: &[],
        package_source: String::new(),
        contents: &Contents::default(),
    };
    let released = release_image(&mut stages, &job.image, &release, r.signing_key.as_ref(), Vec::new())?;
    Ok((report, Some(released)))
}

/// Stage: lays the partitions out in the partition table's order and writes each filesystem and
/// the GPT into one sparse image (complete or not there at all).
fn assemble_disk(
    image: &Path,
    size: u64,
    seed: &Seed,
    clock: BuildClock,
    partitions: Vec<PartitionRequest>,
) -> Result<DiskReport> {
    let disk_plan = disk::plan(size, seed.clone(), clock, partitions)?;
    disk::write(&disk_plan, image)
}

/// The release stages `airlock build` and `airlock disk` share: every format derived from the raw
/// image, the manifest and SBOM (listing `extra` files too), SHA256SUMS and its signature. The raw
/// image stays only when it is one of the formats.
fn release_image(
    stages: &mut Stages,
    image: &Path,
    release: &ReleaseOptions<'_>,
    key: Option<&KeyPair>,
    extra: Vec<(String, PathBuf)>,
) -> Result<Released> {
    let mut files = stages.run("derive outputs", || release::derive_outputs(image, release))?;
    files.extend(extra);
    let files = stages.run("write manifest", || release::write_manifest(image, files, release))?;
    let released = stages.run("sign outputs", || sign_outputs(release, key, files))?;
    if !release.formats.contains(&Format::Raw) {
        outputs::remove_if_present(image)?;
    }
    Ok(released)
}

/// A test build (a test spec's, `crate::test_spec`) says so before anything is built, and can
/// never be signed: a signature is what makes a set of files a release.
fn announce_test_build(plan: &BuildPlan, opts: &BuildOptions) -> Result<()> {
    let Some(test) = &plan.test else { return Ok(()) };
    anyhow::ensure!(
        opts.signing_key.is_none(),
        "{} is a test spec (its container images {} are TEST STAND-INS): a test build is never signed",
        plan.spec_path.display(),
        test.stand_ins.iter().map(|s| s.reference.as_str()).collect::<Vec<_>>().join(", ")
    );
    log::warn!(
        "TEST BUILD {} {} of {}: not a release; the manifest lists its TEST STAND-INS",
        plan.name,
        plan.version,
        test.production_spec.display()
    );
    for s in &test.stand_ins {
        log::warn!("TEST STAND-IN: {} ({}) from {}", s.reference, s.container, s.source);
    }
    Ok(())
}

fn release_options<'a>(
    plan: &'a BuildPlan,
    opts: &'a BuildOptions,
    formats: &'a [Format],
    kernel: &str,
    boot: crate::manifest::Boot,
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
        test_build: plan.test.as_ref().map(|t| crate::manifest::TestBuild {
            production_spec_sha256: t.production_spec_sha256.clone(),
            stand_ins: t
                .stand_ins
                .iter()
                .map(|s| crate::manifest::TestStandIn {
                    container: s.container.clone(),
                    reference: s.reference.clone(),
                    source: s.source.clone(),
                })
                .collect(),
        }),
        formats,
        vm: plan.vm,
        seed: &plan.seed,
        clock: opts.clock,
        spec_sha256: Some(plan.spec_sha256.clone()),
        kernel: Some(kernel.to_string()),
        boot: Some(boot),
        packages,
        package_source: format!("debian:{}", plan.base.suite),
        contents,
    }
}

fn sign_outputs(
    release: &ReleaseOptions<'_>,
    key: Option<&KeyPair>,
    files: Vec<(String, PathBuf)>,
) -> Result<Released> {
    let comment = release::trusted_comment(&release.appliance, &release.clock);
    release::sign_outputs(release.out_dir, files, key, &comment)
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
    image_store::check_overlays(plan, &tree)?;
    notes.extend(crate::lock_check::check_against_spec(plan)?);
    Ok(notes)
}

/// The kernel command line fixed in the UKI: with verity, the root hash (systemd's veritysetup
/// generator opens `/dev/mapper/root` from it and the partitions its halves name) and `ro`;
/// without, the root partition by PARTUUID, writable.
fn kernel_cmdline(plan: &BuildPlan, root_hash: Option<&RootHash>) -> Result<Vec<String>> {
    let mut options = match root_hash {
        // The root and its hash tree on the boot disk (not whichever disk carries the same
        // UUIDs, as a stick does next to the disk it installed): the boot disk's links.
        Some(hash) => vec![
            format!("roothash={hash}"),
            format!("systemd.verity_root_data={}", partition::boot_disk_partuuid_link(&hash.data_partition_uuid())),
            format!("systemd.verity_root_hash={}", partition::boot_disk_partuuid_link(&hash.hash_partition_uuid())),
            "ro".to_string(),
        ],
        None => vec![configure::kernel_root(plan.disk.roles(), &plan.disk_seed)?, "rw".to_string()],
    };
    options.extend(["console=tty0", "console=ttyS0,115200", "systemd.firstboot=off"].into_iter().map(String::from));
    options.extend(plan.kernel_cmdline.iter().cloned());
    Ok(options)
}

fn make_esp(
    root: &Tree,
    kernel: &Kernel,
    plan: &BuildPlan,
    root_hash: Option<&RootHash>,
    secure_boot: Option<&OwnerKeys>,
    epoch: i64,
) -> Result<(Tree, BootRecord)> {
    let additions = configure::initrd_additions(plan.disk.roles(), epoch)?;
    let setup = BootSetup {
        name: &plan.name,
        version: &plan.version,
        cmdline: kernel_cmdline(plan, root_hash)?,
        secure_boot,
        initrd_additions: &additions,
    };
    let (mut esp, record) = esp::make_esp(root, kernel, &setup)?;
    let short = plan.hostname.split('.').next().unwrap_or(&plan.hostname);
    esp::add_site_config(&mut esp, &airlock_common::site::default_file(short))?;
    Ok((esp, record))
}

/// The manifest's record of the boot chain.
fn boot_record(
    plan: &BuildPlan,
    boot: BootRecord,
    root_hash: Option<&RootHash>,
    trusted_keys: &[crate::signing::PublicKey],
) -> crate::manifest::Boot {
    let trusted_keys = trusted_keys.iter().map(|k| k.key_id().to_string()).collect();
    let update = root_hash.map(|_| crate::manifest::UpdatePolicy {
        tries: plan.update.config.tries,
        deadline_seconds: plan.update.config.deadline_seconds,
        state: plan.update.config.state.clone(),
        trusted_keys,
    });
    let root = Role::Root(Slot::A);
    crate::manifest::Boot {
        uki: boot.uki,
        uki_sha256: boot.uki_sha256,
        uki_size: boot.uki_size,
        cmdline: boot.cmdline,
        secure_boot: boot.secure_boot,
        verity: root_hash.map(|hash| {
            let params = disk::verity_params(&plan.seed, Slot::A);
            crate::manifest::Verity {
                root_hash: hash.hex(),
                data_partition: root,
                hash_partition: Role::RootVerity(Slot::A),
                hash_algorithm: "sha256".to_string(),
                data_block_size: crate::verity::BLOCK_SIZE,
                hash_block_size: crate::verity::BLOCK_SIZE,
                salt: hex::encode(params.salt),
            }
        }),
        update,
    }
}

/// Each partition of the plan's disk with its size (`None`: the rest, or a hash tree's).
fn partition_sizes(plan: &BuildPlan) -> Vec<(Role, Option<u64>)> {
    plan.disk.partitions.iter().map(|p| (p.role, p.size)).collect()
}

/// The image's own manifest on its ESP ([`crate::manifest::ESP_MANIFEST_PATH`]), so that
/// `airlock inspect` can answer from a raw image or a stick alone: everything `manifest.json`
/// says but the partitions' digests (a partition cannot hold its own) and the release's files.
/// It goes on the ESP, not the root: the ESP stays a plain FAT volume any reader can open,
/// while the root is a dm-verity partition.
fn add_image_manifest(esp: &mut Tree, release: &ReleaseOptions<'_>, plan: &BuildPlan) -> Result<()> {
    let inputs = release::manifest_inputs(release);
    let manifest =
        crate::manifest::Manifest::new(&inputs, plan.disk.size, disk::disk_guid(&plan.disk_seed), &[], Vec::new());
    esp.put_file(crate::manifest::ESP_MANIFEST_PATH, 0o644, manifest.to_json()?)?;
    Ok(())
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
