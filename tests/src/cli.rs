//! The demo's command line, shared by `cargo run --example demo` and the `demo` binary the
//! tests run as a child process (`env!("CARGO_BIN_EXE_demo")` exists only for binaries).
//!
//! Logs (JSON lines in `keel-correlation`'s one schema: trace start/end lines and the
//! application's `tracing` events) go to stderr; the summary and timeline go to stdout.

use std::{io::Write as _, process::ExitCode};

use tracing_subscriber::prelude::*;

use crate::demo::{self, Command, Config, Ready};

/// Completes on Ctrl-C or SIGTERM; if neither handler can be installed, never.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Prints where the service listens, and in `--serve` mode how to try it.
fn announce(ready: Ready, serve: bool) {
    let Some(service) = ready.service else { return };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "service listening on http://{service}");
    if serve {
        let _ = writeln!(
            stdout,
            "try:  curl -si http://{service}/items/item-3 -H 'x-request-id: hello'\n      \
             curl -s http://{service}/health\n      curl -s http://{service}/metrics\n\
             (Ctrl-C or SIGTERM stops it gracefully and writes the final snapshot)"
        );
    }
    let _ = stdout.flush();
}

/// Parses the arguments, runs the demo on a multi-threaded runtime, prints the summary.
pub fn main() -> ExitCode {
    let config = match Config::parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => {
            print!("{}", demo::HELP);
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            // Before logging starts, so still the only line on stderr.
            eprintln!(
                "{}",
                serde_json::json!({"level": "error", "event": "demo.usage", "message": message})
            );
            return ExitCode::from(2);
        }
    };
    // The application's `tracing` events as JSON lines on stderr in correlation's schema,
    // with the ids of the trace they were emitted in.
    // INFO and above: the dependencies' (hyper's) debug and trace events are noise here.
    tracing_subscriber::registry()
        .with(
            keel_correlation::json_layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    let serve = config.serve;
    let run = demo::run(
        config,
        keel_correlation::Tracer::stderr(),
        signal(),
        move |ready| {
            announce(ready, serve);
        },
    );
    match runtime.block_on(run) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "the demo failed");
            ExitCode::FAILURE
        }
    }
}
