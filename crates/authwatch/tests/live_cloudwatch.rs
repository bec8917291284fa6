//! `authwatch run` against a real CloudWatch Logs emulator (moto's server, started by
//! `.ci/run`; see docs/live-cloudwatch.md): steady flow, late delivery, a stream that appears
//! mid-run, `kill -9` and restart, and API faults injected by a proxy.
//!
//! Every test uses its own log group, so they can run in parallel on one emulator.

mod support;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

const S1: &str = "kube-apiserver-audit-0123456789abcdef0123456789abcdef";
const S2: &str = "kube-apiserver-audit-fedcba9876543210fedcba9876543210";
const API_STREAM: &str = "kube-apiserver-0123456789abcdef0123456789abcdef";

/// The alert for 20 denials from `ip` fires at the 20th event: its `window_end` proves that
/// none of the first 20 was lost and none counted twice.
fn assert_fired_at(alerts: &[serde_json::Value], rule: &str, key: &str, value: &str, at_ms: i64) {
    let a = alerts
        .iter()
        .find(|a| a["rule"] == rule && a["group"][key] == value)
        .unwrap_or_else(|| panic!("no {rule} alert for {value} in {alerts:#?}"));
    assert_eq!(a["count"], 20, "{a}");
    assert_eq!(a["window_end"], rfc3339_ms(at_ms), "{a}");
}

#[test]
fn steady_flow_alerts_once_per_attack_and_ignores_non_audit_streams() {
    let Some(ep) = emulator() else { return };
    let emu = Emu::new(&ep);
    let g = group_with_streams(&emu, "steady", &[S1, S2, API_STREAM]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    let mut noise = Noise::load();
    let t0 = now_ms() - 60_000;
    emu.put(&g, S1, &noise.events(60, t0, 500));
    // 25 denials from one address spread over both audit streams.
    let a = attack("steady-a", 25, t0 + 1_000, 300, "203.0.113.10", "mallory");
    let (a1, a2): (Vec<_>, Vec<_>) = a.iter().cloned().enumerate().partition(|(i, _)| i % 2 == 0);
    emu.put(&g, S1, &a1.into_iter().map(|x| x.1).collect::<Vec<_>>());
    emu.put(&g, S2, &a2.into_iter().map(|x| x.1).collect::<Vec<_>>());
    // The same pattern in the API (non-audit) stream must not count.
    emu.put(
        &g,
        API_STREAM,
        &attack("api-stream", 30, t0, 100, "192.0.2.99", "not-audit"),
    );

    let mut run = start_run(&ep, &g, &dir.path().join("state"), &out, &[]);
    assert!(
        wait_until(Duration::from_secs(30), || alerts(&out).len() >= 2),
        "first attack not alerted; stderr:\n{}",
        run.stderr_text()
    );
    // A second attack while running, with current timestamps.
    let t1 = now_ms();
    emu.put(
        &g,
        S2,
        &attack("steady-b", 22, t1, 50, "198.51.100.20", "trudy"),
    );
    emu.put(&g, S1, &noise.events(10, t1 + 100, 100));
    assert!(
        wait_until(Duration::from_secs(30), || alerts(&out).len() >= 4),
        "second attack not alerted; stderr:\n{}",
        run.stderr_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    run.kill9();
    let got = alerts(&out);
    unique_ids(&got);
    assert_eq!(got.len(), 4, "{got:#?}");
    assert_fired_at(
        &got,
        "denied-by-source-ip",
        "sourceIPs",
        "203.0.113.10",
        a[19].0,
    );
    assert_fired_at(
        &got,
        "denied-by-user",
        "k8s_user.username",
        "mallory",
        a[19].0,
    );
    assert_fired_at(
        &got,
        "denied-by-source-ip",
        "sourceIPs",
        "198.51.100.20",
        t1 + 19 * 50,
    );
    assert_fired_at(
        &got,
        "denied-by-user",
        "k8s_user.username",
        "trudy",
        t1 + 19 * 50,
    );
    let cluster = g
        .trim_start_matches("/aws/eks/")
        .trim_end_matches("/cluster");
    assert!(got.iter().all(|a| a["cluster"] == cluster));
}

#[test]
fn events_delivered_minutes_late_are_counted_in_their_window() {
    late_delivery(&[]);
}

/// The same with the full look-back re-read only every 5 s (15 s on the polls between): the
/// 2-minute-old events are found by the next full pass.
#[test]
fn with_a_full_look_back_every_5s_late_events_are_still_counted() {
    late_delivery(&["--lookback-every", "5s"]);
}

fn late_delivery(extra: &[&str]) {
    let Some(ep) = emulator() else { return };
    let emu = Emu::new(&ep);
    let g = group_with_streams(&emu, &format!("late{}", extra.len()), &[S1, S2]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    let now = now_ms();
    // 15 denials 3 minutes ago, then newer traffic: the reader's position moves past them.
    let early = attack(
        "late-a",
        15,
        now - 180_000,
        100,
        "203.0.113.77",
        "late-user",
    );
    emu.put(&g, S1, &early);
    let mut noise = Noise::load();
    emu.put(&g, S1, &noise.events(5, now - 1_000, 100));
    let mut run = start_run(&ep, &g, &dir.path().join("state"), &out, extra);
    // Wait for a checkpoint beyond `now`: the late events are behind the position.
    let state = dir.path().join("state/checkpoint.json");
    assert!(wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&state).is_ok_and(|s| {
            s.split("\"position_ms\":")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<i64>().ok())
                .is_some_and(|p| p > now + 1_000)
        })
    }));
    assert!(alerts(&out).is_empty(), "15 denials must not alert yet");
    // Another API server's 10 denials, 2 minutes old, delivered now: found by the look-back.
    let late: Vec<(i64, String)> = (0..10)
        .map(|i| {
            let t = now - 120_000 + i * 100;
            (
                t,
                denied(&format!("late-b-{i}"), t, "203.0.113.77", "late-user"),
            )
        })
        .collect();
    emu.put(&g, S2, &late);
    assert!(
        wait_until(Duration::from_secs(30), || alerts(&out).len() >= 2),
        "late events not counted; stderr:\n{}",
        run.stderr_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    run.kill9();
    let got = alerts(&out);
    unique_ids(&got);
    assert_eq!(got.len(), 2, "{got:#?}");
    // 15 early + the 5th late one = 20.
    assert_fired_at(
        &got,
        "denied-by-source-ip",
        "sourceIPs",
        "203.0.113.77",
        late[4].0,
    );
}

