//! NuGet: a client of the v3 protocol's service index and flat container
//! (`PackageBaseAddress/3.0.0`), and the static feed that serves the packages back.
//!
//! The spec's `source` is a service index URL (its `PackageBaseAddress` resource is where the
//! packages are) or a folder in the flat container layout. Each `Id@Version` is downloaded as
//! `<base>/<id>/<version>/<id>.<version>.nupkg` (lower case), and the dependencies its
//! `.nuspec` declares (every target framework group) are resolved as NuGet does: the lowest
//! version the feed lists (`<base>/<id>/index.json`) that satisfies the range, pre-releases
//! only when the range's lower bound is one; transitively.
//!
//! Served: `nuget/v3/index.json` (the service index, with absolute URLs through
//! [`PLACEHOLDER`]), `nuget/v3/flat/<id>/index.json` (`{"versions": [...]}`) and the
//! packages under `nuget/v3/flat/`.

use super::download::{Downloader, Expect};
use super::ecosystem::{
    Ecosystem, FileKind, Identity, IndexEntry, LockedFile, PLACEHOLDER, Settings, SpecContext, StoredFile,
    is_module_version, is_version, purl_escape,
};
use super::source::Source;
use crate::oci::BlobStore;
use crate::spec::PlanError;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The NuGet ecosystem (`[mirrors.nuget]`, served at `nuget/`).
#[derive(Debug)]
pub struct Nuget;

/// `[mirrors.nuget]` as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NugetSpec {
    /// `Id@Version` (`Pulumi@3.71.0`).
    packages: Vec<String>,
    /// A NuGet v3 service index URL (`https://host/v3/index.json`), or a folder relative to the
    /// spec in the flat container layout (`<id>/<version>/<id>.<version>.nupkg`, lower case).
    source: String,
}

/// `[mirrors.nuget]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NugetPlan {
    /// (id, version) as written.
    pub packages: Vec<(String, String)>,
    pub source: Source,
}

/// A NuGet package id.
pub fn is_nuget_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !s.contains("..")
}

/// nginx: the feed's JSON documents carry absolute URLs (`sub_filter` completes them);
/// packages are served as bytes.
const NGINX_LOCATIONS: &str = r#"    location /nuget/ {
        sub_filter_types application/json;
    }
    location ~ "\.nupkg$" {
        types { }
        default_type application/octet-stream;
    }
"#;

impl Ecosystem for Nuget {
    fn name(&self) -> &'static str {
        "nuget"
    }

    fn spec_key(&self) -> &'static str {
        "mirrors.nuget"
    }

    fn validate(&self, section: toml::Value, spec: &SpecContext<'_>) -> Result<Arc<dyn Settings>, PlanError> {
        let n: NugetSpec = spec.section(self.spec_key(), section)?;
        let mut packages = Vec::new();
        for p in &n.packages {
            let ok = p.split_once('@').filter(|(id, v)| is_nuget_id(id) && is_version(v));
            let Some((id, version)) = ok else {
                return Err(spec.err("mirrors.nuget.packages", format!("`{p}` is not `Id@Version`")));
            };
            packages.push((id.to_string(), version.to_string()));
        }
        if packages.is_empty() {
            return Err(spec.err("mirrors.nuget.packages", "lists nothing"));
        }
        let source = Source::parse(&n.source, spec.spec_dir).map_err(|e| spec.err("mirrors.nuget.source", e))?;
        Ok(Arc::new(NugetPlan { packages, source }))
    }

    fn render(&self, files: &[StoredFile<'_>]) -> Result<Vec<(String, String)>> {
        let locked: Vec<LockedFile> = files.iter().map(|f| f.file.clone()).collect();
        render(&locked)
    }

    fn nginx_locations(&self) -> &'static str {
        NGINX_LOCATIONS
    }

    fn index_entry(&self) -> IndexEntry {
        IndexEntry { heading: "NuGet", usage: format!("source <code>{PLACEHOLDER}/nuget/v3/index.json</code>") }
    }

    /// The flat container's path has the id and version in lower case; the package's own
    /// `.nuspec` spells them as published (`Pulumi.Aws`), which is what purls use. The two must
    /// agree.
    fn identity(&self, file: &LockedFile, stored: &Path) -> Result<Identity> {
        let rel = super::ecosystem::below(&file.path, "nuget/v3/flat/")?;
        let parts: Vec<&str> = rel.split('/').collect();
        let [id, version, name] = parts[..] else {
            bail!("`{}` is not nuget/v3/flat/<id>/<version>/<file>", file.path)
        };
        if name != format!("{id}.{version}.nupkg") {
            bail!("`{}` is not nuget/v3/flat/<id>/<version>/<id>.<version>.nupkg", file.path);
        }
        let nuspec = read_nuspec(stored, &file.path)?;
        let (Some(spelled), Some(published)) = (element(&nuspec, "id"), element(&nuspec, "version")) else {
            bail!("{}: its .nuspec names no id or version", file.path);
        };
        if spelled.to_lowercase() != id || published.to_lowercase() != version {
            bail!("{}: its .nuspec says {spelled} {published}", file.path);
        }
        let purl = format!("pkg:nuget/{}@{}", purl_escape(&spelled), purl_escape(&published));
        Ok(Identity { name: spelled, version: published, kind: FileKind::Package { purl } })
    }
}

