//! The standing hostile corpus: inputs made to hurt — archives (traversal, links, bombs of every
//! compression airlock reads, sparse, deep, wide, duplicate, truncated, non-UTF-8, control
//! characters), special files, specs and release directories — each run through the `airlock`
//! binary as a user would, with the error it must give. After every case the output folder and
//! the process's temporary folder (`TMPDIR`) must hold nothing new, every message must be free
//! of raw control characters, and no case may run longer than [`DEADLINE`] (a hang is a
//! failure, not a wait). Property tests at the end feed the tar reader, the spec parser and
//! the size arithmetic with generated input.
#![allow(clippy::unwrap_used, reason = "a test stops at the first unexpected error")]

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::raw_tar::RawTar;
use support::{airlock_exe, airlock_ok, pseudo_random};

/// The longest a hostile case may run: every refusal here takes well under a second.
const DEADLINE: Duration = Duration::from_secs(120);

/// A folder per case: `in/` for inputs, `out/` for outputs, `tmp/` as the process's TMPDIR.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["in", "out", "tmp"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        Self { dir }
    }

    fn input(&self, name: &str) -> PathBuf {
        self.dir.path().join("in").join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.input(name);
        fs::write(&p, bytes).unwrap();
        p
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn tmp(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    /// Runs airlock with TMPDIR in the sandbox, killing it at the deadline.
    fn run(&self, args: &[&str]) -> Output {
        let mut child = Command::new(airlock_exe())
            .args(args)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env("RUST_LOG", "warn")
            .env("TMPDIR", self.tmp())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > DEADLINE {
                child.kill().unwrap();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "airlock {} hung (killed after {DEADLINE:?}):\n{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait_with_output().unwrap()
    }

    /// Runs a case that must be refused with `expected` in its error, leaving nothing behind.
    fn refused(&self, case: &str, args: &[&str], expected: &str) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{case}: airlock {} was accepted:\n{stderr}", args.join(" "));
        assert!(stderr.contains(expected), "{case}: expected `{expected}` in:\n{stderr}");
        self.assert_clean(case, &out);
        stderr
    }

    /// Nothing in `out/` or `tmp/`, and no raw control character in what airlock printed.
    fn assert_clean(&self, case: &str, out: &Output) {
        for dir in [self.out(), self.tmp()] {
            let left: Vec<String> =
                fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            assert!(left.is_empty(), "{case}: left behind in {}: {left:?}", dir.display());
        }
        assert_printable(case, &out.stdout);
        assert_printable(case, &out.stderr);
    }
}

fn assert_printable(case: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let bad: Vec<char> = text.chars().filter(|c| c.is_control() && *c != '\n' && *c != '\t').collect();
    assert!(bad.is_empty(), "{case}: raw control characters {bad:?} reached the terminal:\n{text}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

/// A tar holding one regular file of `len` zero bytes (written in pieces, never whole in
/// memory when compressed through `sink`); returns the sink.
fn zero_file_tar<W: Write>(len: u64, sink: W) -> W {
    let mut b = tar::Builder::new(sink);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(len);
    h.set_cksum();
    b.append_data(&mut h, "zeros.bin", std::io::repeat(0).take(len)).unwrap();
    b.into_inner().unwrap()
}

use std::io::Read;

/// `airlock disk` of a 64 MiB image whose ESP (the whole disk) comes from `esp`.
fn disk_esp<'a>(sb: &'a Sandbox, esp: &'a str, out: &'a str) -> Vec<&'a str> {
    let _ = sb;
    vec!["disk", "--size", "64MiB", "--seed", "hostile", "--esp", esp, out]
}

/// One hostile archive and what airlock must say about it.
struct ArchiveCase {
    name: &'static str,
    file: &'static str,
    bytes: Vec<u8>,
    /// Also tried as the root filesystem (ext4), which must say the same.
    as_root_too: bool,
    expected: &'static str,
}

fn archive_cases() -> Vec<ArchiveCase> {
    let long_dir = vec!["d"; 3000].join("/");
    let mut cases = vec![
        ArchiveCase {
            name: "traversal with ..",
            file: "dotdot.tar",
            bytes: RawTar::default().entry("../etc/passwd", b'0', b"x", "").finish(),
            as_root_too: true,
            expected: "entry `../etc/passwd`: path has a `..` component",
        },
        ArchiveCase {
            name: "traversal hidden in the middle",
            file: "middle.tar",
            bytes: RawTar::default().entry("./a/../../etc/passwd", b'0', b"x", "").finish(),
            as_root_too: true,
            expected: "path has a `..` component",
        },
        ArchiveCase {
            name: "absolute path",
            file: "absolute.tar",
            bytes: RawTar::default().entry("/etc/passwd", b'0', b"x", "").finish(),
            as_root_too: true,
            expected: "entry `/etc/passwd`: path is absolute",
        },
        ArchiveCase {
            name: "write through a symlink",
            file: "symlink.tar",
            bytes: RawTar::default().entry("etc", b'2', b"", "/etc").entry("etc/passwd", b'0', b"x", "").finish(),
            as_root_too: true,
            expected: "parent `etc` is a symlink, not a directory (refusing to write through it)",
        },
        ArchiveCase {
            name: "hard link to a missing target",
            file: "hardlink-missing.tar",
            bytes: RawTar::default().entry("a", b'1', b"", "nowhere").finish(),
            as_root_too: true,
            expected: "hard link target `nowhere` does not exist",
        },
        ArchiveCase {
            name: "hard link out of the archive",
            file: "hardlink-escape.tar",
            bytes: RawTar::default().entry("a", b'1', b"", "../../etc/shadow").finish(),
            as_root_too: true,
            expected: "hard link target `../../etc/shadow`: path has a `..` component",
        },
        ArchiveCase {
            name: "hard link to a directory",
            file: "hardlink-dir.tar",
            bytes: RawTar::default().entry("d/", b'5', b"", "").entry("l", b'1', b"", "d").finish(),
            as_root_too: true,
            expected: "hard link target `d` is a directory",
        },
        ArchiveCase {
            name: "duplicate entry",
            file: "duplicate.tar",
            bytes: RawTar::default().entry("a", b'0', b"1", "").entry("a", b'0', b"2", "").finish(),
            as_root_too: true,
            expected: "entry `a`: entry appears more than once in this input",
        },
        ArchiveCase {
            name: "truncated inside file data",
            file: "truncated.tar",
            bytes: {
                let mut t = RawTar::default().entry("a", b'0', &[7u8; 4096], "").finish();
                t.truncate(512 + 1000);
                t
            },
            as_root_too: true,
            expected: "archive is truncated",
        },
        ArchiveCase {
            name: "no end-of-archive marker",
            file: "no-end.tar",
            bytes: RawTar::default().entry("a", b'0', b"x", "").0.clone(),
            as_root_too: true,
            expected: "archive is truncated: no end-of-archive marker",
        },
        ArchiveCase {
            name: "truncated gzip",
            file: "truncated.tar.gz",
            bytes: {
                let mut g = gzip(&RawTar::default().entry("a", b'0', &pseudo_random(100_000, 1), "").finish());
                g.truncate(g.len() / 2);
                g
            },
            as_root_too: true,
            expected: "archive is truncated: compressed stream ends early",
        },
        ArchiveCase {
            name: "truncated zstd",
            file: "truncated.tar.zst",
            bytes: {
                let mut z = zstd(&RawTar::default().entry("a", b'0', &pseudo_random(100_000, 2), "").finish());
                z.truncate(z.len() / 2);
                z
            },
            as_root_too: true,
            expected: "truncated",
        },
        ArchiveCase {
            name: "garbage header",
            file: "garbage.tar",
            bytes: pseudo_random(4096, 3),
            as_root_too: true,
            expected: "malformed entry",
        },
        ArchiveCase {
            name: "gzip inside gzip",
            file: "nested.tar.gz",
            bytes: gzip(&gzip(&RawTar::default().entry("a", b'0', b"x", "").finish())),
            as_root_too: false,
            expected: "malformed entry",
        },
        ArchiveCase {
            name: "non-UTF-8 name on FAT",
            file: "latin1.tar",
            bytes: RawTar::default().entry_bytes(b"caf\xe9", b'0', b"x", "", 0o644, 0, 0).finish(),
            as_root_too: false,
            expected: "`caf\\xe9`: the name is not valid UTF-8",
        },
        ArchiveCase {
            name: "terminal escape in a name",
            file: "escape.tar",
            bytes: RawTar::default().entry_bytes(b"\x1b]0;owned\x07/../x", b'0', b"x", "", 0o644, 0, 0).finish(),
            as_root_too: true,
            expected: "entry `\\u{1b}]0;owned\\u{7}/../x`: path has a `..` component",
        },
        ArchiveCase {
            name: "PAX sparse file",
            file: "pax-sparse.tar",
            bytes: RawTar::default()
                .pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")])
                .entry("s", b'0', b"", "")
                .finish(),
            as_root_too: true,
            expected: "unsupported entry type PAX sparse file",
        },
        ArchiveCase {
            name: "deeper than PATH_MAX",
            file: "deep.tar",
            bytes: RawTar::default()
                .pax(&[("path", format!("{long_dir}/f").as_bytes())])
                .entry("f", b'0', b"x", "")
                .finish(),
            as_root_too: true,
            expected: "path is 6001 bytes long; a path in an image is at most 4095 bytes (PATH_MAX)",
        },
    ];
    // Wide: more entries in one folder than FAT allows (the listing must say so, not choke).
    let mut wide = RawTar::default();
    for i in 0..70_000 {
        wide.entry(&format!("w/{i}"), b'0', b"", "");
    }
    cases.push(ArchiveCase {
        name: "wide folder on FAT",
        file: "wide.tar.zst",
        bytes: zstd(&wide.finish()),
        as_root_too: false,
        expected: "FAT allows at most 65536 per directory",
    });
    cases
}

#[test]
fn hostile_archives_are_refused_naming_the_entry_and_leave_nothing_behind() {
    let mut count = 0;
    for case in archive_cases() {
        let sb = Sandbox::new();
        let input = sb.write(case.file, &case.bytes);
        let out = sb.out().join("x.raw");
        sb.refused(case.name, &disk_esp(&sb, s(&input), s(&out)), case.expected);
        count += 1;
        if case.as_root_too {
            let esp = sb.input("esp");
            fs::create_dir(&esp).unwrap();
            sb.refused(
                case.name,
                &["disk", "--size", "128MiB", "--seed", "h", "--esp", s(&esp), "--root", s(&input), s(&out)],
                case.expected,
            );
            count += 1;
        }
    }
    eprintln!("hostile archives: {count} cases");
}

/// Bombs of every compression airlock reads, refused by the ratio or by what the destination
/// holds, before the expanded bytes are written anywhere.
#[test]
fn decompression_and_sparse_bombs_stop_at_their_bound() {
    let sb = Sandbox::new();
    let out = sb.out().join("x.raw");
    // 300 MiB of zeros: a few hundred KB of gzip, a few KB of zstd.
    let big = 300 << 20;
    let gz = sb.input("bomb.tar.gz");
    let f = flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), flate2::Compression::best());
    zero_file_tar(big, f).finish().unwrap();
    let zst = sb.input("bomb.tar.zst");
    let f = zstd::stream::write::Encoder::new(fs::File::create(&zst).unwrap(), 3).unwrap().auto_finish();
    drop(zero_file_tar(big, f));
    // Many gzip members, which are read one after the other: a small archive, then members of
    // zeros after its end (the tar reader would stop at its end marker; the decompression must
    // stop at the bound before).
    let members = sb.input("members.tar.gz");
    let mut multi = gzip(&zero_file_tar(1 << 20, Vec::new()));
    let zeros = gzip(&vec![0u8; 8 << 20]);
    for _ in 0..40 {
        multi.extend_from_slice(&zeros);
    }
    fs::write(&members, &multi).unwrap();

    for (name, input) in [("gzip", &gz), ("zstd", &zst), ("gzip members", &members)] {
        // By the destination: a 64 MiB disk cannot take 300 MiB.
        sb.refused(
            name,
            &disk_esp(&sb, s(input), s(&out)),
            "input too large: expands to more than its destination holds (64MiB)",
        );
        // By the ratio: a 4 GiB disk could, but not from so few bytes.
        sb.refused(
            name,
            &["disk", "--size", "4GiB", "--seed", "h", "--esp", s(input), s(&out)],
            "input too large: expands to more than 100 times its compressed size",
        );
    }

    // GNU sparse: a file of holes is a tar of a few KB (GNU tar writes it).
    let esp = sb.input("esp");
    fs::create_dir(&esp).unwrap();
    let sparse_50m = sparse_tar(&sb, "sparse-50m.tar", 50 << 20);
    sb.refused(
        "GNU sparse, by the destination",
        &[
            "disk",
            "--size",
            "128MiB",
            "--seed",
            "h",
            "--esp",
            s(&esp),
            "--esp-size",
            "40MiB",
            "--root",
            s(&sparse_50m),
            "--root-size",
            "32MiB",
            s(&out),
        ],
        "sparse file of 50MiB expands to more than its destination holds (32MiB)",
    );
    let sparse_3g = sparse_tar(&sb, "sparse-3g.tar", 3 << 30);
    sb.refused(
        "GNU sparse, by the ratio",
        &["disk", "--size", "8GiB", "--seed", "h", "--esp", s(&esp), "--root", s(&sparse_3g), s(&out)],
        "sparse file of 3GiB expands to more than 100 times its compressed size",
    );
}

