//! `airlock update apply` against a disk image with the A/B layout (slot A running, slot B
//! empty), judged by tools nobody here wrote: `veritysetup verify` (the written slot holds a
//! root its hash tree and the bundle's root hash vouch for), `sgdisk -v` and `sgdisk -i` (the
//! table is sound, the slot's names and UUIDs are the new version's), and the ESP folder's boot
//! entries. Every refusal (tampered, another key, another appliance, the running or an older
//! version, a root too large for the slot) names its reason and leaves the disk and the ESP
//! byte for byte as they were.

#![allow(clippy::unwrap_used, reason = "a test stops at the first unexpected error")]

use airlock_appliance::update::{self, ApplyOptions, Target, boot_entries};
use airlock_common::bundle::{self, Compression, Header, Kind, Payload};
use airlock_common::gpt::{GptLayout, PartitionEntry, types};
use airlock_common::signing::{self, KeyPair};
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use uuid::Uuid;

const MIB: u64 = 1 << 20;
const SLOT: u64 = 24 * MIB;
const TREE: u64 = MIB;

fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {}:\n{text}", args.join(" "));
    text
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A root of `len` bytes (a pattern from `seed`) and its hash tree, made by veritysetup; returns
/// (root, tree, root hash).
fn root_and_tree(dir: &Path, seed: u8, len: u64) -> (Vec<u8>, Vec<u8>, String) {
    let root: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect();
    let (r, t) = (dir.join(format!("root-{seed}")), dir.join(format!("tree-{seed}")));
    std::fs::write(&r, &root).unwrap();
    let out = tool("veritysetup", &["format", r.to_str().unwrap(), t.to_str().unwrap()]);
    let hash = out.lines().find_map(|l| l.strip_prefix("Root hash:")).expect("veritysetup prints the root hash").trim();
    (root, std::fs::read(&t).unwrap(), hash.to_string())
}

fn halves(hash: &str) -> (Uuid, Uuid) {
    let b = hex::decode(hash).unwrap();
    (Uuid::from_slice(&b[..16]).unwrap(), Uuid::from_slice(&b[16..]).unwrap())
}

/// A bundle of `name` `version` for `root`/`tree`, signed with `key`.
fn bundle_file(dir: &Path, key: &KeyPair, name: &str, version: &str, root: &[u8], tree: &[u8], hash: &str) -> PathBuf {
    let mut payloads = Vec::new();
    let mut data = Vec::new();
    let uki = format!("UKI of {name} {version}").into_bytes();
    for (kind, content, compressed) in [
        (Kind::Root, root, true),
        (Kind::Verity, tree, true),
        (Kind::Uki, &uki[..], false),
        (Kind::Manifest, b"{}", false),
    ] {
        let stored = if compressed { zstd::encode_all(content, 3).unwrap() } else { content.to_vec() };
        payloads.push(Payload {
            kind,
            compression: if compressed { Compression::Zstd } else { Compression::None },
            offset: data.len() as u64,
            stored_size: stored.len() as u64,
            stored_sha256: sha(&stored),
            size: content.len() as u64,
            sha256: sha(content),
        });
        data.extend_from_slice(&stored);
    }
    let header =
        Header { format: 1, appliance: name.into(), version: version.into(), root_hash: hash.into(), payloads };
    let json = serde_json::to_vec(&header).unwrap();
    let sig = signing::sign(key, &json, &format!("airlock update {name} {version}")).unwrap();
    let path = dir.join(format!("{name}_{version}-{}.update", key.key_id()));
    std::fs::write(&path, [bundle::preamble(&json, &sig).unwrap(), data].concat()).unwrap();
    path
}

struct Appliance {
    dir: tempfile::TempDir,
    target: Target,
    key: KeyPair,
}

