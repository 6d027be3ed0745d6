//! A lock-free circuit breaker that never gets stuck, never trusts a stale result, and
//! costs about a nanosecond when closed.
//!
//! (full docs below)

mod backoff;
mod breaker;
mod clock;
mod error;
mod policy;
mod state;
mod sync;

pub use crate::{
    backoff::Backoff,
    breaker::{Builder, CircuitBreaker, Classified, IsolationGuard, Permit, Snapshot},
    clock::{Clock, ManualClock, MonotonicClock},
    error::{BreakerError, ConfigError, Rejected},
    policy::Policy,
    state::{Event, State},
};