/// A GNU sparse tar (written by GNU tar) of one file of `len` bytes, all holes but 4 bytes.
fn sparse_tar(sb: &Sandbox, name: &str, len: u64) -> PathBuf {
    let holes = sb.dir.path().join("holes");
    fs::create_dir_all(&holes).unwrap();
    let sparse_file = holes.join("sparse.img");
    let f = fs::File::create(&sparse_file).unwrap();
    f.set_len(len).unwrap();
    f.write_all_at(b"data", len / 2).unwrap();
    drop(f);
    let tar_path = sb.input(name);
    let tar = Command::new("tar")
        .args(["--sparse", "--format=gnu", "-cf", s(&tar_path), "-C", s(&holes), "sparse.img"])
        .output()
        .unwrap();
    assert!(tar.status.success(), "GNU tar: {}", String::from_utf8_lossy(&tar.stderr));
    fs::remove_file(&sparse_file).unwrap();
    assert!(fs::metadata(&tar_path).unwrap().len() < 100_000, "GNU tar wrote a sparse archive");
    tar_path
}

/// Special files where a file is expected are refused, not opened (a FIFO would hang the
/// open or the read forever; /dev/zero would never end).
#[test]
fn special_files_are_refused_as_inputs() {
    let sb = Sandbox::new();
    let fifo = sb.input("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let out = sb.out().join("x.raw");
    let esp = sb.input("esp");
    fs::create_dir(&esp).unwrap();
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("FIFO as ESP", disk_esp(&sb, s(&fifo), s(&out)), "is neither a directory nor a regular file"),
        ("/dev/zero as ESP", disk_esp(&sb, "/dev/zero", s(&out)), "is neither a directory nor a regular file"),
        (
            "FIFO as root",
            vec!["disk", "--size", "128MiB", "--seed", "h", "--esp", s(&esp), "--root", s(&fifo), s(&out)],
            "is neither a directory nor a regular file",
        ),
        (
            "FIFO as signing key",
            vec!["disk", "--size", "64MiB", "--seed", "h", "--esp", s(&esp), "--sign-key", s(&fifo), s(&out)],
            "secret key file",
        ),
        ("FIFO as public key", vec!["verify", s(&esp), "--pubkey", s(&fifo)], "is a FIFO (named pipe)"),
        ("FIFO as image to flash", vec!["flash", s(&fifo), s(&out), "--no-verify", "--yes"], "is a FIFO"),
    ];
    for (case, args, expected) in &cases {
        sb.refused(case, args, expected);
    }
    eprintln!("special files: {} cases", cases.len());
}

