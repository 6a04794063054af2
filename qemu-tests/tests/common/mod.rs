//! Building the images the VM tests boot, through the airlock library.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Fixed build clock for test images (reproducible, and what the image tests use too).
pub const EPOCH: i64 = 1_700_000_000;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("qemu-tests/ is in the repository").to_path_buf()
}

/// An image built for a test, with its output directory kept alive.
pub struct TestImage {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub plan: airlock::plan::BuildPlan,
}

/// Builds `images/<name>/appliance.toml` with the command channel added (test builds only).
pub fn build_test_image(name: &str) -> anyhow::Result<TestImage> {
    let spec = repo_root().join(format!("images/{name}/appliance.toml"));
    // The demo's images are built from Debian packages on this machine and its test fixtures
    // (stand-ins for the Pulumi CLI and plugin, Go modules, a NuGet package) by its scripts,
    // then pinned with the mirrors the host's pip and npm resolve.
    let dir = spec.parent().expect("spec has a folder");
    let scripts: Vec<PathBuf> = [dir.join("containers/build-images"), dir.join("fixtures/build-fixtures")]
        .into_iter()
        .filter(|s| s.exists())
        .collect();
    build_spec(&spec, &scripts, None)
}

/// Builds `spec` (a spec or a test spec) with the command channel added: runs `scripts` (they
/// make the spec's local sources), fetches what it lists, and builds `formats` (the spec's
/// own when `None`).
pub fn build_spec(
    spec: &Path,
    scripts: &[PathBuf],
    formats: Option<Vec<airlock::outputs::Format>>,
) -> anyhow::Result<TestImage> {
    let plan = airlock::test_spec::plan_spec_or_test_spec(spec, &airlock::plan::HostContext::default())?;
    if !plan.containers.is_empty() || !plan.mirrors.is_empty() {
        for script in scripts {
            host(script.to_str().expect("UTF-8 path"), &[]);
        }
        let opts = airlock::fetch::FetchOptions {
            cache_dir: airlock::cache::cache_dir()?,
            update: true,
            registry: Default::default(),
        };
        airlock::fetch::fetch(&plan, &opts)?;
    }
    let dir = tempfile::Builder::new().prefix("airlock-vm-image-").tempdir()?;
    let opts = airlock::pipeline::BuildOptions {
        out_dir: dir.path().to_path_buf(),
        cache_dir: airlock::cache::cache_dir()?,
        clock: airlock::clock::BuildClock::fixed(EPOCH),
        test_overlays: vec![qemu_tests::guest_overlay_dir()],
        formats,
        signing_key: None,
        provisioner: PathBuf::from(env!("CARGO_BIN_EXE_airlock-under-test")),
    };
    let report = airlock::pipeline::build(&plan, &opts)?;
    Ok(TestImage { dir, image: report.image, plan })
}

/// Runs a host program and returns stdout, failing with its stderr.
pub fn host(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); see .ci/install-deps"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A plain HTTP/1.0 GET from the host; returns (status line, body).
pub fn http_get(port: u16, path: &str) -> anyhow::Result<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: appliance\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    Ok((head.lines().next().unwrap_or("").to_string(), body.to_string()))
}

/// Converts a VM's qcow2 overlay to a raw image and runs `e2fsck -fn` on each ext4 partition
/// (found through the image's GPT, as the guest left it).
pub fn e2fsck_partitions(overlay: &Path, work: &Path) {
    let raw = work.join("after-boot.raw");
    host("qemu-img", &["convert", "-O", "raw", overlay.to_str().expect("UTF-8"), raw.to_str().expect("UTF-8")]);
    let file = std::fs::File::open(&raw).expect("open converted image");
    let layout = airlock::gpt::GptLayout::read(&file).expect("GPT after boot");
    for p in layout.partitions.iter().filter(|p| p.name != "esp") {
        let part = work.join(format!("{}.img", p.name));
        let mut src = std::fs::File::open(&raw).expect("open");
        use std::io::{Read, Seek, SeekFrom};
        src.seek(SeekFrom::Start(p.start)).expect("seek");
        let mut dst = std::fs::File::create(&part).expect("create");
        std::io::copy(&mut src.take(p.size), &mut dst).expect("copy partition");
        let out = Command::new("e2fsck").args(["-fn", part.to_str().expect("UTF-8")]).output().expect("run e2fsck");
        assert!(
            out.status.success(),
            "e2fsck -fn on partition {} after shutdown:\n{}{}",
            p.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_file(&part).ok();
    }
    std::fs::remove_file(&raw).ok();
}
