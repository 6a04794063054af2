//! `airlock verify`: is this release exactly what was built and signed?
//!
//! In order, each step recording what fails and going on, so that one run names every culprit:
//! 1. the signature `SHA256SUMS.minisig` over `SHA256SUMS`, with the operator's public key;
//! 2. every file listed in `SHA256SUMS` against its checksum (for a single image: that image
//!    and `manifest.json`);
//! 3. inside the raw image (`.raw`, or `.raw.zst` decompressed to a sparse temporary file) the
//!    partition table and each partition's SHA-256 against `manifest.json`.
//!
//! Step 3 is what still names the partition when the checksums were regenerated and re-signed
//! by someone holding the key, or when an image was damaged in a way the manifest explains.

use crate::gpt::GptLayout;
use crate::inspect::sha256_range;
use crate::manifest::{MANIFEST_FILE, Manifest};
use crate::release::{SIGNATURE_FILE, SUMS_FILE};
use crate::signing::{self, ChecksumFailures, ChecksumProblem, PublicKey, VerifyError};
use anyhow::{Context, Result};
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// One thing that failed, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (and partition) at fault, e.g. `demo.raw: partition 2 (root-x86-64)`.
    pub subject: String,
    pub message: String,
}

/// Everything that failed; the error `verify` returns.
#[derive(Debug, thiserror::Error)]
pub struct VerifyFailures {
    pub dir: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for VerifyFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "verification of {} failed:", self.dir.display())?;
        for p in &self.problems {
            write!(f, "\n  {}: {}", p.subject, p.message)?;
        }
        Ok(())
    }
}

/// What was checked, when everything passed.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub key_id: String,
    pub trusted_comment: String,
    pub files: Vec<String>,
    /// The image looked inside, and how many partitions matched.
    pub image: Option<(String, usize)>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "signature: good, key {} ({})", self.key_id, self.trusted_comment.replace('\t', " "))?;
        writeln!(f, "checksums: {} files match SHA256SUMS: {}", self.files.len(), self.files.join(", "))?;
        match &self.image {
            Some((name, n)) => {
                let noun = if *n == 1 { "partition" } else { "partitions" };
                writeln!(f, "image: {name}: partition table and {n} {noun} match {MANIFEST_FILE}")?
            }
            None => writeln!(f, "image: no .raw or .raw.zst to look inside (checksums only)")?,
        }
        writeln!(f, "OK")
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { subject: subject.into(), message: message.into() });
    }
}

/// Verifies an output directory, or one image (`.raw`, `.raw.zst`, `.qcow2`, ...) inside one.
pub fn verify(path: &Path, key: &PublicKey) -> Result<VerifyReport> {
    let (dir, only) = if path.is_dir() {
        (path.to_path_buf(), None)
    } else {
        let name = path.file_name().and_then(|n| n.to_str()).context("the image's file name must be UTF-8")?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        (dir.to_path_buf(), Some(name.to_string()))
    };
    let mut problems = Problems::default();
    let sums_path = dir.join(SUMS_FILE);
    let sums = std::fs::read(&sums_path)
        .with_context(|| format!("reading {}: a release without SHA256SUMS cannot be verified", sums_path.display()))?;

    let mut trusted_comment = String::new();
    match std::fs::read_to_string(dir.join(SIGNATURE_FILE)) {
        Err(e) => problems.add(SIGNATURE_FILE, format!("cannot be read ({e}): the release is not signed")),
        Ok(sig) => match signing::verify(key, &sums, &sig) {
            Ok(comment) => trusted_comment = comment,
            Err(e) => match e.downcast_ref::<VerifyError>() {
                Some(VerifyError::BadSignature) => problems
                    .add(SUMS_FILE, format!("does not match its signature {SIGNATURE_FILE}: modified after signing")),
                _ => problems.add(SIGNATURE_FILE, format!("{e:#}")),
            },
        },
    }

    let sums_text = String::from_utf8_lossy(&sums).into_owned();
    let listed = |name: &str| sums_text.lines().any(|l| l.get(66..) == Some(name));
    let to_check = match &only {
        None => sums_text.clone(),
        Some(name) => {
            if !listed(name) {
                problems.add(name.as_str(), "is not listed in SHA256SUMS");
            }
            sums_text
                .lines()
                .filter(|l| matches!(l.get(66..), Some(n) if n == name || n == MANIFEST_FILE))
                .map(|l| format!("{l}\n"))
                .collect()
        }
    };
    let mut files = Vec::new();
    match signing::check_sha256sums(&dir, &to_check) {
        Ok(names) => files = names,
        Err(e) => match e.downcast_ref::<ChecksumFailures>() {
            Some(failures) => {
                for f in &failures.failures {
                    let message = match &f.problem {
                        ChecksumProblem::Missing => "listed in SHA256SUMS but missing".to_string(),
                        ChecksumProblem::Unreadable(err) => format!("unreadable: {err}"),
                        ChecksumProblem::Mismatch { expected, actual } => {
                            format!("checksum mismatch: SHA256SUMS lists {expected}, the file has {actual}")
                        }
                    };
                    problems.add(f.name.as_str(), message);
                }
            }
            None => problems.add(SUMS_FILE, format!("{e:#}")),
        },
    }

    let mut image = None;
    if !listed(MANIFEST_FILE) {
        problems.add(MANIFEST_FILE, "is not listed in SHA256SUMS");
    }
    match Manifest::read(&dir.join(MANIFEST_FILE)) {
        Err(e) => problems.add(MANIFEST_FILE, format!("{e:#}")),
        Ok(m) => {
            let candidates = match &only {
                Some(name) => vec![name.clone()],
                None => vec![format!("{}.raw", m.appliance.name), format!("{}.raw.zst", m.appliance.name)],
            };
            if let Some(name) = candidates
                .into_iter()
                .find(|n| (n.ends_with(".raw") || n.ends_with(".raw.zst")) && dir.join(n).is_file())
            {
                let before = problems.0.len();
                check_image(&dir.join(&name), &name, &m, &mut problems);
                if problems.0.len() == before {
                    image = Some((name, m.disk.partitions.len()));
                }
            }
        }
    }

    if !problems.0.is_empty() {
        return Err(VerifyFailures { dir, problems: problems.0 }.into());
    }
    Ok(VerifyReport { key_id: key.key_id().to_string(), trusted_comment, files, image })
}

