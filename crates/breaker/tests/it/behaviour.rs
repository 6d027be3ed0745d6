//! The breaker's documented behaviour, one rule per test.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use keel_breaker::{
    Backoff, BreakerError, CircuitBreaker, ConfigError, Event, ManualClock, Policy, Rejected, State,
};

use crate::support::{Recorder, builder, fail, full_wait, open_wait, succeed};

#[test]
fn opens_on_the_nth_consecutive_failure_and_success_resets_the_count() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 3).build().unwrap();
    fail(&breaker);
    fail(&breaker);
    succeed(&breaker);
    fail(&breaker);
    fail(&breaker);
    assert_eq!(breaker.state(), State::Closed);
    fail(&breaker);
    assert_eq!(breaker.state(), State::Open);
    assert!(breaker.is_open());
}

#[test]
fn default_policy_is_five_consecutive_failures() {
    let breaker = CircuitBreaker::builder("d").build().unwrap();
    for _ in 0..4 {
        fail(&breaker);
    }
    assert_eq!(breaker.state(), State::Closed);
    fail(&breaker);
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn open_rejects_with_time_until_probe_then_half_opens() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1).build().unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(4));
    let mut ran = false;
    let result = breaker.call(|| {
        ran = true;
        Ok::<_, ()>(())
    });
    assert!(!ran, "a rejected call must not run");
    assert_eq!(
        result,
        Err(BreakerError::Open {
            retry_after: Duration::from_secs(6),
            opened_ago: Duration::from_secs(4),
        })
    );
    clock.advance(Duration::from_secs(6));
    let probe = breaker.try_acquire().unwrap();
    assert!(probe.is_probe());
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(
        full_wait(breaker.try_acquire().unwrap_err()),
        Duration::from_secs(10)
    );
    probe.success();
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn probe_failure_reopens_with_the_next_backoff_and_close_resets_it() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .half_open_after(Backoff::exponential(
            Duration::from_secs(1),
            Duration::from_secs(4),
        ))
        .build()
        .unwrap();
    fail(&breaker);
    let mut expected = [1, 2, 4, 4].into_iter();
    for _ in 0..4 {
        let delay = Duration::from_secs(expected.next().unwrap());
        assert_eq!(open_wait(breaker.try_acquire().unwrap_err()), delay);
        clock.advance(delay);
        fail(&breaker); // the probe fails
        assert_eq!(breaker.state(), State::Open);
    }
    clock.advance(Duration::from_secs(4));
    succeed(&breaker);
    assert_eq!(breaker.state(), State::Closed);
    fail(&breaker);
    assert_eq!(
        open_wait(breaker.try_acquire().unwrap_err()),
        Duration::from_secs(1)
    );
}

#[test]
fn jittered_backoff_stays_within_half_and_full_delay() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .half_open_after(
            Backoff::exponential(Duration::from_secs(8), Duration::from_secs(8)).with_jitter(),
        )
        .build()
        .unwrap();
    fail(&breaker);
    let Err(Rejected::Open { retry_after, .. }) = breaker.try_acquire() else {
        panic!("open breaker admitted a call");
    };
    assert!(retry_after >= Duration::from_secs(4) && retry_after <= Duration::from_secs(8));
}

