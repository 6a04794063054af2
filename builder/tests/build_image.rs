//! `airlock build` of the demo appliance with the owner's Secure Boot keys, judged from
//! outside: the partition table by sgdisk, the ESP by fsck.vfat and mtools, the signed loader and
//! UKI by sbverify, the root's hash tree by veritysetup, the root and data filesystems by
//! e2fsck and debugfs. One build is shared by the checks; a second build proves
//! reproducibility.
#![allow(clippy::unwrap_used, reason = "a test stops at the first unexpected error")]

mod support;

use airlock::gpt::{GptLayout, types};
use airlock::seed::Seed;
use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;
use support::*;

struct Built {
    out: PathBuf,
    image: PathBuf,
    /// The Secure Boot keys' prefix (`airlock keygen --secure-boot`).
    keys: PathBuf,
}

/// One Secure Boot key set for the process: both builds sign with it.
fn secure_boot_keys() -> &'static PathBuf {
    static KEYS: OnceLock<PathBuf> = OnceLock::new();
    KEYS.get_or_init(|| {
        let prefix = process_shared_dir("build_image-keys").join("owner");
        airlock_ok(&["keygen", "--secure-boot", "--out", prefix.to_str().unwrap()]);
        prefix
    })
}

/// One release key (minisign, unencrypted) for the process: both builds sign with it, so they
/// write the update bundle.
fn release_key() -> &'static PathBuf {
    static KEY: OnceLock<PathBuf> = OnceLock::new();
    KEY.get_or_init(|| {
        let prefix = process_shared_dir("build_image-release-key").join("release");
        airlock_ok(&["keygen", "--no-passphrase", "--out", prefix.to_str().unwrap()]);
        prefix
    })
}

/// Builds the demo appliance once per test process. If that fails, for whatever reason (an
/// unreachable Debian archive included), every test that needs the build fails with the
/// build's own words: a test that cannot judge does not pass.
fn demo() -> &'static Built {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    match BUILT.get_or_init(|| build_demo("a")) {
        Ok(built) => built,
        Err(e) => panic!("{e}"),
    }
}

