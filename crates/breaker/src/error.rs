//! The errors a caller can see: rejections, guarded-call errors, and configuration errors.

use std::{error::Error, fmt, time::Duration};

/// Why a call was not admitted.
///
/// Returned by [`CircuitBreaker::try_acquire`](crate::CircuitBreaker::try_acquire); the
/// `call`/`execute` methods wrap it in [`BreakerError`].
///
/// # Examples
///
/// ```
/// use keel_breaker::{CircuitBreaker, RejectReason};
///
/// let breaker = CircuitBreaker::builder("api").build()?;
/// breaker.trip();
/// let rejected = breaker.try_acquire().unwrap_err();
/// assert_eq!(rejected.reason(), RejectReason::Open);
/// assert!(rejected.retry_after() > Some(std::time::Duration::from_secs(29)));
/// # Ok::<(), keel_breaker::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The breaker is open.
    Open {
        /// How long until a probe may start: `Duration::MAX` whenever the open time is
        /// `Duration::MAX`, however long the breaker has been open.
        retry_after: Duration,
        /// How long ago the breaker opened (it has been open since `now - opened_ago`).
        opened_ago: Duration,
    },
    /// The breaker is half-open and every probe slot is taken.
    HalfOpenFull {
        /// How long until the running probes may be superseded (the probe timeout;
        /// `Duration::MAX` when it is `Duration::MAX`).
        retry_after: Duration,
    },
    /// The breaker is held open by an [`IsolationGuard`](crate::IsolationGuard).
    Isolated,
}

/// Why a call was rejected, without the details; see [`Rejected::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The breaker is open.
    Open,
    /// The breaker is half-open with every probe slot taken.
    HalfOpenFull,
    /// The breaker is isolated.
    Isolated,
}

impl RejectReason {
    /// A short lowercase label: `"open"`, `"half_open_full"` or `"isolated"` (the metric
    /// label value).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(keel_breaker::RejectReason::HalfOpenFull.as_str(), "half_open_full");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Open => "open",
            RejectReason::HalfOpenFull => "half_open_full",
            RejectReason::Isolated => "isolated",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Rejected {
    /// Why the call was rejected.
    pub fn reason(&self) -> RejectReason {
        match self {
            Rejected::Open { .. } => RejectReason::Open,
            Rejected::HalfOpenFull { .. } => RejectReason::HalfOpenFull,
            Rejected::Isolated => RejectReason::Isolated,
        }
    }

    /// How long until a call may be admitted, or `None` while isolated (no deadline).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Rejected::Open { retry_after, .. } | Rejected::HalfOpenFull { retry_after } => {
                Some(*retry_after)
            }
            Rejected::Isolated => None,
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Open {
                retry_after,
                opened_ago,
            } => write!(
                f,
                "circuit breaker is open (since {opened_ago:?} ago); retry after {retry_after:?}"
            ),
            Rejected::HalfOpenFull { retry_after } => write!(
                f,
                "circuit breaker is half-open with every probe slot taken; retry after {retry_after:?}"
            ),
            Rejected::Isolated => f.write_str("circuit breaker is isolated (held open manually)"),
        }
    }
}

impl Error for Rejected {}

/// The result of a guarded call that did not return `Ok`.
///
/// # Examples
///
/// ```
/// use keel_breaker::{BreakerError, CircuitBreaker};
///
/// let breaker = CircuitBreaker::builder("db").build()?;
/// let result = breaker.call(|| Err::<(), _>("timeout"));
/// assert!(matches!(result, Err(BreakerError::Inner("timeout"))));
/// # Ok::<(), keel_breaker::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerError<E> {
    /// The call was not made: the breaker is open.
    Open {
        /// How long until a probe may start.
        retry_after: Duration,
        /// How long ago the breaker opened.
        opened_ago: Duration,
    },
    /// The call was not made: the breaker is half-open with every probe slot taken.
    HalfOpenFull {
        /// How long until the running probes may be superseded.
        retry_after: Duration,
    },
    /// The call was not made: the breaker is isolated.
    Isolated,
    /// The call was made and returned this error.
    Inner(E),
}

