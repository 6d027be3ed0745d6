//! When to open: the failure policies, their validation, and the lock-free windows behind them.

use std::time::Duration;

use crate::{
    ConfigError,
    sync::{AtomicI64, AtomicU8, AtomicU64, Ordering},
};

/// When a closed breaker opens.
///
/// Every policy decides when a failure is recorded (a success never opens the breaker;
/// resilience4j also evaluates on a success), counts a panic, a failure the classifier
/// chose and (if configured) a [slow call](crate::Builder::slow_call_threshold) as
/// failures, and is reset when the breaker closes. While half-open the policy is not
/// consulted: any probe failure reopens (Cockatiel's default). A `min_calls` or
/// `min_throughput` of zero is a [`ConfigError`] (as in every peer; it used to mean one).
///
/// | policy | opens when | cost of a successful closed call |
/// |---|---|---|
/// | [`consecutive_failures(n)`](Policy::consecutive_failures) (default, n = 5) | the n-th failure in a row | two loads; one compare-and-swap after a failure streak |
/// | [`count_window`](Policy::count_window) | failure ratio over the last `size` calls ≥ `ratio`, after `min_calls` calls | three read-modify-writes (slot cursor, slot swap, counters) |
/// | [`time_window`](Policy::time_window) | failure ratio over the last `window` ≥ `ratio`, after `min_throughput` calls | one clock read, one compare-and-swap, one `fetch_max` |
///
/// # Examples
///
/// ```
/// use keel_breaker::{CircuitBreaker, Policy};
/// use std::time::Duration;
///
/// let breaker = CircuitBreaker::builder("search")
///     .policy(Policy::time_window(Duration::from_secs(10), 10, 0.5, 20))
///     .build()?;
/// # let _ = breaker;
/// # Ok::<(), keel_breaker::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    kind: PolicyKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PolicyKind {
    Consecutive {
        threshold: u32,
    },
    CountWindow {
        size: u32,
        failure_ratio: f64,
        min_calls: u32,
    },
    TimeWindow {
        window: Duration,
        buckets: u32,
        failure_ratio: f64,
        min_throughput: u32,
    },
}

impl Policy {
    /// Opens on the `n`-th consecutive failure; a success resets the count.
    pub fn consecutive_failures(n: u32) -> Policy {
        Policy {
            kind: PolicyKind::Consecutive { threshold: n },
        }
    }

    /// Opens when at least `min_calls` of the last `size` calls are recorded and the
    /// share of failures among them is at least `failure_ratio`. `min_calls` may not
    /// exceed `size` (the window could never open) and must be at least 1; `size` is at
    /// most 1,048,576 (2^20; one byte per call).
    pub fn count_window(size: u32, failure_ratio: f64, min_calls: u32) -> Policy {
        Policy {
            kind: PolicyKind::CountWindow {
                size,
                failure_ratio,
                min_calls,
            },
        }
    }

    /// Opens when at least `min_throughput` calls happened within the last `window`
    /// (split into `buckets` slices) and the share of failures among them is at least
    /// `failure_ratio`. Slices older than `window` never count, however long the breaker
    /// sat idle. `buckets` is at most 65,536 (2^16); `min_throughput` must be at least 1.
    pub fn time_window(
        window: Duration,
        buckets: u32,
        failure_ratio: f64,
        min_throughput: u32,
    ) -> Policy {
        Policy {
            kind: PolicyKind::TimeWindow {
                window,
                buckets,
                failure_ratio,
                min_throughput,
            },
        }
    }

