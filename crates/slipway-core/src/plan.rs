//! Desired state + recorded state + observations → a [`Plan`]: what apply will do, per
//! resource, with field-level diffs, in dependency order.
//!
//! Pure: the same inputs give the same plan, so plans are snapshot-tested. Observations and
//! the hashes of resolved inputs are gathered by the engine before it calls [`plan`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::render::DesiredState;
use crate::types;

/// What apply does to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// It does not exist yet.
    Create,
    /// Changed in place.
    Update,
    /// Deleted and created again (a process restarts, a job re-runs).
    Replace,
    /// No longer in the stack.
    Delete,
    /// Nothing to do.
    Noop,
}

impl Action {
    /// `create`, `update`, `replace`, `delete` or `noop`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Replace => "replace",
            Action::Delete => "delete",
            Action::Noop => "noop",
        }
    }
}

pub use crate::vocab::{Reason, ResourceStatus};

/// What the store remembers of one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Its type at the time.
    pub type_name: String,
    /// Its status.
    pub status: ResourceStatus,
    /// The desired config it was last applied with (templates unresolved); `None` when it
    /// is known to be the config desired now (the engine compares the stored text with it,
    /// and parses nothing when they are the same).
    pub config: Option<Json>,
    /// What it depended on then (deletes run dependents first).
    pub depends_on: BTreeSet<String>,
    /// Hash of its config with every reference resolved, when it was last applied.
    pub resolved_hash: Option<String>,
    /// The source hash it was last applied with.
    pub source: Option<String>,
}

/// What looking at a live object found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// As applied.
    InSync,
    /// Different from what was applied.
    Drifted(String),
    /// Gone.
    Missing(String),
}

/// Everything besides the desired state that a plan depends on.
#[derive(Debug, Clone, Default)]
pub struct PlanInput {
    /// Recorded resources, by name.
    pub recorded: BTreeMap<String, Recorded>,
    /// Observations of recorded resources; absent means not observed (assumed in sync).
    pub observed: BTreeMap<String, Observed>,
    /// For desired resources whose references can all be resolved now (from recorded
    /// outputs and allocated ports), the hash of the resolved config.
    pub resolved_now: BTreeMap<String, String>,
}

/// One field that changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FieldChange {
    /// Dotted path of the field (`env.WORKERS`, `command`).
    pub path: String,
    /// Its old value; absent when added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Json>,
    /// Its new value; absent when removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Json>,
    /// Whether this change alone forces a replacement.
    pub forces_replace: bool,
}

/// What apply will do to one resource, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Change {
    /// The resource's name.
    pub resource: String,
    /// Its type (the recorded type for deletes).
    #[serde(rename = "type")]
    pub type_name: String,
    /// What happens.
    pub action: Action,
    /// Fields that change.
    pub diff: Vec<FieldChange>,
    /// Why, when the diff does not say it (drift, an interrupted apply, an input).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// For a resource made of many live objects (`kubernetes.manifests`), what an update
    /// does to each, as the server answered a dry run against the live objects; empty when
    /// the provider has no finer view than the configuration's own diff.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectChange>,
}

/// What an update does to one live object of a resource (a Kubernetes object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ObjectChange {
    /// `Kind/name`.
    pub object: String,
    /// Where it is written (`FILE:LINE:COL`), when it is in the desired set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What happens to it.
    pub action: Action,
    /// Its fields that change, live object against the dry run's result.
    pub diff: Vec<FieldChange>,
    /// Why, when the diff does not say it (an immutable field forces a replacement).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The plan for one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The environment.
    pub environment: String,
    /// The commit planned.
    pub commit: String,
    /// Every resource, deletes first (dependents before dependencies), then the rest in
    /// dependency order.
    pub changes: Vec<Change>,
}

impl Plan {
    /// Whether anything would change.
    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action != Action::Noop)
    }

    /// How many changes of each action (noops excluded).
    pub fn counts(&self) -> BTreeMap<Action, usize> {
        let mut counts = BTreeMap::new();
        for c in self.changes.iter().filter(|c| c.action != Action::Noop) {
            *counts.entry(c.action).or_insert(0) += 1;
        }
        counts
    }
}

