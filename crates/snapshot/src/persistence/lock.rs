//! The save locks: a mutex for this process's savers, `flock` on a sidecar file for other processes.

use std::{
    fs::{File, OpenOptions},
    sync::{MutexGuard, PoisonError},
};

use super::{CachePersistence, temp::restrict_to_owner};
use crate::SnapshotError;

impl CachePersistence {
    /// Takes the in-process lock, then the OS lock on the sidecar lock file.
    ///
    /// The data file is never locked: a rename replaces its inode, so a lock on it would
    /// protect nothing.
    pub(super) fn lock(&self) -> Result<(MutexGuard<'_, ()>, File), SnapshotError> {
        let in_process = self
            .shared
            .save_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        restrict_to_owner(&mut options);
        let lock_file = options
            .open(&self.lock_path)
            .map_err(|error| SnapshotError::io("open the lock file", &self.lock_path, error))?;
        lock_file
            .lock()
            .map_err(|error| SnapshotError::io("lock", &self.lock_path, error))?;
        Ok((in_process, lock_file))
    }
}
