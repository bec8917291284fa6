//! [`SnsNotifier`]: alerts as Amazon SNS notifications, through an on-disk [`Spool`].
//!
//! `deliver` renders the alert into an [`SnsMessage`] and writes it to the spool (durable
//! before it returns), so the caller may move its position on; a delivery thread with its
//! own runtime publishes the spool in order (`Publish`, or `PublishBatch` when several are
//! waiting), retrying with backoff for as long as it takes. An SNS outage therefore delays
//! notifications but neither loses them nor slows detection, and a restart sends what the
//! previous process had not.
//!
//! Each message uses `MessageStructure=json`: a readable text (see [`super::notification`])
//! for `default` and `email`, the alert JSON for `sqs`, `lambda`, `https`, `firehose` and
//! `email-json`; message attributes `rule`, `severity` and `cluster` for subscription filter
//! policies; on FIFO topics `MessageGroupId` = rule and `MessageDeduplicationId` = alert id.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use authwatch_aws::backoff::{classify, Backoff, ErrorClass};
use authwatch_aws::ClientConfig;
use authwatch_rules::Alert;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use serde::{Deserialize, Serialize};

use super::notification::{clean, subject, text_body};
use super::spool::{Entry, Pushed, Spool, SpoolLimits};
use super::AlertSink;

/// SNS's limit on a message (and on a whole `PublishBatch`), bytes.
pub const MAX_SNS_BYTES: usize = 256 * 1024;

/// Keep the alert JSON small enough that the JSON message (which carries it five times,
/// once per protocol, plus the text) stays under [`MAX_SNS_BYTES`].
const MAX_ALERT_JSON_BYTES: usize = 40 * 1024;

/// Longest event-derived string in an alert JSON that had to be shortened.
const CAPPED_STRING_CHARS: usize = 1024;

/// Settings of the SNS sink.
#[derive(Debug, Clone)]
pub struct SnsConfig {
    /// The topic (`arn:aws:sns:...`; a name ending in `.fifo` is a FIFO topic).
    pub topic_arn: String,
    /// Where the spool lives (`<state dir>/spool/sns`).
    pub spool_dir: PathBuf,
    /// Spool bounds.
    pub spool_limits: SpoolLimits,
    /// `--region`.
    pub region: Option<String>,
    /// How long closing waits for the spool to drain.
    pub drain_timeout: Duration,
}

/// What is spooled and published for one alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnsMessage {
    /// `Subject` (ASCII, ≤ 100 characters).
    pub subject: String,
    /// The `MessageStructure=json` document.
    pub message: String,
    /// Attribute `rule`.
    pub rule: String,
    /// Attribute `severity`.
    pub severity: String,
    /// Attribute `cluster` (absent when unknown: SNS rejects empty attribute values).
    pub cluster: Option<String>,
    /// The alert id: FIFO de-duplication id, and for logs.
    pub alert_id: String,
}

impl SnsMessage {
    /// Renders an alert.
    pub fn from_alert(alert: &Alert) -> SnsMessage {
        let text = text_body(alert);
        let json = alert_json(alert);
        let doc = serde_json::json!({
            "default": text,
            "email": text,
            "email-json": json,
            "sqs": json,
            "lambda": json,
            "https": json,
            "firehose": json,
        });
        SnsMessage {
            subject: subject(alert),
            message: doc.to_string(),
            rule: clean(&alert.rule, 256),
            severity: alert.severity.as_str().to_owned(),
            cluster: alert
                .cluster
                .as_deref()
                .map(|c| clean(c, 256))
                .filter(|c| !c.is_empty()),
            alert_id: alert.alert_id.clone(),
        }
    }

    fn attributes(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![
            ("rule", self.rule.as_str()),
            ("severity", self.severity.as_str()),
        ];
        if let Some(c) = &self.cluster {
            v.push(("cluster", c.as_str()));
        }
        v
    }
}

/// The alert's JSON line; when event-derived strings make it too big for SNS, each of them
/// is cut to [`CAPPED_STRING_CHARS`] and `"truncated": true` is added.
pub fn alert_json(alert: &Alert) -> String {
    let line = alert.to_json_line();
    if line.len() <= MAX_ALERT_JSON_BYTES {
        return line;
    }
    let Ok(mut v) = serde_json::to_value(alert) else {
        return line;
    };
    cap_strings(&mut v);
    if let Some(o) = v.as_object_mut() {
        // Maps (codes, verbs) keyed by event values can be long too: keep their first keys.
        for map in ["codes", "verbs"] {
            if let Some(serde_json::Value::Object(m)) = o.get_mut(map) {
                let keep: serde_json::Map<_, _> = std::mem::take(m)
                    .into_iter()
                    .take(20)
                    .map(|(k, v)| (cap(&k), v))
                    .collect();
                *m = keep;
            }
        }
        o.insert("truncated".into(), serde_json::Value::Bool(true));
    }
    v.to_string()
}

