//! The fast path for entries whose value is kept as raw JSON text (`Box<RawValue>`,
//! `Arc<RawValue>`): one validating pass over the entry's bytes, then one copy of each
//! string and of the value's text, with no `serde_json` visitor.
//!
//! It accepts a strict subset of what the strict path (`format::strict_entry`) accepts, and
//! yields the same key and entry for it: an entry object with the four known fields at
//! most once each (`key` and `value` present), keys and tags without escapes, an
//! `expiresAt` that is `null` or a plain integer of at most 19 digits, a value that is
//! valid JSON nested at most [`MAX_DEPTH`] levels whose strings hold no `\u` escape,
//! and valid UTF-8 throughout. Anything else — an unknown field, an escape it does not
//! decode, a number it does not read, any error at all — is [`Fast::Fallback`]: the
//! strict path reads the entry again from its first byte and gives its own verdict.
//! So the fast path can only be faster, never judge differently.

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor,
    value::StrDeserializer,
};

use crate::CacheEntry;

/// What the fast path made of the bytes at the start of an entry.
pub(crate) enum Fast<T> {
    /// The entry, and how many bytes it took.
    Done(T, usize),
    /// The bytes end inside the entry: read more and scan again.
    NeedMore,
    /// Not an entry the fast path reads: the strict path must.
    Fallback,
}

/// Why the scan stopped early.
enum Stop {
    NeedMore,
    Fallback,
}

/// Nesting (arrays and objects) inside a value that the fast path follows; a deeper
/// value goes the strict way.
pub(crate) const MAX_DEPTH: u32 = 64;

/// The name `serde_json` gives the newtype that carries a `RawValue`'s text.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Whether `V` deserializes as `serde_json`'s raw value (`Box<RawValue>`, and
/// `Arc<RawValue>` through it): its `Deserialize` asks for the raw-value newtype, which
/// is how `serde_json` recognises it too.
pub(crate) fn is_raw_value<V: DeserializeOwned>() -> bool {
    let mut raw = false;
    // The probe refuses every request, so `V` only reports what it asked for.
    let _ = V::deserialize(Probe { raw: &mut raw });
    raw
}

/// Reads one entry whose value `V` is raw JSON text from the start of `bytes` (the first
/// byte is not whitespace); `tags` is scratch space, reused from entry to entry.
pub(crate) fn raw_entry<V: DeserializeOwned>(
    bytes: &[u8],
    tags: &mut Vec<(usize, usize)>,
) -> Fast<(String, CacheEntry<V>)> {
    let (spans, text) = match raw_spans(bytes, tags) {
        Fast::Done(found, _) => found,
        Fast::NeedMore => return Fast::NeedMore,
        Fast::Fallback => return Fast::Fallback,
    };
    let Ok(value) = V::deserialize(RawText(&text[spans.value.0..spans.value.1])) else {
        return Fast::Fallback;
    };
    let tags = spans.tags.then(|| {
        let mut owned = Vec::with_capacity(tags.len());
        owned.extend(tags.iter().map(|&(start, end)| text[start..end].to_owned()));
        owned
    });
    let key = text[spans.key.0..spans.key.1].to_owned();
    let entry = CacheEntry {
        value,
        expires_at: spans.expires_at,
        tags,
    };
    Fast::Done((key, entry), text.len())
}

/// Checks one entry as [`raw_entry`] does, without building anything: where its parts
/// are (each tag's span in `tags`), and its text, which is valid UTF-8 (with its length).
pub(crate) fn raw_spans<'b>(
    bytes: &'b [u8],
    tags: &mut Vec<(usize, usize)>,
) -> Fast<(Spans, &'b str)> {
    tags.clear();
    let mut cursor = Cursor { bytes, at: 0, tags };
    let spans = match cursor.entry() {
        Ok(spans) => spans,
        Err(Stop::NeedMore) => return Fast::NeedMore,
        Err(Stop::Fallback) => return Fast::Fallback,
    };
    let length = cursor.at;
    // The whole entry at once, as the strict path checks it: a single pass, and every
    // span then starts and ends at an ASCII quote or bracket, on a char boundary.
    let Ok(text) = std::str::from_utf8(&bytes[..length]) else {
        return Fast::Fallback;
    };
    Fast::Done((spans, text), length)
}

