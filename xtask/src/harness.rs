//! The measuring half of `cargo xtask bench`: every benchmark row measures ours and its
//! baseline interleaved in rounds and reports the median ratio with its spread.
//!
//! These machines are noisy (two shared cores, a virtual clock), so a single timing of ours
//! followed later by a single timing of the baseline says little: anything that slows the
//! machine for a second lands on one side only. A row here is instead a number of *rounds*;
//! each round times one batch of ours and one batch of the baseline back to back (the order
//! alternates from round to round, so a steady drift favours neither), and yields one ratio
//! `baseline / ours`. The row reports the median of those ratios, with the smallest and the
//! largest as its spread, and the medians of the two sides for scale.
//!
//! Nanosecond rows ([`Harness::nanos`]) also guard against the usual traps:
//!
//! - **batch size**: calibrated per row (doubling until the faster side's batch takes a few
//!   milliseconds), so the resolution of the clock and the cost of reading it vanish;
//! - **warm-up**: the calibration runs both sides, then one more full batch of each runs
//!   untimed, before the first round;
//! - **`black_box`**: the iteration index passed to a body and the value it returns both go
//!   through [`std::hint::black_box`], so neither the input nor the result can be folded;
//! - **pinned threads**: each measuring thread is pinned to its own core where the OS allows
//!   (the output says when it does not), so a thread does not migrate between rounds;
//! - **the clock**: a one-thread row times its batches in the thread's own CPU time
//!   (`CLOCK_THREAD_CPUTIME_ID`), so a moment the thread spent descheduled by another
//!   process is not charged to whichever side happened to be running. A row of several
//!   threads times wall-clock time instead: a thread parked on a contended lock costs its
//!   callers real time, and CPU time would hide exactly that. Where the OS has no thread
//!   CPU clock, every row uses wall-clock time (the row's `timer` says which).
//!
//! # Example
//!
//! ```no_run
//! use xtask::harness::{Harness, Row};
//!
//! let mut harness = Harness::from_env("breaker");
//! let bare = |i: u64| i.wrapping_mul(31);
//! let guarded = |i: u64| Some(i.wrapping_mul(31));
//! for threads in [1, 2] {
//!     harness.nanos(
//!         Row::new("closed success", "bare call").threads(threads).goal(0.625),
//!         guarded,
//!         bare,
//!     );
//! }
//! harness.finish();
//! ```
//!
//! # Environment (set by `cargo xtask bench`)
//!
//! - `BENCH_REPORT`: a path; each row is appended to it as one JSON object per line, with
//!   the fields listed on [`Measured`].
//! - `BENCH_QUICK=1`: fewer rounds and shorter batches; numbers are then a smoke test.
//! - `BENCH_ROUNDS=N`: this many rounds for every row, overriding the defaults.
//! - `BENCH_ONLY=text`: measure only the rows whose `crate bench baseline` contains `text`
//!   (ignoring case); [`Harness::wants`] lets a benchmark skip the set-up of such rows.

