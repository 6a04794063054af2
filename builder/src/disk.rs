//! `airlock disk`: the low-level assembler. Partitions are laid out on 1 MiB boundaries, each
//! filesystem is written straight into its byte range of one sparse file, the GPT goes on last,
//! and the file takes its final name only when all of it is written and synced.

use crate::clock::BuildClock;
use crate::ext4::{self, Ext4Options};
use crate::fat::{self, FatOptions};
use crate::gpt::{self, ALIGN, GptLayout, PartitionEntry};
use crate::output_file::PartialFile;
use crate::partition::{Filesystem, ImageId, Role, Slot};
use crate::region::Region;
use crate::seed::Seed;
use crate::size::ByteSize;
use crate::tree::Tree;
use crate::verity::RootHash;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// One partition to be: its role (which fixes everything [`crate::partition::TABLE`] says about it),
/// its size (`None`: take what the others leave) and the tree its filesystem is made from.
#[derive(Debug)]
pub struct PartitionRequest {
    pub role: Role,
    pub size: Option<u64>,
    pub tree: Tree,
}

/// A validated disk: the partition table and what goes into each partition.
#[derive(Debug)]
pub struct DiskPlan {
    pub layout: GptLayout,
    /// Each partition's role and tree, in the order of `layout.partitions`.
    pub contents: Vec<(Role, Tree)>,
    pub seed: Seed,
    pub clock: BuildClock,
}

/// The largest disk airlock builds (16 TiB): every size in a spec or on the command line is
/// checked against it before any arithmetic.
pub const MAX_DISK: u64 = 16 << 40;

/// Lays partitions out in the table's order from 1 MiB, each on a 1 MiB boundary; at most one
/// partition has no size and takes the rest.
pub fn plan(disk_size: u64, seed: Seed, clock: BuildClock, mut requests: Vec<PartitionRequest>) -> Result<DiskPlan> {
    let sizes: Vec<(Role, Option<u64>)> = requests.iter().map(|r| (r.role, r.size)).collect();
    let layout = lay_out(disk_size, &seed, None, &sizes)?;
    requests.sort_by_key(|r| r.role.position());
    let contents = requests.into_iter().map(|r| (r.role, r.tree)).collect();
    Ok(DiskPlan { layout: layout.gpt, contents, seed, clock })
}

/// A disk's partition table and the role of each of its partitions, in disk order.
#[derive(Debug, Clone)]
pub struct Layout {
    pub gpt: GptLayout,
    pub roles: Vec<Role>,
}

/// One partition's requested size (`None`: the rest, or for a hash tree, what its root needs).
#[derive(Debug, Clone, Copy)]
struct SizeRequest {
    role: Role,
    size: Option<u64>,
}

