//! `airlock fetch` and the lock, end to end.
//!
//! Against Debian's real registry (`docker-registry`, started on 127.0.0.1 for each test), into
//! which Debian's `skopeo` pushes fixture images built here as OCI layouts — one of them a
//! multi-platform index (linux/amd64 + linux/arm64): fetch must resolve tags to digests, pick
//! amd64, write the lock and store verified blobs; a second fetch must not touch the network;
//! the build side must refuse a missing or corrupted blob naming image and blob.
//!
//! Against small fake registries (std::net, in this file) for what the Debian registry cannot
//! show without TLS certificates: bearer-token authentication (anonymous and with credentials
//! from an auth file, and a token that stops working mid-pull), Basic authentication, and a
//! blob download cut off mid-body.
//!
//! `skopeo` and `docker-registry` are required: a missing tool fails the test, it never skips.

#![allow(clippy::unwrap_used, reason = "a test should stop at the first unexpected error")]

mod support;

use airlock::fetch::credentials::Credentials;
use airlock::fetch::registry::{RegistryClient, RegistryOptions};
use airlock::lock::Lock;
use airlock::oci::{BlobStore, Digest, ImageReference};
use base64::Engine;
use serde_json::json;
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::registry::{DockerRegistry, free_port, require_tool, run, skopeo};

// ---------------------------------------------------------------------------------------------
// Fixture images.

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One platform's image, as bytes.
struct Fixture {
    manifest: Vec<u8>,
    config: Vec<u8>,
    /// Gzipped layer tars.
    layers: Vec<Vec<u8>>,
}

impl Fixture {
    /// A two-layer image for `arch` whose files mention `marker` (so images differ).
    fn new(arch: &str, marker: &str) -> Self {
        let tars = [
            layer_tar(&[("etc/airlock-fixture", format!("{marker} {arch}\n").as_bytes())]),
            layer_tar(&[("usr/bin/app", format!("#!/bin/sh\necho {marker}\n").as_bytes())]),
        ];
        let diff_ids: Vec<String> = tars.iter().map(|t| Digest::of_bytes(t).to_string()).collect();
        let layers: Vec<Vec<u8>> = tars.iter().map(|t| gzip(t)).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/usr/bin/app"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": Digest::of_bytes(&config).to_string(), "size": config.len()},
            "layers": layers.iter().map(|l| json!({
                "mediaType": OCI_LAYER_GZIP, "digest": Digest::of_bytes(l).to_string(), "size": l.len()
            })).collect::<Vec<_>>(),
        }))
        .unwrap();
        Self { manifest, config, layers }
    }

    fn manifest_digest(&self) -> Digest {
        Digest::of_bytes(&self.manifest)
    }

    fn blobs(&self) -> Vec<&[u8]> {
        let mut all: Vec<&[u8]> = vec![&self.manifest, &self.config];
        all.extend(self.layers.iter().map(Vec::as_slice));
        all
    }

    /// Digest → bytes of every blob (for the fake registries).
    fn blob_map(&self) -> BTreeMap<String, Vec<u8>> {
        self.blobs().into_iter().map(|b| (Digest::of_bytes(b).to_string(), b.to_vec())).collect()
    }
}

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write_blob(layout: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of_bytes(bytes);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(d.hex()), bytes).unwrap();
    d
}

/// An OCI layout at `dir` whose `index.json` names `top` (`mediaType`, bytes) as `name`.
fn write_layout(dir: &Path, name: &str, media_type: &str, top: &[u8], images: &[&Fixture]) {
    for f in images {
        for b in f.blobs() {
            write_blob(dir, b);
        }
    }
    let d = write_blob(dir, top);
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": media_type, "digest": d.to_string(), "size": top.len(),
        "annotations": {"org.opencontainers.image.ref.name": name}
    }]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A single-platform layout holding `f` as `name`.
fn single_layout(dir: &Path, name: &str, f: &Fixture) {
    write_layout(dir, name, OCI_MANIFEST, &f.manifest, &[f]);
}

/// A multi-platform index over `amd64` and `arm64`, as bytes.
fn index_of(amd64: &Fixture, arm64: &Fixture) -> Vec<u8> {
    let entry = |f: &Fixture, arch: &str| {
        json!({"mediaType": OCI_MANIFEST, "digest": f.manifest_digest().to_string(), "size": f.manifest.len(),
               "platform": {"architecture": arch, "os": "linux"}})
    };
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [entry(arm64, "arm64"), entry(amd64, "amd64")]}))
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tools: skopeo, docker-registry, the airlock binary.

/// Debian's registry on a local address, with what these tests do with it: push with skopeo,
/// read manifests back with skopeo.
struct Registry {
    server: DockerRegistry,
    work: PathBuf,
}

