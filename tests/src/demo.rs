//! The resilient-service demo: a simulated service whose upstream fails in bursts.
//!
//! Every request is traced with `correlation` (a JSON start line and end line on the log),
//! upstream calls go through a `breaker`, and answers are cached with a TTL and persisted
//! by a `snapshot` [`Persister`], so a second run starts with the first run's cache.
//!
//! All waiting goes through `tokio::time`, and the breaker's clock reads tokio's clock, so
//! the tests run the whole scenario on paused time in milliseconds while
//! `cargo run --example demo` runs it in real time.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use breaker::{Backoff, BreakerError, CircuitBreaker, Policy, State};
use correlation::{Incoming, Tracer};
use serde::{Deserialize, Serialize};
use snapshot::{CacheEntry, CachePersistence, Persister, RestoreReport, SnapshotError};
use tokio::time::Instant;

/// The flags `cargo run --example demo -- --help` explains.
pub const HELP: &str = "\
Resilient-service demo: a simulated service whose upstream fails in bursts.

Every request is traced (JSON start/end lines with correlation ids on stderr); upstream
calls go through a circuit breaker; answers are cached and saved to a snapshot, so a second
run starts warm. Logs go to stderr, the summary to stdout (try `2>/dev/null`).

USAGE:
    cargo run --example demo -- [FLAGS]

FLAGS:
    --requests N         requests to serve                          [default: 240]
    --interval-ms N      time between requests, milliseconds        [default: 25]
    --failure-rate F     chance a healthy upstream call fails, 0..1 [default: 0.02]
    --outage-start S     seconds until the upstream goes down       [default: 1.5]
    --outage-secs S      how long the outage lasts, seconds         [default: 2.5]
    --seed N             seed for the simulated failures and keys   [default: 7]
    --state-dir PATH     where the cache snapshot is kept           [default: target/demo-state]
    -h, --help           this text

Ctrl-C stops early; the final snapshot is still written.
";

/// How the scenario runs; [`Config::default`] is what the demo does without flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// Requests to serve.
    pub requests: u32,
    /// Time between two requests.
    pub interval: Duration,
    /// Chance that a call to a healthy upstream fails anyway.
    pub failure_rate: f64,
    /// Time from the start until the upstream goes down.
    pub outage_start: Duration,
    /// How long the outage lasts.
    pub outage: Duration,
    /// Seed for the simulated failures and the keys requested.
    pub seed: u64,
    /// Directory of the cache snapshot.
    pub state_dir: PathBuf,
    /// Distinct keys requests ask for.
    pub keys: u64,
    /// How long a cached answer stays fresh.
    pub ttl: Duration,
    /// How often the persister saves the cache.
    pub save_every: Duration,
    /// The breaker's first open time; it doubles with each failed probe, up to 4×.
    pub half_open_after: Duration,
    /// How long one upstream call takes.
    pub upstream_latency: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            requests: 240,
            interval: Duration::from_millis(25),
            failure_rate: 0.02,
            outage_start: Duration::from_millis(1500),
            outage: Duration::from_millis(2500),
            seed: 7,
            state_dir: PathBuf::from("target/demo-state"),
            keys: 16,
            ttl: Duration::from_secs(600),
            save_every: Duration::from_secs(1),
            half_open_after: Duration::from_millis(400),
            upstream_latency: Duration::from_millis(3),
        }
    }
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    /// Run the scenario.
    Run(Config),
    /// Print [`HELP`].
    Help,
}

impl Config {
    /// Parses the demo's flags (without the program name).
    ///
    /// # Errors
    ///
    /// A message naming the flag that is unknown, lacks a value, or has a bad one.
    pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
        let mut config = Config::default();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            if flag == "-h" || flag == "--help" {
                return Ok(Command::Help);
            }
            let value = args
                .next()
                .ok_or_else(|| format!("{flag} needs a value (see --help)"))?;
            let bad = |what: &str| format!("{flag} takes {what}, not `{value}`");
            match flag.as_str() {
                "--requests" => {
                    config.requests = value.parse().map_err(|_| bad("a whole number"))?;
                }
                "--interval-ms" => {
                    config.interval =
                        Duration::from_millis(value.parse().map_err(|_| bad("milliseconds"))?);
                }
                "--failure-rate" => {
                    config.failure_rate = value
                        .parse()
                        .ok()
                        .filter(|rate: &f64| (0.0..=1.0).contains(rate))
                        .ok_or_else(|| bad("a number from 0 to 1"))?;
                }
                "--outage-start" => {
                    config.outage_start = seconds(&value).ok_or_else(|| bad("seconds"))?;
                }
                "--outage-secs" => config.outage = seconds(&value).ok_or_else(|| bad("seconds"))?,
                "--seed" => config.seed = value.parse().map_err(|_| bad("a whole number"))?,
                "--state-dir" => config.state_dir = PathBuf::from(value),
                _ => return Err(format!("unknown flag `{flag}` (see --help)")),
            }
        }
        Ok(Command::Run(config))
    }
}

