//! Runs the demo in-process (routers called as tower services, no sockets) on paused time
//! and checks what it reports and logs: the logic, fast and deterministic.

use std::{
    collections::HashMap,
    io::Write,
    sync::{Arc, Mutex},
};

use integration::demo::{self, Config, Summary};
use keel_breaker::State;
use serde_json::Value;
use tracing_subscriber::prelude::*;

/// Collects everything written to it: the JSON lines of `correlation` and of `tracing`.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub(crate) fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Runs the scenario with the logs captured the way the example writes them to stderr.
async fn run(config: Config) -> (Summary, Vec<String>) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::registry()
        .with(keel_correlation::json_layer().with_writer(move || writer.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);
    let tracer = keel_correlation::Tracer::writer(captured.clone());
    let summary = demo::run(config, tracer, std::future::pending(), |_| {})
        .await
        .unwrap();
    (summary, captured.lines())
}

/// The counts of a summary, short enough for a failure message.
fn counts(summary: &Summary) -> String {
    format!(
        "requests {} upstream {} cache(open) {} cache(failed) {} rejected {} failed {} transitions {:?}",
        summary.requests,
        summary.from_upstream,
        summary.from_cache_breaker_open,
        summary.from_cache_upstream_failed,
        summary.rejected,
        summary.failed,
        summary
            .transitions
            .iter()
            .map(|t| (t.at, t.to))
            .collect::<Vec<_>>()
    )
}

fn config(state_dir: &std::path::Path) -> Config {
    Config {
        state_dir: state_dir.to_path_buf(),
        transport: demo::Transport::InProcess,
        ..Config::default()
    }
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_during_the_outage_and_closes_after_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, _) = run(config(dir.path())).await;

    let transitions: Vec<(State, State)> =
        summary.transitions.iter().map(|t| (t.from, t.to)).collect();
    let first_open = transitions
        .iter()
        .position(|&(from, to)| (from, to) == (State::Closed, State::Open))
        .unwrap_or_else(|| panic!("the breaker never opened: {transitions:?}"));
    let defaults = Config::default();
    assert!(
        summary.transitions[first_open].at >= defaults.outage_start,
        "it opened before the outage: {:?}",
        summary.transitions
    );
    assert!(
        transitions[first_open..].contains(&(State::Open, State::HalfOpen)),
        "{transitions:?}"
    );
    assert_eq!(
        transitions.last().map(|&(_, to)| to),
        Some(State::Closed),
        "the breaker must end closed after recovery: {transitions:?}"
    );
    let closed_at = summary.transitions.last().unwrap().at;
    assert!(
        closed_at >= defaults.outage_start + defaults.outage,
        "closed during the outage: {closed_at:?}"
    );
    assert!(summary.from_upstream > 0);
    assert!(
        summary.from_cache_breaker_open + summary.rejected > 0,
        "while open, requests are answered from cache or rejected fast: {}",
        counts(&summary)
    );
    assert_eq!(
        summary.requests,
        summary.from_upstream
            + summary.from_cache_breaker_open
            + summary.from_cache_upstream_failed
            + summary.rejected
            + summary.failed
    );
    assert_eq!(summary.requests, defaults.requests);
}

