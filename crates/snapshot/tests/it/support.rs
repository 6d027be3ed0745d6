//! Shared helpers: generation caches that reveal torn or mixed files, temp-file listing,
//! a tiny deterministic RNG, and re-executing this test binary as a child process.

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, UNIX_EPOCH},
};

use keel_snapshot::{CacheEntry, CachePersistence, Restored};

/// The environment variable that turns a test into the child half of itself.
pub(crate) const CHILD_MODE: &str = "SNAPSHOT_TEST_CHILD";
/// The directory the child works in.
pub(crate) const CHILD_DIR: &str = "SNAPSHOT_TEST_DIR";
/// The first generation the child saves.
pub(crate) const CHILD_START: &str = "SNAPSHOT_TEST_START";

/// The fixed "now" of tests that care about expiry: 2023-11-14.
pub(crate) const NOW_MILLIS: u64 = 1_700_000_000_000;

pub(crate) fn fixed_clock(persistence: CachePersistence) -> CachePersistence {
    persistence.with_clock(|| UNIX_EPOCH + Duration::from_millis(NOW_MILLIS))
}

/// A cache whose every entry names its generation and whose size depends on it, so a
/// torn file, a prefix, or a mix of two saves cannot pass [`assert_whole_generation`].
pub(crate) fn generation(
    number: u64,
    size: u64,
) -> BTreeMap<String, CacheEntry<serde_json::Value>> {
    let count = size + number % 17;
    (0..count)
        .map(|index| {
            let entry = CacheEntry::new(serde_json::json!({
                "generation": number,
                "index": index,
                "payload": "x".repeat(40),
            }))
            .tagged([format!("g{number}")]);
            (format!("key-{index:05}"), entry)
        })
        .collect()
}

/// Checks that `restored` is exactly one generation saved with `size`, and returns its number.
pub(crate) fn assert_whole_generation(restored: &Restored<serde_json::Value>, size: u64) -> u64 {
    let any = restored
        .entries
        .values()
        .next()
        .expect("a generation is never empty");
    let number = any.value["generation"]
        .as_u64()
        .expect("generation is a number");
    let expected = generation(number, size);
    assert_eq!(
        restored.entries.len(),
        expected.len(),
        "generation {number} restored with the wrong number of entries"
    );
    for (key, entry) in &expected {
        assert_eq!(
            restored.entries.get(key),
            Some(entry),
            "entry {key} of generation {number} is missing or from another generation"
        );
    }
    number
}

/// Names of temp files (from `save`) in `directory`.
pub(crate) fn temp_files(directory: &Path) -> Vec<String> {
    fs::read_dir(directory)
        .map(|listing| {
            listing
                .flatten()
                .map(|item| item.file_name().to_string_lossy().into_owned())
                .filter(|name| name.contains(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

/// xorshift64*: deterministic randomness without a dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// Starts this test binary running only `test_name`, in child `mode`.
///
/// `shell_prefix`, if given, is a shell snippet run before `exec` (e.g. `ulimit -f 8`).
pub(crate) fn spawn_child(
    test_name: &str,
    mode: &str,
    directory: &Path,
    start: u64,
    shell_prefix: Option<&str>,
) -> Child {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let mut command = match shell_prefix {
        Some(prefix) => {
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg(format!("{prefix}; exec \"$0\" \"$@\""))
                .arg(exe);
            command
        }
        None => Command::new(exe),
    };
    command
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(CHILD_MODE, mode)
        .env(CHILD_DIR, directory)
        .env(CHILD_START, start.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the test binary can re-execute itself")
}

/// In a child, the mode it was started in (`None` in the parent).
pub(crate) fn child_mode() -> Option<String> {
    std::env::var(CHILD_MODE).ok()
}

pub(crate) fn child_dir() -> std::path::PathBuf {
    std::env::var_os(CHILD_DIR)
        .expect("child has a directory")
        .into()
}

pub(crate) fn child_start() -> u64 {
    std::env::var(CHILD_START)
        .expect("child has a start")
        .parse()
        .expect("start is a number")
}
