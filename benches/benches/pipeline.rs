//! The per-event hot path: decode, match and count, alone and together.
//!
//! Run: `cargo bench -p authwatch-benches`. Throughput is reported per event and per byte.

use authwatch_benches::events;
use authwatch_event::{decode, visit_events, RawRecord};
use authwatch_rules::{Engine, EngineConfig};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let lines = events(20_000);
    let bytes: usize = lines.iter().map(String::len).sum();
    let rules = authwatch::rule_files::load(&[]).expect("bundled rules");

    let mut g = c.benchmark_group("per_event");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("decode", |b| {
        b.iter(|| {
            for l in &lines {
                let _ = black_box(decode(l.as_bytes()));
            }
        })
    });
    g.bench_function("decode_match_count", |b| {
        b.iter(|| {
            let mut engine = Engine::new(rules.clone(), EngineConfig::default());
            let mut alerts = Vec::new();
            for l in &lines {
                let rec = RawRecord {
                    message: l.as_bytes(),
                    stream: Some("kube-apiserver-audit-0"),
                    ..Default::default()
                };
                visit_events(&rec, &mut |ev| {
                    if let Ok(ev) = ev {
                        engine.observe(&ev, &mut alerts);
                    }
                });
            }
            engine.finish(&mut alerts);
            black_box(alerts.len())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("per_byte");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("decode", |b| {
        b.iter(|| {
            for l in &lines {
                let _ = black_box(decode(l.as_bytes()));
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
