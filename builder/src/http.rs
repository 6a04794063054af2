//! The HTTP client of every online step (the registry client, the mirrors' downloader): one
//! configuration, below both.

use std::time::Duration;

/// rustls with the system's CA store, `HTTPS_PROXY`, status codes handed to the caller (a
/// registry's 401 starts authentication; a 404 may mean "no such thing"), and timeouts for a
/// dead connection rather than a slow one (a layer may take an hour on a slow link; a
/// connection silent for two minutes is dead).
pub fn agent() -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(format!("airlock/{}", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .max_redirects(10)
        .build()
        .new_agent()
}

/// Percent-encodes `s` for a URL component or a purl: RFC 3986's unreserved characters
/// (letters, digits, `-._~`) pass, every other byte becomes `%XX`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
