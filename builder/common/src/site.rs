//! The site configuration: `airlock.toml` on the ESP, which an operator edits on any laptop
//! after flashing. Parsed with unknown keys rejected, then validated once into a [`Site`];
//! every error names the key and says why.

use anyhow::{Result, anyhow, bail};
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};

/// The domain an appliance serves when the site names none.
pub const DEFAULT_DOMAIN: &str = "airlock.internal";

/// The site configuration's file name, at the top of the ESP.
pub const SITE_FILE: &str = "airlock.toml";
/// The most of it that is read (by first boot and by `airlock inspect`).
pub const MAX_SITE_FILE: u64 = 256 * 1024;

/// The names the appliance serves under its domain.
pub const SERVICE_NAMES: &[&str] = &["api", "app", "registry", "mirror"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteFile {
    hostname: Option<String>,
    domain: Option<String>,
    #[serde(default)]
    admin_ssh_keys: Vec<String>,
    #[serde(default)]
    network: NetworkFile,
    #[serde(default)]
    tls: TlsFile,
    #[serde(default)]
    pulumi: PulumiFile,
    #[serde(default)]
    smtp: SmtpFile,
    #[serde(default)]
    saml: SamlFile,
    #[serde(default)]
    database: DatabaseFile,
    #[serde(default)]
    object_store: ObjectStoreFile,
    #[serde(default)]
    update: UpdateFile,
    #[serde(default)]
    install: InstallFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallFile {
    disk: Option<String>,
    then: Option<String>,
    wipe: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateFile {
    reboot: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    mode: Option<String>,
    address: Option<String>,
    gateway: Option<String>,
    #[serde(default)]
    dns: Vec<String>,
    #[serde(default)]
    ntp: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    certificate: Option<String>,
    key: Option<String>,
    ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PulumiFile {
    license_key: Option<String>,
    license_key_file: Option<String>,
    encryption_key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmtpFile {
    server: Option<String>,
    username: Option<String>,
    password: Option<String>,
    sender: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SamlFile {
    certificate: Option<String>,
    private_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseFile {
    endpoint: Option<String>,
    user: Option<String>,
    password: Option<String>,
    admin_user: Option<String>,
    admin_password: Option<String>,
    ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectStoreFile {
    endpoint: Option<String>,
    region: Option<String>,
    checkpoints_bucket: Option<String>,
    policy_packs_bucket: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    ca: Option<String>,
}

/// An IPv4 address with its prefix length (`192.168.10.20/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub address: Ipv4Addr,
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    Dhcp,
    Static { address: Cidr, gateway: Option<Ipv4Addr>, dns: Vec<Ipv4Addr> },
}

/// Certificate and key the site supplies instead of the generated ones (paths on the ESP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteTls {
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// An external MySQL 8.0 (or compatible) server the stack uses instead of its own, so that
/// several appliances can serve one installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalDatabase {
    pub host: String,
    pub port: u16,
    /// The API's user and password (Pulumi's `PULUMI_DATABASE_USER_NAME`, `_PASSWORD`).
    pub user: String,
    pub password: String,
    /// The user the migrations run as (Pulumi's `MYSQL_ROOT_USERNAME`, `MYSQL_ROOT_PASSWORD`).
    pub admin_user: String,
    pub admin_password: String,
    /// The CA the server's certificate is checked against: TLS to the database.
    pub ca: Option<PathBuf>,
}

/// An S3-compatible object store for checkpoints and policy packs, instead of the data
/// partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStore {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub region: String,
    pub checkpoints_bucket: String,
    pub policy_packs_bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The CA the store's certificate is checked against (https only).
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smtp {
    /// `host:port`, as Pulumi takes it (port 25 when the site named none).
    pub server: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub sender: String,
}

/// The validated site configuration. ESP paths are resolved against the ESP's mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// `None` keeps the image's hostname.
    pub hostname: Option<String>,
    pub domain: String,
    pub admin_ssh_keys: Vec<String>,
    pub network: Network,
    pub ntp: Vec<String>,
    pub tls: Option<SiteTls>,
    pub license_key: Option<LicenseKey>,
    pub smtp: Option<Smtp>,
    pub saml: Option<(PathBuf, PathBuf)>,
    /// PULUMI_LOCAL_KEYS shared by every appliance of one installation (32 bytes in a file on
    /// the ESP), instead of the one each instance makes.
    pub encryption_key: Option<PathBuf>,
    pub database: Option<ExternalDatabase>,
    pub object_store: Option<ObjectStore>,
    /// When an update staged from a USB stick takes over (`[update] reboot`).
    pub update_reboot: UpdateReboot,
    /// `[install]` with a `disk`: booted from a removable drive, install onto that disk
    /// instead of running (`airlock install`).
    pub install: Option<Install>,
}

/// `[install]`: where the appliance booted from a removable drive installs itself, and what it
/// does after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    pub disk: InstallDisk,
    pub then: InstallThen,
    /// Overwrite a disk that holds partitions (otherwise refused, naming them).
    pub wipe: bool,
}

/// `install.disk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallDisk {
    /// The only non-removable disk at least the image's size.
    Auto,
    /// A stable device path (`/dev/disk/by-id/...`, `/dev/disk/by-path/...`).
    Path(PathBuf),
}

/// `install.then`: after a completed install.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InstallThen {
    #[default]
    Reboot,
    Poweroff,
}

impl InstallThen {
    pub fn as_str(self) -> &'static str {
        match self {
            InstallThen::Reboot => "reboot",
            InstallThen::Poweroff => "poweroff",
        }
    }
}

/// The folders under `/dev/disk` whose names stay the same from boot to boot, which
/// `install.disk` may name (a kernel name like `/dev/sda` may be another disk at the next boot).
pub const STABLE_DISK_DIRS: &[&str] = &["/dev/disk/by-id/", "/dev/disk/by-path/"];

fn install(file: InstallFile) -> Result<Option<Install>> {
    let Some(disk) = file.disk else {
        if file.then.is_some() || file.wipe.is_some() {
            bail!(
                "install.disk: required when install.then or install.wipe is set (\"auto\" or a /dev/disk/by-id/ path)"
            );
        }
        return Ok(None);
    };
    let disk = match disk.as_str() {
        "auto" => InstallDisk::Auto,
        path if STABLE_DISK_DIRS.iter().any(|d| path.starts_with(d)) => {
            let name = &path[path.rfind('/').map_or(0, |i| i + 1)..];
            if name.is_empty() || path.contains("/../") || path.contains("/./") || name == ".." || name == "." {
                bail!("install.disk: `{path}` does not name a disk");
            }
            InstallDisk::Path(PathBuf::from(path))
        }
        other => bail!(
            "install.disk: `{other}` is neither \"auto\" nor a stable name under {} (a name like /dev/sda can be another disk at the next boot)",
            STABLE_DISK_DIRS.join(" or ")
        ),
    };
    let then = match file.then.as_deref() {
        None | Some("reboot") => InstallThen::Reboot,
        Some("poweroff") => InstallThen::Poweroff,
        Some(other) => bail!("install.then: `{other}` is not one of \"reboot\" or \"poweroff\""),
    };
    Ok(Some(Install { disk, then, wipe: file.wipe.unwrap_or(false) }))
}

/// `[update] reboot`: what the appliance does once it has staged an update bundle from a USB
/// stick. An update over SSH (`airlock update apply`) never reboots by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpdateReboot {
    /// The console says the update is staged; the operator reboots when it suits the site.
    #[default]
    Never,
    /// Reboot into the new version as soon as it is staged.
    Now,
}

