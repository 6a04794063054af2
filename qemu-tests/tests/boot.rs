//! The demo appliance boots under UEFI with Secure Boot to `airlock: ready`: on firmware in
//! Setup Mode systemd-boot enrolls the owner's keys (the image's TEST keys) and resets, and the
//! next boot verifies the signed loader and UKI; the root is the dm-verity device of the hash in
//! the manifest, read-only, and one byte flipped on the disk in a file nothing reads at boot (of
//! a container image's layer) makes reading that file fail with an I/O error while the
//! appliance still comes up. The stack's containers run from the root's read-only image store:
//! nothing pulled, every image listed with its locked digest. Nothing
//! failed, the data partition (all of /var) grew to the enlarged disk, the mirror answers
//! through a port forward; its next boot (into an update, below) is ready again with the same
//! machine-id and journal; after shutdown
//! both ext4 filesystems are `e2fsck -fn` clean. One boot is shared by all these checks (TCG is
//! slow); `verified_boot.rs` has the boots that must fail.
//!
//! The same appliance then goes through offline updates (issue 17), with the demo built again
//! as 0.2.0 and as a 0.3.0 whose API never starts (a test overlay), all three signed with one
//! TEST release key: a record written through the demo API; 0.2.0 on a USB stick, staged when
//! the stick is plugged in, the appliance rebooting into it by itself (the site's `[update]
//! reboot = "now"`), ready, the record there; a tampered bundle, one signed by another key,
//! one for another appliance and 0.1.0 again each refused with its reason, `update status`
//! unchanged; 0.3.0 applied with one try: it fails readiness, the appliance goes back to 0.2.0
//! by itself, saying so after its banner, with the record; `e2fsck -fn` of every ext4
//! partition at the end.
#![allow(clippy::unwrap_used, reason = "a test stops at the first unexpected error")]

mod common;