fn build_demo(tag: &str) -> Result<Built, String> {
    prepare_demo_images().map_err(|text| format!("images/demo/prepare failed:\n{text}"))?;
    let dir = process_shared_dir(&format!("build_image-{tag}"));
    let out = dir.join(format!("out-{tag}"));
    let spec = repo_root().join("images/demo/appliance.toml");
    let keys = secure_boot_keys();
    let res = airlock(&[
        "build",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--secure-boot-key",
        keys.to_str().unwrap(),
        "--sign-key",
        release_key().with_extension("key").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    if !res.status.success() {
        return Err(format!("airlock build of the demo failed:\n{stderr}"));
    }
    let stdout = String::from_utf8_lossy(&res.stdout);
    let image = out.join("demo.raw");
    assert!(stdout.contains(image.to_str().unwrap()), "build prints the image path: {stdout}");
    Ok(Built { out, image, keys: keys.clone() })
}

fn partition(b: &Built, index: usize, name: &str) -> PathBuf {
    let layout = GptLayout::read(&fs::File::open(&b.image).unwrap()).unwrap();
    let p = &layout.partitions[index];
    // Tests run in parallel and share the build: each extracts under its own name and renames,
    // so no test ever sees another's half-written copy.
    let dest = b.out.join(format!("part-{name}"));
    if !dest.exists() {
        let tmp = b.out.join(format!(".part-{name}.{:?}", std::thread::current().id()));
        extract(&b.image, p.start, p.size, &tmp);
        fs::rename(&tmp, &dest).unwrap();
    }
    dest
}

fn manifest(b: &Built) -> airlock::manifest::Manifest {
    serde_json::from_str(&fs::read_to_string(b.out.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn partition_table_is_valid_and_seeded() {
    let b = demo();
    let v = tool_ok("sgdisk", &["-v", b.image.to_str().unwrap()]);
    assert!(v.contains("No problems found"), "{v}");
    let layout = GptLayout::read(&fs::File::open(&b.image).unwrap()).unwrap();
    // The disk's identity comes from the name alone: every version's fstab names the same ESP
    // and data partition.
    let seed = Seed::new("demo-disk");
    let hash = manifest(b).boot.unwrap().verity.unwrap().root_hash;
    let half = |range: std::ops::Range<usize>| uuid::Uuid::from_slice(&hex::decode(&hash).unwrap()[range]).unwrap();
    let kinds: Vec<_> = layout.partitions.iter().map(|p| (p.name.as_str(), p.type_guid, p.guid)).collect();
    assert_eq!(
        kinds,
        vec![
            ("esp", types::ESP, seed.uuid("partition:esp")),
            ("demo_0.1.0", types::LINUX_ROOT_X86_64, half(0..16)),
            ("demo_0.1.0_verity", types::LINUX_ROOT_X86_64_VERITY, half(16..32)),
            ("_empty", types::LINUX_ROOT_X86_64, seed.uuid("partition:root-x86-64-b")),
            ("_empty", types::LINUX_ROOT_X86_64_VERITY, seed.uuid("partition:root-x86-64-verity-b")),
            ("data", types::LINUX_VARIABLE_DATA, seed.uuid("partition:data")),
        ],
        "slot A's root and hash tree have the root hash's halves as UUIDs and the appliance's name and \
         version as names; slot B is empty, as large as slot A"
    );
    assert_eq!(
        (layout.partitions[3].size, layout.partitions[4].size),
        (layout.partitions[1].size, layout.partitions[2].size)
    );
    assert_eq!(
        layout.partitions[5].end() + (1 << 20),
        layout.disk_size,
        "data is last and ends at the last aligned MiB"
    );
}

/// veritysetup (cryptsetup) accepts the hash tree for the manifest's root hash, and refuses it
/// once one byte of the root partition is flipped.
#[test]
fn root_hash_tree_is_judged_by_veritysetup() {
    let b = demo();
    let verity = manifest(b).boot.unwrap().verity.unwrap();
    let root = partition(b, 1, "root");
    let tree = partition(b, 2, "root-verity");
    let (root_s, tree_s) = (root.to_str().unwrap(), tree.to_str().unwrap());
    let ok = tool("veritysetup", &["verify", root_s, tree_s, &verity.root_hash]);
    assert!(ok.status.success(), "veritysetup verify: {}", String::from_utf8_lossy(&ok.stderr));
    let dump = tool_ok("veritysetup", &["dump", tree_s]);
    assert!(dump.contains(&format!("Salt:           \t{}", verity.salt)) || dump.contains(&verity.salt), "{dump}");
    let flipped = b.out.join("part-root-flipped");
    fs::copy(&root, &flipped).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().read(true).write(true).open(&flipped).unwrap();
        let at = 200 << 20;
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, at).unwrap();
        f.write_all_at(&[byte[0] ^ 1], at).unwrap();
    }
    let bad = tool("veritysetup", &["verify", flipped.to_str().unwrap(), tree_s, &verity.root_hash]);
    fs::remove_file(&flipped).unwrap();
    assert!(!bad.status.success(), "one flipped byte must fail verification");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("Verification failed"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn esp_holds_the_signed_loader_and_uki() {
    let b = demo();
    let m = manifest(b);
    let boot = m.boot.clone().unwrap();
    let esp = partition(b, 0, "esp");
    let fsck = tool("fsck.vfat", &["-n", esp.to_str().unwrap()]);
    assert!(fsck.status.success(), "fsck.vfat: {}", String::from_utf8_lossy(&fsck.stdout));
    let read = |path: &str| -> (PathBuf, Vec<u8>) {
        let dest = b.out.join(format!("esp-read-{}", path.replace('/', "_")));
        let _ = fs::remove_file(&dest);
        tool_ok("mcopy", &["-n", "-i", esp.to_str().unwrap(), &format!("::{path}"), dest.to_str().unwrap()]);
        let bytes = fs::read(&dest).unwrap();
        (dest, bytes)
    };
    assert_eq!(boot.uki, "/EFI/Linux/demo_0.1.0.efi");
    let cert = format!("{}.db.crt", b.keys.display());
    for path in ["/EFI/BOOT/BOOTX64.EFI", "/EFI/systemd/systemd-bootx64.efi", boot.uki.as_str()] {
        let (file, _) = read(path);
        let out = tool("sbverify", &["--cert", &cert, file.to_str().unwrap()]);
        assert!(out.status.success(), "sbverify --cert db.crt {path}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (uki, bytes) = read(&boot.uki);
    assert_eq!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)), boot.uki_sha256);
    let cmdline = b.out.join("uki-cmdline");
    tool_ok("objcopy", &["-O", "binary", "--only-section=.cmdline", uki.to_str().unwrap(), cmdline.to_str().unwrap()]);
    let cmdline = fs::read_to_string(cmdline).unwrap();
    let hash = boot.verity.unwrap().root_hash;
    assert_eq!(cmdline, boot.cmdline);
    // The root and its hash tree from the disk the loader started from (udev's links of the
    // boot disk, made by the rules the build appends to the initrd).
    let (first, last) = (&hash[..32], &hash[32..]);
    let uuid = |h: &str| format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]);
    assert!(
        cmdline.starts_with(&format!(
            "roothash={hash} systemd.verity_root_data=/dev/disk/airlock/by-partuuid/{} \
             systemd.verity_root_hash=/dev/disk/airlock/by-partuuid/{} ro ",
            uuid(first),
            uuid(last)
        )),
        "{cmdline}"
    );
    let initrd = b.out.join("uki-initrd");
    tool_ok("objcopy", &["-O", "binary", "--only-section=.initrd", uki.to_str().unwrap(), initrd.to_str().unwrap()]);
    let initrd = fs::read(initrd).unwrap();
    let rules = b"usr/lib/udev/rules.d/61-airlock-boot-disk.rules\0";
    assert!(initrd.windows(rules.len()).any(|w| w == rules), "the initrd carries the boot disk's rules");
    assert!(cmdline.contains("console=tty0 console=ttyS0,115200") && !cmdline.contains("root="), "{cmdline}");
    assert_eq!(
        String::from_utf8(read("/loader/loader.conf").1).unwrap(),
        "timeout 0\neditor no\nsecure-boot-enroll force\n"
    );
    for v in ["PK", "KEK", "db"] {
        let (_, auth) = read(&format!("/loader/keys/auto/{v}.auth"));
        assert_eq!(auth, fs::read(format!("{}.{v}.auth", b.keys.display())).unwrap(), "{v}.auth is the owner's");
    }
    // The root keeps the signed loader for systemd-boot-update.
    let root = partition(b, 1, "root");
    let signed = b.out.join("sd-boot-signed");
    debugfs(&root, &format!("dump /usr/lib/systemd/boot/efi/systemd-bootx64.efi.signed {}", signed.display()));
    assert_eq!(read("/EFI/BOOT/BOOTX64.EFI").1, fs::read(&signed).unwrap());
    // The site configuration an operator edits, every setting commented out at its default.
    let site = String::from_utf8(read("/airlock.toml").1).unwrap();
    assert!(site.contains("# hostname = \"airlock-demo\"\n") && site.contains("[network]\n"), "{site}");
    assert!(site.lines().all(|l| l.is_empty() || l.starts_with('#') || l.starts_with('[')), "{site}");
}

#[test]
fn root_filesystem_is_clean_and_prepared_for_first_boot() {
    let b = demo();
    let root = partition(b, 1, "root");
    let data = partition(b, 5, "data");
    assert_e2fsck_clean(&root);
    assert_e2fsck_clean(&data);

    // The root is read-only: what changes at run time is on the data partition, all of /var.
    let hostname = debugfs(&root, "stat /etc/hostname");
    assert!(hostname.contains("Fast link dest: \"../var/lib/airlock/etc/hostname\""), "{hostname}");
    assert_eq!(debugfs(&data, "cat /lib/airlock/etc/hostname"), "airlock-demo\n");
    assert!(debugfs(&data, "ls /lib/dpkg").contains("status"), "the dpkg database is on the data partition");
    assert_eq!(
        debugfs(&root, "ls -p /var").lines().filter(|l| !l.is_empty()).count(),
        2,
        "the root's /var is an empty mount point"
    );
    let machine_id = debugfs(&root, "stat /etc/machine-id");
    assert!(machine_id.contains("Size: 0"), "machine-id must be empty: {machine_id}");
    let ssh = debugfs(&root, "ls /etc/ssh");
    assert!(!ssh.contains("ssh_host_"), "no SSH host keys in the image: {ssh}");
    let wants = debugfs(&root, "ls /etc/systemd/system/multi-user.target.wants");
    assert!(wants.contains("airlock-banner.service") && wants.contains("nginx.service"), "{wants}");
    let masked = debugfs(&root, "stat /etc/systemd/system/e2scrub_reap.service");
    assert!(masked.contains("Fast link dest: \"/dev/null\""), "e2scrub_reap is masked: {masked}");
    assert!(wants.contains("airlock-provision.service"), "{wants}");
    // The appliance's own program, on PATH, is the one built next to the builder (not the builder).
    let program = debugfs(&root, "stat /usr/bin/airlock");
    assert!(program.contains("Mode:  0755") && program.contains("User:     0"), "{program}");
    let installed = b.out.join("usr-bin-airlock");
    debugfs(&root, &format!("dump /usr/bin/airlock {}", installed.display()));
    let built = PathBuf::from(env!("CARGO_BIN_EXE_airlock")).with_file_name("airlock-appliance");
    assert!(fs::read(&installed).unwrap() == fs::read(&built).unwrap(), "/usr/bin/airlock is {}", built.display());
    assert!(!debugfs(&root, "ls -p /usr/lib/airlock").contains("/airlock/"), "no second copy in /usr/lib/airlock");
    let repart = debugfs(&root, "cat /usr/lib/repart.d/50-airlock-data.conf");
    assert!(repart.contains("[Partition]\nType=var\n"), "the data partition grows on first boot: {repart}");
    let sshd = debugfs(&root, "cat /etc/ssh/sshd_config.d/airlock.conf");
    assert!(sshd.contains("HostKey /var/lib/airlock/ssh/ssh_host_ed25519_key"), "{sshd}");
    let banner = debugfs(&root, "stat /usr/lib/airlock/banner");
    assert!(banner.contains("Mode:  0755") && banner.contains("User:     0"), "{banner}");
    let ready = debugfs(&root, "cat /usr/lib/systemd/system/airlock-ready.target.d/services.conf");
    assert!(ready.contains("Requires=nginx.service"), "{ready}");
    let fstab = debugfs(&root, "cat /etc/fstab");
    assert!(fstab.contains(" /var ext4 defaults,data=journal,x-initrd.mount 0 2\n"), "{fstab}");
    assert!(!fstab.contains(" / ext4"), "the verity root is not in fstab: {fstab}");
    assert!(fstab.contains("/dev/disk/airlock/data /var ") && fstab.contains("/dev/disk/airlock/esp /efi "), "{fstab}");
    let rules = debugfs(&root, "cat /usr/lib/udev/rules.d/61-airlock-boot-disk.rules");
    assert!(rules.contains("SYMLINK+=\"disk/airlock/data\""), "{rules}");
    let factory = debugfs(&root, "ls -p /usr/share/factory/var/lib/airlock/etc");
    assert!(factory.contains("hostname"), "the data partition's first content is kept in the root: {factory}");
    let registry = debugfs(&root, "ls -p /usr/share/airlock/registry/docker/registry/v2");
    assert!(registry.contains("blobs"), "the registry's storage is in the verified root: {registry}");
    let search = debugfs(&root, "ls -p /usr/lib/systemd/system");
    assert!(!search.contains("airlock-test"), "a production image carries no test command channel");

    let packages = fs::read_to_string(b.out.join("demo.packages")).unwrap();
    assert!(packages.lines().any(|l| l.starts_with("systemd ")), "{packages}");
    assert!(packages.lines().any(|l| l.starts_with("linux-image-amd64 ")), "{packages}");
}

/// The update bundle: listed in `SHA256SUMS`, checked by `airlock verify` (its own signature,
/// every payload, and its root, hash tree and UKI against the manifest), carrying the image's
/// slot A byte for byte; the image trusts the release key that signed it. A bundle with one
/// byte changed is refused, naming the payload.
#[test]
fn the_update_bundle_carries_the_root_and_is_verified() {
    let b = demo();
    let bundle = b.out.join("demo_0.1.0.update");
    let sums = fs::read_to_string(b.out.join("SHA256SUMS")).unwrap();
    assert!(sums.lines().any(|l| l.ends_with("  demo_0.1.0.update")), "{sums}");
    let public = release_key().with_extension("pub");
    let ok = airlock(&["verify", b.out.to_str().unwrap(), "--pubkey", public.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{out}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(out.contains("update: demo_0.1.0.update: signature good, payloads match"), "{out}");

    let opened = airlock_common::bundle::Bundle::open(&bundle, &[opened_key(&public)]).unwrap();
    let layout = GptLayout::read(&fs::File::open(&b.image).unwrap()).unwrap();
    let root = &layout.partitions[1];
    let mut offset = 0u64;
    let image = fs::File::open(&b.image).unwrap();
    let mut expected = vec![0u8; 1 << 20];
    opened
        .copy_payload(airlock_common::bundle::Kind::Root, &mut |chunk| {
            use std::os::unix::fs::FileExt;
            image.read_exact_at(&mut expected[..chunk.len()], root.start + offset).unwrap();
            assert!(expected[..chunk.len()] == *chunk, "the bundle's root differs from the image's at {offset}");
            offset += chunk.len() as u64;
            Ok(())
        })
        .unwrap();
    assert_eq!(offset, root.size, "the whole root partition");
    let compressed: u64 = opened.header.payloads.iter().map(|p| p.stored_size).sum();
    eprintln!(
        "update bundle: {} bytes ({} of root and hash tree compressed) for a {}-byte root; raw.zst would hold the whole disk",
        fs::metadata(&bundle).unwrap().len(),
        compressed,
        root.size
    );

    // The image trusts the key that signed it (in its verified root).
    let key_id = opened.key_id.to_string();
    let root_part = partition(b, 1, "root");
    let listing = tool_ok("debugfs", &["-R", "ls -p /usr/lib/airlock/update-keys", root_part.to_str().unwrap()]);
    assert!(listing.contains(&format!("/{key_id}.pub/")), "{listing}");

    // One byte of the root payload changed: refused, naming it; nothing else is wrong.
    let tampered = b.out.parent().unwrap().join("tampered");
    fs::create_dir_all(&tampered).unwrap();
    let copy = tampered.join("demo_0.1.0.update");
    fs::copy(&bundle, &copy).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().read(true).write(true).open(&copy).unwrap();
        // The middle of the root payload, the first after the signature.
        let payload_start = fs::metadata(&copy).unwrap().len() - opened.header.payload_bytes();
        let at = payload_start + opened.header.payloads[0].stored_size / 2;
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, at).unwrap();
        f.write_all_at(&[byte[0] ^ 1], at).unwrap();
    }
    let reopened = airlock_common::bundle::Bundle::open(&copy, &[opened_key(&public)]).unwrap();
    let err = format!("{:#}", reopened.check_payloads(&mut |_| {}).unwrap_err());
    assert!(err.contains("the root payload's bytes are not the ones signed"), "{err}");
    fs::remove_dir_all(&tampered).unwrap();
}

fn opened_key(public: &std::path::Path) -> airlock::signing::PublicKey {
    airlock::signing::read_public_key(public.to_str().unwrap()).unwrap()
}

#[test]
fn two_builds_are_identical() {
    let a = demo();
    let b = build_demo("b").unwrap_or_else(|e| panic!("the first build succeeded, the second did not: {e}"));
    assert_eq!(sha256(&a.image), sha256(&b.image), "same spec, cache and SOURCE_DATE_EPOCH give the same image");
    assert_eq!(
        fs::read_to_string(a.out.join("SHA256SUMS")).unwrap(),
        fs::read_to_string(b.out.join("SHA256SUMS")).unwrap(),
        "every output (formats, packages, manifest, SBOM) is the same"
    );
    // The second build is this test's alone (the shared one stays for the other tests).
    let second = b.out.parent().expect("the build's directory");
    fs::remove_dir_all(second).unwrap_or_else(|e| panic!("removing {}: {e}", second.display()));
}

#[test]
fn release_lists_the_spec_formats_and_a_manifest_of_the_image() {
    let b = demo();
    let sums = fs::read_to_string(b.out.join("SHA256SUMS")).unwrap();
    let names: Vec<&str> = sums.lines().map(|l| &l[66..]).collect();
    assert_eq!(
        names,
        ["demo.packages", "demo.qcow2", "demo.raw", "demo.spdx.json", "demo_0.1.0.update", "manifest.json"]
    );
    let cmp = tool_ok(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "qcow2", b.image.to_str().unwrap(), b.out.join("demo.qcow2").to_str().unwrap()],
    );
    assert!(cmp.contains("Images are identical"), "{cmp}");
    let m: serde_json::Value = serde_json::from_str(&fs::read_to_string(b.out.join("manifest.json")).unwrap()).unwrap();
    let spec = fs::read(repo_root().join("images/demo/appliance.toml")).unwrap();
    assert_eq!(m["inputs"]["spec_sha256"], hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&spec)));
    assert!(m["kernel"].as_str().unwrap().ends_with("-amd64"), "{}", m["kernel"]);
    let packages = m["os_packages"].as_array().unwrap();
    let systemd = packages.iter().find(|p| p["name"] == "systemd").expect("systemd is listed");
    assert_eq!(systemd["source"], "debian:trixie");
    let listed = fs::read_to_string(b.out.join("demo.packages")).unwrap();
    assert_eq!(packages.len(), listed.lines().count(), "the manifest lists every installed package");
    let (_, parts) = airlock::inspect::inspect(&b.image).unwrap();
    for (p, mp) in parts.iter().zip(m["disk"]["partitions"].as_array().unwrap()) {
        assert_eq!(mp["sha256"], p.sha256.as_str());
    }
    assert_contents_match_the_lock(&m);
    assert_sbom_judged_valid(&b.out.join("demo.spdx.json"), &m);
}