/// A planted symlink at the output's partial name must never be written through.
#[test]
fn a_symlink_planted_at_the_partial_name_is_not_followed() {
    let sb = Sandbox::new();
    let victim = sb.input("victim");
    fs::write(&victim, b"precious").unwrap();
    let esp = sb.input("esp");
    fs::create_dir_all(esp.join("EFI")).unwrap();
    fs::write(esp.join("EFI/x"), b"x").unwrap();
    std::os::unix::fs::symlink(&victim, sb.out().join(".x.raw.partial")).unwrap();
    let out = sb.run(&disk_esp(&sb, s(&esp), s(&sb.out().join("x.raw"))));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(&victim).unwrap(), b"precious", "the symlink's target was overwritten");
    let left: Vec<_> = fs::read_dir(sb.out()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["x.raw"]);
}

/// SIGTERM while the image is being written removes the partial file.
#[test]
fn an_interrupted_build_leaves_no_partial_file() {
    let sb = Sandbox::new();
    let esp = sb.input("esp");
    fs::create_dir(&esp).unwrap();
    // A root of 3 GiB of holes: cheap to make, long enough to write that a signal finds the
    // partial file in place.
    let root = sb.input("root");
    fs::create_dir(&root).unwrap();
    fs::File::create(root.join("big")).unwrap().set_len(3 << 30).unwrap();
    let out = sb.out().join("x.raw");
    let partial = sb.out().join(".x.raw.partial");
    let mut child = Command::new(airlock_exe())
        .args(["disk", "--size", "4GiB", "--seed", "h", "--esp", s(&esp), "--root", s(&root), s(&out)])
        .env("TMPDIR", sb.tmp())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !partial.exists() {
        assert!(child.try_wait().unwrap().is_none(), "airlock ended before the partial file was seen");
        assert!(start.elapsed() < DEADLINE, "no partial file appeared");
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "airlock must end by the signal it got: {status:?}");
    let left: Vec<_> = fs::read_dir(sb.out()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "an interrupted build left {left:?}");
}

