//! Integration tests for `snapshot`: one binary, one module per concern.
//!
//! Tests that need a second process re-execute this binary (`support::run_child`) with
//! an environment variable that makes the same test act as the child.

mod basics;
mod concurrency;
mod corruption;
mod crash;
mod faults;
mod hostile;
mod moka_cache;
mod observability;
mod persister;
mod roundtrip;
mod sinks;
mod support;
mod verdicts;
