//! Commit + environment → desired state: canonical JSON with a content hash.
//!
//! Rendering substitutes variables and environment attributes and leaves references to other
//! resources' outputs, to ports and to secrets as templates, because those are only known at
//! apply time. The same stack and target give the same bytes, always: maps are sorted, and
//! nothing here reads a clock or the machine.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::EnvName;
use crate::stack::{Scalar, Stack};
use crate::template::{self, Reference};
use crate::types::{self, FieldKind};
use crate::yaml::{Node, Value};

pub use crate::vocab::EnvKind;

/// Which environment to render: its name, and the `environments:` entry that gives its
/// variables (the same for static environments; the family for generated ones).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The environment's name.
    pub name: &'a EnvName,
    /// The `environments:` entry it follows.
    pub definition: &'a str,
    /// How it came to be.
    pub kind: EnvKind,
}

/// The environment part of a desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredEnvironment {
    /// Its name.
    pub name: EnvName,
    /// Its `environments:` entry.
    pub definition: String,
    /// How it came to be.
    pub kind: EnvKind,
    /// Protected environments need confirmation to destroy resources.
    pub protected: bool,
    /// Whether drift is repaired.
    pub self_heal: bool,
}

/// One resource of a desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredResource {
    /// Its `type:`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Its fields, variables substituted; may hold `${resources..}`, `${ports..}` templates.
    pub config: Json,
    /// What it waits for: explicit `depends_on` plus references.
    pub depends_on: BTreeSet<String>,
    /// The resources whose outputs its config references (a subset of `depends_on`).
    pub references: BTreeSet<String>,
    /// For resources that run code from the repository (processes, jobs, exec programs): a
    /// hash of the files in their working directory, so that new code means a new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// What one environment should run at one commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    /// The stack's name.
    pub stack: String,
    /// The environment.
    pub environment: DesiredEnvironment,
    /// The commit rendered.
    pub commit: String,
    /// Variables after the environment's overrides.
    pub variables: BTreeMap<String, Json>,
    /// Resources by name.
    pub resources: BTreeMap<String, DesiredResource>,
    /// The age ciphertext of every secret a resource references, as this environment sees
    /// it (its override, its family's, or the default): the engine decrypts them at apply.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// sha256 of the canonical JSON of `stack`, `environment`, `variables` and `resources`
    /// (everything but the commit): two commits that render the same state have the same hash.
    pub hash: String,
}

impl DesiredState {
    /// The canonical JSON bytes: keys sorted at every level, no insignificant whitespace.
    pub fn canonical_json(&self) -> String {
        canonical(self)
    }
}

/// Why a stack could not be rendered for a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// The target names no entry of `environments:`.
    UnknownEnvironment {
        /// The name asked for.
        name: String,
        /// The entries there are.
        known: Vec<String>,
    },
    /// A referenced secret has no value for this environment (only other environments'
    /// overrides).
    SecretNotSet {
        /// The secret.
        name: String,
        /// The environment rendered.
        environment: String,
    },
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::UnknownEnvironment { name, known } => {
                write!(
                    f,
                    "no environment `{name}` in slipway.yaml; it defines: {}",
                    known.join(", ")
                )
            }
            RenderError::SecretNotSet { name, environment } => write!(
                f,
                "secret `{name}` has no value for environment `{environment}`; set one with \
                 `slipway secret set {name}` (for every environment) or `--env {environment}`"
            ),
        }
    }
}

impl std::error::Error for RenderError {}

#[derive(Serialize)]
struct Hashed<'a> {
    stack: &'a str,
    environment: &'a DesiredEnvironment,
    variables: &'a BTreeMap<String, Json>,
    resources: &'a BTreeMap<String, DesiredResource>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    secrets: &'a BTreeMap<String, String>,
}

