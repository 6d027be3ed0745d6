//! The four operations of the original plan, the file format, permissions, limits, and
//! the version check in either field order.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::PermissionsExt,
};

use keel_snapshot::{CacheEntry, CachePersistence, SnapshotError};

use crate::support::{NOW_MILLIS, fixed_clock, generation, temp_files};

#[test]
fn missing_file_restores_empty_and_does_not_exist() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path().join("never-created"));
    assert!(!persistence.exists());
    let restored = persistence.restore::<String>().unwrap();
    assert!(restored.entries.is_empty());
    assert!(!restored.report.found);
    assert_eq!(persistence.last_persist_time(), None);
}

#[test]
fn file_format_is_the_original_plans_json() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = fixed_clock(CachePersistence::new(directory.path()));
    let cache = BTreeMap::from([
        (
            "a",
            CacheEntry::new(serde_json::json!({"n": 1}))
                .expiring_at(NOW_MILLIS + 5)
                .tagged(["t"]),
        ),
        ("b", CacheEntry::new(serde_json::json!("plain"))),
    ]);
    let report = persistence.save(&cache).unwrap();
    let text = fs::read_to_string(persistence.path()).unwrap();
    assert_eq!(report.bytes, text.len() as u64);
    let document: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        document,
        serde_json::json!({
            "version": 1,
            "timestamp": NOW_MILLIS,
            "entries": [
                {"key": "a", "value": {"n": 1}, "expiresAt": NOW_MILLIS + 5, "tags": ["t"]},
                {"key": "b", "value": "plain"},
            ]
        })
    );
    assert_eq!(
        persistence.last_persist_time(),
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(NOW_MILLIS))
    );
}

#[test]
fn save_accepts_maps_and_iterators_without_copying() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let hash: HashMap<String, CacheEntry<u32>> = HashMap::from([("h".into(), CacheEntry::new(1))]);
    persistence.save(&hash).unwrap();
    let btree: BTreeMap<&str, CacheEntry<u32>> = BTreeMap::from([("b", CacheEntry::new(2))]);
    persistence.save(&btree).unwrap();
    let filtered = hash.iter().filter(|(key, _)| key.starts_with('h'));
    assert_eq!(persistence.save(filtered).unwrap().entries, 1);
    assert_eq!(persistence.restore::<u32>().unwrap().entries["h"].value, 1);
}

#[test]
fn expired_entries_are_dropped_on_restore_and_counted() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = fixed_clock(CachePersistence::new(directory.path()));
    let cache = BTreeMap::from([
        ("past", CacheEntry::new(1).expiring_at(NOW_MILLIS - 1)),
        ("now", CacheEntry::new(2).expiring_at(NOW_MILLIS)),
        ("future", CacheEntry::new(3).expiring_at(NOW_MILLIS + 1)),
        ("forever", CacheEntry::new(4)),
    ]);
    persistence.save(&cache).unwrap();
    let restored = persistence.restore::<i32>().unwrap();
    let mut keys: Vec<_> = restored.entries.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["forever", "future"]);
    assert_eq!(
        (
            restored.report.loaded,
            restored.report.expired,
            restored.report.rejected
        ),
        (2, 2, 0)
    );
    assert!(restored.report.found);
    assert_eq!(
        restored.report.snapshot_time,
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(NOW_MILLIS))
    );
}

#[test]
fn duplicate_keys_keep_the_last_and_count_as_rejected() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    fs::write(
        persistence.path(),
        r#"{"version":1,"timestamp":5,"entries":[{"key":"k","value":1},{"key":"k","value":2}]}"#,
    )
    .unwrap();
    let restored = persistence.restore::<u8>().unwrap();
    assert_eq!(restored.entries["k"].value, 2);
    assert_eq!((restored.report.loaded, restored.report.rejected), (1, 1));
}

#[test]
fn new_files_are_private_and_existing_permissions_are_kept() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    persistence.save(&generation(1, 3)).unwrap();
    let mode = |path: &std::path::Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(persistence.path()), 0o600);
    assert_eq!(
        mode(&directory.path().join("cache-snapshot.json.lock")),
        0o600
    );

    fs::set_permissions(persistence.path(), fs::Permissions::from_mode(0o640)).unwrap();
    persistence.save(&generation(2, 3)).unwrap();
    assert_eq!(mode(persistence.path()), 0o640);
}

