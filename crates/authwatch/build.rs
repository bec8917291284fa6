//! Embeds the bundled rules (`rules/*.yaml`) and the demo sample (`samples/`) into the binary,
//! so `authwatch replay` and `authwatch demo` work from any directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("../..")
        .canonicalize()
        .expect("workspace root");
    let mut code = String::new();
    for (name, dir, filter) in [
        ("BUNDLED_RULES", root.join("rules"), "yaml"),
        ("BUNDLED_RULE_FIXTURES", root.join("rules"), ""),
        ("DEMO_FILES", root.join("samples/demo"), ""),
    ] {
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut files = Vec::new();
        if name == "BUNDLED_RULE_FIXTURES" {
            // Test events of the bundled rules (`rules/tests/...`), for `rules test`.
            files_under(&dir.join("tests"), &mut files);
        } else if filter.is_empty() {
            files_under(&dir, &mut files);
        } else if let Ok(entries) = std::fs::read_dir(&dir) {
            files = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == filter))
                .collect();
            files.sort();
        }
        writeln!(code, "pub static {name}: &[(&str, &[u8])] = &[").unwrap();
        for f in files {
            println!("cargo:rerun-if-changed={}", f.display());
            let rel = f
                .strip_prefix(&dir)
                .expect("under dir")
                .to_string_lossy()
                .replace('\\', "/");
            writeln!(
                code,
                "    ({rel:?}, include_bytes!({:?})),",
                f.display().to_string()
            )
            .unwrap();
        }
        writeln!(code, "];").unwrap();
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("embedded.rs");
    std::fs::write(out, code).expect("write embedded.rs");
}
