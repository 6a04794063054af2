//! Keys, signatures and checksums that an operator can check with stock tools.
//!
//! Everything here is written in formats that tools nobody here wrote can verify on the far
//! side of the air gap:
//! - [`key`]: key pairs stored as minisign key files (`PREFIX.key`, `PREFIX.pub`);
//! - [`minisig`]: `.minisig` signature files, checked by `minisign -V`;
//! - [`sums`]: `SHA256SUMS` in the format `sha256sum -c` reads;
//! - [`kdf`]: the scrypt parameters libsodium derives from a key file's limits, which the
//!   passphrase of an encrypted secret key goes through.
//!
//! The intended chain of trust: `SHA256SUMS` lists every output, `SHA256SUMS.minisig` signs it,
//! and the operator holds the one-line public key ([`public_key_line`]).

mod kdf;
pub mod key;
pub mod minisig;
pub mod sums;

pub use key::{
    KeyError, KeyId, KeyPair, PublicKey, generate, public_key_line, read_public_key, read_secret_key, write_key_pair,
};
pub use minisig::{VerifyError, sign, sign_reader, signature_key_id, verify, verify_reader};
pub use sums::{
    ChecksumFailure, ChecksumFailures, ChecksumProblem, check_entries, check_sha256sums, parse_sha256sums, sha256sums,
    sha256sums_reporting,
};
