//! Hostile or unusual snapshot files: restore must stay bounded in memory and time, and
//! must not quarantine a good file for the reader's own reasons.

use std::{fmt::Write as _, fs};

use keel_snapshot::{CachePersistence, SnapshotError};

/// 1024 small entries, then `padding` bytes of whitespace and a last entry: the
/// restore's size estimate after 1024 entries would see megabytes still to come.
fn entries_then_whitespace(padding: usize) -> String {
    let mut text = String::from(r#"{"version":1,"entries":["#);
    for index in 0..1024 {
        write!(text, r#"{{"key":"k{index}","value":{index}}},"#).unwrap();
    }
    text.push_str(&" ".repeat(padding));
    text.push_str(r#"{"key":"last","value":0}]}"#);
    text
}

#[test]
fn whitespace_after_the_first_entries_does_not_inflate_the_map() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    fs::write(persistence.path(), entries_then_whitespace(8 << 20)).unwrap();
    let restored = persistence.restore::<u64>().unwrap();
    assert_eq!(restored.entries.len(), 1025);
    // 8 MiB of padding at ~25 bytes per entry would be an estimate of ~340 000 more; the
    // reservation stops at 33 times the 1024 entries read (a table of 64 Ki buckets).
    assert!(
        restored.entries.capacity() <= 64 * 1024,
        "capacity {} for 1025 entries",
        restored.entries.capacity()
    );
}

/// A good snapshot of `u32` values, and its bytes.
fn good_snapshot() -> (tempfile::TempDir, Vec<u8>) {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let cache: std::collections::BTreeMap<String, keel_snapshot::CacheEntry<u32>> = (0..20)
        .map(|index| (format!("k{index}"), keel_snapshot::CacheEntry::new(index)))
        .collect();
    persistence.save(&cache).unwrap();
    let bytes = fs::read(persistence.path()).unwrap();
    (directory, bytes)
}

fn assert_left_in_place(persistence: &CachePersistence, bytes: &[u8], error: &SnapshotError) {
    assert_eq!(error.quarantined_to(), None, "{error}");
    assert_eq!(fs::read(persistence.path()).unwrap(), bytes, "{error}");
    let names: Vec<_> = fs::read_dir(persistence.path().parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.contains("corrupt"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn a_reader_of_another_type_leaves_a_good_snapshot_in_place() {
    let (directory, bytes) = good_snapshot();
    let persistence = CachePersistence::new(directory.path());
    let error = persistence.restore::<String>().unwrap_err();
    assert!(
        matches!(&error, SnapshotError::Incompatible { key: Some(key), line: 1, .. } if key == "k0"),
        "{error:?}"
    );
    assert_left_in_place(&persistence, &bytes, &error);
    assert!(persistence.restore_or_empty::<String>().entries.is_empty());
    assert_eq!(fs::read(persistence.path()).unwrap(), bytes);
    assert_eq!(persistence.restore::<u32>().unwrap().entries.len(), 20);
}

#[test]
fn a_reader_with_smaller_limits_leaves_a_good_snapshot_in_place() {
    let (directory, bytes) = good_snapshot();
    let few_entries = CachePersistence::new(directory.path()).with_max_entries(5);
    let error = few_entries.restore::<u32>().unwrap_err();
    assert!(
        matches!(error, SnapshotError::TooManyEntries { .. }),
        "{error:?}"
    );
    assert_left_in_place(&few_entries, &bytes, &error);
    assert!(few_entries.restore_or_empty::<u32>().entries.is_empty());

    let small_files = CachePersistence::new(directory.path()).with_max_file_size(10);
    let error = small_files.restore::<u32>().unwrap_err();
    assert!(matches!(error, SnapshotError::TooLarge { .. }), "{error:?}");
    assert_left_in_place(&small_files, &bytes, &error);
    assert!(small_files.restore_or_empty::<u32>().entries.is_empty());
    assert_eq!(fs::read(small_files.path()).unwrap(), bytes);
}

#[test]
fn a_fifo_in_place_of_the_snapshot_is_an_error_not_a_hang() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let made = std::process::Command::new("mkfifo")
        .arg(persistence.path())
        .status()
        .unwrap();
    assert!(made.success());
    assert!(!persistence.exists());
    let error = persistence.restore::<u32>().unwrap_err();
    assert!(matches!(error, SnapshotError::Io { .. }), "{error:?}");
    assert!(error.to_string().contains("not a regular file"), "{error}");
    assert_eq!(error.quarantined_to(), None);
    assert!(persistence.restore_or_empty::<u32>().entries.is_empty());
}

#[test]
fn a_sparse_file_after_the_first_entries_fails_fast_and_is_quarantined() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let mut text = String::from(r#"{"version":1,"entries":["#);
    for index in 0..1100 {
        write!(text, r#"{{"key":"k{index}","value":{index}}},"#).unwrap();
    }
    text.push_str(r#"{"key":""#);
    fs::write(persistence.path(), &text).unwrap();
    // A hole up to just under the 4 GiB default limit: a few KB on disk.
    let file = fs::OpenOptions::new()
        .write(true)
        .open(persistence.path())
        .unwrap();
    file.set_len((4 << 30) - 1).unwrap();
    drop(file);
    let error = persistence.restore::<u64>().unwrap_err();
    match &error {
        SnapshotError::Corrupt { truncated, key, .. } => {
            assert!(!truncated, "{error}");
            assert_eq!(key, &None, "{error}");
        }
        other => panic!("{other:?}"),
    }
    // The quarantined copy is sparse too; the temp dir removes it.
    assert!(error.quarantined_to().is_some());
}
