//! `airlock disk`: the low-level assembler. Partitions are laid out on 1 MiB boundaries, each
//! filesystem is written straight into its byte range of one sparse file, the GPT goes on last,
//! and the file takes its final name only when all of it is written and synced.

use crate::clock::BuildClock;
use crate::ext4::{self, Ext4Options};
use crate::fat::{self, FatOptions};
use crate::gpt::{self, ALIGN, GptLayout, PartitionEntry, types};
use crate::output_file::PartialFile;
use crate::region::Region;
use crate::seed::Seed;
use crate::size::ByteSize;
use crate::tree::Tree;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// What a partition is for; fixes its GPT type, name and seed purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// EFI system partition (FAT32).
    Esp,
    /// The root filesystem (Linux root x86-64).
    Root,
    /// Persistent data (Linux variable data), last on the disk so it can grow.
    Data,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Esp => "esp",
            Role::Root => "root-x86-64",
            Role::Data => "data",
        }
    }

    fn type_guid(self) -> uuid::Uuid {
        match self {
            Role::Esp => types::ESP,
            Role::Root => types::LINUX_ROOT_X86_64,
            Role::Data => types::LINUX_VARIABLE_DATA,
        }
    }

    /// The partition's unique GUID (PARTUUID) for a build seed.
    pub fn partition_guid(self, seed: &Seed) -> uuid::Uuid {
        seed.uuid(&format!("partition:{}", self.name()))
    }
}

/// The filesystem a partition gets.
#[derive(Debug)]
pub enum Filesystem {
    Fat32 { tree: Tree, label: String },
    Ext4 { tree: Tree, label: String, reserved_percent: u8 },
}

/// One partition to be: its role, its size (`None`: take what the others leave) and content.
#[derive(Debug)]
pub struct PartitionRequest {
    pub role: Role,
    pub size: Option<u64>,
    pub fs: Filesystem,
}

/// A validated disk: the partition table and what goes into each partition.
#[derive(Debug)]
pub struct DiskPlan {
    pub layout: GptLayout,
    pub filesystems: Vec<Filesystem>,
    pub seed: Seed,
    pub clock: BuildClock,
}

pub const MAX_DISK: u64 = 16 << 40;

/// Lays partitions out in order from 1 MiB, each on a 1 MiB boundary; at most one partition
/// has no size and takes the rest.
pub fn plan(disk_size: u64, seed: Seed, clock: BuildClock, requests: Vec<PartitionRequest>) -> Result<DiskPlan> {
    if disk_size % gpt::SECTOR != 0 {
        bail!("disk size {} is not a multiple of 512 bytes", ByteSize(disk_size));
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
                Some(s) => format!("{} {}", r.role.name(), ByteSize(s)),
                None => format!("{} (rest, at least 1MiB)", r.role.name()),
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
    let mut filesystems = Vec::new();
    for r in requests {
        let size = match r.size {
            Some(s) => gpt::align_up(s, ALIGN),
            None => available - fixed,
        };
        partitions.push(PartitionEntry {
            name: r.role.name().to_string(),
            type_guid: r.role.type_guid(),
            guid: r.role.partition_guid(&seed),
            start: cursor,
            size,
        });
        filesystems.push(r.fs);
        cursor += size;
    }
    let layout = GptLayout { disk_size, disk_guid: seed.uuid("disk"), partitions };
    layout.validate()?;
    Ok(DiskPlan { layout, filesystems, seed, clock })
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
    for (entry, fs) in plan.layout.partitions.iter().zip(&plan.filesystems) {
        let region = Region::new(file, entry.start, entry.size);
        let what = match fs {
            Filesystem::Fat32 { tree, label } => {
                let opts = FatOptions {
                    volume_id: plan.seed.u32(&format!("fat-volume-id:{}", entry.name)),
                    label: label.clone(),
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
            Filesystem::Ext4 { tree, label, reserved_percent } => {
                let opts = Ext4Options {
                    seed: plan.seed.clone(),
                    label: label.clone(),
                    clock: plan.clock,
                    inode_count: None,
                    reserved_percent: *reserved_percent,
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
        log::info!("partition {} ({}): {what}", entry.name, ByteSize(entry.size));
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
