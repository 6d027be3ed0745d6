//! Hostile input and failing sinks: nothing panics, the traced work still returns its value.

use std::{
    fmt,
    io::{self, Write},
};

use keel_correlation::Tracer;

use crate::{Capture, ready};

struct FailingWriter;

impl Write for FailingWriter {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("disk on fire"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct PanickingWriter;

impl Write for PanickingWriter {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        panic!("writer bug");
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn failing_sink_is_counted_and_the_work_returns() {
    let tracer = Tracer::writer(FailingWriter);
    assert_eq!(ready(tracer.start_trace("work", async { 7 })), 7);
    assert_eq!(tracer.write_failures(), 2);
    let result: Result<(), String> = ready(tracer.start_trace("work", async { Err("e".into()) }));
    assert_eq!(result, Err("e".into()));
    assert_eq!(tracer.write_failures(), 4);
}

#[test]
fn panicking_sink_is_counted_and_the_work_returns() {
    let tracer = Tracer::writer(PanickingWriter);
    assert_eq!(ready(tracer.start_trace("work", async { 7 })), 7);
    assert_eq!(tracer.trace_sync("sync", || 8), 8);
    assert_eq!(tracer.write_failures(), 4);
}

#[test]
fn huge_operation_names_stay_one_line() {
    let capture = Capture::default();
    let operation = "op\n".repeat(300_000);
    ready(capture.tracer().start_trace(operation.clone(), async {}));
    let lines = capture.lines();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["operation"], operation);
}

/// An error whose `Display` fails half-way.
struct BrokenDisplay;

impl fmt::Display for BrokenDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("half")?;
        Err(fmt::Error)
    }
}

#[test]
fn failing_error_display_still_gives_a_valid_line() {
    let capture = Capture::default();
    let result: Result<(), BrokenDisplay> = ready(
        capture
            .tracer()
            .start_trace("broken", async { Err(BrokenDisplay) }),
    );
    assert!(result.is_err());
    let lines = capture.lines();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["outcome"], "error");
    assert_eq!(lines[1]["error"], "<error text could not be formatted>");
}

#[test]
fn control_characters_and_lossy_text_are_escaped() {
    let capture = Capture::default();
    let nasty = format!(
        "{}\r\n\u{0}\u{1b}[31m\u{2028}\"\\",
        String::from_utf8_lossy(&[0xff, 0xfe, b'x'])
    );
    let result: Result<(), String> = ready(
        capture
            .tracer()
            .start_trace("nasty", async { Err(nasty.clone()) }),
    );
    assert!(result.is_err());
    let text = capture.text();
    assert_eq!(text.matches('\n').count(), 2);
    assert!(!text.contains('\r') && !text.contains('\u{1b}'));
    assert_eq!(capture.lines()[1]["error"], nasty);
}

/// An error whose `Display` panics.
struct PanickingDisplay;

impl fmt::Display for PanickingDisplay {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        panic!("display bug");
    }
}

#[test]
fn panicking_error_display_still_gives_a_valid_line() {
    let capture = Capture::default();
    let result: Result<(), PanickingDisplay> = ready(
        capture
            .tracer()
            .start_trace("broken", async { Err(PanickingDisplay) }),
    );
    assert!(result.is_err());
    let lines = capture.lines();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["error"], "<error text could not be formatted>");
}

/// A `tracing` subscriber formatting events as flat JSON into `capture`, with `writer`
/// as its sink.
fn json_subscriber<W>(writer: W) -> impl tracing::Subscriber
where
    W: for<'writer> tracing_subscriber::fmt::MakeWriter<'writer> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .event_format(tracing_subscriber::fmt::format().json().flatten_event(true))
        .with_writer(writer)
        .finish()
}

#[test]
fn tracing_output_survives_a_panicking_error_display() {
    let capture = Capture::default();
    let writer = capture.clone();
    let tracer = Tracer::tracing();
    let (result, sync_result) =
        tracing::subscriber::with_default(json_subscriber(move || writer.clone()), || {
            let result: Result<(), PanickingDisplay> =
                ready(tracer.start_trace("broken", async { Err(PanickingDisplay) }));
            let sync_result: Result<(), PanickingDisplay> =
                tracer.trace_sync("broken-sync", || Err(PanickingDisplay));
            (result, sync_result)
        });
    assert!(result.is_err() && sync_result.is_err());
    let events = capture.lines();
    assert_eq!(events.len(), 4);
    for end in [&events[1], &events[3]] {
        assert_eq!(end["outcome"], "error");
        assert_eq!(end["error"], "<error text could not be formatted>");
    }
}

#[test]
fn tracing_output_survives_a_failing_error_display() {
    // tracing-subscriber's JSON formatter renders a `Display` field with `serde_json`, which
    // panics when the `Display` returns `Err`.
    let capture = Capture::default();
    let writer = capture.clone();
    let result: Result<(), BrokenDisplay> =
        tracing::subscriber::with_default(json_subscriber(move || writer.clone()), || {
            ready(Tracer::tracing().start_trace("broken", async { Err(BrokenDisplay) }))
        });
    assert!(result.is_err());
    let events = capture.lines();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["error"], "<error text could not be formatted>");
}

#[test]
fn tracing_output_with_a_panicking_subscriber_is_counted_and_the_work_returns() {
    let tracer = Tracer::tracing();
    let (value, sync_value) =
        tracing::subscriber::with_default(json_subscriber(|| PanickingWriter), || {
            (
                ready(tracer.start_trace("work", async { 7 })),
                tracer.trace_sync("sync", || 8),
            )
        });
    assert_eq!((value, sync_value), (7, 8));
    assert_eq!(tracer.write_failures(), 4);
}
