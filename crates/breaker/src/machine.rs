//! The state machine: the state word and its table, admission, result recording, and every
//! transition (automatic and manual), all through one compare-and-swap helper.

use std::time::Duration;

use crate::{
    Backoff, Clock, Event, Outcome, Rejected,
    backoff::jitter_seed,
    listeners::{Listeners, log_change},
    metrics::{Counters, Transitions},
    policy::Tracker,
    state::{
        CLOSED, HALF_OPEN, ISOLATED, OPEN, Word, public_state, tag_count, tag_is_newer,
        tagged_count,
    },
    sync::{AtomicI64, AtomicU64, Ordering},
};

/// The backoff attempt that marks an opening made by
/// [`open_for`](crate::CircuitBreaker::open_for): its delay is `manual_delay`, not the
/// backoff's. Automatic attempts stop one short of it.
pub(crate) const MANUAL_ATTEMPT: u8 = u8::MAX;

/// The shortest default probe timeout. The default is the open time, but an open time of
/// zero (or a few nanoseconds) would let every caller supersede the running probe at once,
/// admitting everyone; no real probe answers faster than this.
pub(crate) const PROBE_TIMEOUT_FLOOR: Duration = Duration::from_secs(1);

/// The generation's bits in the state word (and in a tagged count).
const GENERATION_BITS: u64 = 0xFFFF_FFFF_0000_0000;
/// A state byte no state word holds (the states are `CLOSED` to `ISOLATED`).
const NO_STATE: u8 = u8::MAX;

/// The shared state of one breaker and its clones.
///
/// `repr(C)`, hot fields first: a closed call reads `word`, `plain`, `quiet_state` and
/// `failures`, which then share one cache line instead of four. Aligned to a cache line, so
/// that line is not the one holding the `Arc`'s reference counts either: every clone or drop
/// of a `CircuitBreaker` (a clone per request is common) writes those counts, and on the
/// same line it would take the hot words away from every other core's cache.
#[repr(C, align(64))]
pub(crate) struct Inner {
    /// The state word, `[generation: 32 | isolations: 16 | attempt: 8 | state: 8]`.
    ///
    /// | state | meaning | admits | left by |
    /// |---|---|---|---|
    /// | `CLOSED` | normal operation | everyone | the policy tripping or `trip`/`open_for` (→ `OPEN`), `isolate` (→ `ISOLATED`) |
    /// | `OPEN` | failing; `opened_at` + delay(`attempt`) is the deadline (`manual_delay` for [`MANUAL_ATTEMPT`]) | nobody before the deadline | the first caller after it (→ `HALF_OPEN`), `close` (→ `CLOSED`), `trip`/`open_for` (→ `OPEN`, new generation), `isolate` |
    /// | `HALF_OPEN` | probing; `probes` counts slots | up to `half_open_trials` at once | enough probe successes or `close` (→ `CLOSED`), a probe failure or `trip` (→ `OPEN`, `attempt + 1`), a hung probe being superseded (→ `HALF_OPEN`, new generation), `isolate` |
    /// | `ISOLATED` | held open by `isolations` guards | nobody | the last guard dropping (→ `CLOSED`) |
    ///
    /// Every transition goes through [`Inner::cas`], one compare-and-swap on this
    /// word that also bumps the generation, so exactly one thread wins each transition and
    /// announces it. The generation is what makes results from before a transition stale.
    /// The backoff attempt and the isolation count live here too because they must change
    /// in the same CAS as the state (an isolation racing the last release, a probe failure
    /// racing another).
    pub(crate) word: AtomicU64,
    /// Consecutive failures of the closed generation in the tag (see `tagged_count`).
    pub(crate) failures: AtomicU64,
    /// Whether a closed call may take the fast path: no counters, no slow-call timing.
    pub(crate) plain: bool,
    /// The state byte [`admit_quiet`](Self::admit_quiet) admits: `CLOSED` when a closed
    /// success may return after one load (`plain`, under the consecutive-failures policy,
    /// with no event listener: nothing to count, nothing to announce, only a failure streak
    /// to reset, which that load checks), otherwise [`NO_STATE`], which no word holds. One
    /// compare of the word's state byte then checks both; see
    /// [`quiet_success`](Self::quiet_success).
    quiet_state: u8,
    pub(crate) listeners: Listeners,
    /// Half-open slots: `[generation: 32 | in_flight: 16 | successes: 16]`; another
    /// generation's tag reads as zero, so superseding or reopening frees every slot at once.
    probes: AtomicU64,
    /// When the breaker last opened, in the clock's nanoseconds (negative when imported
    /// from a saved state). Only ever raised with `fetch_max`, before the transition that
    /// opens, so whoever sees `OPEN` sees a time at least as late as the opening's.
    pub(crate) opened_at: AtomicI64,
    /// When the latest probe was admitted (same units and protocol as `opened_at`); a
    /// probe older than the probe timeout is superseded.
    probe_started: AtomicI64,
    /// When the public state last changed (same units; raised with `fetch_max` after the
    /// transition), for [`Metrics::in_state_for`](crate::Metrics::in_state_for).
    pub(crate) entered_at: AtomicI64,
    /// The open time of a manual [`open_for`](crate::CircuitBreaker::open_for), in
    /// nanoseconds (`u64::MAX`: forever); written before the transition that uses it.
    manual_delay: AtomicU64,
    pub(crate) tracker: Tracker,
    pub(crate) backoff: Backoff,
    /// This breaker's random jitter seed (see [`Backoff::with_jitter`]).
    pub(crate) seed: u64,
    /// `None`: the floored default (see [`PROBE_TIMEOUT_FLOOR`]).
    pub(crate) probe_timeout: Option<Duration>,
    /// Calls at least this slow count as failures; 0 when slow calls are not tracked.
    pub(crate) slow_call_nanos: u64,
    pub(crate) half_open_trials: u16,
    pub(crate) successes_to_close: u16,
    pub(crate) clock: Box<dyn Clock>,
    /// The clock's [`coarse_lag_nanos`](Clock::coarse_lag_nanos), read once.
    coarse_lag: u64,
    /// `None` unless [`Builder::count_calls`](crate::Builder::count_calls): the hot path
    /// checks one pointer.
    pub(crate) counters: Option<Box<Counters>>,
    pub(crate) transitions: Transitions,
    pub(crate) name: Box<str>,
}

