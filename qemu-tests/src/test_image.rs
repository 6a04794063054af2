//! The images VM tests boot: `images/<name>` built with the command channel (`guest/`)
//! added, once per set of inputs, and shared by every test binary through a cache under the
//! target directory.
//!
//! Each VM test file is its own test binary, and building the demo takes minutes, so a build
//! per binary was most of the VM tier's time spent outside VMs. An entry is found by a key,
//! the SHA-256 of everything that goes into the image:
//! - the repository's files that builds read or compile in (the spec folder with its lock,
//!   container layouts and fixtures, the builder's sources with the `overlay/` and `systemd/`
//!   folders it embeds, `Cargo.lock`, the test overlay), every folder but those in
//!   [`NOT_IN_IMAGES`], so a new folder counts until it is listed there;
//! - the appliance program installed in the image;
//! - the base OS's own cache key (suite, mirror, packages), the build clock and the formats.
//!
//! The [`Recipe`]'s scripts (the demo's container images and mirror fixtures, each cached by
//! its own recipe) run first, as their output is an input. `airlock fetch --update`, which
//! asks the package indexes again and takes a minute or more, runs only when no entry matches
//! the lock as it is: the lock it writes is then part of the key of the entry built.
//!
//! An entry is built in a `.partial` directory, checked against the `SHA256SUMS` the build
//! wrote, and renamed to `<name>-<key>` only then; before every use it is checked against
//! `SHA256SUMS` again, and rebuilt (saying so) if it does not match. Two locks (`flock`,
//! released by the kernel if a test is killed) keep concurrent test processes apart:
//! `<name>.lock`, held while the inputs are prepared (the scripts and `airlock fetch` write
//! into the source tree) and the entry is chosen or built; and `<entry>.lock`, which every
//! [`TestImage`] holds shared for as long as it lives, so that a build with other inputs
//! removes an old entry only once nobody boots it.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::command;
use crate::file_lock::FileLock;

/// Fixed build clock for test images (reproducible, and what the image tests use too).
pub const EPOCH: i64 = 1_700_000_000;

/// Paths (relative to the repository) that never go into an image: they are left out of the
/// key, so editing a test or a document does not rebuild the images. `images/` is listed
/// because only the image's own folder counts.
const NOT_IN_IMAGES: &[&str] = &[
    ".git",
    "target",
    "out",
    "docs",
    "bench",
    "images",
    "README.md",
    "builder/tests",
    "qemu-tests/src",
    "qemu-tests/tests",
    // Only in the images whose recipe names them (hashed with the recipe).
    "qemu-tests/overlays",
];

/// Bump when the way entries are built or laid out changes.
const CACHE_FORMAT: &str = "airlock-test-image-v1";

/// A test image from the cache, kept from removal while this value lives. Every test image is
/// signed with the cache's TEST release key ([`test_release_key`]): it trusts that key's
/// update bundles, and carries its own bundle.
#[derive(Debug)]
pub struct TestImage {
    /// `<name>.raw`; never written to (VMs boot qcow2 overlays backed by it).
    pub image: PathBuf,
    /// The cache entry: the release directory the build wrote.
    pub dir: PathBuf,
    pub plan: airlock::plan::BuildPlan,
    _in_use: FileLock,
}

impl TestImage {
    /// The file of another output format of the same build, e.g. `qcow2`.
    pub fn output(&self, extension: &str) -> PathBuf {
        self.image.with_extension(extension)
    }

    /// The build's update bundle, `<name>_<version>.update`.
    pub fn bundle(&self) -> PathBuf {
        self.dir.join(airlock::bundle::file_name(&self.plan.name, &self.plan.version))
    }
}

/// The repository this crate is part of.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("qemu-tests/ is inside the repository").to_path_buf()
}