use std::{
    fmt::Write as _,
    fs::{File, OpenOptions},
    hint::black_box,
    io::Write as _,
    sync::{Barrier, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// The rounds a nanosecond row runs unless `BENCH_ROUNDS` says otherwise.
const NANOS_ROUNDS: usize = 41;
/// The rounds a [`Harness::compare`] row runs unless the row or `BENCH_ROUNDS` says otherwise.
const COMPARE_ROUNDS: usize = 9;
/// Under `BENCH_QUICK`, every row runs this many rounds at most.
const QUICK_ROUNDS: usize = 5;

/// What a row measures and against what. Built with [`Row::new`] and its builder methods.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    bench: String,
    baseline: String,
    unit: String,
    goal: Option<f64>,
    /// `None`: one thread, and the name says nothing about threads.
    threads: Option<usize>,
    rounds: Option<usize>,
    warm_up: bool,
}

impl Row {
    /// A row named `bench`, compared against `baseline` (name the peer crate and its
    /// version), in nanoseconds per call, on one thread, with no goal.
    ///
    /// ```
    /// let row = xtask::harness::Row::new("closed success", "failsafe 1.3").threads(2);
    /// assert_eq!(row.name(), "closed success, 2 threads");
    /// ```
    pub fn new(bench: impl Into<String>, baseline: impl Into<String>) -> Row {
        Row {
            bench: bench.into(),
            baseline: baseline.into(),
            unit: "ns/call".into(),
            goal: None,
            threads: None,
            rounds: None,
            warm_up: true,
        }
    }

    /// The unit of both sides' values (lower is better), e.g. `"s"` or `"MiB"`.
    #[must_use]
    pub fn unit(mut self, unit: impl Into<String>) -> Row {
        self.unit = unit.into();
        self
    }

    /// The smallest acceptable median ratio `baseline / ours`, from the crate's issue.
    #[must_use]
    pub fn goal(mut self, goal: f64) -> Row {
        self.goal = Some(goal);
        self
    }

    /// Runs a nanosecond row on this many threads at once, all calling the same shared
    /// object (the contention is what is measured); the name gains ", N thread(s)".
    ///
    /// A one-thread row runs on the calling thread, so thread-local state the benchmark set
    /// up (a default `tracing` subscriber, a `sync_scope`) is what the row measures under;
    /// a row of more threads runs on fresh threads, which see none of it.
    #[must_use]
    pub fn threads(mut self, threads: usize) -> Row {
        self.threads = Some(threads.max(1));
        self
    }

    /// The rounds this row runs by default (`BENCH_ROUNDS` still overrides it): for rows
    /// whose one measurement takes seconds.
    #[must_use]
    pub fn rounds(mut self, rounds: usize) -> Row {
        self.rounds = Some(rounds.max(1));
        self
    }

    /// Skips the untimed first call of each side in [`Harness::compare`]: for rows that
    /// already start from a prepared state, or whose one call takes many seconds.
    #[must_use]
    pub fn without_warm_up(mut self) -> Row {
        self.warm_up = false;
        self
    }

    /// The row's name as reported: the bench, with the thread count when it ran threads.
    pub fn name(&self) -> String {
        match self.threads {
            Some(threads) => {
                let plural = if threads == 1 { "" } else { "s" };
                format!("{}, {threads} thread{plural}", self.bench)
            }
            None => self.bench.clone(),
        }
    }
}

/// One measured row: what goes into the report, one JSON object per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// `crate`: the crate the row measures.
    pub krate: String,
    /// `bench`: the row's name ([`Row::name`]).
    pub bench: String,
    /// `baseline`: what ours is compared against.
    pub baseline: String,
    /// `unit`: of `ours` and `baseline_value`; lower is better.
    pub unit: String,
    /// `ours`: the median of our side's per-round values.
    pub ours: f64,
    /// `baseline_value`: the median of the baseline's per-round values.
    pub baseline_value: f64,
    /// `ratio`: the median of the per-round ratios `baseline / ours` (above 1: ours is faster).
    pub ratio: f64,
    /// `min_ratio`: the smallest per-round ratio.
    pub min_ratio: f64,
    /// `max_ratio`: the largest per-round ratio.
    pub max_ratio: f64,
    /// `rounds`: how many rounds the row ran.
    pub rounds: usize,
    /// `goal`: the smallest acceptable median ratio, if the row has one.
    pub goal: Option<f64>,
    /// `pinned`: whether the measuring threads were pinned to cores.
    pub pinned: bool,
    /// `timer`: `"thread-cpu"` or `"wall"`, the clock the row's batches were timed with.
    pub timer: &'static str,
}

impl Measured {
    /// The row as one JSON object (the protocol between a benchmark and `cargo xtask bench`).
    pub fn to_json(&self) -> Value {
        let mut object = json!({
            "crate": self.krate,
            "bench": self.bench,
            "baseline": self.baseline,
            "unit": self.unit,
            "ours": self.ours,
            "baseline_value": self.baseline_value,
            "ratio": self.ratio,
            "min_ratio": self.min_ratio,
            "max_ratio": self.max_ratio,
            "rounds": self.rounds,
            "pinned": self.pinned,
            "timer": self.timer,
        });
        if let Some(goal) = self.goal {
            object["goal"] = json!(goal);
        }
        object
    }
}

/// Runs a crate's benchmark rows and reports them; see the [module docs](self).
pub struct Harness {
    krate: String,
    quick: bool,
    rounds: Option<usize>,
    only: Option<String>,
    report: Option<Mutex<File>>,
    cores: Option<Vec<core_affinity::CoreId>>,
    /// Whether this OS has a per-thread CPU clock (one-thread rows then use it).
    thread_clock: bool,
    measured: Vec<Measured>,
}

