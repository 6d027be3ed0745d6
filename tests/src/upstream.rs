//! The demo's upstream: a real axum HTTP server that fails in bursts.
//!
//! Healthy at first, then an outage (every third call hangs past the service's timeout, the
//! others answer `503`), then recovered; outside the outage a call fails with `500` at the
//! configured rate. It records the trace headers of every call it receives, so the tests can
//! check what the service propagated.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::demo::{mix, unit};

/// How the upstream misbehaves: the demo's shaping flags.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Time from the start until the outage.
    pub outage_start: Duration,
    /// How long the outage lasts.
    pub outage: Duration,
    /// Chance that a call outside the outage fails with `500`.
    pub failure_rate: f64,
    /// Seed of the failures and the payloads.
    pub seed: u64,
    /// How long a healthy answer takes.
    pub latency: Duration,
    /// How long a hanging call hangs (longer than the service's timeout, but bounded, so a
    /// graceful shutdown never waits long for it).
    pub hang: Duration,
}

/// The answer the upstream gives for one key, and what the service caches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The key asked for.
    pub key: String,
    /// A made-up payload.
    pub price_cents: u64,
}

/// What the upstream saw of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The path called.
    pub path: String,
    /// The `traceparent` header, if any.
    pub traceparent: Option<String>,
    /// The `x-request-id` header, if any.
    pub request_id: Option<String>,
    /// The `x-correlation-id` header, if any.
    pub correlation_id: Option<String>,
}

/// The calls the upstream received, in order ([`Log::default`]), or none
/// ([`Log::discarding`]).
#[derive(Debug, Clone)]
pub struct Log(Option<Arc<Mutex<Vec<Received>>>>);

impl Default for Log {
    /// A log that records every call.
    fn default() -> Log {
        Log(Some(Arc::default()))
    }
}

impl Log {
    /// A log that records nothing: for the benchmark, whose upstream answers hundreds of
    /// thousands of calls nobody reads (a recording log would grow all run long, and every
    /// call of both services would queue on its one lock).
    pub fn discarding() -> Log {
        Log(None)
    }

    /// A copy of every call received so far (none for a discarding log).
    pub fn calls(&self) -> Vec<Received> {
        self.0.as_ref().map_or_else(Vec::new, |calls| {
            calls.lock().unwrap_or_else(PoisonError::into_inner).clone()
        })
    }

    fn record(&self, received: impl FnOnce() -> Received) {
        if let Some(calls) = &self.0 {
            calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(received());
        }
    }
}

#[derive(Clone)]
struct Upstream {
    shape: Arc<Shape>,
    started: Instant,
    calls: Arc<AtomicU64>,
    log: Log,
}

/// The upstream's routes: `GET /items/{key}`. `started` is when its timeline begins.
pub fn router(shape: Shape, started: Instant, log: Log) -> Router {
    Router::new()
        .route("/items/{key}", get(item))
        .with_state(Upstream {
            shape: Arc::new(shape),
            started,
            calls: Arc::new(AtomicU64::new(0)),
            log,
        })
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

async fn item(
    State(upstream): State<Upstream>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    // Relaxed: a ticket number for the failure pattern, publishing nothing else.
    let call = upstream.calls.fetch_add(1, Ordering::Relaxed);
    upstream.log.record(|| Received {
        path: format!("/items/{key}"),
        traceparent: header(&headers, "traceparent"),
        request_id: header(&headers, "x-request-id"),
        correlation_id: header(&headers, "x-correlation-id"),
    });
    let shape = &upstream.shape;
    let elapsed = upstream.started.elapsed();
    let in_outage = elapsed >= shape.outage_start && elapsed < shape.outage_start + shape.outage;
    if in_outage {
        if call % 3 == 0 {
            tokio::time::sleep(shape.hang).await;
            return (StatusCode::GATEWAY_TIMEOUT, "hung").into_response();
        }
        tokio::time::sleep(shape.latency).await;
        return (StatusCode::SERVICE_UNAVAILABLE, "outage").into_response();
    }
    tokio::time::sleep(shape.latency).await;
    if unit(shape.seed ^ 0xFA11, call) < shape.failure_rate {
        return (StatusCode::INTERNAL_SERVER_ERROR, "unlucky").into_response();
    }
    let price_cents = 100 + mix(shape.seed, call) % 10_000;
    Json(Item { key, price_cents }).into_response()
}
