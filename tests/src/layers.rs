//! Interim tower glue on the breaker's public API, standing in for its tower layer until
//! that is merged.
//!
//! [`BreakerLayer`] is the smallest honest adapter of `breaker`'s public API to tower's
//! `Layer`/`Service`: each call runs through `CircuitBreaker::classify(..).execute(..)` with
//! the HTTP classifier [`classify_http`], so a `5xx` answer counts as a failure while still
//! reaching the caller, and a rejection is `BreakerError::Open` (or `HalfOpenFull`,
//! `Isolated`) with its `retry_after`. The demo's wiring (`crate::service`) names it in one
//! place, to be replaced by the breaker crate's own layer.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::body::Body;
use breaker::{BreakerError, CircuitBreaker, Outcome};
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