impl Registry {
    fn start(work: &Path) -> Registry {
        Self::start_on(work, free_port("127.0.0.1"))
    }

    /// Starts on a given port (a restart keeps the references, which name the port).
    fn start_on(work: &Path, port: u16) -> Registry {
        Self::start_with(work, "127.0.0.1", port, None)
    }

    /// Starts on `ip:port`, serving HTTPS with `tls` (certificate, key) if given.
    fn start_with(work: &Path, ip: &str, port: u16, tls: Option<(&Path, &Path)>) -> Registry {
        let server = DockerRegistry::start(&work.join("registry-storage"), work, ip, port, tls);
        Registry { server, work: work.to_path_buf() }
    }

    fn host(&self) -> String {
        self.server.host()
    }

    fn port(&self) -> u16 {
        self.server.port
    }

    /// Pushes an image of an OCI layout (`--all`: every platform of an index).
    fn push(&self, layout: &Path, name: &str, repo_tag: &str, all: bool) {
        let from = format!("oci:{}:{name}", layout.display());
        let to = format!("docker://{}/{repo_tag}", self.host());
        let mut args = vec!["copy", "--dest-tls-verify=false", "--preserve-digests", "--quiet"];
        if all {
            args.push("--all");
        }
        args.extend([from.as_str(), to.as_str()]);
        skopeo(&args);
    }

    /// The manifest skopeo gets for a reference, as a judge independent of airlock.
    fn raw_manifest(&self, repo_ref: &str) -> Vec<u8> {
        let r = format!("docker://{}/{repo_ref}", self.host());
        skopeo(&["inspect", "--tls-verify=false", "--raw", &r]).into_bytes()
    }

    fn stop(self) -> (PathBuf, u16) {
        let port = self.port();
        self.server.stop();
        (self.work, port)
    }
}

/// A temporary home for one test: spec folder, cache and an empty credentials environment.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("spec")).unwrap();
        fs::create_dir_all(dir.path().join("home")).unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn spec(&self) -> PathBuf {
        self.path().join("spec/appliance.toml")
    }

    fn lock(&self) -> PathBuf {
        self.path().join("spec/appliance.lock")
    }

    fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }

    fn blob(&self, digest: &Digest) -> PathBuf {
        self.cache().join("blobs/sha256").join(digest.hex())
    }

    /// Writes the spec with these `[[containers]]` (name, image, source).
    fn write_spec(&self, containers: &[(&str, &str, &str)]) {
        let mut text = String::from(
            "name = \"fetch-test\"\nversion = \"1\"\n[os]\nsuite = \"trixie\"\nmirror = \"http://127.0.0.1:9/debian\"\nhostname = \"t\"\n[disk]\nsize = \"2GiB\"\ndata_size = \"64MiB\"\n",
        );
        for (name, image, source) in containers {
            text.push_str(&format!(
                "\n[[containers]]\nname = \"{name}\"\nimage = \"{image}\"\nsource = \"{source}\"\n"
            ));
        }
        fs::write(self.spec(), text).unwrap();
    }

    /// Runs the airlock binary with this workspace's cache and no credentials of the user's.
    fn airlock(&self, args: &[&str]) -> Output {
        self.airlock_env(args, &[])
    }

    fn airlock_env(&self, args: &[&str], env: &[(&str, &Path)]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(args)
            .envs(env.iter().copied())
            .env("AIRLOCK_CACHE_DIR", self.cache())
            .env("HOME", self.path().join("home"))
            .env("REGISTRY_AUTH_FILE", self.path().join("no-auth.json"))
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("DOCKER_CONFIG")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.airlock(args);
        assert!(
            out.status.success(),
            "airlock {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn err(&self, args: &[&str]) -> String {
        let out = self.airlock(args);
        assert!(!out.status.success(), "airlock {} unexpectedly succeeded", args.join(" "));
        String::from_utf8(out.stderr).unwrap()
    }

    fn fetch(&self) -> String {
        self.ok(&["fetch", self.spec().to_str().unwrap()])
    }

    fn read_lock(&self) -> Lock {
        Lock::read(&self.lock()).unwrap().expect("appliance.lock exists")
    }

    /// The build side's check, through the library (a full build would go on to install a base
    /// OS, which needs the Debian archive).
    fn verify_cached(&self) -> anyhow::Result<Vec<airlock::oci::Image>> {
        let host = airlock::plan::HostContext { etc_apt: PathBuf::from("/nonexistent") };
        let plan = airlock::plan::plan(&self.spec(), &host)?;
        let lock = airlock::lock_check::read_for_build(&plan)?;
        let store = BlobStore::new(&self.cache().join("blobs"))?;
        airlock::lock_check::verify_cached(&plan, &lock, &store)
    }
}

