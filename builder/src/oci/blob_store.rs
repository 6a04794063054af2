//! A content-addressed store of verified blobs: `<dir>/sha256/<hex>`.
//!
//! Every blob enters through [`BlobStore::ingest`] (or [`BlobStore::ingest_computed`] when the
//! digest is only learned from the bytes), which hashes and counts the bytes while copying them
//! into a `.partial` file and gives that file its final name only once size and digest match,
//! after an fsync. A crash leaves at most a dot-file ending in `.partial`, never a wrong blob
//! under a digest name.
//!
//! Blobs already present (from an earlier build, or an `airlock fetch`) are not trusted by name:
//! the first use in a process re-hashes the file, and a store file that no longer matches is
//! replaced on ingest and refused on use. Each blob is hashed at most once per process, because
//! the store belongs to the build user and nothing else writes it while a build runs; the
//! registry writer then points the image at these files, so they must stay untouched until the
//! image is written.

use super::digest::{Digest, DigestingReader};
use super::error::ImageError;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    sha256: PathBuf,
    /// Blobs hashed (or written) by this process, with their sizes.
    verified: Mutex<HashMap<Digest, u64>>,
}

/// What happened to a blob that was checked in the store.
enum Existing {
    Verified,
    Missing,
    Corrupt(ImageError),
}

