//! `CachePersistence`: durable atomic save, streaming restore, quarantine, and locking.

use std::{
    borrow::Borrow,
    collections::HashMap,
    fs::{self, File, OpenOptions},
    hash::RandomState,
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    CacheEntry, SnapshotError,
    entry::{epoch_millis, from_epoch_millis},
    format::{Failure, Restoring, read_document},
    insert::with_inserter,
    parallel::write_document,
    scan::{MAX_VALUE_BYTES, ScanError, Scanner},
};

/// The snapshot file's name inside the cache directory.
pub const SNAPSHOT_FILE_NAME: &str = "cache-snapshot.json";

/// The directory [`CachePersistence::default`] uses, as in the original plan.
pub const DEFAULT_DIRECTORY: &str = ".cache";

/// Default for [`CachePersistence::max_file_size`]: 4 GiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 4 << 30;

/// Default for [`CachePersistence::max_entries`]: 100 million.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000_000;

/// Large enough that a save makes few `write` calls, small enough to be irrelevant next
/// to a cache worth persisting.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Saves and restores one cache snapshot file, `<directory>/cache-snapshot.json`.
///
/// Cloning is cheap; clones share the in-process save lock and
/// [`last_persist_time`](Self::last_persist_time).
///
/// ```
/// use std::collections::HashMap;
/// use snapshot::{CacheEntry, CachePersistence};
///
/// let dir = tempfile::tempdir()?;
/// let persistence = CachePersistence::new(dir.path().join("cache"));
/// assert!(!persistence.exists());
///
/// let mut cache = HashMap::new();
/// cache.insert("user:1".to_string(), CacheEntry::new(vec![1, 2, 3]).tagged(["users"]));
/// persistence.save(&cache)?;
/// assert!(persistence.exists());
/// assert!(persistence.last_persist_time().is_some());
///
/// let restored = persistence.restore::<Vec<u8>>()?;
/// assert_eq!(restored.entries, cache);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct CachePersistence {
    directory: PathBuf,
    path: PathBuf,
    lock_path: PathBuf,
    temp_prefix: String,
    max_file_size: u64,
    max_entries: u64,
    clock: Clock,
    shared: Arc<Shared>,
}

/// State shared by clones.
struct Shared {
    /// Serialises this process's savers (and quarantines) before they take the OS lock.
    save_lock: Mutex<()>,
    last_persist_time: Mutex<Option<SystemTime>>,
}

/// What a successful save wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SaveReport {
    /// Entries written.
    pub entries: u64,
    /// Size of the new snapshot file in bytes.
    pub bytes: u64,
    /// Temp files from crashed saves that were removed first.
    pub swept_temp_files: u64,
    /// Wall time of the whole save, including waiting for the lock and fsync.
    pub duration: Duration,
}

/// What a restore found, besides the entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RestoreReport {
    /// Whether a snapshot file existed; `false` means the map is empty because there was none.
    pub found: bool,
    /// Entries loaded into the map.
    pub loaded: u64,
    /// Entries dropped because they had expired.
    pub expired: u64,
    /// Entries read but not loaded for another reason: an earlier entry whose key
    /// repeats later in the file (the later one wins).
    pub rejected: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// When the snapshot was written, from its `timestamp` field.
    pub snapshot_time: Option<SystemTime>,
    /// Wall time of the restore.
    pub duration: Duration,
}

/// The entries a restore loaded, with its report.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let restored = snapshot::CachePersistence::new(dir.path()).restore::<String>()?;
/// assert!(restored.entries.is_empty());
/// assert!(!restored.report.found);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored<V> {
    /// The unexpired entries, by key.
    pub entries: HashMap<String, CacheEntry<V>>,
    /// Counts, sizes, and timing.
    pub report: RestoreReport,
}

impl<V> Default for Restored<V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            report: RestoreReport::default(),
        }
    }
}

impl Default for CachePersistence {
    /// Persistence in `.cache`, relative to the working directory.
    fn default() -> Self {
        Self::new(DEFAULT_DIRECTORY)
    }
}

impl std::fmt::Debug for CachePersistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachePersistence")
            .field("path", &self.path)
            .field("max_file_size", &self.max_file_size)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

/// Removes the temp file when dropped, unless the save got as far as renaming it.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed
            && let Err(error) = fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove the temp file of a failed save");
        }
    }
}

