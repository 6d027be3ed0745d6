//! The `http` crate integration (feature `http`): outcomes of HTTP responses, and the
//! trace headers of an [`http::HeaderMap`].
//!
//! A traced handler that returns an [`http::Response`] (or an [`http::StatusCode`], or a
//! tuple holding one) ends with outcome `error` when the status is a server error (5xx),
//! with the status as the error text, e.g. `503 Service Unavailable`. For another rule
//! (4xx too, or only some statuses), return [`Classified`] instead.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::{Arc, Mutex};
//! # #[derive(Clone, Default)] struct Shared(Arc<Mutex<Vec<u8>>>);
//! # impl std::io::Write for Shared {
//! #     fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> { self.0.lock().unwrap().write(bytes) }
//! #     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
//! # }
//! let output = Shared::default();
//! let tracer = keel_correlation::Tracer::writer(output.clone());
//! let response = tracer.start_trace("GET /orders", async {
//!     http::Response::builder().status(503).body(()).unwrap()
//! }).await;
//! assert_eq!(response.status(), 503);
//! let text = String::from_utf8(output.0.lock().unwrap().clone()).unwrap();
//! assert!(text.contains(r#""outcome":"error""#));
//! assert!(text.contains(r#""error":"503 Service Unavailable""#));
//! # }
//! ```

use std::{fmt, sync::OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::{Incoming, Propagation, TraceOutcome, headers::SeenHeaders};

/// What a status says: itself as the error (its `Display`, e.g. `503 Service Unavailable`)
/// when `is_error` holds for it.
pub(crate) fn status_outcome(
    status: StatusCode,
    is_error: fn(StatusCode) -> bool,
) -> Option<&'static dyn fmt::Display> {
    is_error(status).then(|| static_status(status) as &dyn fmt::Display)
}

/// A `'static` copy of `status`: `Response::status` returns the status by value, and
/// [`TraceOutcome::trace_error`] hands out a reference.
fn static_status(status: StatusCode) -> &'static StatusCode {
    static STATUSES: OnceLock<Vec<StatusCode>> = OnceLock::new();
    let statuses = STATUSES.get_or_init(|| {
        (100..1000)
            .filter_map(|code| StatusCode::from_u16(code).ok())
            .collect()
    });
    // Every `StatusCode` is in 100..1000, so the table holds it at `code - 100`.
    &statuses[usize::from(status.as_u16() - 100)]
}

/// Whether a status is a server error (5xx): the default rule.
pub fn is_server_error(status: StatusCode) -> bool {
    status.is_server_error()
}

impl TraceOutcome for StatusCode {
    fn trace_error(&self) -> Option<&dyn fmt::Display> {
        status_outcome(*self, is_server_error)
    }
}

impl<B> TraceOutcome for Response<B> {
    fn trace_error(&self) -> Option<&dyn fmt::Display> {
        status_outcome(self.status(), is_server_error)
    }
}

/// A response (or any value with a status) with its own rule for which statuses are an
/// `error` outcome.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use keel_correlation::http::Classified;
/// use keel_correlation::TraceOutcome as _;
///
/// let not_found = http::Response::builder().status(404).body(()).unwrap();
/// assert!(not_found.trace_error().is_none());
/// let strict = Classified::new(not_found, |status| status.is_client_error() || status.is_server_error());
/// assert_eq!(strict.trace_error().unwrap().to_string(), "404 Not Found");
/// let response = strict.into_inner();
/// # drop(response);
/// # }
/// ```
#[derive(Debug)]
pub struct Classified<B> {
    response: Response<B>,
    is_error: fn(StatusCode) -> bool,
}

impl<B> Classified<B> {
    /// `response`, an error outcome when `is_error` holds for its status.
    pub fn new(response: Response<B>, is_error: fn(StatusCode) -> bool) -> Self {
        Self { response, is_error }
    }

    /// The response.
    pub fn into_inner(self) -> Response<B> {
        self.response
    }

    /// The response, borrowed.
    pub fn response(&self) -> &Response<B> {
        &self.response
    }
}

impl<B> TraceOutcome for Classified<B> {
    fn trace_error(&self) -> Option<&dyn fmt::Display> {
        status_outcome(self.response.status(), self.is_error)
    }
}

/// [`Incoming::from_headers`] for an [`http::HeaderMap`].
///
/// ```
/// let mut headers = http::HeaderMap::new();
/// headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
/// let incoming = keel_correlation::http::incoming(&headers, None);
/// assert_eq!(incoming.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// ```
#[inline]
pub fn incoming(headers: &HeaderMap, propagation: Option<&Propagation>) -> Incoming {
    // One pass; a `HeaderMap`'s names are already lowercase, so an exact match (a length
    // check, then a comparison) is enough, and cheaper than four hashed look-ups.
    let mut seen = SeenHeaders::default();
    for (name, value) in headers {
        let value = value.as_bytes();
        match name.as_str() {
            "traceparent" => seen.traceparent.add(value),
            "tracestate" => seen.trace_state.push(value),
            "x-correlation-id" => seen.correlation.add(value),
            "x-request-id" => seen.request.add(value),
            _ => {}
        }
    }
    Incoming::from_seen(propagation, &seen)
}

/// Adds `headers` (from [`crate::client_call`], [`crate::outgoing_headers`] or
/// [`crate::TraceContext::response_headers`]) to a [`http::HeaderMap`], replacing any
/// value already there. The values come from this crate, whose ids and formats only use
/// header-safe characters; one that would not be a valid header value is skipped.
///
/// ```
/// let mut headers = http::HeaderMap::new();
/// keel_correlation::http::insert(&mut headers, vec![("x-request-id", "req-1".to_owned())]);
/// assert_eq!(headers["x-request-id"], "req-1");
/// ```
pub fn insert(map: &mut HeaderMap, headers: Vec<(&'static str, String)>) {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::try_from(value) {
            map.insert(header_name(name), value);
        }
    }
}

/// The header names this crate sends, built once: `HeaderName::from_static` looks a name up
/// among the standard ones and validates it every time it runs.
fn header_name(name: &'static str) -> HeaderName {
    const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
    const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
    const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    match name {
        "traceparent" => TRACEPARENT,
        "tracestate" => TRACESTATE,
        "x-correlation-id" => CORRELATION_ID,
        "x-request-id" => REQUEST_ID,
        other => HeaderName::from_static(other),
    }
}
