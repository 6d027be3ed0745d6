//! One verdict per kind of byte, wherever it sits: a file that is not valid JSON is
//! `Corrupt` (and quarantined) in a key, a value, tags or an unknown field alike; valid JSON
//! that this reader cannot hold (a number out of range, nesting too deep) is `Incompatible`
//! and left in place; and whatever `save` accepts, `restore` reads back.

use std::{collections::BTreeMap, fs};

use keel_snapshot::{CacheEntry, CachePersistence, SnapshotError};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// Writes `bytes` as the snapshot of a fresh directory and restores it as `V`.
fn restore_bytes<V: serde::de::DeserializeOwned + Send>(
    bytes: &[u8],
) -> (tempfile::TempDir, Result<usize, SnapshotError>) {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    fs::write(persistence.path(), bytes).unwrap();
    let result = persistence
        .restore::<V>()
        .map(|restored| restored.entries.len());
    (directory, result)
}

fn corrupt_files(directory: &std::path::Path) -> usize {
    fs::read_dir(directory)
        .unwrap()
        .filter(|item| {
            item.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".corrupt-")
        })
        .count()
}

fn assert_corrupt(case: &str, bytes: &[u8]) {
    let (directory, result) = restore_bytes::<serde_json::Value>(bytes);
    match result {
        Err(error @ SnapshotError::Corrupt { .. }) => {
            // Inside an entry whose key was read, the error names it.
            if let SnapshotError::Corrupt { key: Some(key), .. } = &error {
                assert_eq!(key, "a", "{case}");
            } else if case.contains("entry-level") || case.contains("tags") {
                panic!("{case}: the error does not name the key: {error}");
            }
            assert!(error.quarantined_to().is_some(), "{case}: {error}");
            assert_eq!(corrupt_files(directory.path()), 1, "{case}");
        }
        other => panic!("{case}: expected Corrupt, got {other:?}"),
    }
}

fn assert_incompatible(case: &str, bytes: &[u8]) {
    let (directory, result) = restore_bytes::<serde_json::Value>(bytes);
    match result {
        Err(error @ SnapshotError::Incompatible { .. }) => {
            assert_eq!(error.quarantined_to(), None, "{case}: {error}");
            let path = directory.path().join(keel_snapshot::SNAPSHOT_FILE_NAME);
            assert_eq!(
                fs::read(path).unwrap(),
                bytes,
                "{case}: the file was not left in place"
            );
            assert_eq!(corrupt_files(directory.path()), 0, "{case}");
        }
        other => panic!("{case}: expected Incompatible, got {other:?}"),
    }
}

