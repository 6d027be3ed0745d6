//! Persisting moka caches (feature `moka`): save a `Cache<String, CacheEntry<V>>`, restore
//! straight into one, and keep each entry's remaining time to live across the restart.
//!
//! moka keeps expiry as a monotonic `Instant`, which means nothing after a restart, so
//! a restarted cache would give every entry a fresh TTL. Here the expiry lives in the
//! entry as wall-clock epoch milliseconds ([`CacheEntry::expires_at`]), and the
//! [`ExpiresAt`] policy tells moka, whenever an entry is inserted (by the application or
//! by a restore), how long it has left: a restored entry expires when it would have, and
//! an entry that expired while the service was down never comes back.
//!
//! ```
//! use moka::sync::Cache;
//! use keel_snapshot::{CacheEntry, CachePersistence, moka::ExpiresAt};
//!
//! let dir = tempfile::tempdir()?;
//! let persistence = CachePersistence::new(dir.path());
//! let in_an_hour = keel_snapshot::moka::epoch_millis_now() + 3_600_000;
//!
//! let cache: Cache<String, CacheEntry<String>> =
//!     Cache::builder().expire_after(ExpiresAt::new()).build();
//! cache.insert("user:1".into(), CacheEntry::new("Ada".into()).expiring_at(in_an_hour));
//! persistence.save_moka(&cache)?;
//!
//! // After a restart: a new cache with the same policy.
//! let restarted: Cache<String, CacheEntry<String>> =
//!     Cache::builder().expire_after(ExpiresAt::new()).build();
//! let report = persistence.restore_moka(&restarted)?;
//! assert_eq!(report.loaded, 1);
//! assert_eq!(restarted.get("user:1").unwrap().value, "Ada");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With the [`Persister`](crate::Persister) (features `moka` and `tokio`), save from the
//! cache itself, which moka lets writers use meanwhile:
//! `Persister::builder(persistence, period).skip_unchanged(changes).spawn_saving(move |p| p.save_moka(&cache))`,
//! with `ExpiresAt::new().marking(changes)` so every insert counts as a change.

use std::{
    hash::BuildHasher,
    sync::Arc,
    task::{Context, Poll, Wake, Waker},
    time::{Duration, Instant, SystemTime},
};

use moka::Expiry;
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    CacheEntry, CachePersistence, Changes, RestoreReport, SaveReport, SnapshotError,
    entry::{epoch_millis, from_epoch_millis},
};

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// A moka [`Expiry`] that expires each [`CacheEntry`] at its wall-clock
/// [`expires_at`](CacheEntry::expires_at), so an entry keeps its remaining time to live
/// across a save and restore. An entry without `expires_at` never expires (moka's other
/// policies, such as `max_capacity` or `time_to_idle`, still apply).
///
/// On every insert and update, moka asks how long the entry has left: `expires_at` minus
/// now, zero if already past (moka then never returns it). Reads leave the expiry as it
/// is.
///
/// ```
/// use std::time::{Duration, Instant, UNIX_EPOCH};
/// use moka::Expiry;
/// use keel_snapshot::{CacheEntry, moka::ExpiresAt};
///
/// let policy = ExpiresAt::new().with_clock(|| UNIX_EPOCH + Duration::from_millis(1_000));
/// let key = "k".to_string();
/// let entry = CacheEntry::new(()).expiring_at(61_000);
/// assert_eq!(policy.expire_after_create(&key, &entry, Instant::now()), Some(Duration::from_secs(60)));
/// let stale = CacheEntry::new(()).expiring_at(500);
/// assert_eq!(policy.expire_after_create(&key, &stale, Instant::now()), Some(Duration::ZERO));
/// assert_eq!(policy.expire_after_create(&key, &CacheEntry::new(()), Instant::now()), None);
/// ```
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "moka")))]
pub struct ExpiresAt {
    clock: Clock,
    changes: Option<Changes>,
}

impl std::fmt::Debug for ExpiresAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpiresAt")
            .field("changes", &self.changes)
            .finish_non_exhaustive()
    }
}

