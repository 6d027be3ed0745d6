//! One regression test per known pitfall of peer circuit breakers (issue #3).

use std::{
    future::pending,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use keel_breaker::{CircuitBreaker, Event, ManualClock, Policy, Rejected, State};

use crate::support::{
    Recorder, builder, fail, full_wait, open_wait, poll_once, quiet_panics, succeed,
};

#[test]
fn half_open_never_over_admits() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1).half_open_trials(2).build().unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(10));
    let first = breaker.try_acquire().unwrap();
    let second = breaker.try_acquire().unwrap();
    assert!(first.is_probe() && second.is_probe());
    for _ in 0..100 {
        assert!(matches!(
            breaker.try_acquire(),
            Err(Rejected::HalfOpenFull { .. })
        ));
    }
    // A finished probe frees its slot for exactly one more.
    drop(first);
    let third = breaker.try_acquire().unwrap();
    assert!(breaker.try_acquire().is_err());
    drop((second, third));
}

#[test]
fn stale_success_does_not_close() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 2).build().unwrap();
    let slow = breaker.try_acquire().unwrap(); // admitted while closed
    fail(&breaker);
    fail(&breaker);
    assert_eq!(breaker.state(), State::Open);
    clock.advance(Duration::from_secs(10));
    let probe = breaker.try_acquire().unwrap();
    slow.success(); // from the old closed generation: must not close the half-open breaker
    assert_eq!(breaker.state(), State::HalfOpen);
    probe.failure();
    assert_eq!(breaker.state(), State::Open);

    // A probe from an earlier half-open period must not close a later one either.
    let breaker = builder(&clock, 1).half_open_trials(2).build().unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(10));
    let old_probe = breaker.try_acquire().unwrap();
    fail(&breaker); // the other probe fails: open again
    clock.advance(Duration::from_secs(10));
    let new_probe = breaker.try_acquire().unwrap();
    old_probe.success();
    assert_eq!(
        breaker.state(),
        State::HalfOpen,
        "a stale probe closed the breaker"
    );
    new_probe.success();
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn stale_failure_does_not_reopen() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1).build().unwrap();
    let slow = breaker.try_acquire().unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(10));
    succeed(&breaker); // probe closes
    assert_eq!(breaker.state(), State::Closed);
    slow.failure(); // from before the breaker opened: must not reopen it
    assert_eq!(breaker.state(), State::Closed);
    fail(&breaker);
    assert_eq!(
        breaker.state(),
        State::Open,
        "a current failure still counts"
    );
}

#[test]
fn duration_max_open_time_does_not_panic() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .half_open_after(Duration::MAX)
        .probe_timeout(Duration::MAX)
        .build()
        .unwrap();
    fail(&breaker);
    let unbounded = Duration::MAX;
    assert_eq!(open_wait(breaker.try_acquire().unwrap_err()), unbounded);
    // Unbounded stays unbounded however much time passes, not `Duration::MAX - elapsed`.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(open_wait(breaker.try_acquire().unwrap_err()), unbounded);
    assert_eq!(breaker.saved_state().open_remaining, Duration::MAX);
    clock.advance(Duration::MAX); // saturates the clock itself
    assert_eq!(open_wait(breaker.try_acquire().unwrap_err()), unbounded);
    assert_eq!(breaker.saved_state().state, State::Open);
    let restored = CircuitBreaker::builder("restored")
        .half_open_after(Duration::MAX)
        .initial_state(breaker.saved_state())
        .build()
        .unwrap();
    assert_eq!(open_wait(restored.try_acquire().unwrap_err()), unbounded);

    let exponential = builder(&clock, 1)
        .half_open_after(keel_breaker::Backoff::exponential(
            Duration::from_secs(1),
            Duration::MAX,
        ))
        .build()
        .unwrap();
    fail(&exponential);
    assert!(exponential.try_acquire().is_err());
}

