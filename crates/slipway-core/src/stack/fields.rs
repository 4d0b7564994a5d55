//! Field-by-field checks of one file's YAML: the `Cx` that collects diagnostics while the
//! top level, variables, environments and resources are read.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{
    APPLY_REQUIREMENTS, Access, ENV_FIELDS, EnvironmentDef, GENERATE_FIELDS, Generate, ResourceDef,
    Scalar, Var, WINDOW_FIELDS, is_dns_label, is_identifier, loc, normalize_include,
    parse_duration,
};
use crate::diag::{Diagnostic, Pos, did_you_mean};
use crate::types::{self, COMMON_FIELDS, FieldKind};
use crate::windows::{Window, WindowError, WindowKind};
use crate::yaml::{Node, Value};

pub(super) struct Cx {
    pub(super) diags: Vec<Diagnostic>,
    pub(super) file: String,
    /// What the stack's YAML files may still expand to, together (each file's parse takes
    /// from it: `slipway.yaml`, its includes, its manifests).
    pub(super) budget: crate::yaml::Budget,
    /// Problems past [`MAX_DIAGNOSTICS`], counted rather than kept.
    pub(super) dropped: usize,
    /// How many "did you mean" hints were looked for (see [`Cx::suggest`]).
    pub(super) suggested: usize,
}

/// Most problems a load keeps: a file of a megabyte can name a missing resource a hundred
/// thousand times, and each kept problem is kept, sorted, rendered and sent.
pub(super) const MAX_DIAGNOSTICS: usize = 1_000;

/// Most "did you mean" hints looked for in one load: each compares the word with every
/// name, and a stack of thousands of names with thousands of unknown ones is millions of
/// comparisons.
const MAX_SUGGESTIONS: usize = 100;

/// Most names a hint lists.
const MAX_LISTED: usize = 20;

/// The longest name a hint compares or lists (bytes; a valid name has at most 63).
const MAX_NAME: usize = 64;

impl Cx {
    pub(super) fn err(&mut self, pos: Pos, message: String, hint: Option<&str>) {
        if self.diags.len() >= MAX_DIAGNOSTICS {
            self.dropped += 1;
            return;
        }
        let mut d = Diagnostic::error(&self.file, pos, message);
        d.hint = hint.map(str::to_string);
        self.diags.push(d);
    }

    /// The problems found, with one saying how many more there were.
    pub(super) fn into_diagnostics(mut self, entry: &str) -> Vec<Diagnostic> {
        self.diags.truncate(MAX_DIAGNOSTICS);
        if self.dropped > 0 {
            let mut more = Diagnostic::error(
                entry,
                Pos::new(1, 1),
                format!(
                    "{} more problems are not shown (the first {MAX_DIAGNOSTICS} are)",
                    self.dropped
                ),
            );
            more.hint = Some("fix these, and validate again".into());
            self.diags.push(more);
        }
        self.diags
    }

    /// A hint for `word`, which is none of `names` (the `what`s the stack declares): the
    /// nearest name, or the names.
    pub(super) fn suggest(&mut self, word: &str, names: &BTreeSet<String>, what: &str) -> String {
        if names.is_empty() {
            return format!("no {what} is declared");
        }
        // A comparison costs the product of the two lengths: names are at most 63
        // characters, and a word or a name longer (an invalid one, kept with its error) is
        // no typo of one.
        let short = |name: &&String| name.len() <= MAX_NAME;
        if self.suggested >= MAX_SUGGESTIONS
            || self.diags.len() >= MAX_DIAGNOSTICS
            || word.len() > MAX_NAME
        {
            return format!("check the {what}'s name");
        }
        self.suggested += 1;
        if let Some(near) = did_you_mean(word, names.iter().filter(short).map(String::as_str)) {
            return format!("did you mean `{near}`?");
        }
        let mut listed: Vec<&str> = names
            .iter()
            .filter(short)
            .take(MAX_LISTED)
            .map(String::as_str)
            .collect();
        if names.len() > MAX_LISTED {
            listed.push("…");
        }
        format!("the {what}s are: {}", listed.join(", "))
    }

    pub(super) fn type_err(&mut self, node: &Node, what: &str, expected: &str, hint: Option<&str>) {
        self.err(
            node.pos,
            format!("{what} must be {expected}, found {}", node.value.kind()),
            hint,
        );
    }

