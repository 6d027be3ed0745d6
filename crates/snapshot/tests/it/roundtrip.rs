//! Round trip: save then restore returns exactly the unexpired entries, for arbitrary
//! Unicode keys, values, tags and expiries.

use std::collections::HashMap;

use keel_snapshot::{CacheEntry, CachePersistence};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use crate::support::{NOW_MILLIS, fixed_clock};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Value {
    Text(String),
    Number(f64),
    Integer(i64),
    Record {
        label: String,
        items: Vec<Option<u32>>,
        nested: HashMap<String, bool>,
    },
    Nothing,
}

fn finite_float() -> impl Strategy<Value = f64> {
    prop::num::f64::POSITIVE
        | prop::num::f64::NEGATIVE
        | prop::num::f64::NORMAL
        | prop::num::f64::SUBNORMAL
        | prop::num::f64::ZERO
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<String>().prop_map(Value::Text),
        finite_float().prop_map(Value::Number),
        any::<i64>().prop_map(Value::Integer),
        (
            any::<String>(),
            prop::collection::vec(any::<Option<u32>>(), 0..4),
            prop::collection::hash_map(any::<String>(), any::<bool>(), 0..3)
        )
            .prop_map(|(label, items, nested)| Value::Record {
                label,
                items,
                nested
            }),
        Just(Value::Nothing),
    ]
}

fn expiry() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        Just(None),
        (NOW_MILLIS - 1000..NOW_MILLIS + 1000).prop_map(Some),
        Just(Some(NOW_MILLIS)),
        any::<u64>().prop_map(Some),
    ]
}

fn entry() -> impl Strategy<Value = CacheEntry<Value>> {
    (
        value(),
        expiry(),
        prop::option::of(prop::collection::vec(any::<String>(), 0..3)),
    )
        .prop_map(|(value, expires_at, tags)| CacheEntry {
            value,
            expires_at,
            tags,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn save_then_restore_returns_exactly_the_unexpired_entries(
        cache in prop::collection::hash_map(any::<String>(), entry(), 0..12)
    ) {
        let directory = tempfile::tempdir().unwrap();
        let persistence = fixed_clock(CachePersistence::new(directory.path()));
        let report = persistence.save(&cache).unwrap();
        prop_assert_eq!(report.entries, cache.len() as u64);

        let restored = persistence.restore::<Value>().unwrap();
        let expected: HashMap<String, CacheEntry<Value>> = cache
            .iter()
            .filter(|(_, entry)| !entry.is_expired_at(NOW_MILLIS))
            .map(|(key, entry)| (key.clone(), entry.clone()))
            .collect();
        prop_assert_eq!(restored.report.loaded, expected.len() as u64);
        prop_assert_eq!(restored.report.expired, (cache.len() - expected.len()) as u64);
        prop_assert_eq!(restored.entries, expected);
    }
}
