//! The demo's service: an axum app whose `GET /items/{key}` calls the upstream through the
//! crates' layers, answers from its moka cache while the breaker is open, and reports on
//! `/health` (JSON) and `/metrics` (Prometheus text).
//!
//! The wiring, outermost first:
//!
//! - server side, `keel_correlation::tower::ServerLayer`: each request runs inside a trace
//!   continued from its `traceparent` / `x-correlation-id` / `x-request-id`, or a new one;
//! - client side, [`upstream_client`]: `keel_breaker::BreakerLayer` with `keel_breaker::HttpStatus`
//!   (5xx, 429 and transport errors are failures; an upstream `Retry-After` is honoured) → `keel_correlation::tower::ClientLayer` (one span and one
//!   `traceparent` per call) → `tower::timeout` → the HTTP client.

use std::{
    borrow::Cow,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::{Duration, SystemTime},
};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use http::Request;
use http_body_util::BodyExt;
use keel_breaker::{BreakerError, BreakerLayer, CircuitBreaker, HttpStatus};
use keel_correlation::{
    Tracer,
    tower::{ClientLayer, ServerLayer},
};
use keel_snapshot::{CacheEntry, SaveReport};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::json;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, util::BoxCloneSyncService};

use crate::upstream::Item;

/// The errors tower services box.
pub type BoxError = tower::BoxError;

/// The service's cache: moka, each entry expiring at its own wall-clock time
/// (`keel_snapshot::moka::ExpiresAt`), saved and restored by the `keel-snapshot` crate.
pub type Cache = moka::sync::Cache<String, CacheEntry<Item>>;

/// The upstream client as the handlers see it: the whole client-side stack, boxed.
pub type Client = BoxCloneSyncService<Request<Body>, Response<Body>, BreakerError<BoxError>>;

/// Builds the client-side stack around `transport` (a real HTTP client, or in tests the
/// upstream's router itself): breaker outermost, so a rejected call opens no span and
/// sends nothing; then one span per call; then the timeout, so a hang is a failure.
pub fn upstream_client<T, B>(
    transport: T,
    breaker: Arc<CircuitBreaker>,
    timeout: Duration,
) -> Client
where
    T: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
    T::Future: Send,
    T::Error: Into<BoxError>,
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let stack = ServiceBuilder::new()
        .layer(BreakerLayer::new(breaker).classifier(HttpStatus::new()))
        // The span's name is the route, not the path: one name for every key (what trace
        // backends group by), and no allocation per call.
        .layer(ClientLayer::new().operation(|request| {
            if request.method == http::Method::GET && request.uri.path().starts_with("/items/") {
                Cow::Borrowed("GET upstream /items/{key}")
            } else {
                Cow::Owned(format!(
                    "{} upstream {}",
                    request.method,
                    request.uri.path()
                ))
            }
        }))
        .timeout(timeout)
        .service(transport.map_response(|response: Response<B>| response.map(Body::new)));
    BoxCloneSyncService::new(stack)
}

/// The last successful save, for `/health`.
#[derive(Debug, Clone)]
pub struct LastSave {
    /// When it finished.
    pub at: SystemTime,
    /// What it wrote.
    pub report: SaveReport,
}

/// Progress of the built-in load generator, for `/health` (so a watcher knows it is done).
#[derive(Debug, Default)]
pub struct LoadProgress {
    /// Requests sent so far.
    pub sent: u64,
    /// Whether every request has been answered.
    pub done: bool,
}

/// How `GET /items/{key}` was answered: the value of the `x-served-by` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// By a successful upstream call.
    Upstream,
    /// From the cache: the breaker refused the call.
    CacheBreakerOpen,
    /// From the cache: the upstream call failed.
    CacheUpstreamFailed,
    /// `503` with `Retry-After`: the breaker refused and nothing was cached.
    Rejected,
    /// `502`: the upstream call failed and nothing was cached.
    Failed,
}

impl Answered {
    /// The `x-served-by` header value.
    pub fn header(self) -> &'static str {
        match self {
            Answered::Upstream => "upstream",
            Answered::CacheBreakerOpen | Answered::CacheUpstreamFailed => "cache",
            Answered::Rejected => "rejected",
            Answered::Failed => "failed",
        }
    }

    /// Reads a response's `x-served-by` and `x-cache-reason` headers back.
    pub fn from_response<B>(response: &Response<B>) -> Option<Answered> {
        let headers = response.headers();
        let served_by = headers.get("x-served-by")?.to_str().ok()?;
        let reason = headers.get("x-cache-reason").and_then(|v| v.to_str().ok());
        Some(match (served_by, reason) {
            ("upstream", _) => Answered::Upstream,
            ("cache", Some("breaker-open")) => Answered::CacheBreakerOpen,
            ("cache", _) => Answered::CacheUpstreamFailed,
            ("rejected", _) => Answered::Rejected,
            _ => Answered::Failed,
        })
    }
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The breaker guarding the upstream (also read by `/health`).
    pub breaker: Arc<CircuitBreaker>,
    /// The upstream client stack.
    pub client: Client,
    /// Where the upstream listens (`http://127.0.0.1:port`, or any base in-process).
    pub upstream_base: String,
    /// The cache.
    pub cache: Cache,
    /// How long a fresh answer stays cached.
    pub ttl: Duration,
    /// The last successful snapshot save.
    pub last_save: Arc<Mutex<Option<LastSave>>>,
    /// The load generator's progress.
    pub load: Arc<Mutex<LoadProgress>>,
    /// The Prometheus exporter's handle.
    pub prometheus: PrometheusHandle,
    /// When the run started.
    pub started: Instant,
}

