//! Validation: a raw [`Spec`] becomes a [`BuildPlan`] once, with every error naming its key.
//! Everything after this point trusts the plan.

use crate::base_os::BaseOs;
use crate::oci::{ImageReference, ImageSource, SourceKind};
use crate::outputs::{Format, VmHardware};
use crate::seed::Seed;
use crate::size::{ByteSize, MIB};
use crate::spec::Spec;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

/// A spec value that is not acceptable.
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

/// Sizes of the disk and its partitions, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSizes {
    pub size: u64,
    pub esp: u64,
    /// `None`: what the others leave.
    pub root: Option<u64>,
    pub data: u64,
}

/// A service the appliance offers: readiness waits for its unit; the banner shows its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub unit: String,
    /// `None`: waited for, not listed in the banner.
    pub url: Option<String>,
}

/// A container image the appliance carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    /// Local name: names the container's unit and banner line.
    pub name: String,
    /// The image's reference as the spec wrote it (`mysql:8.0`): what the appliance's units
    /// name, for podman to resolve through the appliance's registries.conf.
    pub image: String,
    /// The same reference, normalized (`docker.io/library/mysql:8.0`): what the lock records.
    pub reference: ImageReference,
    pub source: ContainerSource,
}

/// Where `airlock fetch` gets a container image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerSource {
    /// The registry the reference names, over the distribution protocol.
    Registry,
    /// An OCI layout, OCI archive or docker-archive on the build host.
    Local {
        /// The path resolved against the spec's folder.
        source: ImageSource,
        /// As the spec wrote it (relative to the spec): what the lock file records, so it stays
        /// valid wherever the checkout is.
        written: String,
    },
}

impl ContainerSource {
    /// The spec's syntax: `registry`, `oci:<dir>[:<name>]`, `oci-archive:<file>[:<name>]`,
    /// `docker-archive:<file>[:<tag>]`. The first `:` after the transport ends the path.
    pub fn parse(text: &str, spec_dir: &Path) -> Result<Self, String> {
        if text == "registry" {
            return Ok(Self::Registry);
        }
        let Some((transport, rest)) = text.split_once(':') else {
            return Err(format!(
                "`{text}` is not `registry`, `oci:<dir>`, `oci-archive:<file>` or `docker-archive:<file>`"
            ));
        };
        let kind = match transport {
            "oci" => SourceKind::OciLayout,
            "oci-archive" => SourceKind::OciArchive,
            "docker-archive" => SourceKind::DockerArchive,
            other => {
                return Err(format!(
                    "`{other}` is not a source airlock reads (use registry, oci, oci-archive or docker-archive)"
                ));
            }
        };
        let (path, select) = match rest.split_once(':') {
            Some((path, select)) => (path, Some(select)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(format!("`{text}` names no path"));
        }
        if select == Some("") {
            return Err(format!("`{text}` ends in `:` but names no image after it"));
        }
        let source = ImageSource { kind, path: spec_dir.join(path), select: select.map(str::to_string) };
        Ok(Self::Local { source, written: text.to_string() })
    }
}

impl fmt::Display for ContainerSource {
    /// As the spec wrote it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Registry => f.write_str("registry"),
            Self::Local { written, .. } => f.write_str(written),
        }
    }
}

/// A test build: a production spec with some container images replaced by TEST STAND-INS
/// (`crate::test_spec`). Announced by the build, recorded in the manifest; never signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestBuild {
    /// The production spec the test spec builds (its overlays, units and settings, unchanged).
    pub production_spec: PathBuf,
    pub production_spec_sha256: String,
    pub stand_ins: Vec<StandIn>,
}

/// A container image a test build replaces: its reference stays (so the units run as in
/// production), its source is the stand-in's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandIn {
    pub container: String,
    /// The normalized reference the stand-in plays (`docker.io/pulumi/service:latest`).
    pub reference: String,
    /// The stand-in's source, as the test spec wrote it.
    pub source: String,
}