impl UpdateReboot {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateReboot::Never => "never",
            UpdateReboot::Now => "now",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LicenseKey {
    Inline(String),
    File(PathBuf),
}

impl Site {
    /// What an absent or all-comments `airlock.toml` means.
    pub fn defaults() -> Site {
        Site {
            hostname: None,
            domain: DEFAULT_DOMAIN.into(),
            admin_ssh_keys: Vec::new(),
            network: Network::Dhcp,
            ntp: Vec::new(),
            tls: None,
            license_key: None,
            smtp: None,
            saml: None,
            encryption_key: None,
            database: None,
            object_store: None,
            update_reboot: UpdateReboot::Never,
            install: None,
        }
    }

    /// `api.<domain>`, `app.<domain>`, `registry.<domain>`, `mirror.<domain>`.
    pub fn service_names(&self) -> Vec<String> {
        SERVICE_NAMES.iter().map(|n| format!("{n}.{}", self.domain)).collect()
    }
}

/// Parses and validates `text` (the contents of `airlock.toml`); ESP paths in it are resolved
/// under `esp`. Errors read `<key>: <why>`.
pub fn parse(text: &str, esp: &Path) -> Result<Site> {
    let file: SiteFile = toml::from_str(text).map_err(|e| anyhow!("{}", e.to_string().trim_end()))?;
    let mut site = Site::defaults();
    if let Some(h) = file.hostname {
        check_label("hostname", &h)?;
        site.hostname = Some(h);
    }
    if let Some(d) = file.domain {
        check_domain("domain", &d)?;
        site.domain = d;
    }
    for (i, key) in file.admin_ssh_keys.iter().enumerate() {
        check_ssh_key(&format!("admin_ssh_keys[{i}]"), key)?;
    }
    site.admin_ssh_keys = file.admin_ssh_keys;
    site.network = network(&file.network)?;
    for (i, server) in file.network.ntp.iter().enumerate() {
        check_host(&format!("network.ntp[{i}]"), server)?;
    }
    site.ntp = file.network.ntp;
    site.tls = tls(&file.tls, esp)?;
    site.license_key = match (file.pulumi.license_key, file.pulumi.license_key_file) {
        (Some(_), Some(_)) => bail!("pulumi.license_key_file: set either pulumi.license_key or this, not both"),
        (Some(k), None) => Some(LicenseKey::Inline(license_key("pulumi.license_key", &k)?)),
        (None, Some(p)) => Some(LicenseKey::File(esp_path("pulumi.license_key_file", &p, esp)?)),
        (None, None) => None,
    };
    site.smtp = smtp(file.smtp)?;
    site.saml = match (file.saml.certificate, file.saml.private_key) {
        (Some(c), Some(k)) => Some((esp_path("saml.certificate", &c, esp)?, esp_path("saml.private_key", &k, esp)?)),
        (Some(_), None) => bail!("saml.private_key: required when saml.certificate is set"),
        (None, Some(_)) => bail!("saml.certificate: required when saml.private_key is set"),
        (None, None) => None,
    };
    site.encryption_key =
        file.pulumi.encryption_key_file.map(|p| esp_path("pulumi.encryption_key_file", &p, esp)).transpose()?;
    site.database = database(file.database, esp)?;
    if site.database.is_some() && site.encryption_key.is_none() {
        bail!(
            "pulumi.encryption_key_file: required with database.endpoint: every appliance that serves one \
             installation must encrypt with the same key (32 random bytes, e.g. `head -c 32 /dev/urandom`)"
        );
    }
    site.object_store = object_store(file.object_store, esp)?;
    site.update_reboot = match file.update.reboot.as_deref() {
        None | Some("never") => UpdateReboot::Never,
        Some("now") => UpdateReboot::Now,
        Some(other) => bail!("update.reboot: `{other}` is not one of \"never\" or \"now\""),
    };
    site.install = install(file.install)?;
    Ok(site)
}

/// The most bytes of a Pulumi license key (keys are a few hundred bytes of base64 text).
pub const MAX_LICENSE_KEY: usize = 16 * 1024;

/// A license key as the site gives it (inline or the content of `license_key_file`), trimmed:
/// one word of printable ASCII, at most [`MAX_LICENSE_KEY`] bytes. It reaches the API through a
/// podman secret; anything else (a second line, a control character, a binary file) is refused
/// naming `key`.
pub fn license_key(key: &str, text: &str) -> Result<String> {
    let k = text.trim();
    if k.is_empty() {
        bail!("{key}: the license key is empty");
    }
    if k.len() > MAX_LICENSE_KEY {
        bail!("{key}: {} bytes is not a license key (at most {MAX_LICENSE_KEY})", k.len());
    }
    if !k.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("{key}: must be the key on one line, printable characters without spaces");
    }
    Ok(k.to_string())
}

