//! The podman image store airlock writes (`oci::containers_storage`), judged by the podman that
//! reads it on the appliance: Debian trixie's own (podman 5.4, containers/storage 1.57), taken
//! from the base OS the demo installs and run in a chroot of it, in a private mount namespace,
//! with the store on an ext4 filesystem airlock wrote, mounted read-only where the appliance has
//! it and configured by the `storage.conf` and pull policy airlock writes. No VM.
//!
//! Fixture images cover what a layer can hold: an uncompressed, a gzip and a zstd layer shared
//! between images, whiteouts, an opaque directory, a whited-out directory that comes back,
//! hard links, symlinks, a setuid file, a fifo, a device, xattrs, owners beyond 65535, an image
//! named by digest only, and one reached through a multi-platform index. podman must:
//! - list every image under its name with its manifest's digest, read-only, and resolve every
//!   form of reference the units may use (tag, digest, tag and digest, the index's digest);
//! - run a container from it (no pull: the policy forbids it, and an image it lacks fails);
//! - show, in a container's root filesystem (the kernel's overlayfs over the store's layers),
//!   exactly the files airlock's own reading of the layers gives;
//! - have written, for the same images pulled into a store of its own, the same layer IDs,
//!   records and per-layer files (whiteouts and opaque markers included) as airlock: the format
//!   is pinned to what this podman writes, not only to what it accepts.
//!
//! The store's bytes are reproducible: written twice, the filesystems are identical.
//!
//! Needs root (mount namespaces, loop mounts, chroot): without it the test fails, saying so.
#![allow(clippy::unwrap_used, reason = "a test stops at the first unexpected error")]

mod support;

use airlock::clock::BuildClock;
use airlock::expansion::ExpansionLimit;
use airlock::ext4::{Ext4Options, required_size, write_ext4};
use airlock::oci::containers_storage::{StoredImage, layer_ids, store_name, write_image_store};
use airlock::oci::{BlobStore, Digest, Image, ImageReference, ImageSource, ReadOptions, SourceKind};
use airlock::region::Region;
use airlock::seed::Seed;
use airlock::tree::{NodeKind, Tree};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use support::*;

const EPOCH: i64 = 1_700_000_000;
/// Where the appliance has the store (`image_store::STORE`).
const STORE: &str = "usr/lib/containers/storage";
/// The files the fixture's first layer takes from the base OS: enough to run `sh` and `cat`.
const FROM_BASE: &[&str] = &[
    "bin",
    "lib",
    "lib64",
    "usr/",
    "usr/bin/",
    "usr/bin/dash",
    "usr/bin/cat",
    "usr/lib/",
    "usr/lib/x86_64-linux-gnu/",
    "usr/lib/x86_64-linux-gnu/libc.so.6",
    "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "usr/lib64/",
    "usr/lib64/ld-linux-x86-64.so.2",
];