impl CachePersistence {
    /// Persistence in `directory` (created on the first save), with default limits.
    ///
    /// ```
    /// let persistence = snapshot::CachePersistence::new("/var/cache/my-service");
    /// assert_eq!(persistence.path(), std::path::Path::new("/var/cache/my-service/cache-snapshot.json"));
    /// ```
    pub fn new(directory: impl Into<PathBuf>) -> Self {
        let directory = directory.into();
        let path = directory.join(SNAPSHOT_FILE_NAME);
        Self {
            lock_path: directory.join(format!("{SNAPSHOT_FILE_NAME}.lock")),
            temp_prefix: format!("{SNAPSHOT_FILE_NAME}.tmp-"),
            path,
            directory,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            max_entries: DEFAULT_MAX_ENTRIES,
            clock: Arc::new(SystemTime::now),
            shared: Arc::new(Shared {
                save_lock: Mutex::new(()),
                last_persist_time: Mutex::new(None),
            }),
        }
    }

    /// Refuses to restore files larger than `bytes` (default 4 GiB).
    ///
    /// ```
    /// let persistence = snapshot::CachePersistence::new(".cache").with_max_file_size(1 << 20);
    /// assert_eq!(persistence.max_file_size(), 1 << 20);
    /// ```
    #[must_use]
    pub fn with_max_file_size(mut self, bytes: u64) -> Self {
        self.max_file_size = bytes;
        self
    }

    /// Refuses to restore files with more than `entries` entries, counting expired ones
    /// (default 100 million).
    ///
    /// ```
    /// let persistence = snapshot::CachePersistence::new(".cache").with_max_entries(10);
    /// assert_eq!(persistence.max_entries(), 10);
    /// ```
    #[must_use]
    pub fn with_max_entries(mut self, entries: u64) -> Self {
        self.max_entries = entries;
        self
    }

    /// Uses `clock` instead of [`SystemTime::now`] for the file's `timestamp` and for
    /// deciding which entries have expired; tests use it to pin the time.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// let persistence = snapshot::CachePersistence::new(".cache")
    ///     .with_clock(|| UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    /// # drop(persistence);
    /// ```
    #[must_use]
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The snapshot file's path.
    ///
    /// ```
    /// let persistence = snapshot::CachePersistence::default();
    /// assert_eq!(persistence.path(), std::path::Path::new(".cache/cache-snapshot.json"));
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The restore size limit in bytes.
    ///
    /// ```
    /// assert_eq!(snapshot::CachePersistence::default().max_file_size(), 4 << 30);
    /// ```
    pub fn max_file_size(&self) -> u64 {
        self.max_file_size
    }

    /// The restore entry-count limit.
    ///
    /// ```
    /// assert_eq!(snapshot::CachePersistence::default().max_entries(), 100_000_000);
    /// ```
    pub fn max_entries(&self) -> u64 {
        self.max_entries
    }