/// The manifest names everything the demo carries, as `appliance.lock` pins it: its two
/// container images blob by blob, every mirrored file, the Pulumi CLI archives and plugin.
fn assert_contents_match_the_lock(m: &serde_json::Value) {
    let lock_path = repo_root().join("images/demo/appliance.lock");
    let lock_bytes = fs::read(&lock_path).unwrap();
    assert_eq!(m["inputs"]["lock_sha256"], hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&lock_bytes)));
    let lock = airlock::lock::Lock::parse(std::str::from_utf8(&lock_bytes).unwrap(), "appliance.lock").unwrap();

    let images = m["container_images"].as_array().unwrap();
    let names: Vec<&str> = images.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["app", "db"], "the demo's two container images, sorted by name");
    for image in images {
        let entry = lock.entry(image["name"].as_str().unwrap()).unwrap();
        assert_eq!(image["reference"], entry.image.as_str());
        assert_eq!(image["image"], entry.image.as_str(), "the demo's references are written normalized");
        assert_eq!(image["source"], entry.source.as_str());
        assert_eq!(image["manifest"]["digest"], entry.manifest.digest.to_string());
        assert_eq!(image["config"]["digest"], entry.config.digest.to_string());
        let layers: Vec<String> = entry.layers.iter().map(|l| l.digest.to_string()).collect();
        let listed: Vec<&str> =
            image["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
        assert_eq!(listed, layers);
        let size = entry.manifest.size + entry.config.size + entry.layers.iter().map(|l| l.size).sum::<u64>();
        assert_eq!(image["size"], size);
    }

    // Every file of every mirror set, with the lock's digest and size, in (ecosystem, path) order.
    let mut locked: Vec<(String, String, String, u64)> = lock
        .mirrors
        .iter()
        .flat_map(|set| set.files.iter().map(move |f| (set.set.clone(), f.path.clone(), f.sha256.clone(), f.size)))
        .collect();
    locked.sort();
    let listed: Vec<(String, String, String, u64)> = m["mirrored_packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert!(!f["name"].as_str().unwrap().is_empty() && !f["version"].as_str().unwrap().is_empty(), "{f}");
            let s = |k: &str| f[k].as_str().unwrap().to_string();
            (s("ecosystem"), s("path"), s("sha256"), f["size"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(listed, locked, "the manifest lists every mirrored file the lock pins");
    let sets: std::collections::BTreeSet<&str> = listed.iter().map(|(e, ..)| e.as_str()).collect();
    assert_eq!(sets.into_iter().collect::<Vec<_>>(), ["go", "npm", "nuget", "pulumi", "pypi"]);
    let scoped = m["mirrored_packages"].as_array().unwrap().iter().find(|f| f["name"] == "@pulumi/pulumi").unwrap();
    assert!(scoped["purl"].as_str().unwrap().starts_with("pkg:npm/%40pulumi/pulumi@"), "{scoped}");

    // The CLI: one archive per platform of the spec, and the plugin for each of its platforms.
    let archives: Vec<&str> =
        m["cli"]["archives"].as_array().unwrap().iter().map(|a| a["platform"].as_str().unwrap()).collect();
    assert_eq!(archives, ["darwin-arm64", "darwin-x64", "linux-arm64", "linux-x64", "windows-x64"]);
    for a in m["cli"]["archives"].as_array().unwrap() {
        assert_eq!(a["version"], "3.0.0-fixture");
    }
    let plugins: Vec<(&str, &str, &str)> = m["cli"]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["kind"].as_str().unwrap(), p["name"].as_str().unwrap(), p["platform"].as_str().unwrap()))
        .collect();
    assert_eq!(
        plugins,
        [("resource", "airlockfixture", "darwin-arm64"), ("resource", "airlockfixture", "linux-amd64")]
    );
}

/// Runs one of the reference SPDX tools (installed by `.ci/install-deps`); a missing tool fails.
fn spdx_tool(program: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `{program}` ({e}): the SBOM's judges are installed by `.ci/install-deps` (as root)")
    })
}

