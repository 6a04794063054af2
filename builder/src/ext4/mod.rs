//! A native, write-once ext4 writer: lays a [`Tree`] out as an ext4 filesystem filling a
//! [`Region`], without mounting anything, without privileges and without e2fsprogs.
//!
//! The result is what a current kernel mounts read-write: 4 KiB blocks, 256-byte inodes with
//! nanosecond times, extents, `flex_bg` with every bitmap and inode table packed at the front,
//! `sparse_super` backups, htree directories once they outgrow a block, in-inode and block
//! xattrs, an empty journal, and `metadata_csum` over all of it. Everything that would differ
//! between runs (UUIDs, the directory hash seed, times) comes from [`Ext4Options`], so the
//! same tree and options give the same bytes.
//!
//! The work happens in two passes: one that only allocates, to learn whether the tree fits
//! (and for [`required_size`]), then one that allocates the same blocks in the same order and
//! writes. Blocks are handed out strictly in order (see `layout.rs`), files as contiguous
//! runs, so memory does not grow with the number of blocks: file contents stream through one
//! 1 MiB buffer, and inodes through another.

mod csum;
mod data;
mod dir;
mod extent;
mod inode;
mod journal;
mod layout;
mod plan;
mod superblock;
mod xattr;

use crate::clock::BuildClock;
use crate::region::Region;
use crate::seed::Seed;
use crate::tree::{ContentReader, Meta, NodeKind, Tree};
use anyhow::{Context, Result, anyhow, bail};
use csum::{Csum, crc32c};
use extent::Extents;
use inode::{EXTENTS_FL, INDEX_FL, Inode, InodeTables};
use layout::{Allocator, BLOCK, BLOCK_SIZE, Geometry, GeometryError, GroupTables, MAX_EXTENT_LEN};
use plan::{BAD_BLOCKS_INO, JOURNAL_INO, Plan, Source};
use superblock::{BG_INODE_ZEROED, GroupDesc, Superblock};

