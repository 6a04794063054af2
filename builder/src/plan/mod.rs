//! Validation: a raw [`Spec`] becomes a [`BuildPlan`] once, with every error naming its key.
//! Everything after this point trusts the plan.
//!
//! [`validate`] only checks and converts (containers in `containers.rs`, the mirror ecosystems'
//! sections through [`crate::mirror::validate`]); what airlock adds on its own account — the
//! registry and podman for an appliance with containers, nginx as the front door, the
//! `registry` and `mirror` services — is `policy.rs`, applied to the checked plan.

mod containers;
mod policy;

use crate::base_os::BaseOs;
use crate::mirror::{MirrorPlan, SpecContext};
use crate::outputs::{Format, VmHardware};
use crate::partition::{self, Filesystem, Role, SizeDefault};
use crate::seed::Seed;
use crate::size::{ByteSize, MIB};
use crate::spec::{DiskSpec, OsSpec, ServiceSpec, Spec, UnitsSpec, VmSpec};
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub use crate::spec::PlanError;
pub use containers::{ContainerPlan, ContainerSource};
pub use policy::{WEB_UNIT, has_front_door};

/// The lock's file name, next to the spec: where `airlock fetch` pins what it resolved.
pub const LOCK_FILE_NAME: &str = "appliance.lock";

/// The disk: its size and its partitions' in bytes, in disk order (the partition table's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    pub size: u64,
    pub partitions: Vec<PartitionSize>,
    /// A read-only root under dm-verity (the root-verity partition is among `partitions`).
    pub verity: bool,
}

/// One partition of the disk and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSize {
    pub role: Role,
    /// `None`: what the others leave (for a root-verity partition: what its root's hash tree
    /// needs).
    pub size: Option<u64>,
}

impl DiskLayout {
    /// The size `role`'s partition is built with (`None`: it is not on the disk, or takes what
    /// the others leave).
    pub fn size_of(&self, role: Role) -> Option<u64> {
        self.partitions.iter().find(|p| p.role == role).and_then(|p| p.size)
    }

    /// The roles of the disk's partitions, in disk order.
    pub fn roles(&self) -> impl Iterator<Item = Role> + Clone + '_ {
        self.partitions.iter().map(|p| p.role)
    }
}

/// A service the appliance offers: readiness waits for its unit; the banner shows its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub unit: String,
    /// `None`: waited for, not listed in the banner.
    pub url: Option<String>,
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
    pub disk: DiskLayout,
    pub overlays: Vec<PathBuf>,
    pub unit_dirs: Vec<PathBuf>,
    pub enable: Vec<String>,
    pub mask: Vec<String>,
    pub services: Vec<Service>,
    pub containers: Vec<ContainerPlan>,
    /// The Pulumi CLI, plugins and language package mirrors the appliance carries and serves:
    /// one set per ecosystem the spec configures.
    pub mirrors: MirrorPlan,
    /// Who supplies the appliance (`Organization: ...`), for the SBOM; `None`: not said.
    pub supplier: Option<String>,
    /// The spec's folder: relative sources in the lock resolve against it.
    pub spec_dir: PathBuf,
    /// `<spec dir>/appliance.lock`: the containers' pinned digests.
    pub lock_path: PathBuf,
    pub seed: Seed,
    /// The seed of the disk's identity, which outlives a version: the GUIDs of the disk and of
    /// the partitions an update keeps (the ESP, the data partition), which every version's
    /// fstab names. From the appliance's name alone, so that version N+1's root mounts the
    /// partitions version N's image made.
    pub disk_seed: Seed,
    /// What the build writes, in addition to the manifest, SBOM and SHA256SUMS.
    pub formats: Vec<Format>,
    pub vm: VmHardware,
    /// The minisign secret key that signs SHA256SUMS.
    pub signing_key: Option<PathBuf>,
    /// The updater's settings (`/usr/lib/airlock/update.toml`) and the keys, besides the release
    /// key, whose bundles the appliance accepts.
    pub update: UpdatePlan,
    /// The owner's Secure Boot keys (`PREFIX` of `airlock keygen --secure-boot`), loaded and
    /// checked by the command before the build starts.
    pub secure_boot: Option<PathBuf>,
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

