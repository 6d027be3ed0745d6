//! `tracing-subscriber` integration: one flat JSON schema for the crate's own events and the
//! application's, with the ids at the top level exactly once.

use std::{fmt, time::SystemTime};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, Layer, format::JsonFields, format::Writer},
    registry::LookupSpan,
};

use crate::{context::with_current, line::timestamp};

/// The top-level names the schema owns. An application field with one of these names is
/// written as `field.<name>` instead, so it can never pass for the trace's own value.
const RESERVED: [&str; 6] = [
    "timestamp",
    "level",
    "target",
    "correlation_id",
    "trace_id",
    "span_id",
];

/// The id fields, in the order they are written.
const IDS: [&str; 3] = ["correlation_id", "trace_id", "span_id"];

/// The crate's JSON event format, what [`json_layer`] uses: one flat object per line in the
/// schema of the crate's own lines (see the crate docs' "Log format").
///
/// Every line starts with `timestamp` (RFC 3339 UTC, milliseconds) and `level` (lowercase:
/// `trace` … `error`). Inside a trace, `correlation_id`, `trace_id` and `span_id` follow,
/// from the trace itself. An application event then has `target` and its fields at the top
/// level (`message` for the message); a field named like one of the schema's own fields
/// (`timestamp`, `level`, `target`, `correlation_id`, `trace_id`, `span_id`) is written as
/// `field.<name>`. The crate's own `trace.start` / `trace.end` events (from
/// [`Tracer::tracing`](crate::Tracer::tracing)) are written with exactly the fields of the
/// lines [`Tracer::writer`](crate::Tracer::writer) writes.
///
/// The fields of enclosing `tracing` spans are not written; wrap `tracing-subscriber`'s own
/// JSON format in [`WithCorrelation`] for those.
///
/// ```
/// use tracing_subscriber::prelude::*;
///
/// let subscriber = tracing_subscriber::registry()
///     .with(tracing_subscriber::fmt::layer().event_format(keel_correlation::JsonFormat::new()));
/// # drop(subscriber);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tracing-subscriber")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonFormat {
    _private: (),
}

impl JsonFormat {
    /// The format.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A ready `fmt` layer writing [`JsonFormat`].
///
/// ```
/// use tracing_subscriber::prelude::*;
///
/// let subscriber = tracing_subscriber::registry().with(keel_correlation::json_layer());
/// # drop(subscriber);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tracing-subscriber")))]
pub fn json_layer<S>() -> Layer<S, JsonFields, JsonFormat>
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    tracing_subscriber::fmt::layer()
        .json()
        .event_format(JsonFormat::new())
}

/// Whether `event` is one of the crate's own `trace.start` / `trace.end` events, whose
/// fields carry the trace's ids.
fn is_trace_event(event: &Event<'_>) -> bool {
    event.metadata().target() == "keel_correlation"
        && event.metadata().fields().field("correlation_id").is_some()
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

/// Appends `value` as a JSON string or number.
fn push_json<T: serde::Serialize + ?Sized>(out: &mut String, value: &T) {
    // Serialising a string or a number into a `String` cannot fail.
    if let Ok(text) = serde_json::to_string(value) {
        out.push_str(&text);
    }
}

/// The running trace's ids as `"correlation_id":"…","trace_id":"…","span_id":"…"`.
fn context_ids() -> Option<String> {
    with_current(|context| {
        context.map(|context| {
            // The correlation id's character set needs no JSON escaping (see
            // `CorrelationId`); the others are hex.
            format!(
                "\"correlation_id\":\"{}\",\"trace_id\":\"{}\",\"span_id\":\"{}\"",
                context.correlation_id(),
                context.trace_id(),
                context.span_id()
            )
        })
    })
}

/// Writes an event's fields as top-level JSON members.
struct FieldWriter<'a> {
    out: &'a mut String,
    /// The crate's own event: its id fields are written as they are, not renamed.
    own: bool,
}

impl FieldWriter<'_> {
    fn key(&mut self, field: &Field) {
        self.out.push(',');
        let name = field.name();
        if !self.own && RESERVED.contains(&name) {
            push_json(self.out, &format!("field.{name}"));
        } else {
            push_json(self.out, name);
        }
        self.out.push(':');
    }
}

