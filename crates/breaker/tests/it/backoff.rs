//! Property tests of the backoff arithmetic: every exponential backoff reaches its cap.

use std::time::Duration;

use keel_breaker::Backoff;
use proptest::prelude::*;

/// Any duration from a nanosecond to `Duration::MAX`, spread over every magnitude.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (1u64..=u64::MAX).prop_map(Duration::from_nanos),
        (0u64..=u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        Just(Duration::MAX),
        Just(Duration::from_nanos(1)),
    ]
}

proptest! {
    #[test]
    fn exponential_backoff_doubles_until_it_reaches_its_cap(
        a in duration(),
        b in duration(),
        attempt in any::<u8>(),
    ) {
        let (initial, max) = if a <= b { (a, b) } else { (b, a) };
        let backoff = Backoff::exponential(initial, max);
        let delay = backoff.delay(attempt);
        // The exact value: `initial * 2^attempt`, computed in u128 nanoseconds, capped.
        let exact = initial.as_nanos().checked_mul(1u128 << attempt.min(127));
        let expected = match exact {
            Some(nanos) if attempt < 127 && nanos < max.as_nanos() => {
                Duration::new(
                    u64::try_from(nanos / 1_000_000_000).unwrap(),
                    u32::try_from(nanos % 1_000_000_000).unwrap(),
                )
            }
            _ => max,
        };
        prop_assert_eq!(delay, expected);
        prop_assert!(delay >= initial && delay <= max);
        prop_assert!(backoff.delay(attempt.saturating_add(1)) >= delay);
        // 2^255 ns is far beyond `Duration::MAX`: the last attempt always waits the cap.
        prop_assert_eq!(backoff.delay(u8::MAX), max);
    }
}

#[test]
fn exponential_from_a_microsecond_reaches_a_day() {
    let day = Duration::from_secs(24 * 3600);
    let backoff = Backoff::exponential(Duration::from_micros(1), day);
    // 2^36 µs is about 19 hours, 2^37 µs about 38.
    assert_eq!(backoff.delay(36), Duration::from_micros(1 << 36));
    assert_eq!(backoff.delay(37), day);
    assert_eq!(backoff.delay(33), Duration::from_micros(1 << 33));
}
