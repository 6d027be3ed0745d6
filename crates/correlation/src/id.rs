//! Identifiers: the correlation id, the W3C trace id and span id, and the trace flags.

use std::{fmt, str::FromStr, sync::Arc};

use serde::{Serialize, Serializer};
use uuid::Uuid;

/// Whether [`CorrelationId::new`] makes ids whose trace id is random in its right-most 7
/// bytes (Trace Context Level 2's `random` flag): a UUID v4 is random there; the `v7`
/// feature's UUID v7 holds part of a counter in those bytes.
pub(crate) const FRESH_IDS_ARE_RANDOM: bool = !cfg!(feature = "v7");

/// The longest correlation id accepted from outside (`x-correlation-id`, `x-request-id`).
pub const MAX_CORRELATION_ID_LEN: usize = 128;

/// The id that ties every log line of one request together.
///
/// Either a UUID (v4 by default, v7 with the `v7` feature) that this crate generated or
/// received in canonical form, or a validated id received from a caller: at most
/// [`MAX_CORRELATION_ID_LEN`] bytes of ASCII letters, digits and `-_.:+/=@`. Because of that
/// character set, an id never needs escaping in a log line or a header.
///
/// Cloning is a copy for UUIDs and a reference-count increment for received text; it never
/// allocates.
///
/// ```
/// use keel_correlation::CorrelationId;
///
/// let id: CorrelationId = "req-42".parse().unwrap();
/// assert_eq!(id.to_string(), "req-42");
/// assert!("has space".parse::<CorrelationId>().is_err());
/// assert!(CorrelationId::new().as_uuid().is_some());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CorrelationId(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    /// The UUID's two halves (high, low). Stored as `u64`s, not `Uuid` (a byte array), so
    /// they sit aligned after the tag: an unaligned copy at offset 1 costs a store-forwarding
    /// stall on every read, which more than doubled the cost of `correlation_id()`.
    Uuid(u64, u64),
    Text(Arc<str>),
}

impl Repr {
    fn uuid(uuid: Uuid) -> Self {
        let (high, low) = uuid.as_u64_pair();
        Self::Uuid(high, low)
    }
}

/// Why a received correlation id was rejected. The rejected text itself is never kept, so
/// it cannot reach a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidCorrelationId {
    /// The id was empty.
    Empty,
    /// The id was longer than [`MAX_CORRELATION_ID_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The byte at `position` is outside the safe character set.
    BadCharacter {
        /// Byte offset of the first offending byte.
        position: usize,
    },
}

impl fmt::Display for InvalidCorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("correlation id is empty"),
            Self::TooLong { len } => write!(
                f,
                "correlation id is {len} bytes long, more than the {MAX_CORRELATION_ID_LEN} allowed"
            ),
            Self::BadCharacter { position } => write!(
                f,
                "correlation id has a character outside [A-Za-z0-9-_.:+/=@] at byte {position}"
            ),
        }
    }
}

impl std::error::Error for InvalidCorrelationId {}

impl CorrelationId {
    /// A fresh id: UUID v4 (or v7 with the `v7` feature), from a thread-local generator, so no
    /// system call per id.
    ///
    /// ```
    /// assert_ne!(keel_correlation::CorrelationId::new(), keel_correlation::CorrelationId::new());
    /// ```
    #[must_use]
    pub fn new() -> Self {
        #[cfg(feature = "v7")]
        let uuid = Uuid::now_v7();
        #[cfg(not(feature = "v7"))]
        let uuid = crate::random::uuid_v4();
        Self(Repr::uuid(uuid))
    }

