//! npm: npm resolves, airlock downloads and serves packuments.
//!
//! `npm install --package-lock-only --ignore-scripts` in an empty project (the build host's npm
//! with its configuration: registry, proxy, certificates) resolves the packages with every
//! transitive, optional and platform-specific dependency into `package-lock.json` without
//! running or unpacking anything. airlock downloads each locked tarball into the blob store and
//! checks it against the lock's `sha512` integrity as well as its own SHA-256.
//!
//! Served: `npm/<name>/-/<file>.tgz` and `npm/<name>/index.json`, the packument, written at
//! build time from each tarball's own `package.json`. nginx answers `GET /npm/<name>` and
//! `GET /npm/@scope%2fname` (which it decodes to `/npm/@scope/name`) with that file.
//! `dist.tarball` must be an absolute URL: it is written with [`PLACEHOLDER`], which
//! nginx replaces with the URL the client used.

use super::download::{Downloader, Expect};
use super::ecosystem::{
    Ecosystem, FileKind, Identity, IndexEntry, LockedFile, PLACEHOLDER, Settings, SpecContext, StoredFile,
    check_file_name, is_client_argument, is_module_version, purl_escape,
};
use crate::command::Cmd;
use crate::oci::BlobStore;
use crate::spec::PlanError;
use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha512};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// The npm ecosystem (`[mirrors.npm]`, served at `npm/`).
#[derive(Debug)]
pub struct Npm;

/// `[mirrors.npm]` as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NpmSpec {
    /// Package specs as npm takes them (`@pulumi/pulumi`, `typescript@5.6.3`).
    packages: Vec<String>,
}

/// `[mirrors.npm]`, validated. (Its `Debug` text is what the lock's inputs digest covers.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpmPlan {
    pub packages: Vec<String>,
}

/// nginx: `GET /npm/<name>` and `/npm/@scope%2fname` (nginx decodes `%2f`) answer with the
/// packument, whose tarball URLs `sub_filter` completes; tarballs are served as bytes.
const NGINX_LOCATIONS: &str = r#"    # npm: GET /npm/<name> and /npm/@scope%2fname (nginx decodes %2f) answer with the packument.
    location /npm/ {
        sub_filter_types application/json;
        try_files $uri/index.json =404;
    }
    location ~ "^/npm/.+/-/[^/]+\.tgz$" {
        types { }
        default_type application/octet-stream;
    }
"#;

impl Ecosystem for Npm {
    fn name(&self) -> &'static str {
        "npm"
    }

    fn spec_key(&self) -> &'static str {
        "mirrors.npm"
    }

    fn validate(&self, section: toml::Value, spec: &SpecContext<'_>) -> Result<Arc<dyn Settings>, PlanError> {
        let n: NpmSpec = spec.section(self.spec_key(), section)?;
        if n.packages.is_empty() {
            return Err(spec.err("mirrors.npm.packages", "lists nothing"));
        }
        for p in &n.packages {
            if !is_client_argument(p) || p.contains(char::is_whitespace) {
                return Err(spec.err("mirrors.npm.packages", format!("`{p}` is not a package spec")));
            }
        }
        Ok(Arc::new(NpmPlan { packages: n.packages }))
    }

    /// One packument per package, from each tarball's own `package.json`.
    fn render(&self, files: &[StoredFile<'_>]) -> Result<Vec<(String, String)>> {
        let mut versions = Vec::new();
        for f in files {
            let pj = read_package_json(f.stored).with_context(|| f.file.path.clone())?;
            versions.push((f.file, pj, integrity_of(f.stored)?));
        }
        render(&versions)
    }

    fn nginx_locations(&self) -> &'static str {
        NGINX_LOCATIONS
    }

    fn index_entry(&self) -> IndexEntry {
        IndexEntry { heading: "npm", usage: format!("<code>npm config set registry {PLACEHOLDER}/npm/</code>") }
    }

    /// `npm/<name>/-/<unscoped name>-<version>.tgz`, as every npm registry names tarballs.
    fn identity(&self, file: &LockedFile, _stored: &Path) -> Result<Identity> {
        let rel = super::ecosystem::below(&file.path, "npm/")?;
        let (name, tarball) =
            rel.split_once("/-/").with_context(|| format!("`{}` is not npm/<name>/-/<file>", file.path))?;
        let unscoped = name.rsplit('/').next().unwrap_or(name);
        let version = tarball
            .strip_suffix(".tgz")
            .and_then(|stem| stem.strip_prefix(&format!("{unscoped}-")))
            .filter(|v| is_package_name(name) && is_module_version(&format!("v{v}")))
            .with_context(|| format!("`{}` is not npm/<name>/-/<name>-<version>.tgz", file.path))?
            .to_string();
        let purl = match name.split_once('/') {
            Some((scope, bare)) => {
                format!("pkg:npm/{}/{}@{}", purl_escape(scope), purl_escape(bare), purl_escape(&version))
            }
            None => format!("pkg:npm/{}@{}", purl_escape(name), purl_escape(&version)),
        };
        Ok(Identity { name: name.to_string(), version, kind: FileKind::Package { purl } })
    }
}

