//! A lock-free circuit breaker that never gets stuck, never trusts a stale result, and
//! costs about a nanosecond when closed.
//!
//! A [`CircuitBreaker`] guards calls to a flaky dependency. While it is
//! [`Closed`](State::Closed), calls go through and a [`Policy`] counts their outcomes; when
//! the policy trips, the breaker opens and rejects calls immediately (with the time until it
//! will probe again); after [`half_open_after`](Builder::half_open_after) it lets a limited
//! number of probes through, and their outcome closes or reopens it. An
//! [`IsolationGuard`] holds it open by hand. This is the model of Cockatiel's
//! `circuitBreaker(handleAll, { halfOpenAfter, breaker: new ConsecutiveBreaker(n) })`.
//!
//! It is runtime-agnostic: [`execute`](CircuitBreaker::execute) takes any future and the
//! crate depends on no async runtime.
//!
//! # Example
//!
//! ```
//! use keel_breaker::{BreakerError, CircuitBreaker, Policy};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let breaker = CircuitBreaker::builder("inventory-api")
//!     .policy(Policy::consecutive_failures(5))
//!     .half_open_after(Duration::from_secs(30))
//!     .on_break(|| eprintln!("inventory-api is down; failing fast"))
//!     .build()?;
//!
//! match breaker.execute(|| async { fetch_stock("sku-42").await }).await {
//!     Ok(stock) => println!("{stock} in stock"),
//!     Err(BreakerError::Inner(error)) => println!("the call failed: {error}"),
//!     Err(BreakerError::Isolated) => println!("switched off for maintenance"),
//!     Err(rejected) => println!("try again in {:?}", rejected.retry_after()),
//! }
//! # Ok(())
//! # }
//! # async fn fetch_stock(_sku: &str) -> Result<u32, std::io::Error> { Ok(3) }
//! ```
//!
//! # Behaviour
//!
//! - **Half-open admits exactly [`half_open_trials`](Builder::half_open_trials) calls at
//!   once**, whatever the configuration (the default probe timeout is at least one second,
//!   even with a zero open time); everyone else is rejected at once, never queued.
//! - **A probe always comes back.** Dropping a permit (or the future of
//!   [`execute`](CircuitBreaker::execute)) cancels it and frees its slot; a probe running
//!   longer than [`probe_timeout`](Builder::probe_timeout) is superseded by the next caller
//!   (no timer thread); a probe that panics counts as a failure and the panic continues.
//! - **Stale results never change state.** Every admitted call remembers the generation of
//!   the state word it was admitted in; results from an older generation are ignored.
//! - **Results, not only errors, are classified**: a [`Classify`] (any
//!   `Fn(&Result<T, E>) -> Outcome`) says whether a call succeeded, failed or is
//!   [ignored](Outcome::Ignored), for [`call`](CircuitBreaker::call),
//!   [`execute`](CircuitBreaker::execute) (through [`classify`](CircuitBreaker::classify))
//!   and [`Permit::record`]. Opt-in [slow calls](Builder::slow_call_threshold) count as
//!   failures.
//! - **Operators can step in**: [`close`](CircuitBreaker::close),
//!   [`trip`](CircuitBreaker::trip), [`open_for`](CircuitBreaker::open_for) and the
//!   [`isolate`](CircuitBreaker::isolate) guards; [`metrics`](CircuitBreaker::metrics)
//!   reports what happened; every rejection says why ([`RejectReason`]) and, while open,
//!   since when.
//! - Invalid configuration is a [`ConfigError`] from [`Builder::build`]; nothing in the
//!   crate panics except to resume a guarded call's own panic (a future polled after it
//!   completed stays `Pending`). `Duration::MAX` is a valid open time. Policy choices
//!   that differ between peers (a window decides only on failures; any probe failure
//!   reopens; `min_calls` of zero is an error) are listed on [`Builder`].
//! - Time comes from a [`Clock`] (monotonic by default, [`ManualClock`] in tests); deadlines
//!   are nanoseconds since the clock's origin, so wall-clock jumps never matter.
//!
//! # Events and logging
//!
//! Listeners ([`Builder::on_event`], `on_state_change`, `on_break`, `on_reset`,
//! `on_half_open`, `on_success`, `on_failure`; and [`Builder::on_rejected`] for
//! rejections, with their reason) receive exactly one
//! [`Event::StateChange`] per transition, called by the thread that won the transition after
//! its compare-and-swap, with no lock held (there are none), so a listener may call back
//! into the breaker. Listeners of transitions made by different threads may run in either
//! order. With no listener, the hot path pays one pointer check. Events are emitted only
//! after every change to the breaker's state is complete (the slot freed, the transition
//! made), so a panicking listener (or classifier) cannot leave the breaker half-changed;
//! its panic reaches the caller after all listeners have been called, and is dropped if
//! the caller is already unwinding from a guarded operation's panic: the operation's own
//! panic always wins, in `call` and in `execute`.
//!
//! Every transition is also a `tracing` event at `INFO` level, target `breaker`, with fields
//! `name`, `from` and `to`, whose message is `[CircuitBreaker:{name}] State: {state}` (the
//! line Cockatiel-based services print), e.g. `[CircuitBreaker:inventory-api] State: Open`.
//!
//! # Cost
//!
//! A successful call while `Closed` under the default policy does two atomic loads (the
//! state word, the failure count) and no read-modify-write, lock, clock read or
//! allocation; the fields it reads share one cache line, and not the line of the `Arc`'s
//! reference counts (which every clone writes). With no event listener,
//! [`call`](CircuitBreaker::call) does all of it inline, a handful of instructions around
//! the operation, with every other case (a rejection, a failure, a streak to reset, a
//! listener to tell, counters, windows) one out-of-line call. Only the first success after
//! a failure streak does more: one compare-and-swap to reset the streak (a CAS, not a
//! store, so that a success whose generation just ended cannot erase a newer generation's
//! count).
//! A rejection while `Open` allocates nothing and reads the clock's cheap
//! [coarse reading](Clock::coarse_now_nanos) (on Linux `CLOCK_MONOTONIC_COARSE`, a few
//! nanoseconds), the precise clock only within the coarse clock's lag of the deadline; its
//! `retry_after` may then be longer than exact by up to that lag (one kernel tick), never
//! shorter. The window policies cost more per call; see [`Policy`].
//!
//! What the opt-in features cost per call, and only when configured:
//! [`count_calls`](Builder::count_calls) one relaxed `fetch_add` per admission, outcome and
//! rejection (and the closed path leaves its fast path); a
//! [slow-call threshold](Builder::slow_call_threshold) two clock reads; a rejection
//! listener one call per rejection. Without them, each is one pointer or flag check.
//! [`metrics()`](CircuitBreaker::metrics) itself costs the reader a few loads and a clock
//! read, and the calls nothing; transitions are always counted (they are rare).
//! `cargo xtask bench` measures the closed path with metrics on (rows named `metrics`).
//!
//! # Feature flags
//!
//! - `serde`: `Serialize`/`Deserialize` for [`SavedState`] and [`State`], to save a
//!   breaker's state ([`CircuitBreaker::saved_state`]) and start a new breaker from it
//!   ([`Builder::initial_state`]), like Cockatiel's `toJSON()`/`initialState`.
//! - `metrics`: exports the [`count_calls`](Builder::count_calls) counts, the state and the
//!   transitions through the [`metrics`](https://docs.rs/metrics) facade, so whatever
//!   exporter the service installed (Prometheus, OTLP, `StatsD`) reports them: counters
//!   `breaker_admitted_total`, `breaker_calls_total{outcome}` (`success`, `failure`,
//!   `ignored`, `cancelled`), `breaker_slow_calls_total`,
//!   `breaker_rejections_total{reason}` (`open`, `half_open_full`, `isolated`),
//!   `breaker_transitions_total{to}`, and the gauge `breaker_state` (0 closed, 1 open,
//!   2 half-open, 3 isolated), each labelled `breaker` with the breaker's name. The
//!   handles are registered with the recorder installed when the breaker is built.
//! - `tower`: `BreakerLayer` and `BreakerService`, the breaker as tower middleware
//!   with a named, unboxed `ResponseFuture` and the classifier of your choice (depends on
//!   `tower-service` and `tower-layer` only).
//! - `http`: `HttpStatus`, a classifier for `http::Response` (5xx and 429 are
//!   failures), and `rejection_response`, a `503` with `Retry-After` for a rejection.
//!
//! # Atomic orderings
//!
//! What a caller may rely on:
//!
//! - Each transition is one compare-and-swap on the state word (`AcqRel`), so exactly one
//!   thread performs it and announces it. Anything a listener observes about the breaker
//!   is at least as new as the transition it is told about.
//! - A call admitted after a transition (its `Acquire` load read the new word) sees
//!   everything the transitioning thread wrote before it: the raised open time, the new
//!   probe start, a cleared failure window.
//! - The deadlines (`opened_at`, `probe_started`) are only ever raised with `fetch_max`
//!   (`Release`), *before* the compare-and-swap that makes them matter, so a thread that sees
//!   `Open` or a taken probe slot never reads an older deadline. They may be later than
//!   exact by the time a thread was preempted between reading the clock and raising them,
//!   never earlier: the breaker errs towards staying open.
//! - Counters that publish no other data (the failure count, the probe slots) use
//!   `Relaxed`: their compare-and-swap loops keep them exact, and the decisions based on
//!   them are validated by the state word's compare-and-swap, which checks the generation.
//! - Stale results never touch a newer generation's counts. The failure count is tagged
//!   with its generation: a failure's CAS loop gives up when it finds a newer tag, and a
//!   success resets the streak only with a CAS from a count tagged with its own generation.
//!   A window sample is re-checked against the generation after it is recorded (the slot
//!   or bucket write is `Acquire`, the window's clearing `Release`, so a sample landing in
//!   a window already cleared for a newer generation sees that generation) and taken back
//!   if stale; only then is `Event::Failure`/`Event::Success` emitted. Taking back is exact
//!   unless the slot was cleared and rewritten meanwhile; then one newer sample of the
//!   same kind is taken instead.
//! - Statistics (the [`Metrics`] counts, the time the state last changed) are `Relaxed`:
//!   each count is exact, but counts read together may disagree by the calls in flight.
//!   The duration of a manual [`open_for`](CircuitBreaker::open_for) is stored before the
//!   CAS that opens, which publishes it; two racing `open_for` calls apply one of the two.
//! - Under concurrency, "consecutive" failures of one generation are counted best-effort:
//!   a success's reset may erase a racing failure, never add one, so the breaker errs
//!   towards closed.
//!
//! The atomics come from `src/sync.rs` so that the loom models in `tests/loom.rs` check the
//! shipped code: two threads tripping at once, callers racing for half-open slots, a stale
//! result racing a transition, stale results racing an isolate/release (failure and
//! success counts), isolation reference counts, and manual `close`/`open_for` racing the
//! automatic transitions.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
mod breaker;
mod builder;
mod classify;
mod clock;
mod error;
#[cfg(feature = "http")]
mod http;
mod isolation;
mod listeners;
mod machine;
mod metrics;
mod permit;
mod policy;
mod state;
mod sync;
#[cfg(feature = "tower")]
mod tower;

pub use crate::{
    backoff::Backoff,
    breaker::CircuitBreaker,
    builder::{Builder, SavedState},
    classify::{AllErrors, Classify, ClassifyRef, ErrorPredicate, Outcome},
    clock::{Clock, ManualClock, MonotonicClock},
    error::{BreakerError, ConfigError, RejectReason, Rejected},
    isolation::IsolationGuard,
    metrics::{Metrics, TransitionCounts},
    permit::{Classified, Execute, Permit},
    policy::Policy,
    state::{Event, State},
};

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use crate::tower::{BreakerLayer, BreakerService, ResponseFuture};

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use crate::http::{HttpStatus, rejection_response};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
