//! Shared helpers for image tests: running the judges (tools nobody here wrote) and the airlock
//! binary, and reading parts of images.
#![allow(dead_code)]

pub mod base_files;
pub mod raw_tar;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs a host tool; a missing tool fails the test loudly (an image test never passes by not
/// judging).
pub fn tool(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{program}` ({e}); install it (see .ci/run)"))
}

/// Runs a host tool and requires success; returns stdout.
pub fn tool_ok(program: &str, args: &[&str]) -> String {
    let out = tool(program, args);
    assert!(
        out.status.success(),
        "`{program} {}` failed with {}:\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `airlock` binary under test: the one cargo built, or `$AIRLOCK_TEST_BINARY` (to run the
/// same tests against another build, e.g. to show that a test fails on the code before a fix).
pub fn airlock_exe() -> PathBuf {
    match std::env::var_os("AIRLOCK_TEST_BINARY") {
        Some(other) => {
            eprintln!("testing {} (AIRLOCK_TEST_BINARY), not this build", Path::new(&other).display());
            PathBuf::from(other)
        }
        None => PathBuf::from(env!("CARGO_BIN_EXE_airlock")),
    }
}

/// Runs the `airlock` binary under test with a fixed `SOURCE_DATE_EPOCH`.
pub fn airlock(args: &[&str]) -> Output {
    Command::new(airlock_exe())
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("RUST_LOG", "warn")
        .output()
        .expect("running the airlock binary")
}

pub fn airlock_ok(args: &[&str]) -> String {
    let out = airlock(args);
    assert!(
        out.status.success(),
        "airlock {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn airlock_err(args: &[&str]) -> String {
    let out = airlock(args);
    assert!(!out.status.success(), "airlock {} unexpectedly succeeded", args.join(" "));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `airlock` with its standard input on a pseudo-terminal (so that it asks for
/// confirmation), waits until it has asked on stderr (`prompt`), runs `meanwhile`, answers
/// `answer` and returns its output.
pub fn airlock_answering(args: &[&str], prompt: &str, meanwhile: impl FnOnce(), answer: &str) -> Output {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use std::io::{Read, Write};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("opening a pseudo-terminal");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().expect("UTF-8 pty name"))
        .expect("opening the pty's terminal side");
    let mut child = Command::new(airlock_exe())
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("RUST_LOG", "warn")
        .stdin(slave)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting airlock");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains(prompt) {
        let n = stderr.read(&mut byte).expect("reading airlock's stderr");
        assert!(n == 1, "airlock ended without asking `{prompt}`: {}", String::from_utf8_lossy(&seen));
        seen.push(byte[0]);
    }
    meanwhile();
    let mut master = std::fs::File::from(master);
    master.write_all(answer.as_bytes()).expect("answering on the pty");
    let mut rest = Vec::new();
    stderr.read_to_end(&mut rest).expect("reading airlock's stderr");
    seen.extend(rest);
    let mut out = child.wait_with_output().expect("waiting for airlock");
    out.stderr = seen;
    out
}

pub fn sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).expect("open for hashing");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("hashing");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Copies `len` bytes at `offset` of `image` into a new file (a partition to hand to fsck).
pub fn extract(image: &Path, offset: u64, len: u64, dest: &Path) -> PathBuf {
    use std::io::{Read, Seek, SeekFrom};
    let mut src = std::fs::File::open(image).expect("open image");
    src.seek(SeekFrom::Start(offset)).expect("seek");
    let mut dst = std::fs::File::create(dest).expect("create partition file");
    std::io::copy(&mut src.take(len), &mut dst).expect("copy partition");
    dest.to_path_buf()
}

/// Removes `path` if it is there; any other failure fails the test.
pub fn remove_if_present(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("removing {}: {e}", path.display()),
    }
}

/// Deterministic pseudo-random bytes (xorshift), for large test files.
pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The repository root (tests run with the package directory as cwd).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("builder/ is inside the repository").to_path_buf()
}

/// Runs `debugfs -R <request>` on an ext4 image file and returns stdout.
pub fn debugfs(fs_image: &Path, request: &str) -> String {
    let out = tool("debugfs", &["-R", request, fs_image.to_str().expect("UTF-8 path")]);
    assert!(out.status.success(), "debugfs -R '{request}' failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `e2fsck -fn` must find nothing to fix.
pub fn assert_e2fsck_clean(fs_image: &Path) {
    let out = tool("e2fsck", &["-fn", fs_image.to_str().expect("UTF-8 path")]);
    assert!(
        out.status.success(),
        "e2fsck -fn {} reports problems:\n{}{}",
        fs_image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Prepares the demo as the README's first steps do (`images/demo/prepare`: its container
/// images, cached by their script, its test fixtures and `airlock fetch`, here with `--update`
/// and this test build of airlock). Returns the script's output if it failed.
pub fn prepare_demo_images() -> Result<(), String> {
    let script = repo_root().join("images/demo/prepare");
    let out = Command::new(&script)
        .arg("--update")
        .env("AIRLOCK", airlock_exe())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .expect("running images/demo/prepare");
    if !out.status.success() {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        return Err(text);
    }
    Ok(())
}

/// A directory for what a whole test process shares through a `static` (a build, a key set).
/// Statics are never dropped, so a `TempDir` there would stay in `/tmp` after every run; this
/// one lives under the target directory (`CARGO_TARGET_TMPDIR`) with a fixed name, and each run
/// removes the previous run's first, so at most one is ever kept.
pub fn process_shared_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shared").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("removing the last run's {}: {e}", dir.display()));
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}
