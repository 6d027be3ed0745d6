//! Cross-crate integration tests: the crates working together, as a service would use them.

mod breaker_state_in_snapshot;
mod demo_process;
mod demo_scenario;
mod loopback;
