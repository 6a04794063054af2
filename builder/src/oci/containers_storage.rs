//! containers/storage's overlay image store, written as a tree: the form in which podman keeps
//! the images it pulled, unpacked, so that a podman pointed at it (`additionalimagestores`)
//! runs them with nothing to pull, unpack or write.
//!
//! The format belongs to containers/storage and is no documented interface. What is written
//! here is what Debian trixie's version (containers/storage 1.57, podman 5.4) writes for a pull,
//! minus what only a writable store needs; `builder/tests/image_store.rs` holds it against that
//! podman itself. Under the store's directory:
//!
//! - `overlay-images/images.json`: one record per image (podman's image ID is the config's
//!   digest): the digest the reference resolved to (the index's, else the manifest's), the names, the top layer, the big data's names,
//!   sizes and digests, and the config's creation time.
//! - `overlay-images/<image id>/`: the big data: the config under its digest, the manifest as
//!   `manifest-<digest>` and as `manifest`, and the multi-platform index the reference resolved
//!   through as `manifest-<digest>` too (so a reference by the index's digest finds the image, as
//!   after a pull). A key outside `[.0-9a-z]` becomes `=` + its base64 as the file name.
//! - `overlay-layers/layers.json`: one record per layer, its ID the chain ID containers/image
//!   computes (the first layer's diff_id; then `sha256(parent ID + "+" + diff_id hex)`), so an
//!   image pulled later on top of one of these layers shares it: parent, creation time, blob
//!   digest and size, diff_id and size, compression, and every uid and gid the layer names.
//! - `overlay/<layer id>/diff/`: the layer's files, its whiteouts in overlayfs's form (see
//!   [`crate::tree::tar_input::Whiteouts::Overlay`]) and its files' own times; `link`: the
//!   layer's short name; `lower`: `l/<short name>` of each layer below, nearest first.
//!   `overlay/l/<short name>` links to `../<layer id>/diff`: the path the overlay mount takes.
//! - `overlay-images/images.lock`, `overlay-layers/layers.lock`: empty. containers/storage opens
//!   them with `O_CREAT` even in a read-only store; on a read-only filesystem that works only
//!   if they exist (a missing `images.lock` makes podman skip the store without a word).
//!
//! Left out: each layer's `tar-split.gz` (only `podman save`/`push` of these images use it, and
//! they fall back to the files; the appliance's registry serves the original blobs), and
//! `work/`, `merged/`, `empty/`, which only a layer podman mounts as the top of a container
//! needs: a read-only store's layers are only ever lower layers.
//!
//! Everything is a function of the images and the build's clock: short names derive from the
//! layer IDs, JSON fields come in containers/storage's order, times from the config or the
//! clock, so the store's bytes are reproducible.

use super::blob_store::BlobStore;
use super::digest::Digest;
use super::image::Image;
use super::media_type::Compression;
use super::reference::ImageReference;
use super::unpack::unpack_layer;
use crate::clock::BuildClock;
use crate::tree::{Meta, Tree, path};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The storage driver the store is written for: its directories are `<driver>-images`,
/// `<driver>-layers` and `<driver>/`, and only a podman configured with this driver reads it.
pub const DRIVER: &str = "overlay";
/// Length of a layer's short name (containers/storage's `idLength`).
const SHORT_NAME_LENGTH: usize = 26;
/// Big data key under which containers/storage keeps an image's current manifest.
const MANIFEST_KEY: &str = "manifest";

/// One image to store and the name podman lists it under.
#[derive(Debug, Clone)]
pub struct StoredImage<'a> {
    pub image: &'a Image,
    /// See [`store_name`].
    pub name: String,
    /// The multi-platform index the reference resolved to, with its bytes.
    pub index: Option<(Digest, Vec<u8>)>,
}

impl StoredImage<'_> {
    /// The digest the reference resolved to, as a pull records it: the index's when there was
    /// one, else the manifest's.
    pub fn resolved_digest(&self) -> &Digest {
        self.index.as_ref().map_or(&self.image.manifest_digest, |(d, _)| d)
    }
}

/// What the store holds, for the build's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreSummary {
    pub images: usize,
    pub layers: usize,
    /// Bytes of the layers' uncompressed tars.
    pub unpacked_bytes: u64,
}

