//! Carrying the current trace into spawned tasks, blocking tasks, threads and pools.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::task::JoinHandle;

use crate::context::{InScope, TraceContext, TraceScope, current, enter_scope, scoped};

pin_project! {
    /// A future that runs with a given trace (or explicitly none) as current: what
    /// [`TraceFutureExt::in_current_trace`] and [`TraceFutureExt::in_trace`] return.
    pub struct InTrace<F> {
        #[pin]
        future: InScope<F>,
    }
}

impl<F> std::fmt::Debug for InTrace<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InTrace").finish_non_exhaustive()
    }
}

impl<F: Future> Future for InTrace<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().future.poll(cx)
    }
}

/// Carries a trace into a future that will run elsewhere (a spawned task, a queue).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use keel_correlation::TraceFutureExt as _;
///
/// keel_correlation::Tracer::off().start_trace("request", async {
///     let id = keel_correlation::correlation_id();
///     let carried = tokio::spawn(async { keel_correlation::correlation_id() }.in_current_trace());
///     assert_eq!(carried.await.unwrap(), id);
/// }).await;
/// # }
/// ```
pub trait TraceFutureExt: Future + Sized {
    /// Runs `self` with the trace that is current now (where this is called), or with none.
    fn in_current_trace(self) -> InTrace<Self> {
        self.in_trace(current())
    }

    /// Runs `self` with `context` as the current trace.
    fn in_trace(self, context: Option<Arc<TraceContext>>) -> InTrace<Self> {
        InTrace {
            future: scoped(TraceScope::from(context), self),
        }
    }
}

impl<F: Future> TraceFutureExt for F {}

/// `tokio::spawn` that carries the current trace into the task. Bare `tokio::spawn` loses it:
/// a trace is current only inside its own future's polls, not in another task's.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// keel_correlation::Tracer::off().start_trace("request", async {
///     let id = keel_correlation::correlation_id();
///     assert_eq!(keel_correlation::spawn(async { keel_correlation::correlation_id() }).await.unwrap(), id);
///     assert_eq!(tokio::spawn(async { keel_correlation::correlation_id() }).await.unwrap(), None);
/// }).await;
/// # }
/// ```
#[allow(clippy::disallowed_methods)] // The one sanctioned use of `tokio::spawn`.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.in_current_trace())
}

/// `tokio::task::spawn_blocking` that carries the current trace into the closure.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// keel_correlation::Tracer::off().start_trace("request", async {
///     let id = keel_correlation::correlation_id();
///     let seen = keel_correlation::spawn_blocking(keel_correlation::correlation_id).await.unwrap();
///     assert_eq!(seen, id);
/// }).await;
/// # }
/// ```
#[allow(clippy::disallowed_methods)] // The one sanctioned use of `spawn_blocking`.
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(bind(f))
}

/// Binds the current trace to a closure, for threads and pools: the closure runs with the
/// trace that was current when `bind` was called.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// keel_correlation::Tracer::off().start_trace("request", async {
///     let id = keel_correlation::correlation_id();
///     let seen = std::thread::spawn(keel_correlation::bind(keel_correlation::correlation_id)).join().unwrap();
///     assert_eq!(seen, id);
/// }).await;
/// # }
/// ```
pub fn bind<F, R>(f: F) -> impl FnOnce() -> R
where
    F: FnOnce() -> R,
{
    let context = current();
    move || enter_scope(TraceScope::from(context), f)
}
