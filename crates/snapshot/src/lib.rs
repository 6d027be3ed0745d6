//! Crash-safe persistence of cache entries to a versioned JSON snapshot file.
//!
//! The implementation lands with issue #5; this crate is empty until then.
