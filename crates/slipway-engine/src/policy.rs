//! The policy gate on plans (issue 16): the plan document policies read, the policies in
//! force, and their verdict on a plan.
//!
//! The policies judging a change are the Rego files under `[policies] path` (default
//! `policies/`, beside `slipway.yaml`) at the **default branch's** current commit (`HEAD`
//! of the repository), never the commit being judged: a branch that rewrites or deletes a
//! policy changes nothing about its own gate, as with the rules in force of [`crate::rules`].
//! A plan with no changes is not judged: nothing would be applied.
//!
//! The verdict travels with the plan ([`Prepared::policy`]), and [`Engine::apply`] refuses a
//! plan it blocks, whoever asks (a person's CLI, the controller, the API, a pull request's
//! comment): a `hard` denial always, a `soft` one unless an owner approved the policies for
//! that commit ([`crate::apply::ApplyOptions::policies_approved_by`]).

use std::collections::BTreeMap;
use std::ffi::OsString;

use serde::Serialize;
use serde_json::{Value as Json, json};
use slipway_core::plan::Action;
use slipway_git::Source;
use slipway_policy::{Limits, PolicyFile, Verdict};

use crate::{Engine, EngineError, Prepared};

/// The version of the plan document's shape: policies and scripts read it, so a change of its
/// shape bumps it (additions too), and `slipway schema --plan` describes it.
pub const PLAN_FORMAT_VERSION: &str = "1";

/// Most policy files read, and most bytes of each: the default branch is reviewed, but a
/// policy directory is still read into memory whole.
const MAX_FILES: usize = 500;
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Where a change comes from, as far as the caller knows: a pull request's context from its
/// forge, or a person's command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GitContext {
    /// The pull request, when the plan is one's.
    pub pull_request: Option<u64>,
    /// Whether its head comes from a fork.
    pub from_fork: bool,
    /// Its labels, when its forge said.
    pub labels: Vec<String>,
}

/// A plan's verdict, with where its policies came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Judged {
    /// Every policy's result.
    pub verdict: Verdict,
    /// The default branch's commit the policies were read at.
    pub policies_at: String,
}

impl Judged {
    /// The policies' gate.
    pub fn gate(&self) -> slipway_policy::Gate {
        self.verdict.gate()
    }

    /// The verdict for programs, as the API's plan, `plan --output json` and a
    /// `change.held` event carry it: each result with its `outcome` (`failed`, `warned`,
    /// `passed`) beside what the policy said.
    pub fn report(&self) -> Report {
        Report {
            gate: self.gate(),
            policies_at: self.policies_at.clone(),
            results: self
                .verdict
                .results
                .iter()
                .map(|r| {
                    let mut value = serde_json::to_value(r).unwrap_or_default();
                    if let Some(object) = value.as_object_mut() {
                        object.insert("outcome".into(), r.outcome().into());
                    }
                    value
                })
                .collect(),
        }
    }
}

/// [`Judged::report`]: `{"gate", "policies_at", "results"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// What the verdict lets through.
    pub gate: slipway_policy::Gate,
    /// The default branch's commit the policies were read at.
    pub policies_at: String,
    /// Each policy's result, with its `outcome`.
    pub results: Vec<serde_json::Value>,
}

impl Engine {
    /// The program that evaluates policies in a child (`slipway __policy`), next to the
    /// supervisor's; none (a library's tests) evaluates in process.
    pub(crate) fn evaluator(&self) -> Option<Vec<OsString>> {
        self.settings
            .supervisor
            .first()
            .map(|exe| vec![exe.clone(), "__policy".into()])
    }