/// Renders `stack` for `target` at `commit`. The stack must have loaded without errors.
/// `sources` gives, by resource name, the hash of the repository files each resource runs
/// (see [`DesiredResource::source`]); resources not in it get none.
pub fn render(
    stack: &Stack,
    target: Target<'_>,
    commit: &str,
    sources: &BTreeMap<String, String>,
) -> Result<DesiredState, RenderError> {
    let Some(def) = stack.environments.get(target.definition) else {
        return Err(RenderError::UnknownEnvironment {
            name: target.definition.to_string(),
            known: stack.environments.keys().cloned().collect(),
        });
    };
    let mut vars: BTreeMap<String, Scalar> = stack
        .variables
        .iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    for (k, v) in &def.variables {
        vars.insert(k.clone(), v.value.clone());
    }
    let environment = DesiredEnvironment {
        name: target.name.clone(),
        definition: target.definition.to_string(),
        kind: target.kind,
        protected: def.protected,
        self_heal: def.self_heal,
    };
    let resolve = |r: &Reference| -> Option<String> {
        match r {
            Reference::Var(v) => vars.get(v).map(Scalar::to_text),
            Reference::Env(a) => match a.as_str() {
                "name" => Some(target.name.to_string()),
                "stack" => Some(stack.name.clone()),
                "kind" => Some(target.kind.as_str().to_string()),
                _ => None,
            },
            _ => None,
        }
    };
    let mut resources = BTreeMap::new();
    let mut secret_names = BTreeSet::new();
    for (name, res) in &stack.resources {
        let Some(rtype) = types::lookup(&res.type_name) else {
            continue;
        };
        let mut config = serde_json::Map::new();
        let mut references = BTreeSet::new();
        for (field, node) in &res.fields {
            let Some(spec) = rtype.field(field) else {
                continue;
            };
            let value = to_json(node, spec.kind, &mut |s| {
                // Nothing to substitute nor to escape: the text as it is.
                if !s.contains('$') {
                    return s.to_owned();
                }
                let segments = template::parse(s)
                    .unwrap_or_else(|_| vec![template::Segment::Text(s.to_string())]);
                for seg in &segments {
                    match seg {
                        template::Segment::Ref(Reference::Resource { name, .. }, _) => {
                            references.insert(name.clone());
                        }
                        template::Segment::Ref(Reference::Secret(name), _) => {
                            secret_names.insert(name.clone());
                        }
                        _ => {}
                    }
                }
                template::substitute(&segments, resolve)
            });
            config.insert(field.clone(), value);
        }
        resources.insert(
            name.clone(),
            DesiredResource {
                type_name: res.type_name.clone(),
                config: Json::Object(config),
                depends_on: res.dependencies.clone(),
                references,
                source: sources.get(name).cloned(),
            },
        );
    }
    let variables: BTreeMap<String, Json> = vars
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                serde_json::to_value(v).expect("a scalar is always serializable"),
            )
        })
        .collect();
    let mut secrets = BTreeMap::new();
    for name in secret_names {
        let Some(ciphertext) = stack
            .secrets
            .ciphertext_for(&name, target.name, target.definition)
        else {
            return Err(RenderError::SecretNotSet {
                name,
                environment: target.name.to_string(),
            });
        };
        secrets.insert(name, ciphertext.to_string());
    }
    let hashed = Hashed {
        stack: &stack.name,
        environment: &environment,
        variables: &variables,
        resources: &resources,
        secrets: &secrets,
    };
    let hash = hash_of(&hashed);
    Ok(DesiredState {
        stack: stack.name.clone(),
        environment,
        commit: commit.to_string(),
        variables,
        resources,
        secrets,
        hash,
    })
}

/// sha256 (lowercase hex) of `hashed`'s canonical JSON, written straight into the hash: the
/// same bytes as [`canonical`] gives (a test holds them equal), without building and
/// dropping the `serde_json::Value` tree that takes, which was half of a render's time. The
/// structs' fields are written in key order here; maps and sets are sorted already.
fn hash_of(hashed: &Hashed<'_>) -> String {
    let mut out = HashWriter(Sha256::new());
    write_hashed(&mut out, hashed).expect("a desired state is always serializable");
    hex(&out.0.finalize())
}

struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The canonical JSON of `h`, key after key in their order (see [`hash_of`]).
fn write_hashed(out: &mut impl std::io::Write, h: &Hashed<'_>) -> serde_json::Result<()> {
    fn raw(out: &mut impl std::io::Write, bytes: &[u8]) -> serde_json::Result<()> {
        out.write_all(bytes).map_err(serde_json::Error::io)
    }
    /// `before` (punctuation and the key, quoted), then `value` as JSON.
    fn field(
        out: &mut impl std::io::Write,
        before: &[u8],
        value: &(impl Serialize + ?Sized),
    ) -> serde_json::Result<()> {
        raw(out, before)?;
        serde_json::to_writer(out, value)
    }
    let env = h.environment;
    field(out, b"{\"environment\":{\"definition\":", &env.definition)?;
    field(out, b",\"kind\":", &env.kind)?;
    field(out, b",\"name\":", &env.name)?;
    field(out, b",\"protected\":", &env.protected)?;
    field(out, b",\"self_heal\":", &env.self_heal)?;
    raw(out, b"},\"resources\":{")?;
    for (i, (name, r)) in h.resources.iter().enumerate() {
        field(out, if i > 0 { b"," } else { b"" }, name)?;
        field(out, b":{\"config\":", &r.config)?;
        field(out, b",\"depends_on\":", &r.depends_on)?;
        field(out, b",\"references\":", &r.references)?;
        if let Some(source) = &r.source {
            field(out, b",\"source\":", source)?;
        }
        field(out, b",\"type\":", &r.type_name)?;
        raw(out, b"}")?;
    }
    raw(out, b"}")?;
    if !h.secrets.is_empty() {
        field(out, b",\"secrets\":", h.secrets)?;
    }
    field(out, b",\"stack\":", h.stack)?;
    field(out, b",\"variables\":", h.variables)?;
    raw(out, b"}")
}