fn cap(s: &str) -> String {
    match s.char_indices().nth(CAPPED_STRING_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn cap_strings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.len() > CAPPED_STRING_CHARS => *s = cap(s),
        serde_json::Value::Array(a) => a.iter_mut().for_each(cap_strings),
        serde_json::Value::Object(o) => o.values_mut().for_each(cap_strings),
        _ => {}
    }
}

/// Counters of the SNS sink, shared with its delivery thread.
#[derive(Debug, Default)]
pub struct SnsStats {
    /// Messages SNS accepted.
    pub published: AtomicU64,
    /// Failed attempts (calls or batch entries), each retried.
    pub failed_attempts: AtomicU64,
}

/// The SNS sink.
pub struct SnsNotifier {
    name: String,
    spool: Arc<Spool>,
    stats: Arc<SnsStats>,
    closing: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
    done: Option<mpsc::Receiver<()>>,
    drain_timeout: Duration,
    unspooled: u64,
}

impl SnsNotifier {
    /// Opens the spool (taking over what a previous run left in it) and starts the delivery
    /// thread.
    pub fn start(config: SnsConfig) -> io::Result<SnsNotifier> {
        let spool = Arc::new(Spool::open(&config.spool_dir, config.spool_limits)?);
        if !spool.is_empty() {
            tracing::info!(
                "authwatch: sns: {} notification(s) left in {} by an earlier run will be sent first",
                spool.len(),
                spool.dir().display()
            );
        }
        let stats = Arc::new(SnsStats::default());
        let closing = Arc::new(AtomicBool::new(false));
        let abort = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let worker = Delivery {
            spool: spool.clone(),
            stats: stats.clone(),
            closing: closing.clone(),
            abort: abort.clone(),
            topic_arn: config.topic_arn.clone(),
            fifo: config.topic_arn.ends_with(".fifo"),
            region: config.region.clone(),
        };
        thread::Builder::new()
            .name("sns-delivery".into())
            .spawn(move || {
                worker.run();
                let _ = tx.send(());
            })?;
        Ok(SnsNotifier {
            name: format!("sns:{}", config.topic_arn),
            spool,
            stats,
            closing,
            abort,
            done: Some(rx),
            drain_timeout: config.drain_timeout,
            unspooled: 0,
        })
    }

    /// Notifications waiting in the spool.
    pub fn pending(&self) -> usize {
        self.spool.len()
    }

    /// Counters.
    pub fn stats(&self) -> &SnsStats {
        &self.stats
    }

    /// Notifications refused because the spool was full.
    pub fn overflowed(&self) -> u64 {
        self.spool.overflowed()
    }
}

