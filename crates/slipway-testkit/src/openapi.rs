//! GitHub's REST API description (`@octokit/openapi`, `api.github.com.json`, fetched once per
//! target directory with the other fixtures), read once per test binary: its `$ref`s
//! resolved, the operation a request matches, the type a schema names, a webhook's schema.
//! The checks that walk it (requests against it, answers and payloads against it) are the
//! tests' own.

use std::sync::OnceLock;

use serde_json::Value;

use crate::fixtures::{fixtures_dir, read_json};

/// GitHub's REST API description.
pub struct OpenApi {
    /// The whole document.
    pub doc: Value,
}

/// The operation a request matched.
pub struct Operation<'a> {
    /// Its path template, e.g. `/repos/{owner}/{repo}/pulls`.
    pub template: String,
    /// Its `operationId`, e.g. `pulls/list`.
    pub id: String,
    /// Its description.
    pub op: &'a Value,
}

impl OpenApi {
    /// GitHub's, loaded once per test binary.
    pub fn github() -> &'static OpenApi {
        static API: OnceLock<OpenApi> = OnceLock::new();
        API.get_or_init(|| OpenApi {
            doc: read_json(&fixtures_dir().join("openapi/api.github.com.json")),
        })
    }

    /// `v`, or what its `$ref` points to (recursively).
    pub fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r.strip_prefix('#').expect("local $ref");
                self.resolve(
                    self.doc
                        .pointer(pointer)
                        .unwrap_or_else(|| panic!("dangling $ref {r}")),
                )
            }
            None => v,
        }
    }

    /// The operation for `method path`: the path template whose segments match (a `{param}`
    /// matches any one segment), preferring the one with the most literal segments.
    pub fn operation(&self, method: &str, path: &str) -> Result<Operation<'_>, String> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let paths = self.doc["paths"].as_object().expect("paths is an object");
        let mut best: Option<(usize, &String)> = None;
        for template in paths.keys() {
            let t: Vec<&str> = template.trim_start_matches('/').split('/').collect();
            if t.len() != segments.len() {
                continue;
            }
            let mut literals = 0;
            let matches = t.iter().zip(&segments).all(|(t, s)| {
                if t.starts_with('{') && t.ends_with('}') {
                    !s.is_empty()
                } else {
                    literals += 1;
                    t == s
                }
            });
            if matches && best.is_none_or(|(l, _)| literals > l) {
                best = Some((literals, template));
            }
        }
        let (_, template) =
            best.ok_or_else(|| format!("no operation in GitHub's API has the path {path}"))?;
        let op = paths[template]
            .get(method.to_ascii_lowercase())
            .ok_or_else(|| format!("GitHub's {template} has no {method} operation"))?;
        Ok(Operation {
            template: template.clone(),
            id: op["operationId"].as_str().unwrap_or_default().to_owned(),
            op,
        })
    }

    /// The schema of a webhook's payload, e.g. `pull-request-opened`, `push`.
    pub fn webhook_schema(&self, name: &str) -> &Value {
        let schema = &self.doc["x-webhooks"][name]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert!(
            !schema.is_null(),
            "GitHub's description has no webhook {name}"
        );
        schema
    }
}

/// Whether `v` (not null) has the type `schema` names; `true` when it names none.
pub fn has_type(schema: &Value, v: &Value) -> bool {
    match schema["type"].as_str() {
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("array") => v.is_array(),
        Some("object") => v.is_object(),
        _ => true,
    }
}
