//! The command line: one subcommand per verb, each a thin call into the library.

use crate::clock::BuildClock;
use crate::disk::PartitionRequest;
use crate::outputs::Format;
use crate::partition::{Role, SizeDefault, Slot};
use crate::pipeline::{DiskJob, DiskRelease};
use crate::seed::Seed;
use crate::size::ByteSize;
use crate::tree::{self, Tree};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

/// Parses the command line, sets up logging and runs the command: the whole `airlock` binary.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mode = crate::progress::Mode::choose(cli.json, cli.quiet);
    crate::progress::install(mode);
    let level = match (cli.verbose, mode) {
        // On a pipe, the stage lines are the log: one per stage and one per item.
        (0, crate::progress::Mode::Quiet | crate::progress::Mode::Json | crate::progress::Mode::Plain) => "warn",
        (0, _) => "info",
        (1, _) => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .target(env_logger::Target::Pipe(Box::new(crate::progress::LogWriter)))
        .format(|out, record| {
            use std::io::Write;
            // Messages quote inputs (paths, entry names, values): no control byte of theirs
            // reaches the terminal.
            let text = record.args().to_string();
            writeln!(out, "[{}] {}", record.level(), crate::printable::escape_keeping_lines(&text))
        })
        .init();
    if let Err(err) = crate::interrupt::install() {
        log::warn!("{err:#}: an interrupted run may leave .partial files for the next one to remove");
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            let text = format!("{err:#}");
            eprintln!("error: {}", crate::printable::escape_keeping_lines(&text));
            std::process::ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "airlock",
    version,
    about = "Builds signed, bootable appliance disk images for air-gapped networks",
    after_help = "Exit status: 0 success, 1 failure, 2 usage error. Results go to stdout; progress, \
                  warnings and errors to stderr (with --json, events go to stdout, one JSON object a line)."
)]
pub struct Cli {
    /// More output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Print only the result (and warnings and errors, on stderr).
    #[arg(short, long, global = true, conflicts_with = "json")]
    pub quiet: bool,
    /// Print one JSON event per line on stdout (stage started and finished, progress, item,
    /// result), for CI systems; warnings and errors stay on stderr.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an appliance image from its spec (images/<name>/appliance.toml).
    Build(BuildArgs),
    /// Resolve the spec's container images, download them into the cache and pin them in
    /// appliance.lock next to the spec (the online side; `build` then needs no network).
    Fetch(FetchArgs),
    /// Assemble a GPT disk image from filesystem trees (directories or tar archives).
    Disk(DiskArgs),
    /// Create an Ed25519 signing key pair in minisign's formats (PREFIX.key, PREFIX.pub), or with
    /// --secure-boot the owner's UEFI Secure Boot keys (PK, KEK, db).
    Keygen(KeygenArgs),
    /// Check a release: its signature, every checksum, and inside the image the partition
    /// table and each partition against the manifest.
    Verify(VerifyArgs),
    /// Write an image to a USB stick or disk (or a file), after verifying its signature;
    /// reads it back and compares.
    Flash(FlashArgs),
    /// Say where two raw images differ: partition table, partitions, and files inside ext4.
    Diff(DiffArgs),
    /// Say what an image, a stick or a release directory holds, without booting it: name,
    /// version, architecture, kernel, partitions, signature, container images, mirrors, the
    /// Pulumi CLI and which site settings are set (names only). Update bundles (.update) do not
    /// exist yet.
    Inspect(InspectArgs),
    /// Print a shell completion script (bash, zsh, fish) on stdout.
    Completions(CompletionsArgs),
    /// Print airlock's man page (roff) on stdout, or with --dir write airlock.1 and one
    /// airlock-COMMAND.1 per command there.
    Man(ManArgs),
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write the pages into this folder (e.g. /usr/local/share/man/man1) instead.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A raw image, a whole-disk device (/dev/sdX, opened read-only) or a release directory.
    #[arg(value_name = "IMAGE|DEVICE|RELEASE-DIR")]
    pub path: PathBuf,
    /// Check the release's signature with this public key (a minisign .pub file or its base64
    /// line), and every checksum.
    #[arg(long, value_name = "PREFIX.pub|KEY")]
    pub pubkey: Option<String>,
    /// List every mirrored package, not only the counts per ecosystem.
    #[arg(long)]
    pub list: bool,
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// An output directory (everything in SHA256SUMS is checked) or one image in it (that
    /// image and the manifest are checked).
    pub path: PathBuf,
    /// The public key: a minisign .pub file or its one-line base64 form.
    #[arg(long, value_name = "PREFIX.pub|KEY")]
    pub pubkey: String,
    /// Fail when the directory holds files that SHA256SUMS does not list (otherwise a warning
    /// names them).
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, clap::Args)]
pub struct FlashArgs {
    /// The image (.raw or .raw.zst) or an output directory holding one.
    pub image: PathBuf,
    /// The target: a whole-disk block device (e.g. /dev/sdb) or an existing file.
    pub device: PathBuf,
    /// The public key the release must be signed with (needed unless --no-verify).
    #[arg(long, value_name = "PREFIX.pub|KEY", required_unless_present = "no_verify")]
    pub pubkey: Option<String>,
    /// Write without checking the signature and checksums first.
    #[arg(long)]
    pub no_verify: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Make the stick an installer: booted, it installs the appliance onto this disk of the
    /// host (`auto`: its only internal disk large enough; or /dev/disk/by-id/...). Sets
    /// `[install] disk` in the stick's airlock.toml.
    #[arg(long, value_name = "auto|/dev/disk/by-id/...")]
    pub install_to: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    pub a: PathBuf,
    pub b: PathBuf,
    /// At most this many differing paths are listed per partition.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Writes PREFIX.key (secret) and PREFIX.pub (public); refuses to overwrite either.
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
    /// Leave the secret key unencrypted (otherwise the passphrase comes from
    /// $AIRLOCK_KEY_PASSPHRASE or a prompt).
    #[arg(long, conflicts_with = "secure_boot")]
    pub no_passphrase: bool,
    /// Make the owner's Secure Boot keys instead: PREFIX.{PK,KEK,db}.{key,crt,cer,esl,auth}
    /// (RSA-2048, unencrypted PEM keys; the .auth files are what systemd-boot enrolls).
    #[arg(long)]
    pub secure_boot: bool,
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The appliance spec, or a test spec (a production spec with TEST STAND-INS for some of
    /// its container images: never signed, marked in its version and manifest).
    #[arg(default_value = "images/demo/appliance.toml")]
    pub spec: PathBuf,
    /// Where the image and its companions go.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Only validate the spec (and everything it refers to), build nothing.
    #[arg(long)]
    pub check: bool,
    /// Apply this folder last, for test images only (the VM tests' command channel).
    #[arg(long, value_name = "DIR")]
    pub test_overlay: Vec<PathBuf>,
    /// Output formats, instead of the spec's `[outputs] formats`: raw, raw.zst, qcow2, vmdk, ova.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub format: Vec<String>,
    /// Sign SHA256SUMS with this minisign secret key (instead of the spec's `[signing] key`).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Sign the boot loader and the UKI with the owner's Secure Boot keys
    /// (`PREFIX` of `airlock keygen --secure-boot --out PREFIX`; instead of the spec's
    /// `[signing] secure_boot`).
    #[arg(long, value_name = "PREFIX")]
    pub secure_boot_key: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// The appliance spec, or a test spec (a production spec with TEST STAND-INS for some of
    /// its container images: never signed, marked in its version and manifest).
    #[arg(default_value = "images/demo/appliance.toml")]
    pub spec: PathBuf,
    /// Re-resolve tags and re-read local sources instead of keeping the lock's digests.
    #[arg(long)]
    pub update: bool,
    /// Reach this registry (`host` or `host:port`) over plain HTTP. localhost and 127.0.0.1
    /// always are.
    #[arg(long, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// Contact HOST[:PORT] for images whose reference names DOMAIN (e.g. a company mirror, or
    /// the API host of docker.io, which airlock does not build in).
    #[arg(long, value_name = "DOMAIN=HOST", value_parser = parse_mirror)]
    pub registry_mirror: Vec<(String, String)>,
}

fn parse_mirror(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((domain, host)) if !domain.is_empty() && !host.is_empty() && !host.contains('/') => {
            Ok((domain.to_string(), host.to_string()))
        }
        _ => Err(format!("`{s}` is not DOMAIN=HOST[:PORT]")),
    }
}

