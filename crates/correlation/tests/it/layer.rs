//! The `tracing-subscriber` integration puts the ids at the top level of JSON events.

use keel_correlation::{Tracer, WithCorrelation};
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
            keel_correlation::current().unwrap()
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
        .with(keel_correlation::json_layer().with_writer(move || writer.clone()));
    let id = tracing::subscriber::with_default(subscriber, || {
        Tracer::off().trace_sync("sync", || {
            tracing::info!("hello");
            keel_correlation::correlation_id().unwrap()
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
    assert_eq!(events[0]["target"], "keel_correlation");
    assert_eq!(events[1]["event"], "trace.end");
    assert_eq!(events[1]["outcome"], "error");
    assert_eq!(events[1]["error"], "no stock");
    assert_eq!(events[1]["level"], "error");
    assert_eq!(events[0]["correlation_id"], events[1]["correlation_id"]);
}

/// How often `name` is a top-level key of a JSON line (a parsed `Value` would silently keep
/// only the last of duplicated keys).
fn key_count(line: &str, name: &str) -> usize {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct KeysVisitor;
            impl<'de> serde::de::Visitor<'de> for KeysVisitor {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(key);
                    }
                    Ok(Keys(keys))
                }
            }
            deserializer.deserialize_map(KeysVisitor)
        }
    }
    let Keys(keys) = serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"));
    keys.iter().filter(|key| *key == name).count()
}

/// Checks the one schema every line shares and returns the parsed lines.
fn assert_one_schema(text: &str) -> Vec<Value> {
    let mut parsed = Vec::new();
    for line in text.lines() {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"));
        let timestamp = value["timestamp"]
            .as_str()
            .unwrap_or_else(|| panic!("{line}"));
        assert_eq!(timestamp.len(), 24, "RFC 3339 with milliseconds: {line}");
        assert!(timestamp.ends_with('Z'), "{line}");
        let level = value["level"].as_str().unwrap_or_else(|| panic!("{line}"));
        assert!(
            ["trace", "debug", "info", "warn", "error"].contains(&level),
            "lowercase level: {line}"
        );
        assert!(value.get("fields").is_none(), "flat: {line}");
        for id in [
            "timestamp",
            "level",
            "correlation_id",
            "trace_id",
            "span_id",
        ] {
            assert!(key_count(line, id) <= 1, "{id} at most once: {line}");
        }
        parsed.push(value);
    }
    parsed
}

#[test]
fn every_line_of_a_mixed_run_has_one_flat_schema() {
    for own_lines_through_tracing in [false, true] {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::registry()
            .with(keel_correlation::json_layer().with_writer(move || writer.clone()));
        let tracer = if own_lines_through_tracing {
            Tracer::tracing()
        } else {
            capture.tracer()
        };
        let (first, second) = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before any request");
            let request = |answer: u32| {
                ready(tracer.start_trace("GET /orders", async move {
                    tracing::info!(answer, "looked up");
                    tracing::warn!(user = "alice", "slow");
                    keel_correlation::current().unwrap()
                }))
            };
            (request(1), request(2))
        });
        let lines = assert_one_schema(&capture.text());
        assert_eq!(lines.len(), 9, "{}", capture.text());
        for context in [&first, &second] {
            let id = context.correlation_id().to_string();
            // `jq 'select(.correlation_id == X)'` finds all four lines of the request.
            let mine: Vec<&Value> = lines
                .iter()
                .filter(|line| line["correlation_id"] == id.as_str())
                .collect();
            assert_eq!(mine.len(), 4, "tracing: {own_lines_through_tracing}");
            for line in &mine {
                assert_eq!(line["trace_id"], context.trace_id().to_string());
                assert_eq!(line["span_id"], context.span_id().to_string());
            }
            assert_eq!(mine[0]["event"], "trace.start");
            assert_eq!(mine[1]["message"], "looked up");
            assert_eq!(mine[2]["level"], "warn");
            assert_eq!(mine[2]["user"], "alice");
            assert_eq!(mine[3]["event"], "trace.end");
            assert_eq!(mine[3]["outcome"], "success");
        }
        assert!(lines[0].get("correlation_id").is_none(), "outside a trace");
    }
}

#[test]
fn an_application_field_named_correlation_id_cannot_spoof_the_id() {
    type MakeSubscriber = fn(Capture) -> Box<dyn tracing::Subscriber + Send + Sync>;
    let formats: [(&str, MakeSubscriber); 3] = [
        ("json_layer", |capture| {
            Box::new(
                tracing_subscriber::registry()
                    .with(keel_correlation::json_layer().with_writer(move || capture.clone())),
            )
        }),
        ("WithCorrelation, flattened", |capture| {
            Box::new(
                tracing_subscriber::fmt()
                    .event_format(WithCorrelation::new(format().json().flatten_event(true)))
                    .with_writer(move || capture.clone())
                    .finish(),
            )
        }),
        ("WithCorrelation, nested fields", |capture| {
            Box::new(
                tracing_subscriber::fmt()
                    .event_format(WithCorrelation::new(format().json()))
                    .with_writer(move || capture.clone())
                    .finish(),
            )
        }),
    ];
    for (name, make) in formats {
        let capture = Capture::default();
        let subscriber = make(capture.clone());
        let context = tracing::subscriber::with_default(subscriber, || {
            tracing::info!(correlation_id = "spoofed", "outside");
            ready(Tracer::tracing().start_trace("request", async {
                tracing::info!(
                    correlation_id = "spoofed",
                    trace_id = 7,
                    span_id = "x",
                    "inside"
                );
                keel_correlation::current().unwrap()
            }))
        });
        let text = capture.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{name}: {text}");
        for line in &lines {
            assert!(key_count(line, "correlation_id") <= 1, "{name}: {line}");
            let value: Value = serde_json::from_str(line).unwrap();
            assert_ne!(value["correlation_id"], "spoofed", "{name}: {line}");
            assert!(
                value["level"]
                    .as_str()
                    .unwrap()
                    .chars()
                    .all(|c| c.is_ascii_lowercase()),
                "{name}: {line}"
            );
        }
        let outside: Value = serde_json::from_str(lines[0]).unwrap();
        assert!(
            outside.get("correlation_id").is_none(),
            "{name}: {}",
            lines[0]
        );
        for line in &lines[1..] {
            let value: Value = serde_json::from_str(line).unwrap();
            assert_eq!(
                value["correlation_id"],
                context.correlation_id().to_string(),
                "{name}: {line}"
            );
            assert_eq!(
                value["span_id"],
                context.span_id().to_string(),
                "{name}: {line}"
            );
        }
        let inside: Value = serde_json::from_str(lines[2]).unwrap();
        let spoof = if name.ends_with("nested fields") {
            &inside["fields"]["correlation_id"]
        } else {
            &inside["field.correlation_id"]
        };
        assert_eq!(
            spoof, "spoofed",
            "{name}: the application's value is kept, renamed"
        );
    }
}
