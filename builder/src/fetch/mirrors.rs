//! `airlock fetch` for the mirrors: every ecosystem set of the plan is resolved by its own
//! resolver ([`crate::mirror::Settings::resolve`]) or kept as the lock pins it, and every file
//! lands verified in the blob store.

use crate::lock::{Lock, LockedMirrorSet};
use crate::mirror::download::{Downloader, Expect};
use crate::mirror::{LockedFile, MirrorSet};
use crate::oci::BlobStore;
use crate::plan::BuildPlan;
use anyhow::{Context, Result, bail};

/// What happened to one set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    /// Pinned and complete in the cache.
    Cached,
    /// Pinned; missing files were downloaded again and matched the lock.
    Restored,
    /// Resolved afresh (new, changed settings, or `--update`).
    Resolved,
}

/// What [`fetch`] did.
#[derive(Debug)]
pub struct Fetched {
    /// The lock's sets.
    pub sets: Vec<LockedMirrorSet>,
    /// Per set: its name, what happened, how many files it pins.
    pub report: Vec<(String, SetOutcome, usize)>,
    /// Bytes downloaded over HTTP.
    pub downloaded: u64,
}

/// Fetches every set of the plan, reusing the old lock's pins where the spec is unchanged.
pub fn fetch(plan: &BuildPlan, old: &Lock, store: &BlobStore, update: bool) -> Result<Fetched> {
    let mut dl = Downloader::new(&plan.spec_dir);
    let mut sets = Vec::new();
    let mut report = Vec::new();
    for set in &plan.mirrors.sets {
        let name = set.name();
        let stage = crate::progress::stage(&format!("mirror {name}"));
        let (files, outcome) = fetch_set(set, old, store, update, &mut dl)?;
        stage.finish(true);
        let what = format!("{outcome:?}").to_lowercase();
        crate::progress::item(&format!("mirror {name}: {} files ({what})", files.len()));
        report.push((name.to_string(), outcome, files.len()));
        sets.push(LockedMirrorSet { set: name.to_string(), inputs: set.inputs_digest(), files });
    }
    Ok(Fetched { sets, report, downloaded: dl.downloaded_bytes() })
}

fn fetch_set(
    set: &MirrorSet,
    old: &Lock,
    store: &BlobStore,
    update: bool,
    dl: &mut Downloader,
) -> Result<(Vec<LockedFile>, SetOutcome)> {
    let name = set.name();
    let inputs = set.inputs_digest();
    if let Some(pinned) = old.mirror_set(name).filter(|s| s.inputs == inputs && !update) {
        crate::progress::measure(crate::progress::Unit::Items("files"), Some(pinned.files.len() as u64));
        let restored = restore(pinned, dl, store).with_context(|| format!("mirror set `{name}`"))?;
        return Ok((pinned.files.clone(), if restored { SetOutcome::Restored } else { SetOutcome::Cached }));
    }
    crate::progress::measure(crate::progress::Unit::Items("files"), None);
    let mut files = set.settings.resolve(dl, store).with_context(|| format!("mirror set `{name}`: resolving"))?;
    files.sort();
    files.dedup();
    if let Some(w) = files.windows(2).find(|w| w[0].path == w[1].path) {
        bail!("mirror set `{name}`: two different files for `{}` ({} and {})", w[0].path, w[0].origin, w[1].origin);
    }
    // What the resolver produced is held to the rules a lock read from disk is.
    for f in &files {
        crate::mirror::check_served_path(&f.path, name).map_err(|e| anyhow::anyhow!("mirror set `{name}`: {e}"))?;
    }
    Ok((files, SetOutcome::Resolved))
}

/// Makes sure the store holds every file of a pinned set, downloading missing ones from their
/// origins; returns whether anything had to be downloaded.
fn restore(set: &LockedMirrorSet, dl: &mut Downloader, store: &BlobStore) -> Result<bool> {
    let mut any = false;
    for f in &set.files {
        let digest = f.digest()?;
        if store.find(&digest, &f.path)? == Some(f.size) {
            crate::progress::items(1);
            continue;
        }
        any = true;
        dl.fetch(&f.origin, &Expect { sha256: Some(digest), size: Some(f.size) }, store)
            .with_context(|| format!("`{}` as pinned in the lock", f.path))?;
    }
    Ok(any)
}
