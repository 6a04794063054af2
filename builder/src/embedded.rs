//! The repository's `overlay/` and `systemd/` folders, compiled into the binary (see build.rs).

use crate::tree::{Content, Meta, NodeKind, Problem, Tree};
use anyhow::Result;

#[derive(Debug)]
pub enum EmbeddedKind {
    File { bytes: &'static [u8], executable: bool },
    Symlink(&'static str),
}

#[derive(Debug)]
pub struct EmbeddedFile {
    pub path: &'static str,
    pub kind: EmbeddedKind,
}

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// Adds `files` under `prefix` (e.g. `""` for the overlay, `usr/lib/systemd/system` for units)
/// as a new layer, owned by root.
pub fn apply(tree: &mut Tree, files: &[EmbeddedFile], prefix: &str) -> Result<()> {
    tree.begin_layer();
    for f in files {
        let path = if prefix.is_empty() { f.path.to_string() } else { format!("{prefix}/{}", f.path) };
        let (meta, kind) = match &f.kind {
            EmbeddedKind::File { bytes, executable } => (
                Meta::root(if *executable { 0o755 } else { 0o644 }),
                NodeKind::File { size: bytes.len() as u64, content: Content::Bytes((*bytes).into()) },
            ),
            EmbeddedKind::Symlink(target) => {
                (Meta::root(0o777), NodeKind::Symlink { target: target.as_bytes().to_vec() })
            }
        };
        tree.insert(path.as_bytes(), meta, kind).map_err(|p: Problem| anyhow::anyhow!("embedded file {path}: {p}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_files_are_embedded() {
        assert!(OVERLAY.iter().any(
            |f| f.path == "usr/lib/airlock/banner" && matches!(f.kind, EmbeddedKind::File { executable: true, .. })
        ));
        assert!(SYSTEMD.iter().any(|f| f.path == "airlock-ready.target"));
        let mut t = Tree::new();
        apply(&mut t, SYSTEMD, "usr/lib/systemd/system").unwrap();
        assert!(t.lookup("usr/lib/systemd/system/airlock-banner.service").is_some());
    }
}
