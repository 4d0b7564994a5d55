//! The plan comment: every environment a pull request changes, planned at its head and posted
//! as one comment (updated in place) with a `slipway/plan` commit status.

use slipway_core::EnvName;
use slipway_core::plan::{Action as Change, Plan};
use slipway_core::render::EnvKind;
use slipway_engine::EnvTarget;
use slipway_forge::{
    CommitStatus, DEFAULT_PLAN_MARKER, EnvPlan, PlanCommentOptions, StatusState,
    render_plan_comment,
};
use slipway_state::PullRequestRecord;

use super::{origin_at, setup, short};
use crate::{ControllerError, Inner};

/// The commit at the head of pull request `number` in the repository, after a fetch: the
/// forge's pull request ref (`refs/pull/N/head`, `refs/merge-requests/N/head`), which also
/// holds a fork's code. Errors when it is not the head the forge announced.
pub(super) fn fetched_head(
    inner: &Inner,
    record: &PullRequestRecord,
) -> Result<String, ControllerError> {
    let forge = &setup(inner)?.forge;
    let reference = forge.pr_head_ref(record.number as u64);
    let resolve = || inner.source.resolve(&reference).map(|c| c.sha);
    let mut sha = resolve();
    if sha.as_deref().ok() != Some(record.head_sha.as_str()) {
        inner.fetch()?;
        sha = resolve();
    }
    match sha {
        Ok(sha) if sha == record.head_sha => Ok(sha),
        Ok(other) => Err(ControllerError::Invalid(format!(
            "{reference} is at {} in the repository, not at {} as the forge says; the next \
             event will plan the newer one",
            short(&other),
            short(&record.head_sha)
        ))),
        Err(e) => Err(ControllerError::Invalid(format!(
            "{reference} cannot be read from the repository ({e}); is the forge pushing pull \
             request refs to it?"
        ))),
    }
}

/// The environments a pull request changes: every static environment tracking its base
/// branch, and its preview when a family makes one; `only` narrows to one.
fn targets(
    stack: &slipway_core::stack::Stack,
    record: &PullRequestRecord,
    only: Option<&EnvName>,
) -> Vec<EnvTarget> {
    let mut out = Vec::new();
    for (definition, def) in &stack.environments {
        // A valid stack's environment keys are names; the loader refuses any other.
        let Ok(name) = EnvName::parse(definition) else {
            continue;
        };
        if def.track.as_deref() == Some(record.base_ref.as_str()) {
            out.push(EnvTarget {
                name,
                definition: definition.clone(),
                kind: EnvKind::Static,
                owner: None,
                ttl: None,
                idle_limits: (None, None),
                access_in_force: None,
                windows_in_force: Default::default(),
            });
        }
    }
    if record.preview_allowed
        && let Some((family, def)) = stack
            .environments
            .iter()
            .find(|(_, d)| d.generate.as_ref().is_some_and(|g| g.pull_requests))
    {
        out.push(EnvTarget {
            name: EnvName::pull_request(record.number),
            definition: family.clone(),
            kind: EnvKind::Generated,
            owner: Some(record.author.clone()),
            ttl: def.ttl,
            idle_limits: (def.sleep_after, def.idle_ttl),
            access_in_force: Some(def.access(EnvKind::Generated)),
            // A plan only: the preview's deploy (`reconcile`) is judged by its family's
            // windows at the default branch, whatever this head says.
            windows_in_force: Default::default(),
        });
    }
    if let Some(only) = only {
        out.retain(|t| &t.name == only);
    }
    out
}

/// Whether the head's `slipway/plan` status goes to pending while its plans are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Announce {
    /// Yes: the pull request's own event (a push, a command); its last plans are stale.
    Pending,
    /// No: planned again because its base moved; the last plans stand until these are in.
    Quietly,
}

