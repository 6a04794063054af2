//! PyPI: pip resolves, airlock downloads and serves PEP 503.
//!
//! For every (Python version, platform) target, `pip install --dry-run --report` (the build
//! host's pip with the build host's configuration: index, proxy, certificates) resolves the
//! requirements with their transitive dependencies to wheels for that target, and reports each
//! file's URL, SHA-256 and `Requires-Python`. airlock downloads each file into the blob store,
//! verified against that hash. Only wheels are mirrored (`--only-binary=:all:`): an sdist
//! would need a build toolchain on every client.
//!
//! Served: `pypi/files/<wheel>` and `pypi/simple/<project>/index.html` with one link per file,
//! `#sha256=` fragments and `data-requires-python`; `pypi/simple/index.html` lists projects.

use super::download::{Downloader, Expect};
use super::ecosystem::{
    Ecosystem, FileKind, Identity, IndexEntry, LockedFile, PLACEHOLDER, Settings, SpecContext, StoredFile,
    is_client_argument, purl_escape,
};
use crate::command::Cmd;
use crate::oci::{BlobStore, Digest};
use crate::spec::PlanError;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The PyPI ecosystem (`[mirrors.pypi]`, served at `pypi/`).
#[derive(Debug)]
pub struct Pypi;

/// `[mirrors.pypi]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PypiSpec {
    /// Requirement specifiers as pip takes them (`pulumi>=3`, `requests==2.32.3`).
    requirements: Vec<String>,
    /// Target Python versions (`3.11`): each is resolved on its own.
    python_versions: Vec<String>,
    /// Target platform tags as pip takes them (`manylinux2014_x86_64`, `win_amd64`,
    /// `macosx_11_0_arm64`); pure-Python wheels come along for every target.
    platforms: Vec<String>,
}

/// `[mirrors.pypi]`, validated. (Its `Debug` text is what the lock's inputs digest covers.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PypiPlan {
    pub requirements: Vec<String>,
    pub python_versions: Vec<String>,
    pub platforms: Vec<String>,
}

impl Ecosystem for Pypi {
    fn name(&self) -> &'static str {
        "pypi"
    }

    fn spec_key(&self) -> &'static str {
        "mirrors.pypi"
    }

    fn validate(&self, section: toml::Value, spec: &SpecContext<'_>) -> Result<Arc<dyn Settings>, PlanError> {
        let p: PypiSpec = spec.section(self.spec_key(), section)?;
        if p.requirements.is_empty() {
            return Err(spec.err("mirrors.pypi.requirements", "lists nothing"));
        }
        for r in &p.requirements {
            if !is_client_argument(r) {
                return Err(spec.err("mirrors.pypi.requirements", format!("`{r}` is not a requirement specifier")));
            }
        }
        if p.python_versions.is_empty() {
            return Err(spec.err("mirrors.pypi.python_versions", "lists nothing"));
        }
        for v in &p.python_versions {
            let ok = v.split_once('.').is_some_and(|(a, b)| {
                !a.is_empty() && !b.is_empty() && (a.bytes().chain(b.bytes())).all(|c| c.is_ascii_digit())
            });
            if !ok {
                return Err(
                    spec.err("mirrors.pypi.python_versions", format!("`{v}` is not a Python version like `3.12`"))
                );
            }
        }
        if p.platforms.is_empty() {
            return Err(spec.err("mirrors.pypi.platforms", "lists nothing"));
        }
        for t in &p.platforms {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
                return Err(spec.err("mirrors.pypi.platforms", format!("`{t}` is not a platform tag like `win_amd64`")));
            }
        }
        Ok(Arc::new(PypiPlan {
            requirements: p.requirements,
            python_versions: p.python_versions,
            platforms: p.platforms,
        }))
    }

    fn render(&self, files: &[StoredFile<'_>]) -> Result<Vec<(String, String)>> {
        let locked: Vec<LockedFile> = files.iter().map(|f| f.file.clone()).collect();
        render(&locked)
    }

    fn nginx_locations(&self) -> &'static str {
        ""
    }

    fn index_entry(&self) -> IndexEntry {
        IndexEntry {
            heading: "PyPI",
            usage: format!("<code>pip install --index-url {PLACEHOLDER}/pypi/simple/ ...</code>"),
        }
    }

    /// A wheel's project and version are its file name's first two fields (PEP 427); each wheel
    /// is an SBOM package of its own, told apart by the purl's `file_name`.
    fn identity(&self, file: &LockedFile, _stored: &Path) -> Result<Identity> {
        let name = super::ecosystem::below(&file.path, "pypi/files/")?;
        let project = wheel_project(name).with_context(|| format!("`{name}` is not a wheel file name"))?;
        let version = name
            .strip_suffix(".whl")
            .and_then(|stem| stem.split('-').nth(1))
            .filter(|v| !v.is_empty())
            .with_context(|| format!("`{name}` names no version"))?
            .to_string();
        let purl =
            format!("pkg:pypi/{}@{}?file_name={}", purl_escape(&project), purl_escape(&version), purl_escape(name));
        Ok(Identity { name: project, version, kind: FileKind::Package { purl } })
    }
}