/// The SPDX tools judge the SBOM: `pyspdxtools` must parse and validate it as SPDX 2.3 and
/// `ntia-checker` must find NTIA's minimum elements; and it has one package per OS package,
/// container image, mirrored artifact and partition, plus the appliance.
fn assert_sbom_judged_valid(sbom: &std::path::Path, m: &serde_json::Value) {
    let path = sbom.to_str().unwrap();
    let out = spdx_tool("pyspdxtools", &["-i", path]);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "pyspdxtools -i {path} objects ({}):\n{said}", out.status);
    let out = spdx_tool("ntia-checker", &["--comply", "ntia", path]);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.contains("Conformant: True"),
        "ntia-checker {path} objects ({}):\n{said}",
        out.status
    );
    eprintln!("ntia-checker {path}:\n{said}");

    let text = fs::read_to_string(sbom).unwrap();
    assert!(text.contains("\"pkg:deb/debian/systemd@"), "purls in the SBOM");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let packages = doc["packages"].as_array().unwrap();
    let count = |prefix: &str| packages.iter().filter(|p| p["SPDXID"].as_str().unwrap().starts_with(prefix)).count();
    let artifacts = m["mirrored_packages"].as_array().unwrap().iter().filter(|f| !f["purl"].is_null()).count();
    assert_eq!(count("SPDXRef-deb-"), m["os_packages"].as_array().unwrap().len());
    assert_eq!(count("SPDXRef-Container-"), 2);
    assert_eq!(count("SPDXRef-Mirrored-"), artifacts);
    assert_eq!(count("SPDXRef-Partition-"), 6);
    assert_eq!(packages.len(), 1 + count("SPDXRef-deb-") + 2 + artifacts + 6, "nothing else");
    let root = packages.iter().find(|p| p["name"] == "demo partition 2 (demo_0.1.0)").expect("the root partition");
    let hash = m["boot"]["verity"]["root_hash"].as_str().unwrap();
    assert!(root["description"].as_str().unwrap().contains(&format!("dm-verity, root hash {hash}")), "{root}");
    eprintln!(
        "SBOM packages: {} OS packages, 2 container images, {artifacts} mirrored artifacts (of {} mirrored files), 6 partitions, the appliance: {} in all",
        count("SPDXRef-deb-"),
        m["mirrored_packages"].as_array().unwrap().len(),
        packages.len()
    );
    let containers: Vec<&str> = packages
        .iter()
        .filter(|p| p["primaryPackagePurpose"] == "CONTAINER")
        .map(|p| p["externalRefs"][0]["referenceLocator"].as_str().unwrap())
        .collect();
    for purl in containers {
        assert!(
            purl.starts_with("pkg:oci/") && purl.contains("@sha256%3A") && purl.contains("repository_url="),
            "{purl}"
        );
    }
}

