//! The snapshot file format, streamed both ways with serde.
//!
//! `{ "version": 1, "timestamp": <epoch ms>, "entries": [ { "key", "value", "expiresAt"?,
//! "tags"? } ] }`. Saving serializes straight from the caller's iterator; restoring
//! deserializes straight into the result map. Neither side holds all entries in any
//! intermediate collection: entries are framed one at a time by [`Scanner`] and
//! parsed from its buffer.

use std::{
    fmt,
    hash::{BuildHasher, RandomState},
    io::Read,
    marker::PhantomData,
};

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor},
    ser::SerializeStruct,
};

use crate::{
    CacheEntry,
    fast::{self, Fast, RawBatch},
    insert::{Fill, Inserter, Local as _, Pending, Sink},
    scan::{ScanError, Scanner, Streamed, beyond_reader, text_problem},
};

/// The only file version this crate writes and reads.
pub(crate) const VERSION: u64 = 1;

/// What went wrong while restoring, beyond what `serde_json`'s error can say.
#[derive(Debug)]
pub(crate) enum Failure {
    UnsupportedVersion(String),
    TooManyEntries,
    /// The entry is well formed, but its value does not fit `V`.
    Incompatible,
}

/// One entry as the file stores it: the key beside the entry's fields.
pub(crate) struct EntryRef<'a, V> {
    pub(crate) key: &'a str,
    pub(crate) entry: &'a CacheEntry<V>,
}

impl<V: Serialize> Serialize for EntryRef<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = 2
            + usize::from(self.entry.expires_at.is_some())
            + usize::from(self.entry.tags.is_some());
        let mut entry = serializer.serialize_struct("Entry", fields)?;
        entry.serialize_field("key", self.key)?;
        entry.serialize_field("value", &self.entry.value)?;
        if let Some(expires_at) = self.entry.expires_at {
            entry.serialize_field("expiresAt", &expires_at)?;
        }
        if let Some(tags) = &self.entry.tags {
            entry.serialize_field("tags", tags)?;
        }
        entry.end()
    }
}

/// The state a restore fills in as it streams the file.
pub(crate) struct Restoring<V, T: Fill<V> = Inserter<V>> {
    pub(crate) now_millis: u64,
    pub(crate) max_entries: u64,
    pub(crate) read: u64,
    pub(crate) expired: u64,
    /// Entries waiting to be handed to the inserter, with their keys' hashes where the
    /// target [needs them](Fill::NEEDS_HASH) (to split the keys between the threads).
    pending: Vec<Pending<V>>,
    hasher: RandomState,
    /// Where full batches go; `None` once [`finish`](Self::finish) has closed it.
    sink: Option<Sink<V, T>>,
    /// The share of the entries this thread fills itself (see [`crate::insert::Local`]).
    pub(crate) local: Option<T::Local>,
    /// Entries per batch; set from the map's size, lowered by tests.
    batch_entries: usize,
    /// Whether full batches wait in `held` until the map is sized (see [`HOLD_ENTRIES`]).
    holding: bool,
    held: Vec<Pending<V>>,
    /// Entries the fast path read, as text, for a target that [takes
    /// them](Fill::TAKES_RAW). At most one of `raw` and `pending` holds entries, so the
    /// batches reach the target in file order.
    raw: RawBatch,
    /// Whether the fast path is off (a read redone after a raw value failed to build).
    pub(crate) strict_only: bool,
    pub(crate) timestamp: Option<u64>,
    /// The key of the entry being read when an error struck.
    pub(crate) failed_key: Option<String>,
    pub(crate) failure: Option<Failure>,
}

impl<V, T: Fill<V>> Restoring<V, T> {
    /// `hasher` hashes the keys for a target that [needs them](Fill::NEEDS_HASH).
    pub(crate) fn new(
        now_millis: u64,
        max_entries: u64,
        hasher: RandomState,
        sink: Sink<V, T>,
        local: Option<T::Local>,
    ) -> Self {
        Self {
            now_millis,
            max_entries,
            read: 0,
            expired: 0,
            pending: Vec::new(),
            hasher,
            sink: Some(sink),
            local,
            batch_entries: FIRST_BATCH_ENTRIES,
            holding: T::SIZED,
            held: Vec::new(),
            raw: RawBatch::default(),
            strict_only: false,
            timestamp: None,
            failed_key: None,
            failure: None,
        }
    }

    /// Closes the sink, which ends the inserter thread once it has inserted what it was
    /// sent; returns the inserter if it ran on this thread.
    pub(crate) fn finish(&mut self) -> Option<T> {
        match self.sink.take() {
            Some(Sink::Local(inserter)) => Some(inserter),
            Some(Sink::Thread { .. }) | None => None,
        }
    }
}

