//! Benchmark `vs_peers`: correlation against a `tracing` JSON span and bare `task_local`s.
//!
//! Futures are polled by hand with a no-op waker (each completes on its first poll), so no
//! runtime noise is measured. Every row is measured by `xtask::harness`: ours and the
//! baseline interleaved in rounds of calibrated batches, the median ratio with its spread
//! (see `xtask/src/bench.rs` for the report protocol; `BENCH_QUICK=1` shortens the run).

use std::{
    future::Future,
    hint::black_box,
    pin::pin,
    task::{Context, Poll, Waker},
};

use correlation::Tracer;
use tracing::Instrument as _;
use tracing_subscriber::fmt::format::FmtSpan;
use uuid::Uuid;
use xtask::harness::{Harness, Row};

tokio::task_local! {
    static BARE: Uuid;
}

/// Polls a future that completes on its first poll.
fn run_ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("benchmark futures never wait"),
    }
}

fn main() {
    let mut harness = Harness::from_env("correlation");

    // A traced operation writing start + end lines to a discarding sink, against a `tracing`
    // span formatted by tracing-subscriber's JSON formatter with NEW and CLOSE span events.
    let lines = Tracer::writer(std::io::sink());
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        harness.nanos(
            Row::new(
                "traced operation, start+end JSON lines to a discarding sink",
                "tracing 0.1 span + tracing-subscriber 0.3 JSON (FmtSpan::NEW|CLOSE)",
            )
            .goal(10.0),
            |i| run_ready(lines.start_trace("GET /orders", async move { black_box(i) })),
            |i| {
                run_ready(
                    async move { black_box(i) }.instrument(tracing::info_span!("GET /orders")),
                )
            },
        );
    });

    // Reading the id inside a trace, against a bare task_local `try_with` of a UUID. The
    // scopes are entered once around the whole row, as a request's handler would be.
    let context = Tracer::off().trace_sync("bench", correlation::current);
    let id = Uuid::new_v4();
    correlation::sync_scope(context, || {
        BARE.sync_scope(id, || {
            harness.nanos(
                Row::new(
                    "correlation_id() inside a trace",
                    "bare tokio task_local try_with (Uuid copy)",
                )
                .goal(0.5),
                |_| correlation::correlation_id(),
                |_| BARE.try_with(|id| *id).ok(),
            );
        });
    });

    // A whole trace with logging off, against a bare task_local scope of a fresh UUID v4
    // (what a hand-rolled correlation scope does at the least).
    let off = Tracer::off();
    harness.nanos(
        Row::new(
            "trace with logging off",
            "bare tokio task_local scope of a fresh Uuid v4",
        )
        .goal(1.0 / 3.0),
        |i| run_ready(off.start_trace("GET /orders", async move { black_box(i) })),
        |i| run_ready(BARE.scope(Uuid::new_v4(), async move { black_box(i) })),
    );

    harness.finish();
}
