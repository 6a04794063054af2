//! The tree model filled from tar archives: every entry kind, compression, layering and
//! whiteouts, and each hostile input rejected with its specific error.
#![allow(clippy::unwrap_used, reason = "a test stops at the first unexpected error")]

use airlock::expansion::ExpansionLimit;
use airlock::tree::tar_input::{TarOptions, Whiteouts, apply_tar};
use airlock::tree::{InputError, NodeKind, Problem, Tree};
use std::io::Write;
use std::path::{Path, PathBuf};

mod support;
use support::raw_tar::RawTar;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn load(&self, tree: &mut Tree, archive: &Path) -> anyhow::Result<()> {
        apply_tar(
            tree,
            archive,
            &TarOptions {
                whiteouts: Whiteouts::Apply,
                spool_dir: self.dir.path(),
                limit: ExpansionLimit::ratio_only(),
            },
        )
        .map(|_| ())
    }

    fn problem(&self, bytes: &[u8]) -> (Option<String>, Problem) {
        let p = self.write("hostile.tar", bytes);
        let err = self.load(&mut Tree::new(), &p).expect_err("hostile archive was accepted");
        let input = err.downcast_ref::<InputError>().unwrap_or_else(|| panic!("not an InputError: {err:#}"));
        assert_eq!(input.input, p.display().to_string(), "error must name the archive");
        (input.entry.clone(), input.problem.clone())
    }
}

fn read_file(tree: &Tree, path: &str) -> Vec<u8> {
    let id = tree.lookup(path).unwrap_or_else(|| panic!("{path} missing"));
    let NodeKind::File { size, content } = &tree.node(id).kind else { panic!("{path} is not a file") };
    let mut buf = vec![0u8; *size as usize];
    tree.content_reader().read_at(content, *size, 0, &mut buf).unwrap();
    buf
}

fn gnu() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_mode(0o644);
    h
}

fn ustar() -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h
}

/// A tar with every kind of entry, written by the `tar` crate (GNU long names, PAX xattrs).
fn full_archive() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o750);
    dir.set_size(0);
    b.append_data(&mut dir, "./etc/", &[][..]).unwrap();

    let mut f = gnu();
    f.set_mode(0o4755);
    f.set_uid(0);
    f.set_gid(0);
    f.set_size(5);
    b.append_data(&mut f, "./usr/bin/su", &b"hello"[..]).unwrap();

    let long = format!("./usr/share/{}/file", "x".repeat(150));
    let mut f = gnu();
    f.set_mode(0o644);
    f.set_size(4);
    b.append_data(&mut f, &long, &b"long"[..]).unwrap();

    b.append_pax_extensions([
        ("SCHILY.xattr.security.capability", &b"\x01\x00\x00\x02\x00\x20\x00\x00"[..]),
        ("uid", &b"100000"[..]),
        ("gid", &b"100001"[..]),
        ("mtime", &b"1700000000.25"[..]),
    ])
    .unwrap();
    let mut f = ustar();
    f.set_mode(0o755);
    f.set_size(3);
    b.append_data(&mut f, "usr/bin/ping", &b"pin"[..]).unwrap();

    let mut l = gnu();
    l.set_entry_type(tar::EntryType::Symlink);
    l.set_size(0);
    b.append_link(&mut l, "./usr/bin/sh", "/usr/bin/dash").unwrap();

    // GNU tar gives a hard link the stat of its inode (the link's own header counts: see
    // `a_hard_links_header_sets_the_inodes_metadata`).
    for i in 0..3 {
        let mut h = gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_mode(0o4755);
        h.set_size(0);
        b.append_link(&mut h, format!("./usr/bin/su{i}"), "./usr/bin/su").unwrap();
    }

    for (name, kind, maj, min) in
        [("./dev/null", tar::EntryType::Char, 1, 3), ("./dev/sda", tar::EntryType::Block, 8, 0)]
    {
        let mut h = gnu();
        h.set_entry_type(kind);
        h.set_device_major(maj).unwrap();
        h.set_device_minor(min).unwrap();
        h.set_mode(0o660);
        h.set_size(0);
        b.append_data(&mut h, name, &[][..]).unwrap();
    }
    let mut h = gnu();
    h.set_entry_type(tar::EntryType::Fifo);
    h.set_size(0);
    b.append_data(&mut h, "./run/initctl", &[][..]).unwrap();
    b.into_inner().unwrap()
}

