//! `Tracer::with_spans`: each trace is also a `tracing` span carrying its ids, so span-based
//! tools see the request; without it a trace makes no span.

use keel_correlation::Tracer;
use serde_json::Value;
use tracing_subscriber::fmt::format;

use crate::{Capture, ready};

/// Runs `f` under tracing-subscriber's JSON format (which writes each event's current span
/// and its fields) and returns the events.
fn events_of<R>(f: impl FnOnce() -> R) -> (R, Vec<Value>) {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .event_format(format().json())
        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
        .with_writer(move || writer.clone())
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    (result, capture.lines())
}

#[test]
fn each_trace_is_a_span_with_its_ids() {
    let lines = Capture::default();
    let plain = lines.tracer();
    // A clone with spans shares the sink (and the counters) with the plain one.
    let tracer = plain.clone().with_spans();
    let ((outer, inner, sync), events) = events_of(|| {
        ready(tracer.start_trace("GET /orders", async {
            tracing::info!("in the request");
            let inner = keel_correlation::start_trace("load", async {
                tracing::info!("in the nested trace");
                keel_correlation::current().unwrap()
            })
            .await;
            let sync = keel_correlation::trace_sync("resize", || {
                tracing::info!("in a sync trace");
                keel_correlation::current().unwrap()
            });
            (keel_correlation::current().unwrap(), inner, sync)
        }))
    });
    let app: Vec<&Value> = events
        .iter()
        .filter(|event| event["target"] != "keel_correlation")
        .collect();
    assert_eq!(app.len(), 3, "{events:?}");
    for (event, context) in app.iter().zip([&outer, &inner, &sync]) {
        let span = &event["span"];
        assert_eq!(span["name"], "trace", "{event}");
        assert_eq!(span["correlation_id"], context.correlation_id().to_string());
        assert_eq!(span["trace_id"], context.trace_id().to_string());
        assert_eq!(span["span_id"], context.span_id().to_string());
        assert_eq!(span["operation"], context.operation());
    }
    assert_eq!(
        app[1]["span"]["parent_span_id"],
        outer.span_id().to_string()
    );
    // The nested span is a child of the request's span for tracing too.
    assert_eq!(app[1]["spans"].as_array().unwrap().len(), 2);
    // The lines are still written, to the shared sink.
    assert_eq!(lines.lines().len(), 6);
    ready(plain.start_trace("plain", async {}));
    assert_eq!(lines.lines().len(), 8);
}

#[test]
fn without_spans_a_trace_makes_none() {
    let ((), events) = events_of(|| {
        Tracer::off().trace_sync("job", || tracing::info!("no span"));
        ready(Tracer::off().start_trace("job", async { tracing::info!("no span") }));
    });
    assert_eq!(events.len(), 2);
    for event in &events {
        assert!(event.get("span").is_none(), "{event}");
    }
    // Spans without lines: `Tracer::off().with_spans()`.
    let (id, events) = events_of(|| {
        ready(Tracer::off().with_spans().start_trace("quiet", async {
            tracing::info!("in a quiet span");
            keel_correlation::correlation_id().unwrap()
        }))
    });
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["span"]["correlation_id"], id.to_string());
}