/// A tar layer under construction, written with the `tar` crate (GNU headers, PAX for xattrs).
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, mtime: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        h.set_size(0);
        h
    }

    fn dir(&mut self, path: &str, mode: u32, mtime: u64) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0, 0, mtime);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32, owner: (u64, u64), mtime: u64) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, owner.0, owner.1, mtime);
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    fn special(&mut self, path: &str, kind: tar::EntryType, target: &str, dev: (u32, u32)) -> &mut Self {
        let mut h = Self::header(kind, 0o644, 0, 0, 1_600_000_100);
        if kind == tar::EntryType::Symlink || kind == tar::EntryType::Link {
            h.set_mode(0o777);
            self.0.append_link(&mut h, path, target).unwrap();
        } else {
            h.set_device_major(dev.0).unwrap();
            h.set_device_minor(dev.1).unwrap();
            self.0.append_data(&mut h, path, &[][..]).unwrap();
        }
        self
    }

    fn xattr_file(&mut self, path: &str, data: &[u8], name: &str, value: &[u8]) -> &mut Self {
        self.0.append_pax_extensions([(format!("SCHILY.xattr.{name}").as_str(), value)]).unwrap();
        self.file(path, data, 0o644, (0, 0), 1_600_000_200)
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// The first layer: `sh` and `cat` with their libraries from the base OS, and one of every kind
/// of entry.
fn first_layer(base_tar: &Path) -> Vec<u8> {
    let mut layer = Layer::new();
    layer.dir("./", 0o755, 1_600_000_000);
    let mut archive = tar::Archive::new(std::fs::File::open(base_tar).unwrap());
    let mut found = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().trim_start_matches("./").to_string();
        let path = if entry.header().entry_type().is_dir() { format!("{}/", path.trim_end_matches('/')) } else { path };
        if FROM_BASE.contains(&path.as_str()) {
            let mut header = entry.header().clone();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            if header.entry_type().is_symlink() {
                let target = entry.link_name().unwrap().unwrap().into_owned();
                layer.0.append_link(&mut header, &path, target).unwrap();
            } else {
                layer.0.append_data(&mut header, &path, &data[..]).unwrap();
            }
            found.push(path);
        }
    }
    assert_eq!(found.len(), FROM_BASE.len(), "the base OS has {found:?} of {FROM_BASE:?}");
    layer
        .special("usr/bin/sh", tar::EntryType::Symlink, "dash", (0, 0))
        .dir("etc/", 0o755, 1_600_000_001)
        .file("etc/fixture", b"base\n", 0o644, (0, 0), 1_600_000_002)
        .dir("data/", 0o755, 1_600_000_003)
        .file("data/keep", b"keep", 0o644, (0, 0), 1_600_000_004)
        .file("data/gone", b"gone", 0o644, (0, 0), 1_600_000_005)
        .dir("data/opaque/", 0o755, 1_600_000_006)
        .file("data/opaque/a", b"a", 0o644, (0, 0), 1_600_000_007)
        .file("data/opaque/b", b"b", 0o644, (0, 0), 1_600_000_008)
        .dir("data/dir/", 0o755, 1_600_000_009)
        .file("data/dir/x", b"x", 0o644, (0, 0), 1_600_000_010)
        .file("data/hard1", b"linked", 0o644, (0, 0), 1_600_000_011)
        .special("data/hard2", tar::EntryType::Link, "data/hard1", (0, 0))
        .special("data/link", tar::EntryType::Symlink, "../etc/fixture", (0, 0))
        .file("data/suid", b"suid", 0o4755, (0, 0), 1_600_000_012)
        .special("data/fifo", tar::EntryType::Fifo, "", (0, 0))
        .special("data/null", tar::EntryType::Char, "", (1, 3))
        .xattr_file("data/xattr", b"with an attribute", "user.airlock", b"hello")
        .file("data/owned", b"owned", 0o640, (1000, 1001), 1_600_000_013);
    layer.finish()
}

/// The second layer: whiteouts, an opaque directory, a whited-out directory (and a whiteout
/// below it, which says nothing more), a changed file, a high owner.
fn second_layer() -> Vec<u8> {
    let mut layer = Layer::new();
    layer
        .dir("data/", 0o755, 1_600_001_000)
        .file("data/.wh.gone", b"", 0o644, (0, 0), 1_600_001_001)
        .dir("data/opaque/", 0o700, 1_600_001_002)
        .file("data/opaque/.wh..wh..opq", b"", 0o644, (0, 0), 1_600_001_003)
        .file("data/opaque/c", b"c", 0o644, (0, 0), 1_600_001_004)
        .file("data/.wh.dir", b"", 0o644, (0, 0), 1_600_001_005)
        .file("data/dir/.wh.x", b"", 0o644, (0, 0), 1_600_001_006)
        .dir("etc/", 0o755, 1_600_001_007)
        .file("etc/fixture", b"layered\n", 0o644, (0, 0), 1_600_001_008)
        .file("data/high", b"high", 0o600, (100_000, 100_001), 1_600_001_009);
    layer.finish()
}

