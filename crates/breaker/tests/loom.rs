//! loom models of the breaker's atomics: every interleaving (up to the preemption bound) of
//! two or three threads racing a transition.
//!
//! Run with `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p keel-breaker --test loom --release`.
#![cfg(loom)]

use std::time::Duration;

use keel_breaker::{CircuitBreaker, Classify, Event, ManualClock, Outcome, Policy, State};
use loom::{
    sync::{Arc, Mutex},
    thread,
};

fn model(test: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(test);
}

/// A breaker on `clock` that records its state changes into the returned log.
fn recorded(
    clock: &ManualClock,
    failures: u32,
    trials: u32,
) -> (CircuitBreaker, Arc<Mutex<Vec<(State, State)>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let breaker = CircuitBreaker::builder("loom")
        .policy(Policy::consecutive_failures(failures))
        .half_open_after(Duration::from_secs(1))
        .half_open_trials(trials)
        .clock(clock.clone())
        .on_event(move |event| {
            if let Event::StateChange { from, to } = *event {
                sink.lock().unwrap().push((from, to));
            }
        })
        .build()
        .unwrap();
    (breaker, log)
}

fn fail(breaker: &CircuitBreaker) {
    let _ = breaker.call(|| Err::<(), _>(()));
}

#[test]
fn two_threads_tripping_at_once_make_one_transition() {
    model(|| {
        let clock = ManualClock::new();
        let (breaker, log) = recorded(&clock, 1, 1);
        let other = breaker.clone();
        let racer = thread::spawn(move || fail(&other));
        fail(&breaker);
        racer.join().unwrap();
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(*log.lock().unwrap(), [(State::Closed, State::Open)]);
    });
}

#[test]
fn racing_callers_get_exactly_half_open_trials_slots() {
    model(|| {
        let clock = ManualClock::new();
        let (breaker, log) = recorded(&clock, 1, 2);
        fail(&breaker);
        clock.advance(Duration::from_secs(1));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let breaker = breaker.clone();
                thread::spawn(move || {
                    // Keep the slot: forget the permit instead of finishing the call.
                    breaker.try_acquire().map(std::mem::forget).is_ok()
                })
            })
            .collect();
        let mine = breaker.try_acquire().map(std::mem::forget).is_ok();
        let admitted = racers
            .into_iter()
            .map(|racer| racer.join().unwrap())
            .filter(|admitted| *admitted)
            .count()
            + usize::from(mine);
        assert_eq!(admitted, 2);
        assert_eq!(
            *log.lock().unwrap(),
            [(State::Closed, State::Open), (State::Open, State::HalfOpen)]
        );
    });
}

#[test]
fn stale_result_racing_a_transition_changes_nothing() {
    // Two probes race: whichever result lands first decides; the other is stale.
    model(|| {
        let clock = ManualClock::new();
        let (breaker, log) = recorded(&clock, 2, 2);
        fail(&breaker);
        fail(&breaker);
        clock.advance(Duration::from_secs(1));
        let other = breaker.clone();
        let failing = thread::spawn(move || fail(&other));
        let _ = breaker.call(|| Ok::<_, ()>(()));
        failing.join().unwrap();
        let log = log.lock().unwrap();
        let out_of_half_open: Vec<_> = log
            .iter()
            .filter(|(from, _)| *from == State::HalfOpen)
            .collect();
        assert_eq!(out_of_half_open.len(), 1, "{log:?}");
        let decided = out_of_half_open[0].1;
        assert_eq!(breaker.state(), decided, "{log:?}");
    });
}

#[test]
fn stale_success_racing_a_trip_does_not_undo_it() {
    model(|| {
        let clock = ManualClock::new();
        let (breaker, log) = recorded(&clock, 1, 1);
        let other = breaker.clone();
        let succeeding = thread::spawn(move || {
            if let Ok(permit) = other.try_acquire() {
                permit.success();
            }
        });
        fail(&breaker);
        succeeding.join().unwrap();
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(*log.lock().unwrap(), [(State::Closed, State::Open)]);
    });
}

#[test]
fn isolation_refcount_holds_until_the_last_guard() {
    model(|| {
        let clock = ManualClock::new();
        let (breaker, log) = recorded(&clock, 1, 1);
        let other = breaker.clone();
        let isolating = thread::spawn(move || {
            let guard = other.isolate();
            assert_eq!(other.state(), State::Isolated);
            drop(guard);
        });
        let guard = breaker.isolate();
        assert_eq!(breaker.state(), State::Isolated);
        drop(guard);
        isolating.join().unwrap();
        assert_eq!(breaker.state(), State::Closed);
        let log = log.lock().unwrap();
        // One or two isolate/release cycles, depending on the overlap; always balanced.
        // (Listeners of different threads may run in either order, so count, not sequence.)
        let isolations = log
            .iter()
            .filter(|change| **change == (State::Closed, State::Isolated))
            .count();
        let releases = log
            .iter()
            .filter(|change| **change == (State::Isolated, State::Closed))
            .count();
        assert_eq!(isolations, releases, "{log:?}");
        assert_eq!(isolations + releases, log.len(), "{log:?}");
        assert!(isolations == 1 || isolations == 2, "{log:?}");
    });
}

