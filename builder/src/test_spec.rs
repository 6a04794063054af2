//! Test specs: a production spec built unchanged except that some of its container images come
//! from TEST STAND-INS (`qemu-tests/specs/pulumi-contract`, whose stand-ins check the contract of
//! Pulumi's images, which cannot be downloaded here).
//!
//! A test spec is its own kind of file, holding only a `[test]` table:
//!
//! ```toml
//! [test]
//! spec = "../../../images/pulumi-selfhosted/appliance.toml"   # the production spec, as it is
//! [[test.stand_ins]]
//! container = "api"                                            # a container of that spec
//! source = "oci:stand-ins/oci:service"                         # a local source, relative to here
//! ```
//!
//! The production spec's overlays, units, services and images' references stay exactly as they
//! are (the appliance's registry serves the stand-in under the original reference, so the units
//! run as in production); only the listed containers' sources change. A production spec cannot
//! carry a stand-in (its parser knows no `test` key), and a test build cannot pass for a release:
//! its version gets [`VERSION_SUFFIX`] (the banner, loader entry, manifest and seed show it), every
//! stand-in is logged as a warning when the spec is read, the manifest records them
//! (`test_build`), it keeps its own lock next to the test spec, and it is never signed (a
//! production spec's `[signing] key` is dropped; the build refuses a key).