/// Entries the fast path checked, as their text, on their way to the thread that builds
/// them (see [`crate::insert::Fill::TAKES_RAW`]): the parser copies each entry's key,
/// value and tags into one buffer, and the helper allocates the entry's own strings. So
/// the parsing thread allocates nothing per entry, and the page faults of the fresh
/// memory the entries live in fall on the helper.
#[derive(Default)]
pub(crate) struct RawBatch {
    /// Each entry's key, value and tags, one after the other.
    text: String,
    records: Vec<RawRecord>,
    /// Where each tag ends in `text`.
    tag_ends: Vec<usize>,
}

/// Where one entry's parts end in its batch's text (each starts where the previous ends).
struct RawRecord {
    key_end: usize,
    value_end: usize,
    /// The index in `tag_ends` after the entry's last tag; `None` without tags.
    tags_end: Option<usize>,
    expires_at: Option<u64>,
}

impl RawBatch {
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of text held.
    pub(crate) fn text_bytes(&self) -> usize {
        self.text.len()
    }

    pub(crate) fn clear(&mut self) {
        self.text.clear();
        self.records.clear();
        self.tag_ends.clear();
    }

    /// Appends the entry [`raw_spans`] found in `text`, with its `tags`.
    pub(crate) fn push(&mut self, text: &str, spans: &Spans, tags: &[(usize, usize)]) {
        self.text.push_str(&text[spans.key.0..spans.key.1]);
        let key_end = self.text.len();
        self.text.push_str(&text[spans.value.0..spans.value.1]);
        let value_end = self.text.len();
        let tags_end = spans.tags.then(|| {
            for &(start, end) in tags {
                self.text.push_str(&text[start..end]);
                self.tag_ends.push(self.text.len());
            }
            self.tag_ends.len()
        });
        self.records.push(RawRecord {
            key_end,
            value_end,
            tags_end,
            expires_at: spans.expires_at,
        });
    }

    /// [`build`](Self::build)s the entries, leaving the batch empty.
    pub(crate) fn drain<V: DeserializeOwned>(
        &mut self,
        deliver: impl FnMut(String, CacheEntry<V>),
    ) -> bool {
        let whole = self.build(deliver);
        self.clear();
        whole
    }

    /// Builds each entry (a key, a value and tags of exactly their lengths) and hands it
    /// to `deliver`, in order. Stops at the first value `V` refuses (which no raw-value
    /// type does) and returns `false`.
    pub(crate) fn build<V: DeserializeOwned>(
        &self,
        mut deliver: impl FnMut(String, CacheEntry<V>),
    ) -> bool {
        let mut start = 0;
        let mut tag = 0;
        let mut whole = true;
        for record in &self.records {
            let key = self.text[start..record.key_end].to_owned();
            let Ok(value) = V::deserialize(RawText(&self.text[record.key_end..record.value_end]))
            else {
                whole = false;
                break;
            };
            start = record.value_end;
            let tags = record.tags_end.map(|tags_end| {
                let mut owned = Vec::with_capacity(tags_end - tag);
                for &end in &self.tag_ends[tag..tags_end] {
                    owned.push(self.text[start..end].to_owned());
                    start = end;
                }
                tag = tags_end;
                owned
            });
            let entry = CacheEntry {
                value,
                expires_at: record.expires_at,
                tags,
            };
            deliver(key, entry);
        }
        whole
    }
}

/// Where an entry's parts sit in its bytes.
pub(crate) struct Spans {
    key: (usize, usize),
    value: (usize, usize),
    pub(crate) expires_at: Option<u64>,
    /// Whether there are tags (not `null`); they are in the cursor's `tags`.
    tags: bool,
}

enum Field {
    Key,
    Value,
    ExpiresAt,
    Tags,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Where each tag's text is.
    tags: &'a mut Vec<(usize, usize)>,
}