/// The third layer: declares the root directory, brings a whited-out name back as a directory,
/// changes a file's mode only.
fn third_layer() -> Vec<u8> {
    let mut layer = Layer::new();
    layer
        .dir("./", 0o750, 1_600_002_000)
        .dir("data/", 0o755, 1_600_002_001)
        .dir("data/gone/", 0o711, 1_600_002_002)
        .file("data/gone/again", b"again", 0o644, (0, 0), 1_600_002_003)
        .file("data/keep", b"keep", 0o600, (0, 0), 1_600_002_004);
    layer.finish()
}

/// An OCI image layout under construction: blobs, and `index.json` entries by name.
struct Layout {
    dir: PathBuf,
    entries: Vec<serde_json::Value>,
}

impl Layout {
    fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { dir: dir.to_path_buf(), entries: Vec::new() }
    }

    fn blob(&self, bytes: &[u8]) -> (String, usize) {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::write(self.dir.join("blobs/sha256").join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    }

    /// Adds an image of `layers` (uncompressed tars, each with the media type and compressor
    /// to store it with); returns the manifest descriptor.
    fn image(&self, layers: &[(&[u8], &str)], env: &str) -> serde_json::Value {
        let mut diff_ids = Vec::new();
        let mut descriptors = Vec::new();
        for (tar, compression) in layers {
            diff_ids.push(format!("sha256:{}", hex::encode(Sha256::digest(tar))));
            let (bytes, media_type) = match *compression {
                "gzip" => {
                    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    gz.write_all(tar).unwrap();
                    (gz.finish().unwrap(), "application/vnd.oci.image.layer.v1.tar+gzip")
                }
                "zstd" => (zstd::encode_all(*tar, 3).unwrap(), "application/vnd.oci.image.layer.v1.tar+zstd"),
                _ => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
            };
            let (digest, size) = self.blob(&bytes);
            descriptors.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
        }
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-05-06T07:08:09.120000Z",
            "config": {"Env": [env], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let (config_digest, config_size) = self.blob(config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": descriptors,
        });
        let (digest, size) = self.blob(manifest.to_string().as_bytes());
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size})
    }

    /// An image index with `manifest` as its linux/amd64 entry; returns its descriptor.
    fn index(&self, manifest: &serde_json::Value) -> (serde_json::Value, Vec<u8>) {
        let mut entry = manifest.clone();
        entry["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [entry],
        });
        let bytes = index.to_string().into_bytes();
        let (digest, size) = self.blob(&bytes);
        (
            serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": size}),
            bytes,
        )
    }

    fn name(&mut self, name: &str, descriptor: &serde_json::Value) {
        let mut entry = descriptor.clone();
        entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": name});
        self.entries.push(entry);
    }

    fn finish(&self) {
        let index = serde_json::json!({"schemaVersion": 2, "manifests": self.entries});
        std::fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
    }
}

/// One fixture image: the name airlock stores it under, the references podman must resolve to
/// it, and the image as airlock read it.
struct Fixture {
    name: String,
    references: Vec<String>,
    image: Image,
    index: Option<(Digest, Vec<u8>)>,
    /// Its name in the OCI layout (podman pulls `oci:<layout>:<select>` for the reference
    /// store).
    select: &'static str,
}

