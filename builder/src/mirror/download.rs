//! Getting mirrored files into the blob store: over HTTP(S) with `ureq` (rustls, the system's CA
//! store, `HTTPS_PROXY`), from `file://` URLs, or from paths relative to the spec.
//!
//! Every file goes through [`BlobStore`]: bytes land in a `.partial` file that gets its digest
//! name only after the hash (and size, when known) matched. An interrupted or short download
//! leaves nothing under a final name; it is retried from the start (a mirror file is rarely big
//! enough for a ranged resume to pay for its extra failure modes), up to [`ATTEMPTS`] times.

use crate::oci::{BlobStore, Digest};
use anyhow::{Context, Result, anyhow, bail};
use std::io::Read;
use std::path::{Path, PathBuf};
use ureq::http::StatusCode;

/// Largest mirrored file accepted (a Pulumi CLI archive is ~100 MB; grpcio wheels ~10 MB).
pub const MAX_FILE: u64 = 4 << 30;
/// Largest metadata document (a Go `.info`/`.mod`, a NuGet index) read into memory.
pub const MAX_METADATA: u64 = 16 << 20;
/// Tries per file before a fetch gives up.
pub const ATTEMPTS: u32 = 3;

/// What a file must be.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub sha256: Option<Digest>,
    pub size: Option<u64>,
}

/// A fetched file, in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub digest: Digest,
    pub size: u64,
    pub path: PathBuf,
}

#[derive(Debug)]
pub struct Downloader {
    agent: ureq::Agent,
    /// Where relative origins are.
    base_dir: PathBuf,
    downloaded: u64,
}

impl Downloader {
    pub fn new(base_dir: &Path) -> Self {
        Self { agent: crate::http::agent(), base_dir: base_dir.to_path_buf(), downloaded: 0 }
    }

    /// Bytes downloaded over HTTP so far.
    pub fn downloaded_bytes(&self) -> u64 {
        self.downloaded
    }

    /// The file at `origin` (URL, `file://` URL or path relative to the base folder) in the
    /// store, checked against `expect`. A file the store already holds with the expected digest
    /// is not downloaded again.
    pub fn fetch(&mut self, origin: &str, expect: &Expect, store: &BlobStore) -> Result<Fetched> {
        if let Some(d) = &expect.sha256
            && let Some(size) = store.find(d, origin)?
        {
            if expect.size.is_some_and(|s| s != size) {
                bail!(
                    "{origin}: the cache holds sha256:{} with {size} bytes, not the {:?} expected",
                    d.hex(),
                    expect.size
                );
            }
            crate::progress::items(1);
            return Ok(Fetched { digest: d.clone(), size, path: store.path(d) });
        }
        let mut last = None;
        for attempt in 1..=ATTEMPTS {
            match self.fetch_once(origin, expect, store) {
                Ok(f) => {
                    crate::progress::items(1);
                    crate::progress::phase(&format!("{} downloaded so far", crate::size::ByteSize(self.downloaded)));
                    return Ok(f);
                }
                Err(e) => {
                    // A local file does not get better by reading it again; nor does a 404.
                    let permanent = !is_http(origin) || e.chain().any(|c| c.to_string().contains("answered 4"));
                    log::warn!("{origin}: attempt {attempt} of {ATTEMPTS} failed: {e:#}");
                    last = Some(e);
                    if permanent {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no attempt made")))
    }

    fn fetch_once(&mut self, origin: &str, expect: &Expect, store: &BlobStore) -> Result<Fetched> {
        let (reader, length): (Box<dyn Read>, Option<u64>) = if is_http(origin) {
            let resp = self.agent.get(origin).call().with_context(|| format!("GET {origin}"))?;
            if resp.status() != StatusCode::OK {
                bail!("GET {origin}: the server answered {}", resp.status());
            }
            let length =
                resp.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
            (Box::new(resp.into_body().into_with_config().limit(MAX_FILE + 1).reader()), length)
        } else {
            let path = self.local_path(origin)?;
            let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            (Box::new(file), None)
        };
        let mut counted = Counting { inner: reader, count: 0 };
        let result = match (&expect.sha256, expect.size) {
            (Some(d), Some(size)) => store.ingest(d, size, &mut counted, origin).map(|p| (d.clone(), size, p)),
            (d, size) => store.ingest_unsized(d.as_ref(), size.unwrap_or(MAX_FILE), &mut counted, origin),
        };
        if is_http(origin) {
            self.downloaded += counted.count;
        }
        let (digest, size, path) = result.with_context(|| format!("downloading {origin}"))?;
        if let Some(len) = length
            && len != size
        {
            bail!("{origin}: the server announced {len} bytes but sent {size}");
        }
        if let Some(want) = expect.size
            && want != size
        {
            bail!("{origin}: {size} bytes, not the {want} expected");
        }
        Ok(Fetched { digest, size, path })
    }

    /// A small document (metadata) read into memory; `None` for 404 and 410, which registries
    /// use for "no such thing".
    pub fn get_optional(&mut self, origin: &str) -> Result<Option<Vec<u8>>> {
        if !is_http(origin) {
            let path = self.local_path(origin)?;
            return match std::fs::File::open(&path) {
                Ok(f) => read_limited(f, MAX_METADATA, origin).map(Some),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
            };
        }
        let resp = self.agent.get(origin).call().with_context(|| format!("GET {origin}"))?;
        match resp.status() {
            StatusCode::OK => {
                let bytes = read_limited(resp.into_body().into_reader(), MAX_METADATA, origin)?;
                self.downloaded += bytes.len() as u64;
                Ok(Some(bytes))
            }
            StatusCode::NOT_FOUND | StatusCode::GONE => Ok(None),
            s => bail!("GET {origin}: the server answered {s}"),
        }
    }

    /// Like [`Self::get_optional`], but absence is an error.
    pub fn get(&mut self, origin: &str) -> Result<Vec<u8>> {
        self.get_optional(origin)?.ok_or_else(|| anyhow!("{origin}: not found"))
    }

    fn local_path(&self, origin: &str) -> Result<PathBuf> {
        if let Some(path) = origin.strip_prefix("file://") {
            if !path.starts_with('/') {
                bail!("{origin}: a file URL needs an absolute path");
            }
            return Ok(PathBuf::from(path));
        }
        if origin.contains("://") {
            bail!("{origin}: airlock fetches only http(s) and file URLs");
        }
        Ok(self.base_dir.join(origin))
    }
}

fn is_http(origin: &str) -> bool {
    origin.starts_with("http://") || origin.starts_with("https://")
}

fn read_limited(r: impl Read, max: u64, what: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    r.take(max + 1).read_to_end(&mut bytes).with_context(|| format!("reading {what}"))?;
    if bytes.len() as u64 > max {
        bail!("{what} is larger than {max} bytes");
    }
    Ok(bytes)
}

struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A one-thread HTTP/1.1 server on 127.0.0.1 answering from a closure per request path;
    /// each answer is (status, body, announced length). Serves until the test ends.
    pub(crate) fn serve(
        answer: impl Fn(&str) -> (u16, Vec<u8>, Option<usize>) + Send + 'static,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                log.lock().unwrap().push(path.clone());
                let (status, body, announced) = answer(&path);
                let len = announced.unwrap_or(body.len());
                let _ = write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(&body);
            }
        });
        (base, seen)
    }