#[test]
fn closes_only_after_k_probe_successes() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1).successes_to_close(2).build().unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(10));
    succeed(&breaker);
    assert_eq!(breaker.state(), State::HalfOpen);
    succeed(&breaker);
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn failure_predicate_decides_what_counts() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 2).build().unwrap();
    let only_fatal = breaker.failure_if(|error: &&str| *error == "fatal");
    for _ in 0..5 {
        let _ = only_fatal.call(|| Err::<(), _>("retryable"));
    }
    assert_eq!(breaker.state(), State::Closed);
    let _ = only_fatal.call(|| Err::<(), _>("fatal"));
    let result = crate::support::ready(only_fatal.execute(|| async { Err::<(), _>("fatal") }));
    assert_eq!(result, Err(BreakerError::Inner("fatal")));
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn execute_records_outcomes_of_futures() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1).build().unwrap();
    let value = crate::support::ready(breaker.execute(|| async { Ok::<_, ()>(7) }));
    assert_eq!(value, Ok(7));
    let error = crate::support::ready(breaker.execute(|| async { Err::<(), _>("no") }));
    assert_eq!(error, Err(BreakerError::Inner("no")));
    assert_eq!(breaker.state(), State::Open);
    let rejected = crate::support::ready(breaker.execute(|| async { Ok::<_, ()>(1) }));
    assert!(rejected.unwrap_err().is_rejected());
}

#[tokio::test]
async fn execute_works_on_a_tokio_runtime() {
    let breaker = CircuitBreaker::builder("tokio").build().unwrap();
    let value = breaker
        .execute(|| async {
            tokio::task::yield_now().await;
            Ok::<_, std::io::Error>(5)
        })
        .await
        .unwrap();
    assert_eq!(value, 5);
}

#[test]
fn isolation_is_reference_counted_and_release_closes() {
    let clock = ManualClock::new();
    let recorder = Recorder::default();
    let breaker = recorder.attach(builder(&clock, 1)).build().unwrap();
    fail(&breaker);
    let first = breaker.isolate();
    let second = breaker.isolate();
    assert_eq!(breaker.state(), State::Isolated);
    assert_eq!(breaker.try_acquire().unwrap_err(), Rejected::Isolated);
    clock.advance(Duration::from_secs(60));
    assert_eq!(breaker.try_acquire().unwrap_err(), Rejected::Isolated);
    drop(first);
    assert_eq!(breaker.state(), State::Isolated);
    drop(second);
    assert_eq!(breaker.state(), State::Closed);
    let transitions: Vec<Event> = recorder
        .take()
        .into_iter()
        .filter(|event| matches!(event, Event::StateChange { .. }))
        .collect();
    assert_eq!(
        transitions,
        [
            Event::StateChange {
                from: State::Closed,
                to: State::Open
            },
            Event::StateChange {
                from: State::Open,
                to: State::Isolated
            },
            Event::StateChange {
                from: State::Isolated,
                to: State::Closed
            },
        ]
    );
}

#[test]
fn named_listeners_fire_once_per_transition() {
    let clock = ManualClock::new();
    let log = Arc::new(Mutex::new(Vec::new()));
    let push = |label: &'static str| {
        let log = log.clone();
        move || log.lock().unwrap().push(label)
    };
    let changes = log.clone();
    let breaker = builder(&clock, 1)
        .on_break(push("break"))
        .on_reset(push("reset"))
        .on_half_open(push("half-open"))
        .on_success(push("success"))
        .on_failure(push("failure"))
        .on_state_change(move |from, to| {
            changes
                .lock()
                .unwrap()
                .push(if (from, to) == (State::Closed, State::Open) {
                    "change closed->open"
                } else {
                    "change"
                });
        })
        .build()
        .unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(10));
    succeed(&breaker);
    assert_eq!(
        *log.lock().unwrap(),
        [
            "failure",
            "break",
            "change closed->open",
            "half-open",
            "change",
            "success",
            "reset",
            "change"
        ]
    );
}

