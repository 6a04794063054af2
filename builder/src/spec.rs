//! `appliance.toml`: the one declarative input, as written by the user.
//!
//! These types mirror the file exactly (`deny_unknown_fields` everywhere, so a typo is an error
//! that names the key, never a silently ignored setting). [`crate::plan`] validates a [`Spec`]
//! once into a [`crate::plan::BuildPlan`]; nothing downstream reads the raw spec.

use crate::partition::{Role, Slot};
use crate::size::ByteSize;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// A spec value that is not acceptable: the file, the key (`mirrors.pypi.platforms`,
/// `containers[1].image`) and why. Validation ([`crate::plan`] and the mirror ecosystems it asks)
/// returns it; it lives here, beside the file's types, so that every layer that checks a part
/// of the spec can name the key without importing the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    pub file: String,
    pub key: String,
    pub message: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: `{}`: {}", self.file, self.key, self.message)
    }
}

impl std::error::Error for PlanError {}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Appliance name: lower-case letters, digits and `-`; names the output files.
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    pub os: OsSpec,
    pub disk: DiskSpec,
    /// Folders (relative to the spec) copied into the root filesystem at their target paths,
    /// after airlock's own `overlay/`. They must lie inside the spec's folder.
    #[serde(default)]
    pub overlays: Vec<PathBuf>,
    /// Lets `overlays` and `units.dirs` name folders outside the spec's folder (`/etc`,
    /// `../shared`): their contents are copied into the image as they are on the build host.
    #[serde(default)]
    pub allow_overlays_outside_the_spec_folder: bool,
    #[serde(default)]
    pub units: UnitsSpec,
    /// What the console banner lists once the appliance is ready, and what readiness waits for.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Which files the build writes besides the raw image's companions.
    #[serde(default)]
    pub outputs: OutputsSpec,
    #[serde(default)]
    pub signing: SigningSpec,
    /// Offline updates: how long and how often a new version may try to become ready, which
    /// state directories are saved before it first runs, which keys besides the release key
    /// may sign its bundles.
    #[serde(default)]
    pub update: UpdateSpec,
    /// Container images the appliance carries, pinned in `appliance.lock` by `airlock fetch`.
    #[serde(default)]
    pub containers: Vec<ContainerSpec>,
    /// The Pulumi CLI the appliance installs and serves, and the plugins it mirrors: the
    /// `pulumi` mirror ecosystem's section, whose keys `mirror/pulumi.rs` owns and checks.
    #[serde(default)]
    pub pulumi: Option<toml::Value>,
    /// Language package mirrors the appliance serves, `[mirrors.<ecosystem>]`: each section's
    /// keys are owned and checked by its ecosystem in `mirror/` (an unknown ecosystem is an
    /// error there, naming the ones airlock has).
    #[serde(default)]
    pub mirrors: BTreeMap<String, toml::Value>,
    /// Who supplies the appliance (`Organization: Example Corp (ops@example.com)` or `Person:
    /// ...`): the SBOM's supplier of the appliance, its partitions and what it redistributes.
    #[serde(default)]
    pub supplier: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsSpec {
    /// Any of `raw`, `raw.zst`, `qcow2`, `vmdk`, `ova`; all derived from the one raw image.
    #[serde(default = "default_formats")]
    pub formats: Vec<String>,
    /// The virtual machine an OVA describes.
    #[serde(default)]
    pub vm: VmSpec,
}

impl Default for OutputsSpec {
    fn default() -> Self {
        Self { formats: default_formats(), vm: VmSpec::default() }
    }
}

