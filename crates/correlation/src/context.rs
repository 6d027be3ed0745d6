//! The trace context, the per-thread scope that makes one current, and the functions that
//! read it.
//!
//! # The scope
//!
//! The running code's trace lives in [`CURRENT`], a thread-local of the crate's own, the same
//! mechanism as tokio's `task_local!` without its layers: a scope is entered by an
//! [`Entered`] guard that swaps the scope's context into the thread-local and swaps the
//! enclosing one back when it is dropped (also by a panic), and a future runs inside its
//! trace through [`InScope`], which enters its scope around every poll and around dropping
//! an unfinished inner future. Between polls the context lives in the future, so a trace
//! follows its task across threads and `.await`s, and a task spawned without it sees none.
//!
//! Entering a scope is two swaps of a pointer, no closure and no reference count, so the
//! server layer can call the inner service inside the trace and build the future in place.

use std::{
    borrow::Cow,
    cell::{Cell, RefCell},
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use pin_project_lite::pin_project;

use crate::{
    Tracer,
    headers::Participation,
    id::{CorrelationId, SpanId, TraceFlags, TraceId},
    policy::Mode,
    w3c::{MAX_TRACESTATE_LEN, TraceParent, TraceState},
};

thread_local! {
    /// The trace the running code on this thread belongs to (see [`Current`]).
    static CURRENT: Current = const {
        Current {
            slot: RefCell::new(None),
            shadows: RefCell::new(Vec::new()),
        }
    };

    /// A mirror of [`CURRENT`] for the hot reads: [`NO_TRACE`] while no trace context is
    /// current on this thread, [`READ_CONTEXT`] for a text id (and the two UUIDs whose bits
    /// are these values), which the slow path then reads from `CURRENT`, else the current
    /// context's UUID bits.
    ///
    /// It is what makes [`correlation_id`] as cheap as a bare thread-local read, and a root
    /// trace skip the look-up of a parent: a `const` cell of a `Copy` value with no
    /// destructor is one thread-local load, inlined into the caller, where `CURRENT` holds
    /// an `Arc` behind a `RefCell` and a lazily registered destructor, and an `Arc` to
    /// follow. Having no destructor, it is also readable while the thread's destructors run.
    /// A bare `u128` rather than an `Option<u128>` (32 bytes, its tag written by a narrower
    /// store than the value's wide load): the save and restore around every scope then
    /// move 16 bytes without stalling on store forwarding.
    ///
    /// Every scope is entered through [`Entered`], which sets the mirror with `CURRENT`
    /// (to `NO_TRACE` when `CURRENT` is already destroyed, as [`current`] then says) and
    /// restores the enclosing value when it is left, also by a panic; so both always
    /// describe the same trace.
    static MIRROR: Cell<u128> = const { Cell::new(NO_TRACE) };

    /// The allocation of a quiet trace's context that ended on this thread, for the next
    /// trace started here to write its context into (see [`TraceScope`]'s `Drop`). Only a
    /// context that holds nothing whose drop anyone could see (no tracer that writes or
    /// makes spans, no participation, no text id, no owned name, no `tracestate`) is kept,
    /// so keeping it changes nothing but where the next context lives.
    static SPARE: Cell<Option<Arc<TraceContext>>> = const { Cell::new(None) };
}

/// The spare context allocation of this thread, if there is one (see [`SPARE`]).
#[inline]
pub(crate) fn spare_context() -> Option<Arc<TraceContext>> {
    SPARE.try_with(Cell::take).ok().flatten()
}

/// Keeps `context`'s allocation in [`SPARE`] when this was its last reference and it holds
/// nothing whose drop could be seen; otherwise drops it.
#[inline]
fn recycle(mut context: Arc<TraceContext>) {
    if context.is_plain() && Arc::get_mut(&mut context).is_some() {
        // During the thread's teardown `SPARE` may be gone: the context is then dropped.
        let _ = SPARE.try_with(move |spare| spare.replace(Some(context)));
    }
}

/// [`MIRROR`]: no trace is current.
const NO_TRACE: u128 = 0;

/// [`MIRROR`]: a trace is current; read its id from the context (a text id, or a UUID whose
/// bits are [`NO_TRACE`] or this).
const READ_CONTEXT: u128 = u128::MAX;

/// This thread's current trace.
///
/// Scopes nest strictly on a thread (each is a guard on the stack, dropped in reverse order,
/// also while unwinding), so entering one saves the enclosing context in the guard and
/// leaving it puts that back.
struct Current {
    /// The current context (`None`: no trace), unless a shadow is current. A scope swaps its
    /// context in here; a [`with_current`] closure borrows it, so it never takes a reference
    /// count.
    slot: RefCell<Option<Arc<TraceContext>>>,
    /// The contexts of scopes entered while `slot` was borrowed by a [`with_current`]
    /// closure running further up the stack, innermost last: the last one is current. They
    /// are pushed and popped without running any other code, so this is never borrowed
    /// when user code runs, and it stays empty (no allocation) unless a scope is entered
    /// inside such a closure.
    shadows: RefCell<Vec<Option<Arc<TraceContext>>>>,
}

/// Where an [`Entered`] scope put its context.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Swapped into [`Current::slot`].
    Slot,
    /// Pushed onto [`Current::shadows`].
    Shadow,
    /// Nowhere: the thread's [`CURRENT`] is destroyed (its destructors are running), so
    /// no trace is current inside the scope.
    Nowhere,
}