/// A disk with slot A holding demo 0.1.0 (running) and slot B empty, its ESP folder with the
/// 0.1.0 entry, and the release key trusted.
fn appliance() -> (Appliance, String) {
    let dir = tempfile::tempdir().unwrap();
    let (root, tree, hash) = root_and_tree(dir.path(), 1, 20 * MIB);
    let (ua, va) = halves(&hash);
    let part = |name: &str, type_guid, guid, start: u64, size| PartitionEntry {
        name: name.into(),
        type_guid,
        guid,
        start,
        size,
    };
    let mut at = MIB;
    let mut next = |size: u64| {
        let s = at;
        at += size;
        s
    };
    let partitions = vec![
        part("esp", types::ESP, Uuid::from_u128(1), next(4 * MIB), 4 * MIB),
        part("demo_0.1.0", types::LINUX_ROOT_X86_64, ua, next(SLOT), SLOT),
        part("demo_0.1.0_verity", types::LINUX_ROOT_X86_64_VERITY, va, next(TREE), TREE),
        part("_empty", types::LINUX_ROOT_X86_64, Uuid::from_u128(4), next(SLOT), SLOT),
        part("_empty", types::LINUX_ROOT_X86_64_VERITY, Uuid::from_u128(5), next(TREE), TREE),
        part("data", types::LINUX_VARIABLE_DATA, Uuid::from_u128(6), next(4 * MIB), 4 * MIB),
    ];
    let layout = GptLayout { disk_size: at + 2 * MIB, disk_guid: Uuid::from_u128(9), partitions };
    let disk = dir.path().join("disk.raw");
    let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&disk).unwrap();
    f.set_len(layout.disk_size).unwrap();
    layout.write(&f).unwrap();
    f.write_all_at(&root, layout.partitions[1].start).unwrap();
    f.write_all_at(&tree, layout.partitions[2].start).unwrap();
    let esp = dir.path().join("esp");
    std::fs::create_dir_all(esp.join("EFI/Linux")).unwrap();
    std::fs::write(esp.join("EFI/Linux/demo_0.1.0.efi"), b"UKI of demo 0.1.0").unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key = signing::generate().unwrap();
    std::fs::write(keys.join(format!("{}.pub", key.key_id())), key.public_key().to_file_text()).unwrap();
    let target = Target { disk, esp, keys, root_hash: hash.clone() };
    (Appliance { dir, target, key }, hash)
}

/// The disk's bytes and the ESP's entries: what a refusal must leave as it was.
fn snapshot(t: &Target) -> (String, Vec<(String, String)>) {
    let mut entries: Vec<(String, String)> = std::fs::read_dir(t.esp.join("EFI/Linux"))
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), sha(&std::fs::read(e.path()).unwrap())))
        .collect();
    entries.sort();
    (sha(&std::fs::read(&t.disk).unwrap()), entries)
}

/// Copies `len` bytes at `start` of the disk into a file of their own.
fn extract(disk: &Path, start: u64, len: u64, dest: &Path) {
    let mut buf = vec![0u8; len as usize];
    std::fs::File::open(disk).unwrap().read_exact_at(&mut buf, start).unwrap();
    std::fs::write(dest, buf).unwrap();
}

fn opts() -> ApplyOptions {
    ApplyOptions { allow_downgrade: false, tries: 3 }
}

