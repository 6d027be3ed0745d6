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
/// use keel_breaker::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// clock.advance(Duration::from_millis(5));
/// assert_eq!(clock.now_nanos(), 5_000_000);
/// ```
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Nanoseconds since this clock's origin. Must never decrease.
    fn now_nanos(&self) -> u64;

    /// A cheaper reading that may lag [`now_nanos`](Clock::now_nanos) by up to
    /// [`coarse_lag_nanos`](Clock::coarse_lag_nanos) and never leads it. The breaker reads
    /// it to reject calls while open, and reads `now_nanos` only when the coarse time is
    /// within the lag of the deadline, so a rejection is never early and a probe is late by
    /// at most the lag's overrun. The default is `now_nanos` itself.
    fn coarse_now_nanos(&self) -> u64 {
        self.now_nanos()
    }

    /// How far [`coarse_now_nanos`](Clock::coarse_now_nanos) may lag (read once, when the
    /// breaker is built). The default, zero, suits a clock whose coarse reading is exact.
    fn coarse_lag_nanos(&self) -> u64 {
        0
    }
}

/// The default clock: the monotonic clock, measured from when this clock was created.
///
/// On Linux it reads `CLOCK_MONOTONIC` (what [`std::time::Instant`] reads) and offers
/// `CLOCK_MONOTONIC_COARSE` as its [coarse reading](Clock::coarse_now_nanos): the same
/// clock as of the last kernel tick, a vDSO read of a few nanoseconds instead of a few
/// dozen, lagging by at most one tick (its resolution, typically 1-4 ms; longer only on a
/// `nohz_full` CPU). Elsewhere it reads `Instant`, and the coarse reading is the exact one.
///
/// # Examples
///
/// ```
/// use keel_breaker::{Clock, MonotonicClock};
///
/// let clock = MonotonicClock::new();
/// let first = clock.now_nanos();
/// assert!(clock.now_nanos() >= first);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    origin: u64,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    coarse_lag: u64,
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    origin: std::time::Instant,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod linux {
    //! `CLOCK_MONOTONIC` and its coarse twin, read through rustix's safe vDSO calls.

    use rustix::time::{ClockId, Timespec, clock_getres, clock_gettime};

    pub(super) fn nanos(time: Timespec) -> u64 {
        // Both fields are non-negative for the monotonic clocks; saturating keeps a
        // 584-year uptime a formality.
        let seconds = u64::try_from(time.tv_sec).unwrap_or(0);
        let subsecond = u64::try_from(time.tv_nsec).unwrap_or(0);
        seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(subsecond)
    }

    #[inline]
    pub(super) fn precise() -> u64 {
        nanos(clock_gettime(ClockId::Monotonic))
    }

    #[inline]
    pub(super) fn coarse() -> u64 {
        nanos(clock_gettime(ClockId::MonotonicCoarse))
    }

    pub(super) fn coarse_resolution() -> u64 {
        nanos(clock_getres(ClockId::MonotonicCoarse))
    }
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> MonotonicClock {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        return MonotonicClock {
            origin: linux::precise(),
            coarse_lag: linux::coarse_resolution(),
        };
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
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
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn now_nanos(&self) -> u64 {
        linux::precise().saturating_sub(self.origin)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn coarse_now_nanos(&self) -> u64 {
        // Saturating: right after creation the last tick may be before the origin.
        linux::coarse().saturating_sub(self.origin)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn coarse_lag_nanos(&self) -> u64 {
        self.coarse_lag
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
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
/// use keel_breaker::{CircuitBreaker, ManualClock, Policy, State};
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
/// # Ok::<(), keel_breaker::ConfigError>(())
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
