//! Feature `opentelemetry`: with `tracing-opentelemetry` and the SDK's real tracer provider,
//! each trace's span is exported with the ids its JSON lines carry.

use keel_correlation::{Incoming, Tracer};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::{Capture, ready};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

/// Runs `f` with a tracer that writes lines to a capture and has spans, under a subscriber
/// exporting through `tracing-opentelemetry` to the SDK's in-memory exporter; returns the
/// start lines and the exported spans, both by span name (the operation).
fn exported(f: impl FnOnce(&Tracer)) -> (Vec<Value>, Vec<SpanData>) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_id_generator(keel_correlation::opentelemetry::TraceIds::default())
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("correlation-test")));
    let capture = Capture::default();
    let tracer = capture.tracer().with_spans();
    tracing::subscriber::with_default(subscriber, || f(&tracer));
    let starts = capture
        .lines()
        .into_iter()
        .filter(|line| line["event"] == "trace.start")
        .collect();
    (starts, exporter.get_finished_spans().unwrap())
}

/// The exported span of the trace whose start line is `line`.
fn span_of<'a>(line: &Value, spans: &'a [SpanData]) -> &'a SpanData {
    let span_id = line["span_id"].as_str().unwrap();
    spans
        .iter()
        .find(|span| span.span_context.span_id().to_string() == span_id)
        .unwrap_or_else(|| panic!("no exported span has the span id of {line}: {spans:#?}"))
}

/// The exported span's trace-id, span-id and parent equal the logged ones.
fn assert_joins(line: &Value, span: &SpanData) {
    assert_eq!(
        span.span_context.trace_id().to_string(),
        line["trace_id"].as_str().unwrap(),
        "{line}"
    );
    assert_eq!(
        span.span_context.span_id().to_string(),
        line["span_id"].as_str().unwrap(),
        "{line}"
    );
    match line["parent_span_id"].as_str() {
        Some(parent) => assert_eq!(span.parent_span_id.to_string(), parent, "{line}"),
        None => assert_eq!(span.parent_span_id, SpanId::INVALID, "{line}"),
    }
}

#[test]
fn a_continued_trace_is_exported_with_the_received_parent_and_tracestate() {
    let (lines, spans) = exported(|tracer| {
        let incoming =
            Incoming::from_headers([("traceparent", TRACEPARENT), ("tracestate", TRACESTATE)]);
        ready(tracer.continue_trace(incoming, "GET /orders", async {}));
    });
    assert_eq!((lines.len(), spans.len()), (1, 1), "{lines:?} {spans:#?}");
    let span = span_of(&lines[0], &spans);
    assert_joins(&lines[0], span);
    assert_eq!(lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(lines[0]["parent_span_id"], "00f067aa0ba902b7");
    assert!(span.parent_span_is_remote);
    assert_eq!(span.span_context.trace_state().header(), TRACESTATE);
    assert!(span.span_context.is_sampled());
}

#[test]
fn a_new_trace_is_exported_as_a_root_with_its_own_ids() {
    let (lines, spans) = exported(|tracer| {
        // Inside an unrelated span: the trace is still a root, as its lines say.
        let _outer = tracing::info_span!("unrelated").entered();
        tracer.trace_sync("job", || {});
    });
    assert_eq!(lines.len(), 1);
    let span = span_of(&lines[0], &spans);
    assert_joins(&lines[0], span);
    assert!(lines[0].get("parent_span_id").is_none());
    assert_ne!(span.span_context.trace_id(), TraceId::INVALID);
}

#[test]
fn a_nested_trace_is_exported_as_a_child_of_the_outer_trace() {
    let (lines, spans) = exported(|tracer| {
        let incoming = Incoming::from_headers([("traceparent", TRACEPARENT)]);
        ready(tracer.continue_trace(incoming, "GET /orders", async {
            // An unrelated span in between: the nested trace's parent is still the outer trace.
            let _between = tracing::info_span!("between").entered();
            ready(keel_correlation::start_trace("load", async {}));
            keel_correlation::trace_sync("resize", || {});
        }));
    });
    assert_eq!((lines.len(), spans.len()), (3, 4), "{lines:?} {spans:#?}");
    for line in &lines {
        assert_joins(line, span_of(line, &spans));
    }
    let outer = &lines[0];
    for nested in &lines[1..] {
        assert_eq!(nested["parent_span_id"], outer["span_id"]);
        assert_eq!(nested["trace_id"], outer["trace_id"]);
        assert!(!span_of(nested, &spans).parent_span_is_remote, "{nested}");
    }
}

#[test]
fn spans_that_are_not_a_traces_get_random_ids() {
    let (_, spans) = exported(|_| {
        let _unrelated = tracing::info_span!("unrelated").entered();
    });
    assert_eq!(spans.len(), 1);
    assert_ne!(spans[0].span_context.span_id(), SpanId::INVALID);
    assert_ne!(spans[0].span_context.trace_id(), TraceId::INVALID);
}

#[test]
fn a_trace_polled_on_another_thread_keeps_its_ids() {
    let (lines, spans) = exported(|tracer| {
        let future = tracer.start_trace("moved", async {});
        // First polled (and so first entered) on another thread, as on a multi-threaded
        // runtime: the exported span was built when the trace opened, with its ids.
        std::thread::scope(|scope| scope.spawn(|| ready(future)).join().unwrap());
    });
    assert_eq!((lines.len(), spans.len()), (1, 1), "{lines:?} {spans:#?}");
    assert_joins(&lines[0], span_of(&lines[0], &spans));
}

#[test]
fn an_unsampled_continued_trace_is_not_exported() {
    // The received flags are the parent's: the SDK's default parent-based sampler drops it.
    let (lines, spans) = exported(|tracer| {
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let incoming = Incoming::from_headers([("traceparent", unsampled)]);
        tracer.continue_trace_sync(incoming, "GET /orders", || {});
    });
    assert_eq!(lines.len(), 1);
    assert!(spans.is_empty(), "{spans:#?}");
}

#[test]
fn a_tracer_without_spans_exports_nothing() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_id_generator(keel_correlation::opentelemetry::TraceIds::default())
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("correlation-test")));
    let capture = Capture::default();
    tracing::subscriber::with_default(subscriber, || {
        capture.tracer().trace_sync("job", || {});
    });
    assert_eq!(capture.lines().len(), 2);
    assert!(exporter.get_finished_spans().unwrap().is_empty());
}
