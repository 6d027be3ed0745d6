//! Temp files: each save writes a uniquely named one; the next save sweeps those a crash left.

use std::{
    fs::{self, File, OpenOptions},
    io,
    path::PathBuf,
    time::SystemTime,
};

use super::CachePersistence;
use crate::SnapshotError;

/// Removes the temp file when dropped, unless the save got as far as renaming it.
pub(super) struct TempFile {
    pub(super) path: PathBuf,
    pub(super) armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed
            && let Err(error) = fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove the temp file of a failed save");
        }
    }
}

impl CachePersistence {
    /// Removes temp files left by crashed saves. Called with the lock held, when no other
    /// save can be writing one.
    pub(super) fn sweep_temp_files(&self) -> u64 {
        let Ok(listing) = fs::read_dir(&self.directory) else {
            return 0;
        };
        let mut swept = 0;
        for item in listing.flatten() {
            let name = item.file_name();
            if name
                .to_str()
                .is_some_and(|name| name.starts_with(&self.temp_prefix))
            {
                let path = item.path();
                match fs::remove_file(&path) {
                    Ok(()) => {
                        swept += 1;
                        tracing::warn!(path = %path.display(), "removed the temp file of an interrupted save");
                    }
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "cannot remove the temp file of an interrupted save");
                    }
                }
            }
        }
        swept
    }

    pub(super) fn create_temp_file(&self) -> Result<(File, TempFile), SnapshotError> {
        let mut attempt = 0_u32;
        loop {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.subsec_nanos());
            let path = self.directory.join(format!(
                "{}{}-{nanos}-{attempt}",
                self.temp_prefix,
                std::process::id()
            ));
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            restrict_to_owner(&mut options);
            match options.open(&path) {
                Ok(file) => return Ok((file, TempFile { path, armed: true })),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(error) => {
                    return Err(SnapshotError::io("create the temp file", &path, error));
                }
            }
        }
    }
}

#[cfg(unix)]
pub(super) fn restrict_to_owner(options: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt as _;
    options.mode(0o600);
}

#[cfg(not(unix))]
pub(super) fn restrict_to_owner(_: &mut OpenOptions) {}
