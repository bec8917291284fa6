//! `authwatch replay`: exported logs in, alerts and a summary out.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use authwatch_event::Micros;
use authwatch_rules::{Engine, EngineConfig, Rule, RuleError};

use std::collections::BTreeMap;
use std::sync::{mpsc, Mutex};

use authwatch_event::framing::{Format, FramingError};
use authwatch_event::RawRecord;

use crate::pipeline::{Outcome, Pipeline, Seen};
use crate::sinks::AlertSink;
use crate::sources::files::{
    frame_lines, plan, BlockTaker, FormatChoice, InputError, LineBlock, LineBuffers, Location, Plan,
};
use crate::summary::Summary;
use crate::telemetry::cloudwatch_metrics::{MetricsConfig, MetricsPublisher, UNKNOWN_CLUSTER};

/// What `authwatch replay` was asked to do.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Files, directories, or `-`.
    pub inputs: Vec<PathBuf>,
    /// `--format`.
    pub format: FormatChoice,
    /// `--max-lateness`.
    pub max_lateness: Micros,
    /// `--cluster`: put on every alert instead of the name derived from the log group.
    pub cluster: Option<String>,
    /// Show a progress bar (only ever on a terminal).
    pub progress: bool,
    /// Skip decoding records no rule can match (see [`Pipeline::new`]).
    pub prefilter: bool,
    /// Threads that decode and match (the reader and the engine have one each besides);
    /// 1 runs everything on the calling thread; 0 chooses (see [`Plan::choose_threads`]).
    pub threads: usize,
    /// Publish CloudWatch metrics (turns the prefilter off: every 401/403 is counted).
    pub metrics: Option<MetricsConfig>,
}

/// Why a replay failed; [`ReplayError::exit_code`] maps it to the process status.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A rule file is wrong.
    #[error("{0}")]
    Rules(#[from] RuleError),
    /// An input cannot be read.
    #[error("{0}")]
    Input(#[from] InputError),
    /// Alerts cannot be written.
    #[error("writing alerts: {0}")]
    Output(std::io::Error),
}

impl ReplayError {
    /// 2 for configuration errors, 1 for I/O failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReplayError::Rules(_) => 2,
            ReplayError::Input(_) | ReplayError::Output(_) => 1,
        }
    }
}

/// Plans and runs a replay of `opts.inputs` with `rules`, delivering alerts to `sinks`.
pub fn replay(
    opts: &ReplayOptions,
    rules: Vec<Rule>,
    sinks: Vec<&mut dyn AlertSink>,
) -> Result<Summary, ReplayError> {
    let started = Instant::now();
    let mut plan = plan(&opts.inputs, opts.format)?;
    let workers = plan.choose_threads(opts.threads);
    run_plan(
        &plan,
        &ReplayOptions {
            threads: workers,
            ..opts.clone()
        },
        rules,
        sinks,
        started,
    )
}

