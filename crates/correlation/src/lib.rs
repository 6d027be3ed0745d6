//! Task-local trace context (correlation id, operation, start time) with JSON start/complete
//! lines, propagation helpers, and W3C Trace Context interop.
//!
//! # The `tokio::spawn` trap
//!
//! The context lives in a scope of the crate's own: a per-thread slot that a trace's future
//! fills around every poll (and around dropping it unfinished) and that [`sync_scope`] fills
//! around a closure, the mechanism of `tokio::task_local!` without its layers. So **a task
//! started with `tokio::spawn` or `tokio::task::spawn_blocking` does not inherit the
//! trace**, nor does a new thread: code running there sees no trace, and its logs lose the
//! correlation id. Use
//! [`spawn`], [`spawn_blocking`], [`TraceFutureExt::in_current_trace`] or, for threads and
//! pools, [`bind`] (or [`sync_scope`] with a context from [`current`]).
//!
//! To make the compiler catch the bare calls, copy this into the `clippy.toml` next to your
//! `Cargo.toml` (this crate uses it on itself):
//!
//! ```toml
//! disallowed-methods = [
//!     { path = "tokio::spawn", reason = "loses the trace context: use keel_correlation::spawn" },
//!     { path = "tokio::task::spawn", reason = "loses the trace context: use keel_correlation::spawn" },
//!     { path = "tokio::task::spawn_blocking", reason = "loses the trace context: use keel_correlation::spawn_blocking" },
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
//! let tracer = keel_correlation::Tracer::off(); // or `Tracer::stderr()`, `Tracer::writer(w)`
//! let result: Result<u32, String> = tracer.start_trace("GET /orders", async {
//!     let request_id = keel_correlation::correlation_id().unwrap();
//!     let nested = keel_correlation::start_trace("load-order", async {
//!         keel_correlation::current().unwrap()
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
//! [`set_global`]), any `Write + Send`, `tracing` events, or off; with
//! [`Tracer::with_spans`] every trace is also a `tracing` span carrying its ids. A trace
//! started through a tracer uses it, and traces nested inside inherit it. Write failures (a sink's I/O error,
//! a panicking sink or `tracing` subscriber) are counted ([`Tracer::write_failures`]) and
//! never reach the traced work; neither does an error whose `Display` panics or fails,
//! which is logged as a placeholder text.
//!
//! Incoming requests: [`Incoming::from_headers`] picks `traceparent` > `x-correlation-id` >
//! `x-request-id`, validates them and hands [`continue_trace`] (or, without a runtime,
//! [`continue_trace_sync`]) the context to continue. Each outgoing call is a span of its
//! own: [`client_call`] opens it and hands the call its headers, so every call carries its
//! own parent-id ([`TraceParent`], [`TraceState`] implement the W3C formats).
//! [`Incoming::response_headers`] gives the id headers to send back.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let incoming = keel_correlation::Incoming::from_headers([
//!     ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"),
//!     ("x-request-id", "req-1"),
//! ]);
//! assert_eq!(incoming.response_headers(), vec![("x-request-id", "req-1".to_owned())]);
//! keel_correlation::Tracer::off().continue_trace(incoming, "GET /orders", async {
//!     let sent: Result<Vec<(&str, String)>, String> =
//!         keel_correlation::client_call("GET inventory", |headers| async move { Ok(headers) }).await;
//!     let sent = sent.unwrap();
//!     assert!(sent[0].1.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
//!     assert!(sent[0].1.ends_with("-03")); // sampled, random: as received
//!     assert_eq!(sent[1], ("x-request-id", "req-1".to_owned())); // as the caller sent it
//! }).await;
//! # }
//! ```
//!
//! # W3C Trace Context
//!
//! The crate implements **W3C Trace Context Level 2** as currently published (the Editor's
//! Draft of the `w3c/trace-context` repository, whose test suite's `TraceContextTest`,
//! `AdvancedTest` and `TraceContext2Test` classes it is written against):
//!
//! - `traceparent`: lowercase hex, exact lengths, version `ff` and all-zero ids invalid,
//!   version `00` exactly 55 characters, higher versions read for their known fields;
//!   flags `sampled` (0x01) and `random` (0x02) kept from a received header and sent on
//!   with the same trace id, the reserved bits sent as zero; a new trace sets `random` when
//!   its trace id is random (a UUID v4 is) and `sampled` as the [`Sampling`] decides.
//! - `tracestate`: Level 2's key grammar (`(lcalpha / DIGIT) 0*255(keychar)`, `@` allowed
//!   after the first character), values as before, at most 32 members, several header
//!   fields combined, empty members and optional whitespace allowed; a duplicated key drops
//!   only its later entries; an invalid member drops the header. A service's own entry
//!   ([`Propagation::tracestate_key`]) is added or updated at the front, and a sent
//!   `tracestate` is truncated to 512 characters, whole entries, those over 128 characters
//!   first.
//! - Participant choices, one [`Propagation`]: continue (the default), restart at a trust
//!   boundary, or pass through unchanged ([`Mode`]); the sampling decision for new traces;
//!   which of `x-correlation-id` and `x-request-id` go downstream and back ([`IdHeader`],
//!   by default the ones the caller sent, with its values).
//!
//! Level 1 (the W3C Recommendation) differs in three places, where the two levels' test
//! suites contradict each other: Level 1 masks every flag but `sampled`, splits keys into
//! `tenant@system` with their own length limits and no `@` elsewhere, and its suite expects
//! a `tracestate` with a duplicated key to be dropped whole. The crate follows Level 2; a
//! service that must follow Level 1 strictly says so once,
//! `Propagation::new().level(TraceContextLevel::Level1)` (see [`TraceContextLevel`]).
//!
//! # Feature flags
//!
//! - `tracing-subscriber` (default): [`json_layer`] and [`JsonFormat`], which write the
//!   application's events in the schema of the crate's own lines (below), and
//!   [`WithCorrelation`], which puts the ids at the top level of another formatter's lines.
//! - `http`: [`TraceOutcome`] for `http::Response` and `http::StatusCode` (a 5xx status is
//!   an `error` outcome), and header helpers for `http::HeaderMap` (module [`http`]).
//! - `tower` (with `http`): [`tower::ServerLayer`], which runs every `http::Request` as a
//!   trace continued from its headers and echoes the id headers, and [`tower::ClientLayer`],
//!   which makes every outgoing request a span of its own with that span's headers.
//! - `reqwest` (with `http`): [`reqwest::Middleware`] for `reqwest-middleware` clients,
//!   set up once per client: every request a span of its own with that span's headers.
//! - `opentelemetry`: with [`Tracer::with_spans`] and `tracing-opentelemetry` installed,
//!   each trace's span is exported with the trace's own trace-id, span-id, parent span-id,
//!   flags and tracestate, so log lines and exported spans join on one id; install
//!   [`opentelemetry::TraceIds`] as the SDK's id generator (module [`opentelemetry`]).
//! - `v7`: generate time-ordered UUID v7 correlation ids instead of random v4 (their trace
//!   ids do not get the `random` flag: part of a UUID v7's low bytes is a counter).
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
//!
//! With [`json_layer`], the application's `tracing` events are written in the same schema:
//! `timestamp`, `level` (lowercase), inside a trace `correlation_id`, `trace_id` and
//! `span_id` (always the trace's own, exactly once), then `target` and the event's fields at
//! the top level (`message` for the message; a field named like one of the schema's own is
//! written as `field.<name>`). [`Tracer::tracing`]'s start and end events come out exactly
//! as the lines above.

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
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub mod opentelemetry;
mod policy;
mod propagate;
mod random;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;
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
        MAX_TRACESTATE_LEN, MAX_TRACESTATE_MEMBERS, TraceContextLevel, TraceParent,
        TraceParentError, TraceState, TraceStateError,
    },
};

#[cfg(feature = "tracing-subscriber")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing-subscriber")))]
pub use crate::layer::{JsonFormat, WithCorrelation, json_layer};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