fn check_full_tree(tree: &Tree) {
    let etc = tree.node(tree.lookup("etc").unwrap());
    assert!(etc.kind.is_dir());
    assert_eq!(etc.meta.mode, 0o750);
    let su = tree.lookup("usr/bin/su").unwrap();
    assert_eq!(tree.node(su).meta.mode, 0o4755);
    assert_eq!(read_file(tree, "usr/bin/su"), b"hello");
    for i in 0..3 {
        assert_eq!(tree.lookup(&format!("usr/bin/su{i}")), Some(su), "hard link su{i}");
    }
    assert_eq!(tree.entry_counts()[su.index()], 4);
    assert_eq!(read_file(tree, &format!("usr/share/{}/file", "x".repeat(150))), b"long");
    let ping = tree.node(tree.lookup("usr/bin/ping").unwrap());
    assert_eq!((ping.meta.uid, ping.meta.gid), (100_000, 100_001));
    assert_eq!((ping.meta.mtime.secs, ping.meta.mtime.nanos), (1_700_000_000, 250_000_000));
    assert_eq!(
        ping.meta.xattrs.get(&b"security.capability"[..]).map(Vec::as_slice),
        Some(&b"\x01\x00\x00\x02\x00\x20\x00\x00"[..])
    );
    assert_eq!(
        tree.node(tree.lookup("usr/bin/sh").unwrap()).kind,
        NodeKind::Symlink { target: b"/usr/bin/dash".to_vec() }
    );
    assert_eq!(tree.node(tree.lookup("dev/null").unwrap()).kind, NodeKind::CharDevice { major: 1, minor: 3 });
    assert_eq!(tree.node(tree.lookup("dev/sda").unwrap()).kind, NodeKind::BlockDevice { major: 8, minor: 0 });
    assert_eq!(tree.node(tree.lookup("run/initctl").unwrap()).kind, NodeKind::Fifo);
}

#[test]
fn reads_every_entry_kind() {
    let fx = Fixture::new();
    let p = fx.write("full.tar", &full_archive());
    let mut tree = Tree::new();
    fx.load(&mut tree, &p).unwrap();
    check_full_tree(&tree);
}

#[test]
fn gzip_and_zstd_read_to_the_same_tree() {
    let fx = Fixture::new();
    let plain = full_archive();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let gz = fx.write("full.tar.gz", &gz.finish().unwrap());
    let zst = fx.write("full.tar.zst", &zstd::encode_all(&plain[..], 3).unwrap());
    for p in [gz, zst] {
        let mut tree = Tree::new();
        fx.load(&mut tree, &p).unwrap();
        check_full_tree(&tree);
    }
}

#[test]
fn layers_override_and_whiteouts_hide_lower_layers() {
    let fx = Fixture::new();
    let lower = fx.write(
        "lower.tar",
        &RawTar::default()
            .entry("etc/", b'5', b"", "")
            .entry("etc/a", b'0', b"lower-a", "")
            .entry("etc/b", b'0', b"lower-b", "")
            .entry("opt/x/y", b'0', b"y", "")
            .entry("opt/keep", b'0', b"k", "")
            .finish(),
    );
    let upper = fx.write(
        "upper.tar",
        &RawTar::default()
            .entry("etc/a", b'0', b"upper-a", "")
            .entry("etc/.wh.b", b'0', b"", "")
            .entry("opt/new", b'0', b"n", "")
            .entry("opt/.wh..wh..opq", b'0', b"", "")
            .finish(),
    );
    let mut tree = Tree::new();
    fx.load(&mut tree, &lower).unwrap();
    fx.load(&mut tree, &upper).unwrap();
    assert_eq!(read_file(&tree, "etc/a"), b"upper-a");
    assert_eq!(tree.lookup("etc/b"), None);
    assert_eq!(tree.lookup("etc/.wh.b"), None);
    let opt: Vec<&[u8]> = tree.entries(tree.lookup("opt").unwrap()).map(|(n, _)| n).collect();
    assert_eq!(opt, vec![&b"new"[..]], "opaque whiteout keeps only the upper layer's entries");
}