/// `host[:port]` with `default` for a missing port; `key` names the setting in errors.
fn host_and_port(key: &str, value: &str, default: u16) -> Result<(String, u16)> {
    let (host, port) = match value.rsplit_once(':') {
        Some((h, p)) => {
            let port = p.parse::<u16>().ok().filter(|p| *p != 0);
            (h, port.ok_or_else(|| anyhow!("{key}: `{value}` has a port that is not a number from 1 to 65535"))?)
        }
        None => (value, default),
    };
    check_host(key, host)?;
    Ok((host.to_string(), port))
}

/// A value that goes on one line of a file a shell or podman reads: printable, no quotes.
fn check_plain(key: &str, value: &str, what: &str) -> Result<()> {
    if value.is_empty() || value.chars().any(|c| c.is_control() || c.is_whitespace() || "'\"`\\$".contains(c)) {
        bail!("{key}: must be {what}, without spaces, quotes, `$` or backslashes");
    }
    Ok(())
}

/// A secret value on one line (it reaches the container through a podman secret).
fn check_secret(key: &str, value: &Option<String>) -> Result<String> {
    match value {
        Some(v) if !v.is_empty() && !v.chars().any(|c| c.is_control()) => Ok(v.clone()),
        Some(_) => bail!("{key}: must be one line of text"),
        None => bail!("{key}: required with database.endpoint"),
    }
}

fn database(d: DatabaseFile, esp: &Path) -> Result<Option<ExternalDatabase>> {
    let Some(endpoint) = d.endpoint else {
        for (key, set) in [
            ("user", d.user.is_some()),
            ("password", d.password.is_some()),
            ("admin_user", d.admin_user.is_some()),
            ("admin_password", d.admin_password.is_some()),
            ("ca", d.ca.is_some()),
        ] {
            if set {
                bail!("database.{key}: set database.endpoint too, or remove this");
            }
        }
        return Ok(None);
    };
    let (host, port) = host_and_port("database.endpoint", &endpoint, 3306)?;
    let user = d.user.ok_or_else(|| {
        anyhow!(
            "database.user: required with database.endpoint (the API's user; Pulumi's migrations make `pulumi_service`)"
        )
    })?;
    let admin_user = d.admin_user.unwrap_or_else(|| "root".to_string());
    for (key, name) in [("database.user", &user), ("database.admin_user", &admin_user)] {
        if name.len() > 32 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) || name.is_empty() {
            bail!("{key}: `{name}` is not a MySQL user name (1-32 of a-z, A-Z, 0-9, `_`, `.`, `-`)");
        }
    }
    Ok(Some(ExternalDatabase {
        host,
        port,
        password: check_secret("database.password", &d.password)?,
        admin_password: check_secret("database.admin_password", &d.admin_password)?,
        user,
        admin_user,
        ca: d.ca.map(|c| esp_path("database.ca", &c, esp)).transpose()?,
    }))
}

