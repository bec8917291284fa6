//! `authwatch generate`: a seeded, reproducible synthetic EKS audit stream with planted
//! attacks, in any input framing, for the demo, tests and benchmarks.
//!
//! Traffic is mostly what a quiet cluster shows (kubelets, controllers, CoreDNS, an admin,
//! health checks; 2xx), with benign denial noise, and three planted attacks:
//! - a 403 burst from `198.51.100.7` by `system:serviceaccount:default:scanner` listing and
//!   reading secrets (fires `denied-by-source-ip` and `denied-by-user`);
//! - a 401 spray from 50 rotating addresses in 203.0.113.0/24 against one API server
//!   (no address or user reaches a threshold; fires `denied-by-host`);
//! - a low-and-slow prober: one service account denied listing secrets every two minutes,
//!   under every address, user and host threshold; only `secret-access-denied-for-service-account`
//!   (5 in 10 minutes) catches it, once the run is longer than ten minutes.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use authwatch_event::time::format_millis;
use authwatch_event::Micros;

/// Output framing of the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GenFormat {
    /// JSON Lines.
    Jsonl,
    /// A CloudWatch S3 export tree (`<task>/<stream>/NNNNNN.gz`).
    CwExport,
    /// `aws logs filter-log-events` pages, concatenated.
    FilterLogEvents,
}

/// Generator settings.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Number of events.
    pub events: u64,
    /// PRNG seed.
    pub seed: u64,
    /// Time of the first event.
    pub start: Micros,
    /// Events per second of simulated time.
    pub rate: u64,
    /// Number of API servers (log streams).
    pub streams: usize,
}

/// splitmix64: tiny, fast, and the same everywhere (reproducible data sets).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// One generated event with the API server it went to.
pub struct GenEvent {
    /// Index of the API server (log stream).
    pub stream: usize,
    /// Event time.
    pub time: Micros,
    /// The audit event's JSON.
    pub json: String,
}

struct Actor {
    user: &'static str,
    groups: &'static str,
    ip: &'static str,
    agent: &'static str,
}

const ACTORS: &[Actor] = &[
    Actor {
        user: "system:node:ip-10-0-1-17.eu-west-1.compute.internal",
        groups: r#"["system:nodes","system:authenticated"]"#,
        ip: "10.0.1.17",
        agent: "kubelet/v1.30.4 (linux/amd64) kubernetes/a8f2c1e",
    },
    Actor {
        user: "system:node:ip-10-0-2-41.eu-west-1.compute.internal",
        groups: r#"["system:nodes","system:authenticated"]"#,
        ip: "10.0.2.41",
        agent: "kubelet/v1.30.4 (linux/amd64) kubernetes/a8f2c1e",
    },
    Actor {
        user: "system:node:ip-10-0-3-88.eu-west-1.compute.internal",
        groups: r#"["system:nodes","system:authenticated"]"#,
        ip: "10.0.3.88",
        agent: "kubelet/v1.30.4 (linux/amd64) kubernetes/a8f2c1e",
    },
    Actor {
        user: "system:kube-controller-manager",
        groups: r#"["system:authenticated"]"#,
        ip: "10.0.0.10",
        agent: "kube-controller-manager/v1.30.4 (linux/amd64) kubernetes/a8f2c1e/leader-election",
    },
    Actor {
        user: "system:kube-scheduler",
        groups: r#"["system:authenticated"]"#,
        ip: "10.0.0.10",
        agent: "kube-scheduler/v1.30.4 (linux/amd64) kubernetes/a8f2c1e/leader-election",
    },
    Actor {
        user: "system:serviceaccount:kube-system:coredns",
        groups: r#"["system:serviceaccounts","system:serviceaccounts:kube-system","system:authenticated"]"#,
        ip: "10.0.2.41",
        agent: "coredns/v1.11.1 (linux/amd64) kubernetes/$Format",
    },
    Actor {
        user: "system:serviceaccount:kube-system:aws-node",
        groups: r#"["system:serviceaccounts","system:serviceaccounts:kube-system","system:authenticated"]"#,
        ip: "10.0.1.17",
        agent: "aws-node/v1.18.3 (linux/amd64) kubernetes/$Format",
    },
    Actor {
        user: "arn:aws:sts::111122223333:assumed-role/platform-admin/alice",
        groups: r#"["system:masters","system:authenticated"]"#,
        ip: "192.0.2.44",
        agent: "kubectl/v1.30.2 (darwin/arm64) kubernetes/39683505",
    },
    Actor {
        user: "system:serviceaccount:argocd:argocd-application-controller",
        groups: r#"["system:serviceaccounts","system:serviceaccounts:argocd","system:authenticated"]"#,
        ip: "10.0.3.88",
        agent: "argocd-application-controller/v2.11.3 (linux/amd64) kubernetes/$Format",
    },
];

