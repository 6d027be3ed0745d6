//! The async API (feature `tokio`): `save_async`, `restore_async`, and the `Persister`,
//! driven with a paused clock.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use keel_snapshot::{CacheEntry, CachePersistence, Changes, Persister};

type Cache = Arc<Mutex<HashMap<String, CacheEntry<u64>>>>;

/// A persister whose source counts its calls and copies `cache`.
fn counting_persister(
    persistence: &CachePersistence,
    period: Duration,
    cache: &Cache,
) -> (Persister, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let source_calls = Arc::clone(&calls);
    let source_cache = Arc::clone(cache);
    let persister = Persister::spawn(persistence.clone(), period, move || {
        // Relaxed: a counter read after the task's saves are awaited.
        source_calls.fetch_add(1, Ordering::Relaxed);
        source_cache.lock().unwrap().clone()
    });
    (persister, calls)
}

/// Virtual time (the clock is paused) after which a wait counts as hung.
const HUNG: Duration = Duration::from_secs(60);

/// Awaits `future`, failing the test instead of hanging if it does not finish within
/// [`HUNG`] of paused time: a broken persister then fails the test instead of hanging it.
async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(HUNG, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {HUNG:?} of paused time"))
}

/// Waits, yielding, until the source has been called `count` times, so the test can act
/// while that save is still running. Yields instead of sleeping because a sleep lets the
/// save finish first; and a paused clock never advances while a task spins, so the guard
/// against a hang is a bound on yields, not a timeout. On the current-thread runtime the
/// persister task runs within a yield or two of being notified.
async fn until_calls(calls: &AtomicU64, count: u64) {
    for _ in 0..100_000 {
        if calls.load(Ordering::Relaxed) >= count {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the source was not called {count} times: the persister did not react to requests");
}

fn insert(cache: &Cache, key: &str, value: u64) {
    cache
        .lock()
        .unwrap()
        .insert(key.to_string(), CacheEntry::new(value));
}

#[tokio::test(start_paused = true)]
async fn persister_saves_every_period_and_once_more_on_shutdown() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let cache = Cache::default();
    insert(&cache, "a", 1);
    let (persister, calls) = counting_persister(&persistence, Duration::from_secs(10), &cache);

    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(
        calls.load(Ordering::Relaxed),
        0,
        "no save before the first period"
    );
    tokio::time::sleep(Duration::from_secs(26)).await;
    assert_eq!(
        calls.load(Ordering::Relaxed),
        3,
        "saves at 10 s, 20 s, 30 s"
    );
    assert_eq!(persistence.restore::<u64>().unwrap().entries.len(), 1);

    insert(&cache, "b", 2);
    let report = within("shutdown", persister.shutdown()).await.unwrap();
    assert_eq!(report.entries, 2);
    assert_eq!(calls.load(Ordering::Relaxed), 4);
    assert_eq!(persistence.restore::<u64>().unwrap().entries["b"].value, 2);
}

#[tokio::test(start_paused = true)]
async fn requests_coalesce() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let cache = Cache::default();
    insert(&cache, "a", 1);
    let (persister, calls) = counting_persister(&persistence, Duration::from_secs(3600), &cache);

    for _ in 0..5 {
        persister.request_save();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls.load(Ordering::Relaxed), 1, "five requests, one save");
    assert!(persistence.exists());

    persister.request_save();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls.load(Ordering::Relaxed), 2);

    within("shutdown", persister.shutdown()).await.unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 3, "the final save");
}

#[tokio::test(start_paused = true)]
async fn requests_during_a_save_coalesce_into_one_more_save() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let cache = Cache::default();
    insert(&cache, "a", 1);
    let (persister, calls) = counting_persister(&persistence, Duration::from_secs(3600), &cache);

    persister.request_save();
    // Let the task take the source and start writing (on the blocking pool).
    until_calls(&calls, 1).await;
    insert(&cache, "b", 2);
    for _ in 0..5 {
        persister.request_save();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        calls.load(Ordering::Relaxed),
        2,
        "five requests during a save, one more save"
    );
    assert_eq!(persistence.restore::<u64>().unwrap().entries.len(), 2);
    within("shutdown", persister.shutdown()).await.unwrap();
}

