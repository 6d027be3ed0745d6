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
//! **How many rounds**: a row runs its rounds (41 for nanosecond rows, 9 or the row's own
//! for [`Harness::compare`]), then keeps adding rounds while its median has not settled, up
//! to four times as many: settled means the median's distribution-free 95% confidence
//! interval ([`median_interval`]: the order statistics `n/2 ∓ 0.98·√n`) lies within 4% of
//! it on either side. A row whose rounds agree stops early; a noisy one samples the machine
//! for longer, and its median moves less from run to run. A `compare` row adds rounds only
//! within a 45-second budget (its rounds take seconds), a row of several threads within 60
//! seconds (a contended baseline's batch can take a second). `BENCH_ROUNDS` fixes the count.
//!
//! Nanosecond rows ([`Harness::nanos`]) also guard against the usual traps:
//!
//! - **batch size**: calibrated per row and side (doubling until the side's batch takes
//!   1 ms on one thread, 4 ms on several, the latter calibrated on one thread), so the
//!   resolution of the clock and the cost of reading it vanish, and a side a hundred times
//!   slower than the other does not make each of its batches a hundred times as long;
//! - **fastest of sixteen** (one-thread rows): a round times sixteen batches of each side,
//!   alternating, and keeps each side's fastest; what disturbs a batch on a shared machine
//!   (a build on the sibling hyperthread, an interrupt, a slowed spell of a few
//!   milliseconds that the canary does not see) only ever adds time, comes and goes, and
//!   need not hit both sides alike (with four, such spells took whole rounds on one host,
//!   and one row's median flipped between 2.1× and 2.95× from run to run);
//! - **a canary**: a fixed loop of simple instructions, timed for 0.2 ms before and after
//!   every round of a one-thread row (and by each thread before every batch of a row of
//!   several threads, see below), whose usual (median) time during the row is the core's
//!   usual speed. On these virtual machines the other vCPU (or another tenant) can run on the
//!   same physical core's other hyperthread for milliseconds to minutes, and that slows a
//!   tight loop of simple instructions (ours, the bare call) by up to half while a body
//!   that waits on a locked instruction or a clock read hardly notices: a ratio measured
//!   then is not the one measured at the core's usual speed. A round around which the
//!   canary ran more than 8% slower than its median is dropped (at most as many as the
//!   row may run rounds; the output counts them), so medians are taken at the core's
//!   usual speed in every run; in a row of several threads, a thread's slowed canary makes
//!   the batch disturbed. (Against its fastest instead, a host whose other hyperthread is
//!   busy nearly all the time had nearly every round "slowed", see `Canary::record`.) The
//!   row reports the canary's usual time (`canary_ns`), so that `cargo xtask bench` can
//!   measure again a row whose core was slowed for the whole of it.
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
//!   CPU clock, every row uses wall-clock time (the row's `timer` says which);
//! - **disturbed batches** (rows of several threads): the threads start every batch together
//!   at a spinning barrier, and a batch is timed again (up to 8 times) when a thread
//!   was preempted during it and waited, runnable, for a CPU for more than 2% of it
//!   (Linux's `/proc/thread-self/status` and `schedstat`; sleeping on a lock, and waking
//!   from it, do not count) or the threads started more than 2% of it apart. In such a batch the other threads ran uncontended
//!   for a while, so it measured a different, cheaper thing than its counterpart on the
//!   other side. A round whose side stayed disturbed 8 times running is dropped (at most
//!   twice the row's largest number of rounds are tried; if none was undisturbed, the least
//!   disturbed batches are kept and the output says so); the output counts both.
//!
//! - **placement** (rows of several threads, threads pinned): before and after every round,
//!   threads 0 and 1 hand a cache line back and forth (`Shared::placement`: the fastest
//!   of 8 chunks of 32 round trips). Its round trip says where the host has put the two
//!   vCPUs: about 70 ns when they share a cache, about 480 ns when they do not, and the host
//!   moves them every few seconds to minutes, whatever the guest does. What a row of several
//!   threads measures is what crosses between the cores, so its ratio follows: measured in
//!   one minute, seatbelt's 45× at 72 ns and 100× at 474 ns, tower-resilience's 170× and
//!   650×, failsafe's rejection 4.0× and 7.0×; within one placement, rounds agree. A round
//!   across which the placement changed (the two readings more than [`SAME_PLACEMENT`]
//!   apart) is dropped; the row keeps the rounds at its usual placement (within
//!   [`SAME_PLACEMENT`] of the median reading), reports that round trip (`placement_ns`) and
//!   how many rounds it left out, and `cargo xtask bench --twice` compares rows only at the
//!   same placement.
//! - **wake-up latency** (rows of several threads): for the row, the harness asks the
//!   kernel for zero wake-up latency (`/dev/cpu_dma_latency`), so an
//!   idle CPU polls instead of halting and a thread parked on a contended lock is woken
//!   alike in every run (the output says when the OS refuses).
//!
//! A [`Harness::compare`] row writes the system's dirty pages back (`sync`) before every
//! timed call, so that one side's pending writes (a save without `fsync` leaves hundreds of
//! megabytes) are not flushed during, and charged to, the other side's call. It keeps
//! every round: a canary read around such a round (a save, a load of HTTP requests on both
//! cores) ran slowed after most of them, by the calls' own aftermath (writeback, a runtime
//! winding down, a clock lowered by a second of load on both cores) more than by another
//! tenant, and dropping those rounds chose which rounds count. Measured on one machine,
//! three runs each of the loopback row: with the canary 1.13×, 1.00× and 0.93× (11 to 73
//! rounds dropped), without 0.97×, 1.03× and 0.96×. A burst of another tenant's work lands
//! on a few of these long rounds, alternating in order, and the median ignores them.
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
//!   (ignoring case; each line of `text` is an alternative); [`Harness::wants`] lets a
//!   benchmark skip the set-up of such rows.

