//! The build host's own Debian mirror, read from its apt configuration.
//!
//! airlock never names a mirror itself: the appliance's packages come from the archive the build
//! host already uses (or from the spec's `os.mirror`). Both apt formats are read: deb822
//! `*.sources` files and one-line `sources.list` files.

use anyhow::{Context, Result, bail};
use std::path::Path;

/// One `deb` source: a URI and its suites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
}

impl AptSource {
    /// The Debian archive proper: its path ends in `/debian` and it serves a release suite (not
    /// `-security`, which lives in a separate archive).
    fn is_debian_archive(&self) -> bool {
        let path = self.uri.trim_end_matches('/');
        path.ends_with("/debian") && self.suites.iter().any(|s| !s.ends_with("-security"))
    }
}

/// Parses deb822 `.sources` text (paragraphs of `Key: value`).
pub fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in para.lines() {
            if line.starts_with('#') {
                continue;
            }
            if let Some(cont) = line.strip_prefix([' ', '\t']) {
                if let Some(last) = fields.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(cont.trim());
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| fields.iter().find(|(fk, _)| fk == k).map(|(_, v)| v.as_str());
        let words = |k: &str| get(k).map(|v| v.split_whitespace().map(String::from).collect()).unwrap_or_default();
        let types: Vec<String> = words("types");
        if !types.iter().any(|t| t == "deb") || get("enabled").is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        for uri in words("uris") {
            out.push(AptSource { uri, suites: words("suites"), components: words("components") });
        }
    }
    out
}

/// Parses one-line `sources.list` text (`deb [options] URI suite components...`).
pub fn parse_one_line(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut rest = match line.strip_prefix("deb ") {
            Some(r) => r.trim(),
            None => continue,
        };
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(end) => rest = rest[end + 1..].trim(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else { continue };
        out.push(AptSource {
            uri: uri.into(),
            suites: vec![suite.into()],
            components: words.map(String::from).collect(),
        });
    }
    out
}

/// All `deb` sources configured under `etc_apt` (normally `/etc/apt`), in apt's reading order.
pub fn read_sources(etc_apt: &Path) -> Result<Vec<AptSource>> {
    let mut out = Vec::new();
    let list = etc_apt.join("sources.list");
    if list.exists() {
        let text = std::fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
        out.extend(parse_one_line(&text));
    }
    let dir = etc_apt.join("sources.list.d");
    if dir.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for p in names {
            let ext = p.extension().and_then(|e| e.to_str());
            if !matches!(ext, Some("sources" | "list")) {
                continue;
            }
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            out.extend(if ext == Some("sources") { parse_deb822(&text) } else { parse_one_line(&text) });
        }
    }
    Ok(out)
}

/// The Debian archive URI the build host uses.
pub fn host_debian_mirror(etc_apt: &Path) -> Result<String> {
    let sources = read_sources(etc_apt)?;
    match sources.iter().find(|s| s.is_debian_archive()) {
        Some(s) => Ok(s.uri.trim_end_matches('/').to_string()),
        None => bail!(
            "no Debian archive found in the build host's apt configuration ({}); set `os.mirror` in the spec",
            etc_apt.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n";

    #[test]
    fn deb822_sources() {
        let s = parse_deb822(DEB822);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].uri, "http://mirror.example/debian");
        assert_eq!(s[0].suites, ["bookworm", "bookworm-updates"]);
        assert!(s[0].is_debian_archive());
        assert!(!s[1].is_debian_archive());
    }

    #[test]
    fn one_line_sources() {
        let s = parse_one_line(
            "# x\ndeb [arch=amd64 signed-by=/k.gpg] http://proxy:3142/debian/ trixie main contrib\ndeb-src http://x/debian trixie main\ndeb https://repo.example/node nodistro main\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].uri, "http://proxy:3142/debian/");
        assert_eq!(s[0].components, ["main", "contrib"]);
        assert!(s[0].is_debian_archive());
        assert!(!s[1].is_debian_archive());
    }

    #[test]
    fn finds_the_archive_in_a_directory_and_skips_disabled_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sources.list.d")).unwrap();
        std::fs::write(
            d.path().join("sources.list.d/a-third-party.list"),
            "deb https://repo.example/node nodistro main\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("sources.list.d/debian.sources.disabled"),
            "Types: deb\nURIs: http://wrong/debian\nSuites: x\n",
        )
        .unwrap();
        std::fs::write(d.path().join("sources.list.d/debian.sources"), DEB822).unwrap();
        assert_eq!(host_debian_mirror(d.path()).unwrap(), "http://mirror.example/debian");
        let empty = tempfile::tempdir().unwrap();
        assert!(host_debian_mirror(empty.path()).unwrap_err().to_string().contains("set `os.mirror`"));
    }
}
