//! Listeners: who hears events and rejections, how their panics are contained, and the
//! `tracing` line every transition logs.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use crate::{Event, Rejected, state::public_state};

pub(crate) type Listener = Box<dyn Fn(&Event) + Send + Sync>;
pub(crate) type RejectListener = Box<dyn Fn(&Rejected) + Send + Sync>;

/// Every listener of one breaker. Each list is `None` when empty, so a path with nobody
/// listening checks one pointer.
#[derive(Default)]
pub(crate) struct Listeners {
    events: Option<Box<[Listener]>>,
    rejections: Option<Box<[RejectListener]>>,
}

impl Listeners {
    pub(crate) fn new(events: Vec<Listener>, rejections: Vec<RejectListener>) -> Listeners {
        Listeners {
            events: (!events.is_empty()).then(|| events.into_boxed_slice()),
            rejections: (!rejections.is_empty()).then(|| rejections.into_boxed_slice()),
        }
    }

    /// Whether anyone listens to events.
    #[inline]
    pub(crate) fn any(&self) -> bool {
        self.events.is_some()
    }

    #[inline]
    pub(crate) fn emit(&self, events: &[Event]) {
        if let Some(listeners) = &self.events {
            deliver(listeners, events, |listener, event| listener(event));
        }
    }

    #[inline]
    pub(crate) fn rejected(&self, rejected: &Rejected) {
        if let Some(listeners) = &self.rejections {
            deliver(listeners, &[*rejected], |listener, rejected| {
                listener(rejected);
            });
        }
    }
}

/// Delivers every item to every listener, even if one panics; then continues the first
/// panic, unless the thread is already unwinding (a second panic escaping a `Drop` would
/// abort the process), in which case listener panics are dropped.
#[cold]
fn deliver<L, T>(listeners: &[L], items: &[T], call: impl Fn(&L, &T)) {
    let mut first_panic = None;
    for item in items {
        for listener in listeners {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| call(listener, item))) {
                first_panic.get_or_insert(panic);
            }
        }
    }
    if let Some(panic) = first_panic
        && !std::thread::panicking()
    {
        resume_unwind(panic);
    }
}

/// Logs a transition that just happened and returns its event.
#[cold]
pub(crate) fn log_change(name: &str, from: u8, to: u8) -> Event {
    let (from, to) = (public_state(from), public_state(to));
    tracing::info!(
        target: "keel_breaker",
        name = %name,
        from = %from,
        to = %to,
        "[CircuitBreaker:{}] State: {}",
        name,
        to
    );
    Event::StateChange { from, to }
}
