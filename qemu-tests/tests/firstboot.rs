//! First boot of the demo appliance: per-instance identity and secrets, TLS with the
//! instance's CA, crash-safe provisioning, and the site configuration on the ESP.
//!
//! Two VMs boot copies of one image, one after the other (TCG is slow; every check shares
//! these boots):
//! - instance A (default site configuration) loses its power at seeded random moments of its
//!   first boot, three times (the first while provisioning writes secrets, keys and the CA, the
//!   second while the stack starts for the first time, the third between 5 s and the ready
//!   banner), then boots to ready: nothing pulled, every image still the read-only store's,
//!   every secret is intact and made only once,
//!   the stack works, and the registry, mirror and API answer over TLS to a host client that
//!   trusts only the CA fetched from `http://<appliance>/ca.crt`, whose SHA-256 the banner shows;
//! - instance B gets a site `airlock.toml` (static address, hostname, domain, SSH key, a
//!   certificate signed by a site CA), which is honoured; then an invalid one, after which the
//!   console names the wrong key and the stack does not start.
//!
//! A and B differ in machine-id, SSH host keys, database password, encryption key and CA, and
//! the pristine image holds none of either instance's secrets.
#![allow(clippy::unwrap_used, reason = "a test stops at the first unexpected error")]

mod common;

use common::*;
use qemu_tests::{BOOT_TIMEOUT, Vm, VmConfig};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const GIB: u64 = 1 << 30;
const FIRST_BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Power cuts land between this many seconds after power-on and the ready banner.
const CUT_WINDOW: (u64, u64) = (5, 100);
const CUTS: usize = 3;
/// The first cut lands this many milliseconds (at most) after provisioning starts.
const PROVISION_CUT_MS: u64 = 2500;
/// The second cut lands this many milliseconds (at most) after the stack's first unit starts.
const STACK_CUT_MS: u64 = 15000;
/// The secrets every instance gets (`airlock_appliance::firstboot::SECRETS`), as files.
use airlock_appliance::firstboot::SSH_HOST_KEYS;
const SECRETS_DIR: &str = "/var/lib/airlock/secrets";

/// xorshift64*, seeded from `AIRLOCK_TEST_SEED` or the clock; the seed is printed so a failing
/// run can be repeated.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = match std::env::var("AIRLOCK_TEST_SEED") {
            Ok(s) => s.parse().unwrap_or_else(|e| panic!("AIRLOCK_TEST_SEED={s:?} is not a number: {e}")),
            Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1,
        };
        eprintln!("power-cut seed: {seed} (repeat with AIRLOCK_TEST_SEED={seed})");
        Rng(seed.max(1))
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Cuts the power at a random moment up to `max_ms` after `needle` appears on the console of
/// the current boot. Until then the guest must be up: a kernel panic or a qemu that died fails
/// the test (a cut of a dead machine would test nothing).
fn cut_after(vm: &mut Vm, rng: &mut Rng, needle: &str, max_ms: u64, cut: usize, what: &str) {
    let offset = vm.console_len();
    let seen = vm
        .watch_console(offset, needle, FIRST_BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("before power cut {cut}, waiting until {what}: {e:#}"))
        .unwrap_or_else(|| panic!("before power cut {cut}: never {what} (`{needle}` not on the console)"));
    let ms = rng.below(max_ms);
    vm.run_for(seen, Duration::from_millis(ms)).expect("the guest runs until the cut");
    eprintln!("power cut {cut}/{CUTS}: {ms} ms after {what}");
    vm.crash().unwrap();
}

/// What makes an instance itself, read from inside it.
#[derive(Debug)]
struct Identity {
    machine_id: String,
    ssh_host_keys: Vec<String>,
    /// name → base64 of the file.
    secrets: BTreeMap<String, String>,
    ca_key_pem: String,
    ca_cert: String,
}

