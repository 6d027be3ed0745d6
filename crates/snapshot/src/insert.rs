//! Fills a restore's map on a helper thread while the calling thread parses the file:
//! parsing and inserting into a large map cost about the same, so a restore overlaps them.
//!
//! The parser hands over batches of parsed entries through a channel of capacity one, so
//! at most three batches exist at a time (one being filled, one queued, one being
//! inserted); emptied batches come back for reuse.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::mpsc::{Receiver, SyncSender, TrySendError, channel, sync_channel},
    thread,
};

use serde::de::DeserializeOwned;

use crate::{CacheEntry, fast::RawBatch};

/// A parsed entry waiting to be inserted: its key's hash with the map's hasher (0 for a
/// target that does not [need it](Fill::NEEDS_HASH)), the key, and the entry (`None`: an
/// expired entry, which removes its key).
pub(crate) type Pending<V> = (u64, String, Option<CacheEntry<V>>);

/// Where a restore's parsed entries go: the result map ([`Inserter`]), or a caller's
/// sink ([`Deliver`]).
pub(crate) trait Fill<V> {
    /// What the parser's thread may fill itself, beside the helper: see [`Local`].
    type Local: Local<V>;
    /// Whether batches need their keys' hashes (computing them costs the parser).
    const NEEDS_HASH: bool;
    /// Whether the target is sized by [`reserve`](Self::reserve), so the first entries
    /// are worth holding back until the parser can size it for the whole file.
    const SIZED: bool = false;
    /// Whether the fast path hands this target its entries as text ([`RawBatch`]), to be
    /// built on the helper thread by [`insert_raw`](Self::insert_raw): worth it where
    /// the helper has little else to do (a caller's sink), not where inserting already
    /// keeps it as busy as the parser (the result map).
    const TAKES_RAW: bool = false;
    /// The part of the filling the parser's thread does itself.
    fn local(&self) -> Self::Local;
    /// Makes room for `total` entries in all, if that means anything here.
    fn reserve(&mut self, total: usize);
    /// Takes the batch's entries, in file order, leaving it empty.
    fn insert(&mut self, batch: &mut Vec<Pending<V>>);
    /// Entries taken, and earlier entries that later ones replaced.
    fn counts(&self) -> (u64, u64);
    /// Builds and takes the batch's entries, in file order, leaving it empty. Only a
    /// target whose [`TAKES_RAW`](Self::TAKES_RAW) is set is sent raw batches.
    fn insert_raw(&mut self, batch: &mut RawBatch)
    where
        V: DeserializeOwned,
    {
        batch.clear();
    }
    /// Whether a value of a raw batch failed to build, so the file must be read again
    /// by the strict path (see [`Deliver`]); the target is then ready for that.
    fn retry_strictly(&mut self) -> bool {
        false
    }
}

/// The parser thread's share of the filling, for a target both threads can fill (a
/// concurrent cache): the parser keeps the entries it is [offered](Local::offer) that
/// it wants, and the helper gets the rest. Keys are split by hash, so all entries of one
/// key go to the same thread, in file order, and the later one still wins.
pub(crate) trait Local<V> {
    /// Takes `entry` (returning `None`) or hands it back for the helper.
    fn offer(
        &mut self,
        hash: u64,
        key: String,
        entry: CacheEntry<V>,
    ) -> Option<(String, CacheEntry<V>)>;
    /// Entries taken.
    fn taken(&self) -> u64;
}

/// No share: the helper fills everything.
pub(crate) struct Nothing;

impl<V> Local<V> for Nothing {
    fn offer(
        &mut self,
        _: u64,
        key: String,
        entry: CacheEntry<V>,
    ) -> Option<(String, CacheEntry<V>)> {
        Some((key, entry))
    }

    fn taken(&self) -> u64 {
        0
    }
}

