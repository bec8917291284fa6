//! The container setup without a container (no base image can be pulled on our machines):
//! every manifest in `docker/` parses and says what docs/service.md promises; the IAM policies
//! grant exactly the actions of `authwatch::iam`, which is checked against the SDK calls in
//! the source; and the binary runs as the image's entrypoint would: as UID 65532, with only
//! the environment the manifests set, writing nothing outside its state directory, stopping
//! cleanly on SIGTERM.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml_docs(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_norway::Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::to_value(v).unwrap()
        })
        .collect()
}

fn kind<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == k)
        .unwrap_or_else(|| panic!("no {k}"))
}

fn assert_hardened(c: &Value, pod: &Value) {
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{c}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{c}");
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{c}"
    );
    let uid = sc["runAsUser"]
        .as_u64()
        .or_else(|| pod["securityContext"]["runAsUser"].as_u64());
    assert_eq!(uid, Some(65532), "{c}");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{c}");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{c}");
    assert!(c["resources"]["limits"]["memory"].is_string(), "{c}");
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/var/lib/authwatch"),
        "{c}"
    );
}

#[test]
fn eks_manifests_are_one_recreated_hardened_replica() {
    let docs = yaml_docs(&repo().join("docker/eks/authwatch.yaml"));
    let sa = kind(&docs, "ServiceAccount");
    assert!(sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        .as_str()
        .unwrap()
        .starts_with("arn:aws:iam::"));
    assert_eq!(
        kind(&docs, "PersistentVolumeClaim")["spec"]["accessModes"][0],
        "ReadWriteOnce"
    );
    let d = kind(&docs, "Deployment");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let pod = &d["spec"]["template"]["spec"];
    assert_hardened(&pod["containers"][0], pod);
    // The config in the ConfigMap is a valid run configuration (checked below with the
    // binary).
    let cm = kind(&docs, "ConfigMap");
    assert!(cm["data"]["authwatch.yaml"]
        .as_str()
        .unwrap()
        .contains("state-dir:"));

    let side = yaml_docs(&repo().join("docker/eks/sidecar.yaml"));
    let d = kind(&side, "Deployment");
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let pod = &d["spec"]["template"]["spec"];
    let aw = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "authwatch")
        .unwrap();
    assert_hardened(aw, pod);
}

#[test]
fn ecs_task_definition_has_role_health_check_and_stop_timeout() {
    let t: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("docker/ecs/task-definition.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(t["networkMode"], "awsvpc");
    assert!(t["taskRoleArn"].as_str().unwrap().contains(":role/"));
    let c = &t["containerDefinitions"][0];
    assert_eq!(c["user"], "65532:65532");
    assert_eq!(c["readonlyRootFilesystem"], true);
    assert_eq!(c["healthCheck"]["command"][1], "/usr/local/bin/authwatch");
    assert_eq!(c["healthCheck"]["command"][2], "healthcheck");
    assert!(c["stopTimeout"].as_u64().unwrap() >= 15);
    assert_eq!(c["logConfiguration"]["logDriver"], "awslogs");
    assert_eq!(c["mountPoints"][0]["containerPath"], "/var/lib/authwatch");
}

fn policy_actions(file: &str) -> BTreeSet<String> {
    let p: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("docker/iam").join(file)).unwrap(),
    )
    .unwrap();
    let mut out = BTreeSet::new();
    for s in p["Statement"].as_array().unwrap() {
        assert_eq!(s["Effect"], "Allow");
        assert!(
            !s["Action"].to_string().contains('*'),
            "no wildcard actions: {s}"
        );
        for a in s["Action"].as_array().unwrap() {
            out.insert(a.as_str().unwrap().to_owned());
        }
    }
    out
}

/// `client.<method>()` calls in a source file, as IAM actions of `service`.
fn sdk_calls(file: &str, service: &str) -> BTreeSet<String> {
    sdk_calls_in_file(&repo().join(file), service)
}

fn sdk_calls_in_file(path: &Path, service: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let re = regex::Regex::new(r"client\s*\.([a-z_]+)\(\)").unwrap();
    re.captures_iter(&text)
        .map(|c| authwatch::iam::action_of(service, &c[1]))
        .collect()
}

