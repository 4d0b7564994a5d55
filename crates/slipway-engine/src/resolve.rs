//! Resolving a rendered config's remaining references (ports, other resources' outputs) just
//! before a provider acts.

use std::collections::BTreeMap;

use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use slipway_core::template::{self, Reference};

/// What references resolve against.
pub struct Scope<'a> {
    /// This resource's allocated ports.
    pub ports: &'a BTreeMap<String, u16>,
    /// Outputs of other resources, by resource name.
    pub outputs: &'a BTreeMap<String, Json>,
}

impl Scope<'_> {
    fn lookup(&self, r: &Reference) -> Option<String> {
        match r {
            Reference::Port(p) => self.ports.get(p).map(u16::to_string),
            Reference::Resource { name, output } => {
                let mut value = self.outputs.get(name)?;
                for part in output {
                    value = value.get(part)?;
                }
                Some(match value {
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                })
            }
            _ => None,
        }
    }
}

/// Resolves every template string in `config`. Errors with the first reference that has no
/// value (an output its resource did not produce).
pub fn resolve(config: &Json, scope: &Scope<'_>) -> Result<Json, Reference> {
    Ok(match config {
        Json::String(s) => {
            let segments =
                template::parse(s).unwrap_or_else(|_| vec![template::Segment::Text(s.clone())]);
            Json::String(template::resolve(&segments, |r| scope.lookup(r))?)
        }
        Json::Array(items) => Json::Array(
            items
                .iter()
                .map(|i| resolve(i, scope))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), resolve(v, scope)?)))
                .collect::<Result<_, Reference>>()?,
        ),
        other => other.clone(),
    })
}

/// The hash recorded as `resolved_hash`: the resolved config and the source hash.
pub fn resolved_hash(resolved: &Json, source: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(resolved.to_string().as_bytes());
    h.update([0]);
    h.update(source.unwrap_or("").as_bytes());
    slipway_core::render::hex(&h.finalize())
}