#[test]
fn dropped_probe_releases_its_slot() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1).build().unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(10));
    {
        let mut probe = pin!(breaker.execute(pending::<Result<(), ()>>));
        assert!(poll_once(probe.as_mut()).is_pending()); // holds the only slot
        assert!(breaker.try_acquire().is_err());
    } // the probe's future is dropped: cancelled
    assert_eq!(breaker.state(), State::HalfOpen);
    let next = breaker.try_acquire().expect("the slot was released");
    assert!(next.is_probe());
    next.success();
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn hung_probe_is_superseded() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .probe_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(10));
    let hung = breaker.try_acquire().unwrap();
    clock.advance(Duration::from_secs(4));
    assert_eq!(
        full_wait(breaker.try_acquire().unwrap_err()),
        Duration::from_secs(1)
    );
    clock.advance(Duration::from_secs(1));
    let fresh = breaker.try_acquire().expect("the hung probe is superseded");
    assert!(fresh.is_probe());
    hung.failure(); // superseded: its late result is stale
    assert_eq!(breaker.state(), State::HalfOpen);
    fresh.success();
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn panicking_probe_counts_as_failure_and_resumes() {
    quiet_panics();
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1).build().unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(10));
    let payload = catch_unwind(AssertUnwindSafe(|| {
        let _ = breaker.call(|| -> Result<(), ()> { panic!("model panic") });
    }))
    .unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"model panic"));
    assert_eq!(
        breaker.state(),
        State::Open,
        "the panicking probe reopened it"
    );

    // The same through `execute`, with the panic inside `poll`.
    clock.advance(Duration::from_secs(10));
    let mut future = pin!(breaker.execute(|| async {
        std::future::ready(()).await;
        assert!(std::hint::black_box(false), "model panic");
        Ok::<(), ()>(())
    }));
    let payload = catch_unwind(AssertUnwindSafe(|| poll_once(future.as_mut()))).unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"model panic"));
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn reentrant_listener_does_not_deadlock() {
    let clock = ManualClock::new();
    let handle: Arc<Mutex<Option<CircuitBreaker>>> = Arc::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (listener_handle, listener_seen) = (handle.clone(), seen.clone());
    let breaker = builder(&clock, 1)
        .on_state_change(move |_, to| {
            let breaker = listener_handle.lock().unwrap().clone();
            if let Some(breaker) = breaker {
                // Call back into the breaker from inside the listener: state, admission,
                // a full call, and isolation (which itself transitions and notifies).
                listener_seen.lock().unwrap().push((to, breaker.state()));
                let _ = breaker.try_acquire();
                if to == State::Open {
                    drop(breaker.isolate());
                }
            }
        })
        .build()
        .unwrap();
    *handle.lock().unwrap() = Some(breaker.clone());
    fail(&breaker);
    // Open, then the listener's isolate (-> Isolated) and release (-> Closed) re-entered.
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (State::Open, State::Open),
            (State::Isolated, State::Isolated),
            (State::Closed, State::Closed),
        ]
    );
    *handle.lock().unwrap() = None; // break the cycle
}

#[test]
fn time_window_clears_after_idle_gap() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .policy(Policy::time_window(Duration::from_secs(10), 10, 0.5, 4))
        .build()
        .unwrap();
    for _ in 0..3 {
        fail(&breaker);
        clock.advance(Duration::from_secs(1));
    }
    // Idle far longer than the window, landing on the same buckets again. The gap is
    // 2^32 slices, so the buckets' 32-bit slice tags alias the new slices: without the
    // clear on an idle gap, the old failures would read as recent (ages 2, 1 and 0).
    clock.advance(Duration::from_secs((1 << 32) - 1));
    fail(&breaker);
    fail(&breaker);
    fail(&breaker);
    assert_eq!(
        breaker.state(),
        State::Closed,
        "failures from before the gap must not count"
    );
    fail(&breaker);
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn trip_emits_exactly_one_event() {
    let clock = ManualClock::new();
    let recorder = Recorder::default();
    let breaker = recorder.attach(builder(&clock, 2)).build().unwrap();
    for _ in 0..5 {
        fail(&breaker);
    }
    let changes = recorder
        .take()
        .into_iter()
        .filter(|event| matches!(event, Event::StateChange { .. }))
        .count();
    assert_eq!(changes, 1);
}