impl Default for ExpiresAt {
    fn default() -> Self {
        Self::new()
    }
}

impl ExpiresAt {
    /// The policy, reading the time from [`SystemTime::now`].
    ///
    /// ```
    /// let cache: moka::sync::Cache<String, keel_snapshot::CacheEntry<u8>> =
    ///     moka::sync::Cache::builder().expire_after(keel_snapshot::moka::ExpiresAt::new()).build();
    /// # drop(cache);
    /// ```
    pub fn new() -> Self {
        Self {
            clock: Arc::new(SystemTime::now),
            changes: None,
        }
    }

    /// Reads the time from `clock` instead (tests use it to pin the time). Use the same
    /// clock as the [`CachePersistence`] that restores, so both agree on what expired.
    ///
    /// ```
    /// let policy = keel_snapshot::moka::ExpiresAt::new().with_clock(std::time::SystemTime::now);
    /// # drop(policy);
    /// ```
    #[must_use]
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Also [marks](Changes::mark) `changes` on every insert and update, so a
    /// [`Persister`](crate::Persister) that skips unchanged saves sees them without the
    /// application marking anything. (Removals are not seen by an `Expiry`; mark them
    /// from moka's `eviction_listener` if an invalidation must reach the file before the
    /// next insert does.)
    ///
    /// ```
    /// let changes = keel_snapshot::Changes::new();
    /// let cache: moka::sync::Cache<String, keel_snapshot::CacheEntry<u8>> = moka::sync::Cache::builder()
    ///     .expire_after(keel_snapshot::moka::ExpiresAt::new().marking(changes.clone()))
    ///     .build();
    /// cache.insert("k".into(), keel_snapshot::CacheEntry::new(1));
    /// assert_eq!(changes.generation(), 1);
    /// ```
    #[must_use]
    pub fn marking(mut self, changes: Changes) -> Self {
        self.changes = Some(changes);
        self
    }

    /// How long `entry` has left at this policy's now.
    fn remaining<V>(&self, entry: &CacheEntry<V>) -> Option<Duration> {
        if let Some(changes) = &self.changes {
            changes.mark();
        }
        let expires_at = from_epoch_millis(entry.expires_at?);
        Some(
            expires_at
                .duration_since((self.clock)())
                .unwrap_or(Duration::ZERO),
        )
    }
}

impl<V> Expiry<String, CacheEntry<V>> for ExpiresAt {
    fn expire_after_create(
        &self,
        _: &String,
        entry: &CacheEntry<V>,
        _: Instant,
    ) -> Option<Duration> {
        self.remaining(entry)
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &CacheEntry<V>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.remaining(entry)
    }
}

/// The current wall-clock time in epoch milliseconds, the unit of
/// [`CacheEntry::expires_at`].
///
/// ```
/// assert!(keel_snapshot::moka::epoch_millis_now() > 1_700_000_000_000);
/// ```
pub fn epoch_millis_now() -> u64 {
    epoch_millis(SystemTime::now())
}

/// A moka key as the save reads it: shared with the cache, not copied.
struct SharedKey(Arc<String>);

impl AsRef<str> for SharedKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The moka caches a snapshot can be saved from and restored into: `moka::sync::Cache`
/// and `moka::future::Cache`, keyed by `String`, holding [`CacheEntry`]s. Sealed.
#[cfg_attr(docsrs, doc(cfg(feature = "moka")))]
pub trait MokaCache<V>: sealed::Sealed {
    /// Every entry moka holds now (not expired), each cloned as it is read.
    #[doc(hidden)]
    fn entries(&self) -> impl Iterator<Item = (Arc<String>, CacheEntry<V>)> + '_;
    /// Inserts one entry, blocking until it is in.
    #[doc(hidden)]
    fn insert_blocking(&self, key: String, entry: CacheEntry<V>);
}

mod sealed {
    pub trait Sealed {}
    impl<V, S> Sealed for moka::sync::Cache<String, crate::CacheEntry<V>, S> {}
    impl<V, S> Sealed for moka::future::Cache<String, crate::CacheEntry<V>, S> {}
}

