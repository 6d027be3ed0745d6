//! Async wrappers (feature `tokio`): `save_async`, `restore_async`, and the periodic `Persister`.

use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};
use tokio::{
    sync::{Notify, oneshot},
    task::{JoinError, JoinHandle},
    time::{Instant, MissedTickBehavior},
};

use crate::{CacheEntry, CachePersistence, Restored, SaveReport, SnapshotError};

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
    /// use snapshot::{CacheEntry, CachePersistence};
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
    /// # async fn main() -> Result<(), snapshot::SnapshotError> {
    /// let persistence = snapshot::CachePersistence::new("/nonexistent/dir");
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
/// [`shutdown`](Self::shutdown).
///
/// The `source` closure is called on the task for each save and returns the entries to
/// write (typically a clone of the cache taken under its lock). Requests made while a
/// save is running coalesce into one follow-up save. Errors of periodic saves are
/// logged via `tracing`; the final save's result is returned by `shutdown`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::{sync::{Arc, Mutex}, collections::HashMap, time::Duration};
/// use snapshot::{CacheEntry, CachePersistence, Persister};
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

/// The next periodic tick, or never if there are no periodic saves.
async fn next_tick(ticks: Option<&mut tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Persister {
    /// Starts the task on the current tokio runtime; it saves every `period` (the first
    /// save one `period` from now). A zero `period` means no periodic saves: the task
    /// saves only on [`request_save`](Self::request_save) and at
    /// [`shutdown`](Self::shutdown).
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let persister = snapshot::Persister::spawn(
    ///     snapshot::CachePersistence::new(dir.path()),
    ///     std::time::Duration::from_secs(30),
    ///     || Vec::<(String, snapshot::CacheEntry<u8>)>::new(),
    /// );
    /// # persister.shutdown().await.unwrap();
    /// # }
    /// ```
    pub fn spawn<F, I, K, V>(persistence: CachePersistence, period: Duration, mut source: F) -> Self
    where
        F: FnMut() -> I + Send + 'static,
        I: IntoIterator<Item = (K, CacheEntry<V>)> + Send + 'static,
        K: AsRef<str> + Send,
        V: Serialize + Send,
    {
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
            loop {
                tokio::select! {
                    // Shutdown first, so a pending request cannot delay it.
                    biased;
                    _ = &mut stopped => break,
                    () = woken.notified() => {}
                    () = next_tick(ticks.as_mut()) => {}
                }
                // Errors are logged by `save`; the next period tries again.
                let _ = persistence.save_async(source()).await;
            }
            persistence.save_async(source()).await
        });
        Self {
            requests,
            stop,
            task,
        }
    }

    /// Asks for a save soon, without waiting for it. Requests made while a save runs
    /// coalesce into a single further save.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let persister = snapshot::Persister::spawn(snapshot::CachePersistence::new(dir.path()),
    /// #     std::time::Duration::from_secs(30), || Vec::<(String, snapshot::CacheEntry<u8>)>::new());
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
    /// let persister = snapshot::Persister::spawn(snapshot::CachePersistence::new(dir.path()),
    ///     std::time::Duration::from_secs(30), || vec![("k", snapshot::CacheEntry::new(1))]);
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
