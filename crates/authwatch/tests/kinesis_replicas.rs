//! `authwatch run --kinesis-stream` against the real emulator (moto's server: Logs, Kinesis,
//! DynamoDB; its Logs service delivers a subscription filter to Kinesis on each
//! `PutLogEvents`, one record a call with a random partition key, so one API server's events
//! spread over every shard). Several replicas run as separate processes; their alerts are
//! compared with `authwatch replay --log-group` over the same events.
//!
//! Every test uses its own log group, streams and lease table.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

const STREAMS: [&str; 3] = [
    "kube-apiserver-audit-0123456789abcdef0123456789abcdef",
    "kube-apiserver-audit-fedcba9876543210fedcba9876543210",
    "kube-apiserver-audit-aaaabbbbccccddddeeeeffff00001111",
];

/// A log group with a subscription filter to a new `shards`-shard stream, and a match
/// stream of `shards` shards. Returns (log group, source stream, match stream, lease table).
struct Setup {
    emu: Emu,
    group: String,
    source: String,
    matches: String,
    table: String,
    kinesis: aws_sdk_kinesis::Client,
    rt: tokio::runtime::Runtime,
}

fn setup(ep: &str, tag: &str, shards: i32) -> Setup {
    let emu = Emu::new(ep);
    let group = group_with_streams(&emu, tag, &STREAMS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let conf = sdk_conf(&rt, ep);
    let kinesis = aws_sdk_kinesis::Client::new(&conf);
    let logs = aws_sdk_cloudwatchlogs::Client::new(&conf);
    let base = format!("{tag}-{}-{}", std::process::id(), now_ms());
    let (source, matches) = (format!("{base}-src"), format!("{base}-match"));
    rt.block_on(async {
        for s in [&source, &matches] {
            kinesis
                .create_stream()
                .stream_name(s)
                .shard_count(shards)
                .send()
                .await
                .unwrap();
        }
        let arn = kinesis
            .describe_stream_summary()
            .stream_name(&source)
            .send()
            .await
            .unwrap()
            .stream_description_summary
            .unwrap()
            .stream_arn;
        logs.put_subscription_filter()
            .log_group_name(&group)
            .filter_name("authwatch")
            .filter_pattern("")
            .destination_arn(arn)
            .role_arn("arn:aws:iam::123456789012:role/cwl-to-kinesis")
            .send()
            .await
            .unwrap();
    });
    Setup {
        emu,
        group,
        source,
        matches,
        table: format!("{base}-leases"),
        kinesis,
        rt,
    }
}

impl Setup {
    fn replica(&self, ep: &str, dir: &Path, id: &str, extra: &[&str]) -> Runner {
        let out = dir.join(format!("{id}.jsonl"));
        let stderr = dir.join(format!("{id}.stderr{}", now_ms()));
        let child = authwatch_cmd(Some(ep))
            .args([
                "run",
                "--kinesis-stream",
                &self.source,
                "--match-stream",
                &self.matches,
            ])
            .args(["--lease-table", &self.table, "--replica-id", id])
            .args([
                "--lease-timeout",
                "3s",
                "--poll-interval",
                "1s",
                "--max-lateness",
                "2s",
            ])
            .args(["--http-addr", "off", "--state-dir"])
            .arg(dir.join(format!("{id}-state")))
            .arg("--output")
            .arg(&out)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn authwatch run --kinesis-stream");
        Runner {
            child,
            output: out,
            stderr,
        }
    }

    /// `authwatch replay --log-group` over [start, end]: the single-process reference.
    fn replay(&self, ep: &str, dir: &Path, start: i64, end: i64) -> Vec<serde_json::Value> {
        let out = dir.join("replay.jsonl");
        let status = authwatch_cmd(Some(ep))
            .args([
                "replay",
                "--log-group",
                &self.group,
                "--start",
                &rfc3339_ms(start),
                "--end",
                &rfc3339_ms(end),
            ])
            .args(["--max-lateness", "2s", "--quiet", "--state-dir"])
            .arg(dir.join("replay-state"))
            .arg("--output")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        alerts(&out)
    }

    /// Attacks from several API servers (each attack's events spread over all three audit
    /// streams, so over every shard), with noise; returns (first, last) timestamps.
    fn plant(&self, tag: &str, attacks: usize, noise: &mut Noise) -> (i64, i64) {
        let t0 = now_ms();
        let mut last = t0;
        for k in 0..attacks {
            let ip = format!("198.51.100.{}", 20 + k);
            let user = format!("{tag}-attacker-{k}");
            let a = attack(&format!("{tag}-a{k}"), 24, now_ms() - 500, 10, &ip, &user);
            for (i, s) in STREAMS.iter().enumerate() {
                let part: Vec<_> = a.iter().skip(i).step_by(3).cloned().collect();
                self.emu.put(&self.group, s, &part);
            }
            last = last.max(a.last().unwrap().0);
            self.emu
                .put(&self.group, STREAMS[k % 3], &[noise.event(now_ms())]);
            std::thread::sleep(Duration::from_millis(300));
        }
        (t0 - 1_000, last)
    }

    /// Keeps the watermark moving: a noise event now on each stream.
    fn tick(&self, noise: &mut Noise) {
        for s in STREAMS {
            self.emu.put(&self.group, s, &[noise.event(now_ms())]);
        }
    }

    fn split_shard(&self, shard: &str) {
        self.rt.block_on(async {
            self.kinesis
                .split_shard()
                .stream_name(&self.source)
                .shard_to_split(shard)
                .new_starting_hash_key("85070591730234615865843651857942052864")
                .send()
                .await
                .unwrap();
        });
    }
}

fn union(runners: &[&Runner]) -> Vec<serde_json::Value> {
    runners.iter().flat_map(|r| alerts(&r.output)).collect()
}

fn stderr_all(runners: &[&Runner]) -> String {
    runners
        .iter()
        .map(|r| format!("--- {}\n{}", r.stderr.display(), r.stderr_text()))
        .collect()
}

/// `n` replicas (separate processes) give the alerts `replay` gives, each exactly once.
fn replicas_match_replay(n: usize) {
    let Some(ep) = emulator() else { return };
    let s = setup(&ep, &format!("kin{n}"), 4);
    let dir = tempfile::tempdir().unwrap();
    let runners: Vec<Runner> = (0..n)
        .map(|i| s.replica(&ep, dir.path(), &format!("r{i}"), &[]))
        .collect();
    // Let the replicas create the table and share the leases before the events come.
    std::thread::sleep(Duration::from_secs(4));
    let mut noise = Noise::load();
    let (start, end) = s.plant(&format!("k{n}"), 4, &mut noise);
    let expected = 8;
    let refs: Vec<&Runner> = runners.iter().collect();
    let done = wait_until(Duration::from_secs(40), || {
        s.tick(&mut noise);
        std::thread::sleep(Duration::from_millis(500));
        union(&refs).len() >= expected
    });
    std::thread::sleep(Duration::from_secs(3));
    let got = union(&refs);
    assert!(
        done,
        "{} alerts of {expected}:\n{got:#?}\n{}",
        got.len(),
        stderr_all(&refs)
    );
    let reference = s.replay(&ep, dir.path(), start, end);
    assert_eq!(reference.len(), expected, "{reference:#?}");
    assert_eq!(keys(&got), keys(&reference));
    assert_eq!(unique_ids(&got), unique_ids(&reference));
    if n > 1 {
        // Every replica took part in the window stage or the match stage.
        let text = stderr_all(&refs);
        for r in &runners {
            assert!(r.stderr_text().contains("took shardId-"), "{text}");
        }
    }
}

#[test]
fn one_replica_gives_the_alerts_of_replay() {
    replicas_match_replay(1);
}

#[test]
fn two_replicas_give_the_alerts_of_replay_once() {
    replicas_match_replay(2);
}

#[test]
fn four_replicas_give_the_alerts_of_replay_once() {
    replicas_match_replay(4);
}

/// `kill -9` of a replica mid-run, seeds from `AUTHWATCH_KINESIS_KILL_SEEDS` (default 3): the
/// survivor takes its shards within the lease timeout, and the union of alerts equals replay,
/// with no alert id twice.
#[test]
fn kill_9_of_a_replica_loses_no_alert_and_sends_none_twice() {
    let Some(ep) = emulator() else { return };
    let seeds: u64 = std::env::var("AUTHWATCH_KINESIS_KILL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    for seed in 1..=seeds {
        let s = setup(&ep, &format!("kill{seed}"), 4);
        let dir = tempfile::tempdir().unwrap();
        let a = s.replica(&ep, dir.path(), "a", &[]);
        let mut b = s.replica(&ep, dir.path(), "b", &[]);
        std::thread::sleep(Duration::from_secs(4));
        let mut rng = Rng::new(seed);
        let mut noise = Noise::load();
        let rounds = 5usize;
        let kill_at = rng.below(rounds as u64) as usize;
        let t0 = now_ms() - 1_000;
        let mut last = t0;
        for round in 0..rounds {
            let ip = format!("203.0.113.{}", 10 + round);
            let user = format!("s{seed}-victim-{round}");
            let at = attack(
                &format!("s{seed}r{round}"),
                22,
                now_ms() - 400,
                15,
                &ip,
                &user,
            );
            for (i, st) in STREAMS.iter().enumerate() {
                let part: Vec<_> = at.iter().skip(i).step_by(3).cloned().collect();
                s.emu.put(&s.group, st, &part);
            }
            last = last.max(at.last().unwrap().0);
            if round == kill_at {
                std::thread::sleep(Duration::from_millis(rng.below(1_500)));
                b.kill9();
            }
            s.tick(&mut noise);
            std::thread::sleep(Duration::from_millis(700));
        }
        let expected = rounds * 2;
        let done = wait_until(Duration::from_secs(40), || {
            s.tick(&mut noise);
            std::thread::sleep(Duration::from_millis(500));
            union(&[&a, &b]).len() >= expected
        });
        std::thread::sleep(Duration::from_secs(4));
        let got = union(&[&a, &b]);
        assert!(
            done,
            "seed {seed}: {} alerts of {expected}:\n{got:#?}\n{}",
            got.len(),
            stderr_all(&[&a, &b])
        );
        let reference = s.replay(&ep, dir.path(), t0, last);
        assert_eq!(keys(&got), keys(&reference), "seed {seed}");
        assert_eq!(unique_ids(&got), unique_ids(&reference), "seed {seed}");
        assert!(a.stderr_text().contains("took shardId-"), "seed {seed}");
        eprintln!(
            "seed {seed}: killed b at round {kill_at}, {} alerts identical to replay",
            got.len()
        );
    }
}
