//! The snapshot file format, streamed both ways with serde.
//!
//! `{ "version": 1, "timestamp": <epoch ms>, "entries": [ { "key", "value", "expiresAt"?,
//! "tags"? } ] }`. Saving serializes straight from the caller's iterator; restoring
//! deserializes straight into the result map. Neither side holds all entries in any
//! intermediate collection.

use std::{
    borrow::Borrow,
    cell::{Cell, RefCell},
    collections::HashMap,
    fmt,
    marker::PhantomData,
};

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
    ser::{Error as _, SerializeSeq, SerializeStruct},
};

use crate::{CacheEntry, check};

/// The only file version this crate writes and reads.
pub(crate) const VERSION: u64 = 1;

/// What went wrong while streaming, beyond what `serde_json`'s error can say.
#[derive(Debug)]
pub(crate) enum Failure {
    /// An entry's value has no faithful JSON form.
    Unrepresentable {
        key: String,
        reason: String,
    },
    /// The writer (or `serde_json`) failed while this entry was being written.
    FailedAtKey {
        key: String,
    },
    UnsupportedVersion(String),
    TooManyEntries,
}

/// The whole document, serialized from an iterator that is consumed exactly once.
pub(crate) struct Document<'state, I, V> {
    pub(crate) timestamp: u64,
    pub(crate) value_type: PhantomData<fn() -> V>,
    pub(crate) entries: Cell<Option<I>>,
    pub(crate) written: &'state Cell<u64>,
    pub(crate) failure: &'state RefCell<Option<Failure>>,
}

impl<I, K, E, V> Serialize for Document<'_, I, V>
where
    I: Iterator<Item = (K, E)>,
    K: AsRef<str>,
    E: Borrow<CacheEntry<V>>,
    V: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut document = serializer.serialize_struct("Snapshot", 3)?;
        document.serialize_field("version", &VERSION)?;
        document.serialize_field("timestamp", &self.timestamp)?;
        document.serialize_field("entries", &Entries { document: self })?;
        document.end()
    }
}

struct Entries<'document, 'state, I, V> {
    document: &'document Document<'state, I, V>,
}

impl<I, K, E, V> Serialize for Entries<'_, '_, I, V>
where
    I: Iterator<Item = (K, E)>,
    K: AsRef<str>,
    E: Borrow<CacheEntry<V>>,
    V: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(entries) = self.document.entries.take() else {
            return Err(S::Error::custom(
                "the entries iterator was already consumed",
            ));
        };
        let mut sequence = serializer.serialize_seq(None)?;
        let mut written = 0_u64;
        for (key, entry) in entries {
            let key = key.as_ref();
            let entry = entry.borrow();
            // Checked before writing so a NaN never reaches the file as `null`.
            if let Err(unfaithful) = check::check(&entry.value) {
                self.document
                    .failure
                    .replace(Some(Failure::Unrepresentable {
                        key: key.to_owned(),
                        reason: unfaithful.0,
                    }));
                return Err(S::Error::custom("unrepresentable value"));
            }
            sequence
                .serialize_element(&EntryRef { key, entry })
                .inspect_err(|_| {
                    self.document.failure.replace(Some(Failure::FailedAtKey {
                        key: key.to_owned(),
                    }));
                })?;
            written += 1;
        }
        self.document.written.set(written);
        sequence.end()
    }
}

struct EntryRef<'a, V> {
    key: &'a str,
    entry: &'a CacheEntry<V>,
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
            timestamp: None,
            failed_key: None,
            failure: None,
        }
    }
}

/// Deserializes the top-level object into a [`Restoring`].
///
/// `version` may come before or after `entries` (files written by other tools may order
/// keys differently). If it comes first, an unsupported version fails before any entry is
/// read. If it comes after, the entries are read into the map (they must parse as version
/// 1 entries) and the version is checked at the end, before the map is returned: the map is
/// the result we would return anyway, so this costs no extra memory.
pub(crate) struct DocumentSeed<'a, V> {
    pub(crate) restoring: &'a mut Restoring<V>,
}

impl<'de, V: DeserializeOwned> DeserializeSeed<'de> for DocumentSeed<'_, V> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
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

impl<'de, V: DeserializeOwned> Visitor<'de> for DocumentSeed<'_, V> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a cache snapshot object with `version` and `entries`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut version: Option<serde_json::Value> = None;
        let mut seen_entries = false;
        while let Some(field) = map.next_key::<DocumentField>()? {
            match field {
                DocumentField::Version => {
                    if version.is_some() {
                        return Err(de::Error::duplicate_field("version"));
                    }
                    let found: serde_json::Value = map.next_value()?;
                    if found != VERSION {
                        return Err(unsupported_version(self.restoring, &found));
                    }
                    version = Some(found);
                }
                DocumentField::Timestamp => {
                    let timestamp: serde_json::Value = map.next_value()?;
                    self.restoring.timestamp = timestamp.as_u64();
                }
                DocumentField::Entries => {
                    if seen_entries {
                        return Err(de::Error::duplicate_field("entries"));
                    }
                    map.next_value_seed(EntriesSeed {
                        restoring: &mut *self.restoring,
                    })?;
                    seen_entries = true;
                }
                DocumentField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if version.is_none() {
            return Err(de::Error::missing_field("version"));
        }
        if !seen_entries {
            return Err(de::Error::missing_field("entries"));
        }
        Ok(())
    }
}

fn unsupported_version<V, E: de::Error>(
    restoring: &mut Restoring<V>,
    found: &serde_json::Value,
) -> E {
    let text = found.to_string();
    let error = E::custom(format_args!("unsupported snapshot version {text}"));
    restoring.failure = Some(Failure::UnsupportedVersion(text));
    error
}

struct EntriesSeed<'a, V> {
    restoring: &'a mut Restoring<V>,
}

impl<'de, V: DeserializeOwned> DeserializeSeed<'de> for EntriesSeed<'_, V> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, V: DeserializeOwned> Visitor<'de> for EntriesSeed<'_, V> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<(), A::Error> {
        while let Some((key, entry)) = sequence.next_element_seed(EntrySeed {
            restoring: &mut *self.restoring,
            value: PhantomData,
        })? {
            let restoring = &mut *self.restoring;
            restoring.read += 1;
            if restoring.read > restoring.max_entries {
                restoring.failure = Some(Failure::TooManyEntries);
                return Err(de::Error::custom(format_args!(
                    "more than {} entries",
                    restoring.max_entries
                )));
            }
            if entry.is_expired_at(restoring.now_millis) {
                // Dropped as read, so expired entries never occupy memory.
                restoring.expired += 1;
                // A later expired duplicate still removes the earlier value: the file's
                // last word on a key is what counts.
                if restoring.map.remove(&key).is_some() {
                    restoring.superseded += 1;
                }
            } else if restoring.map.insert(key, entry).is_some() {
                restoring.superseded += 1;
            }
        }
        Ok(())
    }
}

struct EntrySeed<'a, V> {
    restoring: &'a mut Restoring<V>,
    value: PhantomData<V>,
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
        let mut blame = |key: &Option<String>| self.restoring.failed_key.clone_from(key);
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
