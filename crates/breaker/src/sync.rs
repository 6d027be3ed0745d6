//! The one place atomics come from: `loom`'s under `--cfg loom`, `std`'s otherwise.
//!
//! Every other module imports atomics from here, so the loom model tests in
//! `tests/loom.rs` check exactly the code that ships.

#[cfg(loom)]
pub(crate) use loom::sync::Arc;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
