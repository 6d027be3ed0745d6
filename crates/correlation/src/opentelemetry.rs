//! OpenTelemetry export of each trace's `tracing` span with the trace's own ids.
//!
//! With [`Tracer::with_spans`](crate::Tracer::with_spans) each trace is a `tracing` span;
//! with this feature and [`tracing-opentelemetry`](https://docs.rs/tracing-opentelemetry)
//! installed, that span is exported with the trace-id, span-id, parent span-id, flags and
//! tracestate the trace's JSON lines and outgoing headers carry, so the log lines and the
//! exported spans join on one id.
//!
//! # What to install
//! 1. [`TraceIds`] as the SDK tracer provider's id generator
//!    (`SdkTracerProvider::builder().with_id_generator(TraceIds::default())`). The SDK draws
//!    a span's own span-id (and a root's trace-id) from its id generator; `TraceIds` hands
//!    out the ids of the trace whose span is being opened, and random ids (the SDK's
//!    default generator) to every other span.
//! 2. `tracing_opentelemetry::layer().with_tracer(provider.tracer(..))` in the subscriber.
//! 3. A tracer with spans: `Tracer::...with_spans()`.
//!
//! The parent is set from the trace itself, not from the `tracing` span tree: a continued
//! trace's parent is the received `traceparent` parent-id (a remote parent, with the received
//! flags and tracestate), a nested trace's parent is the enclosing trace's span, and a new
//! trace is a root even inside an unrelated `tracing` span.
//!
//! # Cost
//! With the feature off nothing changes. With it on, a tracer without spans pays nothing
//! (there is no span to export). With spans on, each trace's span is built by the SDK when it
//! opens (on the thread that opens it, which is how `TraceIds` knows its ids), rather than
//! on first entry.
//!
//! # Example
//! ```
//! use opentelemetry::trace::TracerProvider as _;
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
//! use tracing_subscriber::layer::SubscriberExt as _;
//!
//! let exporter = InMemorySpanExporter::default();
//! let provider = SdkTracerProvider::builder()
//!     .with_id_generator(keel_correlation::opentelemetry::TraceIds::default())
//!     .with_simple_exporter(exporter.clone())
//!     .build();
//! let subscriber = tracing_subscriber::registry()
//!     .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("my-service")));
//! let tracer = keel_correlation::Tracer::off().with_spans();
//! let context = tracing::subscriber::with_default(subscriber, || {
//!     tracer.trace_sync("job", || keel_correlation::current().unwrap())
//! });
//! let spans = exporter.get_finished_spans().unwrap();
//! let exported = spans[0].span_context.clone();
//! assert_eq!(exported.trace_id().to_string(), context.trace_id().to_string());
//! assert_eq!(exported.span_id().to_string(), context.span_id().to_string());
//! ```

use std::cell::Cell;
use std::str::FromStr as _;

use ::opentelemetry::trace::{self as otel, TraceContextExt as _};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::TraceContext;

/// The SDK id generator that gives each trace's exported span the trace's own ids.
///
/// Install it on the tracer provider (see the [module docs](self)); spans that are not a
/// trace's get random ids, as with the SDK's default generator.
///
/// ```
/// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
///     .with_id_generator(keel_correlation::opentelemetry::TraceIds::default())
///     .build();
/// # drop(provider);
/// ```
#[derive(Clone, Debug, Default)]
pub struct TraceIds {
    random: RandomIdGenerator,
}

thread_local! {
    /// The trace-id and span-id of the trace whose span this thread is building now.
    static OPENING: Cell<Option<(u128, u64)>> = const { Cell::new(None) };
}

impl IdGenerator for TraceIds {
    fn new_trace_id(&self) -> otel::TraceId {
        match OPENING.with(Cell::get) {
            Some((trace_id, _)) => otel::TraceId::from(trace_id),
            None => self.random.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> otel::SpanId {
        match OPENING.with(Cell::get) {
            Some((_, span_id)) => otel::SpanId::from(span_id),
            None => self.random.new_span_id(),
        }
    }
}

/// Gives `span`, the `tracing` span of the trace of `context`, the trace's parent and builds
/// its OpenTelemetry span now, so [`TraceIds`] hands it the trace's ids. Does nothing when no
/// `tracing-opentelemetry` layer records the span.
pub(crate) fn open(span: &tracing::Span, context: &TraceContext) {
    if span.is_disabled() {
        return;
    }
    let trace_id = context.trace_id.to_u128();
    let parent = match context.parent_span_id {
        Some(parent_span_id) => {
            // The parent is local when it is the enclosing trace (a nested trace or a client
            // call); otherwise it came in with the request.
            let is_remote = !crate::with_current(|current| {
                current.is_some_and(|current| {
                    current.span_id == parent_span_id && current.trace_id == context.trace_id
                })
            });
            let trace_state = context
                .trace_state
                .as_ref()
                .and_then(|state| otel::TraceState::from_str(&state.to_string()).ok())
                .unwrap_or_default();
            let parent = otel::SpanContext::new(
                otel::TraceId::from(trace_id),
                otel::SpanId::from(parent_span_id.to_u64()),
                otel::TraceFlags::new(context.flags.bits()),
                is_remote,
                trace_state,
            );
            ::opentelemetry::Context::new().with_remote_span_context(parent)
        }
        // A new trace is a root, even inside another `tracing` span.
        None => ::opentelemetry::Context::new(),
    };
    if span.set_parent(parent).is_err() {
        return;
    }
    OPENING.with(|opening| opening.set(Some((trace_id, context.span_id.to_u64()))));
    // `context()` builds the OpenTelemetry span now, on this thread, while `OPENING` holds
    // its ids; built later (on first entry, perhaps on another thread) it would get others.
    let _built = span.context();
    OPENING.with(|opening| opening.set(None));
}
