//! The `tower` integration (feature `tower`): a server layer that runs every request as a
//! trace, and a client layer that makes every outgoing request a span of its own.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use keel_correlation::tower::{ClientLayer, ServerLayer};
//! use tower_layer::Layer as _;
//! use tower_service::Service as _;
//!
//! /// Any `tower::Service<http::Request<B>>`: an axum router, a hyper service, a client.
//! #[derive(Clone)]
//! struct Hello;
//! impl tower_service::Service<http::Request<()>> for Hello {
//!     type Response = http::Response<&'static str>;
//!     type Error = std::convert::Infallible;
//!     type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
//!     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
//!         std::task::Poll::Ready(Ok(()))
//!     }
//!     fn call(&mut self, request: http::Request<()>) -> Self::Future {
//!         assert!(keel_correlation::current().is_some()); // the request is a trace
//!         std::future::ready(Ok(http::Response::new("hello")))
//!     }
//! }
//!
//! let mut service = ServerLayer::new().tracer(keel_correlation::Tracer::off()).layer(Hello);
//! let request = http::Request::get("/orders").header("x-request-id", "req-1").body(()).unwrap();
//! let response = service.call(request).await.unwrap();
//! assert_eq!(response.headers()["x-request-id"], "req-1"); // echoed back
//!
//! // A client: every request through it carries its own span's headers.
//! let _client = ClientLayer::new().layer(Hello);
//! # }
//! ```

use std::{
    borrow::Cow,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Extensions, HeaderMap, Method, Request, Response, Uri};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    Propagation, TraceOutcome, Tracer,
    context::OperationName,
    http::{insert, is_server_error, status_outcome},
    tracer::{Traced, child_scope, current_tracer, scope_from_incoming, traced_in},
};

/// The head of a request, borrowed, for naming its span: the method, the URI, the headers
/// and the extensions (e.g. axum's `MatchedPath`).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions.
    pub extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The head of `request`.
    ///
    /// ```
    /// let request = http::Request::get("/orders/7").body(()).unwrap();
    /// let head = keel_correlation::tower::RequestHead::of(&request);
    /// assert_eq!(head.uri.path(), "/orders/7");
    /// ```
    pub fn of<B>(request: &'a Request<B>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }
}

/// Names a request's trace from its head.
type Operation = Arc<dyn Fn(RequestHead<'_>) -> Cow<'static, str> + Send + Sync>;

/// A layer that runs every `http::Request` through the inner service as a trace: the trace
/// continues the request's headers (through [`Incoming`](crate::Incoming), so every value is validated and a
/// rejected one is logged with its reason only, at `debug`, and replaced), the inner
/// service is called and its future polled inside it, the end line reports the response
/// (a 5xx, or an `Err`, is an `error`; a panic `panic`; a dropped future `cancelled`), and
/// the response gets the id headers the [`Propagation`] selects (by default, the ones the
/// caller sent).
#[derive(Clone)]
pub struct ServerLayer {
    tracer: Option<Tracer>,
    propagation: Option<Propagation>,
    /// `None` for the default, `METHOD /path`, which the trace context holds in place
    /// (see `OperationName`) rather than in a `String` of its own.
    operation: Option<Operation>,
}

impl fmt::Debug for ServerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerLayer")
            .field("tracer", &self.tracer)
            .field("propagation", &self.propagation)
            .finish_non_exhaustive()
    }
}

impl Default for ServerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerLayer {
    /// The global tracer, the default propagation, operations named `METHOD /path`.
    pub fn new() -> Self {
        Self {
            tracer: None,
            propagation: None,
            operation: None,
        }
    }

    /// Where the lines go (the [`global`](crate::global) tracer by default).
    #[must_use]
    pub fn tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// The participant's choices (see [`Propagation`]).
    #[must_use]
    pub fn propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = Some(propagation);
        self
    }

    /// How a request's trace is named, from its head.
    ///
    /// ```
    /// let layer = keel_correlation::tower::ServerLayer::new()
    ///     .operation(|head| format!("{} {}", head.method, head.uri.path()).into());
    /// # drop(layer);
    /// ```
    #[must_use]
    pub fn operation(
        mut self,
        operation: impl Fn(RequestHead<'_>) -> Cow<'static, str> + Send + Sync + 'static,
    ) -> Self {
        self.operation = Some(Arc::new(operation));
        self
    }
}

impl<S> Layer<S> for ServerLayer {
    type Service = ServerService<S>;