#[derive(Debug, clap::Args)]
pub struct DiskArgs {
    /// Size of the whole image (e.g. 512MiB, 2GiB).
    #[arg(long)]
    pub size: ByteSize,
    /// Seed every GUID, volume id and hash seed derives from.
    #[arg(long)]
    pub seed: String,
    /// Contents of the EFI system partition: a directory or a tar (plain, gzip, zstd).
    #[arg(long, value_name = "DIR|TAR")]
    pub esp: PathBuf,
    /// Size of the EFI system partition (default: 256MiB, or the whole disk when it is the only
    /// partition).
    #[arg(long, value_name = "SIZE")]
    pub esp_size: Option<ByteSize>,
    /// Contents of the root partition (ext4): a directory or a tar (plain, gzip, zstd).
    #[arg(long, value_name = "DIR|TAR")]
    pub root: Option<PathBuf>,
    /// Size of the root partition (default: what the other partitions leave).
    #[arg(long, value_name = "SIZE", requires = "root")]
    pub root_size: Option<ByteSize>,
    /// Add an empty ext4 data partition of this size (last on the disk).
    #[arg(long, value_name = "SIZE")]
    pub data: Option<ByteSize>,
    /// Also write these formats (raw, raw.zst, qcow2, vmdk, ova), manifest.json, the SBOM and
    /// SHA256SUMS next to OUT, as `airlock build` does.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub format: Vec<String>,
    /// Sign SHA256SUMS with this minisign secret key (implies the companions of --format).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// The version the manifest records for the image (with --format or --sign-key).
    #[arg(long, value_name = "VERSION", default_value = "0")]
    pub image_version: String,
    /// The image file to write (sparse). It appears only once complete.
    pub out: PathBuf,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build(args) => run_build(args),
        Command::Fetch(args) => run_fetch(args),
        Command::Disk(args) => run_disk(args),
        Command::Keygen(args) => run_keygen(args),
        Command::Verify(args) => run_verify(args),
        Command::Flash(args) => run_flash(args),
        Command::Diff(args) => run_diff(args),
        Command::Inspect(args) => run_inspect(args),
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut cmd, "airlock", &mut std::io::stdout());
            Ok(())
        }
        Command::Man(args) => run_man(args),
    }
}