impl BlobStore {
    /// Opens (creating if needed) the store rooted at `dir`, removing the partial blobs that
    /// killed processes left (those no running process holds locked).
    pub fn new(dir: &Path) -> Result<Self> {
        let sha256 = dir.join("sha256");
        fs::create_dir_all(&sha256).with_context(|| format!("creating the blob store {}", sha256.display()))?;
        crate::output_file::clean_stale(&sha256)?;
        Ok(Self { dir: dir.to_path_buf(), sha256, verified: Mutex::new(HashMap::new()) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob with this digest lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.sha256.join(digest.hex())
    }

    /// Copies a blob from `source` into the store, checking that it is exactly `size` bytes with
    /// digest `expected`. At most `size + 1` bytes are read from `source`. When the store already
    /// holds a verified copy, `source` is not read at all: the bytes used are the store's, which
    /// have the digest the image demands.
    pub fn ingest(&self, expected: &Digest, size: u64, source: impl Read, what: &str) -> Result<PathBuf> {
        let dest = self.path(expected);
        match self.check_existing(expected, size, what)? {
            Existing::Verified => return Ok(dest),
            Existing::Missing => {}
            Existing::Corrupt(e) => {
                log::warn!("blob store: replacing {}: {e}", dest.display());
            }
        }
        let partial = self.partial_named(expected.hex())?;
        let (actual, len) = copy_counted(source, size, partial.as_file(), what)?;
        if len != size {
            return Err(ImageError::SizeMismatch {
                what: what.to_string(),
                digest: expected.clone(),
                expected: size,
                actual: len,
            }
            .into());
        }
        if actual != *expected {
            return Err(
                ImageError::DigestMismatch { what: what.to_string(), expected: expected.clone(), actual }.into()
            );
        }
        self.commit(partial, expected, size)?;
        Ok(dest)
    }

    /// Copies exactly `size` bytes from `source` into the store under the digest they turn out to
    /// have. For blobs whose digest no descriptor states (layers of a `docker save` archive that
    /// are compressed, so their name is not their diff_id).
    pub fn ingest_computed(&self, size: u64, source: impl Read, what: &str) -> Result<(Digest, PathBuf)> {
        let partial = self.partial_named("unknown")?;
        let (actual, len) = copy_counted(source, size, partial.as_file(), what)?;
        if len != size {
            return Err(ImageError::SizeMismatch {
                what: what.to_string(),
                digest: actual,
                expected: size,
                actual: len,
            }
            .into());
        }
        if let Existing::Verified = self.check_existing(&actual, size, what)? {
            return Ok((actual.clone(), self.path(&actual)));
        }
        self.commit(partial, &actual, size)?;
        let path = self.path(&actual);
        Ok((actual, path))
    }

    /// Copies at most `max` bytes from `source` into the store when only the digest is known in
    /// advance (mirrored files whose index gives a hash but no size), or neither (`expected`
    /// `None`: the digest is learned from the bytes). Returns the digest, the size and the path.
    pub fn ingest_unsized(
        &self,
        expected: Option<&Digest>,
        max: u64,
        source: impl Read,
        what: &str,
    ) -> Result<(Digest, u64, PathBuf)> {
        let partial = self.partial_named("download")?;
        let (actual, len) = copy_counted(source, max, partial.as_file(), what)?;
        if len > max {
            anyhow::bail!("{what} is larger than the limit of {max} bytes");
        }
        if let Some(expected) = expected
            && actual != *expected
        {
            return Err(
                ImageError::DigestMismatch { what: what.to_string(), expected: expected.clone(), actual }.into()
            );
        }
        let path = self.path(&actual);
        if let Existing::Verified = self.check_existing(&actual, len, what)? {
            return Ok((actual, len, path));
        }
        self.commit(partial, &actual, len)?;
        Ok((actual, len, path))
    }

    /// The size of the blob with this digest when the store holds it intact (re-hashed on first
    /// use in this process); `None` when it is missing or corrupt.
    pub fn find(&self, digest: &Digest, what: &str) -> Result<Option<u64>> {
        let size = match fs::metadata(self.path(digest)) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path(digest).display())),
        };
        Ok(matches!(self.check_existing(digest, size, what)?, Existing::Verified).then_some(size))
    }

    /// Stores bytes made by airlock itself (a manifest built for a `docker save` image).
    pub fn put_bytes(&self, bytes: &[u8], what: &str) -> Result<Digest> {
        let digest = Digest::of_bytes(bytes);
        self.ingest(&digest, bytes.len() as u64, bytes, what)?;
        Ok(digest)
    }

    /// The path of a blob that is in the store with this size and digest, re-hashing it on its
    /// first use in this process.
    pub fn verified_path(&self, digest: &Digest, size: u64, what: &str) -> Result<PathBuf> {
        let path = self.path(digest);
        match self.check_existing(digest, size, what)? {
            Existing::Verified => Ok(path),
            Existing::Missing => Err(ImageError::MissingBlob {
                what: what.to_string(),
                digest: digest.clone(),
                location: path.display().to_string(),
            }
            .into()),
            Existing::Corrupt(e) => Err(anyhow::Error::new(e).context(format!("blob store file {}", path.display()))),
        }
    }

    /// Reads a small blob (a manifest or config) from the store into memory, verified.
    pub fn read_verified(&self, digest: &Digest, size: u64, what: &str) -> Result<Vec<u8>> {
        let path = self.path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::MissingBlob {
                    what: what.to_string(),
                    digest: digest.clone(),
                    location: path.display().to_string(),
                }
                .into());
            }
            Err(e) => return Err(e).with_context(|| format!("opening blob {}", path.display())),
        };
        let mut bytes = Vec::new();
        file.take(size.saturating_add(1))
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading blob {}", path.display()))?;
        let actual = Digest::of_bytes(&bytes);
        if bytes.len() as u64 != size {
            return Err(ImageError::SizeMismatch {
                what: what.to_string(),
                digest: digest.clone(),
                expected: size,
                actual: bytes.len() as u64,
            }
            .into());
        }
        if actual != *digest {
            return Err(ImageError::DigestMismatch { what: what.to_string(), expected: digest.clone(), actual }.into());
        }
        self.lock().insert(digest.clone(), size);
        Ok(bytes)
    }

    fn check_existing(&self, digest: &Digest, size: u64, what: &str) -> Result<Existing> {
        if self.lock().get(digest) == Some(&size) {
            return Ok(Existing::Verified);
        }
        let path = self.path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Missing),
            Err(e) => {
                return Err(e).with_context(|| format!("opening blob {}", path.display()));
            }
        };
        let mut reader = DigestingReader::new(crate::progress::Counting(file.take(size.saturating_add(1))));
        io::copy(&mut reader, &mut io::sink()).with_context(|| format!("re-hashing blob {}", path.display()))?;
        let (actual, len) = reader.finish();
        if len != size {
            return Ok(Existing::Corrupt(ImageError::SizeMismatch {
                what: what.to_string(),
                digest: digest.clone(),
                expected: size,
                actual: len,
            }));
        }
        if actual != *digest {
            return Ok(Existing::Corrupt(ImageError::DigestMismatch {
                what: what.to_string(),
                expected: digest.clone(),
                actual,
            }));
        }
        self.lock().insert(digest.clone(), size);
        Ok(Existing::Verified)
    }

    /// A new `.<stem>.<random>.partial` file, created exclusively (`O_EXCL`: nothing planted
    /// at its name is followed) and locked while it is written, so that [`BlobStore::new`] tells
    /// it from the leftover of a killed process. The random part lets two builds sharing a
    /// store ingest the same blob at once; the last rename wins and both carry identical bytes.
    fn partial_named(&self, stem: &str) -> Result<tempfile::NamedTempFile> {
        let partial = tempfile::Builder::new()
            .prefix(&format!(".{stem}."))
            .suffix(".partial")
            .tempfile_in(&self.sha256)
            .with_context(|| format!("creating a partial blob in {}", self.sha256.display()))?;
        rustix::fs::flock(partial.as_file(), rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .with_context(|| format!("locking {}", partial.path().display()))?;
        Ok(partial)
    }

    fn commit(&self, partial: tempfile::NamedTempFile, digest: &Digest, size: u64) -> Result<()> {
        let dest = self.path(digest);
        partial.as_file().sync_all().with_context(|| format!("syncing {}", partial.path().display()))?;
        partial.persist(&dest).with_context(|| format!("renaming a partial blob to {}", dest.display()))?;
        File::open(&self.sha256)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing directory {}", self.sha256.display()))?;
        self.lock().insert(digest.clone(), size);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, u64>> {
        // A panic while holding the lock cannot leave the map half-updated (single insert/get),
        // so a poisoned lock is still good.
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Copies at most `size + 1` bytes of `source` into `out`, hashing them. One byte more than
/// expected is enough to tell that a source is too long without reading all of it.
fn copy_counted(source: impl Read, size: u64, out: &File, what: &str) -> Result<(Digest, u64)> {
    let mut reader = DigestingReader::new(source.take(size.saturating_add(1)));
    let mut writer = BufWriter::with_capacity(1 << 20, out);
    io::copy(&mut reader, &mut writer).with_context(|| format!("copying {what}"))?;
    writer.flush().with_context(|| format!("writing {what} to the blob store"))?;
    Ok(reader.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(r: Result<impl std::fmt::Debug>) -> ImageError {
        r.unwrap_err()
            .chain()
            .find_map(|e| e.downcast_ref::<ImageError>().cloned())
            .expect("an ImageError in the chain")
    }

    fn leftovers(store: &BlobStore) -> Vec<String> {
        fs::read_dir(store.dir().join("sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect()
    }

    #[test]
    fn partial_blobs_of_killed_processes_are_removed_and_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(tmp.path()).unwrap();
        let live = store.partial_named("live").unwrap();
        fs::write(store.dir().join("sha256/.dead.abc.partial"), b"half").unwrap();
        let again = BlobStore::new(tmp.path()).unwrap();
        let left = leftovers(&again);
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].starts_with(".live."), "{left:?}");
        drop(live);
        assert!(leftovers(&again).is_empty());
    }

    #[test]
    fn ingests_verified_and_refuses_bad_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(tmp.path()).unwrap();
        let d = Digest::of_bytes(b"layer");
        let p = store.ingest(&d, 5, &b"layer"[..], "layer").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"layer");

        let other = Digest::of_bytes(b"other");
        assert!(matches!(err_of(store.ingest(&other, 5, &b"othe!"[..], "layer")), ImageError::DigestMismatch { .. }));
        assert!(matches!(
            err_of(store.ingest(&other, 4, &b"other"[..], "layer")),
            ImageError::SizeMismatch { actual: 5, .. }
        ));
        assert!(matches!(
            err_of(store.ingest(&other, 6, &b"other"[..], "layer")),
            ImageError::SizeMismatch { actual: 5, .. }
        ));
        assert!(!store.path(&other).exists());
        assert!(leftovers(&store).is_empty());
    }

    #[test]
    fn existing_blobs_are_rehashed_not_trusted_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Digest::of_bytes(b"good");
        {
            let store = BlobStore::new(tmp.path()).unwrap();
            store.ingest(&d, 4, &b"good"[..], "config").unwrap();
        }
        // Another process tampers with the store between builds.
        fs::write(tmp.path().join("sha256").join(d.hex()), b"evil").unwrap();
        let store = BlobStore::new(tmp.path()).unwrap();
        assert!(matches!(err_of(store.verified_path(&d, 4, "config")), ImageError::DigestMismatch { .. }));
        // Ingesting from a good source repairs it.
        store.ingest(&d, 4, &b"good"[..], "config").unwrap();
        assert_eq!(store.read_verified(&d, 4, "config").unwrap(), b"good");
        assert!(matches!(
            err_of(store.verified_path(&Digest::of_bytes(b"x"), 1, "layer")),
            ImageError::MissingBlob { .. }
        ));
    }

    #[test]
    fn computed_ingest_names_by_content() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(tmp.path()).unwrap();
        let (d, p) = store.ingest_computed(3, &b"abc"[..], "layer").unwrap();
        assert_eq!(d, Digest::of_bytes(b"abc"));
        assert_eq!(fs::read(p).unwrap(), b"abc");
        assert!(store.ingest_computed(4, &b"abc"[..], "layer").is_err());
        assert!(leftovers(&store).is_empty());
    }
}