impl Cursor<'_> {
    /// Skips JSON whitespace and returns the next byte, not consumed.
    fn peek(&mut self) -> Result<u8, Stop> {
        while let Some(&byte) = self.bytes.get(self.at) {
            if !matches!(byte, b' ' | b'\n' | b'\t' | b'\r') {
                return Ok(byte);
            }
            self.at += 1;
        }
        Err(Stop::NeedMore)
    }

    /// Consumes `expected` after whitespace.
    fn eat(&mut self, expected: u8) -> Result<(), Stop> {
        if self.peek()? == expected {
            self.at += 1;
            Ok(())
        } else {
            Err(Stop::Fallback)
        }
    }

    fn entry(&mut self) -> Result<Spans, Stop> {
        self.eat(b'{')?;
        let mut key = None;
        let mut value = None;
        let mut expires_at: Option<Option<u64>> = None;
        let mut tags: Option<Option<()>> = None;
        loop {
            self.eat(b'"')?;
            let name = self.plain_string()?;
            let field = match &self.bytes[name.0..name.1] {
                b"key" => Field::Key,
                b"value" => Field::Value,
                b"expiresAt" => Field::ExpiresAt,
                b"tags" => Field::Tags,
                // Unknown fields get the strict path's checks.
                _ => return Err(Stop::Fallback),
            };
            self.eat(b':')?;
            // A repeated field is the strict path's to report.
            match field {
                Field::Key if key.is_none() => {
                    self.eat(b'"')?;
                    key = Some(self.plain_string()?);
                }
                Field::Value if value.is_none() => {
                    // The raw text starts at the value's first byte, as `serde_json`'s.
                    self.peek()?;
                    let start = self.at;
                    self.value()?;
                    value = Some((start, self.at));
                }
                Field::ExpiresAt if expires_at.is_none() => {
                    expires_at = Some(self.null_or(Self::integer)?);
                }
                Field::Tags if tags.is_none() => tags = Some(self.null_or(Self::tags)?),
                _ => return Err(Stop::Fallback),
            }
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    break;
                }
                _ => return Err(Stop::Fallback),
            }
        }
        match (key, value) {
            (Some(key), Some(value)) => Ok(Spans {
                key,
                value,
                expires_at: expires_at.flatten(),
                tags: tags.flatten().is_some(),
            }),
            _ => Err(Stop::Fallback),
        }
    }

    /// `null` (as `None`) or what `read` reads.
    fn null_or<T>(&mut self, read: fn(&mut Self) -> Result<T, Stop>) -> Result<Option<T>, Stop> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            Ok(None)
        } else {
            read(self).map(Some)
        }
    }

    /// A `u64` written as plain digits, no sign, fraction or exponent, at most 19 digits
    /// (so it cannot overflow), no leading zero.
    fn integer(&mut self) -> Result<u64, Stop> {
        let start = self.at;
        let mut number = 0_u64;
        loop {
            match self.bytes.get(self.at) {
                // A 20th digit might overflow: the strict path reads such a number.
                Some(b'0'..=b'9') if self.at - start == 19 => return Err(Stop::Fallback),
                Some(&digit @ b'0'..=b'9') => {
                    number = number * 10 + u64::from(digit - b'0');
                    self.at += 1;
                }
                Some(b'.' | b'e' | b'E') => return Err(Stop::Fallback),
                Some(_) => break,
                None => return Err(Stop::NeedMore),
            }
        }
        let digits = self.at - start;
        if digits == 0 || (digits > 1 && self.bytes[start] == b'0') {
            return Err(Stop::Fallback);
        }
        Ok(number)
    }

    /// An array of plain strings, noted in `tags`.
    fn tags(&mut self) -> Result<(), Stop> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.eat(b'"')?;
            let tag = self.plain_string()?;
            self.tags.push(tag);
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(Stop::Fallback),
            }
        }
    }

    /// The rest of a string whose opening quote was consumed, which must hold no escape
    /// (so its text is its bytes); returns where its contents start and end.
    fn plain_string(&mut self) -> Result<(usize, usize), Stop> {
        let start = self.at;
        let Some(length) = string_stop(&self.bytes[start..]) else {
            return Err(Stop::NeedMore);
        };
        let end = start + length;
        if self.bytes[end] != b'"' {
            return Err(Stop::Fallback);
        }
        self.at = end + 1;
        Ok((start, end))
    }

    /// The rest of a string inside a value, whose opening quote was consumed: escapes
    /// other than `\u` are fine (they stay in the raw text as they are).
    fn value_string(&mut self) -> Result<(), Stop> {
        loop {
            let Some(length) = string_stop(&self.bytes[self.at..]) else {
                return Err(Stop::NeedMore);
            };
            self.at += length;
            match self.bytes[self.at] {
                b'"' => {
                    self.at += 1;
                    return Ok(());
                }
                b'\\' => match self.bytes.get(self.at + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.at += 2,
                    // `\u` escapes (and their surrogates) are the strict path's to judge.
                    Some(_) => return Err(Stop::Fallback),
                    None => return Err(Stop::NeedMore),
                },
                _ => return Err(Stop::Fallback),
            }
        }
    }

    /// `true`, `false` or `null`.
    fn literal(&mut self, word: &[u8]) -> Result<(), Stop> {
        let available = &self.bytes[self.at..];
        if available.len() < word.len() {
            return if word.starts_with(available) {
                Err(Stop::NeedMore)
            } else {
                Err(Stop::Fallback)
            };
        }
        if &available[..word.len()] != word {
            return Err(Stop::Fallback);
        }
        self.at += word.len();
        Ok(())
    }

    /// A JSON number, by the grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Result<(), Stop> {
        if self.next_is(|byte| byte == b'-')? {
            self.at += 1;
        }
        if self.next_is(|byte| byte == b'0')? {
            self.at += 1;
        } else {
            self.digits()?;
        }
        if self.next_is(|byte| byte == b'.')? {
            self.at += 1;
            self.digits()?;
        }
        if self.next_is(|byte| byte == b'e' || byte == b'E')? {
            self.at += 1;
            if self.next_is(|byte| byte == b'+' || byte == b'-')? {
                self.at += 1;
            }
            self.digits()?;
        }
        // What follows (a digit after a leading zero, a letter) is judged by the caller,
        // which accepts only a delimiter.
        Ok(())
    }

    /// Whether the next byte (without skipping whitespace) passes `test`; the end of the
    /// bytes means more must be read, since a number may go on.
    fn next_is(&self, test: impl Fn(u8) -> bool) -> Result<bool, Stop> {
        self.bytes
            .get(self.at)
            .map(|&byte| test(byte))
            .ok_or(Stop::NeedMore)
    }

    /// One or more digits.
    fn digits(&mut self) -> Result<(), Stop> {
        // The end of the bytes means more must be read, since the number may go on.
        match self.bytes[self.at..]
            .iter()
            .position(|byte| !byte.is_ascii_digit())
        {
            None => Err(Stop::NeedMore),
            Some(0) => Err(Stop::Fallback),
            Some(count) => {
                self.at += count;
                Ok(())
            }
        }
    }

    /// One JSON value (after whitespace), checked by the grammar, nested at most
    /// [`MAX_DEPTH`] levels.
    fn value(&mut self) -> Result<(), Stop> {
        // Bit `n` is set when the container at depth `n + 1` is an object.
        let mut objects = 0_u64;
        let mut depth = 0_u32;
        loop {
            // A value starts here.
            let mut closed = true;
            match self.peek()? {
                open @ (b'{' | b'[') => {
                    self.at += 1;
                    if depth == MAX_DEPTH {
                        return Err(Stop::Fallback);
                    }
                    let object = open == b'{';
                    objects = (objects & !(1 << depth)) | (u64::from(object) << depth);
                    depth += 1;
                    let close = if object { b'}' } else { b']' };
                    if self.peek()? == close {
                        self.at += 1;
                        depth -= 1;
                    } else {
                        if object {
                            self.member_name()?;
                        }
                        closed = false;
                    }
                }
                b'"' => {
                    self.at += 1;
                    self.value_string()?;
                }
                b'-' | b'0'..=b'9' => self.number()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => return Err(Stop::Fallback),
            }
            if !closed {
                continue;
            }
            // A value ended: close containers until one continues, or the value is whole.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let object = objects >> (depth - 1) & 1 == 1;
                match self.peek()? {
                    b',' => {
                        self.at += 1;
                        if object {
                            self.member_name()?;
                        }
                        break;
                    }
                    b'}' if object => {
                        self.at += 1;
                        depth -= 1;
                    }
                    b']' if !object => {
                        self.at += 1;
                        depth -= 1;
                    }
                    _ => return Err(Stop::Fallback),
                }
            }
        }
    }

    /// An object member's name and its colon.
    fn member_name(&mut self) -> Result<(), Stop> {
        self.eat(b'"')?;
        self.value_string()?;
        self.eat(b':')
    }
}

