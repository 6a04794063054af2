//! What a mirror ecosystem is: everything airlock knows about one kind of mirrored package
//! (PyPI, npm, Go, NuGet, the Pulumi CLI and plugins), behind one trait, so that the layers
//! above ask the registry ([`super::ECOSYSTEMS`]) instead of matching names.
//!
//! An ecosystem owns, in its one file:
//! - its name: the lock's `set`, the folder it is served from, the last part of its spec key;
//! - its spec section (`[mirrors.<name>]`, or `[pulumi]`) and that section's validation into
//!   [`Settings`];
//! - its resolver (the settings turned into pinned files in the blob store) and what of the
//!   settings the lock's `inputs` digest covers;
//! - the documents generated from the pinned files (indexes), its nginx locations and its
//!   section of the listing page;
//! - the identity of each file it serves (package name, version, purl) for the manifest and
//!   SBOM;
//! - anything it installs on the appliance itself (the Pulumi CLI).
//!
//! This layer sits below the plan: it speaks only the spec's raw sections, [`PlanError`], the
//! lock's line for a file ([`LockedFile`]), the blob store, the downloader and the tree — never
//! the build plan, the lock file or the pipeline, which call it.

use super::download::Downloader;
use crate::oci::BlobStore;
use crate::spec::PlanError;
use crate::tree::Tree;
use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the served tree lives in the root filesystem (read-only, owned by root).
pub const ROOT: &str = "usr/share/airlock/mirror";
/// Stands for `scheme://host[:port]` of the request in served documents that need absolute URLs
/// (npm's `dist.tarball`, NuGet's service index, the setup scripts); nginx's `sub_filter`
/// replaces it with `$scheme://$http_host`, so the documents are right for whatever address or
/// port forward a client reached the appliance through.
pub const PLACEHOLDER: &str = "@AIRLOCK_MIRROR_URL@";

/// One kind of mirrored package. Implementations are unit structs listed in
/// [`super::ECOSYSTEMS`].
pub trait Ecosystem: Sync + fmt::Debug {
    /// `pypi`: the lock's set, the served folder (`<ROOT>/pypi/`), the spec key's last part.
    fn name(&self) -> &'static str;

    /// The spec's section: `mirrors.pypi`, or `pulumi` for the one top-level section.
    fn spec_key(&self) -> &'static str;

    /// Validates the section into settings; errors name the key below [`Self::spec_key`].
    fn validate(&self, section: toml::Value, spec: &SpecContext<'_>) -> Result<Arc<dyn Settings>, PlanError>;

    /// The documents generated from the pinned files (paths relative to the mirror's root).
    fn render(&self, files: &[StoredFile<'_>]) -> Result<Vec<(String, String)>>;

    /// nginx `location` blocks this ecosystem's folder needs inside the mirror's server
    /// (content types, what `sub_filter` may rewrite); empty when plain files will do.
    fn nginx_locations(&self) -> &'static str;

    /// Its section of the listing page.
    fn index_entry(&self) -> IndexEntry;

    /// What a pinned file is: its package's name and version, its purl, and whether it is an
    /// artifact of its own (`stored` is its verified copy in the blob store).
    fn identity(&self, file: &LockedFile, stored: &Path) -> Result<Identity>;
}

/// An ecosystem's validated spec section.
pub trait Settings: fmt::Debug + Send + Sync {
    /// What the lock's `inputs` digest covers: when it changes, the set is resolved again.
    fn inputs(&self) -> String;

    /// Resolves the settings with the ecosystem's own resolver and downloads every file into
    /// the store; returns their lock entries.
    fn resolve(&self, dl: &mut Downloader, store: &BlobStore) -> Result<Vec<LockedFile>>;

    /// Installs what the appliance itself uses of the set (the Pulumi CLI); most install
    /// nothing beyond the served files.
    fn install(&self, _root: &mut Tree, _files: &[StoredFile<'_>], _spool: &Path) -> Result<()> {
        Ok(())
    }
}

/// What validation needs to know of the spec file.
#[derive(Debug, Clone, Copy)]
pub struct SpecContext<'a> {
    /// The spec as named in errors.
    pub file: &'a str,
    /// Relative sources resolve against it.
    pub spec_dir: &'a Path,
}

impl SpecContext<'_> {
    /// The error for `key` (a full spec key).
    pub fn err(&self, key: &str, message: impl Into<String>) -> PlanError {
        PlanError { file: self.file.to_string(), key: key.to_string(), message: message.into() }
    }

    /// A section's keys, read into the ecosystem's own serde type: an unknown or mistyped key is
    /// an error naming the section.
    pub fn section<T: DeserializeOwned>(&self, key: &str, section: toml::Value) -> Result<T, PlanError> {
        section.try_into().map_err(|e: toml::de::Error| self.err(key, e.message().trim_end().to_string()))
    }
}

/// A set's part of the listing page: a heading and how clients use it (HTML; may use
/// [`PLACEHOLDER`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub heading: &'static str,
    pub usage: String,
}

/// A pinned file with its verified copy in the blob store.
#[derive(Debug, Clone, Copy)]
pub struct StoredFile<'a> {
    pub file: &'a LockedFile,
    pub stored: &'a Path,
}

