//! `.minisig` signature files.
//!
//! ```text
//! untrusted comment: <anything>
//! base64("ED" || key id || Ed25519(BLAKE2b-512(message)))     ("Ed": Ed25519(message), legacy)
//! trusted comment: <text>
//! base64(Ed25519(signature || text))                          the "global" signature
//! ```
//!
//! The global signature is what makes the trusted comment trusted: it binds the comment to the
//! signature, so neither can be swapped. We always sign prehashed ("ED"), as minisign has by
//! default since 0.11, so that a multi-gigabyte file can be signed while streaming it; legacy
//! "Ed" signatures are still verified.

use super::key::{KeyId, KeyPair, PublicKey, UNTRUSTED_COMMENT_PREFIX};
use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use blake2::{Blake2b512, Digest};
use ed25519_dalek::{Signature, Signer};
use std::io::Read;

const TRUSTED_COMMENT_PREFIX: &str = "trusted comment: ";
const SIG_ALG_LEGACY: [u8; 2] = *b"Ed";
const SIG_ALG_PREHASHED: [u8; 2] = *b"ED";
const SIGNATURE_LINE_BYTES: usize = 2 + 8 + 64;
/// minisign reads the trusted comment line with an 8192-byte `fgets` (prefix, newline and NUL
/// included) and refuses to sign anything longer.
const TRUSTED_COMMENT_MAX: usize = 8192 - TRUSTED_COMMENT_PREFIX.len() - 2;
/// minisign's limit for legacy (non-prehashed) messages, which must be held in memory whole.
const LEGACY_MESSAGE_MAX: u64 = 1 << 30;

/// Why a signature did not verify. Returned inside [`anyhow::Error`]; downcast to tell the
/// cases apart.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed signature file: {0}")]
    Malformed(String),
    #[error("unsupported signature algorithm {0:?} (expected \"ED\" or \"Ed\")")]
    UnsupportedAlgorithm(String),
    #[error(
        "wrong key: the signature was made by key id {signature}, but the public key has key \
         id {public_key}"
    )]
    WrongKeyId { signature: KeyId, public_key: KeyId },
    #[error("bad signature: the signed data is not what was signed")]
    BadSignature,
    #[error("bad trusted comment signature: the trusted comment is not the one that was signed")]
    BadTrustedCommentSignature,
    #[error("legacy (non-prehashed) signature over more than 1 GiB: minisign refuses it too")]
    LegacyMessageTooLarge,
}

/// Signs `message`; returns the complete text of its `.minisig` file.
pub fn sign(kp: &KeyPair, message: &[u8], trusted_comment: &str) -> Result<String> {
    sign_prehashed(kp, Blake2b512::digest(message).into(), trusted_comment)
}

/// Like [`sign`], for a message read to its end from `reader` (a file of any size: it is
/// hashed as it streams, never held in memory).
pub fn sign_reader(kp: &KeyPair, reader: impl Read, trusted_comment: &str) -> Result<String> {
    check_trusted_comment(trusted_comment)?;
    let digest = blake2b512_of(reader).context("hashing the data to sign")?;
    sign_prehashed(kp, digest, trusted_comment)
}

/// Verifies `minisig_text` over `message` with `pk`; returns the trusted comment.
pub fn verify(pk: &PublicKey, message: &[u8], minisig_text: &str) -> Result<String> {
    let parsed = SignatureFile::parse(minisig_text)?;
    parsed.check_key_id(pk)?;
    if parsed.prehashed {
        parsed.check_signatures(pk, &Blake2b512::digest(message))
    } else {
        parsed.check_signatures(pk, message)
    }
}

/// Like [`verify`], for a message read to its end from `reader`. Prehashed signatures stream;
/// legacy ones need the message in memory, so (like minisign) they are refused above 1 GiB.
pub fn verify_reader(pk: &PublicKey, reader: impl Read, minisig_text: &str) -> Result<String> {
    // Parse and check the key id first: a malformed file or wrong key should not cost a pass
    // over gigabytes.
    let parsed = SignatureFile::parse(minisig_text)?;
    parsed.check_key_id(pk)?;
    let signed = if parsed.prehashed {
        blake2b512_of(reader).context("hashing the signed data")?.to_vec()
    } else {
        let mut message = Vec::new();
        reader.take(LEGACY_MESSAGE_MAX + 1).read_to_end(&mut message).context("reading the signed data")?;
        if message.len() as u64 > LEGACY_MESSAGE_MAX {
            return Err(VerifyError::LegacyMessageTooLarge.into());
        }
        message
    };
    parsed.check_signatures(pk, &signed)
}

