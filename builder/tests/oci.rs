//! Container images end to end, judged by tools nobody here wrote.
//!
//! A small three-layer image (one layer with whiteouts, one with a hard link into a lower layer)
//! is built here as an OCI layout; skopeo converts it to an OCI archive and a docker-archive.
//! All three must read to the same root filesystem tree. The registry storage airlock writes for
//! them is then served by the real registry (Debian's `docker-registry`), and skopeo must inspect
//! and pull every image from it. Hostile inputs must each be refused with their own error.
//!
//! `skopeo` and `docker-registry` are required: a missing tool fails the test, it never skips.

#![allow(clippy::unwrap_used, reason = "a test should stop at the first unexpected error")]

mod support;

use airlock::expansion::ExpansionLimit;

use airlock::oci::media_type::{self, Compression};
use airlock::oci::{
    BlobStore, Digest, Image, ImageError, ImageSource, Limits, Preload, ReadOptions, RepositoryName, SourceKind,
    StorageOwner, Tag, apply_layers, read_image, write_registry_storage,
};
use airlock::tree::{NodeKind, Timestamp, Tree};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::registry::{DockerRegistry, free_port, skopeo};

const MTIME: u64 = 1_700_000_000;

// ---------------------------------------------------------------------------------------------
// Building layer tars and OCI layouts.

