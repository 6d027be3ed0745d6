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
/// use breaker::Backoff;
/// use std::time::Duration;
///
/// let backoff = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60));
/// assert_eq!(backoff.delay(0), Duration::from_secs(1));
/// assert_eq!(backoff.delay(3), Duration::from_secs(8));
/// assert_eq!(backoff.delay(200), Duration::from_secs(60));
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

    /// Wait `initial`, doubling after each failed probe, never more than `max`.
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
    /// breakers opened together do not probe together. The jitter is a hash of the
    /// breaker's generation, so every thread computes the same deadline. No effect on a
    /// constant backoff.
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
                let factor = 1u32.checked_shl(u32::from(attempt)).unwrap_or(u32::MAX);
                initial.checked_mul(factor).unwrap_or(max).min(max)
            }
        }
    }

    /// The delay with jitter applied, `seed` being the breaker's generation.
    pub(crate) fn jittered_delay(&self, attempt: u8, seed: u32) -> Duration {
        let delay = self.delay(attempt);
        match self.kind {
            Kind::Exponential { jitter: true, .. } => {
                let half = delay / 2;
                let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
                let offset = if spread == 0 {
                    0
                } else {
                    splitmix64(u64::from(seed)) % spread
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

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