fn seconds(text: &str) -> Option<Duration> {
    text.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
}

/// The answer the simulated upstream gives for one key, and what the cache keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The key asked for.
    pub key: String,
    /// A made-up payload.
    pub price_cents: u64,
}

/// A breaker state change, when it happened (time since the start of the run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Time since the scenario started.
    pub at: Duration,
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
}

/// What a run did, for the human summary and for the tests.
#[derive(Debug, Clone)]
pub struct Summary {
    /// What the restore at start-up found.
    pub restored: RestoreReport,
    /// Set when the restore failed (the bad file was quarantined; the run starts empty).
    pub restore_error: Option<String>,
    /// Requests served (fewer than configured after Ctrl-C).
    pub requests: u32,
    /// Answered by a successful upstream call.
    pub from_upstream: u32,
    /// Answered from the cache because the breaker refused the call.
    pub from_cache_breaker_open: u32,
    /// Answered from the cache because the upstream call failed.
    pub from_cache_upstream_failed: u32,
    /// Refused fast by the open breaker with nothing cached.
    pub rejected: u32,
    /// The upstream call failed with nothing cached.
    pub failed: u32,
    /// Every breaker state change, in order.
    pub transitions: Vec<Transition>,
    /// The snapshot file.
    pub snapshot_path: PathBuf,
    /// The final save: entries, bytes, time taken.
    pub final_save: snapshot::SaveReport,
    /// Whether Ctrl-C (or the caller's shutdown future) ended the run early.
    pub interrupted: bool,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "== resilient-service demo: summary")?;
        if let Some(error) = &self.restore_error {
            writeln!(
                f,
                "start:    could not restore the snapshot ({error}); started empty"
            )?;
        } else if self.restored.found {
            writeln!(
                f,
                "start:    restored {} entries, {} expired, from the previous run's snapshot",
                self.restored.loaded, self.restored.expired
            )?;
        } else {
            writeln!(
                f,
                "start:    no snapshot yet: the cache starts empty (run again to start warm)"
            )?;
        }
        let interrupted = if self.interrupted {
            " (stopped early by Ctrl-C)"
        } else {
            ""
        };
        writeln!(f, "requests: {}{interrupted}", self.requests)?;
        writeln!(
            f,
            "  served from upstream:                    {}",
            self.from_upstream
        )?;
        writeln!(
            f,
            "  served from cache, breaker open:         {}",
            self.from_cache_breaker_open
        )?;
        writeln!(
            f,
            "  served from cache, upstream call failed: {}",
            self.from_cache_upstream_failed
        )?;
        writeln!(
            f,
            "  rejected fast by the breaker:            {}",
            self.rejected
        )?;
        writeln!(
            f,
            "  failed (upstream error, nothing cached): {}",
            self.failed
        )?;
        writeln!(f, "breaker transitions:")?;
        if self.transitions.is_empty() {
            writeln!(f, "  none: the breaker stayed closed")?;
        }
        for transition in &self.transitions {
            writeln!(
                f,
                "  t+{:>6.3}s  {} -> {}",
                transition.at.as_secs_f64(),
                transition.from,
                transition.to
            )?;
        }
        write!(
            f,
            "snapshot: {} ({} entries, {} bytes, saved in {:.1} ms)",
            self.snapshot_path.display(),
            self.final_save.entries,
            self.final_save.bytes,
            self.final_save.duration.as_secs_f64() * 1000.0
        )
    }
}

