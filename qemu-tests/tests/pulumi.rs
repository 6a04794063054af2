//! The Pulumi Self-Hosted appliance (`images/pulumi-selfhosted`), booted end to end: its
//! overlay and units exactly as in production, Pulumi's four images replaced by the TEST
//! STAND-INS of `qemu-tests/specs/pulumi-contract`, which check the contract Pulumi documents
//! for each image and refuse to run when the units break it.
//!
//! One VM, four boots, `airlock.toml` on the ESP changed from inside the guest between them
//! (VM time is the scarcest thing in CI):
//! 1. no license key (the image's own `airlock.toml`): `airlock: failed` naming
//!    `pulumi-secrets.service`, and nothing of the stack started or pulled (podman knows only
//!    the four images of the root's read-only store);
//! 2. a license key and a domain: `airlock: ready`; the API answers `/api/status` through nginx
//!    at `https://api.<domain>` and the console at `https://app.<domain>`, to a host client that
//!    trusts only the instance's CA; the stand-ins saw every setting they require; MySQL
//!    publishes no port outside the stack's network; the API container got every secret as a
//!    podman secret and none in its environment;
//! 3. `[smtp]` and `[saml]` added: the API sees them (as secrets), the console enables SAML; the
//!    migrations apply nothing, the stack comes back;
//! 4. `[smtp]` and `[saml]` removed: their podman secrets are gone, the API no longer sees them.
#![allow(clippy::unwrap_used, reason = "a test stops at the first unexpected error")]

mod common;

use base64::Engine as _;
use common::*;
use qemu_tests::{BOOT_TIMEOUT, Vm, VmConfig};
use std::path::Path;
use std::time::{Duration, Instant};

/// A boot that starts the stack under TCG: the first one also initializes MariaDB (the images
/// are unpacked in the root already). A hang detector, not a speed requirement.
const STACK_TIMEOUT: Duration = Duration::from_secs(1200);
const DOMAIN: &str = "pulumi.test.internal";

