//! The per-event hot path, piece by piece: prefilter, structure check, decode, match, window
//! update; and an end-to-end replay of a file.
//!
//! Run: `cargo bench -p authwatch-benches --bench pipeline`. Throughput is per event (and per
//! byte for decode). Inputs are 20,000 generated events (~1.2 KB each, mostly 2xx) and the
//! bundled rules.

use authwatch::replay::{replay, ReplayOptions};
use authwatch::sinks::AlertSink;
use authwatch::sources::files::FormatChoice;
use authwatch_benches::events;
use authwatch_event::{decode, visit_events, Decoded, EventView, RawRecord};
use authwatch_rules::field::EventFacts;
use authwatch_rules::{Alert, Engine, EngineConfig, Prefilter};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

struct Discard;
impl AlertSink for Discard {
    fn name(&self) -> &str {
        "discard"
    }
    fn deliver(&mut self, _: &Alert) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn bench(c: &mut Criterion) {
    let lines = events(20_000);
    let bytes: usize = lines.iter().map(String::len).sum();
    let rules = authwatch::rule_files::load(&[]).expect("bundled rules");
    let prefilter = Prefilter::new(&rules);
    let decoded: Vec<_> = lines
        .iter()
        .filter_map(|l| match decode(l.as_bytes()) {
            Ok(Decoded::Event(e)) => Some(e),
            _ => None,
        })
        .collect();
    let views: Vec<EventView<'_, '_>> = decoded
        .iter()
        .map(|e| EventView {
            event: e,
            host: Some("kube-apiserver-audit-0"),
            log_group: None,
            time: e.time(None),
        })
        .collect();
    let denied: Vec<&EventView<'_, '_>> = views
        .iter()
        .filter(|v| matches!(v.event.code(), Some(401 | 403)))
        .collect();

    let mut g = c.benchmark_group("per_event");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("prefilter", |b| {
        b.iter(|| {
            lines
                .iter()
                .filter(|l| prefilter.may_match(l.as_bytes()))
                .count()
        })
    });
    g.bench_function("structure_check", |b| {
        b.iter(|| {
            lines
                .iter()
                .filter(|l| authwatch_event::event::check_structure(l.as_bytes()).is_ok())
                .count()
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| {
            for l in &lines {
                let _ = black_box(decode(l.as_bytes()));
            }
        })
    });
    g.bench_function("match_all_rules", |b| {
        b.iter(|| {
            views
                .iter()
                .map(|v| {
                    let facts = EventFacts::new(v);
                    rules.iter().filter(|r| r.matches(&facts)).count()
                })
                .sum::<usize>()
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

    let mut g = c.benchmark_group("per_denied_event");
    g.throughput(Throughput::Elements(denied.len() as u64));
    g.bench_function("match_and_window_update", |b| {
        b.iter(|| {
            let mut engine = Engine::new(rules.clone(), EngineConfig::default());
            let mut alerts = Vec::new();
            for v in &denied {
                engine.observe(v, &mut alerts);
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

    let dir = std::env::temp_dir().join(format!("authwatch-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join("events.jsonl");
    let _ = std::fs::write(&file, lines.join("\n") + "\n");
    let mut g = c.benchmark_group("end_to_end");
    g.throughput(Throughput::Elements(lines.len() as u64));
    for threads in [1, 2] {
        g.bench_function(
            format!("replay_jsonl_default_rules_{threads}_threads"),
            |b| {
                b.iter(|| {
                    let opts = ReplayOptions {
                        inputs: vec![file.clone()],
                        format: FormatChoice::Auto,
                        max_lateness: 120_000_000,
                        cluster: None,
                        progress: false,
                        prefilter: true,
                        threads,
                        metrics: None,
                    };
                    let mut sink = Discard;
                    replay(&opts, rules.clone(), vec![&mut sink]).map(|s| s.alerts)
                })
            },
        );
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
