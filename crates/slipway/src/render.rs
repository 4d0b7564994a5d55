//! How results look: Terraform-like plans, tables, progress. Colour only on a terminal
//! (anstream strips it otherwise, and honours NO_COLOR).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use anstream::{eprintln, println};
use anstyle::{AnsiColor, Style};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value as Json, json};
use slipway_core::compare::{Comparison, ResourceDifference};
use slipway_core::diag::{Diagnostic, Severity};
use slipway_core::plan::{Action, FieldChange};
use slipway_core::vocab::{Activity, DeploymentStatus, Health, ShownStatus, SyncState};
use slipway_engine::{ApplyEvent, ApplyReport, EnvironmentStatus, Outcome, Prepared, Progress};
use slipway_state::DeploymentRecord;

const GREEN: Style = AnsiColor::Green.on_default();
const YELLOW: Style = AnsiColor::Yellow.on_default();
const RED: Style = AnsiColor::Red.on_default();
const CYAN: Style = AnsiColor::Cyan.on_default();
const BOLD: Style = Style::new().bold();
const DIM: Style = Style::new().dimmed();

fn action_style(action: Action) -> (Style, &'static str) {
    match action {
        Action::Create => (GREEN, "+"),
        Action::Update => (YELLOW, "~"),
        Action::Replace => (CYAN, "-/+"),
        Action::Delete => (RED, "-"),
        Action::Noop => (DIM, " "),
    }
}

