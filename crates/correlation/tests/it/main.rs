//! Integration tests of `correlation`: one binary, one module per area.

#[cfg(all(feature = "tower", feature = "reqwest"))]
mod axum;
mod bad_input;
mod headers;
#[cfg(feature = "http")]
mod http;
mod isolation;
#[cfg(feature = "tracing-subscriber")]
mod layer;
mod mirror;
#[cfg(feature = "opentelemetry")]
mod opentelemetry;
mod outcomes;
mod participant;
mod propagation;
mod props;
#[cfg(feature = "reqwest")]
mod reqwest;
mod reuse;
mod scope;
#[cfg(feature = "tracing-subscriber")]
mod spans;
mod spec;
#[cfg(feature = "tower")]
mod tower;

use std::{
    future::Future,
    io::{self, Write},
    pin::pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, Waker},
};

use keel_correlation::Tracer;
use serde_json::Value;

/// A sink that keeps everything written to it, shared between clones.
#[derive(Clone, Default)]
pub(crate) struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// A tracer writing into this capture.
    pub(crate) fn tracer(&self) -> Tracer {
        Tracer::writer(self.clone())
    }

    /// Everything written, as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
        .expect("output is UTF-8")
    }

    /// Every line parsed as a JSON object; fails the test on a line that is not one.
    pub(crate) fn lines(&self) -> Vec<Value> {
        let text = self.text();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "output ends mid-line: {text:?}"
        );
        text.lines()
            .map(|line| {
                let value: Value =
                    serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line:?}"));
                assert!(value.is_object(), "not an object: {line}");
                value
            })
            .collect()
    }
}

/// Polls a future that must finish without waiting (no runtime needed).
pub(crate) fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("future was expected to be ready"),
    }
}
