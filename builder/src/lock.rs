//! `appliance.lock`: the container images `airlock fetch` resolved, pinned by digest, next to the
//! spec. `airlock build` uses exactly these blobs from the cache and never the network.
//!
//! The file is TOML written by hand in one fixed layout (containers sorted by name, one blob per
//! line, keys in a fixed order), so that a re-fetch that changes nothing rewrites nothing and a
//! change reads as a small diff in review:
//!
//! ```toml
//! version = 1
//!
//! [[containers]]
//! name = "api"
//! image = "docker.io/pulumi/service:1.2.3"
//! source = "registry"
//! platform = "linux/amd64"
//! index = { digest = "sha256:…", size = 1609, media_type = "application/vnd.oci.image.index.v1+json" }
//! manifest = { digest = "sha256:…", size = 1234, media_type = "application/vnd.oci.image.manifest.v1+json" }
//! config = { digest = "sha256:…", size = 1469, media_type = "application/vnd.oci.image.config.v1+json" }
//! layers = [
//!   { digest = "sha256:…", size = 3208, media_type = "application/vnd.oci.image.layer.v1.tar+gzip" },
//! ]
//! ```
//!
//! `index` is there only when the reference resolved to a multi-platform index; `manifest` is
//! then the `linux/amd64` entry of it.
//!
//! Mirrored files (the Pulumi CLI and plugins, PyPI, npm, Go and NuGet packages) follow, one
//! set per ecosystem, sorted by set and then by the path the appliance serves the file at:
//!
//! ```toml
//! [[mirrors]]
//! set = "pypi"
//! inputs = "sha256:…"   # the spec's settings this set was resolved from
//! files = [
//!   { path = "pypi/files/dill-0.4.1-py3-none-any.whl", origin = "https://…", sha256 = "…", size = 120019, requires_python = ">=3.9" },
//! ]
//! ```

use crate::oci::image::{self, Image};
use crate::oci::{Digest, Limits};
use crate::output_file::PartialFile;
use crate::plan::ContainerPlan;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// A mirrored file's line: its format belongs to the mirror ecosystems, which make them.
pub use crate::mirror::LockedFile;
/// The lock's file name, next to the spec (the plan decides where the lock is).
pub use crate::plan::LOCK_FILE_NAME;
/// The format version this airlock writes and reads.
const VERSION: u32 = 1;

/// The whole lock file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub version: u32,
    #[serde(default)]
    pub containers: Vec<LockedContainer>,
    #[serde(default)]
    pub mirrors: Vec<LockedMirrorSet>,
}

/// One ecosystem's mirrored files, pinned.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedMirrorSet {
    /// The ecosystem's name (`pypi`): one of [`crate::mirror::ECOSYSTEMS`].
    pub set: String,
    /// A digest of the spec's settings the set was resolved from: when they change, the set is
    /// resolved again.
    pub inputs: String,
    pub files: Vec<LockedFile>,
}

/// One container's image, pinned.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedContainer {
    /// The spec's local name.
    pub name: String,
    /// The normalized reference the spec gave when this was fetched.
    pub image: String,
    /// The spec's source, as written.
    pub source: String,
    /// `os/architecture`.
    pub platform: String,
    /// The multi-platform index the reference resolved to, if it was one.
    #[serde(default)]
    pub index: Option<LockedBlob>,
    pub manifest: LockedBlob,
    pub config: LockedBlob,
    pub layers: Vec<LockedBlob>,
}

/// A blob: what the cache must hold under its digest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedBlob {
    #[serde(deserialize_with = "deserialize_digest")]
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

fn deserialize_digest<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
    let s = String::deserialize(d)?;
    Digest::parse(&s).map_err(serde::de::Error::custom)
}

