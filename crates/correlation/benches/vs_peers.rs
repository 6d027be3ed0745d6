//! Benchmark `vs_peers`: correlation against a `tracing` JSON span and bare `task_local`s.
//!
//! Futures are polled by hand with a no-op waker (each completes on its first poll), so no
//! runtime noise is measured. Every row interleaves samples of ours and the baseline and
//! reports medians. `BENCH_QUICK=1` shortens the run; `BENCH_REPORT=<path>` appends JSON rows.

use std::{
    fs::OpenOptions,
    future::Future,
    hint::black_box,
    io::Write as _,
    pin::pin,
    task::{Context, Poll, Waker},
    time::Instant,
};

use correlation::Tracer;
use tracing::Instrument as _;
use tracing_subscriber::fmt::format::FmtSpan;
use uuid::Uuid;

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

/// Nanoseconds per call of `operation`, over `iterations` calls.
fn time_per_call(iterations: u32, mut operation: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iterations {
        operation();
    }
    start.elapsed().as_secs_f64() * 1e9 / f64::from(iterations)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Row {
    bench: &'static str,
    ours: f64,
    baseline: &'static str,
    baseline_value: f64,
    goal: f64,
}

/// Interleaves `samples` samples of `ours` and `baseline` (each returns ns per call for one
/// sample) after a warm-up; returns their medians.
fn compare(
    samples: usize,
    mut ours: impl FnMut() -> f64,
    mut baseline: impl FnMut() -> f64,
) -> (f64, f64) {
    // Warm up caches, the allocator and thread-local buffers.
    ours();
    baseline();
    let mut ours_times = Vec::with_capacity(samples);
    let mut baseline_times = Vec::with_capacity(samples);
    for _ in 0..samples {
        ours_times.push(ours());
        baseline_times.push(baseline());
    }
    (median(&mut ours_times), median(&mut baseline_times))
}

fn main() {
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let samples = if quick { 5 } else { 31 };
    let scale = if quick { 1 } else { 10 };
    let mut rows = Vec::new();

    // A traced operation writing start + end lines to a discarding sink, against a `tracing`
    // span formatted by tracing-subscriber's JSON formatter with NEW and CLOSE span events.
    let lines = Tracer::writer(std::io::sink());
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
        .with_writer(std::io::sink)
        .finish();
    let (ours, baseline) = tracing::subscriber::with_default(subscriber, || {
        compare(
            samples,
            || {
                time_per_call(2_000 * scale, || {
                    black_box(run_ready(
                        lines.start_trace("GET /orders", async { black_box(1) }),
                    ));
                })
            },
            || {
                time_per_call(2_000 * scale, || {
                    black_box(run_ready(
                        async { black_box(1) }.instrument(tracing::info_span!("GET /orders")),
                    ));
                })
            },
        )
    });
    rows.push(Row {
        bench: "traced operation, start+end JSON lines to a discarding sink",
        ours,
        baseline: "tracing 0.1 span + tracing-subscriber 0.3 JSON (FmtSpan::NEW|CLOSE)",
        baseline_value: baseline,
        goal: 8.0,
    });

    // Reading the id inside a trace, against a bare task_local `try_with` of a UUID.
    let context = Tracer::off().trace_sync("bench", correlation::current);
    let id = Uuid::new_v4();
    let reads = 200_000 * scale;
    let (ours, baseline) = compare(
        samples,
        || {
            correlation::sync_scope(context.clone(), || {
                time_per_call(reads, || {
                    black_box(correlation::correlation_id());
                })
            })
        },
        || {
            BARE.sync_scope(id, || {
                time_per_call(reads, || {
                    black_box(BARE.try_with(|id| *id).ok());
                })
            })
        },
    );
    rows.push(Row {
        bench: "correlation_id() inside a trace",
        ours,
        baseline: "bare tokio task_local try_with (Uuid copy)",
        baseline_value: baseline,
        goal: 0.5,
    });

    // A whole trace with logging off, against a bare task_local scope of a fresh UUID v4
    // (what a hand-rolled correlation scope does at the least).
    let off = Tracer::off();
    let (ours, baseline) = compare(
        samples,
        || {
            time_per_call(20_000 * scale, || {
                black_box(run_ready(
                    off.start_trace("GET /orders", async { black_box(1) }),
                ));
            })
        },
        || {
            time_per_call(20_000 * scale, || {
                black_box(run_ready(
                    BARE.scope(Uuid::new_v4(), async { black_box(1) }),
                ));
            })
        },
    );
    rows.push(Row {
        bench: "trace with logging off",
        ours,
        baseline: "bare tokio task_local scope of a fresh Uuid v4",
        baseline_value: baseline,
        goal: 1.0 / 3.0,
    });

    report(&rows);
}

fn report(rows: &[Row]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<60} {:>12} {:>12} {:>8} {:>8}",
        "bench", "ours ns", "base ns", "ratio", "goal"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "{:<60} {:>12.1} {:>12.1} {:>8.2} {:>8.2}",
            row.bench,
            row.ours,
            row.baseline_value,
            row.baseline_value / row.ours,
            row.goal
        );
    }
    let Some(path) = std::env::var_os("BENCH_REPORT") else {
        return;
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("BENCH_REPORT is writable");
    for row in rows {
        let line = serde_json::json!({
            "bench": row.bench,
            "unit": "ns/call",
            "ours": row.ours,
            "baseline": row.baseline,
            "baseline_value": row.baseline_value,
            "goal": row.goal,
        });
        writeln!(file, "{line}").expect("BENCH_REPORT is writable");
    }
}