/// A small signed release (`airlock disk` with raw and raw.zst) in `<sandbox>/in/rel`, and
/// its public key.
fn small_release(sb: &Sandbox) -> (PathBuf, PathBuf) {
    let esp = sb.input("relesp");
    fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
    fs::write(esp.join("EFI/BOOT/BOOTX64.EFI"), pseudo_random(100_000, 4)).unwrap();
    let key = sb.input("key");
    airlock_ok(&["keygen", "--no-passphrase", "--out", s(&key)]);
    let rel = sb.input("rel");
    fs::create_dir(&rel).unwrap();
    airlock_ok(&[
        "disk",
        "--size",
        "40MiB",
        "--seed",
        "rel",
        "--esp",
        s(&esp),
        "--format",
        "raw,raw.zst",
        "--sign-key",
        s(&sb.input("key.key")),
        s(&rel.join("small.raw")),
    ]);
    (rel, sb.input("key.pub"))
}

/// Re-signs `rel`'s SHA256SUMS after its files were changed, as an insider holding the key can.
fn resign(rel: &Path, key: &Path) {
    let names: Vec<String> =
        fs::read_to_string(rel.join("SHA256SUMS")).unwrap().lines().map(|l| l[66..].to_string()).collect();
    sign_listing(rel, key, &names.iter().map(String::as_str).collect::<Vec<_>>());
}