use std::{
    fmt::Write as _,
    fs::{File, OpenOptions},
    hint::black_box,
    io::{Read as _, Seek as _, Write as _},
    sync::{
        Barrier, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// The rounds a nanosecond row runs unless `BENCH_ROUNDS` says otherwise.
const NANOS_ROUNDS: usize = 41;
/// The rounds a [`Harness::compare`] row runs unless the row or `BENCH_ROUNDS` says otherwise.
const COMPARE_ROUNDS: usize = 9;
/// Under `BENCH_QUICK`, every row runs this many rounds at most.
const QUICK_ROUNDS: usize = 5;
/// A row whose median has not settled runs more rounds, up to this many times its own.
const MORE_ROUNDS: usize = 4;
/// A median has settled when its 95% confidence interval lies within this share of it.
const SETTLED: f64 = 0.04;
/// A [`Harness::compare`] row adds rounds beyond its own only while it has run less than this.
const COMPARE_BUDGET: Duration = Duration::from_secs(45);
/// Each side's batch in a one-thread row takes at least this long.
const SOLO_TARGET: Duration = Duration::from_millis(1);
/// A one-thread row's round times this many batches of each side and keeps each side's
/// fastest (see [`solo_rounds`]): 16 ms per side. With four (4 ms), one host's slowed
/// spells, which the canary did not see and which lasted longer than a round of four,
/// took whole rounds: `rejection while open, 1 thread vs failsafe` read 2.07–2.92× in six
/// processes back to back (ours 12.2–18.8 ns), and 2.93–2.97× with sixteen (ours
/// 11.4–11.9 ns); two full runs had given 2.95× and 2.08×.
const SOLO_REPEATS: usize = 16;
/// A canary batch (see [`Canary`]) takes about this long.
const CANARY_TARGET: Duration = Duration::from_micros(100);
/// A round of a one-thread row is slowed when the canary timed around it ran more than this
/// many times slower than its median so far.
const CANARY_SLOWED: f64 = 1.08;
/// Each side's batch in a row of several threads takes at least this long when calibrated
/// on one thread (contended, it takes longer). 1 ms batches are disturbed less often, but
/// measured the contended peers less steadily from run to run than 4 ms ones (a batch spans
/// fewer lock hand-offs).
const SHARED_TARGET: Duration = Duration::from_millis(4);
/// A row of several threads adds rounds beyond its own only while it has run less than this
/// (a contended baseline's batches, and their retries when disturbed, can take a second
/// each).
const SHARED_BUDGET: Duration = Duration::from_secs(60);
/// A batch of several threads is disturbed when its threads' starts differ, or one of them
/// waited for a CPU, by more than this share of the batch.
const DISTURBED: f64 = 0.02;
/// How many times a disturbed batch of several threads is timed before the least disturbed
/// attempt is kept.
const MAX_ATTEMPTS: usize = 8;
/// A [`Shared::placement`] probe times this many chunks of [`PROBE_ROUND_TRIPS`] round
/// trips of a cache line between two threads and keeps the fastest chunk.
const PROBE_CHUNKS: u64 = 8;
/// Round trips of a cache line in one chunk of a [`Shared::placement`] probe.
const PROBE_ROUND_TRIPS: u64 = 32;
/// Two placement readings are the same placement when neither exceeds the other by more
/// than this factor (measured: about 70 ns between cores that share a cache, about 480 ns
/// between cores that do not, on the same virtual machine minutes apart).
pub const SAME_PLACEMENT: f64 = 1.5;

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

    /// The rounds this row runs at least (more while its median has not settled, see the
    /// [module docs](self); `BENCH_ROUNDS` still overrides it): for rows whose one
    /// measurement takes seconds.
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
    /// `placement_ns` and `other_placement_rounds` (rows of several threads, threads
    /// pinned): where the host had put the cores when the row's rounds ran.
    pub placement: Option<Placement>,
    /// `canary_ns` (nanosecond rows): the canary's usual time per call during the row,
    /// the slowest thread's in a row of several threads: how fast the core ran. A fixed
    /// loop, so rows, and runs, can be compared by it: `cargo xtask bench` measures again a
    /// row whose canary ran more than 8% slower than the run's fastest row's.
    pub canary_ns: Option<f64>,
}

/// What a row records of the machine's state while it ran (see [`Measured`]).
#[derive(Debug, Clone, Copy, Default)]
struct Conditions {
    placement: Option<Placement>,
    canary_ns: Option<f64>,
}

/// Where the host had placed the cores of a row of several threads (see the
/// [module docs](self)): the row's rounds are those taken at its usual placement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// `placement_ns`: the median round trip of a cache line between threads 0 and 1,
    /// over the rounds kept.
    pub round_trip_ns: f64,
    /// `other_placement_rounds`: rounds measured at another placement, left out.
    pub elsewhere: usize,
}

