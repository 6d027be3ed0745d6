//! Cross-crate integration tests and the resilient-service demo live in this package.
//!
//! The library crates under `crates/` are independent; this is the one place where they
//! meet (see `docs/ARCHITECTURE.md`). [`demo`] is the scenario behind
//! `cargo run --example demo`, kept in the library so the tests in `tests/it` can run it
//! in-process on paused time and assert on what it reports.

pub mod demo;