    pub(crate) fn build(self) -> Result<Tracker, ConfigError> {
        match self.kind {
            PolicyKind::Consecutive { threshold } => {
                nonzero("consecutive_failures", threshold)?;
                Ok(Tracker::Consecutive { threshold })
            }
            PolicyKind::CountWindow {
                size,
                failure_ratio,
                min_calls,
            } => {
                nonzero("count_window.size", size)?;
                at_most("count_window.size", size, MAX_COUNT_WINDOW)?;
                ratio("count_window.failure_ratio", failure_ratio)?;
                nonzero("count_window.min_calls", min_calls)?;
                if min_calls > size {
                    // The window never holds more than `size` calls: it could never open.
                    return Err(ConfigError::TooLarge {
                        setting: "count_window.min_calls",
                        value: u64::from(min_calls),
                        max: u64::from(size),
                    });
                }
                Ok(Tracker::Count(CountWindow {
                    failure_ratio,
                    min_calls: i64::from(min_calls),
                    cursor: AtomicU64::new(0),
                    slots: (0..size).map(|_| AtomicU8::new(EMPTY)).collect(),
                    calls: AtomicI64::new(0),
                    failures: AtomicI64::new(0),
                }))
            }
            PolicyKind::TimeWindow {
                window,
                buckets,
                failure_ratio,
                min_throughput,
            } => {
                nonzero("time_window.buckets", buckets)?;
                at_most("time_window.buckets", buckets, MAX_BUCKETS)?;
                ratio("time_window.failure_ratio", failure_ratio)?;
                nonzero("time_window.min_throughput", min_throughput)?;
                let bucket_nanos = window.as_nanos() / u128::from(buckets);
                if bucket_nanos == 0 {
                    return Err(ConfigError::Duration {
                        setting: "time_window.window",
                        value: window,
                        reason: "must be at least one nanosecond per bucket",
                    });
                }
                Ok(Tracker::Time(TimeWindow {
                    bucket_nanos: u64::try_from(bucket_nanos).unwrap_or(u64::MAX),
                    failure_ratio,
                    min_throughput: u64::from(min_throughput),
                    last_bucket: AtomicU64::new(0),
                    buckets: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
                }))
            }
        }
    }
}

/// The largest count window: a byte per call, so 1 MiB. Larger windows would allocate
/// gigabytes in `build` (and abort if that failed) for no statistical benefit.
const MAX_COUNT_WINDOW: u32 = 1 << 20;
/// The most time-window buckets: eight bytes each, 512 KiB, and every trip decision sums
/// all of them.
const MAX_BUCKETS: u32 = 1 << 16;

impl Default for Policy {
    /// Five consecutive failures, like Cockatiel's `ConsecutiveBreaker(5)`.
    fn default() -> Policy {
        Policy::consecutive_failures(5)
    }
}

fn nonzero(setting: &'static str, value: u32) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::Zero { setting });
    }
    Ok(())
}

fn at_most(setting: &'static str, value: u32, max: u32) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::TooLarge {
            setting,
            value: u64::from(value),
            max: u64::from(max),
        });
    }
    Ok(())
}

fn ratio(setting: &'static str, value: f64) -> Result<(), ConfigError> {
    if !(0.0..=1.0).contains(&value) {
        return Err(ConfigError::RatioOutOfRange { setting, value });
    }
    Ok(())
}

/// A policy's runtime state.
#[derive(Debug)]
pub(crate) enum Tracker {
    /// The count itself lives in the breaker's `failures` word, tagged with the generation.
    Consecutive {
        threshold: u32,
    },
    Count(CountWindow),
    Time(TimeWindow),
}

/// Where a window recorded one outcome, so that a stale outcome can be taken back.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sample {
    /// Nothing was recorded (a saturated time bucket).
    Nothing,
    /// `outcome` was swapped into the count window's slot `index`.
    Slot { index: usize, outcome: u8 },
    /// One call was added to the time window's bucket `index`, tagged `tag`.
    Bucket {
        index: usize,
        tag: u64,
        failed: bool,
    },
}

impl Tracker {
    /// Takes back a sample recorded by a call whose generation ended before or while it
    /// recorded. Exact unless the sample's slot or bucket was cleared and written again
    /// meanwhile; then at most one newer sample of the same kind is taken instead.
    pub(crate) fn undo(&self, sample: Sample) {
        match (self, sample) {
            (Tracker::Count(window), Sample::Slot { index, outcome }) => {
                window.undo(index, outcome);
            }
            (Tracker::Time(window), Sample::Bucket { index, tag, failed }) => {
                window.undo(index, tag, failed);
            }
            _ => {}
        }
    }

