//! The Pulumi CLI and its plugins: fetched by their pinned hashes (archives) or pinned on first
//! fetch (plugins), served byte-identical under their official file names, and installed on the
//! appliance itself.
//!
//! - `pulumi/releases/pulumi-v<version>-<platform>.tar.gz` (`.zip` for Windows) and, when the
//!   spec names it, `pulumi-<version>-checksums.txt`, which every archive's hash is checked
//!   against at fetch;
//! - `pulumi/plugins/pulumi-<kind>-<name>-v<version>-<os>-<arch>.tar.gz`, the flat folder
//!   `PULUMI_PLUGIN_DOWNLOAD_URL_OVERRIDES='.*=<mirror>/pulumi/plugins'` sends the CLI to;
//! - on the appliance: the `linux-x64` archive's `pulumi/*` in `/usr/local/bin`, every
//!   `linux-amd64` plugin unpacked into root's plugin cache (`/root/.pulumi/plugins/<kind>-
//!   <name>-v<version>/`), and a system-wide environment (`/etc/profile.d`, `environment.d`)
//!   that keeps the CLI off the internet.

use super::download::{Downloader, Expect};
use super::ecosystem::{
    Ecosystem, FileKind, Identity, IndexEntry, LockedFile, PLACEHOLDER, Settings, SpecContext, StoredFile, is_version,
    purl_escape,
};
use super::source::Source;
use crate::oci::{BlobStore, Digest};
use crate::spec::PlanError;
use crate::tree::{Meta, NodeKind, Tree, tar_input};
use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