/// What a call was admitted as: remembered until its result comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admission {
    /// `[probe: 32 | generation: 32]`, one word rather than a `u32` and a `bool`: the fast
    /// path then moves it whole, without the narrow store followed by a wide load (a
    /// store-forwarding stall) that a `bool` field cost where the fast and slow admissions
    /// merge.
    packed: u64,
    /// When the call started, when slow calls are tracked (else 0, and never read).
    pub(crate) started: u64,
}

impl Admission {
    /// A closed call admitted with the generation bits `tag` of the state word (not a
    /// probe, not timed).
    #[inline]
    pub(crate) fn closed_tagged(tag: u64) -> Admission {
        Admission::new(Word(tag).generation(), false)
    }

    #[inline]
    fn new(generation: u32, probe: bool) -> Admission {
        Admission {
            packed: u64::from(generation) | u64::from(probe) << 32,
            started: 0,
        }
    }

    /// The generation the call was admitted in.
    #[inline]
    #[allow(clippy::cast_possible_truncation)] // Unpacks the low 32 bits.
    pub(crate) fn generation(self) -> u32 {
        self.packed as u32
    }

    /// Whether the call is a half-open probe.
    #[inline]
    pub(crate) fn probe(self) -> bool {
        self.packed >> 32 != 0
    }
}

/// Everything [`Inner::new`] needs besides the configuration it copies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Start {
    pub(crate) word: Word,
    pub(crate) failures: u64,
    pub(crate) opened_at: i64,
    pub(crate) now: i64,
}

