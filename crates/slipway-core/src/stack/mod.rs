//! `slipway.yaml` (and the files it includes) → a [`Stack`], with every problem found.
//!
//! Loading never stops at the first problem: each file is parsed, each field checked, each
//! reference resolved against the whole stack, and the dependency graph checked for cycles,
//! and all of it is reported at once as located [`Diagnostic`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::diag::{Diagnostic, Location, Pos};
use crate::yaml::{self, Node, Value};

mod checks;
mod fields;
pub mod manifests;

use checks::{check_cycles, check_environments, check_references};
use fields::Cx;
pub use fields::check_relative_path;

/// Read access to the repository's files at one commit. Implemented by the git layer (and by
/// tests); the core itself does no IO.
pub trait Files {
    /// The UTF-8 text of the file at `path` (repository-relative, `/`-separated).
    fn read(&self, path: &str) -> Result<String, FileError>;

    /// Every file's path at this commit (repository-relative, `/`-separated), for the globs
    /// of a `manifests:` field. Sources that cannot list refuse those stacks with a clear
    /// error.
    fn list(&self) -> Result<Vec<String>, FileError> {
        Err(FileError::Other(
            "this source does not list its files".into(),
        ))
    }
}

/// Why a file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileError {
    /// No such file at this commit.
    NotFound,
    /// Larger than the limit.
    TooLarge {
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// The path, or a symlink along it, leaves the repository.
    Unsafe(String),
    /// Not UTF-8 text.
    NotUtf8,
    /// Anything else, already described.
    Other(String),
}

/// Bounds on what a stack may contain.
#[derive(Debug, Clone, Copy)]
pub struct LoadLimits {
    /// Bounds on each file's YAML.
    pub yaml: yaml::Limits,
    /// What the stack's YAML files may expand to together.
    pub budget: yaml::Budget,
    /// Most files (slipway.yaml and its includes).
    pub max_files: usize,
    /// Most resources in the stack.
    pub max_resources: usize,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            yaml: yaml::Limits::default(),
            budget: yaml::Budget::STACK,
            max_files: 256,
            max_resources: 100_000,
        }
    }
}

/// A variable's value: a scalar.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Scalar {
    /// `true`/`false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A number.
    Float(f64),
    /// A string.
    Str(String),
}

impl Scalar {
    /// The value as it is written into a string.
    pub fn to_text(&self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Str(s) => s.clone(),
        }
    }
}

/// A declared variable.
#[derive(Debug, Clone, PartialEq)]
pub struct Var {
    /// Its value.
    pub value: Scalar,
    /// Where it is set.
    pub location: Location,
}

/// How a generated family makes environments.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Generate {
    /// One environment per open pull request (`pr-<number>`).
    pub pull_requests: bool,
    /// One environment per branch matching one of these globs (`br-<slug>`).
    pub branches: Vec<String>,
}

/// An entry of `environments:`: a static environment, or a family that generates them.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentDef {
    /// Its name.
    pub name: String,
    /// Where it is defined.
    pub location: Location,
    /// The ref a static environment follows.
    pub track: Option<String>,
    /// Changes only to commits that reached the tracked branch; destroys need confirmation.
    pub protected: bool,
    /// Repair drift (default true).
    pub self_heal: bool,
    /// Commits must arrive through a merged pull request that met the apply requirements.
    pub require_pr: bool,
    /// What `/slipway apply ENV` on a pull request needs (`approved`, `mergeable`), as
    /// written; see [`EnvironmentDef::apply_requirements`].
    pub requirements: Option<Vec<String>>,
    /// Variable overrides.
    pub variables: BTreeMap<String, Var>,
    /// Present for generated families.
    pub generate: Option<Generate>,
    /// How long a generated or ad-hoc environment lives.
    pub ttl: Option<Duration>,
    /// Destroyed after this long without a request through its preview URL.
    pub idle_ttl: Option<Duration>,
    /// Its processes stopped after this long without a request; the next request wakes them.
    pub sleep_after: Option<Duration>,
    /// At most this many environments of the family run at once; more wait in a queue.
    pub max_environments: Option<u32>,
    /// Who may open its preview URLs, as written; see [`EnvironmentDef::access`].
    pub access: Option<Access>,
    /// When its environments may take changes (`windows:`; see [`crate::windows`]).
    pub windows: Vec<crate::windows::Window>,
}

