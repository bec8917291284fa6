//! The loop both long-running modes (`run` on CloudWatch Logs, `run --kinesis-stream`)
//! share: signals, the HTTP endpoints, and snapshots of the run's figures for `/metrics`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::telemetry::http::{ServiceMetrics, Snapshot};

/// Waits for SIGTERM or SIGINT (Ctrl-C); names the one that came.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "interrupt"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "interrupt"
    }
}

/// The health a job reports while it runs: which streams it read, and the figures
/// `/metrics` serves. Shared with the HTTP thread.
#[derive(Clone)]
pub struct Health {
    metrics: Arc<Mutex<ServiceMetrics>>,
}

impl Health {
    /// `names` are the log groups or streams a ready job reads within `max_read_age`.
    fn new(names: &[String], max_read_age: Duration) -> Health {
        let metrics = Arc::new(Mutex::new(ServiceMetrics::new(names, max_read_age)));
        let health = Health { metrics };
        health.lock().state_loaded();
        health
    }

    fn lock(&self) -> MutexGuard<'_, ServiceMetrics> {
        self.metrics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `name` was read just now (readiness).
    pub fn read_ok(&self, name: &str) {
        self.lock().read_ok(name);
    }

    fn update(&self, snapshot: Snapshot) {
        self.lock().update(snapshot);
    }
}

/// How a long-running job is served.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// The log groups or streams readiness waits for.
    pub reads: Vec<String>,
    /// Not ready when one of them was last read longer ago than this.
    pub max_read_age: Duration,
    /// `--http-addr`: serve `/healthz`, `/readyz`, `/metrics` here.
    pub http_addr: Option<SocketAddr>,
    /// How often the figures are taken for `/metrics` (zero: after every step).
    pub snapshot_every: Duration,
}

/// A long-running mode (the CloudWatch Logs poller, a Kinesis replica) as [`run`] drives it:
/// it sets itself up before, does its work in steps, and stops cleanly after.
pub(crate) trait Job {
    /// What stops the job (a sink or state failure, an API error retrying cannot fix).
    type Error: From<std::io::Error>;

    /// How long SIGTERM waits for a step under way. `None`: the step is dropped at once, for
    /// a job whose steps move nothing until they are done (the next process re-reads).
    const STOP_GRACE: Option<Duration>;

    /// One round of work; reports what it read to `health`. Returns how long to wait before
    /// the next round (zero: at once).
    async fn step(&mut self, health: &Health) -> Result<Duration, Self::Error>;

    /// The figures `/metrics` serves.
    fn snapshot(&self) -> Snapshot;

    /// The end of the run, clean (`failed` false) or after a step failed; no step is under
    /// way.
    async fn stop(&mut self, failed: bool) -> Result<(), Self::Error>;
}

/// Runs `job` until SIGTERM or SIGINT or until a step fails: serves the HTTP endpoints,
/// takes snapshots for `/metrics`, and waits between steps; the one loop of both
/// long-running modes.
pub(crate) async fn run<J: Job>(job: &mut J, opts: &ServiceOptions) -> Result<(), J::Error> {
    let health = Health::new(&opts.reads, opts.max_read_age);
    if let Some(addr) = opts.http_addr {
        let bound = crate::telemetry::http::serve(addr, health.metrics.clone())?;
        tracing::info!("authwatch run: serving /healthz /readyz /metrics on http://{bound}");
    }
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let mut next_snapshot = Instant::now();
    let mut result = Ok(());
    loop {
        let stepped = {
            let mut step = std::pin::pin!(job.step(&health));
            tokio::select! {
                biased;
                signal = &mut shutdown => {
                    match J::STOP_GRACE {
                        None => tracing::info!("authwatch run: {signal}: stopping"),
                        Some(grace) => {
                            tracing::info!(
                                "authwatch run: {signal}: stopping after the current step (at most {grace:?})"
                            );
                            match tokio::time::timeout(grace, &mut step).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(e)) => result = Err(e),
                                Err(_) => tracing::warn!(
                                    "authwatch run: the current step did not end within {grace:?} (AWS retries); stopping anyway: an alert being delivered may be sent again, with the same alert_id, by the replica that takes over"
                                ),
                            }
                        }
                    }
                    None
                }
                r = &mut step => Some(r),
            }
        };
        let wait = match stepped {
            None => break,
            Some(Err(e)) => {
                result = Err(e);
                break;
            }
            Some(Ok(wait)) => wait,
        };
        if Instant::now() >= next_snapshot {
            next_snapshot = Instant::now() + opts.snapshot_every;
            health.update(job.snapshot());
        }
        if !wait.is_zero() {
            tokio::select! {
                biased;
                signal = &mut shutdown => {
                    tracing::info!("authwatch run: {signal}: stopping");
                    break;
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
    let stopped = job.stop(result.is_err()).await;
    result.and(stopped)
}
