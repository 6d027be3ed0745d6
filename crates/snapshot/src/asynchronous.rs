//! Async wrappers (feature `tokio`): `save_async`, `restore_async`, and the periodic `Persister`.

use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};
use tokio::{
    sync::{Notify, oneshot},
    task::{JoinError, JoinHandle},
    time::{Instant, MissedTickBehavior},
};

use crate::{CacheEntry, CachePersistence, Changes, Restored, SaveReport, SnapshotError};

impl CachePersistence {
    /// [`save`](Self::save) on tokio's blocking thread pool, so the file work never stalls
    /// the async runtime.
    ///
    /// Takes owned entries because the work outlives any borrow: pass a clone of the cache
    /// (or a `Vec` of its entries).
    ///
    /// **Dropping the returned future does not stop the write.** Once started, the save runs
    /// to completion (or failure) on the blocking pool; it simply is not awaited. It stays
    /// atomic either way: the snapshot is whole, old or new.
    ///
    /// # Errors
    ///
    /// As [`save`](Self::save); an [`Io`](SnapshotError::Io) error if the runtime is
    /// shutting down and the task was cancelled before it started.
    ///
    /// # Panics
    ///
    /// Re-raises a panic from the entries' `Serialize` implementation.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use keel_snapshot::{CacheEntry, CachePersistence};
    /// let dir = tempfile::tempdir()?;
    /// let persistence = CachePersistence::new(dir.path());
    /// let cache = vec![("a".to_string(), CacheEntry::new(1_u32))];
    /// persistence.save_async(cache).await?;
    /// let restored = persistence.restore_async::<u32>().await?;
    /// assert_eq!(restored.entries["a"].value, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn save_async<I, K, V>(&self, entries: I) -> Result<SaveReport, SnapshotError>
    where
        I: IntoIterator<Item = (K, CacheEntry<V>)> + Send + 'static,
        K: AsRef<str> + Send,
        V: Serialize + Send,
    {
        let persistence = self.clone();
        let work = tokio::task::spawn_blocking(move || {
            persistence.save_entries::<V, _, _, _>(entries.into_iter())
        });
        join(work.await, self)
    }

    /// [`restore`](Self::restore) on tokio's blocking thread pool.
    ///
    /// # Errors
    ///
    /// As [`restore`](Self::restore).
    ///
    /// # Panics
    ///
    /// Re-raises a panic from `V`'s `Deserialize` implementation.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), keel_snapshot::SnapshotError> {
    /// let persistence = keel_snapshot::CachePersistence::new("/nonexistent/dir");
    /// assert!(persistence.restore_async::<String>().await?.entries.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn restore_async<V>(&self) -> Result<Restored<V>, SnapshotError>
    where
        V: DeserializeOwned + Send + 'static,
    {
        let persistence = self.clone();
        let work = tokio::task::spawn_blocking(move || persistence.restore::<V>());
        join(work.await, self)
    }
}

fn join<T>(
    result: Result<Result<T, SnapshotError>, JoinError>,
    persistence: &CachePersistence,
) -> Result<T, SnapshotError> {
    match result {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(SnapshotError::io(
            "run the blocking task for",
            persistence.path(),
            std::io::Error::other(error.to_string()),
        )),
    }
}

