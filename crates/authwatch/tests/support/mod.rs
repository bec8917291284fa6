//! Helpers for the tests that run `authwatch run` against a CloudWatch Logs emulator (moto's
//! server, started by `.ci/run`): the emulator client, event builders, the binary as a child
//! process, and a fault-injecting HTTP proxy.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use aws_sdk_cloudwatchlogs::Client;
use serde_json::Value;

/// The emulator endpoint, or `None` (with a notice) when tests run locally without one.
/// Under CI (`CI=true`) a missing emulator is a failure, not a skip.
pub fn emulator() -> Option<String> {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but AWS_ENDPOINT_URL is unset: these tests need the CloudWatch Logs emulator (.ci/run starts moto_server)");
            }
            eprintln!("notice: AWS_ENDPOINT_URL is unset; skipping emulator test (run `bash .ci/run` or start moto_server and export AWS_ENDPOINT_URL)");
            None
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// RFC 3339 with milliseconds, as alerts print times.
pub fn rfc3339_ms(ms: i64) -> String {
    authwatch_event::time::format_millis(ms * 1000)
}

/// A log-group name no other test uses.
pub fn unique_group(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "/aws/eks/{tag}-{}-{}-{}/cluster",
        std::process::id(),
        now_ms(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// An emulator client with its own runtime (tests are synchronous).
pub struct Emu {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Emu {
    pub fn new(endpoint: &str) -> Emu {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let endpoint = endpoint.to_owned();
        let client = rt.block_on(async move {
            let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .endpoint_url(endpoint)
                .region(aws_config::Region::new("us-east-1"))
                .credentials_provider(aws_sdk_cloudwatchlogs::config::Credentials::new(
                    "test", "test", None, None, "static",
                ))
                .load()
                .await;
            Client::new(&conf)
        });
        Emu { rt, client }
    }

    pub fn create_group(&self, group: &str) {
        self.rt
            .block_on(self.client.create_log_group().log_group_name(group).send())
            .unwrap();
    }

    pub fn delete_stream(&self, group: &str, stream: &str) {
        self.rt
            .block_on(
                self.client
                    .delete_log_stream()
                    .log_group_name(group)
                    .log_stream_name(stream)
                    .send(),
            )
            .unwrap();
    }

    pub fn create_stream(&self, group: &str, stream: &str) {
        self.rt
            .block_on(
                self.client
                    .create_log_stream()
                    .log_group_name(group)
                    .log_stream_name(stream)
                    .send(),
            )
            .unwrap();
    }

    /// `PutLogEvents` (sorted by timestamp, as the API wants).
    pub fn put(&self, group: &str, stream: &str, events: &[(i64, String)]) {
        let mut events = events.to_vec();
        events.sort_by_key(|e| e.0);
        for chunk in events.chunks(5000) {
            let batch: Vec<InputLogEvent> = chunk
                .iter()
                .map(|(ts, m)| {
                    InputLogEvent::builder()
                        .timestamp(*ts)
                        .message(m.clone())
                        .build()
                        .unwrap()
                })
                .collect();
            self.rt
                .block_on(
                    self.client
                        .put_log_events()
                        .log_group_name(group)
                        .log_stream_name(stream)
                        .set_log_events(Some(batch))
                        .send(),
                )
                .unwrap();
        }
    }
}

/// A denied (403) audit event at `ms` from `ip` by `user`.
pub fn denied(audit_id: &str, ms: i64, ip: &str, user: &str) -> String {
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{audit_id}","stage":"ResponseComplete","requestURI":"/api/v1/secrets","verb":"list","user":{{"username":"{user}"}},"sourceIPs":["{ip}"],"userAgent":"attack/1.0","objectRef":{{"resource":"secrets","apiVersion":"v1"}},"responseStatus":{{"code":403}},"requestReceivedTimestamp":"{t}","stageTimestamp":"{t}"}}"#,
        t = rfc3339_ms(ms)
    )
}

/// `n` denied events `step` ms apart from `start`, as (timestamp, message).
pub fn attack(
    tag: &str,
    n: usize,
    start: i64,
    step: i64,
    ip: &str,
    user: &str,
) -> Vec<(i64, String)> {
    (0..n)
        .map(|i| {
            let t = start + i as i64 * step;
            (t, denied(&format!("{tag}-{i}"), t, ip, user))
        })
        .collect()
}

/// The shared corpus (falco traces and the audit2rbac demo) as background traffic: each line
/// re-timed to `ms` and given a unique auditID; lines that are not JSON objects are sent as is.
/// Lines that a one-request bundled rule matches (a posture rule, an exec denied: `threshold:
/// 1` or an absence rule's opening) are left out: such a line is an alert by itself, not
/// background (Falco's traces record attacks).
pub struct Noise {
    lines: Vec<String>,
    next: usize,
}

impl Noise {
    pub fn load() -> Noise {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
        let mut lines = Vec::new();
        for f in ["falco_k8s_audit.jsonl", "audit2rbac_demo.jsonl"] {
            let text = std::fs::read_to_string(root.join(f))
                .unwrap_or_else(|e| panic!("reading ../shared/corpus/{f}: {e}"));
            lines.extend(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned),
            );
        }
        let before = lines.len();
        let rules = authwatch::rule_files::load(&[]).expect("the bundled rules");
        let engine = authwatch_rules::Engine::new(rules, authwatch_rules::EngineConfig::default());
        let mut matcher = engine.matcher();
        lines.retain(|l| {
            let record = authwatch_event::RawRecord {
                message: l.as_bytes(),
                ..Default::default()
            };
            let mut alerting = false;
            authwatch_event::visit_events(&record, &mut |ev| {
                if let Ok(view) = ev {
                    let p = matcher.prepare(&view);
                    alerting |= p
                        .partitions()
                        .any(|(rule, _)| engine.rules()[rule].threshold == 1);
                }
            });
            !alerting
        });
        assert!(
            lines.len() > 60 && lines.len() < before,
            "corpus too small, or nothing left out: {} of {before}",
            lines.len()
        );
        Noise { lines, next: 0 }
    }

    pub fn event(&mut self, ms: i64) -> (i64, String) {
        let line = &self.lines[self.next % self.lines.len()];
        let n = self.next;
        self.next += 1;
        let msg = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(mut o)) => {
                let t = Value::String(rfc3339_ms(ms));
                for k in ["timestamp", "requestReceivedTimestamp", "stageTimestamp"] {
                    if o.contains_key(k) {
                        o.insert(k.into(), t.clone());
                    }
                }
                if let Some(Value::String(id)) = o.get("auditID").cloned() {
                    o.insert("auditID".into(), Value::String(format!("{id}-{n}")));
                }
                Value::Object(o).to_string()
            }
            _ => line.clone(),
        };
        (ms, msg)
    }

    pub fn events(&mut self, n: usize, start: i64, step: i64) -> Vec<(i64, String)> {
        (0..n)
            .map(|i| self.event(start + i as i64 * step))
            .collect()
    }
}

