//! The crate's own per-thread scope (which replaced tokio's task-local): every way code can
//! enter and leave one leaves the enclosing trace current afterwards, and every place code
//! runs sees its own trace: a panic inside a poll, scopes nested inside a poll, an
//! unfinished future dropped inside another trace, scopes entered inside `with_current`'s
//! closure (which tokio's task-local refused with a panic), and scopes entered while the
//! thread's destructors run (which tokio's refused with a panic too).

use std::{
    cell::RefCell,
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use keel_correlation::{CorrelationId, TraceContext, TraceFutureExt as _, Tracer};

use crate::Capture;

/// A fresh context with a UUID id (read through the id mirror's fast path).
fn context() -> Arc<TraceContext> {
    Tracer::off()
        .trace_sync("source", keel_correlation::current)
        .expect("inside a trace")
}

/// The span id of the current trace, and checks `correlation_id()` agrees with `current()`.
#[track_caller]
fn current_span() -> Option<String> {
    let current = keel_correlation::current();
    assert_eq!(
        keel_correlation::correlation_id(),
        current
            .as_ref()
            .map(|context| context.correlation_id().clone()),
        "correlation_id() disagrees with current()"
    );
    current.map(|context| context.span_id().to_string())
}

/// What [`current_span`] says inside `context`.
#[allow(clippy::unnecessary_wraps)] // Compared with `current_span()`'s `Option`.
fn span_of(context: &TraceContext) -> Option<String> {
    Some(context.span_id().to_string())
}

fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// A future that runs `body` at its first poll and then waits forever.
struct OnPoll<B>(Option<B>);

impl<B: FnOnce() + Unpin> Future for OnPoll<B> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if let Some(body) = self.0.take() {
            body();
        }
        Poll::Pending
    }
}

#[test]
fn a_panic_in_a_poll_makes_the_enclosing_trace_current_again() {
    let outer = context();
    let inner = context();
    keel_correlation::sync_scope(Some(Arc::clone(&outer)), || {
        let mut future = Box::pin(
            async {
                assert_eq!(current_span(), span_of(&inner));
                panic!("deliberate");
            }
            .in_trace(Some(Arc::clone(&inner))),
        );
        let polled = catch_unwind(AssertUnwindSafe(|| poll_once(future.as_mut())));
        assert!(polled.is_err());
        assert_eq!(current_span(), span_of(&outer), "after the panic");
        drop(future);
        assert_eq!(current_span(), span_of(&outer), "after dropping it");
        // A traced future that panics too: its `panic` line is written, and then the
        // enclosing trace is current again.
        let capture = Capture::default();
        let traced = catch_unwind(AssertUnwindSafe(|| {
            crate::ready(capture.tracer().start_trace("panics", async {
                assert!(current_span().is_none(), "deliberate");
            }));
        }));
        assert!(traced.is_err());
        assert_eq!(current_span(), span_of(&outer), "after the traced panic");
        assert_eq!(capture.lines()[1]["outcome"], "panic");
    });
    assert_eq!(current_span(), None);
}

#[test]
fn scopes_nested_inside_a_poll_each_see_their_own_trace_and_unwind_in_order() {
    let (first, second, third) = (context(), context(), context());
    let seen = RefCell::new(Vec::new());
    let mut future = Box::pin(
        OnPoll(Some(|| {
            seen.borrow_mut().push(current_span());
            keel_correlation::sync_scope(Some(Arc::clone(&second)), || {
                seen.borrow_mut().push(current_span());
                // A future polled inside the nested scope: its own trace, then back.
                let mut nested = Box::pin(
                    async { seen.borrow_mut().push(current_span()) }
                        .in_trace(Some(Arc::clone(&third))),
                );
                assert!(poll_once(nested.as_mut()).is_ready());
                seen.borrow_mut().push(current_span());
                // A child trace of the nested scope, inside the poll.
                let child = Tracer::off().trace_sync("child", keel_correlation::current);
                let child = child.expect("inside a trace");
                assert_eq!(child.parent_span_id(), Some(second.span_id()));
            });
            seen.borrow_mut().push(current_span());
        }))
        .in_trace(Some(Arc::clone(&first))),
    );
    assert!(poll_once(future.as_mut()).is_pending());
    assert_eq!(current_span(), None, "between polls nothing is current");
    assert_eq!(
        *seen.borrow(),
        [
            span_of(&first),
            span_of(&second),
            span_of(&third),
            span_of(&second),
            span_of(&first)
        ]
    );
}

/// Records the current span when dropped.
struct Record(Arc<std::sync::Mutex<Vec<Option<String>>>>);

impl Drop for Record {
    fn drop(&mut self) {
        self.0.lock().unwrap().push(current_span());
    }
}

