//! The filesystem tree model: an in-memory description of a filesystem to be written.
//!
//! A [`Tree`] is an arena of [`Node`]s. Directories map names (raw bytes, kept sorted) to node
//! ids; a hard link is simply a second directory entry naming the same node, so link counts fall
//! out of a walk. Metadata (mode, owner, mtime, xattrs, device numbers) is carried as data, never
//! applied to the host, so building a root-owned filesystem needs no privileges.
//!
//! File contents are not held in memory: a file node holds a [`Content`] saying where its bytes
//! are (a host file, a range of an uncompressed tar, a spooled copy, or a small generated blob).
//!
//! Trees are filled by [`tar_input`] and [`host_dir`], one *layer* at a time; later layers
//! override earlier ones, and OCI whiteouts remove what lower layers put there.

pub mod content;
mod generated;
pub mod host_dir;
pub mod path;
pub mod tar_input;

pub use content::{Archive, Content, ContentReader};

use std::collections::BTreeMap;
use std::fmt;

/// Index of a node in its [`Tree`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(u32);

impl NodeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A file name: raw bytes, never empty, never `.` or `..`, without `/` or NUL.
pub type Name = Vec<u8>;

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn from_secs(secs: i64) -> Self {
        Self { secs, nanos: 0 }
    }
}

