//! `tracing-subscriber` integration: the ids as top-level fields of every formatted event.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields, Layer,
        format::{self, Format, Json, JsonFields, Writer},
    },
    registry::LookupSpan,
};

use crate::context::with_current;

/// Wraps an event formatter so every event emitted inside a trace carries
/// `correlation_id`, `trace_id` and `span_id` at the top level.
///
/// A `Layer` cannot change what another layer writes, so the ids are added where the line
/// is made: the wrapped formatter writes the event, and when its output is a JSON object the
/// three fields are spliced in right after the opening `{`; any other output gets them as a
/// `correlation_id=… trace_id=… span_id=… ` prefix (ANSI colours of the wrapped formatter
/// are not kept). Events outside a trace, and the `correlation` target's own start/end
/// events (which carry the ids as fields), pass through unchanged.
///
/// ```
/// use tracing_subscriber::fmt::format;
///
/// let subscriber = tracing_subscriber::fmt()
///     .json()
///     .event_format(correlation::WithCorrelation::new(format().json().flatten_event(true)))
///     .finish();
/// # drop(subscriber);
/// ```
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

/// A ready `fmt` layer: tracing-subscriber's JSON format with the ids at the top level.
///
/// ```
/// use tracing_subscriber::prelude::*;
///
/// let subscriber = tracing_subscriber::registry().with(correlation::json_layer());
/// # drop(subscriber);
/// ```
pub fn json_layer<S>() -> Layer<S, JsonFields, WithCorrelation<Format<Json>>>
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    tracing_subscriber::fmt::layer()
        .json()
        .event_format(WithCorrelation::new(format::format().json()))
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
        if event.metadata().target() == "correlation" {
            return self.inner.format_event(ctx, writer, event);
        }
        with_current(|context| {
            let Some(context) = context else {
                return self.inner.format_event(ctx, writer.by_ref(), event);
            };
            let mut formatted = String::new();
            self.inner
                .format_event(ctx, Writer::new(&mut formatted), event)?;
            // The correlation id's character set needs no JSON escaping (see `CorrelationId`).
            let ids = format_args!(
                "\"correlation_id\":\"{}\",\"trace_id\":\"{}\",\"span_id\":\"{}\"",
                context.correlation_id(),
                context.trace_id(),
                context.span_id()
            );
            if let Some(rest) = formatted.strip_prefix('{') {
                let separator = if rest.trim_start().starts_with('}') {
                    ""
                } else {
                    ","
                };
                write!(writer, "{{{ids}{separator}")?;
                writer.write_str(rest)
            } else {
                write!(
                    writer,
                    "correlation_id={} trace_id={} span_id={} ",
                    context.correlation_id(),
                    context.trace_id(),
                    context.span_id()
                )?;
                writer.write_str(&formatted)
            }
        })
    }
}
