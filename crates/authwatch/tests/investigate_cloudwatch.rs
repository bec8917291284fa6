//! `authwatch investigate --log-group G --start T --end T` against the CloudWatch Logs
//! emulator (moto's server, started by `.ci/run`; skipped with a notice locally without
//! `AWS_ENDPOINT_URL`, a failure under `CI=true`).

mod support;

use support::{attack, authwatch_cmd, emulator, group_with_streams, now_ms, rfc3339_ms, Emu};

const S1: &str = "kube-apiserver-audit-0123456789abcdef0123456789abcdef";
const S2: &str = "kube-apiserver-audit-fedcba9876543210fedcba9876543210";

#[test]
fn investigate_reads_a_log_group_range() {
    let Some(ep) = emulator() else { return };
    let emu = Emu::new(&ep);
    let g = group_with_streams(&emu, "investigate", &[S1, S2]);
    let t0 = now_ms() - 600_000;
    // 25 denials from one address through S1, 5 more through S2, and 21 outside the range.
    emu.put(
        &g,
        S1,
        &attack("inv-a", 25, t0, 1_000, "203.0.113.71", "mallory"),
    );
    emu.put(
        &g,
        S2,
        &attack("inv-b", 5, t0 + 500, 1_000, "203.0.113.71", "mallory"),
    );
    emu.put(
        &g,
        S2,
        &attack("inv-out", 21, t0 + 400_000, 1_000, "203.0.113.72", "eve"),
    );
    let o = authwatch_cmd(Some(&ep))
        .args([
            "investigate",
            "--format",
            "json",
            "--log-group",
            &g,
            "--start",
        ])
        .arg(rfc3339_ms(t0 - 1_000))
        .arg("--end")
        .arg(rfc3339_ms(t0 + 300_000))
        .output()
        .expect("run authwatch");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json report");
    assert_eq!(r["totals"]["events"], 30, "{r:#}");
    let dims = r["dimensions"].as_array().expect("dimensions");
    let hosts: Vec<(String, u64)> = dims[0]["values"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|v| {
            (
                v["value"].as_str().unwrap_or("").to_owned(),
                v["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(hosts, [(S1.to_owned(), 25), (S2.to_owned(), 5)]);
    assert_eq!(dims[1]["values"][0]["value"], "203.0.113.71");
    assert_eq!(dims[1]["values"][0]["count"], 30);
    // The alert the rules raise inside the range.
    let alerts = r["alerts"].as_array().expect("alerts");
    assert!(
        alerts.iter().any(
            |a| a["rule"] == "denied-by-source-ip" && a["group"]["sourceIPs"] == "203.0.113.71"
        ),
        "{alerts:#?}"
    );
}
