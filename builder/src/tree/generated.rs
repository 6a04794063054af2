//! Files airlock writes into a tree itself (configuration, indexes, units), and reading a small
//! text file back out of one: the helpers every build stage shares, so no stage keeps a private
//! copy. Everything put here is root-owned; errors name the path.

use super::{Content, Meta, NodeId, NodeKind, Tree};
use anyhow::{Context, Result, anyhow};
use std::collections::BTreeMap;

impl Tree {
    /// Puts a generated regular file with `mode` (root-owned, mtime at the epoch) at `path`,
    /// replacing whatever was there.
    pub fn put_file(&mut self, path: &str, mode: u32, bytes: impl Into<Vec<u8>>) -> Result<NodeId> {
        self.put_file_with(path, Meta::root(mode), bytes)
    }

    /// Like [`Tree::put_file`], with the caller's metadata (an mtime, an owner).
    pub fn put_file_with(&mut self, path: &str, meta: Meta, bytes: impl Into<Vec<u8>>) -> Result<NodeId> {
        let bytes: Vec<u8> = bytes.into();
        self.insert(
            path.as_bytes(),
            meta,
            NodeKind::File { size: bytes.len() as u64, content: Content::Bytes(bytes.into()) },
        )
        .map_err(|p| anyhow!("writing /{path}: {p}"))
    }

    /// Puts an empty directory with `mode` at `path` (an existing one keeps its entries).
    pub fn put_dir(&mut self, path: &str, mode: u32) -> Result<NodeId> {
        self.insert(path.as_bytes(), Meta::root(mode), NodeKind::Directory { entries: BTreeMap::new() })
            .map_err(|p| anyhow!("creating /{path}: {p}"))
    }

    /// Puts a symlink to `target` at `path`.
    pub fn put_symlink(&mut self, path: &str, target: &str) -> Result<NodeId> {
        self.insert(path.as_bytes(), Meta::root(0o777), NodeKind::Symlink { target: target.as_bytes().to_vec() })
            .map_err(|p| anyhow!("writing /{path}: {p}"))
    }

    /// The text of the regular file at `path`, following symlinks inside the tree (units in
    /// `/usr/lib` are sometimes relative aliases of one another); `None` when there is no such
    /// file or the link points back at itself.
    pub fn read_text(&self, path: &str) -> Result<Option<String>> {
        let shown = path.trim_start_matches('/').to_string();
        match self.read_bytes(path)? {
            Some(bytes) => String::from_utf8(bytes).map(Some).with_context(|| format!("/{shown} is not UTF-8")),
            None => Ok(None),
        }
    }

    /// The bytes of the regular file at `path`, following symlinks as [`Tree::read_text`] does.
    pub fn read_bytes(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let mut path = path.trim_start_matches('/').to_string();
        // A chain longer than the kernel's own limit is a loop.
        for _ in 0..40 {
            let Some(id) = self.lookup(&path) else { return Ok(None) };
            match &self.node(id).kind {
                NodeKind::File { size, content } => {
                    let mut buf = vec![0u8; usize::try_from(*size).with_context(|| format!("/{path} is too large"))?];
                    self.content_reader().read_at(content, *size, 0, &mut buf)?;
                    return Ok(Some(buf));
                }
                NodeKind::Symlink { target } => {
                    let target = String::from_utf8_lossy(target).into_owned();
                    let joined = match target.strip_prefix('/') {
                        Some(abs) => abs.to_string(),
                        None => format!("{}/{target}", path.rsplit_once('/').map_or("", |(d, _)| d)),
                    };
                    // `..` stops at the tree's root, as it does at `/`.
                    let mut parts: Vec<&str> = Vec::new();
                    for c in joined.split('/') {
                        match c {
                            "" | "." => {}
                            ".." => {
                                parts.pop();
                            }
                            c => parts.push(c),
                        }
                    }
                    let resolved = parts.join("/");
                    if resolved == path {
                        return Ok(None);
                    }
                    path = resolved;
                }
                other => return Err(anyhow!("/{path} is a {}, not a regular file", other.describe())),
            }
        }
        Err(anyhow!("/{path}: too many levels of symbolic links"))
    }

    /// Like [`Tree::read_bytes`], but a missing file is an error naming it.
    pub fn read_required_bytes(&self, path: &str) -> Result<Vec<u8>> {
        self.read_bytes(path)?.with_context(|| format!("the root filesystem has no /{}", path.trim_start_matches('/')))
    }

    /// Like [`Tree::read_text`], but a missing file is an error naming it.
    pub fn read_required_text(&self, path: &str) -> Result<String> {
        self.read_text(path)?.with_context(|| format!("the root filesystem has no /{}", path.trim_start_matches('/')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_read_back_through_links() {
        let mut t = Tree::new();
        t.put_file("etc/a.conf", 0o644, "a\n").unwrap();
        t.put_dir("usr/lib/x", 0o755).unwrap();
        t.put_symlink("usr/lib/x/b.conf", "../../../etc/a.conf").unwrap();
        t.put_symlink("etc/self", "self").unwrap();
        t.put_symlink("etc/abs", "/etc/a.conf").unwrap();
        assert_eq!(t.read_text("etc/a.conf").unwrap().as_deref(), Some("a\n"));
        assert_eq!(t.read_text("/etc/abs").unwrap().as_deref(), Some("a\n"));
        assert_eq!(t.read_text("etc/self").unwrap(), None);
        assert_eq!(t.read_text("etc/none").unwrap(), None);
        let e = t.read_required_text("etc/none").unwrap_err().to_string();
        assert_eq!(e, "the root filesystem has no /etc/none");
        assert!(t.read_text("usr/lib/x").unwrap_err().to_string().contains("is a directory"));
        let node = t.node(t.lookup("etc/a.conf").unwrap());
        assert_eq!((node.meta.mode, node.meta.uid), (0o644, 0));
        // Writing through a file is refused, naming the path.
        let e = t.put_file("etc/a.conf/x", 0o644, "").unwrap_err().to_string();
        assert!(e.starts_with("writing /etc/a.conf/x: "), "{e}");
    }
}
