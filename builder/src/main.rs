//! The `airlock` binary: parse the command line, set up logging, hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = airlock::cli::Cli::parse();
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .format_timestamp(None)
        .init();
    match airlock::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
