//! The CloudFormation template for scale-out (`docker/kinesis/authwatch-kinesis.yaml`) is
//! valid: `cfn-lint` (from PyPI; `.ci/run` installs it next to moto) checks every resource
//! and property against the CloudFormation specification.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cfn_lint() -> Option<PathBuf> {
    let venv = repo().join(".emu-moto/bin/cfn-lint");
    if venv.exists() {
        return Some(venv);
    }
    Command::new("cfn-lint")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("cfn-lint"))
}

#[test]
fn the_kinesis_template_passes_cfn_lint() {
    let Some(lint) = cfn_lint() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but cfn-lint is not installed (.ci/run installs it into .emu-moto)");
        }
        eprintln!("notice: cfn-lint not found; skipping (pip install cfn-lint)");
        return;
    };
    let template = repo().join("docker/kinesis/authwatch-kinesis.yaml");
    let o = Command::new(lint).arg(&template).output().unwrap();
    assert!(
        o.status.success(),
        "cfn-lint {}:\n{}{}",
        template.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
