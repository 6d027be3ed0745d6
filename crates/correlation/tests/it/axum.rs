//! An axum service with both layers, on loopback: `tower::ServerLayer` runs each request as
//! a trace named after its matched route, and the `reqwest` middleware makes each of its
//! calls upstream a span with its own parent-id.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{MatchedPath, State},
    routing::get,
};
use http::HeaderMap;
use keel_correlation::{TraceParent, tower::ServerLayer};

use crate::Capture;

#[derive(Clone)]
struct App {
    client: reqwest_middleware::ClientWithMiddleware,
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

async fn order(State(app): State<App>) -> Result<String, http::StatusCode> {
    let mut stock = String::new();
    for _ in 0..3 {
        let reply = app
            .client
            .get(format!("http://{}/stock", app.addr))
            .send()
            .await
            .map_err(|_| http::StatusCode::BAD_GATEWAY)?;
        stock = reply
            .text()
            .await
            .map_err(|_| http::StatusCode::BAD_GATEWAY)?;
    }
    Ok(stock)
}

async fn stock(State(app): State<App>, headers: HeaderMap) -> &'static str {
    app.seen.lock().unwrap().push(headers);
    "12"
}

#[tokio::test]
async fn an_axum_service_continues_each_request_and_gives_each_call_its_own_span() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let capture = Capture::default();
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(keel_correlation::reqwest::Middleware::new())
        .build();
    let layer = ServerLayer::new()
        .tracer(capture.tracer())
        .operation(|head| {
            let route = head
                .extensions
                .get::<MatchedPath>()
                .map_or("unmatched", MatchedPath::as_str);
            format!("{} {route}", head.method).into()
        });
    let app = Router::new()
        .route("/orders/{id}", get(order))
        .route("/stock", get(stock))
        .with_state(App {
            client,
            addr,
            seen: Arc::clone(&seen),
        })
        .layer(layer);
    #[allow(clippy::disallowed_methods)] // The server loop belongs to no trace.
    tokio::spawn(async move { axum::serve(listener, app).await });

    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = reqwest::Client::new()
        .get(format!("http://{addr}/orders/7"))
        .header("traceparent", caller)
        .header("x-request-id", "req-9")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.headers()["x-request-id"], "req-9");
    assert_eq!(reply.text().await.unwrap(), "12");

    let seen = seen.lock().unwrap().clone();
    let parents: Vec<TraceParent> = seen
        .iter()
        .map(|headers| headers["traceparent"].to_str().unwrap().parse().unwrap())
        .collect();
    let mut distinct: Vec<_> = parents.iter().map(|parent| parent.parent_id).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{parents:?}");
    let lines = capture.lines();
    let request = lines
        .iter()
        .find(|line| line["event"] == "trace.end" && line["operation"] == "GET /orders/{id}")
        .unwrap();
    assert_eq!(request["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(request["outcome"], "success");
    for parent in &parents {
        assert_eq!(
            parent.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let call = lines
            .iter()
            .find(|line| {
                line["event"] == "trace.end" && line["span_id"] == parent.parent_id.to_string()
            })
            .unwrap();
        assert_eq!(call["parent_span_id"], request["span_id"]);
        // The upstream side (the same service) continued each call as its own trace.
        let served = lines
            .iter()
            .find(|line| {
                line["event"] == "trace.end"
                    && line["operation"] == "GET /stock"
                    && line["parent_span_id"] == parent.parent_id.to_string()
            })
            .unwrap();
        assert_eq!(served["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
