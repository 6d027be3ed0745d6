//! The trace context, the task-local that carries it, and the functions that read it.

use std::{
    borrow::Cow,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    Tracer,
    id::{CorrelationId, SpanId, TraceFlags, TraceId},
    w3c::{TraceParent, TraceState},
};

tokio::task_local! {
    /// The trace the running code belongs to.
    pub(crate) static CURRENT: TraceScope;
}

/// What a task-local trace scope holds: the running trace's context, or explicitly none (for
/// example `.in_current_trace()` created outside a trace). It appears in the type of
/// [`InTrace`](crate::InTrace); make one with `From<Option<Arc<TraceContext>>>`.
#[derive(Clone, Debug)]
pub struct TraceScope {
    // Only the pointer: tokio moves the scope in and out of the task-local on every poll. A
    // copy of the UUID next to it saved a pointer chase per `correlation_id()` but cost more
    // per trace (16 more bytes to move, and stalls reloading them), for no gain in the read.
    context: Option<Arc<TraceContext>>,
}

impl TraceScope {
    /// A scope for `context`.
    pub(crate) fn new(context: Arc<TraceContext>) -> Self {
        Self {
            context: Some(context),
        }
    }

    /// The running trace's context, if any.
    pub(crate) fn context(&self) -> Option<&Arc<TraceContext>> {
        self.context.as_ref()
    }
}

impl From<Option<Arc<TraceContext>>> for TraceScope {
    fn from(context: Option<Arc<TraceContext>>) -> Self {
        Self { context }
    }
}

impl From<Arc<TraceContext>> for TraceScope {
    fn from(context: Arc<TraceContext>) -> Self {
        Self::from(Some(context))
    }
}

/// Everything known about the running trace: ids, operation, start times, W3C state.
///
/// Read it with [`current`] (or [`with_current`] to avoid the reference-count increment).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let tracer = correlation::Tracer::off();
/// tracer.start_trace("checkout", async {
///     let context = correlation::current().unwrap();
///     assert_eq!(context.operation(), "checkout");
///     assert_eq!(context.parent_span_id(), None);
/// }).await;
/// # }
/// ```
#[derive(Debug)]
pub struct TraceContext {
    pub(crate) correlation_id: CorrelationId,
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    pub(crate) parent_span_id: Option<SpanId>,
    pub(crate) flags: TraceFlags,
    pub(crate) trace_state: Option<TraceState>,
    pub(crate) operation: Cow<'static, str>,
    pub(crate) started: Instant,
    pub(crate) tracer: Tracer,
}

impl TraceContext {
    /// The correlation id shared by every span of the request.
    pub fn correlation_id(&self) -> &CorrelationId {
        &self.correlation_id
    }

    /// The W3C trace id: the correlation id's bytes when it is a UUID.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// This span's id, sent downstream as the `traceparent` parent-id.
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The enclosing span: the outer trace, or the caller's span from `traceparent`.
    pub fn parent_span_id(&self) -> Option<SpanId> {
        self.parent_span_id
    }

    /// The W3C trace flags this span sends downstream: only the defined ones (`sampled`);
    /// reserved bits of a received `traceparent` are zeroed (see [`TraceFlags`]).
    pub fn flags(&self) -> TraceFlags {
        self.flags
    }

    /// The `tracestate` received with a valid `traceparent`, passed on downstream.
    pub fn trace_state(&self) -> Option<&TraceState> {
        self.trace_state.as_ref()
    }

    /// The operation name given to `start_trace`.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// Wall-clock start (what the start line's `timestamp` shows), derived from the
    /// monotonic start so a trace reads only one clock.
    pub fn start_time(&self) -> SystemTime {
        crate::clock::wall_clock(self.started)
    }

    /// Monotonic time since the trace started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The tracer that writes this trace's lines; nested traces inherit it.
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// The `traceparent` to send downstream: this trace id, this span as the parent.
    pub fn traceparent(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: self.span_id,
            flags: self.flags,
        }
    }

    /// The headers to send downstream: `traceparent`, `tracestate` (when not empty) and
    /// `x-correlation-id`, names in lowercase.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// correlation::Tracer::off().start_trace("call-inventory", async {
    ///     let headers = correlation::current().unwrap().outgoing_headers();
    ///     assert_eq!(headers[0].0, "traceparent");
    ///     assert_eq!(headers.last().unwrap().0, "x-correlation-id");
    /// }).await;
    /// # }
    /// ```
    pub fn outgoing_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("traceparent", self.traceparent().to_string())];
        if let Some(state) = self.trace_state.as_ref().filter(|state| !state.is_empty()) {
            headers.push(("tracestate", state.to_string()));
        }
        headers.push(("x-correlation-id", self.correlation_id.to_string()));
        headers
    }
}

