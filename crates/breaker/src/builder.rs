//! Configuration: the [`Builder`], its validation, and the [`SavedState`] a breaker can be
//! started from.

use std::{fmt, time::Duration};

use crate::{
    Backoff, CircuitBreaker, Clock, ConfigError, Event, MonotonicClock, Policy, Rejected, State,
    backoff::random_seed,
    listeners::{Listener, Listeners, RejectListener},
    machine::{Inner, MANUAL_ATTEMPT, Start, nanos_i64, nanos_i128},
    metrics::Counters,
    state::{CLOSED, OPEN, Word, tag_count},
    sync::Arc,
};

/// Configures and builds a [`CircuitBreaker`]; see [`CircuitBreaker::builder`].
///
/// Defaults: [`Policy::consecutive_failures(5)`](Policy::consecutive_failures), a constant
/// 30 s [`half_open_after`](Self::half_open_after), one half-open trial, one success to close,
/// a probe timeout equal to the current open time before jitter but at least one second
/// (see [`probe_timeout`](Self::probe_timeout)), no per-call counts, no slow-call
/// threshold, and the [`MonotonicClock`].
///
/// Choices worth knowing (they differ between peer libraries):
///
/// - **Any probe failure reopens** (Cockatiel's default), with the next backoff delay; the
///   breaker closes after [`successes_to_close`](Self::successes_to_close) probe successes
///   of one half-open generation.
/// - **A window policy decides only when a failure is recorded**; a success never opens
///   the breaker (resilience4j also evaluates on a success, which can open after a
///   success that brings the window to its minimum). The next failure decides.
/// - `min_calls`/`min_throughput` of 0 are a [`ConfigError`], as in every peer.
/// - An open time of zero is valid (the first caller after opening probes at once), but
///   the default probe timeout is floored at one second, so half-open never admits more
///   than [`half_open_trials`](Self::half_open_trials) calls at once; an explicit zero
///   probe timeout is a [`ConfigError`].
///
/// # Examples
///
/// ```
/// use keel_breaker::{Backoff, CircuitBreaker, Policy};
/// use std::time::Duration;
///
/// let breaker = CircuitBreaker::builder("search")
///     .policy(Policy::count_window(100, 0.5, 20))
///     .half_open_after(Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60)))
///     .slow_call_threshold(Duration::from_secs(2))
///     .count_calls()
///     .on_rejected(|rejected| eprintln!("rejected: {rejected}"))
///     .build()?;
/// # let _ = breaker;
/// # Ok::<(), keel_breaker::ConfigError>(())
/// ```
pub struct Builder {
    pub(crate) name: Box<str>,
    pub(crate) policy: Policy,
    pub(crate) backoff: Backoff,
    pub(crate) half_open_trials: u32,
    pub(crate) successes_to_close: u32,
    pub(crate) probe_timeout: Option<Duration>,
    pub(crate) slow_call_threshold: Option<Duration>,
    pub(crate) count_calls: bool,
    pub(crate) clock: Option<Box<dyn Clock>>,
    pub(crate) listeners: Vec<Listener>,
    pub(crate) reject_listeners: Vec<RejectListener>,
    pub(crate) initial: Option<SavedState>,
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
            .field("slow_call_threshold", &self.slow_call_threshold)
            .field("count_calls", &self.count_calls)
            .field("listeners", &self.listeners.len())
            .field("reject_listeners", &self.reject_listeners.len())
            .finish_non_exhaustive()
    }
}

impl Builder {
    pub(crate) fn new(name: Box<str>) -> Builder {
        Builder {
            name,
            policy: Policy::default(),
            backoff: Backoff::default(),
            half_open_trials: 1,
            successes_to_close: 1,
            probe_timeout: None,
            slow_call_threshold: None,
            count_calls: false,
            clock: None,
            listeners: Vec::new(),
            reject_listeners: Vec::new(),
            initial: None,
        }
    }

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

    /// How long a probe may run before the next caller supersedes it (it must be positive).
    /// No timer thread is involved: the next caller checks.
    ///
    /// The default is the open time that preceded the probe *without jitter*
    /// ([`Backoff::delay`] of the current backoff attempt), but at least one second. (The
    /// jittered open time depends on the generation of the opening, which a half-open
    /// breaker no longer has; the un-jittered one is its upper bound, so a probe is never
    /// superseded sooner than the breaker waited before admitting it. The floor keeps a
    /// zero or tiny open time from letting every caller supersede the probe at once.)
    #[must_use]
    pub fn probe_timeout(mut self, timeout: Duration) -> Builder {
        self.probe_timeout = Some(timeout);
        self
    }

