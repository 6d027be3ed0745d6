//! Shared helpers: a breaker on a manual clock that records its events, and a no-op poller.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use keel_breaker::{Builder, CircuitBreaker, Event, ManualClock, Policy, Rejected};

/// Events a breaker delivered, in order.
#[derive(Clone, Default)]
pub(crate) struct Recorder(Arc<Mutex<Vec<Event>>>);

impl Recorder {
    pub(crate) fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    pub(crate) fn attach(&self, builder: Builder) -> Builder {
        let events = self.0.clone();
        builder.on_event(move |event| events.lock().unwrap().push(*event))
    }
}

/// A builder on `clock` opening after `failures` consecutive failures and probing after 10 s.
pub(crate) fn builder(clock: &ManualClock, failures: u32) -> Builder {
    CircuitBreaker::builder("test")
        .policy(Policy::consecutive_failures(failures))
        .half_open_after(Duration::from_secs(10))
        .clock(clock.clone())
}

pub(crate) fn fail(breaker: &CircuitBreaker) {
    let _ = breaker.call(|| Err::<(), _>("boom"));
}

pub(crate) fn succeed(breaker: &CircuitBreaker) {
    let _ = breaker.call(|| Ok::<_, ()>(()));
}

/// Polls `future` once with a waker that does nothing.
pub(crate) fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// Drives a future that never actually waits (every test future here is ready or pending forever).
pub(crate) fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match poll_once(future.as_mut()) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("test future was not ready"),
    }
}

/// Swallows the panic message of panics whose payload is `"model panic"` or `"listener panic"`.
pub(crate) fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload().downcast_ref::<&str>();
            if payload != Some(&"model panic") && payload != Some(&"listener panic") {
                default(info);
            }
        }));
    });
}

/// The `retry_after` of an `Open` rejection; anything else fails the test.
pub(crate) fn open_wait(rejected: Rejected) -> Duration {
    match rejected {
        Rejected::Open { retry_after, .. } => retry_after,
        other => panic!("expected an Open rejection, got {other:?}"),
    }
}

/// The `retry_after` of a `HalfOpenFull` rejection; anything else fails the test.
pub(crate) fn full_wait(rejected: Rejected) -> Duration {
    match rejected {
        Rejected::HalfOpenFull { retry_after } => retry_after,
        other => panic!("expected a HalfOpenFull rejection, got {other:?}"),
    }
}
