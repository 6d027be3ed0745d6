//! Observability: saves and restores emit `tracing` events with counts, bytes and
//! durations; quarantine and failures are logged too.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    sync::{Arc, Mutex},
};

use snapshot::{CacheEntry, CachePersistence};
use tracing_subscriber::fmt::MakeWriter;

use crate::support::{NOW_MILLIS, fixed_clock};

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl MakeWriter<'_> for Captured {
    type Writer = Self;

    fn make_writer(&self) -> Self {
        self.clone()
    }
}

#[test]
fn save_and_restore_events_carry_counts_bytes_and_durations() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .finish();
    let directory = tempfile::tempdir().unwrap();
    let persistence = fixed_clock(CachePersistence::new(directory.path()));
    let cache = BTreeMap::from([
        ("a", CacheEntry::new(1)),
        ("b", CacheEntry::new(2)),
        ("old", CacheEntry::new(3).expiring_at(NOW_MILLIS - 1)),
    ]);
    tracing::subscriber::with_default(subscriber, || {
        persistence.save(&cache).unwrap();
        let restored = persistence.restore::<i32>().unwrap();
        assert_eq!(restored.report.loaded, 2);
        fs::write(persistence.path(), "{").unwrap();
        let _ = persistence.restore_or_empty::<i32>();
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = |needle: &str| {
        text.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no event {needle:?} in:\n{text}"))
            .to_string()
    };
    let saved = line("cache snapshot saved");
    for field in ["entries=3", "bytes=", "duration_ms="] {
        assert!(saved.contains(field), "{field} missing: {saved}");
    }
    let restored = line("cache snapshot restored");
    for field in [
        "loaded=2",
        "expired=1",
        "rejected=0",
        "bytes=",
        "duration_ms=",
    ] {
        assert!(restored.contains(field), "{field} missing: {restored}");
    }
    assert!(line("moved an unusable cache snapshot aside").contains("WARN"));
    assert!(line("cache snapshot restore failed").contains("ERROR"));
}
