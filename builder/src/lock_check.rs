//! `appliance.lock` against the plan and the cache: is every container and mirror set of the
//! spec pinned, for the spec as it is now (`airlock build --check`), and does the cache hold
//! every pinned blob and file, intact (the build's first stage, the mirrors' stage, and `airlock
//! fetch` deciding what to download again). The lock file's format is `lock.rs`'s; this is the
//! layer above that knows the plan.

use crate::lock::{Lock, LockedBlob, LockedContainer, LockedMirrorSet};
use crate::mirror::MirrorSet;
use crate::oci::image::{CheckedManifest, Image, ParsedManifest};
use crate::oci::{BlobStore, Digest, Limits, Platform};
use crate::plan::{BuildPlan, ContainerPlan};
use anyhow::{Result, bail};
use std::path::PathBuf;

/// The exact command that pins the spec's images and mirrors and fills the cache: this very
/// airlock as it was started (a path when it was not found on `PATH`) and the spec as given. A
/// spec folder with its own `prepare` script (the demo's, which also builds the demo's local
/// inputs first) is named too.
pub fn fetch_command(plan: &BuildPlan) -> String {
    let program = std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        // A library caller (a test) is not airlock: it gets the plain name.
        .filter(|a| a.contains('/') && a.ends_with("/airlock"))
        .unwrap_or_else(|| "airlock".to_string());
    let mut text = format!("`{program} fetch {}`", plan.spec_path.display());
    let prepare = plan.spec_dir.join("prepare");
    if prepare.is_file() {
        text.push_str(&format!(" (or `{}`, which builds the spec's local inputs first)", prepare.display()));
    }
    text
}

/// Reads the lock a build needs: it must exist.
pub fn read_for_build(plan: &BuildPlan) -> Result<Lock> {
    read_pinned(plan).map(|(lock, _)| lock)
}

/// [`read_for_build`], with the SHA-256 of the lock file as read.
pub fn read_pinned(plan: &BuildPlan) -> Result<(Lock, String)> {
    match Lock::read_with_sha256(&plan.lock_path)? {
        Some(read) => Ok(read),
        None => bail!(
            "{} does not exist: run {} on a connected host to resolve and download the spec's container images and mirrors, then build again",
            plan.lock_path.display(),
            fetch_command(plan)
        ),
    }
}

/// `airlock build --check`'s look at the lock: none yet is a note (fetching is the next step); an
/// entry that is missing or was made for another reference or source is an error naming it.
pub fn check_against_spec(plan: &BuildPlan) -> Result<Option<String>> {
    if plan.containers.is_empty() && plan.mirrors.is_empty() {
        return Ok(None);
    }
    let Some(lock) = Lock::read(&plan.lock_path)? else {
        return Ok(Some(format!(
            "{} does not exist yet: `airlock fetch {}` resolves and downloads the {} container images and the mirrors",
            plan.lock_path.display(),
            plan.spec_path.display(),
            plan.containers.len()
        )));
    };
    let mut problems = mirror_problems(plan, &lock);
    for c in &plan.containers {
        match lock.entry(&c.name) {
            None => problems.push(format!("container `{}` ({}) is not in the lock", c.name, c.reference)),
            Some(e) if !e.matches(c) => problems.push(format!(
                "container `{}`: the lock has {} from `{}`, the spec asks for {} from `{}`",
                c.name, e.image, e.source, c.reference, c.source
            )),
            Some(_) => {}
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} does not match the spec (run {}):\n  - {}",
            plan.lock_path.display(),
            fetch_command(plan),
            problems.join("\n  - ")
        );
    }
    Ok(Some(format!("{}: every container and mirror set is pinned", plan.lock_path.display())))
}

/// Checks that the cache holds every blob `lock` pins for the plan's containers, each with its
/// digest and size, and returns the images ready for
/// [`write_registry_storage`](crate::oci::write_registry_storage) in the spec's order. Fails
/// naming the container, image and blob when anything is missing, corrupt or stale.
pub fn verify_cached(plan: &BuildPlan, lock: &Lock, store: &BlobStore) -> Result<Vec<Image>> {
    let mut images = Vec::with_capacity(plan.containers.len());
    // Every container is checked, so one message lists all that a fetch has to repair.
    let mut problems = Vec::new();
    let total = plan.containers.iter().filter_map(|c| lock.entry(&c.name)).map(|e| e.total_size()).sum();
    crate::progress::phase("hashing the locked blobs");
    crate::progress::measure(crate::progress::Unit::Bytes, Some(total));
    for c in &plan.containers {
        let result = match lock.entry(&c.name) {
            Some(entry) => verify_container(c, entry, store),
            None => Err(anyhow::anyhow!("{} has no entry for it", plan.lock_path.display())),
        };
        match result {
            Ok(image) => images.push(image),
            Err(e) => problems.push(format!("container `{}` ({}): {e:#}", c.name, c.reference)),
        }
    }
    if !problems.is_empty() {
        bail!(
            "the cache does not hold the container images appliance.lock pins; run {}:\n  {}",
            fetch_command(plan),
            problems.join("\n  ")
        );
    }
    Ok(images)
}

