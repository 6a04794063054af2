//! `airlock build --check`: the production spec (`images/pulumi-selfhosted`), which cannot be
//! fetched here, must still validate — the spec, its quadlet units against its containers, and
//! the Pulumi stack's settings — and a broken copy of it must fail naming what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test stops at the first unexpected error")]

use airlock::units::{Assignment, parse_assignments};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn check(spec: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_airlock")).args(["build", "--check"]).arg(spec).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn quadlet(name: &str) -> Vec<Assignment> {
    let path = repo().join("images/pulumi-selfhosted/overlay/etc/containers/systemd").join(name);
    parse_assignments(&std::fs::read_to_string(&path).unwrap())
}

fn values(a: &[Assignment], section: &str, key: &str) -> Vec<String> {
    a.iter().filter(|x| x.section == section && x.key == key).map(|x| x.value.clone()).collect()
}

fn units(a: &[Assignment], key: &str) -> Vec<String> {
    values(a, "Unit", key).iter().flat_map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>()).collect()
}

/// Copies a folder tree (files and directories only: the spec's folder has nothing else).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "appliance.lock" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn the_production_spec_validates() {
    let (ok, text) = check(&repo().join("images/pulumi-selfhosted/appliance.toml"));
    assert!(ok, "{text}");
    assert!(text.contains("pulumi-selfhosted 1.0.0 is valid"), "{text}");
    // The registry comes from a Debian package: only a build can see its unit.
    assert!(text.contains("docker-registry.service"), "{text}");
    assert!(!text.contains("run by no unit"), "every preloaded image is run by a unit: {text}");
}

#[test]
fn the_pulumi_stack_is_wired_as_pulumi_documents_it() {
    let db = quadlet("db.container");
    assert_eq!(values(&db, "Container", "Image"), ["docker.io/library/mysql:8.0"]);
    let exec = values(&db, "Container", "Exec").join(" ");
    let sql_mode = exec.split("--sql-mode=").nth(1).expect("MySQL's sql_mode is set explicitly");
    assert!(sql_mode.split([',', ' ']).any(|m| m == "STRICT_TRANS_TABLES"), "{exec}");
    assert!(values(&db, "Container", "Environment").contains(&"MYSQL_DATABASE=pulumi".to_string()));
    assert!(!values(&db, "Container", "HealthCmd").is_empty() && values(&db, "Container", "Notify") == ["healthy"]);

    // db → migrations (to completion) → api → console.
    let migrations = quadlet("migrations.container");
    assert!(units(&migrations, "Requires").contains(&"db.service".into()));
    assert!(units(&migrations, "After").contains(&"db.service".into()));
    assert_eq!(values(&migrations, "Service", "Type"), ["oneshot"]);
    let api = quadlet("api.container");
    for dep in ["db.service", "migrations.service"] {
        assert!(units(&api, "Requires").contains(&dep.into()) && units(&api, "After").contains(&dep.into()), "{dep}");
    }
    let console = quadlet("console.container");
    assert!(units(&console, "After").contains(&"api.service".into()));

    // The API's settings; secrets as podman secrets, never values in the unit.
    let env = values(&api, "Container", "Environment");
    for want in ["PULUMI_ENTERPRISE=true", "PULUMI_DATABASE_ENDPOINT=db:3306", "PULUMI_DATABASE_NAME=pulumi"] {
        assert!(env.contains(&want.to_string()), "{want} in {env:?}");
    }
    assert!(env.iter().any(|e| e.starts_with("PULUMI_LOCAL_OBJECTS=/")), "{env:?}");
    assert!(env.contains(&"PULUMI_LOCAL_KEYS=/run/secrets/pulumi-local-keys".to_string()));
    let secrets = values(&api, "Container", "Secret");
    assert!(secrets.contains(&"pulumi-local-keys".to_string()), "{secrets:?}");
    assert!(secrets.iter().any(|s| s.contains("target=PULUMI_LICENSE_KEY")), "{secrets:?}");
    assert!(!env.iter().any(|e| e.starts_with("PULUMI_LICENSE_KEY=")), "{env:?}");
    // Loopback only: TLS at api.<domain> (nginx) is the way in.
    assert_eq!(values(&api, "Container", "PublishPort"), ["127.0.0.1:8080:8080"]);
    let console_env = values(&console, "Container", "Environment");
    assert!(console_env.contains(&"PULUMI_API_INTERNAL_ENDPOINT=http://api:8080".to_string()), "{console_env:?}");
    assert_eq!(values(&console, "Container", "PublishPort"), ["127.0.0.1:3000:3000"]);
}

