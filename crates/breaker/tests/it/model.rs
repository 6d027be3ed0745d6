//! Model-based property suite: random command sequences run against the real breaker and a
//! tiny reference model, comparing state, events and rejections after every step.
//!
//! Failing sequences shrink to the shortest one; proptest stores their seeds in
//! `tests/proptest-regressions/model.txt` (committed, replayed first). The seed there is the
//! shrunk case found when the backoff attempt was deliberately not advanced on a failed probe.
//! Run more cases with
//! `PROPTEST_CASES=10000 cargo test -p keel-breaker --test it model`.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    time::Duration,
};

use keel_breaker::{
    Backoff, BreakerError, CircuitBreaker, Event, ManualClock, Permit, Rejected, State,
};
use proptest::prelude::*;

use crate::support::{Recorder, quiet_panics};

const THRESHOLD: u32 = 3;
const TRIALS: u32 = 2;
const SUCCESSES_TO_CLOSE: u32 = 2;
const INITIAL_MS: u64 = 10;
const MAX_MS: u64 = 40;
const PROBE_TIMEOUT_FLOOR_MS: u64 = 1_000;

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Success,
    Failure,
    Cancel,
}

#[derive(Debug, Clone)]
enum Command {
    /// Take a permit and hold it (its result comes later, maybe from an old generation).
    Acquire,
    /// Deliver the result of the held permit at this index (modulo the count).
    Complete(usize, Outcome),
    /// A whole call that succeeds, fails, or panics.
    Call(Outcome),
    Advance(u64),
    Isolate,
    /// Drop the isolation guard at this index (modulo the count).
    Release(usize),
    /// An operator's `close()`.
    Close,
    /// An operator's `trip()`.
    Trip,
}

fn command() -> impl Strategy<Value = Command> {
    let outcome = prop_oneof![
        Just(Outcome::Success),
        Just(Outcome::Failure),
        Just(Outcome::Cancel)
    ];
    prop_oneof![
        3 => Just(Command::Acquire),
        3 => (any::<usize>(), outcome.clone()).prop_map(|(i, o)| Command::Complete(i, o)),
        4 => outcome.prop_map(Command::Call),
        3 => (0..25u64).prop_map(Command::Advance),
        // Now and then past the probe timeout's one-second floor, so hung probes are
        // superseded.
        1 => (900..1_100u64).prop_map(Command::Advance),
        1 => Just(Command::Isolate),
        1 => any::<usize>().prop_map(Command::Release),
        1 => Just(Command::Close),
        1 => Just(Command::Trip),
    ]
}

/// The reference: the documented behaviour written as plainly as possible.
#[derive(Debug, Default)]
struct Model {
    state: Option<State>,
    generation: u64,
    failures: u32,
    attempt: u32,
    opened_at: u64,
    probe_started: u64,
    in_flight: u32,
    successes: u32,
    isolations: u32,
    events: Vec<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Ticket {
    generation: u64,
    probe: bool,
}

impl Model {
    fn state(&self) -> State {
        self.state.unwrap_or(State::Closed)
    }

    fn delay(&self) -> u64 {
        (INITIAL_MS << self.attempt.min(20)).min(MAX_MS)
    }

    fn go(&mut self, to: State) {
        let from = self.state();
        self.generation += 1;
        self.in_flight = 0;
        self.successes = 0;
        if to == State::Closed {
            self.failures = 0;
            self.attempt = 0;
        }
        if from != to {
            self.events.push(Event::StateChange { from, to });
        }
        self.state = Some(to);
    }

    fn admit(&mut self, now: u64) -> Result<Ticket, Rejected> {
        loop {
            match self.state() {
                State::Closed => {
                    return Ok(Ticket {
                        generation: self.generation,
                        probe: false,
                    });
                }
                State::Isolated => return Err(Rejected::Isolated),
                State::Open => {
                    let deadline = self.opened_at + self.delay();
                    if now < deadline {
                        return Err(Rejected::Open {
                            retry_after: Duration::from_millis(deadline - now),
                            opened_ago: Duration::from_millis(now - self.opened_at),
                        });
                    }
                    self.go(State::HalfOpen);
                }
                State::HalfOpen => {
                    if self.in_flight < TRIALS {
                        self.in_flight += 1;
                        self.probe_started = self.probe_started.max(now);
                        return Ok(Ticket {
                            generation: self.generation,
                            probe: true,
                        });
                    }
                    // The default probe timeout: the open time, at least one second.
                    let deadline = self.probe_started + self.delay().max(PROBE_TIMEOUT_FLOOR_MS);
                    if now < deadline {
                        return Err(Rejected::HalfOpenFull {
                            retry_after: Duration::from_millis(deadline - now),
                        });
                    }
                    self.go(State::HalfOpen); // supersede the hung probes
                }
            }
        }
    }

    fn open(&mut self, now: u64, from_probe: bool) {
        self.attempt = if from_probe { self.attempt + 1 } else { 0 };
        self.opened_at = now;
        self.go(State::Open);
    }

    fn complete(&mut self, ticket: Ticket, outcome: Outcome, now: u64) {
        if ticket.generation != self.generation {
            return; // stale
        }
        match (outcome, ticket.probe) {
            (Outcome::Cancel, true) => self.in_flight -= 1,
            (Outcome::Cancel, false) => {}
            (Outcome::Success, true) => {
                self.in_flight -= 1;
                self.successes += 1;
                self.events.push(Event::Success);
                if self.successes >= SUCCESSES_TO_CLOSE {
                    self.go(State::Closed);
                }
            }
            (Outcome::Success, false) => {
                self.failures = 0;
                self.events.push(Event::Success);
            }
            (Outcome::Failure, true) => {
                self.events.push(Event::Failure);
                self.open(now, true);
            }
            (Outcome::Failure, false) => {
                self.failures += 1;
                self.events.push(Event::Failure);
                if self.failures >= THRESHOLD {
                    self.open(now, false);
                }
            }
        }
    }