    /// Whether a snapshot file exists (it may still be corrupt; only
    /// [`restore`](Self::restore) can tell).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let persistence = snapshot::CachePersistence::new(dir.path());
    /// assert!(!persistence.exists());
    /// persistence.save(&std::collections::BTreeMap::<String, snapshot::CacheEntry<u8>>::new())?;
    /// assert!(persistence.exists());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn exists(&self) -> bool {
        fs::metadata(&self.path).is_ok_and(|metadata| metadata.is_file())
    }

    /// When a save through this value (or a clone) last completed, durably.
    ///
    /// `None` until the first successful save in this process; a failed save leaves it
    /// unchanged.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let persistence = snapshot::CachePersistence::new(dir.path());
    /// assert_eq!(persistence.last_persist_time(), None);
    /// persistence.save(&std::collections::HashMap::<String, snapshot::CacheEntry<()>>::new())?;
    /// assert!(persistence.last_persist_time().is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn last_persist_time(&self) -> Option<SystemTime> {
        *self
            .shared
            .last_persist_time
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

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
    /// use snapshot::{CacheEntry, CachePersistence, SnapshotError};
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

    /// Takes the in-process lock, then the OS lock on the sidecar lock file.
    ///
    /// The data file is never locked: a rename replaces its inode, so a lock on it would
    /// protect nothing.
    fn lock(&self) -> Result<(MutexGuard<'_, ()>, File), SnapshotError> {
        let in_process = self
            .shared
            .save_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        restrict_to_owner(&mut options);
        let lock_file = options
            .open(&self.lock_path)
            .map_err(|error| SnapshotError::io("open the lock file", &self.lock_path, error))?;
        lock_file
            .lock()
            .map_err(|error| SnapshotError::io("lock", &self.lock_path, error))?;
        Ok((in_process, lock_file))
    }

    /// Removes temp files left by crashed saves. Called with the lock held, when no other
    /// save can be writing one.
    fn sweep_temp_files(&self) -> u64 {
        let Ok(listing) = fs::read_dir(&self.directory) else {
            return 0;
        };
        let mut swept = 0;
        for item in listing.flatten() {
            let name = item.file_name();
            if name
                .to_str()
                .is_some_and(|name| name.starts_with(&self.temp_prefix))
            {
                let path = item.path();
                match fs::remove_file(&path) {
                    Ok(()) => {
                        swept += 1;
                        tracing::warn!(path = %path.display(), "removed the temp file of an interrupted save");
                    }
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "cannot remove the temp file of an interrupted save");
                    }
                }
            }
        }
        swept
    }

    fn create_temp_file(&self) -> Result<(File, TempFile), SnapshotError> {
        let mut attempt = 0_u32;
        loop {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.subsec_nanos());
            let path = self.directory.join(format!(
                "{}{}-{nanos}-{attempt}",
                self.temp_prefix,
                std::process::id()
            ));
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            restrict_to_owner(&mut options);
            match options.open(&path) {
                Ok(file) => return Ok((file, TempFile { path, armed: true })),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(error) => {
                    return Err(SnapshotError::io("create the temp file", &path, error));
                }
            }
        }
    }

    fn sync_directory(&self) -> Result<(), SnapshotError> {
        sync_directory(&self.directory)
    }

    /// Reads the snapshot, streaming it straight into a map and dropping expired entries.
    ///
    /// A missing file is `Ok` with an empty map (and `report.found == false`).
    ///
    /// The map is filled on a helper thread while this thread parses (see
    /// [Restore details](crate#restore-details)), hence `V: Send`.
    ///
    /// # Errors
    ///
    /// A file whose bytes are bad — invalid or truncated JSON, the wrong shape
    /// ([`Corrupt`](SnapshotError::Corrupt)), a `version` other than 1
    /// ([`UnsupportedVersion`](SnapshotError::UnsupportedVersion)) — is moved aside to
    /// `cache-snapshot.json.corrupt-<epoch ms>` before the error is returned, so no later
    /// save can overwrite it. A valid file that this reader cannot take — a value that does
    /// not fit `V` ([`Incompatible`](SnapshotError::Incompatible)), over this reader's
    /// limits ([`TooLarge`](SnapshotError::TooLarge),
    /// [`TooManyEntries`](SnapshotError::TooManyEntries)) — and a file that cannot be read
    /// ([`Io`](SnapshotError::Io), also for anything but a regular file, such as a FIFO)
    /// are left in place.
    ///
    /// ```
    /// use snapshot::{CacheEntry, CachePersistence};
    /// use std::time::{Duration, UNIX_EPOCH};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let persistence = CachePersistence::new(dir.path())
    ///     .with_clock(|| UNIX_EPOCH + Duration::from_millis(1_000));
    /// let cache = [
    ///     ("fresh", CacheEntry::new(1).expiring_at(2_000)),
    ///     ("stale", CacheEntry::new(2).expiring_at(500)),
    /// ];
    /// persistence.save(cache.iter().map(|(key, entry)| (key, entry)))?;
    /// let restored = persistence.restore::<i32>()?;
    /// assert_eq!(restored.entries.len(), 1);
    /// assert_eq!((restored.report.loaded, restored.report.expired), (1, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn restore<V: DeserializeOwned + Send>(&self) -> Result<Restored<V>, SnapshotError> {
        let started = Instant::now();
        let result = self.restore_file(started);
        match &result {
            Ok(restored) => tracing::info!(
                path = %self.path.display(),
                found = restored.report.found,
                loaded = restored.report.loaded,
                expired = restored.report.expired,
                rejected = restored.report.rejected,
                bytes = restored.report.bytes,
                duration_ms = duration_millis(restored.report.duration),
                "cache snapshot restored"
            ),
            Err(error) => tracing::error!(
                path = %self.path.display(),
                %error,
                "cache snapshot restore failed"
            ),
        }
        result
    }

    /// Like [`restore`](Self::restore), but any error is logged (via `tracing`) and
    /// yields an empty map — the original plan's forgiving behaviour. A file whose bytes are
    /// bad is still quarantined first, so the next save cannot destroy it; a valid file
    /// that only this reader cannot take (another type, smaller limits) stays in place
    /// (note that the next save then replaces it).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// std::fs::write(dir.path().join("cache-snapshot.json"), "{\"version\":1,\"entries\":[")?;
    /// let persistence = snapshot::CachePersistence::new(dir.path());
    /// let restored = persistence.restore_or_empty::<String>();
    /// assert!(restored.entries.is_empty());
    /// assert!(!persistence.exists(), "the truncated file was moved aside");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn restore_or_empty<V: DeserializeOwned + Send>(&self) -> Restored<V> {
        // `restore` has already logged the error.
        self.restore().unwrap_or_default()
    }

    fn restore_file<V: DeserializeOwned + Send>(
        &self,
        started: Instant,
    ) -> Result<Restored<V>, SnapshotError> {
        // A FIFO or device in place of the snapshot would block the open or the reads
        // forever (or read without end): refuse anything but a regular file, checked
        // before opening and again on what was opened.
        match fs::metadata(&self.path) {
            Ok(metadata) if metadata.is_file() => {}
            Ok(_) => return Err(not_a_regular_file(&self.path)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(Restored::default());
            }
            Err(error) => return Err(SnapshotError::io("stat", &self.path, error)),
        }
        let mut options = OpenOptions::new();
        options.read(true);
        open_without_blocking(&mut options);
        let file = match options.open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(Restored::default());
            }
            Err(error) => return Err(SnapshotError::io("open", &self.path, error)),
        };
        let metadata = file
            .metadata()
            .map_err(|error| SnapshotError::io("stat", &self.path, error))?;
        if !metadata.is_file() {
            return Err(not_a_regular_file(&self.path));
        }
        let bytes = metadata.len();
        if bytes > self.max_file_size {
            // This reader's limit, not a fault of the file: it stays where it is.
            return Err(SnapshotError::TooLarge {
                path: self.path.clone(),
                size: bytes,
                limit: self.max_file_size,
                quarantined_to: None,
            });
        }

        let now = epoch_millis((self.clock)());
        let hasher = RandomState::new();
        let parser_hasher = hasher.clone();
        let ((restoring, parsed), inserter) = with_inserter(hasher, |sink| {
            let mut restoring = Restoring::new(now, self.max_entries, parser_hasher, sink);
            let max_value = usize::try_from(self.max_file_size)
                .unwrap_or(usize::MAX)
                .min(MAX_VALUE_BYTES);
            // The size was checked above, but a file may grow while it is read.
            let reader = io::Read::take(file, self.max_file_size.saturating_add(1));
            let mut scanner = Scanner::new(reader).with_max_value_bytes(max_value);
            let parsed = read_document(&mut scanner, &mut restoring, bytes);
            let local = restoring.finish();
            ((restoring, parsed), local)
        });
        if let Err(error) = parsed {
            // The partly filled map is dropped: a restore never returns part of a file.
            drop(inserter);
            let error = self.restore_error(error, restoring.failure, restoring.failed_key);
            return Err(if error.is_bad_file() {
                self.quarantine(error, &metadata)
            } else {
                error
            });
        }

        let report = RestoreReport {
            found: true,
            loaded: inserter.map.len() as u64,
            expired: restoring.expired,
            rejected: inserter.superseded,
            bytes,
            snapshot_time: restoring.timestamp.map(from_epoch_millis),
            duration: started.elapsed(),
        };
        Ok(Restored {
            entries: inserter.map,
            report,
        })
    }

    fn restore_error(
        &self,
        error: ScanError,
        failure: Option<Failure>,
        failed_key: Option<String>,
    ) -> SnapshotError {
        let path = self.path.clone();
        match failure {
            Some(Failure::UnsupportedVersion(version)) => {
                return SnapshotError::UnsupportedVersion {
                    path,
                    version,
                    quarantined_to: None,
                };
            }
            Some(Failure::TooManyEntries) => {
                return SnapshotError::TooManyEntries {
                    path,
                    limit: self.max_entries,
                    quarantined_to: None,
                };
            }
            Some(Failure::Incompatible) => {
                if let ScanError::Syntax {
                    reason,
                    line,
                    column,
                    ..
                } = error
                {
                    return SnapshotError::Incompatible {
                        path,
                        key: failed_key,
                        line,
                        column,
                        reason,
                    };
                }
            }
            None => {}
        }
        match error {
            ScanError::Io(source) => SnapshotError::io("read", &path, source),
            ScanError::ValueTooLarge {
                limit,
                line,
                column,
            } => SnapshotError::EntryTooLarge {
                path,
                limit,
                line,
                column,
            },
            ScanError::Syntax {
                reason,
                line,
                column,
                truncated,
            } => SnapshotError::Corrupt {
                path,
                line,
                column,
                truncated,
                key: failed_key,
                reason,
                quarantined_to: None,
            },
        }
    }

    /// Moves the unusable snapshot aside so no save can overwrite it, and records where.
    ///
    /// Runs under the save locks and only moves the file if it is still the one we read
    /// (same device and inode): a save that replaced it meanwhile wrote a good snapshot,
    /// which must not be quarantined.
    fn quarantine(&self, mut error: SnapshotError, read: &fs::Metadata) -> SnapshotError {
        let destination = match self.lock() {
            Ok(_guard) => self.move_aside(read),
            Err(lock_error) => {
                tracing::error!(%lock_error, "cannot take the lock to quarantine the snapshot");
                None
            }
        };
        error.set_quarantined_to(destination);
        error
    }

    fn move_aside(&self, read: &fs::Metadata) -> Option<PathBuf> {
        let current = fs::metadata(&self.path).ok()?;
        if !same_file(&current, read) {
            tracing::warn!(path = %self.path.display(), "the unusable snapshot was replaced by a newer save before it could be moved aside");
            return None;
        }
        let stamp = epoch_millis(SystemTime::now());
        let mut destination = self
            .path
            .with_file_name(format!("{SNAPSHOT_FILE_NAME}.corrupt-{stamp}"));
        let mut suffix = 1;
        while fs::symlink_metadata(&destination).is_ok() {
            destination = self
                .path
                .with_file_name(format!("{SNAPSHOT_FILE_NAME}.corrupt-{stamp}-{suffix}"));
            suffix += 1;
        }
        match fs::rename(&self.path, &destination) {
            Ok(()) => {
                if let Err(error) = self.sync_directory() {
                    tracing::warn!(%error, "cannot sync the directory after quarantining the snapshot");
                }
                tracing::warn!(from = %self.path.display(), to = %destination.display(), "moved an unusable cache snapshot aside");
                Some(destination)
            }
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, "cannot move an unusable cache snapshot aside");
                None
            }
        }
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

