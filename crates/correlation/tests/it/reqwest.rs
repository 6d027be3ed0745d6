//! The `reqwest` feature: a `reqwest-middleware` client, set up once, makes every request a
//! span of its own, on a real loopback server.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use keel_correlation::TraceParent;
use tokio::net::TcpListener;

use crate::Capture;

/// Serves `connections` connections on an OS-assigned loopback port, recording each
/// request's headers and answering with `status`.
async fn upstream(
    connections: usize,
    status: u16,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let recorded = Arc::clone(&seen);
    #[allow(clippy::disallowed_methods)] // The server belongs to no trace.
    tokio::spawn(async move {
        for _ in 0..connections {
            let (stream, _) = listener.accept().await.unwrap();
            let recorded = Arc::clone(&recorded);
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    recorded.lock().unwrap().push(request.headers().clone());
                    let response = Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from_static(b"ok")))
                        .unwrap();
                    async move { Ok::<_, Infallible>(response) }
                });
            #[allow(clippy::disallowed_methods)]
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, seen)
}

fn client() -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(keel_correlation::reqwest::Middleware::new())
        .build()
}

#[tokio::test]
async fn every_request_through_the_client_is_a_span_with_its_own_parent_id() {
    let (addr, seen) = upstream(3, 200).await;
    let capture = Capture::default();
    let client = client();
    let incoming = keel_correlation::Incoming::from_headers([
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("x-request-id", "req-5"),
    ]);
    let server_span = capture
        .tracer()
        .continue_trace(incoming, "GET /", async {
            for _ in 0..3 {
                let response = client
                    .get(format!("http://{addr}/stock"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
            keel_correlation::current().unwrap().span_id()
        })
        .await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let parents: Vec<TraceParent> = seen
        .iter()
        .map(|headers| headers["traceparent"].to_str().unwrap().parse().unwrap())
        .collect();
    let mut distinct: Vec<_> = parents.iter().map(|parent| parent.parent_id).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{parents:?}");
    let lines = capture.lines();
    for (headers, parent) in seen.iter().zip(&parents) {
        assert_eq!(
            parent.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(headers["x-request-id"], "req-5");
        let end = lines
            .iter()
            .find(|line| {
                line["event"] == "trace.end" && line["span_id"] == parent.parent_id.to_string()
            })
            .unwrap();
        assert_eq!(end["operation"], "GET 127.0.0.1/stock");
        assert_eq!(end["parent_span_id"], server_span.to_string());
        assert_eq!(end["outcome"], "success");
    }
}

#[tokio::test]
async fn a_5xx_or_a_failed_request_ends_its_span_as_an_error() {
    let (addr, _) = upstream(1, 503).await;
    let capture = Capture::default();
    let client = client();
    capture
        .tracer()
        .start_trace("job", async {
            let response = client.get(format!("http://{addr}/a")).send().await.unwrap();
            assert_eq!(response.status(), 503);
            // Nothing listens on port 1 of loopback: the connection is refused.
            assert!(client.get("http://127.0.0.1:1/b").send().await.is_err());
        })
        .await;
    let lines = capture.lines();
    let end = |operation: &str| {
        lines
            .iter()
            .find(|line| line["event"] == "trace.end" && line["operation"] == operation)
            .unwrap()
            .clone()
    };
    assert_eq!(end("GET 127.0.0.1/a")["outcome"], "error");
    assert_eq!(end("GET 127.0.0.1/a")["error"], "503 Service Unavailable");
    assert_eq!(end("GET 127.0.0.1/b")["outcome"], "error");
    assert_eq!(end("job")["outcome"], "success");
}