/// An S3 bucket name: 3-63 of a-z, 0-9, `.`, `-`, starting and ending with a letter or digit.
fn check_bucket(key: &str, name: &str) -> Result<()> {
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok = (3..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && ends_ok(name.chars().next())
        && ends_ok(name.chars().last());
    if !ok {
        bail!("{key}: `{name}` is not an S3 bucket name (3-63 of a-z, 0-9, `.`, `-`)");
    }
    Ok(())
}

fn object_store(o: ObjectStoreFile, esp: &Path) -> Result<Option<ObjectStore>> {
    let Some(endpoint) = o.endpoint else {
        for (key, set) in [
            ("region", o.region.is_some()),
            ("checkpoints_bucket", o.checkpoints_bucket.is_some()),
            ("policy_packs_bucket", o.policy_packs_bucket.is_some()),
            ("access_key_id", o.access_key_id.is_some()),
            ("secret_access_key", o.secret_access_key.is_some()),
            ("ca", o.ca.is_some()),
        ] {
            if set {
                bail!("object_store.{key}: set object_store.endpoint too, or remove this");
            }
        }
        return Ok(None);
    };
    let (tls, rest) = match endpoint.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        _ => bail!("object_store.endpoint: `{endpoint}` is not an http:// or https:// URL"),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        bail!("object_store.endpoint: `{endpoint}` names a path; give the store's URL only (buckets are set apart)");
    }
    let (host, port) = host_and_port("object_store.endpoint", rest, if tls { 443 } else { 80 })?;
    let required = |key: &str, v: Option<String>| {
        v.ok_or_else(|| anyhow!("object_store.{key}: required with object_store.endpoint"))
    };
    let region = required("region", o.region)?;
    check_plain("object_store.region", &region, "a region name (e.g. us-east-1; any value the store accepts)")?;
    let checkpoints_bucket = required("checkpoints_bucket", o.checkpoints_bucket)?;
    let policy_packs_bucket = required("policy_packs_bucket", o.policy_packs_bucket)?;
    check_bucket("object_store.checkpoints_bucket", &checkpoints_bucket)?;
    check_bucket("object_store.policy_packs_bucket", &policy_packs_bucket)?;
    if checkpoints_bucket == policy_packs_bucket {
        bail!(
            "object_store.policy_packs_bucket: must differ from object_store.checkpoints_bucket (Pulumi keeps them apart)"
        );
    }
    let access_key_id = required("access_key_id", o.access_key_id)?;
    check_plain("object_store.access_key_id", &access_key_id, "the access key's id")?;
    let secret_access_key = required("secret_access_key", o.secret_access_key)?;
    if secret_access_key.is_empty() || secret_access_key.chars().any(|c| c.is_control()) {
        bail!("object_store.secret_access_key: must be one line of text");
    }
    if o.ca.is_some() && !tls {
        bail!("object_store.ca: only used with an https:// endpoint");
    }
    Ok(Some(ObjectStore {
        host,
        port,
        tls,
        region,
        checkpoints_bucket,
        policy_packs_bucket,
        access_key_id,
        secret_access_key,
        ca: o.ca.map(|c| esp_path("object_store.ca", &c, esp)).transpose()?,
    }))
}

fn network(n: &NetworkFile) -> Result<Network> {
    match n.mode.as_deref().unwrap_or("dhcp") {
        "dhcp" => {
            for (key, set) in [("address", n.address.is_some()), ("gateway", n.gateway.is_some())] {
                if set {
                    bail!("network.{key}: only used with network.mode = \"static\" (the mode is \"dhcp\")");
                }
            }
            if !n.dns.is_empty() {
                bail!("network.dns: only used with network.mode = \"static\" (DHCP supplies DNS servers)");
            }
            Ok(Network::Dhcp)
        }
        "static" => {
            let Some(a) = &n.address else {
                bail!("network.address: required with network.mode = \"static\" (e.g. \"192.168.10.20/24\")");
            };
            let address = parse_cidr(a).map_err(|why| anyhow!("network.address: `{a}` {why}"))?;
            let gateway = match &n.gateway {
                Some(g) => {
                    Some(g.parse::<Ipv4Addr>().map_err(|_| anyhow!("network.gateway: `{g}` is not an IPv4 address"))?)
                }
                None => None,
            };
            if let Some(g) = gateway
                && !same_subnet(address, g)
            {
                bail!("network.gateway: {g} is not in the network of network.address {address}");
            }
            let dns = n
                .dns
                .iter()
                .enumerate()
                .map(|(i, d)| d.parse().map_err(|_| anyhow!("network.dns[{i}]: `{d}` is not an IPv4 address")))
                .collect::<Result<Vec<Ipv4Addr>>>()?;
            Ok(Network::Static { address, gateway, dns })
        }
        other => bail!("network.mode: `{other}` is neither \"dhcp\" nor \"static\""),
    }
}

fn parse_cidr(s: &str) -> std::result::Result<Cidr, &'static str> {
    let (a, p) = s.split_once('/').ok_or("needs a prefix length, e.g. 192.168.10.20/24")?;
    let address: Ipv4Addr = a.parse().map_err(|_| "is not an IPv4 address with a prefix length")?;
    let prefix: u8 = p.parse().map_err(|_| "has a prefix length that is not a number from 1 to 32")?;
    if !(1..=32).contains(&prefix) {
        return Err("has a prefix length that is not a number from 1 to 32");
    }
    if address.is_unspecified() || address.is_loopback() || address.is_multicast() || address.is_broadcast() {
        return Err("is not an address a host can use");
    }
    Ok(Cidr { address, prefix })
}

fn same_subnet(c: Cidr, other: Ipv4Addr) -> bool {
    let mask = if c.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(c.prefix)) };
    u32::from(c.address) & mask == u32::from(other) & mask
}

fn tls(t: &TlsFile, esp: &Path) -> Result<Option<SiteTls>> {
    match (&t.certificate, &t.key, &t.ca) {
        (None, None, None) => Ok(None),
        (Some(c), Some(k), Some(ca)) => Ok(Some(SiteTls {
            certificate: esp_path("tls.certificate", c, esp)?,
            key: esp_path("tls.key", k, esp)?,
            ca: esp_path("tls.ca", ca, esp)?,
        })),
        (c, k, ca) => {
            let missing = [("tls.certificate", c), ("tls.key", k), ("tls.ca", ca)]
                .into_iter()
                .find(|(_, v)| v.is_none())
                .map(|(n, _)| n)
                .unwrap_or("tls");
            bail!(
                "{missing}: required when any of tls.certificate, tls.key, tls.ca is set (a supplied \
                 certificate needs its key, and clients need the CA that signed it)"
            )
        }
    }
}

