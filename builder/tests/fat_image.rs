//! Writes FAT32 volumes and judges them with tools nobody here wrote: `fsck.vfat` (dosfstools)
//! must find nothing wrong, and mtools must list every name and read back every byte.
#![allow(clippy::unwrap_used, reason = "a test stops at the first unexpected error")]

use airlock::clock::BuildClock;
use airlock::fat::{FatOptions, FatReport, write_fat32};
use airlock::region::Region;
use airlock::tree::{Content, Meta, NodeKind, Tree};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

const MIB: u64 = 1 << 20;
const BIG_FILE_LEN: u64 = 40 * 1000 * 1000 + 3;

/// What a path in the volume should hold.
enum Expect {
    Dir,
    Bytes(Vec<u8>),
    HostFile(PathBuf),
}

struct Fixture {
    /// Holds the big host file (and the images) until the test ends.
    dir: tempfile::TempDir,
    tree: Tree,
    expected: BTreeMap<String, Expect>,
    /// Paths mtools cannot name by their long name, with the short-name path to read them by.
    short_aliases: BTreeMap<String, String>,
}

impl Fixture {
    fn file(&mut self, path: &str, bytes: Vec<u8>) {
        self.tree
            .insert(
                path.as_bytes(),
                Meta::root(0o644),
                NodeKind::File { size: bytes.len() as u64, content: Content::Bytes(bytes.clone().into()) },
            )
            .unwrap();
        self.expect_parents(path);
        self.expected.insert(path.to_string(), Expect::Bytes(bytes));
    }

    fn dir(&mut self, path: &str) {
        self.tree.insert(path.as_bytes(), Meta::root(0o755), NodeKind::Directory { entries: BTreeMap::new() }).unwrap();
        self.expect_parents(path);
        self.expected.insert(path.to_string(), Expect::Dir);
    }

    fn expect_parents(&mut self, path: &str) {
        let mut parent = Path::new(path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.expected.insert(p.to_str().unwrap().to_string(), Expect::Dir);
            parent = p.parent();
        }
    }

    fn image(&self, name: &str, len: u64) -> (PathBuf, FatReport) {
        let path = self.dir.path().join(name);
        let file = File::create(&path).unwrap();
        file.set_len(len).unwrap();
        let report = write_fat32(&self.tree, &Region::new(&file, 0, len), &options())
            .unwrap_or_else(|e| panic!("writing {name}: {e:#}"));
        (path, report)
    }
}

fn options() -> FatOptions {
    FatOptions {
        volume_id: 0x1234_ABCD,
        label: "ESP".into(),
        clock: BuildClock::fixed(1_700_000_000),
        hidden_sectors: 2048,
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), written in chunks to a host file.
fn write_random_file(path: &Path, len: u64) {
    let mut out = BufWriter::new(File::create(path).unwrap());
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut left = len;
    while left > 0 {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let word = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        let n = left.min(8) as usize;
        out.write_all(&word[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
}

/// A tree with what an ESP holds and what stresses a FAT writer: long, mixed-case and non-ASCII
/// names, deep nesting, an empty file and directory, a hard link, short-name collisions, a
/// directory spanning many clusters and a 40 MB file.
fn fixture() -> Fixture {
    let mut f = Fixture {
        dir: tempfile::tempdir().unwrap(),
        tree: Tree::new(),
        expected: BTreeMap::new(),
        short_aliases: BTreeMap::new(),
    };
    let efi: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    f.file("EFI/BOOT/BOOTX64.EFI", efi.clone());
    f.tree.link(b"EFI/BOOT/grubx64-copy.efi", b"EFI/BOOT/BOOTX64.EFI").unwrap();
    f.expected.insert("EFI/BOOT/grubx64-copy.efi".into(), Expect::Bytes(efi));
    f.dir("EFI/Linux");
    f.file("loader/loader.conf", b"timeout 3\ndefault airlock-*\n".to_vec());
    f.file("loader/entries/airlock-1.0.conf", b"title airlock\nlinux /vmlinuz\n".to_vec());
    f.file("MixedCase Name.txt", b"mixed case\n".to_vec());
    let long_name = format!("{}.txt", &"a-long-name-".repeat(8)[..96]);
    assert_eq!(long_name.len(), 100);
    f.file(&long_name, b"one hundred characters\n".to_vec());
    f.file("café.txt", "crème brûlée\n".as_bytes().to_vec());
    f.file("日本語のファイル名.txt", "こんにちは\n".as_bytes().to_vec());
    // Outside the Basic Multilingual Plane: stored as a UTF-16 surrogate pair, which mtools
    // cannot decode (see `mtools_name`), so it is read back by its short name.
    f.file("rocket 🚀 launch.md", b"astral plane\n".to_vec());
    f.short_aliases.insert("rocket 🚀 launch.md".into(), "ROCKET~1.MD".into());
    f.file("a/b/c/d/e/f/g/deep.txt", b"deep\n".to_vec());
    f.file("a/b/Sibling Dir/x.bin", vec![0xAB; 3000]);
    f.file("empty.txt", Vec::new());
    f.file("sizes/512.bin", vec![0x11; 512]);
    f.file("sizes/4096.bin", vec![0x22; 4096]);
    f.file("sizes/4097.bin", vec![0x33; 4097]);
    f.file("zeros.bin", vec![0; 3 * MIB as usize]);
    f.file("collide/longfilename-a.txt", b"a\n".to_vec());
    f.file("collide/longfilename-b.txt", b"b\n".to_vec());
    f.file("collide/LONGFI~1.TXT", b"exact\n".to_vec());
    for i in 0..300 {
        f.file(&format!("many/entry-{i:03}.txt"), format!("entry {i}\n").into_bytes());
    }
    let big = f.dir.path().join("big.bin");
    write_random_file(&big, BIG_FILE_LEN);
    f.tree
        .insert(
            b"big.bin",
            Meta::root(0o644),
            NodeKind::File { size: BIG_FILE_LEN, content: Content::Host(Arc::from(big.as_path())) },
        )
        .unwrap();
    f.expected.insert("big.bin".into(), Expect::HostFile(big));
    f
}

/// A tool's path: `PATH` first, then the sbin directories `fsck.vfat` lives in, which a
/// non-root `PATH` often lacks.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed; this test needs dosfstools (fsck.vfat) and mtools \
                 (mdir, mcopy, minfo) to judge the images it writes"
            )
        })
}

