//! Span ids from a per-thread generator, seeded once per thread from `uuid`'s generator.
//!
//! Correlation ids (which double as W3C trace ids) come from `uuid`'s `fast-rng`: a
//! cryptographically secure, per-thread, OS-seeded generator, and no system call per id.
//! Span ids only need to be unique within a trace, so they come from wyrand, a small
//! non-cryptographic generator (about a nanosecond per id), seeded from a UUID.

use std::cell::Cell;

thread_local! {
    /// wyrand state; 0 means "not seeded yet".
    static STATE: Cell<u64> = const { Cell::new(0) };
}

/// A random non-zero `u64`.
pub(crate) fn span_bits() -> u64 {
    let next = STATE.try_with(|state| {
        let mut current = state.get();
        if current == 0 {
            current = seed();
        }
        current = current.wrapping_add(0xa076_1d64_78bd_642f);
        state.set(current);
        let product = u128::from(current) * u128::from(current ^ 0xe703_7ed1_a0b4_28db);
        // Folding the 128-bit product: the high and low halves, truncation intended.
        #[allow(clippy::cast_possible_truncation)]
        let folded = (product >> 64) as u64 ^ product as u64;
        folded
    });
    next.unwrap_or_else(|_| seed()).max(1)
}

#[cold]
fn seed() -> u64 {
    // The variant bits of a v4 UUID make its low half non-zero.
    uuid::Uuid::new_v4().as_u64_pair().1
}
