//! The save path: a durable, atomic write of the whole snapshot through a temp file.

use std::{
    borrow::Borrow,
    fs::{self, File},
    io::{self, BufWriter, Write as _},
    path::Path,
    sync::PoisonError,
    time::Instant,
};

use serde::Serialize;

use super::{CachePersistence, SaveReport, WRITE_BUFFER_BYTES, duration_millis};
use crate::{CacheEntry, SnapshotError, entry::epoch_millis, parallel::write_document};

impl CachePersistence {
    /// Writes all `entries` as the new snapshot, durably and atomically.
    ///
    /// Accepts anything iterable as `(key, &CacheEntry<V>)` pairs: `&HashMap<String, _>`,
    /// `&BTreeMap<&str, _>`, or a cache's own iterator; nothing is copied. Expired entries
    /// are written as given (a restore drops them).
    ///
    /// The entries go to a uniquely named temp file in the same directory, which is
    /// flushed, `fsync`ed, renamed over the snapshot, and then the directory is `fsync`ed;
    /// only then does this return `Ok` and update
    /// [`last_persist_time`](Self::last_persist_time). Savers in this process and in other
    /// processes are serialised by a mutex and an OS lock on
    /// `cache-snapshot.json.lock`; the last to finish wins.
    ///
    /// From 256 entries on, the entries are serialized on worker threads (see
    /// [Threads](crate#threads)): batches of references to them cross threads, which is
    /// why keys must be `Send` and values `Sync`. The file is byte-for-byte what a single
    /// thread would write.
    ///
    /// # Errors
    ///
    /// [`SnapshotError::Unrepresentable`] if a value has no faithful JSON form (NaN or
    /// infinite floats, non-string map keys), naming its key (the first such entry in
    /// iteration order); [`SnapshotError::Io`] if
    /// the directory, lock, temp file, write, sync or rename fails. In every error case the
    /// temp file is removed and the previous snapshot is untouched, except when the
    /// directory `fsync` after the rename fails: then the new snapshot is in place but may
    /// not be durable, and the error says so.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use keel_snapshot::{CacheEntry, CachePersistence, SnapshotError};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let persistence = CachePersistence::new(dir.path());
    /// let mut cache = BTreeMap::new();
    /// cache.insert("pi", CacheEntry::new(3.14));
    /// assert_eq!(persistence.save(&cache)?.entries, 1);
    ///
    /// cache.insert("oops", CacheEntry::new(f64::NAN));
    /// let error = persistence.save(&cache).unwrap_err();
    /// assert!(matches!(&error, SnapshotError::Unrepresentable { key, .. } if key == "oops"));
    /// assert_eq!(persistence.restore::<f64>()?.entries.len(), 1, "the old snapshot is intact");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save<'a, I, K, V>(&self, entries: I) -> Result<SaveReport, SnapshotError>
    where
        I: IntoIterator<Item = (K, &'a CacheEntry<V>)>,
        K: AsRef<str> + Send,
        V: Serialize + Sync + 'a,
    {
        self.save_entries::<V, _, _, _>(entries.into_iter())
    }

    /// [`save`](Self::save) for iterators of owned or borrowed entries.
    pub(crate) fn save_entries<V, I, K, E>(&self, entries: I) -> Result<SaveReport, SnapshotError>
    where
        I: Iterator<Item = (K, E)>,
        K: AsRef<str> + Send,
        E: Borrow<CacheEntry<V>> + Send,
        V: Serialize,
    {
        let started = Instant::now();
        let result = self.save_locked(entries, started);
        match &result {
            Ok(report) => tracing::info!(
                path = %self.path.display(),
                entries = report.entries,
                bytes = report.bytes,
                swept_temp_files = report.swept_temp_files,
                duration_ms = duration_millis(report.duration),
                "cache snapshot saved"
            ),
            Err(error) => tracing::error!(
                path = %self.path.display(),
                %error,
                duration_ms = duration_millis(started.elapsed()),
                "cache snapshot save failed"
            ),
        }
        result
    }

    fn save_locked<V, I, K, E>(
        &self,
        entries: I,
        started: Instant,
    ) -> Result<SaveReport, SnapshotError>
    where
        I: Iterator<Item = (K, E)>,
        K: AsRef<str> + Send,
        E: Borrow<CacheEntry<V>> + Send,
        V: Serialize,
    {
        create_directory_durably(&self.directory)?;
        let _guard = self.lock()?;
        let swept_temp_files = self.sweep_temp_files();

        let (file, temp) = self.create_temp_file()?;
        // A cache may hold private data, so new files are 0600; but an operator who chose
        // other permissions for the existing snapshot keeps them.
        if let Ok(metadata) = fs::metadata(&self.path) {
            file.set_permissions(metadata.permissions())
                .map_err(|error| SnapshotError::io("set the permissions of", &temp.path, error))?;
        }

        let timestamp = (self.clock)();
        let mut written = 0;
        let file = write_ahead_synced(file, &temp.path, |writer| {
            written = write_document(writer, epoch_millis(timestamp), entries, &temp.path)?;
            Ok(())
        })?;
        steps::record("write", &temp.path);
        file.sync_all()
            .map_err(|error| SnapshotError::io("sync", &temp.path, error))?;
        steps::record("fsync", &temp.path);
        let bytes = file
            .metadata()
            .map_err(|error| SnapshotError::io("stat", &temp.path, error))?
            .len();
        drop(file);

        fs::rename(&temp.path, &self.path)
            .map_err(|error| SnapshotError::io("replace the snapshot with", &temp.path, error))?;
        steps::record("rename", &self.path);
        let mut temp = temp;
        temp.armed = false;
        // The rename is only durable once the directory entry is.
        sync_directory(&self.directory).map_err(|error| match error {
            SnapshotError::Io { path, source, .. } => SnapshotError::Io {
                action: "make the new snapshot durable (it is in place, but may not survive a crash) by syncing",
                path,
                source,
            },
            other => other,
        })?;
        steps::record("ok", &self.path);

        *self
            .shared
            .last_persist_time
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(timestamp);
        Ok(SaveReport {
            entries: written,
            bytes,
            swept_temp_files,
            duration: started.elapsed(),
        })
    }

    pub(super) fn sync_directory(&self) -> Result<(), SnapshotError> {
        sync_directory(&self.directory)
    }
}

/// Bytes written between background `fdatasync`s.
const SYNC_AHEAD_BYTES: u64 = 16 << 20;

/// Runs `write` on a buffered writer over `file` while a helper thread `fdatasync`s what
/// has been written so far every [`SYNC_AHEAD_BYTES`], so the disk works while
/// serialization continues and the caller's final `fsync` has little left to do.
///
/// A background sync error fails the save: on Linux an fsync error is reported once per
/// open file, so the final `sync_all` on the same file might not see it again.
fn write_ahead_synced(
    file: File,
    temp_path: &Path,
    write: impl FnOnce(&mut BufWriter<SyncAhead>) -> Result<(), SnapshotError>,
) -> Result<File, SnapshotError> {
    let helper_file = file
        .try_clone()
        .map_err(|error| SnapshotError::io("open", temp_path, error))?;
    let (requests, wakeups) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("snapshot-sync".into())
            .spawn_scoped(scope, move || {
                for () in wakeups {
                    helper_file.sync_data()?;
                }
                Ok::<(), io::Error>(())
            });
        // Without a helper thread the save still works; it just syncs at the end.
        let requests = helper.is_ok().then_some(requests);
        let mut writer = BufWriter::with_capacity(
            WRITE_BUFFER_BYTES,
            SyncAhead {
                file,
                requests,
                unsynced: 0,
            },
        );
        let written = write(&mut writer).and_then(|()| {
            writer
                .flush()
                .map_err(|error| SnapshotError::io("write", temp_path, error))
        });
        // Dropping the writer (or its sender) ends the helper's loop.
        let finished = written.and_then(|()| {
            writer
                .into_inner()
                .map_err(|error| SnapshotError::io("write", temp_path, error.into_error()))
        });
        match helper {
            Ok(helper) => {
                let file = finished.map(|mut sync_ahead| {
                    sync_ahead.requests = None;
                    sync_ahead.file
                });
                match helper.join() {
                    Ok(result) => {
                        result.map_err(|error| SnapshotError::io("sync", temp_path, error))
                    }
                    Err(panic) => std::panic::resume_unwind(panic),
                }
                .and(file)
            }
            Err(_) => finished.map(|sync_ahead| sync_ahead.file),
        }
    })
}