/// How a test image is made: a spec, the scripts that make its local inputs first, and the
/// formats to build.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub spec: PathBuf,
    /// Run before the key is taken, as their output is an input; each should cache its work.
    pub scripts: Vec<PathBuf>,
    /// The spec's own formats when `None`.
    pub formats: Option<Vec<airlock::outputs::Format>>,
    /// Signs the boot chain with the TEST Secure Boot keys of the cache ([`test_secure_boot_keys`]).
    pub secure_boot: bool,
    /// Signs the release with the cache's TEST release key ([`test_release_key`]): the image
    /// trusts that key's update bundles, and its build writes its own bundle.
    pub signed: bool,
    /// Builds this version instead of the spec's (the update test's later releases).
    pub version: Option<String>,
    /// Test overlays applied after the command channel's (e.g. one that breaks the stack).
    pub overlays: Vec<PathBuf>,
}

impl Recipe {
    /// `images/<name>/appliance.toml` with the scripts its folder has (the demo's container
    /// images from Debian packages and its mirror fixtures), in the spec's formats.
    pub fn image(name: &str) -> Recipe {
        let dir = repo_root().join("images").join(name);
        let scripts = [dir.join("containers/build-images"), dir.join("fixtures/build-fixtures")]
            .into_iter()
            .filter(|s| s.exists())
            .collect();
        // As released: a verity root, and (with the test keys) a signed boot chain.
        Recipe {
            spec: dir.join("appliance.toml"),
            scripts,
            formats: None,
            secure_boot: true,
            signed: true,
            version: None,
            overlays: Vec::new(),
        }
    }

    /// The same image as a later release `version`, raw only (what an update test boots or
    /// takes the bundle of), with `overlays` added.
    pub fn release(&self, version: &str, overlays: Vec<PathBuf>) -> Recipe {
        Recipe {
            version: Some(version.to_string()),
            overlays,
            formats: Some(vec![airlock::outputs::Format::Raw]),
            ..self.clone()
        }
    }

    /// The cache entries' name: the appliance's, with the version when the recipe sets one (so
    /// that the releases of one appliance are cached side by side).
    fn label(&self, plan: &airlock::plan::BuildPlan) -> String {
        match &self.version {
            Some(v) => format!("{}@{v}", plan.name),
            None => plan.name.clone(),
        }
    }
}

/// The recipe's image built with the test overlay, from the cache under `cache_root` when an
/// entry with the same inputs is there, with `appliance` (the appliance program, `airlock-appliance`) installed as the image's `/usr/bin/airlock`.
pub fn test_image(recipe: &Recipe, appliance: &Path, cache_root: &Path) -> Result<TestImage> {
    let cache = cache_root.join("test-images");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let mut plan = airlock::test_spec::plan_spec_or_test_spec(&recipe.spec, &airlock::plan::HostContext::default())?;
    if let Some(version) = &recipe.version {
        airlock::version::Version::parse(version)
            .map_err(|why| anyhow::anyhow!("the recipe's version `{version}`: {why}"))?;
        plan.version = version.clone();
        plan.seed = airlock::seed::Seed::new(format!("{}-{version}", plan.name));
    }
    let name = plan.name.clone();
    let label = recipe.label(&plan);
    let choosing = FileLock::exclusive(&cache.join(format!("{name}.lock")))?;
    for script in &recipe.scripts {
        command::run(&mut Command::new(script))?;
    }
    let keys = if recipe.secure_boot { Some(test_secure_boot_keys(cache_root)?) } else { None };
    let keys = keys.as_deref();
    let release = if recipe.signed { Some(test_release_key(cache_root)?) } else { None };
    let release = release.as_deref();
    let mut found = usable_entry(&cache, &plan, recipe, appliance, keys, release)?;
    if found.is_none() {
        // Pinning asks the package indexes again (a minute or more), so it is done only when
        // no entry matches the lock as it is; the lock it writes may then match one.
        fetch(&plan)?;
        found = usable_entry(&cache, &plan, recipe, appliance, keys, release)?;
    }
    let (entry, in_use) = match found {
        Some(found) => found,
        None => {
            let entry = cache.join(format!("{label}-{}", &inputs_key(&plan, recipe, appliance, keys, release)?[..16]));
            let in_use = FileLock::exclusive(&with_suffix(&entry, ".lock"))?;
            build_entry(&plan, recipe, appliance, keys, release, &cache, &entry)?;
            (entry, in_use)
        }
    };
    in_use.downgrade()?;
    remove_other_entries(&cache, &label, &entry)?;
    drop(choosing);
    Ok(TestImage { image: entry.join(format!("{name}.raw")), dir: entry, plan, _in_use: in_use })
}