#[test]
fn a_stream_that_appears_mid_run_is_discovered_and_read() {
    let Some(ep) = emulator() else { return };
    let emu = Emu::new(&ep);
    let g = group_with_streams(&emu, "newstream", &[S1]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    let mut noise = Noise::load();
    emu.put(&g, S1, &noise.events(20, now_ms() - 5_000, 100));
    let mut run = start_run(&ep, &g, &dir.path().join("state"), &out, &[]);
    std::thread::sleep(Duration::from_secs(3));
    let new_stream = "kube-apiserver-audit-99999999999999999999999999999999";
    emu.create_stream(&g, new_stream);
    let t = now_ms();
    let a = attack("new-stream", 21, t, 10, "203.0.113.200", "newcomer");
    emu.put(&g, new_stream, &a);
    assert!(
        wait_until(Duration::from_secs(30), || alerts(&out).len() >= 2),
        "new stream not read; stderr:\n{}",
        run.stderr_text()
    );
    run.kill9();
    let got = alerts(&out);
    unique_ids(&got);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_fired_at(
        &got,
        "denied-by-source-ip",
        "sourceIPs",
        "203.0.113.200",
        a[19].0,
    );
    assert!(got
        .iter()
        .all(|x| x["hosts"] == serde_json::json!([new_stream])));
    assert!(run.stderr_text().contains("new audit stream"));
}

/// One seed of the crash test: attacks are put round by round while one `authwatch run` goes
/// on undisturbed (the reference) and another is `kill -9`ed at random moments and restarted
/// on the same state directory. The restarted one must end with exactly the reference's
/// alerts, none twice.
fn crash_and_restart(ep: &str, seed: u64) {
    let emu = Emu::new(ep);
    let streams = [
        S1,
        S2,
        "kube-apiserver-audit-aaaabbbbccccddddeeeeffff00001111",
    ];
    let g = group_with_streams(&emu, &format!("crash{seed}"), &streams);
    let dir = tempfile::tempdir().unwrap();
    let (ref_out, vic_out) = (
        dir.path().join("ref.jsonl"),
        dir.path().join("victim.jsonl"),
    );
    let (ref_state, vic_state) = (
        dir.path().join("ref-state"),
        dir.path().join("victim-state"),
    );
    // A lateness bound lets both processes order each round the same way whatever pass
    // boundaries they met; the noise ticks move the watermark on.
    let extra = ["--max-lateness", "2s"];
    let _reference = start_run(ep, &g, &ref_state, &ref_out, &extra);
    let mut victim = start_run(ep, &g, &vic_state, &vic_out, &extra);
    let mut rng = Rng::new(seed);
    let mut noise = Noise::load();
    let rounds = 4u64;
    let mut kills = 0;
    let mut next_kill = std::time::Instant::now() + Duration::from_millis(300 + rng.below(2_500));
    let feed_end = std::time::Instant::now() + Duration::from_millis(rounds * 1_500 + 4_000);
    let mut round = 0u64;
    let mut next_round = std::time::Instant::now();
    while std::time::Instant::now() < feed_end {
        let now = now_ms();
        if round < rounds && std::time::Instant::now() >= next_round {
            let ip = format!("198.51.100.{}", 10 + round);
            let user = format!("attacker-{seed}-{round}");
            let a = attack(&format!("s{seed}r{round}"), 22, now - 400, 15, &ip, &user);
            emu.put(&g, streams[(round % 3) as usize], &a);
            round += 1;
            next_round = std::time::Instant::now() + Duration::from_millis(1_500);
        }
        emu.put(&g, streams[rng.below(3) as usize], &[noise.event(now)]);
        if std::time::Instant::now() >= next_kill {
            victim.kill9();
            kills += 1;
            victim = start_run(ep, &g, &vic_state, &vic_out, &extra);
            next_kill = std::time::Instant::now() + Duration::from_millis(300 + rng.below(2_500));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let expected = (rounds * 2) as usize;
    let done = wait_until(Duration::from_secs(30), || {
        let (r, v) = (alerts(&ref_out), alerts(&vic_out));
        r.len() >= expected && keys(&v) == keys(&r)
    });
    // Ticks stopped; give a last poll the chance to show a duplicate.
    std::thread::sleep(Duration::from_secs(2));
    let (r, v) = (alerts(&ref_out), alerts(&vic_out));
    assert!(
        done,
        "seed {seed} ({kills} kills): reference {} alerts, victim {}:\nref {:#?}\nvictim {:#?}\nvictim stderr:\n{}",
        r.len(),
        v.len(),
        keys(&r),
        keys(&v),
        victim.stderr_text()
    );
    let (rid, vid) = (unique_ids(&r), unique_ids(&v));
    assert_eq!(rid, vid, "seed {seed}: alert ids differ");
    assert!(kills >= 1, "seed {seed}: no kill happened");
    eprintln!("seed {seed}: {kills} kills, {} alerts identical", v.len());
}

/// A restart inside an attack that outlasts window + cooldown + look-back. The restarted
/// run re-reads only that horizon, so the cooldowns the first process had started are not in
/// the events it reads again; before the engine was told the alerts already sent
/// (`Engine::remember_sent`, from the state directory's record), it fired out of phase with
/// the uninterrupted run: a second page, with a new alert id, for the same attack.
#[test]
fn restarts_inside_a_sustained_attack_page_exactly_like_one_run() {
    let Some(ep) = emulator() else { return };
    let emu = Emu::new(&ep);
    let g = group_with_streams(&emu, "sustained", &[S1]);
    let dir = tempfile::tempdir().unwrap();
    let rules = sustained_rule(dir.path());
    let rules = rules.to_str().unwrap();
    let extra = ["--rules", rules, "--lookback", "1s", "--max-lateness", "2s"];
    let (ref_out, vic_out) = (dir.path().join("ref.jsonl"), dir.path().join("vic.jsonl"));
    let _reference = start_run(&ep, &g, &dir.path().join("ref-state"), &ref_out, &extra);
    let vic_state = dir.path().join("vic-state");
    let mut victim = start_run(&ep, &g, &vic_state, &vic_out, &extra);
    // One denial every 300 ms for 36 s from one address; the victim is killed three times,
    // each time more than the 9 s horizon (3s + 5s + 1s) into the attack.
    let start = std::time::Instant::now();
    let kills_at = [12, 21, 29].map(Duration::from_secs);
    let mut kills = 0;
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(36) {
        let now = now_ms();
        emu.put(
            &g,
            S1,
            &[(
                now,
                denied(&format!("sustained-{i}"), now, "198.51.100.99", "eve"),
            )],
        );
        i += 1;
        if kills < kills_at.len() && start.elapsed() >= kills_at[kills] {
            victim.kill9();
            victim = start_run(&ep, &g, &vic_state, &vic_out, &extra);
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let ids = |path: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = alerts(path)
            .iter()
            .map(|a| format!("{} {}", a["window_end"], a["alert_id"]))
            .collect();
        v.sort();
        v
    };
    let done = wait_until(Duration::from_secs(30), || {
        let r = ids(&ref_out);
        r.len() >= 6 && ids(&vic_out) == r
    });
    // Give a last poll the chance to show a late extra page.
    std::thread::sleep(Duration::from_secs(3));
    let (r, v) = (ids(&ref_out), ids(&vic_out));
    assert!(
        done && r == v,
        "{kills} kills: the uninterrupted run paged {} times, the restarted one {}:\nref {r:#?}\nvictim {v:#?}\nvictim stderr:\n{}",
        r.len(),
        v.len(),
        victim.stderr_text()
    );
    assert_eq!(kills, 3);
    // 36 s of attack with a 5 s cooldown: about 7 pages, every one from the same address.
    assert!(r.len() >= 6, "{r:#?}");
}

/// `AUTHWATCH_CRASH_SEEDS` sets how many seeds (default 20, the target;
/// lower it for a quick local run).
#[test]
fn kill_9_at_random_points_then_restart_gives_the_uninterrupted_alerts_once() {
    let Some(ep) = emulator() else { return };
    let seeds: u64 = std::env::var("AUTHWATCH_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    for seed in 1..=seeds {
        crash_and_restart(&ep, seed);
    }
}

#[test]
fn throttling_server_errors_and_dropped_connections_lose_nothing() {
    let Some(ep) = emulator() else { return };
    let emu = Emu::new(&ep);
    let g = group_with_streams(&emu, "faults", &[S1, S2]);
    let upstream = emulator_addr(&ep);
    // 20 % throttled, 10 % HTTP 500, 10 % connection closed without an answer.
    let (proxy, stats, stop) = start_fault_proxy(upstream, 7, 20, 10, 10);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    let mut noise = Noise::load();
    let t0 = now_ms() - 30_000;
    emu.put(&g, S1, &noise.events(80, t0, 200));
    let a = attack("faults-a", 24, t0 + 500, 300, "203.0.113.50", "eve");
    emu.put(&g, S2, &a);
    let proxied = format!("http://{proxy}");
    let mut run = start_run(&proxied, &g, &dir.path().join("state"), &out, &[]);
    assert!(
        wait_until(Duration::from_secs(45), || alerts(&out).len() >= 2),
        "stderr:\n{}",
        run.stderr_text()
    );
    let t1 = now_ms();
    let b = attack("faults-b", 20, t1, 20, "198.51.100.99", "oscar");
    emu.put(&g, S1, &b);
    assert!(
        wait_until(Duration::from_secs(45), || alerts(&out).len() >= 4),
        "stderr:\n{}",
        run.stderr_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    run.kill9();
    stop.store(true, Ordering::Relaxed);
    let got = alerts(&out);
    unique_ids(&got);
    assert_eq!(got.len(), 4, "{got:#?}");
    assert_fired_at(
        &got,
        "denied-by-source-ip",
        "sourceIPs",
        "203.0.113.50",
        a[19].0,
    );
    assert_fired_at(
        &got,
        "denied-by-source-ip",
        "sourceIPs",
        "198.51.100.99",
        b[19].0,
    );
    let faults = stats.throttled.load(Ordering::Relaxed)
        + stats.server_errors.load(Ordering::Relaxed)
        + stats.resets.load(Ordering::Relaxed);
    assert!(faults >= 3, "too few faults injected: {stats:?}");
    let forwarded = stats.forwarded.load(Ordering::Relaxed);
    eprintln!("fault proxy: {stats:?}");
    assert!(forwarded > 0);
    let _: HashSet<String> = unique_ids(&got);
}

#[test]
fn a_missing_log_group_is_reported_and_retried_until_it_exists() {
    let Some(ep) = emulator() else { return };
    let emu = Emu::new(&ep);
    let g = unique_group("missing");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    let mut run = start_run(
        &ep,
        &g,
        &dir.path().join("state"),
        &out,
        &["--slow-retry", "1s"],
    );
    assert!(wait_until(Duration::from_secs(15), || run
        .stderr_text()
        .contains(&format!("log group {g} does not exist"))));
    std::thread::sleep(Duration::from_secs(2));
    assert!(run.child.try_wait().unwrap().is_none(), "must keep running");
    // Reported once, not on every retry.
    let said = format!("log group {g} does not exist");
    assert_eq!(run.stderr_text().matches(&said).count(), 1);
    emu.create_group(&g);
    emu.create_stream(&g, S1);
    let a = attack("missing", 20, now_ms(), 10, "203.0.113.9", "late-starter");
    emu.put(&g, S1, &a);
    assert!(
        wait_until(Duration::from_secs(30), || alerts(&out).len() >= 2),
        "stderr:\n{}",
        run.stderr_text()
    );
    assert!(run.stderr_text().contains("working again"));
    assert_fired_at(
        &alerts(&out),
        "denied-by-source-ip",
        "sourceIPs",
        "203.0.113.9",
        a[19].0,
    );
}

#[test]
fn a_corrupt_checkpoint_stops_the_run_unless_rebuild_is_asked_for() {
    let Some(ep) = emulator() else { return };
    let emu = Emu::new(&ep);
    let g = group_with_streams(&emu, "corrupt", &[S1]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("checkpoint.json"),
        "{\"version\":1,\"checksum\":\"00\",\"sta",
    )
    .unwrap();
    let out = dir.path().join("alerts.jsonl");
    let mut run = start_run(&ep, &g, &state, &out, &[]);
    let status = run.child.wait().unwrap();
    assert_eq!(status.code(), Some(2), "stderr:\n{}", run.stderr_text());
    let err = run.stderr_text();
    assert!(err.contains("checkpoint.json is corrupt"), "{err}");
    assert!(err.contains("--on-corrupt-state rebuild"), "{err}");

    let a = attack(
        "corrupt",
        20,
        now_ms() - 30_000,
        10,
        "203.0.113.33",
        "rebuilt",
    );
    emu.put(&g, S1, &a);
    let run = start_run(&ep, &g, &state, &out, &["--on-corrupt-state", "rebuild"]);
    assert!(
        wait_until(Duration::from_secs(30), || alerts(&out).len() >= 2),
        "stderr:\n{}",
        run.stderr_text()
    );
    assert!(run.stderr_text().contains("rebuilding from the look-back"));
    let aside = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains("corrupt-"));
    assert!(aside, "the corrupt file is kept for inspection");
}

#[test]
fn replay_of_a_closed_range_reads_it_and_ends() {
    let Some(ep) = emulator() else { return };
    let emu = Emu::new(&ep);
    let g = group_with_streams(&emu, "range", &[S1, S2]);
    let t0 = now_ms() - 600_000;
    let a = attack("range-in", 21, t0, 1_000, "203.0.113.61", "in-range");
    let b = attack(
        "range-out",
        21,
        t0 + 400_000,
        1_000,
        "203.0.113.62",
        "out-of-range",
    );
    emu.put(&g, S1, &a);
    emu.put(&g, S2, &b);
    let mut noise = Noise::load();
    emu.put(&g, S2, &noise.events(100, t0, 1_000));
    let o = authwatch_cmd(Some(&ep))
        .args(["replay", "--log-group", &g, "--start"])
        .arg(rfc3339_ms(t0 - 1_000))
        .arg("--end")
        .arg(rfc3339_ms(t0 + 300_000))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let got: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_fired_at(
        &got,
        "denied-by-source-ip",
        "sourceIPs",
        "203.0.113.61",
        a[19].0,
    );
    assert!(err.contains("121 records"), "{err}");
}

#[test]
fn an_authorization_error_names_the_permission_and_is_retried_until_it_clears() {
    let Some(ep) = emulator() else { return };
    let emu = Emu::new(&ep);
    let g = group_with_streams(&emu, "denied", &[S1]);
    let upstream = emulator_addr(&ep);
    let (proxy, stats, _stop) = start_denying_proxy(upstream, 3);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    let a = attack(
        "denied",
        20,
        now_ms() - 10_000,
        10,
        "203.0.113.3",
        "after-fix",
    );
    emu.put(&g, S1, &a);
    let mut run = start_run(
        &format!("http://{proxy}"),
        &g,
        &dir.path().join("state"),
        &out,
        &["--slow-retry", "1s"],
    );
    assert!(
        wait_until(Duration::from_secs(30), || alerts(&out).len() >= 2),
        "stderr:\n{}",
        run.stderr_text()
    );
    assert!(run.child.try_wait().unwrap().is_none(), "must keep running");
    let err = run.stderr_text();
    let said =
        format!("not authorized: the credentials need logs:DescribeLogStreams on log group {g}");
    assert_eq!(err.matches(&said).count(), 1, "{err}");
    assert!(err.contains("working again"), "{err}");
    assert_eq!(stats.denied.load(Ordering::Relaxed), 3);
    assert_fired_at(
        &alerts(&out),
        "denied-by-source-ip",
        "sourceIPs",
        "203.0.113.3",
        a[19].0,
    );
}

/// `GET path` on the run's HTTP address: (status, body).
#[test]
fn sigterm_stops_cleanly_with_state_and_alerts_and_http_shows_health_and_metrics() {
    let Some(ep) = emulator() else { return };
    let emu = Emu::new(&ep);
    let g = group_with_streams(&emu, "sigterm", &[S1]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    let state = dir.path().join("state");
    let addr = free_addr();
    let t0 = now_ms() - 30_000;
    let a = attack("sigterm", 22, t0, 200, "203.0.113.77", "oscar");
    emu.put(&g, S1, &a);
    let mut run = start_run(&ep, &g, &state, &out, &["--http-addr", &addr]);
    assert!(
        wait_until(Duration::from_secs(30), || alerts(&out).len() >= 2),
        "attack not alerted; stderr:\n{}",
        run.stderr_text()
    );
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok\n".into()));
    assert!(
        wait_until(Duration::from_secs(10), || http_get(&addr, "/readyz").0
            == 200),
        "{:?}",
        http_get(&addr, "/readyz")
    );
    let (status, metrics) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    for want in [
        "authwatch_alerts_total{rule=\"denied-by-source-ip\",severity=\"high\"} 1",
        "authwatch_alerts_total{rule=\"denied-by-user\",severity=\"high\"} 1",
        "authwatch_aws_api_calls_total{operation=\"FilterLogEvents\",outcome=\"ok\"}",
        "authwatch_events_total{outcome=\"parsed\"} 22",
        &format!("authwatch_records_total{{log_group=\"{g}\"}} 22"),
        "authwatch_sink_deliveries_total{sink=\"file:",
        &format!("authwatch_ingest_lag_seconds{{log_group=\"{g}\"}}"),
        "authwatch_state_writes_total",
    ] {
        assert!(metrics.contains(want), "{want} not in\n{metrics}");
    }
    // Read-only: anything but GET/HEAD is refused.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(s, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n").unwrap();
        let mut t = String::new();
        let _ = s.read_to_string(&mut t);
        assert!(
            t.starts_with("HTTP/1.0 405") || t.starts_with("HTTP/1.1 405"),
            "{t}"
        );
    }

    let stderr_path = run.stderr.clone();
    let status = sigterm_and_wait(&mut run.child, Duration::from_secs(10), || {
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    });
    assert_eq!(status.code(), Some(0), "stderr:\n{}", run.stderr_text());
    assert!(
        run.stderr_text().contains("SIGTERM: stopping"),
        "{}",
        run.stderr_text()
    );
    let checkpoint: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("checkpoint.json")).unwrap())
            .unwrap();
    let text = checkpoint.to_string();
    assert!(text.contains(&g), "{text}");
    let got = alerts(&out);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_fired_at(
        &got,
        "denied-by-source-ip",
        "sourceIPs",
        "203.0.113.77",
        a[19].0,
    );

    // A restart on that state sends nothing again.
    let mut again = start_run(&ep, &g, &state, &out, &["--http-addr", "off"]);
    std::thread::sleep(Duration::from_secs(5));
    again.kill9();
    let got = alerts(&out);
    unique_ids(&got);
    assert_eq!(got.len(), 2, "{got:#?}\n{}", again.stderr_text());
}

#[test]
fn a_state_dir_that_cannot_be_written_is_reported_and_alerting_goes_on() {
    let Some(ep) = emulator() else { return };
    let emu = Emu::new(&ep);
    let g = group_with_streams(&emu, "rofs", &[S1]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    let state = dir.path().join("state");
    let addr = free_addr();
    let mut run = start_run(&ep, &g, &state, &out, &["--http-addr", &addr]);
    let t0 = now_ms() - 10_000;
    emu.put(
        &g,
        S1,
        &attack("rofs-a", 20, t0, 100, "203.0.113.81", "amy"),
    );
    assert!(
        wait_until(Duration::from_secs(30), || alerts(&out).len() >= 2),
        "{}",
        run.stderr_text()
    );
    // The checkpoint can no longer be written (its temporary file's name is taken by a
    // directory: the same failure as a full or read-only volume, even for root).
    let blocker = state.join("checkpoint.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let saved = std::fs::read_to_string(state.join("checkpoint.json")).unwrap();
    emu.put(
        &g,
        S1,
        &attack("rofs-b", 20, now_ms(), 50, "203.0.113.82", "bob"),
    );
    assert!(
        wait_until(Duration::from_secs(30), || alerts(&out).len() >= 4),
        "alerting stopped; stderr:\n{}",
        run.stderr_text()
    );
    assert!(
        wait_until(Duration::from_secs(10), || run
            .stderr_text()
            .contains("cannot write the state")),
        "{}",
        run.stderr_text()
    );
    assert!(run.child.try_wait().unwrap().is_none(), "the run exited");
    let (_, metrics) = http_get(&addr, "/metrics");
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("authwatch_state_write_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(failures >= 1, "{metrics}");
    assert_eq!(
        std::fs::read_to_string(state.join("checkpoint.json")).unwrap(),
        saved,
        "the last good state must stay as it was"
    );
    // The volume comes back: writes resume and the position moves on.
    std::fs::remove_dir(&blocker).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || run
            .stderr_text()
            .contains("state writes work again")),
        "{}",
        run.stderr_text()
    );
    assert_ne!(
        std::fs::read_to_string(state.join("checkpoint.json")).unwrap(),
        saved
    );
    run.kill9();
    unique_ids(&alerts(&out));
}