/// GPT and alignment overhead: 1 MiB in front, up to 1 MiB at the back.
const GPT_OVERHEAD: u64 = 2 * MIB;
/// What a Debian appliance needs to boot to its services (and hypervisors accept).
const MIN_VM_MEMORY: u64 = 256 * MIB;
const MAX_CPUS: u32 = 256;
/// The most of a spec that is read (a real one is a few KiB).
pub const MAX_SPEC_FILE: u64 = 1 << 20;

/// Reads, parses and validates `spec_path`.
pub fn plan(spec_path: &Path, host: &HostContext) -> Result<BuildPlan> {
    let text = crate::input_file::read_capped(spec_path, MAX_SPEC_FILE, "spec")?;
    let origin = spec_path.display().to_string();
    let spec = Spec::parse(std::str::from_utf8(&text).with_context(|| format!("{origin} is not UTF-8"))?, &origin)?;
    let spec_dir = spec_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut plan = validate(spec, spec_dir, &origin, host)?;
    plan.spec_path = spec_path.to_path_buf();
    plan.spec_sha256 = hex::encode(Sha256::digest(&text));
    Ok(plan)
}

pub(super) fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Validates a parsed spec; relative paths resolve against `spec_dir`.
pub fn validate(spec: Spec, spec_dir: &Path, origin: &str, host: &HostContext) -> Result<BuildPlan, PlanError> {
    let err = |key: &str, message: String| PlanError { file: origin.to_string(), key: key.to_string(), message };
    let err: Err<'_> = &err;
    check_identity(&spec, err)?;
    let supplier = check_supplier(spec.supplier.as_deref(), err)?;
    let mirror = check_os(&spec.os, host, err)?;
    let disk = check_disk(&spec.disk, err)?;
    let confined = !spec.allow_overlays_outside_the_spec_folder;
    let dirs = |key: &str, list: &[PathBuf]| -> Result<Vec<PathBuf>, PlanError> {
        list.iter().map(|p| overlay_dir(spec_dir, p, confined).map_err(|why| err(key, why))).collect()
    };
    let overlays = dirs("overlays", &spec.overlays)?;
    let unit_dirs = dirs("units.dirs", &spec.units.dirs)?;
    check_unit_lists(&spec.units, err)?;
    let services = check_services(&spec.services, err)?;
    let formats = crate::outputs::parse_formats(&spec.outputs.formats).map_err(|m| err("outputs.formats", m))?;
    let vm = check_vm(&spec.outputs.vm, err)?;
    let signing_key = match &spec.signing.key {
        Some(k) if !spec_dir.join(k).is_file() => {
            return Err(err("signing.key", format!("{} is not a file", spec_dir.join(k).display())));
        }
        Some(k) => Some(spec_dir.join(k)),
        None => None,
    };
    let secure_boot = match &spec.signing.secure_boot {
        Some(_) if !spec.disk.verity => {
            return Err(err(
                "signing.secure_boot",
                "Secure Boot needs `[disk] verity = true`: a signed UKI over a writable root protects nothing".into(),
            ));
        }
        Some(prefix) => Some(spec_dir.join(prefix)),
        None => None,
    };
    let containers = containers::validate(&spec.containers, spec_dir, err)?;
    let mirrors = crate::mirror::validate(spec.pulumi, spec.mirrors, &SpecContext { file: origin, spec_dir })?;
    let update = check_update(&spec.update, spec_dir, err)?;

    let mut plan = BuildPlan {
        mirrors,
        spec_dir: spec_dir.to_path_buf(),
        formats,
        vm,
        signing_key,
        update,
        secure_boot,
        seed: Seed::new(format!("{}-{}", spec.name, spec.version)),
        disk_seed: Seed::new(format!("{}-disk", spec.name)),
        base: BaseOs::new(&spec.os.suite, &mirror, &spec.os.packages, &spec.os.refresh),
        name: spec.name,
        version: spec.version,
        description: spec.description,
        spec_path: PathBuf::new(),
        spec_sha256: String::new(),
        hostname: spec.os.hostname,
        kernel_cmdline: spec.os.kernel_cmdline,
        disk,
        overlays,
        unit_dirs,
        enable: spec.units.enable,
        mask: spec.units.mask,
        services,
        containers,
        supplier,
        lock_path: spec_dir.join(LOCK_FILE_NAME),
        test: None,
    };
    policy::apply(&mut plan);
    Ok(plan)
}

/// Makes the error for a key.
type Err<'a> = &'a dyn Fn(&str, String) -> PlanError;