fn assert_contains(haystack: &str, needles: &[&str]) {
    for n in needles {
        assert!(haystack.contains(n), "expected `{n}` in:\n{haystack}");
    }
}

// ---------------------------------------------------------------------------------------------
// Against the real registry.

#[test]
fn fetch_pins_tags_and_indexes_and_build_refuses_damaged_caches() {
    let ws = Workspace::new();
    let registry = Registry::start(ws.path());
    let api = Fixture::new("amd64", "api");
    let amd64 = Fixture::new("amd64", "multi");
    let arm64 = Fixture::new("arm64", "multi");
    let index = index_of(&amd64, &arm64);
    let local = Fixture::new("amd64", "local");

    single_layout(&ws.path().join("api-layout"), "1", &api);
    write_layout(&ws.path().join("multi-layout"), "1", OCI_INDEX, &index, &[&amd64, &arm64]);
    single_layout(&ws.path().join("spec/local-layout"), "v1", &local);
    registry.push(&ws.path().join("api-layout"), "1", "demo/api:1", false);
    registry.push(&ws.path().join("multi-layout"), "1", "demo/multi:1", true);

    // skopeo, not airlock, says what the tags point at.
    let api_digest = Digest::of_bytes(&registry.raw_manifest("demo/api:1"));
    let index_digest = Digest::of_bytes(&registry.raw_manifest("demo/multi:1"));
    assert_eq!(api_digest, api.manifest_digest());
    assert_eq!(index_digest, Digest::of_bytes(&index));

    let host = registry.host();
    let api_ref = format!("{host}/demo/api:1");
    let multi_ref = format!("{host}/demo/multi:1");
    let pinned_ref = format!("{host}/demo/api@{api_digest}");
    ws.write_spec(&[
        ("api", &api_ref, "registry"),
        ("multi", &multi_ref, "registry"),
        ("pinned", &pinned_ref, "registry"),
        ("local", "localhost/demo/local:v1", "oci:local-layout:v1"),
    ]);
    let out = ws.fetch();
    assert_contains(&out, &["api: ", "(resolved)", "appliance.lock: written"]);

    // The lock: tags resolved to digests, the index's amd64 entry chosen, every blob listed.
    let lock = ws.read_lock();
    let entry = |name: &str| lock.entry(name).unwrap().clone();
    let e = entry("api");
    assert_eq!(e.image, api_ref);
    assert_eq!(e.source, "registry");
    assert_eq!(e.platform, "linux/amd64");
    assert_eq!(e.index, None);
    assert_eq!(e.manifest.digest, api_digest);
    assert_eq!(e.manifest.media_type, OCI_MANIFEST);
    assert_eq!(e.config.digest, Digest::of_bytes(&api.config));
    let layer_digests: Vec<Digest> = e.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(layer_digests, api.layers.iter().map(|l| Digest::of_bytes(l)).collect::<Vec<_>>());
    let m = entry("multi");
    assert_eq!(m.index.as_ref().map(|i| &i.digest), Some(&index_digest));
    assert_eq!(m.manifest.digest, amd64.manifest_digest());
    assert_eq!(entry("pinned").manifest.digest, api_digest);
    assert_eq!(entry("pinned").image, pinned_ref);
    let l = entry("local");
    assert_eq!((l.source.as_str(), &l.manifest.digest), ("oci:local-layout:v1", &local.manifest_digest()));
    let text = fs::read_to_string(ws.lock()).unwrap();
    let order: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("name = ")).collect();
    assert_eq!(order, ["\"api\"", "\"local\"", "\"multi\"", "\"pinned\""], "sorted by name");

    // The cache: every amd64 blob, verified; nothing of arm64 but what it shares.
    for f in [&api, &amd64, &local] {
        for b in f.blobs() {
            let d = Digest::of_bytes(b);
            assert_eq!(fs::read(ws.blob(&d)).unwrap(), b, "{d}");
        }
    }
    assert!(ws.blob(&index_digest).exists());
    assert!(!ws.blob(&arm64.manifest_digest()).exists());
    assert!(!ws.blob(&Digest::of_bytes(&arm64.config)).exists());
    let leftovers: Vec<_> = fs::read_dir(ws.cache().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The build side gets the images, in the spec's order.
    let images = ws.verify_cached().unwrap();
    let digests: Vec<&Digest> = images.iter().map(|i| &i.manifest_digest).collect();
    assert_eq!(digests, [&api_digest, &amd64.manifest_digest(), &api_digest, &local.manifest_digest()]);
    assert_eq!(images[1].reference, multi_ref);

    // A second fetch is a no-op: with the registry down it still succeeds, downloading nothing
    // and leaving the lock as it was.
    let lock_before = fs::metadata(ws.lock()).unwrap().modified().unwrap();
    let (work, port) = registry.stop();
    let out = ws.fetch();
    assert_contains(&out, &["api: ", "(cached)", "appliance.lock: unchanged (0B downloaded)"]);
    assert!(!out.contains("(resolved)") && !out.contains("(restored)"), "{out}");
    assert_eq!(fs::read_to_string(ws.lock()).unwrap(), text);
    assert_eq!(fs::metadata(ws.lock()).unwrap().modified().unwrap(), lock_before);

    // The build refuses a missing blob and a corrupted one, naming container, image and blob.
    let layer2 = &e.layers[1].digest;
    let spec = ws.spec();
    let build =
        |ws: &Workspace| ws.err(&["build", spec.to_str().unwrap(), "--out", ws.path().join("out").to_str().unwrap()]);
    let saved = fs::read(ws.blob(layer2)).unwrap();
    fs::remove_file(ws.blob(layer2)).unwrap();
    let err = build(&ws);
    assert_contains(
        &err,
        &[
            "container `api`",
            &api_ref,
            &format!("layer 2 {layer2} is not in the cache"),
            &format!("airlock fetch {}`", spec.display()),
        ],
    );
    assert!(!err.contains("install base OS"), "refused before any other stage:\n{err}");
    let mut corrupt = saved.clone();
    corrupt[10] ^= 0x01;
    fs::write(ws.blob(layer2), &corrupt).unwrap();
    let err = build(&ws);
    assert_contains(&err, &["container `api`", &api_ref, &format!("layer 2 {layer2} has the wrong content")]);
    let config = &m.config.digest;
    fs::remove_file(ws.blob(config)).unwrap();
    let err = build(&ws);
    assert_contains(&err, &["container `multi`", &multi_ref, &format!("config {config} is not in the cache")]);

    // Fetch restores exactly the pinned blobs, by digest.
    let registry = Registry::start_on(&work, port);
    let out = ws.fetch();
    assert_contains(&out, &["(restored)", "appliance.lock: unchanged"]);
    assert_eq!(fs::read(ws.blob(layer2)).unwrap(), saved);
    ws.verify_cached().unwrap();

    // Tags moved on the registry stay pinned until `--update`.
    let api2 = Fixture::new("amd64", "api, second release");
    single_layout(&ws.path().join("api2-layout"), "1", &api2);
    registry.push(&ws.path().join("api2-layout"), "1", "demo/api:1", false);
    let out = ws.fetch();
    assert!(!out.contains("(resolved)"), "{out}");
    assert_eq!(ws.read_lock().entry("api").unwrap().manifest.digest, api_digest);
    let out = ws.ok(&["fetch", "--update", spec.to_str().unwrap()]);
    assert_contains(&out, &["appliance.lock: written"]);
    let updated = ws.read_lock();
    assert_eq!(updated.entry("api").unwrap().manifest.digest, api2.manifest_digest());
    assert_eq!(updated.entry("pinned").unwrap().manifest.digest, api_digest, "a digest reference never moves");
    ws.verify_cached().unwrap();

    // docker.io references reach a registry named with --registry-mirror (here: the local one).
    registry.push(&ws.path().join("api-layout"), "1", "library/mysql:8.0", false);
    ws.write_spec(&[("db", "mysql:8.0", "registry")]);
    let out = ws.ok(&["fetch", "--registry-mirror", &format!("docker.io={host}"), spec.to_str().unwrap()]);
    assert_contains(&out, &[&format!("db: docker.io/library/mysql:8.0 {api_digest} (resolved)")]);

    // A container dropped from the spec leaves the lock; a changed reference is resolved anew.
    ws.write_spec(&[("api", &format!("{host}/demo/multi:1"), "registry")]);
    ws.fetch();
    let lock = ws.read_lock();
    assert_eq!(lock.containers.len(), 1);
    assert_eq!(lock.entry("api").unwrap().index.as_ref().unwrap().digest, index_digest);
}