    /// The policy files in force for the stack in `folder` of `source`: those at its default
    /// branch's tip, with that commit; `None` when the repository has no default branch or
    /// no policy there.
    pub fn policies_in_force(
        &self,
        source: &dyn Source,
        folder: &str,
    ) -> Result<Option<(String, Vec<PolicyFile>)>, EngineError> {
        let head = match &self.config.policies.branch {
            // A named branch that cannot be read is an error, never "no policies".
            Some(branch) => source.resolve(&format!("refs/heads/{branch}"))?,
            None => match source.resolve("HEAD") {
                Ok(head) => head,
                Err(_) => return Ok(None),
            },
        };
        let dir = format!("{folder}{}/", self.config.policies.path.trim_matches('/'));
        let dir = dir.trim_start_matches("./").to_string();
        let mut files = Vec::new();
        for entry in source.list_files(&head.sha, &dir)? {
            if !entry.path.ends_with(".rego") {
                continue;
            }
            if entry.kind != slipway_git::EntryKind::Blob {
                continue;
            }
            if files.len() == MAX_FILES {
                return Err(EngineError::Usage(format!(
                    "more than {MAX_FILES} policy files under {dir} at {}",
                    crate::apply::short(&head.sha)
                )));
            }
            let text = source
                .read_file(&head.sha, &entry.path, MAX_FILE_BYTES)?
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default();
            files.push(PolicyFile {
                path: entry.path,
                text,
            });
        }
        Ok((!files.is_empty()).then_some((head.sha, files)))
    }

    /// Judges `prepared`'s plan by the policies in force (see the module doc), with what is
    /// known of where it comes from; `None` when there is nothing to judge (no change, or no
    /// policy).
    pub fn judge(
        &self,
        prepared: &Prepared,
        source: &dyn Source,
        git: &GitContext,
    ) -> Result<Option<Judged>, EngineError> {
        if !prepared.plan.has_changes() {
            return Ok(None);
        }
        let Some((at, files)) = self.policies_in_force(source, &prepared.folder)? else {
            return Ok(None);
        };
        let document = self.plan_document(prepared, git, Some(&at));
        let limits = Limits {
            timeout: self.config.policies.timeout,
            memory: self.config.policies.memory_mib << 20,
        };
        let mut verdict = match self.evaluator() {
            Some(program) => slipway_policy::child::evaluate(&program, &files, &document, &limits),
            None => slipway_policy::evaluate(&files, &document, &limits),
        };
        verdict.locate(&prepared.locations);
        Ok(Some(Judged {
            verdict,
            policies_at: at,
        }))
    }

    /// The plan document of `prepared` (format [`PLAN_FORMAT_VERSION`]): what `plan --output
    /// json` prints and what policies read as `input`. `base` is the default branch's commit,
    /// when known.
    pub fn plan_document(&self, p: &Prepared, git: &GitContext, base: Option<&str>) -> Json {
        let env = &p.desired.environment;
        let recorded = self.store.environment(&env.name).ok().flatten();
        let before: BTreeMap<String, Json> = self
            .store
            .resources(&env.name)
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.name, r.config))
            .collect();
        let resource_changes: Vec<Json> = p
            .plan
            .changes
            .iter()
            .map(|c| {
                let after = p.desired.resources.get(&c.resource).map(|r| &r.config);
                let before = before.get(&c.resource);
                json!({
                    "address": c.resource,
                    "type": c.type_name,
                    "actions": [c.action.as_str()],
                    "before": if c.action == Action::Create { None } else { before.map(redacted) },
                    "after": if c.action == Action::Delete { None } else { after.map(redacted) },
                    "location": p.locations.get(&c.resource),
                    "reason": c.reason.as_ref().map(ToString::to_string),
                })
            })
            .collect();
        let count = |pred: &dyn Fn(&str) -> bool| {
            p.desired
                .resources
                .values()
                .filter(|r| pred(&r.type_name))
                .count()
        };
        let kubernetes_objects: usize = p
            .desired
            .resources
            .values()
            .filter(|r| r.type_name == "kubernetes.manifests")
            .filter_map(|r| r.config.get("manifests").and_then(Json::as_array))
            .map(Vec::len)
            .sum();
        json!({
            "format_version": PLAN_FORMAT_VERSION,
            "environment": p.plan.environment,
            "commit": p.plan.commit,
            "hash": p.desired.hash,
            "has_changes": p.plan.has_changes(),
            "changes": p.plan.changes,
            "env": {
                "name": env.name,
                "kind": env.kind,
                "family": env.definition,
                "protected": p.protected,
                "ttl_seconds": p.ttl.map(|t| t.as_secs()),
            },
            "git": {
                "base": base,
                "head": p.commit.sha,
                "deployed": recorded.as_ref().and_then(|r| r.commit.clone()),
                "author": p.commit.author,
                "reference": p.reference,
                "from_fork": git.from_fork,
                "labels": git.labels,
                "pull_request": git.pull_request,
            },
            "resource_changes": resource_changes,
            "sizes": {
                "resources": p.desired.resources.len(),
                "processes": count(&|t| t == "process"),
                "databases": count(&|t| t == "postgres.database"),
                "kubernetes_objects": kubernetes_objects,
            },
        })
    }
}

