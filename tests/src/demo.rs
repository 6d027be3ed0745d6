//! The resilient-service demo: a real HTTP service on loopback whose upstream fails in bursts.
//!
//! [`run`] starts two axum servers on 127.0.0.1 (ports the OS assigns): the upstream
//! ([`crate::upstream`]), which is healthy, then hangs or answers `503` during an outage, then
//! recovers; and the service ([`crate::service`]), which calls it through the crates' layers
//! and keeps a moka cache that the `keel-snapshot` crate saves periodically and restores at start.
//! A built-in load generator ([`crate::load`]) sends it real HTTP requests. The run ends
//! with a [`Summary`] and a [timeline](crate::timeline).
//!
//! All waiting goes through `tokio::time` and the breaker's clock reads tokio's clock, so
//! with [`Transport::InProcess`] (the routers called as tower services, no sockets) the tests
//! run the whole scenario on paused time in milliseconds, through the same code.

use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use axum::body::Body;
use http::{Request, Response};
use hyper_util::{client::legacy::Client as HyperClient, rt::TokioExecutor};
use keel_breaker::{Backoff, CircuitBreaker, Policy, State};
use keel_correlation::Tracer;
use keel_snapshot::{
    CachePersistence, Changes, Persister, RestoreReport, SnapshotError, moka::ExpiresAt,
};
use tokio::time::Instant;
use tower::{ServiceExt, util::BoxCloneSyncService};

use crate::{
    load::{self, HttpService, Schedule, Sent},
    service::{self, Answered, AppState, BoxError, Cache, LastSave, LoadProgress},
    upstream::{self, Received, Shape},
};

/// The flags `cargo run --example demo -- --help` explains.
pub const HELP: &str = "\
Resilient-service demo: a real HTTP service on 127.0.0.1 whose upstream fails in bursts.

Starts an upstream HTTP server (healthy, then an outage of hangs and 503s, then recovered)
and an axum service that calls it through a circuit breaker, traces every request (JSON
lines with correlation ids on stderr), answers from a moka cache while the breaker is open,
and saves that cache to a snapshot, so a second run starts warm. A built-in load generator
sends real HTTP requests. Logs go to stderr, the summary and timeline to stdout
(try `2>/dev/null`).

USAGE:
    cargo run --example demo -- [FLAGS]

FLAGS:
    --requests N         requests to send                           [default: 400]
    --interval-ms N      time between requests, milliseconds        [default: 25]
    --failure-rate F     chance a healthy upstream call fails, 0..1 [default: 0.02]
    --outage-start S     seconds until the upstream goes down       [default: 3]
    --outage-secs S      how long the outage lasts, seconds         [default: 3.5]
    --seed N             seed for the upstream's failures and keys  [default: 7]
    --state-dir PATH     where the cache snapshot is kept           [default: target/demo-state]
    --save-secs S        seconds between periodic snapshot saves    [default: 1]
    --serve              keep serving after the load ends, until Ctrl-C or SIGTERM
    -h, --help           this text

The service answers GET /items/{key}, GET /health (JSON) and GET /metrics (Prometheus).
Ctrl-C or SIGTERM shuts down gracefully; the final snapshot is still written.
";

/// How the service and the load generator talk to each other and to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Real HTTP on 127.0.0.1, ports assigned by the OS: what the demo does.
    Loopback,
    /// The routers called directly as tower services, no sockets: for paused-time tests.
    InProcess,
}

/// How the scenario runs; [`Config::default`] is what the demo does without flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// Requests to send.
    pub requests: u32,
    /// Time between two requests.
    pub interval: Duration,
    /// Chance that a call to a healthy upstream fails anyway.
    pub failure_rate: f64,
    /// Time from the start until the upstream goes down.
    pub outage_start: Duration,
    /// How long the outage lasts.
    pub outage: Duration,
    /// Seed for the upstream's failures and the keys requested.
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
    /// How long one healthy upstream call takes.
    pub upstream_latency: Duration,
    /// The client's timeout for one upstream call (a hanging upstream hits it).
    pub upstream_timeout: Duration,
    /// Keep serving after the load ends, until the shutdown future completes.
    pub serve: bool,
    /// Sockets or in-process calls.
    pub transport: Transport,
    /// The breaker's name: its log lines and metric labels.
    pub breaker_name: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            requests: 400,
            interval: Duration::from_millis(25),
            failure_rate: 0.02,
            outage_start: Duration::from_secs(3),
            outage: Duration::from_millis(3500),
            seed: 7,
            state_dir: PathBuf::from("target/demo-state"),
            keys: 64,
            ttl: Duration::from_secs(600),
            save_every: Duration::from_secs(1),
            half_open_after: Duration::from_millis(400),
            upstream_latency: Duration::from_millis(3),
            upstream_timeout: Duration::from_millis(250),
            serve: false,
            transport: Transport::Loopback,
            breaker_name: "upstream".to_string(),
        }
    }
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    /// Run the demo.
    Run(Box<Config>),
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
            if flag == "--serve" {
                config.serve = true;
                continue;
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
                "--save-secs" => {
                    config.save_every = seconds(&value).ok_or_else(|| bad("seconds"))?;
                }
                _ => return Err(format!("unknown flag `{flag}` (see --help)")),
            }
        }
        Ok(Command::Run(Box::new(config)))
    }
}

