//! airlock-common: what the builder (`airlock`, on the build host) and the appliance's own
//! program (`airlock-appliance`, installed in every image as `/usr/bin/airlock`) share. Nothing
//! here reaches a network.
//!
//! - [`site`]: the site configuration schema (`airlock.toml` on the ESP): the builder writes the
//!   default file, the appliance reads it.

pub mod site;
