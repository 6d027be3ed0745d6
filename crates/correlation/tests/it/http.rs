//! The `http` feature: outcomes of HTTP responses, and a real HTTP round trip on loopback.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use keel_correlation::{TraceOutcome, TraceParent, Tracer, http::Classified};
use tokio::net::{TcpListener, TcpStream};

use crate::{Capture, ready};

fn response(status: u16) -> Response<()> {
    Response::builder().status(status).body(()).unwrap()
}

#[test]
fn a_5xx_response_is_an_error_outcome() {
    // (status, outcome)
    let rows = [
        (200, "success"),
        (302, "success"),
        (404, "success"),
        (499, "success"),
        (500, "error"),
        (503, "error"),
        (599, "error"),
    ];
    for (status, outcome) in rows {
        let capture = Capture::default();
        let returned = ready(
            capture
                .tracer()
                .start_trace("GET /", async move { response(status) }),
        );
        assert_eq!(returned.status(), status);
        let end = &capture.lines()[1];
        assert_eq!(end["outcome"], outcome, "{status}");
        if outcome == "error" {
            assert_eq!(
                end["error"],
                StatusCode::from_u16(status).unwrap().to_string(),
                "{status}"
            );
            assert_eq!(end["level"], "error");
        }
    }
}

#[test]
fn status_tuples_and_classified_responses_report_their_status() {
    let capture = Capture::default();
    // The shape of an axum handler's `(StatusCode, body)` return value.
    let _: (StatusCode, String) = ready(capture.tracer().start_trace("tuple", async {
        (StatusCode::INTERNAL_SERVER_ERROR, "boom".to_owned())
    }));
    assert_eq!(capture.lines()[1]["outcome"], "error");
    assert_eq!(capture.lines()[1]["error"], "500 Internal Server Error");

    let strict = |status| {
        Classified::new(response(status), |status: StatusCode| {
            status.as_u16() >= 400
        })
    };
    assert_eq!(
        strict(404).trace_error().unwrap().to_string(),
        "404 Not Found"
    );
    assert!(strict(302).trace_error().is_none());
    let lenient = Classified::new(response(503), |_| false);
    assert!(lenient.trace_error().is_none(), "the rule is the caller's");
    assert_eq!(lenient.into_inner().status(), 503);
}

/// Sends a GET with `headers` to `addr` over a fresh HTTP/1 connection.
async fn get(
    addr: SocketAddr,
    path: &str,
    headers: Vec<(&'static str, String)>,
) -> Result<Response<hyper::body::Incoming>, hyper::Error> {
    let stream = TcpStream::connect(addr).await.expect("connect to loopback");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection task carries no trace of its own: it only moves bytes.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(connection);
    let mut request = Request::builder()
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    sender
        .send_request(request.body(Empty::<Bytes>::new()).unwrap())
        .await
}

/// The service under test: `/service` continues the caller's trace and calls `/upstream`
/// three times, each call through `client_call`; `/upstream` records what it received.
async fn handle(
    request: Request<hyper::body::Incoming>,
    addr: SocketAddr,
    tracer: Tracer,
    upstream_saw: Arc<Mutex<Vec<HeaderMap>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() == "/upstream" {
        upstream_saw.lock().unwrap().push(request.headers().clone());
        return Ok(Response::new(Full::new(Bytes::from_static(b"stock"))));
    }
    let incoming = keel_correlation::http::incoming(request.headers(), None);
    let response = tracer
        .continue_trace(incoming, "GET /service", async move {
            for _ in 0..3 {
                let reply = keel_correlation::client_call("GET /upstream", |headers| {
                    get(addr, "/upstream", headers)
                })
                .await
                .expect("upstream answers");
                let body = reply.into_body().collect().await.expect("body").to_bytes();
                assert_eq!(&body[..], b"stock");
            }
            let mut response = Response::new(Full::new(Bytes::from_static(b"done")));
            let back = keel_correlation::current().unwrap().response_headers();
            keel_correlation::http::insert(response.headers_mut(), back);
            response
        })
        .await;
    Ok(response)
}

#[tokio::test]
async fn three_outgoing_calls_on_loopback_each_carry_their_own_parent_id() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let capture = Capture::default();
    let tracer = capture.tracer();
    let upstream_saw = Arc::new(Mutex::new(Vec::new()));
    let saw = Arc::clone(&upstream_saw);
    // One connection for the request to the service, three for its calls upstream.
    #[allow(clippy::disallowed_methods)] // The server loop belongs to no trace.
    let server = tokio::spawn(async move {
        for _ in 0..4 {
            let (stream, _) = listener.accept().await.unwrap();
            let (tracer, saw) = (tracer.clone(), Arc::clone(&saw));
            let service = hyper::service::service_fn(move |request| {
                handle(request, addr, tracer.clone(), Arc::clone(&saw))
            });
            #[allow(clippy::disallowed_methods)] // Each request starts its own trace.
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });

    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = get(
        addr,
        "/service",
        vec![
            ("traceparent", caller.to_owned()),
            ("x-request-id", "req-42".to_owned()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.headers()["x-request-id"], "req-42", "echoed back");
    server.await.unwrap();

    let seen = upstream_saw.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let parents: Vec<TraceParent> = seen
        .iter()
        .map(|headers| headers["traceparent"].to_str().unwrap().parse().unwrap())
        .collect();
    for parent in &parents {
        assert_eq!(
            parent.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_ne!(parent.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(parent.flags.is_sampled());
    }
    let mut distinct: Vec<_> = parents.iter().map(|parent| parent.parent_id).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "each call its own parent-id: {parents:?}"
    );
    for headers in &seen {
        assert_eq!(
            headers["x-request-id"], "req-42",
            "sent on, as the caller sent it"
        );
    }
    // The service's lines: the request's span, and one child span per call whose span id
    // is the parent-id that call carried.
    let lines = capture.lines();
    let request_end = lines
        .iter()
        .find(|line| line["operation"] == "GET /service" && line["event"] == "trace.end")
        .unwrap();
    assert_eq!(request_end["parent_span_id"], "00f067aa0ba902b7");
    for parent in &parents {
        let call = lines
            .iter()
            .find(|line| {
                line["span_id"] == parent.parent_id.to_string() && line["event"] == "trace.end"
            })
            .unwrap_or_else(|| panic!("no span {parent}"));
        assert_eq!(call["operation"], "GET /upstream");
        assert_eq!(call["parent_span_id"], request_end["span_id"]);
        assert_eq!(call["outcome"], "success");
    }
}
