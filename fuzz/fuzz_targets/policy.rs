//! Fuzzes a policy file as the gate reads it (`slipway_policy::evaluate`): its `# METADATA`
//! header (title, `custom.enforcement`), its package, then regorus's parser and interpreter,
//! against a small plan document. Whoever merges to the default branch writes these files, and
//! a bad one must hold the gate, never crash it. Checked for each input:
//!
//! 1. `evaluate` does not panic and finishes (regorus's timer bounds a loop).
//! 2. A file of `package slipway` gives exactly one result, naming the file; any other
//!    package is a library and gives none, unless its header is unreadable (then one error).
//! 3. A result with an error never passes the gate unless its level is advisory: nothing
//!    passes silently.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use slipway_policy::{Enforcement, Gate, Limits, PolicyFile, evaluate};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let file = PolicyFile {
        path: "policies/fuzz.rego".into(),
        text,
    };
    let input = serde_json::json!({
        "format_version": "1",
        "env": {"name": "prod", "kind": "static", "protected": true},
        "git": {"labels": ["preview"], "pull_request": 7},
        "resource_changes": [
            {"address": "db", "type": "postgres.database", "actions": ["delete"],
             "before": {"name": "shop"}, "after": null, "location": "slipway.yaml:3:3"}
        ],
        "sizes": {"processes": 2}
    });
    let limits = Limits {
        timeout: Duration::from_millis(200),
        memory: 1 << 30,
    };
    let verdict = evaluate(std::slice::from_ref(&file), &input, &limits);
    assert!(verdict.results.len() <= 1, "{:?}", verdict.results);
    for r in &verdict.results {
        assert_eq!(r.policy, file.path);
        if r.error.is_some() && r.enforcement != Enforcement::Advisory {
            assert_ne!(verdict.gate(), Gate::Pass, "an error passed silently: {r:?}");
        }
    }
});
