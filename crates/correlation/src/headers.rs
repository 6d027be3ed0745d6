//! Incoming request headers: choosing and validating the id to continue.

use std::sync::Arc;

use crate::{
    id::{CorrelationId, InvalidCorrelationId, SpanId, TraceFlags, TraceId},
    policy::{HeaderRule, Mode, Policy, Propagation, default_policy},
    w3c::{TraceContextLevel, TraceParent, TraceParentError, TraceState, TraceStateError},
};

/// The trace to continue, chosen from incoming request headers.
///
/// Precedence: a valid `traceparent` (its trace id becomes the correlation id, its parent-id
/// the parent span, its `sampled` and `random` flags are kept, and a valid `tracestate`
/// travels with it), then `x-correlation-id`, then `x-request-id`, then a fresh id. A new
/// trace gets the `sampled` flag the [`Propagation`]'s [`Sampling`](crate::Sampling)
/// decides (always, by default) and the `random` flag when its trace id is random.
/// Valid `x-correlation-id` and `x-request-id` values are kept even when another header
/// won, so they can be echoed back ([`Incoming::response_headers`]) and sent downstream. Header names are matched case-insensitively. A header
/// sent twice (`traceparent`, `x-correlation-id`, `x-request-id`) is invalid; several
/// `tracestate` fields are joined with `,`. An invalid `traceparent` is ignored together
/// with its `tracestate`, as the W3C specification asks, and the next header is tried.
/// Rejected values are never kept or logged: only the reason is, in
/// [`rejections`](Incoming::rejections).
///
/// ```
/// use keel_correlation::{IdSource, Incoming};
///
/// let incoming = Incoming::from_headers([
///     ("X-Request-Id", "req-1"),
///     ("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"), // uppercase: invalid
///     ("tracestate", "congo=t61rcWkgMzE"),
/// ]);
/// assert_eq!(incoming.source(), IdSource::RequestId);
/// assert_eq!(incoming.correlation_id().to_string(), "req-1");
/// assert!(incoming.trace_state().is_none());
/// assert_eq!(incoming.rejections().len(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct Incoming {
    pub(crate) correlation_id: CorrelationId,
    pub(crate) trace_id: TraceId,
    pub(crate) parent_span_id: Option<SpanId>,
    pub(crate) flags: TraceFlags,
    pub(crate) trace_state: Option<TraceState>,
    source: IdSource,
    rejections: Vec<Rejection>,
    /// What the trace's outgoing and response headers need to know; `None` when that is
    /// nothing (the default policy and no id header received).
    pub(crate) participation: Option<Arc<Participation>>,
}

/// What a trace continued from a request remembers for its outgoing and response headers;
/// shared by the trace and every span nested in it.
#[derive(Debug)]
pub(crate) struct Participation {
    pub(crate) propagation: Option<Propagation>,
    /// The caller's valid `x-correlation-id`.
    pub(crate) correlation_header: Option<CorrelationId>,
    /// The caller's valid `x-request-id`.
    pub(crate) request_id: Option<CorrelationId>,
    /// The received `traceparent`, sent on unchanged in [`Mode::PassThrough`].
    pub(crate) upstream: Option<TraceParent>,
}

impl Participation {
    /// A participation of its own, shared by the trace's spans.
    #[inline(never)]
    fn shared(
        propagation: Option<&Propagation>,
        correlation_header: Option<&CorrelationId>,
        request_id: Option<&CorrelationId>,
        upstream: Option<TraceParent>,
    ) -> Arc<Self> {
        Arc::new(Self {
            propagation: propagation.cloned(),
            correlation_header: correlation_header.cloned(),
            request_id: request_id.cloned(),
            upstream,
        })
    }

    pub(crate) fn policy(&self) -> &Policy {
        match &self.propagation {
            Some(propagation) => propagation.policy(),
            None => default_policy(),
        }
    }

    /// The `x-correlation-id` and `x-request-id` headers `rule` selects, for a trace whose
    /// correlation id is `correlation_id`.
    #[inline]
    pub(crate) fn id_headers(
        participation: Option<&Self>,
        correlation_id: &CorrelationId,
        downstream: bool,
    ) -> Vec<(&'static str, String)> {
        // Without a participation the policy is the default, which sends an id header only
        // when it was received, and none was: no headers, decided without looking (and
        // inlined, so a quiet request pays a test, not a call).
        match participation {
            None => Vec::new(),
            Some(participation) => participation.selected_id_headers(correlation_id, downstream),
        }
    }

