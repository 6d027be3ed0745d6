//! The breaker itself: the state word, its transitions, admission, and result recording.

use std::{
    fmt,
    future::{Future, poll_fn},
    mem::ManuallyDrop,
    panic::{AssertUnwindSafe, catch_unwind, resume_unwind},
    pin::pin,
    task::Poll,
    time::Duration,
};

use crate::{
    Backoff, BreakerError, Clock, ConfigError, Event, MonotonicClock, Policy, Rejected, State,
    policy::Tracker,
    state::{
        CLOSED, HALF_OPEN, ISOLATED, MAX_ISOLATIONS, OPEN, Word, public_state, tag_count,
        tag_is_newer, tagged_count,
    },
    sync::{Arc, AtomicI64, AtomicU64, Ordering},
};

type Listener = Box<dyn Fn(&Event) + Send + Sync>;

/// A circuit breaker. Cheap to clone: clones share one state.
///
/// Build one with [`CircuitBreaker::builder`]. Guard calls with [`call`](Self::call)
/// (synchronous), [`execute`](Self::execute) (any future, any runtime), or the manual
/// [`try_acquire`](Self::try_acquire) permit.
///
/// # Examples
///
/// ```
/// use breaker::{BreakerError, CircuitBreaker, Policy, State};
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
/// # Ok::<(), breaker::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The state word, `[generation: 32 | isolations: 16 | attempt: 8 | state: 8]`.
    ///
    /// | state | meaning | admits | left by |
    /// |---|---|---|---|
    /// | `CLOSED` | normal operation | everyone | the policy tripping (→ `OPEN`), `isolate` (→ `ISOLATED`) |
    /// | `OPEN` | failing; `opened_at` + delay(`attempt`) is the deadline | nobody before the deadline | the first caller after it (→ `HALF_OPEN`), `isolate` |
    /// | `HALF_OPEN` | probing; `probes` counts slots | up to `half_open_trials` at once | enough probe successes (→ `CLOSED`), a probe failure (→ `OPEN`, `attempt + 1`), a hung probe being superseded (→ `HALF_OPEN`, new generation), `isolate` |
    /// | `ISOLATED` | held open by `isolations` guards | nobody | the last guard dropping (→ `CLOSED`) |
    ///
    /// Every transition goes through [`Inner::cas`], one compare-and-swap on this
    /// word that also bumps the generation, so exactly one thread wins each transition and
    /// announces it. The generation is what makes results from before a transition stale.
    /// The backoff attempt and the isolation count live here too because they must change
    /// in the same CAS as the state (an isolation racing the last release, a probe failure
    /// racing another).
    word: AtomicU64,
    /// Consecutive failures of the closed generation in the tag (see `tagged_count`).
    failures: AtomicU64,
    /// Half-open slots: `[generation: 32 | in_flight: 16 | successes: 16]`; another
    /// generation's tag reads as zero, so superseding or reopening frees every slot at once.
    probes: AtomicU64,
    /// When the breaker last opened, in the clock's nanoseconds (negative when imported
    /// from a snapshot). Only ever raised with `fetch_max`, before the transition that
    /// opens, so whoever sees `OPEN` sees a time at least as late as the opening's.
    opened_at: AtomicI64,
    /// When the latest probe was admitted (same units and protocol as `opened_at`); a
    /// probe older than `probe_timeout` is superseded.
    probe_started: AtomicI64,
    tracker: Tracker,
    backoff: Backoff,
    probe_timeout: Option<Duration>,
    half_open_trials: u16,
    successes_to_close: u16,
    clock: Box<dyn Clock>,
    /// `None` when nobody listens, so the hot path checks one pointer.
    listeners: Option<Box<[Listener]>>,
    name: Box<str>,
}

/// Configures and builds a [`CircuitBreaker`]; see [`CircuitBreaker::builder`].
///
/// Defaults: [`Policy::consecutive_failures(5)`](Policy::consecutive_failures), a constant
/// 30 s [`half_open_after`](Self::half_open_after), one half-open trial, one success to close,
/// a probe timeout equal to the current open time before jitter (see
/// [`probe_timeout`](Self::probe_timeout)), and the [`MonotonicClock`].
pub struct Builder {
    name: Box<str>,
    policy: Policy,
    backoff: Backoff,
    half_open_trials: u32,
    successes_to_close: u32,
    probe_timeout: Option<Duration>,
    clock: Option<Box<dyn Clock>>,
    listeners: Vec<Listener>,
    initial: Option<Snapshot>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .field("backoff", &self.backoff)
            .field("half_open_trials", &self.half_open_trials)
            .field("successes_to_close", &self.successes_to_close)
            .field("probe_timeout", &self.probe_timeout)
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// The policy deciding when a closed breaker opens.
    #[must_use]
    pub fn policy(mut self, policy: Policy) -> Builder {
        self.policy = policy;
        self
    }

    /// How long to stay open before probing: a `Duration` or a [`Backoff`].
    #[must_use]
    pub fn half_open_after(mut self, backoff: impl Into<Backoff>) -> Builder {
        self.backoff = backoff.into();
        self
    }