/// How to write the filesystem.
#[derive(Debug, Clone)]
pub struct Ext4Options {
    /// The filesystem UUID, journal UUID and directory hash seed derive from this (purposes
    /// `ext4-uuid-<label>` and `ext4-hash-seed-<label>`).
    pub seed: Seed,
    /// The volume label, at most 16 bytes.
    pub label: String,
    /// Every inode time is `clock.stamp(meta)` (a node that keeps its own mtime keeps it);
    /// superblock times are the clock's epoch.
    pub clock: BuildClock,
    /// Total inodes; `None` derives it from the size as mke2fs does (one per 4 KiB below
    /// 512 MiB, per 16 KiB up to 4 TiB, per 32 KiB beyond), and never fewer than the tree
    /// needs.
    pub inode_count: Option<u32>,
    /// Blocks reserved for root, in percent (0 to 50).
    pub reserved_percent: u8,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Report {
    pub uuid: uuid::Uuid,
    pub block_size: u32,
    pub blocks: u64,
    pub free_blocks: u64,
    pub inodes: u32,
    pub free_inodes: u32,
    pub used_bytes: u64,
}

/// Writes `tree` as an ext4 filesystem filling `region` (which must read as zeros).
pub fn write_ext4(tree: &Tree, region: &Region<'_>, opts: &Ext4Options) -> Result<Ext4Report> {
    let ids = Identity::new(opts)?;
    let plan = Plan::new(tree, ids.hash_seed_words())?;
    check_inode_count(&plan, opts)?;
    let region_blocks = region.len() / BLOCK;
    let mut geo = match Geometry::new(region_blocks, plan.last_ino(), opts.inode_count) {
        Ok(geo) => geo,
        Err(e) => return Err(does_not_fit(&plan, &ids, opts, region.len(), Some(e))),
    };
    // mke2fs' journal for this size if the tree leaves room for it, else the largest smaller
    // one that fits: a partition that holds the tree with some journal is never refused.
    let measured = loop {
        let end = Build::run(&plan, &geo, &ids, opts, None)?.end;
        if end <= geo.blocks {
            break end;
        }
        match journal::smaller(geo.journal_blocks) {
            Some(blocks) => geo.journal_blocks = blocks,
            None => return Err(does_not_fit(&plan, &ids, opts, region.len(), None)),
        }
    };
    let written = Build::run(&plan, &geo, &ids, opts, Some(region))?;
    // Holes only ever save blocks.
    debug_assert!(written.end <= measured, "{} > {measured}", written.end);
    Ok(written.report.expect("a writing run reports"))
}

/// Bytes a partition needs to hold `tree` (for layout decisions and "does not fit" messages):
/// the smallest region `write_ext4` accepts, counting every block of every file (zero blocks
/// are only found, and left as holes, while writing). At exactly this size the journal has
/// the 4 MiB minimum; headroom goes to a larger journal first, up to what mke2fs would give
/// the partition.
pub fn required_size(tree: &Tree, opts: &Ext4Options) -> Result<u64> {
    let ids = Identity::new(opts)?;
    let plan = Plan::new(tree, ids.hash_seed_words())?;
    check_inode_count(&plan, opts)?;
    Ok(required_blocks(&plan, &ids, opts)? * BLOCK)
}

/// Everything derived from the options that is the same in every pass.
#[derive(Debug)]
struct Identity {
    uuid: uuid::Uuid,
    hash_seed: [u8; 16],
    csum: Csum,
    label: Vec<u8>,
}

impl Identity {
    fn new(opts: &Ext4Options) -> Result<Self> {
        if opts.label.len() > 16 {
            bail!("ext4 label `{}` is {} bytes; at most 16 fit", opts.label, opts.label.len());
        }
        if opts.reserved_percent > 50 {
            bail!("reserved_percent = {} is more than half the filesystem", opts.reserved_percent);
        }
        let uuid = opts.seed.uuid(&format!("ext4-uuid-{}", opts.label));
        let hash_seed = opts.seed.uuid(&format!("ext4-hash-seed-{}", opts.label)).into_bytes();
        Ok(Self { uuid, hash_seed, csum: Csum::new(uuid.as_bytes()), label: opts.label.as_bytes().to_vec() })
    }

