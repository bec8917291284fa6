//! Finding rule files: the bundled set (embedded at build time) or `--rules` paths.

use std::path::{Path, PathBuf};

use authwatch_rules::{check_unique_ids, load_rules, Rule, RuleError};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

pub use embedded::DEMO_FILES;

/// The name bundled rules carry as their source (`<bundled>/denied-by-host.yaml`).
pub const BUNDLED_PREFIX: &str = "<bundled>/";

/// Reads a rule test's `events_file`, relative to the rule's file (bundled rules read their
/// embedded fixtures).
pub fn load_fixture(rule_source: &str, rel: &str) -> Result<Vec<u8>, String> {
    if rule_source.starts_with(BUNDLED_PREFIX) {
        let rel = rel.trim_start_matches("./");
        return embedded::BUNDLED_RULE_FIXTURES
            .iter()
            .find(|(name, _)| *name == rel)
            .map(|(_, bytes)| bytes.to_vec())
            .ok_or_else(|| format!("no bundled fixture {rel}"));
    }
    let base = Path::new(rule_source).parent().unwrap_or(Path::new("."));
    std::fs::read(base.join(rel)).map_err(|e| e.to_string())
}

/// The bundled rule files, as (file name, text).
pub fn bundled() -> impl Iterator<Item = (&'static str, &'static str)> {
    embedded::BUNDLED_RULES
        .iter()
        .filter_map(|(name, bytes)| Some((*name, std::str::from_utf8(bytes).ok()?)))
}

/// Loads rules from `paths` (files, or directories of `*.yaml`/`*.yml`), or the bundled set
/// when `paths` is empty. Ids must be unique across everything loaded.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Rule>, RuleError> {
    let mut rules = Vec::new();
    if paths.is_empty() {
        for (name, text) in bundled() {
            rules.extend(load_rules(&format!("{BUNDLED_PREFIX}{name}"), text)?);
        }
    } else {
        for p in paths {
            for file in rule_files(p)? {
                let name = file.display().to_string();
                let text = std::fs::read_to_string(&file).map_err(|e| io_error(&name, e))?;
                rules.extend(load_rules(&name, &text)?);
            }
        }
    }
    if rules.is_empty() {
        return Err(RuleError {
            file: paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            rule: None,
            field: None,
            message: "no rules found (expected *.yaml or *.yml files)".into(),
        });
    }
    check_unique_ids(&rules)?;
    Ok(rules)
}

fn io_error(name: &str, e: std::io::Error) -> RuleError {
    RuleError {
        file: name.to_owned(),
        rule: None,
        field: None,
        message: e.to_string(),
    }
}

fn rule_files(p: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let name = p.display().to_string();
    let meta = std::fs::metadata(p).map_err(|e| io_error(&name, e))?;
    if !meta.is_dir() {
        return Ok(vec![p.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(p)
        .map_err(|e| io_error(&name, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}
