//! The policy gate: Rego policies (OPA's language) judged against a plan document.
//!
//! A policy is one `.rego` file of `package slipway` whose `deny` and `warn` rules (conftest's
//! convention: `deny contains msg if { ... }`, or Rego v0's `deny[msg] { ... }`) produce
//! messages: a string, or an object `{"msg": "...", "resource": "web"}` naming the resource
//! that triggered it (so the plan can say where that resource is declared). Files of other
//! packages are libraries every policy may import; `*_test.rego` files hold `test_*` rules for
//! [`testing::run`] and are never judged with.
//!
//! Each policy has an enforcement level from its `# METADATA` annotation
//! (`custom: { enforcement: soft }`; `advisory`, `soft` or `hard`, default `hard`), and is
//! evaluated on its own (with the libraries) so that a finding is attributed to its file.
//!
//! Policies come from the default branch, merged through review, but still run bounded: each
//! evaluation has regorus's execution timer, and the engine runs it in a child process
//! ([`child`]) with an address-space limit and a wall-clock deadline, so a policy that loops or
//! allocates without bound fails with a reason instead of taking the controller down.

pub mod child;
mod meta;
pub mod testing;

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

pub use meta::Enforcement;

/// A Rego file as read from the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyFile {
    /// Its repository-relative path (`policies/deny-deletes.rego`): how findings name it.
    pub path: String,
    /// Its text.
    pub text: String,
}

/// How long and how large an evaluation may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock time for evaluating every policy of a plan.
    pub timeout: Duration,
    /// Address space of the child process that evaluates them, in bytes.
    pub memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(10),
            memory: 1 << 30,
        }
    }
}

/// One message of a `deny` or `warn` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What the policy says.
    pub msg: String,
    /// The resource it names, when its message is an object with `resource`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Where that resource is declared (`slipway.yaml:12:3`), filled in by the caller that
    /// knows the stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// What one policy said of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyResult {
    /// The policy's file.
    pub policy: String,
    /// Its `# METADATA` title, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Its enforcement level.
    pub enforcement: Enforcement,
    /// Its `deny` messages.
    pub denies: Vec<Finding>,
    /// Its `warn` messages.
    pub warns: Vec<Finding>,
    /// Why it could not be judged (a syntax error with its location, a limit reached): such
    /// a policy holds the change unless it is advisory, so nothing passes silently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PolicyResult {
    /// Whether it stops the change: a denial or an error, at a level that blocks.
    pub fn blocks(&self) -> bool {
        self.enforcement != Enforcement::Advisory
            && (!self.denies.is_empty() || self.error.is_some())
    }

    /// Its outcome in one word: `failed` (blocks), `warned` (denied at the advisory level,
    /// or warned), `passed`.
    pub fn outcome(&self) -> &'static str {
        if self.blocks() {
            "failed"
        } else if !self.denies.is_empty() || !self.warns.is_empty() || self.error.is_some() {
            "warned"
        } else {
            "passed"
        }
    }
}

/// Every policy's result for one plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// By policy file, in path order.
    pub results: Vec<PolicyResult>,
}

/// What a verdict lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// Nothing blocks.
    Pass,
    /// Only `soft` policies block: an owner's `/slipway approve-policies` lets it through.
    SoftFail,
    /// A `hard` policy blocks (or one whose level is unknown because it does not parse).
    HardFail,
}

impl Verdict {
    /// Whether the change may go on, and who could let it.
    pub fn gate(&self) -> Gate {
        let blocking: Vec<&PolicyResult> = self.results.iter().filter(|r| r.blocks()).collect();
        if blocking.is_empty() {
            Gate::Pass
        } else if blocking.iter().all(|r| r.enforcement == Enforcement::Soft) {
            Gate::SoftFail
        } else {
            Gate::HardFail
        }
    }

    /// The results that block.
    pub fn blocking(&self) -> impl Iterator<Item = &PolicyResult> {
        self.results.iter().filter(|r| r.blocks())
    }

