//! Admitted calls: the public [`Permit`], the guards that record a panic or a cancellation,
//! and the `call`/`execute` drivers shared by [`CircuitBreaker`] and [`Classified`].

use std::{
    future::Future,
    mem::{self, ManuallyDrop},
    pin::Pin,
    task::{Context, Poll},
};

use crate::{
    BreakerError, CircuitBreaker, Classify, ClassifyRef, Outcome,
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
/// use keel_breaker::{AllErrors, CircuitBreaker, Classify};
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
        self.admission.probe()
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

impl Drop for Call<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            self.inner.cancel(admission);
        }
    }
}

/// Armed around the guarded operation of `call`: dropped, which only happens while the
/// operation unwinds, it records a failure. Listener panics during that recording are
/// dropped (the thread is already unwinding), so the operation's own panic is the one that
/// continues. Not `catch_unwind`: that calls the closure through a function pointer, which
/// blocks inlining and costs more than the whole closed-state bookkeeping.
struct FailOnUnwind<'a> {
    inner: &'a Inner,
    admission: Admission,
}

impl Drop for FailOnUnwind<'_> {
    #[cold]
    fn drop(&mut self) {
        self.inner.record_failure(self.admission);
    }
}

/// [`FailOnUnwind`] for the polls of an [`Execute`], whose call stays in the future's
/// state: it also marks the call as recorded, so dropping the future later does not
/// cancel it too.
struct FailPollOnUnwind<'c, 'a>(&'c mut Call<'a>);

impl Drop for FailPollOnUnwind<'_, '_> {
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
    let armed = FailPollOnUnwind(call);
    let output = work();
    mem::forget(armed);
    output
}

/// `call`: a closed breaker with quiet successes (the default policy, no listener, no
/// counters, no slow-call timing) admits and records inline; any other state or
/// configuration takes [`call_admitting`], one cold call that runs the operation there (so
/// the hot path holds one inlined copy of the operation and no rejection handling).
///
/// The classifier is taken by value (a `ClassifyRef` for a borrowed one): the default,
/// `AllErrors`, is then no argument at all to the cold call, one instruction fewer at every
/// call site; LLVM's inliner weighs every instruction of a caller's closure around `call`.
#[inline]
pub(crate) fn call_with<T, E>(
    inner: &Inner,
    operation: impl FnOnce() -> Result<T, E>,
    classifier: impl Classify<T, E> + Copy,
) -> Result<T, BreakerError<E>> {
    let Some(tag) = inner.admit_quiet() else {
        return call_admitting(inner, operation, classifier);
    };
    let armed = FailQuietOnUnwind { inner, tag };
    let result = operation();
    mem::forget(armed);
    // A panicking classifier records nothing (a closed call has no slot to free), as a
    // cancelled call.
    let outcome = classifier.classify(&result);
    if outcome == Outcome::Failure
        && let Some(wait) = classifier.retry_after(&result)
    {
        inner.record_failure_holding(Admission::closed_tagged(tag), Some(wait));
    } else {
        inner.record_quiet(tag, outcome);
    }
    result.map_err(BreakerError::Inner)
}

/// [`FailOnUnwind`] for a call admitted by `admit_quiet`, holding only what it needs (two
/// words to store before the operation runs, not three).
struct FailQuietOnUnwind<'a> {
    inner: &'a Inner,
    tag: u64,
}

impl Drop for FailQuietOnUnwind<'_> {
    // Inlined into the landing pad, handing its two words by value to a cold function: the
    // pad then reads them from the registers they already live in, and the fast path
    // stores nothing before the operation runs (an out-of-line `drop(&mut self)` needs the
    // guard in memory, two stores per call).
    #[inline]
    fn drop(&mut self) {
        fail_quiet_unwound(self.inner, self.tag);
    }
}

#[cold]
#[inline(never)]
fn fail_quiet_unwound(inner: &Inner, tag: u64) {
    inner.record_quiet(tag, Outcome::Failure);
}

/// `call` when the breaker is not closed with quiet successes: the full admission, then the same run.
#[cold]
#[inline(never)]
fn call_admitting<T, E>(
    inner: &Inner,
    operation: impl FnOnce() -> Result<T, E>,
    classifier: impl Classify<T, E> + Copy,
) -> Result<T, BreakerError<E>> {
    let admission = inner.admit()?;
    run_admitted(inner, admission, operation, &classifier)
}

/// Runs an admitted `operation` and records its classified outcome.
#[inline]
fn run_admitted<T, E>(
    inner: &Inner,
    admission: Admission,
    operation: impl FnOnce() -> Result<T, E>,
    classifier: &impl Classify<T, E>,
) -> Result<T, BreakerError<E>> {
    let armed = FailOnUnwind { inner, admission };
    let result = operation();
    mem::forget(armed);
    // From here until the outcome is recorded, a permit cancels the call if anything
    // unwinds (a panicking classifier), so a probe slot is never leaked. Moving it costs
    // nothing: `record` consumes it without running its `Drop`. (The admission is passed by
    // value, not kept in an `Option`, so the fast path keeps it in registers.)
    let permit = Permit { inner, admission };
    let outcome = classifier.classify(&result);
    let permit = ManuallyDrop::new(permit);
    inner.record_classified(permit.admission, outcome, classifier, &result);
    result.map_err(BreakerError::Inner)
}

