//! The owner's Secure Boot keys: making them (`airlock keygen --secure-boot`) and loading what a
//! build needs, checked before anything is built.
//!
//! Files, for each of `PK`, `KEK` and `db` under one PREFIX (e.g. `keys/acme`):
//! - `PREFIX.NAME.key`: RSA-2048 private key, unencrypted PKCS#8 PEM (mode 0600), the form
//!   sbsign, sbvarsign and the firmware tools take;
//! - `PREFIX.NAME.crt`: self-signed X.509 certificate, PEM; `PREFIX.NAME.cer`: the same in DER,
//!   for firmware setup menus that enroll keys from a file;
//! - `PREFIX.NAME.esl`: EFI signature list with the certificate (one owner GUID for the set);
//! - `PREFIX.NAME.auth`: the signed variable update systemd-boot enrolls: PK.auth and KEK.auth
//!   signed by PK (PK self-signed: OVMF requires it), db.auth signed by KEK.
//!
//! A build needs only `db.key`, the three certificates and the three `.auth` files: the PK and
//! KEK private keys never have to be on the build host.
//!
//! RSA key generation is the one step done by `openssl genpkey`: ring (airlock's RSA signer,
//! through rcgen) cannot generate RSA keys, and a pure-Rust RSA crate would add a dozen crates
//! for a step that runs once per owner and has no reproducibility stake. Certificates
//! (rcgen), signature lists, `.auth` files and Authenticode signatures are native.

use super::der;
use super::efi_vars::{self, Variable};
use super::identity::SigningIdentity;
use crate::command::Cmd;
use crate::signing::key::{with_suffix, write_new_file};
use anyhow::{Context, Result, bail};
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use x509_parser::parse_x509_certificate;
use x509_parser::pem::Pem;

/// How long generated certificates are valid. UEFI firmware does not check certificate times;
/// airlock refuses to build with an expired one, so this is when the owner must renew.
pub const VALIDITY_DAYS: i64 = 3650;
const RSA_BITS: &str = "2048";

/// The path of one of the set's files: `PREFIX.NAME.EXT`.
pub fn key_file(prefix: &Path, variable: Variable, ext: &str) -> PathBuf {
    with_suffix(prefix, &format!(".{}.{ext}", variable.name()))
}

/// Makes PK, KEK and db under `prefix` (refusing to overwrite any file) and returns the paths
/// written. `now` (Unix seconds) starts the certificates' validity and timestamps the `.auth`
/// files (firmware in Setup Mode accepts any time for a first enrollment).
pub fn generate(prefix: &Path, now: i64) -> Result<Vec<PathBuf>> {
    let exts = ["key", "crt", "cer", "esl", "auth"];
    for variable in Variable::ALL {
        for ext in exts {
            let path = key_file(prefix, variable, ext);
            if std::fs::symlink_metadata(&path).is_ok() {
                bail!("refusing to overwrite existing Secure Boot key file {}", path.display());
            }
        }
    }
    let owner = {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("reading random bytes: {e}"))?;
        uuid::Builder::from_random_bytes(raw).into_uuid()
    };
    let label = prefix.file_name().map_or("airlock".into(), |n| n.to_string_lossy().into_owned());
    let mut made = Vec::new();
    for variable in Variable::ALL {
        let pem = Cmd::new("openssl")
            .args(["genpkey", "-quiet", "-algorithm", "RSA", "-pkeyopt"])
            .arg(format!("rsa_keygen_bits:{RSA_BITS}"))
            .output_text()
            .context("generating an RSA key with openssl")?;
        let key = KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)
            .map_err(|e| anyhow::anyhow!("openssl's RSA key is not usable: {e}"))?;
        let cert = certificate(&key, &format!("{label} {}", variable.name()), now)?;
        made.push((variable, pem, cert.pem(), SigningIdentity::new(key, cert.der().to_vec())?));
    }
    let identity = |v: Variable| &made.iter().find(|m| m.0 == v).expect("all three were made").3;
    let mut written = Vec::new();
    for (variable, key_pem, cert_pem, id) in &made {
        let esl = efi_vars::signature_list(id.certificate_der(), owner);
        let signer = identity(if *variable == Variable::Db { Variable::Kek } else { Variable::Pk });
        let auth = efi_vars::authenticated_update(*variable, &esl, signer, now)?;
        let files: [(&str, &[u8], u32); 5] = [
            ("key", key_pem.as_bytes(), 0o600),
            ("crt", cert_pem.as_bytes(), 0o644),
            ("cer", id.certificate_der(), 0o644),
            ("esl", &esl, 0o644),
            ("auth", &auth, 0o644),
        ];
        for (ext, bytes, mode) in files {
            let path = key_file(prefix, *variable, ext);
            write_new_file(&path, bytes, mode)?;
            written.push(path);
        }
    }
    Ok(written)
}

