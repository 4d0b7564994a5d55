//! The loader on whole files: the SPEC example, and diagnostics.

use std::collections::BTreeMap;

use slipway_core::render::{EnvKind, Target, render};
use slipway_core::stack::{FileError, Files, LoadLimits, load};

struct MapFiles(BTreeMap<String, String>);

impl Files for MapFiles {
    fn read(&self, path: &str) -> Result<String, FileError> {
        self.0.get(path).cloned().ok_or(FileError::NotFound)
    }
}

fn one(text: &str) -> MapFiles {
    MapFiles(
        [("slipway.yaml".to_string(), text.to_string())]
            .into_iter()
            .collect(),
    )
}

const SPEC_EXAMPLE: &str = include_str!("fixtures/valid/spec-example.yaml");

#[test]
fn the_spec_example_validates_unchanged() {
    let loaded = load(&one(SPEC_EXAMPLE), "slipway.yaml", &LoadLimits::default());
    assert!(
        loaded.diagnostics.is_empty(),
        "the SPEC §1 example must validate: {:#?}",
        loaded.diagnostics
    );
    let stack = loaded.stack.expect("a stack");
    assert_eq!(stack.name, "shop");
    let api = &stack.resources["api"];
    assert_eq!(
        api.dependencies
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        vec!["db", "migrate"],
        "api depends on migrate explicitly and on db through ${{resources.db.url}}"
    );
}

#[test]
fn render_applies_environment_overrides_and_is_deterministic() {
    let stack = load(&one(SPEC_EXAMPLE), "slipway.yaml", &LoadLimits::default())
        .stack
        .expect("a stack");
    let prod = render(
        &stack,
        Target {
            name: "prod",
            definition: "prod",
            kind: EnvKind::Static,
        },
        "c0ffee",
        &Default::default(),
    )
    .expect("renders");
    assert_eq!(
        prod.resources["api"].config["env"]["WORKERS"], "4",
        "prod overrides workers"
    );
    assert_eq!(
        prod.resources["api"].config["env"]["DATABASE_URL"], "${resources.db.url}",
        "resource outputs stay references until apply"
    );
    let again = render(
        &stack,
        Target {
            name: "prod",
            definition: "prod",
            kind: EnvKind::Static,
        },
        "c0ffee",
        &Default::default(),
    )
    .expect("renders");
    assert_eq!(prod.canonical_json(), again.canonical_json());
    let qa = render(
        &stack,
        Target {
            name: "qa",
            definition: "qa",
            kind: EnvKind::Static,
        },
        "c0ffee",
        &Default::default(),
    )
    .expect("renders");
    assert_ne!(
        prod.hash, qa.hash,
        "different variables give different hashes"
    );
}
