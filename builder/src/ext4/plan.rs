//! Numbering the tree's inodes and working out what each one needs, before anything is
//! written. Every check that can fail on the tree's content happens here, with the path in the
//! message, so a bad tree fails before the first byte is written.

use super::dir::{self, Entry, Layout};
use super::layout::{BLOCK, FIRST_INO};
use super::xattr;
use crate::tree::{NodeId, NodeKind, Tree, path};
use anyhow::{Context, Result, bail};

pub(crate) const BAD_BLOCKS_INO: u32 = 1;
pub(crate) const ROOT_INO: u32 = 2;
pub(crate) const JOURNAL_INO: u32 = 8;
pub(crate) const LOST_FOUND_INO: u32 = FIRST_INO;
const LOST_FOUND: &[u8] = b"lost+found";
/// mke2fs gives lost+found 16 KiB so e2fsck can reconnect files without allocating.
pub(crate) const LOST_FOUND_BLOCKS: u64 = 4;
/// ext4's limit on a file's hard links (directories switch to `dir_nlink` counting instead).
pub(crate) const LINK_MAX: u32 = 65_000;
/// A symlink target lives in one block, NUL-terminated by readers: at most 4095 bytes.
const SYMLINK_MAX: usize = 4095;
/// Device numbers as the kernel's `dev_t`: 12-bit major, 20-bit minor.
const MAJOR_MAX: u32 = 0xfff;
const MINOR_MAX: u32 = 0xf_ffff;

/// What an inode stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Tree(NodeId),
    /// `lost+found` when the tree has none.
    LostFound,
}

/// Space one inode needs besides its extent tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Needs {
    /// Data blocks if nothing is a hole: file contents, directory blocks, a symlink block.
    pub(crate) data_blocks: u64,
    pub(crate) xattr_block: bool,
    /// The parent directory's inode, for directories.
    pub(crate) parent: u32,
}

/// The tree with inode numbers assigned.
#[derive(Debug)]
pub(crate) struct Plan<'t> {
    pub(crate) tree: &'t Tree,
    hash_seed: [u32; 4],
    /// Inode number of each node by [`NodeId::index`] (0: unreachable).
    ino_of: Vec<u32>,
    /// Tree nodes numbered from `FIRST_INO + 1` on, in walk order.
    numbered: Vec<NodeId>,
    /// The tree's own `lost+found` directory, if it has one.
    tree_lost_found: Option<NodeId>,
    /// Directory entries naming each node (see [`Tree::entry_counts`]).
    entry_counts: Vec<u32>,
    /// By inode number.
    needs: Vec<Needs>,
}

impl<'t> Plan<'t> {
    pub(crate) fn new(tree: &'t Tree, hash_seed: [u32; 4]) -> Result<Self> {
        let entry_counts = tree.entry_counts();
        let mut plan = Self {
            tree,
            hash_seed,
            ino_of: vec![0; entry_counts.len()],
            numbered: Vec::new(),
            tree_lost_found: None,
            entry_counts,
            needs: vec![Needs::default(); FIRST_INO as usize + 1],
        };
        let root = tree.root();
        plan.ino_of[root.index()] = ROOT_INO;
        if let Some(id) = tree.lookup_bytes(LOST_FOUND) {
            if !tree.node(id).kind.is_dir() {
                bail!(
                    "`lost+found` at the root is a {}; ext4 needs it to be a directory",
                    tree.node(id).kind.describe()
                );
            }
            plan.tree_lost_found = Some(id);
        }
        plan.number()?;
        plan.needs[ROOT_INO as usize] = plan.node_needs(root, ROOT_INO, b"/")?;
        plan.needs[LOST_FOUND_INO as usize] = match plan.tree_lost_found {
            Some(id) => plan.node_needs(id, ROOT_INO, LOST_FOUND)?,
            None => Needs { data_blocks: LOST_FOUND_BLOCKS, xattr_block: false, parent: ROOT_INO },
        };
        Ok(plan)
    }

