//! The tracer: where lines go, and the machinery that runs a future or closure as a trace.

use std::{
    any::Any,
    borrow::Cow,
    fmt,
    future::Future,
    io::Write,
    panic::{AssertUnwindSafe, catch_unwind, resume_unwind},
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Instant, SystemTime},
};

use pin_project_lite::pin_project;
use tracing::{Instrument as _, instrument::Instrumented};

use crate::{
    context::{
        InScope, OperationName, TraceContext, TraceScope, context_is_current, enter_scope, scoped,
        spare_context, with_current,
    },
    headers::{Incoming, Participation},
    id::{CorrelationId, FRESH_IDS_ARE_RANDOM, SpanId, TraceFlags, TraceId},
    line::{End, duration_ms, error_text, with_line},
    w3c::TraceState,
};

/// Where a tracer sends its start and end events, and the counters about doing so.
///
/// A `Tracer` is a cheap handle (an `Arc`); clones share the sink and counters. Traces
/// started with [`Tracer::start_trace`] use that tracer, and so do all traces nested in them
/// through the free functions ([`start_trace`] and friends), which use the enclosing trace's
/// tracer, or the global one ([`set_global`], stderr unless set) outside any trace. Tests can
/// therefore give every test its own tracer and never interfere.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::{Arc, Mutex};
///
/// #[derive(Clone, Default)]
/// struct Shared(Arc<Mutex<Vec<u8>>>);
/// impl std::io::Write for Shared {
///     fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
///         self.0.lock().unwrap().write(bytes)
///     }
///     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
/// }
///
/// let output = Shared::default();
/// let tracer = keel_correlation::Tracer::writer(output.clone());
/// let value = tracer.start_trace("answer", async { 42 }).await;
/// assert_eq!(value, 42);
/// let text = String::from_utf8(output.0.lock().unwrap().clone()).unwrap();
/// assert_eq!(text.lines().count(), 2);
/// assert_eq!(tracer.write_failures(), 0);
/// # }
/// ```
#[derive(Clone)]
pub struct Tracer {
    /// `None` for [`Tracer::off`]: it has no sink and no counters, so cloning and dropping
    /// it (once per trace) touches no reference count.
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// The sink and its counters; `None` for [`Tracer::off`] with spans. Shared, so a tracer
    /// with spans writes to the sink of the one it came from.
    sink: Option<Arc<Sink>>,
    /// Whether each trace is also a `tracing` span ([`Tracer::with_spans`]).
    spans: bool,
}

struct Sink {
    output: Output,
    /// Lines a sink refused. Relaxed: a statistic, it orders nothing else.
    write_failures: AtomicU64,
}

enum Output {
    Stderr,
    Writer(Mutex<Box<dyn Write + Send>>),
    Tracing,
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let output = match self.sink().map(|sink| &sink.output) {
            Some(Output::Stderr) => "stderr",
            Some(Output::Writer(_)) => "writer",
            Some(Output::Tracing) => "tracing",
            None => "off",
        };
        f.debug_struct("Tracer")
            .field("output", &output)
            .field(
                "spans",
                &self.inner.as_ref().is_some_and(|inner| inner.spans),
            )
            .field("write_failures", &self.write_failures())
            .finish()
    }
}

impl Default for Tracer {
    /// [`Tracer::stderr`].
    fn default() -> Self {
        Self::stderr()
    }
}

/// How a traced operation ended, as written in the end line's `outcome` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The future or closure returned a value that is not an error.
    Success,
    /// It returned an error (see [`TraceOutcome`]).
    Error,
    /// It panicked; the panic continues after the line is written.
    Panic,
    /// The future was dropped before it finished.
    Cancelled,
}