impl Settings for NugetPlan {
    fn inputs(&self) -> String {
        inputs(self)
    }

    fn resolve(&self, dl: &mut Downloader, store: &BlobStore) -> Result<Vec<LockedFile>> {
        resolve(self, dl, store)
    }
}

/// The text of the first element `<name>` of an XML document (no attributes on it, as in a
/// `.nuspec`'s metadata).
fn element(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..end].trim().to_string())
}

/// The resource type of the flat container.
pub const PACKAGE_BASE_ADDRESS: &str = "PackageBaseAddress/3.0.0";

/// What the lock's inputs digest covers.
pub fn inputs(p: &NugetPlan) -> String {
    format!("{:?} {}", p.packages, p.source)
}

/// The flat container's URL from a service index document.
pub fn package_base_address(index: &[u8], origin: &str) -> Result<String> {
    let doc: Value =
        serde_json::from_slice(index).with_context(|| format!("{origin}: the service index is not JSON"))?;
    let version = doc.get("version").and_then(Value::as_str).unwrap_or_default();
    if !version.starts_with("3.") {
        bail!("{origin}: service index version `{version}` is not 3.x");
    }
    let resources =
        doc.get("resources").and_then(Value::as_array).with_context(|| format!("{origin}: no resources"))?;
    for r in resources {
        if r.get("@type").and_then(Value::as_str) == Some(PACKAGE_BASE_ADDRESS) {
            let id = r.get("@id").and_then(Value::as_str).unwrap_or_default();
            if !(id.starts_with("http://") || id.starts_with("https://")) {
                bail!("{origin}: {PACKAGE_BASE_ADDRESS} `{id}` is not an http(s) URL");
            }
            return Ok(id.trim_end_matches('/').to_string());
        }
    }
    bail!("{origin}: the service index has no {PACKAGE_BASE_ADDRESS} resource")
}

/// The path of a package inside a flat container.
pub fn package_path(id: &str, version: &str) -> String {
    let (id, version) = (id.to_lowercase(), version.to_lowercase());
    format!("{id}/{version}/{id}.{version}.nupkg")
}

/// A NuGet version: numeric release parts (padded to four) and pre-release labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    release: [u64; 4],
    pre: Vec<String>,
}

