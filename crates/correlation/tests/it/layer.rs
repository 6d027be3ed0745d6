//! The `tracing-subscriber` integration puts the ids at the top level of JSON events.

use correlation::{Tracer, WithCorrelation};
use serde_json::Value;
use tracing_subscriber::{fmt::format, prelude::*};

use crate::{Capture, ready};

fn json_events(capture: &Capture) -> Vec<Value> {
    capture.lines()
}

#[test]
fn json_events_inside_a_trace_carry_top_level_ids() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .event_format(WithCorrelation::new(format().json()))
        .with_writer(move || writer.clone())
        .finish();
    let context = tracing::subscriber::with_default(subscriber, || {
        tracing::info!(answer = 42, "outside");
        let context = ready(Tracer::off().start_trace("request", async {
            tracing::info!(answer = 42, "inside");
            correlation::current().unwrap()
        }));
        Tracer::off().trace_sync("sync", || tracing::warn!("sync inside"));
        context
    });
    let events = json_events(&capture);
    assert_eq!(events.len(), 3);
    assert!(events[0].get("correlation_id").is_none());
    assert_eq!(events[0]["fields"]["message"], "outside");
    let inside = &events[1];
    assert_eq!(
        inside["correlation_id"],
        context.correlation_id().to_string()
    );
    assert_eq!(inside["trace_id"], context.trace_id().to_string());
    assert_eq!(inside["span_id"], context.span_id().to_string());
    assert_eq!(inside["fields"]["message"], "inside");
    assert_eq!(inside["fields"]["answer"], 42);
    assert_eq!(inside["level"], "info", "the crate's level spelling");
    assert!(events[2]["correlation_id"].is_string());
}

#[test]
fn json_layer_works_with_a_registry() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::registry()
        .with(correlation::json_layer().with_writer(move || writer.clone()));
    let id = tracing::subscriber::with_default(subscriber, || {
        Tracer::off().trace_sync("sync", || {
            tracing::info!("hello");
            correlation::correlation_id().unwrap()
        })
    });
    let events = json_events(&capture);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["correlation_id"], id.to_string());
}

#[test]
fn tracer_can_emit_start_and_end_as_tracing_events() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .event_format(WithCorrelation::new(format().json().flatten_event(true)))
        .with_writer(move || writer.clone())
        .finish();
    let result: Result<(), &str> = tracing::subscriber::with_default(subscriber, || {
        ready(Tracer::tracing().start_trace("request", async { Err("no stock") }))
    });
    assert!(result.is_err());
    let events = json_events(&capture);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event"], "trace.start");
    assert_eq!(events[0]["target"], "correlation");
    assert_eq!(events[1]["event"], "trace.end");
    assert_eq!(events[1]["outcome"], "error");
    assert_eq!(events[1]["error"], "no stock");
    assert_eq!(events[1]["level"], "error");
    assert_eq!(events[0]["correlation_id"], events[1]["correlation_id"]);
}