/// Inode metadata shared by every kind of node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`0o7777`); the file type lives in
    /// [`NodeKind`].
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    /// Extended attributes by full name (`security.capability`, `user.foo`, ...).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Meta {
    /// Root-owned with the given permission bits, at the epoch.
    pub fn root(mode: u32) -> Self {
        Self { mode: mode & 0o7777, uid: 0, gid: 0, mtime: Timestamp::default(), xattrs: BTreeMap::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    Directory { entries: BTreeMap<Name, NodeId> },
    File { size: u64, content: Content },
    Symlink { target: Vec<u8> },
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
    Socket,
}

impl NodeKind {
    pub fn is_dir(&self) -> bool {
        matches!(self, NodeKind::Directory { .. })
    }

    /// The `S_IF*` bits of this kind of node.
    pub fn type_bits(&self) -> u32 {
        match self {
            NodeKind::Directory { .. } => 0o040000,
            NodeKind::File { .. } => 0o100000,
            NodeKind::Symlink { .. } => 0o120000,
            NodeKind::CharDevice { .. } => 0o020000,
            NodeKind::BlockDevice { .. } => 0o060000,
            NodeKind::Fifo => 0o010000,
            NodeKind::Socket => 0o140000,
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            NodeKind::Directory { .. } => "directory",
            NodeKind::File { .. } => "regular file",
            NodeKind::Symlink { .. } => "symlink",
            NodeKind::CharDevice { .. } => "character device",
            NodeKind::BlockDevice { .. } => "block device",
            NodeKind::Fifo => "fifo",
            NodeKind::Socket => "socket",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub meta: Meta,
    pub kind: NodeKind,
    /// The layer that last created or re-declared this node (for OCI whiteout semantics).
    layer: u32,
    /// Its mtime is content and is written as it is, not replaced by the build's clock (the
    /// files of a container image, whose layer digest covers their times).
    own_mtime: bool,
    /// A directory made only because something below it was added (no input declared it): its
    /// metadata is airlock's default, not anyone's content.
    implicit: bool,
}

impl Node {
    /// Whether writers keep this node's mtime rather than stamping the build's (see
    /// [`Tree::graft`]).
    pub fn keeps_own_mtime(&self) -> bool {
        self.own_mtime
    }

    /// Whether this is a directory no input declared (see [`Tree::insert`]).
    pub fn is_implicit(&self) -> bool {
        self.implicit
    }

    /// `S_IF*` type bits together with the permission bits, as in `st_mode`.
    pub fn st_mode(&self) -> u32 {
        self.kind.type_bits() | (self.meta.mode & 0o7777)
    }
}

/// What went wrong with one entry of an input; wrapped in [`InputError`] with the input's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("path has a `..` component")]
    DotDot,
    #[error("path is absolute")]
    Absolute,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("parent `{parent}` is a {kind}, not a directory (refusing to write through it)")]
    ParentNotDirectory { parent: String, kind: &'static str },
    #[error("hard link target `{target}` does not exist")]
    HardLinkTargetMissing { target: String },
    #[error("hard link target `{target}` is a directory")]
    HardLinkToDirectory { target: String },
    #[error("entry appears more than once in this input")]
    Duplicate,
    #[error("the root directory cannot be replaced by a {kind}")]
    RootNotDirectory { kind: &'static str },
    #[error("archive is truncated: {detail}")]
    Truncated { detail: String },
    #[error("unsupported entry type {kind}")]
    UnsupportedType { kind: String },
    #[error("malformed entry: {detail}")]
    Malformed { detail: String },
    #[error("input too large: {detail}")]
    TooLarge { detail: String },
    #[error("path is {len} bytes long; a path in an image is at most {MAX_PATH} bytes (PATH_MAX)")]
    PathTooLong { len: usize },
}

/// Copies the entries of directory `from_dir` of `from` (recursively) into directory `to_dir`
/// of `to`; a node with several names inside keeps being one node.
fn copy_subtree(from: &Tree, from_dir: NodeId, to: &mut Tree, to_dir: NodeId) {
    let mut copied: BTreeMap<NodeId, NodeId> = BTreeMap::new();
    let mut stack = vec![(from_dir, to_dir)];
    while let Some((src, dst)) = stack.pop() {
        let NodeKind::Directory { entries } = &from.node(src).kind else { continue };
        for (name, &child) in entries {
            let new_id = match copied.get(&child) {
                Some(&existing) => existing,
                None => {
                    let node = from.node(child);
                    let kind = match &node.kind {
                        NodeKind::Directory { .. } => NodeKind::Directory { entries: BTreeMap::new() },
                        other => other.clone(),
                    };
                    let id = to.push(node.meta.clone(), kind);
                    copied.insert(child, id);
                    if node.kind.is_dir() {
                        stack.push((child, id));
                    }
                    id
                }
            };
            to.dir_entries_mut(dst).insert(name.clone(), new_id);
        }
    }
}

/// The longest path a tree holds, in bytes: Linux's `PATH_MAX` less its NUL. A longer one could
/// not be opened by its path on the appliance, and the limit bounds what a deep tree costs (at
/// most 2,048 levels).
pub const MAX_PATH: usize = 4095;

/// An input (a tar archive, a host directory) had a bad entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// The input's name as the user gave it (a path).
    pub input: String,
    /// The entry's path as written in the input; `None` for a problem of the whole input.
    pub entry: Option<String>,
    pub problem: Problem,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.entry {
            Some(entry) => write!(f, "{}: entry `{entry}`: {}", self.input, self.problem),
            None => write!(f, "{}: {}", self.input, self.problem),
        }
    }
}

impl std::error::Error for InputError {}

/// The in-memory filesystem tree.
#[derive(Debug)]
pub struct Tree {
    nodes: Vec<Node>,
    layer: u32,
}

const ROOT: NodeId = NodeId(0);

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// An empty tree whose root directory is `0755 root:root`.
    pub fn new() -> Self {
        Self {
            nodes: vec![Node {
                meta: Meta::root(0o755),
                kind: NodeKind::Directory { entries: BTreeMap::new() },
                layer: 0,
                own_mtime: false,
                implicit: false,
            }],
            layer: 0,
        }
    }

    pub fn root(&self) -> NodeId {
        ROOT
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.index()]
    }

    /// Entries of a directory node (empty for anything else), sorted by name bytes.
    pub fn entries(&self, id: NodeId) -> impl Iterator<Item = (&[u8], NodeId)> {
        let map = match &self.node(id).kind {
            NodeKind::Directory { entries } => Some(entries),
            _ => None,
        };
        map.into_iter().flat_map(|m| m.iter().map(|(k, v)| (k.as_slice(), *v)))
    }

    /// Starts a new layer: what it adds overrides what earlier layers added.
    pub fn begin_layer(&mut self) -> u32 {
        self.layer += 1;
        self.layer
    }

    /// A reader for the file contents of this tree.
    pub fn content_reader(&self) -> ContentReader {
        ContentReader::new()
    }

    /// Looks up a path (components separated by `/`, no symlinks followed).
    pub fn lookup(&self, path: &str) -> Option<NodeId> {
        self.lookup_bytes(path.as_bytes())
    }

    pub fn lookup_bytes(&self, path: &[u8]) -> Option<NodeId> {
        let mut cur = ROOT;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".") {
            match &self.node(cur).kind {
                NodeKind::Directory { entries } => cur = *entries.get(comp)?,
                _ => return None,
            }
        }
        Some(cur)
    }

    /// Depth-first walk in sorted order: `(path, node)` for every directory entry below the
    /// root (not the root itself). Paths have no leading `/`. A hard-linked node appears once per
    /// link.
    pub fn walk(&self) -> Vec<(Vec<u8>, NodeId)> {
        let mut out = Vec::new();
        // Each frame: the directory's path and its remaining entries, reversed so `pop` yields
        // the smallest name first. Iterative, so a hostile input nested a million deep cannot
        // overflow the stack.
        let frame = |prefix: &[u8], dir: NodeId| -> (Vec<u8>, Vec<(Vec<u8>, NodeId)>) {
            let mut kids: Vec<(Vec<u8>, NodeId)> = self.entries(dir).map(|(n, id)| (n.to_vec(), id)).collect();
            kids.reverse();
            (prefix.to_vec(), kids)
        };
        let mut stack = vec![frame(b"", ROOT)];
        while let Some((prefix, kids)) = stack.last_mut() {
            let Some((name, id)) = kids.pop() else {
                stack.pop();
                continue;
            };
            let mut p = prefix.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&name);
            out.push((p.clone(), id));
            if self.node(id).kind.is_dir() {
                stack.push(frame(&p, id));
            }
        }
        out
    }

    /// Number of directory entries naming each node, indexed by [`NodeId::index`] (unreachable
    /// nodes count 0). Directories count their entry in the parent only; writers add `.` and
    /// `..` as their format requires.
    pub fn entry_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.nodes.len()];
        counts[ROOT.index()] = 1;
        let mut stack = vec![ROOT];
        while let Some(dir) = stack.pop() {
            for (_, id) in self.entries(dir) {
                counts[id.index()] += 1;
                if self.node(id).kind.is_dir() {
                    stack.push(id);
                }
            }
        }
        counts
    }

    fn push(&mut self, meta: Meta, kind: NodeKind) -> NodeId {
        let id = NodeId(u32::try_from(self.nodes.len()).expect("more than 2^32 nodes"));
        self.nodes.push(Node { meta, kind, layer: self.layer, own_mtime: false, implicit: false });
        id
    }

    /// Finds (creating missing directories as `0755 root:root`) the directory that will hold
    /// `components.last()`, refusing to pass through anything that is not a directory.
    fn parent_dir(&mut self, components: &[&[u8]]) -> Result<NodeId, Problem> {
        let mut cur = ROOT;
        for (i, comp) in components[..components.len().saturating_sub(1)].iter().enumerate() {
            let next = match &self.node(cur).kind {
                NodeKind::Directory { entries } => entries.get(*comp).copied(),
                _ => unreachable!("cur is always a directory"),
            };
            cur = match next {
                Some(id) if self.node(id).kind.is_dir() => id,
                Some(id) => {
                    return Err(Problem::ParentNotDirectory {
                        parent: path::display(&components[..=i].join(&b'/')),
                        kind: self.node(id).kind.describe(),
                    });
                }
                None => {
                    let id = self.push(Meta::root(0o755), NodeKind::Directory { entries: BTreeMap::new() });
                    self.node_mut(id).implicit = true;
                    self.dir_entries_mut(cur).insert(comp.to_vec(), id);
                    id
                }
            };
        }
        Ok(cur)
    }

    fn dir_entries_mut(&mut self, id: NodeId) -> &mut BTreeMap<Name, NodeId> {
        match &mut self.node_mut(id).kind {
            NodeKind::Directory { entries } => entries,
            _ => unreachable!("dir_entries_mut on a non-directory"),
        }
    }

    /// Puts a node at `path` (already normalized by [`path::normalize`]). An existing directory
    /// re-declared as a directory keeps its entries and takes the new metadata; anything else at
    /// that path is replaced (with its subtree). Missing parent directories are made
    /// `0755 root:root` and marked implicit until an input declares them.
    pub fn insert(&mut self, path: &[u8], meta: Meta, kind: NodeKind) -> Result<NodeId, Problem> {
        if path.len() > MAX_PATH {
            return Err(Problem::PathTooLong { len: path.len() });
        }
        let components = path::components(path);
        if components.is_empty() {
            if !kind.is_dir() {
                return Err(Problem::RootNotDirectory { kind: kind.describe() });
            }
            let layer = self.layer;
            let root = self.node_mut(ROOT);
            root.meta = meta;
            root.layer = layer;
            root.implicit = false;
            return Ok(ROOT);
        }
        let parent = self.parent_dir(&components)?;
        let name = components[components.len() - 1];
        let existing = match &self.node(parent).kind {
            NodeKind::Directory { entries } => entries.get(name).copied(),
            _ => None,
        };
        if let Some(id) = existing
            && kind.is_dir()
            && self.node(id).kind.is_dir()
        {
            let layer = self.layer;
            let node = self.node_mut(id);
            node.meta = meta;
            node.layer = layer;
            node.implicit = false;
            return Ok(id);
        }
        let id = self.push(meta, kind);
        self.dir_entries_mut(parent).insert(name.to_vec(), id);
        Ok(id)
    }

    /// Adds `path` as another name of the existing non-directory at `target`.
    pub fn link(&mut self, path: &[u8], target: &[u8]) -> Result<NodeId, Problem> {
        let target_id = self
            .lookup_bytes(target)
            .ok_or_else(|| Problem::HardLinkTargetMissing { target: path::display(target) })?;
        if self.node(target_id).kind.is_dir() {
            return Err(Problem::HardLinkToDirectory { target: path::display(target) });
        }
        if path.len() > MAX_PATH {
            return Err(Problem::PathTooLong { len: path.len() });
        }
        let components = path::components(path);
        if components.is_empty() {
            return Err(Problem::RootNotDirectory { kind: "hard link" });
        }
        let parent = self.parent_dir(&components)?;
        let name = components[components.len() - 1].to_vec();
        self.dir_entries_mut(parent).insert(name, target_id);
        Ok(target_id)
    }

    /// Removes the entry at `path` if it exists (its subtree goes with it).
    pub fn remove(&mut self, path: &[u8]) -> Result<Option<NodeId>, Problem> {
        let components = path::components(path);
        if components.is_empty() {
            return Ok(None);
        }
        let Some(parent) = self.lookup_bytes(&components[..components.len() - 1].join(&b'/')) else {
            return Ok(None);
        };
        if !self.node(parent).kind.is_dir() {
            return Ok(None);
        }
        Ok(self.dir_entries_mut(parent).remove(components[components.len() - 1]))
    }

    /// Moves everything under the directory `path` into a tree of its own (whose root takes the
    /// directory's metadata) and leaves the directory empty: what the build puts on another
    /// partition mounted there (`/var` on the data partition). Hard links inside the directory
    /// stay links; a name outside it for a file inside keeps its own copy of the node.
    pub fn split_off(&mut self, path: &str) -> anyhow::Result<Tree> {
        let dir = match self.lookup(path) {
            Some(id) if self.node(id).kind.is_dir() => id,
            _ => anyhow::bail!("/{path} is not a directory in the root filesystem"),
        };
        let mut out = Tree::new();
        out.node_mut(ROOT).meta = self.node(dir).meta.clone();
        copy_subtree(self, dir, &mut out, ROOT);
        self.dir_entries_mut(dir).clear();
        Ok(out)
    }

    /// Puts `other` (its root directory and everything in it) at `path`, which must not exist.
    pub fn graft(&mut self, path: &str, other: &Tree) -> anyhow::Result<()> {
        if self.lookup(path).is_some() {
            anyhow::bail!("/{path} already exists");
        }
        let dir = self
            .insert(path.as_bytes(), other.node(ROOT).meta.clone(), NodeKind::Directory { entries: BTreeMap::new() })
            .map_err(|p| anyhow::anyhow!("/{path}: {p}"))?;
        copy_subtree(other, ROOT, self, dir);
        Ok(())
    }

    /// OCI whiteout `.wh.<name>`: removes `name` from `dir` if a lower layer put it there.
    pub(crate) fn whiteout(&mut self, dir: &[u8], name: &[u8]) -> Result<(), Problem> {
        let dir_components = path::components(dir);
        let parent = if dir_components.is_empty() { ROOT } else { self.parent_dir_for_children(dir)? };
        let existing = match &self.node(parent).kind {
            NodeKind::Directory { entries } => entries.get(name).copied(),
            _ => None,
        };
        if let Some(id) = existing
            && self.node(id).layer < self.layer
        {
            self.dir_entries_mut(parent).remove(name);
        }
        Ok(())
    }

    /// OCI opaque whiteout `.wh..wh..opq`: hides everything lower layers put in `dir`, keeping
    /// what the current layer added (whichever order the entries came in).
    pub(crate) fn make_opaque(&mut self, dir: &[u8]) -> Result<(), Problem> {
        let id = self.parent_dir_for_children(dir)?;
        self.prune_lower_layers(id);
        Ok(())
    }

    fn prune_lower_layers(&mut self, dir: NodeId) {
        let layer = self.layer;
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            let children: Vec<(Name, NodeId)> = self.entries(dir).map(|(k, v)| (k.to_vec(), v)).collect();
            for (name, id) in children {
                if self.node(id).layer < layer {
                    self.dir_entries_mut(dir).remove(&name);
                } else if self.node(id).kind.is_dir() {
                    stack.push(id);
                }
            }
        }
    }

    /// Sets `attribute` to `y` on the directory at `dir` (created if missing): overlayfs's mark
    /// of an opaque directory, for a layer kept in overlay form.
    pub(crate) fn mark_opaque(&mut self, dir: &[u8], attribute: &[u8]) -> Result<(), Problem> {
        let id = if path::components(dir).is_empty() { ROOT } else { self.parent_dir_for_children(dir)? };
        self.node_mut(id).meta.xattrs.insert(attribute.to_vec(), b"y".to_vec());
        Ok(())
    }

    /// Moves `sub` into this tree at `at`, which must not exist yet (unlike [`Tree::graft`], no
    /// copy): its root directory's metadata and everything below it, hard links kept (a node named twice in `sub` is one
    /// node here too). Missing parents of `at` are made as by [`Tree::insert`]. With
    /// `own_mtimes`, the grafted nodes keep their mtimes when written (they are content), except
    /// directories `sub` made implicitly, which get the build's time like any other.
    pub fn graft_moved(&mut self, at: &[u8], sub: Tree, own_mtimes: bool) -> Result<NodeId, Problem> {
        if path::components(at).is_empty() || self.lookup_bytes(at).is_some() {
            return Err(Problem::Duplicate);
        }
        let mut sub = sub;
        let mut moved: Vec<Option<NodeId>> = vec![None; sub.nodes.len()];
        let top = self.insert(at, sub.node(ROOT).meta.clone(), NodeKind::Directory { entries: BTreeMap::new() })?;
        let root_implicit = sub.node(ROOT).implicit;
        let top_node = self.node_mut(top);
        top_node.own_mtime = own_mtimes && !root_implicit;
        top_node.implicit = root_implicit;
        moved[ROOT.index()] = Some(top);
        // Each node is moved the first time a directory entry names it; later names link.
        let mut pending = vec![ROOT];
        while let Some(dir) = pending.pop() {
            let entries: Vec<(Name, NodeId)> = sub.entries(dir).map(|(n, id)| (n.to_vec(), id)).collect();
            let new_dir = moved[dir.index()].expect("a directory is moved before its entries");
            for (name, old) in entries {
                let new = match moved[old.index()] {
                    Some(id) => id,
                    None => {
                        let node = &mut sub.nodes[old.index()];
                        let kind = match &mut node.kind {
                            NodeKind::Directory { .. } => {
                                pending.push(old);
                                NodeKind::Directory { entries: BTreeMap::new() }
                            }
                            other => std::mem::replace(other, NodeKind::Fifo),
                        };
                        let implicit = node.implicit;
                        let id = self.push(std::mem::replace(&mut node.meta, Meta::root(0)), kind);
                        let new_node = self.node_mut(id);
                        new_node.own_mtime = own_mtimes && !implicit;
                        new_node.implicit = implicit;
                        moved[old.index()] = Some(id);
                        id
                    }
                };
                self.dir_entries_mut(new_dir).insert(name, new);
            }
        }
        Ok(top)
    }

    /// The directory at `dir`, created if missing (a whiteout may be the first entry naming it).
    fn parent_dir_for_children(&mut self, dir: &[u8]) -> Result<NodeId, Problem> {
        if dir.len() > MAX_PATH {
            return Err(Problem::PathTooLong { len: dir.len() });
        }
        let mut components = path::components(dir);
        components.push(b"-");
        self.parent_dir(&components)
    }
}