    /// One line for a status message: the blocking policies and their first message.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .blocking()
            .map(|r| {
                let first = r
                    .error
                    .clone()
                    .or_else(|| r.denies.first().map(|d| d.msg.clone()))
                    .unwrap_or_default();
                format!("{} ({}): {first}", r.policy, r.enforcement.as_str())
            })
            .collect();
        parts.join("; ")
    }

    /// Fills each finding's `location` from `locations` (resource name → `file:line:col`).
    pub fn locate(&mut self, locations: &BTreeMap<String, String>) {
        for r in &mut self.results {
            for f in r.denies.iter_mut().chain(r.warns.iter_mut()) {
                if let Some(resource) = &f.resource {
                    f.location = locations.get(resource).cloned();
                }
            }
        }
    }
}

/// The policy files of `files`, split as the gate uses them: policies (`package slipway`),
/// libraries (other packages), tests (`*_test.rego`, ignored here).
struct Split<'a> {
    policies: Vec<(&'a PolicyFile, meta::Meta)>,
    libraries: Vec<&'a PolicyFile>,
    /// Files whose header could not be read, as results that hold.
    broken: Vec<PolicyResult>,
}

fn split(files: &[PolicyFile]) -> Split<'_> {
    let mut out = Split {
        policies: Vec::new(),
        libraries: Vec::new(),
        broken: Vec::new(),
    };
    for file in files {
        if !file.path.ends_with(".rego") || file.path.ends_with("_test.rego") {
            continue;
        }
        match meta::read(&file.text) {
            Ok(m) if m.package == "slipway" => out.policies.push((file, m)),
            Ok(_) => out.libraries.push(file),
            Err(e) => out.broken.push(PolicyResult {
                policy: file.path.clone(),
                title: None,
                enforcement: Enforcement::Hard,
                denies: Vec::new(),
                warns: Vec::new(),
                error: Some(format!("{}: {e}", file.path)),
            }),
        }
    }
    out
}

/// A regorus engine with `files` added, in Rego v1 or, failing that, v0 syntax (conftest's
/// policies are often v0: `deny[msg] { ... }`).
pub(crate) fn engine_with(
    files: &[&PolicyFile],
    timeout: Duration,
) -> Result<regorus::Engine, String> {
    let mut engine = regorus::Engine::new();
    engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
        limit: timeout,
        check_interval: NonZeroU32::new(64).expect("not zero"),
    });
    engine.set_strict_builtin_errors(false);
    for file in files {
        add(&mut engine, file)?;
    }
    Ok(engine)
}

/// How deep `[` and `{` may nest in a policy file. regorus 0.14's parser tries a
/// comprehension at each bracket and parses again as a literal when that fails, so its time
/// doubles with each level (16 levels: about 20 s; found by the fuzz target): deeper than
/// this, a file is refused before the parser sees it. Real policies nest a handful deep.
pub const MAX_NESTING: usize = 12;