    fn selected_id_headers(
        &self,
        correlation_id: &CorrelationId,
        downstream: bool,
    ) -> Vec<(&'static str, String)> {
        let participation = self;
        let policy = participation.policy();
        let participation = Some(participation);
        let pick = |rule: crate::policy::IdHeader| {
            if downstream {
                rule.downstream
            } else {
                rule.response
            }
        };
        let mut headers = Vec::new();
        let mut add = |name: &'static str, rule: HeaderRule, received: Option<&CorrelationId>| {
            let value = match (rule, received) {
                (HeaderRule::Never, _) | (HeaderRule::WhenReceived, None) => return,
                (_, Some(received)) => received,
                (HeaderRule::Always, None) => correlation_id,
            };
            headers.push((name, value.to_string()));
        };
        add(
            "x-correlation-id",
            pick(policy.correlation_id_header),
            participation.and_then(|p| p.correlation_header.as_ref()),
        );
        add(
            "x-request-id",
            pick(policy.request_id_header),
            participation.and_then(|p| p.request_id.as_ref()),
        );
        headers
    }
}

/// Which header the correlation id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdSource {
    /// A valid `traceparent`.
    TraceParent,
    /// `x-correlation-id`.
    CorrelationId,
    /// `x-request-id`.
    RequestId,
    /// None usable: a fresh id.
    Generated,
}

/// A header value that was not used, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// The header name, lowercase.
    pub header: &'static str,
    /// What was wrong with it.
    pub reason: RejectionReason,
}

/// Why a header value was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionReason {
    /// An invalid `traceparent`.
    TraceParent(TraceParentError),
    /// An invalid `tracestate` (the `traceparent` is still used).
    TraceState(TraceStateError),
    /// An invalid `x-correlation-id` or `x-request-id`.
    Id(InvalidCorrelationId),
    /// An id header that is not valid UTF-8.
    NotUtf8,
    /// An id header sent more than once.
    Repeated,
}

impl std::fmt::Display for Rejection {
    /// `header: reason`, e.g. `x-request-id: sent more than once`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.header, self.reason)
    }
}

impl std::fmt::Display for RejectionReason {
    /// What was wrong, without the rejected value.
    ///
    /// ```
    /// let incoming = keel_correlation::Incoming::from_headers([("x-request-id", "a b")]);
    /// let reason = incoming.rejections()[0].reason;
    /// assert_eq!(reason.to_string(), "correlation id has a character outside [A-Za-z0-9-_.:+/=@] at byte 1");
    /// ```
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TraceParent(error) => write!(f, "{error}"),
            Self::TraceState(error) => write!(f, "{error}"),
            Self::Id(error) => write!(f, "{error}"),
            Self::NotUtf8 => f.write_str("not valid UTF-8"),
            Self::Repeated => f.write_str("sent more than once"),
        }
    }
}

impl std::error::Error for RejectionReason {}

/// Occurrences of one header: none, one value, or repeated.
#[derive(Default)]
pub(crate) enum Seen<'a> {
    #[default]
    None,
    Once(&'a [u8]),
    Repeated,
}

/// The values of the headers [`Incoming`] reads, gathered by name.
#[derive(Default)]
pub(crate) struct SeenHeaders<'a> {
    pub(crate) traceparent: Seen<'a>,
    /// Every `tracestate` field, in order.
    pub(crate) trace_state: Vec<&'a [u8]>,
    pub(crate) correlation: Seen<'a>,
    pub(crate) request: Seen<'a>,
}

impl<'a> Seen<'a> {
    pub(crate) fn add(&mut self, value: &'a [u8]) {
        *self = match self {
            Seen::None => Seen::Once(value),
            Seen::Once(_) | Seen::Repeated => Seen::Repeated,
        };
    }
}

