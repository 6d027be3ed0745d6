//! `cargo xtask bench`: runs each crate's `vs_peers` benchmark and writes the report.
//!
//! # Protocol between a benchmark and this runner
//!
//! Each crate that has `benches/vs_peers.rs` (a `harness = false` target), and the
//! `integration` package's `tests/benches/vs_peers.rs` (the demo's full stack), is run with
//! `cargo bench -p <crate> --bench vs_peers` and measures its rows with
//! `xtask::harness` (`xtask/src/harness.rs`), which reads these environment variables:
//!
//! - `BENCH_REPORT`: a path; the benchmark appends one JSON object per row to it, with
//!   `crate`, `bench`, `baseline`, `unit` (lower is better), `ours` and `baseline_value`
//!   (the medians of each side over the rounds), `ratio` (the median of the per-round
//!   ratios `baseline / ours`), `min_ratio` and `max_ratio` (their spread), `rounds`,
//!   `pinned`, `timer` (`thread-cpu` or `wall`), an optional `goal`: the smallest acceptable
//!   median ratio, from the crate's issue, and for rows of several threads `placement_ns`
//!   (how far apart the host had put the cores: a cache line's round trip between them)
//!   and `other_placement_rounds` (rounds at another placement, left out), and for
//!   nanosecond rows `canary_ns` (how fast the core ran during the row).
//! - `BENCH_QUICK=1` (`--quick`): short runs; numbers are then only a smoke test.
//! - `BENCH_ROUNDS=N` (`--rounds N`): every row runs N rounds.
//! - `BENCH_ONLY=text` (`--only text`): only rows whose crate, name or baseline contain
//!   `text`; when `text` names a crate, only that crate's benchmark runs.
//!
//! The benchmarks are built with every loop and function aligned to 64 bytes
//! ([`ALIGNED`], added to any `RUSTFLAGS` already set) in their own target directory,
//! `target/bench-build` (so the flags do not invalidate the everyday build). Without it, a
//! change anywhere moves the timed loops, and the same bare call measured 1.35, 1.63 and
//! 1.90 ns in three builds (a loop's speed depends on how it falls on the core's 64-byte
//! fetch windows); aligned, it measured 1.355 ns in builds that differed.
//!
//! `--twice` runs every selected benchmark twice in a row and checks issue 10's criterion:
//! it writes run 1's report to `target/bench/report-run1.json` (`report.json` is run 2),
//! both runs' ratios and each row's change to `target/bench/stability.md`, and fails when a
//! row's median ratio moved more than 15% (the larger over the smaller, less one). In run 2,
//! a row measured in another host state than run 1's is measured again first, in up to
//! four more passes, until the states match: a row of several threads with the host's cores placed
//! otherwise (its `placement_ns`, see `xtask::harness`), or a nanosecond row whose
//! `canary_ns` (the harness's canary's usual time during the row: how fast the core ran)
//! is more than 8% off run 1's, either way. Across such states the two runs measured two
//! machines. A row still in another state is marked so (**placement differs**, **core
//! speed differs**) and still counts.
//!
//! Every run (not `--quick`, not `--rounds`; run 1 of `--twice` too) also measures again,
//! in up to four more passes, each nanosecond row whose `canary_ns` is more than 8% over the
//! run's fastest row's among those timed by the same clock (`timer`: a thread's CPU time and
//! the wall clock read the canary differently): its core was slowed for the whole row, which
//! the harness's per-round canary check, judging against the row's own usual speed,
//! cannot see. It also measures every row of several threads in at least three processes,
//! one pass apart (a contended peer runs otherwise for minutes at a time), and reports the
//! median-ratio measurement of the largest group at one placement (`representative`). A
//! run stops starting such passes after 10 minutes.
//!
//! For the whole run, the guest's free page reporting to its host is paused where the
//! kernel has it and lets root change it (see `free_pages`: otherwise memory freed by one
//! side is handed back to the host and the next allocation waits for it to come back), and
//! `machine.json` says whether it was.
//!
//! The runner adds `goal_met` (the median ratio reaches the goal) and `verdict` (`met`,
//! `missed`, or `inconclusive` when the spread straddles the goal), writes
//! `target/bench/report.json` (a JSON array of the rows) and `target/bench/machine.json`
//! (CPU, cores, clock source and load average at the start), and prints the table.

use std::{fmt::Write as _, fs, path::Path, process::Command};

use serde_json::{Map, Value, json};

use crate::{crates_with_file, package_name, project_root};

/// The code-generation flags every benchmark is built with (see the module docs).
pub(crate) const ALIGNED: &str = "-C llvm-args=-align-loops=64 -C llvm-args=-align-all-functions=6";

/// `RUSTFLAGS` for a benchmark build: `existing` (from the environment) with [`ALIGNED`].
fn bench_rustflags(existing: Option<&str>) -> String {
    match existing.map(str::trim).filter(|flags| !flags.is_empty()) {
        Some(flags) => format!("{flags} {ALIGNED}"),
        None => ALIGNED.to_string(),
    }
}

/// One measured comparison, as written into `report.json`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) krate: String,
    pub(crate) bench: String,
    pub(crate) unit: String,
    pub(crate) ours: f64,
    pub(crate) baseline: String,
    pub(crate) baseline_value: f64,
    pub(crate) ratio: f64,
    pub(crate) min_ratio: f64,
    pub(crate) max_ratio: f64,
    pub(crate) rounds: u64,
    pub(crate) pinned: bool,
    pub(crate) timer: String,
    pub(crate) goal: Option<f64>,
    /// `placement_ns` (rows of several threads): the round trip of a cache line between
    /// the measuring threads' cores during the row's rounds, i.e. where the host had put
    /// them.
    pub(crate) placement_ns: Option<f64>,
    /// `other_placement_rounds`: rounds taken at another placement, left out of the row.
    pub(crate) other_placement_rounds: Option<u64>,
    /// `canary_ns` (nanosecond rows): how fast the core ran during the row, as the time of
    /// a fixed loop's call; see [`measure_again`].
    pub(crate) canary_ns: Option<f64>,
}

/// How a row stands against its goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The row has no goal.
    None,
    /// Every round reached the goal.
    Met,
    /// No round reached the goal.
    Missed,
    /// The spread straddles the goal: some rounds reach it, some do not.
    Inconclusive,
}

impl Row {
    /// `crate bench baseline`: what names a row across runs, and what `BENCH_ONLY`
    /// matches (lowercased) to measure just this row again.
    pub(crate) fn key(&self) -> String {
        format!("{} {} {}", self.krate, self.bench, self.baseline)
    }

    /// Whether the median ratio reaches the goal (`None` without a goal).
    pub(crate) fn goal_met(&self) -> Option<bool> {
        self.goal.map(|goal| self.ratio >= goal)
    }

    pub(crate) fn verdict(&self) -> Verdict {
        match self.goal {
            None => Verdict::None,
            Some(goal) if self.min_ratio >= goal => Verdict::Met,
            Some(goal) if self.max_ratio < goal => Verdict::Missed,
            Some(_) => Verdict::Inconclusive,
        }
    }

    fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("crate".into(), json!(self.krate));
        object.insert("bench".into(), json!(self.bench));
        object.insert("unit".into(), json!(self.unit));
        object.insert("ours".into(), json!(self.ours));
        object.insert("baseline".into(), json!(self.baseline));
        object.insert("baseline_value".into(), json!(self.baseline_value));
        object.insert("ratio".into(), json!(round(self.ratio, 4)));
        object.insert("min_ratio".into(), json!(round(self.min_ratio, 4)));
        object.insert("max_ratio".into(), json!(round(self.max_ratio, 4)));
        object.insert("rounds".into(), json!(self.rounds));
        object.insert("pinned".into(), json!(self.pinned));
        object.insert("timer".into(), json!(self.timer));
        if let Some(placement) = self.placement_ns {
            object.insert("placement_ns".into(), json!(round(placement, 1)));
        }
        if let Some(canary) = self.canary_ns {
            object.insert("canary_ns".into(), json!(round(canary, 4)));
        }
        if let Some(elsewhere) = self.other_placement_rounds {
            object.insert("other_placement_rounds".into(), json!(elsewhere));
        }
        if let Some(goal) = self.goal {
            object.insert("goal".into(), json!(goal));
            object.insert("goal_met".into(), json!(self.ratio >= goal));
            let verdict = match self.verdict() {
                Verdict::Met => "met",
                Verdict::Missed => "missed",
                Verdict::Inconclusive | Verdict::None => "inconclusive",
            };
            object.insert("verdict".into(), json!(verdict));
        }
        Value::Object(object)
    }
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// The flags of `cargo xtask bench`.
#[derive(Debug, Default, PartialEq)]
struct Flags {
    quick: bool,
    write_docs: bool,
    twice: bool,
    only: Option<String>,
    rounds: Option<u64>,
}