/// The demo's own counters, registered with the `metrics` recorder once, when the router is
/// built: a request then increments a handle (one atomic add) instead of looking its name
/// and labels up in the recorder's registry. Every label set shows on `/metrics` from the
/// start, at 0.
#[derive(Clone)]
struct Counters {
    /// `demo_requests_total` by `answered`, indexed by [`Counters::answered`].
    requests: [metrics::Counter; 4],
    /// `demo_traces_total{outcome="success"}`.
    traces_success: metrics::Counter,
    /// `demo_traces_total{outcome="error"}`.
    traces_error: metrics::Counter,
}

impl Counters {
    fn register() -> Counters {
        let requests = [
            Answered::Upstream,
            Answered::CacheBreakerOpen,
            Answered::Rejected,
            Answered::Failed,
        ]
        .map(|answered| metrics::counter!("demo_requests_total", "answered" => answered.header()));
        Counters {
            requests,
            traces_success: metrics::counter!("demo_traces_total", "outcome" => "success"),
            traces_error: metrics::counter!("demo_traces_total", "outcome" => "error"),
        }
    }

    /// The `demo_requests_total` counter of `answered`'s label (both cache answers share one).
    fn answered(&self, answered: Answered) -> &metrics::Counter {
        &self.requests[match answered {
            Answered::Upstream => 0,
            Answered::CacheBreakerOpen | Answered::CacheUpstreamFailed => 1,
            Answered::Rejected => 2,
            Answered::Failed => 3,
        }]
    }
}

/// What the handlers share, behind one `Arc`: axum clones a route's state for every
/// request, and one reference count is cheaper than cloning every field.
struct Shared {
    state: AppState,
    counters: Counters,
}