/// The updater's settings and extra trusted keys.
#[derive(Debug, Clone, Default)]
pub struct UpdatePlan {
    pub config: airlock_common::update_config::UpdateConfig,
    pub keys: Vec<crate::signing::PublicKey>,
}

impl UpdatePlan {
    /// Every key whose bundles the image accepts: the release key (if the build is signed), then
    /// `[update] keys`, each once.
    pub fn trusted_keys(&self, release: Option<crate::signing::PublicKey>) -> Vec<crate::signing::PublicKey> {
        let mut out: Vec<crate::signing::PublicKey> = Vec::new();
        for k in release.into_iter().chain(self.keys.iter().cloned()) {
            if !out.iter().any(|o| o.key_id() == k.key_id()) {
                out.push(k);
            }
        }
        out
    }
}

/// `[update]`: tries 1-9, a deadline between a minute and a day, state directories that are
/// absolute, plain and under `/var` (not the updater's own folder), keys that are minisign
/// public keys.
fn check_update(u: &crate::spec::UpdateSpec, spec_dir: &Path, err: Err<'_>) -> Result<UpdatePlan, PlanError> {
    use airlock_common::update_config::{DEFAULT_DEADLINE_SECONDS, DEFAULT_TRIES, UpdateConfig};
    let tries = u.tries.unwrap_or(DEFAULT_TRIES);
    if !(1..=9).contains(&tries) {
        return Err(err("update.tries", format!("{tries}: a new version gets 1 to 9 boots")));
    }
    let deadline_seconds = match &u.deadline {
        None => DEFAULT_DEADLINE_SECONDS,
        Some(d) => parse_duration(d)
            .ok_or_else(|| err("update.deadline", format!("`{d}` is not a duration like 90s, 10min or 1h")))?,
    };
    if !(60..=86_400).contains(&deadline_seconds) {
        return Err(err("update.deadline", format!("{deadline_seconds} s: between 1min and 24h")));
    }
    let mut state = Vec::new();
    for s in &u.state {
        let plain = s.starts_with("/var/")
            && !s.ends_with('/')
            && s[1..].split('/').all(|c| !c.is_empty() && c != "." && c != "..")
            && !s.chars().any(|c| c.is_control() || c.is_whitespace());
        if !plain {
            return Err(err("update.state", format!("`{s}` must be a plain absolute path under /var/")));
        }
        let own = format!("{}/update", partition::STATE_DIR);
        if s == &own || s.starts_with(&format!("{own}/")) || own.starts_with(&format!("{s}/")) {
            return Err(err("update.state", format!("`{s}` holds the updater's own records ({own})")));
        }
        if state.iter().any(|o: &String| s.starts_with(&format!("{o}/")) || o.starts_with(&format!("{s}/")) || o == s) {
            return Err(err("update.state", format!("`{s}` is listed twice or inside another entry")));
        }
        state.push(s.clone());
    }
    let mut keys = Vec::new();
    for k in &u.keys {
        let path = spec_dir.join(k);
        let text = crate::input_file::read_capped_text(&path, 64 << 10, "public key")
            .map_err(|e| err("update.keys", format!("{}: {e:#}", path.display())))?;
        let key = crate::signing::PublicKey::from_file_text(&text)
            .map_err(|e| err("update.keys", format!("{} is not a minisign public key: {e:#}", path.display())))?;
        keys.push(key);
    }
    Ok(UpdatePlan { config: UpdateConfig { tries, deadline_seconds, state }, keys })
}

