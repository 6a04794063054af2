//! `manifest.json`: what an image is and what is inside it, listed in (and so signed through)
//! `SHA256SUMS`.
//!
//! The appliance, the digests of its inputs, the partition table with every partition's
//! SHA-256, and every artifact inside with its version, digest and source. Sections for
//! artifacts airlock does not put into images yet (container images, mirrored packages, the CLI
//! and its plugins) are typed and empty, never placeholders. The same data feeds the SPDX SBOM
//! ([`crate::sbom`]). Serialisation is deterministic: fixed field order, sorted lists.

use crate::base_os::Package;
use crate::clock::BuildClock;
use crate::inspect::{FsKind, InspectedPartition};
use crate::output_file::PartialFile;
use crate::outputs::Format;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub manifest_version: u32,
    pub appliance: Appliance,
    pub build: BuildInfo,
    pub inputs: Inputs,
    /// The kernel the appliance boots (`None` for an `airlock disk` image).
    pub kernel: Option<String>,
    pub disk: Disk,
    pub os_packages: Vec<OsPackage>,
    pub container_images: Vec<ContainerImage>,
    pub mirrored_packages: Vec<MirroredPackage>,
    pub cli: Vec<CliArtifact>,
    /// Every file of the release besides `manifest.json`, `SHA256SUMS` and its signature.
    pub outputs: Vec<OutputEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Appliance {
    pub name: String,
    pub version: String,
    pub description: String,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerImage {
    pub reference: String,
    pub digest: String,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirroredPackage {
    pub ecosystem: String,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliArtifact {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub source: String,
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
    pub spec_sha256: Option<String>,
    pub kernel: Option<String>,
    pub packages: &'a [Package],
    /// The packages' origin, e.g. `debian:trixie`.
    pub package_source: String,
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
            build: BuildInfo {
                airlock_version: env!("CARGO_PKG_VERSION").to_string(),
                source_date_epoch: inputs.clock.epoch,
                time: inputs.clock.rfc3339(),
            },
            inputs: Inputs { spec_sha256: inputs.spec_sha256.clone(), lock_sha256: None },
            kernel: inputs.kernel.clone(),
            disk: Disk {
                size: disk_size,
                guid: disk_guid.to_string(),
                partitions: partitions
                    .iter()
                    .map(|p| Partition {
                        number: p.number,
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
            container_images: Vec::new(),
            mirrored_packages: Vec::new(),
            cli: Vec::new(),
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
        let text = crate::input_file::read_capped_text(path, crate::verify::MAX_MANIFEST, "manifest")?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }
}

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
