//! airlock: builds signed, bootable appliance disk images for air-gapped networks.
//!
//! See `docs/ARCHITECTURE.md` for the flow from spec to image. The modules, in the order data
//! flows through them:
//! - [`tree`]: the in-memory filesystem model, filled from tars and host directories;
//! - [`fat`]: writes a tree as a FAT32 filesystem (the EFI system partition);
//! - [`gpt`]: the partition table: layout, validation, writing;
//! - [`disk`]: `airlock disk`, assembling partitions into one sparse image;
//! - [`release`]: from the raw image to the released set: [`outputs`] (raw.zst, qcow2, vmdk,
//!   ova), [`manifest`] and [`sbom`] (from [`inspect`]), SHA256SUMS and its [`signing`];
//! - [`verify`], [`flash`] (with [`block_device`]), [`diff`]: checking and using a release;
//! - [`output_file`], [`region`], [`seed`], [`size`], [`clock`]: shared building blocks.

pub mod apt_sources;
pub mod base_os;
pub mod block_device;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod coherence;
pub mod command;
pub mod configure;
pub mod diff;
pub mod disk;
pub mod embedded;
pub mod esp;
pub mod expansion;
pub mod ext4;
pub mod fat;
pub mod fetch;
pub mod firstboot;
pub mod flash;
pub mod front_door;
pub mod gpt;
pub mod input_file;
pub mod inspect;
pub mod interrupt;
pub mod lock;
pub mod manifest;
pub mod mirror;
pub mod oci;
pub mod output_file;
pub mod outputs;
pub mod pipeline;
pub mod plan;
pub mod preload;
pub mod printable;
pub mod region;
pub mod release;
pub mod sbom;
pub mod seed;
pub mod signing;
pub mod size;
pub mod spec;
pub mod tree;
pub mod unit_name;
pub mod units;
pub mod verify;
