use super::*;
use serde_json::json;

fn file(path: &str, text: &str) -> PolicyFile {
    PolicyFile {
        path: path.into(),
        text: text.into(),
    }
}

fn plan(action: &str) -> Json {
    json!({
        "format_version": "1",
        "env": {"name": "prod", "protected": true},
        "resource_changes": [{"address": "db", "type": "postgres.database", "actions": [action]}]
    })
}

const NO_DELETES: &str = r#"# METADATA
# title: No deletes in protected environments
# custom:
#   enforcement: soft
package slipway

deny contains {"msg": sprintf("%s would be deleted", [c.address]), "resource": c.address} if {
    input.env.protected
    some c in input.resource_changes
    "delete" in c.actions
}
"#;

const V0_WARN: &str = r#"package slipway

warn[msg] {
    c := input.resource_changes[_]
    msg := sprintf("%s changes", [c.address])
}
"#;

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(5),
        memory: 1 << 30,
    }
}

#[test]
fn a_denial_names_its_resource_and_takes_the_level_of_its_annotation() {
    let files = [file("policies/no-deletes.rego", NO_DELETES)];
    let mut verdict = evaluate(&files, &plan("delete"), &limits());
    verdict.locate(&BTreeMap::from([(
        "db".to_string(),
        "slipway.yaml:7:3".to_string(),
    )]));
    let r = &verdict.results[0];
    assert_eq!(r.enforcement, Enforcement::Soft);
    assert_eq!(
        r.title.as_deref(),
        Some("No deletes in protected environments")
    );
    assert_eq!(r.denies.len(), 1, "{verdict:?}");
    assert_eq!(r.denies[0].msg, "db would be deleted");
    assert_eq!(r.denies[0].location.as_deref(), Some("slipway.yaml:7:3"));
    assert_eq!(verdict.gate(), Gate::SoftFail);
    assert_eq!(
        evaluate(&files, &plan("update"), &limits()).gate(),
        Gate::Pass
    );
}

#[test]
fn rego_v0_policies_as_conftest_writes_them_work_and_warnings_never_block() {
    let files = [file("p/warn.rego", V0_WARN)];
    let verdict = evaluate(&files, &plan("create"), &limits());
    assert_eq!(verdict.results[0].warns[0].msg, "db changes", "{verdict:?}");
    assert_eq!(verdict.results[0].outcome(), "warned");
    assert_eq!(verdict.gate(), Gate::Pass);
}

#[test]
fn a_syntax_error_is_reported_with_its_location_and_holds() {
    let broken = "package slipway\n\ndeny contains msg if {\n    msg := \n}\n";
    let verdict = evaluate(
        &[file("policies/broken.rego", broken)],
        &plan("create"),
        &limits(),
    );
    let r = &verdict.results[0];
    let error = r.error.as_deref().expect("an error");
    assert!(error.contains("policies/broken.rego:"), "{error}");
    assert!(r.blocks());
    assert_eq!(verdict.gate(), Gate::HardFail);
}

#[test]
fn a_misspelt_level_is_an_error_not_advisory() {
    let text = "# METADATA\n# custom:\n#   enforcement: advisery\npackage slipway\ndeny contains \"no\" if { true }\n";
    let verdict = evaluate(&[file("p/typo.rego", text)], &plan("create"), &limits());
    let error = verdict.results[0].error.clone().unwrap_or_default();
    assert!(error.contains("advisery"), "{verdict:?}");
    assert_eq!(verdict.gate(), Gate::HardFail);
}

#[test]
fn advisory_denials_are_shown_and_the_flow_form_of_custom_is_read() {
    let text = "# METADATA\n# custom: { enforcement: advisory }\npackage slipway\ndeny contains \"looked\" if { true }\n";
    let verdict = evaluate(&[file("p/a.rego", text)], &plan("create"), &limits());
    assert_eq!(verdict.results[0].enforcement, Enforcement::Advisory);
    assert_eq!(verdict.results[0].denies[0].msg, "looked");
    assert_eq!(verdict.gate(), Gate::Pass);
}

#[test]
fn libraries_are_shared_and_test_files_are_not_judged_with() {
    let lib = "package lib.sizes\n\nbig(n) if { n > 3 }\n";
    let policy = "package slipway\nimport data.lib.sizes\n\ndeny contains \"too many\" if { sizes.big(count(input.resource_changes) + 3) }\n";
    let test =
        "package slipway\ntest_x if { false }\ndeny contains \"from a test file\" if { true }\n";
    let files = [
        file("policies/lib/sizes.rego", lib),
        file("policies/size.rego", policy),
        file("policies/size_test.rego", test),
    ];
    let verdict = evaluate(&files, &plan("create"), &limits());
    assert_eq!(verdict.results.len(), 1, "{verdict:?}");
    assert_eq!(verdict.results[0].denies[0].msg, "too many");
}

#[test]
fn a_policy_that_runs_too_long_is_stopped_by_the_timer() {
    let slow = "package slipway\ndeny contains \"done\" if {\n  count([x | some x in numbers.range(1, 3000000); x % 7 == 0]) > 0\n  count([y | some y in numbers.range(1, 3000000); y % 5 == 0]) > 0\n}\n";
    let verdict = evaluate(
        &[file("p/slow.rego", slow)],
        &plan("create"),
        &Limits {
            timeout: Duration::from_millis(50),
            memory: 1 << 30,
        },
    );
    let error = verdict.results[0].error.clone().unwrap_or_default();
    assert!(!error.is_empty(), "{verdict:?}");
    assert_eq!(verdict.gate(), Gate::HardFail);
}

