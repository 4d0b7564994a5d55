//! How two environments' desired states differ: their commits, the variables whose values
//! differ, and the resources whose rendered config or source differ or that only one has.
//! Pure: two [`DesiredState`]s in, a [`Comparison`] out.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value as Json, json};

use crate::plan::{self, FieldChange};
use crate::render::{DesiredResource, DesiredState};

/// A variable whose value differs between the two environments.
#[derive(Debug, Clone, PartialEq)]
pub struct VariableDifference {
    /// Its name.
    pub name: String,
    /// Its value in the first environment (`None`: not defined there).
    pub a: Option<Json>,
    /// Its value in the second.
    pub b: Option<Json>,
}

/// How one resource differs.
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceDifference {
    /// Both have it; its config or its source differs.
    Changed {
        /// The resource.
        resource: String,
        /// The field-level differences from the first environment's config to the second's.
        diff: Vec<FieldChange>,
        /// Whether it runs different repository code.
        source_differs: bool,
    },
    /// Only one environment has it.
    OnlyIn {
        /// The resource.
        resource: String,
        /// The name of the environment that has it.
        environment: String,
    },
}

/// How two environments' desired states differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The first environment's name.
    pub a: String,
    /// The second environment's name.
    pub b: String,
    /// The commit the first renders.
    pub commit_a: String,
    /// The commit the second renders.
    pub commit_b: String,
    /// Variables whose values differ, by name.
    pub variables: Vec<VariableDifference>,
    /// Resources that differ, by name.
    pub resources: Vec<ResourceDifference>,
}

impl Comparison {
    /// Whether both render the same commit.
    pub fn same_commit(&self) -> bool {
        self.commit_a == self.commit_b
    }

    /// Whether nothing differs but the environments' names (and perhaps their commits).
    pub fn is_empty(&self) -> bool {
        self.variables.is_empty() && self.resources.is_empty()
    }

    /// The documented `compare --output json` shape: the environments' names are keys of
    /// `commits` and of each variable.
    pub fn to_json(&self) -> Json {
        let (a, b) = (self.a.as_str(), self.b.as_str());
        let variables: Vec<Json> = self
            .variables
            .iter()
            .map(|v| json!({"name": v.name, a: v.a, b: v.b}))
            .collect();
        let resources: Vec<Json> = self
            .resources
            .iter()
            .map(|r| match r {
                ResourceDifference::Changed {
                    resource,
                    diff,
                    source_differs,
                } => json!({"resource": resource, "diff": diff, "source_differs": source_differs}),
                ResourceDifference::OnlyIn {
                    resource,
                    environment,
                } => {
                    json!({"resource": resource, "only_in": environment, "present_in_both": false})
                }
            })
            .collect();
        json!({
            "a": a,
            "b": b,
            "commits": {a: self.commit_a, b: self.commit_b},
            "same_commit": self.same_commit(),
            "variables": variables,
            "resources": resources,
        })
    }
}

/// Compares `da` (environment `a`'s desired state) with `db`.
pub fn compare(da: &DesiredState, db: &DesiredState) -> Comparison {
    let variables = union(&da.variables, &db.variables)
        .into_iter()
        .filter_map(|name| {
            let (va, vb) = (da.variables.get(name), db.variables.get(name));
            (va != vb).then(|| VariableDifference {
                name: name.clone(),
                a: va.cloned(),
                b: vb.cloned(),
            })
        })
        .collect();
    let resources = union(&da.resources, &db.resources)
        .into_iter()
        .filter_map(|name| resource_difference(name, da, db))
        .collect();
    Comparison {
        a: da.environment.name.to_string(),
        b: db.environment.name.to_string(),
        commit_a: da.commit.clone(),
        commit_b: db.commit.clone(),
        variables,
        resources,
    }
}

