//! The `walsink` command-line tool; see `walsink --help` and docs/OPERATIONS.md.

fn main() -> std::process::ExitCode {
    walsink::cli::main()
}