/// Found by the fuzz target: regorus's parser doubles its time with each nested `[` or `{`
/// (16 of them took 20 s). Such a file is refused at once, saying where, and holds.
#[test]
fn brackets_nested_past_the_limit_are_refused_before_the_parser_sees_them() {
    let nested = |open: &str, n: usize| {
        format!(
            "package slipway\n# a comment [[[[[[[[[[[[[[[[[[[[ is no nesting\ndeny contains \"x\" if {{\n    s := \"{{{{{{{{{{{{{{{{{{{{\"\n    {}some i in input.x\n}}\n",
            open.repeat(n)
        )
    };
    for open in ["[", "{", "[x | "] {
        let deep = nested(open, 40);
        let verdict = evaluate(&[file("p/deep.rego", &deep)], &plan("create"), &limits());
        let error = verdict.results[0].error.clone().unwrap_or_default();
        assert!(
            error.starts_with("p/deep.rego:5:") && error.contains("nested more than 12 deep"),
            "{open}: {error}"
        );
        assert_eq!(verdict.gate(), Gate::HardFail);
    }
    // At the limit the parser still has it (the rule's own `{` is one level), strings and
    // comments aside: a syntax error of its own, not a refusal.
    let verdict = evaluate(
        &[file("p/ok.rego", &nested("[", MAX_NESTING - 1))],
        &plan("create"),
        &limits(),
    );
    let error = verdict.results[0].error.clone().unwrap_or_default();
    assert!(!error.contains("nested more than"), "{error}");
    assert!(too_deep("x := [[1], {\"a\": [2]}]").is_none());
    assert_eq!(too_deep(&"[".repeat(13)), Some((1, 13)));
}

#[test]
fn a_message_that_is_neither_text_nor_msg_object_is_an_error() {
    let text = "package slipway\ndeny contains 42 if { true }\n";
    let verdict = evaluate(&[file("p/n.rego", text)], &plan("create"), &limits());
    assert!(verdict.results[0].error.is_some(), "{verdict:?}");
}

/// Time zones come from crates/chrono-tz (jiff's bundled database) in place of the crates.io
/// chrono-tz: policies still get each zone's local time, and a name outside the database
/// leaves the expression undefined, as a builtin's error does in OPA (not strict).
#[test]
fn time_builtins_read_the_local_time_in_any_iana_zone() {
    let text = r#"package slipway
deny contains sprintf("clock %d:%d:%d", time.clock([input.at, "America/New_York"])) if true
deny contains sprintf("weekday %s", [time.weekday([input.at, "Asia/Tokyo"])]) if true
deny contains sprintf("date %d-%d-%d", time.date([input.at, "Australia/Lord_Howe"])) if true
deny contains sprintf("link %d:%d:%d", time.clock([input.at, "US/Pacific"])) if true
"#;
    // 2024-07-01T03:30:00Z
    let input = json!({"at": 1_719_804_600_000_000_000_i64});
    let verdict = evaluate(&[file("p/t.rego", text)], &input, &limits());
    let mut msgs: Vec<&str> = verdict.results[0]
        .denies
        .iter()
        .map(|d| d.msg.as_str())
        .collect();
    msgs.sort_unstable();
    assert_eq!(
        msgs,
        [
            "clock 23:30:0",
            "date 2024-7-1",
            "link 20:30:0",
            "weekday Monday"
        ],
        "{verdict:?}"
    );

    let unknown =
        "package slipway\ndeny contains \"x\" if time.clock([0, \"Mars/Olympus_Mons\"])\n";
    let verdict = evaluate(&[file("p/u.rego", unknown)], &input, &limits());
    assert!(verdict.results[0].denies.is_empty(), "{verdict:?}");
    let known = unknown.replace("Mars/Olympus_Mons", "Europe/Paris");
    let verdict = evaluate(&[file("p/u.rego", &known)], &input, &limits());
    assert_eq!(verdict.results[0].denies.len(), 1, "{verdict:?}");
}

#[test]
fn policy_tests_pass_fail_and_read_fixtures() {
    let tests = "package slipway\n\ntest_denies_a_delete if {\n  count(deny) == 1 with input as data.fixtures.delete\n}\n\ntest_wrong if {\n  count(deny) == 5 with input as data.fixtures.delete\n}\n";
    let files = [
        file("no-deletes.rego", NO_DELETES),
        file("no-deletes_test.rego", tests),
    ];
    let fixtures = [("delete".to_string(), plan("delete").to_string())];
    let report = testing::run(&files, &fixtures, Duration::from_secs(5));
    let outcomes: Vec<(&str, &str)> = report
        .tests
        .iter()
        .map(|t| (t.name.as_str(), t.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("data.slipway.test_denies_a_delete", "pass"),
            ("data.slipway.test_wrong", "fail")
        ],
        "{report:?}"
    );
    assert!(!report.passed());
}

proptest::proptest! {
    /// Any text as a policy (bare, or after a valid header, so the parser and the interpreter
    /// see it too): never a panic; at most one result, naming the file; and an error never
    /// passes the gate unless the policy is advisory (the checks of fuzz/fuzz_targets/policy.rs).
    #[test]
    fn any_text_as_a_policy_gets_an_answer_and_an_error_holds(
        text in "\\PC{0,200}",
        headed in proptest::bool::ANY,
    ) {
        let text = if headed {
            format!("package slipway\n\ndeny contains msg if {{\n{text}\n}}\n")
        } else {
            text
        };
        let verdict = evaluate(&[file("p/any.rego", &text)], &plan("create"), &limits());
        proptest::prop_assert!(verdict.results.len() <= 1, "{:?}", verdict.results);
        for r in &verdict.results {
            proptest::prop_assert_eq!(&r.policy, "p/any.rego");
            if r.error.is_some() && r.enforcement != Enforcement::Advisory {
                proptest::prop_assert_ne!(verdict.gate(), Gate::Pass, "{:?}", r);
            }
        }
    }
}