/// The file under the save's `BufWriter`: counts bytes and wakes the sync helper.
struct SyncAhead {
    file: File,
    requests: Option<std::sync::mpsc::SyncSender<()>>,
    unsynced: u64,
}

impl io::Write for SyncAhead {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.file.write(bytes)?;
        self.unsynced += written as u64;
        if self.unsynced >= SYNC_AHEAD_BYTES {
            self.unsynced = 0;
            if let Some(requests) = &self.requests {
                // Full means a sync is already pending, which will cover these bytes too.
                let _ = requests.try_send(());
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn sync_directory(directory: &Path) -> Result<(), SnapshotError> {
    File::open(directory)
        .and_then(|opened| opened.sync_all())
        .map_err(|error| SnapshotError::io("sync the directory", directory, error))?;
    steps::record("fsync-dir", directory);
    Ok(())
}

/// A log of a save's file system steps, kept only in unit tests, so they can check the
/// order that durability depends on (nothing else can observe an `fsync`).
pub(super) mod steps {
    use std::path::Path;

    #[cfg(test)]
    thread_local! {
        static STEPS: std::cell::RefCell<Vec<(String, std::path::PathBuf)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }

    #[cfg(test)]
    pub(super) fn record(step: &str, path: &Path) {
        STEPS.with(|steps| {
            steps
                .borrow_mut()
                .push((step.to_string(), path.to_path_buf()));
        });
    }

    #[cfg(not(test))]
    pub(super) fn record(_: &str, _: &Path) {}

    /// Takes this thread's log.
    #[cfg(test)]
    pub(super) fn take() -> Vec<(String, std::path::PathBuf)> {
        STEPS.with(|steps| std::mem::take(&mut *steps.borrow_mut()))
    }
}

/// Creates `directory` and its missing ancestors, and `fsync`s the parent of each one it
/// created, so the new directories survive a power cut along with the snapshot.
fn create_directory_durably(directory: &Path) -> Result<(), SnapshotError> {
    let mut missing = Vec::new();
    let mut current = directory;
    while matches!(fs::symlink_metadata(current), Err(error) if error.kind() == io::ErrorKind::NotFound)
    {
        missing.push(current);
        match current.parent() {
            Some(parent) => current = parent,
            None => break,
        }
    }
    fs::create_dir_all(directory)
        .map_err(|error| SnapshotError::io("create the cache directory", directory, error))?;
    for created in missing {
        let parent = match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        sync_directory(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::PathBuf};

    use super::steps;
    use crate::{CacheEntry, CachePersistence};

    fn save_steps(persistence: &CachePersistence) -> Vec<(String, PathBuf)> {
        steps::take();
        let cache = BTreeMap::from([("k", CacheEntry::new(1))]);
        persistence.save(&cache).unwrap();
        steps::take()
    }

    #[test]
    fn a_save_writes_syncs_renames_then_syncs_the_directory() {
        let directory = tempfile::tempdir().unwrap();
        let persistence = CachePersistence::new(directory.path());
        save_steps(&persistence);
        let steps = save_steps(&persistence);
        let names: Vec<&str> = steps.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["write", "fsync", "rename", "fsync-dir", "ok"]);
        assert_eq!(steps[0].1, steps[1].1, "the temp file is synced");
        assert_eq!(steps[2].1, persistence.path());
        assert_eq!(steps[3].1, directory.path());
    }

    #[test]
    fn a_new_cache_directory_is_made_durable_up_to_an_existing_ancestor() {
        let root = tempfile::tempdir().unwrap();
        let directory = root.path().join("a").join("b");
        let persistence = CachePersistence::new(&directory);
        let synced: Vec<PathBuf> = save_steps(&persistence)
            .into_iter()
            .filter(|(name, _)| name == "fsync-dir")
            .map(|(_, path)| path)
            .collect();
        for parent in [root.path().to_path_buf(), root.path().join("a")] {
            assert!(
                synced.contains(&parent),
                "{} not synced: {synced:?}",
                parent.display()
            );
        }
    }
}