fn fixtures(layout_dir: &Path, base_tar: &Path, store: &BlobStore) -> Vec<Fixture> {
    let mut layout = Layout::new(layout_dir);
    let (l1, l2, l3) = (first_layer(base_tar), second_layer(), third_layer());
    let base = layout.image(&[(&l1, "none")], "IMAGE=base");
    let layered = layout.image(&[(&l1, "none"), (&l2, "gzip"), (&l3, "zstd")], "IMAGE=layered");
    let pinned = layout.image(&[(&l1, "none")], "IMAGE=pinned");
    let multi = layout.image(&[(&l1, "none"), (&l2, "gzip")], "IMAGE=multi");
    let (multi_index, multi_index_bytes) = layout.index(&multi);
    layout.name("base", &base);
    layout.name("layered", &layered);
    layout.name("pinned", &pinned);
    layout.name("multi", &multi_index);
    layout.finish();
    let read = |select: &str| {
        let source =
            ImageSource { kind: SourceKind::OciLayout, path: layout_dir.to_path_buf(), select: Some(select.into()) };
        airlock::oci::read_image(&source, store, &ReadOptions::default()).unwrap()
    };
    let digest_of = |d: &serde_json::Value| d["digest"].as_str().unwrap().to_string();
    let (pinned_digest, index_digest) = (digest_of(&pinned), digest_of(&multi_index));
    let fixture = |reference: &str, references: Vec<String>, select: &'static str| {
        let image = read(select);
        let name = store_name(&ImageReference::parse(reference).unwrap());
        Fixture { name, references, image, index: None, select }
    };
    let mut multi = fixture(
        "ex.test/multi:3",
        vec![
            "ex.test/multi:3".into(),
            format!("ex.test/multi@{index_digest}"),
            format!("ex.test/multi:3@{index_digest}"),
        ],
        "multi",
    );
    multi.index = Some((Digest::parse(&index_digest).unwrap(), multi_index_bytes));
    vec![
        fixture("ex.test/base:1", vec!["ex.test/base:1".into()], "base"),
        fixture("ex.test/layered:2", vec!["ex.test/layered:2".into()], "layered"),
        fixture(
            &format!("ex.test/pinned@{pinned_digest}"),
            vec![format!("ex.test/pinned@{pinned_digest}"), format!("ex.test/pinned:4@{pinned_digest}")],
            "pinned",
        ),
        multi,
    ]
}

/// The store (and podman's configuration for it) in a tree of its own, written as ext4.
fn store_filesystem(fixtures: &[Fixture], store: &BlobStore, spool: &Path, out: &Path) -> String {
    let mut tree = Tree::new();
    let stored: Vec<StoredImage<'_>> = fixtures
        .iter()
        .map(|f| StoredImage { image: &f.image, name: f.name.clone(), index: f.index.clone() })
        .collect();
    let summary = write_image_store(&mut tree, STORE, &stored, store, spool, &BuildClock::fixed(EPOCH)).unwrap();
    assert_eq!((summary.images, summary.layers), (4, 3), "four images share three layers");
    for (path, text) in airlock::image_store::podman_configuration() {
        tree.put_file(path, 0o644, text).unwrap();
    }
    let opts = Ext4Options {
        seed: Seed::new("image-store-test"),
        label: "root".into(),
        clock: BuildClock::fixed(EPOCH),
        inode_count: None,
        reserved_percent: 0,
    };
    let size = required_size(&tree, &opts).unwrap() + (8 << 20);
    let file = std::fs::File::create(out).unwrap();
    file.set_len(size).unwrap();
    write_ext4(&tree, &Region::new(&file, 0, size), &opts).unwrap();
    drop(file);
    assert_e2fsck_clean(out);
    sha256(out)
}