impl Outcome {
    /// The lowercase name used in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::Panic => "panic",
            Self::Cancelled => "cancelled",
        }
    }

    fn level(self) -> &'static str {
        match self {
            Self::Success => "info",
            Self::Cancelled => "warn",
            Self::Error | Self::Panic => "error",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a traced operation's output says about its outcome.
///
/// `Result<T, E: Display>` reports [`Outcome::Error`] with the error's `Display` text for
/// `Err`; `Box<T>` delegates; plain values report success: `()`, numbers, strings, `bool`,
/// references, `Arc`, `Rc`, `Option`, `Vec`, arrays, maps, sets, and this crate's own types;
/// a tuple (up to 8) reports the first error of its elements. With the `http` feature,
/// `http::Response` and `http::StatusCode` report a 5xx status as an error (see the
/// `http` module for other rules). Rust has no specialisation, so a blanket "everything else is a
/// success" is impossible next to the `Result` impl. For your own type, the default method reports success, so one line does it:
///
/// ```
/// struct Reply;
/// impl keel_correlation::TraceOutcome for Reply {}
/// ```
pub trait TraceOutcome {
    /// The error to report, or `None` for success.
    fn trace_error(&self) -> Option<&dyn fmt::Display> {
        None
    }
}

impl<T, E: fmt::Display> TraceOutcome for Result<T, E> {
    fn trace_error(&self) -> Option<&dyn fmt::Display> {
        self.as_ref().err().map(|error| error as &dyn fmt::Display)
    }
}

impl<T: TraceOutcome + ?Sized> TraceOutcome for Box<T> {
    fn trace_error(&self) -> Option<&dyn fmt::Display> {
        (**self).trace_error()
    }
}

macro_rules! always_success {
    ($($type:ty),* $(,)?) => { $(impl TraceOutcome for $type {})* };
}

always_success!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    String,
    std::path::PathBuf,
    std::time::Duration,
    SystemTime,
    Instant,
    std::convert::Infallible,
    CorrelationId,
    TraceId,
    SpanId,
    TraceContext,
    Incoming,
    TraceFlags,
    crate::TraceParent,
    TraceState,
    crate::Propagation,
);

impl<T: ?Sized> TraceOutcome for &T {}
impl<T: ?Sized> TraceOutcome for &mut T {}
impl<T: ?Sized + ToOwned> TraceOutcome for Cow<'_, T> {}
impl<T: ?Sized> TraceOutcome for Arc<T> {}
impl<T: ?Sized> TraceOutcome for std::rc::Rc<T> {}
impl<T> TraceOutcome for Option<T> {}
impl<T> TraceOutcome for Vec<T> {}
impl<T, const N: usize> TraceOutcome for [T; N] {}
impl<K, V, S> TraceOutcome for std::collections::HashMap<K, V, S> {}
impl<K, V> TraceOutcome for std::collections::BTreeMap<K, V> {}
impl<T, S> TraceOutcome for std::collections::HashSet<T, S> {}
impl<T> TraceOutcome for std::collections::BTreeSet<T> {}
impl<T> TraceOutcome for std::collections::VecDeque<T> {}

/// A tuple reports the first error any of its elements reports, so
/// `(StatusCode::INTERNAL_SERVER_ERROR, body)` (with the `http` feature) is an error; every
/// element must implement `TraceOutcome`.
macro_rules! tuple_outcome {
    ($(($($name:ident),+))*) => {$(
        impl<$($name: TraceOutcome),+> TraceOutcome for ($($name,)+) {
            #[allow(non_snake_case)]
            fn trace_error(&self) -> Option<&dyn fmt::Display> {
                let ($($name,)+) = self;
                None$(.or_else(|| $name.trace_error()))+
            }
        }
    )*};
}

tuple_outcome! {
    (A) (A, B) (A, B, C) (A, B, C, D) (A, B, C, D, E) (A, B, C, D, E, G) (A, B, C, D, E, G, H)
    (A, B, C, D, E, G, H, I)
}

static GLOBAL: OnceLock<Tracer> = OnceLock::new();

/// Installs the tracer used by traces started outside any other trace through the free
/// functions. It can be set once, before the first such trace; afterwards (or on a second
/// call) the tracer is handed back in `Err`.
///
/// ```
/// // In `main`, before serving requests:
/// let _ = keel_correlation::set_global(keel_correlation::Tracer::stderr());
/// ```
///
/// # Errors
/// The global tracer was already set or already used.
pub fn set_global(tracer: Tracer) -> Result<(), Tracer> {
    GLOBAL.set(tracer)
}

/// The global tracer (stderr unless [`set_global`] ran first).
pub fn global() -> &'static Tracer {
    GLOBAL.get_or_init(Tracer::stderr)
}

impl Tracer {
    /// Writes lines to standard error (the default).
    pub fn stderr() -> Self {
        Self::with_output(Output::Stderr)
    }

    /// Writes lines to `writer`, one `write_all` per line under a lock. Nothing is flushed
    /// per line: pass an unbuffered writer (or one that flushes on drop) for durability.
    pub fn writer(writer: impl Write + Send + 'static) -> Self {
        Self::with_output(Output::Writer(Mutex::new(Box::new(writer))))
    }