impl<E> BreakerError<E> {
    /// The guarded call's own error, if the call was made.
    pub fn into_inner(self) -> Option<E> {
        match self {
            BreakerError::Inner(error) => Some(error),
            _ => None,
        }
    }

    /// Whether the breaker refused the call (it was never made).
    pub fn is_rejected(&self) -> bool {
        !matches!(self, BreakerError::Inner(_))
    }

    /// Why the breaker refused the call, or `None` if the call was made.
    pub fn reason(&self) -> Option<RejectReason> {
        self.rejected().map(|rejected| rejected.reason())
    }

    /// How long until a call may be admitted, when the breaker refused it with a deadline.
    pub fn retry_after(&self) -> Option<Duration> {
        self.rejected().and_then(|rejected| rejected.retry_after())
    }

    /// The rejection, or `None` if the call was made.
    pub fn rejected(&self) -> Option<Rejected> {
        match *self {
            BreakerError::Open {
                retry_after,
                opened_ago,
            } => Some(Rejected::Open {
                retry_after,
                opened_ago,
            }),
            BreakerError::HalfOpenFull { retry_after } => {
                Some(Rejected::HalfOpenFull { retry_after })
            }
            BreakerError::Isolated => Some(Rejected::Isolated),
            BreakerError::Inner(_) => None,
        }
    }
}

impl<E> From<Rejected> for BreakerError<E> {
    fn from(rejected: Rejected) -> BreakerError<E> {
        match rejected {
            Rejected::Open {
                retry_after,
                opened_ago,
            } => BreakerError::Open {
                retry_after,
                opened_ago,
            },
            Rejected::HalfOpenFull { retry_after } => BreakerError::HalfOpenFull { retry_after },
            Rejected::Isolated => BreakerError::Isolated,
        }
    }
}

impl<E: fmt::Display> fmt::Display for BreakerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.rejected()) {
            (BreakerError::Inner(error), _) => write!(f, "guarded call failed: {error}"),
            (_, rejected) => rejected.map_or(Ok(()), |rejected| rejected.fmt(f)),
        }
    }
}

impl<E: Error + 'static> Error for BreakerError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            BreakerError::Inner(error) => Some(error),
            _ => None,
        }
    }
}

/// An invalid breaker configuration, found by [`Builder::build`](crate::Builder::build).
///
/// Each variant names the setting and the value that was wrong.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A count that must be at least one was zero.
    Zero {
        /// The setting, e.g. `"consecutive_failures"`.
        setting: &'static str,
    },
    /// A count was larger than the breaker can track.
    TooLarge {
        /// The setting, e.g. `"half_open_trials"`.
        setting: &'static str,
        /// The value given.
        value: u64,
        /// The largest accepted value.
        max: u64,
    },
    /// A failure ratio outside `0.0..=1.0` (or NaN).
    RatioOutOfRange {
        /// The setting, e.g. `"count_window.failure_ratio"`.
        setting: &'static str,
        /// The value given.
        value: f64,
    },
    /// A duration that must be positive was zero, or too short for its bucket count.
    Duration {
        /// The setting, e.g. `"time_window.window"`.
        setting: &'static str,
        /// The value given.
        value: Duration,
        /// What was wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Zero { setting } => write!(f, "`{setting}` must be at least 1, got 0"),
            ConfigError::TooLarge {
                setting,
                value,
                max,
            } => write!(f, "`{setting}` must be at most {max}, got {value}"),
            ConfigError::RatioOutOfRange { setting, value } => {
                write!(f, "`{setting}` must be within 0.0..=1.0, got {value}")
            }
            ConfigError::Duration {
                setting,
                value,
                reason,
            } => write!(f, "`{setting}` = {value:?} is invalid: {reason}"),
        }
    }
}

impl Error for ConfigError {}