pub use crate::vocab::Access;

/// What `access` may say.
pub const ACCESS: &[&str] = Access::WORDS;

/// An entry of `resources:`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceDef {
    /// Its name.
    pub name: String,
    /// Where it is defined (its key).
    pub location: Location,
    /// Its `type:`.
    pub type_name: String,
    /// Free text.
    pub description: Option<String>,
    /// Explicit `depends_on` plus every resource its values reference.
    pub dependencies: BTreeSet<String>,
    /// The type-specific fields, as written.
    pub fields: BTreeMap<String, Node>,
}

/// A whole stack: what one commit says every environment should run.
#[derive(Debug, Clone, PartialEq)]
pub struct Stack {
    /// `version:` (1).
    pub version: i64,
    /// `stack:`, a DNS label.
    pub name: String,
    /// Declared variables and their defaults.
    pub variables: BTreeMap<String, Var>,
    /// Environments and families.
    pub environments: BTreeMap<String, EnvironmentDef>,
    /// Resources.
    pub resources: BTreeMap<String, ResourceDef>,
    /// Every file read, the entry file first.
    pub files: Vec<String>,
    /// Recipients and encrypted values of `${secrets.NAME}`.
    pub secrets: crate::secrets::Secrets,
}

/// What loading produced: the stack when the files could be read at all, and every problem.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The stack, possibly partial when there are errors.
    pub stack: Option<Stack>,
    /// Every problem, sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
    /// How many YAML values the stack's files expanded to (aliases' copies included): a
    /// measure of what the loaded stack holds, for caches.
    pub expanded: usize,
    /// How many bytes of scalar text they expanded to (aliases' copies included).
    pub expanded_bytes: usize,
}

impl Loaded {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

const TOP_FIELDS: &[&str] = &[
    "version",
    "stack",
    "variables",
    "environments",
    "resources",
    "include",
    "secrets",
];
const INCLUDED_FIELDS: &[&str] = &["variables", "environments", "resources", "include"];
const ENV_FIELDS: &[&str] = &[
    "track",
    "protected",
    "self_heal",
    "require_pr",
    "variables",
    "generate",
    "ttl",
    "description",
    "apply_requirements",
    "idle_ttl",
    "sleep_after",
    "max_environments",
    "access",
    "windows",
];
const WINDOW_FIELDS: &[&str] = &["kind", "schedule", "duration", "time_zone"];

/// What `apply_requirements` may list.
pub const APPLY_REQUIREMENTS: &[&str] = &["approved", "mergeable"];

impl EnvironmentDef {
    /// What applying a pull request to this environment before merge needs: as written, or
    /// `approved` and `mergeable` for a protected environment, nothing otherwise.
    pub fn apply_requirements(&self) -> Vec<String> {
        match &self.requirements {
            Some(list) => list.clone(),
            None if self.protected => APPLY_REQUIREMENTS.iter().map(|s| s.to_string()).collect(),
            None => Vec::new(),
        }
    }

