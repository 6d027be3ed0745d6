//! The breaker as tower middleware: [`BreakerLayer`] wraps a service in a
//! [`BreakerService`], whose named [`ResponseFuture`] records each call's outcome.

use std::{
    borrow::Borrow,
    fmt,
    future::Future,
    mem,
    pin::Pin,
    task::{Context, Poll},
};

use tower_layer::Layer;
use tower_service::Service;

use crate::{AllErrors, BreakerError, CircuitBreaker, Classify, Rejected, machine::Admission};

/// A [`Layer`] that guards a service with a breaker; see [`BreakerService`].
///
/// `B` is how the services hold the breaker: a [`CircuitBreaker`] (each response future
/// then clones its `Arc`, one shared reference-count update per call) or a
/// `&'static CircuitBreaker` (from a `static` or `Box::leak`: the future holds a reference
/// and no call touches a shared count, the fastest choice under contention). `C` is the
/// [`Classify`] applied to `Result<S::Response, S::Error>` (default [`AllErrors`]).
///
/// # Examples
///
/// ```
/// use keel_breaker::{BreakerError, BreakerLayer, CircuitBreaker, Outcome};
/// use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let breaker = CircuitBreaker::builder("upstream").build()?;
/// let mut service = ServiceBuilder::new()
///     .layer(BreakerLayer::new(breaker.clone()).classifier(
///         |result: &Result<u16, std::io::Error>| match result {
///             Ok(status) if *status >= 500 => Outcome::Failure,
///             Ok(_) => Outcome::Success,
///             Err(_) => Outcome::Failure,
///         },
///     ))
///     .service(service_fn(|_request: &str| async { Ok::<u16, std::io::Error>(200) }));
/// let status = service.ready().await?.call("GET /").await?;
/// assert_eq!(status, 200);
/// # Ok(())
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
#[derive(Debug, Clone)]
pub struct BreakerLayer<B = CircuitBreaker, C = AllErrors> {
    breaker: B,
    classifier: C,
}

impl<B: Borrow<CircuitBreaker> + Clone> BreakerLayer<B> {
    /// A layer guarding every service it wraps with `breaker` (clones share one state),
    /// counting `Ok` as success and every `Err` as failure.
    pub fn new(breaker: B) -> BreakerLayer<B> {
        BreakerLayer {
            breaker,
            classifier: AllErrors,
        }
    }
}

impl<B, C> BreakerLayer<B, C> {
    /// Classifies results with `classifier` instead.
    #[must_use]
    pub fn classifier<C2>(self, classifier: C2) -> BreakerLayer<B, C2> {
        BreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }
}

impl<S, B: Clone, C: Clone> Layer<S> for BreakerLayer<B, C> {
    type Service = BreakerService<S, B, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service guarded by a breaker: rejected calls never reach `S`; admitted calls are
/// recorded when their response future completes, and cancelled (a half-open probe slot
/// freed) when it is dropped first. Errors are [`BreakerError<S::Error>`], which converts
/// into `tower::BoxError` when `S::Error` is an error type, so the service stacks with
/// `tower::timeout`, `tower::retry`, `tower::limit` and axum's `HandleErrorLayer`.
///
/// `poll_ready` only asks the inner service: admission happens in `call`, because a
/// service may be polled ready long before (or without ever) being called, and a probe
/// slot taken in `poll_ready` could be held by a caller that never calls. The outcome is
/// classified on what `S`'s future returns; for an HTTP response that is the head, so an
/// error in a streamed body after the head is not seen: report it with a
/// [`Permit`](crate::Permit) from [`CircuitBreaker::try_acquire`] if it matters.
///
/// # Examples
///
/// ```
/// use keel_breaker::{BreakerService, CircuitBreaker};
/// use std::sync::LazyLock;
/// use tower::{Service, ServiceExt, service_fn};
///
/// static UPSTREAM: LazyLock<CircuitBreaker> =
///     LazyLock::new(|| CircuitBreaker::builder("upstream").build().unwrap());
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // A `&'static` breaker: no reference count is touched per call.
/// let mut service = BreakerService::new(
///     service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x * 2) }),
///     &*UPSTREAM,
/// );
/// assert_eq!(service.ready().await?.call(21).await?, 42);
/// # Ok(())
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
#[derive(Debug, Clone)]
pub struct BreakerService<S, B = CircuitBreaker, C = AllErrors> {
    inner: S,
    breaker: B,
    classifier: C,
}

impl<S, B: Borrow<CircuitBreaker> + Clone> BreakerService<S, B> {
    /// Guards `inner` with `breaker`, counting `Ok` as success and every `Err` as failure.
    pub fn new(inner: S, breaker: B) -> BreakerService<S, B> {
        BreakerService {
            inner,
            breaker,
            classifier: AllErrors,
        }
    }
}

impl<S, B: Borrow<CircuitBreaker>, C> BreakerService<S, B, C> {
    /// The breaker guarding this service.
    pub fn breaker(&self) -> &CircuitBreaker {
        self.breaker.borrow()
    }

