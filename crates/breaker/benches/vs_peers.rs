//! `cargo bench -p keel-breaker --bench vs_peers`: our breaker side by side with failsafe 1.3,
//! recloser 1.4 and the bare call, at 1 and 2 threads. Every row is measured by
//! `xtask::harness`: ours and the baseline interleaved in rounds, the median ratio with its
//! spread (see `xtask/src/bench.rs` for the report protocol; `BENCH_QUICK=1` shortens the
//! run).
//!
//! The "bare call" is `work`: a multiply-xor-rotate hash of a `black_box`ed `u64`, returned
//! as `Ok` and `black_box`ed again, so the optimizer can delete neither the call nor its
//! result. Every guarded row calls the same `work` through the breaker. At 2 threads both
//! threads share ONE breaker (the contention is what is measured) and the number is the
//! time per call per thread.

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
    time::Duration,
};

use failsafe::{CircuitBreaker as _, Config, backoff, failure_policy};
use keel_breaker::{BreakerService, CircuitBreaker, Policy};
use recloser::Recloser;
use tower::{Service as _, service_fn};
use xtask::harness::{Harness, Row};

#[inline(never)]
#[allow(clippy::unnecessary_wraps)] // Guarded calls return a Result; so does the bare one.
fn work(input: u64) -> Result<u64, u64> {
    let mixed = (input ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    Ok(mixed.rotate_left(29) ^ (mixed >> 31))
}

/// The inner service of the tower rows, with a nameable type for the thread-locals.
type ReadyService = tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<u64, u64>>>;

fn ready_service() -> ReadyService {
    service_fn((|x: u64| std::future::ready(work(x))) as fn(u64) -> _)
}

/// The peers' tower services over [`ReadyService`].
type ResilienceService = tower_resilience_circuitbreaker::CircuitBreaker<
    ReadyService,
    tower_resilience_circuitbreaker::DefaultClassifier,
>;
type SeatbeltService = seatbelt::breaker::Breaker<u64, Result<u64, u64>, ReadyService>;

std::thread_local! {
    /// This thread's clone of the tower-resilience service (clones share its breaker).
    static RESILIENCE: std::cell::RefCell<Option<ResilienceService>> =
        const { std::cell::RefCell::new(None) };
    /// This thread's clone of the seatbelt service (clones share its breaker).
    static SEATBELT: std::cell::RefCell<Option<SeatbeltService>> =
        const { std::cell::RefCell::new(None) };
}

/// Polls a future until it is ready, spinning (a peer's async lock may be pending while
/// the other thread holds it; its release hands the lock to this waiter, so a later poll
/// completes even with a no-op waker).
#[allow(clippy::inline_always)] // As for `poll_ready`.
#[inline(always)]
fn poll_until_ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::hint::spin_loop();
    }
}