#[tokio::test]
async fn save_async_and_restore_async_round_trip() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let entries: Vec<(String, CacheEntry<u64>)> = (0..100)
        .map(|index| (format!("k{index}"), CacheEntry::new(index)))
        .collect();
    let report = persistence.save_async(entries).await.unwrap();
    assert_eq!(report.entries, 100);
    let restored = persistence.restore_async::<u64>().await.unwrap();
    assert_eq!(restored.entries.len(), 100);
    assert_eq!(restored.entries["k42"].value, 42);
}

#[tokio::test]
async fn dropping_a_save_future_does_not_stop_the_write() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let entries = vec![("k".to_string(), CacheEntry::new(1_u64))];
    let mut future = Box::pin(persistence.save_async(entries));
    // Poll once, which hands the work to the blocking pool, then drop the future.
    let _ = futures_poll_once(future.as_mut()).await;
    drop(future);
    for _ in 0..5000 {
        if persistence.last_persist_time().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        persistence.last_persist_time().is_some(),
        "the save completed anyway"
    );
    assert_eq!(persistence.restore::<u64>().unwrap().entries["k"].value, 1);
}

/// Polls a future exactly once.
async fn futures_poll_once<F: std::future::Future + Unpin>(
    future: F,
) -> std::task::Poll<F::Output> {
    let mut future = future;
    std::future::poll_fn(|context| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut future).poll(context))
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_zero_period_means_saves_only_on_request_and_shutdown() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let cache = Cache::default();
    insert(&cache, "a", 1);
    let (persister, calls) = counting_persister(&persistence, Duration::ZERO, &cache);

    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(calls.load(Ordering::Relaxed), 0, "no periodic saves");
    persister.request_save();
    until_calls(&calls, 1).await;
    insert(&cache, "b", 2);
    let report = within("shutdown", persister.shutdown()).await.unwrap();
    assert_eq!(report.entries, 2);
    assert_eq!(persistence.restore::<u64>().unwrap().entries.len(), 2);
}

/// A persister that skips unchanged saves, saving from the locked map (no copy), and
/// counting the saves it really makes.
fn tracking_persister(
    persistence: &CachePersistence,
    period: Duration,
    cache: &Cache,
    changes: &Changes,
) -> (Persister, Arc<AtomicU64>) {
    let saves = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&saves);
    let view = Arc::clone(cache);
    let persister = Persister::builder(persistence.clone(), period)
        .skip_unchanged(changes.clone())
        .spawn_saving(move |persistence| {
            // Relaxed: a counter read after the task's saves are awaited.
            counted.fetch_add(1, Ordering::Relaxed);
            persistence.save(&*view.lock().unwrap())
        });
    (persister, saves)
}

#[tokio::test(start_paused = true)]
async fn an_idle_cache_is_saved_once_not_every_period() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let cache = Cache::default();
    let changes = Changes::new();
    insert(&cache, "a", 1);
    let (persister, saves) =
        tracking_persister(&persistence, Duration::from_secs(2), &cache, &changes);

    tokio::time::sleep(Duration::from_secs(21)).await;
    assert_eq!(
        saves.load(Ordering::Relaxed),
        1,
        "ten periods, one save: the first"
    );
    let first = persistence.last_persist_time();

    insert(&cache, "b", 2);
    changes.mark();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(saves.load(Ordering::Relaxed), 2, "a change, one more save");
    assert_eq!(persistence.restore::<u64>().unwrap().entries.len(), 2);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(saves.load(Ordering::Relaxed), 2);
    persister.request_save();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        saves.load(Ordering::Relaxed),
        2,
        "a request for an unchanged cache"
    );

    // The final save of an unchanged cache is skipped too, reporting the last save.
    let report = within("shutdown", persister.shutdown()).await.unwrap();
    assert_eq!(report.entries, 2);
    assert_eq!(saves.load(Ordering::Relaxed), 2);
    assert!(persistence.last_persist_time() >= first);
}

