//! The `tower` feature: the layer inside real `ServiceBuilder` stacks (issue 12).

use std::{
    convert::Infallible,
    future::pending,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::pin,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU32, Ordering},
    },
    task::Poll,
    time::Duration,
};

use keel_breaker::{
    BreakerError, BreakerLayer, BreakerService, CircuitBreaker, ManualClock, Outcome, Policy, State,
};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

use crate::support::{builder, fail, quiet_panics, ready};

/// A service that fails for `0`, counts its calls, and answers its input otherwise.
fn upstream(
    calls: &Arc<AtomicU32>,
) -> impl Service<u32, Response = u32, Error = &'static str> + Clone {
    let calls = calls.clone();
    service_fn(move |request: u32| {
        calls.fetch_add(1, Ordering::Relaxed);
        async move {
            if request == 0 {
                Err("down")
            } else {
                Ok(request)
            }
        }
    })
}

#[tokio::test(flavor = "current_thread")]
async fn a_service_builder_stack_opens_and_rejects_without_calling_the_service() {
    let calls = Arc::new(AtomicU32::new(0));
    let breaker = CircuitBreaker::builder("stack")
        .policy(Policy::consecutive_failures(2))
        .build()
        .unwrap();
    let mut service = ServiceBuilder::new()
        .layer(BreakerLayer::new(breaker.clone()))
        .service(upstream(&calls));
    assert_eq!(service.ready().await.unwrap().call(7).await, Ok(7));
    for _ in 0..2 {
        let error = service.ready().await.unwrap().call(0).await.unwrap_err();
        assert_eq!(error, BreakerError::Inner("down"));
    }
    assert_eq!(breaker.state(), State::Open);
    let rejected = service.ready().await.unwrap().call(7).await.unwrap_err();
    assert!(
        matches!(rejected, BreakerError::Open { .. }),
        "{rejected:?}"
    );
    assert_eq!(
        calls.load(Ordering::Relaxed),
        3,
        "a rejected call reached the service"
    );
    // With an error type inside, it converts into tower's `BoxError`, so it stacks with
    // tower's middleware.
    let boxed: BoxError = BreakerError::<std::io::Error>::from(rejected.rejected().unwrap()).into();
    assert!(boxed.to_string().contains("open"), "{boxed}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_outer_timeout_cancels_a_hung_probe_and_frees_its_slot() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .probe_timeout(Duration::MAX)
        .build()
        .unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(10));
    let hung = service_fn(|_: u32| pending::<Result<u32, Infallible>>());
    let mut service = ServiceBuilder::new()
        .timeout(Duration::from_secs(1))
        .layer(BreakerLayer::new(breaker.clone()))
        .service(hung);
    let error = service.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(error.is::<tower::timeout::error::Elapsed>(), "{error}");
    assert_eq!(breaker.state(), State::HalfOpen);
    let probe = breaker
        .try_acquire()
        .expect("the timed-out probe freed its slot");
    probe.success();
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_inner_timeout_is_a_failure_of_the_guarded_call() {
    let breaker = CircuitBreaker::builder("inner-timeout")
        .policy(Policy::consecutive_failures(1))
        .build()
        .unwrap();
    let mut service = ServiceBuilder::new()
        .layer(BreakerLayer::new(breaker.clone()))
        .timeout(Duration::from_secs(1))
        .service(service_fn(|_: u32| pending::<Result<u32, Infallible>>()));
    let error = service.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(matches!(error, BreakerError::Inner(_)), "{error:?}");
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn dropping_an_unpolled_response_future_in_half_open_frees_the_probe() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .probe_timeout(Duration::MAX)
        .build()
        .unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(10));
    let calls = Arc::new(AtomicU32::new(0));
    let mut service = BreakerService::new(upstream(&calls), breaker.clone());
    let future = service.call(5); // admitted as the probe, in `call`
    assert!(service.call(5).into_inner_rejected().is_some());
    drop(future);
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(ready(service.call(5)), Ok(5));
    assert_eq!(breaker.state(), State::Closed);
}