/// Why the scenario could not run at all.
#[derive(Debug)]
pub enum DemoError {
    /// The breaker rejected its configuration.
    Breaker(breaker::ConfigError),
    /// The final snapshot could not be written.
    Snapshot(SnapshotError),
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoError::Breaker(error) => write!(f, "invalid breaker configuration: {error}"),
            DemoError::Snapshot(error) => write!(f, "could not write the final snapshot: {error}"),
        }
    }
}

impl std::error::Error for DemoError {}

/// Why the simulated upstream call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpstreamError {
    Unavailable,
    Timeout,
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpstreamError::Unavailable => "upstream answered 503 Service Unavailable",
            UpstreamError::Timeout => "upstream timed out",
        })
    }
}

/// A request the service could not answer; its `Display` is the trace's `error` text.
#[derive(Debug)]
enum RequestError {
    Rejected { retry_after: Duration },
    Failed(UpstreamError),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Rejected { retry_after } => write!(
                f,
                "circuit open: upstream not called, nothing cached; retry after {} ms",
                retry_after.as_millis()
            ),
            RequestError::Failed(error) => write!(f, "{error}; nothing cached"),
        }
    }
}

/// How a request was answered.
#[derive(Debug, Clone, Copy)]
enum Served {
    Upstream,
    CacheBreakerOpen,
    CacheUpstreamFailed,
}

type Cache = Arc<Mutex<HashMap<String, CacheEntry<Item>>>>;

/// The breaker's clock: tokio's, so paused time in tests drives the breaker too.
#[derive(Debug)]
struct TokioClock {
    origin: Instant,
}

