//! Where a mirrored file comes from, as a spec names it: a URL, or a file on the build host.

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
