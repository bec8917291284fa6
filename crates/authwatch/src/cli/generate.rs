//! `authwatch generate`: a synthetic EKS audit data set with planted attacks.

use std::path::PathBuf;

use crate::generate::{GenFormat, GenOptions};
use anyhow::Context as _;
use authwatch_event::time::parse_timestamp;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Number of events.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Output framing.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: GenFormat,
    /// Output file (jsonl, filter-log-events; `-` for stdout) or directory (cw-export).
    #[arg(long, short)]
    out: PathBuf,
    /// PRNG seed: the same seed gives the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Time of the first event (RFC 3339).
    #[arg(long, default_value = "2026-11-20T10:00:00Z")]
    start: String,
    /// Events per second of simulated time.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Number of API servers (log streams).
    #[arg(long, default_value_t = 3)]
    streams: usize,
}

pub fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    let start = parse_timestamp(&args.start)
        .with_context(|| format!("--start `{}` is not an RFC 3339 time", args.start))?;
    anyhow::ensure!(args.streams >= 1, "--streams must be at least 1");
    let opts = GenOptions {
        events: args.events,
        seed: args.seed,
        start,
        rate: args.rate,
        streams: args.streams,
    };
    crate::generate::write(&opts, args.format, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))
}
