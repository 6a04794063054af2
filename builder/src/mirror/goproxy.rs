//! Go modules: a client of the module proxy protocol (`go help goproxy`) and the static tree
//! that serves it back.
//!
//! The proxy is an http(s) URL, a folder in the same layout, or the first proxy of the build
//! host's `go env GOPROXY` when the spec says `proxy = "host"`. Which files the mirror needs is
//! decided by the ecosystem's own resolver when the build host has a Go toolchain: `go mod
//! download -json all` in a module that requires the spec's modules, in an empty module cache
//! (with the host's Go configuration for `host`; otherwise only the proxy, and no checksum
//! database); every `.mod` in that cache, its `.info`, and the `.zip` where Go downloaded one
//! are then fetched from the proxy byte for byte (each `.zip` must equal the one Go verified).
//! Without Go, airlock's own protocol client fetches `@v/<version>.info`, `.mod` and `.zip` for
//! every module of the spec and, transitively, for every requirement its `go.mod` lists: more
//! than Go's pruned graph needs, never less. Paths and versions are case-escaped (`!` + lower
//! case) as the protocol says.
//!
//! Served: `go/<escaped module>/@v/{list,<v>.info,<v>.mod,<v>.zip}`. Clients use
//! `GOPROXY=<mirror>/go,off GOSUMDB=off` (the checksum database is not mirrored).

use super::download::{Downloader, Expect};
use super::ecosystem::{
    Ecosystem, FileKind, Identity, IndexEntry, LockedFile, PLACEHOLDER, Settings, SpecContext, StoredFile,
    check_served_path, is_module_version, purl_escape,
};
use super::source::Source;
use crate::command::Cmd;
use crate::oci::BlobStore;
use crate::spec::PlanError;
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// The Go module ecosystem (`[mirrors.go]`, served at `go/`).
#[derive(Debug)]
pub struct GoModules;

/// `[mirrors.go]` as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GoSpec {
    /// `module@version` (`github.com/pulumi/pulumi/sdk/v3@v3.140.0`).
    modules: Vec<String>,
    /// The module proxy to fetch from: an http(s) URL, a folder in the GOPROXY layout relative
    /// to the spec, or `host` for the first proxy URL of the build host's `go env GOPROXY`.
    proxy: String,
}

/// Where Go modules come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoProxy {
    Source(Source),
    /// The first proxy URL of the build host's `go env GOPROXY` (looked up at fetch).
    Host,
}

impl fmt::Display for GoProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Source(s) => s.fmt(f),
            Self::Host => f.write_str("host"),
        }
    }
}

/// `[mirrors.go]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoPlan {
    /// (module path, version).
    pub modules: Vec<(String, String)>,
    pub proxy: GoProxy,
}

/// A Go module path: slash-separated elements of letters, digits and `-._~`, none `.` or `..`,
/// the first with a dot (a domain) or a single element.
pub fn is_module_path(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 400
        && !s.starts_with('/')
        && !s.ends_with('/')
        && s.split('/').all(|e| {
            !e.is_empty()
                && e != "."
                && e != ".."
                && !e.starts_with('.')
                && e.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+".contains(&b))
        })
}

/// nginx: the protocol's documents are text; module zips are zips.
const NGINX_LOCATIONS: &str = r#"    location /go/ {
        types { }
        default_type text/plain;
        location ~ "\.zip$" {
            types { }
            default_type application/zip;
        }
    }
"#;

