//! Crash-safe, streaming persistence of an in-memory cache to a versioned JSON snapshot.
//!
//! A service keeps a cache keyed by string, each [`CacheEntry`] a value with an optional
//! absolute expiry (epoch milliseconds) and optional tags, and wants it back after a
//! restart. Two types, two jobs:
//!
//! | type | what it is | what it does |
//! |---|---|---|
//! | [`CachePersistence`] | **the snapshot file** `<dir>/cache-snapshot.json` | every save and restore, on the calling thread: `save`, `restore`, `restore_into`, `save_moka` / `restore_moka` |
//! | `Persister` (feature `tokio`) | **the periodic task** | decides *when* to save: every period, on request, at shutdown, skipping unchanged caches; it calls a `CachePersistence` to do it |
//!
//! Start with `CachePersistence` (restore at startup, save at shutdown); add a
//! `Persister` when the cache should also be saved while the service runs.
//!
//! ```json
//! { "version": 1, "timestamp": 1700000000000,
//!   "entries": [ { "key": "user:1", "value": {"name": "Ada"}, "expiresAt": 1700000060000, "tags": ["users"] } ] }
//! ```
//!
//! The file is plain JSON (`jq '.entries | length' .cache/cache-snapshot.json` works).
//! Saving streams from any iterator of `(key, &CacheEntry<V>)`; restoring streams into
//! the result map (or, with [`restore_into`](CachePersistence::restore_into), into any
//! map or cache), dropping expired entries as they are read.
//!
//! ```
//! use std::collections::HashMap;
//! use keel_snapshot::{CacheEntry, CachePersistence};
//!
//! let dir = tempfile::tempdir()?;
//! let persistence = CachePersistence::new(dir.path());
//!
//! let mut cache: HashMap<String, CacheEntry<serde_json::Value>> = HashMap::new();
//! cache.insert("user:1".into(), CacheEntry::new(serde_json::json!({"name": "Ada"})).tagged(["users"]));
//! persistence.save(&cache)?;
//!
//! let restored = persistence.restore::<serde_json::Value>()?;
//! println!("restored {} entries, {} expired", restored.report.loaded, restored.report.expired);
//! assert_eq!(restored.entries, cache);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Feature flags
//!
//! - `tokio` (off by default): `CachePersistence::save_async` and
//!   `CachePersistence::restore_async`, which run the file work on tokio's blocking pool,
//!   and `Persister`, a task that saves periodically, coalesces requests, skips saves of
//!   an unchanged cache (with a [`Changes`] counter), and saves a last time on shutdown.
//! - `moka` (off by default): the `moka` module. `save_moka` and `restore_moka` save a
//!   moka `sync` or `future` `Cache<String, CacheEntry<V>>` and restore straight into one;
//!   the `ExpiresAt` expiry policy makes each entry expire at its wall-clock `expiresAt`,
//!   so a restarted cache keeps every entry's remaining time to live.
//!
//! # Crash safety
//!
//! What a caller may rely on, whatever happens to the process or the machine:
//!
//! - **The snapshot is always whole.** A save writes a uniquely named temp file in the same
//!   directory (`cache-snapshot.json.tmp-<pid>-<nanos>-<n>`), flushes it, `fsync`s it,
//!   renames it over `cache-snapshot.json`, and `fsync`s the directory (and, if the save
//!   created the directory or its ancestors, the parent of each one it created). A crash at any
//!   point leaves either the previous snapshot or the new one, never a mix or a prefix.
//! - **`Ok` means durable.** `save` returns `Ok` (and updates
//!   [`last_persist_time`](CachePersistence::last_persist_time)) only after the directory
//!   `fsync`, so an acknowledged snapshot survives a power cut (given a disk that honours
//!   `fsync`). While the temp file is written, a short-lived helper thread `fdatasync`s it
//!   every 16 MiB, so the disk works in parallel with serialization; an error from that
//!   helper fails the save like any other write error.
//! - **Failure changes nothing.** On any error (disk full, file too large, a value that JSON
//!   cannot represent) the temp file is removed and the previous snapshot is untouched —
//!   with one exception: if the directory `fsync` after the rename fails, the new
//!   snapshot is already in place but may not be durable, and the error says so.
//!   Temp files orphaned by a killed process are swept by the next save.
//! - **Concurrent savers serialise.** Threads share a mutex; processes share an OS lock
//!   (`flock`) on the sidecar `cache-snapshot.json.lock` (never on the data file, whose
//!   inode each rename replaces). Each save is whole; the last to finish wins. Readers take
//!   no lock: they always see one complete file.
//! - **Corrupt is not missing.** A file whose bytes are bad (truncated or invalid JSON,
//!   wrong shape, a repeated field, `version` not 1) is a typed [`SnapshotError`] naming
//!   the file and the position, and the file is renamed to
//!   `cache-snapshot.json.corrupt-<epoch ms>` so no later save can destroy the evidence.
//!   Bytes that are not JSON (invalid UTF-8, an unpaired surrogate escape, a byte order
//!   mark) are corrupt wherever they sit: in a key, a value, tags, or an unknown field.
//!   Only a missing file restores as empty.
//! - **A good file is never moved for the reader's reasons.** A valid snapshot whose
//!   values do not fit the requested type, or that holds valid JSON `serde_json` cannot
//!   hold (a number beyond `f64` such as `1e400`, nesting deeper than 127 levels), in a
//!   value or an unknown field ([`SnapshotError::Incompatible`]), or that is over
//!   this reader's size or entry limit ([`SnapshotError::TooLarge`],
//!   [`SnapshotError::TooManyEntries`]) is an error too, but the file stays where it is.
//! - **Unrepresentable values are refused, not corrupted.** `serde_json` writes NaN and
//!   infinities as `null`. Each value is checked before it is written; a save containing
//!   one fails with [`SnapshotError::Unrepresentable`] naming the entry's key, and the
//!   previous snapshot stays. So is a value nested more than 126 levels deep (the entry
//!   object makes 127, `serde_json`'s limit): whatever `save` accepts, `restore` reads
//!   back. Map keys are refused the same way unless `serde_json`
//!   writes them as strings that read back as the same key: strings, chars, integers,
//!   bools, unit enum variants (and newtype structs of those) are accepted; floats, `None`
//!   and `Option`s, `()`, unit structs, byte arrays, sequences, tuples, maps, structs and
//!   enum variants with data are refused.
//! - **Private by default.** New snapshot files are created with mode `0600`; an existing
//!   snapshot's permission bits are carried over to its replacement (its owner is not).
//!
//! Not covered: a disk that lies about `fsync`, and a file edited by hand while a save is
//! in progress. Dropping a `save_async` future does not cancel the write: it completes on
//! the blocking pool.
//!
//! # Threads
//!
//! A save of 256 entries or more serializes them on scoped worker threads
//! (`snapshot-serialize`, one per core as `available_parallelism` reports, at most 4) in
//! batches of about 256 KiB of JSON, while the calling thread pulls entries from the
//! iterator and writes the finished batches in order; the file is byte-for-byte what one
//! thread writes. Batches hold the caller's items (references to the entries, for
//! [`save`](CachePersistence::save)), so `save` requires `K: Send` and `V: Sync`, and
//! `save_async` and `Persister` (which own their entries) `K: Send` and `V: Send`. At most
//! two batches per worker are in flight, so a save adds about 2 MiB over the entries
//! already in memory (more only when a single entry serializes to more than a batch).
//! A smaller save runs on the calling thread. A helper thread `fdatasync`s the temp file
//! while it is written (see Crash safety). A restore inserts into the map on one helper
//! thread (see Restore details), so it requires `V: Send`. Every thread ends before the
//! call returns; a panic in a value's `Serialize` or `Deserialize` reaches the caller.
//!
//! # Restore details
//!
//! Restore keeps only the map it returns, a 256 KiB read buffer, and the parsed entries
//! on their way into the map: at most three batches (at most 64 Ki entries each, about
//! 8 MiB; a sixteenth of the map for smaller files), or up to 128 Ki entries held back
//! while the map is not yet sized (below). No string of the file, no list of all
//! entries. The calling thread reads the file in chunks and parses each entry with
//! `serde_json` straight out of the buffer (an entry larger than the buffer grows it, up
//! to 256 MiB or the file size limit if smaller; a larger entry is
//! [`SnapshotError::EntryTooLarge`], and the file is left in place),
//! while a scoped helper thread (`snapshot-insert`) inserts the previous batch into the
//! map, so parsing and inserting overlap; the entries cross to that thread, which is why
//! `restore` requires `V: Send`. After the first 1024 entries, and again each time
//! the entries read double, the parser estimates the file's entries from the bytes those
//! entries took; the map is reserved for at most 32× the entries read so far, so
//! whitespace padding or a sparse hole cannot make it reserve more than the entries
//! justify, and a failed reservation is ignored. Until the estimate fits under that
//! limit (after about a thirty-third of the entries), the first entries are held back
//! (at most 128 Ki of them), so the map's table is allocated once at its final size
//! instead of through a chain of ever larger tables that each get touched all over; a
//! file of more than about 4.3 million entries grows the map in those steps. Each batch is inserted
//! in file order: its keys then lie one after the other in memory, which measured
//! cheaper than sorting the batch by bucket (which reads the keys in random order).
//! On an error the partly filled map is dropped.
//!
//! `version` may appear before or after `entries`; if after, the entries are read into the
//! map and the version is checked before anything is returned, so an unsupported version
//! is still an error (if its entries do not even parse as version 1 entries, the error
//! is [`Incompatible`](SnapshotError::Incompatible) or [`Corrupt`](SnapshotError::Corrupt)
//! instead). Unknown fields are checked as values are (valid JSON that this reader can
//! hold), then ignored. Every field, known or not, appears at most once in its object. Errors and logs quote at
//! most 48 characters of a key (and about 240 of any other text from the file), with its
//! length. An entry is
//! expired when `expiresAt <= now`. If a key appears twice, the later entry wins and the
//! earlier one is counted as `rejected` in the [`RestoreReport`]. A value that does not
//! fit `V` fails the restore with [`SnapshotError::Incompatible`] naming the entry's key
//! (`serde_json` cannot skip a half-read value and continue), and leaves the file in place.
//!
//! Lazy values (`CacheEntry<Box<serde_json::value::RawValue>>`, or `Arc<RawValue>`)
//! take a fast path: each entry is checked in one pass over its bytes and its value's
//! text copied once, with no `serde_json` visitor. It reads only plain entries (the four
//! known fields, no `\u` escape, `expiresAt` a plain integer or `null`, nesting up to 64
//! levels); any other entry, and every error, is read again by the strict path, so the
//! verdict on a file never depends on the path. Through
//! [`restore_into`](CachePersistence::restore_into), the parsing thread only checks each
//! entry and copies its text into a small batch (at most 4096 entries or about 256 KiB);
//! the helper builds the entries (strings of exactly their lengths) and calls the sink in
//! file order, and when the helper is a batch behind, the parser builds the next batch
//! itself. Should a type that asks for a raw value refuse one of them, nothing more
//! reaches the sink and the same open file is read again by the strict path alone,
//! skipping the entries already handed over, so the sink and the verdict are what a
//! strict read gives.
//!
//! # Observability
//!
//! Every save and restore emits one `tracing` event at `INFO` (counts, bytes,
//! `duration_ms`) or `ERROR` (with the error). Sweeping a stale temp file and quarantining
//! a file are `WARN` events.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod changes;
mod check;
mod entry;
mod error;
mod fast;
mod format;
mod insert;
mod parallel;
mod persistence;
mod scan;
mod sync;

#[cfg(feature = "tokio")]
mod asynchronous;
#[cfg(feature = "moka")]
#[cfg_attr(docsrs, doc(cfg(feature = "moka")))]
pub mod moka;

#[cfg(feature = "tokio")]
pub use asynchronous::{Persister, PersisterBuilder};
pub use changes::Changes;
pub use entry::CacheEntry;
pub use error::SnapshotError;
pub use persistence::{
    CachePersistence, DEFAULT_DIRECTORY, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_FILE_SIZE, RestoreReport,
    Restored, SNAPSHOT_FILE_NAME, SaveReport,
};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