    /// How many probes may run at once while half-open (default 1, at most 65,535).
    #[must_use]
    pub fn half_open_trials(mut self, trials: u32) -> Builder {
        self.half_open_trials = trials;
        self
    }

    /// How many probe successes close the breaker (default 1, at most 65,535).
    #[must_use]
    pub fn successes_to_close(mut self, successes: u32) -> Builder {
        self.successes_to_close = successes;
        self
    }

    /// How long a probe may run before the next caller supersedes it. No timer thread is
    /// involved: the next caller checks.
    ///
    /// The default is the open time that preceded the probe *without jitter*:
    /// [`Backoff::delay`] of the current backoff attempt. (The jittered open time depends
    /// on the generation of the opening, which a half-open breaker no longer has; the
    /// un-jittered one is its upper bound, so a probe is never superseded sooner than the
    /// breaker waited before admitting it.)
    #[must_use]
    pub fn probe_timeout(mut self, timeout: Duration) -> Builder {
        self.probe_timeout = Some(timeout);
        self
    }

    /// The time source (default [`MonotonicClock`]); tests pass a [`ManualClock`](crate::ManualClock).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Builder {
        self.clock = Some(Box::new(clock));
        self
    }

    /// Starts the breaker from a saved [`Snapshot`] (see [`CircuitBreaker::snapshot`]).
    ///
    /// A saved `open_remaining` longer than this breaker's open time is capped at it.
    #[must_use]
    pub fn initial_state(mut self, snapshot: Snapshot) -> Builder {
        self.initial = Some(snapshot);
        self
    }

    /// Calls `listener` with every [`Event`]. The other `on_*` methods are filters over this.
    ///
    /// Listeners run on the thread that caused the event, after the transition and every
    /// other change to the breaker's state is complete, with no lock held (the breaker has
    /// none), so a listener may call back into the breaker.
    ///
    /// A panicking listener cannot leave the breaker half-changed: its panic is caught, the
    /// remaining listeners and events are still delivered, and then the first panic
    /// continues in the caller. If the caller is already unwinding (a guarded operation
    /// panicked), listener panics are dropped instead, so they never abort the process.
    #[must_use]
    pub fn on_event(mut self, listener: impl Fn(&Event) + Send + Sync + 'static) -> Builder {
        self.listeners.push(Box::new(listener));
        self
    }

    /// Calls `listener(from, to)` once per transition.
    #[must_use]
    pub fn on_state_change(
        self,
        listener: impl Fn(State, State) + Send + Sync + 'static,
    ) -> Builder {
        self.on_event(move |event| {
            if let Event::StateChange { from, to } = *event {
                listener(from, to);
            }
        })
    }

    /// Calls `listener` when the breaker starts rejecting calls (→ `Open` or `Isolated`).
    #[must_use]
    pub fn on_break(self, listener: impl Fn() + Send + Sync + 'static) -> Builder {
        self.on_transition_to(&[State::Open, State::Isolated], listener)
    }

    /// Calls `listener` when the breaker closes.
    #[must_use]
    pub fn on_reset(self, listener: impl Fn() + Send + Sync + 'static) -> Builder {
        self.on_transition_to(&[State::Closed], listener)
    }

    /// Calls `listener` when the breaker becomes half-open.
    #[must_use]
    pub fn on_half_open(self, listener: impl Fn() + Send + Sync + 'static) -> Builder {
        self.on_transition_to(&[State::HalfOpen], listener)
    }

    /// Calls `listener` after each success of the current generation.
    #[must_use]
    pub fn on_success(self, listener: impl Fn() + Send + Sync + 'static) -> Builder {
        self.on_event(move |event| {
            if *event == Event::Success {
                listener();
            }
        })
    }

    /// Calls `listener` after each failure of the current generation.
    #[must_use]
    pub fn on_failure(self, listener: impl Fn() + Send + Sync + 'static) -> Builder {
        self.on_event(move |event| {
            if *event == Event::Failure {
                listener();
            }
        })
    }

    fn on_transition_to(
        self,
        states: &'static [State],
        listener: impl Fn() + Send + Sync + 'static,
    ) -> Builder {
        self.on_event(move |event| {
            if let Event::StateChange { to, .. } = event
                && states.contains(to)
            {
                listener();
            }
        })
    }

    /// Validates the configuration and builds the breaker.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting when a count is zero or too large (including a
    /// count window over 2^20 calls or a time window over 2^16 buckets), a ratio is
    /// outside `0.0..=1.0`, a window is shorter than its bucket count in nanoseconds, or an
    /// exponential backoff starts at zero or has `max < initial`. Any `Duration`, including
    /// `Duration::MAX`, is a valid open time or probe timeout.
    pub fn build(self) -> Result<CircuitBreaker, ConfigError> {
        let tracker = self.policy.build()?;
        self.backoff.validate()?;
        let half_open_trials = count16("half_open_trials", self.half_open_trials)?;
        let successes_to_close = count16("successes_to_close", self.successes_to_close)?;
        let clock = self
            .clock
            .unwrap_or_else(|| Box::new(MonotonicClock::new()));
        let now = nanos_i64(clock.now_nanos());
        let mut word = Word::new(CLOSED, 0, 0, 0);
        let mut failures = 0;
        let mut opened_at = 0;
        if let Some(snapshot) = self.initial {
            let attempt = snapshot.backoff_attempt;
            let open_for = match snapshot.state {
                State::Closed => None,
                State::Open => Some(snapshot.open_remaining),
                State::HalfOpen => Some(Duration::ZERO),
                // An isolation guard cannot outlive its process: open for the full time.
                State::Isolated => Some(self.backoff.jittered_delay(attempt, 0)),
            };
            if let Some(remaining) = open_for {
                word = Word::new(OPEN, attempt, 0, 0);
                // The deadline is `opened_at + delay`, so back-date the opening. The
                // remainder is capped at this breaker's own open time: a restored breaker
                // never waits longer than it is configured to, and `opened_at` is never in
                // the future, where `open`'s `fetch_max` would keep it for later openings.
                let delay = self.backoff.jittered_delay(attempt, 0);
                let remaining = remaining.min(delay);
                let opened = i128::from(now) + nanos_i128(remaining.as_nanos())
                    - nanos_i128(delay.as_nanos());
                opened_at =
                    i64::try_from(opened).unwrap_or(if opened < 0 { i64::MIN } else { i64::MAX });
            } else {
                failures = tag_count(0, snapshot.consecutive_failures);
            }
        }
        Ok(CircuitBreaker {
            inner: Arc::new(Inner {
                word: AtomicU64::new(word.0),
                failures: AtomicU64::new(failures),
                probes: AtomicU64::new(0),
                opened_at: AtomicI64::new(opened_at),
                probe_started: AtomicI64::new(i64::MIN),
                tracker,
                backoff: self.backoff,
                probe_timeout: self.probe_timeout,
                half_open_trials,
                successes_to_close,
                clock,
                listeners: if self.listeners.is_empty() {
                    None
                } else {
                    Some(self.listeners.into_boxed_slice())
                },
                name: self.name,
            }),
        })
    }
}