/// The clock a batch is timed with; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    ThreadCpu,
    Wall,
}

impl Timer {
    fn name(self) -> &'static str {
        match self {
            Timer::ThreadCpu => "thread-cpu",
            Timer::Wall => "wall",
        }
    }
}

impl Harness {
    /// A harness for `krate`'s rows, configured from the environment `cargo xtask bench`
    /// sets (see the [module docs](self)).
    ///
    /// # Panics
    ///
    /// If `BENCH_REPORT` names a file that cannot be opened for appending, or
    /// `BENCH_ROUNDS` is not a positive number: a benchmark is a maintainer's tool, and a
    /// run that cannot report must not look like one that measured nothing.
    pub fn from_env(krate: &str) -> Harness {
        let report = std::env::var_os("BENCH_REPORT").map(|path| {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|error| {
                    panic!("BENCH_REPORT={} cannot be opened: {error}", path.display())
                });
            Mutex::new(file)
        });
        let rounds = std::env::var("BENCH_ROUNDS").ok().map(|text| {
            text.parse::<usize>()
                .ok()
                .filter(|&rounds| rounds > 0)
                .unwrap_or_else(|| panic!("BENCH_ROUNDS={text} is not a positive number"))
        });
        let only = std::env::var("BENCH_ONLY")
            .ok()
            .filter(|text| !text.is_empty())
            .map(|text| text.to_lowercase());
        let quick = std::env::var_os("BENCH_QUICK").is_some_and(|value| value != "0");
        let cores = core_affinity::get_core_ids().filter(|cores| !cores.is_empty());
        let thread_clock = cpu_time::ThreadTime::try_now().is_ok();
        let harness = Harness {
            krate: krate.to_string(),
            quick,
            rounds,
            only,
            report,
            cores,
            thread_clock,
            measured: Vec::new(),
        };
        println!(
            "{krate}: {}; one-thread rows timed in {}{}{}",
            match &harness.cores {
                Some(cores) => format!(
                    "measuring threads pinned, one per core ({} cores)",
                    cores.len()
                ),
                None => "measuring threads NOT pinned (the OS reports no core ids)".to_string(),
            },
            if thread_clock {
                "thread CPU time"
            } else {
                "wall-clock time (no thread CPU clock here)"
            },
            if quick {
                "; BENCH_QUICK: smoke-test lengths"
            } else {
                ""
            },
            harness.only.as_ref().map_or(String::new(), |only| format!(
                "; only rows matching `{only}`"
            )),
        );
        harness
    }

    /// Whether `BENCH_QUICK` asked for a short run (a benchmark may also shrink its data).
    pub fn quick(&self) -> bool {
        self.quick
    }

    /// Whether `row` will be measured (it matches `BENCH_ONLY`, or there is no filter):
    /// lets a benchmark skip expensive set-up for rows that are filtered out.
    pub fn wants(&self, row: &Row) -> bool {
        match &self.only {
            None => true,
            Some(only) => format!("{} {} {}", self.krate, row.name(), row.baseline)
                .to_lowercase()
                .contains(only.as_str()),
        }
    }

    /// Measures a nanosecond row: `ours` and `baseline` are each called with a
    /// `black_box`ed iteration index, in calibrated batches, interleaved in rounds, on
    /// `row`'s number of threads (all calling the same closures at once). Returns the
    /// measured row, or `None` when `BENCH_ONLY` filtered it out.
    ///
    /// # Panics
    ///
    /// If a body panics (on a measuring thread, the panic is propagated).
    pub fn nanos<A, B, RA, RB>(&mut self, row: Row, ours: A, baseline: B) -> Option<&Measured>
    where
        A: Fn(u64) -> RA + Sync,
        B: Fn(u64) -> RB + Sync,
    {
        if !self.wants(&row) {
            return None;
        }
        let target = if self.quick {
            Duration::from_micros(500)
        } else {
            Duration::from_millis(4)
        };
        let rounds = self.rounds_for(&row, NANOS_ROUNDS);
        let threads = row.threads.unwrap_or(1);
        let core = |thread: usize| self.cores.as_ref().map(|cores| cores[thread % cores.len()]);
        let timer = if threads == 1 && self.thread_clock {
            Timer::ThreadCpu
        } else {
            Timer::Wall
        };
        let samples = if threads == 1 {
            // On the calling thread: see `Row::threads`.
            if let Some(core) = core(0) {
                core_affinity::set_for_current(core);
            }
            let batch = calibrate(&ours, &baseline, target, timer);
            measure_rounds(&ours, &baseline, batch, rounds, timer, &|| {})
        } else {
            let batch = Mutex::new(0_u64);
            let barrier = Barrier::new(threads);
            // Per round: (ours, baseline) nanoseconds per call, summed over the threads.
            let totals = Mutex::new(vec![(0.0_f64, 0.0_f64); rounds]);
            std::thread::scope(|scope| {
                for thread in 0..threads {
                    let (ours, baseline, barrier, batch, totals) =
                        (&ours, &baseline, &barrier, &batch, &totals);
                    let core = core(thread);
                    scope.spawn(move || {
                        if let Some(core) = core {
                            core_affinity::set_for_current(core);
                        }
                        if thread == 0 {
                            *batch.lock().unwrap() = calibrate(ours, baseline, target, timer);
                        }
                        barrier.wait();
                        let batch = *batch.lock().unwrap();
                        // Every thread starts each batch together with the others.
                        let mine = measure_rounds(ours, baseline, batch, rounds, timer, &|| {
                            barrier.wait();
                        });
                        let mut totals = totals.lock().unwrap();
                        for (total, (ours_ns, baseline_ns)) in totals.iter_mut().zip(mine) {
                            total.0 += ours_ns;
                            total.1 += baseline_ns;
                        }
                    });
                }
            });
            #[allow(clippy::cast_precision_loss, reason = "a thread count")]
            let threads = threads as f64;
            totals
                .into_inner()
                .unwrap()
                .into_iter()
                .map(|(ours, baseline)| (ours / threads, baseline / threads))
                .collect()
        };
        Some(self.record(row, &samples, timer))
    }

    /// Measures a row whose one measurement the benchmark takes itself (seconds of a save,
    /// a peak in MiB, ...): each call of `ours` or `baseline` returns one value in `row`'s
    /// unit. After one untimed call of each (see [`Row::without_warm_up`]), the two are
    /// called alternately for the row's rounds. Returns `None` when `BENCH_ONLY` filtered
    /// the row out.
    pub fn compare<A, B>(&mut self, row: Row, mut ours: A, mut baseline: B) -> Option<&Measured>
    where
        A: FnMut() -> f64,
        B: FnMut() -> f64,
    {
        if !self.wants(&row) {
            return None;
        }
        let rounds = self.rounds_for(&row, COMPARE_ROUNDS);
        if row.warm_up {
            ours();
            baseline();
        }
        let mut samples = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let sample = if round % 2 == 0 {
                let first = ours();
                (first, baseline())
            } else {
                let first = baseline();
                (ours(), first)
            };
            samples.push(sample);
        }
        Some(self.record(row, &samples, Timer::Wall))
    }

    /// Prints the crate's rows as a table. Call it once, after the last row.
    pub fn finish(self) {
        let mut table = String::new();
        let _ = writeln!(
            table,
            "\n{:<58} {:>10} {:>10} {:>7} {:>14} {:>6}",
            "row (vs baseline)", "ours", "baseline", "ratio", "spread", "goal"
        );
        for row in &self.measured {
            let _ = writeln!(
                table,
                "{:<58} {:>10} {:>10} {:>6.2}× {:>6.2}–{:<6.2} {:>6}",
                format!("{} (vs {})", row.bench, row.baseline),
                format!("{:.4}", row.ours),
                format!("{:.4}", row.baseline_value),
                row.ratio,
                row.min_ratio,
                row.max_ratio,
                row.goal.map_or(String::new(), |goal| format!("{goal:.3}")),
            );
        }
        print!("{table}");
    }

    fn rounds_for(&self, row: &Row, default: usize) -> usize {
        let rounds = self.rounds.or(row.rounds).unwrap_or(default);
        if self.quick && self.rounds.is_none() {
            rounds.min(QUICK_ROUNDS)
        } else {
            rounds
        }
    }

    /// Turns per-round `(ours, baseline)` values into the reported row.
    fn record(&mut self, row: Row, samples: &[(f64, f64)], timer: Timer) -> &Measured {
        let ratios: Vec<f64> = samples
            .iter()
            .map(|&(ours, baseline)| baseline / ours)
            .collect();
        let ours: Vec<f64> = samples.iter().map(|sample| sample.0).collect();
        let baseline: Vec<f64> = samples.iter().map(|sample| sample.1).collect();
        let measured = Measured {
            krate: self.krate.clone(),
            bench: row.name(),
            baseline: row.baseline,
            unit: row.unit,
            ours: median(&ours),
            baseline_value: median(&baseline),
            ratio: median(&ratios),
            min_ratio: ratios.iter().copied().fold(f64::INFINITY, f64::min),
            max_ratio: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            rounds: samples.len(),
            goal: row.goal,
            pinned: self.cores.is_some(),
            timer: timer.name(),
        };
        println!(
            "  {} vs {}: ratio {:.2}× ({:.2}–{:.2}, {} rounds)",
            measured.bench,
            measured.baseline,
            measured.ratio,
            measured.min_ratio,
            measured.max_ratio,
            measured.rounds
        );
        if let Some(report) = &self.report {
            let mut file = report.lock().unwrap();
            writeln!(file, "{}", measured.to_json()).expect("BENCH_REPORT is writable");
        }
        self.measured.push(measured);
        self.measured.last().expect("just pushed")
    }
}