/// What podman does, run in the chroot: every result a file in `/out`.
fn podman_script(fixtures: &[Fixture]) -> String {
    let mut s = String::from(
        "set -eu\n\
         export PODMAN_IGNORE_CGROUPSV1_WARNING=1\n\
         p() { podman --cgroup-manager cgroupfs --events-backend none \"$@\"; }\n\
         p images --digests --format json > /out/images.json\n\
         : > /out/resolved\n",
    );
    for f in fixtures {
        for r in &f.references {
            s.push_str(&format!(
                "echo \"{r} $(p image inspect --format '{{{{.Id}}}}' '{r}' 2>&1 | tr '\\n' ' ')\" >> /out/resolved\n"
            ));
        }
    }
    s.push_str(
        "p run --rm --network none --cgroups disabled ex.test/layered:2 /bin/sh -c 'cat /etc/fixture /data/gone/again' > /out/run\n\
         if p run --rm --network none --cgroups disabled ex.test/absent:1 /bin/true > /out/absent 2>&1; then echo ran >> /out/absent; fi\n",
    );
    for (i, f) in fixtures.iter().enumerate() {
        s.push_str(&format!(
            "p create --name view{i} --network none --cgroups disabled '{}' /bin/sh > /dev/null\n\
             m=$(p mount view{i})\n\
             tar --xattrs --xattrs-include='*' --numeric-owner --sort=name -C \"$m\" -cf /out/merged-{i}.tar .\n\
             p umount view{i} > /dev/null\n\
             p rm view{i} > /dev/null\n",
            f.name
        ));
    }
    // The same images pulled by podman into a store of its own, with no additional store.
    s.push_str(
        "printf '[storage]\\ndriver = \"overlay\"\\nrunroot = \"/run/reference\"\\ngraphroot = \"/tmp/reference\"\\n' > /tmp/reference.conf\n",
    );
    for f in fixtures {
        s.push_str(&format!(
            "CONTAINERS_STORAGE_CONF=/tmp/reference.conf p pull -q oci:/fixtures:{} > /dev/null\n",
            f.select
        ));
    }
    s.push_str(
        "cp /tmp/reference/overlay-layers/layers.json /out/reference-layers.json\n\
         cp /tmp/reference/overlay-images/images.json /out/reference-images.json\n\
         for d in /tmp/reference/overlay/*/diff; do id=$(basename $(dirname $d)); \
         tar --xattrs --xattrs-include='*' --numeric-owner --sort=name -C $d -cf /out/reference-$id.tar .; done\n",
    );
    s.push_str(&format!(
        "for d in /{STORE}/overlay/*/diff; do id=$(basename $(dirname $d)); \
         tar --xattrs --xattrs-include='*' --numeric-owner --sort=name -C $d -cf /out/airlock-$id.tar .; done\n\
         cp /{STORE}/overlay-layers/layers.json /out/airlock-layers.json\n\
         cp /{STORE}/overlay-images/images.json /out/airlock-images.json\n\
         touch /out/done\n"
    ));
    s
}

/// Runs `script` in a chroot of `root` in a private mount namespace, with the ext4 image `fs`
/// mounted read-only at `/appliance`, its store where the appliance has it and its podman
/// configuration in `/etc/containers`, `out` at `/out` and the fixtures at `/fixtures`.
fn run_in_chroot(root: &Path, fs: &Path, out: &Path, fixtures: &Path, script: &str) -> std::process::Output {
    std::fs::write(root.join("test-script"), script).unwrap();
    for dir in ["appliance", "out", "fixtures", STORE, "var/lib/airlock/containers/storage"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let (r, fs, out, fixtures) =
        (root.to_str().unwrap(), fs.to_str().unwrap(), out.to_str().unwrap(), fixtures.to_str().unwrap());
    let setup = format!(
        "set -eu\n\
         mount --bind {r} {r}\n\
         mount -o ro,loop {fs} {r}/appliance\n\
         mount --bind {r}/appliance/{STORE} {r}/{STORE}\n\
         mkdir -p {r}/etc/containers/containers.conf.d\n\
         cp {r}/appliance/etc/containers/storage.conf {r}/etc/containers/storage.conf\n\
         cp {r}/appliance/etc/containers/containers.conf.d/* {r}/etc/containers/containers.conf.d/\n\
         mount --bind {out} {r}/out\n\
         mount --bind {fixtures} {r}/fixtures\n\
         mount -t proc proc {r}/proc\n\
         mount --rbind /dev {r}/dev\n\
         mount -t sysfs sys {r}/sys\n\
         mount -t cgroup2 none {r}/sys/fs/cgroup\n\
         mount -t tmpfs tmp {r}/run\n\
         mount -t tmpfs tmp {r}/tmp\n\
         cd {r} && exec chroot . /bin/sh /test-script\n"
    );
    tool("unshare", &["-m", "--propagation", "private", "sh", "-c", &setup])
}

/// One entry of a filesystem view, as tar records it or airlock's tree holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: String,
    mode: u32,
    uid: u64,
    gid: u64,
    /// SHA-256 of a file's bytes, a symlink's target, a device's numbers.
    content: String,
    /// `None` where it is no one's content (a directory no layer declared, a whiteout podman
    /// stamps with the time of the pull).
    mtime: Option<i64>,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// The first path (in order) of the entry's hard-link group.
    link_group: String,
}