    /// Emits start and end as `tracing` events (target `keel_correlation`, fields as in the
    /// lines) instead of writing lines. The `error` field is handed over as text already
    /// rendered, so a subscriber never runs the error's own `Display`.
    pub fn tracing() -> Self {
        Self::with_output(Output::Tracing)
    }

    /// Writes nothing; contexts, ids and propagation still work.
    pub fn off() -> Self {
        Self { inner: None }
    }

    fn with_output(output: Output) -> Self {
        Self {
            inner: Some(Arc::new(Inner {
                sink: Some(Arc::new(Sink {
                    output,
                    write_failures: AtomicU64::new(0),
                })),
                spans: false,
            })),
        }
    }

    /// The sink, when this tracer writes lines.
    fn sink(&self) -> Option<&Sink> {
        self.inner.as_deref()?.sink.as_deref()
    }

    /// This tracer, with every trace also a `tracing` span (target `keel_correlation`, name
    /// `trace`) carrying `correlation_id`, `trace_id`, `span_id`, `parent_span_id` (when
    /// there is one) and `operation`, entered around every poll of the trace (and around a
    /// sync trace), so span-based tools (`tracing-subscriber`'s span fields, tower-http's
    /// `TraceLayer`, `tracing-opentelemetry`) see the request. Without it, a trace creates
    /// no span and pays nothing for them. The tracer keeps its sink and counters, shared with
    /// the tracer it came from.
    ///
    /// ```
    /// let tracer = keel_correlation::Tracer::off().with_spans();
    /// let name = tracer.trace_sync("job", || tracing::Span::current().metadata().map(|m| m.name()));
    /// # let _ = name; // `None` here: no subscriber is installed to record spans.
    /// ```
    #[must_use]
    pub fn with_spans(self) -> Self {
        let sink = self.inner.and_then(|inner| inner.sink.clone());
        Self {
            inner: Some(Arc::new(Inner { sink, spans: true })),
        }
    }

    /// The span a trace of `context` is, when this tracer makes spans.
    fn span_for(&self, context: &TraceContext) -> Option<tracing::Span> {
        if !self.inner.as_deref()?.spans {
            return None;
        }
        let parent = context.parent_span_id.as_ref().map(tracing::field::display);
        let span = tracing::info_span!(
            target: "keel_correlation",
            "trace",
            correlation_id = %context.correlation_id,
            trace_id = %context.trace_id,
            span_id = %context.span_id,
            parent_span_id = parent,
            operation = context.operation.as_str(),
        );
        // The one hook of the `opentelemetry` integration: the span exported for this trace
        // gets the trace's own ids and parent.
        #[cfg(feature = "opentelemetry")]
        crate::opentelemetry::open(&span, context);
        Some(span)
    }

    /// Whether this tracer writes lines.
    fn writes_lines(&self) -> bool {
        self.sink().is_some()
    }

    /// Whether this tracer does nothing per trace: no lines, no spans.
    pub(crate) fn is_off(&self) -> bool {
        self.inner.is_none()
    }

    /// How many lines the sink refused: an I/O error or a panicking writer, or with
    /// [`Tracer::tracing`] a panicking subscriber (its I/O errors stay inside the
    /// subscriber and are not seen here). The traced work is never affected by a failing
    /// sink.
    pub fn write_failures(&self) -> u64 {
        self.sink()
            .map_or(0, |sink| sink.write_failures.load(Ordering::Relaxed))
    }

    /// Runs `future` as a trace: a new correlation id, or the enclosing trace's id with this
    /// span as a child when called inside one. Writes the start line before the first poll
    /// and exactly one end line however it ends (see [`Outcome`]). A trace that is never
    /// polled writes nothing.
    ///
    /// The trace begins where `start_trace` is called: that is where the enclosing trace is
    /// looked up, the ids are made and the clock starts (so the duration includes time spent
    /// waiting for the first poll, e.g. in a spawn queue).
    pub fn start_trace<F, O>(
        &self,
        operation: O,
        future: F,
    ) -> impl Future<Output = F::Output> + use<F, O>
    where
        O: Into<Cow<'static, str>>,
        F: Future,
        F::Output: TraceOutcome,
    {
        traced(self, Lineage::current, operation.into(), future)
    }

