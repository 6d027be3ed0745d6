//! Many threads, random outcomes, one breaker: the invariants hold throughout.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use breaker::{Event, ManualClock, State};

use crate::support::builder;

#[test]
fn concurrent_random_outcomes_keep_the_invariants() {
    const THREADS: u64 = 4;
    const CALLS: u64 = 20_000;
    let clock = ManualClock::new();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let breaker = builder(&clock, 3)
        .half_open_after(Duration::from_millis(1))
        .half_open_trials(2)
        .on_event(move |event| {
            if let Event::StateChange { from, to } = *event {
                sink.lock().unwrap().push((from, to));
            }
        })
        .build()
        .unwrap();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (breaker, clock) = (breaker.clone(), clock.clone());
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
                        clock.advance(Duration::from_micros(300));
                    }
                    let Ok(permit) = breaker.try_acquire() else {
                        continue;
                    };
                    match random() % 100 {
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