/// Everything a build needs, validated.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    pub name: String,
    pub version: String,
    pub description: String,
    pub spec_path: PathBuf,
    pub spec_sha256: String,
    pub base: BaseOs,
    pub hostname: String,
    pub kernel_cmdline: Vec<String>,
    pub disk: DiskSizes,
    pub overlays: Vec<PathBuf>,
    pub unit_dirs: Vec<PathBuf>,
    pub enable: Vec<String>,
    pub mask: Vec<String>,
    pub services: Vec<Service>,
    pub containers: Vec<ContainerPlan>,
    /// The Pulumi CLI, plugins and language package mirrors the appliance carries and serves.
    pub mirrors: crate::mirror::MirrorPlan,
    /// The spec's folder: relative sources in the lock resolve against it.
    pub spec_dir: PathBuf,
    /// `<spec dir>/appliance.lock`: the containers' pinned digests.
    pub lock_path: PathBuf,
    pub seed: Seed,
    /// What the build writes, in addition to the manifest, SBOM and SHA256SUMS.
    pub formats: Vec<Format>,
    pub vm: VmHardware,
    /// The minisign secret key that signs SHA256SUMS.
    pub signing_key: Option<PathBuf>,
    /// `Some` for a test spec's build: which images are stand-ins.
    pub test: Option<TestBuild>,
}

/// Facts of the build host the plan may default to.
#[derive(Debug, Clone)]
pub struct HostContext {
    /// Normally `/etc/apt`: where the default Debian mirror comes from.
    pub etc_apt: PathBuf,
}

impl Default for HostContext {
    fn default() -> Self {
        Self { etc_apt: PathBuf::from("/etc/apt") }
    }
}

/// Packages an appliance with container images needs: the registry that serves them and the
/// runtime that runs them (netavark needs nftables for its firewall rules, and aardvark-dns to
/// let containers find each other by name).
const CONTAINER_PACKAGES: &[&str] = &["docker-registry", "podman", "netavark", "aardvark-dns", "nftables"];

/// Debian's nginx flavours: any of them is the front door.
const WEB_SERVERS: &[&str] = &["nginx", "nginx-light", "nginx-full", "nginx-extras", "nginx-core"];

/// Smallest data partition the ext4 writer and first boot's growth are happy with.
const MIN_DATA: u64 = 32 * MIB;
/// Smallest root partition worth building.
const MIN_ROOT: u64 = 256 * MIB;
/// GPT and alignment overhead: 1 MiB in front, up to 1 MiB at the back.
const GPT_OVERHEAD: u64 = 2 * MIB;
/// What a Debian appliance needs to boot to its services (and hypervisors accept).
const MIN_VM_MEMORY: u64 = 256 * MIB;
const MAX_CPUS: u32 = 256;
const UNIT_SUFFIXES: &[&str] = &[".service", ".target", ".socket", ".timer", ".mount", ".path", ".automount", ".slice"];

/// Reads, parses and validates `spec_path`.
pub fn plan(spec_path: &Path, host: &HostContext) -> Result<BuildPlan> {
    let text = std::fs::read(spec_path).with_context(|| format!("reading {}", spec_path.display()))?;
    let origin = spec_path.display().to_string();
    let spec = Spec::parse(std::str::from_utf8(&text).with_context(|| format!("{origin} is not UTF-8"))?, &origin)?;
    let spec_dir = spec_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut plan = validate(spec, spec_dir, &origin, host)?;
    plan.spec_path = spec_path.to_path_buf();
    plan.spec_sha256 = hex::encode(Sha256::digest(&text));
    Ok(plan)
}

fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Validates a parsed spec; relative paths resolve against `spec_dir`.
pub fn validate(spec: Spec, spec_dir: &Path, origin: &str, host: &HostContext) -> Result<BuildPlan, PlanError> {
    let err = |key: &str, message: String| PlanError { file: origin.to_string(), key: key.to_string(), message };

    if !is_name(&spec.name, 63) {
        return Err(err("name", format!("`{}` must be 1-63 lower-case letters, digits or `-`", spec.name)));
    }
    if spec.version.is_empty() || !spec.version.chars().all(|c| c.is_ascii_alphanumeric() || "._+-~".contains(c)) {
        return Err(err("version", format!("`{}` must be letters, digits and . _ + - ~", spec.version)));
    }
    let os = &spec.os;
    if os.suite.is_empty() || !os.suite.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        return Err(err("os.suite", format!("`{}` is not a Debian suite name", os.suite)));
    }
    let mirror = match &os.mirror {
        Some(m) if m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file:/") => {
            m.trim_end_matches('/').to_string()
        }
        Some(m) => return Err(err("os.mirror", format!("`{m}` is not an http(s):// or file:/ URL"))),
        None => {
            crate::apt_sources::host_debian_mirror(&host.etc_apt).map_err(|e| err("os.mirror", format!("{e:#}")))?
        }
    };
    for p in &os.packages {
        let ok = p.len() >= 2
            && p.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
        if !ok {
            return Err(err("os.packages", format!("`{p}` is not a Debian package name")));
        }
    }
    for a in &os.kernel_cmdline {
        if a.is_empty() || a.contains(char::is_whitespace) {
            return Err(err("os.kernel_cmdline", format!("`{a}` must be one argument without spaces")));
        }
        if a.starts_with("root=") || a.starts_with("console=") {
            return Err(err("os.kernel_cmdline", format!("`{a}`: airlock sets root= and console= itself")));
        }
    }
    if !os.hostname.split('.').all(|label| is_name(label, 63)) || os.hostname.len() > 253 {
        return Err(err("os.hostname", format!("`{}` is not a valid host name", os.hostname)));
    }

    let d = &spec.disk;
    let esp_min = crate::fat::min_fat32_size();
    if d.esp_size.bytes() < esp_min {
        return Err(err("disk.esp_size", format!("{} is below FAT32's minimum of {}", d.esp_size, ByteSize(esp_min))));
    }
    if d.data_size.bytes() < MIN_DATA {
        return Err(err("disk.data_size", format!("{} is below the minimum of {}", d.data_size, ByteSize(MIN_DATA))));
    }
    if let Some(r) = d.root_size
        && r.bytes() < MIN_ROOT
    {
        return Err(err("disk.root_size", format!("{r} is below the minimum of {}", ByteSize(MIN_ROOT))));
    }
    let root_need = d.root_size.map_or(MIN_ROOT, ByteSize::bytes);
    let need = d.esp_size.bytes() + root_need + d.data_size.bytes() + GPT_OVERHEAD;
    if d.size.bytes() < need {
        return Err(err(
            "disk.size",
            format!(
                "{} cannot hold esp {} + root {} + data {} + GPT; it must be at least {}",
                d.size,
                d.esp_size,
                ByteSize(root_need),
                d.data_size,
                ByteSize(need)
            ),
        ));
    }

    let dir_list = |key: &str, list: &[PathBuf]| -> Result<Vec<PathBuf>, PlanError> {
        list.iter()
            .map(|p| {
                let full = spec_dir.join(p);
                if full.is_dir() { Ok(full) } else { Err(err(key, format!("{} is not a directory", full.display()))) }
            })
            .collect()
    };
    let overlays = dir_list("overlays", &spec.overlays)?;
    let unit_dirs = dir_list("units.dirs", &spec.units.dirs)?;
    for (key, list) in [("units.enable", &spec.units.enable), ("units.mask", &spec.units.mask)] {
        for u in list {
            if !UNIT_SUFFIXES.iter().any(|s| u.ends_with(s)) || u.contains('/') {
                return Err(err(key, format!("`{u}` is not a systemd unit name")));
            }
        }
    }
    let mut services = Vec::new();
    for (i, s) in spec.services.iter().enumerate() {
        let key = |k: &str| format!("services[{i}].{k}");
        if !is_name(&s.name, 32) {
            return Err(err(&key("name"), format!("`{}` must be lower-case letters, digits or `-`", s.name)));
        }
        if services.iter().any(|x: &Service| x.name == s.name) {
            return Err(err(&key("name"), format!("`{}` is listed twice", s.name)));
        }
        if !UNIT_SUFFIXES.iter().any(|x| s.unit.ends_with(x)) {
            return Err(err(&key("unit"), format!("`{}` is not a systemd unit name", s.unit)));
        }
        if let Some(url) = &s.url
            && !url.contains("://")
        {
            return Err(err(&key("url"), format!("`{url}` is not a URL")));
        }
        services.push(Service { name: s.name.clone(), unit: s.unit.clone(), url: s.url.clone() });
    }

    let formats = crate::outputs::parse_formats(&spec.outputs.formats).map_err(|m| err("outputs.formats", m))?;
    let vm = &spec.outputs.vm;
    if !(1..=MAX_CPUS).contains(&vm.cpus) {
        return Err(err("outputs.vm.cpus", format!("{} must be 1 to {MAX_CPUS}", vm.cpus)));
    }
    if vm.memory.bytes() < MIN_VM_MEMORY || vm.memory.bytes() % MIB != 0 {
        return Err(err(
            "outputs.vm.memory",
            format!("{} must be whole MiB and at least {}", vm.memory, ByteSize(MIN_VM_MEMORY)),
        ));
    }
    let signing_key = match &spec.signing.key {
        Some(k) => {
            let full = spec_dir.join(k);
            if !full.is_file() {
                return Err(err("signing.key", format!("{} is not a file", full.display())));
            }
            Some(full)
        }
        None => None,
    };
    let containers = validate_containers(&spec.containers, spec_dir, &err)?;
    let mirrors = crate::mirror::plan::validate(spec.pulumi.as_ref(), &spec.mirrors, spec_dir, &err)?;
    // An appliance that carries container images serves them from its own registry (and runs
    // them with podman): both come with the base OS, and the registry is one of its services.
    let mut packages = os.packages.clone();
    if !containers.is_empty() {
        packages.extend(CONTAINER_PACKAGES.iter().map(|p| p.to_string()));
        if !services.iter().any(|s| s.name == "registry") {
            services.push(Service {
                name: "registry".into(),
                unit: "docker-registry.service".into(),
                url: Some("https://registry.{domain}/".into()),
            });
        }
    }

    // nginx is the front door of an appliance with a registry or mirrors: the CA over plain
    // HTTP (`/ca.crt`), TLS with the instance's certificate for `registry.<domain>`, and the
    // mirrors on 80 and 443 (`front_door.rs`).
    let mut enable = spec.units.enable;
    if !containers.is_empty() || !mirrors.is_empty() {
        if !packages.iter().any(|p| WEB_SERVERS.contains(&p.as_str())) {
            packages.push("nginx-light".to_string());
        }
        if !enable.iter().any(|u| u == crate::front_door::WEB_UNIT) {
            enable.push(crate::front_door::WEB_UNIT.to_string());
        }
    }
    if !mirrors.is_empty() && !services.iter().any(|s| s.name == "mirror") {
        services.push(Service {
            name: "mirror".into(),
            unit: crate::front_door::WEB_UNIT.into(),
            url: Some("http://{address}/".into()),
        });
    }

    Ok(BuildPlan {
        mirrors,
        spec_dir: spec_dir.to_path_buf(),
        formats,
        vm: VmHardware { cpus: vm.cpus, memory_mib: vm.memory.bytes() / MIB },
        signing_key,
        seed: Seed::new(format!("{}-{}", spec.name, spec.version)),
        base: BaseOs::new(&os.suite, &mirror, &packages, &os.refresh),
        name: spec.name,
        version: spec.version,
        description: spec.description,
        spec_path: PathBuf::new(),
        spec_sha256: String::new(),
        hostname: spec.os.hostname,
        kernel_cmdline: spec.os.kernel_cmdline,
        disk: DiskSizes {
            size: d.size.bytes(),
            esp: d.esp_size.bytes(),
            root: d.root_size.map(ByteSize::bytes),
            data: d.data_size.bytes(),
        },
        overlays,
        unit_dirs,
        enable,
        mask: spec.units.mask,
        services,
        containers,
        lock_path: spec_dir.join(crate::lock::LOCK_FILE_NAME),
        test: None,
    })
}

