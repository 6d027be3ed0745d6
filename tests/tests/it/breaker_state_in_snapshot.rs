//! A breaker's exported state survives a restart through a `snapshot` file.

use std::time::Duration;

use keel_breaker::{CircuitBreaker, ManualClock, Policy, Rejected, State};
use keel_snapshot::{CacheEntry, CachePersistence};

#[test]
fn an_open_breaker_restored_from_a_snapshot_stays_open_for_the_remaining_time() {
    let open_for = Duration::from_secs(30);
    let clock = ManualClock::new();
    let before_restart = CircuitBreaker::builder("payments")
        .policy(Policy::consecutive_failures(2))
        .half_open_after(open_for)
        .clock(clock.clone())
        .build()
        .unwrap();
    for _ in 0..2 {
        let _ = before_restart.call(|| Err::<(), _>("503"));
    }
    assert_eq!(before_restart.state(), State::Open);
    clock.advance(Duration::from_secs(12));

    let dir = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(dir.path());
    let entry = CacheEntry::new(before_restart.saved_state());
    persistence.save([("breaker:payments", &entry)]).unwrap();
    drop(before_restart);

    let restored = persistence.restore::<keel_breaker::SavedState>().unwrap();
    let saved = restored.entries["breaker:payments"].value.clone();
    let clock = ManualClock::new(); // a new process: a new clock origin
    let after_restart = CircuitBreaker::builder("payments")
        .policy(Policy::consecutive_failures(2))
        .half_open_after(open_for)
        .clock(clock.clone())
        .initial_state(saved)
        .build()
        .unwrap();

    assert_eq!(after_restart.state(), State::Open);
    match after_restart.try_acquire() {
        Err(Rejected::Open { retry_after, .. }) => {
            assert_eq!(retry_after, Duration::from_secs(18));
        }
        other => panic!("expected a rejection with 18 s left, got {other:?}"),
    }
    clock.advance(Duration::from_secs(18) - Duration::from_millis(1));
    assert!(
        after_restart.try_acquire().is_err(),
        "still open 1 ms before the deadline"
    );
    clock.advance(Duration::from_millis(1));
    let probe = after_restart
        .try_acquire()
        .expect("the probe is admitted at the deadline");
    assert!(probe.is_probe());
    probe.success();
    assert_eq!(after_restart.state(), State::Closed);
}
