//! Keys, signatures and checksums judged by tools nobody here wrote: Debian's `minisign` must
//! accept what airlock signs (and airlock what minisign signs), and `sha256sum -c` must accept
//! airlock's SHA256SUMS. A missing tool fails the test; it never passes silently.

#![allow(clippy::unwrap_used, reason = "a test should stop at the first unexpected error")]

use airlock::signing::{self, ChecksumFailures, ChecksumProblem, KeyError, KeyPair, VerifyError};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const PASSPHRASE: &str = "correct horse battery staple";
const MESSAGE: &[u8] = b"an image that must arrive exactly as it was built\n";

/// Runs a tool, with `stdin` fed to it (or /dev/null), in `dir`.
fn run(dir: &Path, name: &str, args: &[&OsStr], stdin: Option<&str>) -> Output {
    let mut child = Command::new(name)
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{name}` ({e}); this test needs the minisign and coreutils packages \
                 to judge what airlock writes"
            )
        });
    if let Some(input) = stdin {
        let written = child.stdin.take().unwrap().write_all(input.as_bytes());
        // A tool that did not need its input (minisign with an unencrypted key never reads
        // the passphrase) may exit before reading it; its exit status is what counts.
        if let Err(err) = written {
            assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "feeding {name}: {err}");
        }
    }
    child.wait_with_output().unwrap()
}

fn run_ok(dir: &Path, name: &str, args: &[&OsStr], stdin: Option<&str>) -> String {
    let out = run(dir, name, args, stdin);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs a tool that must fail; returns its stderr.
fn run_fails(dir: &Path, name: &str, args: &[&OsStr]) -> String {
    let out = run(dir, name, args, None);
    assert!(!out.status.success(), "{name} {args:?} should have failed:\n{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> &OsStr {
    s.as_ref()
}

/// `minisign -V -p PUB -m FILE` (signature in FILE.minisig); returns its stdout.
fn minisign_verifies(dir: &Path, public: &Path, file: &str, extra: &[&str]) -> String {
    let mut args = vec![os("-V"), os("-p"), public.as_os_str(), os("-m"), os(file)];
    args.extend(extra.iter().map(os));
    run_ok(dir, "minisign", &args, None)
}

fn minisign_rejects(dir: &Path, public: &Path, file: &str) -> String {
    run_fails(dir, "minisign", &[os("-V"), os("-p"), public.as_os_str(), os("-m"), os(file)])
}

/// `minisign -S` with a secret key file, the passphrase (if any) piped in.
fn minisign_signs(dir: &Path, secret: &Path, file: &str, comment: &str, extra: &[&str]) {
    let mut args = vec![os("-S"), os("-s"), secret.as_os_str(), os("-m"), os(file), os("-t"), os(comment)];
    args.extend(extra.iter().map(os));
    let stdin = format!("{PASSPHRASE}\n");
    run_ok(dir, "minisign", &args, Some(&stdin));
}

fn no_passphrase() -> anyhow::Result<String> {
    panic!("the passphrase was asked for an unencrypted key")
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes MESSAGE as `name` in `dir` and its airlock signature as `name.minisig`.
fn sign_file(dir: &Path, kp: &KeyPair, name: &str, comment: &str) -> String {
    fs::write(dir.join(name), MESSAGE).unwrap();
    let sig = signing::sign(kp, MESSAGE, comment).unwrap();
    fs::write(dir.join(format!("{name}.minisig")), &sig).unwrap();
    sig
}

fn verify_error(err: &anyhow::Error) -> &VerifyError {
    err.downcast_ref::<VerifyError>().unwrap_or_else(|| panic!("not a VerifyError: {err:#}"))
}

/// Everything minisign must say about one airlock key pair.
fn airlock_key_pair_is_accepted_by_minisign(passphrase: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prefix = d.join("release.2024");
    let generated = signing::generate().unwrap();
    signing::write_key_pair(&generated, &prefix, passphrase).unwrap();
    let public = with_suffix(&prefix, ".pub");
    let secret = with_suffix(&prefix, ".key");
    // What was written reads back as the same key, asking for a passphrase only if needed.
    let kp = match passphrase {
        Some(p) => signing::read_secret_key(&secret, || Ok(p.to_owned())).unwrap(),
        None => signing::read_secret_key(&secret, no_passphrase).unwrap(),
    };
    assert_eq!(kp.public_key(), generated.public_key());

    let comment = "timestamp:1700000000\tfile:disk.raw\tairlock";
    sign_file(d, &kp, "disk.raw", comment);
    let out = minisign_verifies(d, &public, "disk.raw", &[]);
    assert!(out.contains(&format!("Trusted comment: {comment}")), "{out}");
    // -H: minisign insists the signature is prehashed, as airlock always signs.
    minisign_verifies(d, &public, "disk.raw", &["-H"]);
    // The one-line public key works as `minisign -P`.
    let line = signing::public_key_line(&kp);
    run_ok(d, "minisign", &[os("-V"), os("-P"), os(&line), os("-m"), os("disk.raw")], None);

    // One changed byte of the message.
    let mut tampered = MESSAGE.to_vec();
    tampered[3] ^= 0x20;
    fs::write(d.join("disk.raw"), &tampered).unwrap();
    let err = minisign_rejects(d, &public, "disk.raw");
    assert!(err.contains("Signature verification failed"), "{err}");

    // A changed trusted comment over an intact message.
    fs::write(d.join("disk.raw"), MESSAGE).unwrap();
    let sig = fs::read_to_string(d.join("disk.raw.minisig")).unwrap();
    let forged = sig.replace("airlock", "airl0ck");
    assert_ne!(forged, sig);
    fs::write(d.join("disk.raw.minisig"), forged).unwrap();
    let err = minisign_rejects(d, &public, "disk.raw");
    assert!(err.contains("Comment signature verification failed"), "{err}");

    // minisign can sign with airlock's secret key file (decrypting it when encrypted), and
    // airlock verifies the result.
    fs::write(d.join("other.txt"), MESSAGE).unwrap();
    minisign_signs(d, &secret, "other.txt", "signed by minisign", &[]);
    let pk = signing::read_public_key(public.to_str().unwrap()).unwrap();
    let sig = fs::read_to_string(d.join("other.txt.minisig")).unwrap();
    assert_eq!(signing::verify(&pk, MESSAGE, &sig).unwrap(), "signed by minisign");
}

#[test]
fn unencrypted_airlock_key_is_accepted_by_minisign() {
    airlock_key_pair_is_accepted_by_minisign(None);
}

#[test]
fn encrypted_airlock_key_is_accepted_by_minisign() {
    airlock_key_pair_is_accepted_by_minisign(Some(PASSPHRASE));
}

/// Everything airlock must accept from one minisign key pair.
fn minisign_key_pair_is_accepted_by_airlock(encrypted: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let public = d.join("m.pub");
    let secret = d.join("m.key");
    let mut args = vec![os("-G"), os("-p"), public.as_os_str(), os("-s"), secret.as_os_str()];
    // minisign reads the passphrase (twice) from a pipe when stdin is not a terminal.
    let stdin = format!("{PASSPHRASE}\n{PASSPHRASE}\n");
    if !encrypted {
        args.push(os("-W"));
    }
    run_ok(d, "minisign", &args, encrypted.then_some(stdin.as_str()));

    let kp = if encrypted {
        signing::read_secret_key(&secret, || Ok(PASSPHRASE.to_owned())).unwrap()
    } else {
        signing::read_secret_key(&secret, no_passphrase).unwrap()
    };
    let pk_from_file = signing::read_public_key(public.to_str().unwrap()).unwrap();
    let pub_text = fs::read_to_string(&public).unwrap();
    let pk_from_line = signing::read_public_key(pub_text.lines().nth(1).unwrap()).unwrap();
    assert_eq!(pk_from_file, pk_from_line);
    assert_eq!(kp.public_key(), pk_from_file);
    assert_eq!(kp.key_id(), pk_from_file.key_id());
    // minisign's own comment line names the same key id (older minisign drops leading zeros,
    // so compare numbers).
    let shown = pub_text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("untrusted comment: minisign public key "))
        .unwrap_or_else(|| panic!("unexpected comment in {pub_text}"));
    assert_eq!(u64::from_str_radix(shown, 16).unwrap(), u64::from_str_radix(&kp.key_id().to_string(), 16).unwrap());

    // minisign signs (prehashed by default, and legacy with -l); airlock verifies both.
    fs::write(d.join("file"), MESSAGE).unwrap();
    minisign_signs(d, &secret, "file", "minisign trusted comment", &[]);
    let sig = fs::read_to_string(d.join("file.minisig")).unwrap();
    assert_eq!(signing::verify(&pk_from_line, MESSAGE, &sig).unwrap(), "minisign trusted comment");
    assert_eq!(signing::verify_reader(&pk_from_line, MESSAGE, &sig).unwrap(), "minisign trusted comment");
    let err = signing::verify(&pk_from_line, b"something else", &sig).unwrap_err();
    assert!(matches!(verify_error(&err), VerifyError::BadSignature));

    // Legacy signatures only once: each signing with an encrypted key costs seconds of scrypt.
    if !encrypted {
        fs::write(d.join("legacy"), MESSAGE).unwrap();
        minisign_signs(d, &secret, "legacy", "legacy comment", &["-l"]);
        let sig = fs::read_to_string(d.join("legacy.minisig")).unwrap();
        assert_eq!(signing::verify(&pk_from_line, MESSAGE, &sig).unwrap(), "legacy comment");
    }

    // And airlock signing with minisign's key is accepted by minisign.
    sign_file(d, &kp, "ours", "airlock with a minisign key");
    let out = minisign_verifies(d, &public, "ours", &["-H"]);
    assert!(out.contains("Trusted comment: airlock with a minisign key"), "{out}");

    if encrypted {
        let err = signing::read_secret_key(&secret, || Ok("wrong".to_owned())).unwrap_err();
        assert!(matches!(err.downcast_ref::<KeyError>(), Some(KeyError::WrongPassphrase { .. })), "{err:#}");
        assert!(err.to_string().contains("wrong passphrase"), "{err:#}");
    }
}

#[test]
fn unencrypted_minisign_key_is_accepted_by_airlock() {
    minisign_key_pair_is_accepted_by_airlock(false);
}

#[test]
fn encrypted_minisign_key_is_accepted_by_airlock() {
    minisign_key_pair_is_accepted_by_airlock(true);
}

#[test]
fn wrong_key_is_named_by_airlock_and_rejected_by_minisign() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let signer = signing::generate().unwrap();
    let other = signing::generate().unwrap();
    signing::write_key_pair(&other, &d.join("other"), None).unwrap();
    let sig = sign_file(d, &signer, "f", "c");

    let other_pk = signing::read_public_key(d.join("other.pub").to_str().unwrap()).unwrap();
    let err = signing::verify(&other_pk, MESSAGE, &sig).unwrap_err();
    match verify_error(&err) {
        VerifyError::WrongKeyId { signature, public_key } => {
            assert_eq!(*signature, signer.key_id());
            assert_eq!(*public_key, other.key_id());
        }
        other => panic!("expected a wrong key id, got {other}"),
    }
    let stderr = minisign_rejects(d, &d.join("other.pub"), "f");
    // Debian's minisign 0.11 prints key ids without leading zeros.
    let shown = signer.key_id().to_string();
    assert!(stderr.contains(shown.trim_start_matches('0')), "{stderr}");
}

#[test]
fn truncated_or_garbled_signature_files_are_malformed() {
    let kp = signing::generate().unwrap();
    let pk = kp.public_key();
    let sig = signing::sign(&kp, MESSAGE, "c").unwrap();
    let lines: Vec<&str> = sig.lines().collect();

    let cases = [
        ("empty", String::new()),
        ("two lines", format!("{}\n{}\n", lines[0], lines[1])),
        ("cut mid-line", sig[..sig.len() - 30].to_owned()),
        ("garbled base64", sig.replacen(lines[1], &format!("*{}", &lines[1][1..]), 1)),
        ("no comment prefix", sig.replacen("untrusted comment: ", "", 1)),
        ("no trusted prefix", sig.replacen("trusted comment: ", "comment: ", 1)),
    ];
    for (what, text) in cases {
        let err = signing::verify(&pk, MESSAGE, &text).unwrap_err();
        assert!(matches!(verify_error(&err), VerifyError::Malformed(_)), "{what}: {err:#}");
        assert!(err.to_string().starts_with("malformed"), "{what}: {err:#}");
    }

    // Well-formed, but one bit of the signature flipped.
    let mut raw = base64_decode(lines[1]);
    raw[20] ^= 1;
    let flipped = sig.replace(lines[1], &base64_encode(&raw));
    let err = signing::verify(&pk, MESSAGE, &flipped).unwrap_err();
    assert!(matches!(verify_error(&err), VerifyError::BadSignature), "{err:#}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    // Decoded with coreutils rather than by airlock's own base64 code.
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), "base64", &[os("-d")], Some(s));
    assert!(out.status.success());
    out.stdout
}

fn base64_encode(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("b"), bytes).unwrap();
    run_ok(dir.path(), "base64", &[os("-w0"), os("b")], None)
}

#[test]
fn existing_key_files_are_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("k");
    let first = signing::generate().unwrap();
    signing::write_key_pair(&first, &prefix, None).unwrap();
    let key_before = fs::read(dir.path().join("k.key")).unwrap();
    let pub_before = fs::read(dir.path().join("k.pub")).unwrap();

    let second = signing::generate().unwrap();
    let err = signing::write_key_pair(&second, &prefix, Some(PASSPHRASE)).unwrap_err();
    assert!(matches!(err.downcast_ref::<KeyError>(), Some(KeyError::AlreadyExists { .. })), "{err:#}");
    assert!(err.to_string().contains("refusing to overwrite"), "{err:#}");
    assert_eq!(fs::read(dir.path().join("k.key")).unwrap(), key_before);
    assert_eq!(fs::read(dir.path().join("k.pub")).unwrap(), pub_before);

    // A lone .pub also blocks, and no .key appears beside it.
    fs::write(dir.path().join("lone.pub"), "x").unwrap();
    let err = signing::write_key_pair(&second, &dir.path().join("lone"), None).unwrap_err();
    assert!(err.to_string().contains("lone.pub"), "{err:#}");
    assert!(!dir.path().join("lone.key").exists());

    // Nothing but the two key files, no leftover temporary files.
    let mut names: Vec<_> =
        fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["k.key", "k.pub", "lone.pub"]);

    // The secret key is readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir.path().join("k.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "k.key has mode {mode:o}");
}

#[test]
fn empty_passphrase_and_missing_public_key_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let kp = signing::generate().unwrap();
    let err = signing::write_key_pair(&kp, &dir.path().join("k"), Some("")).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err:#}");
    assert!(!dir.path().join("k.key").exists());

    let missing = dir.path().join("nope.pub");
    let err = signing::read_public_key(missing.to_str().unwrap()).unwrap_err();
    assert!(err.to_string().contains("neither"), "{err:#}");
}

/// Files to list: small, empty, one spanning several read buffers, one in a subdirectory.
fn sums_fixture(dir: &Path) -> Vec<(String, PathBuf)> {
    fs::create_dir(dir.join("sub")).unwrap();
    let big: Vec<u8> = (0..5_000_003u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let files: [(&str, &[u8]); 4] = [
        ("disk.raw", &big),
        ("SHA256SUMS.minisig", b"not really"),
        ("empty", b""),
        ("sub/manifest.json", b"{\"a\":1}\n"),
    ];
    files
        .iter()
        .map(|(name, bytes)| {
            fs::write(dir.join(name), bytes).unwrap();
            (name.to_string(), dir.join(name))
        })
        .collect()
}

#[test]
fn sha256sums_match_sha256sum_and_pass_its_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let files = sums_fixture(d);
    let text = signing::sha256sums(&files).unwrap();
    fs::write(d.join("SHA256SUMS"), &text).unwrap();

    // Byte for byte what sha256sum prints for the same names in sorted order.
    let mut names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    let args: Vec<&OsStr> = names.iter().map(os).collect();
    assert_eq!(run_ok(d, "sha256sum", &args, None), text);

    let out = run_ok(d, "sha256sum", &[os("-c"), os("--strict"), os("SHA256SUMS")], None);
    assert_eq!(out.lines().filter(|l| l.ends_with(": OK")).count(), 4, "{out}");
    assert_eq!(signing::check_sha256sums(d, &text).unwrap(), names.iter().map(|n| n.to_string()).collect::<Vec<_>>());
}

#[test]
fn check_sha256sums_names_a_flipped_byte_and_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let files = sums_fixture(d);
    let text = signing::sha256sums(&files).unwrap();
    fs::write(d.join("SHA256SUMS"), &text).unwrap();

    // One byte deep inside the big file.
    let mut big = fs::read(d.join("disk.raw")).unwrap();
    big[3_333_333] ^= 0x01;
    fs::write(d.join("disk.raw"), &big).unwrap();
    let err = signing::check_sha256sums(d, &text).unwrap_err();
    let failures = err.downcast_ref::<ChecksumFailures>().unwrap();
    assert_eq!(failures.failures.len(), 1, "{err:#}");
    assert_eq!(failures.failures[0].name, "disk.raw");
    assert!(matches!(failures.failures[0].problem, ChecksumProblem::Mismatch { .. }));
    assert!(format!("{err:#}").contains("disk.raw: checksum mismatch"));
    // sha256sum agrees.
    let stderr = run_fails(d, "sha256sum", &[os("-c"), os("SHA256SUMS")]);
    assert!(stderr.contains("did NOT match"), "{stderr}");

    // And a missing file is named alongside it.
    fs::remove_file(d.join("sub/manifest.json")).unwrap();
    let err = signing::check_sha256sums(d, &text).unwrap_err();
    let shown = format!("{err:#}");
    assert!(shown.contains("disk.raw: checksum mismatch"), "{shown}");
    assert!(shown.contains("sub/manifest.json: missing"), "{shown}");
    assert!(shown.contains("2 of 4"), "{shown}");
}
