//! `SHA256SUMS` files, in the format `sha256sum` writes and `sha256sum -c` checks.
//!
//! One line per file, `<64 lower-case hex digits><space><space><name>`, sorted by name so the
//! same outputs always give the same bytes (and so the same signature input). Files are hashed
//! as they stream: images are many gigabytes.
//!
//! Names that `sha256sum` would have to escape (backslash, newline, carriage return) are
//! refused rather than escaped, and so are absolute names and `..`: every listed name is a
//! path relative to the directory that holds `SHA256SUMS`.

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Component, Path, PathBuf};

/// Hashes each file and returns the text of a `SHA256SUMS` listing them under their given
/// names, sorted by name.
pub fn sha256sums(files: &[(String, PathBuf)]) -> Result<String> {
    sha256sums_reporting(files, &mut |_| {})
}

/// [`sha256sums`], telling `hashed` how many bytes it read as it goes (a progress meter).
pub fn sha256sums_reporting(files: &[(String, PathBuf)], hashed: &mut dyn FnMut(u64)) -> Result<String> {
    let mut by_name = BTreeMap::new();
    for (name, path) in files {
        check_name(name)?;
        if by_name.insert(name.as_str(), path).is_some() {
            bail!("{name:?} is listed twice for SHA256SUMS");
        }
    }
    let mut text = String::new();
    for (name, path) in by_name {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let digest = sha256_of(Reporting { inner: file, hashed: &mut *hashed })
            .with_context(|| format!("hashing {}", path.display()))?;
        text.push_str(&hex::encode(digest));
        text.push_str("  ");
        text.push_str(name);
        text.push('\n');
    }
    Ok(text)
}

/// Checks every file listed in `sums_text` against the file of that name in `dir`; returns
/// the names checked, in the listing's order.
///
/// All files are checked before failing, and the error (a [`ChecksumFailures`]) names every
/// file that is missing, unreadable or different.
pub fn check_sha256sums(dir: &Path, sums_text: &str) -> Result<Vec<String>> {
    let entries: Vec<(String, [u8; 32])> =
        parse(sums_text)?.into_iter().map(|entry| (entry.name, entry.digest)).collect();
    check_entries(dir, &entries)
}

/// The entries of a `SHA256SUMS` text: name and SHA-256, in the listing's order (names checked
/// as [`check_sha256sums`] does, none twice).
pub fn parse_sha256sums(sums_text: &str) -> Result<Vec<(String, [u8; 32])>> {
    Ok(parse(sums_text)?.into_iter().map(|entry| (entry.name, entry.digest)).collect())
}

/// Checks each `(name, sha256)` against the file of that name in `dir` (only regular files are
/// read: a FIFO or device under a listed name is unreadable, not a hang); returns the names, in
/// order. Errors as [`check_sha256sums`].
pub fn check_entries(dir: &Path, entries: &[(String, [u8; 32])]) -> Result<Vec<String>> {
    let mut failures = Vec::new();
    for (name, digest) in entries {
        let path = dir.join(name);
        let problem = match std::fs::symlink_metadata(&path) {
            Err(err) if err.kind() == ErrorKind::NotFound => Some(ChecksumProblem::Missing),
            _ => match crate::input_file::open_regular(&path, "file") {
                Err(err) => Some(ChecksumProblem::Unreadable(format!("{err:#}"))),
                Ok(file) => match sha256_of(file) {
                    Err(err) => Some(ChecksumProblem::Unreadable(err.to_string())),
                    Ok(actual) if actual == *digest => None,
                    Ok(actual) => {
                        Some(ChecksumProblem::Mismatch { expected: hex::encode(digest), actual: hex::encode(actual) })
                    }
                },
            },
        };
        if let Some(problem) = problem {
            failures.push(ChecksumFailure { name: name.clone(), problem });
        }
    }
    if !failures.is_empty() {
        return Err(ChecksumFailures { listed: entries.len(), failures })
            .with_context(|| format!("checking the files in {}", dir.display()));
    }
    Ok(entries.iter().map(|(name, _)| name.clone()).collect())
}

/// Every file that failed [`check_sha256sums`].
#[derive(Debug, thiserror::Error)]
pub struct ChecksumFailures {
    pub listed: usize,
    pub failures: Vec<ChecksumFailure>,
}

#[derive(Debug)]
pub struct ChecksumFailure {
    pub name: String,
    pub problem: ChecksumProblem,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ChecksumProblem {
    Missing,
    Unreadable(String),
    Mismatch { expected: String, actual: String },
}

impl fmt::Display for ChecksumFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {} listed files failed the check:", self.failures.len(), self.listed)?;
        for failure in &self.failures {
            write!(f, "\n  {}: ", failure.name)?;
            match &failure.problem {
                ChecksumProblem::Missing => write!(f, "missing")?,
                ChecksumProblem::Unreadable(err) => write!(f, "unreadable ({err})")?,
                ChecksumProblem::Mismatch { expected, actual } => {
                    write!(f, "checksum mismatch (listed {expected}, file has {actual})")?;
                }
            }
        }
        Ok(())
    }
}