fn sign_prehashed(kp: &KeyPair, digest: [u8; 64], trusted_comment: &str) -> Result<String> {
    check_trusted_comment(trusted_comment)?;
    let signature = kp.signing_key().sign(&digest);
    let mut global_signed = signature.to_bytes().to_vec();
    global_signed.extend_from_slice(trusted_comment.as_bytes());
    let global_signature = kp.signing_key().sign(&global_signed);

    let mut signature_line = Vec::with_capacity(SIGNATURE_LINE_BYTES);
    signature_line.extend_from_slice(&SIG_ALG_PREHASHED);
    signature_line.extend_from_slice(&kp.key_id().0);
    signature_line.extend_from_slice(&signature.to_bytes());
    Ok(format!(
        "{UNTRUSTED_COMMENT_PREFIX}signature from airlock secret key {}\n{}\n\
         {TRUSTED_COMMENT_PREFIX}{trusted_comment}\n{}\n",
        kp.key_id(),
        BASE64.encode(signature_line),
        BASE64.encode(global_signature.to_bytes()),
    ))
}

/// A trusted comment must survive minisign's line-based, C-string reading unchanged, or the
/// global signature would not verify there.
fn check_trusted_comment(comment: &str) -> Result<()> {
    if let Some(bad) = comment.chars().find(|c| matches!(c, '\n' | '\r' | '\0')) {
        anyhow::bail!("the trusted comment must be one line; it contains {bad:?}: {comment:?}");
    }
    if comment.len() > TRUSTED_COMMENT_MAX {
        anyhow::bail!("the trusted comment is {} bytes; minisign accepts at most {TRUSTED_COMMENT_MAX}", comment.len());
    }
    Ok(())
}

