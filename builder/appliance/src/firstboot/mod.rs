//! `airlock firstboot`: the appliance's provisioning, run by `airlock-provision.service` on
//! every boot before the network and the stack start (`/usr/bin/airlock` in the image is this
//! crate's binary).
//!
//! It reads the site configuration from the ESP ([`site`]), then runs a fixed list of steps.
//! *Once* steps make what must be unique to the instance (secrets, SSH host keys, the TLS CA);
//! each item is checked for first and never made again once it exists under its final name,
//! and every file appears only complete (`.partial`, fsync, rename, fsync of the directory:
//! [`store`]). *Every-boot* steps re-apply the site's settings (hostname, network, SSH keys,
//! certificates), writing only what changed. A step's completion is recorded only after its
//! effects are durable, so a power cut at any moment is followed by a boot that finishes the
//! job and never replaces a secret a service may already use.

pub mod store;
pub mod tls;

pub use airlock_common::site;

use airlock_common::command::Cmd;
use airlock_common::partition::{ESP_MOUNT, STATE_DIR};
use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use site::{LicenseKey, Network, Site};
use std::fs;
use std::path::{Path, PathBuf};

/// Where provisioning reads and writes; `/` and the appliance's mounts in production, a
/// temporary directory in tests.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The root filesystem (`/etc`, `/root`).
    pub root: PathBuf,
    /// The ESP, holding `airlock.toml`.
    pub esp: PathBuf,
    /// The data partition (`/var/lib/airlock`).
    pub state: PathBuf,
    /// Runtime files (`/run`).
    pub run: PathBuf,
}

impl Paths {
    pub fn system() -> Paths {
        Paths { root: "/".into(), esp: ESP_MOUNT.into(), state: STATE_DIR.into(), run: "/run".into() }
    }
    pub fn secrets(&self) -> PathBuf {
        self.state.join("secrets")
    }
    pub fn tls(&self) -> PathBuf {
        self.state.join("tls")
    }
    pub fn ssh(&self) -> PathBuf {
        self.state.join("ssh")
    }
    fn provision(&self) -> PathBuf {
        self.state.join("provision")
    }
    /// The addresses the network gave this instance (one per line), recorded after the network
    /// is up so the server certificate names them from then on.
    pub fn addresses(&self) -> PathBuf {
        self.provision().join("addresses")
    }
    /// One line per secret, CA or key ever made here: `<name> sha256:<hex>`, appended and
    /// synced right after the item became durable.
    pub fn generated_log(&self) -> PathBuf {
        self.provision().join("generated.log")
    }
    fn run_airlock(&self) -> PathBuf {
        self.run.join("airlock")
    }
    /// Why the last run failed, for the banner.
    pub fn error_file(&self) -> PathBuf {
        self.run_airlock().join("provision-error")
    }
    fn etc(&self, rel: &str) -> PathBuf {
        self.root.join("etc").join(rel)
    }
    /// The host name and hosts file the site sets: on the data partition, since the root is
    /// read-only (the image's `/etc/hostname` and `/etc/hosts` are links to these).
    pub fn hostname_file(&self) -> PathBuf {
        self.state.join("etc/hostname")
    }
    pub fn hosts_file(&self) -> PathBuf {
        self.state.join("etc/hosts")
    }
    /// The administrators' SSH keys for root (sshd's `AuthorizedKeysFile`,
    /// `overlay/etc/ssh/sshd_config.d/airlock.conf`): `/root` is on the read-only root.
    pub fn root_authorized_keys(&self) -> PathBuf {
        self.ssh().join("authorized_keys/root")
    }
    /// Where the instance's machine-id is kept: PID 1 reads it when `/etc/machine-id` (empty
    /// in the read-only image) holds none, and the data partition is mounted in the initrd
    /// (`x-initrd.mount`) so it is there when PID 1 looks.
    pub fn saved_machine_id(&self) -> PathBuf {
        self.root.join("var/lib/dbus/machine-id")
    }
}

/// How a secret is made: random bytes from the kernel, stored raw or as lower-case hex text.
#[derive(Debug, Clone, Copy)]
pub enum Encoding {
    Raw,
    Hex,
}

