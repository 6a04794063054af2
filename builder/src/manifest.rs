//! `manifest.json`: what an image is and what is inside it, listed in (and so signed through)
//! `SHA256SUMS`.
//!
//! The appliance, the digests of its inputs (spec and lock), the partition table with every
//! partition's SHA-256, and everything inside: the OS packages, every container image with its
//! manifest, config and layer digests, every mirrored file with its package, version and
//! SHA-256, and the Pulumi CLI archives and plugins among them. What the appliance carries
//! besides its OS packages is read from `appliance.lock` and the verified blob store
//! ([`crate::contents`]); an image without a lock (`airlock disk`) has empty lists. The same
//! data feeds the SPDX SBOM ([`crate::sbom`]). Serialisation is deterministic: fixed field
//! order, sorted lists.

use crate::base_os::Package;
use crate::clock::BuildClock;
use crate::inspect::{FsKind, InspectedPartition};
use crate::output_file::PartialFile;
use crate::outputs::Format;
use crate::partition::Role;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MANIFEST_FILE: &str = "manifest.json";
/// The image's own copy on its ESP: the manifest without the partitions' digests (a partition
/// cannot hold its own) or the release's files; unsigned, so only as good as the hands the
/// image passed through (`airlock verify` checks the release's `manifest.json`).
pub const ESP_MANIFEST_PATH: &str = airlock_common::partition::ESP_MANIFEST;
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub manifest_version: u32,
    pub appliance: Appliance,
    /// `Some` for a test build (a test spec's): the container images that are TEST STAND-INS.
    #[serde(default)]
    pub test_build: Option<TestBuild>,
    pub build: BuildInfo,
    pub inputs: Inputs,
    /// The kernel the appliance boots (`None` for an `airlock disk` image).
    pub kernel: Option<String>,
    /// The boot chain: the UKI, its command line, Secure Boot, the verity root hash (`None` for
    /// an `airlock disk` image).
    #[serde(default)]
    pub boot: Option<Boot>,
    pub disk: Disk,
    pub os_packages: Vec<OsPackage>,
    pub container_images: Vec<ContainerImage>,
    /// The container images unpacked in the root filesystem, as podman runs them (`None`
    /// without containers).
    #[serde(default)]
    pub image_store: Option<ImageStore>,
    /// Every file of every mirror, sorted by ecosystem and path.
    pub mirrored_packages: Vec<MirroredPackage>,
    pub cli: Cli,
    /// Every file of the release besides `manifest.json`, `SHA256SUMS` and its signature.
    pub outputs: Vec<OutputEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Appliance {
    pub name: String,
    pub version: String,
    pub description: String,
    /// Who supplies it, in SPDX's form (`Organization: Example Corp`); `None`: not said.
    pub supplier: Option<String>,
}

/// What makes a build a test build: the production spec it builds and the images it replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestBuild {
    pub production_spec_sha256: String,
    pub stand_ins: Vec<TestStandIn>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestStandIn {
    /// The container's name in the production spec.
    pub container: String,
    /// The reference the stand-in is served and run under.
    pub reference: String,
    /// Where the stand-in came from, as the test spec wrote it.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildInfo {
    pub airlock_version: String,
    pub source_date_epoch: i64,
    /// `source_date_epoch` as RFC 3339 UTC.
    pub time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// SHA-256 of `appliance.toml` as read (`None` for `airlock disk`).
    pub spec_sha256: Option<String>,
    /// SHA-256 of the lock file, once airlock has one.
    pub lock_sha256: Option<String>,
}

/// How the appliance boots and what pins its root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// The unified kernel image on the ESP (`/EFI/Linux/<name>_<version>.efi`).
    pub uki: String,
    pub uki_sha256: String,
    pub uki_size: u64,
    /// The kernel command line inside the UKI (with verity, `roothash=`).
    pub cmdline: String,
    /// systemd-boot and the UKI are signed with the owner's db key, whose PK/KEK/db wait on the
    /// ESP for enrollment.
    pub secure_boot: bool,
    /// The root's dm-verity parameters (`None`: a writable root, built without verity).
    pub verity: Option<Verity>,
    /// How the appliance takes updates (`None`: no second slot, no updates).
    #[serde(default)]
    pub update: Option<UpdatePolicy>,
}