#[test]
fn spec_and_lock_errors_say_what_to_fix() {
    let ws = Workspace::new();
    // An unknown key in [[containers]], and a bad reference, each named.
    let spec = ws.spec();
    let spec_arg = spec.to_str().unwrap();
    ws.write_spec(&[("api", "localhost/demo/api:1", "registry")]);
    let text = fs::read_to_string(&spec).unwrap();
    fs::write(&spec, text.replace("source = \"registry\"", "source = \"registry\"\ndigest = \"x\"")).unwrap();
    assert_contains(&ws.err(&["fetch", spec_arg]), &["unknown field `digest`"]);
    ws.write_spec(&[("api", "localhost/Demo/api:1", "registry")]);
    assert_contains(&ws.err(&["fetch", spec_arg]), &["`containers[0].image`", "must be lowercase"]);
    ws.write_spec(&[("api", "localhost/demo/api:1", "oci-archive:")]);
    assert_contains(&ws.err(&["fetch", spec_arg]), &["`containers[0].source`"]);

    // No lock, or a lock without the container: build says to fetch.
    ws.write_spec(&[("api", "localhost/demo/api:1", "oci:layout:1")]);
    let out = ws.path().join("out");
    let build = || ws.err(&["build", spec_arg, "--out", out.to_str().unwrap()]);
    assert_contains(
        &build(),
        &["appliance.lock does not exist", &format!("airlock fetch {spec_arg}` on a connected host")],
    );
    // A spec folder with its own preparation script (the demo's) is named as the other way.
    let prepare = spec.parent().unwrap().join("prepare");
    fs::write(&prepare, "#!/bin/sh\n").unwrap();
    assert_contains(&build(), &[&format!("(or `{}`, which builds the spec's local inputs first)", prepare.display())]);
    fs::remove_file(&prepare).unwrap();
    let f = Fixture::new("amd64", "x");
    single_layout(&ws.path().join("spec/layout"), "1", &f);
    ws.fetch();
    ws.write_spec(&[("api", "localhost/demo/api:1", "oci:layout:1"), ("web", "localhost/demo/web:1", "oci:layout:1")]);
    assert_contains(
        &build(),
        &["container `web` (localhost/demo/web:1)", "has no entry for it", &format!("airlock fetch {spec_arg}`")],
    );
    // A lock made for another reference is stale.
    ws.write_spec(&[("api", "localhost/demo/api:2", "oci:layout:1")]);
    assert_contains(&build(), &["container `api`", "appliance.lock pins `localhost/demo/api:1`"]);
    // A local source that changed under a pinned entry is not silently re-pinned.
    ws.write_spec(&[("api", "localhost/demo/api:1", "oci:layout:1")]);
    fs::remove_dir_all(ws.cache()).unwrap();
    let other = Fixture::new("amd64", "changed");
    fs::remove_dir_all(ws.path().join("spec/layout")).unwrap();
    single_layout(&ws.path().join("spec/layout"), "1", &other);
    assert_contains(&ws.err(&["fetch", spec_arg]), &["now holds manifest", "airlock fetch --update"]);
    ws.ok(&["fetch", "--update", spec_arg]);
    // docker.io has no built-in API host.
    ws.write_spec(&[("db", "mysql:8.0", "registry")]);
    assert_contains(
        &ws.err(&["fetch", spec_arg]),
        &["docker.io/library/mysql:8.0", "--registry-mirror docker.io=HOST"],
    );
}

