//! The served tree as a whole: the locked files in place, the documents each ecosystem
//! generates from them, the listing page, the `/setup/` scripts and nginx's configuration. This
//! is the build's "build mirrors" stage; what is particular to an ecosystem comes from it
//! through [`crate::mirror::ECOSYSTEMS`].

use crate::clock::BuildClock;
use crate::lock::Lock;
use crate::lock_check::{self, VerifiedSet};
use crate::mirror::ecosystem::stored;
use crate::mirror::{ECOSYSTEMS, IndexEntry, PLACEHOLDER, ROOT};
use crate::oci::BlobStore;
use crate::plan::BuildPlan;
use crate::tree::{Content, Meta, NodeKind, Tree};
use anyhow::{Context, Result, anyhow};
use std::path::Path;
use std::sync::Arc;

/// nginx's site: the mirror on port 80 and, with the instance's certificate (made on first boot
/// by `airlock firstboot`, or the site's own), on 443 (`mirror.<domain>`). Placeholders in JSON,
/// HTML and the setup scripts become the URL the client used (its scheme and `Host`), so every
/// document is right through any address, name or port forward. `/ca.crt` is the CA clients
/// fetch over plain HTTP before they trust anything (its fingerprint is on the console).
/// These are the mirror's own settings inside nginx's default server ([`nginx_conf`]); each
/// ecosystem adds its locations.
const NGINX_SITE: &str = r#"    root /usr/share/airlock/mirror;
    index index.html;
    default_type application/octet-stream;
    sub_filter '@AIRLOCK_MIRROR_URL@' '$scheme://$http_host';
    sub_filter_once off;

"#;

/// The setup scripts are text whose URLs `sub_filter` completes.
const SETUP_LOCATION: &str = r#"    location /setup/ {
        types { }
        default_type text/plain;
        sub_filter_types text/plain;
    }
"#;

