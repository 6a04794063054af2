//! `airlock verify`: is this release exactly what was built and signed?
//!
//! 1. the signature `SHA256SUMS.minisig` over `SHA256SUMS`, with the operator's public key. If
//!    it fails, verification stops there: nothing else in the directory is vouched for, so
//!    nothing else is opened, decompressed or parsed;
//! 2. every file listed in the (now authenticated) `SHA256SUMS` against its checksum (for a
//!    single image: that image and `manifest.json`), each problem recorded and the check going
//!    on, so that one run names every culprit;
//! 3. inside the raw image (`.raw`, or `.raw.zst` decompressed into an anonymous sparse file no
//!    larger than the manifest's disk) the partition table and each partition's SHA-256 against
//!    `manifest.json`. Only an image the signed listing names is looked into, only against a
//!    manifest whose checksum matched, parsed from the very bytes that were hashed.
//!
//! Files in the directory that `SHA256SUMS` does not list are named in the report: nothing
//! vouches for them. `--strict` makes them an error.
//!
//! Step 3 is what still names the partition when the checksums were regenerated and re-signed
//! by someone holding the key, or when an image was damaged in a way the manifest explains.

use crate::gpt::GptLayout;
use crate::inspect::sha256_range;
use crate::manifest::{MANIFEST_FILE, MAX_MANIFEST, Manifest};
use crate::printable::escape;
use crate::release::{SIGNATURE_FILE, SUMS_FILE};
use crate::signing::{self, ChecksumFailures, ChecksumProblem, PublicKey, VerifyError};
use crate::size::{ByteSize, KIB, MIB};
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The most of `SHA256SUMS` that is read: one line per file, a release has a handful.
pub const MAX_SUMS: u64 = MIB;
/// The most of `SHA256SUMS.minisig` that is read (a real one is about 300 bytes).
pub const MAX_SIGNATURE: u64 = 64 * KIB;

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
            write!(f, "\n  {}: {}", escape(&p.subject), escape(&p.message))?;
        }
        Ok(())
    }
}

/// How strict `verify` is.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// Files in the directory that `SHA256SUMS` does not list are an error, not a warning.
    pub strict: bool,
}

/// What was checked, when everything passed.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub key_id: String,
    pub trusted_comment: String,
    pub files: Vec<String>,
    /// The image looked inside, and how many partitions matched.
    pub image: Option<(String, usize)>,
    /// The update bundle checked (its own signature, every payload, and its root, hash tree
    /// and UKI against the manifest's), and its version.
    pub bundle: Option<(String, String)>,
    /// Files in the directory that `SHA256SUMS` does not list (nothing vouches for them).
    pub unlisted: Vec<String>,
    /// Every entry of the signed `SHA256SUMS`: name and SHA-256.
    pub signed: Vec<(String, [u8; 32])>,
}

