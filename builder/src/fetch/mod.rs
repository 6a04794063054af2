//! `airlock fetch`: the online side. Resolves the spec's container images, stores every blob
//! verified in the cache's blob store, and pins them in `appliance.lock`, so that
//! `airlock build` needs no network.
//!
//! Like a package manager's lock, the lock file wins over tags: a container whose entry still
//! matches the spec (same reference, same source) keeps its pinned digests, and only blobs
//! missing from the cache are downloaded again, by digest. `--update` re-resolves tags (and
//! re-reads local sources). A container whose reference or source changed is resolved afresh;
//! entries for containers no longer in the spec are dropped.

pub mod challenge;
pub mod credentials;
pub mod mirrors;
pub mod registry;

use crate::lock::{Lock, LockedContainer};
use crate::lock_check;
use crate::oci::{self, BlobStore, ReadOptions};
use crate::plan::{BuildPlan, ContainerPlan, ContainerSource};
use anyhow::{Context, Result, bail};
use registry::{RegistryClient, RegistryOptions};
use std::path::{Path, PathBuf};

/// How a fetch runs.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    pub cache_dir: PathBuf,
    /// Re-resolve every tag and re-read every local source, ignoring the lock's pins.
    pub update: bool,
    pub registry: RegistryOptions,
}

/// What happened to one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Pinned in the lock and complete in the cache: nothing was read or downloaded.
    Cached,
    /// Pinned in the lock; missing blobs were fetched again by digest.
    Restored,
    /// Resolved from its reference or source (new, changed or `--update`).
    Resolved,
}

/// What a fetch did.
#[derive(Debug)]
pub struct FetchReport {
    pub lock_path: PathBuf,
    /// Whether `appliance.lock` was written (false when its text did not change).
    pub lock_changed: bool,
    /// Per container, in the spec's order: its name, what happened, its manifest digest.
    pub containers: Vec<(String, Outcome, oci::Digest)>,
    /// Per mirror set: its name, what happened, how many files it pins.
    pub mirrors: Vec<(String, mirrors::SetOutcome, usize)>,
    /// Bytes downloaded from registries and mirrors' origins.
    pub downloaded_bytes: u64,
}

/// The blob store under a cache directory: `<cache>/blobs/sha256/<hex>`.
pub fn blob_store(cache_dir: &Path) -> Result<BlobStore> {
    BlobStore::new(&cache_dir.join("blobs"))
}

/// Fetches the plan's containers into the cache and writes the lock.
pub fn fetch(plan: &BuildPlan, opts: &FetchOptions) -> Result<FetchReport> {
    let store = blob_store(&opts.cache_dir)?;
    let old = Lock::read(&plan.lock_path)?.unwrap_or_default();
    let mut client = RegistryClient::new(opts.registry.clone());
    let mut entries = Vec::with_capacity(plan.containers.len());
    let mut report = Vec::with_capacity(plan.containers.len());
    for c in &plan.containers {
        let stage = crate::progress::stage(&format!("image {}", c.name));
        let pinned = old.entry(&c.name).filter(|e| e.matches(c) && !opts.update);
        let (entry, outcome) = match pinned {
            Some(entry) => match lock_check::verify_container(c, entry, &store) {
                Ok(_) => (entry.clone(), Outcome::Cached),
                Err(e) => {
                    log::info!("{}: {e:#}; fetching its pinned digests again", c.name);
                    let fresh = restore(c, entry, &store, &mut client).with_context(|| {
                        format!("container `{}`: fetching {} as pinned in the lock", c.name, c.reference)
                    })?;
                    (fresh, Outcome::Restored)
                }
            },
            None => {
                let fresh = resolve(c, &store, &mut client)
                    .with_context(|| format!("container `{}`: fetching {} from {}", c.name, c.reference, c.source))?;
                (fresh, Outcome::Resolved)
            }
        };
        stage.finish(true);
        let what = format!("{outcome:?}").to_lowercase();
        crate::progress::item(&format!("{}: {} {} ({what})", c.name, c.reference, entry.manifest.digest));
        report.push((c.name.clone(), outcome, entry.manifest.digest.clone()));
        entries.push(entry);
    }
    let mirrored = mirrors::fetch(plan, &old, &store, opts.update)?;
    let lock = Lock { containers: entries, mirrors: mirrored.sets, ..Lock::new() };
    // A spec without containers or mirrors gets no lock file unless it had one (which then
    // empties).
    let nothing = lock.containers.is_empty() && lock.mirrors.is_empty();
    let lock_changed = if nothing && !plan.lock_path.exists() { false } else { lock.write(&plan.lock_path)? };
    Ok(FetchReport {
        lock_path: plan.lock_path.clone(),
        lock_changed,
        containers: report,
        mirrors: mirrored.report,
        downloaded_bytes: client.downloaded_bytes() + mirrored.downloaded,
    })
}

/// Resolves a container from its reference or source, as it is now.
fn resolve(c: &ContainerPlan, store: &BlobStore, client: &mut RegistryClient) -> Result<LockedContainer> {
    match &c.source {
        ContainerSource::Registry => {
            let pulled = client.pull(&c.reference, &c.reference.manifest_reference(), store)?;
            if let Some(pinned) = c.reference.digest() {
                // The client checked the bytes it got for the digest against it; this makes sure
                // the lock records that very document.
                let resolved = pulled.index.as_ref().map_or(&pulled.image.manifest_digest, |i| &i.digest);
                if resolved != pinned {
                    bail!("{} resolved to {resolved}", c.reference);
                }
            }
            LockedContainer::new(c, &pulled.image, pulled.index)
        }
        ContainerSource::Local { source, .. } => {
            let image = oci::read_image(source, store, &ReadOptions::default())?;
            if let Some(pinned) = c.reference.digest()
                && *pinned != image.manifest_digest
            {
                bail!("{source} holds manifest {}, but the reference pins {pinned}", image.manifest_digest);
            }
            LockedContainer::new(c, &image, None)
        }
    }
}

/// Fetches a pinned container's blobs again by digest; what arrives must be what the lock pins.
fn restore(
    c: &ContainerPlan,
    entry: &LockedContainer,
    store: &BlobStore,
    client: &mut RegistryClient,
) -> Result<LockedContainer> {
    let fresh = match &c.source {
        ContainerSource::Registry => {
            let at = entry.index.as_ref().unwrap_or(&entry.manifest).digest.to_string();
            let pulled = client.pull(&c.reference, &at, store)?;
            LockedContainer::new(c, &pulled.image, pulled.index)?
        }
        // A local source has no digests to ask for: read it again and compare.
        ContainerSource::Local { .. } => resolve(c, store, client)?,
    };
    if fresh != *entry {
        bail!(
            "{} now holds manifest {}, but appliance.lock pins {}: run `airlock fetch --update` to take the new image",
            c.source,
            fresh.manifest.digest,
            entry.manifest.digest
        );
    }
    Ok(fresh)
}
