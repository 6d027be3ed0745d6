//! The real stack on 127.0.0.1 for a few seconds, asserted through real HTTP: the breaker
//! opens during the outage and closes after it, `/health` and `/metrics` say so, the logs
//! are one JSON schema with every start ended once, and the upstream received `traceparent`
//! headers continuing the callers' traces with one service span per call.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use integration::{
    demo::{self, Config, Summary, Transport},
    load::Sent,
    service::Answered,
};
use keel_breaker::State;
use serde_json::Value;
use tracing_subscriber::prelude::*;

use crate::demo_scenario::Captured;

/// A short, real-time run: 1.5 s of load with a 0.6 s outage starting at 0.4 s.
pub(crate) fn short_config(state_dir: &std::path::Path, breaker_name: &str) -> Config {
    Config {
        requests: 150,
        interval: Duration::from_millis(10),
        failure_rate: 0.0,
        outage_start: Duration::from_millis(400),
        outage: Duration::from_millis(600),
        state_dir: state_dir.to_path_buf(),
        keys: 24,
        save_every: Duration::from_millis(200),
        half_open_after: Duration::from_millis(100),
        upstream_timeout: Duration::from_millis(100),
        transport: Transport::Loopback,
        breaker_name: breaker_name.to_string(),
        ..Config::default()
    }
}