/// The name a pull of `reference` gives the image in containers/storage: the normalized
/// reference with its tag (`docker.io/library/mysql:8.0`), or with its digest alone when it has
/// one (`domain/path@sha256:…`; podman drops the tag of a reference that has both).
pub fn store_name(reference: &ImageReference) -> String {
    match (reference.digest(), reference.tag()) {
        (Some(digest), _) => format!("{}@{digest}", reference.name()),
        (None, Some(tag)) => format!("{}:{tag}", reference.name()),
        (None, None) => reference.name(),
    }
}

/// The IDs containers/image gives `image`'s layers in a store, bottom first: chain IDs over
/// the diff_ids.
pub fn layer_ids(image: &Image) -> Vec<String> {
    let mut ids: Vec<String> = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        let id = match ids.last() {
            None => layer.diff_id.hex().to_string(),
            Some(parent) => hex::encode(Sha256::digest(format!("{parent}+{}", layer.diff_id.hex()))),
        };
        ids.push(id);
    }
    ids
}

/// A layer's short name: 26 characters of RFC 4648 base32, like the random ones
/// containers/storage makes, here derived from the layer ID so the store is reproducible. The
/// `lower` files of containers made on top name these, so they must not change once written.
fn short_name(layer_id: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = Sha256::digest(format!("airlock image store layer {layer_id}"));
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = String::with_capacity(SHORT_NAME_LENGTH);
    for &byte in hash.iter() {
        bits = (bits << 8) | u32::from(byte);
        nbits += 8;
        while nbits >= 5 && out.len() < SHORT_NAME_LENGTH {
            nbits -= 5;
            out.push(char::from(ALPHABET[((bits >> nbits) & 31) as usize]));
        }
    }
    out
}

/// The file name containers/storage gives a big data item (`makeBigDataBaseName`).
fn big_data_file_name(key: &str) -> String {
    use base64::Engine as _;
    if key.bytes().all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase()) {
        key.to_string()
    } else {
        format!("={}", base64::engine::general_purpose::STANDARD.encode(key))
    }
}

/// containers/storage's `Layer` as it is saved (field order as in its Go struct; empty fields
/// left out as `omitempty` does).
#[derive(Debug, Serialize)]
struct LayerRecord {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
    created: String,
    #[serde(rename = "compressed-diff-digest")]
    compressed_diff_digest: String,
    #[serde(rename = "compressed-size")]
    compressed_size: u64,
    #[serde(rename = "diff-digest")]
    diff_digest: String,
    #[serde(rename = "diff-size")]
    diff_size: u64,
    /// containers/storage's `archive.Compression`: 0 none (left out), 2 gzip, 4 zstd.
    #[serde(skip_serializing_if = "is_zero")]
    compression: u8,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    uidset: BTreeSet<u32>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    gidset: BTreeSet<u32>,
}

