//! The instance's TLS: a certificate authority made on first boot, a server certificate it
//! signs for the appliance's names (re-issued when the names change or expiry nears), and the
//! checks a site-supplied certificate must pass before it replaces them.
//!
//! Keys and certificates are kept as one PEM bundle per identity (`# header` lines, then the
//! private key, then the certificate), so a single atomic rename makes key and certificate
//! appear together: a power cut can never leave a key with someone else's certificate.

use anyhow::{Context, Result, anyhow, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;

/// Apple's platforms reject TLS server certificates valid for longer than 825 days, even from
/// a private CA; stay under that and re-issue well before the end.
const SERVER_VALIDITY: Duration = Duration::from_secs(800 * 86_400);
const RENEW_BEFORE: Duration = Duration::from_secs(60 * 86_400);

/// A private key with its certificate, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The names and addresses the certificate was made for (empty for a CA).
    pub names: Vec<String>,
    pub not_after: u64,
    pub key_pem: String,
    pub cert_pem: String,
}

impl Bundle {
    pub fn to_text(&self) -> String {
        format!(
            "# airlock TLS bundle\n# names: {}\n# not-after: {}\n{}{}",
            self.names.join(" "),
            self.not_after,
            self.key_pem,
            self.cert_pem
        )
    }

    pub fn parse(text: &str) -> Result<Bundle> {
        let header = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {name}:")))
                .map(str::trim)
                .with_context(|| format!("the bundle has no `# {name}:` line"))
        };
        let names = header("names")?.split_whitespace().map(String::from).collect();
        let not_after = header("not-after")?.parse().context("`# not-after:` is not a number")?;
        let block = |label: &str| -> Result<String> {
            let begin = format!("-----BEGIN {label}-----");
            let end = format!("-----END {label}-----");
            let start = text.find(&begin).with_context(|| format!("the bundle has no {label}"))?;
            let stop = text[start..].find(&end).with_context(|| format!("the bundle's {label} is cut short"))?;
            Ok(format!("{}\n", &text[start..start + stop + end.len()]))
        };
        Ok(Bundle { names, not_after, key_pem: block("PRIVATE KEY")?, cert_pem: block("CERTIFICATE")? })
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn at(secs: u64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(i64::try_from(secs)?).map_err(|e| anyhow!("time {secs}: {e}"))
}

/// Makes the instance's CA: a fresh P-256 key from the OS RNG (ring), self-signed, valid from
/// 2000 to 2049 (an air-gapped appliance's clock may be far off when it is made).
pub fn make_ca(common_name: &str) -> Result<Bundle> {
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "airlock appliance");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    params.serial_number = Some(random_serial()?);
    let cert = params.self_signed(&key).context("signing the CA certificate")?;
    let not_after = u64::try_from(params.not_after.unix_timestamp())?;
    Ok(Bundle { names: Vec::new(), not_after, key_pem: key.serialize_pem(), cert_pem: cert.pem() })
}

fn random_serial() -> Result<rcgen::SerialNumber> {
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| anyhow!("reading the kernel's RNG: {e}"))?;
    serial[0] &= 0x7f; // positive
    Ok(rcgen::SerialNumber::from_slice(&serial))
}

/// Issues a server certificate for `names` (DNS names or IP addresses) signed by `ca`.
pub fn issue_server(ca: &Bundle, names: &[String]) -> Result<Bundle> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).context("reading the CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).context("reading the CA certificate")?;
    let key = KeyPair::generate().context("generating the server key")?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.as_str().try_into().map_err(|e| anyhow!("name `{n}`: {e}"))?)),
        })
        .collect::<Result<_>>()?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or("airlock"));
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = unix_now();
    let not_after = now + SERVER_VALIDITY.as_secs();
    params.not_before = at(now.saturating_sub(86_400))?;
    params.not_after = at(not_after)?;
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).context("signing the server certificate")?;
    Ok(Bundle { names: names.to_vec(), not_after, key_pem: key.serialize_pem(), cert_pem: cert.pem() })
}

/// Whether a stored server bundle still fits: same names, and not near its end.
pub fn server_is_current(bundle: &Bundle, names: &[String]) -> bool {
    bundle.names == names && bundle.not_after > unix_now() + RENEW_BEFORE.as_secs()
}