fn seconds(text: &str) -> Option<Duration> {
    text.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
}

/// The breaker's clock: tokio's, so paused time in tests drives the breaker too.
#[derive(Debug)]
struct TokioClock {
    origin: Instant,
}

impl keel_breaker::Clock for TokioClock {
    fn now_nanos(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A deterministic stream of pseudo-random numbers (`SplitMix64`): the demo needs a seed
/// that reproduces a run, not cryptographic quality.
pub(crate) fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A number in `0.0..1.0` from [`mix`].
#[allow(clippy::cast_precision_loss)] // 53 bits of a 64-bit random number are plenty.
pub(crate) fn unit(seed: u64, index: u64) -> f64 {
    (mix(seed, index) >> 11) as f64 / (1u64 << 53) as f64
}

/// A breaker state change, when it happened (time since the start of the run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Time since the run started.
    pub at: Duration,
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
}

/// Where the servers listen, handed to [`run`]'s `ready` callback once both accept.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    /// The service's address (`None` in-process).
    pub service: Option<SocketAddr>,
    /// The upstream's address (`None` in-process).
    pub upstream: Option<SocketAddr>,
}

/// What a run did, for the human summary and for the tests.
#[derive(Debug, Clone)]
pub struct Summary {
    /// What the restore at start-up found.
    pub restored: RestoreReport,
    /// Set when the restore failed (the bad file was quarantined; the run starts empty).
    pub restore_error: Option<String>,
    /// Requests answered (fewer than configured after a signal).
    pub requests: u32,
    /// Answered by a successful upstream call.
    pub from_upstream: u32,
    /// Answered from the cache because the breaker refused the call.
    pub from_cache_breaker_open: u32,
    /// Answered from the cache because the upstream call failed.
    pub from_cache_upstream_failed: u32,
    /// `503` + `Retry-After`: refused fast by the open breaker with nothing cached.
    pub rejected: u32,
    /// `502`: the upstream call failed with nothing cached.
    pub failed: u32,
    /// Every breaker state change, in order.
    pub transitions: Vec<Transition>,
    /// Every request the load generator sent, in order, with its answer.
    pub sent: Vec<Sent>,
    /// Every call the upstream received, in order.
    pub upstream_calls: Vec<Received>,
    /// The snapshot file.
    pub snapshot_path: PathBuf,
    /// The final save: entries, bytes, time taken.
    pub final_save: keel_snapshot::SaveReport,
    /// Whether a signal (or the caller's shutdown future) ended the run.
    pub interrupted: bool,
    /// How long the run lasted.
    pub elapsed: Duration,
}

impl Summary {
    /// The timeline picture of this run.
    pub fn timeline(&self) -> String {
        let answers: Vec<(Duration, Answered)> = self
            .sent
            .iter()
            .filter_map(|sent| Some((sent.at, sent.answered?)))
            .collect();
        crate::timeline::render(&answers, &self.transitions, self.elapsed)
    }
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
            " (stopped by a signal)"
        } else {
            ""
        };
        writeln!(f, "requests: {}{interrupted}", self.requests)?;
        let rows = [
            (
                "served from upstream:                    ",
                self.from_upstream,
            ),
            (
                "served from cache, breaker open:         ",
                self.from_cache_breaker_open,
            ),
            (
                "served from cache, upstream call failed: ",
                self.from_cache_upstream_failed,
            ),
            ("503 + Retry-After, breaker open:         ", self.rejected),
            ("502, upstream failed, nothing cached:    ", self.failed),
        ];
        for (label, count) in rows {
            writeln!(f, "  {label}{count}")?;
        }
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
        writeln!(
            f,
            "snapshot: {} ({} entries, {} bytes, saved in {:.1} ms)",
            self.snapshot_path.display(),
            self.final_save.entries,
            self.final_save.bytes,
            self.final_save.duration.as_secs_f64() * 1000.0
        )?;
        write!(f, "\n{}", self.timeline())
    }
}