impl Ecosystem for GoModules {
    fn name(&self) -> &'static str {
        "go"
    }

    fn spec_key(&self) -> &'static str {
        "mirrors.go"
    }

    fn validate(&self, section: toml::Value, spec: &SpecContext<'_>) -> Result<Arc<dyn Settings>, PlanError> {
        let g: GoSpec = spec.section(self.spec_key(), section)?;
        let mut modules = Vec::new();
        for m in &g.modules {
            let ok = m.rsplit_once('@').filter(|(p, v)| is_module_path(p) && is_module_version(v));
            let Some((path, version)) = ok else {
                return Err(spec.err("mirrors.go.modules", format!("`{m}` is not `module/path@vX.Y.Z`")));
            };
            modules.push((path.to_string(), version.to_string()));
        }
        if modules.is_empty() {
            return Err(spec.err("mirrors.go.modules", "lists nothing"));
        }
        let proxy = if g.proxy == "host" {
            GoProxy::Host
        } else {
            GoProxy::Source(Source::parse(&g.proxy, spec.spec_dir).map_err(|e| spec.err("mirrors.go.proxy", e))?)
        };
        Ok(Arc::new(GoPlan { modules, proxy }))
    }

    fn render(&self, files: &[StoredFile<'_>]) -> Result<Vec<(String, String)>> {
        let locked: Vec<LockedFile> = files.iter().map(|f| f.file.clone()).collect();
        Ok(render(&locked))
    }

    fn nginx_locations(&self) -> &'static str {
        NGINX_LOCATIONS
    }

    fn index_entry(&self) -> IndexEntry {
        IndexEntry { heading: "Go modules", usage: format!("<code>GOPROXY={PLACEHOLDER}/go,off GOSUMDB=off</code>") }
    }

    /// `go/<escaped module>/@v/<escaped version>.<info|mod|zip>`: the `.zip` is the module's
    /// code, the SBOM package; `.info` and `.mod` are the protocol's documents about it (a
    /// module Go needed only the `go.mod` of has no zip here, and no code on the appliance).
    fn identity(&self, file: &LockedFile, _stored: &Path) -> Result<Identity> {
        let rel = super::ecosystem::below(&file.path, "go/")?;
        let shape = || format!("`{}` is not go/<module>/@v/<version>.<info|mod|zip>", file.path);
        let (module, file_name) = rel.split_once("/@v/").with_context(shape)?;
        let (version, ext) = file_name.rsplit_once('.').with_context(shape)?;
        let (module, version) = (unescape(module), unescape(version));
        if !is_module_path(&module) || !is_module_version(&version) {
            bail!("{}", shape());
        }
        let kind = match ext {
            "zip" => {
                let purl_path: Vec<String> = module.split('/').map(purl_escape).collect();
                FileKind::Package { purl: format!("pkg:golang/{}@{}", purl_path.join("/"), purl_escape(&version)) }
            }
            "info" | "mod" => FileKind::Metadata,
            _ => bail!("{}", shape()),
        };
        Ok(Identity { name: module, version, kind })
    }
}

impl Settings for GoPlan {
    fn inputs(&self) -> String {
        inputs(self)
    }

    fn resolve(&self, dl: &mut Downloader, store: &BlobStore) -> Result<Vec<LockedFile>> {
        resolve(self, dl, store)
    }
}

/// The protocol's case escaping: every upper-case letter becomes `!` and its lower case.
pub fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// What the lock's inputs digest covers.
pub fn inputs(p: &GoPlan) -> String {
    format!("{:?} {}", p.modules, p.proxy)
}