impl Current {
    /// Makes `context` current, leaving the enclosing one in `context`.
    #[inline]
    fn enter(&self, context: &mut Option<Arc<TraceContext>>) -> Place {
        // The slot is borrowed only by a `with_current` closure up the stack, and shadows
        // exist only inside one; while there are any, a new scope goes on top of them.
        if self
            .shadows
            .try_borrow()
            .is_ok_and(|shadows| shadows.is_empty())
            && let Ok(mut slot) = self.slot.try_borrow_mut()
        {
            std::mem::swap(&mut *slot, context);
            return Place::Slot;
        }
        match self.shadows.try_borrow_mut() {
            Ok(mut shadows) => {
                shadows.push(context.take());
                Place::Shadow
            }
            // Never borrowed while other code runs (see `shadows`), so not reached.
            Err(_) => Place::Nowhere,
        }
    }

    /// Undoes [`Current::enter`]: the scope's context goes back into `context`, the
    /// enclosing one (which `context` held) back into place.
    #[inline]
    fn leave(&self, context: &mut Option<Arc<TraceContext>>, place: Place) {
        match place {
            Place::Slot => {
                // Every borrow taken inside the scope has ended (scopes and `with_current`
                // closures nest), so the slot is free again.
                if let Ok(mut slot) = self.slot.try_borrow_mut() {
                    std::mem::swap(&mut *slot, context);
                }
            }
            Place::Shadow => {
                if let Ok(mut shadows) = self.shadows.try_borrow_mut() {
                    *context = shadows.pop().flatten();
                }
            }
            Place::Nowhere => {}
        }
    }

    /// Calls `f` with the current context, borrowed. `f` runs with the slot borrowed (it
    /// may enter scopes: they become shadows) but never with `shadows` borrowed (a current
    /// shadow is cloned first: the rare path).
    #[inline]
    fn with<R>(&self, f: impl FnOnce(Option<&Arc<TraceContext>>) -> R) -> R {
        let shadow = match self.shadows.try_borrow() {
            Ok(shadows) if shadows.is_empty() => None,
            Ok(shadows) => Some(shadows.last().cloned().flatten()),
            Err(_) => Some(None),
        };
        if let Some(shadow) = shadow {
            return f(shadow.as_ref());
        }
        match self.slot.try_borrow() {
            Ok(slot) => f(slot.as_ref()),
            // Only borrowed mutably inside `enter` and `leave`, which run no other code.
            Err(_) => f(None),
        }
    }
}