#[test]
fn stale_failure_erases_live_consecutive_count() {
    // A failure admitted before an isolate/release must not erase (or add to) the failure
    // count of the new closed generation: two failures after the release open it.
    model(|| {
        let clock = ManualClock::new();
        let (breaker, _log) = recorded(&clock, 2, 1);
        let other = breaker.clone();
        let stale = thread::spawn(move || fail(&other));
        drop(breaker.isolate());
        fail(&breaker);
        stale.join().unwrap();
        fail(&breaker);
        assert_eq!(
            breaker.state(),
            State::Open,
            "two failures in the new closed generation did not open"
        );
    });
}

#[test]
fn stale_success_does_not_reset_a_newer_streak() {
    // A success admitted before an isolate/release, resetting its own generation's streak,
    // must not erase the new closed generation's count.
    model(|| {
        let clock = ManualClock::new();
        let (breaker, _log) = recorded(&clock, 2, 1);
        fail(&breaker); // a streak of one for the stale success to reset
        let stale = breaker.try_acquire().unwrap();
        let other = breaker.clone();
        let renewing = thread::spawn(move || {
            drop(other.isolate());
            fail(&other);
        });
        stale.success();
        renewing.join().unwrap();
        fail(&breaker);
        assert_eq!(
            breaker.state(),
            State::Open,
            "a stale success erased the streak"
        );
    });
}

#[test]
fn manual_close_racing_a_closing_probe_closes_once() {
    // An operator's `close()` and the probe success that would close the breaker anyway:
    // exactly one HalfOpen -> Closed transition, announced once, counted once.
    model(|| {
        let clock = ManualClock::new();
        let (breaker, log) = recorded(&clock, 1, 1);
        fail(&breaker);
        clock.advance(Duration::from_secs(1));
        let probe = breaker.try_acquire().unwrap();
        let other = breaker.clone();
        let closing = thread::spawn(move || other.close());
        probe.success();
        let closed_by_hand = closing.join().unwrap();
        assert_eq!(breaker.state(), State::Closed);
        let log = log.lock().unwrap();
        assert_eq!(
            *log,
            [
                (State::Closed, State::Open),
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::Closed)
            ]
        );
        let transitions = breaker.metrics().transitions;
        assert_eq!(transitions.to_closed, 1);
        assert_eq!(transitions.manual, u64::from(closed_by_hand));
    });
}

#[test]
fn manual_trip_racing_a_policy_trip_opens_once_and_stays_open() {
    model(|| {
        let clock = ManualClock::new();
        let (breaker, log) = recorded(&clock, 1, 1);
        let other = breaker.clone();
        let tripping = thread::spawn(move || assert!(other.open_for(Duration::from_secs(60))));
        fail(&breaker);
        tripping.join().unwrap();
        assert_eq!(breaker.state(), State::Open);
        // Either order opens once: the later of the two reopens an open breaker, which is
        // a new generation but no new state.
        assert_eq!(*log.lock().unwrap(), [(State::Closed, State::Open)]);
        assert!(breaker.try_acquire().is_err());
    });
}

#[test]
fn counted_calls_lose_no_count_under_concurrent_calls() {
    // `count_calls`: every admission and outcome is one `fetch_add`, so two threads calling
    // at once must lose none (a load-then-store would).
    model(|| {
        let breaker = CircuitBreaker::builder("loom")
            .policy(Policy::consecutive_failures(3))
            .clock(ManualClock::new())
            .count_calls()
            .build()
            .unwrap();
        let other = breaker.clone();
        let racer = thread::spawn(move || {
            let _ = other.call(|| Ok::<_, ()>(()));
            fail(&other);
        });
        let _ = breaker.call(|| Ok::<_, ()>(()));
        fail(&breaker);
        racer.join().unwrap();
        let metrics = breaker.metrics();
        assert_eq!(
            (metrics.admitted, metrics.successes, metrics.failures),
            (4, 2, 2)
        );
        assert_eq!(breaker.state(), State::Closed);
    });
}

/// A classifier for an upstream that answers every failure with `Retry-After: 60`.
struct RetryAfterSixty;

impl Classify<(), ()> for RetryAfterSixty {
    fn classify(&self, result: &Result<(), ()>) -> Outcome {
        if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }

    fn retry_after(&self, _: &Result<(), ()>) -> Option<Duration> {
        Some(Duration::from_secs(60))
    }
}

#[test]
fn an_upstream_retry_after_admits_no_probe_before_the_hold_ends() {
    // The failure that opens the breaker asked for 60 s; the backoff says 1 s. A racing
    // caller that lets 2 s pass and asks must never get a probe, whenever it runs
    // relative to the opening.
    model(|| {
        let clock = ManualClock::new();
        let (breaker, _log) = recorded(&clock, 1, 1);
        let other = breaker.clone();
        let later = clock.clone();
        let racer = thread::spawn(move || {
            later.advance(Duration::from_secs(2));
            other.try_acquire().map(|permit| {
                let probe = permit.is_probe();
                std::mem::forget(permit);
                probe
            })
        });
        let _ = breaker.classify(RetryAfterSixty).call(|| Err(()));
        let raced = racer.join().unwrap();
        assert!(
            !matches!(raced, Ok(true)),
            "a probe was admitted 2 s into a 60 s hold"
        );
        if raced.is_err() {
            assert_eq!(breaker.state(), State::Open);
        }
        let retry_after = breaker.try_acquire().unwrap_err().retry_after().unwrap();
        assert!(
            retry_after >= Duration::from_secs(58),
            "held {retry_after:?}"
        );
    });
}