impl Settings for PypiPlan {
    fn inputs(&self) -> String {
        format!("{self:?}")
    }

    fn resolve(&self, dl: &mut Downloader, store: &BlobStore) -> Result<Vec<LockedFile>> {
        resolve(self, dl, store)
    }
}

#[derive(Debug, Deserialize)]
struct Report {
    install: Vec<ReportItem>,
}

#[derive(Debug, Deserialize)]
struct ReportItem {
    download_info: DownloadInfo,
    metadata: Metadata,
}

#[derive(Debug, Deserialize)]
struct DownloadInfo {
    url: String,
    #[serde(default)]
    archive_info: Option<ArchiveInfo>,
}

#[derive(Debug, Deserialize)]
struct ArchiveInfo {
    #[serde(default)]
    hashes: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    requires_python: Option<String>,
}

/// One file pip chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub url: String,
    pub file_name: String,
    pub sha256: Digest,
    pub requires_python: Option<String>,
}

/// Reads pip's installation report (`--report`), refusing anything but hashed wheels.
pub fn parse_report(json: &[u8]) -> Result<Vec<Chosen>> {
    let report: Report =
        serde_json::from_slice(json).context("pip's installation report is not what pip 22.2+ writes")?;
    let mut out = Vec::new();
    for item in report.install {
        let url = item.download_info.url;
        let name = url.rsplit('/').next().unwrap_or_default().split(['#', '?']).next().unwrap_or_default();
        super::ecosystem::check_file_name(name, &format!("{} from {url}", item.metadata.name))?;
        if !name.ends_with(".whl") {
            bail!("{}: pip chose {name}, which is not a wheel", item.metadata.name);
        }
        let hash = item.download_info.archive_info.as_ref().and_then(|a| a.hashes.get("sha256"));
        let Some(hash) = hash else { bail!("{}: pip reported no sha256 for {url}", item.metadata.name) };
        let sha256 = Digest::from_hex(hash).with_context(|| format!("{}: sha256 of {url}", item.metadata.name))?;
        out.push(Chosen {
            url: url.clone(),
            file_name: name.to_string(),
            sha256,
            requires_python: item.metadata.requires_python,
        });
    }
    Ok(out)
}

/// Resolves and downloads every target's files.
fn resolve(p: &PypiPlan, dl: &mut Downloader, store: &BlobStore) -> Result<Vec<LockedFile>> {
    let mut files: BTreeMap<String, LockedFile> = BTreeMap::new();
    for python in &p.python_versions {
        for platform in &p.platforms {
            let tmp = crate::interrupt::ScratchDir::new("airlock-pip-")?;
            let report = tmp.path().join("report.json");
            Cmd::new("pip")
                .args(["install", "--dry-run", "--ignore-installed", "--quiet", "--only-binary=:all:"])
                .args(["--implementation", "cp", "--python-version", python, "--platform", platform])
                .arg("--target")
                .arg(tmp.path().join("target"))
                .arg("--report")
                .arg(&report)
                .arg("--")
                .args(&p.requirements)
                .run()
                .with_context(|| format!("resolving for Python {python} on {platform}"))?;
            let json = std::fs::read(&report).with_context(|| format!("reading {}", report.display()))?;
            for c in parse_report(&json)? {
                let path = format!("pypi/files/{}", c.file_name);
                if let Some(have) = files.get(&path) {
                    if have.sha256 != c.sha256.hex() {
                        bail!("{}: two different files with one name ({} and {})", c.file_name, have.origin, c.url);
                    }
                    continue;
                }
                let fetched = dl.fetch(&c.url, &Expect { sha256: Some(c.sha256.clone()), size: None }, store)?;
                let mut entry = LockedFile::fetched(path.clone(), &c.url, &fetched);
                entry.requires_python = c.requires_python;
                files.insert(path, entry);
            }
        }
    }
    Ok(files.into_values().collect())
}

