//! Repository names and tags as the registry (distribution 2.8) accepts them.
//!
//! A repository name is one or more `/`-separated components, each lowercase alphanumerics
//! joined by single `.` or `_`, a double `__`, or runs of `-`; at most 255 characters in all.
//! A tag is a word character followed by up to 127 word characters, `.` or `-`. Names that
//! pass these rules are also safe as storage paths: no component can be empty, `.`, `..`, or
//! start with `_` (the storage's own `_layers`, `_manifests`, `_uploads`).

use std::fmt;

/// A repository name such as `demo/api`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepositoryName(String);

/// A tag such as `1.4.2`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "repository name `{0}` is not valid: use lowercase letters and digits, separated by `.`, `_`, `__` or `-` within a component and `/` between components"
    )]
    Repository(String),
    #[error("repository name `{0}` is longer than 255 characters")]
    RepositoryTooLong(String),
    #[error("tag `{0}` is not valid: use up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`")]
    Tag(String),
}

impl RepositoryName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.len() > 255 {
            return Err(NameError::RepositoryTooLong(s.to_string()));
        }
        if s.split('/').all(valid_component) {
            Ok(Self(s.to_string()))
        } else {
            Err(NameError::Repository(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Tag {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let mut chars = s.chars();
        let ok = s.len() <= 128 && chars.next().is_some_and(word) && chars.all(|c| word(c) || c == '.' || c == '-');
        if ok { Ok(Self(s.to_string())) } else { Err(NameError::Tag(s.to_string())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let mut i = 0;
    loop {
        // A run of alphanumerics...
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        // ...then one separator before the next run.
        let sep_start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        match &c[sep_start..i] {
            "." | "_" | "__" => {}
            s if s.bytes().all(|b| b == b'-') => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        for ok in ["demo", "demo/api", "a.b/c_d/e__f/g-h/i---j", "0/1"] {
            assert!(RepositoryName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Demo",
            "demo/",
            "/demo",
            "demo//api",
            "a..b",
            "a___b",
            "_layers",
            "a/../b",
            "a/./b",
            "a-",
            "-a",
            "a b",
            "a:1",
            "a.-b",
        ] {
            assert!(RepositoryName::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(RepositoryName::parse(&"a".repeat(256)), Err(NameError::RepositoryTooLong(_))));
    }

    #[test]
    fn tags() {
        for ok in ["1", "latest", "v1.2.3-rc_1", "_x", &"a".repeat(128)] {
            assert!(Tag::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "..", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad}");
        }
    }
}