/// Where `text` first nests `[`/`{` deeper than [`MAX_NESTING`], as `line:col` (1-based;
/// strings, raw strings and comments skipped).
fn too_deep(text: &str) -> Option<(usize, usize)> {
    let (mut depth, mut line, mut col) = (0usize, 1usize, 0usize);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        col += 1;
        match c {
            '\n' => (line, col) = (line + 1, 0),
            '#' => {
                // A comment runs to the end of its line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        (line, col) = (line + 1, 0);
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    col += 1;
                    match c {
                        '\n' => (line, col) = (line + 1, 0),
                        '\\' if !escaped => {
                            escaped = true;
                            continue;
                        }
                        '"' if !escaped => break,
                        _ => {}
                    }
                    escaped = false;
                }
            }
            '`' => {
                for c in chars.by_ref() {
                    col += 1;
                    match c {
                        '\n' => (line, col) = (line + 1, 0),
                        '`' => break,
                        _ => {}
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some((line, col));
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

fn add(engine: &mut regorus::Engine, file: &PolicyFile) -> Result<(), String> {
    if let Some((line, col)) = too_deep(&file.text) {
        return Err(format!(
            "{}:{line}:{col}: brackets nested more than {MAX_NESTING} deep; the Rego parser's \
             time doubles with each level, so such a file is refused: name the inner part in \
             a rule of its own",
            file.path
        ));
    }
    engine.set_rego_v0(false);
    let v1 = match engine.add_policy(file.path.clone(), file.text.clone()) {
        Ok(_) => return Ok(()),
        Err(e) => e.to_string(),
    };
    engine.set_rego_v0(true);
    let added = engine.add_policy(file.path.clone(), file.text.clone());
    engine.set_rego_v0(false);
    added.map(|_| ()).map_err(|_| v1)
}

/// Judges `input` (a plan document) with every policy of `files`, in this process, each
/// policy's evaluation bounded by regorus's timer at `limits.timeout` (memory is bounded only
/// by [`child::evaluate`], which the engine uses).
pub fn evaluate(files: &[PolicyFile], input: &Json, limits: &Limits) -> Verdict {
    let split = split(files);
    let mut results = split.broken;
    let input = match regorus::Value::from_json_str(&input.to_string()) {
        Ok(v) => v,
        Err(e) => {
            results.push(PolicyResult {
                policy: "(input)".into(),
                title: None,
                enforcement: Enforcement::Hard,
                denies: Vec::new(),
                warns: Vec::new(),
                error: Some(format!("the plan document cannot be given to Rego: {e}")),
            });
            return Verdict { results };
        }
    };
    for (file, meta) in &split.policies {
        let mut with: Vec<&PolicyFile> = vec![file];
        with.extend(split.libraries.iter().copied());
        let mut result = PolicyResult {
            policy: file.path.clone(),
            title: meta.title.clone(),
            enforcement: meta.enforcement,
            denies: Vec::new(),
            warns: Vec::new(),
            error: None,
        };
        match judge(&with, &input, limits.timeout) {
            Ok((denies, warns)) => {
                result.denies = denies;
                result.warns = warns;
            }
            Err(e) if e.contains("exceeded time limit") => {
                result.error = Some(out_of_time(limits.timeout));
            }
            Err(e) => result.error = Some(e),
        }
        results.push(result);
    }
    results.sort_by(|a, b| a.policy.cmp(&b.policy));
    Verdict { results }
}

/// Why a policy stopped when its time ran out (regorus's timer, or the child's deadline).
pub(crate) fn out_of_time(timeout: Duration) -> String {
    format!(
        "stopped after {}: the policy did not finish in its time (a loop, or too much work)",
        humanize(timeout)
    )
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn judge(
    files: &[&PolicyFile],
    input: &regorus::Value,
    timeout: Duration,
) -> Result<(Vec<Finding>, Vec<Finding>), String> {
    let mut engine = engine_with(files, timeout)?;
    engine.set_input(input.clone());
    let mut rule = |name: &str| -> Result<Vec<Finding>, String> {
        // A query, not `eval_rule`: a policy without `warn` (or `deny`) just has none.
        let results = engine
            .eval_query(format!("data.slipway.{name}"), false)
            .map_err(|e| format!("evaluating `{name}`: {e}"))?;
        let value = results
            .result
            .first()
            .and_then(|r| r.expressions.first())
            .map_or(regorus::Value::Undefined, |e| e.value.clone());
        findings(&value).map_err(|e| format!("`{name}`: {e}"))
    };
    Ok((rule("deny")?, rule("warn")?))
}

/// The messages of a `deny`/`warn` rule's value: a set (or array) of strings or of objects
/// with `msg` (and `resource`); undefined is none.
fn findings(value: &regorus::Value) -> Result<Vec<Finding>, String> {
    if *value == regorus::Value::Undefined {
        return Ok(Vec::new());
    }
    let json: Json = serde_json::from_str(&value.to_json_str().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let items = match json {
        Json::Array(items) => items,
        Json::Bool(false) | Json::Null => return Ok(Vec::new()),
        other => return Err(format!("expected a set of messages, got {other}")),
    };
    let mut out: Vec<Finding> = items
        .into_iter()
        .map(|item| match item {
            Json::String(msg) => Ok(Finding {
                msg,
                resource: None,
                location: None,
            }),
            Json::Object(o) => {
                let msg = match o.get("msg") {
                    Some(Json::String(s)) => s.clone(),
                    _ => return Err("a message object needs a string `msg`".to_string()),
                };
                let resource = o.get("resource").and_then(Json::as_str).map(str::to_string);
                Ok(Finding {
                    msg,
                    resource,
                    location: None,
                })
            }
            other => Err(format!(
                "a message is a string or {{\"msg\": ...}}, not {other}"
            )),
        })
        .collect::<Result<_, _>>()?;
    out.sort_by(|a, b| (&a.resource, &a.msg).cmp(&(&b.resource, &b.msg)));
    Ok(out)
}

#[cfg(test)]
mod tests;