/// The man pages, from the same clap definition as the parser (so they cannot drift from it).
fn run_man(args: ManArgs) -> Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(dir) = args.dir else {
        return clap_mangen::Man::new(cmd).render(&mut std::io::stdout()).context("writing the man page");
    };
    let mut pages = vec![("airlock.1".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("airlock-{}", sub.get_name());
        pages.push((format!("{name}.1"), sub.clone().name(name)));
    }
    for (file, page) in pages {
        let mut text = Vec::new();
        clap_mangen::Man::new(page).render(&mut text).context("rendering a man page")?;
        let path = dir.join(&file);
        crate::manifest::write_text(&path, &String::from_utf8_lossy(&text))?;
        crate::progress::result(&path.display().to_string());
    }
    Ok(())
}

fn run_inspect(args: InspectArgs) -> Result<()> {
    let key = args.pubkey.as_deref().map(crate::signing::read_public_key).transpose()?;
    let found = crate::artifact::inspect(&args.path, key.as_ref(), args.list)?;
    if crate::progress::mode() == crate::progress::Mode::Json {
        println!("{}", serde_json::to_string(&found).context("serialising the inspection")?);
    } else {
        print!("{found}");
    }
    // A signature that does not verify is a failure, as `airlock verify` says.
    if let crate::artifact::Signature::Signed { verified: Some(v), .. } = &found.signature
        && !v.ok
    {
        anyhow::bail!("{} does not verify with the key given", args.path.display());
    }
    Ok(())
}