    /// Wraps a UUID.
    ///
    /// ```
    /// let uuid = uuid::Uuid::from_u128(7);
    /// assert_eq!(keel_correlation::CorrelationId::from_uuid(uuid).as_uuid(), Some(uuid));
    /// ```
    #[must_use]
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(Repr::uuid(uuid))
    }

    /// The UUID, when this id is one.
    ///
    /// ```
    /// let id: keel_correlation::CorrelationId = "order-7".parse().unwrap();
    /// assert_eq!(id.as_uuid(), None);
    /// ```
    pub fn as_uuid(&self) -> Option<Uuid> {
        match &self.0 {
            Repr::Uuid(high, low) => Some(Uuid::from_u64_pair(*high, *low)),
            Repr::Text(_) => None,
        }
    }

    /// Validates a received id. A canonical lowercase hyphenated UUID becomes a UUID id (and
    /// doubles as the W3C trace id); any other safe text is kept exactly as received.
    ///
    /// # Errors
    /// [`InvalidCorrelationId`] says what was wrong and where; the text is not kept.
    ///
    /// ```
    /// use keel_correlation::{CorrelationId, InvalidCorrelationId};
    ///
    /// assert_eq!(
    ///     CorrelationId::parse("a\nb"),
    ///     Err(InvalidCorrelationId::BadCharacter { position: 1 })
    /// );
    /// ```
    pub fn parse(text: &str) -> Result<Self, InvalidCorrelationId> {
        if text.is_empty() {
            return Err(InvalidCorrelationId::Empty);
        }
        if text.len() > MAX_CORRELATION_ID_LEN {
            return Err(InvalidCorrelationId::TooLong { len: text.len() });
        }
        if let Some(position) = text.bytes().position(|byte| !is_safe_id_byte(byte)) {
            return Err(InvalidCorrelationId::BadCharacter { position });
        }
        if text.len() == 36
            && let Ok(uuid) = Uuid::try_parse(text)
            && !text.bytes().any(|byte| byte.is_ascii_uppercase())
        {
            return Ok(Self(Repr::uuid(uuid)));
        }
        Ok(Self(Repr::Text(Arc::from(text))))
    }

    /// The UUID's bits, when this id is one; for the register-sized fast path of
    /// [`correlation_id`](crate::correlation_id).
    #[inline]
    pub(crate) fn uuid_bits(&self) -> Option<u128> {
        match self.0 {
            Repr::Uuid(high, low) => Some((u128::from(high) << 64) | u128::from(low)),
            Repr::Text(_) => None,
        }
    }

    /// The id of UUID bits from [`CorrelationId::uuid_bits`].
    #[inline]
    pub(crate) fn from_uuid_bits(bits: u128) -> Self {
        // Splitting the value into its halves, truncation intended.
        #[allow(clippy::cast_possible_truncation)]
        Self(Repr::Uuid((bits >> 64) as u64, bits as u64))
    }

    /// The received text, when this id is not a UUID.
    pub(crate) fn as_text(&self) -> Option<&str> {
        match &self.0 {
            Repr::Uuid(..) => None,
            Repr::Text(text) => Some(text),
        }
    }

    /// The W3C trace id this id doubles as, when it is a UUID.
    pub(crate) fn trace_id(&self) -> Option<TraceId> {
        self.as_uuid()
            .and_then(|uuid| TraceId::from_u128(uuid.as_u128()))
    }
}

impl Default for CorrelationId {
    fn default() -> Self {
        Self::new()
    }
}

fn is_safe_id_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-_.:+/=@".contains(&byte)
}

impl FromStr for CorrelationId {
    type Err = InvalidCorrelationId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl From<Uuid> for CorrelationId {
    fn from(uuid: Uuid) -> Self {
        Self::from_uuid(uuid)
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Uuid(high, low) => {
                fmt::Display::fmt(&Uuid::from_u64_pair(*high, *low).hyphenated(), f)
            }
            Repr::Text(text) => f.write_str(text),
        }
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CorrelationId({self})")
    }
}

impl Serialize for CorrelationId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Uuid(high, low) => {
                let mut buffer = Uuid::encode_buffer();
                serializer.serialize_str(
                    Uuid::from_u64_pair(*high, *low)
                        .hyphenated()
                        .encode_lower(&mut buffer),
                )
            }
            Repr::Text(text) => serializer.serialize_str(text),
        }
    }
}

/// The W3C trace id: 16 bytes, never all zero.
///
/// ```
/// let id = keel_correlation::TraceId::from_u128(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736).unwrap();
/// assert_eq!(id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert!(keel_correlation::TraceId::from_u128(0).is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(u128);