/// A background task that saves a snapshot periodically and on request, and once more on
/// [`shutdown`](Self::shutdown). (The file itself, and every save and restore, belong to
/// [`CachePersistence`]; the `Persister` only decides *when* to save.)
///
/// Two ways to hand it the cache:
///
/// - [`spawn`](Self::spawn) with a `source` closure that returns owned entries (typically
///   a clone of the cache taken under its lock). Simple, but each save copies the whole
///   cache: with values behind an `Arc` (`CacheEntry<Arc<V>>`), the copy is the map's
///   keys and pointers only, and writers are blocked only while it is taken.
/// - [`PersisterBuilder::spawn_saving`] with a closure that saves from a borrowed view,
///   e.g. `|persistence| persistence.save(&*cache.lock().unwrap())`: nothing is copied,
///   but writers wait for the whole save (serialization and `fsync`) while the closure
///   holds the lock. A moka cache (feature `moka`) needs neither: `save_moka` iterates it
///   concurrently with writers, copying one entry at a time.
///
/// With [`PersisterBuilder::skip_unchanged`] and a [`Changes`] counter that the cache's
/// writers [`mark`](Changes::mark), a period in which nothing changed costs nothing: no
/// save, no `fsync`.
///
/// **When saves happen.** The first save happens one `period` after the task starts, or
/// on the first [`request_save`](Self::request_save), or at [`shutdown`](Self::shutdown),
/// whichever comes first; it is never skipped (the task cannot know what the file holds).
/// After that, every `period` and on request, unless nothing changed since the last
/// successful save. Requests made while a save is running coalesce into one follow-up
/// save. Errors of periodic saves are logged via `tracing`, and the next period tries
/// again even if nothing changed; the final save's result is returned by `shutdown`.
/// The closures run on tokio's blocking pool.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::{sync::{Arc, Mutex}, collections::HashMap, time::Duration};
/// use keel_snapshot::{CacheEntry, CachePersistence, Persister};
///
/// let dir = tempfile::tempdir()?;
/// let cache = Arc::new(Mutex::new(HashMap::new()));
/// let persistence = CachePersistence::new(dir.path());
/// let source = Arc::clone(&cache);
/// let persister = Persister::spawn(persistence.clone(), Duration::from_secs(60), move || {
///     source.lock().unwrap().clone()
/// });
/// cache.lock().unwrap().insert("k".to_string(), CacheEntry::new("v".to_string()));
/// persister.shutdown().await?; // the final save sees the insert
/// assert_eq!(persistence.restore::<String>()?.entries.len(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Persister {
    requests: std::sync::Arc<Notify>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<SaveReport, SnapshotError>>,
}

/// Settings for a [`Persister`] before it starts: [`Persister::builder`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::{collections::HashMap, sync::{Arc, Mutex}, time::Duration};
/// use keel_snapshot::{CacheEntry, CachePersistence, Changes, Persister};
///
/// let dir = tempfile::tempdir()?;
/// let persistence = CachePersistence::new(dir.path());
/// let cache = Arc::new(Mutex::new(HashMap::<String, CacheEntry<u32>>::new()));
/// let changes = Changes::new();
///
/// let view = Arc::clone(&cache);
/// let persister = Persister::builder(persistence.clone(), Duration::from_secs(30))
///     .skip_unchanged(changes.clone())
///     // Serializes from the locked map: no copy of the values.
///     .spawn_saving(move |persistence| persistence.save(&*view.lock().unwrap()));
///
/// cache.lock().unwrap().insert("k".into(), CacheEntry::new(1));
/// changes.mark();
/// persister.shutdown().await?;
/// assert_eq!(persistence.restore::<u32>()?.entries["k"].value, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until spawned"]
pub struct PersisterBuilder {
    persistence: CachePersistence,
    period: Duration,
    changes: Option<Changes>,
}

