//! Corruption: every truncation point and random byte flips of a small snapshot yield a
//! valid result or a typed error (never a panic, never a partial map), and an erroring
//! file is quarantined with its bytes intact.

use std::{collections::HashMap, fs, path::Path};

use keel_snapshot::{CacheEntry, CachePersistence, SnapshotError};
use serde::{Deserialize, Serialize};

use crate::support::{NOW_MILLIS, Rng, fixed_clock};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    name: String,
    count: u32,
    ratio: f64,
}

/// A small snapshot with every optional field used; the keys are written in random
/// (hash map) order, so runs differ in where the flips land.
fn small_cache() -> HashMap<String, CacheEntry<Item>> {
    let item = |name: &str, count| Item {
        name: name.to_string(),
        count,
        ratio: 0.25,
    };
    HashMap::from([
        (
            "alpha".to_string(),
            CacheEntry::new(item("a", 1)).expiring_at(4_102_444_800_000),
        ),
        (
            "bravo".to_string(),
            CacheEntry::new(item("b", 2)).tagged(["x", "y"]),
        ),
        ("chaos".to_string(), CacheEntry::new(item("ç", 3))),
        (
            "delta".to_string(),
            CacheEntry::new(item("d", 4))
                .expiring_at(7_000_000_000_000)
                .tagged(["z"]),
        ),
    ])
}

fn snapshot_bytes(root: &Path) -> Vec<u8> {
    let persistence = fixed_clock(CachePersistence::new(root.join("original")));
    persistence.save(&small_cache()).unwrap();
    fs::read(persistence.path()).unwrap()
}

/// Restores `bytes` from a fresh directory and checks the outcome; returns whether it was Ok.
fn check(root: &Path, case: &str, bytes: &[u8]) -> bool {
    let directory = root.join(case);
    fs::create_dir(&directory).unwrap();
    let persistence = fixed_clock(CachePersistence::new(&directory));
    fs::write(persistence.path(), bytes).unwrap();
    match persistence.restore::<Item>() {
        Ok(restored) => {
            assert_eq!(
                restored.entries,
                oracle(bytes),
                "{case}: the result differs from what the file holds: {}",
                String::from_utf8_lossy(bytes)
            );
            assert!(persistence.exists(), "{case}: a valid file was moved");
            true
        }
        Err(error @ SnapshotError::Incompatible { .. }) => {
            // A flip inside a field name of the value: the file is a valid snapshot whose
            // values no longer fit `Item`, which is no reason to move it aside.
            assert_eq!(error.quarantined_to(), None, "{case}");
            assert_eq!(fs::read(persistence.path()).unwrap(), bytes, "{case}");
            false
        }
        Err(error) => {
            assert!(
                matches!(
                    error,
                    SnapshotError::Corrupt { .. } | SnapshotError::UnsupportedVersion { .. }
                ),
                "{case}: unexpected error kind {error:?}"
            );
            let text = error.to_string();
            assert!(text.contains("cache-snapshot.json"), "{case}: {text}");
            let moved_to = error
                .quarantined_to()
                .unwrap_or_else(|| panic!("{case}: not quarantined: {error}"));
            assert!(
                moved_to
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("cache-snapshot.json.corrupt-"),
                "{case}: {}",
                moved_to.display()
            );
            assert_eq!(
                fs::read(moved_to).unwrap(),
                bytes,
                "{case}: evidence changed"
            );
            assert!(
                !persistence.exists(),
                "{case}: the bad file is still in place"
            );
            false
        }
    }
}

/// What an independent parser says a file that restored successfully holds: every
/// unexpired entry, the last one winning for a repeated key. A flip can legitimately
/// change content (a digit of an expiry, a letter of a name); it must never lose entries.
fn oracle(bytes: &[u8]) -> HashMap<String, CacheEntry<Item>> {
    let document: serde_json::Value =
        serde_json::from_slice(bytes).expect("a file that restored is valid JSON");
    assert_eq!(document["version"], 1);
    let mut expected = HashMap::new();
    for entry in document["entries"].as_array().expect("entries is an array") {
        let key = entry["key"].as_str().expect("keys are strings").to_string();
        let cache_entry = CacheEntry {
            value: serde_json::from_value(entry["value"].clone()).expect("the value is an Item"),
            expires_at: entry.get("expiresAt").and_then(serde_json::Value::as_u64),
            tags: entry
                .get("tags")
                .and_then(|tags| serde_json::from_value(tags.clone()).ok())
                .flatten(),
        };
        if cache_entry.is_expired_at(NOW_MILLIS) {
            expected.remove(&key);
        } else {
            expected.insert(key, cache_entry);
        }
    }
    expected
}

#[test]
fn every_truncation_is_an_error_or_the_whole_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let bytes = snapshot_bytes(root.path());
    let mut valid = 0;
    for cut in 0..bytes.len() {
        if check(root.path(), &format!("cut-{cut}"), &bytes[..cut]) {
            valid += 1;
        }
    }
    // Only dropping the trailing newline leaves a valid file (the oracle then checked that
    // all four entries came back).
    assert_eq!(valid, 1);
}

#[test]
fn truncation_errors_say_truncated_with_a_position() {
    let root = tempfile::tempdir().unwrap();
    let bytes = snapshot_bytes(root.path());
    let persistence = CachePersistence::new(root.path());
    fs::write(persistence.path(), &bytes[..bytes.len() / 2]).unwrap();
    match persistence.restore::<Item>().unwrap_err() {
        SnapshotError::Corrupt {
            truncated,
            line,
            column,
            ..
        } => {
            assert!(truncated);
            assert!(line >= 1 && column >= 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn random_byte_flips_are_an_error_or_a_valid_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let bytes = snapshot_bytes(root.path());
    let mut rng = Rng::new(0xF11F);
    let mut errors = 0;
    for flip in 0..400 {
        let mut damaged = bytes.clone();
        let position = usize::try_from(rng.below(bytes.len() as u64)).unwrap();
        let mask = u8::try_from(rng.below(255) + 1).unwrap();
        damaged[position] ^= mask;
        if !check(root.path(), &format!("flip-{flip}"), &damaged) {
            errors += 1;
        }
    }
    assert!(errors > 100, "flips almost never broke the file: {errors}");
}

#[test]
fn a_value_of_the_wrong_type_names_its_key() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    fs::write(
        persistence.path(),
        r#"{"version":1,"entries":[{"key":"fine","value":{"name":"n","count":1,"ratio":0.5}},{"key":"wrong","value":"text"}]}"#,
    )
    .unwrap();
    match persistence.restore::<Item>().unwrap_err() {
        SnapshotError::Incompatible { key, .. } => assert_eq!(key.as_deref(), Some("wrong")),
        other => panic!("{other:?}"),
    }
}