/// [`sdk_calls`] of every `.rs` file under `dir` (a directory module), subdirectories
/// included.
fn sdk_calls_in_dir(dir: &str, service: &str) -> BTreeSet<String> {
    fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rs_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    rs_files(&repo().join(dir), &mut files);
    assert!(!files.is_empty(), "no .rs file under {dir}");
    files
        .iter()
        .flat_map(|f| sdk_calls_in_file(f, service))
        .collect()
}

#[test]
fn iam_policies_grant_exactly_the_calls_the_code_makes() {
    let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    let mut run_calls = sdk_calls("crates/authwatch-aws/src/reader.rs", "logs");
    run_calls.extend(sdk_calls("crates/authwatch/src/sinks/sns.rs", "sns"));
    run_calls.extend(sdk_calls(
        "crates/authwatch/src/telemetry/cloudwatch_metrics.rs",
        "cloudwatch",
    ));
    assert_eq!(run_calls, set(authwatch::iam::RUN_ACTIONS));
    assert_eq!(
        sdk_calls("crates/authwatch/src/alarms.rs", "cloudwatch"),
        set(authwatch::iam::ALARMS_SYNC_ACTIONS)
    );
    assert_eq!(
        policy_actions("run-policy.json"),
        set(authwatch::iam::RUN_ACTIONS)
    );
    assert_eq!(
        policy_actions("alarms-sync-policy.json"),
        set(authwatch::iam::ALARMS_SYNC_ACTIONS)
    );
    let mut kinesis_calls = sdk_calls("crates/authwatch-aws/src/kinesis.rs", "kinesis");
    kinesis_calls.extend(sdk_calls_in_dir(
        "crates/authwatch-aws/src/lease",
        "dynamodb",
    ));
    assert_eq!(kinesis_calls, set(authwatch::iam::KINESIS_RUN_ACTIONS));
    assert_eq!(
        policy_actions("kinesis-run-policy.json"),
        set(authwatch::iam::KINESIS_RUN_ACTIONS)
    );
    // Logs actions only on the cluster's log group.
    let p: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("docker/iam/run-policy.json")).unwrap(),
    )
    .unwrap();
    let logs = p["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Action"][0].as_str().unwrap().starts_with("logs:"))
        .unwrap();
    for r in logs["Resource"].as_array().unwrap() {
        assert!(r.as_str().unwrap().contains(":log-group:/aws/eks/"), "{r}");
    }
    let cw = p["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Action"][0] == "cloudwatch:PutMetricData")
        .unwrap();
    assert!(cw["Condition"]["StringEquals"]["cloudwatch:namespace"].is_string());
}

#[test]
fn dockerfile_runs_non_root_with_a_volume_and_a_self_health_check() {
    let d = std::fs::read_to_string(repo().join("docker/Dockerfile")).unwrap();
    assert!(
        d.contains("FROM rust:"),
        "build stage in the official Rust image"
    );
    assert!(d.contains("FROM gcr.io/distroless/"), "minimal run stage");
    assert!(d.contains("USER 65532:65532"));
    assert!(d.contains("VOLUME [\"/var/lib/authwatch\"]"));
    assert!(d.contains("HEALTHCHECK") && d.contains("\"healthcheck\""));
    assert!(d.contains("ENTRYPOINT [\"/usr/local/bin/authwatch\", \"run\"]"));
}

/// Files under `root` (a few levels deep) owned by `uid`.
fn owned_by(root: &Path, uid: u32, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.uid() == uid {
            out.push(p.clone());
        }
        if m.is_dir() && depth > 0 {
            owned_by(&p, uid, depth - 1, out);
        }
    }
}

