//! The owner's Secure Boot keys and Authenticode signatures, judged by tools nobody here wrote:
//! OpenSSL reads the certificates and keys; efitools' `cert-to-efi-sig-list` and
//! `sign-efi-sig-list -t` write byte-identical signature lists and `.auth` files from the same
//! keys and time; sbsigntool's `sbverify --cert db.crt` accepts systemd-boot and a UKI of the
//! image's own trixie packages signed by airlock, and refuses them after one changed byte. Bad
//! keys are refused with errors naming the file. A missing tool fails the test.

#![allow(clippy::unwrap_used, reason = "a test should stop at the first unexpected error")]

mod support;

use airlock::pe::PeImage;
use airlock::secure_boot::{self, OwnerKeys, Variable, key_file};
use airlock::uki::{self, UkiInputs};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use support::base_files::boot_files;
use support::{airlock_err, airlock_ok, process_shared_dir, tool, tool_ok};

/// One key set for the whole test process (RSA key generation takes seconds).
fn keys() -> &'static (PathBuf, PathBuf) {
    static KEYS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = process_shared_dir("secure_boot_image-keys");
        let prefix = dir.join("owner");
        let listed = airlock_ok(&["keygen", "--secure-boot", "--out", prefix.to_str().unwrap()]);
        assert_eq!(listed.lines().count(), 15, "five files for each of PK, KEK, db:\n{listed}");
        (dir, prefix)
    })
}

fn file(v: Variable, ext: &str) -> String {
    key_file(&keys().1, v, ext).to_str().unwrap().to_string()
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn certificates_and_keys_read_by_openssl() {
    for v in Variable::ALL {
        let text = tool_ok("openssl", &["x509", "-noout", "-text", "-in", &file(v, "crt")]);
        let cn = format!("CN = owner {}", v.name());
        assert!(text.contains(&format!("Issuer: {cn}\n")) && text.contains(&format!("Subject: {cn}\n")), "{text}");
        assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
        assert!(text.contains("Signature Algorithm: sha256WithRSAEncryption"), "{text}");
        assert!(text.contains("CA:TRUE"), "{text}");
        // The key is the certificate's: the same public key, and a sound RSA key.
        let key_pub = tool_ok("openssl", &["pkey", "-pubout", "-in", &file(v, "key")]);
        let cert_pub = tool_ok("openssl", &["x509", "-noout", "-pubkey", "-in", &file(v, "crt")]);
        assert_eq!(key_pub, cert_pub, "{} key and certificate", v.name());
        tool_ok("openssl", &["rsa", "-check", "-noout", "-in", &file(v, "key")]);
        let der = tool_ok("openssl", &["x509", "-inform", "DER", "-in", &file(v, "cer")]);
        assert_eq!(der, fs::read_to_string(file(v, "crt")).unwrap(), ".cer is the DER of .crt");
        let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(file(v, "key")).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "private keys are for the owner only");
    }
    let again = airlock_err(&["keygen", "--secure-boot", "--out", keys().1.to_str().unwrap()]);
    assert!(again.contains("refusing to overwrite existing Secure Boot key file"), "{again}");
}

#[test]
fn signature_lists_and_auth_files_equal_efitools() {
    let dir = tempfile::tempdir().unwrap();
    for v in Variable::ALL {
        let esl = fs::read(file(v, "esl")).unwrap();
        let owner = uuid::Uuid::from_slice_le(&esl[28..44]).unwrap().to_string();
        let reference = dir.path().join(format!("{}.esl", v.name()));
        tool_ok("cert-to-efi-sig-list", &["-g", &owner, &file(v, "crt"), reference.to_str().unwrap()]);
        assert_eq!(esl, fs::read(&reference).unwrap(), "{}.esl differs from cert-to-efi-sig-list's", v.name());

        // The same update signed by efitools with the same time: identical bytes, since
        // neither adds signed attributes and RSA PKCS#1 v1.5 is deterministic.
        let auth = fs::read(file(v, "auth")).unwrap();
        let t = &auth[..16];
        let time = format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            u16::from_le_bytes([t[0], t[1]]),
            t[2],
            t[3],
            t[4],
            t[5],
            t[6]
        );
        let signer = if v == Variable::Db { Variable::Kek } else { Variable::Pk };
        let reference = dir.path().join(format!("{}.auth", v.name()));
        tool_ok(
            "sign-efi-sig-list",
            &[
                "-t",
                &time,
                "-c",
                &file(signer, "crt"),
                "-k",
                &file(signer, "key"),
                v.name(),
                &file(v, "esl"),
                reference.to_str().unwrap(),
            ],
        );
        assert!(auth == fs::read(&reference).unwrap(), "{}.auth differs from sign-efi-sig-list's", v.name());
    }
}