#[test]
fn panicking_failure_listener_does_not_leave_the_breaker_stuck() {
    quiet_panics();
    let clock = ManualClock::new();
    let armed = Arc::new(AtomicBool::new(false));
    let trigger = armed.clone();
    let recorder = Recorder::default();
    let breaker = recorder
        .attach(
            builder(&clock, 1)
                .probe_timeout(Duration::MAX)
                .on_failure(move || {
                    assert!(!trigger.swap(false, Ordering::SeqCst), "model panic");
                }),
        )
        .build()
        .unwrap();

    // Closed: the failure that trips must still open the breaker, and every listener
    // (the recorder too) must still hear both events.
    armed.store(true, Ordering::SeqCst);
    let tripped = breaker.try_acquire().unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| tripped.failure())).is_err());
    assert_eq!(breaker.state(), State::Open, "the trip was skipped");
    assert_eq!(
        recorder.take(),
        [
            Event::Failure,
            Event::StateChange {
                from: State::Closed,
                to: State::Open
            }
        ]
    );

    // Half-open: the failed probe must reopen the breaker, not leak its slot.
    clock.advance(Duration::from_secs(10));
    let probe = breaker.try_acquire().unwrap();
    armed.store(true, Ordering::SeqCst);
    assert!(catch_unwind(AssertUnwindSafe(|| probe.failure())).is_err());
    assert_eq!(
        breaker.state(),
        State::Open,
        "the failed probe did not reopen"
    );
    clock.advance(Duration::from_secs(3600));
    breaker
        .try_acquire()
        .expect("a later probe is admitted")
        .success();
    assert_eq!(breaker.state(), State::Closed);

    // A panicking operation whose failure listener panics too: the operation's panic
    // continues (no abort), and the failure is recorded.
    armed.store(true, Ordering::SeqCst);
    let payload = catch_unwind(AssertUnwindSafe(|| {
        let _ = breaker.call(|| -> Result<(), ()> { panic!("model panic") });
    }))
    .unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"model panic"));
    assert_eq!(breaker.state(), State::Open);

    // A panicking state-change listener on `isolate` must not leave the breaker isolated
    // with no guard to release it.
    let loud = builder(&clock, 1)
        .on_break(|| panic!("model panic"))
        .build()
        .unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| drop(loud.isolate()))).is_err());
    assert_eq!(loud.state(), State::Closed, "isolated with no guard");
}

#[test]
fn panicking_predicate_releases_the_probe_slot() {
    quiet_panics();
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .probe_timeout(Duration::MAX)
        .build()
        .unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(10));
    let classified = breaker.failure_if(|(): &()| panic!("model panic"));
    assert!(catch_unwind(AssertUnwindSafe(|| classified.call(|| Err::<(), ()>(())))).is_err());
    assert_eq!(breaker.state(), State::HalfOpen);
    let probe = breaker
        .try_acquire()
        .expect("the panicking predicate leaked the probe slot");
    assert!(probe.is_probe());
    probe.success();
    assert_eq!(breaker.state(), State::Closed);
}

/// A breaker opened for `open_for`, saved at once.
fn saved_open(open_for: Duration) -> keel_breaker::SavedState {
    let old = builder(&ManualClock::new(), 1)
        .half_open_after(open_for)
        .build()
        .unwrap();
    fail(&old);
    old.saved_state()
}

#[test]
fn restored_future_opened_at_delays_later_openings() {
    let saved = saved_open(Duration::from_secs(600));
    assert_eq!(saved.open_remaining, Duration::from_secs(600));
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .half_open_after(Duration::from_secs(30))
        .initial_state(saved)
        .build()
        .unwrap();
    // The restored remainder is capped at the configured open time.
    assert_eq!(
        open_wait(breaker.try_acquire().unwrap_err()),
        Duration::from_secs(30)
    );
    drop(breaker.isolate()); // released: closed
    assert_eq!(breaker.state(), State::Closed);
    clock.advance(Duration::from_secs(1));
    fail(&breaker);
    assert_eq!(breaker.state(), State::Open);
    clock.advance(Duration::from_secs(29));
    assert_eq!(
        open_wait(breaker.try_acquire().unwrap_err()),
        Duration::from_secs(1)
    );
    clock.advance(Duration::from_secs(1));
    let probe = breaker
        .try_acquire()
        .expect("30 s after opening with a 30 s open time, a probe is admitted");
    assert!(probe.is_probe());
}