fn count16(setting: &'static str, value: u32) -> Result<u16, ConfigError> {
    if value == 0 {
        return Err(ConfigError::Zero { setting });
    }
    u16::try_from(value).map_err(|_| ConfigError::TooLarge {
        setting,
        value: u64::from(value),
        max: u64::from(u16::MAX),
    })
}

fn nanos_i64(nanos: u64) -> i64 {
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

fn nanos_i128(nanos: u128) -> i128 {
    i128::try_from(nanos).unwrap_or(i128::MAX)
}

/// A deadline that never comes: the open time or probe timeout is `Duration::MAX`.
const UNBOUNDED: i128 = i128::MAX;

/// `start + duration`, or [`UNBOUNDED`] for `Duration::MAX`.
fn deadline_after(start: i64, duration: Duration) -> i128 {
    if duration == Duration::MAX {
        return UNBOUNDED;
    }
    i128::from(start).saturating_add(nanos_i128(duration.as_nanos()))
}

/// The time from `now` until `deadline`: `Duration::MAX` for an [`UNBOUNDED`] one, however
/// much time has passed.
fn time_until(deadline: i128, now: i64) -> Duration {
    if deadline == UNBOUNDED {
        return Duration::MAX;
    }
    duration_from_nanos(deadline - i128::from(now))
}

/// A positive nanosecond difference as a `Duration`, saturating at `Duration::MAX`.
fn duration_from_nanos(nanos: i128) -> Duration {
    // The common case fits `u64`, whose division by a constant is a multiplication; the
    // `u128` division below is a library call.
    if let Ok(nanos) = u64::try_from(nanos.max(0)) {
        return Duration::from_nanos(nanos);
    }
    let nanos = u128::try_from(nanos).unwrap_or(0);
    let seconds = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    let subsecond = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    if seconds == u64::MAX {
        return Duration::MAX;
    }
    Duration::new(seconds, subsecond)
}

/// What a call was admitted as: remembered until its result comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Admission {
    generation: u32,
    probe: bool,
}

impl CircuitBreaker {
    /// Starts configuring a breaker named `name` (used in logs and events).
    pub fn builder(name: impl Into<String>) -> Builder {
        Builder {
            name: name.into().into_boxed_str(),
            policy: Policy::default(),
            backoff: Backoff::default(),
            half_open_trials: 1,
            successes_to_close: 1,
            probe_timeout: None,
            clock: None,
            listeners: Vec::new(),
            initial: None,
        }
    }

    /// The name given to [`builder`](Self::builder).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current state. An `Open` breaker whose deadline has passed stays `Open` until the
    /// next call makes it `HalfOpen`.
    pub fn state(&self) -> State {
        // Relaxed: a snapshot of the state for display; nothing is read based on it.
        public_state(Word(self.inner.word.load(Ordering::Relaxed)).state())
    }

    /// Whether the breaker is rejecting calls because it is `Open` or `Isolated`.
    pub fn is_open(&self) -> bool {
        matches!(self.state(), State::Open | State::Isolated)
    }