/// The rounds taken at the row's usual placement (within [`SAME_PLACEMENT`] of the
/// median probe), with that placement; all rounds and `None` when no probe was read.
fn at_usual_placement(
    samples: &[(f64, f64)],
    placements: &[f64],
) -> (Vec<(f64, f64)>, Option<Placement>) {
    let mut read: Vec<f64> = placements
        .iter()
        .copied()
        .filter(|p| p.is_finite())
        .collect();
    if read.is_empty() || placements.len() != samples.len() {
        return (samples.to_vec(), None);
    }
    read.sort_by(f64::total_cmp);
    // A reading itself (the lower middle one), not an average between two placements.
    let usual = read[(read.len() - 1) / 2];
    let (kept, kept_placements): (Vec<(f64, f64)>, Vec<f64>) = samples
        .iter()
        .zip(placements)
        .filter(|&(_, &placement)| same_placement(placement, usual))
        .map(|(&sample, &placement)| (sample, placement))
        .unzip();
    let placement = Placement {
        round_trip_ns: median(&kept_placements),
        elsewhere: samples.len() - kept.len(),
    };
    (kept, Some(placement))
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
        if let Some(canary) = self.canary_ns {
            object["canary_ns"] = json!(canary);
        }
        if let Some(placement) = self.placement {
            object["placement_ns"] = json!(placement.round_trip_ns);
            object["other_placement_rounds"] = json!(placement.elsewhere);
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
    /// Whether the guards against a busy machine are on: [`Harness::compare`] writes dirty
    /// pages back before each call, and rounds around which the [`Canary`] ran slowed are
    /// dropped. Off in the unit tests, which must not depend on the machine.
    guards: bool,
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
            guards: true,
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
            Some(only) => {
                let text = format!("{} {} {}", self.krate, row.name(), row.baseline).to_lowercase();
                // Lines are alternatives (`cargo xtask bench --twice` re-measures several
                // rows by their whole names).
                only.lines().any(|only| text.contains(only))
            }
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
        let threads = row.threads.unwrap_or(1);
        let budget = (threads > 1).then_some(SHARED_BUDGET);
        let plan = self.plan_for(&row, NANOS_ROUNDS, budget);
        let (samples, timer, note, placement, canary) = if threads == 1 {
            let timer = if self.thread_clock {
                Timer::ThreadCpu
            } else {
                Timer::Wall
            };
            // On the calling thread: see `Row::threads`.
            if let Some(core) = self.core(0) {
                core_affinity::set_for_current(core);
            }
            let target = if self.quick {
                Duration::from_micros(125)
            } else {
                SOLO_TARGET
            };
            let batches = Batches::calibrate(&ours, &baseline, target, timer);
            let slowed = self.slowed(plan);
            // A canary of the row's own: its median is the core's usual speed during this row.
            // (One kept for the whole process found nearly every round of later rows more
            // than 8% over the fastest it had seen once, on an idle machine: the core's
            // full speed drifts over minutes, and the gate is for what comes and goes.)
            let mut canary = Canary::new(timer);
            let (samples, slowed) =
                solo_rounds(&ours, &baseline, batches, plan, &mut canary, slowed);
            (samples, timer, slowed.note(), None, Some(canary.usual()))
        } else {
            // Held for the row, released when it ends (see `WakeLatency`).
            let wake = if self.guards {
                WakeLatency::hold()
            } else {
                WakeLatency::NotAsked
            };
            let (samples, placements, disturbed, canary) =
                self.shared_rounds(threads, &ours, &baseline, plan);
            let (samples, placement) = at_usual_placement(&samples, &placements);
            (
                samples,
                Timer::Wall,
                format!("{}{}", disturbed.note(), wake.note()),
                placement,
                canary,
            )
        };
        let conditions = Conditions {
            placement,
            canary_ns: canary,
        };
        Some(self.record(row, &samples, timer, &note, conditions))
    }

    /// A row of several threads: each thread pinned to its own core, calling both sides in
    /// batches that start together; per round, each side's time per call averaged over the
    /// threads.
    fn shared_rounds<A, B, RA, RB>(
        &self,
        threads: usize,
        ours: &A,
        baseline: &B,
        plan: Plan,
    ) -> SharedOutcome
    where
        A: Fn(u64) -> RA + Sync,
        B: Fn(u64) -> RB + Sync,
    {
        let target = if self.quick {
            Duration::from_micros(250)
        } else {
            SHARED_TARGET
        };
        let distinct_cores = self
            .cores
            .as_ref()
            .is_some_and(|cores| threads <= cores.len() && cores.len() >= 2);
        let shared = Shared::new(threads, self.guards, self.guards && distinct_cores);
        let batches = Mutex::new(Batches::default());
        // A sleeping barrier while thread 0 calibrates (that may take a while, and the other
        // threads need not burn a core meanwhile); the spinning one around every batch.
        let start_line = Barrier::new(threads);
        let mut results = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|thread| {
                    let core = self.core(thread);
                    let (shared, batches, start_line) = (&shared, &batches, &start_line);
                    scope.spawn(move || {
                        if let Some(core) = core {
                            core_affinity::set_for_current(core);
                        }
                        if thread == 0 {
                            *batches.lock().unwrap() =
                                Batches::calibrate(ours, baseline, target, Timer::Wall);
                        }
                        start_line.wait();
                        let batches = *batches.lock().unwrap();
                        shared.rounds(thread, ours, baseline, batches, plan)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect::<Vec<_>>()
        });
        // Every thread computed the same rounds from the same shared attempts; the row's
        // canary is the slowest thread's.
        let canary = results
            .iter()
            .filter_map(|result| result.3)
            .reduce(f64::max);
        let (samples, placements, disturbed, _) = results.swap_remove(0);
        (samples, placements, disturbed, canary)
    }

    /// Measures a row whose one measurement the benchmark takes itself (seconds of a save,
    /// a peak in MiB, ...): each call of `ours` or `baseline` returns one value in `row`'s
    /// unit. After one untimed call of each (see [`Row::without_warm_up`]), the two are
    /// called alternately, round after round: at least the row's rounds, then more while
    /// the median ratio has not settled, within a time budget (see the [module docs](self)).
    /// Before every call the system's dirty pages are written back (`sync`), so that one
    /// side's pending writes do not land in the other side's time. No canary drops rounds
    /// here (see the [module docs](self)). Returns `None` when `BENCH_ONLY` filtered the
    /// row out.
    pub fn compare<A, B>(&mut self, row: Row, mut ours: A, mut baseline: B) -> Option<&Measured>
    where
        A: FnMut() -> f64,
        B: FnMut() -> f64,
    {
        if !self.wants(&row) {
            return None;
        }
        let plan = self.plan_for(&row, COMPARE_ROUNDS, Some(COMPARE_BUDGET));
        let settle = || {
            if self.guards {
                write_back_dirty_pages();
            }
        };
        if row.warm_up {
            settle();
            ours();
            settle();
            baseline();
        }
        let started = Instant::now();
        let mut samples = Vec::new();
        let mut ratios = Vec::new();
        while plan.wants_more(&ratios, started.elapsed()) {
            let sample = if samples.len() % 2 == 0 {
                settle();
                let first = ours();
                settle();
                (first, baseline())
            } else {
                settle();
                let first = baseline();
                settle();
                (ours(), first)
            };
            ratios.push(sample.1 / sample.0);
            samples.push(sample);
        }
        Some(self.record(row, &samples, Timer::Wall, "", Conditions::default()))
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

    /// How many rounds `row` runs: exactly `BENCH_ROUNDS` when set, at most
    /// [`QUICK_ROUNDS`] under `BENCH_QUICK`, otherwise at least the row's (or `default`)
    /// and then more until the median settles, up to [`MORE_ROUNDS`] times as many.
    fn plan_for(&self, row: &Row, default: usize, budget: Option<Duration>) -> Plan {
        if let Some(rounds) = self.rounds {
            return Plan::fixed(rounds);
        }
        let rounds = row.rounds.unwrap_or(default);
        if self.quick {
            return Plan::fixed(rounds.min(QUICK_ROUNDS));
        }
        Plan {
            min: rounds,
            max: rounds * MORE_ROUNDS,
            budget,
        }
    }

    /// Which slowed rounds a row of `plan` drops: as many as it may run, or none when
    /// the guards are off (unit tests).
    fn slowed(&self, plan: Plan) -> Slowed {
        Slowed::within(if self.guards { plan.max } else { 0 })
    }

    /// The core a row's `thread` is pinned to, if the OS gave core ids.
    fn core(&self, thread: usize) -> Option<core_affinity::CoreId> {
        self.cores.as_ref().map(|cores| cores[thread % cores.len()])
    }

    /// Turns per-round `(ours, baseline)` values into the reported row.
    fn record(
        &mut self,
        row: Row,
        samples: &[(f64, f64)],
        timer: Timer,
        note: &str,
        conditions: Conditions,
    ) -> &Measured {
        let Conditions {
            placement,
            canary_ns,
        } = conditions;
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
            placement,
            canary_ns,
        };
        let placed = placement.map_or(String::new(), |placement| {
            format!(
                "; cores {:.0} ns apart (round trip), {} rounds at another placement left out",
                placement.round_trip_ns, placement.elsewhere
            )
        });
        let placed = match canary_ns {
            Some(canary) => format!("{placed}; canary {canary:.3} ns"),
            None => placed,
        };
        println!(
            "  {} vs {}: ratio {:.2}× ({:.2}–{:.2}, {} rounds{placed}{note})",
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
///
/// After the drop, one 4 KiB allocation finishes the freeing: glibc's `free` leaves small
/// blocks (up to 128 bytes) in its fast bins, unmerged, until the next request of 1 KiB or
/// more merges them all (`malloc_consolidate`). A million-entry map freed in bucket order
/// left about a quarter of a second of that merging to the first allocations of whatever
/// ran next, so a row's side that followed its own dropped map paid for it and the side
/// that followed the other's did not: its rounds split in two groups by their order.
///
/// The same request is then made once more on a short-lived thread, for what a helper
/// thread of `work` allocated: glibc gives each thread its own arena, a finished thread's
/// arena goes to the next thread started, and a block is freed into the arena it came
/// from, so the request on this thread never merges it. A restore whose helper built a
/// million entries (`restore_into` into a `Vec`) left that merge, about 0.1 s, to its own
/// next round's helper (0.28–0.33 s a round instead of 0.19–0.22 s), while the floor,
/// which allocates on this thread only, had its merge done here, untimed. The thread
/// takes over the arena the last finished thread left, which is the one the next helper
/// gets.
pub fn seconds<T>(work: impl FnOnce() -> T) -> f64 {
    let started = Instant::now();
    let result = black_box(work());
    let elapsed = started.elapsed().as_secs_f64();
    drop(result);
    finish_frees();
    // A thread that cannot start leaves the merge to the next round, as before.
    if let Ok(thread) = std::thread::Builder::new()
        .name("bench-free".into())
        .spawn(finish_frees)
    {
        let _ = thread.join();
    }
    elapsed
}

/// One request large enough that glibc merges the fast bins of this thread's arena.
fn finish_frees() {
    drop(black_box(Vec::<u8>::with_capacity(4096)));
}

/// The median of `values` (the mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    median_of_sorted(&sorted)
}

/// [`median`] of values already sorted.
fn median_of_sorted(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => sorted[len / 2],
        len => f64::midpoint(sorted[len / 2 - 1], sorted[len / 2]),
    }
}

/// How many calls each side of a nanosecond row times per batch, calibrated separately (see
/// [`calibrate`]): a baseline ten or a hundred times slower than ours does not stretch every
/// one of its batches to ten or a hundred times the target, so a slow row runs its rounds
/// in seconds, not minutes, and a noisy one can afford more of them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Batches {
    ours: u64,
    baseline: u64,
}

impl Batches {
    fn calibrate<A, B, RA, RB>(ours: &A, baseline: &B, target: Duration, timer: Timer) -> Batches
    where
        A: Fn(u64) -> RA,
        B: Fn(u64) -> RB,
    {
        Batches {
            ours: calibrate(ours, target, timer),
            baseline: calibrate(baseline, target, timer),
        }
    }
}

/// The smallest batch (found by doubling, or by a jump once a batch is long enough to time)
/// for which `body` takes at least `target`. Timing it is also its warm-up.
fn calibrate<F, R>(body: &F, target: Duration, timer: Timer) -> u64
where
    F: Fn(u64) -> R,
{
    let mut batch = 1_u64;
    loop {
        let took = time_batch(body, batch, 0, timer);
        if took >= target || batch >= 1 << 40 {
            return batch;
        }
        // Jump close to the target once a batch is long enough to time, then settle by
        // doubling: fewer calibration steps for nanosecond bodies.
        let factor = if took > Duration::from_micros(50) {
            (target.as_secs_f64() / took.as_secs_f64()).ceil().max(2.0)
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

/// A one-thread row's rounds, after a warm-up batch of each side: per round,
/// [`SOLO_REPEATS`] timed batches of each side, alternating (the order alternating too),
/// as the row's [`Plan`] asks; per round, each side's fastest batch in nanoseconds per call.
///
/// The fastest of a few short batches rather than one long one: what slows a batch down
/// on a shared machine (another process on the sibling hyperthread, its cache traffic, an
/// interrupt) only ever adds time, comes and goes within milliseconds, and need not hit
/// both sides alike; the fastest batch of each side is the one it disturbed least.
///
/// What lasts longer (the host running something on the core's other hyperthread for
/// seconds or minutes) slows every batch of a round, and not every body alike: a tight
/// loop of simple instructions loses far more to a busy sibling than one waiting on a
/// clock read or a locked instruction. The [`Canary`] timed before and after each round
/// tells such a round apart, and [`Slowed`] drops it (within a bound), so a row's median is
/// taken over rounds measured while the core ran at its full speed, in every run alike.
fn solo_rounds<A, B, RA, RB>(
    ours: &A,
    baseline: &B,
    batches: Batches,
    plan: Plan,
    canary: &mut Canary,
    mut slowed: Slowed,
) -> (Vec<(f64, f64)>, Slowed)
where
    A: Fn(u64) -> RA,
    B: Fn(u64) -> RB,
{
    let timer = canary.timer;
    time_batch(ours, batches.ours, 0, timer);
    time_batch(baseline, batches.baseline, 0, timer);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut ratios = Vec::new();
    while plan.wants_more(&ratios, started.elapsed()) {
        let round = samples.len();
        let before = canary.slowdown();
        let sample = fastest((0..SOLO_REPEATS).map(|repeat| {
            let nth = (round * SOLO_REPEATS + repeat) as u64;
            let ours_batch = || nth_batch(ours, batches.ours, nth, timer);
            let baseline_batch = || nth_batch(baseline, batches.baseline, nth, timer);
            if (round + repeat) % 2 == 0 {
                let first = ours_batch();
                (first, baseline_batch())
            } else {
                let first = baseline_batch();
                (ours_batch(), first)
            }
        }));
        let after = canary.slowdown();
        if slowed.keeps(before.max(after)) {
            ratios.push(sample.1 / sample.0);
            samples.push(sample);
        }
    }
    (samples, slowed)
}

/// A fixed loop of simple instructions (the same multiply-xor-rotate the breaker's rows
/// call), timed in short batches around every round of a one-thread row: its usual time
/// during the row (the median of its readings so far) is the core's usual speed, and a
/// round around which it ran notably slower was measured on a core slowed beyond that.
struct Canary {
    timer: Timer,
    batch: u64,
    /// Every reading so far, in nanoseconds per call, sorted.
    readings: Vec<f64>,
}

impl Canary {
    /// Calibrates the canary's batch to [`CANARY_TARGET`] and takes 16 readings.
    fn new(timer: Timer) -> Canary {
        let batch = calibrate(&canary_work, CANARY_TARGET, timer);
        let mut canary = Canary {
            timer,
            batch,
            readings: Vec::new(),
        };
        for _ in 0..16 {
            canary.slowdown();
        }
        canary
    }

    /// Times the canary (the faster of two batches, so one interrupt does not count) and
    /// returns how many times slower than its usual time it ran (see [`Canary::record`]).
    fn slowdown(&mut self) -> f64 {
        let time = |canary: &Canary| {
            per_call(
                time_batch(&canary_work, canary.batch, 0, canary.timer),
                canary.batch,
            )
        };
        let now = time(self).min(time(self));
        self.record(now)
    }

    /// The median reading so far: the core's usual speed during the row, in nanoseconds per
    /// call of [`canary_work`].
    fn usual(&self) -> f64 {
        median_of_sorted(&self.readings)
    }

    /// Adds a reading and returns it against the median of all readings so far.
    ///
    /// The median, not the fastest: on a host whose other hyperthread is busy nearly all
    /// the time, the fastest reading is a rare quiet moment (one machine's canary ran
    /// more than 8% over its fastest in 97% of idle readings, its median 1.6 times the
    /// fastest), and every round was then "slowed": rows dropped rounds up to their
    /// limit and ran several times as long, to keep slowed rounds in the end anyway.
    /// Against the median, a round is dropped when the core ran slower than it usually
    /// does during the row, which is what comes and goes.
    fn record(&mut self, reading: f64) -> f64 {
        let at = self.readings.partition_point(|&earlier| earlier < reading);
        self.readings.insert(at, reading);
        reading / median_of_sorted(&self.readings)
    }
}

/// The canary's body (out of line, like a benchmark's own `work`).
#[inline(never)]
fn canary_work(input: u64) -> u64 {
    let mixed = (input ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    mixed.rotate_left(29) ^ (mixed >> 31)
}

/// Which rounds of a one-thread row are dropped as slowed (see [`solo_rounds`]): those
/// whose canary ran more than [`CANARY_SLOWED`] times slower than its median, until as
/// many were dropped as the row may run rounds; after that, every round is kept (a machine
/// slowed for that long is measured as it is, and the output says so). With a limit of 0,
/// every round is kept and nothing counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slowed {
    dropped: usize,
    kept: usize,
    limit: usize,
}

impl Slowed {
    fn within(limit: usize) -> Slowed {
        Slowed {
            dropped: 0,
            kept: 0,
            limit,
        }
    }

    /// Whether to keep a round around which the canary ran `slowdown` times slower than
    /// its fastest.
    fn keeps(&mut self, slowdown: f64) -> bool {
        if slowdown <= CANARY_SLOWED || self.limit == 0 {
            return true;
        }
        if self.dropped < self.limit {
            self.dropped += 1;
            return false;
        }
        self.kept += 1;
        true
    }

    fn note(self) -> String {
        let mut note = String::new();
        if self.dropped > 0 {
            let _ = write!(
                note,
                "; {} rounds dropped: the core ran slowed (the canary > {:.0}% over its median)",
                self.dropped,
                (CANARY_SLOWED - 1.0) * 100.0
            );
        }
        if self.kept > 0 {
            let _ = write!(
                note,
                "; {} slowed rounds kept (too many to drop)",
                self.kept
            );
        }
        note
    }
}

/// Each side's fastest of several `(ours, baseline)` batches, separately.
fn fastest(batches: impl Iterator<Item = (f64, f64)>) -> (f64, f64) {
    batches.fold((f64::INFINITY, f64::INFINITY), |fastest, batch| {
        (fastest.0.min(batch.0), fastest.1.min(batch.1))
    })
}

/// How many rounds a row runs: at least `min`; then, while the median ratio has not
/// [`settled`], more, up to `max` rounds and (for rows that time themselves) `budget`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Plan {
    min: usize,
    max: usize,
    budget: Option<Duration>,
}

impl Plan {
    fn fixed(rounds: usize) -> Plan {
        Plan {
            min: rounds,
            max: rounds,
            budget: None,
        }
    }

    /// Whether to run another round, given the ratios so far and the time they took.
    ///
    /// A row of several threads passes the time it has run as every thread reads it from
    /// the attempts they share ([`Shared::elapsed`]), so every thread decides the same.
    fn wants_more(&self, ratios: &[f64], elapsed: Duration) -> bool {
        if ratios.len() < self.min {
            return true;
        }
        if ratios.len() >= self.max || self.budget.is_some_and(|budget| elapsed >= budget) {
            return false;
        }
        !settled(ratios)
    }
}

/// Whether the median of `ratios` is pinned down: its 95% confidence interval
/// ([`median_interval`]) lies within [`SETTLED`] of it on either side.
fn settled(ratios: &[f64]) -> bool {
    let (low, high) = median_interval(ratios);
    let middle = median(ratios);
    (high - low) / 2.0 <= SETTLED * middle
}

/// A distribution-free 95% confidence interval for the median of `values`: the order
/// statistics of ranks `n/2 ∓ 0.98·√n` (each sample is above the median with probability
/// ½, so the count above it is binomial); the whole range when there are too few values.
/// `(NaN, NaN)` when empty.
pub fn median_interval(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let Some(&last) = sorted.last() else {
        return (f64::NAN, f64::NAN);
    };
    #[allow(clippy::cast_precision_loss, reason = "a count of rounds")]
    let count = sorted.len() as f64;
    let reach = 0.98 * count.sqrt();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "clamped to the ranks 1..=n"
    )]
    let rank = |rank: f64| rank.clamp(1.0, count) as usize;
    // 1-based ranks: the lower end rounds down, the upper up, so the interval is wide enough.
    let low = rank((count / 2.0 - reach).floor());
    let high = rank((count / 2.0 + 1.0 + reach).ceil());
    if high <= low {
        return (sorted[0], last);
    }
    (sorted[low - 1], sorted[high - 1])
}

/// Zero wake-up latency asked of the kernel for the duration of a row of several threads.
///
/// On these virtual machines an idle vCPU halts (the `haltpoll` cpuidle driver with guest
/// polling off), and waking it is a VM exit whose latency depends on what the host runs at
/// that moment: a thread parked on a contended lock then costs its peer from a few
/// microseconds to far more, and a contended peer's rows measured 80× in one run and 264×
/// in the next with ours unchanged. While `/dev/cpu_dma_latency` is held open with 0
/// written to it (the kernel's `PM QoS` interface), an idle CPU polls instead of halting, so
/// a wake-up costs the same in every run. Both sides of the row run under it; it can only
/// make a lock-parking baseline faster, i.e. our ratio smaller.
enum WakeLatency {
    /// The file is open with 0 written: the request lasts until it is closed.
    Held(#[allow(dead_code, reason = "held for its `Drop`")] File),
    /// The OS refused (not Linux, not root, no such device): the output says so.
    Refused,
    /// The harness's guards are off (unit tests).
    NotAsked,
}

impl WakeLatency {
    fn hold() -> WakeLatency {
        let held = OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .and_then(|mut file| file.write_all(&0_i32.to_ne_bytes()).map(|()| file));
        match held {
            Ok(file) => WakeLatency::Held(file),
            Err(_) => WakeLatency::Refused,
        }
    }

    fn note(&self) -> &'static str {
        match self {
            WakeLatency::Refused => {
                "; wake-up latency NOT pinned (/dev/cpu_dma_latency refused): a contended \
                 baseline may differ from run to run"
            }
            WakeLatency::Held(_) | WakeLatency::NotAsked => "",
        }
    }
}

/// What the rounds of a row of several threads had to redo; see [`Shared::side`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Disturbed {
    /// Batches timed again because a thread was descheduled or started late.
    redone: usize,
    /// Rounds dropped because a side stayed disturbed for [`MAX_ATTEMPTS`] attempts.
    dropped: usize,
    /// Rounds dropped because the placement of the threads' cores changed during them.
    moved: usize,
    /// Whether no round was undisturbed, so the least disturbed batches were kept.
    lenient: bool,
}

