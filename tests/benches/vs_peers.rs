//! Benchmark of the demo's full stack (issue 16): requests per second through the service
//! with every layer on, against the same axum service built with none of the crates.
//!
//! # Set-up (the same for both sides)
//!
//! - **One process, one runtime**: both services, their one shared upstream (healthy, no
//!   latency, recording nothing: `upstream::Log::discarding`) and the load generator run on
//!   one multi-threaded tokio runtime (default configuration: one worker per core) on
//!   127.0.0.1, so a side's every cost, the load it puts on the upstream included, is
//!   paid on the same two cores.
//! - **Same client, same reuse**: the services call the upstream through the same pooled
//!   hyper client under tower's timeout, boxed; each side's load is `CLIENTS` pooled hyper
//!   clients created once, each sending its share of the round's requests back to back over
//!   a keep-alive connection that lives for the whole run (the warm-up opens it), with the
//!   same keys and the same `x-request-id` on every other request.
//! - **Same subscriber**: the demo's own (`integration::cli`): `tracing` events at INFO and
//!   above through `keel_correlation::json_layer`, here into a discarding sink.
//! - **Ours**: the demo's service (`integration::service::router`): `ServerLayer` (start
//!   and end lines to a discarding sink), the breaker with its HTTP classifier and call
//!   counting around `ClientLayer` and the timeout, the demo's cache (bounded, entries
//!   expiring at their own wall-clock time through `keel_snapshot::moka::ExpiresAt`) with a
//!   running `Persister` saving it every second, and the demo's counters. **The baseline**:
//!   the same handler (call, parse, cache the item, answer), the timeout and a moka cache
//!   of the same capacity, and nothing else; it does not percent-encode the key, which
//!   ours does and costs nothing measurable with these keys.
//! - **Rounds**: `xtask::harness`'s `compare` runs one untimed round of each side (the
//!   warm-up: connections open, caches filled), then `ROUNDS` rounds, each one load of
//!   each side back to back, the order alternating (A B, B A, ...), so a drift of the
//!   machine's load favours neither side; the row is the median of the per-round ratios
//!   with their min–max spread. Rounds are short so a burst of another process's work
//!   spoils only the rounds it overlaps.
//!
//! # Rows
//!
//! - wall-clock time per request (lower is better; the ratio `baseline / ours` is the ratio
//!   of requests per second, goal ≥ 0.9);
//! - the p99 latency of one request;
//! - the process's CPU time per request (load generator and upstream included): the cost
//!   the two cores pay, which another process's load disturbs less than wall-clock time.
//!
//! The last two rows replay the figures the first row's rounds recorded, in order, so all
//! three describe the same requests.

use std::{
    cell::RefCell,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use http::Request;
use http_body_util::BodyExt;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use integration::{
    service::{self, AppState, Cache, LoadProgress},
    upstream::{self, Item, Shape},
};
use keel_breaker::{CircuitBreaker, Policy};
use keel_snapshot::{CacheEntry, CachePersistence, Changes, Persister, moka::ExpiresAt};
use tower::{ServiceBuilder, ServiceExt, util::BoxCloneSyncService};
use tracing_subscriber::prelude::*;
use xtask::harness::{Harness, Row};

/// Concurrent clients per side: enough to keep both cores busy.
const CLIENTS: usize = 16;
/// Rounds per row: each round is one short load of each side back to back, so a burst of
/// another process's work lands on a few rounds, whose ratios the median then ignores.
const ROUNDS: usize = 31;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http::<Body>()
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    address
}

