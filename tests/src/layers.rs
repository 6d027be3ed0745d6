//! Interim tower glue on the crates' public APIs, standing in for layers not yet merged.
//!
//! Each type here is the smallest honest adapter of a crate's public API to tower's
//! `Layer`/`Service`: [`ServerTraceLayer`] continues or starts a trace per incoming request
//! (`correlation::http::incoming` + `Tracer::continue_trace`), [`ClientSpanLayer`] opens one
//! span per outgoing call and sends its headers (`correlation::client_call`), and
//! [`BreakerLayer`] guards a client with `CircuitBreaker::classify(..).execute(..)` and an
//! HTTP classifier. They are replaced by the crates' own layers as those land; the demo's
//! wiring (`crate::service`) names them in one place.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::body::Body;
use breaker::{BreakerError, CircuitBreaker, Outcome};
use correlation::{TraceOutcome, Tracer};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};

/// A boxed, sendable future: what the glue services return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The errors tower services box.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP classifier: a `5xx` answer or a transport error (including a timeout) is a
/// failure, anything else a success.
pub fn classify_http<B, E>(result: &Result<Response<B>, E>) -> Outcome {
    match result {
        Ok(response) if response.status().is_server_error() => Outcome::Failure,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    }
}

/// Guards the inner client with a breaker: calls it only when the breaker admits, and
/// reports [`classify_http`]'s verdict on the result.
#[derive(Clone)]
pub struct BreakerLayer {
    breaker: Arc<CircuitBreaker>,
}

impl BreakerLayer {
    /// A layer guarding calls with `breaker`.
    pub fn new(breaker: Arc<CircuitBreaker>) -> Self {
        Self { breaker }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            breaker: Arc::clone(&self.breaker),
            inner,
        }
    }
}

/// The service [`BreakerLayer`] makes.
#[derive(Clone)]
pub struct BreakerService<S> {
    breaker: Arc<CircuitBreaker>,
    inner: S,
}

impl<S, B> Service<Request<Body>> for BreakerService<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = BreakerError<S::Error>;
    type Future = BoxFuture<Result<Response<B>, BreakerError<S::Error>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is checked by `oneshot` on the clone that makes the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let breaker = Arc::clone(&self.breaker);
        let inner = self.inner.clone();
        Box::pin(async move {
            breaker
                .classify(classify_http::<B, S::Error>)
                .execute(|| inner.oneshot(request))
                .await
        })
    }
}

/// Makes every outgoing call a span of the current trace and sends its trace headers
/// (`traceparent`, `tracestate`, the id headers), one new parent-id per call.
#[derive(Clone, Copy, Default)]
pub struct ClientSpanLayer;

impl<S> Layer<S> for ClientSpanLayer {
    type Service = ClientSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientSpan { inner }
    }
}

/// The service [`ClientSpanLayer`] makes.
#[derive(Clone)]
pub struct ClientSpan<S> {
    inner: S,
}

impl<S, B> Service<Request<Body>> for ClientSpan<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<B>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        let operation = format!("{} upstream {}", request.method(), request.uri().path());
        let call = correlation::client_call(operation, move |headers| {
            correlation::http::insert(request.headers_mut(), headers);
            async move { CallResult(inner.oneshot(request).await.map_err(Into::into)) }
        });
        Box::pin(async move { call.await.0 })
    }
}

/// An outgoing call's result as its span's outcome: a transport error, or a `5xx` answer
/// (its status as the error text), is an `error`.
struct CallResult<B>(Result<Response<B>, BoxError>);

impl<B> TraceOutcome for CallResult<B> {
    fn trace_error(&self) -> Option<&dyn std::fmt::Display> {
        match &self.0 {
            Ok(response) => response.trace_error(),
            Err(error) => Some(error),
        }
    }
}

/// Runs every incoming request inside a trace: continued from its `traceparent` (or its
/// `x-correlation-id` / `x-request-id`), else new; the id headers the caller sent are sent
/// back. A `5xx` answer ends the trace with outcome `error`.
#[derive(Clone)]
pub struct ServerTraceLayer {
    tracer: Tracer,
}

impl ServerTraceLayer {
    /// A layer writing its lines through `tracer`.
    pub fn new(tracer: Tracer) -> Self {
        Self { tracer }
    }
}

impl<S> Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace {
            tracer: self.tracer.clone(),
            inner,
        }
    }
}

/// The service [`ServerTraceLayer`] makes.
#[derive(Clone)]
pub struct ServerTrace<S> {
    tracer: Tracer,
    inner: S,
}

impl<S> Service<Request<Body>> for ServerTrace<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let incoming = correlation::http::incoming(request.headers(), None);
        let echoed = incoming.response_headers();
        let operation = format!("{} {}", request.method(), request.uri().path());
        let inner = self.inner.clone();
        let traced = self.tracer.continue_trace(incoming, operation, async move {
            match inner.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        });
        Box::pin(async move {
            let mut response = traced.await;
            let outcome = if response.status().is_server_error() {
                "error"
            } else {
                "success"
            };
            metrics::counter!("demo_traces_total", "outcome" => outcome).increment(1);
            correlation::http::insert(response.headers_mut(), echoed);
            Ok(response)
        })
    }
}
