//! Kubernetes manifests named by a [`FieldKind::Manifests`] field: the globs written in
//! `slipway.yaml` are expanded against the commit's files when the stack loads, and each YAML
//! document becomes one object of the field's value, with the place it was written.
//!
//! Reading them here, not at apply time, means a manifest is part of the commit's desired
//! state like any other field: its `${...}` references are checked (with the file, line and
//! column of the manifest), rendered for each environment, compared by the planner, and
//! shown by `slipway render`. The provider receives objects, never paths.
//!
//! The expanded value is a list of `{source: "FILE:LINE:COL", object: {...}}`.

use std::collections::BTreeSet;

use super::fields::{Cx, check_relative_path};
use super::{Files, LoadLimits, Stack, file_error};
use crate::diag::Pos;
use crate::types::{self, FieldKind};
use crate::yaml::{self, Node, Value};

/// Most objects one resource may apply.
pub const MAX_OBJECTS: usize = 5_000;
/// Most manifest files one resource may read.
pub const MAX_FILES: usize = 1_000;
/// Most bytes of manifests a stack may read, all its resources' files together (a file named
/// by several resources counting for each): whoever pushes a branch chooses the globs, and
/// must not make the controller parse gigabytes.
pub const MAX_BYTES: usize = 32 * 1024 * 1024;
/// Most objects all the manifests of a stack may hold.
pub const MAX_STACK_OBJECTS: usize = 20_000;

/// A manifest object's keys holding where it was written and the object itself.
pub const SOURCE: &str = "source";
/// See [`SOURCE`].
pub const OBJECT: &str = "object";

/// Hides the values of `object`'s `data` and `stringData` when it is a Kubernetes `Secret`:
/// they may be literal in the repository, and plans, policies and the API are read by people
/// who may not read it. Whether it changed stays known (the caller compares before hiding).
pub fn redact_secret(object: &mut serde_json::Value) {
    if object.get("kind").and_then(serde_json::Value::as_str) != Some("Secret") {
        return;
    }
    for key in ["data", "stringData"] {
        if let Some(map) = object
            .get_mut(key)
            .and_then(serde_json::Value::as_object_mut)
        {
            for value in map.values_mut() {
                *value = serde_json::Value::String("<redacted>".into());
            }
        }
    }
}

/// Replaces the globs of every manifests field with the objects they name.
pub(super) fn expand(
    cx: &mut Cx,
    files: &dyn Files,
    base: &str,
    stack: &mut Stack,
    limits: &LoadLimits,
) {
    let mut listing: Option<Result<Vec<String>, String>> = None;
    // One budget for the whole stack: a file named by many resources is read for each, and a
    // budget per resource let a hundred resources make the loader hold gigabytes.
    let mut budget = MAX_BYTES;
    let (mut stack_objects, mut over) = (0usize, false);
    for res in stack.resources.values_mut() {
        let Some(rtype) = types::lookup(&res.type_name) else {
            continue;
        };
        for field in rtype
            .fields
            .iter()
            .filter(|f| f.kind == FieldKind::Manifests)
        {
            let Some(node) = res.fields.get_mut(field.name) else {
                continue;
            };
            cx.file = res.location.file.clone();
            let listing = listing.get_or_insert_with(|| {
                files.list().map_err(|e| match e {
                    super::FileError::Other(why) => why,
                    other => format!("{other:?}"),
                })
            });
            let paths = match listing {
                Ok(paths) => paths,
                Err(why) => {
                    cx.err(
                        node.pos,
                        format!(
                            "cannot list the repository's files to expand `{}`: {why}",
                            field.name
                        ),
                        None,
                    );
                    continue;
                }
            };
            let chosen = matching_files(cx, node, base, paths, field.name);
            let mut objects = Vec::new();
            for path in chosen {
                if over {
                    // Said once, at the resource that reached it.
                    break;
                }
                if !read_objects(cx, files, &path, limits, &mut budget, &mut objects) {
                    over = true;
                    cx.file = res.location.file.clone();
                    cx.err(
                        node.pos,
                        format!(
                            "`{}` reaches more than {} MiB of manifests in the stack, all its \
                             resources together",
                            field.name,
                            MAX_BYTES >> 20
                        ),
                        Some(
                            "keep what a stack deploys under that; a file named by several \
                             resources counts for each",
                        ),
                    );
                    break;
                }
                if objects.len() > MAX_OBJECTS {
                    cx.file = res.location.file.clone();
                    cx.err(
                        node.pos,
                        format!("`{}` names more than {MAX_OBJECTS} objects", field.name),
                        Some("split them over several resources"),
                    );
                    objects.truncate(MAX_OBJECTS);
                    break;
                }
            }
            stack_objects += objects.len();
            if stack_objects > MAX_STACK_OBJECTS && !over {
                over = true;
                cx.file = res.location.file.clone();
                cx.err(
                    node.pos,
                    format!("the stack's manifests hold more than {MAX_STACK_OBJECTS} objects"),
                    Some("split the stack"),
                );
                objects.clear();
            }
            *node = Node {
                pos: node.pos,
                value: Value::Seq(objects),
                quoted: false,
            };
        }
    }
}

