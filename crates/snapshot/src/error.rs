//! `SnapshotError`: every way a save or restore can fail, each naming the file and the cause.

use std::{fmt, io, path::Path, path::PathBuf};

/// Why a save or restore failed.
///
/// Every variant names the file (or, for [`Unrepresentable`](Self::Unrepresentable), the
/// entry) and what was wrong. A restore error for a file whose *bytes* are bad
/// ([`Corrupt`](Self::Corrupt), [`UnsupportedVersion`](Self::UnsupportedVersion)) also
/// says where the file was moved: it is quarantined as
/// `cache-snapshot.json.corrupt-<epoch ms>` so no later save can overwrite the evidence.
/// A file that is fine but that this reader cannot take — a value that does not fit the
/// requested type ([`Incompatible`](Self::Incompatible)), or over this reader's limits
/// ([`TooLarge`](Self::TooLarge), [`TooManyEntries`](Self::TooManyEntries)) — is left
/// in place, and [`quarantined_to`](Self::quarantined_to) is `None`.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// std::fs::write(dir.path().join("cache-snapshot.json"), r#"{"version":2,"entries":[]}"#)?;
/// let persistence = keel_snapshot::CachePersistence::new(dir.path());
/// let error = persistence.restore::<String>().unwrap_err();
/// assert!(matches!(error, keel_snapshot::SnapshotError::UnsupportedVersion { .. }));
/// assert!(error.quarantined_to().is_some());
/// assert!(!persistence.exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A file system operation failed. Nothing was quarantined: the file may be fine.
    Io {
        /// What we were doing, e.g. `"write"` or `"replace the snapshot with"`.
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The snapshot file is not a valid snapshot: invalid JSON, truncated, or the wrong
    /// shape (an entry without `key` or `value`, `entries` not an array, ...).
    Corrupt {
        /// The snapshot file (its name before quarantine).
        path: PathBuf,
        /// 1-based line of the problem (0 if unknown).
        line: usize,
        /// 1-based column of the problem (0 if unknown).
        column: usize,
        /// Whether the file simply ends early, as a torn write would leave it.
        truncated: bool,
        /// The key of the entry being read when it failed, if it had been read (whole;
        /// the message quotes only a prefix of a long key, with its length).
        key: Option<String>,
        /// `serde_json`'s description, including the position.
        reason: String,
        /// Where the file was moved; `None` if it could not be moved (see the logs).
        quarantined_to: Option<PathBuf>,
    },
    /// The file's `version` is not `1`, the only version this crate reads.
    UnsupportedVersion {
        /// The snapshot file (its name before quarantine).
        path: PathBuf,
        /// The `version` found, as JSON text.
        version: String,
        /// Where the file was moved; `None` if it could not be moved.
        quarantined_to: Option<PathBuf>,
    },
    /// The file is a valid snapshot, but an entry's value does not fit the requested type
    /// `V` (for example a snapshot of numbers restored as strings), or the file holds
    /// valid JSON that `serde_json` cannot hold (a number beyond `f64` such as `1e400`, or
    /// arrays and objects nested more than 127 levels, counting the entry), in a value or
    /// an unknown field alike. The file is left in place: another reader can still load it.
    Incompatible {
        /// The snapshot file.
        path: PathBuf,
        /// The key of the entry whose value does not fit, if it had been read (whole;
        /// the message quotes only a prefix of a long key).
        key: Option<String>,
        /// 1-based line of the problem (0 if unknown).
        line: usize,
        /// 1-based column of the problem (0 if unknown).
        column: usize,
        /// `serde_json`'s description, with the position in the file.
        reason: String,
    },
    /// The file is larger than [`CachePersistence::max_file_size`](crate::CachePersistence::max_file_size).
    ///
    /// The limit is the reader's, not a fault of the file, so the file is left in place
    /// and `quarantined_to` is always `None`.
    TooLarge {
        /// The snapshot file (its name before quarantine).
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The configured limit in bytes.
        limit: u64,
        /// Where the file was moved; `None` if it could not be moved.
        quarantined_to: Option<PathBuf>,
    },
    /// A single entry (or top-level field) of the file is larger than this reader buffers:
    /// 256 MiB, or [`CachePersistence::max_file_size`](crate::CachePersistence::max_file_size)
    /// if that is smaller.
    ///
    /// Like the other limits, it is the reader's: the file is left in place.
    EntryTooLarge {
        /// The snapshot file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
        /// 1-based line where the entry starts.
        line: usize,
        /// 1-based column where the entry starts.
        column: usize,
    },
    /// The file holds more entries than
    /// [`CachePersistence::max_entries`](crate::CachePersistence::max_entries).
    ///
    /// The limit is the reader's, not a fault of the file, so the file is left in place
    /// and `quarantined_to` is always `None`.
    TooManyEntries {
        /// The snapshot file (its name before quarantine).
        path: PathBuf,
        /// The configured limit.
        limit: u64,
        /// Where the file was moved; `None` if it could not be moved.
        quarantined_to: Option<PathBuf>,
    },
    /// An entry's value has no faithful JSON form (a NaN or infinite float, which
    /// `serde_json` would write as `null`; a map with non-string keys; arrays and objects
    /// nested more than 126 levels, which a restore could not read back; or a `Serialize`
    /// impl that failed). The whole save was rejected; the previous snapshot is untouched.
    Unrepresentable {
        /// The entry's key (whole; the message quotes only a prefix of a long key).
        key: String,
        /// What is wrong with its value.
        reason: String,
    },
}

