//! The few DER encodings the PKCS#7 structures of Secure Boot need, written by hand: each
//! structure here is fixed, so a general ASN.1 library would add dependencies, not safety.
//! Definite lengths, minimal encodings, SET OF sorted (DER's rule), as X.690 requires.

/// Tag-length-value with a definite, minimal length.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

pub fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// A SET OF, elements sorted by their encodings as DER requires.
pub fn set_of(mut parts: Vec<Vec<u8>>) -> Vec<u8> {
    parts.sort();
    tlv(0x31, &parts.concat())
}

/// `[n] EXPLICIT` (constructed context-specific tag).
pub fn explicit(n: u8, content: &[u8]) -> Vec<u8> {
    tlv(0xa0 | n, content)
}

/// `[n] IMPLICIT` over a primitive type.
pub fn implicit_primitive(n: u8, content: &[u8]) -> Vec<u8> {
    tlv(0x80 | n, content)
}

pub fn null() -> Vec<u8> {
    vec![0x05, 0x00]
}

pub fn octet_string(content: &[u8]) -> Vec<u8> {
    tlv(0x04, content)
}

/// A small non-negative INTEGER.
pub fn small_integer(value: u8) -> Vec<u8> {
    if value < 0x80 { vec![0x02, 0x01, value] } else { vec![0x02, 0x02, 0x00, value] }
}

/// An OBJECT IDENTIFIER from its arcs.
pub fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut base128 = |mut v: u64| {
        let mut bytes = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            bytes.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        bytes.reverse();
        body.extend_from_slice(&bytes);
    };
    base128(arcs[0] * 40 + arcs[1]);
    for &arc in &arcs[2..] {
        base128(arc);
    }
    tlv(0x06, &body)
}

/// AlgorithmIdentifier with NULL parameters (how sbsign and efitools write both SHA-256 and
/// rsaEncryption).
pub fn algorithm(arcs: &[u64]) -> Vec<u8> {
    sequence(&[&oid(arcs), &null()])
}

/// The content octets of a DER element (after tag and length). `der` must be one well-formed
/// element, as produced by this module.
pub fn content_of(der: &[u8]) -> &[u8] {
    let first = der[1];
    let header = if first < 0x80 { 2 } else { 2 + (first & 0x7f) as usize };
    &der[header..]
}

pub mod oids {
    pub const SHA256: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 1];
    pub const RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113_549, 1, 1, 1];
    pub const PKCS7_DATA: &[u64] = &[1, 2, 840, 113_549, 1, 7, 1];
    pub const PKCS7_SIGNED_DATA: &[u64] = &[1, 2, 840, 113_549, 1, 7, 2];
    pub const CONTENT_TYPE: &[u64] = &[1, 2, 840, 113_549, 1, 9, 3];
    pub const MESSAGE_DIGEST: &[u64] = &[1, 2, 840, 113_549, 1, 9, 4];
    /// Microsoft Authenticode: SPC_INDIRECT_DATA_OBJID.
    pub const SPC_INDIRECT_DATA: &[u64] = &[1, 3, 6, 1, 4, 1, 311, 2, 1, 4];
    /// Microsoft Authenticode: SPC_PE_IMAGE_DATAOBJ.
    pub const SPC_PE_IMAGE_DATA: &[u64] = &[1, 3, 6, 1, 4, 1, 311, 2, 1, 15];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_known_der() {
        assert_eq!(hex::encode(oid(oids::SHA256)), "0609608648016503040201");
        assert_eq!(hex::encode(oid(oids::SPC_INDIRECT_DATA)), "060a2b060104018237020104");
        assert_eq!(tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(tlv(0x04, &[0; 1000])[..4], [0x04, 0x82, 0x03, 0xe8]);
        assert_eq!(small_integer(1), [2, 1, 1]);
        assert_eq!(set_of(vec![vec![0x30, 1, 9], vec![0x30, 1, 2]]), [0x31, 6, 0x30, 1, 2, 0x30, 1, 9]);
        let long = tlv(0x30, &[7; 300]);
        assert_eq!(content_of(&long), &[7; 300][..]);
    }
}