/// The places a piece of JSON text can sit in a snapshot, with `@` where it goes.
const PLACES: [(&str, &str); 6] = [
    ("key", r#"{"version":1,"entries":[{"key":"a@","value":1}]}"#),
    (
        "value",
        r#"{"version":1,"entries":[{"key":"a","value":"@"}]}"#,
    ),
    (
        "tags",
        r#"{"version":1,"entries":[{"key":"a","value":1,"tags":["@"]}]}"#,
    ),
    (
        "entry-level unknown field",
        r#"{"version":1,"entries":[{"key":"a","value":1,"note":"@"}]}"#,
    ),
    (
        "top-level unknown field",
        r#"{"version":1,"note":"@","entries":[{"key":"a","value":1}]}"#,
    ),
    (
        "unknown field after the entries",
        r#"{"version":1,"entries":[{"key":"a","value":1}],"note":["@"]}"#,
    ),
];

fn placed(template: &str, inside_string: &[u8]) -> Vec<u8> {
    let at = template.find('@').unwrap();
    let mut bytes = template.as_bytes()[..at].to_vec();
    bytes.extend_from_slice(inside_string);
    bytes.extend_from_slice(&template.as_bytes()[at + 1..]);
    bytes
}

/// A value type that skips the fields it does not know.
#[derive(Deserialize)]
struct Named {
    #[allow(dead_code, reason = "read to check the value's shape")]
    name: String,
}

#[test]
fn bytes_that_are_not_json_are_corrupt_wherever_they_sit() {
    let bad_strings: [(&str, &[u8]); 4] = [
        ("invalid UTF-8", b"\xff"),
        ("a truncated UTF-8 sequence", b"\xe2\x82"),
        ("a lone leading surrogate", br"\ud800"),
        ("a lone trailing surrogate", br"\udc00"),
    ];
    for (place, template) in PLACES {
        for (what, bytes) in bad_strings {
            assert_corrupt(&format!("{what} in the {place}"), &placed(template, bytes));
        }
        // The control: the same places with good text restore.
        let (_directory, result) = restore_bytes::<serde_json::Value>(&placed(template, b"ok"));
        assert_eq!(result.unwrap(), 1, "good text in the {place}");
    }
    // Inside a value the reader's type skips (an unknown field of a struct).
    for (what, bytes) in bad_strings {
        let file = placed(
            r#"{"version":1,"entries":[{"key":"a","value":{"name":"n","skipped":"@"}}]}"#,
            bytes,
        );
        let (_directory, result) = restore_bytes::<Named>(&file);
        assert!(
            matches!(&result, Err(SnapshotError::Corrupt { key: Some(key), .. }) if key == "a"),
            "{what} in a skipped part of a value, naming the key: {result:?}"
        );
    }
}

#[test]
fn a_number_beyond_the_reader_is_incompatible_and_left_in_place() {
    for number in ["1e400", "-1e400", "1e999999"] {
        for (place, template) in [
            (
                "value",
                r#"{"version":1,"entries":[{"key":"a","value":@}]}"#,
            ),
            (
                "nested value",
                r#"{"version":1,"entries":[{"key":"a","value":[1,{"x":@}]}]}"#,
            ),
            (
                "entry-level unknown field",
                r#"{"version":1,"entries":[{"key":"a","value":1,"note":@}]}"#,
            ),
            (
                "top-level unknown field",
                r#"{"version":1,"note":@,"entries":[{"key":"a","value":1}]}"#,
            ),
            ("timestamp", r#"{"version":1,"timestamp":@,"entries":[]}"#),
        ] {
            assert_incompatible(
                &format!("{number} in the {place}"),
                &placed(template, number.as_bytes()),
            );
        }
    }
    // Past the number, a file that is also broken is still corrupt.
    assert_corrupt(
        "1e400 then invalid UTF-8",
        b"{\"version\":1,\"entries\":[{\"key\":\"a\",\"value\":1e400,\"note\":\"\xff\"}]}",
    );
}

#[test]
fn nesting_beyond_the_reader_is_incompatible_and_left_in_place() {
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    assert_incompatible(
        "a deep value",
        format!(r#"{{"version":1,"entries":[{{"key":"a","value":{deep}}}]}}"#).as_bytes(),
    );
    assert_incompatible(
        "a deep unknown field",
        format!(r#"{{"version":1,"x":{deep},"entries":[{{"key":"a","value":1}}]}}"#).as_bytes(),
    );
    // Deep but broken is corrupt.
    assert_corrupt(
        "a deep broken value",
        format!(
            r#"{{"version":1,"entries":[{{"key":"a","value":{}}}]}}"#,
            "[".repeat(300)
        )
        .as_bytes(),
    );
}

#[test]
fn every_repeated_field_is_corrupt() {
    for (field, file) in [
        (
            "key",
            r#"{"version":1,"entries":[{"key":"a","key":"b","value":1}]}"#,
        ),
        (
            "value",
            r#"{"version":1,"entries":[{"key":"a","value":1,"value":2}]}"#,
        ),
        (
            "expiresAt",
            r#"{"version":1,"entries":[{"key":"a","value":1,"expiresAt":1,"expiresAt":99999999999999}]}"#,
        ),
        (
            "tags",
            r#"{"version":1,"entries":[{"key":"a","value":1,"tags":["x"],"tags":["y"]}]}"#,
        ),
        ("version", r#"{"version":1,"version":1,"entries":[]}"#),
        (
            "timestamp",
            r#"{"version":1,"timestamp":1,"timestamp":2,"entries":[]}"#,
        ),
        ("entries", r#"{"version":1,"entries":[],"entries":[]}"#),
    ] {
        let (_directory, result) = restore_bytes::<serde_json::Value>(file.as_bytes());
        match result {
            Err(SnapshotError::Corrupt { reason, .. }) => {
                assert!(reason.contains("duplicate"), "{field}: {reason}");
                assert!(reason.contains(field), "{field}: {reason}");
            }
            other => panic!("a repeated `{field}`: {other:?}"),
        }
    }
}

#[test]
fn a_byte_order_mark_is_reported_as_one() {
    let mut file = b"\xef\xbb\xbf".to_vec();
    file.extend_from_slice(br#"{"version":1,"entries":[]}"#);
    let (_directory, result) = restore_bytes::<u32>(&file);
    match result {
        Err(error @ SnapshotError::Corrupt { .. }) => {
            let text = error.to_string();
            assert!(text.contains("byte order mark"), "{text}");
            assert!(!text.contains("expected `{`"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

/// The longest error message a restore or save may produce for `key`: the file's path,
/// a short prefix of the key and of any quoted text, and the fixed wording.
const SHORT_MESSAGE: usize = 600;

#[test]
fn errors_quote_only_a_prefix_of_a_long_key_and_say_its_length() {
    let long_key = "k".repeat(1 << 20);
    let long_text = "t".repeat(1 << 20);
    let cases = [
        (
            "a bad value",
            format!(r#"{{"version":1,"entries":[{{"key":"{long_key}","value":tru}}]}}"#),
        ),
        (
            "a value of the wrong type",
            format!(r#"{{"version":1,"entries":[{{"key":"{long_key}","value":"{long_text}"}}]}}"#),
        ),
        (
            "a long unsupported version",
            format!(r#"{{"version":"{long_text}","entries":[]}}"#),
        ),
        (
            "a long key of the wrong shape",
            format!(
                r#"{{"version":1,"entries":[{{"key":"{long_key}","value":1,"tags":"{long_text}"}}]}}"#
            ),
        ),
    ];
    for (case, file) in cases {
        let (_directory, result) = restore_bytes::<u32>(file.as_bytes());
        let error = result.unwrap_err();
        let text = error.to_string();
        assert!(
            text.len() < SHORT_MESSAGE,
            "{case}: a {}-byte message: {}",
            text.len(),
            &text[..SHORT_MESSAGE]
        );
        if text.contains("kkk") {
            assert!(text.contains("1048576 bytes"), "{case}: {text}");
        }
    }

    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let cache = BTreeMap::from([(long_key.clone(), CacheEntry::new(f64::NAN))]);
    let error = persistence.save(&cache).unwrap_err();
    assert!(
        matches!(&error, SnapshotError::Unrepresentable { key, .. } if *key == long_key),
        "the error keeps the whole key for the program"
    );
    let text = error.to_string();
    assert!(text.len() < SHORT_MESSAGE, "{}", text.len());
    assert!(text.contains("1048576 bytes"), "{text}");
}

/// A value nested `depth` levels deep, in one of several shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Nest {
    Leaf(u8),
    List(Vec<Nest>),
    Boxed(Box<Nest>),
    Pair(Box<Nest>, u8),
    Record { inner: Box<Nest> },
}

fn json_nest(depth: usize, shape: u8) -> serde_json::Value {
    let mut value = serde_json::json!(0);
    for level in 0..depth {
        value = match (usize::from(shape) + level) % 3 {
            0 => serde_json::json!([value]),
            1 => serde_json::json!({ "x": value }),
            _ => serde_json::json!([1, {"y": value, "z": "s"}]),
        };
        if shape == 3 {
            // Always arrays, the cheapest nesting.
            value = serde_json::json!([value]);
        }
    }
    value
}

/// JSON nesting of a `serde_json::Value`.
fn json_depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        serde_json::Value::Object(fields) => 1 + fields.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn typed_nest(depth: usize, shape: u8) -> Nest {
    let mut value = Nest::Leaf(7);
    for level in 0..depth {
        value = match (usize::from(shape) + level) % 4 {
            0 => Nest::List(vec![Nest::Leaf(1), value]),
            1 => Nest::Boxed(Box::new(value)),
            2 => Nest::Pair(Box::new(value), 2),
            _ => Nest::Record {
                inner: Box::new(value),
            },
        };
    }
    value
}

/// The deepest value nesting that restore reads (an entry object is one more level).
const DEEPEST_READABLE: usize = 126;

fn round_trip<V>(value: V) -> Result<(), SnapshotError>
where
    V: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + Send + Sync + Clone,
{
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let cache = BTreeMap::from([("deep".to_string(), CacheEntry::new(value))]);
    persistence.save(&cache)?;
    let restored = persistence
        .restore::<V>()
        .unwrap_or_else(|error| panic!("save accepted what restore refuses: {error}"));
    assert_eq!(restored.entries, cache.into_iter().collect());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Whatever `save` accepts, `restore` reads back; what it refuses is refused at save
    /// time, naming the key, and only when it is deeper than restore reads.
    #[test]
    fn whatever_save_accepts_restore_reads_back(depth in 0..400_usize, shape in 0..4_u8) {
        let value = json_nest(depth, shape);
        let nesting = json_depth(&value);
        match round_trip(value) {
            Ok(()) => prop_assert!(nesting <= DEEPEST_READABLE, "saved depth {nesting}"),
            Err(SnapshotError::Unrepresentable { key, reason }) => {
                prop_assert_eq!(key, "deep");
                prop_assert!(nesting > DEEPEST_READABLE, "refused depth {nesting}: {reason}");
            }
            Err(other) => prop_assert!(false, "{other}"),
        }
    }

    #[test]
    fn whatever_save_accepts_of_a_typed_value_restore_reads_back(depth in 0..200_usize, shape in 0..4_u8) {
        match round_trip(typed_nest(depth, shape)) {
            Ok(()) => {}
            Err(SnapshotError::Unrepresentable { key, .. }) => {
                prop_assert_eq!(key, "deep");
                // Every level of `Nest` is at least one level of JSON.
                prop_assert!(depth > DEEPEST_READABLE / 3, "refused depth {depth}");
            }
            Err(other) => prop_assert!(false, "{other}"),
        }
    }
}

#[test]
fn the_deepest_readable_value_saves_and_one_level_more_is_refused() {
    let nest = |depth: usize| {
        let mut value = serde_json::json!(1);
        for _ in 0..depth {
            value = serde_json::json!([value]);
        }
        value
    };
    round_trip(nest(DEEPEST_READABLE)).unwrap();
    let error = round_trip(nest(DEEPEST_READABLE + 1)).unwrap_err();
    assert!(
        matches!(&error, SnapshotError::Unrepresentable { key, .. } if key == "deep"),
        "{error:?}"
    );
}

#[test]
fn raw_values_round_trip_and_their_nesting_counts() {
    use serde_json::value::RawValue;
    let raw = |text: String| RawValue::from_string(text).unwrap();
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let lazy = BTreeMap::from([(
        "lazy".to_string(),
        CacheEntry::new(raw(r#"{"a": [1, 2.5, "x"]}"#.to_string())),
    )]);
    persistence.save(&lazy).unwrap();
    let restored = persistence.restore::<Box<RawValue>>().unwrap();
    let value: serde_json::Value =
        serde_json::from_str(restored.entries["lazy"].value.get()).unwrap();
    assert_eq!(value, serde_json::json!({"a": [1, 2.5, "x"]}));

    let nested = |depth: usize| raw(format!("{}{}", "[".repeat(depth), "]".repeat(depth)));
    let fits = BTreeMap::from([(
        "deep".to_string(),
        CacheEntry::new(nested(DEEPEST_READABLE)),
    )]);
    persistence.save(&fits).unwrap();
    assert_eq!(
        persistence
            .restore::<Box<RawValue>>()
            .unwrap()
            .entries
            .len(),
        1
    );
    let too_deep = BTreeMap::from([(
        "deep".to_string(),
        CacheEntry::new(nested(DEEPEST_READABLE + 1)),
    )]);
    let error = persistence.save(&too_deep).unwrap_err();
    assert!(
        matches!(&error, SnapshotError::Unrepresentable { key, .. } if key == "deep"),
        "{error:?}"
    );
}

/// Hostile pieces spliced into a good file at random places.
const SPLICES: [&[u8]; 12] = [
    b"\xff",
    b"\xe2\x82",
    br"\ud800",
    br"\udfff",
    b"1e400",
    b"\xef\xbb\xbf",
    b"\"",
    b",",
    b"{",
    b"]",
    b"\x00",
    br#","note":[1e400]"#,
];

/// Values for a spliced-in field, none of which `serde_json` reads as a `Value`.
const FIELD_VALUES: [&[u8]; 5] = [
    b"\"\xff\"",
    br#""\ud800""#,
    b"1e400",
    b"[0, -1e400]",
    br#"{"x": "\udc00"}"#,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever is spliced in, a restore never panics, and it is `Ok` only for a file that
    /// is valid JSON (an independent parser agrees); a file left in place is one whose
    /// bytes are JSON text (valid UTF-8).
    #[test]
    fn a_restore_is_ok_only_for_valid_json(
        splice in 0..SPLICES.len(),
        at in 0..10_000_usize,
        seed_entries in 1..6_u32,
        as_field in any::<bool>(),
    ) {
        let good: BTreeMap<String, CacheEntry<serde_json::Value>> = (0..seed_entries)
            .map(|index| {
                (
                    format!("k{index}"),
                    CacheEntry::new(serde_json::json!({"n": index, "s": "text", "f": 0.5}))
                        .tagged(["t"]),
                )
            })
            .collect();
        let directory = tempfile::tempdir().unwrap();
        let persistence = CachePersistence::new(directory.path());
        persistence.save(&good).unwrap();
        let mut bytes = fs::read(persistence.path()).unwrap();
        if as_field {
            // As a new field of any object: the file's, an entry's, or a value's.
            let opens: Vec<usize> = (0..bytes.len()).filter(|&index| bytes[index] == b'{').collect();
            let after = opens[at % opens.len()] + 1;
            let mut field = br#""note":"#.to_vec();
            field.extend_from_slice(FIELD_VALUES[splice % FIELD_VALUES.len()]);
            field.push(b',');
            bytes.splice(after..after, field);
        } else {
            let at = at % bytes.len();
            bytes.splice(at..at, SPLICES[splice].iter().copied());
        }
        fs::write(persistence.path(), &bytes).unwrap();
        match persistence.restore::<serde_json::Value>() {
            Ok(_) => prop_assert!(
                serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
                "restored a file that is not JSON: {}",
                String::from_utf8_lossy(&bytes)
            ),
            Err(error) if error.quarantined_to().is_none() => {
                prop_assert!(std::str::from_utf8(&bytes).is_ok(), "left in place: {error}");
                prop_assert_eq!(fs::read(persistence.path()).unwrap(), bytes);
            }
            Err(error) => prop_assert!(
                serde_json::from_slice::<serde_json::Value>(&bytes).is_err()
                    || matches!(error, SnapshotError::Corrupt { .. } | SnapshotError::UnsupportedVersion { .. }),
                "{error}"
            ),
        }
    }
}
