//! The JSON Schema of `slipway.yaml`, generated from the same type catalogue the loader checks
//! against, so editors and `slipway validate` agree.

use serde_json::{Map, Value as Json, json};

use crate::types::{FieldKind, TYPES};

fn kind_schema(kind: FieldKind) -> Json {
    let string_like = json!({"type": ["string", "number", "boolean"]});
    match kind {
        FieldKind::Str | FieldKind::PortName => json!({"type": "string"}),
        FieldKind::Bool => json!({"type": "boolean"}),
        FieldKind::Duration => json!({"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d))+$"}),
        FieldKind::Mode => json!({"type": "string", "pattern": "^[0-7]{1,4}$"}),
        FieldKind::RelPath => {
            json!({"type": "string", "minLength": 1, "not": {"pattern": "(^/)|(^|/)\\.\\.(/|$)"}})
        }
        FieldKind::StrList => json!({"type": "array", "minItems": 1, "items": string_like}),
        FieldKind::Manifests => {
            json!({"type": "array", "minItems": 1, "items": {"type": "string"}})
        }
        FieldKind::NameList => json!({"type": "array", "items": string_like}),
        FieldKind::PortNames => {
            json!({"type": "array", "uniqueItems": true, "items": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}})
        }
        FieldKind::StrMap => json!({"type": "object", "additionalProperties": string_like}),
        FieldKind::Health => json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "http": {"type": "string", "pattern": "^/"},
                "tcp": {"type": "string"},
                "command": {"type": "array", "minItems": 1, "items": string_like},
                "port": {"type": "string"},
                "interval": kind_schema(FieldKind::Duration),
                "timeout": kind_schema(FieldKind::Duration)
            },
            "oneOf": [{"required": ["http"]}, {"required": ["tcp"]}, {"required": ["command"]}]
        }),
        FieldKind::Any => json!({}),
    }
}

/// The schema (JSON Schema draft 2020-12).
pub fn schema() -> Json {
    let scalar = json!({"type": ["string", "number", "boolean"]});
    let label = json!({"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"});
    let variables = json!({"type": ["object", "null"], "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}, "additionalProperties": scalar});
    let resource_types: Vec<Json> = TYPES
        .iter()
        .map(|t| {
            let mut props = Map::new();
            props.insert("type".into(), json!({"const": t.name}));
            props.insert(
                "depends_on".into(),
                json!({"type": ["array", "string"], "items": {"type": "string"}}),
            );
            props.insert("description".into(), json!({"type": "string"}));
            for f in t.fields {
                let mut s = kind_schema(f.kind);
                if let Some(o) = s.as_object_mut() {
                    o.insert("description".into(), json!(f.doc));
                }
                props.insert(f.name.into(), s);
            }
            let required: Vec<&str> = std::iter::once("type")
                .chain(t.fields.iter().filter(|f| f.required).map(|f| f.name))
                .collect();
            json!({
                "description": t.doc,
                "type": "object",
                "properties": props,
                "required": required,
                "additionalProperties": false
            })
        })
        .collect();
    let duration = kind_schema(FieldKind::Duration);
    let max_environments = json!({"type": "integer", "minimum": 1, "maximum": u32::MAX});
    let access = json!({"enum": crate::stack::ACCESS});
    let windows = json!({
        "type": ["array", "null"],
        "description": "Deploy windows: when changes may deploy. Deny wins; with allow windows, only while one is open; none: always.",
        "items": {
            "type": "object",
            "additionalProperties": false,
            "required": ["kind", "schedule", "duration"],
            "properties": {
                "kind": {"enum": crate::windows::WindowKind::WORDS},
                "schedule": {
                    "type": "string",
                    "description": "A 5-field cron expression (minute hour day-of-month month day-of-week), e.g. `0 17 * * 5`."
                },
                "duration": duration.clone(),
                "time_zone": {
                    "type": "string",
                    "description": "An IANA time zone name such as `Europe/Paris`; default `UTC`."
                }
            }
        }
    });
    let environments = json!({
        "type": ["object", "null"],
        "propertyNames": label,
        "additionalProperties": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "track": {"type": "string"},
                "protected": {"type": "boolean"},
                "self_heal": {"type": "boolean"},
                "require_pr": {"type": "boolean"},
                "apply_requirements": {
                    "type": "array",
                    "items": {"enum": crate::stack::APPLY_REQUIREMENTS},
                    "uniqueItems": true
                },
                "description": {"type": "string"},
                "ttl": kind_schema(FieldKind::Duration),
                "idle_ttl": duration.clone(),
                "sleep_after": duration.clone(),
                "max_environments": max_environments,
                "access": access,
                "windows": windows,
                "variables": variables,
                "generate": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "pull_requests": {"type": "boolean"},
                        "branches": {"type": ["array", "string"], "items": {"type": "string"}}
                    }
                }
            },
            "not": {"required": ["track", "generate"]}
        }
    });
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://slipway.dev/schema/slipway.yaml.json",
        "title": "slipway.yaml",
        "description": "A Slipway stack: the whole desired state of every environment.",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "version": {"const": 1},
            "stack": label,
            "include": {"type": ["array", "string"], "items": {"type": "string"}},
            "secrets": {
                "type": "object",
                "additionalProperties": false,
                "description": "Who can decrypt the secrets file (`slipway secret set` writes it).",
                "properties": {
                    "recipients": {
                        "type": "array",
                        "items": {"type": "string", "pattern": "^age1[a-z0-9]+$"}
                    },
                    "file": {"type": "string"}
                }
            },
            "variables": variables,
            "environments": environments,
            "resources": {
                "type": ["object", "null"],
                "propertyNames": {"pattern": "^[A-Za-z0-9_-]{1,63}$"},
                "additionalProperties": {"oneOf": resource_types}
            }
        },
        "required": ["version", "stack"]
    })
}