impl AlertSink for SnsNotifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, alert: &Alert) -> io::Result<()> {
        let msg = SnsMessage::from_alert(alert);
        let body = serde_json::to_vec(&msg).map_err(io::Error::other)?;
        let pushed = match self.spool.push(&body) {
            Ok(p) => p,
            Err(e) => {
                // The state directory cannot be written (full, read-only): this notification
                // cannot be kept. Counted and logged; detection and the other sinks go on.
                self.unspooled += 1;
                tracing::error!(
                    "authwatch: sns: cannot spool the notification for alert {} (rule {}) in {}: {e}; dropped ({} so far)",
                    alert.alert_id,
                    clean(&alert.rule, 100),
                    self.spool.dir().display(),
                    self.unspooled
                );
                return Ok(());
            }
        };
        match pushed {
            Pushed::Spooled(_) => Ok(()),
            Pushed::Overflow => {
                // Counted and logged; the other sinks still get the alert, and detection goes
                // on (a full spool means SNS has been failing for a long time).
                tracing::error!(
                    "authwatch: sns: spool {} is full ({} waiting); notification for alert {} (rule {}) dropped; {} dropped so far",
                    self.spool.dir().display(),
                    self.spool.len(),
                    alert.alert_id,
                    clean(&alert.rule, 100),
                    self.spool.overflowed()
                );
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // Spooled is durable; delivery goes on in the background.
        Ok(())
    }

    fn pending(&self) -> u64 {
        self.spool.len() as u64
    }

    fn dropped(&self) -> u64 {
        self.spool.overflowed() + self.spool.rejected() + self.unspooled
    }

    fn failed_attempts(&self) -> u64 {
        self.stats.failed_attempts.load(Ordering::Relaxed)
    }

    /// Waits up to the drain timeout for the spool to empty. What is left stays on disk for
    /// the next run; that is reported as an error so that a one-off replay does not look
    /// delivered when it is not.
    fn close(&mut self) -> io::Result<()> {
        self.closing.store(true, Ordering::SeqCst);
        self.spool.wake();
        if let Some(done) = self.done.take() {
            if done.recv_timeout(self.drain_timeout).is_err() {
                self.abort.store(true, Ordering::SeqCst);
                self.spool.wake();
            }
        }
        let left = self.spool.len();
        if left > 0 {
            return Err(io::Error::other(format!(
                "{left} notification(s) not yet accepted by SNS after {}s; they are kept in {} and sent by the next run with the same --state-dir",
                self.drain_timeout.as_secs(),
                self.spool.dir().display()
            )));
        }
        Ok(())
    }
}

impl Drop for SnsNotifier {
    fn drop(&mut self) {
        self.abort.store(true, Ordering::SeqCst);
        self.spool.wake();
    }
}

/// The delivery thread's state.
struct Delivery {
    spool: Arc<Spool>,
    stats: Arc<SnsStats>,
    closing: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
    topic_arn: String,
    fifo: bool,
    region: Option<String>,
}

/// What one publish attempt did.
enum Attempt {
    /// Everything was accepted or set aside.
    Done,
    /// Something must be tried again after a backoff.
    Retry(ErrorClass),
}

impl Delivery {
    fn run(self) {
        let rt = match crate::runtime() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::warn!("authwatch: sns: cannot start the delivery runtime: {e}");
                return;
            }
        };
        rt.block_on(self.deliver_forever());
    }

    async fn deliver_forever(self) {
        let shared = authwatch_aws::sdk_config(&ClientConfig {
            region: self.region.clone(),
            attempt_timeout: Some(Duration::from_secs(10)),
        })
        .await;
        let client = aws_sdk_sns::Client::new(&shared);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut last_report = Instant::now() - Duration::from_secs(3600);
        loop {
            if self.abort.load(Ordering::SeqCst) {
                return;
            }
            let batch = match self
                .spool
                .front(10, MAX_SNS_BYTES as u64, Duration::from_millis(200))
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("authwatch: sns: reading the spool: {e}");
                    self.sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                if self.closing.load(Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            match self.publish(&client, &batch).await {
                Attempt::Done => backoff.reset(),
                Attempt::Retry(class) => {
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    let delay = match class {
                        ErrorClass::Transient(_) => backoff.next_delay(),
                        // Permissions or a missing topic: an operator has to act; retry
                        // slowly and keep everything spooled meanwhile.
                        _ => backoff.next_delay().max(Duration::from_secs(5)),
                    };
                    // One line per 30 s at most while SNS keeps failing.
                    if last_report.elapsed() >= Duration::from_secs(30) {
                        last_report = Instant::now();
                        tracing::warn!(
                            "authwatch: sns: publish to {} failed ({}); {} notification(s) spooled, retrying",
                            self.topic_arn,
                            class.detail(),
                            self.spool.len()
                        );
                    }
                    self.sleep(delay).await;
                }
            }
        }
    }

    /// Sleeps, but wakes early when asked to abort.
    async fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end && !self.abort.load(Ordering::SeqCst) {
            tokio::time::sleep((end - Instant::now()).min(Duration::from_millis(100))).await;
        }
    }

    fn attributes(msg: &SnsMessage) -> Vec<(String, MessageAttributeValue)> {
        msg.attributes()
            .into_iter()
            .filter_map(|(k, v)| {
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(v)
                    .build()
                    .ok()
                    .map(|a| (k.to_owned(), a))
            })
            .collect()
    }

    async fn publish(&self, client: &aws_sdk_sns::Client, batch: &[Entry]) -> Attempt {
        let mut msgs = Vec::with_capacity(batch.len());
        for e in batch {
            match serde_json::from_slice::<SnsMessage>(&e.body) {
                Ok(m) => msgs.push((e.seq, m)),
                Err(err) => {
                    self.set_aside(e.seq, &format!("unreadable spool file: {err}"));
                    return Attempt::Done;
                }
            }
        }
        if let [(seq, m)] = msgs.as_slice() {
            let mut req = client
                .publish()
                .topic_arn(&self.topic_arn)
                .subject(&m.subject)
                .message(&m.message)
                .message_structure("json");
            for (k, v) in Self::attributes(m) {
                req = req.message_attributes(k, v);
            }
            if self.fifo {
                req = req
                    .message_group_id(&m.rule)
                    .message_deduplication_id(&m.alert_id);
            }
            return match req.send().await {
                Ok(_) => {
                    self.accepted(*seq);
                    Attempt::Done
                }
                Err(e) => match classify(&e) {
                    ErrorClass::Permanent(detail) => {
                        // The service will never take this message (e.g. too large);
                        // keep it aside rather than block every later one.
                        self.set_aside(*seq, &detail);
                        Attempt::Done
                    }
                    other => Attempt::Retry(other),
                },
            };
        }
        let mut req = client.publish_batch().topic_arn(&self.topic_arn);
        for (i, (_, m)) in msgs.iter().enumerate() {
            let mut entry = PublishBatchRequestEntry::builder()
                .id(i.to_string())
                .subject(&m.subject)
                .message(&m.message)
                .message_structure("json");
            for (k, v) in Self::attributes(m) {
                entry = entry.message_attributes(k, v);
            }
            if self.fifo {
                entry = entry
                    .message_group_id(&m.rule)
                    .message_deduplication_id(&m.alert_id);
            }
            match entry.build() {
                Ok(e) => req = req.publish_batch_request_entries(e),
                Err(err) => {
                    self.set_aside(msgs[i].0, &err.to_string());
                    return Attempt::Done;
                }
            }
        }
        let out = match req.send().await {
            Ok(o) => o,
            Err(e) => return Attempt::Retry(classify(&e)),
        };
        let mut retry: Option<ErrorClass> = None;
        let failed: Vec<_> = out.failed().to_vec();
        for (i, (seq, _)) in msgs.iter().enumerate() {
            let id = i.to_string();
            match failed.iter().find(|f| f.id() == id) {
                // Accepted. (When an earlier entry of the batch must be retried, this one
                // arrives before it: SNS gives no way to take it back.)
                None => self.accepted(*seq),
                Some(f) if f.sender_fault() => {
                    self.set_aside(
                        *seq,
                        &format!("{}: {}", f.code(), f.message().unwrap_or("")),
                    );
                }
                Some(f) => {
                    retry.get_or_insert(ErrorClass::Transient(format!(
                        "{}: {}",
                        f.code(),
                        f.message().unwrap_or("")
                    )));
                }
            }
        }
        match retry {
            Some(c) => Attempt::Retry(c),
            None => Attempt::Done,
        }
    }

    fn accepted(&self, seq: u64) {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.spool.remove(seq) {
            // It stays on disk and would be sent again by the next run: a duplicate, with
            // the same alert id, rather than a loss.
            tracing::warn!("authwatch: sns: removing a delivered message from the spool: {e}");
        }
    }

    fn set_aside(&self, seq: u64, why: &str) {
        match self.spool.reject(seq) {
            Ok(path) => tracing::warn!(
                "authwatch: sns: SNS will not accept notification {} ({why}); moved to {}",
                seq,
                path.display()
            ),
            Err(e) => tracing::warn!(
                "authwatch: sns: SNS will not accept notification {seq} ({why}), and moving it aside failed: {e}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(key: &str) -> Alert {
        crate::sinks::notification::tests::alert_with(key, key)
    }

    #[test]
    fn message_has_text_and_json_per_protocol() {
        let m = SnsMessage::from_alert(&alert("198.51.100.7"));
        let doc: serde_json::Value = serde_json::from_str(&m.message).unwrap();
        assert!(doc["default"].as_str().unwrap().contains("198.51.100.7"));
        assert_eq!(doc["email"], doc["default"]);
        let a: serde_json::Value = serde_json::from_str(doc["sqs"].as_str().unwrap()).unwrap();
        assert_eq!(a["rule"], "denied-by-source-ip");
        assert_eq!(a["group"]["sourceIPs"], "198.51.100.7");
        for p in ["lambda", "https", "firehose", "email-json"] {
            assert_eq!(doc[p], doc["sqs"], "{p}");
        }
        assert_eq!(
            m.attributes(),
            vec![
                ("rule", "denied-by-source-ip"),
                ("severity", "high"),
                ("cluster", "prod")
            ]
        );
    }

    #[test]
    fn huge_event_values_keep_the_message_under_the_sns_limit() {
        let m = SnsMessage::from_alert(&alert(&"x".repeat(300_000)));
        assert!(m.message.len() < MAX_SNS_BYTES, "{}", m.message.len());
        let doc: serde_json::Value = serde_json::from_str(&m.message).unwrap();
        let a: serde_json::Value = serde_json::from_str(doc["sqs"].as_str().unwrap()).unwrap();
        assert_eq!(a["truncated"], true);
        assert!(a["group"]["sourceIPs"].as_str().unwrap().starts_with("xxx"));
    }

    #[test]
    fn json_cannot_be_given_extra_fields() {
        let m = SnsMessage::from_alert(&alert("a\",\"severity\":\"low\"\n\r\u{1b}"));
        let doc: serde_json::Value = serde_json::from_str(&m.message).unwrap();
        let a: serde_json::Value = serde_json::from_str(doc["sqs"].as_str().unwrap()).unwrap();
        assert_eq!(a["severity"], "high");
        assert_eq!(
            a["group"]["sourceIPs"],
            "a\",\"severity\":\"low\"\n\r\u{1b}"
        );
    }
}