/// What [`MIRROR`] holds while `context` is current.
#[inline]
fn mirrored(context: Option<&Arc<TraceContext>>) -> u128 {
    match context.map(|context| context.correlation_id.uuid_bits()) {
        None => NO_TRACE,
        Some(Some(bits)) if bits != NO_TRACE && bits != READ_CONTEXT => bits,
        Some(_) => READ_CONTEXT,
    }
}

/// Calls `f` with the current context, or with `None` outside a trace (also while the
/// thread's destructors run, after [`CURRENT`]'s).
#[inline]
fn with_context<R>(f: impl FnOnce(Option<&Arc<TraceContext>>) -> R) -> R {
    let mut f = Some(f);
    let result = CURRENT.try_with(|current| f.take().map(|f| current.with(f)));
    match (result, f) {
        (Ok(Some(value)), _) => value,
        (_, Some(f)) => f(None),
        // `f` was taken, so `try_with` ran the closure and returned `Ok(Some(_))`.
        (_, None) => unreachable!("with_context: closure consumed without a result"),
    }
}

/// A scope entered: `scope`'s context is current until this is dropped (also by a panic),
/// which makes the enclosing one current again and gives `scope` its context back.
pub(crate) struct Entered<'a> {
    /// While entered, the enclosing context (the scope's own is in [`CURRENT`]).
    context: &'a mut Option<Arc<TraceContext>>,
    /// The enclosing [`MIRROR`].
    mirror: u128,
    place: Place,
}

impl<'a> Entered<'a> {
    /// Enters `scope`.
    #[inline]
    pub(crate) fn new(scope: &'a mut TraceScope) -> Self {
        let context = &mut scope.context;
        let mut mirror = mirrored(context.as_ref());
        let place = CURRENT
            .try_with(|current| current.enter(context))
            .unwrap_or(Place::Nowhere);
        if place == Place::Nowhere {
            // No context is readable, so the mirror must not claim one.
            mirror = NO_TRACE;
        }
        Self {
            context,
            mirror: MIRROR.replace(mirror),
            place,
        }
    }
}

impl Drop for Entered<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.place != Place::Nowhere {
            // `CURRENT` is alive: it was when entered, and a thread-local is destroyed only
            // when no code of the thread runs inside a scope of it.
            let _ = CURRENT.try_with(|current| current.leave(self.context, self.place));
        }
        MIRROR.set(self.mirror);
    }
}

/// Runs `f` inside `scope`, then hands `scope` back, out of the scope.
#[inline]
pub(crate) fn enter_scope<R>(mut scope: TraceScope, f: impl FnOnce() -> R) -> R {
    let _entered = scope.enter();
    f()
}

/// `future` inside `scope`.
#[inline]
pub(crate) fn scoped<F: Future>(scope: TraceScope, future: F) -> InScope<F> {
    InScope {
        scope,
        future: Some(future),
    }
}

/// Whether a trace context is current on this thread (a parent for a new span).
#[inline]
pub(crate) fn context_is_current() -> bool {
    MIRROR.get() != NO_TRACE
}

pin_project! {
    /// A future running inside a trace scope: the scope is entered around every poll of
    /// `future`, and around its drop when it is dropped unfinished (so its destructors, and
    /// a trace's `cancelled` end line, run inside its trace).
    pub(crate) struct InScope<F> {
        // Between polls, the trace this future runs in; during one, the enclosing trace.
        scope: TraceScope,
        // `None` once finished: dropped as soon as it is ready, inside the scope.
        #[pin]
        future: Option<F>,
    }

    impl<F> PinnedDrop for InScope<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.future.is_some() {
                let _entered = Entered::new(this.scope);
                let mut future = this.future;
                future.set(None);
            }
        }
    }
}

