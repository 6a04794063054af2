//! What the appliance carries besides its OS packages, for the manifest and SBOM: every
//! container image and every mirrored file the plan takes from `appliance.lock`, each checked
//! in the blob store (so the record is of bytes that are in the image), with each mirrored
//! file's package identity from its ecosystem.

use crate::lock::{Lock, LockedBlob};
use crate::lock_check;
use crate::manifest::{Blob, Cli, CliArchive, CliPlugin, ContainerImage, Contents, MirroredPackage};
use crate::mirror::FileKind;
use crate::oci::BlobStore;
use crate::plan::BuildPlan;
use anyhow::{Context, Result};

/// The contents of the plan's appliance as `lock` (whose file had SHA-256 `lock_sha256`) pins
/// them; the blobs must be in `store`.
pub fn record(plan: &BuildPlan, lock: &Lock, lock_sha256: Option<String>, store: &BlobStore) -> Result<Contents> {
    let mut contents = Contents { lock_sha256, ..Contents::default() };
    for c in &plan.containers {
        let entry = lock.entry(&c.name).with_context(|| format!("container `{}` is not in the lock", c.name))?;
        let blob =
            |b: &LockedBlob| Blob { digest: b.digest.to_string(), size: b.size, media_type: b.media_type.clone() };
        let layers: Vec<Blob> = entry.layers.iter().map(blob).collect();
        let size = entry.manifest.size + entry.config.size + entry.layers.iter().map(|l| l.size).sum::<u64>();
        contents.container_images.push(ContainerImage {
            name: c.name.clone(),
            reference: entry.image.clone(),
            image: c.image.clone(),
            source: entry.source.clone(),
            platform: entry.platform.clone(),
            index: entry.index.as_ref().map(blob),
            manifest: blob(&entry.manifest),
            config: blob(&entry.config),
            layers,
            size,
        });
    }
    contents.container_images.sort_by(|a, b| a.name.cmp(&b.name));

    for set in lock_check::verify_mirrors(plan, lock, store)? {
        let ecosystem = set.planned.ecosystem;
        for (file, stored) in set.locked.files.iter().zip(&set.paths) {
            let id = ecosystem
                .identity(file, stored)
                .with_context(|| format!("mirror set `{}`: what is {}", ecosystem.name(), file.path))?;
            let kind = match &id.kind {
                FileKind::Package { .. } => "package",
                FileKind::Metadata => "metadata",
                FileKind::CliArchive { platform, .. } => {
                    contents.cli.archives.push(CliArchive {
                        platform: platform.clone(),
                        version: id.version.clone(),
                        path: file.path.clone(),
                        sha256: file.sha256.clone(),
                    });
                    "cli-archive"
                }
                FileKind::Plugin { kind, plugin, platform, .. } => {
                    contents.cli.plugins.push(CliPlugin {
                        kind: kind.clone(),
                        name: plugin.clone(),
                        version: id.version.clone(),
                        platform: platform.clone(),
                        path: file.path.clone(),
                        sha256: file.sha256.clone(),
                    });
                    "plugin"
                }
            };
            contents.mirrored_packages.push(MirroredPackage {
                ecosystem: ecosystem.name().to_string(),
                purl: id.kind.purl().map(str::to_string),
                name: id.name,
                version: id.version,
                kind: kind.to_string(),
                path: file.path.clone(),
                sha256: file.sha256.clone(),
                size: file.size,
                origin: file.origin.clone(),
            });
        }
    }
    contents.mirrored_packages.sort_by(|a, b| (&a.ecosystem, &a.path).cmp(&(&b.ecosystem, &b.path)));
    let Cli { archives, plugins } = &mut contents.cli;
    archives.sort_by(|a, b| a.path.cmp(&b.path));
    plugins.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(contents)
}
