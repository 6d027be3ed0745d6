//! Admitted calls: the public [`Permit`], the guards that record a panic or a cancellation,
//! and the `call`/`execute` drivers shared by [`CircuitBreaker`] and [`Classified`].

use std::{
    future::{Future, poll_fn},
    mem::{self, ManuallyDrop},
    pin::pin,
};

use crate::{
    BreakerError, CircuitBreaker, Classify, Outcome,
    machine::{Admission, Inner},
};

/// Permission to make one call; see [`CircuitBreaker::try_acquire`].
///
/// Report the outcome with [`success`](Self::success), [`failure`](Self::failure) or
/// [`record`](Self::record). Dropping the permit without reporting means the call was
/// cancelled: nothing is recorded, and a half-open probe slot is freed for the next caller.
///
/// # Examples
///
/// ```
/// use breaker::{AllErrors, CircuitBreaker, Classify};
///
/// let breaker = CircuitBreaker::builder("cache").build()?;
/// let permit = breaker.try_acquire()?;
/// let result: Result<u32, &str> = Ok(7);
/// permit.record(AllErrors.classify(&result));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "dropping a permit cancels the call; report its outcome with success() or failure()"]
pub struct Permit<'a> {
    pub(crate) inner: &'a Inner,
    pub(crate) admission: Admission,
}

impl Permit<'_> {
    /// The call succeeded.
    #[inline]
    pub fn success(self) {
        let this = ManuallyDrop::new(self);
        this.inner.record_success(this.admission);
    }

    /// The call failed.
    #[inline]
    pub fn failure(self) {
        let this = ManuallyDrop::new(self);
        this.inner.record_failure(this.admission);
    }

    /// Records `outcome`, e.g. from a [`Classify`] (`Ignored` counts neither way and frees
    /// a probe slot).
    #[inline]
    pub fn record(self, outcome: Outcome) {
        let this = ManuallyDrop::new(self);
        this.inner.record(this.admission, outcome);
    }

    /// Whether this call is a half-open probe (its outcome decides the breaker's next state).
    pub fn is_probe(&self) -> bool {
        self.admission.probe
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.inner.cancel(self.admission);
    }
}

/// A call in progress inside `call`/`execute`: `Some` until its outcome is recorded.
/// Dropped unrecorded (a dropped `execute` future, a panicking classifier), it cancels.
struct Call<'a> {
    inner: &'a Inner,
    admission: Option<Admission>,
}

impl Call<'_> {
    #[inline]
    fn record(&mut self, outcome: Outcome) {
        if let Some(admission) = self.admission.take() {
            self.inner.record(admission, outcome);
        }
    }
}

impl Drop for Call<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            self.inner.cancel(admission);
        }
    }
}

/// Armed around the guarded operation (and each poll of its future): dropped, which only
/// happens while the operation unwinds, it records a failure. Listener panics during that
/// recording are dropped (the thread is already unwinding), so the operation's own panic
/// is the one that continues. Not `catch_unwind`: that calls the closure through a function
/// pointer, which blocks inlining and costs more than the whole closed-state bookkeeping.
struct FailOnUnwind<'c, 'a>(&'c mut Call<'a>);

impl Drop for FailOnUnwind<'_, '_> {
    #[cold]
    fn drop(&mut self) {
        if let Some(admission) = self.0.admission.take() {
            self.0.inner.record_failure(admission);
        }
    }
}

/// Runs `work` with a failure recorded if it unwinds.
#[inline]
fn guarded<R>(call: &mut Call<'_>, work: impl FnOnce() -> R) -> R {
    let armed = FailOnUnwind(call);
    let output = work();
    mem::forget(armed);
    output
}

#[inline]
pub(crate) fn call_with<T, E>(
    inner: &Inner,
    operation: impl FnOnce() -> Result<T, E>,
    classifier: &impl Classify<T, E>,
) -> Result<T, BreakerError<E>> {
    let mut call = Call {
        inner,
        admission: Some(inner.admit()?),
    };
    let result = guarded(&mut call, operation);
    // A panicking classifier unwinds through `call`, which cancels.
    let outcome = classifier.classify(&result);
    call.record(outcome);
    result.map_err(BreakerError::Inner)
}

pub(crate) async fn execute_with<F, Fut, T, E>(
    inner: &Inner,
    operation: F,
    classifier: &impl Classify<T, E>,
) -> Result<T, BreakerError<E>>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    // The call lives in this future's state: dropping the future drops it, which is
    // exactly "cancelled".
    let mut call = Call {
        inner,
        admission: Some(inner.admit()?),
    };
    let mut future = pin!(guarded(&mut call, operation));
    // Each poll is guarded: a panic inside it records a failure and then continues.
    let result = poll_fn(|context| guarded(&mut call, || future.as_mut().poll(context))).await;
    let outcome = classifier.classify(&result);
    call.record(outcome);
    result.map_err(BreakerError::Inner)
}

/// A handle that classifies results; see [`CircuitBreaker::classify`] and
/// [`CircuitBreaker::failure_if`].
///
/// # Examples
///
/// ```
/// use breaker::{CircuitBreaker, Outcome};
///
/// let breaker = CircuitBreaker::builder("api").build()?;
/// let lenient = breaker.classify(|_: &Result<(), &str>| Outcome::Ignored);
/// let _ = lenient.call(|| Err("down"));
/// assert_eq!(breaker.state(), breaker::State::Closed);
/// # Ok::<(), breaker::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Classified<'a, C> {
    pub(crate) breaker: &'a CircuitBreaker,
    pub(crate) classifier: C,
}

impl<C> Classified<'_, C> {
    /// Like [`CircuitBreaker::call`], with this handle's classifier.
    ///
    /// # Errors
    ///
    /// As for [`CircuitBreaker::call`].
    #[inline]
    pub fn call<T, E>(&self, operation: impl FnOnce() -> Result<T, E>) -> Result<T, BreakerError<E>>
    where
        C: Classify<T, E>,
    {
        call_with(&self.breaker.inner, operation, &self.classifier)
    }

    /// Like [`CircuitBreaker::execute`], with this handle's classifier.
    ///
    /// # Errors
    ///
    /// As for [`CircuitBreaker::call`].
    pub async fn execute<F, Fut, T, E>(&self, operation: F) -> Result<T, BreakerError<E>>
    where
        C: Classify<T, E>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        execute_with(&self.breaker.inner, operation, &self.classifier).await
    }

    /// The classifier.
    pub fn classifier(&self) -> &C {
        &self.classifier
    }
}