/// `airlock build` installs the appliance's own program from next to itself; an `airlock`
/// without one stops before any work and names the cargo command that builds it.
#[test]
fn a_missing_appliance_program_names_the_command_that_builds_it() {
    let dir = tempfile::tempdir().unwrap();
    let lone = dir.path().join("airlock");
    fs::copy(env!("CARGO_BIN_EXE_airlock"), &lone).unwrap();
    let out_dir = dir.path().join("out");
    let spec = repo_root().join("images/demo/appliance.toml");
    let out = std::process::Command::new(&lone)
        .args(["build", spec.to_str().unwrap(), "--out", out_dir.to_str().unwrap()])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "built without an appliance program: {stderr}");
    let missing = dir.path().join("airlock-appliance");
    assert!(
        stderr.contains(&format!(
            "the appliance program {} is missing: build it with `cargo build --release -p airlock-appliance`",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(!out_dir.exists(), "nothing is built");
}

#[test]
fn check_validates_without_building() {
    let spec = repo_root().join("images/demo/appliance.toml");
    let out = airlock_ok(&["build", "--check", spec.to_str().unwrap()]);
    assert!(out.contains("demo 0.1.0 is valid"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("appliance.toml");
    let text = fs::read_to_string(&spec).unwrap().replace("hostname = \"airlock-demo\"", "hostname = \"airlock_demo\"");
    fs::write(&bad, text).unwrap();
    let err = airlock_err(&["build", "--check", bad.to_str().unwrap()]);
    assert!(err.contains("`os.hostname`") && err.contains("airlock_demo"), "{err}");

    // Secure Boot keys are checked before anything is built, --check included: a missing set
    // names the file, and so does a db key whose certificate is gone.
    let missing = dir.path().join("no-such/owner");
    let err =
        airlock_err(&["build", "--check", spec.to_str().unwrap(), "--secure-boot-key", missing.to_str().unwrap()]);
    assert!(err.contains("--secure-boot-key") && err.contains("no-such/owner.db.key"), "{err}");
    let keys = dir.path().join("keys/owner");
    fs::create_dir_all(keys.parent().unwrap()).unwrap();
    airlock_ok(&["keygen", "--secure-boot", "--out", keys.to_str().unwrap()]);
    let out = airlock_ok(&["build", "--check", spec.to_str().unwrap(), "--secure-boot-key", keys.to_str().unwrap()]);
    assert!(out.contains("demo 0.1.0 is valid"), "{out}");
    fs::remove_file(dir.path().join("keys/owner.db.crt")).unwrap();
    let err = airlock_err(&["build", "--check", spec.to_str().unwrap(), "--secure-boot-key", keys.to_str().unwrap()]);
    assert!(err.contains("has no certificate") && err.contains("owner.db.crt"), "{err}");
    // Secure Boot over a writable root is refused, naming the setting.
    let writable = dir.path().join("writable.toml");
    let minimal = "name = \"w\"\nversion = \"1\"\n[os]\nsuite = \"trixie\"\nhostname = \"w\"\n[disk]\nsize = \"3GiB\"\ndata_size = \"1GiB\"\nverity = false\n";
    fs::write(&writable, minimal).unwrap();
    let err =
        airlock_err(&["build", "--check", writable.to_str().unwrap(), "--secure-boot-key", keys.to_str().unwrap()]);
    assert!(err.contains("needs `[disk] verity = true`"), "{err}");
}

/// The image carries its own manifest on its ESP: `manifest.json` but for the partitions'
/// digests and the release's files (read with mtools, not airlock's FAT reader).
#[test]
fn the_esp_carries_the_image_manifest() {
    let b = demo();
    let esp = partition(b, 0, "esp");
    let dest = b.out.join("esp-manifest");
    let _ = fs::remove_file(&dest);
    tool_ok("mcopy", &["-n", "-i", esp.to_str().unwrap(), "::/airlock/manifest.json", dest.to_str().unwrap()]);
    let on_esp: serde_json::Value = serde_json::from_str(&fs::read_to_string(&dest).unwrap()).unwrap();
    let mut released: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(b.out.join("manifest.json")).unwrap()).unwrap();
    released["disk"]["partitions"] = serde_json::json!([]);
    released["outputs"] = serde_json::json!([]);
    assert_eq!(on_esp, released);
}

/// `airlock inspect` of the raw image alone and of the release directory, judged against
/// `manifest.json`, the filesystems' ids as blkid reads them, and a site `airlock.toml` written
/// onto a copy's ESP with mtools (whose values inspect must never print).
#[test]
fn inspect_answers_from_the_image_and_the_release_as_the_manifest_says() {
    let b = demo();
    let m: serde_json::Value = serde_json::from_str(&fs::read_to_string(b.out.join("manifest.json")).unwrap()).unwrap();
    let inspect_json = |path: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&airlock_ok(&["inspect", "--json", path.to_str().unwrap()])).unwrap()
    };
    let image = inspect_json(&b.image);
    let release = inspect_json(&b.out);
    for found in [&image, &release] {
        assert_eq!(found["name"], m["appliance"]["name"]);
        assert_eq!(found["version"], m["appliance"]["version"]);
        assert_eq!(found["kernel"], m["kernel"]);
        assert_eq!(found["boot"], m["boot"], "the boot chain, root hash included, from the image's own manifest");
        assert_eq!(found["architecture"], "x86-64");
        assert_eq!(found["os_packages"], m["os_packages"].as_array().unwrap().len());
        let parts = found["partitions"].as_array().unwrap();
        let listed = m["disk"]["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), listed.len());
        for (p, l) in parts.iter().zip(listed) {
            for (a, b) in [("number", "number"), ("name", "name"), ("type_guid", "type_guid"), ("partuuid", "guid")] {
                assert_eq!(p[a], l[b], "{a}");
            }
            for key in ["start", "size", "filesystem", "role"] {
                assert_eq!(p[key], l[key], "{key}");
            }
        }
        // The filesystems' own ids, as blkid (util-linux) reads them from the partitions.
        for (i, name) in [(0, "esp"), (1, "root")] {
            let part = partition(b, i, name);
            let id = tool_ok("blkid", &["-p", "-o", "value", "-s", "UUID", part.to_str().unwrap()]);
            assert_eq!(parts[i]["filesystem_id"].as_str().unwrap().to_lowercase(), id.trim().to_lowercase());
        }
        let containers: Vec<(String, String)> = found["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap().into(), c["digest"].as_str().unwrap().into()))
            .collect();
        let pinned: Vec<(String, String)> = m["container_images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap().into(), c["manifest"]["digest"].as_str().unwrap().into()))
            .collect();
        assert_eq!(containers, pinned);
        let mut files = std::collections::BTreeMap::<String, u64>::new();
        for f in m["mirrored_packages"].as_array().unwrap() {
            *files.entry(f["ecosystem"].as_str().unwrap().into()).or_default() += 1;
        }
        let counted: std::collections::BTreeMap<String, u64> = found["mirrors"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v["files"].as_u64().unwrap()))
            .collect();
        assert_eq!(counted, files);
        for eco in ["pypi", "npm", "go", "nuget", "pulumi"] {
            assert!(found["mirrors"][eco]["packages"].as_u64().unwrap() > 0, "{eco}: {}", found["mirrors"]);
        }
        let cli: std::collections::BTreeSet<&str> =
            m["cli"]["archives"].as_array().unwrap().iter().map(|a| a["version"].as_str().unwrap()).collect();
        let shown: std::collections::BTreeSet<&str> =
            found["pulumi_cli"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(!cli.is_empty());
        assert_eq!(shown, cli);
        assert_eq!(found["site_settings"], serde_json::json!({"state": "set", "names": []}));
    }
    // Signed with the release key (the image, by the release it is in), not checked without --pubkey.
    for found in [&image, &release] {
        assert_eq!(found["signature"]["state"], "signed", "{}", found["signature"]);
        assert!(found["signature"]["verified"].is_null(), "{}", found["signature"]);
    }
    assert_eq!(image["kind"], "image");
    assert!(image["manifest"].as_str().unwrap().contains("on the ESP (unsigned"), "{}", image["manifest"]);
    assert_eq!(release["kind"], "release");
    for (p, l) in release["partitions"].as_array().unwrap().iter().zip(m["disk"]["partitions"].as_array().unwrap()) {
        assert_eq!(p["sha256"], l["sha256"]);
    }
    let listed = airlock_ok(&["inspect", "--list", b.out.to_str().unwrap()]);
    for f in m["mirrored_packages"].as_array().unwrap().iter().filter(|f| f["kind"] != "metadata") {
        let line = format!(
            "    {} {} {}\n",
            f["ecosystem"].as_str().unwrap(),
            f["name"].as_str().unwrap(),
            f["version"].as_str().unwrap()
        );
        assert!(listed.contains(&line), "--list lacks `{line}`:\n{listed}");
    }

    // A site configuration with a secret, written by mtools onto a copy's ESP.
    let copy = b.out.join("inspect-copy.raw");
    tool_ok("cp", &["--sparse=always", b.image.to_str().unwrap(), copy.to_str().unwrap()]);
    let layout = GptLayout::read(&fs::File::open(&copy).unwrap()).unwrap();
    let site = b.out.join("site.toml");
    fs::write(
        &site,
        "hostname = \"edge\"\n[pulumi]\nlicense_key = \"SECRET-LICENSE-VALUE\"\n[network]\nmode = \"dhcp\"\n",
    )
    .unwrap();
    let at = format!("{}@@{}", copy.display(), layout.partitions[0].start);
    tool_ok("mcopy", &["-o", "-i", &at, site.to_str().unwrap(), "::/airlock.toml"]);
    let text = airlock_ok(&["inspect", copy.to_str().unwrap()]);
    assert!(text.contains("site settings hostname, network.mode, pulumi.license_key (values not shown)"), "{text}");
    let hash = m["boot"]["verity"]["root_hash"].as_str().unwrap();
    assert!(text.contains(&format!("root          read-only under dm-verity, root hash {hash}")), "{text}");
    assert!(text.contains("boot          /EFI/Linux/demo_0.1.0.efi (signed for Secure Boot, sha256 "), "{text}");
    let store = &m["image_store"];
    let podman = store["podman"].as_str().unwrap();
    assert!(
        text.contains(&format!(
            "  unpacked in /usr/lib/containers/storage for podman {podman} ({} layers, ",
            store["layers"]
        )),
        "{text}"
    );
    assert!(!text.contains("SECRET-LICENSE-VALUE") && !text.contains("edge"), "{text}");
    let found = inspect_json(&copy);
    assert_eq!(found["site_settings"]["names"], serde_json::json!(["hostname", "network.mode", "pulumi.license_key"]));
    assert!(!found.to_string().contains("SECRET-LICENSE-VALUE"));
    fs::remove_file(&copy).unwrap();
}