/// One GET over real HTTP: status, headers, body.
pub(crate) async fn get(address: SocketAddr, path: &str) -> (u16, http::HeaderMap, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let request = Request::get(format!("http://{address}{path}"))
        .body(Body::empty())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

/// What a watcher saw over HTTP while the run went on.
#[derive(Debug, Default)]
struct Watched {
    states: Vec<String>,
    final_health: Value,
    metrics: String,
}

/// Runs `config` on loopback in `--serve` mode; a watcher polls `/health` (a few ms apart)
/// until the load is done and the breaker closed, reads `/health` and `/metrics` once more,
/// then shuts it down.
async fn run_watched(config: Config) -> (Summary, Watched, Vec<String>) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::registry()
        .with(keel_correlation::json_layer().with_writer(move || writer.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);
    let tracer = keel_correlation::Tracer::writer(captured.clone());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = Config {
        serve: true,
        ..config
    };
    let run = demo::run(
        config,
        tracer,
        async {
            let _ = stop_rx.await;
        },
        move |ready| {
            let _ = ready_tx.send(ready.service.unwrap());
        },
    );
    let watch = async move {
        let address = ready_rx.await.unwrap();
        let mut watched = Watched::default();
        // Bounded: 20 s of 5 ms polls, far more than the 1.5 s of load.
        for _ in 0..4000 {
            let (status, _, body) = get(address, "/health").await;
            assert_eq!(status, 200, "{body}");
            let health: Value = serde_json::from_str(&body).unwrap();
            watched
                .states
                .push(health["breaker"]["state"].as_str().unwrap().to_string());
            if health["load"]["done"] == true {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // On a loaded machine the load may end before the breaker's last open period does
        // (the schedule is in real time): then keep asking, as a caller would, until a probe
        // has closed it. Bounded: 4000 requests, 5 ms apart; the outcome is waited for,
        // never a time.
        for _ in 0..4000 {
            let (_, _, body) = get(address, "/health").await;
            let health: Value = serde_json::from_str(&body).unwrap();
            if health["breaker"]["state"] == "closed" {
                break;
            }
            get(address, "/items/item-0").await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (_, _, body) = get(address, "/health").await;
        watched.final_health = serde_json::from_str(&body).unwrap();
        let (status, headers, metrics) = get(address, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain"),
            "{headers:?}"
        );
        watched.metrics = metrics;
        let _ = stop_tx.send(());
        watched
    };
    let (summary, watched) = tokio::join!(run, watch);
    (summary.unwrap(), watched, captured.lines())
}

/// The value of the sample of metric `name` (exactly that name, not a longer one) whose
/// labels include `labels`.
fn metric_value(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
                && labels.iter().all(|label| line.contains(label))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// Every line is a JSON object with the schema's common fields; every `trace.start` has
/// exactly one `trace.end`; lines inside a request carry its correlation id.
pub(crate) fn check_log_schema(lines: &[String]) -> Vec<Value> {
    let mut values = Vec::new();
    let mut open: HashMap<(String, String), u32> = HashMap::new();
    for line in lines {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value["timestamp"].is_string(), "no timestamp: {line}");
        assert!(value["level"].is_string(), "no level: {line}");
        let text = |field: &str| value[field].as_str().unwrap_or_default().to_string();
        match value["event"].as_str() {
            Some("trace.start") => {
                *open
                    .entry((text("correlation_id"), text("span_id")))
                    .or_default() += 1;
            }
            Some("trace.end") => {
                let starts = open
                    .get_mut(&(text("correlation_id"), text("span_id")))
                    .unwrap_or_else(|| panic!("end without a start: {line}"));
                assert_eq!(*starts, 1, "one end per start: {line}");
                *starts = 0;
                assert!(value["outcome"].is_string(), "{line}");
            }
            Some(other) => panic!("an event outside the schema: {other}: {line}"),
            None => {
                assert!(value["target"].is_string(), "{line}");
                assert!(value.get("fields").is_none(), "flat, not nested: {line}");
                // The handlers' own events happen inside a request: they carry its ids.
                if value["target"] == "integration::service" {
                    assert!(value["correlation_id"].is_string(), "{line}");
                    assert!(value["trace_id"].is_string(), "{line}");
                }
            }
        }
        values.push(value);
    }
    let unfinished: Vec<_> = open.iter().filter(|(_, starts)| **starts != 0).collect();
    assert!(
        unfinished.is_empty(),
        "starts without an end: {unfinished:?}"
    );
    values
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // One scenario, asserted step by step.
async fn real_stack_opens_during_the_outage_probes_closes_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, watched, lines) = run_watched(short_config(dir.path(), "loopback")).await;

    // The breaker opened, probed and closed.
    let transitions: Vec<(State, State)> =
        summary.transitions.iter().map(|t| (t.from, t.to)).collect();
    assert!(
        transitions.contains(&(State::Closed, State::Open)),
        "{transitions:?}"
    );
    assert!(
        transitions.contains(&(State::Open, State::HalfOpen)),
        "{transitions:?}"
    );
    assert_eq!(
        transitions.last().map(|&(_, to)| to),
        Some(State::Closed),
        "{transitions:?}"
    );

    // While open, answers came from the cache (saying so) or were 503 + Retry-After.
    let while_open: Vec<_> = summary
        .sent
        .iter()
        .filter(|sent| {
            matches!(
                sent.answered,
                Some(Answered::Rejected | Answered::CacheBreakerOpen)
            )
        })
        .collect();
    assert!(
        !while_open.is_empty(),
        "nothing was answered by the open breaker"
    );
    for sent in &while_open {
        match sent.answered {
            Some(Answered::Rejected) => {
                assert_eq!(sent.status, Some(503), "{sent:?}");
                let seconds: u64 = sent.retry_after.as_deref().unwrap().parse().unwrap();
                assert!(seconds >= 1, "{sent:?}");
            }
            _ => assert_eq!(sent.status, Some(200), "{sent:?}"),
        }
    }
    assert_eq!(
        summary.requests as usize,
        summary.sent.len(),
        "every request got an HTTP answer"
    );

    // `/health` showed the breaker open during the run and closed at the end.
    assert!(
        watched.states.iter().any(|state| state == "open"),
        "{:?}",
        watched.states
    );
    let health = &watched.final_health;
    assert_eq!(health["breaker"]["state"], "closed", "{health}");
    assert!(
        health["breaker"]["since_unix_ms"].as_u64().unwrap() > 0,
        "{health}"
    );
    assert!(health["cache"]["entries"].as_u64().unwrap() > 0, "{health}");
    assert!(
        health["last_snapshot"]["entries"].as_u64().unwrap() > 0,
        "{health}"
    );
    assert!(health["last_snapshot"]["age_secs"].is_number(), "{health}");

    // `/metrics` is the exporter's Prometheus text, with the breaker's, the snapshot's and
    // the traces' figures.
    let metrics = &watched.metrics;
    let name = r#"breaker="loopback""#;
    assert_eq!(
        metric_value(metrics, "breaker_state", &[name]),
        Some(0.0),
        "closed at the end:\n{metrics}"
    );
    assert!(
        metric_value(
            metrics,
            "breaker_rejections_total",
            &[name, r#"reason="open""#]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    assert!(
        metric_value(
            metrics,
            "breaker_calls_total",
            &[name, r#"outcome="failure""#]
        )
        .unwrap_or(0.0)
            >= 3.0,
        "{metrics}"
    );
    assert!(
        metric_value(
            metrics,
            "breaker_transitions_total",
            &[name, r#"to="open""#]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    for family in [
        "snapshot_bytes_written_total",
        "snapshot_save_duration_seconds",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    // The demo's own counters are process-wide (other tests in this binary add to them
    // too), so each is at least what this run counted.
    let at_least = |name: &str, label: &str, count: u32| {
        let value = metric_value(metrics, name, &[label]).unwrap_or(0.0);
        assert!(
            value >= f64::from(count),
            "{name}{{{label}}} is {value}, this run alone counted {count}:\n{metrics}"
        );
    };
    at_least("snapshot_saves_total", r#"result="ok""#, 1);
    at_least(
        "demo_requests_total",
        r#"answered="upstream""#,
        summary.from_upstream,
    );
    at_least(
        "demo_requests_total",
        r#"answered="cache""#,
        summary.from_cache_breaker_open + summary.from_cache_upstream_failed,
    );
    at_least(
        "demo_requests_total",
        r#"answered="rejected""#,
        summary.rejected,
    );
    at_least(
        "demo_requests_total",
        r#"answered="failed""#,
        summary.failed,
    );
    at_least(
        "demo_traces_total",
        r#"outcome="success""#,
        summary.requests - summary.rejected - summary.failed,
    );
    at_least(
        "demo_traces_total",
        r#"outcome="error""#,
        summary.rejected + summary.failed,
    );

    // One schema, every start ended once.
    let values = check_log_schema(&lines);

    // Propagation: a caller's trace id reached the upstream, and each upstream call's
    // parent-id is a client span the service opened for that call alone.
    let client_spans: HashMap<String, String> = values
        .iter()
        .filter(|value| value["event"] == "trace.start")
        .filter(|value| {
            value["operation"]
                .as_str()
                .unwrap()
                .starts_with("GET upstream ")
        })
        .map(|value| {
            (
                value["span_id"].as_str().unwrap().to_string(),
                value["trace_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut parents = HashSet::new();
    let mut upstream_trace_ids = HashSet::new();
    for call in &summary.upstream_calls {
        let traceparent = call.traceparent.as_deref().expect("every call carries one");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        let (trace_id, parent_id) = (parts[1], parts[2]);
        assert_eq!(
            client_spans.get(parent_id).map(String::as_str),
            Some(trace_id),
            "the parent-id of {traceparent} is a client span of the same trace"
        );
        assert!(
            parents.insert(parent_id.to_string()),
            "a parent-id used for two calls: {traceparent}"
        );
        upstream_trace_ids.insert(trace_id.to_string());
    }
    let continued: Vec<_> = summary
        .sent
        .iter()
        .filter(|sent| sent.traceparent.is_some() && sent.answered == Some(Answered::Upstream))
        .collect();
    assert!(!continued.is_empty());
    for sent in continued {
        let sent_trace_id = sent
            .traceparent
            .as_deref()
            .unwrap()
            .split('-')
            .nth(1)
            .unwrap();
        assert!(
            upstream_trace_ids.contains(sent_trace_id),
            "the caller's trace id {sent_trace_id} never reached the upstream"
        );
    }

    // Ids: an `x-request-id` comes back as sent; a hostile one is never trusted.
    for sent in &summary.sent {
        if let Some(id) = &sent.request_id {
            assert_eq!(sent.echoed_request_id.as_ref(), Some(id), "{sent:?}");
        }
    }
    let hostile: Vec<&Sent> = summary.sent.iter().filter(|sent| sent.hostile).collect();
    assert!(hostile.len() >= 4, "every kind of hostile header was sent");
    for value in &values {
        let correlation_id = value["correlation_id"].as_str().unwrap_or_default();
        let trace_id = value["trace_id"].as_str().unwrap_or_default();
        assert!(
            !correlation_id.starts_with("evil"),
            "a JSON-breaking id became a correlation id: {value}"
        );
        assert!(
            correlation_id.len() < 4096,
            "a 4 KiB id became a correlation id"
        );
        assert_ne!(
            trace_id, "00000000000000000000000000000000",
            "an all-zero trace id was continued: {value}"
        );
        assert!(
            !trace_id.eq_ignore_ascii_case("4bf92f3577b34da6a3ce929d0e0e4736"),
            "an upper-case traceparent was continued: {value}"
        );
    }
}

#[tokio::test]
async fn a_second_loopback_run_restores_the_first_runs_cache_and_serves_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config {
        serve: false,
        ..short_config(dir.path(), "loopback-restart")
    };
    let tracer = || keel_correlation::Tracer::off();
    let first = demo::run(config(), tracer(), std::future::pending(), |_| {})
        .await
        .unwrap();
    assert!(!first.restored.found);
    assert!(first.final_save.entries > 0);
    let second = demo::run(config(), tracer(), std::future::pending(), |_| {})
        .await
        .unwrap();
    assert!(second.restored.found);
    assert_eq!(second.restored.loaded, first.final_save.entries);
    assert!(
        second.from_cache_breaker_open > 0,
        "the restored cache answers during the outage"
    );
}

/// Every byte but ASCII letters and digits as `%XX`: how a careful client sends a key.
fn encode_every_byte(key: &str) -> String {
    key.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn item_keys_reach_the_upstream_intact_whatever_characters_they_hold() {
    // Each key would change or break the upstream request if it went into the URI as it
    // is: a query, a fragment, another path segment, an escape, bytes a URI cannot hold.
    let keys = [
        "a?b=c",
        "a#frag",
        "a/b",
        "100%",
        "%41",
        "%zz",
        "a b",
        "a+b",
        "tab\there",
        "ü-ñ",
        "日本",
        ".",
        "..",
        "a;b",
        "a&b",
        "'\"<>`{}|\\^",
    ];
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        requests: 0,
        serve: true,
        // Healthy all along, however slowly the machine runs.
        outage_start: Duration::from_secs(1_000_000),
        ..short_config(dir.path(), "loopback-keys")
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = demo::run(
        config,
        keel_correlation::Tracer::off(),
        async {
            let _ = stop_rx.await;
        },
        move |ready| {
            let _ = ready_tx.send(ready.service.unwrap());
        },
    );
    let ask = async move {
        let address = ready_rx.await.unwrap();
        let mut answers = Vec::new();
        for key in keys {
            let path = format!("/items/{}", encode_every_byte(key));
            answers.push((key, get(address, &path).await));
        }
        let _ = stop_tx.send(());
        answers
    };
    let (summary, answers) = tokio::join!(run, ask);
    let summary = summary.unwrap();
    // Every wrong answer at once, so a failure names each key it mishandles.
    let wrong: Vec<String> = answers
        .iter()
        .filter(|(key, (status, headers, body))| {
            let served_by = headers.get("x-served-by").map(http::HeaderValue::as_bytes);
            let item: Option<Value> = serde_json::from_str(body).ok();
            *status != 200
                || served_by != Some(b"upstream".as_slice())
                || item.is_none_or(|item| item["key"] != *key)
        })
        .map(|(key, (status, _, body))| format!("{key:?}: {status} {}", body.trim()))
        .collect();
    assert!(wrong.is_empty(), "keys answered wrongly: {wrong:#?}");
    let received: Vec<&str> = summary
        .upstream_calls
        .iter()
        .map(|call| call.path.as_str())
        .collect();
    let expected: Vec<String> = keys.iter().map(|key| format!("/items/{key}")).collect();
    assert_eq!(
        received, expected,
        "one upstream call per key, each for that key"
    );
}
