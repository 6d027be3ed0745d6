//! HTTP integration: classify `http::Response`s by status, and answer a rejection with a
//! `503 Service Unavailable` carrying `Retry-After`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Response, StatusCode, header::RETRY_AFTER};

use crate::{Classify, Outcome, Rejected};

/// Classifies HTTP results by status: `5xx` and `429 Too Many Requests` are failures, every
/// other status a success (the server answered), and a transport error (`Err`) a failure.
///
/// **It honours the upstream's `Retry-After`.** When a failing response carries one (delay
/// seconds or an HTTP date) and the breaker is open after recording it, the breaker stays
/// open at least that long, capped at [`retry_after_cap`](HttpStatus::retry_after_cap)
/// (default 10 minutes, so a hostile header cannot park it for a day), and rejections
/// report that time. A malformed or past header is ignored.
///
/// Classification sees the response head only: an error in a streamed body after the head
/// arrived is not seen by the breaker. If it matters, take a
/// [`Permit`](crate::Permit) with [`try_acquire`](crate::CircuitBreaker::try_acquire) and
/// report the outcome once the body is read.
///
/// # Examples
///
/// ```
/// use keel_breaker::{Classify, HttpStatus, Outcome};
/// use http::{Response, StatusCode};
///
/// let response = |status: StatusCode| {
///     Ok::<_, std::io::Error>(Response::builder().status(status).body(()).unwrap())
/// };
/// let classifier = HttpStatus::new();
/// assert_eq!(classifier.classify(&response(StatusCode::BAD_GATEWAY)), Outcome::Failure);
/// assert_eq!(classifier.classify(&response(StatusCode::TOO_MANY_REQUESTS)), Outcome::Failure);
/// assert_eq!(classifier.classify(&response(StatusCode::NOT_FOUND)), Outcome::Success);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpStatus {
    cap: Duration,
}

/// The longest `Retry-After` honoured by default.
const DEFAULT_RETRY_AFTER_CAP: Duration = Duration::from_secs(600);

impl Default for HttpStatus {
    fn default() -> HttpStatus {
        HttpStatus {
            cap: DEFAULT_RETRY_AFTER_CAP,
        }
    }
}

impl HttpStatus {
    /// The default classifier: honours `Retry-After` up to 10 minutes.
    pub const fn new() -> HttpStatus {
        HttpStatus {
            cap: DEFAULT_RETRY_AFTER_CAP,
        }
    }

    /// Honours `Retry-After` up to `cap` (`Duration::ZERO`: ignore the header).
    ///
    /// # Examples
    ///
    /// ```
    /// use keel_breaker::HttpStatus;
    /// use std::time::Duration;
    ///
    /// let classifier = HttpStatus::new().retry_after_cap(Duration::from_secs(60));
    /// # let _ = classifier;
    /// ```
    #[must_use]
    pub const fn retry_after_cap(self, cap: Duration) -> HttpStatus {
        HttpStatus { cap }
    }
}

impl<B, E> Classify<Response<B>, E> for HttpStatus {
    #[inline]
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(response) if is_failure(response.status()) => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }

    fn retry_after(&self, result: &Result<Response<B>, E>) -> Option<Duration> {
        let response = result.as_ref().ok()?;
        let wait = parse_retry_after(response.headers(), SystemTime::now())?;
        (!self.cap.is_zero()).then(|| wait.min(self.cap))
    }
}

/// The wait a `Retry-After` header asks for at `now`: delay seconds, or an IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`, the form RFC 9110 requires senders to use). `None`
/// when absent, malformed, or not in the future.
fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
        // More digits than a u64 holds are a very long time: the cap applies.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = parse_imf_fixdate(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    at.checked_sub(now)
        .filter(|seconds| *seconds > 0)
        .map(Duration::from_secs)
}

/// Seconds since the Unix epoch of an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_imf_fixdate(value: &str) -> Option<u64> {
    let rest = value.get(5..)?; // "Sun, "
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: u64 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':');
    let (hours, minutes, seconds): (u64, u64, u64) = (
        clock.next()?.parse().ok()?,
        clock.next()?.parse().ok()?,
        clock.next()?.parse().ok()?,
    );
    if parts.next()? != "GMT"
        || parts.next().is_some()
        || !(1..=31).contains(&day)
        || year < 1970
        || hours > 23
        || minutes > 59
        || seconds > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some(days * 86_400 + hours * 3_600 + minutes * 60 + seconds)
}

/// Days from 1970-01-01 to the given date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12; // March = 0
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era).checked_sub(719_468)
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
/// use keel_breaker::{Rejected, rejection_response};
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn retry_after_reads_delay_seconds_and_imf_fixdates() {
        // RFC 9110's example date.
        assert_eq!(
            parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777 - 90);
        assert_eq!(
            parse_retry_after(&headers("Sun, 06 Nov 1994 08:49:37 GMT"), now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after(&headers("120"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(&headers("99999999999999999999999"), now),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in [
            "",
            "-5",
            "1.5",
            "soon",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 06 Nov 1960 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(&headers(bad), now), None, "{bad:?}");
        }
        // A date in the past asks for nothing.
        let later = now + Duration::from_secs(3600);
        assert_eq!(
            parse_retry_after(&headers("Sun, 06 Nov 1994 08:49:37 GMT"), later),
            None
        );
    }
}
