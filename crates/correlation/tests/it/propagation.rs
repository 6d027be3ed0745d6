//! The context follows work into tasks, blocking tasks and threads through the helpers, and
//! is lost (as documented) through bare `tokio::spawn`.

use keel_correlation::{CorrelationId, TraceFutureExt as _, Tracer};

/// Runs `body` inside a trace and returns the trace's id and what `body` saw.
async fn traced<F, Fut>(body: F) -> (CorrelationId, Option<CorrelationId>)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<CorrelationId>>,
{
    Tracer::off()
        .start_trace("request", async {
            let id = keel_correlation::correlation_id().unwrap();
            (id, body().await)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_carries_the_trace() {
    let (id, seen) = traced(|| async {
        keel_correlation::spawn(async {
            tokio::task::yield_now().await;
            keel_correlation::correlation_id()
        })
        .await
        .unwrap()
    })
    .await;
    assert_eq!(seen, Some(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_blocking_carries_the_trace() {
    let (id, seen) = traced(|| async {
        keel_correlation::spawn_blocking(keel_correlation::correlation_id)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(seen, Some(id));
}

#[tokio::test]
async fn bind_carries_the_trace_to_a_thread() {
    let (id, seen) = traced(|| async {
        let bound = keel_correlation::bind(keel_correlation::correlation_id);
        std::thread::spawn(bound).join().unwrap()
    })
    .await;
    assert_eq!(seen, Some(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // Bare spawn made safe by `.in_current_trace()`.
async fn in_current_trace_carries_the_trace() {
    let (id, seen) = traced(|| async {
        tokio::spawn(
            async {
                tokio::task::yield_now().await;
                keel_correlation::correlation_id()
            }
            .in_current_trace(),
        )
        .await
        .unwrap()
    })
    .await;
    assert_eq!(seen, Some(id));
}

#[tokio::test]
async fn sync_scope_carries_a_context_to_a_thread() {
    let (id, seen) = traced(|| async {
        let context = keel_correlation::current();
        std::thread::spawn(move || {
            keel_correlation::sync_scope(context, keel_correlation::correlation_id)
        })
        .join()
        .unwrap()
    })
    .await;
    assert_eq!(seen, Some(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // Demonstrates the trap the lint exists for.
async fn bare_tokio_spawn_loses_the_trace() {
    let (_, seen) = traced(|| async {
        tokio::spawn(async { keel_correlation::correlation_id() })
            .await
            .unwrap()
    })
    .await;
    assert_eq!(
        seen, None,
        "tokio does not carry task-locals into spawned tasks"
    );
    let (_, blocking) = traced(|| async {
        tokio::task::spawn_blocking(keel_correlation::correlation_id)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(blocking, None);
    let (_, thread) = traced(|| async {
        std::thread::spawn(keel_correlation::correlation_id)
            .join()
            .unwrap()
    })
    .await;
    assert_eq!(thread, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_started_in_a_spawned_task_is_a_child() {
    let (parent, child) = Tracer::off()
        .start_trace("request", async {
            let parent = keel_correlation::current().unwrap();
            let child =
                keel_correlation::spawn(keel_correlation::start_trace("background", async {
                    keel_correlation::current().unwrap()
                }))
                .await
                .unwrap();
            (parent, child)
        })
        .await;
    assert_eq!(child.correlation_id(), parent.correlation_id());
    assert_eq!(child.parent_span_id(), Some(parent.span_id()));
}

#[test]
fn in_current_trace_outside_a_trace_carries_none() {
    let future = async { keel_correlation::correlation_id() }.in_current_trace();
    let seen = crate::ready(Tracer::off().start_trace("other", future));
    assert_eq!(
        seen, None,
        "the future carries the (absent) trace of where it was made"
    );
}