/// Computes the plan that takes the recorded state to `desired`.
pub fn plan(desired: &DesiredState, input: &PlanInput) -> Plan {
    let mut changes = Vec::with_capacity(desired.resources.len());

    // Deletes: recorded resources no longer desired, dependents first.
    let gone: BTreeMap<&str, Vec<&str>> = input
        .recorded
        .iter()
        .filter(|(n, _)| !desired.resources.contains_key(*n))
        .map(|(n, r)| {
            (
                n.as_str(),
                r.depends_on.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let delete_order = crate::graph::topological(&gone)
        .unwrap_or_else(|_| gone.keys().map(|s| s.to_string()).collect());
    for name in delete_order.iter().rev() {
        let rec = &input.recorded[name];
        changes.push(Change {
            resource: name.clone(),
            type_name: rec.type_name.clone(),
            action: Action::Delete,
            diff: Vec::new(),
            reason: None,
            objects: Vec::new(),
        });
    }

    let deps: BTreeMap<&str, Vec<&str>> = desired
        .resources
        .iter()
        .map(|(n, r)| {
            (
                n.as_str(),
                r.depends_on.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let order = crate::graph::topological(&deps)
        .unwrap_or_else(|_| desired.resources.keys().cloned().collect());
    let mut acted: BTreeSet<String> = BTreeSet::new();
    for name in order {
        let res = &desired.resources[&name];
        let rtype = types::lookup(&res.type_name);
        let always_replaces = rtype.map(|t| t.always_replaces()).unwrap_or(true);
        let change = match input.recorded.get(&name) {
            None => Change {
                resource: name.clone(),
                type_name: res.type_name.clone(),
                action: Action::Create,
                diff: diff(&Json::Null, &res.config, &res.type_name),
                reason: None,
                objects: Vec::new(),
            },
            Some(rec) => {
                let mut field_diff = match &rec.config {
                    Some(config) => diff(config, &res.config, &res.type_name),
                    None => Vec::new(),
                };
                if res.source.is_some() && rec.source.is_some() && res.source != rec.source {
                    let short = |s: &Option<String>| {
                        s.as_deref()
                            .map(|h| Json::String(h.chars().take(12).collect()))
                    };
                    field_diff.push(FieldChange {
                        path: "(source files)".into(),
                        before: short(&rec.source),
                        after: short(&res.source),
                        forces_replace: true,
                    });
                }
                let forced = field_diff.iter().any(|f| f.forces_replace);
                let (action, reason) = if rec.type_name != res.type_name {
                    (
                        Action::Replace,
                        Some(Reason::Other(format!(
                            "type changes from {} to {}",
                            rec.type_name, res.type_name
                        ))),
                    )
                } else if rec.status != ResourceStatus::Ready
                    && matches!(
                        rec.status,
                        ResourceStatus::Updating | ResourceStatus::Failed
                    )
                    && rtype.is_some_and(|t| t.holds_data())
                    && !forced
                {
                    // Replacing would drop the data with the failure: try the update again.
                    (
                        Action::Update,
                        Some(Reason::Other(
                            "the previous apply did not finish; retried in place, because \
                             replacing it would lose its data"
                                .to_string(),
                        )),
                    )
                } else if rec.status != ResourceStatus::Ready {
                    let other = |why: &str| Reason::Other(why.to_string());
                    let why = match rec.status {
                        ResourceStatus::Creating => other("a previous create was interrupted"),
                        ResourceStatus::Updating => other("a previous update was interrupted"),
                        ResourceStatus::Deleting => other("a previous delete was interrupted"),
                        // A job whose last run failed left stale output (a half-run
                        // migration): that is drift, repaired by running it again.
                        _ if rtype.is_some_and(|t| t.capabilities.reruns_after_failure) => {
                            Reason::Drift(
                                "the job's last run failed, so its output is stale".to_string(),
                            )
                        }
                        _ => other("the previous apply failed"),
                    };
                    (Action::Replace, Some(why))
                } else if !field_diff.is_empty() {
                    (
                        if forced || always_replaces {
                            Action::Replace
                        } else {
                            Action::Update
                        },
                        None,
                    )
                } else if let Some(Observed::Missing(why)) = input.observed.get(&name) {
                    (Action::Replace, Some(Reason::Drift(why.clone())))
                } else if let Some(Observed::Drifted(why)) = input.observed.get(&name) {
                    (
                        if always_replaces {
                            Action::Replace
                        } else {
                            Action::Update
                        },
                        Some(Reason::Drift(why.clone())),
                    )
                } else if let Some(changed) = res.references.iter().find(|r| acted.contains(*r)) {
                    (
                        if always_replaces {
                            Action::Replace
                        } else {
                            Action::Update
                        },
                        Some(Reason::Other(format!(
                            "an input from `{changed}` changes (known after apply)"
                        ))),
                    )
                } else if matches!((input.resolved_now.get(&name), &rec.resolved_hash), (Some(now), Some(then)) if now != then)
                {
                    (
                        if always_replaces {
                            Action::Replace
                        } else {
                            Action::Update
                        },
                        Some(Reason::Other("a referenced output or port changed".into())),
                    )
                } else {
                    (Action::Noop, None)
                };
                Change {
                    resource: name.clone(),
                    type_name: res.type_name.clone(),
                    action,
                    diff: field_diff,
                    reason,
                    objects: Vec::new(),
                }
            }
        };
        if change.action != Action::Noop {
            acted.insert(name.clone());
        }
        changes.push(change);
    }
    Plan {
        environment: desired.environment.name.to_string(),
        commit: desired.commit.clone(),
        changes,
    }
}

/// Field-level differences between two configs of a resource of `type_name`.
pub fn diff(before: &Json, after: &Json, type_name: &str) -> Vec<FieldChange> {
    let rtype = types::lookup(type_name);
    let mut out = Vec::new();
    let empty = serde_json::Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    for key in keys {
        let field = rtype.and_then(|t| t.field(key));
        let forces = field.map(|f| f.replaces).unwrap_or(true) && !before.is_null();
        if field.is_some_and(|f| f.kind == types::FieldKind::Manifests) {
            manifest_diff(key, b.get(key), a.get(key), forces, &mut out);
        } else {
            walk(key, b.get(key), a.get(key), forces, &mut out);
        }
    }
    out
}

/// The objects of a manifests field by their identity, `Kind/name` (with the API group when
/// two kinds of one name differ by it), without where they were written: moving an object
/// within its file changes nothing.
fn manifest_objects(value: Option<&Json>) -> BTreeMap<String, &Json> {
    let mut out = BTreeMap::new();
    for item in value.and_then(Json::as_array).into_iter().flatten() {
        let object = &item[crate::stack::manifests::OBJECT];
        let text = |v: &Json| v.as_str().unwrap_or("").to_string();
        let kind = text(&object["kind"]);
        let name = text(&object["metadata"]["name"]);
        let mut id = format!("{kind}/{name}");
        if out.contains_key(&id) {
            id = format!("{}/{id}", text(&object["apiVersion"]));
        }
        out.insert(id, object);
    }
    out
}

/// Per-object differences of a manifests field: `manifests[Deployment/web].spec.replicas`,
/// or a whole object added or removed.
fn manifest_diff(
    key: &str,
    before: Option<&Json>,
    after: Option<&Json>,
    forces: bool,
    out: &mut Vec<FieldChange>,
) {
    let b = manifest_objects(before);
    let a = manifest_objects(after);
    let ids: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    for id in ids {
        let (before, after) = (b.get(id).copied(), a.get(id).copied());
        let path = format!("{key}[{id}]");
        let is_secret = |o: Option<&Json>| o.is_some_and(|o| o["kind"] == "Secret");
        if !is_secret(before) && !is_secret(after) {
            walk(&path, before, after, forces, out);
            continue;
        }
        // A Secret's values are compared, never shown (see `redact_secret`): its changes
        // are said with `<redacted>` in their place.
        let mut changes = Vec::new();
        walk(&path, before, after, forces, &mut changes);
        let data = [format!("{path}.data"), format!("{path}.stringData")];
        for mut change in changes {
            let under_data = data
                .iter()
                .any(|d| change.path == *d || change.path.starts_with(&format!("{d}.")));
            for value in [&mut change.before, &mut change.after]
                .into_iter()
                .flatten()
            {
                if change.path == path {
                    crate::stack::manifests::redact_secret(value);
                } else if under_data {
                    *value = redact_values(value);
                }
            }
            out.push(change);
        }
    }
}

/// `value` with every string or number in it replaced by `<redacted>`.
fn redact_values(value: &Json) -> Json {
    match value {
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), redact_values(v)))
                .collect(),
        ),
        Json::Null => Json::Null,
        _ => Json::String("<redacted>".into()),
    }
}

fn walk(
    path: &str,
    before: Option<&Json>,
    after: Option<&Json>,
    forces: bool,
    out: &mut Vec<FieldChange>,
) {
    if before == after {
        return;
    }
    if let (Some(Json::Object(b)), Some(Json::Object(a))) = (before, after) {
        let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
        for key in keys {
            walk(
                &format!("{path}.{key}"),
                b.get(key),
                a.get(key),
                forces,
                out,
            );
        }
        return;
    }
    out.push(FieldChange {
        path: path.to_string(),
        before: before.cloned(),
        after: after.cloned(),
        forces_replace: forces,
    });
}
