//! Applying an image's layers to a tree, in order, through the same tar reader as every other
//! input, so the tree model's rules (no `..`, no absolute paths, no writing through symlinks, no
//! duplicates within a layer) hold for container layers too, and OCI whiteouts apply.
//!
//! An uncompressed layer is applied straight from the blob store (its files then point into the
//! store, which must outlive the tree). A compressed layer is decompressed into an anonymous
//! spool file while its diff_id is checked, no further than its [`ExpansionLimit`], and the
//! spool lives as long as the tree.

use super::blob_store::BlobStore;
use super::digest::DigestingReader;
use super::error::ImageError;
use super::image::{Image, Layer};
use super::media_type::Compression;
use crate::expansion::{self, ExpansionLimit};
use crate::tree::Tree;
use crate::tree::tar_input::{self, TarOptions, TarStats, Whiteouts};
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::Path;

/// Applies every layer of `image` to `tree`, each as a new tree layer; `limit` bounds each
/// layer's decompression.
pub fn apply_layers(
    tree: &mut Tree,
    image: &Image,
    store: &BlobStore,
    spool_dir: &Path,
    limit: ExpansionLimit,
) -> Result<()> {
    for (i, layer) in image.layers.iter().enumerate() {
        apply_layer(tree, layer, i + 1, Whiteouts::Apply, store, spool_dir, limit)
            .with_context(|| format!("applying layer {} ({}) of {}", i + 1, layer.digest, image.reference))?;
    }
    Ok(())
}

/// One layer on its own, as containers/storage's overlay driver keeps it: its files in a tree
/// of their own with OCI whiteouts in overlayfs's form, and what the store records of it.
#[derive(Debug)]
pub struct UnpackedLayer {
    pub tree: Tree,
    pub stats: TarStats,
    /// Length of the uncompressed tar (the diff_id's input).
    pub diff_size: u64,
}

/// Unpacks layer `number` (1-based, for messages) into a tree of its own (see
/// [`UnpackedLayer`]); its diff_id is checked on the way, its decompression bounded by `limit`.
pub fn unpack_layer(
    layer: &Layer,
    number: usize,
    store: &BlobStore,
    spool_dir: &Path,
    limit: ExpansionLimit,
) -> Result<UnpackedLayer> {
    let mut tree = Tree::new();
    let (stats, diff_size) = apply_layer(&mut tree, layer, number, Whiteouts::Overlay, store, spool_dir, limit)?;
    Ok(UnpackedLayer { tree, stats, diff_size })
}

/// Applies one layer as a new tree layer; returns what it held and its uncompressed size.
fn apply_layer(
    tree: &mut Tree,
    layer: &Layer,
    number: usize,
    whiteouts: Whiteouts,
    store: &BlobStore,
    spool_dir: &Path,
    limit: ExpansionLimit,
) -> Result<(TarStats, u64)> {
    let what = format!("layer {number}");
    let blob = store.verified_path(&layer.digest, layer.size, &what)?;
    let mut head = [0u8; 4];
    let got = File::open(&blob)
        .and_then(|f| read_head(f, &mut head))
        .with_context(|| format!("reading {}", blob.display()))?;
    let found = Compression::sniff(&head[..got]);
    if found != layer.compression {
        return Err(ImageError::Invalid(format!(
            "{what} {} has media type `{}` but its bytes are {found:?}-compressed",
            layer.digest, layer.media_type
        ))
        .into());
    }
    let opts = TarOptions { whiteouts, spool_dir, limit };
    match layer.compression {
        Compression::None => {
            // Verified as diff_id when the image was read (the blob digest is the diff_id).
            if layer.digest != layer.diff_id {
                return Err(ImageError::Invalid(format!(
                    "{what} is uncompressed but its digest {} is not its diff_id {}",
                    layer.digest, layer.diff_id
                ))
                .into());
            }
            Ok((tar_input::apply_tar(tree, &blob, &opts)?, layer.size))
        }
        Compression::Gzip | Compression::Zstd => {
            // The tree's file nodes own the spool from here on (it is deleted with them).
            let spool = decompress_verified(&blob, layer, &what, spool_dir, limit)?;
            let diff_size = spool.metadata().with_context(|| format!("reading the spool of {what}"))?.len();
            let stats = tar_input::apply_spooled_tar(tree, &format!("{what} {}", layer.digest), spool, &opts)?;
            Ok((stats, diff_size))
        }
    }
}

/// Decompresses a layer into an anonymous spool file, checking the result against the layer's
/// diff_id.
fn decompress_verified(
    blob: &Path,
    layer: &Layer,
    what: &str,
    spool_dir: &Path,
    limit: ExpansionLimit,
) -> Result<File> {
    let mut spool = tar_input::anonymous_spool(spool_dir)?;
    let input = BufReader::new(File::open(blob).with_context(|| format!("opening {}", blob.display()))?);
    let mut out = BufWriter::with_capacity(1 << 20, &mut spool);
    let decoder: Box<dyn Read> = match layer.compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input).context("starting zstd")?),
        Compression::None => Box::new(input),
    };
    let mut reader = DigestingReader::new(decoder);
    let bound = limit.bound(layer.size);
    expansion::copy_bounded(&mut reader, &mut out, bound, || limit.explain(layer.size))
        .with_context(|| format!("decompressing {what} {}", layer.digest))?;
    out.flush().with_context(|| format!("writing the spool of {what}"))?;
    drop(out);
    let (actual, _) = reader.finish();
    if actual != layer.diff_id {
        return Err(ImageError::DigestMismatch {
            what: format!("uncompressed {what}"),
            expected: layer.diff_id.clone(),
            actual,
        }
        .into());
    }
    // apply_tar sniffs compression itself; a layer that decompresses to yet another compressed
    // stream would be unpacked twice with only the outer diff_id checked.
    let mut head = [0u8; 4];
    spool.rewind().context("rewinding the spool")?;
    let got = read_head(&mut spool, &mut head).with_context(|| format!("reading the spool of {what}"))?;
    if Compression::sniff(&head[..got]) != Compression::None {
        return Err(
            ImageError::Invalid(format!("{what} {} decompresses to another compressed stream", layer.digest)).into()
        );
    }
    Ok(spool)
}

fn read_head(mut f: impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = f.read(&mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}