/// A per-instance secret in `<state>/secrets/<name>` (mode 0600, root).
#[derive(Debug)]
pub struct Secret {
    pub name: &'static str,
    pub bytes: usize,
    pub encoding: Encoding,
    pub what: &'static str,
}

/// The size of Pulumi's local encryption key (`PULUMI_LOCAL_KEYS`).
pub const PULUMI_KEY_BYTES: usize = 32;

/// Every secret an appliance gets. Stacks take the ones they use (bind-mounted files,
/// `LoadCredential=`, podman secrets).
pub const SECRETS: &[Secret] = &[
    Secret { name: "db-password", bytes: 24, encoding: Encoding::Hex, what: "database root password" },
    Secret { name: "db-service-password", bytes: 24, encoding: Encoding::Hex, what: "database password of the API" },
    Secret {
        name: "pulumi-local-keys",
        bytes: PULUMI_KEY_BYTES,
        encoding: Encoding::Raw,
        what: "PULUMI_LOCAL_KEYS encryption key",
    },
    Secret { name: "registry-password", bytes: 16, encoding: Encoding::Hex, what: "registry password" },
];

/// The one user of the appliance's registry (`docker-registry`, on port 5000 and at
/// `registry.<domain>`); its password is the `registry-password` secret.
pub const REGISTRY_USER: &str = "airlock";
/// The registry's htpasswd file (bcrypt), made from the password once.
const REGISTRY_HTPASSWD: &str = "registry-htpasswd";
/// bcrypt's lowest cost: the password is 128 random bits, so the hash's work factor adds no
/// protection, while the registry checks it on every request (and TCG guests are slow).
const REGISTRY_BCRYPT_COST: u32 = 4;
/// Where podman (run as root, by quadlet units or an admin) finds registry credentials
/// (containers-auth.json(5): `$XDG_RUNTIME_DIR/containers/auth.json`, `/run/containers/0` for
/// root without one).
const PODMAN_AUTH: &str = "containers/0/auth.json";

/// The SSH host key types made on first boot: Ed25519 only, the one key sshd serves
/// (`overlay/etc/ssh/sshd_config.d/airlock.conf`), which every current client speaks.
pub const SSH_HOST_KEYS: &[&str] = &["ed25519"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Makes instance identity; recorded as done, never repeated.
    Once,
    /// Applies the site's settings; runs on every boot.
    EveryBoot,
}

/// What every step sees.
#[derive(Debug)]
pub struct Instance {
    pub paths: Paths,
    pub site: Site,
    /// The effective host name (the site's, or the image's).
    pub hostname: String,
}

pub type StepFn = fn(&Instance) -> Result<()>;

/// The provisioning steps, in order.
pub const STEPS: &[(&str, When, StepFn)] = &[
    ("machine-id", When::Once, commit_machine_id),
    ("secrets", When::Once, make_secrets),
    ("registry-htpasswd", When::Once, make_registry_htpasswd),
    ("ssh-host-keys", When::Once, make_ssh_host_keys),
    ("ca", When::Once, make_ca),
    ("server-certificate", When::EveryBoot, make_server_certificate),
    ("install-tls", When::EveryBoot, install_tls),
    ("hostname", When::EveryBoot, apply_hostname),
    ("network", When::EveryBoot, apply_network),
    ("admin-ssh-keys", When::EveryBoot, apply_admin_ssh_keys),
    ("site-secrets", When::EveryBoot, apply_site_secrets),
    ("site-env", When::EveryBoot, write_site_env),
    ("registry-auth", When::EveryBoot, write_registry_auth),
];

/// What `airlock firstboot --addresses` runs once the network is up
/// (`airlock-address.service`): a DHCP address is unknown before, so the certificate issued
/// before the network named only the names and a static address.
pub const ADDRESS_STEPS: &[(&str, When, StepFn)] = &[
    ("addresses", When::EveryBoot, record_addresses),
    ("server-certificate", When::EveryBoot, make_server_certificate),
    ("install-tls", When::EveryBoot, install_tls),
];