impl SnapshotError {
    /// Where a restore moved the unusable file, if it did.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// std::fs::write(dir.path().join("cache-snapshot.json"), "{ not json")?;
    /// let error = keel_snapshot::CachePersistence::new(dir.path()).restore::<u8>().unwrap_err();
    /// let moved_to = error.quarantined_to().unwrap();
    /// assert_eq!(std::fs::read_to_string(moved_to)?, "{ not json");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn quarantined_to(&self) -> Option<&Path> {
        match self {
            Self::Corrupt { quarantined_to, .. }
            | Self::UnsupportedVersion { quarantined_to, .. }
            | Self::TooLarge { quarantined_to, .. }
            | Self::TooManyEntries { quarantined_to, .. } => quarantined_to.as_deref(),
            Self::Io { .. }
            | Self::Incompatible { .. }
            | Self::EntryTooLarge { .. }
            | Self::Unrepresentable { .. } => None,
        }
    }

    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Records where the file went, for the variants that describe an unusable file.
    pub(crate) fn set_quarantined_to(&mut self, destination: Option<PathBuf>) {
        match self {
            Self::Corrupt { quarantined_to, .. }
            | Self::UnsupportedVersion { quarantined_to, .. }
            | Self::TooLarge { quarantined_to, .. }
            | Self::TooManyEntries { quarantined_to, .. } => *quarantined_to = destination,
            Self::Io { .. }
            | Self::Incompatible { .. }
            | Self::EntryTooLarge { .. }
            | Self::Unrepresentable { .. } => {}
        }
    }

    /// Whether the file's bytes themselves are bad (so it should be quarantined), rather
    /// than unreadable, or fine but not what this reader accepts.
    pub(crate) fn is_bad_file(&self) -> bool {
        matches!(self, Self::Corrupt { .. } | Self::UnsupportedVersion { .. })
    }
}

/// Characters of a key or of quoted text that errors and logs show at most.
const QUOTED_CHARS: usize = 48;

/// Characters of a reason (which may quote the file's text) that errors show at most.
const REASON_CHARS: usize = 240;

/// The first `limit` characters of `text`, and whether it was cut.
fn prefix(text: &str, limit: usize) -> (&str, bool) {
    match text.char_indices().nth(limit) {
        Some((cut, _)) => (&text[..cut], true),
        None => (text, false),
    }
}

/// `key` quoted for a message: whole if short, else a prefix and its length, so a
/// megabyte key cannot make a megabyte error message (or log line).
pub(crate) fn quoted(key: &str) -> String {
    match prefix(key, QUOTED_CHARS) {
        (whole, false) => format!("{whole:?}"),
        (start, true) => format!("{start:?}… ({} bytes)", key.len()),
    }
}

/// A reason cut to a few lines' length, saying how long it was.
pub(crate) fn shortened(reason: &str) -> String {
    match prefix(reason, REASON_CHARS) {
        (whole, false) => whole.to_owned(),
        (start, true) => format!("{start}… ({} bytes in all)", reason.len()),
    }
}

fn quarantine_note(quarantined_to: Option<&PathBuf>) -> String {
    match quarantined_to {
        Some(destination) => format!("; the file was moved to {}", destination.display()),
        None => String::new(),
    }
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            Self::Corrupt {
                path,
                key,
                reason,
                truncated,
                quarantined_to,
                ..
            } => {
                write!(f, "{} is not a valid cache snapshot", path.display())?;
                if *truncated {
                    f.write_str(" (it is truncated)")?;
                }
                if let Some(key) = key {
                    write!(f, ", in the entry {}", quoted(key))?;
                }
                write!(
                    f,
                    ": {}{}",
                    shortened(reason),
                    quarantine_note(quarantined_to.as_ref())
                )
            }
            Self::Incompatible {
                path, key, reason, ..
            } => {
                write!(f, "{} is a valid cache snapshot", path.display())?;
                if let Some(key) = key {
                    write!(f, ", but the entry {}", quoted(key))?;
                } else {
                    f.write_str(", but a value in it")?;
                }
                write!(
                    f,
                    " does not fit the requested type or this reader's limits: {}; the file was left in place",
                    shortened(reason)
                )
            }
            Self::UnsupportedVersion {
                path,
                version,
                quarantined_to,
            } => write!(
                f,
                "{} has snapshot version {}, but only version 1 is supported{}",
                path.display(),
                shortened(version),
                quarantine_note(quarantined_to.as_ref())
            ),
            Self::TooLarge {
                path,
                size,
                limit,
                quarantined_to,
            } => write!(
                f,
                "{} is {size} bytes, over the limit of {limit} bytes{}",
                path.display(),
                quarantine_note(quarantined_to.as_ref())
            ),
            Self::EntryTooLarge {
                path,
                limit,
                line,
                column,
            } => write!(
                f,
                "{} has an entry at line {line} column {column} larger than the limit of {limit} bytes; the file was left in place",
                path.display()
            ),
            Self::TooManyEntries {
                path,
                limit,
                quarantined_to,
            } => write!(
                f,
                "{} holds more than the limit of {limit} entries{}",
                path.display(),
                quarantine_note(quarantined_to.as_ref())
            ),
            Self::Unrepresentable { key, reason } => write!(
                f,
                "cannot save the entry {}: {}; nothing was saved",
                quoted(key),
                shortened(reason)
            ),
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