use common::*;
use qemu_tests::test_image::{Recipe, load_release_key, release_key_prefix, repo_root};
use qemu_tests::usb_stick::fat_stick;
use qemu_tests::{BOOT_TIMEOUT, Vm, VmConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

const GIB: u64 = 1 << 30;
/// First boot under TCG: Secure Boot enrollment and reset, provisioning, the stack's start.
const FIRST_BOOT_TIMEOUT: Duration = Duration::from_secs(600);

#[test]
fn demo_appliance_boots_ready_grows_and_survives_reboot() {
    qemu_tests::init_logging();
    let built = build_test_image("demo").expect("building the demo test image");
    // The releases the update part installs, built before the VM so builds and TCG do not
    // share the cores.
    let demo = Recipe::image("demo");
    let next = build_spec(&demo.release("0.2.0", Vec::new())).expect("building the demo as 0.2.0");
    let failing = build_spec(&demo.release("0.3.0", vec![repo_root().join("qemu-tests/overlays/failing-stack")]))
        .expect("building the demo as 0.3.0 with a failing API");
    let manifest = read_manifest(&built);
    let verity = manifest.boot.as_ref().and_then(|b| b.verity.clone()).expect("the demo is built with verity");
    // One byte flipped in a file nothing reads at boot, on a disk otherwise as built.
    let work = tempfile::Builder::new().prefix("airlock-boot-").tempdir().unwrap();
    let disk = work.path().join("demo-flipped.qcow2");
    let unread = store_layer_file(&built.image, "usr/bin/redis-check-aof");
    disk_with_flipped_byte(&built.image, &disk, root_file_byte(&built.image, &unread, 100));
    let mut vm = Vm::boot(VmConfig {
        forwards: vec![80, 443, 5000, 8080, 8081],
        disk_size: Some(8 * GIB),
        secure_boot: true,
        usb: true,
        ..VmConfig::new("demo", &disk)
    })
    .expect("starting qemu");
    eprintln!("accelerator: {:?}", vm.accel());

    vm.wait_for_console("airlock: ready", FIRST_BOOT_TIMEOUT).expect("the banner says ready");
    let console = vm.console_since_boot();
    let banner: Vec<&str> = console.lines().skip_while(|l| l.trim() != "airlock: ready").take(2).collect();
    assert_eq!(banner.get(1).map(|l| l.trim()), Some("appliance: demo 0.1.0"), "banner: {banner:?}");
    // The whole banner as printed (the console interleaves it with systemd's status lines).
    let banner_text = vm.succeed("cat /run/airlock/banner").unwrap();
    assert!(banner_text.contains("mirror: http://10.0.2.15/"), "banner: {banner_text}");
    // The demo names its registry by the site's domain (TLS through nginx; firstboot.rs).
    assert!(banner_text.contains("registry: https://registry.airlock.internal/"), "banner: {banner_text}");

    let failed = vm.succeed("systemctl --failed --no-legend --plain").unwrap();
    assert_eq!(failed.trim(), "", "no unit failed");
    assert_eq!(vm.succeed("systemctl is-active airlock-ready.target").unwrap().trim(), "active");

    // The firmware took the owner's keys and verified what it started.
    let console = vm.serial_log();
    assert!(console.contains("Custom Secure Boot keys successfully enrolled"), "systemd-boot enrolled the keys");
    let bootctl = vm.succeed("bootctl status --no-pager 2>/dev/null | grep 'Secure Boot:'").unwrap();
    assert!(bootctl.contains("enabled (user)"), "bootctl: {bootctl}");
    // The root is the dm-verity device of the manifest's root hash, read-only, opened from the
    // partitions named by the hash's halves.
    assert_eq!(vm.succeed("findmnt -no SOURCE /").unwrap().trim(), "/dev/mapper/root");
    assert_eq!(vm.succeed("findmnt -no FSTYPE /").unwrap().trim(), "ext4");
    assert!(vm.succeed("findmnt -no OPTIONS /").unwrap().split(',').any(|o| o.trim() == "ro"));
    let table = vm.succeed("dmsetup table root").unwrap();
    let fields: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(fields.get(2), Some(&"verity"), "dm table: {table}");
    assert!(fields.contains(&verity.root_hash.as_str()), "the root hash is the manifest's: {table}");
    assert!(fields.contains(&verity.salt.as_str()), "the salt is the manifest's: {table}");
    let cmdline = vm.succeed("cat /proc/cmdline").unwrap();
    assert!(cmdline.contains(&format!("roothash={}", verity.root_hash)), "{cmdline}");
    let write = vm.fail("touch /usr/written-by-the-guest 2>&1").unwrap();
    assert!(write.contains("Read-only file system"), "{write}");
    // The flipped byte, in a file of a container image's unpacked layer: reading it fails, and
    // the kernel says why (the images are covered by the root's hash like the OS).
    let read = vm.fail(&format!("cat {unread} 2>&1 > /dev/null")).unwrap();
    assert!(read.contains("Input/output error"), "{read}");
    let dmesg = vm.succeed("dmesg | grep -i verity").unwrap();
    assert!(dmesg.contains("is corrupted"), "the kernel logs the corruption: {dmesg}");

    // The stack's containers started from the read-only image store in the root, unpacked at
    // build time: nothing was pulled, and podman lists every image under its reference with the
    // digest the lock pins.
    let journal = vm.succeed("journalctl -b 0 -o cat --no-pager").unwrap();
    assert!(journal.contains("Reached target"), "the journal of this boot was read: {journal}");
    assert_eq!(journal.matches("Trying to pull").count(), 0, "nothing is pulled on the first boot");
    let store = manifest.image_store.as_ref().expect("the manifest records the image store");
    assert_eq!(store.path, "/usr/lib/containers/storage");
    let listed = vm.succeed("podman images --digests --format json").unwrap();
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap_or_else(|e| panic!("{e}: {listed}"));
    let lock = airlock::lock_check::read_for_build(&built.plan).unwrap();
    assert_eq!(listed.len(), lock.containers.len(), "one image per locked container: {listed:#?}");
    for c in &lock.containers {
        let digest = c.index.as_ref().map_or(&c.manifest.digest, |i| &i.digest).to_string();
        let line = listed
            .iter()
            .find(|l| l["Digest"].as_str() == Some(digest.as_str()))
            .unwrap_or_else(|| panic!("podman lists no image with {}'s digest {digest}: {listed:#?}", c.name));
        let reference = airlock::oci::ImageReference::parse(&c.image).unwrap();
        let name = airlock::oci::containers_storage::store_name(&reference);
        assert!(line["Names"].as_array().unwrap().iter().any(|n| n.as_str() == Some(name.as_str())), "{line:#}");
        assert_eq!(line["ReadOnly"].as_bool(), Some(true), "{name} comes from the read-only store: {line:#}");
        assert!(store.images.iter().any(|e| e.listed_as == name && e.digest == digest), "manifest: {store:?}");
    }
    let running = vm.succeed("podman ps --format '{{.Names}} {{.ImageID}}' | sort").unwrap();
    for (container, image) in [("db", "db"), ("api", "app"), ("console", "app")] {
        let id = &store.images.iter().find(|e| e.name == image).unwrap().id;
        assert!(
            running.lines().any(|l| l.split_once(' ').is_some_and(|(n, i)| n == container && id.starts_with(i))),
            "{container} runs image {image} ({id}): {running}"
        );
    }
    // What podman writes (containers' layers, volumes, its database) is on the data partition.
    let graphroot = vm.succeed("podman info --format '{{.Store.GraphRoot}}'").unwrap();
    assert_eq!(graphroot.trim(), "/var/lib/airlock/containers/storage");

    // The data partition grew to the end of the 8 GiB disk (from 1 GiB), and its filesystem
    // with it.
    let dev = vm.succeed("basename $(readlink -f /dev/disk/by-partlabel/data)").unwrap();
    let mut sysfs = |f: &str| -> u64 {
        vm.succeed(&format!("cat /sys/class/block/{}/{f}", dev.trim())).unwrap().trim().parse().unwrap()
    };
    let (start, sectors) = (sysfs("start") * 512, sysfs("size") * 512);
    assert!(start + sectors > 8 * GIB - (2 << 20), "data partition ends at {} of an 8 GiB disk", start + sectors);
    assert!(sectors > 5 * GIB, "data partition is {sectors} bytes after growing");
    assert_eq!(vm.succeed("findmnt -no TARGET -T /var/lib/airlock").unwrap().trim(), "/var");
    let fs_size: u64 = vm.succeed("df -B1 --output=size /var | tail -1").unwrap().trim().parse().unwrap();
    assert!(fs_size > sectors / 100 * 90, "data filesystem is {fs_size} bytes on a {sectors}-byte partition");

    // The kernel writes to the data filesystem airlock wrote; e2fsck judges both after shutdown.
    vm.succeed("mkdir -p /var/lib/airlock/probe && head -c 50000000 /dev/urandom > /var/lib/airlock/probe/written-by-the-guest && sync").unwrap();

    // First boot generated this instance's identity.
    let machine_id = vm.succeed("cat /etc/machine-id").unwrap();
    assert_eq!(machine_id.trim().len(), 32, "machine-id: {machine_id}");

    // The mirror's page answers through the port forward (and the guest has no other network).
    vm.wait_for_open_port(80, Duration::from_secs(120)).unwrap();
    let (status, body) = http_get(vm.host_port(80), "/").unwrap();
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("airlock demo appliance"), "{body}");

    // The appliance's registry serves every preloaded image under its locked digest, to a
    // client nobody here wrote, from the moment it is up (nothing was imported at boot), over
    // TLS and only to the instance's registry user (firstboot.rs checks the certificate).
    let registry = format!("127.0.0.1:{}", vm.host_port(5000));
    let password = vm.succeed("cat /var/lib/airlock/secrets/registry-password").unwrap().trim().to_string();
    let creds = format!("{}:{password}", airlock_appliance::firstboot::REGISTRY_USER);
    let catalog_url = format!("https://{registry}/v2/_catalog");
    let anonymous = host("curl", &["-sk", "-o", "/dev/null", "-w", "%{http_code}", &catalog_url]);
    assert_eq!(anonymous, "401", "the registry refuses a client without credentials");
    let wrong = host("curl", &["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-u", "airlock:wrong", &catalog_url]);
    assert_eq!(wrong, "401", "the registry refuses a wrong password");
    let plain = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{registry}/v2/")])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200", "the registry does not answer plain HTTP");
    let catalog = host("curl", &["-sfk", "-u", &creds, &catalog_url]);
    let lock = airlock::lock_check::read_for_build(&built.plan).unwrap();
    for c in &lock.containers {
        let reference = airlock::oci::ImageReference::parse(&c.image).unwrap();
        let repo = format!("{}/{}", reference.domain(), reference.path());
        assert!(catalog.contains(&format!("\"{repo}\"")), "catalog lists {repo}: {catalog}");
        let inspect = host(
            "skopeo",
            &[
                "inspect",
                "--tls-verify=false",
                "--creds",
                &creds,
                "--format",
                "{{.Digest}}",
                &format!("docker://{registry}/{repo}:{}", reference.tag().unwrap()),
            ],
        );
        assert_eq!(inspect.trim(), c.manifest.digest.to_string(), "{repo} is served with the locked digest");
    }
    let registry_data = vm.succeed("du -sb /usr/share/airlock/registry | cut -f1").unwrap();
    assert!(registry_data.trim().parse::<u64>().unwrap() > 1 << 20, "the storage was written at build time");

    // The stack is up, served only through the TLS front door: the API answers at its name
    // after the migration ran once, and the console (at its own name) proxies to it. A client
    // trusts the CA it fetched from the appliance.
    let work = tempfile::tempdir().unwrap();
    let ca = fetch_ca(&vm, work.path(), "ca.crt");
    let (code, body) = curl_tls(&mut vm, &ca, "api.airlock.internal", "/api/status");
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("\"migration_runs\": 1"), "{body}");
    // The API reads the database as its own user, with the service password.
    assert!(body.contains("\"database_user\": \"api\""), "{body}");
    let (code, body) = curl_tls(&mut vm, &ca, "app.airlock.internal", "/api/status");
    assert!(code == "200" && body.contains("\"database\": \"ok\""), "console proxy: {code} {body}");
    // The containers' own plain-HTTP ports are published on the guest's loopback only: from
    // outside (the port forward reaches the guest's address) nothing answers there.
    for port in [8080, 8081] {
        let direct = http_get(vm.host_port(port), "/api/status");
        assert!(
            !matches!(&direct, Ok((status, _)) if status.starts_with("HTTP/")),
            "port {port} answers from outside the appliance: {direct:?}"
        );
    }
    for line in ["api: https://api.airlock.internal/api/status", "console: https://app.airlock.internal/"] {
        assert!(banner_text.contains(line), "banner: {banner_text}");
    }

    // A service that cannot start turns the verdict into `airlock: failed`, naming it (broken
    // by a runtime drop-in: the root, and nginx's configuration in it, is read-only).
    let offset = vm.console_len();
    vm.succeed(
        "mkdir -p /run/systemd/system/nginx.service.d && printf '[Service]\\nExecStartPre=/bin/false\\n' \
         > /run/systemd/system/nginx.service.d/broken.conf && systemctl daemon-reload && systemctl stop nginx.service",
    )
    .unwrap();
    let (code, _) = vm.execute("systemctl restart airlock-banner.service").unwrap();
    assert_ne!(code, 0, "the banner unit fails when a service is down");
    vm.wait_for_console_after(offset, "airlock: failed", Duration::from_secs(60)).unwrap();
    let banner = vm.succeed("cat /run/airlock/banner").unwrap();
    assert!(banner.starts_with("airlock: failed\n"), "{banner}");
    assert!(banner.contains("failed: nginx.service (failed)"), "{banner}");
    vm.succeed(
        "rm /run/systemd/system/nginx.service.d/broken.conf && systemctl daemon-reload && systemctl reset-failed \
         && systemctl restart airlock-banner.service",
    )
    .unwrap();
    assert!(vm.succeed("cat /run/airlock/banner").unwrap().starts_with("airlock: ready\n"));

    // The journal is persistent, on the data partition, within its cap.
    assert_eq!(vm.succeed("findmnt -no TARGET -T /var/log/journal").unwrap().trim(), "/var");
    let journal_files = vm.succeed(&format!("ls /var/log/journal/{}", machine_id.trim())).unwrap();
    assert!(journal_files.contains("system.journal"), "{journal_files}");
    let max_use = vm.succeed("systemd-analyze cat-config systemd/journald.conf | grep '^SystemMaxUse='").unwrap();
    assert_eq!(max_use.trim(), "SystemMaxUse=1G");
    let boots_before = journal_boots(&mut vm);
    assert_eq!(boots_before.len(), 1, "the journal knows the first boot only: {boots_before:?}");

    // The next boot is into 0.2.0 (`update_across_the_gap`), which must keep the instance's
    // identity and journal as any reboot does (`after_reboot`).
    let before = (machine_id, boots_before);
    update_across_the_gap(&mut vm, &built, &next, &failing, &ca, work.path(), &before);

    // After a clean shutdown the filesystems a real kernel used are clean: both slots (0.3.0,
    // written by the updater, never mounted read-write; 0.2.0) and the data partition.
    vm.shutdown(Duration::from_secs(180)).unwrap();
    e2fsck_partitions(vm.overlay_path(), &[Role::Root(Slot::A), Role::Root(Slot::B), Role::Data]);
}

