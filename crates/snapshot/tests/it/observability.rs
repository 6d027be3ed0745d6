//! Observability: saves and restores emit `tracing` events with counts, bytes and
//! durations; quarantine and failures are logged too.
//!
//! The events are captured in a child process with a global subscriber: `tracing` caches
//! per-callsite interest globally, so a thread-local subscriber in a test binary whose
//! other tests hit the same callsites concurrently can miss events.

use std::{collections::BTreeMap, fs, io::Read};

use keel_snapshot::{CacheEntry, CachePersistence};

use crate::support::{NOW_MILLIS, child_dir, child_mode, fixed_clock, spawn_child};

const TEST_NAME: &str = "observability::save_and_restore_events_carry_counts_bytes_and_durations";

#[test]
fn save_and_restore_events_carry_counts_bytes_and_durations() {
    if child_mode().as_deref() == Some("observe") {
        tracing_subscriber::fmt()
            .with_writer(std::io::stdout)
            .init();
        let persistence = fixed_clock(CachePersistence::new(child_dir()));
        let cache = BTreeMap::from([
            ("a", CacheEntry::new(1)),
            ("b", CacheEntry::new(2)),
            ("old", CacheEntry::new(3).expiring_at(NOW_MILLIS - 1)),
        ]);
        persistence.save(&cache).unwrap();
        assert_eq!(persistence.restore::<i32>().unwrap().report.loaded, 2);
        fs::write(persistence.path(), "{").unwrap();
        let _ = persistence.restore_or_empty::<i32>();
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let mut child = spawn_child(TEST_NAME, "observe", directory.path(), 0, None);
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{text}");

    let line = |needle: &str| {
        text.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no event {needle:?} in:\n{text}"))
            .to_string()
    };
    let saved = line("cache snapshot saved");
    for field in ["entries=3", "bytes=", "duration_ms="] {
        assert!(saved.contains(field), "{field} missing: {saved}");
    }
    let restored = line("cache snapshot restored");
    for field in [
        "loaded=2",
        "expired=1",
        "rejected=0",
        "bytes=",
        "duration_ms=",
    ] {
        assert!(restored.contains(field), "{field} missing: {restored}");
    }
    assert!(line("moved an unusable cache snapshot aside").contains("WARN"));
    assert!(line("cache snapshot restore failed").contains("ERROR"));
}