#[test]
fn invalid_configuration_is_a_build_error() {
    let cases = [
        (
            CircuitBreaker::builder("x").policy(Policy::consecutive_failures(0)),
            "consecutive_failures",
        ),
        (
            CircuitBreaker::builder("x").half_open_trials(0),
            "half_open_trials",
        ),
        (
            CircuitBreaker::builder("x").half_open_trials(70_000),
            "half_open_trials",
        ),
        (
            CircuitBreaker::builder("x").successes_to_close(0),
            "successes_to_close",
        ),
        (
            CircuitBreaker::builder("x").policy(Policy::count_window(10, 1.5, 5)),
            "count_window.failure_ratio",
        ),
        (
            CircuitBreaker::builder("x").policy(Policy::count_window(10, f64::NAN, 5)),
            "count_window.failure_ratio",
        ),
        (
            CircuitBreaker::builder("x").policy(Policy::count_window(0, 0.5, 5)),
            "count_window.size",
        ),
        (
            CircuitBreaker::builder("x").policy(Policy::count_window(10, 0.5, 11)),
            "count_window.min_calls",
        ),
        (
            CircuitBreaker::builder("x").policy(Policy::time_window(Duration::ZERO, 10, 0.5, 5)),
            "time_window.window",
        ),
        (
            CircuitBreaker::builder("x").policy(Policy::time_window(
                Duration::from_secs(1),
                0,
                0.5,
                5,
            )),
            "time_window.buckets",
        ),
        (
            CircuitBreaker::builder("x").policy(Policy::time_window(
                Duration::from_secs(1),
                10,
                -0.1,
                5,
            )),
            "time_window.failure_ratio",
        ),
        (
            CircuitBreaker::builder("x")
                .half_open_after(Backoff::exponential(Duration::ZERO, Duration::from_secs(1))),
            "half_open_after.initial",
        ),
        (
            CircuitBreaker::builder("x").half_open_after(Backoff::exponential(
                Duration::from_secs(2),
                Duration::from_secs(1),
            )),
            "half_open_after.max",
        ),
    ];
    for (builder, setting) in cases {
        let error = builder.build().unwrap_err();
        let named = match &error {
            ConfigError::Zero { setting }
            | ConfigError::TooLarge { setting, .. }
            | ConfigError::RatioOutOfRange { setting, .. }
            | ConfigError::Duration { setting, .. } => *setting,
            _ => "",
        };
        assert_eq!(named, setting, "{error}");
        assert!(error.to_string().contains(setting), "{error}");
    }
}

#[test]
fn count_window_opens_on_ratio_after_min_calls() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .policy(Policy::count_window(4, 0.5, 4))
        .build()
        .unwrap();
    fail(&breaker);
    fail(&breaker);
    fail(&breaker);
    assert_eq!(breaker.state(), State::Closed, "below min_calls");
    succeed(&breaker); // ring: F F F S (3/4, but only a failure evaluates)
    succeed(&breaker); // ring: S F F S (the oldest F evicted)
    assert_eq!(breaker.state(), State::Closed);
    fail(&breaker); // ring: S F F S with a new F over the second slot -> 2/4 = 0.5
    assert_eq!(breaker.state(), State::Open);
    clock.advance(Duration::from_secs(10));
    succeed(&breaker);
    assert_eq!(breaker.state(), State::Closed);
    fail(&breaker);
    assert_eq!(
        breaker.state(),
        State::Closed,
        "window was cleared on close"
    );
}