    /// Counts calls that take at least `threshold` as failures, whatever their result
    /// (like resilience4j's slow-call rate, folded into the failure policy), and as slow in
    /// [`Metrics::slow_calls`](crate::Metrics::slow_calls). Off by default.
    ///
    /// Cost: two clock reads per call (admission and outcome), and closed calls leave the
    /// fast path. Without a threshold the clock is never read for it. A slow call is
    /// judged when its outcome is reported, so a hung call counts only once it returns.
    #[must_use]
    pub fn slow_call_threshold(mut self, threshold: Duration) -> Builder {
        self.slow_call_threshold = Some(threshold);
        self
    }

    /// Keeps the per-call counts of [`Metrics`](crate::Metrics) (admitted, successes,
    /// failures, ignored, cancelled, slow, rejections by reason) and, with the `metrics`
    /// feature, exports them through the `metrics` facade.
    ///
    /// Cost: one relaxed `fetch_add` per admission, per outcome and per rejection (plus the
    /// installed recorder's own increment with the feature), a read-modify-write the
    /// closed path otherwise never does. The counts are striped (16 copies on their own
    /// cache lines, each thread adding to one, 2 KiB per breaker; `metrics()` sums them),
    /// so threads calling at once do not pass one cache line back and forth. Without it,
    /// `metrics()` still reports the state, the time in it, the transitions and the window.
    #[must_use]
    pub fn count_calls(mut self) -> Builder {
        self.count_calls = true;
        self
    }

    /// The time source (default [`MonotonicClock`]); tests pass a [`ManualClock`](crate::ManualClock).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Builder {
        self.clock = Some(Box::new(clock));
        self
    }

    /// Starts the breaker from a [`SavedState`] (see [`CircuitBreaker::saved_state`]).
    ///
    /// A saved `open_remaining` longer than this breaker's open time is capped at it.
    #[must_use]
    pub fn initial_state(mut self, saved: SavedState) -> Builder {
        self.initial = Some(saved);
        self
    }

    /// Calls `listener` with every [`Event`]. The other `on_*` methods are filters over this
    /// (except [`on_rejected`](Self::on_rejected)).
    ///
    /// Listeners run on the thread that caused the event, after the transition and every
    /// other change to the breaker's state is complete, with no lock held (the breaker has
    /// none), so a listener may call back into the breaker.
    ///
    /// A panicking listener cannot leave the breaker half-changed: its panic is caught, the
    /// remaining listeners and events are still delivered, and then the first panic
    /// continues in the caller. If the caller is already unwinding (a guarded operation
    /// panicked), listener panics are dropped instead: the operation's panic always wins.
    #[must_use]
    pub fn on_event(mut self, listener: impl Fn(&Event) + Send + Sync + 'static) -> Builder {
        self.listeners.push(Box::new(listener));
        self
    }

    /// Calls `listener` with every rejection (its [`reason`](Rejected::reason), and the
    /// time until a retry). Runs on the rejected caller's thread before it gets the
    /// rejection; panics are contained as for [`on_event`](Self::on_event). Without one,
    /// a rejection pays one pointer check.
    #[must_use]
    pub fn on_rejected(mut self, listener: impl Fn(&Rejected) + Send + Sync + 'static) -> Builder {
        self.reject_listeners.push(Box::new(listener));
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
    /// A [`ConfigError`] naming the setting when a count is zero or too large (including
    /// `min_calls`/`min_throughput` of zero, a count window over 2^20 calls or a time
    /// window over 2^16 buckets), a ratio is outside `0.0..=1.0`, a window is shorter than
    /// its bucket count in nanoseconds, an exponential backoff starts at zero or has
    /// `max < initial`, or the probe timeout or slow-call threshold is zero. Any `Duration`,
    /// including zero and `Duration::MAX`, is a valid open time, and any positive one a
    /// valid probe timeout.
    pub fn build(self) -> Result<CircuitBreaker, ConfigError> {
        let tracker = self.policy.build()?;
        self.backoff.validate()?;
        let half_open_trials = count16("half_open_trials", self.half_open_trials)?;
        let successes_to_close = count16("successes_to_close", self.successes_to_close)?;
        positive("probe_timeout", self.probe_timeout)?;
        positive("slow_call_threshold", self.slow_call_threshold)?;
        let slow_call_nanos = self.slow_call_threshold.map_or(0, |threshold| {
            u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX)
        });
        let clock = self
            .clock
            .unwrap_or_else(|| Box::new(MonotonicClock::new()));
        let now = nanos_i64(clock.now_nanos());
        let seed = random_seed();
        let mut start = Start {
            word: Word::new(CLOSED, 0, 0, 0),
            failures: 0,
            opened_at: 0,
            now,
        };
        if let Some(saved) = self.initial {
            restore(&mut start, &saved, &self.backoff, seed);
        }
        let counters = self
            .count_calls
            .then(|| Box::new(Counters::new(&self.name)));
        #[cfg(feature = "metrics")]
        if let Some(counters) = &counters {
            counters.export_state(start.word.state());
        }
        Ok(CircuitBreaker {
            inner: Arc::new(Inner::new(
                start,
                tracker,
                self.backoff,
                seed,
                self.probe_timeout,
                slow_call_nanos,
                (half_open_trials, successes_to_close),
                clock,
                Listeners::new(self.listeners, self.reject_listeners),
                counters,
                self.name,
            )),
        })
    }
}

