//! The served tree as a whole: the locked files in place, the generated indexes, the listing
//! page, the `/setup/` scripts and nginx's configuration. This is the build's "build mirrors"
//! stage.

use super::{PLACEHOLDER, ROOT};
use crate::clock::BuildClock;
use crate::lock::{Lock, LockedFile, LockedMirrorSet};
use crate::oci::BlobStore;
use crate::plan::BuildPlan;
use crate::tree::{Content, Meta, NodeKind, Tree};
use anyhow::{Context, Result, anyhow};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// nginx's site: the mirror on port 80 and, with the instance's certificate (made on first boot
/// by `airlock firstboot`, or the site's own), on 443 (`mirror.<domain>`). Placeholders in JSON,
/// HTML and the setup scripts become the URL the client used (its scheme and `Host`), so every
/// document is right through any address, name or port forward. `/ca.crt` is the CA clients
/// fetch over plain HTTP before they trust anything (its fingerprint is on the console).
pub const NGINX_CONF: &str = r#"# Written by airlock: the appliance's mirrors (/usr/share/airlock/mirror), read-only.
server {
    listen 80 default_server;
    listen [::]:80 default_server;
    listen 443 ssl default_server;
    listen [::]:443 ssl default_server;
    ssl_certificate /var/lib/airlock/tls/server.crt;
    ssl_certificate_key /var/lib/airlock/tls/server.key;
    server_name _;
    root /usr/share/airlock/mirror;
    index index.html;
    default_type application/octet-stream;
    sub_filter '@AIRLOCK_MIRROR_URL@' '$scheme://$http_host';
    sub_filter_once off;

    # npm: GET /npm/<name> and /npm/@scope%2fname (nginx decodes %2f) answer with the packument.
    location /npm/ {
        sub_filter_types application/json;
        try_files $uri/index.json =404;
    }
    location ~ "^/npm/.+/-/[^/]+\.tgz$" {
        types { }
        default_type application/octet-stream;
    }
    location /nuget/ {
        sub_filter_types application/json;
    }
    location ~ "\.nupkg$" {
        types { }
        default_type application/octet-stream;
    }
    location /setup/ {
        types { }
        default_type text/plain;
        sub_filter_types text/plain;
    }
    location /go/ {
        types { }
        default_type text/plain;
        location ~ "\.zip$" {
            types { }
            default_type application/zip;
        }
    }
    location = /ca.crt {
        alias /var/lib/airlock/tls/ca.crt;
        types { }
        default_type application/x-pem-file;
    }
}
"#;

