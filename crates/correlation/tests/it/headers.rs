//! Choosing the incoming id (precedence, validation) and the headers sent downstream.

use keel_correlation::{IdSource, Incoming, InvalidCorrelationId, RejectionReason};

use crate::{Capture, ready};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn precedence_is_traceparent_then_correlation_then_request_id() {
    let all = Incoming::from_headers([
        ("x-request-id", "req-1"),
        ("x-correlation-id", "corr-1"),
        ("traceparent", TRACEPARENT),
    ]);
    assert_eq!(all.source(), IdSource::TraceParent);
    assert_eq!(
        all.correlation_id().to_string(),
        "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"
    );
    assert_eq!(
        all.parent_span_id().unwrap().to_string(),
        "00f067aa0ba902b7"
    );

    let no_parent =
        Incoming::from_headers([("X-Request-ID", "req-1"), ("X-Correlation-ID", "corr-1")]);
    assert_eq!(no_parent.source(), IdSource::CorrelationId);
    assert_eq!(no_parent.correlation_id().to_string(), "corr-1");

    let request_only = Incoming::from_headers([("x-request-id", "req-1")]);
    assert_eq!(request_only.source(), IdSource::RequestId);
    assert_eq!(request_only.correlation_id().to_string(), "req-1");

    let none = Incoming::from_headers([("accept", "*/*")]);
    assert_eq!(none.source(), IdSource::Generated);
    assert!(none.correlation_id().as_uuid().is_some());
    assert!(none.rejections().is_empty());
}

#[test]
fn invalid_ids_are_replaced_and_never_logged() {
    let too_long = "a".repeat(129);
    let rows: Vec<(&str, Vec<u8>, RejectionReason)> = vec![
        (
            "too long",
            too_long.clone().into_bytes(),
            RejectionReason::Id(InvalidCorrelationId::TooLong { len: 129 }),
        ),
        (
            "newline injection",
            b"abc\n{\"level\":\"fake\"}".to_vec(),
            RejectionReason::Id(InvalidCorrelationId::BadCharacter { position: 3 }),
        ),
        (
            "quote",
            b"abc\"def".to_vec(),
            RejectionReason::Id(InvalidCorrelationId::BadCharacter { position: 3 }),
        ),
        (
            "space",
            b"abc def".to_vec(),
            RejectionReason::Id(InvalidCorrelationId::BadCharacter { position: 3 }),
        ),
        (
            "empty",
            Vec::new(),
            RejectionReason::Id(InvalidCorrelationId::Empty),
        ),
        (
            "not UTF-8",
            vec![b'a', 0xff, 0xfe],
            RejectionReason::NotUtf8,
        ),
    ];
    for (rule, value, reason) in rows {
        let incoming = Incoming::from_headers([("x-correlation-id", value.as_slice())]);
        assert_eq!(incoming.source(), IdSource::Generated, "{rule}");
        assert_eq!(incoming.rejections().len(), 1, "{rule}");
        assert_eq!(
            incoming.rejections()[0].header,
            "x-correlation-id",
            "{rule}"
        );
        assert_eq!(incoming.rejections()[0].reason, reason, "{rule}");

        let capture = Capture::default();
        ready(
            capture
                .tracer()
                .continue_trace(incoming, "request", async {}),
        );
        let text = capture.text();
        assert_eq!(capture.lines().len(), 2, "{rule}");
        if value.len() > 3 {
            assert!(
                !text.contains(&*String::from_utf8_lossy(&value)),
                "{rule}: raw value reached the log"
            );
        }
    }
}

#[test]
fn longest_safe_id_is_accepted_and_kept_verbatim() {
    let id = format!("{}-_.:+/=@Z9", "x".repeat(118));
    assert_eq!(id.len(), 128);
    let incoming = Incoming::from_headers([("x-correlation-id", id.as_str())]);
    assert_eq!(incoming.source(), IdSource::CorrelationId);
    assert_eq!(incoming.correlation_id().to_string(), id);
    let uppercase_uuid = "4BF92F35-77B3-4DA6-A3CE-929D0E0E4736";
    let kept = Incoming::from_headers([("x-request-id", uppercase_uuid)]);
    assert_eq!(
        kept.correlation_id().to_string(),
        uppercase_uuid,
        "received text is not rewritten"
    );
}