impl Settings for NpmPlan {
    fn inputs(&self) -> String {
        format!("{self:?}")
    }

    fn resolve(&self, dl: &mut Downloader, store: &BlobStore) -> Result<Vec<LockedFile>> {
        resolve(self, dl, store)
    }
}

/// A valid npm package name (optionally scoped): lower-case URL-safe characters, no leading
/// `.` or `_`, at most 214 characters.
pub fn is_package_name(name: &str) -> bool {
    let part_ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.starts_with('_')
            && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._~".contains(&b))
    };
    if name.len() > 214 {
        return false;
    }
    match name.strip_prefix('@') {
        Some(scoped) => scoped.split_once('/').is_some_and(|(s, n)| part_ok(s) && part_ok(n) && !n.contains('/')),
        None => part_ok(name),
    }
}

/// A package the lock file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub resolved: String,
    pub integrity: String,
}

/// Reads `package-lock.json` (lockfile version 2 or 3): every package with a tarball.
pub fn parse_package_lock(json: &[u8]) -> Result<Vec<LockedPackage>> {
    let lock: Value = serde_json::from_slice(json).context("package-lock.json is not JSON")?;
    let Some(packages) = lock.get("packages").and_then(Value::as_object) else {
        bail!("package-lock.json has no `packages` (lockfile version 2 or later is needed)");
    };
    let mut out = Vec::new();
    for (key, p) in packages {
        if key.is_empty() || p.get("link").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        // Bundled dependencies arrive inside their parent's tarball.
        if p.get("inBundle").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let name = match p.get("name").and_then(Value::as_str) {
            Some(n) => n.to_string(),
            None => key.rsplit_once("node_modules/").map(|(_, n)| n.to_string()).unwrap_or_default(),
        };
        if !is_package_name(&name) {
            bail!("package-lock.json: `{key}` is not a valid package name");
        }
        let field = |f: &str| p.get(f).and_then(Value::as_str).map(str::to_string);
        let (Some(version), Some(resolved), Some(integrity)) =
            (field("version"), field("resolved"), field("integrity"))
        else {
            bail!("package-lock.json: `{key}` lacks version, resolved or integrity");
        };
        if !is_module_version(&format!("v{version}")) {
            bail!("package-lock.json: `{key}` has version `{version}`");
        }
        out.push(LockedPackage { name, version, resolved, integrity });
    }
    out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    out.dedup_by(|a, b| a.name == b.name && a.version == b.version);
    Ok(out)
}

/// Checks bytes against an SRI `integrity` string; only `sha512` is accepted (what the registry
/// has given every package since 2017).
pub fn check_integrity(path: &Path, integrity: &str, what: &str) -> Result<()> {
    let wanted: Vec<&str> = integrity.split_whitespace().filter(|i| i.starts_with("sha512-")).collect();
    if wanted.is_empty() {
        bail!("{what}: integrity `{integrity}` has no sha512 hash");
    }
    let actual = integrity_of(path)?;
    if !wanted.contains(&actual.as_str()) {
        bail!("{what}: sha512 is {actual}, but the package lock says {integrity}");
    }
    Ok(())
}