/// Applies a host directory or a tar archive (plain, gzip, zstd) at `input` as a new layer.
/// Tar spool files go to `spool_dir`; the tree's destination holds `capacity` bytes (which
/// bounds decompression, see [`crate::expansion`]). Anything else (a FIFO, a device) is refused.
pub fn apply_path(
    tree: &mut Tree,
    input: &std::path::Path,
    spool_dir: &std::path::Path,
    capacity: u64,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let md = std::fs::metadata(input).with_context(|| format!("reading input {}", input.display()))?;
    if md.is_dir() {
        host_dir::apply_dir(tree, input, host_dir::HostDirOptions::default())?;
    } else if md.is_file() {
        let limit = crate::expansion::ExpansionLimit::capacity(capacity);
        tar_input::apply_tar(
            tree,
            input,
            &tar_input::TarOptions { whiteouts: tar_input::Whiteouts::Apply, spool_dir, limit },
        )?;
    } else {
        anyhow::bail!("input {} is neither a directory nor a regular file (a tar archive)", input.display());
    }
    Ok(())
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tree: &mut Tree, path: &str, bytes: &[u8]) -> NodeId {
        tree.insert(
            path.as_bytes(),
            Meta::root(0o644),
            NodeKind::File { size: bytes.len() as u64, content: Content::Bytes(bytes.to_vec().into()) },
        )
        .unwrap()
    }

    #[test]
    fn insert_creates_parents_and_lookup_finds() {
        let mut t = Tree::new();
        let id = file(&mut t, "a/b/c", b"x");
        assert_eq!(t.lookup("a/b/c"), Some(id));
        assert!(t.node(t.lookup("a/b").unwrap()).kind.is_dir());
        assert_eq!(t.lookup("a/x"), None);
    }

    #[test]
    fn writing_through_a_symlink_is_refused() {
        let mut t = Tree::new();
        t.insert(b"etc", Meta::root(0o777), NodeKind::Symlink { target: b"/tmp".to_vec() }).unwrap();
        let err = t.insert(b"etc/passwd", Meta::root(0o644), NodeKind::Fifo).unwrap_err();
        assert_eq!(err, Problem::ParentNotDirectory { parent: "etc".into(), kind: "symlink" });
    }

    #[test]
    fn hard_links_share_a_node_and_count() {
        let mut t = Tree::new();
        let id = file(&mut t, "bin/a", b"x");
        t.link(b"bin/b", b"bin/a").unwrap();
        t.link(b"c", b"bin/a").unwrap();
        assert_eq!(t.lookup("c"), Some(id));
        assert_eq!(t.entry_counts()[id.index()], 3);
        assert_eq!(t.link(b"d", b"nope").unwrap_err(), Problem::HardLinkTargetMissing { target: "nope".into() });
        assert_eq!(t.link(b"d", b"bin").unwrap_err(), Problem::HardLinkToDirectory { target: "bin".into() });
    }

    #[test]
    fn later_layer_overrides_and_whiteouts_remove_lower_only() {
        let mut t = Tree::new();
        t.begin_layer();
        file(&mut t, "d/old", b"1");
        file(&mut t, "d/keep", b"1");
        file(&mut t, "x", b"1");
        t.begin_layer();
        file(&mut t, "d/new", b"2");
        t.make_opaque(b"d").unwrap();
        t.whiteout(b"", b"x").unwrap();
        let names: Vec<_> = t.entries(t.lookup("d").unwrap()).map(|(n, _)| n.to_vec()).collect();
        assert_eq!(names, vec![b"new".to_vec()]);
        assert_eq!(t.lookup("x"), None);
    }

    #[test]
    fn directory_redeclared_keeps_children_file_replaces_subtree() {
        let mut t = Tree::new();
        file(&mut t, "d/f", b"1");
        t.insert(b"d", Meta::root(0o700), NodeKind::Directory { entries: BTreeMap::new() }).unwrap();
        assert!(t.lookup("d/f").is_some());
        assert_eq!(t.node(t.lookup("d").unwrap()).meta.mode, 0o700);
        file(&mut t, "d", b"now a file");
        assert!(t.lookup("d/f").is_none());
    }

    #[test]
    fn paths_longer_than_path_max_are_refused() {
        let mut t = Tree::new();
        let deep = vec!["d"; 2048].join("/");
        assert_eq!(deep.len(), MAX_PATH);
        file(&mut t, &deep, b"");
        let deeper = format!("{deep}/x");
        let err = t.insert(deeper.as_bytes(), Meta::root(0o644), NodeKind::Fifo).unwrap_err();
        assert_eq!(err, Problem::PathTooLong { len: MAX_PATH + 2 });
        assert_eq!(t.link(deeper.as_bytes(), deep.as_bytes()).unwrap_err(), Problem::PathTooLong { len: MAX_PATH + 2 });
    }

    #[test]
    fn walk_is_depth_first_and_sorted() {
        let mut t = Tree::new();
        for p in ["b/z", "a", "b/a/x", "a.txt", "b-c"] {
            file(&mut t, p, b"");
        }
        let paths: Vec<String> = t.walk().into_iter().map(|(p, _)| String::from_utf8(p).unwrap()).collect();
        assert_eq!(paths, ["a", "a.txt", "b", "b/a", "b/a/x", "b/z", "b-c"]);
    }
}