    /// Like [`Tracer::start_trace`], but continuing `id` received from elsewhere.
    pub fn start_trace_with_id<F, O>(
        &self,
        id: CorrelationId,
        operation: O,
        future: F,
    ) -> impl Future<Output = F::Output> + use<F, O>
    where
        O: Into<Cow<'static, str>>,
        F: Future,
        F::Output: TraceOutcome,
    {
        traced(self, || Lineage::with_id(id), operation.into(), future)
    }

    /// Like [`Tracer::start_trace`], but continuing the trace described by incoming headers
    /// (see [`Incoming`]).
    pub fn continue_trace<F, O>(
        &self,
        incoming: Incoming,
        operation: O,
        future: F,
    ) -> impl Future<Output = F::Output> + use<F, O>
    where
        O: Into<Cow<'static, str>>,
        F: Future,
        F::Output: TraceOutcome,
    {
        traced(
            self,
            || Lineage::from_incoming(incoming),
            operation.into(),
            future,
        )
    }

    /// Runs synchronous `f` as a trace: start line, `f` with the context current (so
    /// [`correlation_id`](crate::correlation_id) works inside), end line. A panic is logged
    /// and resumed.
    ///
    /// ```
    /// let tracer = keel_correlation::Tracer::off();
    /// let id = tracer.trace_sync("resize", || keel_correlation::correlation_id());
    /// assert!(id.is_some());
    /// ```
    pub fn trace_sync<R: TraceOutcome>(
        &self,
        operation: impl Into<Cow<'static, str>>,
        f: impl FnOnce() -> R,
    ) -> R {
        self.traced_sync(Lineage::current(), operation.into(), f)
    }

    /// Like [`Tracer::trace_sync`], but continuing the trace described by incoming headers:
    /// for thread-per-request servers, no async runtime needed.
    ///
    /// ```
    /// let incoming = keel_correlation::Incoming::from_headers([
    ///     ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    /// ]);
    /// let trace_id = keel_correlation::Tracer::off().continue_trace_sync(incoming, "GET /orders", || {
    ///     keel_correlation::current().unwrap().trace_id().to_string()
    /// });
    /// assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    /// ```
    pub fn continue_trace_sync<R: TraceOutcome>(
        &self,
        incoming: Incoming,
        operation: impl Into<Cow<'static, str>>,
        f: impl FnOnce() -> R,
    ) -> R {
        self.traced_sync(Lineage::from_incoming(incoming), operation.into(), f)
    }

    fn traced_sync<R: TraceOutcome>(
        &self,
        lineage: Lineage,
        operation: Cow<'static, str>,
        f: impl FnOnce() -> R,
    ) -> R {
        let scope = lineage.start(self, operation);
        let span = scope.context().and_then(|context| self.span_for(context));
        let _entered = span.as_ref().map(tracing::Span::enter);
        let context = match scope.context() {
            Some(context) if self.writes_lines() => Arc::clone(context),
            // No lines to write, so no guard and no second reference to the context.
            _ => return enter_scope(scope, f),
        };
        let mut guard = EndGuard::new(context);
        guard.start();
        match catch_unwind(AssertUnwindSafe(|| enter_scope(scope, f))) {
            Ok(output) => {
                guard.finish_with(&output);
                output
            }
            Err(payload) => guard.finish_panic(payload),
        }
    }

    fn emit(&self, context: &TraceContext, end: Option<&End<'_>>) {
        let Some(inner) = self.sink() else {
            return;
        };
        match &inner.output {
            Output::Stderr => with_line(context, end, |line| {
                let written = std::io::stderr().lock().write_all(line);
                inner.count(written.is_ok());
            }),
            Output::Writer(writer) => with_line(context, end, |line| {
                let mut writer = writer.lock().unwrap_or_else(PoisonError::into_inner);
                // A panicking writer is a failed write, not a reason to take the traced work
                // (or, during unwinding, the process) down.
                let written = catch_unwind(AssertUnwindSafe(|| writer.write_all(line)));
                inner.count(matches!(written, Ok(Ok(()))));
            }),
            Output::Tracing => {
                // The subscriber's writer may panic too; as with a panicking `Write`, that is
                // a failed write, not a reason to take the traced work (or, when the end
                // event is written during unwinding, the process) down. Its I/O errors stay
                // inside the subscriber, so only panics can be counted.
                let emitted = catch_unwind(AssertUnwindSafe(|| emit_tracing_event(context, end)));
                inner.count(emitted.is_ok());
            }
        }
    }
}

