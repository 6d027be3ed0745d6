//! Many threads, random outcomes, one breaker: the invariants hold throughout.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use keel_breaker::{Event, ManualClock, State};

use crate::support::builder;

#[test]
fn concurrent_random_outcomes_keep_the_invariants() {
    const THREADS: u64 = 4;
    const CALLS: u64 = 20_000;
    const TRIALS: u32 = 2;
    let clock = ManualClock::new();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let breaker = builder(&clock, 3)
        .half_open_after(Duration::from_millis(1))
        .half_open_trials(TRIALS)
        .on_event(move |event| {
            if let Event::StateChange { from, to } = *event {
                // Checked as it happens: only the transitions the state table allows.
                assert!(
                    matches!(
                        (from, to),
                        (State::Closed | State::HalfOpen, State::Open)
                            | (State::Open, State::HalfOpen)
                            | (State::HalfOpen, State::Closed)
                    ),
                    "unexpected transition {from} -> {to}"
                );
                sink.lock().unwrap().push((from, to));
            }
        })
        .build()
        .unwrap();
    // Probes currently held, counted after a probe is admitted and before its outcome is
    // reported (so never more than the breaker itself holds). Time only moves while no
    // call is in flight (the write lock), so every held probe belongs to the current
    // half-open period: a new period needs the open time to pass.
    let probes_held = AtomicU32::new(0);
    let time = RwLock::new(());
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (breaker, clock) = (breaker.clone(), clock.clone());
            let (probes_held, time) = (&probes_held, &time);
            scope.spawn(move || {
                let mut seed = 0x9E37_79B9_7F4A_7C15 ^ (thread + 1);
                let mut random = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                for _ in 0..CALLS {
                    if random() % 100 < 2 {
                        let _moving = time.write().unwrap();
                        clock.advance(Duration::from_micros(300));
                    }
                    let _frozen = time.read().unwrap();
                    let Ok(permit) = breaker.try_acquire() else {
                        continue;
                    };
                    let probe = permit.is_probe();
                    if probe {
                        let held = probes_held.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(held <= TRIALS, "{held} probes held at once");
                        // Hold the probe a moment, so that probes overlap.
                        std::thread::yield_now();
                    }
                    let outcome = random() % 100;
                    if probe {
                        probes_held.fetch_sub(1, Ordering::SeqCst);
                    }
                    match outcome {
                        0..40 => permit.failure(),
                        40..95 => permit.success(),
                        _ => drop(permit),
                    }
                }
            });
        }
    });
    // Listeners of different threads may run in any order, but the transitions must form
    // one path from `Closed` to the final state: each state entered as often as it was
    // left, except the start (left once more) and the end (entered once more).
    let transitions = events.lock().unwrap().clone(); // unlocked: the listener needs it below
    assert!(transitions.len() > 10, "the stress test hardly tripped");
    let mut balance: HashMap<State, i64> = HashMap::new();
    for &(from, to) in &transitions {
        assert_ne!(from, to, "a transition that changes nothing was announced");
        *balance.entry(from).or_default() -= 1;
        *balance.entry(to).or_default() += 1;
    }
    let end = breaker.state();
    for state in [State::Closed, State::Open, State::HalfOpen, State::Isolated] {
        let expected = i64::from(state == end) - i64::from(state == State::Closed);
        assert_eq!(
            balance.get(&state).copied().unwrap_or(0),
            expected,
            "transitions into and out of {state} do not balance: {transitions:?}"
        );
    }
    // And it still works: however it ended, a successful probe closes it.
    clock.advance(Duration::from_secs(1));
    let _ = breaker.call(|| Ok::<_, ()>(()));
    let _ = breaker.call(|| Ok::<_, ()>(()));
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn counts_from_many_threads_add_up_exactly() {
    // `count_calls` spreads its counts over per-thread stripes; a read must sum them all,
    // whichever stripes the callers landed on.
    const THREADS: u64 = 8;
    const CALLS: u64 = 5_000;
    // A streak never long enough to open, however the threads' failures interleave.
    let breaker = keel_breaker::CircuitBreaker::builder("stripes")
        .policy(keel_breaker::Policy::consecutive_failures(u32::MAX))
        .count_calls()
        .build()
        .unwrap();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let breaker = &breaker;
            scope.spawn(move || {
                for call in 0..CALLS {
                    // Every fourth call fails.
                    let failed = (thread + call) % 4 == 0;
                    let _ = breaker.call(|| if failed { Err(()) } else { Ok(()) });
                }
            });
        }
    });
    let metrics = breaker.metrics();
    assert_eq!(metrics.state, State::Closed);
    assert_eq!(metrics.admitted, THREADS * CALLS);
    assert_eq!(metrics.failures, THREADS * CALLS / 4);
    assert_eq!(metrics.successes, THREADS * CALLS * 3 / 4);
}