/// The entry for the inputs as they are now, held shared, if it exists and matches its
/// `SHA256SUMS`. A damaged one is removed (saying so) to be built again, unless a test is
/// booting it.
fn usable_entry(
    cache: &Path,
    plan: &airlock::plan::BuildPlan,
    recipe: &Recipe,
    appliance: &Path,
    keys: Option<&Path>,
    release: Option<&Path>,
) -> Result<Option<(PathBuf, FileLock)>> {
    let entry =
        cache.join(format!("{}-{}", recipe.label(plan), &inputs_key(plan, recipe, appliance, keys, release)?[..16]));
    if !entry.exists() {
        return Ok(None);
    }
    let lock_path = with_suffix(&entry, ".lock");
    let in_use = FileLock::shared(&lock_path)?;
    let damage = match verify(&entry) {
        Ok(()) => {
            log::info!("test image {}: cached at {}", plan.name, entry.display());
            return Ok(Some((entry, in_use)));
        }
        Err(e) => e,
    };
    drop(in_use);
    if FileLock::try_exclusive(&lock_path)?.is_none() {
        return Err(
            damage.context(format!("the cached test image {} is damaged, and a test is using it", entry.display()))
        );
    }
    log::warn!(
        "test image {}: the cached entry {} is damaged, building it again: {damage:#}",
        plan.name,
        entry.display()
    );
    fs::remove_dir_all(&entry).with_context(|| format!("removing {}", entry.display()))?;
    Ok(None)
}

/// Pins the spec's containers and mirrors with `airlock fetch --update`, which the build
/// needs first; once per lock and test process (a later release of the same spec, built by the
/// same test, uses the lock just written).
fn fetch(plan: &airlock::plan::BuildPlan) -> Result<()> {
    static FETCHED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    if plan.containers.is_empty() && plan.mirrors.is_empty() {
        return Ok(());
    }
    let mut fetched = FETCHED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if fetched.contains(&plan.lock_path) {
        log::info!("{}: pinned by this test process already", plan.lock_path.display());
        return Ok(());
    }
    let opts = airlock::fetch::FetchOptions {
        cache_dir: airlock::cache::cache_dir()?,
        update: true,
        registry: Default::default(),
    };
    airlock::fetch::fetch(plan, &opts).with_context(|| format!("fetching what {} pins", plan.spec_path.display()))?;
    fetched.push(plan.lock_path.clone());
    Ok(())
}

/// Where the TEST Secure Boot keys are (`<cache root>/secure-boot-test-keys/owner.*`).
pub fn secure_boot_prefix(cache_root: &Path) -> PathBuf {
    cache_root.join("secure-boot-test-keys/owner")
}

/// The owner's Secure Boot keys test images are signed with: TEST KEYS made once by
/// `airlock keygen --secure-boot` (the same code) into the cache and kept, so the images that use
/// them stay cached; made again when they no longer load (e.g. expired).
pub fn test_secure_boot_keys(cache_root: &Path) -> Result<PathBuf> {
    let prefix = secure_boot_prefix(cache_root);
    if load_test_keys(&prefix).is_ok() {
        return Ok(prefix);
    }
    let dir = prefix.parent().context("the keys have a folder")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    log::info!("making TEST Secure Boot keys {}.*", prefix.display());
    airlock::secure_boot::generate(&prefix, now())?;
    load_test_keys(&prefix)?;
    Ok(prefix)
}

