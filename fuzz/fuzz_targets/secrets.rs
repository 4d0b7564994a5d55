//! Fuzzes the secrets file parser (`slipway.secrets.yaml`): nothing panics, and a file that
//! parses without diagnostics is written back by `write_file` into text that parses to the
//! same entries (the file `slipway secret set` rewrites must never lose a value).

#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_core::secrets::{parse_file, write_file};
use slipway_core::yaml::Limits;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (entries, diags) = parse_file("slipway.secrets.yaml", &text, Limits::default());
    if !diags.is_empty() {
        return;
    }
    let written = write_file(&entries);
    let (again, diags) = parse_file("slipway.secrets.yaml", &written, Limits::default());
    assert!(diags.is_empty(), "written file does not parse: {diags:?}\n{written}");
    let strip = |m: &std::collections::BTreeMap<String, slipway_core::secrets::SecretEntry>| {
        m.iter()
            .map(|(k, v)| (k.clone(), v.value.clone(), v.environments.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&entries), strip(&again), "a value changed on rewrite");
});
