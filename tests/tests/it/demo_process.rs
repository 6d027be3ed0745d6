//! The demo binary as a child process: its stderr is JSON lines in one schema, and SIGTERM
//! in the middle of the load still ends in a graceful shutdown with a final snapshot.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::loopback::{check_log_schema, get};

#[tokio::test]
async fn sigterm_mid_run_shuts_down_gracefully_and_writes_the_final_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    // A long run (the load would take 100 s) whose periodic save never comes (1000 s), so
    // the snapshot on disk afterwards can only be the final one.
    let mut child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--requests", "10000", "--interval-ms", "10"])
        .args(["--outage-start", "0.3", "--outage-secs", "0.3"])
        .args(["--save-secs", "1000", "--state-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first_line = String::new();
    stdout.read_line(&mut first_line).unwrap();
    let address: SocketAddr = first_line
        .trim()
        .strip_prefix("service listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {first_line}"))
        .parse()
        .unwrap();
    // Stderr is read on a thread, so the child never blocks on a full pipe.
    let mut stderr = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });

    // Wait (bounded, 5 ms polls) until the service has cached a few answers.
    let mut cached = 0;
    for _ in 0..4000 {
        let (_, _, body) = get(address, "/health").await;
        let health: Value = serde_json::from_str(&body).unwrap();
        assert!(
            health["last_snapshot"].is_null(),
            "no periodic save yet: {health}"
        );
        cached = health["cache"]["entries"].as_u64().unwrap();
        if cached >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(cached >= 5, "the service never cached anything");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful exit after SIGTERM: {status:?}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("(stopped by a signal)"), "{rest}");

    let restored = keel_snapshot::CachePersistence::new(dir.path())
        .restore::<integration::upstream::Item>()
        .unwrap();
    assert!(restored.report.found, "the final snapshot was written");
    assert!(
        restored.report.loaded >= cached,
        "every answer cached before SIGTERM was saved: {} < {cached}",
        restored.report.loaded
    );

    let stderr = stderr_reader.join().unwrap();
    let lines: Vec<String> = stderr.lines().map(str::to_string).collect();
    assert!(!lines.is_empty());
    check_log_schema(&lines);
}

#[tokio::test]
async fn serve_prints_a_ready_curl_line_that_works_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--serve", "--requests", "20", "--interval-ms", "1"])
        // Healthy and never unlucky, so the hand-made request is answered by the upstream.
        .args([
            "--outage-start",
            "1000",
            "--failure-rate",
            "0",
            "--state-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut listening = String::new();
    stdout.read_line(&mut listening).unwrap();
    let mut curl = String::new();
    stdout.read_line(&mut curl).unwrap();
    let address: SocketAddr = listening
        .trim()
        .strip_prefix("service listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {listening}"))
        .parse()
        .unwrap();
    // The printed command, run by hand: `curl -si http://ADDR/items/item-3 -H 'x-request-id: hello'`.
    let url = format!("http://{address}/items/item-3");
    assert!(
        curl.contains(&format!("curl -si {url} -H 'x-request-id: hello'")),
        "{curl}"
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<axum::body::Body>();
    let request = http::Request::get(url)
        .header("x-request-id", "hello")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "hello");
    assert_eq!(response.headers()["x-served-by"], "upstream");
    // Every other printed `curl` line (until the line saying how to stop) names a URL of
    // this service that answers.
    let mut printed = Vec::new();
    loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "{printed:?}");
        if line.contains("Ctrl-C") {
            break;
        }
        printed.push(line);
    }
    assert!(printed.len() >= 2, "{printed:?}");
    for line in &printed {
        let url = line
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL: {line}"));
        let path = url
            .strip_prefix(&format!("http://{address}"))
            .unwrap_or_else(|| panic!("not this service: {line}"));
        let (status, _, body) = get(address, path).await;
        assert_eq!(status, 200, "{line}: {body}");
    }
    // In a process of its own, `/metrics` has the breaker's figures and the demo's: nothing
    // registered before the recorder was installed.
    let (status, _, metrics) = get(address, "/metrics").await;
    assert_eq!(status, 200);
    for sample in [
        r#"breaker_calls_total{breaker="upstream",outcome="success"}"#,
        r#"breaker_state{breaker="upstream"} 0"#,
        r#"demo_requests_total{answered="upstream"}"#,
        r#"demo_traces_total{outcome="success"}"#,
    ] {
        assert!(metrics.contains(sample), "{sample} missing:\n{metrics}");
    }

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(child.wait().unwrap().success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(
        rest.contains("== resilient-service demo: summary"),
        "{rest}"
    );
    assert!(
        keel_snapshot::CachePersistence::new(dir.path()).exists(),
        "the final snapshot was written"
    );
}
