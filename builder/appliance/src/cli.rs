//! The appliance's command line (`airlock` on the appliance): one subcommand per task, each a
//! thin call into the library.

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Parses the command line, sets up logging and runs the command: the whole `airlock-appliance`
/// binary (the VM tests build the same one under another name, to install into their images).
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .format_timestamp(None)
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Parser)]
#[command(name = "airlock", version, about = "The airlock appliance's own program")]
pub struct Cli {
    /// More output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Provision this instance (site configuration, secrets, TLS). Run by
    /// airlock-provision.service on every boot.
    Firstboot {
        /// Once the network is up (airlock-address.service): record this instance's addresses
        /// and re-issue the server certificate if they are new.
        #[arg(long)]
        addresses: bool,
    },
    /// Booted from a removable drive whose airlock.toml has `[install] disk = ...`: install
    /// onto that disk, then reboot or power off (`[install] then`). Otherwise nothing. Run by
    /// airlock-install.service early at every boot.
    Install,
    /// Offline updates: apply a signed update bundle to the slot that is not running, or show
    /// both slots.
    Update {
        #[command(flatten)]
        target: TargetArgs,
        #[command(subcommand)]
        command: UpdateCommand,
    },
}

/// Where an update goes; the defaults are the running appliance's (tests give an image file).
#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    /// The whole disk (default: the one holding the running root).
    #[arg(long, global = true, value_name = "DEVICE|IMAGE")]
    pub disk: Option<std::path::PathBuf>,
    /// The mounted ESP (default: /efi).
    #[arg(long, global = true, value_name = "DIR")]
    pub esp: Option<std::path::PathBuf>,
    /// The trusted keys' folder (default: /usr/lib/airlock/update-keys, in the verified root).
    #[arg(long, global = true, value_name = "DIR")]
    pub keys: Option<std::path::PathBuf>,
    /// The running root hash (default: roothash= on the kernel's command line).
    #[arg(long, global = true, value_name = "HEX")]
    pub root_hash: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Verify FILE (an `<name>_<version>.update` bundle) and write it into the other slot; the
    /// next boot runs it, and falls back to this version if it does not become ready.
    Apply {
        file: std::path::PathBuf,
        /// Install an older (or the same) version; its signature is still checked.
        #[arg(long)]
        allow_downgrade: bool,
        /// How many boots the new version gets to become ready (1-9; default: the image's
        /// `[update] tries`).
        #[arg(long)]
        tries: Option<u32>,
    },
    /// Show what each slot holds, which one runs and the state of their boot entries.
    Status,
    /// Early at every boot, before the stack: save the stack's state on a version's first try,
    /// restore it after a rollback, drop it once the version is good; print what happened.
    Boot,
    /// The appliance is ready (`boot-complete.target`): a version on trial is good from now on
    /// (its boot entry loses its counter). With --bad: it is out of tries at once.
    Bless {
        #[arg(long)]
        bad: bool,
    },
    /// Apply the newest bundle in `airlock-update/` on a removable drive (run by udev through
    /// airlock-usb-update@.service when one appears); reboots if airlock.toml says
    /// `[update] reboot = "now"`.
    Usb {
        /// The drive's partition (or whole disk), e.g. /dev/sdb1.
        device: std::path::PathBuf,
    },
    /// A version on trial did not become ready: record what failed (for the version the
    /// appliance falls back to) and, with --reboot, reboot into the next try.
    GiveUp {
        /// Why, in words (for the console of the version that comes back).
        #[arg(long)]
        why: String,
        /// A unit that failed (repeatable), besides those systemd lists as failed.
        #[arg(long = "failed", value_name = "UNIT")]
        failed: Vec<String>,
        #[arg(long)]
        reboot: bool,
    },
}

/// The updater's settings in the verified root.
fn update_config() -> Result<airlock_common::update_config::UpdateConfig> {
    airlock_common::update_config::UpdateConfig::read(std::path::Path::new(airlock_common::update_config::PATH))
}

/// The updater's records on the data partition, for the state directories of its settings.
fn state_store() -> Result<crate::update::state::StateStore> {
    let config = update_config()?;
    Ok(crate::update::state::StateStore {
        dir: std::path::Path::new(airlock_common::partition::STATE_DIR).join("update"),
        protect: config.state.iter().map(std::path::PathBuf::from).collect(),
    })
}