#[test]
fn runs_as_the_image_entrypoint_unprivileged_writing_only_its_state_dir() {
    let Some(ep) = emulator() else { return };
    let root_user = nix_uid() == 0;
    let uid: u32 = if root_user { 65532 } else { nix_uid() };
    let emu = Emu::new(&ep);
    let g = unique_group("image");
    emu.create_group(&g);
    let stream = "kube-apiserver-audit-0123456789abcdef0123456789abcdef";
    emu.create_stream(&g, stream);
    let t0 = now_ms() - 20_000;
    emu.put(
        &g,
        stream,
        &attack("image", 21, t0, 100, "203.0.113.99", "eve"),
    );

    // A root of its own: readable by everyone, writable only by the test, except the state
    // directory, which belongs to the service user (as a volume would).
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    if root_user {
        std::os::unix::fs::chown(&state, Some(uid), Some(uid)).unwrap();
    }
    let addr = free_addr();
    // The image's example config, pointed at the test's log group, state dir and port.
    let example = std::fs::read_to_string(repo().join("docker/authwatch.yaml")).unwrap();
    let config = example
        .replace("cluster: [prod]", &format!("log-group: [\"{g}\"]"))
        .replace(
            "state-dir: /var/lib/authwatch",
            &format!("state-dir: {}", state.display()),
        )
        .replace("http-addr: 0.0.0.0:9180", &format!("http-addr: {addr}"))
        .replace("poll-interval: 2s", "poll-interval: 1s")
        .replace("max-lateness: 5s", "max-lateness: 0s");
    assert_ne!(config, example);
    let config_path = dir.path().join("authwatch.yaml");
    std::fs::write(&config_path, config).unwrap();
    let out_path = dir.path().join("stdout.jsonl");
    let err_path = dir.path().join("stderr.txt");

    let mut before = Vec::new();
    owned_by(Path::new("/tmp"), uid, 2, &mut before);
    let bin = env!("CARGO_BIN_EXE_authwatch");
    let as_service = |args: &[&str]| {
        let mut c = if root_user {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--inh-caps=-all",
                bin,
            ]);
            c
        } else {
            Command::new(bin)
        };
        // Only what the manifests set (plus the emulator's endpoint and static keys, which
        // stand in for IRSA): no HOME, no PATH, nothing else.
        c.args(args)
            .env_clear()
            .env("AUTHWATCH_CONFIG", &config_path)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &ep)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .current_dir(dir.path());
        c
    };
    let mut child = as_service(&["run"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let stderr = || std::fs::read_to_string(&err_path).unwrap_or_default();
    let ok = wait_until(Duration::from_secs(30), || alerts(&out_path).len() >= 2);
    if !ok {
        let _ = child.kill();
    }
    assert!(ok, "no alerts; stderr:\n{}", stderr());
    assert!(
        wait_until(Duration::from_secs(10), || as_service(&[
            "healthcheck",
            "--addr",
            &addr,
            "--ready"
        ])
        .status()
        .unwrap()
        .success()),
        "healthcheck failed"
    );
    let status = sigterm_and_wait(&mut child, Duration::from_secs(10), stderr);
    assert_eq!(status.code(), Some(0), "{}", stderr());
    assert!(state.join("checkpoint.json").exists());

    // Nothing written outside the state directory: in its root only our own files, and no
    // file of the service user anywhere in /tmp that was not there before.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["authwatch.yaml", "state", "stderr.txt", "stdout.jsonl"]
    );
    if root_user {
        let mut mine = Vec::new();
        owned_by(dir.path(), uid, 5, &mut mine);
        for p in &mine {
            assert!(
                p.starts_with(&state),
                "written outside the state dir: {}",
                p.display()
            );
        }
        let mut after = Vec::new();
        owned_by(Path::new("/tmp"), uid, 2, &mut after);
        after.retain(|p| !before.contains(p) && !p.starts_with(dir.path()));
        assert!(after.is_empty(), "files in /tmp: {after:?}");
    }
}

fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

#[test]
fn the_example_config_checks_and_unknown_keys_are_refused() {
    let bin = env!("CARGO_BIN_EXE_authwatch");
    let example = repo().join("docker/authwatch.yaml");
    let o = Command::new(bin)
        .args(["config", "check", "--config"])
        .arg(&example)
        .env("AUTHWATCH_API_RATE", "3")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("cluster: [\"prod\"]"), "{text}");
    assert!(
        text.contains("api-rate: \"3\"  # environment AUTHWATCH_API_RATE"),
        "{text}"
    );
    assert!(text.contains("lookback: \"5m\"  #"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "cluster: [prod]\nstate-dri: /x\n").unwrap();
    let o = Command::new(bin)
        .args(["config", "check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown key `state-dri`"));
}