    /// Asks to make one call. Report its outcome with [`Permit::success`] or
    /// [`Permit::failure`]; dropping the permit instead means the call was cancelled.
    ///
    /// # Errors
    ///
    /// [`Rejected`] when the breaker is open (with the time until a probe may start),
    /// half-open with every probe slot taken, or isolated. Never blocks, never queues.
    ///
    /// # Examples
    ///
    /// ```
    /// use breaker::CircuitBreaker;
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
    /// success, every `Err` a failure (see [`failure_if`](Self::failure_if) to choose), a
    /// panic a failure (the panic then continues).
    ///
    /// # Errors
    ///
    /// [`BreakerError::Open`]/[`BreakerError::Isolated`] when rejected (the operation is not
    /// run), [`BreakerError::Inner`] with the operation's own error.
    #[inline]
    pub fn call<T, E>(
        &self,
        operation: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, BreakerError<E>> {
        call_classified(&self.inner, operation, |_: &E| true)
    }

    /// Runs the future `operation()` returns if the breaker admits it, recording the
    /// outcome like [`call`](Self::call). Works with any executor.
    ///
    /// Dropping the returned future before it completes cancels the call: no outcome is
    /// recorded, and a half-open probe slot is released for the next caller.
    ///
    /// # Errors
    ///
    /// As for [`call`](Self::call).
    ///
    /// # Examples
    ///
    /// ```
    /// use breaker::CircuitBreaker;
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
    pub async fn execute<F, Fut, T, E>(&self, operation: F) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        execute_classified(&self.inner, operation, |_: &E| true).await
    }

    /// Chooses which errors count as failures for the calls made through the returned
    /// handle; the others count as successes (the dependency answered).
    ///
    /// # Examples
    ///
    /// ```
    /// use breaker::{CircuitBreaker, State};
    /// use std::io::{Error, ErrorKind};
    ///
    /// let breaker = CircuitBreaker::builder("files").build()?;
    /// let not_found_is_fine = breaker.failure_if(|e: &Error| e.kind() != ErrorKind::NotFound);
    /// for _ in 0..10 {
    ///     let _ = not_found_is_fine.call(|| Err::<(), _>(Error::from(ErrorKind::NotFound)));
    /// }
    /// assert_eq!(breaker.state(), State::Closed);
    /// # Ok::<(), breaker::ConfigError>(())
    /// ```
    pub fn failure_if<P>(&self, predicate: P) -> Classified<'_, P> {
        Classified {
            breaker: self,
            predicate,
        }
    }

    /// Holds the breaker open until every returned guard is dropped; then it closes.
    ///
    /// Guards are reference counted in the state word (up to 65,535 at once; beyond that
    /// the count saturates and the breaker stays isolated until the first 65,535 drop).
    ///
    /// # Examples
    ///
    /// ```
    /// use breaker::{CircuitBreaker, State};
    ///
    /// let breaker = CircuitBreaker::builder("maintenance").build()?;
    /// let guard = breaker.isolate();
    /// let second = breaker.isolate();
    /// drop(guard);
    /// assert_eq!(breaker.state(), State::Isolated);
    /// drop(second);
    /// assert_eq!(breaker.state(), State::Closed);
    /// # Ok::<(), breaker::ConfigError>(())
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

    /// The state to save, for [`Builder::initial_state`] (with the `serde` feature it
    /// serializes, like Cockatiel's `toJSON()`).
    ///
    /// # Examples
    ///
    /// ```
    /// use breaker::{CircuitBreaker, ManualClock, Policy, State};
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
    /// let saved = breaker.snapshot();
    /// assert_eq!(saved.open_remaining, Duration::from_secs(6));
    ///
    /// let restored = CircuitBreaker::builder("a").initial_state(saved).build()?;
    /// assert_eq!(restored.state(), State::Open);
    /// # Ok::<(), breaker::ConfigError>(())
    /// ```
    pub fn snapshot(&self) -> Snapshot {
        let inner = &self.inner;
        // Acquire: pairs with the transition's Release so `opened_at` is the opening's.
        let word = Word(inner.word.load(Ordering::Acquire));
        let mut snapshot = Snapshot {
            state: public_state(word.state()),
            open_remaining: Duration::ZERO,
            consecutive_failures: 0,
            backoff_attempt: word.attempt(),
        };
        match word.state() {
            CLOSED => {
                // Relaxed: a best-effort count, like any read of a concurrently updated counter.
                snapshot.consecutive_failures =
                    tagged_count(inner.failures.load(Ordering::Relaxed), word.generation());
            }
            OPEN => {
                let now = inner.now();
                snapshot.open_remaining = time_until(inner.open_deadline(word), now);
            }
            _ => {}
        }
        snapshot
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

/// A handle that classifies errors with a predicate; see [`CircuitBreaker::failure_if`].
#[derive(Debug, Clone, Copy)]
pub struct Classified<'a, P> {
    breaker: &'a CircuitBreaker,
    predicate: P,
}

impl<P> Classified<'_, P> {
    /// Like [`CircuitBreaker::call`], counting an error as a failure only if the
    /// predicate returns `true`.
    ///
    /// # Errors
    ///
    /// As for [`CircuitBreaker::call`].
    pub fn call<T, E>(&self, operation: impl FnOnce() -> Result<T, E>) -> Result<T, BreakerError<E>>
    where
        P: Fn(&E) -> bool,
    {
        call_classified(&self.breaker.inner, operation, &self.predicate)
    }

    /// Like [`CircuitBreaker::execute`], counting an error as a failure only if the
    /// predicate returns `true`.
    ///
    /// # Errors
    ///
    /// As for [`CircuitBreaker::call`].
    pub async fn execute<F, Fut, T, E>(&self, operation: F) -> Result<T, BreakerError<E>>
    where
        P: Fn(&E) -> bool,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        execute_classified(&self.breaker.inner, operation, &self.predicate).await
    }
}

