//! Benchmark of the demo's full stack (issue 16): requests per second through the service
//! with every layer on, against the same axum service built with none of the crates.
//!
//! Both services run in this process on one tokio runtime, on 127.0.0.1, in front of the
//! same healthy upstream; the same load (`CLIENTS` HTTP/1 clients, each sending its share of
//! `REQUESTS` back to back over keep-alive connections) is sent to each side alternately,
//! round after round, by `xtask::harness`'s `compare`. Ours: `correlation`'s `ServerLayer`
//! (lines to a discarding sink, the `tracing` JSON layer too), the breaker around the
//! client with its HTTP classifier and call counting, `ClientLayer`, tower's timeout, and
//! the moka cache with `snapshot`'s `ExpiresAt` and a running `Persister`. The baseline:
//! the same handler, tower timeout and moka cache, and nothing else.
//!
//! Rows: time per request (lower is better; the ratio `baseline / ours` is the ratio of
//! requests per second, goal ≥ 0.9), and the p99 latency of one request on each side.

use std::{
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
use keel_snapshot::{CacheEntry, CachePersistence, Persister, moka::ExpiresAt};
use tower::{ServiceBuilder, ServiceExt, util::BoxCloneSyncService};
use tracing_subscriber::prelude::*;
use xtask::harness::{Harness, Row};

const CLIENTS: usize = 16;

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
    let breaker = Arc::new(
        CircuitBreaker::builder("bench")
            .policy(Policy::consecutive_failures(3))
            .count_calls()
            .build()
            .unwrap(),
    );
    let transport = http_client().map_err(integration::service::BoxError::from);
    let cache: Cache = moka::sync::Cache::builder()
        .expire_after(ExpiresAt::new())
        .build();
    let persister = {
        let cache = cache.clone();
        Persister::builder(CachePersistence::new(state_dir), Duration::from_secs(1))
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
        prometheus: service::prometheus(),
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

/// Sends `requests` over `CLIENTS` concurrent clients; returns the seconds per request and
/// the p99 latency in microseconds.
async fn load(address: SocketAddr, requests: usize) -> (f64, f64) {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client_index in 0..CLIENTS {
        let client = http_client();
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
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    #[allow(clippy::cast_precision_loss)] // A request count.
    let per_request = elapsed / latencies.len() as f64;
    (per_request * 1e6, p99.as_secs_f64() * 1e6)
}

fn main() {
    let mut harness = Harness::from_env("integration");
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let requests = if quick { 800 } else { 4000 };
    // Every `tracing` event goes through the JSON layer, into a discarding sink.
    tracing_subscriber::registry()
        .with(keel_correlation::json_layer().with_writer(std::io::sink))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let (ours_address, bare_address, persister) = runtime.block_on(async {
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
            upstream::Log::default(),
        ))
        .await;
        let (ours_address, persister) = ours(upstream, state_dir.path()).await;
        (ours_address, bare(upstream).await, persister)
    });
    let per_request = |address| runtime.block_on(load(address, requests)).0;
    harness.compare(
        Row::new(
            "full stack, requests over loopback",
            "same axum service, no crates",
        )
        .unit("µs/request")
        .goal(0.9),
        || per_request(ours_address),
        || per_request(bare_address),
    );
    let p99 = |address| runtime.block_on(load(address, requests)).1;
    harness.compare(
        Row::new("full stack, p99 latency", "same axum service, no crates").unit("µs"),
        || p99(ours_address),
        || p99(bare_address),
    );
    runtime.block_on(async { persister.shutdown().await.unwrap() });
    harness.finish();
}