/// Reads the whole document from `scanner` into `restoring`.
///
/// `version` may come before or after `entries` (files written by other tools may order
/// keys differently). If it comes first, an unsupported version fails before any entry is
/// read. If it comes after, the entries are read into the map (they must parse as version
/// 1 entries) and the version is checked at the end, before the map is returned: the map is
/// the result we would return anyway, so this costs no extra memory.
pub(crate) fn read_document<R: Read, V: DeserializeOwned, T: Fill<V>>(
    scanner: &mut Scanner<R>,
    restoring: &mut Restoring<V, T>,
    file_size: u64,
) -> Result<(), ScanError> {
    let mut version_seen = false;
    let mut entries_seen = false;
    let mut timestamp_seen = false;
    if scanner.peek()? == Some(0xEF) && scanner.offset() == 0 {
        return Err(scanner.error_here(
            "the file starts with a UTF-8 byte order mark (EF BB BF), which a snapshot never has",
        ));
    }
    scanner.expect(b"{", "`{` opening the snapshot object")?;
    if scanner.peek()? == Some(b'}') {
        scanner.expect(b"}", "`}`")?;
    } else {
        loop {
            let field =
                scanner.next_value(|bytes| serde_json::from_slice::<DocumentField>(bytes))?;
            scanner.expect(b":", "`:` after a field name")?;
            match field {
                DocumentField::Version => {
                    if version_seen {
                        return Err(scanner.error_here("duplicate field `version`"));
                    }
                    let mut beyond = None;
                    let found = scanner.next_value(|bytes| {
                        serde_json::from_slice::<serde_json::Value>(bytes).inspect_err(|error| {
                            // A number no reader holds is still valid JSON: not version 1.
                            if beyond_this_reader(bytes, error) {
                                beyond = Some(String::from_utf8_lossy(bytes).into_owned());
                            }
                        })
                    });
                    let text = match (found, beyond) {
                        (Ok(found), _) if found == VERSION => None,
                        (Ok(found), _) => Some(found.to_string()),
                        (Err(_), Some(text)) => Some(text),
                        (Err(error), None) => return Err(error),
                    };
                    if let Some(text) = text {
                        let text = crate::error::shortened(&text);
                        let error =
                            scanner.error_here(&format!("unsupported snapshot version {text}"));
                        restoring.failure = Some(Failure::UnsupportedVersion(text));
                        return Err(error);
                    }
                    version_seen = true;
                }
                DocumentField::Timestamp => {
                    if timestamp_seen {
                        return Err(scanner.error_here("duplicate field `timestamp`"));
                    }
                    let found =
                        next_strict_value::<_, _, _, serde_json::Value>(scanner, restoring)?;
                    restoring.timestamp = found.as_u64();
                    timestamp_seen = true;
                }
                DocumentField::Entries => {
                    if entries_seen {
                        return Err(scanner.error_here("duplicate field `entries`"));
                    }
                    read_entries(scanner, restoring, file_size)?;
                    entries_seen = true;
                }
                DocumentField::Other => {
                    next_strict_value::<_, _, _, Strict>(scanner, restoring)?;
                }
            }
            if scanner.expect(b",}", "`,` or `}` after a field")? == b'}' {
                break;
            }
        }
    }
    if scanner.peek()?.is_some() {
        return Err(scanner.error_here("trailing characters after the snapshot object"));
    }
    if !version_seen {
        return Err(scanner.error_here("missing field `version`"));
    }
    if !entries_seen {
        return Err(scanner.error_here("missing field `entries`"));
    }
    Ok(())
}

/// Reads a top-level field's value as `T`; valid JSON this reader cannot hold (a number
/// beyond `f64`, nesting too deep) is marked as the reader's limit.
fn next_strict_value<R: Read, V, T: Fill<V>, Field: DeserializeOwned>(
    scanner: &mut Scanner<R>,
    restoring: &mut Restoring<V, T>,
) -> Result<Field, ScanError> {
    let mut beyond = false;
    let result = scanner.next_value(|bytes| {
        serde_json::from_slice::<Field>(bytes)
            .inspect_err(|error| beyond = beyond_this_reader(bytes, error))
    });
    if beyond {
        restoring.failure = Some(Failure::Incompatible);
    }
    result
}

/// After this many entries, the map is sized for the rest of the file, estimated from the
/// bytes those entries took: one allocation instead of a chain of rehashing doublings.
const ENTRIES_BEFORE_ESTIMATE: u64 = 1024;

