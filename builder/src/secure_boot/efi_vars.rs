//! UEFI Secure Boot variable payloads: EFI signature lists (`.esl`) and time-based
//! authenticated variable updates (`.auth`), in the layouts efitools' `cert-to-efi-sig-list`
//! and `sign-efi-sig-list -t` write (the image test compares bytes with both).
//!
//! - `EFI_SIGNATURE_LIST`: SignatureType (EFI_CERT_X509_GUID), SignatureListSize,
//!   SignatureHeaderSize 0, SignatureSize (16 + certificate), then one entry: the owner GUID
//!   and the DER certificate.
//! - `.auth` (`EFI_VARIABLE_AUTHENTICATION_2` + data): EFI_TIME, then `WIN_CERTIFICATE_UEFI_GUID`
//!   (length, revision 0x0200, type 0x0EF1, EFI_CERT_TYPE_PKCS7_GUID, a PKCS#7 SignedData
//!   without attributes over VariableName ‖ VendorGuid ‖ Attributes ‖ EFI_TIME ‖ data), then
//!   the signature list. The file starts with EFI_TIME, not with the attributes (no
//!   `--include-attrs`): that is what systemd-boot's `secure-boot-enroll` reads.
//!
//! GUIDs are written in UEFI's mixed-endian form (first three fields little-endian).

use super::der::{self, oids};
use super::identity::SigningIdentity;
use anyhow::Result;
use uuid::Uuid;

/// EFI_CERT_X509_GUID: the signature list holds X.509 certificates.
const CERT_X509: Uuid = uuid::uuid!("a5c059a1-94e4-4aa7-87b5-ab155c2bf072");
/// EFI_CERT_TYPE_PKCS7_GUID: the WIN_CERTIFICATE holds a PKCS#7 SignedData.
const CERT_TYPE_PKCS7: Uuid = uuid::uuid!("4aafd29d-68df-49ee-8aa9-347d375665a7");
/// EFI_GLOBAL_VARIABLE: vendor of PK and KEK.
const GLOBAL_VARIABLE: Uuid = uuid::uuid!("8be4df61-93ca-11d2-aa0d-00e098032b8c");
/// EFI_IMAGE_SECURITY_DATABASE_GUID: vendor of db and dbx.
const IMAGE_SECURITY_DATABASE: Uuid = uuid::uuid!("d719b2cb-3d3a-4596-a3bc-dad00e67656f");
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS | TIME_BASED_AUTHENTICATED_WRITE_ACCESS.
const ATTRIBUTES: u32 = 0x01 | 0x02 | 0x04 | 0x20;
const WIN_CERT_REVISION_2: u16 = 0x0200;
const WIN_CERT_TYPE_EFI_GUID: u16 = 0x0ef1;

/// The three Secure Boot variables an owner enrolls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variable {
    Pk,
    Kek,
    Db,
}

impl Variable {
    pub const ALL: [Variable; 3] = [Variable::Pk, Variable::Kek, Variable::Db];

    /// The variable's UEFI name, also the file stem systemd-boot looks for (`PK.auth`).
    pub fn name(self) -> &'static str {
        match self {
            Variable::Pk => "PK",
            Variable::Kek => "KEK",
            Variable::Db => "db",
        }
    }

    fn vendor(self) -> Uuid {
        match self {
            Variable::Pk | Variable::Kek => GLOBAL_VARIABLE,
            Variable::Db => IMAGE_SECURITY_DATABASE,
        }
    }
}

/// A GUID in UEFI's byte order.
pub fn guid_bytes(guid: Uuid) -> [u8; 16] {
    guid.to_bytes_le()
}

