//! The reqwest integration (feature `reqwest`): a `reqwest-middleware` middleware, set up
//! once per client, that makes every request a span of its own carrying that span's
//! headers.
//!
//! ```
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(keel_correlation::reqwest::Middleware::new())
//!     .build();
//! // Inside a trace, `client.get(url).send().await` is a child span of the trace, and the
//! // request carries `traceparent` (its own parent-id), `tracestate` and the id headers.
//! # drop(client);
//! ```

use std::{borrow::Cow, fmt, sync::Arc};

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Next, Result};

use crate::{
    TraceOutcome, client_call,
    http::{insert, is_server_error, status_outcome},
};

/// Names a request's span.
type Operation = Arc<dyn Fn(&Request) -> Cow<'static, str> + Send + Sync>;

/// `METHOD host/path`, the default span name.
fn method_and_target(request: &Request) -> Cow<'static, str> {
    let url = request.url();
    Cow::Owned(format!(
        "{} {}{}",
        request.method(),
        url.host_str().unwrap_or_default(),
        url.path()
    ))
}

/// The `reqwest-middleware` middleware: each request is a child span of the running trace
/// (a new trace outside one), whose `traceparent` (so its own parent-id), `tracestate` and
/// id headers the request carries; a 5xx response or an error ends the span as an `error`.
#[derive(Clone)]
pub struct Middleware {
    operation: Operation,
}

impl fmt::Debug for Middleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Middleware").finish_non_exhaustive()
    }
}

impl Default for Middleware {
    fn default() -> Self {
        Self::new()
    }
}

impl Middleware {
    /// Spans named `METHOD host/path`.
    pub fn new() -> Self {
        Self {
            operation: Arc::new(method_and_target),
        }
    }

    /// How a request's span is named.
    ///
    /// ```
    /// let middleware = keel_correlation::reqwest::Middleware::new()
    ///     .operation(|request| format!("call {}", request.url().path()).into());
    /// # drop(middleware);
    /// ```
    #[must_use]
    pub fn operation(
        mut self,
        operation: impl Fn(&Request) -> Cow<'static, str> + Send + Sync + 'static,
    ) -> Self {
        self.operation = Arc::new(operation);
        self
    }
}

/// A response's outcome: an error is an error, and so is a 5xx response.
struct Sent(Result<Response>);

impl TraceOutcome for Sent {
    fn trace_error(&self) -> Option<&dyn fmt::Display> {
        match &self.0 {
            Ok(response) => status_outcome(response.status(), is_server_error),
            Err(error) => Some(error),
        }
    }
}

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for Middleware {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        let operation = (self.operation)(&request);
        let sent = client_call(operation, |headers| async move {
            insert(request.headers_mut(), headers);
            Sent(next.run(request, extensions).await)
        })
        .await;
        sent.0
    }
}