/// The map is sized for at most this many times the entries read so far; once those are
/// read, the estimate is made again.
///
/// 32 rather than 8 (issue 15): the entries read before the estimate covers the file are
/// held back (see [`HOLD_ENTRIES`]), and the inserting thread has nothing to do until
/// then. With 8 that was the first ninth of the file; with 32 it is the first thirty-third,
/// and a lazy restore of 1M entries into a `HashMap` took about 0.31 s instead of 0.335 s
/// (`SNAPSHOT_BENCH_CASE` loops, Intel Xeon 2-vCPU VM). What a padded or sparse file can
/// make it reserve stays bounded by what it holds: a table for 33 times the entries read.
const ESTIMATE_GROWTH: u64 = 32;

fn read_entries<R: Read, V: DeserializeOwned, T: Fill<V>>(
    scanner: &mut Scanner<R>,
    restoring: &mut Restoring<V, T>,
    file_size: u64,
) -> Result<(), ScanError> {
    scanner.expect(b"[", "`[` opening the entries")?;
    if scanner.peek()? == Some(b']') {
        scanner.expect(b"]", "`]`")?;
        return Ok(());
    }
    let entries_start = scanner.offset();
    let mut read_here = 0_u64;
    let mut next_estimate = ENTRIES_BEFORE_ESTIMATE;
    // Decided at the first entry: whether `V` keeps its value as raw JSON text, which
    // the fast path reads without `serde_json` (see `crate::fast`).
    let mut raw = None;
    let mut tags = Vec::new();
    loop {
        let raw = *raw.get_or_insert_with(|| !restoring.strict_only && fast::is_raw_value::<V>());
        // For a target that builds raw entries itself, this thread only checks each
        // entry and copies its text; `Some(None)` is an entry taken that way.
        let fast = if raw && T::TAKES_RAW {
            scanner
                .fast_entry(|bytes| restoring.raw_entry(bytes, &mut tags))?
                .map(|expired| {
                    restoring.expired += u64::from(expired);
                    None
                })
        } else if raw {
            scanner
                .fast_entry(|bytes| fast::raw_entry::<V>(bytes, &mut tags))?
                .map(Some)
        } else {
            None
        };
        let entry = match fast {
            Some(entry) => entry,
            None => Some(strict_entry(scanner, restoring)?),
        };
        restoring.read += 1;
        read_here += 1;
        if restoring.read > restoring.max_entries {
            restoring.failure = Some(Failure::TooManyEntries);
            return Err(scanner.error_here(&format!("more than {} entries", restoring.max_entries)));
        }
        if read_here == next_estimate {
            // The estimate trusts the file's size, which a hostile or padded file can
            // inflate at will: so it never reserves more than a few times the entries
            // actually read, and is repeated each time the entries read double. Until
            // it covers the whole file the first entries are held back (up to
            // `HOLD_ENTRIES`), so the map is allocated once, at its final size. A
            // reservation that fails is only a missed optimisation.
            let used = scanner.offset() - entries_start;
            let remaining = file_size.saturating_sub(scanner.offset());
            let estimate = remaining.saturating_mul(read_here) / used.max(1);
            let step = read_here.saturating_mul(ESTIMATE_GROWTH);
            let covered = estimate <= step;
            let total = read_here
                .saturating_add(estimate.min(step))
                .min(restoring.max_entries);
            let can_hold_more = read_here.saturating_mul(2) <= HOLD_ENTRIES as u64;
            if covered || !restoring.holding || !can_hold_more {
                restoring.reserve(usize::try_from(total).unwrap_or(0));
                restoring.release();
            }
            if !covered {
                next_estimate = read_here.saturating_mul(2);
            }
        }
        match entry {
            Some((key, entry)) => restoring.accept(key, entry),
            None if restoring.raw.len() >= RAW_BATCH_ENTRIES
                || restoring.raw.text_bytes() >= RAW_BATCH_BYTES =>
            {
                restoring.send_raw();
            }
            None => {}
        }
        if scanner.expect(b",]", "`,` or `]` after an entry")? == b']' {
            if restoring.holding {
                // The whole file fitted in what is held: now its size is known.
                restoring.reserve(usize::try_from(read_here).unwrap_or(usize::MAX));
                restoring.release();
            }
            restoring.flush();
            restoring.send_raw();
            return Ok(());
        }
    }
}