pub(crate) fn nanos_i64(nanos: u64) -> i64 {
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

pub(crate) fn nanos_i128(nanos: u128) -> i128 {
    i128::try_from(nanos).unwrap_or(i128::MAX)
}

/// A deadline that never comes: the open time or probe timeout is `Duration::MAX`.
pub(crate) const UNBOUNDED: i128 = i128::MAX;

/// `start + duration`, or [`UNBOUNDED`] for `Duration::MAX`.
fn deadline_after(start: i64, duration: Duration) -> i128 {
    if duration == Duration::MAX {
        return UNBOUNDED;
    }
    i128::from(start).saturating_add(nanos_i128(duration.as_nanos()))
}

/// The time from `now` until `deadline`: `Duration::MAX` for an [`UNBOUNDED`] one, however
/// much time has passed.
pub(crate) fn time_until(deadline: i128, now: i64) -> Duration {
    if deadline == UNBOUNDED {
        return Duration::MAX;
    }
    duration_from_nanos(deadline - i128::from(now))
}

/// A positive nanosecond difference as a `Duration`, saturating at `Duration::MAX`.
pub(crate) fn duration_from_nanos(nanos: i128) -> Duration {
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

impl Inner {
    #[allow(clippy::too_many_arguments)] // One argument per field the builder validated.
    pub(crate) fn new(
        start: Start,
        tracker: Tracker,
        backoff: Backoff,
        seed: u64,
        probe_timeout: Option<Duration>,
        slow_call_nanos: u64,
        trials: (u16, u16),
        clock: Box<dyn Clock>,
        listeners: Listeners,
        counters: Option<Box<Counters>>,
        name: Box<str>,
    ) -> Inner {
        let plain = counters.is_none() && slow_call_nanos == 0;
        let quiet_success =
            plain && matches!(tracker, Tracker::Consecutive { .. }) && !listeners.any();
        Inner {
            word: AtomicU64::new(start.word.0),
            failures: AtomicU64::new(start.failures),
            quiet_state: if quiet_success { CLOSED } else { NO_STATE },
            listeners,
            probes: AtomicU64::new(0),
            opened_at: AtomicI64::new(start.opened_at),
            probe_started: AtomicI64::new(i64::MIN),
            entered_at: AtomicI64::new(start.now),
            manual_delay: AtomicU64::new(0),
            tracker,
            backoff,
            seed,
            probe_timeout,
            slow_call_nanos,
            half_open_trials: trials.0,
            successes_to_close: trials.1,
            coarse_lag: clock.coarse_lag_nanos(),
            clock,
            counters,
            transitions: Transitions::default(),
            plain,
            name,
        }
    }

    pub(crate) fn now(&self) -> i64 {
        nanos_i64(self.clock.now_nanos())
    }

    /// The open time of the opening `word` describes: the manual one, or the backoff's
    /// (jittered with this breaker's seed and the opening's generation).
    fn open_delay(&self, word: Word) -> Duration {
        if word.attempt() == MANUAL_ATTEMPT {
            // Relaxed: written before the CAS that opened, which the caller's Acquire
            // load of `word` synchronized with.
            return match self.manual_delay.load(Ordering::Relaxed) {
                u64::MAX => Duration::MAX,
                nanos => Duration::from_nanos(nanos),
            };
        }
        self.backoff
            .jittered_delay(word.attempt(), jitter_seed(self.seed, word.generation()))
    }

    /// `opened_at + delay`, in the clock's nanoseconds (may exceed `i64`), or
    /// [`UNBOUNDED`] for an open time of `Duration::MAX`.
    pub(crate) fn open_deadline(&self, word: Word) -> i128 {
        // Acquire: pairs with the `fetch_max` (Release) made before the CAS that opened,
        // which the caller's Acquire load of `word` already synchronized with; this is
        // belt and braces for callers that loaded `word` with Relaxed.
        let opened_at = self.opened_at.load(Ordering::Acquire);
        deadline_after(opened_at, self.open_delay(word))
    }

    /// The probe timeout in force for `word`'s half-open generation: the configured one,
    /// or the un-jittered open time that preceded it, at least [`PROBE_TIMEOUT_FLOOR`].
    fn probe_timeout(&self, word: Word) -> Duration {
        self.probe_timeout.unwrap_or_else(|| {
            let open_time = if word.attempt() == MANUAL_ATTEMPT {
                self.open_delay(word)
            } else {
                self.backoff.delay(word.attempt())
            };
            open_time.max(PROBE_TIMEOUT_FLOOR)
        })
    }

    /// When the latest probe is superseded, or [`UNBOUNDED`].
    fn probe_deadline(&self, word: Word) -> i128 {
        // Acquire: pairs with the Release `fetch_max` made before taking a slot or the
        // transition into `HALF_OPEN`.
        let started = self.probe_started.load(Ordering::Acquire);
        deadline_after(started, self.probe_timeout(word))
    }

    /// Whether a closed success may return after one load (see `quiet_state`).
    #[inline]
    fn quiet_success(&self) -> bool {
        self.quiet_state == CLOSED
    }

    /// The fast path of `call`: for a closed breaker whose successes are quiet (see
    /// `quiet_success`), the state word's generation bits, `[generation: 32 | 0: 32]` (one
    /// load); `None` when the call needs the general path.
    #[inline]
    pub(crate) fn admit_quiet(&self) -> Option<u64> {
        // Acquire: as in `admit`.
        let word = Word(self.word.load(Ordering::Acquire));
        (word.state() == self.quiet_state).then_some(word.0 & GENERATION_BITS)
    }

    /// Records the outcome of a call admitted by [`admit_quiet`](Self::admit_quiet) with
    /// `tag` (its generation bits): a success with no failure streak of its generation to
    /// reset returns after one load; anything else is one cold call.
    #[inline]
    pub(crate) fn record_quiet(&self, tag: u64, outcome: Outcome) {
        if outcome == Outcome::Success {
            // Relaxed: as in `record_success`. `tag` is `[generation: 32 | 0: 32]`, so a
            // count at or below it is this generation's zero or an older generation's count
            // (`tagged_count` reads either as zero): no streak to reset, in one compare.
            // Above it is this generation's streak, a later generation's count (a transition
            // happened during the call) or, once in 2^32 generations, an older one read past
            // the wrap: the cold path sorts those out exactly (`record_success`).
            let failures = self.failures.load(Ordering::Relaxed);
            if failures <= tag {
                return;
            }
        }
        self.record_quiet_slow(tag, outcome);
    }

    #[cold]
    #[inline(never)]
    fn record_quiet_slow(&self, tag: u64, outcome: Outcome) {
        self.record_slow(Admission::closed_tagged(tag), outcome);
    }

    /// Admits or rejects a call (the fast path: a closed breaker admits with one load).
    #[inline]
    pub(crate) fn admit(&self) -> Result<Admission, Rejected> {
        // Acquire: pairs with the Release half of the transition CAS that stored this word,
        // so everything the transitioning thread did before it (clearing a window) happens
        // before this call's own records.
        let word = Word(self.word.load(Ordering::Acquire));
        if word.state() == CLOSED && self.plain {
            return Ok(Admission::new(word.generation(), false));
        }
        self.admit_slow(word)
    }

    #[cold]
    #[inline(never)]
    fn admit_slow(&self, word: Word) -> Result<Admission, Rejected> {
        match self.admit_from(word) {
            Ok(mut admission) => {
                if self.slow_call_nanos != 0 {
                    admission.started = self.clock.now_nanos();
                }
                if let Some(counters) = &self.counters {
                    counters.admitted();
                }
                Ok(admission)
            }
            Err(rejected) => {
                if let Some(counters) = &self.counters {
                    counters.rejected(rejected.reason());
                }
                self.listeners.rejected(&rejected);
                Err(rejected)
            }
        }
    }

    fn admit_from(&self, mut word: Word) -> Result<Admission, Rejected> {
        // Read the clock at most once, however often the loop retries.
        let mut now = None;
        loop {
            match word.state() {
                CLOSED => {
                    return Ok(Admission::new(word.generation(), false));
                }
                OPEN => {
                    let deadline = self.open_deadline(word);
                    if now.is_none() {
                        // The cheap check first: a coarse time that is still before the
                        // deadline by more than its lag proves that the precise one is.
                        // (The rejection's `retry_after` is then longer than exact by at
                        // most the lag, never shorter.)
                        let coarse = nanos_i64(self.clock.coarse_now_nanos());
                        if i128::from(coarse) + i128::from(self.coarse_lag) < deadline {
                            return Err(self.open_rejection(deadline, coarse));
                        }
                    }
                    let now = *now.get_or_insert_with(|| self.now());
                    if i128::from(now) < deadline {
                        return Err(self.open_rejection(deadline, now));
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
                        return Ok(Admission::new(word.generation(), true));
                    }
                    let now = *now.get_or_insert_with(|| self.now());
                    let deadline = self.probe_deadline(word);
                    if i128::from(now) < deadline {
                        return Err(Rejected::HalfOpenFull {
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
                                target: "keel_breaker",
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

    /// The rejection of an open breaker whose deadline is `deadline`, at `now`.
    fn open_rejection(&self, deadline: i128, now: i64) -> Rejected {
        // Relaxed: `opened_at` was already read with Acquire by `open_deadline`.
        let opened_at = self.opened_at.load(Ordering::Relaxed);
        Rejected::Open {
            retry_after: time_until(deadline, now),
            opened_ago: duration_from_nanos(i128::from(now) - i128::from(opened_at)),
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
    pub(crate) fn transition(&self, current: Word, next: Word) -> Result<(), Word> {
        let change = self.cas(current, next)?;
        if let Some(change) = change {
            self.emit(&[change]);
        }
        Ok(())
    }

    /// The one place the state word changes. On success, logs and counts the transition
    /// and returns its event (if the public state changed) for the caller to emit once it
    /// has finished every other change, so a panicking listener cannot interrupt one.
    pub(crate) fn cas(&self, current: Word, next: Word) -> Result<Option<Event>, Word> {
        // AcqRel on success: Release publishes what the winner wrote before (a raised
        // `opened_at`/`probe_started`, a cleared window) to every later Acquire load of the
        // word; Acquire makes the previous transition's writes visible to the winner.
        // Acquire on failure: the caller retries from the actual word and may read the data
        // it publishes.
        match self
            .word
            .compare_exchange(current.0, next.0, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) if current.state() != next.state() => Ok(Some(self.changed(current, next))),
            Ok(_) => Ok(None),
            Err(actual) => Err(Word(actual)),
        }
    }

    /// Records a change of public state that just happened: the time, the count, the
    /// log line, the exported gauge. Returns its event.
    #[cold]
    fn changed(&self, current: Word, next: Word) -> Event {
        // Relaxed: a statistic for `metrics()`; `fetch_max` so that a thread preempted
        // after its transition cannot move the time back past a newer one.
        self.entered_at.fetch_max(self.now(), Ordering::Relaxed);
        self.transitions.count(next.state());
        #[cfg(feature = "metrics")]
        if let Some(counters) = &self.counters {
            counters.export_state(next.state());
        }
        log_change(&self.name, current.state(), next.state())
    }

    #[inline]
    pub(crate) fn emit(&self, events: &[Event]) {
        self.listeners.emit(events);
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

    /// Records an outcome the caller classified: a quiet closed success (see
    /// [`record_success`](Self::record_success)) inline, anything else in one cold call.
    #[inline]
    pub(crate) fn record(&self, admission: Admission, outcome: Outcome) {
        if outcome == Outcome::Success && self.quiet_success() && !admission.probe() {
            // Relaxed: as in `record_success`.
            let failures = self.failures.load(Ordering::Relaxed);
            if tagged_count(failures, admission.generation()) == 0 {
                return;
            }
        }
        self.record_slow(admission, outcome);
    }

    #[cold]
    #[inline(never)]
    fn record_slow(&self, admission: Admission, outcome: Outcome) {
        match outcome {
            Outcome::Success => self.record_success_slow(admission),
            Outcome::Failure => self.record_failure(admission),
            Outcome::Ignored => self.record_ignored(admission),
        }
    }

    /// The hot half of recording a success: a closed call under the default policy with
    /// nobody listening returns after one load and a compare; everything else (a streak to
    /// reset, a listener to tell, counters, windows, probes) is one cold call.
    #[inline]
    pub(crate) fn record_success(&self, admission: Admission) {
        if self.quiet_success() && !admission.probe() {
            // Relaxed: the count publishes nothing. A count tagged with another generation
            // reads as zero, so a stale success never writes (and never leaves this path).
            let failures = self.failures.load(Ordering::Relaxed);
            if tagged_count(failures, admission.generation()) == 0 {
                return;
            }
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

    /// Whether a call admitted as `admission` has been running for at least the slow-call
    /// threshold (never, when slow calls are not tracked: then the clock is not read).
    fn is_slow(&self, admission: Admission) -> bool {
        self.slow_call_nanos != 0
            && self.clock.now_nanos().saturating_sub(admission.started) >= self.slow_call_nanos
    }

    #[cold]
    #[inline(never)]
    fn record_success_slow(&self, admission: Admission) {
        if self.is_slow(admission) {
            // A slow success counts as a failure for the policy (and as a slow call).
            if let Some(counters) = &self.counters {
                counters.slow();
            }
            self.record_failure_counted(admission, None).announce(self);
            return;
        }
        if let Some(counters) = &self.counters {
            counters.success();
        }
        if admission.probe() {
            self.probe_succeeded(admission.generation());
            return;
        }
        if let Tracker::Consecutive { .. } = self.tracker {
            // Relaxed: as in `record_success`.
            let failures = self.failures.load(Ordering::Relaxed);
            if tagged_count(failures, admission.generation()) != 0 {
                self.reset_streak(failures, admission.generation());
            }
            self.announce_success(admission.generation());
            return;
        }
        if self.current(admission.generation()).is_none()
            || self
                .record_in_window(admission.generation(), false)
                .is_none()
        {
            return;
        }
        self.emit(&[Event::Success]);
    }

    #[cold]
    #[inline(never)]
    pub(crate) fn record_failure(&self, admission: Admission) {
        self.record_failure_holding(admission, None);
    }

    /// Records a failure; with `hold` (an upstream's "come back after"), an opening it
    /// causes lasts at least that long, set in the same compare-and-swap that opens, so no
    /// caller can take a probe between the opening and the hold. Then, for an opening made
    /// by another call (or one whose hold a racing opening overwrote), [`hold_open`]
    /// extends an open breaker to at least `hold` from now.
    ///
    /// [`hold_open`]: Self::hold_open
    #[cold]
    #[inline(never)]
    pub(crate) fn record_failure_holding(&self, admission: Admission, hold: Option<Duration>) {
        // Only counted: a slow failure is a failure either way.
        if let Some(counters) = &self.counters
            && self.is_slow(admission)
        {
            counters.slow();
        }
        let failed = self.record_failure_counted(admission, hold);
        // Unless this call opened (with its hold), extend whatever opening there is;
        // before announcing, so a panicking listener cannot skip it.
        if let Some(wait) = hold
            && !matches!(failed, Failed::Opened(_))
        {
            self.hold_open(wait);
        }
        failed.announce(self);
    }

    /// Counts a failure and opens if it trips; returns what to announce.
    fn record_failure_counted(&self, admission: Admission, hold: Option<Duration>) -> Failed {
        if let Some(counters) = &self.counters {
            counters.failure();
        }
        if admission.probe() {
            return self.probe_failed(admission.generation(), hold);
        }
        let generation = admission.generation();
        if self.current(generation).is_none() {
            return Failed::Stale;
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
                        return Failed::Stale;
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
                    return Failed::Stale;
                };
                (word, count >= *threshold)
            }
            _ => match self.record_in_window(generation, true) {
                Some(decision) => decision,
                None => return Failed::Stale,
            },
        };
        // Open first, announce after: a panicking listener must not skip the opening.
        Failed::from_opening(if trip { self.open(word, hold) } else { None })
    }

    /// A call whose outcome the classifier ignored: nothing counts, a probe slot is freed.
    #[cold]
    fn record_ignored(&self, admission: Admission) {
        if let Some(counters) = &self.counters {
            counters.ignored();
        }
        if admission.probe() {
            let _ = self.free_slot(admission.generation(), false);
        }
    }

    /// Opens from `word` (closed or half-open) unless another transition got there first;
    /// returns the state change to announce. With `hold` longer than the backoff's delay,
    /// the opening's open time is `hold` instead (a manual open time, as `hold_open`
    /// would set, but in the opening's own CAS).
    fn open(&self, word: Word, hold: Option<Duration>) -> Option<Event> {
        let now = self.now();
        // Re-check right before raising `opened_at`: a thread that was preempted since it
        // read `word` must not push a newer opening's deadline later.
        if self.current(word.generation()) != Some(word) {
            return None;
        }
        let mut next = word.next(OPEN).with_attempt(next_attempt(word));
        if let Some(wait) = hold
            && self.open_delay(next) < wait
        {
            // Relaxed: published by the CAS below, as in `trip`. An opening racing this
            // one may overwrite it before its own CAS fails; `record_failure_holding`
            // then extends the hold again once this CAS is done.
            self.manual_delay.store(held_nanos(wait), Ordering::Relaxed);
            next = next.with_attempt(MANUAL_ATTEMPT);
        }
        // Release, before the CAS: pairs with `open_deadline`'s Acquire.
        self.opened_at.fetch_max(now, Ordering::Release);
        self.cas(word, next).ok().flatten()
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

    /// Reopens after a failed probe of `generation`; returns what to announce.
    fn probe_failed(&self, generation: u32, hold: Option<Duration>) -> Failed {
        match self.current(generation) {
            Some(word) if word.state() == HALF_OPEN => Failed::from_opening(self.open(word, hold)),
            _ => Failed::Stale,
        }
    }

    #[cold]
    #[inline(never)]
    pub(crate) fn cancel(&self, admission: Admission) {
        if let Some(counters) = &self.counters {
            counters.cancelled();
        }
        if admission.probe() {
            let _ = self.free_slot(admission.generation(), false);
        }
    }

    /// Records a classified outcome; a failure the classifier says came with a "come back
    /// after" (an HTTP `Retry-After`) holds the breaker open at least that long (see
    /// [`record_failure_holding`](Self::record_failure_holding)).
    #[inline]
    pub(crate) fn record_classified<T, E>(
        &self,
        admission: Admission,
        outcome: Outcome,
        classifier: &impl crate::Classify<T, E>,
        result: &Result<T, E>,
    ) {
        if outcome == Outcome::Failure
            && let Some(wait) = classifier.retry_after(result)
        {
            self.record_failure_holding(admission, Some(wait));
            return;
        }
        self.record(admission, outcome);
    }

    /// Keeps an open breaker open for at least `wait` from now: a new generation of the
    /// same state (no event, not counted as manual) whose open time is the manual one.
    /// Does nothing unless the breaker is open with less than `wait` left, or if another
    /// transition gets there first.
    #[cold]
    fn hold_open(&self, wait: Duration) {
        let word = self.load();
        if word.state() != OPEN {
            return;
        }
        let now = self.now();
        if time_until(self.open_deadline(word), now) >= wait {
            return;
        }
        // Relaxed: published by the CAS below, as in `trip`.
        self.manual_delay.store(held_nanos(wait), Ordering::Relaxed);
        // Release, before the CAS: pairs with `open_deadline`'s Acquire.
        self.opened_at.fetch_max(now, Ordering::Release);
        let _ = self.cas(word, word.next(OPEN).with_attempt(MANUAL_ATTEMPT));
    }

    /// Closes an open or half-open breaker by hand; returns whether it did.
    pub(crate) fn close(&self) -> bool {
        // Acquire: as in `cas`'s failure ordering.
        let mut word = Word(self.word.load(Ordering::Acquire));
        loop {
            if !matches!(word.state(), OPEN | HALF_OPEN) {
                return false;
            }
            // As in `probe_succeeded`: the new closed generation records into an empty window.
            self.tracker.clear();
            match self.cas(word, word.next(CLOSED).with_attempt(0)) {
                Ok(change) => {
                    self.transitions.count_manual();
                    if let Some(change) = change {
                        self.emit(&[change]);
                    }
                    return true;
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// Opens by hand: for the backoff's open time (`None`) or for `manual`; returns
    /// whether it did (an isolated breaker stays isolated).
    pub(crate) fn trip(&self, manual: Option<Duration>) -> bool {
        // Acquire: as in `cas`'s failure ordering.
        let mut word = Word(self.word.load(Ordering::Acquire));
        loop {
            if word.state() == ISOLATED {
                return false;
            }
            let attempt = match manual {
                Some(delay) => {
                    // Relaxed: published by the CAS below (Release). Two racing
                    // `open_for` calls may each see the other's duration; one of the
                    // two applies.
                    let nanos = if delay == Duration::MAX {
                        u64::MAX
                    } else {
                        u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX - 1)
                    };
                    self.manual_delay.store(nanos, Ordering::Relaxed);
                    MANUAL_ATTEMPT
                }
                None => match word.state() {
                    OPEN if word.attempt() != MANUAL_ATTEMPT => word.attempt(),
                    OPEN | CLOSED => 0,
                    _ => next_attempt(word),
                },
            };
            // Release, before the CAS: pairs with `open_deadline`'s Acquire.
            self.opened_at.fetch_max(self.now(), Ordering::Release);
            match self.cas(word, word.next(OPEN).with_attempt(attempt)) {
                Ok(change) => {
                    self.transitions.count_manual();
                    if let Some(change) = change {
                        self.emit(&[change]);
                    }
                    return true;
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// The current public state and the generation's data, read for `metrics()` and
    /// `saved_state()`.
    pub(crate) fn load(&self) -> Word {
        // Acquire: pairs with the transition's Release so `opened_at` is the opening's.
        Word(self.word.load(Ordering::Acquire))
    }

    /// The current public state, for display.
    pub(crate) fn state(&self) -> crate::State {
        // Relaxed: a snapshot of the state for display; nothing is read based on it.
        public_state(Word(self.word.load(Ordering::Relaxed)).state())
    }
}

/// What recording a failure leaves to announce, once every state change is made.
enum Failed {
    /// A stale result: nothing.
    Stale,
    /// A failure that did not open (or whose opening lost to another transition).
    Counted,
    /// A failure, and the opening this call made (an opening always changes the state).
    Opened(Event),
}

impl Failed {
    fn from_opening(change: Option<Event>) -> Failed {
        change.map_or(Failed::Counted, Failed::Opened)
    }

    fn announce(self, inner: &Inner) {
        match self {
            Failed::Stale => {}
            Failed::Counted => inner.emit(&[Event::Failure]),
            Failed::Opened(change) => inner.emit(&[Event::Failure, change]),
        }
    }
}

/// A hold's open time as `manual_delay` nanoseconds: saturating one short of `u64::MAX`
/// (which would mean "until closed by hand"), so even an absurd hold ends.
fn held_nanos(wait: Duration) -> u64 {
    u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX - 1)
}

/// The attempt after a failed probe of `word` (or a policy trip while closed): automatic
/// attempts count up to one short of [`MANUAL_ATTEMPT`]; a probe failing after a manual
/// opening starts the backoff from its first delay.
fn next_attempt(word: Word) -> u8 {
    match (word.state(), word.attempt()) {
        (HALF_OPEN, MANUAL_ATTEMPT) | (CLOSED, _) => 0,
        (HALF_OPEN, attempt) => attempt.saturating_add(1).min(MANUAL_ATTEMPT - 1),
        (_, attempt) => attempt,
    }
}
