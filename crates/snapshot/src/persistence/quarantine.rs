//! Quarantine: a file whose bytes are bad is moved aside, never overwritten or deleted.

use std::{fs, path::PathBuf, time::SystemTime};

use super::{CachePersistence, SNAPSHOT_FILE_NAME};
use crate::{SnapshotError, entry::epoch_millis};

impl CachePersistence {
    /// Moves the unusable snapshot aside so no save can overwrite it, and records where.
    ///
    /// Runs under the save locks and only moves the file if it is still the one we read
    /// (same device and inode): a save that replaced it meanwhile wrote a good snapshot,
    /// which must not be quarantined.
    pub(super) fn quarantine(
        &self,
        mut error: SnapshotError,
        read: &fs::Metadata,
    ) -> SnapshotError {
        let destination = match self.lock() {
            Ok(_guard) => self.move_aside(read),
            Err(lock_error) => {
                tracing::error!(%lock_error, "cannot take the lock to quarantine the snapshot");
                None
            }
        };
        error.set_quarantined_to(destination);
        error
    }

    pub(super) fn move_aside(&self, read: &fs::Metadata) -> Option<PathBuf> {
        let current = fs::metadata(&self.path).ok()?;
        if !same_file(&current, read) {
            tracing::warn!(path = %self.path.display(), "the unusable snapshot was replaced by a newer save before it could be moved aside");
            return None;
        }
        let stamp = epoch_millis(SystemTime::now());
        let mut destination = self
            .path
            .with_file_name(format!("{SNAPSHOT_FILE_NAME}.corrupt-{stamp}"));
        let mut suffix = 1;
        while fs::symlink_metadata(&destination).is_ok() {
            destination = self
                .path
                .with_file_name(format!("{SNAPSHOT_FILE_NAME}.corrupt-{stamp}-{suffix}"));
            suffix += 1;
        }
        match fs::rename(&self.path, &destination) {
            Ok(()) => {
                if let Err(error) = self.sync_directory() {
                    tracing::warn!(%error, "cannot sync the directory after quarantining the snapshot");
                }
                tracing::warn!(from = %self.path.display(), to = %destination.display(), "moved an unusable cache snapshot aside");
                Some(destination)
            }
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, "cannot move an unusable cache snapshot aside");
                None
            }
        }
    }
}

#[cfg(unix)]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.len() == b.len() && a.modified().ok() == b.modified().ok()
}

#[cfg(test)]
mod tests {
    use crate::CachePersistence;

    #[test]
    fn move_aside_leaves_a_file_that_is_not_the_one_read() {
        let directory = tempfile::tempdir().unwrap();
        let persistence = CachePersistence::new(directory.path());
        std::fs::write(persistence.path(), "{ bad").unwrap();
        let bad = std::fs::metadata(persistence.path()).unwrap();
        // A save replaces the bad file (a new inode) before the quarantine runs.
        let other = directory.path().join("other");
        std::fs::write(&other, "{}").unwrap();
        std::fs::rename(&other, persistence.path()).unwrap();
        let good = std::fs::read(persistence.path()).unwrap();
        assert_eq!(persistence.move_aside(&bad), None);
        assert_eq!(std::fs::read(persistence.path()).unwrap(), good);

        // The file that was read is moved.
        let current = std::fs::metadata(persistence.path()).unwrap();
        let moved = persistence
            .move_aside(&current)
            .expect("the same file is moved");
        assert_eq!(std::fs::read(moved).unwrap(), good);
        assert!(!persistence.exists());
    }
}