#[test]
fn an_update_is_written_to_the_other_slot_and_judged_by_veritysetup() {
    let (a, hash_a) = appliance();
    let d = a.dir.path();
    let (root, tree, hash_b) = root_and_tree(d, 2, 18 * MIB);
    let file = bundle_file(d, &a.key, "demo", "0.2.0", &root, &tree, &hash_b);
    let done = update::apply(&a.target, &file, &opts()).unwrap();
    assert_eq!(
        (done.version.as_str(), done.from.as_str(), done.entry.as_str()),
        ("0.2.0", "0.1.0", "demo_0.2.0+3.efi")
    );
    assert!(done.to_string().contains("the next boot runs it"), "{done}");

    let disk = a.target.disk.to_str().unwrap();
    tool("sgdisk", &["-v", disk]);
    let (ub, vb) = halves(&hash_b);
    for (n, name, guid) in [(4, "demo_0.2.0", ub), (5, "demo_0.2.0_verity", vb)] {
        let info = tool("sgdisk", &["-i", &n.to_string(), disk]);
        assert!(info.contains(&format!("Partition name: '{name}'")), "{info}");
        assert!(info.to_lowercase().contains(&format!("partition unique guid: {guid}")), "{info}");
    }
    let layout = GptLayout::read(&std::fs::File::open(&a.target.disk).unwrap()).unwrap();
    let (rb, tb) = (d.join("slot-b-root"), d.join("slot-b-tree"));
    extract(&a.target.disk, layout.partitions[3].start, 18 * MIB, &rb);
    extract(&a.target.disk, layout.partitions[4].start, layout.partitions[4].size, &tb);
    tool("veritysetup", &["verify", rb.to_str().unwrap(), tb.to_str().unwrap(), &hash_b]);
    // Slot A is untouched: it still verifies with its own root hash.
    let (ra, ta) = (d.join("slot-a-root"), d.join("slot-a-tree"));
    extract(&a.target.disk, layout.partitions[1].start, 20 * MIB, &ra);
    extract(&a.target.disk, layout.partitions[2].start, layout.partitions[2].size, &ta);
    tool("veritysetup", &["verify", ra.to_str().unwrap(), ta.to_str().unwrap(), &hash_a]);
    let linux = a.target.esp.join("EFI/Linux");
    assert_eq!(std::fs::read(linux.join("demo_0.2.0+3.efi")).unwrap(), b"UKI of demo 0.2.0");
    assert!(linux.join("demo_0.1.0.efi").exists(), "the running version's entry stays");

    let status = update::Status::read(&a.target).unwrap().to_string();
    assert!(status.contains("slot A: demo 0.1.0 (running), boot entry demo_0.1.0.efi (good)"), "{status}");
    assert!(
        status.contains("slot B: demo 0.2.0, boot entry demo_0.2.0+3.efi (on trial: 3 tries left, 0 made)"),
        "{status}"
    );

    // Now 0.2.0 runs (from slot B): 0.3.0 goes to slot A, whose 0.1.0 entry goes first.
    let running_b = Target { root_hash: hash_b.clone(), ..a.target.clone() };
    std::fs::rename(linux.join("demo_0.2.0+3.efi"), linux.join("demo_0.2.0.efi")).unwrap();
    let (root3, tree3, hash3) = root_and_tree(d, 3, 22 * MIB);
    let file3 = bundle_file(d, &a.key, "demo", "0.3.0", &root3, &tree3, &hash3);
    let done = update::apply(&running_b, &file3, &opts()).unwrap();
    assert_eq!((done.from.as_str(), done.slot), ("0.2.0", airlock_common::partition::Slot::A));
    let mut names: Vec<String> =
        std::fs::read_dir(&linux).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["demo_0.2.0.efi", "demo_0.3.0+3.efi"]);
    tool("sgdisk", &["-v", disk]);
    let status = update::Status::read(&running_b).unwrap().to_string();
    assert!(status.contains("slot A: demo 0.3.0, boot entry demo_0.3.0+3.efi"), "{status}");
    assert!(status.contains("slot B: demo 0.2.0 (running)"), "{status}");
}

#[test]
fn a_refused_bundle_says_why_and_writes_nothing() {
    let (a, hash_a) = appliance();
    let d = a.dir.path();
    let (root, tree, hash) = root_and_tree(d, 2, 18 * MIB);
    let good = bundle_file(d, &a.key, "demo", "0.2.0", &root, &tree, &hash);
    let stranger = signing::generate().unwrap();
    let mut tampered = std::fs::read(&good).unwrap();
    let header = bundle::Bundle::open(&good, &[a.key.public_key()]).unwrap().header;
    let at = (tampered.len() as u64 - header.payload_bytes() + header.payloads[0].stored_size / 2) as usize;
    tampered[at] ^= 1;
    let tampered_path = d.join("tampered.update");
    std::fs::write(&tampered_path, &tampered).unwrap();
    let truncated_path = d.join("truncated.update");
    std::fs::write(&truncated_path, &tampered[..tampered.len() / 2]).unwrap();
    let (big_root, big_tree, big_hash) = root_and_tree(d, 4, SLOT + MIB);
    let cases: Vec<(PathBuf, &str)> = vec![
        (tampered_path, "the root payload's bytes are not the ones signed"),
        (truncated_path, "is truncated"),
        (bundle_file(d, &stranger, "demo", "0.2.0", &root, &tree, &hash), "which this appliance does not trust"),
        (bundle_file(d, &a.key, "billing", "0.2.0", &root, &tree, &hash), "is an update for appliance `billing`"),
        (bundle_file(d, &a.key, "demo", "0.1.0", &root, &tree, &hash), "the version this appliance runs"),
        (bundle_file(d, &a.key, "demo", "0.0.9", &root, &tree, &hash), "older than the running 0.1.0"),
        (bundle_file(d, &a.key, "demo", "0.4.0", &big_root, &big_tree, &big_hash), "does not fit slot B's partition"),
    ];
    let before = snapshot(&a.target);
    let status_before = update::Status::read(&a.target).unwrap().to_string();
    for (path, why) in cases {
        let err = format!("{:#}", update::apply(&a.target, &path, &opts()).unwrap_err());
        assert!(err.contains("refused") && err.contains(why), "{}: `{err}` should say `{why}`", path.display());
        assert_eq!(snapshot(&a.target), before, "{why}: nothing is written");
    }
    assert_eq!(update::Status::read(&a.target).unwrap().to_string(), status_before);
    // An older version with --allow-downgrade is installed (its signature still checked); the
    // running root itself never is.
    let older = bundle_file(d, &a.key, "demo", "0.0.9", &root, &tree, &hash);
    update::apply(&a.target, &older, &ApplyOptions { allow_downgrade: true, tries: 2 }).unwrap();
    assert!(a.target.esp.join("EFI/Linux/demo_0.0.9+2.efi").exists());
    let (_, tree_a, _) = root_and_tree(d, 1, 20 * MIB);
    let (root_a, _, _) = root_and_tree(d, 1, 20 * MIB);
    let same = bundle_file(d, &a.key, "demo", "0.1.0", &root_a, &tree_a, &hash_a);
    let err = format!(
        "{:#}",
        update::apply(&a.target, &same, &ApplyOptions { allow_downgrade: true, tries: 3 }).unwrap_err()
    );
    assert!(err.contains("holds the running root"), "{err}");
}

