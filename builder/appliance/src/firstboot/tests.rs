//! The step engine and the provisioning steps that need no host tools, run in a temporary
//! directory standing in for `/`, the ESP, the data partition and `/run`.

use super::*;
use std::os::unix::fs::PermissionsExt;

fn paths(dir: &Path) -> Paths {
    let p = Paths { root: dir.join("root"), esp: dir.join("esp"), state: dir.join("state"), run: dir.join("run") };
    for d in [&p.root, &p.esp, &p.state, &p.run] {
        fs::create_dir_all(d).unwrap();
    }
    fs::create_dir_all(p.root.join("etc")).unwrap();
    fs::write(p.root.join("etc/hostname"), "airlock-demo\n").unwrap();
    fs::write(p.root.join("etc/machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
    p
}

/// Every step but the SSH host keys (ssh-keygen is the guest's).
fn steps() -> Vec<(&'static str, When, StepFn)> {
    STEPS.iter().copied().filter(|(n, _, _)| *n != "ssh-host-keys").collect()
}

fn log_lines(p: &Paths) -> Vec<String> {
    fs::read_to_string(p.generated_log()).unwrap().lines().map(String::from).collect()
}

#[test]
fn first_boot_makes_everything_and_a_second_boot_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    provision(&p, &steps()).unwrap();
    for s in SECRETS {
        let f = p.secrets().join(s.name);
        let md = fs::metadata(&f).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600, "{}", s.name);
        let expected = match s.encoding {
            Encoding::Raw => s.bytes,
            Encoding::Hex => 2 * s.bytes,
        };
        assert_eq!(md.len() as usize, expected, "{}", s.name);
    }
    assert_eq!(fs::metadata(p.secrets()).unwrap().permissions().mode() & 0o777, 0o700);
    let key = fs::read_to_string(p.tls().join("server.key")).unwrap();
    let cert = fs::read_to_string(p.tls().join("server.crt")).unwrap();
    let ca = fs::read_to_string(p.tls().join("ca.crt")).unwrap();
    let ctx = read_site(&p).unwrap();
    let names = certificate_names(&ctx);
    assert_eq!(names[..3], ["airlock-demo", "airlock-demo.airlock.internal", "api.airlock.internal"]);
    tls::check_site(&cert, &key, &ca, &names).unwrap();
    let env = fs::read_to_string(p.run.join("airlock/site.env")).unwrap();
    assert!(env.contains(&format!("AIRLOCK_CA_SHA256={}\n", tls::fingerprint(&ca).unwrap())), "{env}");
    assert!(!p.run.join("systemd/network/10-airlock-site.network").exists());
    assert!(!p.error_file().exists());
    let log = log_lines(&p);
    // The secrets, the CA, the registry's htpasswd and the machine-id.
    assert_eq!(log.len(), SECRETS.len() + 3, "{log:?}");
    assert!(log[0].starts_with("machine-id sha256:"), "{log:?}");
    assert_eq!(
        fs::read_to_string(p.saved_machine_id()).unwrap(),
        "0123456789abcdef0123456789abcdef\n",
        "the machine-id is kept on the data partition for PID 1's next boot"
    );
    let htpasswd = fs::read_to_string(p.secrets().join("registry-htpasswd")).unwrap();
    let (user, hash) = htpasswd.trim().split_once(':').unwrap();
    assert_eq!(user, REGISTRY_USER);
    let password = fs::read_to_string(p.secrets().join("registry-password")).unwrap();
    assert!(bcrypt::verify(password.trim(), hash).unwrap(), "the htpasswd holds the password's hash");
    let auth = fs::read_to_string(p.run.join("containers/0/auth.json")).unwrap();
    let auth: serde_json::Value = serde_json::from_str(&auth).unwrap();
    let basic = auth["auths"]["127.0.0.1:5000"]["auth"].as_str().unwrap();
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.decode(basic).unwrap();
    assert_eq!(String::from_utf8(basic).unwrap(), format!("airlock:{}", password.trim()));
    assert_eq!(fs::metadata(p.run.join("containers/0/auth.json")).unwrap().permissions().mode() & 0o777, 0o600);

    let before: Vec<Vec<u8>> = SECRETS.iter().map(|s| fs::read(p.secrets().join(s.name)).unwrap()).collect();
    provision(&p, &steps()).unwrap();
    let after: Vec<Vec<u8>> = SECRETS.iter().map(|s| fs::read(p.secrets().join(s.name)).unwrap()).collect();
    assert_eq!(before, after);
    assert_eq!(fs::read_to_string(p.tls().join("ca.crt")).unwrap(), ca);
    assert_eq!(fs::read_to_string(p.tls().join("server.crt")).unwrap(), cert, "a current certificate is kept");
    assert_eq!(log_lines(&p), log);
}

