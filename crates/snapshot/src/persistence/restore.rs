//! The restore path: stream the file into a map (or a caller's sink), judge what is wrong.

use std::{
    fs::{self, OpenOptions},
    hash::{BuildHasher, RandomState},
    io::{self, Seek as _, SeekFrom},
    path::Path,
    time::Instant,
};

use serde::de::DeserializeOwned;

use super::{CachePersistence, RestoreReport, Restored, duration_millis};
use crate::{
    CacheEntry, SnapshotError,
    entry::{epoch_millis, from_epoch_millis},
    format::{Failure, Restoring, read_document},
    insert::{Deliver, Fill, Inserter, Local, with_inserter},
    scan::{MAX_VALUE_BYTES, ScanError, Scanner},
};

impl CachePersistence {
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
    /// use keel_snapshot::{CacheEntry, CachePersistence};
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
        self.restore_with_hasher(RandomState::new())
    }

    /// [`restore`](Self::restore) into a map that hashes with `hasher`, as
    /// [`HashMap::with_hasher`](std::collections::HashMap::with_hasher) does: for a cache
    /// kept in a map with a faster hasher than std's `SipHash` (`foldhash`, `ahash`, `FxHash`, ...),
    /// restored straight into it, never rehashed.
    ///
    /// The map is filled on the restore's helper thread, as [`restore`](Self::restore)'s is
    /// (see [Restore details](crate#restore-details)). That thread keeps pace with the parser
    /// even with `SipHash`, so a faster hasher does not shorten the restore itself (a lazy
    /// restore of 1M entries measured the same with foldhash: see the README's benchmark
    /// notes). What it gives is a cache whose later lookups and inserts use the hasher the
    /// service chose, with no rehashing. The usual trade-off of such hashers holds: one that
    /// is not seeded per process lets whoever chooses the keys choose collisions, and the
    /// keys of a snapshot come from whatever filled the cache.
    ///
    /// # Errors
    ///
    /// As [`restore`](Self::restore).
    ///
    /// ```
    /// use std::hash::{BuildHasherDefault, DefaultHasher};
    /// use keel_snapshot::{CacheEntry, CachePersistence};
    ///
    /// type Hasher = BuildHasherDefault<DefaultHasher>;
    /// let dir = tempfile::tempdir()?;
    /// let persistence = CachePersistence::new(dir.path());
    /// persistence.save([("a", &CacheEntry::new(1))])?;
    /// let restored = persistence.restore_with_hasher::<u32, _>(Hasher::default())?;
    /// let cache: std::collections::HashMap<String, CacheEntry<u32>, Hasher> = restored.entries;
    /// assert_eq!(cache["a"].value, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn restore_with_hasher<V, S>(&self, hasher: S) -> Result<Restored<V, S>, SnapshotError>
    where
        V: DeserializeOwned + Send,
        S: BuildHasher + Send,
    {
        let started = Instant::now();
        let result = self
            .restore_file(Inserter::new(hasher), started)
            .map(|(inserter, report)| Restored {
                entries: inserter.map,
                report: report.unwrap_or_default(),
            });
        self.log_restore(result.as_ref().map(|restored| &restored.report));
        result
    }

    /// Reads the snapshot into a caller's `sink`, for any map or cache: each unexpired
    /// entry is handed to `sink(key, entry)` in file order, and no intermediate map is
    /// built. Returns what [`restore`](Self::restore) reports.
    ///
    /// The sink runs on the restore's helper thread while this thread parses (see
    /// [Restore details](crate#restore-details)), hence `Send`; it may borrow from the
    /// caller, since the helper ends before this returns. Expired entries are dropped as
    /// read and never reach the sink. A key that appears twice in the file (which `save`
    /// never writes) is handed over twice, so a sink that inserts keeps the later entry;
    /// `report.rejected` is 0 and `report.loaded` counts the calls.
    ///
    /// # Errors
    ///
    /// As [`restore`](Self::restore), with the same quarantine rules. **On an error the
    /// sink may already have received entries read before the bad one** (some or all of
    /// them, in file order: entries reach the sink in batches); a restore into a
    /// map discards its partial map, but only the caller can empty its own cache (or
    /// restore into a fresh one and swap it in on success).
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use keel_snapshot::{CacheEntry, CachePersistence};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let persistence = CachePersistence::new(dir.path());
    /// persistence.save(&BTreeMap::from([("a", CacheEntry::new(1)), ("b", CacheEntry::new(2))]))?;
    ///
    /// let mut restored = BTreeMap::new();
    /// let report = persistence.restore_into(|key, entry: CacheEntry<u32>| {
    ///     restored.insert(key, entry.value);
    /// })?;
    /// assert_eq!(report.loaded, 2);
    /// assert_eq!(restored, BTreeMap::from([("a".to_string(), 1), ("b".to_string(), 2)]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn restore_into<V, F>(&self, sink: F) -> Result<RestoreReport, SnapshotError>
    where
        V: DeserializeOwned + Send,
        F: FnMut(String, CacheEntry<V>) + Send,
    {
        let started = Instant::now();
        let result = self
            .restore_file(Deliver::new(sink), started)
            .map(|(_, report)| report.unwrap_or_default());
        self.log_restore(result.as_ref());
        result
    }

    /// [`restore_into`](Self::restore_into) for a target that both threads can insert
    /// into at once (`insert` takes `&self`, as a concurrent cache's does): the helper
    /// and this thread each insert the keys of one half of the hash space, so inserting
    /// costs each thread half (every key still goes to one thread, in file order).
    #[cfg(feature = "moka")]
    pub(crate) fn restore_into_shared<V, F>(
        &self,
        insert: &F,
    ) -> Result<RestoreReport, SnapshotError>
    where
        V: DeserializeOwned + Send,
        F: Fn(String, CacheEntry<V>) + Sync,
    {
        let started = Instant::now();
        let result = self
            .restore_file(
                crate::insert::Shared {
                    insert,
                    inserted: 0,
                },
                started,
            )
            .map(|(_, report)| report.unwrap_or_default());
        self.log_restore(result.as_ref());
        result
    }

    fn log_restore(&self, result: Result<&RestoreReport, &SnapshotError>) {
        match result {
            Ok(report) => tracing::info!(
                path = %self.path.display(),
                found = report.found,
                loaded = report.loaded,
                expired = report.expired,
                rejected = report.rejected,
                bytes = report.bytes,
                duration_ms = duration_millis(report.duration),
                "cache snapshot restored"
            ),
            Err(error) => tracing::error!(
                path = %self.path.display(),
                %error,
                "cache snapshot restore failed"
            ),
        }
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
    /// let persistence = keel_snapshot::CachePersistence::new(dir.path());
    /// let restored = persistence.restore_or_empty::<String>();
    /// assert!(restored.entries.is_empty());
    /// assert!(!persistence.exists(), "the truncated file was moved aside");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn restore_or_empty<V: DeserializeOwned + Send>(&self) -> Restored<V> {
        // `restore` has already logged the error.
        self.restore().unwrap_or_default()
    }

    /// Streams the file into `target`, and returns it with the report (`None` if there is
    /// no file: the target is returned as it came).
    fn restore_file<V, T>(
        &self,
        mut target: T,
        started: Instant,
    ) -> Result<(T, Option<RestoreReport>), SnapshotError>
    where
        V: DeserializeOwned + Send,
        T: Fill<V> + Send,
    {
        // A FIFO or device in place of the snapshot would block the open or the reads
        // forever (or read without end): refuse anything but a regular file, checked
        // before opening and again on what was opened.
        match fs::metadata(&self.path) {
            Ok(metadata) if metadata.is_file() => {}
            Ok(_) => return Err(not_a_regular_file(&self.path)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok((target, None));
            }
            Err(error) => return Err(SnapshotError::io("stat", &self.path, error)),
        }
        let mut options = OpenOptions::new();
        options.read(true);
        open_without_blocking(&mut options);
        let file = match options.open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok((target, None));
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
        // Hashes keys for a target that wants them hashed by the parser (see
        // `Fill::NEEDS_HASH`): one that splits keys between the threads, not a map's.
        let hasher = RandomState::new();
        let mut strict_only = false;
        let (restoring, parsed, inserter) = loop {
            // A read is redone (below) from the same open file, so from the same bytes
            // even if a save has replaced the snapshot meanwhile.
            (&file)
                .seek(SeekFrom::Start(0))
                .map_err(|error| SnapshotError::io("read", &self.path, error))?;
            let parser_hasher = hasher.clone();
            let ((restoring, parsed), mut inserter) = with_inserter(target, |sink, local| {
                let mut restoring =
                    Restoring::new(now, self.max_entries, parser_hasher, sink, local);
                restoring.strict_only = strict_only;
                let max_value = usize::try_from(self.max_file_size)
                    .unwrap_or(usize::MAX)
                    .min(MAX_VALUE_BYTES);
                // The size was checked above, but a file may grow while it is read.
                let reader = io::Read::take(&file, self.max_file_size.saturating_add(1));
                let mut scanner = Scanner::new(reader).with_max_value_bytes(max_value);
                let parsed = read_document(&mut scanner, &mut restoring, bytes);
                let local = restoring.finish();
                ((restoring, parsed), local)
            });
            // A raw value that the fast path checked failed to build: the strict path
            // reads the file again and gives its own verdict (see `Deliver`).
            if !strict_only && inserter.retry_strictly() {
                strict_only = true;
                target = inserter;
                continue;
            }
            break (restoring, parsed, inserter);
        };
        if let Err(error) = parsed {
            // The partly filled map is dropped: a restore never returns part of a file.
            // (A caller's sink keeps what it was given; `restore_into` says so.)
            drop(inserter);
            let error = self.restore_error(error, restoring.failure, restoring.failed_key);
            return Err(if error.is_bad_file() {
                self.quarantine(error, &metadata)
            } else {
                error
            });
        }

        let (loaded, rejected) = inserter.counts();
        let loaded = loaded + restoring.local.as_ref().map_or(0, Local::taken);
        let report = RestoreReport {
            found: true,
            loaded,
            expired: restoring.expired,
            rejected,
            bytes,
            snapshot_time: restoring.timestamp.map(from_epoch_millis),
            duration: started.elapsed(),
        };
        Ok((inserter, Some(report)))
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
