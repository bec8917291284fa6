//! The soak run (issue 9, part 5): `authwatch run` against the emulator for 30 minutes at
//! 2,000 events/s with an attack planted every minute. A bench, not a CI test (ignored):
//!
//! ```sh
//! AWS_ENDPOINT_URL=http://127.0.0.1:5000 cargo test -p authwatch --test soak -- --ignored --nocapture
//! ```
//!
//! `AUTHWATCH_SOAK_MINUTES` (default 30) and `AUTHWATCH_SOAK_RATE` (events/s, default 2000)
//! change the load. It prints the run's resident memory every half minute (start and end
//! are the figures to read: flat means no leak), the lag, and asserts that every planted
//! attack was alerted exactly once, that every event put was read, and that the alerts are
//! exactly those of `authwatch replay` over the same events.
//!
//! The emulator keeps every event in memory and scans all of a stream's events on each
//! `FilterLogEvents` page, so a half-hour at 2,000 events/s in one stream would make the
//! emulator, not authwatch, the bottleneck. The API servers' streams are therefore rotated
//! every minute (as EKS does when it replaces control-plane instances) and a stream is
//! deleted only once the run's saved position is a minute past its last event, so deletion
//! can never take an unread event away.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of `pid` in MiB (Linux).
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The saved position of the only log group in `state_dir`, ms.
fn saved_position(state_dir: &std::path::Path) -> Option<i64> {
    let text = std::fs::read_to_string(state_dir.join("checkpoint.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let state: serde_json::Value = match &v["state"] {
        serde_json::Value::String(s) => serde_json::from_str(s).ok()?,
        other => other.clone(),
    };
    state["groups"].as_object()?.values().next()?["position_ms"].as_i64()
}

fn stream_name(minute: u64, k: u64) -> String {
    format!("kube-apiserver-audit-{minute:016x}{k:016x}")
}

#[test]
#[ignore]
fn soak_at_2000_events_per_second_with_an_attack_every_minute() {
    let Some(ep) = emulator() else { return };
    let minutes = env_or("AUTHWATCH_SOAK_MINUTES", 30);
    let rate = env_or("AUTHWATCH_SOAK_RATE", 2_000);
    let emu = Emu::new(&ep);
    let g = unique_group("soak");
    emu.create_group(&g);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    let state = dir.path().join("state");
    // Every event put is also written to a CloudWatch export tree, one directory per stream
    // (the stream names the host), for the offline replay to compare with.
    let export = dir.path().join("export");
    let mut files: HashMap<String, std::io::BufWriter<std::fs::File>> = HashMap::new();
    let mut floor_ms = 0i64; // event times only move forward, as an API server's do
    for k in 0..2 {
        emu.create_stream(&g, &stream_name(0, k));
    }
    let http = free_addr();
    // The defaults of `run`, except a short look-back: the emulator delivers at once, and
    // every pass re-reads the look-back (which the emulator scans slowly).
    let mut run = start_run(
        &ep,
        &g,
        &state,
        &out,
        &[
            "--poll-interval",
            "2s",
            "--api-rate",
            "5",
            "--max-lateness",
            "5s",
            "--rediscover-interval",
            "10s",
            "--lookback",
            "20s",
            "--http-addr",
            &http,
        ],
    );
    let pid = run.child.id();
    let mut noise = Noise::load();
    let started = Instant::now();
    let total = Duration::from_secs(minutes * 60);
    let tick = Duration::from_millis(250);
    let mut put = 0u64;
    let mut planted: BTreeMap<String, u64> = BTreeMap::new();
    let mut streams: Vec<(u64, String, i64)> = Vec::new(); // (minute, name, last event ms)
    let mut minute = 0u64;
    let mut samples: Vec<(f64, f64, f64)> = Vec::new(); // (elapsed s, RSS MiB, lag s)
    let mut next_sample = Instant::now();
    let mut next_tick = Instant::now();
    let mut behind_ticks = 0u64;
    while started.elapsed() < total {
        let m = started.elapsed().as_secs() / 60;
        if m != minute {
            minute = m;
            for k in 0..2 {
                emu.create_stream(&g, &stream_name(m, k));
            }
        }
        let now = now_ms();
        let active = [stream_name(minute, 0), stream_name(minute, 1)];
        let mut batches: [Vec<(i64, String)>; 2] = [Vec::new(), Vec::new()];
        // What is due by now at `rate`, so a slow tick is made up by the next.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        let per_tick = due.saturating_sub(put).clamp(1, 20_000) as usize;
        // Spread over the last quarter second, never before the previous tick's last event
        // (nor after the clock: an event from the future would wait to be read).
        let lo = (now - 250).max(floor_ms + 1).min(now);
        for i in 0..per_tick {
            let t = lo + (i as i64 * (now - lo)) / per_tick as i64;
            batches[i % 2].push(noise.event(t));
        }
        floor_ms = now;
        // One attack a minute, 10 s in: 25 denials from a new address, over both streams.
        let secs_in = started.elapsed().as_secs() % 60;
        let ip = format!("198.18.{}.{}", minute / 250, minute % 250 + 1);
        if secs_in >= 10 && !planted.contains_key(&ip) {
            let a = attack(
                &format!("soak-{minute}"),
                25,
                lo,
                (now - lo) / 25,
                &ip,
                &format!("soak-attacker-{minute}"),
            );
            for (i, e) in a.into_iter().enumerate() {
                batches[i % 2].push(e);
            }
            planted.insert(ip, minute);
        }
        for (k, batch) in batches.iter_mut().enumerate() {
            batch.sort_by_key(|e| e.0);
            emu.put(&g, &active[k], batch);
            let file = files.entry(active[k].clone()).or_insert_with(|| {
                let d = export.join("soak-task").join(&active[k]);
                std::fs::create_dir_all(&d).unwrap();
                std::io::BufWriter::new(std::fs::File::create(d.join("000000")).unwrap())
            });
            for (ts, msg) in batch.iter() {
                writeln!(file, "{} {msg}", rfc3339_ms(*ts)).unwrap();
            }
            put += batch.len() as u64;
            let last = batch.iter().map(|e| e.0).max().unwrap_or(now);
            match streams.iter_mut().find(|s| s.1 == active[k]) {
                Some(s) => s.2 = s.2.max(last),
                None => streams.push((minute, active[k].clone(), last)),
            }
        }
        // Streams whose events the run has saved a minute past go away.
        if let Some(pos) = saved_position(&state) {
            streams.retain(|(m, name, last)| {
                let done = *m + 1 < minute && pos > last + 60_000;
                if done {
                    emu.delete_stream(&g, name);
                }
                !done
            });
        }
        if Instant::now() >= next_sample {
            let lag = saved_position(&state).map_or(f64::NAN, |p| (now_ms() - p) as f64 / 1e3);
            let s = (started.elapsed().as_secs_f64(), rss_mib(pid), lag);
            eprintln!(
                "soak t={:>5.0}s RSS {:>6.1} MiB saved position {:>5.1} s behind, {put} events put, {} streams kept",
                s.0,
                s.1,
                s.2,
                streams.len()
            );
            samples.push(s);
            next_sample += Duration::from_secs(30);
        }
        next_tick += tick;
        match next_tick.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None => behind_ticks += 1,
        }
    }
    for (_, mut f) in files.drain() {
        f.flush().unwrap();
    }
    let fed_for = started.elapsed().as_secs_f64();
    // Let the run catch up: its saved position past the last event put.
    let last_put = floor_ms;
    let caught_up = wait_until(Duration::from_secs(300), || {
        saved_position(&state).is_some_and(|p| p >= last_put)
    });
    let caught_after = started.elapsed().as_secs_f64() - fed_for;
    let read = metric(&http, "authwatch_records_total", "");
    let end_rss = rss_mib(pid);
    let stderr_path = run.stderr.clone();
    let status = sigterm_and_wait(&mut run.child, Duration::from_secs(20), || {
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    });
    assert!(status.success(), "{}", run.stderr_text());

    let live = alerts(&out);
    let replay_out = dir.path().join("replay.jsonl");
    let replay = Command::new(env!("CARGO_BIN_EXE_authwatch"))
        .args(["replay", "--no-progress", "--quiet", "--sink"])
        .arg(format!("file:{}", replay_out.display()))
        .arg(&export)
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let offline = alerts(&replay_out);

    let first = samples
        .get(2)
        .or(samples.first())
        .copied()
        .unwrap_or_default();
    let max_rss = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    // From the second sample on: the first is taken before the first pass.
    let max_lag = samples.iter().skip(1).map(|s| s.2).fold(0.0, f64::max);
    eprintln!(
        "soak: {minutes} min at {rate} events/s: {put} events put in {fed_for:.0} s ({:.0}/s, {behind_ticks} late ticks), {read} records read; caught up {caught_after:.0} s after the feed stopped ({caught_up}); RSS {:.1} MiB at t={:.0}s, {end_rss:.1} MiB at the end, max {max_rss:.1}; saved position at most {max_lag:.1} s behind; {} planted attacks, {} live alerts, {} replay alerts",
        put as f64 / fed_for,
        first.1,
        first.0,
        planted.len(),
        live.len(),
        offline.len()
    );
    assert!(caught_up, "the run did not catch up within 5 minutes");
    assert_eq!(read as u64, put, "records read vs events put");
    let mut by_ip: HashMap<String, usize> = HashMap::new();
    for a in &live {
        if a["rule"] == "denied-by-source-ip" {
            if let Some(ip) = a["group"]["sourceIPs"].as_str() {
                *by_ip.entry(ip.to_owned()).or_default() += 1;
            }
        }
    }
    for ip in planted.keys() {
        assert_eq!(
            by_ip.get(ip).copied().unwrap_or(0),
            1,
            "planted attack from {ip}: alerts {by_ip:?}"
        );
    }
    unique_ids(&live);
    let ids = |v: &[serde_json::Value]| {
        let mut x: Vec<String> = v
            .iter()
            .map(|a| {
                format!(
                    "{} {} {} {}",
                    a["alert_id"], a["rule"], a["group"], a["count"]
                )
            })
            .collect();
        x.sort();
        x
    };
    assert_eq!(ids(&live), ids(&offline), "live alerts vs offline replay");
}
