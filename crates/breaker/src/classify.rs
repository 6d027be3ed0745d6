//! Result classification: which outcomes of a guarded call count as successes, failures,
//! or neither.

/// What one call's result means to the breaker.
///
/// # Examples
///
/// ```
/// use keel_breaker::{CircuitBreaker, Outcome};
///
/// let breaker = CircuitBreaker::builder("api").build()?;
/// let permit = breaker.try_acquire()?;
/// permit.record(Outcome::Ignored); // e.g. the caller's own bad request
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The dependency answered: counts towards closing (and resets a failure streak).
    Success,
    /// The dependency failed: counts towards opening; a failed probe reopens.
    Failure,
    /// Neither: not counted by the policy, frees a probe slot like a cancelled call.
    Ignored,
}

/// Decides the [`Outcome`] of a call from its whole `Result`, so an `Ok` value (an HTTP
/// 500 inside `Ok(response)`) can be a failure and an `Err` value a success or ignored.
///
/// Implemented for every `Fn(&Result<T, E>) -> Outcome`; use it with
/// [`CircuitBreaker::classify`](crate::CircuitBreaker::classify), or call
/// [`classify`](Classify::classify) yourself and hand the outcome to
/// [`Permit::record`](crate::Permit::record). A classifier that panics cancels the call
/// (nothing is recorded, a probe slot is freed) and its panic reaches the caller.
///
/// # Examples
///
/// ```
/// use keel_breaker::{CircuitBreaker, Classify, Outcome, State};
///
/// struct Response { status: u16 }
///
/// let server_errors = |result: &Result<Response, std::io::Error>| match result {
///     Ok(response) if response.status >= 500 => Outcome::Failure,
///     Ok(response) if response.status >= 400 => Outcome::Ignored,
///     Ok(_) => Outcome::Success,
///     Err(_) => Outcome::Failure,
/// };
/// assert_eq!(server_errors.classify(&Ok(Response { status: 503 })), Outcome::Failure);
///
/// let breaker = CircuitBreaker::builder("api").build()?;
/// let classified = breaker.classify(server_errors);
/// for _ in 0..5 {
///     let _ = classified.call(|| Ok(Response { status: 500 }));
/// }
/// assert_eq!(breaker.state(), State::Open);
/// # Ok::<(), keel_breaker::ConfigError>(())
/// ```
pub trait Classify<T, E> {
    /// The outcome of `result`.
    fn classify(&self, result: &Result<T, E>) -> Outcome;

    /// For a result classified as a failure: how long the dependency asked not to be
    /// called again (an HTTP `Retry-After`, say). When the breaker is open after recording
    /// that failure, it stays open at least that long, and rejections report it (the
    /// longer opening is a manual open time, like
    /// [`open_for`](crate::CircuitBreaker::open_for): a failed probe after it starts the
    /// backoff from its first delay). When this failure is the one that opens the breaker,
    /// the hold is part of the opening's own compare-and-swap, so no racing caller can take
    /// a probe in between; when the breaker was already open, it is extended (a new
    /// generation of the open state, no event). Racing openings with different holds
    /// apply one of them and then each failing call's own. The default is `None`;
    /// `HttpStatus` (feature `http`) reads `Retry-After`.
    fn retry_after(&self, result: &Result<T, E>) -> Option<std::time::Duration> {
        let _ = result;
        None
    }
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// A borrowed classifier, itself a classifier: what a [`Classified`](crate::Classified)
/// handle lends each [`Execute`](crate::Execute) future it makes. (A blanket impl for `&C`
/// would overlap the one for closures.)
///
/// # Examples
///
/// ```
/// use keel_breaker::{AllErrors, ClassifyRef, Classify, Outcome};
///
/// assert_eq!(ClassifyRef(&AllErrors).classify(&Ok::<_, ()>(1)), Outcome::Success);
/// ```
#[derive(Debug)]
pub struct ClassifyRef<'a, C: ?Sized>(pub &'a C);

impl<C: ?Sized> Clone for ClassifyRef<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C: ?Sized> Copy for ClassifyRef<'_, C> {}

impl<T, E, C: Classify<T, E> + ?Sized> Classify<T, E> for ClassifyRef<'_, C> {
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self.0.classify(result)
    }

    fn retry_after(&self, result: &Result<T, E>) -> Option<std::time::Duration> {
        self.0.retry_after(result)
    }
}

/// The default classifier: `Ok` is a success, every `Err` a failure.
///
/// # Examples
///
/// ```
/// use keel_breaker::{AllErrors, Classify, Outcome};
///
/// assert_eq!(AllErrors.classify(&Err::<(), _>("down")), Outcome::Failure);
/// assert_eq!(AllErrors.classify(&Ok::<_, ()>(1)), Outcome::Success);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllErrors;

impl<T, E> Classify<T, E> for AllErrors {
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// Errors for which the predicate holds are failures; other errors and every `Ok` are
/// successes (the dependency answered). Made by
/// [`CircuitBreaker::failure_if`](crate::CircuitBreaker::failure_if).
///
/// # Examples
///
/// ```
/// use keel_breaker::{Classify, ErrorPredicate, Outcome};
///
/// let timeouts = ErrorPredicate(|error: &&str| *error == "timeout");
/// assert_eq!(timeouts.classify(&Err::<(), _>("timeout")), Outcome::Failure);
/// assert_eq!(timeouts.classify(&Err::<(), _>("not found")), Outcome::Success);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ErrorPredicate<P>(pub P);

impl<T, E, P> Classify<T, E> for ErrorPredicate<P>
where
    P: Fn(&E) -> bool,
{
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Err(error) if (self.0)(error) => Outcome::Failure,
            _ => Outcome::Success,
        }
    }
}
