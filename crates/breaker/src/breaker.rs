//! The public handle: [`CircuitBreaker`] and its methods (guarding calls, manual control,
//! reading state and metrics). The state machine behind it is in `machine.rs`.

use std::{fmt, future::Future, time::Duration};

use crate::{
    AllErrors, BreakerError, Builder, Classified, ErrorPredicate, Execute, IsolationGuard, Metrics,
    Permit, Rejected, SavedState, State,
    machine::{Inner, MANUAL_ATTEMPT, duration_from_nanos, time_until},
    permit::call_with,
    policy::Tracker,
    state::{CLOSED, OPEN, public_state, tagged_count},
    sync::{Arc, Ordering},
};

/// A circuit breaker. Cheap to clone: clones share one state.
///
/// Build one with [`CircuitBreaker::builder`]. Guard calls with [`call`](Self::call)
/// (synchronous), [`execute`](Self::execute) (any future, any runtime), or the manual
/// [`try_acquire`](Self::try_acquire) permit.
///
/// # Examples
///
/// ```
/// use keel_breaker::{BreakerError, CircuitBreaker, Policy, State};
/// use std::time::Duration;
///
/// let breaker = CircuitBreaker::builder("payments")
///     .policy(Policy::consecutive_failures(2))
///     .half_open_after(Duration::from_secs(30))
///     .build()?;
/// for _ in 0..2 {
///     let _ = breaker.call(|| Err::<(), _>("503"));
/// }
/// assert_eq!(breaker.state(), State::Open);
/// assert!(matches!(breaker.call(|| Ok::<_, ()>(1)), Err(BreakerError::Open { .. })));
/// # Ok::<(), keel_breaker::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    pub(crate) inner: Arc<Inner>,
}

impl CircuitBreaker {
    /// Starts configuring a breaker named `name` (used in logs, events and metric labels).
    pub fn builder(name: impl Into<String>) -> Builder {
        Builder::new(name.into().into_boxed_str())
    }

    /// The name given to [`builder`](Self::builder).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current state. An `Open` breaker whose deadline has passed stays `Open` until the
    /// next call makes it `HalfOpen`.
    pub fn state(&self) -> State {
        self.inner.state()
    }

    /// Whether the breaker is rejecting calls because it is `Open` or `Isolated`.
    pub fn is_open(&self) -> bool {
        matches!(self.state(), State::Open | State::Isolated)
    }

