//! The JSON lines: one serialised object per event, written with a single `write_all`.

use std::{
    cell::RefCell,
    fmt,
    panic::{AssertUnwindSafe, catch_unwind},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Serialize, Serializer};

use crate::{
    context::TraceContext,
    id::{CorrelationId, SpanId, TraceId},
};

/// One start or end line. Field order here is the order in the output.
#[derive(Serialize)]
struct Line<'a> {
    timestamp: Timestamp,
    level: &'static str,
    event: &'static str,
    correlation_id: &'a CorrelationId,
    trace_id: TraceId,
    span_id: SpanId,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<SpanId>,
    operation: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// What the end line reports.
pub(crate) struct End<'a> {
    pub(crate) level: &'static str,
    pub(crate) outcome: &'static str,
    pub(crate) duration: Duration,
    pub(crate) error: Option<&'a dyn fmt::Display>,
}

/// What the line says when the error's `Display` fails or panics.
const UNFORMATTABLE: &str = "<error text could not be formatted>";

/// Renders the error text. A user's `Display` may return `Err` or panic; neither may take
/// the line (or the traced work) down, so both become [`UNFORMATTABLE`]. Only error outcomes
/// pay for this `String`.
fn error_text(error: &dyn fmt::Display) -> String {
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
    let line = Line {
        timestamp: Timestamp(if end.is_some() {
            SystemTime::now()
        } else {
            context.start_time
        }),
        level: end.map_or("info", |end| end.level),
        event: if end.is_some() {
            "trace.end"
        } else {
            "trace.start"
        },
        correlation_id: &context.correlation_id,
        trace_id: context.trace_id,
        span_id: context.span_id,
        parent_span_id: context.parent_span_id,
        operation: &context.operation,
        outcome: end.map(|end| end.outcome),
        duration_ms: end.map(|end| duration_ms(end.duration)),
        error: error.as_deref(),
    };
    thread_local! {
        // Reused so a line costs no allocation once the buffer has grown.
        static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    let mut write = Some(write);
    let reused = BUFFER.try_with(|buffer| {
        // A writer that itself starts a trace would re-enter: it gets a fresh buffer below.
        let mut buffer = buffer.try_borrow_mut().ok()?;
        let write = write.take()?;
        Some(serialize_into(&line, &mut buffer, write))
    });
    match (reused, write) {
        (Ok(Some(result)), _) => result,
        (_, Some(write)) => serialize_into(&line, &mut Vec::new(), write),
        // `write` was consumed, which only happens together with a result.
        (_, None) => unreachable!("line writer consumed without a result"),
    }
}

fn serialize_into<R>(line: &Line<'_>, buffer: &mut Vec<u8>, write: impl FnOnce(&[u8]) -> R) -> R {
    buffer.clear();
    // Writing into a `Vec` cannot fail, and every field is plain data by now.
    let _ = serde_json::to_writer(&mut *buffer, line);
    buffer.push(b'\n');
    let result = write(buffer);
    // Do not let one huge line pin memory for the thread's lifetime.
    if buffer.capacity() > 64 * 1024 {
        *buffer = Vec::new();
    }
    result
}

/// Milliseconds with microsecond resolution, so the number prints short.
pub(crate) fn duration_ms(duration: Duration) -> f64 {
    // Precision loss only above 2^53 microseconds (285 years).
    #[allow(clippy::cast_precision_loss)]
    let micros = duration.as_micros() as f64;
    micros / 1000.0
}

/// RFC 3339 UTC with milliseconds: `2026-11-28T05:34:46.123Z`.
#[derive(Clone, Copy)]
pub(crate) struct Timestamp(pub(crate) SystemTime);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (seconds, millis) = match self.0.duration_since(UNIX_EPOCH) {
            Ok(after) => (
                i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                after.subsec_millis(),
            ),
            Err(before) => {
                let before = before.duration();
                let whole = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
                match before.subsec_millis() {
                    0 => (-whole, 0),
                    millis => (-whole - 1, 1000 - millis),
                }
            }
        };
        let days = seconds.div_euclid(86_400);
        let second_of_day = seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days.saturating_add(719_468);
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

    use super::Timestamp;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_123, "2000-02-29T00:00:00.123Z"),
            (1_795_844_086_007, "2026-11-28T05:34:46.007Z"),
            (4_102_444_799_999, "2099-12-31T23:59:59.999Z"),
        ];
        for (millis, expected) in cases {
            let time = UNIX_EPOCH + Duration::from_millis(millis);
            assert_eq!(
                Timestamp(time).to_string(),
                expected,
                "{millis} ms after the epoch"
            );
        }
        let before = UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!(Timestamp(before).to_string(), "1969-12-31T23:59:59.999Z");
    }
}
