//! The `moka` feature with real moka caches: remaining TTLs survive a restore, entries
//! that expire during a save or while the service is down never come back, a save runs
//! while writers insert, and the `Persister` saves a moka cache only when it changed.

use std::{
    fmt::Write as _,
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use keel_snapshot::{
    CacheEntry, CachePersistence, Changes, Persister,
    moka::{ExpiresAt, epoch_millis_now},
};
use moka::{future, sync::Cache};

type Moka = Cache<String, CacheEntry<u64>>;

fn moka_cache() -> Moka {
    Cache::builder().expire_after(ExpiresAt::new()).build()
}

/// Sleeps in steps of a millisecond until the wall clock is past `epoch_millis`
/// (bounded, so a stuck clock fails the test instead of hanging it).
fn wait_until_past(epoch_millis: u64) {
    for _ in 0..10_000 {
        if epoch_millis_now() > epoch_millis {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("the wall clock did not pass {epoch_millis}");
}

#[test]
fn restored_entries_keep_their_remaining_ttl() {
    let directory = tempfile::tempdir().unwrap();
    let now = epoch_millis_now();
    // The restore's clock stays at `now`, so it hands every entry to moka: only the
    // policy can expire the short one.
    let persistence = CachePersistence::new(directory.path())
        .with_clock(move || UNIX_EPOCH + Duration::from_millis(now));
    let short = now + 5;
    let cache: Moka = Cache::new(100);
    cache.insert("short".into(), CacheEntry::new(1).expiring_at(short));
    cache.insert(
        "long".into(),
        CacheEntry::new(2).expiring_at(now + 3_600_000),
    );
    cache.insert("forever".into(), CacheEntry::new(3));
    persistence.save_moka(&cache).unwrap();

    let restarted = moka_cache();
    let report = persistence.restore_moka(&restarted).unwrap();
    assert_eq!(report.loaded, 3, "{report:?}");
    wait_until_past(short);
    // moka was told how long each entry had left: the short one is gone on time,
    // not given a fresh TTL by the restart.
    assert_eq!(restarted.get("short"), None);
    assert_eq!(restarted.get("long").map(|entry| entry.value), Some(2));
    assert_eq!(restarted.get("forever").map(|entry| entry.value), Some(3));
    assert_eq!(
        restarted.get("long").unwrap().expires_at,
        Some(now + 3_600_000),
        "the wall-clock expiry is kept in the entry"
    );
}

#[test]
fn an_entry_that_expired_while_the_service_was_down_never_comes_back() {
    let directory = tempfile::tempdir().unwrap();
    // The restore's own clock says the entry is fresh; moka's policy, later, says it is
    // not: moka must not return it either.
    let saved_at = 1_700_000_000_000_u64;
    let persistence = CachePersistence::new(directory.path())
        .with_clock(move || UNIX_EPOCH + Duration::from_millis(saved_at));
    let entries = std::collections::BTreeMap::from([
        (
            "stale",
            CacheEntry::new(1_u64).expiring_at(saved_at + 1_000),
        ),
        (
            "fresh",
            CacheEntry::new(2_u64).expiring_at(saved_at + 10_000),
        ),
    ]);
    persistence.save(&entries).unwrap();
    let later = move || UNIX_EPOCH + Duration::from_millis(saved_at + 5_000);
    let restarted: Moka = Cache::builder()
        .expire_after(ExpiresAt::new().with_clock(later))
        .build();
    let report = persistence.restore_moka(&restarted).unwrap();
    assert_eq!(report.loaded, 2);
    assert_eq!(restarted.get("stale"), None);
    assert_eq!(restarted.get("fresh").map(|entry| entry.value), Some(2));
}

#[test]
fn entries_that_expire_during_a_save_are_not_restored() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let cache = moka_cache();
    let soon = epoch_millis_now() + 3;
    for index in 0..20_000_u64 {
        let entry = if index % 2 == 0 {
            CacheEntry::new(index).expiring_at(soon)
        } else {
            CacheEntry::new(index).expiring_at(soon + 3_600_000)
        };
        cache.insert(format!("k{index}"), entry);
    }
    // The short entries expire while (or before) the save reads them; whichever it
    // wrote, none of them may come back.
    let report = persistence.save_moka(&cache).unwrap();
    assert!(report.entries >= 10_000, "{report:?}");
    wait_until_past(soon);
    let restarted = moka_cache();
    let restored = persistence.restore_moka(&restarted).unwrap();
    assert_eq!(restored.loaded, 10_000, "{restored:?}");
    restarted.run_pending_tasks();
    assert_eq!(restarted.entry_count(), 10_000);
    for index in (0..20_000_u64).step_by(1_000) {
        let found = restarted.get(&format!("k{index}")).map(|entry| entry.value);
        assert_eq!(found, (index % 2 == 1).then_some(index), "k{index}");
    }
}

#[test]
fn a_save_while_writers_insert_is_whole_and_holds_every_earlier_entry() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let cache = moka_cache();
    for index in 0..30_000_u64 {
        cache.insert(format!("old-{index}"), CacheEntry::new(index));
    }
    let writer_cache = cache.clone();
    let writer = std::thread::spawn(move || {
        for index in 0..30_000_u64 {
            writer_cache.insert(format!("new-{index}"), CacheEntry::new(index + 1));
        }
    });
    let report = persistence.save_moka(&cache).unwrap();
    writer.join().unwrap();

    let restored = persistence.restore::<u64>().unwrap();
    assert_eq!(restored.report.loaded, report.entries);
    for index in 0..30_000_u64 {
        assert_eq!(
            restored.entries[&format!("old-{index}")].value,
            index,
            "old-{index}"
        );
    }
    for (key, entry) in &restored.entries {
        if let Some(index) = key.strip_prefix("new-") {
            assert_eq!(entry.value, index.parse::<u64>().unwrap() + 1, "{key}");
        }
    }
}

#[test]
fn a_future_cache_saves_and_restores_with_its_ttls() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let directory = tempfile::tempdir().unwrap();
    let now = epoch_millis_now();
    let persistence = CachePersistence::new(directory.path())
        .with_clock(move || UNIX_EPOCH + Duration::from_millis(now));
    let build = || -> future::Cache<String, CacheEntry<u64>> {
        future::Cache::builder()
            .expire_after(ExpiresAt::new())
            .build()
    };
    let short = now + 5;
    // Saved from a cache without the policy, so the short entry is surely in the file.
    let cache = future::Cache::new(10_000);
    runtime.block_on(async {
        for index in 0..2_000_u64 {
            cache
                .insert(
                    format!("k{index}"),
                    CacheEntry::new(index).expiring_at(short + 3_600_000),
                )
                .await;
        }
        cache
            .insert("short".into(), CacheEntry::new(7).expiring_at(short))
            .await;
    });
    persistence.save_moka(&cache).unwrap();
    let restarted = build();
    let report = persistence.restore_moka(&restarted).unwrap();
    assert_eq!(report.loaded, 2_001, "{report:?}");
    wait_until_past(short);
    runtime.block_on(async {
        assert_eq!(restarted.get("short").await, None);
        for index in 0..2_000_u64 {
            let found = restarted.get(&format!("k{index}")).await;
            assert_eq!(found.map(|entry| entry.value), Some(index));
        }
    });
}

