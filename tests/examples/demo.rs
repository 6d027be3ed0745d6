//! `cargo run --example demo`: the resilient-service demo (see `integration::demo`).
//!
//! Logs (JSON lines: trace start/end from `correlation`, breaker transitions and snapshot
//! events from `tracing`) go to stderr; the human summary goes to stdout.

use std::process::ExitCode;

use integration::demo::{self, Command, Config};
use tracing_subscriber::prelude::*;

fn main() -> ExitCode {
    let config = match Config::parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            print!("{}", demo::HELP);
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("demo: {message}");
            return ExitCode::from(2);
        }
    };
    // `tracing` events as JSON on stderr, with the correlation ids at the top level of
    // every event emitted inside a trace: every stderr line is one JSON object.
    tracing_subscriber::registry()
        .with(correlation::json_layer().with_writer(std::io::stderr))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("demo: cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        // If the signal handler cannot be installed, run to the end instead.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    match runtime.block_on(demo::run(config, correlation::Tracer::stderr(), shutdown)) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("demo: {error}");
            ExitCode::FAILURE
        }
    }
}