fn certificate(key: &KeyPair, common_name: &str, now: i64) -> Result<rcgen::Certificate> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    // As `openssl req -x509` makes them (the systemd man page's recipe): a CA certificate, so
    // OpenSSL-based verifiers (sbverify) accept it as a trust anchor for what it signs.
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
    params.not_before = time::OffsetDateTime::from_unix_timestamp(now).context("the current time")?;
    params.not_after = params.not_before + time::Duration::days(VALIDITY_DAYS);
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| anyhow::anyhow!("reading random bytes: {e}"))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.self_signed(key).with_context(|| format!("making the certificate of {common_name}"))
}

/// What a build needs from the owner's keys: the db identity that signs systemd-boot and the
/// UKI, and the three `.auth` files systemd-boot enrolls.
#[derive(Debug)]
pub struct OwnerKeys {
    pub db: SigningIdentity,
    /// `(variable, contents of PREFIX.NAME.auth)` for PK, KEK and db.
    pub auth: Vec<(Variable, Vec<u8>)>,
}

impl OwnerKeys {
    /// Loads and checks the keys under `prefix` at time `now` (Unix seconds, the real clock:
    /// expiry is about the world, not the build's epoch). Every problem is an error naming the
    /// file: a missing file, a key without its certificate, a key that does not belong to its
    /// certificate, an encrypted or non-RSA key, an expired or not yet valid certificate, an
    /// `.auth` file that would enroll another certificate or is not signed by the right key.
    pub fn load(prefix: &Path, now: i64) -> Result<Self> {
        let read = |v: Variable, ext: &str| -> Result<(PathBuf, Vec<u8>)> {
            let path = key_file(prefix, v, ext);
            let bytes = std::fs::read(&path)
                .with_context(|| format!("reading Secure Boot {} {}", what(ext), path.display()))?;
            Ok((path, bytes))
        };
        let (key_path, key_bytes) = read(Variable::Db, "key")?;
        let mut certs = Vec::new();
        for v in Variable::ALL {
            let path = key_file(prefix, v, "crt");
            if !path.exists() && v == Variable::Db {
                bail!("the db key {} has no certificate: {} is missing", key_path.display(), path.display());
            }
            let (path, bytes) = read(v, "crt")?;
            let der =
                certificate_der(&bytes).with_context(|| format!("{} is not an X.509 certificate", path.display()))?;
            check_validity(&der, &path, now)?;
            certs.push((v, path, der));
        }
        let cert = |v: Variable| certs.iter().find(|c| c.0 == v).expect("all three were read");
        let (_, db_cert_path, db_cert) = cert(Variable::Db);
        let key = private_key(&key_bytes).with_context(|| format!("reading the private key {}", key_path.display()))?;
        let (_, parsed) = parse_x509_certificate(db_cert).map_err(|e| anyhow::anyhow!("{e}"))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            bail!(
                "the private key {} does not belong to the certificate {}",
                key_path.display(),
                db_cert_path.display()
            );
        }
        let db = SigningIdentity::new(key, db_cert.clone())?;