/// `[pulumi]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PulumiSpec {
    /// The CLI version (`3.140.0`), as in the release file names.
    version: String,
    /// The release's `pulumi-<version>-checksums.txt` (URL or path relative to the spec); every
    /// archive's SHA-256 is checked against it too, and it is served next to them.
    #[serde(default)]
    checksums: Option<String>,
    /// One release archive per platform the enclave uses.
    archives: Vec<PulumiArchiveSpec>,
    #[serde(default)]
    plugins: Vec<PulumiPluginSpec>,
    /// The backend the appliance's own CLI logs in to (`PULUMI_BACKEND_URL`).
    #[serde(default)]
    backend_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PulumiArchiveSpec {
    /// `linux-x64`, `linux-arm64`, `darwin-x64`, `darwin-arm64` or `windows-x64`.
    platform: String,
    /// Where the archive is: an http(s) URL or a path relative to the spec.
    source: String,
    /// Its SHA-256 (64 hex characters).
    sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PulumiPluginSpec {
    /// `resource`, `language`, `analyzer`, `converter` or `tool`.
    kind: String,
    name: String,
    /// Without the `v` (`6.66.0`).
    version: String,
    /// `<os>-<arch>` as in plugin file names: `linux-amd64`, `darwin-arm64`, `windows-amd64`...
    platforms: Vec<String>,
    /// Where `pulumi-<kind>-<name>-v<version>-<os>-<arch>.tar.gz` is: an http(s) URL prefix or a
    /// folder relative to the spec. Default: Pulumi's official plugin download location.
    #[serde(default = "default_plugin_source")]
    source: String,
}

/// The official plugin download location: the one registry host airlock knows, as the
/// documented default of `[[pulumi.plugins]] source`.
pub const OFFICIAL_PLUGIN_SOURCE: &str = "https://get.pulumi.com/releases/plugins";

fn default_plugin_source() -> String {
    OFFICIAL_PLUGIN_SOURCE.to_string()
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

fn is_lower_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn validate_pulumi(p: &PulumiSpec, spec: &SpecContext<'_>) -> Result<PulumiPlan, PlanError> {
    let spec_dir = spec.spec_dir;
    let err = |key: &str, message: String| spec.err(key, message);
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

/// The Pulumi CLI and its plugins (`[pulumi]`, served at `pulumi/`).
#[derive(Debug)]
pub struct Pulumi;

impl Ecosystem for Pulumi {
    fn name(&self) -> &'static str {
        "pulumi"
    }

    fn spec_key(&self) -> &'static str {
        "pulumi"
    }

    fn validate(&self, section: toml::Value, spec: &SpecContext<'_>) -> Result<Arc<dyn Settings>, PlanError> {
        let p: PulumiSpec = spec.section(self.spec_key(), section)?;
        Ok(Arc::new(validate_pulumi(&p, spec)?))
    }

    /// Archives and plugins are served under their official names; nothing is generated.
    fn render(&self, _files: &[StoredFile<'_>]) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }

    fn nginx_locations(&self) -> &'static str {
        ""
    }

    fn index_entry(&self) -> IndexEntry {
        IndexEntry {
            heading: "Pulumi CLI and plugins",
            usage: format!(
                "<code>PULUMI_PLUGIN_DOWNLOAD_URL_OVERRIDES='.*={PLACEHOLDER}/pulumi/plugins'</code>; CLI archives in <a href=\"pulumi/releases/\">pulumi/releases/</a>"
            ),
        }
    }

    /// Release archives `pulumi/releases/pulumi-v<version>-<platform>.<tar.gz|zip>` (with the
    /// release's `pulumi-<version>-checksums.txt`, metadata), plugins
    /// `pulumi/plugins/pulumi-<kind>-<name>-v<version>-<os>-<arch>.tar.gz`. A plugin's name
    /// may hold `-v`, so the version starts at the last `-v`, as the CLI reads its plugin
    /// folders (`<kind>-<name>-v<version>`). Purls are `pkg:generic` (Pulumi's releases are no
    /// package manager's), told apart by `file_name`.
    fn identity(&self, file: &LockedFile, _stored: &Path) -> Result<Identity> {
        let name = file.file_name();
        let generic = |package: &str, version: &str| {
            format!("pkg:generic/{}@{}?file_name={}", purl_escape(package), purl_escape(version), purl_escape(name))
        };
        if let Some(release) = file.path.strip_prefix("pulumi/releases/") {
            if let Some(version) = release.strip_prefix("pulumi-").and_then(|r| r.strip_suffix("-checksums.txt")) {
                return Ok(Identity { name: "pulumi".into(), version: version.into(), kind: FileKind::Metadata });
            }
            let archive = release.strip_prefix("pulumi-v").and_then(|r| {
                CLI_PLATFORMS.iter().find_map(|platform| {
                    let version = r
                        .strip_suffix(&format!("-{platform}.tar.gz"))
                        .or_else(|| r.strip_suffix(&format!("-{platform}.zip")))?;
                    Some((version, *platform))
                })
            });
            if let Some((version, platform)) = archive.filter(|(v, _)| is_version(v)) {
                let kind = FileKind::CliArchive { platform: platform.into(), purl: generic("pulumi", version) };
                return Ok(Identity { name: "pulumi".into(), version: version.into(), kind });
            }
        }
        let plugin = file
            .path
            .strip_prefix("pulumi/plugins/pulumi-")
            .and_then(|r| r.strip_suffix(".tar.gz"))
            .and_then(|r| r.split_once('-'))
            .filter(|(kind, _)| PLUGIN_KINDS.contains(kind))
            .and_then(|(kind, rest)| {
                let (rest, arch) = rest.rsplit_once('-')?;
                let (rest, os) = rest.rsplit_once('-')?;
                let (plugin, version) = rest.rsplit_once("-v")?;
                (is_lower_name(plugin) && is_version(version)).then(|| (kind, plugin, version, format!("{os}-{arch}")))
            });
        let Some((kind, plugin, version, platform)) = plugin else {
            bail!("`{}` is neither a Pulumi release file nor a plugin archive", file.path);
        };
        let package = format!("pulumi-{kind}-{plugin}");
        let purl = generic(&package, version);
        let kind = FileKind::Plugin { kind: kind.into(), plugin: plugin.into(), platform, purl };
        Ok(Identity { name: package, version: version.into(), kind })
    }
}

impl Settings for PulumiPlan {
    fn inputs(&self) -> String {
        inputs(self)
    }

    fn resolve(&self, dl: &mut Downloader, store: &BlobStore) -> Result<Vec<LockedFile>> {
        resolve(self, dl, store)
    }

    fn install(&self, root: &mut Tree, files: &[StoredFile<'_>], spool: &Path) -> Result<()> {
        install(root, self, files, spool)
    }
}

/// What the lock's inputs digest covers: everything but local paths' absolute form.
pub fn inputs(p: &PulumiPlan) -> String {
    let mut s = format!("{} {:?} {:?}", p.version, p.checksums.as_ref().map(|c| c.origin()), p.backend_url);
    for a in &p.archives {
        s.push_str(&format!(" {}={}@{}", a.platform, a.source, a.sha256));
    }
    for pl in &p.plugins {
        s.push_str(&format!(" {}/{}/{}/{:?}@{}", pl.kind, pl.name, pl.version, pl.platforms, pl.source));
    }
    s
}

/// The `<hex>  <file>` lines of a release's checksums file.
pub fn parse_checksums(text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let (Some(hash), Some(name), None) = (fields.next(), fields.next(), fields.next()) else {
            bail!("checksums: cannot read line `{line}`");
        };
        Digest::from_hex(hash).map_err(|e| anyhow!("checksums: {e}"))?;
        out.push((hash.to_string(), name.trim_start_matches('*').to_string()));
    }
    Ok(out)
}

/// Fetches the archives (by their pinned hashes), the checksums file and the plugins.
fn resolve(p: &PulumiPlan, dl: &mut Downloader, store: &BlobStore) -> Result<Vec<LockedFile>> {
    let mut files = Vec::new();
    let sums = match &p.checksums {
        Some(src) => {
            let fetched = dl.fetch(src.origin(), &Expect::default(), store)?;
            let text = std::fs::read_to_string(&fetched.path).with_context(|| format!("{src} is not text"))?;
            files.push(LockedFile::fetched(format!("pulumi/releases/{}", p.checksums_name()), src.origin(), &fetched));
            Some(parse_checksums(&text).with_context(|| src.to_string())?)
        }
        None => None,
    };
    for a in &p.archives {
        let name = a.file_name(&p.version);
        let digest = Digest::from_hex(&a.sha256)?;
        if let Some(sums) = &sums {
            match sums.iter().find(|(_, n)| *n == name) {
                Some((hash, _)) if *hash == a.sha256 => {}
                Some((hash, _)) => {
                    bail!("{name}: the spec pins sha256 {}, the release's checksums say {hash}", a.sha256)
                }
                None => bail!("{name}: the release's checksums file does not list it"),
            }
        }
        let fetched = dl
            .fetch(a.source.origin(), &Expect { sha256: Some(digest), size: None }, store)
            .with_context(|| format!("pulumi.archives `{}`", a.platform))?;
        files.push(LockedFile::fetched(format!("pulumi/releases/{name}"), a.source.origin(), &fetched));
    }
    for pl in &p.plugins {
        for platform in &pl.platforms {
            let name = pl.file_name(platform);
            let src = pl.source.join(&name);
            let fetched =
                dl.fetch(src.origin(), &Expect::default(), store).with_context(|| format!("plugin {name}"))?;
            check_gzip(&fetched.path, &name)?;
            files.push(LockedFile::fetched(format!("pulumi/plugins/{name}"), src.origin(), &fetched));
        }
    }
    Ok(files)
}

fn check_gzip(path: &Path, name: &str) -> Result<()> {
    let mut magic = [0u8; 2];
    std::io::Read::read_exact(&mut std::fs::File::open(path)?, &mut magic).ok();
    if magic != [0x1f, 0x8b] {
        bail!("{name}: not a gzip archive");
    }
    Ok(())
}

/// Copies the regular files of `archive` (a tar, plain or compressed) found under `prefix`
/// (`""` for the top) into `root` below `dest`, keeping their modes; the tree points at the
/// archive's (spooled) bytes, nothing is copied now. Returns the names installed.
fn install_files(root: &mut Tree, archive: &Path, prefix: &str, dest: &str, spool: &Path) -> Result<Vec<String>> {
    let mut scratch = Tree::new();
    // Pinned by digest in the lock, yet still bounded: the ratio alone, since the root
    // filesystem's size is checked when the disk is written.
    let limit = crate::expansion::ExpansionLimit::ratio_only();
    let opts = tar_input::TarOptions { whiteouts: tar_input::Whiteouts::Ignore, spool_dir: spool, limit };
    tar_input::apply_tar(&mut scratch, archive, &opts)?;
    let mut installed = Vec::new();
    for (path, id) in scratch.walk() {
        let path = String::from_utf8_lossy(&path).into_owned();
        let Some(rel) = path.strip_prefix(prefix) else { continue };
        let node = scratch.node(id);
        match &node.kind {
            NodeKind::File { .. } => {}
            NodeKind::Directory { .. } => continue,
            other => bail!("{}: `{path}` is a {}; only files are installed", archive.display(), other.describe()),
        }
        let mut meta = Meta::root(node.meta.mode & 0o755);
        meta.mtime = node.meta.mtime;
        root.insert(format!("{dest}/{rel}").as_bytes(), meta, node.kind.clone())
            .map_err(|p| anyhow!("installing {rel} from {}: {p}", archive.display()))?;
        installed.push(rel.to_string());
    }
    Ok(installed)
}

/// The environment the appliance's own CLI runs with.
pub fn environment(p: &PulumiPlan) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("PULUMI_SKIP_UPDATE_CHECK", "true".to_string()),
        ("PULUMI_PLUGIN_DOWNLOAD_URL_OVERRIDES", ".*=http://127.0.0.1/pulumi/plugins".to_string()),
    ];
    if let Some(url) = &p.backend_url {
        env.push(("PULUMI_BACKEND_URL", url.clone()));
    }
    env
}

