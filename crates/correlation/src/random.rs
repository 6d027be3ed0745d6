//! Random bits for ids: correlation ids drawn in per-thread batches, and span ids.
//!
//! Correlation ids (which double as W3C trace ids) take their 122 random bits from `rand`'s
//! thread-local generator, the one behind `uuid`'s `fast-rng`: `ChaCha12`, seeded from the OS
//! and reseeded every 64 KiB, so no system call per id. Each thread draws the bits of
//! [`BATCH`] ids in one call and hands them out one by one, so a new id is a copy instead of
//! a trip through the generator's thread-local handle. (Like `rand`'s generator, a batch is
//! not renewed by `fork`: a child process that generates ids before its parent's batch runs
//! out repeats the parent's next ids. Fork before starting traces, as with any thread-local
//! generator.)
//!
//! Span ids only need to be unique within a trace, so they come from wyrand, a small
//! non-cryptographic generator (about a nanosecond per id), seeded from the batch.

use std::cell::Cell;

/// How many ids' worth of random bits a thread draws at once (512 bytes).
const BATCH: usize = 32;

struct Batch {
    bits: [Cell<u128>; BATCH],
    /// Index of the next unused entry; `BATCH` means "empty, draw a new batch".
    next: Cell<usize>,
}

thread_local! {
    static BITS: Batch = const {
        Batch {
            bits: [const { Cell::new(0) }; BATCH],
            next: Cell::new(BATCH),
        }
    };
    /// wyrand state; 0 means "not seeded yet".
    static SPAN_STATE: Cell<u64> = const { Cell::new(0) };
}

impl Batch {
    fn take(&self) -> u128 {
        let mut next = self.next.get();
        if next >= BATCH {
            self.refill();
            next = 0;
        }
        self.next.set(next + 1);
        // Cleared when handed out, so the bits of an id live only in the id.
        self.bits[next].replace(0)
    }

    #[cold]
    fn refill(&self) {
        let fresh = draw::<BATCH>();
        for (slot, value) in self.bits.iter().zip(fresh) {
            slot.set(value);
        }
    }
}

fn draw<const N: usize>() -> [u128; N] {
    let mut values = [0; N];
    rand::fill(&mut values[..]);
    values
}

/// 128 random bits from the thread's batch (or straight from the generator while the
/// thread is being torn down).
pub(crate) fn bits() -> u128 {
    BITS.try_with(Batch::take)
        .unwrap_or_else(|_| draw::<1>()[0])
}

/// A random (version 4) UUID.
pub(crate) fn uuid_v4() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(bits().to_be_bytes()).into_uuid()
}

/// A random non-zero `u64`.
pub(crate) fn span_bits() -> u64 {
    let next = SPAN_STATE.try_with(|state| {
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
    // Truncation intended: any 64 of the 128 random bits; `| 1` keeps the state non-zero.
    #[allow(clippy::cast_possible_truncation)]
    let seed = bits() as u64 | 1;
    seed
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::{BATCH, bits, uuid_v4};

    #[test]
    fn batched_bits_do_not_repeat_across_refills() {
        let drawn: HashSet<u128> = (0..=BATCH * 3).map(|_| bits()).collect();
        assert_eq!(drawn.len(), BATCH * 3 + 1);
        assert!(!drawn.contains(&0));
    }

    #[test]
    fn batched_uuids_are_version_4_rfc_4122() {
        for _ in 0..=BATCH {
            let uuid = uuid_v4();
            assert_eq!(uuid.get_version_num(), 4);
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        }
    }
}
