//! What operators use (issue 11): manual control, rejection events, result classifiers,
//! slow calls, metrics and their export.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use keel_breaker::{
    Backoff, BreakerError, CircuitBreaker, Clock, Event, ManualClock, Outcome, Policy,
    RejectReason, Rejected, State,
};

use crate::support::{Recorder, builder, fail, full_wait, open_wait, quiet_panics, ready, succeed};

#[test]
fn close_ends_an_opening_or_a_probe_with_one_event_counted_as_manual() {
    let clock = ManualClock::new();
    let recorder = Recorder::default();
    let breaker = recorder.attach(builder(&clock, 1)).build().unwrap();
    assert!(!breaker.close(), "closing a closed breaker is a no-op");
    fail(&breaker);
    recorder.take();
    assert!(breaker.close());
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(
        recorder.take(),
        [Event::StateChange {
            from: State::Open,
            to: State::Closed
        }]
    );

    fail(&breaker);
    clock.advance(Duration::from_secs(10));
    let probe = breaker.try_acquire().unwrap();
    recorder.take();
    assert!(breaker.close());
    assert_eq!(
        recorder.take(),
        [Event::StateChange {
            from: State::HalfOpen,
            to: State::Closed
        }]
    );
    // The probe admitted before the manual close is stale now.
    probe.failure();
    assert_eq!(breaker.state(), State::Closed);
    let transitions = breaker.metrics().transitions;
    assert_eq!(transitions.manual, 2);
    assert_eq!(transitions.to_closed, 2);
}

#[test]
fn trip_opens_for_the_backoff_and_open_for_for_exactly_its_duration() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 5)
        .half_open_after(Backoff::exponential(
            Duration::from_secs(10),
            Duration::from_secs(80),
        ))
        .build()
        .unwrap();
    assert!(breaker.trip());
    assert_eq!(
        open_wait(breaker.try_acquire().unwrap_err()),
        Duration::from_secs(10)
    );

    assert!(breaker.open_for(Duration::from_secs(300)));
    clock.advance(Duration::from_secs(100));
    match breaker.try_acquire().unwrap_err() {
        Rejected::Open {
            retry_after,
            opened_ago,
        } => {
            assert_eq!(retry_after, Duration::from_secs(200));
            assert_eq!(opened_ago, Duration::from_secs(100));
        }
        other => panic!("expected Open, got {other:?}"),
    }
    clock.advance(Duration::from_secs(200));
    // The probe after a manual opening fails: the backoff starts from its first delay.
    fail(&breaker);
    assert_eq!(
        open_wait(breaker.try_acquire().unwrap_err()),
        Duration::from_secs(10)
    );
    // A saved manual opening restores as an ordinary one.
    assert!(breaker.open_for(Duration::MAX));
    assert_eq!(breaker.saved_state().backoff_attempt, 0);
    clock.advance(Duration::from_secs(365 * 24 * 3600));
    assert_eq!(open_wait(breaker.try_acquire().unwrap_err()), Duration::MAX);
    assert!(breaker.close());

    // Isolation wins over manual control.
    let guard = breaker.isolate();
    assert!(!breaker.trip());
    assert!(!breaker.open_for(Duration::from_secs(1)));
    assert!(!breaker.close());
    assert_eq!(breaker.state(), State::Isolated);
    drop(guard);
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics().transitions.manual, 4);
}

#[test]
fn trip_from_half_open_backs_off_like_a_failed_probe() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .half_open_after(Backoff::exponential(
            Duration::from_secs(1),
            Duration::from_secs(60),
        ))
        .build()
        .unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(1));
    let probe = breaker.try_acquire().unwrap();
    assert!(breaker.trip());
    assert_eq!(
        open_wait(breaker.try_acquire().unwrap_err()),
        Duration::from_secs(2)
    );
    probe.success(); // stale
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn on_rejected_hears_every_rejection_with_its_reason() {
    let clock = ManualClock::new();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = heard.clone();
    let breaker = builder(&clock, 1)
        .on_rejected(move |rejected| sink.lock().unwrap().push(*rejected))
        .count_calls()
        .build()
        .unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(3));
    let open = breaker.call(|| Ok::<_, ()>(())).unwrap_err();
    assert_eq!(
        open,
        BreakerError::Open {
            retry_after: Duration::from_secs(7),
            opened_ago: Duration::from_secs(3),
        }
    );
    clock.advance(Duration::from_secs(7));
    let probe = breaker.try_acquire().unwrap();
    let full = breaker.try_acquire().unwrap_err();
    assert_eq!(full.reason(), RejectReason::HalfOpenFull);
    assert_eq!(full_wait(full), Duration::from_secs(10));
    drop(probe);
    let guard = breaker.isolate();
    assert_eq!(breaker.try_acquire().unwrap_err(), Rejected::Isolated);
    drop(guard);
    let reasons: Vec<_> = heard.lock().unwrap().iter().map(Rejected::reason).collect();
    assert_eq!(
        reasons,
        [
            RejectReason::Open,
            RejectReason::HalfOpenFull,
            RejectReason::Isolated
        ]
    );
    let metrics = breaker.metrics();
    assert_eq!(
        (
            metrics.rejected_open,
            metrics.rejected_half_open_full,
            metrics.rejected_isolated
        ),
        (1, 1, 1)
    );
}

