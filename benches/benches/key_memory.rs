//! Memory per active key: 1,000,000 distinct source addresses, one denied request each,
//! all inside one 5-minute window (an address spray), through the bundled
//! `denied-by-source-ip` rule. Prints RSS before and after, and bytes per active key.
//!
//! Run: `cargo bench -p authwatch-benches --bench key_memory` (`-- 200000` for fewer keys,
//! `-- all` for the whole bundled set: a 401 spray then lands in two address rules).

use authwatch_event::time::{format_millis, parse_timestamp};
use authwatch_event::{visit_events, RawRecord};
use authwatch_rules::{Engine, EngineConfig};

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let n: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let all = std::env::args().any(|a| a == "all");
    let rules: Vec<_> = authwatch::rule_files::load(&[])
        .expect("bundled rules")
        .into_iter()
        .filter(|r| all || r.id == "denied-by-source-ip")
        .collect();
    println!(
        "rules: {}",
        rules
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let start = parse_timestamp("2026-11-20T10:00:00Z").unwrap_or_default();
    // No reorder buffer: RSS growth is then the keys' own state (plus the auditID
    // de-duplication memory of the same events), not events waiting to be ordered.
    let mut engine = Engine::new(
        rules,
        EngineConfig {
            max_lateness: 0,
            ..EngineConfig::default()
        },
    );
    let mut alerts = Vec::new();
    let before = rss_bytes();
    let t0 = std::time::Instant::now();
    let mut line = String::with_capacity(512);
    for i in 0..n {
        line.clear();
        // 1M events over 4 minutes: every key stays inside the 5-minute window.
        let t = start + i64::from(i) * 240_000_000 / i64::from(n);
        let ip = format!(
            "{}.{}.{}.{}",
            10 + (i >> 24),
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        );
        line.push_str(&format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"{i:08x}-0000-4000-8000-000000000000","verb":"get","requestURI":"/api/v1/namespaces","user":{{}},"sourceIPs":["{ip}"],"responseStatus":{{"code":401}},"requestReceivedTimestamp":"{}"}}"#,
            format_millis(t)
        ));
        let rec = RawRecord {
            message: line.as_bytes(),
            ..Default::default()
        };
        visit_events(&rec, &mut |v| {
            if let Ok(v) = v {
                engine.observe(&v, &mut alerts);
            }
        });
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let during = rss_bytes();
    let keys = engine.active_keys();
    engine.finish(&mut alerts);
    let after = rss_bytes();
    println!(
        "keys fed: {n}; active keys at the end of the feed: {keys}; alerts: {}",
        alerts.len()
    );
    println!(
        "RSS before {:.1} MiB, with {keys} active keys {:.1} MiB (after finish {:.1} MiB)",
        before as f64 / 1048576.0,
        during as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    println!(
        "bytes per active key (RSS growth / keys): {:.0}",
        (during.saturating_sub(before)) as f64 / keys.max(1) as f64
    );
    println!(
        "feed: {:.2} s, {:.0} events/s",
        elapsed,
        f64::from(n) / elapsed
    );
}
