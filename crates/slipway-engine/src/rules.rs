//! The rules a static environment is judged by (`protected`, `require_pr`,
//! `apply_requirements`), and which of them are in force.
//!
//! A commit must not be able to lower the rules it is itself judged by: a direct push that
//! also sets `require_pr: false`, or a commit that drops `protected: true` and deletes
//! resources, is judged by the rules already in force, which are the stronger of the commit's
//! own and those of what the environment runs. The rules in force come from the environment's
//! record (`protected`) and the stacks of the commits it took: the deployed commit, and the
//! last commit it took from its own branch (a pull request applied with `/slipway apply` runs
//! unmerged code whose rules were never accepted). Before the first deployment nothing is in
//! force and a commit's own rules apply. Rules are lowered legitimately by a commit that
//! passes the gate of the rules in force (merged through an approved pull request for
//! `require_pr`, a person's confirmation for a protected delete): once deployed, its rules
//! are the ones in force.
//!
//! Deploy windows (`windows:`) are rules too: a change is judged by the deploy windows of
//! the commit itself and of those in force together (every deny window of both; the allow
//! windows of each must have one open), so a commit that deletes its own freeze, or adds an
//! allow-everything window, is still held by the windows in force. For a generated or ad-hoc
//! environment, what is in force is its family's entry at the default branch
//! ([`crate::EnvTarget::windows_in_force`]).

use slipway_core::EnvName;
use slipway_core::render::EnvKind;
use slipway_core::stack::EnvironmentDef;
use slipway_core::windows::{Window, WindowKind, Windows};

use crate::{Engine, EngineError, Origin};

/// The gate rules of an environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Destroys need a person's confirmation.
    pub protected: bool,
    /// Commits must arrive through a merged pull request that met the apply requirements.
    pub require_pr: bool,
    /// What `/slipway apply ENV` needs (`approved`, `mergeable`).
    pub apply_requirements: Vec<String>,
    /// When changes may deploy (every kind of environment: a family's windows hold its
    /// previews too).
    pub windows: Windows,
}

impl Rules {
    /// The rules `def` declares for an environment of `kind` (protection and `require_pr`
    /// hold for static environments only; an ad-hoc copy `--like prod` is a scratch one).
    pub fn declared(def: &EnvironmentDef, kind: EnvKind) -> Rules {
        let is_static = kind == EnvKind::Static;
        Rules {
            protected: def.protected && is_static,
            require_pr: def.require_pr && is_static,
            apply_requirements: def.apply_requirements(),
            windows: Windows::of(&def.windows),
        }
    }

    /// Each rule at the stronger of the two.
    pub fn stronger(&self, other: &Rules) -> Rules {
        let mut apply_requirements = self.apply_requirements.clone();
        for r in &other.apply_requirements {
            if !apply_requirements.contains(r) {
                apply_requirements.push(r.clone());
            }
        }
        apply_requirements.sort();
        Rules {
            protected: self.protected || other.protected,
            require_pr: self.require_pr || other.require_pr,
            apply_requirements,
            windows: self.windows.stronger(&other.windows),
        }
    }
}

/// One window as a deployment records it (see [`Rules::to_record`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct RecordedWindow {
    kind: String,
    schedule: String,
    duration_ms: u64,
    duration: String,
    time_zone: String,
}

/// [`Rules`] as a deployment records them.
#[derive(serde::Serialize, serde::Deserialize)]
struct Recorded {
    protected: bool,
    require_pr: bool,
    apply_requirements: Vec<String>,
    windows: Vec<RecordedWindow>,
}

impl Rules {
    /// What a deployment records of the rules its commit declares, so that they stay in
    /// force when the commit can no longer be read ([`Engine::rules_in_force`]).
    pub fn to_record(&self) -> serde_json::Value {
        let recorded = Recorded {
            protected: self.protected,
            require_pr: self.require_pr,
            apply_requirements: self.apply_requirements.clone(),
            windows: self
                .windows
                .iter()
                .map(|w| RecordedWindow {
                    kind: w.kind().as_str().to_string(),
                    schedule: w.schedule().to_string(),
                    duration_ms: u64::try_from(w.duration().as_millis()).unwrap_or(u64::MAX),
                    duration: w.duration_text().to_string(),
                    time_zone: w.time_zone().to_string(),
                })
                .collect(),
        };
        serde_json::to_value(recorded).expect("rules always serialize")
    }

    /// The rules [`Rules::to_record`] wrote; `None` for anything else (a record another
    /// version wrote, which [`Engine::rules_in_force`] refuses to pass over).
    pub fn from_record(value: &serde_json::Value) -> Option<Rules> {
        let recorded: Recorded = serde_json::from_value(value.clone()).ok()?;
        let windows = recorded
            .windows
            .iter()
            .map(|w| {
                Window::new(
                    WindowKind::parse(&w.kind)?,
                    &w.schedule,
                    std::time::Duration::from_millis(w.duration_ms),
                    &w.duration,
                    &w.time_zone,
                )
                .ok()
            })
            .collect::<Option<Vec<Window>>>()?;
        Some(Rules {
            protected: recorded.protected,
            require_pr: recorded.require_pr,
            apply_requirements: recorded.apply_requirements,
            windows: Windows::of(&windows),
        })
    }
}

/// How many past deployments are searched for the last one taken from the branch.
const HISTORY: usize = 200;

