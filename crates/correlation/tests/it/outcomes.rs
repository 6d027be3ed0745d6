//! Every trace writes one start line and exactly one end line with the right outcome.

use std::{
    future::{Future, pending},
    pin::pin,
    task::{Context, Poll, Waker},
    time::Duration,
};

use keel_correlation::{CorrelationId, Tracer};
use serde_json::Value;

use crate::{Capture, ready};

fn assert_start(line: &Value, operation: &str) {
    assert_eq!(line["event"], "trace.start");
    assert_eq!(line["level"], "info");
    assert_eq!(line["operation"], operation);
    assert!(line.get("outcome").is_none());
    assert!(line.get("duration_ms").is_none());
    let timestamp = line["timestamp"].as_str().unwrap();
    assert_eq!(
        timestamp.len(),
        "2026-11-28T05:34:46.123Z".len(),
        "{timestamp}"
    );
    assert!(timestamp.ends_with('Z'));
}

/// Checks the end line of a two-line trace and returns it.
fn single_trace(capture: &Capture, operation: &str, outcome: &str) -> Value {
    let lines = capture.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_start(&lines[0], operation);
    let end = &lines[1];
    assert_eq!(end["event"], "trace.end");
    assert_eq!(end["outcome"], outcome);
    assert!(end["duration_ms"].as_f64().unwrap() >= 0.0);
    for field in ["correlation_id", "trace_id", "span_id", "operation"] {
        assert_eq!(lines[0][field], end[field], "{field}");
    }
    end.clone()
}

#[test]
fn success_writes_start_and_end() {
    let capture = Capture::default();
    let value = ready(capture.tracer().start_trace("compute", async { 5 }));
    assert_eq!(value, 5);
    let end = single_trace(&capture, "compute", "success");
    assert_eq!(end["level"], "info");
    assert!(end.get("error").is_none());
    assert!(end.get("parent_span_id").is_none());
    let id = end["correlation_id"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(end["trace_id"], id.replace('-', ""));
    assert_eq!(end["span_id"].as_str().unwrap().len(), 16);
}

#[test]
fn error_result_logs_error_with_display_text() {
    let capture = Capture::default();
    let result: Result<(), String> = ready(
        capture
            .tracer()
            .start_trace("save", async { Err("disk full\nreally".to_owned()) }),
    );
    assert!(result.is_err());
    let end = single_trace(&capture, "save", "error");
    assert_eq!(end["level"], "error");
    assert_eq!(end["error"], "disk full\nreally");
    assert_eq!(capture.text().matches('\n').count(), 2);
}

#[test]
fn ok_result_logs_success() {
    let capture = Capture::default();
    let result: Result<u8, std::io::Error> =
        ready(capture.tracer().start_trace("read", async { Ok(1) }));
    assert_eq!(result.unwrap(), 1);
    single_trace(&capture, "read", "success");
}

#[tokio::test]
#[allow(clippy::disallowed_methods)] // The trace is made here and moved in whole.
async fn panic_is_logged_then_resumed() {
    let capture = Capture::default();
    let tracer = capture.tracer();
    let explode = true;
    let joined = tokio::spawn(tracer.start_trace("explode", async move {
        assert!(!explode, "kaboom");
    }))
    .await;
    let error = joined.unwrap_err();
    assert!(error.is_panic());
    assert_eq!(*error.into_panic().downcast::<&str>().unwrap(), "kaboom");
    let end = single_trace(&capture, "explode", "panic");
    assert_eq!(end["level"], "error");
    assert_eq!(end["error"], "kaboom");
}

#[tokio::test(start_paused = true)]
async fn timeout_cancels_with_one_end_line() {
    let capture = Capture::default();
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        capture.tracer().start_trace("slow", pending::<()>()),
    )
    .await;
    assert!(result.is_err());
    let end = single_trace(&capture, "slow", "cancelled");
    assert_eq!(end["level"], "warn");
    assert!(end.get("error").is_none());
}

#[test]
fn dropping_a_polled_trace_cancels_it() {
    let capture = Capture::default();
    {
        let mut future = pin!(capture.tracer().start_trace("abandoned", pending::<()>()));
        let polled = future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        assert!(polled.is_pending());
        assert_eq!(
            capture.lines().len(),
            1,
            "only the start line while running"
        );
    }
    single_trace(&capture, "abandoned", "cancelled");
}

#[test]
fn a_trace_never_polled_writes_nothing() {
    let capture = Capture::default();
    drop(capture.tracer().start_trace("never", async {}));
    assert_eq!(capture.text(), "");
}

#[test]
fn completed_trace_dropped_later_writes_no_second_end() {
    let capture = Capture::default();
    let mut future = Box::pin(capture.tracer().start_trace("done", async { 1 }));
    assert_eq!(
        future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop())),
        Poll::Ready(1)
    );
    drop(future);
    single_trace(&capture, "done", "success");
}

