//! Wall-clock times derived from the monotonic clock, so a trace reads one clock, not two.
//!
//! Each thread keeps an anchor (a monotonic instant and the wall-clock time read with it)
//! and re-reads the wall clock when the anchor is more than a second old. A derived time is
//! therefore off by at most the clock slew of one second (microseconds under NTP), and a
//! wall-clock step (a manual clock change) shows within a second.

use std::{
    cell::Cell,
    time::{Duration, Instant, SystemTime},
};

const REANCHOR_AFTER: Duration = Duration::from_secs(1);

thread_local! {
    static ANCHOR: Cell<Option<(Instant, SystemTime)>> = const { Cell::new(None) };
}

/// The wall-clock time of the monotonic instant `at` (which is not in the future).
pub(crate) fn wall_clock(at: Instant) -> SystemTime {
    let derive = |anchor: &Cell<Option<(Instant, SystemTime)>>| {
        if let Some((instant, system)) = anchor.get()
            && let Some(since) = at.checked_duration_since(instant)
            && since < REANCHOR_AFTER
        {
            return system + since;
        }
        let system = SystemTime::now();
        let instant = Instant::now();
        anchor.set(Some((instant, system)));
        system
            .checked_sub(instant.saturating_duration_since(at))
            .unwrap_or(system)
    };
    ANCHOR
        .try_with(derive)
        .unwrap_or_else(|_| SystemTime::now())
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