/// The boot side, on the same disk: 0.2.0 on trial saves the state once; it migrates and runs
/// out of tries; back on 0.1.0 the state is restored and the console lines say what happened;
/// a later version that becomes good drops its saved copy.
#[test]
fn a_failed_version_rolls_back_to_the_state_before_it() {
    use airlock_appliance::update::boot::{self, BootAction};
    use airlock_appliance::update::state::{Saved, StateStore};
    let (a, _) = appliance();
    let d = a.dir.path();
    let (root, tree, hash_b) = root_and_tree(d, 2, 18 * MIB);
    let file = bundle_file(d, &a.key, "demo", "0.2.0", &root, &tree, &hash_b);
    update::apply(&a.target, &file, &opts()).unwrap();
    let db = d.join("var/lib/db");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("records"), "record 1\n").unwrap();
    let store = StateStore { dir: d.join("var/lib/airlock/update"), protect: vec![db.clone()] };
    let linux = a.target.esp.join("EFI/Linux");
    let on_b = Target { root_hash: hash_b.clone(), ..a.target.clone() };

    // systemd-boot tries 0.2.0 (renaming its entry); the first try saves the state.
    std::fs::rename(linux.join("demo_0.2.0+3.efi"), linux.join("demo_0.2.0+2-1.efi")).unwrap();
    assert!(matches!(boot::on_boot(&on_b, &store).unwrap(), BootAction::Saved(Saved::Now(_))));
    std::fs::write(db.join("records"), "record 1, migrated by 0.2.0\n").unwrap();
    assert!(boot::give_up(&on_b, &store, vec!["api.service".into()], "not ready within 600 s").unwrap());
    std::fs::rename(linux.join("demo_0.2.0+2-1.efi"), linux.join("demo_0.2.0+1-2.efi")).unwrap();
    assert_eq!(boot::on_boot(&on_b, &store).unwrap(), BootAction::Saved(Saved::Earlier), "saved once");
    // Out of tries: systemd-boot boots 0.1.0.
    std::fs::rename(linux.join("demo_0.2.0+1-2.efi"), linux.join("demo_0.2.0+0-3.efi")).unwrap();
    let back = boot::on_boot(&a.target, &store).unwrap();
    let lines = back.console();
    assert_eq!(lines[0], "airlock: rolled back from 0.2.0 to 0.1.0");
    assert!(lines.contains(&"failed in 0.2.0: api.service".to_string()), "{lines:?}");
    assert_eq!(std::fs::read_to_string(db.join("records")).unwrap(), "record 1\n", "the state before 0.2.0");
    // Every later boot of 0.1.0 says so again, restoring nothing.
    std::fs::write(db.join("records"), "record 1\nrecord 2\n").unwrap();
    assert!(matches!(boot::on_boot(&a.target, &store).unwrap(), BootAction::RolledBack(_)));
    assert_eq!(std::fs::read_to_string(db.join("records")).unwrap(), "record 1\nrecord 2\n");

    // 0.2.1 goes into slot B; it becomes good (blessed): its copy of the state goes.
    let (root, tree, hash_c) = root_and_tree(d, 5, 18 * MIB);
    let file = bundle_file(d, &a.key, "demo", "0.2.1", &root, &tree, &hash_c);
    update::apply(&a.target, &file, &opts()).unwrap();
    let on_c = Target { root_hash: hash_c, ..a.target.clone() };
    std::fs::rename(linux.join("demo_0.2.1+3.efi"), linux.join("demo_0.2.1+2-1.efi")).unwrap();
    assert!(matches!(boot::on_boot(&on_c, &store).unwrap(), BootAction::Saved(Saved::Now(_))));
    std::fs::rename(linux.join("demo_0.2.1+2-1.efi"), linux.join("demo_0.2.1.efi")).unwrap();
    assert_eq!(boot::on_boot(&on_c, &store).unwrap(), BootAction::Committed);
    assert!(!store.dir.join("saved").exists());
    assert_eq!(boot::on_boot(&on_c, &store).unwrap(), BootAction::Nothing);
}