#[test]
fn a_panicking_rejection_listener_changes_nothing() {
    quiet_panics();
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .on_rejected(|_| panic!("listener panic"))
        .probe_timeout(Duration::MAX)
        .count_calls()
        .build()
        .unwrap();
    fail(&breaker);
    assert!(catch_unwind(AssertUnwindSafe(|| breaker.try_acquire().map(drop))).is_err());
    assert_eq!(breaker.state(), State::Open);
    clock.advance(Duration::from_secs(10));
    let probe = breaker.try_acquire().expect("the probe");
    // Rejected while half-open and full: the listener's panic leaves the probe's slot alone.
    assert!(catch_unwind(AssertUnwindSafe(|| breaker.try_acquire().map(drop))).is_err());
    probe.success();
    assert_eq!(breaker.state(), State::Closed);
    // Each rejection was counted before its listener ran, so the panics lost no count.
    let metrics = breaker.metrics();
    assert_eq!(
        (metrics.rejected_open, metrics.rejected_half_open_full),
        (1, 1)
    );
}

#[derive(Debug)]
struct Response {
    status: u16,
}

fn by_status(result: &Result<Response, &'static str>) -> Outcome {
    match result {
        Ok(response) if response.status >= 500 => Outcome::Failure,
        Ok(response) if response.status >= 400 => Outcome::Ignored,
        Ok(_) | Err("not found") => Outcome::Success,
        Err(_) => Outcome::Failure,
    }
}

#[test]
fn a_classifier_sees_the_whole_result_in_call_execute_and_permits() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 3).count_calls().build().unwrap();
    let classified = breaker.classify(by_status);
    // An Ok(500) is a failure, whichever way the call is made.
    assert!(classified.call(|| Ok(Response { status: 500 })).is_ok());
    assert!(ready(classified.execute(|| async { Ok(Response { status: 503 }) })).is_ok());
    assert_eq!(breaker.state(), State::Closed);
    // Ignored outcomes count neither way.
    for _ in 0..10 {
        let _ = classified.call(|| Ok(Response { status: 404 }));
    }
    assert_eq!(breaker.metrics().consecutive_failures, 2);
    let permit = breaker.try_acquire().unwrap();
    let result: Result<Response, &str> = Err("connection reset");
    permit.record(keel_breaker::Classify::classify(&by_status, &result));
    assert_eq!(breaker.state(), State::Open);
    let metrics = breaker.metrics();
    assert_eq!(
        (metrics.failures, metrics.ignored, metrics.successes),
        (3, 10, 0)
    );
}

#[test]
fn an_ignored_probe_frees_its_slot_without_closing() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .probe_timeout(Duration::MAX)
        .build()
        .unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(10));
    let classified = breaker.classify(by_status);
    let _ = classified.call(|| Ok(Response { status: 429 }));
    assert_eq!(breaker.state(), State::HalfOpen);
    let probe = breaker
        .try_acquire()
        .expect("the ignored probe freed its slot");
    probe.record(Outcome::Success);
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn a_panicking_classifier_cancels_the_call_and_its_panic_continues() {
    quiet_panics();
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .probe_timeout(Duration::MAX)
        .count_calls()
        .build()
        .unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(10));
    let classified = breaker.classify(|_: &Result<(), ()>| -> Outcome { panic!("model panic") });
    let payload = catch_unwind(AssertUnwindSafe(|| {
        ready(classified.execute(|| async { Ok(()) }))
    }))
    .unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"model panic"));
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(breaker.metrics().cancelled, 1);
    breaker.try_acquire().expect("the slot was freed").success();
    assert_eq!(breaker.state(), State::Closed);
}

