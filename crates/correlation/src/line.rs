//! The JSON lines: one object per event, built in a reused per-thread buffer and handed to
//! the sink with a single `write_all`.
//!
//! Fields whose characters are fixed by construction (timestamp, ids, hex, level, event,
//! outcome) are copied verbatim: they never need escaping (a received correlation id is
//! limited to `[A-Za-z0-9-_.:+/=@]` by `CorrelationId::parse`). Free text (the operation
//! and the error) and the duration are written by `serde_json`, so escaping is always right
//! and a newline in an error can never start a second line.

use std::{
    cell::{Cell, RefCell},
    fmt,
    panic::{AssertUnwindSafe, catch_unwind},
    time::{Duration, Instant, SystemTime},
};

use crate::{
    clock::{unix_nanos, unix_nanos_at},
    context::TraceContext,
    id::SpanId,
};

/// What the end line reports.
pub(crate) struct End<'a> {
    pub(crate) level: &'static str,
    pub(crate) outcome: &'static str,
    pub(crate) ended: Instant,
    pub(crate) error: Option<&'a dyn fmt::Display>,
}

impl End<'_> {
    pub(crate) fn duration(&self, context: &TraceContext) -> Duration {
        // A tracer that writes lines always has a start; a missing one reads as 0.
        context.started.map_or(Duration::ZERO, |started| {
            self.ended.saturating_duration_since(started)
        })
    }
}

/// What the line says when the error's `Display` fails or panics.
const UNFORMATTABLE: &str = "<error text could not be formatted>";

/// Renders the error text. A user's `Display` may return `Err` or panic; neither may take
/// the line (or the traced work) down, so both become [`UNFORMATTABLE`]. Every output uses
/// it, `tracing` events too: handed the `Display` itself, a subscriber would run it
/// unguarded (and `tracing-subscriber`'s JSON formatter panics on `Err`). Only error
/// outcomes pay for this `String`.
pub(crate) fn error_text(error: &dyn fmt::Display) -> String {
    let rendered = catch_unwind(AssertUnwindSafe(|| {
        let mut text = String::new();
        fmt::write(&mut text, format_args!("{error}")).map(|()| text)
    }));
    match rendered {
        Ok(Ok(text)) => text,
        _ => UNFORMATTABLE.to_owned(),
    }
}

