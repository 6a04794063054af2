//! A client of the distribution protocol (the OCI distribution spec), read-only: enough to pull
//! one platform's image into the blob store, verified.
//!
//! Per registry host: `GET /v2/` learns whether it wants authentication. A `Bearer` challenge
//! means a token from its `realm` (with `service` and the repository's `pull` scope, sent with
//! HTTP Basic when the user has credentials for the host, anonymous otherwise); a `Basic`
//! challenge means the credentials themselves. A 401 on a later request (a token that expired,
//! a scope the registry names differently) fetches a new token from that response's challenge
//! and retries once.
//!
//! Manifests are asked for with every manifest and index media type airlock reads; their digest
//! is computed from the bytes received (never taken from `Docker-Content-Digest`), so a tag
//! resolves to the digest of exactly what was verified. A multi-platform index is followed to its
//! `linux/amd64` entry. Blobs stream into [`BlobStore::ingest`], which hashes them on the way in
//! and names them only once they match; redirects (blob URLs usually point to object storage)
//! are followed, without the `Authorization` header.
//!
//! Registries are reached over HTTPS with the system's CA certificates (so an enterprise proxy's
//! private CA works once it is in the system store), except `localhost`, `127.0.0.1`, `[::1]`
//! and hosts the user lists as insecure, which are plain HTTP. `HTTPS_PROXY`/`NO_PROXY` are
//! honoured.

use super::challenge::{self, Challenge};
use super::credentials::{Credentials, Login};
use crate::lock::LockedBlob;
use crate::oci::error::ImageError;
use crate::oci::image::{self, CheckedManifest, Image, ParsedManifest};
use crate::oci::media_type::{self, ManifestKind};
use crate::oci::{BlobStore, Digest, ImageReference, Limits, ReadOptions, reference};
use crate::size::ByteSize;
use anyhow::{Context, Result, anyhow, bail};
use oci_spec::image::ImageIndex;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use ureq::http::{Response, StatusCode};

/// Every manifest media type airlock reads, for `Accept`.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
/// Docker's schema 1 manifests (signed JSON without a config blob), which airlock refuses.
const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];
/// How much of an error response is read for its message.
const MAX_ERROR_BODY: u64 = 64 * 1024;
/// Token responses are small JSON documents.
const MAX_TOKEN_BODY: u64 = 1 << 20;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Hosts (`host` or `host:port`) reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Registry domain of a reference → `host[:port]` to contact instead.
    pub mirrors: BTreeMap<String, String>,
    pub credentials: Credentials,
    pub limits: Limits,
}

/// What pulling a reference produced.
#[derive(Debug)]
pub struct Pulled {
    /// The `linux/amd64` image, every blob verified and in the store.
    pub image: Image,
    /// The multi-platform index the reference resolved to, if it was one (also in the store).
    pub index: Option<LockedBlob>,
}

/// What `GET /v2/` said about a host.
#[derive(Debug, Clone)]
enum Ping {
    Open,
    Challenged(Vec<Challenge>),
}

/// One repository on one registry endpoint.
#[derive(Debug, Clone)]
struct Target {
    /// `http://host:port` or `https://host`.
    base: String,
    /// `host[:port]` contacted.
    host: String,
    /// The reference's own domain (differs from `host` through a mirror).
    domain: String,
    repository: String,
}

/// A registry client with its connections, tokens and counters.
#[derive(Debug)]
pub struct RegistryClient {
    agent: ureq::Agent,
    opts: RegistryOptions,
    pings: HashMap<String, Ping>,
    /// `Authorization` values per (host, repository).
    auth: HashMap<(String, String), String>,
    downloaded: u64,
}

impl RegistryClient {
    pub fn new(opts: RegistryOptions) -> Self {
        let agent = crate::http::agent();
        Self { agent, opts, pings: HashMap::new(), auth: HashMap::new(), downloaded: 0 }
    }

    /// Bytes of blobs and manifests downloaded so far.
    pub fn downloaded_bytes(&self) -> u64 {
        self.downloaded
    }

