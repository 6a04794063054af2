//! `airlock inspect`: what an image or a release is, answered without booting it.
//!
//! One reader for every kind of artifact: a raw image or a whole-disk device (read-only,
//! through [`crate::inspect::DiskImage`], the reader `airlock diff` uses too), whose own
//! manifest is on its ESP ([`crate::manifest::ESP_MANIFEST_PATH`]), and a release directory,
//! whose `manifest.json` is listed in its signed `SHA256SUMS`. Update bundles (`.update`) do not
//! exist yet; they will be a third [`Artifact`] variant, read into the same [`Inspection`].
//!
//! Site settings are reported by name only: `airlock.toml` may hold license keys and passwords.

use crate::inspect::{DiskImage, FsKind, MAX_ESP_FILE};
use crate::manifest::{ESP_MANIFEST_PATH, MANIFEST_FILE, Manifest};
use crate::partition::Role;
use crate::release::{SIGNATURE_FILE, SUMS_FILE};
use crate::signing::PublicKey;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What `airlock inspect` can read.
#[derive(Debug)]
pub enum Artifact {
    /// A raw image file or a whole-disk device.
    Image(DiskImage),
    /// An output directory: `manifest.json`, `SHA256SUMS` (and its signature), the image.
    Release(PathBuf),
}

impl Artifact {
    /// Opens `path` as whatever it is.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            if !path.join(MANIFEST_FILE).is_file() {
                bail!("{} holds no {MANIFEST_FILE}: it is not a release directory", path.display());
            }
            return Ok(Artifact::Release(path.to_path_buf()));
        }
        if path.extension().is_some_and(|e| e == "update") {
            bail!(
                "{}: update bundles do not exist yet; inspect takes an image (.raw, a device) or a release directory",
                path.display()
            );
        }
        Ok(Artifact::Image(DiskImage::open(path)?))
    }
}

/// Everything `airlock inspect` says, as text or JSON.
#[derive(Debug, Serialize)]
pub struct Inspection {
    /// `image` or `release`.
    pub kind: &'static str,
    pub path: PathBuf,
    /// Where the manifest came from, and how far it can be trusted.
    pub manifest: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub description: Option<String>,
    /// From the root partition's type (`x86-64`).
    pub architecture: Option<String>,
    pub kernel: Option<String>,
    /// The boot chain as the manifest records it: the UKI, its command line, Secure Boot, the
    /// dm-verity root hash.
    pub boot: Option<crate::manifest::Boot>,
    pub built: Option<String>,
    pub airlock_version: Option<String>,
    pub test_build: bool,
    pub partitions: Vec<PartitionFacts>,
    pub signature: Signature,
    pub containers: Vec<ContainerFacts>,
    /// Where the containers are unpacked for podman, as the manifest records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_store: Option<crate::manifest::ImageStore>,
    /// Per ecosystem: packages (name and version) and files.
    pub mirrors: BTreeMap<String, MirrorCount>,
    /// Every mirrored package (`--list`), `ecosystem name version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packages: Option<Vec<String>>,
    pub os_packages: usize,
    pub pulumi_cli: Vec<String>,
    /// Names of the settings set in the ESP's `airlock.toml` (never their values).
    pub site_settings: SiteSettings,
}