/// The server span's name: the route, not the path (one name per route, whatever the key,
/// and no allocation per request).
fn server_operation(head: keel_correlation::tower::RequestHead<'_>) -> Cow<'static, str> {
    let path = head.uri.path();
    match (head.method == http::Method::GET, path) {
        (true, "/health") => Cow::Borrowed("GET /health"),
        (true, "/metrics") => Cow::Borrowed("GET /metrics"),
        (true, _) if path.starts_with("/items/") => Cow::Borrowed("GET /items/{key}"),
        _ => Cow::Owned(format!("{} {path}", head.method)),
    }
}

/// The service's router with the correlation server layer around every route.
pub fn router(state: AppState, tracer: Tracer) -> Router {
    let counters = Counters::register();
    let for_traces = counters.clone();
    Router::new()
        .route("/items/{key}", get(item))
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .with_state(Arc::new(Shared { state, counters }))
        .layer(
            ServiceBuilder::new()
                // Counts the traces by the outcome `ServerLayer` gives them (a 5xx is an
                // `error`).
                .map_response(move |response: Response| {
                    if response.status().is_server_error() {
                        for_traces.traces_error.increment(1);
                    } else {
                        for_traces.traces_success.increment(1);
                    }
                    response
                })
                .layer(
                    ServerLayer::new()
                        .tracer(tracer)
                        .operation(server_operation),
                ),
        )
}

/// The process's Prometheus exporter, installed as the `metrics` facade's global recorder
/// on first use (a facade has one recorder per process; later runs in the same process,
/// like the tests, share it).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // If the embedding program installed another recorder first, `/metrics` stays
            // empty rather than the demo failing.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

fn answer(counters: &Counters, answered: Answered, status: StatusCode, body: Body) -> Response {
    counters.answered(answered).increment(1);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert("x-served-by", HeaderValue::from_static(answered.header()));
    match answered {
        Answered::CacheBreakerOpen => {
            headers.insert("x-cache-reason", HeaderValue::from_static("breaker-open"));
        }
        Answered::CacheUpstreamFailed => {
            headers.insert(
                "x-cache-reason",
                HeaderValue::from_static("upstream-failed"),
            );
        }
        _ => {}
    }
    response
}

fn cached(shared: &Shared, key: &str, answered: Answered) -> Option<Response> {
    let entry = shared.state.cache.get(key)?;
    let body = serde_json::to_vec(&entry.value).ok()?;
    let mut response = answer(&shared.counters, answered, StatusCode::OK, Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Some(response)
}

/// The bytes a key keeps as they are in the upstream URI: RFC 3986's unreserved characters
/// (letters, digits, `-`, `.`, `_`, `~`). Everything else, `/ ? # % ;` and space included,
/// and every byte of a non-ASCII character, is sent as `%XX`.
const KEY_KEEPS: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The upstream URI of `key`: the key (as the caller meant it, percent-decoded by axum's
/// `Path`) percent-encoded into one path segment, so whatever it holds it stays the key and
/// never becomes a query, a fragment, another segment or a malformed URI.
fn upstream_uri(base: &str, key: &str) -> String {
    format!("{base}/items/{}", utf8_percent_encode(key, KEY_KEEPS))
}

async fn item(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> Response {
    let state = &shared.state;
    let uri = upstream_uri(&state.upstream_base, &key);
    let Ok(request) = Request::get(uri).body(Body::empty()) else {
        return (StatusCode::BAD_REQUEST, "bad key").into_response();
    };
    let result = state.client.clone().oneshot(request).await;
    match result {
        Ok(response) if response.status().is_success() => {
            match response.into_body().collect().await {
                Ok(body) => {
                    let bytes = body.to_bytes();
                    if let Ok(item) = serde_json::from_slice::<Item>(&bytes) {
                        let expires = keel_snapshot::moka::epoch_millis_now().saturating_add(
                            u64::try_from(state.ttl.as_millis()).unwrap_or(u64::MAX),
                        );
                        state
                            .cache
                            .insert(key, CacheEntry::new(item).expiring_at(expires));
                    }
                    let mut response = answer(
                        &shared.counters,
                        Answered::Upstream,
                        StatusCode::OK,
                        Body::from(bytes),
                    );
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    response
                }
                Err(_) => failed(&shared, &key, "upstream body cut short"),
            }
        }
        Ok(response) => failed(
            &shared,
            &key,
            &format!("upstream answered {}", response.status()),
        ),
        Err(error) if error.is_rejected() => {
            if let Some(response) = cached(&shared, &key, Answered::CacheBreakerOpen) {
                return response;
            }
            tracing::warn!(key, reason = ?error.reason(), "circuit open, nothing cached: 503");
            // `error.is_rejected()` held, so there is a rejection; the breaker's own 503
            // response carries its `Retry-After` (whole seconds, rounded up).
            let mut response = error.rejected().map_or_else(Response::default, |rejected| {
                keel_breaker::rejection_response::<Body>(&rejected)
            });
            *response.body_mut() = Body::from(format!("{error}\n"));
            shared.counters.answered(Answered::Rejected).increment(1);
            response
                .headers_mut()
                .insert("x-served-by", HeaderValue::from_static("rejected"));
            response
        }
        Err(error) => failed(&shared, &key, &error.to_string()),
    }
}

fn failed(shared: &Shared, key: &str, why: &str) -> Response {
    if let Some(response) = cached(shared, key, Answered::CacheUpstreamFailed) {
        return response;
    }
    tracing::warn!(key, why, "upstream failed, nothing cached: 502");
    answer(
        &shared.counters,
        Answered::Failed,
        StatusCode::BAD_GATEWAY,
        Body::from(format!("{why}\n")),
    )
}

fn epoch_millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The state as `/health` writes it.
fn state_name(state: keel_breaker::State) -> &'static str {
    match state {
        keel_breaker::State::Closed => "closed",
        keel_breaker::State::Open => "open",
        keel_breaker::State::HalfOpen => "half_open",
        keel_breaker::State::Isolated => "isolated",
    }
}

async fn health(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let state = &shared.state;
    let now = SystemTime::now();
    let breaker = state.breaker.metrics();
    let since = now.checked_sub(breaker.in_state_for).unwrap_or(now);
    let last_save = state
        .last_save
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let snapshot = last_save.map_or(serde_json::Value::Null, |save| {
        json!({
            "at_unix_ms": epoch_millis(save.at),
            "age_secs": now.duration_since(save.at).unwrap_or_default().as_secs_f64(),
            "entries": save.report.entries,
            "bytes": save.report.bytes,
        })
    });
    state.cache.run_pending_tasks();
    let load = state.load.lock().unwrap_or_else(PoisonError::into_inner);
    Json(json!({
        "breaker": {
            "name": state.breaker.name(),
            "state": state_name(breaker.state),
            "since_unix_ms": epoch_millis(since),
            "for_secs": breaker.in_state_for.as_secs_f64(),
        },
        "last_snapshot": snapshot,
        "cache": { "entries": state.cache.entry_count() },
        "load": { "sent": load.sent, "done": load.done },
        "uptime_secs": state.started.elapsed().as_secs_f64(),
    }))
}

async fn render_metrics(State(shared): State<Arc<Shared>>) -> Response {
    let state = &shared.state;
    state.prometheus.run_upkeep();
    let mut response = state.prometheus.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
