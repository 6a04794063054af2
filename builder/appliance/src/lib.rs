//! airlock-appliance: the program that runs on the appliance, installed in every image as
//! `/usr/bin/airlock`. It shares formats and building blocks with the builder through
//! `airlock-common` and links none of the builder's online code (registry client, mirror
//! resolvers, package-manager drivers): what runs on the appliance is small and offline.
//!
//! - [`firstboot`]: `airlock firstboot`, the instance's provisioning on every boot (site
//!   configuration, identity, secrets, TLS);
//! - [`update`]: `airlock update apply|status`, offline A/B updates from a signed bundle;
//! - [`install`]: `airlock install`, booted from a stick, installing onto an internal disk;
//! - [`cli`]: the command line.

pub mod cli;
pub mod firstboot;
pub mod install;
pub mod update;
