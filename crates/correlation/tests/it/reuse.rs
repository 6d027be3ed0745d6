//! A quiet trace's context reuses the allocation of the last one that ended on its thread:
//! nothing of an earlier trace may show through, and nothing whose drop can be seen (a
//! tracer's writer) may be kept alive by it.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use keel_correlation::{Incoming, Tracer};

/// A writer that records being dropped.
struct DropFlag(Arc<AtomicBool>);

impl std::io::Write for DropFlag {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_finished_trace_keeps_nothing_of_its_tracer_alive() {
    let dropped = Arc::new(AtomicBool::new(false));
    let tracer = Tracer::writer(DropFlag(Arc::clone(&dropped)));
    tracer.trace_sync("job", || ());
    // An async trace's guard lets go of the context before its scope does, so the scope
    // holds the last reference: the case where a context could be kept.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(tracer.start_trace("task", async {}));
    let incoming = Incoming::from_headers([("x-request-id", "req-1")]);
    runtime.block_on(tracer.continue_trace(incoming, "GET /", async {}));
    drop(tracer);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the writer outlived its tracer"
    );
}

#[test]
fn successive_quiet_traces_on_one_thread_see_only_their_own_context() {
    let tracer = Tracer::off();
    let incoming = Incoming::from_headers([(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )]);
    let first = tracer.continue_trace_sync(incoming, "first", || {
        let context = keel_correlation::current().unwrap();
        (
            context.span_id(),
            context.parent_span_id().map(|id| id.to_string()),
        )
    });
    assert_eq!(first.1.as_deref(), Some("00f067aa0ba902b7"));
    for round in 0..3 {
        let operation = format!("second-{round}");
        let (span_id, parent, seen_operation, trace_id) =
            tracer.trace_sync(operation.clone(), || {
                let context = keel_correlation::current().unwrap();
                (
                    context.span_id(),
                    context.parent_span_id(),
                    context.operation().to_owned(),
                    context.trace_id().to_string(),
                )
            });
        assert_ne!(span_id, first.0);
        assert_eq!(parent, None);
        assert_eq!(seen_operation, operation);
        assert_ne!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}

#[test]
fn a_context_kept_after_its_trace_is_not_reused() {
    let tracer = Tracer::off();
    let kept = tracer.trace_sync("kept", || keel_correlation::current().unwrap());
    let id = kept.correlation_id().clone();
    let other = tracer.trace_sync("other", || keel_correlation::correlation_id().unwrap());
    assert_ne!(other, id);
    assert_eq!(kept.operation(), "kept");
    assert_eq!(kept.correlation_id(), &id);
}