#[test]
fn an_interrupted_first_boot_is_finished_without_remaking_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    // As if the power went out in the middle of the secrets step: one secret complete but not
    // yet recorded, one half-written under its temporary name, no completion record.
    fs::create_dir_all(p.secrets()).unwrap();
    fs::write(p.secrets().join("db-password"), "made-before-the-cut").unwrap();
    fs::write(p.secrets().join(".pulumi-local-keys.partial"), "half").unwrap();
    provision(&p, &steps()).unwrap();
    assert_eq!(fs::read_to_string(p.secrets().join("db-password")).unwrap(), "made-before-the-cut");
    assert_eq!(fs::read(p.secrets().join("pulumi-local-keys")).unwrap().len(), 32);
    assert!(!p.secrets().join(".pulumi-local-keys.partial").exists(), "the leftover was replaced");
    // Every item is recorded exactly once: the one made before the cut as it is.
    let log = log_lines(&p);
    let made_before = format!("db-password sha256:{}", sha256_hex(b"made-before-the-cut"));
    assert_eq!(log.iter().filter(|l| l.starts_with("db-password ")).collect::<Vec<_>>(), [&made_before], "{log:?}");
    assert_eq!(log.iter().filter(|l| l.starts_with("pulumi-local-keys ")).count(), 1);
    // A cut between the CA's write and its record: the next boot records it, once.
    let without_ca: Vec<&String> = log.iter().filter(|l| !l.starts_with("ca ")).collect();
    assert_eq!(without_ca.len(), log.len() - 1, "{log:?}");
    fs::write(p.generated_log(), without_ca.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    fs::remove_file(p.provision().join("done/ca")).unwrap();
    provision(&p, &steps()).unwrap();
    provision(&p, &steps()).unwrap();
    let ca = fs::read(p.tls().join("ca.pem")).unwrap();
    let again = log_lines(&p);
    assert_eq!(
        again.iter().filter(|l| l.starts_with("ca ")).collect::<Vec<_>>(),
        [&format!("ca sha256:{}", sha256_hex(&ca))]
    );
    assert_eq!(again.len(), log.len(), "{again:?}");
}

#[test]
fn a_failing_step_is_not_recorded_and_runs_again() {
    fn fails(_: &Instance) -> Result<()> {
        bail!("disk on fire")
    }
    fn marks(ctx: &Instance) -> Result<()> {
        store::append_line(&ctx.paths.state.join("runs"), "ran")
    }
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    let err = provision(&p, &[("marks", When::Once, marks), ("fails", When::Once, fails)]).unwrap_err();
    assert!(format!("{err:#}").contains("provisioning step `fails`: disk on fire"), "{err:#}");
    assert!(fs::read_to_string(p.error_file()).unwrap().contains("disk on fire"));
    provision(&p, &[("marks", When::Once, marks)]).unwrap();
    assert_eq!(fs::read_to_string(p.state.join("runs")).unwrap(), "ran\n", "a recorded once-step is skipped");
    assert!(!p.error_file().exists(), "a good run clears the old error");
}

#[test]
fn an_invalid_site_configuration_stops_before_anything_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    fs::write(p.esp.join("airlock.toml"), "[network]\nmode = \"static\"\naddress = \"10.0.2.300/24\"\n").unwrap();
    let err = format!("{:#}", provision(&p, &steps()).unwrap_err());
    assert!(err.contains("network.address: `10.0.2.300/24` is not an IPv4 address"), "{err}");
    assert!(fs::read_to_string(p.error_file()).unwrap().contains("network.address"));
    assert!(!p.secrets().exists());
}