/// Writes and signs a SHA256SUMS over `names` in `rel`.
fn sign_listing(rel: &Path, key: &Path, names: &[&str]) {
    let files: Vec<(String, PathBuf)> = names.iter().map(|n| (n.to_string(), rel.join(n))).collect();
    sign_text(rel, key, &airlock::signing::sha256sums(&files).unwrap());
}

/// Writes `text` as SHA256SUMS and signs it.
fn sign_text(rel: &Path, key: &Path, text: &str) {
    fs::write(rel.join("SHA256SUMS"), text).unwrap();
    let kp = airlock::signing::read_secret_key(key, || unreachable!("unencrypted")).unwrap();
    fs::write(rel.join("SHA256SUMS.minisig"), airlock::signing::sign(&kp, text.as_bytes(), "resigned").unwrap())
        .unwrap();
}

#[test]
fn hostile_release_directories() {
    let sb = Sandbox::new();
    let (pristine, public) = small_release(&sb);
    let key = sb.input("key.key");
    let verify = |rel: &Path, extra: &[&str]| {
        let mut args = vec!["verify".to_string(), s(rel).to_string(), "--pubkey".into(), s(&public).to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let fresh = |name: &str| {
        let rel = sb.input(name);
        fs::create_dir(&rel).unwrap();
        for e in fs::read_dir(&pristine).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), rel.join(e.file_name())).unwrap();
        }
        rel
    };
    let mut count = 0;
    let mut refused = |case: &str, args: Vec<String>, expected: &str| -> String {
        count += 1;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sb.refused(case, &args, expected)
    };

    // A bad signature stops verification: nothing else is opened, decompressed or parsed,
    // not even a zstd bomb posing as the image next to it.
    let rel = fresh("badsig");
    fs::remove_file(rel.join("small.raw")).unwrap();
    let bomb = zstd::encode_all(std::io::repeat(0).take(1 << 30), 19).unwrap();
    fs::write(rel.join("small.raw.zst"), &bomb).unwrap();
    let mut sums = fs::read_to_string(rel.join("SHA256SUMS")).unwrap();
    sums.push_str(&format!("{}  extra\n", "0".repeat(64)));
    fs::write(rel.join("SHA256SUMS"), &sums).unwrap();
    let err = refused("signature fails", verify(&rel, &[]), "SHA256SUMS: does not match its signature");
    assert!(err.contains("nothing else was checked"), "{err}");
    assert!(!err.contains("small.raw"), "files were looked at after the signature failed: {err}");

    // Not signed at all.
    let rel = fresh("unsigned");
    fs::remove_file(rel.join("SHA256SUMS.minisig")).unwrap();
    refused("no signature", verify(&rel, &[]), "SHA256SUMS.minisig: cannot be read");

    // A SHA256SUMS of a gigabyte is not read whole.
    let rel = fresh("hugesums");
    let f = fs::OpenOptions::new().append(true).open(rel.join("SHA256SUMS")).unwrap();
    f.set_len(1 << 30).unwrap();
    refused("huge SHA256SUMS", verify(&rel, &[]), "is larger than 1MiB");

    // A signature file that is a FIFO.
    let rel = fresh("fifosig");
    fs::remove_file(rel.join("SHA256SUMS.minisig")).unwrap();
    assert!(Command::new("mkfifo").arg(rel.join("SHA256SUMS.minisig")).status().unwrap().success());
    refused("FIFO signature", verify(&rel, &[]), "is a FIFO (named pipe), not a regular file");

    // An image that SHA256SUMS does not list is not read.
    let rel = fresh("unlisted-image");
    fs::write(rel.join("other.raw"), b"not an image").unwrap();
    refused(
        "unlisted image",
        verify(&rel.join("other.raw"), &[]),
        "other.raw: is not listed in SHA256SUMS: nothing vouches for it, so it was not read",
    );

    // Files nobody vouches for: a warning, and with --strict an error.
    let rel = fresh("extra-file");
    fs::write(rel.join("README.txt"), b"trust me").unwrap();
    let out = sb.run(&verify(&rel, &[]).iter().map(String::as_str).collect::<Vec<_>>());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("warning: not covered by SHA256SUMS, so not verified: README.txt"), "{stdout}");
    sb.assert_clean("extra file", &out);
    refused("extra file, --strict", verify(&rel, &["--strict"]), "README.txt: is not covered by SHA256SUMS (--strict)");

    // A re-signed manifest listing the same range sixty times: refused before any hashing.
    let rel = fresh("duplicate-ranges");
    let manifest_path = rel.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&fs::read(&manifest_path).unwrap()).unwrap();
    let first = manifest["disk"]["partitions"][0].clone();
    let parts: Vec<serde_json::Value> = (0..60).map(|_| first.clone()).collect();
    manifest["disk"]["partitions"] = serde_json::Value::Array(parts);
    fs::write(&manifest_path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    resign(&rel, &key);
    let err = refused("duplicate ranges", verify(&rel, &[]), "manifest.json: lists a partition number twice");
    assert!(!err.contains("contents differ"), "the ranges were hashed: {err}");

    // Ranges outside the disk.
    let rel = fresh("outside");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(rel.join("manifest.json")).unwrap()).unwrap();
    manifest["disk"]["partitions"][0]["size"] = serde_json::json!(u64::MAX);
    fs::write(rel.join("manifest.json"), serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    resign(&rel, &key);
    refused("range outside the disk", verify(&rel, &[]), "lies outside the");

    // A raw.zst that expands past the disk the signed manifest states.
    let rel = fresh("zst-longer");
    fs::remove_file(rel.join("small.raw")).unwrap();
    let mut raw = fs::read(pristine.join("small.raw")).unwrap();
    raw.extend_from_slice(&[0u8; 1 << 20]);
    fs::write(rel.join("small.raw.zst"), zstd(&raw)).unwrap();
    sign_listing(&rel, &key, &["manifest.json", "small.raw.zst"]);
    refused("zst longer than the disk", verify(&rel, &[]), "expands past 40MiB");

    // A listed name with a terminal escape in it.
    let rel = fresh("escape-name");
    let mut sums = fs::read_to_string(rel.join("SHA256SUMS")).unwrap();
    sums.push_str(&format!("{}  evil\x1b[2Jname\n", "0".repeat(64)));
    sign_text(&rel, &key, &sums);
    refused("control character in a listed name", verify(&rel, &[]), "contains a control character");

    eprintln!("hostile release directories: {count} cases");
}