fn run_plan(
    plan: &Plan,
    opts: &ReplayOptions,
    rules: Vec<Rule>,
    sinks: Vec<&mut dyn AlertSink>,
    started: Instant,
) -> Result<Summary, ReplayError> {
    let engine = Engine::new(
        rules,
        EngineConfig {
            max_lateness: opts.max_lateness,
            cluster: opts.cluster.clone(),
            ..EngineConfig::default()
        },
    );
    let mut pipeline = Pipeline::new(engine, sinks, opts.prefilter);
    if let Some(config) = &opts.metrics {
        let publisher = MetricsPublisher::start(config.clone()).map_err(ReplayError::Output)?;
        let cluster = opts.cluster.as_deref().unwrap_or(UNKNOWN_CLUSTER);
        pipeline = pipeline.with_metrics(publisher, cluster);
    }
    let bytes = Arc::new(AtomicU64::new(0));
    let bar =
        (opts.progress && std::io::stderr().is_terminal()).then(|| progress_bar(plan.total_bytes));
    let show_progress = |records: u64| {
        if let Some(bar) = &bar {
            bar.set_position(bytes.load(Ordering::Relaxed));
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!("{:.0} events/s", records as f64 / secs));
        }
    };
    if opts.threads > 1 {
        run_parallel(
            plan,
            &bytes,
            &mut pipeline,
            opts.threads,
            &show_progress,
            &|_, _, _: &mut Vec<()>| {},
            &mut |_| {},
        )?;
    } else {
        let mut n = 0u64;
        let mut sink_error = None;
        let result = plan.run(&bytes, &mut |record, loc| {
            n += 1;
            if n.is_multiple_of(8192) {
                show_progress(n);
            }
            pipeline.on_record(record, loc).inspect_err(|e| {
                sink_error = Some(std::io::Error::new(e.kind(), e.to_string()));
            })
        });
        if let Some(e) = sink_error {
            return Err(ReplayError::Output(e));
        }
        result?;
    }
    pipeline.finish().map_err(ReplayError::Output)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let total_bytes = bytes.load(Ordering::Relaxed);
    Ok(Summary::new(
        plan.files,
        total_bytes,
        plan.formats.clone(),
        pipeline.counters(),
        pipeline.engine_stats(),
        started.elapsed().as_secs_f64(),
    ))
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = if total > 0 {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// One record of a [`Batch`]: where its bytes are and what the source knew about it.
struct RecordMeta {
    start: usize,
    end: usize,
    /// Indices in the batch's `texts`.
    stream: Option<u32>,
    log_group: Option<u32>,
    cw_timestamp: Option<authwatch_event::Micros>,
    name: u32,
    index: u64,
    is_line: bool,
    error: Option<FramingError>,
}

/// Records copied out of the reader's buffers, or a block of whole lines read into its buffers,
/// to be decoded on a worker thread.
struct Batch {
    seq: u64,
    /// The records' bytes, or a block's lines (`lines` is set) and where they end.
    buffers: LineBuffers,
    records: Vec<RecordMeta>,
    /// Set when the batch is a [`LineBlock`]: its lines are framed on the worker.
    lines: Option<Lines>,
    /// The file, stream and log group names its records have, each once per run of records
    /// that share it: an `Arc` per record would have its count moved on the reader's core
    /// and again on a worker's, for every record.
    texts: Vec<Arc<str>>,
    /// Where the last name, stream and log group are in `texts`.
    last: [Option<u32>; 3],
}

impl Batch {
    fn new(seq: u64) -> Batch {
        Batch {
            seq,
            buffers: LineBuffers {
                bytes: Vec::with_capacity(BATCH_BYTES + 64 * 1024),
                ends: Vec::new(),
            },
            records: Vec::with_capacity(4096),
            lines: None,
            texts: Vec::new(),
            last: [None; 3],
        }
    }

    /// Empties it for reuse, keeping its buffers. Its bytes keep their length too: a block
    /// read into them overwrites them without zeroing them first (see
    /// [`BlockTaker::block`]); records empty them before the first is copied in.
    fn clear(&mut self) {
        self.records.clear();
        self.lines = None;
        self.texts.clear();
        self.last = [None; 3];
    }

    /// The index in `texts` of `text`, a name of kind `slot` (0 file, 1 stream, 2 log
    /// group): the last one of that kind when it is the same text.
    fn text(&mut self, slot: usize, cache: &mut Option<Arc<str>>, text: &str) -> u32 {
        if let Some(i) = self.last[slot] {
            if &*self.texts[i as usize] == text {
                return i;
            }
        }
        // At most 3 texts a record and 16,384 records a batch.
        let i = self.texts.len() as u32;
        self.texts.push(shared(cache, text));
        self.last[slot] = Some(i);
        i
    }
}

/// What a [`Batch`] of whole lines holds besides its buffers.
struct Lines {
    format: Format,
    /// Index in the batch's `texts`.
    name: u32,
    first_line: u64,
}

/// A batch is handed to the workers at about this size.
const BATCH_BYTES: usize = 1 << 20;

/// Reuses the last `Arc<str>` when the text is the same (stream and file names repeat).
fn shared(cache: &mut Option<Arc<str>>, text: &str) -> Arc<str> {
    match cache {
        Some(a) if &**a == text => a.clone(),
        _ => {
            let a: Arc<str> = Arc::from(text);
            *cache = Some(a.clone());
            a
        }
    }
}

/// The reading thread's side of [`run_parallel`]: fills batches and sends them in order.
struct Batcher {
    batch: Batch,
    tx: mpsc::SyncSender<Batch>,
    /// Batches the workers have emptied.
    free: mpsc::Receiver<Batch>,
    /// The last file, stream and log group names (see [`shared`]).
    names: Option<Arc<str>>,
    streams: Option<Arc<str>>,
    groups: Option<Arc<str>>,
}

impl Batcher {
    /// Sends the batch being filled and starts the next.
    fn send(&mut self) -> std::io::Result<()> {
        let seq = self.batch.seq + 1;
        let next = match self.free.try_recv() {
            Ok(mut used) => {
                used.seq = seq;
                used
            }
            Err(_) => Batch::new(seq),
        };
        self.tx
            .send(std::mem::replace(&mut self.batch, next))
            .map_err(|_| std::io::Error::other("the pipeline stopped"))
    }

    /// Sends what is left (when the pipeline has stopped, there is no one to send it to).
    fn finish(mut self) {
        if !self.batch.records.is_empty() {
            let _ = self.send();
        }
    }
}

impl BlockTaker for Batcher {
    fn record(
        &mut self,
        record: Result<RawRecord<'_>, FramingError>,
        loc: Location<'_>,
    ) -> std::io::Result<()> {
        let batch = &mut self.batch;
        if batch.records.is_empty() {
            batch.buffers.bytes.clear();
        }
        let name = batch.text(0, &mut self.names, loc.name);
        let mut meta = RecordMeta {
            start: batch.buffers.bytes.len(),
            end: batch.buffers.bytes.len(),
            stream: None,
            log_group: None,
            cw_timestamp: None,
            name,
            index: loc.index,
            is_line: loc.is_line,
            error: None,
        };
        match record {
            Ok(r) => {
                batch.buffers.bytes.extend_from_slice(r.message);
                meta.end = batch.buffers.bytes.len();
                meta.stream = r.stream.map(|t| batch.text(1, &mut self.streams, t));
                meta.log_group = r.log_group.map(|t| batch.text(2, &mut self.groups, t));
                meta.cw_timestamp = r.cw_timestamp;
            }
            Err(e) => meta.error = Some(e),
        }
        batch.records.push(meta);
        if batch.buffers.bytes.len() >= BATCH_BYTES || batch.records.len() >= 16_384 {
            self.send()?;
        }
        Ok(())
    }

    fn block(&mut self, block: LineBlock<'_>) -> std::io::Result<LineBuffers> {
        // Batches keep input order: records before the block go first.
        if !self.batch.records.is_empty() {
            self.send()?;
        }
        let name = self.batch.text(0, &mut self.names, block.name);
        self.batch.lines = Some(Lines {
            format: block.format,
            name,
            first_line: block.first_line,
        });
        let spare = std::mem::replace(&mut self.batch.buffers, block.buffers);
        self.send()?;
        // The next block is read into the buffers of the batch that will carry it.
        Ok(std::mem::replace(&mut self.batch.buffers, spare))
    }
}

/// What a worker made of one batch: the pipeline's outcomes and what `also` took.
type Done<X> = (u64, Vec<Outcome>, Vec<X>);

/// Reads on one thread, decodes and matches on `workers` threads, and feeds the engine on
/// this one in input order (batches carry sequence numbers; out-of-order results wait).
/// `also` sees each record on its worker too (investigate takes its observations there);
/// `take` gets what it took, a batch at a time, in input order.
pub(crate) fn run_parallel<X: Send>(
    plan: &Plan,
    progress: &Arc<AtomicU64>,
    pipeline: &mut Pipeline<'_>,
    workers: usize,
    show_progress: &dyn Fn(u64),
    also: &(dyn Fn(&RawRecord<'_>, Seen<'_, '_>, &mut Vec<X>) + Sync),
    take: &mut dyn FnMut(Vec<X>),
) -> Result<(), ReplayError> {
    let (batch_tx, batch_rx) = mpsc::sync_channel::<Batch>(workers * 2);
    let batch_rx = Arc::new(Mutex::new(batch_rx));
    let (done_tx, done_rx) = mpsc::sync_channel::<Done<X>>(workers * 2);
    // Emptied batches go back to the reader: a fresh 1 MiB buffer for every batch costs a
    // page fault per 4 KiB written (about a third of a second of system time a 2.4 GB file).
    // At most the batches in flight come back, so this channel needs no bound.
    let (free_tx, free_rx) = mpsc::channel::<Batch>();
    // The same for the workers' outcome lists, handed back once the engine has taken them.
    let spare_outcomes: Mutex<Vec<Vec<Outcome>>> = Mutex::new(Vec::new());
    let spare_outcomes = &spare_outcomes;
    std::thread::scope(|s| {
        for _ in 0..workers {
            let rx = batch_rx.clone();
            let tx = done_tx.clone();
            let free = free_tx.clone();
            let mut worker = pipeline.worker();
            s.spawn(move || loop {
                let next = match rx.lock() {
                    Ok(guard) => guard.recv(),
                    Err(_) => break,
                };
                let Ok(mut batch) = next else { break };
                let mut out = spare_outcomes
                    .lock()
                    .ok()
                    .and_then(|mut spare| spare.pop())
                    .unwrap_or_else(|| Vec::with_capacity(batch.records.len().max(2048) * 2));
                let mut extra = Vec::new();
                let mut see = |r: &RawRecord<'_>, seen: Seen<'_, '_>| also(r, seen, &mut extra);
                if let Some(l) = &batch.lines {
                    // The sink never fails, so neither does the framing.
                    let _ = frame_lines(
                        l.format,
                        &batch.buffers,
                        &batch.texts[l.name as usize],
                        l.first_line,
                        &mut |record, loc| {
                            worker.process_seeing(record, &loc, &mut out, &mut see);
                            Ok(())
                        },
                    );
                }
                for m in &batch.records {
                    let loc = Location {
                        name: &batch.texts[m.name as usize],
                        index: m.index,
                        is_line: m.is_line,
                    };
                    let record = match &m.error {
                        Some(e) => Err(e.clone()),
                        None => Ok(RawRecord {
                            message: &batch.buffers.bytes[m.start..m.end],
                            stream: m.stream.map(|i| &*batch.texts[i as usize]),
                            log_group: m.log_group.map(|i| &*batch.texts[i as usize]),
                            cw_timestamp: m.cw_timestamp,
                            event_id: None,
                        }),
                    };
                    worker.process_seeing(record, &loc, &mut out, &mut see);
                }
                if tx.send((batch.seq, out, extra)).is_err() {
                    break;
                }
                batch.clear();
                // The reader may have finished: then the batch is just dropped.
                let _ = free.send(batch);
            });
        }
        drop(done_tx);
        drop(batch_rx);
        drop(free_tx);
        let reader = s.spawn(move || {
            let mut batcher = Batcher {
                batch: Batch::new(0),
                tx: batch_tx,
                free: free_rx,
                names: None,
                streams: None,
                groups: None,
            };
            let result = plan.run_in_blocks(progress, &mut batcher);
            batcher.finish();
            result
        });
        let mut next = 0u64;
        let mut held = BTreeMap::new();
        let mut records = 0u64;
        let mut sink_error = None;
        for (seq, outcomes, extra) in done_rx.iter() {
            held.insert(seq, (outcomes, extra));
            while let Some((mut outcomes, extra)) = held.remove(&next) {
                take(extra);
                records += outcomes.len() as u64;
                if let Err(e) = pipeline.accept(outcomes.drain(..)) {
                    sink_error = Some(e);
                    break;
                }
                if let Ok(mut spare) = spare_outcomes.lock() {
                    if spare.len() < workers * 4 {
                        spare.push(outcomes);
                    }
                }
                next += 1;
            }
            if sink_error.is_some() {
                break;
            }
            show_progress(records);
        }
        // Stops the workers, then the reader, if the sinks failed.
        drop(done_rx);
        let read = reader.join().map_err(|_| {
            ReplayError::Output(std::io::Error::other("the reader thread panicked"))
        })?;
        if let Some(e) = sink_error {
            return Err(ReplayError::Output(e));
        }
        read?;
        Ok(())
    })
}
