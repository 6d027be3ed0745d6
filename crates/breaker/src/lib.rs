//! A lock-free circuit breaker whose state lives in an `AtomicU8`.
//!
//! The implementation lands with issue #3; this crate is empty until then.