#[test]
fn unknown_version_is_rejected_before_or_after_the_entries() {
    for text in [
        r#"{"version":2,"timestamp":1,"entries":[{"key":"k","value":1}]}"#,
        r#"{"timestamp":1,"entries":[{"key":"k","value":1}],"version":2}"#,
        r#"{"entries":[],"version":"1"}"#,
    ] {
        let directory = tempfile::tempdir().unwrap();
        let persistence = CachePersistence::new(directory.path());
        fs::write(persistence.path(), text).unwrap();
        let error = persistence.restore::<u8>().unwrap_err();
        assert!(
            matches!(&error, SnapshotError::UnsupportedVersion { .. }),
            "{text}: {error:?}"
        );
        assert!(error.to_string().contains("version"), "{error}");
        assert_eq!(
            fs::read_to_string(error.quarantined_to().unwrap()).unwrap(),
            text
        );
    }
}

#[test]
fn version_after_entries_is_accepted_when_it_is_one() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    fs::write(
        persistence.path(),
        r#"{"entries":[{"value":7,"key":"k","extra":[1]}],"comment":"hand-written","version":1}"#,
    )
    .unwrap();
    let restored = persistence.restore::<u8>().unwrap();
    assert_eq!(restored.entries["k"].value, 7);
}

#[test]
fn missing_version_or_entries_is_corrupt() {
    for text in [r#"{"entries":[]}"#, r#"{"version":1}"#, "[]", "null", ""] {
        let directory = tempfile::tempdir().unwrap();
        let persistence = CachePersistence::new(directory.path());
        fs::write(persistence.path(), text).unwrap();
        let error = persistence.restore::<u8>().unwrap_err();
        assert!(
            matches!(&error, SnapshotError::Corrupt { .. }),
            "{text}: {error:?}"
        );
        assert!(error.quarantined_to().is_some());
    }
}

#[test]
fn limits_refuse_oversized_files_and_leave_them_in_place() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    persistence.save(&generation(1, 10)).unwrap();
    let size = fs::metadata(persistence.path()).unwrap().len();

    let error = persistence
        .clone()
        .with_max_file_size(size - 1)
        .restore::<serde_json::Value>()
        .unwrap_err();
    assert!(
        matches!(&error, SnapshotError::TooLarge { size: found, .. } if *found == size),
        "{error:?}"
    );
    assert_eq!(error.quarantined_to(), None);
    assert!(persistence.exists());

    assert!(
        persistence
            .clone()
            .with_max_file_size(size)
            .with_max_entries(11)
            .restore::<serde_json::Value>()
            .is_ok()
    );
    let error = persistence
        .clone()
        .with_max_entries(10)
        .restore::<serde_json::Value>()
        .unwrap_err();
    assert!(
        matches!(&error, SnapshotError::TooManyEntries { limit: 10, .. }),
        "{error:?}"
    );
    assert_eq!(error.quarantined_to(), None);
    assert!(persistence.exists());
}

#[test]
fn restore_or_empty_returns_empty_but_still_quarantines() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    fs::write(persistence.path(), "{\"version\":1,\"entries\":[{\"key\":").unwrap();
    let restored = persistence.restore_or_empty::<u8>();
    assert!(restored.entries.is_empty());
    assert!(!persistence.exists());
    let quarantined: Vec<_> = fs::read_dir(directory.path())
        .unwrap()
        .flatten()
        .filter(|item| item.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(quarantined.len(), 1);

    // A later save does not touch the evidence.
    persistence.save(&generation(1, 2)).unwrap();
    assert!(quarantined[0].path().exists());
}

#[test]
fn stale_temp_files_are_swept_by_the_next_save() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    persistence.save(&generation(1, 2)).unwrap();
    for stale in [
        "cache-snapshot.json.tmp-1-2-0",
        "cache-snapshot.json.tmp-99-5-1",
    ] {
        fs::write(directory.path().join(stale), b"{\"version\":1,").unwrap();
    }
    fs::write(directory.path().join("unrelated.tmp-1"), b"mine").unwrap();
    let report = persistence.save(&generation(2, 2)).unwrap();
    assert_eq!(report.swept_temp_files, 2);
    assert_eq!(temp_files(directory.path()), ["unrelated.tmp-1"]);
}

#[test]
fn errors_name_the_file() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    fs::write(persistence.path(), "{\"version\":1,\"entries\":[}").unwrap();
    let error = persistence.restore::<u8>().unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&persistence.path().display().to_string()),
        "{text}"
    );
    assert!(text.contains("line 1 column"), "{text}");
}