#[test]
fn time_window_opens_on_ratio_after_min_throughput() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .policy(Policy::time_window(Duration::from_secs(10), 10, 0.5, 4))
        .build()
        .unwrap();
    succeed(&breaker);
    succeed(&breaker);
    fail(&breaker);
    assert_eq!(breaker.state(), State::Closed);
    clock.advance(Duration::from_secs(5));
    fail(&breaker);
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn time_window_forgets_slices_older_than_the_window() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .policy(Policy::time_window(Duration::from_secs(10), 10, 0.5, 3))
        .build()
        .unwrap();
    fail(&breaker);
    fail(&breaker);
    clock.advance(Duration::from_secs(10)); // the first slice just expired
    fail(&breaker);
    assert_eq!(breaker.state(), State::Closed);
    fail(&breaker);
    fail(&breaker);
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn snapshot_restores_remaining_open_time_failures_and_attempt() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 3)
        .half_open_after(Backoff::exponential(
            Duration::from_secs(10),
            Duration::from_secs(100),
        ))
        .build()
        .unwrap();
    fail(&breaker);
    fail(&breaker);
    let closed = breaker.saved_state();
    assert_eq!(closed.consecutive_failures, 2);
    let restored_clock = ManualClock::new();
    let restored = builder(&restored_clock, 3)
        .initial_state(closed)
        .build()
        .unwrap();
    fail(&restored);
    assert_eq!(
        restored.state(),
        State::Open,
        "the restored count carried over"
    );

    fail(&breaker);
    clock.advance(Duration::from_secs(10));
    fail(&breaker); // probe fails: attempt 1, open for 20 s
    clock.advance(Duration::from_secs(5));
    let open = breaker.saved_state();
    assert_eq!(open.state, State::Open);
    assert_eq!(open.backoff_attempt, 1);
    assert_eq!(open.open_remaining, Duration::from_secs(15));

    let restored_clock = ManualClock::new();
    restored_clock.advance(Duration::from_secs(1));
    let restored = builder(&restored_clock, 3)
        .half_open_after(Backoff::exponential(
            Duration::from_secs(10),
            Duration::from_secs(100),
        ))
        .initial_state(open)
        .build()
        .unwrap();
    assert_eq!(
        open_wait(restored.try_acquire().unwrap_err()),
        Duration::from_secs(15)
    );
    restored_clock.advance(Duration::from_secs(15));
    fail(&restored); // probe fails again: attempt 2, 40 s
    assert_eq!(
        open_wait(restored.try_acquire().unwrap_err()),
        Duration::from_secs(40)
    );
}

#[cfg(feature = "serde")]
#[test]
fn snapshot_round_trips_through_json() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1).build().unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(3));
    let json = serde_json::to_string(&breaker.saved_state()).unwrap();
    let saved: keel_breaker::SavedState = serde_json::from_str(&json).unwrap();
    assert_eq!(saved, breaker.saved_state());
    let restored = builder(&ManualClock::new(), 1)
        .initial_state(saved)
        .build()
        .unwrap();
    assert_eq!(
        open_wait(restored.try_acquire().unwrap_err()),
        Duration::from_secs(7)
    );
}

#[test]
fn transitions_are_logged_in_the_cockatiel_format() {
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let clock = ManualClock::new();
        let breaker = CircuitBreaker::builder("api")
            .policy(Policy::consecutive_failures(1))
            .clock(clock)
            .build()
            .unwrap();
        fail(&breaker);
    });
    let output = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        output.contains("[CircuitBreaker:api] State: Open"),
        "{output}"
    );
    assert!(
        output.contains(" keel_breaker:"),
        "target missing: {output}"
    );
    assert!(output.contains("from=Closed"), "{output}");
    assert!(output.contains("to=Open"), "{output}");
}

#[test]
fn errors_display_what_happened() {
    let open: BreakerError<std::io::Error> = Rejected::Open {
        retry_after: Duration::from_secs(2),
        opened_ago: Duration::from_secs(3),
    }
    .into();
    assert_eq!(
        open.to_string(),
        "circuit breaker is open (since 3s ago); retry after 2s"
    );
    assert_eq!(open.reason(), Some(keel_breaker::RejectReason::Open));
    let full: BreakerError<std::io::Error> = Rejected::HalfOpenFull {
        retry_after: Duration::from_secs(1),
    }
    .into();
    assert!(
        full.to_string().contains("every probe slot taken"),
        "{full}"
    );
    assert_eq!(full.retry_after(), Some(Duration::from_secs(1)));
    assert!(
        BreakerError::<std::io::Error>::Isolated
            .to_string()
            .contains("isolated")
    );
    let inner = BreakerError::Inner(std::io::Error::other("disk"));
    assert_eq!(inner.to_string(), "guarded call failed: disk");
    assert!(std::error::Error::source(&inner).is_some());
}