/// Canonical JSON of any value: going through `serde_json::Value`, whose maps are sorted,
/// puts struct fields in key order too.
fn canonical<T: Serialize>(value: &T) -> String {
    let value = serde_json::to_value(value).expect("a desired state is always serializable");
    serde_json::to_string(&value).expect("a JSON value is always serializable")
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Converts a field's node to JSON by its kind; `sub` rewrites strings that may hold templates.
fn to_json(node: &Node, kind: FieldKind, sub: &mut dyn FnMut(&str) -> String) -> Json {
    // Expanded at load into objects, rendered like any other YAML.
    let kind = match kind {
        FieldKind::Manifests => FieldKind::Any,
        kind => kind,
    };
    match (kind, &node.value) {
        (FieldKind::Str | FieldKind::RelPath, Value::Str(s)) => Json::String(sub(s)),
        (FieldKind::StrList, Value::Seq(items)) => Json::Array(
            items
                .iter()
                .filter_map(|i| match &i.value {
                    Value::Str(s) => Some(Json::String(sub(s))),
                    other => scalar_string(other).map(|s| Json::String(template::escape(&s))),
                })
                .collect(),
        ),
        (FieldKind::NameList | FieldKind::PortNames, Value::Seq(items)) => Json::Array(
            items
                .iter()
                .filter_map(|i| scalar_string(&i.value))
                .map(|s| Json::String(template::escape(&s)))
                .collect(),
        ),
        (FieldKind::StrMap, Value::Map(entries)) => Json::Object(
            entries
                .iter()
                .filter_map(|(k, v)| {
                    let key = scalar_string(&k.value)?;
                    let value = match &v.value {
                        Value::Str(s) => sub(s),
                        other => template::escape(&scalar_string(other)?),
                    };
                    Some((key, Json::String(value)))
                })
                .collect(),
        ),
        (FieldKind::Health, Value::Map(entries)) => Json::Object(
            entries
                .iter()
                .filter_map(|(k, v)| {
                    let key = scalar_string(&k.value)?;
                    let kind = match key.as_str() {
                        "command" => FieldKind::StrList,
                        "http" => FieldKind::Str,
                        _ => FieldKind::Any,
                    };
                    Some((key, to_json(v, kind, sub)))
                })
                .collect(),
        ),
        (FieldKind::Any, Value::Str(s)) => Json::String(sub(s)),
        (FieldKind::Any, Value::Seq(items)) => {
            Json::Array(items.iter().map(|i| to_json(i, kind, sub)).collect())
        }
        (FieldKind::Any, Value::Map(entries)) => Json::Object(
            entries
                .iter()
                .filter_map(|(k, v)| Some((scalar_string(&k.value)?, to_json(v, kind, sub))))
                .collect(),
        ),
        (_, Value::Null) => Json::Null,
        (_, Value::Bool(b)) => Json::Bool(*b),
        (_, Value::Int(i)) => Json::from(*i),
        (_, Value::Float(f)) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .unwrap_or(Json::Null),
        (_, Value::Str(s)) => Json::String(template::escape(s)),
        (_, Value::Seq(items)) => Json::Array(
            items
                .iter()
                .map(|i| to_json(i, FieldKind::Any, sub))
                .collect(),
        ),
        (_, Value::Map(_)) => to_json(node, FieldKind::Any, sub),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::from),
            any::<i64>().prop_map(Json::from),
            any::<f64>().prop_map(Json::from),
            any::<String>().prop_map(Json::from),
            "[$a-z{}.\"\\\\\u{7f}\u{2028}é]{0,12}".prop_map(Json::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Json::from),
                prop::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    fn resource() -> impl Strategy<Value = DesiredResource> {
        (
            any::<String>(),
            json_value(),
            prop::collection::btree_set(any::<String>(), 0..3),
            prop::collection::btree_set(any::<String>(), 0..3),
            proptest::option::of("[0-9a-f]{64}"),
        )
            .prop_map(|(type_name, config, depends_on, references, source)| {
                DesiredResource {
                    type_name,
                    config,
                    depends_on,
                    references,
                    source,
                }
            })
    }

    proptest! {
        /// The hash written key by key is the hash of the canonical JSON through
        /// `serde_json::Value`, which every recorded desired state was hashed with: a
        /// difference would make every environment look changed after an upgrade.
        #[test]
        fn the_hash_written_directly_is_that_of_the_canonical_json(
            stack in any::<String>(),
            name in "[a-z][a-z0-9-]{0,20}[a-z0-9]",
            definition in any::<String>(),
            kind in prop::sample::select(EnvKind::ALL.to_vec()),
            protected in any::<bool>(),
            self_heal in any::<bool>(),
            variables in prop::collection::btree_map(any::<String>(), json_value(), 0..4),
            resources in prop::collection::btree_map(any::<String>(), resource(), 0..4),
            secrets in prop::collection::btree_map(any::<String>(), any::<String>(), 0..3),
        ) {
            let environment = DesiredEnvironment {
                name: EnvName::parse(&name).expect("a DNS label"),
                definition,
                kind,
                protected,
                self_heal,
            };
            let hashed = Hashed {
                stack: &stack,
                environment: &environment,
                variables: &variables,
                resources: &resources,
                secrets: &secrets,
            };
            let through_value = hex(&Sha256::digest(canonical(&hashed).as_bytes()));
            prop_assert_eq!(hash_of(&hashed), through_value);
        }
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }
}
