//! The appliance's own program, installed in every image as `/usr/bin/airlock`: everything
//! happens in the library (`cli::main`).

fn main() -> std::process::ExitCode {
    airlock_appliance::cli::main()
}
