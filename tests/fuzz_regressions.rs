//! Every input kept under `fuzz/regressions/<target>/` (crashes the fuzzer found, now fixed)
//! replayed through the fuzz target's own body (`fuzz/harness.rs`), so a regression is
//! caught by `cargo test` without libFuzzer or a nightly toolchain.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

#[test]
fn every_kept_fuzz_input_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut ran = 0;
    for (target, body) in harness::TARGETS {
        let dir = root.join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for path in files {
            if path.file_name().is_some_and(|n| n == "README.md") {
                continue;
            }
            let data = std::fs::read(&path).expect("readable regression input");
            eprintln!("{target}: {}", path.display());
            body(&data);
            ran += 1;
        }
    }
    eprintln!("{ran} regression inputs replayed");
}

#[test]
fn every_target_survives_trivial_inputs() {
    for (_, body) in harness::TARGETS {
        for data in [
            &b""[..],
            b"\n",
            b"{}",
            b"\0",
            b"\xff",
            b"[",
            b"{\"auditID\":1}",
        ] {
            body(data);
        }
    }
}
