//! Preloading the spec's container images into the appliance's own registry: the images the
//! lock pins are written, at build time, as the distribution registry's storage in the root
//! filesystem, so the registry serves every one of them the moment it starts and nothing is
//! imported at boot. podman on the appliance reaches them through a `registries.conf` mirror
//! under their original references.

use crate::clock::BuildClock;
use crate::oci::registry_names::{RepositoryName, Tag};
use crate::oci::registry_storage::{Preload, StorageOwner, write_registry_storage};
use crate::oci::{BlobStore, Image};
use crate::partition::Role;
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

/// What podman's store on the data partition needs beyond the unpacked layers: its metadata,
/// and ext4's journal and reserved blocks of a partition that has not grown yet.
const DATA_OVERHEAD_PERCENT: u64 = 15;

/// The uncompressed size of a layer blob, read from its end or header without decompressing:
/// gzip's ISIZE trailer (the size modulo 4 GiB, so never trusted below the compressed size),
/// zstd's frame content size when the frame records it, else by decoding.
pub fn unpacked_size(store: &BlobStore, layer: &crate::oci::Layer) -> Result<u64> {
    use crate::oci::media_type::Compression;
    use std::io::{Read, Seek, SeekFrom};
    let path = store.path(&layer.digest);
    let mut file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let size = match layer.compression {
        Compression::None => layer.size,
        Compression::Gzip if layer.size >= 18 => {
            let mut trailer = [0u8; 4];
            file.seek(SeekFrom::End(-4))
                .and_then(|_| file.read_exact(&mut trailer))
                .with_context(|| format!("reading the gzip trailer of {}", path.display()))?;
            let isize = u64::from(u32::from_le_bytes(trailer));
            let mut size = isize;
            // Sizes of 4 GiB and more wrap; the smallest consistent value is at least the blob.
            while size < layer.size {
                size += 1 << 32;
            }
            size
        }
        Compression::Zstd => {
            let mut header = [0u8; 18];
            let n = file.read(&mut header).with_context(|| format!("reading {}", path.display()))?;
            match zstd::zstd_safe::get_frame_content_size(&header[..n]) {
                Ok(Some(size)) => size.max(layer.size),
                // Streamed frames do not record it: count it (zstd decodes at about 1 GB/s).
                _ => {
                    file.seek(SeekFrom::Start(0))?;
                    let mut decoder = zstd::stream::read::Decoder::new(file)
                        .with_context(|| format!("reading {}", path.display()))?;
                    std::io::copy(&mut decoder, &mut std::io::sink())
                        .with_context(|| format!("decompressing {}", path.display()))?
                }
            }
        }
        Compression::Gzip => layer.size,
    };
    Ok(size)
}

/// Podman pulls the preloaded images into its store on the data partition at first boot,
/// before the partition grows: refuses a data partition too small to hold them unpacked.
pub fn check_data_capacity(plan: &BuildPlan, images: &[Image], store: &BlobStore) -> Result<()> {
    let mut seen = BTreeSet::new();
    let mut unpacked = 0u64;
    for layer in images.iter().flat_map(|i| &i.layers) {
        if seen.insert(layer.diff_id.clone()) {
            // Saturating: a layer's recorded size is the image author's to state.
            unpacked = unpacked.saturating_add(unpacked_size(store, layer)?);
        }
    }
    let need =
        unpacked.saturating_add(unpacked / 100 * DATA_OVERHEAD_PERCENT + unpacked % 100 * DATA_OVERHEAD_PERCENT / 100);
    let data = plan.disk.size_of(Role::Data).context("the disk has no data partition for podman's storage")?;
    log::info!(
        "container images unpacked: {} ({} with overhead) for a {} data partition",
        crate::size::ByteSize(unpacked),
        crate::size::ByteSize(need),
        crate::size::ByteSize(data)
    );
    if need > data {
        anyhow::bail!(
            "disk.data_size {} cannot hold the container images unpacked ({} in {} layers, {} with podman's and ext4's \
             overhead), which podman pulls onto the data partition on first boot before it grows; raise disk.data_size",
            crate::size::ByteSize(data),
            crate::size::ByteSize(unpacked),
            seen.len(),
            crate::size::ByteSize(need)
        );
    }
    Ok(())
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
    check_data_capacity(plan, images, store)?;
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

    fn layer_of(
        store: &BlobStore,
        bytes: &[u8],
        compression: crate::oci::media_type::Compression,
    ) -> crate::oci::Layer {
        let digest = store.put_bytes(bytes, "layer").unwrap();
        crate::oci::Layer {
            diff_id: digest.clone(),
            digest,
            size: bytes.len() as u64,
            media_type: String::new(),
            compression,
        }
    }

    #[test]
    fn unpacked_sizes_come_from_trailers_and_headers() {
        use crate::oci::media_type::Compression;
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path()).unwrap();
        let data = vec![7u8; 300_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 10_000);
        assert_eq!(unpacked_size(&store, &layer_of(&store, &gz, Compression::Gzip)).unwrap(), 300_000);
        // A streamed frame (no content size in its header) and one with it.
        let zst = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(unpacked_size(&store, &layer_of(&store, &zst, Compression::Zstd)).unwrap(), 300_000);
        let zst = zstd::bulk::compress(&data[..9999], 3).unwrap();
        assert_eq!(unpacked_size(&store, &layer_of(&store, &zst, Compression::Zstd)).unwrap(), 9999);
        assert_eq!(unpacked_size(&store, &layer_of(&store, &data[..1000], Compression::None)).unwrap(), 1000);
    }

    #[test]
    fn a_data_partition_too_small_for_the_unpacked_images_is_refused() {
        use crate::oci::media_type::Compression;
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path()).unwrap();
        // 40 MiB of zeros gzip to a few KiB: the compressed size says nothing.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&vec![0u8; 40 << 20]).unwrap();
        let layer = layer_of(&store, &gz.finish().unwrap(), Compression::Gzip);
        let image = |layers: Vec<crate::oci::Layer>| Image {
            reference: "t".into(),
            manifest_digest: layer.digest.clone(),
            manifest_media_type: String::new(),
            manifest_bytes: Vec::new(),
            config_digest: layer.digest.clone(),
            config_size: 0,
            layers,
            platform: crate::oci::Platform::linux_amd64(),
        };
        let text = "name = \"t\"\nversion = \"1\"\n[os]\nsuite = \"trixie\"\nmirror = \"http://m.example/debian\"\n\
                    hostname = \"t\"\n[disk]\nsize = \"2GiB\"\ndata_size = \"DATA\"\n";
        let plan = |data: &str| {
            let spec = crate::spec::Spec::parse(&text.replace("DATA", data), "t.toml").unwrap();
            crate::plan::validate(spec, std::path::Path::new("."), "t.toml", &Default::default()).unwrap()
        };
        // Two images sharing the layer need it once.
        let images = [image(vec![layer.clone()]), image(vec![layer.clone()])];
        let err = check_data_capacity(&plan("32MiB"), &images, &store).unwrap_err().to_string();
        assert!(
            err.contains("disk.data_size 32MiB cannot hold the container images unpacked (40MiB in 1 layers"),
            "{err}"
        );
        check_data_capacity(&plan("64MiB"), &images, &store).unwrap();
    }
}