    /// Who may open the preview URL of an environment of `kind` made from this entry: as
    /// written, else `public` for a static environment and `private` for a generated or
    /// ad-hoc one (it runs whoever's branch or ref; an ad-hoc copy made `--like prod` is no
    /// `prod`).
    pub fn access(&self, kind: crate::vocab::EnvKind) -> Access {
        match (self.access, kind) {
            (Some(access), _) => access,
            (None, crate::vocab::EnvKind::Static) => Access::Public,
            (None, _) => Access::Private,
        }
    }
}
const GENERATE_FIELDS: &[&str] = &["pull_requests", "branches"];
const ENV_ATTRS: &[&str] = &["name", "stack", "kind"];

/// Loads the stack whose entry file is `entry` (e.g. `slipway.yaml` or `deploy/slipway.yaml`).
/// Includes are relative to the entry file's folder.
pub fn load(files: &dyn Files, entry: &str, limits: &LoadLimits) -> Loaded {
    let base = match entry.rfind('/') {
        Some(i) => &entry[..i + 1],
        None => "",
    };
    let mut cx = Cx {
        diags: Vec::new(),
        file: entry.to_string(),
        budget: limits.budget,
        dropped: 0,
        suggested: 0,
    };
    let mut stack = Stack {
        version: 0,
        name: String::new(),
        variables: BTreeMap::new(),
        environments: BTreeMap::new(),
        resources: BTreeMap::new(),
        files: Vec::new(),
        secrets: crate::secrets::Secrets {
            file: format!("{base}{}", crate::secrets::DEFAULT_FILE),
            ..Default::default()
        },
    };
    let mut raw_resources: Vec<(String, Node, Node)> = Vec::new();
    let mut queue: Vec<(String, Option<Location>)> = vec![(entry.to_string(), None)];
    let mut seen = BTreeSet::new();
    let mut parsed_entry = false;
    while let Some((path, included_from)) = queue.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        if seen.len() > limits.max_files {
            let loc = included_from
                .clone()
                .unwrap_or_else(|| loc(entry, Pos::new(1, 1)));
            cx.diags.push(Diagnostic::error(
                &loc.file,
                loc.pos,
                format!("more than {} files included", limits.max_files),
            ));
            break;
        }
        let text = match files.read(&path) {
            Ok(text) => text,
            Err(e) => {
                let (file, pos) = match &included_from {
                    Some(l) => (l.file.clone(), l.pos),
                    None => (path.clone(), Pos::new(1, 1)),
                };
                cx.diags.push(file_error(&file, pos, &path, &e));
                continue;
            }
        };
        stack.files.push(path.clone());
        cx.file = path.clone();
        let (root, errors) = yaml::parse_in(&text, limits.yaml, &mut cx.budget);
        if root.is_none() && errors.is_empty() {
            cx.err(
                Pos::new(1, 1),
                format!("`{path}` is empty"),
                Some(if included_from.is_none() { "start with `version: 1` and `stack: NAME`; `slipway init` writes an example" } else { "remove the include, or give the file `resources:`, `variables:` or `environments:`" }),
            );
        }
        for e in errors {
            let mut d = Diagnostic::error(&path, e.pos, e.message);
            d.hint = e.hint;
            cx.diags.push(d);
        }
        let Some(root) = root else { continue };
        let is_entry = included_from.is_none();
        parsed_entry |= is_entry;
        let Some(entries) = cx.map(
            &root,
            if is_entry {
                "slipway.yaml"
            } else {
                "an included file"
            },
        ) else {
            continue;
        };
        let allowed = if is_entry {
            TOP_FIELDS
        } else {
            INCLUDED_FIELDS
        };
        for (key, value) in entries {
            let Some(name) = cx.key(key) else { continue };
            match name {
                "version" if is_entry => match value.value {
                    Value::Int(1) => stack.version = 1,
                    Value::Int(v) => cx.err(
                        value.pos,
                        format!("unsupported version {v}"),
                        Some("this slipway understands `version: 1`"),
                    ),
                    _ => cx.type_err(value, "`version`", "an integer", Some("write `version: 1`")),
                },
                "stack" if is_entry => {
                    if let Some(s) = cx.string(value, "`stack`") {
                        if !is_dns_label(s) {
                            cx.err(value.pos, format!("stack name `{s}` is not a DNS label"), Some("use lowercase letters, digits and `-`, at most 63 characters, e.g. `shop`"));
                        }
                        stack.name = s.to_string();
                    }
                }
                "variables" => {
                    for (name, var) in cx.variables(value, "variables") {
                        if let Some(first) = stack.variables.get(&name) {
                            cx.err(
                                var.location.pos,
                                format!("variable `{name}` is declared twice"),
                                Some(&format!(
                                    "it is first declared at {}:{}",
                                    first.location.file, first.location.pos.line
                                )),
                            );
                        } else {
                            stack.variables.insert(name, var);
                        }
                    }
                }
                "environments" => {
                    let Some(envs) = cx.map(value, "`environments`") else {
                        continue;
                    };
                    for (k, v) in envs {
                        let Some(name) = cx.key(k) else { continue };
                        if let Some(first) = stack.environments.get(name) {
                            cx.err(
                                k.pos,
                                format!("environment `{name}` is defined twice"),
                                Some(&format!(
                                    "it is first defined at {}:{}",
                                    first.location.file, first.location.pos.line
                                )),
                            );
                            continue;
                        }
                        if let Some(env) = cx.environment(name, k, v) {
                            stack.environments.insert(name.to_string(), env);
                        }
                    }
                }
                "resources" => {
                    let Some(res) = cx.map(value, "`resources`") else {
                        continue;
                    };
                    for (k, v) in res {
                        raw_resources.push((path.clone(), k.clone(), v.clone()));
                    }
                }
                "secrets" if is_entry => cx.secrets_entry(base, value, &mut stack.secrets),
                "include" => {
                    for (inc, pos) in cx.string_list(value, "`include`") {
                        match normalize_include(base, &inc) {
                            Ok(p) => queue.push((p, Some(loc(&path, pos)))),
                            Err(why) => cx.err(pos, format!("cannot include `{inc}`: {why}"), Some("include files by a path relative to slipway.yaml's folder, inside the repository")),
                        }
                    }
                }
                other => {
                    if !is_entry && matches!(other, "version" | "stack" | "secrets") {
                        cx.err(
                            key.pos,
                            format!("`{other}` may only be set in the entry file"),
                            Some("remove it from the included file"),
                        );
                    } else {
                        cx.unknown_field(key.pos, other, "slipway.yaml", allowed);
                    }
                }
            }
        }
        if is_entry {
            if stack.version == 0
                && !entries
                    .iter()
                    .any(|(k, _)| k.value == Value::Str("version".into()))
            {
                cx.err(
                    root.pos,
                    "missing `version`".into(),
                    Some("add `version: 1` at the top"),
                );
            }
            if !entries
                .iter()
                .any(|(k, _)| k.value == Value::Str("stack".into()))
            {
                cx.err(
                    root.pos,
                    "missing `stack`".into(),
                    Some("add `stack: NAME`, a DNS label such as `shop`"),
                );
            }
        }
    }
    if !parsed_entry {
        let expanded = limits.budget.nodes.saturating_sub(cx.budget.nodes);
        let expanded_bytes = limits.budget.bytes.saturating_sub(cx.budget.bytes);
        let mut diagnostics = cx.into_diagnostics(entry);
        diagnostics.sort();
        return Loaded {
            stack: None,
            diagnostics,
            expanded,
            expanded_bytes,
        };
    }
    if raw_resources.len() > limits.max_resources {
        cx.file = entry.to_string();
        cx.err(
            Pos::new(1, 1),
            format!(
                "{} resources; the limit is {}",
                raw_resources.len(),
                limits.max_resources
            ),
            Some("split the stack"),
        );
        raw_resources.truncate(limits.max_resources);
    }
    for (file, key, value) in &raw_resources {
        cx.file = file.clone();
        let Some(name) = cx.key(key) else { continue };
        if let Some(first) = stack.resources.get(name) {
            cx.err(
                key.pos,
                format!("resource `{name}` is defined twice"),
                Some(&format!(
                    "it is first defined at {}:{}",
                    first.location.file, first.location.pos.line
                )),
            );
            continue;
        }
        if !is_resource_name(name) {
            cx.err(
                key.pos,
                format!("resource name `{name}` is not valid"),
                Some("use letters, digits, `_` and `-`, at most 63 characters"),
            );
        }
        if let Some(r) = cx.resource(name, key, value) {
            stack.resources.insert(name.to_string(), r);
        }
    }
    load_secrets(&mut cx, files, &mut stack.secrets, limits);
    manifests::expand(&mut cx, files, base, &mut stack, limits);
    check_environments(&mut cx, &stack);
    check_references(&mut cx, &mut stack);
    check_cycles(&mut cx, &stack);
    let expanded = limits.budget.nodes.saturating_sub(cx.budget.nodes);
    let expanded_bytes = limits.budget.bytes.saturating_sub(cx.budget.bytes);
    let mut diagnostics = cx.into_diagnostics(entry);
    diagnostics.sort();
    diagnostics.dedup();
    Loaded {
        stack: Some(stack),
        diagnostics,
        expanded,
        expanded_bytes,
    }
}

