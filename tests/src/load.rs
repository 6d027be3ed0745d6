//! The demo's load generator: real HTTP requests to the service, on a fixed schedule.
//!
//! A quarter of the requests arrive with a W3C `traceparent` (as from a gateway), a quarter
//! with an `x-request-id`, the rest with neither; one in sixteen carries hostile headers
//! (an all-zero trace id, upper-case hex, a JSON-breaking or oversized id) that the service
//! must neither trust nor let break its log lines.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::body::Body;
use http::{HeaderValue, Request, Response};
use tokio::{task::JoinSet, time::Instant};
use tower::{ServiceExt, util::BoxCloneSyncService};

use crate::{
    demo::mix,
    service::{Answered, BoxError, LoadProgress},
};

/// A client of the service: a real HTTP client, or in-process the service's router.
pub type HttpService = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// One request the load generator sent and what came back.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Its number, from 0.
    pub index: u64,
    /// When it was sent, since the start of the run.
    pub at: Duration,
    /// The key asked for.
    pub key: String,
    /// The `traceparent` sent, if any.
    pub traceparent: Option<String>,
    /// The `x-request-id` sent, if any.
    pub request_id: Option<String>,
    /// Whether it carried hostile headers.
    pub hostile: bool,
    /// The answer's status, or `None` when the request itself failed.
    pub status: Option<u16>,
    /// How the service says it answered (`x-served-by`).
    pub answered: Option<Answered>,
    /// The answer's `Retry-After`.
    pub retry_after: Option<String>,
    /// The answer's `x-request-id`.
    pub echoed_request_id: Option<String>,
}

/// The schedule: how many requests, how far apart, over how many keys.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Requests to send.
    pub requests: u32,
    /// Time between two sends.
    pub interval: Duration,
    /// Distinct keys.
    pub keys: u64,
    /// Seed of the keys and ids.
    pub seed: u64,
}

fn hostile_headers(index: u64) -> Vec<(&'static str, HeaderValue)> {
    let value = |text: &str| HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("x"));
    match (index / 16) % 4 {
        0 => vec![(
            "traceparent",
            value("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        )],
        1 => vec![(
            "traceparent",
            value("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"),
        )],
        2 => vec![(
            "x-request-id",
            value(r#"evil","event":"trace.end","outcome":"success"#),
        )],
        _ => vec![("x-request-id", value(&"a".repeat(4096)))],
    }
}

/// What request `index` sends: its key and headers.
fn request(schedule: &Schedule, base: &str, index: u64) -> (Request<Body>, Sent) {
    let key = format!("item-{}", mix(schedule.seed, index) % schedule.keys.max(1));
    let mut request = Request::get(format!("{base}/items/{key}"))
        .body(Body::empty())
        .unwrap_or_default();
    let hostile = index % 16 == 7;
    let mut sent = Sent {
        index,
        at: Duration::ZERO,
        key,
        traceparent: None,
        request_id: None,
        hostile,
        status: None,
        answered: None,
        retry_after: None,
        echoed_request_id: None,
    };
    let headers = request.headers_mut();
    if hostile {
        for (name, value) in hostile_headers(index) {
            headers.insert(name, value);
        }
    } else if index.is_multiple_of(4) {
        // Never all-zero: both halves have their low bit set.
        let trace = mix(schedule.seed, index) | 1;
        let parent = mix(schedule.seed ^ 0x9A7E, index) | 1;
        let traceparent = format!(
            "00-{trace:016x}{:016x}-{parent:016x}-01",
            trace.rotate_left(17)
        );
        if let Ok(value) = HeaderValue::from_str(&traceparent) {
            headers.insert("traceparent", value);
            sent.traceparent = Some(traceparent);
        }
    } else if index % 4 == 1 {
        let id = format!("load-{index}");
        if let Ok(value) = HeaderValue::from_str(&id) {
            headers.insert("x-request-id", value);
            sent.request_id = Some(id);
        }
    }
    (request, sent)
}

fn header(response: &Response<Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

/// Sends the schedule's requests to `base` through `client`, each on its own task so a slow
/// answer never delays the next send, and returns them in the order sent, and whether
/// `stop` ended the schedule early (the requests already sent are still awaited).
pub async fn run(
    client: HttpService,
    base: String,
    schedule: Schedule,
    started: Instant,
    progress: Arc<Mutex<LoadProgress>>,
    stop: impl std::future::Future<Output = ()>,
) -> (Vec<Sent>, bool) {
    let mut stopped = false;
    let mut tasks = JoinSet::new();
    tokio::pin!(stop);
    for index in 0..u64::from(schedule.requests) {
        let due = started + schedule.interval * u32::try_from(index).unwrap_or(u32::MAX);
        tokio::select! {
            biased;
            () = &mut stop => {
                stopped = true;
                break;
            }
            () = tokio::time::sleep_until(due) => {}
        }
        let (request, mut sent) = request(&schedule, &base, index);
        sent.at = started.elapsed();
        progress.lock().unwrap_or_else(PoisonError::into_inner).sent = index + 1;
        let client = client.clone();
        tasks.spawn(async move {
            if let Ok(response) = client.oneshot(request).await {
                sent.status = Some(response.status().as_u16());
                sent.answered = Answered::from_response(&response);
                sent.retry_after = header(&response, "retry-after");
                sent.echoed_request_id = header(&response, "x-request-id");
            }
            sent
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(sent) = joined {
            all.push(sent);
        }
    }
    all.sort_by_key(|sent| sent.index);
    progress.lock().unwrap_or_else(PoisonError::into_inner).done = true;
    (all, stopped)
}
