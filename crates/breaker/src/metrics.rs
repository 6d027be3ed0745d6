//! What operators read: the [`Metrics`] value, the counters behind it, and (feature
//! `metrics`) their export through the `metrics` crate facade.

use std::time::Duration;

use crate::{
    RejectReason, State,
    state::{CLOSED, HALF_OPEN, ISOLATED, OPEN},
    sync::{AtomicU64, Ordering},
};

/// A breaker's figures at one moment; see [`CircuitBreaker::metrics`](crate::CircuitBreaker::metrics).
///
/// The per-call counts (everything but the state, the transitions and the window) are kept
/// only when the breaker was built with [`Builder::count_calls`](crate::Builder::count_calls)
/// (see there for their cost); otherwise they read zero and `counting_calls` is `false`.
/// Counts are since the breaker was built, and each is exact, but they are read one after
/// the other while calls run, so two counts may disagree by the calls in flight.
///
/// # Examples
///
/// ```
/// use keel_breaker::{CircuitBreaker, State};
///
/// let breaker = CircuitBreaker::builder("api").count_calls().build()?;
/// let _ = breaker.call(|| Ok::<_, ()>(()));
/// let _ = breaker.call(|| Err::<(), _>("503"));
/// let metrics = breaker.metrics();
/// assert_eq!(metrics.state, State::Closed);
/// assert_eq!((metrics.admitted, metrics.successes, metrics.failures), (2, 1, 1));
/// # Ok::<(), keel_breaker::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Metrics {
    /// The current state.
    pub state: State,
    /// How long the breaker has been in `state` (since it was built, if it never changed).
    pub in_state_for: Duration,
    /// Whether the per-call counts below are kept.
    pub counting_calls: bool,
    /// Calls admitted (closed calls and probes).
    pub admitted: u64,
    /// Outcomes reported as successes (slow successes count as failures instead).
    pub successes: u64,
    /// Outcomes reported as failures, panics and slow successes included.
    pub failures: u64,
    /// Outcomes the classifier ignored ([`Outcome::Ignored`](crate::Outcome::Ignored)).
    pub ignored: u64,
    /// Admitted calls cancelled: a permit or an `execute` future dropped unfinished.
    pub cancelled: u64,
    /// Calls that took at least the [slow-call threshold](crate::Builder::slow_call_threshold).
    pub slow_calls: u64,
    /// Rejections while open.
    pub rejected_open: u64,
    /// Rejections while half-open with every probe slot taken.
    pub rejected_half_open_full: u64,
    /// Rejections while isolated.
    pub rejected_isolated: u64,
    /// Transitions since the breaker was built, by the state they entered.
    pub transitions: TransitionCounts,
    /// The consecutive failures counted so far (consecutive-failures policy; else 0).
    pub consecutive_failures: u32,
    /// The calls the current window holds (window policies; else 0).
    pub window_calls: u64,
    /// The share of failures among `window_calls` (0.0 for an empty window).
    pub window_failure_ratio: f64,
}

/// How many transitions entered each state; part of [`Metrics`].
///
/// # Examples
///
/// ```
/// use keel_breaker::CircuitBreaker;
///
/// let breaker = CircuitBreaker::builder("api").build()?;
/// breaker.trip();
/// breaker.close();
/// let transitions = breaker.metrics().transitions;
/// assert_eq!((transitions.to_open, transitions.to_closed, transitions.manual), (1, 1, 2));
/// # Ok::<(), keel_breaker::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TransitionCounts {
    /// Into `Closed`.
    pub to_closed: u64,
    /// Into `Open`.
    pub to_open: u64,
    /// Into `HalfOpen`.
    pub to_half_open: u64,
    /// Into `Isolated`.
    pub to_isolated: u64,
    /// Made by hand: [`close`](crate::CircuitBreaker::close),
    /// [`trip`](crate::CircuitBreaker::trip), [`open_for`](crate::CircuitBreaker::open_for)
    /// (also counted by the state they entered).
    pub manual: u64,
}

/// Transition counts, always kept: transitions are rare, and each already costs a CAS.
#[derive(Debug, Default)]
pub(crate) struct Transitions {
    into: [AtomicU64; 4],
    manual: AtomicU64,
}