impl Disturbed {
    fn note(self) -> String {
        let mut note = String::new();
        if self.redone > 0 || self.dropped > 0 {
            let _ = write!(
                note,
                "; {} disturbed batches timed again, {} rounds dropped (a side disturbed \
                 {MAX_ATTEMPTS} times running)",
                self.redone, self.dropped
            );
        }
        if self.moved > 0 {
            let _ = write!(
                note,
                "; {} rounds dropped (the host moved the cores apart or together during them)",
                self.moved
            );
        }
        if self.lenient {
            note.push_str("; NO undisturbed round: the least disturbed batches kept");
        }
        note
    }
}

/// Whether two `Shared::placement` readings are the same placement (see
/// [`SAME_PLACEMENT`]); readings not taken (NaN) always are.
pub fn same_placement(first: f64, second: f64) -> bool {
    if first.is_nan() || second.is_nan() {
        return true;
    }
    first.max(second) <= first.min(second) * SAME_PLACEMENT
}

/// One thread's attempt at one batch of a row of several threads.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    started: Instant,
    wall: Duration,
    per_call: f64,
    /// How long the thread waited, runnable, for a CPU during the batch (`None`: unknown).
    queued: Option<Duration>,
    /// How many times slower than its median the thread's [`Canary`] ran just before.
    slowdown: f64,
}