/// The `require`d (module, version) pairs of a `go.mod`.
pub fn requirements(go_mod: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    // Inside `require (` ... `)`, or inside another directive's block.
    let (mut in_require, mut in_other) = (false, false);
    for raw in go_mod.lines() {
        let line = raw.split("//").next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if in_require || in_other {
            if line == ")" {
                (in_require, in_other) = (false, false);
                continue;
            }
            if in_other {
                continue;
            }
        }
        let spec = if in_require {
            line
        } else {
            let (directive, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            if directive != "require" {
                in_other = rest == "(";
                continue;
            }
            if rest == "(" {
                in_require = true;
                continue;
            }
            rest
        };
        let fields: Vec<&str> = spec.split_whitespace().collect();
        let [path, version] = fields[..] else { bail!("go.mod: cannot read requirement `{spec}`") };
        let path = path.trim_matches('"');
        if !is_module_path(path) || !is_module_version(version) {
            bail!("go.mod: `{path} {version}` is not a module path and version");
        }
        out.push((path.to_string(), version.to_string()));
    }
    Ok(out)
}

/// The first proxy URL of `go env GOPROXY` on the build host.
fn host_proxy() -> Result<String> {
    let value = Cmd::new("go").args(["env", "GOPROXY"]).output_text().context("asking the host's Go for GOPROXY")?;
    value
        .trim()
        .split([',', '|'])
        .find(|p| p.starts_with("http://") || p.starts_with("https://"))
        .map(|p| p.trim_end_matches('/').to_string())
        .with_context(|| format!("the host's GOPROXY `{}` names no http(s) proxy", value.trim()))
}

/// Fetches the module graph: with the host's Go when there is one, else with the protocol
/// client.
fn resolve(p: &GoPlan, dl: &mut Downloader, store: &BlobStore) -> Result<Vec<LockedFile>> {
    let base = match &p.proxy {
        GoProxy::Source(s) => s.clone(),
        GoProxy::Host => Source::Url(host_proxy()?),
    };
    if Cmd::new("go").arg("version").output().is_ok() {
        log::info!("mirror go: resolving with the host's go mod download");
        resolve_with_go(p, &base, dl, store)
    } else {
        log::info!("mirror go: no Go toolchain on the host; following go.mod requirements with the proxy protocol");
        resolve_protocol(p, &base, dl, store)
    }
}

/// `go mod download -json all` in a scratch module, then every file it needed from the proxy.
fn resolve_with_go(p: &GoPlan, base: &Source, dl: &mut Downloader, store: &BlobStore) -> Result<Vec<LockedFile>> {
    // Removed when done, and on SIGINT/SIGTERM (a module cache is large).
    let tmp = crate::interrupt::ScratchDir::new("airlock-go-")?;
    let module = tmp.path().join("resolve");
    std::fs::create_dir_all(&module)?;
    let mut go_mod = String::from("module airlock.mirror/resolve\n\ngo 1.19\n\nrequire (\n");
    for (path, version) in &p.modules {
        go_mod.push_str(&format!("\t{path} {version}\n"));
    }
    go_mod.push_str(")\n");
    std::fs::write(module.join("go.mod"), go_mod).context("writing the scratch go.mod")?;
    let modcache = tmp.path().join("mod");
    let mut cmd = Cmd::new("go")
        .args(["mod", "download", "-json", "all"])
        .current_dir(&module)
        .env("GOPATH", tmp.path().join("gopath"))
        .env("GOMODCACHE", &modcache)
        .env("GOCACHE", tmp.path().join("cache"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local");
    if let GoProxy::Source(source) = &p.proxy {
        let proxy = match source {
            Source::Url(u) => u.clone(),
            Source::Path { full, .. } => {
                let abs =
                    std::fs::canonicalize(full).with_context(|| format!("mirrors.go.proxy {}", full.display()))?;
                format!("file://{}", abs.display())
            }
        };
        cmd = cmd
            .env("GOENV", "off")
            .env("GOPROXY", proxy)
            .env("GOSUMDB", "off")
            .env("GONOSUMDB", "")
            .env("GOPRIVATE", "");
    }
    let result = cmd.run().context("go mod download");
    let files = result.and_then(|()| {
        let download = modcache.join("cache/download");
        let mut wanted = Vec::new();
        collect_cached(&download, &download, &mut wanted)?;
        let mut files = Vec::new();
        for (dir, version, has_zip) in wanted {
            for ext in ["info", "mod", "zip"] {
                if ext == "zip" && !has_zip {
                    continue;
                }
                let rel = format!("{dir}/{version}.{ext}");
                let src = base.join(&rel);
                let fetched = dl.fetch(src.origin(), &Expect::default(), store).with_context(|| rel.clone())?;
                if ext == "zip" {
                    let cached = std::fs::read(download.join(&rel)).with_context(|| format!("reading Go's {rel}"))?;
                    if crate::oci::Digest::of_bytes(&cached) != fetched.digest {
                        bail!("{rel}: the proxy served other bytes than Go downloaded and verified");
                    }
                }
                files.push(LockedFile::fetched(format!("go/{rel}"), src.origin(), &fetched));
            }
        }
        Ok(files)
    });
    // Go makes its module cache read-only; give it back so the scratch folder can go.
    let _ = Cmd::new("chmod").args(["-R", "u+w"]).arg(tmp.path()).run();
    files
}

/// The `(<escaped module>/@v, version, zip downloaded)` of every `.mod` in Go's download cache.
fn collect_cached(top: &Path, dir: &Path, out: &mut Vec<(String, String, bool)>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            // The checksum database's cache is not part of the module proxy.
            if path == top.join("sumdb") {
                continue;
            }
            collect_cached(top, &path, out)?;
        } else if let Some(version) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".mod")) {
            let rel = path.parent().and_then(|p| p.strip_prefix(top).ok()).context("a cache file outside the cache")?;
            let rel = rel.to_str().context("a non-UTF-8 module path")?.to_string();
            if !rel.ends_with("/@v") {
                continue;
            }
            // Escaped paths (`!` + lower case) in the cache: checked as the served path they become.
            check_served_path(&format!("go/{rel}/{version}.mod"), "go")
                .map_err(|e| anyhow::anyhow!("Go's module cache: {e}"))?;
            let has_zip = path.with_file_name(format!("{version}.zip")).is_file();
            out.push((rel, version.to_string(), has_zip));
        }
    }
    out.sort();
    Ok(())
}