/// Reads the next entry with `serde_json`, judging exactly what is wrong if it fails.
///
/// Parses the entry straight from the buffer. A syntax error is reported where it is; if
/// the value does not fit (or the file ends inside it), it frames the entry and parses
/// again, which tells a wrong type from a wrong shape and reports the error with its key
/// and position.
fn strict_entry<R: Read, V: DeserializeOwned, T: Fill<V>>(
    scanner: &mut Scanner<R>,
    restoring: &mut Restoring<V, T>,
) -> Result<(String, CacheEntry<V>), ScanError> {
    let streamed = scanner.next_streamed()?;
    if let Streamed::Syntax = streamed {
        // Broken right here: re-read only what the buffer holds, to learn the key.
        let error = scanner.error_in_place(|bytes| {
            EntrySeed::<V> {
                failed_key: &mut restoring.failed_key,
                value: PhantomData,
                lax: false,
            }
            .deserialize(&mut serde_json::Deserializer::from_slice(bytes))
        });
        if let Some(error) = error {
            return Err(error);
        }
    }
    if let Streamed::Invalid(Framed(key, _), error) = streamed {
        restoring.failed_key = Some(key);
        return Err(error);
    }
    if let Streamed::Value(Framed(key, entry)) = streamed {
        return Ok((key, entry));
    }
    let mut incompatible = false;
    let framed = scanner.next_value(|bytes| {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let entry = EntrySeed {
            failed_key: &mut restoring.failed_key,
            value: PhantomData,
            lax: false,
        }
        .deserialize(&mut deserializer)
        .inspect_err(|error| {
            // An entry that reads fine with any value is the reader's type or
            // limits, not a fault of the file.
            incompatible = fits_the_format(bytes, error);
        })?;
        deserializer.end()?;
        Ok(entry)
    });
    if incompatible {
        restoring.failure = Some(Failure::Incompatible);
    }
    framed
}

/// Entries in a batch until the map has been sized (see [`Restoring::reserve`]).
const FIRST_BATCH_ENTRIES: usize = 1024;

/// Entries held back at most until the map is sized for the whole file (about 15 MB of
/// entries on their way, for small values). A map that grows while it is filled
/// allocates a chain of ever larger tables, and the entries already in each are spread
/// over all of its pages, so every table is touched all over before it is replaced;
/// holding the first entries back until the estimate covers the file (which the
/// reservation limit allows once about a thirty-third of the entries are read) allocates
/// the table once. A file of more than about 4.3 million entries stops holding at this
/// many and grows the map in steps.
const HOLD_ENTRIES: usize = 128 * 1024;

/// Entries handed to the inserter per batch at most: few messages per file, and small
/// next to the map itself (about 8 MiB).
const BATCH_ENTRIES: usize = 64 * 1024;

/// Entries in a raw batch at most, and the text it holds at most (about): small, so a
/// batch is still in the cache when the helper builds its entries, and the batches in
/// flight stay near a MiB.
const RAW_BATCH_ENTRIES: usize = 4096;
const RAW_BATCH_BYTES: usize = 256 * 1024;

impl<V: DeserializeOwned, T: Fill<V>> Restoring<V, T> {
    /// Keeps an entry unless it has expired (an expired entry still removes its key, as
    /// the file's last word on it); a repeated key replaces the earlier entry.
    fn accept(&mut self, key: String, entry: CacheEntry<V>) {
        // The raw entries before this one go first.
        self.send_raw();
        let entry = if entry.is_expired_at(self.now_millis) {
            // Dropped as read, so expired entries never occupy memory.
            self.expired += 1;
            None
        } else {
            Some(entry)
        };
        let hash = if T::NEEDS_HASH {
            self.hasher.hash_one(&key)
        } else {
            0
        };
        let (key, entry) = match (entry, &mut self.local) {
            (Some(entry), Some(local)) => match local.offer(hash, key, entry) {
                Some((key, entry)) => (key, Some(entry)),
                None => return,
            },
            (entry, _) => (key, entry),
        };
        self.pending.push((hash, key, entry));
        if self.pending.len() >= self.batch_entries {
            self.flush();
        }
    }

    /// The fast path's step for a target that [takes raw entries](Fill::TAKES_RAW):
    /// checks the entry at the start of `bytes` and, unless it has expired, copies its
    /// text into the raw batch. The entry is whether it had expired.
    fn raw_entry(&mut self, bytes: &[u8], tags: &mut Vec<(usize, usize)>) -> Fast<bool> {
        let (spans, text) = match fast::raw_spans(bytes, tags) {
            Fast::Done(found, _) => found,
            Fast::NeedMore => return Fast::NeedMore,
            Fast::Fallback => return Fast::Fallback,
        };
        let expired = spans
            .expires_at
            .is_some_and(|expiry| expiry <= self.now_millis);
        if !expired {
            // The strict entries before this one go first.
            if !self.pending.is_empty() {
                self.flush();
            }
            self.raw.push(text, &spans, tags);
        }
        Fast::Done(expired, text.len())
    }

    /// Hands the raw batch to the target, if it holds entries.
    fn send_raw(&mut self)
    where
        V: DeserializeOwned,
    {
        if let Some(sink) = &mut self.sink
            && !self.raw.is_empty()
        {
            sink.send_raw(&mut self.raw);
        }
    }