impl Incoming {
    /// Chooses the trace to continue from `(name, value)` header pairs, e.g.
    /// `headers.iter().map(|(name, value)| (name.as_str(), value.as_bytes()))` for an
    /// `http::HeaderMap`, with the default [`Propagation`]. Other headers are ignored.
    pub fn from_headers<I, K, V>(headers: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<[u8]>,
    {
        Self::with_propagation(None, headers)
    }

    pub(crate) fn with_propagation<I, K, V>(propagation: Option<&Propagation>, headers: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<[u8]>,
    {
        Self::choose(propagation, headers)
    }

    fn choose<I, K, V>(propagation: Option<&Propagation>, headers: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let headers: Vec<(K, V)> = headers.into_iter().collect();
        let mut seen = SeenHeaders::default();
        for (name, value) in &headers {
            let name = name.as_ref();
            let value = value.as_ref();
            if name.eq_ignore_ascii_case("traceparent") {
                seen.traceparent.add(value);
            } else if name.eq_ignore_ascii_case("tracestate") {
                seen.trace_state.push(value);
            } else if name.eq_ignore_ascii_case("x-correlation-id") {
                seen.correlation.add(value);
            } else if name.eq_ignore_ascii_case("x-request-id") {
                seen.request.add(value);
            }
        }
        Self::choose_from(propagation, &seen)
    }

    /// [`Incoming::with_propagation`] for headers already looked up by name (a
    /// `HeaderMap` does that by hashing, with no pass over every header).
    #[cfg(feature = "http")]
    #[inline]
    pub(crate) fn from_seen(propagation: Option<&Propagation>, seen: &SeenHeaders<'_>) -> Self {
        Self::choose_from(propagation, seen)
    }

    #[inline]
    fn choose_from(propagation: Option<&Propagation>, seen: &SeenHeaders<'_>) -> Self {
        let policy = match propagation {
            Some(propagation) => propagation.policy(),
            None => default_policy(),
        };
        let SeenHeaders {
            traceparent,
            trace_state: trace_state_fields,
            correlation,
            request,
        } = seen;
        let mut rejections = Vec::new();
        // Every id header is validated (and kept, for echoing back) whichever one wins.
        let parent = match policy.mode {
            // At a trust boundary the caller's trace is not even parsed.
            Mode::Restart => None,
            Mode::Continue | Mode::PassThrough => parse_traceparent(traceparent, &mut rejections),
        };
        let correlation_header = parse_id("x-correlation-id", correlation, &mut rejections);
        let request_id = parse_id("x-request-id", request, &mut rejections);
        let participation = |upstream: Option<TraceParent>| {
            let needed = propagation.is_some()
                || correlation_header.is_some()
                || request_id.is_some()
                || upstream.is_some();
            needed.then(|| {
                Participation::shared(
                    propagation,
                    correlation_header.as_ref(),
                    request_id.as_ref(),
                    upstream,
                )
            })
        };
        if let Some(parent) = parent {
            // The tracestate is only read when the traceparent is valid.
            let trace_state = match parse_trace_state(trace_state_fields, policy.level) {
                Ok(state) => state,
                Err(error) => {
                    rejections.push(Rejection {
                        header: "tracestate",
                        reason: RejectionReason::TraceState(error),
                    });
                    None
                }
            };
            let upstream = (policy.mode == Mode::PassThrough).then_some(parent);
            log_rejections(&rejections);
            return Self {
                correlation_id: CorrelationId::from_uuid(uuid::Uuid::from_u128(
                    parent.trace_id.to_u128(),
                )),
                trace_id: parent.trace_id,
                parent_span_id: Some(parent.parent_id),
                flags: parent.flags,
                trace_state,
                source: IdSource::TraceParent,
                rejections,
                participation: participation(upstream),
            };
        }
        let chosen = match policy.mode {
            Mode::Restart => None,
            Mode::Continue | Mode::PassThrough => correlation_header
                .clone()
                .map(|id| (id, IdSource::CorrelationId))
                .or_else(|| request_id.clone().map(|id| (id, IdSource::RequestId))),
        };
        let (correlation_id, source, trace_id, random) = if let Some((id, source)) = chosen {
            match id.trace_id() {
                // A caller's UUID: not generated here, so not known to be random.
                Some(trace_id) => (id, source, trace_id, false),
                None => (id, source, TraceId::random(), true),
            }
        } else {
            let id = CorrelationId::new();
            let trace_id = id.trace_id().unwrap_or_else(TraceId::random);
            let random = crate::id::FRESH_IDS_ARE_RANDOM;
            (id, IdSource::Generated, trace_id, random)
        };
        log_rejections(&rejections);
        Self {
            flags: policy.new_trace_flags(trace_id, random),
            trace_id,
            correlation_id,
            parent_span_id: None,
            trace_state: None,
            source,
            rejections,
            participation: participation(None),
        }
    }

    /// The W3C trace id the trace will carry.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The headers to send back on the response: `x-correlation-id` and `x-request-id` as
    /// the [`Propagation`] says (by default, exactly the valid ones the caller sent, with
    /// its values). Also available inside the trace as
    /// [`TraceContext::response_headers`](crate::TraceContext::response_headers).
    ///
    /// ```
    /// let incoming = keel_correlation::Incoming::from_headers([
    ///     ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ///     ("x-request-id", "req-1"),
    /// ]);
    /// assert_eq!(incoming.response_headers(), vec![("x-request-id", "req-1".to_owned())]);
    /// ```
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        Participation::id_headers(self.participation.as_deref(), &self.correlation_id, false)
    }

    /// The flags the trace continued from this sends: the received ones the policy's
    /// [`TraceContextLevel`] defines.
    pub(crate) fn sent_flags(&self) -> TraceFlags {
        let level = match self.participation.as_deref() {
            Some(participation) => participation.policy().level,
            None => TraceContextLevel::default(),
        };
        self.flags.defined_at(level)
    }

    /// The correlation id the trace will carry.
    pub fn correlation_id(&self) -> &CorrelationId {
        &self.correlation_id
    }

    /// Which header it came from.
    pub fn source(&self) -> IdSource {
        self.source
    }

    /// The caller's span, from a valid `traceparent`.
    pub fn parent_span_id(&self) -> Option<SpanId> {
        self.parent_span_id
    }

    /// The trace flags of a valid `traceparent` as received, reserved bits included (for a
    /// new trace, the sampling decision and `random`). The trace continued from this sends
    /// only the defined ones.
    ///
    /// ```
    /// let incoming = keel_correlation::Incoming::from_headers([
    ///     ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff"),
    /// ]);
    /// assert_eq!(incoming.flags().bits(), 0xff);
    /// ```
    pub fn flags(&self) -> TraceFlags {
        self.flags
    }

    /// The `tracestate` to pass on, when the `traceparent` and the `tracestate` were valid.
    pub fn trace_state(&self) -> Option<&TraceState> {
        self.trace_state.as_ref()
    }

    /// The header values that were present but not used, with the reason.
    pub fn rejections(&self) -> &[Rejection] {
        &self.rejections
    }
}

/// Logs each rejection, once, at `debug`: before the `Incoming` is built, so building it is
/// a write of its fields in place rather than a copy of the whole value (a logged value
/// must be in memory), which stalled on store forwarding.
#[inline]
fn log_rejections(rejections: &[Rejection]) {
    if !rejections.is_empty() {
        log_each(rejections);
    }
}

fn log_each(rejections: &[Rejection]) {
    for rejection in rejections {
        // Only the reason: the rejected value itself must never reach a log.
        tracing::debug!(target: "keel_correlation", %rejection, "ignored an incoming trace header");
    }
}

fn parse_traceparent(seen: &Seen<'_>, rejections: &mut Vec<Rejection>) -> Option<TraceParent> {
    let result = match seen {
        Seen::None => return None,
        Seen::Repeated => Err(TraceParentError::Repeated),
        Seen::Once(value) => TraceParent::parse_bytes(value),
    };
    result
        .map_err(|error| {
            rejections.push(Rejection {
                header: "traceparent",
                reason: RejectionReason::TraceParent(error),
            });
        })
        .ok()
}

#[inline]
fn parse_trace_state(
    fields: &[&[u8]],
    level: TraceContextLevel,
) -> Result<Option<TraceState>, TraceStateError> {
    if fields.is_empty() {
        return Ok(None);
    }
    parse_trace_state_fields(fields, level).map(Some)
}

fn parse_trace_state_fields(
    fields: &[&[u8]],
    level: TraceContextLevel,
) -> Result<TraceState, TraceStateError> {
    let mut combined = String::new();
    for (index, field) in fields.iter().enumerate() {
        if index > 0 {
            combined.push(',');
        }
        combined.push_str(std::str::from_utf8(field).map_err(|_| TraceStateError::NotUtf8)?);
    }
    TraceState::parse_level(&combined, level)
}

#[inline]
fn parse_id(
    header: &'static str,
    seen: &Seen<'_>,
    rejections: &mut Vec<Rejection>,
) -> Option<CorrelationId> {
    // Inlined: most requests carry neither id header.
    match seen {
        Seen::None => None,
        seen => parse_received_id(header, seen, rejections),
    }
}

fn parse_received_id(
    header: &'static str,
    seen: &Seen<'_>,
    rejections: &mut Vec<Rejection>,
) -> Option<CorrelationId> {
    let result = match seen {
        Seen::None => return None,
        Seen::Repeated => Err(RejectionReason::Repeated),
        Seen::Once(value) => std::str::from_utf8(value)
            .map_err(|_| RejectionReason::NotUtf8)
            .and_then(|text| {
                CorrelationId::parse(text.trim_matches([' ', '\t'])).map_err(RejectionReason::Id)
            }),
    };
    result
        .map_err(|reason| rejections.push(Rejection { header, reason }))
        .ok()
}