fn read_identity(vm: &mut Vm) -> Identity {
    let machine_id = vm.succeed("cat /etc/machine-id").unwrap().trim().to_string();
    assert_eq!(machine_id.len(), 32, "machine-id: {machine_id}");
    let ssh_host_keys = SSH_HOST_KEYS
        .iter()
        .map(|k| vm.succeed(&format!("cat /var/lib/airlock/ssh/ssh_host_{k}_key.pub")).unwrap().trim().to_string())
        .collect();
    let secrets = airlock_appliance::firstboot::SECRETS
        .iter()
        .map(|s| (s.name.to_string(), vm.succeed(&format!("base64 -w0 {SECRETS_DIR}/{}", s.name)).unwrap()))
        .collect();
    let bundle = vm.succeed("cat /var/lib/airlock/tls/ca.pem").unwrap();
    let ca = airlock_appliance::firstboot::tls::Bundle::parse(&bundle).unwrap();
    Identity { machine_id, ssh_host_keys, secrets, ca_key_pem: ca.key_pem, ca_cert: ca.cert_pem }
}

/// Strings and byte strings that must not appear in the image: each secret, the base64 body
/// lines of private keys.
fn needles(id: &Identity, vm: &mut Vm) -> Vec<(String, Vec<u8>)> {
    use base64::Engine as _;
    let mut out = vec![(format!("machine-id {}", id.machine_id), id.machine_id.as_bytes().to_vec())];
    for (name, b64) in &id.secrets {
        out.push((name.clone(), base64::engine::general_purpose::STANDARD.decode(b64).unwrap()));
    }
    let pem_lines = |label: &str, pem: &str| -> Vec<(String, Vec<u8>)> {
        pem.lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 40)
            .map(|l| (format!("{label} line"), l.as_bytes().to_vec()))
            .collect()
    };
    out.extend(pem_lines("CA key", &id.ca_key_pem));
    for k in SSH_HOST_KEYS {
        let key = vm.succeed(&format!("cat /var/lib/airlock/ssh/ssh_host_{k}_key")).unwrap();
        out.extend(pem_lines(&format!("ssh host key {k}"), &key));
    }
    out
}

/// Which needles occur anywhere in `file` (every partition and the space between them).
fn find_in_file(file: &Path, needles: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut first_two = vec![false; 1 << 16];
    for (_, n) in needles {
        assert!(n.len() >= 8, "needle too short to search for");
        first_two[usize::from(u16::from_le_bytes([n[0], n[1]]))] = true;
    }
    let longest = needles.iter().map(|(_, n)| n.len()).max().unwrap();
    let mut f = std::fs::File::open(file).unwrap();
    let mut buf = vec![0u8; 16 << 20];
    let mut carry = 0usize;
    let mut found = Vec::new();
    loop {
        let n = f.read(&mut buf[carry..]).unwrap();
        if n == 0 {
            break;
        }
        let end = carry + n;
        let data = &buf[..end];
        for i in 0..end.saturating_sub(1) {
            if first_two[usize::from(u16::from_le_bytes([data[i], data[i + 1]]))] {
                for (name, needle) in needles {
                    if data[i..].starts_with(needle) && !found.contains(name) {
                        found.push(name.clone());
                    }
                }
            }
        }
        // Keep the tail, so a needle that spans two reads is still seen.
        let keep = (longest - 1).min(end);
        buf.copy_within(end - keep..end, 0);
        carry = keep;
    }
    found
}

/// The banner as printed (a file the banner unit writes), and its `ca sha256:` value.
fn banner_fingerprint(vm: &mut Vm) -> (String, String) {
    let banner = vm.succeed("cat /run/airlock/banner").unwrap();
    assert!(banner.starts_with("airlock: ready\n"), "{banner}");
    let fp = banner.lines().find_map(|l| l.strip_prefix("ca sha256: ")).expect("the banner shows the CA").to_string();
    (banner, fp)
}