use crate::plan::{BuildPlan, ContainerSource, HostContext, PlanError, StandIn, TestBuild};
use crate::seed::Seed;
use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Appended to the production spec's version in a test build.
pub const VERSION_SUFFIX: &str = "-test";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestSpecFile {
    test: TestSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestSection {
    /// The production spec this test builds, relative to the test spec.
    spec: PathBuf,
    stand_ins: Vec<StandInSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StandInSpec {
    /// A `[[containers]] name` of the production spec.
    container: String,
    /// A local source (`oci:`, `oci-archive:`, `docker-archive:`), relative to the test spec.
    source: String,
}

/// Plans `path`: a production spec as [`crate::plan::plan`] does, or a test spec as its
/// production spec with the stand-ins in place.
pub fn plan_spec_or_test_spec(path: &Path, host: &HostContext) -> Result<BuildPlan> {
    // Only a regular file, and no larger than a spec may be (a FIFO or a device is refused).
    let text = crate::input_file::read_capped_text(path, crate::plan::MAX_SPEC_FILE, "spec")?;
    let origin = path.display().to_string();
    let Some(file) = parse(&text, &origin)? else {
        return crate::plan::plan(path, host);
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let production = dir.join(&file.test.spec);
    let err = |key: &str, message: String| PlanError { file: origin.clone(), key: key.to_string(), message };
    let production_text = crate::input_file::read_capped_text(&production, crate::plan::MAX_SPEC_FILE, "spec")
        .map_err(|e| err("test.spec", format!("cannot read {}: {e:#}", production.display())))?;
    if parse(&production_text, &production.display().to_string())?.is_some() {
        return Err(err("test.spec", format!("{} is itself a test spec", production.display())).into());
    }
    let mut plan = crate::plan::plan(&production, host).with_context(|| format!("{origin}: `test.spec`"))?;
    let stand_ins = apply_stand_ins(&mut plan, &file.test.stand_ins, dir, &err)?;
    for s in &stand_ins {
        log::warn!(
            "TEST BUILD of {}: container `{}` ({}) is a TEST STAND-IN from {}",
            production.display(),
            s.container,
            s.reference,
            s.source
        );
    }
    if let Some(key) = plan.signing_key.take() {
        log::warn!(
            "TEST BUILD: the production spec's signing key {} is not used; test builds are never signed",
            key.display()
        );
    }
    plan.version = format!("{}{VERSION_SUFFIX}", plan.version);
    // Still a version, and the root partitions' GPT names still fit.
    crate::version::Version::parse(&plan.version).map_err(|why| err("test.spec", why))?;
    let longest = crate::partition::versioned_name(&plan.name, &plan.version, crate::partition::VERITY_SUFFIX);
    if plan.disk.verity && longest.len() > crate::partition::GPT_NAME_MAX {
        return Err(err("test.spec", format!("`{longest}` (the test build's root-verity GPT name) is too long")).into());
    }
    plan.seed = Seed::new(format!("{}-{}", plan.name, plan.version));
    plan.test = Some(TestBuild {
        production_spec: production,
        production_spec_sha256: std::mem::take(&mut plan.spec_sha256),
        stand_ins,
    });
    plan.spec_path = path.to_path_buf();
    plan.spec_sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    plan.lock_path = dir.join(crate::lock::LOCK_FILE_NAME);
    Ok(plan)
}

/// `Some` when `text` is a test spec (a TOML document with a `test` key), checked strictly.
fn parse(text: &str, origin: &str) -> Result<Option<TestSpecFile>> {
    // A document that is not TOML is left to the spec's parser, which says where it breaks.
    let Ok(table) = text.parse::<toml::Table>() else { return Ok(None) };
    if !table.contains_key("test") {
        return Ok(None);
    }
    toml::from_str(text).map(Some).map_err(|e| anyhow!("{origin}: {}", e.to_string().trim_end()))
}

fn apply_stand_ins(
    plan: &mut BuildPlan,
    list: &[StandInSpec],
    dir: &Path,
    err: &dyn Fn(&str, String) -> PlanError,
) -> Result<Vec<StandIn>> {
    if list.is_empty() {
        bail!(err("test.stand_ins", "a test spec replaces at least one container image".into()));
    }
    let mut stand_ins: Vec<StandIn> = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let key = |k: &str| format!("test.stand_ins[{i}].{k}");
        let names: Vec<&str> = plan.containers.iter().map(|c| c.name.as_str()).collect();
        let names = names.join(", ");
        let Some(container) = plan.containers.iter_mut().find(|c| c.name == s.container) else {
            bail!(err(
                &key("container"),
                format!("`{}` is not a container of the production spec ({names})", s.container)
            ));
        };
        if stand_ins.iter().any(|x| x.container == s.container) {
            bail!(err(&key("container"), format!("`{}` is replaced twice", s.container)));
        }
        let source = ContainerSource::parse(&s.source, dir).map_err(|e| err(&key("source"), e))?;
        if source == ContainerSource::Registry {
            bail!(err(
                &key("source"),
                "`registry` would fetch the real image; a stand-in comes from oci:, oci-archive: or docker-archive:"
                    .into()
            ));
        }
        container.source = source;
        stand_ins.push(StandIn {
            container: s.container.clone(),
            reference: container.reference.to_string(),
            source: s.source.clone(),
        });
    }
    // As for any spec: one reference is one image on the appliance's registry.
    for (i, a) in plan.containers.iter().enumerate() {
        if let Some(b) = plan.containers[i + 1..].iter().find(|b| b.reference == a.reference && b.source != a.source) {
            bail!(err(
                "test.stand_ins",
                format!(
                    "containers `{}` and `{}` share the image {}; replace both or neither",
                    a.name, b.name, a.reference
                )
            ));
        }
    }
    Ok(stand_ins)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRODUCTION: &str = r#"
name = "stack"
version = "2.0.0"
overlays = ["overlay"]
[os]
suite = "trixie"
mirror = "http://mirror.example/debian"
hostname = "stack"
[disk]
size = "2GiB"
data_size = "256MiB"
[signing]
key = "release.key"
[[containers]]
name = "db"
image = "mysql:8.0"
[[containers]]
name = "api"
image = "docker.io/pulumi/service:1.2.3"
"#;

    /// A production spec (with its overlay and key) in `<tmp>/prod`, a test spec in `<tmp>/test`.
    fn setup(test: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("prod/overlay")).unwrap();
        std::fs::write(dir.path().join("prod/appliance.toml"), PRODUCTION).unwrap();
        std::fs::write(dir.path().join("prod/release.key"), "key").unwrap();
        std::fs::create_dir_all(dir.path().join("test")).unwrap();
        let path = dir.path().join("test/appliance.toml");
        std::fs::write(&path, test).unwrap();
        (dir, path)
    }

    fn plan(test: &str) -> Result<(tempfile::TempDir, BuildPlan)> {
        let (dir, path) = setup(test);
        let host = HostContext { etc_apt: PathBuf::from("/nonexistent") };
        plan_spec_or_test_spec(&path, &host).map(|p| (dir, p))
    }

    const TEST: &str = r#"
[test]
spec = "../prod/appliance.toml"
[[test.stand_ins]]
container = "api"
source = "oci:stand-ins/oci:service"
"#;

    #[test]
    fn a_test_spec_builds_the_production_spec_with_stand_ins() {
        let (dir, p) = plan(TEST).unwrap();
        assert_eq!(p.version, "2.0.0-test");
        assert_eq!(p.seed, Seed::new("stack-2.0.0-test"));
        assert_eq!(p.overlays, vec![dir.path().join("test/../prod/overlay")], "the production spec's overlay");
        assert!(p.signing_key.is_none(), "a test build is never signed");
        assert_eq!(p.lock_path, dir.path().join("test/appliance.lock"));
        assert_eq!(p.spec_path, dir.path().join("test/appliance.toml"));
        let api = p.containers.iter().find(|c| c.name == "api").unwrap();
        assert_eq!(api.image, "docker.io/pulumi/service:1.2.3", "the reference stays");
        let ContainerSource::Local { source, written } = &api.source else { panic!("a local source") };
        assert_eq!(source.path, dir.path().join("test/stand-ins/oci"));
        assert_eq!(written, "oci:stand-ins/oci:service");
        let db = p.containers.iter().find(|c| c.name == "db").unwrap();
        assert_eq!(db.source, ContainerSource::Registry, "what is not replaced stays");
        let test = p.test.unwrap();
        assert_eq!(test.production_spec, dir.path().join("test/../prod/appliance.toml"));
        assert_eq!(test.production_spec_sha256, hex::encode(Sha256::digest(PRODUCTION.as_bytes())));
        assert_eq!(
            test.stand_ins,
            vec![StandIn {
                container: "api".into(),
                reference: "docker.io/pulumi/service:1.2.3".into(),
                source: "oci:stand-ins/oci:service".into()
            }]
        );
    }

    #[test]
    fn a_production_spec_plans_as_it_is() {
        let (dir, path) = setup(TEST);
        let host = HostContext { etc_apt: PathBuf::from("/nonexistent") };
        let p = plan_spec_or_test_spec(&dir.path().join("prod/appliance.toml"), &host).unwrap();
        assert_eq!(p.version, "2.0.0");
        assert!(p.test.is_none() && p.signing_key.is_some());
        // A production spec cannot carry stand-ins, and plan() knows no test specs.
        let mixed = format!("{PRODUCTION}\n[test]\nspec = \"x\"\nstand_ins = []\n");
        std::fs::write(dir.path().join("prod/appliance.toml"), mixed).unwrap();
        let e = format!("{:#}", plan_spec_or_test_spec(&dir.path().join("prod/appliance.toml"), &host).unwrap_err());
        assert!(e.contains("unknown field") && e.contains("expected `test`"), "{e}");
        let e = format!("{:#}", crate::plan::plan(&path, &host).unwrap_err());
        assert!(e.contains("unknown field `test`"), "{e}");
    }

    #[test]
    fn bad_test_specs_name_the_key() {
        let cases = [
            (
                TEST.replace("container = \"api\"", "container = \"web\""),
                "test.stand_ins[0].container",
                "not a container",
            ),
            (TEST.replace("oci:stand-ins/oci:service", "registry"), "test.stand_ins[0].source", "real image"),
            (TEST.replace("oci:stand-ins/oci:service", "docker:x"), "test.stand_ins[0].source", "not a source"),
            (
                format!("{TEST}[[test.stand_ins]]\ncontainer = \"api\"\nsource = \"oci:x\"\n"),
                "test.stand_ins[1].container",
                "twice",
            ),
            (TEST.replace("../prod/appliance.toml", "../nowhere.toml"), "test.spec", "cannot read"),
            (
                TEST.replace(
                    "[[test.stand_ins]]\ncontainer = \"api\"\nsource = \"oci:stand-ins/oci:service\"\n",
                    "stand_ins = []\n",
                ),
                "test.stand_ins",
                "at least one",
            ),
        ];
        for (text, key, why) in cases {
            let e = plan(&text).map(|_| ()).unwrap_err();
            let e = e.downcast_ref::<PlanError>().unwrap_or_else(|| panic!("a PlanError for {key}: {e:#}"));
            assert_eq!(e.key, key, "{e}");
            assert!(e.message.contains(why), "{e}");
        }
        let e = format!("{:#}", plan(&format!("{TEST}\nversion = \"3\"\n")).map(|_| ()).unwrap_err());
        assert!(e.contains("unknown field `version`"), "a test spec holds nothing but [test]: {e}");
        let e = format!("{:#}", plan(&TEST.replace("source = ", "sourse = ")).map(|_| ()).unwrap_err());
        assert!(e.contains("unknown field `sourse`"), "{e}");
    }

    #[test]
    fn a_test_spec_of_a_test_spec_is_refused() {
        let (dir, _) = setup(TEST);
        let second = dir.path().join("test2.toml");
        std::fs::write(
            &second,
            "[test]\nspec = \"test/appliance.toml\"\n[[test.stand_ins]]\ncontainer = \"db\"\nsource = \"oci:x\"\n",
        )
        .unwrap();
        let host = HostContext { etc_apt: PathBuf::from("/nonexistent") };
        let e = plan_spec_or_test_spec(&second, &host).unwrap_err();
        assert!(format!("{e:#}").contains("is itself a test spec"), "{e:#}");
    }
}