fn load_test_keys(prefix: &Path) -> Result<airlock::secure_boot::OwnerKeys> {
    airlock::secure_boot::OwnerKeys::load(prefix, now())
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Where the TEST release key is (`<cache root>/release-test-key/release.{key,pub}`).
pub fn release_key_prefix(cache_root: &Path) -> PathBuf {
    cache_root.join("release-test-key/release")
}

/// The release key test images are signed with: a TEST KEY made once (unencrypted, by the
/// same code as `airlock keygen`) into the cache and kept, so the images signed with it stay
/// cached; returns its prefix.
pub fn test_release_key(cache_root: &Path) -> Result<PathBuf> {
    let prefix = release_key_prefix(cache_root);
    if load_release_key(&prefix).is_ok() {
        return Ok(prefix);
    }
    let dir = prefix.parent().context("the key has a folder")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for ext in [".key", ".pub"] {
        let stale = with_suffix(&prefix, ext);
        if stale.exists() {
            fs::remove_file(&stale).with_context(|| format!("removing the unreadable {}", stale.display()))?;
        }
    }
    log::info!("making the TEST release key {}.key", prefix.display());
    airlock::signing::write_key_pair(&airlock::signing::generate()?, &prefix, None)?;
    load_release_key(&prefix)?;
    Ok(prefix)
}

/// The TEST release key at `prefix` (see [`test_release_key`]).
pub fn load_release_key(prefix: &Path) -> Result<airlock::signing::KeyPair> {
    airlock::signing::read_secret_key(&with_suffix(prefix, ".key"), || {
        bail!("the TEST release key {} is encrypted", prefix.display())
    })
}

/// The SHA-256 of everything that goes into the image (see the module's documentation).
fn inputs_key(
    plan: &airlock::plan::BuildPlan,
    recipe: &Recipe,
    appliance: &Path,
    keys: Option<&Path>,
    release: Option<&Path>,
) -> Result<String> {
    let started = Instant::now();
    let mut h = Sha256::new();
    let formats = format!("{:?}", recipe.formats);
    for part in [CACHE_FORMAT, &plan.name, &plan.version, &plan.base.key(), &EPOCH.to_string(), &formats] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    let root = repo_root();
    let image_dir = plan.spec_path.parent().context("the spec has a folder")?;
    let image_rel = image_dir
        .strip_prefix(&root)
        .with_context(|| format!("test images come from specs in the repository, not {}", image_dir.display()))?;
    hash_tree(&mut h, &root, Path::new(""))?;
    hash_tree(&mut h, &root, image_rel)?;
    if !plan.lock_path.starts_with(image_dir) {
        hash_file(&mut h, &plan.lock_path, "lock")?;
    }
    hash_file(&mut h, appliance, "appliance program")?;
    if let Some(release) = release {
        hash_file(&mut h, &with_suffix(release, ".key"), "release key")?;
    }
    for overlay in &recipe.overlays {
        let rel = overlay
            .strip_prefix(&root)
            .with_context(|| format!("test overlays are in the repository, not {}", overlay.display()))?;
        h.update(format!("overlay {}\n", rel.display()).as_bytes());
        hash_tree(&mut h, &root, rel)?;
    }
    if let Some(prefix) = keys {
        for v in airlock::secure_boot::Variable::ALL {
            for ext in ["crt", "auth"] {
                hash_file(&mut h, &airlock::secure_boot::key_file(prefix, v, ext), "secure boot key")?;
            }
        }
    }
    let key = hex::encode(h.finalize());
    log::info!(
        "test image {}: inputs hashed in {:.1} s, key {}",
        plan.name,
        started.elapsed().as_secs_f64(),
        &key[..16]
    );
    Ok(key)
}

/// Feeds every file under `root/rel` into `h`, in a fixed order: its path, kind, executable
/// bit and content (a symlink's target). `rel` itself is hashed even if excluded.
fn hash_tree(h: &mut Sha256, root: &Path, rel: &Path) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        if NOT_IN_IMAGES.iter().any(|x| rel == Path::new(x)) {
            continue;
        }
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let shown = rel.to_string_lossy();
        if meta.is_dir() {
            hash_tree(h, root, &rel)?;
        } else if meta.is_symlink() {
            let target = fs::read_link(&path).with_context(|| format!("reading the link {}", path.display()))?;
            h.update(format!("link {shown} -> {}\n", target.display()).as_bytes());
        } else if meta.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let kind = if meta.permissions().mode() & 0o111 != 0 { "exec" } else { "file" };
            hash_file(h, &path, &format!("{kind} {shown}"))?;
        }
    }
    Ok(())
}

