//! The container images as the appliance runs them: the images the lock pins, unpacked at
//! build time into a read-only podman image store in the root filesystem
//! (`/usr/lib/containers/storage`), which `/etc/containers/storage.conf` names under
//! `additionalimagestores`. podman starts the stack's containers from it on the first boot
//! with nothing to pull or unpack; what podman writes (containers' writable layers, volumes,
//! its database) goes to its own storage on the data partition. Inside the root filesystem the
//! store is covered by whatever protects the root (its verity hash, once the root is verified).
//!
//! podman is also told never to pull an image for a container
//! (`containers.conf.d/50-airlock-pull-never.conf`): an image missing from the store fails
//! the unit at once, naming the image, instead of waiting on a registry.

use crate::base_os::Package;
use crate::clock::BuildClock;
use crate::lock::Lock;
use crate::manifest::{ImageStore, StoreEntry};
use crate::oci::containers_storage::{self, StoredImage};
use crate::oci::{BlobStore, Image};
use crate::partition::STATE_DIR;
use crate::plan::BuildPlan;
use crate::tree::Tree;
use anyhow::{Context, Result, bail};
use std::path::Path;

/// Where the store is in the root filesystem.
pub const STORE: &str = "/usr/lib/containers/storage";
/// podman's own (writable) storage, under the state directory on the data partition.
pub const GRAPHROOT_DIR: &str = "containers/storage";
/// podman's storage configuration (containers/storage 1.57 reads this one file: no drop-ins).
const STORAGE_CONF: &str = "etc/containers/storage.conf";
/// The drop-in that sets podman's pull policy for containers.
const PULL_POLICY_CONF: &str = "etc/containers/containers.conf.d/50-airlock-pull-never.conf";

/// What airlock writes as `storage.conf` when the image's overlays bring none.
fn default_storage_conf() -> String {
    format!(
        "# Written by airlock: images come from the read-only store in the root filesystem, unpacked at\n\
         # build time; containers, their writable layers and volumes live on the data partition, which\n\
         # grows to fill the disk on first boot.\n\
         [storage]\n\
         driver = \"{driver}\"\n\
         runroot = \"/run/containers/storage\"\n\
         graphroot = \"{STATE_DIR}/{GRAPHROOT_DIR}\"\n\
         \n\
         [storage.options]\n\
         additionalimagestores = [\"{STORE}\"]\n",
        driver = containers_storage::DRIVER
    )
}

const PULL_POLICY: &str = "# Written by airlock: containers start from the images the appliance carries (the read-only\n\
# image store named in storage.conf) and never pull one.\n\
[engine]\n\
pull_policy = \"never\"\n";

/// Unpacks `images` (the plan's containers, in order, as the lock pins them) into the store and
/// writes podman's configuration for it; returns the manifest's record of the store. `packages`
/// are the root's installed packages (the podman that reads the store is one of them).
#[expect(clippy::too_many_arguments, reason = "the stage's inputs, each from another stage")]
pub fn unpack_container_images(
    root: &mut Tree,
    plan: &BuildPlan,
    lock: &Lock,
    images: &[Image],
    store: &BlobStore,
    packages: &[Package],
    spool_dir: &Path,
    clock: &BuildClock,
) -> Result<Option<ImageStore>> {
    if plan.containers.is_empty() {
        return Ok(None);
    }
    root.begin_layer();
    let mut stored = Vec::with_capacity(images.len());
    for (c, image) in plan.containers.iter().zip(images) {
        let locked = lock.entry(&c.name).with_context(|| format!("container {} is not in the lock", c.name))?;
        let index = match &locked.index {
            Some(index) => {
                let bytes = store.read_verified(&index.digest, index.size, "image index")?;
                Some((index.digest.clone(), bytes))
            }
            None => None,
        };
        stored.push(StoredImage { image, name: containers_storage::store_name(&c.reference), index });
    }
    let entries = plan
        .containers
        .iter()
        .zip(&stored)
        .map(|(c, s)| StoreEntry {
            name: c.name.clone(),
            listed_as: s.name.clone(),
            id: s.image.config_digest.hex().to_string(),
            digest: s.resolved_digest().to_string(),
        })
        .collect();
    let summary =
        containers_storage::write_image_store(root, STORE.trim_start_matches('/'), &stored, store, spool_dir, clock)
            .context("writing the podman image store")?;
    log::info!(
        "podman image store {STORE}: {} images, {} layers, {} unpacked",
        summary.images,
        summary.layers,
        crate::size::ByteSize(summary.unpacked_bytes)
    );
    check_overlays(plan, root)?;
    for (path, text) in podman_configuration() {
        if path != STORAGE_CONF || root.lookup(STORAGE_CONF).is_none() {
            root.put_file(path, 0o644, text)?;
        }
    }
    Ok(Some(ImageStore {
        path: STORE.to_string(),
        driver: containers_storage::DRIVER.to_string(),
        podman: packages.iter().find(|p| p.name == "podman").map(|p| p.version.clone()),
        layers: summary.layers,
        unpacked_size: summary.unpacked_bytes,
        images: entries,
    }))
}