#[test]
fn a_broken_copy_fails_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("pulumi-selfhosted");
    copy_dir(&repo().join("images/pulumi-selfhosted"), &copy);
    let spec = copy.join("appliance.toml");
    assert!(check(&spec).0, "the copy validates before it is broken");

    // An image the spec does not carry: podman would reach for the internet.
    let api = copy.join("overlay/etc/containers/systemd/api.container");
    let text = std::fs::read_to_string(&api).unwrap();
    std::fs::write(&api, text.replace("Image=docker.io/pulumi/service:latest", "Image=pulumi/service:typo")).unwrap();
    let (ok, text) = check(&spec);
    assert!(!ok, "{text}");
    assert!(text.contains(&format!("{} line", api.display())), "{text}");
    assert!(
        text.contains("Image=pulumi/service:typo (docker.io/pulumi/service:typo) is not one of the spec's"),
        "{text}"
    );

    // A service whose unit nobody provides, and a network file that is not there.
    std::fs::write(
        &api,
        std::fs::read_to_string(&api).unwrap().replace("pulumi/service:typo", "docker.io/pulumi/service:latest"),
    )
    .unwrap();
    std::fs::remove_file(copy.join("overlay/etc/containers/systemd/pulumi.network")).unwrap();
    let (ok, text) = check(&spec);
    assert!(!ok, "{text}");
    assert!(text.contains("Network=pulumi.network names no quadlet file"), "{text}");

    // A misspelt key in the spec itself.
    copy_dir(&repo().join("images/pulumi-selfhosted/overlay"), &copy.join("overlay"));
    let toml = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, toml.replace("data_size = ", "data_sise = ")).unwrap();
    let (ok, text) = check(&spec);
    assert!(!ok, "{text}");
    assert!(text.contains("unknown field `data_sise`"), "{text}");
}

/// Runs the Pulumi image's `pulumi-secrets` with stand-ins for podman and systemctl that log
/// their arguments (and each secret's content), against a provisioned state in `dir`.
fn run_pulumi_secrets(dir: &Path) -> (bool, String, String) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("calls.log");
    for tool in ["podman", "systemctl"] {
        let stub = format!(
            "#!/bin/sh\necho \"{tool} $*\" >> '{log}'\nif [ \"$1 $2\" = 'secret create' ]; then printf '  = %s\\n' \"$(cat \"$5\")\" >> '{log}'; fi\n",
            log = log.display()
        );
        let path = bin.join(tool);
        std::fs::write(&path, stub).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    match std::fs::remove_file(&log) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("removing {}: {e}", log.display()),
    }
    let script = repo().join("images/pulumi-selfhosted/overlay/usr/lib/airlock/pulumi-secrets");
    let out = Command::new("sh")
        .arg(&script)
        .env("AIRLOCK_STATE", dir.join("state"))
        .env("AIRLOCK_RUN", dir.join("run"))
        .env("AIRLOCK_ETC", dir.join("root/etc"))
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()))
        .output()
        .unwrap();
    // Lossy: the log holds every secret's bytes, and PULUMI_LOCAL_KEYS is binary.
    // No log means the script called neither tool.
    let calls = match std::fs::read(&log) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("reading {}: {e}", log.display()),
    };
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned(), calls)
}