#[test]
fn site_settings_are_applied_and_withdrawn() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfRn6jcbOtp3Hu3ZtVvWw8Nik8jMIFO2s7K7yrBZCPs admin@site";
    fs::write(
        p.esp.join("airlock.toml"),
        format!(
            "hostname = \"pulumi1\"\ndomain = \"corp.internal\"\nadmin_ssh_keys = [\"{key}\"]\n[network]\nmode = \"static\"\n\
             address = \"10.0.2.15/24\"\ngateway = \"10.0.2.2\"\ndns = [\"10.0.2.3\"]\nntp = [\"10.0.2.2\"]\n\
             [pulumi]\nlicense_key = \"LICENSE-123\"\n"
        ),
    )
    .unwrap();
    provision(&p, &steps()).unwrap();
    assert_eq!(fs::read_to_string(p.hostname_file()).unwrap(), "pulumi1\n");
    assert!(fs::read_to_string(p.hosts_file()).unwrap().contains("pulumi1.corp.internal pulumi1"));
    assert_eq!(fs::read_to_string(p.root.join("etc/hostname")).unwrap(), "airlock-demo\n", "the root is not written");
    let net = fs::read_to_string(p.run.join("systemd/network/10-airlock-site.network")).unwrap();
    assert!(net.contains("Address=10.0.2.15/24\nGateway=10.0.2.2\nDNS=10.0.2.3\n"), "{net}");
    assert!(fs::read_to_string(p.run.join("systemd/timesyncd.conf.d/airlock.conf")).unwrap().contains("NTP=10.0.2.2"));
    assert_eq!(fs::read_to_string(p.root_authorized_keys()).unwrap(), format!("{key}\n"));
    assert!(!p.root.join("root").exists(), "the root is not written");
    assert_eq!(fs::read_to_string(p.secrets().join("pulumi-license-key")).unwrap(), "LICENSE-123");
    let ctx = read_site(&p).unwrap();
    let cert = fs::read_to_string(p.tls().join("server.crt")).unwrap();
    let (key_pem, ca) =
        (fs::read_to_string(p.tls().join("server.key")).unwrap(), fs::read_to_string(p.tls().join("ca.crt")).unwrap());
    tls::check_site(&cert, &key_pem, &ca, &certificate_names(&ctx)).unwrap();
    assert!(certificate_names(&ctx).contains(&"10.0.2.15".to_string()));

    // Back to the defaults: the settings go away, the identity stays.
    fs::remove_file(p.esp.join("airlock.toml")).unwrap();
    provision(&p, &steps()).unwrap();
    assert!(!p.run.join("systemd/network/10-airlock-site.network").exists());
    assert!(!p.root_authorized_keys().exists());
    assert!(!p.secrets().join("pulumi-license-key").exists());
    assert_eq!(fs::read_to_string(p.tls().join("ca.crt")).unwrap(), ca);
    assert_ne!(fs::read_to_string(p.tls().join("server.crt")).unwrap(), cert, "re-issued for the new names");
}

#[test]
fn a_site_certificate_replaces_the_generated_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    let site_ca = tls::make_ca("site CA").unwrap();
    let names: Vec<String> = site::SERVICE_NAMES.iter().map(|n| format!("{n}.corp.internal")).collect();
    let server = tls::issue_server(&site_ca, &names).unwrap();
    fs::create_dir_all(p.esp.join("site")).unwrap();
    fs::write(p.esp.join("site/server.crt"), &server.cert_pem).unwrap();
    fs::write(p.esp.join("site/server.key"), &server.key_pem).unwrap();
    fs::write(p.esp.join("site/ca.crt"), &site_ca.cert_pem).unwrap();
    let toml = "domain = \"corp.internal\"\n[network]\nmode = \"static\"\naddress = \"10.0.2.15/24\"\n[tls]\ncertificate = \"site/server.crt\"\nkey = \"site/server.key\"\nca = \"site/ca.crt\"\n";
    fs::write(p.esp.join("airlock.toml"), toml).unwrap();
    provision(&p, &steps()).unwrap();
    assert_eq!(fs::read_to_string(p.tls().join("server.crt")).unwrap(), server.cert_pem);
    assert_eq!(fs::read_to_string(p.tls().join("ca.crt")).unwrap(), site_ca.cert_pem);
    // A certificate for other names is refused, naming the key.
    fs::write(p.esp.join("airlock.toml"), toml.replace("corp.internal", "other.internal")).unwrap();
    let err = format!("{:#}", provision(&p, &steps()).unwrap_err());
    assert!(err.contains("tls.certificate: does not cover `api.other.internal`"), "{err}");
}

