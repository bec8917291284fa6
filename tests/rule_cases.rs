//! The bundled rules: their own tests pass, and the noise of real clusters in the shared
//! corpus fires none of them.

use authwatch::input::FormatChoice;
use authwatch_tests::{corpus, run};

#[test]
fn every_bundled_rule_has_tests_and_they_pass() {
    let rules = authwatch::rule_files::load(&[]).unwrap();
    assert!(rules.len() >= 10, "the default set");
    for rule in &rules {
        assert!(
            rule.tests.len() >= 2,
            "{}: a firing case and a quiet case at least",
            rule.id
        );
        assert!(
            rule.description.len() > 80,
            "{}: say what it catches and its false positives",
            rule.id
        );
        assert!(
            rule.warnings().is_empty(),
            "{}: {:?}",
            rule.id,
            rule.warnings()
        );
        let outcomes = authwatch_rules::run_tests(rule, &mut |rel| {
            authwatch::rule_files::load_fixture(&rule.source, rel)
        });
        for o in outcomes {
            assert!(o.passed, "{}: {}: {}", o.rule, o.case, o.detail);
        }
    }
}

#[test]
fn real_cluster_noise_fires_no_bundled_rule() {
    for file in [
        "hkerma_audit_logs.jsonl.gz",
        "audit2rbac_demo.jsonl",
        "raw/audit2rbac/demo.log.v1beta1-883f4e80",
        "falco_k8s_audit.jsonl",
    ] {
        let rules = authwatch::rule_files::load(&[]).unwrap();
        let (alerts, s) = run(&[corpus(file)], FormatChoice::Auto, rules, None);
        assert!(s.events_parsed > 0, "{file}");
        assert!(alerts.is_empty(), "{file}: {alerts:#?}");
    }
}
