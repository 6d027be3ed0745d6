//! W3C Trace Context: parsing and formatting of the `traceparent` and `tracestate` values.

use std::{fmt, str::FromStr, sync::Arc};

use crate::id::{SpanId, TraceFlags, TraceId, hex8, parse_hex_u64, parse_lower_hex};

/// The length of a version `00` `traceparent` value, and the minimum for higher versions.
const TRACEPARENT_LEN: usize = 55;

/// The most list members a `tracestate` may hold.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The combined `tracestate` length the specification asks participants to propagate at
/// least, and the length this crate truncates to when it sends one (see
/// [`TraceState::truncate`]).
pub const MAX_TRACESTATE_LEN: usize = 512;

/// Which level of W3C Trace Context a participant follows. The crate follows
/// [`Level2`](TraceContextLevel::Level2), the current specification, unless a
/// [`Propagation`](crate::Propagation) asks for Level 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TraceContextLevel {
    /// The Level 1 Recommendation, strictly: only the `sampled` flag is defined (the others
    /// are sent as zero, `random` included), `tracestate` keys are a simple key
    /// (`lcalpha 0*255(lcalpha / DIGIT / "_" / "-" / "*" / "/")`) or `tenant@system`
    /// (tenant `(lcalpha / DIGIT) 0*240(…)`, system `lcalpha 0*13(…)`), and a duplicated
    /// key invalidates the whole `tracestate`, as Level 1's test suite expects.
    Level1,
    /// The current specification (see the crate docs): the `random` flag, `@` allowed in
    /// keys after the first character, duplicated entries dropped one by one.
    #[default]
    Level2,
}

/// Entries longer than this are the first removed when a `tracestate` is truncated.
const LONG_ENTRY: usize = 128;

/// A parsed `traceparent` value.
///
/// Parsing follows the W3C Trace Context specification (Level 2): lowercase hex only, exact field
/// lengths, version `ff` and all-zero ids invalid, version `00` must be exactly 55
/// characters, and a higher version is read for its known fields (anything after a `-`
/// following the flags is ignored). Optional whitespace around the whole value, which HTTP
/// allows around any field value, is ignored. Any two hex digits are accepted as flags and
/// kept as received in [`flags`](TraceParent::flags). Formatting always writes version `00`,
/// the highest version this crate knows, and only the flags that version defines
/// (`sampled` and `random`, [`TraceFlags::defined`]): the specification asks for the
/// reserved bits to be sent as zero.
///
/// ```
/// use keel_correlation::TraceParent;
///
/// let parent: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?;
/// assert!(parent.flags.is_sampled());
/// assert_eq!(parent.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
///
/// // A future version with extra fields: the known fields are used, the rest ignored.
/// let future: TraceParent = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds".parse()?;
/// assert_eq!(future, parent);
///
/// // Undefined flag bits are read, but sent as zero.
/// let odd: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff".parse()?;
/// assert_eq!(odd.flags.bits(), 0xff);
/// assert_eq!(odd.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03");
/// # Ok::<(), keel_correlation::TraceParentError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace id.
    pub trace_id: TraceId,
    /// The caller's span id (`parent-id`).
    pub parent_id: SpanId,
    /// The trace flags, as received when parsed (formatting sends only the defined ones).
    pub flags: TraceFlags,
}

/// Why a `traceparent` value was rejected; positions are byte offsets into the value after
/// surrounding whitespace was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceParentError {
    /// The version is not two lowercase hex digits followed by `-`.
    BadVersion,
    /// Version `ff`, which the specification forbids.
    ForbiddenVersion,
    /// The value is shorter than the 55 characters every version needs.
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Version `00` with more than its 55 characters.
    TrailingData {
        /// Its length.
        len: usize,
    },
    /// A field is not made of lowercase hex digits of the exact length.
    BadField {
        /// `trace-id`, `parent-id` or `trace-flags`.
        field: &'static str,
        /// Where the field starts.
        position: usize,
    },
    /// A `-` delimiter is missing.
    MissingDash {
        /// Where it should be.
        position: usize,
    },
    /// The trace id is all zeros.
    ZeroTraceId,
    /// The parent id is all zeros.
    ZeroParentId,
    /// The `traceparent` header was sent more than once.
    Repeated,
    /// The header value is not valid UTF-8.
    NotUtf8,
}

