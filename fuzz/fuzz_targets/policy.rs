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

/// Whether `text` has a number of 7 digits or more, or one with an exponent: a builtin given
/// one (`numbers.range(1, 100000000)`) builds its whole result before regorus's timer looks,
/// for seconds or gigabytes. In Slipway that runs in the `slipway __policy` child, whose
/// deadline and RLIMIT_AS stop it (tests/policies.rs, "loops or allocates without bound");
/// here, in process, it would only be reported as a timeout or an out-of-memory that is not a
/// bug of ours, so such inputs are skipped.
fn has_huge_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut run = 0;
    for (i, b) in bytes.iter().enumerate() {
        if b.is_ascii_digit() {
            run += 1;
            if run >= 7 {
                return true;
            }
        } else {
            if run > 0
                && matches!(b, b'e' | b'E')
                && bytes
                    .get(i + 1)
                    .is_some_and(|n| n.is_ascii_digit() || matches!(n, b'+' | b'-'))
            {
                return true;
            }
            run = 0;
        }
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    if has_huge_number(&text) {
        return;
    }
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
            assert_ne!(
                verdict.gate(),
                Gate::Pass,
                "an error passed silently: {r:?}"
            );
        }
    }
});
