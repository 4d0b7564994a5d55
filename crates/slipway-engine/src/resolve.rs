//! Resolving a rendered config's remaining references (ports, other resources' outputs,
//! secrets) just before a provider acts.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::secrets::SecretValue;

use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use slipway_core::template::{self, Reference};

/// What references resolve against.
pub struct Scope<'a> {
    /// This resource's allocated ports.
    pub ports: &'a BTreeMap<String, u16>,
    /// Outputs of other resources, by resource name.
    pub outputs: &'a BTreeMap<String, Json>,
    /// The names of each resource's secret outputs.
    pub secret_outputs: &'a BTreeMap<String, Vec<String>>,
    /// Decrypted secrets.
    pub secrets: &'a BTreeMap<String, SecretValue>,
}

/// A config with its references resolved.
pub struct Resolved {
    /// The config.
    pub config: Json,
    /// The secret values that went into it (decrypted secrets, secret outputs): when there
    /// are any, the config must be stored sealed and they are redacted from logs.
    pub secrets: Vec<String>,
}

impl Scope<'_> {
    fn lookup(&self, r: &Reference, used: &RefCell<Vec<String>>) -> Option<String> {
        match r {
            Reference::Port(p) => self.ports.get(p).map(u16::to_string),
            Reference::Secret(name) => {
                let value = self.secrets.get(name)?.expose().to_string();
                used.borrow_mut().push(value.clone());
                Some(value)
            }
            Reference::Resource { name, output } => {
                let mut value = self.outputs.get(name)?;
                for part in output {
                    value = value.get(part)?;
                }
                let text = match value {
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if self
                    .secret_outputs
                    .get(name)
                    .is_some_and(|s| output.first().is_some_and(|o| s.contains(o)))
                {
                    used.borrow_mut().push(text.clone());
                }
                Some(text)
            }
            _ => None,
        }
    }
}

/// Resolves every template string in `config`. Errors with the first reference that has no
/// value (an output its resource did not produce, a secret not decrypted).
pub fn resolve(config: &Json, scope: &Scope<'_>) -> Result<Resolved, Reference> {
    let used = RefCell::new(Vec::new());
    let config = resolve_in(config, scope, &used)?;
    let mut secrets = used.into_inner();
    secrets.sort();
    secrets.dedup();
    Ok(Resolved { config, secrets })
}

fn resolve_in(
    config: &Json,
    scope: &Scope<'_>,
    used: &RefCell<Vec<String>>,
) -> Result<Json, Reference> {
    Ok(match config {
        Json::String(s) => {
            let segments =
                template::parse(s).unwrap_or_else(|_| vec![template::Segment::Text(s.clone())]);
            Json::String(template::resolve(&segments, |r| scope.lookup(r, used))?)
        }
        Json::Array(items) => Json::Array(
            items
                .iter()
                .map(|i| resolve_in(i, scope, used))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), resolve_in(v, scope, used)?)))
                .collect::<Result<_, Reference>>()?,
        ),
        other => other.clone(),
    })
}

/// The hash recorded as `resolved_hash`: the resolved config and the source hash. When a
/// secret went into the config the hash is keyed with the home's key, so that the plain
/// column cannot be used to test guesses of the secret.
pub fn resolved_hash(
    resolved: &Resolved,
    source: Option<&str>,
    sealer: &slipway_state::Sealer,
) -> String {
    let mut data = resolved.config.to_string().into_bytes();
    data.push(0);
    data.extend_from_slice(source.unwrap_or("").as_bytes());
    if resolved.secrets.is_empty() {
        slipway_core::render::hex(&Sha256::digest(&data))
    } else {
        sealer.keyed_hash(&data)
    }
}