#[derive(Debug, Serialize)]
pub struct PartitionFacts {
    pub number: u32,
    pub role: Option<Role>,
    pub name: String,
    pub type_guid: String,
    pub partuuid: String,
    pub start: u64,
    pub size: u64,
    pub filesystem: FsKind,
    /// The ext4 UUID or FAT volume id (when the image is at hand).
    pub filesystem_id: Option<String>,
    /// From the release's manifest (an image alone is not hashed: that would read it whole).
    pub sha256: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ContainerFacts {
    pub name: String,
    pub reference: String,
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct MirrorCount {
    pub packages: usize,
    pub files: usize,
}

#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Signature {
    /// No `SHA256SUMS.minisig` next to it.
    Unsigned { why: String },
    /// Signed; `verified` is `None` without `--pubkey`.
    Signed { key_id: String, trusted_comment: String, verified: Option<Verified> },
}

#[derive(Debug, Serialize)]
pub struct Verified {
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SiteSettings {
    Set { names: Vec<String> },
    Absent,
    Unreadable { why: String },
}

/// Reads the artifact at `path`; `pubkey` checks the release's signature, `list` lists every
/// mirrored package.
pub fn inspect(path: &Path, pubkey: Option<&PublicKey>, list: bool) -> Result<Inspection> {
    match Artifact::open(path)? {
        Artifact::Image(disk) => {
            let (manifest, source) = match esp_manifest(&disk) {
                Ok(Some(m)) => {
                    (Some(m), format!("{ESP_MANIFEST_PATH} on the ESP (unsigned: verify the release to trust it)"))
                }
                Ok(None) => (
                    None,
                    format!("none: no {ESP_MANIFEST_PATH} on the ESP (an `airlock disk` image or an older build)"),
                ),
                // A damaged or hostile ESP still leaves the partition table to report.
                Err(e) => (None, format!("unreadable: {}", crate::printable::escape(&format!("{e:#}")))),
            };
            let signature = image_signature(path, pubkey);
            Ok(assemble("image", path, source, manifest.as_ref(), Some(&disk), signature, list))
        }
        Artifact::Release(dir) => {
            let manifest = Manifest::read(&dir.join(MANIFEST_FILE))?;
            let raw = dir.join(format!("{}.raw", manifest.appliance.name));
            let disk = if raw.is_file() { Some(DiskImage::open(&raw)?) } else { None };
            let signature = release_signature(&dir, &dir, pubkey);
            let source = format!("{} (listed in {SUMS_FILE})", dir.join(MANIFEST_FILE).display());
            Ok(assemble("release", &dir, source, Some(&manifest), disk.as_ref(), signature, list))
        }
    }
}

/// The image's own manifest from its ESP (`None`: there is none).
fn esp_manifest(disk: &DiskImage) -> Result<Option<Manifest>> {
    let Some(bytes) = disk.read_esp_file(ESP_MANIFEST_PATH, MAX_ESP_FILE)? else { return Ok(None) };
    let text = String::from_utf8(bytes).context("the ESP's manifest is not UTF-8")?;
    Manifest::parse(&text).with_context(|| format!("{ESP_MANIFEST_PATH} on the ESP")).map(Some)
}

fn assemble(
    kind: &'static str,
    path: &Path,
    manifest_source: String,
    m: Option<&Manifest>,
    disk: Option<&DiskImage>,
    signature: Signature,
    list: bool,
) -> Inspection {
    let partitions = partitions(m, disk);
    let architecture =
        partitions.iter().filter_map(|p| p.role).find_map(|r| r.key().strip_prefix("root-").map(str::to_string));
    let mut mirrors: BTreeMap<String, MirrorCount> = BTreeMap::new();
    let mut packages = std::collections::BTreeSet::new();
    for f in m.iter().flat_map(|m| &m.mirrored_packages) {
        let count = mirrors.entry(f.ecosystem.clone()).or_default();
        count.files += 1;
        if f.kind != "metadata" && packages.insert((f.ecosystem.clone(), f.name.clone(), f.version.clone())) {
            count.packages += 1;
        }
    }
    let mut pulumi_cli: Vec<String> = m.iter().flat_map(|m| &m.cli.archives).map(|a| a.version.clone()).collect();
    pulumi_cli.sort();
    pulumi_cli.dedup();
    Inspection {
        kind,
        path: path.to_path_buf(),
        manifest: manifest_source,
        name: m.map(|m| m.appliance.name.clone()),
        version: m.map(|m| m.appliance.version.clone()),
        description: m.map(|m| m.appliance.description.clone()).filter(|d| !d.is_empty()),
        architecture,
        kernel: m.and_then(|m| m.kernel.clone()),
        boot: m.and_then(|m| m.boot.clone()),
        built: m.map(|m| m.build.time.clone()),
        airlock_version: m.map(|m| m.build.airlock_version.clone()),
        test_build: m.is_some_and(|m| m.test_build.is_some()),
        partitions,
        signature,
        containers: m
            .iter()
            .flat_map(|m| &m.container_images)
            .map(|c| ContainerFacts {
                name: c.name.clone(),
                reference: c.reference.clone(),
                digest: c.manifest.digest.clone(),
                size: c.size,
            })
            .collect(),
        image_store: m.and_then(|m| m.image_store.clone()),
        mirrors,
        packages: list.then(|| packages.into_iter().map(|(e, n, v)| format!("{e} {n} {v}")).collect()),
        os_packages: m.map_or(0, |m| m.os_packages.len()),
        pulumi_cli,
        site_settings: disk.map_or(SiteSettings::Absent, site_settings),
    }
}

/// The partitions as the disk has them (when it is at hand) with the manifest's digests, or
/// as the manifest lists them.
fn partitions(m: Option<&Manifest>, disk: Option<&DiskImage>) -> Vec<PartitionFacts> {
    let digest =
        |number: u32| m.and_then(|m| m.disk.partitions.iter().find(|p| p.number == number)).map(|p| p.sha256.clone());
    match disk {
        Some(d) => d
            .layout
            .partitions
            .iter()
            .zip(&d.roles)
            .enumerate()
            .map(|(i, (p, role))| PartitionFacts {
                number: i as u32 + 1,
                role: *role,
                name: p.name.clone(),
                type_guid: p.type_guid.to_string(),
                partuuid: p.guid.to_string(),
                start: p.start,
                size: p.size,
                filesystem: d.filesystem(p).unwrap_or(FsKind::Unknown),
                filesystem_id: d.filesystem_id(p).ok().flatten(),
                sha256: digest(i as u32 + 1),
            })
            .collect(),
        None => m
            .iter()
            .flat_map(|m| &m.disk.partitions)
            .map(|p| PartitionFacts {
                number: p.number,
                role: p.role,
                name: p.name.clone(),
                type_guid: p.type_guid.clone(),
                partuuid: p.guid.clone(),
                start: p.start,
                size: p.size,
                filesystem: p.filesystem,
                filesystem_id: None,
                sha256: Some(p.sha256.clone()),
            })
            .collect(),
    }
}

/// A raw image carries no signature of its own; one inside a release directory is covered by
/// that release's.
fn image_signature(image: &Path, pubkey: Option<&PublicKey>) -> Signature {
    let dir = image.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let listed = std::fs::read_to_string(dir.join(SUMS_FILE)).ok().is_some_and(|sums| {
        let name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        sums.lines().any(|l| l.split_once("  ").is_some_and(|(_, n)| n == name))
    });
    if !listed {
        return Signature::Unsigned {
            why: "an image carries no signature; its release directory's SHA256SUMS.minisig covers it".into(),
        };
    }
    release_signature(dir, image, pubkey)
}

/// The signature of the release in `dir`, checked for `target` (the directory or one image in
/// it) with `pubkey`.
fn release_signature(dir: &Path, target: &Path, pubkey: Option<&PublicKey>) -> Signature {
    let sig_path = dir.join(SIGNATURE_FILE);
    let text = match crate::input_file::read_capped_text(&sig_path, 64 << 10, "signature") {
        Ok(t) => t,
        Err(_) if !sig_path.exists() => {
            return Signature::Unsigned { why: format!("no {SIGNATURE_FILE} in {}", dir.display()) };
        }
        Err(e) => return Signature::Unsigned { why: format!("{e:#}") },
    };
    let (key_id, trusted_comment) = match crate::signing::signature_key_id(&text) {
        Ok(v) => v,
        Err(e) => return Signature::Unsigned { why: format!("{}: {e}", sig_path.display()) },
    };
    let verified =
        pubkey.map(|key| match crate::verify::verify(target, key, &crate::verify::VerifyOptions { strict: false }) {
            Ok(_) => Verified { ok: true, detail: format!("verifies with key {}", key.key_id()) },
            Err(e) => Verified { ok: false, detail: format!("{e:#}") },
        });
    Signature::Signed { key_id: key_id.to_string(), trusted_comment, verified }
}

/// The names of the settings set (not commented out) in the ESP's `airlock.toml`.
fn site_settings(disk: &DiskImage) -> SiteSettings {
    let bytes = match disk.read_esp_file(airlock_common::site::SITE_FILE, airlock_common::site::MAX_SITE_FILE) {
        Ok(Some(b)) => b,
        Ok(None) => return SiteSettings::Absent,
        Err(e) => return SiteSettings::Unreadable { why: format!("{e:#}") },
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return SiteSettings::Unreadable { why: "it is not UTF-8".into() };
    };
    match text.parse::<toml::Table>() {
        Ok(table) => {
            let mut names = Vec::new();
            leaf_names(&table, "", &mut names);
            SiteSettings::Set { names }
        }
        // toml's message quotes the line, which may hold a secret: only where it failed.
        Err(e) => {
            let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            SiteSettings::Unreadable {
                why: match line {
                    Some(l) => format!("it is not valid TOML (line {l})"),
                    None => "it is not valid TOML".into(),
                },
            }
        }
    }
}

fn leaf_names(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            toml::Value::Table(t) => leaf_names(t, &name, out),
            _ => out.push(crate::printable::escape(&name).into_owned()),
        }
    }
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::size::ByteSize;
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unknown)".into());
        let shown = |s: &str| crate::printable::escape(s).into_owned();
        writeln!(
            f,
            "{} {} ({} {})",
            shown(&or_unknown(&self.name)),
            shown(&or_unknown(&self.version)),
            self.kind,
            self.path.display()
        )?;
        if let Some(d) = &self.description {
            writeln!(f, "  description   {}", shown(d))?;
        }
        if self.test_build {
            writeln!(f, "  TEST BUILD    not a release: its manifest lists TEST STAND-INS")?;
        }
        writeln!(f, "  architecture  {}", or_unknown(&self.architecture))?;
        writeln!(f, "  kernel        {}", shown(&or_unknown(&self.kernel)))?;
        if let Some(b) = &self.boot {
            let signed = if b.secure_boot { "signed for Secure Boot" } else { "unsigned" };
            writeln!(f, "  boot          {} ({signed}, sha256 {})", shown(&b.uki), b.uki_sha256)?;
            match &b.verity {
                Some(v) => writeln!(f, "  root          read-only under dm-verity, root hash {}", v.root_hash)?,
                None => writeln!(f, "  root          writable (built without verity)")?,
            }
        }
        if let (Some(t), Some(v)) = (&self.built, &self.airlock_version) {
            writeln!(f, "  built         {} by airlock {}", shown(t), shown(v))?;
        }
        writeln!(f, "  manifest      {}", self.manifest)?;
        match &self.signature {
            Signature::Unsigned { why } => writeln!(f, "  signature     unsigned ({why})")?,
            Signature::Signed { key_id, trusted_comment, verified } => {
                writeln!(f, "  signature     key {key_id}: {}", shown(&trusted_comment.replace('\t', " ")))?;
                match verified {
                    None => writeln!(f, "                not checked (pass --pubkey KEY to verify it)")?,
                    Some(v) if v.ok => writeln!(f, "                OK: {}", v.detail)?,
                    Some(v) => writeln!(f, "                DOES NOT VERIFY: {}", v.detail)?,
                }
            }
        }
        writeln!(f, "partitions")?;
        for p in &self.partitions {
            let role = p.role.map_or("-".to_string(), |r| r.key().to_string());
            let fs = format!("{:?}", p.filesystem).to_lowercase();
            writeln!(
                f,
                "  {} {:<12} {:>9} at {:>7}  {:<7} id {:<36}  PARTUUID {}",
                p.number,
                role,
                ByteSize(p.size).to_string(),
                ByteSize(p.start).to_string(),
                fs,
                p.filesystem_id.as_deref().unwrap_or("-"),
                p.partuuid
            )?;
            writeln!(f, "    type {}  name {}", p.type_guid, shown(&p.name))?;
            if let Some(d) = &p.sha256 {
                writeln!(f, "    sha256 {d}")?;
            }
        }
        writeln!(f, "containers ({})", self.containers.len())?;
        for c in &self.containers {
            writeln!(
                f,
                "  {:<10} {} {} ({})",
                shown(&c.name),
                shown(&c.reference),
                shown(&c.digest),
                ByteSize(c.size)
            )?;
        }
        if let Some(store) = &self.image_store {
            writeln!(
                f,
                "  unpacked in {} for podman {} ({} layers, {})",
                shown(&store.path),
                shown(&or_unknown(&store.podman)),
                store.layers,
                ByteSize(store.unpacked_size)
            )?;
        }
        writeln!(f, "mirrors")?;
        if self.mirrors.is_empty() {
            writeln!(f, "  none")?;
        }
        for (eco, n) in &self.mirrors {
            writeln!(f, "  {:<8} {} packages, {} files", shown(eco), n.packages, n.files)?;
        }
        if let Some(list) = &self.packages {
            for p in list {
                writeln!(f, "    {}", shown(p))?;
            }
        }
        writeln!(f, "OS packages   {}", self.os_packages)?;
        match self.pulumi_cli.as_slice() {
            [] => writeln!(f, "Pulumi CLI    none")?,
            v => writeln!(f, "Pulumi CLI    {}", shown(&v.join(", ")))?,
        }
        match &self.site_settings {
            SiteSettings::Set { names } if names.is_empty() => {
                writeln!(f, "site settings none set in the ESP's airlock.toml (all at their defaults)")
            }
            SiteSettings::Set { names } => writeln!(f, "site settings {} (values not shown)", names.join(", ")),
            SiteSettings::Absent => writeln!(f, "site settings no airlock.toml on an ESP at hand"),
            SiteSettings::Unreadable { why } => writeln!(f, "site settings airlock.toml unreadable: {why}"),
        }
    }
}