/// A spec that `airlock build --check` accepts, with `{services}` and `{extra}` to fill.
const SPEC: &str = r#"
name = "hostile"
version = "1.0.0"
{top}
[os]
suite = "trixie"
mirror = "http://mirror.example/debian/"
hostname = "hostile.local"
[disk]
size = "2GiB"
data_size = "256MiB"
{disk}
[[services]]
name = "web"
unit = "{unit}"
url = "{url}"
"#;

fn spec(top: &str, disk: &str, unit: &str, url: &str) -> String {
    SPEC.replace("{top}", top).replace("{disk}", disk).replace("{unit}", unit).replace("{url}", url)
}

/// Specs made to hurt: each `airlock build --check` must refuse, naming the key.
#[test]
fn hostile_specs_are_refused_by_check() {
    let sb = Sandbox::new();
    let folder = sb.input("spec");
    fs::create_dir_all(folder.join("overlay/etc")).unwrap();
    let ok = spec("", "", "nginx.service", "http://{address}/");
    let path = folder.join("appliance.toml");
    fs::write(&path, &ok).unwrap();
    let check = |text: &str| {
        fs::write(&path, text).unwrap();
        vec!["build".to_string(), "--check".into(), s(&path).to_string()]
    };
    // The base spec passes, so each refusal below is the one change's doing.
    let out = sb.run(&check(&ok).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "data size that wraps the sum",
            spec("", "", "nginx.service", "http://x/")
                .replace("data_size = \"256MiB\"", "data_size = \"18446744073709551615\""),
            "`disk.data_size`: 16.0EiB is larger than the largest disk airlock builds (16TiB)",
        ),
        (
            "disk size past 16 TiB",
            spec("", "", "nginx.service", "http://x/").replace("size = \"2GiB\"", "size = \"18446744073708503040\""),
            "`disk.size`: 16.0EiB is larger than the largest disk airlock builds (16TiB)",
        ),
        (
            "newline in a unit injects directives",
            spec("", "", "db.service\\nExecStartPre=/bin/sh -c evil\\nRequires=x.service", "http://x/"),
            "`services[0].unit`: `db.service\\nExecStartPre=/bin/sh -c evil\\nRequires=x.service` is not a systemd unit name",
        ),
        (
            "unit without a type",
            spec("", "", "nginx", "http://x/"),
            "`services[0].unit`: `nginx` is not a systemd unit name",
        ),
        ("unit that is a template", spec("", "", "getty@.service", "http://x/"), "is a template"),
        (
            "url with a newline",
            spec("", "", "nginx.service", "http://x/\\nweb2 evil.service http://y/"),
            "`services[0].url`: ",
        ),
        ("url with a space", spec("", "", "nginx.service", "http://x/ y"), "holds a space or a control character"),
        (
            "url that is not http",
            spec("", "", "nginx.service", "file:///etc/shadow"),
            "must start with http:// or https://",
        ),
        (
            "overlay at /etc",
            spec("overlays = [\"/etc\"]", "", "nginx.service", "http://x/"),
            "`overlays`: /etc is outside the spec's folder",
        ),
        (
            "overlay up and out",
            spec("overlays = [\"../../../../../../../../etc\"]", "", "nginx.service", "http://x/"),
            "is outside the spec's folder",
        ),
        (
            "units.dirs outside",
            spec("units = { dirs = [\"/etc\"] }", "", "nginx.service", "http://x/"),
            "`units.dirs`: /etc is outside",
        ),
        (
            "mirror with a newline",
            spec("", "", "nginx.service", "http://x/").replace(
                "mirror = \"http://mirror.example/debian/\"",
                "mirror = \"http://mirror.example/debian/\\ndeb http://evil/ trixie main\"",
            ),
            "`os.mirror`: ",
        ),
        (
            "terminal escape in a value",
            spec("", "", "nginx.service", "http://x/")
                .replace("name = \"hostile\"", "name = \"a\\u001b]0;owned\\u0007\""),
            "`name`: `a\\u{1b}]0;owned\\u{7}` must be 1-63 lower-case letters",
        ),
        (
            "description with control characters",
            spec("description = \"a\\u0007b\"", "", "nginx.service", "http://x/"),
            "`description`: must be one line",
        ),
    ];
    for (case, text, expected) in &cases {
        sb.refused(case, &check(text).iter().map(String::as_str).collect::<Vec<_>>(), expected);
    }
    // A symlink inside the spec's folder that leads out is outside too.
    std::os::unix::fs::symlink("/etc", folder.join("sneaky")).unwrap();
    sb.refused(
        "overlay through a symlink",
        &check(&spec("overlays = [\"sneaky\"]", "", "nginx.service", "http://x/"))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "it is /etc",
    );
    // The loud setting allows a folder outside.
    fs::create_dir_all(sb.input("outside/etc")).unwrap();
    let allowed = spec(
        "overlays = [\"../outside\"]\nallow_overlays_outside_the_spec_folder = true",
        "",
        "nginx.service",
        "http://x/",
    );
    let out = sb.run(&check(&allowed).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A spec that is not a small text file.
    let fifo = sb.input("fifo.toml");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    sb.refused("FIFO as spec", &["build", "--check", s(&fifo)], "is a FIFO (named pipe), not a regular file");
    sb.refused("/dev/zero as spec", &["build", "--check", "/dev/zero"], "is a character device, not a regular file");
    let huge = sb.input("huge.toml");
    fs::File::create(&huge).unwrap().set_len(1 << 30).unwrap();
    sb.refused("a gigabyte spec", &["build", "--check", s(&huge)], "is larger than 1MiB");
    // `airlock disk` sizes that would wrap.
    let esp = sb.input("esp");
    fs::create_dir(&esp).unwrap();
    let out = sb.out().join("x.raw");
    sb.refused(
        "--data that wraps",
        &["disk", "--size", "2GiB", "--seed", "h", "--esp", s(&esp), "--data", "18446744073708503040", s(&out)],
        "the data partition's size 16.0EiB is larger than the largest disk airlock builds (16TiB)",
    );
    sb.refused(
        "--size past 16 TiB",
        &["disk", "--size", "18446744073709550592", "--seed", "h", "--esp", s(&esp), s(&out)],
        "is larger than the largest disk airlock builds (16TiB)",
    );
    eprintln!("hostile specs and sizes: {} cases", cases.len() + 8);
}

