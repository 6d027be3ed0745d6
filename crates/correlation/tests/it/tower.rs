//! The `tower` feature: the server layer runs each request as a trace, the client layer
//! makes each outgoing request a span of its own.

use std::{
    convert::Infallible,
    future::{Future, ready as ready_future},
    pin::pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
};

use http::{HeaderMap, Request, Response, StatusCode};
use keel_correlation::{
    TraceParent,
    tower::{ClientLayer, ServerLayer},
};
use tower_layer::Layer as _;
use tower_service::Service;

use crate::{Capture, ready};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A service from a closure, as `tower::service_fn` makes.
#[derive(Clone)]
struct FnService<F>(F);

impl<F, Fut, B, T, E> Service<Request<B>> for FnService<F>
where
    F: FnMut(Request<B>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    type Response = T;
    type Error = E;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Fut {
        (self.0)(request)
    }
}

fn request(headers: &[(&str, &str)]) -> Request<()> {
    let mut request = Request::get("/orders/7");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(()).unwrap()
}

fn status(code: u16) -> Response<()> {
    Response::builder().status(code).body(()).unwrap()
}

#[test]
fn the_server_layer_continues_the_request_and_echoes_its_id_headers() {
    let capture = Capture::default();
    let mut service = ServerLayer::new().tracer(capture.tracer()).layer(FnService(
        |_request: Request<()>| async {
            let context = keel_correlation::current().unwrap();
            assert_eq!(
                context.trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            Ok::<_, Infallible>(status(200))
        },
    ));
    let response = ready(service.call(request(&[
        ("traceparent", TRACEPARENT),
        ("x-request-id", "req-1"),
    ])))
    .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-1");
    let lines = capture.lines();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["operation"], "GET /orders/7");
    assert_eq!(lines[0]["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(lines[1]["outcome"], "success");
}

#[test]
fn the_default_operation_is_method_and_path_for_any_path_length() {
    // Around the length the trace context holds in place (46 bytes: `DELETE ` and 39), and far beyond it.
    for len in [1, 38, 39, 40, 41, 100, 4096] {
        let path = format!("/{}", "p".repeat(len - 1));
        let capture = Capture::default();
        let mut service = ServerLayer::new().tracer(capture.tracer()).layer(FnService(
            |_request: Request<()>| async {
                let operation = keel_correlation::current().unwrap().operation().to_owned();
                Ok::<_, Infallible>(Response::new(operation))
            },
        ));
        let request = Request::delete(path.as_str()).body(()).unwrap();
        let response = ready(service.call(request)).unwrap();
        let expected = format!("DELETE {path}");
        assert_eq!(response.body(), &expected, "{len}");
        let lines = capture.lines();
        assert_eq!(lines[0]["operation"], expected.as_str(), "{len}");
        assert_eq!(lines[1]["operation"], expected.as_str(), "{len}");
    }
}

#[test]
fn the_server_layer_reports_5xx_errors_panics_and_cancellation() {
    // (inner behaviour, outcome)
    let rows: [(&str, &str); 4] = [
        ("503", "error"),
        ("err", "error"),
        ("panic", "panic"),
        ("drop", "cancelled"),
    ];
    for (behaviour, outcome) in rows {
        let capture = Capture::default();
        let mut service = ServerLayer::new().tracer(capture.tracer()).layer(FnService(
            move |_request: Request<()>| async move {
                match behaviour {
                    "503" => Ok(status(503)),
                    "err" => Err("upstream down".to_owned()),
                    "panic" => panic!("handler bug"),
                    _ => std::future::pending().await,
                }
            },
        ));
        let future = service.call(request(&[("traceparent", TRACEPARENT)]));
        match behaviour {
            "panic" => {
                let caught =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ready(future)));
                assert!(caught.is_err(), "the panic continues");
            }
            "drop" => {
                let mut future = pin!(future);
                let polled = future
                    .as_mut()
                    .poll(&mut Context::from_waker(Waker::noop()));
                assert!(polled.is_pending());
            }
            _ => drop(ready(future)),
        }
        let lines = capture.lines();
        assert_eq!(lines.len(), 2, "{behaviour}: exactly one start and one end");
        assert_eq!(lines[1]["outcome"], outcome, "{behaviour}");
    }
}