impl Visit for FieldWriter<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        push_json(self.out, &value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        push_json(self.out, &value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        push_json(self.out, &value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.key(field);
        push_json(self.out, &value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.key(field);
        push_json(self.out, &value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        push_json(self.out, &value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json(self.out, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field);
        push_json(self.out, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        push_json(self.out, &format!("{value:?}"));
    }
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let own = is_trace_event(event);
        let mut out = String::with_capacity(256);
        out.push_str("{\"timestamp\":\"");
        out.push_str(std::str::from_utf8(&timestamp(SystemTime::now())).unwrap_or_default());
        out.push_str("\",\"level\":\"");
        out.push_str(level_name(*event.metadata().level()));
        out.push('"');
        if !own {
            if let Some(ids) = context_ids() {
                out.push(',');
                out.push_str(&ids);
            }
            out.push_str(",\"target\":");
            push_json(&mut out, event.metadata().target());
        }
        event.record(&mut FieldWriter { out: &mut out, own });
        out.push_str("}\n");
        writer.write_str(&out)
    }
}

/// Wraps any event formatter so every line has the ids of the running trace at the top
/// level exactly once, and a lowercase `level`.
///
/// A `Layer` cannot change what another layer writes, so the ids are added where the line
/// is made: the wrapped formatter writes the event, and when its output is a JSON object,
/// the ids are inserted after `timestamp` and `level` (whose value is lowercased), and a
/// top-level member named `correlation_id`, `trace_id` or `span_id` that the application
/// wrote (e.g. a field of that name with `flatten_event(true)`) is renamed
/// `field.<name>`, so it can neither duplicate nor spoof the trace's id. The crate's own
/// `trace.start` / `trace.end` events carry their ids as fields; they are written once, at
/// the top level. Any other output gets a `correlation_id=… trace_id=… span_id=… ` prefix
/// (ANSI colours of the wrapped formatter are not kept). Events outside a trace get no ids.
///
/// For a line in exactly the crate's own schema, use [`JsonFormat`] ([`json_layer`]).
///
/// ```
/// use tracing_subscriber::fmt::format;
///
/// let subscriber = tracing_subscriber::fmt()
///     .json()
///     .event_format(keel_correlation::WithCorrelation::new(format().json().flatten_event(true)))
///     .finish();
/// # drop(subscriber);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tracing-subscriber")))]
#[derive(Debug, Clone, Default)]
pub struct WithCorrelation<F> {
    inner: F,
}

impl<F> WithCorrelation<F> {
    /// Wraps `inner`.
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

/// Collects the trace ids an own event carries as fields.
#[derive(Default)]
struct IdCollector {
    ids: [Option<String>; 3],
}

impl Visit for IdCollector {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(index) = IDS.iter().position(|name| *name == field.name()) {
            self.ids[index] = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if let Some(index) = IDS.iter().position(|name| *name == field.name()) {
            self.ids[index] = Some(format!("{value:?}"));
        }
    }
}

/// The top-level members of a JSON object, in order, duplicates kept, values untouched.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;

        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }

        deserializer.deserialize_map(MembersVisitor)
    }
}

impl<S, N, F> FormatEvent<S, N> for WithCorrelation<F>
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let own = is_trace_event(event);
        let ids = if own {
            let mut collector = IdCollector::default();
            event.record(&mut collector);
            let [Some(correlation_id), Some(trace_id), Some(span_id)] = collector.ids else {
                return self.inner.format_event(ctx, writer, event);
            };
            let mut ids = String::new();
            for (name, value) in IDS.iter().zip([correlation_id, trace_id, span_id]) {
                if !ids.is_empty() {
                    ids.push(',');
                }
                push_json(&mut ids, name);
                ids.push(':');
                push_json(&mut ids, &value);
            }
            Some(ids)
        } else {
            context_ids()
        };
        let mut formatted = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut formatted), event)?;
        let trimmed = formatted.trim_end_matches(['\n', '\r']);
        let newline = &formatted[trimmed.len()..];
        if let Ok(Members(members)) = serde_json::from_str::<Members>(trimmed) {
            writer.write_str(&rebuild(&members, ids.as_deref(), own))?;
            return writer.write_str(newline);
        }
        match ids {
            Some(_) if trimmed.starts_with('{') => {
                // JSON we could not read back: better the line as written than a broken one.
                writer.write_str(&formatted)
            }
            Some(_) => {
                with_current(|context| match context {
                    Some(context) => write!(
                        writer,
                        "correlation_id={} trace_id={} span_id={} ",
                        context.correlation_id(),
                        context.trace_id(),
                        context.span_id()
                    ),
                    None => Ok(()),
                })?;
                writer.write_str(&formatted)
            }
            None => writer.write_str(&formatted),
        }
    }
}

/// The object `members` describe, with `ids` after `timestamp` and `level` (or first), the
/// `level` lowercased, and members named like the ids renamed `field.<name>` (dropped for
/// the crate's own events, `own`, whose id fields are the ids).
fn rebuild(members: &[(String, Box<RawValue>)], ids: Option<&str>, own: bool) -> String {
    let mut out = String::with_capacity(256);
    out.push('{');
    let mut first = true;
    let mut separator = |out: &mut String| {
        if !std::mem::take(&mut first) {
            out.push(',');
        }
    };
    let header = members
        .iter()
        .take_while(|(key, _)| key == "timestamp" || key == "level")
        .count();
    let mut ids_written = false;
    for (index, (key, value)) in members.iter().enumerate() {
        if index == header
            && let Some(ids) = ids
        {
            separator(&mut out);
            out.push_str(ids);
            ids_written = true;
        }
        if own && IDS.contains(&key.as_str()) {
            continue;
        }
        separator(&mut out);
        if IDS.contains(&key.as_str()) {
            push_json(&mut out, &format!("field.{key}"));
        } else {
            push_json(&mut out, key);
        }
        out.push(':');
        if key == "level" {
            match serde_json::from_str::<String>(value.get()) {
                Ok(level) => push_json(&mut out, &level.to_ascii_lowercase()),
                Err(_) => out.push_str(value.get()),
            }
        } else {
            out.push_str(value.get());
        }
    }
    if !ids_written && let Some(ids) = ids {
        separator(&mut out);
        out.push_str(ids);
    }
    out.push('}');
    out
}