    /// Sizes the map for `total` entries in all, and the batches for the map: a
    /// sixteenth of it, between the first batch's size and [`BATCH_ENTRIES`], so a
    /// small file's batches stay small next to its map.
    fn reserve(&mut self, total: usize) {
        self.batch_entries = (total / 16).clamp(FIRST_BATCH_ENTRIES, BATCH_ENTRIES);
        if let Some(sink) = &mut self.sink {
            sink.reserve(total);
        }
    }

    /// Hands the pending entries to the inserter, or holds them back while the map has
    /// not been sized (and fewer than [`HOLD_ENTRIES`] are held).
    pub(crate) fn flush(&mut self) {
        if self.holding {
            if self.held.len() + self.pending.len() <= HOLD_ENTRIES {
                if self.held.is_empty() {
                    std::mem::swap(&mut self.held, &mut self.pending);
                } else {
                    self.held.append(&mut self.pending);
                }
                return;
            }
            self.release();
        }
        if let Some(sink) = &mut self.sink
            && !self.pending.is_empty()
        {
            sink.send(&mut self.pending);
        }
    }

    /// Stops holding entries back, and hands over those held, in file order.
    fn release(&mut self) {
        self.holding = false;
        if let Some(sink) = &mut self.sink
            && !self.held.is_empty()
        {
            sink.send(&mut self.held);
        }
    }
}

/// Top-level field names; anything else is skipped for forward compatibility.
enum DocumentField {
    Version,
    Timestamp,
    Entries,
    Other,
}

impl<'de> Deserialize<'de> for DocumentField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = DocumentField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<DocumentField, E> {
                Ok(match name {
                    "version" => DocumentField::Version,
                    "timestamp" => DocumentField::Timestamp,
                    "entries" => DocumentField::Entries,
                    _ => DocumentField::Other,
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

/// Reads one entry; on failure, stores the entry's key (if already read) in `failed_key`.
struct EntrySeed<'a, V> {
    failed_key: &'a mut Option<String>,
    value: PhantomData<V>,
    /// Skip unknown fields without asking whether this reader could hold them: for
    /// telling an entry of the wrong shape from one beyond the reader's limits.
    lax: bool,
}

/// Any JSON value, read (and then dropped) only to check that `serde_json` can hold it:
/// unknown fields get the same verdict as values. Unlike [`IgnoredAny`], which skips
/// without looking, it parses every string (so invalid UTF-8 and lone surrogates fail)
/// and every number (so one beyond `f64` is the reader's limit, as in a value), and
/// counts nesting against `serde_json`'s recursion limit.
struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrictVisitor;
        impl<'de> Visitor<'de> for StrictVisitor {
            type Value = Strict;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_unit<E>(self) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut items: A) -> Result<Strict, A::Error> {
                while items.next_element::<Strict>()?.is_some() {}
                Ok(Strict)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut fields: A) -> Result<Strict, A::Error> {
                while fields.next_entry::<Strict, Strict>()?.is_some() {}
                Ok(Strict)
            }
        }
        deserializer.deserialize_any(StrictVisitor)
    }
}

/// An entry read with [`EntrySeed::lax`]: well formed whatever its values hold.
struct LaxFramed;

impl<'de> Deserialize<'de> for LaxFramed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut ignored = None;
        EntrySeed::<IgnoredAny> {
            failed_key: &mut ignored,
            value: PhantomData,
            lax: true,
        }
        .deserialize(deserializer)?;
        Ok(Self)
    }
}

/// Whether `bytes`, which `V` could not be read from (`error`), hold a well-formed entry
/// whose value merely does not fit `V` or this reader's limits: then the file is fine and
/// stays in place.
fn fits_the_format(bytes: &[u8], error: &serde_json::Error) -> bool {
    (error.classify() == serde_json::error::Category::Data || beyond_reader(error))
        && text_problem(bytes).is_none()
        && serde_json::from_slice::<LaxFramed>(bytes).is_ok()
}

/// Whether a top-level field's `bytes`, which failed with `error`, are valid JSON that
/// this reader cannot hold.
fn beyond_this_reader(bytes: &[u8], error: &serde_json::Error) -> bool {
    beyond_reader(error)
        && text_problem(bytes).is_none()
        && serde_json::from_slice::<IgnoredAny>(bytes).is_ok()
}

/// An entry as a plain `Deserialize` type, for `serde_json`'s stream deserializer (which
/// takes no seed). Its errors do not name the key; the caller re-reads a failed entry
/// through [`EntrySeed`] to report it properly.
pub(crate) struct Framed<V>(pub(crate) String, pub(crate) CacheEntry<V>);

impl<'de, V: DeserializeOwned> Deserialize<'de> for Framed<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut ignored = None;
        let (key, entry) = EntrySeed {
            failed_key: &mut ignored,
            value: PhantomData,
            lax: false,
        }
        .deserialize(deserializer)?;
        Ok(Self(key, entry))
    }
}