fn smtp(s: SmtpFile) -> Result<Option<Smtp>> {
    let Some(server) = s.server else {
        for (key, set) in
            [("username", s.username.is_some()), ("password", s.password.is_some()), ("sender", s.sender.is_some())]
        {
            if set {
                bail!("smtp.{key}: set smtp.server too, or remove this");
            }
        }
        return Ok(None);
    };
    // Pulumi takes SMTP_SERVER as <host>:<port> only.
    let (host, port) = host_and_port("smtp.server", &server, 25)?;
    let server = format!("{host}:{port}");
    let Some(sender) = s.sender else { bail!("smtp.sender: required when smtp.server is set") };
    if !sender.contains('@') || sender.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("smtp.sender: `{sender}` is not an email address");
    }
    if s.username.is_some() != s.password.is_some() {
        bail!("smtp.password: smtp.username and smtp.password go together");
    }
    // The user name lands in the API container's environment file, which takes a value to the
    // end of its line: spaces and backslashes (`DOMAIN\user`) are fine, a line break or another
    // control character is not (it would add lines of its own, such as another SMTP_SERVER).
    // The password goes through a podman secret, on one line too.
    if let Some(u) = &s.username
        && (u.is_empty() || u.len() > 256 || u.chars().any(char::is_control))
    {
        bail!("smtp.username: must be the SMTP user name on one line (at most 256 bytes)");
    }
    if let Some(p) = &s.password
        && (p.is_empty() || p.chars().any(char::is_control))
    {
        bail!("smtp.password: must be one line of text");
    }
    Ok(Some(Smtp { server, username: s.username, password: s.password, sender }))
}

/// A DNS label: 1-63 of a-z, 0-9, `-`, not starting or ending with `-`.
fn check_label(key: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !ok {
        bail!("{key}: `{s}` is not a host name (1-63 characters of a-z, 0-9 and -, not starting or ending with -)");
    }
    Ok(())
}

fn check_domain(key: &str, s: &str) -> Result<()> {
    if s.len() > 200 || !s.contains('.') {
        bail!("{key}: `{s}` is not a domain with at least two labels (e.g. pulumi.example.internal)");
    }
    for label in s.split('.') {
        check_label(key, label).map_err(|_| anyhow!("{key}: `{s}` has `{label}`, which is not a DNS label"))?;
    }
    Ok(())
}

/// A host name or IPv4 address.
fn check_host(key: &str, s: &str) -> Result<()> {
    if s.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if s.split('.').all(|l| check_label(key, l).is_ok()) {
        return Ok(());
    }
    bail!("{key}: `{s}` is neither an IPv4 address nor a host name")
}

fn check_ssh_key(key: &str, line: &str) -> Result<()> {
    const TYPES: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    use base64::Engine as _;
    let mut parts = line.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        bail!("{key}: not an OpenSSH public key line (`<type> <base64> [comment]`)");
    };
    if line.contains('\n') {
        bail!("{key}: one key per entry, on one line");
    }
    if !TYPES.contains(&kind) {
        bail!("{key}: key type `{kind}` is not one of {}", TYPES.join(", "));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| anyhow!("{key}: the key data after `{kind}` is not base64"))?;
    // The blob starts with the key type as an SSH string.
    let ok = bytes.len() >= 4 + kind.len()
        && u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize == kind.len()
        && &bytes[4..4 + kind.len()] == kind.as_bytes();
    if !ok {
        bail!("{key}: the key data does not hold a `{kind}` key");
    }
    Ok(())
}

/// A file on the ESP, named relative to its root: no absolute paths, no `..`.
fn esp_path(key: &str, rel: &str, esp: &Path) -> Result<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!("{key}: `{rel}` must be a path relative to the partition holding airlock.toml, without `..`");
    }
    Ok(esp.join(p))
}