#[cfg(feature = "tower")]
impl<F> InScope<F> {
    /// The context of the trace this future runs in.
    pub(crate) fn context(&self) -> Option<&Arc<TraceContext>> {
        self.scope.context()
    }
}

impl<F: Future> Future for InScope<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = Entered::new(this.scope);
        let mut future = this.future;
        let Some(inner) = future.as_mut().as_pin_mut() else {
            // As tokio's `TaskLocalFuture`, which this replaces, did.
            panic!("a trace's future polled after it completed");
        };
        let poll = inner.poll(cx);
        if poll.is_ready() {
            // Dropped here, inside the scope, rather than by the drop glue.
            future.set(None);
        }
        poll
    }
}

/// What a scope makes current: the running trace's context, or explicitly none (for
/// example `.in_current_trace()` created outside a trace).
#[derive(Clone, Debug)]
pub(crate) struct TraceScope {
    // Only the pointer: it is swapped in and out of `CURRENT` around every poll.
    // `correlation_id()` reads the id from `MIRROR`, not from here.
    context: Option<Arc<TraceContext>>,
}

impl Drop for TraceScope {
    #[inline]
    fn drop(&mut self) {
        if let Some(context) = self.context.take() {
            recycle(context);
        }
    }
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

    /// Enters this scope until the guard is dropped.
    #[inline]
    pub(crate) fn enter(&mut self) -> Entered<'_> {
        Entered::new(self)
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

/// The longest `METHOD /path` a trace context holds in place (see [`OperationName`]).
#[cfg(feature = "tower")]
const JOINED_NAME_LEN: usize = 46;

/// A trace's operation name: the one given, or two parts joined by a space (a request's
/// `METHOD /path`) written into the trace context itself when they fit, so the default
/// name of a request's trace costs no allocation of its own (that allocation and its free
/// were a tenth of a quiet request's time in the server layer).
pub(crate) enum OperationName {
    Given(Cow<'static, str>),
    #[cfg(feature = "tower")]
    Joined {
        len: u8,
        bytes: [u8; JOINED_NAME_LEN],
    },
}

impl OperationName {
    /// `first second`.
    #[cfg(feature = "tower")]
    pub(crate) fn joined(first: &str, second: &str) -> Self {
        let len = first.len() + 1 + second.len();
        let short = match u8::try_from(len) {
            Ok(short) if len <= JOINED_NAME_LEN => short,
            _ => return Self::Given(Cow::Owned([first, second].join(" "))),
        };
        let mut bytes = [0; JOINED_NAME_LEN];
        bytes[..first.len()].copy_from_slice(first.as_bytes());
        bytes[first.len()] = b' ';
        bytes[first.len() + 1..len].copy_from_slice(second.as_bytes());
        Self::Joined { len: short, bytes }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Given(name) => name,
            // Two `str`s and a space: always UTF-8, so the fallback never shows.
            #[cfg(feature = "tower")]
            Self::Joined { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
        }
    }
}

impl From<Cow<'static, str>> for OperationName {
    fn from(name: Cow<'static, str>) -> Self {
        Self::Given(name)
    }
}

impl std::fmt::Debug for OperationName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Everything known about the running trace: ids, operation, start times, W3C state.
///
/// Read it with [`current`] (or [`with_current`] to avoid the reference-count increment).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let tracer = keel_correlation::Tracer::off();
/// tracer.start_trace("checkout", async {
///     let context = keel_correlation::current().unwrap();
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
    pub(crate) operation: OperationName,
    /// `None` when the tracer writes no lines (see [`TraceContext::elapsed`]).
    pub(crate) started: Option<Instant>,
    pub(crate) tracer: Tracer,
    /// The request's propagation choices and received id headers, shared by every span of
    /// a trace continued from a request; `None` for the defaults and nothing received.
    pub(crate) participation: Option<Arc<Participation>>,
}