        let mut auth = Vec::new();
        for v in Variable::ALL {
            let (path, bytes) = read(v, "auth")?;
            let (pkcs7, esl) = efi_vars::split_authenticated_update(&bytes)
                .with_context(|| format!("{} is not a time-based authenticated variable update", path.display()))?;
            let (_, cert_path, der) = cert(v);
            match efi_vars::certificates_in(esl) {
                Some(list) if list == [der.as_slice()] => {}
                _ => bail!(
                    "{} would enroll something other than the certificate {}",
                    path.display(),
                    cert_path.display()
                ),
            }
            let signer = if v == Variable::Db { Variable::Kek } else { Variable::Pk };
            let (_, signer_path, signer_der) = cert(signer);
            // The signature carries its signer's certificate verbatim: a mismatch means the
            // firmware would refuse the update (or, for KEK and db in Setup Mode, accept it
            // and only fail later).
            if !contains(pkcs7, signer_der) {
                bail!("{} is not signed by the {} key of {}", path.display(), signer.name(), signer_path.display());
            }
            auth.push((v, bytes));
        }
        Ok(Self { db, auth })
    }
}

fn what(ext: &str) -> &'static str {
    match ext {
        "key" => "private key",
        "crt" => "certificate",
        _ => "enrollment file",
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn pem_blocks(bytes: &[u8]) -> Vec<Pem> {
    Pem::iter_from_buffer(bytes).filter_map(|p| p.ok()).collect()
}

/// A certificate file's DER: PEM (`CERTIFICATE`) or DER.
fn certificate_der(bytes: &[u8]) -> Result<Vec<u8>> {
    let der = match pem_blocks(bytes).into_iter().find(|p| p.label == "CERTIFICATE") {
        Some(pem) => pem.contents,
        None if bytes.first() == Some(&0x30) => bytes.to_vec(),
        None => bail!("no PEM CERTIFICATE block"),
    };
    parse_x509_certificate(&der).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(der)
}

fn check_validity(der: &[u8], path: &Path, now: i64) -> Result<()> {
    let (_, cert) = parse_x509_certificate(der).map_err(|e| anyhow::anyhow!("{e}"))?;
    let validity = cert.validity();
    if now > validity.not_after.timestamp() {
        bail!(
            "the certificate {} expired on {}; make new keys (airlock keygen --secure-boot) and enroll them",
            path.display(),
            validity.not_after
        );
    }
    if now < validity.not_before.timestamp() {
        bail!("the certificate {} is not valid before {} (check the clock)", path.display(), validity.not_before);
    }
    Ok(())
}

/// An unencrypted RSA private key: PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) PEM.
fn private_key(bytes: &[u8]) -> Result<KeyPair> {
    let blocks = pem_blocks(bytes);
    let pkcs8 = if let Some(p) = blocks.iter().find(|p| p.label == "PRIVATE KEY") {
        p.contents.clone()
    } else if let Some(p) = blocks.iter().find(|p| p.label == "RSA PRIVATE KEY") {
        // Wrap PKCS#1 in a PKCS#8 PrivateKeyInfo, the form ring reads.
        der::sequence(&[
            &der::small_integer(0),
            &der::algorithm(der::oids::RSA_ENCRYPTION),
            &der::octet_string(&p.contents),
        ])
    } else if blocks.iter().any(|p| p.label == "ENCRYPTED PRIVATE KEY") {
        bail!(
            "the key is encrypted; airlock signs with an unencrypted key (keep it on an offline or protected machine)"
        );
    } else if let Some(p) = blocks.first() {
        bail!("a PEM `{}` block is not an RSA private key", p.label);
    } else {
        bail!("no PEM private key block");
    };
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_slice().into(), &rcgen::PKCS_RSA_SHA256)
        .map_err(|e| anyhow::anyhow!("not a usable RSA key of 2048 to 8192 bits ({e})"))
}