    /// The calls and failures the window holds at `now_nanos` (zero for the
    /// consecutive-failures policy, whose streak lives in the breaker).
    pub(crate) fn window(&self, now_nanos: u64) -> (u64, u64) {
        match self {
            Tracker::Consecutive { .. } => (0, 0),
            Tracker::Count(window) => {
                let (calls, failures) = window.counts();
                (calls.unsigned_abs(), failures.unsigned_abs())
            }
            Tracker::Time(window) => window.counts(now_nanos / window.bucket_nanos),
        }
    }

    /// Forgets every recorded outcome (the breaker is closing).
    pub(crate) fn clear(&self) {
        match self {
            Tracker::Consecutive { .. } => {}
            Tracker::Count(window) => window.clear(),
            Tracker::Time(window) => window.clear(),
        }
    }
}

const EMPTY: u8 = 0;
const SUCCESS: u8 = 1;
const FAILURE: u8 = 2;

/// The last `slots.len()` outcomes, as a ring written without locks.
///
/// Each record claims a slot with `fetch_add` on `cursor`, swaps its outcome in, and adds
/// the difference between the old and the new outcome to `calls` and `failures`. Because
/// every change to a slot goes through `swap` and its exact difference is applied, the
/// counters equal the ring's contents once concurrent records finish; in between they may
/// briefly lag (hence signed counters, clamped when read).
#[derive(Debug)]
pub(crate) struct CountWindow {
    failure_ratio: f64,
    min_calls: i64,
    cursor: AtomicU64,
    slots: Box<[AtomicU8]>,
    calls: AtomicI64,
    failures: AtomicI64,
}

impl CountWindow {
    /// Records one outcome; returns where, and whether the window now asks to open.
    pub(crate) fn record(&self, failed: bool) -> (Sample, bool) {
        // Relaxed except the slot swap: the window is statistics, publishing no other
        // memory, and the decision to open is made by the state word's CAS.
        let len = self.slots.len() as u64;
        let index =
            usize::try_from(self.cursor.fetch_add(1, Ordering::Relaxed) % len).unwrap_or_default();
        let new = if failed { FAILURE } else { SUCCESS };
        // Acquire: pairs with `clear`'s Release, so a sample landing in a slot already
        // cleared for a newer generation sees that generation when the caller re-checks it
        // (and takes the sample back).
        let old = self.slots[index].swap(new, Ordering::Acquire);
        self.apply(old, new);
        (
            Sample::Slot {
                index,
                outcome: new,
            },
            failed && self.over_threshold(),
        )
    }

    fn undo(&self, index: usize, outcome: u8) {
        // Only if the slot still holds the outcome; if another record overwrote it, that
        // swap already took it out of the counters.
        if self.slots[index]
            .compare_exchange(outcome, EMPTY, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.apply(outcome, EMPTY);
        }
    }

    fn apply(&self, old: u8, new: u8) {
        let calls_delta = i64::from(new != EMPTY) - i64::from(old != EMPTY);
        let failures_delta = i64::from(new == FAILURE) - i64::from(old == FAILURE);
        if calls_delta != 0 {
            self.calls.fetch_add(calls_delta, Ordering::Relaxed);
        }
        if failures_delta != 0 {
            self.failures.fetch_add(failures_delta, Ordering::Relaxed);
        }
    }

    /// The calls and failures in the ring, clamped into range while records are in flight.
    fn counts(&self) -> (i64, i64) {
        let calls = self.calls.load(Ordering::Relaxed).max(0);
        let failures = self.failures.load(Ordering::Relaxed).clamp(0, calls);
        (calls, failures)
    }

    fn over_threshold(&self) -> bool {
        let (calls, failures) = self.counts();
        calls >= self.min_calls && ratio_reached(failures, calls, self.failure_ratio)
    }

    fn clear(&self) {
        for slot in &self.slots {
            // Release: pairs with `record`'s Acquire. The clearing thread has already seen
            // the end of every closed generation whose results it erases.
            let old = slot.swap(EMPTY, Ordering::Release);
            self.apply(old, EMPTY);
        }
    }
}

#[allow(clippy::cast_precision_loss)] // Ratios of call counts need no more than f64's 53 bits.
fn ratio_reached(failures: i64, calls: i64, failure_ratio: f64) -> bool {
    calls > 0 && failures > 0 && failures as f64 >= failure_ratio * calls as f64
}