    #[test]
    fn verifies_hashes_and_restarts_after_a_short_read() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(tmp.path()).unwrap();
        let good = b"the real wheel bytes".to_vec();
        let calls = Arc::new(Mutex::new(0));
        let c = calls.clone();
        let body = good.clone();
        let (base, _) = serve(move |path| match path {
            // The first answer is cut short (as by a dropped connection), the second is whole.
            "/flaky.whl" => {
                let mut n = c.lock().unwrap();
                *n += 1;
                if *n == 1 { (200, body[..5].to_vec(), Some(body.len())) } else { (200, body.clone(), None) }
            }
            "/evil.whl" => (200, b"not the bytes".to_vec(), None),
            _ => (404, Vec::new(), None),
        });
        let mut d = Downloader::new(tmp.path());
        let expect = Expect { sha256: Some(Digest::of_bytes(&good)), size: None };
        let f = d.fetch(&format!("{base}/flaky.whl"), &expect, &store).unwrap();
        assert_eq!(std::fs::read(&f.path).unwrap(), good);
        assert_eq!(*calls.lock().unwrap(), 2, "the short download was restarted");

        let promised = Expect { sha256: Some(Digest::of_bytes(b"what the index promised")), size: None };
        let e = d.fetch(&format!("{base}/evil.whl"), &promised, &store).unwrap_err();
        assert!(format!("{e:#}").contains("has the wrong content"), "{e:#}");
        let e = d.fetch(&format!("{base}/missing.whl"), &Expect::default(), &store).unwrap_err();
        assert!(format!("{e:#}").contains("404"), "{e:#}");
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // Present in the store: not downloaded again.
        let before = d.downloaded_bytes();
        d.fetch(&format!("{base}/flaky.whl"), &expect, &store).unwrap();
        assert_eq!(d.downloaded_bytes(), before);
    }

    #[test]
    fn local_origins_resolve_against_the_base_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(&tmp.path().join("store")).unwrap();
        std::fs::write(tmp.path().join("a.tar.gz"), b"archive").unwrap();
        let mut d = Downloader::new(tmp.path());
        let f = d.fetch("a.tar.gz", &Expect::default(), &store).unwrap();
        assert_eq!((f.digest, f.size), (Digest::of_bytes(b"archive"), 7));
        let url = format!("file://{}", tmp.path().join("a.tar.gz").display());
        assert_eq!(d.get(&url).unwrap(), b"archive");
        assert!(d.get_optional("nothing-here").unwrap().is_none());
        let wrong = Expect { sha256: Some(Digest::of_bytes(b"other")), size: None };
        assert!(d.fetch("a.tar.gz", &wrong, &store).is_err());
        assert!(d.fetch("ftp://x/a", &Expect::default(), &store).is_err());
    }
}