    /// The wrapped service.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S, B, C, Request> Service<Request> for BreakerService<S, B, C>
where
    S: Service<Request>,
    B: Borrow<CircuitBreaker> + Clone,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BreakerError<S::Error>;
    type Future = ResponseFuture<S::Future, B, C>;

    #[inline]
    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context).map_err(BreakerError::Inner)
    }

    #[inline]
    fn call(&mut self, request: Request) -> Self::Future {
        let admission = match self.breaker.borrow().inner.admit() {
            Ok(admission) => admission,
            Err(rejected) => {
                return ResponseFuture {
                    future: None,
                    recorder: None,
                    rejected: Some(rejected),
                    classifier: self.classifier.clone(),
                };
            }
        };
        let mut recorder = Recorder {
            breaker: self.breaker.clone(),
            admission: Some(admission),
        };
        // A panicking `call` of the inner service counts as a failure, like a panicking
        // operation in `CircuitBreaker::call`.
        let armed = FailOnUnwind(&mut recorder);
        let future = self.inner.call(request);
        mem::forget(armed);
        ResponseFuture {
            future: Some(future),
            recorder: Some(recorder),
            rejected: None,
            classifier: self.classifier.clone(),
        }
    }
}

/// An admitted call's bookkeeping inside a [`ResponseFuture`]: cancels when dropped before
/// its outcome is recorded.
struct Recorder<B: Borrow<CircuitBreaker>> {
    breaker: B,
    admission: Option<Admission>,
}

impl<B: Borrow<CircuitBreaker>> Drop for Recorder<B> {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            self.breaker.borrow().inner.cancel(admission);
        }
    }
}

/// Armed around the inner service's `call` and each poll of its future: dropped only while
/// they unwind, it records a failure (listener panics are then dropped, so the inner
/// panic continues).
struct FailOnUnwind<'r, B: Borrow<CircuitBreaker>>(&'r mut Recorder<B>);

impl<B: Borrow<CircuitBreaker>> Drop for FailOnUnwind<'_, B> {
    #[cold]
    fn drop(&mut self) {
        if let Some(admission) = self.0.admission.take() {
            self.0.breaker.borrow().inner.record_failure(admission);
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`BreakerService`]: a named type, no boxing. Resolves to the
    /// rejection at once, or to the inner future's output, recording its classified
    /// outcome. Dropped before it completes, it cancels the call. Polled again after it
    /// completed (with the inner output or a rejection), it stays `Pending` forever and
    /// records nothing; it never panics. (The `Future` contract allows either; tower's own
    /// futures panic, but issue 12 rules out a panic of the layer's own, and
    /// [`Execute`](crate::Execute) behaves the same.)
    #[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, B: Borrow<CircuitBreaker>, C> {
        // First, so it is dropped before the recorder records the cancellation.
        #[pin]
        future: Option<F>,
        recorder: Option<Recorder<B>>,
        rejected: Option<Rejected>,
        classifier: C,
    }
}

impl<F, B: Borrow<CircuitBreaker>, C> fmt::Debug for ResponseFuture<F, B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("rejected", &self.rejected)
            .field("running", &self.future.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, B, C, T, E> Future for ResponseFuture<F, B, C>
where
    F: Future<Output = Result<T, E>>,
    B: Borrow<CircuitBreaker>,
    C: Classify<T, E>,
{
    type Output = Result<T, BreakerError<E>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(rejected) = this.rejected.take() {
            return Poll::Ready(Err(rejected.into()));
        }
        let (Some(future), Some(recorder)) =
            (this.future.as_mut().as_pin_mut(), this.recorder.as_mut())
        else {
            // Completed already: nothing to drive, nothing to record.
            return Poll::Pending;
        };
        let armed = FailOnUnwind(recorder);
        let poll = future.poll(context);
        mem::forget(armed);
        let Poll::Ready(result) = poll else {
            return Poll::Pending;
        };
        this.future.set(None);
        // A panicking classifier leaves the recorder unrecorded: it cancels when dropped.
        let outcome = this.classifier.classify(&result);
        if let Some(mut recorder) = this.recorder.take()
            && let Some(admission) = recorder.admission.take()
        {
            recorder.breaker.borrow().inner.record_classified(
                admission,
                outcome,
                &*this.classifier,
                &result,
            );
        }
        Poll::Ready(result.map_err(BreakerError::Inner))
    }
}
