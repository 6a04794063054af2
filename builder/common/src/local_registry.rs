//! The appliance's own container registry as both sides see it: the builder configures it and
//! points podman's `registries.conf` at it; first boot gives podman its credentials.

/// The port the registry listens on, on the appliance (TLS, the instance's registry user only).
pub const PORT: u16 = 5000;
