//! Counting-allocator checks: dropping a breaker frees everything it allocated, and the hot
//! paths (a closed-state success, a rejection while open) allocate nothing.
//!
//! Its own binary because a global allocator is per binary; `harness = false` so that no
//! test-harness thread allocates while a region is being measured.

use std::{alloc::System, time::Duration};

use keel_breaker::{CircuitBreaker, ManualClock, Policy, State};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    // Once, so that one-time global setup (tracing's callsite registry) is not counted.
    exercise(Policy::consecutive_failures(1));
    dropping_breaker_frees_everything();
    closed_success_and_open_rejection_do_not_allocate();
}

/// Builds a breaker with listeners, drives it through every state with clones, permits
/// and guards alive, and drops it all.
fn exercise(policy: Policy) {
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder(String::from("alloc"))
        .policy(policy)
        .half_open_after(Duration::from_secs(1))
        .clock(clock.clone())
        .on_state_change(|_, _| {})
        .on_success(|| {})
        .on_rejected(|_| {})
        .count_calls()
        .slow_call_threshold(Duration::from_secs(5))
        .build()
        .unwrap();
    let clone = breaker.clone();
    let held = clone.try_acquire().unwrap();
    for _ in 0..5 {
        let _ = breaker.call(|| Err::<(), _>(()));
    }
    assert_eq!(breaker.state(), State::Open);
    clock.advance(Duration::from_secs(1));
    let _ = clone.call(|| Ok::<_, ()>(()));
    held.success();
    assert!(breaker.trip());
    assert!(breaker.close());
    let _ = breaker.metrics();
    let guard = breaker.isolate();
    drop(breaker);
    drop(guard);
    assert_eq!(clone.state(), State::Closed);
}

fn dropping_breaker_frees_everything() {
    for policy in [
        Policy::consecutive_failures(1),
        Policy::count_window(10, 0.5, 2),
        Policy::time_window(Duration::from_secs(10), 10, 0.5, 2),
    ] {
        let region = Region::new(GLOBAL);
        exercise(policy);
        let stats = region.change();
        assert!(
            stats.allocations > 0,
            "the test allocated nothing: {stats:?}"
        );
        assert_eq!(
            stats.bytes_allocated, stats.bytes_deallocated,
            "{policy:?}: bytes leaked: {stats:?}"
        );
        assert_eq!(
            stats.allocations, stats.deallocations,
            "{policy:?}: allocations leaked: {stats:?}"
        );
    }
}

fn closed_success_and_open_rejection_do_not_allocate() {
    closed_success_and_open_rejection_do_not_allocate_with(|builder| builder);
    // Metrics on, a rejection listener and a classifier: still nothing allocated per call.
    closed_success_and_open_rejection_do_not_allocate_with(|builder| {
        builder.count_calls().on_rejected(|_| {})
    });
}

fn closed_success_and_open_rejection_do_not_allocate_with(
    configure: impl Fn(keel_breaker::Builder) -> keel_breaker::Builder,
) {
    let clock = ManualClock::new();
    let breaker = configure(
        CircuitBreaker::builder("hot")
            .policy(Policy::consecutive_failures(3))
            .clock(clock),
    )
    .build()
    .unwrap();
    let region = Region::new(GLOBAL);
    let classified = breaker.classify(|result: &Result<(), ()>| match result {
        Ok(()) => keel_breaker::Outcome::Success,
        Err(()) => keel_breaker::Outcome::Ignored,
    });
    for _ in 0..1000 {
        let _ = breaker.call(|| Ok::<_, ()>(()));
        let _ = breaker.call(|| Err::<(), _>(()));
        let _ = classified.call(|| Err::<(), _>(()));
    }
    assert_eq!(
        region.change().allocations,
        0,
        "closed-state calls allocated"
    );
    for _ in 0..3 {
        let _ = breaker.call(|| Err::<(), _>(()));
    }
    assert_eq!(breaker.state(), State::Open);
    let region = Region::new(GLOBAL);
    for _ in 0..1000 {
        assert!(breaker.call(|| Ok::<_, ()>(())).is_err());
    }
    assert_eq!(region.change().allocations, 0, "rejections allocated");
}
