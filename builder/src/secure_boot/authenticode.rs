//! Authenticode signatures of PE images (systemd-boot, the UKI), as UEFI firmware verifies
//! them against db, written natively so that a signed image is reproducible.
//!
//! sbsign (sbsigntool 0.9.4, bookworm) cannot be used for that: OpenSSL adds a `signingTime`
//! attribute with the current time to every signature it makes, so two signings of the same
//! file with the same key differ (measured: bytes 153-154, the PE checksum, and the signature
//! block). Firmware ignores signing times. Here the signature carries only the attributes
//! Authenticode needs, and RSA PKCS#1 v1.5 is deterministic, so same image + same key = same
//! bytes. `sbverify --cert db.crt` is the test oracle.
//!
//! The layout follows sbsign's:
//! - the image digest: SHA-256 over the headers without the CheckSum field and the
//!   certificate-table entry, then every section's raw data in file order, then any data after
//!   the last section (the image is first padded with zeros to 8 bytes, and the padding is
//!   hashed, as sbsign does);
//! - `SpcIndirectDataContent` { SpcPeImageData (flags empty, file `<<<Obsolete>>>`), DigestInfo
//!   (SHA-256, the digest) } as the signed content of a PKCS#7 SignedData, in a ContentInfo;
//! - one SignerInfo (issuer and serial of the db certificate, SHA-256, rsaEncryption) with the
//!   signed attributes contentType (SPC_INDIRECT_DATA) and messageDigest (SHA-256 of the
//!   content's DER value without its tag and length), signed as a DER SET;
//! - a `WIN_CERTIFICATE` (revision 0x0200, type PKCS_SIGNED_DATA) appended at the end, padded
//!   to 8 bytes, pointed at by the certificate-table directory entry; then the PE checksum.

use super::der::{self, oids};
use super::identity::SigningIdentity;
use crate::pe::PeImage;
use anyhow::{Result, bail};
use sha2::{Digest, Sha256};

const WIN_CERT_REVISION_2: u16 = 0x0200;
const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;

/// The Authenticode SHA-256 digest of an unsigned image.
pub fn image_digest(pe: &PeImage) -> Result<[u8; 32]> {
    let bytes = pe.bytes();
    let checksum = pe.checksum_offset();
    let cert_entry = pe.certificate_entry_offset();
    let headers = pe.size_of_headers() as usize;
    let mut h = Sha256::new();
    h.update(&bytes[..checksum]);
    h.update(&bytes[checksum + 4..cert_entry]);
    h.update(&bytes[cert_entry + 8..headers]);
    let mut sections: Vec<_> = pe.sections().iter().filter(|s| s.size_of_raw_data > 0).collect();
    sections.sort_by_key(|s| s.pointer_to_raw_data);
    let mut end = headers;
    for s in sections {
        let start = s.pointer_to_raw_data as usize;
        let stop = start + s.size_of_raw_data as usize;
        if start < end {
            bail!("section {} overlaps the headers or the previous section", s.name);
        }
        h.update(&bytes[start..stop]);
        end = stop;
    }
    let (cert_at, cert_len) = pe.certificate_table();
    let tail_end = if cert_len == 0 { bytes.len() } else { cert_at as usize };
    if tail_end > end {
        h.update(&bytes[end..tail_end]);
    }
    Ok(h.finalize().into())
}

/// `SpcIndirectDataContent` for a PE image digest.
fn indirect_data(digest: &[u8; 32]) -> Vec<u8> {
    let obsolete: Vec<u8> = "<<<Obsolete>>>".encode_utf16().flat_map(u16::to_be_bytes).collect();
    // SpcLink.file [2] → SpcString.unicode [0] IMPLICIT BMPString
    let file = der::explicit(0, &der::explicit(2, &der::implicit_primitive(0, &obsolete)));
    let pe_image_data = der::sequence(&[&[0x03, 0x01, 0x00], &file]);
    der::sequence(&[
        &der::sequence(&[&der::oid(oids::SPC_PE_IMAGE_DATA), &pe_image_data]),
        &der::sequence(&[&der::algorithm(oids::SHA256), &der::octet_string(digest)]),
    ])
}

/// The PKCS#7 ContentInfo (SignedData) of an Authenticode signature over `digest`.
fn signature(digest: &[u8; 32], signer: &SigningIdentity) -> Result<Vec<u8>> {
    let content = indirect_data(digest);
    let content_digest: [u8; 32] = Sha256::digest(der::content_of(&content)).into();
    let attributes = vec![
        der::sequence(&[&der::oid(oids::CONTENT_TYPE), &der::set_of(vec![der::oid(oids::SPC_INDIRECT_DATA)])]),
        der::sequence(&[&der::oid(oids::MESSAGE_DIGEST), &der::set_of(vec![der::octet_string(&content_digest)])]),
    ];
    // Signed as a SET OF; carried in the SignerInfo as [0] IMPLICIT with the same contents.
    let signed_attributes = der::set_of(attributes);
    let rsa = signer.sign(&signed_attributes)?;
    let signer_info = der::sequence(&[
        &der::small_integer(1),
        &signer.issuer_and_serial(),
        &der::algorithm(oids::SHA256),
        &der::tlv(0xa0, der::content_of(&signed_attributes)),
        &der::algorithm(oids::RSA_ENCRYPTION),
        &der::octet_string(&rsa),
    ]);
    let signed_data = der::sequence(&[
        &der::small_integer(1),
        &der::set_of(vec![der::algorithm(oids::SHA256)]),
        &der::sequence(&[&der::oid(oids::SPC_INDIRECT_DATA), &der::explicit(0, &content)]),
        &der::explicit(0, signer.certificate_der()),
        &der::set_of(vec![signer_info]),
    ]);
    Ok(der::sequence(&[&der::oid(oids::PKCS7_SIGNED_DATA), &der::explicit(0, &signed_data)]))
}

/// Signs a PE image with the db key: the image with its Authenticode signature attached.
/// `what` names the image in errors. An image that is already signed is refused (appending a
/// second signature is not needed for anything airlock builds).
pub fn sign_pe(image: &[u8], what: &str, signer: &SigningIdentity) -> Result<Vec<u8>> {
    let mut pe = PeImage::parse(image.to_vec(), what)?;
    if pe.certificate_table() != (0, 0) {
        bail!("{what} is already signed");
    }
    pe.pad_to(8);
    let digest = image_digest(&pe)?;
    let pkcs7 = signature(&digest, signer)?;
    let length = 8 + pkcs7.len();
    let table_at = pe.bytes().len();
    let mut cert = Vec::with_capacity(length + 8);
    cert.extend_from_slice(&(length as u32).to_le_bytes());
    cert.extend_from_slice(&WIN_CERT_REVISION_2.to_le_bytes());
    cert.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
    cert.extend_from_slice(&pkcs7);
    cert.resize(length.div_ceil(8) * 8, 0);
    pe.set_certificate_table(u32::try_from(table_at)?, u32::try_from(cert.len())?);
    pe.append_raw(&cert);
    let checksum = pe.compute_checksum();
    pe.set_checksum(checksum);
    Ok(pe.into_bytes())
}