/// What a row of several threads measured: per round, `(ours, baseline)` and the cores'
/// placement (NaN: not probed); what it had to redo; and its canary's usual time (the
/// slowest thread's, `None` with the guards off).
type SharedOutcome = (Vec<(f64, f64)>, Vec<f64>, Disturbed, Option<f64>);

/// What the threads of a row of several threads share: the barrier every batch starts at,
/// and each thread's latest attempt.
struct Shared {
    /// Whether the harness's guards are on (see [`Harness`]).
    guards: bool,
    barrier: SpinBarrier,
    attempts: Mutex<Vec<Attempt>>,
    /// When the row's threads started: its [`SHARED_BUDGET`] counts from here.
    began: Instant,
    /// Whether rounds are bracketed by [`Shared::placement`] probes: only with the guards
    /// on and threads 0 and 1 pinned to different cores (spinning for a thread that shares
    /// one's core would take a time slice per round trip).
    probe: bool,
    /// The cache line threads 0 and 1 hand back and forth in a [`Shared::placement`] probe.
    line: PaddedLine,
    /// The latest probe's round trip, in nanoseconds, written by thread 0.
    round_trip: Mutex<f64>,
}

/// An atomic alone on its cache line (and the adjacent one, which AMD and Intel prefetch
/// in pairs).
#[repr(align(128))]
struct PaddedLine(std::sync::atomic::AtomicU64);

impl Shared {
    fn new(threads: usize, guards: bool, probe: bool) -> Shared {
        let idle = Attempt {
            started: Instant::now(),
            wall: Duration::ZERO,
            per_call: 0.0,
            queued: None,
            slowdown: 1.0,
        };
        Shared {
            guards,
            barrier: SpinBarrier::new(threads),
            attempts: Mutex::new(vec![idle; threads]),
            began: idle.started,
            probe,
            line: PaddedLine(std::sync::atomic::AtomicU64::new(0)),
            round_trip: Mutex::new(f64::NAN),
        }
    }

    /// How far apart the cores of threads 0 and 1 are now: the time, in nanoseconds, for
    /// a cache line to go from thread 0 to thread 1 and back, the fastest of
    /// [`PROBE_CHUNKS`] averages over [`PROBE_ROUND_TRIPS`] (an interrupt in one chunk
    /// does not count). Every thread calls it and gets the same reading; a row of one
    /// thread, or threads not pinned, read NaN.
    fn placement(&self, thread: usize) -> f64 {
        use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
        let line = &self.line.0;
        self.barrier.wait();
        let base = line.load(Relaxed);
        // Every thread has read `base` before either of the two writes.
        self.barrier.wait();
        let trips = PROBE_CHUNKS * PROBE_ROUND_TRIPS;
        match thread {
            0 => {
                let mut fastest = f64::INFINITY;
                for chunk in 0..PROBE_CHUNKS {
                    let started = Instant::now();
                    for trip in chunk * PROBE_ROUND_TRIPS..(chunk + 1) * PROBE_ROUND_TRIPS {
                        line.store(base + 2 * trip + 1, Release);
                        while line.load(Acquire) != base + 2 * trip + 2 {
                            std::hint::spin_loop();
                        }
                    }
                    #[allow(clippy::cast_precision_loss, reason = "a small count")]
                    let trip = started.elapsed().as_secs_f64() * 1e9 / PROBE_ROUND_TRIPS as f64;
                    fastest = fastest.min(trip);
                }
                *self.round_trip.lock().unwrap() = fastest;
            }
            1 => {
                for trip in 0..trips {
                    while line.load(Acquire) != base + 2 * trip + 1 {
                        std::hint::spin_loop();
                    }
                    line.store(base + 2 * trip + 2, Release);
                }
            }
            _ => {}
        }
        self.barrier.wait();
        *self.round_trip.lock().unwrap()
    }

    /// How long the row has run, up to the end of the latest batch: read from the attempts
    /// every thread shares, not from each thread's clock, so that between two batches every
    /// thread reads the same and decides the same about another round (one that decided
    /// otherwise would leave the others waiting at the barrier for ever).
    fn elapsed(&self) -> Duration {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .map(|attempt| (attempt.started + attempt.wall).saturating_duration_since(self.began))
            .max()
            .unwrap_or_default()
    }

