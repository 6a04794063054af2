//! Writing the storage of the appliance's registry (distribution 2.8, Debian's
//! `docker-registry`) into a tree, in the layout its filesystem driver reads, so images are
//! served from the first boot without any import step.
//!
//! Under `<at>/docker/registry/v2`:
//! - `blobs/sha256/<hex[..2]>/<hex>/data`: every manifest, config and layer, once;
//! - `repositories/<name>/_layers/sha256/<hex>/link`: the repository may serve this blob (config
//!   and layers);
//! - `repositories/<name>/_manifests/revisions/sha256/<hex>/link`: a manifest of the repository;
//! - `repositories/<name>/_manifests/tags/<tag>/current/link`: what the tag points to now, and
//!   `.../tags/<tag>/index/sha256/<hex>/link`: every manifest the tag has pointed to.
//!
//! Each link holds `sha256:<hex>` with no newline, as the registry writes them. Blob `data`
//! files point at the blob store (they are copied when the filesystem is written, not read into
//! memory here). The registry only ever serves the one platform's manifest airlock read: an
//! appliance has one architecture, and the index it came from is not kept.

use super::blob_store::BlobStore;
use super::digest::Digest;
use super::image::Image;
use super::registry_names::{RepositoryName, Tag};
use crate::tree::{Content, Meta, NodeKind, Timestamp, Tree, path};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

/// One image to preload, and the name it is served under.
#[derive(Debug, Clone)]
pub struct Preload<'a> {
    pub image: &'a Image,
    pub repository: RepositoryName,
    pub tag: Tag,
}

/// Owner and time of everything written under the storage root. The registry runs as its own
/// user (Debian's package creates `docker-registry`), which owns its storage as it would had it
/// written it; that user's ids are known only from the root filesystem's `/etc/passwd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageOwner {
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
}

/// Adds the registry storage holding `images` to `tree` at `at` (for example
/// `var/lib/docker-registry`). `at` is created if missing; if it exists its metadata is kept.
pub fn write_registry_storage(
    tree: &mut Tree,
    at: &str,
    images: &[Preload<'_>],
    store: &BlobStore,
    owner: &StorageOwner,
) -> Result<()> {
    let root = path::normalize(at.as_bytes()).with_context(|| format!("registry storage path `{at}`"))?;
    if root.is_empty() {
        bail!("the registry storage cannot be the root directory");
    }
    let root = String::from_utf8(root).context("registry storage path is not UTF-8")?;
    check_tags_unique(images)?;

    let writer = StorageWriter { owner, root };
    writer.ensure_root(tree)?;

    // Each blob once, whichever images share it.
    let mut blobs: BTreeMap<Digest, (u64, &'static str)> = BTreeMap::new();
    for p in images {
        let img = p.image;
        blobs.insert(img.manifest_digest.clone(), (img.manifest_bytes.len() as u64, "manifest"));
        blobs.insert(img.config_digest.clone(), (img.config_size, "config"));
        for layer in &img.layers {
            blobs.insert(layer.digest.clone(), (layer.size, "layer"));
        }
    }
    for (digest, (size, what)) in &blobs {
        let source = store.verified_path(digest, *size, what)?;
        writer.blob_data(tree, digest, *size, source)?;
    }

    for p in images {
        let img = p.image;
        let repo = format!("repositories/{}", p.repository);
        let mut layer_links = BTreeSet::new();
        layer_links.insert(&img.config_digest);
        layer_links.extend(img.layers.iter().map(|l| &l.digest));
        for digest in layer_links {
            writer.link(tree, &format!("{repo}/_layers/sha256/{}", digest.hex()), digest)?;
        }
        let m = &img.manifest_digest;
        writer.link(tree, &format!("{repo}/_manifests/revisions/sha256/{}", m.hex()), m)?;
        let tag = format!("{repo}/_manifests/tags/{}", p.tag);
        writer.link(tree, &format!("{tag}/current"), m)?;
        writer.link(tree, &format!("{tag}/index/sha256/{}", m.hex()), m)?;
    }
    Ok(())
}

/// Two different images under one `repository:tag` would leave the tag pointing at whichever
/// was written last.
fn check_tags_unique(images: &[Preload<'_>]) -> Result<()> {
    let mut seen: BTreeMap<(&RepositoryName, &Tag), &Image> = BTreeMap::new();
    for p in images {
        if let Some(other) = seen.insert((&p.repository, &p.tag), p.image)
            && other.manifest_digest != p.image.manifest_digest
        {
            bail!("{}:{} is given twice, for {} and for {}", p.repository, p.tag, other.reference, p.image.reference);
        }
    }
    Ok(())
}

struct StorageWriter<'o> {
    owner: &'o StorageOwner,
    /// The storage root, normalized.
    root: String,
}

impl StorageWriter<'_> {
    fn meta(&self, mode: u32) -> Meta {
        Meta { mode, uid: self.owner.uid, gid: self.owner.gid, mtime: self.owner.mtime, xattrs: BTreeMap::new() }
    }

    fn ensure_root(&self, tree: &mut Tree) -> Result<()> {
        match tree.lookup(&self.root) {
            Some(id) if tree.node(id).kind.is_dir() => Ok(()),
            Some(id) => bail!(
                "registry storage path `{}` is a {} in the root filesystem",
                self.root,
                tree.node(id).kind.describe()
            ),
            None => {
                tree.insert(self.root.as_bytes(), self.meta(0o755), empty_dir())
                    .with_context(|| format!("creating `{}`", self.root))?;
                Ok(())
            }
        }
    }

    /// Creates (or re-owns) every directory from `docker/` down to `rel`'s parent.
    fn dirs_for(&self, tree: &mut Tree, rel: &str) -> Result<()> {
        let mut path = self.root.clone();
        let parts: Vec<&str> = rel.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            path.push('/');
            path.push_str(part);
            tree.insert(path.as_bytes(), self.meta(0o755), empty_dir())
                .with_context(|| format!("creating `{path}`"))?;
        }
        Ok(())
    }

    fn file(&self, tree: &mut Tree, rel: &str, size: u64, content: Content) -> Result<()> {
        let rel = format!("docker/registry/v2/{rel}");
        self.dirs_for(tree, &rel)?;
        let path = format!("{}/{rel}", self.root);
        tree.insert(path.as_bytes(), self.meta(0o644), NodeKind::File { size, content })
            .with_context(|| format!("adding `{path}`"))?;
        Ok(())
    }

    fn blob_data(&self, tree: &mut Tree, digest: &Digest, size: u64, source: PathBuf) -> Result<()> {
        let hex = digest.hex();
        self.file(
            tree,
            &format!("blobs/sha256/{}/{hex}/data", &hex[..2]),
            size,
            Content::Host(Arc::from(source.as_path())),
        )
    }

    fn link(&self, tree: &mut Tree, dir: &str, digest: &Digest) -> Result<()> {
        let text = digest.to_string().into_bytes();
        self.file(tree, &format!("{dir}/link"), text.len() as u64, Content::Bytes(Arc::from(text)))
    }
}

fn empty_dir() -> NodeKind {
    NodeKind::Directory { entries: BTreeMap::new() }
}