impl<V, S> MokaCache<V> for moka::sync::Cache<String, CacheEntry<V>, S>
where
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    fn entries(&self) -> impl Iterator<Item = (Arc<String>, CacheEntry<V>)> + '_ {
        self.iter()
    }

    fn insert_blocking(&self, key: String, entry: CacheEntry<V>) {
        self.insert(key, entry);
    }
}

impl<V, S> MokaCache<V> for moka::future::Cache<String, CacheEntry<V>, S>
where
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    fn entries(&self) -> impl Iterator<Item = (Arc<String>, CacheEntry<V>)> + '_ {
        self.iter()
    }

    fn insert_blocking(&self, key: String, entry: CacheEntry<V>) {
        block_on(self.insert(key, entry));
    }
}

/// Wakes the thread that polls, for [`block_on`].
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to completion on this thread. moka's futures need no runtime; the
/// restore's helper thread is not a runtime thread, so blocking it is fine.
fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "moka")))]
impl CachePersistence {
    /// Saves every entry of a moka cache (`sync` or `future`), as [`save`](Self::save)
    /// does, while the cache stays usable: moka's iterator runs concurrently with
    /// writers, so an entry inserted or removed during the save may or may not be in the
    /// file, but the file is always one whole snapshot. Each entry is cloned as it is
    /// read (moka hands out clones), and only the batches in flight are held, never a
    /// copy of the whole cache; keep large values behind an `Arc` to make that cheap.
    ///
    /// It blocks: from async code, call it on the blocking pool (the
    /// [`Persister`](crate::Persister) does).
    ///
    /// # Errors
    ///
    /// As [`save`](Self::save).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let cache = moka::future::Cache::<String, keel_snapshot::CacheEntry<u32>>::new(100);
    /// # let rt = tokio::runtime::Builder::new_current_thread().build()?;
    /// rt.block_on(cache.insert("k".into(), keel_snapshot::CacheEntry::new(1)));
    /// let report = keel_snapshot::CachePersistence::new(dir.path()).save_moka(&cache)?;
    /// assert_eq!(report.entries, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_moka<V, C>(&self, cache: &C) -> Result<SaveReport, SnapshotError>
    where
        C: MokaCache<V>,
        V: Serialize + Send,
    {
        self.save_entries::<V, _, _, _>(cache.entries().map(|(key, entry)| (SharedKey(key), entry)))
    }

    /// Restores the snapshot straight into a moka cache (`sync` or `future`), as
    /// [`restore_into`](Self::restore_into) does: no intermediate map, expired entries
    /// dropped as read. Since moka inserts cost more than parsing, they are shared out:
    /// the restore's helper thread inserts half of the keys (by hash) while this thread
    /// parses and inserts the other half; all entries of one key go to the same thread,
    /// in file order.
    /// Build the cache with [`ExpiresAt`] so each entry keeps its remaining time to live.
    ///
    /// It blocks (a `future` cache's inserts are driven on the helper thread): from async
    /// code, call it on the blocking pool.
    ///
    /// # Errors
    ///
    /// As [`restore_into`](Self::restore_into): on an error the cache already holds the
    /// entries before the bad one; `invalidate_all` it, or restore into a fresh cache.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let persistence = keel_snapshot::CachePersistence::new(dir.path());
    /// persistence.save(&std::collections::BTreeMap::from([("k", keel_snapshot::CacheEntry::new(1_u32))]))?;
    /// let cache = moka::sync::Cache::builder()
    ///     .expire_after(keel_snapshot::moka::ExpiresAt::new())
    ///     .build();
    /// persistence.restore_moka(&cache)?;
    /// assert_eq!(cache.get("k").map(|entry: keel_snapshot::CacheEntry<u32>| entry.value), Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn restore_moka<V, C>(&self, cache: &C) -> Result<RestoreReport, SnapshotError>
    where
        C: MokaCache<V> + Sync,
        V: DeserializeOwned + Send,
    {
        self.restore_into_shared(&|key, entry| cache.insert_blocking(key, entry))
    }
}