/// nginx's configuration of the mirror site: the front door's default server
/// (`front_door::default_server`) with the mirror's settings and every ecosystem's locations.
pub fn nginx_conf() -> String {
    let mut locations = NGINX_SITE.to_string();
    for e in ECOSYSTEMS {
        locations.push_str(e.nginx_locations());
    }
    locations.push_str(SETUP_LOCATION);
    crate::front_door::default_server("the appliance's mirrors (/usr/share/airlock/mirror), read-only.", &locations)
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The listing page: what the appliance carries (versions, sizes) and how clients use it.
pub fn index_page(plan: &BuildPlan, sets: &[VerifiedSet<'_>]) -> String {
    let title = escape(if plan.description.is_empty() { &plan.name } else { &plan.description });
    let mut h = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head><body>\n<h1>{title}</h1>\n<p>{} {} &mdash; mirrors served by this appliance at <code>{PLACEHOLDER}/</code>.</p>\n",
        escape(&plan.name),
        escape(&plan.version)
    );
    h.push_str(&format!(
        "<h2>Set up a client</h2>\n<p>Linux and macOS: <code>curl -fsS {PLACEHOLDER}/setup/airlock-setup.sh | sh</code><br>\nWindows: <code>irm {PLACEHOLDER}/setup/airlock-setup.ps1 | iex</code><br>\nThey configure pip, npm, Go, NuGet and the Pulumi CLI for this appliance (<a href=\"setup/airlock-setup.sh\">sh</a>, <a href=\"setup/airlock-setup.ps1\">PowerShell</a>) and make them trust its CA (<a href=\"ca.crt\">ca.crt</a>) once it matches the fingerprint on the appliance's console (<code>ca sha256: ...</code>), given as <code>AIRLOCK_CA_SHA256</code>: required over https.</p>\n"
    ));
    for verified in sets {
        let set = verified.locked;
        let total: u64 = set.files.iter().map(|f| f.size).sum();
        let IndexEntry { heading, usage: use_it } = verified.planned.ecosystem.index_entry();
        h.push_str(&format!(
            "<h2>{heading}</h2>\n<p>{} files, {}. {use_it}</p>\n<table>\n",
            set.files.len(),
            human(total)
        ));
        for f in &set.files {
            // Indexes list what a person looks for; every file is still listed with its size.
            h.push_str(&format!(
                "<tr><td><a href=\"{p}\">{p}</a></td><td>{}</td><td><code>{}</code></td></tr>\n",
                human(f.size),
                &f.sha256[..16],
                p = escape(&f.path)
            ));
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body></html>\n");
    h
}

/// NuGet's configuration with the appliance as its only source; `base` is the script's variable.
fn nuget_config(base: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<configuration>\n  <packageSources>\n    <clear />\n    <add key=\"airlock\" value=\"{base}/nuget/v3/index.json\" protocolVersion=\"3\" />\n  </packageSources>\n</configuration>\n"
    )
}

/// The POSIX shell setup script (`setup/airlock-setup.sh`; its header documents the options):
/// configures the clients and makes them trust the appliance's CA, downloaded from `/ca.crt`
/// and checked against the banner's fingerprint. The base URL comes from the argument,
/// `$AIRLOCK_MIRROR`, or the URL nginx substitutes for the placeholder when serving the script.
pub fn setup_sh() -> String {
    include_str!("setup/airlock-setup.sh").replace("@NUGET_CONFIG@\n", &nuget_config("$base"))
}

/// The PowerShell setup script (Windows, or PowerShell anywhere), doing what [`setup_sh`] does.
pub fn setup_ps1() -> String {
    include_str!("setup/airlock-setup.ps1").replace("@NUGET_CONFIG@\n", &nuget_config("$Base"))
}

/// The build stage: every locked file of the plan's sets verified and placed, the indexes
/// generated, what an ecosystem installs on the appliance (the Pulumi CLI) installed, the site
/// and nginx configured.
pub fn build(
    root: &mut Tree,
    plan: &BuildPlan,
    lock: &Lock,
    store: &BlobStore,
    spool: &Path,
    clock: &BuildClock,
) -> Result<()> {
    if plan.mirrors.is_empty() {
        return Ok(());
    }
    root.begin_layer();
    std::fs::create_dir_all(spool).with_context(|| format!("creating {}", spool.display()))?;
    let sets = lock_check::verify_mirrors(plan, lock, store)?;
    let mut meta = Meta::root(0o644);
    meta.mtime = clock.epoch();
    let mut generated: Vec<(String, String)> = Vec::new();
    for set in &sets {
        for (f, p) in set.locked.files.iter().zip(&set.paths) {
            let at = format!("{ROOT}/{}", f.path);
            root.insert(
                at.as_bytes(),
                meta.clone(),
                NodeKind::File { size: f.size, content: Content::Host(Arc::from(p.as_path())) },
            )
            .map_err(|e| anyhow!("placing /{at}: {e}"))?;
        }
        let files = stored(&set.locked.files, &set.paths);
        let name = set.planned.name();
        generated.extend(set.planned.ecosystem.render(&files).with_context(|| format!("mirror set `{name}`"))?);
        set.planned.settings.install(root, &files, spool).with_context(|| format!("mirror set `{name}`"))?;
    }
    generated.push(("index.html".into(), index_page(plan, &sets)));
    generated.push(("setup/airlock-setup.sh".into(), setup_sh()));
    generated.push(("setup/airlock-setup.ps1".into(), setup_ps1()));
    for (path, text) in generated {
        root.put_file_with(&format!("{ROOT}/{path}"), meta.clone(), text)?;
    }
    // The mirror is nginx's default site (`front_door` removes Debian's).
    root.put_file("etc/nginx/conf.d/airlock-mirror.conf", 0o644, nginx_conf())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_config_filters_only_documents() {
        // Tarballs, packages and zips must never pass through sub_filter.
        assert!(nginx_conf().contains(&format!("sub_filter '{PLACEHOLDER}' '$scheme://$http_host'")));
        for binary in ["\\.tgz$", "\\.nupkg$", "\\.zip$"] {
            assert!(nginx_conf().contains(binary), "{binary}");
        }
        assert!(setup_sh().contains(&format!("AIRLOCK_MIRROR:-{PLACEHOLDER}")));
        assert!(setup_ps1().contains(&format!("'{PLACEHOLDER}'")));
        assert!(!setup_sh().contains("@NUGET_CONFIG@") && !setup_ps1().contains("@NUGET_CONFIG@"));
        // TLS with the instance's certificate, and the CA over plain HTTP.
        assert!(nginx_conf().contains("listen 443 ssl default_server;"));
        assert!(nginx_conf().contains("location = /ca.crt {\n        alias /var/lib/airlock/tls/ca.crt;"));
    }

    use crate::firstboot::tls;
    use crate::mirror::download::tests::serve;
    use std::path::PathBuf;
    use std::process::{Command, Output};

    /// A test CA and its fingerprint as the banner prints it.
    fn test_ca() -> (String, String) {
        let ca = tls::make_ca("airlock setup test CA").unwrap();
        let fp = tls::fingerprint(&ca.cert_pem).unwrap();
        (ca.cert_pem, fp)
    }

    /// Serves `ca` as `/ca.crt` (404 for anything else) on 127.0.0.1.
    fn serve_ca(ca: &str) -> String {
        let body = ca.as_bytes().to_vec();
        serve(move |p| if p == "/ca.crt" { (200, body.clone(), None) } else { (404, Vec::new(), None) }).0
    }

    /// Runs the setup script in a clean environment: only `PATH`, `HOME` and `env`.
    fn run_setup(home: &Path, path: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let script = home.parent().unwrap().join("airlock-setup.sh");
        std::fs::write(&script, setup_sh()).unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg(&script).args(args).env_clear().env("HOME", home).env("PATH", path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    fn new_home(tmp: &Path, name: &str) -> PathBuf {
        let home = tmp.join(name);
        std::fs::create_dir_all(&home).unwrap();
        home
    }

    /// A folder of links to every program in /usr/bin and /bin but `program`, to use as `PATH`.
    fn path_without(tmp: &Path, program: &str) -> PathBuf {
        let bin = tmp.join(format!("bin-without-{program}"));
        std::fs::create_dir_all(&bin).unwrap();
        for dir in ["/usr/bin", "/bin"] {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let link = bin.join(e.file_name());
                if e.file_name() != program && !link.exists() {
                    std::os::unix::fs::symlink(e.path(), link).unwrap();
                }
            }
        }
        bin
    }

    /// `openssl s_server -WWW` (a server nobody here wrote) serving `dir` over https on
    /// 127.0.0.1 with a certificate the CA issued; killed when dropped.
    struct HttpsServer {
        child: std::process::Child,
        base: String,
    }

    impl HttpsServer {
        fn start(dir: &Path, ca: &tls::Bundle) -> Self {
            use std::io::BufRead;
            let server = tls::issue_server(ca, &["127.0.0.1".to_string()]).unwrap();
            std::fs::write(dir.join("server.crt"), &server.cert_pem).unwrap();
            std::fs::write(dir.join("server.key"), &server.key_pem).unwrap();
            let mut child = Command::new("openssl")
                .args(["s_server", "-WWW", "-accept", "127.0.0.1:0", "-cert", "server.crt", "-key", "server.key"])
                .current_dir(dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("openssl s_server (Debian's openssl, see .ci/install-deps)");
            let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
            let addr = lines
                .find_map(|l| l.unwrap().strip_prefix("ACCEPT ").map(String::from))
                .expect("s_server names the address it accepts on");
            HttpsServer { child, base: format!("https://{addr}") }
        }
    }

    impl Drop for HttpsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn setup_script_configures_every_client_for_a_base_url() {
        let (ca, fp) = test_ca();
        let base = serve_ca(&ca);
        let tmp = tempfile::tempdir().unwrap();
        let home = new_home(tmp.path(), "home");
        std::fs::write(home.join(".npmrc"), "registry=https://elsewhere.example.test/\nfund=false\ncafile=/old\n")
            .unwrap();
        let out = run_setup(&home, "/usr/bin:/bin", &[&format!("{base}/")], &[]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // Without a fingerprint over http, it shows the CA's in the banner's format.
        assert!(stdout.contains(&format!("      {fp}\n")) && stdout.contains("console banner"), "{stdout}");
        let read = |p: &str| std::fs::read_to_string(home.join(p)).unwrap();
        let bundle = home.join(".config/airlock/ca-bundle.pem");
        let bundle = bundle.to_str().unwrap();
        assert_eq!(
            read(".config/pip/pip.conf"),
            format!("[global]\nindex-url = {base}/pypi/simple/\ncert = {bundle}\ntrusted-host = 127.0.0.1\n")
        );
        assert_eq!(read(".npmrc"), format!("fund=false\nregistry={base}/npm/\ncafile={bundle}\n"));
        assert_eq!(read(".config/go/env"), format!("GOPROXY={base}/go,off\nGOSUMDB=off\nGOTOOLCHAIN=local\n"));
        assert!(read(".nuget/NuGet/NuGet.Config").contains(&format!("value=\"{base}/nuget/v3/index.json\"")));
        // The CA is stored as served, and the bundle is the system's (when there is one) plus it.
        assert_eq!(read(".config/airlock/ca.crt"), ca);
        let bundle_text = std::fs::read_to_string(bundle).unwrap();
        assert!(bundle_text.ends_with(&ca), "the bundle ends with the CA");
        if let Ok(system) = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt") {
            assert_eq!(bundle_text, format!("{system}\n{ca}"));
        }
        let env = read(".pulumi/airlock-env.sh");
        for line in [
            format!("export PULUMI_PLUGIN_DOWNLOAD_URL_OVERRIDES='.*={base}/pulumi/plugins'\n"),
            format!("export SSL_CERT_FILE='{bundle}'\n"),
            format!("export NODE_EXTRA_CA_CERTS='{}'\n", home.join(".config/airlock/ca.crt").display()),
        ] {
            assert!(env.contains(&line), "{line} in {env}");
        }
        // Running it twice changes nothing.
        let profile = read(".profile");
        let again = run_setup(&home, "/usr/bin:/bin", &[], &[("AIRLOCK_MIRROR", &base)]);
        assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
        assert_eq!(read(".profile"), profile);
        assert_eq!(read(".npmrc"), format!("fund=false\nregistry={base}/npm/\ncafile={bundle}\n"));
        // Without a served URL substituted, it refuses instead of writing a placeholder.
        let bare = run_setup(&home, "/usr/bin:/bin", &[], &[]);
        assert!(!bare.status.success());
    }

    #[test]
    fn setup_script_checks_the_ca_fingerprint_before_configuring_anything() {
        let (ca, fp) = test_ca();
        let base = serve_ca(&ca);
        let tmp = tempfile::tempdir().unwrap();
        // Any case, with or without colons, as an option or from the environment.
        let plain = fp.replace(':', "").to_lowercase();
        for (args, env) in [
            (vec!["--ca-sha256", fp.as_str(), base.as_str()], vec![]),
            (vec![base.as_str()], vec![("AIRLOCK_CA_SHA256", plain.as_str())]),
        ] {
            let home = new_home(tmp.path(), "good");
            let out = run_setup(&home, "/usr/bin:/bin", &args, &env);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("has the expected fingerprint {fp}")));
            assert_eq!(std::fs::read_to_string(home.join(".config/airlock/ca.crt")).unwrap(), ca);
        }

        // Another CA's fingerprint: refused, and the HOME stays empty.
        let (_, other) = test_ca();
        let home = new_home(tmp.path(), "wrong");
        let out = run_setup(&home, "/usr/bin:/bin", &["--ca-sha256", &other, &base], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(&format!("has the SHA-256 fingerprint {fp}, not {other}: refusing it")), "{err}");
        assert!(entries(&home).is_empty(), "{:?}", entries(&home));
        // Something that is not a fingerprint is refused as such.
        let out = run_setup(&home, "/usr/bin:/bin", &["--ca-sha256", "AB:CD", &base], &[]);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("must be 32 hex bytes"));
        // Over https the fingerprint is required: nothing is downloaded or written without it.
        let https = base.replace("http://", "https://");
        let out = run_setup(&home, "/usr/bin:/bin", &[&https], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("over https the CA's fingerprint is required"), "{err}");
        // A second certificate riding along with the right one is refused.
        let two = serve_ca(&format!("{ca}{}", test_ca().0));
        let out = run_setup(&home, "/usr/bin:/bin", &["--ca-sha256", &fp, &two], &[]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("holds 2 PEM certificates, not one"));
        // A cut download is refused.
        let cut = serve_ca(&ca[..ca.len() - 30]);
        let out = run_setup(&home, "/usr/bin:/bin", &["--ca-sha256", &fp, &cut], &[]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("is cut short"));
        // --system refuses before anything is written: as a user it needs root; as root, no trust
        // store tool is on this PATH (update-ca-certificates lives in /usr/sbin, p11-kit's `trust`
        // is left out), so the host's store is never touched.
        let no_trust = path_without(tmp.path(), "trust");
        let out = run_setup(&home, no_trust.to_str().unwrap(), &["--system", "--ca-sha256", &fp, &base], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("--system changes the system trust store") || err.contains("--system: neither"), "{err}");
        assert!(entries(&home).is_empty(), "{:?}", entries(&home));
    }

    #[test]
    fn setup_script_computes_the_fingerprint_without_openssl() {
        let (ca, fp) = test_ca();
        let base = serve_ca(&ca);
        let tmp = tempfile::tempdir().unwrap();
        // A PATH holding every program of the host but openssl: sha256sum over the DER instead.
        let bin = path_without(tmp.path(), "openssl");
        let home = new_home(tmp.path(), "home");
        let out = run_setup(&home, bin.to_str().unwrap(), &["--ca-sha256", &fp, &base], &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (_, other) = test_ca();
        let home = new_home(tmp.path(), "wrong");
        let out = run_setup(&home, bin.to_str().unwrap(), &["--ca-sha256", &other, &base], &[]);
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("has the SHA-256 fingerprint {fp}, not")));
        assert!(entries(&home).is_empty());
    }

    #[test]
    fn setup_script_fetches_the_ca_over_https_only_with_its_fingerprint() {
        let ca = tls::make_ca("airlock setup test CA").unwrap();
        let fp = tls::fingerprint(&ca.cert_pem).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let site = tmp.path().join("site");
        std::fs::create_dir_all(&site).unwrap();
        std::fs::write(site.join("ca.crt"), &ca.cert_pem).unwrap();
        let server = HttpsServer::start(&site, &ca);
        let base = server.base.clone();
        // With curl, and with wget where there is no curl: the one unverifiable download, then
        // the fingerprint decides.
        let without_curl = path_without(tmp.path(), "curl");
        for (name, path) in [("curl", "/usr/bin:/bin"), ("wget", without_curl.to_str().unwrap())] {
            let home = new_home(tmp.path(), &format!("home-{name}"));
            let out = run_setup(&home, path, &[&base], &[("AIRLOCK_CA_SHA256", &fp)]);
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(std::fs::read_to_string(home.join(".config/airlock/ca.crt")).unwrap(), ca.cert_pem);
            let pip = std::fs::read_to_string(home.join(".config/pip/pip.conf")).unwrap();
            assert!(pip.contains(&format!("index-url = {base}/pypi/simple/\ncert = ")), "{pip}");
            assert!(!pip.contains("trusted-host"), "https needs no trusted-host: {pip}");
            let (_, other) = test_ca();
            let wrong = new_home(tmp.path(), &format!("wrong-{name}"));
            let out = run_setup(&wrong, path, &["--ca-sha256", &other, &base], &[]);
            assert!(String::from_utf8_lossy(&out.stderr).contains("refusing it"), "{name}");
            assert!(entries(&wrong).is_empty(), "{name}: {:?}", entries(&wrong));
        }
    }
}
