//! A private key with its certificate, as the signers of PE images ([`super::authenticode`]) and
//! of variable updates ([`super::efi_vars`]) use it.

use super::der;
use anyhow::Result;
use rcgen::KeyPair;
use x509_parser::parse_x509_certificate;

/// A private key with its certificate: what signs a PE image or a variable update.
pub struct SigningIdentity {
    key: KeyPair,
    certificate_der: Vec<u8>,
    issuer_and_serial: Vec<u8>,
}

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningIdentity").field("certificate_der", &self.certificate_der.len()).finish_non_exhaustive()
    }
}

impl SigningIdentity {
    /// RSA PKCS#1 v1.5 with SHA-256 over `message` (deterministic).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        rcgen::SigningKey::sign(&self.key, message).map_err(|e| anyhow::anyhow!("RSA signing failed: {e}"))
    }

    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// PKCS#7 IssuerAndSerialNumber of the certificate.
    pub fn issuer_and_serial(&self) -> Vec<u8> {
        self.issuer_and_serial.clone()
    }

    /// Pairs a key with its certificate (DER); the caller has checked that they belong together.
    pub fn new(key: KeyPair, certificate_der: Vec<u8>) -> Result<Self> {
        let (_, cert) = parse_x509_certificate(&certificate_der).map_err(|e| anyhow::anyhow!("{e}"))?;
        let issuer_and_serial =
            der::sequence(&[cert.tbs_certificate.issuer.as_raw(), &der::tlv(0x02, cert.tbs_certificate.raw_serial())]);
        Ok(Self { key, certificate_der, issuer_and_serial })
    }
}
