//! Ed25519 key pairs in minisign's key file formats.
//!
//! A public key is `"Ed" || key id (8 bytes) || public key (32 bytes)`, base64 on the second
//! line of `PREFIX.pub`. A secret key file holds, base64 on its second line:
//!
//! ```text
//! "Ed" | kdf "Sc" or 00 00 | "B2" | salt (32) | opslimit (u64 LE) | memlimit (u64 LE)
//!      | key id (8) | seed || public key (64) | BLAKE2b-256("Ed" || key id || secret key) (32)
//! ```
//!
//! With kdf "Sc", the last 104 bytes are XORed with an scrypt stream derived from the
//! passphrase (see [`super::kdf`]); the checksum is what tells a wrong passphrase apart.

use super::kdf;
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use blake2::{Blake2b256, Digest};
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub(super) const UNTRUSTED_COMMENT_PREFIX: &str = "untrusted comment: ";
pub(super) const SIG_ALG: [u8; 2] = *b"Ed";
const KDF_SCRYPT: [u8; 2] = *b"Sc";
const KDF_NONE: [u8; 2] = [0, 0];
const CHK_BLAKE2B: [u8; 2] = *b"B2";

const KEY_ID_LEN: usize = 8;
const PUBLIC_KEY_BYTES: usize = 2 + KEY_ID_LEN + 32;
const SALT_LEN: usize = 32;
const CHECKSUM_LEN: usize = 32;
/// Offset of the (possibly encrypted) key id || secret key || checksum block.
const KEYNUM_SK_OFFSET: usize = 2 + 2 + 2 + SALT_LEN + 8 + 8;
const KEYNUM_SK_LEN: usize = KEY_ID_LEN + 64 + CHECKSUM_LEN;
const SECRET_KEY_BYTES: usize = KEYNUM_SK_OFFSET + KEYNUM_SK_LEN;

/// A minisign key id: 8 random bytes that name a key pair, shown as minisign shows them (the
/// bytes read as a little-endian u64, in upper-case hex).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An Ed25519 signing key and its minisign key id.
pub struct KeyPair {
    signing_key: SigningKey,
    key_id: KeyId,
}

// By hand so that the secret never reaches a log line.
impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl KeyPair {
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey { key_id: self.key_id, verifying_key: self.signing_key.verifying_key() }
    }

    pub(super) fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }
}

/// An Ed25519 public key and its minisign key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key_id: KeyId,
    verifying_key: VerifyingKey,
}

impl PublicKey {
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub(super) fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying_key
    }

    /// The one-line form `minisign -P` takes.
    pub fn to_base64(&self) -> String {
        let mut bytes = Vec::with_capacity(PUBLIC_KEY_BYTES);
        bytes.extend_from_slice(&SIG_ALG);
        bytes.extend_from_slice(&self.key_id.0);
        bytes.extend_from_slice(self.verifying_key.as_bytes());
        BASE64.encode(bytes)
    }

    /// Parses the one-line base64 form.
    pub fn from_base64(line: &str) -> Result<Self> {
        let bytes = BASE64.decode(line.trim()).context("the public key is not valid base64")?;
        if bytes.len() != PUBLIC_KEY_BYTES {
            let hint = if bytes.len() == SECRET_KEY_BYTES {
                " (that is the size of a secret key: was a .key file given instead of the .pub?)"
            } else {
                ""
            };
            bail!("a minisign public key is {PUBLIC_KEY_BYTES} bytes, this one decodes to {}{hint}", bytes.len());
        }
        if bytes[..2] != SIG_ALG {
            bail!(
                "unsupported public key algorithm {:?} (minisign keys are \"Ed\")",
                String::from_utf8_lossy(&bytes[..2])
            );
        }
        let key_id = KeyId(bytes[2..10].try_into().expect("slice of length 8"));
        let key: [u8; 32] = bytes[10..].try_into().expect("slice of length 32");
        let verifying_key =
            VerifyingKey::from_bytes(&key).map_err(|_| anyhow!("the public key is not a valid Ed25519 point"))?;
        Ok(Self { key_id, verifying_key })
    }

    /// The contents of a `.pub` file, exactly as `minisign -G` writes them.
    pub fn to_file_text(&self) -> String {
        format!("{UNTRUSTED_COMMENT_PREFIX}minisign public key {}\n{}\n", self.key_id, self.to_base64())
    }

    /// Parses a `.pub` file: a comment line, then the base64 line.
    pub fn from_file_text(text: &str) -> Result<Self> {
        let (_comment, key_line) = comment_and_payload(text)?;
        Self::from_base64(key_line)
    }
}

