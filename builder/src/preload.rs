//! Preloading the spec's container images into the appliance's own registry: the images the
//! lock pins are written, at build time, as the distribution registry's storage in the root
//! filesystem, so the registry serves every one of them the moment it starts and nothing is
//! imported at boot. podman on the appliance reaches them through a `registries.conf` mirror
//! under their original references.

use crate::clock::BuildClock;
use crate::oci::registry_names::{RepositoryName, Tag};
use crate::oci::registry_storage::{Preload, StorageOwner, write_registry_storage};
use crate::oci::{BlobStore, Image};
use crate::plan::BuildPlan;
use crate::tree::{Content, Meta, NodeKind, Tree};
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeSet;

/// Where Debian's docker-registry keeps its storage.
pub const STORAGE: &str = "var/lib/docker-registry";
/// The registry's port on the appliance.
pub const PORT: u16 = 5000;
const REGISTRY_USER: &str = "docker-registry";

/// The registry's configuration: the preloaded storage, served read-only (the appliance is the
/// enclave's copy of what was built and signed; pushes would make it something else) and
/// without authentication until first boot provisions credentials and TLS.
const REGISTRY_CONFIG: &str = "# Written by airlock: serves the images preloaded at build time.
version: 0.1
log:
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: /var/lib/docker-registry
  maintenance:
    readonly:
      enabled: true
    uploadpurging:
      enabled: false
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
";

/// The repository an image is served under: its domain and path, so that images of different
/// registries never collide (`docker.io/library/mysql`, `demo.airlock.internal/db`).
pub fn repository(image: &crate::oci::ImageReference) -> Result<RepositoryName> {
    let name = format!("{}/{}", image.domain(), image.path());
    RepositoryName::parse(&name).map_err(|e| anyhow!("registry repository `{name}`: {e}"))
}

/// The tag an image is served under: its own, or a name derived from its digest when the
/// reference pins only a digest (pulls by digest work either way).
fn tag(image: &crate::oci::ImageReference, manifest: &crate::oci::Digest) -> Result<Tag> {
    let text = match image.tag() {
        Some(t) => t.to_string(),
        None => format!("pinned-{}", &manifest.hex()[..16]),
    };
    Tag::parse(&text).map_err(|e| anyhow!("registry tag `{text}`: {e}"))
}

fn read_text(tree: &Tree, path: &str) -> Result<String> {
    let id = tree.lookup(path).with_context(|| format!("the root filesystem has no /{path}"))?;
    let NodeKind::File { size, content } = &tree.node(id).kind else { bail!("/{path} is not a regular file") };
    let mut buf = vec![0u8; usize::try_from(*size).context("file too large")?];
    tree.content_reader().read_at(content, *size, 0, &mut buf)?;
    String::from_utf8(buf).with_context(|| format!("/{path} is not UTF-8"))
}

/// The uid and gid of `user` from the tree's /etc/passwd.
fn user_ids(tree: &Tree, user: &str) -> Result<(u32, u32)> {
    let passwd = read_text(tree, "etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == user {
            let uid = f[2].parse().with_context(|| format!("uid of {user} in /etc/passwd"))?;
            let gid = f[3].parse().with_context(|| format!("gid of {user} in /etc/passwd"))?;
            return Ok((uid, gid));
        }
    }
    bail!("no user {user} in the root filesystem's /etc/passwd (is the docker-registry package installed?)")
}

fn put(tree: &mut Tree, path: &str, text: String) -> Result<()> {
    let bytes = text.into_bytes();
    tree.insert(
        path.as_bytes(),
        Meta::root(0o644),
        NodeKind::File { size: bytes.len() as u64, content: Content::Bytes(bytes.into()) },
    )
    .map_err(|p| anyhow!("writing {path}: {p}"))?;
    Ok(())
}

/// The `registries.conf` drop-in that sends every preloaded domain to the local registry, so
/// units keep the images' original references and nothing reaches for the internet.
pub fn registries_conf(domains: &BTreeSet<String>) -> String {
    let mut s =
        String::from("# Written by airlock: images of these registries come from the appliance's own registry.\n");
    for d in domains {
        s.push_str(&format!(
            "\n[[registry]]\nprefix = \"{d}\"\nlocation = \"{d}\"\n\n[[registry.mirror]]\nlocation = \"127.0.0.1:{PORT}/{d}\"\ninsecure = true\n"
        ));
    }
    s
}

/// Writes the registry storage for `images` (in the spec's order), the registry's
/// configuration and the mirror configuration into `root`.
pub fn preload_images(
    root: &mut Tree,
    plan: &BuildPlan,
    images: &[Image],
    store: &BlobStore,
    clock: &BuildClock,
) -> Result<()> {
    if plan.containers.is_empty() {
        return Ok(());
    }
    root.begin_layer();
    let (uid, gid) = user_ids(root, REGISTRY_USER)?;
    let mut preloads = Vec::new();
    let mut domains = BTreeSet::new();
    for (c, image) in plan.containers.iter().zip(images) {
        domains.insert(c.reference.domain().to_string());
        preloads.push(Preload {
            image,
            repository: repository(&c.reference)?,
            tag: tag(&c.reference, &image.manifest_digest)?,
        });
    }
    let owner = StorageOwner { uid, gid, mtime: clock.epoch() };
    write_registry_storage(root, STORAGE, &preloads, store, &owner).context("writing the registry's storage")?;
    put(root, "etc/docker/registry/config.yml", REGISTRY_CONFIG.to_string())?;
    put(root, "etc/containers/registries.conf.d/50-airlock-mirror.conf", registries_conf(&domains))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_every_domain_to_the_local_registry() {
        let domains: BTreeSet<String> = ["docker.io".to_string(), "demo.airlock.internal".to_string()].into();
        let conf = registries_conf(&domains);
        assert!(conf.contains("prefix = \"docker.io\"\nlocation = \"docker.io\""), "{conf}");
        assert!(conf.contains("location = \"127.0.0.1:5000/demo.airlock.internal\"\ninsecure = true"), "{conf}");
    }

    #[test]
    fn repositories_keep_domain_and_path() {
        let r = crate::oci::ImageReference::parse("mysql:8.0").unwrap();
        assert_eq!(repository(&r).unwrap().to_string(), "docker.io/library/mysql");
    }
}