fn sbverify(path: &Path) -> std::process::Output {
    tool("sbverify", &["--cert", &file(Variable::Db, "crt"), path.to_str().unwrap()])
}

/// Signs `image` with airlock (twice: same bytes), checks it with sbverify, then flips one
/// byte at `flip` (an offset inside the signed data) and expects sbverify to refuse it.
fn sign_and_judge(name: &str, image: &[u8], flip: usize, dir: &Path) {
    let keys = OwnerKeys::load(&keys().1, now()).unwrap();
    let signed = secure_boot::sign_pe(image, name, &keys.db).unwrap();
    assert!(signed == secure_boot::sign_pe(image, name, &keys.db).unwrap(), "{name}: same input and key, same bytes");
    let path = dir.join(name);
    fs::write(&path, &signed).unwrap();
    let ok = sbverify(&path);
    assert!(ok.status.success(), "sbverify refused airlock's signature on {name}: {ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("Signature verification OK"), "{ok:?}");
    let list = tool_ok("sbverify", &["--list", path.to_str().unwrap()]);
    assert!(list.contains("signature 1") && list.contains("/CN=owner db"), "{list}");
    assert!(!list.contains("signature 2"), "{list}");

    let mut bad = signed.clone();
    bad[flip] ^= 0x01;
    fs::write(&path, &bad).unwrap();
    let refused = sbverify(&path);
    assert!(!refused.status.success(), "sbverify accepted {name} with byte {flip} changed");
    assert!(String::from_utf8_lossy(&refused.stdout).contains("Signature verification failed"), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Image fails hash check"), "{refused:?}");

    // The image digest airlock signs is the one sbsign computes for the same file, and the PE
    // checksum airlock computes is the one sbsign writes.
    let unsigned = dir.join(format!("{name}.unsigned"));
    let by_sbsign = dir.join(format!("{name}.sbsign"));
    fs::write(&unsigned, image).unwrap();
    tool_ok(
        "sbsign",
        &[
            "--key",
            &file(Variable::Db, "key"),
            "--cert",
            &file(Variable::Db, "crt"),
            "--output",
            by_sbsign.to_str().unwrap(),
            unsigned.to_str().unwrap(),
        ],
    );
    let p7 = dir.join(format!("{name}.p7"));
    tool_ok("sbattach", &["--detach", p7.to_str().unwrap(), by_sbsign.to_str().unwrap()]);
    let asn1 = tool_ok("openssl", &["asn1parse", "-inform", "DER", "-in", p7.to_str().unwrap()]);
    let sbsign_digest = asn1
        .lines()
        .find_map(|l| l.split("OCTET STRING      [HEX DUMP]:").nth(1))
        .unwrap_or_else(|| panic!("no digest in sbsign's signature:\n{asn1}"));
    let ours = secure_boot::image_digest(&PeImage::parse(image.to_vec(), name).unwrap()).unwrap();
    assert_eq!(sbsign_digest.to_ascii_lowercase(), hex::encode(ours), "{name}: Authenticode digest");
    let sbsigned = PeImage::parse(fs::read(&by_sbsign).unwrap(), "sbsign output").unwrap();
    assert_eq!(sbsigned.compute_checksum(), sbsigned.checksum(), "PE checksum as sbsign computes it");
}

#[test]
fn signed_systemd_boot_and_uki_pass_sbverify() {
    let files = boot_files();
    let dir = tempfile::tempdir().unwrap();
    // A byte inside .text of systemd-boot.
    sign_and_judge("systemd-bootx64.efi", &files.systemd_boot, 0x1000, dir.path());

    let os_release = uki::os_release(&files.os_release, "demo", "1.0.0").unwrap();
    let uki = uki::assemble(&UkiInputs {
        stub: &files.stub,
        stub_path: "linuxx64.efi.stub",
        kernel: &files.kernel,
        kernel_path: &files.kernel_path,
        initrd: &files.initrd,
        cmdline: "roothash=954172dfee9aaab2d90a0ab162ee6bc5a6a77ede951fad19f0f94df0d7266a93 ro",
        os_release: &os_release,
        uname: &files.uname,
    })
    .unwrap();
    // A byte of the command line: the one change an attacker would most like to make.
    let pe = PeImage::parse(uki.clone(), "uki").unwrap();
    let cmdline = pe.section(".cmdline").unwrap().pointer_to_raw_data as usize;
    sign_and_judge("demo_1.0.0.efi", &uki, cmdline + 9, dir.path());
}

/// A copy of the key set in a new directory, for breaking one file of it.
fn copy_keys() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("owner");
    for v in Variable::ALL {
        for ext in ["key", "crt", "cer", "esl", "auth"] {
            fs::copy(file(v, ext), key_file(&prefix, v, ext)).unwrap();
        }
    }
    (dir, prefix)
}

fn load_err(prefix: &Path, now: i64) -> String {
    format!("{:#}", OwnerKeys::load(prefix, now).unwrap_err())
}

#[test]
fn bad_keys_are_refused_naming_the_file() {
    let (_d, prefix) = copy_keys();
    let loaded = OwnerKeys::load(&prefix, now()).unwrap();
    assert_eq!(loaded.auth.iter().map(|(v, _)| v.name()).collect::<Vec<_>>(), ["PK", "KEK", "db"]);
    // The PK and KEK private keys are not needed to build: they can stay offline.
    fs::remove_file(key_file(&prefix, Variable::Pk, "key")).unwrap();
    fs::remove_file(key_file(&prefix, Variable::Kek, "key")).unwrap();
    OwnerKeys::load(&prefix, now()).unwrap();

    let db = |ext| key_file(&prefix, Variable::Db, ext);
    let name = |p: PathBuf| p.to_str().unwrap().to_string();

    // Expired, and not yet valid (the clock is what the check is given).
    let err = load_err(&prefix, now() + 11 * 365 * 86_400);
    assert!(
        err.contains(&format!("the certificate {} expired on", name(key_file(&prefix, Variable::Pk, "crt")))),
        "{err}"
    );
    let err = load_err(&prefix, now() - 86_400);
    assert!(err.contains("is not valid before"), "{err}");

    // A key that is not its certificate's.
    let (_d2, other) = copy_keys();
    fs::copy(key_file(&other, Variable::Kek, "key"), db("key")).unwrap();
    let err = load_err(&prefix, now());
    assert!(
        err.contains(&format!(
            "the private key {} does not belong to the certificate {}",
            name(db("key")),
            name(db("crt"))
        )),
        "{err}"
    );

    // An encrypted key.
    tool_ok(
        "openssl",
        &["pkey", "-in", &file(Variable::Db, "key"), "-aes256", "-passout", "pass:x", "-out", &name(db("key"))],
    );
    let err = load_err(&prefix, now());
    assert!(
        err.contains(&format!("reading the private key {}", name(db("key")))) && err.contains("encrypted"),
        "{err}"
    );

    // Not a key at all, and a missing key.
    fs::write(db("key"), "hello\n").unwrap();
    let err = load_err(&prefix, now());
    assert!(err.contains(&name(db("key"))) && err.contains("no PEM private key block"), "{err}");
    fs::remove_file(db("key")).unwrap();
    let err = load_err(&prefix, now());
    assert!(err.contains(&format!("reading Secure Boot private key {}", name(db("key")))), "{err}");

    // A key without its certificate.
    fs::copy(file(Variable::Db, "key"), db("key")).unwrap();
    fs::remove_file(db("crt")).unwrap();
    let err = load_err(&prefix, now());
    assert!(
        err.contains(&format!("the db key {} has no certificate: {} is missing", name(db("key")), name(db("crt")))),
        "{err}"
    );
    fs::write(db("crt"), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    let err = load_err(&prefix, now());
    assert!(err.contains(&format!("{} is not an X.509 certificate", name(db("crt")))), "{err}");
    fs::copy(file(Variable::Db, "crt"), db("crt")).unwrap();
    OwnerKeys::load(&prefix, now()).unwrap();

    // An .auth that enrolls another certificate, and one signed by the wrong key.
    fs::copy(file(Variable::Kek, "auth"), db("auth")).unwrap();
    let err = load_err(&prefix, now());
    assert!(
        err.contains(&format!(
            "{} would enroll something other than the certificate {}",
            name(db("auth")),
            name(db("crt"))
        )),
        "{err}"
    );
    tool_ok(
        "sign-efi-sig-list",
        &[
            "-c",
            &file(Variable::Pk, "crt"),
            "-k",
            &file(Variable::Pk, "key"),
            "db",
            &file(Variable::Db, "esl"),
            &name(db("auth")),
        ],
    );
    let err = load_err(&prefix, now());
    assert!(err.contains(&format!("{} is not signed by the KEK key", name(db("auth")))), "{err}");
    fs::write(db("auth"), b"short").unwrap();
    let err = load_err(&prefix, now());
    assert!(err.contains("is not a time-based authenticated variable update"), "{err}");
}
