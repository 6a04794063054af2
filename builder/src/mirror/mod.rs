//! The mirror ecosystems: the Pulumi CLI and its plugins, PyPI, npm, Go modules and NuGet. Each
//! is one file implementing [`Ecosystem`] (see `ecosystem.rs` for what one owns), registered in
//! [`ECOSYSTEMS`]; adding an ecosystem is one file and one entry there (plus its lines in the
//! client setup scripts, `mirror_site/setup/`).
//!
//! This folder is a layer below the plan: the plan validates the spec's sections through
//! [`validate`], `airlock fetch` (`fetch/mirrors.rs`) resolves each set with its settings, the
//! lock checks set names and served paths here, the build's "build mirrors" stage
//! (`mirror_site/`) renders and places the files, and the manifest asks for each file's
//! identity. Nothing here imports those layers.

pub mod download;
pub mod ecosystem;
pub mod goproxy;
pub mod npm;
pub mod nuget;
pub mod pulumi;
pub mod pypi;
pub mod source;

pub use ecosystem::{
    Ecosystem, FileKind, Identity, IndexEntry, LockedFile, MirrorPlan, MirrorSet, PLACEHOLDER, ROOT, Settings,
    SpecContext, StoredFile, check_file_name, check_served_path,
};
pub use source::Source;

use crate::spec::PlanError;
use std::collections::BTreeMap;

/// Every ecosystem airlock mirrors, in the order the listing page shows them.
pub static ECOSYSTEMS: &[&dyn Ecosystem] =
    &[&pulumi::Pulumi, &pypi::Pypi, &npm::Npm, &goproxy::GoModules, &nuget::Nuget];

/// The ecosystem named `name` (a lock's set), or an error listing the known ones.
pub fn ecosystem(name: &str) -> Result<&'static dyn Ecosystem, String> {
    ECOSYSTEMS.iter().copied().find(|e| e.name() == name).ok_or_else(|| {
        let known: Vec<&str> = ECOSYSTEMS.iter().map(|e| e.name()).collect();
        format!("`{name}` is not a mirror ecosystem airlock knows ({})", known.join(", "))
    })
}

/// Validates the spec's ecosystem sections: `[pulumi]` and every `[mirrors.<name>]`. A section
/// no ecosystem owns is an error naming it.
pub fn validate(
    pulumi: Option<toml::Value>,
    mirrors: BTreeMap<String, toml::Value>,
    spec: &SpecContext<'_>,
) -> Result<MirrorPlan, PlanError> {
    let mut sections: BTreeMap<String, toml::Value> =
        mirrors.into_iter().map(|(name, section)| (format!("mirrors.{name}"), section)).collect();
    if let Some(p) = pulumi {
        sections.insert("pulumi".to_string(), p);
    }
    let mut plan = MirrorPlan::default();
    for e in ECOSYSTEMS {
        if let Some(section) = sections.remove(e.spec_key()) {
            plan.sets.push(MirrorSet { ecosystem: *e, settings: e.validate(section, spec)? });
        }
    }
    if let Some(key) = sections.keys().next() {
        let known: Vec<&str> = ECOSYSTEMS.iter().map(|e| e.spec_key()).filter(|k| k.starts_with("mirrors.")).collect();
        return Err(spec.err(key, format!("airlock mirrors no such ecosystem (it has {})", known.join(", "))));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every registered ecosystem owns all it must: a name that is its folder and its lock
    /// set, a spec key ending in that name, a listing-page entry, valid nginx locations, and an
    /// identity for its files; and names are unique.
    #[test]
    fn every_ecosystem_in_the_registry_is_complete() {
        let mut names = Vec::new();
        for e in ECOSYSTEMS {
            let name = e.name();
            assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase()), "{name}");
            assert!(!names.contains(&name), "{name} is registered twice");
            names.push(name);
            assert!(e.spec_key() == name || e.spec_key() == format!("mirrors.{name}"), "{name}: {}", e.spec_key());
            assert_eq!(ecosystem(name).map(|found| found.spec_key()), Ok(e.spec_key()));
            assert!(check_served_path(&format!("{name}/x"), name).is_ok(), "{name}");
            let entry = e.index_entry();
            assert!(!entry.heading.is_empty() && !entry.usage.is_empty(), "{name}");
            // Locations, if any, are whole nginx blocks.
            let locations = e.nginx_locations();
            assert_eq!(locations.matches('{').count(), locations.matches('}').count(), "{name}");
            let first = locations.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
            assert!(first.is_none_or(|l| l.starts_with("location ")), "{name}: {locations}");
            // A file outside the ecosystem's own layout has no identity: the function is real.
            let stranger = LockedFile {
                path: format!("{name}/not-a-package-file"),
                origin: String::new(),
                sha256: "00".repeat(32),
                size: 0,
                requires_python: None,
            };
            assert!(e.identity(&stranger, Path::new("/nonexistent")).is_err(), "{name}");
            // An empty section is never silently accepted as "mirror nothing".
            let ctx = SpecContext { file: "a.toml", spec_dir: Path::new(".") };
            let empty = toml::Value::Table(toml::map::Map::new());
            assert!(e.validate(empty, &ctx).is_err(), "{name} accepts an empty section");
        }
        let unknown = ecosystem("maven").unwrap_err();
        assert!(unknown.contains("`maven` is not a mirror ecosystem airlock knows (pulumi, pypi"), "{unknown}");
    }

    const GOOD: &str = r#"
