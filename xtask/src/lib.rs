//! The library half of `xtask`: the benchmark harness every crate's `benches/vs_peers.rs`
//! measures with (a dev-dependency, never a dependency of a library crate).

pub mod harness;