/// Compares the partition table and partitions of the raw image (or `.raw.zst`) at `path`
/// with the manifest.
fn check_image(path: &Path, name: &str, m: &Manifest, problems: &mut Problems) {
    let decompressed;
    let raw = if name.ends_with(".zst") {
        match decompress_sparse(path) {
            Ok(tmp) => {
                decompressed = tmp;
                decompressed.path().to_path_buf()
            }
            Err(e) => return problems.add(name, format!("cannot be decompressed: {e:#}")),
        }
    } else {
        path.to_path_buf()
    };
    let file = match File::open(&raw) {
        Ok(f) => f,
        Err(e) => return problems.add(name, format!("cannot be opened: {e}")),
    };
    let layout = match GptLayout::read(&file) {
        Ok(l) => l,
        Err(e) => return problems.add(format!("{name}: partition table"), format!("unreadable: {e:#}")),
    };
    if layout.disk_size != m.disk.size {
        problems.add(name, format!("is {} bytes, {MANIFEST_FILE} says {}", layout.disk_size, m.disk.size));
    }
    if layout.disk_guid.to_string() != m.disk.guid {
        problems.add(
            format!("{name}: partition table"),
            format!("disk GUID {}, {MANIFEST_FILE} says {}", layout.disk_guid, m.disk.guid),
        );
    }
    if layout.partitions.len() != m.disk.partitions.len() {
        problems.add(
            format!("{name}: partition table"),
            format!("{} partitions, {MANIFEST_FILE} lists {}", layout.partitions.len(), m.disk.partitions.len()),
        );
    }
    for mp in &m.disk.partitions {
        let subject = format!("{name}: partition {} ({})", mp.number, mp.name);
        let Some(p) = layout.partitions.get((mp.number as usize).wrapping_sub(1)) else {
            problems.add(subject, "is missing from the partition table");
            continue;
        };
        let fields = [
            ("name", p.name.clone(), mp.name.clone()),
            ("type GUID", p.type_guid.to_string(), mp.type_guid.clone()),
            ("GUID", p.guid.to_string(), mp.guid.clone()),
            ("start", p.start.to_string(), mp.start.to_string()),
            ("size", p.size.to_string(), mp.size.to_string()),
        ];
        for (what, actual, expected) in fields {
            if actual != expected {
                problems
                    .add(subject.as_str(), format!("GPT entry has {what} {actual}, {MANIFEST_FILE} says {expected}"));
            }
        }
        // The bytes where the manifest says the partition is: a moved entry must not hide
        // changed contents.
        match sha256_range(&file, mp.start, mp.size) {
            Ok(d) if hex::encode(d) == mp.sha256 => {}
            Ok(d) => problems.add(
                subject.as_str(),
                format!("contents differ from {MANIFEST_FILE}: sha256 {}, listed {}", hex::encode(d), mp.sha256),
            ),
            Err(e) => problems.add(subject.as_str(), format!("cannot be read: {e:#}")),
        }
    }
}

/// Decompresses a `.raw.zst` into a sparse temporary file (all-zero blocks become holes).
pub fn decompress_sparse(path: &Path) -> Result<tempfile::NamedTempFile> {
    let input = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut decoder = zstd::stream::read::Decoder::new(input).context("starting zstd")?;
    let mut tmp = tempfile::Builder::new().prefix("airlock-verify-").suffix(".raw").tempfile()?;
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = read_full(&mut decoder, &mut buf).with_context(|| format!("decompressing {}", path.display()))?;
        if n == 0 {
            break;
        }
        let f = tmp.as_file_mut();
        if buf[..n].iter().all(|&b| b == 0) {
            f.seek(SeekFrom::Current(n as i64)).context("seeking in the temporary image")?;
        } else {
            f.write_all(&buf[..n]).context("writing the temporary image")?;
        }
        len += n as u64;
    }
    tmp.as_file().set_len(len).context("sizing the temporary image")?;
    Ok(tmp)
}

/// Reads until `buf` is full or the stream ends.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