/// A layer already in the store, as the layers above it need it.
struct WrittenLayer {
    short: String,
    /// Its `lower` file (none for a first layer).
    lower: Option<String>,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

/// containers/storage's `Image` as it is saved.
#[derive(Debug, Serialize)]
struct ImageRecord {
    id: String,
    digest: String,
    names: Vec<String>,
    #[serde(rename = "names-history")]
    names_history: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    layer: Option<String>,
    /// containers/image's metadata of an image without signatures.
    metadata: &'static str,
    #[serde(rename = "big-data-names")]
    big_data_names: Vec<String>,
    #[serde(rename = "big-data-sizes")]
    big_data_sizes: BTreeMap<String, u64>,
    #[serde(rename = "big-data-digests")]
    big_data_digests: BTreeMap<String, String>,
    created: String,
}

/// Owner-only directories and files, as containers/storage makes them (podman runs as root).
const PRIVATE_DIR: u32 = 0o700;
const PRIVATE_FILE: u32 = 0o600;
const PUBLIC_DIR: u32 = 0o755;
const PUBLIC_FILE: u32 = 0o644;
/// The mode of every layer's `diff` directory.
const DIFF_ROOT_MODE: u32 = 0o555;

/// Writes the store holding `images` at `at` in `tree` (which must not exist yet). Each layer is
/// unpacked once, however many images share it; compressed layers are decompressed into spool
/// files in `spool_dir` that live as long as the tree.
pub fn write_image_store(
    tree: &mut Tree,
    at: &str,
    images: &[StoredImage<'_>],
    store: &BlobStore,
    spool_dir: &Path,
    clock: &BuildClock,
) -> Result<StoreSummary> {
    let root = path::normalize(at.as_bytes()).with_context(|| format!("image store path `{at}`"))?;
    let root = String::from_utf8(root).context("image store path is not UTF-8")?;
    if root.is_empty() {
        bail!("the image store cannot be the root directory");
    }
    if tree.lookup(&root).is_some() {
        bail!("/{root} already exists in the root filesystem; the image store must be airlock's alone");
    }
    let records = image_records(images, store, clock)?;

    let dirs = [
        (root.clone(), PUBLIC_DIR),
        (format!("{root}/{DRIVER}"), PRIVATE_DIR),
        (format!("{root}/{DRIVER}/l"), PUBLIC_DIR),
        (format!("{root}/{DRIVER}-images"), PRIVATE_DIR),
        (format!("{root}/{DRIVER}-layers"), PRIVATE_DIR),
    ];
    for (dir, mode) in &dirs {
        tree.put_dir(dir, *mode)?;
    }

    let mut layers: Vec<LayerRecord> = Vec::new();
    let mut written: BTreeMap<String, WrittenLayer> = BTreeMap::new();
    let mut summary = StoreSummary { images: records.len(), ..StoreSummary::default() };
    for stored in images {
        let image = stored.image;
        let ids = layer_ids(image);
        for (i, (layer, id)) in image.layers.iter().zip(&ids).enumerate() {
            if written.contains_key(id) {
                continue;
            }
            let unpacked = unpack_layer(layer, i + 1, store, spool_dir, crate::expansion::ExpansionLimit::ratio_only())
                .with_context(|| format!("unpacking layer {} ({}) of {}", i + 1, layer.digest, image.reference))?;
            let parent = i.checked_sub(1).map(|p| ids[p].clone());
            let mut diff = unpacked.tree;
            // containers/storage makes every layer's `diff` directory 0555 root, whatever the
            // layer says of its root directory (and a container's `/` takes its top layer's).
            diff.node_mut(diff.root()).meta = Meta { mtime: clock.epoch(), ..Meta::root(DIFF_ROOT_MODE) };
            let dir = format!("{root}/{DRIVER}/{id}");
            tree.put_dir(&dir, PRIVATE_DIR)?;
            tree.graft_moved(format!("{dir}/diff").as_bytes(), diff, true)
                .map_err(|p| anyhow::anyhow!("placing layer {id} at /{dir}/diff: {p}"))?;
            let short = short_name(id);
            tree.put_file(&format!("{dir}/link"), PUBLIC_FILE, short.clone())?;
            // The layers below, nearest first, by the names their `l/` links have.
            let lower = parent.as_ref().map(|p| {
                let below = &written[p];
                match &below.lower {
                    Some(rest) => format!("l/{}:{rest}", below.short),
                    None => format!("l/{}", below.short),
                }
            });
            if let Some(lower) = &lower {
                tree.put_file(&format!("{dir}/lower"), PUBLIC_FILE, lower.clone())?;
            }
            tree.put_symlink(&format!("{root}/{DRIVER}/l/{short}"), &format!("../{id}/diff"))?;
            summary.unpacked_bytes += unpacked.diff_size;
            layers.push(LayerRecord {
                id: id.clone(),
                parent,
                created: clock.rfc3339(),
                compressed_diff_digest: layer.digest.to_string(),
                compressed_size: layer.size,
                diff_digest: layer.diff_id.to_string(),
                diff_size: unpacked.diff_size,
                compression: match layer.compression {
                    Compression::None => 0,
                    Compression::Gzip => 2,
                    Compression::Zstd => 4,
                },
                uidset: unpacked.stats.uids,
                gidset: unpacked.stats.gids,
            });
            written.insert(id.clone(), WrittenLayer { short, lower });
        }
    }
    summary.layers = layers.len();

    for (record, big_data) in &records {
        let dir = format!("{root}/{DRIVER}-images/{}", record.id);
        tree.put_dir(&dir, PRIVATE_DIR)?;
        for (key, bytes) in big_data {
            tree.put_file(&format!("{dir}/{}", big_data_file_name(key)), PRIVATE_FILE, bytes.clone())?;
        }
    }
    let images_json: Vec<&ImageRecord> = records.iter().map(|(r, _)| r).collect();
    tree.put_file(
        &format!("{root}/{DRIVER}-images/images.json"),
        PRIVATE_FILE,
        serde_json::to_vec(&images_json).context("encoding images.json")?,
    )?;
    tree.put_file(
        &format!("{root}/{DRIVER}-layers/layers.json"),
        PRIVATE_FILE,
        serde_json::to_vec(&layers).context("encoding layers.json")?,
    )?;
    tree.put_file(&format!("{root}/{DRIVER}-images/images.lock"), PUBLIC_FILE, Vec::new())?;
    tree.put_file(&format!("{root}/{DRIVER}-layers/layers.lock"), PUBLIC_FILE, Vec::new())?;
    Ok(summary)
}

/// An image's big data: key → bytes, in the order containers/image adds them.
type BigData = Vec<(String, Vec<u8>)>;

/// The image records and each one's big data (key → bytes, in the order containers/image adds
/// them). Images with the same config are one image in containers/storage (its ID is the
/// config's digest): their names gather on the first, and each manifest is kept.
fn image_records(
    images: &[StoredImage<'_>],
    store: &BlobStore,
    clock: &BuildClock,
) -> Result<Vec<(ImageRecord, BigData)>> {
    let mut out: Vec<(ImageRecord, BigData)> = Vec::new();
    let mut names: BTreeMap<&str, &Digest> = BTreeMap::new();
    for stored in images {
        let image = stored.image;
        if let Some(other) = names.insert(&stored.name, &image.manifest_digest)
            && other != &image.manifest_digest
        {
            bail!("two different images are both named {} ({other} and {})", stored.name, image.manifest_digest);
        }
        let id = image.config_digest.hex().to_string();
        let mut manifests: Vec<(String, Digest, Vec<u8>)> = Vec::new();
        if let Some((digest, bytes)) = &stored.index {
            manifests.push((format!("{MANIFEST_KEY}-{digest}"), digest.clone(), bytes.clone()));
        }
        manifests.push((
            format!("{MANIFEST_KEY}-{}", image.manifest_digest),
            image.manifest_digest.clone(),
            image.manifest_bytes.clone(),
        ));
        let existing = out.iter_mut().find(|(r, _)| r.id == id);
        let (record, big_data) = match existing {
            Some(entry) => entry,
            None => {
                let config = store.read_verified(&image.config_digest, image.config_size, "image config")?;
                let created = config_created(&config).unwrap_or_else(|| clock.rfc3339());
                let record = ImageRecord {
                    id,
                    digest: stored.resolved_digest().to_string(),
                    names: Vec::new(),
                    names_history: Vec::new(),
                    layer: layer_ids(image).pop(),
                    metadata: "{}",
                    big_data_names: Vec::new(),
                    big_data_sizes: BTreeMap::new(),
                    big_data_digests: BTreeMap::new(),
                    created,
                };
                let mut big_data = vec![(image.config_digest.to_string(), config)];
                big_data.extend(manifests.iter().map(|(k, _, b)| (k.clone(), b.clone())));
                big_data.push((MANIFEST_KEY.to_string(), image.manifest_bytes.clone()));
                out.push((record, big_data));
                let last = out.len() - 1;
                &mut out[last]
            }
        };
        for (key, _, bytes) in &manifests {
            if !big_data.iter().any(|(k, _)| k == key) {
                big_data.insert(big_data.len() - 1, (key.clone(), bytes.clone()));
            }
        }
        if !record.names.contains(&stored.name) {
            record.names.push(stored.name.clone());
            record.names_history.push(stored.name.clone());
        }
    }
    for (record, big_data) in &mut out {
        for (key, bytes) in big_data.iter() {
            record.big_data_names.push(key.clone());
            record.big_data_sizes.insert(key.clone(), bytes.len() as u64);
            record.big_data_digests.insert(key.clone(), Digest::of_bytes(bytes).to_string());
        }
    }
    Ok(out)
}

/// The config's `created`, as Go re-encodes a parsed RFC 3339 time (containers/storage stores
/// it as a Go `time.Time`): the fraction without trailing zeros, `Z` for UTC. `None` when the
/// config has none or it is not RFC 3339 (containers/storage then takes the time of the pull:
/// here, the build's).
fn config_created(config: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(config).ok()?;
    let text = value.get("created")?.as_str()?;
    normalize_rfc3339(text)
}

fn normalize_rfc3339(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| bytes.get(range).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let shape = bytes.len() >= 20
        && digits(0..4)
        && bytes[4] == b'-'
        && digits(5..7)
        && bytes[7] == b'-'
        && digits(8..10)
        && matches!(bytes[10], b'T' | b't')
        && digits(11..13)
        && bytes[13] == b':'
        && digits(14..16)
        && bytes[16] == b':'
        && digits(17..19);
    if !shape {
        return None;
    }
    let (seconds, rest) = text.split_at(19);
    let (fraction, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            if end == 0 {
                return None;
            }
            (r[..end].trim_end_matches('0'), &r[end..])
        }
        None => ("", rest),
    };
    let zone = match zone {
        "Z" | "z" | "+00:00" => "Z",
        z if z.len() == 6
            && matches!(z.as_bytes()[0], b'+' | b'-')
            && z.as_bytes()[3] == b':'
            && z[1..3].bytes().chain(z[4..6].bytes()).all(|b| b.is_ascii_digit()) =>
        {
            z
        }
        _ => return None,
    };
    let seconds = seconds.replacen(['t'], "T", 1);
    Some(if fraction.is_empty() { format!("{seconds}{zone}") } else { format!("{seconds}.{fraction}{zone}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_containers_image() {
        let layer = |hex: char| super::super::image::Layer {
            digest: Digest::from_hex(&hex.to_string().repeat(64)).unwrap(),
            size: 1,
            media_type: String::new(),
            compression: Compression::None,
            diff_id: Digest::from_hex(&hex.to_string().repeat(64)).unwrap(),
        };
        let image = Image {
            reference: "t".into(),
            manifest_digest: Digest::of_bytes(b"m"),
            manifest_media_type: String::new(),
            manifest_bytes: Vec::new(),
            config_digest: Digest::of_bytes(b"c"),
            config_size: 1,
            layers: vec![layer('a'), layer('b')],
            platform: super::super::Platform::linux_amd64(),
        };
        let ids = layer_ids(&image);
        assert_eq!(ids[0], "a".repeat(64));
        let expected = hex::encode(Sha256::digest(format!("{}+{}", "a".repeat(64), "b".repeat(64))));
        assert_eq!(ids[1], expected);
    }

    #[test]
    fn names_keep_the_tag_or_the_digest_alone() {
        let name = |s: &str| store_name(&ImageReference::parse(s).unwrap());
        assert_eq!(name("mysql:8.0"), "docker.io/library/mysql:8.0");
        assert_eq!(name("demo.airlock.internal/db:1"), "demo.airlock.internal/db:1");
        let digest = format!("sha256:{}", "1".repeat(64));
        assert_eq!(name(&format!("ex.test/a@{digest}")), format!("ex.test/a@{digest}"));
        assert_eq!(name(&format!("ex.test/a:2@{digest}")), format!("ex.test/a@{digest}"));
    }

    #[test]
    fn short_names_are_base32_of_the_right_length_and_stable() {
        let a = short_name("abc");
        assert_eq!(a.len(), SHORT_NAME_LENGTH);
        assert!(a.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)), "{a}");
        assert_eq!(a, short_name("abc"));
        assert_ne!(a, short_name("abd"));
    }

    #[test]
    fn big_data_file_names_follow_containers_storage() {
        assert_eq!(big_data_file_name("manifest"), "manifest");
        assert_eq!(
            big_data_file_name("sha256:7d69b4c8209a5a6fff02366638fa2754335397b0b3502fdc69b8a14c9226eea0"),
            "=c2hhMjU2OjdkNjliNGM4MjA5YTVhNmZmZjAyMzY2NjM4ZmEyNzU0MzM1Mzk3YjBiMzUwMmZkYzY5YjhhMTRjOTIyNmVlYTA="
        );
    }

    #[test]
    fn creation_times_are_encoded_as_go_does() {
        assert_eq!(normalize_rfc3339("2023-11-14T22:13:20Z").as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(normalize_rfc3339("2023-11-14T22:13:20.120000Z").as_deref(), Some("2023-11-14T22:13:20.12Z"));
        assert_eq!(normalize_rfc3339("2023-11-14T22:13:20.000Z").as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(normalize_rfc3339("2023-11-14T22:13:20+00:00").as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(normalize_rfc3339("2023-11-14T22:13:20-05:00").as_deref(), Some("2023-11-14T22:13:20-05:00"));
        assert_eq!(normalize_rfc3339("yesterday"), None);
        assert_eq!(normalize_rfc3339("2023-11-14T22:13:20"), None);
    }
}
