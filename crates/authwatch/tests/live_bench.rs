//! Measurements of `authwatch run` against the emulator (docs/live-cloudwatch.md). Ignored by
//! default (they take minutes); run with
//! `AWS_ENDPOINT_URL=http://127.0.0.1:5000 cargo test --release -p authwatch --test live_bench -- --ignored --nocapture --test-threads 1`.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::*;

const STREAMS: [&str; 3] = [
    "kube-apiserver-audit-0123456789abcdef0123456789abcdef",
    "kube-apiserver-audit-fedcba9876543210fedcba9876543210",
    "kube-apiserver-audit-aaaabbbbccccddddeeeeffff00001111",
];

/// The defaults of `authwatch run` (the test helper's fast settings are overridden).
const DEFAULTS: [&str; 8] = [
    "--poll-interval",
    "2s",
    "--api-rate",
    "2",
    "--max-lateness",
    "5s",
    "--rediscover-interval",
    "1m",
];

fn setup(emu: &Emu, tag: &str) -> String {
    let g = unique_group(tag);
    emu.create_group(&g);
    for s in STREAMS {
        emu.create_stream(&g, s);
    }
    g
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Seconds from `PutLogEvents` returning to the alert line in the output file, over 200
/// alerts, with background traffic (one event every 100 ms) moving the watermark on as an
/// API server's own requests would.
#[test]
#[ignore]
fn latency_put_to_alert() {
    let Some(ep) = emulator() else { return };
    let emu = Emu::new(&ep);
    let g = setup(&emu, "latency");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    std::fs::write(&out, "").unwrap();
    // `AUTHWATCH_BENCH_MAX_LATENESS` (default 5s, the default of `run`) shows its share.
    let lateness = std::env::var("AUTHWATCH_BENCH_MAX_LATENESS").unwrap_or_else(|_| "5s".into());
    let mut args = DEFAULTS.to_vec();
    args[5] = &lateness;
    let _run = start_run(&ep, &g, &dir.path().join("state"), &out, &args);
    std::thread::sleep(Duration::from_secs(3));
    let mut noise = Noise::load();
    let mut put_at: HashMap<String, Instant> = HashMap::new();
    let mut latency: Vec<f64> = Vec::new();
    let mut reader = BufReader::new(std::fs::File::open(&out).unwrap());
    let mut pos = 0u64;
    let n = 200usize;
    let mut sent = 0usize;
    let mut next_burst = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(400);
    while latency.len() < n && Instant::now() < deadline {
        let now = now_ms();
        if sent < n && Instant::now() >= next_burst {
            let ip = format!("10.9.{}.{}", sent / 200, sent % 200);
            let a = attack(&format!("lat{sent}"), 20, now - 200, 10, &ip, "bench-user");
            emu.put(&g, STREAMS[sent % 3], &a);
            put_at.insert(ip, Instant::now());
            sent += 1;
            next_burst = Instant::now() + Duration::from_millis(500);
        }
        emu.put(&g, STREAMS[(now as usize / 7) % 3], &[noise.event(now)]);
        // Tail the output.
        reader.seek(SeekFrom::Start(pos)).unwrap();
        let mut line = String::new();
        while let Ok(k) = reader.read_line(&mut line) {
            if k == 0 || !line.ends_with('\n') {
                break;
            }
            pos += k as u64;
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["rule"] == "denied-by-source-ip" {
                    if let Some(t) = v["group"]["sourceIPs"]
                        .as_str()
                        .and_then(|ip| put_at.get(ip))
                    {
                        latency.push(t.elapsed().as_secs_f64());
                    }
                }
            }
            line.clear();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    latency.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(
        latency.len(),
        n,
        "only {} of {n} alerts seen",
        latency.len()
    );
    eprintln!(
        "latency put→alert over {n} alerts (poll 2s, max-lateness {lateness}, api-rate 2): p50 {:.2}s p90 {:.2}s p99 {:.2}s max {:.2}s",
        percentile(&latency, 0.5),
        percentile(&latency, 0.9),
        percentile(&latency, 0.99),
        latency[n - 1]
    );
}

/// What [`calls_per_minute`] saw.
struct Load {
    /// Calls in the measured minute.
    calls: u64,
    /// Events put in all.
    put: usize,
    /// How far the checkpointed position was behind the clock at the end, s.
    lag_s: f64,
}

/// The checkpointed position of the only log group in `state_dir`, ms.
fn checkpoint_position(state_dir: &std::path::Path) -> Option<i64> {
    let text = std::fs::read_to_string(state_dir.join("checkpoint.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["state"]["groups"].as_object()?.values().next()?["position_ms"].as_i64()
}

/// CloudWatch Logs calls per minute (counted by a pass-through proxy), idle and under
/// `rate` events per second, after a warm-up of `AUTHWATCH_BENCH_WARMUP_SECS` (default 10;
/// 330 fills the 5-minute look-back, the steady state).
fn calls_per_minute(rate: usize, tag: &str) -> Load {
    let ep = emulator().unwrap();
    let emu = Emu::new(&ep);
    let g = setup(&emu, tag);
    let upstream = emulator_addr(&ep);
    let (proxy, stats, _stop) = start_fault_proxy(upstream, 1, 0, 0, 0);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    // `AUTHWATCH_BENCH_LOOKBACK_EVERY=30s` measures `--lookback-every`.
    let every = std::env::var("AUTHWATCH_BENCH_LOOKBACK_EVERY").unwrap_or_else(|_| "0s".into());
    let mut args = DEFAULTS.to_vec();
    args.extend(["--lookback-every", every.as_str()]);
    let run = start_run(
        &format!("http://{proxy}"),
        &g,
        &dir.path().join("state"),
        &out,
        &args,
    );
    let mut noise = Noise::load();
    let warmup_s: u64 = std::env::var("AUTHWATCH_BENCH_WARMUP_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let warmup = Instant::now() + Duration::from_secs(warmup_s);
    let mut begin: Option<(Instant, u64)> = None;
    let mut put = 0usize;
    loop {
        let tick = Instant::now();
        if rate > 0 {
            let now = now_ms();
            // rate/10 events every 100 ms, spread over the streams.
            let batch = noise.events(rate / 10, now - 100, (100 / (rate / 10).max(1)) as i64);
            emu.put(&g, STREAMS[put % 3], &batch);
            put += batch.len();
        }
        if begin.is_none() && Instant::now() >= warmup {
            begin = Some((Instant::now(), stats.forwarded.load(Ordering::Relaxed)));
        }
        if let Some((t, c)) = begin {
            if t.elapsed() >= Duration::from_secs(60) {
                let calls = stats.forwarded.load(Ordering::Relaxed) - c;
                let lag_s = checkpoint_position(&dir.path().join("state"))
                    .map_or(f64::NAN, |p| (now_ms() - p) as f64 / 1000.0);
                drop(run);
                return Load { calls, put, lag_s };
            }
        }
        let spent = tick.elapsed();
        if spent < Duration::from_millis(100) {
            std::thread::sleep(Duration::from_millis(100) - spent);
        }
    }
}

#[test]
#[ignore]
fn api_calls_per_minute_idle() {
    if emulator().is_none() {
        return;
    }
    let load = calls_per_minute(0, "idle");
    eprintln!(
        "API calls per minute, idle (3 streams, poll 2s): {}; position lag at the end {:.1}s",
        load.calls, load.lag_s
    );
}

#[test]
#[ignore]
fn api_calls_per_minute_at_1000_events_per_second() {
    if emulator().is_none() {
        return;
    }
    let started = Instant::now();
    let load = calls_per_minute(1000, "busy");
    eprintln!(
        "API calls per minute at a target of 1000 events/s: {} ({} events put in {:.0}s, {:.0}/s achieved by the emulator); position lag at the end {:.1}s",
        load.calls,
        load.put,
        started.elapsed().as_secs_f64(),
        load.put as f64 / started.elapsed().as_secs_f64(),
        load.lag_s
    );
}
