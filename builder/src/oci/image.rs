//! The normalized image: one platform's manifest, its config and its layers, all in the blob
//! store, whichever kind of source it was read from. Also the checks every source shares.

use super::digest::Digest;
use super::error::ImageError;
use super::limits::Limits;
use super::media_type::{self, Compression, ManifestKind};
use anyhow::{Context, Result};
use oci_spec::image::{ImageConfiguration, ImageManifest};
use std::fmt;

/// An operating system and CPU architecture, as in an index's `platform` and a config's
/// `os`/`architecture`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

impl Platform {
    /// The appliance's platform.
    pub fn linux_amd64() -> Self {
        Self { os: "linux".into(), architecture: "amd64".into() }
    }

    fn matches(&self, os: &str, architecture: &str) -> bool {
        self.os == os && self.architecture == architecture
    }

    /// Whether an index entry's platform is this one.
    pub fn matches_oci(&self, p: &oci_spec::image::Platform) -> bool {
        self.matches(&p.os().to_string(), &p.architecture().to_string())
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
    }
}

/// One layer of an image, as stored in the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Digest of the blob as stored (compressed, if it is).
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub compression: Compression,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`. For an uncompressed
    /// layer it equals `digest`; for a compressed one it is checked when the layer is applied.
    pub diff_id: Digest,
}

/// One platform's image, every blob of it verified and in the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Where it came from, in skopeo's transport syntax (`oci-archive:/srv/api.tar:1`), for
    /// messages.
    pub reference: String,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    /// The manifest exactly as its digest was computed over: what the registry serves.
    pub manifest_bytes: Vec<u8>,
    pub config_digest: Digest,
    pub config_size: u64,
    pub layers: Vec<Layer>,
    pub platform: Platform,
}

impl Image {
    /// The uncompressed layer digests, in order (equal for the same image from any source).
    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }
}

/// A manifest's references, checked but not yet fetched.
#[derive(Debug)]
pub(crate) struct ManifestRefs {
    pub config_digest: Digest,
    pub config_size: u64,
    pub config_media_type: String,
    pub layers: Vec<LayerRef>,
}

#[derive(Debug)]
pub(crate) struct LayerRef {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub compression: Compression,
}

/// A manifest as received, its bytes parsed and its references checked ([`parse_manifest`]):
/// what a source has before it gets the config.
#[derive(Debug)]
pub(crate) struct ParsedManifest {
    pub digest: Digest,
    pub media_type: String,
    /// Exactly the bytes `digest` was computed over.
    pub bytes: Vec<u8>,
    pub refs: ManifestRefs,
}

impl ParsedManifest {
    /// Parses `bytes` (already verified against `digest`) as a manifest of `media_type`, the
    /// media type its descriptor gives. An error names the manifest's digest.
    pub(crate) fn parse(digest: Digest, media_type: String, bytes: Vec<u8>, limits: &Limits) -> Result<Self> {
        let refs = parse_manifest(&bytes, &media_type, limits).with_context(|| format!("in manifest {digest}"))?;
        Ok(Self { digest, media_type, bytes, refs })
    }
}

/// A manifest whose bytes, references and config are checked and in the blob store: what every
/// source (layout, archive, registry) has before it gets the layers.
pub(crate) struct CheckedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub refs: ManifestRefs,
    /// The config's `rootfs.diff_ids`, one per layer.
    pub diff_ids: Vec<Digest>,
}

impl CheckedManifest {
    /// `manifest` completed by its config: `config_bytes`, already verified against the
    /// manifest's config digest and size, must be for `platform` and give one diff_id per layer.
    /// An error names the config's digest.
    pub(crate) fn with_config(manifest: ParsedManifest, config_bytes: &[u8], platform: &Platform) -> Result<Self> {
        let ParsedManifest { digest, media_type, bytes, refs } = manifest;
        let diff_ids = check_config(config_bytes, platform, refs.layers.len())
            .with_context(|| format!("in config {}", refs.config_digest))?;
        Ok(Self { digest, media_type, bytes, refs, diff_ids })
    }

    /// The [`Image`], each layer got by `get_layer(layer, "layer N")` — which must leave the blob
    /// verified in the store — after the checks that need no bytes.
    pub(crate) fn into_image(
        self,
        reference: &str,
        platform: Platform,
        mut get_layer: impl FnMut(&LayerRef, &str) -> Result<()>,
    ) -> Result<Image> {
        let mut layers = Vec::with_capacity(self.refs.layers.len());
        for (i, (layer, diff_id)) in self.refs.layers.into_iter().zip(self.diff_ids).enumerate() {
            let what = format!("layer {}", i + 1);
            // An uncompressed layer's digest is its diff_id; checked before any bytes move.
            if layer.compression == Compression::None && layer.digest != diff_id {
                return Err(ImageError::Invalid(format!(
                    "{what} {} is uncompressed, but the config gives its diff_id as {diff_id}",
                    layer.digest
                ))
                .into());
            }
            get_layer(&layer, &what)?;
            layers.push(Layer {
                digest: layer.digest,
                size: layer.size,
                media_type: layer.media_type,
                compression: layer.compression,
                diff_id,
            });
        }
        Ok(Image {
            reference: reference.to_string(),
            manifest_digest: self.digest,
            manifest_media_type: self.media_type,
            manifest_bytes: self.bytes,
            config_digest: self.refs.config_digest,
            config_size: self.refs.config_size,
            layers,
            platform,
        })
    }
}

/// Parses an image manifest and checks what it refers to: media types airlock handles, sha256
/// digests, sizes within the limits.
pub(crate) fn parse_manifest(bytes: &[u8], descriptor_media_type: &str, limits: &Limits) -> Result<ManifestRefs> {
    let manifest: ImageManifest = serde_json::from_slice(bytes).context("parsing the image manifest")?;
    if manifest.schema_version() != 2 {
        return Err(ImageError::Invalid(format!(
            "manifest has schemaVersion {}, expected 2",
            manifest.schema_version()
        ))
        .into());
    }
    if let Some(own) = manifest.media_type()
        && own.to_string() != descriptor_media_type
    {
        return Err(ImageError::Invalid(format!(
            "manifest says its media type is `{own}` but its descriptor says `{descriptor_media_type}`"
        ))
        .into());
    }
    let config = manifest.config();
    let config_digest = descriptor_digest(config, "config")?;
    let config_type = config.media_type().to_string();
    if !media_type::is_config(&config_type) {
        return Err(ImageError::UnknownMediaType {
            what: "config".into(),
            digest: config_digest.to_string(),
            media_type: config_type,
        }
        .into());
    }
    limits.check_json("config", &config_digest, config.size())?;
    let mut layers = Vec::with_capacity(manifest.layers().len());
    for (i, layer) in manifest.layers().iter().enumerate() {
        let what = format!("layer {}", i + 1);
        let digest = descriptor_digest(layer, &what)?;
        let media_type = layer.media_type().to_string();
        let compression = Compression::of_layer(&media_type).ok_or_else(|| ImageError::UnknownMediaType {
            what: what.clone(),
            digest: digest.to_string(),
            media_type: media_type.clone(),
        })?;
        limits.check_blob(&what, &digest, layer.size())?;
        layers.push(LayerRef { digest, size: layer.size(), media_type, compression });
    }
    Ok(ManifestRefs { config_digest, config_size: config.size(), config_media_type: config_type, layers })
}

/// The kind of manifest a descriptor points to, or the error naming its unknown media type.
pub(crate) fn manifest_kind(descriptor: &oci_spec::image::Descriptor, what: &str) -> Result<ManifestKind> {
    let media_type = descriptor.media_type().to_string();
    ManifestKind::of(&media_type).ok_or_else(|| {
        ImageError::UnknownMediaType { what: what.to_string(), digest: descriptor.digest().to_string(), media_type }
            .into()
    })
}

/// A descriptor's digest, refused unless it is sha256.
pub(crate) fn descriptor_digest(descriptor: &oci_spec::image::Descriptor, what: &str) -> Result<Digest> {
    Digest::from_oci(descriptor.digest()).with_context(|| format!("digest of {what}"))
}

/// Parses a config, checks it is for `platform` and has one diff_id per layer, and returns the
/// diff_ids.
pub(crate) fn check_config(bytes: &[u8], platform: &Platform, layer_count: usize) -> Result<Vec<Digest>> {
    let config: ImageConfiguration = serde_json::from_slice(bytes).context("parsing the image config")?;
    let os = config.os().to_string();
    let architecture = config.architecture().to_string();
    if !platform.matches(&os, &architecture) {
        return Err(
            ImageError::WrongPlatform { wanted: platform.to_string(), actual: format!("{os}/{architecture}") }.into()
        );
    }
    let rootfs = config.rootfs();
    if rootfs.typ() != "layers" {
        return Err(ImageError::Invalid(format!("config has rootfs type `{}`, expected `layers`", rootfs.typ())).into());
    }
    if rootfs.diff_ids().len() != layer_count {
        return Err(ImageError::Invalid(format!(
            "config lists {} diff_ids for {layer_count} layers",
            rootfs.diff_ids().len()
        ))
        .into());
    }
    rootfs
        .diff_ids()
        .iter()
        .enumerate()
        .map(|(i, d)| Digest::parse(d).with_context(|| format!("diff_id of layer {}", i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media_type::{OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST};
    use serde_json::json;

    fn manifest(layers: &[(&str, &Digest)]) -> Vec<u8> {
        let config = Digest::of_bytes(b"config");
        let layers: Vec<_> =
            layers.iter().map(|(t, d)| json!({"mediaType": t, "digest": d.to_string(), "size": 10})).collect();
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config.to_string(), "size": 6},
            "layers": layers,
        }))
        .unwrap()
    }

    fn config(architecture: &str, diff_ids: &[&Digest]) -> Vec<u8> {
        let diff_ids: Vec<String> = diff_ids.iter().map(|d| d.to_string()).collect();
        serde_json::to_vec(&json!({
            "os": "linux",
            "architecture": architecture,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }

    fn parsed(bytes: Vec<u8>) -> Result<ParsedManifest> {
        ParsedManifest::parse(Digest::of_bytes(&bytes), OCI_MANIFEST.into(), bytes, &Limits::default())
    }

    #[test]
    fn checked_manifest_becomes_the_image_with_each_layer_got_in_order() {
        let (gz, tar) = (Digest::of_bytes(b"gz"), Digest::of_bytes(b"tar"));
        let diff = Digest::of_bytes(b"diff");
        let m = parsed(manifest(&[(OCI_LAYER_GZIP, &gz), (OCI_LAYER_TAR, &tar)])).unwrap();
        let manifest_digest = m.digest.clone();
        let checked =
            CheckedManifest::with_config(m, &config("amd64", &[&diff, &tar]), &Platform::linux_amd64()).unwrap();
        let mut got = Vec::new();
        let image = checked
            .into_image("oci:/x:1", Platform::linux_amd64(), |l, what| {
                got.push(format!("{what} {}", l.digest));
                Ok(())
            })
            .unwrap();
        assert_eq!(got, [format!("layer 1 {gz}"), format!("layer 2 {tar}")]);
        assert_eq!(image.manifest_digest, manifest_digest);
        assert_eq!(image.config_digest, Digest::of_bytes(b"config"));
        assert_eq!(image.diff_ids(), [diff, tar]);
        assert_eq!(image.reference, "oci:/x:1");
    }

    #[test]
    fn errors_name_the_manifest_config_or_layer_and_the_problem() {
        let schema1 = serde_json::to_vec(&json!({"schemaVersion": 1, "config": {}, "layers": []})).unwrap();
        let e = format!("{:#}", parsed(schema1.clone()).unwrap_err());
        assert!(e.contains(&format!("in manifest {}", Digest::of_bytes(&schema1))), "{e}");

        let tar = Digest::of_bytes(b"tar");
        let config_digest = Digest::of_bytes(b"config");
        let bytes = manifest(&[(OCI_LAYER_TAR, &tar)]);
        let amd64 = Platform::linux_amd64();
        let check = |config: Vec<u8>| {
            CheckedManifest::with_config(parsed(bytes.clone()).unwrap(), &config, &amd64).map(|_| ()).unwrap_err()
        };
        let e = format!("{:#}", check(config("arm64", &[&tar])));
        assert!(e.contains(&format!("in config {config_digest}")) && e.contains("linux/arm64"), "{e}");
        let e = format!("{:#}", check(config("amd64", &[&tar, &tar])));
        assert!(e.contains(&format!("in config {config_digest}")) && e.contains("2 diff_ids for 1 layers"), "{e}");

        // An uncompressed layer whose digest is not its diff_id is refused before it is got.
        let other = Digest::of_bytes(b"other");
        let checked =
            CheckedManifest::with_config(parsed(bytes).unwrap(), &config("amd64", &[&other]), &amd64).unwrap();
        let e = checked.into_image("oci:/x:1", amd64, |_, what| panic!("{what} was got")).unwrap_err();
        assert!(format!("{e:#}").contains(&format!("layer 1 {tar} is uncompressed")), "{e:#}");
    }
}
