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

    // The API's settings; secrets as podman secrets, never values in the unit. The database and
    // the objects are the site's choice: pulumi-secrets writes them (pulumi_secrets_hands_...).
    let env = values(&api, "Container", "Environment");
    for want in ["PULUMI_ENTERPRISE=true", "PULUMI_DATABASE_NAME=pulumi"] {
        assert!(env.contains(&want.to_string()), "{want} in {env:?}");
    }
    let files = values(&api, "Container", "EnvironmentFile");
    for want in ["domains.env", "smtp.env", "database.env", "objects.env"] {
        assert!(files.contains(&format!("/run/airlock/pulumi/{want}")), "{want} in {files:?}");
    }
    assert_eq!(values(&migrations, "Container", "EnvironmentFile"), ["/run/airlock/pulumi/migrations.env"]);
    assert_eq!(values(&db, "Unit", "ConditionPathExists"), ["!/run/airlock/pulumi/external-database"]);
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
/// their arguments (and each secret's content), against a provisioned state in `dir`. The
/// podman stand-in keeps each secret it is given in `dir/podman-secrets/<name>`.
fn run_pulumi_secrets(dir: &Path) -> (bool, String, String) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("calls.log");
    let kept = dir.join("podman-secrets");
    std::fs::create_dir_all(&kept).unwrap();
    for tool in ["podman", "systemctl"] {
        let stub = format!(
            "#!/bin/sh\necho \"{tool} $*\" >> '{log}'\n\
             if [ \"$1 $2\" = 'secret create' ]; then printf '  = %s\\n' \"$(cat \"$5\")\" >> '{log}'; cp \"$5\" '{kept}'/\"$4\"; fi\n\
             if [ \"$1 $2\" = 'secret rm' ]; then rm -f '{kept}'/\"$3\"; fi\n",
            log = log.display(),
            kept = kept.display()
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
    // The appliance's own MySQL, as Pulumi's default user; local objects on the data partition.
    assert_eq!(read("run/airlock/pulumi/database.env"), "PULUMI_DATABASE_ENDPOINT=db:3306\n");
    assert_eq!(
        read("run/airlock/pulumi/migrations.env"),
        "PULUMI_DATABASE_ENDPOINT=db:3306\nPULUMI_DATABASE_PING_ENDPOINT=db\nMYSQL_ROOT_USERNAME=root\n"
    );
    assert_eq!(
        read("run/airlock/pulumi/objects.env"),
        "PULUMI_LOCAL_OBJECTS=/var/lib/pulumi/checkpoints\nPULUMI_POLICY_PACK_LOCAL_HTTP_OBJECTS=/var/lib/pulumi/policypacks\n"
    );
    assert!(!d.join("run/airlock/pulumi/external-database").exists(), "MySQL starts here");
    let kept = |name: &str| std::fs::read(d.join("podman-secrets").join(name)).unwrap();
    assert_eq!(kept("pulumi-mysql-root-password"), std::fs::read(paths.secrets().join("db-password")).unwrap());
    assert_eq!(kept("pulumi-local-keys"), std::fs::read(paths.secrets().join("pulumi-local-keys")).unwrap());
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
    let dropin = read("run/containers/systemd/api.container.d/50-site.conf");
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
    assert!(!read("run/containers/systemd/api.container.d/50-site.conf").contains("Secret="));
    assert_eq!(read("run/airlock/pulumi/console.env"), "SAML_SSO_ENABLED=false\n");
    assert!(!read("run/airlock/pulumi/smtp.env").contains("SMTP_SERVER"));

    // Without a license key the stack does not start, and the error names the setting.
    std::fs::write(paths.esp.join("airlock.toml"), "domain = \"corp.internal\"\n").unwrap();
    provision(&paths, &steps).unwrap();
    let (ok, stderr, _) = run_pulumi_secrets(d);
    assert!(!ok);
    assert!(stderr.contains("license_key"), "{stderr}");
}

/// A license key shaped like Pulumi's (a JWT: the API stand-in checks the shape), plainly not one.
const TEST_LICENSE_KEY: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhaXJsb2NrIHRlc3QifQ.bm90LWEtc2lnbmF0dXJl";

/// The environment podman gives container `unit` of the Pulumi image, composed as podman does
/// from its quadlet file and what pulumi-secrets wrote under `d`: `Environment=`,
/// `EnvironmentFile=` (read from `d/run`), `Secret=` of the unit and its drop-in (`type=env`: the
/// value the podman stand-in kept; mounted: the kept file, wherever the environment names its
/// path in the container), and `Volume=` folders of the data partition (under `d/state`).
fn container_env(d: &Path, unit: &str) -> Vec<(String, String)> {
    let mut assignments = quadlet(&format!("{unit}.container"));
    let dropin = d.join(format!("run/containers/systemd/{unit}.container.d/50-site.conf"));
    if dropin.exists() {
        assignments.extend(parse_assignments(&std::fs::read_to_string(&dropin).unwrap()));
    }
    let mut env: Vec<(String, String)> = Vec::new();
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    let pair = |s: &str| s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap();
    for a in assignments.iter().filter(|a| a.section == "Container") {
        match a.key.as_str() {
            "Environment" => env.push(pair(&a.value)),
            "EnvironmentFile" => {
                let path = d.join(a.value.strip_prefix('/').unwrap());
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                env.extend(text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(pair));
            }
            "Secret" => {
                let mut parts = a.value.split(',');
                let name = parts.next().unwrap();
                let opts: Vec<(String, String)> = parts.map(pair).collect();
                let opt = |k: &str| opts.iter().find(|(o, _)| o == k).map(|(_, v)| v.clone());
                let kept = d.join("podman-secrets").join(name);
                assert!(kept.exists(), "{unit} names secret {name}, which pulumi-secrets did not create");
                if opt("type").as_deref() == Some("env") {
                    env.push((opt("target").unwrap(), std::fs::read_to_string(&kept).unwrap()));
                } else {
                    mounts.push((opt("target").unwrap_or(format!("/run/secrets/{name}")), kept));
                }
            }
            "Volume" => {
                let mut parts = a.value.split(':');
                let (source, target) = (parts.next().unwrap(), parts.next().unwrap());
                let host = d.join("state").join(source.strip_prefix("/var/lib/airlock/").unwrap());
                std::fs::create_dir_all(&host).unwrap();
                mounts.push((target.to_string(), host));
            }
            _ => {}
        }
    }
    for (_, value) in env.iter_mut() {
        if let Some((_, host)) = mounts.iter().find(|(target, _)| target == value) {
            *value = host.display().to_string();
        }
    }
    env
}

/// Runs a Pulumi stand-in's `--check-config` (its contract checks, no network) in `env`;
/// returns whether it accepted it, and its JSON report or its complaint.
fn stand_in_check(script: &str, env: &[(String, String)]) -> (bool, String) {
    let path = repo().join("qemu-tests/specs/pulumi-contract/stand-ins").join(script);
    let out = Command::new("python3")
        .arg(&path)
        .arg("--check-config")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); see .ci/install-deps"));
    let text = if out.status.success() { out.stdout } else { out.stderr };
    (out.status.success(), String::from_utf8_lossy(&text).into_owned())
}