/// A private CA (as an enterprise's TLS-intercepting proxy has) and a server certificate it
/// signed for `ip`, made with openssl: (ca.crt, server.crt, server.key).
fn private_ca(dir: &Path, ip: &str) -> (PathBuf, PathBuf, PathBuf) {
    require_tool("/usr/bin/openssl", "openssl");
    fs::create_dir_all(dir).unwrap();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let openssl = |args: &[&str]| run(Command::new("/usr/bin/openssl").args(args));
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", &p("ca.key"), "-out", &p("ca.crt"), "-days", "2", "-subj", "/CN=airlock test CA"],
        ]
        .concat(),
    );
    openssl(
        &[&["req"][..], &ec, &["-keyout", &p("server.key"), "-out", &p("server.csr"), "-subj", "/CN=registry"]]
            .concat(),
    );
    fs::write(dir.join("ext"), format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n")).unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("server.crt"),
        "-days",
        "2",
        "-extfile",
        &p("ext"),
    ]);
    (dir.join("ca.crt"), dir.join("server.crt"), dir.join("server.key"))
}

#[test]
fn https_registry_trusted_through_the_system_certificate_store() {
    // Any loopback address but 127.0.0.1 is spoken to over HTTPS.
    let ip = "127.0.0.2";
    let ws = Workspace::new();
    let (ca, cert, key) = private_ca(&ws.path().join("pki"), ip);
    let registry = Registry::start_with(ws.path(), ip, free_port(ip), Some((&cert, &key)));
    let f = Fixture::new("amd64", "tls");
    single_layout(&ws.path().join("layout"), "1", &f);
    registry.push(&ws.path().join("layout"), "1", "demo/api:1", false);
    ws.write_spec(&[("api", &format!("{}/demo/api:1", registry.host()), "registry")]);
    let spec = ws.spec();
    let args = ["fetch", spec.to_str().unwrap()];

    // The private CA is not in the store: refused.
    let empty = ws.path().join("pki/empty.pem");
    fs::write(&empty, "").unwrap();
    let out = ws.airlock_env(&args, &[("SSL_CERT_FILE", &empty)]);
    assert!(!out.status.success());
    assert_contains(
        &String::from_utf8_lossy(&out.stderr),
        &[&format!("GET https://{}/v2/", registry.host()), "invalid peer certificate"],
    );
    // With it (as after update-ca-certificates; SSL_CERT_FILE stands in for /etc/ssl/certs): pulled.
    let out = ws.airlock_env(&args, &[("SSL_CERT_FILE", &ca)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ws.read_lock().entry("api").unwrap().manifest.digest, f.manifest_digest());
}

// ---------------------------------------------------------------------------------------------
// Fake registries, for authentication and broken connections.

/// A request as the fake server saw it.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: BTreeMap<String, String>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// What the fake server answers.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Close the connection after this many body bytes (a download cut off).
    cut_after: Option<usize>,
}

