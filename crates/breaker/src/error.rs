//! The errors a caller can see: rejections, guarded-call errors, and configuration errors.

use std::{error::Error, fmt, time::Duration};

/// Why a call was not admitted.
///
/// Returned by [`CircuitBreaker::try_acquire`](crate::CircuitBreaker::try_acquire); the
/// `call`/`execute` methods wrap it in [`BreakerError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The breaker is open, or half-open with every probe slot taken.
    Open {
        /// How long until a probe may start: `Duration::MAX` whenever the open time (or,
        /// half-open with every slot taken, the probe timeout) is `Duration::MAX`, however
        /// long the breaker has been open.
        retry_after: Duration,
    },
    /// The breaker is held open by an [`IsolationGuard`](crate::IsolationGuard).
    Isolated,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Open { retry_after } => {
                write!(f, "circuit breaker is open; retry after {retry_after:?}")
            }
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
/// use breaker::{BreakerError, CircuitBreaker};
///
/// let breaker = CircuitBreaker::builder("db").build()?;
/// let result = breaker.call(|| Err::<(), _>("timeout"));
/// assert!(matches!(result, Err(BreakerError::Inner("timeout"))));
/// # Ok::<(), breaker::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerError<E> {
    /// The call was not made: the breaker is open.
    Open {
        /// How long until a probe may start.
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
            BreakerError::Open { .. } | BreakerError::Isolated => None,
        }
    }

    /// Whether the breaker refused the call (it was never made).
    pub fn is_rejected(&self) -> bool {
        !matches!(self, BreakerError::Inner(_))
    }
}

impl<E> From<Rejected> for BreakerError<E> {
    fn from(rejected: Rejected) -> BreakerError<E> {
        match rejected {
            Rejected::Open { retry_after } => BreakerError::Open { retry_after },
            Rejected::Isolated => BreakerError::Isolated,
        }
    }
}

impl<E: fmt::Display> fmt::Display for BreakerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakerError::Open { retry_after } => Rejected::Open {
                retry_after: *retry_after,
            }
            .fmt(f),
            BreakerError::Isolated => Rejected::Isolated.fmt(f),
            BreakerError::Inner(error) => write!(f, "guarded call failed: {error}"),
        }
    }
}

impl<E: Error + 'static> Error for BreakerError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            BreakerError::Inner(error) => Some(error),
            BreakerError::Open { .. } | BreakerError::Isolated => None,
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
