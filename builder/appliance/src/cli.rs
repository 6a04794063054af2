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
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Firstboot { addresses } => {
            let steps = if addresses { crate::firstboot::ADDRESS_STEPS } else { crate::firstboot::STEPS };
            crate::firstboot::provision(&crate::firstboot::Paths::system(), steps)
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
