//! The structure pass alone, in bytes per second, by each of its methods: the byte walk (the
//! reference), the portable 64-byte block walk, and the AVX2 block walk (what replay runs on
//! a CPU that has it). On 20,000 generated events and on the shared corpus's Kubernetes
//! dataset, in memory.
//!
//! Run: `cargo bench -p authwatch-benches --bench structure`.

use std::io::Read;

use authwatch_benches::events;
use authwatch_event::structure::{scan_structure_with, Method};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

fn corpus_lines() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/corpus/hkerma_audit_logs.jsonl.gz"
    );
    let mut text = String::new();
    match std::fs::File::open(path) {
        Ok(f) => {
            if let Err(e) = flate2::read::MultiGzDecoder::new(f).read_to_string(&mut text) {
                eprintln!("{path}: {e}; corpus input skipped");
            }
        }
        Err(e) => eprintln!("{path}: {e}; corpus input skipped"),
    }
    text.lines().map(str::to_owned).collect()
}

fn bench(c: &mut Criterion) {
    eprintln!("fastest method here: {:?}", Method::best());
    for (input, lines) in [("generated", events(20_000)), ("corpus", corpus_lines())] {
        if lines.is_empty() {
            continue;
        }
        let bytes: usize = lines.iter().map(String::len).sum();
        let mut g = c.benchmark_group(format!("structure_pass/{input}"));
        g.throughput(Throughput::Bytes(bytes as u64));
        for method in [Method::ByteWalk, Method::Blocks, Method::BlocksAvx2] {
            g.bench_function(format!("{method:?}"), |b| {
                b.iter(|| {
                    lines
                        .iter()
                        .filter(|l| scan_structure_with(black_box(l.as_bytes()), method).is_ok())
                        .count()
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
