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
    assert_eq!(values(&api, "Container", "PublishPort"), ["8080:8080"]);
    let console_env = values(&console, "Container", "Environment");
    assert!(console_env.contains(&"PULUMI_API_INTERNAL_ENDPOINT=http://api:8080".to_string()), "{console_env:?}");
    assert_eq!(values(&console, "Container", "PublishPort"), ["3000:3000"]);
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