/// SHA-256 fingerprint of a PEM certificate, by openssl.
fn openssl_fingerprint(pem: &Path) -> String {
    let out = host("openssl", &["x509", "-noout", "-fingerprint", "-sha256", "-in", pem.to_str().unwrap()]);
    out.trim().split_once('=').expect("openssl prints NAME=FINGERPRINT").1.to_string()
}

/// Copies the image (sparse) and puts `files` (path on the ESP → content) on its ESP with
/// mtools, as an operator does on a laptop.
fn image_with_site_files(image: &Path, dir: &Path, files: &[(&str, String)]) -> PathBuf {
    let copy = dir.join("site.raw");
    host("cp", &["--sparse=always", image.to_str().unwrap(), copy.to_str().unwrap()]);
    let layout = airlock::gpt::GptLayout::read(&std::fs::File::open(&copy).unwrap()).unwrap();
    let esp = layout.partitions.iter().find(|p| p.name == "esp").expect("an ESP");
    let target = format!("{}@@{}", copy.display(), esp.start);
    host("mmd", &["-i", &target, "::site"]);
    for (path, content) in files {
        let src = dir.join("site-file");
        std::fs::write(&src, content).unwrap();
        host("mcopy", &["-o", "-i", &target, src.to_str().unwrap(), &format!("::{path}")]);
    }
    copy
}

