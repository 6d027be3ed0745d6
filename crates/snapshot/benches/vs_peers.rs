//! Benchmark of `snapshot` against its peers (issue #5): save and restore time against the
//! bare `serde_json` floor and the original plan, and peak memory, each memory case in its
//! own process.
//!
//! Run: `cargo bench -p keel-snapshot --bench vs_peers` (1 000 000 entries, about 140 MB of
//! JSON); `BENCH_QUICK=1` uses 50 000 entries. Every row is measured by `xtask::harness`:
//! ours and the baseline alternately, round after round, the median ratio with its spread
//! (see `xtask/src/bench.rs` for the report protocol). Files go to a temp dir under
//! `target/`.
//!
//! `SNAPSHOT_BENCH_KEEP=1` keeps the temp dir (and a quarantined file) for inspection.
//! For profiling, `SNAPSHOT_BENCH_CASE=restore-loop` (or `raw-loop`, `raw-vec-loop`,
//! `floor-loop`) with `SNAPSHOT_BENCH_DIR` and `SNAPSHOT_BENCH_COUNT` restores an existing
//! file 20 times (8 for raw values), keeping every result; `restore-drop-loop`,
//! `raw-drop-loop` and `raw-vec-drop-loop` drop each result before the next restore, as
//! the timed rows do (so freed memory is reused rather than faulted in afresh).
//! `insert-bound` times only the inserts of a lazy restore into a `HashMap` (the entries
//! built beforehand) against the floor: the most any restore into a `HashMap` can gain.
//! `raw-floor-alternate` times a lazy restore into a `HashMap` and then the floor, 8 times,
//! printing each pair: ours always runs just after the floor's result was dropped, as in
//! the row's odd rounds (see the README's notes on what a dropped map leaves to the next
//! allocation).

use std::{
    collections::HashMap,
    fs::{self, File},
    hint::black_box,
    io::{BufReader, BufWriter, Write as _},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, UNIX_EPOCH},
};

use keel_snapshot::{CacheEntry, CachePersistence};
use serde::{Deserialize, Serialize};
use xtask::harness::{Harness, Row, seconds};

/// A realistic cached value: a small record with strings, numbers and a flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    score: f64,
    active: bool,
}

/// The floor's view of an entry: the same JSON, derived by serde.
#[derive(Serialize, Deserialize)]
struct FloorEntry {
    key: String,
    value: Profile,
    #[serde(rename = "expiresAt", skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<Vec<String>>,
}

#[derive(Serialize)]
struct FloorDocument<'a> {
    version: u32,
    timestamp: u64,
    entries: &'a [FloorEntry],
}