impl fmt::Display for TraceParentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadVersion => {
                f.write_str("traceparent version is not two lowercase hex digits and a dash")
            }
            Self::ForbiddenVersion => f.write_str("traceparent version ff is forbidden"),
            Self::TooShort { len } => {
                write!(f, "traceparent is {len} characters long, shorter than 55")
            }
            Self::TrailingData { len } => {
                write!(
                    f,
                    "traceparent version 00 is {len} characters long instead of 55"
                )
            }
            Self::BadField { field, position } => {
                write!(
                    f,
                    "traceparent {field} at byte {position} is not lowercase hex of the right length"
                )
            }
            Self::MissingDash { position } => {
                write!(f, "traceparent lacks a `-` at byte {position}")
            }
            Self::ZeroTraceId => f.write_str("traceparent trace-id is all zeros"),
            Self::ZeroParentId => f.write_str("traceparent parent-id is all zeros"),
            Self::Repeated => f.write_str("traceparent header was sent more than once"),
            Self::NotUtf8 => f.write_str("traceparent is not valid UTF-8"),
        }
    }
}

impl std::error::Error for TraceParentError {}

impl TraceParent {
    /// Parses a `traceparent` value.
    ///
    /// # Errors
    /// [`TraceParentError`] names the rule the value breaks and where.
    pub fn parse(value: &str) -> Result<Self, TraceParentError> {
        Self::parse_ascii(value.as_bytes())
    }

    /// [`TraceParent::parse`] of a header's raw bytes, with the same result as checking
    /// them for UTF-8 first (an invalid value is [`TraceParentError::NotUtf8`]), without
    /// that pass over every byte of a valid one: its known fields are lowercase hex and
    /// dashes, so only an error, or bytes around or after them (whitespace, a future
    /// version's fields), need the check.
    pub(crate) fn parse_bytes(value: &[u8]) -> Result<Self, TraceParentError> {
        let parsed = Self::parse_ascii(value);
        if (parsed.is_err() || value.len() > TRACEPARENT_LEN) && std::str::from_utf8(value).is_err()
        {
            return Err(TraceParentError::NotUtf8);
        }
        parsed
    }

    fn parse_ascii(value: &[u8]) -> Result<Self, TraceParentError> {
        match Self::parse_canonical(value) {
            Some(parsed) => Ok(parsed),
            None => Self::parse_general(value),
        }
    }

    /// Every form of the specification, each error with its reason.
    fn parse_general(value: &[u8]) -> Result<Self, TraceParentError> {
        let bytes = trim_ows_bytes(value);
        let version = bytes
            .get(0..2)
            .and_then(parse_lower_hex)
            .ok_or(TraceParentError::BadVersion)?;
        if bytes.get(2) != Some(&b'-') {
            return Err(TraceParentError::BadVersion);
        }
        if version == 0xff {
            return Err(TraceParentError::ForbiddenVersion);
        }
        if bytes.len() < TRACEPARENT_LEN {
            return Err(TraceParentError::TooShort { len: bytes.len() });
        }
        if version == 0 && bytes.len() > TRACEPARENT_LEN {
            return Err(TraceParentError::TrailingData { len: bytes.len() });
        }
        let trace_id = field(bytes, 3, 32, "trace-id")?;
        let parent_id = field(bytes, 36, 16, "parent-id")?;
        let flags = field(bytes, 53, 2, "trace-flags")?;
        if bytes.len() > TRACEPARENT_LEN && bytes[TRACEPARENT_LEN] != b'-' {
            return Err(TraceParentError::MissingDash {
                position: TRACEPARENT_LEN,
            });
        }
        Ok(Self {
            trace_id: TraceId::from_u128(trace_id).ok_or(TraceParentError::ZeroTraceId)?,
            parent_id: u64::try_from(parent_id)
                .ok()
                .and_then(SpanId::from_u64)
                .ok_or(TraceParentError::ZeroParentId)?,
            flags: TraceFlags::new(u8::try_from(flags).unwrap_or(0)),
        })
    }
}