/// A layer kept on its own as overlayfs stores it: whiteouts become 0/0 character devices
/// owned as their entries, an opaque marker the directory's `trusted.overlay.opaque`, even when
/// the directory's own entry comes after the marker; aufs bookkeeping is dropped, and so is a
/// whiteout below a directory the same layer whited out.
#[test]
fn overlay_form_keeps_whiteouts_as_overlayfs_stores_them() {
    let fx = Fixture::new();
    let layer = fx.write(
        "layer.tar",
        &RawTar::default()
            .entry_with("etc/.wh.gone", b'0', b"", "", 0o644, 7, 8)
            .entry("opt/.wh..wh..opq", b'0', b"", "")
            .entry_with("opt/", b'5', b"", "", 0o750, 0, 0)
            .entry("opt/new", b'0', b"n", "")
            .entry(".wh..wh..opq", b'0', b"", "")
            .entry(".wh..wh.plnk", b'0', b"", "")
            .entry(".wh.dir", b'0', b"", "")
            .entry("dir/.wh.inner", b'0', b"", "")
            .finish(),
    );
    let mut tree = Tree::new();
    let stats = apply_tar(
        &mut tree,
        &layer,
        &TarOptions { whiteouts: Whiteouts::Overlay, spool_dir: fx.dir.path(), limit: ExpansionLimit::ratio_only() },
    )
    .unwrap();
    let gone = tree.node(tree.lookup("etc/gone").expect("the whiteout is a node"));
    assert_eq!(gone.kind, NodeKind::CharDevice { major: 0, minor: 0 });
    assert_eq!((gone.meta.mode, gone.meta.uid, gone.meta.gid), (0, 7, 8));
    let opt = tree.node(tree.lookup("opt").unwrap());
    assert_eq!(opt.meta.mode, 0o750, "the directory's own entry gives its mode");
    assert_eq!(opt.meta.xattrs.get(&b"trusted.overlay.opaque"[..]).map(Vec::as_slice), Some(&b"y"[..]));
    assert!(tree.lookup("opt/new").is_some());
    let root = tree.node(tree.root());
    assert_eq!(root.meta.xattrs.get(&b"trusted.overlay.opaque"[..]).map(Vec::as_slice), Some(&b"y"[..]));
    assert_eq!(tree.lookup(".wh.plnk"), None);
    assert_eq!(tree.node(tree.lookup("dir").unwrap()).kind, NodeKind::CharDevice { major: 0, minor: 0 });
    assert_eq!(stats.whiteouts, 6);
    assert_eq!(stats.uids.iter().copied().collect::<Vec<_>>(), vec![0, 7]);
    assert_eq!(stats.gids.iter().copied().collect::<Vec<_>>(), vec![0, 8]);

    // A layer may not both white out a path and create it.
    let both = RawTar::default().entry(".wh.x", b'0', b"", "").entry("x", b'0', b"x", "").finish();
    let p = fx.write("both.tar", &both);
    let err = apply_tar(
        &mut Tree::new(),
        &p,
        &TarOptions { whiteouts: Whiteouts::Overlay, spool_dir: fx.dir.path(), limit: ExpansionLimit::ratio_only() },
    )
    .unwrap_err();
    assert_eq!(err.downcast_ref::<InputError>().unwrap().problem, Problem::Duplicate);
}

/// A tree grafted into another keeps its root's metadata, its hard links and, when asked, its
/// own times (but not those of directories no input declared).
#[test]
fn a_grafted_tree_keeps_metadata_links_and_its_own_times() {
    let fx = Fixture::new();
    let layer = fx.write(
        "layer.tar",
        &RawTar::default()
            .entry_with("./", b'5', b"", "", 0o555, 0, 0)
            .entry("a/b/file", b'0', b"data", "")
            .entry("a/link", b'1', b"", "a/b/file")
            .finish(),
    );
    let mut sub = Tree::new();
    apply_tar(
        &mut sub,
        &layer,
        &TarOptions { whiteouts: Whiteouts::Overlay, spool_dir: fx.dir.path(), limit: ExpansionLimit::ratio_only() },
    )
    .unwrap();
    let mut tree = Tree::new();
    tree.graft_moved(b"store/layer/diff", sub, true).unwrap();
    let diff = tree.node(tree.lookup("store/layer/diff").unwrap());
    assert_eq!(diff.meta.mode, 0o555);
    assert!(diff.keeps_own_mtime());
    assert_eq!(tree.lookup("store/layer/diff/a/link"), tree.lookup("store/layer/diff/a/b/file"));
    assert_eq!(read_file(&tree, "store/layer/diff/a/link"), b"data");
    let file = tree.node(tree.lookup("store/layer/diff/a/b/file").unwrap());
    assert!(file.keeps_own_mtime());
    let implicit = tree.node(tree.lookup("store/layer/diff/a").unwrap());
    assert!(implicit.is_implicit() && !implicit.keeps_own_mtime(), "`a` was never declared");
    assert!(!tree.node(tree.lookup("store").unwrap()).keeps_own_mtime());
    let counts = tree.entry_counts();
    assert_eq!(counts[tree.lookup("store/layer/diff/a/link").unwrap().index()], 2);
    assert!(tree.graft_moved(b"store/layer/diff", Tree::new(), true).is_err(), "a graft never replaces");
}