/// A multi-line result, one [`crate::progress::result`] per line (one JSON event each with
/// `--json`).
fn results(text: &str) {
    text.lines().for_each(crate::progress::result);
}

/// Unlocks a secret key (asking for its passphrase only if it is encrypted).
fn signing_key(path: &Path) -> Result<crate::signing::KeyPair> {
    crate::signing::read_secret_key(path, || passphrase(false))
}

fn formats(names: &[String]) -> Result<Option<Vec<Format>>> {
    if names.is_empty() {
        return Ok(None);
    }
    crate::outputs::parse_formats(names).map(Some).map_err(|m| anyhow::anyhow!("--format: {m}"))
}

fn run_verify(args: VerifyArgs) -> Result<()> {
    let key = crate::signing::read_public_key(&args.pubkey)?;
    let report = crate::verify::verify(&args.path, &key, &crate::verify::VerifyOptions { strict: args.strict })?;
    results(&report.to_string());
    Ok(())
}

fn run_flash(args: FlashArgs) -> Result<()> {
    let key = match (&args.pubkey, args.no_verify) {
        (_, true) => None,
        (Some(k), false) => Some(crate::signing::read_public_key(k)?),
        (None, false) => anyhow::bail!("--pubkey is needed to verify the image (or --no-verify)"),
    };
    let opts = crate::flash::FlashOptions { pubkey: key, assume_yes: args.yes, install_to: args.install_to };
    let report = crate::flash::flash(&args.image, &args.device, &opts)?;
    results(&report.to_string());
    Ok(())
}

fn run_diff(args: DiffArgs) -> Result<()> {
    let report = crate::diff::diff(&args.a, &args.b, args.limit)?;
    results(&report.to_string());
    if !report.identical() {
        anyhow::bail!("{} and {} differ", args.a.display(), args.b.display());
    }
    Ok(())
}

/// The environment variable a key's passphrase may come from (for unattended builds).
pub const PASSPHRASE_ENV: &str = "AIRLOCK_KEY_PASSPHRASE";

/// A passphrase from the environment, or asked on the terminal (`confirm`: twice).
pub fn passphrase(confirm: bool) -> Result<String> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(p);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        anyhow::bail!("no passphrase: set {PASSPHRASE_ENV} (or use --no-passphrase when creating a key)");
    }
    let first = rpassword::prompt_password("key passphrase: ").context("reading the passphrase")?;
    if confirm {
        let again = rpassword::prompt_password("again: ").context("reading the passphrase")?;
        anyhow::ensure!(first == again, "the two passphrases differ");
    }
    Ok(first)
}

fn run_keygen(args: KeygenArgs) -> Result<()> {
    if args.secure_boot {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the system clock is before 1970")?;
        for path in crate::secure_boot::generate(&args.out, now.as_secs() as i64)? {
            crate::progress::result(&path.display().to_string());
        }
        return Ok(());
    }
    let pass = if args.no_passphrase { None } else { Some(passphrase(true)?) };
    let kp = crate::signing::generate()?;
    crate::signing::write_key_pair(&kp, &args.out, pass.as_deref())?;
    let encrypted = if pass.is_some() { " (encrypted)" } else { "" };
    crate::progress::result(&format!("secret key: {}.key{encrypted}", args.out.display()));
    crate::progress::result(&format!("public key: {}.pub", args.out.display()));
    crate::progress::result(&crate::signing::public_key_line(&kp));
    Ok(())
}