/// Times `work` alone, dropping what it returns only after the clock stopped (freeing a
/// result is the caller's business, not part of what is measured). Seconds.
pub fn seconds<T>(work: impl FnOnce() -> T) -> f64 {
    let started = Instant::now();
    let result = black_box(work());
    let elapsed = started.elapsed().as_secs_f64();
    drop(result);
    elapsed
}

/// The median of `values` (the mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => sorted[len / 2],
        len => f64::midpoint(sorted[len / 2 - 1], sorted[len / 2]),
    }
}

/// The smallest power-of-two batch for which the faster side takes at least `target`.
fn calibrate<A, B, RA, RB>(ours: &A, baseline: &B, target: Duration, timer: Timer) -> u64
where
    A: Fn(u64) -> RA,
    B: Fn(u64) -> RB,
{
    let mut batch = 1_u64;
    loop {
        let faster = time_batch(ours, batch, 0, timer).min(time_batch(baseline, batch, 0, timer));
        if faster >= target || batch >= 1 << 40 {
            return batch;
        }
        // Jump close to the target once a batch is long enough to time, then settle by
        // doubling: fewer calibration steps for nanosecond bodies.
        let factor = if faster > Duration::from_micros(50) {
            (target.as_secs_f64() / faster.as_secs_f64())
                .ceil()
                .max(2.0)
        } else {
            2.0
        };
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a small positive factor"
        )]
        let factor = factor.min(1024.0) as u64;
        batch = batch.saturating_mul(factor);
    }
}