impl TraceContext {
    /// Whether dropping this context is invisible: its fields own nothing but memory of
    /// their own (see [`SPARE`]).
    #[inline]
    fn is_plain(&self) -> bool {
        self.tracer.is_off()
            && self.participation.is_none()
            && self.trace_state.is_none()
            && self.correlation_id.uuid_bits().is_some()
            && !matches!(self.operation, OperationName::Given(Cow::Owned(_)))
    }

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

    /// The W3C trace flags this span sends downstream: only the defined ones (`sampled`,
    /// `random`); reserved bits of a received `traceparent` are zeroed (see [`TraceFlags`]).
    pub fn flags(&self) -> TraceFlags {
        self.flags
    }

    /// The `tracestate` received with a valid `traceparent`, passed on downstream.
    pub fn trace_state(&self) -> Option<&TraceState> {
        self.trace_state.as_ref()
    }

    /// The operation name given to `start_trace`.
    pub fn operation(&self) -> &str {
        self.operation.as_str()
    }

    /// Wall-clock start (what the start line's `timestamp` shows), derived from the
    /// monotonic start so a trace reads only one clock. `None` in a trace whose tracer
    /// writes no lines (see [`elapsed`](Self::elapsed)).
    pub fn start_time(&self) -> Option<SystemTime> {
        self.started.map(crate::clock::wall_clock)
    }

    /// Monotonic time since the trace started; `None` in a trace whose tracer writes no
    /// lines ([`Tracer::off`]).
    ///
    /// The start time exists for the lines (their timestamps and the end line's
    /// `duration_ms`), and reading the clock is the largest single cost of a quiet trace
    /// (about as much as a bare task-local scope), so a quiet trace does not read it. Time
    /// the work yourself with [`Instant`] where a quiet trace needs a duration.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let elapsed = keel_correlation::Tracer::off()
    ///     .start_trace("quiet", async { keel_correlation::current().unwrap().elapsed() })
    ///     .await;
    /// assert_eq!(elapsed, None);
    /// # }
    /// ```
    pub fn elapsed(&self) -> Option<Duration> {
        self.started.map(|started| started.elapsed())
    }

    /// The tracer that writes this trace's lines; nested traces inherit it.
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// The `traceparent` to send downstream: this trace id, this span as the parent (in
    /// [`Mode::PassThrough`], the `traceparent` as received).
    pub fn traceparent(&self) -> TraceParent {
        if let Some(upstream) = self.pass_through() {
            return upstream;
        }
        TraceParent {
            trace_id: self.trace_id,
            parent_id: self.span_id,
            flags: self.flags,
        }
    }

    fn pass_through(&self) -> Option<TraceParent> {
        self.participation
            .as_deref()
            .filter(|participation| participation.policy().mode == Mode::PassThrough)
            .and_then(|participation| participation.upstream)
    }

