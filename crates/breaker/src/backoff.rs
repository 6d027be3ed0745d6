//! How long the breaker stays open: a constant duration or a capped exponential backoff.

use std::time::Duration;

use crate::ConfigError;

/// How long an open breaker waits before letting a probe through.
///
/// The attempt number counts consecutive failed probes since the breaker last closed
/// (0 for the first opening); closing resets it.
///
/// # Examples
///
/// ```
/// use keel_breaker::Backoff;
/// use std::time::Duration;
///
/// let backoff = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60));
/// assert_eq!(backoff.delay(0), Duration::from_secs(1));
/// assert_eq!(backoff.delay(3), Duration::from_secs(8));
/// assert_eq!(backoff.delay(200), Duration::from_secs(60));
///
/// // Any start reaches any cap, without overflow:
/// let day = Duration::from_secs(24 * 3600);
/// let slow_start = Backoff::exponential(Duration::from_micros(1), day);
/// assert_eq!(slow_start.delay(40), day);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Constant(Duration),
    Exponential {
        initial: Duration,
        max: Duration,
        jitter: bool,
    },
}

impl Backoff {
    /// Always wait `delay` (`Duration::MAX` means "until isolated and released").
    pub fn constant(delay: Duration) -> Backoff {
        Backoff {
            kind: Kind::Constant(delay),
        }
    }

    /// Wait `initial`, doubling after each failed probe, never more than `max`: attempt `n`
    /// waits exactly `min(initial × 2^n, max)`, so every start reaches every cap.
    pub fn exponential(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            kind: Kind::Exponential {
                initial,
                max,
                jitter: false,
            },
        }
    }

    /// Spreads each exponential delay over `[delay / 2, delay]` ("equal jitter"), so many
    /// breakers opened together do not probe together. The jitter is a hash of a random
    /// seed drawn when the breaker is built (so it differs between breakers and between
    /// processes) and of the opening's generation (so every thread computes the same
    /// deadline for one opening). No effect on a constant backoff.
    #[must_use]
    pub fn with_jitter(self) -> Backoff {
        match self.kind {
            Kind::Constant(_) => self,
            Kind::Exponential { initial, max, .. } => Backoff {
                kind: Kind::Exponential {
                    initial,
                    max,
                    jitter: true,
                },
            },
        }
    }

    /// The delay before a probe after `attempt` consecutive failed probes (without jitter).
    pub fn delay(&self, attempt: u8) -> Duration {
        match self.kind {
            Kind::Constant(delay) => delay,
            Kind::Exponential { initial, max, .. } => {
                // In u128 nanoseconds: `Duration::MAX` is under 2^94 ns, so the product of
                // any initial delay and 2^attempt either fits or is over every cap, and
                // `checked_mul` tells which. (A `u32` factor saturated at 2^32 - 1 from
                // attempt 32 on, so small starts never reached a large cap.)
                let doubled = 1u128
                    .checked_shl(u32::from(attempt))
                    .and_then(|factor| initial.as_nanos().checked_mul(factor));
                match doubled {
                    Some(nanos) if nanos < max.as_nanos() => duration_from_u128(nanos),
                    _ => max,
                }
            }
        }
    }

    /// The delay with jitter applied. `seed` is the breaker's own random seed mixed with
    /// the generation of the opening, so every thread computes the same deadline for one
    /// opening while breakers opened at the same instant wait different times.
    pub(crate) fn jittered_delay(&self, attempt: u8, seed: u64) -> Duration {
        let delay = self.delay(attempt);
        match self.kind {
            Kind::Exponential { jitter: true, .. } => {
                let half = delay / 2;
                let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
                let offset = if spread == 0 {
                    0
                } else {
                    splitmix64(seed) % spread
                };
                half + Duration::from_nanos(offset)
            }
            _ => delay,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Kind::Exponential { initial, max, .. } = self.kind {
            if initial.is_zero() {
                return Err(ConfigError::Duration {
                    setting: "half_open_after.initial",
                    value: initial,
                    reason: "an exponential backoff cannot start at zero",
                });
            }
            if max < initial {
                return Err(ConfigError::Duration {
                    setting: "half_open_after.max",
                    value: max,
                    reason: "must not be shorter than the initial delay",
                });
            }
        }
        Ok(())
    }
}

impl Default for Backoff {
    /// A constant 30 seconds, like Cockatiel's usual `halfOpenAfter`.
    fn default() -> Backoff {
        Backoff::constant(Duration::from_secs(30))
    }
}

impl From<Duration> for Backoff {
    fn from(delay: Duration) -> Backoff {
        Backoff::constant(delay)
    }
}

/// A `Duration` of `nanos` nanoseconds, which the caller knows is below `Duration::MAX`.
fn duration_from_u128(nanos: u128) -> Duration {
    let seconds = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    let subsecond = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Duration::new(seconds, subsecond)
}

/// A random 64-bit seed, different for every call and every process: `RandomState` keys
/// are random per process and distinct per instance. No atomics, so loom models are
/// unaffected.
pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Mixes a breaker's seed with an opening's generation.
pub(crate) fn jitter_seed(seed: u64, generation: u32) -> u64 {
    seed ^ u64::from(generation).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

pub(crate) fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
