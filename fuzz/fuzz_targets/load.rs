//! Fuzzes the whole pure pipeline: `slipway.yaml` → load → render → plan.
//!
//! The input is `slipway.yaml` as bytes (decoded as lossy UTF-8, as the git layer would refuse
//! anything else before the core sees it). A line that is exactly `#---include` splits it in
//! two: what follows is `more.yaml`, which the first part can pull in with
//! `include: [more.yaml]`. Every other path does not exist.
//!
//! What is checked, beyond "nothing panics" (the core's architecture invariant):
//! - a load without errors has a stack;
//! - a stack that loads without errors renders for every entry of `environments:` (static
//!   ones as themselves, families as the generated environment `pr-1`), and rendering twice
//!   gives the same bytes;
//! - each entry's deploy windows judge an instant, and changes are allowed at the `until`
//!   they give;
//! - the first plan, against an empty store, only creates;
//! - the plan after applying it (the store holding exactly what was rendered) is empty.
//!
//! `crates/slipway-core/tests/no_panic.rs` replays the same input format on stable Rust in
//! every `cargo test`; a crash found here goes there as a regression case.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use slipway_core::EnvName;
use slipway_core::plan::{Action, PlanInput, Recorded, ResourceStatus, plan};
use slipway_core::render::{DesiredState, EnvKind, Target, render};
use slipway_core::stack::{FileError, Files, LoadLimits, load};

/// The line that separates `slipway.yaml` from `more.yaml` in one fuzz input.
const INCLUDE_MARKER: &str = "#---include";

/// The two files of one input.
struct Repo<'a> {
    entry: &'a str,
    included: Option<&'a str>,
}

impl Files for Repo<'_> {
    fn read(&self, path: &str) -> Result<String, FileError> {
        match (path, self.included) {
            ("slipway.yaml", _) => Ok(self.entry.to_string()),
            ("more.yaml", Some(text)) => Ok(text.to_string()),
            _ => Err(FileError::NotFound),
        }
    }

    /// `more.yaml` may also be the manifests of a `kubernetes.manifests` resource, so the
    /// manifest reader (multi-document YAML, objects, references) is fuzzed too.
    fn list(&self) -> Result<Vec<String>, FileError> {
        let mut files = vec!["slipway.yaml".to_string()];
        files.extend(self.included.map(|_| "more.yaml".to_string()));
        Ok(files)
    }
}

/// Splits an input at its first marker line into `slipway.yaml` and `more.yaml`.
fn split(text: &str) -> Repo<'_> {
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end_matches(['\n', '\r']) == INCLUDE_MARKER {
            return Repo {
                entry: &text[..start],
                included: Some(&text[start + line.len()..]),
            };
        }
        start += line.len();
    }
    Repo {
        entry: text,
        included: None,
    }
}

/// What the store would hold after applying `desired` successfully (as in tests/plan.rs).
fn applied(desired: &DesiredState) -> BTreeMap<String, Recorded> {
    desired
        .resources
        .iter()
        .map(|(name, r)| {
            (
                name.clone(),
                Recorded {
                    type_name: r.type_name.clone(),
                    status: ResourceStatus::Ready,
                    config: Some(r.config.clone()),
                    depends_on: r.depends_on.clone(),
                    resolved_hash: None,
                    source: r.source.clone(),
                },
            )
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let repo = split(&text);
    let loaded = load(&repo, "slipway.yaml", &LoadLimits::default());
    if loaded.has_errors() {
        return;
    }
    // Callers (`slipway validate`, `slipway render`, `Engine::prepare`) check `has_errors()`
    // and then `expect` a stack.
    let stack = loaded.stack.expect("a load without errors has a stack");
    let preview = EnvName::pull_request(1);
    for (definition, def) in &stack.environments {
        // Its deploy windows judge an instant without panicking, and `until` is allowed.
        let windows = slipway_core::windows::Windows::of(&def.windows);
        let verdict = windows.verdict(1_796_400_000_000);
        if let Some(until) = verdict.until {
            assert!(windows.verdict(until).allowed(), "changes are allowed at `until`");
        }
        let name = EnvName::parse(definition)
            .expect("a stack that loaded without errors names environments with DNS labels");
        let target = match def.generate {
            None => Target {
                name: &name,
                definition,
                kind: EnvKind::Static,
            },
            Some(_) => Target {
                name: &preview,
                definition,
                kind: EnvKind::Generated,
            },
        };
        let desired = render(&stack, target, "c1", &BTreeMap::new()).unwrap_or_else(|e| {
            panic!("an environment of a stack that loaded without errors renders: {e}")
        });
        let again = render(&stack, target, "c1", &BTreeMap::new())
            .expect("rendering the same target twice succeeds twice");
        assert_eq!(
            desired.canonical_json(),
            again.canonical_json(),
            "the same stack and target render to the same bytes"
        );

        let first = plan(&desired, &PlanInput::default());
        assert!(
            first.changes.iter().all(|c| c.action == Action::Create),
            "a plan against an empty store only creates: {:?}",
            first.changes
        );
        let after = plan(
            &desired,
            &PlanInput {
                recorded: applied(&desired),
                ..Default::default()
            },
        );
        assert!(
            !after.has_changes(),
            "the plan after an apply is empty: {:?}",
            after.changes
        );
    }
});
