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
use super::plan::{APPLIANCE_CLI_PLATFORM, APPLIANCE_PLUGIN_PLATFORM, PulumiPlan};
use crate::lock::LockedFile;
use crate::oci::{BlobStore, Digest};
use crate::tree::{Meta, NodeKind, Tree, tar_input};
use anyhow::{Context, Result, anyhow, bail};
use std::path::Path;

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
pub fn resolve(p: &PulumiPlan, dl: &mut Downloader, store: &BlobStore) -> Result<Vec<LockedFile>> {
    let mut files = Vec::new();
    let sums = match &p.checksums {
        Some(src) => {
            let fetched = dl.fetch(src.origin(), &Expect::default(), store)?;
            let text = std::fs::read_to_string(&fetched.path).with_context(|| format!("{src} is not text"))?;
            files.push(super::locked(format!("pulumi/releases/{}", p.checksums_name()), src.origin(), &fetched));
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
        files.push(super::locked(format!("pulumi/releases/{name}"), a.source.origin(), &fetched));
    }
    for pl in &p.plugins {
        for platform in &pl.platforms {
            let name = pl.file_name(platform);
            let src = pl.source.join(&name);
            let fetched =
                dl.fetch(src.origin(), &Expect::default(), store).with_context(|| format!("plugin {name}"))?;
            check_gzip(&fetched.path, &name)?;
            files.push(super::locked(format!("pulumi/plugins/{name}"), src.origin(), &fetched));
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
    tar_input::apply_tar(&mut scratch, archive, &tar_input::TarOptions { whiteouts: false, spool_dir: spool, limit })?;
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
pub fn install(
    root: &mut Tree,
    p: &PulumiPlan,
    files: &[(LockedFile, std::path::PathBuf)],
    spool: &Path,
) -> Result<()> {
    let find = |path: &str| files.iter().find(|(f, _)| f.path == path).map(|(_, p)| p.as_path());
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
        super::site::put(root, path, text.into_bytes())?;
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
