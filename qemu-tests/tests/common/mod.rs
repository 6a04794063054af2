//! What the VM tests share: their test images (built once for all test binaries, see
//! `qemu_tests::test_image`), host programs, and judging a VM's disk from outside.
#![allow(dead_code)]

pub use airlock::partition::{Role, Slot};
use qemu_tests::Vm;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use qemu_tests::test_image::TestImage;

/// The partition of `role` in `image`'s GPT (recognised by type, as the appliance does).
pub fn partition(image: &Path, role: Role) -> airlock::gpt::PartitionEntry {
    let layout = airlock::gpt::GptLayout::read(&std::fs::File::open(image).expect("open the image"))
        .expect("the image has a GPT");
    airlock::partition::find(&layout.partitions, role).cloned().unwrap_or_else(|| panic!("no {role} partition"))
}

/// Where byte `offset` of `file` (in the image's root filesystem) is in the image: its block,
/// found with debugfs in the root partition.
pub fn root_file_byte(image: &Path, file: &str, offset: u64) -> u64 {
    let root = partition(image, Role::Root(Slot::A));
    let fs = format!("{}?offset={}", image.display(), root.start);
    let block: u64 = host("debugfs", &["-R", &format!("bmap {file} {}", offset / 4096), &fs])
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("debugfs bmap {file}: {e}"));
    root.start + block * 4096 + offset % 4096
}

/// A qcow2 disk over `image` with the byte at `at` inverted: qemu-io writes the overlay, the
/// shared image is never written.
pub fn disk_with_flipped_byte(image: &Path, disk: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let mut byte = [0u8; 1];
    std::fs::File::open(image).expect("open the image").read_exact_at(&mut byte, at).expect("read the byte");
    let (image, disk) = (image.to_str().expect("UTF-8"), disk.to_str().expect("UTF-8"));
    host("qemu-img", &["create", "-q", "-f", "qcow2", "-F", "raw", "-b", image, disk]);
    host("qemu-io", &["-f", "qcow2", "-c", &format!("write -P {} {at} 1", byte[0] ^ 0xff), disk]);
}

/// The demo's ext4 partitions as built (slot B is empty).
pub const EXT4_PARTITIONS: &[Role] = &[Role::Root(Slot::A), Role::Data];

/// `images/<name>/appliance.toml` with the command channel added (test builds only), from the
/// test image cache under the target directory.
pub fn build_test_image(name: &str) -> anyhow::Result<TestImage> {
    build_spec(&qemu_tests::test_image::Recipe::image(name))
}