/// `90s`, `10min`, `2h` in seconds.
fn parse_duration(text: &str) -> Option<u64> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = text[..digits].parse().ok()?;
    let unit = match &text[digits..] {
        "s" => 1,
        "min" => 60,
        "h" => 3600,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// An overlay (or unit) folder named in the spec: a directory, inside the spec's folder unless
/// `confined` is off. Symlinks are resolved before the check, so a link in the spec's folder
/// cannot lead outside it either.
fn overlay_dir(spec_dir: &Path, p: &Path, confined: bool) -> Result<PathBuf, String> {
    let full = spec_dir.join(p);
    let shown = crate::printable::escape(&full.display().to_string()).into_owned();
    if !full.is_dir() {
        return Err(format!("{shown} is not a directory"));
    }
    if confined {
        let base = spec_dir.canonicalize().map_err(|e| format!("resolving the spec's folder: {e}"))?;
        let real = full.canonicalize().map_err(|e| format!("resolving {shown}: {e}"))?;
        if !real.starts_with(&base) {
            return Err(format!(
                "{shown} is outside the spec's folder {} (it is {}); its files would be copied from the build host into \
                 the image. Move it inside, or set allow_overlays_outside_the_spec_folder = true",
                base.display(),
                real.display()
            ));
        }
    }
    Ok(full)
}

fn check_identity(spec: &Spec, err: Err<'_>) -> Result<(), PlanError> {
    if !is_name(&spec.name, 63) {
        return Err(err("name", format!("`{}` must be 1-63 lower-case letters, digits or `-`", spec.name)));
    }
    // Compared with the running version by the updater, sorted by systemd-boot (UAPI.10).
    crate::version::Version::parse(&spec.version).map_err(|why| err("version", why))?;
    // The root partitions' GPT names (`<name>_<version>_verity` the longest) hold 36 characters.
    let longest = partition::versioned_name(&spec.name, &spec.version, partition::VERITY_SUFFIX);
    if spec.disk.verity && longest.len() > partition::GPT_NAME_MAX {
        return Err(err(
            "version",
            format!(
                "`{longest}`, the root-verity partition's GPT name, is longer than its {} characters: shorten the \
                 name or the version",
                partition::GPT_NAME_MAX
            ),
        ));
    }
    // Written into the OVF (XML, which has no way to carry most control characters) and the
    // mirror's listing page.
    if spec.description.chars().any(char::is_control) || spec.description.len() > 1000 {
        return Err(err(
            "description",
            "must be one line of at most 1000 characters, without control characters".into(),
        ));
    }
    Ok(())
}

/// `Organization: <name>` or `Person: <name>`, as SPDX writes a supplier.
fn check_supplier(supplier: Option<&str>, err: Err<'_>) -> Result<Option<String>, PlanError> {
    let Some(s) = supplier else { return Ok(None) };
    let named = ["Organization: ", "Person: "]
        .iter()
        .find_map(|prefix| s.strip_prefix(prefix))
        .is_some_and(|name| !name.trim().is_empty() && !name.chars().any(char::is_control));
    if !named {
        return Err(err("supplier", format!("`{s}` is not `Organization: <name>` or `Person: <name>` (SPDX's form)")));
    }
    Ok(Some(s.to_string()))
}

/// Checks `[os]`; returns the Debian mirror (the spec's, or the build host's).
fn check_os(os: &OsSpec, host: &HostContext, err: Err<'_>) -> Result<String, PlanError> {
    if os.suite.is_empty() || !os.suite.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        return Err(err("os.suite", format!("`{}` is not a Debian suite name", os.suite)));
    }
    let mirror = match &os.mirror {
        // mmdebstrap writes the mirror into the image's sources.list: one line, no spaces.
        Some(m) if m.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            return Err(err(
                "os.mirror",
                format!("`{}` holds a space or a control character", crate::printable::escape(m)),
            ));
        }
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
        if a.is_empty() || a.contains(char::is_whitespace) || a.contains(char::is_control) {
            return Err(err("os.kernel_cmdline", format!("`{a}` must be one argument without spaces")));
        }
        const AIRLOCKS: [&str; 6] =
            ["root=", "console=", "roothash=", "systemd.verity", "rd.systemd.verity", "usrhash="];
        if AIRLOCKS.iter().any(|p| a.starts_with(p)) || a == "rw" || a == "ro" {
            return Err(err(
                "os.kernel_cmdline",
                format!("`{a}`: airlock sets root=, roothash=, ro/rw, verity options and console= itself"),
            ));
        }
    }
    if !os.hostname.split('.').all(|label| is_name(label, 63)) || os.hostname.len() > 253 {
        return Err(err("os.hostname", format!("`{}` is not a valid host name", os.hostname)));
    }
    Ok(mirror)
}

