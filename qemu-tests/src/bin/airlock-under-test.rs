//! The `airlock` binary, built in this package so the VM tests can copy it into their images
//! (a test cannot name another package's binary).

fn main() -> std::process::ExitCode {
    airlock::cli::main()
}