/// `authwatch run` as a child process.
pub struct Runner {
    pub child: Child,
    pub output: PathBuf,
    pub stderr: PathBuf,
}

/// Starts `authwatch run --log-group <group>` with test-friendly timings plus `extra` args,
/// talking to `endpoint`; alerts are appended to `output`, stderr to `<output>.stderr`.
pub fn start_run(
    endpoint: &str,
    group: &str,
    state_dir: &Path,
    output: &Path,
    extra: &[&str],
) -> Runner {
    start_run_with_env(endpoint, group, state_dir, output, extra, &[])
}

/// [`start_run`] with extra environment variables (fault injection).
pub fn start_run_with_env(
    endpoint: &str,
    group: &str,
    state_dir: &Path,
    output: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Runner {
    let stderr = output.with_extension(format!(
        "stderr{}",
        now_ms() // one file per process, so a restart does not overwrite the last one
    ));
    let child = authwatch_cmd(Some(endpoint))
        .args(["run", "--log-group", group, "--state-dir"])
        .arg(state_dir)
        .arg("--output")
        .arg(output)
        .args(
            [
                ("--poll-interval", "1s"),
                ("--rediscover-interval", "2s"),
                ("--api-rate", "20"),
                ("--max-lateness", "0s"),
                // Tests run in parallel: no shared default port.
                ("--http-addr", "off"),
            ]
            .iter()
            // `extra` overrides a default.
            .filter(|(flag, _)| !extra.contains(flag))
            .flat_map(|(flag, value)| [*flag, *value]),
        )
        .args(extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawn authwatch run");
    Runner {
        child,
        output: output.to_owned(),
        stderr,
    }
}

impl Runner {
    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The alert lines in `path` (complete lines only).
pub fn alerts(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `(rule, group JSON)` of each alert.
pub fn keys(alerts: &[Value]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = alerts
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_owned(),
                a["group"].to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Alert ids, panicking on a duplicate.
pub fn unique_ids(alerts: &[Value]) -> HashSet<String> {
    let mut ids = HashSet::new();
    for a in alerts {
        let id = a["alert_id"].as_str().unwrap().to_owned();
        assert!(ids.insert(id.clone()), "duplicate alert_id {id}: {a}");
    }
    ids
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    f()
}

/// A small deterministic PRNG (xorshift64*), so that a failing seed can be re-run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// What the proxy did.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub forwarded: AtomicU64,
    pub throttled: AtomicU64,
    pub server_errors: AtomicU64,
    pub resets: AtomicU64,
    pub denied: AtomicU64,
    /// Requests held back `slow_ms` before being forwarded.
    pub slowed: AtomicU64,
}

/// The fault mix of a proxy, changeable while it runs (a throttling storm that starts and
/// ends). Of the requests, `throttle_pct` % get a 400 `ThrottlingException`, `error_pct` %
/// a 500, `reset_pct` % a closed connection with no answer, `slow_pct` % are forwarded only
/// after `slow_ms` (an answer later than the client's timeout); the rest are forwarded.
#[derive(Debug, Default)]
pub struct FaultMix {
    pub throttle_pct: AtomicU64,
    pub error_pct: AtomicU64,
    pub reset_pct: AtomicU64,
    pub slow_pct: AtomicU64,
    pub slow_ms: AtomicU64,
    pub stop: AtomicBool,
    /// When set, only requests whose text contains this (an `X-Amz-Target` such as
    /// `Kinesis_20131202.PutRecords`) are subject to the mix; the rest are forwarded.
    pub only: std::sync::Mutex<Option<String>>,
}

impl FaultMix {
    /// Sets every percentage at once (and the slow delay).
    pub fn set(&self, throttle: u64, error: u64, reset: u64, slow: u64, slow_ms: u64) {
        self.throttle_pct.store(throttle, Ordering::Relaxed);
        self.error_pct.store(error, Ordering::Relaxed);
        self.reset_pct.store(reset, Ordering::Relaxed);
        self.slow_pct.store(slow, Ordering::Relaxed);
        self.slow_ms.store(slow_ms, Ordering::Relaxed);
    }
}

/// A fault-injecting HTTP/1.1 proxy on loopback in front of the emulator, with a fixed mix
/// (see [`FaultMix`]). One request per connection (moto answers `Connection: close` anyway).
pub fn start_fault_proxy(
    upstream: SocketAddr,
    seed: u64,
    throttle_pct: u64,
    error_pct: u64,
    reset_pct: u64,
) -> (SocketAddr, Arc<ProxyStats>, Arc<AtomicBool>) {
    let mix = Arc::new(FaultMix::default());
    mix.set(throttle_pct, error_pct, reset_pct, 0, 0);
    let (addr, stats) = start_proxy(upstream, seed, mix.clone(), 0);
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        mix.stop.store(true, Ordering::Relaxed);
    });
    (addr, stats, stop)
}

/// A fault-injecting proxy whose mix the test changes as it goes.
pub fn start_controlled_proxy(
    upstream: SocketAddr,
    seed: u64,
) -> (SocketAddr, Arc<ProxyStats>, Arc<FaultMix>) {
    let mix = Arc::new(FaultMix::default());
    let (addr, stats) = start_proxy(upstream, seed, mix.clone(), 0);
    (addr, stats, mix)
}

/// A proxy that answers the first `deny_first` requests with `AccessDeniedException` (as if
/// the role lacked the permission until someone fixed it), then forwards everything.
pub fn start_denying_proxy(
    upstream: SocketAddr,
    deny_first: u64,
) -> (SocketAddr, Arc<ProxyStats>, Arc<FaultMix>) {
    let mix = Arc::new(FaultMix::default());
    let (addr, stats) = start_proxy(upstream, 1, mix.clone(), deny_first);
    (addr, stats, mix)
}

fn start_proxy(
    upstream: SocketAddr,
    seed: u64,
    mix: Arc<FaultMix>,
    deny_first: u64,
) -> (SocketAddr, Arc<ProxyStats>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(ProxyStats::default());
    let st = stats.clone();
    std::thread::spawn(move || {
        let mut rng = Rng::new(seed);
        let mut n = 0u64;
        for conn in listener.incoming() {
            if mix.stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(mut conn) = conn else { continue };
            n += 1;
            if n <= deny_first {
                st.denied.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    if let Ok(Some(_)) = read_http_message(&mut conn) {
                        let body = r#"{"__type":"AccessDeniedException","message":"User: arn:aws:sts::123456789012:assumed-role/authwatch/test is not authorized to perform: logs:DescribeLogStreams"}"#;
                        let _ = conn.write_all(
                            format!(
                                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-ErrorType: AccessDeniedException\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        );
                    }
                });
                continue;
            }
            let fault = Fault::pick(rng.below(100), &mix);
            let only = mix.only.lock().unwrap().clone();
            let st = st.clone();
            std::thread::spawn(move || {
                let _ = proxy_one(conn, upstream, fault, only.as_deref(), &st);
            });
        }
    });
    (addr, stats)
}

/// What the proxy does to one request.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Throttle,
    ServerError,
    Reset,
    Slow(Duration),
    Forward,
}