/// Reads the secrets file, if there is one; its absence is only an error for the references
/// that need it.
fn load_secrets(
    cx: &mut Cx,
    files: &dyn Files,
    secrets: &mut crate::secrets::Secrets,
    limits: &LoadLimits,
) {
    match files.read(&secrets.file) {
        Ok(text) => {
            secrets.file_found = true;
            let (entries, diags) = crate::secrets::parse_file(&secrets.file, &text, limits.yaml);
            secrets.entries = entries;
            cx.diags.extend(diags);
        }
        Err(FileError::NotFound) => {}
        Err(e) => cx
            .diags
            .push(file_error(&secrets.file, Pos::new(1, 1), &secrets.file, &e)),
    }
}

fn loc(file: &str, pos: Pos) -> Location {
    Location {
        file: file.to_string(),
        pos,
    }
}

fn file_error(file: &str, pos: Pos, path: &str, e: &FileError) -> Diagnostic {
    match e {
        FileError::NotFound => {
            Diagnostic::error(file, pos, format!("`{path}` does not exist at this commit"))
                .with_hint("check the path and that the file is committed (`git status`)")
        }
        FileError::TooLarge { size, limit } => Diagnostic::error(
            file,
            pos,
            format!("`{path}` is {size} bytes, larger than the limit of {limit} bytes"),
        )
        .with_hint("split it into smaller files with `include:`"),
        FileError::Unsafe(why) => {
            Diagnostic::error(file, pos, format!("`{path}` is refused: {why}"))
                .with_hint("files of a stack must stay inside the repository")
        }
        FileError::NotUtf8 => Diagnostic::error(file, pos, format!("`{path}` is not UTF-8 text")),
        FileError::Other(why) => {
            Diagnostic::error(file, pos, format!("cannot read `{path}`: {why}"))
        }
    }
}

/// Joins an include path to the entry's folder, refusing anything that could leave it.
fn normalize_include(base: &str, inc: &str) -> Result<String, &'static str> {
    if inc.is_empty() {
        return Err("the path is empty");
    }
    if inc.starts_with('/') {
        return Err("absolute paths are not allowed");
    }
    if inc.contains('\0') || inc.contains('\\') {
        return Err("the path contains a NUL or backslash");
    }
    let mut parts = Vec::new();
    for part in inc.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("`..` is not allowed"),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err("the path names no file");
    }
    Ok(format!("{base}{}", parts.join("/")))
}

/// Whether `s` is a DNS label: 1–63 of `[a-z0-9-]`, not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_resource_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 63
}

/// The duration grammar, kept under its old name for callers of `stack`: see [`crate::duration`].
pub use crate::duration::parse as parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_cannot_leave_the_stack_folder() {
        assert_eq!(
            normalize_include("deploy/", "./more.yaml").as_deref(),
            Ok("deploy/more.yaml")
        );
        assert!(normalize_include("", "../../etc/x").is_err());
        assert!(normalize_include("", "/etc/passwd").is_err());
    }
}