/// After a reboot (here into the next version): ready, the same machine-id, the journal still
/// holding the first boot, nothing failed, the stack back from the root's store (nothing
/// pulled, the migration not run again).
fn after_reboot(vm: &mut Vm, ca: &Path, (machine_id, boots_before): &(String, Vec<String>)) {
    let machine_id_after = vm.succeed("cat /etc/machine-id").unwrap();
    if machine_id_after != *machine_id {
        let why = vm
            .execute("ls -la /var/lib/dbus/; cat /var/lib/dbus/machine-id; findmnt /var; journalctl -b 0 -o short-monotonic --no-pager | grep -i -E 'machine.id|var.mount|sysroot' | head -40")
            .unwrap();
        panic!("the machine-id changed over the reboot: {machine_id:?} then {machine_id_after:?}\n{}", why.1);
    }
    // The journal kept the first boot (the audit trail survives reboots).
    let boots_after = journal_boots(vm);
    assert_eq!(boots_after.len(), 2, "{boots_after:?}");
    assert_eq!(boots_after[0], boots_before[0], "the first boot is still in the journal: {boots_after:?}");
    assert_eq!(vm.succeed("systemctl --failed --no-legend --plain").unwrap().trim(), "");
    let journal = vm.succeed("journalctl -b 0 -o cat --no-pager").unwrap();
    assert!(journal.contains("Reached target"), "the journal of this boot was read: {journal}");
    assert_eq!(journal.matches("Trying to pull").count(), 0, "nothing is pulled on the second boot");
    vm.wait_for_unit("api.service", BOOT_TIMEOUT).unwrap();
    let (code, body) = curl_tls(vm, ca, "api.airlock.internal", "/api/status");
    assert!(code == "200" && body.contains("\"migration_runs\": 1"), "{code} {body}");
}