    pub(super) fn unknown_field(&mut self, pos: Pos, name: &str, within: &str, allowed: &[&str]) {
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

    pub(super) fn key<'n>(&mut self, key: &'n Node) -> Option<&'n str> {
        match &key.value {
            Value::Str(s) => Some(s),
            _ => {
                self.type_err(key, "a key", "a string", None);
                None
            }
        }
    }

    pub(super) fn map<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [(Node, Node)]> {
        match &node.value {
            Value::Map(entries) => Some(entries),
            Value::Null => Some(&[]),
            _ => {
                self.type_err(node, what, "a mapping", None);
                None
            }
        }
    }

    pub(super) fn string<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n str> {
        match &node.value {
            Value::Str(s) => Some(s),
            _ => {
                self.type_err(node, what, "a string", None);
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.type_err(node, what, "`true` or `false`", None);
                None
            }
        }
    }

    pub(super) fn string_list(&mut self, node: &Node, what: &str) -> Vec<(String, Pos)> {
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
    pub(super) fn secrets_entry(
        &mut self,
        base: &str,
        node: &Node,
        secrets: &mut crate::secrets::Secrets,
    ) {
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

    pub(super) fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
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

    pub(super) fn variables(&mut self, node: &Node, within: &str) -> Vec<(String, Var)> {
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

    pub(super) fn environment(
        &mut self,
        name: &str,
        key: &Node,
        node: &Node,
    ) -> Option<EnvironmentDef> {
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
            idle_ttl: None,
            sleep_after: None,
            max_environments: None,
            access: None,
            windows: Vec::new(),
        };
        // Fields that only a family may set, and where they are, checked once `generate:`
        // (which may come after them) is known.
        let mut family_only = Vec::new();
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
                            self.err(pos, format!("unknown apply requirement `{r}`"), Some("the requirements are `approved` (a reviewer approved the head commit) and `mergeable` (the forge says it can be merged now, its checks green)"));
                        }
                    }
                    env.requirements = Some(list);
                }
                "description" => {
                    self.string(v, "`description`");
                }
                "ttl" => env.ttl = self.duration(v, "`ttl`"),
                "idle_ttl" => {
                    family_only.push(("idle_ttl", k.pos));
                    env.idle_ttl = self.duration(v, "`idle_ttl`")
                }
                "sleep_after" => env.sleep_after = self.duration(v, "`sleep_after`"),
                "max_environments" => {
                    family_only.push(("max_environments", k.pos));
                    env.max_environments = match v.value {
                        Value::Int(n) if (1..=i64::from(u32::MAX)).contains(&n) => Some(n as u32),
                        Value::Int(n) => {
                            self.err(
                                v.pos,
                                format!("`max_environments: {n}` is out of range"),
                                Some("write a whole number from 1 (one environment of the family runs at a time; more wait in a queue)"),
                            );
                            None
                        }
                        _ => {
                            self.type_err(
                                v,
                                "`max_environments`",
                                "a whole number of at least 1",
                                Some("`max_environments: 10` lets ten environments of the family run at once; more wait in a queue"),
                            );
                            None
                        }
                    }
                }
                "access" => {
                    env.access = match self.string(v, "`access`") {
                        Some("public") => Some(Access::Public),
                        Some("private") => Some(Access::Private),
                        Some(other) => {
                            self.err(
                                v.pos,
                                format!("`access: {other}` is not a kind of access"),
                                Some("`access` is `private` (a Slipway login or a signed link) or `public`"),
                            );
                            None
                        }
                        None => None,
                    }
                }
                "windows" => env.windows = self.windows(v, name),
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
        if env.generate.is_none() {
            for (field, pos) in family_only {
                self.err(
                    pos,
                    format!("`{field}` is for a family of environments; `{name}` is static"),
                    Some("a static environment runs until removed from the stack; set it on an entry with `generate:` (ad-hoc environments take their family's with `--like`)"),
                );
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

    /// An entry's `windows:`: a list of `{ kind, schedule, duration, time_zone }`, each
    /// checked whole (every problem of every window reported); a window with a problem is
    /// left out.
    fn windows(&mut self, node: &Node, env: &str) -> Vec<Window> {
        const HINT: &str = "e.g. `windows: [{ kind: deny, schedule: \"0 17 * * 5\", duration: 64h, time_zone: Europe/Paris }]`";
        let items = match &node.value {
            Value::Seq(items) => items,
            Value::Null => return Vec::new(),
            _ => {
                self.type_err(
                    node,
                    &format!("`windows` of environment `{env}`"),
                    "a list of windows",
                    Some(HINT),
                );
                return Vec::new();
            }
        };
        if items.len() > crate::windows::MAX_WINDOWS {
            self.err(
                node.pos,
                format!(
                    "environment `{env}` lists {} windows; at most {} are allowed",
                    items.len(),
                    crate::windows::MAX_WINDOWS
                ),
                Some("merge windows: a schedule takes lists and ranges, e.g. `0 17 * * 5,6`"),
            );
            return Vec::new();
        }
        let mut out = Vec::new();
        for item in items {
            let Value::Map(entries) = &item.value else {
                self.type_err(item, "each window", "a mapping", Some(HINT));
                continue;
            };
            let mut kind = None;
            let mut schedule = None;
            let mut duration = None;
            let mut time_zone = ("UTC".to_string(), item.pos);
            let mut ok = true;
            for (k, v) in entries {
                let Some(field) = self.key(k) else {
                    ok = false;
                    continue;
                };
                match field {
                    "kind" => match self.string(v, "`kind` of a window") {
                        Some(word) => match WindowKind::parse(word) {
                            Some(found) => kind = Some(found),
                            None => {
                                ok = false;
                                self.err(
                                    v.pos,
                                    format!("`kind: {word}` is not a kind of window"),
                                    Some("a window is `allow` (changes only while one is open) or `deny` (no change while it is open)"),
                                );
                            }
                        },
                        None => ok = false,
                    },
                    "schedule" => match self.string(v, "`schedule` of a window") {
                        Some(text) => match Window::check_schedule(text) {
                            Ok(()) => schedule = Some(text.to_string()),
                            Err(WindowError::Schedule(why)) => {
                                ok = false;
                                self.err(
                                    v.pos,
                                    format!("`schedule: {text}` is not a cron schedule: {why}"),
                                    Some("write 5 fields, minute hour day-of-month month day-of-week, e.g. `0 17 * * 5` (Fridays at 17:00)"),
                                );
                            }
                            Err(_) => ok = false,
                        },
                        None => ok = false,
                    },
                    "duration" => match self.duration(v, "`duration` of a window") {
                        Some(d) if d.is_zero() => {
                            ok = false;
                            self.err(
                                v.pos,
                                "`duration` of a window is zero: it would never be open".into(),
                                Some("write how long it stays open after each match, e.g. `64h`"),
                            );
                        }
                        Some(d) => {
                            let text = match &v.value {
                                Value::Str(s) => s.trim().to_string(),
                                _ => String::new(),
                            };
                            duration = Some((d, text));
                        }
                        None => ok = false,
                    },
                    "time_zone" => match self.string(v, "`time_zone` of a window") {
                        Some(tz) if Window::known_time_zone(tz) => {
                            time_zone = (tz.to_string(), v.pos)
                        }
                        Some(tz) => {
                            ok = false;
                            self.err(
                                v.pos,
                                format!("`time_zone: {tz}` is not a time zone"),
                                Some("write an IANA time zone name such as `Europe/Paris` or `America/New_York` (default `UTC`)"),
                            );
                        }
                        None => ok = false,
                    },
                    other => {
                        ok = false;
                        self.unknown_field(k.pos, other, "a window", WINDOW_FIELDS);
                    }
                }
            }
            for (field, present) in [
                (
                    "kind",
                    kind.is_some()
                        || entries
                            .iter()
                            .any(|(k, _)| k.value == Value::Str("kind".into())),
                ),
                (
                    "schedule",
                    schedule.is_some()
                        || entries
                            .iter()
                            .any(|(k, _)| k.value == Value::Str("schedule".into())),
                ),
                (
                    "duration",
                    duration.is_some()
                        || entries
                            .iter()
                            .any(|(k, _)| k.value == Value::Str("duration".into())),
                ),
            ] {
                if !present {
                    ok = false;
                    self.err(
                        item.pos,
                        format!("a window of environment `{env}` is missing `{field}`"),
                        Some(HINT),
                    );
                }
            }
            if let (true, Some(kind), Some(schedule), Some((d, text))) =
                (ok, kind, schedule, duration)
            {
                match Window::new(kind, &schedule, d, &text, &time_zone.0) {
                    Ok(w) => out.push(w),
                    Err(_) => {
                        self.err(time_zone.1, "this window cannot be made".into(), Some(HINT))
                    }
                }
            }
        }
        out
    }

    pub(super) fn resource(&mut self, name: &str, key: &Node, node: &Node) -> Option<ResourceDef> {
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

    pub(super) fn check_kind(&mut self, node: &Node, kind: FieldKind, what: &str) {
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
            FieldKind::StrList | FieldKind::NameList | FieldKind::Manifests => match &node.value {
                Value::Seq(items) => {
                    if items.is_empty() && kind != FieldKind::NameList {
                        let hint = match kind {
                            FieldKind::Manifests => {
                                "name at least one file or glob, e.g. `[k8s/*.yaml]`"
                            }
                            _ => "give at least the program to run",
                        };
                        self.err(node.pos, format!("{what} is empty"), Some(hint));
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