/// The layout [`plan`] makes, for partitions given by role and size: what the pipeline plans
/// before the contents of every partition exist (the ESP's UKI needs the root hash).
pub fn lay_out(disk_size: u64, seed: &Seed, image: Option<&ImageId>, sizes: &[(Role, Option<u64>)]) -> Result<Layout> {
    let mut requests: Vec<SizeRequest> = sizes.iter().map(|&(role, size)| SizeRequest { role, size }).collect();
    if disk_size % gpt::SECTOR != 0 {
        bail!("disk size {} is not a multiple of 512 bytes", ByteSize(disk_size));
    }
    // Every size is checked against the largest disk before any arithmetic: then no sum or
    // alignment below can wrap into a small number.
    if disk_size > MAX_DISK {
        bail!(
            "disk size {} is larger than the largest disk airlock builds ({})",
            ByteSize(disk_size),
            ByteSize(MAX_DISK)
        );
    }
    if let Some(r) = requests.iter().find(|r| r.size.is_some_and(|s| s > MAX_DISK)) {
        bail!(
            "the {} partition's size {} is larger than the largest disk airlock builds ({})",
            r.role,
            ByteSize(r.size.unwrap_or_default()),
            ByteSize(MAX_DISK)
        );
    }
    requests.sort_by_key(|r| r.role.position());
    if let Some(twice) = requests.windows(2).find(|w| w[0].role == w[1].role) {
        bail!("the {} partition is requested twice", twice[0].role);
    }
    let start = gpt::first_usable_aligned();
    let end = gpt::align_down(gpt::last_usable_end(disk_size), ALIGN);
    let is_hash_tree = |r: &SizeRequest| matches!(r.role, Role::RootVerity(_));
    if let Some(r) = requests.iter().find(|r| is_hash_tree(r) && r.size.is_some()) {
        bail!("the {} partition is sized by its root's hash tree, not given a size", r.role);
    }
    for r in requests.iter().filter(|r| is_hash_tree(r)) {
        if !requests.iter().any(|o| Some(o.role) == root_of(r.role)) {
            bail!("the {} partition needs its root partition", r.role);
        }
    }
    // Slot B's partitions are sized like slot A's: an update for one slot fits the other.
    let mirrored = |r: &SizeRequest| mirror_of(r.role).is_some();
    if let Some(r) = requests.iter().find(|r| mirrored(r) && r.size.is_some()) {
        bail!("the {} partition is sized like slot A's, not given a size", r.role);
    }
    for r in requests.iter().filter(|r| mirrored(r)) {
        if !requests.iter().any(|o| Some(o.role) == mirror_of(r.role)) {
            bail!("the {} partition needs slot A's", r.role);
        }
    }
    // A root and what takes its size: its mirror in slot B, each one's hash tree.
    let original = |role: Role| mirror_of(role).unwrap_or(role);
    let sized_by = |r: &SizeRequest| original(root_of(r.role).unwrap_or(r.role));
    let fills = requests.iter().filter(|r| r.size.is_none() && !is_hash_tree(r) && !mirrored(r)).count();
    if fills > 1 {
        bail!("only one partition may take the remaining space; give the others a size");
    }
    let size_given = |role: Role| requests.iter().find(|o| o.role == role).and_then(|o| o.size);
    // A hash tree's partition follows its root's size, a mirror its original's: for a root of
    // fixed size they are fixed too; for a root that takes the rest, the rest is shared so all
    // fit (the tree of the whole rest is at least the tree of the root).
    let hash_of = |root: u64| gpt::align_up(crate::verity::hash_region_len(root), ALIGN);
    let fixed: u64 = requests
        .iter()
        .filter_map(|r| {
            let given = size_given(sized_by(r)).map(|s| gpt::align_up(s, ALIGN))?;
            Some(if is_hash_tree(r) { hash_of(given) } else { given })
        })
        .sum();
    let available = end.saturating_sub(start);
    let describe = || {
        requests
            .iter()
            .filter(|r| !is_hash_tree(r) && !mirrored(r))
            .map(|r| match r.size {
                Some(s) => format!("{} {}", r.role, ByteSize(s)),
                None => format!("{} (rest, at least 1MiB)", r.role),
            })
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let filler = requests.iter().find(|r| r.size.is_none() && !is_hash_tree(r) && !mirrored(r)).map(|r| r.role);
    // How many roots of the filler's size there are, and how many hash trees of them.
    let copies =
        |tree: bool| requests.iter().filter(|r| Some(sized_by(r)) == filler && is_hash_tree(r) == tree).count() as u64;
    let (roots, trees) = (copies(false), copies(true));
    let needed = fixed + roots * ALIGN + trees * hash_of(ALIGN);
    if needed > available {
        let slot_b = if requests.iter().any(mirrored) { " (slot B as large as slot A)" } else { "" };
        bail!(
            "partitions do not fit: {}{slot_b} needs {} but a {} disk has {} usable; make the disk at least {}",
            describe(),
            ByteSize(needed),
            ByteSize(disk_size),
            ByteSize(available),
            ByteSize(disk_size + needed - available)
        );
    }
    let rest = available - fixed;
    // The filler and its copies take the most whole MiBs whose trees fit beside them.
    let mut share = gpt::align_down(rest / roots.max(1), ALIGN);
    while share > ALIGN && roots * share + trees * hash_of(share) > rest {
        share -= ALIGN;
    }
    let mut cursor = start;
    let mut partitions: Vec<PartitionEntry> = Vec::new();
    let mut roles = Vec::new();
    let mut sizes: Vec<(Role, u64)> = Vec::new();
    for r in requests {
        let placed = |role: Role| sizes.iter().find(|(o, _)| *o == role).map(|(_, s)| *s);
        let size = match (r.size, root_of(r.role), mirror_of(r.role)) {
            (_, Some(root), _) => hash_of(placed(root).context("a root's hash tree follows its root")?),
            (_, None, Some(original)) => placed(original).context("slot B follows slot A")?,
            (Some(s), None, None) => gpt::align_up(s, ALIGN),
            (None, None, None) => share,
        };
        sizes.push((r.role, size));
        let def = r.role.definition();
        partitions.push(PartitionEntry {
            name: def.gpt_name(image),
            type_guid: def.type_guid,
            guid: def.partition_guid(seed),
            start: cursor,
            size,
        });
        roles.push(r.role);
        cursor += size;
    }
    let gpt = GptLayout { disk_size, disk_guid: disk_guid(seed), partitions };
    gpt.validate()?;
    Ok(Layout { gpt, roles })
}

/// The disk's GUID for a build seed.
pub fn disk_guid(seed: &Seed) -> uuid::Uuid {
    seed.uuid("disk")
}

/// Tells the progress reporter how many bytes the stage about to write `trees` will write:
/// what their files hold, the bulk of it (metadata adds a little).
pub fn measure(trees: &[&Tree]) {
    crate::progress::measure(crate::progress::Unit::Bytes, Some(trees.iter().map(|t| content_bytes(t)).sum()));
}

/// The bytes of the tree's regular files, each hard-linked file once.
fn content_bytes(tree: &Tree) -> u64 {
    let mut seen = std::collections::HashSet::new();
    tree.walk()
        .into_iter()
        .filter(|(_, id)| seen.insert(*id))
        .map(|(_, id)| match &tree.node(id).kind {
            crate::tree::NodeKind::File { size, .. } => *size,
            _ => 0,
        })
        .sum()
}

/// The salt and superblock UUID of `slot`'s hash tree, from the seed (the manifest records
/// the salt the writer used).
pub fn verity_params(seed: &Seed, slot: Slot) -> crate::verity::VerityParams {
    crate::verity::VerityParams::from_seed(seed, &format!("verity:{}", Role::Root(slot).key()))
}

/// The root partition whose hash tree a root-verity partition holds.
/// The slot A partition a slot B partition is sized like.
fn mirror_of(role: Role) -> Option<Role> {
    match role {
        Role::Root(Slot::B) => Some(Role::Root(Slot::A)),
        Role::RootVerity(Slot::B) => Some(Role::RootVerity(Slot::A)),
        _ => None,
    }
}

fn root_of(role: Role) -> Option<Role> {
    match role {
        Role::RootVerity(slot) => Some(Role::Root(slot)),
        _ => None,
    }
}

/// What was written.
#[derive(Debug)]
pub struct DiskReport {
    pub path: PathBuf,
    pub size: u64,
    /// One line per partition: what it holds.
    pub partitions: Vec<String>,
    /// The root hash of each slot written with verity.
    pub root_hashes: Vec<(Slot, RootHash)>,
}

/// Writes the planned disk to `out` (sparse; complete or not there at all): each tree, then
/// each root's hash tree (the roots' partition UUIDs from their root hashes).
pub fn write(plan: &DiskPlan, out: &Path) -> Result<DiskReport> {
    let layout = Layout { gpt: plan.layout.clone(), roles: plan.contents.iter().map(|(r, _)| *r).collect() };
    let mut writer = DiskWriter::create(&layout, &plan.seed, plan.clock, out)?;
    measure(&plan.contents.iter().map(|(_, tree)| tree).collect::<Vec<_>>());
    for (role, tree) in &plan.contents {
        if !matches!(role, Role::RootVerity(_)) {
            writer.write_tree(*role, tree)?;
        }
    }
    for (role, _) in &plan.contents {
        if let Role::RootVerity(slot) = role {
            writer.write_hash_tree(*slot)?;
        }
    }
    writer.finish()
}

/// A disk being written, partition by partition, in whatever order the contents become known
/// (the ESP's UKI needs the root hash, so the root goes first): the GPT goes on last, after
/// every partition was written, and the file takes its final name only then.
#[derive(Debug)]
pub struct DiskWriter<'a> {
    layout: GptLayout,
    roles: Vec<Role>,
    seed: &'a Seed,
    clock: BuildClock,
    partial: PartialFile,
    written: Vec<Role>,
    lines: Vec<(Role, String)>,
    root_hashes: Vec<(Slot, RootHash)>,
}

