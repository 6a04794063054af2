//! The demo appliance's mirrors, used by the real clients from the host through a port forward
//! with their own configuration isolated, so that only the appliance can answer: pip installs
//! the real `pulumi` SDK into a fresh venv, npm installs the real `@pulumi/pulumi` into a fresh
//! project, Go downloads and builds against the fixture modules, the NuGet feed answers as the
//! protocol says, every locked CLI archive and plugin is served byte for byte, and the `/setup/`
//! script configures a clean HOME that the clients then use: over http, and over https by the
//! appliance's name, where the script checks the CA against the fingerprint the appliance shows
//! (refusing a wrong one) and the clients trust it. One boot serves all of it, of the qcow2
//! output (the VM-template format), which must boot like the raw image.
#![allow(clippy::unwrap_used, reason = "a test stops at the first unexpected error")]

mod common;

use common::*;
use qemu_tests::{Vm, VmConfig};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// First boot under TCG, including the demo stack's image pulls.
const FIRST_BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Who runs a client: a HOME and, to reach the appliance by its names, a hosts file.
struct User {
    home: PathBuf,
    /// Bind-mounted over `/etc/hosts` in a private mount namespace (the test runs as root).
    hosts: Option<PathBuf>,
}

impl User {
    fn new(home: &Path) -> Self {
        std::fs::create_dir_all(home).unwrap();
        User { home: home.to_path_buf(), hosts: None }
    }
}