fn parse_flags(args: &[String]) -> Result<Flags, String> {
    let mut flags = Flags::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => flags.quick = true,
            "--write-docs" => flags.write_docs = true,
            "--twice" => flags.twice = true,
            "--only" => match args.next() {
                Some(text) if !text.is_empty() => flags.only = Some(text.clone()),
                _ => return Err("`--only` needs a crate name or a row substring".into()),
            },
            "--rounds" => match args.next().map(|text| text.parse::<u64>()) {
                Some(Ok(rounds)) if rounds > 0 => flags.rounds = Some(rounds),
                _ => return Err("`--rounds` needs a positive number".into()),
            },
            other => {
                return Err(format!(
                    "unknown bench flag `{other}`; run `cargo xtask help`"
                ));
            }
        }
    }
    if flags.write_docs && (flags.only.is_some() || flags.quick) {
        return Err(
            "`--write-docs` regenerates docs/benchmarks.md from a full run: drop `--only` and `--quick`"
                .into(),
        );
    }
    Ok(flags)
}

/// The package to `cargo bench -p`: a crate folder's package, or the `integration` package.
fn bench_package(root: &std::path::Path, krate: &str) -> Result<String, String> {
    if krate == "integration" {
        Ok(krate.to_string())
    } else {
        package_name(root, krate)
    }
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let flags = parse_flags(args)?;
    let root = project_root();
    let out_dir = root.join("target/bench");
    fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let rows_path = out_dir.join("rows.jsonl");

    let fixed_layout = Command::new("setarch")
        .args([std::env::consts::ARCH, "--addr-no-randomize", "true"])
        .status()
        .is_ok_and(|status| status.success());
    if !fixed_layout {
        println!("note: `setarch --addr-no-randomize` is not available; layouts vary per run");
    }
    // Held to the end of the run, whatever it returns (see `free_pages`).
    let reporting = crate::free_pages::pause(crate::free_pages::ORDER_PATH);
    println!("free page reporting: {}", reporting.state);
    let mut machine = machine();
    machine["address_randomization"] = json!(if fixed_layout { "off" } else { "on" });
    machine["free_page_reporting"] = json!(reporting.state);
    let machine_path = out_dir.join("machine.json");
    let machine_text =
        serde_json::to_string_pretty(&machine).expect("a JSON value always serializes");
    fs::write(&machine_path, machine_text + "\n")
        .map_err(|e| format!("cannot write {}: {e}", machine_path.display()))?;
    println!("machine: {machine}");

    let mut crates = crates_with_file(&root, "benches/vs_peers.rs")?;
    // The `integration` package (tests/) benchmarks the demo's whole stack.
    if root.join("tests/benches/vs_peers.rs").is_file() {
        crates.push("integration".to_string());
    }
    if let Some(only) = &flags.only
        && crates.contains(only)
    {
        crates.retain(|krate| krate == only);
    }
    let first = if flags.twice {
        println!("\n== --twice: run 1 of 2");
        let mut first = run_benches(&root, &crates, &flags, fixed_layout, &rows_path, None)?;
        measure_again(&root, &flags, fixed_layout, &rows_path, None, &mut first)?;
        println!("\n== --twice: run 2 of 2");
        Some(first)
    } else {
        None
    };
    let mut rows = run_benches(&root, &crates, &flags, fixed_layout, &rows_path, None)?;
    let again = measure_again(
        &root,
        &flags,
        fixed_layout,
        &rows_path,
        first.as_deref(),
        &mut rows,
    )?;
    let report_path = out_dir.join("report.json");
    fs::write(&report_path, render_report(&rows))
        .map_err(|e| format!("cannot write {}: {e}", report_path.display()))?;
    let table = render_table(&rows);
    println!("\n{table}");
    println!(
        "wrote {} ({} rows) and {}",
        report_path.display(),
        rows.len(),
        machine_path.display()
    );
    if flags.write_docs {
        let docs_path = root.join("docs/benchmarks.md");
        fs::write(&docs_path, render_docs(&table, &machine, &crates, &rows))
            .map_err(|e| format!("cannot write {}: {e}", docs_path.display()))?;
        println!("wrote {}", docs_path.display());
        write_readme_tables(&root, &crates, &rows, &machine)?;
    }
    match first {
        Some(first) => check_stability(&out_dir, &first, &rows, &again),
        None => Ok(()),
    }
}

/// `--twice`: writes run 1's report beside run 2's, and the rows' movement between the two
/// runs into `target/bench/stability.md`; an error when a row moved more than
/// [`MOVED_LIMIT`] (or was measured in one run only).
fn check_stability(
    out_dir: &Path,
    first: &[Row],
    second: &[Row],
    again: &[(String, usize)],
) -> Result<(), String> {
    let first_path = out_dir.join("report-run1.json");
    fs::write(&first_path, render_report(first))
        .map_err(|e| format!("cannot write {}: {e}", first_path.display()))?;
    let movements = movements(first, second);
    let table = render_stability(&movements, again);
    let stability_path = out_dir.join("stability.md");
    fs::write(&stability_path, &table)
        .map_err(|e| format!("cannot write {}: {e}", stability_path.display()))?;
    println!("\n{table}");
    println!(
        "wrote {} (run 1; report.json is run 2) and {}",
        first_path.display(),
        stability_path.display()
    );
    let moved = movements.iter().filter(|row| row.moved()).count();
    if moved == 0 {
        Ok(())
    } else {
        Err(format!(
            "{moved} of {} rows moved more than {:.0}% between the two runs (see {})",
            movements.len(),
            MOVED_LIMIT * 100.0,
            stability_path.display()
        ))
    }
}

/// The most two runs' median ratios of a row may differ by: the larger over the smaller,
/// less one (issue 10's "within 15% of each other", whichever run is taken as the base).
pub(crate) const MOVED_LIMIT: f64 = 0.15;

/// One row as measured by both runs of `--twice` (`None`: not measured in that run).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Movement {
    pub(crate) krate: String,
    pub(crate) bench: String,
    pub(crate) baseline: String,
    pub(crate) first: Option<Row>,
    pub(crate) second: Option<Row>,
}

impl Movement {
    /// The larger median ratio over the smaller, less one (`None` unless both runs have it).
    pub(crate) fn movement(&self) -> Option<f64> {
        let (first, second) = (self.first.as_ref()?.ratio, self.second.as_ref()?.ratio);
        Some(first.max(second) / first.min(second) - 1.0)
    }

    /// Whether the row moved more than [`MOVED_LIMIT`], or is missing from a run.
    pub(crate) fn moved(&self) -> bool {
        self.movement()
            .is_none_or(|movement| movement > MOVED_LIMIT)
    }

    /// Whether the two runs measured the row with the cores placed differently (see
    /// [`Row::placement_ns`]): then they measured different machines, and the row is
    /// measured again (see [`measure_again`]).
    pub(crate) fn placement_differs(&self) -> bool {
        match (&self.first, &self.second) {
            (Some(first), Some(second)) => placed_otherwise(first, second),
            _ => false,
        }
    }

    /// Whether the two runs measured the row with the core at different speeds (their
    /// `canary_ns` more than [`SLOWED_ROW`] apart): another tenant on the core's other
    /// hyperthread during one of them, which the row was measured again to avoid.
    pub(crate) fn core_speed_differs(&self) -> bool {
        match (&self.first, &self.second) {
            (Some(first), Some(second)) => {
                canaries_apart(first.canary_ns, second.canary_ns) > SLOWED_ROW
            }
            _ => false,
        }
    }
}