#[test]
fn dot_dot_is_rejected() {
    let (entry, problem) = Fixture::new().problem(&RawTar::default().entry("../etc/passwd", b'0', b"x", "").finish());
    assert_eq!(entry.as_deref(), Some("../etc/passwd"));
    assert_eq!(problem, Problem::DotDot);
    let (_, problem) = Fixture::new().problem(&RawTar::default().entry("a/b/../../../c", b'0', b"x", "").finish());
    assert_eq!(problem, Problem::DotDot);
}

#[test]
fn absolute_path_is_rejected() {
    let (entry, problem) = Fixture::new().problem(&RawTar::default().entry("/etc/shadow", b'0', b"x", "").finish());
    assert_eq!(entry.as_deref(), Some("/etc/shadow"));
    assert_eq!(problem, Problem::Absolute);
}

#[test]
fn writing_through_an_escaping_symlink_is_rejected() {
    let bytes = RawTar::default().entry("etc", b'2', b"", "/etc").entry("etc/cron.d/evil", b'0', b"x", "").finish();
    let (entry, problem) = Fixture::new().problem(&bytes);
    assert_eq!(entry.as_deref(), Some("etc/cron.d/evil"));
    assert_eq!(problem, Problem::ParentNotDirectory { parent: "etc".into(), kind: "symlink" });
}

#[test]
fn hard_link_to_missing_target_is_rejected() {
    let (entry, problem) = Fixture::new().problem(&RawTar::default().entry("bin/a", b'1', b"", "bin/missing").finish());
    assert_eq!(entry.as_deref(), Some("bin/a"));
    assert_eq!(problem, Problem::HardLinkTargetMissing { target: "bin/missing".into() });
}

#[test]
fn hard_link_target_with_dot_dot_is_rejected() {
    let bytes = RawTar::default().entry("a", b'0', b"x", "").entry("b", b'1', b"", "../a").finish();
    let (entry, problem) = Fixture::new().problem(&bytes);
    assert_eq!(entry.as_deref(), Some("b"));
    assert!(matches!(problem, Problem::Malformed { detail } if detail.contains("`..`")));
}

#[test]
fn duplicate_entry_is_rejected() {
    let bytes = RawTar::default().entry("./etc/hosts", b'0', b"1", "").entry("etc/hosts", b'0', b"2", "").finish();
    let (entry, problem) = Fixture::new().problem(&bytes);
    assert_eq!(entry.as_deref(), Some("etc/hosts"));
    assert_eq!(problem, Problem::Duplicate);
}

#[test]
fn truncated_inside_file_data_is_rejected() {
    let mut bytes = RawTar::default().entry("a", b'0', b"ok", "").entry("big", b'0', &[7u8; 4096], "").finish();
    bytes.truncate(512 * 2 + 512 + 1000);
    let (entry, problem) = Fixture::new().problem(&bytes);
    assert_eq!(entry.as_deref(), Some("big"));
    assert!(matches!(problem, Problem::Truncated { .. }), "{problem:?}");
}

#[test]
fn truncated_at_a_block_boundary_is_rejected() {
    let full = RawTar::default().entry("a", b'0', b"ok", "").entry("b", b'0', b"ok", "").finish();
    let (entry, problem) = Fixture::new().problem(&full[..1024]);
    assert_eq!(entry, None);
    assert_eq!(problem, Problem::Truncated { detail: "no end-of-archive marker".into() });
}

#[test]
fn truncated_header_is_rejected() {
    let full = RawTar::default().entry("a", b'0', b"ok", "").entry("b", b'0', b"ok", "").finish();
    let (_, problem) = Fixture::new().problem(&full[..1024 + 100]);
    assert!(matches!(problem, Problem::Truncated { .. } | Problem::Malformed { .. }), "{problem:?}");
}

