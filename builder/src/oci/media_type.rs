//! The media types airlock understands, sorted into what each one is.
//!
//! Anything not listed here is refused rather than guessed at: a foreign or non-distributable
//! layer (whose bytes live elsewhere), an artifact, a signature. Both the OCI names and the
//! Docker v2 schema 2 names are accepted, because OCI layouts written from Docker images keep
//! Docker media types.

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// What a descriptor in an index or `index.json` points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// A list of per-platform manifests.
    Index,
    /// One platform's image.
    Image,
}

impl ManifestKind {
    pub fn of(media_type: &str) -> Option<Self> {
        match media_type {
            OCI_INDEX | DOCKER_MANIFEST_LIST => Some(Self::Index),
            OCI_MANIFEST | DOCKER_MANIFEST => Some(Self::Image),
            _ => None,
        }
    }
}

/// Whether `media_type` names an image configuration.
pub fn is_config(media_type: &str) -> bool {
    matches!(media_type, OCI_CONFIG | DOCKER_CONFIG)
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer with this media type; `None` for a type that is not a layer
    /// airlock can apply.
    pub fn of_layer(media_type: &str) -> Option<Self> {
        match media_type {
            OCI_LAYER_TAR | DOCKER_LAYER_TAR => Some(Self::None),
            OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Some(Self::Gzip),
            OCI_LAYER_ZSTD => Some(Self::Zstd),
            _ => None,
        }
    }

    /// Recognizes a compressed stream by its first bytes.
    pub fn sniff(head: &[u8]) -> Self {
        match head {
            [0x1f, 0x8b, ..] => Self::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            _ => Self::None,
        }
    }

    /// The OCI layer media type for a layer compressed this way.
    pub fn oci_layer_media_type(self) -> &'static str {
        match self {
            Self::None => OCI_LAYER_TAR,
            Self::Gzip => OCI_LAYER_GZIP,
            Self::Zstd => OCI_LAYER_ZSTD,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(ManifestKind::of(DOCKER_MANIFEST_LIST), Some(ManifestKind::Index));
        assert_eq!(ManifestKind::of(OCI_MANIFEST), Some(ManifestKind::Image));
        assert_eq!(ManifestKind::of(OCI_CONFIG), None);
        assert_eq!(Compression::of_layer(DOCKER_LAYER_GZIP), Some(Compression::Gzip));
        assert_eq!(Compression::of_layer("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"), None);
        assert_eq!(Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
    }
}