/// `[disk]`: each partition of the table sized as the spec says or by the table's default, at
/// least the table's (and its filesystem's) minimum, and all of them within the disk.
fn check_disk(d: &DiskSpec, err: Err<'_>) -> Result<DiskLayout, PlanError> {
    let mut partitions = Vec::new();
    let mut need = GPT_OVERHEAD;
    let mut parts = Vec::new();
    for def in partition::TABLE.iter().filter(|def| def.role.present(d.verity)) {
        let key = format!("disk.{}", def.size.spec_key);
        let size = match (d.size_of(def.role), def.size.default) {
            (Some(s), _) => Some(s.bytes()),
            (None, SizeDefault::Bytes(b)) => Some(b),
            (None, SizeDefault::Rest | SizeDefault::HashTreeOfRoot | SizeDefault::SlotA) => None,
            (None, SizeDefault::Required) => {
                return Err(err(&key, format!("must be set: the {} partition's size", def.role)));
            }
        };
        let fs_minimum = match def.filesystem {
            Filesystem::Fat32 { .. } => Some(("FAT32's minimum", crate::fat::min_fat32_size())),
            Filesystem::Ext4 { .. } | Filesystem::VerityHashTree => None,
        };
        let (whose, minimum) = match fs_minimum {
            Some((whose, m)) if m > def.size.minimum => (whose, m),
            _ => ("the minimum", def.size.minimum),
        };
        if let Some(s) = size
            && s < minimum
        {
            return Err(err(&key, format!("{} is below {whose} of {}", ByteSize(s), ByteSize(minimum))));
        }
        // No size may exceed the largest disk: then the sum cannot overflow either.
        if let Some(s) = size
            && s > crate::disk::MAX_DISK
        {
            return Err(err(&key, too_large(s)));
        }
        // A hash tree needs about 1/127 of its root: counted with the root's least size. Slot B
        // counts as much as slot A.
        let root_least = d.root_size.map_or(partition::ROOT_A.size.minimum, |s| s.bytes());
        let least = match def.size.default {
            SizeDefault::HashTreeOfRoot => gpt_align(crate::verity::hash_region_len(root_least)),
            SizeDefault::SlotA if def.filesystem == Filesystem::VerityHashTree => {
                gpt_align(crate::verity::hash_region_len(root_least))
            }
            SizeDefault::SlotA => root_least,
            _ => minimum,
        };
        need = need
            .checked_add(size.unwrap_or(least))
            .ok_or_else(|| err("disk.size", "the partition sizes add up past what a 64-bit size holds".into()))?;
        parts.push(format!("{} {}", def.role, ByteSize(size.unwrap_or(least))));
        partitions.push(PartitionSize { role: def.role, size });
    }
    if d.size.bytes() > crate::disk::MAX_DISK {
        return Err(err("disk.size", too_large(d.size.bytes())));
    }
    if d.size.bytes() < need {
        return Err(err(
            "disk.size",
            format!("{} cannot hold {} + GPT; it must be at least {}", d.size, parts.join(" + "), ByteSize(need)),
        ));
    }
    Ok(DiskLayout { size: d.size.bytes(), partitions, verity: d.verity })
}

fn gpt_align(size: u64) -> u64 {
    crate::gpt::align_up(size, crate::gpt::ALIGN)
}

fn too_large(size: u64) -> String {
    format!("{} is larger than the largest disk airlock builds ({})", ByteSize(size), ByteSize(crate::disk::MAX_DISK))
}

/// `name` as a unit name systemd accepts (see [`crate::unit_name`]), or the error for `key`.
fn check_unit_name(key: &str, name: &str, allow_template: bool, err: Err<'_>) -> Result<(), PlanError> {
    match crate::unit_name::problem(name, allow_template) {
        None => Ok(()),
        Some(why) => Err(err(key, format!("`{}` is not a systemd unit name: {why}", crate::printable::escape(name)))),
    }
}

fn check_unit_lists(units: &UnitsSpec, err: Err<'_>) -> Result<(), PlanError> {
    for (key, list) in [("units.enable", &units.enable), ("units.mask", &units.mask)] {
        for u in list {
            check_unit_name(key, u, true, err)?;
        }
    }
    Ok(())
}

/// A service's URL as the banner shows it: `http://` or `https://`, then printable characters
/// without spaces (the banner's services file is space-separated, one service per line). The
/// placeholders `{address}`, `{domain}` and `{hostname}` are filled in at boot.
fn url_problem(url: &str) -> Option<&'static str> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Some("it must start with http:// or https://");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("it holds a space or a control character");
    }
    if url.len() > 2048 {
        return Some("it is longer than 2048 characters");
    }
    let host = url.split("://").nth(1).unwrap_or("");
    if host.is_empty() || host.starts_with('/') {
        return Some("it names no host");
    }
    None
}