/// What the image's updater does (from `[update]` and the release key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatePolicy {
    /// Boots a new version gets to become ready.
    pub tries: u32,
    pub deadline_seconds: u64,
    /// The state directories saved before a new version first runs, restored on rollback.
    pub state: Vec<String>,
    /// The key ids whose bundles the appliance accepts (empty: it accepts none).
    pub trusted_keys: Vec<String>,
}

/// What `veritysetup verify <root> <root-verity> <root_hash>` needs, and what the booted
/// appliance reports (`veritysetup status root`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verity {
    pub root_hash: String,
    /// The roles of the data and hash partitions (their UUIDs are the root hash's halves).
    pub data_partition: Role,
    pub hash_partition: Role,
    pub hash_algorithm: String,
    pub data_block_size: u64,
    pub hash_block_size: u64,
    pub salt: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub size: u64,
    pub guid: String,
    pub partitions: Vec<Partition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// GPT entry number, from 1.
    pub number: u32,
    /// What it is for, from the partition table (`airlock_common::partition`): `esp`,
    /// `root-x86-64`, `data`; `null` for a partition airlock does not make.
    pub role: Option<Role>,
    pub name: String,
    pub type_guid: String,
    pub guid: String,
    /// Byte offset and length.
    pub start: u64,
    pub size: u64,
    pub filesystem: FsKind,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Where it came from, e.g. `debian:trixie`.
    pub source: String,
}

/// A container image the appliance's registry serves, as `appliance.lock` pins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerImage {
    /// The spec's local name.
    pub name: String,
    /// The normalized reference (`docker.io/library/mysql:8.0`).
    pub reference: String,
    /// The reference as the spec wrote it (`mysql:8.0`): what the appliance's units name.
    pub image: String,
    /// Where `airlock fetch` got it: `registry`, or the spec's local source.
    pub source: String,
    /// `os/architecture`.
    pub platform: String,
    /// The multi-platform index the reference resolved to, if it was one.
    pub index: Option<Blob>,
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// Bytes the appliance stores for it: manifest, config and layers.
    pub size: u64,
}

/// The read-only podman image store in the root filesystem (`additionalimagestores`): the
/// stack's containers start from it, with nothing pulled or unpacked on the appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageStore {
    /// Its directory in the root filesystem.
    pub path: String,
    /// The containers/storage driver it is written for.
    pub driver: String,
    /// The version of the image's own podman package, which reads it.
    pub podman: Option<String>,
    pub layers: usize,
    /// Bytes of the layers unpacked.
    pub unpacked_size: u64,
    /// One entry per container, in the manifest's order of `container_images`.
    pub images: Vec<StoreEntry>,
}

/// One image in the store, as `podman images --digests` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreEntry {
    /// The spec's local name.
    pub name: String,
    /// The name podman lists it under.
    pub listed_as: String,
    /// podman's image ID (the config's digest, without `sha256:`).
    pub id: String,
    /// The digest podman lists: what the reference resolved to (the index, else the manifest).
    pub digest: String,
}

/// A content-addressed blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// A file the appliance's mirror serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirroredPackage {
    /// The mirror ecosystem (`pypi`, `npm`, `go`, `nuget`, `pulumi`).
    pub ecosystem: String,
    /// The package the file belongs to, as its ecosystem spells it.
    pub name: String,
    pub version: String,
    /// `package` (an artifact a client installs), `metadata` (a protocol document about one),
    /// `cli-archive` or `plugin`.
    pub kind: String,
    /// The path the appliance serves it at, below its mirror's root.
    pub path: String,
    pub sha256: String,
    pub size: u64,
    /// Where `airlock fetch` got it: a URL, or a path relative to the spec.
    pub origin: String,
    /// The package URL of an artifact (`None` for metadata).
    pub purl: Option<String>,
}