#[tokio::test(start_paused = true)]
async fn the_persister_saves_a_moka_cache_only_when_it_changed() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let changes = Changes::new();
    let cache: Moka = Cache::builder()
        .expire_after(ExpiresAt::new().marking(changes.clone()))
        .build();
    cache.insert("a".into(), CacheEntry::new(1));
    let saved = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&saved);
    let view = cache.clone();
    let persister = Persister::builder(persistence.clone(), Duration::from_secs(5))
        .skip_unchanged(changes.clone())
        .spawn_saving(move |persistence| {
            // Relaxed: a counter read after the task's saves are awaited.
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            persistence.save_moka(&view)
        });
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(saved.load(std::sync::atomic::Ordering::Relaxed), 1);
    // An insert is a change, marked by the policy itself.
    cache.insert("b".into(), CacheEntry::new(2));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(saved.load(std::sync::atomic::Ordering::Relaxed), 2);
    persister.shutdown().await.unwrap();
    assert_eq!(saved.load(std::sync::atomic::Ordering::Relaxed), 2);
    let restarted = moka_cache();
    persistence.restore_moka(&restarted).unwrap();
    assert_eq!(restarted.get("b").map(|entry| entry.value), Some(2));
}

#[test]
fn restoring_into_moka_from_two_threads_keeps_the_later_of_repeated_keys() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let mut text = String::from(r#"{"version":1,"entries":["#);
    // Each key twice in a row: whichever thread takes the first must take the second.
    for index in 0..5_000_u64 {
        for round in 0..2_u64 {
            if round + index > 0 {
                text.push(',');
            }
            write!(
                text,
                r#"{{"key":"k{index}","value":{}}}"#,
                round * 100_000 + index
            )
            .unwrap();
        }
    }
    text.push_str("]}");
    std::fs::write(persistence.path(), text).unwrap();
    let restarted = moka_cache();
    let report = persistence.restore_moka(&restarted).unwrap();
    assert_eq!(report.loaded, 10_000);
    for index in 0..5_000_u64 {
        let found = restarted.get(&format!("k{index}")).map(|entry| entry.value);
        assert_eq!(found, Some(100_000 + index), "k{index}");
    }
}