impl Sink {
    fn count(&self, written: bool) {
        if !written {
            self.write_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn emit_tracing_event(context: &TraceContext, end: Option<&End<'_>>) {
    let parent = context.parent_span_id.as_ref().map(tracing::field::display);
    // Rendered here, guarded, so the subscriber only ever sees a `str`: a user's `Display`
    // that panics or fails must not reach the traced work through the subscriber.
    let error = end.and_then(|end| end.error).map(error_text);
    macro_rules! event {
        ($level:expr) => {
            tracing::event!(
                target: "keel_correlation",
                $level,
                event = if end.is_some() { "trace.end" } else { "trace.start" },
                correlation_id = %context.correlation_id,
                trace_id = %context.trace_id,
                span_id = %context.span_id,
                parent_span_id = parent,
                operation = context.operation.as_str(),
                outcome = end.map(|end| end.outcome),
                duration_ms = end.map(|end| duration_ms(end.duration(context))),
                error = error.as_deref(),
            )
        };
    }
    match end.map_or("info", |end| end.level) {
        "error" => event!(tracing::Level::ERROR),
        "warn" => event!(tracing::Level::WARN),
        _ => event!(tracing::Level::INFO),
    }
}

/// Where a new span's ids come from: the enclosing trace, a received id or headers, or
/// nothing (a fresh id).
struct Lineage {
    correlation_id: CorrelationId,
    trace_id: TraceId,
    parent_span_id: Option<SpanId>,
    flags: TraceFlags,
    trace_state: Option<TraceState>,
    participation: Option<Arc<Participation>>,
}

/// The flags of a trace this crate starts without a policy: sampled, and random when the
/// trace id is.
const fn new_trace_flags(random: bool) -> TraceFlags {
    if random {
        TraceFlags::SAMPLED.with(TraceFlags::RANDOM)
    } else {
        TraceFlags::SAMPLED
    }
}

impl Lineage {
    /// A child of the running trace, or a fresh root outside one.
    fn current() -> Self {
        if !context_is_current() {
            return Self::fresh();
        }
        with_current(|parent| parent.map(Self::child_of)).unwrap_or_else(Self::fresh)
    }

    fn child_of(parent: &TraceContext) -> Self {
        Self {
            correlation_id: parent.correlation_id.clone(),
            trace_id: parent.trace_id,
            parent_span_id: Some(parent.span_id),
            flags: parent.flags,
            trace_state: parent.trace_state.clone(),
            participation: parent.participation.clone(),
        }
    }

    /// A new trace with a new id.
    fn fresh() -> Self {
        let correlation_id = CorrelationId::new();
        let (trace_id, random) = match correlation_id.trace_id() {
            Some(trace_id) => (trace_id, FRESH_IDS_ARE_RANDOM),
            None => (TraceId::random(), true),
        };
        Self {
            trace_id,
            correlation_id,
            parent_span_id: None,
            flags: new_trace_flags(random),
            trace_state: None,
            participation: None,
        }
    }

    /// A new trace carrying a received id: a UUID doubles as the trace id (not generated
    /// here, so not known to be random); other text gets a random trace id.
    fn with_id(correlation_id: CorrelationId) -> Self {
        let (trace_id, random) = match correlation_id.trace_id() {
            Some(trace_id) => (trace_id, false),
            None => (TraceId::random(), true),
        };
        Self {
            trace_id,
            correlation_id,
            parent_span_id: None,
            flags: new_trace_flags(random),
            trace_state: None,
            participation: None,
        }
    }

    #[inline]
    fn from_incoming(incoming: Incoming) -> Self {
        // This span sends them on: the reserved bits of a received byte must not go out.
        let flags = incoming.sent_flags();
        Self {
            correlation_id: incoming.correlation_id,
            trace_id: incoming.trace_id,
            parent_span_id: incoming.parent_span_id,
            flags,
            trace_state: incoming.trace_state,
            participation: incoming.participation,
        }
    }

    /// The context of a span starting now, in its `Arc`, in the scope that makes it current.
    #[inline]
    fn start(self, tracer: &Tracer, operation: impl Into<OperationName>) -> TraceScope {
        // Only lines need the start; see `TraceContext::elapsed`.
        let started = tracer.writes_lines().then(Instant::now);
        let span_id = SpanId::random();
        let tracer = tracer.clone();
        let operation = operation.into();
        // A quiet trace's context reuses the allocation the last one on this thread left
        // (see `context::spare_context`), written field by field in place: the allocation
        // and its free were about 100 of a quiet request's 2,760 instructions in the
        // server layer.
        if let Some(mut spare) = spare_context()
            && let Some(slot) = Arc::get_mut(&mut spare)
        {
            slot.correlation_id = self.correlation_id;
            slot.trace_id = self.trace_id;
            slot.span_id = span_id;
            slot.parent_span_id = self.parent_span_id;
            slot.flags = self.flags;
            slot.trace_state = self.trace_state;
            slot.operation = operation;
            slot.started = started;
            slot.tracer = tracer;
            slot.participation = self.participation;
            return TraceScope::new(spare);
        }
        // `new_cyclic` allocates first and then builds the value in place; `Arc::new` built
        // the 144-byte context on the stack and copied it with `memcpy`, whose wide loads of
        // just-written narrow stores stalled store forwarding: a fifth of a trace's time.
        let context = Arc::new_cyclic(|_| TraceContext {
            correlation_id: self.correlation_id,
            trace_id: self.trace_id,
            span_id,
            parent_span_id: self.parent_span_id,
            flags: self.flags,
            trace_state: self.trace_state,
            operation,
            started,
            tracer,
            participation: self.participation,
        });
        TraceScope::new(context)
    }
}

/// Writes the start line when started and then exactly one end line: through `finish_*`, or
/// as `cancelled` when dropped unfinished (the traced future was dropped).
struct EndGuard {
    context: Arc<TraceContext>,
    state: GuardState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum GuardState {
    /// Nothing written yet: a trace that is never polled writes nothing.
    Idle,
    /// The start line is written; the end line is due.
    Running,
    /// Both lines are written.
    Done,
}

impl EndGuard {
    fn new(context: Arc<TraceContext>) -> Self {
        Self {
            context,
            state: GuardState::Idle,
        }
    }

    /// Writes the start line, once.
    fn start(&mut self) {
        if self.state == GuardState::Idle {
            self.state = GuardState::Running;
            self.context.tracer.emit(&self.context, None);
        }
    }

    fn finish(&mut self, outcome: Outcome, error: Option<&dyn fmt::Display>) {
        if self.state == GuardState::Running {
            self.state = GuardState::Done;
            self.write(outcome, error);
        }
    }

    fn finish_with(&mut self, output: &impl TraceOutcome) {
        match output.trace_error() {
            Some(error) => self.finish(Outcome::Error, Some(error)),
            None => self.finish(Outcome::Success, None),
        }
    }

    fn finish_panic(&mut self, payload: Box<dyn Any + Send>) -> ! {
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
        self.finish(
            Outcome::Panic,
            message.as_ref().map(|message| message as &dyn fmt::Display),
        );
        resume_unwind(payload)
    }

    fn write(&self, outcome: Outcome, error: Option<&dyn fmt::Display>) {
        let end = End {
            level: outcome.level(),
            outcome: outcome.as_str(),
            ended: Instant::now(),
            error,
        };
        self.context.tracer.emit(&self.context, Some(&end));
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled, None);
    }
}

pin_project! {
    /// The future of a trace: `future` inside the trace's scope, plus the lines when the
    /// tracer writes any. The scope is the outermost layer, so the lines and the inner
    /// future's destructors run inside the trace; with the tracer off a trace is exactly a
    /// scope holding one `Arc` (an `async fn` doing nothing but
    /// awaiting in that case cost about 8 ns per trace).
    #[project = TracedProjection]
    pub(crate) enum Traced<F> {
        Quiet { #[pin] future: InScope<F> },
        Logged { #[pin] future: InScope<Logged<F>> },
        LoggedInSpan { #[pin] future: InScope<Instrumented<Logged<F>>> },
        InSpan { #[pin] future: InScope<Instrumented<F>> },
    }
}

#[cfg(feature = "tower")]
impl<F> Traced<F> {
    /// The trace's context (`None` for a scope of no trace).
    pub(crate) fn context(&self) -> Option<&Arc<TraceContext>> {
        match self {
            Self::Quiet { future } => future.context(),
            Self::Logged { future } => future.context(),
            Self::LoggedInSpan { future } => future.context(),
            Self::InSpan { future } => future.context(),
        }
    }
}

impl<F> Future for Traced<F>
where
    F: Future,
    F::Output: TraceOutcome,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            TracedProjection::Quiet { future } => future.poll(cx),
            TracedProjection::Logged { future } => future.poll(cx),
            TracedProjection::LoggedInSpan { future } => future.poll(cx),
            TracedProjection::InSpan { future } => future.poll(cx),
        }
    }
}

/// Starts the span whose ids `lineage` gives and returns its future. `lineage` is a function,
/// not a value, so the ids go straight from where they are made into the context: a
/// `Lineage` passed by value was copied on the stack with wide loads of narrow stores, whose
/// store-forwarding stalls cost about 10 ns per trace.
fn traced<F>(
    tracer: &Tracer,
    lineage: impl FnOnce() -> Lineage,
    operation: Cow<'static, str>,
    future: F,
) -> Traced<F>
where
    F: Future,
    F::Output: TraceOutcome,
{
    traced_in(tracer, lineage().start(tracer, operation), future)
}

/// The scope of a span continuing `incoming`, for middleware that must run code inside the
/// span before it has the future to trace (see [`traced_in`]).
#[cfg(feature = "tower")]
#[inline]
pub(crate) fn scope_from_incoming(
    tracer: &Tracer,
    incoming: Incoming,
    operation: OperationName,
) -> TraceScope {
    Lineage::from_incoming(incoming).start(tracer, operation)
}

/// The scope of a child span of the running trace (a new trace outside one).
#[cfg(feature = "tower")]
pub(crate) fn child_scope(tracer: &Tracer, operation: Cow<'static, str>) -> TraceScope {
    Lineage::current().start(tracer, operation)
}

/// `future` as the trace of `scope` (made by [`scope_from_incoming`] or [`child_scope`]
/// with the same `tracer`).
#[inline]
pub(crate) fn traced_in<F>(tracer: &Tracer, scope: TraceScope, future: F) -> Traced<F>
where
    F: Future,
    F::Output: TraceOutcome,
{
    let Some(context) = scope.context().filter(|_| !tracer.is_off()) else {
        return Traced::Quiet {
            future: scoped(scope, future),
        };
    };
    let span = tracer.span_for(context);
    match (tracer.writes_lines(), span) {
        (true, None) => {
            let guard = EndGuard::new(Arc::clone(context));
            Traced::Logged {
                future: scoped(scope, Logged { future, guard }),
            }
        }
        (true, Some(span)) => {
            let guard = EndGuard::new(Arc::clone(context));
            Traced::LoggedInSpan {
                future: scoped(scope, Logged { future, guard }.instrument(span)),
            }
        }
        (false, Some(span)) => Traced::InSpan {
            future: scoped(scope, future.instrument(span)),
        },
        (false, None) => Traced::Quiet {
            future: scoped(scope, future),
        },
    }
}

pin_project! {
    /// Writes the start line at the first poll and the end line when `future` ends, panics
    /// (the panic continues after the line) or is dropped.
    struct Logged<F> {
        // Declared before the guard, so it is dropped first: the inner future's destructors
        // run before the end line.
        #[pin]
        future: F,
        guard: EndGuard,
    }
}

impl<F> Future for Logged<F>
where
    F: Future,
    F::Output: TraceOutcome,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.guard.start();
        let future = this.future;
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Ready(output)) => {
                this.guard.finish_with(&output);
                Poll::Ready(output)
            }
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => this.guard.finish_panic(payload),
        }
    }
}