impl Version {
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.split('+').next()?;
        let (core, pre) = match text.split_once('-') {
            Some((c, p)) => (c, p.split('.').map(str::to_string).collect()),
            None => (text, Vec::new()),
        };
        let mut release = [0u64; 4];
        let parts: Vec<&str> = core.split('.').collect();
        if parts.is_empty() || parts.len() > 4 {
            return None;
        }
        for (i, p) in parts.iter().enumerate() {
            release[i] = p.parse().ok()?;
        }
        Some(Self { release, pre })
    }

    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.release.cmp(&other.release).then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            (false, false) => {
                for (a, b) in self.pre.iter().zip(&other.pre) {
                    let o = match (a.parse::<u64>(), b.parse::<u64>()) {
                        (Ok(x), Ok(y)) => x.cmp(&y),
                        _ => a.to_lowercase().cmp(&b.to_lowercase()),
                    };
                    if o.is_ne() {
                        return o;
                    }
                }
                self.pre.len().cmp(&other.pre.len())
            }
        })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A version range in NuGet's notation: `1.0` (at least), `[1.0]` (exactly), `[1.0,2.0)`,
/// `(,2.0]`, ...; an empty range allows anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    min: Option<(Version, bool)>,
    max: Option<(Version, bool)>,
}

impl Range {
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        if t.is_empty() {
            return Some(Self { min: None, max: None });
        }
        let (Some(open), Some(close)) = (t.chars().next(), t.chars().last()) else { return None };
        if !matches!(open, '[' | '(') {
            return Some(Self { min: Some((Version::parse(t)?, true)), max: None });
        }
        if !matches!(close, ']' | ')') || t.len() < 2 {
            return None;
        }
        let inner = &t[1..t.len() - 1];
        let bound = |s: &str, inclusive: bool| -> Option<Option<(Version, bool)>> {
            let s = s.trim();
            if s.is_empty() { Some(None) } else { Some(Some((Version::parse(s)?, inclusive))) }
        };
        match inner.split_once(',') {
            Some((lo, hi)) => Some(Self { min: bound(lo, open == '[')?, max: bound(hi, close == ']')? }),
            None if open == '[' && close == ']' => {
                let v = Version::parse(inner.trim())?;
                Some(Self { min: Some((v.clone(), true)), max: Some((v, true)) })
            }
            None => None,
        }
    }

    pub fn contains(&self, v: &Version) -> bool {
        let above = self.min.as_ref().is_none_or(|(m, inc)| if *inc { v >= m } else { v > m });
        let below = self.max.as_ref().is_none_or(|(m, inc)| if *inc { v <= m } else { v < m });
        let pre_ok = !v.is_prerelease() || self.min.as_ref().is_some_and(|(m, _)| m.is_prerelease());
        above && below && pre_ok
    }

    /// NuGet's choice: the lowest listed version in the range.
    pub fn lowest<'a>(&self, listed: &'a [String]) -> Option<&'a String> {
        listed
            .iter()
            .filter_map(|s| Some((Version::parse(s)?, s)))
            .filter(|(v, _)| self.contains(v))
            .min_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, s)| s)
    }
}

/// The `.nuspec` at the top of a `.nupkg`, as text.
fn read_nuspec(nupkg: &Path, what: &str) -> Result<String> {
    let file = std::fs::File::open(nupkg).with_context(|| format!("opening {}", nupkg.display()))?;
    let mut zip = zip::ZipArchive::new(file).with_context(|| format!("{what}: not a valid .nupkg (zip) file"))?;
    for i in 0..zip.len() {
        let entry = zip.by_index(i).with_context(|| format!("{what}: reading the archive"))?;
        let name = entry.name().to_string();
        if !name.contains('/') && name.to_lowercase().ends_with(".nuspec") {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::Read::take(entry, super::download::MAX_METADATA), &mut text)
                .with_context(|| format!("{what}: {name} is not UTF-8 text"))?;
            return Ok(text);
        }
    }
    bail!("{what}: the package holds no .nuspec")
}

/// The `(id, range)` dependencies a package's `.nuspec` (at the archive's top) declares.
pub fn nuspec_dependencies(nupkg: &Path, what: &str) -> Result<Vec<(String, String)>> {
    let text = read_nuspec(nupkg, what)?;
    let mut deps = Vec::new();
    for tag in text.split("<dependency").skip(1) {
        let tag = tag.split('>').next().unwrap_or("");
        let attr = |name: &str| -> Option<String> {
            let at = tag.find(&format!("{name}="))? + name.len() + 1;
            let quote = tag[at..].chars().next()?;
            let rest = &tag[at + 1..];
            Some(rest[..rest.find(quote)?].to_string())
        };
        let Some(id) = attr("id") else { continue };
        if !is_nuget_id(&id) {
            bail!("{what}: its .nuspec names dependency `{id}`");
        }
        deps.push((id, attr("version").unwrap_or_default()));
    }
    deps.sort();
    deps.dedup();
    Ok(deps)
}