#[inline]
fn call_classified<T, E>(
    inner: &Inner,
    operation: impl FnOnce() -> Result<T, E>,
    is_failure: impl Fn(&E) -> bool,
) -> Result<T, BreakerError<E>> {
    let admission = inner.admit()?;
    // Records a failure if `operation` unwinds; forgotten on return. Not `catch_unwind`:
    // that calls the closure through a function pointer, which blocks inlining and costs
    // more than the whole closed-state bookkeeping. The panic is never caught, so it simply
    // continues once the failure is recorded.
    let on_unwind = FailOnUnwind { inner, admission };
    let result = operation();
    std::mem::forget(on_unwind);
    // From here until the outcome is recorded, a permit cancels the call if anything
    // unwinds (a panicking `is_failure`), so a probe slot is never leaked. Moving it costs
    // nothing: `success`/`failure` consume it without running its `Drop`.
    let permit = Permit { inner, admission };
    match result {
        Ok(value) => {
            permit.success();
            Ok(value)
        }
        Err(error) => {
            if is_failure(&error) {
                permit.failure();
            } else {
                permit.success();
            }
            Err(BreakerError::Inner(error))
        }
    }
}

/// Records a failure when dropped, which `call_classified` lets happen only while its
/// operation unwinds.
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

async fn execute_classified<F, Fut, T, E>(
    inner: &Inner,
    operation: F,
    is_failure: impl Fn(&E) -> bool,
) -> Result<T, BreakerError<E>>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    // The permit lives in this future's state: dropping the future drops it, which is
    // exactly "cancelled".
    let permit = Permit {
        inner,
        admission: inner.admit()?,
    };
    // A panic while creating the future is recorded by a guard, as in `call_classified`.
    let on_unwind = FailOnUnwind {
        inner,
        admission: permit.admission,
    };
    let future = operation();
    std::mem::forget(on_unwind);
    let mut future = pin!(future);
    // A panic inside `poll` is caught here, recorded, and resumed below.
    let outcome =
        poll_fn(
            |context| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(context))) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
                Err(panic) => Poll::Ready(Err(panic)),
            },
        )
        .await;
    match outcome {
        Ok(Ok(value)) => {
            permit.success();
            Ok(value)
        }
        Ok(Err(error)) => {
            if is_failure(&error) {
                permit.failure();
            } else {
                permit.success();
            }
            Err(BreakerError::Inner(error))
        }
        Err(panic) => {
            permit.failure();
            resume_unwind(panic)
        }
    }
}

/// Permission to make one call; see [`CircuitBreaker::try_acquire`].
///
/// Report the outcome with [`success`](Self::success) or [`failure`](Self::failure).
/// Dropping the permit without reporting means the call was cancelled: nothing is
/// recorded, and a half-open probe slot is freed for the next caller.
#[derive(Debug)]
#[must_use = "dropping a permit cancels the call; report its outcome with success() or failure()"]
pub struct Permit<'a> {
    inner: &'a Inner,
    admission: Admission,
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

/// Keeps its breaker [`Isolated`](State::Isolated); see [`CircuitBreaker::isolate`].
#[derive(Debug)]
#[must_use = "the breaker is released as soon as the guard is dropped"]
pub struct IsolationGuard {
    breaker: CircuitBreaker,
    counted: bool,
}

impl Drop for IsolationGuard {
    fn drop(&mut self) {
        if self.counted {
            self.breaker.inner.release();
        }
    }
}