impl Engine {
    /// The rules in force for the static environment `name` (defined by `definition`): its
    /// record's `protected`, and the rules of the commits it took, read through `origin`'s
    /// repository. `None` when nothing is in force yet (never deployed).
    pub fn rules_in_force(
        &self,
        origin: &Origin<'_>,
        name: &EnvName,
        definition: &str,
    ) -> Result<Option<Rules>, EngineError> {
        let Some(record) = self.store.environment(name)? else {
            return Ok(None);
        };
        let mut commits: Vec<String> = record.commit.iter().cloned().collect();
        // The deployed commit may be a pull request's (applied before merge, or pinned): the
        // last commit taken from the branch holds too.
        if let Some(branch) = &record.tracked_ref {
            let latest = self.store.deployment_refs(name, 1)?;
            if latest
                .first()
                .is_some_and(|d| d.reference.as_deref() != Some(branch.as_str()))
                && let Some(d) = self
                    .store
                    .deployment_refs(name, HISTORY)?
                    .into_iter()
                    .find(|d| d.reference.as_deref() == Some(branch.as_str()))
            {
                commits.push(d.commit);
            }
        }
        if commits.is_empty() && !record.protected {
            return Ok(None);
        }
        let mut rules = Rules {
            protected: record.protected,
            ..Rules::default()
        };
        let mut read = false;
        commits.dedup();
        for sha in &commits {
            let at = Origin {
                source: origin.source,
                repo: origin.repo,
                reference: sha,
                folder: origin.folder,
                tip: Some(sha),
            };
            // A commit that cannot be read here for good (another repository, gone): the
            // rules its deployment recorded hold, and the record's protection. One that
            // cannot be read for the moment (an object a fetch is still writing, a lock)
            // fails the judgement, to be made again: never judged by the newer commit's
            // rules alone.
            let declared = match self.load_cached(&at) {
                Ok(cached) => cached
                    .loaded
                    .valid_stack()
                    .ok()
                    .and_then(|s| s.environments.get(definition))
                    .map(|def| Rules::declared(def, EnvKind::Static)),
                Err(e) if e.retryable() => return Err(e),
                Err(_) => None,
            };
            // Its stack not read (gone, or no longer valid to this version): the rules its
            // deployment recorded. A record this version cannot read (another version's) is
            // not taken as no rule, which would lift them: the judgement fails, saying why.
            let declared = match declared {
                Some(declared) => Some(declared),
                None => match self.store.deployment_rules(name, sha)? {
                    None => None,
                    Some(recorded) => Some(Rules::from_record(&recorded).ok_or_else(|| {
                        EngineError::Environment(format!(
                            "the rules in force for `{name}` are those its deployment of {}                              recorded (that commit's stack cannot be read here), and this                              version of Slipway cannot read that record (another version                              wrote it); run the version that recorded it",
                            crate::apply::short(sha)
                        ))
                    })?),
                },
            };
            if let Some(declared) = declared {
                rules = rules.stronger(&declared);
                read = true;
            }
        }
        if !read && record.protected {
            // Only the record is known: a protected environment's default requirements.
            rules.apply_requirements = slipway_core::stack::APPLY_REQUIREMENTS
                .iter()
                .map(|s| s.to_string())
                .collect();
        }
        Ok(Some(rules))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(protected: bool, require_pr: bool, reqs: &[&str]) -> Rules {
        Rules {
            protected,
            require_pr,
            apply_requirements: reqs.iter().map(|s| s.to_string()).collect(),
            windows: Windows::default(),
        }
    }

    #[test]
    fn recorded_rules_read_back_as_they_were() {
        use slipway_core::windows::{Window, WindowKind};
        let window = |kind, schedule: &str| {
            Window::new(
                kind,
                schedule,
                std::time::Duration::from_secs(3600),
                "1h",
                "Europe/Paris",
            )
            .expect("a window")
        };
        let declared = Rules {
            protected: true,
            require_pr: true,
            apply_requirements: vec!["approved".into(), "mergeable".into()],
            windows: Windows::of(&[
                window(WindowKind::Deny, "0 17 * * 5"),
                window(WindowKind::Allow, "0 9 * * 1-5"),
            ]),
        };
        let record = declared.to_record();
        assert_eq!(Rules::from_record(&record), Some(declared));
        assert_eq!(
            Rules::from_record(&serde_json::json!({"require_pr": true})),
            None
        );
        let mut bad = record.clone();
        bad["windows"][0]["schedule"] = "61 * * * *".into();
        assert_eq!(
            Rules::from_record(&bad),
            None,
            "an unreadable window is no rule"
        );
    }

    #[test]
    fn the_stronger_rules_keep_every_requirement_of_both() {
        let in_force = rules(true, true, &["approved", "mergeable"]);
        let lowered = rules(false, false, &[]);
        assert_eq!(lowered.stronger(&in_force), in_force);
        assert_eq!(in_force.stronger(&lowered), in_force);
        let mixed = rules(false, true, &["mergeable"]).stronger(&rules(true, false, &["approved"]));
        assert_eq!(mixed, rules(true, true, &["approved", "mergeable"]));
    }

    #[test]
    fn a_commit_that_removes_its_deny_window_is_still_held_by_the_one_in_force() {
        use slipway_core::windows::{Window, WindowKind};
        let freeze = Window::new(
            WindowKind::Deny,
            "0 17 * * 5",
            std::time::Duration::from_secs(64 * 3600),
            "64h",
            "Europe/Paris",
        )
        .expect("a window");
        let in_force = Rules {
            windows: Windows::of(&[freeze]),
            ..Rules::default()
        };
        let own = Rules::default();
        let judged = own.stronger(&in_force);
        // Friday 2026-12-04 17:30 UTC: 18:30 in Paris.
        let friday = 1_796_405_400_000;
        assert!(
            !judged.windows.verdict(friday).allowed(),
            "the freeze in force holds a commit that deleted it"
        );
        assert!(
            !own.windows.covers(&judged.windows),
            "the commit lowers the windows"
        );
    }
}
