//! The update bundle, `<name>_<version>.update`: one file that carries a new version of an
//! appliance across the air gap — its root filesystem and dm-verity hash tree (each a whole
//! partition's bytes, zstd-compressed), its signed UKI and its manifest — under one signature.
//!
//! ```text
//! MAGIC                      16 bytes, "AIRLOCK-UPDATE-1"
//! header length              u32, little-endian, at most 1 MiB
//! header                     JSON (Header): appliance, version, root hash, and for each
//!                            payload its place, stored size and SHA-256, content size and SHA-256
//! signature length           u32, little-endian, at most 4 KiB
//! signature                  a minisign signature (the release key's) over the header's bytes
//! payloads                   root, verity, uki, manifest: back to back, as the header places them
//! ```
//!
//! The signature covers the header, and the header the SHA-256 of every payload's stored bytes
//! and of what they decompress to, so one signature covers every byte; the header is parsed only
//! after the signature verified. [`Bundle::open`] checks the signature and the header's shape and
//! that the file is exactly as long as the header says (so a truncated bundle is named as one
//! before anything is read); [`Bundle::check_payloads`] hashes every stored byte; and
//! [`Bundle::copy_payload`] decompresses one payload into a sink, never past its declared size,
//! and fails at the end unless both digests match again (the file could change between the
//! check and the copy).

use crate::input_file;
use crate::signing::{KeyId, PublicKey, minisig};
use crate::version::Version;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The first bytes of every bundle (format 1).
pub const MAGIC: &[u8; 16] = b"AIRLOCK-UPDATE-1";
/// Where an appliance keeps the public keys whose bundles it accepts (in its verified root):
/// one minisign `.pub` file per key.
pub const TRUSTED_KEYS_DIR: &str = "/usr/lib/airlock/update-keys";
/// A bundle's file name extension.
pub const EXTENSION: &str = "update";
const HEADER_MAX: u32 = 1 << 20;
const SIGNATURE_MAX: u32 = 4096;
/// The largest UKI and manifest a bundle may carry (each is read into memory).
pub const SMALL_PAYLOAD_MAX: u64 = 256 << 20;
/// The largest root or hash tree (the largest disk airlock builds).
pub const LARGE_PAYLOAD_MAX: u64 = 16 << 40;

/// `<name>_<version>.update`.
pub fn file_name(name: &str, version: &str) -> String {
    format!("{name}_{version}.{EXTENSION}")
}

/// What a payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The root partition's bytes (an ext4 filesystem under dm-verity).
    Root,
    /// The root-verity partition's bytes (the hash tree).
    Verity,
    /// The signed UKI, whose command line pins the root hash.
    Uki,
    /// The image's manifest (what `airlock inspect` reads from the ESP).
    Manifest,
}

/// Every payload, in the order a bundle holds them.
pub const KINDS: [Kind; 4] = [Kind::Root, Kind::Verity, Kind::Uki, Kind::Manifest];

impl Kind {
    fn max_size(self) -> u64 {
        match self {
            Kind::Root | Kind::Verity => LARGE_PAYLOAD_MAX,
            Kind::Uki | Kind::Manifest => SMALL_PAYLOAD_MAX,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Root => "root",
            Kind::Verity => "verity",
            Kind::Uki => "uki",
            Kind::Manifest => "manifest",
        })
    }
}

/// How a payload is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
}

/// One payload's place and digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub kind: Kind,
    pub compression: Compression,
    /// From the first byte after the signature.
    pub offset: u64,
    pub stored_size: u64,
    pub stored_sha256: String,
    /// What it decompresses to.
    pub size: u64,
    pub sha256: String,
}

/// What the signature covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: u32,
    pub appliance: String,
    pub version: String,
    /// The root's dm-verity root hash (hex): the UKI's `roothash=`, and the root and verity
    /// partitions' UUIDs once written.
    pub root_hash: String,
    pub payloads: Vec<Payload>,
}

impl Header {
    /// The payload of `kind` (a checked header has each once).
    pub fn payload(&self, kind: Kind) -> &Payload {
        self.payloads.iter().find(|p| p.kind == kind).unwrap_or(&self.payloads[0])
    }

    /// The bytes the payloads take after the signature.
    pub fn payload_bytes(&self) -> u64 {
        self.payloads.last().map_or(0, |p| p.offset + p.stored_size)
    }