/// Fills a concurrent target (`insert(&self, ..)`) from both threads: the helper inserts
/// the keys whose hash is odd, the parser's thread those whose hash is even. For a target
/// whose inserts cost more than parsing (moka), this shares them out.
#[cfg(feature = "moka")]
pub(crate) struct Shared<'a, F> {
    pub(crate) insert: &'a F,
    pub(crate) inserted: u64,
}

#[cfg(feature = "moka")]
impl<V, F: Fn(String, CacheEntry<V>) + Sync> Fill<V> for Shared<'_, F> {
    type Local = Self;
    const NEEDS_HASH: bool = true;

    fn local(&self) -> Self {
        Shared {
            insert: self.insert,
            inserted: 0,
        }
    }

    fn reserve(&mut self, _: usize) {}

    fn insert(&mut self, batch: &mut Vec<Pending<V>>) {
        for (_, key, entry) in batch.drain(..) {
            if let Some(entry) = entry {
                (self.insert)(key, entry);
                self.inserted += 1;
            }
        }
    }

    fn counts(&self) -> (u64, u64) {
        (self.inserted, 0)
    }
}

#[cfg(feature = "moka")]
impl<V, F: Fn(String, CacheEntry<V>)> Local<V> for Shared<'_, F> {
    fn offer(
        &mut self,
        hash: u64,
        key: String,
        entry: CacheEntry<V>,
    ) -> Option<(String, CacheEntry<V>)> {
        if hash & 1 == 1 {
            return Some((key, entry));
        }
        (self.insert)(key, entry);
        self.inserted += 1;
        None
    }

    fn taken(&self) -> u64 {
        self.inserted
    }
}

/// Hands each unexpired entry to a caller's closure, in file order.
///
/// An expired entry is not handed on (it cannot remove what the caller already holds);
/// a repeated key is handed on again, so a sink that inserts keeps the later entry.
///
/// Entries the fast path read arrive as text and are built here. Should a value fail to
/// build (a type that asks for a raw value and then refuses some), nothing more is
/// handed on, and the restore reads the file again by the strict path alone, skipping
/// as many entries as were already handed on (the fast path yields exactly the strict
/// path's entries, in the same order), so the sink sees what a strict read gives it and
/// the verdict is the strict path's.
pub(crate) struct Deliver<F> {
    pub(crate) sink: F,
    pub(crate) delivered: u64,
    /// Entries still to skip, already handed on by a read that is being redone.
    skip: u64,
    /// A raw value failed to build in this read.
    failed: bool,
}

impl<F> Deliver<F> {
    pub(crate) fn new(sink: F) -> Self {
        Self {
            sink,
            delivered: 0,
            skip: 0,
            failed: false,
        }
    }

    fn deliver<V>(&mut self, key: String, entry: CacheEntry<V>)
    where
        F: FnMut(String, CacheEntry<V>),
    {
        if self.skip > 0 {
            self.skip -= 1;
        } else {
            (self.sink)(key, entry);
            self.delivered += 1;
        }
    }
}

impl<V, F: FnMut(String, CacheEntry<V>)> Fill<V> for Deliver<F> {
    type Local = Nothing;
    const NEEDS_HASH: bool = false;
    const TAKES_RAW: bool = true;

    fn local(&self) -> Nothing {
        Nothing
    }

    fn reserve(&mut self, _: usize) {}

    fn insert(&mut self, batch: &mut Vec<Pending<V>>) {
        if self.failed {
            batch.clear();
            return;
        }
        for (_, key, entry) in batch.drain(..) {
            if let Some(entry) = entry {
                self.deliver(key, entry);
            }
        }
    }

    fn counts(&self) -> (u64, u64) {
        (self.delivered, 0)
    }

    fn insert_raw(&mut self, batch: &mut RawBatch)
    where
        V: DeserializeOwned,
    {
        if self.failed {
            batch.clear();
            return;
        }
        if !batch.drain(|key, entry| self.deliver(key, entry)) {
            self.failed = true;
        }
    }