/// An EFI_SIGNATURE_LIST holding one X.509 certificate (DER) owned by `owner`.
pub fn signature_list(cert_der: &[u8], owner: Uuid) -> Vec<u8> {
    let signature_size = 16 + cert_der.len();
    let list_size = 28 + signature_size;
    let mut out = Vec::with_capacity(list_size);
    out.extend_from_slice(&guid_bytes(CERT_X509));
    out.extend_from_slice(&(list_size as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(signature_size as u32).to_le_bytes());
    out.extend_from_slice(&guid_bytes(owner));
    out.extend_from_slice(cert_der);
    out
}

/// The certificates (DER) of a signature list made of X.509 entries; `None` if it is not one.
pub fn certificates_in(list: &[u8]) -> Option<Vec<&[u8]>> {
    let mut certs = Vec::new();
    let mut rest = list;
    while !rest.is_empty() {
        let header = rest.get(..28)?;
        let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes")) as usize;
        if header[..16] != guid_bytes(CERT_X509) {
            return None;
        }
        let (list_size, header_size, sig_size) = (u32_at(16), u32_at(20), u32_at(24));
        let body = rest.get(28 + header_size..list_size)?;
        if sig_size <= 16 || body.len() % sig_size != 0 {
            return None;
        }
        certs.extend(body.chunks(sig_size).map(|entry| &entry[16..]));
        rest = &rest[list_size..];
    }
    Some(certs)
}

/// EFI_TIME for a Unix time (UTC; nanoseconds, time zone and daylight zero, as efitools writes).
pub fn efi_time(unix: i64) -> [u8; 16] {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = crate::clock::civil_from_days(days);
    let mut t = [0u8; 16];
    t[0..2].copy_from_slice(&(y as u16).to_le_bytes());
    t[2] = m as u8;
    t[3] = d as u8;
    t[4] = (secs / 3600) as u8;
    t[5] = (secs / 60 % 60) as u8;
    t[6] = (secs % 60) as u8;
    t
}

/// A signed update of `variable` to the signature list `esl`, by `signer` (PK for PK and KEK,
/// KEK for db), timestamped `unix`.
pub fn authenticated_update(variable: Variable, esl: &[u8], signer: &SigningIdentity, unix: i64) -> Result<Vec<u8>> {
    let time = efi_time(unix);
    let mut signed = Vec::new();
    for unit in variable.name().encode_utf16() {
        signed.extend_from_slice(&unit.to_le_bytes());
    }
    signed.extend_from_slice(&guid_bytes(variable.vendor()));
    signed.extend_from_slice(&ATTRIBUTES.to_le_bytes());
    signed.extend_from_slice(&time);
    signed.extend_from_slice(esl);
    let signature = signer.sign(&signed)?;

    // SignedData with detached id-data content and no signed attributes, signer identified by
    // issuer and serial number: what sign-efi-sig-list writes (bare SignedData, no ContentInfo).
    let signer_info = der::sequence(&[
        &der::small_integer(1),
        &signer.issuer_and_serial(),
        &der::algorithm(oids::SHA256),
        &der::algorithm(oids::RSA_ENCRYPTION),
        &der::octet_string(&signature),
    ]);
    let signed_data = der::sequence(&[
        &der::small_integer(1),
        &der::set_of(vec![der::algorithm(oids::SHA256)]),
        &der::sequence(&[&der::oid(oids::PKCS7_DATA)]),
        &der::explicit(0, signer.certificate_der()),
        &der::set_of(vec![signer_info]),
    ]);

    let mut out = Vec::with_capacity(16 + 24 + signed_data.len() + esl.len());
    out.extend_from_slice(&time);
    out.extend_from_slice(&((24 + signed_data.len()) as u32).to_le_bytes());
    out.extend_from_slice(&WIN_CERT_REVISION_2.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_TYPE_EFI_GUID.to_le_bytes());
    out.extend_from_slice(&guid_bytes(CERT_TYPE_PKCS7));
    out.extend_from_slice(&signed_data);
    out.extend_from_slice(esl);
    Ok(out)
}

/// An `.auth` file split into its PKCS#7 signature and the signature list it updates the
/// variable to; `None` if it is not laid out as [`authenticated_update`] writes.
pub fn split_authenticated_update(auth: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(auth.get(16..20)?.try_into().ok()?) as usize;
    let header = auth.get(20..40)?;
    if header[..2] != WIN_CERT_REVISION_2.to_le_bytes()
        || header[2..4] != WIN_CERT_TYPE_EFI_GUID.to_le_bytes()
        || header[4..20] != guid_bytes(CERT_TYPE_PKCS7)
        || len < 24
    {
        return None;
    }
    let pkcs7 = auth.get(40..16 + len)?;
    Some((pkcs7, &auth[16 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_mixed_endian() {
        assert_eq!(hex::encode(guid_bytes(CERT_TYPE_PKCS7)), "9dd2af4adf68ee498aa9347d375665a7");
    }

    #[test]
    fn efi_time_fields() {
        // 2026-01-02 03:04:05 UTC, as efitools writes `-t '2026-01-02 03:04:05'`.
        assert_eq!(hex::encode(efi_time(1_767_323_045)), "ea070102030405000000000000000000");
    }

    #[test]
    fn signature_list_round_trip() {
        let owner = uuid::uuid!("11111111-2222-3333-4444-555555555555");
        let list = signature_list(b"\x30\x03cert", owner);
        assert_eq!(list.len(), 28 + 16 + 6);
        assert_eq!(certificates_in(&list), Some(vec![&b"\x30\x03cert"[..]]));
        assert_eq!(certificates_in(&list[..30]), None);
        let mut other = list.clone();
        other[0] ^= 1;
        assert_eq!(certificates_in(&other), None, "not an X.509 list");
    }
}
