//! The appliance's own program (`airlock-appliance`), built in this package so the VM tests can
//! install it into their images (a test cannot name another package's binary).

fn main() -> std::process::ExitCode {
    airlock_appliance::cli::main()
}