#[test]
fn restored_unbounded_snapshot_sticks_forever_after_release() {
    let saved = saved_open(Duration::MAX);
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .half_open_after(Duration::from_secs(30))
        .initial_state(saved)
        .build()
        .unwrap();
    drop(breaker.isolate());
    assert_eq!(breaker.state(), State::Closed);
    fail(&breaker);
    clock.advance(Duration::from_secs(365 * 24 * 3600));
    assert!(
        breaker.try_acquire().is_ok(),
        "a year after a 30 s opening, still rejected"
    );
}

/// A manual clock that isolates and releases its breaker the first time it is read after
/// being armed: a transition landing between a result's generation check and its record.
#[derive(Debug, Clone, Default)]
struct IsolatingClock {
    clock: ManualClock,
    armed: Arc<AtomicBool>,
    breaker: Arc<Mutex<Option<CircuitBreaker>>>,
}

impl keel_breaker::Clock for IsolatingClock {
    fn now_nanos(&self) -> u64 {
        if self.armed.swap(false, Ordering::SeqCst) {
            let breaker = self.breaker.lock().unwrap().clone();
            if let Some(breaker) = breaker {
                drop(breaker.isolate());
            }
        }
        self.clock.now_nanos()
    }
}

#[test]
fn stale_failure_does_not_land_in_a_fresh_window() {
    let clock = IsolatingClock::default();
    clock.clock.advance(Duration::from_secs(1));
    let recorder = Recorder::default();
    let breaker = recorder
        .attach(
            CircuitBreaker::builder("window")
                .policy(Policy::time_window(Duration::from_secs(10), 10, 0.5, 2))
                .clock(clock.clone()),
        )
        .build()
        .unwrap();
    *clock.breaker.lock().unwrap() = Some(breaker.clone());
    let stale = breaker.try_acquire().unwrap();
    clock.armed.store(true, Ordering::SeqCst);
    stale.failure(); // admitted before the isolate/release its clock read triggers
    assert_eq!(breaker.state(), State::Closed);
    assert!(
        !recorder.take().contains(&Event::Failure),
        "a stale failure was announced"
    );
    // One fresh failure: with a minimum throughput of 2 it must not trip.
    fail(&breaker);
    assert_eq!(
        breaker.state(),
        State::Closed,
        "the stale failure counted in the new generation"
    );
    *clock.breaker.lock().unwrap() = None; // break the cycle
}

#[test]
fn huge_windows_are_a_config_error() {
    // Without a cap these would allocate gigabytes in `build` and abort on OOM.
    let count = CircuitBreaker::builder("x")
        .policy(Policy::count_window(u32::MAX, 0.5, 1))
        .build()
        .unwrap_err();
    assert_eq!(
        count,
        keel_breaker::ConfigError::TooLarge {
            setting: "count_window.size",
            value: u64::from(u32::MAX),
            max: 1 << 20,
        }
    );
    let time = CircuitBreaker::builder("x")
        .policy(Policy::time_window(Duration::MAX, u32::MAX, 0.5, 1))
        .build()
        .unwrap_err();
    assert_eq!(
        time,
        keel_breaker::ConfigError::TooLarge {
            setting: "time_window.buckets",
            value: u64::from(u32::MAX),
            max: 1 << 16,
        }
    );
    // The largest accepted sizes build.
    assert!(
        CircuitBreaker::builder("x")
            .policy(Policy::count_window(1 << 20, 0.5, 1))
            .build()
            .is_ok()
    );
    assert!(
        CircuitBreaker::builder("x")
            .policy(Policy::time_window(
                Duration::from_secs(60),
                1 << 16,
                0.5,
                1
            ))
            .build()
            .is_ok()
    );
}

#[test]
fn probe_timeout_defaults_to_the_unjittered_open_time() {
    let clock = ManualClock::new();
    let backoff =
        keel_breaker::Backoff::exponential(Duration::from_secs(4), Duration::from_secs(60))
            .with_jitter();
    let breaker = builder(&clock, 1).half_open_after(backoff).build().unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(4)); // the jittered open time is at most 4 s
    let hung = breaker.try_acquire().unwrap();
    assert_eq!(
        full_wait(breaker.try_acquire().unwrap_err()),
        backoff.delay(0)
    );
    drop(hung);
}

// Found by black-box ports of Cockatiel's, resilience4j's and Polly's test scenarios
// (issue 11).