/// Outcomes of the last `window`, in `buckets` slices of `bucket_nanos`.
///
/// A bucket is one `u64`: `[index: 32 | calls: 16 | failures: 16]`, where `index` is the
/// low 32 bits of `now / bucket_nanos` it counts for. A bucket whose index is not within
/// the last `buckets` slices is expired and reads as empty, so expiry needs no sweeper and
/// survives any idle gap. `last_bucket` (the newest slice ever recorded) detects gaps
/// longer than the whole window: they clear every bucket. (A 32-bit index could only alias
/// if one bucket went unwritten for 2^32 slices while calls kept arriving in the others.)
/// Per-bucket counts saturate at 65,535 calls (further calls
/// in that slice are not sampled).
#[derive(Debug)]
pub(crate) struct TimeWindow {
    bucket_nanos: u64,
    failure_ratio: f64,
    min_throughput: u64,
    last_bucket: AtomicU64,
    buckets: Box<[AtomicU64]>,
}

const COUNT_MAX: u64 = 0xFFFF;

impl TimeWindow {
    /// Records one outcome at `now_nanos`; returns where, and whether the window now asks
    /// to open.
    pub(crate) fn record(&self, now_nanos: u64, failed: bool) -> (Sample, bool) {
        let slice = now_nanos / self.bucket_nanos;
        let len = self.buckets.len() as u64;
        // Relaxed: statistics only (see `CountWindow::record`).
        let previous = self.last_bucket.fetch_max(slice, Ordering::Relaxed);
        if slice.saturating_sub(previous) >= len {
            // Idle for longer than the whole window: everything recorded is expired.
            self.clear();
        }
        let index = usize::try_from(slice % len).unwrap_or_default();
        let bucket = &self.buckets[index];
        let tag = slice & 0xFFFF_FFFF;
        let mut current = bucket.load(Ordering::Relaxed);
        let sample = loop {
            let (calls, failures) = if current >> 32 == tag {
                ((current >> 16) & COUNT_MAX, current & COUNT_MAX)
            } else {
                (0, 0)
            };
            if calls == COUNT_MAX {
                break Sample::Nothing;
            }
            let next = (tag << 32) | ((calls + 1) << 16) | (failures + u64::from(failed));
            // Acquire on success: as in `CountWindow::record`.
            match bucket.compare_exchange_weak(current, next, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break Sample::Bucket { index, tag, failed },
                Err(actual) => current = actual,
            }
        };
        (sample, failed && self.over_threshold(slice))
    }

    fn undo(&self, index: usize, tag: u64, failed: bool) {
        let bucket = &self.buckets[index];
        let mut current = bucket.load(Ordering::Relaxed);
        loop {
            let (calls, failures) = ((current >> 16) & COUNT_MAX, current & COUNT_MAX);
            if current >> 32 != tag || calls == 0 || (failed && failures == 0) {
                // Cleared (or expired) since: the sample is already gone.
                return;
            }
            let next = (tag << 32) | ((calls - 1) << 16) | (failures - u64::from(failed));
            match bucket.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// The calls and failures of the buckets within the window ending at `slice`.
    fn counts(&self, slice: u64) -> (u64, u64) {
        let len = self.buckets.len() as u64;
        let (mut calls, mut failures) = (0u64, 0u64);
        for bucket in &self.buckets {
            let word = bucket.load(Ordering::Relaxed);
            let age = (slice & 0xFFFF_FFFF).wrapping_sub(word >> 32) & 0xFFFF_FFFF;
            if age < len {
                calls += (word >> 16) & COUNT_MAX;
                failures += word & COUNT_MAX;
            }
        }
        (calls, failures)
    }

    fn over_threshold(&self, slice: u64) -> bool {
        let (calls, failures) = self.counts(slice);
        calls >= self.min_throughput
            && ratio_reached(
                i64::try_from(failures).unwrap_or(i64::MAX),
                i64::try_from(calls).unwrap_or(i64::MAX),
                self.failure_ratio,
            )
    }

    fn clear(&self) {
        for bucket in &self.buckets {
            // An all-zero word has index 0 and no calls: empty whatever its age.
            // Release: as in `CountWindow::clear`.
            bucket.store(0, Ordering::Release);
        }
    }
}