    fn retry_strictly(&mut self) -> bool {
        if !self.failed {
            return false;
        }
        self.failed = false;
        self.skip = self.delivered;
        self.delivered = 0;
        true
    }
}

impl<V, S: BuildHasher> Fill<V> for Inserter<V, S> {
    type Local = Nothing;
    // `HashMap::insert` hashes the key itself, and batches are inserted in file order
    // (see `Inserter::insert`), so a hash computed by the parser would be wasted.
    const NEEDS_HASH: bool = false;
    const SIZED: bool = true;

    fn local(&self) -> Nothing {
        Nothing
    }

    fn reserve(&mut self, total: usize) {
        Inserter::reserve(self, total);
    }

    fn insert(&mut self, batch: &mut Vec<Pending<V>>) {
        Inserter::insert(self, batch);
    }

    fn counts(&self) -> (u64, u64) {
        (self.map.len() as u64, self.superseded)
    }
}

/// The map being filled (with the caller's hasher, `S`), and how many earlier entries
/// later ones replaced.
pub(crate) struct Inserter<V, S = RandomState> {
    pub(crate) map: HashMap<String, CacheEntry<V>, S>,
    pub(crate) superseded: u64,
}

impl<V, S: BuildHasher> Inserter<V, S> {
    pub(crate) fn new(hasher: S) -> Self {
        Self {
            map: HashMap::with_hasher(hasher),
            superseded: 0,
        }
    }

    /// Makes room for `total` entries in all if memory allows. The total (not a number
    /// more) because the parser asks while entries it has read are still on their way
    /// here. The reservation is an optimisation, so a failure to allocate is ignored
    /// (inserting will report it if the entries really do not fit).
    pub(crate) fn reserve(&mut self, total: usize) {
        let _ = self.map.try_reserve(total.saturating_sub(self.map.len()));
    }

    /// Inserts the batch, leaving it empty.
    ///
    /// In file order, on purpose. Sorting a batch by the bucket each key hashes to makes
    /// the inserts walk the table forwards, but it reads the keys (which `insert` hashes
    /// again: `HashMap` takes no precomputed hash) in random order, and they were written
    /// by the parser's core a batch ago: each is a cache miss. In file order the keys lie
    /// one after the other in memory, and measured on a lazy restore of 1M entries this
    /// thread's CPU time fell from about 335 ms (sorted, with the parser hashing every key
    /// for the sort) to about 220 ms; the table's random writes cost less than the
    /// random key reads did.
    pub(crate) fn insert(&mut self, batch: &mut Vec<Pending<V>>) {
        for (_, key, entry) in batch.drain(..) {
            let replaced = match entry {
                Some(entry) => self.map.insert(key, entry).is_some(),
                // A later expired duplicate still removes the earlier value: the file's
                // last word on a key is what counts.
                None => self.map.remove(&key).is_some(),
            };
            if replaced {
                self.superseded += 1;
            }
        }
    }
}

pub(crate) enum Message<V> {
    /// Room for this many entries in all, estimated early in the file.
    Reserve(usize),
    Batch(Vec<Pending<V>>),
    /// Entries the fast path read, as text (only for a target that [takes
    /// them](Fill::TAKES_RAW)).
    Raw(RawBatch),
}

/// Where the parser sends its batches: the helper thread, or (if no thread could be
/// started, and in unit tests) the target on the parser's own thread.
pub(crate) enum Sink<V, T: Fill<V> = Inserter<V>> {
    Thread {
        batches: SyncSender<Message<V>>,
        spare: Receiver<Vec<Pending<V>>>,
        raw_spare: Receiver<RawBatch>,
    },
    Local(T),
}

impl<V, T: Fill<V>> Sink<V, T> {
    pub(crate) fn reserve(&mut self, total: usize) {
        match self {
            // A send fails only if the helper is gone, which `finish` reports.
            Self::Thread { batches, .. } => {
                let _ = batches.send(Message::Reserve(total));
            }
            Self::Local(inserter) => inserter.reserve(total),
        }
    }