    /// Numbers nodes depth-first in the tree's sorted order, each at its first name, checking
    /// names and nodes on the way.
    fn number(&mut self) -> Result<()> {
        struct Frame<'t> {
            name: &'t [u8],
            ino: u32,
            entries: Vec<(&'t [u8], NodeId)>,
            next: usize,
        }
        let tree = self.tree;
        let frame = |name, ino, dir| Frame { name, ino, entries: tree.entries(dir).collect(), next: 0 };
        let mut stack = vec![frame(&b""[..], ROOT_INO, tree.root())];
        while let Some(top) = stack.last_mut() {
            let Some(&(name, id)) = top.entries.get(top.next) else {
                stack.pop();
                continue;
            };
            top.next += 1;
            let parent = top.ino;
            let path_of = |stack: &[Frame<'_>]| {
                let mut p: Vec<u8> = Vec::new();
                for f in stack.iter().skip(1) {
                    p.extend_from_slice(f.name);
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                path::display(&p)
            };
            if name.len() > 255 {
                bail!("`{}`: the name is {} bytes; ext4 allows at most 255", path_of(&stack), name.len());
            }
            if self.ino_of[id.index()] != 0 {
                continue; // a further hard link to a node numbered already
            }
            let ino = if Some(id) == self.tree_lost_found {
                LOST_FOUND_INO
            } else {
                let ino = u32::try_from(self.numbered.len())
                    .ok()
                    .and_then(|n| n.checked_add(FIRST_INO + 1))
                    .context("the tree has more than 2^32 inodes")?;
                self.numbered.push(id);
                ino
            };
            self.ino_of[id.index()] = ino;
            if ino != LOST_FOUND_INO {
                let shown = path_of(&stack);
                let needs = self.node_needs(id, parent, shown.as_bytes())?;
                self.needs.push(needs);
            }
            if tree.node(id).kind.is_dir() {
                stack.push(frame(name, ino, id));
            }
        }
        Ok(())
    }

    /// Checks one node and works out its space; `shown` is its path for messages.
    fn node_needs(&self, id: NodeId, parent: u32, shown: &[u8]) -> Result<Needs> {
        let shown = path::display(shown);
        let node = self.tree.node(id);
        let xattr_block = xattr::place(&node.meta.xattrs).with_context(|| format!("`{shown}`"))?.needs_block();
        let links = self.entry_counts[id.index()];
        let data_blocks = match &node.kind {
            NodeKind::Directory { .. } => {
                let entries = self.dir_entries(id);
                self.dir_layout(id, &entries).with_context(|| format!("directory `{shown}`"))?.blocks()
            }
            NodeKind::File { size, .. } => {
                let blocks = size.div_ceil(BLOCK);
                // File block numbers are 32-bit, and 2^32 - 1 itself is reserved.
                if blocks > u64::from(u32::MAX) {
                    bail!("`{shown}` is {size} bytes; ext4 files with 4 KiB blocks stop at 16 TiB");
                }
                blocks
            }
            NodeKind::Symlink { target } => {
                if target.is_empty() || target.len() > SYMLINK_MAX || target.contains(&0) {
                    bail!(
                        "symlink `{shown}`: the target must be 1 to {SYMLINK_MAX} bytes without \
                         NUL, not {} bytes",
                        target.len()
                    );
                }
                u64::from(!is_fast_symlink(target))
            }
            NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } => {
                if *major > MAJOR_MAX || *minor > MINOR_MAX {
                    bail!(
                        "device `{shown}` is {major}:{minor}; Linux device numbers stop at \
                         {MAJOR_MAX}:{MINOR_MAX}"
                    );
                }
                0
            }
            NodeKind::Fifo | NodeKind::Socket => 0,
        };
        if !node.kind.is_dir() && links > LINK_MAX {
            bail!("`{shown}` has {links} hard links; ext4 allows at most {LINK_MAX}");
        }
        Ok(Needs { data_blocks, xattr_block, parent })
    }

    pub(crate) fn hash_seed(&self) -> &[u32; 4] {
        &self.hash_seed
    }

    /// The last inode number in use (inodes 1 to this are all allocated).
    pub(crate) fn last_ino(&self) -> u32 {
        FIRST_INO + self.numbered.len() as u32
    }

    /// Every inode with content, in increasing order: root, lost+found, then the tree's.
    pub(crate) fn inodes(&self) -> impl Iterator<Item = (u32, Source)> + '_ {
        let lost_found = match self.tree_lost_found {
            Some(id) => Source::Tree(id),
            None => Source::LostFound,
        };
        [(ROOT_INO, Source::Tree(self.tree.root())), (LOST_FOUND_INO, lost_found)]
            .into_iter()
            .chain(self.numbered.iter().enumerate().map(|(i, &id)| (FIRST_INO + 1 + i as u32, Source::Tree(id))))
    }

    pub(crate) fn needs(&self, ino: u32) -> Needs {
        self.needs[ino as usize]
    }

    /// Link count: names for files; `.`, the parent's entry and each subdirectory's `..` for
    /// directories, or 1 when that is over [`LINK_MAX`] (`dir_nlink`: "too many to count").
    pub(crate) fn links(&self, source: Source) -> u16 {
        let count = match source {
            Source::LostFound => 2,
            Source::Tree(id) if self.tree.node(id).kind.is_dir() => {
                let subdirs = self.dir_entries(id).iter().filter(|e| e.file_type == dir::FT_DIR).count();
                2 + subdirs as u32
            }
            Source::Tree(id) => self.entry_counts[id.index()],
        };
        if count > LINK_MAX { 1 } else { count as u16 }
    }

    /// A directory's entries in the tree's order, with `lost+found` added to the root when the
    /// tree has none.
    pub(crate) fn dir_entries(&self, dir: NodeId) -> Vec<Entry<'t>> {
        let tree = self.tree;
        let mut entries: Vec<Entry<'t>> = tree
            .entries(dir)
            .map(|(name, id)| Entry { name, ino: self.ino_of[id.index()], file_type: file_type(&tree.node(id).kind) })
            .collect();
        if dir == tree.root() && self.tree_lost_found.is_none() {
            let at = entries.partition_point(|e| e.name < LOST_FOUND);
            entries.insert(at, Entry { name: LOST_FOUND, ino: LOST_FOUND_INO, file_type: dir::FT_DIR });
        }
        entries
    }

    pub(crate) fn dir_layout(&self, dir: NodeId, entries: &[Entry<'_>]) -> Result<Layout> {
        let min_blocks = if Some(dir) == self.tree_lost_found { LOST_FOUND_BLOCKS } else { 1 };
        Layout::new(entries, min_blocks, &self.hash_seed)
    }

    /// The path of a node, for messages about failures after planning (a full walk: only on
    /// the error path).
    pub(crate) fn path_of(&self, id: NodeId) -> String {
        self.tree
            .walk()
            .into_iter()
            .find(|(_, n)| *n == id)
            .map(|(p, _)| path::display(&p))
            .unwrap_or_else(|| "/".to_owned())
    }
}

