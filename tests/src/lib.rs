//! Cross-crate integration tests and the resilient-service demo live in this package.
//!
//! The library crates under `crates/` are independent; this is the one place where they
//! meet (see `docs/ARCHITECTURE.md`). [`demo`] is the service behind
//! `cargo run --example demo`: an [`upstream`] that fails in bursts, the axum [`service`]
//! built from the crates' layers, a [`load`] generator, and the [`timeline`]
//! picture. It is a library so the tests in `tests/it` can run it in-process (on paused
//! time) or on loopback and assert on what it reports.

pub mod cli;
pub mod demo;
pub mod load;
pub mod service;
pub mod timeline;
pub mod upstream;

/// The root README's examples (the "use it in your axum service" wiring), compiled as
/// doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