fn run(name: &str, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(tool(name))
        .args(args)
        // mtools refuses images whose geometry it finds odd unless told not to check; names
        // are converted with the locale's character set, so it must be UTF-8.
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"))
}

fn run_ok(name: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = run(name, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// `fsck.vfat -n` must pass and say nothing beyond its banner and summary.
fn assert_fsck_clean(image: &Path, report: &FatReport) {
    let stdout = run_ok("fsck.vfat", &[os("-n"), image.as_os_str()]);
    let mut lines = stdout.lines();
    assert!(lines.next().is_some_and(|l| l.starts_with("fsck.fat ")), "{stdout}");
    let summary = lines.next().unwrap_or_default();
    let used = report.clusters - report.free_clusters;
    assert!(
        summary.ends_with(&format!("/{} clusters", report.clusters)) && summary.contains(&format!(" {used}/")),
        "unexpected fsck summary (report {report:?}):\n{stdout}"
    );
    assert_eq!(lines.next(), None, "fsck.vfat had more to say:\n{stdout}");
}

/// A path as mtools 4.0 shows it: it decodes long names one UTF-16 unit at a time, so each half
/// of a surrogate pair comes out as `_` (fsck.vfat still checks those entries).
fn mtools_name(path: &str) -> String {
    path.chars().map(|c| if c.len_utf16() == 2 { "__".to_string() } else { c.to_string() }).collect()
}

/// Every path mtools lists, relative and without the drive (`EFI/BOOT/BOOTX64.EFI`).
fn listed_paths(image: &Path) -> Vec<String> {
    let stdout = run_ok("mdir", &[os("-/"), os("-b"), os("-i"), image.as_os_str(), os("::/")]);
    let mut paths: Vec<String> = stdout
        .lines()
        .map(|l| l.trim_start_matches("::/").trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect();
    paths.sort();
    paths
}

fn assert_same_file(a: &Path, b: &Path, what: &str) {
    let (mut fa, mut fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    assert_eq!(fa.metadata().unwrap().len(), fb.metadata().unwrap().len(), "{what}: lengths differ");
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            break;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        assert!(ba[..n] == bb[..n], "{what}: contents differ");
    }
}

/// Reads every file back through mtools and compares it with what went in.
fn assert_contents(fixture: &Fixture, image: &Path) {
    let out_dir = tempfile::tempdir().unwrap();
    for (i, (path, expect)) in fixture.expected.iter().enumerate() {
        let dest = out_dir.path().join(i.to_string());
        if let Expect::Dir = expect {
            continue;
        }
        let source = format!("::/{}", fixture.short_aliases.get(path).unwrap_or(path));
        run_ok("mcopy", &[os("-n"), os("-i"), image.as_os_str(), os(&source), dest.as_os_str()]);
        match expect {
            Expect::Bytes(bytes) => {
                let got = std::fs::read(&dest).unwrap();
                assert!(&got == bytes, "`{path}` read back differently ({} bytes)", got.len());
            }
            Expect::HostFile(host) => assert_same_file(host, &dest, path),
            Expect::Dir => unreachable!(),
        }
    }
}

fn check_image(fixture: &Fixture, image: &Path, report: &FatReport) {
    assert_fsck_clean(image, report);
    let mut expected: Vec<String> = fixture.expected.keys().map(|p| mtools_name(p)).collect();
    expected.sort();
    assert_eq!(listed_paths(image), expected);
    assert_contents(fixture, image);

    let label = run_ok("mlabel", &[os("-s"), os("-i"), image.as_os_str(), os("::")]);
    assert_eq!(label.trim(), "Volume label is ESP");
    let info = run_ok("minfo", &[os("-i"), image.as_os_str(), os("::")]);
    for field in [
        "sector size: 512 bytes".to_string(),
        format!("cluster size: {} sectors", report.cluster_size / 512),
        "hidden sectors: 2048".to_string(),
        "serial number: 1234ABCD".to_string(),
        "disk type=\"FAT32   \"".to_string(),
        "disk label=\"ESP        \"".to_string(),
        format!("free clusters={}", report.free_clusters),
    ] {
        assert!(info.to_lowercase().contains(&field.to_lowercase()), "minfo lacks `{field}`:\n{info}");
    }
}

#[test]
fn small_volume_with_512_byte_clusters_passes_fsck_and_reads_back() {
    let fixture = fixture();
    let (image, report) = fixture.image("small.img", 64 * MIB);
    assert_eq!(report.cluster_size, 512);
    assert_eq!(report.files, 300 + 20);
    check_image(&fixture, &image, &report);
}

#[test]
fn larger_volume_with_4k_clusters_passes_fsck_and_reads_back() {
    let fixture = fixture();
    let (image, report) = fixture.image("large.img", 300 * MIB);
    assert_eq!(report.cluster_size, 4096);
    check_image(&fixture, &image, &report);
}

#[test]
fn same_inputs_give_identical_bytes() {
    let fixture = fixture();
    let (a, report_a) = fixture.image("a.img", 64 * MIB);
    let (b, report_b) = fixture.image("b.img", 64 * MIB);
    assert_eq!(report_a, report_b);
    assert_same_file(&a, &b, "two writes of the same volume");
}

/// Layouts the 64 MiB and 300 MiB volumes do not reach: the smallest FAT32 volume (empty and
/// unlabelled), and sparse multi-GiB volumes with 8 KiB and 32 KiB clusters. One file is named
/// like the volume label, which FAT allows (the label entry is not a file name).
#[test]
fn edge_layouts_pass_fsck() {
    let dir = tempfile::tempdir().unwrap();
    let mut tree = Tree::new();
    tree.insert(b"ESP", Meta::root(0o644), NodeKind::File { size: 3, content: Content::Bytes(b"abc".to_vec().into()) })
        .unwrap();
    let empty = Tree::new();
    for (name, len, label, tree, cluster_size) in [
        ("minimum.img", airlock::fat::min_fat32_size(), "", &empty, 512),
        ("nine-gib.img", 9 << 30, "ESP", &tree, 8192),
        ("thirty-three-gib.img", 33 << 30, "ESP", &tree, 32768),
    ] {
        let path = dir.path().join(name);
        let file = File::create(&path).unwrap();
        file.set_len(len).unwrap();
        let opts = FatOptions { label: label.into(), ..options() };
        let report =
            write_fat32(tree, &Region::new(&file, 0, len), &opts).unwrap_or_else(|e| panic!("writing {name}: {e:#}"));
        assert_eq!(report.cluster_size, cluster_size, "{name}");
        assert_fsck_clean(&path, &report);
        let want: Vec<String> = tree.walk().into_iter().map(|(p, _)| String::from_utf8(p).unwrap()).collect();
        // `mdir -b` reports an empty directory as "not found"; nothing to list there anyway.
        if want.is_empty() {
            continue;
        }
        let listed = listed_paths(&path);
        assert_eq!(listed, want, "{name}");
    }
}