fn check_services(list: &[ServiceSpec], err: Err<'_>) -> Result<Vec<Service>, PlanError> {
    let mut services: Vec<Service> = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let key = |k: &str| format!("services[{i}].{k}");
        if !is_name(&s.name, 32) {
            return Err(err(&key("name"), format!("`{}` must be lower-case letters, digits or `-`", s.name)));
        }
        if services.iter().any(|x| x.name == s.name) {
            return Err(err(&key("name"), format!("`{}` is listed twice", s.name)));
        }
        check_unit_name(&key("unit"), &s.unit, false, err)?;
        if let Some(url) = &s.url
            && let Some(why) = url_problem(url)
        {
            return Err(err(&key("url"), format!("`{}` is not a URL: {why}", crate::printable::escape(url))));
        }
        services.push(Service { name: s.name.clone(), unit: s.unit.clone(), url: s.url.clone() });
    }
    Ok(services)
}

fn check_vm(vm: &VmSpec, err: Err<'_>) -> Result<VmHardware, PlanError> {
    if !(1..=MAX_CPUS).contains(&vm.cpus) {
        return Err(err("outputs.vm.cpus", format!("{} must be 1 to {MAX_CPUS}", vm.cpus)));
    }
    if vm.memory.bytes() < MIN_VM_MEMORY || vm.memory.bytes() % MIB != 0 {
        return Err(err(
            "outputs.vm.memory",
            format!("{} must be whole MiB and at least {}", vm.memory, ByteSize(MIN_VM_MEMORY)),
        ));
    }
    Ok(VmHardware { cpus: vm.cpus, memory_mib: vm.memory.bytes() / MIB })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::SourceKind;

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
        assert_eq!(p.disk_seed, Seed::new("demo-disk"), "the disk's identity does not change with the version");
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
        // Secure Boot over a writable root protects nothing: refused, naming the setting.
        let p = with("[signing]\nsecure_boot = \"keys/owner\"").unwrap();
        assert!(p.disk.verity && p.secure_boot.is_some_and(|k| k.ends_with("keys/owner")));
        let writable = check(&format!(
            "{}\n[signing]\nsecure_boot = \"keys/owner\"",
            GOOD.replace("[disk]", "[disk]\nverity = false")
        ))
        .unwrap_err();
        assert_eq!(writable.key, "signing.secure_boot", "{writable}");
        assert!(writable.message.contains("needs `[disk] verity = true`"), "{writable}");
        let p = check(&GOOD.replace("[disk]", "[disk]\nverity = false")).unwrap();
        assert!(!p.disk.roles().any(|r| matches!(r, Role::RootVerity(_))), "no hash tree without verity");
        for arg in ["roothash=00", "ro", "systemd.verity=0"] {
            let e = check(&GOOD.replace("packages = [", &format!("kernel_cmdline = [\"{arg}\"]\npackages = [")))
                .unwrap_err();
            assert_eq!(e.key, "os.kernel_cmdline", "{arg}: {e}");
        }
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
        let without_data = GOOD.replace("data_size = \"256MiB\"\n", "");
        assert_eq!(check(&without_data).unwrap_err().key, "disk.data_size");
        let cmdline = GOOD.replace("packages = [", "kernel_cmdline = [\"root=/dev/sda\"]\npackages = [");
        assert_eq!(check(&cmdline).unwrap_err().key, "os.kernel_cmdline");
        let overlay = GOOD.replace("[os]", "overlays = [\"no-such-dir\"]\n[os]");
        assert_eq!(check(&overlay).unwrap_err().key, "overlays");
        let supplier = |s: &str| check(&GOOD.replace("[os]", &format!("supplier = \"{s}\"\n[os]")));
        assert_eq!(
            supplier("Organization: Example Corp").unwrap().supplier.as_deref(),
            Some("Organization: Example Corp")
        );
        assert_eq!(
            supplier("Person: Jane Doe (jane@example.test)").unwrap().supplier.as_deref(),
            Some("Person: Jane Doe (jane@example.test)")
        );
        for bad in ["Example Corp", "Organization: ", "Tool: airlock"] {
            assert_eq!(supplier(bad).unwrap_err().key, "supplier", "{bad}");
        }
        assert_eq!(check(GOOD).unwrap().supplier, None);
    }

    /// `[disk]` sizes follow the partition table: its defaults, its minimums (and FAT32's), and
    /// a disk that must hold them all.
    #[test]
    fn disk_sizes_follow_the_partition_table() {
        let p = check(GOOD).unwrap();
        let sizes: Vec<(Role, Option<u64>)> = p.disk.partitions.iter().map(|p| (p.role, p.size)).collect();
        assert_eq!(
            sizes,
            [
                (Role::Esp, Some(256 * MIB)),
                (Role::Root(partition::Slot::A), None),
                (Role::RootVerity(partition::Slot::A), None),
                (Role::Root(partition::Slot::B), None),
                (Role::RootVerity(partition::Slot::B), None),
                (Role::Data, Some(256 * MIB))
            ]
        );
        assert_eq!((p.disk.size, p.disk.size_of(Role::Data)), (2048 * MIB, Some(256 * MIB)));
        let small_esp = check(&GOOD.replace("[disk]", "[disk]\nesp_size = \"8MiB\"")).unwrap_err();
        assert!(small_esp.message.contains("below FAT32's minimum"), "{small_esp}");
        let small_disk = check(&GOOD.replace("size = \"2GiB\"", "size = \"300MiB\"")).unwrap_err();
        assert!(
            small_disk.message.contains(
                "cannot hold esp 256MiB + root-x86-64 256MiB + root-x86-64-verity 3MiB + root-x86-64-b 256MiB + \
                 root-x86-64-verity-b 3MiB + data 256MiB + GPT; it must be at least 1.0GiB"
            ),
            "{small_disk}"
        );
        // Without verity: one root slot, no hash tree.
        let plain = check(&GOOD.replace("[disk]", "[disk]\nverity = false")).unwrap();
        let roles: Vec<Role> = plain.disk.partitions.iter().map(|p| p.role).collect();
        assert_eq!(roles, [Role::Esp, Role::Root(partition::Slot::A), Role::Data]);
        // A long name and version do not fit the root-verity partition's GPT name.
        let long = check(&GOOD.replace("name = \"demo\"", "name = \"pulumi-self-hosted-appliance\"")).unwrap_err();
        assert_eq!(long.key, "version", "{long}");
        assert!(long.message.contains("longer than its 36 characters"), "{long}");
        let not_comparable = check(&GOOD.replace("version = \"1.0.0\"", "version = \"v1\"")).unwrap_err();
        assert!(not_comparable.message.contains("must start with a digit"), "{not_comparable}");
    }

    /// `[update]`: defaults, bounds, state paths and keys, each refusal naming its key.
    #[test]
    fn update_settings_are_checked() {
        let d = check(GOOD).unwrap().update;
        assert_eq!((d.config.tries, d.config.deadline_seconds, d.config.state.len(), d.keys.len()), (3, 1800, 0, 0));
        let with = |body: &str| check(&format!("{GOOD}\n[update]\n{body}\n"));
        let u =
            with("tries = 1\ndeadline = \"10min\"\nstate = [\"/var/lib/airlock/containers/storage/volumes\"]").unwrap();
        assert_eq!((u.update.config.tries, u.update.config.deadline_seconds), (1, 600));
        for (body, key, why) in [
            ("tries = 0", "update.tries", "1 to 9"),
            ("tries = 10", "update.tries", "1 to 9"),
            ("deadline = \"10 minutes\"", "update.deadline", "not a duration"),
            ("deadline = \"5s\"", "update.deadline", "between 1min and 24h"),
            ("state = [\"/etc/db\"]", "update.state", "under /var/"),
            ("state = [\"/var/lib/../etc\"]", "update.state", "plain absolute path"),
            ("state = [\"/var/lib/airlock\"]", "update.state", "the updater's own records"),
            ("state = [\"/var/lib/db\", \"/var/lib/db/x\"]", "update.state", "inside another entry"),
            ("keys = [\"no-such.pub\"]", "update.keys", "no-such.pub"),
        ] {
            let e = with(body).map(|_| ()).unwrap_err();
            assert!(e.key == key && e.message.contains(why), "{body}: {e}");
        }
        let unknown = Spec::parse(&format!("{GOOD}\n[update]\nreboot = \"now\"\n"), "a.toml").unwrap_err();
        assert!(unknown.to_string().contains("unknown field `reboot`"), "{unknown}");
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
