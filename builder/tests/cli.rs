//! What a person (or a CI system) sees from the command line: exit codes, which stream carries
//! what, progress on a pipe, `--quiet`, `--json`, and the shell completions and man pages
//! generated from the CLI definition, judged by bash and man.
#![allow(clippy::unwrap_used, reason = "a test stops at the first unexpected error")]

mod support;

use std::fs;
use std::path::Path;
use support::*;

/// `airlock disk` of a small two-partition image into `dir` with extra flags; returns the output.
fn small_disk(dir: &Path, flags: &[&str]) -> std::process::Output {
    fs::create_dir_all(dir.join("esp/EFI/BOOT")).unwrap();
    fs::write(dir.join("esp/EFI/BOOT/BOOTX64.EFI"), pseudo_random(100_000, 1)).unwrap();
    fs::create_dir_all(dir.join("root/etc")).unwrap();
    fs::write(dir.join("root/etc/hostname"), "x\n").unwrap();
    let out = dir.join("small.raw");
    let _ = fs::remove_file(&out);
    let mut args: Vec<&str> = flags.to_vec();
    let (esp, root) = (dir.join("esp"), dir.join("root"));
    args.extend([
        "disk",
        "--size",
        "64MiB",
        "--seed",
        "cli",
        "--esp",
        esp.to_str().unwrap(),
        "--esp-size",
        "34MiB",
        "--root",
        root.to_str().unwrap(),
        "--format",
        "raw",
        out.to_str().unwrap(),
    ]);
    airlock(&args)
}

#[test]
fn exit_codes_and_streams() {
    let usage = airlock(&["--no-such-flag"]);
    assert_eq!(usage.status.code(), Some(2), "a usage error exits 2");
    assert!(usage.stdout.is_empty() && !usage.stderr.is_empty());
    let failure = airlock(&["inspect", "/nonexistent/image.raw"]);
    assert_eq!(failure.status.code(), Some(1), "a failure exits 1");
    assert!(failure.stdout.is_empty(), "errors go to stderr only");
    assert!(String::from_utf8_lossy(&failure.stderr).starts_with("error: opening /nonexistent/image.raw"));
    let version = airlock(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("airlock "));
    let help = airlock_ok(&["--help"]);
    assert!(help.contains("Exit status: 0 success, 1 failure, 2 usage error"), "{help}");
}

/// On a pipe: one plain line per stage on stderr, no control characters; the result on stdout.
/// `--quiet`: the result alone. `--json`: every stdout line a JSON event.
#[test]
fn progress_on_a_pipe_quiet_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let plain = small_disk(dir.path(), &[]);
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    let stderr = String::from_utf8_lossy(&plain.stderr);
    let stdout = String::from_utf8_lossy(&plain.stdout);
    assert!(stderr.lines().any(|l| l.starts_with("done assemble disk: ") && l.contains("at")), "{stderr}");
    assert_eq!(stderr.matches("assemble disk").count(), 1, "one line per stage: {stderr}");
    assert!(stderr.lines().all(|l| l.starts_with("done ")), "nothing but stage lines: {stderr}");
    assert!(!stderr.contains(['\u{1b}', '\r']), "no control characters on a pipe: {stderr:?}");
    assert!(stdout.starts_with(&format!("{} (64MiB)", dir.path().join("small.raw").display())), "{stdout}");

    let quiet = small_disk(dir.path(), &["--quiet"]);
    assert!(quiet.status.success());
    assert!(quiet.stderr.is_empty(), "{}", String::from_utf8_lossy(&quiet.stderr));
    assert_eq!(String::from_utf8_lossy(&quiet.stdout), stdout, "--quiet prints the same result");

    let json = small_disk(dir.path(), &["--json"]);
    assert!(json.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("`{l}` is not JSON: {e}")))
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"stage_started"), "{kinds:?}");
    let finished = events.iter().find(|e| e["event"] == "stage_finished").unwrap();
    assert_eq!(finished["stage"], "assemble disk");
    assert_eq!(finished["ok"], true);
    assert_eq!(finished["unit"], "bytes");
    assert!(finished["duration_s"].as_f64().unwrap() >= 0.0);
    assert!(finished["done"].as_u64().unwrap() > 100_000, "the files' bytes were counted: {finished}");
    let results: Vec<&str> =
        events.iter().filter(|e| e["event"] == "result").map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(results.join("\n") + "\n", stdout);
}

/// Completions and man pages come from the clap definition: bash parses the script, and man
/// renders every page.
#[test]
fn completions_and_man_pages() {
    let dir = tempfile::tempdir().unwrap();
    let script = airlock_ok(&["completions", "bash"]);
    assert!(script.contains("_airlock()") && script.contains("inspect"), "{script}");
    let path = dir.path().join("airlock.bash");
    fs::write(&path, &script).unwrap();
    tool_ok("bash", &["-n", path.to_str().unwrap()]);
    assert!(airlock_ok(&["completions", "zsh"]).starts_with("#compdef airlock"));
    assert!(airlock_ok(&["completions", "fish"]).contains("complete -c airlock"));

    let listed = airlock_ok(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(listed.lines().count(), 11, "{listed}");
    for page in listed.lines() {
        let out =
            std::process::Command::new("man").args(["--warnings", "-l", page]).env("MANWIDTH", "100").output().unwrap();
        assert!(out.status.success(), "man {page}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stderr.is_empty(), "man warns about {page}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("SYNOPSIS"), "{page}");
    }
    let main = fs::read_to_string(dir.path().join("airlock.1")).unwrap();
    assert!(main.contains("Exit status: 0 success, 1 failure, 2 usage error"), "{main}");
    let inspect = fs::read_to_string(dir.path().join("airlock-inspect.1")).unwrap();
    assert!(inspect.contains("\\-\\-pubkey") && inspect.contains("\\-\\-list"), "{inspect}");
}