/// Checks one container's locked blobs in the cache and rebuilds its [`Image`] from them.
pub fn verify_container(c: &ContainerPlan, entry: &LockedContainer, store: &BlobStore) -> Result<Image> {
    if !entry.matches(c) {
        bail!(
            "appliance.lock pins `{}` from source `{}`, but the spec now says `{}` from `{}`",
            entry.image,
            entry.source,
            c.reference,
            c.source
        );
    }
    let platform = Platform::linux_amd64();
    if entry.platform != platform.to_string() {
        bail!("appliance.lock pins a {} image; the appliance needs {platform}", entry.platform);
    }
    if let Some(pinned) = c.reference.digest() {
        let resolved = entry.index.as_ref().unwrap_or(&entry.manifest);
        if &resolved.digest != pinned {
            bail!("the reference pins {pinned}, but appliance.lock has {}", resolved.digest);
        }
    }
    if let Some(index) = &entry.index {
        cached_path(store, &index.digest, index.size, "image index")?;
    }
    check_present(store, &entry.manifest.digest, "manifest")?;
    let manifest_bytes = store.read_verified(&entry.manifest.digest, entry.manifest.size, "manifest")?;
    let manifest = ParsedManifest::parse(
        entry.manifest.digest.clone(),
        entry.manifest.media_type.clone(),
        manifest_bytes,
        &Limits::default(),
    )?;

    // The lock lists the blobs for people to read; the manifest is what the registry serves.
    // They must agree, or a hand edit has made the lock lie.
    let refs = &manifest.refs;
    let config = LockedBlob {
        digest: refs.config_digest.clone(),
        size: refs.config_size,
        media_type: refs.config_media_type.clone(),
    };
    let layers: Vec<LockedBlob> = refs
        .layers
        .iter()
        .map(|l| LockedBlob { digest: l.digest.clone(), size: l.size, media_type: l.media_type.clone() })
        .collect();
    if config != entry.config || layers != entry.layers {
        bail!("appliance.lock's config and layers disagree with manifest {}", entry.manifest.digest);
    }

    check_present(store, &entry.config.digest, "config")?;
    let config_bytes = store.read_verified(&entry.config.digest, entry.config.size, "config")?;
    let checked = CheckedManifest::with_config(manifest, &config_bytes, &platform)?;
    // The manifest's layers are the lock's (checked above): each must be in the cache, intact.
    checked.into_image(&c.reference.to_string(), platform, |layer, what| {
        cached_path(store, &layer.digest, layer.size, what).map(drop)
    })
}

/// A missing blob gets its own message: the usual cause is a cache that was cleaned, not an
/// attack, and the fix is a fetch.
fn check_present(store: &BlobStore, digest: &Digest, what: &str) -> Result<PathBuf> {
    let path = store.path(digest);
    if !path.is_file() {
        bail!("{what} {digest} is not in the cache (no {})", path.display());
    }
    Ok(path)
}

/// The verified cache file of a blob (re-hashed on first use in this process).
fn cached_path(store: &BlobStore, digest: &Digest, size: u64, what: &str) -> Result<PathBuf> {
    check_present(store, digest, what)?;
    store.verified_path(digest, size, what)
}

/// What is wrong between the lock and the plan's mirrors (missing sets, changed settings),
/// without looking at the cache: `airlock build --check`'s view.
pub fn mirror_problems(plan: &BuildPlan, lock: &Lock) -> Vec<String> {
    let mut problems = Vec::new();
    for set in &plan.mirrors.sets {
        let name = set.name();
        match lock.mirror_set(name) {
            None => problems.push(format!("mirror set `{name}`: appliance.lock has no entry for it")),
            Some(locked) if locked.inputs != set.inputs_digest() => {
                problems.push(format!("mirror set `{name}`: the spec's settings changed since it was locked"))
            }
            Some(_) => {}
        }
    }
    problems
}

/// A mirror set of the plan with its pinned files, each verified in the store.
#[derive(Debug)]
pub struct VerifiedSet<'a> {
    pub planned: &'a MirrorSet,
    pub locked: &'a LockedMirrorSet,
    /// The store path of each of `locked.files`, in order.
    pub paths: Vec<PathBuf>,
}

/// The lock's sets for the plan, each checked to be there (an error says to run `airlock
/// fetch`), and every file verified in the store.
pub fn verify_mirrors<'a>(plan: &'a BuildPlan, lock: &'a Lock, store: &BlobStore) -> Result<Vec<VerifiedSet<'a>>> {
    let mut out = Vec::new();
    let mut problems = mirror_problems(plan, lock);
    for planned in &plan.mirrors.sets {
        let name = planned.name();
        let Some(locked) = lock.mirror_set(name).filter(|s| s.inputs == planned.inputs_digest()) else { continue };
        let mut paths = Vec::new();
        for f in &locked.files {
            match f.digest().and_then(|d| store.verified_path(&d, f.size, &f.path)) {
                Ok(p) => paths.push(p),
                Err(e) => problems.push(format!("mirror set `{name}`: {}: {e:#}", f.path)),
            }
        }
        out.push(VerifiedSet { planned, locked, paths });
    }
    if !problems.is_empty() {
        bail!(
            "the cache does not hold the mirrored files appliance.lock pins; run {}:\n  {}",
            fetch_command(plan),
            problems.join("\n  ")
        );
    }
    Ok(out)
}