impl TraceParent {
    /// The form nearly every `traceparent` has (version `00`, exactly 55 bytes, no
    /// whitespace, valid), read at its fixed offsets in one pass of straight-line code;
    /// `None` for anything else, which the general path then parses or rejects with its
    /// reason. It accepts only values the general path accepts, with the same result (a
    /// test checks both on mutated values), and costs a server a third of the general
    /// path's instructions.
    #[inline]
    fn parse_canonical(value: &[u8]) -> Option<Self> {
        let bytes: &[u8; TRACEPARENT_LEN] = value.try_into().ok()?;
        if bytes[..3] != *b"00-" || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let chunk = |start: usize| {
            let mut digits = [0; 8];
            digits.copy_from_slice(&bytes[start..start + 8]);
            hex8(digits)
        };
        let (t0, b0) = chunk(3);
        let (t1, b1) = chunk(11);
        let (t2, b2) = chunk(19);
        let (t3, b3) = chunk(27);
        let (p0, b4) = chunk(36);
        let (p1, b5) = chunk(44);
        if b0 | b1 | b2 | b3 | b4 | b5 != 0 {
            return None;
        }
        let trace_id = (u128::from(t0) << 96)
            | (u128::from(t1) << 64)
            | (u128::from(t2) << 32)
            | u128::from(t3);
        let parent_id = (u64::from(p0) << 32) | u64::from(p1);
        let flags = u8::try_from(parse_hex_u64(&bytes[53..])?).ok()?;
        Some(Self {
            trace_id: TraceId::from_u128(trace_id)?,
            parent_id: SpanId::from_u64(parent_id)?,
            flags: TraceFlags::new(flags),
        })
    }
}

/// Reads `len` lowercase hex digits at `start`, checking the `-` before them.
fn field(
    bytes: &[u8],
    start: usize,
    len: usize,
    name: &'static str,
) -> Result<u128, TraceParentError> {
    if bytes[start - 1] != b'-' {
        return Err(TraceParentError::MissingDash {
            position: start - 1,
        });
    }
    bytes
        .get(start..start + len)
        .and_then(parse_lower_hex)
        .ok_or(TraceParentError::BadField {
            field: name,
            position: start,
        })
}

/// Removes HTTP optional whitespace (spaces and horizontal tabs) from both ends of bytes
/// (neither is ever part of a multi-byte UTF-8 character, so this is [`trim_ows`]).
fn trim_ows_bytes(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// Removes HTTP optional whitespace (spaces and horizontal tabs) from both ends.
fn trim_ows(value: &str) -> &str {
    value.trim_matches([' ', '\t'])
}

impl FromStr for TraceParent {
    type Err = TraceParentError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{}",
            self.trace_id,
            self.parent_id,
            self.flags.defined()
        )
    }
}

/// A parsed `tracestate`: vendor key/value pairs, in order, passed on downstream.
///
/// The grammar is W3C Trace Context Level 2's: a key is `(lcalpha / DIGIT) 0*255(lcalpha /
/// DIGIT / "_" / "-" / "*" / "/" / "@")`, so at most 256 characters, starting with a
/// lowercase letter or a digit, `@` allowed anywhere after the first character (`foo@`,
/// `foo@@bar` and `tenant@system` with any part lengths are all keys; `@foo` is not); a
/// value is 1 to 256 printable ASCII characters other than `,` and `=`, not ending in a
/// space. Optional whitespace around members is ignored, empty members are allowed (and
/// dropped), and at most 32 members are accepted. A key that appears again is the
/// specification's "duplicate key that was not generated by" this participant: the later
/// entries are dropped and the rest of the header kept.
///
/// ```
/// use keel_correlation::TraceState;
///
/// let state: TraceState = " rojo=00f067aa0ba902b7 ,, congo=t61rcWkgMzE,tenant@vendor=x".parse()?;
/// assert_eq!(state.get("congo"), Some("t61rcWkgMzE"));
/// assert_eq!(state.to_string(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,tenant@vendor=x");
/// assert_eq!("rojo=1,congo=2,rojo=3".parse::<TraceState>()?.to_string(), "rojo=1,congo=2");
/// assert!("@rojo=1".parse::<TraceState>().is_err());
/// # Ok::<(), keel_correlation::TraceStateError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TraceState {
    members: Arc<[(Box<str>, Box<str>)]>,
}

