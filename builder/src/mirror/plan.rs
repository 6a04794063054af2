//! The validated form of `[pulumi]` and `[mirrors.*]`: every value checked once, errors naming
//! the key. Anything that later becomes a path on the appliance or an argument of pip, npm or
//! an HTTP request is checked here for what it may contain.

use crate::plan::PlanError;
use crate::spec::{MirrorsSpec, PulumiSpec};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a file comes from: a URL, or a file on the build host (a path as the spec wrote it,
/// relative to the spec's folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Url(String),
    Path { written: String, full: PathBuf },
}

impl Source {
    /// An `http(s)://` URL, or a relative path without `..` (resolved against `spec_dir`).
    pub fn parse(text: &str, spec_dir: &Path) -> Result<Self, String> {
        if text.starts_with("http://") || text.starts_with("https://") {
            if text.contains(char::is_whitespace) {
                return Err(format!("`{text}` contains white space"));
            }
            return Ok(Self::Url(text.trim_end_matches('/').to_string()));
        }
        if text.contains("://") {
            return Err(format!("`{text}`: only http:// and https:// URLs (or a path relative to the spec)"));
        }
        if text.is_empty() || text.starts_with('/') || text.split('/').any(|c| c == "..") {
            return Err(format!("`{text}` must be an http(s) URL or a path inside the spec's folder"));
        }
        Ok(Self::Path { written: text.trim_end_matches('/').to_string(), full: spec_dir.join(text) })
    }

    /// The source of `name` inside this one (a URL prefix or a folder).
    pub fn join(&self, name: &str) -> Self {
        match self {
            Self::Url(u) => Self::Url(format!("{u}/{name}")),
            Self::Path { written, full } => Self::Path { written: format!("{written}/{name}"), full: full.join(name) },
        }
    }

    /// What the lock records as the file's origin: the URL or the path as written.
    pub fn origin(&self) -> &str {
        match self {
            Self::Url(u) => u,
            Self::Path { written, .. } => written,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.origin())
    }
}

