//! Reading an image from a `docker save` / `podman save` archive (docker-archive), and making
//! the registry manifest it lacks.
//!
//! A docker-archive has no manifest in the registry's sense: `manifest.json` lists, per image,
//! the config file and the layer files in order, and the config's `rootfs.diff_ids` give each
//! layer's digest. Layers are found at `<id>/layer.tar`, `<hex>.tar` or `blobs/sha256/<hex>`,
//! possibly through symlinks to a layer shared with another image.
//!
//! The manifest airlock makes is an OCI image manifest that keeps every layer exactly as it is in
//! the archive: an uncompressed layer becomes an `application/vnd.oci.image.layer.v1.tar` blob
//! whose digest is its diff_id (no recompression, so nothing depends on a compressor's version
//! and the bytes are verified against the config). The config keeps its bytes and digest and
//! is described as `application/vnd.oci.image.config.v1+json` (Docker's config is a superset of
//! OCI's). The manifest is serialized compactly in the field order Go's encoder uses, so the same
//! image read from an OCI layout whose manifest has the same uncompressed layers (what skopeo
//! writes when converting between the formats) yields the same manifest digest and registry
//! layout.

use super::ReadOptions;
use super::blob_store::BlobStore;
use super::digest::Digest;
use super::error::ImageError;
use super::image::{self, Image, Layer};
use super::media_type::{self, Compression};
use super::tar_index::TarIndex;
use anyhow::{Context, Result};
use oci_spec::image::{Descriptor, ImageManifestBuilder, MediaType};
use std::io::Read;
use std::path::Path;

/// One image in `manifest.json`.
#[derive(Debug, serde::Deserialize)]
struct ArchiveManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Reads the image tagged `select` (or the only one) of the docker-archive at `archive`.
pub fn read_docker_archive(
    archive: &Path,
    select: Option<&str>,
    reference: &str,
    store: &BlobStore,
    opts: &ReadOptions,
) -> Result<Image> {
    let index = TarIndex::open(archive, store.dir())?;
    let list_bytes = read_member_bytes(&index, "manifest.json", "file", opts)?
        .ok_or_else(|| ImageError::Invalid("not a docker-archive: manifest.json is missing".into()))?;
    let list: Vec<ArchiveManifestEntry> = serde_json::from_slice(&list_bytes).context("parsing manifest.json")?;
    let entry = select_tagged(&list, select)?;

    let config_bytes = read_member_bytes(&index, &entry.config, "config", opts)?.ok_or_else(|| {
        ImageError::Invalid(format!("config `{}` named by manifest.json is not in the archive", entry.config))
    })?;
    let config_digest = Digest::of_bytes(&config_bytes);
    // Docker names the config after its digest (the image id); a name that says otherwise means
    // the archive was altered.
    if let Some(named) = digest_in_name(&entry.config)
        && named != config_digest
    {
        return Err(ImageError::DigestMismatch { what: "config".into(), expected: named, actual: config_digest }.into());
    }
    let diff_ids = image::check_config(&config_bytes, &opts.platform, entry.layers.len())
        .with_context(|| format!("in config {config_digest}"))?;
    store.ingest(&config_digest, config_bytes.len() as u64, &config_bytes[..], "config")?;

    let mut layers = Vec::with_capacity(entry.layers.len());
    for (i, (member, diff_id)) in entry.layers.iter().zip(diff_ids).enumerate() {
        let what = format!("layer {}", i + 1);
        layers.push(
            ingest_layer(&index, member, diff_id, &what, store, opts)
                .with_context(|| format!("{what} (`{member}`)"))?,
        );
    }

    let manifest_bytes = make_manifest(&config_digest, config_bytes.len() as u64, &layers)?;
    let manifest_digest = store.put_bytes(&manifest_bytes, "manifest")?;
    Ok(Image {
        reference: reference.to_string(),
        manifest_digest,
        manifest_media_type: media_type::OCI_MANIFEST.to_string(),
        manifest_bytes,
        config_digest,
        config_size: config_bytes.len() as u64,
        layers,
        platform: opts.platform.clone(),
    })
}