[pulumi]
version = "3.140.0"
checksums = "fixtures/pulumi-3.140.0-checksums.txt"
archives = [
  { platform = "linux-x64", source = "https://example.test/pulumi-v3.140.0-linux-x64.tar.gz", sha256 = "0000000000000000000000000000000000000000000000000000000000000000" },
]
[[pulumi.plugins]]
kind = "resource"
name = "random"
version = "4.16.0"
platforms = ["linux-amd64", "windows-amd64"]
[mirrors.pypi]
requirements = ["pulumi>=3"]
python_versions = ["3.11"]
platforms = ["manylinux2014_x86_64"]
[mirrors.npm]
packages = ["@pulumi/pulumi"]
[mirrors.go]
modules = ["example.test/Fixture/mod@v1.2.0"]
proxy = "fixtures/goproxy"
[mirrors.nuget]
packages = ["Airlock.Fixture@1.0.0"]
source = "https://nuget.example.test/v3/index.json"
"#;

    /// The spec's sections as `Spec` hands them over.
    fn parse(text: &str) -> Result<MirrorPlan, PlanError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Part {
            pulumi: Option<toml::Value>,
            #[serde(default)]
            mirrors: BTreeMap<String, toml::Value>,
        }
        let part: Part = toml::from_str(text).expect("test TOML parses");
        validate(part.pulumi, part.mirrors, &SpecContext { file: "a.toml", spec_dir: Path::new("/spec") })
    }

    #[test]
    fn good_sections_validate_in_registry_order() {
        let p = parse(GOOD).unwrap();
        let names: Vec<&str> = p.sets.iter().map(MirrorSet::name).collect();
        assert_eq!(names, ["pulumi", "pypi", "npm", "go", "nuget"]);
        let pulumi = format!("{:?}", p.get("pulumi").unwrap().settings);
        assert!(pulumi.contains(pulumi::OFFICIAL_PLUGIN_SOURCE), "the default plugin source: {pulumi}");
        let go = format!("{:?}", p.get("go").unwrap().settings);
        assert!(go.contains("(\"example.test/Fixture/mod\", \"v1.2.0\")"), "{go}");
        // The lock's inputs digests stay what earlier airlocks wrote for the same settings.
        let pypi = p.get("pypi").unwrap().settings.inputs();
        assert_eq!(
            pypi,
            "PypiPlan { requirements: [\"pulumi>=3\"], python_versions: [\"3.11\"], platforms: [\"manylinux2014_x86_64\"] }"
        );
        assert_eq!(p.get("npm").unwrap().settings.inputs(), "NpmPlan { packages: [\"@pulumi/pulumi\"] }");
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases = [
            ("version = \"3.140.0\"", "version = \"3 140\"", "pulumi.version"),
            ("platform = \"linux-x64\"", "platform = \"linux-x86\"", "pulumi.archives[0].platform"),
            ("sha256 = \"0000", "sha256 = \"00", "pulumi.archives[0].sha256"),
            ("source = \"https://example.test/", "source = \"../outside/", "pulumi.archives[0].source"),
            ("source = \"https://example.test/", "source = \"ftp://example.test/", "pulumi.archives[0].source"),
            ("checksums = \"fixtures", "checksums = \"/etc", "pulumi.checksums"),
            ("kind = \"resource\"", "kind = \"provider\"", "pulumi.plugins[0].kind"),
            ("name = \"random\"", "name = \"../random\"", "pulumi.plugins[0].name"),
            ("\"windows-amd64\"]", "\"windows-x64\"]", "pulumi.plugins[0].platforms"),
            ("version = \"3.140.0\"", "version = \"3.140.0\"\nlicense = \"x\"", "pulumi"),
            ("\"pulumi>=3\"", "\"--index-url=http://evil\"", "mirrors.pypi.requirements"),
            ("[\"3.11\"]", "[\"three\"]", "mirrors.pypi.python_versions"),
            ("[\"manylinux2014_x86_64\"]", "[\"linux x86\"]", "mirrors.pypi.platforms"),
            ("[\"@pulumi/pulumi\"]", "[\"--registry=http://evil\"]", "mirrors.npm.packages"),
            ("mod@v1.2.0", "mod@1.2.0", "mirrors.go.modules"),
            ("example.test/Fixture/mod@", "example.test/../mod@", "mirrors.go.modules"),
            ("proxy = \"fixtures/goproxy\"", "proxy = \"/abs\"", "mirrors.go.proxy"),
            ("Airlock.Fixture@1.0.0", "../x@1.0.0", "mirrors.nuget.packages"),
            ("Airlock.Fixture@1.0.0", "Airlock.Fixture", "mirrors.nuget.packages"),
            ("[mirrors.nuget]", "[mirrors.maven]\nx = 1\n[mirrors.nuget]", "mirrors.maven"),
        ];
        for (from, to, key) in cases {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "replacement of `{from}` did not apply");
            let e = parse(&text).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
        let without_linux = GOOD.replace("linux-x64", "darwin-arm64");
        assert_eq!(parse(&without_linux).unwrap_err().key, "pulumi.archives");
    }

    fn identity_of(ecosystem: &dyn Ecosystem, path: &str) -> Result<Identity, String> {
        let file = LockedFile {
            path: path.into(),
            origin: String::new(),
            sha256: "00".repeat(32),
            size: 1,
            requires_python: None,
        };
        ecosystem.identity(&file, Path::new("/nonexistent")).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn served_paths_name_their_packages() {
        let package = |name: &str, version: &str, purl: &str| Identity {
            name: name.into(),
            version: version.into(),
            kind: FileKind::Package { purl: purl.into() },
        };
        let cases: [(&dyn Ecosystem, &str, Identity); 8] = [
            (
                &pypi::Pypi,
                "pypi/files/typing_extensions-4.16.0-py3-none-any.whl",
                package(
                    "typing-extensions",
                    "4.16.0",
                    "pkg:pypi/typing-extensions@4.16.0?file_name=typing_extensions-4.16.0-py3-none-any.whl",
                ),
            ),
            (
                &npm::Npm,
                "npm/@pulumi/pulumi/-/pulumi-3.248.0.tgz",
                package("@pulumi/pulumi", "3.248.0", "pkg:npm/%40pulumi/pulumi@3.248.0"),
            ),
            (&npm::Npm, "npm/ms/-/ms-2.1.3.tgz", package("ms", "2.1.3", "pkg:npm/ms@2.1.3")),
            (
                &goproxy::GoModules,
                "go/example.test/!fixture/greeting/@v/v1.0.0-!r!c1.zip",
                package(
                    "example.test/Fixture/greeting",
                    "v1.0.0-RC1",
                    "pkg:golang/example.test/Fixture/greeting@v1.0.0-RC1",
                ),
            ),
            (
                &goproxy::GoModules,
                "go/example.test/words/@v/v0.1.0.mod",
                Identity { name: "example.test/words".into(), version: "v0.1.0".into(), kind: FileKind::Metadata },
            ),
            (
                &pulumi::Pulumi,
                "pulumi/releases/pulumi-v3.0.0-fixture-linux-x64.tar.gz",
                Identity {
                    name: "pulumi".into(),
                    version: "3.0.0-fixture".into(),
                    kind: FileKind::CliArchive {
                        platform: "linux-x64".into(),
                        purl: "pkg:generic/pulumi@3.0.0-fixture?file_name=pulumi-v3.0.0-fixture-linux-x64.tar.gz".into(),
                    },
                },
            ),
            (
                &pulumi::Pulumi,
                "pulumi/releases/pulumi-3.0.0-fixture-checksums.txt",
                Identity { name: "pulumi".into(), version: "3.0.0-fixture".into(), kind: FileKind::Metadata },
            ),
            (
                // A plugin whose name holds `-v`: the version starts at the last one, as the CLI
                // reads it.
                &pulumi::Pulumi,
                "pulumi/plugins/pulumi-resource-aws-v2-v6.66.0-darwin-arm64.tar.gz",
                Identity {
                    name: "pulumi-resource-aws-v2".into(),
                    version: "6.66.0".into(),
                    kind: FileKind::Plugin {
                        kind: "resource".into(),
                        plugin: "aws-v2".into(),
                        platform: "darwin-arm64".into(),
                        purl: "pkg:generic/pulumi-resource-aws-v2@6.66.0?file_name=pulumi-resource-aws-v2-v6.66.0-darwin-arm64.tar.gz".into(),
                    },
                },
            ),
        ];
        for (ecosystem, path, expected) in cases {
            assert_eq!(identity_of(ecosystem, path), Ok(expected), "{path}");
        }
        for (ecosystem, path) in [
            (&pypi::Pypi as &dyn Ecosystem, "pypi/files/x.tar.gz"),
            (&npm::Npm, "npm/ms/-/other-2.1.3.tgz"),
            (&goproxy::GoModules, "go/example.test/x/@v/1.0.0.zip"),
            (&pulumi::Pulumi, "pulumi/plugins/pulumi-provider-x-v1.0.0-linux-amd64.tar.gz"),
        ] {
            assert!(identity_of(ecosystem, path).is_err(), "{path}");
        }
    }

    #[test]
    fn a_section_no_ecosystem_owns_is_an_error() {
        let ctx = SpecContext { file: "a.toml", spec_dir: Path::new(".") };
        let maven: toml::Value = toml::from_str("artifacts = [\"x\"]").unwrap();
        let e = validate(None, BTreeMap::from([("maven".to_string(), maven)]), &ctx).unwrap_err();
        assert_eq!(e.key, "mirrors.maven");
        assert!(e.message.contains("mirrors.pypi"), "{e}");
        let pypi: toml::Value =
            toml::from_str("requirements = [\"x\"]\npython_versions = [\"3.12\"]\nplatforms = [\"any\"]\nextra = 1")
                .unwrap();
        let e = validate(None, BTreeMap::from([("pypi".to_string(), pypi)]), &ctx).unwrap_err();
        assert_eq!(e.key, "mirrors.pypi");
        assert!(e.message.contains("unknown field `extra`"), "{e}");
    }
}
