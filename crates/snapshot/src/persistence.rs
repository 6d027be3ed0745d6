//! `CachePersistence`: the snapshot file, its settings and reports. The work is in the
//! submodules, one per seam: `save` (the durable atomic write), `restore` (the streaming
//! read), `temp` (temp files and their sweep), `lock` (the save locks) and `quarantine`
//! (moving a bad file aside).

mod lock;
mod quarantine;
mod restore;
mod save;
mod temp;

use std::{
    collections::HashMap,
    fmt, fs,
    hash::{BuildHasher, RandomState},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use crate::CacheEntry;

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
/// use keel_snapshot::{CacheEntry, CachePersistence};
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

/// The entries a restore loaded, with its report. `S` is the map's hasher: std's
/// [`RandomState`] unless the restore was given another
/// ([`restore_with_hasher`](CachePersistence::restore_with_hasher)).
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let restored = keel_snapshot::CachePersistence::new(dir.path()).restore::<String>()?;
/// assert!(restored.entries.is_empty());
/// assert!(!restored.report.found);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Restored<V, S = RandomState> {
    /// The unexpired entries, by key.
    pub entries: HashMap<String, CacheEntry<V>, S>,
    /// Counts, sizes, and timing.
    pub report: RestoreReport,
}

// By hand, not derived: a derive would ask `S: PartialEq` of the hasher, which std's
// `RandomState` is not (a map compares with `S: BuildHasher`), and `S: Debug` needlessly.
impl<V, S: Default> Default for Restored<V, S> {
    fn default() -> Self {
        Self {
            entries: HashMap::default(),
            report: RestoreReport::default(),
        }
    }
}

impl<V: Clone, S: Clone> Clone for Restored<V, S> {
    fn clone(&self) -> Self {
        Self {
            entries: self.entries.clone(),
            report: self.report.clone(),
        }
    }
}

impl<V: fmt::Debug, S> fmt::Debug for Restored<V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Restored")
            .field("entries", &self.entries)
            .field("report", &self.report)
            .finish()
    }
}

impl<V: PartialEq, S: BuildHasher> PartialEq for Restored<V, S> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries && self.report == other.report
    }
}

impl<V: Eq, S: BuildHasher> Eq for Restored<V, S> {}

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

impl CachePersistence {
    /// Persistence in `directory` (created on the first save), with default limits.
    ///
    /// ```
    /// let persistence = keel_snapshot::CachePersistence::new("/var/cache/my-service");
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
    /// let persistence = keel_snapshot::CachePersistence::new(".cache").with_max_file_size(1 << 20);
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
    /// let persistence = keel_snapshot::CachePersistence::new(".cache").with_max_entries(10);
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
    /// let persistence = keel_snapshot::CachePersistence::new(".cache")
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
    /// let persistence = keel_snapshot::CachePersistence::default();
    /// assert_eq!(persistence.path(), std::path::Path::new(".cache/cache-snapshot.json"));
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The restore size limit in bytes.
    ///
    /// ```
    /// assert_eq!(keel_snapshot::CachePersistence::default().max_file_size(), 4 << 30);
    /// ```
    pub fn max_file_size(&self) -> u64 {
        self.max_file_size
    }

    /// The restore entry-count limit.
    ///
    /// ```
    /// assert_eq!(keel_snapshot::CachePersistence::default().max_entries(), 100_000_000);
    /// ```
    pub fn max_entries(&self) -> u64 {
        self.max_entries
    }

    /// Whether a snapshot file exists (it may still be corrupt; only
    /// [`restore`](Self::restore) can tell).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let persistence = keel_snapshot::CachePersistence::new(dir.path());
    /// assert!(!persistence.exists());
    /// persistence.save(&std::collections::BTreeMap::<String, keel_snapshot::CacheEntry<u8>>::new())?;
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
    /// let persistence = keel_snapshot::CachePersistence::new(dir.path());
    /// assert_eq!(persistence.last_persist_time(), None);
    /// persistence.save(&std::collections::HashMap::<String, keel_snapshot::CacheEntry<()>>::new())?;
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
}

fn duration_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