    /// The headers to send downstream from this span: `traceparent`, `tracestate` (when not
    /// empty; with the service's own entry in front when it configured a key, truncated to
    /// 512 characters) and the id headers the [`Propagation`](crate::Propagation) selects
    /// (by default the ones the caller sent), names in lowercase.
    ///
    /// Every outgoing call should carry its own parent-id: open a span per call with
    /// [`client_call`](crate::client_call), which hands the call these headers of its own
    /// span.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// keel_correlation::Tracer::off().start_trace("call-inventory", async {
    ///     let headers = keel_correlation::current().unwrap().outgoing_headers();
    ///     assert_eq!(headers[0].0, "traceparent");
    ///     assert_eq!(headers.len(), 1);
    /// }).await;
    /// # }
    /// ```
    pub fn outgoing_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("traceparent", self.traceparent().to_string())];
        if let Some(state) = self.outgoing_trace_state() {
            headers.push(("tracestate", state));
        }
        headers.extend(Participation::id_headers(
            self.participation.as_deref(),
            &self.correlation_id,
            true,
        ));
        headers
    }

    fn outgoing_trace_state(&self) -> Option<String> {
        if self.pass_through().is_some() {
            // "If the value of the traceparent field wasn't changed before propagation,
            // tracestate MUST NOT be modified as well."
            return self.trace_state.as_ref().map(ToString::to_string);
        }
        let key = self
            .participation
            .as_deref()
            .and_then(|participation| participation.policy().tracestate_key.as_deref());
        let mut state = self.trace_state.clone().unwrap_or_default();
        if let Some(key) = key {
            // The key was validated when configured, and a span id is a valid value.
            let _ = state.insert(key, &self.span_id.to_string());
        }
        state.truncate(MAX_TRACESTATE_LEN);
        (!state.is_empty()).then(|| state.to_string())
    }

    /// The headers to send back on the response to the request this trace continues:
    /// `x-correlation-id` and `x-request-id` as the [`Propagation`](crate::Propagation)
    /// says (by default, the valid ones the caller sent, with its values).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let incoming = keel_correlation::Incoming::from_headers([("X-Request-Id", "req-9")]);
    /// let back = keel_correlation::Tracer::off()
    ///     .continue_trace(incoming, "GET /", async { keel_correlation::current().unwrap().response_headers() })
    ///     .await;
    /// assert_eq!(back, vec![("x-request-id", "req-9".to_owned())]);
    /// # }
    /// ```
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        Participation::id_headers(self.participation.as_deref(), &self.correlation_id, false)
    }
}

/// The correlation id of the running trace, or `None` outside one. Works in async and sync
/// code (inside [`sync_scope`], [`bind`](crate::bind) and [`Tracer::trace_sync`]). Costs one
/// thread-local load, inlined (a received text id also reads the context and increments
/// a reference count); never allocates.
///
/// ```
/// assert_eq!(keel_correlation::correlation_id(), None);
/// ```
#[inline]
pub fn correlation_id() -> Option<CorrelationId> {
    // Inlined: the mirror is one thread-local load in the caller, and the common answers
    // (none, or a UUID) need nothing else.
    match MIRROR.get() {
        NO_TRACE => None,
        READ_CONTEXT => current_correlation_id(),
        bits => Some(CorrelationId::from_uuid_bits(bits)),
    }
}

#[inline(never)]
fn current_correlation_id() -> Option<CorrelationId> {
    with_context(|context| context.map(|context| context.correlation_id.clone()))
}

/// The context of the running trace, or `None` outside one.
///
/// ```
/// assert!(keel_correlation::current().is_none());
/// ```
#[inline]
pub fn current() -> Option<Arc<TraceContext>> {
    with_context(|context| context.map(Arc::clone))
}

/// Calls `f` with the running trace's context without touching its reference count (except
/// inside a scope entered within another `with_current` closure, where the context is
/// cloned first). `f` may enter scopes and start traces of its own.
///
/// ```
/// let operation = keel_correlation::with_current(|context| context.map(|c| c.operation().to_owned()));
/// assert_eq!(operation, None);
/// ```
#[inline]
pub fn with_current<R>(f: impl FnOnce(Option<&TraceContext>) -> R) -> R {
    with_context(|context| f(context.map(|context| &**context)))
}

/// The headers to send downstream from the running trace (see
/// [`TraceContext::outgoing_headers`]); empty outside a trace.
///
/// ```
/// assert!(keel_correlation::outgoing_headers().is_empty());
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
/// keel_correlation::Tracer::off().start_trace("batch", async {
///     let context = keel_correlation::current();
///     let id = keel_correlation::correlation_id();
///     let seen = std::thread::spawn(move || keel_correlation::sync_scope(context, keel_correlation::correlation_id))
///         .join()
///         .unwrap();
///     assert_eq!(seen, id);
/// }).await;
/// # }
/// ```
pub fn sync_scope<R>(context: Option<Arc<TraceContext>>, f: impl FnOnce() -> R) -> R {
    enter_scope(TraceScope::from(context), f)
}
