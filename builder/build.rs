//! Embeds the repository's `overlay/` and `systemd/` folders into the binary, so an installed
//! `airlock` carries the appliance's base files and builds the same image from any directory.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn collect(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("reading a directory entry").file_name())
        .collect();
    entries.sort();
    for name in entries {
        let rel_child = rel.join(&name);
        let md = std::fs::symlink_metadata(root.join(&rel_child)).expect("reading metadata");
        if md.is_dir() {
            collect(root, &rel_child, out);
        } else {
            out.push((rel_child, md));
        }
    }
}

fn embed(name: &str, root: &Path, code: &mut String) {
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    if root.is_dir() {
        collect(root, Path::new(""), &mut files);
    }
    writeln!(code, "pub static {name}: &[EmbeddedFile] = &[").expect("writing to a String cannot fail");
    for (rel, md) in files {
        let path = rel.to_str().expect("embedded paths are UTF-8");
        let full = root.join(&rel);
        if md.file_type().is_symlink() {
            let target = std::fs::read_link(&full).expect("reading a symlink");
            writeln!(
                code,
                "    EmbeddedFile {{ path: {path:?}, kind: EmbeddedKind::Symlink({:?}) }},",
                target.to_str().expect("UTF-8 target")
            )
            .expect("writing to a String cannot fail");
        } else {
            let executable = md.permissions().mode() & 0o111 != 0;
            writeln!(
                code,
                "    EmbeddedFile {{ path: {path:?}, kind: EmbeddedKind::File {{ bytes: include_bytes!({:?}), executable: {executable} }} }},",
                full.canonicalize().expect("canonical path").to_str().expect("UTF-8 path")
            )
            .expect("writing to a String cannot fail");
        }
    }
    writeln!(code, "];").expect("writing to a String cannot fail");
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let repo = manifest.parent().expect("builder/ lives in the repository root");
    let mut code = String::new();
    embed("OVERLAY", &repo.join("overlay"), &mut code);
    embed("SYSTEMD", &repo.join("systemd"), &mut code);
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("embedded.rs");
    std::fs::write(out, code).expect("writing embedded.rs");
}