/// A configuration as policies see it: a Kubernetes Secret's `data` and `stringData` values
/// hidden (they may be literal in the repository), every other field as written (secrets are
/// `${secrets.NAME}` references there, never values).
fn redacted(config: &Json) -> Json {
    let mut config = config.clone();
    if let Some(items) = config.get_mut("manifests").and_then(Json::as_array_mut) {
        // Each item is `{source, object}` (where it was read, and the object).
        for item in items {
            if let Some(object) = item.get_mut(slipway_core::stack::manifests::OBJECT) {
                slipway_core::stack::manifests::redact_secret(object);
            }
        }
    }
    config
}

impl Engine {
    /// Whether `prepared`'s policies let it be applied, `approved_by` having approved soft
    /// denials (see the module doc): `Ok(true)` when it passes only by that approval, which
    /// the caller records. A person's command asks this before asking for confirmation;
    /// [`Engine::apply`] asks again, whoever calls it.
    pub fn policies_allow(
        &self,
        prepared: &Prepared,
        approved_by: Option<&str>,
    ) -> Result<bool, EngineError> {
        let Some(judged) = prepared
            .policy
            .as_ref()
            .filter(|_| prepared.plan.has_changes())
        else {
            return Ok(false);
        };
        let env = &prepared.desired.environment.name;
        let commit = crate::apply::short(&prepared.commit.sha);
        let summary = judged.verdict.summary();
        match judged.gate() {
            slipway_policy::Gate::Pass => Ok(false),
            slipway_policy::Gate::SoftFail => match approved_by {
                Some(who) if self.config.policies.owners.iter().any(|o| o == who) => Ok(true),
                Some(who) => Err(EngineError::PolicyDenied(format!(
                    "`{who}` may not approve policies (not in [policies] owners); the policies \
                     deny this plan of `{env}` at {commit}: {summary}"
                ))),
                None => Err(EngineError::PolicyDenied(format!(
                    "the policies deny this plan of `{env}` at {commit}: {summary}; an owner \
                     (in [policies] owners) may approve soft denials for this commit: \
                     `/slipway approve-policies` on its pull request, or `slipway apply --env \
                     {env} --approve-policies`"
                ))),
            },
            slipway_policy::Gate::HardFail => Err(EngineError::PolicyDenied(format!(
                "the policies deny this plan of `{env}` at {commit}: {summary}; a hard denial \
                 is lifted only by changing the plan or the policies on the default branch"
            ))),
        }
    }

    /// [`Engine::policies_allow`], recording an owner's approval in the audit log when the
    /// plan passes by it.
    pub(crate) fn check_policies(
        &self,
        prepared: &Prepared,
        options: &crate::apply::ApplyOptions,
    ) -> Result<(), EngineError> {
        let who = options.policies_approved_by.as_deref();
        if self.policies_allow(prepared, who)? {
            let judged = prepared.policy.as_ref().expect("approved means judged");
            self.store.record_audit(&slipway_state::NewAudit {
                at: slipway_state::now_ms(),
                who: who.unwrap_or_default().to_string(),
                action: "policies.approve".into(),
                target: Some(prepared.desired.environment.name.to_string()),
                outcome: "ok".into(),
                detail: format!(
                    "soft denials of {} approved: {}",
                    crate::apply::short(&prepared.commit.sha),
                    judged.verdict.summary()
                ),
            })?;
        }
        Ok(())
    }
}