#[test]
fn first_boot_makes_a_unique_instance_that_survives_power_cuts_and_honours_the_site() {
    qemu_tests::init_logging();
    let built = build_test_image("demo").expect("building the demo test image");
    let work = tempfile::tempdir().unwrap();
    let forwards = vec![22, 80, 443];

    // ---- Instance A: power cuts during the first boot, then to ready. ----
    let mut rng = Rng::from_env();
    let mut a = Vm::boot(VmConfig {
        forwards: forwards.clone(),
        disk_size: Some(8 * GIB),
        ..VmConfig::new("instance-a", &built.image)
    })
    .unwrap();
    // The first cut lands inside provisioning itself (it takes about 1.5 s under TCG): while
    // secrets, host keys and the CA are being written.
    cut_after(&mut a, &mut rng, "Starting airlock-provision.service", PROVISION_CUT_MS, 1, "provisioning started");
    // The second cut lands while the stack starts for the first time, from the root's image
    // store: after it, nothing may be pulled or unpacked. The console stops showing unit status
    // at the login prompt; the kernel's line for the first container (the database) joining the
    // stack's network marks the stack's start.
    a.boot_again().unwrap();
    cut_after(
        &mut a,
        &mut rng,
        "podman1: port 1(veth0)",
        STACK_CUT_MS,
        2,
        "the stack's first container joined its network",
    );
    for cut in 3..=CUTS {
        a.boot_again().unwrap();
        let powered_on = Instant::now();
        let offset = a.console_len();
        let at = Duration::from_secs(CUT_WINDOW.0 + rng.below(CUT_WINDOW.1 - CUT_WINDOW.0));
        let ready =
            a.watch_console(offset, "airlock: ready", at).unwrap_or_else(|e| panic!("before power cut {cut}: {e:#}"));
        a.run_for(offset, at.saturating_sub(powered_on.elapsed()))
            .unwrap_or_else(|e| panic!("before power cut {cut}: {e:#}"));
        let when = if ready.is_some() { "after the ready banner" } else { "before the ready banner" };
        eprintln!("power cut {cut}/{CUTS}: {} s after power-on, {when}", at.as_secs());
        a.crash().unwrap();
    }
    a.boot_again().unwrap();
    a.wait_for_console("airlock: ready", FIRST_BOOT_TIMEOUT).expect("ready after the power cuts");
    assert_eq!(a.succeed("systemctl --failed --no-legend --plain").unwrap().trim(), "", "no unit failed");
    // Nothing was pulled in any boot the journal kept, and podman's writable store holds no
    // image: every image it knows is the read-only store's.
    let journal = a.succeed("journalctl -o cat --no-pager").unwrap();
    assert!(journal.contains("Reached target"), "the journal was read: {journal}");
    assert_eq!(
        journal.matches("Trying to pull").count(),
        0,
        "nothing is pulled after a power cut during the stack's start"
    );
    let images = a.succeed("podman images --format '{{.ReadOnly}} {{.Repository}}:{{.Tag}}'").unwrap();
    assert!(!images.trim().is_empty() && images.lines().all(|l| l.starts_with("true ")), "{images}");

    // Every secret is there, whole, and was made once: the generated log records each item
    // right after it became durable (or, after a cut between the two, on the next boot), so
    // exactly one record of each, with the hash of what is on disk, must be there; a second
    // record would mean a secret was replaced.
    let log = a.succeed("cat /var/lib/airlock/provision/generated.log").unwrap();
    eprintln!("generated.log after {CUTS} power cuts:\n{log}");
    let mut recorded: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in log.lines() {
        let (name, hash) = line.split_once(" sha256:").unwrap_or_else(|| panic!("bad log line {line:?}"));
        recorded.entry(name.to_string()).or_default().push(hash.to_string());
    }
    let mut files: Vec<(String, String)> = airlock_appliance::firstboot::SECRETS
        .iter()
        .map(|s| (s.name.to_string(), format!("{SECRETS_DIR}/{}", s.name)))
        .collect();
    files.push(("ca".into(), "/var/lib/airlock/tls/ca.pem".into()));
    files.push(("registry-htpasswd".into(), format!("{SECRETS_DIR}/registry-htpasswd")));
    for k in SSH_HOST_KEYS {
        files.push((format!("ssh_host_{k}_key"), format!("/var/lib/airlock/ssh/ssh_host_{k}_key")));
    }
    // The machine-id was committed to /etc before any secret was made; every record of it (a
    // cut between its record and the step's completion repeats the record) is the one in use.
    let machine_id_hash = a.succeed("tr -d '\\n' < /etc/machine-id | sha256sum | cut -d' ' -f1").unwrap();
    let machine_id_records = recorded.get("machine-id").cloned().unwrap_or_default();
    assert!(!machine_id_records.is_empty(), "the machine-id is recorded: {log}");
    assert!(machine_id_records.iter().all(|r| r == machine_id_hash.trim()), "{machine_id_records:?} {machine_id_hash}");
    for (name, path) in &files {
        let hash = a.succeed(&format!("sha256sum {path} | cut -d' ' -f1")).unwrap().trim().to_string();
        let records = recorded.remove(name).unwrap_or_default();
        assert_eq!(records, [hash], "{name}: exactly one record, of what is on disk: {log}");
    }
    recorded.remove("machine-id");
    assert!(recorded.is_empty(), "records of items nobody checks: {recorded:?}");
    for s in airlock_appliance::firstboot::SECRETS {
        let size: usize = a.succeed(&format!("stat -c %s {SECRETS_DIR}/{}", s.name)).unwrap().trim().parse().unwrap();
        let want = match s.encoding {
            airlock_appliance::firstboot::Encoding::Raw => s.bytes,
            airlock_appliance::firstboot::Encoding::Hex => 2 * s.bytes,
        };
        assert_eq!(size, want, "{} is whole", s.name);
    }
    // Every generated item (the CA's bundle holds its key) and the server's key.
    let mut private: Vec<String> = files.iter().map(|(_, path)| path.clone()).collect();
    private.push("/var/lib/airlock/tls/server.key".into());
    let modes = a.succeed(&format!("stat -c '%a %U %n' {SECRETS_DIR} {SECRETS_DIR}/* {}", private.join(" "))).unwrap();
    let lines: Vec<&str> = modes.lines().collect();
    assert_eq!(lines.first().copied(), Some(format!("700 root {SECRETS_DIR}").as_str()), "{modes}");
    for line in &lines[1..] {
        assert!(line.starts_with("600 root "), "tight permissions: {line}");
    }
    for path in &private {
        assert!(lines.iter().any(|l| l.ends_with(&format!(" {path}"))), "{path} was checked: {modes}");
    }
    // Not in the environment of any unit or in the journal (grep exits 1 for "not found" and
    // 2 for trouble, which must not pass for an absence).
    let db_password = a.succeed(&format!("cat {SECRETS_DIR}/db-password")).unwrap();
    a.succeed("journalctl -o cat --no-pager > /run/journal.txt && grep -q 'Reached target' /run/journal.txt").unwrap();
    let (code, out) = a.execute(&format!("grep -qF '{db_password}' /run/journal.txt")).unwrap();
    assert_eq!(code, 1, "the database password is not in the journal: {out}");
    let (code, out) =
        a.execute(&format!("grep -rqF -D skip '{db_password}' /etc /usr/lib/systemd /run/systemd")).unwrap();
    assert_eq!(code, 1, "the database password is in no unit or configuration file: {out}");

    // TLS from the host, trusting only the CA fetched over plain HTTP, whose fingerprint the
    // banner shows.
    let (banner, fp) = banner_fingerprint(&mut a);
    let ca_a = fetch_ca(&a, work.path(), "ca-a.crt");
    assert_eq!(openssl_fingerprint(&ca_a), fp, "the banner's fingerprint is the served CA's");
    for line in [
        "api: https://api.airlock.internal/api/status",
        "console: https://app.airlock.internal/",
        "registry: https://registry.airlock.internal/",
        "client setup: http://10.0.2.15/setup/",
        "ca certificate: http://10.0.2.15/ca.crt",
    ] {
        assert!(banner.contains(line), "banner lacks {line:?}: {banner}");
    }
    // The stack uses the secrets: the API reaches the database with the generated password.
    let (code, body) = curl_tls(&mut a, &ca_a, "api.airlock.internal", "/api/status");
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("\"database\": \"ok\""), "{body}");
    // ... as its own database user, with the service password, which may read but not write.
    assert!(body.contains("\"database_user\": \"api\""), "{body}");
    let (_, out) = a
        .execute(
            "podman exec db sh -c 'REDISCLI_AUTH=$(cat /run/secrets/db-service-password) redis-cli --user api set probe 1'",
        )
        .unwrap();
    assert!(out.contains("NOPERM"), "the API's database user cannot write: {out}");
    // The registry answers only its user, through nginx as on its own port.
    let (code, _) = curl_tls(&mut a, &ca_a, "registry.airlock.internal", "/v2/_catalog");
    assert_eq!(code, "401", "the registry refuses a client without credentials");
    let registry_password = a.succeed(&format!("cat {SECRETS_DIR}/registry-password")).unwrap();
    let creds = format!("{}:{}", airlock_appliance::firstboot::REGISTRY_USER, registry_password.trim());
    let (code, body) = curl_tls_as(&mut a, &ca_a, "registry.airlock.internal", "/v2/_catalog", Some(&creds));
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("demo.airlock.internal/app"), "{body}");
    let (code, body) = curl_tls(&mut a, &ca_a, "mirror.airlock.internal", "/");
    assert_eq!(code, "200", "{body}");
    let (code, _) = curl_tls(&mut a, &ca_a, "app.airlock.internal", "/");
    assert_eq!(code, "200");
    // The address DHCP gave it is in the certificate too: recorded once the network was up
    // (airlock-address.service), the certificate re-issued before nginx started.
    assert_eq!(a.succeed("cat /var/lib/airlock/provision/addresses").unwrap(), "10.0.2.15\n");
    let port = a.host_port(443);
    let by_address = host(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            ca_a.to_str().unwrap(),
            "--connect-to",
            &format!("10.0.2.15:{port}:127.0.0.1:{port}"),
            &format!("https://10.0.2.15:{port}/ca.crt"),
        ],
    );
    assert_eq!(by_address, "200", "TLS to the DHCP address verifies against the CA");
    let id_a = read_identity(&mut a);
    let needles_a = needles(&id_a, &mut a);
    a.shutdown(Duration::from_secs(180)).unwrap();
    // The filesystems that lost power three times are clean after the boot that followed.
    e2fsck_partitions(a.overlay_path(), EXT4_PARTITIONS);
    drop(a);

    // ---- Instance B: a site configuration, then an invalid one. ----
    let site_ca = airlock_appliance::firstboot::tls::make_ca("Example Corp test CA").unwrap();
    let names: Vec<String> =
        ["api", "app", "registry", "mirror"].iter().map(|n| format!("{n}.corp.example.internal")).collect();
    let site_cert = airlock_appliance::firstboot::tls::issue_server(&site_ca, &names).unwrap();
    let admin_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfRn6jcbOtp3Hu3ZtVvWw8Nik8jMIFO2s7K7yrBZCPs admin@corp";
    let site_toml = format!(
        "hostname = \"pulumi-b\"\ndomain = \"corp.example.internal\"\nadmin_ssh_keys = [\"{admin_key}\"]\n\n\
         [network]\nmode = \"static\"\naddress = \"10.0.2.15/24\"\ngateway = \"10.0.2.2\"\ndns = [\"10.0.2.3\"]\n\
         ntp = [\"10.0.2.2\"]\n\n[tls]\ncertificate = \"site/server.crt\"\nkey = \"site/server.key\"\nca = \"site/ca.crt\"\n"
    );
    let site_image = image_with_site_files(
        &built.image,
        work.path(),
        &[
            ("airlock.toml", site_toml),
            ("site/server.crt", site_cert.cert_pem.clone()),
            ("site/server.key", site_cert.key_pem.clone()),
            ("site/ca.crt", site_ca.cert_pem.clone()),
        ],
    );
    let mut b = Vm::boot(VmConfig {
        forwards: forwards.clone(),
        disk_size: Some(8 * GIB),
        ..VmConfig::new("instance-b", &site_image)
    })
    .unwrap();
    b.wait_for_console("airlock: ready", FIRST_BOOT_TIMEOUT).expect("instance B is ready");
    assert_eq!(b.succeed("hostname").unwrap().trim(), "pulumi-b");
    let addr = b.succeed("ip -4 -o addr show scope global").unwrap();
    assert!(addr.contains("inet 10.0.2.15/24") && !addr.contains("dynamic"), "a static address: {addr}");
    let route = b.succeed("ip -4 route show default").unwrap();
    assert!(route.contains("via 10.0.2.2"), "{route}");
    assert!(b.succeed("resolvectl dns").unwrap().contains("10.0.2.3"));
    // On the data partition (the root is read-only), where sshd's AuthorizedKeysFile looks.
    assert_eq!(b.succeed("cat /var/lib/airlock/ssh/authorized_keys/root").unwrap().trim(), admin_key);
    // sshd serves this instance's host key from the data partition.
    b.wait_for_unit("ssh.service", BOOT_TIMEOUT).unwrap();
    let scanned = host("ssh-keyscan", &["-T", "30", "-t", "ed25519", "-p", &b.host_port(22).to_string(), "127.0.0.1"]);
    let served = b.succeed("cut -d' ' -f2 /var/lib/airlock/ssh/ssh_host_ed25519_key.pub").unwrap();
    assert!(scanned.contains(served.trim()), "ssh-keyscan: {scanned}; the instance's key: {served}");
    // sshd's effective settings: that one host key, no X11 or agent forwarding, keys only.
    let effective = b.succeed("sshd -T").unwrap();
    let setting = |name: &str| -> Vec<&str> {
        effective.lines().filter_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).collect()
    };
    assert_eq!(setting("hostkey"), ["/var/lib/airlock/ssh/ssh_host_ed25519_key"], "{effective}");
    assert_eq!(setting("x11forwarding"), ["no"], "{effective}");
    assert_eq!(setting("allowagentforwarding"), ["no"], "{effective}");
    assert_eq!(setting("passwordauthentication"), ["no"], "{effective}");
    // The site's certificate is served, the site's CA published, its fingerprint shown.
    let (banner, fp) = banner_fingerprint(&mut b);
    assert!(banner.contains("api: https://api.corp.example.internal/api/status"), "{banner}");
    let ca_b = fetch_ca(&b, work.path(), "ca-b.crt");
    assert_eq!(std::fs::read_to_string(&ca_b).unwrap(), site_ca.cert_pem, "the site's CA is published");
    assert_eq!(openssl_fingerprint(&ca_b), fp);
    let (code, body) = curl_tls(&mut b, &ca_b, "api.corp.example.internal", "/api/status");
    assert!(code == "200" && body.contains("\"database\": \"ok\""), "{code} {body}");
    let id_b = read_identity(&mut b);
    let needles_b = needles(&id_b, &mut b);

    // Two instances of one image share nothing that must be unique.
    assert_ne!(id_a.machine_id, id_b.machine_id);
    for (ka, kb) in id_a.ssh_host_keys.iter().zip(&id_b.ssh_host_keys) {
        assert_ne!(ka, kb, "SSH host keys");
    }
    for (name, va) in &id_a.secrets {
        assert_ne!(va, &id_b.secrets[name], "{name}");
    }
    assert_ne!(id_a.ca_cert, id_b.ca_cert, "generated CA");
    assert_ne!(id_a.ca_key_pem, id_b.ca_key_pem, "CA key");

    // An invalid site configuration: the console names the key, nothing of the stack starts.
    b.succeed("printf '[network]\\nmode = \"static\"\\naddress = \"10.0.2.300/24\"\\n' > /efi/airlock.toml && sync")
        .unwrap();
    b.reboot(BOOT_TIMEOUT).unwrap();
    b.wait_for_console("airlock: failed", BOOT_TIMEOUT).expect("the banner says failed");
    b.wait_for_console("network.address: `10.0.2.300/24` is not an IPv4 address", Duration::from_secs(30))
        .expect("the console names the wrong key and why");
    let banner = b.succeed("cat /run/airlock/banner").unwrap();
    assert!(banner.contains("error: ") && banner.contains("network.address"), "{banner}");
    for unit in ["db.service", "migrate.service", "api.service", "console.service", "nginx.service"] {
        let show = b.succeed(&format!("systemctl show --property=LoadState,ActiveState {unit}")).unwrap();
        let mut state: Vec<&str> = show.lines().collect();
        state.sort();
        assert!(
            state == ["ActiveState=inactive", "LoadState=loaded"]
                || state == ["ActiveState=failed", "LoadState=loaded"],
            "{unit} exists and must not run on an invalid site configuration: {state:?}"
        );
    }
    assert_eq!(b.succeed("podman ps -q").unwrap().trim(), "", "no container runs");
    b.shutdown(Duration::from_secs(180)).unwrap();
    drop(b);

    // The image itself holds none of either instance's secrets (all partitions, raw bytes).
    let all: Vec<(String, Vec<u8>)> = needles_a
        .into_iter()
        .map(|(n, b)| (format!("A {n}"), b))
        .chain(needles_b.into_iter().map(|(n, b)| (format!("B {n}"), b)))
        .collect();
    let found = find_in_file(&built.image, &all);
    assert!(found.is_empty(), "secrets found in the pristine image: {found:?}");
    let probe = work.path().join("probe.bin");
    std::fs::write(&probe, [vec![0u8; 100], all[3].1.clone(), vec![1u8; 100]].concat()).unwrap();
    assert_eq!(find_in_file(&probe, &all), vec![all[3].0.clone()], "the search finds what is there");
}
