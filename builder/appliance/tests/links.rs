//! What the appliance's own program is made of, judged by cargo's own view of the dependency
//! graph (`cargo tree`) and by the binary cargo built: it must not link the builder or its
//! online code (the registry client and mirror resolvers sit on ureq and rustls; the OCI, zip
//! and tar readers serve fetching and building).

use std::process::Command;

/// Crates only the builder's online or build-time code needs. (zstd is not among them: the
/// updater decompresses an update bundle's root.)
const BUILDER_ONLY: &[&str] =
    &["airlock", "ureq", "rustls", "rustls-platform-verifier", "oci-spec", "zip", "tar", "flate2", "indicatif"];

#[test]
fn the_appliance_program_links_none_of_the_builder() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--frozen", "--edges", "normal,build", "--prefix", "none", "--format", "{p}", "--manifest-path"])
        .arg(manifest)
        .args(["--package", "airlock-appliance"])
        .output()
        .expect("running cargo tree");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let crates: Vec<&str> = stdout.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(crates.contains(&"airlock-common") && crates.contains(&"rcgen"), "an implausible tree:\n{stdout}");
    let linked: Vec<&&str> = BUILDER_ONLY.iter().filter(|c| crates.contains(c)).collect();
    assert!(linked.is_empty(), "the appliance program depends on {linked:?}:\n{stdout}");
}

#[test]
fn the_binary_names_itself_airlock_and_offers_firstboot() {
    let out = Command::new(env!("CARGO_BIN_EXE_airlock-appliance")).arg("--help").output().expect("running it");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}{}", String::from_utf8_lossy(&out.stderr));
    assert!(help.contains("Usage: airlock") && help.contains("firstboot"), "{help}");
    let build = Command::new(env!("CARGO_BIN_EXE_airlock-appliance")).arg("build").output().expect("running it");
    assert!(!build.status.success(), "the appliance does not build images");
}