/// The units that failed this boot (`systemctl --failed`).
fn failed_units() -> Vec<String> {
    airlock_common::command::Cmd::new("systemctl")
        .args(["list-units", "--state=failed", "--no-legend", "--plain"])
        .output_text()
        .map(|t| t.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
        .unwrap_or_default()
}

/// The running appliance's target, with what the options name in its place (all four: an
/// image file, and nothing is read from the running system).
fn target(args: TargetArgs) -> Result<crate::update::Target> {
    if let TargetArgs { disk: Some(disk), esp: Some(esp), keys: Some(keys), root_hash: Some(root_hash) } = args {
        return Ok(crate::update::Target { disk, esp, keys, root_hash });
    }
    let system = crate::update::Target::system()?;
    Ok(crate::update::Target {
        disk: args.disk.unwrap_or(system.disk),
        esp: args.esp.unwrap_or(system.esp),
        keys: args.keys.unwrap_or(system.keys),
        root_hash: args.root_hash.unwrap_or(system.root_hash),
    })
}

/// `[update] reboot` from the site's `airlock.toml` (its defaults when absent; "never", saying
/// why, when it does not parse: provisioning reports the mistake itself).
fn site_update_reboot() -> airlock_common::site::UpdateReboot {
    let esp = std::path::Path::new(airlock_common::partition::ESP_MOUNT);
    let file = esp.join(airlock_common::site::SITE_FILE);
    if !file.exists() {
        return airlock_common::site::UpdateReboot::default();
    }
    let site =
        airlock_common::input_file::read_capped_text(&file, airlock_common::site::MAX_SITE_FILE, "site configuration")
            .and_then(|text| airlock_common::site::parse(&text, esp));
    match site {
        Ok(site) => site.update_reboot,
        Err(e) => {
            println!("airlock: {} does not parse ({e:#}): not rebooting by itself", file.display());
            airlock_common::site::UpdateReboot::Never
        }
    }
}

/// `airlock update usb DEVICE`: what the console says is the operator's only view of it.
fn usb(t: &crate::update::Target, device: &std::path::Path) -> Result<()> {
    use crate::update::usb::{Outcome, apply_from, on_disk};
    let dev = device.display();
    if on_disk(device, &t.disk)? {
        log::info!("{dev} is on the appliance's own disk: not an update");
        return Ok(());
    }
    let opts = crate::update::ApplyOptions { allow_downgrade: false, tries: update_config()?.tries };
    println!("airlock: reading updates from {dev}");
    match apply_from(device, t, &opts) {
        Ok(Outcome::Nothing(why)) => println!("airlock: nothing to update from {dev}: {why}"),
        Ok(Outcome::Staged { file, applied }) => {
            println!("airlock: update {} staged from {dev} ({file})", applied.version);
            println!("airlock: {applied}");
            match site_update_reboot() {
                airlock_common::site::UpdateReboot::Now => {
                    println!("airlock: rebooting into {} (airlock.toml: [update] reboot = \"now\")", applied.version);
                    airlock_common::command::Cmd::new("systemctl").args(["reboot", "--no-block"]).run()?;
                }
                airlock_common::site::UpdateReboot::Never => {
                    println!("airlock: reboot to run {} (airlock.toml: [update] reboot = \"never\")", applied.version)
                }
            }
        }
        Err(e) => {
            println!("airlock: update from {dev} refused: {e:#}");
            anyhow::bail!("the update from {dev} was refused");
        }
    }
    Ok(())
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Firstboot { addresses } => {
            let steps = if addresses { crate::firstboot::ADDRESS_STEPS } else { crate::firstboot::STEPS };
            crate::firstboot::provision(&crate::firstboot::Paths::system(), steps)
        }
        Command::Install => match crate::install::at_boot() {
            Ok(outcome) => crate::install::finish(&outcome),
            Err(e) => {
                // The console is all an operator at the stick sees: the verdict, then why
                // (main prints the error). Provisioning requires this unit: the stick does not
                // start the appliance instead.
                println!("airlock: failed");
                Err(e.context("airlock: nothing was installed"))
            }
        },
        Command::Update { target: args, command } => {
            let t = target(args)?;
            match command {
                UpdateCommand::Apply { file, allow_downgrade, tries } => {
                    let tries = match tries {
                        Some(n) => n,
                        None => update_config()?.tries,
                    };
                    let done =
                        crate::update::apply(&t, &file, &crate::update::ApplyOptions { allow_downgrade, tries })?;
                    println!("{done}");
                }
                UpdateCommand::Status => print!("{}", crate::update::Status::read(&t)?),
                UpdateCommand::Boot => {
                    let action = crate::update::boot::on_boot(&t, &state_store()?)?;
                    println!("airlock update: {}", action.summary());
                    let lines = action.console();
                    for l in &lines {
                        println!("{l}");
                    }
                    // The banner prints these after its own lines.
                    std::fs::create_dir_all("/run/airlock").ok();
                    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
                    std::fs::write("/run/airlock/update-console", text).ok();
                    if let crate::update::boot::BootAction::Saved(crate::update::state::Saved::NoRoom { .. }) = action {
                        // This version must not start its stack: out of tries at once.
                        crate::update::boot::mark_running(&t, false)?;
                        anyhow::bail!("no room to save the stack's state: this version is given up");
                    }
                }
                UpdateCommand::Bless { bad } => match crate::update::boot::mark_running(&t, !bad)? {
                    Some(entry) => println!("airlock: this version is good (boot entry {entry})"),
                    None => log::info!("the running version is not on trial"),
                },
                UpdateCommand::Usb { device } => usb(&t, &device)?,
                UpdateCommand::GiveUp { why, mut failed, reboot } => {
                    failed.extend(failed_units());
                    failed.sort();
                    failed.dedup();
                    let trial = crate::update::boot::give_up(&t, &state_store()?, failed, &why)?;
                    if trial {
                        println!("airlock: this version did not become ready ({why}): rebooting");
                        if reboot {
                            airlock_common::command::Cmd::new("systemctl").args(["reboot", "--no-block"]).run()?;
                        }
                    }
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firstboot_and_its_address_pass_parse() {
        let cli = Cli::try_parse_from(["airlock", "firstboot", "--addresses"]).unwrap();
        assert!(matches!(cli.command, Command::Firstboot { addresses: true }));
        let cli = Cli::try_parse_from(["airlock", "firstboot"]).unwrap();
        assert!(matches!(cli.command, Command::Firstboot { addresses: false }));
        assert!(Cli::try_parse_from(["airlock", "build"]).is_err(), "building is the host's job");
    }
}