    /// `thread`'s part of the row: a warm-up batch of each side, then the rounds the plan
    /// asks for. Every thread returns the same rounds: each round's value is computed from
    /// all threads' attempts.
    fn rounds<A, B, RA, RB>(
        &self,
        thread: usize,
        ours: &A,
        baseline: &B,
        batches: Batches,
        plan: Plan,
    ) -> SharedOutcome
    where
        A: Fn(u64) -> RA,
        B: Fn(u64) -> RB,
    {
        let mut watch = Watch {
            run_queue: RunQueue::open(),
            canary: self.guards.then(|| Canary::new(Timer::Wall)),
            disturbed: Disturbed::default(),
        };
        self.barrier.wait();
        time_batch(ours, batches.ours, 0, Timer::Wall);
        self.barrier.wait();
        time_batch(baseline, batches.baseline, 0, Timer::Wall);
        // One round, or `None` when a side stayed disturbed (unless `lenient`: then its
        // least disturbed attempt counts).
        let mut one_round = |round: usize, lenient: bool| {
            let round = round as u64;
            let mut side = |ours_side: bool| {
                let value = if ours_side {
                    let batch = batches.ours;
                    self.side(thread, ours, batch, round * batch, &mut watch)
                } else {
                    let batch = batches.baseline;
                    self.side(thread, baseline, batch, round * batch, &mut watch)
                };
                if lenient {
                    Some(value.unwrap_or_else(|least_disturbed| least_disturbed))
                } else {
                    value.ok()
                }
            };
            if round.is_multiple_of(2) {
                let first = side(true)?;
                Some((first, side(false)?))
            } else {
                let first = side(false)?;
                Some((side(true)?, first))
            }
        };
        let mut samples = Vec::new();
        let mut ratios = Vec::new();
        let mut tried = 0;
        let mut dropped = 0;
        let mut placements = Vec::new();
        let mut moved = 0;
        let probe = |thread| {
            if self.probe {
                self.placement(thread)
            } else {
                f64::NAN
            }
        };
        while plan.wants_more(&ratios, self.elapsed()) && tried < 2 * plan.max {
            tried += 1;
            let before = probe(thread);
            let round = one_round(tried - 1, false);
            let after = probe(thread);
            match round {
                // The host moved the threads' cores during the round: it measured neither
                // placement (every thread read the same probes, so all decide alike).
                Some(_) if !same_placement(before, after) => moved += 1,
                Some(sample) => {
                    ratios.push(sample.1 / sample.0);
                    samples.push(sample);
                    placements.push(f64::midpoint(before, after));
                }
                None => dropped += 1,
            }
        }
        let lenient = samples.is_empty();
        if lenient {
            // Not one undisturbed round: the least disturbed batches, and the output says so.
            samples.extend((0..plan.min).filter_map(|round| one_round(round, true)));
            placements = vec![f64::NAN; samples.len()];
        }
        let mut disturbed = watch.disturbed;
        disturbed.dropped = dropped;
        disturbed.moved = moved;
        disturbed.lenient = lenient;
        let canary = watch.canary.as_ref().map(Canary::usual);
        (samples, placements, disturbed, canary)
    }

    /// One side's batch, all threads together: timed again (up to [`MAX_ATTEMPTS`] times)
    /// while it was disturbed, i.e. while a thread spent more than [`DISTURBED`] of the batch
    /// waiting for a CPU, or the threads started further apart than that (such a batch
    /// measured something else: the other threads ran uncontended meanwhile), or a thread's
    /// [`Canary`], timed just before, ran more than [`CANARY_SLOWED`] times slower than its
    /// median (the core was slowed, as in [`solo_rounds`]). Returns the
    /// time per call averaged over the threads, or, when every attempt was disturbed, the
    /// least disturbed attempt's as an error.
    fn side<F, R>(
        &self,
        thread: usize,
        body: &F,
        batch: u64,
        offset: u64,
        watch: &mut Watch,
    ) -> Result<f64, f64>
    where
        F: Fn(u64) -> R,
    {
        let mut least: Option<(f64, f64)> = None;
        let disturbed = &mut watch.disturbed;
        for attempt in 0..MAX_ATTEMPTS {
            let slowdown = watch.canary.as_mut().map_or(1.0, Canary::slowdown);
            self.barrier.wait();
            let before = watch.run_queue.now();
            let started = Instant::now();
            let wall = time_batch(body, batch, offset, Timer::Wall);
            let queued = RunQueue::queued(before, watch.run_queue.now());
            self.attempts.lock().unwrap()[thread] = Attempt {
                started,
                wall,
                per_call: per_call(wall, batch),
                queued,
                slowdown,
            };
            // Every thread has written its attempt; none writes the next one before every
            // thread has passed the next batch's barrier, i.e. has read this one.
            self.barrier.wait();
            let (disturbance, value) = judge(&self.attempts.lock().unwrap());
            // With the guards off (unit tests) every batch counts: a test must not depend
            // on how busy the machine is.
            if disturbance <= DISTURBED || !self.guards {
                disturbed.redone += attempt;
                return Ok(value);
            }
            if least.is_none_or(|(least, _)| disturbance < least) {
                least = Some((disturbance, value));
            }
        }
        disturbed.redone += MAX_ATTEMPTS - 1;
        Err(least.map_or(f64::NAN, |(_, value)| value))
    }
}

/// What a measuring thread of a row of several threads watches its batches with.
struct Watch {
    run_queue: RunQueue,
    /// `None` when the harness's guards are off (unit tests).
    canary: Option<Canary>,
    disturbed: Disturbed,
}

/// How disturbed one batch of all threads was (the largest share of the shortest thread's
/// batch by which the threads' starts differ, or of a thread's batch it spent waiting for a
/// CPU, or, when a thread's canary ran more than [`CANARY_SLOWED`] times slower than its
/// fastest, by how much: always more than [`DISTURBED`]), and its time per call averaged
/// over the threads.
fn judge(attempts: &[Attempt]) -> (f64, f64) {
    let first = attempts.iter().map(|attempt| attempt.started).min();
    let last = attempts.iter().map(|attempt| attempt.started).max();
    let shortest = attempts
        .iter()
        .map(|attempt| attempt.wall)
        .min()
        .unwrap_or_default()
        .as_secs_f64()
        .max(1e-9);
    let skew = match (first, last) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let queued = attempts
        .iter()
        .filter_map(|attempt| {
            let queued = attempt.queued?.as_secs_f64();
            Some(queued / attempt.wall.as_secs_f64().max(1e-9))
        })
        .fold(0.0, f64::max);
    #[allow(clippy::cast_precision_loss, reason = "a thread count")]
    let threads = attempts.len().max(1) as f64;
    let value = attempts.iter().map(|attempt| attempt.per_call).sum::<f64>() / threads;
    let slowed = attempts
        .iter()
        .map(|attempt| attempt.slowdown)
        .filter(|&slowdown| slowdown > CANARY_SLOWED)
        .fold(0.0, f64::max);
    let slowed = if slowed > 0.0 { slowed - 1.0 } else { 0.0 };
    ((skew / shortest).max(queued).max(slowed), value)
}

/// This thread's scheduling counters, from Linux's `/proc/thread-self/schedstat` (its
/// second field: nanoseconds spent runnable but waiting for a CPU) and
/// `/proc/thread-self/status` (`nonvoluntary_ctxt_switches`: how often another task took
/// its CPU while it was running). Sleeping on a lock is neither; `None` where the files do
/// not exist.
struct RunQueue {
    schedstat: Option<File>,
    status: Option<File>,
}

/// A reading of [`RunQueue`].
#[derive(Debug, Clone, Copy, Default)]
struct Sched {
    waited: Option<Duration>,
    preemptions: Option<u64>,
}

impl RunQueue {
    /// Opens the calling thread's files (they stay the calling thread's).
    fn open() -> RunQueue {
        RunQueue {
            schedstat: File::open("/proc/thread-self/schedstat").ok(),
            status: File::open("/proc/thread-self/status").ok(),
        }
    }