/// A breaker's saved state; see [`CircuitBreaker::snapshot`] and [`Builder::initial_state`].
///
/// Restoring: `Open` resumes with `open_remaining` left, capped at the restoring
/// breaker's own open time for `backoff_attempt` (so a snapshot from a breaker configured
/// with a longer open time never keeps the new one open longer than it is configured to,
/// and never affects its later openings); `HalfOpen` restores as open with
/// nothing left (the next call probes); `Isolated` restores as open for the full open time
/// (isolation guards cannot outlive their process); `Closed` keeps its failure count under
/// the consecutive-failures policy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Snapshot {
    /// The state when saved.
    pub state: State,
    /// Time left until a probe may start (zero unless `Open`; `Duration::MAX` when the
    /// open time is `Duration::MAX`).
    pub open_remaining: Duration,
    /// Consecutive failures counted while `Closed` (consecutive-failures policy).
    pub consecutive_failures: u32,
    /// Consecutive failed probes, which select the backoff delay.
    pub backoff_attempt: u8,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn now(&self) -> i64 {
        nanos_i64(self.clock.now_nanos())
    }

    /// `opened_at + delay(attempt)`, in the clock's nanoseconds (may exceed `i64`), or
    /// [`UNBOUNDED`] for an open time of `Duration::MAX`.
    fn open_deadline(&self, word: Word) -> i128 {
        // Acquire: pairs with the `fetch_max` (Release) made before the CAS that opened,
        // which the caller's Acquire load of `word` already synchronized with; this is
        // belt and braces for callers that loaded `word` with Relaxed.
        let opened_at = self.opened_at.load(Ordering::Acquire);
        let delay = self
            .backoff
            .jittered_delay(word.attempt(), word.generation());
        deadline_after(opened_at, delay)
    }

    /// When the latest probe is superseded, or [`UNBOUNDED`].
    fn probe_deadline(&self, word: Word) -> i128 {
        // Acquire: pairs with the Release `fetch_max` made before taking a slot or the
        // transition into `HALF_OPEN`.
        let started = self.probe_started.load(Ordering::Acquire);
        let timeout = self
            .probe_timeout
            .unwrap_or_else(|| self.backoff.delay(word.attempt()));
        deadline_after(started, timeout)
    }

    /// The fast path: a closed breaker admits with one load.
    #[inline]
    fn admit(&self) -> Result<Admission, Rejected> {
        // Acquire: pairs with the Release half of the transition CAS that stored this word,
        // so everything the transitioning thread did before it (clearing a window) happens
        // before this call's own records.
        let word = Word(self.word.load(Ordering::Acquire));
        if word.state() == CLOSED {
            return Ok(Admission {
                generation: word.generation(),
                probe: false,
            });
        }
        self.admit_slow(word)
    }

    #[cold]
    fn admit_slow(&self, mut word: Word) -> Result<Admission, Rejected> {
        // Read the clock at most once, however often the loop retries.
        let mut now = None;
        loop {
            match word.state() {
                CLOSED => {
                    return Ok(Admission {
                        generation: word.generation(),
                        probe: false,
                    });
                }
                OPEN => {
                    let now = *now.get_or_insert_with(|| self.now());
                    let deadline = self.open_deadline(word);
                    if i128::from(now) < deadline {
                        return Err(Rejected::Open {
                            retry_after: time_until(deadline, now),
                        });
                    }
                    // Release, before the CAS: whoever sees the new HALF_OPEN word sees a
                    // probe start at least this late (pairs with `probe_deadline`'s Acquire).
                    self.probe_started.fetch_max(now, Ordering::Release);
                    let next = word.next(HALF_OPEN);
                    word = match self.transition(word, next) {
                        Ok(()) => next,
                        Err(actual) => actual,
                    };
                }
                HALF_OPEN => {
                    let taken = self.take_slot(word.generation(), || {
                        let now = *now.get_or_insert_with(|| self.now());
                        // Release, before taking the slot: whoever sees the slot taken sees
                        // a probe start at least this late (pairs with `probe_deadline`'s
                        // Acquire), so a young probe is never superseded. Only a caller that
                        // saw a free slot raises it, so rejected callers cannot postpone
                        // superseding forever.
                        self.probe_started.fetch_max(now, Ordering::Release);
                    });
                    if taken {
                        return Ok(Admission {
                            generation: word.generation(),
                            probe: true,
                        });
                    }
                    let now = *now.get_or_insert_with(|| self.now());
                    let deadline = self.probe_deadline(word);
                    if i128::from(now) < deadline {
                        return Err(Rejected::Open {
                            retry_after: time_until(deadline, now),
                        });
                    }
                    // Every slot is held by a probe older than the timeout: supersede them
                    // with a new half-open generation, whose slots start empty and in which
                    // their results are stale. Release: as for the OPEN arm.
                    self.probe_started.fetch_max(now, Ordering::Release);
                    let next = word.next(HALF_OPEN);
                    word = match self.transition(word, next) {
                        Ok(()) => {
                            tracing::debug!(
                                target: "breaker",
                                name = %self.name,
                                "[CircuitBreaker:{}] hung probe superseded",
                                self.name
                            );
                            next
                        }
                        Err(actual) => actual,
                    };
                }
                _ => return Err(Rejected::Isolated),
            }
        }
    }

    /// Takes a half-open slot of `generation` if one is free, calling `before_take` once
    /// before the first attempt to take one.
    fn take_slot(&self, generation: u32, before_take: impl FnOnce()) -> bool {
        let mut before_take = Some(before_take);
        // Relaxed: the slot count publishes no other data; the CAS alone makes the count
        // exact, and a slot taken in a generation that just ended only yields a stale probe.
        let mut current = self.probes.load(Ordering::Relaxed);
        loop {
            let slots = tagged_count(current, generation);
            let (in_flight, successes) = (slots >> 16, slots & 0xFFFF);
            if in_flight >= u32::from(self.half_open_trials) {
                return false;
            }
            if let Some(before_take) = before_take.take() {
                before_take();
            }
            let next = tag_count(generation, (in_flight + 1) << 16 | successes);
            match self.probes.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Frees a slot of `generation`; with `succeeded`, also counts a probe success.
    /// Returns the generation's success count, or `None` if the generation is over.
    fn free_slot(&self, generation: u32, succeeded: bool) -> Option<u32> {
        // Relaxed: as in `take_slot`.
        let mut current = self.probes.load(Ordering::Relaxed);
        loop {
            if current >> 32 != u64::from(generation) {
                return None;
            }
            let slots = tagged_count(current, generation);
            let in_flight = (slots >> 16).saturating_sub(1);
            let successes = ((slots & 0xFFFF) + u32::from(succeeded)).min(0xFFFF);
            let next = tag_count(generation, in_flight << 16 | successes);
            match self.probes.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(successes),
                Err(actual) => current = actual,
            }
        }
    }

    /// A transition that is complete once its CAS succeeds: announces it right away.
    fn transition(&self, current: Word, next: Word) -> Result<(), Word> {
        let change = self.cas(current, next)?;
        if let Some(change) = change {
            self.emit(&[change]);
        }
        Ok(())
    }

    /// The one place the state word changes. On success, logs the transition and returns
    /// its event (if the public state changed) for the caller to emit once it has finished
    /// every other change, so a panicking listener cannot interrupt one.
    fn cas(&self, current: Word, next: Word) -> Result<Option<Event>, Word> {
        // AcqRel on success: Release publishes what the winner wrote before (a raised
        // `opened_at`/`probe_started`, a cleared window) to every later Acquire load of the
        // word; Acquire makes the previous transition's writes visible to the winner.
        // Acquire on failure: the caller retries from the actual word and may read the data
        // it publishes.
        match self
            .word
            .compare_exchange(current.0, next.0, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok((current.state() != next.state())
                .then(|| log_change(&self.name, current.state(), next.state()))),
            Err(actual) => Err(Word(actual)),
        }
    }

    #[inline]
    fn emit(&self, events: &[Event]) {
        if let Some(listeners) = &self.listeners {
            emit_to(listeners, events);
        }
    }

    /// Emits `event`, then the state change it caused (if any).
    fn emit_with(&self, event: Event, change: Option<Event>) {
        match change {
            Some(change) => self.emit(&[event, change]),
            None => self.emit(&[event]),
        }
    }

    /// Whether `generation` is still the breaker's current one (the word's state too).
    fn current(&self, generation: u32) -> Option<Word> {
        // Acquire: the caller may transition from this word, building on what it published.
        let word = Word(self.word.load(Ordering::Acquire));
        (word.generation() == generation).then_some(word)
    }

    /// The hot half of recording a success: a closed call under the default policy.
    #[inline]
    fn record_success(&self, admission: Admission) {
        if let (false, Tracker::Consecutive { .. }) = (admission.probe, &self.tracker) {
            // Relaxed: the count publishes nothing. Only a load unless a streak must be
            // reset; a count tagged with another generation reads as zero, so a stale
            // success never writes.
            let failures = self.failures.load(Ordering::Relaxed);
            if tagged_count(failures, admission.generation) != 0 {
                self.reset_streak(failures, admission.generation);
            }
            if self.listeners.is_some() {
                self.announce_success(admission.generation);
            }
            return;
        }
        self.record_success_slow(admission);
    }

    /// Resets the failure streak of `generation`, with a CAS rather than a store so that a
    /// success whose generation ended meanwhile cannot erase a newer generation's count.
    /// Off the hot path: it runs only after a failure.
    #[cold]
    fn reset_streak(&self, mut current: u64, generation: u32) {
        // Relaxed: as in `record_success`. A failure racing the reset may be erased by it;
        // with calls in flight at once "in a row" has no single meaning, and erring
        // towards staying closed is the safe side.
        while let Err(actual) = self.failures.compare_exchange_weak(
            current,
            tag_count(generation, 0),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            if tagged_count(actual, generation) == 0 {
                // Already reset, or another generation's count: not ours to touch.
                return;
            }
            current = actual;
        }
    }

    /// Records `failed` in a window policy for a closed call of `generation`; returns
    /// whether to trip, or `None` if the generation ended (the sample is then taken back:
    /// a stale result never lands in the window of a newer closed generation).
    fn record_in_window(&self, generation: u32, failed: bool) -> Option<(Word, bool)> {
        let (sample, trip) = match &self.tracker {
            Tracker::Consecutive { .. } => return self.current(generation).map(|w| (w, false)),
            Tracker::Count(window) => window.record(failed),
            Tracker::Time(window) => window.record(self.clock.now_nanos(), failed),
        };
        // Re-check after recording: a window is cleared before the transition that
        // closes it, and recording synchronizes with the clearing, so a sample that landed
        // in a cleared window sees the newer generation here.
        let Some(word) = self.current(generation) else {
            self.tracker.undo(sample);
            return None;
        };
        Some((word, trip))
    }

    #[cold]
    fn announce_success(&self, generation: u32) {
        if self.current(generation).is_some() {
            self.emit(&[Event::Success]);
        }
    }

    #[cold]
    fn record_success_slow(&self, admission: Admission) {
        if admission.probe {
            self.probe_succeeded(admission.generation);
            return;
        }
        if self.current(admission.generation).is_none()
            || self.record_in_window(admission.generation, false).is_none()
        {
            return;
        }
        self.emit(&[Event::Success]);
    }

    #[cold]
    fn record_failure(&self, admission: Admission) {
        if admission.probe {
            self.probe_failed(admission.generation);
            return;
        }
        let generation = admission.generation;
        if self.current(generation).is_none() {
            return;
        }
        let (word, trip) = match &self.tracker {
            Tracker::Consecutive { threshold } => {
                // Relaxed: a counter publishing nothing; the CAS makes increments exact
                // within the generation, and the tag keeps a late increment from an older
                // generation out of the current count.
                let mut current = self.failures.load(Ordering::Relaxed);
                let count = loop {
                    if tag_is_newer(current, generation) {
                        // A newer generation counts here already: this result is stale,
                        // and writing would erase the live count.
                        return;
                    }
                    let count = tagged_count(current, generation).saturating_add(1);
                    match self.failures.compare_exchange_weak(
                        current,
                        tag_count(generation, count),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => break count,
                        Err(actual) => current = actual,
                    }
                };
                // Announce only a failure of a generation still current.
                let Some(word) = self.current(generation) else {
                    return;
                };
                (word, count >= *threshold)
            }
            _ => match self.record_in_window(generation, true) {
                Some(decision) => decision,
                None => return,
            },
        };
        // Open first, announce after: a panicking listener must not skip the opening.
        let change = if trip { self.open(word) } else { None };
        self.emit_with(Event::Failure, change);
    }

    /// Opens from `word` (closed or half-open) unless another transition got there first;
    /// returns the state change to announce.
    fn open(&self, word: Word) -> Option<Event> {
        let now = self.now();
        // Re-check right before raising `opened_at`: a thread that was preempted since it
        // read `word` must not push a newer opening's deadline later.
        if self.current(word.generation()) != Some(word) {
            return None;
        }
        // Release, before the CAS: pairs with `open_deadline`'s Acquire.
        self.opened_at.fetch_max(now, Ordering::Release);
        let attempt = if word.state() == HALF_OPEN {
            word.attempt().saturating_add(1)
        } else {
            0
        };
        self.cas(word, word.next(OPEN).with_attempt(attempt))
            .ok()
            .flatten()
    }

    fn probe_succeeded(&self, generation: u32) {
        let Some(successes) = self.free_slot(generation, true) else {
            return;
        };
        let Some(word) = self.current(generation) else {
            return;
        };
        let mut change = None;
        if successes >= u32::from(self.successes_to_close) {
            // Clear before the CAS, so calls admitted by the new closed generation (which
            // synchronize with the CAS) record into an empty window.
            self.tracker.clear();
            change = self
                .cas(word, word.next(CLOSED).with_attempt(0))
                .ok()
                .flatten();
        }
        self.emit_with(Event::Success, change);
    }

    fn probe_failed(&self, generation: u32) {
        let Some(word) = self.current(generation) else {
            return;
        };
        if word.state() != HALF_OPEN {
            return;
        }
        let change = self.open(word);
        self.emit_with(Event::Failure, change);
    }

    #[cold]
    fn cancel(&self, admission: Admission) {
        if admission.probe {
            let _ = self.free_slot(admission.generation, false);
        }
    }

    /// Takes one isolation; returns whether it was counted and the state change to
    /// announce once the caller holds its guard.
    fn isolate(&self) -> (bool, Option<Event>) {
        // Acquire: as in `cas`'s failure ordering.
        let mut word = Word(self.word.load(Ordering::Acquire));
        loop {
            if word.isolations() == MAX_ISOLATIONS {
                return (false, None);
            }
            let next = if word.state() == ISOLATED {
                word.with_isolations(word.isolations() + 1)
            } else {
                word.next(ISOLATED).with_isolations(1)
            };
            match self.cas(word, next) {
                Ok(change) => return (true, change),
                Err(actual) => word = actual,
            }
        }
    }

    fn release(&self) {
        // Acquire: as in `cas`'s failure ordering.
        let mut word = Word(self.word.load(Ordering::Acquire));
        loop {
            if word.state() != ISOLATED || word.isolations() == 0 {
                // Unreachable while a counted guard lives; never underflow regardless.
                return;
            }
            let next = if word.isolations() == 1 {
                self.tracker.clear();
                word.next(CLOSED).with_isolations(0).with_attempt(0)
            } else {
                word.with_isolations(word.isolations() - 1)
            };
            match self.transition(word, next) {
                Ok(()) => return,
                Err(actual) => word = actual,
            }
        }
    }
}

/// Logs a transition that just happened and returns its event.
#[cold]
fn log_change(name: &str, from: u8, to: u8) -> Event {
    let (from, to) = (public_state(from), public_state(to));
    tracing::info!(
        target: "breaker",
        name = %name,
        from = %from,
        to = %to,
        "[CircuitBreaker:{}] State: {}",
        name,
        to
    );
    Event::StateChange { from, to }
}

/// Delivers every event to every listener, even if one panics; then continues the first
/// panic, unless the thread is already unwinding (a second panic escaping a `Drop` would
/// abort the process), in which case listener panics are dropped.
#[cold]
fn emit_to(listeners: &[Listener], events: &[Event]) {
    let mut first_panic = None;
    for event in events {
        for listener in listeners {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| listener(event))) {
                first_panic.get_or_insert(panic);
            }
        }
    }
    if let Some(panic) = first_panic
        && !std::thread::panicking()
    {
        resume_unwind(panic);
    }
}