    /// What is wrong with a header, if anything: the version, the root hash, each payload once
    /// in order, back to back, within its size limit, digests in hex.
    fn problem(&self) -> Option<String> {
        if self.format != 1 {
            return Some(format!("format {} (this program reads format 1)", self.format));
        }
        if self.appliance.is_empty()
            || self.appliance.len() > 63
            || !self.appliance.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Some(format!("appliance name `{}` is not a name", self.appliance.escape_debug()));
        }
        if let Err(why) = Version::parse(&self.version) {
            return Some(why);
        }
        if !is_hex(&self.root_hash, 64) {
            return Some("the root hash is not 64 hex digits".into());
        }
        let kinds: Vec<Kind> = self.payloads.iter().map(|p| p.kind).collect();
        if kinds != KINDS {
            return Some(format!("payloads {kinds:?}, expected {KINDS:?}"));
        }
        let mut end = 0u64;
        for p in &self.payloads {
            if p.offset != end {
                return Some(format!(
                    "the {} payload starts at {}, not where the one before ends ({end})",
                    p.kind, p.offset
                ));
            }
            if p.stored_size > p.kind.max_size() || p.size > p.kind.max_size() {
                return Some(format!("the {} payload is larger than {} bytes", p.kind, p.kind.max_size()));
            }
            if p.compression == Compression::None && p.stored_size != p.size {
                return Some(format!("the uncompressed {} payload has two sizes", p.kind));
            }
            if !is_hex(&p.stored_sha256, 64) || !is_hex(&p.sha256, 64) {
                return Some(format!("the {} payload's SHA-256 is not 64 hex digits", p.kind));
            }
            end = match end.checked_add(p.stored_size) {
                Some(e) => e,
                None => return Some("the payloads' sizes overflow".into()),
            };
        }
        None
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The bytes before the payloads: magic, header and signature with their lengths.
pub fn preamble(header_json: &[u8], signature: &str) -> Result<Vec<u8>> {
    let header_len = u32::try_from(header_json.len()).ok().filter(|l| *l <= HEADER_MAX).context("header too large")?;
    let sig_len = u32::try_from(signature.len()).ok().filter(|l| *l <= SIGNATURE_MAX).context("signature too large")?;
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + header_json.len() + signature.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header_json);
    out.extend_from_slice(&sig_len.to_le_bytes());
    out.extend_from_slice(signature.as_bytes());
    Ok(out)
}

/// An open bundle whose signature verified with a trusted key and whose header is sound.
#[derive(Debug)]
pub struct Bundle {
    file: File,
    path: PathBuf,
    pub header: Header,
    payload_start: u64,
    /// The key that signed it.
    pub key_id: KeyId,
    pub trusted_comment: String,
}

impl Bundle {
    /// Opens `path` and checks, in this order and before reading any payload: that it is a
    /// bundle, that its signature was made by one of `trusted` and verifies over the header, that
    /// the header is sound, and that the file is exactly as long as the header says.
    pub fn open(path: &Path, trusted: &[PublicKey]) -> Result<Bundle> {
        let shown = path.display();
        let mut file = input_file::open_regular(path, "update bundle")?;
        let len = file.metadata().with_context(|| format!("reading the size of {shown}"))?.len();
        let mut magic = [0u8; 16];
        read_exact(&mut file, &mut magic, path, "its first 16 bytes")?;
        if &magic != MAGIC {
            bail!("{shown} is not an airlock update bundle (it does not start with {:?})", "AIRLOCK-UPDATE-1");
        }
        let header_bytes = read_block(&mut file, HEADER_MAX, path, "header")?;
        let sig_bytes = read_block(&mut file, SIGNATURE_MAX, path, "signature")?;
        let signature =
            String::from_utf8(sig_bytes).map_err(|_| anyhow::anyhow!("{shown}: the signature is not text"))?;
        let (key_id, _) =
            minisig::signature_key_id(&signature).with_context(|| format!("{shown}: reading the signature"))?;
        let Some(key) = trusted.iter().find(|k| k.key_id() == key_id) else {
            let ids: Vec<String> = trusted.iter().map(|k| k.key_id().to_string()).collect();
            bail!(
                "{shown} is signed by key {key_id}, which this appliance does not trust (it trusts {})",
                if ids.is_empty() { "no key".to_string() } else { ids.join(", ") }
            );
        };
        let trusted_comment = minisig::verify(key, &header_bytes, &signature)
            .with_context(|| format!("{shown}: the signature does not verify with key {key_id}"))?;
        let header: Header = serde_json::from_slice(&header_bytes)
            .with_context(|| format!("{shown}: the signed header is not a bundle header"))?;
        if let Some(why) = header.problem() {
            bail!("{shown}: the signed header is not sound: {why}");
        }
        let payload_start = (MAGIC.len() + 8 + header_bytes.len() + signature.len()) as u64;
        let want = payload_start + header.payload_bytes();
        if len < want {
            bail!("{shown} is truncated: it has {len} bytes, its header says {want}");
        }
        if len > want {
            bail!("{shown} has {} bytes after its last payload", len - want);
        }
        Ok(Bundle { file, path: path.to_path_buf(), header, payload_start, key_id, trusted_comment })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hashes every payload's stored bytes against the header; `progress` gets each chunk's size.
    pub fn check_payloads(&self, progress: &mut dyn FnMut(u64)) -> Result<()> {
        for p in &self.header.payloads {
            let mut reader = self.stored(p)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = reader.read(&mut buf).with_context(|| format!("reading {}", self.path.display()))?;
                if n == 0 {
                    break;
                }
                progress(n as u64);
            }
            reader.finish(p, &self.path)?;
        }
        Ok(())
    }

