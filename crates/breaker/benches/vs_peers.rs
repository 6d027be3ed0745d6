//! `cargo bench -p breaker --bench vs_peers`: our breaker side by side with failsafe 1.3,
//! recloser 1.4 and the bare call, at 1 and 2 threads (see `xtask/src/bench.rs` for the
//! report protocol; `BENCH_QUICK=1` shortens the run).
//!
//! The "bare call" is `work`: a multiply-xor-rotate hash of a `black_box`ed `u64`, returned
//! as `Ok` and `black_box`ed again, so the optimizer can delete neither the call nor its
//! result. Every guarded row calls the same `work` through the breaker. At 2 threads both
//! threads share ONE breaker (the contention is what is measured) and the number is the
//! time per call per thread.

use std::{
    fmt::Write as _,
    fs::OpenOptions,
    future::Future,
    hint::black_box,
    io::Write as _,
    pin::pin,
    sync::Barrier,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use breaker::{CircuitBreaker, Policy};
use failsafe::{CircuitBreaker as _, Config, backoff, failure_policy};
use recloser::Recloser;

#[inline(never)]
#[allow(clippy::unnecessary_wraps)] // Guarded calls return a Result; so does the bare one.
fn work(input: u64) -> Result<u64, u64> {
    let mixed = (input ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    Ok(mixed.rotate_left(29) ^ (mixed >> 31))
}

/// Nanoseconds per call per thread: `threads` threads each run `body` `iterations` times,
/// starting together.
fn time_per_call<F: Fn(u64) + Sync>(threads: usize, iterations: u64, body: &F) -> f64 {
    let barrier = Barrier::new(threads);
    let total: Duration = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iterations {
                        body(black_box(i));
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    #[allow(clippy::cast_precision_loss)] // Nanosecond totals fit f64 comfortably.
    let per_call = total.as_nanos() as f64 / (threads as f64 * iterations as f64);
    per_call
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Run {
    iterations: u64,
    repetitions: usize,
    report: Option<std::fs::File>,
    rows: Vec<(String, String, f64, f64, Option<f64>)>,
}

impl Run {
    /// Measures `ours` and `baseline` alternately, `repetitions` times each; records medians.
    fn row<A: Fn(u64) + Sync, B: Fn(u64) + Sync>(
        &mut self,
        bench: &str,
        threads: usize,
        baseline_name: &str,
        goal: Option<f64>,
        ours: &A,
        baseline: &B,
    ) {
        // Warm up both (caches, branch predictors, lazily initialized state).
        time_per_call(threads, self.iterations / 10, ours);
        time_per_call(threads, self.iterations / 10, baseline);
        let (mut ours_times, mut baseline_times) = (Vec::new(), Vec::new());
        for _ in 0..self.repetitions {
            ours_times.push(time_per_call(threads, self.iterations, ours));
            baseline_times.push(time_per_call(threads, self.iterations, baseline));
        }
        let (ours, baseline) = (median(ours_times), median(baseline_times));
        let name = format!(
            "{bench}, {threads} thread{}",
            if threads == 1 { "" } else { "s" }
        );
        if let Some(file) = &mut self.report {
            let goal = goal.map_or(String::new(), |goal| format!(",\"goal\":{goal}"));
            writeln!(
                file,
                "{{\"bench\":\"{name}\",\"unit\":\"ns/call\",\"ours\":{ours:.3},\"baseline\":\"{baseline_name}\",\"baseline_value\":{baseline:.3}{goal}}}"
            )
            .expect("BENCH_REPORT is writable");
        }
        self.rows
            .push((name, baseline_name.to_owned(), ours, baseline, goal));
    }
}

/// Polls a future once with a no-op waker (every future benchmarked here is ready).
fn poll_ready<F: Future>(future: F) -> Option<F::Output> {
    let future = pin!(future);
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

#[allow(clippy::too_many_lines)] // The rows, in the order of the README table.
fn main() {
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let report = std::env::var_os("BENCH_REPORT").map(|path| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("BENCH_REPORT can be opened for appending")
    });
    let mut run = Run {
        iterations: if quick { 200_000 } else { 2_000_000 },
        repetitions: if quick { 3 } else { 11 },
        report,
        rows: Vec::new(),
    };
    let hour = Duration::from_secs(3600);

    let ours = CircuitBreaker::builder("bench").build().unwrap();
    let failsafe = Config::new()
        .failure_policy(failure_policy::consecutive_failures(
            5,
            backoff::constant(hour),
        ))
        .build();
    let recloser = Recloser::default();

    let bare = |i: u64| {
        black_box(work(black_box(i)).ok());
    };
    let through_ours = |i: u64| {
        black_box(ours.call(|| work(black_box(i))).ok());
    };
    let through_failsafe = |i: u64| {
        black_box(failsafe.call(|| work(black_box(i))).ok());
    };
    let through_recloser = |i: u64| {
        black_box(recloser.call(|| work(black_box(i))).ok());
    };
    for threads in [1, 2] {
        let wide = threads > 1;
        run.row(
            "closed success",
            threads,
            "bare call",
            Some(0.625),
            &through_ours,
            &bare,
        );
        run.row(
            "closed success",
            threads,
            "failsafe 1.3",
            Some(if wide { 10.0 } else { 3.5 }),
            &through_ours,
            &through_failsafe,
        );
        run.row(
            "closed success",
            threads,
            "recloser 1.4",
            Some(if wide { 20.0 } else { 4.0 }),
            &through_ours,
            &through_recloser,
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
    let rejected_ours = |i: u64| {
        black_box(open_ours.call(|| work(black_box(i))).is_err());
    };
    let rejected_failsafe = |i: u64| {
        black_box(open_failsafe.call(|| work(black_box(i))).is_err());
    };
    let rejected_recloser = |i: u64| {
        black_box(open_recloser.call(|| work(black_box(i))).is_err());
    };
    for threads in [1, 2] {
        run.row(
            "rejection while open",
            threads,
            "failsafe 1.3",
            None,
            &rejected_ours,
            &rejected_failsafe,
        );
        run.row(
            "rejection while open",
            threads,
            "recloser 1.4",
            None,
            &rejected_ours,
            &rejected_recloser,
        );
    }

    // `execute` around a ready future versus polling the bare future.
    let executed = |i: u64| {
        black_box(poll_ready(
            ours.execute(|| async move { work(black_box(i)) }),
        ));
    };
    let bare_future = |i: u64| {
        black_box(poll_ready(async move { work(black_box(i)) }));
    };
    for threads in [1, 2] {
        run.row(
            "execute ready future",
            threads,
            "bare future",
            None,
            &executed,
            &bare_future,
        );
    }

    let mut table = String::from(
        "| row | baseline | ours (ns/call) | baseline (ns/call) | ratio | goal |\n|---|---|---|---|---|---|\n",
    );
    for (name, baseline_name, ours, baseline, goal) in &run.rows {
        let goal = goal.map_or("-".to_owned(), |goal| {
            let met = if baseline / ours >= goal {
                "met"
            } else {
                "MISSED"
            };
            format!("≥ {goal} ({met})")
        });
        let ratio = baseline / ours;
        writeln!(
            table,
            "| {name} | {baseline_name} | {ours:.2} | {baseline:.2} | {ratio:.2} | {goal} |"
        )
        .expect("writing to a String cannot fail");
    }
    print!("{table}");
}