/// Installs the CLI, seeds root's plugin cache and writes the system-wide environment.
fn install(root: &mut Tree, p: &PulumiPlan, files: &[StoredFile<'_>], spool: &Path) -> Result<()> {
    let find = |path: &str| files.iter().find(|f| f.file.path == path).map(|f| f.stored);
    let cli = p.archives.iter().find(|a| a.platform == APPLIANCE_CLI_PLATFORM).context("no linux-x64 archive")?;
    let cli_path = format!("pulumi/releases/{}", cli.file_name(&p.version));
    let archive = find(&cli_path).with_context(|| format!("{cli_path} is not in the lock"))?;
    let installed = install_files(root, archive, "pulumi/", "usr/local/bin", spool)?;
    if !installed.iter().any(|n| n == "pulumi") {
        bail!("{cli_path} has no pulumi/pulumi");
    }
    for pl in &p.plugins {
        if !pl.platforms.iter().any(|x| x == APPLIANCE_PLUGIN_PLATFORM) {
            continue;
        }
        let path = format!("pulumi/plugins/{}", pl.file_name(APPLIANCE_PLUGIN_PLATFORM));
        let archive = find(&path).with_context(|| format!("{path} is not in the lock"))?;
        install_files(root, archive, "", &format!("root/.pulumi/plugins/{}", pl.cache_dir()), spool)?;
    }
    let env = environment(p);
    let mut profile = String::from("# Written by airlock: the Pulumi CLI on this appliance uses its own mirror.\n");
    let mut environment_d = profile.clone();
    for (k, v) in &env {
        profile.push_str(&format!("export {k}='{v}'\n"));
        environment_d.push_str(&format!("{k}={v}\n"));
    }
    for (path, text) in
        [("etc/profile.d/airlock-pulumi.sh", profile), ("etc/environment.d/50-airlock-pulumi.conf", environment_d)]
    {
        root.put_file(path, 0o644, text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_checksums_files() {
        let hash = "ab".repeat(32);
        let sums = parse_checksums(&format!(
            "{hash}  pulumi-v3.0.0-linux-x64.tar.gz\n{hash} *pulumi-v3.0.0-windows-x64.zip\n"
        ))
        .unwrap();
        assert_eq!(sums[1], (hash.clone(), "pulumi-v3.0.0-windows-x64.zip".to_string()));
        assert!(parse_checksums("xyz  file\n").is_err());
        assert!(parse_checksums(&format!("{hash}  a b\n")).is_err());
    }
}