    fn layer(&self, inner: S) -> ServerService<S> {
        ServerService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ServerLayer`] makes.
#[derive(Clone, Debug)]
pub struct ServerService<S> {
    inner: S,
    layer: ServerLayer,
}

impl<S, B, ResBody> Service<Request<B>> for ServerService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: fmt::Display,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let incoming = crate::http::incoming(request.headers(), self.layer.propagation.as_ref());
        // The headers to echo are the context's response headers, taken from it when the
        // response is ready; only a request that left a participation can have any.
        let echo = incoming.participation.is_some();
        let operation = match &self.layer.operation {
            Some(operation) => OperationName::from(operation(RequestHead::of(&request))),
            None => OperationName::joined(request.method().as_str(), request.uri().path()),
        };
        let tracer = self.layer.tracer.clone().unwrap_or_else(current_tracer);
        let mut scope = scope_from_incoming(&tracer, incoming, operation);
        // The inner service's `call` runs inside the trace too: some do their work there.
        let future = {
            let _entered = scope.enter();
            self.inner.call(request)
        };
        ResponseFuture {
            inner: traced_in(&tracer, scope, Classify { future }),
            echo,
        }
    }
}

pin_project! {
    /// The response future of [`ServerService`] and [`ClientService`]: the inner future
    /// inside its trace.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Traced<Classify<F>>,
        // Whether the response gets the trace's response headers (the server's does). A
        // flag, not the headers themselves: they are read from the trace's context when
        // the response is ready, so the future carries no `Vec` through its moves.
        echo: bool,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: fmt::Display,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Served(mut result) = ready!(this.inner.as_mut().poll(cx));
        if *this.echo
            && let Ok(response) = &mut result
            && let Some(context) = this.inner.as_ref().get_ref().context()
        {
            insert(response.headers_mut(), context.response_headers());
        }
        Poll::Ready(result)
    }
}

pin_project! {
    /// Gives the result an outcome.
    struct Classify<F> {
        #[pin]
        future: F,
    }
}

/// A response's outcome: an `Err` is an error, and so is a 5xx response.
struct Served<ResBody, E>(Result<Response<ResBody>, E>);

impl<ResBody, E: fmt::Display> TraceOutcome for Served<ResBody, E> {
    fn trace_error(&self) -> Option<&dyn fmt::Display> {
        match &self.0 {
            Ok(response) => status_outcome(response.status(), is_server_error),
            Err(error) => Some(error),
        }
    }
}

impl<F, ResBody, E> Future for Classify<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Served<ResBody, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().future.poll(cx).map(Served)
    }
}

/// A layer for tower-based HTTP clients (hyper-util's client, tonic channels): every request
/// is a child span of the running trace (a new trace outside one) named `METHOD host/path`,
/// and carries that span's headers (`traceparent`, `tracestate`, the id headers), so every
/// call has its own parent-id. A 5xx response or an `Err` ends the span as an `error`.
#[derive(Clone)]
pub struct ClientLayer {
    operation: Operation,
}

impl fmt::Debug for ClientLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLayer").finish_non_exhaustive()
    }
}

impl Default for ClientLayer {
    fn default() -> Self {
        Self::new()
    }
}

/// `METHOD host/path`, the default name of a client span.
fn method_and_target(head: RequestHead<'_>) -> Cow<'static, str> {
    let host = head.uri.host().unwrap_or_default();
    Cow::Owned(format!("{} {host}{}", head.method, head.uri.path()))
}

impl ClientLayer {
    /// Spans named `METHOD host/path`, written by the running trace's tracer.
    pub fn new() -> Self {
        Self {
            operation: Arc::new(method_and_target),
        }
    }

    /// How a request's span is named, from its head.
    #[must_use]
    pub fn operation(
        mut self,
        operation: impl Fn(RequestHead<'_>) -> Cow<'static, str> + Send + Sync + 'static,
    ) -> Self {
        self.operation = Arc::new(operation);
        self
    }
}

impl<S> Layer<S> for ClientLayer {
    type Service = ClientService<S>;

    fn layer(&self, inner: S) -> ClientService<S> {
        ClientService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ClientLayer`] makes.
#[derive(Clone, Debug)]
pub struct ClientService<S> {
    inner: S,
    layer: ClientLayer,
}

impl<S, B, ResBody> Service<Request<B>> for ClientService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: fmt::Display,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let operation = (self.layer.operation)(RequestHead::of(&request));
        let tracer = current_tracer();
        let mut scope = child_scope(&tracer, operation);
        if let Some(context) = scope.context() {
            insert(request.headers_mut(), context.outgoing_headers());
        }
        let future = {
            let _entered = scope.enter();
            self.inner.call(request)
        };
        ResponseFuture {
            inner: traced_in(&tracer, scope, Classify { future }),
            echo: false,
        }
    }
}