/// Resolves the packages with npm and downloads every tarball.
fn resolve(p: &NpmPlan, dl: &mut Downloader, store: &BlobStore) -> Result<Vec<LockedFile>> {
    let tmp = crate::interrupt::ScratchDir::new("airlock-npm-")?;
    std::fs::write(
        tmp.path().join("package.json"),
        "{\"name\": \"airlock-mirror\", \"version\": \"0.0.0\", \"private\": true}\n",
    )
    .context("writing package.json")?;
    Cmd::new("npm")
        .args(["install", "--package-lock-only", "--ignore-scripts", "--no-audit", "--no-fund"])
        // Keep the tarball URLs in the lock even where the host's .npmrc leaves them out.
        .arg("--omit-lockfile-registry-resolved=false")
        .arg("--")
        .args(&p.packages)
        .current_dir(tmp.path())
        .run()
        .context("resolving with npm")?;
    let lock = std::fs::read(tmp.path().join("package-lock.json")).context("reading npm's package-lock.json")?;
    let mut files = Vec::new();
    for pkg in parse_package_lock(&lock)? {
        let file_name = pkg.resolved.rsplit('/').next().unwrap_or_default();
        check_file_name(file_name, &format!("{}@{}", pkg.name, pkg.version))?;
        let fetched = dl.fetch(&pkg.resolved, &Expect::default(), store)?;
        check_integrity(&fetched.path, &pkg.integrity, &format!("{}@{} from {}", pkg.name, pkg.version, pkg.resolved))?;
        files.push(LockedFile::fetched(format!("npm/{}/-/{file_name}", pkg.name), &pkg.resolved, &fetched));
    }
    Ok(files)
}