    /// Decompresses the payload of `kind` into `sink`, chunk by chunk, never past its declared
    /// size; fails, after the last chunk, unless the stored bytes and what they decompressed to
    /// both match the header.
    pub fn copy_payload(&self, kind: Kind, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
        self.copy(kind, sink, true)
    }

    /// [`Bundle::copy_payload`] without hashing, for a caller that checks what it wrote against
    /// the header's `sha256` itself, after [`Bundle::check_payloads`] (the updater reads the
    /// slot it wrote back from the disk: hashing here too would hash every byte twice). The
    /// sizes are still enforced: never past the declared size, and exactly the stored bytes.
    pub fn unpack_payload(&self, kind: Kind, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
        self.copy(kind, sink, false)
    }

    fn copy(&self, kind: Kind, sink: &mut dyn FnMut(&[u8]) -> Result<()>, verify: bool) -> Result<u64> {
        let p = self.header.payload(kind);
        let shown = self.path.display();
        let mut stored = self.stored(p)?;
        stored.hashing = verify;
        let mut content = Sha256::new();
        let mut written = 0u64;
        {
            let mut source: Box<dyn Read + '_> = match p.compression {
                Compression::None => Box::new(&mut stored),
                Compression::Zstd => Box::new(
                    zstd::stream::read::Decoder::new(&mut stored)
                        .with_context(|| format!("{shown}: starting to decompress the {kind} payload"))?,
                ),
            };
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = source.read(&mut buf).with_context(|| format!("{shown}: reading the {kind} payload"))?;
                if n == 0 {
                    break;
                }
                written += n as u64;
                if written > p.size {
                    bail!("{shown}: the {kind} payload decompresses to more than its {} bytes", p.size);
                }
                if verify {
                    content.update(&buf[..n]);
                }
                sink(&buf[..n])?;
            }
        }
        // What the decoder did not need is still the payload's: hashed too.
        io::copy(&mut stored, &mut io::sink()).with_context(|| format!("reading {shown}"))?;
        stored.finish(p, &self.path)?;
        if written != p.size {
            bail!("{shown}: the {kind} payload decompresses to {written} bytes, the signed header says {}", p.size);
        }
        if verify && hex::encode(content.finalize()) != p.sha256 {
            bail!("{shown}: the {kind} payload does not decompress to what the signed header says");
        }
        Ok(written)
    }

    /// A small payload (UKI, manifest) in memory, checked.
    pub fn read_small(&self, kind: Kind) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.copy_payload(kind, &mut |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }

    fn stored(&self, p: &Payload) -> Result<StoredReader<'_>> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(self.payload_start + p.offset))
            .with_context(|| format!("seeking in {}", self.path.display()))?;
        Ok(StoredReader { inner: file.take(p.stored_size), hash: Sha256::new(), hashing: true, read: 0 })
    }
}

/// A payload's stored bytes, hashed as they are read.
struct StoredReader<'a> {
    inner: io::Take<&'a File>,
    hash: Sha256,
    /// Off for [`Bundle::unpack_payload`]: then only the length is checked.
    hashing: bool,
    read: u64,
}

impl Read for StoredReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.hashing {
            self.hash.update(&buf[..n]);
        }
        self.read += n as u64;
        Ok(n)
    }
}

impl StoredReader<'_> {
    fn finish(self, p: &Payload, path: &Path) -> Result<()> {
        if self.read != p.stored_size {
            bail!("{}: the {} payload ends after {} of its {} bytes", path.display(), p.kind, self.read, p.stored_size);
        }
        if self.hashing && hex::encode(self.hash.finalize()) != p.stored_sha256 {
            bail!("{}: the {} payload's bytes are not the ones signed (SHA-256 mismatch)", path.display(), p.kind);
        }
        Ok(())
    }
}

fn read_exact(file: &mut File, buf: &mut [u8], path: &Path, what: &str) -> Result<()> {
    file.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => anyhow::anyhow!("{} is truncated: it ends inside {what}", path.display()),
        _ => anyhow::Error::new(e).context(format!("reading {}", path.display())),
    })
}

