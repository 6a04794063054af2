//! Reading an image from an OCI image layout: a directory (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`) or an OCI archive (a tar of one).
//!
//! The chain of trust runs from `index.json` down: each descriptor's digest and size are checked
//! against the bytes it names before those bytes are parsed or stored, so a layout can only
//! yield exactly the image its `index.json` describes. Per-platform image indexes are followed
//! to the requested platform.

use super::ReadOptions;
use super::blob_store::BlobStore;
use super::digest::{Digest, DigestingReader};
use super::error::ImageError;
use super::image::{self, CheckedManifest, Image, ParsedManifest};
use super::media_type::ManifestKind;
use super::tar_index::TarIndex;
use anyhow::{Context, Result};
use oci_spec::image::{Descriptor, ImageIndex};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The annotation naming an image in `index.json` (skopeo's `oci:DIR:NAME`).
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// How many image indexes may be nested below `index.json`.
const MAX_INDEX_DEPTH: usize = 4;

/// Reads the image named `select` (or the only one) of the OCI layout directory `dir`.
pub fn read_oci_layout(
    dir: &Path,
    select: Option<&str>,
    reference: &str,
    store: &BlobStore,
    opts: &ReadOptions,
) -> Result<Image> {
    read_layout(&LayoutDir(dir.to_path_buf()), select, reference, store, opts)
}

/// Reads the image named `select` (or the only one) of the OCI archive at `archive`.
pub fn read_oci_archive(
    archive: &Path,
    select: Option<&str>,
    reference: &str,
    store: &BlobStore,
    opts: &ReadOptions,
) -> Result<Image> {
    let index = TarIndex::open(archive, store.dir())?;
    read_layout(&index, select, reference, store, opts)
}

/// Where a layout's files come from.
trait LayoutFiles {
    /// Opens a file by its path inside the layout; `None` if it is not there.
    fn open(&self, name: &str) -> Result<Option<(Box<dyn Read + '_>, u64)>>;
    /// The file's location, for messages.
    fn location(&self, name: &str) -> String;
}

struct LayoutDir(PathBuf);

impl LayoutFiles for LayoutDir {
    fn open(&self, name: &str) -> Result<Option<(Box<dyn Read + '_>, u64)>> {
        let path = self.0.join(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let md = file.metadata().with_context(|| format!("reading metadata of {}", path.display()))?;
        if !md.is_file() {
            return Err(ImageError::Invalid(format!("{} is not a regular file", path.display())).into());
        }
        Ok(Some((Box::new(file), md.len())))
    }

    fn location(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl LayoutFiles for TarIndex {
    fn open(&self, name: &str) -> Result<Option<(Box<dyn Read + '_>, u64)>> {
        Ok(self.open_member(name)?.map(|(r, size)| (Box::new(r) as Box<dyn Read>, size)))
    }

    fn location(&self, name: &str) -> String {
        format!("archive member {name}")
    }
}

#[derive(serde::Deserialize)]
struct OciLayoutFile {
    #[serde(rename = "imageLayoutVersion")]
    image_layout_version: String,
}

fn read_layout(
    files: &dyn LayoutFiles,
    select: Option<&str>,
    reference: &str,
    store: &BlobStore,
    opts: &ReadOptions,
) -> Result<Image> {
    let layout: OciLayoutFile =
        serde_json::from_slice(&read_small_file(files, "oci-layout", opts)?).context("parsing oci-layout")?;
    if layout.image_layout_version != "1.0.0" {
        return Err(ImageError::Invalid(format!(
            "oci-layout has imageLayoutVersion `{}`, expected 1.0.0",
            layout.image_layout_version
        ))
        .into());
    }
    let top: ImageIndex =
        serde_json::from_slice(&read_small_file(files, "index.json", opts)?).context("parsing index.json")?;
    let mut descriptor = select_named(&top, select)?.clone();

    // Descend through image indexes to one platform's manifest.
    let mut depth = 0;
    let manifest_bytes = loop {
        match image::manifest_kind(&descriptor, "manifest")? {
            ManifestKind::Image => {
                break read_json_blob(files, &descriptor, "manifest", opts)?;
            }
            ManifestKind::Index => {
                depth += 1;
                if depth > MAX_INDEX_DEPTH {
                    return Err(
                        ImageError::Invalid(format!("image indexes nested more than {MAX_INDEX_DEPTH} deep")).into()
                    );
                }
                let bytes = read_json_blob(files, &descriptor, "image index", opts)?;
                let index: ImageIndex = serde_json::from_slice(&bytes)
                    .with_context(|| format!("parsing image index {}", descriptor.digest()))?;
                descriptor = select_platform(&index, opts)?.clone();
            }
        }
    };
    let manifest_digest = image::descriptor_digest(&descriptor, "manifest")?;
    let manifest_media_type = descriptor.media_type().to_string();
    let manifest = ParsedManifest::parse(manifest_digest, manifest_media_type, manifest_bytes, &opts.limits)?;
    store.ingest(&manifest.digest, manifest.bytes.len() as u64, &manifest.bytes[..], "manifest")?;

    let config_bytes = read_blob_bytes(files, &manifest.refs.config_digest, manifest.refs.config_size, "config")?;
    let checked = CheckedManifest::with_config(manifest, &config_bytes, &opts.platform)?;
    store.ingest(&checked.refs.config_digest, checked.refs.config_size, &config_bytes[..], "config")?;

    checked.into_image(reference, opts.platform.clone(), |layer, what| {
        let Some((reader, _)) = files.open(&blob_name(&layer.digest))? else {
            return Err(missing(files, what, &layer.digest).into());
        };
        store.ingest(&layer.digest, layer.size, reader, what).map(drop)
    })
}

/// The entry of `index.json` named `select`, or its only entry.
fn select_named<'i>(index: &'i ImageIndex, select: Option<&str>) -> Result<&'i Descriptor> {
    let name_of = |d: &Descriptor| d.annotations().as_ref().and_then(|a| a.get(REF_NAME)).cloned();
    let names = || {
        let list: Vec<String> = index
            .manifests()
            .iter()
            .map(|d| name_of(d).unwrap_or_else(|| format!("(unnamed {})", d.digest())))
            .collect();
        if list.is_empty() { "nothing".to_string() } else { list.join(", ") }
    };
    match select {
        Some(wanted) => index.manifests().iter().find(|d| name_of(d).as_deref() == Some(wanted)).ok_or_else(|| {
            ImageError::Invalid(format!("index.json has no image named `{wanted}`; it lists {}", names())).into()
        }),
        None => match index.manifests().as_slice() {
            [only] => Ok(only),
            _ => Err(ImageError::Invalid(format!(
                "index.json lists {} images, so one must be named; it lists {}",
                index.manifests().len(),
                names()
            ))
            .into()),
        },
    }
}

/// The entry of a per-platform index for the wanted platform. Entries with a CPU variant are
/// used only when there is none without (amd64 variants such as `v3` need newer CPUs).
pub(crate) fn select_platform<'i>(index: &'i ImageIndex, opts: &ReadOptions) -> Result<&'i Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| d.platform().as_ref().is_some_and(|p| opts.platform.matches_oci(p)))
        .collect();
    let plain = candidates
        .iter()
        .find(|d| d.platform().as_ref().and_then(|p| p.variant().as_deref()).is_none_or(|v| v == "v1"));
    if let Some(found) = plain.or(candidates.first()) {
        return Ok(found);
    }
    let offered: Vec<String> = index
        .manifests()
        .iter()
        .map(|d| match d.platform() {
            Some(p) => format!("{}/{}", p.os(), p.architecture()),
            None => format!("(no platform) {}", d.digest()),
        })
        .collect();
    Err(ImageError::NoMatchingPlatform {
        wanted: opts.platform.to_string(),
        offered: if offered.is_empty() { "nothing".into() } else { offered.join(", ") },
    }
    .into())
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn missing(files: &dyn LayoutFiles, what: &str, digest: &Digest) -> ImageError {
    ImageError::MissingBlob {
        what: what.to_string(),
        digest: digest.clone(),
        location: files.location(&blob_name(digest)),
    }
}

/// A layout's own JSON file (`oci-layout`, `index.json`), size-capped.
fn read_small_file(files: &dyn LayoutFiles, name: &str, opts: &ReadOptions) -> Result<Vec<u8>> {
    let Some((reader, size)) = files.open(name)? else {
        return Err(ImageError::Invalid(format!("not an OCI layout: {} is missing", files.location(name))).into());
    };
    opts.limits.check_json("layout file", &files.location(name), size)?;
    let mut bytes = Vec::new();
    reader
        .take(opts.limits.max_json_size)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", files.location(name)))?;
    Ok(bytes)
}

/// A JSON blob (index or manifest) named by a descriptor: size-capped, then verified.
fn read_json_blob(files: &dyn LayoutFiles, descriptor: &Descriptor, what: &str, opts: &ReadOptions) -> Result<Vec<u8>> {
    let digest = image::descriptor_digest(descriptor, what)?;
    opts.limits.check_json(what, &digest, descriptor.size())?;
    read_blob_bytes(files, &digest, descriptor.size(), what)
}

/// Reads a small blob into memory, checking its size and digest.
fn read_blob_bytes(files: &dyn LayoutFiles, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>> {
    let name = blob_name(digest);
    let Some((reader, _)) = files.open(&name)? else {
        return Err(missing(files, what, digest).into());
    };
    let mut reader = DigestingReader::new(reader.take(size.saturating_add(1)));
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).with_context(|| format!("reading {what} {digest}"))?;
    let (actual, len) = reader.finish();
    if len != size {
        return Err(ImageError::SizeMismatch {
            what: what.to_string(),
            digest: digest.clone(),
            expected: size,
            actual: len,
        }
        .into());
    }
    if actual != *digest {
        return Err(ImageError::DigestMismatch { what: what.to_string(), expected: digest.clone(), actual }.into());
    }
    Ok(bytes)
}
