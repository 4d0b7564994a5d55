//! Which environments should exist: the static ones of the stack, and one per branch matching
//! a generated family. Pure: a stack and a list of branches in, a list of environments out.

use slipway_core::EnvName;
use std::collections::BTreeMap;
use std::time::Duration;

use slipway_core::names::glob_match;
use slipway_core::render::EnvKind;
use slipway_core::stack::Stack;
use slipway_git::Branch;

/// An environment that the repository says should exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Its name.
    pub name: EnvName,
    /// The `environments:` entry it follows.
    pub definition: String,
    /// Static or generated.
    pub kind: EnvKind,
    /// The ref it follows: a branch name.
    pub tracked_ref: String,
    /// How long a generated environment lives after its last change.
    pub ttl: Option<Duration>,
}

/// An open pull request that may have a preview environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullHead {
    /// Its number.
    pub number: u64,
    /// The ref holding its head in the repository (`refs/pull/N/head`).
    pub reference: String,
}

/// The environments `stack` asks for, given the repository's `branches` and the open pull
/// requests allowed a preview (`pulls`, for families with `pull_requests: true`: `pr-<n>`). A
/// branch matching several families goes to the first by name. Names never collide: when two
/// branches slug to the same name, the one that already holds it (`holder` says which branch
/// an existing environment follows) or else the first by name keeps it, and the other gets a
/// hashed name.
pub fn wanted(
    stack: &Stack,
    branches: &[Branch],
    pulls: &[PullHead],
    holder: &dyn Fn(&EnvName) -> Option<String>,
) -> Vec<Wanted> {
    let mut out: BTreeMap<EnvName, Wanted> = BTreeMap::new();
    for (definition, def) in &stack.environments {
        // The loader refuses a stack whose environment keys are not DNS labels, so a valid
        // stack's keys all parse; a key that does not is no environment.
        let Ok(name) = EnvName::parse(definition) else {
            continue;
        };
        if let Some(track) = &def.track {
            out.insert(
                name.clone(),
                Wanted {
                    name,
                    definition: definition.clone(),
                    kind: EnvKind::Static,
                    tracked_ref: track.clone(),
                    ttl: None,
                },
            );
        }
    }
    for (family, def) in &stack.environments {
        let Some(generate) = &def.generate else {
            continue;
        };
        if generate.pull_requests {
            for pr in pulls {
                let name = EnvName::pull_request(pr.number);
                out.entry(name.clone()).or_insert(Wanted {
                    name,
                    definition: family.clone(),
                    kind: EnvKind::Generated,
                    tracked_ref: pr.reference.clone(),
                    ttl: def.ttl,
                });
            }
        }
        // Pull request refs are listed among the branches (so that their tips are known),
        // but only `pull_requests: true` makes environments of them.
        for branch in branches.iter().filter(|b| !b.name.starts_with("refs/")) {
            if !generate
                .branches
                .iter()
                .any(|g| glob_match(g, &branch.name))
            {
                continue;
            }
            let mut name = EnvName::branch(&branch.name);
            let held_by_other = holder(&name).is_some_and(|b| b != branch.name);
            if out.contains_key(&name) || held_by_other {
                name = EnvName::branch_hashed(&branch.name);
            }
            if out.contains_key(&name) {
                continue;
            }
            out.insert(
                name.clone(),
                Wanted {
                    name,
                    definition: family.clone(),
                    kind: EnvKind::Generated,
                    tracked_ref: branch.name.clone(),
                    ttl: def.ttl,
                },
            );
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_core::stack::{FileError, Files, LoadLimits, load};

    struct One(&'static str);
    impl Files for One {
        fn read(&self, _: &str) -> Result<String, FileError> {
            Ok(self.0.to_string())
        }
    }

    fn stack() -> Stack {
        let text = "version: 1\nstack: s\nenvironments:\n  prod: { track: main }\n  previews: { generate: { branches: [\"feature/*\", \"feature-*\"] }, ttl: 1h }\n";
        load(&One(text), "slipway.yaml", &LoadLimits::default())
            .stack
            .expect("a stack")
    }

    fn b(n: &str) -> Branch {
        Branch {
            name: n.into(),
            sha: "0".repeat(40),
        }
    }

    #[test]
    fn static_environments_and_one_per_matching_branch() {
        let got = wanted(
            &stack(),
            &[
                b("main"),
                b("feature/login"),
                b("feature/$(touch /tmp/pwned)"),
                b("fix/x"),
            ],
            &[],
            &|_| None,
        );
        let names: Vec<&str> = got.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names.len(), 3, "prod plus two feature branches: {names:?}");
        assert!(
            names.contains(&"prod") && names.contains(&"br-feature-login"),
            "{names:?}"
        );
        assert!(
            got.iter()
                .all(|w| slipway_core::stack::is_dns_label(&w.name)),
            "hostile branch names become DNS labels: {names:?}"
        );
        let generated = got
            .iter()
            .find(|w| w.tracked_ref == "feature/login")
            .expect("generated");
        assert_eq!(
            (generated.kind, generated.definition.as_str(), generated.ttl),
            (
                EnvKind::Generated,
                "previews",
                Some(Duration::from_secs(3600))
            )
        );
    }

    #[test]
    fn branches_that_slug_alike_get_distinct_names_and_the_holder_keeps_its_own() {
        let got = wanted(
            &stack(),
            &[b("feature-login"), b("feature/login")],
            &[],
            &|_| None,
        );
        let names: BTreeMap<&str, &str> = got
            .iter()
            .map(|w| (w.tracked_ref.as_str(), w.name.as_str()))
            .collect();
        assert_eq!(
            names["feature-login"], "br-feature-login",
            "the first by name keeps the plain name"
        );
        assert_ne!(
            names["feature/login"], "br-feature-login",
            "the other gets its own name: {names:?}"
        );
        let held = |n: &EnvName| (n == "br-feature-login").then(|| "feature/login".to_string());
        let got = wanted(
            &stack(),
            &[b("feature-login"), b("feature/login")],
            &[],
            &held,
        );
        let names: BTreeMap<&str, &str> = got
            .iter()
            .map(|w| (w.tracked_ref.as_str(), w.name.as_str()))
            .collect();
        assert_eq!(
            names["feature/login"], "br-feature-login",
            "an environment keeps its name when a new branch would take it"
        );
        assert_ne!(names["feature-login"], "br-feature-login");
    }
}