/// The `airlock.toml` an image ships: every setting commented out at its default, with what it
/// does. `hostname` is the image's own.
pub fn default_file(hostname: &str) -> String {
    format!(
        r#"# airlock site configuration. Edit this file on any computer after writing the image
# (this partition is FAT); the appliance reads it at every boot. Remove the `#` in front of a
# setting to change it. A mistake stops the appliance before its services start, and the
# console says which setting is wrong and why. Paths are relative to this partition.

# The appliance's own name (a-z, 0-9, -).
# hostname = "{hostname}"
# It serves api.<domain>, app.<domain>, registry.<domain> and mirror.<domain>; put these
# names in your DNS, pointing at the appliance.
# domain = "{DEFAULT_DOMAIN}"

# Public keys allowed to log in as root over SSH.
# admin_ssh_keys = ["ssh-ed25519 AAAA... admin@example"]

[network]
# "dhcp", or "static" with address, gateway and dns.
# mode = "dhcp"
# address = "192.168.10.20/24"
# gateway = "192.168.10.1"
# dns = ["192.168.10.1"]
# Time servers (host names or addresses); none by default.
# ntp = ["ntp.example.internal"]

[tls]
# By default the appliance makes its own certificate authority on first boot; clients trust
# it by downloading http://<appliance>/ca.crt (its SHA-256 is shown on the console). To use
# your own, name a PEM certificate (with its chain) for the names above, its key, and the CA
# certificate clients should trust:
# certificate = "site/server.crt"
# key = "site/server.key"
# ca = "site/ca.crt"

[pulumi]
# license_key = "..."              # or:
# license_key_file = "site/pulumi-license.txt"
# The key Pulumi encrypts secrets with (PULUMI_LOCAL_KEYS): each appliance makes its own. Every
# appliance that serves one installation (see [database]) must use the same 32 random bytes:
# encryption_key_file = "site/pulumi-encryption.key"

[smtp]
# server = "smtp.example.internal:587"
# username = "pulumi"
# password = "..."
# sender = "pulumi@example.internal"

[saml]
# certificate = "site/saml.crt"
# private_key = "site/saml.key"

[database]
# An external MySQL 8.0 server (with a database named `pulumi`) instead of the appliance's
# own, so that several appliances built from one image serve one installation. Requires
# pulumi.encryption_key_file.
# endpoint = "mysql.example.internal:3306"
# user = "pulumi_service"          # the API's user
# password = "..."
# admin_user = "root"              # the migrations' user
# admin_password = "..."
# ca = "site/mysql-ca.crt"         # TLS to the server, trusting this CA

[object_store]
# An S3-compatible store for checkpoints and policy packs instead of the data partition.
# endpoint = "https://s3.example.internal:9000"
# region = "us-east-1"
# checkpoints_bucket = "pulumi-checkpoints"
# policy_packs_bucket = "pulumi-policy-packs"
# access_key_id = "..."
# secret_access_key = "..."
# ca = "site/s3-ca.crt"            # https only

[update]
# A signed update bundle (<name>_<version>.update) in a folder `airlock-update/` on a USB drive
# is checked and written to the spare slot as soon as the drive is plugged in. Then:
# "never": the console says so and the next reboot (yours) starts it; "now": reboot at once.
# If the new version does not become ready, the appliance goes back to this one by itself.
# reboot = "never"

[install]
# Booted from a USB stick, the appliance installs itself onto an internal disk instead of
# running when `disk` is set: "auto" (the only internal disk at least the image's size) or a
# stable name such as "/dev/disk/by-id/nvme-...". A disk that holds partitions is refused
# unless wipe = true. Then it reboots or powers off: remove the stick.
{INSTALL_LINE_COMMENTED}
# then = "reboot"                  # or "poweroff"
# wipe = false
"#
    )
}

/// The line of the shipped file that turns a stick into an installer once uncommented, as
/// shipped and as `airlock flash --install-to auto` writes it.
pub const INSTALL_LINE_COMMENTED: &str = "# disk = \"auto\"";

