//! Registry credentials from the files podman, skopeo and docker keep them in
//! (containers-auth.json(5)): the first file that has an entry for the registry wins.
//!
//! Searched in order: `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `$XDG_CONFIG_HOME/containers/auth.json` (default `~/.config/...`), then docker's
//! `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`). Within a file the most
//! specific key wins: `host/namespace/repo`, then `host/namespace`, then `host`. Keys written as
//! URLs (`https://host/v1/`, docker's old style) count as their host. Only `auth` (base64
//! `user:password`) is read; credential helpers and identity tokens are not supported.

use anyhow::{Context, Result};
use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: String,
    /// The file it came from, for messages.
    pub file: PathBuf,
}

impl fmt::Debug for Login {
    /// Never prints the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login").field("username", &self.username).field("file", &self.file).finish_non_exhaustive()
    }
}

impl Login {
    /// The `Authorization` header value for HTTP Basic.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// Where credentials are looked up.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    files: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
}

impl Credentials {
    /// The standard files, from the environment.
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let home = env("HOME");
        let mut files = Vec::new();
        if let Some(f) = env("REGISTRY_AUTH_FILE") {
            files.push(f);
        }
        if let Some(d) = env("XDG_RUNTIME_DIR") {
            files.push(d.join("containers/auth.json"));
        }
        if let Some(d) = env("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config"))) {
            files.push(d.join("containers/auth.json"));
        }
        if let Some(d) = env("DOCKER_CONFIG").or_else(|| home.as_ref().map(|h| h.join(".docker"))) {
            files.push(d.join("config.json"));
        }
        Self { files }
    }

    /// Exactly these files, in this order.
    pub fn from_files(files: Vec<PathBuf>) -> Self {
        Self { files }
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The login for repository `path` on `host` (`host[:port]`), if any file has one.
    pub fn lookup(&self, host: &str, path: &str) -> Result<Option<Login>> {
        for file in &self.files {
            if let Some(login) = lookup_in(file, host, path)? {
                return Ok(Some(login));
            }
        }
        Ok(None)
    }
}

fn lookup_in(file: &Path, host: &str, path: &str) -> Result<Option<Login>> {
    if let Err(e) = std::fs::symlink_metadata(file)
        && e.kind() == std::io::ErrorKind::NotFound
    {
        return Ok(None);
    }
    // A login file is a few KiB; more is not read.
    let bytes = crate::input_file::read_capped(file, 1 << 20, "registry credentials")?;
    let parsed: AuthFile =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing registry credentials {}", file.display()))?;
    let entries: BTreeMap<String, &AuthEntry> = parsed.auths.iter().map(|(k, v)| (normalize_key(k), v)).collect();
    // `host/a/b/c`, `host/a/b`, `host/a`, `host`: most specific first.
    let mut key = format!("{host}/{path}");
    loop {
        if let Some(entry) = entries.get(&key)
            && let Some(auth) = &entry.auth
        {
            return decode(auth, file, &key).map(Some);
        }
        match key.rfind('/') {
            Some(i) => key.truncate(i),
            None => return Ok(None),
        }
    }
}

/// `https://host/v1/` → `host`; `host/ns` stays.
fn normalize_key(key: &str) -> String {
    match key.split_once("://") {
        Some((_, rest)) => rest.split('/').next().unwrap_or(rest).to_string(),
        None => key.trim_end_matches('/').to_string(),
    }
}

fn decode(auth: &str, file: &Path, key: &str) -> Result<Login> {
    let what = || format!("the `auth` of `{key}` in {}", file.display());
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .with_context(|| format!("{} is not base64", what()))?;
    let text = String::from_utf8(raw).with_context(|| format!("{} is not UTF-8", what()))?;
    let (username, password) = text.split_once(':').with_context(|| format!("{} is not `user:password`", what()))?;
    Ok(Login { username: username.to_string(), password: password.to_string(), file: file.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn first_file_and_most_specific_key_win() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("auth.json");
        let b = dir.path().join("config.json");
        std::fs::write(
            &a,
            serde_json::json!({"auths": {
                "127.0.0.1:5000": {"auth": b64("host:h")},
                "127.0.0.1:5000/team": {"auth": b64("team:t")},
                "127.0.0.1:5000/team/api": {"auth": b64("api:a:with:colons")},
            }})
            .to_string(),
        )
        .unwrap();
        std::fs::write(
            &b,
            serde_json::json!({"auths": {
                "https://localhost:5000/v1/": {"auth": b64("docker:d")},
                "127.0.0.1:5000": {"auth": b64("shadowed:x")},
            }, "credsStore": "desktop"})
            .to_string(),
        )
        .unwrap();
        let c = Credentials::from_files(vec![dir.path().join("missing.json"), a.clone(), b.clone()]);
        let user = |host: &str, path: &str| c.lookup(host, path).unwrap().map(|l| (l.username, l.password));
        assert_eq!(user("127.0.0.1:5000", "team/api"), Some(("api".into(), "a:with:colons".into())));
        assert_eq!(user("127.0.0.1:5000", "team/web"), Some(("team".into(), "t".into())));
        assert_eq!(user("127.0.0.1:5000", "other/x"), Some(("host".into(), "h".into())));
        assert_eq!(user("localhost:5000", "x"), Some(("docker".into(), "d".into())));
        assert_eq!(user("localhost", "x"), None);
        let login = c.lookup("localhost:5000", "x").unwrap().unwrap();
        assert_eq!(login.file, b);
        assert_eq!(login.basic_header(), format!("Basic {}", b64("docker:d")));
        assert!(!format!("{login:?}").contains("\"d\""));
    }

    #[test]
    fn broken_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        std::fs::write(&f, "{not json").unwrap();
        let e = Credentials::from_files(vec![f.clone()]).lookup("h", "p").unwrap_err();
        assert!(format!("{e:#}").contains(&f.display().to_string()), "{e:#}");
        std::fs::write(&f, serde_json::json!({"auths": {"h": {"auth": "!!"}}}).to_string()).unwrap();
        let e = Credentials::from_files(vec![f]).lookup("h", "p").unwrap_err();
        assert!(format!("{e:#}").contains("the `auth` of `h`"), "{e:#}");
    }
}
