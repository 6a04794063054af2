//! What each directory of the volume contains: the tree's directories with their entries named
//! for FAT, checked against what FAT can store.

use super::dir_entry::ENTRY_SIZE;
use super::names::{self, FatName};
use crate::tree::{Content, NodeId, NodeKind, Tree, path};
use anyhow::{Result, bail};

/// FAT directories are limited to 65,536 entries of 32 bytes (2 MiB): entry offsets must fit
/// 16 bits in drivers that follow the specification.
pub(super) const MAX_DIRECTORY_SLOTS: usize = 65_536;

/// Every directory of the volume, the root first, then breadth-first in sorted name order.
#[derive(Debug)]
pub(super) struct Listing<'t> {
    pub dirs: Vec<Directory<'t>>,
    /// Regular-file entries (a hard-linked file counts once per name).
    pub files: u64,
}

#[derive(Debug)]
pub(super) struct Directory<'t> {
    /// Name in its parent (empty for the root). Only the name is kept, not the path: paths of
    /// a deep tree would cost memory growing with the square of its depth. Messages rebuild the
    /// path from the parents ([`Listing::path`]).
    pub name: &'t [u8],
    pub node: NodeId,
    /// Index of the parent in [`Listing::dirs`]; `None` for the root.
    pub parent: Option<usize>,
    /// In the tree's sorted order.
    pub entries: Vec<Entry<'t>>,
    /// 32-byte directory entries needed: names, long names, `.`/`..` or the volume label.
    pub slots: usize,
}

#[derive(Debug)]
pub(super) struct Entry<'t> {
    /// The name in the tree.
    pub raw_name: &'t [u8],
    pub name: FatName,
    pub node: NodeId,
    pub kind: EntryKind<'t>,
}

#[derive(Debug)]
pub(super) enum EntryKind<'t> {
    File {
        size: u32,
        content: &'t Content,
    },
    /// Index of the subdirectory in [`Listing::dirs`].
    Directory(usize),
}

impl<'t> Listing<'t> {
    /// Lists `tree`, refusing what FAT cannot store. `with_label` reserves the root's volume
    /// label entry.
    pub fn from_tree(tree: &'t Tree, with_label: bool) -> Result<Self> {
        let mut dirs = vec![Directory { name: b"", node: tree.root(), parent: None, entries: Vec::new(), slots: 0 }];
        let mut files = 0;
        // `dirs` doubles as the breadth-first queue: a directory is listed when the loop
        // reaches it, and its subdirectories are appended behind.
        let mut index = 0;
        while index < dirs.len() {
            // Built for this directory's messages and dropped after it.
            let dir_path = path_in(&dirs, index);
            let children: Vec<(&[u8], NodeId)> = tree.entries(dirs[index].node).collect();
            let raw_names: Vec<&[u8]> = children.iter().map(|(name, _)| *name).collect();
            let fat_names = names::name_directory(&dir_path, &raw_names)?;
            let mut entries = Vec::with_capacity(children.len());
            for ((raw, id), name) in children.into_iter().zip(fat_names) {
                let child_path = || join(&dir_path, raw);
                let kind = match &tree.node(id).kind {
                    NodeKind::File { size, content } => {
                        let Ok(size) = u32::try_from(*size) else {
                            bail!(
                                "`{}` is {size} bytes; a FAT32 file holds at most {} bytes \
                                 (4 GiB - 1)",
                                path::display(&child_path()),
                                u32::MAX
                            );
                        };
                        files += 1;
                        EntryKind::File { size, content }
                    }
                    NodeKind::Directory { .. } => {
                        dirs.push(Directory {
                            name: raw,
                            node: id,
                            parent: Some(index),
                            entries: Vec::new(),
                            slots: 0,
                        });
                        EntryKind::Directory(dirs.len() - 1)
                    }
                    other => bail!(
                        "`{}` is a {}, which FAT cannot store (it holds only regular files and \
                         directories)",
                        path::display(&child_path()),
                        other.describe()
                    ),
                };
                entries.push(Entry { raw_name: raw, name, node: id, kind });
            }
            // The root has no `.` and `..`, only the label; every other directory starts with both.
            let fixed = if index == 0 { usize::from(with_label) } else { 2 };
            let slots = fixed + entries.iter().map(|e| e.name.slots()).sum::<usize>();
            if slots > MAX_DIRECTORY_SLOTS {
                bail!(
                    "directory `/{}` needs {slots} directory entries of {ENTRY_SIZE} bytes (long \
                     names take several); FAT allows at most {MAX_DIRECTORY_SLOTS} per directory",
                    path::display(&dir_path)
                );
            }
            let dir = &mut dirs[index];
            dir.entries = entries;
            dir.slots = slots;
            index += 1;
        }
        Ok(Self { dirs, files })
    }
}