/// Polls a response future once and returns its output if ready.
trait ReadyExt: std::future::Future + Sized {
    fn into_inner_rejected(self) -> Option<Self::Output>;
}

impl<F: std::future::Future> ReadyExt for F {
    /// The output of a future that is ready at once (a rejection), else `None`.
    fn into_inner_rejected(self) -> Option<F::Output> {
        let mut future = std::pin::pin!(self);
        match crate::support::poll_once(future.as_mut()) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        }
    }
}

#[test]
fn statuses_are_classified_on_the_response() {
    let breaker = CircuitBreaker::builder("status")
        .policy(Policy::consecutive_failures(2))
        .build()
        .unwrap();
    let by_status = |result: &Result<u16, Infallible>| match result {
        Ok(status) if *status >= 500 || *status == 429 => Outcome::Failure,
        _ => Outcome::Success,
    };
    let mut service = ServiceBuilder::new()
        .layer(BreakerLayer::new(breaker.clone()).classifier(by_status))
        .service(service_fn(|status: u16| async move {
            Ok::<_, Infallible>(status)
        }));
    assert_eq!(ready(service.call(503)), Ok(503));
    assert_eq!(ready(service.call(404)), Ok(404)); // resets the streak
    assert_eq!(ready(service.call(429)), Ok(429));
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(ready(service.call(500)), Ok(500));
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn a_panicking_classifier_or_inner_call_never_strands_the_probe() {
    quiet_panics();
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1)
        .probe_timeout(Duration::MAX)
        .build()
        .unwrap();
    fail(&breaker);
    clock.advance(Duration::from_secs(10));
    let calls = Arc::new(AtomicU32::new(0));
    let mut service = ServiceBuilder::new()
        .layer(
            BreakerLayer::new(breaker.clone())
                .classifier(|_: &Result<u32, &str>| -> Outcome { panic!("model panic") }),
        )
        .service(upstream(&calls));
    assert!(catch_unwind(AssertUnwindSafe(|| ready(service.call(1)))).is_err());
    assert_eq!(
        breaker.state(),
        State::HalfOpen,
        "a panicking classifier decided"
    );
    // The slot is free again; a service whose `call` panics counts as a failed probe.
    let mut panicking = BreakerService::new(
        service_fn(|_: u32| -> std::future::Ready<Result<u32, Infallible>> {
            panic!("model panic")
        }),
        breaker.clone(),
    );
    assert!(catch_unwind(AssertUnwindSafe(|| drop(panicking.call(1)))).is_err());
    assert_eq!(breaker.state(), State::Open);
}

/// A service that is never ready: its `poll_ready` fails.
#[derive(Debug)]
struct NotReady;

impl Service<u32> for NotReady {
    type Response = u32;
    type Error = &'static str;
    type Future = std::future::Ready<Result<u32, &'static str>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Err("not ready"))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        std::future::ready(Ok(1))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn inner_errors_reach_the_caller_unchanged_and_poll_ready_admits_nobody() {
    let breaker = CircuitBreaker::builder("ready")
        .count_calls()
        .build()
        .unwrap();
    let mut service = BreakerService::new(NotReady, breaker.clone());
    assert_eq!(
        service.ready().await.unwrap_err(),
        BreakerError::Inner("not ready")
    );
    assert_eq!(breaker.metrics().admitted, 0, "poll_ready took a slot");
    let failing = service_fn(|_: u32| async { Err::<u32, &str>("refused") });
    let mut service = BreakerService::new(failing, breaker.clone());
    assert_eq!(
        service.ready().await.unwrap().call(1).await,
        Err(BreakerError::Inner("refused"))
    );
}

static SHARED: LazyLock<CircuitBreaker> =
    LazyLock::new(|| CircuitBreaker::builder("static").build().unwrap());