impl TraceId {
    /// A trace id from its value; `None` for zero, which the W3C forbids.
    pub fn from_u128(value: u128) -> Option<Self> {
        (value != 0).then_some(Self(value))
    }

    /// A fresh random trace id.
    pub(crate) fn random() -> Self {
        // The version and variant bits of a v4 UUID are never zero, so neither is the value.
        Self(crate::random::uuid_v4().as_u128())
    }

    /// The value.
    pub fn to_u128(self) -> u128 {
        self.0
    }
}

/// The W3C span id (`parent-id` in `traceparent`): 8 bytes, never all zero.
///
/// ```
/// let id = keel_correlation::SpanId::from_u64(0x00f0_67aa_0ba9_02b7).unwrap();
/// assert_eq!(id.to_string(), "00f067aa0ba902b7");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(u64);

impl SpanId {
    /// A span id from its value; `None` for zero, which the W3C forbids.
    pub fn from_u64(value: u64) -> Option<Self> {
        (value != 0).then_some(Self(value))
    }

    /// A fresh random span id.
    pub(crate) fn random() -> Self {
        Self(crate::random::span_bits())
    }

    /// The value.
    pub fn to_u64(self) -> u64 {
        self.0
    }
}

/// The W3C `trace-flags` byte. W3C Trace Context Level 2 (the version this crate
/// implements, see the crate docs) defines [`TraceFlags::SAMPLED`] and
/// [`TraceFlags::RANDOM`]; the other bits are reserved and "Vendors MUST set those to zero".
/// A parsed byte keeps every bit as received; what this crate sends
/// ([`TraceParent`](crate::TraceParent)'s `Display`, a trace's
/// [`flags`](crate::TraceContext::flags)) is [`TraceFlags::defined`].
///
/// ```
/// use keel_correlation::TraceFlags;
///
/// assert!(TraceFlags::SAMPLED.is_sampled());
/// assert_eq!(TraceFlags::new(0x09).to_string(), "09");
/// assert_eq!(TraceFlags::new(0xff).defined(), TraceFlags::new(0x03));
/// assert!(TraceFlags::new(0x02).is_random());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceFlags(u8);

impl TraceFlags {
    /// The caller may have recorded trace data.
    pub const SAMPLED: Self = Self(0x01);

    /// Level 2's `random-trace-id` flag: at least the right-most 7 bytes of the trace id
    /// are random. A received flag is sent on unchanged with the same trace id; a new trace
    /// sets it when its trace id is random (a UUID v4 is; a UUID v7, with the `v7` feature,
    /// is not: its low bytes hold a counter).
    pub const RANDOM: Self = Self(0x02);

    /// No flag set.
    pub const NONE: Self = Self(0);

    /// Flags from their byte.
    pub const fn new(bits: u8) -> Self {
        Self(bits)
    }

    /// The byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Only the bits the specification defines (`sampled`, `random`), the reserved ones
    /// zeroed: the flags to send downstream.
    #[must_use]
    pub const fn defined(self) -> Self {
        Self(self.0 & (Self::SAMPLED.0 | Self::RANDOM.0))
    }

    /// Only the bits `level` defines: [`defined`](Self::defined) for Level 2, `sampled`
    /// alone for Level 1.
    ///
    /// ```
    /// use keel_correlation::{TraceContextLevel, TraceFlags};
    /// assert_eq!(TraceFlags::new(0xff).defined_at(TraceContextLevel::Level1), TraceFlags::SAMPLED);
    /// ```
    #[must_use]
    pub const fn defined_at(self, level: crate::TraceContextLevel) -> Self {
        match level {
            crate::TraceContextLevel::Level1 => Self(self.0 & Self::SAMPLED.0),
            _ => self.defined(),
        }
    }

    /// These flags with `other`'s bits set too.
    ///
    /// ```
    /// use keel_correlation::TraceFlags;
    /// assert_eq!(TraceFlags::SAMPLED.with(TraceFlags::RANDOM).bits(), 0x03);
    /// ```
    #[must_use]
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// These flags with `other`'s bits cleared.
    ///
    /// ```
    /// use keel_correlation::TraceFlags;
    /// assert_eq!(TraceFlags::new(0x03).without(TraceFlags::SAMPLED), TraceFlags::RANDOM);
    /// ```
    #[must_use]
    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Whether the `sampled` bit is set (masked, as the specification asks).
    pub const fn is_sampled(self) -> bool {
        self.0 & Self::SAMPLED.0 == Self::SAMPLED.0
    }