/// Why the demo could not run at all.
#[derive(Debug)]
pub enum DemoError {
    /// The breaker rejected its configuration.
    Breaker(keel_breaker::ConfigError),
    /// The final snapshot could not be written.
    Snapshot(SnapshotError),
    /// A listening socket could not be opened on 127.0.0.1.
    Bind(std::io::Error),
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoError::Breaker(error) => write!(f, "invalid breaker configuration: {error}"),
            DemoError::Snapshot(error) => write!(f, "could not write the final snapshot: {error}"),
            DemoError::Bind(error) => write!(f, "could not listen on 127.0.0.1: {error}"),
        }
    }
}

impl std::error::Error for DemoError {}

/// A real HTTP/1 client (hyper's pooled client), boxed as a tower service.
fn http_client() -> HttpService {
    let client = HyperClient::builder(TokioExecutor::new()).build_http::<Body>();
    BoxCloneSyncService::new(
        client
            .map_response(|response: Response<hyper::body::Incoming>| response.map(Body::new))
            .map_err(BoxError::from),
    )
}

/// A router called in-process as a tower service.
fn in_process(router: axum::Router) -> HttpService {
    BoxCloneSyncService::new(ServiceExt::<Request<Body>>::map_err(
        router,
        |never| match never {},
    ))
}

async fn listen() -> Result<tokio::net::TcpListener, DemoError> {
    tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(DemoError::Bind)
}

fn record_save(
    result: &Result<keel_snapshot::SaveReport, SnapshotError>,
    last_save: &Mutex<Option<LastSave>>,
) {
    match result {
        Ok(report) => {
            metrics::counter!("snapshot_saves_total", "result" => "ok").increment(1);
            metrics::counter!("snapshot_bytes_written_total").increment(report.bytes);
            metrics::gauge!("snapshot_last_entries")
                .set(f64::from(u32::try_from(report.entries).unwrap_or(u32::MAX)));
            metrics::histogram!("snapshot_save_duration_seconds")
                .record(report.duration.as_secs_f64());
            *last_save.lock().unwrap_or_else(PoisonError::into_inner) = Some(LastSave {
                at: SystemTime::now(),
                report: report.clone(),
            });
        }
        Err(error) => {
            metrics::counter!("snapshot_saves_total", "result" => "error").increment(1);
            tracing::error!(%error, "snapshot save failed");
        }
    }
}