/// How long writing a bundle into the other slot may take under TCG (the bundle read twice
/// from USB, the slot written and read back).
const APPLY_TIMEOUT: Duration = Duration::from_secs(1200);

/// Offline updates on the running 0.1.0 appliance (see the module's documentation).
fn update_across_the_gap(
    vm: &mut Vm,
    first: &TestImage,
    next: &TestImage,
    failing: &TestImage,
    ca: &Path,
    work: &Path,
    before: &(String, Vec<String>),
) {
    let (v1, v2, v3) = (&first.plan.version, &next.plan.version, &failing.plan.version);
    // A record through the demo API: the stack's state, which every update must keep.
    let (code, body) = curl_tls_args(vm, ca, "api.airlock.internal", "/api/records", &["--data", "written by 0.1.0"]);
    assert_eq!(code, "201", "POST /api/records: {body}");
    let status = vm.succeed("airlock update status").unwrap();
    assert!(
        status.contains(&format!("slot A: demo {v1} (running), boot entry demo_{v1}.efi (good)"))
            && status.contains("slot B: empty"),
        "{status}"
    );
    // The site lets an update from a stick reboot at once.
    vm.succeed(r#"sed -i 's/^# reboot = "never"/reboot = "now"/' /efi/airlock.toml && grep -x 'reboot = "now"' /efi/airlock.toml"#)
        .unwrap();

    // 0.2.0 on a stick: staged when it is plugged in; the appliance reboots into it.
    let bundle = next.bundle();
    let stick = fat_stick(work, "UPDATE", &[(&format!("airlock-update/demo_{v2}.update"), &bundle)]).unwrap();
    let offset = vm.console_len();
    vm.plug_usb_drive("update", &stick).unwrap();
    let staged =
        vm.wait_for_console_after(offset, &format!("airlock: update {v2} staged from /dev/"), APPLY_TIMEOUT).unwrap();
    let rebooting = vm.wait_for_console_after(staged, &format!("airlock: rebooting into {v2}"), BOOT_TIMEOUT).unwrap();
    let booted = vm.wait_for_console_after(rebooting, &format!("appliance: demo {v2}"), BOOT_TIMEOUT).unwrap();
    vm.wait_for_console_after(booted.saturating_sub(200), "airlock: ready", BOOT_TIMEOUT).unwrap();
    vm.wait_for_unit("airlock-update-bless.service", BOOT_TIMEOUT).unwrap();
    after_reboot(vm, ca, before);
    let status = vm.succeed("airlock update status").unwrap();
    assert!(
        status.contains(&format!("slot A: demo {v1}, boot entry demo_{v1}.efi (good)"))
            && status.contains(&format!("slot B: demo {v2} (running), boot entry demo_{v2}.efi (good)")),
        "0.2.0 runs from slot B and was blessed: {status}"
    );
    let banner = vm.succeed("cat /run/airlock/banner").unwrap();
    assert!(banner.starts_with(&format!("airlock: ready\nappliance: demo {v2}\n")), "{banner}");
    let (code, records) = curl_tls(vm, ca, "api.airlock.internal", "/api/records");
    assert_eq!((code.as_str(), records.as_str()), ("200", "written by 0.1.0\n"), "the record came along");
    let saved = vm.succeed("journalctl -b 0 -o cat -u airlock-update-boot.service --no-pager").unwrap();
    assert!(saved.contains("saved the stack's state"), "the first try of 0.2.0 saved the stack's state first: {saved}");

    // The refusals and 0.3.0, from a second stick with no airlock-update/ folder (the USB
    // path says there is nothing for it, and the operator's shell applies by hand).
    let key = load_release_key(&release_key_prefix(Path::new(env!("CARGO_TARGET_TMPDIR")))).unwrap();
    let stranger = airlock::signing::generate().unwrap();
    let fixtures = work.join("fixtures");
    std::fs::create_dir_all(&fixtures).unwrap();
    let tampered = fixtures.join(format!("demo_{v3}.tampered.update"));
    tampered_copy(&failing.bundle(), &tampered, &key);
    let other_key = fixtures.join(format!("demo_{v3}.other-key.update"));
    resigned_copy(&failing.bundle(), &other_key, &stranger, |_| {});
    let other_appliance = fixtures.join(format!("billing_{v3}.update"));
    resigned_copy(&failing.bundle(), &other_appliance, &key, |h| h["appliance"] = "billing".into());
    let mut files: Vec<(String, PathBuf)> = vec![(format!("more/demo_{v3}.update"), failing.bundle())];
    for f in [&tampered, &other_key, &other_appliance] {
        files.push((format!("more/{}", f.file_name().unwrap().to_str().unwrap()), f.clone()));
    }
    files.push((format!("more/demo_{v1}.update"), first.bundle()));
    let listed: Vec<(&str, &Path)> = files.iter().map(|(d, s)| (d.as_str(), s.as_path())).collect();
    let extras = fat_stick(work, "EXTRAS", &listed).unwrap();
    for f in [&tampered, &other_key, &other_appliance] {
        std::fs::remove_file(f).unwrap();
    }
    let offset = vm.console_len();
    vm.plug_usb_drive("extras", &extras).unwrap();
    vm.wait_for_console_after(offset, "no folder airlock-update/", BOOT_TIMEOUT).unwrap();
    vm.succeed("mkdir -p /run/extras && mount -o ro /dev/disk/by-label/EXTRAS /run/extras").unwrap();
    let before = vm.succeed("airlock update status").unwrap();
    for (file, why) in [
        (format!("demo_{v3}.tampered.update"), "the root payload's bytes are not the ones signed"),
        (format!("demo_{v3}.other-key.update"), "which this appliance does not trust"),
        (format!("billing_{v3}.update"), "is an update for appliance `billing`"),
        (format!("demo_{v1}.update"), &format!("older than the running {v2}")),
    ] {
        let out = vm.fail(&format!("airlock update apply /run/extras/more/{file} 2>&1")).unwrap();
        assert!(out.contains("refused") && out.contains(why), "{file}: `{out}` should say `{why}`");
        assert_eq!(vm.succeed("airlock update status").unwrap(), before, "{file} changed nothing");
    }
    let out = vm.succeed(&format!("airlock update apply --tries 1 /run/extras/more/demo_{v3}.update 2>&1")).unwrap();
    assert!(out.contains(&format!("staged demo {v3} in slot A (boot entry demo_{v3}+1.efi)")), "{out}");
    vm.succeed("umount /run/extras").unwrap();

    // 0.3.0 never becomes ready: it gives itself up and the appliance goes back to 0.2.0.
    // From here on: an earlier boot's console (a kernel panic the harness power-cycled past
    // included) is not this one's.
    let offset = vm.console_len();
    vm.reboot(BOOT_TIMEOUT).unwrap();
    let tried = vm.wait_for_console_after(offset, &format!("appliance: demo {v3}"), BOOT_TIMEOUT).unwrap();
    let gave_up = vm.wait_for_console_after(tried, "did not become ready", BOOT_TIMEOUT).unwrap();
    let back =
        vm.wait_for_console_after(gave_up, &format!("airlock: rolled back from {v3} to {v2}"), BOOT_TIMEOUT).unwrap();
    vm.wait_for_console_after(back, "airlock: ready", BOOT_TIMEOUT).unwrap();
    let banner = vm.succeed("cat /run/airlock/banner").unwrap();
    let after_banner = banner.split_once(&format!("airlock: rolled back from {v3} to {v2}\n"));
    let Some((head, tail)) = after_banner else { panic!("the banner says the rollback: {banner}") };
    assert!(head.starts_with(&format!("airlock: ready\nappliance: demo {v2}\n")), "{banner}");
    assert!(tail.contains(&format!("failed in {v3}: api.service")), "the unit that failed: {banner}");
    let status = vm.succeed("airlock update status").unwrap();
    assert!(
        status.contains(&format!("slot A: demo {v3}, boot entry demo_{v3}+0-1.efi (bad: failed 1 tries)"))
            && status.contains(&format!("slot B: demo {v2} (running), boot entry demo_{v2}.efi (good)")),
        "{status}"
    );
    let (code, records) = curl_tls(vm, ca, "api.airlock.internal", "/api/records");
    assert_eq!(
        (code.as_str(), records.as_str()),
        ("200", "written by 0.1.0\n"),
        "the record is there after the rollback"
    );
    let kept = vm.succeed("ls /var/lib/airlock/demo").unwrap();
    assert!(kept.lines().any(|l| l == format!("db.failed-{v3}")), "the failed version's state is kept aside: {kept}");
}

/// The parts of a bundle file: its header (JSON), and everything after the signature.
fn bundle_parts(path: &Path) -> (serde_json::Value, std::fs::File, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).unwrap();
    let mut word = [0u8; 4];
    f.seek(SeekFrom::Start(airlock::bundle::MAGIC.len() as u64)).unwrap();
    f.read_exact(&mut word).unwrap();
    let mut header = vec![0u8; u32::from_le_bytes(word) as usize];
    f.read_exact(&mut header).unwrap();
    f.read_exact(&mut word).unwrap();
    let payloads = f.seek(SeekFrom::Current(i64::from(u32::from_le_bytes(word)))).unwrap();
    (serde_json::from_slice(&header).unwrap(), f, payloads)
}

