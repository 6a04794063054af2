//! The mirror tree a build writes, judged by the real clients without booting: a spec with a
//! fixture Pulumi CLI and plugin, one real PyPI requirement (resolved by the host's pip), fixture
//! Go modules behind a fake proxy folder and a fixture NuGet package is fetched, the "build
//! mirrors" stage writes its tree, and the tree (exported to a folder) is used by pip through a
//! `file://` index, by Go through a `file://` GOPROXY, and the CLI it installed is run. Hostile
//! fixtures (a plugin whose bytes change after the lock, a CLI archive that does not match its
//! pin) are refused with errors naming them.
#![allow(clippy::unwrap_used, reason = "a test stops at the first unexpected error")]

use airlock::tree::{NodeKind, Tree};
use std::io::Write;
use std::path::Path;
use std::process::Command;

fn targz(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data, mode) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        builder.append_data(&mut h, name, *data).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Writes every directory and regular file of `tree` below `dir`.
fn export(tree: &Tree, dir: &Path) {
    let mut reader = tree.content_reader();
    for (path, id) in tree.walk() {
        let to = dir.join(String::from_utf8(path).unwrap());
        match &tree.node(id).kind {
            NodeKind::Directory { .. } => std::fs::create_dir_all(&to).unwrap(),
            NodeKind::File { size, content } => {
                let mut buf = vec![0u8; usize::try_from(*size).unwrap()];
                reader.read_at(content, *size, 0, &mut buf).unwrap();
                write(&to, &buf);
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(tree.node(id).meta.mode)).unwrap();
            }
            _ => {}
        }
    }
}

fn run(program: &str, args: &[&str], dir: &Path, env: &[(&str, String)]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap()).env("HOME", dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {program}: {e} (see .ci/install-deps)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {} failed:\n{text}", args.join(" "));
    text
}

const SPEC: &str = r#"
name = "mirror-test"
version = "1.0.0"
description = "mirror test appliance"
[os]
suite = "trixie"
mirror = "http://deb.invalid/debian"
hostname = "mirror-test"
[disk]
size = "2GiB"
data_size = "256MiB"

[pulumi]
version = "3.0.0-fixture"
archives = [
  { platform = "linux-x64", source = "fx/pulumi-v3.0.0-fixture-linux-x64.tar.gz", sha256 = "@CLI_SHA@" },
]
[[pulumi.plugins]]
kind = "resource"
name = "fixture"
version = "1.0.0"
platforms = ["linux-amd64"]
source = "fx/plugins"

[mirrors.pypi]
requirements = ["semver==3.0.2"]
python_versions = ["3.11"]
platforms = ["manylinux2014_x86_64"]

[mirrors.go]
modules = ["example.test/Fixture/hello@v1.0.0"]
proxy = "fx/goproxy"

[mirrors.nuget]
packages = ["Fixture.Pkg@2.0.0"]
source = "fx/nuget"
"#;