/// The files the globs of `node` name, in the order the globs are written (each glob's files
/// sorted), each once. A glob that names no file is an error: a typo would otherwise apply
/// nothing and prune everything.
fn matching_files(
    cx: &mut Cx,
    node: &Node,
    base: &str,
    paths: &[String],
    field: &str,
) -> Vec<String> {
    let Value::Seq(globs) = &node.value else {
        return Vec::new();
    };
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let mut seen = BTreeSet::new();
    let mut chosen = Vec::new();
    for item in globs {
        let Value::Str(written) = &item.value else {
            continue;
        };
        if let Err(why) = check_relative_path(written.trim_end_matches('/')) {
            cx.err(
                item.pos,
                format!("`{field}`: `{written}` is refused: {why}"),
                Some("name files inside the stack's folder, e.g. `k8s/*.yaml`"),
            );
            continue;
        }
        let pattern = match glob::Pattern::new(&format!("{base}{}", written.trim_end_matches('/')))
        {
            Ok(p) => p,
            Err(e) => {
                cx.err(
                    item.pos,
                    format!("`{field}`: `{written}` is not a valid glob: {}", e.msg),
                    Some("use `*`, `**` and `?`, e.g. `k8s/**/*.yaml`"),
                );
                continue;
            }
        };
        let folder = format!("{base}{}/", written.trim_end_matches('/'));
        let mut found: Vec<&String> = paths
            .iter()
            .filter(|p| {
                pattern.matches_with(p, options)
                    // A folder names the manifests under it.
                    || (p.starts_with(&folder) && is_manifest(p))
            })
            .collect();
        found.sort();
        if found.is_empty() {
            cx.err(
                item.pos,
                format!("`{field}`: `{written}` names no file at this commit"),
                Some("check the path; globs are relative to the folder of slipway.yaml"),
            );
        }
        for path in found {
            if chosen.len() >= MAX_FILES {
                cx.err(
                    item.pos,
                    format!("`{field}` names more than {MAX_FILES} files"),
                    Some("split them over several resources"),
                );
                return chosen;
            }
            if seen.insert(path.clone()) {
                chosen.push(path.clone());
            }
        }
    }
    chosen
}

fn is_manifest(path: &str) -> bool {
    [".yaml", ".yml", ".json"]
        .iter()
        .any(|ext| path.ends_with(ext))
}

