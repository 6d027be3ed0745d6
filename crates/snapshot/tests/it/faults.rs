//! Fault injection: saves that fail partway leave the previous snapshot byte-for-byte intact
//! and no temp file. Every fault here bites as root (no permission bits).

use std::{collections::BTreeMap, fs, io::Read};

use keel_snapshot::{CacheEntry, CachePersistence, SnapshotError};

use crate::support::{child_dir, child_mode, generation, spawn_child, temp_files};

const EFBIG_TEST: &str = "faults::write_failing_with_efbig_keeps_the_previous_snapshot";

/// `RLIMIT_FSIZE` makes `write` fail with `EFBIG` partway through the temp file (the
/// `trap` ignores `SIGXFSZ`, which would otherwise kill the child).
#[test]
fn write_failing_with_efbig_keeps_the_previous_snapshot() {
    if child_mode().as_deref() == Some("efbig") {
        let persistence = CachePersistence::new(child_dir());
        let error = persistence
            .save(&generation(2, 3000))
            .expect_err("a 400 KB save cannot fit in a 16 KB file size limit");
        match &error {
            SnapshotError::Io { source, .. } if source.raw_os_error() == Some(27) => {
                println!("save failed with EFBIG: {error}");
            }
            other => panic!("expected EFBIG, got {other:?}"),
        }
        assert_eq!(persistence.last_persist_time(), None);
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    persistence.save(&generation(1, 3000)).unwrap();
    let before = fs::read(persistence.path()).unwrap();
    assert!(
        before.len() > 64 * 1024,
        "the old snapshot is over the limit too"
    );

    let mut child = spawn_child(
        EFBIG_TEST,
        "efbig",
        directory.path(),
        0,
        Some("trap '' XFSZ; ulimit -f 32"),
    );
    let mut output = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed: {output}");
    assert!(
        output.contains("save failed with EFBIG"),
        "the fault did not bite: {output}"
    );
    assert_eq!(fs::read(persistence.path()).unwrap(), before);
    assert_eq!(temp_files(directory.path()), Vec::<String>::new());
}

#[test]
fn cache_directory_that_is_a_file_is_an_io_error() {
    let directory = tempfile::tempdir().unwrap();
    let not_a_directory = directory.path().join("cache");
    fs::write(&not_a_directory, b"precious").unwrap();
    let error = CachePersistence::new(&not_a_directory)
        .save(&generation(1, 10))
        .unwrap_err();
    assert!(matches!(error, SnapshotError::Io { .. }), "{error:?}");
    assert!(error.to_string().contains("cache"), "{error}");
    assert_eq!(fs::read(&not_a_directory).unwrap(), b"precious");
}

#[test]
fn lock_path_occupied_by_a_directory_fails_before_touching_anything() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    persistence.save(&generation(1, 10)).unwrap();
    let before = fs::read(persistence.path()).unwrap();
    fs::remove_file(directory.path().join("cache-snapshot.json.lock")).unwrap();
    fs::create_dir(directory.path().join("cache-snapshot.json.lock")).unwrap();

    let error = persistence.save(&generation(2, 10)).unwrap_err();
    assert!(
        matches!(&error, SnapshotError::Io { action, .. } if action.contains("lock")),
        "{error:?}"
    );
    assert_eq!(fs::read(persistence.path()).unwrap(), before);
    assert_eq!(temp_files(directory.path()), Vec::<String>::new());
}

/// The rename fails after the temp file was fully written and synced: the temp file must
/// still be removed.
#[test]
fn target_occupied_by_a_directory_fails_at_rename_and_cleans_up() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    fs::create_dir(persistence.path()).unwrap();
    fs::write(persistence.path().join("inside"), b"keep me").unwrap();

    let error = persistence.save(&generation(1, 10)).unwrap_err();
    assert!(
        matches!(&error, SnapshotError::Io { action, .. } if action.contains("replace")),
        "{error:?}"
    );
    assert_eq!(
        fs::read(persistence.path().join("inside")).unwrap(),
        b"keep me"
    );
    assert_eq!(temp_files(directory.path()), Vec::<String>::new());
    assert_eq!(persistence.last_persist_time(), None);
}

/// An unrepresentable value deep in the stream aborts a save that has already written
/// most of the temp file.
#[test]
fn nan_late_in_the_stream_rejects_the_save_and_names_the_key() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let mut cache: BTreeMap<String, CacheEntry<Vec<f64>>> = (0..5000)
        .map(|index| (format!("k{index:05}"), CacheEntry::new(vec![1.5; 20])))
        .collect();
    persistence.save(&cache).unwrap();
    let before = fs::read(persistence.path()).unwrap();
    let saved_at = persistence.last_persist_time();

    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        cache.get_mut("k04990").unwrap().value[7] = bad;
        let error = persistence.save(&cache).unwrap_err();
        match &error {
            SnapshotError::Unrepresentable { key, reason } => {
                assert_eq!(key, "k04990");
                assert!(reason.contains("float"), "{reason}");
            }
            other => panic!("expected Unrepresentable, got {other:?}"),
        }
        assert_eq!(fs::read(persistence.path()).unwrap(), before);
        assert_eq!(temp_files(directory.path()), Vec::<String>::new());
        assert_eq!(persistence.last_persist_time(), saved_at);
    }
}

#[test]
fn non_string_map_keys_reject_the_save_and_name_the_key() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let mut value = BTreeMap::new();
    value.insert(vec![1_u8, 2], "composite key");
    let cache = BTreeMap::from([("bad", CacheEntry::new(value))]);
    let error = persistence.save(&cache).unwrap_err();
    assert!(
        matches!(&error, SnapshotError::Unrepresentable { key, .. } if key == "bad"),
        "{error:?}"
    );
    assert!(!persistence.exists());
    assert_eq!(temp_files(directory.path()), Vec::<String>::new());
}