/// Builds a recipe's spec (a spec or a test spec) with the command channel added, from the
/// test image cache under the target directory: runs its scripts (they make the spec's local
/// sources), fetches what it lists, and builds its formats (the spec's own when `None`).
pub fn build_spec(recipe: &qemu_tests::test_image::Recipe) -> anyhow::Result<TestImage> {
    qemu_tests::test_image::test_image(
        recipe,
        Path::new(env!("CARGO_BIN_EXE_appliance-under-test")),
        Path::new(env!("CARGO_TARGET_TMPDIR")),
    )
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

/// Converts a VM's qcow2 overlay to a raw image and runs `e2fsck -fn` on each of its ext4
/// partitions (`expected`, by GPT name, as the guest left the table); fails naming the
/// partition and quoting e2fsck. Every copy is sparse (the disk is mostly empty) and lives in
/// a temporary directory that is removed afterwards, even when the check fails.
pub fn e2fsck_partitions(overlay: &Path, expected: &[Role]) {
    let work = tempfile::Builder::new().prefix("airlock-e2fsck-").tempdir().expect("creating a temporary directory");
    let raw = work.path().join("disk.raw");
    // qemu-img leaves the zero parts of the disk as holes in the raw file.
    host("qemu-img", &["convert", "-O", "raw", overlay.to_str().expect("UTF-8"), raw.to_str().expect("UTF-8")]);
    let layout = airlock::gpt::GptLayout::read(&std::fs::File::open(&raw).expect("open converted image"))
        .expect("the guest left a readable GPT");
    for role in expected {
        let p = airlock::partition::find(&layout.partitions, *role)
            .unwrap_or_else(|| panic!("no {role} partition in the guest's GPT: {:?}", layout.partitions));
        let name = format!("{role} ({})", p.name);
        let part = work.path().join(format!("{}.img", role.key()));
        copy_sparse(&raw, p.start, p.size, &part);
        let out = Command::new("e2fsck").args(["-fn", part.to_str().expect("UTF-8")]).output().expect("run e2fsck");
        assert!(
            out.status.success(),
            "e2fsck -fn on partition {name} after shutdown:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_file(&part).expect("removing the partition copy");
    }
}

/// Copies `len` bytes at `offset` of `src` into a new file `dest`, leaving holes where the
/// source holds zeros.
fn copy_sparse(src: &Path, offset: u64, len: u64, dest: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    const BLOCK: usize = 1 << 20;
    let mut input = std::fs::File::open(src).expect("open image");
    input.seek(SeekFrom::Start(offset)).expect("seek in image");
    let mut input = input.take(len);
    let mut output = std::fs::File::create(dest).expect("create partition file");
    let mut buf = vec![0u8; BLOCK];
    loop {
        let mut filled = 0;
        while filled < BLOCK {
            let n = input.read(&mut buf[filled..]).expect("read image");
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        if buf[..filled].iter().all(|&b| b == 0) {
            output.seek(SeekFrom::Current(filled as i64)).expect("seek in partition file");
        } else {
            output.write_all(&buf[..filled]).expect("write partition file");
        }
    }
    output.set_len(len).expect("size the partition file");
}

/// `curl` from the host over TLS, trusting only `ca`, reaching `name` through the VM's port
/// forward of 443. Returns (HTTP status, body). If curl fails, the test fails with what the
/// guest's network and nginx look like.
pub fn curl_tls(vm: &mut Vm, ca: &Path, name: &str, path: &str) -> (String, String) {
    curl_tls_as(vm, ca, name, path, None)
}

/// [`curl_tls`] with basic-auth credentials (`user:password`).
pub fn curl_tls_as(vm: &mut Vm, ca: &Path, name: &str, path: &str, creds: Option<&str>) -> (String, String) {
    let args: Vec<&str> = creds.map(|c| vec!["-u", c]).unwrap_or_default();
    curl_tls_args(vm, ca, name, path, &args)
}

/// [`curl_tls`] with more curl arguments (e.g. `--data TEXT` for a POST).
pub fn curl_tls_args(vm: &mut Vm, ca: &Path, name: &str, path: &str, args: &[&str]) -> (String, String) {
    let port = vm.host_port(443);
    let out = Command::new("curl")
        .args(args)
        .args(["-sS", "--max-time", "40", "--cacert", ca.to_str().unwrap(), "--resolve"])
        .arg(format!("{name}:{port}:127.0.0.1"))
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .expect("running curl (see .ci/install-deps)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let state = vm
            .succeed(
                "ss -tlnp; systemctl status --no-pager -n 20 nginx.service api.service; nft list ruleset | head -60",
            )
            .unwrap_or_else(|e| format!("(the guest's state could not be read: {e:#})"));
        panic!(
            "curl https://{name}{path} failed with {}: {}{stdout}\nguest state:\n{state}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    (code.to_string(), body.to_string())
}

/// The CA fetched over plain HTTP from the appliance, as a client does before trusting it.
pub fn fetch_ca(vm: &Vm, dir: &Path, name: &str) -> PathBuf {
    let (status, body) = http_get(vm.host_port(80), "/ca.crt").unwrap();
    assert!(status.contains("200"), "GET /ca.crt: {status}");
    assert!(body.starts_with("-----BEGIN CERTIFICATE-----"), "{body}");
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}
