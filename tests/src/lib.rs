//! Cross-crate integration tests and the resilient-service demo live in this package.
//!
//! The library itself is empty: the crates under `crates/` are independent, and this is
//! the one place where they meet (see `docs/ARCHITECTURE.md`).