/// Property tests: generated input for the tar reader.
mod properties {
    use super::*;
    use airlock::expansion::ExpansionLimit;
    use airlock::tree::tar_input::{TarOptions, Whiteouts, apply_tar};
    use airlock::tree::{NodeKind, Tree};
    use proptest::prelude::*;

    /// A valid archive with every kind of entry the reader handles.
    fn seed_archive() -> Vec<u8> {
        RawTar::default()
            .entry("etc/", b'5', b"", "")
            .entry("etc/hostname", b'0', b"appliance\n", "")
            .entry("etc/alias", b'1', b"", "etc/hostname")
            .entry("bin", b'2', b"", "usr/bin")
            .entry("dev/null", b'3', b"", "")
            .entry("run/fifo", b'6', b"", "")
            .pax(&[("mtime", b"1700000000.5"), ("SCHILY.xattr.user.x", b"1")])
            .entry("usr/lib/data", b'0', &[0xab; 1500], "")
            .finish()
    }

    /// Reads every file of the tree to its end: contents must be where the tree says.
    fn read_all(tree: &Tree) {
        let mut reader = tree.content_reader();
        for (_, id) in tree.walk() {
            if let NodeKind::File { size, content } = &tree.node(id).kind {
                let mut buf = vec![0u8; usize::try_from(*size).unwrap().min(1 << 20)];
                reader.read_at(content, *size, 0, &mut buf).unwrap();
            }
        }
    }

