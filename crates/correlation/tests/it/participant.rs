//! The choices a service makes as a participant: id headers downstream and back, one span
//! per outgoing call, sync continuation, tuple outcomes.

use keel_correlation::{HeaderRule, IdHeader, Incoming, Propagation, TraceParent, Tracer};

use crate::{Capture, ready};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn names(headers: &[(&'static str, String)]) -> Vec<&'static str> {
    headers.iter().map(|(name, _)| *name).collect()
}

/// Header pairs; a row of the table below is (received, expected on the response).
type Headers<'a> = Vec<(&'a str, &'a str)>;

#[test]
fn by_default_the_id_headers_the_caller_sent_are_echoed_back_and_sent_on() {
    let rows: Vec<(Headers<'_>, Headers<'_>)> = vec![
        (vec![], vec![]),
        (vec![("traceparent", TRACEPARENT)], vec![]),
        (
            vec![("traceparent", TRACEPARENT), ("x-request-id", "req-1")],
            vec![("x-request-id", "req-1")],
        ),
        (
            vec![("X-Correlation-Id", "corr-1"), ("x-request-id", "req-1")],
            vec![("x-correlation-id", "corr-1"), ("x-request-id", "req-1")],
        ),
        (vec![("x-request-id", "bad value")], vec![]),
    ];
    for (received, expected) in rows {
        let incoming = Incoming::from_headers(received.iter().copied());
        let expected: Vec<(&str, String)> = expected
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned()))
            .collect();
        assert_eq!(incoming.response_headers(), expected, "{received:?}");
        let (back, downstream) = Tracer::off().continue_trace_sync(incoming, "GET /", || {
            let context = keel_correlation::current().unwrap();
            let nested = keel_correlation::trace_sync("inner", keel_correlation::outgoing_headers);
            (context.response_headers(), nested)
        });
        assert_eq!(back, expected, "{received:?}: inside the trace");
        assert_eq!(
            downstream[downstream.len() - expected.len()..],
            expected[..],
            "{received:?}: the same id headers go downstream, from nested spans too"
        );
        assert_eq!(downstream[0].0, "traceparent");
    }
}

#[test]
fn id_header_rules_are_configurable() {
    let always = IdHeader {
        downstream: HeaderRule::Always,
        response: HeaderRule::Always,
    };
    let never = IdHeader {
        downstream: HeaderRule::Never,
        response: HeaderRule::Never,
    };
    let propagation = Propagation::new()
        .correlation_id_header(always)
        .request_id_header(never);
    let incoming = propagation.incoming([("traceparent", TRACEPARENT), ("x-request-id", "req-1")]);
    let id = incoming.correlation_id().to_string();
    assert_eq!(
        incoming.response_headers(),
        vec![("x-correlation-id", id.clone())]
    );
    let downstream =
        Tracer::off().continue_trace_sync(incoming, "GET /", keel_correlation::outgoing_headers);
    assert_eq!(names(&downstream), ["traceparent", "x-correlation-id"]);
    assert_eq!(downstream[1].1, id);
}

#[test]
fn each_client_call_carries_its_own_parent_id() {
    let capture = Capture::default();
    let incoming = Incoming::from_headers([("traceparent", TRACEPARENT)]);
    let (server_span, sent) = ready(capture.tracer().continue_trace(incoming, "GET /", async {
        let mut sent = Vec::new();
        for _ in 0..3 {
            let headers: Vec<(&'static str, String)> =
                keel_correlation::client_call("call upstream", |headers| async move { headers })
                    .await;
            sent.push(headers[0].1.parse::<TraceParent>().unwrap());
        }
        (keel_correlation::current().unwrap().span_id(), sent)
    }));
    let mut parents: Vec<_> = sent.iter().map(|parent| parent.parent_id).collect();
    parents.sort();
    parents.dedup();
    assert_eq!(parents.len(), 3, "{sent:?}");
    assert!(!parents.contains(&server_span));
    for parent in &sent {
        assert_eq!(
            parent.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
    // Each call is a span of its own, child of the request's, with its own lines.
    let lines = capture.lines();
    let call_ends: Vec<_> = lines
        .iter()
        .filter(|line| line["operation"] == "call upstream" && line["event"] == "trace.end")
        .collect();
    assert_eq!(call_ends.len(), 3);
    for (end, parent) in call_ends.iter().zip(&sent) {
        assert_eq!(end["span_id"], parent.parent_id.to_string());
        assert_eq!(end["parent_span_id"], server_span.to_string());
    }
}

#[test]
fn continue_trace_sync_needs_no_runtime() {
    let capture = Capture::default();
    let incoming = Incoming::from_headers([("traceparent", TRACEPARENT), ("x-request-id", "r")]);
    // A plain thread, as in a thread-per-request server: no tokio runtime anywhere.
    let tracer = capture.tracer();
    let (id, parent) = std::thread::spawn(move || {
        tracer.continue_trace_sync(incoming, "GET /sync", || {
            let context = keel_correlation::current().unwrap();
            (context.correlation_id().clone(), context.parent_span_id())
        })
    })
    .join()
    .unwrap();
    assert_eq!(id.to_string(), "4bf92f35-77b3-4da6-a3ce-929d0e0e4736");
    assert_eq!(parent.unwrap().to_string(), "00f067aa0ba902b7");
    let lines = capture.lines();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(lines[1]["outcome"], "success");
}

#[test]
fn a_tuple_reports_the_error_of_any_element() {
    let capture = Capture::default();
    let output: (u16, Result<(), String>) = ready(
        capture
            .tracer()
            .start_trace("tuple", async { (500, Err("disk full".to_owned())) }),
    );
    assert!(output.1.is_err());
    let lines = capture.lines();
    assert_eq!(lines[1]["outcome"], "error");
    assert_eq!(lines[1]["error"], "disk full");
    let capture = Capture::default();
    let _: (u16, String) = ready(
        capture
            .tracer()
            .start_trace("tuple", async { (200, String::new()) }),
    );
    assert_eq!(capture.lines()[1]["outcome"], "success");
}

#[test]
fn rejection_reasons_display_without_the_value() {
    let incoming = Incoming::from_headers([
        ("traceparent", "00-zz"),
        ("x-request-id", "secret value"),
        ("x-correlation-id", "a"),
        ("x-correlation-id", "b"),
    ]);
    let reasons: Vec<String> = incoming
        .rejections()
        .iter()
        .map(|rejection| rejection.reason.to_string())
        .collect();
    assert_eq!(
        reasons,
        [
            "traceparent is 5 characters long, shorter than 55",
            "sent more than once",
            "correlation id has a character outside [A-Za-z0-9-_.:+/=@] at byte 6",
        ]
    );
    assert!(reasons.iter().all(|reason| !reason.contains("secret")));
}