    /// The hash seed as the kernel reads it: four little-endian words.
    fn hash_seed_words(&self) -> [u32; 4] {
        let w = |i: usize| u32::from_le_bytes(self.hash_seed[4 * i..4 * i + 4].try_into().expect("4-byte slice"));
        [w(0), w(1), w(2), w(3)]
    }
}

fn check_inode_count(plan: &Plan<'_>, opts: &Ext4Options) -> Result<()> {
    match opts.inode_count {
        Some(n) if n < plan.last_ino() => bail!(
            "inode_count = {n} is too few: the tree needs {} inodes (with ext4's {} reserved ones)",
            plan.last_ino(),
            layout::FIRST_INO
        ),
        _ => Ok(()),
    }
}

/// The smallest region, in blocks, that holds the tree.
fn required_blocks(plan: &Plan<'_>, ids: &Identity, opts: &Ext4Options) -> Result<u64> {
    // Every step grows the size to at least what the last layout used, and layouts only grow
    // with the size, so this climbs to the smallest size that fits in a few steps.
    let mut blocks = 0;
    for _ in 0..1000 {
        match Geometry::new(blocks, plan.last_ino(), opts.inode_count) {
            Err(GeometryError::BelowMinimum { min_blocks }) => blocks = min_blocks.max(blocks + 1),
            Err(GeometryError::InodesOverCapacity { min_blocks, .. }) => blocks = min_blocks.max(blocks + 1),
            Err(GeometryError::OverMaximum) => {
                bail!("the tree needs an ext4 filesystem over 16 TiB, which airlock does not write")
            }
            Ok(mut geo) => {
                // write_ext4 shrinks the journal down to this when space is tight.
                geo.journal_blocks = journal::MIN_BLOCKS;
                let end = Build::run(plan, &geo, ids, opts, None)?.end;
                if end <= geo.blocks {
                    return Ok(blocks);
                }
                blocks = if geo.blocks < blocks && end <= blocks {
                    // The region's last group was too short to keep: make it long enough.
                    geo.blocks + layout::BLOCKS_PER_GROUP.min(2 * geo.itable_blocks() + 64) + 1 + geo.gdt_blocks
                } else {
                    end
                };
            }
        }
    }
    bail!("could not settle on a filesystem size for this tree")
}

fn does_not_fit(
    plan: &Plan<'_>,
    ids: &Identity,
    opts: &Ext4Options,
    region_len: u64,
    why: Option<GeometryError>,
) -> anyhow::Error {
    let required = match required_blocks(plan, ids, opts) {
        Ok(blocks) => blocks * BLOCK,
        Err(e) => return e,
    };
    let more = required.saturating_sub(region_len);
    match why {
        Some(GeometryError::InodesOverCapacity { wanted, capacity, .. }) => anyhow!(
            "the partition cannot hold that many inodes: {wanted} wanted, a {region_len}-byte \
             ext4 holds at most {capacity}; it needs {required} bytes ({more} more)"
        ),
        Some(GeometryError::OverMaximum) => {
            anyhow!("a {region_len}-byte partition is over the 16 TiB airlock writes as ext4")
        }
        _ => anyhow!(
            "the tree does not fit: it needs an ext4 filesystem of {required} bytes but the \
             partition has {region_len} ({more} more bytes needed)"
        ),
    }
}

/// What a run produced.
#[derive(Debug)]
struct Outcome {
    /// One past the last block allocated.
    end: u64,
    /// Only when writing.
    report: Option<Ext4Report>,
}

/// One pass over the tree: allocation, and writing when there is a region to write to.
struct Build<'a> {
    plan: &'a Plan<'a>,
    geo: &'a Geometry,
    ids: &'a Identity,
    clock: BuildClock,
    alloc: Allocator<'a>,
    io: Option<Io<'a>>,
}

/// The writing half of a [`Build`].
struct Io<'a> {
    region: &'a Region<'a>,
    reader: ContentReader,
    itables: InodeTables<'a>,
    buf: Vec<u8>,
    dirs_per_group: Vec<u32>,
}

impl<'a> Build<'a> {
    fn run(
        plan: &'a Plan<'a>,
        geo: &'a Geometry,
        ids: &'a Identity,
        opts: &Ext4Options,
        region: Option<&'a Region<'a>>,
    ) -> Result<Outcome> {
        let mut alloc = match region {
            Some(_) => Allocator::bounded(geo),
            None => Allocator::measuring(geo),
        };
        let tables = layout::place_tables(&mut alloc)?;
        let io = region.map(|region| Io {
            region,
            reader: plan.tree.content_reader(),
            itables: InodeTables::new(region, geo, tables.clone()),
            buf: Vec::new(),
            dirs_per_group: vec![0; geo.groups as usize],
        });
        let mut build = Build { plan, geo, ids, clock: opts.clock, alloc, io };
        let journal = build.place_journal()?;
        build.place_bad_blocks_inode()?;
        for (ino, source) in plan.inodes() {
            build.place_inode(ino, source).with_context(|| match source {
                Source::Tree(id) => format!("writing `{}`", plan.path_of(id)),
                Source::LostFound => "writing lost+found".to_owned(),
            })?;
        }
        let end = build.alloc.end();
        let report = if build.io.is_some() { Some(build.finish(&tables, &journal, opts)?) } else { None };
        Ok(Outcome { end, report })
    }

    /// `n` blocks as runs of at most one extent each.
    fn alloc_runs(&mut self, n: u64) -> Result<Extents> {
        let mut extents = Extents::default();
        let mut done = 0;
        while done < n {
            let run = self.alloc.take((n - done).min(MAX_EXTENT_LEN))?;
            let logical = u32::try_from(done).expect("the plan limits files to 2^32 blocks");
            extents.push_run(logical, run.start, run.end - run.start);
            done += run.end - run.start;
        }
        Ok(extents)
    }