/// The next periodic tick, or never if there are no periodic saves.
async fn next_tick(ticks: Option<&mut tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Runs the `save` closure on the blocking pool and puts it back for the next save.
///
/// If the blocking task is cancelled (the runtime is shutting down), the closure is gone
/// with it, and this and every later save is an `Io` error.
async fn save_blocking<F>(
    save: &mut Option<F>,
    persistence: &CachePersistence,
) -> Result<SaveReport, SnapshotError>
where
    F: FnMut(&CachePersistence) -> Result<SaveReport, SnapshotError> + Send + 'static,
{
    let cancelled = |reason: String| {
        SnapshotError::io(
            "run the blocking task for",
            persistence.path(),
            std::io::Error::other(reason),
        )
    };
    let Some(mut closure) = save.take() else {
        return Err(cancelled("an earlier save task was cancelled".into()));
    };
    let blocking_persistence = persistence.clone();
    let work = tokio::task::spawn_blocking(move || {
        let result = closure(&blocking_persistence);
        (closure, result)
    });
    match work.await {
        Ok((closure, result)) => {
            *save = Some(closure);
            result
        }
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(cancelled(error.to_string())),
    }
}

impl PersisterBuilder {
    /// Skips a periodic or requested save (and the final one) when `changes` has not been
    /// [marked](Changes::mark) since the last successful save. The first save is never
    /// skipped. A skipped final save returns the last successful save's report.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let changes = keel_snapshot::Changes::new();
    /// let persister = keel_snapshot::Persister::builder(
    ///     keel_snapshot::CachePersistence::new(dir.path()),
    ///     std::time::Duration::from_secs(30),
    /// )
    /// .skip_unchanged(changes.clone())
    /// .spawn(|| vec![("k", keel_snapshot::CacheEntry::new(1))]);
    /// # persister.shutdown().await.unwrap();
    /// # }
    /// ```
    pub fn skip_unchanged(mut self, changes: Changes) -> Self {
        self.changes = Some(changes);
        self
    }

    /// Starts the task with a `source` of owned entries: see [`Persister::spawn`].
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let persister = keel_snapshot::Persister::builder(
    ///     keel_snapshot::CachePersistence::new(dir.path()),
    ///     std::time::Duration::from_secs(30),
    /// )
    /// .spawn(|| Vec::<(String, keel_snapshot::CacheEntry<u8>)>::new());
    /// # persister.shutdown().await.unwrap();
    /// # }
    /// ```
    pub fn spawn<F, I, K, V>(self, mut source: F) -> Persister
    where
        F: FnMut() -> I + Send + 'static,
        I: IntoIterator<Item = (K, CacheEntry<V>)>,
        K: AsRef<str> + Send,
        V: Serialize + Send,
    {
        self.spawn_saving(move |persistence| {
            persistence.save_entries::<V, _, _, _>(source().into_iter())
        })
    }

    /// Starts the task with a closure that performs each save itself, typically from a
    /// borrowed view of the cache (`persistence.save(&*cache.lock().unwrap())`), so no
    /// value is cloned. The closure runs on tokio's blocking pool; while it holds the
    /// cache's lock, the cache's writers wait (see [`Persister`] for the trade-off).
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let cache = std::collections::BTreeMap::from([("k", keel_snapshot::CacheEntry::new(1))]);
    /// let persister = keel_snapshot::Persister::builder(
    ///     keel_snapshot::CachePersistence::new(dir.path()),
    ///     std::time::Duration::from_secs(30),
    /// )
    /// .spawn_saving(move |persistence| persistence.save(&cache));
    /// assert_eq!(persister.shutdown().await.unwrap().entries, 1);
    /// # }
    /// ```
    pub fn spawn_saving<F>(self, save: F) -> Persister
    where
        F: FnMut(&CachePersistence) -> Result<SaveReport, SnapshotError> + Send + 'static,
    {
        let Self {
            persistence,
            period,
            changes,
        } = self;
        let requests = std::sync::Arc::new(Notify::new());
        let (stop, mut stopped) = oneshot::channel();
        let woken = std::sync::Arc::clone(&requests);
        let task = tokio::spawn(async move {
            let mut ticks = (!period.is_zero()).then(|| {
                let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
                // A save longer than the period is followed by one save, not a burst.
                ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
                ticks
            });
            let mut save = Some(save);
            // The change count read before the last successful save, and its report.
            let mut saved: Option<(Option<u64>, SaveReport)> = None;
            let unchanged = |saved: &Option<(Option<u64>, SaveReport)>| match (&changes, saved) {
                (Some(changes), Some((Some(generation), _))) => changes.generation() == *generation,
                _ => false,
            };
            loop {
                tokio::select! {
                    // Shutdown first, so a pending request cannot delay it.
                    biased;
                    _ = &mut stopped => break,
                    () = woken.notified() => {}
                    () = next_tick(ticks.as_mut()) => {}
                }
                if unchanged(&saved) {
                    tracing::debug!(path = %persistence.path().display(), "cache unchanged since the last save; save skipped");
                    continue;
                }
                // Read before the save, so a change made during it triggers the next one.
                let generation = changes.as_ref().map(Changes::generation);
                let result = save_blocking(&mut save, &persistence).await;
                // Errors are logged by `save`; the next period tries again.
                if let Ok(report) = result {
                    saved = Some((generation, report));
                }
            }
            if unchanged(&saved)
                && let Some((_, report)) = saved
            {
                return Ok(report);
            }
            save_blocking(&mut save, &persistence).await
        });
        Persister {
            requests,
            stop,
            task,
        }
    }
}

impl Persister {
    /// Starts the task on the current tokio runtime; it saves every `period` (the first
    /// save one `period` from now) the entries that `source` returns. A zero `period`
    /// means no periodic saves: the task saves only on
    /// [`request_save`](Self::request_save) and at [`shutdown`](Self::shutdown).
    ///
    /// The same as `Persister::builder(persistence, period).spawn(source)`; see
    /// [`builder`](Self::builder) to skip unchanged saves or to save without copying.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let persister = keel_snapshot::Persister::spawn(
    ///     keel_snapshot::CachePersistence::new(dir.path()),
    ///     std::time::Duration::from_secs(30),
    ///     || Vec::<(String, keel_snapshot::CacheEntry<u8>)>::new(),
    /// );
    /// # persister.shutdown().await.unwrap();
    /// # }
    /// ```
    pub fn spawn<F, I, K, V>(persistence: CachePersistence, period: Duration, source: F) -> Self
    where
        F: FnMut() -> I + Send + 'static,
        I: IntoIterator<Item = (K, CacheEntry<V>)>,
        K: AsRef<str> + Send,
        V: Serialize + Send,
    {
        Self::builder(persistence, period).spawn(source)
    }

    /// A [`PersisterBuilder`] for a task that saves every `period` (zero: only on request
    /// and at shutdown).
    ///
    /// ```
    /// let builder = keel_snapshot::Persister::builder(
    ///     keel_snapshot::CachePersistence::new(".cache"),
    ///     std::time::Duration::from_secs(30),
    /// );
    /// # drop(builder);
    /// ```
    pub fn builder(persistence: CachePersistence, period: Duration) -> PersisterBuilder {
        PersisterBuilder {
            persistence,
            period,
            changes: None,
        }
    }

    /// Asks for a save soon, without waiting for it. Requests made while a save runs
    /// coalesce into a single further save.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let persister = keel_snapshot::Persister::spawn(keel_snapshot::CachePersistence::new(dir.path()),
    /// #     std::time::Duration::from_secs(30), || Vec::<(String, keel_snapshot::CacheEntry<u8>)>::new());
    /// persister.request_save();
    /// persister.request_save(); // coalesced with the first
    /// # persister.shutdown().await.unwrap();
    /// # }
    /// ```
    pub fn request_save(&self) {
        // `notify_one` stores at most one permit, which is exactly the coalescing we want.
        self.requests.notify_one();
    }

    /// Stops the periodic saves, waits for a save in progress, performs a final save, and
    /// returns its result.
    ///
    /// # Errors
    ///
    /// The final save's error.
    ///
    /// # Panics
    ///
    /// Re-raises a panic from the `source` closure or the entries' `Serialize`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let persister = keel_snapshot::Persister::spawn(keel_snapshot::CachePersistence::new(dir.path()),
    ///     std::time::Duration::from_secs(30), || vec![("k", keel_snapshot::CacheEntry::new(1))]);
    /// let report = persister.shutdown().await.unwrap();
    /// assert_eq!(report.entries, 1);
    /// # }
    /// ```
    pub async fn shutdown(self) -> Result<SaveReport, SnapshotError> {
        // The task may only have ended by panicking, which `await` reports below.
        let _ = self.stop.send(());
        match self.task.await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(SnapshotError::io(
                "finish the persister task for",
                std::path::Path::new(crate::SNAPSHOT_FILE_NAME),
                std::io::Error::other(error.to_string()),
            )),
        }
    }
}