/// The Pulumi CLI archives and plugins the appliance serves (and installs its own from).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cli {
    pub archives: Vec<CliArchive>,
    pub plugins: Vec<CliPlugin>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliArchive {
    /// `linux-x64`, ...
    pub platform: String,
    pub version: String,
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliPlugin {
    /// `resource`, `language`, ...
    pub kind: String,
    pub name: String,
    pub version: String,
    /// `linux-amd64`, ...
    pub platform: String,
    pub path: String,
    pub sha256: String,
}

/// What the appliance carries besides its OS packages, and who supplies it: read from the
/// lock and the blob store by [`crate::contents`]; empty for an image without a lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents {
    /// SHA-256 of `appliance.lock` as read.
    pub lock_sha256: Option<String>,
    pub container_images: Vec<ContainerImage>,
    pub image_store: Option<ImageStore>,
    pub mirrored_packages: Vec<MirroredPackage>,
    pub cli: Cli,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputEntry {
    pub file: String,
    /// `raw`, `raw.zst`, `qcow2`, `vmdk`, `ova`, `packages` or `spdx`.
    pub kind: String,
}

/// What the manifest is made from.
#[derive(Debug, Clone)]
pub struct ManifestInputs<'a> {
    pub appliance: Appliance,
    pub test_build: Option<TestBuild>,
    pub spec_sha256: Option<String>,
    pub kernel: Option<String>,
    pub boot: Option<Boot>,
    pub packages: &'a [Package],
    /// The packages' origin, e.g. `debian:trixie`.
    pub package_source: String,
    pub contents: &'a Contents,
    pub clock: BuildClock,
}

impl Manifest {
    pub fn new(
        inputs: &ManifestInputs<'_>,
        disk_size: u64,
        disk_guid: uuid::Uuid,
        partitions: &[InspectedPartition],
        outputs: Vec<OutputEntry>,
    ) -> Self {
        let mut os_packages: Vec<_> = inputs
            .packages
            .iter()
            .map(|p| OsPackage {
                name: p.name.clone(),
                version: p.version.clone(),
                architecture: p.architecture.clone(),
                source: inputs.package_source.clone(),
            })
            .collect();
        os_packages.sort_by(|a, b| (&a.name, &a.architecture).cmp(&(&b.name, &b.architecture)));
        let mut outputs = outputs;
        outputs.sort_by(|a, b| a.file.cmp(&b.file));
        Manifest {
            manifest_version: MANIFEST_VERSION,
            appliance: inputs.appliance.clone(),
            test_build: inputs.test_build.clone(),
            build: BuildInfo {
                airlock_version: env!("CARGO_PKG_VERSION").to_string(),
                source_date_epoch: inputs.clock.epoch,
                time: inputs.clock.rfc3339(),
            },
            inputs: Inputs {
                spec_sha256: inputs.spec_sha256.clone(),
                lock_sha256: inputs.contents.lock_sha256.clone(),
            },
            kernel: inputs.kernel.clone(),
            boot: inputs.boot.clone(),
            disk: Disk {
                size: disk_size,
                guid: disk_guid.to_string(),
                partitions: partitions
                    .iter()
                    .map(|p| Partition {
                        number: p.number,
                        role: p.role,
                        name: p.entry.name.clone(),
                        type_guid: p.entry.type_guid.to_string(),
                        guid: p.entry.guid.to_string(),
                        start: p.entry.start,
                        size: p.entry.size,
                        filesystem: p.filesystem,
                        sha256: p.sha256.clone(),
                    })
                    .collect(),
            },
            os_packages,
            container_images: inputs.contents.container_images.clone(),
            image_store: inputs.contents.image_store.clone(),
            mirrored_packages: inputs.contents.mirrored_packages.clone(),
            cli: inputs.contents.cli.clone(),
            outputs,
        }
    }

    /// The output entry for a format's file.
    pub fn output(format: Format, path: &Path) -> OutputEntry {
        OutputEntry { file: file_name(path), kind: format.suffix().to_string() }
    }

    pub fn to_json(&self) -> Result<String> {
        let mut text = serde_json::to_string_pretty(self).context("serialising the manifest")?;
        text.push('\n');
        Ok(text)
    }

    pub fn parse(text: &str) -> Result<Self> {
        serde_json::from_str(text).context("parsing manifest.json")
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = crate::input_file::read_capped_text(path, MAX_MANIFEST, "manifest")?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }
}

/// The most of `manifest.json` that is read (the demo's, with every mirrored file, is a few
/// hundred KiB).
pub const MAX_MANIFEST: u64 = 64 * 1024 * 1024;

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Writes `text` to `path` (complete or not at all).
pub fn write_text(path: &Path, text: &str) -> Result<PathBuf> {
    let partial = PartialFile::create(path)?;
    let mut f = partial.file();
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", partial.partial_path().display()))?;
    partial.commit()
}