fn validate_containers(
    list: &[crate::spec::ContainerSpec],
    spec_dir: &Path,
    err: &dyn Fn(&str, String) -> PlanError,
) -> Result<Vec<ContainerPlan>, PlanError> {
    let mut containers: Vec<ContainerPlan> = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let key = |k: &str| format!("containers[{i}].{k}");
        if !is_name(&c.name, 63) {
            return Err(err(&key("name"), format!("`{}` must be 1-63 lower-case letters, digits or `-`", c.name)));
        }
        if containers.iter().any(|x| x.name == c.name) {
            return Err(err(&key("name"), format!("`{}` is listed twice", c.name)));
        }
        let reference = ImageReference::parse(&c.image).map_err(|e| err(&key("image"), e.to_string()))?;
        let source = ContainerSource::parse(&c.source, spec_dir).map_err(|e| err(&key("source"), e))?;
        // One reference is one image on the appliance's registry; two sources for it would make
        // which one it serves depend on the order of the list.
        if let Some(other) = containers.iter().find(|x| x.reference == reference && x.source != source) {
            return Err(err(
                &key("image"),
                format!(
                    "`{reference}` is also container `{}`'s image, from source `{}`; one reference needs one source",
                    other.name, other.source
                ),
            ));
        }
        containers.push(ContainerPlan { name: c.name.clone(), image: c.image.clone(), reference, source });
    }
    Ok(containers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "demo"
version = "1.0.0"
[os]
suite = "trixie"
mirror = "http://mirror.example/debian/"
hostname = "demo.local"
packages = ["nginx-light"]
[disk]
size = "2GiB"
data_size = "256MiB"
[[services]]
name = "web"
unit = "nginx.service"
url = "http://{address}/"
"#;

    fn check(text: &str) -> Result<BuildPlan, PlanError> {
        let spec = Spec::parse(text, "a.toml").unwrap();
        validate(spec, Path::new("."), "a.toml", &HostContext { etc_apt: PathBuf::from("/nonexistent") })
    }

    #[test]
    fn good_spec_validates() {
        let p = check(GOOD).unwrap();
        assert_eq!(p.base.mirror, "http://mirror.example/debian");
        assert!(p.base.packages.contains(&"nginx-light".to_string()));
        assert!(p.base.packages.contains(&"systemd".to_string()));
        assert_eq!(p.seed, Seed::new("demo-1.0.0"));
        assert_eq!(p.formats, vec![Format::Raw]);
        assert_eq!(p.vm, VmHardware { cpus: 2, memory_mib: 2048 });
    }

    #[test]
    fn outputs_and_signing_validate_and_name_their_keys() {
        let with = |extra: &str| check(&format!("{GOOD}\n{extra}"));
        let p = with("[outputs]\nformats = [\"qcow2\", \"ova\"]\n[outputs.vm]\ncpus = 4\nmemory = \"4GiB\"").unwrap();
        assert_eq!(p.formats, vec![Format::Qcow2, Format::Ova]);
        assert_eq!(p.vm, VmHardware { cpus: 4, memory_mib: 4096 });
        let cases = [
            ("[outputs]\nformats = [\"iso\"]", "outputs.formats"),
            ("[outputs]\nformats = []", "outputs.formats"),
            ("[outputs]\nformats = [\"raw\", \"raw\"]", "outputs.formats"),
            ("[outputs.vm]\ncpus = 0", "outputs.vm.cpus"),
            ("[outputs.vm]\nmemory = \"100MiB\"", "outputs.vm.memory"),
            ("[signing]\nkey = \"no-such.key\"", "signing.key"),
        ];
        for (extra, key) in cases {
            let e = with(extra).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
        let typo = Spec::parse(&format!("{GOOD}\n[outputs]\nformat = [\"raw\"]"), "a.toml").unwrap_err();
        assert!(typo.to_string().contains("unknown field `format`"), "{typo}");
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases = [
            ("name = \"demo\"", "name = \"Demo!\"", "name"),
            ("suite = \"trixie\"", "suite = \"Trixie 13\"", "os.suite"),
            ("mirror = \"http://mirror.example/debian/\"", "mirror = \"ftp://x\"", "os.mirror"),
            ("mirror = \"http://mirror.example/debian/\"\n", "", "os.mirror"),
            ("packages = [\"nginx-light\"]", "packages = [\"nginx light\"]", "os.packages"),
            ("hostname = \"demo.local\"", "hostname = \"-bad\"", "os.hostname"),
            ("size = \"2GiB\"", "size = \"300MiB\"", "disk.size"),
            ("data_size = \"256MiB\"", "data_size = \"1MiB\"", "disk.data_size"),
            ("data_size = \"256MiB\"", "data_size = \"256MiB\"\nesp_size = \"8MiB\"", "disk.esp_size"),
            ("unit = \"nginx.service\"", "unit = \"nginx\"", "services[0].unit"),
            ("url = \"http://{address}/\"", "url = \"nowhere\"", "services[0].url"),
        ];
        for (from, to, key) in cases {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "replacement of `{from}` did not apply");
            let e = check(&text).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
        let with_root = GOOD.replace("[disk]", "[disk]\nroot_size = \"10MiB\"");
        assert_eq!(check(&with_root).unwrap_err().key, "disk.root_size");
        let cmdline = GOOD.replace("packages = [", "kernel_cmdline = [\"root=/dev/sda\"]\npackages = [");
        assert_eq!(check(&cmdline).unwrap_err().key, "os.kernel_cmdline");
        let overlay = GOOD.replace("[os]", "overlays = [\"no-such-dir\"]\n[os]");
        assert_eq!(check(&overlay).unwrap_err().key, "overlays");
    }

    const CONTAINERS: &str = r#"
[[containers]]
name = "db"
image = "mysql:8.0"

[[containers]]
name = "api"
image = "docker.io/pulumi/service:1.2.3"
source = "registry"

[[containers]]
name = "web"
image = "localhost/demo/web:1"
source = "docker-archive:images/web.tar:localhost/demo/web:1"
"#;

    #[test]
    fn containers_validate_with_normalized_references_and_sources() {
        let p = check(&format!("{GOOD}{CONTAINERS}")).unwrap();
        let names: Vec<&str> = p.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["db", "api", "web"]);
        assert_eq!(p.containers[0].reference.to_string(), "docker.io/library/mysql:8.0");
        assert_eq!(p.containers[0].image, "mysql:8.0");
        assert_eq!(p.containers[0].source, ContainerSource::Registry);
        let ContainerSource::Local { source, written } = &p.containers[2].source else { panic!("local source") };
        assert_eq!(source.kind, SourceKind::DockerArchive);
        assert_eq!(source.path, Path::new("./images/web.tar"));
        assert_eq!(source.select.as_deref(), Some("localhost/demo/web:1"));
        assert_eq!(written, "docker-archive:images/web.tar:localhost/demo/web:1");
        assert_eq!(p.containers[2].source.to_string(), *written);
        assert_eq!(p.lock_path, Path::new("./appliance.lock"));
    }

    #[test]
    fn bad_containers_name_their_key() {
        let all = format!("{GOOD}{CONTAINERS}");
        let cases = [
            ("name = \"db\"", "name = \"DB\"", "containers[0].name"),
            ("name = \"web\"\nimage", "name = \"db\"\nimage", "containers[2].name"),
            ("image = \"mysql:8.0\"", "image = \"MySQL:8.0\"", "containers[0].image"),
            ("image = \"mysql:8.0\"", "image = \"mysql:\"", "containers[0].image"),
            ("image = \"mysql:8.0\"", "image = \"mysql@sha256:123\"", "containers[0].image"),
            ("source = \"registry\"", "source = \"docker:x\"", "containers[1].source"),
            ("source = \"registry\"", "source = \"oci:\"", "containers[1].source"),
            ("source = \"registry\"", "source = \"oci:dir:\"", "containers[1].source"),
            ("source = \"registry\"", "source = \"registery\"", "containers[1].source"),
            ("image = \"localhost/demo/web:1\"", "image = \"mysql:8.0\"", "containers[2].image"),
        ];
        for (from, to, key) in cases {
            let text = all.replacen(from, to, 1);
            assert_ne!(text, all, "replacement of `{from}` did not apply");
            let e = check(&text).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
        let typo = all.replacen("name = \"api\"", "name = \"api\"\nimage_ref = \"x\"", 1);
        let e = Spec::parse(&typo, "a.toml").unwrap_err().to_string();
        assert!(e.contains("unknown field `image_ref`"), "{e}");
    }
}