/// Puts a generated file (`0644 root:root`) into the tree.
pub fn put(root: &mut Tree, path: &str, bytes: Vec<u8>) -> Result<()> {
    root.insert(
        path.as_bytes(),
        Meta::root(0o644),
        NodeKind::File { size: bytes.len() as u64, content: Content::Bytes(bytes.into()) },
    )
    .map_err(|p| anyhow!("writing {path}: {p}"))?;
    Ok(())
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The listing page: what the appliance carries (versions, sizes) and how clients use it.
pub fn index_page(plan: &BuildPlan, sets: &[&LockedMirrorSet]) -> String {
    let title = escape(if plan.description.is_empty() { &plan.name } else { &plan.description });
    let mut h = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head><body>\n<h1>{title}</h1>\n<p>{} {} &mdash; mirrors served by this appliance at <code>{PLACEHOLDER}/</code>.</p>\n",
        escape(&plan.name),
        escape(&plan.version)
    );
    h.push_str(&format!(
        "<h2>Set up a client</h2>\n<p>Linux and macOS: <code>curl -fsS {PLACEHOLDER}/setup/airlock-setup.sh | sh</code><br>\nWindows: <code>irm {PLACEHOLDER}/setup/airlock-setup.ps1 | iex</code><br>\nThey configure pip, npm, Go, NuGet and the Pulumi CLI for this appliance (<a href=\"setup/airlock-setup.sh\">sh</a>, <a href=\"setup/airlock-setup.ps1\">PowerShell</a>).</p>\n"
    ));
    for set in sets {
        let total: u64 = set.files.iter().map(|f| f.size).sum();
        let (heading, use_it) = match set.set.as_str() {
            "pulumi" => (
                "Pulumi CLI and plugins",
                format!(
                    "<code>PULUMI_PLUGIN_DOWNLOAD_URL_OVERRIDES='.*={PLACEHOLDER}/pulumi/plugins'</code>; CLI archives in <a href=\"pulumi/releases/\">pulumi/releases/</a>"
                ),
            ),
            "pypi" => ("PyPI", format!("<code>pip install --index-url {PLACEHOLDER}/pypi/simple/ ...</code>")),
            "npm" => ("npm", format!("<code>npm config set registry {PLACEHOLDER}/npm/</code>")),
            "go" => ("Go modules", format!("<code>GOPROXY={PLACEHOLDER}/go,off GOSUMDB=off</code>")),
            "nuget" => ("NuGet", format!("source <code>{PLACEHOLDER}/nuget/v3/index.json</code>")),
            other => (other, String::new()),
        };
        h.push_str(&format!(
            "<h2>{heading}</h2>\n<p>{} files, {}. {use_it}</p>\n<table>\n",
            set.files.len(),
            human(total)
        ));
        for f in &set.files {
            // Indexes list what a person looks for; every file is still listed with its size.
            h.push_str(&format!(
                "<tr><td><a href=\"{p}\">{p}</a></td><td>{}</td><td><code>{}</code></td></tr>\n",
                human(f.size),
                &f.sha256[..16],
                p = escape(&f.path)
            ));
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body></html>\n");
    h
}

/// NuGet's configuration with the appliance as its only source; `BASE` is the script's variable.
fn nuget_config(base: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<configuration>\n  <packageSources>\n    <clear />\n    <add key=\"airlock\" value=\"{base}/nuget/v3/index.json\" protocolVersion=\"3\" />\n  </packageSources>\n</configuration>\n"
    )
}

/// The POSIX shell setup script. The base URL comes from the first argument, `$AIRLOCK_MIRROR`,
/// or the URL nginx substitutes for the placeholder when serving the script.
pub fn setup_sh() -> String {
    format!(
        r#"#!/bin/sh
# airlock: configures pip, npm, Go, NuGet and the Pulumi CLI of the current user for this
# appliance's mirrors. Usage: curl -fsS <mirror>/setup/airlock-setup.sh | sh
#                        or: sh airlock-setup.sh [BASE_URL]
set -eu
base="${{1:-${{AIRLOCK_MIRROR:-{PLACEHOLDER}}}}}"
base="${{base%/}}"
case "$base" in
  http://*|https://*) ;;
  *) echo "airlock-setup: '$base' is not an http(s) URL" >&2; exit 2 ;;
esac
hostport="${{base#*://}}"; hostport="${{hostport%%/*}}"; host="${{hostport%:*}}"
config="${{XDG_CONFIG_HOME:-$HOME/.config}}"
case "$(uname -s)" in
  Darwin) goconfig="$HOME/Library/Application Support/go" ;;
  *) goconfig="$config/go" ;;
esac

# Replaces the lines of file $1 whose key (before `=`) matches $2 with the lines on stdin.
replace_keys() {{
  mkdir -p "$(dirname "$1")"
  touch "$1"
  {{ grep -v -E "^[[:space:]]*($2)[[:space:]]*=" "$1" || true; cat; }} > "$1.airlock-new"
  mv "$1.airlock-new" "$1"
}}

mkdir -p "$config/pip"
{{
  echo "[global]"
  echo "index-url = $base/pypi/simple/"
  case "$base" in http://*) echo "trusted-host = $host" ;; esac
}} > "$config/pip/pip.conf"
echo "pip: $config/pip/pip.conf"

printf 'registry=%s/npm/\n' "$base" | replace_keys "$HOME/.npmrc" registry
echo "npm: $HOME/.npmrc"

printf 'GOPROXY=%s/go,off\nGOSUMDB=off\nGOTOOLCHAIN=local\n' "$base" | replace_keys "$goconfig/env" 'GOPROXY|GOSUMDB|GOTOOLCHAIN'
echo "go: $goconfig/env"

mkdir -p "$HOME/.nuget/NuGet"
cat > "$HOME/.nuget/NuGet/NuGet.Config" <<EOF
{nuget}EOF
echo "nuget: $HOME/.nuget/NuGet/NuGet.Config"

mkdir -p "$HOME/.pulumi"
cat > "$HOME/.pulumi/airlock-env.sh" <<EOF
# Written by airlock-setup: the Pulumi CLI uses the appliance's plugin mirror.
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_PLUGIN_DOWNLOAD_URL_OVERRIDES='.*=$base/pulumi/plugins'
EOF
line='[ -f "$HOME/.pulumi/airlock-env.sh" ] && . "$HOME/.pulumi/airlock-env.sh"'
touch "$HOME/.profile"
grep -qxF "$line" "$HOME/.profile" || echo "$line" >> "$HOME/.profile"
echo "pulumi: $HOME/.pulumi/airlock-env.sh (sourced from ~/.profile)"
echo "airlock-setup: configured for $base"
"#,
        nuget = nuget_config("$base")
    )
}

