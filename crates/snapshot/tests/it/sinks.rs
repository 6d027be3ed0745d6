//! `restore_into`: a restore straight into a caller's map or cache, with no intermediate map.

use std::{collections::BTreeMap, fs};

use keel_snapshot::{CacheEntry, CachePersistence, SnapshotError};

use crate::support::{NOW_MILLIS, fixed_clock};

#[test]
fn restore_into_hands_over_each_unexpired_entry_in_file_order() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = fixed_clock(CachePersistence::new(directory.path()));
    fs::write(
        persistence.path(),
        format!(
            r#"{{"version":1,"entries":[
                {{"key":"a","value":1}},
                {{"key":"gone","value":2,"expiresAt":{expired}}},
                {{"key":"b","value":3,"expiresAt":{fresh},"tags":["t"]}},
                {{"key":"a","value":4}}
            ]}}"#,
            expired = NOW_MILLIS,
            fresh = NOW_MILLIS + 1
        ),
    )
    .unwrap();
    let mut seen = Vec::new();
    let report = persistence
        .restore_into(|key, entry: CacheEntry<u32>| seen.push((key, entry)))
        .unwrap();
    assert_eq!(
        seen,
        [
            ("a".to_string(), CacheEntry::new(1)),
            (
                "b".to_string(),
                CacheEntry::new(3).expiring_at(NOW_MILLIS + 1).tagged(["t"])
            ),
            ("a".to_string(), CacheEntry::new(4)),
        ]
    );
    assert!(report.found);
    assert_eq!((report.loaded, report.expired, report.rejected), (3, 1, 0));
}

#[test]
fn restore_into_a_large_snapshot_matches_restore() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let cache: BTreeMap<String, CacheEntry<u64>> = (0..20_000)
        .map(|index| (format!("key-{index}"), CacheEntry::new(index)))
        .collect();
    persistence.save(&cache).unwrap();
    let mut restored = BTreeMap::new();
    let report = persistence
        .restore_into(|key, entry| {
            restored.insert(key, entry);
        })
        .unwrap();
    assert_eq!(report.loaded, 20_000);
    assert_eq!(restored, cache);
}

#[test]
fn restore_into_without_a_file_hands_over_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let mut calls = 0;
    let report = persistence
        .restore_into(|_, _: CacheEntry<u8>| calls += 1)
        .unwrap();
    assert!(!report.found);
    assert_eq!(calls, 0);
}

#[test]
fn restore_into_judges_a_bad_file_as_restore_does() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    fs::write(
        persistence.path(),
        r#"{"version":1,"entries":[{"key":"a","value":1},{"key":"b","value":tru}]}"#,
    )
    .unwrap();
    let mut seen = Vec::new();
    let error = persistence
        .restore_into(|key, _: CacheEntry<u8>| seen.push(key))
        .unwrap_err();
    assert!(matches!(error, SnapshotError::Corrupt { .. }), "{error:?}");
    assert!(error.quarantined_to().is_some());
    // The entries before the bad one may have been handed over; never the bad one.
    assert!(seen.iter().all(|key| key == "a"), "{seen:?}");

    fs::write(
        persistence.path(),
        r#"{"version":1,"entries":[{"key":"a","value":"text"}]}"#,
    )
    .unwrap();
    let error = persistence
        .restore_into(|_, _: CacheEntry<u8>| {})
        .unwrap_err();
    assert!(
        matches!(error, SnapshotError::Incompatible { .. }),
        "{error:?}"
    );
    assert!(persistence.exists(), "a good file stays in place");
}