/// The Pulumi image's hand-over script turns what provisioning made from a site's
/// `airlock.toml` (domain, SMTP, SAML, license key) into the stack's podman secrets and
/// environment files, names the optional secrets in the API's quadlet drop-in (reloading
/// systemd only when that changes), and refuses to start the stack without a license key.
#[test]
fn pulumi_secrets_hands_the_site_to_the_stack() {
    use airlock_appliance::firstboot::{Paths, STEPS, provision};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let paths = Paths { root: d.join("root"), esp: d.join("esp"), state: d.join("state"), run: d.join("run") };
    for p in [&paths.esp, &paths.state, &paths.run, &paths.root.join("etc")] {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(paths.root.join("etc/hostname"), "pulumi\n").unwrap();
    std::fs::write(paths.root.join("etc/machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::write(paths.esp.join("saml.crt"), "-----BEGIN CERTIFICATE-----\nSAMLCERT\n-----END CERTIFICATE-----\n")
        .unwrap();
    std::fs::write(paths.esp.join("saml.key"), "-----BEGIN PRIVATE KEY-----\nSAMLKEY\n-----END PRIVATE KEY-----\n")
        .unwrap();
    let site = |smtp: bool| {
        let mut s = String::from("domain = \"corp.internal\"\n[pulumi]\nlicense_key = \"LICENSE-1\"\n");
        if smtp {
            s.push_str("[smtp]\nserver = \"mail.corp.internal:587\"\nusername = \"pulumi bot\"\npassword = \"p4ss'word\"\nsender = \"pulumi@corp.internal\"\n[saml]\ncertificate = \"saml.crt\"\nprivate_key = \"saml.key\"\n");
        }
        s
    };
    let steps: Vec<_> = STEPS.iter().copied().filter(|(n, _, _)| *n != "ssh-host-keys" && *n != "machine-id").collect();
    std::fs::write(paths.esp.join("airlock.toml"), site(true)).unwrap();
    provision(&paths, &steps).unwrap();

    let (ok, stderr, calls) = run_pulumi_secrets(d);
    assert!(ok, "{stderr}");
    let read = |p: &str| std::fs::read_to_string(d.join(p)).unwrap();
    let domains = read("run/airlock/pulumi/domains.env");
    assert!(domains.contains("PULUMI_API_DOMAIN=api.corp.internal\n"), "{domains}");
    assert!(domains.contains("PULUMI_CONSOLE_DOMAIN=app.corp.internal\n"), "{domains}");
    assert!(domains.contains("PULUMI_API=https://api.corp.internal\n"), "{domains}");
    assert_eq!(read("run/airlock/pulumi/console.env"), "SAML_SSO_ENABLED=true\n");
    let smtp = read("run/airlock/pulumi/smtp.env");
    assert_eq!(
        smtp,
        "SMTP_SERVER=mail.corp.internal:587\nSMTP_USERNAME=pulumi bot\nSMTP_GENERIC_SENDER=pulumi@corp.internal\n"
    );
    for (secret, content) in [
        ("pulumi-mysql-root-password", None),
        ("pulumi-local-keys", None),
        ("pulumi-license-key", Some("LICENSE-1")),
        ("pulumi-smtp-password", Some("p4ss'word")),
        ("pulumi-saml-certificate", Some("SAMLCERT")),
        ("pulumi-saml-private-key", Some("SAMLKEY")),
    ] {
        assert!(calls.contains(&format!("podman secret create --replace {secret} ")), "{secret}: {calls}");
        if let Some(c) = content {
            assert!(calls.contains(c), "{secret} holds {c}: {calls}");
        }
    }
    let dropin = read("root/etc/containers/systemd/api.container.d/50-site.conf");
    for line in [
        "Secret=pulumi-smtp-password,type=env,target=SMTP_PASSWORD",
        "Secret=pulumi-saml-certificate,type=env,target=SAML_CERTIFICATE_PUBLIC_KEY",
        "Secret=pulumi-saml-private-key,type=env,target=SAML_CERTIFICATE_PRIVATE_KEY",
    ] {
        assert!(dropin.lines().any(|l| l == line), "{line}: {dropin}");
    }
    assert_eq!(calls.matches("systemctl daemon-reload").count(), 1, "{calls}");
    // No secret value is in an environment file or the drop-in.
    for text in [&domains, &smtp, &dropin] {
        assert!(!text.contains("p4ss") && !text.contains("SAMLKEY") && !text.contains("LICENSE-1"), "{text}");
    }

    // The next boot with the same site: the same files, no reload.
    let (ok, stderr, calls) = run_pulumi_secrets(d);
    assert!(ok, "{stderr}");
    assert_eq!(calls.matches("systemctl daemon-reload").count(), 0, "{calls}");

    // The site drops SMTP and SAML: their secrets go, the drop-in names none, systemd reloads.
    std::fs::write(paths.esp.join("airlock.toml"), site(false)).unwrap();
    provision(&paths, &steps).unwrap();
    let (ok, stderr, calls) = run_pulumi_secrets(d);
    assert!(ok, "{stderr}");
    assert!(calls.contains("podman secret rm pulumi-smtp-password"), "{calls}");
    assert!(calls.contains("podman secret rm pulumi-saml-private-key"), "{calls}");
    assert_eq!(calls.matches("systemctl daemon-reload").count(), 1, "{calls}");
    assert!(!read("root/etc/containers/systemd/api.container.d/50-site.conf").contains("Secret="));
    assert_eq!(read("run/airlock/pulumi/console.env"), "SAML_SSO_ENABLED=false\n");
    assert!(!read("run/airlock/pulumi/smtp.env").contains("SMTP_SERVER"));

    // Without a license key the stack does not start, and the error names the setting.
    std::fs::write(paths.esp.join("airlock.toml"), "domain = \"corp.internal\"\n").unwrap();
    provision(&paths, &steps).unwrap();
    let (ok, stderr, _) = run_pulumi_secrets(d);
    assert!(!ok);
    assert!(stderr.contains("license_key"), "{stderr}");
}