/// Targets shorter than `i_block` (60 bytes) are stored in it.
pub(crate) fn is_fast_symlink(target: &[u8]) -> bool {
    target.len() < 60
}

/// The directory entry type of a node.
pub(crate) fn file_type(kind: &NodeKind) -> u8 {
    match kind {
        NodeKind::File { .. } => 1,
        NodeKind::Directory { .. } => dir::FT_DIR,
        NodeKind::CharDevice { .. } => 3,
        NodeKind::BlockDevice { .. } => 4,
        NodeKind::Fifo => 5,
        NodeKind::Socket => 6,
        NodeKind::Symlink { .. } => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Content, Meta};
    use std::collections::BTreeMap;

    fn file(tree: &mut Tree, path: &str) {
        let kind = NodeKind::File { size: 1, content: Content::Bytes(b"x".to_vec().into()) };
        tree.insert(path.as_bytes(), Meta::root(0o644), kind).unwrap();
    }

    #[test]
    fn numbering_is_depth_first_in_name_order_and_links_share() {
        let mut tree = Tree::new();
        file(&mut tree, "b/x");
        file(&mut tree, "a");
        tree.link(b"c", b"a").unwrap();
        tree.insert(b"b/sub", Meta::root(0o755), NodeKind::Directory { entries: BTreeMap::new() }).unwrap();
        let plan = Plan::new(&tree, [0; 4]).unwrap();
        let root: Vec<(&[u8], u32)> = plan.dir_entries(tree.root()).iter().map(|e| (e.name, e.ino)).collect();
        let expected: [(&[u8], u32); 4] = [(b"a", 12), (b"b", 13), (b"c", 12), (b"lost+found", LOST_FOUND_INO)];
        assert_eq!(root, expected);
        let b = tree.lookup("b").unwrap();
        let inner: Vec<u32> = plan.dir_entries(b).iter().map(|e| e.ino).collect();
        assert_eq!(inner, [14, 15]);
        assert_eq!(plan.last_ino(), 15);
        assert_eq!(plan.links(Source::Tree(tree.lookup("a").unwrap())), 2);
        assert_eq!(plan.links(Source::Tree(b)), 3);
        // / holds b and lost+found.
        assert_eq!(plan.links(Source::Tree(tree.root())), 4);
        assert_eq!(plan.needs(14).parent, 13);
    }

    #[test]
    fn bad_nodes_are_refused_with_their_path() {
        let mut tree = Tree::new();
        let target = NodeKind::Symlink { target: vec![b'x'; 4096] };
        tree.insert(b"d/link", Meta::root(0o777), target).unwrap();
        let err = format!("{:#}", Plan::new(&tree, [0; 4]).unwrap_err());
        assert!(err.contains("`d/link`") && err.contains("4095"), "{err}");

        let mut tree = Tree::new();
        let dev = NodeKind::CharDevice { major: 4096, minor: 0 };
        tree.insert(b"dev/x", Meta::root(0o600), dev).unwrap();
        let err = format!("{:#}", Plan::new(&tree, [0; 4]).unwrap_err());
        assert!(err.contains("`dev/x`"), "{err}");

        let mut tree = Tree::new();
        let mut meta = Meta::root(0o644);
        meta.xattrs.insert(b"com.apple.quarantine".to_vec(), b"x".to_vec());
        tree.insert(b"f", meta, NodeKind::Fifo).unwrap();
        let err = format!("{:#}", Plan::new(&tree, [0; 4]).unwrap_err());
        assert!(err.contains("`f`") && err.contains("com.apple.quarantine"), "{err}");
    }
}