/// An entry larger than the 256 KiB read buffer, between small ones, and enough entries
/// to cross many buffer boundaries.
#[test]
fn entries_larger_than_the_read_buffer_round_trip() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let mut cache: BTreeMap<String, CacheEntry<String>> = (0..5000)
        .map(|index| {
            (
                format!("small-{index}"),
                CacheEntry::new("é\"\\".repeat(index % 50)),
            )
        })
        .collect();
    cache.insert("huge".into(), CacheEntry::new("x\"y".repeat(300_000)));
    persistence.save(&cache).unwrap();
    assert!(fs::metadata(persistence.path()).unwrap().len() > 1_000_000);
    let restored = persistence.restore::<String>().unwrap();
    assert_eq!(restored.entries.len(), cache.len());
    for (key, entry) in &cache {
        assert_eq!(&restored.entries[key], entry, "{key}");
    }
}

/// The document as a single `serde_json::to_string` writes it, to compare bytes with.
#[derive(serde::Serialize)]
struct PlainDocument<'a> {
    version: u32,
    timestamp: u64,
    entries: Vec<PlainEntry<'a>>,
}

#[derive(serde::Serialize)]
struct PlainEntry<'a> {
    key: &'a str,
    value: &'a serde_json::Value,
    #[serde(rename = "expiresAt", skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a Vec<String>>,
}

#[test]
fn large_saves_write_exactly_what_one_serializer_writes() {
    // Enough entries for many batches on the worker threads, with a few large values
    // among small ones so batch sizes change along the way; and the empty cache.
    let directory = tempfile::tempdir().unwrap();
    let persistence = fixed_clock(CachePersistence::new(directory.path()));
    for count in [0, 1, 255, 256, 257, 30_000] {
        let cache: BTreeMap<String, CacheEntry<serde_json::Value>> = (0..count)
            .map(|index| {
                let text = if index % 997 == 0 {
                    "x".repeat(300_000)
                } else {
                    format!("v{index}")
                };
                let mut entry = CacheEntry::new(serde_json::json!({"i": index, "t": text}));
                if index % 3 == 0 {
                    entry = entry.expiring_at(NOW_MILLIS + 1 + index).tagged(["a", "b"]);
                }
                (format!("k{index:06}"), entry)
            })
            .collect();
        let report = persistence.save(&cache).unwrap();
        assert_eq!(report.entries, count);
        let expected = serde_json::to_string(&PlainDocument {
            version: 1,
            timestamp: NOW_MILLIS,
            entries: cache
                .iter()
                .map(|(key, entry)| PlainEntry {
                    key,
                    value: &entry.value,
                    expires_at: entry.expires_at,
                    tags: entry.tags.as_ref(),
                })
                .collect(),
        })
        .unwrap()
            + "\n";
        let written = fs::read_to_string(persistence.path()).unwrap();
        assert!(written == expected, "{count} entries: the bytes differ");
        let restored = persistence.restore::<serde_json::Value>().unwrap().entries;
        assert_eq!(restored, cache.into_iter().collect::<HashMap<_, _>>());
    }
}

#[test]
fn the_first_bad_entry_in_iteration_order_is_the_one_named() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let mut cache: Vec<(String, CacheEntry<f64>)> = (0..50_000)
        .map(|index| (format!("k{index}"), CacheEntry::new(1.0)))
        .collect();
    // Far apart, so they land in different batches on different workers.
    cache[31_000].1.value = f64::NAN;
    cache[3_000].1.value = f64::INFINITY;
    cache[40_000].1.value = f64::NAN;
    let error = persistence
        .save(cache.iter().map(|(key, entry)| (key, entry)))
        .unwrap_err();
    assert!(
        matches!(&error, SnapshotError::Unrepresentable { key, .. } if key == "k3000"),
        "{error:?}"
    );
    assert!(!persistence.exists());
    assert_eq!(temp_files(directory.path()), Vec::<String>::new());
}

/// A value whose serialization panics.
struct Explosive;

impl serde::Serialize for Explosive {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("explosive value")
    }
}

#[test]
fn a_panic_while_serializing_on_a_worker_reaches_the_caller_and_leaves_no_temp_file() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let entries: Vec<(String, CacheEntry<Option<Explosive>>)> = (0..20_000)
        .map(|index| {
            let value = (index == 12_345).then_some(Explosive);
            (format!("k{index}"), CacheEntry::new(value))
        })
        .collect();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        persistence.save(entries.iter().map(|(key, entry)| (key, entry)))
    }));
    let panic = outcome.expect_err("the panic propagates");
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"explosive value"));
    assert!(!persistence.exists());
    assert_eq!(temp_files(directory.path()), Vec::<String>::new());
}