/// The versions the feed lists for a package.
fn listed_versions(base: &Source, id: &str, dl: &mut Downloader) -> Result<Vec<String>> {
    let lower = id.to_lowercase();
    match base {
        Source::Url(_) => {
            let src = base.join(&format!("{lower}/index.json"));
            let doc: Value = serde_json::from_slice(&dl.get(src.origin())?)
                .with_context(|| format!("{}: not JSON", src.origin()))?;
            let list = doc
                .get("versions")
                .and_then(Value::as_array)
                .with_context(|| format!("{}: no versions", src.origin()))?;
            Ok(list.iter().filter_map(Value::as_str).map(str::to_string).collect())
        }
        Source::Path { full, .. } => {
            let dir = full.join(&lower);
            let entries = std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
            let mut out = Vec::new();
            for e in entries {
                out.push(e?.file_name().to_string_lossy().into_owned());
            }
            Ok(out)
        }
    }
}

/// Downloads every listed package and its dependencies.
fn resolve(p: &NugetPlan, dl: &mut Downloader, store: &BlobStore) -> Result<Vec<LockedFile>> {
    let base = match &p.source {
        Source::Url(index) => {
            let doc = dl.get(index)?;
            Source::Url(package_base_address(&doc, index)?)
        }
        folder @ Source::Path { .. } => folder.clone(),
    };
    let mut files = Vec::new();
    let mut todo: Vec<(String, String)> = p.packages.iter().rev().cloned().collect();
    let mut done = std::collections::BTreeSet::new();
    while let Some((id, version)) = todo.pop() {
        if !done.insert((id.to_lowercase(), version.to_lowercase())) {
            continue;
        }
        if !is_nuget_id(&id) || !is_module_version(&format!("v{version}")) {
            bail!("`{id}` `{version}` is not a package id and version");
        }
        let rel = package_path(&id, &version);
        let src = base.join(&rel);
        let fetched = dl.fetch(src.origin(), &Expect::default(), store).with_context(|| format!("{id} {version}"))?;
        let mut magic = [0u8; 4];
        std::io::Read::read_exact(&mut std::fs::File::open(&fetched.path)?, &mut magic).ok();
        if &magic != b"PK\x03\x04" {
            bail!("{id} {version} from {}: not a .nupkg (zip) file", src.origin());
        }
        let what = format!("{id} {version} from {}", src.origin());
        for (dep, range) in nuspec_dependencies(&fetched.path, &what)? {
            let parsed =
                Range::parse(&range).with_context(|| format!("{what}: dependency {dep} has range `{range}`"))?;
            let listed = listed_versions(&base, &dep, dl).with_context(|| format!("{what}: dependency {dep}"))?;
            let chosen = parsed
                .lowest(&listed)
                .with_context(|| format!("{what}: no version of {dep} in `{range}` (the feed lists {listed:?})"))?;
            todo.push((dep, chosen.clone()));
        }
        files.push(LockedFile::fetched(format!("nuget/v3/flat/{rel}"), src.origin(), &fetched));
    }
    Ok(files)
}