#[tokio::test(start_paused = true)]
async fn a_change_during_a_save_and_a_failed_save_are_saved_again() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let changes = Changes::new();
    let attempts = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&attempts);
    let marker = changes.clone();
    let persister = Persister::builder(persistence.clone(), Duration::from_secs(5))
        .skip_unchanged(changes.clone())
        .spawn_saving(move |persistence| {
            let attempt = counted.fetch_add(1, Ordering::Relaxed) + 1;
            if attempt == 1 {
                // A write lands while the first save runs.
                marker.mark();
            }
            if attempt == 2 {
                // The second save fails; nothing changes afterwards.
                return Err(keel_snapshot::SnapshotError::Io {
                    action: "write",
                    path: persistence.path().to_path_buf(),
                    source: std::io::Error::other("disk full"),
                });
            }
            persistence.save(&std::collections::BTreeMap::from([(
                "k",
                CacheEntry::new(attempt),
            )]))
        });
    tokio::time::sleep(Duration::from_secs(16)).await;
    // 5 s: saved (with a change during it); 10 s: saved again, but failed; 15 s: retried
    // although nothing changed since.
    assert_eq!(attempts.load(Ordering::Relaxed), 3);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        attempts.load(Ordering::Relaxed),
        3,
        "then unchanged: skipped"
    );
    within("shutdown", persister.shutdown()).await.unwrap();
    assert_eq!(attempts.load(Ordering::Relaxed), 3);
    assert_eq!(persistence.restore::<u64>().unwrap().entries["k"].value, 3);
}

/// A value that cannot be cloned: a persister that saves it copies nothing.
#[derive(serde::Serialize)]
struct NotClone(u64);

#[tokio::test(start_paused = true)]
async fn spawn_saving_saves_values_that_cannot_be_cloned() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let cache = Arc::new(Mutex::new(HashMap::from([(
        "k".to_string(),
        CacheEntry::new(NotClone(7)),
    )])));
    let view = Arc::clone(&cache);
    let persister = Persister::builder(persistence.clone(), Duration::from_secs(5))
        .spawn_saving(move |persistence| persistence.save(&*view.lock().unwrap()));
    cache
        .lock()
        .unwrap()
        .insert("j".to_string(), CacheEntry::new(NotClone(8)));
    let report = within("shutdown", persister.shutdown()).await.unwrap();
    assert_eq!(report.entries, 2);
    assert_eq!(persistence.restore::<u64>().unwrap().entries["j"].value, 8);
}

/// A value behind an `Arc`: the source copies pointers, not values.
#[tokio::test(start_paused = true)]
async fn a_source_of_arc_values_copies_pointers_not_values() {
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let big = Arc::new("x".repeat(1 << 16));
    let cache = Arc::new(Mutex::new(HashMap::from([(
        "k".to_string(),
        CacheEntry::new(Arc::clone(&big)),
    )])));
    let source = Arc::clone(&cache);
    let copies = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&copies);
    let watched = Arc::clone(&big);
    let persister = Persister::spawn(persistence.clone(), Duration::from_secs(5), move || {
        let copy = source.lock().unwrap().clone();
        // Relaxed: read after the task's saves are awaited.
        counted.store(Arc::strong_count(&watched) as u64, Ordering::Relaxed);
        copy
    });
    within("shutdown", persister.shutdown()).await.unwrap();
    // The test's two handles, the cache's, and the copy's: one string in memory.
    assert_eq!(copies.load(Ordering::Relaxed), 4);
    let restored = persistence.restore::<Arc<String>>().unwrap();
    assert_eq!(restored.entries["k"].value, big);
}