/// The floor's view of an entry whose value is any JSON.
#[derive(Deserialize)]
struct FloorValueEntry {
    #[allow(dead_code, reason = "read to match the work the library does")]
    key: String,
    #[allow(dead_code, reason = "read to match the work the library does")]
    value: serde_json::Value,
    #[allow(dead_code, reason = "read to match the work the library does")]
    #[serde(rename = "expiresAt")]
    expires_at: Option<u64>,
    #[allow(dead_code, reason = "read to match the work the library does")]
    tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct FloorValueDocument {
    #[allow(dead_code, reason = "read to match the work the library does")]
    version: u32,
    #[allow(dead_code, reason = "read to match the work the library does")]
    timestamp: u64,
    entries: Vec<FloorValueEntry>,
}

#[derive(Deserialize)]
struct FloorDocumentOwned {
    #[allow(dead_code, reason = "read to match the work the library does")]
    version: u32,
    #[allow(dead_code, reason = "read to match the work the library does")]
    timestamp: u64,
    entries: Vec<FloorEntry>,
}

const NOW_MILLIS: u64 = 1_700_000_000_000;
const CHILD_CASE: &str = "SNAPSHOT_BENCH_CASE";
const CHILD_DIR: &str = "SNAPSHOT_BENCH_DIR";
const CHILD_COUNT: &str = "SNAPSHOT_BENCH_COUNT";

fn entry(index: u64) -> (String, CacheEntry<Profile>) {
    let profile = Profile {
        id: index,
        name: format!("user-{index:08}"),
        #[allow(clippy::cast_precision_loss, reason = "a synthetic score")]
        score: (index % 1000) as f64 / 7.0,
        active: !index.is_multiple_of(3),
    };
    let mut entry = CacheEntry::new(profile).expiring_at(NOW_MILLIS + 3_600_000 + index);
    if index.is_multiple_of(2) {
        entry = entry.tagged(["sessions"]);
    }
    (format!("session:{index:010}"), entry)
}

fn entries(count: u64) -> Vec<(String, CacheEntry<Profile>)> {
    let mut entries = Vec::with_capacity(usize::try_from(count).unwrap());
    entries.extend((0..count).map(entry));
    entries
}

fn floor_entries(entries: &[(String, CacheEntry<Profile>)]) -> Vec<FloorEntry> {
    entries
        .iter()
        .map(|(key, entry)| FloorEntry {
            key: key.clone(),
            value: entry.value.clone(),
            expires_at: entry.expires_at,
            tags: entry.tags.clone(),
        })
        .collect()
}

fn persistence(directory: &Path) -> CachePersistence {
    CachePersistence::new(directory).with_clock(|| UNIX_EPOCH + Duration::from_millis(NOW_MILLIS))
}

/// The floor for saving: `serde_json::to_writer` into a `BufWriter<File>`, fsync, rename.
fn save_floor(directory: &Path, entries: &[FloorEntry]) {
    let temp = directory.join("floor.json.tmp");
    let mut writer = BufWriter::new(File::create(&temp).unwrap());
    let document = FloorDocument {
        version: 1,
        timestamp: NOW_MILLIS,
        entries,
    };
    serde_json::to_writer(&mut writer, &document).unwrap();
    writer.flush().unwrap();
    writer.into_inner().unwrap().sync_all().unwrap();
    fs::rename(&temp, directory.join("floor.json")).unwrap();
}

/// The original plan: `to_string_pretty`, write `.tmp`, rename, no fsync.
fn save_original_plan(directory: &Path, entries: &[FloorEntry]) {
    let document = FloorDocument {
        version: 1,
        timestamp: NOW_MILLIS,
        entries,
    };
    let text = serde_json::to_string_pretty(&document).unwrap();
    let temp = directory.join("plan.json.tmp");
    fs::write(&temp, text).unwrap();
    fs::rename(&temp, directory.join("plan.json")).unwrap();
}

fn save_ours(persistence: &CachePersistence, entries: &[(String, CacheEntry<Profile>)]) {
    persistence
        .save(entries.iter().map(|(key, entry)| (key, entry)))
        .unwrap();
}

/// The floor for restoring: `serde_json::from_reader` on a `BufReader` into a typed `Vec`.
fn restore_floor(path: &Path) -> Vec<FloorEntry> {
    let reader = BufReader::new(File::open(path).unwrap());
    let document: FloorDocumentOwned = serde_json::from_reader(reader).unwrap();
    document.entries
}

/// The original plan's restore: read the whole file, parse into `serde_json::Value`.
fn restore_value(path: &Path) -> serde_json::Value {
    let text = fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn restore_ours(persistence: &CachePersistence) -> HashMap<String, CacheEntry<Profile>> {
    persistence.restore::<Profile>().unwrap().entries
}

/// Lazy values into a `Vec` (the floor's destination) through `restore_into`.
fn restore_raw_vec(
    persistence: &CachePersistence,
) -> Vec<(String, CacheEntry<Box<serde_json::value::RawValue>>)> {
    let mut entries = Vec::new();
    persistence
        .restore_into(|key, entry| entries.push((key, entry)))
        .unwrap();
    entries
}

/// The floor for a `serde_json::Value` payload: the same typed `from_reader`, values as `Value`.
fn restore_value_floor(path: &Path) -> Vec<FloorValueEntry> {
    let reader = BufReader::new(File::open(path).unwrap());
    let document: FloorValueDocument = serde_json::from_reader(reader).unwrap();
    document.entries
}

/// A moka cache as a service would build one for restored entries. The policy's clock is
/// pinned like the restore's, so entries are as fresh for moka as for the restore (with the
/// real clock every bench entry would have expired years ago).
fn moka_cache() -> moka::sync::Cache<String, CacheEntry<Profile>> {
    moka::sync::Cache::builder()
        .expire_after(
            keel_snapshot::moka::ExpiresAt::new()
                .with_clock(|| UNIX_EPOCH + Duration::from_millis(NOW_MILLIS)),
        )
        .build()
}

/// By hand: the typed floor, then every entry inserted into moka on this thread.
fn restore_moka_by_hand(path: &Path) -> moka::sync::Cache<String, CacheEntry<Profile>> {
    let cache = moka_cache();
    for entry in restore_floor(path) {
        cache.insert(
            entry.key,
            CacheEntry {
                value: entry.value,
                expires_at: entry.expires_at,
                tags: entry.tags,
            },
        );
    }
    cache
}

fn restore_moka_ours(
    persistence: &CachePersistence,
) -> moka::sync::Cache<String, CacheEntry<Profile>> {
    let cache = moka_cache();
    persistence.restore_moka(&cache).unwrap();
    cache
}

/// `VmHWM` or `VmRSS` from `/proc/self/status`, in MiB.
fn proc_status_mib(field: &str) -> f64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .unwrap_or_else(|| panic!("/proc/self/status has no {field}"));
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|number| number.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0), so the next peak is this phase's own.
fn reset_peak() {
    fs::write("/proc/self/clear_refs", "5").expect("Linux can reset VmHWM");
}

/// Runs one memory case in this process and prints `peak_mib=<x>`: how far the peak rose
/// above the RSS at the start of the measured phase.
fn child(case: &str) {
    let directory = PathBuf::from(std::env::var_os(CHILD_DIR).unwrap());
    let count: u64 = std::env::var(CHILD_COUNT).unwrap().parse().unwrap();
    let persistence = persistence(&directory);
    let measure = |work: &mut dyn FnMut()| {
        reset_peak();
        let start = proc_status_mib("VmRSS:");
        work();
        proc_status_mib("VmHWM:") - start
    };
    let peak = match case {
        "save" => {
            let entries = entries(count);
            measure(&mut || save_ours(&persistence, &entries))
        }
        "save-original-plan" => {
            let entries = floor_entries(&entries(count));
            measure(&mut || save_original_plan(&directory, &entries))
        }
        "restore" => measure(&mut || {
            black_box(restore_ours(&persistence));
        }),
        "map" => measure(&mut || {
            let mut map = HashMap::new();
            for index in 0..count {
                let (key, entry) = entry(index);
                map.insert(key, entry);
            }
            black_box(&map);
        }),
        "restore-loop" => {
            let mut kept = Vec::new();
            for _ in 0..20 {
                kept.push(restore_ours(&persistence));
            }
            0.0
        }
        "raw-loop" => {
            let mut kept = Vec::new();
            for _ in 0..8 {
                kept.push(
                    persistence
                        .restore::<Box<serde_json::value::RawValue>>()
                        .unwrap()
                        .entries,
                );
            }
            0.0
        }
        "raw-drop-loop" => {
            // As the timed row runs: each map is dropped before the next restore.
            for _ in 0..8 {
                let restored = persistence
                    .restore::<Box<serde_json::value::RawValue>>()
                    .unwrap();
                black_box(&restored.entries);
            }
            0.0
        }
        "restore-drop-loop" => {
            for _ in 0..8 {
                black_box(restore_ours(&persistence));
            }
            0.0
        }
        "raw-vec-drop-loop" => {
            for _ in 0..8 {
                black_box(restore_raw_vec(&persistence));
            }
            0.0
        }
        "raw-floor-alternate" => {
            alternate_with_floor(&persistence, &directory);
            0.0
        }
        "insert-bound" => {
            insert_bound(&persistence, &directory);
            0.0
        }
        "raw-vec-loop" => {
            let mut kept = Vec::new();
            for _ in 0..8 {
                kept.push(restore_raw_vec(&persistence));
            }
            0.0
        }
        "floor-loop" => {
            let mut kept = Vec::new();
            for _ in 0..20 {
                kept.push(restore_floor(&directory.join("floor.json")));
            }
            0.0
        }
        other => panic!("unknown case {other}"),
    };
    println!("peak_mib={peak}");
}

/// Times a lazy restore into a `HashMap`, then the floor, 8 times, printing each pair.
fn alternate_with_floor(persistence: &CachePersistence, directory: &Path) {
    let floor_path = directory.join("floor.json");
    for _ in 0..8 {
        let ours = seconds(|| {
            persistence
                .restore::<Box<serde_json::value::RawValue>>()
                .unwrap()
                .entries
        });
        let floor = seconds(|| restore_floor(&floor_path));
        eprintln!("ours {ours:.3} floor {floor:.3} ratio {:.2}", floor / ours);
    }
}

/// Times inserting the lazy entries, already built, into a `HashMap` sized for them, then
/// the floor, 8 times, printing each pair: no restore into a `HashMap` can beat the floor
/// by more than the last column, since it makes the same inserts on one thread (a
/// `HashMap` has one writer) after, or while, parsing.
fn insert_bound(persistence: &CachePersistence, directory: &Path) {
    let floor_path = directory.join("floor.json");
    for _ in 0..8 {
        let entries = restore_raw_vec(persistence);
        let inserts = seconds(|| {
            let mut map = HashMap::with_capacity(entries.len());
            map.extend(entries);
            map
        });
        let floor = seconds(|| restore_floor(&floor_path));
        eprintln!(
            "inserts alone {inserts:.3} floor {floor:.3} bound {:.2}",
            floor / inserts
        );
    }
}

fn peak_in_child(case: &str, directory: &Path, count: u64) -> f64 {
    let output = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_CASE, case)
        .env(CHILD_DIR, directory)
        .env(CHILD_COUNT, count.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{case} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("peak_mib="))
        .and_then(|number| number.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{case} printed no peak: {stdout}"))
        // The runner needs positive numbers; a page is the resolution anyway.
        .max(4.0 / 1024.0)
}

fn target_dir() -> PathBuf {
    // The bench binary lives in `target/<profile>/deps/`.
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn main() {
    if let Ok(case) = std::env::var(CHILD_CASE) {
        child(&case);
        return;
    }
    let mut harness = Harness::from_env("snapshot");
    let count = if harness.quick() { 50_000 } else { 1_000_000 };
    let label = if count >= 1_000_000 {
        format!("{}M entries", count / 1_000_000)
    } else {
        format!("{}k entries", count / 1000)
    };
    let timing = timing_rows(&label);
    let memory = memory_rows(&label);
    if !timing.iter().chain(&memory).any(|row| harness.wants(row)) {
        harness.finish();
        return;
    }
    let scratch = tempfile::Builder::new()
        .prefix("snapshot-bench-")
        .disable_cleanup(std::env::var_os("SNAPSHOT_BENCH_KEEP").is_some())
        .tempdir_in(target_dir())
        .unwrap();
    let directory = scratch.path();
    println!(
        "snapshot vs_peers: {count} entries in {}",
        directory.display()
    );

    let entries = entries(count);
    let persistence = persistence(directory);
    save_ours(&persistence, &entries);
    #[allow(clippy::cast_precision_loss, reason = "a printed size")]
    let size_mb = fs::metadata(persistence.path()).unwrap().len() as f64 / 1e6;
    println!("snapshot file: {size_mb:.1} MB");
    measure_timing(&mut harness, timing, directory, &persistence, &entries);
    drop(entries);
    measure_memory(&mut harness, memory, directory, count);
    harness.finish();
}

/// A save or restore takes about a second at 1M entries: fewer rounds than nanosecond rows.
const TIMING_ROUNDS: usize = 7;

/// The timing rows, in the order `measure_timing` measures them.
fn timing_rows(label: &str) -> Vec<Row> {
    let row =
        |bench: String, baseline: &str| Row::new(bench, baseline).unit("s").rounds(TIMING_ROUNDS);
    vec![
        row(
            format!("save {label}"),
            "serde_json::to_writer + BufWriter + fsync + rename (floor)",
        )
        .goal(1.0 / 1.15),
        row(
            format!("save {label}"),
            "original plan: to_string_pretty + write .tmp + rename, no fsync",
        )
        .goal(2.5),
        row(
            format!("restore {label} into a HashMap"),
            "serde_json::from_reader(BufReader) into a typed Vec (floor)",
        )
        .goal(1.0),
        row(
            format!("restore {label} into a HashMap"),
            "read_to_string + serde_json::Value (for scale; no goal)",
        ),
        row(
            format!("restore {label} into a HashMap, serde_json::Value values"),
            "serde_json::from_reader(BufReader) into a typed Vec, Value values (floor)",
        )
        .goal(1.0),
        row(
            format!("restore {label} into a HashMap, lazy Box<RawValue> values"),
            "serde_json::from_reader(BufReader) into a typed Vec (floor)",
        )
        .goal(3.0),
        row(
            format!(
                "restore {label} into a HashMap hashed with foldhash (restore_with_hasher), lazy Box<RawValue> values"
            ),
            "serde_json::from_reader(BufReader) into a typed Vec (floor)",
        )
        .goal(3.0),
        row(
            format!("restore {label} into a Vec via restore_into, lazy Box<RawValue> values"),
            "serde_json::from_reader(BufReader) into a typed Vec (floor)",
        )
        .goal(3.0),
        row(
            format!("restore {label} into a moka 0.12 sync cache"),
            "typed floor, then insert into moka by hand",
        )
        .goal(1.0),
    ]
}

/// Save and restore times, each against its baseline, interleaved.
fn measure_timing(
    harness: &mut Harness,
    rows: Vec<Row>,
    directory: &Path,
    persistence: &CachePersistence,
    entries: &[(String, CacheEntry<Profile>)],
) {
    let [
        save_floor_row,
        save_plan_row,
        restore_floor_row,
        restore_value_row,
        value_payload_row,
        raw_payload_row,
        raw_foldhash_row,
        raw_vec_row,
        moka_row,
    ] = <[Row; 9]>::try_from(rows).expect("nine timing rows");
    let floor = floor_entries(entries);
    harness.compare(
        save_floor_row,
        || seconds(|| save_ours(persistence, entries)),
        || seconds(|| save_floor(directory, &floor)),
    );
    harness.compare(
        save_plan_row,
        || seconds(|| save_ours(persistence, entries)),
        || seconds(|| save_original_plan(directory, &floor)),
    );
    save_floor(directory, &floor);
    drop(floor);
    let floor_path = directory.join("floor.json");
    harness.compare(
        restore_floor_row,
        || seconds(|| restore_ours(persistence)),
        || seconds(|| restore_floor(&floor_path)),
    );
    harness.compare(
        restore_value_row,
        || seconds(|| restore_ours(persistence)),
        || seconds(|| restore_value(persistence.path())),
    );
    harness.compare(
        value_payload_row,
        || seconds(|| persistence.restore::<serde_json::Value>().unwrap().entries),
        || seconds(|| restore_value_floor(&floor_path)),
    );
    harness.compare(
        raw_payload_row,
        || {
            seconds(|| {
                persistence
                    .restore::<Box<serde_json::value::RawValue>>()
                    .unwrap()
                    .entries
            })
        },
        || seconds(|| restore_floor(&floor_path)),
    );
    harness.compare(
        raw_foldhash_row,
        || {
            seconds(|| {
                persistence
                    .restore_with_hasher::<Box<serde_json::value::RawValue>, _>(
                        foldhash::fast::RandomState::default(),
                    )
                    .unwrap()
                    .entries
            })
        },
        || seconds(|| restore_floor(&floor_path)),
    );
    harness.compare(
        raw_vec_row,
        || seconds(|| restore_raw_vec(persistence)),
        || seconds(|| restore_floor(&floor_path)),
    );
    harness.compare(
        moka_row,
        || seconds(|| restore_moka_ours(persistence)),
        || seconds(|| restore_moka_by_hand(&floor_path)),
    );
}

/// The memory rows, in the order `measure_memory` measures them. A peak is measured in a
/// child process of its own. A save's peak above its entries is about 2 MiB and moves
/// between about 2.06 and 2.43 MiB from call to call (the serializer threads' batches in
/// flight), so each row takes the median of seven (with three, two runs' medians were 12%
/// apart).
fn memory_rows(label: &str) -> Vec<Row> {
    let row = |bench: String, baseline: &str| {
        Row::new(bench, baseline)
            .unit("MiB")
            .rounds(7)
            .without_warm_up()
    };
    vec![
        row(
            format!("save {label}: peak memory above the entries"),
            "budget from issue #5 (32 MiB)",
        )
        .goal(1.0),
        row(
            format!("save {label}: peak memory above the entries"),
            "original plan (to_string_pretty)",
        ),
        row(
            format!("restore {label}: peak memory"),
            "building the same HashMap directly (the map's own size)",
        )
        .goal(1.0 / 1.2),
    ]
}

/// Peak memory, each case in its own process.
fn measure_memory(harness: &mut Harness, rows: Vec<Row>, directory: &Path, count: u64) {
    let [budget_row, plan_row, restore_row] =
        <[Row; 3]>::try_from(rows).expect("three memory rows");
    harness.compare(
        budget_row,
        || peak_in_child("save", directory, count),
        || 32.0,
    );
    harness.compare(
        plan_row,
        || peak_in_child("save", directory, count),
        || peak_in_child("save-original-plan", directory, count),
    );
    harness.compare(
        restore_row,
        || peak_in_child("restore", directory, count),
        || peak_in_child("map", directory, count),
    );
}