fn blake2b512_of(mut reader: impl Read) -> std::io::Result<[u8; 64]> {
    let mut hasher = Blake2b512::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(hasher.finalize().into()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// The id of the key a `.minisig` file says it was made with (unverified: what `minisign -V`
/// would look for), and its trusted comment (unverified too).
pub fn signature_key_id(minisig_text: &str) -> Result<(KeyId, String), VerifyError> {
    let parsed = SignatureFile::parse(minisig_text)?;
    Ok((parsed.key_id, parsed.trusted_comment))
}

/// The parts of a `.minisig` file.
struct SignatureFile {
    prehashed: bool,
    key_id: KeyId,
    signature: Signature,
    trusted_comment: String,
    global_signature: Signature,
}

impl SignatureFile {
    fn parse(text: &str) -> Result<Self, VerifyError> {
        let malformed = |what: &str| VerifyError::Malformed(what.to_owned());
        // minisign strips trailing CR/LF from each line and nothing else.
        let mut lines = text.split('\n').map(|line| line.trim_end_matches('\r'));
        let mut next_line = |name: &str| {
            lines.next().ok_or_else(|| malformed(&format!("the {name} line is missing (file truncated?)")))
        };

        let untrusted = next_line("untrusted comment")?;
        if !untrusted.starts_with(UNTRUSTED_COMMENT_PREFIX) {
            return Err(malformed(&format!("the first line should start with {UNTRUSTED_COMMENT_PREFIX:?}")));
        }
        let signature_line = next_line("signature")?;
        let trusted = next_line("trusted comment")?;
        let global_line = next_line("trusted comment signature")?;
        let rest: Vec<&str> = lines.filter(|line| !line.trim().is_empty()).collect();

        let signature_bytes = BASE64
            .decode(signature_line.trim())
            .map_err(|_| malformed("the signature line (second line) is not valid base64"))?;
        if signature_bytes.len() != SIGNATURE_LINE_BYTES {
            return Err(malformed(&format!(
                "the signature line decodes to {} bytes instead of {SIGNATURE_LINE_BYTES}",
                signature_bytes.len()
            )));
        }
        let trusted_comment = trusted
            .strip_prefix(TRUSTED_COMMENT_PREFIX)
            .ok_or_else(|| malformed(&format!("the third line should start with {TRUSTED_COMMENT_PREFIX:?}")))?
            .to_owned();
        let global_bytes = BASE64
            .decode(global_line.trim())
            .map_err(|_| malformed("the trusted comment signature line (fourth line) is not valid base64"))?;
        let global_bytes: [u8; 64] = global_bytes.as_slice().try_into().map_err(|_| {
            malformed(&format!("the trusted comment signature decodes to {} bytes instead of 64", global_bytes.len()))
        })?;
        if !rest.is_empty() {
            return Err(malformed("unexpected lines after the trusted comment signature"));
        }

        let prehashed = match [signature_bytes[0], signature_bytes[1]] {
            SIG_ALG_PREHASHED => true,
            SIG_ALG_LEGACY => false,
            other => {
                return Err(VerifyError::UnsupportedAlgorithm(String::from_utf8_lossy(&other).into_owned()));
            }
        };
        let key_id = KeyId(signature_bytes[2..10].try_into().expect("slice of length 8"));
        let signature_bytes: [u8; 64] = signature_bytes[10..].try_into().expect("slice of length 64");
        Ok(Self {
            prehashed,
            key_id,
            signature: Signature::from_bytes(&signature_bytes),
            trusted_comment,
            global_signature: Signature::from_bytes(&global_bytes),
        })
    }

    fn check_key_id(&self, pk: &PublicKey) -> Result<(), VerifyError> {
        if self.key_id != pk.key_id() {
            return Err(VerifyError::WrongKeyId { signature: self.key_id, public_key: pk.key_id() });
        }
        Ok(())
    }

    /// `signed` is the message (legacy) or its BLAKE2b-512 (prehashed). Returns the trusted
    /// comment once both signatures hold.
    fn check_signatures(self, pk: &PublicKey, signed: &[u8]) -> Result<String> {
        // verify_strict, like libsodium, rejects small-order keys and malleable signatures.
        pk.verifying_key().verify_strict(signed, &self.signature).map_err(|_| VerifyError::BadSignature)?;
        let mut global_signed = self.signature.to_bytes().to_vec();
        global_signed.extend_from_slice(self.trusted_comment.as_bytes());
        pk.verifying_key()
            .verify_strict(&global_signed, &self.global_signature)
            .map_err(|_| VerifyError::BadTrustedCommentSignature)?;
        Ok(self.trusted_comment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::key::generate;

    fn kind(err: &anyhow::Error) -> &VerifyError {
        err.downcast_ref::<VerifyError>().unwrap_or_else(|| panic!("not a VerifyError: {err:#}"))
    }

    #[test]
    fn sign_then_verify_returns_the_trusted_comment() {
        let kp = generate().unwrap();
        let text = sign(&kp, b"hello", "timestamp:0\tfile:hello").unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("untrusted comment: "));
        assert_eq!(&BASE64.decode(lines[1]).unwrap()[..2], b"ED");
        assert_eq!(lines[2], "trusted comment: timestamp:0\tfile:hello");
        assert_eq!(verify(&kp.public_key(), b"hello", &text).unwrap(), "timestamp:0\tfile:hello");
    }

    #[test]
    fn reader_and_slice_forms_agree() {
        let kp = generate().unwrap();
        let data = vec![7u8; 3 << 20];
        let text = sign_reader(&kp, data.as_slice(), "c").unwrap();
        assert_eq!(verify(&kp.public_key(), &data, &text).unwrap(), "c");
        assert_eq!(verify_reader(&kp.public_key(), data.as_slice(), &text).unwrap(), "c");
    }

    #[test]
    fn each_failure_says_what_failed() {
        let kp = generate().unwrap();
        let pk = kp.public_key();
        let text = sign(&kp, b"hello", "comment").unwrap();

        let err = verify(&pk, b"hellO", &text).unwrap_err();
        assert!(matches!(kind(&err), VerifyError::BadSignature));

        let altered = text.replace("trusted comment: comment", "trusted comment: c0mment");
        let err = verify(&pk, b"hello", &altered).unwrap_err();
        assert!(matches!(kind(&err), VerifyError::BadTrustedCommentSignature));

        let other = generate().unwrap().public_key();
        let err = verify(&other, b"hello", &text).unwrap_err();
        assert!(matches!(kind(&err), VerifyError::WrongKeyId { .. }));
        assert!(err.to_string().contains(&kp.key_id().to_string()));

        let truncated: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
        let err = verify(&pk, b"hello", truncated.trim_end()).unwrap_err();
        assert!(matches!(kind(&err), VerifyError::Malformed(_)), "{err:#}");
    }

    #[test]
    fn legacy_signatures_verify() {
        // Built by hand the way `minisign -S -l` does: Ed25519 over the message itself.
        let kp = generate().unwrap();
        let signature = kp.signing_key().sign(b"legacy");
        let mut line = b"Ed".to_vec();
        line.extend_from_slice(&kp.key_id().0);
        line.extend_from_slice(&signature.to_bytes());
        let mut global = signature.to_bytes().to_vec();
        global.extend_from_slice(b"old");
        let global = kp.signing_key().sign(&global);
        let text = format!(
            "untrusted comment: x\n{}\ntrusted comment: old\n{}\n",
            BASE64.encode(line),
            BASE64.encode(global.to_bytes())
        );
        assert_eq!(verify(&kp.public_key(), b"legacy", &text).unwrap(), "old");
        assert_eq!(verify_reader(&kp.public_key(), &b"legacy"[..], &text).unwrap(), "old");
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let kp = generate().unwrap();
        let text = sign(&kp, b"x", "c").unwrap().replace('\n', "\r\n");
        assert_eq!(verify(&kp.public_key(), b"x", &text).unwrap(), "c");
    }

    #[test]
    fn multi_line_trusted_comments_are_refused() {
        let kp = generate().unwrap();
        for bad in ["a\nb", "a\rb", "a\0b"] {
            assert!(sign(&kp, b"x", bad).is_err(), "{bad:?}");
        }
        assert!(sign(&kp, b"x", &"a".repeat(TRUSTED_COMMENT_MAX)).is_ok());
        assert!(sign(&kp, b"x", &"a".repeat(TRUSTED_COMMENT_MAX + 1)).is_err());
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let pk = generate().unwrap().public_key();
        for text in [
            "",
            "untrusted comment: x",
            "untrusted comment: x\n!!!\ntrusted comment: y\nAAAA\n",
            "hello\nworld\nfoo\nbar\n",
        ] {
            let err = verify(&pk, b"x", text).unwrap_err();
            assert!(matches!(kind(&err), VerifyError::Malformed(_)), "{text:?}: {err:#}");
        }
    }
}