/// The demo's service with every layer on, in front of `upstream`.
async fn ours(upstream: SocketAddr, state_dir: &std::path::Path) -> (SocketAddr, Persister) {
    // The recorder first, as the demo does, so the breaker's call counting counts for real.
    let prometheus = service::prometheus();
    let breaker = Arc::new(
        CircuitBreaker::builder("bench")
            .policy(Policy::consecutive_failures(3))
            .count_calls()
            .build()
            .unwrap(),
    );
    let transport = http_client().map_err(integration::service::BoxError::from);
    // The demo's cache and persister (`integration::demo::run`): bounded, each entry
    // expiring at its own wall-clock time and marking the cache changed, saved every second
    // unless unchanged.
    let changes = Changes::new();
    let cache: Cache = moka::sync::Cache::builder()
        .max_capacity(10_000)
        .expire_after(ExpiresAt::new().marking(changes.clone()))
        .build();
    let persister = {
        let cache = cache.clone();
        Persister::builder(CachePersistence::new(state_dir), Duration::from_secs(1))
            .skip_unchanged(changes)
            .spawn_saving(move |persistence| persistence.save_moka(&cache))
    };
    let state = AppState {
        breaker: Arc::clone(&breaker),
        client: service::upstream_client(transport, breaker, Duration::from_secs(5)),
        upstream_base: format!("http://{upstream}"),
        cache,
        ttl: Duration::from_secs(600),
        last_save: Arc::new(Mutex::new(None)),
        load: Arc::new(Mutex::new(LoadProgress::default())),
        prometheus,
        started: tokio::time::Instant::now(),
    };
    let tracer = keel_correlation::Tracer::writer(std::io::sink());
    (serve(service::router(state, tracer)).await, persister)
}

#[derive(Clone)]
struct Bare {
    client: BoxCloneSyncService<Request<Body>, Response<Body>, tower::BoxError>,
    upstream: String,
    cache: moka::sync::Cache<String, CacheEntry<Item>>,
}

/// The same handler with none of the crates: a timeout around the client, a moka cache.
async fn bare_item(State(bare): State<Bare>, Path(key): Path<String>) -> Response {
    let request = Request::get(format!("{}/items/{key}", bare.upstream))
        .body(Body::empty())
        .unwrap();
    match bare.client.oneshot(request).await {
        Ok(response) if response.status().is_success() => {
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            if let Ok(item) = serde_json::from_slice::<Item>(&bytes) {
                bare.cache.insert(key, CacheEntry::new(item));
            }
            ([("x-served-by", "upstream")], bytes).into_response()
        }
        _ => match bare.cache.get(&key) {
            Some(entry) => ([("x-served-by", "cache")], Json(entry.value)).into_response(),
            None => StatusCode::BAD_GATEWAY.into_response(),
        },
    }
}

async fn bare(upstream: SocketAddr) -> SocketAddr {
    let client = ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .service(http_client())
        .map_response(|response: Response<hyper::body::Incoming>| response.map(Body::new));
    let state = Bare {
        client: BoxCloneSyncService::new(client),
        upstream: format!("http://{upstream}"),
        cache: moka::sync::Cache::new(10_000),
    };
    serve(
        Router::new()
            .route("/items/{key}", get(bare_item))
            .with_state(state),
    )
    .await
}

/// One side's load: `CLIENTS` HTTP/1 clients, created once, so their keep-alive connections
/// to the service outlive a round (neither side connects inside a timed round).
struct Load {
    address: SocketAddr,
    clients: Vec<HttpClient>,
}

impl Load {
    fn new(address: SocketAddr) -> Load {
        Load {
            address,
            clients: (0..CLIENTS).map(|_| http_client()).collect(),
        }
    }
}

/// One round's figures for one side.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// Wall-clock microseconds per request (requests per second is its inverse).
    wall: f64,
    /// The p99 latency of one request, microseconds.
    p99: f64,
    /// CPU time of the whole process (load generator, upstream and service) per request,
    /// microseconds.
    cpu: f64,
}

/// Sends `requests` over the side's `CLIENTS` concurrent clients, each sending its share
/// back to back, half of them with an `x-request-id`.
async fn round(load: &Load, requests: usize) -> Round {
    let address = load.address;
    let cpu_started = cpu_time::ProcessTime::now();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (client_index, client) in load.clients.iter().enumerate() {
        let client = client.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(requests / CLIENTS);
            for index in 0..requests / CLIENTS {
                let key = (client_index * 31 + index) % 64;
                let mut request = Request::get(format!("http://{address}/items/item-{key}"))
                    .body(Body::empty())
                    .unwrap();
                if index % 2 == 0 {
                    request
                        .headers_mut()
                        .insert("x-request-id", format!("bench-{index}").parse().unwrap());
                }
                let sent = Instant::now();
                let response = client.request(request).await.unwrap();
                assert!(response.status().is_success());
                let _ = response.into_body().collect().await.unwrap();
                latencies.push(sent.elapsed());
            }
            latencies
        });
    }
    let mut latencies = Vec::with_capacity(requests);
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_started.elapsed().as_secs_f64();
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    #[allow(clippy::cast_precision_loss)] // A request count.
    let count = latencies.len() as f64;
    Round {
        wall: elapsed / count * 1e6,
        p99: p99.as_secs_f64() * 1e6,
        cpu: cpu / count * 1e6,
    }
}

