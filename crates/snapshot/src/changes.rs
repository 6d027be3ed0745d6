//! `Changes`: a cheap change counter that lets the `Persister` skip saves of an unchanged cache.

use std::sync::Arc;

use crate::sync::{AtomicU64, Ordering};

/// A counter of changes to a cache, shared between the code that writes the cache and
/// the [`Persister`](crate::Persister) that saves it, so a period in which nothing changed
/// costs no save (and no `fsync`).
///
/// Call [`mark`](Self::mark) after each write (one atomic add; clones share the counter).
/// The `Persister` reads the counter before each save and skips the save if it equals the
/// value read before the last successful one. A mark made while a save runs is never lost:
/// the counter then differs, and the next period saves again. The
/// [`ExpiresAt`](crate::moka::ExpiresAt) policy of the `moka` feature marks inserts and
/// updates by itself.
///
/// ```
/// let changes = keel_snapshot::Changes::new();
/// let writer = changes.clone();
/// assert_eq!(changes.generation(), 0);
/// writer.mark();
/// assert_eq!(changes.generation(), 1);
/// ```
///
/// # Atomic orderings
///
/// `mark` is a `Release` add and `generation` an `Acquire` load, so a save that sees a
/// mark also sees the writes made before it, for data that is not already synchronised
/// by the cache's own lock. Nothing else depends on the counter's value.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    generation: Arc<AtomicU64>,
}

impl Changes {
    /// A counter at zero.
    ///
    /// ```
    /// assert_eq!(keel_snapshot::Changes::new().generation(), 0);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the cache changed.
    ///
    /// ```
    /// let changes = keel_snapshot::Changes::new();
    /// changes.mark();
    /// changes.mark();
    /// assert_eq!(changes.generation(), 2);
    /// ```
    pub fn mark(&self) {
        // Release: pairs with the Acquire in `generation` (see the type's docs). Wrapping
        // is harmless: only equality with an earlier reading matters.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// How many changes have been marked (wrapping at `u64::MAX`).
    ///
    /// ```
    /// assert_eq!(keel_snapshot::Changes::new().generation(), 0);
    /// ```
    pub fn generation(&self) -> u64 {
        // Acquire: pairs with the Release in `mark`.
        self.generation.load(Ordering::Acquire)
    }
}
