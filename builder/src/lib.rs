//! airlock: builds signed, bootable appliance disk images for air-gapped networks.
//!
//! See `docs/ARCHITECTURE.md` for the flow from spec to image. The modules, in the order data
//! flows through them:
//! - [`tree`]: the in-memory filesystem model, filled from tars and host directories;
//! - [`fat`]: writes a tree as a FAT32 filesystem (the EFI system partition);
//! - [`gpt`]: the partition table: layout, validation, writing;
//! - [`disk`]: `airlock disk`, assembling partitions into one sparse image;
//! - [`output_file`], [`region`], [`seed`], [`size`], [`clock`]: shared building blocks.

pub mod apt_sources;
pub mod base_os;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod command;
pub mod configure;
pub mod disk;
pub mod embedded;
pub mod esp;
pub mod ext4;
pub mod fat;
pub mod fetch;
pub mod gpt;
pub mod lock;
pub mod oci;
pub mod output_file;
pub mod pipeline;
pub mod plan;
pub mod region;
pub mod seed;
pub mod signing;
pub mod size;
pub mod spec;
pub mod tree;
pub mod units;