/// The service index and each package's version list.
pub fn render(files: &[LockedFile]) -> Result<Vec<(String, String)>> {
    let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in files {
        let rel = f.path.strip_prefix("nuget/v3/flat/").context("NuGet packages live in nuget/v3/flat/")?;
        let parts: Vec<&str> = rel.split('/').collect();
        let [id, version, _] = parts[..] else { bail!("{}: not <id>/<version>/<file>", f.path) };
        versions.entry(id.to_string()).or_default().push(version.to_string());
    }
    let mut out = Vec::new();
    let index = json!({
        "version": "3.0.0",
        "resources": [
            { "@id": format!("{PLACEHOLDER}/nuget/v3/flat/"), "@type": PACKAGE_BASE_ADDRESS,
              "comment": "Base URL of where NuGet packages are stored, in the format https://{host}/{id}/{version}/{id}.{version}.nupkg" }
        ]
    });
    out.push(("nuget/v3/index.json".to_string(), serde_json::to_string_pretty(&index)? + "\n"));
    for (id, list) in versions {
        out.push((
            format!("nuget/v3/flat/{id}/index.json"),
            serde_json::to_string(&json!({ "versions": list }))? + "\n",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_flat_container_from_a_service_index() {
        let doc = br#"{"version": "3.0.0", "resources": [
            {"@id": "https://n.example.test/query", "@type": "SearchQueryService"},
            {"@id": "https://n.example.test/flat/", "@type": "PackageBaseAddress/3.0.0"}]}"#;
        assert_eq!(package_base_address(doc, "t").unwrap(), "https://n.example.test/flat");
        assert!(package_base_address(br#"{"version": "2.0.0", "resources": []}"#, "t").is_err());
        assert!(package_base_address(br#"{"version": "3.0.0", "resources": []}"#, "t").is_err());
        let file =
            br#"{"version": "3.0.0", "resources": [{"@id": "file:///etc", "@type": "PackageBaseAddress/3.0.0"}]}"#;
        assert!(package_base_address(file, "t").is_err());
    }

    /// A .nupkg holding just its .nuspec, with the given dependencies.
    pub(crate) fn nupkg(id: &str, version: &str, deps: &[(&str, &str)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        w.start_file(format!("{id}.nuspec"), opts).unwrap();
        let deps: String =
            deps.iter().map(|(d, r)| format!("<dependency id=\"{d}\" version=\"{r}\" exclude=\"Build\" />")).collect();
        let nuspec = format!(
            "<?xml version=\"1.0\"?><package><metadata><id>{id}</id><version>{version}</version><dependencies><group targetFramework=\".NETStandard2.0\">{deps}</group></dependencies></metadata></package>"
        );
        std::io::Write::write_all(&mut w, nuspec.as_bytes()).unwrap();
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn identity_comes_from_the_nuspec_and_must_match_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let stored = tmp.path().join("blob");
        std::fs::write(&stored, nupkg("Airlock.Fixture", "1.0.0-Beta", &[])).unwrap();
        let file = |path: &str| LockedFile {
            path: path.into(),
            origin: String::new(),
            sha256: "00".repeat(32),
            size: 1,
            requires_python: None,
        };
        let id = Nuget
            .identity(&file("nuget/v3/flat/airlock.fixture/1.0.0-beta/airlock.fixture.1.0.0-beta.nupkg"), &stored)
            .unwrap();
        assert_eq!((id.name.as_str(), id.version.as_str()), ("Airlock.Fixture", "1.0.0-Beta"));
        assert_eq!(id.kind.purl(), Some("pkg:nuget/Airlock.Fixture@1.0.0-Beta"));
        let other = file("nuget/v3/flat/other/1.0.0-beta/other.1.0.0-beta.nupkg");
        let e = Nuget.identity(&other, &stored).unwrap_err().to_string();
        assert!(e.contains("its .nuspec says Airlock.Fixture 1.0.0-Beta"), "{e}");
    }

    #[test]
    fn versions_and_ranges_follow_nuget() {
        let v = |s: &str| Version::parse(s).unwrap();
        assert!(v("1.10.0") > v("1.9.0") && v("1.0.0") > v("1.0.0-rc.2") && v("1.0.0-rc.10") > v("1.0.0-rc.2"));
        assert_eq!(v("1.0"), v("1.0.0.0"));
        let listed: Vec<String> =
            ["0.9.0", "1.0.0", "1.1.0", "2.0.0-beta", "2.0.0"].iter().map(|s| s.to_string()).collect();
        let pick = |r: &str| Range::parse(r).unwrap().lowest(&listed).cloned();
        assert_eq!(pick("1.0"), Some("1.0.0".into()));
        assert_eq!(pick("(1.0.0,)"), Some("1.1.0".into()));
        assert_eq!(pick("[2.0.0]"), Some("2.0.0".into()));
        assert_eq!(pick("(,1.0.0)"), Some("0.9.0".into()));
        assert_eq!(pick("[1.5,2.0)"), None, "pre-releases only for pre-release bounds");
        assert_eq!(pick("2.0.0-alpha"), Some("2.0.0-beta".into()));
        assert_eq!(pick(""), Some("0.9.0".into()));
        for bad in ["[1.0", "1.x", "[1.0,2.0,3.0]"] {
            assert!(Range::parse(bad).is_none_or(|r| r.lowest(&listed).is_none()), "{bad}");
        }
    }

    #[test]
    fn fetches_with_dependencies_from_a_fake_feed_and_renders_the_protocol() {
        let fixture = nupkg("Airlock.Fixture", "1.0.0", &[("Airlock.Core", "[1.0.0, )")]);
        let core = nupkg("Airlock.Core", "1.0.0", &[]);
        let evil = nupkg("Evil", "1.0.0", &[("../../etc", "1.0")]);
        let (base, _) = crate::mirror::download::tests::serve(move |path| match path {
            "/flat/airlock.fixture/1.0.0/airlock.fixture.1.0.0.nupkg" => (200, fixture.clone(), None),
            "/flat/airlock.core/index.json" => (200, br#"{"versions": ["0.9.0", "1.0.0", "1.2.0"]}"#.to_vec(), None),
            "/flat/airlock.core/1.0.0/airlock.core.1.0.0.nupkg" => (200, core.clone(), None),
            "/flat/not.zip/1.0.0/not.zip.1.0.0.nupkg" => (200, b"<html>".to_vec(), None),
            "/flat/bad.zip/1.0.0/bad.zip.1.0.0.nupkg" => {
                (200, b"PK\x03\x04 but then nothing a zip needs".to_vec(), None)
            }
            "/flat/evil/1.0.0/evil.1.0.0.nupkg" => (200, evil.clone(), None),
            _ => (404, Vec::new(), None),
        });
        // The index must name the server's own address, so it is served from a second server.
        let flat = format!("{base}/flat/");
        let (index, _) = crate::mirror::download::tests::serve(move |_| {
            let doc = format!(
                r#"{{"version": "3.0.0", "resources": [{{"@id": "{flat}", "@type": "PackageBaseAddress/3.0.0"}}]}}"#
            );
            (200, doc.into_bytes(), None)
        });
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(tmp.path()).unwrap();
        let mut dl = Downloader::new(tmp.path());
        let plan = NugetPlan {
            packages: vec![("Airlock.Fixture".into(), "1.0.0".into())],
            source: Source::Url(format!("{index}/v3/index.json")),
        };
        let files = resolve(&plan, &mut dl, &store).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "nuget/v3/flat/airlock.fixture/1.0.0/airlock.fixture.1.0.0.nupkg",
                "nuget/v3/flat/airlock.core/1.0.0/airlock.core.1.0.0.nupkg"
            ]
        );
        assert_eq!(files[0].origin, format!("{base}/flat/airlock.fixture/1.0.0/airlock.fixture.1.0.0.nupkg"));
        let pages = render(&files).unwrap();
        let service: Value = serde_json::from_str(&pages[0].1).unwrap();
        assert_eq!(service["resources"][0]["@type"], PACKAGE_BASE_ADDRESS);
        assert!(pages.contains(&(
            "nuget/v3/flat/airlock.fixture/index.json".to_string(),
            "{\"versions\":[\"1.0.0\"]}\n".to_string()
        )));

        for (id, expected) in
            [("Not.Zip", "not a .nupkg"), ("Bad.Zip", "not a valid .nupkg"), ("Evil", "names dependency `../../etc`")]
        {
            let bad = NugetPlan { packages: vec![(id.into(), "1.0.0".into())], ..plan.clone() };
            let e = format!("{:#}", resolve(&bad, &mut dl, &store).unwrap_err());
            assert!(e.contains(expected), "{e}");
        }
    }
}