fn base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A license key shaped like Pulumi's (a JWT), plainly not one of theirs.
fn test_license_key() -> String {
    format!(
        "{}.{}.{}",
        base64url(br#"{"alg":"RS256","typ":"JWT"}"#),
        base64url(br#"{"sub":"airlock-qemu-test","note":"TEST LICENSE KEY, not Pulumi's"}"#),
        base64url(b"not a signature")
    )
}

/// Writes `files` (path on the ESP, content) from inside the guest, as an operator would on
/// the FAT partition (`/efi` is an automount of it).
fn write_site(vm: &mut Vm, files: &[(&str, String)]) {
    for (path, content) in files {
        let b64 = base64::engine::general_purpose::STANDARD.encode(content);
        vm.succeed(&format!("mkdir -p \"$(dirname /efi/{path})\" && echo {b64} | base64 -d > /efi/{path}")).unwrap();
    }
    vm.succeed("sync /efi/airlock.toml").unwrap();
}

/// `curl` from the host over TLS through the forward of 443, trusting only `ca`, reaching
/// `name`; returns (HTTP status, body).
fn curl_tls(vm: &Vm, ca: &Path, name: &str, path: &str) -> (String, String) {
    let port = vm.host_port(443);
    let out = host(
        "curl",
        &[
            "-sS",
            "--max-time",
            "60",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("{name}:{port}:127.0.0.1"),
            "-w",
            "\n%{http_code}",
            &format!("https://{name}:{port}{path}"),
        ],
    );
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.to_string(), body.to_string())
}

/// The API stand-in's `/api/status` through nginx: what it saw of its contract.
fn api_contract(vm: &Vm, ca: &Path) -> serde_json::Value {
    let (code, body) = curl_tls(vm, ca, &format!("api.{DOMAIN}"), "/api/status");
    assert_eq!(code, "200", "GET https://api.{DOMAIN}/api/status: {body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["status"], "ok", "{status}");
    assert_eq!(status["stand_in"], "pulumi/service", "{status}");
    status["contract"].clone()
}

/// The console stand-in's page through nginx.
fn console_page(vm: &Vm, ca: &Path) -> String {
    let (code, body) = curl_tls(vm, ca, &format!("app.{DOMAIN}"), "/");
    assert_eq!(code, "200", "GET https://app.{DOMAIN}/: {body}");
    assert!(body.contains("Pulumi console: TEST STAND-IN"), "{body}");
    body
}

/// What the migrations stand-in said on this boot.
fn migrations_log(vm: &mut Vm) -> String {
    vm.succeed("journalctl -b -o cat -u migrations.service | grep 'TEST STAND-IN'").unwrap()
}

/// Waits for `airlock: ready`, checks that nothing failed on the way, and prints when each
/// part of the stack came up (seconds since the kernel started).
fn wait_ready(vm: &mut Vm, boot: &str) {
    vm.wait_for_console("airlock: ready", STACK_TIMEOUT).expect("the banner says ready");
    assert_eq!(vm.succeed("systemctl --failed --no-legend --plain").unwrap().trim(), "", "no unit failed");
    let units = "airlock-provision.service pulumi-secrets.service docker-registry.service db.service \
                 migrations.service api.service console.service airlock-ready.target";
    let times = vm
        .succeed(&format!("for u in {units}; do echo $u $(systemctl show -P ActiveEnterTimestampMonotonic $u); done"))
        .unwrap();
    let line: Vec<String> = times
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(unit, us)| format!("{unit} {:.0} s", us.trim().parse::<f64>().unwrap_or(f64::NAN) / 1e6))
        .collect();
    eprintln!("{boot}: active at {}", line.join(", "));
}

/// The API container was given every secret with `--secret` (podman secrets) and none in its
/// environment: the command quadlet generated names each secret and sets none of their
/// variables, and no text secret's value (each line of it) appears anywhere in `podman inspect`.
/// (`PULUMI_LOCAL_KEYS` is 32 raw bytes in a file secret: only its `--secret` is checked.)
fn check_api_secrets(vm: &mut Vm, secrets: &[(&str, &str, &str)]) {
    let inspect = vm.succeed("podman inspect api").unwrap();
    let create = vm.succeed("podman inspect api --format '{{join .Config.CreateCommand \" \"}}'").unwrap();
    for (secret, variable, file) in secrets {
        if !variable.is_empty() {
            let value = vm.succeed(&format!("cat /var/lib/airlock/secrets/{file}")).unwrap();
            let lines: Vec<&str> = value.lines().filter(|l| l.len() >= 8 && !l.starts_with("-----")).collect();
            assert!(!lines.is_empty(), "{file} holds a value to look for");
            for line in lines {
                assert!(!inspect.contains(line), "the value of {secret} is in `podman inspect api`");
            }
        }
        assert!(create.contains(&format!("--secret {secret}")), "{secret} is a podman secret of the API: {create}");
        if !variable.is_empty() {
            assert!(!create.contains(&format!("{variable}=")), "{variable} is set in the environment: {create}");
        }
    }
}

#[test]
fn pulumi_appliance_runs_against_its_contract_stand_ins() {
    qemu_tests::init_logging();
    let started = Instant::now();
    let spec_dir = qemu_tests::test_image::repo_root().join("qemu-tests/specs/pulumi-contract");
    let built = build_spec(&qemu_tests::test_image::Recipe {
        spec: spec_dir.join("appliance.toml"),
        scripts: vec![spec_dir.join("prepare")],
        formats: Some(vec![airlock::outputs::Format::Raw]),
        // Verity, but no Secure Boot keys: the image boots on firmware with Secure Boot off.
        secure_boot: false,
        signed: false,
        version: None,
        overlays: Vec::new(),
    })
    .expect("building the Pulumi appliance with its stand-ins");
    let test = built.plan.test.as_ref().expect("a test build");
    assert_eq!(test.stand_ins.len(), 4, "all four of Pulumi's images are stand-ins");
    let manifest = airlock::manifest::Manifest::read(&built.dir.join("manifest.json")).unwrap();
    assert_eq!(manifest.appliance.version, "1.0.0-test");
    assert_eq!(manifest.test_build.as_ref().map(|t| t.stand_ins.len()), Some(4), "the manifest names the stand-ins");
    eprintln!("built in {} s", started.elapsed().as_secs());
    let work = tempfile::tempdir().unwrap();

    let mut vm = Vm::boot(VmConfig { forwards: vec![80, 443], ..VmConfig::new("pulumi", &built.image) }).unwrap();
    eprintln!("accelerator: {:?}", vm.accel());

    // ---- Boot 1: no license key. ----
    let t = Instant::now();
    vm.wait_for_console("airlock: failed", BOOT_TIMEOUT).expect("without a license key the banner says failed");
    let banner = vm.succeed("cat /run/airlock/banner").unwrap();
    assert!(banner.contains("appliance: pulumi-selfhosted 1.0.0-test"), "{banner}");
    assert!(banner.contains("failed: pulumi-secrets.service"), "the banner names pulumi-secrets.service: {banner}");
    let why = vm.succeed("journalctl -b -o cat -u pulumi-secrets.service").unwrap();
    assert!(why.contains("no Pulumi license key") && why.contains("license_key"), "{why}");
    for unit in ["db.service", "migrations.service", "api.service", "console.service"] {
        let state = vm.execute(&format!("systemctl is-active {unit}")).unwrap().1;
        assert_ne!(state.trim(), "active", "{unit} must not start without a license key");
    }
    assert_eq!(vm.succeed("podman ps -a -q").unwrap().trim(), "", "no container was created");
    // The images podman knows are the root's read-only store's, and no other: nothing pulled.
    let images = vm.succeed("podman images --format '{{.ReadOnly}} {{.Repository}}:{{.Tag}}'").unwrap();
    assert_eq!(images.lines().count(), 4, "Pulumi's four images, from the store: {images}");
    assert!(images.lines().all(|l| l.starts_with("true ")), "every image is the read-only store's: {images}");
    eprintln!("boot 1 (no license key, failed): {} s", t.elapsed().as_secs());

    // ---- Boot 2: a license key and a domain. ----
    let license = test_license_key();
    let site = format!("domain = \"{DOMAIN}\"\n\n[pulumi]\nlicense_key = \"{license}\"\n");
    write_site(&mut vm, &[("airlock.toml", site.clone())]);
    vm.reboot(BOOT_TIMEOUT).unwrap();
    let t = Instant::now();
    wait_ready(&mut vm, "boot 2");
    eprintln!("boot 2 (first start of the stack, ready): {} s", t.elapsed().as_secs());
    let banner = vm.succeed("cat /run/airlock/banner").unwrap();
    for line in [
        "appliance: pulumi-selfhosted 1.0.0-test",
        &format!("api: https://api.{DOMAIN}/api/status"),
        &format!("console: https://app.{DOMAIN}/"),
    ] {
        assert!(banner.contains(line), "banner lacks {line:?}: {banner}");
    }
    // The host trusts only the CA fetched over plain HTTP, whose fingerprint the banner shows.
    let (status, body) = http_get(vm.host_port(80), "/ca.crt").unwrap();
    assert!(status.contains("200") && body.starts_with("-----BEGIN CERTIFICATE-----"), "{status}");
    let ca = work.path().join("ca.crt");
    std::fs::write(&ca, &body).unwrap();
    let fingerprint = host("openssl", &["x509", "-noout", "-fingerprint", "-sha256", "-in", ca.to_str().unwrap()]);
    let fingerprint = fingerprint.trim().split_once('=').unwrap().1;
    assert!(banner.contains(&format!("ca sha256: {fingerprint}")), "{banner}");

    let contract = api_contract(&vm, &ca);
    assert_eq!(contract["license_key"], "a JWT", "{contract}");
    assert_eq!(contract["PULUMI_LOCAL_KEYS"], "32 bytes", "{contract}");
    assert_eq!(contract["PULUMI_API_DOMAIN"], format!("api.{DOMAIN}"), "{contract}");
    assert_eq!(contract["PULUMI_CONSOLE_DOMAIN"], format!("app.{DOMAIN}"), "{contract}");
    assert_eq!(contract["PULUMI_LOCAL_OBJECTS"], "/var/lib/pulumi/checkpoints", "{contract}");
    assert_eq!(contract["PULUMI_POLICY_PACK_LOCAL_HTTP_OBJECTS"], "/var/lib/pulumi/policypacks", "{contract}");
    let db = &contract["database"];
    assert_eq!(db["endpoint"], "db:3306", "{contract}");
    assert_eq!(db["logged_in_as"], "pulumi_service@%", "the API uses the user Pulumi's migrations make: {contract}");
    assert_eq!(db["schema_version"], 3, "{contract}");
    assert!(db["sql_mode"].as_str().unwrap().split(',').any(|m| m == "STRICT_TRANS_TABLES"), "{contract}");
    assert!(contract.get("smtp").is_none() && contract.get("saml").is_none(), "{contract}");
    let page = console_page(&vm, &ca);
    assert!(page.contains("\"PULUMI_API_INTERNAL_ENDPOINT\": \"http://api:8080\""), "{page}");
    assert!(page.contains(&format!("\"PULUMI_API\": \"https://api.{DOMAIN}\"")), "{page}");
    assert!(page.contains("\"SAML_SSO_ENABLED\": \"false\""), "{page}");
    let migrations = migrations_log(&mut vm);
    assert!(migrations.contains("applied 3 migrations"), "{migrations}");

    // MySQL's root password is this instance's, from the podman secret.
    let root_login = vm
        .succeed("podman exec db sh -c 'mariadb -h 127.0.0.1 -uroot -p\"$(cat /run/secrets/pulumi-mysql-root-password)\" -N -e \"SELECT CURRENT_USER()\"'")
        .unwrap();
    assert_eq!(root_login.trim(), "root@%", "{root_login}");
    assert_eq!(
        vm.succeed("podman exec db cat /run/secrets/pulumi-mysql-root-password").unwrap(),
        vm.succeed("cat /var/lib/airlock/secrets/db-password").unwrap(),
        "the root password is the instance's db-password"
    );
    // MySQL publishes no port: nothing outside the stack's network reaches 3306, which the API
    // reaches by name on that network; the API and console publish on loopback only.
    assert_eq!(vm.succeed("podman inspect db --format '{{json .HostConfig.PortBindings}}'").unwrap().trim(), "{}");
    let listening = vm.succeed("ss -Htln").unwrap();
    assert!(!listening.contains(":3306 "), "something listens on 3306 outside the containers: {listening}");
    assert!(listening.contains("127.0.0.1:8080 ") && listening.contains("127.0.0.1:3000 "), "{listening}");
    vm.fail("timeout 5 bash -c 'exec 3<>/dev/tcp/10.0.2.15/3306'").unwrap();
    vm.succeed("podman exec api python3 -c \"import socket; socket.create_connection(('db', 3306), 5)\"").unwrap();
    check_api_secrets(
        &mut vm,
        &[
            ("pulumi-license-key", "PULUMI_LICENSE_KEY", "pulumi-license-key"),
            ("pulumi-local-keys", "", "pulumi-local-keys"),
        ],
    );

    // ---- Boot 3: SMTP and SAML. ----
    let saml_ca = airlock_appliance::firstboot::tls::make_ca("Example Corp SAML test").unwrap();
    let smtp_password = "sm7p-pa55'word";
    let site_with = format!(
        "{site}\n[smtp]\nserver = \"mail.corp.internal\"\nusername = \"pulumi\"\npassword = \"{}\"\n\
         sender = \"pulumi@corp.internal\"\n\n[saml]\ncertificate = \"site/saml.crt\"\nprivate_key = \"site/saml.key\"\n",
        smtp_password
    );
    write_site(
        &mut vm,
        &[
            ("site/saml.crt", saml_ca.cert_pem.clone()),
            ("site/saml.key", saml_ca.key_pem.clone()),
            ("airlock.toml", site_with),
        ],
    );
    vm.reboot(BOOT_TIMEOUT).unwrap();
    let t = Instant::now();
    wait_ready(&mut vm, "boot 3");
    eprintln!("boot 3 (SMTP and SAML, ready): {} s", t.elapsed().as_secs());
    let migrations = migrations_log(&mut vm);
    assert!(migrations.contains("applied 0 migrations") && migrations.contains("(no change)"), "{migrations}");
    let contract = api_contract(&vm, &ca);
    assert_eq!(contract["database"]["schema_version"], 3, "{contract}");
    let smtp = &contract["smtp"];
    assert_eq!(smtp["server"], "mail.corp.internal:25", "the site's server as Pulumi takes it: {contract}");
    assert_eq!(smtp["sender"], "pulumi@corp.internal", "{contract}");
    assert_eq!(smtp["username"], "pulumi", "{contract}");
    assert_eq!(smtp["password"], true, "{contract}");
    assert_eq!(contract["saml"], true, "{contract}");
    assert!(console_page(&vm, &ca).contains("\"SAML_SSO_ENABLED\": \"true\""));
    let secrets = vm.succeed("podman secret ls --format '{{.Name}}'").unwrap();
    for s in ["pulumi-smtp-password", "pulumi-saml-certificate", "pulumi-saml-private-key"] {
        assert!(secrets.lines().any(|l| l == s), "{s} in {secrets}");
    }
    check_api_secrets(
        &mut vm,
        &[
            ("pulumi-license-key", "PULUMI_LICENSE_KEY", "pulumi-license-key"),
            ("pulumi-local-keys", "", "pulumi-local-keys"),
            ("pulumi-smtp-password", "SMTP_PASSWORD", "smtp-password"),
            ("pulumi-saml-certificate", "SAML_CERTIFICATE_PUBLIC_KEY", "saml-certificate"),
            ("pulumi-saml-private-key", "SAML_CERTIFICATE_PRIVATE_KEY", "saml-private-key"),
        ],
    );

    // ---- Boot 4: SMTP and SAML removed. ----
    write_site(&mut vm, &[("airlock.toml", site)]);
    vm.reboot(BOOT_TIMEOUT).unwrap();
    let t = Instant::now();
    wait_ready(&mut vm, "boot 4");
    eprintln!("boot 4 (SMTP and SAML removed, ready): {} s", t.elapsed().as_secs());
    let secrets = vm.succeed("podman secret ls --format '{{.Name}}'").unwrap();
    for s in ["pulumi-smtp-password", "pulumi-saml-certificate", "pulumi-saml-private-key"] {
        assert!(!secrets.lines().any(|l| l == s), "{s} is gone: {secrets}");
    }
    let contract = api_contract(&vm, &ca);
    assert!(contract.get("smtp").is_none() && contract.get("saml").is_none(), "{contract}");
    assert!(console_page(&vm, &ca).contains("\"SAML_SSO_ENABLED\": \"false\""));
    assert!(migrations_log(&mut vm).contains("applied 0 migrations"));

    vm.shutdown(Duration::from_secs(180)).unwrap();
    drop(vm);
    eprintln!("pulumi VM test: {} s in all (build included)", started.elapsed().as_secs());
}