/// Runs the demo: restores the cache, starts the upstream and the service, sends the load,
/// (with [`Config::serve`]) keeps serving until `shutdown` completes, then shuts down
/// gracefully and writes the final snapshot. `shutdown` completing earlier (Ctrl-C or
/// SIGTERM in the example) stops the load and goes straight to the graceful shutdown.
/// `ready` is called once both servers accept connections.
///
/// # Errors
///
/// An invalid breaker configuration, a socket that cannot be opened, or a final save that
/// failed.
#[allow(clippy::too_many_lines)] // One sequence of start-up and shutdown steps reads best whole.
pub async fn run(
    config: Config,
    tracer: Tracer,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(Ready),
) -> Result<Summary, DemoError> {
    // The Prometheus recorder first: the breaker registers its metric handles with the
    // recorder installed when it is built, and handles registered before any recorder
    // count nothing.
    let prometheus = service::prometheus();
    let started = Instant::now();
    let persistence = CachePersistence::new(&config.state_dir);
    let changes = Changes::new();
    // Bounded: keys come from callers, so an unbounded cache would be theirs to fill.
    let cache: Cache = moka::sync::Cache::builder()
        .max_capacity(10_000)
        .expire_after(ExpiresAt::new().marking(changes.clone()))
        .build();
    let (restored, restore_error) = {
        let persistence = persistence.clone();
        let cache = cache.clone();
        match tokio::task::spawn_blocking(move || persistence.restore_moka(&cache)).await {
            Ok(Ok(report)) => (report, None),
            // The bad file was quarantined by the restore; the service starts empty.
            Ok(Err(error)) => (RestoreReport::default(), Some(error.to_string())),
            Err(error) => (RestoreReport::default(), Some(error.to_string())),
        }
    };
    tracing::info!(
        loaded = restored.loaded,
        expired = restored.expired,
        path = %persistence.path().display(),
        "restored {} entries, {} expired",
        restored.loaded,
        restored.expired
    );
    let last_save = Arc::new(Mutex::new(None));
    let persister = {
        let cache = cache.clone();
        let last_save = Arc::clone(&last_save);
        Persister::builder(persistence.clone(), config.save_every)
            .skip_unchanged(changes)
            .spawn_saving(move |persistence| {
                let result = persistence.save_moka(&cache);
                record_save(&result, &last_save);
                result
            })
    };

    let transitions = Arc::new(Mutex::new(Vec::new()));
    let breaker = {
        let transitions = Arc::clone(&transitions);
        CircuitBreaker::builder(config.breaker_name.clone())
            .policy(Policy::consecutive_failures(3))
            .half_open_after(Backoff::exponential(
                config.half_open_after,
                config.half_open_after * 4,
            ))
            .clock(TokioClock { origin: started })
            .count_calls()
            .on_state_change(move |from, to| {
                let at = started.elapsed();
                transitions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Transition { at, from, to });
            })
            .build()
            .map(Arc::new)
            .map_err(DemoError::Breaker)?
    };

    let upstream_log = upstream::Log::default();
    let upstream_router = upstream::router(
        Shape {
            outage_start: config.outage_start,
            outage: config.outage,
            failure_rate: config.failure_rate,
            seed: config.seed,
            latency: config.upstream_latency,
            hang: config.upstream_timeout * 2,
        },
        started,
        upstream_log.clone(),
    );
    let mut servers = tokio::task::JoinSet::new();
    let (upstream_addr, transport) = match config.transport {
        Transport::Loopback => {
            let listener = listen().await?;
            let addr = listener.local_addr().map_err(DemoError::Bind)?;
            // The upstream is stopped by aborting its task: nothing of it needs to drain.
            let upstream_server = tokio::spawn(async move {
                let _ = axum::serve(listener, upstream_router).await;
            });
            (Some((addr, upstream_server)), http_client())
        }
        Transport::InProcess => (None, in_process(upstream_router)),
    };
    let upstream_base = upstream_addr.as_ref().map_or_else(
        || "http://upstream.invalid".to_string(),
        |(addr, _)| format!("http://{addr}"),
    );
    let load_progress = Arc::new(Mutex::new(LoadProgress::default()));
    let state = AppState {
        breaker: Arc::clone(&breaker),
        client: service::upstream_client(transport, Arc::clone(&breaker), config.upstream_timeout),
        upstream_base,
        cache: cache.clone(),
        ttl: config.ttl,
        last_save,
        load: Arc::clone(&load_progress),
        prometheus,
        started,
    };
    let app = service::router(state, tracer);
    let (stop_service, service_stopped) = tokio::sync::oneshot::channel::<()>();
    let (service_addr, load_client) = match config.transport {
        Transport::Loopback => {
            let listener = listen().await?;
            let addr = listener.local_addr().map_err(DemoError::Bind)?;
            servers.spawn(async move {
                let graceful = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = service_stopped.await;
                });
                if let Err(error) = graceful.await {
                    tracing::error!(%error, "the service stopped with an error");
                }
            });
            (Some(addr), http_client())
        }
        Transport::InProcess => (None, in_process(app)),
    };
    ready(Ready {
        service: service_addr,
        upstream: upstream_addr.as_ref().map(|(addr, _)| *addr),
    });

    let schedule = Schedule {
        requests: config.requests,
        interval: config.interval,
        keys: config.keys,
        seed: config.seed,
    };
    let base = service_addr.map_or_else(
        || "http://service.invalid".to_string(),
        |addr| format!("http://{addr}"),
    );
    tokio::pin!(shutdown);
    let (sent, mut interrupted) = load::run(
        load_client,
        base,
        schedule,
        started,
        load_progress,
        shutdown.as_mut(),
    )
    .await;
    if config.serve && !interrupted {
        shutdown.as_mut().await;
        interrupted = true;
    }

    // Graceful shutdown: stop accepting, let requests in flight finish, then the final save.
    let _ = stop_service.send(());
    while servers.join_next().await.is_some() {}
    if let Some((_, upstream_server)) = upstream_addr {
        upstream_server.abort();
    }
    let final_save = persister.shutdown().await.map_err(DemoError::Snapshot)?;
    let transitions = transitions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut tally = Tally::default();
    for answered in sent.iter().filter_map(|sent| sent.answered) {
        tally.count(answered);
    }
    Ok(Summary {
        restored,
        restore_error,
        requests: tally.requests,
        from_upstream: tally.from_upstream,
        from_cache_breaker_open: tally.from_cache_breaker_open,
        from_cache_upstream_failed: tally.from_cache_upstream_failed,
        rejected: tally.rejected,
        failed: tally.failed,
        transitions,
        sent,
        upstream_calls: upstream_log.calls(),
        snapshot_path: persistence.path().to_path_buf(),
        final_save,
        interrupted,
        elapsed: started.elapsed(),
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
    fn count(&mut self, answered: Answered) {
        self.requests += 1;
        let counter = match answered {
            Answered::Upstream => &mut self.from_upstream,
            Answered::CacheBreakerOpen => &mut self.from_cache_breaker_open,
            Answered::CacheUpstreamFailed => &mut self.from_cache_upstream_failed,
            Answered::Rejected => &mut self.rejected,
            Answered::Failed => &mut self.failed,
        };
        *counter += 1;
    }
}