/// The PowerShell setup script (Windows, or PowerShell anywhere).
pub fn setup_ps1() -> String {
    format!(
        r#"# airlock: configures pip, npm, Go, NuGet and the Pulumi CLI of the current user for this
# appliance's mirrors. Usage: irm <mirror>/setup/airlock-setup.ps1 | iex
#                        or: .\airlock-setup.ps1 [-Base URL]
param([string]$Base = $(if ($env:AIRLOCK_MIRROR) {{ $env:AIRLOCK_MIRROR }} else {{ '{PLACEHOLDER}' }}))
$ErrorActionPreference = 'Stop'
$Base = $Base.TrimEnd('/')
if ($Base -notmatch '^https?://') {{ throw "airlock-setup: '$Base' is not an http(s) URL" }}
$uri = [Uri]$Base
$appData = if ($env:APPDATA) {{ $env:APPDATA }} else {{ Join-Path $HOME '.config' }}

$pipDir = Join-Path $appData 'pip'
New-Item -ItemType Directory -Force -Path $pipDir | Out-Null
$pip = "[global]`nindex-url = $Base/pypi/simple/`n"
if ($uri.Scheme -eq 'http') {{ $pip += "trusted-host = $($uri.Host)`n" }}
Set-Content -Path (Join-Path $pipDir $(if ($IsWindows -or $env:OS -eq 'Windows_NT') {{ 'pip.ini' }} else {{ 'pip.conf' }})) -Value $pip
Write-Output "pip: $pipDir"

$npmrc = Join-Path $HOME '.npmrc'
$lines = @(if (Test-Path $npmrc) {{ Get-Content $npmrc | Where-Object {{ $_ -notmatch '^\s*registry\s*=' }} }})
$lines += "registry=$Base/npm/"
Set-Content -Path $npmrc -Value $lines
Write-Output "npm: $npmrc"

$goDir = Join-Path $appData 'go'
New-Item -ItemType Directory -Force -Path $goDir | Out-Null
$goEnv = Join-Path $goDir 'env'
$lines = @(if (Test-Path $goEnv) {{ Get-Content $goEnv | Where-Object {{ $_ -notmatch '^\s*(GOPROXY|GOSUMDB|GOTOOLCHAIN)\s*=' }} }})
$lines += "GOPROXY=$Base/go,off", 'GOSUMDB=off', 'GOTOOLCHAIN=local'
Set-Content -Path $goEnv -Value $lines
Write-Output "go: $goEnv"

$nugetDir = Join-Path $appData 'NuGet'
New-Item -ItemType Directory -Force -Path $nugetDir | Out-Null
$nuget = @"
{nuget}"@
Set-Content -Path (Join-Path $nugetDir 'NuGet.Config') -Value $nuget
Write-Output "nuget: $nugetDir\NuGet.Config"

[Environment]::SetEnvironmentVariable('PULUMI_SKIP_UPDATE_CHECK', 'true', 'User')
[Environment]::SetEnvironmentVariable('PULUMI_PLUGIN_DOWNLOAD_URL_OVERRIDES', ".*=$Base/pulumi/plugins", 'User')
Write-Output "pulumi: PULUMI_SKIP_UPDATE_CHECK, PULUMI_PLUGIN_DOWNLOAD_URL_OVERRIDES (user environment)"
Write-Output "airlock-setup: configured for $Base"
"#,
        nuget = nuget_config("$Base")
    )
}