#[test]
fn a_request_with_rejected_headers_is_served_with_a_fresh_trace() {
    let capture = Capture::default();
    let mut service = ServerLayer::new().tracer(capture.tracer()).layer(FnService(
        |_request: Request<()>| async { Ok::<_, Infallible>(status(200)) },
    ));
    let long = "a".repeat(64 * 1024);
    let tracestate = (0..1200)
        .map(|index| format!("k{index}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let mut request = request(&[
        (
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ),
        ("tracestate", &tracestate),
        ("x-request-id", &long),
    ]);
    request.headers_mut().append(
        "x-correlation-id",
        http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
    );
    let response = ready(service.call(request)).unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers().get("x-request-id").is_none(),
        "nothing invalid echoed"
    );
    let text = capture.text();
    assert!(!text.contains(&long[..100]) && !text.contains("k1199"));
    let lines = capture.lines();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].get("parent_span_id").is_none(), "a fresh trace");
}

#[test]
fn the_client_layer_gives_each_request_its_own_span_and_parent_id() {
    let capture = Capture::default();
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let recorded = Arc::clone(&seen);
    let inner = FnService(move |request: Request<()>| {
        recorded.lock().unwrap().push(request.headers().clone());
        let context = keel_correlation::current().unwrap();
        let span = context.span_id();
        async move {
            // The future runs in the client span too.
            assert_eq!(keel_correlation::current().unwrap().span_id(), span);
            Ok::<_, Infallible>(status(200))
        }
    });
    let mut client = ClientLayer::new().layer(inner);
    let incoming = keel_correlation::Incoming::from_headers([("traceparent", TRACEPARENT)]);
    let server_span = ready(capture.tracer().continue_trace(incoming, "GET /", async {
        for _ in 0..3 {
            let request = Request::get("http://inventory.local/stock")
                .body(())
                .unwrap();
            client.call(request).await.unwrap();
        }
        keel_correlation::current().unwrap().span_id()
    }));
    let parents: Vec<TraceParent> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|headers| headers["traceparent"].to_str().unwrap().parse().unwrap())
        .collect();
    let mut distinct: Vec<_> = parents.iter().map(|parent| parent.parent_id).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3);
    let lines = capture.lines();
    for parent in &parents {
        assert_eq!(
            parent.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let end = lines
            .iter()
            .find(|line| {
                line["event"] == "trace.end" && line["span_id"] == parent.parent_id.to_string()
            })
            .unwrap();
        assert_eq!(end["operation"], "GET inventory.local/stock");
        assert_eq!(end["parent_span_id"], server_span.to_string());
    }
}

#[test]
fn the_client_layer_reports_a_5xx_as_an_error() {
    let capture = Capture::default();
    let mut client = ClientLayer::new().layer(FnService(|_request: Request<()>| {
        ready_future(Ok::<_, Infallible>(status(502)))
    }));
    let response = ready(capture.tracer().start_trace("job", async {
        client.call(Request::get("/x").body(()).unwrap()).await
    }));
    assert_eq!(response.unwrap().status(), 502);
    let lines = capture.lines();
    let call_end = lines
        .iter()
        .find(|line| line["event"] == "trace.end" && line["operation"] == "GET /x")
        .unwrap();
    assert_eq!(call_end["outcome"], "error");
    assert_eq!(call_end["error"], "502 Bad Gateway");
}

#[test]
fn the_client_layer_adds_no_id_headers_to_the_response_it_receives() {
    // The caller's id headers are echoed on the server's own response only: a response a
    // client receives inside that trace comes back as the called service sent it.
    let mut client = ClientLayer::new().layer(FnService(|_request: Request<()>| {
        ready_future(Ok::<_, Infallible>(status(200)))
    }));
    let incoming = keel_correlation::Incoming::from_headers([
        ("x-request-id", "req-1"),
        ("x-correlation-id", "corr-1"),
    ]);
    let response = ready(keel_correlation::Tracer::off().continue_trace(
        incoming,
        "GET /",
        async { client.call(Request::get("/stock").body(()).unwrap()).await },
    ));
    assert!(response.unwrap().headers().is_empty());
}