impl Reply {
    fn ok(body: Vec<u8>, content_type: &str) -> Self {
        Self { status: 200, headers: vec![("Content-Type".into(), content_type.into())], body, cut_after: None }
    }

    fn status(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            body: br#"{"errors":[{"code":"DENIED","message":"no"}]}"#.to_vec(),
            cut_after: None,
        }
    }

    fn challenge(value: &str) -> Self {
        let mut r = Self::status(401);
        r.headers.push(("WWW-Authenticate".into(), value.into()));
        r
    }
}

type Handler = Box<dyn Fn(&Request) -> Reply + Send + Sync>;

/// A one-thread HTTP/1.1 server on 127.0.0.1 that answers each connection's requests with
/// `handler` and records them. It stops when dropped.
struct FakeServer {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeServer {
    fn start(handler: impl Fn(&Request, u16) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handler: Handler = Box::new(move |r| handler(r, port));
        let (reqs, stopping) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream, &handler, &reqs),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { port, requests, stop }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn serve(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Request>>) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let req = Request { path, headers };
        log.lock().unwrap().push(req.clone());
        let reply = handler(&req);
        let reason = match reply.status {
            200 => "OK",
            307 => "Temporary Redirect",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Status",
        };
        let mut head = format!("HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\n", reply.status, reply.body.len());
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if out.write_all(head.as_bytes()).is_err() {
            return;
        }
        match reply.cut_after {
            Some(n) => {
                let _ = out.write_all(&reply.body[..n]);
                let _ = out.flush();
                // Closing both directions mid-body: the client sees the connection end early.
                let _ = out.shutdown(std::net::Shutdown::Both);
                return;
            }
            None => {
                if out.write_all(&reply.body).is_err() {
                    return;
                }
            }
        }
    }
}

/// Serves `f` as `demo/api:1` (manifest by tag or digest, blobs by digest), or `None`.
fn serve_image(f: &Fixture, req: &Request) -> Option<Reply> {
    let path = req.path.split('?').next().unwrap_or("");
    if let Some(at) = path.strip_prefix("/v2/demo/api/manifests/") {
        if at == "1" || at == f.manifest_digest().to_string() {
            return Some(Reply::ok(f.manifest.clone(), OCI_MANIFEST));
        }
        return Some(Reply::status(404));
    }
    let digest = path.strip_prefix("/v2/demo/api/blobs/")?;
    Some(match f.blob_map().get(digest) {
        Some(b) => Reply::ok(b.clone(), "application/octet-stream"),
        None => Reply::status(404),
    })
}

fn client(credentials: Credentials) -> RegistryClient {
    RegistryClient::new(RegistryOptions { credentials, ..Default::default() })
}

fn pull(client: &mut RegistryClient, port: u16, store: &BlobStore) -> anyhow::Result<airlock::fetch::registry::Pulled> {
    let r = ImageReference::parse(&format!("127.0.0.1:{port}/demo/api:1")).unwrap();
    client.pull(&r, "1", store)
}

fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

fn query(path: &str) -> BTreeMap<String, String> {
    let q = path.split_once('?').map(|(_, q)| q).unwrap_or("");
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3A", ":").replace("%2F", "/")))
        .collect()
}