/// Reads the YAML documents of `path` as objects, each checked to be one Kubernetes object
/// (`apiVersion`, `kind`, `metadata.name`), taking its size from `budget`. `false` when the
/// budget does not hold the file: it is then not parsed.
fn read_objects(
    cx: &mut Cx,
    files: &dyn Files,
    path: &str,
    limits: &LoadLimits,
    budget: &mut usize,
    out: &mut Vec<Node>,
) -> bool {
    cx.file = path.to_string();
    let text = match files.read(path) {
        Ok(text) => text,
        Err(e) => {
            cx.diags.push(file_error(path, Pos::new(1, 1), path, &e));
            return true;
        }
    };
    let Some(left) = budget.checked_sub(text.len()) else {
        return false;
    };
    *budget = left;
    let (docs, errors) = yaml::parse_documents_in(&text, limits.yaml, &mut cx.budget);
    for e in errors {
        cx.err(e.pos, e.message, e.hint.as_deref());
    }
    for doc in docs {
        if let Some(why) = not_an_object(&doc) {
            cx.err(doc.pos, why, Some("each YAML document of a manifest is one object with `apiVersion`, `kind` and `metadata.name`"));
            continue;
        }
        // Rendered as every string of the resource is: a file named `${secrets.X}.yaml` would
        // have had a secret substituted into where its objects come from (messages, plans),
        // past the rule that secrets go only in a Secret's `stringData`. Its name is literal.
        let source = format!(
            "{}:{}:{}",
            crate::template::escape(path),
            doc.pos.line,
            doc.pos.col
        );
        let pos = doc.pos;
        let str_node = |s: &str| Node {
            pos,
            value: Value::Str(s.to_string()),
            quoted: true,
        };
        out.push(Node {
            pos,
            value: Value::Map(vec![
                (str_node(SOURCE), str_node(&source)),
                (str_node(OBJECT), doc),
            ]),
            quoted: false,
        });
    }
    true
}

/// Why `doc` is not one Kubernetes object, if it is not.
fn not_an_object(doc: &Node) -> Option<String> {
    let get = |node: &Node, key: &str| -> Option<Value> {
        match &node.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.value == Value::Str(key.into()))
                .map(|(_, v)| v.value.clone()),
            _ => None,
        }
    };
    if !matches!(doc.value, Value::Map(_)) {
        return Some(format!(
            "a manifest document must be a mapping, found {}",
            doc.value.kind()
        ));
    }
    for key in ["apiVersion", "kind"] {
        match get(doc, key) {
            Some(Value::Str(s)) if !s.is_empty() => {}
            _ => return Some(format!("a manifest object needs `{key}` (a string)")),
        }
    }
    if let Some(Value::Str(kind)) = get(doc, "kind")
        && kind.ends_with("List")
    {
        return Some(format!("`kind: {kind}` is not applied as one object"));
    }
    let metadata = match &doc.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.value == Value::Str("metadata".into()))
            .map(|(_, v)| v),
        _ => None,
    };
    match metadata.and_then(|m| get(m, "name")) {
        Some(Value::Str(s)) if !s.is_empty() => None,
        _ => Some("a manifest object needs `metadata.name` (server-side apply names every object; `generateName` is not supported)".into()),
    }
}

/// Every string of an expanded manifests value that may hold a reference, with the file it was
/// written in and whether a `${secrets.S}` may appear there (only in a `Secret`'s
/// `stringData`, which the provider sends and no plan shows).
pub(crate) fn templates(node: &Node, f: &mut dyn FnMut(&str, Pos, &str, bool)) {
    let Value::Seq(items) = &node.value else {
        return;
    };
    for item in items {
        let Value::Map(entries) = &item.value else {
            continue;
        };
        let field = |key: &str| {
            entries
                .iter()
                .find(|(k, _)| k.value == Value::Str(key.into()))
                .map(|(_, v)| v)
        };
        let (Some(source), Some(object)) = (field(SOURCE), field(OBJECT)) else {
            continue;
        };
        let Value::Str(source) = &source.value else {
            continue;
        };
        let file = source.rsplitn(3, ':').nth(2).unwrap_or(source);
        let Value::Map(fields) = &object.value else {
            continue;
        };
        let is_secret = fields.iter().any(|(k, v)| {
            k.value == Value::Str("kind".into()) && v.value == Value::Str("Secret".into())
        });
        for (key, value) in fields {
            let secrets_allowed = is_secret && key.value == Value::Str("stringData".into());
            super::checks::visit_templates(value, FieldKind::Any, &mut |s, pos| {
                f(s, pos, file, secrets_allowed)
            });
        }
    }
}