fn ingest_layer(
    index: &TarIndex,
    member: &str,
    diff_id: Digest,
    what: &str,
    store: &BlobStore,
    opts: &ReadOptions,
) -> Result<Layer> {
    let mut head = [0u8; 4];
    let got = index.head(member, &mut head)?;
    let Some((reader, size)) = index.open_member(member)? else {
        return Err(ImageError::MissingBlob {
            what: what.to_string(),
            digest: diff_id,
            location: format!("archive member {member}"),
        }
        .into());
    };
    let compression = Compression::sniff(&head[..got]);
    let named = digest_in_name(member);
    let digest = match compression {
        Compression::None => {
            opts.limits.check_blob(what, &diff_id, size)?;
            if let Some(named) = named
                && named != diff_id
            {
                return Err(
                    ImageError::DigestMismatch { what: what.to_string(), expected: diff_id, actual: named }.into()
                );
            }
            store.ingest(&diff_id, size, reader, what)?;
            diff_id.clone()
        }
        // Newer `docker save` keeps compressed layers under `blobs/sha256/<digest>`; their
        // diff_id is checked when they are applied.
        Compression::Gzip | Compression::Zstd => {
            opts.limits.check_blob(what, &member, size)?;
            match named {
                Some(named) => {
                    store.ingest(&named, size, reader, what)?;
                    named
                }
                None => store.ingest_computed(size, reader, what)?.0,
            }
        }
    };
    Ok(Layer { digest, size, media_type: compression.oci_layer_media_type().to_string(), compression, diff_id })
}

/// The OCI manifest for a docker-archive image, as compact JSON in Go's field order.
fn make_manifest(config_digest: &Digest, config_size: u64, layers: &[Layer]) -> Result<Vec<u8>> {
    let config = Descriptor::new(MediaType::ImageConfig, config_size, config_digest.to_oci());
    let layers: Vec<Descriptor> = layers
        .iter()
        .map(|l| Descriptor::new(MediaType::from(l.media_type.as_str()), l.size, l.digest.to_oci()))
        .collect();
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers)
        .build()
        .context("building the registry manifest")?;
    serde_json::to_vec(&manifest).context("serializing the registry manifest")
}

/// The entry of `manifest.json` tagged `select`, or its only entry.
fn select_tagged<'l>(list: &'l [ArchiveManifestEntry], select: Option<&str>) -> Result<&'l ArchiveManifestEntry> {
    let tags = || {
        let all: Vec<&str> = list.iter().flat_map(|e| e.repo_tags.iter().flatten().map(String::as_str)).collect();
        if all.is_empty() { "no tags".to_string() } else { all.join(", ") }
    };
    match select {
        Some(wanted) => list.iter().find(|e| e.repo_tags.iter().flatten().any(|t| t == wanted)).ok_or_else(|| {
            ImageError::Invalid(format!("manifest.json has no image tagged `{wanted}`; it has {}", tags())).into()
        }),
        None => match list {
            [only] => Ok(only),
            _ => Err(ImageError::Invalid(format!(
                "manifest.json lists {} images, so one must be named; it has {}",
                list.len(),
                tags()
            ))
            .into()),
        },
    }
}

/// The digest a member's name claims: `blobs/sha256/<hex>`, `<hex>.tar` or `<hex>.json`.
fn digest_in_name(member: &str) -> Option<Digest> {
    let name = member.trim_start_matches("./");
    let hex = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".tar"))
        .or_else(|| name.strip_suffix(".json"))?;
    Digest::from_hex(hex).ok()
}

/// A small member read into memory (size-capped); `None` if absent.
fn read_member_bytes(index: &TarIndex, member: &str, what: &str, opts: &ReadOptions) -> Result<Option<Vec<u8>>> {
    let Some((reader, size)) = index.open_member(member)? else {
        return Ok(None);
    };
    opts.limits.check_json(what, &member, size)?;
    let mut bytes = Vec::new();
    reader.take(size).read_to_end(&mut bytes).with_context(|| format!("reading archive member `{member}`"))?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_in_member_names() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        for name in [format!("blobs/sha256/{hex}"), format!("{hex}.tar"), format!("{hex}.json")] {
            assert_eq!(digest_in_name(&name).unwrap().hex(), hex);
        }
        assert_eq!(digest_in_name("0123abcd/layer.tar"), None);
    }

    #[test]
    fn manifest_is_compact_in_go_field_order() {
        let d = Digest::of_bytes(b"");
        let layer = Layer {
            digest: d.clone(),
            size: 0,
            media_type: media_type::OCI_LAYER_TAR.into(),
            compression: Compression::None,
            diff_id: d.clone(),
        };
        let bytes = make_manifest(&d, 2, &[layer]).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            format!(
                concat!(
                    r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","#,
                    r#""config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":2}},"#,
                    r#""layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":0}}]}}"#
                ),
                d = d
            )
        );
    }
}