#[tokio::test(start_paused = true)]
async fn every_log_line_is_json_and_every_start_has_one_end() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, lines) = run(config(dir.path())).await;
    assert!(
        lines.len() > summary.requests as usize * 2,
        "too few lines: {}",
        lines.len()
    );

    let mut open: HashMap<(String, String), usize> = HashMap::new();
    let mut ends = 0;
    let mut transition_lines = 0;
    for line in &lines {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let text = |field: &str| value[field].as_str().unwrap_or_default().to_string();
        match value["event"].as_str() {
            Some("trace.start") => {
                *open
                    .entry((text("correlation_id"), text("span_id")))
                    .or_default() += 1;
            }
            Some("trace.end") => {
                let key = (text("correlation_id"), text("span_id"));
                let starts = open
                    .get_mut(&key)
                    .unwrap_or_else(|| panic!("end without a start: {line}"));
                assert_eq!(*starts, 1, "one start per span: {line}");
                *starts = 0;
                ends += 1;
                assert!(value["duration_ms"].is_number(), "{line}");
                assert!(value["outcome"].is_string(), "{line}");
            }
            _ => {
                // A `tracing` event (`json_layer` writes its fields at the top level); the
                // breaker's transitions read like the original service's.
                let message = value["message"].as_str().unwrap_or_default();
                if message.starts_with("[CircuitBreaker:upstream] State: ") {
                    transition_lines += 1;
                    assert!(
                        value["correlation_id"].is_string(),
                        "a transition inside a request carries its correlation id: {line}"
                    );
                }
            }
        }
    }
    let unfinished: Vec<_> = open.iter().filter(|(_, starts)| **starts != 0).collect();
    assert!(
        unfinished.is_empty(),
        "starts without an end: {unfinished:?}"
    );
    assert!(ends >= summary.requests as usize, "each request is a trace");
    assert_eq!(
        transition_lines,
        summary.transitions.len(),
        "one log line per transition"
    );
}

#[tokio::test(start_paused = true)]
async fn second_run_restores_the_first_runs_cache_and_serves_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = run(config(dir.path())).await;
    assert!(!first.restored.found, "the first run starts cold");
    assert!(first.final_save.entries > 0);

    let (second, _) = run(config(dir.path())).await;
    assert!(second.restored.found);
    assert_eq!(
        second.restored.loaded, first.final_save.entries,
        "every saved entry comes back"
    );
    assert_eq!(second.restored.expired, 0);
    assert!(
        second.from_cache_breaker_open > first.from_cache_breaker_open,
        "a warm cache answers more requests during the outage: first {}, second {}",
        counts(&first),
        counts(&second)
    );
    assert!(
        second.rejected < first.rejected,
        "keys the first run cached are not rejected again: first {}, second {}",
        counts(&first),
        counts(&second)
    );
}

#[test]
fn flags_parse_and_bad_ones_are_named() {
    let args = |list: &[&str]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
    match Config::parse_args(args(&[
        "--requests",
        "10",
        "--outage-secs",
        "0.5",
        "--seed",
        "3",
    ])) {
        Ok(demo::Command::Run(config)) => {
            assert_eq!(config.requests, 10);
            assert_eq!(config.outage, std::time::Duration::from_millis(500));
            assert_eq!(config.seed, 3);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Config::parse_args(args(&["--help"])),
        Ok(demo::Command::Help)
    ));
    let error = Config::parse_args(args(&["--failure-rate", "2"])).unwrap_err();
    assert!(error.contains("--failure-rate"), "{error}");
    let error = Config::parse_args(args(&["--requests"])).unwrap_err();
    assert!(error.contains("needs a value"), "{error}");
    assert!(
        Config::parse_args(args(&["--bogus", "1"]))
            .unwrap_err()
            .contains("unknown flag")
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_midway_still_writes_the_final_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let captured = Captured::default();
    let tracer = keel_correlation::Tracer::writer(captured);
    // The example passes Ctrl-C here; any future that completes stops the run the same way.
    let stop = tokio::time::sleep(std::time::Duration::from_millis(500));
    let summary = demo::run(config(dir.path()), tracer, stop, |_| {})
        .await
        .unwrap();

    assert!(summary.interrupted);
    assert!(
        summary.requests > 0 && summary.requests < Config::default().requests,
        "{}",
        counts(&summary)
    );
    assert!(
        summary.final_save.entries > 0,
        "the final save ran: {}",
        counts(&summary)
    );
    let restored = keel_snapshot::CachePersistence::new(dir.path())
        .restore::<integration::upstream::Item>()
        .unwrap();
    assert_eq!(restored.report.loaded, summary.final_save.entries);
}
