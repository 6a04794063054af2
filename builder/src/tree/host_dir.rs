//! Filling a tree from a directory on the build host (overlays, an ESP staged by hand).
//!
//! What a checkout can carry reproducibly is taken; what it cannot is normalized: owners become
//! `root:root` (or the given owner), permission bits become `0755` for directories and
//! executables and `0644` for other files (a checkout's modes depend on the umask), and xattrs
//! and timestamps of the host are ignored in favour of the build's clock. Symlinks, hard links
//! (same inode seen twice), fifos and device nodes are kept.

use super::{Content, InputError, Meta, NodeKind, Problem, Timestamp, Tree, path};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

/// How host metadata maps into the tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostDirOptions {
    pub uid: u32,
    pub gid: u32,
}

/// Applies the directory `dir` (its contents, at the tree root) to `tree` as a new layer.
pub fn apply_dir(tree: &mut Tree, dir: &Path, opts: HostDirOptions) -> Result<u64> {
    apply_dir_at(tree, dir, b"", opts)
}

/// Applies the directory `dir` with its contents placed under `at` (e.g. unit folders under
/// `usr/lib/systemd/system`).
pub fn apply_dir_at(tree: &mut Tree, dir: &Path, at: &[u8], opts: HostDirOptions) -> Result<u64> {
    let input = dir.display().to_string();
    let meta = fs::symlink_metadata(dir).with_context(|| format!("reading directory {input}"))?;
    if !meta.is_dir() {
        anyhow::bail!("{input} is not a directory");
    }
    tree.begin_layer();
    let mut inodes: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut count = 0u64;
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let host = dir.join(std::ffi::OsStr::from_bytes(&rel));
        let mut names: Vec<_> = fs::read_dir(&host)
            .with_context(|| format!("listing {}", host.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("listing {}", host.display()))?;
        names.sort();
        for name in names.into_iter().rev() {
            let mut child = rel.clone();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(name.as_bytes());
            let host_path = host.join(&name);
            let mut at_path = at.to_vec();
            if !at_path.is_empty() {
                at_path.push(b'/');
            }
            at_path.extend_from_slice(&child);
            let fail = |problem| InputError { input: input.clone(), entry: Some(path::display(&child)), problem };
            let md = fs::symlink_metadata(&host_path).with_context(|| format!("reading {}", host_path.display()))?;
            let ft = md.file_type();
            count += 1;
            if !ft.is_dir() && md.nlink() > 1 {
                if let Some(first) = inodes.get(&(md.dev(), md.ino())) {
                    tree.link(&at_path, first).map_err(fail)?;
                    continue;
                }
                inodes.insert((md.dev(), md.ino()), at_path.clone());
            }
            let executable = md.mode() & 0o111 != 0;
            let mode = if ft.is_dir() || (ft.is_file() && executable) { 0o755 } else { 0o644 };
            let meta =
                Meta { mode, uid: opts.uid, gid: opts.gid, mtime: Timestamp::default(), xattrs: BTreeMap::new() };
            let kind = if ft.is_dir() {
                stack.push(child.clone());
                NodeKind::Directory { entries: BTreeMap::new() }
            } else if ft.is_file() {
                NodeKind::File { size: md.len(), content: Content::Host(Arc::from(host_path.as_path())) }
            } else if ft.is_symlink() {
                let target =
                    fs::read_link(&host_path).with_context(|| format!("reading link {}", host_path.display()))?;
                NodeKind::Symlink { target: target.as_os_str().as_bytes().to_vec() }
            } else if ft.is_fifo() {
                NodeKind::Fifo
            } else if ft.is_char_device() || ft.is_block_device() {
                let rdev = md.rdev();
                let (major, minor) = (libc_major(rdev), libc_minor(rdev));
                if ft.is_char_device() {
                    NodeKind::CharDevice { major, minor }
                } else {
                    NodeKind::BlockDevice { major, minor }
                }
            } else {
                return Err(fail(Problem::UnsupportedType { kind: "socket".into() }).into());
            };
            let meta = if matches!(kind, NodeKind::Symlink { .. }) { Meta { mode: 0o777, ..meta } } else { meta };
            tree.insert(&at_path, meta, kind).map_err(fail)?;
        }
    }
    Ok(count)
}

/// glibc's `gnu_dev_major` encoding of `st_rdev`.
fn libc_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

fn libc_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn reads_files_links_and_normalizes_modes() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc/sub")).unwrap();
        fs::write(d.path().join("etc/a"), b"hello").unwrap();
        fs::write(d.path().join("run.sh"), b"#!/bin/sh").unwrap();
        fs::set_permissions(d.path().join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::hard_link(d.path().join("etc/a"), d.path().join("etc/b")).unwrap();
        symlink("../etc/a", d.path().join("etc/sub/l")).unwrap();
        let mut t = Tree::new();
        apply_dir(&mut t, d.path(), HostDirOptions::default()).unwrap();
        let a = t.lookup("etc/a").unwrap();
        assert_eq!(t.lookup("etc/b"), Some(a));
        assert_eq!(t.node(a).meta.mode, 0o644);
        assert_eq!(t.node(t.lookup("run.sh").unwrap()).meta.mode, 0o755);
        assert_eq!(t.node(t.lookup("etc/sub/l").unwrap()).kind, NodeKind::Symlink { target: b"../etc/a".to_vec() });
        let mut buf = [0u8; 5];
        let NodeKind::File { size, content } = &t.node(a).kind else { panic!("not a file") };
        t.content_reader().read_at(content, *size, 0, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn device_number_decoding_matches_glibc() {
        // makedev(8, 1) and makedev(259, 70000) as glibc encodes them.
        assert_eq!((libc_major(0x801), libc_minor(0x801)), (8, 1));
        let dev: u64 = ((259u64 & 0xfff) << 8) | (70000u64 & 0xff) | ((70000u64 & !0xff) << 12);
        assert_eq!((libc_major(dev), libc_minor(dev)), (259, 70000));
    }
}
