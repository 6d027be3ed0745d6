//! `restore_into`: a restore straight into a caller's map or cache, with no intermediate map.

use std::{collections::BTreeMap, fmt::Write as _, fs};

use proptest::prelude::*;

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

/// One generated entry for the lazy-value property: the shape of its value (some the
/// fast path reads, some it leaves to the strict path), whether it has expired, its tags.
#[derive(Debug, Clone)]
struct Generated {
    shape: u8,
    expired: bool,
    tags: u8,
}

/// The entry's text in the file, and what a restore hands over for it (unless expired).
fn generated_entry(
    index: usize,
    generated: &Generated,
) -> (String, (String, CacheEntry<serde_json::Value>)) {
    let key = format!("k{index}");
    let value = match generated.shape {
        0 => format!(r#"{{"id":{index},"name":"user-{index}","ok":true}}"#),
        // A `\u` escape, nesting deeper than the fast path follows, an unknown field:
        // entries the strict path reads, between those the fast path reads.
        1 => r#""line\u0001""#.to_string(),
        2 => format!("{}{index}{}", "[".repeat(70), "]".repeat(70)),
        3 => index.to_string(),
        _ => r#""é ü""#.to_string(),
    };
    let unknown = if generated.shape == 5 {
        r#","extra":[1]"#
    } else {
        ""
    };
    let expires_at = if generated.expired {
        Some(NOW_MILLIS - 1)
    } else if index.is_multiple_of(2) {
        Some(NOW_MILLIS + 1000)
    } else {
        None
    };
    let tags = match generated.tags {
        0 => None,
        1 => Some(Vec::new()),
        _ => Some(vec!["t".to_string(), format!("t{index}")]),
    };
    let mut text = format!(r#"{{"key":"{key}","value":{value}{unknown}"#);
    if let Some(expires_at) = expires_at {
        write!(text, r#","expiresAt":{expires_at}"#).unwrap();
    }
    if let Some(tags) = &tags {
        write!(text, r#","tags":{}"#, serde_json::to_string(tags).unwrap()).unwrap();
    }
    text.push('}');
    let entry = CacheEntry {
        value: serde_json::from_str(&value).unwrap(),
        expires_at,
        tags,
    };
    (text, (key, entry))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Lazy values restored through `restore_into` (the fast path, its entries built on
    /// the helper thread or, when the helper is behind, on the parser's) reach the sink
    /// complete and in file order, the same entries as a strict restore of `Value`s,
    /// across raw batches and around the entries the strict path reads.
    #[test]
    fn lazy_values_reach_the_sink_in_file_order_as_the_strict_path_gives_them(
        generated in proptest::collection::vec(
            (0_u8..6, any::<bool>(), 0_u8..3)
                .prop_map(|(shape, expired, tags)| Generated { shape, expired: expired && shape != 3, tags }),
            0..9000,
        ),
        slow_sink in any::<bool>(),
    ) {
        let directory = tempfile::tempdir().unwrap();
        let persistence = fixed_clock(CachePersistence::new(directory.path()));
        let mut texts = Vec::new();
        let mut expected = Vec::new();
        for (index, generated) in generated.iter().enumerate() {
            let (text, entry) = generated_entry(index, generated);
            texts.push(text);
            if !generated.expired {
                expected.push(entry);
            }
        }
        fs::write(
            persistence.path(),
            format!(r#"{{"version":1,"entries":[{}]}}"#, texts.join(",")),
        )
        .unwrap();

        let mut lazy = Vec::new();
        let lazy_report = persistence
            .restore_into(|key, entry: CacheEntry<Box<serde_json::value::RawValue>>| {
                if slow_sink && lazy.is_empty() {
                    // Holds the helper up, so the parser finds it behind and builds
                    // batches itself.
                    std::thread::sleep(std::time::Duration::from_millis(3));
                }
                let value = serde_json::from_str(entry.value.get()).unwrap();
                lazy.push((key, CacheEntry { value, expires_at: entry.expires_at, tags: entry.tags }));
            })
            .unwrap();
        let mut strict = Vec::new();
        let strict_report = persistence
            .restore_into(|key, entry: CacheEntry<serde_json::Value>| strict.push((key, entry)))
            .unwrap();
        prop_assert_eq!(&strict, &expected);
        prop_assert_eq!(&lazy, &expected);
        prop_assert_eq!(
            (lazy_report.loaded, lazy_report.expired),
            (strict_report.loaded, strict_report.expired)
        );
        prop_assert_eq!(lazy_report.loaded, expected.len() as u64);
    }
}

/// A lazy value that refuses some texts: it asks for a raw value (so it takes the fast
/// path) and then accepts only objects.
#[derive(Debug, serde::Deserialize)]
#[serde(try_from = "Box<serde_json::value::RawValue>")]
struct ObjectOnly(
    #[allow(dead_code, reason = "only its refusal matters")] Box<serde_json::value::RawValue>,
);

impl TryFrom<Box<serde_json::value::RawValue>> for ObjectOnly {
    type Error = &'static str;

    fn try_from(raw: Box<serde_json::value::RawValue>) -> Result<Self, Self::Error> {
        if raw.get().starts_with('{') {
            Ok(Self(raw))
        } else {
            Err("not an object")
        }
    }
}

#[test]
fn a_lazy_value_refused_after_the_fast_path_gets_the_strict_verdict_and_no_entry_twice() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let entries: Vec<String> = (0..20_000)
        .map(|index| {
            let value = if index == 15_000 {
                "7".to_string()
            } else {
                format!(r#"{{"id":{index}}}"#)
            };
            format!(r#"{{"key":"k{index}","value":{value}}}"#)
        })
        .collect();
    fs::write(
        persistence.path(),
        format!(r#"{{"version":1,"entries":[{}]}}"#, entries.join(",")),
    )
    .unwrap();
    let mut seen = Vec::new();
    let error = persistence
        .restore_into(|key, _: CacheEntry<ObjectOnly>| seen.push(key))
        .unwrap_err();
    // The map restore reads such an entry by the strict path alone: the same verdict.
    let expected = persistence.restore::<ObjectOnly>().unwrap_err();
    assert_eq!(error.to_string(), expected.to_string());
    match &error {
        SnapshotError::Incompatible { key, .. } => assert_eq!(key.as_deref(), Some("k15000")),
        other => panic!("{other:?}"),
    }
    assert!(persistence.exists(), "a good file stays in place");
    // A prefix of the file, each entry once, never the refused one.
    assert!(seen.len() <= 15_000, "{}", seen.len());
    for (index, key) in seen.iter().enumerate() {
        assert_eq!(key, &format!("k{index}"));
    }
}

/// A hasher that counts the hashers built from it: proof that the restored map hashes
/// with the caller's hasher, not one of its own.
#[derive(Clone, Default)]
struct Counting(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl std::hash::BuildHasher for Counting {
    type Hasher = std::hash::DefaultHasher;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::hash::DefaultHasher::new()
    }
}

#[test]
fn restore_with_a_hasher_fills_a_map_that_hashes_with_it_and_matches_restore() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = fixed_clock(CachePersistence::new(directory.path()));
    let mut text = String::from(r#"{"version":1,"entries":["#);
    for index in 0..20_000_u64 {
        // Every tenth entry expired, every hundredth key repeated later.
        let expires = if index % 10 == 3 {
            NOW_MILLIS
        } else {
            NOW_MILLIS + 1
        };
        write!(
            text,
            r#"{{"key":"k{index}","value":{index},"expiresAt":{expires}}},"#
        )
        .unwrap();
    }
    for index in (0..20_000_u64).step_by(100) {
        write!(text, r#"{{"key":"k{index}","value":{}}},"#, index + 1).unwrap();
    }
    text.pop();
    text.push_str("]}");
    fs::write(persistence.path(), text).unwrap();

    let plain = persistence.restore::<u64>().unwrap();
    let hasher = Counting::default();
    let restored = persistence
        .restore_with_hasher::<u64, _>(hasher.clone())
        .unwrap();
    let built = hasher.0.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        built >= restored.entries.len(),
        "every key hashed with the caller's hasher ({built} hashers built)"
    );
    // 2 000 expired (index % 10 == 3), 200 superseded by their later repeat; and the
    // same as `restore` reports (which shares the path, so not proof on its own).
    let counts = |report: &keel_snapshot::RestoreReport| {
        (report.found, report.loaded, report.expired, report.rejected)
    };
    assert_eq!(counts(&restored.report), (true, 18_000, 2_000, 200));
    assert_eq!(counts(&restored.report), counts(&plain.report));
    assert_eq!(restored.entries.len(), 18_000);
    assert_eq!(restored.entries.len(), plain.entries.len());
    for (key, entry) in &plain.entries {
        assert_eq!(restored.entries.get(key), Some(entry), "{key}");
    }
    assert_eq!(restored.entries["k300"].value, 301, "the later entry wins");
    assert!(!restored.entries.contains_key("k3"), "expired");

    // No file: an empty map, with the caller's hasher.
    fs::remove_file(persistence.path()).unwrap();
    let empty = persistence
        .restore_with_hasher::<u64, _>(Counting::default())
        .unwrap();
    assert!(empty.entries.is_empty() && !empty.report.found);

    // A bad file gets restore's verdict and is moved aside the same way.
    fs::write(persistence.path(), r#"{"version":1,"entries":[{"key":"a","#).unwrap();
    let error = persistence
        .restore_with_hasher::<u64, _>(Counting::default())
        .unwrap_err();
    assert!(matches!(error, SnapshotError::Corrupt { .. }), "{error}");
    assert!(!persistence.exists(), "quarantined");
}