/// Whether two measurements of a row found the cores placed differently (rows without a
/// placement never do).
fn placed_otherwise(first: &Row, second: &Row) -> bool {
    match (first.placement_ns, second.placement_ns) {
        (Some(first), Some(second)) => !xtask::harness::same_placement(first, second),
        _ => false,
    }
}

/// How far apart two canaries (`canary_ns`) ran: the slower over the faster (1.0 when
/// either is missing, as for rows that time whole operations).
fn canaries_apart(first: Option<f64>, second: Option<f64>) -> f64 {
    match (first, second) {
        (Some(first), Some(second)) => first.max(second) / first.min(second),
        _ => 1.0,
    }
}

/// How many passes of measuring again a run starts at most (see [`measure_again`]).
const REMEASURES: usize = 4;

/// How many separate processes, one pass apart, measure every row of several threads at
/// least (see [`representative`]). A contended peer's cost has windows of minutes in which
/// it runs otherwise, at the same placement of the cores and the same core speed: four
/// back-to-back runs of one row gave seatbelt 300, 290, 284 ns, and a pair of runs 250 and
/// 338 ns; tower-resilience 904–927 ns and once 1215. More rounds within one process cannot
/// see that: they all fall in one window.
const WINDOWS: usize = 3;

/// Two canaries (`canary_ns`) of a row are the same state of the core when neither ran more
/// than this many times slower than the other; a row whose canary ran slower than that
/// against its target (see [`needs_again`]) is measured again.
const SLOWED_ROW: f64 = 1.08;

/// The run's fastest row canary among the rows timed by `timer`: the core's speed during
/// the quietest such row. Each row's canary is already the median of its readings (so not
/// one lucky reading); the fastest row, not the median one, because in one run the other
/// hyperthread was busy through most rows (canaries of 2.7–2.8 ns against 2.0–2.1 ns in
/// the quiet ones), and against the median the slowed rows looked usual.
///
/// Only rows timed alike: a canary timed in the thread's CPU time (one-thread rows) and
/// one timed on the wall clock (rows of several threads) are not the same measurement. On
/// one host the first read 1.36–1.56 ns in every row of two runs while the second read
/// 1.03 ns in one run, so against the fastest of either kind every one-thread row was
/// "slowed" and measured again three times, to no end.
fn fastest_canary(rows: &[Row], timer: &str) -> Option<f64> {
    rows.iter()
        .filter(|row| row.timer == timer)
        .filter_map(|row| row.canary_ns)
        .reduce(f64::min)
}

/// How far a row's measurement is from the host state it should have been taken in.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Mismatch {
    /// Run 2 of `--twice` found the cores placed otherwise than run 1 did.
    placement_differs: bool,
    /// The row's canary against its target, the slower over the faster (1.0: the same).
    canary: f64,
}

impl Mismatch {
    /// Whether the row was measured on another machine than its target, in effect.
    fn wants_again(self) -> bool {
        self.placement_differs || self.canary > SLOWED_ROW
    }

    /// Orders two measurements of a row: a matching placement counts more than any canary.
    fn better_than(self, other: Mismatch) -> bool {
        (u8::from(self.placement_differs), self.canary)
            < (u8::from(other.placement_differs), other.canary)
    }
}

/// How far `row` is from the host state it should be measured in. In run 2 of `--twice`
/// (a `reference`: run 1), that is run 1's state of the row: the same placement of the
/// cores and a canary within [`SLOWED_ROW`] of run 1's, either way, since a row measured
/// quiet in one run and slowed in the other compares two machines (one pair of runs:
/// `rejection, 1 thread vs failsafe` 1.33× with the canary at 2.66 ns, 1.92× at 2.03 ns).
/// Otherwise it is the core at its quietest in the run (`fastest`): another tenant on the
/// core's other hyperthread for the whole row slows the row's canary, which the harness's
/// own per-round canary, judging rounds against the row's usual speed, cannot see.
fn needs_again(row: &Row, fastest: Option<f64>, reference: Option<&[Row]>) -> Mismatch {
    let old = reference.and_then(|reference| reference.iter().find(|old| old.key() == row.key()));
    let placement_differs = old.is_some_and(|old| placed_otherwise(old, row));
    let target = match old {
        Some(old) => old.canary_ns,
        None => fastest,
    };
    Mismatch {
        placement_differs,
        canary: canaries_apart(row.canary_ns, target),
    }
}

/// Whether a row is measured in [`WINDOWS`] processes: a row of several threads (it has a
/// placement), whose contended peers drift from window to window (see [`WINDOWS`]).
fn wants_windows(row: &Row) -> bool {
    row.placement_ns.is_some()
}

/// The measurement of a row to report among all of its `measured` (at least one): of those
/// taken in the host state the row should have been measured in (see [`needs_again`]), the
/// largest group at one placement of the cores, and in it the measurement of the median
/// ratio (the lower of the two middle ones), so a single window in which a peer ran
/// otherwise does not decide the row. When none was taken in that state, the one closest to
/// it (see [`Mismatch::better_than`]).
fn representative(measured: &[Row], fastest: Option<f64>, reference: Option<&[Row]>) -> Row {
    let fitting: Vec<&Row> = measured
        .iter()
        .filter(|row| !needs_again(row, fastest, reference).wants_again())
        .collect();
    if fitting.is_empty() {
        return measured
            .iter()
            .reduce(|best, row| {
                let mismatch = needs_again(row, fastest, reference);
                if mismatch.better_than(needs_again(best, fastest, reference)) {
                    row
                } else {
                    best
                }
            })
            .expect("a row is measured at least once")
            .clone();
    }
    let mut cluster: Vec<&Row> = Vec::new();
    for row in &fitting {
        let alike: Vec<&Row> = fitting
            .iter()
            .copied()
            .filter(|other| !placed_otherwise(row, other))
            .collect();
        if alike.len() > cluster.len() {
            cluster = alike;
        }
    }
    cluster.sort_by(|a, b| a.ratio.total_cmp(&b.ratio));
    cluster[(cluster.len() - 1) / 2].clone()
}

/// Why a row is measured again, for the output.
fn why_again(mismatch: Mismatch, twice: bool) -> String {
    if mismatch.placement_differs {
        "cores placed otherwise than in run 1".to_string()
    } else if twice {
        format!("canary {:.2}× off run 1's", mismatch.canary)
    } else {
        format!("canary {:.2}× the run's fastest", mismatch.canary)
    }
}

