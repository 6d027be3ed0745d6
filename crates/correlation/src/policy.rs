//! The choices a service makes as a Trace Context participant: whether to continue, restart
//! or pass through an incoming trace, how to sample new traces, which id headers go
//! downstream and back, and its own `tracestate` entry.

use std::sync::Arc;

use crate::{
    headers::Incoming,
    id::{TraceFlags, TraceId},
    w3c::{TraceContextLevel, TraceState, TraceStateError},
};

/// How a service treats an incoming `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// Continue the caller's trace: same trace id, a new span whose parent is the caller's,
    /// the caller's `sampled` and `random` flags. The default.
    #[default]
    Continue,
    /// Start a new trace whatever came in (ignore `traceparent`, `tracestate` and the id
    /// headers for the trace's ids): the specification's "restart trace" at a trust
    /// boundary. Received id headers are still validated and can be echoed back (see
    /// [`HeaderRule`]).
    Restart,
    /// Forward the caller's trace unchanged: outgoing calls carry the received trace id,
    /// parent-id and flags, and the received `tracestate` untouched (the specification
    /// forbids changing `tracestate` when `traceparent` is not changed). The service's own
    /// lines still get their own span ids.
    PassThrough,
}

/// The sampling decision for traces this service starts (a continued trace keeps the
/// caller's `sampled` flag).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum Sampling {
    /// Set `sampled` on every new trace. The default.
    #[default]
    Always,
    /// Never set `sampled`.
    Never,
    /// Set `sampled` on about this fraction (0.0 to 1.0) of new traces, decided by a hash
    /// of the trace id, so every service configured with the same ratio makes the same
    /// decision for a trace (and the decision is uniform for UUID v7 trace ids too, whose
    /// low bits hold a counter).
    Ratio(f64),
}

impl Sampling {
    /// The decision for a new trace with `trace_id`.
    ///
    /// ```
    /// use keel_correlation::{Sampling, TraceId};
    ///
    /// let trace_id = TraceId::from_u128(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736).unwrap();
    /// assert!(Sampling::Always.sampled(trace_id));
    /// assert!(!Sampling::Ratio(0.0).sampled(trace_id));
    /// assert_eq!(Sampling::Ratio(0.3).sampled(trace_id), Sampling::Ratio(0.3).sampled(trace_id));
    /// ```
    pub fn sampled(self, trace_id: TraceId) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Ratio(ratio) => {
                // 2^53 fits an f64 exactly; the product is clamped to the 53-bit range.
                #[allow(
                    clippy::cast_precision_loss,
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss
                )]
                let threshold = (ratio.clamp(0.0, 1.0) * (1u64 << 53) as f64) as u64;
                (mix(trace_id.to_u128()) >> 11) < threshold
            }
        }
    }
}

/// A uniform 64-bit value from all 128 bits of a trace id (splitmix64's finaliser over
/// both halves): the same for every service, and uniform even for trace ids whose low bits
/// are a counter (UUID v7) rather than random.
fn mix(trace_id: u128) -> u64 {
    let finalise = |mut value: u64| {
        value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        value ^ (value >> 31)
    };
    // Halves of the id, truncation intended.
    #[allow(clippy::cast_possible_truncation)]
    let (high, low) = ((trace_id >> 64) as u64, trace_id as u64);
    finalise(high ^ finalise(low))
}

/// When an id header (`x-correlation-id`, `x-request-id`) is sent: downstream on outgoing
/// calls, or back on the response.
///
/// The value is what the caller sent in that header (validated), or the trace's
/// correlation id when the caller did not send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderRule {
    /// Never.
    Never,
    /// Only when the caller sent a valid value in that header: echo what it sent. The
    /// default.
    #[default]
    WhenReceived,
    /// Always: the received value, else the correlation id.
    Always,
}

/// Where an id header goes: downstream (outgoing calls) and back (the response).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdHeader {
    /// On outgoing calls.
    pub downstream: HeaderRule,
    /// On the response to the caller.
    pub response: HeaderRule,
}