/// Why a `tracestate` value was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceStateError {
    /// A member has no `=`.
    MissingEquals {
        /// Index of the member (counting empty members).
        member: usize,
    },
    /// A member's key breaks the key grammar.
    BadKey {
        /// Index of the member.
        member: usize,
    },
    /// A member's value breaks the value grammar.
    BadValue {
        /// Index of the member.
        member: usize,
    },
    /// A key appears twice; only under [`TraceContextLevel::Level1`] (Level 2 drops the
    /// later entries instead).
    DuplicateKey {
        /// Index of the second occurrence.
        member: usize,
    },
    /// More than 32 non-empty members.
    TooManyMembers,
    /// The header value is not valid UTF-8.
    NotUtf8,
}

impl fmt::Display for TraceStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingEquals { member } => write!(f, "tracestate member {member} has no `=`"),
            Self::BadKey { member } => write!(f, "tracestate member {member} has an invalid key"),
            Self::BadValue { member } => {
                write!(f, "tracestate member {member} has an invalid value")
            }
            Self::DuplicateKey { member } => write!(f, "tracestate member {member} repeats a key"),
            Self::TooManyMembers => {
                write!(
                    f,
                    "tracestate has more than {MAX_TRACESTATE_MEMBERS} members"
                )
            }
            Self::NotUtf8 => f.write_str("tracestate is not valid UTF-8"),
        }
    }
}

impl std::error::Error for TraceStateError {}

impl TraceState {
    /// Parses one `tracestate` value. Several header fields are combined first by joining
    /// them with `,` (RFC 7230), which [`Incoming`](crate::Incoming) does for you.
    ///
    /// # Errors
    /// [`TraceStateError`] names the rule broken and the member index.
    pub fn parse(value: &str) -> Result<Self, TraceStateError> {
        Self::parse_level(value, TraceContextLevel::Level2)
    }

    /// Parses one `tracestate` value by the rules of `level` (see [`TraceContextLevel`]).
    ///
    /// ```
    /// use keel_correlation::{TraceContextLevel, TraceState};
    ///
    /// assert!(TraceState::parse_level("foo@=1", TraceContextLevel::Level2).is_ok());
    /// assert!(TraceState::parse_level("foo@=1", TraceContextLevel::Level1).is_err());
    /// assert!(TraceState::parse_level("a=1,a=2", TraceContextLevel::Level1).is_err());
    /// ```
    ///
    /// # Errors
    /// [`TraceStateError`] names the rule broken and the member index.
    pub fn parse_level(value: &str, level: TraceContextLevel) -> Result<Self, TraceStateError> {
        let is_valid_key = match level {
            TraceContextLevel::Level1 => is_valid_level1_key,
            TraceContextLevel::Level2 => is_valid_key,
        };
        let mut members: Vec<(Box<str>, Box<str>)> = Vec::new();
        for (index, member) in value.split(',').enumerate() {
            let member = trim_ows(member);
            if member.is_empty() {
                continue;
            }
            let (key, member_value) = member
                .split_once('=')
                .ok_or(TraceStateError::MissingEquals { member: index })?;
            if !is_valid_key(key) {
                return Err(TraceStateError::BadKey { member: index });
            }
            if !is_valid_value(member_value) {
                return Err(TraceStateError::BadValue { member: index });
            }
            if members.iter().any(|(existing, _)| **existing == *key) {
                if level == TraceContextLevel::Level1 {
                    return Err(TraceStateError::DuplicateKey { member: index });
                }
                // The first entry is the one a well-behaved sender moved to the front.
                continue;
            }
            if members.len() == MAX_TRACESTATE_MEMBERS {
                return Err(TraceStateError::TooManyMembers);
            }
            members.push((key.into(), member_value.into()));
        }
        Ok(Self {
            members: members.into(),
        })
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter()
            .find(|(existing, _)| *existing == key)
            .map(|(_, value)| value)
    }

