//! UEFI Secure Boot with the owner's own keys.
//!
//! The chain: firmware holds the owner's PK, KEK and db (enrolled by systemd-boot from
//! `loader/keys/auto/*.auth` on a machine in Setup Mode, or through the firmware's menu); db
//! verifies systemd-boot and the UKI, which airlock signs with the db key ([`sign_pe`]); the UKI's
//! command line pins the dm-verity root hash ([`crate::verity`]).
//!
//! - [`keys`]: `airlock keygen --secure-boot` ([`generate`]) and the checked loading of what a
//!   build needs ([`OwnerKeys::load`]);
//! - [`efi_vars`]: EFI signature lists and signed variable updates (`.auth`);
//! - [`authenticode`]: Authenticode signatures of PE images, reproducible (no signing time);
//! - [`identity`]: a key with its certificate, which both sign with;
//! - [`der`]: the DER encodings both need.

pub mod authenticode;
pub mod der;
pub mod efi_vars;
pub mod identity;
pub mod keys;

pub use authenticode::{image_digest, sign_pe};
pub use efi_vars::Variable;
pub use identity::SigningIdentity;
pub use keys::{OwnerKeys, generate, key_file};