impl VerifyReport {
    /// The SHA-256 the signed `SHA256SUMS` lists for `name`.
    pub fn signed_digest(&self, name: &str) -> Option<[u8; 32]> {
        self.signed.iter().find(|(n, _)| n == name).map(|(_, d)| *d)
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "signature: good, key {} ({})", self.key_id, escape(&self.trusted_comment.replace('\t', " ")))?;
        writeln!(f, "checksums: {} files match SHA256SUMS: {}", self.files.len(), escape(&self.files.join(", ")))?;
        match &self.image {
            Some((name, n)) => {
                let noun = if *n == 1 { "partition" } else { "partitions" };
                writeln!(f, "image: {}: partition table and {n} {noun} match {MANIFEST_FILE}", escape(name))?
            }
            None => writeln!(f, "image: no .raw or .raw.zst to look inside (checksums only)")?,
        }
        if let Some((name, version)) = &self.bundle {
            writeln!(
                f,
                "update: {}: signature good, payloads match, root, hash tree and UKI are the image's ({})",
                escape(name),
                escape(version)
            )?;
        }
        if !self.unlisted.is_empty() {
            writeln!(f, "warning: not covered by SHA256SUMS, so not verified: {}", escape(&self.unlisted.join(", ")))?;
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

fn fail(dir: &Path, subject: &str, message: impl Into<String>) -> anyhow::Error {
    VerifyFailures {
        dir: dir.to_path_buf(),
        problems: vec![Problem { subject: subject.to_string(), message: message.into() }],
    }
    .into()
}

/// The entries of a signed `SHA256SUMS`: name and SHA-256, in the listing's order.
type SignedEntries = Vec<(String, [u8; 32])>;

/// The signature over `SHA256SUMS`, checked before anything else is read: the authenticated
/// entries and the trusted comment, or the one problem that stops verification.
fn authenticate(dir: &Path, key: &PublicKey) -> Result<(SignedEntries, String)> {
    let sums_path = dir.join(SUMS_FILE);
    let sums = crate::input_file::read_capped(&sums_path, MAX_SUMS, SUMS_FILE)
        .context("a release without a readable SHA256SUMS cannot be verified")?;
    let sig_path = dir.join(SIGNATURE_FILE);
    let sig = match crate::input_file::read_capped_text(&sig_path, MAX_SIGNATURE, SIGNATURE_FILE) {
        Ok(s) => s,
        Err(e) => return Err(fail(dir, SIGNATURE_FILE, format!("cannot be read ({e:#}): the release is not signed"))),
    };
    let comment = match signing::verify(key, &sums, &sig) {
        Ok(comment) => comment,
        Err(e) => {
            return Err(match e.downcast_ref::<VerifyError>() {
                Some(VerifyError::BadSignature) => fail(
                    dir,
                    SUMS_FILE,
                    format!(
                        "does not match its signature {SIGNATURE_FILE}: modified after signing; nothing else was checked"
                    ),
                ),
                _ => fail(dir, SIGNATURE_FILE, format!("{e:#}; nothing else was checked")),
            });
        }
    };
    let text = std::str::from_utf8(&sums).map_err(|_| fail(dir, SUMS_FILE, "is not UTF-8 text"))?;
    let entries = signing::parse_sha256sums(text).map_err(|e| fail(dir, SUMS_FILE, format!("{e:#}")))?;
    Ok((entries, comment))
}

/// Verifies an output directory, or one image (`.raw`, `.raw.zst`, `.qcow2`, ...) inside one.
pub fn verify(path: &Path, key: &PublicKey, opts: &VerifyOptions) -> Result<VerifyReport> {
    let (dir, only) = if path.is_dir() {
        (path.to_path_buf(), None)
    } else {
        let name = path.file_name().and_then(|n| n.to_str()).context("the image's file name must be UTF-8")?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        (dir.to_path_buf(), Some(name.to_string()))
    };
    let (signed, trusted_comment) = authenticate(&dir, key)?;
    let listed = |name: &str| signed.iter().any(|(n, _)| n == name);
    if let Some(name) = &only
        && !listed(name)
    {
        return Err(fail(&dir, name, "is not listed in SHA256SUMS: nothing vouches for it, so it was not read"));
    }

    let mut problems = Problems::default();
    let to_check: Vec<(String, [u8; 32])> =
        signed.iter().filter(|(n, _)| only.as_ref().is_none_or(|o| n == o || n == MANIFEST_FILE)).cloned().collect();
    match signing::check_entries(&dir, &to_check) {
        Ok(_) => {}
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
    let files: Vec<String> = to_check.iter().map(|(n, _)| n.clone()).collect();

    let mut image = None;
    let mut bundle = None;
    match authenticated_manifest(&dir, &signed) {
        Err(e) => problems.add(MANIFEST_FILE, format!("{e:#}")),
        Ok(m) => {
            let candidates = match &only {
                Some(name) => vec![name.clone()],
                None => vec![format!("{}.raw", m.appliance.name), format!("{}.raw.zst", m.appliance.name)],
            };
            // Only an image the signed listing names is opened (even if its checksum failed:
            // the signed manifest bounds the work, and names the partition that changed).
            let is_image = |n: &String| n.ends_with(".raw") || n.ends_with(".raw.zst");
            if let Some(name) =
                candidates.into_iter().find(|n| is_image(n) && listed(n) && dir.join(n).symlink_metadata().is_ok())
            {
                let before = problems.0.len();
                check_image(&dir.join(&name), &name, &m, &mut problems);
                if problems.0.len() == before {
                    image = Some((name, m.disk.partitions.len()));
                }
            }
            let bundle_name = airlock_common::bundle::file_name(&m.appliance.name, &m.appliance.version);
            if only.as_ref().is_none_or(|o| *o == bundle_name) && listed(&bundle_name) {
                let before = problems.0.len();
                check_bundle(&dir.join(&bundle_name), &bundle_name, key, &m, &mut problems);
                if problems.0.len() == before {
                    bundle = Some((bundle_name, m.appliance.version.clone()));
                }
            }
        }
    }

    let unlisted = unlisted_files(&dir, &signed)?;
    if !unlisted.is_empty() {
        if opts.strict {
            for name in &unlisted {
                problems.add(name.as_str(), "is not covered by SHA256SUMS (--strict)");
            }
        } else {
            log::warn!(
                "{}: not covered by SHA256SUMS, so not verified: {}",
                dir.display(),
                escape(&unlisted.join(", "))
            );
        }
    }

    if !problems.0.is_empty() {
        return Err(VerifyFailures { dir, problems: problems.0 }.into());
    }
    Ok(VerifyReport { key_id: key.key_id().to_string(), trusted_comment, files, image, bundle, unlisted, signed })
}

/// The update bundle: its own signature with the release key, every payload's digests, and
/// that it carries the image's slot A root and hash tree and its UKI (by the manifest's
/// digests) for the manifest's appliance and version.
fn check_bundle(path: &Path, name: &str, key: &PublicKey, m: &Manifest, problems: &mut Problems) {
    let b = match crate::update_bundle::verify(path, std::slice::from_ref(key)) {
        Ok(b) => b,
        Err(e) => return problems.add(name, format!("{e:#}")),
    };
    let h = &b.header;
    if (h.appliance.as_str(), h.version.as_str()) != (m.appliance.name.as_str(), m.appliance.version.as_str()) {
        problems.add(
            name,
            format!(
                "is {} {}, the manifest is of {} {}",
                h.appliance, h.version, m.appliance.name, m.appliance.version
            ),
        );
    }
    use crate::partition::{Role, Slot};
    use airlock_common::bundle::Kind;
    let partition_sha = |role: Role| m.disk.partitions.iter().find(|p| p.role == Some(role)).map(|p| p.sha256.clone());
    let boot = m.boot.as_ref();
    for (kind, expected) in [
        (Kind::Root, partition_sha(Role::Root(Slot::A))),
        (Kind::Verity, partition_sha(Role::RootVerity(Slot::A))),
        (Kind::Uki, boot.map(|b| b.uki_sha256.clone())),
    ] {
        if expected.as_deref() != Some(h.payload(kind).sha256.as_str()) {
            problems.add(name, format!("its {kind} is not the image's (the manifest says {expected:?})"));
        }
    }
    if boot.and_then(|b| b.verity.as_ref()).map(|v| v.root_hash.as_str()) != Some(h.root_hash.as_str()) {
        problems.add(name, format!("its root hash {} is not the manifest's", h.root_hash));
    }
}

/// `manifest.json`, parsed from the bytes whose SHA-256 matched the signed listing (never from a
/// second read that could differ).
fn authenticated_manifest(dir: &Path, signed: &[(String, [u8; 32])]) -> Result<Manifest> {
    let Some((_, digest)) = signed.iter().find(|(n, _)| n == MANIFEST_FILE) else {
        anyhow::bail!("is not listed in SHA256SUMS, so the image cannot be checked against it");
    };
    let bytes = crate::input_file::read_capped(&dir.join(MANIFEST_FILE), MAX_MANIFEST, MANIFEST_FILE)?;
    let actual: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&bytes).into();
    if actual != *digest {
        anyhow::bail!("does not match SHA256SUMS, so the image was not checked against it");
    }
    let text = std::str::from_utf8(&bytes).context("is not UTF-8")?;
    Manifest::parse(text)
}

/// Names in `dir` that the signed listing does not cover (besides `SHA256SUMS` and its
/// signature), sorted.
fn unlisted_files(dir: &Path, signed: &[(String, [u8; 32])]) -> Result<Vec<String>> {
    let covered: BTreeSet<&str> =
        signed.iter().map(|(n, _)| n.split('/').next().unwrap_or(n)).chain([SUMS_FILE, SIGNATURE_FILE]).collect();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !covered.contains(name.as_str()) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Checks that the manifest's partitions can be hashed with bounded work: at most 128, each
/// inside the disk, none overlapping another (so all of them together are at most the disk).
fn check_manifest_ranges(m: &Manifest) -> Result<(), String> {
    let parts = &m.disk.partitions;
    if parts.len() > 128 {
        return Err(format!("lists {} partitions; a GPT holds at most 128", parts.len()));
    }
    let mut numbers: Vec<u32> = parts.iter().map(|p| p.number).collect();
    numbers.sort_unstable();
    if numbers.windows(2).any(|w| w[0] == w[1]) {
        return Err("lists a partition number twice".into());
    }
    let mut ranges: Vec<(u64, u64, u32)> = Vec::with_capacity(parts.len());
    for p in parts {
        let end = p.start.checked_add(p.size).filter(|e| *e <= m.disk.size).ok_or_else(|| {
            format!("partition {} ({}) lies outside the {}-byte disk", p.number, escape(&p.name), m.disk.size)
        })?;
        ranges.push((p.start, end, p.number));
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(format!("partitions {} and {} overlap", pair[0].2, pair[1].2));
        }
    }
    Ok(())
}

/// Compares the partition table and partitions of the raw image (or `.raw.zst`) at `path`
/// with the manifest.
fn check_image(path: &Path, name: &str, m: &Manifest, problems: &mut Problems) {
    if let Err(why) = check_manifest_ranges(m) {
        return problems.add(MANIFEST_FILE, why);
    }
    let file = if name.ends_with(".zst") {
        match decompress_sparse(path, m.disk.size) {
            Ok(tmp) => tmp,
            Err(e) => return problems.add(name, format!("cannot be decompressed: {e:#}")),
        }
    } else {
        match crate::input_file::open_regular(path, "image") {
            Ok(f) => f,
            Err(e) => return problems.add(name, format!("cannot be opened: {e:#}")),
        }
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

/// Decompresses a `.raw.zst` into an anonymous sparse temporary file (all-zero blocks become
/// holes; the file is gone when dropped or when the process ends, however it ends), stopping
/// past `max` bytes: the image the signed manifest describes is no larger.
pub fn decompress_sparse(path: &Path, max: u64) -> Result<File> {
    let input = crate::input_file::open_regular(path, "image")?;
    let mut decoder = zstd::stream::read::Decoder::new(input).context("starting zstd")?;
    let mut tmp = tempfile::tempfile().context("creating a temporary image")?;
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = read_full(&mut decoder, &mut buf).with_context(|| format!("decompressing {}", path.display()))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        if len > max {
            anyhow::bail!("it expands past {} ({max} bytes), the disk size {MANIFEST_FILE} states", ByteSize(max));
        }
        if buf[..n].iter().all(|&b| b == 0) {
            tmp.seek(SeekFrom::Current(n as i64)).context("seeking in the temporary image")?;
        } else {
            tmp.write_all(&buf[..n]).context("writing the temporary image")?;
        }
    }
    tmp.set_len(len).context("sizing the temporary image")?;
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
