//! Image references (`docker.io/pulumi/service:1.2.3`), parsed and normalized the way
//! containers/image (podman, skopeo) and the distribution library do it, so that the reference a
//! spec names means the same image to airlock as to podman on the appliance.
//!
//! The grammar: `[domain[:port]/]path[:tag][@digest]`. The first `/`-separated component is a
//! domain only if it contains `.` or `:`, is `localhost`, or has an uppercase letter; otherwise
//! the domain is `docker.io`, and a single-component path there gets `library/` in front. A
//! reference with neither tag nor digest means the tag `latest`. The path follows the
//! registry's repository grammar ([`RepositoryName`]); the tag, [`Tag`]'s; the digest must be
//! sha256 (the only algorithm airlock handles).

use super::digest::Digest;
use super::registry_names::{RepositoryName, Tag};
use std::fmt;

/// The domain of references that name none (containers/image's `docker.io` default).
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// What a single-component path on [`DEFAULT_DOMAIN`] is prefixed with.
const OFFICIAL_REPOSITORY_PREFIX: &str = "library/";
/// The tag of a reference that names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest `domain/path`, as in the distribution library.
const MAX_NAME_LENGTH: usize = 255;

/// A normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageReference {
    /// `host[:port]`, as written (or [`DEFAULT_DOMAIN`]).
    domain: String,
    /// The repository path on that registry, e.g. `pulumi/service` or `library/mysql`.
    path: RepositoryName,
    /// The tag; `latest` when the reference named neither tag nor digest.
    tag: Option<Tag>,
    digest: Option<Digest>,
}

/// Why a string is not a reference airlock accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("an image reference cannot be empty")]
    Empty,
    #[error("`{0}` has a 64-character hex string as its name; write the digest as `name@sha256:<hex>`")]
    BareIdentifier(String),
    #[error("`{reference}`: the domain `{domain}` is not a host name with an optional port")]
    Domain { reference: String, domain: String },
    #[error("`{reference}`: the repository path `{path}` must be lowercase")]
    Uppercase { reference: String, path: String },
    #[error("`{reference}`: {source}")]
    Path { reference: String, source: super::registry_names::NameError },
    #[error("`{reference}`: `{name}` is longer than {MAX_NAME_LENGTH} characters")]
    TooLong { reference: String, name: String },
    #[error("`{reference}`: {source}")]
    Tag { reference: String, source: super::registry_names::NameError },
    #[error("`{reference}`: {source}")]
    Digest { reference: String, source: super::digest::DigestError },
}

impl ImageReference {
    /// Parses and normalizes a reference.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let reference = || s.to_string();
        let (name_and_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                let digest =
                    Digest::parse(d).map_err(|source| ReferenceError::Digest { reference: reference(), source })?;
                (n, Some(digest))
            }
            None => (s, None),
        };
        // A `:` after the last `/` starts the tag; one before it is the domain's port.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].find(':') {
            Some(i) => {
                let at = last_slash + i;
                let tag = Tag::parse(&name_and_tag[at + 1..])
                    .map_err(|source| ReferenceError::Tag { reference: reference(), source })?;
                (&name_and_tag[..at], Some(tag))
            }
            None => (name_and_tag, None),
        };
        if name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ReferenceError::BareIdentifier(reference()));
        }
        if name.len() > MAX_NAME_LENGTH {
            return Err(ReferenceError::TooLong { reference: reference(), name: name.to_string() });
        }
        let (domain, path) = split_domain(name);
        if !valid_domain(domain) {
            return Err(ReferenceError::Domain { reference: reference(), domain: domain.to_string() });
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase { reference: reference(), path: path.to_string() });
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("{OFFICIAL_REPOSITORY_PREFIX}{path}")
        } else {
            path.to_string()
        };
        let path =
            RepositoryName::parse(&path).map_err(|source| ReferenceError::Path { reference: reference(), source })?;
        let tag = match (tag, &digest) {
            (None, None) => {
                Some(Tag::parse(DEFAULT_TAG).map_err(|source| ReferenceError::Tag { reference: reference(), source })?)
            }
            (tag, _) => tag,
        };
        Ok(Self { domain: domain.to_string(), path, tag, digest })
    }

    /// `host[:port]` of the registry the reference names.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository on that registry (`pulumi/service`).
    pub fn path(&self) -> &RepositoryName {
        &self.path
    }

    pub fn tag(&self) -> Option<&Tag> {
        self.tag.as_ref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `domain/path`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// What to ask the registry for: the digest if there is one (it pins the image), else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            // `parse` gives every reference a tag or a digest.
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }
}