/// A mirrored file: where the appliance serves it, where it came from, what it is. One line of
/// a `[[mirrors]]` set in `appliance.lock`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedFile {
    /// Relative to the mirror's root (`pypi/files/x.whl`): checked like an archive entry.
    pub path: String,
    /// The URL it was downloaded from, or a path relative to the spec.
    pub origin: String,
    /// SHA-256, 64 lower-case hex characters.
    pub sha256: String,
    pub size: u64,
    /// PyPI only: the wheel's `Requires-Python`.
    #[serde(default)]
    pub requires_python: Option<String>,
}

impl LockedFile {
    /// The entry for a file just fetched into the store.
    pub fn fetched(path: String, origin: &str, fetched: &super::download::Fetched) -> Self {
        Self {
            path,
            origin: origin.to_string(),
            sha256: fetched.digest.hex().to_string(),
            size: fetched.size,
            requires_python: None,
        }
    }

    pub fn digest(&self) -> Result<crate::oci::Digest> {
        crate::oci::Digest::from_hex(&self.sha256).map_err(|e| anyhow::anyhow!("{}: {e}", self.path))
    }

    /// The file name: the served path's last component.
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// What a served file is, for the manifest and SBOM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The package's name as its ecosystem spells it (`@pulumi/pulumi`, `typing-extensions`,
    /// `example.test/Mod`, `Pulumi.Aws`, `pulumi-resource-aws`).
    pub name: String,
    pub version: String,
    pub kind: FileKind,
}

/// How a served file counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// An artifact a client installs (a wheel, a tarball, a module zip, a `.nupkg`): one SBOM
    /// package of its own, with this purl.
    Package { purl: String },
    /// A protocol document of a package whose artifact is another file (Go's `.info` and `.mod`,
    /// a release's checksums file): listed in the manifest, not an SBOM package.
    Metadata,
    /// A Pulumi CLI release archive for `platform` (`linux-x64`).
    CliArchive { platform: String, purl: String },
    /// A Pulumi plugin archive.
    Plugin { kind: String, plugin: String, platform: String, purl: String },
}

impl FileKind {
    /// The purl of an SBOM package, if this file is one.
    pub fn purl(&self) -> Option<&str> {
        match self {
            Self::Package { purl } | Self::CliArchive { purl, .. } | Self::Plugin { purl, .. } => Some(purl),
            Self::Metadata => None,
        }
    }
}

/// An ecosystem's validated settings in the plan.
#[derive(Debug, Clone)]
pub struct MirrorSet {
    pub ecosystem: &'static dyn Ecosystem,
    pub settings: Arc<dyn Settings>,
}

impl MirrorSet {
    pub fn name(&self) -> &'static str {
        self.ecosystem.name()
    }

    /// The lock's `inputs` value for these settings.
    pub fn inputs_digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(self.settings.inputs().as_bytes())))
    }
}

/// Every ecosystem the spec configures, in the registry's order.
#[derive(Debug, Clone, Default)]
pub struct MirrorPlan {
    pub sets: Vec<MirrorSet>,
}

impl MirrorPlan {
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// The set of the ecosystem named `name`, if the spec configures it.
    pub fn get(&self, name: &str) -> Option<&MirrorSet> {
        self.sets.iter().find(|s| s.name() == name)
    }
}

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

/// A version as package managers write them: letters, digits and `.-+_`, starting with a
/// letter or digit.
pub fn is_version(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b".-+_".contains(&b))
}

/// `v` followed by a semantic version (Go's module versions; npm's and NuGet's with a `v` put
/// in front).
pub fn is_module_version(s: &str) -> bool {
    s.starts_with('v') && s.len() > 1 && is_version(&s[1..]) && !s.contains("..")
}

/// An argument handed to pip or npm: one token that cannot be read as an option.
pub fn is_client_argument(s: &str) -> bool {
    !s.trim().is_empty() && !s.starts_with('-') && !s.contains(['\n', '\r', '\0'])
}

/// Percent-encodes a purl component (everything but unreserved characters).
pub fn purl_escape(s: &str) -> String {
    crate::http::percent_encode(s)
}

/// The part of `path` below the ecosystem's `prefix` folder, or an error naming both.
pub fn below<'a>(path: &'a str, prefix: &str) -> Result<&'a str> {
    path.strip_prefix(prefix).with_context(|| format!("`{path}` is not below `{prefix}`"))
}

/// The verified store paths of `files`, in order: what [`Ecosystem::render`] and
/// [`Settings::install`] take.
pub fn stored<'a>(files: &'a [LockedFile], paths: &'a [PathBuf]) -> Vec<StoredFile<'a>> {
    files.iter().zip(paths).map(|(file, stored)| StoredFile { file, stored }).collect()
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

    #[test]
    fn purl_components_are_escaped() {
        assert_eq!(purl_escape("@pulumi"), "%40pulumi");
        assert_eq!(purl_escape("1:2.3+dfsg-1~deb13u1"), "1%3A2.3%2Bdfsg-1~deb13u1");
    }
}