fn tar_view(path: &Path) -> BTreeMap<String, Entry> {
    let mut view: BTreeMap<String, Entry> = BTreeMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().trim_start_matches("./").trim_end_matches('/').to_string();
        let name = if name.is_empty() { ".".to_string() } else { name };
        let mut xattrs = BTreeMap::new();
        if let Some(exts) = entry.pax_extensions().unwrap() {
            for ext in exts {
                let ext = ext.unwrap();
                if let Some(k) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(k.to_string(), ext.value_bytes().to_vec());
                }
            }
        }
        let h = entry.header().clone();
        let kind = h.entry_type();
        if kind == tar::EntryType::Link {
            let target = entry.link_name().unwrap().unwrap().to_string_lossy().trim_start_matches("./").to_string();
            let mut linked = view[&target].clone();
            linked.link_group = linked.link_group.clone().min(name.clone());
            view.insert(name, linked);
            continue;
        }
        let (kind, content) = match kind {
            tar::EntryType::Regular => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                ("file", hex::encode(Sha256::digest(&data)))
            }
            tar::EntryType::Directory => ("dir", String::new()),
            tar::EntryType::Symlink => ("symlink", entry.link_name().unwrap().unwrap().to_string_lossy().into_owned()),
            tar::EntryType::Char => {
                ("char", format!("{}:{}", h.device_major().unwrap().unwrap(), h.device_minor().unwrap().unwrap()))
            }
            tar::EntryType::Fifo => ("fifo", String::new()),
            other => panic!("{name}: unexpected {other:?}"),
        };
        let entry = Entry {
            kind: kind.into(),
            mode: h.mode().unwrap() & 0o7777,
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            content,
            mtime: Some(h.mtime().unwrap() as i64),
            xattrs,
            link_group: name.clone(),
        };
        view.insert(name, entry);
    }
    view
}

fn tree_view(tree: &Tree) -> BTreeMap<String, Entry> {
    let mut view = BTreeMap::new();
    let mut groups: BTreeMap<usize, String> = BTreeMap::new();
    let mut reader = tree.content_reader();
    for (path, id) in tree.walk() {
        let path = String::from_utf8(path).unwrap();
        let node = tree.node(id);
        let (kind, content) = match &node.kind {
            NodeKind::File { size, content } => {
                let mut data = vec![0u8; *size as usize];
                reader.read_at(content, *size, 0, &mut data).unwrap();
                ("file", hex::encode(Sha256::digest(&data)))
            }
            NodeKind::Directory { .. } => ("dir", String::new()),
            NodeKind::Symlink { target } => ("symlink", String::from_utf8_lossy(target).into_owned()),
            NodeKind::CharDevice { major, minor } => ("char", format!("{major}:{minor}")),
            NodeKind::Fifo => ("fifo", String::new()),
            other => panic!("{path}: unexpected {other:?}"),
        };
        let group = groups.entry(id.index()).or_insert_with(|| path.clone()).clone();
        let meta = &node.meta;
        view.insert(
            path,
            Entry {
                kind: kind.into(),
                mode: meta.mode,
                uid: meta.uid.into(),
                gid: meta.gid.into(),
                content,
                mtime: (!node.is_implicit()).then_some(meta.mtime.secs),
                xattrs: meta.xattrs.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone())).collect(),
                link_group: group,
            },
        );
    }
    view
}