/// Builds the line for `context` (a start line when `end` is `None`) and hands the complete
/// bytes, newline included, to `write`.
pub(crate) fn with_line<R>(
    context: &TraceContext,
    end: Option<&End<'_>>,
    write: impl FnOnce(&[u8]) -> R,
) -> R {
    let error = end.and_then(|end| end.error).map(error_text);
    let build = |buffer: &mut Vec<u8>| {
        buffer.clear();
        build_line(buffer, context, end, error.as_deref());
    };
    thread_local! {
        // Reused so a line costs no allocation once the buffer has grown.
        static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    let mut write = Some(write);
    let reused = BUFFER.try_with(|buffer| {
        // A writer that itself writes a line would re-enter: it gets a fresh buffer below.
        let mut buffer = buffer.try_borrow_mut().ok()?;
        let write = write.take()?;
        build(&mut buffer);
        let result = write(&buffer);
        // Do not let one huge line pin memory for the thread's lifetime.
        if buffer.capacity() > 64 * 1024 {
            *buffer = Vec::new();
        }
        Some(result)
    });
    match (reused, write) {
        (Ok(Some(result)), _) => result,
        (_, Some(write)) => {
            let mut buffer = Vec::new();
            build(&mut buffer);
            write(&buffer)
        }
        // `write` was consumed, which only happens together with a result.
        (_, None) => unreachable!("line writer consumed without a result"),
    }
}

fn build_line(
    out: &mut Vec<u8>,
    context: &TraceContext,
    end: Option<&End<'_>>,
    error: Option<&str>,
) {
    let instant = match end {
        Some(end) => Some(end.ended),
        None => context.started,
    };
    let nanos = instant.map_or_else(|| unix_nanos(SystemTime::now()), unix_nanos_at);
    out.extend_from_slice(b"{\"timestamp\":\"");
    out.extend_from_slice(&timestamp_of_nanos(nanos));
    out.extend_from_slice(b"\",\"level\":\"");
    out.extend_from_slice(end.map_or("info", |end| end.level).as_bytes());
    out.extend_from_slice(b"\",\"event\":\"");
    out.extend_from_slice(if end.is_some() {
        b"trace.end"
    } else {
        b"trace.start"
    });
    out.extend_from_slice(b"\",\"correlation_id\":\"");
    let trace_hex = crate::id::hex::<32>(context.trace_id.to_u128());
    match context.correlation_id.uuid_bits() {
        // The usual case: the trace id is the UUID, so its hex digits are already there.
        Some(bits) if bits == context.trace_id.to_u128() => push_hyphenated(out, &trace_hex),
        Some(bits) => push_hyphenated(out, &crate::id::hex::<32>(bits)),
        // Validated to the safe character set when it was parsed.
        None => out.extend_from_slice(
            context
                .correlation_id
                .as_text()
                .unwrap_or_default()
                .as_bytes(),
        ),
    }
    out.extend_from_slice(b"\",\"trace_id\":\"");
    out.extend_from_slice(&trace_hex);
    out.extend_from_slice(b"\",\"span_id\":\"");
    push_span(out, context.span_id);
    if let Some(parent) = context.parent_span_id {
        out.extend_from_slice(b"\",\"parent_span_id\":\"");
        push_span(out, parent);
    }
    out.extend_from_slice(b"\",\"operation\":");
    push_json_str(out, context.operation.as_str());
    if let Some(end) = end {
        out.extend_from_slice(b",\"outcome\":\"");
        out.extend_from_slice(end.outcome.as_bytes());
        out.extend_from_slice(b"\",\"duration_ms\":");
        push_json(out, &duration_ms(end.duration(context)));
        if let Some(error) = error {
            out.extend_from_slice(b",\"error\":");
            push_json(out, error);
        }
    }
    out.extend_from_slice(b"}\n");
}

/// Appends a UUID's 32 hex digits in its hyphenated form (8-4-4-4-12).
fn push_hyphenated(out: &mut Vec<u8>, hex: &[u8; 32]) {
    for (index, group) in [
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..],
    ]
    .into_iter()
    .enumerate()
    {
        if index > 0 {
            out.push(b'-');
        }
        out.extend_from_slice(group);
    }
}

/// Appends `text` as a JSON string: quoted as it is when nothing in it needs escaping (an
/// operation name usually), else through `serde_json`.
fn push_json_str(out: &mut Vec<u8>, text: &str) {
    let plain = text
        .bytes()
        .all(|byte| byte >= 0x20 && byte != b'"' && byte != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        push_json(out, text);
    }
}

fn push_span(out: &mut Vec<u8>, span: SpanId) {
    out.extend_from_slice(&crate::id::hex::<16>(u128::from(span.to_u64())));
}

/// Appends `value` as JSON (a quoted, escaped string or a number).
fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Serialising a `str` or an `f64` into a `Vec` cannot fail (a non-finite float, which a
    // duration never is, would be written as `null`).
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Milliseconds with microsecond resolution, so the number prints short.
pub(crate) fn duration_ms(duration: Duration) -> f64 {
    // Through `u64` (one instruction to `f64`, where `u128` is a library call); precision
    // loss only above 2^53 microseconds (285 years).
    #[allow(clippy::cast_precision_loss)]
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX) as f64;
    micros / 1000.0
}

/// RFC 3339 UTC with milliseconds: `2026-11-28T05:34:46.123Z`, clamped to years 0000-9999.
#[cfg(any(test, feature = "tracing-subscriber"))]
pub(crate) fn timestamp(time: SystemTime) -> [u8; 24] {
    timestamp_of_nanos(unix_nanos(time))
}