/// airlock's own protocol client: every module of the spec and, transitively, of every
/// `require` in the `go.mod` files it fetches, with `.info`, `.mod` and `.zip`.
pub fn resolve_protocol(p: &GoPlan, base: &Source, dl: &mut Downloader, store: &BlobStore) -> Result<Vec<LockedFile>> {
    let mut todo: Vec<(String, String)> = p.modules.iter().rev().cloned().collect();
    let mut done: BTreeSet<(String, String)> = BTreeSet::new();
    let mut files = Vec::new();
    while let Some((module, version)) = todo.pop() {
        if !done.insert((module.clone(), version.clone())) {
            continue;
        }
        let dir = format!("{}/@v", escape(&module));
        let what = format!("{module}@{version}");
        let ver = escape(&version);
        let info_src = base.join(&format!("{dir}/{ver}.info"));
        let info = dl.get(info_src.origin()).with_context(|| format!("{what}: .info"))?;
        #[derive(serde::Deserialize)]
        struct Info {
            #[serde(rename = "Version")]
            version: String,
        }
        let parsed: Info = serde_json::from_slice(&info).with_context(|| format!("{what}: .info is not JSON"))?;
        if parsed.version != version {
            bail!("{what}: the proxy's .info says version {}", parsed.version);
        }
        for ext in ["info", "mod", "zip"] {
            let src = base.join(&format!("{dir}/{ver}.{ext}"));
            let fetched =
                dl.fetch(src.origin(), &Expect::default(), store).with_context(|| format!("{what}: .{ext}"))?;
            if ext == "mod" {
                let text =
                    std::fs::read_to_string(&fetched.path).with_context(|| format!("{what}: go.mod is not UTF-8"))?;
                for req in requirements(&text).with_context(|| what.clone())? {
                    if !done.contains(&req) {
                        todo.push(req);
                    }
                }
            }
            files.push(LockedFile::fetched(format!("go/{dir}/{ver}.{ext}"), src.origin(), &fetched));
        }
    }
    Ok(files)
}

/// `@v/list` for every module: its versions, one a line, in semantic version order.
pub fn render(files: &[LockedFile]) -> Vec<(String, String)> {
    let mut lists: BTreeMap<String, BTreeSet<(Vec<u64>, String)>> = BTreeMap::new();
    for f in files {
        let Some(stem) = f.path.strip_suffix(".info") else { continue };
        let Some((dir, version)) = stem.rsplit_once('/') else { continue };
        let core = version.trim_start_matches('v').split(['-', '+']).next().unwrap_or("");
        let key: Vec<u64> = core.split('.').map(|n| n.parse().unwrap_or(0)).collect();
        lists.entry(dir.to_string()).or_default().insert((key, version.to_string()));
    }
    lists
        .into_iter()
        .map(|(dir, versions)| {
            let text: String = versions.into_iter().map(|(_, v)| unescape(&v) + "\n").collect();
            (format!("{dir}/list"), text)
        })
        .collect()
}

