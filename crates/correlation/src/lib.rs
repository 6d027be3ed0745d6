//! Task-local trace context (correlation id, operation, start time) with JSON start/complete
//! lines, propagation helpers, and W3C Trace Context interop.
//!
//! # The `tokio::spawn` trap
//!
//! The context lives in a `tokio::task_local!`. **Tokio does not carry task-locals into
//! `tokio::spawn` or `tokio::task::spawn_blocking`**, nor does a new thread inherit them:
//! code in a task spawned that way sees no trace, and its logs lose the correlation id. Use
//! [`spawn`], [`spawn_blocking`], [`TraceFutureExt::in_current_trace`] or, for threads and
//! pools, [`bind`] (or [`sync_scope`] with a context from [`current`]).
//!
//! To make the compiler catch the bare calls, copy this into the `clippy.toml` next to your
//! `Cargo.toml` (this crate uses it on itself):
//!
//! ```toml
//! disallowed-methods = [
//!     { path = "tokio::spawn", reason = "loses the trace context: use correlation::spawn" },
//!     { path = "tokio::task::spawn", reason = "loses the trace context: use correlation::spawn" },
//!     { path = "tokio::task::spawn_blocking", reason = "loses the trace context: use correlation::spawn_blocking" },
//!     { path = "tokio::runtime::Handle::spawn", reason = "loses the trace context: use .in_current_trace()" },
//! ]
//! ```
//!
//! Where a bare spawn is right (the future already carries its trace, e.g. it is a
//! `start_trace` future or ends in `.in_current_trace()`), allow the lint at that spot with
//! `#[allow(clippy::disallowed_methods)]` and say why.
//!
//! # Overview
//!
//! [`start_trace`] runs a future inside a new [`TraceContext`] (a correlation id, a span id,
//! the operation name, start times), writes a JSON line when it starts and exactly one when
//! it ends: `success`, `error` (a `Result::Err`, with its `Display` text; see
//! [`TraceOutcome`]), `panic` (resumed after logging) or `cancelled` (dropped before it
//! finished). Anywhere below, [`correlation_id`] and [`current`] read the context, in async
//! and sync code. Nested traces keep the correlation id and get their own span id.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let tracer = correlation::Tracer::off(); // or `Tracer::stderr()`, `Tracer::writer(w)`
//! let result: Result<u32, String> = tracer.start_trace("GET /orders", async {
//!     let request_id = correlation::correlation_id().unwrap();
//!     let nested = correlation::start_trace("load-order", async {
//!         correlation::current().unwrap()
//!     }).await;
//!     assert_eq!(nested.correlation_id(), &request_id);
//!     assert!(nested.parent_span_id().is_some());
//!     Ok(3)
//! }).await;
//! assert_eq!(result, Ok(3));
//! # }
//! ```
//!
//! Where lines go is a [`Tracer`] value: stderr by default ([`global`], replaceable once with
//! [`set_global`]), any `Write + Send`, `tracing` events, or off. A trace started through a
//! tracer uses it, and traces nested inside inherit it. Write failures (a sink's I/O error,
//! a panicking sink or `tracing` subscriber) are counted ([`Tracer::write_failures`]) and
//! never reach the traced work; neither does an error whose `Display` panics or fails,
//! which is logged as a placeholder text.
//!
//! Incoming requests: [`Incoming::from_headers`] picks `traceparent` > `x-correlation-id` >
//! `x-request-id`, validates them and hands [`continue_trace`] the context to continue;
//! [`outgoing_headers`] gives the headers for calls downstream ([`TraceParent`],
//! [`TraceState`] implement the W3C formats).
//!
//! # Feature flags
//!
//! - `tracing-subscriber` (default): [`WithCorrelation`] and [`json_layer`], which put
//!   `correlation_id`, `trace_id` and `span_id` at the top level of every event that
//!   `tracing-subscriber`'s formatters write inside a trace.
//! - `v7`: generate time-ordered UUID v7 correlation ids instead of random v4.
//!
//! # Log format
//!
//! One JSON object per line, written with a single `write_all`, fields at the top level in
//! this order:
//!
//! | field | present | value |
//! |---|---|---|
//! | `timestamp` | always | RFC 3339 UTC with milliseconds, e.g. `2026-11-28T05:34:46.123Z`; the trace's start time on `trace.start`, the end time on `trace.end` |
//! | `level` | always | `info`; on `trace.end`: `info` (success), `warn` (cancelled), `error` (error, panic) |
//! | `event` | always | `trace.start` or `trace.end` |
//! | `correlation_id` | always | the request's id: a lowercase hyphenated UUID, or a validated received id |
//! | `trace_id` | always | W3C trace id, 32 lowercase hex digits (the UUID's bytes when the id is a UUID) |
//! | `span_id` | always | this span, 16 lowercase hex digits |
//! | `parent_span_id` | when nested or continued from `traceparent` | the enclosing span, 16 hex digits |
//! | `operation` | always | the operation name, JSON-escaped |
//! | `outcome` | `trace.end` | `success`, `error`, `panic` or `cancelled` |
//! | `duration_ms` | `trace.end` | monotonic duration in milliseconds, microsecond resolution |
//! | `error` | `trace.end` with `error` (and `panic` with a text message) | the `Display` text, JSON-escaped |
//!
//! ```text
//! {"timestamp":"2026-11-28T05:34:46.123Z","level":"info","event":"trace.start","correlation_id":"6f1c…","trace_id":"6f1c…","span_id":"9a3e5b7c1d2f4a60","operation":"GET /orders"}
//! {"timestamp":"2026-11-28T05:34:46.131Z","level":"error","event":"trace.end","correlation_id":"6f1c…","trace_id":"6f1c…","span_id":"9a3e5b7c1d2f4a60","operation":"GET /orders","outcome":"error","duration_ms":8.042,"error":"order 7 not found"}
//! ```
//!
//! All text goes through `serde_json`, so a newline in an error message is written as `\n`
//! and can never start a second line.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod clock;
mod context;
mod headers;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
mod id;
#[cfg(feature = "tracing-subscriber")]
mod layer;
mod line;
mod policy;
mod propagate;
mod random;
mod tracer;
mod w3c;

pub use crate::{
    context::{TraceContext, correlation_id, current, outgoing_headers, sync_scope, with_current},
    headers::{IdSource, Incoming, Rejection, RejectionReason},
    id::{
        CorrelationId, InvalidCorrelationId, MAX_CORRELATION_ID_LEN, SpanId, TraceFlags, TraceId,
    },
    policy::{HeaderRule, IdHeader, Mode, Propagation, Sampling},
    propagate::{InTrace, TraceFutureExt, bind, spawn, spawn_blocking},
    tracer::{
        Outcome, TraceOutcome, Tracer, client_call, client_call_sync, continue_trace,
        continue_trace_sync, global, set_global, start_trace, start_trace_with_id, trace_sync,
    },
    w3c::{
        MAX_TRACESTATE_LEN, MAX_TRACESTATE_MEMBERS, TraceParent, TraceParentError, TraceState,
        TraceStateError,
    },
};

#[cfg(feature = "tracing-subscriber")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing-subscriber")))]
pub use crate::layer::{JsonFormat, WithCorrelation, json_layer};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