/// A TEST FIXTURE: `src`'s payloads under its header as `edit` changes it, signed by `key`.
fn resigned_copy(src: &Path, dest: &Path, key: &airlock::signing::KeyPair, edit: impl FnOnce(&mut serde_json::Value)) {
    use std::io::Write;
    let (mut header, mut payloads, _) = bundle_parts(src);
    edit(&mut header);
    let json = serde_json::to_vec_pretty(&header).unwrap();
    let signature = airlock::signing::sign(key, &json, "TEST FIXTURE re-signed by qemu-tests/tests/boot.rs").unwrap();
    let mut out = std::io::BufWriter::new(std::fs::File::create(dest).unwrap());
    out.write_all(&airlock::bundle::preamble(&json, &signature).unwrap()).unwrap();
    std::io::copy(&mut payloads, &mut out).unwrap();
    out.flush().unwrap();
}

/// A TEST FIXTURE: a copy of `src` with one byte flipped in the middle of its root payload.
fn tampered_copy(src: &Path, dest: &Path, key: &airlock::signing::KeyPair) {
    use std::os::unix::fs::FileExt;
    std::fs::copy(src, dest).unwrap();
    let header = airlock::bundle::Bundle::open(dest, &[key.public_key()]).unwrap().header;
    let (_, _, payloads) = bundle_parts(dest);
    let at = payloads + header.payload(airlock::bundle::Kind::Root).stored_size / 2;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(dest).unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 1], at).unwrap();
}

