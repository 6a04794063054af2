//! `[[containers]]`: the container images the appliance carries, validated.

use super::is_name;
use crate::oci::{ImageReference, ImageSource, SourceKind};
use crate::spec::{ContainerSpec, PlanError};
use std::fmt;
use std::path::Path;

/// A container image the appliance carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    /// Local name: names the container's unit and banner line.
    pub name: String,
    /// The image's reference as the spec wrote it (`mysql:8.0`): what the appliance's units
    /// name, for podman to resolve through the appliance's registries.conf.
    pub image: String,
    /// The same reference, normalized (`docker.io/library/mysql:8.0`): what the lock records.
    pub reference: ImageReference,
    pub source: ContainerSource,
}

/// Where `airlock fetch` gets a container image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerSource {
    /// The registry the reference names, over the distribution protocol.
    Registry,
    /// An OCI layout, OCI archive or docker-archive on the build host.
    Local {
        /// The path resolved against the spec's folder.
        source: ImageSource,
        /// As the spec wrote it (relative to the spec): what the lock file records, so it stays
        /// valid wherever the checkout is.
        written: String,
    },
}

impl ContainerSource {
    /// The spec's syntax: `registry`, `oci:<dir>[:<name>]`, `oci-archive:<file>[:<name>]`,
    /// `docker-archive:<file>[:<tag>]`. The first `:` after the transport ends the path.
    pub fn parse(text: &str, spec_dir: &Path) -> Result<Self, String> {
        if text == "registry" {
            return Ok(Self::Registry);
        }
        let Some((transport, rest)) = text.split_once(':') else {
            return Err(format!(
                "`{text}` is not `registry`, `oci:<dir>`, `oci-archive:<file>` or `docker-archive:<file>`"
            ));
        };
        let kind = match transport {
            "oci" => SourceKind::OciLayout,
            "oci-archive" => SourceKind::OciArchive,
            "docker-archive" => SourceKind::DockerArchive,
            other => {
                return Err(format!(
                    "`{other}` is not a source airlock reads (use registry, oci, oci-archive or docker-archive)"
                ));
            }
        };
        let (path, select) = match rest.split_once(':') {
            Some((path, select)) => (path, Some(select)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(format!("`{text}` names no path"));
        }
        if select == Some("") {
            return Err(format!("`{text}` ends in `:` but names no image after it"));
        }
        let source = ImageSource { kind, path: spec_dir.join(path), select: select.map(str::to_string) };
        Ok(Self::Local { source, written: text.to_string() })
    }
}

impl fmt::Display for ContainerSource {
    /// As the spec wrote it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Registry => f.write_str("registry"),
            Self::Local { written, .. } => f.write_str(written),
        }
    }
}

pub(super) fn validate(
    list: &[ContainerSpec],
    spec_dir: &Path,
    err: &dyn Fn(&str, String) -> PlanError,
) -> Result<Vec<ContainerPlan>, PlanError> {
    let mut containers: Vec<ContainerPlan> = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let key = |k: &str| format!("containers[{i}].{k}");
        if !is_name(&c.name, 63) {
            return Err(err(&key("name"), format!("`{}` must be 1-63 lower-case letters, digits or `-`", c.name)));
        }
        if containers.iter().any(|x| x.name == c.name) {
            return Err(err(&key("name"), format!("`{}` is listed twice", c.name)));
        }
        let reference = ImageReference::parse(&c.image).map_err(|e| err(&key("image"), e.to_string()))?;
        let source = ContainerSource::parse(&c.source, spec_dir).map_err(|e| err(&key("source"), e))?;
        // One reference is one image on the appliance's registry; two sources for it would make
        // which one it serves depend on the order of the list.
        if let Some(other) = containers.iter().find(|x| x.reference == reference && x.source != source) {
            return Err(err(
                &key("image"),
                format!(
                    "`{reference}` is also container `{}`'s image, from source `{}`; one reference needs one source",
                    other.name, other.source
                ),
            ));
        }
        containers.push(ContainerPlan { name: c.name.clone(), image: c.image.clone(), reference, source });
    }
    Ok(containers)
}