/// Plans the pull request's head for each environment it changes and posts them as the one
/// plan comment, with a `slipway/plan` commit status.
pub(crate) fn post_plans(
    inner: &Inner,
    record: &PullRequestRecord,
    only: Option<&EnvName>,
    announce: Announce,
) -> Result<(), ControllerError> {
    let setup = setup(inner)?;
    let forge = &setup.forge;
    let status = |state: StatusState, description: &str| {
        let _ = forge.set_status(&CommitStatus {
            sha: record.head_sha.clone(),
            context: "slipway/plan".into(),
            state,
            description: description.chars().take(140).collect(),
            target_url: None,
        });
    };
    if announce == Announce::Pending {
        status(StatusState::Pending, "planning");
    }
    let head = match fetched_head(inner, record) {
        Ok(sha) => sha,
        Err(e) => {
            status(StatusState::Error, &e.to_string());
            return Err(e);
        }
    };
    // Through the engine's commit cache: the plans below prepare from the same load.
    let cached = match inner.engine.load(&origin_at(inner, &head)) {
        Ok(cached) => cached,
        // Not read this time (a fetch still writing it): the status says so rather than
        // "planning" for good.
        Err(e) => {
            status(StatusState::Error, &e.to_string());
            return Err(e.into());
        }
    };
    let mut plans = Vec::new();
    // The environments whose plan the policies block.
    let mut blocked: Vec<String> = Vec::new();
    match cached.loaded.valid_stack() {
        Err(first) => plans.push(EnvPlan {
            env: "(all)".into(),
            summary_line: "the stack does not validate".into(),
            detail_text: String::new(),
            error: Some(first),
            preview_url: None,
            queued: None,
            policy: None,
        }),
        Ok(stack) => {
            let mut targets = targets(stack, record, only);
            // Which branch a running static environment tracks is its record's, not what the
            // pull request's stack says: a PR into another branch does not change it.
            targets.retain(|t| {
                t.kind != EnvKind::Static
                    || inner
                        .engine
                        .store()
                        .environment(&t.name)
                        .ok()
                        .flatten()
                        .is_none_or(|e| e.tracked_ref.as_deref() == Some(record.base_ref.as_str()))
            });
            if targets.is_empty() {
                plans.push(EnvPlan {
                    env: only.map_or_else(|| "(none)".to_string(), EnvName::to_string),
                    summary_line: match only {
                        Some(env) => format!("`{env}` is not changed by this pull request"),
                        None => format!(
                            "no environment tracks `{}` and no family previews pull requests",
                            record.base_ref
                        ),
                    },
                    detail_text: String::new(),
                    error: None,
                    preview_url: None,
                    queued: None,
                    policy: None,
                });
            }
            for target in targets {
                let origin = origin_at(inner, &head);
                let preview_url = inner
                    .preview_port
                    .get()
                    .map(|port| format!("http://{}.{}.localhost:{port}/", target.name, stack.name));
                let prepared = inner.engine.prepare(&origin, &target).and_then(|mut p| {
                    // Judged as what it is: this pull request's code.
                    let context = slipway_engine::policy::GitContext {
                        pull_request: u64::try_from(record.number).ok(),
                        from_fork: record.is_fork,
                        labels: record.labels.clone(),
                    };
                    if p.policy.is_some() {
                        p.policy = inner.engine.judge(&p, inner.source.as_ref(), &context)?;
                    }
                    Ok(p)
                });
                // A plan's reasons quote what a provider or a cluster said, which may hold a
                // value the environment keeps secret: the comment is public.
                let redactor = inner.engine.redactor(&target.name)?;
                let plan = match prepared {
                    Ok(prepared) => {
                        let approved = inner
                            .engine
                            .store()
                            .policies_approved(record.number, &prepared.commit.sha)?;
                        let policy = policy_line(inner, &prepared, approved.as_deref());
                        if policy.as_ref().is_some_and(|(blocks, _)| *blocks) {
                            blocked.push(target.name.to_string());
                        }
                        EnvPlan {
                            env: target.name.to_string(),
                            summary_line: summary(&prepared.plan),
                            detail_text: format!(
                                "{}{}",
                                detail(&prepared.plan, &redactor),
                                policy_detail(&prepared)
                            ),
                            error: None,
                            preview_url: (target.kind == EnvKind::Generated)
                                .then(|| comment_url(inner, &target.name, &prepared, preview_url))
                                .flatten(),
                            queued: queued(inner, &target),
                            policy: policy.map(|(_, line)| line),
                        }
                    }
                    Err(e) => EnvPlan {
                        env: target.name.to_string(),
                        summary_line: "planning failed".into(),
                        detail_text: String::new(),
                        error: Some(e.to_string()),
                        preview_url: None,
                        queued: None,
                        policy: None,
                    },
                };
                plans.push(redacted(plan, &redactor));
            }
        }
    }
    let body = render_plan_comment(
        &plans,
        &PlanCommentOptions {
            marker: DEFAULT_PLAN_MARKER.into(),
            head_sha: Some(head.clone()),
            ..PlanCommentOptions::default()
        },
    );
    forge.upsert_comment(record.number as u64, DEFAULT_PLAN_MARKER, &body)?;
    let failed: Vec<&str> = plans
        .iter()
        .filter(|p| p.error.is_some())
        .map(|p| p.env.as_str())
        .collect();
    if failed.is_empty() && !blocked.is_empty() {
        status(
            StatusState::Failure,
            &format!("blocked by policy for {}", blocked.join(", ")),
        );
    } else if failed.is_empty() {
        status(
            StatusState::Success,
            &format!("planned {} environment(s)", plans.len()),
        );
    } else {
        status(
            StatusState::Failure,
            &format!("planning failed for {}", failed.join(", ")),
        );
    }
    Ok(())
}