pub fn error(e: &anyhow::Error) {
    eprintln!("{RED}error{RED:#}: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

pub fn diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        let (style, word) = match d.severity {
            Severity::Error => (RED, "error"),
            Severity::Warning => (YELLOW, "warning"),
        };
        eprintln!(
            "{BOLD}{}:{}:{}{BOLD:#}: {style}{word}{style:#}: {}",
            d.location.file, d.location.pos.line, d.location.pos.col, d.message
        );
        if let Some(hint) = &d.hint {
            eprintln!("  {CYAN}hint{CYAN:#}: {hint}");
        }
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    if errors > 0 {
        eprintln!("{RED}{errors} error(s){RED:#}");
    }
}

pub fn diagnostic_json(d: &Diagnostic) -> Json {
    json!({
        "file": d.location.file,
        "line": d.location.pos.line,
        "column": d.location.pos.col,
        "severity": match d.severity { Severity::Error => "error", Severity::Warning => "warning" },
        "message": d.message,
        "hint": d.hint,
    })
}

fn value(v: &Option<Json>) -> String {
    /// A whole object (a Kubernetes manifest's) is shown by its start, not over a screen.
    const LONGEST: usize = 160;
    let text = match v {
        None => "(none)".into(),
        Some(Json::String(s)) => format!("{s:?}"),
        Some(other) => other.to_string(),
    };
    match text.char_indices().nth(LONGEST) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn field_line(f: &FieldChange) {
    let replace = if f.forces_replace {
        format!(" {RED}# forces replacement{RED:#}")
    } else {
        String::new()
    };
    match (&f.before, &f.after) {
        (None, Some(_)) => println!(
            "      {GREEN}+{GREEN:#} {} = {}{replace}",
            f.path,
            value(&f.after)
        ),
        (Some(_), None) => println!(
            "      {RED}-{RED:#} {} = {}{replace}",
            f.path,
            value(&f.before)
        ),
        _ => println!(
            "      {YELLOW}~{YELLOW:#} {} = {} → {}{replace}",
            f.path,
            value(&f.before),
            value(&f.after)
        ),
    }
}

pub fn plan_text(p: &Prepared) {
    let plan = &p.plan;
    println!(
        "Plan for {BOLD}{}{BOLD:#} at {} ({}), desired state {}:",
        plan.environment,
        slipway_engine::apply::short(&p.commit.sha),
        p.commit.summary,
        &p.desired.hash[..12]
    );
    window_text(&p.window);
    if !plan.has_changes() {
        println!(
            "\n{GREEN}No changes.{GREEN:#} `{}` matches this commit.",
            plan.environment
        );
        return;
    }
    println!();
    for c in plan.changes.iter().filter(|c| c.action != Action::Noop) {
        let (style, sign) = action_style(c.action);
        let verb = match c.action {
            Action::Create => "will be created",
            Action::Update => "will be updated in place",
            Action::Replace => "will be replaced",
            Action::Delete => "will be deleted",
            Action::Noop => "",
        };
        println!(
            "  {style}{sign}{style:#} {BOLD}{}{BOLD:#} ({}) {verb}",
            c.resource, c.type_name
        );
        if let Some(reason) = &c.reason {
            println!("      {DIM}# {reason}{DIM:#}");
        }
        if !c.objects.is_empty() {
            // The server's own answer (a dry run against each live object) says more than
            // the configuration's diff: shown instead of it.
            println!("      {DIM}# per object, from the server's dry run:{DIM:#}");
            for o in &c.objects {
                let (style, sign) = action_style(o.action);
                let source = o
                    .source
                    .as_deref()
                    .map(|s| format!(" {DIM}({s}){DIM:#}"))
                    .unwrap_or_default();
                println!("    {style}{sign}{style:#} {}{source}", o.object);
                if let Some(reason) = &o.reason {
                    println!("      {DIM}# {reason}{DIM:#}");
                }
                for f in o.diff.iter().take(20) {
                    field_line(f);
                }
            }
            continue;
        }
        // Creates show every field; long plans fold after 20 fields per resource.
        for f in c.diff.iter().take(20) {
            field_line(f);
        }
        if c.diff.len() > 20 {
            println!(
                "      {DIM}... and {} more fields{DIM:#}",
                c.diff.len() - 20
            );
        }
    }
    let counts = plan.counts();
    let n = |a| counts.get(&a).copied().unwrap_or(0);
    println!(
        "\nPlan: {} to create, {} to update, {} to replace, {} to delete.",
        n(Action::Create),
        n(Action::Update),
        n(Action::Replace),
        n(Action::Delete)
    );
}

/// The plan document (`slipway schema --plan` describes it; docs/policies.md), with the
/// policies' verdict when they judged it.
pub fn plan_json(engine: &slipway_engine::Engine, p: &Prepared) -> Json {
    let base = p.policy.as_ref().map(|j| j.policies_at.as_str());
    let mut out = engine.plan_document(p, &slipway_engine::policy::GitContext::default(), base);
    if let (Some(map), Some(judged)) = (out.as_object_mut(), &p.policy) {
        map.insert("policies".into(), json!(judged.report()));
    }
    if let Some(map) = out.as_object_mut() {
        map.insert("window".into(), window_json(&p.window));
    }
    out
}

/// The policies' results under a plan: each failed or warned policy with its messages and
/// where the resource they name is declared; one line when all passed.
pub fn policies_text(p: &Prepared) {
    let Some(judged) = &p.policy else {
        return;
    };
    let results = &judged.verdict.results;
    println!(
        "\nPolicies ({} at {}):",
        results.len(),
        slipway_engine::apply::short(&judged.policies_at)
    );
    for r in results {
        let (style, word) = match r.outcome() {
            "failed" => (RED, "failed"),
            "warned" => (YELLOW, "warned"),
            _ => (GREEN, "passed"),
        };
        let title = r
            .title
            .as_deref()
            .map(|t| format!(" {DIM}({t}){DIM:#}"))
            .unwrap_or_default();
        println!(
            "  {style}{word}{style:#} {BOLD}{}{BOLD:#} [{}]{title}",
            r.policy,
            r.enforcement.as_str()
        );
        if let Some(e) = &r.error {
            println!("      {RED}error:{RED:#} {e}");
        }
        for (kind, findings) in [("deny", &r.denies), ("warn", &r.warns)] {
            for f in findings {
                let at = f
                    .location
                    .as_deref()
                    .map(|l| format!(" {DIM}at {l}{DIM:#}"))
                    .unwrap_or_default();
                println!("      {kind}: {}{at}", f.msg);
            }
        }
    }
    match judged.gate() {
        slipway_policy::Gate::Pass => {}
        slipway_policy::Gate::SoftFail => println!(
            "{YELLOW}Blocked by soft policies:{YELLOW:#} an owner may approve them for this commit (`slipway apply --approve-policies`, or `/slipway approve-policies` on its pull request)."
        ),
        slipway_policy::Gate::HardFail => println!(
            "{RED}Blocked by policy:{RED:#} this plan cannot be applied until it or the policies on the default branch change."
        ),
    }
}

/// `slipway policy test DIR`: runs the tests, prints a report, exit 0 only when all passed.
pub fn policy_test(
    dir: &std::path::Path,
    output: crate::Output,
) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context;
    let (files, fixtures) = slipway_policy::testing::read_dir(dir)
        .with_context(|| format!("cannot read the policies in {}", dir.display()))?;
    if files.is_empty() {
        anyhow::bail!("no .rego file in {}: nothing to test", dir.display());
    }
    let report =
        slipway_policy::testing::run(&files, &fixtures, std::time::Duration::from_secs(10));
    match output {
        crate::Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "passed": report.passed(),
                "tests": report.tests,
                "errors": report.errors,
            }))?
        ),
        crate::Output::Text => {
            for e in &report.errors {
                println!("{RED}error:{RED:#} {e}");
            }
            for t in &report.tests {
                let style = if t.outcome == "pass" { GREEN } else { RED };
                println!(
                    "{style}{}{style:#} {} {DIM}({}, {} ms){DIM:#}",
                    t.outcome.to_uppercase(),
                    t.name,
                    t.file,
                    t.duration_ms
                );
                if let Some(e) = &t.error {
                    println!("      {e}");
                }
            }
            let passed = report.tests.iter().filter(|t| t.outcome == "pass").count();
            println!(
                "{}/{} tests passed{}",
                passed,
                report.tests.len(),
                if report.errors.is_empty() {
                    String::new()
                } else {
                    format!(", {} file error(s)", report.errors.len())
                }
            );
        }
    }
    Ok(if report.passed() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

/// The line `slipway plan` prints when a deploy window denies changes now.
fn window_text(verdict: &slipway_engine::Verdict) {
    if let Some(why) = verdict.describe() {
        println!(
            "\n{YELLOW}Deploy window:{YELLOW:#} changes are denied now, {why}; `slipway apply --override-window` overrides it (recorded)."
        );
    }
}

/// `{"allowed", "until", "window"}`: what the deploy windows say now (`until`, RFC 3339 in
/// the denying window's time zone, and `window`, the window that denies, when denied).
pub fn window_json(verdict: &slipway_engine::Verdict) -> Json {
    let window = verdict.denied.as_ref().and_then(|d| d.window()).map(|w| {
        json!({
            "kind": w.kind().as_str(),
            "schedule": w.schedule(),
            "duration": w.duration_text(),
            "time_zone": w.time_zone(),
        })
    });
    json!({
        "allowed": verdict.allowed(),
        "until": verdict.until_text(),
        "window": window,
    })
}

/// Adds `"offline": {"reason", "commit", "commit_date"}` to a JSON answer when the command
/// worked offline from the home's copy of a repository it could not fetch.
pub fn add_offline(out: &mut Json, offline: Option<Json>) {
    if let (Some(map), Some(offline)) = (out.as_object_mut(), offline) {
        map.insert("offline".into(), offline);
    }
}

pub fn report_json(r: &ApplyReport) -> Json {
    let results: Vec<Json> = r
        .results
        .iter()
        .map(|(name, action, outcome)| {
            let mut v = json!({"resource": name, "action": action});
            if let (Some(map), Ok(Json::Object(o))) =
                (v.as_object_mut(), serde_json::to_value(outcome))
            {
                map.extend(o);
            }
            v
        })
        .collect();
    json!({
        "environment": r.environment,
        "commit": r.commit,
        "deployment": r.deployment,
        "succeeded": r.succeeded(),
        "results": results,
    })
}

pub fn report_text(r: &ApplyReport, what: &str) {
    let mut done = 0;
    let mut failed = Vec::new();
    let mut skipped = Vec::new();
    for (name, action, outcome) in &r.results {
        match outcome {
            Outcome::Succeeded if *action != Action::Noop => done += 1,
            Outcome::Succeeded => {}
            Outcome::Failed { error, .. } => failed.push((name, error)),
            Outcome::Skipped { because } => skipped.push((name, because)),
        }
    }
    for (name, error) in &failed {
        eprintln!("{RED}✗ {name}{RED:#}: {error}");
    }
    for (name, because) in &skipped {
        eprintln!("{YELLOW}- {name}{YELLOW:#}: skipped because `{because}` failed");
    }
    if failed.is_empty() && skipped.is_empty() {
        println!(
            "{GREEN}{what} complete!{GREEN:#} {done} change(s) made to `{}` (deployment #{}).",
            r.environment, r.deployment
        );
    } else {
        println!(
            "{RED}{what} failed{RED:#}: {done} done, {} failed, {} skipped (deployment #{}). Fix the cause and run it again: what succeeded is kept.",
            failed.len(),
            skipped.len(),
            r.deployment
        );
    }
}

fn ago(ms: i64) -> String {
    let now = slipway_state::now_ms();
    let secs = (now - ms).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

pub fn status_text(envs: &[EnvironmentStatus]) {
    if envs.is_empty() {
        println!("No environments yet. Create one with `slipway apply --env NAME`.");
        return;
    }
    for env in envs {
        let sync_style = match env.sync {
            SyncState::Synced => GREEN,
            SyncState::Failed => RED,
            SyncState::OutOfSync | SyncState::Syncing => YELLOW,
        };
        let health_style = match env.health {
            Health::Healthy => GREEN,
            Health::Degraded => RED,
            Health::Progressing | Health::Missing => YELLOW,
        };
        println!(
            "{BOLD}{}{BOLD:#} ({})  {sync_style}{}{sync_style:#}  {health_style}{}{health_style:#}  commit {}{}",
            env.name,
            env.kind,
            env.sync,
            env.health,
            env.commit
                .as_deref()
                .map(slipway_engine::apply::short)
                .unwrap_or("-"),
            match (&env.desired_commit, &env.commit) {
                (Some(d), Some(c)) if d != c =>
                    format!(" (desired {})", slipway_engine::apply::short(d)),
                _ => String::new(),
            }
        );
        match (env.activity, env.queue_position) {
            (Activity::Queued, Some(place)) => println!(
                "  {YELLOW}queued (#{place}){YELLOW:#}: waits for a slot in its family; nothing runs yet"
            ),
            (Activity::Queued, None) => println!("  {YELLOW}queued{YELLOW:#}"),
            (Activity::Sleeping, _) => println!("  {DIM}sleeping{DIM:#}"),
            (Activity::Awake, _) => {}
        }
        if let Some(url) = &env.url {
            println!("  url: {url}");
        }
        if let Some(m) = &env.message {
            println!("  {RED}{m}{RED:#}");
        }
        let type_width = env
            .resources
            .iter()
            .map(|r| r.type_name.len())
            .max()
            .unwrap_or(0)
            .max(10);
        for r in &env.resources {
            let style = if r.status == ShownStatus::Ready {
                GREEN
            } else {
                RED
            };
            let outputs = match &r.outputs {
                Json::Object(m) if !m.is_empty() => m
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{k}={}",
                            if let Json::String(s) = v {
                                s.clone()
                            } else {
                                v.to_string()
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            };
            println!(
                "  {:<20} {:<type_width$} {style}{:<9}{style:#} {DIM}{outputs}{DIM:#}",
                r.name, r.type_name, r.status
            );
            if let Some(m) = &r.message {
                println!(
                    "  {:<20} {RED}{}{RED:#}",
                    "",
                    m.lines().next().unwrap_or("")
                );
            }
        }
    }
}

pub fn deployment_json(d: &DeploymentRecord) -> Json {
    json!({
        "id": d.id,
        "commit": d.commit,
        "reference": d.reference,
        "hash": d.hash,
        "status": d.status,
        "who": d.who,
        "started_at": d.started_at,
        "finished_at": d.finished_at,
        "duration_ms": d.finished_at.map(|f| f - d.started_at),
        "summary": d.summary,
        "error": d.error,
    })
}

pub fn history_text(env: &str, deployments: &[DeploymentRecord]) {
    if deployments.is_empty() {
        println!("`{env}` has no deployments.");
        return;
    }
    println!(
        "{BOLD}{:>5}  {:<12} {:<12} {:<10} {:<12} {:<10} {}{BOLD:#}",
        "#", "commit", "ref", "status", "who", "when", "changes"
    );
    for d in deployments {
        let style = match d.status {
            DeploymentStatus::Succeeded => GREEN,
            DeploymentStatus::Running => YELLOW,
            DeploymentStatus::Failed | DeploymentStatus::Interrupted => RED,
        };
        let changes = match &d.summary {
            Json::Object(m) if !m.is_empty() => m
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", "),
            _ => "-".into(),
        };
        println!(
            "{:>5}  {:<12} {:<12} {style}{:<10}{style:#} {:<12} {:<10} {}",
            d.id,
            slipway_engine::apply::short(&d.commit),
            d.reference.as_deref().unwrap_or("-"),
            d.status,
            d.who,
            ago(d.started_at),
            changes
        );
    }
}

pub fn log_line(name: &str, line: &str, prefix: bool) {
    let line = if std::io::stdout().is_terminal() {
        for_terminal(line)
    } else {
        std::borrow::Cow::Borrowed(line)
    };
    if prefix {
        println!("{CYAN}{name:>12}{CYAN:#} | {line}");
    } else {
        println!("{line}");
    }
}

/// `line` as a terminal may show it: its control characters (but tab) written as escapes.
/// A log is the environment's code's words, a branch's: an escape sequence in it would
/// otherwise act on the terminal of whoever reads it (set the clipboard, move the cursor to
/// hide or forge lines). Piped, a log is printed as it was written.
pub fn for_terminal(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if c.is_control() && c != '\t' {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Progress on stderr: a spinner on a terminal, plain lines otherwise.
pub struct Reporter {
    bar: Option<ProgressBar>,
    running: Mutex<Vec<String>>,
}

impl Reporter {
    pub fn new(total: usize) -> Reporter {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{pos}/{len}] {elapsed} {wide_msg}")
                    .expect("the template is valid"),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Reporter {
            bar,
            running: Mutex::new(Vec::new()),
        }
    }

    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => {
                let mut err = anstream::stderr();
                let _ = writeln!(err, "{text}");
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Reporter {
    fn event(&self, event: &ApplyEvent<'_>) {
        match event {
            ApplyEvent::Started { resource, action } => {
                let mut running = self.running.lock().expect("the lock is never poisoned");
                running.push(resource.to_string());
                if let Some(bar) = &self.bar {
                    bar.set_message(format!("working on: {}", running.join(", ")));
                } else {
                    drop(running);
                    self.line(format!("{resource}: {}...", ing(*action)));
                }
            }
            ApplyEvent::Finished {
                resource,
                action,
                elapsed,
                error,
            } => {
                {
                    let mut running = self.running.lock().expect("the lock is never poisoned");
                    running.retain(|r| r != resource);
                    if let Some(bar) = &self.bar {
                        bar.inc(1);
                        bar.set_message(format!("working on: {}", running.join(", ")));
                    }
                }
                let secs = elapsed.as_secs_f64();
                match error {
                    None => self.line(format!(
                        "{GREEN}{resource}{GREEN:#}: {} ({secs:.1}s)",
                        ed(*action)
                    )),
                    Some(e) => self.line(format!(
                        "{RED}{resource}{RED:#}: failed after {secs:.1}s: {}",
                        e.lines().next().unwrap_or("")
                    )),
                }
            }
            ApplyEvent::Skipped { resource, because } => {
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                }
                self.line(format!(
                    "{YELLOW}{resource}{YELLOW:#}: skipped, because `{because}` failed"
                ));
            }
        }
    }
}

fn ing(a: Action) -> &'static str {
    match a {
        Action::Create => "creating",
        Action::Update => "updating",
        Action::Replace => "replacing",
        Action::Delete => "deleting",
        Action::Noop => "checking",
    }
}

fn ed(a: Action) -> &'static str {
    match a {
        Action::Create => "created",
        Action::Update => "updated",
        Action::Replace => "replaced",
        Action::Delete => "deleted",
        Action::Noop => "unchanged",
    }
}

pub fn comparison_text(c: &Comparison) {
    let (a, b) = (c.a.as_str(), c.b.as_str());
    if c.same_commit() {
        println!(
            "`{a}` and `{b}` run the same commit {}",
            slipway_engine::apply::short(&c.commit_a)
        );
    } else {
        println!(
            "`{a}` runs {}, `{b}` runs {}",
            slipway_engine::apply::short(&c.commit_a),
            slipway_engine::apply::short(&c.commit_b)
        );
    }
    if c.is_empty() {
        println!("Their rendered states are the same but for the environment's name.");
    }
    let shown = |v: &Option<Json>| v.as_ref().map_or_else(|| "null".into(), Json::to_string);
    for v in &c.variables {
        println!("  variable {}: {} → {}", v.name, shown(&v.a), shown(&v.b));
    }
    for r in &c.resources {
        match r {
            ResourceDifference::Changed { resource, diff, .. } => println!(
                "  resource {resource}: {}",
                serde_json::to_value(diff).unwrap_or_default()
            ),
            ResourceDifference::OnlyIn {
                resource,
                environment,
            } => println!("  resource {resource}: only in `{environment}`"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_logs_escape_sequences_reach_no_terminal() {
        // Set the clipboard (OSC 52), then erase the line (CSI, in its 8-bit form).
        let shown = super::for_terminal("ok \u{1b}]52;c;aGk=\u{7} \u{9b}2K\tend");
        assert!(!shown.contains(['\u{1b}', '\u{7}', '\u{9b}']), "{shown:?}");
        assert!(shown.contains("\\u{1b}]52;c;aGk=") && shown.ends_with("\tend"));
        assert_eq!(
            super::for_terminal("plain, with a tab\t"),
            "plain, with a tab\t"
        );
    }
}