impl<'a> DiskWriter<'a> {
    /// Creates the image file (sized, sparse) under its partial name.
    pub fn create(layout: &Layout, seed: &'a Seed, clock: BuildClock, out: &Path) -> Result<Self> {
        let partial = PartialFile::create(out)?;
        partial.file().set_len(layout.gpt.disk_size).with_context(|| {
            format!("sizing {} to {}", partial.partial_path().display(), ByteSize(layout.gpt.disk_size))
        })?;
        Ok(Self {
            layout: layout.gpt.clone(),
            roles: layout.roles.clone(),
            seed,
            clock,
            partial,
            written: Vec::new(),
            lines: Vec::new(),
            root_hashes: Vec::new(),
        })
    }

    fn entry(&self, role: Role) -> Result<(usize, PartitionEntry)> {
        let i =
            self.roles.iter().position(|r| *r == role).with_context(|| format!("the disk has no {role} partition"))?;
        Ok((i, self.layout.partitions[i].clone()))
    }

    fn mark_written(&mut self, role: Role, what: String) -> Result<()> {
        if self.written.contains(&role) {
            bail!("the {role} partition was written twice");
        }
        self.written.push(role);
        self.lines.push((role, what));
        Ok(())
    }

    /// Writes `role`'s filesystem from `tree`.
    pub fn write_tree(&mut self, role: Role, tree: &Tree) -> Result<()> {
        let (_, entry) = self.entry(role)?;
        let region = Region::new(self.partial.file(), entry.start, entry.size);
        let what = write_filesystem(role, &entry, tree, &region, self.seed, self.clock)?;
        log::debug!("partition {} ({}): {what}", entry.name, ByteSize(entry.size));
        self.mark_written(role, what)
    }