fn run_build(args: BuildArgs) -> Result<()> {
    let plan = crate::test_spec::plan_spec_or_test_spec(&args.spec, &crate::plan::HostContext::default())?;
    // The Secure Boot keys are checked before anything is built (and by --check): missing,
    // mismatched or expired keys are an error naming the file.
    let secure_boot = secure_boot_keys(args.secure_boot_key.as_deref(), &plan)?;
    if args.check {
        let notes = crate::pipeline::check(&plan)?;
        crate::progress::result(&format!("{}: {} {} is valid", args.spec.display(), plan.name, plan.version));
        if let Some(test) = &plan.test {
            crate::progress::result(&format!("  TEST SPEC of {}: not a release", test.production_spec.display()));
            for s in &test.stand_ins {
                crate::progress::result(&format!(
                    "  TEST STAND-IN: {} ({}) from {}",
                    s.reference, s.container, s.source
                ));
            }
        }
        for note in notes {
            crate::progress::result(&format!("  note: {note}"));
        }
        return Ok(());
    }
    for dir in &args.test_overlay {
        anyhow::ensure!(dir.is_dir(), "--test-overlay {} is not a directory", dir.display());
    }
    // The key is unlocked before anything is built: a wrong passphrase should cost seconds.
    let key_path = args.sign_key.as_deref().or(plan.signing_key.as_deref());
    let signing_key = key_path.map(signing_key).transpose()?;
    let opts = crate::pipeline::BuildOptions {
        out_dir: args.out,
        cache_dir: crate::cache::cache_dir()?,
        clock: BuildClock::from_env()?,
        test_overlays: args.test_overlay,
        formats: formats(&args.format)?,
        signing_key,
        appliance: crate::pipeline::ApplianceProgram::NextToExecutable,
        secure_boot,
    };
    let report = crate::pipeline::build(&plan, &opts)?;
    crate::progress::result(&format!(
        "{} ({}, kernel {}, {} packages)",
        report.image.display(),
        ByteSize(report.size),
        report.kernel,
        report.packages.len()
    ));
    print_released(&report.released);
    Ok(())
}

/// The owner's Secure Boot keys a build signs with: `--secure-boot-key`, else the spec's
/// `[signing] secure_boot`; loaded and checked now (expiry against the real clock).
fn secure_boot_keys(
    flag: Option<&Path>,
    plan: &crate::plan::BuildPlan,
) -> Result<Option<crate::secure_boot::OwnerKeys>> {
    let Some(prefix) = flag.or(plan.secure_boot.as_deref()) else { return Ok(None) };
    let setting = if flag.is_some() { "--secure-boot-key" } else { "[signing] secure_boot" };
    anyhow::ensure!(
        plan.disk.verity,
        "{setting} {}: Secure Boot needs `[disk] verity = true` (a signed UKI over a writable root protects nothing)",
        prefix.display()
    );
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).context("reading the clock")?;
    let keys = crate::secure_boot::OwnerKeys::load(prefix, now.as_secs() as i64)
        .with_context(|| format!("{setting} {}", prefix.display()))?;
    Ok(Some(keys))
}

/// One line per released file (`<kind> <path>`), then the checksums and signature.
fn print_released(released: &crate::release::Released) {
    for (kind, path) in &released.files {
        crate::progress::result(&format!("  {kind:<9} {}", path.display()));
    }
    crate::progress::result(&format!("  {:<9} {}", "sums", released.sums.display()));
    match &released.signature {
        Some(sig) => crate::progress::result(&format!("  {:<9} {}", "signature", sig.display())),
        None => crate::progress::result("  (unsigned: pass --sign-key or set [signing] key to sign SHA256SUMS)"),
    }
}

fn run_fetch(args: FetchArgs) -> Result<()> {
    let plan = crate::test_spec::plan_spec_or_test_spec(&args.spec, &crate::plan::HostContext::default())?;
    let opts = crate::fetch::FetchOptions {
        cache_dir: crate::cache::cache_dir()?,
        update: args.update,
        registry: crate::fetch::registry::RegistryOptions {
            insecure: args.insecure_registry,
            mirrors: args.registry_mirror.into_iter().collect(),
            credentials: crate::fetch::credentials::Credentials::from_env(),
            limits: Default::default(),
        },
    };
    // Each container and mirror set was shown as it finished (`progress::item`); the lock is
    // the result.
    let report = crate::fetch::fetch(&plan, &opts)?;
    crate::progress::result(&format!(
        "{}: {} ({} downloaded)",
        report.lock_path.display(),
        if report.lock_changed { "written" } else { "unchanged" },
        ByteSize(report.downloaded_bytes)
    ));
    Ok(())
}

