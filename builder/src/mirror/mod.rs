//! The Pulumi CLI, its plugins and language package mirrors: resolved and downloaded by
//! `airlock fetch` (online), pinned file by file in `appliance.lock`, and laid out by the build
//! as a static tree nginx serves on the appliance (offline).
//!
//! Each ecosystem is one *set* of files. A file's lock entry names the path the appliance serves
//! it at (relative to [`ROOT`]), its origin, SHA-256 and size; the build reads it from the blob
//! store and generates the indexes (PEP 503 pages, npm packuments, Go `@v/list`, NuGet flat
//! container indexes) from the files themselves.

pub mod download;
pub mod goproxy;
pub mod npm;
pub mod nuget;
pub mod plan;
pub mod pulumi;
pub mod pypi;
pub mod site;

use crate::lock::{Lock, LockedFile, LockedMirrorSet};
use crate::oci::BlobStore;
use crate::plan::BuildPlan;
use anyhow::{Context, Result, bail};
use download::{Downloader, Expect};
pub use plan::MirrorPlan;
use sha2::{Digest as _, Sha256};

/// The sets, in the lock's order.
pub const SETS: &[&str] = &["go", "npm", "nuget", "pulumi", "pypi"];
/// Where the served tree lives in the root filesystem (read-only, owned by root).
pub const ROOT: &str = "usr/share/airlock/mirror";
/// Stands for `scheme://host[:port]` of the request in served documents that need absolute URLs
/// (npm's `dist.tarball`, NuGet's service index, the setup scripts); nginx's `sub_filter`
/// replaces it with `$scheme://$http_host`, so the documents are right for whatever address or
/// port forward a client reached the appliance through.
pub const PLACEHOLDER: &str = "@AIRLOCK_MIRROR_URL@";

/// Checks a served path from the lock: relative, below the set's own folder, no `.`/`..` or
/// empty components, no characters a web server or shell would read specially.
pub fn check_served_path(path: &str, set: &str) -> Result<(), String> {
    if !path.starts_with(&format!("{set}/")) {
        return Err(format!("`{path}` is outside the set's folder `{set}/`"));
    }
    for c in path.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!("`{path}` has an empty, `.` or `..` component"));
        }
        if c.starts_with('.') {
            return Err(format!("`{path}` has a hidden component"));
        }
    }
    if !path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+~@!".contains(&b)) {
        return Err(format!("`{path}` has characters other than letters, digits and /._-+~@!"));
    }
    Ok(())
}

/// One file name out of a URL or index: checked so it cannot escape its folder.
pub fn check_file_name(name: &str, what: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+~!".contains(&b));
    if !ok {
        bail!("{what}: `{name}` is not a plain file name");
    }
    Ok(())
}

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

/// A set resolved afresh: its files in the store, with their lock entries.
pub(crate) type Resolved = Vec<LockedFile>;

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
    let m = &plan.mirrors;
    let mut dl = Downloader::new(&plan.spec_dir);
    // `add` hashes the inputs text the same way `wanted_sets` does.
    let mut sets = Vec::new();
    let mut report = Vec::new();
    let mut add = |name: &str,
                   inputs: String,
                   dl: &mut Downloader,
                   resolve: &mut dyn FnMut(&mut Downloader) -> Result<Resolved>|
     -> Result<()> {
        let inputs = format!("sha256:{}", hex::encode(Sha256::digest(inputs.as_bytes())));
        let pinned = old.mirror_set(name).filter(|s| s.inputs == inputs && !update);
        let (files, outcome) = match pinned {
            Some(set) => {
                let restored = restore(set, dl, store).with_context(|| format!("mirror set `{name}`"))?;
                (set.files.clone(), if restored { SetOutcome::Restored } else { SetOutcome::Cached })
            }
            None => {
                let mut files = resolve(dl).with_context(|| format!("mirror set `{name}`: resolving"))?;
                files.sort();
                files.dedup();
                if let Some(w) = files.windows(2).find(|w| w[0].path == w[1].path) {
                    bail!(
                        "mirror set `{name}`: two different files for `{}` ({} and {})",
                        w[0].path,
                        w[0].origin,
                        w[1].origin
                    );
                }
                (files, SetOutcome::Resolved)
            }
        };
        log::info!("mirror {name}: {} files ({outcome:?})", files.len());
        report.push((name.to_string(), outcome, files.len()));
        sets.push(LockedMirrorSet { set: name.to_string(), inputs, files });
        Ok(())
    };
    if let Some(p) = &m.pulumi {
        add("pulumi", pulumi::inputs(p), &mut dl, &mut |dl| pulumi::resolve(p, dl, store))?;
    }
    if let Some(p) = &m.pypi {
        add("pypi", format!("{p:?}"), &mut dl, &mut |dl| pypi::resolve(p, dl, store))?;
    }
    if let Some(p) = &m.npm {
        add("npm", format!("{p:?}"), &mut dl, &mut |dl| npm::resolve(p, dl, store))?;
    }
    if let Some(p) = &m.go {
        add("go", goproxy::inputs(p), &mut dl, &mut |dl| goproxy::resolve(p, dl, store))?;
    }
    if let Some(p) = &m.nuget {
        add("nuget", nuget::inputs(p), &mut dl, &mut |dl| nuget::resolve(p, dl, store))?;
    }
    let downloaded = dl.downloaded_bytes();
    Ok(Fetched { sets, report, downloaded })
}