    /// Whether the `random-trace-id` bit is set (masked).
    pub const fn is_random(self) -> bool {
        self.0 & Self::RANDOM.0 == Self::RANDOM.0
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Two lowercase hex digits for every byte value, so a byte is one table load.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut table = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = [HEX_DIGITS[byte >> 4], HEX_DIGITS[byte & 0xf]];
        byte += 1;
    }
    table
};

/// Writes the low `N / 2` bytes of `value` as `N` lowercase hex digits into a stack buffer
/// (`N` even: the crate's ids are whole bytes).
pub(crate) fn hex<const N: usize>(value: u128) -> [u8; N] {
    let mut out = [b'0'; N];
    let bytes = value.to_be_bytes();
    let used = &bytes[16 - N / 2..];
    for (pair, byte) in out.chunks_exact_mut(2).zip(used) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
    }
    out
}

fn write_hex<const N: usize>(value: u128, sink: impl FnOnce(&str) -> fmt::Result) -> fmt::Result {
    let digits = hex::<N>(value);
    sink(std::str::from_utf8(&digits).unwrap_or_default())
}

macro_rules! hex_display {
    ($type:ty, $digits:literal, $name:literal) => {
        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex::<$digits>(u128::from(self.0), |text| f.pad(text))
            }
        }

        impl fmt::Debug for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($name, "({})"), self)
            }
        }

        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let digits = hex::<$digits>(u128::from(self.0));
                serializer.serialize_str(std::str::from_utf8(&digits).unwrap_or_default())
            }
        }
    };
}

hex_display!(TraceId, 32, "TraceId");
hex_display!(SpanId, 16, "SpanId");
hex_display!(TraceFlags, 2, "TraceFlags");

/// The value of each lowercase hex digit, `0xff` for every other byte.
const HEX_VALUES: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut digit: u8 = 0;
    while digit < 16 {
        table[HEX_DIGITS[digit as usize] as usize] = digit;
        digit += 1;
    }
    table
};

/// Parses 1 to 16 lowercase hex digits into a `u64` (one table load per digit).
pub(crate) fn parse_hex_u64(digits: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    let mut invalid = 0u8;
    for &digit in digits {
        let nibble = HEX_VALUES[usize::from(digit)];
        // Checked once at the end: no branch per digit.
        invalid |= nibble;
        value = (value << 4) | u64::from(nibble & 0xf);
    }
    (invalid & 0xf0 == 0).then_some(value)
}

/// Parses 8 lowercase hex digits at once, as one `u64` (SWAR): about a quarter of the
/// work of eight table loads, for the 50 digits of every `traceparent` a server reads.
fn parse_hex8(digits: [u8; 8]) -> Option<u32> {
    let (value, invalid) = hex8(digits);
    (invalid == 0).then_some(value)
}

/// The value of 8 hex digits, and a mask that is 0 exactly when all 8 are lowercase hex
/// digits (the value means nothing otherwise), so a caller reading several fields checks
/// them all with one branch.
#[inline(always)]
pub(crate) fn hex8(digits: [u8; 8]) -> (u32, u64) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Little-endian (the first digit in the low byte), with one byte swap of the result
    // at the end: a big-endian load of each field was vectorised into a dozen shuffles.
    let bytes = u64::from_le_bytes(digits);
    // For every byte `b` below 0x80, `(b | 0x80) - c` keeps its high bit exactly when
    // `b >= c` (for `c <= 0x80`), and never borrows from the next byte.
    let at_least = |c: u8| ((bytes | HIGH) - ONES * u64::from(c)) & HIGH;
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    // A byte is bad when its high bit is set or it is neither a digit nor a letter.
    let invalid = (bytes & HIGH) | ((digit | letter) ^ HIGH);
    // `0`-`9` are their low nibble; `a`-`f` have 1-6 there and bit 6 set, worth 9 more.
    let nibbles = (bytes & (ONES * 0x0f)) + ((bytes >> 6) & ONES) * 9;
    // Pack neighbours together: each digit pair into the byte of its first digit (first
    // digit high), then those bytes into 32 bits, first pair lowest.
    let pairs = ((nibbles << 4) | (nibbles >> 8)) & 0x00ff_00ff_00ff_00ff;
    let quads = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    // The low 32 bits hold the eight digits' value, byte-reversed; truncation intended.
    #[allow(clippy::cast_possible_truncation)]
    let value = ((quads | (quads >> 16)) as u32).swap_bytes();
    (value, invalid)
}