#[test]
fn truncated_gzip_is_rejected() {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&full_archive()).unwrap();
    let bytes = gz.finish().unwrap();
    let (entry, problem) = Fixture::new().problem(&bytes[..bytes.len() / 2]);
    assert_eq!(entry, None);
    assert!(matches!(problem, Problem::Truncated { .. }), "{problem:?}");
}

#[test]
fn corrupt_header_checksum_is_rejected() {
    let mut bytes = RawTar::default().entry("a", b'0', b"ok", "").finish();
    bytes[0] = b'b';
    let (_, problem) = Fixture::new().problem(&bytes);
    assert!(matches!(problem, Problem::Malformed { detail } if detail.contains("checksum")));
}

#[test]
fn pax_uid_above_32_bits_is_rejected() {
    let bytes = RawTar::default().pax(&[("uid", b"5000000000")]).entry("a", b'0', b"x", "").finish();
    let (entry, problem) = Fixture::new().problem(&bytes);
    assert_eq!(entry.as_deref(), Some("a"));
    assert!(matches!(problem, Problem::Malformed { detail } if detail.contains("uid")));
}

#[test]
fn root_replaced_by_a_file_is_rejected() {
    let (_, problem) = Fixture::new().problem(&RawTar::default().entry("./", b'0', b"x", "").finish());
    assert_eq!(problem, Problem::RootNotDirectory { kind: "regular file" });
}

#[test]
fn error_message_names_archive_entry_and_problem() {
    let fx = Fixture::new();
    let p = fx.write("evil.tar", &RawTar::default().entry("../x", b'0', b"x", "").finish());
    let msg = format!("{:#}", fx.load(&mut Tree::new(), &p).unwrap_err());
    assert_eq!(msg, format!("{}: entry `../x`: path has a `..` component", p.display()));
}

/// As Docker and containers/storage apply a layer: a hard link's own header sets the shared
/// inode's mode, owner and time (and adds its xattrs), whatever the target's header said.
#[test]
fn a_hard_links_header_sets_the_inodes_metadata() {
    let fx = Fixture::new();
    let mut b = tar::Builder::new(Vec::new());
    let mut f = gnu();
    f.set_mode(0o644);
    f.set_size(2);
    b.append_data(&mut f, "a", &b"hi"[..]).unwrap();
    b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])]).unwrap();
    let mut h = gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_mode(0o750);
    h.set_uid(7);
    h.set_gid(8);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    b.append_link(&mut h, "b", "a").unwrap();
    let archive = fx.write("link.tar", &b.into_inner().unwrap());
    let mut tree = Tree::new();
    fx.load(&mut tree, &archive).unwrap();
    let a = tree.lookup("a").unwrap();
    assert_eq!(tree.lookup("b"), Some(a), "one inode");
    let meta = &tree.node(a).meta;
    assert_eq!((meta.mode, meta.uid, meta.gid, meta.mtime.secs), (0o750, 7, 8, 1_700_000_000));
    assert_eq!(meta.xattrs.get(&b"user.k"[..]).map(Vec::as_slice), Some(&b"v"[..]));
}

/// A hard link in a later layer to a file of an earlier one leaves that file as it was: in an
/// overlay store the later layer holds its own copy, the lower file is untouched.
#[test]
fn a_hard_link_to_an_earlier_layers_file_leaves_it_unchanged() {
    let fx = Fixture::new();
    let mut lower = tar::Builder::new(Vec::new());
    let mut f = gnu();
    f.set_mode(0o755);
    f.set_size(2);
    lower.append_data(&mut f, "a", &b"hi"[..]).unwrap();
    let mut upper = tar::Builder::new(Vec::new());
    let mut h = gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_mode(0o600);
    h.set_size(0);
    upper.append_link(&mut h, "b", "a").unwrap();
    let (lower, upper) =
        (fx.write("lower.tar", &lower.into_inner().unwrap()), fx.write("upper.tar", &upper.into_inner().unwrap()));
    let mut tree = Tree::new();
    fx.load(&mut tree, &lower).unwrap();
    tree.begin_layer();
    fx.load(&mut tree, &upper).unwrap();
    let a = tree.lookup("a").unwrap();
    assert_eq!(tree.lookup("b"), Some(a));
    assert_eq!(tree.node(a).meta.mode, 0o755);
}
