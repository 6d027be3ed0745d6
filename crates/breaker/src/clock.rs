//! Time sources: the monotonic default and a manual clock for tests.

use std::{fmt, time::Duration};

use crate::sync::{Arc, AtomicU64, Ordering};

/// A monotonic source of time for one breaker.
///
/// A clock reports nanoseconds since its own origin. The breaker stores every deadline in
/// that unit, so only the clock's differences matter: a wall-clock jump (NTP, a suspended
/// laptop, a user changing the date) can never make a deadline fire early or late, as long
/// as the clock itself is monotonic.
///
/// The breaker reads the clock only on slow paths (a rejection while open, a half-open
/// admission, a failure, and each call under a time-window policy), never on a successful
/// closed-state call under the default policy.
///
/// # Examples
///
/// ```
/// use breaker::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// clock.advance(Duration::from_millis(5));
/// assert_eq!(clock.now_nanos(), 5_000_000);
/// ```
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Nanoseconds since this clock's origin. Must never decrease.
    fn now_nanos(&self) -> u64;
}

/// The default clock: [`std::time::Instant`], measured from when the clock was created.
///
/// # Examples
///
/// ```
/// use breaker::{Clock, MonotonicClock};
///
/// let clock = MonotonicClock::new();
/// let first = clock.now_nanos();
/// assert!(clock.now_nanos() >= first);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: std::time::Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> MonotonicClock {
        MonotonicClock {
            origin: std::time::Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> MonotonicClock {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    fn now_nanos(&self) -> u64 {
        // 2^64 ns is 584 years of uptime: saturating is only a formality. Plain `u64`
        // arithmetic, because this runs on every rejection.
        let elapsed = self.origin.elapsed();
        elapsed
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(elapsed.subsec_nanos()))
    }
}

/// A clock that moves only when told to; clones share the same time.
///
/// Give one clone to the breaker ([`Builder::clock`](crate::Builder::clock)) and keep the
/// other to [`advance`](ManualClock::advance) it: tests then never sleep.
///
/// # Examples
///
/// ```
/// use breaker::{CircuitBreaker, ManualClock, Policy, State};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let breaker = CircuitBreaker::builder("api")
///     .policy(Policy::consecutive_failures(1))
///     .half_open_after(Duration::from_secs(10))
///     .clock(clock.clone())
///     .build()?;
/// let _ = breaker.call(|| Err::<(), _>("down"));
/// assert_eq!(breaker.state(), State::Open);
/// clock.advance(Duration::from_secs(10));
/// assert!(breaker.try_acquire().is_ok()); // the probe
/// # Ok::<(), breaker::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at its origin (zero).
    pub fn new() -> ManualClock {
        ManualClock {
            nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves time forward by `by` (saturating at `u64::MAX` nanoseconds).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // Relaxed: the clock is a counter with no data attached; any thread that must see
        // the new time synchronizes with the advancing thread by other means (a join, a
        // channel), and the breaker tolerates reading a slightly older time.
        let mut current = self.nanos.load(Ordering::Relaxed);
        loop {
            let next = current.saturating_add(by);
            match self.nanos.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        // Relaxed: see `advance`.
        self.nanos.load(Ordering::Relaxed)
    }
}
