//! `airlock disk`: the low-level assembler. Partitions are laid out on 1 MiB boundaries, each
//! filesystem is written straight into its byte range of one sparse file, the GPT goes on last,
//! and the file takes its final name only when all of it is written and synced.

use crate::clock::BuildClock;
use crate::ext4::{self, Ext4Options};
use crate::fat::{self, FatOptions};
use crate::gpt::{self, ALIGN, GptLayout, PartitionEntry};
use crate::output_file::PartialFile;
use crate::partition::{Filesystem, Role};
use crate::region::Region;
use crate::seed::Seed;
use crate::size::ByteSize;
use crate::tree::Tree;
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
    let fills = requests.iter().filter(|r| r.size.is_none()).count();
    if fills > 1 {
        bail!("only one partition may take the remaining space; give the others a size");
    }
    let fixed: u64 = requests.iter().filter_map(|r| r.size).map(|s| gpt::align_up(s, ALIGN)).sum();
    let available = end.saturating_sub(start);
    let describe = || {
        requests
            .iter()
            .map(|r| match r.size {
                Some(s) => format!("{} {}", r.role, ByteSize(s)),
                None => format!("{} (rest, at least 1MiB)", r.role),
            })
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let needed = fixed + if fills == 1 { ALIGN } else { 0 };
    if needed > available {
        bail!(
            "partitions do not fit: {} needs {} but a {} disk has {} usable; make the disk at least {}",
            describe(),
            ByteSize(needed),
            ByteSize(disk_size),
            ByteSize(available),
            ByteSize(disk_size + needed - available)
        );
    }
    let mut cursor = start;
    let mut partitions = Vec::new();
    let mut contents = Vec::new();
    for r in requests {
        let size = match r.size {
            Some(s) => gpt::align_up(s, ALIGN),
            None => available - fixed,
        };
        let def = r.role.definition();
        partitions.push(PartitionEntry {
            name: def.gpt_name(),
            type_guid: def.type_guid,
            guid: def.partition_guid(&seed),
            start: cursor,
            size,
        });
        contents.push((r.role, r.tree));
        cursor += size;
    }
    let layout = GptLayout { disk_size, disk_guid: disk_guid(&seed), partitions };
    layout.validate()?;
    Ok(DiskPlan { layout, contents, seed, clock })
}

/// What was written.
#[derive(Debug)]
pub struct DiskReport {
    pub path: PathBuf,
    pub size: u64,
    /// One line per partition: what it holds.
    pub partitions: Vec<String>,
}

/// Writes the planned disk to `out` (sparse; complete or not there at all).
pub fn write(plan: &DiskPlan, out: &Path) -> Result<DiskReport> {
    let partial = PartialFile::create(out)?;
    let file = partial.file();
    file.set_len(plan.layout.disk_size).with_context(|| {
        format!("sizing {} to {}", partial.partial_path().display(), ByteSize(plan.layout.disk_size))
    })?;
    let mut lines = Vec::new();
    // What the files hold: the bulk of what is written (metadata adds a little).
    let total = plan.contents.iter().map(|(_, tree)| content_bytes(tree)).sum();
    crate::progress::measure(crate::progress::Unit::Bytes, Some(total));
    for (entry, (role, tree)) in plan.layout.partitions.iter().zip(&plan.contents) {
        let region = Region::new(file, entry.start, entry.size);
        let what = match role.definition().filesystem {
            Filesystem::Fat32 { label } => {
                let opts = FatOptions {
                    volume_id: plan.seed.u32(&format!("fat-volume-id:{}", role.key())),
                    label: label.to_string(),
                    clock: plan.clock,
                    hidden_sectors: u32::try_from(entry.start / gpt::SECTOR)
                        .context("ESP starts beyond 2 TiB, which FAT's hidden-sector field cannot express")?,
                };
                let r = fat::write_fat32(tree, &region, &opts)
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
                    seed: plan.seed.clone(),
                    label: label.to_string(),
                    clock: plan.clock,
                    inode_count: None,
                    reserved_percent,
                };
                let r = ext4::write_ext4(tree, &region, &opts)
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
        };
        log::debug!("partition {} ({}): {what}", entry.name, ByteSize(entry.size));
        lines.push(format!(
            "{:<6} {:>9} at {:>9}  {what}",
            entry.name,
            ByteSize(entry.size).to_string(),
            ByteSize(entry.start).to_string()
        ));
    }
    plan.layout.write(file).context("writing the partition table")?;
    let path = partial.commit()?;
    Ok(DiskReport { path, size: plan.layout.disk_size, partitions: lines })
}

/// The disk's GUID, from the seed.
pub fn disk_guid(seed: &Seed) -> uuid::Uuid {
    seed.uuid("disk")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::Slot;
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