/// The whole provisioning run: read and check the site configuration, then every step. On any
/// error the reason is also written to `<run>/airlock/provision-error` for the banner.
pub fn provision(paths: &Paths, steps: &[(&str, When, StepFn)]) -> Result<()> {
    store::ensure_dir(&paths.run_airlock(), 0o755)?;
    store::remove_durably(&paths.error_file())?;
    let result = read_site(paths).and_then(|ctx| run_steps(&ctx, steps));
    if let Err(e) = &result {
        let _ = store::write_atomic(&paths.error_file(), format!("{e:#}\n").as_bytes(), 0o644);
    }
    result
}

/// The most bytes read of `airlock.toml` (the documented file with every section is under
/// 8 KiB). Whoever holds the stick can write the ESP: every file read from it is a regular
/// file, capped, and checked for what it must hold, so a huge or odd file costs nothing.
pub const MAX_SITE_FILE: u64 = site::MAX_SITE_FILE;
/// The most bytes read of a PEM file named by `airlock.toml` (certificates, keys, CA bundles).
pub const MAX_SITE_PEM: u64 = 1024 * 1024;

/// A file on the ESP as text: a regular file of at most `max` bytes, UTF-8; `key` (the setting
/// that names it) leads any error.
fn read_esp_text(key: &str, path: &Path, max: u64) -> Result<String> {
    airlock_common::input_file::read_capped_text(path, max, key).with_context(|| format!("{key}: cannot read it"))
}

/// Reads `airlock.toml` from the ESP (absent means defaults) and validates it.
pub fn read_site(paths: &Paths) -> Result<Instance> {
    let file = paths.esp.join("airlock.toml");
    let site = match fs::symlink_metadata(&file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log::info!("{} does not exist: using the defaults", file.display());
            Site::defaults()
        }
        _ => {
            let text = airlock_common::input_file::read_capped_text(&file, MAX_SITE_FILE, "site configuration")?;
            site::parse(&text, &paths.esp).with_context(|| format!("site configuration {}", file.display()))?
        }
    };
    let hostname = match &site.hostname {
        Some(h) => h.clone(),
        None => fs::read_to_string(paths.hostname_file())
            .or_else(|_| fs::read_to_string(paths.etc("hostname")))
            .ok()
            .map(|s| s.trim().split('.').next().unwrap_or("").to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "airlock".into()),
    };
    Ok(Instance { paths: paths.clone(), site, hostname })
}