    /// The members, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members.iter().map(|(key, value)| (&**key, &**value))
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Sets `key` to `value` and moves it to the front, as the specification asks of a
    /// participant adding or updating its own entry; the right-most member is dropped if
    /// the list would exceed 32.
    ///
    /// # Errors
    /// [`TraceStateError::BadKey`] or [`TraceStateError::BadValue`] (member 0).
    ///
    /// ```
    /// let mut state: keel_correlation::TraceState = "congo=1,rojo=2".parse()?;
    /// state.insert("rojo", "3")?;
    /// assert_eq!(state.to_string(), "rojo=3,congo=1");
    /// # Ok::<(), keel_correlation::TraceStateError>(())
    /// ```
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), TraceStateError> {
        if !is_valid_key(key) {
            return Err(TraceStateError::BadKey { member: 0 });
        }
        if !is_valid_value(value) {
            return Err(TraceStateError::BadValue { member: 0 });
        }
        let mut members = vec![(Box::from(key), Box::from(value))];
        members.extend(
            self.members
                .iter()
                .filter(|(existing, _)| **existing != *key)
                .cloned(),
        );
        members.truncate(MAX_TRACESTATE_MEMBERS);
        self.members = members.into();
        Ok(())
    }

    /// The length of the combined header value (`key=value` entries joined by `,`).
    ///
    /// ```
    /// let state: keel_correlation::TraceState = "a=1, b=22".parse()?;
    /// assert_eq!(state.header_len(), "a=1,b=22".len());
    /// # Ok::<(), keel_correlation::TraceStateError>(())
    /// ```
    pub fn header_len(&self) -> usize {
        let entries: usize = self.iter().map(|(key, value)| entry_len(key, value)).sum();
        entries + self.len().saturating_sub(1)
    }

    /// Removes whole entries until the combined value is at most `max_len` characters, the
    /// way the specification asks: entries longer than 128 characters first (from the
    /// right), then entries from the right. Entries are never cut. The crate truncates to
    /// [`MAX_TRACESTATE_LEN`] (512) whenever it sends a `tracestate`.
    ///
    /// ```
    /// let long = "v".repeat(200);
    /// let mut state: keel_correlation::TraceState = format!("a=1,big={long},b=2,c=3").parse()?;
    /// state.truncate(11);
    /// assert_eq!(state.to_string(), "a=1,b=2,c=3");
    /// state.truncate(8);
    /// assert_eq!(state.to_string(), "a=1,b=2");
    /// # Ok::<(), keel_correlation::TraceStateError>(())
    /// ```
    pub fn truncate(&mut self, max_len: usize) {
        if self.header_len() <= max_len {
            return;
        }
        let mut members: Vec<(Box<str>, Box<str>)> = self.members.to_vec();
        let combined = |members: &[(Box<str>, Box<str>)]| {
            members
                .iter()
                .map(|(key, value)| entry_len(key, value))
                .sum::<usize>()
                + members.len().saturating_sub(1)
        };
        while combined(&members) > max_len {
            let long = members
                .iter()
                .rposition(|(key, value)| entry_len(key, value) > LONG_ENTRY);
            match long {
                Some(index) => {
                    members.remove(index);
                }
                None => {
                    members.pop();
                }
            }
        }
        self.members = members.into();
    }
}

/// The length of one `key=value` entry.
fn entry_len(key: &str, value: &str) -> usize {
    key.len() + 1 + value.len()
}

impl FromStr for TraceState {
    type Err = TraceStateError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

impl fmt::Display for TraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (key, value)) in self.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