    fn isolate(&mut self) {
        self.isolations += 1;
        if self.state() != State::Isolated {
            self.go(State::Isolated);
        }
    }

    /// `close()`: from open or half-open only; reports whether it closed.
    fn close(&mut self) -> bool {
        if !matches!(self.state(), State::Open | State::HalfOpen) {
            return false;
        }
        self.go(State::Closed);
        true
    }

    /// `trip()`: opens as the policy would (from half-open with the next delay; an open
    /// breaker restarts its open time); never while isolated.
    fn trip(&mut self, now: u64) -> bool {
        match self.state() {
            State::Isolated => return false,
            State::Closed => self.attempt = 0,
            State::HalfOpen => self.attempt += 1,
            State::Open => {}
        }
        self.opened_at = now;
        self.go(State::Open);
        true
    }

    fn release(&mut self) {
        self.isolations -= 1;
        if self.isolations == 0 {
            self.go(State::Closed);
        }
    }
}

#[allow(clippy::too_many_lines)] // One match arm per command reads best as one function.
fn run(commands: &[Command]) -> Result<(), TestCaseError> {
    quiet_panics();
    let clock = ManualClock::new();
    let recorder = Recorder::default();
    let breaker = recorder
        .attach(CircuitBreaker::builder("model"))
        .policy(keel_breaker::Policy::consecutive_failures(THRESHOLD))
        .half_open_after(Backoff::exponential(
            Duration::from_millis(INITIAL_MS),
            Duration::from_millis(MAX_MS),
        ))
        .half_open_trials(TRIALS)
        .successes_to_close(SUCCESSES_TO_CLOSE)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut model = Model::default();
    let mut now = 0u64;
    let mut held: Vec<(Permit<'_>, Ticket)> = Vec::new();
    let mut guards = Vec::new();
    for (step, command) in commands.iter().enumerate() {
        match *command {
            Command::Acquire => {
                let expected = model.admit(now);
                match (breaker.try_acquire(), expected) {
                    (Ok(permit), Ok(ticket)) => {
                        prop_assert_eq!(permit.is_probe(), ticket.probe, "step {}", step);
                        held.push((permit, ticket));
                    }
                    (Err(actual), Err(expected)) => prop_assert_eq!(actual, expected),
                    (actual, expected) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step}: admission {:?} but the model says {expected:?}",
                            actual.map(|permit| permit.is_probe())
                        )));
                    }
                }
            }
            Command::Complete(index, outcome) => {
                if held.is_empty() {
                    continue;
                }
                let (permit, ticket) = held.remove(index % held.len());
                match outcome {
                    Outcome::Success => permit.success(),
                    Outcome::Failure => permit.failure(),
                    Outcome::Cancel => drop(permit),
                }
                model.complete(ticket, outcome, now);
            }
            Command::Call(outcome) => {
                let expected = model.admit(now);
                let result = catch_unwind(AssertUnwindSafe(|| {
                    breaker.call(|| match outcome {
                        Outcome::Success => Ok(()),
                        Outcome::Failure => Err("failed"),
                        Outcome::Cancel => panic!("model panic"),
                    })
                }));
                match (result, expected) {
                    (Err(_panic), Ok(ticket)) => {
                        model.complete(ticket, Outcome::Failure, now);
                    }
                    (Ok(Ok(()) | Err(BreakerError::Inner(_))), Ok(ticket)) => {
                        let delivered = if matches!(outcome, Outcome::Success) {
                            Outcome::Success
                        } else {
                            Outcome::Failure
                        };
                        model.complete(ticket, delivered, now);
                    }
                    (Ok(Err(actual)), Err(expected)) => {
                        prop_assert_eq!(actual, BreakerError::from(expected), "step {}", step);
                    }
                    (actual, expected) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step}: call {:?} but the model says {expected:?}",
                            actual.map_err(|_| "panic")
                        )));
                    }
                }
            }
            Command::Advance(millis) => {
                clock.advance(Duration::from_millis(millis));
                now += millis;
            }
            Command::Isolate => {
                guards.push(breaker.isolate());
                model.isolate();
            }
            Command::Release(index) => {
                if guards.is_empty() {
                    continue;
                }
                drop(guards.remove(index % guards.len()));
                model.release();
            }
            Command::Close => {
                prop_assert_eq!(breaker.close(), model.close(), "close at step {}", step);
            }
            Command::Trip => {
                prop_assert_eq!(breaker.trip(), model.trip(now), "trip at step {}", step);
            }
        }
        prop_assert_eq!(breaker.state(), model.state(), "state after step {}", step);
        prop_assert_eq!(
            recorder.take(),
            std::mem::take(&mut model.events),
            "events of step {}",
            step
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn breaker_matches_the_reference_model(commands in proptest::collection::vec(command(), 1..80)) {
        run(&commands)?;
    }
}

#[test]
fn model_covers_a_full_cycle() {
    use Command::{Acquire, Advance, Call, Complete};
    use Outcome::{Cancel, Failure, Success};
    run(&[
        Acquire,
        Call(Failure),
        Call(Failure),
        Call(Cancel),         // a panic: the third failure opens
        Complete(0, Failure), // stale
        Advance(10),
        Acquire,
        Acquire,
        Acquire, // rejected: both slots taken
        Complete(0, Success),
        Complete(0, Success), // two successes close
        Call(Success),
    ])
    .unwrap();
}