#[test]
fn an_unfinished_trace_dropped_inside_another_trace_ends_as_itself_and_restores_it() {
    let capture = Capture::default();
    let outer = context();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen_in_drop = Arc::clone(&seen);
    let mut future = Box::pin(capture.tracer().start_trace("dropped", async move {
        let _record = Record(seen_in_drop);
        std::future::pending::<()>().await;
    }));
    assert!(poll_once(future.as_mut()).is_pending());
    keel_correlation::sync_scope(Some(Arc::clone(&outer)), || {
        drop(future);
        assert_eq!(
            current_span(),
            span_of(&outer),
            "the enclosing trace is back"
        );
    });
    let lines = capture.lines();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["outcome"], "cancelled");
    let dropped_span = lines[1]["span_id"].as_str().map(str::to_owned);
    assert_eq!(lines[0]["span_id"].as_str(), dropped_span.as_deref());
    assert_ne!(dropped_span, span_of(&outer));
    assert_eq!(
        *seen.lock().unwrap(),
        [dropped_span],
        "the future's destructors ran inside its own trace"
    );
}

#[test]
fn scopes_entered_inside_with_current_are_current_there() {
    let (outer, inner, deepest) = (context(), context(), context());
    keel_correlation::sync_scope(Some(Arc::clone(&outer)), || {
        keel_correlation::with_current(|borrowed| {
            assert_eq!(borrowed.map(TraceContext::span_id), Some(outer.span_id()));
            keel_correlation::sync_scope(Some(Arc::clone(&inner)), || {
                assert_eq!(current_span(), span_of(&inner));
                keel_correlation::with_current(|nested| {
                    assert_eq!(nested.map(TraceContext::span_id), Some(inner.span_id()));
                    // Deeper still, and a future polled and a child trace in there.
                    keel_correlation::sync_scope(Some(Arc::clone(&deepest)), || {
                        assert_eq!(current_span(), span_of(&deepest));
                    });
                    let polled = crate::ready(async { current_span() }.in_trace(None));
                    assert_eq!(polled, None);
                    let child = Tracer::off().trace_sync("child", keel_correlation::current);
                    assert_eq!(
                        child.and_then(|child| child.parent_span_id()),
                        Some(inner.span_id())
                    );
                    assert_eq!(current_span(), span_of(&inner));
                });
                // A panic in there unwinds to the right scope too.
                let panicked = catch_unwind(AssertUnwindSafe(|| {
                    keel_correlation::sync_scope(Some(Arc::clone(&deepest)), || {
                        panic!("deliberate")
                    })
                }));
                assert!(panicked.is_err());
                assert_eq!(current_span(), span_of(&inner));
            });
            assert_eq!(current_span(), span_of(&outer));
            // The borrowed context is still the one the closure was given.
            assert_eq!(borrowed.map(TraceContext::span_id), Some(outer.span_id()));
        });
        assert_eq!(current_span(), span_of(&outer));
    });
    assert_eq!(current_span(), None);
}

#[test]
fn scopes_entered_while_the_thread_is_destroyed_see_no_trace_and_do_not_panic() {
    /// Enters a scope when dropped, after the crate's thread-local is gone.
    struct EntersOnDrop(
        Arc<TraceContext>,
        std::sync::mpsc::Sender<Vec<Option<CorrelationId>>>,
    );
    impl Drop for EntersOnDrop {
        fn drop(&mut self) {
            let mut seen = Vec::new();
            keel_correlation::sync_scope(Some(Arc::clone(&self.0)), || {
                seen.push(keel_correlation::correlation_id());
                seen.push(keel_correlation::current().map(|c| c.correlation_id().clone()));
                keel_correlation::with_current(|context| {
                    seen.push(context.map(|c| c.correlation_id().clone()));
                });
            });
            seen.push(Tracer::off().trace_sync("late", keel_correlation::correlation_id));
            let _ = self.1.send(seen);
        }
    }
    thread_local! {
        static HELD: RefCell<Option<EntersOnDrop>> = const { RefCell::new(None) };
    }
    let (sender, receiver) = std::sync::mpsc::channel();
    let context = context();
    let joined = std::thread::spawn(move || {
        // Touched first, so destroyed after the crate's thread-local (destructors run in
        // reverse order of registration), which the scope below registers.
        HELD.with(|_| {});
        keel_correlation::sync_scope(Some(Arc::clone(&context)), || {});
        HELD.with(|held| *held.borrow_mut() = Some(EntersOnDrop(context, sender)));
    })
    .join();
    assert!(joined.is_ok(), "a scope entered at thread exit panicked");
    let seen = receiver.recv().expect("the destructor ran");
    // Nothing is readable any more, so nothing is claimed: not even the late trace's id.
    assert_eq!(seen, [None, None, None, None]);
}
