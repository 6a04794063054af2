//! The `airlock` binary: everything happens in the library (`cli::main`).

fn main() -> std::process::ExitCode {
    airlock::cli::main()
}