pin_project_lite::pin_project! {
    /// The future of [`CircuitBreaker::execute`] and [`Classified::execute`]: asks the
    /// breaker when first polled, then drives the operation's future and records its
    /// outcome. A named type (no boxing, no `async` state machine around another), so it
    /// costs little more than the operation's own future.
    ///
    /// Dropping it before it completes cancels the call (nothing is recorded, a probe slot
    /// is freed). Polled again after it completed (with its output or a rejection), it
    /// stays `Pending` forever and records nothing; it never panics. (The `Future` contract
    /// allows either; tower's own futures panic, but a breaker must not turn a caller's
    /// extra poll into a crash, and the tower layer's `ResponseFuture`, feature `tower`,
    /// does the same.)
    ///
    /// # Examples
    ///
    /// ```
    /// use keel_breaker::{AllErrors, CircuitBreaker, Execute};
    /// use std::future::Ready;
    ///
    /// let breaker = CircuitBreaker::builder("api").build()?;
    /// let future: Execute<'_, _, Ready<Result<u8, ()>>, AllErrors> =
    ///     breaker.execute(|| std::future::ready(Ok(1)));
    /// # drop(future);
    /// # Ok::<(), keel_breaker::ConfigError>(())
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct Execute<'a, F, Fut, C> {
        // First, so it is dropped before `call` records the cancellation.
        #[pin]
        future: Option<Fut>,
        call: Call<'a>,
        operation: Option<F>,
        classifier: C,
    }
}

impl<F, Fut, C> std::fmt::Debug for Execute<'_, F, Fut, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Execute")
            .field("admitted", &self.call.admission.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a, F, Fut, C> Execute<'a, F, Fut, C> {
    pub(crate) fn new(inner: &'a Inner, operation: F, classifier: C) -> Self {
        Execute {
            call: Call {
                inner,
                admission: None,
            },
            operation: Some(operation),
            classifier,
            future: None,
        }
    }
}

impl<F, Fut, C, T, E> Future for Execute<'_, F, Fut, C>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, BreakerError<E>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(operation) = this.operation.take() {
            match this.call.inner.admit() {
                Ok(admission) => this.call.admission = Some(admission),
                Err(rejected) => return Poll::Ready(Err(rejected.into())),
            }
            // A panic while creating the future is recorded like one inside it.
            let future = guarded(this.call, operation);
            this.future.set(Some(future));
        }
        let Some(future) = this.future.as_mut().as_pin_mut() else {
            // Completed already (or rejected): nothing to drive, nothing to record. Pending,
            // not a panic, as `ResponseFuture` does (see the type's docs).
            return Poll::Pending;
        };
        // Each poll is guarded: a panic inside it records a failure and then continues.
        let Poll::Ready(result) = guarded(this.call, || future.poll(context)) else {
            return Poll::Pending;
        };
        this.future.set(None);
        // A panicking classifier leaves `call` recorded as nothing: it cancels on drop.
        let outcome = this.classifier.classify(&result);
        if let Some(admission) = this.call.admission.take() {
            this.call
                .inner
                .record_classified(admission, outcome, &*this.classifier, &result);
        }
        Poll::Ready(result.map_err(BreakerError::Inner))
    }
}

/// A handle that classifies results; see [`CircuitBreaker::classify`] and
/// [`CircuitBreaker::failure_if`].
///
/// # Examples
///
/// ```
/// use keel_breaker::{CircuitBreaker, Outcome};
///
/// let breaker = CircuitBreaker::builder("api").build()?;
/// let lenient = breaker.classify(|_: &Result<(), &str>| Outcome::Ignored);
/// let _ = lenient.call(|| Err("down"));
/// assert_eq!(breaker.state(), keel_breaker::State::Closed);
/// # Ok::<(), keel_breaker::ConfigError>(())
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
        call_with(
            &self.breaker.inner,
            operation,
            ClassifyRef(&self.classifier),
        )
    }

    /// Like [`CircuitBreaker::execute`], with this handle's classifier.
    ///
    /// The future's output is an error as for [`CircuitBreaker::call`].
    pub fn execute<F, Fut, T, E>(&self, operation: F) -> Execute<'_, F, Fut, ClassifyRef<'_, C>>
    where
        C: Classify<T, E>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        Execute::new(
            &self.breaker.inner,
            operation,
            ClassifyRef(&self.classifier),
        )
    }

    /// The classifier.
    pub fn classifier(&self) -> &C {
        &self.classifier
    }
}