impl Listing<'_> {
    /// Path of directory `index` (empty for the root), for messages.
    pub fn path(&self, index: usize) -> String {
        path::display(&path_in(&self.dirs, index))
    }

    /// Path of one of directory `index`'s entries, for messages.
    pub fn entry_path(&self, index: usize, entry: &Entry<'_>) -> String {
        path::display(&join(&path_in(&self.dirs, index), entry.raw_name))
    }
}

/// The path of `dirs[index]`, from its parents' names.
fn path_in(dirs: &[Directory<'_>], index: usize) -> Vec<u8> {
    let mut names = Vec::new();
    let mut at = Some(index);
    while let Some(i) = at {
        if !dirs[i].name.is_empty() {
            names.push(dirs[i].name);
        }
        at = dirs[i].parent;
    }
    names.reverse();
    names.join(&b'/')
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = dir.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Meta;
    use std::collections::BTreeMap;

    fn file(tree: &mut Tree, path: &str, bytes: &[u8]) {
        tree.insert(
            path.as_bytes(),
            Meta::root(0o644),
            NodeKind::File { size: bytes.len() as u64, content: Content::Bytes(bytes.to_vec().into()) },
        )
        .unwrap();
    }

    #[test]
    fn breadth_first_with_parents_and_slots() {
        let mut t = Tree::new();
        file(&mut t, "EFI/BOOT/BOOTX64.EFI", b"x");
        file(&mut t, "loader/loader.conf", b"timeout 0\n");
        t.insert(b"empty", Meta::root(0o755), NodeKind::Directory { entries: BTreeMap::new() }).unwrap();
        t.link(b"loader/again.conf", b"loader/loader.conf").unwrap();
        let listing = Listing::from_tree(&t, true).unwrap();
        let paths: Vec<String> = (0..listing.dirs.len()).map(|i| listing.path(i)).collect();
        assert_eq!(paths, ["", "EFI", "empty", "loader", "EFI/BOOT"]);
        let parents: Vec<Option<usize>> = listing.dirs.iter().map(|d| d.parent).collect();
        assert_eq!(parents, [None, Some(0), Some(0), Some(0), Some(1)]);
        // Root: label + EFI + empty (long name) + loader (long name).
        assert_eq!(listing.dirs[0].slots, 1 + 1 + 2 + 2);
        assert_eq!(listing.dirs[2].slots, 2);
        assert_eq!(listing.dirs[4].slots, 3);
        assert_eq!(listing.files, 3);
    }

    #[test]
    fn special_files_are_refused_by_path() {
        for kind in [
            NodeKind::Symlink { target: b"/x".to_vec() },
            NodeKind::Fifo,
            NodeKind::Socket,
            NodeKind::CharDevice { major: 1, minor: 3 },
            NodeKind::BlockDevice { major: 8, minor: 0 },
        ] {
            let describe = kind.describe();
            let mut t = Tree::new();
            t.insert(b"EFI/odd", Meta::root(0o644), kind).unwrap();
            let err = Listing::from_tree(&t, true).unwrap_err().to_string();
            assert!(err.contains("`EFI/odd`"), "{err}");
            assert!(err.contains(describe), "{err}");
        }
    }

    #[test]
    fn bad_names_and_collisions_are_refused_by_path() {
        let mut t = Tree::new();
        file(&mut t, "a/b/Readme", b"");
        file(&mut t, "a/b/README", b"");
        let err = Listing::from_tree(&t, true).unwrap_err().to_string();
        assert!(err.starts_with("`a/b/Readme`: "), "{err}");
        let mut t = Tree::new();
        file(&mut t, "a/what?", b"");
        let err = Listing::from_tree(&t, true).unwrap_err().to_string();
        assert!(err.starts_with("`a/what?`: "), "{err}");
    }

    #[test]
    fn oversized_files_and_directories_are_refused() {
        let mut t = Tree::new();
        t.insert(
            b"huge.img",
            Meta::root(0o644),
            NodeKind::File { size: 1 << 32, content: Content::Bytes(Vec::new().into()) },
        )
        .unwrap();
        let err = Listing::from_tree(&t, true).unwrap_err().to_string();
        assert!(err.contains("`huge.img` is 4294967296 bytes"), "{err}");

        let mut t = Tree::new();
        for i in 0..(MAX_DIRECTORY_SLOTS / 2) {
            file(&mut t, &format!("many/f{i}"), b"");
        }
        let err = Listing::from_tree(&t, true).unwrap_err().to_string();
        assert!(err.contains("directory `/many` needs 65538"), "{err}");
    }
}
