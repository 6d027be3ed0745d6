//! The HTTP classifier the demo hands `breaker::BreakerLayer`: interim glue until the
//! breaker crate's own HTTP classifier (its `http` feature) is merged.
//!
//! [`classify_http`] decides a call's [`Outcome`] from the whole `Result`, so a `5xx` answer
//! counts as a failure while still reaching the caller as a response.

use breaker::Outcome;
use http::Response;

/// The errors tower services box.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP classifier: a `5xx` answer or a transport error (including a timeout) is a
/// failure, anything else a success.
pub fn classify_http<B, E>(result: &Result<Response<B>, E>) -> Outcome {
    match result {
        Ok(response) if response.status().is_server_error() => Outcome::Failure,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    }
}