/// A manual clock that counts its reads.
#[derive(Debug, Clone, Default)]
struct CountingClock {
    time: ManualClock,
    reads: Arc<AtomicU64>,
}

impl Clock for CountingClock {
    fn now_nanos(&self) -> u64 {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.time.now_nanos()
    }
}

#[test]
fn slow_calls_count_as_failures_and_the_clock_is_read_only_when_configured() {
    let clock = CountingClock::default();
    let plain = CircuitBreaker::builder("plain")
        .clock(clock.clone())
        .build()
        .unwrap();
    let reads = clock.reads.load(Ordering::Relaxed);
    for _ in 0..100 {
        succeed(&plain);
    }
    assert_eq!(
        clock.reads.load(Ordering::Relaxed),
        reads,
        "a closed success read the clock"
    );

    let slow = CircuitBreaker::builder("slow")
        .policy(Policy::consecutive_failures(2))
        .slow_call_threshold(Duration::from_millis(100))
        .count_calls()
        .clock(clock.clone())
        .build()
        .unwrap();
    let time = clock.time.clone();
    let _ = slow.call(|| {
        time.advance(Duration::from_millis(99));
        Ok::<_, ()>(())
    });
    assert_eq!(slow.metrics().slow_calls, 0);
    for _ in 0..2 {
        let _ = slow.call(|| {
            time.advance(Duration::from_millis(100));
            Ok::<_, ()>(())
        });
    }
    assert_eq!(slow.state(), State::Open, "two slow successes open it");
    let metrics = slow.metrics();
    assert_eq!(
        (metrics.slow_calls, metrics.failures, metrics.successes),
        (2, 2, 1)
    );
    assert!(
        CircuitBreaker::builder("zero")
            .slow_call_threshold(Duration::ZERO)
            .build()
            .is_err()
    );
}

#[test]
fn metrics_report_state_time_counts_transitions_and_the_window() {
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder("metrics")
        .policy(Policy::count_window(10, 0.5, 4))
        .half_open_after(Duration::from_secs(10))
        .count_calls()
        .clock(clock.clone())
        .build()
        .unwrap();
    clock.advance(Duration::from_secs(2));
    let metrics = breaker.metrics();
    assert_eq!(metrics.state, State::Closed);
    assert_eq!(metrics.in_state_for, Duration::from_secs(2));
    succeed(&breaker);
    fail(&breaker);
    succeed(&breaker);
    let metrics = breaker.metrics();
    assert_eq!(metrics.window_calls, 3);
    assert!((metrics.window_failure_ratio - 1.0 / 3.0).abs() < 1e-9);
    fail(&breaker);
    assert_eq!(breaker.state(), State::Open);
    assert!(breaker.try_acquire().is_err());
    clock.advance(Duration::from_secs(10));
    drop(breaker.try_acquire().unwrap()); // a cancelled probe
    clock.advance(Duration::from_secs(1));
    let metrics = breaker.metrics();
    assert_eq!(metrics.state, State::HalfOpen);
    assert_eq!(metrics.in_state_for, Duration::from_secs(1));
    assert_eq!(
        (
            metrics.admitted,
            metrics.successes,
            metrics.failures,
            metrics.cancelled,
            metrics.rejected_open
        ),
        (5, 2, 2, 1, 1)
    );
    assert_eq!(
        (
            metrics.transitions.to_open,
            metrics.transitions.to_half_open
        ),
        (1, 1)
    );
    assert_eq!(metrics.transitions.manual, 0);

    let uncounted = builder(&clock, 1).build().unwrap();
    succeed(&uncounted);
    let metrics = uncounted.metrics();
    assert!(!metrics.counting_calls);
    assert_eq!(metrics.admitted, 0);
}

#[cfg(feature = "metrics")]
#[test]
fn metrics_feature_exports_through_the_facade() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let clock = ManualClock::new();
    let breaker = metrics::with_local_recorder(&recorder, || {
        builder(&clock, 1).count_calls().build().unwrap()
    });
    succeed(&breaker);
    fail(&breaker);
    assert!(breaker.try_acquire().is_err());
    let exported: std::collections::HashMap<String, DebugValue> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<String> = key
                .labels()
                .map(|label| format!("{}={}", label.key(), label.value()))
                .collect();
            (format!("{}{{{}}}", key.name(), labels.join(",")), value)
        })
        .collect();
    let counter = |name: &str| match exported.get(name) {
        Some(DebugValue::Counter(value)) => *value,
        other => panic!("{name}: {other:?} in {exported:?}"),
    };
    assert_eq!(counter("breaker_admitted_total{breaker=test}"), 2);
    assert_eq!(
        counter("breaker_calls_total{breaker=test,outcome=success}"),
        1
    );
    assert_eq!(
        counter("breaker_calls_total{breaker=test,outcome=failure}"),
        1
    );
    assert_eq!(
        counter("breaker_rejections_total{breaker=test,reason=open}"),
        1
    );
    assert_eq!(
        counter("breaker_transitions_total{breaker=test,to=open}"),
        1
    );
    assert_eq!(
        exported.get("breaker_state{breaker=test}"),
        Some(&DebugValue::Gauge(1.0.into()))
    );
}