/// Measures again, up to [`REMEASURES`] times, every row measured while the machine was
/// not the machine it should have been (see [`needs_again`]): on a slowed core, or, in run
/// 2 of `--twice` (a `reference`: run 1), in another host state than run 1's (the cores
/// placed otherwise, the canary slowed or quickened). What a row of ours against a peer
/// measures depends on both (one peer's contended ratio was 45× with the cores 72 ns apart
/// and 100× at 474 ns; a one-thread ratio fell from 14.9× to 8.8× with ours slowed by half
/// and the peer, waiting on memory, not), so a row measured then is a measurement of
/// another machine. It also measures every row of several threads until [`WINDOWS`]
/// processes have (see [`wants_windows`]). The row reported is chosen from all of its
/// measurements (see [`representative`]). Stops starting new passes after [`REMEASURE_BUDGET`]:
/// a host busy for half an hour does not come back by waiting. Returns how many times each
/// row ([`Row::key`]) was measured again. Nothing is measured again under `--quick` (a
/// smoke test) or `--rounds` (a look with fixed rounds: one pass is what was asked for).
fn measure_again(
    root: &Path,
    flags: &Flags,
    fixed_layout: bool,
    rows_path: &Path,
    reference: Option<&[Row]>,
    rows: &mut [Row],
) -> Result<Vec<(String, usize)>, String> {
    let mut again: Vec<(String, usize)> = Vec::new();
    if flags.quick || flags.rounds.is_some() {
        return Ok(again);
    }
    // Every measurement of each row, the first pass's first.
    let mut measured: Vec<Vec<Row>> = rows.iter().map(|row| vec![row.clone()]).collect();
    let started = std::time::Instant::now();
    for _ in 0..REMEASURES {
        if started.elapsed() > REMEASURE_BUDGET {
            println!(
                "\n== not measuring again: {} min spent on it in this run",
                REMEASURE_BUDGET.as_secs() / 60
            );
            break;
        }
        // Judged against the rows as they stood when the pass began.
        let before = rows.to_vec();
        let fastest = |row: &Row| fastest_canary(&before, &row.timer);
        let targets: Vec<Row> = rows
            .iter()
            .zip(&measured)
            .filter(|(row, times)| {
                needs_again(row, fastest(row), reference).wants_again()
                    || (wants_windows(row) && times.len() < WINDOWS)
            })
            .map(|(row, _)| row.clone())
            .collect();
        if targets.is_empty() {
            break;
        }
        let mut crates: Vec<String> = targets.iter().map(|row| row.krate.clone()).collect();
        crates.dedup();
        for krate in crates {
            let (mut names, mut why) = (Vec::new(), Vec::new());
            for row in targets.iter().filter(|row| row.krate == krate) {
                let mismatch = needs_again(row, fastest(row), reference);
                let reason = if mismatch.wants_again() {
                    why_again(mismatch, reference.is_some())
                } else {
                    format!("of several threads: measured in {WINDOWS} processes")
                };
                names.push(row.key().to_lowercase());
                why.push(format!("{} vs {} ({reason})", row.bench, row.baseline));
            }
            println!("\n== measuring again: {}", why.join("; "));
            let only = names.join("\n");
            let fresh = run_benches(root, &[krate], flags, fixed_layout, rows_path, Some(&only))?;
            for row in fresh {
                let Some(index) = rows.iter().position(|old| old.key() == row.key()) else {
                    continue;
                };
                let target = fastest(&row);
                let new = needs_again(&row, target, reference);
                measured[index].push(row);
                let chosen = representative(&measured[index], target, reference);
                let ratios: Vec<String> = measured[index]
                    .iter()
                    .map(|row| format!("{:.2}×", row.ratio))
                    .collect();
                let slot = &mut rows[index];
                println!(
                    "   {} vs {}: canary {} ns ({}); ratios so far {}, reporting {:.2}×",
                    slot.bench,
                    slot.baseline,
                    measured[index]
                        .last()
                        .and_then(|row| row.canary_ns)
                        .map_or("-".to_string(), |ns| format!("{ns:.2}")),
                    if new.wants_again() {
                        why_again(new, reference.is_some())
                    } else {
                        "host as it should be".to_string()
                    },
                    ratios.join(", "),
                    chosen.ratio
                );
                *slot = chosen;
                match again.iter_mut().find(|(name, _)| *name == slot.key()) {
                    Some((_, count)) => *count += 1,
                    None => again.push((slot.key(), 1)),
                }
            }
        }
    }
    Ok(again)
}

/// How long one run spends measuring rows again at most before it stops starting passes
/// (one pass on a busy host, with most rows slowed, took about 3 minutes).
const REMEASURE_BUDGET: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// Pairs the rows of two runs by crate, bench and baseline, in the order of the second run
/// (rows of the first run alone follow).
pub(crate) fn movements(first: &[Row], second: &[Row]) -> Vec<Movement> {
    let key = |row: &Row| (row.krate.clone(), row.bench.clone(), row.baseline.clone());
    let mut unmatched: Vec<&Row> = first.iter().collect();
    let mut paired = Vec::new();
    for row in second {
        let earlier = unmatched
            .iter()
            .position(|candidate| key(candidate) == key(row))
            .map(|index| unmatched.remove(index).clone());
        paired.push(Movement {
            krate: row.krate.clone(),
            bench: row.bench.clone(),
            baseline: row.baseline.clone(),
            first: earlier,
            second: Some(row.clone()),
        });
    }
    paired.extend(unmatched.into_iter().map(|row| Movement {
        krate: row.krate.clone(),
        bench: row.bench.clone(),
        baseline: row.baseline.clone(),
        first: Some(row.clone()),
        second: None,
    }));
    paired
}

/// The two runs side by side, each row's change (run 2 against run 1) flagged when it
/// moved more than [`MOVED_LIMIT`].
pub(crate) fn render_stability(movements: &[Movement], again: &[(String, usize)]) -> String {
    let mut table = String::from(
        "| crate | bench | baseline | run 1 ratio (spread) | run 2 ratio (spread) | change |\n\
         |---|---|---|---:|---:|---:|\n",
    );
    let ratio = |row: &Option<Row>| {
        row.as_ref().map_or("not measured".to_string(), |row| {
            let placed = row
                .placement_ns
                .map_or(String::new(), |ns| format!(", cores {ns:.0} ns apart"));
            let placed = match row.canary_ns {
                Some(ns) => format!("{placed}, canary {ns:.2} ns"),
                None => placed,
            };
            format!(
                "{:.2}× ({:.2}–{:.2}{placed})",
                row.ratio, row.min_ratio, row.max_ratio
            )
        })
    };
    for movement in movements {
        let change = match (&movement.first, &movement.second) {
            (Some(first), Some(second)) => {
                let change = format!("{:+.0}%", (second.ratio / first.ratio - 1.0) * 100.0);
                if movement.moved() {
                    format!("{change} **moved**")
                } else {
                    change
                }
            }
            _ => "**missing**".to_string(),
        };
        let key = movement
            .second
            .as_ref()
            .or(movement.first.as_ref())
            .map(Row::key);
        let change = match again.iter().find(|(name, _)| Some(name) == key.as_ref()) {
            Some((_, times)) => {
                format!("{change} (run 2 measured it {times} more times)")
            }
            None => change,
        };
        let change = if movement.placement_differs() {
            format!("{change} **placement differs**")
        } else {
            change
        };
        let change = if movement.core_speed_differs() {
            format!("{change} **core speed differs**")
        } else {
            change
        };
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {change} |",
            cell(&movement.krate),
            cell(&movement.bench),
            cell(&movement.baseline),
            ratio(&movement.first),
            ratio(&movement.second),
        );
    }
    let moved = movements.iter().filter(|row| row.moved()).count();
    let _ = writeln!(
        table,
        "\n{moved} of {} rows moved more than {:.0}% between the two runs (larger median \
         ratio over the smaller).",
        movements.len(),
        MOVED_LIMIT * 100.0
    );
    table
}

/// Runs every crate's benchmark once, each appending its rows to `rows_path`, and returns
/// the rows; `only` (lines of alternatives) overrides `--only`.
fn run_benches(
    root: &Path,
    crates: &[String],
    flags: &Flags,
    fixed_layout: bool,
    rows_path: &Path,
    only: Option<&str>,
) -> Result<Vec<Row>, String> {
    let _ = fs::remove_file(rows_path);
    for krate in crates {
        let package = bench_package(root, krate)?;
        let args = ["bench", "-p", &package, "--bench", "vs_peers", "--locked"];
        // Without address-space randomization, every run lays the benchmark out in memory
        // the same way: which hot words alias (4 KiB apart, or on one cache line) no longer
        // changes from run to run, and with it nanosecond rows that moved by half.
        let mut command = if fixed_layout {
            let mut command = Command::new("setarch");
            command.args([std::env::consts::ARCH, "--addr-no-randomize", "cargo"]);
            command
        } else {
            Command::new("cargo")
        };
        let rustflags = bench_rustflags(std::env::var("RUSTFLAGS").ok().as_deref());
        command
            .args(args)
            .current_dir(root)
            .env("BENCH_REPORT", rows_path)
            .env("RUSTFLAGS", &rustflags)
            .env("CARGO_TARGET_DIR", root.join("target/bench-build"));
        let mut shown = Vec::new();
        if fixed_layout {
            shown.push(format!(
                "setarch {} --addr-no-randomize",
                std::env::consts::ARCH
            ));
        }
        if flags.quick {
            command.env("BENCH_QUICK", "1");
            shown.push("BENCH_QUICK=1".to_string());
        }
        if let Some(rounds) = flags.rounds {
            command.env("BENCH_ROUNDS", rounds.to_string());
            shown.push(format!("BENCH_ROUNDS={rounds}"));
        }
        let only = only.or_else(|| flags.only.as_deref().filter(|only| *only != krate));
        if let Some(only) = only {
            command.env("BENCH_ONLY", only);
            shown.push(format!("BENCH_ONLY=\"{}\"", only.replace('\n', "\\n")));
        }
        shown.push(format!(
            "RUSTFLAGS=\"{rustflags}\" CARGO_TARGET_DIR=target/bench-build cargo {}",
            args.join(" ")
        ));
        println!("\n== {}", shown.join(" "));
        let status = command
            .status()
            .map_err(|e| format!("could not start cargo: {e}"))?;
        if !status.success() {
            return Err(format!(
                "the `{krate}` benchmark failed; rerun `cargo bench -p {package} --bench vs_peers` to see why"
            ));
        }
    }
    let text = match fs::read_to_string(rows_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", rows_path.display())),
    };
    parse_rows(&text)
}