    fn apply(bytes: &[u8]) -> anyhow::Result<Tree> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input.tar");
        fs::write(&path, bytes).unwrap();
        let mut tree = Tree::new();
        let opts = TarOptions {
            whiteouts: Whiteouts::Apply,
            spool_dir: dir.path(),
            limit: ExpansionLimit::capacity(64 << 20),
        };
        apply_tar(&mut tree, &path, &opts)?;
        Ok(tree)
    }

    /// Sizes near 2^64: the ones that wrap a sum or an alignment.
    fn near_max() -> impl Strategy<Value = u64> {
        (0u64..=8192).prop_map(|k| u64::MAX - k * 512)
    }

    /// Disk sizes: mostly real ones (64 MiB to 16 GiB), some from anywhere, some near 2^64.
    fn disk_size() -> impl Strategy<Value = u64> {
        prop_oneof![3 => (64u64..(1 << 14)).prop_map(|k| k << 20), 1 => any::<u64>(), 1 => near_max()]
    }

    /// Partition sizes: real ones, and as many near 2^64.
    fn partition_size() -> impl Strategy<Value = u64> {
        prop_oneof![2 => (1u64..4096).prop_map(|k| k << 20), 2 => near_max(), 1 => any::<u64>()]
    }

    proptest! {
        // A failure prints its minimal input; nothing is written into the source tree.
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// A disk plan either fails or lays every partition inside the disk's usable area,
        /// aligned, none overlapping: no size, however large, wraps into a small one.
        #[test]
        fn disk_plans_never_wrap(
            disk in disk_size(),
            sizes in proptest::collection::vec(proptest::option::weighted(0.8, partition_size()), 1..4),
        ) {
            use airlock::disk::PartitionRequest;
            use airlock::partition::{Role, Slot};
            let roles = [Role::Esp, Role::Root(Slot::A), Role::Data];
            let requests: Vec<PartitionRequest> = sizes
                .iter()
                .zip(roles)
                .map(|(size, role)| PartitionRequest { role, size: *size, tree: Tree::new() })
                .collect();
            let clock = airlock::clock::BuildClock::fixed(0);
            if let Ok(plan) = airlock::disk::plan(disk, airlock::seed::Seed::new("p"), clock, requests) {
                let mut end_before = 0u64;
                for p in &plan.layout.partitions {
                    let end = p.start.checked_add(p.size);
                    prop_assert!(end.is_some_and(|e| e <= disk), "{p:?} on a {disk}-byte disk");
                    prop_assert!(p.start >= end_before, "overlap at {p:?}");
                    prop_assert!(p.size > 0 && p.start % (1 << 20) == 0);
                    end_before = end.unwrap_or(u64::MAX);
                }
                for (asked, got) in sizes.iter().zip(&plan.layout.partitions) {
                    if let Some(asked) = asked {
                        prop_assert!(got.size >= *asked, "asked {asked}, got {}", got.size);
                    }
                }
            }
        }

        /// Sizes as users write them: parsing never panics, and what parses prints back to the
        /// same number when it is a whole number of its unit.
        #[test]
        fn byte_sizes_parse_or_fail_cleanly(text in "[0-9]{0,22}(\\.[0-9]{0,8})? ?(B|K|KiB|M|MiB|G|GiB|T|TiB|KB|MB|GB|TB|XB)?") {
            if let Ok(size) = text.parse::<airlock::size::ByteSize>() {
                let shown = size.to_string();
                if !shown.contains('.') {
                    prop_assert_eq!(shown.parse::<airlock::size::ByteSize>().ok(), Some(size));
                }
            }
        }

        /// Any corruption of a valid archive is either read consistently or refused with an
        /// error; it never panics, and an accepted tree's contents are all readable.
        #[test]
        fn corrupted_archives_are_read_or_refused(
            flips in proptest::collection::vec((0usize..8192, 1u8..=255), 1..8),
            cut in proptest::option::of(0usize..8192),
        ) {
            let mut bytes = seed_archive();
            for (at, mask) in flips {
                let at = at % bytes.len();
                bytes[at] ^= mask;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            if let Ok(tree) = apply(&bytes) {
                read_all(&tree);
            }
        }

        /// Arbitrary bytes, raw or as a gzip or zstd stream, never panic the reader.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), kind in 0u8..3) {
            let input = match kind {
                0 => bytes,
                1 => gzip(&bytes),
                _ => zstd(&bytes),
            };
            if let Ok(tree) = apply(&input) {
                read_all(&tree);
            }
        }

        /// Names of any bytes: accepted names stay inside the tree, and errors print no raw
        /// control character.
        #[test]
        fn entry_names_stay_inside_or_are_refused(name in proptest::collection::vec(any::<u8>(), 1..100)) {
            let bytes = RawTar::default().entry_bytes(&name, b'0', b"x", "", 0o644, 0, 0).finish();
            match apply(&bytes) {
                Ok(tree) => {
                    for (path, _) in tree.walk() {
                        prop_assert!(!path.split(|&b| b == b'/').any(|c| c == b".." || c.is_empty()), "{path:?}");
                    }
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    prop_assert!(!text.chars().any(|c| c.is_control()), "{text:?}");
                }
            }
        }
    }
}
