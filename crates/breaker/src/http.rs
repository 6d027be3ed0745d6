//! HTTP integration: classify `http::Response`s by status, and answer a rejection with a
//! `503 Service Unavailable` carrying `Retry-After`.

use http::{HeaderValue, Response, StatusCode, header::RETRY_AFTER};

use crate::{Classify, Outcome, Rejected};

/// Classifies HTTP results by status: `5xx` and `429 Too Many Requests` are failures, every
/// other status a success (the server answered), and a transport error (`Err`) a failure.
///
/// Classification sees the response head only: an error in a streamed body after the head
/// arrived is not seen by the breaker. If it matters, take a
/// [`Permit`](crate::Permit) with [`try_acquire`](crate::CircuitBreaker::try_acquire) and
/// report the outcome once the body is read.
///
/// # Examples
///
/// ```
/// use breaker::{Classify, HttpStatus, Outcome};
/// use http::{Response, StatusCode};
///
/// let response = |status: StatusCode| {
///     Ok::<_, std::io::Error>(Response::builder().status(status).body(()).unwrap())
/// };
/// assert_eq!(HttpStatus.classify(&response(StatusCode::BAD_GATEWAY)), Outcome::Failure);
/// assert_eq!(HttpStatus.classify(&response(StatusCode::TOO_MANY_REQUESTS)), Outcome::Failure);
/// assert_eq!(HttpStatus.classify(&response(StatusCode::NOT_FOUND)), Outcome::Success);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpStatus;

impl<B, E> Classify<Response<B>, E> for HttpStatus {
    #[inline]
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(response) if is_failure(response.status()) => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

fn is_failure(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// The response to send instead of calling a dependency the breaker rejected:
/// `503 Service Unavailable` with a `Retry-After` header in whole seconds, rounded up (none
/// while isolated, which has no deadline; an unbounded open time is capped at a day, the
/// header being advice), and an empty body.
///
/// # Examples
///
/// ```
/// use breaker::{Rejected, rejection_response};
/// use std::time::Duration;
///
/// let rejected = Rejected::Open {
///     retry_after: Duration::from_millis(2_100),
///     opened_ago: Duration::from_secs(28),
/// };
/// let response = rejection_response::<String>(&rejected);
/// assert_eq!(response.status(), 503);
/// assert_eq!(response.headers()["retry-after"], "3");
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub fn rejection_response<B: Default>(rejected: &Rejected) -> Response<B> {
    const DAY_SECONDS: u64 = 24 * 3600;
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    if let Some(wait) = rejected.retry_after() {
        let seconds = wait
            .as_secs()
            .saturating_add(u64::from(wait.subsec_nanos() > 0))
            .min(DAY_SECONDS);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