fn hash_file(h: &mut Sha256, path: &Path, label: &str) -> Result<()> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut content = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        content.update(&buf[..n]);
    }
    h.update(format!("{label} {}\n", hex::encode(content.finalize())).as_bytes());
    Ok(())
}

/// Builds the image into a temporary directory next to `entry`, checks it, and renames it.
fn build_entry(
    plan: &airlock::plan::BuildPlan,
    recipe: &Recipe,
    appliance: &Path,
    keys: Option<&Path>,
    release: Option<&Path>,
    cache: &Path,
    entry: &Path,
) -> Result<()> {
    let started = Instant::now();
    let partial = tempfile::Builder::new()
        .prefix(&format!(".{}.partial-", plan.name))
        .tempdir_in(cache)
        .with_context(|| format!("creating a build directory in {}", cache.display()))?;
    let opts = airlock::pipeline::BuildOptions {
        out_dir: partial.path().to_path_buf(),
        cache_dir: airlock::cache::cache_dir()?,
        clock: airlock::clock::BuildClock::fixed(EPOCH),
        test_overlays: std::iter::once(crate::guest_overlay_dir()).chain(recipe.overlays.iter().cloned()).collect(),
        formats: recipe.formats.clone(),
        signing_key: release.map(load_release_key).transpose()?,
        appliance: airlock::pipeline::ApplianceProgram::At(appliance.to_path_buf()),
        secure_boot: keys.map(load_test_keys).transpose()?,
    };
    airlock::pipeline::build(plan, &opts).with_context(|| format!("building the test image {}", plan.name))?;
    verify(partial.path()).context("checking the image just built")?;
    let built = partial.keep();
    fs::rename(&built, entry).with_context(|| format!("renaming {} to {}", built.display(), entry.display()))?;
    log::info!("test image {}: built in {:.0} s into {}", plan.name, started.elapsed().as_secs_f64(), entry.display());
    Ok(())
}

/// Checks every file of a cache entry against the `SHA256SUMS` its build wrote.
fn verify(dir: &Path) -> Result<()> {
    let started = Instant::now();
    let sums_path = dir.join("SHA256SUMS");
    let sums = fs::read_to_string(&sums_path).with_context(|| format!("reading {}", sums_path.display()))?;
    let checked = airlock::signing::sums::check_sha256sums(dir, &sums)?;
    if checked.is_empty() {
        bail!("{} lists no file", sums_path.display());
    }
    log::info!(
        "{}: {} files match SHA256SUMS ({:.1} s)",
        dir.display(),
        checked.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Removes this image's entries other than `keep` that no test is using, and the build
/// directories of builds that were killed (only the holder of `<name>.lock` builds).
fn remove_other_entries(cache: &Path, name: &str, keep: &Path) -> Result<()> {
    let prefix = format!("{name}-");
    let partial = format!(".{name}.partial-");
    for dirent in fs::read_dir(cache).with_context(|| format!("listing {}", cache.display()))? {
        let path = dirent.with_context(|| format!("listing {}", cache.display()))?.path();
        let file_name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if file_name.starts_with(&partial) {
            log::info!("test image {name}: removing {}, left by a build that did not finish", path.display());
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
            continue;
        }
        let is_entry = file_name.strip_prefix(&prefix).is_some_and(|key| key.len() == 16 && !key.contains('.'));
        if !is_entry || path == keep {
            continue;
        }
        let lock_path = with_suffix(&path, ".lock");
        let Some(_unused) = FileLock::try_exclusive(&lock_path)? else {
            log::info!("test image {name}: keeping {}, which a test is using", path.display());
            continue;
        };
        log::info!("test image {name}: removing the outdated {}", path.display());
        fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        fs::remove_file(&lock_path).with_context(|| format!("removing {}", lock_path.display()))?;
    }
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