/// The JSON Schema of the plan document (`slipway schema --plan`), version
/// [`PLAN_FORMAT_VERSION`]. Objects are open (`additionalProperties` allowed): a later
/// version may add keys, and bumps the version when it does.
pub fn plan_schema() -> Json {
    let sha = json!({"type": "string", "pattern": "^[0-9a-f]{40}([0-9a-f]{24})?$"});
    let nullable_sha = json!({"anyOf": [sha, {"type": "null"}]});
    let action = json!({"enum": ["create", "update", "replace", "delete", "noop"]});
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://slipway.invalid/schemas/plan-v1.json",
        "title": "Slipway plan document",
        "description": "What `slipway plan --output json` prints and what policies read as `input` (docs/policies.md).",
        "type": "object",
        "required": ["format_version", "environment", "commit", "hash", "has_changes", "changes", "env", "git", "resource_changes", "sizes"],
        "properties": {
            "format_version": {"const": PLAN_FORMAT_VERSION},
            "environment": {"type": "string", "description": "The environment's name (as before format_version 1)."},
            "commit": sha,
            "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "has_changes": {"type": "boolean"},
            "changes": {
                "type": "array",
                "description": "Per resource, with the diff of its configuration (docs/cli.md).",
                "items": {
                    "type": "object",
                    "required": ["resource", "type", "action"],
                    "properties": {"resource": {"type": "string"}, "type": {"type": "string"}, "action": action}
                }
            },
            "env": {
                "type": "object",
                "required": ["name", "kind", "family", "protected", "ttl_seconds"],
                "properties": {
                    "name": {"type": "string"},
                    "kind": {"enum": ["static", "generated", "adhoc"]},
                    "family": {"type": "string", "description": "Its `environments:` entry."},
                    "protected": {"type": "boolean"},
                    "ttl_seconds": {"type": ["integer", "null"], "minimum": 0}
                }
            },
            "git": {
                "type": "object",
                "required": ["base", "head", "deployed", "author", "reference", "from_fork", "labels", "pull_request"],
                "properties": {
                    "base": nullable_sha,
                    "head": sha,
                    "deployed": nullable_sha,
                    "author": {"type": "string"},
                    "reference": {"type": "string"},
                    "from_fork": {"type": "boolean"},
                    "labels": {"type": "array", "items": {"type": "string"}},
                    "pull_request": {"type": ["integer", "null"], "minimum": 1}
                }
            },
            "resource_changes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["address", "type", "actions", "before", "after", "location"],
                    "properties": {
                        "address": {"type": "string"},
                        "type": {"type": "string"},
                        "actions": {"type": "array", "items": action, "minItems": 1, "maxItems": 1},
                        "before": {"type": ["object", "null"]},
                        "after": {"type": ["object", "null"]},
                        "location": {"type": ["string", "null"], "description": "FILE:LINE:COL of its declaration."},
                        "reason": {"type": ["string", "null"]}
                    }
                }
            },
            "sizes": {
                "type": "object",
                "required": ["resources", "processes", "databases", "kubernetes_objects"],
                "properties": {
                    "resources": {"type": "integer", "minimum": 0},
                    "processes": {"type": "integer", "minimum": 0},
                    "databases": {"type": "integer", "minimum": 0},
                    "kubernetes_objects": {"type": "integer", "minimum": 0}
                }
            },
            "policies": {
                "type": "object",
                "description": "Not part of the policies' input: their verdict, added by `plan --output json` when they judged the plan.",
                "required": ["gate", "policies_at", "results"],
                "properties": {
                    "gate": {"enum": ["pass", "soft_fail", "hard_fail"]},
                    "policies_at": sha,
                    "results": {"type": "array"}
                }
            },
            "offline": {"type": "object"}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secrets_values_are_hidden_from_policies_and_the_rest_is_not() {
        let config = serde_json::json!({
            "cluster": "main",
            "manifests": [
                {"source": "k8s/s.yaml:1:1", "object": {
                    "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                    "data": {"password": "aHVudGVyMg=="}, "stringData": {"token": "t0ken"}}},
                {"source": "k8s/c.yaml:1:1", "object": {
                    "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                    "data": {"level": "info"}}},
            ],
        });
        let shown = redacted(&config).to_string();
        assert!(
            !shown.contains("aHVudGVyMg==") && !shown.contains("t0ken"),
            "{shown}"
        );
        assert_eq!(shown.matches("<redacted>").count(), 2, "{shown}");
        assert!(shown.contains("\"level\":\"info\""), "{shown}");
    }
}
