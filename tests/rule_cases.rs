//! The bundled rules against their test events (`rules/tests/cases.yaml`): every case lists
//! exactly the alerts the whole bundled set must raise on its file.

use authwatch::input::FormatChoice;
use authwatch_tests::{here, run};

#[test]
fn bundled_rules_raise_exactly_the_expected_alerts() {
    let dir = here("../rules/tests");
    let cases: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("cases.yaml")).unwrap()).unwrap();
    let cases = cases.as_sequence().expect("a list of cases");
    assert_eq!(cases.len(), 6);
    for case in cases {
        let file = case["events"].as_str().unwrap();
        let bundled = authwatch::rule_files::load(&[]).unwrap();
        let (alerts, summary) = run(&[dir.join(file)], FormatChoice::Auto, bundled, None);
        assert_eq!(summary.parse_errors, 0, "{file}");
        let mut got: Vec<serde_json::Value> = alerts
            .iter()
            .map(|a| {
                let full: serde_json::Value = serde_json::from_str(&a.to_json_line()).unwrap();
                serde_json::json!({
                    "rule": full["rule"], "group": full["group"],
                    "count": full["count"], "window_end": full["window_end"],
                })
            })
            .collect();
        let mut want: Vec<serde_json::Value> =
            serde_json::from_value(serde_json::to_value(&case["expect"]).unwrap()).unwrap();
        let key = |v: &serde_json::Value| v.to_string();
        got.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(got, want, "{file}");
    }
}
