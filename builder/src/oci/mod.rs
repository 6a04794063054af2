//! Container images: reading them, verified, from the formats people hand over, unpacking their
//! layers into a tree, and writing the registry storage that serves them on the appliance.
//!
//! Data flows in one direction:
//! 1. [`read_image`] reads one platform's image from an OCI layout directory, an OCI archive or
//!    a `docker save` archive into the [`BlobStore`], checking every blob's size and digest on
//!    the way in, and returns the normalized [`Image`];
//! 2. [`apply_layers`] unpacks an image's layers into a [`Tree`](crate::tree::Tree) (for an
//!    appliance whose root filesystem is a container image);
//! 3. [`write_registry_storage`] lays the images out as the registry's own storage inside the
//!    root filesystem tree, pointing at the blob store's files.
//!
//! The blob store must outlive the tree: file contents refer to its files until the image is
//! written.

pub mod blob_store;
pub mod containers_storage;
pub mod digest;
pub mod docker_archive;
pub mod error;
pub mod image;
pub mod layout;
pub mod limits;
pub mod media_type;
pub mod reference;
pub mod registry_names;
pub mod registry_storage;
mod tar_index;
pub mod unpack;

pub use blob_store::BlobStore;
pub use digest::Digest;
pub use error::ImageError;
pub use image::{Image, Layer, Platform};
pub use limits::Limits;
pub use reference::ImageReference;
pub use registry_names::{RepositoryName, Tag};
pub use registry_storage::{Preload, StorageOwner, write_registry_storage};
pub use unpack::apply_layers;

use anyhow::{Context, Result};
use std::fmt;
use std::path::PathBuf;

/// The formats an image can be handed over in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A directory with `oci-layout`, `index.json` and `blobs/` (skopeo's `oci:`).
    OciLayout,
    /// A tar of such a directory (skopeo's `oci-archive:`).
    OciArchive,
    /// `docker save` / `podman save` output (skopeo's `docker-archive:`).
    DockerArchive,
}

impl SourceKind {
    /// skopeo's name for the transport.
    pub fn transport(self) -> &'static str {
        match self {
            Self::OciLayout => "oci",
            Self::OciArchive => "oci-archive",
            Self::DockerArchive => "docker-archive",
        }
    }
}

/// Where to read an image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    pub kind: SourceKind,
    pub path: PathBuf,
    /// Which image of the source: the `org.opencontainers.image.ref.name` annotation in an OCI
    /// layout's `index.json` (for example `1`), or a `RepoTags` entry of a docker-archive (for
    /// example `localhost/demo/api:1`). `None` takes the only image there is.
    pub select: Option<String>,
}

impl fmt::Display for ImageSource {
    /// In skopeo's transport syntax, for messages: `oci-archive:/srv/api.tar:1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.transport(), self.path.display())?;
        if let Some(select) = &self.select {
            write!(f, ":{select}")?;
        }
        Ok(())
    }
}

/// What to accept when reading an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
    /// The platform to pick from a multi-platform index, and that the config must name.
    pub platform: Platform,
    pub limits: Limits,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self { platform: Platform::linux_amd64(), limits: Limits::default() }
    }
}

/// Reads one image from `source` into `store`, verified; errors name the source.
pub fn read_image(source: &ImageSource, store: &BlobStore, opts: &ReadOptions) -> Result<Image> {
    let reference = source.to_string();
    let select = source.select.as_deref();
    let path = &source.path;
    match source.kind {
        SourceKind::OciLayout => layout::read_oci_layout(path, select, &reference, store, opts),
        SourceKind::OciArchive => layout::read_oci_archive(path, select, &reference, store, opts),
        SourceKind::DockerArchive => docker_archive::read_docker_archive(path, select, &reference, store, opts),
    }
    .with_context(|| format!("reading image {reference}"))
}
