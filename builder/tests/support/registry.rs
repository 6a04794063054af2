//! Debian's `docker-registry` (the CNCF distribution registry) and `skopeo`, as judges nobody
//! here wrote: a registry started on a local address for one test, killed when dropped, its log
//! printed if the test failed.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Panics (failing the test) when a tool the test depends on is not installed.
pub fn require_tool(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install Debian's `{package}` package (this test never skips)"
    );
}

/// Runs a command that must succeed; returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

pub fn skopeo(args: &[&str]) -> String {
    require_tool("/usr/bin/skopeo", "skopeo");
    run(Command::new("/usr/bin/skopeo").arg("--insecure-policy").args(args))
}

pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0)).expect("a free port").local_addr().expect("bound address").port()
}

/// A running `docker-registry`.
pub struct DockerRegistry {
    child: Child,
    pub ip: String,
    pub port: u16,
    pub storage: PathBuf,
    log: PathBuf,
}

impl DockerRegistry {
    /// Serves `storage` on `ip:port` (HTTPS with `tls` = (certificate, key) if given); its
    /// configuration and log go to `work`. Returns once it answers.
    pub fn start(storage: &Path, work: &Path, ip: &str, port: u16, tls: Option<(&Path, &Path)>) -> Self {
        require_tool("/usr/bin/docker-registry", "docker-registry");
        let config = work.join("registry.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {ip}:{port}\n",
            storage.display()
        );
        if let Some((cert, key)) = tls {
            yaml.push_str(&format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display()));
        }
        fs::write(&config, yaml).expect("writing the registry's configuration");
        let log = work.join("registry.log");
        let log_file = fs::File::create(&log).expect("creating the registry's log");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("starting docker-registry");
        let mut registry = Self { child, ip: ip.to_string(), port, storage: storage.to_path_buf(), log };
        registry.wait_ready(tls.is_some());
        registry
    }

    /// Ready when `/v2/` answers 200 (over TLS: when the port accepts connections).
    fn wait_ready(&mut self, tls: bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "docker-registry exited early ({status}):\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if TcpStream::connect((self.ip.as_str(), self.port)).is_ok()
                && (tls || self.try_get("/v2/").is_ok_and(|(status, _)| status == 200))
            {
                return;
            }
            assert!(Instant::now() < deadline, "docker-registry not ready in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ip:port`.
    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// A plain-HTTP GET: status and body.
    pub fn try_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect((self.ip.as_str(), self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.host())?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        let status = response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((status, body))
    }

    /// Stops it now (a later start on the same port serves the same references).
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- docker-registry log ({}) ---\n{log}", self.storage.display());
        }
    }
}
