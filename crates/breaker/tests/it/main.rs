//! Integration tests: behaviour, the named regressions of peer libraries, the model-based
//! property suite, a multi-thread stress test, logging and state export.

mod backoff;
mod behaviour;
mod model;
mod operations;
mod pitfalls;
mod stress;
mod support;
#[cfg(feature = "tower")]
mod tower;
