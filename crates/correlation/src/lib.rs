//! Task-local trace context (correlation id, operation, start time) with JSON start/complete lines.
//!
//! The implementation lands with issue #4; this crate is empty until then.