    /// Writes `bytes` (the file's content from its start) to where `extents` map it.
    fn write_mapped(&self, extents: &Extents, bytes: &[u8]) -> Result<()> {
        let io = self.io();
        for e in extents.iter() {
            let from = e.logical as usize * BLOCK_SIZE;
            let to = (from + usize::from(e.len) * BLOCK_SIZE).min(bytes.len());
            if from < to {
                io.region.write_at(e.start * BLOCK, &bytes[from..to])?;
            }
        }
        Ok(())
    }

    /// Encodes the extent tree of inode `ino`, writing its node blocks; returns `i_block` and
    /// the number of node blocks.
    fn place_extent_tree(&mut self, ino: u32, extents: &Extents) -> Result<([u8; 60], u64)> {
        let tree = extent::build(extents, &mut self.alloc, self.ids.csum.inode_seed(ino))?;
        if let Some(io) = &self.io {
            for (nr, block) in &tree.blocks {
                io.region.write_at(nr * BLOCK, &block[..])?;
            }
        }
        Ok((tree.i_block, tree.blocks.len() as u64))
    }

    /// The journal's blocks and inode (8); returns the inode for the superblock's backup.
    fn place_journal(&mut self) -> Result<Inode> {
        let blocks = self.geo.journal_blocks;
        let extents = self.alloc_runs(blocks)?;
        let (i_block, tree_blocks) = self.place_extent_tree(JOURNAL_INO, &extents)?;
        let inode = Inode {
            mode: 0o100600,
            size: blocks * BLOCK,
            links: 1,
            blocks: blocks + tree_blocks,
            flags: EXTENTS_FL,
            i_block,
            time: self.clock.epoch(),
            ..Inode::default()
        };
        if let Some(io) = &mut self.io {
            let first = extents.iter().next().expect("the journal has blocks").start;
            let jsb = journal::superblock(
                u32::try_from(blocks).expect("journals are at most 2^18 blocks"),
                BLOCK_SIZE as u32,
                self.ids.uuid.as_bytes(),
            );
            io.region.write_at(first * BLOCK, &jsb).context("writing the journal superblock")?;
            let bytes = inode.encode(JOURNAL_INO, &[], &self.ids.csum);
            io.itables.push(JOURNAL_INO, &bytes)?;
        }
        Ok(inode)
    }

    /// Inode 1 owns no bad blocks; mke2fs still stamps its times.
    fn place_bad_blocks_inode(&mut self) -> Result<()> {
        if let Some(io) = &mut self.io {
            let inode = Inode { time: self.clock.epoch(), ..Inode::default() };
            let bytes = inode.encode(BAD_BLOCKS_INO, &[], &self.ids.csum);
            io.itables.push(BAD_BLOCKS_INO, &bytes)?;
        }
        Ok(())
    }

    /// Allocates what a measuring run needs to know about an inode: the same blocks, in the
    /// same order, as [`Build::place_inode`] when no block is a hole.
    fn measure_inode(&mut self, ino: u32, source: Source) -> Result<()> {
        let needs = self.plan.needs(ino);
        if needs.xattr_block {
            self.alloc.take(1)?;
        }
        let mapped = match source {
            Source::LostFound => true,
            Source::Tree(id) => match &self.plan.tree.node(id).kind {
                NodeKind::Directory { .. } | NodeKind::File { .. } => true,
                NodeKind::Symlink { target } => !plan::is_fast_symlink(target),
                _ => false,
            },
        };
        if mapped {
            let extents = self.alloc_runs(needs.data_blocks)?;
            for _ in 0..extent::tree_blocks(extents.len()) {
                self.alloc.take(1)?;
            }
        }
        Ok(())
    }