/// The correlation id of the running trace, or `None` outside one. Works in async and sync
/// code (inside [`sync_scope`], [`bind`](crate::bind) and [`Tracer::trace_sync`]). Costs a
/// task-local lookup and a copy (or a reference-count increment for a received text id);
/// never allocates.
///
/// ```
/// assert_eq!(correlation::correlation_id(), None);
/// ```
#[inline]
pub fn correlation_id() -> Option<CorrelationId> {
    // The common case, a UUID id, comes back in two registers from a call compiled next to
    // `CURRENT`. Inlined into another crate, the task-local access would be an indirect call
    // through the `LocalKey`'s accessor; returned as an `Option<CorrelationId>` (24 bytes,
    // through memory), the caller's 16-byte reload of the two 8-byte stores would stall
    // store forwarding. Either doubled the cost of a read.
    match current_uuid_bits() {
        0 => current_correlation_id(),
        bits => Some(CorrelationId::from_uuid_bits(bits)),
    }
}

/// The running trace's UUID id as bits, or 0 for "no trace, a text id, or the nil UUID",
/// which [`current_correlation_id`] then answers.
#[inline(never)]
fn current_uuid_bits() -> u128 {
    CURRENT
        .try_with(|scope| {
            scope
                .context
                .as_ref()
                .and_then(|context| context.correlation_id.uuid_bits())
        })
        .ok()
        .flatten()
        .unwrap_or(0)
}

#[inline(never)]
fn current_correlation_id() -> Option<CorrelationId> {
    CURRENT
        .try_with(|current| {
            current
                .context
                .as_ref()
                .map(|context| context.correlation_id.clone())
        })
        .ok()
        .flatten()
}

/// The context of the running trace, or `None` outside one.
///
/// ```
/// assert!(correlation::current().is_none());
/// ```
#[inline]
pub fn current() -> Option<Arc<TraceContext>> {
    CURRENT
        .try_with(|scope| scope.context.clone())
        .ok()
        .flatten()
}

/// Calls `f` with the running trace's context without touching its reference count.
///
/// ```
/// let operation = correlation::with_current(|context| context.map(|c| c.operation().to_owned()));
/// assert_eq!(operation, None);
/// ```
#[inline]
pub fn with_current<R>(f: impl FnOnce(Option<&TraceContext>) -> R) -> R {
    let mut f = Some(f);
    let result = CURRENT.try_with(|current| f.take().map(|f| f(current.context.as_deref())));
    match (result, f) {
        (Ok(Some(value)), _) => value,
        (_, Some(f)) => f(None),
        // `f` was taken, so `try_with` ran the closure and returned `Ok(Some(_))`.
        (_, None) => unreachable!("with_current: closure consumed without a result"),
    }
}

/// The headers to send downstream from the running trace (see
/// [`TraceContext::outgoing_headers`]); empty outside a trace.
///
/// ```
/// assert!(correlation::outgoing_headers().is_empty());
/// ```
pub fn outgoing_headers() -> Vec<(&'static str, String)> {
    with_current(|context| {
        context
            .map(TraceContext::outgoing_headers)
            .unwrap_or_default()
    })
}

/// Runs synchronous `f` with `context` as the current trace (no start or end line: see
/// [`Tracer::trace_sync`] for a traced sync operation). For code on threads and pools that
/// received a context, e.g. from [`current`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// correlation::Tracer::off().start_trace("batch", async {
///     let context = correlation::current();
///     let id = correlation::correlation_id();
///     let seen = std::thread::spawn(move || correlation::sync_scope(context, correlation::correlation_id))
///         .join()
///         .unwrap();
///     assert_eq!(seen, id);
/// }).await;
/// # }
/// ```
pub fn sync_scope<R>(context: Option<Arc<TraceContext>>, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(TraceScope::from(context), f)
}