#[test]
fn a_static_breaker_is_shared_by_reference() {
    let calls = Arc::new(AtomicU32::new(0));
    let layer = BreakerLayer::new(&*SHARED);
    let mut first = ServiceBuilder::new()
        .layer(layer.clone())
        .service(upstream(&calls));
    let mut second = ServiceBuilder::new().layer(layer).service(upstream(&calls));
    for _ in 0..5 {
        let _ = ready(first.call(0));
    }
    assert_eq!(SHARED.state(), State::Open);
    assert!(ready(second.call(1)).unwrap_err().is_rejected());
    assert_eq!(first.breaker().name(), "static");
}

#[cfg(feature = "http")]
#[tokio::test(flavor = "current_thread")]
async fn http_statuses_open_the_layer_and_rejections_become_503_with_retry_after() {
    use http::{Response, StatusCode};
    use keel_breaker::{HttpStatus, rejection_response};

    let clock = ManualClock::new();
    let breaker = builder(&clock, 2).build().unwrap();
    let statuses = Arc::new(std::sync::Mutex::new(vec![200, 503, 404, 429, 502]));
    let next = statuses.clone();
    let mut service = ServiceBuilder::new()
        .layer(BreakerLayer::new(breaker.clone()).classifier(HttpStatus::new()))
        .service(service_fn(move |(): ()| {
            let status = next.lock().unwrap().remove(0);
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .body(String::new())
                        .unwrap(),
                )
            }
        }));
    for expected in [200, 503, 404, 429] {
        let response = service.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(response.status(), expected);
        assert_eq!(breaker.state(), State::Closed, "after {expected}");
    }
    let _ = service.ready().await.unwrap().call(()).await.unwrap(); // 502: the second after 429
    assert_eq!(breaker.state(), State::Open);
    clock.advance(Duration::from_millis(2_500));
    let response: Response<String> = match service.ready().await.unwrap().call(()).await {
        Err(error) => rejection_response(&error.rejected().expect("a rejection")),
        Ok(response) => panic!("an open breaker answered {}", response.status()),
    };
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    // 7.5 s left, rounded up.
    assert_eq!(response.headers()["retry-after"], "8");
    assert!(statuses.lock().unwrap().is_empty());
    let isolated = rejection_response::<String>(&keel_breaker::Rejected::Isolated);
    assert!(isolated.headers().get("retry-after").is_none());
}

#[cfg(feature = "http")]
#[test]
fn an_upstream_retry_after_holds_the_breaker_open_up_to_the_cap() {
    use http::Response;
    use keel_breaker::HttpStatus;

    let respond = |retry_after: Option<&'static str>| {
        service_fn(move |(): ()| {
            let mut response = Response::builder().status(503);
            if let Some(value) = retry_after {
                response = response.header("retry-after", value);
            }
            std::future::ready(Ok::<_, Infallible>(response.body(()).unwrap()))
        })
    };
    let clock = ManualClock::new();
    for (header, cap, expected) in [
        (
            Some("120"),
            Duration::from_secs(600),
            Duration::from_secs(120),
        ),
        (
            Some("100000"),
            Duration::from_secs(600),
            Duration::from_secs(600),
        ),
        (Some("120"), Duration::ZERO, Duration::from_secs(10)),
        (Some("3"), Duration::from_secs(600), Duration::from_secs(10)), // shorter: ignored
        (
            Some("soon"),
            Duration::from_secs(600),
            Duration::from_secs(10),
        ),
        (None, Duration::from_secs(600), Duration::from_secs(10)),
    ] {
        let breaker = builder(&clock, 1).build().unwrap();
        let mut service = ServiceBuilder::new()
            .layer(
                BreakerLayer::new(breaker.clone())
                    .classifier(HttpStatus::new().retry_after_cap(cap)),
            )
            .service(respond(header));
        assert!(ready(service.call(())).is_ok());
        assert_eq!(breaker.state(), State::Open);
        let rejected = breaker.try_acquire().unwrap_err();
        assert_eq!(
            rejected.retry_after(),
            Some(expected),
            "{header:?} capped at {cap:?}"
        );
        // The opening it holds ends when it says, and the probe closes as usual.
        clock.advance(expected);
        breaker
            .try_acquire()
            .expect("the probe after the wait")
            .success();
        assert_eq!(breaker.state(), State::Closed);
    }
}