/// `INSTALL_LINE_COMMENTED` set to install onto `disk` (`auto` or a stable path).
pub fn install_line(disk: &str) -> String {
    format!("disk = {disk:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", parse(text, Path::new("/efi")).unwrap_err())
    }

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfRn6jcbOtp3Hu3ZtVvWw8Nik8jMIFO2s7K7yrBZCPs admin@site";

    #[test]
    fn the_shipped_file_means_the_defaults() {
        let site = parse(&default_file("airlock-demo"), Path::new("/efi")).unwrap();
        assert_eq!(site, Site::defaults());
        assert!(default_file("airlock-demo").contains("# hostname = \"airlock-demo\""));
        assert_eq!(parse("", Path::new("/efi")).unwrap(), Site::defaults());
    }

    #[test]
    fn a_full_site_is_read() {
        let site = parse(
            &format!(
                r#"hostname = "pulumi1"
domain = "pulumi.corp.internal"
admin_ssh_keys = ["{KEY}"]
[network]
mode = "static"
address = "10.0.2.15/24"
gateway = "10.0.2.2"
dns = ["10.0.2.3"]
ntp = ["ntp.corp.internal", "10.0.0.1"]
[tls]
certificate = "site/server.crt"
key = "site/server.key"
ca = "site/ca.crt"
[pulumi]
license_key_file = "site/license.txt"
[smtp]
server = "mail.corp.internal:587"
sender = "pulumi@corp.internal"
[update]
reboot = "now"
"#
            ),
            Path::new("/efi"),
        )
        .unwrap();
        assert_eq!(site.hostname.as_deref(), Some("pulumi1"));
        assert_eq!(site.service_names()[0], "api.pulumi.corp.internal");
        assert_eq!(
            site.network,
            Network::Static {
                address: Cidr { address: Ipv4Addr::new(10, 0, 2, 15), prefix: 24 },
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            }
        );
        assert_eq!(site.tls.unwrap().key, Path::new("/efi/site/server.key"));
        assert_eq!(site.license_key, Some(LicenseKey::File("/efi/site/license.txt".into())));
        assert_eq!(site.smtp.unwrap().sender, "pulumi@corp.internal");
        assert_eq!(site.update_reboot, UpdateReboot::Now);
        assert_eq!(err("[update]\nreboot = \"later\"\n"), "update.reboot: `later` is not one of \"never\" or \"now\"");
        assert!(err("[update]\nwhen = \"now\"\n").contains("unknown field `when`"));
    }

    #[test]
    fn install_is_read_and_bad_values_are_refused_by_name() {
        assert_eq!(parse("[install]\n", Path::new("/efi")).unwrap().install, None, "an empty table installs nothing");
        let site = parse("[install]\ndisk = \"auto\"\n", Path::new("/efi")).unwrap();
        assert_eq!(site.install, Some(Install { disk: InstallDisk::Auto, then: InstallThen::Reboot, wipe: false }));
        let site = parse(
            "[install]\ndisk = \"/dev/disk/by-id/nvme-Samsung_SSD_S4EV\"\nthen = \"poweroff\"\nwipe = true\n",
            Path::new("/efi"),
        )
        .unwrap();
        assert_eq!(
            site.install,
            Some(Install {
                disk: InstallDisk::Path("/dev/disk/by-id/nvme-Samsung_SSD_S4EV".into()),
                then: InstallThen::Poweroff,
                wipe: true
            })
        );
        assert!(err("[install]\ndisk = \"/dev/sda\"\n").starts_with("install.disk: `/dev/sda` is neither \"auto\""));
        assert!(err("[install]\ndisk = \"/dev/disk/by-id/../sda\"\n").contains("does not name a disk"));
        assert!(err("[install]\ndisk = \"/dev/disk/by-id/\"\n").contains("does not name a disk"));
        assert_eq!(
            err("[install]\ndisk = \"auto\"\nthen = \"halt\"\n"),
            "install.then: `halt` is not one of \"reboot\" or \"poweroff\""
        );
        assert!(err("[install]\nwipe = true\n").starts_with("install.disk: required"));
        assert!(err("[install]\ndisk = \"auto\"\nwipe = \"yes\"\n").contains("invalid type"));
        assert!(err("[install]\ndevice = \"auto\"\n").contains("unknown field `device`"));
    }

    #[test]
    fn the_shipped_file_becomes_an_installer_by_one_line() {
        let shipped = default_file("airlock-demo");
        assert_eq!(shipped.matches(INSTALL_LINE_COMMENTED).count(), 1);
        let installer = shipped.replacen(INSTALL_LINE_COMMENTED, &install_line("auto"), 1);
        let site = parse(&installer, Path::new("/efi")).unwrap();
        assert_eq!(site.install.unwrap().disk, InstallDisk::Auto);
    }

    #[test]
    fn site_values_that_reach_env_files_are_one_line() {
        let smtp = |user: &str, password: &str| {
            let text = format!(
                "[smtp]\nserver = \"mail.corp.internal\"\nsender = \"pulumi@corp.internal\"\nusername = {user:?}\npassword = {password:?}\n"
            );
            parse(&text, Path::new("/esp")).map(|_| ()).map_err(|e| format!("{e:#}"))
        };
        assert_eq!(smtp("pulumi", "pw with spaces"), Ok(()));
        assert_eq!(smtp("CORP\\pulumi bot", "pw"), Ok(()));
        let injected = smtp("x\nSMTP_SERVER=evil.example:25", "pw").unwrap_err();
        assert!(injected.starts_with("smtp.username: must be the SMTP user name on one line"), "{injected}");
        assert!(smtp("a\tb", "pw").unwrap_err().starts_with("smtp.username"));
        assert!(smtp("x", "line\nline").unwrap_err().starts_with("smtp.password: must be one line"));
        let license = |k: &str| parse(&format!("[pulumi]\nlicense_key = {k:?}\n"), Path::new("/esp")).map(|_| ());
        assert!(license("  KEY-123  ").is_ok());
        for bad in ["", "a\nb", "a b", "k\u{7}"] {
            assert!(license(bad).is_err(), "{bad:?}");
        }
        assert!(
            license_key("k", &"x".repeat(MAX_LICENSE_KEY + 1)).unwrap_err().to_string().contains("not a license key")
        );
    }

    #[test]
    fn smtp_servers_get_a_port() {
        let site = parse("[smtp]\nserver = \"mail.corp.internal\"\nsender = \"p@corp.internal\"\n", Path::new("/efi"));
        assert_eq!(site.unwrap().smtp.unwrap().server, "mail.corp.internal:25", "Pulumi takes host:port only");
    }

    #[test]
    fn an_external_database_and_object_store_are_read() {
        let site = parse(
            r#"[pulumi]
encryption_key_file = "site/pulumi.key"
[database]
endpoint = "mysql.corp.internal"
user = "pulumi_api"
password = "db p4ss"
admin_password = "r00t"
ca = "site/mysql-ca.crt"
[object_store]
endpoint = "https://s3.corp.internal:9000/"
region = "us-east-1"
checkpoints_bucket = "pulumi-checkpoints"
policy_packs_bucket = "pulumi-policy-packs"
access_key_id = "AKIDTEST"
secret_access_key = "s3cr3t/key+"
ca = "site/s3-ca.crt"
"#,
            Path::new("/efi"),
        )
        .unwrap();
        assert_eq!(site.encryption_key.as_deref(), Some(Path::new("/efi/site/pulumi.key")));
        assert_eq!(
            site.database,
            Some(ExternalDatabase {
                host: "mysql.corp.internal".into(),
                port: 3306,
                user: "pulumi_api".into(),
                password: "db p4ss".into(),
                admin_user: "root".into(),
                admin_password: "r00t".into(),
                ca: Some("/efi/site/mysql-ca.crt".into()),
            })
        );
        let store = site.object_store.unwrap();
        assert_eq!((store.host.as_str(), store.port, store.tls), ("s3.corp.internal", 9000, true));
        assert_eq!(store.ca.as_deref(), Some(Path::new("/efi/site/s3-ca.crt")));
        assert_eq!((store.checkpoints_bucket.as_str(), store.region.as_str()), ("pulumi-checkpoints", "us-east-1"));
        let plain = parse(
            "[object_store]\nendpoint = \"http://minio\"\nregion = \"r\"\ncheckpoints_bucket = \"c-c\"\n\
             policy_packs_bucket = \"p-p\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\n",
            Path::new("/efi"),
        )
        .unwrap()
        .object_store
        .unwrap();
        assert_eq!((plain.port, plain.tls), (80, false));
    }

    #[test]
    fn errors_name_the_key_and_why() {
        let cases: &[(&str, &str)] = &[
            ("hostname = \"Bad_Name\"", "hostname: `Bad_Name` is not a host name"),
            ("domain = \"local\"", "domain: `local` is not a domain"),
            (
                "admin_ssh_keys = [\"ssh-ed25519 !!!\"]",
                "admin_ssh_keys[0]: the key data after `ssh-ed25519` is not base64",
            ),
            ("admin_ssh_keys = [\"hello\"]", "admin_ssh_keys[0]: not an OpenSSH public key line"),
            ("[network]\nmode = \"manual\"", "network.mode: `manual` is neither"),
            ("[network]\nmode = \"static\"", "network.address: required"),
            (
                "[network]\nmode = \"static\"\naddress = \"10.0.0.300/24\"",
                "network.address: `10.0.0.300/24` is not an IPv4",
            ),
            (
                "[network]\nmode = \"static\"\naddress = \"10.0.0.3\"",
                "network.address: `10.0.0.3` needs a prefix length",
            ),
            (
                "[network]\nmode = \"static\"\naddress = \"10.0.0.3/24\"\ngateway = \"10.1.0.1\"",
                "network.gateway: 10.1.0.1 is not in the network",
            ),
            ("[network]\naddress = \"10.0.0.3/24\"", "network.address: only used with network.mode = \"static\""),
            ("[network]\nntp = [\"not a host\"]", "network.ntp[0]: `not a host` is neither"),
            ("[tls]\ncertificate = \"a.crt\"", "tls.key: required when"),
            (
                "[tls]\ncertificate = \"../a\"\nkey = \"k\"\nca = \"c\"",
                "tls.certificate: `../a` must be a path relative",
            ),
            ("[tls]\ncertificate = \"/etc/x\"\nkey = \"k\"\nca = \"c\"", "tls.certificate: `/etc/x` must be a path"),
            ("[pulumi]\nlicense_key = \"a\"\nlicense_key_file = \"b\"", "pulumi.license_key_file: set either"),
            ("[smtp]\nserver = \"mail:99999\"\nsender = \"a@b\"", "smtp.server: `mail:99999` has a port"),
            ("[smtp]\nserver = \"mail\"", "smtp.sender: required"),
            ("[smtp]\npassword = \"x\"", "smtp.password: set smtp.server too"),
            ("[saml]\ncertificate = \"c\"", "saml.private_key: required"),
            ("[database]\nuser = \"u\"", "database.user: set database.endpoint too"),
            ("[database]\nendpoint = \"db:3306\"", "database.user: required"),
            (
                "[database]\nendpoint = \"db:0\"\nuser = \"u\"\npassword = \"p\"\nadmin_password = \"a\"",
                "database.endpoint: `db:0` has a port",
            ),
            ("[database]\nendpoint = \"db\"\nuser = \"u\"\nadmin_password = \"a\"", "database.password: required"),
            (
                "[database]\nendpoint = \"db\"\nuser = \"it's\"\npassword = \"p\"\nadmin_password = \"a\"",
                "database.user: `it's` is not a MySQL user name",
            ),
            (
                "[database]\nendpoint = \"db\"\nuser = \"u\"\npassword = \"p\"\nadmin_password = \"a\"",
                "pulumi.encryption_key_file: required with database.endpoint",
            ),
            ("[object_store]\nregion = \"x\"", "object_store.region: set object_store.endpoint too"),
            ("[object_store]\nendpoint = \"s3.internal\"", "object_store.endpoint: `s3.internal` is not an http"),
            ("[object_store]\nendpoint = \"https://s3/b\"", "object_store.endpoint: `https://s3/b` names a path"),
            ("[object_store]\nendpoint = \"https://s3\"", "object_store.region: required"),
            (
                "[object_store]\nendpoint = \"https://s3\"\nregion = \"r\"\ncheckpoints_bucket = \"B\"\npolicy_packs_bucket = \"p-p\"",
                "object_store.checkpoints_bucket: `B` is not an S3 bucket name",
            ),
            (
                "[object_store]\nendpoint = \"https://s3\"\nregion = \"r\"\ncheckpoints_bucket = \"same\"\npolicy_packs_bucket = \"same\"",
                "object_store.policy_packs_bucket: must differ",
            ),
            (
                "[object_store]\nendpoint = \"http://s3:9000\"\nregion = \"r\"\ncheckpoints_bucket = \"c-c\"\n\
                 policy_packs_bucket = \"p-p\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\nca = \"ca.crt\"",
                "object_store.ca: only used with an https:// endpoint",
            ),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.contains(want), "for {text:?}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let got = err("hostnam = \"x\"");
        assert!(got.contains("hostnam"), "{got}");
        let got = err("[network]\nmode = \"dhcp\"\ngatway = \"1.2.3.4\"");
        assert!(got.contains("gatway"), "{got}");
        let got = err("admin_ssh_keys = \"ssh-ed25519 AAAA\"");
        assert!(got.contains("admin_ssh_keys"), "{got}");
    }

    #[test]
    fn valid_ssh_key_passes() {
        check_ssh_key("k", KEY).unwrap();
        // Right base64 but the blob says another type.
        let rsa_blob = "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIBfRn6jcbOtp3Hu3ZtVvWw8Nik8jMIFO2s7K7yrBZCPs";
        assert!(check_ssh_key("k", rsa_blob).unwrap_err().to_string().contains("does not hold a `ssh-rsa` key"));
    }
}