/// A warm-up batch of each side, then `rounds` rounds of one timed batch of each (the
/// order alternating), calling `before_batch` before every timed batch; nanoseconds per
/// call of each side, per round.
fn measure_rounds<A, B, RA, RB>(
    ours: &A,
    baseline: &B,
    batch: u64,
    rounds: usize,
    timer: Timer,
    before_batch: &dyn Fn(),
) -> Vec<(f64, f64)>
where
    A: Fn(u64) -> RA,
    B: Fn(u64) -> RB,
{
    time_batch(ours, batch, 0, timer);
    time_batch(baseline, batch, 0, timer);
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let offset = round as u64 * batch;
        let one_batch = |side: bool| {
            before_batch();
            let elapsed = if side {
                time_batch(ours, batch, offset, timer)
            } else {
                time_batch(baseline, batch, offset, timer)
            };
            per_call(elapsed, batch)
        };
        let sample = if round % 2 == 0 {
            let first = one_batch(true);
            (first, one_batch(false))
        } else {
            let first = one_batch(false);
            (one_batch(true), first)
        };
        samples.push(sample);
    }
    samples
}

/// One timed batch: `batch` calls of `body` with `black_box`ed indices from `offset`.
///
/// Not inlined, so every row's loop is the same shape of code around its body.
#[inline(never)]
fn time_batch<F, R>(body: &F, batch: u64, offset: u64, timer: Timer) -> Duration
where
    F: Fn(u64) -> R,
{
    match timer {
        Timer::ThreadCpu => {
            // `from_env` checked that this clock exists, so `now` cannot fail here.
            let started = cpu_time::ThreadTime::now();
            for index in offset..offset + batch {
                black_box(body(black_box(index)));
            }
            started.elapsed()
        }
        Timer::Wall => {
            let started = Instant::now();
            for index in offset..offset + batch {
                black_box(body(black_box(index)));
            }
            started.elapsed()
        }
    }
}