impl Transitions {
    pub(crate) fn count(&self, state: u8) {
        // Relaxed: statistics, publishing nothing.
        self.into[usize::from(state & 3)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_manual(&self) {
        // Relaxed: as in `count`.
        self.manual.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> TransitionCounts {
        // Relaxed: as in `count`.
        let into = |state: u8| self.into[usize::from(state)].load(Ordering::Relaxed);
        TransitionCounts {
            to_closed: into(CLOSED),
            to_open: into(OPEN),
            to_half_open: into(HALF_OPEN),
            to_isolated: into(ISOLATED),
            manual: self.manual.load(Ordering::Relaxed),
        }
    }
}

const ADMITTED: usize = 0;
const SUCCESSES: usize = 1;
const FAILURES: usize = 2;
const IGNORED: usize = 3;
const CANCELLED: usize = 4;
const SLOW: usize = 5;
const REJECTED_OPEN: usize = 6;
const REJECTED_HALF_OPEN_FULL: usize = 7;
const REJECTED_ISOLATED: usize = 8;
const COUNTS: usize = 9;

/// How many copies of the counts a breaker keeps (a power of two; see [`Counters`]).
#[cfg(not(loom))]
const STRIPES: usize = 16;
/// One under the loom models, so every modelled thread shares the stripe: two real threads
/// may too (the stripe is a hash), and the models check that each add is still atomic.
#[cfg(loom)]
const STRIPES: usize = 1;

/// One copy of the counts, alone on its cache lines (72 bytes, padded to two lines so the
/// adjacent-line prefetcher does not pair it with its neighbour).
#[repr(align(128))]
#[derive(Default)]
struct Stripe {
    counts: [AtomicU64; COUNTS],
}

/// The per-call counts, kept only with `count_calls`: each is one `fetch_add` per call.
///
/// Striped, as Java's `LongAdder` is: each thread adds to one of [`STRIPES`] copies, chosen
/// by its thread-local storage's address, and a read sums them all. Threads calling one
/// breaker at once then mostly write their own cache lines rather than passing one line
/// back and forth on every call (that cost the 2-thread closed path about 60 ns a call).
/// Each count stays exact: every add is a `fetch_add` on some stripe, and a read sees each
/// stripe's adds so far.
pub(crate) struct Counters {
    stripes: Box<[Stripe; STRIPES]>,
    #[cfg(feature = "metrics")]
    facade: facade::Facade,
}

/// The stripe of the calling thread: a hash of the address of one of its thread-locals
/// (threads' thread-local blocks sit at different addresses, often a multiple of the page
/// size apart, so the hash takes the product's top bits). No atomic and no lazy
/// initialisation: the address of a `const` thread-local is one instruction.
#[inline]
fn stripe() -> usize {
    std::thread_local! {
        static ANCHOR: u8 = const { 0 };
    }
    if STRIPES == 1 {
        return 0;
    }
    let address = ANCHOR.with(|anchor| std::ptr::from_ref(anchor).addr()) as u64;
    // The top log2(STRIPES) bits of a Fibonacci hash, so below STRIPES: nothing truncates.
    #[allow(clippy::cast_possible_truncation)]
    let stripe =
        (address.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - STRIPES.trailing_zeros())) as usize;
    stripe
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

impl Counters {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(name: &str) -> Counters {
        Counters {
            stripes: Box::default(),
            #[cfg(feature = "metrics")]
            facade: facade::Facade::new(name),
        }
    }

    #[inline]
    fn add(&self, which: usize) {
        // Relaxed: statistics, publishing nothing; each count is exact on its own.
        self.stripes[stripe()].counts[which].fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.facade.counts[which].increment(1);
    }

    pub(crate) fn admitted(&self) {
        self.add(ADMITTED);
    }

    pub(crate) fn success(&self) {
        self.add(SUCCESSES);
    }

    pub(crate) fn failure(&self) {
        self.add(FAILURES);
    }

    pub(crate) fn ignored(&self) {
        self.add(IGNORED);
    }

    pub(crate) fn cancelled(&self) {
        self.add(CANCELLED);
    }

    pub(crate) fn slow(&self) {
        self.add(SLOW);
    }

    pub(crate) fn rejected(&self, reason: RejectReason) {
        self.add(match reason {
            RejectReason::HalfOpenFull => REJECTED_HALF_OPEN_FULL,
            RejectReason::Isolated => REJECTED_ISOLATED,
            _ => REJECTED_OPEN,
        });
    }

    /// Exports a transition into `state`: the state gauge and the transition count.
    #[cfg(feature = "metrics")]
    pub(crate) fn export_state(&self, state: u8) {
        self.facade.state.set(f64::from(state));
        self.facade.transitions[usize::from(state & 3)].increment(1);
    }

    /// Fills the per-call fields of `metrics`.
    pub(crate) fn read_into(&self, metrics: &mut Metrics) {
        // Relaxed: as in `add`.
        let count = |which: usize| {
            self.stripes
                .iter()
                .map(|stripe| stripe.counts[which].load(Ordering::Relaxed))
                .fold(0_u64, u64::wrapping_add)
        };
        metrics.counting_calls = true;
        metrics.admitted = count(ADMITTED);
        metrics.successes = count(SUCCESSES);
        metrics.failures = count(FAILURES);
        metrics.ignored = count(IGNORED);
        metrics.cancelled = count(CANCELLED);
        metrics.slow_calls = count(SLOW);
        metrics.rejected_open = count(REJECTED_OPEN);
        metrics.rejected_half_open_full = count(REJECTED_HALF_OPEN_FULL);
        metrics.rejected_isolated = count(REJECTED_ISOLATED);
    }
}

#[cfg(feature = "metrics")]
mod facade {
    //! The `metrics` facade handles, registered once at build time with whatever recorder
    //! is installed then; incrementing a handle is the recorder's own atomic add.

    use metrics::{Counter, Gauge, counter, gauge};

    use super::COUNTS;

    pub(super) struct Facade {
        pub(super) counts: [Counter; COUNTS],
        pub(super) state: Gauge,
        pub(super) transitions: [Counter; 4],
    }

    impl Facade {
        pub(super) fn new(name: &str) -> Facade {
            let name = name.to_owned();
            let calls = |outcome: &'static str| counter!("breaker_calls_total", "breaker" => name.clone(), "outcome" => outcome);
            let rejections = |reason: &'static str| counter!("breaker_rejections_total", "breaker" => name.clone(), "reason" => reason);
            Facade {
                counts: [
                    counter!("breaker_admitted_total", "breaker" => name.clone()),
                    calls("success"),
                    calls("failure"),
                    calls("ignored"),
                    calls("cancelled"),
                    counter!("breaker_slow_calls_total", "breaker" => name.clone()),
                    rejections("open"),
                    rejections("half_open_full"),
                    rejections("isolated"),
                ],
                state: gauge!("breaker_state", "breaker" => name.clone()),
                transitions: ["closed", "open", "half_open", "isolated"].map(|to| {
                    counter!("breaker_transitions_total", "breaker" => name.clone(), "to" => to)
                }),
            }
        }
    }
}
