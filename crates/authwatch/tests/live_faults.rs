//! Faults injected between `authwatch run` and the CloudWatch Logs emulator, and inside the
//! run itself (issue 9, part 4): a minute-long throttling storm, answers later than the
//! call timeout, and `kill -9` in the middle of a state write. Each test runs a reference
//! `authwatch run` on the same log group without faults: the faulty one must end with exactly
//! the reference's alerts (same ids, same counts, same windows), none twice.
//!
//! Connection resets, 500s and light throttling are in `live_cloudwatch.rs`; the SNS outage is
//! in `sns_delivery.rs`; an unwritable state directory in `live_cloudwatch.rs`.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const S1: &str = "kube-apiserver-audit-0123456789abcdef0123456789abcdef";
const S2: &str = "kube-apiserver-audit-fedcba9876543210fedcba9876543210";

/// What must agree between two runs: id, rule, key, count and window.
fn essence(alerts: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = alerts
        .iter()
        .map(|a| {
            format!(
                "{} {} {} count={} {}..{}",
                a["alert_id"],
                a["rule"],
                a["group"],
                a["count"],
                a["window_start"],
                a["window_end"]
            )
        })
        .collect();
    v.sort();
    v
}

/// Waits until `victim` has the reference's alerts (at least `expected` of them), then a
/// little longer so that a late duplicate would show; asserts equality and no duplicate id.
fn assert_same_alerts(
    reference: &Runner,
    victim: &Runner,
    expected: usize,
    within: Duration,
    what: &str,
) {
    let done = wait_until(within, || {
        let (r, v) = (alerts(&reference.output), alerts(&victim.output));
        r.len() >= expected && essence(&r) == essence(&v)
    });
    std::thread::sleep(Duration::from_secs(3));
    let (r, v) = (alerts(&reference.output), alerts(&victim.output));
    assert!(
        done && essence(&r) == essence(&v),
        "{what}: reference {} alerts, faulty run {}:\nref {:#?}\nfaulty {:#?}\nfaulty stderr:\n{}",
        r.len(),
        v.len(),
        essence(&r),
        essence(&v),
        victim.stderr_text()
    );
    assert!(r.len() >= expected, "{what}: only {} alerts", r.len());
    unique_ids(&r);
    unique_ids(&v);
}