/// How a service participates in W3C Trace Context: a cheap handle (an `Arc`), built once
/// and used for every request through [`Propagation::incoming`].
///
/// The defaults continue incoming traces, sample every new trace, send `x-correlation-id`
/// and `x-request-id` downstream and back only when the caller sent them (echoing its
/// values), and add no `tracestate` entry.
///
/// ```
/// use keel_correlation::{HeaderRule, IdHeader, Mode, Propagation, Sampling};
///
/// let propagation = Propagation::new()
///     .mode(Mode::Restart) // a public edge: never trust the caller's trace
///     .sampling(Sampling::Ratio(0.25))
///     .correlation_id_header(IdHeader { downstream: HeaderRule::Always, response: HeaderRule::Never })
///     .tracestate_key("acme")?;
/// let incoming = propagation.incoming([
///     ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
///     ("x-request-id", "req-7"),
/// ]);
/// assert_ne!(incoming.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(incoming.response_headers(), vec![("x-request-id", "req-7".to_owned())]);
/// # Ok::<(), keel_correlation::TraceStateError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Propagation {
    inner: Arc<Policy>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    pub(crate) mode: Mode,
    pub(crate) sampling: Sampling,
    pub(crate) correlation_id_header: IdHeader,
    pub(crate) request_id_header: IdHeader,
    pub(crate) tracestate_key: Option<Box<str>>,
    pub(crate) level: TraceContextLevel,
}

impl Propagation {
    /// The defaults (see the type's docs).
    pub fn new() -> Self {
        Self::default()
    }

    /// How an incoming `traceparent` is treated.
    #[must_use]
    pub fn mode(mut self, mode: Mode) -> Self {
        Arc::make_mut(&mut self.inner).mode = mode;
        self
    }

    /// The sampling decision for new traces.
    #[must_use]
    pub fn sampling(mut self, sampling: Sampling) -> Self {
        Arc::make_mut(&mut self.inner).sampling = sampling;
        self
    }

    /// The level of W3C Trace Context to follow: Level 2 (the default) or, strictly, Level
    /// 1 (see [`TraceContextLevel`]).
    #[must_use]
    pub fn level(mut self, level: TraceContextLevel) -> Self {
        Arc::make_mut(&mut self.inner).level = level;
        self
    }

    /// Where `x-correlation-id` goes.
    #[must_use]
    pub fn correlation_id_header(mut self, rule: IdHeader) -> Self {
        Arc::make_mut(&mut self.inner).correlation_id_header = rule;
        self
    }

    /// Where `x-request-id` goes.
    #[must_use]
    pub fn request_id_header(mut self, rule: IdHeader) -> Self {
        Arc::make_mut(&mut self.inner).request_id_header = rule;
        self
    }

    /// This service's own `tracestate` key: every outgoing call (outside
    /// [`Mode::PassThrough`]) carries `key=<its parent-id>` as the first entry, added or
    /// updated and moved to the front as the specification asks, and the header is
    /// truncated to 512 characters.
    ///
    /// # Errors
    /// [`TraceStateError::BadKey`] when `key` breaks the key grammar.
    pub fn tracestate_key(mut self, key: &str) -> Result<Self, TraceStateError> {
        // Validated by the same code that inserts it.
        TraceState::default().insert(key, "0")?;
        Arc::make_mut(&mut self.inner).tracestate_key = Some(key.into());
        Ok(self)
    }

    /// Chooses the trace to continue from incoming request headers under this policy (see
    /// [`Incoming::from_headers`], which uses the defaults).
    pub fn incoming<I, K, V>(&self, headers: I) -> Incoming
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<[u8]>,
    {
        Incoming::with_propagation(Some(self), headers)
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.inner
    }
}

impl Policy {
    /// The flags of a new trace with `trace_id`, whose id bits are random when `random`.
    pub(crate) fn new_trace_flags(&self, trace_id: TraceId, random: bool) -> TraceFlags {
        let mut flags = TraceFlags::NONE;
        if self.sampling.sampled(trace_id) {
            flags = flags.with(TraceFlags::SAMPLED);
        }
        if random {
            flags = flags.with(TraceFlags::RANDOM);
        }
        flags.defined_at(self.level)
    }
}

/// The policy used when none was given.
pub(crate) fn default_policy() -> &'static Policy {
    static DEFAULT: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(Policy::default)
}