/// `plan` with every value `redactor` knows replaced, in all it says that came from elsewhere.
fn redacted(plan: EnvPlan, redactor: &slipway_engine::secrets::Redactor) -> EnvPlan {
    if redactor.is_empty() {
        return plan;
    }
    EnvPlan {
        summary_line: redactor.redact(&plan.summary_line),
        detail_text: redactor.redact(&plan.detail_text),
        error: plan.error.map(|e| redactor.redact(&e)),
        policy: plan.policy.map(|p| redactor.redact(&p)),
        ..plan
    }
}

/// Why `target`'s preview waits, with its place, if it is queued (`preview queued: 2nd in
/// line; starts when one of family `previews`'s 3 environments goes`).
fn queued(inner: &Inner, target: &EnvTarget) -> Option<String> {
    if target.kind != EnvKind::Generated {
        return None;
    }
    let store = inner.engine.store();
    let record = store.environment(&target.name).ok().flatten()?;
    let position = store.queue_position(&target.name).ok().flatten()?;
    let caps = crate::slots::caps_now(inner).ok()?;
    Some(format!(
        "preview {}",
        crate::slots::waiting(&caps, &record, position)
    ))
}

/// What the policies say of `prepared` in one line, and whether they block it (with
/// `approved_by`'s approval of soft denials counted); `None` when they pass it.
fn policy_line(
    inner: &Inner,
    prepared: &slipway_engine::Prepared,
    approved_by: Option<&str>,
) -> Option<(bool, String)> {
    let judged = prepared.policy.as_ref()?;
    let blocking: Vec<String> = judged
        .verdict
        .blocking()
        .map(|r| format!("{} ({})", r.policy, r.enforcement.as_str()))
        .collect();
    if blocking.is_empty() {
        return None;
    }
    Some(match inner.engine.policies_allow(prepared, approved_by) {
        Ok(_) => (
            false,
            format!(
                "✅ soft policy denials approved by {} for this commit: {}",
                approved_by.unwrap_or("an owner"),
                blocking.join(", ")
            ),
        ),
        Err(_) => match judged.gate() {
            slipway_policy::Gate::SoftFail => (
                true,
                format!(
                    "⛔ blocked by soft policies: {}; a policy owner may `/slipway \
                     approve-policies`",
                    blocking.join(", ")
                ),
            ),
            _ => (
                true,
                format!("⛔ blocked by policy: {}", blocking.join(", ")),
            ),
        },
    })
}

/// The policies' failed and warned results under a plan's text: each with its messages and
/// where the resource a message names is declared.
fn policy_detail(prepared: &slipway_engine::Prepared) -> String {
    let Some(judged) = &prepared.policy else {
        return String::new();
    };
    let mut out = format!("\nPolicies (at {}):\n", short(&judged.policies_at));
    for r in &judged.verdict.results {
        out.push_str(&format!(
            "  {} {} [{}]\n",
            r.outcome(),
            r.policy,
            r.enforcement.as_str()
        ));
        if let Some(e) = &r.error {
            out.push_str(&format!("      error: {e}\n"));
        }
        for (kind, findings) in [("deny", &r.denies), ("warn", &r.warns)] {
            for f in findings {
                let at = f
                    .location
                    .as_deref()
                    .map(|l| format!(" (at {l})"))
                    .unwrap_or_default();
                out.push_str(&format!("      {kind}: {}{at}\n", f.msg));
            }
        }
    }
    out
}

/// One line: what a plan does.
pub fn summary(plan: &Plan) -> String {
    let count = |a: Change| plan.changes.iter().filter(|c| c.action == a).count();
    if !plan.has_changes() {
        return "no changes".into();
    }
    format!(
        "{} to create, {} to update, {} to replace, {} to delete",
        count(Change::Create),
        count(Change::Update),
        count(Change::Replace),
        count(Change::Delete)
    )
}

/// The plan as text: one line per change, then its field changes. Values are the stack's
/// (references such as `${secrets.X}` unresolved), so no secret can appear.
/// The values are redacted with `redactor` before they are quoted and cut to 200 characters:
/// a value quoted (its `"` and `\` escaped) or cut is no longer found in the text.
pub fn detail(plan: &Plan, redactor: &slipway_engine::secrets::Redactor) -> String {
    let mut out = String::new();
    for c in plan.changes.iter().filter(|c| c.action != Change::Noop) {
        let sign = match c.action {
            Change::Create => "+",
            Change::Update => "~",
            Change::Replace => "-/+",
            Change::Delete => "-",
            Change::Noop => " ",
        };
        out.push_str(&format!("{sign} {} ({})", c.resource, c.type_name));
        if let Some(reason) = &c.reason {
            out.push_str(&format!(": {}", redactor.redact(&reason.to_string())));
        }
        out.push('\n');
        for f in &c.diff {
            let show = |v: &Option<serde_json::Value>| {
                v.as_ref().map_or("(none)".to_string(), |v| {
                    let text = redact_value(v, redactor).to_string();
                    if text.chars().count() > 200 {
                        format!("{}…", text.chars().take(200).collect::<String>())
                    } else {
                        text
                    }
                })
            };
            out.push_str(&format!(
                "    {}: {} → {}{}\n",
                f.path,
                show(&f.before),
                show(&f.after),
                if f.forces_replace {
                    " (forces replacement)"
                } else {
                    ""
                }
            ));
        }
    }
    out
}