impl LockedContainer {
    /// The entry for `container` as read into the blob store. `index` is the multi-platform
    /// index the reference resolved to, if any.
    pub fn new(container: &ContainerPlan, image: &Image, index: Option<LockedBlob>) -> Result<Self> {
        let refs = image::parse_manifest(&image.manifest_bytes, &image.manifest_media_type, &Limits::default())
            .with_context(|| format!("in manifest {}", image.manifest_digest))?;
        Ok(Self {
            name: container.name.clone(),
            image: container.reference.to_string(),
            source: container.source.to_string(),
            platform: image.platform.to_string(),
            index,
            manifest: LockedBlob {
                digest: image.manifest_digest.clone(),
                size: image.manifest_bytes.len() as u64,
                media_type: image.manifest_media_type.clone(),
            },
            config: LockedBlob {
                digest: image.config_digest.clone(),
                size: image.config_size,
                media_type: refs.config_media_type,
            },
            layers: image
                .layers
                .iter()
                .map(|l| LockedBlob { digest: l.digest.clone(), size: l.size, media_type: l.media_type.clone() })
                .collect(),
        })
    }

    /// Whether this entry was made for the spec's container as it is now (same reference,
    /// same source).
    /// The bytes of every blob it pins (index, manifest, config, layers).
    pub fn total_size(&self) -> u64 {
        let blobs = self.index.iter().chain([&self.manifest, &self.config]).chain(&self.layers);
        blobs.map(|b| b.size).sum()
    }

    pub fn matches(&self, container: &ContainerPlan) -> bool {
        self.name == container.name
            && self.image == container.reference.to_string()
            && self.source == container.source.to_string()
    }
}

impl Lock {
    /// An empty lock.
    pub fn new() -> Self {
        Self { version: VERSION, containers: Vec::new(), mirrors: Vec::new() }
    }