/// The `package.json` inside an npm tarball (the one file in the archive's top folder).
pub fn read_package_json(tgz: &Path) -> Result<Value> {
    let file = std::fs::File::open(tgz).with_context(|| format!("opening {}", tgz.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in archive.entries().with_context(|| format!("reading {}", tgz.display()))? {
        let mut entry = entry.with_context(|| format!("reading {}", tgz.display()))?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut parts = path.split('/');
        if let (Some(_), Some("package.json"), None) = (parts.next(), parts.next(), parts.next()) {
            let mut text = Vec::new();
            entry.by_ref().take(super::download::MAX_METADATA).read_to_end(&mut text)?;
            return serde_json::from_slice(&text)
                .with_context(|| format!("{}: package.json is not JSON", tgz.display()));
        }
    }
    bail!("{} holds no package.json", tgz.display())
}

/// The fields of a version document a client needs to resolve and install.
const VERSION_FIELDS: &[&str] = &[
    "dependencies",
    "optionalDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "bundleDependencies",
    "bundledDependencies",
    "engines",
    "os",
    "cpu",
    "libc",
    "bin",
    "directories",
    "deprecated",
    "license",
    "main",
    "types",
    "description",
];

/// Orders dotted numeric versions; a pre-release ranks below its release.
fn version_key(v: &str) -> (Vec<u64>, bool, String) {
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (v.split('+').next().unwrap_or(v), None),
    };
    (core.split('.').map(|n| n.parse().unwrap_or(0)).collect(), pre.is_none(), pre.unwrap_or("").to_string())
}

fn latest_key(v: &str) -> (bool, (Vec<u64>, bool, String)) {
    let key = version_key(v);
    (key.1, key)
}

/// One packument per package name, from (lock entry, package.json, sha512 integrity) of every
/// mirrored version. Returns (path relative to the mirror root, JSON).
pub fn render(versions: &[(&LockedFile, Value, String)]) -> Result<Vec<(String, String)>> {
    let mut by_name: BTreeMap<String, Vec<(&LockedFile, &Value, &String)>> = BTreeMap::new();
    for (f, pj, integrity) in versions {
        let name = pj.get("name").and_then(Value::as_str).unwrap_or_default();
        let expected_prefix = format!("npm/{name}/-/");
        if !is_package_name(name) || !f.path.starts_with(&expected_prefix) {
            bail!("{}: its package.json names package `{name}`", f.path);
        }
        by_name.entry(name.to_string()).or_default().push((f, pj, integrity));
    }
    let mut out = Vec::new();
    for (name, list) in by_name {
        let mut docs = Map::new();
        let mut latest: Option<String> = None;
        for (f, pj, integrity) in list {
            let version = pj.get("version").and_then(Value::as_str).unwrap_or_default().to_string();
            if !is_module_version(&format!("v{version}")) {
                bail!("{}: package.json has version `{version}`", f.path);
            }
            let mut doc = Map::new();
            doc.insert("name".into(), json!(name));
            doc.insert("version".into(), json!(version));
            for field in VERSION_FIELDS {
                if let Some(v) = pj.get(*field) {
                    doc.insert((*field).into(), v.clone());
                }
            }
            if pj
                .get("scripts")
                .and_then(|s| s.as_object())
                .is_some_and(|s| ["preinstall", "install", "postinstall"].iter().any(|k| s.contains_key(*k)))
            {
                doc.insert("hasInstallScript".into(), json!(true));
            }
            doc.insert(
                "dist".into(),
                json!({ "tarball": format!("{}/{}", PLACEHOLDER, f.path), "integrity": integrity }),
            );
            // The highest release; a pre-release only when nothing else is mirrored.
            if latest.as_ref().is_none_or(|l| latest_key(&version) > latest_key(l)) {
                latest = Some(version.clone());
            }
            docs.insert(version, Value::Object(doc));
        }
        let packument = json!({
            "name": name,
            "dist-tags": { "latest": latest.unwrap_or_default() },
            "versions": docs,
        });
        out.push((format!("npm/{name}/index.json"), serde_json::to_string_pretty(&packument)? + "\n"));
    }
    Ok(out)
}

/// The SRI sha512 of a file.
pub fn integrity_of(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha512::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["@pulumi/pulumi", "left-pad", "a.b_c~d"] {
            assert!(is_package_name(good), "{good}");
        }
        for bad in ["../x", "@scope/../x", "@scope/a/b", "Caps", ".hidden", "", "@/x", "a%2f..", "a/b"] {
            assert!(!is_package_name(bad), "{bad}");
        }
    }

    #[test]
    fn package_locks_list_every_tarball_and_refuse_hostile_names() {
        let lock = br#"{"lockfileVersion": 3, "packages": {
            "": {"name": "x"},
            "node_modules/@pulumi/pulumi": {"version": "3.1.0", "resolved": "https://r.example.test/@pulumi/pulumi/-/pulumi-3.1.0.tgz", "integrity": "sha512-AA=="},
            "node_modules/a/node_modules/b": {"version": "1.0.0", "resolved": "https://r.example.test/b/-/b-1.0.0.tgz", "integrity": "sha512-AA=="},
            "node_modules/bundled": {"version": "1.0.0", "inBundle": true},
            "node_modules/linked": {"link": true, "resolved": "../x"}
        }}"#;
        let pkgs = parse_package_lock(lock).unwrap();
        let names: Vec<&str> = pkgs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["@pulumi/pulumi", "b"]);
        let evil = String::from_utf8_lossy(lock).replace("node_modules/a/node_modules/b", "node_modules/../../etc");
        assert!(parse_package_lock(evil.as_bytes()).is_err());
        let no_integrity = String::from_utf8_lossy(lock).replace(", \"integrity\": \"sha512-AA==\"}", "}");
        assert!(parse_package_lock(no_integrity.as_bytes()).is_err());
    }

    #[test]
    fn integrity_must_match_sha512() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), b"tarball").unwrap();
        let good = integrity_of(tmp.path()).unwrap();
        check_integrity(tmp.path(), &good, "t").unwrap();
        check_integrity(tmp.path(), &format!("sha1-xyz {good}"), "t").unwrap();
        assert!(check_integrity(tmp.path(), "sha512-AAAA", "t").is_err());
        assert!(check_integrity(tmp.path(), "sha1-AAAA", "t").is_err());
    }

    #[test]
    fn packuments_point_at_the_mirror_and_tag_the_highest_version() {
        let file = |v: &str| LockedFile {
            path: format!("npm/@scope/pkg/-/pkg-{v}.tgz"),
            origin: "https://r.example.test/x.tgz".into(),
            sha256: "00".repeat(32),
            size: 1,
            requires_python: None,
        };
        let (a, b, c) = (file("1.10.0"), file("1.9.0"), file("2.0.0-rc.1"));
        let pj = |v: &str| json!({"name": "@scope/pkg", "version": v, "dependencies": {"x": "^1"}, "os": ["linux"], "scripts": {"postinstall": "x"}, "devDependencies": {"y": "1"}});
        let list = vec![
            (&a, pj("1.10.0"), "sha512-A".to_string()),
            (&b, pj("1.9.0"), "sha512-B".to_string()),
            (&c, pj("2.0.0-rc.1"), "sha512-C".to_string()),
        ];
        let out = render(&list).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "npm/@scope/pkg/index.json");
        let doc: Value = serde_json::from_str(&out[0].1).unwrap();
        assert_eq!(doc["dist-tags"]["latest"], "1.10.0");
        let v = &doc["versions"]["1.9.0"];
        assert_eq!(v["dist"]["tarball"], format!("{}/npm/@scope/pkg/-/pkg-1.9.0.tgz", PLACEHOLDER));
        assert_eq!(v["dist"]["integrity"], "sha512-B");
        assert_eq!(v["dependencies"]["x"], "^1");
        assert_eq!(v["os"][0], "linux");
        assert_eq!(v["hasInstallScript"], true);
        assert!(v.get("devDependencies").is_none());
        // A tarball whose package.json names another package is refused.
        let liar = (&a, json!({"name": "other", "version": "1.0.0"}), String::new());
        assert!(render(&[liar]).is_err());
    }
}