const RESOURCES: &[&str] = &[
    "pods",
    "configmaps",
    "leases",
    "endpointslices",
    "nodes",
    "services",
    "events",
    "deployments",
    "replicasets",
    "secrets",
];
const NAMESPACES: &[&str] = &["default", "kube-system", "argocd", "payments", "monitoring"];
const VERBS: &[&str] = &[
    "get", "list", "watch", "update", "patch", "create", "get", "get", "list",
];

/// The log stream name of API server `i` (stable across runs).
pub fn stream_name(i: usize) -> String {
    // 32 hex digits, as EKS names audit streams; fixed per index so data sets are comparable.
    let mut rng = Rng(0x5eed ^ i as u64);
    format!(
        "kube-apiserver-audit-{:016x}{:016x}",
        rng.next(),
        rng.next()
    )
}

fn audit_id(rng: &mut Rng) -> String {
    let a = rng.next();
    let b = rng.next();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

#[allow(clippy::too_many_arguments)]
fn event_json(
    out: &mut String,
    rng: &mut Rng,
    t: Micros,
    user: Option<(&str, &str)>,
    ips: &[&str],
    agent: &str,
    verb: &str,
    resource: &str,
    namespace: &str,
    code: u16,
) {
    let id = audit_id(rng);
    let ts = format_millis(t);
    let stage_ts = format_millis(t + 1_000 + rng.below(40_000) as Micros);
    let uri = if verb == "list" || verb == "watch" {
        format!("/api/v1/namespaces/{namespace}/{resource}?limit=500&resourceVersion=0")
    } else {
        format!(
            "/api/v1/namespaces/{namespace}/{resource}/{resource}-{:x}",
            rng.below(4096)
        )
    };
    let user_json = match user {
        Some((u, g)) => format!(
            r#"{{"username":"{u}","uid":"aws-iam-authenticator:111122223333:AROA{:016X}","groups":{g},"extra":{{"accessKeyId":["ASIA{:016X}"],"sessionName":["{}"]}}}}"#,
            rng.next() >> 1,
            rng.next() >> 1,
            u.rsplit(':').next().unwrap_or(u)
        ),
        None => "{}".to_owned(),
    };
    let (status, reason) = match code {
        200 | 201 => (r#""metadata":{}"#.to_owned(), "allow"),
        401 => (
            r#""metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized""#
                .to_owned(),
            "",
        ),
        403 => (
            format!(
                r#""metadata":{{}},"status":"Failure","message":"{resource} is forbidden: User cannot {verb} resource \"{resource}\" in API group \"\" in the namespace \"{namespace}\"","reason":"Forbidden","details":{{"kind":"{resource}"}}"#
            ),
            "forbid",
        ),
        _ => (
            r#""metadata":{},"status":"Failure","reason":"NotFound""#.to_owned(),
            "allow",
        ),
    };
    let annotations = if code == 401 {
        String::new()
    } else {
        format!(
            r#","annotations":{{"authorization.k8s.io/decision":"{reason}","authorization.k8s.io/reason":"{}"}}"#,
            if reason == "allow" {
                "RBAC: allowed by ClusterRoleBinding \\\"system:basic-user\\\" of ClusterRole \\\"system:basic-user\\\" to Group \\\"system:authenticated\\\""
            } else {
                ""
            }
        )
    };
    // One event in twenty carries a large request object, as creates and updates do.
    let request_object = if (verb == "update" || verb == "patch" || verb == "create")
        && rng.below(4) == 0
    {
        let mut pad = String::with_capacity(4096);
        for i in 0..(20 + rng.below(60)) {
            let _ = write!(pad, r#""label-{i}":"value-{:x}","#, rng.next());
        }
        pad.pop();
        format!(
            r#","requestObject":{{"kind":"ConfigMap","apiVersion":"v1","metadata":{{"name":"cfg","namespace":"{namespace}","labels":{{{pad}}}}},"data":{{"k":"v"}}}}"#
        )
    } else {
        String::new()
    };
    let ips_json = ips
        .iter()
        .map(|ip| format!("\"{ip}\""))
        .collect::<Vec<_>>()
        .join(",");
    let _ = write!(
        out,
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"{uri}","verb":"{verb}","user":{user_json},"sourceIPs":[{ips_json}],"userAgent":"{agent}","objectRef":{{"resource":"{resource}","namespace":"{namespace}","apiVersion":"v1"}},"responseStatus":{{{status},"code":{code}}}{request_object},"requestReceivedTimestamp":"{ts}","stageTimestamp":"{stage_ts}"{annotations}}}"#
    );
}

/// Generates the events, calling `f` for each in time order.
pub fn generate(
    opts: &GenOptions,
    f: &mut dyn FnMut(GenEvent) -> io::Result<()>,
) -> io::Result<()> {
    let mut rng = Rng(opts.seed);
    let n = opts.events;
    let step = 1_000_000 / opts.rate.max(1) as Micros;
    // Attack positions, as fractions of the run.
    let burst_at = n * 2 / 5;
    let spray_at = n * 3 / 5;
    let burst_len = 60u64;
    let spray_len = 150u64;
    let mut json = String::with_capacity(4096);
    let mut next_slow = opts.start + 60_000_000;
    // Benign denials (RBAC races, rollouts) at about two a minute whatever the rate.
    let noise_one_in = opts.rate.max(1) * 30;
    for i in 0..n {
        json.clear();
        let t = opts.start + i as Micros * step + rng.below(step.max(1) as u64) as Micros;
        let mut stream = rng.below(opts.streams as u64) as usize;
        if n >= 400 && (burst_at..burst_at + burst_len).contains(&i) {
            let verb = if i % 2 == 0 { "list" } else { "get" };
            let ns = NAMESPACES[(i % NAMESPACES.len() as u64) as usize];
            event_json(
                &mut json,
                &mut rng,
                t,
                Some((
                    "system:serviceaccount:default:scanner",
                    r#"["system:serviceaccounts","system:serviceaccounts:default","system:authenticated"]"#,
                )),
                &["198.51.100.7"],
                "python-requests/2.31.0",
                verb,
                "secrets",
                ns,
                403,
            );
        } else if n >= 400 && (spray_at..spray_at + spray_len).contains(&i) {
            let ip = format!("203.0.113.{}", 10 + (i - spray_at) % 50);
            stream = 0;
            event_json(
                &mut json,
                &mut rng,
                t,
                None,
                &[&ip],
                "Go-http-client/1.1",
                "get",
                "namespaces",
                "default",
                401,
            );
        } else if t >= next_slow {
            // Low and slow: one denied request every two minutes from one address.
            next_slow = t + 120_000_000;
            event_json(
                &mut json,
                &mut rng,
                t,
                Some((
                    "system:serviceaccount:payments:api",
                    r#"["system:serviceaccounts","system:authenticated"]"#,
                )),
                &["10.0.4.200"],
                "curl/8.5.0",
                "list",
                "secrets",
                "payments",
                403,
            );
        } else {
            let a = &ACTORS[rng.below(ACTORS.len() as u64) as usize];
            let roll = rng.below(1000);
            let code = match roll {
                _ if rng.below(noise_one_in) == 0 => 403,
                0..=30 => 404,
                31..=60 => 201,
                _ => 200,
            };
            let verb = if code == 201 {
                "create"
            } else {
                rng.pick(VERBS)
            };
            let res = rng.pick(RESOURCES);
            let ns = rng.pick(NAMESPACES);
            let ips: Vec<&str> = if a.ip.starts_with("192.") {
                vec![a.ip, "10.0.0.5"]
            } else {
                vec![a.ip]
            };
            event_json(
                &mut json,
                &mut rng,
                t,
                Some((a.user, a.groups)),
                &ips,
                a.agent,
                verb,
                res,
                ns,
                code,
            );
        }
        f(GenEvent {
            stream,
            time: t,
            json: std::mem::take(&mut json),
        })?;
    }
    Ok(())
}

/// Writes a generated data set at `out` in `format` (`-` is standard output, JSON Lines only).
pub fn write(opts: &GenOptions, format: GenFormat, out: &Path) -> io::Result<()> {
    match format {
        GenFormat::Jsonl => {
            let w: Box<dyn Write> = if out.as_os_str() == "-" {
                Box::new(io::stdout().lock())
            } else {
                Box::new(std::fs::File::create(out)?)
            };
            let mut w = io::BufWriter::with_capacity(1 << 20, w);
            generate(opts, &mut |e| {
                w.write_all(e.json.as_bytes())?;
                w.write_all(b"\n")
            })?;
            w.flush()
        }
        GenFormat::CwExport => write_cw_export(opts, out),
        GenFormat::FilterLogEvents => {
            let mut w = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
            let mut page: Vec<String> = Vec::new();
            let flush_page =
                |page: &mut Vec<String>, w: &mut io::BufWriter<std::fs::File>| -> io::Result<()> {
                    writeln!(
                        w,
                        "{{\"events\":[{}],\"searchedLogStreams\":[]}}",
                        page.join(",")
                    )?;
                    page.clear();
                    Ok(())
                };
            let mut i = 0u64;
            generate(opts, &mut |e| {
                i += 1;
                let message = serde_json::to_string(&e.json).map_err(io::Error::other)?;
                page.push(format!(
                    r#"{{"logStreamName":"{}","timestamp":{},"message":{},"ingestionTime":{},"eventId":"{:056}"}}"#,
                    stream_name(e.stream),
                    e.time / 1000,
                    message,
                    e.time / 1000 + 900,
                    i
                ));
                if page.len() == 10_000 {
                    flush_page(&mut page, &mut w)?;
                }
                Ok(())
            })?;
            if !page.is_empty() {
                flush_page(&mut page, &mut w)?;
            }
            w.flush()
        }
    }
}

/// Events per export file before starting the next (`000000.gz`, `000001.gz`, ...).
const EXPORT_FILE_EVENTS: u64 = 50_000;

/// A run of whole lines for one stream's writer; `last_of_file` closes the current file.
struct Chunk {
    lines: Vec<u8>,
    last_of_file: bool,
}

fn write_cw_export(opts: &GenOptions, out: &Path) -> io::Result<()> {
    let task = out.join("8d9f6f2e-3c1a-4b7e-9f0d-2a5c7e1b4d60");
    // Compression is the cost: each stream's files are gzipped on a thread of their own.
    std::thread::scope(|s| -> io::Result<()> {
        let mut senders = Vec::with_capacity(opts.streams);
        let mut writers = Vec::with_capacity(opts.streams);
        for stream in 0..opts.streams {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(4);
            senders.push(tx);
            let dir: PathBuf = task.join(stream_name(stream));
            writers.push(s.spawn(move || -> io::Result<()> {
                std::fs::create_dir_all(&dir)?;
                let mut part = 0u64;
                let mut w: Option<flate2::write::GzEncoder<std::fs::File>> = None;
                for chunk in rx {
                    let enc = match w.as_mut() {
                        Some(enc) => enc,
                        None => {
                            let f = std::fs::File::create(dir.join(format!("{part:06}.gz")))?;
                            w.insert(flate2::write::GzEncoder::new(
                                f,
                                flate2::Compression::fast(),
                            ))
                        }
                    };
                    enc.write_all(&chunk.lines)?;
                    if chunk.last_of_file {
                        if let Some(enc) = w.take() {
                            enc.finish()?;
                        }
                        part += 1;
                    }
                }
                if let Some(enc) = w.take() {
                    enc.finish()?;
                }
                Ok(())
            }));
        }
        let mut buffers: Vec<(Vec<u8>, u64)> = (0..opts.streams).map(|_| (Vec::new(), 0)).collect();
        let closed = || io::Error::other("a writer thread stopped");
        generate(opts, &mut |e| {
            let (buf, n) = &mut buffers[e.stream];
            // CloudWatch's own timestamp trails the request by delivery delay.
            writeln!(buf, "{} {}", format_millis(e.time + 800_000), e.json)?;
            *n += 1;
            let last_of_file = *n % EXPORT_FILE_EVENTS == 0;
            if last_of_file || buf.len() >= 256 * 1024 {
                let lines = std::mem::take(buf);
                senders[e.stream]
                    .send(Chunk {
                        lines,
                        last_of_file,
                    })
                    .map_err(|_| closed())?;
            }
            Ok(())
        })?;
        for ((buf, _), tx) in buffers.into_iter().zip(&senders) {
            if !buf.is_empty() {
                tx.send(Chunk {
                    lines: buf,
                    last_of_file: false,
                })
                .map_err(|_| closed())?;
            }
        }
        drop(senders);
        for w in writers {
            w.join()
                .map_err(|_| io::Error::other("a writer thread panicked"))??;
        }
        Ok(())
    })?;
    std::fs::write(
        out.join("aws-logs-write-test"),
        "Permission Check Successful",
    )?;
    Ok(())
}