fn read_block(file: &mut File, max: u32, path: &Path, what: &str) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    read_exact(file, &mut len, path, &format!("the {what}'s length"))?;
    let len = u32::from_le_bytes(len);
    if len == 0 || len > max {
        bail!("{}: the {what} is {len} bytes long (at most {max})", path.display());
    }
    let mut buf = vec![0u8; len as usize];
    read_exact(file, &mut buf, path, &format!("the {what}"))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::{KeyPair, generate};
    use std::io::Write;

    /// A bundle of small payloads, signed with `key`: (root bytes, file bytes).
    fn make(key: &KeyPair, root: &[u8]) -> Vec<u8> {
        let compressed = zstd::encode_all(root, 3).unwrap();
        let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
        let small = |kind, offset, b: &[u8]| Payload {
            kind,
            compression: Compression::None,
            offset,
            stored_size: b.len() as u64,
            stored_sha256: sha(b),
            size: b.len() as u64,
            sha256: sha(b),
        };
        let (verity, uki, manifest) = (b"hash tree".as_slice(), b"MZ uki".as_slice(), b"{}".as_slice());
        let mut offset = compressed.len() as u64;
        let mut payloads = vec![Payload {
            kind: Kind::Root,
            compression: Compression::Zstd,
            offset: 0,
            stored_size: compressed.len() as u64,
            stored_sha256: sha(&compressed),
            size: root.len() as u64,
            sha256: sha(root),
        }];
        for (kind, b) in [(Kind::Verity, verity), (Kind::Uki, uki), (Kind::Manifest, manifest)] {
            payloads.push(small(kind, offset, b));
            offset += b.len() as u64;
        }
        let header = Header {
            format: 1,
            appliance: "demo".into(),
            version: "0.2.0".into(),
            root_hash: "ab".repeat(32),
            payloads,
        };
        let json = serde_json::to_vec(&header).unwrap();
        let sig = minisig::sign(key, &json, "airlock update demo 0.2.0").unwrap();
        let mut out = preamble(&json, &sig).unwrap();
        for b in [&compressed[..], verity, uki, manifest] {
            out.extend_from_slice(b);
        }
        out
    }

    fn open(bytes: &[u8], keys: &[PublicKey]) -> Result<Bundle> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let b = Bundle::open(f.path(), keys);
        // The file stays open in the bundle; its name may go.
        drop(f);
        b
    }

    #[test]
    fn a_sound_bundle_opens_checks_and_decompresses() {
        let key = generate().unwrap();
        let root: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let other = generate().unwrap();
        let b = open(&make(&key, &root), &[other.public_key(), key.public_key()]).unwrap();
        assert_eq!((b.header.appliance.as_str(), b.header.version.as_str()), ("demo", "0.2.0"));
        assert_eq!(b.key_id, key.key_id());
        assert_eq!(b.trusted_comment, "airlock update demo 0.2.0");
        let mut total = 0;
        b.check_payloads(&mut |n| total += n).unwrap();
        assert_eq!(total, b.header.payload_bytes());
        let mut back = Vec::new();
        b.copy_payload(Kind::Root, &mut |c| {
            back.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(back, root);
        assert_eq!(b.read_small(Kind::Uki).unwrap(), b"MZ uki");
    }

    /// Each way a bundle can be wrong is refused with its reason, before any payload is used
    /// where the header or signature is at fault.
    #[test]
    fn a_bad_bundle_is_refused_saying_why() {
        let key = generate().unwrap();
        let root = vec![7u8; 100_000];
        let good = make(&key, &root);
        let keys = [key.public_key()];
        let err = |bytes: &[u8], keys: &[PublicKey]| format!("{:#}", open(bytes, keys).unwrap_err());

        let stranger = generate().unwrap();
        assert!(err(&good, &[stranger.public_key()]).contains("which this appliance does not trust"));
        assert!(err(&good, &[]).contains("it trusts no key"));
        assert!(err(b"PK\x03\x04 a zip file, not a bundle", &keys).contains("is not an airlock update bundle"));
        assert!(err(&good[..good.len() - 1], &keys).contains("is truncated"));
        assert!(err(&good[..40], &keys).contains("is truncated: it ends inside the header"));
        let mut longer = good.clone();
        longer.push(0);
        assert!(err(&longer, &keys).contains("1 bytes after its last payload"));
        // A header byte changed: the signature no longer verifies.
        let mut header = good.clone();
        let at = good.windows(5).position(|w| w == b"0.2.0").unwrap();
        header[at] = b'9';
        assert!(err(&header, &keys).contains("the signature does not verify"), "{}", err(&header, &keys));

        // A payload byte changed: the header is fine, the payload is not.
        let mut payload = good.clone();
        let last = payload.len() - 3;
        payload[last] ^= 1;
        let b = open(&payload, &keys).unwrap();
        let e = format!("{:#}", b.check_payloads(&mut |_| {}).unwrap_err());
        assert!(e.contains("the uki payload's bytes are not the ones signed"), "{e}");
    }
}