/// `value` with every text in it redacted.
fn redact_value(
    value: &serde_json::Value,
    redactor: &slipway_engine::secrets::Redactor,
) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(text) => Value::String(redactor.redact(text)),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| redact_value(v, redactor)).collect())
        }
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (redactor.redact(k), redact_value(v, redactor)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// What a plan comment shows for the preview of `env`: the preview URL, or for a private
/// preview already recorded, a signed link holding `[controller] comment_links` (whoever
/// reads the pull request opens it without a Slipway login; the plain URL asks for one).
fn comment_url(
    inner: &Inner,
    env: &EnvName,
    prepared: &slipway_engine::Prepared,
    url: Option<String>,
) -> Option<String> {
    let url = url?;
    let valid = inner.options.comment_links;
    if prepared.access != slipway_core::vocab::Access::Private || valid.is_zero() {
        return Some(url);
    }
    // Not recorded yet (the first plan of a pull request): the plain URL, until the comment
    // is written again.
    let Some(record) = inner.engine.store().environment(env).ok().flatten() else {
        return Some(url);
    };
    let until = inner
        .now()
        .saturating_add(i64::try_from(valid.as_millis()).unwrap_or(i64::MAX));
    Some(
        inner
            .link_until(&record, until)
            .map(|link| link.url)
            .unwrap_or(url),
    )
}

#[cfg(test)]
mod tests {
    use slipway_engine::secrets::Redactor;
    use slipway_forge::EnvPlan;

    use super::{detail, redacted};

    /// What a plan comment quotes from a provider or a cluster (a dry run refusing a value
    /// quotes it) is redacted before it is posted; what Slipway wrote itself is kept.
    #[test]
    fn a_plan_comment_quotes_no_secret_value() {
        let redactor = Redactor::default();
        redactor.add("pg-pass-0123456789");
        let plan = EnvPlan {
            env: "prod".into(),
            summary_line: "1 to change".into(),
            detail_text: "~ app: the server's dry run could not be made: Unsupported value: \
                          \"pg-pass-0123456789\""
                .into(),
            error: Some("failed near pg-pass-0123456789".into()),
            preview_url: Some("http://prod.shop.localhost:7300/".into()),
            queued: None,
            policy: Some("denied: pg-pass-0123456789 is weak".into()),
        };
        let shown = redacted(plan.clone(), &redactor);
        let all = format!("{shown:?}");
        assert!(!all.contains("pg-pass-0123456789"), "{all}");
        assert!(
            shown
                .detail_text
                .contains("Unsupported value: \"<redacted>\"")
        );
        assert_eq!(shown.preview_url, plan.preview_url);
        assert_eq!(shown.summary_line, plan.summary_line);
        // Nothing known, nothing changed.
        assert_eq!(redacted(plan.clone(), &Redactor::default()), plan);
    }

    /// A value is redacted before the plan's text quotes it (escaping its `"` and `\`) and
    /// cuts it to 200 characters: neither hides it from the redactor.
    #[test]
    fn a_plan_detail_quotes_values_redacted() {
        use slipway_core::plan::{Action, Change, FieldChange, Plan};
        let secret = "pa\"ss\\word-0123456789";
        let redactor = Redactor::default();
        redactor.add(secret);
        // Cut 8 characters into where the secret was.
        let long = format!("{}{secret}", "x".repeat(180));
        let plan = Plan {
            environment: "prod".into(),
            commit: "0".repeat(40),
            changes: vec![Change {
                resource: "app".into(),
                type_name: "process".into(),
                action: Action::Update,
                diff: vec![FieldChange {
                    path: "env.TOKEN".into(),
                    before: Some(serde_json::json!(secret)),
                    after: Some(serde_json::json!({ "nested": [long] })),
                    forces_replace: false,
                }],
                reason: None,
                objects: Vec::new(),
            }],
        };
        let shown = detail(&plan, &redactor);
        assert!(
            !shown.contains("word-0123") && !shown.contains("pa\\\"ss"),
            "{shown}"
        );
        assert!(
            shown.contains("\"<redacted>\" → {\"nested\":[\"xxx"),
            "{shown}"
        );
        assert!(
            shown.contains("x<redac") && !shown.contains("xpa"),
            "the cut shows no start of it: {shown}"
        );
    }
}