fn duration_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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
mod steps {
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

fn not_a_regular_file(path: &Path) -> SnapshotError {
    SnapshotError::io(
        "restore from",
        path,
        io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
    )
}

/// `O_NONBLOCK`, so opening a FIFO that replaced the snapshot between the check and the
/// open cannot block (it has no effect on a regular file).
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn open_without_blocking(options: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt as _;
    options.custom_flags(0o4000);
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn open_without_blocking(_: &mut OpenOptions) {}

#[cfg(unix)]
fn restrict_to_owner(options: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt as _;
    options.mode(0o600);
}

#[cfg(not(unix))]
fn restrict_to_owner(_: &mut OpenOptions) {}

#[cfg(unix)]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.len() == b.len() && a.modified().ok() == b.modified().ok()
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::PathBuf};

    use super::{CachePersistence, steps};
    use crate::CacheEntry;

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
    fn move_aside_leaves_a_file_that_is_not_the_one_read() {
        let directory = tempfile::tempdir().unwrap();
        let persistence = CachePersistence::new(directory.path());
        std::fs::write(persistence.path(), "{ bad").unwrap();
        let bad = std::fs::metadata(persistence.path()).unwrap();
        // A save replaces the bad file (a new inode) before the quarantine runs.
        let other = directory.path().join("other");
        std::fs::write(&other, "{}").unwrap();
        std::fs::rename(&other, persistence.path()).unwrap();
        let good = std::fs::read(persistence.path()).unwrap();
        assert_eq!(persistence.move_aside(&bad), None);
        assert_eq!(std::fs::read(persistence.path()).unwrap(), good);

        // The file that was read is moved.
        let current = std::fs::metadata(persistence.path()).unwrap();
        let moved = persistence
            .move_aside(&current)
            .expect("the same file is moved");
        assert_eq!(std::fs::read(moved).unwrap(), good);
        assert!(!persistence.exists());
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