/// Writes each crate's own rows between the markers in its README (the demo's full-stack
/// rows into the root README).
fn write_readme_tables(
    root: &Path,
    crates: &[String],
    rows: &[Row],
    machine: &Value,
) -> Result<(), String> {
    for krate in crates {
        // The demo's full-stack rows belong to the root README, where the demo is.
        let (folder, docs_link) = if krate == "integration" {
            (root.to_path_buf(), "docs/benchmarks.md")
        } else {
            (root.join("crates").join(krate), "../../docs/benchmarks.md")
        };
        let readme = folder.join("README.md");
        let Ok(text) = fs::read_to_string(&readme) else {
            continue;
        };
        let own: Vec<Row> = rows
            .iter()
            .filter(|row| &row.krate == krate)
            .cloned()
            .collect();
        if let Some(updated) =
            replace_marked_table(&text, &render_readme_table(&own, machine, docs_link))
        {
            fs::write(&readme, updated)
                .map_err(|e| format!("cannot write {}: {e}", readme.display()))?;
            println!("wrote the benchmark table in {}", readme.display());
        }
    }
    Ok(())
}

/// Where `--write-docs` writes a crate's own rows into its README.
const TABLE_BEGIN: &str =
    "<!-- bench-table:begin (written by `cargo xtask bench --write-docs`) -->";
const TABLE_END: &str = "<!-- bench-table:end -->";

/// Replaces what lies between the README's markers; `None` when it has none.
fn replace_marked_table(text: &str, table: &str) -> Option<String> {
    let start = text.find(TABLE_BEGIN)? + TABLE_BEGIN.len();
    let end = start + text[start..].find(TABLE_END)?;
    Some(format!("{}\n{table}{}", &text[..start], &text[end..]))
}

fn render_readme_table(rows: &[Row], machine: &Value, docs_link: &str) -> String {
    let field = |key: &str| match &machine[key] {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    format!(
        "The latest full run of `cargo xtask bench --write-docs` ({}, {} cores, load average \
         at the start {}; every row of every crate, and how to read them, in \
         [`docs/benchmarks.md`]({docs_link})). Ratio = baseline / ours, the \
         median of the interleaved rounds with the smallest and largest as spread.\n\n{}",
        field("date"),
        field("cores"),
        field("load_average"),
        render_table(rows)
    )
}

/// Parses the benchmarks' JSON lines, rejecting a row that could not be a measurement.
pub(crate) fn parse_rows(text: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("benchmark row on line {}", index + 1);
        let value: Value =
            serde_json::from_str(line).map_err(|e| format!("{at} is not JSON ({e}): {line}"))?;
        let text_field = |key: &str| -> Result<String, String> {
            match value.get(key).and_then(Value::as_str) {
                Some(text) if !text.is_empty() => Ok(text.to_string()),
                _ => Err(format!("{at} needs a non-empty string `{key}`: {line}")),
            }
        };
        let number_field = |key: &str| -> Result<f64, String> {
            match value.get(key).and_then(Value::as_f64) {
                Some(number) if number.is_finite() && number > 0.0 => Ok(number),
                _ => Err(format!(
                    "{at} needs a positive finite number `{key}`: {line}"
                )),
            }
        };
        let goal = match value.get("goal") {
            None | Some(Value::Null) => None,
            Some(_) => Some(number_field("goal")?),
        };
        let rounds = value
            .get("rounds")
            .and_then(Value::as_u64)
            .filter(|&rounds| rounds > 0)
            .ok_or_else(|| format!("{at} needs a positive integer `rounds`: {line}"))?;
        let row = Row {
            krate: text_field("crate")?,
            bench: text_field("bench")?,
            unit: text_field("unit")?,
            ours: number_field("ours")?,
            baseline: text_field("baseline")?,
            baseline_value: number_field("baseline_value")?,
            ratio: number_field("ratio")?,
            min_ratio: number_field("min_ratio")?,
            max_ratio: number_field("max_ratio")?,
            rounds,
            pinned: value
                .get("pinned")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            timer: value
                .get("timer")
                .and_then(Value::as_str)
                .unwrap_or("wall")
                .to_string(),
            goal,
            placement_ns: match value.get("placement_ns") {
                None | Some(Value::Null) => None,
                Some(_) => Some(number_field("placement_ns")?),
            },
            other_placement_rounds: value.get("other_placement_rounds").and_then(Value::as_u64),
            canary_ns: match value.get("canary_ns") {
                None | Some(Value::Null) => None,
                Some(_) => Some(number_field("canary_ns")?),
            },
        };
        if !(row.min_ratio <= row.ratio && row.ratio <= row.max_ratio) {
            return Err(format!(
                "{at} has a median ratio outside its spread (min ≤ ratio ≤ max): {line}"
            ));
        }
        rows.push(row);
    }
    Ok(rows)
}

pub(crate) fn render_report(rows: &[Row]) -> String {
    let array = Value::Array(rows.iter().map(Row::to_json).collect());
    let mut text = serde_json::to_string_pretty(&array).expect("a JSON value always serializes");
    text.push('\n');
    text
}

/// A Markdown table: readable on a terminal and pasteable into a README as it is.
pub(crate) fn render_table(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "no benchmark rows: no crate has a `benches/vs_peers.rs` that reported any".into();
    }
    let mut table = String::from(
        "| crate | bench | unit | ours | baseline | baseline value | ratio (median) | spread (min–max) | rounds | cores apart | goal |\n\
         |---|---|---|---:|---|---:|---:|---:|---:|---:|---|\n",
    );
    for row in rows {
        let goal = match (row.goal, row.verdict()) {
            (Some(goal), Verdict::Met) => format!("≥ {} met", significant(goal)),
            (Some(goal), Verdict::Missed) => format!("≥ {} **missed**", significant(goal)),
            (Some(goal), _) => {
                let median = if row.goal_met() == Some(true) {
                    "median meets it"
                } else {
                    "median misses it"
                };
                format!("≥ {} inconclusive ({median})", significant(goal))
            }
            (None, _) => String::new(),
        };
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} | {:.2}× | {:.2}–{:.2} | {} | {} | {} |",
            cell(&row.krate),
            cell(&row.bench),
            cell(&row.unit),
            significant(row.ours),
            cell(&row.baseline),
            significant(row.baseline_value),
            row.ratio,
            row.min_ratio,
            row.max_ratio,
            row.rounds,
            row.placement_ns
                .map_or(String::new(), |ns| format!("{ns:.0} ns")),
            goal
        );
    }
    table
}

/// A table cell: a `|` in a name (`FmtSpan::NEW|CLOSE`) would end the cell early.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// Three significant digits, the precision a noisy machine supports.
fn significant(value: f64) -> String {
    let text = if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    };
    if text.contains('.') {
        // 0.625 stays, 0.500 reads 0.5, 3.50 reads 3.5; integers keep their zeros.
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// What the machine was at the start of the run: `target/bench/machine.json`.
fn machine() -> Value {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let memory_gib = fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        info.lines()
            .next()
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib / (1024 * 1024))
    });
    let clock_source = read_trimmed(Path::new(
        "/sys/devices/system/clocksource/clocksource0/current_clocksource",
    ));
    let load_average = read_trimmed(Path::new("/proc/loadavg")).map(|text| {
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    });
    json!({
        "cpu": cpu,
        "cores": cores,
        "memory_gib": memory_gib,
        "clock_source": clock_source.unwrap_or_else(|| "unknown".into()),
        "load_average": load_average.unwrap_or_else(|| "unknown".into()),
        "kernel": command_output("uname", &["-r"]),
        "rustc": command_output("rustc", &["--version"]),
        "date": command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
    })
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_string())
}

