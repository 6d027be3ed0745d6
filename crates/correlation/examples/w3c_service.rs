//! A test service for the official W3C Trace Context test suite (`w3c/trace-context`,
//! `test/test.py`), built only on the crate's public API: each `POST` carries a JSON array
//! of `{"url": …, "arguments": …}`; for each, the service posts `arguments` to `url` as one
//! outgoing call of the incoming request's trace.
//!
//! ```text
//! cargo run -p keel-correlation --example w3c_service --features http -- 5000      # Level 2
//! W3C_LEVEL=1 cargo run -p keel-correlation --example w3c_service --features http -- 5000
//! SPEC_LEVEL=2 python test.py http://127.0.0.1:5000/test
//! ```

use std::convert::Infallible;

use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use keel_correlation::{Propagation, TraceContextLevel, Tracer};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

/// Posts `body` to `url` with `headers`; the status, or why it failed.
async fn post(
    url: &str,
    body: String,
    headers: Vec<(&'static str, String)>,
) -> Result<u16, String> {
    let uri: Uri = url.parse().map_err(|error| format!("bad url: {error}"))?;
    let authority = uri.authority().ok_or("url without host")?.clone();
    let stream = TcpStream::connect(authority.as_str())
        .await
        .map_err(|error| error.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| error.to_string())?;
    // The connection task only moves bytes; it belongs to no trace.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let mut request = Request::post(path)
        .header("host", authority.as_str())
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|error| error.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status().as_u16();
    // Read the reply to the end, so the harness sees a finished exchange.
    let _ = response.into_body().collect().await;
    Ok(status)
}

async fn handle(
    request: Request<hyper::body::Incoming>,
    propagation: Propagation,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let incoming = keel_correlation::http::incoming(request.headers(), Some(&propagation));
    let body = request
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let actions: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
    let response = Tracer::off()
        .continue_trace(incoming, "POST /test", async move {
            for action in actions {
                let url = action["url"].as_str().unwrap_or_default().to_owned();
                let arguments = action["arguments"].to_string();
                let _ = keel_correlation::client_call("POST callback", |headers| {
                    post(&url, arguments, headers)
                })
                .await;
            }
            let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
            response.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            response
        })
        .await;
    Ok(response)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|port| port.parse().ok())
        .unwrap_or(5000);
    let level = match std::env::var("W3C_LEVEL").as_deref() {
        Ok("1") => TraceContextLevel::Level1,
        _ => TraceContextLevel::Level2,
    };
    let propagation = Propagation::new().level(level);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!(
        "listening on http://{}/test ({level:?})",
        listener.local_addr()?
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let propagation = propagation.clone();
        let service =
            hyper::service::service_fn(move |request| handle(request, propagation.clone()));
        // Each request starts its own trace inside `handle`.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service),
        );
    }
}