    /// Parses a lock file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let lock: Lock = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {}", e.to_string().trim_end()))?;
        if lock.version != VERSION {
            bail!("{origin}: lock format version {} is not the one this airlock reads ({VERSION})", lock.version);
        }
        let mut names: Vec<&str> = lock.containers.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            bail!("{origin}: container `{}` is locked twice", w[0]);
        }
        let mut sets: Vec<&str> = Vec::new();
        for m in &lock.mirrors {
            crate::mirror::ecosystem(&m.set).map_err(|e| anyhow::anyhow!("{origin}: mirror set {e}"))?;
            if sets.contains(&m.set.as_str()) {
                bail!("{origin}: mirror set `{}` is locked twice", m.set);
            }
            sets.push(&m.set);
            let mut paths: Vec<&str> = Vec::new();
            for f in &m.files {
                crate::mirror::check_served_path(&f.path, &m.set)
                    .map_err(|e| anyhow::anyhow!("{origin}: mirror set `{}`: {e}", m.set))?;
                f.digest().map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
                paths.push(&f.path);
            }
            paths.sort_unstable();
            if let Some(w) = paths.windows(2).find(|w| w[0] == w[1]) {
                bail!("{origin}: mirror set `{}` locks `{}` twice", m.set, w[0]);
            }
        }
        Ok(lock)
    }

    /// Reads `path`; `None` if there is no such file.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        Ok(Self::read_with_sha256(path)?.map(|(lock, _)| lock))
    }

    /// Reads `path` with the SHA-256 of the bytes read (what the manifest records as the
    /// build's input); `None` if there is no such file.
    pub fn read_with_sha256(path: &Path) -> Result<Option<(Self, String)>> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => {
                let text = crate::input_file::read_capped_text(path, MAX_LOCK_FILE, "lock file")?;
                let lock = Self::parse(&text, &path.display().to_string())?;
                Ok(Some((lock, Digest::of_bytes(text.as_bytes()).hex().to_string())))
            }
        }
    }

    /// The entry for the container named `name`.
    pub fn entry(&self, name: &str) -> Option<&LockedContainer> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// The file's text, in its one layout (containers sorted by name).
    pub fn render(&self) -> String {
        let mut containers: Vec<&LockedContainer> = self.containers.iter().collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = String::new();
        out.push_str(
            "# Written by `airlock fetch`: the container images and mirrored files of the spec next to this\n",
        );
        out.push_str(
            "# file, pinned by digest. `airlock build` uses exactly these; `airlock fetch --update` re-resolves.\n",
        );
        // Writing into a String cannot fail.
        let _ = writeln!(out, "version = {}", self.version);
        for c in containers {
            let _ = write!(
                out,
                "\n[[containers]]\nname = {}\nimage = {}\nsource = {}\nplatform = {}\n",
                quote(&c.name),
                quote(&c.image),
                quote(&c.source),
                quote(&c.platform)
            );
            if let Some(index) = &c.index {
                let _ = writeln!(out, "index = {}", inline(index));
            }
            let _ = writeln!(out, "manifest = {}", inline(&c.manifest));
            let _ = writeln!(out, "config = {}", inline(&c.config));
            out.push_str("layers = [\n");
            for l in &c.layers {
                let _ = writeln!(out, "  {},", inline(l));
            }
            out.push_str("]\n");
        }
        let mut sets: Vec<&LockedMirrorSet> = self.mirrors.iter().collect();
        sets.sort_by(|a, b| a.set.cmp(&b.set));
        for m in sets {
            let _ = write!(out, "\n[[mirrors]]\nset = {}\ninputs = {}\nfiles = [\n", quote(&m.set), quote(&m.inputs));
            let mut files: Vec<&LockedFile> = m.files.iter().collect();
            files.sort();
            for f in files {
                let _ = write!(
                    out,
                    "  {{ path = {}, origin = {}, sha256 = {}, size = {}",
                    quote(&f.path),
                    quote(&f.origin),
                    quote(&f.sha256),
                    f.size
                );
                if let Some(r) = &f.requires_python {
                    let _ = write!(out, ", requires_python = {}", quote(r));
                }
                out.push_str(" },\n");
            }
            out.push_str("]\n");
        }
        out
    }

    /// The locked set named `set`.
    pub fn mirror_set(&self, set: &str) -> Option<&LockedMirrorSet> {
        self.mirrors.iter().find(|m| m.set == set)
    }

    /// Writes the lock to `path` atomically; leaves the file untouched when its text would not
    /// change. Returns whether it changed.
    pub fn write(&self, path: &Path) -> Result<bool> {
        let text = self.render();
        if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
            return Ok(false);
        }
        let partial = PartialFile::create(path)?;
        partial.file().write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        partial.commit()?;
        Ok(true)
    }
}

/// The most of `appliance.lock` that is read: one line per pinned file; the demo's, with
/// thousands of mirrored packages, is a few hundred KiB.
pub const MAX_LOCK_FILE: u64 = 64 * 1024 * 1024;

impl Default for Lock {
    fn default() -> Self {
        Self::new()
    }
}

