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
//! use breaker::{BreakerError, CircuitBreaker, Policy};
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
//!   once**; everyone else is rejected at once, never queued.
//! - **A probe always comes back.** Dropping a permit (or the future of
//!   [`execute`](CircuitBreaker::execute)) cancels it and frees its slot; a probe running
//!   longer than [`probe_timeout`](Builder::probe_timeout) is superseded by the next caller
//!   (no timer thread); a probe that panics counts as a failure and the panic continues.
//! - **Stale results never change state.** Every admitted call remembers the generation of
//!   the state word it was admitted in; results from an older generation are ignored.
//! - Invalid configuration is a [`ConfigError`] from [`Builder::build`]; nothing in the
//!   crate panics except to resume a guarded call's own panic. `Duration::MAX` is a valid
//!   open time.
//! - Time comes from a [`Clock`] (monotonic by default, [`ManualClock`] in tests); deadlines
//!   are nanoseconds since the clock's origin, so wall-clock jumps never matter.
//!
//! # Events and logging
//!
//! Listeners ([`Builder::on_event`], `on_state_change`, `on_break`, `on_reset`,
//! `on_half_open`, `on_success`, `on_failure`) receive exactly one
//! [`Event::StateChange`] per transition, called by the thread that won the transition after
//! its compare-and-swap, with no lock held (there are none), so a listener may call back
//! into the breaker. Listeners of transitions made by different threads may run in either
//! order. With no listener, the hot path pays one pointer check. Events are emitted only
//! after every change to the breaker's state is complete (the slot freed, the transition
//! made), so a panicking listener cannot leave the breaker half-changed; its panic reaches
//! the caller after all listeners have been called, and is dropped if the caller is
//! already unwinding from a guarded operation's panic.
//!
//! Every transition is also a `tracing` event at `INFO` level, target `breaker`, with fields
//! `name`, `from` and `to`, whose message is `[CircuitBreaker:{name}] State: {state}` (the
//! line Cockatiel-based services print), e.g. `[CircuitBreaker:inventory-api] State: Open`.
//!
//! # Cost
//!
//! A successful call while `Closed` under the default policy does two atomic loads (the
//! state word, the failure count) and no read-modify-write, lock, clock read or
//! allocation. Only the first success after a failure streak does more: one
//! compare-and-swap to reset the streak (a CAS, not a store, so that a success whose
//! generation just ended cannot erase a newer generation's count). A rejection while
//! `Open` reads the clock once and allocates nothing. The window policies cost more per call;
//! see [`Policy`].
//!
//! # Feature flags
//!
//! - `serde`: `Serialize`/`Deserialize` for [`Snapshot`] and [`State`], to save a breaker's
//!   state ([`CircuitBreaker::snapshot`]) and start a new breaker from it
//!   ([`Builder::initial_state`]), like Cockatiel's `toJSON()`/`initialState`.
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
//! - Under concurrency, "consecutive" failures of one generation are counted best-effort:
//!   a success's reset may erase a racing failure, never add one, so the breaker errs
//!   towards closed.
//!
//! The atomics come from `src/sync.rs` so that the loom models in `tests/loom.rs` check the
//! shipped code: two threads tripping at once, callers racing for half-open slots, a stale
//! result racing a transition, stale results racing an isolate/release (failure and
//! success counts), and isolation reference counts.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
mod breaker;
mod builder;
mod classify;
mod clock;
mod error;
mod isolation;
mod listeners;
mod machine;
mod metrics;
mod permit;
mod policy;
mod state;
mod sync;

pub use crate::{
    backoff::Backoff,
    breaker::CircuitBreaker,
    builder::{Builder, SavedState},
    classify::{AllErrors, Classify, ErrorPredicate, Outcome},
    clock::{Clock, ManualClock, MonotonicClock},
    error::{BreakerError, ConfigError, RejectReason, Rejected},
    isolation::IsolationGuard,
    metrics::{Metrics, TransitionCounts},
    permit::{Classified, Permit},
    policy::Policy,
    state::{Event, State},
};
