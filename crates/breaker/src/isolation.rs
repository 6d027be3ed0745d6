//! Holding a breaker open by hand: reference-counted isolation guards in the state word.

use crate::{
    CircuitBreaker, Event,
    machine::Inner,
    state::{CLOSED, ISOLATED, MAX_ISOLATIONS, Word},
    sync::Ordering,
};

/// Keeps its breaker [`Isolated`](crate::State::Isolated); see [`CircuitBreaker::isolate`].
///
/// # Examples
///
/// ```
/// use keel_breaker::{CircuitBreaker, State};
///
/// let breaker = CircuitBreaker::builder("maintenance").build()?;
/// let guard = breaker.isolate();
/// assert_eq!(breaker.state(), State::Isolated);
/// drop(guard);
/// assert_eq!(breaker.state(), State::Closed);
/// # Ok::<(), keel_breaker::ConfigError>(())
/// ```
#[derive(Debug)]
#[must_use = "the breaker is released as soon as the guard is dropped"]
pub struct IsolationGuard {
    pub(crate) breaker: CircuitBreaker,
    pub(crate) counted: bool,
}

impl Drop for IsolationGuard {
    fn drop(&mut self) {
        if self.counted {
            self.breaker.inner.release();
        }
    }
}

impl Inner {
    /// Takes one isolation; returns whether it was counted and the state change to
    /// announce once the caller holds its guard.
    pub(crate) fn isolate(&self) -> (bool, Option<Event>) {
        // Acquire: as in `cas`'s failure ordering.
        let mut word = Word(self.word.load(Ordering::Acquire));
        loop {
            if word.isolations() == MAX_ISOLATIONS {
                return (false, None);
            }
            let next = if word.state() == ISOLATED {
                word.with_isolations(word.isolations() + 1)
            } else {
                word.next(ISOLATED).with_isolations(1)
            };
            match self.cas(word, next) {
                Ok(change) => return (true, change),
                Err(actual) => word = actual,
            }
        }
    }

    pub(crate) fn release(&self) {
        // Acquire: as in `cas`'s failure ordering.
        let mut word = Word(self.word.load(Ordering::Acquire));
        loop {
            if word.state() != ISOLATED || word.isolations() == 0 {
                // Unreachable while a counted guard lives; never underflow regardless.
                return;
            }
            let next = if word.isolations() == 1 {
                self.tracker.clear();
                word.next(CLOSED).with_isolations(0).with_attempt(0)
            } else {
                word.with_isolations(word.isolations() - 1)
            };
            match self.transition(word, next) {
                Ok(()) => return,
                Err(actual) => word = actual,
            }
        }
    }
}