/// Sets `start` from a saved state.
fn restore(start: &mut Start, saved: &SavedState, backoff: &Backoff, seed: u64) {
    // A manual `open_for` restores as an ordinary opening (its duration is not saved).
    let attempt = saved.backoff_attempt.min(MANUAL_ATTEMPT - 1);
    let delay = backoff.jittered_delay(attempt, crate::backoff::jitter_seed(seed, 0));
    let open_for = match saved.state {
        State::Closed => None,
        State::Open => Some(saved.open_remaining),
        State::HalfOpen => Some(Duration::ZERO),
        // An isolation guard cannot outlive its process: open for the full time.
        State::Isolated => Some(delay),
    };
    let Some(remaining) = open_for else {
        start.failures = tag_count(0, saved.consecutive_failures);
        return;
    };
    start.word = Word::new(OPEN, attempt, 0, 0);
    // The deadline is `opened_at + delay`, so back-date the opening. The remainder is
    // capped at this breaker's own open time: a restored breaker never waits longer than
    // it is configured to, and `opened_at` is never in the future, where `open`'s
    // `fetch_max` would keep it for later openings.
    let remaining = remaining.min(delay);
    let opened =
        i128::from(start.now) + nanos_i128(remaining.as_nanos()) - nanos_i128(delay.as_nanos());
    start.opened_at = i64::try_from(opened).unwrap_or(if opened < 0 { i64::MIN } else { i64::MAX });
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

fn positive(setting: &'static str, value: Option<Duration>) -> Result<(), ConfigError> {
    match value {
        Some(value) if value.is_zero() => Err(ConfigError::Duration {
            setting,
            value,
            reason: "must be positive",
        }),
        _ => Ok(()),
    }
}

/// A breaker's saved state; see [`CircuitBreaker::saved_state`] and
/// [`Builder::initial_state`]. (Called `Snapshot` before 0.2; renamed so it does not read
/// as the `snapshot` crate's.)
///
/// Restoring: `Open` resumes with `open_remaining` left, capped at the restoring
/// breaker's own open time for `backoff_attempt` (so a saved state from a breaker
/// configured with a longer open time never keeps the new one open longer than it is
/// configured to, and never affects its later openings); `HalfOpen` restores as open with
/// nothing left (the next call probes); `Isolated` restores as open for the full open time
/// (isolation guards cannot outlive their process); `Closed` keeps its failure count under
/// the consecutive-failures policy.
///
/// # Examples
///
/// ```
/// use keel_breaker::{CircuitBreaker, SavedState, State};
///
/// let breaker = CircuitBreaker::builder("a").build()?;
/// let saved: SavedState = breaker.saved_state();
/// assert_eq!(saved.state, State::Closed);
/// # Ok::<(), keel_breaker::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct SavedState {
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