/// Differences between two views, `mtime: None` on either side matching any time.
fn differences(a: &BTreeMap<String, Entry>, b: &BTreeMap<String, Entry>) -> Vec<String> {
    let mut out = Vec::new();
    for path in a.keys().chain(b.keys()).collect::<std::collections::BTreeSet<_>>() {
        match (a.get(path), b.get(path)) {
            (Some(x), Some(y)) => {
                let mut y = y.clone();
                if x.mtime.is_none() || y.mtime.is_none() {
                    y.mtime = x.mtime;
                }
                if *x != y {
                    out.push(format!("{path}: {x:?} != {y:?}"));
                }
            }
            (x, _) => out.push(format!("{path}: only in {}", if x.is_some() { "the first" } else { "the second" })),
        }
    }
    out
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn trixies_podman_runs_the_images_from_the_store_airlock_writes() {
    let uid = tool_ok("id", &["-u"]);
    assert_eq!(uid.trim(), "0", "this test runs trixie's podman in a chroot with loop mounts: run it as root");
    let spec = repo_root().join("images/demo/appliance.toml");
    let plan = airlock::plan::plan(&spec, &Default::default()).unwrap();
    let cache = airlock::cache::cache_dir().unwrap();
    let base_tar = plan
        .base
        .ensure_tarball(&cache, EPOCH)
        .unwrap_or_else(|e| panic!("building the demo's base OS (it holds the podman under test): {e:#}"));

    let work = tempfile::Builder::new().prefix("airlock-image-store-").tempdir_in("/var/tmp").unwrap();
    let w = work.path();
    let store = BlobStore::new(&w.join("blobs")).unwrap();
    let spool = w.join("spool");
    std::fs::create_dir(&spool).unwrap();
    let fixtures = fixtures(&w.join("layout"), &base_tar, &store);

    // Reproducible: the same images give the same filesystem, byte for byte.
    let fs = w.join("store.ext4");
    let first = store_filesystem(&fixtures, &store, &spool, &fs);
    let again = store_filesystem(&fixtures, &store, &spool, &w.join("again.ext4"));
    assert_eq!(first, again, "the store's filesystem is reproducible");
    std::fs::remove_file(w.join("again.ext4")).unwrap();

    let root = w.join("root");
    std::fs::create_dir(&root).unwrap();
    tool_ok("tar", &["-xf", base_tar.to_str().unwrap(), "-C", root.to_str().unwrap()]);
    assert!(root.join("usr/bin/podman").is_file(), "the demo's base OS carries podman");
    let out = w.join("out");
    std::fs::create_dir(&out).unwrap();
    let ran = run_in_chroot(&root, &fs, &out, &w.join("layout"), &podman_script(&fixtures));
    assert!(
        ran.status.success() && out.join("done").exists(),
        "podman in the chroot failed ({}):\n{}{}",
        ran.status,
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );

    // Every image under its name and its manifest's digest, from the read-only store.
    let listed = read_json(&out.join("images.json"));
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), fixtures.len(), "podman lists one line per image: {listed:#?}");
    for f in &fixtures {
        let line = listed
            .iter()
            .find(|l| l["Id"].as_str() == Some(f.image.config_digest.hex()))
            .unwrap_or_else(|| panic!("podman does not list {}: {listed:#?}", f.name));
        // The digest the reference resolved to, as a pull shows it: the index's, else the manifest's.
        let digest = f.index.as_ref().map_or(&f.image.manifest_digest, |(d, _)| d).to_string();
        assert_eq!(line["Digest"].as_str(), Some(digest.as_str()), "{line:#}");
        assert_eq!(line["ReadOnly"].as_bool(), Some(true), "{line:#}");
        let names: Vec<&str> = line["Names"].as_array().unwrap().iter().filter_map(|n| n.as_str()).collect();
        assert_eq!(names, vec![f.name.as_str()], "{line:#}");
    }
    // Every reference a unit may use finds its image.
    let resolved = std::fs::read_to_string(out.join("resolved")).unwrap();
    for f in &fixtures {
        for r in &f.references {
            let line = resolved.lines().find(|l| l.starts_with(&format!("{r} "))).unwrap();
            assert_eq!(line.trim(), format!("{r} {}", f.image.config_digest.hex()), "{resolved}");
        }
    }
    // A container runs; an image the store lacks is not pulled.
    assert_eq!(std::fs::read_to_string(out.join("run")).unwrap(), "layered\nagain");
    let absent = std::fs::read_to_string(out.join("absent")).unwrap();
    assert!(!absent.contains("ran") && !absent.contains("Trying to pull"), "{absent}");
    assert!(absent.contains("ex.test/absent:1"), "the failure names the image: {absent}");

    // A container's root filesystem (the kernel's overlayfs over the store's layers) is what
    // airlock reads from the same layers.
    for (i, f) in fixtures.iter().enumerate() {
        let mut merged_tree = Tree::new();
        airlock::oci::apply_layers(&mut merged_tree, &f.image, &store, &spool, ExpansionLimit::ratio_only()).unwrap();
        let mut expected = tree_view(&merged_tree);
        let mut seen = tar_view(&out.join(format!("merged-{i}.tar")));
        let root_entry = seen.remove(".").unwrap();
        // The root takes the top layer's `diff` mode, which containers/storage makes 0555
        // whatever the layer declares (the third declares 0750).
        assert_eq!((root_entry.kind.as_str(), root_entry.mode), ("dir", 0o555), "{}", f.name);
        expected.retain(|p, _| p != ".");
        let diffs = differences(&expected, &seen);
        assert!(diffs.is_empty(), "{}: airlock's view and the container's differ:\n{}", f.name, diffs.join("\n"));
    }

    // podman's own store of the same images: the same layer IDs, records and files.
    let ours = read_json(&out.join("airlock-layers.json"));
    let theirs = read_json(&out.join("reference-layers.json"));
    let mut ours: Vec<serde_json::Value> = ours.as_array().unwrap().clone();
    let mut theirs: Vec<serde_json::Value> = theirs.as_array().unwrap().clone();
    for layer in ours.iter_mut().chain(theirs.iter_mut()) {
        layer.as_object_mut().unwrap().remove("created");
    }
    let by_id = |v: &mut Vec<serde_json::Value>| v.sort_by_key(|l| l["id"].as_str().unwrap().to_string());
    by_id(&mut ours);
    by_id(&mut theirs);
    assert_eq!(ours, theirs, "layers.json: airlock's and podman's records differ");
    let expected_ids: Vec<String> =
        layer_ids(&fixtures[1].image).into_iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let written_ids: Vec<&str> = ours.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(written_ids, expected_ids, "the layered image's chain holds every layer");
    let mut layer_diffs = Vec::new();
    for id in &expected_ids {
        let mut ours = tar_view(&out.join(format!("airlock-{id}.tar")));
        let mut theirs = tar_view(&out.join(format!("reference-{id}.tar")));
        for view in [&mut ours, &mut theirs] {
            for (path, e) in view.iter_mut() {
                // podman stamps a whiteout and a `diff` it made itself with the time of the pull.
                if path == "." || (e.kind == "char" && e.content == "0:0") {
                    e.mtime = None;
                }
            }
        }
        let number = fixtures[1].image.layers.iter().zip(layer_ids(&fixtures[1].image)).position(|(_, l)| &l == id);
        layer_diffs.extend(differences(&ours, &theirs).into_iter().map(|d| format!("layer {number:?} {id}: {d}")));
    }
    assert!(layer_diffs.is_empty(), "airlock's layer files and podman's differ:\n{}", layer_diffs.join("\n"));
    let ours = read_json(&out.join("airlock-images.json"));
    let theirs = read_json(&out.join("reference-images.json"));
    for f in &fixtures {
        let find = |v: &serde_json::Value| {
            v.as_array()
                .unwrap()
                .iter()
                .find(|i| i["id"].as_str() == Some(f.image.config_digest.hex()))
                .cloned()
                .unwrap()
        };
        let (mut a, mut b) = (find(&ours), find(&theirs));
        for record in [&mut a, &mut b] {
            let record = record.as_object_mut().unwrap();
            // podman names an image pulled from a layout by the layout, and lists big data in
            // the order it wrote it.
            for key in ["names", "names-history"] {
                record.remove(key);
            }
            if let Some(list) = record.get_mut("big-data-names") {
                list.as_array_mut().unwrap().sort_by_key(|n| n.as_str().unwrap().to_string());
            }
        }
        assert_eq!(a, b, "{}: images.json records differ", f.name);
    }
}