fn per_call(elapsed: Duration, batch: u64) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "batches fit f64's 53 bits")]
    let batch = batch as f64;
    elapsed.as_secs_f64() * 1e9 / batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < f64::EPSILON);
        assert!((median(&[4.0, 1.0, 3.0, 2.0]) - 2.5).abs() < f64::EPSILON);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn row_names_carry_the_thread_count_when_one_was_set() {
        assert_eq!(Row::new("a", "b").name(), "a");
        assert_eq!(Row::new("a", "b").threads(1).name(), "a, 1 thread");
        assert_eq!(Row::new("a", "b").threads(2).name(), "a, 2 threads");
    }

    fn harness(only: Option<&str>) -> Harness {
        Harness {
            krate: "demo".into(),
            quick: true,
            rounds: Some(5),
            only: only.map(str::to_lowercase),
            report: None,
            cores: None,
            thread_clock: cpu_time::ThreadTime::try_now().is_ok(),
            measured: Vec::new(),
        }
    }

    #[test]
    fn compare_reports_the_median_ratio_and_its_spread() {
        let mut harness = harness(None);
        let mut ours_values = [1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0].into_iter();
        let measured = harness
            .compare(
                Row::new("r", "b").unit("s").goal(3.0),
                || ours_values.next().unwrap(),
                || 4.0,
            )
            .unwrap()
            .clone();
        // The warm-up took the first value of each; five rounds remain: 1, 2, 1, 1, 1.
        assert_eq!(measured.rounds, 5);
        assert!((measured.ratio - 4.0).abs() < 1e-9, "{measured:?}");
        assert!((measured.min_ratio - 2.0).abs() < 1e-9, "{measured:?}");
        assert!((measured.max_ratio - 4.0).abs() < 1e-9, "{measured:?}");
        let json = measured.to_json();
        for key in [
            "crate",
            "bench",
            "baseline",
            "unit",
            "ours",
            "baseline_value",
            "ratio",
            "min_ratio",
            "max_ratio",
            "rounds",
            "goal",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
    }

    #[test]
    fn only_filters_rows_by_crate_or_name() {
        let mut harness = harness(Some("Rejection"));
        assert!(harness.wants(&Row::new("rejection while open", "failsafe 1.3")));
        assert!(!harness.wants(&Row::new("closed success", "failsafe 1.3")));
        assert!(
            harness
                .compare(Row::new("closed", "x").unit("s"), || 1.0, || 1.0)
                .is_none()
        );
        let by_crate = self::harness(Some("demo"));
        assert!(by_crate.wants(&Row::new("anything", "x")));
    }

    #[test]
    fn a_one_thread_row_runs_on_the_calling_thread() {
        // A benchmark's thread-local set-up (a default subscriber, a task-local scope) must
        // be what a one-thread row measures under, not a fresh thread's empty state.
        thread_local! {
            static CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        }
        let mut harness = harness(None);
        let count = |_: u64| CALLS.with(|calls| calls.set(calls.get() + 1));
        harness.nanos(Row::new("local", "local"), count, count);
        assert!(
            CALLS.with(std::cell::Cell::get) > 0,
            "the row ran elsewhere"
        );
    }

    #[test]
    fn nanos_measures_both_sides_on_every_thread() {
        let mut harness = harness(None);
        let measured = harness
            .nanos(
                Row::new("sum", "sum").threads(2),
                |i| i.wrapping_add(1),
                |i| i.wrapping_add(1),
            )
            .unwrap();
        assert_eq!(measured.rounds, 5);
        assert!(
            measured.ours > 0.0 && measured.baseline_value > 0.0,
            "{measured:?}"
        );
        assert!(measured.min_ratio <= measured.ratio && measured.ratio <= measured.max_ratio);
    }
}