/// Runs `future` as a trace with the enclosing trace's tracer, or the [`global`] one (see
/// [`Tracer::start_trace`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let _ = keel_correlation::set_global(keel_correlation::Tracer::off());
/// let result: Result<u32, String> = keel_correlation::start_trace("load-user", async {
///     assert!(keel_correlation::correlation_id().is_some());
///     Ok(7)
/// }).await;
/// assert_eq!(result, Ok(7));
/// # }
/// ```
pub fn start_trace<F>(
    operation: impl Into<Cow<'static, str>>,
    future: F,
) -> impl Future<Output = F::Output>
where
    F: Future,
    F::Output: TraceOutcome,
{
    current_tracer().start_trace(operation, future)
}

/// [`start_trace`] continuing `id` received from elsewhere.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let _ = keel_correlation::set_global(keel_correlation::Tracer::off());
/// let id: keel_correlation::CorrelationId = "job-17".parse().unwrap();
/// let seen = keel_correlation::start_trace_with_id(id.clone(), "job", async { keel_correlation::correlation_id() }).await;
/// assert_eq!(seen, Some(id));
/// # }
/// ```
pub fn start_trace_with_id<F>(
    id: CorrelationId,
    operation: impl Into<Cow<'static, str>>,
    future: F,
) -> impl Future<Output = F::Output>
where
    F: Future,
    F::Output: TraceOutcome,
{
    current_tracer().start_trace_with_id(id, operation, future)
}