    /// Asks to make one call. Report its outcome with [`Permit::success`],
    /// [`Permit::failure`] or [`Permit::record`]; dropping the permit instead means the call
    /// was cancelled.
    ///
    /// # Errors
    ///
    /// [`Rejected`] when the breaker is open (with the time until a probe may start),
    /// half-open with every probe slot taken, or isolated. Never blocks, never queues.
    ///
    /// # Examples
    ///
    /// ```
    /// use keel_breaker::CircuitBreaker;
    ///
    /// let breaker = CircuitBreaker::builder("cache").build()?;
    /// let permit = breaker.try_acquire()?;
    /// permit.success();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        let admission = self.inner.admit()?;
        Ok(Permit {
            inner: &self.inner,
            admission,
        })
    }

    /// Runs `operation` if the breaker admits it, and records the outcome: `Ok` is a
    /// success, every `Err` a failure (see [`classify`](Self::classify) and
    /// [`failure_if`](Self::failure_if) to choose), a panic a failure (the panic then
    /// continues, and always wins over a panicking listener's).
    ///
    /// # Errors
    ///
    /// [`BreakerError::Open`], [`BreakerError::HalfOpenFull`] or [`BreakerError::Isolated`]
    /// when rejected (the operation is not run), [`BreakerError::Inner`] with the
    /// operation's own error.
    #[inline]
    pub fn call<T, E>(
        &self,
        operation: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, BreakerError<E>> {
        call_with(&self.inner, operation, AllErrors)
    }

    /// Runs the future `operation()` returns if the breaker admits it, recording the
    /// outcome like [`call`](Self::call). Works with any executor.
    ///
    /// Dropping the returned future before it completes cancels the call: no outcome is
    /// recorded, and a half-open probe slot is released for the next caller.
    ///
    /// The future ([`Execute`]) asks the breaker when first polled; its output is an error
    /// as for [`call`](Self::call).
    ///
    /// # Examples
    ///
    /// ```
    /// use keel_breaker::CircuitBreaker;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let breaker = CircuitBreaker::builder("users-api").build()?;
    /// let user = breaker
    ///     .execute(|| async { Ok::<_, std::io::Error>("ada") })
    ///     .await?;
    /// assert_eq!(user, "ada");
    /// # Ok(())
    /// # }
    /// ```
    pub fn execute<F, Fut, T, E>(&self, operation: F) -> Execute<'_, F, Fut, AllErrors>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        Execute::new(&self.inner, operation, AllErrors)
    }

    /// Classifies whole results for the calls made through the returned handle: the
    /// classifier (any [`Classify`](crate::Classify), e.g. a closure
    /// `Fn(&Result<T, E>) -> Outcome`) says whether each is a success, a failure or
    /// ignored.
    ///
    /// # Examples
    ///
    /// ```
    /// use keel_breaker::{CircuitBreaker, Outcome, State};
    ///
    /// let breaker = CircuitBreaker::builder("http").build()?;
    /// let by_status = breaker.classify(|result: &Result<u16, std::io::Error>| match result {
    ///     Ok(status) if *status >= 500 => Outcome::Failure,
    ///     Ok(_) => Outcome::Success,
    ///     Err(_) => Outcome::Failure,
    /// });
    /// for _ in 0..5 {
    ///     let _ = by_status.call(|| Ok(503));
    /// }
    /// assert_eq!(breaker.state(), State::Open);
    /// # Ok::<(), keel_breaker::ConfigError>(())
    /// ```
    pub fn classify<C>(&self, classifier: C) -> Classified<'_, C> {
        Classified {
            breaker: self,
            classifier,
        }
    }

    /// Chooses which errors count as failures for the calls made through the returned
    /// handle; the others count as successes (the dependency answered).
    ///
    /// # Examples
    ///
    /// ```
    /// use keel_breaker::{CircuitBreaker, State};
    /// use std::io::{Error, ErrorKind};
    ///
    /// let breaker = CircuitBreaker::builder("files").build()?;
    /// let not_found_is_fine = breaker.failure_if(|e: &Error| e.kind() != ErrorKind::NotFound);
    /// for _ in 0..10 {
    ///     let _ = not_found_is_fine.call(|| Err::<(), _>(Error::from(ErrorKind::NotFound)));
    /// }
    /// assert_eq!(breaker.state(), State::Closed);
    /// # Ok::<(), keel_breaker::ConfigError>(())
    /// ```
    pub fn failure_if<P>(&self, predicate: P) -> Classified<'_, ErrorPredicate<P>> {
        self.classify(ErrorPredicate(predicate))
    }

    /// Holds the breaker open until every returned guard is dropped; then it closes.
    ///
    /// Guards are reference counted in the state word (up to 65,535 at once; beyond that
    /// the count saturates and the breaker stays isolated until the first 65,535 drop).
    /// While isolated, [`close`](Self::close), [`trip`](Self::trip) and
    /// [`open_for`](Self::open_for) do nothing: the guards decide.
    ///
    /// # Examples
    ///
    /// ```
    /// use keel_breaker::{CircuitBreaker, State};
    ///
    /// let breaker = CircuitBreaker::builder("maintenance").build()?;
    /// let guard = breaker.isolate();
    /// let second = breaker.isolate();
    /// drop(guard);
    /// assert_eq!(breaker.state(), State::Isolated);
    /// drop(second);
    /// assert_eq!(breaker.state(), State::Closed);
    /// # Ok::<(), keel_breaker::ConfigError>(())
    /// ```
    pub fn isolate(&self) -> IsolationGuard {
        let (counted, change) = self.inner.isolate();
        let guard = IsolationGuard {
            breaker: self.clone(),
            counted,
        };
        // Announced only once the guard exists: a panicking listener then drops the guard
        // while unwinding, which releases the isolation instead of leaking it.
        if let Some(change) = change {
            self.inner.emit(&[change]);
        }
        guard
    }

    /// Closes an `Open` or `HalfOpen` breaker now (one state change event, counted as
    /// manual in [`Metrics::transitions`]); returns whether it did. A closed breaker stays
    /// as it is, and an isolated one stays isolated (its guards decide). Results of calls
    /// admitted before are stale from then on.
    ///
    /// # Examples
    ///
    /// ```
    /// use keel_breaker::{CircuitBreaker, State};
    ///
    /// let breaker = CircuitBreaker::builder("api").build()?;
    /// breaker.trip();
    /// assert!(breaker.close());
    /// assert_eq!(breaker.state(), State::Closed);
    /// assert!(!breaker.close()); // already closed
    /// # Ok::<(), keel_breaker::ConfigError>(())
    /// ```
    pub fn close(&self) -> bool {
        self.inner.close()
    }

    /// Opens the breaker now for its configured open time, as if the policy had tripped
    /// (from half-open, with the next backoff delay); returns whether it did (not while
    /// isolated). Opening an open breaker restarts its open time. Counted as manual.
    ///
    /// # Examples
    ///
    /// ```
    /// use keel_breaker::{CircuitBreaker, State};
    ///
    /// let breaker = CircuitBreaker::builder("api").build()?;
    /// assert!(breaker.trip());
    /// assert_eq!(breaker.state(), State::Open);
    /// # Ok::<(), keel_breaker::ConfigError>(())
    /// ```
    pub fn trip(&self) -> bool {
        self.inner.trip(None)
    }

    /// Opens the breaker now for exactly `duration` (`Duration::MAX`: until
    /// [`close`](Self::close)), whatever the backoff says; returns whether it did (not while
    /// isolated). When the probe after it fails, the backoff starts again from its first
    /// delay. Two racing `open_for` calls apply one of the two durations. Counted as manual.
    ///
    /// # Examples
    ///
    /// ```
    /// use keel_breaker::{CircuitBreaker, Rejected};
    /// use std::time::Duration;
    ///
    /// let breaker = CircuitBreaker::builder("api").build()?;
    /// breaker.open_for(Duration::from_secs(300));
    /// let retry_after = breaker.try_acquire().unwrap_err().retry_after().unwrap();
    /// assert!(retry_after > Duration::from_secs(299));
    /// # Ok::<(), keel_breaker::ConfigError>(())
    /// ```
    pub fn open_for(&self, duration: Duration) -> bool {
        self.inner.trip(Some(duration))
    }

    /// The breaker's figures now: state, time in it, transitions, the policy's window and
    /// (with [`Builder::count_calls`]) the per-call counts. Reading them costs a few loads,
    /// a clock read, and for a time window a sum over its buckets; it never slows the calls.
    ///
    /// # Examples
    ///
    /// ```
    /// use keel_breaker::{CircuitBreaker, Policy};
    ///
    /// let breaker = CircuitBreaker::builder("api")
    ///     .policy(Policy::count_window(10, 0.5, 4))
    ///     .build()?;
    /// let _ = breaker.call(|| Err::<(), _>("503"));
    /// let _ = breaker.call(|| Ok::<_, ()>(()));
    /// let metrics = breaker.metrics();
    /// assert_eq!(metrics.window_calls, 2);
    /// assert_eq!(metrics.window_failure_ratio, 0.5);
    /// assert!(!metrics.counting_calls);
    /// # Ok::<(), keel_breaker::ConfigError>(())
    /// ```
    pub fn metrics(&self) -> Metrics {
        let inner = &self.inner;
        let word = inner.load();
        let now = inner.now();
        // Relaxed: a statistic (see `Inner::changed`).
        let entered_at = inner.entered_at.load(Ordering::Relaxed);
        let (window_calls, window_failures) = inner.tracker.window(inner.clock.now_nanos());
        let consecutive_failures = match (&inner.tracker, word.state()) {
            // Relaxed: a best-effort count, like any read of a concurrently updated counter.
            (Tracker::Consecutive { .. }, CLOSED) => {
                tagged_count(inner.failures.load(Ordering::Relaxed), word.generation())
            }
            _ => 0,
        };
        #[allow(clippy::cast_precision_loss)] // Window counts are far below 2^53.
        let window_failure_ratio = if window_calls == 0 {
            0.0
        } else {
            window_failures as f64 / window_calls as f64
        };
        let mut metrics = Metrics {
            state: public_state(word.state()),
            in_state_for: duration_from_nanos(i128::from(now) - i128::from(entered_at)),
            counting_calls: false,
            admitted: 0,
            successes: 0,
            failures: 0,
            ignored: 0,
            cancelled: 0,
            slow_calls: 0,
            rejected_open: 0,
            rejected_half_open_full: 0,
            rejected_isolated: 0,
            transitions: inner.transitions.read(),
            consecutive_failures,
            window_calls,
            window_failure_ratio,
        };
        if let Some(counters) = &inner.counters {
            counters.read_into(&mut metrics);
        }
        metrics
    }

    /// The state to save, for [`Builder::initial_state`] (with the `serde` feature it
    /// serializes, like Cockatiel's `toJSON()`).
    ///
    /// # Examples
    ///
    /// ```
    /// use keel_breaker::{CircuitBreaker, ManualClock, Policy, State};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let breaker = CircuitBreaker::builder("a")
    ///     .policy(Policy::consecutive_failures(1))
    ///     .half_open_after(Duration::from_secs(10))
    ///     .clock(clock.clone())
    ///     .build()?;
    /// let _ = breaker.call(|| Err::<(), _>(()));
    /// clock.advance(Duration::from_secs(4));
    /// let saved = breaker.saved_state();
    /// assert_eq!(saved.open_remaining, Duration::from_secs(6));
    ///
    /// let restored = CircuitBreaker::builder("a").initial_state(saved).build()?;
    /// assert_eq!(restored.state(), State::Open);
    /// # Ok::<(), keel_breaker::ConfigError>(())
    /// ```
    pub fn saved_state(&self) -> SavedState {
        let inner = &self.inner;
        let word = inner.load();
        let mut saved = SavedState {
            state: public_state(word.state()),
            open_remaining: Duration::ZERO,
            consecutive_failures: 0,
            backoff_attempt: if word.attempt() == MANUAL_ATTEMPT {
                0
            } else {
                word.attempt()
            },
        };
        match word.state() {
            CLOSED => {
                // Relaxed: a best-effort count, like any read of a concurrently updated counter.
                saved.consecutive_failures =
                    tagged_count(inner.failures.load(Ordering::Relaxed), word.generation());
            }
            OPEN => {
                let now = inner.now();
                saved.open_remaining = time_until(inner.open_deadline(word), now);
            }
            _ => {}
        }
        saved
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
