//! `cargo run --example demo`: the resilient-service demo (see `integration::demo`).

fn main() -> std::process::ExitCode {
    integration::cli::main()
}