/// One entry of a fixture layer.
enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    Owned(&'a str, u32, u32, &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    /// A raw name written straight into the header, bypassing the tar crate's path checks.
    RawName(&'a [u8], &'a [u8]),
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn layer_tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            Entry::Dir(p, mode) => {
                let mut h = header(tar::EntryType::Directory, *mode, 0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Entry::File(p, mode, data) => {
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Entry::Owned(p, mode, id, data) => {
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                h.set_uid((*id).into());
                h.set_gid((*id).into());
                b.append_data(&mut h, p, *data).unwrap();
            }
            Entry::Symlink(p, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            Entry::HardLink(p, target) => {
                let mut h = header(tar::EntryType::Link, 0o644, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            Entry::RawName(name, data) => {
                let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
                h.as_old_mut().name[..name.len()].copy_from_slice(name);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// The fixture image's three layers, uncompressed.
fn fixture_layers() -> Vec<Vec<u8>> {
    vec![
        layer_tar(&[
            Entry::Dir("etc", 0o755),
            Entry::File("etc/hostname", 0o644, b"base\n"),
            Entry::File("etc/motd", 0o644, b"hello\n"),
            Entry::Dir("usr", 0o755),
            Entry::Dir("usr/bin", 0o755),
            Entry::File("usr/bin/app", 0o755, b"#!/bin/sh\necho app\n"),
            Entry::Symlink("bin", "usr/bin"),
            Entry::Dir("var", 0o755),
            Entry::Dir("var/cache", 0o755),
            Entry::File("var/cache/old", 0o644, b"stale"),
            Entry::Dir("tmp", 0o1777),
        ]),
        layer_tar(&[
            Entry::File("etc/hostname", 0o644, b"demo\n"),
            Entry::File("etc/.wh.motd", 0o644, b""),
            Entry::Dir("srv", 0o750),
            Entry::Owned("srv/data.txt", 0o600, 1000, b"data"),
        ]),
        layer_tar(&[
            Entry::File("var/cache/.wh..wh..opq", 0o644, b""),
            Entry::File("var/cache/new", 0o644, b"fresh"),
            Entry::HardLink("usr/bin/app2", "usr/bin/app"),
        ]),
    ]
}

fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
    }
}

fn write_blob(dir: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of_bytes(bytes);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(d.hex()), bytes).unwrap();
    d
}

fn config_json(architecture: &str, diff_ids: &[Digest]) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        concat!(
            r#"{{"created":"2023-11-14T22:13:20Z","architecture":"{}","os":"linux","#,
            r#""config":{{"Env":["PATH=/usr/bin"],"Cmd":["/usr/bin/app"]}},"#,
            r#""rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#
        ),
        architecture,
        ids.join(",")
    )
    .into_bytes()
}

/// An image manifest as compact JSON in Go's field order (what Go tools write).
fn manifest_json(config: (&Digest, usize), layers: &[(String, Digest, usize)]) -> Vec<u8> {
    let layers: Vec<String> =
        layers.iter().map(|(mt, d, size)| format!(r#"{{"mediaType":"{mt}","digest":"{d}","size":{size}}}"#)).collect();
    format!(
        concat!(
            r#"{{"schemaVersion":2,"mediaType":"{}","#,
            r#""config":{{"mediaType":"{}","digest":"{}","size":{}}},"layers":[{}]}}"#
        ),
        media_type::OCI_MANIFEST,
        media_type::OCI_CONFIG,
        config.0,
        config.1,
        layers.join(",")
    )
    .into_bytes()
}

fn write_index_json(dir: &Path, manifests: Value) {
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": manifests});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Writes the fixture image as an OCI layout at `dir` (named `1`) with each layer compressed
/// as given; returns the manifest digest.
fn write_layout(dir: &Path, compression: [Compression; 3]) -> Digest {
    let tars = fixture_layers();
    let diff_ids: Vec<Digest> = tars.iter().map(|t| Digest::of_bytes(t)).collect();
    let mut layers = Vec::new();
    for (tar, c) in tars.iter().zip(compression) {
        let blob = compress(tar, c);
        let d = write_blob(dir, &blob);
        layers.push((c.oci_layer_media_type().to_string(), d, blob.len()));
    }
    let config = config_json("amd64", &diff_ids);
    let config_digest = write_blob(dir, &config);
    let manifest = manifest_json((&config_digest, config.len()), &layers);
    let manifest_digest = write_blob(dir, &manifest);
    write_index_json(
        dir,
        json!([{
            "mediaType": media_type::OCI_MANIFEST,
            "digest": manifest_digest.to_string(),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "1"}
        }]),
    );
    manifest_digest
}

/// Gzip, plain and gzip again: skopeo cannot write zstd layers into a docker-archive, so zstd is
/// tested on the OCI layout alone.
const MIXED: [Compression; 3] = [Compression::Gzip, Compression::None, Compression::Gzip];
const PLAIN: [Compression; 3] = [Compression::None; 3];

// ---------------------------------------------------------------------------------------------
// External tools.

/// The fixture as an OCI layout plus skopeo's OCI archive and docker-archive of it.
struct Sources {
    _dir: tempfile::TempDir,
    layout: ImageSource,
    oci_archive: ImageSource,
    docker_archive: ImageSource,
}

fn sources(compression: [Compression; 3]) -> Sources {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    write_layout(&layout, compression);
    let oci_tar = dir.path().join("image-oci.tar");
    let docker_tar = dir.path().join("image-docker.tar");
    let from = format!("oci:{}:1", layout.display());
    // Without the flag skopeo gzips uncompressed layers on the way into an OCI archive; with it
    // (and --preserve-digests, which fails if anything would change) the archive holds the
    // layout's exact manifest.
    skopeo(&[
        "copy",
        "--dest-oci-accept-uncompressed-layers",
        "--preserve-digests",
        &from,
        &format!("oci-archive:{}:1", oci_tar.display()),
    ]);
    skopeo(&["copy", &from, &format!("docker-archive:{}:localhost/demo/api:1", docker_tar.display())]);
    let source = |kind, path: PathBuf, select: &str| ImageSource { kind, path, select: Some(select.to_string()) };
    Sources {
        layout: source(SourceKind::OciLayout, layout, "1"),
        oci_archive: source(SourceKind::OciArchive, oci_tar, "1"),
        docker_archive: source(SourceKind::DockerArchive, docker_tar, "localhost/demo/api:1"),
        _dir: dir,
    }
}

// ---------------------------------------------------------------------------------------------
// Looking at trees.

/// Every path of a tree with its type, mode, owner and content (or link target).
fn snapshot(tree: &Tree) -> BTreeMap<String, String> {
    let mut reader = tree.content_reader();
    let mut out = BTreeMap::new();
    for (path, id) in tree.walk() {
        let node = tree.node(id);
        let what = match &node.kind {
            NodeKind::File { size, content } => {
                let mut bytes = Vec::new();
                reader.open(content, *size).read_to_end(&mut bytes).unwrap();
                format!("file {:?}", String::from_utf8_lossy(&bytes))
            }
            NodeKind::Symlink { target } => {
                format!("symlink -> {}", String::from_utf8_lossy(target))
            }
            other => other.describe().to_string(),
        };
        out.insert(
            String::from_utf8(path).unwrap(),
            format!("{what} {:o} {}:{}", node.meta.mode, node.meta.uid, node.meta.gid),
        );
    }
    out
}

fn unpack(image: &Image, store: &BlobStore, spool: &Path) -> Tree {
    let mut tree = Tree::new();
    apply_layers(&mut tree, image, store, spool, ExpansionLimit::ratio_only()).unwrap();
    tree
}

/// Writes a tree out as a host directory (modes kept, owners not: the test is not root-only).
fn materialize(tree: &Tree, dest: &Path) {
    let mut reader = tree.content_reader();
    for (path, id) in tree.walk() {
        let host = dest.join(String::from_utf8(path).unwrap());
        let node = tree.node(id);
        match &node.kind {
            NodeKind::Directory { .. } => fs::create_dir_all(&host).unwrap(),
            NodeKind::File { size, content } => {
                let mut out = fs::File::create(&host).unwrap();
                std::io::copy(&mut reader.open(content, *size), &mut out).unwrap();
            }
            NodeKind::Symlink { target } => {
                std::os::unix::fs::symlink(String::from_utf8(target.clone()).unwrap(), &host).unwrap();
                continue;
            }
            other => panic!("unexpected {} in registry storage", other.describe()),
        }
        fs::set_permissions(&host, fs::Permissions::from_mode(node.meta.mode)).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The three sources agree.

#[test]
fn three_sources_read_to_the_same_tree() {
    let s = sources(MIXED);
    let work = tempfile::tempdir().unwrap();
    let opts = ReadOptions::default();

    let mut snapshots = Vec::new();
    let mut images = Vec::new();
    // A store per source, so every source is read in full (a store that already holds a blob
    // does not read it again).
    let stores: Vec<BlobStore> =
        (0..3).map(|i| BlobStore::new(&work.path().join(format!("store-{i}"))).unwrap()).collect();
    for (source, store) in [&s.layout, &s.oci_archive, &s.docker_archive].into_iter().zip(&stores) {
        let image = read_image(source, store, &opts).unwrap();
        assert_eq!(image.layers.len(), 3, "{}", image.reference);
        snapshots.push(snapshot(&unpack(&image, store, work.path())));
        images.push(image);
    }
    let [layout, oci_archive, docker_archive] = &images[..] else { unreachable!() };
    // skopeo copies an OCI layout to an OCI archive unchanged.
    assert_eq!(oci_archive.manifest_bytes, layout.manifest_bytes);
    // A docker-archive keeps the layer contents and config, not the compression.
    assert_eq!(docker_archive.diff_ids(), layout.diff_ids());
    assert_eq!(docker_archive.config_digest, layout.config_digest);
    assert!(docker_archive.layers.iter().all(|l| l.compression == Compression::None && l.digest == l.diff_id));

    assert_eq!(snapshots[0], snapshots[1], "OCI layout vs OCI archive");
    assert_eq!(snapshots[0], snapshots[2], "OCI layout vs docker-archive");

    let expected: BTreeMap<String, String> = [
        ("bin", "symlink -> usr/bin 777 0:0"),
        ("etc", "directory 755 0:0"),
        ("etc/hostname", "file \"demo\\n\" 644 0:0"),
        ("srv", "directory 750 0:0"),
        ("srv/data.txt", "file \"data\" 600 1000:1000"),
        ("tmp", "directory 1777 0:0"),
        ("usr", "directory 755 0:0"),
        ("usr/bin", "directory 755 0:0"),
        ("usr/bin/app", "file \"#!/bin/sh\\necho app\\n\" 755 0:0"),
        ("usr/bin/app2", "file \"#!/bin/sh\\necho app\\n\" 755 0:0"),
        ("var", "directory 755 0:0"),
        ("var/cache", "directory 755 0:0"),
        ("var/cache/new", "file \"fresh\" 644 0:0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(snapshots[0], expected);
}

#[test]
fn uncompressed_image_has_one_registry_layout_from_every_source() {
    let s = sources(PLAIN);
    let work = tempfile::tempdir().unwrap();
    let store = BlobStore::new(work.path()).unwrap();
    let opts = ReadOptions::default();
    let digests: Vec<Digest> = [&s.layout, &s.oci_archive, &s.docker_archive]
        .into_iter()
        .map(|src| read_image(src, &store, &opts).unwrap().manifest_digest)
        .collect();
    assert_eq!(digests[0], digests[1]);
    assert_eq!(digests[0], digests[2], "the manifest made for a docker-archive should match the OCI one byte for byte");
}

#[test]
fn zstd_layers_apply_like_plain_ones() {
    let work = tempfile::tempdir().unwrap();
    let store = BlobStore::new(&work.path().join("store")).unwrap();
    let mut snapshots = Vec::new();
    for (name, compression) in [("plain", PLAIN), ("zstd", [Compression::Zstd, Compression::None, Compression::Zstd])] {
        let dir = work.path().join(name);
        write_layout(&dir, compression);
        let image = read_image(&layout_source(&dir), &store, &ReadOptions::default()).unwrap();
        assert_eq!(image.layers[0].compression, compression[0]);
        snapshots.push(snapshot(&unpack(&image, &store, work.path())));
    }
    assert_eq!(snapshots[0], snapshots[1]);
}

// ---------------------------------------------------------------------------------------------
// The real registry serves what airlock wrote.

/// Debian's registry serving a storage folder on 127.0.0.1.
struct Registry(DockerRegistry);

impl Registry {
    fn start(storage: &Path, work: &Path) -> Registry {
        Registry(DockerRegistry::start(storage, work, "127.0.0.1", free_port("127.0.0.1"), None))
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.0.try_get(path).unwrap()
    }

    fn docker_ref(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.0.host())
    }
}

#[test]
fn registry_serves_the_storage_airlock_wrote() {
    let s = sources(MIXED);
    let work = tempfile::tempdir().unwrap();
    let store = BlobStore::new(&work.path().join("store")).unwrap();
    let opts = ReadOptions::default();
    let from_layout = read_image(&s.layout, &store, &opts).unwrap();
    let from_docker = read_image(&s.docker_archive, &store, &opts).unwrap();

    let preload = |image, repo: &str, tag: &str| Preload {
        image,
        repository: RepositoryName::parse(repo).unwrap(),
        tag: Tag::parse(tag).unwrap(),
    };
    let preloads = [
        preload(&from_layout, "demo/api", "1"),
        preload(&from_layout, "demo/api", "latest"),
        preload(&from_docker, "demo/worker", "2"),
    ];
    let owner = StorageOwner { uid: 123, gid: 456, mtime: Timestamp::from_secs(MTIME as i64) };
    let mut tree = Tree::new();
    write_registry_storage(&mut tree, "var/lib/docker-registry", &preloads, &store, &owner).unwrap();

    // Ownership, and blob data pointing into the store rather than copied.
    for (path, id) in tree.walk() {
        let node = tree.node(id);
        let path = String::from_utf8(path).unwrap();
        if path.starts_with("var/lib/docker-registry") {
            assert_eq!((node.meta.uid, node.meta.gid), (123, 456), "{path}");
        }
        if path.ends_with("/data") {
            assert!(
                matches!(&node.kind, NodeKind::File { content: airlock::tree::Content::Host(p), .. } if p.starts_with(store.dir())),
                "{path} should point into the blob store"
            );
        }
    }
    let link = |p: &str| {
        let id = tree
            .lookup(&format!("var/lib/docker-registry/docker/registry/v2/{p}"))
            .unwrap_or_else(|| panic!("{p} missing"));
        snapshot_file(&tree, id)
    };
    let m = &from_layout.manifest_digest;
    assert_eq!(link("repositories/demo/api/_manifests/tags/1/current/link"), m.to_string());
    assert_eq!(
        link(&format!("repositories/demo/api/_manifests/tags/latest/index/sha256/{}/link", m.hex())),
        m.to_string()
    );

    let root = work.path().join("root");
    materialize(&tree, &root);
    let registry = Registry::start(&root.join("var/lib/docker-registry"), work.path());

    let (status, catalog) = registry.get("/v2/_catalog");
    assert_eq!(status, 200, "{catalog}");
    let catalog: Value = serde_json::from_str(&catalog).unwrap();
    assert_eq!(catalog["repositories"], json!(["demo/api", "demo/worker"]), "{catalog}");

    for (image, name) in
        [(&from_layout, "demo/api:1"), (&from_layout, "demo/api:latest"), (&from_docker, "demo/worker:2")]
    {
        let inspect: Value =
            serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", &registry.docker_ref(name)])).unwrap();
        assert_eq!(inspect["Digest"], json!(image.manifest_digest.to_string()), "{name}");
        assert_eq!(inspect["Architecture"], json!("amd64"), "{name}");
        let layers: Vec<String> = image.layers.iter().map(|l| l.digest.to_string()).collect();
        assert_eq!(inspect["Layers"], json!(layers), "{name}");

        // Pull every blob (skopeo checks each digest) and read the copy back with airlock.
        let pulled = work.path().join(format!("pulled-{}", name.replace([':', '/'], "-")));
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            "--dest-oci-accept-uncompressed-layers",
            "--preserve-digests",
            &registry.docker_ref(name),
            &format!("oci:{}:x", pulled.display()),
        ]);
        for blob in image.layers.iter().map(|l| &l.digest).chain([&image.config_digest]) {
            assert!(pulled.join("blobs/sha256").join(blob.hex()).is_file(), "{name}: blob {blob} not pulled");
        }
        let again = read_image(
            &ImageSource { kind: SourceKind::OciLayout, path: pulled, select: Some("x".into()) },
            &store,
            &opts,
        )
        .unwrap();
        assert_eq!(again.manifest_bytes, image.manifest_bytes, "{name}");
        assert_eq!(again.diff_ids(), image.diff_ids(), "{name}");
        assert_eq!(again.config_digest, image.config_digest, "{name}");
    }
    let (status, _) = registry.get("/v2/demo/api/manifests/nope");
    assert_eq!(status, 404);
}

fn snapshot_file(tree: &Tree, id: airlock::tree::NodeId) -> String {
    let NodeKind::File { size, content } = &tree.node(id).kind else {
        panic!("not a file");
    };
    let mut bytes = Vec::new();
    tree.content_reader().open(content, *size).read_to_end(&mut bytes).unwrap();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn registry_storage_refuses_conflicting_tags_and_bad_roots() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    write_layout(&layout, PLAIN);
    let store = BlobStore::new(&work.path().join("store")).unwrap();
    let a = read_image(&layout_source(&layout), &store, &ReadOptions::default()).unwrap();
    let mut b = a.clone();
    b.manifest_digest = Digest::of_bytes(b"another manifest");
    let owner = StorageOwner { uid: 0, gid: 0, mtime: Timestamp::default() };
    let preload = |image| Preload {
        image,
        repository: RepositoryName::parse("demo/api").unwrap(),
        tag: Tag::parse("1").unwrap(),
    };
    let err = write_registry_storage(
        &mut Tree::new(),
        "var/lib/docker-registry",
        &[preload(&a), preload(&b)],
        &store,
        &owner,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("demo/api:1 is given twice"), "{err:#}");
    for bad in ["", "../x", "/var/lib/x"] {
        assert!(write_registry_storage(&mut Tree::new(), bad, &[preload(&a)], &store, &owner).is_err(), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile inputs.

fn layout_source(dir: &Path) -> ImageSource {
    ImageSource { kind: SourceKind::OciLayout, path: dir.to_path_buf(), select: Some("1".into()) }
}

/// The `ImageError` in an error's chain; the whole message must name the image.
fn refused(result: anyhow::Result<Image>, source: &ImageSource) -> (ImageError, String) {
    let err = result.expect_err("a hostile image was accepted");
    let message = format!("{err:#}");
    assert!(message.contains(&source.to_string()), "error does not name the image: {message}");
    let kind = err
        .chain()
        .find_map(|e| e.downcast_ref::<ImageError>().cloned())
        .unwrap_or_else(|| panic!("no ImageError in: {message}"));
    (kind, message)
}

/// A fresh fixture layout (all layers uncompressed) to be damaged by the test.
struct Victim {
    dir: tempfile::TempDir,
}

impl Victim {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_layout(&dir.path().join("layout"), PLAIN);
        Self { dir }
    }

    fn layout(&self) -> PathBuf {
        self.dir.path().join("layout")
    }

    fn source(&self) -> ImageSource {
        layout_source(&self.layout())
    }

    fn read(&self) -> anyhow::Result<Image> {
        self.read_with(&ReadOptions::default())
    }

    fn read_with(&self, opts: &ReadOptions) -> anyhow::Result<Image> {
        let store = BlobStore::new(&self.dir.path().join("store")).unwrap();
        read_image(&self.source(), &store, opts)
    }

    fn index(&self) -> Value {
        serde_json::from_slice(&fs::read(self.layout().join("index.json")).unwrap()).unwrap()
    }

    fn manifest(&self) -> Value {
        let digest = self.index()["manifests"][0]["digest"].as_str().unwrap().to_string();
        let hex = digest.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&fs::read(self.blob_path(hex)).unwrap()).unwrap()
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.layout().join("blobs/sha256").join(hex)
    }

    fn layer_hex(&self, i: usize) -> String {
        self.manifest()["layers"][i]["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap().to_string()
    }

    /// Replaces the manifest with an edited one, keeping `index.json` consistent with it (so
    /// only the edit is wrong).
    fn edit_manifest(&self, edit: impl FnOnce(&mut Value)) {
        let mut manifest = self.manifest();
        edit(&mut manifest);
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let digest = write_blob(&self.layout(), &bytes);
        let mut index = self.index();
        index["manifests"][0]["digest"] = json!(digest.to_string());
        index["manifests"][0]["size"] = json!(bytes.len());
        fs::write(self.layout().join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    /// Replaces layer `i` with `tar` (uncompressed), updating the config's diff_id.
    fn replace_layer(&self, i: usize, tar: &[u8]) {
        let layout = self.layout();
        let d = write_blob(&layout, tar);
        let mut diff_ids: Vec<Digest> = (0..3).map(|j| Digest::from_hex(&self.layer_hex(j)).unwrap()).collect();
        diff_ids[i] = d.clone();
        let config = config_json("amd64", &diff_ids);
        let config_digest = write_blob(&layout, &config);
        self.edit_manifest(|m| {
            m["layers"][i]["digest"] = json!(d.to_string());
            m["layers"][i]["size"] = json!(tar.len());
            m["config"]["digest"] = json!(config_digest.to_string());
            m["config"]["size"] = json!(config.len());
        });
    }
}

#[test]
fn flipped_byte_in_a_layer_is_a_digest_mismatch() {
    let v = Victim::new();
    let hex = v.layer_hex(1);
    let mut bytes = fs::read(v.blob_path(&hex)).unwrap();
    bytes[700] ^= 1;
    fs::write(v.blob_path(&hex), bytes).unwrap();
    let (err, msg) = refused(v.read(), &v.source());
    assert!(matches!(&err, ImageError::DigestMismatch { expected, .. } if expected.hex() == hex), "{msg}");
    assert!(msg.contains("layer 2"), "{msg}");
}

#[test]
fn flipped_byte_in_the_manifest_is_a_digest_mismatch() {
    let v = Victim::new();
    let digest = v.index()["manifests"][0]["digest"].as_str().unwrap().to_string();
    let path = v.blob_path(digest.strip_prefix("sha256:").unwrap());
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 2;
    bytes[last] = b' ';
    fs::write(&path, bytes).unwrap();
    let (err, msg) = refused(v.read(), &v.source());
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{msg}");
}

#[test]
fn longer_blob_is_a_size_mismatch() {
    let v = Victim::new();
    let hex = v.layer_hex(0);
    let mut f = fs::OpenOptions::new().append(true).open(v.blob_path(&hex)).unwrap();
    f.write_all(b"\0").unwrap();
    let (err, msg) = refused(v.read(), &v.source());
    assert!(matches!(err, ImageError::SizeMismatch { actual, expected, .. } if actual == expected + 1), "{msg}");
}

#[test]
fn descriptor_size_that_lies_is_a_size_mismatch() {
    let v = Victim::new();
    v.edit_manifest(|m| {
        let size = m["layers"][2]["size"].as_u64().unwrap();
        m["layers"][2]["size"] = json!(size + 512);
    });
    let (err, msg) = refused(v.read(), &v.source());
    assert!(matches!(err, ImageError::SizeMismatch { .. }), "{msg}");
    assert!(msg.contains("layer 3"), "{msg}");
}

#[test]
fn unknown_media_types_are_refused() {
    let v = Victim::new();
    v.edit_manifest(|m| {
        m["layers"][0]["mediaType"] = json!("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip");
    });
    let (err, msg) = refused(v.read(), &v.source());
    assert!(matches!(&err, ImageError::UnknownMediaType { what, .. } if what == "layer 1"), "{msg}");

    let v = Victim::new();
    v.edit_manifest(|m| m["config"]["mediaType"] = json!("application/vnd.example.config+json"));
    let (err, msg) = refused(v.read(), &v.source());
    assert!(matches!(err, ImageError::UnknownMediaType { .. }), "{msg}");

    let v = Victim::new();
    let mut index = v.index();
    index["manifests"][0]["mediaType"] = json!("application/vnd.example.artifact+json");
    fs::write(v.layout().join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let (err, msg) = refused(v.read(), &v.source());
    assert!(matches!(err, ImageError::UnknownMediaType { .. }), "{msg}");
}

#[test]
fn manifest_pointing_to_a_missing_blob_is_refused() {
    let v = Victim::new();
    let hex = v.layer_hex(2);
    fs::remove_file(v.blob_path(&hex)).unwrap();
    let (err, msg) = refused(v.read(), &v.source());
    assert!(matches!(&err, ImageError::MissingBlob { digest, .. } if digest.hex() == hex), "{msg}");
}

#[test]
fn absurd_sizes_are_refused_before_reading() {
    let v = Victim::new();
    v.edit_manifest(|m| m["layers"][0]["size"] = json!(1u64 << 40));
    let (err, msg) = refused(v.read(), &v.source());
    assert!(matches!(err, ImageError::TooLarge { size, .. } if size == 1 << 40), "{msg}");

    let v = Victim::new();
    v.edit_manifest(|m| m["config"]["size"] = json!(5u64 << 20));
    let (err, msg) = refused(v.read(), &v.source());
    assert!(matches!(err, ImageError::TooLarge { .. }), "{msg}");

    // The caps are configurable.
    let v = Victim::new();
    let tight = ReadOptions { limits: Limits { max_blob_size: 1024, ..Limits::default() }, ..ReadOptions::default() };
    let (err, msg) = refused(v.read_with(&tight), &v.source());
    assert!(matches!(err, ImageError::TooLarge { limit: 1024, .. }), "{msg}");
}

/// Wraps the fixture's manifest in a per-platform index offering `platforms`, each entry
/// pointing at the same (amd64) manifest.
fn platform_index(v: &Victim, platforms: &[(&str, &str)]) {
    let top = v.index()["manifests"][0].clone();
    let entries: Vec<Value> = platforms
        .iter()
        .map(|(os, arch)| {
            json!({
                "mediaType": top["mediaType"],
                "digest": top["digest"],
                "size": top["size"],
                "platform": {"os": os, "architecture": arch}
            })
        })
        .collect();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": entries
    }))
    .unwrap();
    let d = write_blob(&v.layout(), &index);
    write_index_json(
        &v.layout(),
        json!([{
            "mediaType": media_type::OCI_INDEX,
            "digest": d.to_string(),
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "1"}
        }]),
    );
}

#[test]
fn per_platform_index_is_followed_to_linux_amd64() {
    let v = Victim::new();
    let manifest_digest = v.index()["manifests"][0]["digest"].clone();
    platform_index(&v, &[("linux", "arm64"), ("linux", "amd64"), ("windows", "amd64")]);
    let image = v.read().unwrap();
    assert_eq!(json!(image.manifest_digest.to_string()), manifest_digest);
}

#[test]
fn index_without_linux_amd64_is_refused() {
    let v = Victim::new();
    platform_index(&v, &[("linux", "arm64"), ("windows", "amd64")]);
    let (err, msg) = refused(v.read(), &v.source());
    assert!(
        matches!(&err, ImageError::NoMatchingPlatform { offered, .. } if offered == "linux/arm64, windows/amd64"),
        "{msg}"
    );
}

#[test]
fn config_for_another_architecture_is_refused() {
    let v = Victim::new();
    let diff_ids: Vec<Digest> = (0..3).map(|i| Digest::from_hex(&v.layer_hex(i)).unwrap()).collect();
    let config = config_json("arm64", &diff_ids);
    let d = write_blob(&v.layout(), &config);
    v.edit_manifest(|m| {
        m["config"]["digest"] = json!(d.to_string());
        m["config"]["size"] = json!(config.len());
    });
    let (err, msg) = refused(v.read(), &v.source());
    assert!(matches!(err, ImageError::WrongPlatform { .. }), "{msg}");
}

#[test]
fn layer_with_dotdot_paths_is_refused_when_applied() {
    let v = Victim::new();
    v.replace_layer(1, &layer_tar(&[Entry::File("etc/ok", 0o644, b"fine"), Entry::RawName(b"../escape", b"evil")]));
    // Every blob is intact, so the image reads; its layer must not apply.
    let store = BlobStore::new(&v.dir.path().join("store")).unwrap();
    let image = read_image(&v.source(), &store, &ReadOptions::default()).unwrap();
    let mut tree = Tree::new();
    let err = apply_layers(&mut tree, &image, &store, v.dir.path(), ExpansionLimit::ratio_only()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("layer 2"), "{msg}");
    assert!(msg.contains(&v.source().to_string()), "{msg}");
    let problem = err
        .chain()
        .find_map(|e| e.downcast_ref::<airlock::tree::InputError>())
        .unwrap_or_else(|| panic!("no InputError in: {msg}"));
    assert_eq!(problem.problem, airlock::tree::Problem::DotDot, "{msg}");
}

#[test]
fn compressed_layer_whose_content_disagrees_with_its_diff_id_is_refused() {
    let v = Victim::new();
    // Layer 1 replaced by its gzip form: the config's diff_id (of the plain tar) still holds.
    let gz = compress(&fixture_layers()[0], Compression::Gzip);
    let d = write_blob(&v.layout(), &gz);
    v.edit_manifest(|m| {
        m["layers"][0]["digest"] = json!(d.to_string());
        m["layers"][0]["size"] = json!(gz.len());
        m["layers"][0]["mediaType"] = json!(media_type::OCI_LAYER_GZIP);
    });
    let store = BlobStore::new(&v.dir.path().join("store")).unwrap();
    let image = read_image(&v.source(), &store, &ReadOptions::default()).unwrap();
    assert_eq!(image.layers[0].compression, Compression::Gzip);
    apply_layers(&mut Tree::new(), &image, &store, v.dir.path(), ExpansionLimit::ratio_only()).unwrap();

    // The same blob claimed to decompress to another layer's content.
    let mut lying = image.clone();
    lying.layers[0].diff_id = lying.layers[1].diff_id.clone();
    let err = apply_layers(&mut Tree::new(), &lying, &store, v.dir.path(), ExpansionLimit::ratio_only()).unwrap_err();
    assert!(
        err.chain().any(|e| matches!(e.downcast_ref::<ImageError>(), Some(ImageError::DigestMismatch { .. }))),
        "{err:#}"
    );
    assert!(format!("{err:#}").contains("layer 1"), "{err:#}");
}

#[test]
fn layer_whose_bytes_contradict_its_media_type_is_refused() {
    // A layer declared gzip whose bytes are a plain tar.
    let v = Victim::new();
    v.edit_manifest(|m| m["layers"][0]["mediaType"] = json!(media_type::OCI_LAYER_GZIP));
    let store = BlobStore::new(&v.dir.path().join("store")).unwrap();
    let image = read_image(&v.source(), &store, &ReadOptions::default()).unwrap();
    let err = apply_layers(&mut Tree::new(), &image, &store, v.dir.path(), ExpansionLimit::ratio_only()).unwrap_err();
    assert!(format!("{err:#}").contains("media type"), "{err:#}");
}

// Hostile archives: hand-made docker-archives and OCI archives.

/// A tar archive from `(name, bytes)` members, with raw names (no path checks).
fn archive(members: &[(&[u8], &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    for (name, target) in links {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, name, target).unwrap();
    }
    b.into_inner().unwrap()
}

/// A legacy `docker save` archive of the fixture: `<id>/layer.tar`, with layer 3 stored as a
/// symlink to a copy elsewhere (as docker does for a layer shared between images).
/// Archive members as `(name, bytes)`.
type Members = Vec<(Vec<u8>, Vec<u8>)>;
/// Symlinks as `(name, target)`.
type Links = Vec<(String, String)>;

fn docker_archive_members(tars: &[Vec<u8>]) -> (Members, Links) {
    let diff_ids: Vec<Digest> = tars.iter().map(|t| Digest::of_bytes(t)).collect();
    let config = config_json("amd64", &diff_ids);
    let config_name = format!("{}.json", Digest::of_bytes(&config).hex());
    let names = ["aaa1/layer.tar", "bbb2/layer.tar", "ccc3/layer.tar"];
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": ["localhost/demo/api:1"],
        "Layers": names,
    }]))
    .unwrap();
    let members = vec![
        (names[0].as_bytes().to_vec(), tars[0].clone()),
        (names[1].as_bytes().to_vec(), tars[1].clone()),
        (b"shared/layer.tar".to_vec(), tars[2].clone()),
        (config_name.into_bytes(), config),
        (b"manifest.json".to_vec(), manifest),
    ];
    let links = vec![(names[2].to_string(), "../shared/layer.tar".to_string())];
    (members, links)
}

fn write_archive(path: &Path, members: &[(Vec<u8>, Vec<u8>)], links: &[(String, String)]) -> ImageSource {
    let m: Vec<(&[u8], &[u8])> = members.iter().map(|(n, d)| (n.as_slice(), d.as_slice())).collect();
    let l: Vec<(&str, &str)> = links.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    fs::write(path, archive(&m, &l)).unwrap();
    ImageSource { kind: SourceKind::DockerArchive, path: path.to_path_buf(), select: None }
}

#[test]
fn legacy_docker_archive_with_symlinked_layer_reads_like_the_layout() {
    let work = tempfile::tempdir().unwrap();
    let (members, links) = docker_archive_members(&fixture_layers());
    let source = write_archive(&work.path().join("legacy.tar"), &members, &links);
    let store = BlobStore::new(&work.path().join("store")).unwrap();
    let image = read_image(&source, &store, &ReadOptions::default()).unwrap();

    let layout = work.path().join("layout");
    write_layout(&layout, PLAIN);
    let reference = read_image(&layout_source(&layout), &store, &ReadOptions::default()).unwrap();
    assert_eq!(image.manifest_digest, reference.manifest_digest);
    assert_eq!(snapshot(&unpack(&image, &store, work.path())), snapshot(&unpack(&reference, &store, work.path())));

    // The same archive, gzip-compressed as `docker save | gzip` makes it.
    let gz_path = work.path().join("legacy.tar.gz");
    fs::write(&gz_path, compress(&fs::read(&source.path).unwrap(), Compression::Gzip)).unwrap();
    let gz = ImageSource { path: gz_path, ..source };
    assert_eq!(read_image(&gz, &store, &ReadOptions::default()).unwrap().manifest_digest, reference.manifest_digest);
}

#[test]
fn hostile_docker_archives_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let tars = fixture_layers();
    let case = |name: &str, edit: &dyn Fn(&mut Members, &mut Links)| -> (ImageError, String) {
        let (mut members, mut links) = docker_archive_members(&tars);
        edit(&mut members, &mut links);
        let source = write_archive(&work.path().join(format!("{name}.tar")), &members, &links);
        let store = BlobStore::new(&work.path().join(format!("store-{name}"))).unwrap();
        refused(read_image(&source, &store, &ReadOptions::default()), &source)
    };

    let (err, msg) = case("tampered", &|m, _| m[1].1[600] ^= 1);
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{msg}");
    assert!(msg.contains("layer 2"), "{msg}");

    let (err, msg) = case("dotdot", &|m, _| m.push((b"../evil".to_vec(), b"x".to_vec())));
    assert!(matches!(&err, ImageError::ArchiveEntry { entry, .. } if entry == "../evil"), "{msg}");

    let (err, msg) = case("absolute", &|m, _| m.push((b"/etc/evil".to_vec(), b"x".to_vec())));
    assert!(matches!(err, ImageError::ArchiveEntry { .. }), "{msg}");

    let (err, msg) = case("duplicate", &|m, _| {
        let again = m[0].clone();
        m.push(again);
    });
    assert!(matches!(&err, ImageError::ArchiveEntry { problem, .. } if problem.contains("more than once")), "{msg}");

    let (err, msg) = case("escaping-link", &|_, l| {
        l[0].1 = "../../../etc/passwd".into();
    });
    assert!(matches!(&err, ImageError::ArchiveEntry { problem, .. } if problem.contains("outside")), "{msg}");

    let (err, msg) = case("missing-layer", &|m, _| m.retain(|(n, _)| n != b"bbb2/layer.tar"));
    assert!(matches!(err, ImageError::MissingBlob { .. }), "{msg}");

    let (err, msg) = case("renamed-config", &|m, _| {
        // The config's file name claims a digest its bytes do not have.
        let config = m.iter_mut().find(|(n, _)| n.ends_with(b".json") && n != b"manifest.json");
        let (_, bytes) = config.unwrap();
        bytes.push(b' ');
    });
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{msg}");
}

#[test]
fn hostile_oci_archive_is_refused() {
    let s = tempfile::tempdir().unwrap();
    let layout = s.path().join("layout");
    write_layout(&layout, PLAIN);
    // Re-pack the layout by hand with an extra hostile member.
    let mut members: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for name in ["oci-layout", "index.json"] {
        members.push((name.as_bytes().to_vec(), fs::read(layout.join(name)).unwrap()));
    }
    for e in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = format!("blobs/sha256/{}", e.file_name().to_string_lossy());
        members.push((name.into_bytes(), fs::read(e.path()).unwrap()));
    }
    let read = |members: &[(Vec<u8>, Vec<u8>)], name: &str| {
        let path = s.path().join(name);
        let m: Vec<(&[u8], &[u8])> = members.iter().map(|(n, d)| (n.as_slice(), d.as_slice())).collect();
        fs::write(&path, archive(&m, &[])).unwrap();
        let source = ImageSource { kind: SourceKind::OciArchive, path, select: None };
        let store = BlobStore::new(&s.path().join(format!("store-{name}"))).unwrap();
        (read_image(&source, &store, &ReadOptions::default()), source)
    };
    let (ok, _) = read(&members, "good.tar");
    ok.unwrap();

    let mut hostile = members.clone();
    hostile.push((b"blobs/../../x".to_vec(), b"x".to_vec()));
    let (result, source) = read(&hostile, "dotdot.tar");
    let (err, msg) = refused(result, &source);
    assert!(matches!(err, ImageError::ArchiveEntry { .. }), "{msg}");

    let mut dup = members.clone();
    dup.push(members[1].clone());
    let (result, source) = read(&dup, "dup.tar");
    let (err, msg) = refused(result, &source);
    assert!(matches!(err, ImageError::ArchiveEntry { .. }), "{msg}");
}