fn resource_difference(
    name: &str,
    da: &DesiredState,
    db: &DesiredState,
) -> Option<ResourceDifference> {
    let pair: (Option<&DesiredResource>, Option<&DesiredResource>) =
        (da.resources.get(name), db.resources.get(name));
    match pair {
        (Some(ra), Some(rb)) => {
            let diff = plan::diff(&ra.config, &rb.config, &rb.type_name);
            let source_differs = ra.source != rb.source;
            (!diff.is_empty() || source_differs).then(|| ResourceDifference::Changed {
                resource: name.to_string(),
                diff,
                source_differs,
            })
        }
        (ra, _) => Some(ResourceDifference::OnlyIn {
            resource: name.to_string(),
            environment: if ra.is_some() {
                da.environment.name.to_string()
            } else {
                db.environment.name.to_string()
            },
        }),
    }
}

fn union<'a, V>(a: &'a BTreeMap<String, V>, b: &'a BTreeMap<String, V>) -> BTreeSet<&'a String> {
    a.keys().chain(b.keys()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A desired state of environment `env` at `commit`, with `variables` and `resources`
    /// (`{NAME: {"type", "config", "source"?}}`).
    fn state(env: &str, commit: &str, variables: Json, resources: Json) -> DesiredState {
        let mut resources = resources;
        for r in resources.as_object_mut().expect("an object").values_mut() {
            r["depends_on"] = json!([]);
            r["references"] = json!([]);
        }
        serde_json::from_value(json!({
            "stack": "cmp",
            "environment": {"name": env, "definition": env, "kind": "static",
                            "protected": false, "self_heal": true},
            "commit": commit,
            "variables": variables,
            "resources": resources,
            "hash": "",
        }))
        .expect("a desired state")
    }

    fn file(content: &str) -> Json {
        json!({"type": "file", "config": {"path": "app.toml", "content": content}})
    }

    #[test]
    fn only_the_overridden_variable_and_the_resource_reading_it_differ() {
        let dev = state(
            "dev",
            "c1",
            json!({"level": "info", "n": 1}),
            json!({"conf": file("level = info"), "notes": file("same")}),
        );
        let prod = state(
            "prod",
            "c1",
            json!({"level": "warn", "n": 1}),
            json!({"conf": file("level = warn"), "notes": file("same")}),
        );
        let c = compare(&dev, &prod);
        assert!(c.same_commit());
        let names: Vec<&str> = c.variables.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["level"]);
        assert_eq!(c.variables[0].a, Some(json!("info")));
        assert_eq!(c.variables[0].b, Some(json!("warn")));
        assert!(
            matches!(&c.resources[..], [ResourceDifference::Changed { resource, source_differs: false, diff }] if resource == "conf" && diff.len() == 1),
            "{:?}",
            c.resources
        );
        let j = c.to_json();
        assert_eq!(j["commits"]["dev"], "c1");
        assert_eq!(j["variables"][0]["prod"], "warn");
        assert_eq!(j["resources"][0]["resource"], "conf");
    }

    #[test]
    fn a_resource_only_one_has_and_new_code_are_differences() {
        let mut job = file("x");
        job["source"] = json!("s1");
        let dev = state(
            "dev",
            "c1",
            json!({}),
            json!({"notes": file("same"), "extra": file("x"), "job": job}),
        );
        let mut job = file("x");
        job["source"] = json!("s2");
        let prod = state(
            "prod",
            "c2",
            json!({}),
            json!({"notes": file("same"), "job": job}),
        );
        let c = compare(&dev, &prod);
        assert!(!c.same_commit());
        assert!(c.variables.is_empty());
        assert_eq!(
            c.resources,
            [
                ResourceDifference::OnlyIn {
                    resource: "extra".into(),
                    environment: "dev".into()
                },
                ResourceDifference::Changed {
                    resource: "job".into(),
                    diff: Vec::new(),
                    source_differs: true
                }
            ]
        );
        assert_eq!(c.to_json()["resources"][0]["only_in"], "dev");
        assert_eq!(c.to_json()["resources"][0]["present_in_both"], false);
    }

    #[test]
    fn an_environment_compared_with_itself_has_no_differences() {
        let d = state("dev", "c1", json!({"a": 1}), json!({"notes": file("same")}));
        assert!(compare(&d, &d).is_empty());
    }
}
