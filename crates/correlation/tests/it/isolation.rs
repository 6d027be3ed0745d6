//! Concurrent traces on a multi-thread runtime never see each other's context.

use std::collections::{HashMap, HashSet};

use crate::Capture;

const TRACES: usize = 10_000;

#[test]
#[allow(clippy::disallowed_methods)] // Each task makes its own trace; there is none to carry in.
fn ten_thousand_concurrent_traces_see_only_their_own_id() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    let capture = Capture::default();
    let tracer = capture.tracer();
    let ids = runtime.block_on(async move {
        let mut tasks = Vec::with_capacity(2 * TRACES);
        for index in 0..TRACES {
            let request_future = tracer.start_trace(format!("request-{index}"), async move {
                let own = keel_correlation::correlation_id().expect("inside a trace");
                let span = keel_correlation::current().unwrap().span_id();
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                    assert_eq!(keel_correlation::correlation_id().as_ref(), Some(&own));
                    assert_eq!(keel_correlation::current().unwrap().span_id(), span);
                    assert_eq!(
                        keel_correlation::current().unwrap().operation(),
                        format!("request-{index}")
                    );
                }
                own
            });
            tasks.push(tokio::spawn(async move {
                let own = request_future.await;
                // The trace is over: nothing may linger in this task.
                assert_eq!(keel_correlation::correlation_id(), None);
                tokio::task::yield_now().await;
                assert_eq!(keel_correlation::correlation_id(), None);
                Some(own)
            }));
            // Untraced tasks sharing the workers must never see a trace.
            tasks.push(tokio::spawn(async {
                for _ in 0..2 {
                    assert_eq!(keel_correlation::correlation_id(), None);
                    tokio::task::yield_now().await;
                }
                None
            }));
        }
        let mut ids = Vec::with_capacity(TRACES);
        for task in tasks {
            if let Some(id) = task.await.expect("no assertion failed in the task") {
                ids.push(id.to_string());
            }
        }
        ids
    });
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), TRACES);

    // Exactly one start and one end line per trace, all with the trace's own operation.
    let mut per_id: HashMap<String, (usize, usize)> = HashMap::new();
    for line in capture.lines() {
        let counts = per_id
            .entry(line["correlation_id"].as_str().unwrap().to_owned())
            .or_default();
        match line["event"].as_str().unwrap() {
            "trace.start" => counts.0 += 1,
            "trace.end" => {
                assert_eq!(line["outcome"], "success");
                counts.1 += 1;
            }
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(per_id.len(), TRACES);
    assert!(per_id.values().all(|&counts| counts == (1, 1)));
}