/// Level 2's key grammar: `(lcalpha / DIGIT) 0*255(keychar)`, where `keychar` is `lcalpha`,
/// `DIGIT`, `_`, `-`, `*`, `/` or `@`. Level 1's split into a simple key and a
/// `tenant@system` key with their own length limits is gone.
fn is_valid_key(key: &str) -> bool {
    let is_key_char =
        |byte: u8| byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"_-*/@".contains(&byte);
    match key.as_bytes().split_first() {
        Some((&first, rest)) => {
            (first.is_ascii_lowercase() || first.is_ascii_digit())
                && rest.len() <= 255
                && rest.iter().all(|&byte| is_key_char(byte))
        }
        None => false,
    }
}

/// Level 1's key grammar: a simple key, or `tenant@system` with their own length limits.
fn is_valid_level1_key(key: &str) -> bool {
    let is_key_char =
        |byte: u8| byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"_-*/".contains(&byte);
    let part = |part: &str, digit_first: bool, max_rest: usize| match part.as_bytes().split_first()
    {
        Some((&first, rest)) => {
            (first.is_ascii_lowercase() || (digit_first && first.is_ascii_digit()))
                && rest.len() <= max_rest
                && rest.iter().all(|&byte| is_key_char(byte))
        }
        None => false,
    };
    match key.split_once('@') {
        None => part(key, false, 255),
        Some((tenant, system)) => part(tenant, true, 240) && part(system, false, 13),
    }
}

fn is_valid_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 256
        && bytes.last() != Some(&b' ')
        && bytes
            .iter()
            .all(|&byte| (0x20..=0x7e).contains(&byte) && byte != b',' && byte != b'=')
}

#[cfg(test)]
mod tests {
    use super::{TraceParent, TraceParentError};

    /// What reading a header's bytes meant before [`TraceParent::parse_bytes`]: the UTF-8
    /// check, then the parse.
    fn checked_then_parsed(bytes: &[u8]) -> Result<TraceParent, TraceParentError> {
        std::str::from_utf8(bytes)
            .map_err(|_| TraceParentError::NotUtf8)
            .and_then(TraceParent::parse)
    }

    proptest::proptest! {
        #[test]
        fn parsing_bytes_equals_checking_utf8_then_parsing(
            version in proptest::sample::select(vec![&b"00"[..], b"cc", b"ff"]),
            edits in proptest::collection::vec((0usize..70, proptest::prelude::any::<u8>()), 0..3),
            padding in proptest::sample::select(vec![&b""[..], b" ", b"\t ", b"\xc3\xa9"]),
            tail in proptest::sample::select(vec![&b""[..], b"-future", b"-\xff", b"\xe2\x82"]),
            cut in 0usize..75,
        ) {
            let mut bytes = padding.to_vec();
            bytes.extend_from_slice(version);
            bytes.extend_from_slice(b"-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
            bytes.extend_from_slice(tail);
            bytes.extend_from_slice(padding);
            for (position, byte) in edits {
                if let Some(slot) = bytes.get_mut(position) {
                    *slot = byte;
                }
            }
            bytes.truncate(cut.max(50));
            proptest::prop_assert_eq!(TraceParent::parse_bytes(&bytes), checked_then_parsed(&bytes));
        }
    }

    /// The fast path agrees with the general one wherever it answers, and answers for
    /// the canonical form.
    #[track_caller]
    fn agree(bytes: &[u8]) {
        let general = TraceParent::parse_general(bytes);
        match TraceParent::parse_canonical(bytes) {
            Some(fast) => assert_eq!(Ok(fast), general, "{:?}", String::from_utf8_lossy(bytes)),
            None => assert!(
                general.is_err() || bytes.len() != 55 || !bytes.starts_with(b"00-"),
                "the fast path refused a canonical value: {:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }

    #[test]
    fn the_canonical_fast_path_agrees_with_the_general_parser_for_every_byte_anywhere() {
        for base in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000001-0000000000000001-ff",
            b"00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-00",
        ] {
            agree(base);
            for position in 0..base.len() {
                for byte in 0..=u8::MAX {
                    let mut bytes = base.to_vec();
                    bytes[position] = byte;
                    agree(&bytes);
                }
            }
        }
        // All-zero ids, whitespace around, one byte short or long.
        for bytes in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0 ",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            agree(bytes);
        }
    }
}