/// [`start_trace`] continuing the trace described by incoming headers.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let _ = keel_correlation::set_global(keel_correlation::Tracer::off());
/// let incoming = keel_correlation::Incoming::from_headers([
///     ("TraceParent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
/// ]);
/// let trace_id = keel_correlation::continue_trace(incoming, "GET /orders", async {
///     keel_correlation::current().unwrap().trace_id().to_string()
/// }).await;
/// assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
/// # }
/// ```
pub fn continue_trace<F>(
    incoming: Incoming,
    operation: impl Into<Cow<'static, str>>,
    future: F,
) -> impl Future<Output = F::Output>
where
    F: Future,
    F::Output: TraceOutcome,
{
    current_tracer().continue_trace(incoming, operation, future)
}

/// [`Tracer::trace_sync`] with the enclosing trace's tracer, or the [`global`] one.
///
/// ```
/// # let _ = keel_correlation::set_global(keel_correlation::Tracer::off());
/// let n = keel_correlation::trace_sync("count", || 3);
/// assert_eq!(n, 3);
/// ```
pub fn trace_sync<R: TraceOutcome>(
    operation: impl Into<Cow<'static, str>>,
    f: impl FnOnce() -> R,
) -> R {
    current_tracer().trace_sync(operation, f)
}

/// [`Tracer::continue_trace_sync`] with the enclosing trace's tracer, or the [`global`] one.
///
/// ```
/// # let _ = keel_correlation::set_global(keel_correlation::Tracer::off());
/// let incoming = keel_correlation::Incoming::from_headers([("x-request-id", "req-3")]);
/// let id = keel_correlation::continue_trace_sync(incoming, "GET /", keel_correlation::correlation_id);
/// assert_eq!(id.unwrap().to_string(), "req-3");
/// ```
pub fn continue_trace_sync<R: TraceOutcome>(
    incoming: Incoming,
    operation: impl Into<Cow<'static, str>>,
    f: impl FnOnce() -> R,
) -> R {
    current_tracer().continue_trace_sync(incoming, operation, f)
}