    /// Pulls `reference` resolved at `at` (a tag or a digest; normally
    /// [`ImageReference::manifest_reference`]) into `store`: manifest, config and layers of its
    /// `linux/amd64` image. Blobs the store already holds, verified, are not downloaded again.
    pub fn pull(&mut self, reference: &ImageReference, at: &str, store: &BlobStore) -> Result<Pulled> {
        let target = self.target(reference)?;
        let limits = self.opts.limits;
        let (bytes, media_type, digest) = self.get_manifest(&target, at)?;
        let (index, manifest_bytes, manifest_media_type, manifest_digest) = match ManifestKind::of(&media_type) {
            Some(ManifestKind::Image) => (None, bytes, media_type, digest),
            Some(ManifestKind::Index) => {
                let index: ImageIndex =
                    serde_json::from_slice(&bytes).with_context(|| format!("parsing image index {digest}"))?;
                store.ingest(&digest, bytes.len() as u64, &bytes[..], "image index")?;
                let descriptor = crate::oci::layout::select_platform(&index, &ReadOptions::default())
                    .with_context(|| format!("in image index {digest}"))?;
                if image::manifest_kind(descriptor, "manifest")? != ManifestKind::Image {
                    bail!(
                        "image index {digest} points to another index for linux/amd64; nested indexes are not supported"
                    );
                }
                let wanted = image::descriptor_digest(descriptor, "manifest")?;
                limits.check_json("manifest", &wanted, descriptor.size())?;
                let (m_bytes, _, m_digest) = self.get_manifest(&target, &wanted.to_string())?;
                if m_bytes.len() as u64 != descriptor.size() {
                    return Err(ImageError::SizeMismatch {
                        what: "manifest".into(),
                        digest: wanted,
                        expected: descriptor.size(),
                        actual: m_bytes.len() as u64,
                    }
                    .into());
                }
                let locked = LockedBlob { digest, size: bytes.len() as u64, media_type };
                (Some(locked), m_bytes, descriptor.media_type().to_string(), m_digest)
            }
            None => unreachable_media_type(&media_type, &digest)?,
        };
        let manifest = ParsedManifest::parse(manifest_digest, manifest_media_type, manifest_bytes, &limits)?;
        store.ingest(&manifest.digest, manifest.bytes.len() as u64, &manifest.bytes[..], "manifest")?;

        let (config_digest, config_size) = (&manifest.refs.config_digest, manifest.refs.config_size);
        let config_bytes = match cached(store, config_digest, config_size, "config") {
            Some(_) => store.read_verified(config_digest, config_size, "config")?,
            None => self.get_small_blob(&target, config_digest, config_size, "config")?,
        };
        let platform = ReadOptions::default().platform;
        let checked = CheckedManifest::with_config(manifest, &config_bytes, &platform)?;
        store.ingest(&checked.refs.config_digest, checked.refs.config_size, &config_bytes[..], "config")?;

        let count = checked.refs.layers.len();
        crate::progress::measure(crate::progress::Unit::Bytes, Some(checked.refs.layers.iter().map(|l| l.size).sum()));
        let mut done = 0;
        let image = checked.into_image(&reference.to_string(), platform, |layer, what| {
            done += 1;
            crate::progress::phase(&format!("{done}/{count} layers"));
            if cached(store, &layer.digest, layer.size, what).is_some() {
                crate::progress::bytes(layer.size);
            } else {
                log::debug!("{reference}: {what}/{count} {} ({})", layer.digest, ByteSize(layer.size));
                self.download_blob(&target, &layer.digest, layer.size, what, store)
                    .with_context(|| format!("downloading {what} {} of {reference}", layer.digest))?;
            }
            Ok(())
        })?;
        Ok(Pulled { image, index })
    }

    /// Where to reach the reference's repository.
    fn target(&self, reference: &ImageReference) -> Result<Target> {
        let domain = reference.domain();
        let host = match self.opts.mirrors.get(domain) {
            Some(mirror) => mirror.clone(),
            // `docker.io` is a name, not the host of Docker Hub's registry API; airlock does not
            // build any registry's host name in, so the user says where to go.
            None if domain == reference::DEFAULT_DOMAIN => bail!(
                "{reference}: `{domain}` is a name for Docker Hub, not the host of its registry API; \
                 pass `--registry-mirror {domain}=HOST[:PORT]` naming Docker Hub's registry API host or a mirror of it"
            ),
            None => domain.to_string(),
        };
        let scheme = if self.plain_http(&host) { "http" } else { "https" };
        Ok(Target {
            base: format!("{scheme}://{host}"),
            host,
            domain: domain.to_string(),
            repository: reference.path().to_string(),
        })
    }

