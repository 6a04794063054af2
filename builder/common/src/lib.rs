//! airlock-common: what the builder (`airlock`, on the build host) and the appliance's own
//! program (`airlock-appliance`, installed in every image as `/usr/bin/airlock`) share. Nothing
//! here reaches a network.
//!
//! - [`bundle`]: the update bundle (`<name>_<version>.update`): the builder writes it, `airlock
//!   verify` and the appliance's updater read and check it;
//! - [`version`]: versions and their order (UAPI.10, systemd's), for the spec, GPT names and the
//!   updater;
//! - [`site`]: the site configuration schema (`airlock.toml` on the ESP): the builder writes the
//!   default file, the appliance reads it;
//! - [`signing`]: minisign keys and signatures and `SHA256SUMS` (the builder signs releases, the
//!   appliance will check update bundles);
//! - [`partition`]: the partition table as data (roles, types, names, sizes, filesystems, how
//!   the booted system finds each), read by the builder's plan, disk writer and generated
//!   configuration and by whatever reads an image;
//! - [`gpt`]: the GUID partition table: layout, validation, writing and reading;
//! - [`local_registry`]: where the appliance's own registry listens;
//! - [`command`] (the one way to run an external program), [`output_file`] (files that appear
//!   only complete, removed on SIGINT/SIGTERM through [`interrupt`]), [`input_file`] (inputs read
//!   as regular files, capped), [`seed`] (reproducible identifiers), [`size`] (byte sizes as people write
//!   them): building blocks.

pub mod bundle;
pub mod command;
pub mod gpt;
pub mod input_file;
pub mod interrupt;
pub mod local_registry;
pub mod output_file;
pub mod partition;
pub mod seed;
pub mod signing;
pub mod site;
pub mod size;
pub mod update_config;
pub mod version;