/// A manual clock whose coarse reading lags by `lag`, declaring that lag.
#[derive(Debug, Clone)]
struct LaggingClock {
    time: ManualClock,
    lag: Duration,
}

impl Clock for LaggingClock {
    fn now_nanos(&self) -> u64 {
        self.time.now_nanos()
    }

    fn coarse_now_nanos(&self) -> u64 {
        self.time
            .now_nanos()
            .saturating_sub(u64::try_from(self.lag.as_nanos()).unwrap())
    }

    fn coarse_lag_nanos(&self) -> u64 {
        u64::try_from(self.lag.as_nanos()).unwrap()
    }
}

#[test]
fn a_coarse_clock_never_rejects_past_the_deadline_nor_admits_before_it() {
    let time = ManualClock::new();
    let lag = Duration::from_millis(4);
    let breaker = CircuitBreaker::builder("coarse")
        .policy(Policy::consecutive_failures(1))
        .half_open_after(Duration::from_secs(10))
        .clock(LaggingClock {
            time: time.clone(),
            lag,
        })
        .build()
        .unwrap();
    fail(&breaker);
    time.advance(Duration::from_secs(1));
    // Far from the deadline the coarse time answers: `retry_after` is longer by the lag.
    assert_eq!(
        open_wait(breaker.try_acquire().unwrap_err()),
        Duration::from_secs(9) + lag
    );
    // Still rejected a nanosecond before the deadline (the coarse time proves it)...
    time.advance(Duration::from_secs(9) - Duration::from_nanos(1));
    assert_eq!(
        open_wait(breaker.try_acquire().unwrap_err()),
        Duration::from_nanos(1) + lag
    );
    // ...and admitted at the deadline: within the lag, the precise time decides.
    time.advance(Duration::from_nanos(1));
    assert!(
        breaker
            .try_acquire()
            .expect("admitted at the deadline")
            .is_probe()
    );
}

#[test]
fn the_default_clock_s_coarse_reading_never_leads_it() {
    let clock = keel_breaker::MonotonicClock::new();
    for _ in 0..1_000 {
        let coarse = clock.coarse_now_nanos();
        assert!(coarse <= clock.now_nanos());
    }
    assert!(clock.coarse_lag_nanos() < 1_000_000_000);
}

#[test]
fn an_execute_future_polled_after_it_completed_stays_pending_and_records_nothing() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1).count_calls().build().unwrap();
    let poll = crate::support::poll_once;
    let runs = AtomicU64::new(0);
    let operation = |result: Result<u8, &'static str>| {
        let runs = &runs;
        move || {
            runs.fetch_add(1, Ordering::Relaxed);
            std::future::ready(result)
        }
    };
    let mut success = std::pin::pin!(breaker.execute(operation(Ok(1))));
    let mut failure = std::pin::pin!(breaker.execute(operation(Err("down"))));
    assert_eq!(poll(success.as_mut()), std::task::Poll::Ready(Ok(1)));
    assert!(matches!(
        poll(failure.as_mut()),
        std::task::Poll::Ready(Err(BreakerError::Inner("down")))
    ));
    let mut rejected = std::pin::pin!(breaker.execute(operation(Ok(2))));
    assert!(matches!(
        poll(rejected.as_mut()),
        std::task::Poll::Ready(Err(BreakerError::Open { .. }))
    ));
    let before = breaker.metrics();
    for _ in 0..3 {
        assert!(poll(success.as_mut()).is_pending());
        assert!(poll(failure.as_mut()).is_pending());
        assert!(poll(rejected.as_mut()).is_pending());
    }
    assert_eq!(
        breaker.metrics(),
        before,
        "an extra poll recorded something"
    );
    assert_eq!(
        (before.successes, before.failures, before.rejected_open),
        (1, 1, 1)
    );
    assert_eq!(
        runs.load(Ordering::Relaxed),
        2,
        "an extra poll ran the operation"
    );
}