/// A reference run straight to the emulator and a faulty one through the proxy at `proxy`
/// (serving `/metrics` on the returned address), both with `extra`.
fn reference_and_faulty(
    ep: &str,
    proxy: std::net::SocketAddr,
    g: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> (Runner, Runner, String) {
    let reference = start_run(ep, g, &dir.join("ref-state"), &dir.join("ref.jsonl"), extra);
    let http = free_addr();
    let mut faulty_extra = extra.to_vec();
    faulty_extra.extend(["--http-addr", http.as_str()]);
    let faulty = start_run(
        &format!("http://{proxy}"),
        g,
        &dir.join("state"),
        &dir.join("faulty.jsonl"),
        &faulty_extra,
    );
    (reference, faulty, http)
}

/// What [`feed`] puts: a background event every `every` for `length`, and `attacks`
/// attacks of 21 denials (each from a new address and user, alternating streams), the n-th
/// at `first + n × gap`.
struct Feed {
    length: Duration,
    attacks: u32,
    first: Duration,
    gap: Duration,
    every: Duration,
}

fn feed(emu: &Emu, g: &str, tag: &str, f: Feed) {
    let mut noise = Noise::load();
    let started = Instant::now();
    let mut planted = 0u32;
    while started.elapsed() < f.length {
        if planted < f.attacks && started.elapsed() >= f.first + f.gap * planted {
            let a = attack(
                &format!("{tag}-{planted}"),
                21,
                now_ms(),
                20,
                &format!("198.51.{}.{}", 100 + planted, 10 + tag.len()),
                &format!("{tag}-user-{planted}"),
            );
            emu.put(g, if planted.is_multiple_of(2) { S1 } else { S2 }, &a);
            planted += 1;
        }
        emu.put(g, S1, &[noise.event(now_ms())]);
        std::thread::sleep(f.every);
    }
}

/// 90 % of calls throttled for a whole minute, while attacks go on: alerts come late but
/// complete, and the run never spends more calls than its budget (`--api-rate`) however hard
/// it is pushed back.
#[test]
fn a_minute_of_ninety_percent_throttling_delays_alerts_but_loses_and_doubles_none() {
    let Some(ep) = emulator() else { return };
    let emu = Emu::new(&ep);
    let g = group_with_streams(&emu, "storm", &[S1, S2]);
    let (proxy, stats, mix) = start_controlled_proxy(emulator_addr(&ep), 90);
    let dir = tempfile::tempdir().unwrap();
    let api_rate = 5.0; // the account-wide FilterLogEvents limit
    let rate = api_rate.to_string();
    let extra = ["--api-rate", rate.as_str(), "--max-lateness", "2s"];
    mix.set(90, 0, 0, 0, 0);
    let storm_start = Instant::now();
    let (reference, victim, http) = reference_and_faulty(&ep, proxy, &g, dir.path(), &extra);
    feed(
        &emu,
        &g,
        "storm",
        Feed {
            length: Duration::from_secs(60),
            attacks: 3,
            first: Duration::from_secs(5),
            gap: Duration::from_secs(20),
            every: Duration::from_millis(500),
        },
    );
    let storm = storm_start.elapsed().as_secs_f64();
    let requests_in_storm =
        stats.throttled.load(Ordering::Relaxed) + stats.forwarded.load(Ordering::Relaxed);
    let throttled = stats.throttled.load(Ordering::Relaxed);
    mix.set(0, 0, 0, 0, 0);
    eprintln!("storm over after {storm:.0} s: {stats:?}");
    assert!(
        throttled >= 30,
        "the storm hardly happened: {throttled} throttled in {storm:.0} s"
    );
    // The bucket starts full (`api_rate` tokens) and refills at `api_rate` per second; every
    // attempt, retries included, takes a token.
    let budget = api_rate * storm + api_rate + 2.0;
    assert!(
        (requests_in_storm as f64) <= budget,
        "{requests_in_storm} calls in {storm:.0} s: over the budget of {budget:.0}"
    );
    // After the storm: every attack alerted on by both rules keyed on address and user.
    assert_same_alerts(
        &reference,
        &victim,
        6,
        Duration::from_secs(60),
        "after the storm",
    );
    // Counted where an operator looks: every throttled answer in /metrics.
    let counted = metric(&http, "authwatch_aws_throttles_total", "");
    assert!(
        counted >= throttled as f64 * 0.9,
        "{counted} throttles in /metrics, {throttled} injected"
    );
}

/// A third of the answers come 3 s late while the run gives each call 1 s (`--aws-timeout`):
/// the abandoned calls are retried and nothing is lost or counted twice.
#[test]
fn answers_later_than_the_call_timeout_are_retried_and_lose_nothing() {
    let Some(ep) = emulator() else { return };
    let emu = Emu::new(&ep);
    let g = group_with_streams(&emu, "slow", &[S1, S2]);
    let (proxy, stats, mix) = start_controlled_proxy(emulator_addr(&ep), 33);
    mix.set(0, 0, 0, 33, 3_000);
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--max-lateness", "2s", "--aws-timeout", "1s"];
    let (reference, victim, http) = reference_and_faulty(&ep, proxy, &g, dir.path(), &extra);
    feed(
        &emu,
        &g,
        "slow",
        Feed {
            length: Duration::from_secs(16),
            attacks: 2,
            first: Duration::from_secs(2),
            gap: Duration::from_secs(6),
            every: Duration::from_millis(400),
        },
    );
    assert_same_alerts(
        &reference,
        &victim,
        4,
        Duration::from_secs(45),
        "with slow answers",
    );
    let slowed = stats.slowed.load(Ordering::Relaxed);
    eprintln!("slow proxy: {stats:?}");
    assert!(slowed >= 3, "too few slow answers: {stats:?}");
    // Each abandoned call is counted as a transient error in /metrics.
    let counted = metric(
        &http,
        "authwatch_aws_api_calls_total",
        r#"outcome="transient_error""#,
    );
    assert!(
        counted >= 3.0,
        "{counted} transient errors in /metrics for {slowed} slow answers"
    );
}

/// `kill -9` while the state is being written (the write is made to pause halfway, so the
/// kill lands inside it), three times: the half-written temporary file is never taken for
/// the state, the previous state is kept and used, and the alerts end exactly as the
/// reference's, none twice.
#[test]
fn kill_9_inside_a_state_write_keeps_the_previous_state_and_loses_nothing() {
    let Some(ep) = emulator() else { return };
    let emu = Emu::new(&ep);
    let g = group_with_streams(&emu, "tornwrite", &[S1, S2]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = dir.path().join("victim.jsonl");
    let extra = ["--max-lateness", "2s"];
    let reference = start_run(
        &ep,
        &g,
        &dir.path().join("ref-state"),
        &dir.path().join("ref.jsonl"),
        &extra,
    );
    let pause = [("AUTHWATCH_FAULT_STATE_WRITE_PAUSE_MS", "1500")];
    let mut victim = start_run_with_env(&ep, &g, &state, &out, &extra, &pause);
    let tmp = state.join("checkpoint.json.tmp");
    let current = state.join("checkpoint.json");
    let mut noise = Noise::load();
    let mut torn_seen = 0;
    let mut started = std::time::SystemTime::now();
    for round in 0..3u32 {
        let ip = format!("198.51.100.{}", 120 + round);
        let a = attack(
            &format!("torn-{round}"),
            21,
            now_ms(),
            20,
            &ip,
            &format!("torn-user-{round}"),
        );
        emu.put(&g, if round % 2 == 0 { S1 } else { S2 }, &a);
        // Wait for a write in progress by this process (a temporary file newer than its
        // start: the one a killed write left behind does not count), note the state file as
        // it is then, and kill while the write pauses halfway.
        let mut previous = None;
        let inside = wait_until(Duration::from_secs(20), || {
            emu.put(&g, S1, &[noise.event(now_ms())]);
            let fresh = std::fs::metadata(&tmp)
                .is_ok_and(|m| m.len() > 0 && m.modified().is_ok_and(|t| t > started));
            if fresh {
                previous = std::fs::read(&current).ok();
            }
            fresh
        });
        assert!(
            inside,
            "round {round}: no state write seen\n{}",
            victim.stderr_text()
        );
        victim.kill9();
        let half = std::fs::read(&tmp).unwrap_or_default();
        if !half.is_empty() && serde_json::from_slice::<Value>(&half).is_err() {
            torn_seen += 1;
        }
        // The state file is the one from before the torn write, whole.
        let now = std::fs::read(&current).ok();
        assert_eq!(
            previous, now,
            "round {round}: the state changed under a torn write"
        );
        if let Some(after) = &now {
            let v: Value = serde_json::from_slice(after)
                .unwrap_or_else(|e| panic!("round {round}: the kept state is not JSON: {e}"));
            assert!(v["checksum"].is_string(), "{v}");
        }
        started = std::time::SystemTime::now();
        victim = start_run_with_env(&ep, &g, &state, &out, &extra, &pause);
    }
    assert!(torn_seen >= 1, "no kill landed inside a write");
    // The restarted run (still pausing in its writes) catches up without a duplicate.
    victim.kill9();
    let victim = start_run(&ep, &g, &state, &out, &extra);
    for _ in 0..6 {
        emu.put(&g, S2, &[noise.event(now_ms())]);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_same_alerts(
        &reference,
        &victim,
        6,
        Duration::from_secs(45),
        "after torn writes",
    );
    assert!(
        !victim.stderr_text().contains("corrupt"),
        "{}",
        victim.stderr_text()
    );
}
