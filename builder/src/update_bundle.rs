//! `<name>_<version>.update`: the update bundle `airlock build` writes next to the image when
//! the image has a verified root and the build is signed (format: `airlock_common::bundle`).
//!
//! Everything in it is read back from the finished raw image, so it carries exactly what the
//! image holds: slot A's root and root-verity partitions (whole, zstd-compressed in
//! multithreaded mode, whose bytes do not depend on the worker count), the UKI and the image's
//! manifest from the ESP. The header names each payload's digests and the signature (the
//! release key's, Ed25519, deterministic) covers the header: two builds of the same inputs
//! write the same bundle.

use crate::inspect::DiskImage;
use crate::output_file::PartialFile;
use crate::partition::{Role, Slot};
use crate::signing::{KeyPair, minisig};
use airlock_common::bundle::{self, Compression, Header, Kind, Payload};
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// zstd's level for the root: as `raw.zst`'s.
const LEVEL: i32 = 6;

/// What the bundle is of.
#[derive(Debug)]
pub struct BundleInputs<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub root_hash: &'a str,
    /// The UKI's path on the ESP (`EFI/Linux/<name>_<version>.efi`).
    pub uki: &'a str,
}

/// Writes the bundle of `image` into `out_dir`; returns its path.
pub fn write(image: &Path, out_dir: &Path, inputs: &BundleInputs<'_>, key: &KeyPair) -> Result<PathBuf> {
    let disk = DiskImage::open(image)?;
    let mut payloads = Vec::new();
    // The compressed partitions wait in scratch files; the UKI and manifest, small, in memory.
    let mut compressed: Vec<File> = Vec::new();
    let mut small: Vec<Vec<u8>> = Vec::new();
    let mut offset = 0u64;
    for (kind, role) in [(Kind::Root, Role::Root(Slot::A)), (Kind::Verity, Role::RootVerity(Slot::A))] {
        let part = disk.partition(role).with_context(|| format!("{} has no {role} partition", image.display()))?;
        crate::progress::phase(&format!("compressing the {kind} partition for the update bundle"));
        let (file, payload) = compress_range(&disk.file, part.start, part.size, kind, offset, out_dir)?;
        offset += payload.stored_size;
        payloads.push(payload);
        compressed.push(file);
    }
    for (kind, path) in [(Kind::Uki, inputs.uki), (Kind::Manifest, crate::manifest::ESP_MANIFEST_PATH)] {
        let bytes = disk
            .read_esp_file(path, bundle::SMALL_PAYLOAD_MAX)?
            .with_context(|| format!("{} has no {path} on its ESP", image.display()))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        payloads.push(Payload {
            kind,
            compression: Compression::None,
            offset,
            stored_size: size,
            stored_sha256: sha256.clone(),
            size,
            sha256,
        });
        offset += size;
        small.push(bytes);
    }
    let header = Header {
        format: 1,
        appliance: inputs.name.to_string(),
        version: inputs.version.to_string(),
        root_hash: inputs.root_hash.to_string(),
        payloads,
    };
    let header_json = serde_json::to_vec_pretty(&header).context("encoding the bundle header")?;
    let comment = format!("airlock update {} {} root hash {}", inputs.name, inputs.version, inputs.root_hash);
    let signature = minisig::sign(key, &header_json, &comment)?;
    let dest = out_dir.join(bundle::file_name(inputs.name, inputs.version));
    let partial = PartialFile::create(&dest)?;
    let mut out = std::io::BufWriter::new(partial.file());
    let shown = partial.partial_path().display().to_string();
    out.write_all(&bundle::preamble(&header_json, &signature)?).with_context(|| format!("writing {shown}"))?;
    for mut f in compressed {
        f.seek(SeekFrom::Start(0)).context("rewinding a scratch file")?;
        std::io::copy(&mut f, &mut out).with_context(|| format!("writing {shown}"))?;
    }
    for bytes in &small {
        out.write_all(bytes).with_context(|| format!("writing {shown}"))?;
    }
    out.flush().with_context(|| format!("writing {shown}"))?;
    drop(out);
    partial.commit()
}

/// Compresses `len` bytes at `start` of `file` into an anonymous scratch file; returns it with
/// the payload's record (both digests).
fn compress_range(
    file: &File,
    start: u64,
    len: u64,
    kind: Kind,
    offset: u64,
    scratch: &Path,
) -> Result<(File, Payload)> {
    let out =
        tempfile::tempfile_in(scratch).with_context(|| format!("creating a scratch file in {}", scratch.display()))?;
    let writer = out.try_clone().context("opening a scratch file")?;
    let mut hashed = HashingWriter { inner: std::io::BufWriter::new(writer), hash: Sha256::new(), written: 0 };
    let mut encoder = zstd::stream::write::Encoder::new(&mut hashed, LEVEL).context("starting zstd")?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    encoder.multithread(workers).context("switching zstd to multithreaded mode")?;
    encoder.include_checksum(true).context("asking zstd for a content checksum")?;
    encoder.include_contentsize(true).context("asking zstd to record the size")?;
    encoder.set_pledged_src_size(Some(len)).context("telling zstd the size")?;
    let mut content = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from((len - at).min(buf.len() as u64)).unwrap_or(buf.len());
        file.read_exact_at(&mut buf[..n], start + at).with_context(|| format!("reading the {kind} partition"))?;
        content.update(&buf[..n]);
        encoder.write_all(&buf[..n]).context("compressing")?;
        crate::progress::bytes(n as u64);
        at += n as u64;
    }
    encoder.finish().context("finishing zstd")?;
    hashed.inner.flush().context("writing a scratch file")?;
    let HashingWriter { inner, hash, written } = hashed;
    drop(inner);
    let payload = Payload {
        kind,
        compression: Compression::Zstd,
        offset,
        stored_size: written,
        stored_sha256: hex::encode(hash.finalize()),
        size: len,
        sha256: hex::encode(content.finalize()),
    };
    Ok((out, payload))
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a bundle's header for `airlock inspect` and `airlock verify`: opened and checked with
/// `keys` (see [`bundle::Bundle::open`]), every payload hashed.
pub fn verify(path: &Path, keys: &[crate::signing::PublicKey]) -> Result<bundle::Bundle> {
    let b = bundle::Bundle::open(path, keys)?;
    b.check_payloads(&mut |n| crate::progress::bytes(n))?;
    Ok(b)
}