#[test]
fn invalid_correlation_id_falls_back_to_request_id() {
    let incoming =
        Incoming::from_headers([("x-correlation-id", "bad id"), ("x-request-id", "req-7")]);
    assert_eq!(incoming.source(), IdSource::RequestId);
    assert_eq!(incoming.correlation_id().to_string(), "req-7");
    let repeated = Incoming::from_headers([("x-request-id", "a"), ("x-request-id", "b")]);
    assert_eq!(repeated.source(), IdSource::Generated);
    assert_eq!(repeated.rejections()[0].reason, RejectionReason::Repeated);
}

#[test]
fn invalid_traceparent_falls_back_and_drops_tracestate() {
    let incoming = Incoming::from_headers([
        (
            "traceparent",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("x-correlation-id", "corr-9"),
    ]);
    assert_eq!(incoming.source(), IdSource::CorrelationId);
    assert!(incoming.trace_state().is_none());
    assert!(incoming.parent_span_id().is_none());
}

#[test]
fn continued_trace_sends_w3c_headers_downstream() {
    let capture = Capture::default();
    let incoming = Incoming::from_headers([
        ("traceparent", TRACEPARENT),
        ("tracestate", "congo=t61rcWkgMzE"),
    ]);
    let (context, headers) = ready(capture.tracer().continue_trace(
        incoming,
        "GET /orders",
        async {
            (
                keel_correlation::current().unwrap(),
                keel_correlation::outgoing_headers(),
            )
        },
    ));
    assert_eq!(
        context.parent_span_id().unwrap().to_string(),
        "00f067aa0ba902b7"
    );
    let expected_parent = format!(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
        context.span_id()
    );
    assert_eq!(
        headers,
        [
            ("traceparent", expected_parent),
            ("tracestate", "congo=t61rcWkgMzE".to_owned()),
        ],
        "the caller sent no id header, so none is sent on by default"
    );
    let start = &capture.lines()[0];
    assert_eq!(start["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(start["parent_span_id"], "00f067aa0ba902b7");

    // Round trip: the headers we send are continued by the next service.
    let downstream =
        Incoming::from_headers(headers.iter().map(|(name, value)| (*name, value.as_str())));
    assert_eq!(downstream.correlation_id(), context.correlation_id());
    assert_eq!(downstream.parent_span_id(), Some(context.span_id()));
    assert_eq!(downstream.trace_state(), context.trace_state());
}

#[test]
fn text_ids_get_a_random_trace_id_that_nested_traces_keep() {
    let incoming = Incoming::from_headers([("x-correlation-id", "order-55")]);
    let (outer, inner) =
        ready(
            keel_correlation::Tracer::off().continue_trace(incoming, "outer", async {
                let inner = keel_correlation::start_trace("inner", async {
                    keel_correlation::current().unwrap()
                })
                .await;
                (keel_correlation::current().unwrap(), inner)
            }),
        );
    assert_eq!(inner.trace_id(), outer.trace_id());
    assert_eq!(outer.correlation_id().to_string(), "order-55");
}

#[test]
fn undefined_trace_flags_are_not_sent_downstream() {
    // W3C Trace Context Level 2 defines `sampled` (0x01) and `random` (0x02); the other bits
    // are reserved and "Vendors MUST set those to zero", so what comes in as `ff` goes out
    // as `03`.
    let rows = [
        ("ff", "03"),
        ("fe", "02"),
        ("09", "01"),
        ("02", "02"),
        ("04", "00"),
    ];
    for (received, sent) in rows {
        let value = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{received}");
        let incoming = Incoming::from_headers([("traceparent", value.as_str())]);
        assert_eq!(incoming.source(), IdSource::TraceParent, "{received}");
        assert_eq!(
            incoming.flags().to_string(),
            received,
            "the received byte stays readable"
        );
        let (outer, inner, headers) =
            ready(
                keel_correlation::Tracer::off().continue_trace(incoming, "outer", async {
                    let inner = keel_correlation::start_trace("inner", async {
                        keel_correlation::current().unwrap()
                    })
                    .await;
                    (
                        keel_correlation::current().unwrap(),
                        inner,
                        keel_correlation::outgoing_headers(),
                    )
                }),
            );
        let expected = format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-{sent}",
            outer.span_id()
        );
        assert_eq!(headers[0], ("traceparent", expected.clone()), "{received}");
        assert_eq!(outer.traceparent().to_string(), expected, "{received}");
        assert_eq!(outer.flags().to_string(), sent, "{received}");
        assert_eq!(inner.flags().to_string(), sent, "{received}: nested");
        assert!(
            inner
                .traceparent()
                .to_string()
                .ends_with(&format!("-{sent}")),
            "{received}: nested"
        );
    }
}