/// PEP 503 name normalization: lower case, runs of `-`, `_`, `.` become one `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// The project a wheel belongs to: the first `-`-separated field of its name (PEP 427).
pub fn wheel_project(file_name: &str) -> Option<String> {
    let stem = file_name.strip_suffix(".whl")?;
    let project = stem.split('-').next()?;
    (!project.is_empty()).then(|| normalize(project))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The pages: (path relative to the mirror root, HTML), for `pypi/simple/` and each project.
pub fn render(files: &[LockedFile]) -> Result<Vec<(String, String)>> {
    let mut projects: BTreeMap<String, Vec<&LockedFile>> = BTreeMap::new();
    for f in files {
        let name = f.path.strip_prefix("pypi/files/").context("PyPI files live in pypi/files/")?;
        let project = wheel_project(name).with_context(|| format!("`{name}` is not a wheel file name"))?;
        projects.entry(project).or_default().push(f);
    }
    let mut pages = Vec::new();
    let mut index = String::from(
        "<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.0\"><title>Simple index</title></head><body>\n",
    );
    for (project, files) in &projects {
        index.push_str(&format!("<a href=\"{project}/\">{project}</a><br>\n"));
        let mut page = format!(
            "<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.0\"><title>Links for {project}</title></head><body>\n<h1>Links for {project}</h1>\n"
        );
        for f in files {
            let name = f.path.rsplit('/').next().unwrap_or_default();
            let requires = f
                .requires_python
                .as_deref()
                .map(|r| format!(" data-requires-python=\"{}\"", escape(r)))
                .unwrap_or_default();
            page.push_str(&format!("<a href=\"../../files/{name}#sha256={}\"{requires}>{name}</a><br>\n", f.sha256));
        }
        page.push_str("</body></html>\n");
        pages.push((format!("pypi/simple/{project}/index.html"), page));
    }
    index.push_str("</body></html>\n");
    pages.push(("pypi/simple/index.html".to_string(), index));
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_pep_503() {
        assert_eq!(normalize("Typing_Extensions"), "typing-extensions");
        assert_eq!(normalize("opentelemetry.api__x"), "opentelemetry-api-x");
        assert_eq!(wheel_project("PyYAML-6.0.2-cp311-cp311-manylinux2014_x86_64.whl").unwrap(), "pyyaml");
        assert_eq!(wheel_project("x.tar.gz"), None);
    }

    #[test]
    fn pages_link_files_with_hashes_and_requires_python() {
        let f = LockedFile {
            path: "pypi/files/typing_extensions-4.16.0-py3-none-any.whl".into(),
            origin: "https://files.example.test/t.whl".into(),
            sha256: "ab".repeat(32),
            size: 10,
            requires_python: Some(">=3.9,<4".into()),
        };
        let pages = render(&[f]).unwrap();
        let (path, page) = &pages[0];
        assert_eq!(path, "pypi/simple/typing-extensions/index.html");
        assert!(
            page.contains(&format!(
                "<a href=\"../../files/typing_extensions-4.16.0-py3-none-any.whl#sha256={}\" data-requires-python=\"&gt;=3.9,&lt;4\">",
                "ab".repeat(32)
            )),
            "{page}"
        );
        assert!(pages[1].1.contains("<a href=\"typing-extensions/\">"), "{}", pages[1].1);
    }

    #[test]
    fn reports_with_bad_files_are_refused() {
        let item = |url: &str, hash: &str| {
            format!(
                r#"{{"install": [{{"download_info": {{"url": "{url}", "archive_info": {{"hashes": {{"sha256": "{hash}"}}}}}}, "metadata": {{"name": "x", "requires_python": ">=3.9"}}}}]}}"#
            )
        };
        let good = "cd".repeat(32);
        let ok = parse_report(item("https://f.example.test/p/x-1.0-py3-none-any.whl", &good).as_bytes()).unwrap();
        assert_eq!(ok[0].file_name, "x-1.0-py3-none-any.whl");
        assert_eq!(ok[0].requires_python.as_deref(), Some(">=3.9"));
        for (url, hash, expected) in [
            ("https://f.example.test/p/..", good.as_str(), "not a plain file name"),
            ("https://f.example.test/p/x-1.0.tar.gz", good.as_str(), "not a wheel"),
            ("https://f.example.test/p/x-1.0-py3-none-any.whl", "123", "sha256"),
        ] {
            let e = parse_report(item(url, hash).as_bytes()).unwrap_err();
            assert!(format!("{e:#}").contains(expected), "{e:#}");
        }
    }
}