/// Where the first byte that ends a string's plain run is in `bytes`: a quote, a
/// backslash or a control byte (`None` if there is none).
///
/// Eight bytes at a time (the classic "has a zero byte" bit trick on a `u64`): strings
/// are most of an entry's bytes, and a byte-by-byte search was the fast path's hottest
/// loop. The trick can flag bytes after the first match, never before it, so the lowest
/// flagged byte is the answer.
fn string_stop(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let stops = |byte: u8| byte == b'"' || byte == b'\\' || byte < 0x20;
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in chunks.by_ref() {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let zero_in = |value: u64| value.wrapping_sub(ONES) & !value & HIGHS;
        let flagged = zero_in(word ^ (ONES * u64::from(b'"')))
            | zero_in(word ^ (ONES * u64::from(b'\\')))
            // A byte below 0x20: subtracting 0x20 borrows into its high bit.
            | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS);
        if flagged != 0 {
            return Some(offset + (flagged.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&byte| stops(byte))
        .map(|at| offset + at)
}

/// Refuses every request, noting whether `serde_json`'s raw-value newtype was asked for.
struct Probe<'a> {
    raw: &'a mut bool,
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<W: Visitor<'de>>(self, _: W) -> Result<W::Value, Self::Error> {
        Err(de::Error::custom("a probe"))
    }

    fn deserialize_newtype_struct<W: Visitor<'de>>(
        self,
        name: &'static str,
        _: W,
    ) -> Result<W::Value, Self::Error> {
        *self.raw = name == RAW_VALUE_TOKEN;
        Err(de::Error::custom("a probe"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// Hands a raw value's (already validated) text to `V` the way `serde_json` does: the
/// raw-value newtype, as a map of one entry from the token to the text.
struct RawText<'a>(&'a str);

impl<'de> Deserializer<'de> for RawText<'_> {
    type Error = de::value::Error;

    fn deserialize_any<W: Visitor<'de>>(self, _: W) -> Result<W::Value, Self::Error> {
        Err(de::Error::custom("only a raw value reads raw text"))
    }

    fn deserialize_newtype_struct<W: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: W,
    ) -> Result<W::Value, Self::Error> {
        if name == RAW_VALUE_TOKEN {
            visitor.visit_map(RawMap(Some(self.0)))
        } else {
            self.deserialize_any(visitor)
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// The one entry `{token: text}` of a raw value.
struct RawMap<'a>(Option<&'a str>);

impl<'de> MapAccess<'de> for RawMap<'_> {
    type Error = de::value::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        if self.0.is_none() {
            return Ok(None);
        }
        let token: StrDeserializer<'_, Self::Error> = RAW_VALUE_TOKEN.into_deserializer();
        seed.deserialize(token).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        let Some(text) = self.0.take() else {
            return Err(de::Error::custom("a raw value has one entry"));
        };
        let text: StrDeserializer<'_, Self::Error> = text.into_deserializer();
        seed.deserialize(text)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    use super::{Fast, is_raw_value, raw_entry};
    use crate::{CacheEntry, format::Framed, scan::text_problem};

    /// What the strict path's first step makes of `bytes`: the entry and its length, if
    /// `serde_json` reads it and its bytes are JSON text.
    fn strict(bytes: &[u8]) -> Option<(String, CacheEntry<Box<RawValue>>, usize)> {
        let mut stream =
            serde_json::Deserializer::from_slice(bytes).into_iter::<Framed<Box<RawValue>>>();
        let Some(Ok(Framed(key, entry))) = stream.next() else {
            return None;
        };
        let length = stream.byte_offset();
        text_problem(&bytes[..length])
            .is_none()
            .then_some((key, entry, length))
    }

    fn fast(bytes: &[u8]) -> Fast<(String, CacheEntry<Box<RawValue>>)> {
        raw_entry::<Box<RawValue>>(bytes, &mut Vec::new())
    }

    #[test]
    fn only_raw_values_take_the_fast_path() {
        assert!(is_raw_value::<Box<RawValue>>());
        assert!(is_raw_value::<std::sync::Arc<RawValue>>());
        assert!(!is_raw_value::<serde_json::Value>());
        assert!(!is_raw_value::<String>());
        assert!(!is_raw_value::<Option<Box<RawValue>>>());
    }

    #[test]
    fn entries_as_save_writes_them_take_the_fast_path() {
        let text = r#"{"key":"user:1","value":{"name":"Ada \"the\" first\n","n":[1,-2.5e-3,true,null,{}],"e":[]},"expiresAt":1700000000000,"tags":["a","b"]},"#;
        let Fast::Done((key, entry), length) = fast(text.as_bytes()) else {
            panic!("the fast path refused a plain entry");
        };
        assert_eq!(length, text.len() - 1);
        assert_eq!(key, "user:1");
        assert_eq!(
            entry.value.get(),
            r#"{"name":"Ada \"the\" first\n","n":[1,-2.5e-3,true,null,{}],"e":[]}"#
        );
        assert_eq!(entry.expires_at, Some(1_700_000_000_000));
        assert_eq!(entry.tags, Some(vec!["a".to_string(), "b".to_string()]));
        // Cut anywhere, it asks for more rather than guessing.
        for cut in 0..length {
            assert!(
                matches!(fast(&text.as_bytes()[..cut]), Fast::NeedMore),
                "cut {cut}"
            );
        }
    }

    /// Pieces of entries, right and wrong, for the property below: keys, values, and
    /// the other fields.
    fn pieces() -> [Vec<&'static str>; 3] {
        let keys = vec![
            r#""key":"k1""#,
            r#""key":"k2""#,
            r#""key":"é""#,
            r#""key":"k\"1""#,
            r#""key":"\ud800""#,
            r#""key":1"#,
            r#""key":null"#,
            r#""k\u0065y":"k2""#,
        ];
        let values = vec![
            r#""value":1"#,
            r#""value": {"a" : [1, 2.5, -0, 1e400, "x\ty"]}"#,
            r#""value":[[[[{"a":{}}]]]]"#,
            r#""value":"\u00e9""#,
            r#""value":"\ud800""#,
            r#""value":[1,]"#,
            r#""value":01"#,
            r#""value":-"#,
            r#""value":1.e3"#,
            r#""value":tru"#,
            r#""value":{"a":1,}"#,
            r#""value":{"a":1]"#,
            r#""value":[1}"#,
            r#""value":{1:2}"#,
            r#""value":"a\qb""#,
            r#""value":nullx"#,
        ];
        let others = vec![
            r#""expiresAt":null"#,
            r#""expiresAt":0"#,
            r#""expiresAt":17"#,
            r#""expiresAt":01"#,
            r#""expiresAt":-1"#,
            r#""expiresAt":1.5"#,
            r#""expiresAt":1e3"#,
            r#""expiresAt":18446744073709551615"#,
            r#""expiresAt":99999999999999999999"#,
            r#""tags":null"#,
            r#""tags":[]"#,
            r#""tags":[ "a" , "b" ]"#,
            r#""tags":[1]"#,
            r#""tags":["a",]"#,
            r#""tags":["a\n"]"#,
            r#""other":1"#,
            r#""other":1e400"#,
            r#""other":["x"]"#,
        ];
        [keys, values, others]
    }

    fn entry_text() -> impl Strategy<Value = Vec<u8>> {
        let [keys, values, others] = pieces();
        let all: Vec<&str> = keys.iter().chain(&values).chain(&others).copied().collect();
        let spaces = prop::sample::select(vec!["", "", " ", "\n\t\r "]);
        (
            prop::sample::select(keys),
            prop::sample::select(values),
            prop::collection::vec(prop::sample::select(all), 0..4),
            any::<prop::sample::Index>(),
            prop::collection::vec(spaces, 16),
            prop_oneof![
                6 => Just(Vec::new()),
                1 => prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..3),
            ],
            prop_oneof![4 => Just(None), 1 => any::<prop::sample::Index>().prop_map(Some)],
        )
            .prop_map(|(key, value, mut fields, order, spaces, damage, cut)| {
                fields.push(key);
                fields.insert(order.index(fields.len()), value);
                let mut text = String::from(spaces[0]);
                text.push('{');
                for (index, field) in fields.iter().enumerate() {
                    if index > 0 {
                        text.push(',');
                    }
                    text.push_str(spaces[index % 15 + 1]);
                    text.push_str(field);
                    text.push_str(spaces[(index + 7) % 15 + 1]);
                }
                text.push_str("},{\"key\"");
                let mut bytes = text.trim_start().as_bytes().to_vec();
                for (at, byte) in damage {
                    let at = at.index(bytes.len());
                    bytes[at] = byte;
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(bytes.len()));
                }
                bytes
            })
    }

    /// Not vacuous: every whole, undamaged combination of the pieces the fast path
    /// reads takes it.
    #[test]
    fn every_combination_of_plain_fields_takes_the_fast_path() {
        let [keys, values, others] = pieces();
        let plain_values = &values[..3];
        let plain_others = [&others[0..3], &others[9..12]].concat();
        for key in &keys[..3] {
            for value in plain_values {
                for other in &plain_others {
                    for text in [
                        format!("{{{key},{value},{other}}},"),
                        format!("{{ {other} , {value} ,\n{key} }}]"),
                    ] {
                        let outcome = fast(text.as_bytes());
                        assert!(matches!(outcome, Fast::Done(..)), "{text}");
                        assert!(strict(text.as_bytes()).is_some(), "{text}");
                    }
                }
            }
        }
    }

    proptest! {
        /// The word-at-a-time search finds exactly the first quote, backslash or
        /// control byte, wherever it sits and whatever bytes surround it.
        #[test]
        fn string_stop_finds_the_first_stop_byte(
            bytes in prop::collection::vec(
                prop_oneof![
                    8 => 0x20_u8..=0xFF,
                    1 => prop::sample::select(vec![b'"', b'\\', 0x00, 0x1F, 0x20, 0x21, 0x5B, 0x5D, 0x7F, 0x80, 0xA2, 0xDC]),
                    1 => any::<u8>(),
                ],
                0..40,
            ),
        ) {
            let naive = bytes
                .iter()
                .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20);
            prop_assert_eq!(super::string_stop(&bytes), naive);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Whatever the fast path accepts, the strict path accepts too, with the same
        /// key, entry and length: it can only be faster, never judge differently.
        #[test]
        fn the_fast_path_accepts_only_what_the_strict_path_reads_the_same(bytes in entry_text()) {
            let outcome = fast(&bytes);
            if let Fast::Done((key, entry), length) = outcome {
                let strict = strict(&bytes);
                prop_assert!(strict.is_some(), "{:?}", String::from_utf8_lossy(&bytes));
                let (strict_key, strict_entry, strict_length) = strict.unwrap();
                prop_assert_eq!(key, strict_key);
                prop_assert_eq!(entry.value.get(), strict_entry.value.get());
                prop_assert_eq!(entry.expires_at, strict_entry.expires_at);
                prop_assert_eq!(entry.tags, strict_entry.tags);
                prop_assert_eq!(length, strict_length);
            }
        }
    }
}