    /// Leaves `role`'s partition empty: slot B of a new image, named `_empty`, for the first
    /// update to write.
    pub fn leave_empty(&mut self, role: Role) -> Result<()> {
        let (_, entry) = self.entry(role)?;
        if role.definition().name != crate::partition::GptName::Empty {
            bail!("the {role} partition cannot be left empty");
        }
        self.mark_written(role, format!("empty slot ({}), for the next update", entry.name))
    }

    /// Hashes the written root of `slot` into its root-verity partition (`veritysetup format`'s
    /// layout, salt and superblock UUID from the seed) and gives both partitions their UUIDs from
    /// the root hash.
    pub fn write_hash_tree(&mut self, slot: Slot) -> Result<RootHash> {
        let (root, verity) = (Role::Root(slot), Role::RootVerity(slot));
        if !self.written.contains(&root) {
            bail!("the {root} partition must be written before its hash tree");
        }
        let (ri, root_entry) = self.entry(root)?;
        let (vi, verity_entry) = self.entry(verity)?;
        let file = self.partial.file();
        let data = Region::new(file, root_entry.start, root_entry.size);
        let hash = Region::new(file, verity_entry.start, verity_entry.size);
        let params = verity_params(self.seed, slot);
        let started = std::time::Instant::now();
        let root_hash = crate::verity::format(&data, &hash, &params)
            .with_context(|| format!("writing the hash tree of {} into {}", root_entry.name, verity_entry.name))?;
        self.layout.partitions[ri].guid = root_hash.data_partition_uuid();
        self.layout.partitions[vi].guid = root_hash.hash_partition_uuid();
        let what = format!(
            "dm-verity hash tree of {} ({} hashed in {:.1}s), root hash {root_hash}",
            root_entry.name,
            ByteSize(root_entry.size),
            started.elapsed().as_secs_f64()
        );
        log::debug!("partition {} ({}): {what}", verity_entry.name, ByteSize(verity_entry.size));
        self.mark_written(verity, what)?;
        self.root_hashes.push((slot, root_hash));
        Ok(root_hash)
    }

    /// Writes the GPT once every partition is written, reads it back to check the root hash
    /// UUIDs survived, and gives the image its final name.
    pub fn finish(self) -> Result<DiskReport> {
        let roles = &self.roles;
        if let Some(missing) = roles.iter().find(|r| !self.written.contains(r)) {
            bail!("the {missing} partition was never written");
        }
        let file = self.partial.file();
        self.layout.write(file).context("writing the partition table")?;
        // Written last and checked (systemd/mkosi#997: a GPT rewritten after the UUIDs were set
        // lost them, and systemd then found no root).
        let back = GptLayout::read(file).context("reading back the partition table")?;
        for (slot, hash) in &self.root_hashes {
            for (role, uuid) in
                [(Role::Root(*slot), hash.data_partition_uuid()), (Role::RootVerity(*slot), hash.hash_partition_uuid())]
            {
                let found = crate::partition::find(&back.partitions, role).map(|p| p.guid);
                if found != Some(uuid) {
                    bail!("the {role} partition's UUID reads back as {found:?}, not {uuid} from the root hash");
                }
            }
        }
        let mut lines = Vec::new();
        for (entry, role) in self.layout.partitions.iter().zip(roles) {
            let what = self.lines.iter().find(|(r, _)| r == role).map(|(_, w)| w.as_str()).unwrap_or_default();
            lines.push(format!(
                "{:<6} {:>9} at {:>9}  {what}",
                entry.name,
                ByteSize(entry.size).to_string(),
                ByteSize(entry.start).to_string()
            ));
        }
        let path = self.partial.commit()?;
        Ok(DiskReport { path, size: self.layout.disk_size, partitions: lines, root_hashes: self.root_hashes })
    }
}