/// Sends `GET /` over HTTP/1.1 to `address` and returns the whole response as text.
#[cfg(feature = "http")]
async fn get(address: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.to_ascii_lowercase()
}

#[cfg(feature = "http")]
#[tokio::test(flavor = "current_thread")]
async fn a_real_axum_server_answers_503_with_the_upstream_retry_after() {
    use axum::{Router, body::Body, extract::State as AxumState, routing::get as route};
    use http::Response;
    use keel_breaker::{HttpStatus, rejection_response};
    use tower::util::BoxCloneSyncService;

    type Upstream = BoxCloneSyncService<(), Response<Body>, BreakerError<Infallible>>;

    async fn handler(AxumState(mut upstream): AxumState<Upstream>) -> Response<Body> {
        match upstream.ready().await.unwrap().call(()).await {
            Ok(response) => response,
            Err(error) => rejection_response(&error.rejected().expect("a rejection")),
        }
    }

    let breaker = CircuitBreaker::builder("axum")
        .policy(Policy::consecutive_failures(1))
        .build()
        .unwrap();
    // The upstream is overloaded and says when to come back.
    let client = service_fn(|(): ()| async {
        Ok::<_, Infallible>(
            Response::builder()
                .status(503)
                .header("retry-after", "120")
                .body(Body::empty())
                .unwrap(),
        )
    });
    let upstream: Upstream = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(BreakerLayer::new(breaker.clone()).classifier(HttpStatus::new()))
            .service(client),
    );
    let app = Router::new()
        .route("/", route(handler))
        .with_state(upstream);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let first = get(address).await;
    assert!(first.starts_with("http/1.1 503"), "{first}");
    assert_eq!(breaker.state(), State::Open);
    let second = get(address).await;
    assert!(second.starts_with("http/1.1 503"), "{second}");
    // The rejection's Retry-After is the upstream's 120 s, rounded up; the default clock's
    // coarse reading may make it a tick longer, so 121.
    assert!(
        second.contains("retry-after: 120\r\n") || second.contains("retry-after: 121\r\n"),
        "the breaker did not honour the upstream's Retry-After: {second}"
    );
    server.abort();
}

#[test]
fn a_response_future_polled_after_it_completed_stays_pending_and_records_nothing() {
    let clock = ManualClock::new();
    let breaker = builder(&clock, 1).count_calls().build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let mut service = BreakerService::new(upstream(&calls), breaker.clone());
    let poll = crate::support::poll_once;
    let (mut success, mut failure) = (pin!(service.call(5)), pin!(service.call(0)));
    assert_eq!(poll(success.as_mut()), Poll::Ready(Ok(5)));
    assert!(matches!(
        poll(failure.as_mut()),
        Poll::Ready(Err(BreakerError::Inner("down")))
    ));
    let mut rejected = pin!(service.call(5));
    assert!(matches!(
        poll(rejected.as_mut()),
        Poll::Ready(Err(BreakerError::Open { .. }))
    ));
    let before = breaker.metrics();
    for _ in 0..3 {
        assert!(poll(success.as_mut()).is_pending());
        assert!(poll(failure.as_mut()).is_pending());
        assert!(poll(rejected.as_mut()).is_pending());
    }
    assert_eq!(
        breaker.metrics(),
        before,
        "an extra poll recorded something"
    );
    assert_eq!(
        (before.successes, before.failures, before.rejected_open),
        (1, 1, 1)
    );
    assert_eq!(
        calls.load(Ordering::Relaxed),
        2,
        "an extra poll called the service"
    );
}