enum EntryField {
    Key,
    Value,
    ExpiresAt,
    Tags,
    Other,
}

impl<'de> Deserialize<'de> for EntryField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = EntryField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an entry field name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<EntryField, E> {
                Ok(match name {
                    "key" => EntryField::Key,
                    "value" => EntryField::Value,
                    "expiresAt" => EntryField::ExpiresAt,
                    "tags" => EntryField::Tags,
                    _ => EntryField::Other,
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

impl<'de, V: DeserializeOwned> DeserializeSeed<'de> for EntrySeed<'_, V> {
    type Value = (String, CacheEntry<V>);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, V: DeserializeOwned> Visitor<'de> for EntrySeed<'_, V> {
    type Value = (String, CacheEntry<V>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an entry object with `key` and `value`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut key: Option<String> = None;
        let mut value: Option<V> = None;
        // `Some(None)`: the field was there, as `null`.
        let mut expires_at: Option<Option<u64>> = None;
        let mut tags: Option<Option<Vec<String>>> = None;
        // Remembers which entry failed, so the error can name it.
        let mut blame = |key: &Option<String>| self.failed_key.clone_from(key);
        loop {
            let field = match map.next_key::<EntryField>() {
                Ok(Some(field)) => field,
                Ok(None) => break,
                Err(error) => {
                    blame(&key);
                    return Err(error);
                }
            };
            let result = match field {
                EntryField::Key if key.is_some() => Err(de::Error::duplicate_field("key")),
                EntryField::Key => map.next_value().map(|found| key = Some(found)),
                EntryField::Value if value.is_some() => Err(de::Error::duplicate_field("value")),
                EntryField::Value => map.next_value().map(|found| value = Some(found)),
                // One rule for every field: a repeated one is a malformed entry.
                EntryField::ExpiresAt if expires_at.is_some() => {
                    Err(de::Error::duplicate_field("expiresAt"))
                }
                EntryField::ExpiresAt => map.next_value().map(|found| expires_at = Some(found)),
                EntryField::Tags if tags.is_some() => Err(de::Error::duplicate_field("tags")),
                EntryField::Tags => map.next_value().map(|found| tags = Some(found)),
                EntryField::Other if self.lax => map.next_value::<IgnoredAny>().map(drop),
                EntryField::Other => map.next_value::<Strict>().map(drop),
            };
            if let Err(error) = result {
                blame(&key);
                return Err(error);
            }
        }
        let Some(found_key) = key else {
            return Err(de::Error::missing_field("key"));
        };
        let Some(value) = value else {
            blame(&Some(found_key));
            return Err(de::Error::missing_field("value"));
        };
        Ok((
            found_key,
            CacheEntry {
                value,
                expires_at: expires_at.flatten(),
                tags: tags.flatten(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Read};

    use std::hash::RandomState;

    use super::{Restoring, read_document};
    use crate::{
        insert::{Inserter, Sink},
        scan::{ScanError, Scanner},
    };

    /// A restore state that inserts on this thread, so tests can inspect it.
    fn restoring<V>(now_millis: u64) -> Restoring<V> {
        let hasher = RandomState::new();
        Restoring::new(
            now_millis,
            u64::MAX,
            hasher.clone(),
            Sink::Local(Inserter::new(hasher)),
            None,
        )
    }

    /// Returns at most a few bytes per read, so every framing step crosses a refill.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            self.step = self.step % 7 + 1;
            let count = self.step.min(buffer.len()).min(self.bytes.len());
            buffer[..count].copy_from_slice(&self.bytes[..count]);
            self.bytes = &self.bytes[count..];
            Ok(count)
        }
    }

    fn pretty_document() -> String {
        let entries: Vec<serde_json::Value> = (0..50)
            .map(|index| {
                serde_json::json!({
                    "key": format!("k\"{index}\\\n{}", "é".repeat(index % 5)),
                    "value": {"nested": [index, {"s": "]}[{\""}], "text": "x".repeat(index)},
                    "tags": ["a", "b"],
                })
            })
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({
            "entries": entries,
            "unknown": {"deep": [[[]]], "tricky": "\\\"}]\\\\"},
            "version": 1,
            "timestamp": 12,
        }))
        .unwrap()
    }

    fn read(
        bytes: &[u8],
    ) -> (
        Result<(), ScanError>,
        Restoring<serde_json::Value>,
        Inserter<serde_json::Value>,
    ) {
        let mut restoring = restoring(0);
        let mut scanner = Scanner::new(Trickle { bytes, step: 0 });
        let result = read_document(&mut scanner, &mut restoring, bytes.len() as u64);
        let inserter = restoring.finish().expect("a local inserter");
        (result, restoring, inserter)
    }

    #[test]
    fn framing_survives_refills_inside_strings_escapes_and_brackets() {
        let text = pretty_document();
        let (result, restoring, inserter) = read(text.as_bytes());
        result.unwrap();
        assert_eq!(inserter.map.len(), 50);
        assert_eq!(restoring.timestamp, Some(12));
        let key = format!("k\"7\\\n{}", "é".repeat(2));
        assert_eq!(inserter.map[&key].value["text"], "x".repeat(7));
        assert_eq!(inserter.map[&key].value["nested"][1]["s"], "]}[{\"");
    }

    #[test]
    fn error_positions_match_serde_json_on_the_whole_file() {
        let text = pretty_document();
        // Damage a byte deep inside, on a later line, in a value and in the structure.
        for needle in ["\"tags\": [", "\"nested\": [", "],\n  \"timestamp\""] {
            let at = text.rfind(needle).expect("the needle is in the document") + needle.len() - 1;
            let mut damaged = text.clone().into_bytes();
            damaged[at] = b'#';
            let expected = serde_json::from_slice::<serde_json::Value>(&damaged).unwrap_err();
            let (result, _, _) = read(&damaged);
            match result {
                Err(ScanError::Syntax { line, column, .. }) => {
                    assert_eq!(
                        (line, column),
                        (expected.line(), expected.column()),
                        "{needle}"
                    );
                }
                other => panic!("{needle}: {other:?}"),
            }
        }
    }

    #[test]
    fn batched_inserts_keep_file_order_for_repeated_and_expired_keys() {
        // Keys repeat across and within batches; some repeats are expired (at now = 100).
        let mut entries = Vec::new();
        for index in 0..400_u64 {
            let key = format!("k{}", index % 37);
            let expires = if index % 5 == 0 { 50 } else { 1000 };
            entries.push(serde_json::json!({"key": key, "value": index, "expiresAt": expires}));
        }
        let text = serde_json::json!({"version": 1, "entries": entries}).to_string();
        let restore = |batched: bool| {
            let mut restoring = restoring::<u64>(100);
            if batched {
                restoring.batch_entries = 100;
                restoring.holding = false;
            }
            let bytes = text.as_bytes();
            let mut scanner = Scanner::new(Trickle { bytes, step: 0 });
            read_document(&mut scanner, &mut restoring, bytes.len() as u64).unwrap();
            assert!(restoring.pending.is_empty());
            let inserter = restoring.finish().expect("a local inserter");
            (restoring.expired, inserter)
        };
        let (direct_expired, direct) = restore(false);
        let (batched_expired, batched) = restore(true);
        assert_eq!(batched.map, direct.map);
        assert_eq!(
            (batched_expired, batched.superseded),
            (direct_expired, direct.superseded)
        );
        // The last word on each key wins: `k1` was last written by index 371 (not
        // expired), `k5` by index 375 (expired: removed, though earlier `k5`s were not).
        assert_eq!(direct.map["k1"].value, 371);
        assert!(!direct.map.contains_key("k5"));
    }

    /// Counts the bytes handed out, to show how far a restore read.
    struct Counted<R> {
        inner: R,
        read: std::rc::Rc<std::cell::Cell<u64>>,
    }

    impl<R: Read> Read for Counted<R> {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            let count = self.inner.read(buffer)?;
            self.read.set(self.read.get() + count as u64);
            Ok(count)
        }
    }

    /// Reads `prefix` followed by `filler` bytes of `fill`; returns the result and how
    /// many bytes were read.
    fn read_with_filler(prefix: &str, fill: u8, filler: u64) -> (Result<(), ScanError>, u64) {
        read_with_filler_limited(prefix, fill, filler, crate::scan::MAX_VALUE_BYTES)
    }

    fn read_with_filler_limited(
        prefix: &str,
        fill: u8,
        filler: u64,
        max_value_bytes: usize,
    ) -> (Result<(), ScanError>, u64) {
        let read = std::rc::Rc::new(std::cell::Cell::new(0));
        let reader = Counted {
            inner: prefix.as_bytes().chain(io::repeat(fill).take(filler)),
            read: read.clone(),
        };
        let mut restoring = restoring::<serde_json::Value>(0);
        let mut scanner = Scanner::new(reader).with_max_value_bytes(max_value_bytes);
        let result = read_document(&mut scanner, &mut restoring, prefix.len() as u64 + filler);
        (result, read.get())
    }

    #[test]
    fn a_hole_inside_a_string_fails_at_once_without_reading_on() {
        for prefix in [
            r#"{"version":1,"entries":[{"key":""#,
            r#"{"version":1,"entries":[{"key":"a","value":"#,
            r#"{"version":"#,
            r#"{"version":1,"unknown":["#,
        ] {
            let (result, read) = read_with_filler(prefix, 0, 64 << 20);
            match result {
                Err(ScanError::Syntax { truncated, .. }) => assert!(!truncated, "{prefix}"),
                other => panic!("{prefix}: {other:?}"),
            }
            assert!(read <= 1 << 20, "{prefix}: read {read} bytes");
        }
    }

    #[test]
    fn an_entry_over_the_value_limit_is_refused_without_reading_on() {
        for prefix in [
            r#"{"version":1,"entries":[{"key":""#,
            r#"{"version":1,"entries":[{"key":"k","value":["x",""#,
            r#"{"version":1,"unknown":""#,
        ] {
            let (result, read) = read_with_filler_limited(prefix, b'a', 32 << 20, 1 << 20);
            match result {
                Err(ScanError::ValueTooLarge { limit, line, .. }) => {
                    assert_eq!((limit, line), (1 << 20, 1), "{prefix}");
                }
                other => panic!("{prefix}: {other:?}"),
            }
            assert!(read <= 2 << 20, "{prefix}: read {read} bytes");
        }
    }

    #[test]
    fn a_syntax_error_in_a_whole_file_is_reported_where_serde_json_finds_it() {
        let whole = r#"{"version":1,"entries":[{"key":"a","value":1},{"key":"b","value":2},{"key":"c","value":3}]}"#;
        let damaged = whole.replacen(r#""a""#, r#""a#"#, 1);
        let expected = serde_json::from_str::<serde_json::Value>(&damaged).unwrap_err();
        match read(damaged.as_bytes()).0 {
            Err(ScanError::Syntax {
                line,
                column,
                truncated,
                ..
            }) => {
                assert!(!truncated);
                assert_eq!((line, column), (expected.line(), expected.column()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncation_is_reported_as_truncated() {
        let text = pretty_document();
        for cut in [1, text.len() / 3, text.len() / 2, text.len() - 2] {
            match read(&text.as_bytes()[..cut]).0 {
                Err(ScanError::Syntax { truncated, .. }) => assert!(truncated, "cut {cut}"),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }
}

#[cfg(test)]
mod float_refill_tests {
    use std::hash::RandomState;

    use super::{Restoring, read_document};
    use crate::{
        insert::{Inserter, Sink},
        scan::Scanner,
    };

    struct Chunks<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Chunks<'_> {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            let count = self.step.min(buffer.len()).min(self.bytes.len());
            buffer[..count].copy_from_slice(&self.bytes[..count]);
            self.bytes = &self.bytes[count..];
            Ok(count)
        }
    }

    /// Reads `text` through reads of `step` bytes, so values are cut at every point.
    fn read_in_steps<V: serde::de::DeserializeOwned>(
        text: &str,
        step: usize,
    ) -> std::collections::HashMap<String, crate::CacheEntry<V>> {
        let hasher = RandomState::new();
        let mut restoring = Restoring::<V>::new(
            0,
            u64::MAX,
            hasher.clone(),
            Sink::Local(Inserter::new(hasher)),
            None,
        );
        let mut scanner = Scanner::new(Chunks {
            bytes: text.as_bytes(),
            step,
        });
        read_document(&mut scanner, &mut restoring, text.len() as u64)
            .unwrap_or_else(|error| panic!("step {step}: {error:?}"));
        restoring.finish().unwrap().map
    }

    /// A value type that skips most of what it reads.
    #[derive(serde::Deserialize)]
    struct Skipping {
        id: u32,
    }

    /// A value the buffer ends inside is parsed again once the rest is read, however the
    /// reader's type reads it: `serde_json` reports a number cut short as invalid (not as
    /// the end of the input) when it skips it, as for `RawValue` or an ignored field.
    #[test]
    fn values_cut_at_every_refill_point_read_back_whatever_the_type() {
        let entries: Vec<serde_json::Value> = (0..200_u32)
            .map(|index| {
                serde_json::json!({"key": format!("k{index}"), "value": {"score": f64::from(index % 1000) / 7.0, "id": index, "big": 1e300, "neg": -2.5e-10, "flag": true, "n": null}, "expiresAt": 17_000_000_000_000_u64 + u64::from(index)})
            })
            .collect();
        let text = serde_json::json!({"version": 1, "entries": entries}).to_string();
        for step in 1..=64 {
            let values = read_in_steps::<serde_json::Value>(&text, step);
            assert_eq!(values.len(), 200, "step {step}");
            assert_eq!(values["k10"].value["score"], 10.0 / 7.0);
            let raw = read_in_steps::<Box<serde_json::value::RawValue>>(&text, step);
            assert_eq!(raw.len(), 200, "step {step}");
            let skipping = read_in_steps::<Skipping>(&text, step);
            assert_eq!(skipping["k10"].value.id, 10, "step {step}");
        }
    }
}
