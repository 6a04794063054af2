//! airlock: builds signed, bootable appliance disk images for air-gapped networks.
//!
//! See `docs/ARCHITECTURE.md` for the flow from spec to image and the layers (each imports only
//! from the ones below; `tests/layers.rs` checks it). The modules, from the bottom up:
//! - foundations: [`tree`] (the in-memory filesystem model, filled from tars and host
//!   directories), [`oci`] (container images and the blob store), [`http`], [`region`],
//!   [`clock`], [`cache`], [`block_device`], [`apt_sources`], [`units`], [`base_os`],
//!   [`embedded`]; from `airlock-common` (`builder/common`, shared with the appliance's own
//!   program): [`partition`] (the partition table as data), [`gpt`], [`signing`], [`command`]
//!   (the one way to run a program), [`output_file`], [`seed`], [`size`], [`local_registry`];
//! - [`spec`]: `appliance.toml` as written;
//! - [`mirror`]: the mirror ecosystems (PyPI, npm, Go, NuGet, the Pulumi CLI), one
//!   [`mirror::Ecosystem`] each in one registry;
//! - [`plan`]: the spec validated once into a [`plan::BuildPlan`];
//! - [`lock`]: `appliance.lock`'s format; [`lock_check`]: the lock against the plan and cache;
//! - `airlock fetch`: [`fetch`] (registries, local sources, the mirrors' resolvers);
//! - the stages of `airlock build`, in [`pipeline`]'s order: [`preload`], [`image_store`],
//!   [`mirror_site`],
//!   [`front_door`], [`configure`], [`coherence`], [`esp`], [`disk`] (with the writers [`fat`]
//!   and [`ext4`]), [`contents`];
//! - [`release`]: from the raw image to the released set: [`outputs`] (raw.zst, qcow2, vmdk,
//!   ova), [`manifest`] and [`sbom`] (from [`inspect`]), SHA256SUMS and its [`signing`];
//! - [`verify`], [`flash`], [`diff`]: checking and using a release; [`artifact`]: what an
//!   image or release is (`airlock inspect`), read through [`inspect`]'s disk reader as `diff` is;
//! - [`verity`], [`uki`] (with [`pe`]), [`secure_boot`]: the verified-boot building blocks
//!   (dm-verity hash tree, unified kernel image, the owner's keys and Authenticode signing);
//! - [`cli`]: the commands.
//!
//! What runs on the appliance (first boot) is its own crate, `airlock-appliance`
//! (`builder/appliance`), which links none of this crate.

// Shared with the appliance's own program; re-exported so the builder's modules and tests name
// them as before.
pub use airlock_common::{
    bundle, command, gpt, input_file, interrupt, local_registry, output_file, partition, seed, signing, size, version,
};

pub mod apt_sources;
pub mod artifact;
pub mod base_os;
pub mod block_device;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod coherence;
pub mod configure;
pub mod contents;
pub mod cpio;
pub mod diff;
pub mod disk;
pub mod embedded;
pub mod esp;
pub mod expansion;
pub mod ext4;
pub mod fat;
pub mod fetch;
pub mod flash;
pub mod front_door;
pub mod http;
pub mod image_store;
pub mod inspect;
pub mod lock;
pub mod lock_check;
pub mod manifest;
pub mod mirror;
pub mod mirror_site;
pub mod oci;
pub mod outputs;
pub mod pe;
pub mod pipeline;
pub mod plan;
pub mod preload;
pub mod printable;
pub mod progress;
pub mod region;
pub mod release;
pub mod sbom;
pub mod secure_boot;
pub mod spec;
pub mod test_spec;
pub mod tree;
pub mod uki;
pub mod unit_name;
pub mod units;
pub mod update_bundle;
pub mod verify;
pub mod verity;