/// A downgrade: the older version boots first (the running one's entry steps back to `+0`);
/// when it fails every try, the newer one boots again as the fallback, not as a version on
/// trial: it restores the state, its entry is good again, and the bless that follows is
/// `update bless` at its ready boot like any other.
#[test]
fn a_failed_downgrade_falls_back_to_the_newer_version() {
    use airlock_appliance::update::boot::{self, BootAction};
    use airlock_appliance::update::state::{Saved, StateStore};
    let (a, _) = appliance();
    let d = a.dir.path();
    let (root, tree, hash_old) = root_and_tree(d, 2, 18 * MIB);
    let older = bundle_file(d, &a.key, "demo", "0.0.9", &root, &tree, &hash_old);
    let done = update::apply(&a.target, &older, &ApplyOptions { allow_downgrade: true, tries: 1 }).unwrap();
    assert_eq!(done.fell_back.as_deref(), Some("demo_0.1.0+0.efi"), "{done}");
    let linux = a.target.esp.join("EFI/Linux");
    let mut names: Vec<String> = boot_entries::list(&linux).unwrap().into_iter().map(|e| e.file_name).collect();
    names.sort();
    assert_eq!(names, ["demo_0.0.9+1.efi", "demo_0.1.0+0.efi"], "the older version boots first");
    let status = update::Status::read(&a.target).unwrap().to_string();
    assert!(status.contains("demo_0.1.0+0.efi (on trial: its last try, or back after a downgrade failed)"), "{status}");

    let db = d.join("var/lib/db");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("records"), "record 1\n").unwrap();
    let store = StateStore { dir: d.join("var/lib/airlock/update"), protect: vec![db.clone()] };
    let on_old = Target { root_hash: hash_old, ..a.target.clone() };
    // Its one try (systemd-boot counts it down first): the state is saved, then it fails.
    std::fs::rename(linux.join("demo_0.0.9+1.efi"), linux.join("demo_0.0.9+0-1.efi")).unwrap();
    assert!(matches!(boot::on_boot(&on_old, &store).unwrap(), BootAction::Saved(Saved::Now(_))));
    std::fs::write(db.join("records"), "migrated down by 0.0.9\n").unwrap();
    assert!(boot::give_up(&on_old, &store, vec!["api.service".into()], "airlock-ready.target failed").unwrap());
    // Every entry is out of tries: systemd-boot boots the newest, 0.1.0, the fallback.
    assert!(!boot::give_up(&a.target, &store, Vec::new(), "x").unwrap(), "the fallback is not on trial");
    let back = boot::on_boot(&a.target, &store).unwrap();
    assert_eq!(back.console()[0], "airlock: rolled back from 0.0.9 to 0.1.0");
    assert_eq!(std::fs::read_to_string(db.join("records")).unwrap(), "record 1\n");
    let names: Vec<String> = boot_entries::list(&linux).unwrap().into_iter().map(|e| e.file_name).collect();
    assert_eq!(names, ["demo_0.0.9+0-1.efi", "demo_0.1.0.efi"], "the fallback's entry is good again");
}