/// Runs a client with a clean environment: only `PATH`, `HOME` and what the test passes.
fn run_client(program: &str, args: &[&str], dir: &Path, who: &User, env: &[(&str, &str)]) -> Output {
    let mut cmd = match &who.hosts {
        Some(hosts) => {
            let mut c = Command::new("unshare");
            c.args(["--mount", "sh", "-c", "mount --bind \"$0\" /etc/hosts && exec \"$@\""]).arg(hosts).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", &who.home)
        .env("LANG", "C.UTF-8");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// [`run_client`] that must succeed; returns its output.
fn client(program: &str, args: &[&str], dir: &Path, who: &User, env: &[(&str, &str)]) -> String {
    let out = run_client(program, args, dir, who, env);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {} failed:\n{text}", args.join(" "));
    text
}

/// GET through curl (a client nobody here wrote) with the forward's `Host`.
fn get(url: &str) -> Vec<u8> {
    let out = Command::new("curl").args(["-fsS", "--max-time", "120", url]).output().expect("running curl");
    assert!(out.status.success(), "GET {url}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// pip installs `pulumi` into a fresh venv and imports it.
fn pip_installs_pulumi(work: &Path, who: &User, env: &[(&str, &str)], extra: &[&str]) {
    let venv = work.join("venv");
    client("python3", &["-m", "venv", venv.to_str().unwrap()], work, who, &[]);
    let pip = venv.join("bin/pip");
    let mut args = vec!["install", "--no-cache-dir", "--disable-pip-version-check"];
    args.extend_from_slice(extra);
    args.push("pulumi");
    let log = client(pip.to_str().unwrap(), &args, work, who, env);
    assert!(log.contains("Successfully installed"), "{log}");
    let python = venv.join("bin/python");
    let v = client(python.to_str().unwrap(), &["-c", "import pulumi, grpc; print(pulumi.__name__)"], work, who, &[]);
    assert_eq!(v.trim(), "pulumi");
}

/// npm installs `@pulumi/pulumi` into a fresh project and loads it.
fn npm_installs_pulumi(base: &str, work: &Path, who: &User, env: &[(&str, &str)]) {
    let project = work.join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("package.json"),
        "{\"name\": \"mirror-test\", \"version\": \"1.0.0\", \"private\": true}\n",
    )
    .unwrap();
    let mut env = env.to_vec();
    let cache = work.join("npm-cache");
    env.extend([("npm_config_cache", cache.to_str().unwrap()), ("npm_config_update_notifier", "false")]);
    client("npm", &["install", "--no-audit", "--no-fund", "@pulumi/pulumi"], &project, who, &env);
    let out = client(
        "node",
        &["-e", "const p = require('@pulumi/pulumi'); console.log(typeof p.Config)"],
        &project,
        who,
        &[],
    );
    assert_eq!(out.trim(), "function", "{out}");
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.join("package-lock.json")).unwrap()).unwrap();
    let packages = lock["packages"].as_object().unwrap();
    let resolved: Vec<&str> = packages.values().filter_map(|p| p["resolved"].as_str()).collect();
    assert!(resolved.len() > 10, "{resolved:?}");
    for url in resolved {
        assert!(url.starts_with(&format!("{base}/npm/")), "every tarball came from the mirror: {url}");
    }
}

/// Go downloads the fixture module (and, building against it, its requirement) through the
/// mirror alone.
fn go_builds_against_fixtures(work: &Path, who: &User, env: &[(&str, &str)]) {
    let project = work.join("go-consumer");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("go.mod"), "module example.test/consumer\n\ngo 1.19\n").unwrap();
    std::fs::write(
        project.join("main.go"),
        "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.airlock.test/Fixture/greeting\"\n)\n\nfunc main() { fmt.Println(greeting.Text()) }\n",
    )
    .unwrap();
    let gopath = work.join("gopath");
    let cache = work.join("gocache");
    let mut env = env.to_vec();
    env.extend([("GOPATH", gopath.to_str().unwrap()), ("GOCACHE", cache.to_str().unwrap()), ("GOFLAGS", "-mod=mod")]);
    let dl = client(
        "go",
        &["mod", "download", "-json", "example.airlock.test/Fixture/greeting@v1.0.0"],
        &project,
        who,
        &env,
    );
    assert!(dl.contains("\"Version\": \"v1.0.0\"") && !dl.contains("\"Error\""), "{dl}");
    client("go", &["get", "example.airlock.test/Fixture/greeting@v1.0.0"], &project, who, &env);
    let out = client("go", &["run", "."], &project, who, &env);
    assert!(out.contains("hello from the airlock mirror"), "{out}");
    // The module cache is read-only by design; let the temporary folder be removed.
    host("chmod", &["-R", "u+w", gopath.to_str().unwrap()]);
}

#[test]
fn demo_mirrors_serve_real_clients_through_a_port_forward() {
    qemu_tests::init_logging();
    let built = build_test_image("demo").expect("building the demo test image");
    let qcow2 = built.output("qcow2");
    assert!(qcow2.is_file(), "the demo spec asks for a qcow2 output: {}", qcow2.display());
    let mut vm =
        Vm::boot(VmConfig { forwards: vec![80, 443], ..VmConfig::new("demo-mirrors", &qcow2) }).expect("starting qemu");
    vm.wait_for_console("airlock: ready", FIRST_BOOT_TIMEOUT).expect("the banner says ready");
    // The qcow2 output boots like the raw image: nothing failed, the root is the verity device.
    assert_eq!(vm.succeed("systemctl --failed --no-legend --plain").unwrap().trim(), "", "no unit failed");
    assert_eq!(vm.succeed("findmnt -no SOURCE /").unwrap().trim(), "/dev/mapper/root");
    let banner = vm.succeed("cat /run/airlock/banner").unwrap();
    assert!(banner.contains("mirror: http://10.0.2.15/"), "banner: {banner}");
    let base = format!("http://127.0.0.1:{}", vm.host_port(80));
    let lock = airlock::lock_check::read_for_build(&built.plan).unwrap();

    // The appliance's own CLI: installed from the linux-x64 archive, pointed at the mirror,
    // its plugin cache seeded.
    let version = vm.succeed("bash -lc 'pulumi version'").unwrap();
    assert!(version.contains("v3.0.0-fixture"), "{version}");
    let env = vm.succeed("bash -lc 'env | grep ^PULUMI_ | sort'").unwrap();
    assert!(env.contains("PULUMI_SKIP_UPDATE_CHECK=true"), "{env}");
    assert!(env.contains("PULUMI_PLUGIN_DOWNLOAD_URL_OVERRIDES=.*=http://127.0.0.1/pulumi/plugins"), "{env}");
    assert!(env.contains("PULUMI_BACKEND_URL=http://127.0.0.1:8080"), "{env}");
    vm.succeed("test -x /usr/local/bin/pulumi-language-python && test -x /root/.pulumi/plugins/resource-airlockfixture-v0.1.0/pulumi-resource-airlockfixture && test ! -e /root/.pulumi/plugins/resource-airlockfixture-v0.1.0.partial").unwrap();

    // Every locked CLI archive, checksums file and plugin is served byte for byte.
    let pulumi = lock.mirror_set("pulumi").expect("the lock pins the pulumi set");
    assert_eq!(pulumi.files.len(), 8, "5 archives, checksums, 2 plugins");
    for f in &pulumi.files {
        let bytes = get(&format!("{base}/{}", f.path));
        assert_eq!((bytes.len() as u64, sha256(&bytes)), (f.size, f.sha256.clone()), "{}", f.path);
    }
    // The listing page names what the appliance carries.
    let page = String::from_utf8(get(&format!("{base}/"))).unwrap();
    assert!(
        page.contains("airlock demo appliance") && page.contains("pulumi-v3.0.0-fixture-linux-x64.tar.gz"),
        "{page}"
    );
    assert!(page.contains(&format!("curl -fsS {base}/setup/airlock-setup.sh | sh")), "the page names the URL used");

    let tmp = tempfile::tempdir().unwrap();
    let user = User::new(&tmp.path().join("home"));
    std::fs::write(user.home.join(".npmrc"), "").unwrap();
    let empty_global = tmp.path().join("global-npmrc");
    std::fs::write(&empty_global, "").unwrap();

    // pip, with its configuration switched off, from the mirror only.
    let index = format!("{base}/pypi/simple/");
    let pip_dir = tmp.path().join("pip");
    std::fs::create_dir_all(&pip_dir).unwrap();
    pip_installs_pulumi(&pip_dir, &user, &[("PIP_CONFIG_FILE", "/dev/null")], &["--index-url", &index]);
    let simple = String::from_utf8(get(&format!("{index}grpcio/"))).unwrap();
    assert!(simple.contains("#sha256=") && simple.contains("data-requires-python="), "{simple}");

    // npm, with an empty user and global configuration and the registry on the command line.
    let registry = format!("{base}/npm/");
    let packument: serde_json::Value = serde_json::from_slice(&get(&format!("{base}/npm/@pulumi%2fpulumi"))).unwrap();
    let latest = packument["dist-tags"]["latest"].as_str().unwrap().to_string();
    let tarball = packument["versions"][&latest]["dist"]["tarball"].as_str().unwrap();
    assert!(tarball.starts_with(&format!("{base}/npm/@pulumi/pulumi/-/")), "{tarball}");
    let npm_dir = tmp.path().join("npm");
    std::fs::create_dir_all(&npm_dir).unwrap();
    npm_installs_pulumi(
        &base,
        &npm_dir,
        &user,
        &[
            ("npm_config_userconfig", user.home.join(".npmrc").to_str().unwrap()),
            ("npm_config_globalconfig", empty_global.to_str().unwrap()),
            ("npm_config_registry", &registry),
        ],
    );

    // Go, through the mirror and nothing else.
    let goproxy = format!("{base}/go,off");
    let go_dir = tmp.path().join("go");
    std::fs::create_dir_all(&go_dir).unwrap();
    go_builds_against_fixtures(
        &go_dir,
        &user,
        &[("GOPROXY", &goproxy), ("GOSUMDB", "off"), ("GOTOOLCHAIN", "local"), ("GOENV", "off")],
    );
    let list = String::from_utf8(get(&format!("{base}/go/example.airlock.test/!fixture/greeting/@v/list"))).unwrap();
    assert_eq!(list, "v1.0.0\n");

    // NuGet: the service index names the flat container at the URL the client used, which lists
    // the package's versions and serves the locked bytes.
    let service: serde_json::Value = serde_json::from_slice(&get(&format!("{base}/nuget/v3/index.json"))).unwrap();
    assert_eq!(service["version"], "3.0.0");
    let flat = service["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["@type"] == "PackageBaseAddress/3.0.0")
        .expect("a PackageBaseAddress/3.0.0 resource")["@id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(flat, format!("{base}/nuget/v3/flat/"));
    let versions: serde_json::Value =
        serde_json::from_slice(&get(&format!("{flat}airlock.fixture/index.json"))).unwrap();
    assert_eq!(versions, serde_json::json!({ "versions": ["1.0.0"] }));
    // Its dependency came along at the lowest version in range, as NuGet would pick it.
    let core: serde_json::Value =
        serde_json::from_slice(&get(&format!("{flat}airlock.fixture.core/index.json"))).unwrap();
    assert_eq!(core, serde_json::json!({ "versions": ["1.0.0"] }));
    let nuget = lock.mirror_set("nuget").unwrap();
    assert_eq!(nuget.files.len(), 2, "{:?}", nuget.files);
    for f in &nuget.files {
        let rel = f.path.strip_prefix("nuget/v3/flat/").unwrap();
        assert_eq!(sha256(&get(&format!("{flat}{rel}"))), f.sha256, "{}", f.path);
    }

    // The setup script, fetched from the appliance and run in a clean HOME, configures the
    // clients, which then use nothing but that configuration.
    let user2 = User::new(&tmp.path().join("home2"));
    let script = get(&format!("{base}/setup/airlock-setup.sh"));
    let script_path = tmp.path().join("airlock-setup.sh");
    std::fs::write(&script_path, &script).unwrap();
    let out = client("sh", &[script_path.to_str().unwrap()], tmp.path(), &user2, &[]);
    assert!(out.contains(&format!("configured for {base}")), "{out}");
    assert!(String::from_utf8_lossy(&get(&format!("{base}/setup/airlock-setup.ps1"))).contains(&format!("'{base}'")));
    let setup_dir = tmp.path().join("after-setup");
    std::fs::create_dir_all(&setup_dir).unwrap();
    pip_installs_pulumi(&setup_dir, &user2, &[], &[]);
    npm_installs_pulumi(&base, &setup_dir, &user2, &[("npm_config_globalconfig", empty_global.to_str().unwrap())]);
    go_builds_against_fixtures(&setup_dir, &user2, &[]);
    let profile = client(
        "sh",
        &["-c", ". \"$HOME/.pulumi/airlock-env.sh\"; echo $PULUMI_PLUGIN_DOWNLOAD_URL_OVERRIDES"],
        tmp.path(),
        &user2,
        &[],
    );
    assert_eq!(profile.trim(), format!(".*={base}/pulumi/plugins"));
    // The plugin URL the CLI would build from that override serves the locked plugin.
    let plugin =
        pulumi.files.iter().find(|f| f.path.ends_with("linux-amd64.tar.gz") && f.path.contains("plugins")).unwrap();
    let name = plugin.path.rsplit('/').next().unwrap();
    assert_eq!(sha256(&get(&format!("{}/{name}", profile.trim().trim_start_matches(".*=")))), plugin.sha256);

    // Over https, by the appliance's name: the script, fetched with curl trusting only the CA
    // the test checked against the fingerprint the appliance shows, refuses a wrong fingerprint
    // and configures nothing; with the right one, the clients trust the CA with nothing but the
    // script's configuration. The name resolves through a private hosts file.
    let fp = vm.succeed(". /run/airlock/site.env && echo \"$AIRLOCK_CA_SHA256\"").unwrap().trim().to_string();
    assert!(banner.contains(&format!("ca sha256: {fp}\n")), "the banner shows the fingerprint: {banner}");
    let ca = tmp.path().join("checked-ca.crt");
    std::fs::write(&ca, get(&format!("{base}/ca.crt"))).unwrap();
    assert_eq!(airlock_appliance::firstboot::tls::fingerprint(&std::fs::read_to_string(&ca).unwrap()).unwrap(), fp);
    let port = vm.host_port(443);
    let https = format!("https://mirror.airlock.internal:{port}");
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "120", "--cacert", ca.to_str().unwrap()])
        .args(["--resolve", &format!("mirror.airlock.internal:{port}:127.0.0.1")])
        .arg(format!("{https}/setup/airlock-setup.sh"))
        .output()
        .unwrap();
    assert!(out.status.success(), "GET {https}/setup/airlock-setup.sh: {}", String::from_utf8_lossy(&out.stderr));
    let https_script = tmp.path().join("airlock-setup-https.sh");
    std::fs::write(&https_script, &out.stdout).unwrap();
    let hosts = tmp.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.1 mirror.airlock.internal\n").unwrap();
    let named = |home: &str| User { hosts: Some(hosts.clone()), ..User::new(&tmp.path().join(home)) };
    let wrong = named("home-wrong-ca");
    let mut other = fp.clone();
    other.replace_range(0..2, if fp.starts_with("00") { "11" } else { "00" });
    let script_arg = [https_script.to_str().unwrap()];
    let refused = run_client("sh", &script_arg, tmp.path(), &wrong, &[("AIRLOCK_CA_SHA256", &other)]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains(&format!("fingerprint {fp}, not {other}: refusing it")), "{err}");
    assert_eq!(std::fs::read_dir(&wrong.home).unwrap().count(), 0, "nothing is configured: {err}");
    let no_fp = run_client("sh", &script_arg, tmp.path(), &wrong, &[]);
    assert!(!no_fp.status.success(), "over https the fingerprint is required");
    assert_eq!(std::fs::read_dir(&wrong.home).unwrap().count(), 0);

    let user3 = named("home-https");
    let out = client("sh", &script_arg, tmp.path(), &user3, &[("AIRLOCK_CA_SHA256", &fp)]);
    assert!(out.contains(&format!("has the expected fingerprint {fp}")), "{out}");
    assert!(out.contains(&format!("configured for {https}")), "the script served over https names it: {out}");
    let https_dir = tmp.path().join("after-https-setup");
    std::fs::create_dir_all(&https_dir).unwrap();
    pip_installs_pulumi(&https_dir, &user3, &[], &[]);
    npm_installs_pulumi(&https, &https_dir, &user3, &[("npm_config_globalconfig", empty_global.to_str().unwrap())]);
    // Go (as the Pulumi CLI, also Go) trusts the CA through SSL_CERT_FILE from the env file.
    let sourced = ". \"$HOME/.pulumi/airlock-env.sh\"; echo \"$SSL_CERT_FILE\"";
    let cert_file = client("sh", &["-c", sourced], tmp.path(), &user3, &[]);
    go_builds_against_fixtures(&https_dir, &user3, &[("SSL_CERT_FILE", cert_file.trim())]);

    vm.shutdown(Duration::from_secs(180)).unwrap();
}