/// The build stage: every locked file of the plan's sets verified and placed, the indexes
/// generated, the CLI installed, the site and nginx configured.
pub fn build(
    root: &mut Tree,
    plan: &BuildPlan,
    lock: &Lock,
    store: &BlobStore,
    spool: &Path,
    clock: &BuildClock,
) -> Result<()> {
    if plan.mirrors.is_empty() {
        return Ok(());
    }
    root.begin_layer();
    std::fs::create_dir_all(spool).with_context(|| format!("creating {}", spool.display()))?;
    let sets = super::verify_cached(plan, lock, store)?;
    let mut meta = Meta::root(0o644);
    meta.mtime = clock.epoch();
    let mut generated: Vec<(String, String)> = Vec::new();
    let mut by_set: BTreeMap<&str, Vec<(LockedFile, PathBuf)>> = BTreeMap::new();
    for (set, paths) in &sets {
        for (f, p) in set.files.iter().zip(paths) {
            let at = format!("{ROOT}/{}", f.path);
            root.insert(
                at.as_bytes(),
                meta.clone(),
                NodeKind::File { size: f.size, content: Content::Host(Arc::from(p.as_path())) },
            )
            .map_err(|e| anyhow!("placing {at}: {e}"))?;
            by_set.entry(set.set.as_str()).or_default().push((f.clone(), p.clone()));
        }
    }
    for (set, files) in &by_set {
        let locked: Vec<LockedFile> = files.iter().map(|(f, _)| f.clone()).collect();
        match *set {
            "pypi" => generated.extend(super::pypi::render(&locked)?),
            "go" => generated.extend(super::goproxy::render(&locked)),
            "nuget" => generated.extend(super::nuget::render(&locked)?),
            "npm" => {
                let mut versions = Vec::new();
                for (f, p) in files {
                    let pj = super::npm::read_package_json(p).with_context(|| f.path.clone())?;
                    versions.push((f, pj, super::npm::integrity_of(p)?));
                }
                generated.extend(super::npm::render(&versions)?);
            }
            _ => {}
        }
    }
    if let Some(p) = &plan.mirrors.pulumi {
        super::pulumi::install(root, p, by_set.get("pulumi").map(Vec::as_slice).unwrap_or(&[]), spool)?;
    }
    let set_refs: Vec<&LockedMirrorSet> = sets.iter().map(|(s, _)| *s).collect();
    generated.push(("index.html".into(), index_page(plan, &set_refs)));
    generated.push(("setup/airlock-setup.sh".into(), setup_sh()));
    generated.push(("setup/airlock-setup.ps1".into(), setup_ps1()));
    for (path, text) in generated {
        let at = format!("{ROOT}/{path}");
        root.insert(
            at.as_bytes(),
            meta.clone(),
            NodeKind::File { size: text.len() as u64, content: Content::Bytes(text.into_bytes().into()) },
        )
        .map_err(|e| anyhow!("writing {at}: {e}"))?;
    }
    // The mirror is nginx's default site (`front_door` removes Debian's).
    put(root, "etc/nginx/conf.d/airlock-mirror.conf", NGINX_CONF.as_bytes().to_vec())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_config_filters_only_documents() {
        // Tarballs, packages and zips must never pass through sub_filter.
        assert!(NGINX_CONF.contains(&format!("sub_filter '{PLACEHOLDER}' '$scheme://$http_host'")));
        for binary in ["\\.tgz$", "\\.nupkg$", "\\.zip$"] {
            assert!(NGINX_CONF.contains(binary), "{binary}");
        }
        assert!(setup_sh().contains(&format!("AIRLOCK_MIRROR:-{PLACEHOLDER}")));
        assert!(setup_ps1().contains(&format!("'{PLACEHOLDER}'")));
        // TLS with the instance's certificate, and the CA over plain HTTP.
        assert!(NGINX_CONF.contains("listen 443 ssl default_server;"));
        assert!(NGINX_CONF.contains("location = /ca.crt {\n        alias /var/lib/airlock/tls/ca.crt;"));
    }

    #[test]
    fn setup_script_configures_every_client_for_a_base_url() {
        let home = tempfile::tempdir().unwrap();
        let script = home.path().join("setup.sh");
        std::fs::write(&script, setup_sh()).unwrap();
        std::fs::write(home.path().join(".npmrc"), "registry=https://elsewhere.example.test/\nfund=false\n").unwrap();
        let out = std::process::Command::new("sh")
            .arg(&script)
            .arg("http://10.0.0.5:8080/")
            .env_clear()
            .env("HOME", home.path())
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let read = |p: &str| std::fs::read_to_string(home.path().join(p)).unwrap();
        assert_eq!(
            read(".config/pip/pip.conf"),
            "[global]\nindex-url = http://10.0.0.5:8080/pypi/simple/\ntrusted-host = 10.0.0.5\n"
        );
        assert_eq!(read(".npmrc"), "fund=false\nregistry=http://10.0.0.5:8080/npm/\n");
        assert_eq!(read(".config/go/env"), "GOPROXY=http://10.0.0.5:8080/go,off\nGOSUMDB=off\nGOTOOLCHAIN=local\n");
        assert!(read(".nuget/NuGet/NuGet.Config").contains("value=\"http://10.0.0.5:8080/nuget/v3/index.json\""));
        assert!(
            read(".pulumi/airlock-env.sh")
                .contains("PULUMI_PLUGIN_DOWNLOAD_URL_OVERRIDES='.*=http://10.0.0.5:8080/pulumi/plugins'")
        );
        // Running it twice changes nothing.
        let profile = read(".profile");
        let again = std::process::Command::new("sh")
            .arg(&script)
            .arg("http://10.0.0.5:8080")
            .env_clear()
            .env("HOME", home.path())
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap();
        assert!(again.status.success());
        assert_eq!(read(".profile"), profile);
        assert_eq!(read(".npmrc"), "fund=false\nregistry=http://10.0.0.5:8080/npm/\n");
        // Without a served URL substituted, it refuses instead of writing a placeholder.
        let bare = std::process::Command::new("sh")
            .arg(&script)
            .env_clear()
            .env("HOME", home.path())
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap();
        assert!(!bare.status.success());
    }
}