#[test]
fn addresses_from_the_network_join_the_certificate_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    provision(&p, &steps()).unwrap();
    let cert = || fs::read_to_string(p.tls().join("server.crt")).unwrap();
    let before = cert();
    // No network yet: nothing recorded, nothing re-issued.
    provision(&p, ADDRESS_STEPS).unwrap();
    assert_eq!(cert(), before);
    assert!(!p.addresses().exists());

    let ip = "2: enp0s2    inet 10.0.2.15/24 metric 1024 brd 10.0.2.255 scope global dynamic enp0s2\\       valid_lft 86313sec preferred_lft 86313sec\n\
              3: enp0s3    inet 192.168.7.4/16 brd 192.168.255.255 scope global enp0s3\\       valid_lft forever\n";
    assert_eq!(
        parse_addresses(ip),
        ["10.0.2.15".parse::<std::net::Ipv4Addr>().unwrap(), "192.168.7.4".parse().unwrap()]
    );
    fs::write(p.run.join("airlock/test-addresses"), ip).unwrap();
    provision(&p, ADDRESS_STEPS).unwrap();
    let with_address = cert();
    assert_ne!(with_address, before, "re-issued for the new addresses");
    let ctx = read_site(&p).unwrap();
    let names = certificate_names(&ctx);
    assert!(names.contains(&"10.0.2.15".to_string()) && names.contains(&"192.168.7.4".to_string()), "{names:?}");
    let (key, ca) =
        (fs::read_to_string(p.tls().join("server.key")).unwrap(), fs::read_to_string(p.tls().join("ca.crt")).unwrap());
    tls::check_site(&with_address, &key, &ca, &names).unwrap();

    // The next boot: the certificate made before the network already names them, and the
    // same addresses after it change nothing; an unplugged cable keeps the record.
    provision(&p, &steps()).unwrap();
    provision(&p, ADDRESS_STEPS).unwrap();
    assert_eq!(cert(), with_address);
    fs::remove_file(p.run.join("airlock/test-addresses")).unwrap();
    provision(&p, ADDRESS_STEPS).unwrap();
    assert_eq!(cert(), with_address);
}

/// Whoever holds the stick can write the ESP: a huge or odd file it names is refused, naming
/// the setting, without being read whole.
#[test]
fn esp_files_are_capped_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    let site = "[pulumi]\nlicense_key_file = \"site/license\"\n";
    fs::create_dir_all(p.esp.join("site")).unwrap();
    fs::write(p.esp.join("airlock.toml"), site).unwrap();
    let license = p.esp.join("site/license");
    let run = |p: &Paths| format!("{:#}", provision(p, &steps()).unwrap_err());

    // A gigabyte license file (sparse: nothing is written) is not read.
    fs::File::create(&license).unwrap().set_len(1 << 30).unwrap();
    let err = run(&p);
    assert!(err.contains("pulumi.license_key_file") && err.contains("is larger than"), "{err}");
    // Binary content or a second line is not a license key.
    fs::write(&license, b"KEY\x00\x01").unwrap();
    assert!(run(&p).contains("must be the key on one line"), "{}", run(&p));
    fs::write(&license, "KEY-1\nSECOND-LINE\n").unwrap();
    assert!(run(&p).contains("must be the key on one line"));
    fs::write(&license, "\n  KEY-123\n").unwrap();
    provision(&p, &steps()).unwrap();
    assert_eq!(fs::read_to_string(p.secrets().join("pulumi-license-key")).unwrap(), "KEY-123");

    // airlock.toml itself: capped, and a directory in its place is refused.
    fs::File::create(p.esp.join("airlock.toml")).unwrap().set_len(1 << 30).unwrap();
    let err = format!("{:#}", read_site(&p).unwrap_err());
    assert!(err.contains("site configuration") && err.contains("is larger than"), "{err}");
    fs::remove_file(p.esp.join("airlock.toml")).unwrap();
    fs::create_dir(p.esp.join("airlock.toml")).unwrap();
    let err = format!("{:#}", read_site(&p).unwrap_err());
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_data_partition_of_another_instance_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    fs::create_dir_all(p.saved_machine_id().parent().unwrap()).unwrap();
    fs::write(p.saved_machine_id(), "fedcba9876543210fedcba9876543210\n").unwrap();
    let err = format!("{:#}", provision(&p, &steps()).unwrap_err());
    assert!(
        err.contains(
            "holds machine-id fedcba9876543210fedcba9876543210 but the system runs as 0123456789abcdef0123456789abcdef"
        ),
        "{err}"
    );
    assert!(!p.secrets().exists(), "nothing is made for the wrong instance");
}

/// tmpfiles' `dbus.conf` links `/var/lib/dbus/machine-id` to `/etc/machine-id` before provisioning
/// runs: the link is replaced by a file holding the id, which the next boot's PID 1 reads.
#[test]
fn the_machine_id_replaces_debians_link_to_etc() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    let saved = p.saved_machine_id();
    fs::create_dir_all(saved.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(p.etc("machine-id"), &saved).unwrap();
    provision(&p, &steps()).unwrap();
    let md = fs::symlink_metadata(&saved).unwrap();
    assert!(md.file_type().is_file(), "the link became a file: {md:?}");
    assert_eq!(fs::read_to_string(&saved).unwrap(), "0123456789abcdef0123456789abcdef\n");
}