#[test]
fn nested_trace_keeps_id_and_links_parent() {
    let capture = Capture::default();
    let tracer = capture.tracer();
    let (outer, inner) = ready(tracer.start_trace("outer", async {
        let outer = keel_correlation::current().unwrap();
        let inner =
            keel_correlation::start_trace("inner", async { keel_correlation::current().unwrap() })
                .await;
        // Back in the outer trace after the nested one ends.
        assert_eq!(
            keel_correlation::current().unwrap().span_id(),
            outer.span_id()
        );
        (outer, inner)
    }));
    assert_eq!(inner.correlation_id(), outer.correlation_id());
    assert_eq!(inner.trace_id(), outer.trace_id());
    assert_ne!(inner.span_id(), outer.span_id());
    assert_eq!(inner.parent_span_id(), Some(outer.span_id()));
    let lines = capture.lines();
    let events: Vec<(&str, &str)> = lines
        .iter()
        .map(|line| {
            (
                line["event"].as_str().unwrap(),
                line["operation"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("trace.start", "outer"),
            ("trace.start", "inner"),
            ("trace.end", "inner"),
            ("trace.end", "outer")
        ]
    );
    assert_eq!(lines[1]["parent_span_id"], outer.span_id().to_string());
    assert!(lines[0].get("parent_span_id").is_none());
}

#[test]
fn start_trace_with_id_continues_the_id() {
    let capture = Capture::default();
    let id: CorrelationId = "upstream-42".parse().unwrap();
    let seen = ready(
        capture
            .tracer()
            .start_trace_with_id(id.clone(), "job", async {
                keel_correlation::correlation_id()
            }),
    );
    assert_eq!(seen, Some(id));
    let end = single_trace(&capture, "job", "success");
    assert_eq!(end["correlation_id"], "upstream-42");
    assert_eq!(end["trace_id"].as_str().unwrap().len(), 32);
}

#[test]
fn sync_traces_have_the_same_outcomes() {
    let explode = true;
    let capture = Capture::default();
    let tracer = capture.tracer();
    let result: Result<(), &str> = tracer.trace_sync("sync-error", || {
        assert!(keel_correlation::correlation_id().is_some());
        Err("nope")
    });
    assert_eq!(result, Err("nope"));
    let panicked = std::panic::catch_unwind(|| {
        tracer.trace_sync("sync-panic", || {
            assert!(!explode, "sync {}", "boom");
        });
    });
    assert!(panicked.is_err());
    assert_eq!(keel_correlation::correlation_id(), None);
    let outcomes: Vec<Value> = capture
        .lines()
        .into_iter()
        .filter(|line| line["event"] == "trace.end")
        .collect();
    assert_eq!(outcomes[0]["outcome"], "error");
    assert_eq!(outcomes[0]["error"], "nope");
    assert_eq!(outcomes[1]["outcome"], "panic");
    assert_eq!(outcomes[1]["error"], "sync boom");
    assert_eq!(outcomes.len(), 2);
}

#[test]
fn tracer_off_writes_nothing_but_keeps_context() {
    let seen =
        ready(Tracer::off().start_trace("quiet", async { keel_correlation::correlation_id() }));
    assert!(seen.is_some());
}

#[test]
fn tracer_off_keeps_the_whole_context() {
    let tracer = Tracer::off();
    assert_eq!(tracer.write_failures(), 0);
    assert!(format!("{tracer:?}").contains("off"));
    let (outer, inner, elapsed) = ready(tracer.start_trace("outer", async {
        let outer = keel_correlation::current().expect("inside a trace");
        let first = outer.elapsed();
        let inner = keel_correlation::start_trace("inner", async { keel_correlation::current() })
            .await
            .expect("inside a nested trace");
        (outer.clone(), inner, (first, outer.elapsed()))
    }));
    // A quiet trace does not read the clock: the start exists for the lines.
    assert_eq!(elapsed, (None, None));
    assert_eq!(outer.start_time(), None);
    assert_eq!(outer.operation(), "outer");
    assert_eq!(inner.correlation_id(), outer.correlation_id());
    assert_eq!(inner.parent_span_id(), Some(outer.span_id()));
    assert!(inner.tracer().write_failures() == 0);
    assert_eq!(keel_correlation::correlation_id(), None);
}

#[test]
fn correlation_id_reads_every_kind_of_id() {
    // The nil UUID and text ids take `correlation_id()`'s slow path, fresh ids the fast one.
    let nil = CorrelationId::from_uuid(uuid::Uuid::nil());
    let text: CorrelationId = "order-7".parse().expect("a safe id");
    let fresh = CorrelationId::new();
    for id in [nil, text, fresh] {
        for tracer in [Tracer::off(), Capture::default().tracer()] {
            let seen = ready(tracer.start_trace_with_id(id.clone(), "read", async {
                keel_correlation::correlation_id()
            }));
            assert_eq!(seen, Some(id.clone()));
        }
    }
}

#[test]
fn a_panic_in_a_quiet_trace_leaves_no_context_behind() {
    fn boom() -> u32 {
        panic!("quiet boom")
    }
    let result = std::panic::catch_unwind(|| {
        ready(Tracer::off().start_trace("boom", async { boom() }));
    });
    assert!(result.is_err());
    assert_eq!(keel_correlation::correlation_id(), None);
    let result = std::panic::catch_unwind(|| Tracer::off().trace_sync("boom", boom));
    assert!(result.is_err());
    assert_eq!(keel_correlation::correlation_id(), None);
}

#[test]
fn a_logging_trace_measures_from_its_start() {
    let capture = Capture::default();
    let (start_time, first, second) = ready(capture.tracer().start_trace("timed", async {
        let context = keel_correlation::current().expect("inside a trace");
        let first = context.elapsed().expect("a logging trace has a start");
        std::thread::sleep(std::time::Duration::from_millis(2));
        (context.start_time(), first, context.elapsed().unwrap())
    }));
    assert!(start_time.is_some());
    assert!(second >= first + std::time::Duration::from_millis(2));
}
