//! The last three stages of every build, shared by `airlock build` and `airlock disk`: from the
//! one raw image to the released set an operator carries across the gap.
//!
//! 1. [`derive_outputs`]: every requested format from the raw image ([`crate::outputs`]);
//! 2. [`write_manifest`]: `manifest.json` and the SPDX SBOM, from the image as written;
//! 3. [`sign_outputs`]: `SHA256SUMS` over every file of the release, and with a key
//!    `SHA256SUMS.minisig`, whose trusted comment names the appliance, version and build time.

use crate::base_os::Package;
use crate::clock::BuildClock;
use crate::manifest::{self, Appliance, Contents, MANIFEST_FILE, Manifest, ManifestInputs, OutputEntry};
use crate::outputs::{self, DeriveOptions, Format, VmHardware};
use crate::seed::Seed;
use crate::signing::{self, KeyPair};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub const SUMS_FILE: &str = "SHA256SUMS";
pub const SIGNATURE_FILE: &str = "SHA256SUMS.minisig";

/// What a release is made of, besides the raw image.
#[derive(Debug)]
pub struct ReleaseOptions<'a> {
    pub out_dir: &'a Path,
    pub appliance: Appliance,
    /// `Some` for a test build: recorded in the manifest and the SBOM.
    pub test_build: Option<manifest::TestBuild>,
    pub formats: &'a [Format],
    pub vm: VmHardware,
    pub seed: &'a Seed,
    pub clock: BuildClock,
    pub spec_sha256: Option<String>,
    pub kernel: Option<String>,
    /// The boot chain ([`manifest::Boot`]), for the manifest.
    pub boot: Option<manifest::Boot>,
    pub packages: &'a [Package],
    pub package_source: String,
    /// Container images, mirrored files and the lock's digest ([`crate::contents`]).
    pub contents: &'a Contents,
}

/// Every file of a release, in the order they were written.
#[derive(Debug, Clone, Default)]
pub struct Released {
    /// (kind, path): the formats, `.packages`, the SBOM and the manifest.
    pub files: Vec<(String, PathBuf)>,
    pub sums: PathBuf,
    pub signature: Option<PathBuf>,
}

impl Released {
    /// The file of a format, if it was written.
    pub fn format(&self, f: Format) -> Option<&Path> {
        self.files.iter().find(|(k, _)| k == f.suffix()).map(|(_, p)| p.as_path())
    }
}

/// Stage: every requested format, derived from the raw image.
pub fn derive_outputs(raw: &Path, opts: &ReleaseOptions<'_>) -> Result<Vec<(String, PathBuf)>> {
    // An earlier build's signature and sums go first: a build that fails from here on must not
    // leave a directory that looks signed.
    outputs::remove_if_present(&opts.out_dir.join(SIGNATURE_FILE))?;
    outputs::remove_if_present(&opts.out_dir.join(SUMS_FILE))?;
    outputs::remove_stale(opts.out_dir, &opts.appliance.name, opts.formats)?;
    let derive = DeriveOptions {
        name: &opts.appliance.name,
        version: &opts.appliance.version,
        description: &opts.appliance.description,
        formats: opts.formats,
        vm: opts.vm,
        seed: opts.seed,
        clock: opts.clock,
    };
    let written = outputs::derive(raw, opts.out_dir, &derive)?;
    Ok(written.into_iter().map(|(f, p)| (f.suffix().to_string(), p)).collect())
}

/// Stage: `manifest.json` and `<name>.spdx.json`, describing the raw image as written and
/// listing `files` (the other outputs). Returns `files` with the SBOM and manifest added.
pub fn write_manifest(
    raw: &Path,
    mut files: Vec<(String, PathBuf)>,
    opts: &ReleaseOptions<'_>,
) -> Result<Vec<(String, PathBuf)>> {
    let (layout, partitions) = crate::inspect::inspect(raw)?;
    let sbom_path = opts.out_dir.join(crate::sbom::sbom_file_name(&opts.appliance.name));
    files.push(("spdx".to_string(), sbom_path.clone()));
    let entries: Vec<OutputEntry> =
        files.iter().map(|(kind, p)| OutputEntry { file: manifest::file_name(p), kind: kind.clone() }).collect();
    let inputs = manifest_inputs(opts);
    let m = Manifest::new(&inputs, layout.disk_size, layout.disk_guid, &partitions, entries);
    let mut sbom = serde_json::to_string_pretty(&crate::sbom::sbom(&m)).context("serialising the SBOM")?;
    sbom.push('\n');
    manifest::write_text(&sbom_path, &sbom)?;
    let manifest_path = opts.out_dir.join(MANIFEST_FILE);
    manifest::write_text(&manifest_path, &m.to_json()?)?;
    files.push(("manifest".to_string(), manifest_path));
    Ok(files)
}

/// What the release's manifest (and the image's own copy on its ESP) is made from.
pub fn manifest_inputs<'a>(opts: &ReleaseOptions<'a>) -> ManifestInputs<'a> {
    ManifestInputs {
        appliance: opts.appliance.clone(),
        test_build: opts.test_build.clone(),
        spec_sha256: opts.spec_sha256.clone(),
        kernel: opts.kernel.clone(),
        boot: opts.boot.clone(),
        packages: opts.packages,
        package_source: opts.package_source.clone(),
        contents: opts.contents,
        clock: opts.clock,
    }
}

/// The trusted comment of a release's signature (one line; minisign shows it on success).
pub fn trusted_comment(appliance: &Appliance, clock: &BuildClock) -> String {
    format!("appliance:{}\tversion:{}\tbuilt:{}", appliance.name, appliance.version, clock.rfc3339())
}

/// Stage: `SHA256SUMS` over `files`, and `SHA256SUMS.minisig` when there is a key (a stale
/// signature from an earlier build is removed when there is none: it would not match).
pub fn sign_outputs(
    out_dir: &Path,
    files: Vec<(String, PathBuf)>,
    key: Option<&KeyPair>,
    comment: &str,
) -> Result<Released> {
    let named: Vec<(String, PathBuf)> = files.iter().map(|(_, p)| (manifest::file_name(p), p.clone())).collect();
    let total = named.iter().filter_map(|(_, p)| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    crate::progress::phase("hashing the release");
    crate::progress::measure(crate::progress::Unit::Bytes, Some(total));
    let text = signing::sha256sums_reporting(&named, &mut crate::progress::bytes)?;
    let sums = out_dir.join(SUMS_FILE);
    let sig_path = out_dir.join(SIGNATURE_FILE);
    // The old signature goes first, so that no moment has a new SHA256SUMS beside a signature
    // of the old one.
    outputs::remove_if_present(&sig_path)?;
    manifest::write_text(&sums, &text)?;
    let signature = match key {
        Some(kp) => {
            let sig = signing::sign(kp, text.as_bytes(), comment).context("signing SHA256SUMS")?;
            manifest::write_text(&sig_path, &sig)?;
            Some(sig_path)
        }
        None => None,
    };
    Ok(Released { files, sums, signature })
}