impl fmt::Display for ImageReference {
    /// The fully qualified form: `docker.io/library/mysql:8.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ImageReference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Splits `name` into domain and path by containers/image's rule (`splitDockerDomain`).
fn split_domain(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':']) || first == "localhost" || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DEFAULT_DOMAIN, name),
    }
}

/// `host[:port]`, host being DNS labels (letters, digits, inner `-`) joined by `.`, or a
/// bracketed IPv6 address.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after.strip_prefix(':') {
            Some(port) => ("v6", Some(port)),
            None if after.is_empty() => ("v6", None),
            None => return false,
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host.split('.').all(label_ok) && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        ImageReference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).to_string()
    }

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalizes_like_containers_image() {
        assert_eq!(norm("mysql"), "docker.io/library/mysql:latest");
        assert_eq!(norm("mysql:8.0"), "docker.io/library/mysql:8.0");
        assert_eq!(norm("pulumi/service:1.2.3"), "docker.io/pulumi/service:1.2.3");
        assert_eq!(norm("docker.io/pulumi/service:1.2.3"), "docker.io/pulumi/service:1.2.3");
        assert_eq!(norm("docker.io/mysql"), "docker.io/library/mysql:latest");
        assert_eq!(norm("localhost/demo/api"), "localhost/demo/api:latest");
        assert_eq!(norm("localhost:5000/api:1"), "localhost:5000/api:1");
        assert_eq!(norm("127.0.0.1:5000/a/b/c:v1"), "127.0.0.1:5000/a/b/c:v1");
        assert_eq!(norm("[::1]:5000/api:1"), "[::1]:5000/api:1");
        // An uppercase first component is a domain (containers/image's rule).
        assert_eq!(norm("Registry/api"), "Registry/api:latest");
        // A digest without a tag gets no `latest`; with both, both are kept.
        assert_eq!(norm(&format!("mysql@sha256:{HEX}")), format!("docker.io/library/mysql@sha256:{HEX}"));
        assert_eq!(norm(&format!("mysql:8.0@sha256:{HEX}")), format!("docker.io/library/mysql:8.0@sha256:{HEX}"));
    }

    #[test]
    fn parts() {
        let r = ImageReference::parse("127.0.0.1:5000/demo/api:1").unwrap();
        assert_eq!(r.domain(), "127.0.0.1:5000");
        assert_eq!(r.path().as_str(), "demo/api");
        assert_eq!(r.tag().map(Tag::as_str), Some("1"));
        assert_eq!(r.name(), "127.0.0.1:5000/demo/api");
        assert_eq!(r.manifest_reference(), "1");
        let pinned = ImageReference::parse(&format!("demo/api:1@sha256:{HEX}")).unwrap();
        assert_eq!(pinned.manifest_reference(), format!("sha256:{HEX}"));
    }

    #[test]
    fn refuses_malformed_references() {
        type Check = fn(&ReferenceError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, ReferenceError::Empty)),
            ("docker.io/Pulumi/service", |e| matches!(e, ReferenceError::Uppercase { .. })),
            ("pulumi/Service", |e| matches!(e, ReferenceError::Uppercase { .. })),
            ("api:", |e| matches!(e, ReferenceError::Tag { .. })),
            ("api:-x", |e| matches!(e, ReferenceError::Tag { .. })),
            ("api@sha256:abc", |e| matches!(e, ReferenceError::Digest { .. })),
            ("api@sha512:abc", |e| matches!(e, ReferenceError::Digest { .. })),
            ("a//b", |e| matches!(e, ReferenceError::Path { .. })),
            ("localhost:port/api", |e| matches!(e, ReferenceError::Domain { .. })),
            ("-127.0.0.1/api", |e| matches!(e, ReferenceError::Domain { .. })),
            ("[zz]:5000/api", |e| matches!(e, ReferenceError::Domain { .. })),
            ("api:1:2", |e| matches!(e, ReferenceError::Tag { .. })),
            ("a b", |e| matches!(e, ReferenceError::Path { .. })),
            (HEX, |e| matches!(e, ReferenceError::BareIdentifier(_))),
        ];
        for (input, expected) in cases {
            let e = ImageReference::parse(input).expect_err(input);
            assert!(expected(&e), "{input}: {e:?}");
            if !input.is_empty() {
                assert!(e.to_string().contains(&format!("`{input}`")), "{input}: message `{e}` names the reference");
            }
        }
        let long = format!("localhost/{}", "a".repeat(250));
        assert!(matches!(ImageReference::parse(&long), Err(ReferenceError::TooLong { .. })));
    }
}