/// The path in the root filesystem of `file` in the unpacked layer of the store that holds it.
fn store_layer_file(image: &Path, file: &str) -> String {
    let root = partition(image, Role::Root(Slot::A));
    let fs = format!("{}?offset={}", image.display(), root.start);
    let store = "/usr/lib/containers/storage/overlay";
    let listing = host("debugfs", &["-R", &format!("ls -p {store}"), &fs]);
    let layers: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split('/').nth(5))
        .filter(|name| name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    assert!(!layers.is_empty(), "no layers in {store}: {listing}");
    layers
        .iter()
        .map(|id| format!("{store}/{id}/diff/{file}"))
        .find(|path| {
            let out =
                std::process::Command::new("debugfs").args(["-R", &format!("stat {path}"), &fs]).output().unwrap();
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Type: regular")
        })
        .unwrap_or_else(|| panic!("no layer in {store} holds {file}: {layers:?}"))
}

/// The manifest of the test image's build.
fn read_manifest(built: &TestImage) -> airlock::manifest::Manifest {
    let text = std::fs::read_to_string(built.dir.join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The boot IDs the guest's journal knows, oldest first.
fn journal_boots(vm: &mut Vm) -> Vec<String> {
    let out = vm.succeed("journalctl --list-boots --no-pager -o json").unwrap();
    let boots: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    boots.iter().map(|b| b["boot_id"].as_str().unwrap_or_else(|| panic!("no boot_id in {b}")).to_string()).collect()
}