/// Replays the figures a row recorded, in the order it recorded them, so a second row
/// pairs the same rounds the same way; measures a fresh round if there is nothing left to
/// replay (the first row was filtered out by `BENCH_ONLY`).
fn replay(
    recorded: &RefCell<Vec<Round>>,
    fresh: impl Fn() -> Round,
    figure: impl Fn(Round) -> f64,
) -> impl FnMut() -> f64 {
    let mut recorded = std::mem::take(&mut *recorded.borrow_mut()).into_iter();
    move || figure(recorded.next().unwrap_or_else(&fresh))
}

fn main() {
    let mut harness = Harness::from_env("integration");
    let requests = if harness.quick() { 400 } else { 2000 };
    // The demo's own subscriber (`integration::cli`): `tracing` events at INFO and above
    // through the JSON layer, here into a discarding sink. (Without the level filter, every
    // request would also format hyper's debug and trace events, on both sides.)
    tracing_subscriber::registry()
        .with(
            keel_correlation::json_layer()
                .with_writer(std::io::sink)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let (ours_load, bare_load, persister) = runtime.block_on(async {
        let shape = Shape {
            outage_start: Duration::from_secs(1_000_000),
            outage: Duration::ZERO,
            failure_rate: 0.0,
            seed: 7,
            latency: Duration::ZERO,
            hang: Duration::ZERO,
        };
        let upstream = serve(upstream::router(
            shape,
            tokio::time::Instant::now(),
            upstream::Log::discarding(),
        ))
        .await;
        let (ours_address, persister) = ours(upstream, state_dir.path()).await;
        (
            Load::new(ours_address),
            Load::new(bare(upstream).await),
            persister,
        )
    });
    let measure = |load: &Load| runtime.block_on(round(load, requests));
    let (ours_rounds, bare_rounds) = (RefCell::new(Vec::new()), RefCell::new(Vec::new()));
    let record = |load: &Load, rounds: &RefCell<Vec<Round>>| {
        let figures = measure(load);
        rounds.borrow_mut().push(figures);
        figures.wall
    };
    harness.compare(
        Row::new(
            "full stack, requests over loopback",
            "same axum service, no crates",
        )
        .unit("µs/request")
        .rounds(ROUNDS)
        .goal(0.9),
        || record(&ours_load, &ours_rounds),
        || record(&bare_load, &bare_rounds),
    );
    // The next rows report other figures of the same rounds, paired the same way.
    let ours_recorded = ours_rounds.borrow().clone();
    let bare_recorded = bare_rounds.borrow().clone();
    harness.compare(
        Row::new("full stack, p99 latency", "same axum service, no crates")
            .unit("µs")
            .rounds(ROUNDS),
        replay(&ours_rounds, || measure(&ours_load), |r| r.p99),
        replay(&bare_rounds, || measure(&bare_load), |r| r.p99),
    );
    *ours_rounds.borrow_mut() = ours_recorded;
    *bare_rounds.borrow_mut() = bare_recorded;
    harness.compare(
        Row::new(
            "full stack, process CPU time per request",
            "same axum service, no crates",
        )
        .unit("µs/request")
        .rounds(ROUNDS),
        replay(&ours_rounds, || measure(&ours_load), |r| r.cpu),
        replay(&bare_rounds, || measure(&bare_load), |r| r.cpu),
    );
    runtime.block_on(async { persister.shutdown().await.unwrap() });
    harness.finish();
}