struct Entry {
    digest: [u8; 32],
    name: String,
}

fn parse(sums_text: &str) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (index, line) in sums_text.split('\n').enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let number = index + 1;
        // `<hex>  <name>` (text mode) or `<hex> *<name>` (binary mode); the two are the same
        // on Linux.
        let (hex_digest, name) = line
            .split_at_checked(64)
            .and_then(|(hex, rest)| rest.strip_prefix("  ").or_else(|| rest.strip_prefix(" *")).map(|name| (hex, name)))
            .with_context(|| format!("SHA256SUMS line {number} is not \"<sha256 hex>  <name>\": {line:?}"))?;
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex_digest, &mut digest)
            .with_context(|| format!("SHA256SUMS line {number}: {hex_digest:?} is not a SHA-256 in hex"))?;
        check_name(name).with_context(|| format!("SHA256SUMS line {number}"))?;
        if !seen.insert(name) {
            bail!("SHA256SUMS line {number}: {name:?} is listed twice");
        }
        entries.push(Entry { digest, name: name.to_owned() });
    }
    if entries.is_empty() {
        bail!("SHA256SUMS lists no files");
    }
    Ok(entries)
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        bail!("a file name in SHA256SUMS is empty");
    }
    if name.contains(['\\', '\n', '\r']) {
        // sha256sum escapes these with a leading backslash; nothing we produce needs them.
        bail!("{name:?} contains a backslash or line break, which SHA256SUMS cannot list plainly");
    }
    if name.chars().any(char::is_control) {
        // A name is printed by verify; control characters would reach the terminal.
        bail!("{name:?} contains a control character");
    }
    let path = Path::new(name);
    if !path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        bail!("{name:?} must be a relative path inside the directory of SHA256SUMS");
    }
    Ok(())
}

/// A reader that tells a callback how much it read.
struct Reporting<'a, R> {
    inner: R,
    hashed: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for Reporting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.hashed)(n as u64);
        Ok(n)
    }
}

fn sha256_of(mut reader: impl Read) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    // 1 MiB: large enough that syscalls do not show next to hashing, small enough to be
    // irrelevant next to the image.
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(hasher.finalize().into()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn known_digest_sorted_and_formatted() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("b"), b"abc").unwrap();
        fs::write(dir.path().join("a"), b"").unwrap();
        let text =
            sha256sums(&[("b.raw".into(), dir.path().join("b")), ("a.raw".into(), dir.path().join("a"))]).unwrap();
        assert_eq!(
            text,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  a.raw\n\
             ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  b.raw\n"
        );
    }

    #[test]
    fn check_reports_every_failure() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ok", "bad", "gone"] {
            fs::write(dir.path().join(name), name).unwrap();
        }
        let files: Vec<_> = ["ok", "bad", "gone"].iter().map(|n| (n.to_string(), dir.path().join(n))).collect();
        let text = sha256sums(&files).unwrap();
        assert_eq!(check_sha256sums(dir.path(), &text).unwrap().len(), 3);

        fs::write(dir.path().join("bad"), "BAD").unwrap();
        fs::remove_file(dir.path().join("gone")).unwrap();
        let err = check_sha256sums(dir.path(), &text).unwrap_err();
        let failures = err.downcast_ref::<ChecksumFailures>().unwrap();
        let named: Vec<_> = failures.failures.iter().map(|f| (f.name.as_str(), &f.problem)).collect();
        assert_eq!(named.len(), 2);
        assert_eq!(named[0].0, "bad");
        assert!(matches!(named[0].1, ChecksumProblem::Mismatch { .. }));
        assert_eq!(named[1], ("gone", &ChecksumProblem::Missing));
        let shown = format!("{err:#}");
        assert!(shown.contains("bad: checksum mismatch"), "{shown}");
        assert!(shown.contains("gone: missing"), "{shown}");
    }

    #[test]
    fn binary_mode_lines_and_crlf_are_read() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("x"), b"abc").unwrap();
        let text = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad *x\r\n";
        assert_eq!(check_sha256sums(dir.path(), text).unwrap(), vec!["x"]);
    }

    #[test]
    fn unsafe_or_ambiguous_names_are_refused() {
        for name in ["", "../x", "/etc/passwd", "a\\b", "a\nb", "a\u{1b}[2Jb"] {
            assert!(check_name(name).is_err(), "{name:?}");
        }
        assert!(check_name("images/disk.raw").is_ok());
        let hex = "0".repeat(64);
        assert!(parse(&format!("{hex}  ../up\n")).is_err());
        assert!(parse(&format!("{hex}  a\n{hex}  a\n")).is_err());
        assert!(parse("").is_err());
        assert!(parse("not a sums file\n").is_err());
        assert!(parse(&format!("{}  a\n", "g".repeat(64))).is_err());
    }

    #[test]
    fn duplicate_names_are_refused_when_writing() {
        let err = sha256sums(&[("a".into(), PathBuf::from("/x")), ("a".into(), PathBuf::from("/y"))]).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err:#}");
    }
}