/// Runs the steps; a *once* step with a completion record is skipped.
pub fn run_steps(ctx: &Instance, steps: &[(&str, When, StepFn)]) -> Result<()> {
    let done_dir = ctx.paths.provision().join("done");
    store::ensure_dir(&ctx.paths.state, 0o755)?;
    store::ensure_dir(&ctx.paths.provision(), 0o700)?;
    store::ensure_dir(&done_dir, 0o700)?;
    for (name, when, step) in steps {
        let marker = done_dir.join(name);
        if *when == When::Once && marker.exists() {
            log::debug!("{name}: done on an earlier boot");
            continue;
        }
        step(ctx).with_context(|| format!("provisioning step `{name}`"))?;
        if *when == When::Once {
            store::write_atomic(&marker, b"", 0o600)?;
        }
        log::info!("{name}: done");
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn random(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| anyhow!("reading the kernel's RNG: {e}"))?;
    Ok(buf)
}

/// Writes a newly made item and records it in the generated log (after it is durable).
fn create_recorded(ctx: &Instance, name: &str, path: &Path, bytes: &[u8]) -> Result<()> {
    store::write_atomic(path, bytes, 0o600)?;
    store::append_line(&ctx.paths.generated_log(), &format!("{name} sha256:{}", sha256_hex(bytes)))
}

/// An item found already made: records it if the generated log does not name it, which
/// happens when the power was cut after the item became durable and before it was recorded.
/// So every item is recorded exactly once, and a second record would mean it was replaced.
fn record_existing(ctx: &Instance, name: &str, path: &Path) -> Result<()> {
    let log_path = ctx.paths.generated_log();
    let log = match fs::read_to_string(&log_path) {
        Ok(log) => log,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", log_path.display())),
    };
    let prefix = format!("{name} sha256:");
    if log.lines().any(|l| l.starts_with(&prefix)) {
        return Ok(());
    }
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    log::warn!("{name} was made before a power cut but not recorded: recording it now");
    store::append_line(&log_path, &format!("{prefix}{}", sha256_hex(&bytes)))
}

/// PID 1 makes the machine-id on first boot (from the kernel's RNG: the image's
/// `/etc/machine-id` is empty) and, the root being read-only, keeps it on a tmpfs over
/// `/etc/machine-id`. This step saves it on the data partition, where PID 1 finds it on every
/// later boot (`/var/lib/dbus/machine-id`, read when `/etc/machine-id` is empty), and syncs it
/// before any secret is made; then records it like every other generated item.
fn commit_machine_id(ctx: &Instance) -> Result<()> {
    let path = ctx.paths.etc("machine-id");
    let id = match fs::read_to_string(&path) {
        Ok(id) => id.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{} holds no machine-id (`{id}`): systemd did not make one", path.display());
    }
    let saved = ctx.paths.saved_machine_id();
    // Only a regular file is a saved id. Debian's dbus has systemd-tmpfiles link the path to
    // /etc/machine-id on every boot that lacks it (`tmpfiles.d/dbus.conf`), often before this
    // step: read through, the link shows the running id and would pass for saved, and the next
    // boot, finding a link, would draw a new id.
    let existing = match fs::symlink_metadata(&saved) {
        Ok(md) if md.file_type().is_file() => {
            Some(fs::read_to_string(&saved).with_context(|| format!("reading {}", saved.display()))?)
        }
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", saved.display())),
    };
    match existing {
        Some(text) if text.trim() == id => {}
        Some(text) if !text.trim().is_empty() => bail!(
            "{} holds machine-id {} but the system runs as {id}: the data partition belongs to another instance",
            saved.display(),
            text.trim()
        ),
        _ => {
            if let Some(dir) = saved.parent() {
                store::ensure_dir(dir, 0o755)?;
            }
            // Replaces Debian's link to /etc/machine-id, if there is one, by the file itself.
            store::write_atomic(&saved, format!("{id}\n").as_bytes(), 0o444)?;
        }
    }
    store::append_line(&ctx.paths.generated_log(), &format!("machine-id sha256:{}", sha256_hex(id.as_bytes())))
}

fn make_secrets(ctx: &Instance) -> Result<()> {
    let dir = ctx.paths.secrets();
    store::ensure_dir(&dir, 0o700)?;
    for s in SECRETS {
        let path = dir.join(s.name);
        if path.exists() {
            record_existing(ctx, s.name, &path)?;
            continue;
        }
        let raw = random(s.bytes)?;
        let bytes = match s.encoding {
            Encoding::Raw => raw,
            Encoding::Hex => hex::encode(raw).into_bytes(),
        };
        create_recorded(ctx, s.name, &path, &bytes)?;
        log::info!("made the {}", s.what);
    }
    Ok(())
}

fn registry_password(paths: &Paths) -> Result<String> {
    let path = paths.secrets().join("registry-password");
    let pw = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(pw.trim().to_string())
}

/// The registry's htpasswd line for [`REGISTRY_USER`] (the registry accepts bcrypt only).
fn make_registry_htpasswd(ctx: &Instance) -> Result<()> {
    let path = ctx.paths.secrets().join(REGISTRY_HTPASSWD);
    if path.exists() {
        return record_existing(ctx, REGISTRY_HTPASSWD, &path);
    }
    let password = registry_password(&ctx.paths)?;
    let hash = bcrypt::hash(&password, REGISTRY_BCRYPT_COST).context("hashing the registry password")?;
    create_recorded(ctx, REGISTRY_HTPASSWD, &path, format!("{REGISTRY_USER}:{hash}\n").as_bytes())?;
    log::info!("made the registry's htpasswd for user {REGISTRY_USER}");
    Ok(())
}

/// podman's credentials for the appliance's own registry, in `/run` (root only): the images
/// of the stack are pulled from `127.0.0.1:5000` with the instance's registry password.
pub fn podman_auth(password: &str) -> String {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{REGISTRY_USER}:{password}"));
    let port = airlock_common::local_registry::PORT;
    let auths = serde_json::json!({
        format!("127.0.0.1:{port}"): {"auth": auth},
        format!("localhost:{port}"): {"auth": auth},
    });
    format!("{}\n", serde_json::json!({ "auths": auths }))
}

fn write_registry_auth(ctx: &Instance) -> Result<()> {
    let path = ctx.paths.run.join(PODMAN_AUTH);
    if let Some(dir) = path.parent() {
        store::ensure_dir(dir, 0o700)?;
    }
    store::write_if_changed(&path, podman_auth(&registry_password(&ctx.paths)?).as_bytes(), 0o600)?;
    Ok(())
}

/// Host keys live on the data partition (sshd_config.d points there), made by ssh-keygen in a
/// scratch directory and moved into place public key first, private key last: the private key
/// under its final name means the pair is complete.
fn make_ssh_host_keys(ctx: &Instance) -> Result<()> {
    let dir = ctx.paths.ssh();
    store::ensure_dir(&dir, 0o755)?;
    for kind in SSH_HOST_KEYS {
        let name = format!("ssh_host_{kind}_key");
        let key = dir.join(&name);
        if key.exists() {
            record_existing(ctx, &name, &key)?;
            continue;
        }
        let scratch = dir.join(format!(".{name}.partial"));
        if scratch.exists() {
            fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
        }
        store::ensure_dir(&scratch, 0o700)?;
        Cmd::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-C", &format!("root@{}", ctx.hostname), "-f"])
            .arg(scratch.join(&name))
            .run()?;
        for file in [format!("{name}.pub"), name.clone()] {
            let src = scratch.join(&file);
            fs::File::open(&src).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", src.display()))?;
            fs::rename(&src, dir.join(&file)).with_context(|| format!("moving {} into place", src.display()))?;
            store::sync_dir(&dir)?;
        }
        fs::remove_dir(&scratch).ok();
        let bytes = fs::read(&key).with_context(|| format!("reading {}", key.display()))?;
        store::append_line(&ctx.paths.generated_log(), &format!("{name} sha256:{}", sha256_hex(&bytes)))?;
    }
    Ok(())
}

fn ca_path(paths: &Paths) -> PathBuf {
    paths.tls().join("ca.pem")
}

fn server_path(paths: &Paths) -> PathBuf {
    paths.tls().join("server.pem")
}

/// The instance's own CA, made even when the site supplies a certificate (so removing the
/// site's certificate later falls back to a CA clients may already trust).
fn make_ca(ctx: &Instance) -> Result<()> {
    store::ensure_dir(&ctx.paths.tls(), 0o755)?;
    let path = ca_path(&ctx.paths);
    if path.exists() {
        return record_existing(ctx, "ca", &path);
    }
    let ca = tls::make_ca(&format!("airlock {} CA", ctx.hostname))?;
    create_recorded(ctx, "ca", &path, ca.to_text().as_bytes())
}

/// The names the server certificate is for: `<hostname>`, `<hostname>.<domain>`, the service
/// names, and a static address.
pub fn certificate_names(ctx: &Instance) -> Vec<String> {
    let mut names = vec![ctx.hostname.clone(), format!("{}.{}", ctx.hostname, ctx.site.domain)];
    names.extend(ctx.site.service_names());
    if let Network::Static { address, .. } = &ctx.site.network {
        names.push(address.address.to_string());
    }
    let recorded = fs::read_to_string(ctx.paths.addresses()).unwrap_or_default();
    for a in recorded.lines().filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok()) {
        if !names.iter().any(|n| n == a) {
            names.push(a.to_string());
        }
    }
    names
}

