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
    time::{Duration, Instant},
};

use std::{convert::Infallible, future::Ready, sync::Mutex};

use http_body_util::Empty;
use hyper::body::Bytes;
use keel_correlation::{Tracer, tower::ServerLayer};
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultMakeSpan, DefaultOnRequest, DefaultOnResponse, TraceLayer},
};
use tower_layer::Layer as _;
use tower_service::Service;
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
    let context = Tracer::off().trace_sync("bench", keel_correlation::current);
    let id = Uuid::new_v4();
    keel_correlation::sync_scope(context, || {
        BARE.sync_scope(id, || {
            harness.nanos(
                Row::new(
                    "correlation_id() inside a trace",
                    "bare tokio task_local try_with (Uuid copy)",
                )
                .goal(0.5),
                |_| keel_correlation::correlation_id(),
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

    // The optional `tracing` span per trace: its cost, under a subscriber that records
    // spans (tracing-subscriber's JSON formatter to a discarding writer).
    let with_spans = Tracer::writer(std::io::sink()).with_spans();
    let without = Tracer::writer(std::io::sink());
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        harness.nanos(
            Row::new(
                "traced operation with Tracer::with_spans(), start+end lines to a discarding sink",
                "the same traced operation without spans (tracing-subscriber 0.3 JSON registry installed)",
            ),
            |i| run_ready(with_spans.start_trace("GET /orders", async move { black_box(i) })),
            |i| run_ready(without.start_trace("GET /orders", async move { black_box(i) })),
        );
    });

    server_layer_rows(&mut harness);

    harness.finish();
}

/// The inner service of the server-layer rows: answers at once.
#[derive(Clone)]
struct NoOp;

impl<B> Service<http::Request<B>> for NoOp {
    type Response = http::Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<http::Response<Empty<Bytes>>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<B>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(Empty::new())))
    }
}

/// A request as a caller sends it: with a `traceparent`. Built from static parts (no
/// parsing, one header allocation), the same for both sides of a row.
fn request() -> http::Request<Empty<Bytes>> {
    let mut request = http::Request::new(Empty::new());
    *request.uri_mut() = http::Uri::from_static("/orders/7");
    request.headers_mut().insert(
        http::header::HeaderName::from_static("traceparent"),
        http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    request
}

/// Calls `service` (behind a `Mutex`: the harness's bodies are `Fn + Sync`, a service's
/// `call` takes `&mut self`; both sides pay the same uncontended lock) with a fresh request.
fn serve<S>(service: &Mutex<S>) -> Option<http::StatusCode>
where
    S: Service<http::Request<Empty<Bytes>>>,
    S::Response: HasStatus,
{
    let future = service.lock().ok()?.call(request());
    run_ready(future).ok().map(|response| response.status())
}

/// The status of either side's response type.
trait HasStatus {
    fn status(&self) -> http::StatusCode;
}

impl<B> HasStatus for http::Response<B> {
    fn status(&self) -> http::StatusCode {
        http::Response::status(self)
    }
}

/// `tower::ServerLayer` per request against tower-http's request-id and trace layers.
fn server_layer_rows(harness: &mut Harness) {
    let info = tracing::Level::INFO;
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        // Ours: the request's trace, its start and end lines to a discarding sink. Theirs:
        // a request id set and propagated, and `TraceLayer` writing its span's request and
        // response events at INFO (its defaults are DEBUG, which write nothing at INFO):
        // the same two lines, through tracing-subscriber's JSON formatter.
        let ours = Mutex::new(
            ServerLayer::new()
                .tracer(Tracer::writer(std::io::sink()))
                .layer(NoOp),
        );
        let theirs = Mutex::new(
            SetRequestIdLayer::x_request_id(MakeRequestUuid).layer(
                TraceLayer::new_for_http()
                    .make_span_with(DefaultMakeSpan::new().level(info))
                    .on_request(DefaultOnRequest::new().level(info))
                    .on_response(DefaultOnResponse::new().level(info))
                    .layer(PropagateRequestIdLayer::x_request_id().layer(NoOp)),
            ),
        );
        harness.nanos(
            Row::new(
                "server layer per request: traceparent in, no-op service, two lines to a discarding sink",
                "tower-http 0.6 SetRequestIdLayer + PropagateRequestIdLayer + TraceLayer at INFO, tracing-subscriber 0.3 JSON",
            )
            .goal(10.0),
            |_| serve(&ours),
            |_| serve(&theirs),
        );
    });

    // Logging off: the trace alone, against the two request-id layers alone (uuid v4 with
    // `fast-rng`, as tower-http's `MakeRequestUuid` makes it).
    let ours = Mutex::new(ServerLayer::new().tracer(Tracer::off()).layer(NoOp));
    let theirs = Mutex::new(
        SetRequestIdLayer::x_request_id(MakeRequestUuid)
            .layer(PropagateRequestIdLayer::x_request_id().layer(NoOp)),
    );
    harness.nanos(
        Row::new(
            "server layer per request, logging off",
            "tower-http 0.6 SetRequestIdLayer + PropagateRequestIdLayer",
        )
        .goal(2.0),
        |_| serve(&ours),
        |_| serve(&theirs),
    );

    // The same layers with the requests built before the timed part: the row above times
    // each request's construction too (a URI and a header map, the same on both sides and
    // about as much as our whole layer), which a server does not pay per request in its
    // middleware. Each call builds small batches of requests untimed (small, so they are
    // still in the cache when served, as a request just parsed is) and times serving each
    // batch (wall clock, one lock per batch on both sides); the requests are still dropped
    // inside the timed part, by the no-op service, on both sides. No goal: the goal
    // is the row above's. 400 batches (about 25 ms served per call) and 21 rounds: with 40
    // batches and the default 9 rounds, each run's rounds agreed closely but two runs'
    // medians differed by 25% (2.25 then 2.81), a call too short to average over the
    // allocator states the earlier rows leave behind.
    let batches = if harness.quick() { 8 } else { 400 };
    harness.compare(
        Row::new(
            "server layer per request, logging off, requests built outside the timed part",
            "tower-http 0.6 SetRequestIdLayer + PropagateRequestIdLayer, the same requests",
        )
        .unit("ns/call")
        .rounds(21),
        || serve_prebuilt(&ours, batches),
        || serve_prebuilt(&theirs, batches),
    );
}

/// Requests per untimed batch of [`serve_prebuilt`]: 56 KiB of `http::Request`s.
const BATCH: usize = 256;

/// Builds `batches` batches of requests, serving each through `service` right after it is
/// built; returns the time per request of the serving alone, in nanoseconds.
fn serve_prebuilt<S>(service: &Mutex<S>, batches: usize) -> f64
where
    S: Service<http::Request<Empty<Bytes>>>,
    S::Response: HasStatus,
{
    let Ok(mut service) = service.lock() else {
        return f64::NAN;
    };
    let mut serving = Duration::ZERO;
    for _ in 0..batches {
        let requests: Vec<_> = (0..BATCH).map(|_| request()).collect();
        let started = Instant::now();
        for request in requests {
            let future = service.call(request);
            black_box(run_ready(future).ok().map(|response| response.status()));
        }
        serving += started.elapsed();
    }
    // A run's request count is far below 2^52, so the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    let count = (batches * BATCH) as f64;
    serving.as_secs_f64() * 1e9 / count
}
