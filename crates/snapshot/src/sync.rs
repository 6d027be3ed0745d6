//! The one place this crate takes its atomics from, so every atomic use is easy to find
//! (and a loom model could swap them in, as the other crates of the workspace do).

pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