/// An appliance with containers whose overlays bring their own `storage.conf` must point podman
/// at the store (`airlock build --check` runs this on the overlays alone).
pub fn check_overlays(plan: &BuildPlan, root: &Tree) -> Result<()> {
    if plan.containers.is_empty() {
        return Ok(());
    }
    if let Some(text) = root.read_text(STORAGE_CONF)? {
        check_storage_conf(&text).with_context(|| format!("/{STORAGE_CONF} from the overlays"))?;
    }
    Ok(())
}

/// podman's configuration for the store, as (path in the root filesystem, text): the
/// `storage.conf` airlock writes when the overlays bring none, and the pull policy.
pub fn podman_configuration() -> [(&'static str, String); 2] {
    [(STORAGE_CONF, default_storage_conf()), (PULL_POLICY_CONF, PULL_POLICY.to_string())]
}

/// An image's own `storage.conf` must use the store: the overlay driver (the store's) and the
/// store among `additionalimagestores`.
fn check_storage_conf(text: &str) -> Result<()> {
    let conf: toml::Table = toml::from_str(text).context("not TOML")?;
    let storage = conf.get("storage").and_then(toml::Value::as_table);
    let driver = storage.and_then(|s| s.get("driver")).and_then(toml::Value::as_str);
    if driver != Some(containers_storage::DRIVER) {
        bail!(
            "`storage.driver` is {}, but the image store airlock writes is for `{}`",
            driver.map_or("not set".to_string(), |d| format!("`{d}`")),
            containers_storage::DRIVER
        );
    }
    let stores: Vec<&str> = storage
        .and_then(|s| s.get("options"))
        .and_then(toml::Value::as_table)
        .and_then(|o| o.get("additionalimagestores"))
        .and_then(toml::Value::as_array)
        .map(|a| a.iter().filter_map(toml::Value::as_str).collect())
        .unwrap_or_default();
    if !stores.contains(&STORE) {
        bail!(
            "`storage.options.additionalimagestores` must name {STORE}, where airlock puts the container images \
             (it lists {stores:?}); or leave storage.conf out and airlock writes it"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_storage_conf_passes_its_own_check() {
        check_storage_conf(&default_storage_conf()).unwrap();
        assert!(default_storage_conf().contains("graphroot = \"/var/lib/airlock/containers/storage\""));
    }

    #[test]
    fn a_storage_conf_without_the_store_or_with_another_driver_is_refused() {
        let without = "[storage]\ndriver = \"overlay\"\ngraphroot = \"/var/lib/x\"\n";
        let err = format!("{:#}", check_storage_conf(without).unwrap_err());
        assert!(err.contains("must name /usr/lib/containers/storage"), "{err}");
        let vfs = "[storage]\ndriver = \"vfs\"\n[storage.options]\nadditionalimagestores = [\"/usr/lib/containers/storage\"]\n";
        let err = format!("{:#}", check_storage_conf(vfs).unwrap_err());
        assert!(err.contains("`storage.driver` is `vfs`"), "{err}");
        assert!(format!("{:#}", check_storage_conf("[storage").unwrap_err()).contains("not TOML"));
    }
}