fn default_formats() -> Vec<String> {
    vec!["raw".to_string()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
}

impl Default for VmSpec {
    fn default() -> Self {
        Self { cpus: default_cpus(), memory: default_memory() }
    }
}

fn default_cpus() -> u32 {
    2
}

fn default_memory() -> ByteSize {
    ByteSize(2 * crate::size::GIB)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    /// Boots a new version gets to reach `airlock-ready.target` before the appliance goes
    /// back to the version it came from (1-9; default 3).
    #[serde(default)]
    pub tries: Option<u32>,
    /// How long one boot of a new version may take to become ready (`90s`, `10min`, `1h`;
    /// default 30min).
    #[serde(default)]
    pub deadline: Option<String>,
    /// The stack's state directories (absolute, under `/var`): saved before a new version first
    /// starts the stack, restored if the appliance rolls back.
    #[serde(default)]
    pub state: Vec<String>,
    /// minisign public keys (relative to the spec) whose bundles the appliance accepts besides
    /// the release key's.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSpec {
    /// minisign secret key (relative to the spec) that signs `SHA256SUMS`; `--sign-key`
    /// overrides it. An encrypted key's passphrase comes from `AIRLOCK_KEY_PASSPHRASE` or a
    /// prompt.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The owner's Secure Boot keys (`PREFIX` of `airlock keygen --secure-boot --out PREFIX`,
    /// relative to the spec): signs systemd-boot and the UKI with `PREFIX.db.key` and puts
    /// the `.auth` files on the ESP for enrollment. `--secure-boot-key` overrides it. Needs
    /// `[disk] verity`.
    #[serde(default)]
    pub secure_boot: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsSpec {
    /// Debian suite (codename), e.g. `trixie`.
    pub suite: String,
    /// Debian archive to install from; default: the one the build host's apt uses.
    #[serde(default)]
    pub mirror: Option<String>,
    /// Packages on top of airlock's base set.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Extra kernel command-line arguments (root, console and first-boot ones are airlock's).
    #[serde(default)]
    pub kernel_cmdline: Vec<String>,
    pub hostname: String,
    /// Change to rebuild the cached base OS from the archive as it is now (e.g. a date).
    #[serde(default)]
    pub refresh: String,
}

/// `[disk]`: the image's size and its partitions'. A size left out takes the default of the
/// partition table (`airlock_common::partition`), which also says which sizes are required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// The whole image.
    pub size: ByteSize,
    /// The EFI system partition.
    #[serde(default)]
    pub esp_size: Option<ByteSize>,
    /// Each root slot (with verity, slots A and B are the same size: an update's root must fit
    /// it, so leave room for growth); default: what the ESP and data partition leave, shared
    /// by the slots and their hash trees.
    #[serde(default)]
    pub root_size: Option<ByteSize>,
    /// The data partition as built; it grows to fill the disk on first boot.
    #[serde(default)]
    pub data_size: Option<ByteSize>,
    /// A read-only root under dm-verity, its root hash in the UKI's command line, and a second,
    /// empty root slot for updates (the default). `false`, for development only: a writable
    /// root, no verity partition and no second slot (no updates).
    #[serde(default = "default_true")]
    pub verity: bool,
}

fn default_true() -> bool {
    true
}

impl DiskSpec {
    /// The size the spec sets for `role`'s partition (under the table's `spec_key`).
    pub fn size_of(&self, role: Role) -> Option<ByteSize> {
        match role {
            Role::Esp => self.esp_size,
            Role::Root(Slot::A) => self.root_size,
            // Slot B is sized like slot A; a hash tree like its root.
            Role::Root(Slot::B) | Role::RootVerity(_) => None,
            Role::Data => self.data_size,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitsSpec {
    /// Folders (relative to the spec) of unit files installed to `/usr/lib/systemd/system`,
    /// after airlock's own `systemd/`.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Units to enable (by their `[Install]` sections), in addition to airlock's own.
    #[serde(default)]
    pub enable: Vec<String>,
    /// Units to mask.
    #[serde(default)]
    pub mask: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Banner label (`<name>: <url>`).
    pub name: String,
    /// The systemd unit that provides it; readiness waits for it.
    pub unit: String,
    /// URL shown in the banner; `{address}` becomes the appliance's IPv4 address at boot. A
    /// service without one is waited for but not listed (a database, a migration job).
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Local name (lower-case letters, digits, `-`): names the container's unit and banner line.
    pub name: String,
    /// The image's reference as podman would resolve it (`docker.io/pulumi/service:1.2.3`); the
    /// appliance's units keep it as written.
    pub image: String,
    /// Where `airlock fetch` gets the image: `registry` (the reference's registry), or
    /// `oci:<dir>[:<name>]`, `oci-archive:<file>[:<name>]`, `docker-archive:<file>[:<tag>]`
    /// relative to the spec.
    #[serde(default = "default_container_source")]
    pub source: String,
}

fn default_container_source() -> String {
    "registry".to_string()
}

impl Spec {
    /// Parses TOML text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {}", e.to_string().trim_end()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "demo"
version = "1.0.0"
[os]
suite = "trixie"
hostname = "demo"
[disk]
size = "2GiB"
data_size = "256MiB"
"#;

    #[test]
    fn minimal_spec_parses_with_defaults() {
        let s = Spec::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!((s.disk.esp_size, s.disk.root_size), (None, None));
        assert!(s.overlays.is_empty() && s.services.is_empty());
        assert_eq!(s.outputs.formats, vec!["raw"]);
        assert_eq!((s.outputs.vm.cpus, s.outputs.vm.memory), (2, ByteSize(2 << 30)));
        assert!(s.signing.key.is_none());
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let text = MINIMAL.replace("hostname = \"demo\"", "hostname = \"demo\"\nhostnme = \"x\"");
        let err = Spec::parse(&text, "images/x/appliance.toml").unwrap_err().to_string();
        assert!(err.starts_with("images/x/appliance.toml:"), "{err}");
        assert!(err.contains("unknown field `hostnme`"), "{err}");
    }

    /// Every size key the partition table names is a `[disk]` key of the spec, read for its role
    /// (a hash tree's size follows its root: no key sets it).
    #[test]
    fn the_partition_tables_size_keys_are_disk_keys() {
        let keyed = crate::partition::TABLE.iter().filter(|d| !d.size.spec_key.is_empty());
        for (i, def) in keyed.enumerate() {
            let size = format!("{}MiB", 300 + i);
            let text = MINIMAL.replace("data_size = \"256MiB\"", &format!("{} = \"{size}\"", def.size.spec_key));
            let s = Spec::parse(&text, "t.toml").unwrap();
            assert_eq!(s.disk.size_of(def.role), Some(size.parse().unwrap()), "{}", def.size.spec_key);
        }
    }

    #[test]
    fn bad_sizes_name_the_value() {
        let text = MINIMAL.replace("\"2GiB\"", "\"2 parsecs\"");
        let err = Spec::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("invalid size `2 parsecs`"), "{err}");
    }
}