/// How the rows' threads were pinned and timed, for the docs page's header.
fn pinning_and_timing(rows: &[Row]) -> (&'static str, &'static str) {
    let pinned = if rows.iter().all(|row| row.pinned) {
        "each measuring thread pinned to its own core"
    } else {
        "threads NOT pinned on this machine (the OS reported no core ids)"
    };
    let timing = if rows.iter().any(|row| row.timer == "thread-cpu") {
        "one-thread nanosecond rows timed in the thread's CPU time, multi-thread rows and \
         whole operations in wall-clock time"
    } else {
        "every row timed in wall-clock time (no thread CPU clock on this machine)"
    };
    (pinned, timing)
}

fn render_docs(table: &str, machine: &Value, crates: &[String], rows: &[Row]) -> String {
    let field = |key: &str| match &machine[key] {
        Value::String(text) => text.clone(),
        Value::Null => "unknown".into(),
        other => other.to_string(),
    };
    let (pinned, timing) = pinning_and_timing(rows);
    let inconclusive = rows
        .iter()
        .filter(|row| row.verdict() == Verdict::Inconclusive)
        .count();
    format!(
        "# Benchmarks\n\n\
         Generated by `cargo xtask bench --write-docs`; do not edit by hand.\n\n\
         - date: {date}\n\
         - machine: {cpu}, {cores} cores, {memory} GiB memory, clock source `{clock}`, \
           load average at the start {load}\n\
         - kernel: {kernel}; toolchain: {rustc}; address-space randomization for the \
           benchmarks: {aslr}; free page reporting to the host: {reporting}\n\
         - crates measured: {crates}; {pinned}; {timing}\n\n\
         ## How to read it\n\n\
         Every row is measured in rounds: each round times a batch of ours and a batch of the \
         baseline back to back (the order alternating from round to round) and gives one ratio \
         `baseline / ours`; above 1 means ours is faster (or smaller). `ratio` is the median of \
         the rounds' ratios, `spread` their smallest and largest, and `ours` and `baseline \
         value` each side's median, for scale. The benchmarks are built with every loop and \
         function aligned to 64 bytes, so that where a change elsewhere moves a timed loop \
         does not change its speed (unaligned, the same bare call measured 1.35 to 1.90 ns \
         from build to build). A row runs its rounds (41 for nanosecond rows), \
         then more while the median's 95% confidence interval is wider than ±4% of it, up to \
         four times as many (a row timing whole operations adds rounds only within a 45-second \
         budget, a row of several threads within 60 seconds), so \
         `rounds` differs from row to row. Nanosecond rows use a batch calibrated for each side \
         to 1 ms (4 ms on several threads), after a warm-up, with `black_box` on every input and output; a one-thread round times \
         sixteen batches of each side, alternating, and keeps each side's fastest. A canary (a \
         fixed loop of simple instructions) is timed around every round of a nanosecond row: \
         a round around which it ran more than 8% slower than its median during the row is dropped, up to \
         as many as the row may run (on these virtual machines the core's other hyperthread \
         can be busy for seconds, and that slows a tight loop of simple instructions by up to \
         half while a body waiting on a locked instruction or a clock read hardly notices; \
         against its median, not its fastest, since on some hosts that hyperthread is busy \
         nearly all the time). In \
         a row of several threads every batch starts at a spinning barrier, and a batch in \
         which a thread was preempted and waited for a CPU (or started late) for more than 2% \
         of it, or before which a thread's canary ran slowed, is timed \
         again, up to 8 times, and the round is dropped if it stays disturbed: the other \
         threads ran uncontended meanwhile; during such a row the harness holds \
         `/dev/cpu_dma_latency` at 0, so an idle vCPU polls rather than halts and a thread \
         parked on a contended lock wakes alike in every run. Every round of a row of several \
         threads is bracketed by a probe of how far apart the host has put the two measuring \
         cores (a cache line handed back and forth: about 70 ns round trip when they share a \
         cache, about 480 ns when they do not; the host moves them every few seconds to \
         minutes, and a contended peer's ratio follows, e.g. 45× at one and 100× at the \
         other); a round across which the placement changed is dropped, the row keeps the \
         rounds at its usual placement, and `cores apart` gives that round trip. A nanosecond \
         row also records its canary's usual time; a row whose canary ran more than 8% slower \
         than the run's fastest row's timed by the same clock (the other hyperthread busy for the whole row, which the \
         per-round check cannot see: one one-thread ratio read 14.9× and 8.8× that way, ours \
         slowed by half and the peer, waiting on memory, hardly) is measured again, in up to \
         four more passes, and the better measurement kept. A contended peer also has windows \
         of minutes in which it runs otherwise at the same placement and core speed \
         (seatbelt's 2-thread call 250, 293 and 338 ns in three runs), so every row of \
         several threads is measured in at least three processes, one pass apart, and the \
         row reported is the median-ratio one of the largest group of them at one placement. \
         Before every timed whole \
         operation the system's dirty pages are written back (`sync`), so one side's pending \
         writes do not land in the other's time, and for the whole run the guest's free page \
         reporting is paused where the kernel has it (a virtual machine that hands freed \
         memory back to its host makes whichever allocation next gets that memory wait for \
         the host to fault it in again: a 242 MB write into the page cache took 0.05 s or \
         0.5 s at random that way, and the original plan's save with it); those rows keep every round (a canary read \
         around a save or a load of requests ran slowed by the operation's own aftermath \
         after most rounds, and dropping them chose which rounds counted: the loopback row \
         gave 0.93× to 1.13× over three runs that way, 0.96× to 1.03× keeping all). A `goal` \
         is the smallest median ratio the crate's issue asks for: **met** when every round \
         reaches it, **missed** when none does, and *inconclusive* when the spread straddles \
         it (the median's side is given; {inconclusive} rows here). Absolute numbers vary \
         from machine to machine and from run to run; compare ratios.\n\n\
         {table}\n\
         Reproduce: `cargo xtask bench` (writes `target/bench/report.json` and \
         `target/bench/machine.json`); `cargo xtask bench --only <crate or row text>` for one \
         area, `--rounds N` to fix the rounds; `cargo xtask bench --twice` runs everything \
         twice and lists, in `target/bench/stability.md`, every row whose median ratio moved \
         more than 15% between the runs (failing if one did), after measuring again, in up \
         to four more passes, any row that run 2 found in another host state than run 1 did (the \
         cores placed otherwise, or the canary more than 8% off run 1's either way); `cargo xtask bench \
         --write-docs` regenerates this page.\n",
        date = field("date"),
        cpu = field("cpu"),
        cores = field("cores"),
        memory = field("memory_gib"),
        clock = field("clock_source"),
        load = field("load_average"),
        kernel = field("kernel"),
        rustc = field("rustc"),
        aslr = field("address_randomization"),
        reporting = field("free_page_reporting"),
        crates = crates.join(", "),
    )
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map_or_else(|| "unknown".into(), |text| text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAKE_ROWS: &str = r#"
{"crate":"breaker","bench":"closed success, 1 thread","unit":"ns/call","ours":1.5,"baseline":"failsafe 1.3","baseline_value":12.0,"ratio":8.0,"min_ratio":7.0,"max_ratio":9.0,"rounds":41,"pinned":true,"goal":3.5}
{"crate":"breaker","bench":"closed success, 1 thread","unit":"ns/call","ours":1.5,"baseline":"bare call","baseline_value":1.0,"ratio":0.66,"min_ratio":0.6,"max_ratio":0.7,"rounds":41,"pinned":true}
"#;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn benchmarks_are_built_aligned_on_top_of_the_callers_flags() {
        assert_eq!(bench_rustflags(None), ALIGNED);
        assert_eq!(bench_rustflags(Some("  ")), ALIGNED);
        assert_eq!(
            bench_rustflags(Some("-C target-cpu=native")),
            format!("-C target-cpu=native {ALIGNED}")
        );
    }

    #[test]
    fn report_has_the_documented_fields() {
        let rows = parse_rows(FAKE_ROWS).unwrap();
        assert_eq!(rows.len(), 2);
        let report: Value = serde_json::from_str(&render_report(&rows)).unwrap();
        let first = &report[0];
        for key in ["crate", "bench", "unit", "baseline", "verdict"] {
            assert!(first[key].is_string(), "{key} must be a string in {first}");
        }
        for key in [
            "ours",
            "baseline_value",
            "ratio",
            "min_ratio",
            "max_ratio",
            "rounds",
            "goal",
        ] {
            assert!(first[key].is_number(), "{key} must be a number in {first}");
        }
        assert_eq!(first["goal_met"], json!(true));
        assert_eq!(first["verdict"], json!("met"));
        assert_eq!(
            first["ratio"],
            json!(8.0),
            "the benchmark's median ratio is kept"
        );
        assert!(report[1].get("goal_met").is_none(), "no goal, no verdict");
    }

    #[test]
    fn a_spread_that_straddles_the_goal_is_inconclusive() {
        let straddling = FAKE_ROWS.replace("\"min_ratio\":7.0", "\"min_ratio\":3.0");
        let rows = parse_rows(&straddling).unwrap();
        assert_eq!(rows[0].verdict(), Verdict::Inconclusive);
        assert_eq!(rows[0].goal_met(), Some(true));
        let table = render_table(&rows);
        assert!(table.contains("inconclusive (median meets it)"), "{table}");
        assert!(!table.contains(" met |"), "{table}");
    }

    #[test]
    fn table_says_whether_each_goal_was_met() {
        let table = render_table(&parse_rows(FAKE_ROWS).unwrap());
        assert!(table.contains("8.00×"), "{table}");
        assert!(table.contains("7.00–9.00"), "{table}");
        assert!(table.contains("≥ 3.5 met"), "{table}");
        let missed = FAKE_ROWS
            .replace("\"ratio\":8.0", "\"ratio\":2.0")
            .replace("\"min_ratio\":7.0", "\"min_ratio\":1.0")
            .replace("\"max_ratio\":9.0", "\"max_ratio\":3.0");
        let table = render_table(&parse_rows(&missed).unwrap());
        assert!(table.contains("≥ 3.5 **missed**"), "{table}");
    }

    #[test]
    fn rows_that_cannot_be_measurements_are_rejected_with_their_line() {
        let zero = FAKE_ROWS
            .lines()
            .nth(1)
            .unwrap()
            .replace("\"ours\":1.5", "\"ours\":0");
        let error = parse_rows(&zero).unwrap_err();
        assert!(
            error.contains("line 1") && error.contains("`ours`"),
            "{error}"
        );
        let no_crate = FAKE_ROWS
            .lines()
            .nth(1)
            .unwrap()
            .replace("\"crate\"", "\"krate\"");
        assert!(parse_rows(&no_crate).unwrap_err().contains("`crate`"));
        let outside = FAKE_ROWS
            .lines()
            .nth(1)
            .unwrap()
            .replace("\"ratio\":8.0", "\"ratio\":10.0");
        assert!(parse_rows(&outside).unwrap_err().contains("spread"));
        assert!(parse_rows("not json").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn flags_parse_only_and_rounds_and_refuse_partial_docs() {
        let flags = parse_flags(&strings(&["--only", "breaker", "--rounds", "7"])).unwrap();
        assert_eq!(flags.only.as_deref(), Some("breaker"));
        assert_eq!(flags.rounds, Some(7));
        assert!(parse_flags(&strings(&["--rounds", "0"])).is_err());
        assert!(parse_flags(&strings(&["--only"])).is_err());
        assert!(parse_flags(&strings(&["--only", "x", "--write-docs"])).is_err());
        assert!(parse_flags(&strings(&["--fast"])).is_err());
    }

    #[test]
    fn machine_names_cpu_cores_clock_and_load() {
        let machine = machine();
        for key in ["cpu", "cores", "clock_source", "load_average"] {
            assert!(!machine[key].is_null(), "{key} missing from {machine}");
        }
    }

    #[test]
    fn numbers_keep_three_significant_digits_without_trailing_zeros() {
        assert_eq!(significant(4940.0), "4940");
        assert_eq!(significant(1.0 / 3.0), "0.333");
        assert_eq!(significant(0.5), "0.5");
        assert_eq!(significant(3.5), "3.5");
        assert_eq!(significant(20.0), "20");
    }

    #[test]
    fn a_bar_in_a_name_does_not_split_its_cell() {
        let piped = FAKE_ROWS.replace("failsafe 1.3", "NEW|CLOSE");
        let table = render_table(&parse_rows(&piped).unwrap());
        let line = table.lines().nth(2).unwrap();
        assert!(line.contains("NEW\\|CLOSE"), "{line}");
        assert_eq!(line.matches(" | ").count(), 10, "eleven cells: {line}");
    }

    #[test]
    fn write_docs_replaces_only_what_lies_between_the_markers() {
        let readme = format!("# x\n\nintro\n{TABLE_BEGIN}\nold table\n{TABLE_END}\n\nafter\n");
        let updated = replace_marked_table(&readme, "new table\n").unwrap();
        assert_eq!(
            updated,
            format!("# x\n\nintro\n{TABLE_BEGIN}\nnew table\n{TABLE_END}\n\nafter\n")
        );
        assert!(replace_marked_table("no markers", "t").is_none());
    }

    fn with_ratio(line: usize, ratio: f64) -> Row {
        let mut row = parse_rows(FAKE_ROWS).unwrap()[line].clone();
        row.ratio = ratio;
        row.min_ratio = ratio * 0.9;
        row.max_ratio = ratio * 1.1;
        row
    }

    #[test]
    fn twice_pairs_the_runs_rows_and_flags_those_that_moved_more_than_15_percent() {
        assert!(
            parse_flags(&strings(&["--twice", "--only", "breaker"]))
                .unwrap()
                .twice
        );
        let first = [with_ratio(0, 8.0), with_ratio(1, 0.66)];
        // 8 → 9 moved 12.5%; 0.66 → 0.57 moved 15.8% although it is only -13.6% of run 1:
        // the larger over the smaller, whichever run came first.
        let second = [with_ratio(1, 0.57), with_ratio(0, 9.0)];
        let movements = movements(&first, &second);
        assert_eq!(movements.len(), 2);
        assert_eq!(movements[0].baseline, "bare call", "in run 2's order");
        assert!(movements[0].moved(), "{movements:?}");
        assert!(!movements[1].moved(), "{movements:?}");
        assert!((movements[1].movement().unwrap() - 0.125).abs() < 1e-9);
        let table = render_stability(&movements, &[]);
        assert!(table.contains("| -14% **moved** |"), "{table}");
        assert!(table.contains("| +12% |"), "{table}");
        assert!(table.contains("1 of 2 rows moved more than 15%"), "{table}");
    }

    #[test]
    fn twice_compares_rows_of_several_threads_only_at_the_same_placement() {
        let placed = |ratio: f64, ns: f64| Row {
            placement_ns: Some(ns),
            other_placement_rounds: Some(0),
            ..with_ratio(0, ratio)
        };
        let same = movements(&[placed(45.0, 72.0)], &[placed(47.0, 90.0)]);
        assert!(!same[0].placement_differs() && !same[0].moved());
        let other = movements(&[placed(45.0, 72.0)], &[placed(100.0, 480.0)]);
        assert!(other[0].placement_differs(), "{other:?}");
        assert!(
            other[0].moved(),
            "a row left at another placement still counts as moved"
        );
        let key = "breaker closed success, 1 thread failsafe 1.3".to_string();
        let table = render_stability(&other, &[(key, 3)]);
        assert!(table.contains("cores 72 ns apart"), "{table}");
        assert!(table.contains("cores 480 ns apart"), "{table}");
        assert!(table.contains("measured it 3 more times"), "{table}");
        assert!(table.contains("**placement differs**"), "{table}");
        // The report keeps the placement, and a row without one has none.
        let report = render_report(&[placed(45.0, 72.0), with_ratio(1, 0.7)]);
        let rows = parse_rows(
            &serde_json::from_str::<Vec<Value>>(&report)
                .unwrap()
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .unwrap();
        assert_eq!(rows[0].placement_ns, Some(72.0));
        assert_eq!(rows[1].placement_ns, None);
        assert!(render_table(&rows).contains("| 72 ns |"));
    }

    #[test]
    fn rows_measured_on_a_slowed_core_or_another_placement_are_measured_again() {
        let row = |canary: f64, placement: Option<f64>| Row {
            canary_ns: Some(canary),
            placement_ns: placement,
            ..with_ratio(0, 8.0)
        };
        // Most rows slowed: the quiet row is the reference, and the slowed ones go again.
        let rows = [
            row(2.0, None),
            row(2.8, None),
            row(2.75, None),
            row(2.1, None),
        ];
        let fastest = fastest_canary(&rows, &rows[0].timer);
        assert_eq!(fastest, Some(2.0));
        let slowed = needs_again(&rows[1], fastest, None);
        assert!(slowed.wants_again(), "ours ran slowed for the whole row");
        assert!(!slowed.placement_differs && slowed.canary > SLOWED_ROW);
        assert!(!needs_again(&rows[3], fastest, None).wants_again());
        let run1 = [row(1.0, Some(72.0))];
        let elsewhere = needs_again(&row(1.0, Some(480.0)), Some(1.0), Some(&run1));
        assert!(elsewhere.placement_differs && elsewhere.wants_again());
        assert!(!needs_again(&row(1.0, Some(80.0)), Some(1.0), Some(&run1)).wants_again());
        // A placement that matches beats any canary; then the closer canary wins.
        assert!(
            needs_again(&row(1.5, Some(72.0)), Some(1.0), Some(&run1)).better_than(needs_again(
                &row(1.0, Some(480.0)),
                Some(1.0),
                Some(&run1)
            ))
        );
        assert!(
            needs_again(&row(1.05, None), Some(1.0), None).better_than(needs_again(
                &row(1.2, None),
                Some(1.0),
                None
            ))
        );
        // Rows without canary or placement (whole operations) are never measured again.
        let whole = needs_again(&with_ratio(1, 0.7), fastest, Some(&run1));
        assert!(!whole.wants_again() && (whole.canary - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_row_is_judged_against_the_fastest_row_timed_by_the_same_clock() {
        let row = |canary: f64, timer: &str| Row {
            canary_ns: Some(canary),
            timer: timer.to_string(),
            ..with_ratio(0, 8.0)
        };
        // This session's host: one-thread rows (thread CPU time) all at 1.44–1.47 ns, rows
        // of two threads (wall clock) at 1.03 ns. No one-thread row ran slowed.
        let rows = [
            row(1.44, "thread-cpu"),
            row(1.47, "thread-cpu"),
            row(1.03, "wall"),
            row(1.58, "thread-cpu"),
            row(1.13, "wall"),
        ];
        let fastest = |row: &Row| fastest_canary(&rows, &row.timer);
        assert_eq!(fastest(&rows[1]), Some(1.44));
        assert_eq!(fastest(&rows[4]), Some(1.03));
        let again: Vec<bool> = rows
            .iter()
            .map(|row| needs_again(row, fastest(row), None).wants_again())
            .collect();
        // 1.47 is 2% over 1.44; 1.58 is 10% over it, 1.13 is 10% over 1.03.
        assert_eq!(again, [false, false, false, true, true]);
    }

    #[test]
    fn run_two_measures_a_row_again_until_its_core_ran_as_fast_as_in_run_one() {
        let row = |ratio: f64, canary: f64| Row {
            canary_ns: Some(canary),
            ..with_ratio(0, ratio)
        };
        // Pair t4's row: quiet in run 1, slowed in run 2, and the other way round.
        let run1 = [row(1.33, 2.66)];
        let quicker = needs_again(&row(1.92, 2.03), Some(2.03), Some(&run1));
        assert!(
            quicker.wants_again(),
            "run 2 quicker than run 1: {quicker:?}"
        );
        let run1 = [row(1.92, 2.03)];
        let slower = needs_again(&row(1.33, 2.66), Some(2.03), Some(&run1));
        assert!(slower.wants_again(), "run 2 slower than run 1: {slower:?}");
        // Against run 1's state, not the run's fastest: both slowed alike is a match.
        let run1 = [row(1.35, 2.66)];
        assert!(!needs_again(&row(1.33, 2.70), Some(2.03), Some(&run1)).wants_again());
        // The stability table shows each run's canary and flags the mismatch.
        let moved = movements(&[row(1.33, 2.66)], &[row(1.92, 2.03)]);
        assert!(moved[0].core_speed_differs() && moved[0].moved());
        let table = render_stability(&moved, &[]);
        assert!(table.contains("canary 2.66 ns"), "{table}");
        assert!(table.contains("canary 2.03 ns"), "{table}");
        assert!(table.contains("**core speed differs**"), "{table}");
        let same = movements(&[row(1.33, 2.66)], &[row(1.40, 2.70)]);
        assert!(!same[0].core_speed_differs());
    }

    #[test]
    fn a_row_of_several_threads_reports_the_median_of_its_windows() {
        let row = |ratio: f64, placement: f64, canary: f64| Row {
            placement_ns: Some(placement),
            other_placement_rounds: Some(0),
            canary_ns: Some(canary),
            ..with_ratio(0, ratio)
        };
        assert!(wants_windows(&row(80.0, 70.0, 1.0)));
        assert!(
            !wants_windows(&with_ratio(0, 8.0)),
            "one thread: one process"
        );
        let ratio = |measured: &[Row], reference: Option<&[Row]>| {
            format!(
                "{:.1}",
                representative(measured, Some(1.0), reference).ratio
            )
        };
        // The row of this issue's note: seatbelt at 250, 293 and 338 ns against ours at
        // 3.6 ns; the window in which seatbelt ran at 250 ns does not decide the row.
        let seatbelt = [
            row(69.4, 65.0, 1.0),
            row(81.4, 64.0, 1.0),
            row(93.8, 66.0, 1.0),
        ];
        assert_eq!(ratio(&seatbelt, None), "81.4");
        assert_eq!(
            ratio(&seatbelt[..1], None),
            "69.4",
            "one measurement is itself"
        );
        assert_eq!(
            ratio(&seatbelt[..2], None),
            "69.4",
            "the lower of two middles"
        );
        // The largest group at one placement decides; a lone placement does not.
        let mixed = [
            row(100.0, 480.0, 1.0),
            row(80.0, 70.0, 1.0),
            row(90.0, 72.0, 1.0),
        ];
        assert_eq!(ratio(&mixed, None), "80.0");
        // In run 2, only measurements at run 1's placement and core speed count, even
        // when they are fewer.
        let run1 = [row(95.0, 480.0, 1.0)];
        assert_eq!(ratio(&mixed, Some(&run1)), "100.0");
        let slowed_in_run1 = [row(85.0, 70.0, 1.5)];
        let quick = [row(80.0, 70.0, 1.0), row(88.0, 70.0, 1.48)];
        assert_eq!(ratio(&quick, Some(&slowed_in_run1)), "88.0");
        // When none fits, the closest: the matching placement, then the closer canary.
        let off = [
            row(70.0, 480.0, 1.0),
            row(75.0, 70.0, 1.4),
            row(78.0, 70.0, 1.2),
        ];
        assert_eq!(ratio(&off, Some(&[row(80.0, 70.0, 1.0)])), "78.0");
    }

    #[test]
    fn twice_counts_a_row_measured_in_one_run_only_as_moved() {
        let movements = movements(
            &[with_ratio(0, 8.0), with_ratio(1, 0.66)],
            &[with_ratio(0, 8.0)],
        );
        assert_eq!(movements.len(), 2);
        assert!(!movements[0].moved());
        assert!(movements[1].second.is_none() && movements[1].moved());
        let table = render_stability(&movements, &[]);
        assert!(
            table.contains("not measured") && table.contains("**missing**"),
            "{table}"
        );
    }

    #[test]
    fn no_rows_is_an_empty_array() {
        assert_eq!(render_report(&[]).trim(), "[]");
    }
}
