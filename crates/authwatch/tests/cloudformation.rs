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

/// The template's ConsumerPolicy grants what `authwatch run --kinesis-stream` calls
/// (`authwatch::iam::KINESIS_RUN_ACTIONS`, itself checked against the code), except
/// `dynamodb:CreateTable` and `dynamodb:UpdateTimeToLive`: the template creates the table
/// with its time to live.
#[test]
fn the_consumer_policy_grants_the_kinesis_run_actions_but_table_creation() {
    let text =
        std::fs::read_to_string(repo().join("docker/kinesis/authwatch-kinesis.yaml")).unwrap();
    let start = text.find("  ConsumerPolicy:").expect("ConsumerPolicy");
    let end = text[start..]
        .find("\nOutputs:")
        .map_or(text.len(), |i| start + i);
    let mut granted: Vec<String> = text[start..end]
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
        .filter(|w| w.starts_with("kinesis:") || w.starts_with("dynamodb:"))
        .map(str::to_owned)
        .collect();
    granted.sort();
    granted.dedup();
    let mut wanted: Vec<String> = authwatch::iam::KINESIS_RUN_ACTIONS
        .iter()
        .filter(|a| !["dynamodb:CreateTable", "dynamodb:UpdateTimeToLive"].contains(*a))
        .map(|a| (*a).to_owned())
        .collect();
    wanted.sort();
    assert_eq!(granted, wanted);
}

/// The template's claims table is the one authwatch looks for beside its lease table.
#[test]
fn the_template_names_the_claims_table_as_authwatch_finds_it() {
    let text =
        std::fs::read_to_string(repo().join("docker/kinesis/authwatch-kinesis.yaml")).unwrap();
    let name_in = |resource: &str| -> String {
        let start = text
            .find(&format!("\n  {resource}:\n"))
            .unwrap_or_else(|| panic!("{resource}"));
        let line = text[start..]
            .lines()
            .find(|l| l.trim_start().starts_with("TableName:"))
            .unwrap();
        line.split("TableName:").nth(1).unwrap().trim().to_owned()
    };
    let leases = name_in("LeaseTable");
    assert_eq!(leases, "!Sub authwatch-${ClusterName}-leases");
    assert_eq!(
        name_in("AlertClaimsTable"),
        authwatch_aws::lease::claims_table_name(&leases)
    );
}

/// The multi-replica EKS manifest: a StatefulSet (a spool volume per replica) whose
/// configuration `authwatch config check` accepts as a Kinesis run.
#[test]
fn the_kinesis_eks_manifest_is_a_stateful_set_with_a_valid_config() {
    let text = std::fs::read_to_string(repo().join("docker/eks/authwatch-kinesis.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_norway::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .collect();
    let set = docs
        .iter()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("a StatefulSet");
    assert!(set["spec"]["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(
        set["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"][0],
        "ReadWriteOnce"
    );
    let c = &set["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|d| d["data"]["authwatch.yaml"].as_str())
        .expect("the ConfigMap's authwatch.yaml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("authwatch.yaml");
    std::fs::write(&file, config).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_authwatch"))
        .args(["config", "check", "--config"])
        .arg(&file)
        .env("AUTHWATCH_REPLICA_ID", "authwatch-0")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("kinesis-stream:"), "{out}");
    assert!(out.contains("AUTHWATCH_REPLICA_ID"), "{out}");
}
