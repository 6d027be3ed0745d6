//! Wall-clock times derived from the monotonic clock, so a trace reads one clock, not two.
//!
//! Each thread keeps an anchor (a monotonic instant and the wall-clock time read with it)
//! and re-reads the wall clock when the anchor is more than a second old. A derived time is
//! therefore off by at most the clock slew of one second (microseconds under NTP), and a
//! wall-clock step (a manual clock change) shows within a second.

use std::{
    cell::Cell,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

const REANCHOR_AFTER: Duration = Duration::from_secs(1);

thread_local! {
    /// A monotonic instant and the wall-clock time read with it, in nanoseconds since the
    /// Unix epoch (negative before it): plain integers, so deriving a time is an addition.
    static ANCHOR: Cell<Option<(Instant, i128)>> = const { Cell::new(None) };
}

/// Nanoseconds since the Unix epoch of `time` (negative before it).
pub(crate) fn unix_nanos(time: SystemTime) -> i128 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => i128::try_from(before.duration().as_nanos()).map_or(i128::MIN, |n| -n),
    }
}

/// The wall-clock time of the monotonic instant `at` (which is not in the future), in
/// nanoseconds since the Unix epoch.
pub(crate) fn unix_nanos_at(at: Instant) -> i128 {
    let derive = |anchor: &Cell<Option<(Instant, i128)>>| {
        if let Some((instant, nanos)) = anchor.get()
            && let Some(since) = at.checked_duration_since(instant)
            && since < REANCHOR_AFTER
        {
            // `since` is under a second, so it fits any integer here.
            return nanos + i128::from(since.subsec_nanos());
        }
        let nanos = unix_nanos(SystemTime::now());
        let instant = Instant::now();
        anchor.set(Some((instant, nanos)));
        let before = instant.saturating_duration_since(at).as_nanos();
        nanos - i128::try_from(before).unwrap_or(0)
    };
    ANCHOR
        .try_with(derive)
        .unwrap_or_else(|_| unix_nanos(SystemTime::now()))
}

/// The wall-clock time of the monotonic instant `at` (which is not in the future).
pub(crate) fn wall_clock(at: Instant) -> SystemTime {
    let nanos = unix_nanos_at(at);
    let magnitude = nanos.unsigned_abs();
    let magnitude = Duration::new(
        u64::try_from(magnitude / 1_000_000_000).unwrap_or(u64::MAX),
        u32::try_from(magnitude % 1_000_000_000).unwrap_or(0),
    );
    if nanos >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
    .unwrap_or_else(SystemTime::now)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant, SystemTime};

    use super::wall_clock;

    #[test]
    fn derived_wall_clock_matches_the_real_one() {
        for _ in 0..3 {
            let before = SystemTime::now();
            let derived = wall_clock(Instant::now());
            let after = SystemTime::now();
            // The derivation is exact up to the time between the two clock reads that set
            // the anchor; a loaded machine can preempt the thread there, so allow the one
            // second the module documents rather than assert on scheduling.
            let slack = Duration::from_secs(1);
            assert!(derived + slack >= before && derived <= after + slack);
        }
    }
}