/// Parses exactly `digits.len()` lowercase hex digits; `None` on anything else.
pub(crate) fn parse_lower_hex(digits: &[u8]) -> Option<u128> {
    match digits.len() {
        0 | 33.. => None,
        // The ids' lengths (16 and 32 digits), eight at a time.
        len if len % 8 == 0 => digits.chunks_exact(8).try_fold(0u128, |value, chunk| {
            let chunk: [u8; 8] = chunk.try_into().ok()?;
            Some((value << 32) | u128::from(parse_hex8(chunk)?))
        }),
        1..=16 => parse_hex_u64(digits).map(u128::from),
        len => {
            let (high, low) = digits.split_at(len - 16);
            let high = parse_hex_u64(high)?;
            let low = parse_hex_u64(low)?;
            Some((u128::from(high) << 64) | u128::from(low))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CorrelationId, SpanId, parse_hex_u64, parse_lower_hex};

    /// The digit-by-digit parser, the reference for the eight-at-a-time one.
    fn reference(digits: &[u8]) -> Option<u128> {
        digits.iter().try_fold(0u128, |value, &digit| {
            let nibble = match digit {
                b'0'..=b'9' => digit - b'0',
                b'a'..=b'f' => digit - b'a' + 10,
                _ => return None,
            };
            Some((value << 4) | u128::from(nibble))
        })
    }

    #[test]
    fn eight_digits_at_once_agree_with_one_at_a_time_for_every_byte_anywhere() {
        // Every byte value at every position of an 8-, 16- and 32-digit field, around
        // digits that sit next to each class boundary (`/0`, `9:`, `` `a ``, `fg`).
        for base in [
            &b"09af09af"[..],
            b"0123456789abcdef",
            b"f0e1d2c3b4a5968778695a4b3c2d1e0f",
        ] {
            for position in 0..base.len() {
                for byte in 0..=u8::MAX {
                    let mut digits = base.to_vec();
                    digits[position] = byte;
                    assert_eq!(parse_lower_hex(&digits), reference(&digits), "{digits:?}");
                }
            }
        }
        assert_eq!(
            parse_lower_hex(b"ffffffffffffffffffffffffffffffff"),
            Some(u128::MAX)
        );
        assert_eq!(
            parse_hex_u64(b"00f067aa0ba902b7"),
            Some(0x00f0_67aa_0ba9_02b7)
        );
    }

    proptest::proptest! {
        #[test]
        fn any_field_parses_as_digit_by_digit(digits in proptest::collection::vec(proptest::prop_oneof![
            proptest::sample::select(b"0123456789abcdef".to_vec()),
            proptest::prelude::any::<u8>(),
        ], 0..=34)) {
            let expected = (!digits.is_empty() && digits.len() <= 32).then(|| reference(&digits)).flatten();
            proptest::prop_assert_eq!(parse_lower_hex(&digits), expected);
        }
    }

    #[test]
    fn fresh_ids_have_the_configured_uuid_version() {
        let version = CorrelationId::new()
            .as_uuid()
            .map(|uuid| uuid.get_version_num());
        assert_eq!(version, Some(if cfg!(feature = "v7") { 7 } else { 4 }));
    }

    #[test]
    fn span_ids_are_non_zero_and_vary() {
        let ids: std::collections::HashSet<u64> =
            (0..1000).map(|_| SpanId::random().to_u64()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(!ids.contains(&0));
    }
}
