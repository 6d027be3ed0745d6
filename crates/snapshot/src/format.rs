//! The snapshot file format, streamed both ways with serde.
//!
//! `{ "version": 1, "timestamp": <epoch ms>, "entries": [ { "key", "value", "expiresAt"?,
//! "tags"? } ] }`. Saving serializes straight from the caller's iterator; restoring
//! deserializes straight into the result map. Neither side holds all entries in any
//! intermediate collection: entries are framed one at a time by [`Scanner`] and
//! parsed from its buffer.

use std::{collections::HashMap, fmt, hash::BuildHasher, io::Read, marker::PhantomData};

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor},
    ser::SerializeStruct,
};

use crate::{
    CacheEntry,
    scan::{ScanError, Scanner},
};

/// The only file version this crate writes and reads.
pub(crate) const VERSION: u64 = 1;

/// What went wrong while restoring, beyond what `serde_json`'s error can say.
#[derive(Debug)]
pub(crate) enum Failure {
    UnsupportedVersion(String),
    TooManyEntries,
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
pub(crate) struct Restoring<V> {
    pub(crate) now_millis: u64,
    pub(crate) max_entries: u64,
    pub(crate) map: HashMap<String, CacheEntry<V>>,
    pub(crate) read: u64,
    pub(crate) expired: u64,
    pub(crate) superseded: u64,
    /// Entries waiting to be inserted in table order (`None`: an expired entry, which
    /// removes its key); see [`Restoring::flush`].
    pending: Vec<(u64, String, Option<CacheEntry<V>>)>,
    /// Batches start once the map can hold this many entries, and hold this many.
    /// Constants in production; tests lower them to exercise batching on small files.
    batch_from_capacity: usize,
    batch_entries: usize,
    pub(crate) timestamp: Option<u64>,
    /// The key of the entry being read when an error struck.
    pub(crate) failed_key: Option<String>,
    pub(crate) failure: Option<Failure>,
}

impl<V> Restoring<V> {
    pub(crate) fn new(now_millis: u64, max_entries: u64) -> Self {
        Self {
            now_millis,
            max_entries,
            map: HashMap::new(),
            read: 0,
            expired: 0,
            superseded: 0,
            pending: Vec::new(),
            batch_from_capacity: 4 * BATCH_ENTRIES,
            batch_entries: BATCH_ENTRIES,
            timestamp: None,
            failed_key: None,
            failure: None,
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
pub(crate) fn read_document<R: Read, V: DeserializeOwned>(
    scanner: &mut Scanner<R>,
    restoring: &mut Restoring<V>,
    file_size: u64,
) -> Result<(), ScanError> {
    let mut version_seen = false;
    let mut entries_seen = false;
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
                    let found = scanner
                        .next_value(|bytes| serde_json::from_slice::<serde_json::Value>(bytes))?;
                    if found != VERSION {
                        let text = found.to_string();
                        let error =
                            scanner.error_here(&format!("unsupported snapshot version {text}"));
                        restoring.failure = Some(Failure::UnsupportedVersion(text));
                        return Err(error);
                    }
                    version_seen = true;
                }
                DocumentField::Timestamp => {
                    let found = scanner
                        .next_value(|bytes| serde_json::from_slice::<serde_json::Value>(bytes))?;
                    restoring.timestamp = found.as_u64();
                }
                DocumentField::Entries => {
                    if entries_seen {
                        return Err(scanner.error_here("duplicate field `entries`"));
                    }
                    read_entries(scanner, restoring, file_size)?;
                    entries_seen = true;
                }
                DocumentField::Other => {
                    scanner.next_value(|bytes| serde_json::from_slice::<IgnoredAny>(bytes))?;
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

/// After this many entries, the map is sized for the rest of the file, estimated from the
/// bytes those entries took: one allocation instead of a chain of rehashing doublings.
const ENTRIES_BEFORE_ESTIMATE: u64 = 1024;

fn read_entries<R: Read, V: DeserializeOwned>(
    scanner: &mut Scanner<R>,
    restoring: &mut Restoring<V>,
    file_size: u64,
) -> Result<(), ScanError> {
    scanner.expect(b"[", "`[` opening the entries")?;
    if scanner.peek()? == Some(b']') {
        scanner.expect(b"]", "`]`")?;
        return Ok(());
    }
    let entries_start = scanner.offset();
    let mut read_here = 0_u64;
    loop {
        // Fast path: parse the entry straight from the buffer. If that fails for any
        // reason but "the buffer ends here", frame it and parse again, which reports the
        // error with its key and position.
        let (key, entry) = match scanner.next_streamed::<Framed<V>>()? {
            Some(Framed(key, entry)) => (key, entry),
            None => scanner.next_value(|bytes| {
                let mut deserializer = serde_json::Deserializer::from_slice(bytes);
                let entry = EntrySeed {
                    failed_key: &mut restoring.failed_key,
                    value: PhantomData,
                }
                .deserialize(&mut deserializer)?;
                deserializer.end()?;
                Ok(entry)
            })?,
        };
        restoring.read += 1;
        read_here += 1;
        if restoring.read > restoring.max_entries {
            restoring.failure = Some(Failure::TooManyEntries);
            return Err(scanner.error_here(&format!("more than {} entries", restoring.max_entries)));
        }
        if read_here == ENTRIES_BEFORE_ESTIMATE {
            let used = scanner.offset() - entries_start;
            let remaining = file_size.saturating_sub(scanner.offset());
            let estimate = remaining.saturating_mul(read_here) / used.max(1);
            let allowed = restoring.max_entries.saturating_sub(restoring.read);
            restoring
                .map
                .reserve(usize::try_from(estimate.min(allowed)).unwrap_or(0));
        }
        restoring.accept(key, entry);
        if scanner.expect(b",]", "`,` or `]` after an entry")? == b']' {
            restoring.flush();
            return Ok(());
        }
    }
}

/// Entries inserted per sorted batch: large enough that consecutive inserts land close
/// together in a million-entry table, small next to the map itself (about 8 MiB).
const BATCH_ENTRIES: usize = 64 * 1024;

impl<V> Restoring<V> {
    /// Keeps an entry unless it has expired; a repeated key replaces the earlier entry.
    ///
    /// Once the map has been sized for a large file, entries are queued and inserted in
    /// batches sorted by the bucket they hash to: inserting in file order touches a random
    /// page of a large table each time, which costs more than parsing the entry.
    fn accept(&mut self, key: String, entry: CacheEntry<V>) {
        let entry = if entry.is_expired_at(self.now_millis) {
            // Dropped as read, so expired entries never occupy memory.
            self.expired += 1;
            None
        } else {
            Some(entry)
        };
        if self.map.capacity() < self.batch_from_capacity {
            self.apply(key, entry);
            return;
        }
        let hash = self.map.hasher().hash_one(&key);
        self.pending.push((hash, key, entry));
        if self.pending.len() >= self.batch_entries {
            self.flush();
        }
    }

    /// Inserts the queued entries. The sort is stable, so for a repeated key the file's
    /// order, and therefore "the last one wins", is kept.
    pub(crate) fn flush(&mut self) {
        // hashbrown's table index is `hash & (buckets - 1)`; sorting on those bits makes
        // successive inserts walk the table forwards. A wrong guess only costs speed.
        let buckets = (self.map.capacity() / 7 * 8).next_power_of_two() as u64;
        let mask = buckets - 1;
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_by_key(|(hash, _, _)| hash & mask);
        for (_, key, entry) in pending.drain(..) {
            self.apply(key, entry);
        }
        self.pending = pending;
    }

    fn apply(&mut self, key: String, entry: Option<CacheEntry<V>>) {
        let replaced = match entry {
            Some(entry) => self.map.insert(key, entry).is_some(),
            // A later expired duplicate still removes the earlier value: the file's last
            // word on a key is what counts.
            None => self.map.remove(&key).is_some(),
        };
        if replaced {
            self.superseded += 1;
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
}

/// An entry as a plain `Deserialize` type, for `serde_json`'s stream deserializer (which
/// takes no seed). Its errors do not name the key; the caller re-reads a failed entry
/// through [`EntrySeed`] to report it properly.
struct Framed<V>(String, CacheEntry<V>);

impl<'de, V: DeserializeOwned> Deserialize<'de> for Framed<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut ignored = None;
        let (key, entry) = EntrySeed {
            failed_key: &mut ignored,
            value: PhantomData,
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
        let mut expires_at: Option<u64> = None;
        let mut tags: Option<Vec<String>> = None;
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
                EntryField::ExpiresAt => map.next_value().map(|found| expires_at = found),
                EntryField::Tags => map.next_value().map(|found| tags = found),
                EntryField::Other => map.next_value::<IgnoredAny>().map(drop),
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
                expires_at,
                tags,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Read};

    use super::{Restoring, read_document};
    use crate::scan::{ScanError, Scanner};

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

    fn read(bytes: &[u8]) -> (Result<(), ScanError>, Restoring<serde_json::Value>) {
        let mut restoring = Restoring::new(0, u64::MAX);
        let mut scanner = Scanner::new(Trickle { bytes, step: 0 });
        let result = read_document(&mut scanner, &mut restoring, bytes.len() as u64);
        (result, restoring)
    }

    #[test]
    fn framing_survives_refills_inside_strings_escapes_and_brackets() {
        let text = pretty_document();
        let (result, restoring) = read(text.as_bytes());
        result.unwrap();
        assert_eq!(restoring.map.len(), 50);
        assert_eq!(restoring.timestamp, Some(12));
        let key = format!("k\"7\\\n{}", "é".repeat(2));
        assert_eq!(restoring.map[&key].value["text"], "x".repeat(7));
        assert_eq!(restoring.map[&key].value["nested"][1]["s"], "]}[{\"");
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
            let (result, _) = read(&damaged);
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
            let mut restoring = Restoring::<u64>::new(100, u64::MAX);
            if batched {
                restoring.batch_from_capacity = 0;
                restoring.batch_entries = 100;
            }
            let bytes = text.as_bytes();
            let mut scanner = Scanner::new(Trickle { bytes, step: 0 });
            read_document(&mut scanner, &mut restoring, bytes.len() as u64).unwrap();
            restoring
        };
        let direct = restore(false);
        let batched = restore(true);
        assert!(batched.pending.is_empty());
        assert_eq!(batched.map, direct.map);
        assert_eq!(
            (batched.expired, batched.superseded),
            (direct.expired, direct.superseded)
        );
        // The last word on each key wins: `k1` was last written by index 371 (not
        // expired), `k5` by index 375 (expired: removed, though earlier `k5`s were not).
        assert_eq!(direct.map["k1"].value, 371);
        assert!(!direct.map.contains_key("k5"));
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