fn zip_bytes(files: &[(&str, &str)]) -> Vec<u8> {
    // A stored (uncompressed) zip written by hand: local headers, central directory, end record.
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let crc = crc32(data.as_bytes());
        let offset = out.len() as u32;
        let header = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend(sig.to_le_bytes());
            if central {
                h.extend(20u16.to_le_bytes());
            }
            h.extend(20u16.to_le_bytes());
            h.extend([0u8; 4]); // flags, method (stored)
            h.extend([0u8; 4]); // time, date
            h.extend(crc.to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes());
            if central {
                h.extend([0u8; 6]); // comment length, disk, internal attributes
                h.extend(0u32.to_le_bytes());
                h.extend(offset.to_le_bytes());
            }
            h.extend(name.as_bytes());
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend(data.as_bytes());
        central.extend(header(0x0201_4b50, true));
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((files.len() as u16).to_le_bytes());
    out.extend((files.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Writes the fixtures below `fx/` and the spec; returns the spec's path.
fn fixtures(dir: &Path) -> std::path::PathBuf {
    let fx = dir.join("fx");
    let cli = targz(&[
        ("pulumi/pulumi", b"#!/bin/sh\necho v3.0.0-fixture TEST FIXTURE\n", 0o755),
        ("pulumi/pulumi-language-nodejs", b"#!/bin/sh\necho fixture\n", 0o755),
    ]);
    write(&fx.join("pulumi-v3.0.0-fixture-linux-x64.tar.gz"), &cli);
    write(
        &fx.join("plugins/pulumi-resource-fixture-v1.0.0-linux-amd64.tar.gz"),
        &targz(&[("pulumi-resource-fixture", b"#!/bin/sh\necho plugin fixture\n", 0o755)]),
    );
    let go_mod_a = "module example.test/Fixture/hello\n\ngo 1.19\n\nrequire example.test/words v0.1.0\n";
    let go_mod_b = "module example.test/words\n\ngo 1.19\n";
    for (path, escaped, version, go_mod, file, source) in [
        (
            "example.test/Fixture/hello",
            "example.test/!fixture/hello",
            "v1.0.0",
            go_mod_a,
            "hello.go",
            "package hello\n\nimport \"example.test/words\"\n\n// Text says hello.\nfunc Text() string { return words.Hello }\n",
        ),
        (
            "example.test/words",
            "example.test/words",
            "v0.1.0",
            go_mod_b,
            "words.go",
            "package words\n\n// Hello is a greeting.\nconst Hello = \"hello through a file proxy\"\n",
        ),
    ] {
        let at = |ext: &str| fx.join(format!("goproxy/{escaped}/@v/{version}.{ext}"));
        write(&at("info"), format!("{{\"Version\":\"{version}\",\"Time\":\"2023-11-14T22:13:20Z\"}}").as_bytes());
        write(&at("mod"), go_mod.as_bytes());
        let zip =
            zip_bytes(&[(&format!("{path}@{version}/go.mod"), go_mod), (&format!("{path}@{version}/{file}"), source)]);
        write(&at("zip"), &zip);
    }
    write(
        &fx.join("nuget/fixture.pkg/2.0.0/fixture.pkg.2.0.0.nupkg"),
        &zip_bytes(&[(
            "Fixture.Pkg.nuspec",
            "<package><metadata><id>Fixture.Pkg</id><version>2.0.0</version></metadata></package>",
        )]),
    );
    let spec = dir.join("appliance.toml");
    std::fs::write(&spec, SPEC.replace("@CLI_SHA@", &sha256(&cli))).unwrap();
    spec
}

#[test]
fn mirror_tree_serves_pip_and_go_and_installs_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = fixtures(tmp.path());
    let cache = tmp.path().join("cache");
    let host = airlock::plan::HostContext::default();
    let plan = airlock::plan::plan(&spec, &host).unwrap();
    assert!(plan.base.packages.iter().any(|p| p == "nginx-light"), "mirrors bring nginx");
    assert!(plan.services.iter().any(|s| s.name == "mirror" && s.unit == "nginx.service"));
    let opts = airlock::fetch::FetchOptions { cache_dir: cache.clone(), update: false, registry: Default::default() };
    let first = airlock::fetch::fetch(&plan, &opts).unwrap();
    assert!(first.lock_changed);
    let lock_text = std::fs::read_to_string(&plan.lock_path).unwrap();
    // A second fetch with nothing changed downloads nothing and rewrites nothing.
    let second = airlock::fetch::fetch(&plan, &opts).unwrap();
    assert!(!second.lock_changed && second.downloaded_bytes == 0, "{second:?}");
    assert_eq!(std::fs::read_to_string(&plan.lock_path).unwrap(), lock_text);

    let lock = airlock::lock_check::read_for_build(&plan).unwrap();
    let store = airlock::fetch::blob_store(&cache).unwrap();
    let mut root = Tree::new();
    let clock = airlock::clock::BuildClock::fixed(1_700_000_000);
    airlock::mirror_site::build(&mut root, &plan, &lock, &store, tmp.path(), &clock).unwrap();
    let out = tmp.path().join("root");
    export(&root, &out);
    let mirror = out.join(airlock::mirror::ROOT);

    // pip, with its configuration off, installs from the tree's PEP 503 pages only.
    let index = format!("file://{}/pypi/simple/", mirror.display());
    let pip = run(
        "pip",
        &["install", "--dry-run", "--ignore-installed", "--no-cache-dir", "--index-url", &index, "semver==3.0.2"],
        tmp.path(),
        &[("PIP_CONFIG_FILE", "/dev/null".into())],
    );
    assert!(pip.contains("Would install semver-3.0.2"), "{pip}");

    // Go downloads the module and its requirement and builds against them.
    let project = tmp.path().join("consumer");
    write(&project.join("go.mod"), b"module example.test/consumer\n\ngo 1.19\n");
    write(
        &project.join("main.go"),
        b"package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.test/Fixture/hello\"\n)\n\nfunc main() { fmt.Println(hello.Text()) }\n",
    );
    let go_env = [
        ("GOPROXY", format!("file://{}/go,off", mirror.display())),
        ("GOSUMDB", "off".into()),
        ("GOFLAGS", "-mod=mod".into()),
        ("GOTOOLCHAIN", "local".into()),
        ("GOPATH", tmp.path().join("gopath").display().to_string()),
        ("GOCACHE", tmp.path().join("gocache").display().to_string()),
    ];
    run("go", &["get", "example.test/Fixture/hello@v1.0.0"], &project, &go_env);
    assert!(run("go", &["run", "."], &project, &go_env).contains("hello through a file proxy"));
    let versions = run("go", &["list", "-m", "-versions", "example.test/Fixture/hello"], &project, &go_env);
    assert_eq!(versions.trim(), "example.test/Fixture/hello v1.0.0");
    let _ = Command::new("chmod").args(["-R", "u+w", tmp.path().join("gopath").to_str().unwrap()]).status();

    // NuGet's flat container index, the CLI and the plugin cache.
    let flat = std::fs::read_to_string(mirror.join("nuget/v3/flat/fixture.pkg/index.json")).unwrap();
    assert_eq!(flat, "{\"versions\":[\"2.0.0\"]}\n");
    let version = run(out.join("usr/local/bin/pulumi").to_str().unwrap(), &[], tmp.path(), &[]);
    assert!(version.contains("v3.0.0-fixture"), "{version}");
    assert!(out.join("root/.pulumi/plugins/resource-fixture-v1.0.0/pulumi-resource-fixture").is_file());
    let profile = std::fs::read_to_string(out.join("etc/profile.d/airlock-pulumi.sh")).unwrap();
    assert!(profile.contains("PULUMI_PLUGIN_DOWNLOAD_URL_OVERRIDES='.*=http://127.0.0.1/pulumi/plugins'"), "{profile}");
    assert!(out.join("etc/nginx/conf.d/airlock-mirror.conf").is_file());

    // A cache file that no longer matches the lock stops the build, naming the file.
    let plugin = lock.mirror_set("pulumi").unwrap().files.iter().find(|f| f.path.contains("plugins")).unwrap();
    let blob = store.path(&plugin.digest().unwrap());
    std::fs::write(&blob, b"tampered").unwrap();
    let fresh_store = airlock::fetch::blob_store(&cache).unwrap();
    let e = airlock::mirror_site::build(&mut Tree::new(), &plan, &lock, &fresh_store, tmp.path(), &clock).unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("pulumi/plugins/pulumi-resource-fixture-v1.0.0-linux-amd64.tar.gz")
            && text.contains("airlock fetch"),
        "{text}"
    );
    // The next fetch restores it from its origin (the lock wins: same bytes or an error).
    airlock::fetch::fetch(&plan, &opts).unwrap();
    assert_eq!(sha256(&std::fs::read(&blob).unwrap()), plugin.sha256);
    // An origin whose bytes changed after locking is refused, not re-pinned.
    std::fs::remove_file(&blob).unwrap();
    write(&tmp.path().join("fx/plugins/pulumi-resource-fixture-v1.0.0-linux-amd64.tar.gz"), b"\x1f\x8bchanged");
    let e = airlock::fetch::fetch(&plan, &opts).unwrap_err();
    assert!(format!("{e:#}").contains("pulumi-resource-fixture-v1.0.0-linux-amd64.tar.gz"), "{e:#}");

    // A CLI archive that does not match its pin is refused at fetch (with an empty cache: a
    // cache holding the pinned bytes would be used without reading the source).
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let spec2 = fixtures(&other);
    std::fs::write(other.join("fx/pulumi-v3.0.0-fixture-linux-x64.tar.gz"), b"not the pinned archive").unwrap();
    let plan2 = airlock::plan::plan(&spec2, &host).unwrap();
    let opts2 = airlock::fetch::FetchOptions { cache_dir: other.join("cache"), ..opts };
    let e = airlock::fetch::fetch(&plan2, &opts2).unwrap_err();
    let text = format!("{e:#}");
    assert!(text.contains("pulumi.archives `linux-x64`") && text.contains("wrong content"), "{text}");
}
