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
use crate::tree::Tree;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeSet;

/// Where the registry's storage is in the image: under `/usr`, in the read-only (with verity,
/// verified) root, since the registry only serves what was built and signed (the configuration
/// below refuses pushes), and an update brings the next root's images with it.
pub const STORAGE: &str = "usr/share/airlock/registry";
pub use crate::local_registry::PORT;
/// The system user Debian's docker-registry runs as (owner of its storage).
const REGISTRY_SYSTEM_USER: &str = "docker-registry";

/// The registry's configuration: the preloaded storage, served read-only (the appliance is the
/// enclave's copy of what was built and signed; pushes would make it something else), over TLS
/// with the instance's certificate, to the instance's registry user only. Certificate, key and
/// htpasswd are made on first boot and handed over as systemd credentials
/// (`systemd/docker-registry.service.d/airlock.conf`).
const REGISTRY_CONFIG: &str = "# Written by airlock: serves the images preloaded at build time.
version: 0.1
log:
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: /usr/share/airlock/registry
  maintenance:
    readonly:
      enabled: true
    uploadpurging:
      enabled: false
auth:
  htpasswd:
    realm: airlock
    path: /run/credentials/docker-registry.service/htpasswd
http:
  addr: :5000
  tls:
    certificate: /run/credentials/docker-registry.service/server.crt
    key: /run/credentials/docker-registry.service/server.key
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

/// Numeric fields (`fields`, 0-based) of `name`'s entry in one of the tree's colon-separated
/// account databases (`etc/passwd`, `etc/group`); `None` when it has no such entry.
pub fn account_ids(tree: &Tree, file: &str, name: &str, fields: &[usize]) -> Result<Option<Vec<u32>>> {
    let text = tree.read_required_text(file)?;
    let Some(entry) = text.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f[0] == name) else {
        return Ok(None);
    };
    let ids = fields
        .iter()
        .map(|&i| {
            let v = entry.get(i).copied().unwrap_or("");
            v.parse().with_context(|| format!("/{file}: field {} of {name} is not a number: `{v}`", i + 1))
        })
        .collect::<Result<Vec<u32>>>()?;
    Ok(Some(ids))
}

/// The uid and gid of `user` from the tree's /etc/passwd.
fn user_ids(tree: &Tree, user: &str) -> Result<(u32, u32)> {
    match account_ids(tree, "etc/passwd", user, &[2, 3])?.as_deref() {
        Some(&[uid, gid]) => Ok((uid, gid)),
        _ => bail!("no user {user} in the root filesystem's /etc/passwd (is the docker-registry package installed?)"),
    }
}

/// The `registries.conf` drop-in that sends every preloaded domain to the local registry, so
/// units keep the images' original references and nothing reaches for the internet. podman
/// reaches it over loopback, with TLS whose certificate it does not verify (`insecure`: the
/// certificate names the appliance's public names, and may be the site's own), and with the
/// instance's credentials (`/run/containers/0/auth.json`, written on every boot).
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
    let (uid, gid) = user_ids(root, REGISTRY_SYSTEM_USER)?;
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
    root.put_file("etc/docker/registry/config.yml", 0o644, REGISTRY_CONFIG)?;
    root.put_file("etc/containers/registries.conf.d/50-airlock-mirror.conf", 0o644, registries_conf(&domains))?;
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