/// The protocol's case escaping undone: `!` + a lower-case letter is that letter upper case.
fn unescape(v: &str) -> String {
    let mut out = String::new();
    let mut bang = false;
    for c in v.chars() {
        if c == '!' {
            bang = true;
        } else if bang {
            out.push(c.to_ascii_uppercase());
            bang = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_upper_case() {
        assert_eq!(escape("github.com/Azure/azure-sdk"), "github.com/!azure/azure-sdk");
        assert_eq!(unescape("v1.0.0-!r!c1"), "v1.0.0-RC1");
    }

    #[test]
    fn reads_requirements() {
        let m = "module example.test/a\n\ngo 1.21\n\nrequire example.test/b v1.0.0\n\nrequire (\n\texample.test/C v0.2.0 // indirect\n\t\"example.test/d\" v1.1.0\n)\n\nreplace example.test/x => ../x\n";
        assert_eq!(
            requirements(m).unwrap(),
            [
                ("example.test/b".to_string(), "v1.0.0".to_string()),
                ("example.test/C".to_string(), "v0.2.0".to_string()),
                ("example.test/d".to_string(), "v1.1.0".to_string())
            ]
        );
        assert!(requirements("require ../../etc v1.0.0\n").is_err());
        assert!(requirements("require example.test/b\n").is_err());
    }

    #[test]
    fn lists_versions_in_order() {
        let f = |p: &str| LockedFile {
            path: p.into(),
            origin: String::new(),
            sha256: "00".repeat(32),
            size: 1,
            requires_python: None,
        };
        let files = [
            f("go/example.test/!a/@v/v1.10.0.info"),
            f("go/example.test/!a/@v/v1.9.0.info"),
            f("go/example.test/!a/@v/v1.9.0.zip"),
        ];
        assert_eq!(render(&files), [("go/example.test/!a/@v/list".to_string(), "v1.9.0\nv1.10.0\n".to_string())]);
    }

    #[test]
    fn fetches_the_requirement_graph_from_a_proxy() {
        // A fake proxy on 127.0.0.1: module A requires B; B requires nothing.
        let (base, seen) = crate::mirror::download::tests::serve(|path| {
            let body: &[u8] = match path {
                "/example.test/!a/@v/v1.0.0.info" => br#"{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}"#,
                "/example.test/!a/@v/v1.0.0.mod" => b"module example.test/A\n\nrequire example.test/b v0.1.0\n",
                "/example.test/!a/@v/v1.0.0.zip" => b"PK-zip-of-A",
                "/example.test/b/@v/v0.1.0.info" => br#"{"Version":"v0.1.0","Time":"2024-01-01T00:00:00Z"}"#,
                "/example.test/b/@v/v0.1.0.mod" => b"module example.test/b\n",
                "/example.test/b/@v/v0.1.0.zip" => b"PK-zip-of-b",
                _ => return (404, Vec::new(), None),
            };
            (200, body.to_vec(), None)
        });
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(tmp.path()).unwrap();
        let mut dl = Downloader::new(tmp.path());
        let plan = GoPlan {
            modules: vec![("example.test/A".into(), "v1.0.0".into())],
            proxy: GoProxy::Source(Source::Url(base.clone())),
        };
        let files = resolve_protocol(&plan, &Source::Url(base.clone()), &mut dl, &store).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths.len(), 6, "{paths:?}");
        assert!(
            paths.contains(&"go/example.test/!a/@v/v1.0.0.zip") && paths.contains(&"go/example.test/b/@v/v0.1.0.mod")
        );
        assert!(seen.lock().unwrap().iter().all(|p| !p.contains('A')), "paths are case-escaped");
        let zip = files.iter().find(|f| f.path.ends_with("b/@v/v0.1.0.zip")).unwrap();
        assert_eq!(zip.origin, format!("{base}/example.test/b/@v/v0.1.0.zip"));

        // A proxy that lies about the version is refused.
        let (liar, _) = crate::mirror::download::tests::serve(|_| (200, br#"{"Version":"v9.9.9"}"#.to_vec(), None));
        let e = resolve_protocol(&plan, &Source::Url(liar), &mut dl, &store).unwrap_err();
        assert!(format!("{e:#}").contains("v9.9.9"), "{e:#}");
    }
}