/// The platforms Pulumi publishes CLI archives for, as in the file names.
pub const CLI_PLATFORMS: &[&str] = &["linux-x64", "linux-arm64", "darwin-x64", "darwin-arm64", "windows-x64"];
/// The platform whose archive the appliance itself runs.
pub const APPLIANCE_CLI_PLATFORM: &str = "linux-x64";
/// The plugin platform the appliance's own plugin cache is seeded with.
pub const APPLIANCE_PLUGIN_PLATFORM: &str = "linux-amd64";
const PLUGIN_KINDS: &[&str] = &["resource", "language", "analyzer", "converter", "tool"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliArchive {
    pub platform: String,
    pub source: Source,
    pub sha256: String,
}

impl CliArchive {
    /// The official file name: `pulumi-v<version>-<platform>.tar.gz` (`.zip` for Windows).
    pub fn file_name(&self, version: &str) -> String {
        let ext = if self.platform.starts_with("windows-") { "zip" } else { "tar.gz" };
        format!("pulumi-v{version}-{}.{ext}", self.platform)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugin {
    pub kind: String,
    pub name: String,
    pub version: String,
    pub platforms: Vec<String>,
    pub source: Source,
}

impl Plugin {
    /// `pulumi-<kind>-<name>-v<version>-<os>-<arch>.tar.gz`, as the CLI asks a mirror for it.
    pub fn file_name(&self, platform: &str) -> String {
        format!("pulumi-{}-{}-v{}-{platform}.tar.gz", self.kind, self.name, self.version)
    }

    /// The plugin cache folder the CLI looks in: `<kind>-<name>-v<version>`.
    pub fn cache_dir(&self) -> String {
        format!("{}-{}-v{}", self.kind, self.name, self.version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulumiPlan {
    pub version: String,
    pub checksums: Option<Source>,
    pub archives: Vec<CliArchive>,
    pub plugins: Vec<Plugin>,
    pub backend_url: Option<String>,
}

impl PulumiPlan {
    /// The release's checksums file name: `pulumi-<version>-checksums.txt`.
    pub fn checksums_name(&self) -> String {
        format!("pulumi-{}-checksums.txt", self.version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PypiPlan {
    pub requirements: Vec<String>,
    pub python_versions: Vec<String>,
    pub platforms: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpmPlan {
    pub packages: Vec<String>,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoPlan {
    /// (module path, version).
    pub modules: Vec<(String, String)>,
    pub proxy: GoProxy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NugetPlan {
    /// (id, version) as written.
    pub packages: Vec<(String, String)>,
    pub source: Source,
}

/// Everything the appliance mirrors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorPlan {
    pub pulumi: Option<PulumiPlan>,
    pub pypi: Option<PypiPlan>,
    pub npm: Option<NpmPlan>,
    pub go: Option<GoPlan>,
    pub nuget: Option<NugetPlan>,
}

impl MirrorPlan {
    pub fn is_empty(&self) -> bool {
        self.pulumi.is_none() && self.pypi.is_none() && self.npm.is_none() && self.go.is_none() && self.nuget.is_none()
    }
}

fn is_version(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b".-+_".contains(&b))
}

fn is_lower_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An argument handed to pip or npm: one token that cannot be read as an option.
fn is_client_argument(s: &str) -> bool {
    !s.trim().is_empty() && !s.starts_with('-') && !s.contains(['\n', '\r', '\0'])
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

/// A Go module version: `v` followed by a semantic version.
pub fn is_module_version(s: &str) -> bool {
    s.starts_with('v') && s.len() > 1 && is_version(&s[1..]) && !s.contains("..")
}

/// A NuGet package id.
pub fn is_nuget_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !s.contains("..")
}

/// Validates `[pulumi]` and `[mirrors]`.
pub fn validate(
    pulumi: Option<&PulumiSpec>,
    mirrors: &MirrorsSpec,
    spec_dir: &Path,
    err: &dyn Fn(&str, String) -> PlanError,
) -> Result<MirrorPlan, PlanError> {
    let mut plan = MirrorPlan::default();
    if let Some(p) = pulumi {
        plan.pulumi = Some(validate_pulumi(p, spec_dir, err)?);
    }
    if let Some(p) = &mirrors.pypi {
        if p.requirements.is_empty() {
            return Err(err("mirrors.pypi.requirements", "lists nothing".into()));
        }
        for r in &p.requirements {
            if !is_client_argument(r) {
                return Err(err("mirrors.pypi.requirements", format!("`{r}` is not a requirement specifier")));
            }
        }
        if p.python_versions.is_empty() {
            return Err(err("mirrors.pypi.python_versions", "lists nothing".into()));
        }
        for v in &p.python_versions {
            let ok = v.split_once('.').is_some_and(|(a, b)| {
                !a.is_empty() && !b.is_empty() && (a.bytes().chain(b.bytes())).all(|c| c.is_ascii_digit())
            });
            if !ok {
                return Err(err("mirrors.pypi.python_versions", format!("`{v}` is not a Python version like `3.12`")));
            }
        }
        if p.platforms.is_empty() {
            return Err(err("mirrors.pypi.platforms", "lists nothing".into()));
        }
        for t in &p.platforms {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
                return Err(err("mirrors.pypi.platforms", format!("`{t}` is not a platform tag like `win_amd64`")));
            }
        }
        plan.pypi = Some(PypiPlan {
            requirements: p.requirements.clone(),
            python_versions: p.python_versions.clone(),
            platforms: p.platforms.clone(),
        });
    }
    if let Some(n) = &mirrors.npm {
        if n.packages.is_empty() {
            return Err(err("mirrors.npm.packages", "lists nothing".into()));
        }
        for p in &n.packages {
            if !is_client_argument(p) || p.contains(char::is_whitespace) {
                return Err(err("mirrors.npm.packages", format!("`{p}` is not a package spec")));
            }
        }
        plan.npm = Some(NpmPlan { packages: n.packages.clone() });
    }
    if let Some(g) = &mirrors.go {
        let mut modules = Vec::new();
        for m in &g.modules {
            let ok = m.rsplit_once('@').filter(|(p, v)| is_module_path(p) && is_module_version(v));
            let Some((path, version)) = ok else {
                return Err(err("mirrors.go.modules", format!("`{m}` is not `module/path@vX.Y.Z`")));
            };
            modules.push((path.to_string(), version.to_string()));
        }
        if modules.is_empty() {
            return Err(err("mirrors.go.modules", "lists nothing".into()));
        }
        let proxy = if g.proxy == "host" {
            GoProxy::Host
        } else {
            GoProxy::Source(Source::parse(&g.proxy, spec_dir).map_err(|e| err("mirrors.go.proxy", e))?)
        };
        plan.go = Some(GoPlan { modules, proxy });
    }
    if let Some(n) = &mirrors.nuget {
        let mut packages = Vec::new();
        for p in &n.packages {
            let ok = p.split_once('@').filter(|(id, v)| is_nuget_id(id) && is_version(v));
            let Some((id, version)) = ok else {
                return Err(err("mirrors.nuget.packages", format!("`{p}` is not `Id@Version`")));
            };
            packages.push((id.to_string(), version.to_string()));
        }
        if packages.is_empty() {
            return Err(err("mirrors.nuget.packages", "lists nothing".into()));
        }
        let source = Source::parse(&n.source, spec_dir).map_err(|e| err("mirrors.nuget.source", e))?;
        plan.nuget = Some(NugetPlan { packages, source });
    }
    Ok(plan)
}

fn validate_pulumi(
    p: &PulumiSpec,
    spec_dir: &Path,
    err: &dyn Fn(&str, String) -> PlanError,
) -> Result<PulumiPlan, PlanError> {
    let version = p.version.strip_prefix('v').unwrap_or(&p.version).to_string();
    if !is_version(&version) {
        return Err(err("pulumi.version", format!("`{}` is not a version like `3.140.0`", p.version)));
    }
    let checksums = match &p.checksums {
        Some(c) => Some(Source::parse(c, spec_dir).map_err(|e| err("pulumi.checksums", e))?),
        None => None,
    };
    let mut archives: Vec<CliArchive> = Vec::new();
    for (i, a) in p.archives.iter().enumerate() {
        let key = |k: &str| format!("pulumi.archives[{i}].{k}");
        if !CLI_PLATFORMS.contains(&a.platform.as_str()) {
            return Err(err(&key("platform"), format!("`{}` is not one of {}", a.platform, CLI_PLATFORMS.join(", "))));
        }
        if archives.iter().any(|x| x.platform == a.platform) {
            return Err(err(&key("platform"), format!("`{}` is listed twice", a.platform)));
        }
        if !is_sha256_hex(&a.sha256) {
            return Err(err(&key("sha256"), format!("`{}` is not 64 lower-case hex characters", a.sha256)));
        }
        let source = Source::parse(&a.source, spec_dir).map_err(|e| err(&key("source"), e))?;
        archives.push(CliArchive { platform: a.platform.clone(), source, sha256: a.sha256.clone() });
    }
    if !archives.iter().any(|a| a.platform == APPLIANCE_CLI_PLATFORM) {
        return Err(err(
            "pulumi.archives",
            format!("needs the `{APPLIANCE_CLI_PLATFORM}` archive: the appliance installs the CLI from it"),
        ));
    }
    let mut plugins: Vec<Plugin> = Vec::new();
    for (i, pl) in p.plugins.iter().enumerate() {
        let key = |k: &str| format!("pulumi.plugins[{i}].{k}");
        if !PLUGIN_KINDS.contains(&pl.kind.as_str()) {
            return Err(err(&key("kind"), format!("`{}` is not one of {}", pl.kind, PLUGIN_KINDS.join(", "))));
        }
        if !is_lower_name(&pl.name) {
            return Err(err(&key("name"), format!("`{}` must be lower-case letters, digits or `-`", pl.name)));
        }
        let version = pl.version.strip_prefix('v').unwrap_or(&pl.version).to_string();
        if !is_version(&version) {
            return Err(err(&key("version"), format!("`{}` is not a version", pl.version)));
        }
        if pl.platforms.is_empty() {
            return Err(err(&key("platforms"), "lists nothing".into()));
        }
        for platform in &pl.platforms {
            let ok = platform.split_once('-').is_some_and(|(os, arch)| {
                ["linux", "darwin", "windows"].contains(&os) && ["amd64", "arm64"].contains(&arch)
            });
            if !ok {
                return Err(err(
                    &key("platforms"),
                    format!("`{platform}` is not `<linux|darwin|windows>-<amd64|arm64>`"),
                ));
            }
        }
        if plugins.iter().any(|x| x.kind == pl.kind && x.name == pl.name && x.version == version) {
            return Err(err(&key("name"), format!("{} {} v{version} is listed twice", pl.kind, pl.name)));
        }
        let source = Source::parse(&pl.source, spec_dir).map_err(|e| err(&key("source"), e))?;
        let mut platforms = pl.platforms.clone();
        platforms.sort();
        platforms.dedup();
        plugins.push(Plugin { kind: pl.kind.clone(), name: pl.name.clone(), version, platforms, source });
    }
    if let Some(url) = &p.backend_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(err("pulumi.backend_url", format!("`{url}` is not an http(s) URL")));
    }
    Ok(PulumiPlan { version, checksums, archives, plugins, backend_url: p.backend_url.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(key: &str, message: String) -> PlanError {
        PlanError { file: "a.toml".into(), key: key.into(), message }
    }

    fn parse(text: &str) -> Result<MirrorPlan, PlanError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Part {
            pulumi: Option<PulumiSpec>,
            #[serde(default)]
            mirrors: MirrorsSpec,
        }
        let part: Part = toml::from_str(text).expect("test TOML parses");
        validate(part.pulumi.as_ref(), &part.mirrors, Path::new("/spec"), &err)
    }

    const GOOD: &str = r#"
[pulumi]
version = "3.140.0"
checksums = "fixtures/pulumi-3.140.0-checksums.txt"
archives = [
  { platform = "linux-x64", source = "https://example.test/pulumi-v3.140.0-linux-x64.tar.gz", sha256 = "0000000000000000000000000000000000000000000000000000000000000000" },
]
[[pulumi.plugins]]
kind = "resource"
name = "random"
version = "4.16.0"
platforms = ["linux-amd64", "windows-amd64"]
[mirrors.pypi]
requirements = ["pulumi>=3"]
python_versions = ["3.11"]
platforms = ["manylinux2014_x86_64"]
[mirrors.npm]
packages = ["@pulumi/pulumi"]
[mirrors.go]
modules = ["example.test/Fixture/mod@v1.2.0"]
proxy = "fixtures/goproxy"
[mirrors.nuget]
packages = ["Airlock.Fixture@1.0.0"]
source = "https://nuget.example.test/v3/index.json"
"#;

    #[test]
    fn good_mirrors_validate() {
        let p = parse(GOOD).unwrap();
        let pulumi = p.pulumi.unwrap();
        assert_eq!(pulumi.archives[0].file_name("3.140.0"), "pulumi-v3.140.0-linux-x64.tar.gz");
        assert_eq!(pulumi.plugins[0].source, Source::Url(crate::spec::OFFICIAL_PLUGIN_SOURCE.into()));
        assert_eq!(pulumi.plugins[0].file_name("linux-amd64"), "pulumi-resource-random-v4.16.0-linux-amd64.tar.gz");
        assert_eq!(pulumi.checksums_name(), "pulumi-3.140.0-checksums.txt");
        assert_eq!(p.go.unwrap().modules, [("example.test/Fixture/mod".to_string(), "v1.2.0".to_string())]);
        let nuget = p.nuget.unwrap();
        assert_eq!(nuget.packages, [("Airlock.Fixture".to_string(), "1.0.0".to_string())]);
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases = [
            ("version = \"3.140.0\"", "version = \"3 140\"", "pulumi.version"),
            ("platform = \"linux-x64\"", "platform = \"linux-x86\"", "pulumi.archives[0].platform"),
            ("sha256 = \"0000", "sha256 = \"00", "pulumi.archives[0].sha256"),
            ("source = \"https://example.test/", "source = \"../outside/", "pulumi.archives[0].source"),
            ("source = \"https://example.test/", "source = \"ftp://example.test/", "pulumi.archives[0].source"),
            ("checksums = \"fixtures", "checksums = \"/etc", "pulumi.checksums"),
            ("kind = \"resource\"", "kind = \"provider\"", "pulumi.plugins[0].kind"),
            ("name = \"random\"", "name = \"../random\"", "pulumi.plugins[0].name"),
            ("\"windows-amd64\"]", "\"windows-x64\"]", "pulumi.plugins[0].platforms"),
            ("\"pulumi>=3\"", "\"--index-url=http://evil\"", "mirrors.pypi.requirements"),
            ("[\"3.11\"]", "[\"three\"]", "mirrors.pypi.python_versions"),
            ("[\"manylinux2014_x86_64\"]", "[\"linux x86\"]", "mirrors.pypi.platforms"),
            ("[\"@pulumi/pulumi\"]", "[\"--registry=http://evil\"]", "mirrors.npm.packages"),
            ("mod@v1.2.0", "mod@1.2.0", "mirrors.go.modules"),
            ("example.test/Fixture/mod@", "example.test/../mod@", "mirrors.go.modules"),
            ("proxy = \"fixtures/goproxy\"", "proxy = \"/abs\"", "mirrors.go.proxy"),
            ("Airlock.Fixture@1.0.0", "../x@1.0.0", "mirrors.nuget.packages"),
            ("Airlock.Fixture@1.0.0", "Airlock.Fixture", "mirrors.nuget.packages"),
        ];
        for (from, to, key) in cases {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "replacement of `{from}` did not apply");
            let e = parse(&text).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
        let without_linux = GOOD.replace("linux-x64", "darwin-arm64");
        assert_eq!(parse(&without_linux).unwrap_err().key, "pulumi.archives");
        assert!(parse("").unwrap().is_empty());
    }
}
