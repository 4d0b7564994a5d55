//! `slipway.yaml` (and the files it includes) → a [`Stack`], with every problem found.
//!
//! Loading never stops at the first problem: each file is parsed, each field checked, each
//! reference resolved against the whole stack, and the dependency graph checked for cycles,
//! and all of it is reported at once as located [`Diagnostic`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::diag::{Diagnostic, Location, Pos, did_you_mean};
use crate::template::{self, Reference};
use crate::types::{self, COMMON_FIELDS, FieldKind, Outputs};
use crate::yaml::{self, Node, Value};

/// Read access to the repository's files at one commit. Implemented by the git layer (and by
/// tests); the core itself does no IO.
pub trait Files {
    /// The UTF-8 text of the file at `path` (repository-relative, `/`-separated).
    fn read(&self, path: &str) -> Result<String, FileError>;
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
    /// Most files (slipway.yaml and its includes).
    pub max_files: usize,
    /// Most resources in the stack.
    pub max_resources: usize,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            yaml: yaml::Limits::default(),
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
}

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
];

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
        let (root, errors) = yaml::parse(&text, limits.yaml);
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
        let mut diagnostics = cx.diags;
        diagnostics.sort();
        return Loaded {
            stack: None,
            diagnostics,
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
    check_environments(&mut cx, &stack);
    check_references(&mut cx, &mut stack);
    check_cycles(&mut cx, &stack);
    let mut diagnostics = cx.diags;
    diagnostics.sort();
    diagnostics.dedup();
    Loaded {
        stack: Some(stack),
        diagnostics,
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

struct Cx {
    diags: Vec<Diagnostic>,
    file: String,
}

impl Cx {
    fn err(&mut self, pos: Pos, message: String, hint: Option<&str>) {
        let mut d = Diagnostic::error(&self.file, pos, message);
        d.hint = hint.map(str::to_string);
        self.diags.push(d);
    }

    fn type_err(&mut self, node: &Node, what: &str, expected: &str, hint: Option<&str>) {
        self.err(
            node.pos,
            format!("{what} must be {expected}, found {}", node.value.kind()),
            hint,
        );
    }

    fn unknown_field(&mut self, pos: Pos, name: &str, within: &str, allowed: &[&str]) {
        let hint = match did_you_mean(name, allowed.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("the fields of {within} are: {}", allowed.join(", ")),
        };
        self.err(
            pos,
            format!("unknown field `{name}` in {within}"),
            Some(&hint),
        );
    }

    fn key<'n>(&mut self, key: &'n Node) -> Option<&'n str> {
        match &key.value {
            Value::Str(s) => Some(s),
            _ => {
                self.type_err(key, "a key", "a string", None);
                None
            }
        }
    }

    fn map<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [(Node, Node)]> {
        match &node.value {
            Value::Map(entries) => Some(entries),
            Value::Null => Some(&[]),
            _ => {
                self.type_err(node, what, "a mapping", None);
                None
            }
        }
    }

    fn string<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n str> {
        match &node.value {
            Value::Str(s) => Some(s),
            _ => {
                self.type_err(node, what, "a string", None);
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.type_err(node, what, "`true` or `false`", None);
                None
            }
        }
    }

    fn string_list(&mut self, node: &Node, what: &str) -> Vec<(String, Pos)> {
        match &node.value {
            Value::Seq(items) => items
                .iter()
                .filter_map(|i| {
                    self.string(i, &format!("each item of {what}"))
                        .map(|s| (s.to_string(), i.pos))
                })
                .collect(),
            Value::Str(s) => vec![(s.clone(), node.pos)],
            _ => {
                self.type_err(node, what, "a list of strings", None);
                Vec::new()
            }
        }
    }

    /// The `secrets:` entry of slipway.yaml: `recipients` and an optional `file`.
    fn secrets_entry(&mut self, base: &str, node: &Node, secrets: &mut crate::secrets::Secrets) {
        let Some(entries) = self.map(node, "`secrets`") else {
            return;
        };
        for (key, value) in entries {
            let Some(name) = self.key(key) else { continue };
            match name {
                "recipients" => {
                    for (r, pos) in self.string_list(value, "`secrets.recipients`") {
                        if crate::secrets::is_recipient(&r) {
                            secrets.recipients.push(r);
                        } else {
                            self.err(pos, format!("`{r}` is not an age recipient"), Some("recipients are age public keys such as `age1ql3z7hjy54pw3...`; `slipway secret keygen` makes one for an engine"));
                        }
                    }
                }
                "file" => {
                    if let Some(f) = self.string(value, "`secrets.file`") {
                        match normalize_include(base, f) {
                            Ok(p) => secrets.file = p,
                            Err(why) => self.err(value.pos, format!("cannot use `{f}` as the secrets file: {why}"), Some("name a file relative to slipway.yaml's folder, inside the repository")),
                        }
                    }
                }
                other => self.unknown_field(key.pos, other, "`secrets`", &["recipients", "file"]),
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let hint = crate::duration::HINT;
        match &node.value {
            Value::Str(s) => match parse_duration(s) {
                Some(d) => Some(d),
                None => {
                    self.err(
                        node.pos,
                        format!("{what}: `{s}` is not a duration"),
                        Some(hint),
                    );
                    None
                }
            },
            _ => {
                self.type_err(node, what, "a duration", Some(hint));
                None
            }
        }
    }

    fn variables(&mut self, node: &Node, within: &str) -> Vec<(String, Var)> {
        let Some(entries) = self.map(node, &format!("`{within}`")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let Some(name) = self.key(k) else { continue };
            if !is_identifier(name) {
                self.err(
                    k.pos,
                    format!("variable name `{name}` is not an identifier"),
                    Some("use letters, digits and `_`, starting with a letter"),
                );
                continue;
            }
            let value = match &v.value {
                Value::Bool(b) => Scalar::Bool(*b),
                Value::Int(i) => Scalar::Int(*i),
                Value::Float(f) if f.is_finite() => Scalar::Float(*f),
                Value::Str(s) => Scalar::Str(s.clone()),
                _ => {
                    self.type_err(
                        v,
                        &format!("variable `{name}`"),
                        "a string, number or boolean",
                        None,
                    );
                    continue;
                }
            };
            if let Value::Str(s) = &v.value
                && s.contains("${")
            {
                self.err(
                    v.pos,
                    format!("variable `{name}` contains a reference"),
                    Some("variables are plain values; write `$${` for a literal `${`"),
                );
            }
            out.push((
                name.to_string(),
                Var {
                    value,
                    location: loc(&self.file, k.pos),
                },
            ));
        }
        out
    }

    fn environment(&mut self, name: &str, key: &Node, node: &Node) -> Option<EnvironmentDef> {
        if !is_dns_label(name) {
            self.err(
                key.pos,
                format!("environment name `{name}` is not a DNS label"),
                Some("use lowercase letters, digits and `-`, at most 63 characters"),
            );
        }
        let entries = self.map(node, &format!("environment `{name}`"))?;
        let mut env = EnvironmentDef {
            name: name.to_string(),
            location: loc(&self.file, key.pos),
            track: None,
            protected: false,
            self_heal: true,
            require_pr: false,
            requirements: None,
            variables: BTreeMap::new(),
            generate: None,
            ttl: None,
        };
        for (k, v) in entries {
            let Some(field) = self.key(k) else { continue };
            match field {
                "track" => env.track = self.string(v, "`track`").map(str::to_string),
                "protected" => env.protected = self.boolean(v, "`protected`").unwrap_or(false),
                "self_heal" => env.self_heal = self.boolean(v, "`self_heal`").unwrap_or(true),
                "require_pr" => env.require_pr = self.boolean(v, "`require_pr`").unwrap_or(false),
                "apply_requirements" => {
                    let mut list = Vec::new();
                    for (r, pos) in self.string_list(v, "`apply_requirements`") {
                        if APPLY_REQUIREMENTS.contains(&r.as_str()) {
                            list.push(r);
                        } else {
                            self.err(pos, format!("unknown apply requirement `{r}`"), Some("the requirements are `approved` (a reviewer approved the head commit) and `mergeable` (the forge says it merges cleanly)"));
                        }
                    }
                    env.requirements = Some(list);
                }
                "description" => {
                    self.string(v, "`description`");
                }
                "ttl" => env.ttl = self.duration(v, "`ttl`"),
                "variables" => {
                    env.variables = self
                        .variables(v, &format!("environments.{name}.variables"))
                        .into_iter()
                        .collect()
                }
                "generate" => {
                    let Some(gen_entries) = self.map(v, "`generate`") else {
                        continue;
                    };
                    let mut generate = Generate::default();
                    for (gk, gv) in gen_entries {
                        let Some(gfield) = self.key(gk) else { continue };
                        match gfield {
                            "pull_requests" => {
                                generate.pull_requests =
                                    self.boolean(gv, "`pull_requests`").unwrap_or(false)
                            }
                            "branches" => {
                                generate.branches = self
                                    .string_list(gv, "`branches`")
                                    .into_iter()
                                    .map(|(s, _)| s)
                                    .collect()
                            }
                            other => {
                                self.unknown_field(gk.pos, other, "`generate`", GENERATE_FIELDS)
                            }
                        }
                    }
                    if !generate.pull_requests && generate.branches.is_empty() {
                        self.err(
                            v.pos,
                            "`generate` generates nothing".into(),
                            Some("set `pull_requests: true` or list `branches:` globs"),
                        );
                    }
                    env.generate = Some(generate);
                }
                other => {
                    self.unknown_field(k.pos, other, &format!("environment `{name}`"), ENV_FIELDS)
                }
            }
        }
        if env.track.is_some() && env.generate.is_some() {
            self.err(
                key.pos,
                format!("environment `{name}` both tracks a ref and generates environments"),
                Some(
                    "a static environment has `track:`; a family has `generate:`; split it in two",
                ),
            );
        }
        Some(env)
    }

    fn resource(&mut self, name: &str, key: &Node, node: &Node) -> Option<ResourceDef> {
        let entries = match &node.value {
            Value::Map(entries) => entries,
            _ => {
                self.type_err(
                    node,
                    &format!("resource `{name}`"),
                    "a mapping",
                    Some("a resource looks like `api: { type: process, command: [...] }`"),
                );
                return None;
            }
        };
        let type_node = entries
            .iter()
            .find(|(k, _)| k.value == Value::Str("type".into()))
            .map(|(_, v)| v);
        let Some(type_node) = type_node else {
            let names: Vec<&str> = types::TYPES.iter().map(|t| t.name).collect();
            self.err(
                key.pos,
                format!("resource `{name}` has no `type`"),
                Some(&format!("add `type:` with one of: {}", names.join(", "))),
            );
            return None;
        };
        let type_name = self.string(type_node, "`type`")?;
        let Some(rtype) = types::lookup(type_name) else {
            let names: Vec<&str> = types::TYPES.iter().map(|t| t.name).collect();
            let hint = match did_you_mean(type_name, names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("the types are: {}", names.join(", ")),
            };
            self.err(
                type_node.pos,
                format!("unknown resource type `{type_name}`"),
                Some(&hint),
            );
            return None;
        };
        if !rtype.capabilities.provided {
            self.err(
                type_node.pos,
                format!("resource type `{type_name}` has no provider in this build"),
                Some(
                    "it is described in the catalogue, but this version of slipway cannot \
                     apply it yet; remove the resource or use another type",
                ),
            );
        }
        let mut def = ResourceDef {
            name: name.to_string(),
            location: loc(&self.file, key.pos),
            type_name: type_name.to_string(),
            description: None,
            dependencies: BTreeSet::new(),
            fields: BTreeMap::new(),
        };
        let allowed: Vec<&str> = COMMON_FIELDS
            .iter()
            .copied()
            .chain(rtype.fields.iter().map(|f| f.name))
            .collect();
        for (k, v) in entries {
            let Some(field) = self.key(k) else { continue };
            match field {
                "type" => {}
                "description" => {
                    def.description = self.string(v, "`description`").map(str::to_string)
                }
                "depends_on" => {
                    for (dep, pos) in self.string_list(v, "`depends_on`") {
                        // Checked against the whole stack later; keep the position in the
                        // field map for that.
                        let _ = pos;
                        def.dependencies.insert(dep);
                    }
                    def.fields.insert("depends_on".into(), v.clone());
                }
                other => match rtype.field(other) {
                    Some(spec) => {
                        self.check_kind(v, spec.kind, &format!("`{other}` of resource `{name}`"));
                        def.fields.insert(other.to_string(), v.clone());
                    }
                    None => self.unknown_field(
                        k.pos,
                        other,
                        &format!("a `{type_name}` resource"),
                        &allowed,
                    ),
                },
            }
        }
        for spec in rtype.fields.iter().filter(|f| f.required) {
            if !def.fields.contains_key(spec.name) {
                self.err(
                    key.pos,
                    format!("resource `{name}` ({type_name}) is missing `{}`", spec.name),
                    Some(&format!("`{}`: {}", spec.name, spec.doc)),
                );
            }
        }
        Some(def)
    }

    fn check_kind(&mut self, node: &Node, kind: FieldKind, what: &str) {
        let scalar = |v: &Value| {
            matches!(
                v,
                Value::Str(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_)
            )
        };
        match kind {
            FieldKind::Str | FieldKind::PortName => {
                self.string(node, what);
            }
            FieldKind::Bool => {
                self.boolean(node, what);
            }
            FieldKind::Duration => {
                self.duration(node, what);
            }
            FieldKind::Mode => {
                if let Some(s) = self.string(node, what)
                    && u32::from_str_radix(s, 8)
                        .map(|m| m > 0o7777)
                        .unwrap_or(true)
                {
                    self.err(
                        node.pos,
                        format!("{what}: `{s}` is not an octal file mode"),
                        Some("write it quoted, e.g. `mode: \"0644\"`"),
                    );
                }
            }
            FieldKind::RelPath => {
                if let Some(s) = self.string(node, what)
                    && let Err(why) = check_relative_path(s)
                {
                    self.err(
                        node.pos,
                        format!("{what}: `{s}` is refused: {why}"),
                        Some(
                            "use a relative path inside the environment's directory, without `..`",
                        ),
                    );
                }
            }
            FieldKind::StrList | FieldKind::NameList => match &node.value {
                Value::Seq(items) => {
                    if items.is_empty() && kind == FieldKind::StrList {
                        self.err(
                            node.pos,
                            format!("{what} is empty"),
                            Some("give at least the program to run"),
                        );
                    }
                    for item in items.iter().filter(|i| !scalar(&i.value)) {
                        self.type_err(item, &format!("each item of {what}"), "a string", None);
                    }
                }
                Value::Str(s) => self.err(
                    node.pos,
                    format!("{what} must be a list of strings, found a string"),
                    Some(&format!(
                        "write it as a list, e.g. [{}]",
                        s.split_whitespace()
                            .map(|w| format!("{w:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                ),
                _ => self.type_err(node, what, "a list of strings", None),
            },
            FieldKind::PortNames => match &node.value {
                Value::Seq(items) => {
                    let mut seen = BTreeSet::new();
                    for item in items {
                        if let Some(s) = self.string(item, &format!("each item of {what}")) {
                            if !is_identifier(s) {
                                self.err(
                                    item.pos,
                                    format!("port name `{s}` is not an identifier"),
                                    Some("use letters, digits and `_`, e.g. `http`"),
                                );
                            } else if !seen.insert(s.to_string()) {
                                self.err(item.pos, format!("port `{s}` is listed twice"), None);
                            }
                        }
                    }
                }
                _ => self.type_err(
                    node,
                    what,
                    "a list of port names",
                    Some("write e.g. `ports: [http]`"),
                ),
            },
            FieldKind::StrMap => match &node.value {
                Value::Map(entries) => {
                    for (k, v) in entries {
                        if let Some(name) = self.key(k)
                            && (name.is_empty() || name.contains('=') || name.contains('\0'))
                        {
                            self.err(
                                k.pos,
                                format!("`{name}` is not a valid variable name"),
                                None,
                            );
                        }
                        if !scalar(&v.value) {
                            self.type_err(v, &format!("each value of {what}"), "a string", None);
                        }
                    }
                }
                Value::Seq(_) => self.type_err(
                    node,
                    what,
                    "a mapping",
                    Some("write `env: { NAME: value }`, not a list"),
                ),
                _ => self.type_err(node, what, "a mapping", None),
            },
            FieldKind::Health => {
                let Some(entries) = self.map(node, what) else {
                    return;
                };
                let mut checks = 0;
                for (k, v) in entries {
                    let Some(field) = self.key(k) else { continue };
                    match field {
                        "http" => {
                            checks += 1;
                            if let Some(p) = self.string(v, "`health.http`")
                                && !p.starts_with('/')
                            {
                                self.err(v.pos, format!("`health.http` must be a path starting with `/`, found `{p}`"), Some("e.g. `health: { http: /healthz }`"));
                            }
                        }
                        "tcp" => {
                            checks += 1;
                            self.string(v, "`health.tcp`");
                        }
                        "command" => {
                            checks += 1;
                            self.check_kind(v, FieldKind::StrList, "`health.command`");
                        }
                        "port" => {
                            self.string(v, "`health.port`");
                        }
                        "interval" | "timeout" => {
                            self.duration(v, &format!("`health.{field}`"));
                        }
                        other => self.unknown_field(
                            k.pos,
                            other,
                            "`health`",
                            &["http", "tcp", "command", "port", "interval", "timeout"],
                        ),
                    }
                }
                if checks != 1 {
                    self.err(
                        node.pos,
                        format!("{what} needs exactly one of `http`, `tcp` or `command`"),
                        Some("e.g. `health: { http: /healthz }`"),
                    );
                }
            }
            FieldKind::Any => {}
        }
    }
}

/// Checks a path that must stay inside a directory.
pub fn check_relative_path(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("the path is empty");
    }
    if s.starts_with('/') {
        return Err("absolute paths are not allowed");
    }
    if s.contains('\0') || s.contains('\\') {
        return Err("the path contains a NUL or backslash");
    }
    if s.split('/').any(|p| p == "..") {
        return Err("`..` is not allowed");
    }
    Ok(())
}

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

fn check_environments(cx: &mut Cx, stack: &Stack) {
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

fn check_references(cx: &mut Cx, stack: &mut Stack) {
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
                            cx.err(
                                item.pos,
                                format!("`depends_on` names unknown resource `{dep}`"),
                                Some(&suggest(dep, &names, "resource")),
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
            visit_templates(node, spec.kind, &mut |s, pos| {
                let segments = match template::parse(s) {
                    Ok(segments) => segments,
                    Err(e) => {
                        cx.err(
                            Pos::new(pos.line, pos.col + offset_col(s, e.offset)),
                            e.message,
                            e.hint.as_deref(),
                        );
                        return;
                    }
                };
                for seg in segments {
                    let template::Segment::Ref(r, offset) = seg else {
                        continue;
                    };
                    let at = Pos::new(pos.line, pos.col + offset_col(s, offset));
                    match &r {
                        Reference::Var(v) if !vars.contains(v) => cx.err(
                            at,
                            format!("unknown variable `{v}` in `{r}`"),
                            Some(&suggest(v, &vars, "variable")),
                        ),
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
                                }
                            } else {
                                cx.err(
                                    at,
                                    format!("unknown resource `{name}` in `{r}`"),
                                    Some(&suggest(name, &names, "resource")),
                                );
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
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

fn suggest(word: &str, names: &BTreeSet<String>, what: &str) -> String {
    match did_you_mean(word, names.iter().map(String::as_str)) {
        Some(s) => format!("did you mean `{s}`?"),
        None if names.is_empty() => format!("no {what} is declared"),
        None => format!(
            "the {what}s are: {}",
            names
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
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

fn check_cycles(cx: &mut Cx, stack: &Stack) {
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