/// `AB:CD:...`: the SHA-256 of the first certificate's DER, as `openssl x509 -fingerprint
/// -sha256` prints it.
pub fn fingerprint(cert_pem: &str) -> Result<String> {
    let der = pem_blocks(cert_pem, "CERTIFICATE")?.into_iter().next().context("no certificate in the PEM text")?;
    Ok(Sha256::digest(&der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
}

fn pem_blocks(text: &str, label: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(text.as_bytes()) {
        let p = p.map_err(|e| anyhow!("not valid PEM: {e}"))?;
        if p.label == label {
            out.push(p.contents);
        }
    }
    Ok(out)
}

/// Checks a site-supplied certificate chain, key and CA: they parse, the key belongs to the
/// certificate, the chain ends in the CA, and the certificate covers every name in `names`.
/// Errors say what is wrong, for the caller to prefix with the key.
pub fn check_site(chain_pem: &str, key_pem: &str, ca_pem: &str, names: &[String]) -> Result<()> {
    let chain = pem_blocks(chain_pem, "CERTIFICATE").context("tls.certificate")?;
    if chain.is_empty() {
        bail!("tls.certificate: the file holds no PEM certificate");
    }
    let certs = chain
        .iter()
        .map(|der| x509_parser::parse_x509_certificate(der).map(|(_, c)| c))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("tls.certificate: a certificate does not parse: {e}"))?;
    let key = KeyPair::from_pem(key_pem).map_err(|e| {
        anyhow!("tls.key: not a PKCS#8 PEM private key (\"BEGIN PRIVATE KEY\"; convert with `openssl pkcs8 -topk8 -nocrypt`): {e}")
    })?;
    let leaf = &certs[0];
    if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        bail!("tls.key: this key does not belong to the certificate in tls.certificate");
    }
    let ca_der = pem_blocks(ca_pem, "CERTIFICATE").context("tls.ca")?;
    let ca_der = ca_der.first().context("tls.ca: the file holds no PEM certificate")?;
    let (_, ca) = x509_parser::parse_x509_certificate(ca_der).map_err(|e| anyhow!("tls.ca: does not parse: {e}"))?;
    for pair in certs.windows(2) {
        pair[0].verify_signature(Some(pair[1].public_key())).map_err(|_| {
            anyhow!("tls.certificate: the chain is out of order (a certificate is not signed by the next)")
        })?;
    }
    let last = certs.last().context("empty chain")?;
    if last.as_raw() != ca.as_raw() {
        last.verify_signature(Some(ca.public_key()))
            .map_err(|_| anyhow!("tls.ca: this CA did not sign the certificate in tls.certificate"))?;
    }
    let mut covered: Vec<String> = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => covered.push(d.to_ascii_lowercase()),
                x509_parser::extensions::GeneralName::IPAddress(b) if b.len() == 4 => {
                    covered.push(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string())
                }
                _ => {}
            }
        }
    }
    for name in names {
        let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        if !covered.iter().any(|c| c == name || Some(c) == wildcard.as_ref()) {
            bail!("tls.certificate: does not cover `{name}` (its names: {})", covered.join(", "));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["api.example.internal".into(), "app.example.internal".into(), "10.0.2.15".into()]
    }

    #[test]
    fn ca_signs_a_server_certificate_for_the_names() {
        let ca = make_ca("test CA").unwrap();
        let server = issue_server(&ca, &names()).unwrap();
        // Round trip through the stored form.
        assert_eq!(Bundle::parse(&server.to_text()).unwrap(), server);
        assert_eq!(Bundle::parse(&ca.to_text()).unwrap(), ca);
        // The checks a site certificate must pass hold for what we generate.
        check_site(&server.cert_pem, &server.key_pem, &ca.cert_pem, &names()).unwrap();
        assert!(server_is_current(&server, &names()));
        assert!(!server_is_current(&server, &names()[..1]));
        let fp = fingerprint(&ca.cert_pem).unwrap();
        assert_eq!(fp.len(), 32 * 3 - 1);
        // Two CAs never share a key or fingerprint.
        let other = make_ca("test CA").unwrap();
        assert_ne!(other.key_pem, ca.key_pem);
        assert_ne!(fingerprint(&other.cert_pem).unwrap(), fp);
    }

    #[test]
    fn site_certificates_are_checked() {
        let ca = make_ca("site CA").unwrap();
        let server = issue_server(&ca, &names()).unwrap();
        let other_ca = make_ca("other CA").unwrap();
        let other = issue_server(&other_ca, &names()).unwrap();
        let e = check_site(&server.cert_pem, &other.key_pem, &ca.cert_pem, &names()).unwrap_err().to_string();
        assert!(e.contains("tls.key: this key does not belong"), "{e}");
        let e = check_site(&server.cert_pem, &server.key_pem, &other_ca.cert_pem, &names()).unwrap_err().to_string();
        assert!(e.contains("tls.ca: this CA did not sign"), "{e}");
        let more = [names(), vec!["registry.example.internal".to_string()]].concat();
        let e = check_site(&server.cert_pem, &server.key_pem, &ca.cert_pem, &more).unwrap_err().to_string();
        assert!(e.contains("does not cover `registry.example.internal`"), "{e}");
        let e = check_site("hello", &server.key_pem, &ca.cert_pem, &names()).unwrap_err().to_string();
        assert!(e.contains("tls.certificate"), "{e}");
        let e = check_site(&server.cert_pem, "nope", &ca.cert_pem, &names()).unwrap_err().to_string();
        assert!(e.contains("tls.key"), "{e}");
    }

    #[test]
    fn a_cut_bundle_is_refused() {
        let ca = make_ca("c").unwrap();
        let text = ca.to_text();
        let cut = &text[..text.len() - 40];
        assert!(Bundle::parse(cut).unwrap_err().to_string().contains("cut short"));
    }
}