    /// Hands over `batch` and replaces it with an empty one (a returned one if any).
    pub(crate) fn send(&mut self, batch: &mut Vec<Pending<V>>) {
        match self {
            Self::Thread { batches, spare, .. } => {
                let empty = spare.try_recv().unwrap_or_default();
                let _ = batches.send(Message::Batch(std::mem::replace(batch, empty)));
            }
            Self::Local(inserter) => inserter.insert(batch),
        }
    }

    /// Hands over a raw `batch` and replaces it with an empty one (a returned one if any).
    pub(crate) fn send_raw(&mut self, batch: &mut RawBatch)
    where
        V: DeserializeOwned,
    {
        match self {
            Self::Thread {
                batches,
                spare,
                raw_spare,
            } => {
                let empty = raw_spare.try_recv().unwrap_or_default();
                let full = std::mem::replace(batch, empty);
                // A send fails only if the helper is gone, which `finish` reports.
                let Err(TrySendError::Full(Message::Raw(full))) =
                    batches.try_send(Message::Raw(full))
                else {
                    return;
                };
                // The helper is behind (a batch is already waiting): build these entries
                // here, so the two threads share the building when the helper is the
                // slower one. The messages keep their order either way.
                let mut built = spare.try_recv().unwrap_or_default();
                if full.build(|key, entry| built.push((0, key, Some(entry)))) {
                    let _ = batches.send(Message::Batch(built));
                    *batch = full;
                    batch.clear();
                } else {
                    // A value failed to build: the helper meets it too, and says so.
                    let _ = batches.send(Message::Raw(full));
                }
            }
            Self::Local(inserter) => inserter.insert_raw(batch),
        }
    }
}

/// Runs `parse` with a sink whose batches go into `target` on a helper thread (and the
/// target's share for the parser's thread), then returns what `parse` returned and the
/// filled target.
///
/// `parse` must drop or hand back nothing of the sink but what it returns: the sink's
/// end of the channel is closed when `parse` returns, which ends the helper.
pub(crate) fn with_inserter<V: DeserializeOwned + Send, T: Fill<V> + Send, O>(
    target: T,
    parse: impl FnOnce(Sink<V, T>, Option<T::Local>) -> (O, Option<T>),
) -> (O, T) {
    thread::scope(|scope| {
        let (batches, inbox) = sync_channel::<Message<V>>(1);
        let (recycle, spare) = channel();
        let (raw_recycle, raw_spare) = channel();
        // The target reaches the helper only once it runs, so that if no thread can be
        // started, the target is still here to fill on this thread.
        let (hand_over, handed) = channel::<T>();
        let helper = thread::Builder::new()
            .name("snapshot-insert".into())
            .spawn_scoped(scope, move || {
                let mut inserter = handed.recv().ok()?;
                for message in inbox {
                    match message {
                        Message::Reserve(total) => inserter.reserve(total),
                        Message::Batch(mut batch) => {
                            inserter.insert(&mut batch);
                            // The parser may have finished; then the batch is just freed.
                            let _ = recycle.send(batch);
                        }
                        Message::Raw(mut batch) => {
                            inserter.insert_raw(&mut batch);
                            let _ = raw_recycle.send(batch);
                        }
                    }
                }
                Some(inserter)
            });
        let Ok(helper) = helper else {
            let (output, local) = parse(Sink::Local(target), None);
            let target = local.expect("a local sink is handed back by `finish`");
            return (output, target);
        };
        // The helper is running and waits for it; it drops the receiver only by returning.
        let local = target.local();
        let _ = hand_over.send(target);
        let sink = Sink::Thread {
            batches,
            spare,
            raw_spare,
        };
        let (output, _) = parse(sink, Some(local));
        match helper.join() {
            Ok(Some(inserter)) => (output, inserter),
            Ok(None) => unreachable!("the target was handed to the running helper"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