    fn place_inode(&mut self, ino: u32, source: Source) -> Result<()> {
        if self.io.is_none() {
            return self.measure_inode(ino, source);
        }
        let plan = self.plan;
        let lost_found_meta;
        let (meta, kind, own_mtime) = match source {
            Source::Tree(id) => {
                let node = plan.tree.node(id);
                (&node.meta, Some(&node.kind), node.keeps_own_mtime())
            }
            Source::LostFound => {
                lost_found_meta = Meta::root(0o700);
                (&lost_found_meta, None, false)
            }
        };
        let needs = plan.needs(ino);
        let type_bits = kind.map_or(0o040000, NodeKind::type_bits);
        let mut inode = Inode {
            mode: (type_bits | (meta.mode & 0o7777)) as u16,
            uid: meta.uid,
            gid: meta.gid,
            links: plan.links(source),
            time: if own_mtime { meta.mtime } else { self.clock.stamp(meta) },
            ..Inode::default()
        };
        let placement = xattr::place(&meta.xattrs)?;
        if needs.xattr_block {
            let nr = self.alloc.take(1)?.start;
            inode.file_acl = nr;
            inode.blocks += 1;
            let block = xattr::encode_block(&placement.block, nr, self.ids.csum.fs_seed());
            self.io().region.write_at(nr * BLOCK, &block[..]).context("writing the xattr block")?;
        }
        let extents = match kind {
            None | Some(NodeKind::Directory { .. }) => {
                let entries = match source {
                    Source::Tree(id) => plan.dir_entries(id),
                    Source::LostFound => Vec::new(),
                };
                let layout = match source {
                    Source::Tree(id) => plan.dir_layout(id, &entries)?,
                    Source::LostFound => dir::Layout::new(&[], plan::LOST_FOUND_BLOCKS, plan.hash_seed())?,
                };
                debug_assert_eq!(layout.blocks(), needs.data_blocks);
                let extents = self.alloc_runs(layout.blocks())?;
                let seed = self.ids.csum.inode_seed(ino);
                let bytes = dir::encode(&layout, &entries, ino, needs.parent, seed);
                self.write_mapped(&extents, &bytes)?;
                inode.size = layout.blocks() * BLOCK;
                inode.flags = EXTENTS_FL | if layout.is_indexed() { INDEX_FL } else { 0 };
                Some(extents)
            }
            Some(NodeKind::File { size, content }) => {
                inode.size = *size;
                inode.flags = EXTENTS_FL;
                let io = self.io.as_mut().expect("place_inode writes");
                Some(data::copy_file(&mut io.reader, content, *size, &mut self.alloc, io.region, &mut io.buf)?)
            }
            Some(NodeKind::Symlink { target }) => {
                inode.size = target.len() as u64;
                if plan::is_fast_symlink(target) {
                    inode.i_block[..target.len()].copy_from_slice(target);
                    None
                } else {
                    inode.flags = EXTENTS_FL;
                    let extents = self.alloc_runs(1)?;
                    self.write_mapped(&extents, target)?;
                    Some(extents)
                }
            }
            Some(NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor }) => {
                inode.i_block = inode::device_block(*major, *minor);
                None
            }
            Some(NodeKind::Fifo | NodeKind::Socket) => None,
        };
        if let Some(extents) = extents {
            let (i_block, tree_blocks) = self.place_extent_tree(ino, &extents)?;
            inode.i_block = i_block;
            inode.blocks += extents.blocks() + tree_blocks;
        }
        let bytes = inode.encode(ino, &placement.inline, &self.ids.csum);
        let group = self.geo.inode_group(ino).0 as usize;
        let io = self.io.as_mut().expect("place_inode writes");
        io.itables.push(ino, &bytes)?;
        if kind.is_none_or(NodeKind::is_dir) {
            io.dirs_per_group[group] += 1;
        }
        Ok(())
    }

    fn io(&self) -> &Io<'a> {
        self.io.as_ref().expect("only writing runs write")
    }

    /// Bitmaps, group descriptors and superblocks, once every inode is placed.
    fn finish(mut self, tables: &[GroupTables], journal: &Inode, opts: &Ext4Options) -> Result<Ext4Report> {
        let geo = self.geo;
        let fs_seed = self.ids.csum.fs_seed();
        let mut io = self.io.take().expect("finish runs only when writing");
        io.itables.flush()?;
        let ipg = geo.inodes_per_group;
        let last_ino = self.plan.last_ino();
        let mut bitmap = [0u8; BLOCK_SIZE];
        let mut descs = Vec::with_capacity(geo.groups as usize);
        let (mut free_blocks, mut free_inodes) = (0u64, 0u32);
        for (g, t) in tables.iter().enumerate() {
            let g32 = g as u32;
            let group_free = self.alloc.block_bitmap(g32, &mut bitmap);
            // Unwritten blocks read as zeros: an empty bitmap needs no write.
            if bitmap.iter().any(|&b| b != 0) {
                io.region
                    .write_at(t.block_bitmap * BLOCK, &bitmap)
                    .with_context(|| format!("writing the block bitmap of group {g}"))?;
            }
            let block_bitmap_csum = crc32c(fs_seed, &bitmap);
            // Every inode bitmap is written, even of groups with no inodes in use, rather than
            // flagged INODE_UNINIT: e2fsck started from a backup superblock ignores that flag
            // and would find unpadded, unchecksummed bitmaps.
            let used_inodes = last_ino.saturating_sub(g32 * ipg).min(ipg);
            bitmap.fill(0);
            layout::set_bits(&mut bitmap, 0..u64::from(used_inodes), true);
            layout::set_bits(&mut bitmap, u64::from(ipg)..8 * BLOCK_SIZE as u64, true);
            io.region
                .write_at(t.inode_bitmap * BLOCK, &bitmap)
                .with_context(|| format!("writing the inode bitmap of group {g}"))?;
            let inode_bitmap_csum = crc32c(fs_seed, &bitmap[..ipg as usize / 8]);
            free_blocks += group_free;
            free_inodes += ipg - used_inodes;
            descs.push(GroupDesc {
                block_bitmap: t.block_bitmap,
                inode_bitmap: t.inode_bitmap,
                inode_table: t.inode_table,
                free_blocks: group_free as u32,
                free_inodes: ipg - used_inodes,
                used_dirs: io.dirs_per_group[g],
                // The region reads as zeros: the kernel need not zero the inode tables.
                flags: BG_INODE_ZEROED,
                block_bitmap_csum,
                inode_bitmap_csum,
                itable_unused: ipg - used_inodes,
            });
        }
        let mut gdt = vec![0u8; (geo.gdt_blocks * BLOCK) as usize];
        for (g, (desc, out)) in descs.iter().zip(gdt.chunks_exact_mut(layout::DESC_SIZE)).enumerate() {
            out.copy_from_slice(&desc.encode(g as u32, fs_seed));
        }
        let superblock = Superblock {
            geo,
            free_blocks,
            free_inodes,
            reserved_blocks: geo.blocks * u64::from(opts.reserved_percent) / 100,
            uuid: *self.ids.uuid.as_bytes(),
            label: &self.ids.label,
            hash_seed: self.ids.hash_seed,
            time: opts.clock.epoch,
            journal_i_block: journal.i_block,
            journal_size: journal.size,
        };
        for g in 0..geo.groups {
            let Some(area) = geo.backup_area(u64::from(g)) else {
                continue;
            };
            // The primary sits 1024 bytes into block 0; the backups start their group.
            let at = if g == 0 { 1024 } else { area.start * BLOCK };
            io.region
                .write_at(at, &superblock.encode(g))
                .with_context(|| format!("writing the superblock copy of group {g}"))?;
            io.region
                .write_at((area.start + 1) * BLOCK, &gdt)
                .with_context(|| format!("writing the group descriptors of group {g}"))?;
        }
        Ok(Ext4Report {
            uuid: self.ids.uuid,
            block_size: BLOCK as u32,
            blocks: geo.blocks,
            free_blocks,
            inodes: geo.inodes(),
            free_inodes,
            used_bytes: (geo.blocks - free_blocks) * BLOCK,
        })
    }
}