/// Makes sure the store holds every file of a pinned set, downloading missing ones from their
/// origins; returns whether anything had to be downloaded.
fn restore(set: &LockedMirrorSet, dl: &mut Downloader, store: &BlobStore) -> Result<bool> {
    let mut any = false;
    for f in &set.files {
        let digest = f.digest()?;
        if store.find(&digest, &f.path)? == Some(f.size) {
            continue;
        }
        any = true;
        dl.fetch(&f.origin, &Expect { sha256: Some(digest), size: Some(f.size) }, store)
            .with_context(|| format!("`{}` as pinned in the lock", f.path))?;
    }
    Ok(any)
}

/// A lock entry for a file just fetched.
pub(crate) fn locked(path: String, origin: &str, fetched: &download::Fetched) -> LockedFile {
    LockedFile {
        path,
        origin: origin.to_string(),
        sha256: fetched.digest.hex().to_string(),
        size: fetched.size,
        requires_python: None,
    }
}

/// The sets the plan needs, each with the digest of the spec settings it is resolved from.
fn wanted_sets(plan: &BuildPlan) -> Vec<(&'static str, String)> {
    let m = &plan.mirrors;
    [
        m.pulumi.as_ref().map(|p| ("pulumi", pulumi::inputs(p))),
        m.pypi.as_ref().map(|p| ("pypi", format!("{p:?}"))),
        m.npm.as_ref().map(|p| ("npm", format!("{p:?}"))),
        m.go.as_ref().map(|p| ("go", goproxy::inputs(p))),
        m.nuget.as_ref().map(|p| ("nuget", nuget::inputs(p))),
    ]
    .into_iter()
    .flatten()
    .map(|(name, inputs)| (name, format!("sha256:{}", hex::encode(Sha256::digest(inputs.as_bytes())))))
    .collect()
}

/// What is wrong between the lock and the plan's mirrors (missing sets, changed settings),
/// without looking at the cache: `airlock build --check`'s view.
pub fn lock_problems(plan: &BuildPlan, lock: &Lock) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, inputs) in wanted_sets(plan) {
        match lock.mirror_set(name) {
            None => problems.push(format!("mirror set `{name}`: appliance.lock has no entry for it")),
            Some(set) if set.inputs != inputs => {
                problems.push(format!("mirror set `{name}`: the spec's settings changed since it was locked"))
            }
            Some(_) => {}
        }
    }
    problems
}

/// The lock's sets for the plan, each checked to be there (an error says to run `airlock
/// fetch`), and every file verified in the store. Returns the store path of each file.
pub fn verify_cached<'a>(
    plan: &BuildPlan,
    lock: &'a Lock,
    store: &BlobStore,
) -> Result<Vec<(&'a LockedMirrorSet, Vec<std::path::PathBuf>)>> {
    let mut out = Vec::new();
    let mut problems = lock_problems(plan, lock);
    for (name, inputs) in wanted_sets(plan) {
        let Some(set) = lock.mirror_set(name).filter(|s| s.inputs == inputs) else { continue };
        let mut paths = Vec::new();
        for f in &set.files {
            match f.digest().and_then(|d| store.verified_path(&d, f.size, &f.path)) {
                Ok(p) => paths.push(p),
                Err(e) => problems.push(format!("mirror set `{name}`: {}: {e:#}", f.path)),
            }
        }
        out.push((set, paths));
    }
    if !problems.is_empty() {
        bail!(
            "the cache does not hold the mirrored files appliance.lock pins; run `airlock fetch {}`:\n  {}",
            plan.spec_path.display(),
            problems.join("\n  ")
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_paths_stay_in_their_set() {
        assert!(check_served_path("npm/@pulumi/pulumi/-/pulumi-3.0.0.tgz", "npm").is_ok());
        assert!(check_served_path("go/example.test/!fixture/@v/v1.0.0.zip", "go").is_ok());
        for bad in ["pypi/../etc/passwd", "pypi//x", "pypi/./x", "/pypi/x", "npm/x", "pypi/.hidden", "pypi/a b"] {
            assert!(check_served_path(bad, "pypi").is_err(), "{bad}");
        }
        assert!(check_file_name("../x", "t").is_err());
        assert!(check_file_name("x%2f..", "t").is_err());
        assert!(check_file_name("dill-0.4.1-py3-none-any.whl", "t").is_ok());
    }
}