/// The global IPv4 addresses in `ip -4 -o addr show scope global` output, sorted.
pub fn parse_addresses(ip_output: &str) -> Vec<std::net::Ipv4Addr> {
    let mut out: Vec<std::net::Ipv4Addr> = ip_output
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Records the addresses the network gave this instance. Without a network at all (`ip`
/// finds none, e.g. an unplugged port when the wait for the network timed out) the last
/// record stays, so a certificate is not re-issued for a cable pulled at boot.
fn record_addresses(ctx: &Instance) -> Result<()> {
    let found = if ctx.paths.root == Path::new("/") {
        parse_addresses(&Cmd::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output_text()?)
    } else {
        // Tests stand in for the network with `<run>/airlock/test-addresses`.
        parse_addresses(&fs::read_to_string(ctx.paths.run_airlock().join("test-addresses")).unwrap_or_default())
    };
    if found.is_empty() {
        log::info!("no global IPv4 address: the certificate keeps the addresses recorded before");
        return Ok(());
    }
    let text: String = found.iter().map(|a| format!("{a}\n")).collect();
    if store::write_if_changed(&ctx.paths.addresses(), text.as_bytes(), 0o644)? {
        log::info!("this instance's addresses: {}", text.trim().replace('\n', ", "));
    }
    Ok(())
}

fn read_bundle(path: &Path) -> Result<tls::Bundle> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    tls::Bundle::parse(&text).with_context(|| format!("{}", path.display()))
}

fn make_server_certificate(ctx: &Instance) -> Result<()> {
    let names = certificate_names(ctx);
    let path = server_path(&ctx.paths);
    if path.exists() && read_bundle(&path).is_ok_and(|b| tls::server_is_current(&b, &names)) {
        return Ok(());
    }
    let ca = read_bundle(&ca_path(&ctx.paths))?;
    let server = tls::issue_server(&ca, &names)?;
    store::write_atomic(&path, server.to_text().as_bytes(), 0o600)?;
    log::info!("issued the server certificate for {}", names.join(", "));
    Ok(())
}

/// The files services use: `tls/server.crt`, `tls/server.key`, `tls/ca.crt` (published at
/// `http://<appliance>/ca.crt`), from the site's certificate when it supplies one.
fn install_tls(ctx: &Instance) -> Result<()> {
    let (cert, key, ca) = match &ctx.site.tls {
        Some(t) => {
            let read = |key: &str, p: &Path| read_esp_text(key, p, MAX_SITE_PEM);
            let (cert, key, ca) =
                (read("tls.certificate", &t.certificate)?, read("tls.key", &t.key)?, read("tls.ca", &t.ca)?);
            // The service names must be covered; the host name and a static address need not be
            // (clients reach the appliance by its service names).
            tls::check_site(&cert, &key, &ca, &ctx.site.service_names())
                .with_context(|| format!("site configuration {}", ctx.paths.esp.join("airlock.toml").display()))?;
            (cert, key, ca)
        }
        None => {
            let server = read_bundle(&server_path(&ctx.paths))?;
            let ca = read_bundle(&ca_path(&ctx.paths))?;
            (server.cert_pem, server.key_pem, ca.cert_pem)
        }
    };
    let dir = ctx.paths.tls();
    // The key first: a cut between the two leaves a pair that does not match only until this
    // step runs again, and no service starts before it has.
    store::write_if_changed(&dir.join("server.key"), key.as_bytes(), 0o600)?;
    store::write_if_changed(&dir.join("server.crt"), cert.as_bytes(), 0o644)?;
    store::write_if_changed(&dir.join("ca.crt"), ca.as_bytes(), 0o644)?;
    Ok(())
}

fn apply_hostname(ctx: &Instance) -> Result<()> {
    let h = &ctx.hostname;
    let fqdn = format!("{h}.{}", ctx.site.domain);
    store::ensure_dir(&ctx.paths.state.join("etc"), 0o755)?;
    store::write_if_changed(&ctx.paths.hostname_file(), format!("{h}\n").as_bytes(), 0o644)?;
    let hosts = format!("127.0.0.1\tlocalhost\n127.0.1.1\t{fqdn} {h}\n::1\t\tlocalhost ip6-localhost ip6-loopback\n");
    store::write_if_changed(&ctx.paths.hosts_file(), hosts.as_bytes(), 0o644)?;
    if ctx.paths.root == Path::new("/") {
        rustix::system::sethostname(h.as_bytes()).with_context(|| format!("setting the host name to {h}"))?;
    }
    Ok(())
}

/// The site's network as a systemd-networkd file in `/run` (sorted before the image's DHCP
/// default, so it wins), and its time servers as a timesyncd drop-in.
pub fn network_file(site: &Site) -> Option<String> {
    let Network::Static { address, gateway, dns } = &site.network else { return None };
    let mut s = format!(
        "# Written by airlock from airlock.toml on the ESP.\n[Match]\nName=en* eth*\n\n[Network]\nAddress={address}\n"
    );
    if let Some(g) = gateway {
        s.push_str(&format!("Gateway={g}\n"));
    }
    for d in dns {
        s.push_str(&format!("DNS={d}\n"));
    }
    s.push_str(&format!("Domains={}\nLinkLocalAddressing=no\n", site.domain));
    Some(s)
}

fn apply_network(ctx: &Instance) -> Result<()> {
    let dir = ctx.paths.run.join("systemd/network");
    let file = dir.join("10-airlock-site.network");
    match network_file(&ctx.site) {
        Some(text) => {
            store::ensure_dir(&dir, 0o755)?;
            store::write_if_changed(&file, text.as_bytes(), 0o644)?;
        }
        None => store::remove_durably(&file)?,
    }
    let dir = ctx.paths.run.join("systemd/timesyncd.conf.d");
    let file = dir.join("airlock.conf");
    if ctx.site.ntp.is_empty() {
        store::remove_durably(&file)?;
    } else {
        store::ensure_dir(&dir, 0o755)?;
        let text = format!("# Written by airlock from airlock.toml.\n[Time]\nNTP={}\n", ctx.site.ntp.join(" "));
        store::write_if_changed(&file, text.as_bytes(), 0o644)?;
    }
    Ok(())
}

fn apply_admin_ssh_keys(ctx: &Instance) -> Result<()> {
    let file = ctx.paths.root_authorized_keys();
    if ctx.site.admin_ssh_keys.is_empty() {
        return store::remove_durably(&file);
    }
    let dir = file.parent().context("the authorized keys file has a directory")?;
    store::ensure_dir(&ctx.paths.ssh(), 0o700)?;
    store::ensure_dir(dir, 0o700)?;
    let text: String = ctx.site.admin_ssh_keys.iter().map(|k| format!("{}\n", k.trim())).collect();
    store::write_if_changed(&file, text.as_bytes(), 0o600)?;
    Ok(())
}

/// Reads a CA certificate the site names for `key`, checking that it is one.
fn read_site_ca(key: &str, path: &Path) -> Result<String> {
    let text = read_esp_text(key, path, MAX_SITE_PEM)?;
    tls::fingerprint(&text).with_context(|| format!("{key}: {} is not a PEM certificate", path.display()))?;
    Ok(text)
}

/// Secrets the site supplies (license key, SMTP password, SAML key pair, the shared encryption
/// key, the external database's and object store's credentials and CAs) as files next to the
/// generated ones; removed when the site stops setting them.
fn apply_site_secrets(ctx: &Instance) -> Result<()> {
    let dir = ctx.paths.secrets();
    store::ensure_dir(&dir, 0o700)?;
    let license = match &ctx.site.license_key {
        Some(LicenseKey::Inline(k)) => Some(k.clone()),
        Some(LicenseKey::File(p)) => {
            // A little room for surrounding blank lines; the key itself is checked as inline.
            let text = read_esp_text("pulumi.license_key_file", p, site::MAX_LICENSE_KEY as u64 + 1024)?;
            Some(site::license_key("pulumi.license_key_file", &text).with_context(|| p.display().to_string())?)
        }
        None => None,
    };
    let smtp = ctx.site.smtp.as_ref().and_then(|s| s.password.clone());
    let (saml_cert, saml_key) = match &ctx.site.saml {
        Some((c, k)) => (
            Some(read_esp_text("saml.certificate", c, MAX_SITE_PEM)?),
            Some(read_esp_text("saml.private_key", k, MAX_SITE_PEM)?),
        ),
        None => (None, None),
    };
    let encryption_key = match &ctx.site.encryption_key {
        Some(p) => {
            // Never more than the key's size is read: a longer file is refused as too large.
            let key =
                airlock_common::input_file::read_capped(p, PULUMI_KEY_BYTES as u64, "pulumi.encryption_key_file")?;
            if key.len() != PULUMI_KEY_BYTES {
                bail!(
                    "pulumi.encryption_key_file: {} holds {} bytes; the key is {PULUMI_KEY_BYTES} random bytes",
                    p.display(),
                    key.len()
                );
            }
            Some(key)
        }
        None => None,
    };
    let db = ctx.site.database.as_ref();
    let db_ca = db.and_then(|d| d.ca.as_ref()).map(|p| read_site_ca("database.ca", p)).transpose()?;
    let store = ctx.site.object_store.as_ref();
    let store_ca = store.and_then(|s| s.ca.as_ref()).map(|p| read_site_ca("object_store.ca", p)).transpose()?;
    for (name, value) in [
        ("pulumi-license-key", license.map(String::into_bytes)),
        ("smtp-password", smtp.map(String::into_bytes)),
        ("saml-certificate", saml_cert.map(String::into_bytes)),
        ("saml-private-key", saml_key.map(String::into_bytes)),
        ("site-pulumi-local-keys", encryption_key),
        ("database-password", db.map(|d| d.password.clone().into_bytes())),
        ("database-admin-password", db.map(|d| d.admin_password.clone().into_bytes())),
        ("database-ca", db_ca.map(String::into_bytes)),
        ("object-store-access-key-id", store.map(|s| s.access_key_id.clone().into_bytes())),
        ("object-store-secret-access-key", store.map(|s| s.secret_access_key.clone().into_bytes())),
        ("object-store-ca", store_ca.map(String::into_bytes)),
    ] {
        let path = dir.join(name);
        match value {
            Some(v) => {
                store::write_if_changed(&path, &v, 0o600)?;
            }
            None => store::remove_durably(&path)?,
        }
    }
    Ok(())
}

/// A value of `site.env` as POSIX shell reads it (`.` it): quoted unless it is made only of
/// characters the shell takes literally.
fn env_value(v: &str) -> String {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b)) {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

/// `/run/airlock/site.env`: the settings services and the banner use that are not secret, as
/// shell assignments (the banner and image scripts source it).
pub fn site_env(ctx: &Instance, ca_fingerprint: &str) -> String {
    let d = &ctx.site.domain;
    let mut vars: Vec<(&str, String)> = vec![
        ("AIRLOCK_HOSTNAME", ctx.hostname.clone()),
        ("AIRLOCK_DOMAIN", d.clone()),
        ("AIRLOCK_API_URL", format!("https://api.{d}")),
        ("AIRLOCK_CONSOLE_URL", format!("https://app.{d}")),
        ("AIRLOCK_REGISTRY_URL", format!("https://registry.{d}")),
        ("AIRLOCK_MIRROR_URL", format!("https://mirror.{d}")),
        ("AIRLOCK_CA_SHA256", ca_fingerprint.to_string()),
    ];
    if let Some(smtp) = &ctx.site.smtp {
        vars.push(("SMTP_SERVER", smtp.server.clone()));
        vars.push(("SMTP_GENERIC_SENDER", smtp.sender.clone()));
        if let Some(u) = &smtp.username {
            vars.push(("SMTP_USERNAME", u.clone()));
        }
    }
    vars.push(("SAML_SSO_ENABLED", ctx.site.saml.is_some().to_string()));
    if let Some(db) = &ctx.site.database {
        vars.push(("DATABASE_ENDPOINT", format!("{}:{}", db.host, db.port)));
        vars.push(("DATABASE_HOST", db.host.clone()));
        vars.push(("DATABASE_PORT", db.port.to_string()));
        vars.push(("DATABASE_USER", db.user.clone()));
        vars.push(("DATABASE_ADMIN_USER", db.admin_user.clone()));
    }
    if let Some(s) = &ctx.site.object_store {
        vars.push(("OBJECT_STORE_ENDPOINT", format!("{}:{}", s.host, s.port)));
        vars.push(("OBJECT_STORE_TLS", s.tls.to_string()));
        vars.push(("OBJECT_STORE_REGION", s.region.clone()));
        vars.push(("OBJECT_STORE_CHECKPOINTS_BUCKET", s.checkpoints_bucket.clone()));
        vars.push(("OBJECT_STORE_POLICY_PACKS_BUCKET", s.policy_packs_bucket.clone()));
    }
    vars.iter().map(|(k, v)| format!("{k}={}\n", env_value(v))).collect()
}

fn write_site_env(ctx: &Instance) -> Result<()> {
    let ca = fs::read_to_string(ctx.paths.tls().join("ca.crt")).context("reading the installed CA certificate")?;
    let env = site_env(ctx, &tls::fingerprint(&ca)?);
    store::write_if_changed(&ctx.paths.run_airlock().join("site.env"), env.as_bytes(), 0o644)?;
    Ok(())
}

#[cfg(test)]
mod tests;