/// Several appliances serve one installation: airlock.toml names an external MySQL server, an
/// S3-compatible store and the installation's shared encryption key. pulumi-secrets must hand
/// each to the containers the way Pulumi documents, which the API and migrations stand-ins
/// judge (`--check-config`): the API gets the site's database, user, password and CA, both
/// buckets with the store's endpoint, region, credentials and CA, and the shared key; the
/// migrations run against that server as its administrator over TLS; MySQL is not started
/// here. Going back to a single appliance removes all of it.
#[test]
fn several_appliances_share_an_external_database_and_object_store() {
    use airlock_appliance::firstboot::{Paths, STEPS, provision};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let paths = Paths { root: d.join("root"), esp: d.join("esp"), state: d.join("state"), run: d.join("run") };
    for p in [&paths.esp.join("site"), &paths.state, &paths.run, &paths.root.join("etc")] {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(paths.root.join("etc/hostname"), "pulumi-2\n").unwrap();
    let shared_key: Vec<u8> = (0..32).map(|i| i * 7 + 3).collect();
    std::fs::write(paths.esp.join("site/pulumi.key"), &shared_key).unwrap();
    let db_ca = airlock_appliance::firstboot::tls::make_ca("Corp MySQL CA").unwrap().cert_pem;
    let s3_ca = airlock_appliance::firstboot::tls::make_ca("Corp S3 CA").unwrap().cert_pem;
    std::fs::write(paths.esp.join("site/mysql-ca.crt"), &db_ca).unwrap();
    std::fs::write(paths.esp.join("site/s3-ca.crt"), &s3_ca).unwrap();
    let single = format!("domain = \"corp.internal\"\n[pulumi]\nlicense_key = \"{TEST_LICENSE_KEY}\"\n");
    let installation = format!(
        "{single}encryption_key_file = \"site/pulumi.key\"\n\
         [database]\nendpoint = \"mysql.corp.internal:3307\"\nuser = \"pulumi_api\"\npassword = \"db-p4ss\"\n\
         admin_user = \"dba\"\nadmin_password = \"dba p4ss\"\nca = \"site/mysql-ca.crt\"\n\
         [object_store]\nendpoint = \"https://s3.corp.internal:9000\"\nregion = \"eu-central-1\"\n\
         checkpoints_bucket = \"pulumi-checkpoints\"\npolicy_packs_bucket = \"pulumi-policy-packs\"\n\
         access_key_id = \"AKIDCORP\"\nsecret_access_key = \"s3cr3t+key/\"\nca = \"site/s3-ca.crt\"\n"
    );
    let steps: Vec<_> = STEPS.iter().copied().filter(|(n, _, _)| *n != "ssh-host-keys" && *n != "machine-id").collect();
    std::fs::write(paths.esp.join("airlock.toml"), &installation).unwrap();
    provision(&paths, &steps).unwrap();
    let (ok, stderr, calls) = run_pulumi_secrets(d);
    assert!(ok, "{stderr}");
    assert_eq!(calls.matches("systemctl daemon-reload").count(), 1, "{calls}");
    assert!(d.join("run/airlock/pulumi/external-database").exists(), "MySQL is not started here");
    let kept = |name: &str| std::fs::read(d.join("podman-secrets").join(name)).unwrap();
    assert_eq!(kept("pulumi-local-keys"), shared_key, "the installation's key, not the instance's");
    assert_eq!(kept("pulumi-mysql-root-password"), b"dba p4ss", "the migrations run as the server's administrator");

    let (ok, report) = stand_in_check("service", &container_env(d, "api"));
    assert!(ok, "the API stand-in refuses the environment: {report}");
    let api: serde_json::Value = serde_json::from_str(&report).unwrap();
    let db = &api["database"];
    assert_eq!(db["endpoint"], "mysql.corp.internal:3307", "{api}");
    assert_eq!((&db["user"], &db["password"], &db["tls"]), (&"pulumi_api".into(), &true.into(), &true.into()), "{api}");
    let checkpoints = &api["PULUMI_CHECKPOINT_BLOB_STORAGE_ENDPOINT"];
    assert_eq!(checkpoints["bucket"], "pulumi-checkpoints", "{api}");
    assert_eq!(checkpoints["endpoint"], "s3.corp.internal:9000", "{api}");
    assert_eq!((&checkpoints["tls"], &checkpoints["region"]), (&true.into(), &"eu-central-1".into()), "{api}");
    assert_eq!(api["PULUMI_POLICY_PACK_BLOB_STORAGE_ENDPOINT"]["bucket"], "pulumi-policy-packs", "{api}");
    assert!(api["AWS_CA_BUNDLE"].as_str().is_some_and(|p| p.ends_with("pulumi-object-store-ca")), "{api}");
    assert_eq!(api["PULUMI_LOCAL_KEYS"], "32 bytes", "{api}");
    assert!(api.get("PULUMI_LOCAL_OBJECTS").is_none(), "no local objects beside the buckets: {api}");
    let (ok, report) = stand_in_check("migrations", &container_env(d, "migrations"));
    assert!(ok, "the migrations stand-in refuses the environment: {report}");
    let migrations: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(migrations["endpoint"], "mysql.corp.internal:3307", "{migrations}");
    assert_eq!(migrations["ping"], "mysql.corp.internal:3307", "{migrations}");
    assert_eq!((&migrations["user"], &migrations["tls"]), (&"dba".into(), &true.into()), "{migrations}");
    // The stand-in judges: without the store's secret key, it names what is missing.
    let incomplete: Vec<_> =
        container_env(d, "api").into_iter().filter(|(k, _)| k != "AWS_SECRET_ACCESS_KEY").collect();
    let (ok, report) = stand_in_check("service", &incomplete);
    assert!(!ok && report.contains("no AWS credentials"), "{report}");
    for text in [read_run(d, "database.env"), read_run(d, "objects.env"), read_run(d, "migrations.env")] {
        for secret in ["db-p4ss", "dba p4ss", "s3cr3t", "AKIDCORP"] {
            assert!(!text.contains(secret), "{secret} in an environment file: {text}");
        }
    }

    // Back to one appliance: its own MySQL, folders, and key; the site's secrets are gone.
    std::fs::write(paths.esp.join("airlock.toml"), &single).unwrap();
    provision(&paths, &steps).unwrap();
    let (ok, stderr, calls) = run_pulumi_secrets(d);
    assert!(ok, "{stderr}");
    assert!(!d.join("run/airlock/pulumi/external-database").exists());
    for s in ["pulumi-database-password", "pulumi-database-ca", "pulumi-object-store-secret-access-key"] {
        assert!(calls.contains(&format!("podman secret rm {s}")), "{s}: {calls}");
    }
    assert_eq!(kept("pulumi-local-keys"), std::fs::read(paths.secrets().join("pulumi-local-keys")).unwrap());
    let (ok, report) = stand_in_check("service", &container_env(d, "api"));
    assert!(ok, "the API stand-in refuses the single appliance's environment: {report}");
    let api: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(api["database"]["endpoint"], "db:3306", "{api}");
    assert_eq!(api["database"]["user"], "pulumi_service", "{api}");
    assert!(api["PULUMI_LOCAL_OBJECTS"].as_str().is_some_and(|p| p.ends_with("pulumi/checkpoints")), "{api}");
}

fn read_run(d: &Path, name: &str) -> String {
    std::fs::read_to_string(d.join("run/airlock/pulumi").join(name)).unwrap()
}