/// What went wrong with a key file, for callers that react differently (ask for the passphrase
/// again, tell the user to pick another prefix).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("wrong passphrase for secret key {path} (checksum mismatch after decryption)")]
    WrongPassphrase { path: PathBuf },
    #[error("refusing to overwrite existing key file {path}")]
    AlreadyExists { path: PathBuf },
}

/// Makes a new key pair from the operating system's random number generator.
pub fn generate() -> Result<KeyPair> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut_slice()).context("reading the operating system's random number generator")?;
    let mut key_id = [0u8; KEY_ID_LEN];
    getrandom::fill(&mut key_id).context("reading the operating system's random number generator")?;
    Ok(KeyPair { signing_key: SigningKey::from_bytes(&seed), key_id: KeyId(key_id) })
}

/// The one-line base64 public key, for `minisign -P` and for [`read_public_key`].
pub fn public_key_line(kp: &KeyPair) -> String {
    kp.public_key().to_base64()
}

/// Writes `PREFIX.key` and `PREFIX.pub`.
///
/// With a passphrase the secret key is encrypted as `minisign -G` does it (scrypt with
/// libsodium's "sensitive" limits: 1 GiB of memory, a few seconds); without one it is stored
/// as `minisign -G -W` stores it. Neither file is ever overwritten, and each appears under its
/// name only once complete and synced.
pub fn write_key_pair(kp: &KeyPair, prefix: &Path, passphrase: Option<&str>) -> Result<()> {
    let key_path = with_suffix(prefix, ".key");
    let pub_path = with_suffix(prefix, ".pub");
    // Checked up front so that nothing is derived or written when the answer is "no"; the
    // no-clobber renames below still catch a file that appears meanwhile.
    for path in [&key_path, &pub_path] {
        if fs::symlink_metadata(path).is_ok() {
            return Err(KeyError::AlreadyExists { path: path.clone() }.into());
        }
    }
    let secret_text = match passphrase {
        Some("") => bail!(
            "the passphrase for {} is empty; write the key without a passphrase instead of \
             pretending to encrypt it",
            key_path.display()
        ),
        Some(passphrase) => {
            secret_key_file_text(kp, Some((passphrase, kdf::OPSLIMIT_SENSITIVE, kdf::MEMLIMIT_SENSITIVE)))?
        }
        None => secret_key_file_text(kp, None)?,
    };
    let public_text = kp.public_key().to_file_text();

    // The secret key first: a lone .key can have its .pub recreated (`minisign -R`), a lone
    // .pub is useless.
    write_new_file(&key_path, secret_text.as_bytes(), 0o600)?;
    if let Err(err) = write_new_file(&pub_path, public_text.as_bytes(), 0o644) {
        // Best effort: we created this file a moment ago, and half a key pair helps nobody.
        let _ = fs::remove_file(&key_path);
        return Err(err);
    }
    let dir = parent_dir(&key_path);
    File::open(&dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing directory {}", dir.display()))?;
    Ok(())
}

/// Reads a minisign secret key file, ours or `minisign -G`'s.
///
/// `passphrase` is called only if the key is encrypted.
/// The most of a key file that is read: a minisign key file is two short lines.
pub const MAX_KEY_FILE: u64 = 64 * 1024;

pub fn read_secret_key(path: &Path, passphrase: impl FnOnce() -> Result<String>) -> Result<KeyPair> {
    let text = Zeroizing::new(crate::input_file::read_capped_text(path, MAX_KEY_FILE, "secret key file")?);
    let (_comment, payload) =
        comment_and_payload(&text).with_context(|| format!("parsing secret key file {}", path.display()))?;
    let bytes = Zeroizing::new(
        BASE64
            .decode(payload)
            .map_err(|_| anyhow!("secret key file {}: the key line is not valid base64", path.display()))?,
    );
    decode_secret_key(&bytes, path, passphrase)
}

/// Reads a public key given either as the path of a `.pub` file or as its one-line base64
/// form.
pub fn read_public_key(path_or_base64: &str) -> Result<PublicKey> {
    // A base64 key decodes to exactly PUBLIC_KEY_BYTES; a path practically never does, so the
    // string is taken as a key when it has that shape and as a path otherwise.
    let looks_like_a_key = BASE64.decode(path_or_base64.trim()).is_ok_and(|bytes| bytes.len() == PUBLIC_KEY_BYTES);
    if looks_like_a_key {
        return PublicKey::from_base64(path_or_base64);
    }
    let path = Path::new(path_or_base64);
    match fs::symlink_metadata(path) {
        Err(err) if err.kind() == ErrorKind::NotFound => bail!(
            "{path_or_base64:?} is neither a base64 minisign public key nor an existing public \
             key file"
        ),
        _ => {
            let text = crate::input_file::read_capped_text(path, MAX_KEY_FILE, "public key file")?;
            PublicKey::from_file_text(&text).with_context(|| format!("reading public key file {}", path.display()))
        }
    }
}

/// Splits a minisign key file into its comment (without the prefix) and its base64 line.
/// Like minisign, anything after the second line is ignored.
fn comment_and_payload(text: &str) -> Result<(&str, &str)> {
    let mut lines = text.lines();
    let comment = lines.next().unwrap_or_default();
    let comment = comment
        .strip_prefix(UNTRUSTED_COMMENT_PREFIX)
        .with_context(|| format!("the first line should start with {UNTRUSTED_COMMENT_PREFIX:?}"))?;
    let payload =
        lines.next().map(str::trim).filter(|line| !line.is_empty()).context("the key line (second line) is missing")?;
    Ok((comment, payload))
}

/// BLAKE2b-256 over the algorithm, key id and secret key: how minisign tells a correct
/// decryption from a wrong passphrase.
fn checksum(key_id: &[u8], secret_key: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut hasher = Blake2b256::new();
    hasher.update(SIG_ALG);
    hasher.update(key_id);
    hasher.update(secret_key);
    hasher.finalize().into()
}

/// The text of a secret key file. `encryption` is (passphrase, opslimit, memlimit); tests use
/// cheap limits, [`write_key_pair`] the ones minisign uses.
fn secret_key_file_text(kp: &KeyPair, encryption: Option<(&str, u64, u64)>) -> Result<String> {
    let secret_key = Zeroizing::new(kp.signing_key.to_keypair_bytes());
    let mut bytes = Zeroizing::new(Vec::with_capacity(SECRET_KEY_BYTES));
    bytes.extend_from_slice(&SIG_ALG);
    let mut salt = [0u8; SALT_LEN];
    let (opslimit, memlimit) = match encryption {
        Some((_, opslimit, memlimit)) => {
            getrandom::fill(&mut salt).context("reading the operating system's random number generator")?;
            bytes.extend_from_slice(&KDF_SCRYPT);
            (opslimit, memlimit)
        }
        // minisign -W leaves salt and limits zero; so do we.
        None => {
            bytes.extend_from_slice(&KDF_NONE);
            (0, 0)
        }
    };
    bytes.extend_from_slice(&CHK_BLAKE2B);
    bytes.extend_from_slice(&salt);
    bytes.extend_from_slice(&opslimit.to_le_bytes());
    bytes.extend_from_slice(&memlimit.to_le_bytes());
    bytes.extend_from_slice(&kp.key_id.0);
    bytes.extend_from_slice(secret_key.as_slice());
    // minisign -W leaves the checksum zero too, but a real one costs nothing, is ignored by
    // minisign for unencrypted keys, and lets us detect a damaged key file.
    bytes.extend_from_slice(&checksum(&kp.key_id.0, secret_key.as_slice()));
    debug_assert_eq!(bytes.len(), SECRET_KEY_BYTES);

    if let Some((passphrase, ..)) = encryption {
        let mut stream = Zeroizing::new([0u8; KEYNUM_SK_LEN]);
        kdf::keystream(passphrase.as_bytes(), &salt, opslimit, memlimit, stream.as_mut_slice())?;
        xor_in_place(&mut bytes[KEYNUM_SK_OFFSET..], stream.as_slice());
    }
    let comment = match encryption {
        Some(_) => format!("airlock secret key {}, encrypted", kp.key_id),
        None => format!("airlock secret key {}, NOT encrypted: keep this file offline", kp.key_id),
    };
    Ok(format!("{UNTRUSTED_COMMENT_PREFIX}{comment}\n{}\n", BASE64.encode(bytes.as_slice())))
}

fn decode_secret_key(bytes: &[u8], path: &Path, passphrase: impl FnOnce() -> Result<String>) -> Result<KeyPair> {
    let shown = path.display();
    if bytes.len() != SECRET_KEY_BYTES {
        bail!(
            "secret key file {shown}: a minisign secret key is {SECRET_KEY_BYTES} bytes, this \
             one decodes to {}",
            bytes.len()
        );
    }
    if bytes[0..2] != SIG_ALG {
        bail!("secret key file {shown}: unsupported signature algorithm (expected \"Ed\")");
    }
    if bytes[4..6] != CHK_BLAKE2B {
        bail!("secret key file {shown}: unsupported checksum algorithm (expected \"B2\")");
    }
    let salt = &bytes[6..6 + SALT_LEN];
    let opslimit = u64::from_le_bytes(bytes[38..46].try_into().expect("slice of length 8"));
    let memlimit = u64::from_le_bytes(bytes[46..54].try_into().expect("slice of length 8"));
    let mut keynum_sk = Zeroizing::new([0u8; KEYNUM_SK_LEN]);
    keynum_sk.copy_from_slice(&bytes[KEYNUM_SK_OFFSET..]);

    let kdf_alg: [u8; 2] = bytes[2..4].try_into().expect("slice of length 2");
    let encrypted = match kdf_alg {
        KDF_SCRYPT => true,
        KDF_NONE => false,
        other => bail!(
            "secret key file {shown}: unsupported key derivation {:?} (expected \"Sc\" or none)",
            String::from_utf8_lossy(&other)
        ),
    };
    if encrypted {
        let passphrase = Zeroizing::new(passphrase().with_context(|| format!("getting the passphrase for {shown}"))?);
        let mut stream = Zeroizing::new([0u8; KEYNUM_SK_LEN]);
        kdf::keystream(passphrase.as_bytes(), salt, opslimit, memlimit, stream.as_mut_slice())
            .with_context(|| format!("decrypting secret key file {shown}"))?;
        xor_in_place(keynum_sk.as_mut_slice(), stream.as_slice());
    }

    let key_id = KeyId(keynum_sk[..KEY_ID_LEN].try_into().expect("slice of length 8"));
    let secret_key: &[u8; 64] = keynum_sk[KEY_ID_LEN..KEY_ID_LEN + 64].try_into().expect("slice of length 64");
    let stored_checksum = &keynum_sk[KEY_ID_LEN + 64..];
    let computed = checksum(&key_id.0, secret_key);
    // minisign -W writes an all-zero checksum and never checks it for unencrypted keys, so a
    // zero one is accepted there; any other must match.
    let unchecked_zero = !encrypted && stored_checksum.iter().all(|&b| b == 0);
    if !unchecked_zero && stored_checksum != computed {
        if encrypted {
            return Err(KeyError::WrongPassphrase { path: path.to_path_buf() }.into());
        }
        bail!("secret key file {shown} is damaged: its checksum does not match the key");
    }
    // The second half of an Ed25519 secret key is its public key; a mismatch means the file
    // was damaged in a way the (possibly absent) checksum did not catch.
    let signing_key = SigningKey::from_keypair_bytes(secret_key)
        .map_err(|_| anyhow!("secret key file {shown} is damaged: its public half does not match its seed"))?;
    Ok(KeyPair { signing_key, key_id })
}

fn xor_in_place(data: &mut [u8], stream: &[u8]) {
    for (byte, key) in data.iter_mut().zip(stream) {
        *byte ^= key;
    }
}

/// `prefix` with `suffix` appended to its last component (`release.2024` → `release.2024.key`,
/// which `Path::with_extension` would get wrong).
pub fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(prefix.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `contents` to a temporary file next to `dest`, syncs it, and gives it its final name
/// only if nothing has that name yet (rename without replace), so a key file is never
/// overwritten and never seen half-written.
pub fn write_new_file(dest: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = parent_dir(dest);
    let name = dest.file_name().with_context(|| format!("key path {} has no file name", dest.display()))?;
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".partial")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(contents).with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.as_file().sync_all().with_context(|| format!("syncing {}", tmp.path().display()))?;
    match tmp.persist_noclobber(dest) {
        Ok(_) => Ok(()),
        Err(err) if err.error.kind() == ErrorKind::AlreadyExists => {
            Err(KeyError::AlreadyExists { path: dest.to_path_buf() }.into())
        }
        Err(err) => Err(err.error).with_context(|| format!("creating {}", dest.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libsodium's "interactive" limits: 16 MiB, fast enough for unit tests.
    const CHEAP_OPS: u64 = 524_288;
    const CHEAP_MEM: u64 = 16_777_216;

    fn decode_text(text: &str, passphrase: Option<&str>) -> Result<KeyPair> {
        let (_, payload) = comment_and_payload(text)?;
        let bytes = BASE64.decode(payload)?;
        let pw = passphrase.map(str::to_owned);
        decode_secret_key(&bytes, Path::new("test.key"), move || pw.context("passphrase asked for an unencrypted key"))
    }

    #[test]
    fn unencrypted_round_trip_never_asks_for_a_passphrase() {
        let kp = generate().unwrap();
        let text = secret_key_file_text(&kp, None).unwrap();
        let back = decode_text(&text, None).unwrap();
        assert_eq!(back.key_id(), kp.key_id());
        assert_eq!(back.public_key(), kp.public_key());
    }

    #[test]
    fn encrypted_round_trip_and_wrong_passphrase() {
        let kp = generate().unwrap();
        let text = secret_key_file_text(&kp, Some(("correct horse", CHEAP_OPS, CHEAP_MEM))).unwrap();
        let back = decode_text(&text, Some("correct horse")).unwrap();
        assert_eq!(back.public_key(), kp.public_key());

        let err = decode_text(&text, Some("battery staple")).unwrap_err();
        assert!(matches!(err.downcast_ref(), Some(KeyError::WrongPassphrase { .. })), "{err:#}");
        assert!(err.to_string().contains("checksum mismatch"), "{err:#}");
    }

    #[test]
    fn encrypted_layout_matches_minisign() {
        let kp = generate().unwrap();
        let text = secret_key_file_text(&kp, Some(("pw", CHEAP_OPS, CHEAP_MEM))).unwrap();
        let (_, payload) = comment_and_payload(&text).unwrap();
        let bytes = BASE64.decode(payload).unwrap();
        assert_eq!(bytes.len(), 158);
        assert_eq!(&bytes[0..6], b"EdScB2");
        assert_eq!(bytes[38..46], CHEAP_OPS.to_le_bytes());
        assert_eq!(bytes[46..54], CHEAP_MEM.to_le_bytes());
        // The key id is encrypted too.
        assert_ne!(bytes[54..62], kp.key_id().0);
    }

    #[test]
    fn damaged_unencrypted_key_is_detected() {
        let kp = generate().unwrap();
        let text = secret_key_file_text(&kp, None).unwrap();
        let (_, payload) = comment_and_payload(&text).unwrap();
        let mut bytes = BASE64.decode(payload).unwrap();
        bytes[KEYNUM_SK_OFFSET + 8] ^= 1;
        let err = decode_secret_key(&bytes, Path::new("k"), || unreachable!()).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err:#}");

        // With minisign -W's zero checksum, the public half still catches it.
        bytes[KEYNUM_SK_OFFSET + 72..].fill(0);
        let err = decode_secret_key(&bytes, Path::new("k"), || unreachable!()).unwrap_err();
        assert!(err.to_string().contains("public half"), "{err:#}");
    }

    #[test]
    fn public_key_round_trip_and_display() {
        let kp = generate().unwrap();
        let pk = kp.public_key();
        assert_eq!(PublicKey::from_base64(&pk.to_base64()).unwrap(), pk);
        assert_eq!(PublicKey::from_file_text(&pk.to_file_text()).unwrap(), pk);
        let first = pk.to_file_text().lines().next().unwrap().to_owned();
        assert_eq!(first, format!("untrusted comment: minisign public key {}", pk.key_id()));
        assert_eq!(pk.key_id().to_string().len(), 16);
    }

    #[test]
    fn key_id_prints_as_minisign_does() {
        // minisign prints le64_load(keynum) with %016" PRIX64.
        let id = KeyId([0xdb, 0x4e, 0xa3, 0x0f, 0x08, 0x36, 0x3d, 0x64]);
        assert_eq!(id.to_string(), "643D36080FA34EDB");
    }

    #[test]
    fn secret_key_given_as_public_key_gets_a_hint() {
        let kp = generate().unwrap();
        let text = secret_key_file_text(&kp, None).unwrap();
        let err = PublicKey::from_file_text(&text).unwrap_err();
        assert!(err.to_string().contains(".key file"), "{err:#}");
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let kp = generate().unwrap();
        let shown = format!("{kp:?}");
        let secret = hex::encode(kp.signing_key.to_bytes());
        assert!(!shown.contains(&secret[..16]));
        assert!(shown.contains(&kp.key_id().to_string()));
    }

    #[test]
    fn suffix_keeps_dots_in_the_prefix() {
        assert_eq!(with_suffix(Path::new("/k/release.2024"), ".pub"), PathBuf::from("/k/release.2024.pub"));
    }
}