/// [`timestamp`] of a time given in nanoseconds since the Unix epoch.
pub(crate) fn timestamp_of_nanos(nanos: i128) -> [u8; 24] {
    // Rounded down to the millisecond, before the epoch too (so 1 ns before is .999).
    let millis = i64::try_from(nanos.div_euclid(1_000_000)).unwrap_or(if nanos < 0 {
        i64::MIN
    } else {
        i64::MAX
    });
    // 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z.
    let millis = millis.clamp(-62_167_219_200_000, 253_402_300_799_999);
    let seconds = millis.div_euclid(1000);
    thread_local! {
        /// The last second formatted on this thread and its `YYYY-MM-DDTHH:MM:SS` text: the
        /// lines of one second share it, so a line formats only its milliseconds.
        static LAST_SECOND: Cell<(i64, [u8; 19])> = const { Cell::new((i64::MIN, [0; 19])) };
    }
    let cached = LAST_SECOND
        .try_with(Cell::get)
        .ok()
        .filter(|(second, _)| *second == seconds);
    let mut out = *b"0000-00-00T00:00:00.000Z";
    if let Some((_, text)) = cached {
        out[..19].copy_from_slice(&text);
    } else {
        format_second(&mut out, seconds);
        let mut text = [0; 19];
        text.copy_from_slice(&out[..19]);
        let _ = LAST_SECOND.try_with(|last| last.set((seconds, text)));
    }
    put_digits(&mut out, 20, 3, millis.rem_euclid(1000));
    out
}

/// Writes `value` (in `0..10^width`) as `width` decimal digits at `at`.
fn put_digits(out: &mut [u8; 24], at: usize, width: usize, value: i64) {
    let mut value = value;
    for index in (at..at + width).rev() {
        // `value` is in 0..=9999 here, so every digit fits a `u8`.
        out[index] = b'0' + u8::try_from(value % 10).unwrap_or(0);
        value /= 10;
    }
}

/// Writes the date and time of day of `seconds` since the epoch into `out[..19]`.
fn format_second(out: &mut [u8; 24], seconds: i64) {
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    put_digits(out, 0, 4, year);
    put_digits(out, 5, 2, month);
    put_digits(out, 8, 2, day);
    put_digits(out, 11, 2, second_of_day / 3600);
    put_digits(out, 14, 2, second_of_day / 60 % 60);
    put_digits(out, 17, 2, second_of_day % 60);
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::timestamp;

    fn text(bytes: [u8; 24]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn the_cached_second_is_reused_only_within_its_second() {
        // One thread, so every call sees the cache the previous one left.
        let cases = [
            (1_795_844_086_007, "2026-11-28T05:34:46.007Z"),
            (1_795_844_086_999, "2026-11-28T05:34:46.999Z"),
            (1_795_844_087_000, "2026-11-28T05:34:47.000Z"),
            (1_795_844_086_500, "2026-11-28T05:34:46.500Z"),
            (86_400_000 + 46_500, "1970-01-02T00:00:46.500Z"),
            (1_795_844_086_001, "2026-11-28T05:34:46.001Z"),
        ];
        for (millis, expected) in cases {
            let time = UNIX_EPOCH + Duration::from_millis(millis);
            assert_eq!(
                text(timestamp(time)),
                expected,
                "{millis} ms after the epoch"
            );
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_123, "2000-02-29T00:00:00.123Z"),
            (1_795_844_086_007, "2026-11-28T05:34:46.007Z"),
            (4_102_444_799_999, "2099-12-31T23:59:59.999Z"),
            (u64::MAX / 2, "9999-12-31T23:59:59.999Z"),
        ];
        for (millis, expected) in cases {
            let time = UNIX_EPOCH + Duration::from_millis(millis);
            assert_eq!(
                text(timestamp(time)),
                expected,
                "{millis} ms after the epoch"
            );
        }
        assert_eq!(
            text(timestamp(UNIX_EPOCH - Duration::from_millis(1))),
            "1969-12-31T23:59:59.999Z"
        );
        assert_eq!(
            text(timestamp(UNIX_EPOCH - Duration::from_micros(1))),
            "1969-12-31T23:59:59.999Z"
        );
        assert_eq!(
            text(timestamp(UNIX_EPOCH - Duration::from_secs(70_000_000_000))),
            "0000-01-01T00:00:00.000Z"
        );
    }
}
