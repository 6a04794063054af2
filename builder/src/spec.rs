//! `appliance.toml`: the one declarative input, as written by the user.
//!
//! These types mirror the file exactly (`deny_unknown_fields` everywhere, so a typo is an error
//! that names the key, never a silently ignored setting). [`crate::plan`] validates a [`Spec`]
//! once into a [`crate::plan::BuildPlan`]; nothing downstream reads the raw spec.

use crate::partition::{Role, Slot};
use crate::size::ByteSize;
use serde::Deserialize;
use std::path::PathBuf;

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
    /// after airlock's own `overlay/`.
    #[serde(default)]
    pub overlays: Vec<PathBuf>,
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
    /// Container images the appliance carries, pinned in `appliance.lock` by `airlock fetch`.
    #[serde(default)]
    pub containers: Vec<ContainerSpec>,
    /// The Pulumi CLI the appliance installs and serves, and the plugins it mirrors.
    #[serde(default)]
    pub pulumi: Option<PulumiSpec>,
    /// Language package mirrors the appliance serves.
    #[serde(default)]
    pub mirrors: MirrorsSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PulumiSpec {
    /// The CLI version (`3.140.0`), as in the release file names.
    pub version: String,
    /// The release's `pulumi-<version>-checksums.txt` (URL or path relative to the spec); every
    /// archive's SHA-256 is checked against it too, and it is served next to them.
    #[serde(default)]
    pub checksums: Option<String>,
    /// One release archive per platform the enclave uses.
    pub archives: Vec<PulumiArchiveSpec>,
    #[serde(default)]
    pub plugins: Vec<PulumiPluginSpec>,
    /// The backend the appliance's own CLI logs in to (`PULUMI_BACKEND_URL`).
    #[serde(default)]
    pub backend_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PulumiArchiveSpec {
    /// `linux-x64`, `linux-arm64`, `darwin-x64`, `darwin-arm64` or `windows-x64`.
    pub platform: String,
    /// Where the archive is: an http(s) URL or a path relative to the spec.
    pub source: String,
    /// Its SHA-256 (64 hex characters).
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PulumiPluginSpec {
    /// `resource`, `language`, `analyzer`, `converter` or `tool`.
    pub kind: String,
    pub name: String,
    /// Without the `v` (`6.66.0`).
    pub version: String,
    /// `<os>-<arch>` as in plugin file names: `linux-amd64`, `darwin-arm64`, `windows-amd64`...
    pub platforms: Vec<String>,
    /// Where `pulumi-<kind>-<name>-v<version>-<os>-<arch>.tar.gz` is: an http(s) URL prefix or a
    /// folder relative to the spec. Default: Pulumi's official plugin download location.
    #[serde(default = "default_plugin_source")]
    pub source: String,
}

/// The official plugin download location: the one registry host airlock knows, as the
/// documented default of `[[pulumi.plugins]] source`.
pub const OFFICIAL_PLUGIN_SOURCE: &str = "https://get.pulumi.com/releases/plugins";

fn default_plugin_source() -> String {
    OFFICIAL_PLUGIN_SOURCE.to_string()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorsSpec {
    #[serde(default)]
    pub pypi: Option<PypiSpec>,
    #[serde(default)]
    pub npm: Option<NpmSpec>,
    #[serde(default)]
    pub go: Option<GoSpec>,
    #[serde(default)]
    pub nuget: Option<NugetSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PypiSpec {
    /// Requirement specifiers as pip takes them (`pulumi>=3`, `requests==2.32.3`).
    pub requirements: Vec<String>,
    /// Target Python versions (`3.11`): each is resolved on its own.
    pub python_versions: Vec<String>,
    /// Target platform tags as pip takes them (`manylinux2014_x86_64`, `win_amd64`,
    /// `macosx_11_0_arm64`); pure-Python wheels come along for every target.
    pub platforms: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NpmSpec {
    /// Package specs as npm takes them (`@pulumi/pulumi`, `typescript@5.6.3`).
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoSpec {
    /// `module@version` (`github.com/pulumi/pulumi/sdk/v3@v3.140.0`).
    pub modules: Vec<String>,
    /// The module proxy to fetch from: an http(s) URL, a folder in the GOPROXY layout relative
    /// to the spec, or `host` for the first proxy URL of the build host's `go env GOPROXY`.
    pub proxy: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NugetSpec {
    /// `Id@Version` (`Pulumi@3.71.0`).
    pub packages: Vec<String>,
    /// A NuGet v3 service index URL (`https://host/v3/index.json`), or a folder relative to the
    /// spec in the flat container layout (`<id>/<version>/<id>.<version>.nupkg`, lower case).
    pub source: String,
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
pub struct SigningSpec {
    /// minisign secret key (relative to the spec) that signs `SHA256SUMS`; `--sign-key`
    /// overrides it. An encrypted key's passphrase comes from `AIRLOCK_KEY_PASSPHRASE` or a
    /// prompt.
    #[serde(default)]
    pub key: Option<PathBuf>,
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
    /// The root filesystem; default: what the ESP and data partition leave.
    #[serde(default)]
    pub root_size: Option<ByteSize>,
    /// The data partition as built; it grows to fill the disk on first boot.
    #[serde(default)]
    pub data_size: Option<ByteSize>,
}

impl DiskSpec {
    /// The size the spec sets for `role`'s partition (under the table's `spec_key`).
    pub fn size_of(&self, role: Role) -> Option<ByteSize> {
        match role {
            Role::Esp => self.esp_size,
            Role::Root(Slot::A) => self.root_size,
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

    /// Every size key the partition table names is a `[disk]` key of the spec, read for its role.
    #[test]
    fn the_partition_tables_size_keys_are_disk_keys() {
        for (i, def) in crate::partition::TABLE.iter().enumerate() {
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
