//! Placeholder until the ext4 writer lands on this branch (being written in parallel); it fails
//! loudly so nothing can mistake it for a filesystem.
#[derive(Debug, Clone)]
pub struct Ext4Options {
    pub seed: crate::seed::Seed,
    pub label: String,
    pub clock: crate::clock::BuildClock,
    pub inode_count: Option<u32>,
    pub reserved_percent: u8,
}
#[derive(Debug)]
pub struct Ext4Report {
    pub uuid: uuid::Uuid,
    pub block_size: u32,
    pub blocks: u64,
    pub free_blocks: u64,
    pub inodes: u32,
    pub free_inodes: u32,
    pub used_bytes: u64,
}
pub fn write_ext4(
    _tree: &crate::tree::Tree,
    _region: &crate::region::Region<'_>,
    _opts: &Ext4Options,
) -> anyhow::Result<Ext4Report> {
    anyhow::bail!("the ext4 writer is not on this branch yet")
}