impl breaker::Clock for TokioClock {
    fn now_nanos(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A deterministic stream of pseudo-random numbers (`SplitMix64`): the demo needs a seed
/// that reproduces a run, not cryptographic quality.
fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A number in `0.0..1.0` from [`mix`].
#[allow(clippy::cast_precision_loss)] // 53 bits of a 64-bit random number are plenty.
fn unit(seed: u64, index: u64) -> f64 {
    (mix(seed, index) >> 11) as f64 / (1u64 << 53) as f64
}

struct Upstream {
    started: Instant,
    config: Config,
}

impl Upstream {
    fn in_outage(&self) -> bool {
        let elapsed = self.started.elapsed();
        elapsed >= self.config.outage_start
            && elapsed < self.config.outage_start + self.config.outage
    }

    async fn fetch(&self, key: &str, request: u64) -> Result<Item, UpstreamError> {
        tokio::time::sleep(self.config.upstream_latency).await;
        if self.in_outage() {
            return Err(UpstreamError::Unavailable);
        }
        if unit(self.config.seed ^ 0xFA11, request) < self.config.failure_rate {
            return Err(UpstreamError::Timeout);
        }
        Ok(Item {
            key: key.to_string(),
            price_cents: 100 + mix(self.config.seed, request) % 10_000,
        })
    }
}

fn epoch_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// Runs the scenario; `shutdown` ending stops it early (Ctrl-C in the example), after
/// which the final snapshot is still written.
///
/// # Errors
///
/// An invalid breaker configuration, or a final save that failed.
pub async fn run(
    config: Config,
    tracer: Tracer,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, DemoError> {
    let started = Instant::now();
    let persistence = CachePersistence::new(&config.state_dir);
    let (restored, restore_error) = match persistence.restore_async::<Item>().await {
        Ok(restored) => (restored, None),
        // The bad file was quarantined by `restore`; the service starts empty.
        Err(error) => (snapshot::Restored::default(), Some(error.to_string())),
    };
    tracing::info!(
        loaded = restored.report.loaded,
        expired = restored.report.expired,
        path = %persistence.path().display(),
        "restored {} entries, {} expired",
        restored.report.loaded,
        restored.report.expired
    );
    let cache: Cache = Arc::new(Mutex::new(restored.entries));
    let persister = {
        let cache = Arc::clone(&cache);
        Persister::spawn(persistence.clone(), config.save_every, move || {
            cache.lock().unwrap_or_else(PoisonError::into_inner).clone()
        })
    };

    let transitions = Arc::new(Mutex::new(Vec::new()));
    let breaker = {
        let transitions = Arc::clone(&transitions);
        CircuitBreaker::builder("upstream")
            .policy(Policy::consecutive_failures(3))
            .half_open_after(Backoff::exponential(
                config.half_open_after,
                config.half_open_after * 4,
            ))
            .clock(TokioClock { origin: started })
            .on_state_change(move |from, to| {
                let at = started.elapsed();
                transitions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Transition { at, from, to });
            })
            .build()
            .map_err(DemoError::Breaker)?
    };
    let upstream = Upstream {
        started,
        config: config.clone(),
    };

    let mut tally = Tally::default();
    let mut interrupted = false;
    tokio::pin!(shutdown);
    for request in 0..config.requests {
        let due = started + config.interval * request;
        tokio::select! {
            biased;
            () = &mut shutdown => {
                interrupted = true;
                break;
            }
            () = tokio::time::sleep_until(due) => {}
        }
        let request = u64::from(request);
        let outcome = handle(&tracer, &breaker, &upstream, &cache, &config, request).await;
        tally.count(&outcome);
    }

    let final_save = persister.shutdown().await.map_err(DemoError::Snapshot)?;
    let transitions = transitions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Ok(Summary {
        restored: restored.report,
        restore_error,
        requests: tally.requests,
        from_upstream: tally.from_upstream,
        from_cache_breaker_open: tally.from_cache_breaker_open,
        from_cache_upstream_failed: tally.from_cache_upstream_failed,
        rejected: tally.rejected,
        failed: tally.failed,
        transitions,
        snapshot_path: persistence.path().to_path_buf(),
        final_save,
        interrupted,
    })
}

/// Counts of how requests were answered.
#[derive(Debug, Default)]
struct Tally {
    requests: u32,
    from_upstream: u32,
    from_cache_breaker_open: u32,
    from_cache_upstream_failed: u32,
    rejected: u32,
    failed: u32,
}

impl Tally {
    fn count(&mut self, outcome: &Result<Served, RequestError>) {
        self.requests += 1;
        let counter = match outcome {
            Ok(Served::Upstream) => &mut self.from_upstream,
            Ok(Served::CacheBreakerOpen) => &mut self.from_cache_breaker_open,
            Ok(Served::CacheUpstreamFailed) => &mut self.from_cache_upstream_failed,
            Err(RequestError::Rejected { .. }) => &mut self.rejected,
            Err(RequestError::Failed(_)) => &mut self.failed,
        };
        *counter += 1;
    }
}

/// Serves one request inside its own trace. Every fourth request arrives with a W3C
/// `traceparent` from a simulated gateway, and the trace continues it.
async fn handle(
    tracer: &Tracer,
    breaker: &CircuitBreaker,
    upstream: &Upstream,
    cache: &Cache,
    config: &Config,
    request: u64,
) -> Result<Served, RequestError> {
    let key = format!("item-{}", mix(config.seed, request) % config.keys.max(1));
    let mut headers = Vec::new();
    if request.is_multiple_of(4) {
        let trace_id = mix(config.seed, request) | 1;
        let parent_id = mix(config.seed ^ 0x9A7E, request) | 1;
        headers.push((
            "traceparent".to_string(),
            format!("00-{trace_id:016x}{trace_id:016x}-{parent_id:016x}-01"),
        ));
    }
    let incoming = Incoming::from_headers(headers);
    let operation = format!("GET /items/{key}");
    tracer
        .continue_trace(incoming, operation, async {
            let fetched = breaker
                .execute(|| {
                    correlation::start_trace("upstream.fetch", upstream.fetch(&key, request))
                })
                .await;
            let now = epoch_millis(SystemTime::now());
            let cached = || {
                let cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
                cache
                    .get(&key)
                    .is_some_and(|entry| !entry.is_expired_at(now))
            };
            match fetched {
                Ok(item) => {
                    let ttl = u64::try_from(config.ttl.as_millis()).unwrap_or(u64::MAX);
                    let entry = CacheEntry::new(item).expiring_at(now.saturating_add(ttl));
                    cache
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(key.clone(), entry);
                    Ok(Served::Upstream)
                }
                Err(BreakerError::Inner(_)) if cached() => Ok(Served::CacheUpstreamFailed),
                Err(BreakerError::Inner(error)) => Err(RequestError::Failed(error)),
                Err(_) if cached() => Ok(Served::CacheBreakerOpen),
                // Open or half-open with every probe slot taken: wait as told; isolated:
                // no deadline to tell.
                Err(rejected) => Err(RequestError::Rejected {
                    retry_after: rejected.retry_after().unwrap_or(Duration::ZERO),
                }),
            }
        })
        .await
}