fn inline(b: &LockedBlob) -> String {
    format!("{{ digest = {}, size = {}, media_type = {} }}", quote(&b.digest.to_string()), b.size, quote(&b.media_type))
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8, size: u64, media_type: &str) -> LockedBlob {
        LockedBlob { digest: Digest::of_bytes(&[n]), size, media_type: media_type.into() }
    }

    fn sample() -> Lock {
        let entry = |name: &str| LockedContainer {
            name: name.into(),
            image: format!("docker.io/demo/{name}:1"),
            source: "oci-archive:images/a \"b\".tar:1".into(),
            platform: "linux/amd64".into(),
            index: (name == "web").then(|| blob(9, 500, crate::oci::media_type::OCI_INDEX)),
            manifest: blob(1, 100, crate::oci::media_type::OCI_MANIFEST),
            config: blob(2, 200, crate::oci::media_type::OCI_CONFIG),
            layers: vec![
                blob(3, 300, crate::oci::media_type::OCI_LAYER_GZIP),
                blob(4, 400, crate::oci::media_type::OCI_LAYER_TAR),
            ],
        };
        let file = |path: &str, n: u8| LockedFile {
            path: path.into(),
            origin: format!("https://files.example.test/{path}"),
            sha256: Digest::of_bytes(&[n]).hex().to_string(),
            size: u64::from(n),
            requires_python: (n == 1).then(|| ">=3.9".to_string()),
        };
        let mirrors = vec![
            LockedMirrorSet {
                set: "pypi".into(),
                inputs: "sha256:00".into(),
                files: vec![file("pypi/files/b-1-py3-none-any.whl", 2), file("pypi/files/a-1-py3-none-any.whl", 1)],
            },
            LockedMirrorSet {
                set: "npm".into(),
                inputs: "sha256:01".into(),
                files: vec![file("npm/a/-/a-1.0.0.tgz", 3)],
            },
        ];
        Lock { version: VERSION, containers: vec![entry("web"), entry("api")], mirrors }
    }

    #[test]
    fn renders_sorted_and_reads_back() {
        let lock = sample();
        let text = lock.render();
        let api = text.find("name = \"api\"").unwrap();
        let web = text.find("name = \"web\"").unwrap();
        assert!(api < web, "{text}");
        assert!(text.contains("source = \"oci-archive:images/a \\\"b\\\".tar:1\""), "{text}");
        let back = Lock::parse(&text, "appliance.lock").unwrap();
        let mut sorted = lock.clone();
        sorted.containers.sort_by(|a, b| a.name.cmp(&b.name));
        sorted.mirrors.sort_by(|a, b| a.set.cmp(&b.set));
        for m in &mut sorted.mirrors {
            m.files.sort();
        }
        assert!(text.find("set = \"npm\"").unwrap() < text.find("set = \"pypi\"").unwrap(), "{text}");
        assert!(text.find("a-1-py3").unwrap() < text.find("b-1-py3").unwrap(), "{text}");
        assert!(text.contains("requires_python = \">=3.9\" },"), "{text}");
        assert_eq!(back, sorted);
        assert_eq!(back.render(), text);
    }

    #[test]
    fn write_is_atomic_and_skips_identical_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE_NAME);
        let lock = sample();
        assert!(lock.write(&path).unwrap());
        assert!(!lock.write(&path).unwrap());
        assert_eq!(Lock::read(&path).unwrap().unwrap().containers.len(), 2);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [LOCK_FILE_NAME]);
        assert_eq!(Lock::read(&dir.path().join("none.lock")).unwrap(), None);
    }

    #[test]
    fn refuses_bad_locks() {
        let text = sample().render();
        let cases = [
            (text.replace("version = 1", "version = 2"), "lock format version 2"),
            (text.replacen("platform =", "platfrom =", 1), "unknown field `platfrom`"),
            (text.replacen("sha256:", "md5:", 1), "does not use sha256"),
            (text.replace("name = \"web\"", "name = \"api\""), "container `api` is locked twice"),
            (text.replace("pypi/files/a-1", "pypi/files/../../etc/a-1"), "`..`"),
            (text.replace("pypi/files/a-1", "npm/a-1"), "outside"),
            (text.replace("set = \"pypi\"", "set = \"npm\""), "mirror set `npm` is locked twice"),
            (
                text.replace("set = \"npm\"", "set = \"maven\""),
                "mirror set `maven` is not a mirror ecosystem airlock knows",
            ),
            (text.replace("pypi/files/b-1", "pypi/files/a-1"), "locks `pypi/files/a-1-py3-none-any.whl` twice"),
        ];
        for (bad, expected) in cases {
            let e = Lock::parse(&bad, "x.lock").unwrap_err().to_string();
            assert!(e.starts_with("x.lock: "), "{e}");
            assert!(e.contains(expected), "expected `{expected}` in: {e}");
        }
    }
}
