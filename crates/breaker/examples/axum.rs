//! An axum service whose upstream calls go through the breaker's tower layer: 5xx and 429
//! answers count as failures, an upstream `Retry-After` holds the breaker open, and a
//! rejection becomes `503 Service Unavailable` with `Retry-After`.
//!
//! Compiled by `cargo test`; run with `cargo run -p keel-breaker --example axum` (it serves on
//! 127.0.0.1 on a port the OS assigns, and prints it).

use std::{convert::Infallible, sync::LazyLock, time::Duration};

use axum::{Router, body::Body, extract::State, http::Response, routing::get};
use keel_breaker::{BreakerError, BreakerLayer, CircuitBreaker, HttpStatus, rejection_response};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn, util::BoxCloneSyncService};

/// One breaker per dependency, shared by reference: no reference count per call.
static INVENTORY: LazyLock<CircuitBreaker> = LazyLock::new(|| {
    CircuitBreaker::builder("inventory-api")
        .half_open_after(Duration::from_secs(30))
        .build()
        .expect("a valid configuration")
});

/// The upstream client: here a stand-in that always answers 200.
type Upstream = BoxCloneSyncService<(), Response<Body>, BreakerError<Infallible>>;

fn upstream() -> Upstream {
    let client =
        service_fn(|(): ()| async { Ok::<_, Infallible>(Response::new(Body::from("42"))) });
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(BreakerLayer::new(&*INVENTORY).classifier(HttpStatus::new()))
            .service(client),
    )
}

async fn stock(State(mut upstream): State<Upstream>) -> Response<Body> {
    let ready = match upstream.ready().await {
        Ok(ready) => ready,
        Err(error) => return bad_gateway(&error),
    };
    match ready.call(()).await {
        Ok(response) => response,
        Err(BreakerError::Inner(error)) => match error {},
        Err(rejected) => rejection_response(&rejected.rejected().expect("a rejection")),
    }
}

fn bad_gateway(error: &BreakerError<Infallible>) -> Response<Body> {
    let mut response = Response::new(Body::from(error.to_string()));
    *response.status_mut() = axum::http::StatusCode::BAD_GATEWAY;
    response
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let app = Router::new()
        .route("/stock", get(stock))
        .with_state(upstream());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