/// One outgoing call as a span of its own: opens a child span of the running trace (a new
/// trace outside one), hands `call` the headers to send with it, from that span (so every
/// call carries its own parent-id), and traces the call's outcome.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let _ = keel_correlation::set_global(keel_correlation::Tracer::off());
/// keel_correlation::start_trace("GET /orders", async {
///     let mut parents = Vec::new();
///     for _ in 0..3 {
///         let traceparent: Result<String, String> = keel_correlation::client_call("GET inventory", |headers| async move {
///             // e.g. `request.header(name, value)` for each, then `.send().await`
///             Ok(headers[0].1.clone())
///         }).await;
///         parents.push(traceparent.unwrap()[36..52].to_owned());
///     }
///     parents.dedup();
///     assert_eq!(parents.len(), 3);
/// }).await;
/// # }
/// ```
pub fn client_call<C, F>(
    operation: impl Into<Cow<'static, str>>,
    call: C,
) -> impl Future<Output = F::Output>
where
    C: FnOnce(Vec<(&'static str, String)>) -> F,
    F: Future,
    F::Output: TraceOutcome,
{
    start_trace(operation, async move {
        let headers = crate::outgoing_headers();
        call(headers).await
    })
}

/// [`client_call`] for a blocking call: `call` runs inside a child span with that span's
/// headers.
///
/// ```
/// # let _ = keel_correlation::set_global(keel_correlation::Tracer::off());
/// let parents: Vec<String> = keel_correlation::trace_sync("job", || {
///     (0..2).map(|_| keel_correlation::client_call_sync("POST /hook", |headers| headers[0].1.clone())).collect()
/// });
/// assert_ne!(parents[0], parents[1]);
/// ```
pub fn client_call_sync<R: TraceOutcome>(
    operation: impl Into<Cow<'static, str>>,
    call: impl FnOnce(Vec<(&'static str, String)>) -> R,
) -> R {
    trace_sync(operation, || call(crate::outgoing_headers()))
}

pub(crate) fn current_tracer() -> Tracer {
    crate::with_current(|context| {
        context.map_or_else(|| global().clone(), |context| context.tracer.clone())
    })
}