/// Polls a future once with a no-op waker (every future benchmarked here is ready).
///
/// Inlined, so each future is built where it is polled, as in an executor's task or an
/// outer `async fn`'s state. Left out of line, the call copies the future by value into
/// this function, and the copy's wide loads of the narrow stores that built it stall on
/// store forwarding: a cost that grows with the future's size (ours is 64 bytes, the
/// bare one 16) and that no real executor pays per poll.
#[allow(clippy::inline_always)] // `#[inline]` alone leaves it out of line here.
#[inline(always)]
fn poll_ready<F: Future>(future: F) -> Option<F::Output> {
    let future = pin!(future);
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

#[allow(clippy::too_many_lines)] // One block per group of rows reads best as one function.
fn main() {
    let mut run = Harness::from_env("breaker");
    let hour = Duration::from_secs(3600);

    let ours = CircuitBreaker::builder("bench").build().unwrap();
    let failsafe = Config::new()
        .failure_policy(failure_policy::consecutive_failures(
            5,
            backoff::constant(hour),
        ))
        .build();
    let recloser = Recloser::default();

    // The harness passes a `black_box`ed index and `black_box`es what each body returns.
    let bare = |i: u64| work(i).ok();
    let through_ours = |i: u64| ours.call(|| work(i)).ok();
    let through_failsafe = |i: u64| failsafe.call(|| work(i)).ok();
    let through_recloser = |i: u64| recloser.call(|| work(i)).ok();
    for threads in [1, 2] {
        let wide = threads > 1;
        run.nanos(
            Row::new("closed success", "bare call")
                .threads(threads)
                .goal(0.625),
            through_ours,
            bare,
        );
        run.nanos(
            Row::new("closed success", "failsafe 1.3")
                .threads(threads)
                .goal(if wide { 10.0 } else { 3.5 }),
            through_ours,
            through_failsafe,
        );
        run.nanos(
            Row::new("closed success", "recloser 1.4")
                .threads(threads)
                .goal(if wide { 20.0 } else { 4.0 }),
            through_ours,
            through_recloser,
        );
    }

    // The same closed success with `count_calls` (metrics on): two relaxed `fetch_add`s per
    // call on counters both threads share. No goal: the goals are for metrics off.
    let counted = CircuitBreaker::builder("bench-metrics")
        .count_calls()
        .build()
        .unwrap();
    let through_counted = |i: u64| counted.call(|| work(i)).ok();
    for threads in [1, 2] {
        run.nanos(
            Row::new("closed success with metrics", "bare call").threads(threads),
            through_counted,
            bare,
        );
    }

    // Rejection while open: every breaker tripped, open for an hour.
    let open_ours = CircuitBreaker::builder("open")
        .policy(Policy::consecutive_failures(1))
        .half_open_after(hour)
        .build()
        .unwrap();
    let _ = open_ours.call(|| Err::<(), _>(()));
    let open_failsafe = Config::new()
        .failure_policy(failure_policy::consecutive_failures(
            1,
            backoff::constant(hour),
        ))
        .build();
    let _ = open_failsafe.call(|| Err::<(), _>(()));
    let open_recloser = Recloser::custom()
        .closed_len(1)
        .error_rate(0.5)
        .open_wait(hour)
        .build();
    for _ in 0..3 {
        let _ = open_recloser.call(|| Err::<(), _>(()));
    }
    assert!(open_ours.is_open());
    assert!(!open_failsafe.is_call_permitted());
    assert!(open_recloser.call(|| work(1)).is_err());
    let rejected_ours = |i: u64| open_ours.call(|| work(i)).is_err();
    let rejected_failsafe = |i: u64| open_failsafe.call(|| work(i)).is_err();
    let rejected_recloser = |i: u64| open_recloser.call(|| work(i)).is_err();
    for threads in [1, 2] {
        run.nanos(
            Row::new("rejection while open", "failsafe 1.3")
                .threads(threads)
                .goal(1.5),
            rejected_ours,
            rejected_failsafe,
        );
        run.nanos(
            Row::new("rejection while open", "recloser 1.4")
                .threads(threads)
                .goal(1.5),
            rejected_ours,
            rejected_recloser,
        );
    }

    // `execute` around a ready future versus polling the bare future.
    // Both sides keep only the `Ok` value, as the closed-success rows do: the harness
    // `black_box`es what a body returns, and copying out our 40-byte
    // `Result<u64, BreakerError<u64>>` (two `Duration`s in `Open`) costs a store-forwarding
    // stall that a caller matching on the result in place never pays.
    let executed = |i: u64| poll_ready(ours.execute(|| async move { work(i) })).map(Result::ok);
    let bare_future = |i: u64| poll_ready(async move { work(i) }).map(Result::ok);
    for threads in [1, 2] {
        run.nanos(
            Row::new("execute ready future", "bare future")
                .threads(threads)
                .goal(0.25),
            executed,
            bare_future,
        );
    }

    // The tower layer over a ready `service_fn`, the breaker held as `&'static` (no
    // reference count touched per call), against calling the bare `service_fn`. A service
    // is built per call (both sides): `call` takes `&mut self` and the threads share the
    // closure; building either is a copy.
    let static_breaker: &'static CircuitBreaker =
        Box::leak(Box::new(CircuitBreaker::builder("layer").build().unwrap()));
    // Every tower row drives its future with `poll_until_ready` (a peer's async lock may
    // be pending under contention) and keeps only the `Ok` value.
    let through_layer = |i: u64| {
        let mut service = BreakerService::new(ready_service(), static_breaker);
        poll_until_ready(service.call(i)).ok()
    };
    let bare_service = |i: u64| {
        let mut service = ready_service();
        poll_until_ready(service.call(i)).ok()
    };
    for threads in [1, 2] {
        run.nanos(
            Row::new(
                "tower layer over a ready service_fn",
                "bare service_fn (tower 0.5)",
            )
            .threads(threads)
            .goal(0.2),
            through_layer,
            bare_service,
        );
    }

    // The same layer against the peers' tower layers over the same `service_fn`, each with
    // its default policy and a shared breaker. Their `call` takes `&mut self`, so each
    // thread calls its own clone of one service (clones share the breaker), kept in a
    // thread-local.
    let resilience_layer = tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .build()
        .unwrap();
    let resilience_service = resilience_layer.layer_fn(ready_service());
    let through_resilience = |i: u64| {
        RESILIENCE.with(|cell| {
            let mut slot = cell.borrow_mut();
            let service = slot.get_or_insert_with(|| resilience_service.clone());
            poll_until_ready(service.call(i)).ok()
        })
    };
    let seatbelt_context =
        seatbelt::ResilienceContext::<u64, Result<u64, u64>>::new(tick::Clock::new_frozen());
    let seatbelt_service = layered::Layer::layer(
        &seatbelt::breaker::Breaker::layer("bench", &seatbelt_context)
            .recovery_with(|result: &Result<u64, u64>, _| match result {
                Ok(_) => seatbelt::RecoveryInfo::never(),
                Err(_) => seatbelt::RecoveryInfo::retry(),
            })
            .rejected_input(|_, _| Err(0)),
        ready_service(),
    );
    let through_seatbelt = |i: u64| {
        SEATBELT.with(|cell| {
            let mut slot = cell.borrow_mut();
            let service = slot.get_or_insert_with(|| seatbelt_service.clone());
            poll_until_ready(service.call(i)).ok()
        })
    };
    for threads in [1, 2] {
        run.nanos(
            Row::new(
                "tower layer over a ready service_fn",
                "tower-resilience-circuitbreaker 0.14",
            )
            .threads(threads)
            .goal(20.0),
            through_layer,
            through_resilience,
        );
        run.nanos(
            Row::new("tower layer over a ready service_fn", "seatbelt 0.11")
                .threads(threads)
                .goal(10.0),
            through_layer,
            through_seatbelt,
        );
    }

    run.finish();
}