    fn read(file: Option<&File>) -> Option<String> {
        let mut file = file?;
        file.rewind().ok()?;
        let mut text = String::new();
        file.read_to_string(&mut text).ok()?;
        Some(text)
    }

    fn now(&self) -> Sched {
        Sched {
            waited: Self::read(self.schedstat.as_ref()).and_then(|text| parse_run_delay(&text)),
            preemptions: Self::read(self.status.as_ref()).and_then(|text| parse_preemptions(&text)),
        }
    }

    /// How long the thread waited for a CPU between `before` and `after` because another
    /// task preempted it. A thread never preempted meanwhile counts zero: whatever it
    /// waited followed a sleep of its own on a lock (waking up is part of a lock's cost).
    fn queued(before: Sched, after: Sched) -> Option<Duration> {
        if let (Some(before), Some(after)) = (before.preemptions, after.preemptions)
            && after == before
        {
            return Some(Duration::ZERO);
        }
        let (before, after) = (before.waited?, after.waited?);
        Some(after.saturating_sub(before))
    }
}

/// The run-queue wait in a `schedstat` line: `<on cpu ns> <waiting ns> <slices>`.
fn parse_run_delay(text: &str) -> Option<Duration> {
    let nanos = text.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// The `nonvoluntary_ctxt_switches` count in a `/proc/.../status` text.
fn parse_preemptions(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("nonvoluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()
}

/// A barrier whose waiters spin rather than sleep, so every thread starts its batch within
/// a fraction of a microsecond of the others (a sleeping barrier wakes each waiter after
/// the last one arrived, tens of microseconds apart on a virtual machine). A waiter yields
/// its core after a while, in case the thread it waits for needs that core to run.
struct SpinBarrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    fn new(threads: usize) -> SpinBarrier {
        SpinBarrier {
            threads,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    fn wait(&self) {
        // Acquire: pairs with the release below, so the reset of `arrived` by the last
        // thread of the previous generation is seen before this thread counts itself.
        let generation = self.generation.load(Ordering::Acquire);
        // AcqRel: the last arriver sees every other thread's writes before the barrier
        // (their attempts), and passes them on through its release of `generation`.
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            // Relaxed: published by the release increment of `generation` right after.
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0_u32;
        // Acquire: pairs with the last arriver's release, so what every thread wrote before
        // the barrier is visible after it.
        while self.generation.load(Ordering::Acquire) == generation {
            if spins < 1 << 14 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Writes the system's dirty pages back (`sync`), so the next timed call starts without
/// another call's writes still pending; nothing happens where `sync` cannot run.
fn write_back_dirty_pages() {
    let _ = std::process::Command::new("sync").status();
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

/// The `nth` batch of `calls` calls of `body` (indices from `nth * calls`), in nanoseconds
/// per call.
fn nth_batch<F, R>(body: &F, calls: u64, nth: u64, timer: Timer) -> f64
where
    F: Fn(u64) -> R,
{
    per_call(time_batch(body, calls, nth * calls, timer), calls)
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
    fn a_refused_wake_latency_request_is_said_and_a_held_one_is_silent() {
        assert!(WakeLatency::Refused.note().contains("NOT pinned"));
        assert_eq!(WakeLatency::NotAsked.note(), "");
        // Where the device exists (root on Linux), the request is held, silently.
        if let held @ WakeLatency::Held(_) = WakeLatency::hold() {
            assert_eq!(held.note(), "");
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < f64::EPSILON);
        assert!((median(&[4.0, 1.0, 3.0, 2.0]) - 2.5).abs() < f64::EPSILON);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn a_one_thread_round_keeps_each_sides_fastest_batch() {
        let batches = [(3.0, 5.0), (2.0, 7.0), (4.0, 4.0)];
        assert_eq!(fastest(batches.into_iter()), (2.0, 4.0));
    }

    #[test]
    fn slowed_rounds_are_dropped_up_to_the_limit_and_then_kept() {
        let mut slowed = Slowed::within(2);
        assert!(slowed.keeps(1.0));
        assert!(slowed.keeps(CANARY_SLOWED));
        assert!(!slowed.keeps(CANARY_SLOWED + 0.01));
        assert!(!slowed.keeps(1.5));
        assert!(
            slowed.keeps(1.5),
            "the third slowed round is past the limit of 2"
        );
        assert!(slowed.keeps(1.01));
        assert_eq!((slowed.dropped, slowed.kept), (2, 1));
        let note = slowed.note();
        assert!(
            note.contains("2 rounds dropped") && note.contains("1 slowed rounds kept"),
            "{note}"
        );
        assert_eq!(Slowed::within(3).note(), "");
        let mut off = Slowed::within(0);
        assert!(off.keeps(2.0));
        assert_eq!(off.note(), "");
    }

    #[test]
    #[allow(clippy::float_cmp, reason = "halves and wholes, exact in binary")]
    fn the_canary_reports_its_slowdown_against_its_usual_time() {
        let mut canary = Canary::new(Timer::Wall);
        assert_eq!(canary.readings.len(), 16);
        assert!(canary.slowdown().is_finite());
        let mut canary = Canary {
            timer: Timer::Wall,
            batch: 1,
            readings: Vec::new(),
        };
        assert_eq!(canary.record(1.0), 1.0);
        // A host busy most of the time: the rare quick reading is not the reference.
        for _ in 0..4 {
            canary.record(2.0);
        }
        assert_eq!(canary.record(2.0), 1.0, "as slow as usual is not slowed");
        assert!(canary.record(2.5) > CANARY_SLOWED, "slower than usual is");
        assert!(canary.record(1.0) < 1.0);
        assert!(canary.readings.is_sorted());
    }

    #[test]
    fn median_interval_takes_the_order_statistics_around_the_middle() {
        let values: Vec<f64> = (1..=41).map(f64::from).collect();
        // Ranks 20.5 ∓ 0.98·√41 (6.27), widened outwards: 14 and 28.
        assert_eq!(median_interval(&values), (14.0, 28.0));
        // Too few values for a narrower interval than their range.
        assert_eq!(median_interval(&[3.0, 1.0, 2.0]), (1.0, 3.0));
        let (low, high) = median_interval(&[]);
        assert!(low.is_nan() && high.is_nan());
    }

    #[test]
    fn a_median_settles_when_its_interval_is_within_4_percent() {
        let tight: Vec<f64> = (0..41).map(|i| 1.0 + f64::from(i % 5) * 0.01).collect();
        assert!(settled(&tight));
        let wide: Vec<f64> = (0..41).map(|i| 0.5 + f64::from(i) / 40.0).collect();
        assert!(!settled(&wide));
    }

    #[test]
    fn a_plan_runs_its_minimum_then_more_until_settled_max_or_budget() {
        let plan = Plan {
            min: 3,
            max: 6,
            budget: Some(Duration::from_secs(1)),
        };
        let wide = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0];
        let no_time = Duration::ZERO;
        assert!(plan.wants_more(&[1.0, 1.0], no_time), "below the minimum");
        assert!(!plan.wants_more(&[1.0, 1.0, 1.0], no_time), "settled");
        assert!(plan.wants_more(&wide[..3], no_time), "not settled");
        assert!(!plan.wants_more(&wide, no_time), "at the maximum");
        assert!(
            !plan.wants_more(&wide[..3], Duration::from_secs(2)),
            "over budget"
        );
        assert!(
            plan.wants_more(&[1.0], Duration::from_secs(2)),
            "the minimum is kept"
        );
        assert!(!Plan::fixed(3).wants_more(&wide[..3], no_time));
    }

    #[test]
    fn compare_adds_rounds_only_while_the_median_has_not_settled() {
        let mut harness = harness(None);
        harness.quick = false;
        harness.rounds = None;
        let steady = harness
            .compare(Row::new("steady", "b").unit("s").rounds(3), || 1.0, || 2.0)
            .unwrap();
        assert_eq!(steady.rounds, 3);
        let mut calls = 0_u32;
        let noisy = harness
            .compare(
                Row::new("noisy", "b").unit("s").rounds(3),
                || {
                    calls += 1;
                    f64::from(calls % 3 + 1)
                },
                || 2.0,
            )
            .unwrap();
        assert_eq!(noisy.rounds, 3 * MORE_ROUNDS, "{noisy:?}");
    }

    fn attempt(started: Instant, wall_us: u64, queued_us: Option<u64>, per_call: f64) -> Attempt {
        Attempt {
            started,
            wall: Duration::from_micros(wall_us),
            per_call,
            queued: queued_us.map(Duration::from_micros),
            slowdown: 1.0,
        }
    }

    #[test]
    fn a_batch_is_disturbed_by_a_late_start_or_a_wait_for_a_cpu() {
        let now = Instant::now();
        let clean = [
            attempt(now, 1000, Some(0), 2.0),
            attempt(now + Duration::from_micros(5), 1000, Some(10), 4.0),
        ];
        let (disturbance, value) = judge(&clean);
        assert!(disturbance <= DISTURBED, "{disturbance}");
        assert!(
            (value - 3.0).abs() < 1e-9,
            "the mean over the threads: {value}"
        );
        let late = [
            attempt(now, 1000, Some(0), 2.0),
            attempt(now + Duration::from_micros(100), 900, Some(0), 2.0),
        ];
        assert!((judge(&late).0 - 100.0 / 900.0).abs() < 1e-9);
        let queued = [
            attempt(now, 1000, Some(300), 2.0),
            attempt(now, 1000, None, 2.0),
        ];
        assert!((judge(&queued).0 - 0.3).abs() < 1e-9);
        let mut slowed = clean;
        slowed[1].slowdown = CANARY_SLOWED;
        assert!(
            judge(&slowed).0 <= DISTURBED,
            "a canary at the limit is not slowed"
        );
        slowed[1].slowdown = 1.25;
        assert!(
            (judge(&slowed).0 - 0.25).abs() < 1e-9,
            "a slowed core disturbs the batch"
        );
    }

    #[test]
    fn a_row_of_several_threads_reads_its_run_time_from_the_shared_attempts() {
        let shared = Shared::new(2, true, false);
        assert_eq!(shared.elapsed(), Duration::ZERO);
        let began = shared.began;
        *shared.attempts.lock().unwrap() = vec![
            attempt(began + Duration::from_millis(5), 10_000, None, 1.0),
            attempt(began + Duration::from_millis(6), 4_000, None, 1.0),
        ];
        // The latest end of any thread's batch, the same whichever thread asks.
        assert_eq!(shared.elapsed(), Duration::from_millis(15));
    }

    #[test]
    fn each_side_is_calibrated_on_its_own() {
        // A side that takes its whole target in one call needs a batch of one, however
        // cheap the other side is (calibrated together, both got the cheap side's batch).
        let slow = |_: u64| std::thread::sleep(Duration::from_millis(2));
        let cheap = |i: u64| i;
        let batches = Batches::calibrate(&cheap, &slow, Duration::from_millis(1), Timer::Wall);
        assert_eq!(batches.baseline, 1);
        let batches = Batches::calibrate(&slow, &cheap, Duration::from_millis(1), Timer::Wall);
        assert_eq!(batches.ours, 1);
    }

    #[test]
    fn the_run_queue_wait_is_schedstats_second_field() {
        assert_eq!(
            parse_run_delay("52923772 123071238 137\n"),
            Some(Duration::from_nanos(123_071_238))
        );
        assert_eq!(parse_run_delay("garbage"), None);
    }

    #[test]
    fn only_a_preempted_thread_counts_its_wait_for_a_cpu() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_preemptions(status), Some(3));
        assert_eq!(parse_preemptions("Name:\tx\n"), None);
        let at = |waited_us: u64, preemptions: Option<u64>| Sched {
            waited: Some(Duration::from_micros(waited_us)),
            preemptions,
        };
        // Woken from a lock onto a busy CPU: waited, but nobody preempted it.
        assert_eq!(
            RunQueue::queued(at(10, Some(3)), at(400, Some(3))),
            Some(Duration::ZERO)
        );
        assert_eq!(
            RunQueue::queued(at(10, Some(3)), at(400, Some(4))),
            Some(Duration::from_micros(390))
        );
        // Without the switch counts, every wait counts.
        assert_eq!(
            RunQueue::queued(at(10, None), at(400, None)),
            Some(Duration::from_micros(390))
        );
    }

    #[test]
    fn the_spin_barrier_lets_no_thread_into_a_round_before_all_finished_the_last() {
        use std::sync::atomic::AtomicU64;
        let barrier = SpinBarrier::new(2);
        let progress = [AtomicU64::new(0), AtomicU64::new(0)];
        std::thread::scope(|scope| {
            for me in 0..2 {
                let (barrier, progress) = (&barrier, &progress);
                scope.spawn(move || {
                    for round in 1..=2000 {
                        progress[me].store(round, Ordering::Relaxed);
                        barrier.wait();
                        // The other thread reached this round before the barrier let us go,
                        // and cannot pass the next barrier without us.
                        let other = progress[1 - me].load(Ordering::Relaxed);
                        assert!(other == round || other == round + 1, "{other} at {round}");
                        barrier.wait();
                    }
                });
            }
        });
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
            guards: false,
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
        // Lines are alternatives: `--twice` re-measures rows by their whole names.
        let two = self::harness(Some(
            "demo closed success, 2 threads failsafe 1.3\ndemo rejection",
        ));
        assert!(two.wants(&Row::new("closed success", "failsafe 1.3").threads(2)));
        assert!(two.wants(&Row::new("rejection while open", "recloser 1.4")));
        assert!(!two.wants(&Row::new("closed success", "failsafe 1.3")));
    }

    #[test]
    fn placements_within_half_again_of_each_other_are_the_same() {
        assert!(same_placement(70.0, 100.0));
        assert!(same_placement(100.0, 70.0));
        assert!(!same_placement(72.0, 480.0));
        assert!(!same_placement(480.0, 72.0));
        assert!(
            same_placement(f64::NAN, 480.0),
            "no reading never splits a row"
        );
    }

    #[test]
    fn a_row_keeps_the_rounds_at_its_usual_placement() {
        // Three rounds with the cores 70 ns apart, two at 480 ns: the ratios differ by the
        // placement (a contended peer pays for every cache line that crosses).
        let samples = [
            (1.0, 45.0),
            (1.0, 100.0),
            (1.0, 46.0),
            (1.0, 44.0),
            (1.0, 99.0),
        ];
        let placements = [70.0, 480.0, 72.0, 75.0, 470.0];
        let (kept, placement) = at_usual_placement(&samples, &placements);
        assert_eq!(kept, vec![(1.0, 45.0), (1.0, 46.0), (1.0, 44.0)]);
        let placement = placement.unwrap();
        assert_eq!(placement.elsewhere, 2);
        assert!(
            (placement.round_trip_ns - 72.0).abs() < 1e-9,
            "{placement:?}"
        );
        // Two and two: the lower middle reading decides, never an average between them.
        let (kept, _) = at_usual_placement(&samples[..4], &[70.0, 480.0, 480.0, 72.0]);
        assert_eq!(kept.len(), 2);
        // No probe read (threads not pinned): every round, and no placement.
        let (kept, placement) = at_usual_placement(&samples, &[f64::NAN; 5]);
        assert_eq!((kept.len(), placement), (5, None));
    }

    #[test]
    fn the_placement_probe_gives_every_thread_the_same_reading() {
        let shared = Shared::new(2, true, true);
        let readings: Vec<f64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|thread| {
                    let shared = &shared;
                    scope.spawn(move || [shared.placement(thread), shared.placement(thread)])
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| handle.join().unwrap())
                .collect()
        });
        assert!(
            readings.iter().all(|ns| ns.is_finite() && *ns > 0.0),
            "{readings:?}"
        );
        assert_eq!(readings[0].to_bits(), readings[2].to_bits(), "{readings:?}");
        assert_eq!(readings[1].to_bits(), readings[3].to_bits(), "{readings:?}");
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
