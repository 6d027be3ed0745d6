//! The demo as a binary, so tests can run it as a child process (see `integration::cli`).

fn main() -> std::process::ExitCode {
    integration::cli::main()
}
