//! The public state and event types, and the packed words the breaker's atomics hold.

use std::fmt;

/// The breaker's public state.
///
/// Internally the state shares one atomic word with the generation, the backoff attempt and
/// the isolation count (see [`CircuitBreaker`](crate::CircuitBreaker)), but these four are
/// the whole public model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum State {
    /// Calls go through; outcomes are counted by the policy.
    Closed,
    /// Calls are rejected until the open time has passed.
    Open,
    /// A limited number of probe calls go through; the rest are rejected.
    HalfOpen,
    /// Held open by at least one [`IsolationGuard`](crate::IsolationGuard).
    Isolated,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Closed => "Closed",
            State::Open => "Open",
            State::HalfOpen => "HalfOpen",
            State::Isolated => "Isolated",
        })
    }
}

/// What a listener is told about. Exactly one `StateChange` is delivered per transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The breaker moved from one state to another.
    StateChange {
        /// The state before.
        from: State,
        /// The state after.
        to: State,
    },
    /// A call admitted in the current generation succeeded.
    Success,
    /// A call admitted in the current generation failed (an error the classifier counts,
    /// or a panic).
    Failure,
}

pub(crate) const CLOSED: u8 = 0;
pub(crate) const OPEN: u8 = 1;
pub(crate) const HALF_OPEN: u8 = 2;
pub(crate) const ISOLATED: u8 = 3;

pub(crate) fn public_state(state: u8) -> State {
    match state {
        CLOSED => State::Closed,
        OPEN => State::Open,
        HALF_OPEN => State::HalfOpen,
        _ => State::Isolated,
    }
}

/// The value of the state word: `[generation: 32 | isolations: 16 | attempt: 8 | state: 8]`.
///
/// See the state table on `Inner::word` in `breaker.rs` for what each state means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word(pub(crate) u64);

pub(crate) const MAX_ISOLATIONS: u16 = u16::MAX;

// The truncating casts below extract bit fields that were packed from values of exactly
// these widths, so they lose nothing.
#[allow(clippy::cast_possible_truncation)]
impl Word {
    pub(crate) fn new(state: u8, attempt: u8, isolations: u16, generation: u32) -> Word {
        Word(
            u64::from(state)
                | u64::from(attempt) << 8
                | u64::from(isolations) << 16
                | u64::from(generation) << 32,
        )
    }

    pub(crate) fn state(self) -> u8 {
        self.0 as u8
    }

    pub(crate) fn attempt(self) -> u8 {
        (self.0 >> 8) as u8
    }

    pub(crate) fn isolations(self) -> u16 {
        (self.0 >> 16) as u16
    }

    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The word after a transition to `state`: a new generation, the rest unchanged.
    pub(crate) fn next(self, state: u8) -> Word {
        Word::new(
            state,
            self.attempt(),
            self.isolations(),
            self.generation().wrapping_add(1),
        )
    }

    pub(crate) fn with_attempt(self, attempt: u8) -> Word {
        Word::new(self.state(), attempt, self.isolations(), self.generation())
    }

    pub(crate) fn with_isolations(self, isolations: u16) -> Word {
        Word::new(self.state(), self.attempt(), isolations, self.generation())
    }
}

/// A 32-bit count tagged with the generation it belongs to: `[generation: 32 | count: 32]`.
///
/// A tag from another generation reads as zero, so a transition "resets" the count without
/// writing it. A late writer from an older generation must not write over a newer tag:
/// writers check [`tag_is_newer`] (the failure count's CAS loop gives up) or only write
/// while the tag is their own (the success's reset is a CAS from a count tagged with its
/// generation), so a stale result can only touch its own, dead, count.
#[allow(clippy::cast_possible_truncation)] // Unpacks fields packed from u32s.
pub(crate) fn tagged_count(word: u64, generation: u32) -> u32 {
    if (word >> 32) as u32 == generation {
        word as u32
    } else {
        0
    }
}

pub(crate) fn tag_count(generation: u32, count: u32) -> u64 {
    u64::from(generation) << 32 | u64::from(count)
}

/// Whether `word`'s tag is a generation after `generation` (wrapping: within 2^31 of it).
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)] // Wrapping difference.
pub(crate) fn tag_is_newer(word: u64, generation: u32) -> bool {
    ((word >> 32) as u32).wrapping_sub(generation) as i32 > 0
}
