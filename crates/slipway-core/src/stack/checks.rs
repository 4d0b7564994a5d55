//! Checks across the whole stack once every file is read: environments, references between
//! resources and variables, and dependency cycles.

use std::collections::{BTreeMap, BTreeSet};

use super::fields::Cx;
use super::{ENV_ATTRS, ResourceDef, Stack};
use crate::diag::{Diagnostic, Pos, did_you_mean};
use crate::template::{self, Reference};
use crate::types::{self, FieldKind, Outputs};
use crate::yaml::{Node, Value};

/// Calls `f` on every string of `node` that may hold references, by the field's kind.
pub(crate) fn visit_templates(node: &Node, kind: FieldKind, f: &mut dyn FnMut(&str, Pos)) {
    match (&node.value, kind) {
        (
            Value::Str(s),
            FieldKind::Str | FieldKind::RelPath | FieldKind::StrList | FieldKind::Any,
        ) => f(s, node.content_pos()),
        (Value::Seq(items), FieldKind::StrList | FieldKind::Any) => {
            for item in items {
                visit_templates(item, kind, f);
            }
        }
        (Value::Map(entries), FieldKind::StrMap) => {
            for (_, v) in entries {
                if let Value::Str(s) = &v.value {
                    f(s, v.content_pos());
                }
            }
        }
        (Value::Map(entries), FieldKind::Any) => {
            for (_, v) in entries {
                visit_templates(v, kind, f);
            }
        }
        (Value::Map(entries), FieldKind::Health) => {
            for (k, v) in entries {
                match &k.value {
                    Value::Str(s) if s == "http" => visit_templates(v, FieldKind::Str, f),
                    Value::Str(s) if s == "command" => visit_templates(v, FieldKind::StrList, f),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

pub(super) fn check_environments(cx: &mut Cx, stack: &Stack) {
    for env in stack.environments.values() {
        cx.file = env.location.file.clone();
        for (name, var) in &env.variables {
            if !stack.variables.contains_key(name) {
                let hint = match did_you_mean(name, stack.variables.keys().map(String::as_str)) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!(
                        "declare it under the top-level `variables:` first, e.g. `variables: {{ {name}: ... }}`"
                    ),
                };
                cx.diags.push(
                    Diagnostic::error(
                        &var.location.file,
                        var.location.pos,
                        format!(
                            "environment `{}` sets undeclared variable `{name}`",
                            env.name
                        ),
                    )
                    .with_hint(hint),
                );
            }
        }
    }
}

pub(super) fn check_references(cx: &mut Cx, stack: &mut Stack) {
    let names: BTreeSet<String> = stack.resources.keys().cloned().collect();
    let ports_of: BTreeMap<String, BTreeSet<String>> = stack
        .resources
        .iter()
        .map(|(n, r)| (n.clone(), own_ports(r)))
        .collect();
    let types_of: BTreeMap<String, String> = stack
        .resources
        .iter()
        .map(|(n, r)| (n.clone(), r.type_name.clone()))
        .collect();
    let vars: BTreeSet<String> = stack.variables.keys().cloned().collect();
    let secrets = &stack.secrets;
    for res in stack.resources.values_mut() {
        cx.file = res.location.file.clone();
        let Some(rtype) = types::lookup(&res.type_name) else {
            continue;
        };
        let own = &ports_of[&res.name];
        let mut implicit = BTreeSet::new();
        for (field, node) in &res.fields {
            if field == "depends_on" {
                let items: Vec<&Node> = match &node.value {
                    Value::Seq(items) => items.iter().collect(),
                    _ => vec![node],
                };
                for item in items {
                    if let Value::Str(dep) = &item.value {
                        if dep == &res.name {
                            cx.err(
                                item.pos,
                                format!("resource `{dep}` depends on itself"),
                                Some("remove it from `depends_on`"),
                            );
                        } else if !names.contains(dep) {
                            let hint = cx.suggest(dep, &names, "resource");
                            cx.err(
                                item.pos,
                                format!("`depends_on` names unknown resource `{dep}`"),
                                Some(&hint),
                            );
                        }
                    }
                }
                continue;
            }
            let Some(spec) = rtype.field(field) else {
                continue;
            };
            if spec.kind == FieldKind::PortName
                && let Value::Str(p) = &node.value
                && !own.contains(p)
            {
                cx.err(
                    node.pos,
                    format!(
                        "`{field}` names port `{p}`, which resource `{}` does not declare",
                        res.name
                    ),
                    Some(&format!("add it to `ports:`, e.g. `ports: [{p}]`")),
                );
            }
            if spec.kind == FieldKind::Health {
                check_health_ports(cx, node, own, &res.name);
            }
            // Each string that may hold references, with the file it is written in (a
            // manifest's own file for the objects of a `manifests:` field) and whether a
            // secret may be used there.
            // A string without `$` holds no reference and no malformed one: not kept.
            let mut strings: Vec<(String, Pos, Option<String>, bool)> = Vec::new();
            if spec.kind == FieldKind::Manifests {
                super::manifests::templates(node, &mut |s, pos, file, secrets_allowed| {
                    if s.contains('$') {
                        strings.push((s.to_string(), pos, Some(file.to_string()), secrets_allowed));
                    }
                });
            } else {
                visit_templates(node, spec.kind, &mut |s, pos| {
                    if s.contains('$') {
                        strings.push((s.to_string(), pos, None, true));
                    }
                });
            }
            for (s, pos, file, secrets_allowed) in strings {
                let s = s.as_str();
                cx.file = file.unwrap_or_else(|| res.location.file.clone());
                let segments = match template::parse(s) {
                    Ok(segments) => segments,
                    Err(e) => {
                        cx.err(
                            Pos::new(pos.line, pos.col + offset_col(s, e.offset)),
                            e.message,
                            e.hint.as_deref(),
                        );
                        continue;
                    }
                };
                for seg in segments {
                    let template::Segment::Ref(r, offset) = seg else {
                        continue;
                    };
                    let at = Pos::new(pos.line, pos.col + offset_col(s, offset));
                    match &r {
                        Reference::Var(v) if !vars.contains(v) => {
                            let hint = cx.suggest(v, &vars, "variable");
                            cx.err(at, format!("unknown variable `{v}` in `{r}`"), Some(&hint));
                        }
                        Reference::Env(a) if !ENV_ATTRS.contains(&a.as_str()) => cx.err(
                            at,
                            format!("unknown environment attribute `{a}` in `{r}`"),
                            Some("`${env.name}`, `${env.stack}` and `${env.kind}` are available"),
                        ),
                        Reference::Port(p) if !own.contains(p) => cx.err(
                            at,
                            format!(
                                "`{r}` names a port that resource `{}` does not declare",
                                res.name
                            ),
                            Some(&format!("add `{p}` to its `ports:`")),
                        ),
                        Reference::Secret(_) if !secrets_allowed => cx.err(
                            at,
                            format!("`{r}` is used outside a Secret's `stringData`"),
                            Some("a manifest may use a secret only in a `kind: Secret` object's `stringData`, which no plan shows"),
                        ),
                        Reference::Secret(s) if !secrets.entries.contains_key(s) => {
                            let hint = match did_you_mean(
                                s,
                                secrets.entries.keys().map(String::as_str),
                            ) {
                                Some(m) => format!("did you mean `{m}`?"),
                                None => format!(
                                    "set it with `slipway secret set {s}` (it encrypts standard input into {}) and commit that file",
                                    secrets.file
                                ),
                            };
                            cx.err(
                                at,
                                format!("secret `{s}` is not set in `{}`", secrets.file),
                                Some(&hint),
                            );
                        }
                        Reference::Resource { name, output } => {
                            if name == &res.name {
                                cx.err(
                                    at,
                                    format!("resource `{name}` references itself in `{r}`"),
                                    Some("use `${ports.NAME}` for the resource's own ports"),
                                );
                            } else if let Some(target_type) = types_of.get(name) {
                                implicit.insert(name.clone());
                                if let Some(why) =
                                    output_error(target_type, &ports_of[name], output)
                                {
                                    cx.err(at, format!("`{r}`: {why}"), None);
                                } else if !secrets_allowed
                                    && is_secret_output(target_type, output)
                                {
                                    // Anywhere else in a manifest its value is shown: in the
                                    // plan's objects, and in what the cluster says of them
                                    // (a dry run's error quotes the value it refuses).
                                    cx.err(
                                        at,
                                        format!(
                                            "`{r}` is a secret output, used outside a Secret's \
                                             `stringData`"
                                        ),
                                        Some(
                                            "a manifest may use a secret output only in a \
                                             `kind: Secret` object's `stringData`, which no plan \
                                             shows; a workload reads it from that Secret",
                                        ),
                                    );
                                }
                            } else {
                                let hint = cx.suggest(name, &names, "resource");
                                cx.err(
                                    at,
                                    format!("unknown resource `{name}` in `{r}`"),
                                    Some(&hint),
                                );
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        cx.file = res.location.file.clone();
        res.dependencies.extend(implicit);
        res.dependencies
            .retain(|d| d != &res.name && names.contains(d));
    }
}

fn check_health_ports(cx: &mut Cx, node: &Node, own: &BTreeSet<String>, name: &str) {
    let Value::Map(entries) = &node.value else {
        return;
    };
    let mut has_http = false;
    for (k, v) in entries {
        match (&k.value, &v.value) {
            (Value::Str(f), Value::Str(p)) if (f == "tcp" || f == "port") && !own.contains(p) => {
                cx.err(
                    v.pos,
                    format!(
                        "`health.{f}` names port `{p}`, which resource `{name}` does not declare"
                    ),
                    Some("health checks use the resource's own ports"),
                );
            }
            (Value::Str(f), _) if f == "http" => has_http = true,
            _ => {}
        }
    }
    if has_http && own.is_empty() {
        cx.err(
            node.pos,
            format!("an http health check needs a port, and resource `{name}` declares none"),
            Some("add `ports: [http]` and pass `${ports.http}` to the command"),
        );
    }
}

fn offset_col(s: &str, byte_offset: usize) -> u32 {
    u32::try_from(s.get(..byte_offset).map(|p| p.chars().count()).unwrap_or(0)).unwrap_or(0)
}

fn own_ports(res: &ResourceDef) -> BTreeSet<String> {
    match res.fields.get("ports").map(|n| &n.value) {
        Some(Value::Seq(items)) => items
            .iter()
            .filter_map(|i| match &i.value {
                Value::Str(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// Whether `output` of a resource of type `type_name` is one whose value is a secret (a
/// database's `password` and `url`).
fn is_secret_output(type_name: &str, output: &[String]) -> bool {
    types::lookup(type_name)
        .is_some_and(|t| matches!(output, [o] if t.secret_outputs.contains(&o.as_str())))
}

fn output_error(type_name: &str, ports: &BTreeSet<String>, output: &[String]) -> Option<String> {
    let rtype = types::lookup(type_name)?;
    let joined = output.join(".");
    match rtype.outputs {
        Outputs::Any => None,
        Outputs::Fixed(names) => (!(output.len() == 1 && names.contains(&output[0].as_str())))
            .then(|| {
                format!(
                    "a `{type_name}` resource has no output `{joined}`; it has: {}",
                    names.join(", ")
                )
            }),
        Outputs::Process => match output {
            [o] if o == "url" => None,
            [p, port] if p == "ports" && ports.contains(port) => None,
            [p, port] if p == "ports" => Some(format!("the resource declares no port `{port}`")),
            _ => Some(format!(
                "a `process` resource has no output `{joined}`; it has `url` and `ports.NAME`"
            )),
        },
    }
}

pub(super) fn check_cycles(cx: &mut Cx, stack: &Stack) {
    if let Err(cycle) = crate::graph::order(&stack.resources) {
        let first = &stack.resources[&cycle[0]];
        let path = cycle
            .iter()
            .chain(std::iter::once(&cycle[0]))
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(" → ");
        cx.diags.push(
            Diagnostic::error(&first.location.file, first.location.pos, format!("dependency cycle: {path}"))
                .with_hint("a resource cannot wait for itself; remove one of the references or `depends_on` entries"),
        );
    }
}