impl Fault {
    fn pick(roll: u64, mix: &FaultMix) -> Fault {
        let mut edge = 0;
        for (pct, fault) in [
            (&mix.throttle_pct, Fault::Throttle),
            (&mix.error_pct, Fault::ServerError),
            (&mix.reset_pct, Fault::Reset),
            (
                &mix.slow_pct,
                Fault::Slow(Duration::from_millis(mix.slow_ms.load(Ordering::Relaxed))),
            ),
        ] {
            edge += pct.load(Ordering::Relaxed);
            if roll < edge {
                return fault;
            }
        }
        Fault::Forward
    }
}

pub fn read_http_message(s: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let header_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + len {
        let n = s.read(&mut tmp)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Ok(Some(buf))
}

fn proxy_one(
    mut client: TcpStream,
    upstream: SocketAddr,
    fault: Fault,
    only: Option<&str>,
    stats: &ProxyStats,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let Some(request) = read_http_message(&mut client)? else {
        return Ok(());
    };
    let fault = match only {
        Some(target)
            if !request
                .windows(target.len())
                .any(|w| w == target.as_bytes()) =>
        {
            Fault::Forward
        }
        _ => fault,
    };
    let canned = |status: &str, kind: &str| {
        let body = format!(r#"{{"__type":"{kind}","message":"injected by the test proxy"}}"#);
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-ErrorType: {kind}\r\nx-amzn-RequestId: proxy\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match fault {
        Fault::Throttle => {
            stats.throttled.fetch_add(1, Ordering::Relaxed);
            client.write_all(canned("400 Bad Request", "ThrottlingException").as_bytes())?;
        }
        Fault::ServerError => {
            stats.server_errors.fetch_add(1, Ordering::Relaxed);
            client.write_all(canned("500 Internal Server Error", "InternalFailure").as_bytes())?;
        }
        Fault::Reset => {
            stats.resets.fetch_add(1, Ordering::Relaxed);
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
        Fault::Slow(delay) => {
            // The request reaches the emulator (as a slow server would have taken it), the
            // answer comes late: a client that timed out must retry, not lose or double it.
            stats.slowed.fetch_add(1, Ordering::Relaxed);
            let response = forward(&request, upstream)?;
            std::thread::sleep(delay);
            client.write_all(&response)?;
        }
        Fault::Forward => {
            let response = forward(&request, upstream)?;
            client.write_all(&response)?;
            stats.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn forward(request: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(request)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    Ok(response)
}

/// A GET over HTTP/1.0 to `addr`: (status, body); (0, "") when nothing answers.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    (status, body)
}

/// The sum of the Prometheus samples named `name` whose labels contain `labels` (e.g.
/// `outcome="throttled"`, or "" for all) in `/metrics` at `addr`; 0 when there are none.
pub fn metric(addr: &str, name: &str, labels: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let series_name = series.split('{').next()?;
            (series_name == name && series.contains(labels)).then_some(value)
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// A loopback address with a port nobody listens on (for `--http-addr`).
pub fn free_addr() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// Sends SIGTERM to `child` and waits for it to exit, failing after `limit`.
pub fn sigterm_and_wait(
    child: &mut Child,
    limit: Duration,
    stderr: impl Fn() -> String,
) -> std::process::ExitStatus {
    let started = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            started.elapsed() < limit,
            "still running {limit:?} after SIGTERM; stderr:\n{}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An SDK configuration for the emulator at `endpoint` (static test credentials).
pub fn sdk_conf(rt: &tokio::runtime::Runtime, endpoint: &str) -> aws_config::SdkConfig {
    rt.block_on(
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_cloudwatchlogs::config::Credentials::new(
                "test", "test", None, None, "static",
            ))
            .load(),
    )
}

/// The emulator's socket address, for a proxy in front of it.
pub fn emulator_addr(endpoint: &str) -> SocketAddr {
    use std::net::ToSocketAddrs;
    endpoint
        .trim_start_matches("http://")
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap()
}

/// A new log group (see [`unique_group`]) with these streams.
pub fn group_with_streams(emu: &Emu, tag: &str, streams: &[&str]) -> String {
    let g = unique_group(tag);
    emu.create_group(&g);
    for s in streams {
        emu.create_stream(&g, s);
    }
    g
}

/// The authwatch binary with test credentials and region; `endpoint` is the emulator (every
/// service), when given.
pub fn authwatch_cmd(endpoint: Option<&str>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_authwatch"));
    c.env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test");
    if let Some(ep) = endpoint {
        c.env("AWS_ENDPOINT_URL", ep);
    }
    c
}

/// An SNS topic with an SQS queue subscribed to it, both named `name` (FIFO when asked:
/// `name` must then end in `.fifo`). Returns (topic ARN, queue URL).
pub async fn topic_with_queue(
    sns: &aws_sdk_sns::Client,
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    fifo: bool,
) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let mut t = sns.create_topic().name(name);
    let mut q = sqs.create_queue().queue_name(name);
    if fifo {
        t = t.attributes("FifoTopic", "true");
        q = q.attributes(QueueAttributeName::FifoQueue, "true");
    }
    let topic = t.send().await.unwrap().topic_arn.unwrap();
    let url = q.send().await.unwrap().queue_url.unwrap();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(arn)
        .send()
        .await
        .unwrap();
    (topic, url)
}

/// Writes, in `dir`, the rule of the sustained-attack restart and failover tests: 3 denials
/// from one address in 3 s, cooling down 5 s (short, so an attack outlasts a rebuild's
/// horizon within a test). Returns its path.
pub fn sustained_rule(dir: &Path) -> PathBuf {
    let path = dir.join("sustained.yaml");
    std::fs::write(
        &path,
        "id: sustained-denials\nseverity: high\nmatch: {responseStatus.code: 403}\ngroup_by: [sourceIPs]\nwindow: 3s\nthreshold: 3\ncooldown: 5s\n",
    )
    .unwrap();
    path
}

/// LocalStack's endpoint, or `None` (with a notice) outside CI.
pub fn localstack() -> Option<String> {
    match std::env::var("AUTHWATCH_LOCALSTACK_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but AUTHWATCH_LOCALSTACK_URL is unset: these tests need LocalStack (.ci/run starts it)");
            }
            eprintln!("notice: AUTHWATCH_LOCALSTACK_URL is unset; skipping the CloudWatch test");
            None
        }
    }
}

/// The metric series in a CloudWatch namespace, each as `Name Dim=value,...` (dimensions
/// sorted), sorted and without repeats.
pub fn metric_series(
    rt: &tokio::runtime::Runtime,
    cw: &aws_sdk_cloudwatch::Client,
    namespace: &str,
) -> Vec<String> {
    let listed = rt
        .block_on(cw.list_metrics().namespace(namespace).send())
        .unwrap();
    let mut seen: Vec<String> = listed
        .metrics()
        .iter()
        .map(|m| {
            let mut d: Vec<String> = m
                .dimensions()
                .iter()
                .map(|d| format!("{}={}", d.name().unwrap(), d.value().unwrap()))
                .collect();
            d.sort();
            format!("{} {}", m.metric_name().unwrap(), d.join(","))
        })
        .collect();
    seen.sort();
    seen.dedup();
    seen
}