fn spool_dir(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A tree from a folder or tar that goes to a partition of `capacity` bytes.
fn load(input: &Path, spool: &Path, capacity: u64) -> Result<Tree> {
    let mut t = Tree::new();
    tree::apply_path(&mut t, input, spool, capacity).with_context(|| format!("loading {}", input.display()))?;
    Ok(t)
}

fn run_disk(args: DiskArgs) -> Result<()> {
    let clock = BuildClock::from_env()?;
    let spool = spool_dir(&args.out);
    if !spool.is_dir() {
        anyhow::bail!("output directory {} does not exist", spool.display());
    }
    crate::output_file::clean_stale(&spool)?;
    let formats = formats(&args.format)?;
    let key = args.sign_key.as_deref().map(signing_key).transpose()?;
    let release = match (formats, key) {
        (None, None) => None,
        (formats, signing_key) => Some(DiskRelease {
            appliance: crate::manifest::Appliance {
                name: release_name(&args.out)?,
                version: args.image_version.clone(),
                description: String::new(),
                supplier: None,
            },
            formats: formats.unwrap_or_else(|| vec![Format::Raw]),
            signing_key,
        }),
    };
    let job = DiskJob {
        partitions: disk_partitions(&args, &spool)?,
        image: args.out,
        size: args.size.bytes(),
        seed: Seed::new(args.seed),
        clock,
        release,
    };
    let (report, released) = crate::pipeline::disk(job)?;
    crate::progress::result(&format!("{} ({})", report.path.display(), ByteSize(report.size)));
    for line in &report.partitions {
        crate::progress::result(&format!("  {line}"));
    }
    if let Some(released) = &released {
        print_released(released);
    }
    Ok(())
}

/// The partitions `airlock disk`'s flags ask for, sized by the flags or the partition table's
/// defaults; an ESP alone takes the whole disk.
fn disk_partitions(args: &DiskArgs, spool: &Path) -> Result<Vec<PartitionRequest>> {
    let table_default = |role: Role| match role.definition().size.default {
        SizeDefault::Bytes(b) => Some(b),
        SizeDefault::Rest | SizeDefault::Required | SizeDefault::HashTreeOfRoot | SizeDefault::SlotA => None,
    };
    let alone = args.root.is_none() && args.data.is_none();
    let esp_size = match args.esp_size {
        Some(s) => Some(s.bytes()),
        None if alone => None,
        None => table_default(Role::Esp),
    };
    // No input may unpack to more than the partition (or the disk) it goes to.
    let disk_size = args.size.bytes();
    let esp_tree = load(&args.esp, spool, esp_size.unwrap_or(disk_size))?;
    let mut partitions = vec![PartitionRequest { role: Role::Esp, size: esp_size, tree: esp_tree }];
    if let Some(root) = &args.root {
        // Without --root-size the root takes the rest; with it, the rest stays unpartitioned.
        let role = Role::Root(Slot::A);
        let size = args.root_size.map(ByteSize::bytes).or_else(|| table_default(role));
        partitions.push(PartitionRequest { role, size, tree: load(root, spool, size.unwrap_or(disk_size))? });
    }
    if let Some(data) = args.data {
        partitions.push(PartitionRequest { role: Role::Data, size: Some(data.bytes()), tree: Tree::new() });
    }
    Ok(partitions)
}

/// The appliance name a released `airlock disk` image gets: OUT's stem.
fn release_name(raw: &Path) -> Result<String> {
    raw.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".raw"))
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .with_context(|| format!("{}: with --format or --sign-key the image must be named <name>.raw", raw.display()))
}