    fn plain_http(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().map_or(host.to_string(), |v6| format!("[{v6}]")),
            None => host.split(':').next().unwrap_or(host).to_string(),
        };
        matches!(name.as_str(), "localhost" | "127.0.0.1" | "[::1]")
            || self.opts.insecure.iter().any(|h| h == host || *h == name)
    }

    /// `GET /v2/` once per host.
    fn ping(&mut self, t: &Target) -> Result<Ping> {
        if let Some(p) = self.pings.get(&t.host) {
            return Ok(p.clone());
        }
        let url = format!("{}/v2/", t.base);
        let resp = self.agent.get(&url).call().map_err(|e| transport_error(&url, e))?;
        let ping = match resp.status() {
            s if s.is_success() => Ping::Open,
            StatusCode::UNAUTHORIZED => Ping::Challenged(challenges(&resp, &url)?),
            _ => return Err(status_error(&url, resp).context(format!("{} does not answer as a registry", t.host))),
        };
        self.pings.insert(t.host.clone(), ping.clone());
        Ok(ping)
    }

    /// A GET in the repository's name, authenticating as the registry asks.
    fn get(&mut self, t: &Target, url: &str, accept: Option<&str>) -> Result<Response<ureq::Body>> {
        let key = (t.host.clone(), t.repository.clone());
        if !self.auth.contains_key(&key)
            && let Ping::Challenged(list) = self.ping(t)?
        {
            self.authorize(t, &list)?;
        }
        let mut retried = false;
        loop {
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(auth) = self.auth.get(&key) {
                req = req.header("Authorization", auth);
            }
            let resp = req.call().map_err(|e| transport_error(url, e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            if retried {
                return Err(status_error(url, resp)
                    .context(format!("{} refused the credentials airlock obtained for {}", t.host, t.repository)));
            }
            let list = challenges(&resp, url)?;
            self.authorize(t, &list)?;
            retried = true;
        }
    }

    /// Obtains an `Authorization` value for the repository from one of the challenges.
    fn authorize(&mut self, t: &Target, list: &[Challenge]) -> Result<()> {
        let login = self.login(t)?;
        let value = if let Some(bearer) = list.iter().find(|c| c.scheme == "bearer") {
            format!("Bearer {}", self.token(t, bearer, login.as_ref())?)
        } else if list.iter().any(|c| c.scheme == "basic") {
            match &login {
                Some(l) => l.basic_header(),
                None => bail!(
                    "{} asks for a login and none of {} has credentials for it (log in with `podman login {}`)",
                    t.host,
                    self.searched(),
                    t.host
                ),
            }
        } else {
            let schemes: Vec<&str> = list.iter().map(|c| c.scheme.as_str()).collect();
            bail!("{} asks for authentication by {}, which airlock does not speak", t.host, schemes.join(", "));
        };
        self.auth.insert((t.host.clone(), t.repository.clone()), value);
        Ok(())
    }

    /// The user's login for the contacted host, else for the reference's own domain (a mirror
    /// named with `--registry-mirror` stands in for that registry).
    fn login(&self, t: &Target) -> Result<Option<Login>> {
        if let Some(l) = self.opts.credentials.lookup(&t.host, &t.repository)? {
            return Ok(Some(l));
        }
        if t.domain != t.host {
            return self.opts.credentials.lookup(&t.domain, &t.repository);
        }
        Ok(None)
    }

    fn searched(&self) -> String {
        let files: Vec<String> = self.opts.credentials.files().iter().map(|f| f.display().to_string()).collect();
        if files.is_empty() { "(no credential files)".to_string() } else { files.join(", ") }
    }

    /// A bearer token from the challenge's realm.
    fn token(&self, t: &Target, c: &Challenge, login: Option<&Login>) -> Result<String> {
        let realm = c.param("realm").with_context(|| format!("{}'s Bearer challenge names no realm", t.host))?;
        let default_scope = format!("repository:{}:pull", t.repository);
        let scope = c.param("scope").unwrap_or(&default_scope);
        let mut url = realm.to_string();
        let mut sep = if realm.contains('?') { '&' } else { '?' };
        for (k, v) in [("service", c.param("service")), ("scope", Some(scope))] {
            if let Some(v) = v {
                url.push(sep);
                url.push_str(k);
                url.push('=');
                url.push_str(&crate::http::percent_encode(v));
                sep = '&';
            }
        }
        let mut req = self.agent.get(&url);
        if let Some(l) = login {
            req = req.header("Authorization", l.basic_header());
        }
        let resp = req.call().map_err(|e| transport_error(realm, e))?;
        if !resp.status().is_success() {
            let who = match login {
                Some(l) => format!("as `{}` (credentials from {})", l.username, l.file.display()),
                None => "anonymously (no credentials for it in any auth file)".to_string(),
            };
            return Err(status_error(realm, resp).context(format!("getting a token for {} {who}", t.repository)));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let body = read_limited(resp, MAX_TOKEN_BODY, "token response")?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).with_context(|| format!("parsing the token response of {realm}"))?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .with_context(|| format!("the token response of {realm} holds no token"))
    }

    /// A manifest or index by tag or digest: its bytes, media type and computed digest.
    fn get_manifest(&mut self, t: &Target, at: &str) -> Result<(Vec<u8>, String, Digest)> {
        let url = format!("{}/v2/{}/manifests/{at}", t.base, t.repository);
        let resp = self.get(t, &url, Some(MANIFEST_ACCEPT))?;
        if !resp.status().is_success() {
            return Err(status_error(&url, resp));
        }
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        let max = self.opts.limits.max_json_size;
        let bytes = read_limited(resp, max, "manifest").with_context(|| format!("reading {url}"))?;
        self.downloaded += bytes.len() as u64;
        let digest = Digest::of_bytes(&bytes);
        if at.starts_with("sha256:") {
            let wanted = Digest::parse(at)?;
            if digest != wanted {
                return Err(
                    ImageError::DigestMismatch { what: "manifest".into(), expected: wanted, actual: digest }.into()
                );
            }
        }
        // The document's own `mediaType` decides; a registry's Content-Type is only a fallback
        // for documents that leave it out.
        #[derive(serde::Deserialize)]
        struct MediaTypeField {
            #[serde(rename = "mediaType", default)]
            media_type: Option<String>,
        }
        let own = serde_json::from_slice::<MediaTypeField>(&bytes)
            .with_context(|| format!("{url} did not return a JSON manifest"))?
            .media_type;
        let media_type = own.or(content_type).unwrap_or_default();
        if DOCKER_SCHEMA1.contains(&media_type.as_str()) {
            bail!(
                "{url} is a Docker schema 1 manifest, which airlock does not read: push the image again with a current tool"
            );
        }
        if ManifestKind::of(&media_type).is_none() {
            return unreachable_media_type(&media_type, &digest);
        }
        Ok((bytes, media_type, digest))
    }

    /// A config blob into memory, verified.
    fn get_small_blob(&mut self, t: &Target, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>> {
        let url = format!("{}/v2/{}/blobs/{digest}", t.base, t.repository);
        let resp = self.get(t, &url, None)?;
        if !resp.status().is_success() {
            return Err(status_error(&url, resp).context(format!("downloading {what} {digest}")));
        }
        let bytes = read_limited(resp, size, what).with_context(|| format!("reading {url}"))?;
        self.downloaded += bytes.len() as u64;
        if bytes.len() as u64 != size {
            return Err(ImageError::SizeMismatch {
                what: what.into(),
                digest: digest.clone(),
                expected: size,
                actual: bytes.len() as u64,
            }
            .into());
        }
        let actual = Digest::of_bytes(&bytes);
        if actual != *digest {
            return Err(ImageError::DigestMismatch { what: what.into(), expected: digest.clone(), actual }.into());
        }
        Ok(bytes)
    }

    /// Streams a blob into the store (verified there; nothing appears under its name unless it
    /// matches).
    fn download_blob(&mut self, t: &Target, digest: &Digest, size: u64, what: &str, store: &BlobStore) -> Result<()> {
        let url = format!("{}/v2/{}/blobs/{digest}", t.base, t.repository);
        let resp = self.get(t, &url, None)?;
        if !resp.status().is_success() {
            return Err(status_error(&url, resp));
        }
        let mut counted = CountingReader { inner: crate::progress::Counting(resp.into_body().into_reader()), count: 0 };
        let result = store.ingest(digest, size, &mut counted, what);
        self.downloaded += counted.count;
        result.map(|_| ())
    }
}

/// Whether the store already holds the blob, verified. A corrupt copy counts as absent: ingest
/// replaces it.
fn cached(store: &BlobStore, digest: &Digest, size: u64, what: &str) -> Option<std::path::PathBuf> {
    if !store.path(digest).is_file() {
        return None;
    }
    match store.verified_path(digest, size, what) {
        Ok(p) => Some(p),
        Err(e) => {
            log::warn!("{what} {digest} in the cache is damaged and is downloaded again: {e:#}");
            None
        }
    }
}

fn unreachable_media_type<T>(media_type: &str, digest: &Digest) -> Result<T> {
    Err(ImageError::UnknownMediaType {
        what: "manifest".into(),
        digest: digest.to_string(),
        media_type: if media_type.is_empty() { "(none)".into() } else { media_type.into() },
    }
    .into())
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Reads at most `max` bytes of a body; more is an error.
fn read_limited(resp: Response<ureq::Body>, max: u64, what: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    resp.into_body().into_reader().take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        bail!("the {what} is larger than {max} bytes");
    }
    Ok(bytes)
}

/// The challenges of a 401 response.
fn challenges(resp: &Response<ureq::Body>, url: &str) -> Result<Vec<Challenge>> {
    let mut out = Vec::new();
    for v in resp.headers().get_all("www-authenticate") {
        let text = v.to_str().with_context(|| format!("{url}: WWW-Authenticate is not text"))?;
        out.extend(challenge::parse(text).map_err(|e| anyhow!("{url}: malformed WWW-Authenticate {e}"))?);
    }
    if out.is_empty() {
        bail!("{url} answered 401 Unauthorized without a WWW-Authenticate challenge");
    }
    Ok(out)
}

fn transport_error(url: &str, e: ureq::Error) -> anyhow::Error {
    anyhow::Error::new(e).context(format!("GET {url}"))
}

/// An error naming the URL, the status and the registry's own error code and message.
fn status_error(url: &str, resp: Response<ureq::Body>) -> anyhow::Error {
    let status = resp.status();
    let body = read_limited(resp, MAX_ERROR_BODY, "error response").unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<RegistryError>,
    }
    #[derive(serde::Deserialize)]
    struct RegistryError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let detail = match serde_json::from_slice::<Errors>(&body) {
        Ok(e) if !e.errors.is_empty() => {
            let parts: Vec<String> = e.errors.iter().map(|e| format!("{}: {}", e.code, e.message)).collect();
            format!(" ({})", parts.join("; "))
        }
        _ => {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.trim().chars().take(200).collect();
            if text.is_empty() { String::new() } else { format!(" ({text})") }
        }
    };
    anyhow!("GET {url}: {status}{detail}")
}

/// The media types airlock can pull, for messages and tests.
pub fn accepted_media_types() -> [&'static str; 4] {
    [media_type::OCI_INDEX, media_type::OCI_MANIFEST, media_type::DOCKER_MANIFEST_LIST, media_type::DOCKER_MANIFEST]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_lists_every_manifest_type() {
        let listed: Vec<&str> = MANIFEST_ACCEPT.split(", ").collect();
        assert_eq!(listed, accepted_media_types());
    }

    #[test]
    fn plain_http_only_for_loopback_and_insecure_hosts() {
        let client =
            RegistryClient::new(RegistryOptions { insecure: vec!["127.0.0.2:5000".into()], ..Default::default() });
        for host in ["localhost", "localhost:5000", "127.0.0.1:5000", "[::1]:5000", "127.0.0.2:5000"] {
            assert!(client.plain_http(host), "{host}");
        }
        for host in ["127.0.0.2", "127.0.0.2:5001", "127.0.0.3:5000", "localhostx"] {
            assert!(!client.plain_http(host), "{host}");
        }
    }

    #[test]
    fn docker_io_needs_a_mirror() {
        let r = ImageReference::parse("mysql:8.0").unwrap();
        let client = RegistryClient::new(RegistryOptions::default());
        let e = client.target(&r).unwrap_err().to_string();
        assert!(e.contains("--registry-mirror docker.io=HOST"), "{e}");
        let mut mirrors = BTreeMap::new();
        mirrors.insert("docker.io".to_string(), "127.0.0.1:5000".to_string());
        let client = RegistryClient::new(RegistryOptions { mirrors, ..Default::default() });
        let t = client.target(&r).unwrap();
        assert_eq!(t.base, "http://127.0.0.1:5000");
        assert_eq!(t.repository, "library/mysql");
        assert_eq!(t.domain, "docker.io");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(crate::http::percent_encode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
        assert_eq!(crate::http::percent_encode("local-registry_1.x~"), "local-registry_1.x~");
    }
}