/// A registry that wants bearer tokens from its own `/token` realm. Tokens are numbered; the
/// first one stops working for blobs (as an expired token would), so the client must take the
/// challenge of a later 401 and get a new one. With `login`, the token service requires it.
fn token_registry(f: Fixture, login: Option<(&'static str, &'static str)>) -> FakeServer {
    let issued = Arc::new(Mutex::new(0u32));
    FakeServer::start(move |req, port| {
        let challenge =
            |scope: &str| format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake-registry"{scope}"#);
        if req.path == "/v2/" {
            return Reply::challenge(&challenge(""));
        }
        if req.path.starts_with("/token") {
            if let Some((u, p)) = login
                && req.header("authorization") != Some(basic(u, p).as_str())
            {
                return Reply::status(401);
            }
            let mut n = issued.lock().unwrap();
            *n += 1;
            return Reply::ok(
                json!({"token": format!("T{}", *n), "expires_in": 300}).to_string().into_bytes(),
                "application/json",
            );
        }
        let auth = req.header("authorization").unwrap_or("");
        let is_blob = req.path.contains("/blobs/");
        let valid = auth.starts_with("Bearer T") && !(is_blob && auth == "Bearer T1");
        if !valid {
            return Reply::challenge(&challenge(r#",scope="repository:demo/api:pull""#));
        }
        serve_image(&f, req).unwrap_or_else(|| Reply::status(404))
    })
}

#[test]
fn bearer_tokens_anonymous_and_renewed_after_a_401() {
    let f = Fixture::new("amd64", "token");
    let want = f.manifest_digest();
    let server = token_registry(f, None);
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(dir.path()).unwrap();
    let mut c = client(Credentials::from_files(vec![]));
    let pulled = pull(&mut c, server.port, &store).unwrap();
    assert_eq!(pulled.image.manifest_digest, want);

    let reqs = server.requests();
    let tokens: Vec<&Request> = reqs.iter().filter(|r| r.path.starts_with("/token")).collect();
    assert_eq!(tokens.len(), 2, "one token up front, one after the blob 401: {reqs:#?}");
    let q = query(&tokens[0].path);
    assert_eq!(q.get("service").map(String::as_str), Some("fake-registry"));
    assert_eq!(q.get("scope").map(String::as_str), Some("repository:demo/api:pull"));
    assert!(tokens[0].header("authorization").is_none(), "anonymous token request");
    let manifest = reqs.iter().find(|r| r.path == "/v2/demo/api/manifests/1").unwrap();
    assert_eq!(manifest.header("authorization"), Some("Bearer T1"));
    let accept = manifest.header("accept").unwrap();
    for mt in airlock::fetch::registry::accepted_media_types() {
        assert!(accept.contains(mt), "{accept}");
    }
    assert!(
        reqs.iter().filter(|r| r.path.contains("/blobs/")).all(|r| {
            r.header("authorization") == Some("Bearer T2") || r.header("authorization") == Some("Bearer T1")
        })
    );
}

#[test]
fn bearer_tokens_with_credentials_from_an_auth_file() {
    let f = Fixture::new("amd64", "login");
    let server = token_registry(f, Some(("alice", "s3cret")));
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(&dir.path().join("store")).unwrap();

    // Without credentials the token service refuses, and the error says as whom airlock asked.
    let err = pull(&mut client(Credentials::from_files(vec![])), server.port, &store).unwrap_err();
    assert_contains(&format!("{err:#}"), &["getting a token for demo/api anonymously", "401"]);

    let auth = dir.path().join("auth.json");
    let key = format!("127.0.0.1:{}", server.port);
    fs::write(
        &auth,
        json!({"auths": {key: {"auth": base64::engine::general_purpose::STANDARD.encode("alice:s3cret")}}}).to_string(),
    )
    .unwrap();
    pull(&mut client(Credentials::from_files(vec![auth])), server.port, &store).unwrap();
    let reqs = server.requests();
    let last_token = reqs.iter().rev().find(|r| r.path.starts_with("/token")).unwrap();
    assert_eq!(last_token.header("authorization"), Some(basic("alice", "s3cret").as_str()));
}

#[test]
fn basic_auth_registry() {
    let f = Fixture::new("amd64", "basic");
    let server = FakeServer::start(move |req, _| {
        if req.header("authorization") != Some(basic("bob", "pw").as_str()) {
            return Reply::challenge(r#"Basic realm="Registry Realm""#);
        }
        if req.path == "/v2/" {
            return Reply::ok(b"{}".to_vec(), "application/json");
        }
        serve_image(&f, req).unwrap_or_else(|| Reply::status(404))
    });
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(&dir.path().join("store")).unwrap();
    let err = pull(&mut client(Credentials::from_files(vec![dir.path().join("none.json")])), server.port, &store)
        .unwrap_err();
    assert_contains(&format!("{err:#}"), &["asks for a login", "none.json"]);
    let auth = dir.path().join("config.json");
    // docker's style of key: a URL.
    let key = format!("http://127.0.0.1:{}/v1/", server.port);
    fs::write(
        &auth,
        json!({"auths": {key: {"auth": base64::engine::general_purpose::STANDARD.encode("bob:pw")}}}).to_string(),
    )
    .unwrap();
    pull(&mut client(Credentials::from_files(vec![auth])), server.port, &store).unwrap();
}

#[test]
fn blob_redirects_are_followed_without_the_registry_credentials() {
    // Object storage: serves blobs at /bucket/<digest>, records who asks.
    let f = Fixture::new("amd64", "redirect");
    let blobs = f.blob_map();
    let storage = FakeServer::start(move |req, _| {
        match req.path.strip_prefix("/bucket/").and_then(|d| blobs.get(d.split('?').next().unwrap_or(""))) {
            Some(b) => Reply::ok(b.clone(), "application/octet-stream"),
            None => Reply::status(404),
        }
    });
    let storage_port = storage.port;
    let registry = FakeServer::start(move |req, _| {
        if req.header("authorization") != Some(basic("bob", "pw").as_str()) {
            return Reply::challenge(r#"Basic realm="Registry Realm""#);
        }
        if let Some(digest) = req.path.strip_prefix("/v2/demo/api/blobs/") {
            let mut r = Reply::status(307);
            r.headers
                .push(("Location".into(), format!("http://127.0.0.1:{storage_port}/bucket/{digest}?X-Signature=abc")));
            return r;
        }
        if req.path == "/v2/" {
            return Reply::ok(b"{}".to_vec(), "application/json");
        }
        serve_image(&f, req).unwrap_or_else(|| Reply::status(404))
    });
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.json");
    let key = format!("127.0.0.1:{}", registry.port);
    fs::write(
        &auth,
        json!({"auths": {key: {"auth": base64::engine::general_purpose::STANDARD.encode("bob:pw")}}}).to_string(),
    )
    .unwrap();
    let store = BlobStore::new(&dir.path().join("store")).unwrap();
    pull(&mut client(Credentials::from_files(vec![auth])), registry.port, &store).unwrap();
    let fetched = storage.requests();
    assert_eq!(fetched.len(), 3, "config and two layers from storage: {fetched:#?}");
    assert!(fetched.iter().all(|r| r.header("authorization").is_none()), "{fetched:#?}");
}

#[test]
fn interrupted_blob_download_leaves_nothing_and_the_next_fetch_completes() {
    let f = Fixture::new("amd64", "interrupted");
    let layer = f.layers[1].clone();
    let layer_digest = Digest::of_bytes(&layer);
    let cut_once = Arc::new(Mutex::new(true));
    let (cut, f_digest) = (cut_once.clone(), layer_digest.to_string());
    let server = FakeServer::start(move |req, _| {
        if req.path == "/v2/" {
            return Reply::ok(b"{}".to_vec(), "application/json");
        }
        let mut reply = serve_image(&f, req).unwrap_or_else(|| Reply::status(404));
        let mut first = cut.lock().unwrap();
        if req.path.ends_with(&f_digest) && *first {
            *first = false;
            reply.cut_after = Some(reply.body.len() / 2);
        }
        reply
    });
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(dir.path()).unwrap();
    let mut c = client(Credentials::from_files(vec![]));
    let err = pull(&mut c, server.port, &store).unwrap_err();
    assert_contains(&format!("{err:#}"), &[&format!("downloading layer 2 {layer_digest}")]);
    assert!(!store.path(&layer_digest).exists(), "no blob under its final name");
    let names: Vec<String> = fs::read_dir(dir.path().join("sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");

    // The next pull downloads the layer whole (from the start) and the rest from the cache.
    let before = server.requests().len();
    pull(&mut c, server.port, &store).unwrap();
    assert_eq!(fs::read(store.path(&layer_digest)).unwrap(), layer);
    let again: Vec<String> = server.requests()[before..].iter().map(|r| r.path.clone()).collect();
    let blobs: Vec<&String> = again.iter().filter(|p| p.contains("/blobs/")).collect();
    assert_eq!(blobs, [&format!("/v2/demo/api/blobs/{layer_digest}")], "{again:?}");
}

#[test]
fn a_registry_serving_the_wrong_bytes_is_refused() {
    let f = Fixture::new("amd64", "evil");
    let layer_digest = Digest::of_bytes(&f.layers[0]).to_string();
    let server = FakeServer::start(move |req, _| {
        if req.path == "/v2/" {
            return Reply::ok(b"{}".to_vec(), "application/json");
        }
        let mut reply = serve_image(&f, req).unwrap_or_else(|| Reply::status(404));
        if req.path.ends_with(&layer_digest) {
            let last = reply.body.len() - 1;
            reply.body[last] ^= 0xff;
        }
        reply
    });
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(dir.path()).unwrap();
    let err = pull(&mut client(Credentials::from_files(vec![])), server.port, &store).unwrap_err();
    let msg = format!("{err:#}");
    assert_contains(&msg, &["layer 1", "has the wrong content"]);
    let unknown = pull_ref(&server, "demo/api:2", &store).unwrap_err();
    assert_contains(&format!("{unknown:#}"), &["404", "DENIED"]);
}

fn pull_ref(server: &FakeServer, r: &str, store: &BlobStore) -> anyhow::Result<airlock::fetch::registry::Pulled> {
    let r = ImageReference::parse(&format!("127.0.0.1:{}/{r}", server.port)).unwrap();
    client(Credentials::from_files(vec![])).pull(&r, &r.manifest_reference(), store)
}
