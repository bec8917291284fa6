//! Benchmark inputs: generated events (`authwatch generate`'s generator), in memory.

use authwatch::generate::{generate, GenOptions};
use authwatch_event::time::parse_timestamp;

/// `n` generated events as JSON lines (seed 1, 200 events/s, 3 API servers).
pub fn events(n: u64) -> Vec<String> {
    let opts = GenOptions {
        events: n,
        seed: 1,
        start: parse_timestamp("2026-11-20T10:00:00Z").unwrap_or_default(),
        rate: 200,
        streams: 3,
    };
    let mut out = Vec::with_capacity(n as usize);
    let _ = generate(&opts, &mut |e| {
        out.push(e.json);
        Ok(())
    });
    out
}