/// Formats one partition's filesystem from `tree`; returns what it holds, for the report.
fn write_filesystem(
    role: Role,
    entry: &PartitionEntry,
    tree: &Tree,
    region: &Region,
    seed: &Seed,
    clock: BuildClock,
) -> Result<String> {
    Ok(match role.definition().filesystem {
        Filesystem::Fat32 { label } => {
            let opts = FatOptions {
                volume_id: seed.u32(&format!("fat-volume-id:{}", role.key())),
                label: label.to_string(),
                clock,
                hidden_sectors: u32::try_from(entry.start / gpt::SECTOR)
                    .context("ESP starts beyond 2 TiB, which FAT's hidden-sector field cannot express")?,
            };
            let r = fat::write_fat32(tree, region, &opts)
                .with_context(|| format!("writing FAT32 to partition {}", entry.name))?;
            format!(
                "FAT32, {} files in {} directories, {}-byte clusters, {} free",
                r.files,
                r.dirs,
                r.cluster_size,
                ByteSize(u64::from(r.free_clusters) * u64::from(r.cluster_size))
            )
        }
        Filesystem::Ext4 { label, reserved_percent } => {
            let opts = Ext4Options {
                seed: seed.clone(),
                label: label.to_string(),
                clock,
                inode_count: None,
                reserved_percent,
            };
            let r = ext4::write_ext4(tree, region, &opts)
                .with_context(|| format!("writing ext4 to partition {}", entry.name))?;
            format!(
                "ext4 {}, {} used, {} free, {} of {} inodes used",
                r.uuid,
                ByteSize(r.used_bytes),
                ByteSize(r.free_blocks * u64::from(r.block_size)),
                r.inodes - r.free_inodes,
                r.inodes
            )
        }
        Filesystem::VerityHashTree => bail!("the {role} partition holds a hash tree, not a filesystem"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::MIB;

    fn request(role: Role, size: Option<u64>) -> PartitionRequest {
        PartitionRequest { role, size, tree: Tree::new() }
    }

    /// Partitions go in the table's order whatever the caller's, with the table's types and names
    /// and the seed's GUIDs; the one without a size takes the rest.
    #[test]
    fn layout_follows_the_partition_table() {
        let seed = Seed::new("t");
        let requests = vec![
            request(Role::Data, Some(32 * MIB)),
            request(Role::Root(Slot::A), None),
            request(Role::Esp, Some(40 * MIB)),
        ];
        let plan = plan(200 * MIB, seed.clone(), BuildClock::fixed(0), requests).unwrap();
        let got: Vec<(&str, uuid::Uuid, uuid::Uuid, u64, u64)> =
            plan.layout.partitions.iter().map(|p| (p.name.as_str(), p.type_guid, p.guid, p.start, p.size)).collect();
        let def = |r: Role| r.definition();
        let root = Role::Root(Slot::A);
        assert_eq!(
            got,
            [
                ("esp", def(Role::Esp).type_guid, seed.uuid("partition:esp"), MIB, 40 * MIB),
                ("root-x86-64", def(root).type_guid, seed.uuid("partition:root-x86-64"), 41 * MIB, 126 * MIB),
                ("data", def(Role::Data).type_guid, seed.uuid("partition:data"), 167 * MIB, 32 * MIB),
            ]
        );
        let roles: Vec<Role> = plan.contents.iter().map(|(r, _)| *r).collect();
        assert_eq!(roles, [Role::Esp, root, Role::Data]);
    }

    /// A root's hash tree partition follows the root, sized for its tree, whether the root
    /// takes the rest or has a size; it is never given a size and never comes alone.
    #[test]
    fn a_hash_tree_takes_what_its_root_needs() {
        let clock = BuildClock::fixed(0);
        let tree_of = |root: u64| gpt::align_up(crate::verity::hash_region_len(root), ALIGN);
        for root_size in [None, Some(100 * MIB)] {
            let requests = vec![
                request(Role::Esp, Some(40 * MIB)),
                request(Role::Root(Slot::A), root_size),
                request(Role::RootVerity(Slot::A), None),
                request(Role::Data, if root_size.is_some() { None } else { Some(32 * MIB) }),
            ];
            let plan = plan(300 * MIB, Seed::new("t"), clock, requests).unwrap();
            let p = &plan.layout.partitions;
            assert_eq!(p[2].size, tree_of(p[1].size), "{root_size:?}");
            assert_eq!(p[2].start, p[1].end());
            assert!(p[3].end() <= gpt::last_usable_end(300 * MIB), "{p:?}");
            if root_size.is_none() {
                assert_eq!(p[3].end(), gpt::align_down(gpt::last_usable_end(300 * MIB), ALIGN), "the rest is used");
            }
        }
        let sized = vec![request(Role::Root(Slot::A), None), request(Role::RootVerity(Slot::A), Some(MIB))];
        let err = plan(300 * MIB, Seed::new("t"), clock, sized).unwrap_err().to_string();
        assert!(err.contains("sized by its root's hash tree"), "{err}");
        let alone = vec![request(Role::Esp, None), request(Role::RootVerity(Slot::A), None)];
        let err = plan(300 * MIB, Seed::new("t"), clock, alone).unwrap_err().to_string();
        assert!(err.contains("needs its root partition"), "{err}");
    }

    /// Slot B is as large as slot A, its hash tree as its root's: given a size, both slots have
    /// it; taking the rest, the two slots and their trees share it, and the names say which
    /// slot holds an appliance and which is empty.
    #[test]
    fn slot_b_is_sized_like_slot_a() {
        let image = ImageId { name: "demo".into(), version: "0.1.0".into() };
        let tree_of = |root: u64| gpt::align_up(crate::verity::hash_region_len(root), ALIGN);
        for root_size in [None, Some(100 * MIB)] {
            let sizes = [
                (Role::Esp, Some(40 * MIB)),
                (Role::Root(Slot::A), root_size),
                (Role::RootVerity(Slot::A), None),
                (Role::Root(Slot::B), None),
                (Role::RootVerity(Slot::B), None),
                (Role::Data, if root_size.is_some() { None } else { Some(32 * MIB) }),
            ];
            let layout = lay_out(500 * MIB, &Seed::new("t"), Some(&image), &sizes).unwrap();
            let p = &layout.gpt.partitions;
            let names: Vec<&str> = p.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(names, ["esp", "demo_0.1.0", "demo_0.1.0_verity", "_empty", "_empty", "data"]);
            assert_eq!((p[3].size, p[4].size), (p[1].size, p[2].size), "{root_size:?}");
            assert_eq!(p[2].size, tree_of(p[1].size));
            if let Some(s) = root_size {
                assert_eq!(p[1].size, s);
            } else {
                let end = gpt::align_down(gpt::last_usable_end(500 * MIB), ALIGN);
                assert!(p[5].end() <= end && p[5].end() + 2 * ALIGN > end, "the rest is shared: {p:?}");
            }
        }
        let too_small = [
            (Role::Esp, Some(40 * MIB)),
            (Role::Root(Slot::A), Some(300 * MIB)),
            (Role::Root(Slot::B), None),
            (Role::Data, None),
        ];
        let err = lay_out(500 * MIB, &Seed::new("t"), None, &too_small).unwrap_err().to_string();
        assert!(err.contains("(slot B as large as slot A)"), "{err}");
        let sized_b = [(Role::Root(Slot::A), None), (Role::Root(Slot::B), Some(MIB))];
        let err = lay_out(500 * MIB, &Seed::new("t"), None, &sized_b).unwrap_err().to_string();
        assert!(err.contains("sized like slot A's"), "{err}");
        let lone_b = [(Role::Esp, None), (Role::Root(Slot::B), None)];
        let err = lay_out(500 * MIB, &Seed::new("t"), None, &lone_b).unwrap_err().to_string();
        assert!(err.contains("needs slot A's"), "{err}");
    }

    #[test]
    fn a_role_twice_or_two_rests_are_refused() {
        let twice = vec![request(Role::Esp, Some(40 * MIB)), request(Role::Esp, Some(40 * MIB))];
        let err = plan(200 * MIB, Seed::new("t"), BuildClock::fixed(0), twice).unwrap_err().to_string();
        assert!(err.contains("the esp partition is requested twice"), "{err}");
        let rests = vec![request(Role::Esp, None), request(Role::Root(Slot::A), None)];
        let err = plan(200 * MIB, Seed::new("t"), BuildClock::fixed(0), rests).unwrap_err().to_string();
        assert!(err.contains("only one partition may take the remaining space"), "{err}");
    }
}