#[test]
fn zero_open_time_still_admits_at_most_half_open_trials() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .half_open_after(Duration::ZERO)
        .build()
        .unwrap();
    fail(&breaker);
    let probe = breaker
        .try_acquire()
        .expect("the first caller probes at once");
    assert!(probe.is_probe());
    for caller in 0..4 {
        assert!(
            breaker.try_acquire().is_err(),
            "caller {caller} was admitted beside the running probe"
        );
    }
    probe.success();
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn zero_probe_timeout_is_a_config_error() {
    let clock = ManualClock::new();
    let error = builder(&clock, 1)
        .probe_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            error,
            keel_breaker::ConfigError::Duration {
                setting: "probe_timeout",
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn zero_min_calls_and_min_throughput_are_config_errors() {
    let count = CircuitBreaker::builder("count")
        .policy(Policy::count_window(10, 0.5, 0))
        .build()
        .unwrap_err();
    assert_eq!(
        count,
        keel_breaker::ConfigError::Zero {
            setting: "count_window.min_calls"
        }
    );
    let time = CircuitBreaker::builder("time")
        .policy(Policy::time_window(Duration::from_secs(10), 10, 0.5, 0))
        .build()
        .unwrap_err();
    assert_eq!(
        time,
        keel_breaker::ConfigError::Zero {
            setting: "time_window.min_throughput"
        }
    );
}

#[test]
fn jitter_differs_between_breakers_opened_at_the_same_instant() {
    let clock = ManualClock::new();
    let backoff =
        keel_breaker::Backoff::exponential(Duration::from_secs(8), Duration::from_secs(60))
            .with_jitter();
    let waits: std::collections::BTreeSet<Duration> = (0..10)
        .map(|_| {
            let breaker = builder(&clock, 1).half_open_after(backoff).build().unwrap();
            fail(&breaker);
            match breaker.try_acquire() {
                Err(rejected) => rejected.retry_after().unwrap(),
                Ok(_) => panic!("an open breaker admitted a call"),
            }
        })
        .collect();
    // Each wait is drawn from 4 s of nanoseconds: ten equal draws would mean one shared seed.
    assert!(
        waits.len() >= 9,
        "ten breakers opened together wait only {} distinct times: {waits:?}",
        waits.len()
    );
    assert!(
        waits
            .iter()
            .all(|wait| *wait >= Duration::from_secs(4) && *wait <= Duration::from_secs(8))
    );
}

#[test]
fn operation_panic_wins_over_a_failure_listener_panic_in_execute() {
    quiet_panics();
    let breaker = CircuitBreaker::builder("loud")
        .count_calls()
        .on_failure(|| panic!("listener panic"))
        .build()
        .unwrap();
    let payload = catch_unwind(AssertUnwindSafe(|| {
        crate::support::ready(breaker.execute(|| async { panic!("model panic") as Result<(), ()> }))
    }))
    .unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"model panic"));
    // The failure was still recorded.
    assert_eq!(breaker.metrics().failures, 1);
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn stale_quiet_success_does_not_reset_a_newer_streak() {
    // The inline path of `call` (default policy, nobody listening) checks the failure
    // streak with one subtraction instead of `tagged_count`: a success whose generation
    // ended while it ran must still leave the newer generation's streak alone.
    let clock = ManualClock::new();
    let breaker = builder(&clock, 2).build().unwrap();
    fail(&breaker);
    let result = breaker.call(|| {
        drop(breaker.isolate()); // two transitions: a new closed generation
        fail(&breaker); // a streak of one in it
        Ok::<_, ()>(())
    });
    assert!(result.is_ok());
    fail(&breaker);
    assert_eq!(
        breaker.state(),
        State::Open,
        "a stale success erased the newer streak"
    );
}

#[test]
fn quiet_success_resets_its_own_streak_and_a_quiet_panic_counts_as_a_failure() {
    quiet_panics();
    let clock = ManualClock::new();
    let breaker = builder(&clock, 2).build().unwrap();
    fail(&breaker);
    succeed(&breaker);
    fail(&breaker);
    assert_eq!(
        breaker.state(),
        State::Closed,
        "the success did not reset the streak"
    );
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        breaker.call(|| -> Result<(), ()> { panic!("operation") })
    }));
    assert!(panicked.is_err());
    assert_eq!(
        breaker.state(),
        State::Open,
        "the panic did not count as a failure"
    );
}
