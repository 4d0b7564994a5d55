//! Resources: the inventory of what the engine created in each environment.

use crate::db::{DbError, Exec, Row, params};
use serde::{Deserialize, Serialize};
use slipway_core::EnvName;
use std::borrow::Cow;
use std::collections::BTreeMap;

use slipway_core::vocab::ResourceStatus;

use crate::StateError;
use crate::seal::Sealer;
use crate::store::{Store, env_name, from_json, sql, to_json, word};

/// One resource of an environment, as last recorded.
///
/// `Debug` prints the outputs named in `secret_outputs` as `<redacted>`, so that a record in a
/// log line or a failed assertion never shows a secret.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceRecord {
    /// The environment it belongs to (which must exist).
    pub environment: EnvName,
    /// Its name in `slipway.yaml`.
    pub name: String,
    /// Its type, e.g. `process`.
    pub type_name: String,
    /// An operation in flight, or its outcome.
    pub status: ResourceStatus,
    /// The desired configuration, symbolic (references not yet resolved).
    pub config: serde_json::Value,
    /// The hash of the configuration with references resolved, as last applied.
    pub resolved_hash: Option<String>,
    /// Its outputs, readable by other resources.
    pub outputs: serde_json::Value,
    /// The names of the outputs that are secret.
    pub secret_outputs: Vec<String>,
    /// What the provider observed of the live object (pid, ids, ...).
    pub live: serde_json::Value,
    /// The resources it depends on.
    pub depends_on: Vec<String>,
    /// The last error, when `status` is `failed`.
    pub error: Option<String>,
    /// When it was last written, unix milliseconds.
    pub updated_at: i64,
    /// Whether `outputs` or `live` may hold a secret (a secret output, or a resolved
    /// configuration that a secret went into): such records are stored sealed.
    #[serde(default)]
    pub sensitive: bool,
}

impl std::fmt::Debug for ResourceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut outputs = self.outputs.clone();
        if let Some(map) = outputs.as_object_mut() {
            for name in &self.secret_outputs {
                if let Some(value) = map.get_mut(name) {
                    *value = serde_json::Value::String("<redacted>".to_owned());
                }
            }
        }
        f.debug_struct("ResourceRecord")
            .field("environment", &self.environment)
            .field("name", &self.name)
            .field("type_name", &self.type_name)
            .field("status", &self.status)
            .field("config", &self.config)
            .field("resolved_hash", &self.resolved_hash)
            .field("outputs", &outputs)
            .field("secret_outputs", &self.secret_outputs)
            .field("live", &self.live)
            .field("depends_on", &self.depends_on)
            .field("error", &self.error)
            .field("updated_at", &self.updated_at)
            .field("sensitive", &self.sensitive)
            .finish()
    }
}

const COLUMNS: &str = "environment, name, type_name, status, config, resolved_hash, outputs, \
                       secret_outputs, live, depends_on, error, updated_at";

/// A row with its JSON columns still encoded.
struct RawResource {
    environment: EnvName,
    name: String,
    type_name: String,
    status: ResourceStatus,
    config: String,
    resolved_hash: Option<String>,
    outputs: String,
    secret_outputs: String,
    live: String,
    depends_on: String,
    error: Option<String>,
    updated_at: i64,
}

fn from_row(row: &Row) -> Result<RawResource, DbError> {
    Ok(RawResource {
        environment: env_name(row, 0)?,
        name: row.get(1)?,
        type_name: row.get(2)?,
        status: word(row, 3)?,
        config: row.get(4)?,
        resolved_hash: row.get(5)?,
        outputs: row.get(6)?,
        secret_outputs: row.get(7)?,
        live: row.get(8)?,
        depends_on: row.get(9)?,
        error: row.get(10)?,
        updated_at: row.get(11)?,
    })
}

/// `text` unsealed when it is sealed, else as it is (not copied).
fn unseal<'a>(
    sealer: &Sealer,
    text: &'a str,
    record: &dyn Fn() -> String,
    column: &'static str,
) -> Result<Cow<'a, str>, StateError> {
    if !text.starts_with(crate::seal::PREFIX) {
        return Ok(Cow::Borrowed(text));
    }
    let bytes = sealer.open(text).map_err(|reason| StateError::Sealed {
        record: record(),
        column,
        reason,
    })?;
    String::from_utf8(bytes)
        .map(Cow::Owned)
        .map_err(|_| StateError::Sealed {
            record: record(),
            column,
            reason: "is not UTF-8".into(),
        })
}

impl RawResource {
    fn decode(self, sealer: &Sealer) -> Result<ResourceRecord, StateError> {
        let record = || format!("resource {}/{}", self.environment, self.name);
        let sensitive = self.outputs.starts_with(crate::seal::PREFIX);
        Ok(ResourceRecord {
            config: from_json(&self.config, record, "config")?,
            outputs: from_json(
                &unseal(sealer, &self.outputs, &record, "outputs")?,
                record,
                "outputs",
            )?,
            secret_outputs: from_json(&self.secret_outputs, record, "secret_outputs")?,
            live: from_json(
                &unseal(sealer, &self.live, &record, "live")?,
                record,
                "live",
            )?,
            sensitive,
            depends_on: from_json(&self.depends_on, record, "depends_on")?,
            environment: self.environment,
            name: self.name,
            type_name: self.type_name,
            status: self.status,
            resolved_hash: self.resolved_hash,
            error: self.error,
            updated_at: self.updated_at,
        })
    }
}

impl Store {
    /// The resources of an environment, ordered by name.
    pub fn resources(&self, environment: &EnvName) -> Result<Vec<ResourceRecord>, StateError> {
        let operation = || format!("list the resources of {environment}");
        let raw = self
            .conn()
            .query(
                &format!("SELECT {COLUMNS} FROM resources WHERE environment = ?1 ORDER BY name"),
                params![environment],
                from_row,
            )
            .map_err(sql(operation()))?;
        raw.into_iter().map(|r| r.decode(self.sealer())).collect()
    }

    /// The resources of the environments named `first` to `last` (both included, in the
    /// order `environments` lists them), by environment, each ordered by name: one query
    /// where a listing of many environments would otherwise make one per environment, and a
    /// bounded one, so a listing of every environment reads them a range at a time.
    pub fn resources_between(
        &self,
        first: &EnvName,
        last: &EnvName,
    ) -> Result<BTreeMap<EnvName, Vec<ResourceRecord>>, StateError> {
        let raw = self
            .conn()
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM resources WHERE environment >= ?1 AND environment <= ?2 \
                     ORDER BY environment, name"
                ),
                params![first, last],
                from_row,
            )
            .map_err(sql(format!("list the resources of {first} to {last}")))?;
        let mut out: BTreeMap<EnvName, Vec<ResourceRecord>> = BTreeMap::new();
        for r in raw {
            let record = r.decode(self.sealer())?;
            out.entry(record.environment.clone())
                .or_default()
                .push(record);
        }
        Ok(out)
    }

    /// The `type:` of each environment's resources (of `only`'s, when given), in one query
    /// and without reading (or unsealing) the records: what deciding where environments may
    /// run needs.
    pub fn resource_types(
        &self,
        only: Option<&EnvName>,
    ) -> Result<std::collections::BTreeMap<EnvName, std::collections::BTreeSet<String>>, StateError>
    {
        let pairs = self
            .conn()
            .query(
                "SELECT DISTINCT environment, type_name FROM resources \
                 WHERE environment = ?1 OR ?1 IS NULL",
                params![only],
                |row| Ok((env_name(row, 0)?, row.get::<String>(1)?)),
            )
            .map_err(sql("list the resource types of every environment"))?;
        let mut by_environment =
            std::collections::BTreeMap::<_, std::collections::BTreeSet<_>>::new();
        for (environment, type_name) in pairs {
            by_environment
                .entry(environment)
                .or_default()
                .insert(type_name);
        }
        Ok(by_environment)
    }

    /// One resource of an environment, if recorded.
    pub fn resource(
        &self,
        environment: &EnvName,
        name: &str,
    ) -> Result<Option<ResourceRecord>, StateError> {
        let raw = self
            .conn()
            .query_opt(
                &format!("SELECT {COLUMNS} FROM resources WHERE environment = ?1 AND name = ?2"),
                params![environment, name],
                from_row,
            )
            .map_err(sql(format!("read resource {environment}/{name}")))?;
        raw.map(|r| r.decode(self.sealer())).transpose()
    }

    /// Records a resource, replacing what was recorded under its name.
    ///
    /// # Errors
    /// [`StateError::Database`] (a foreign-key failure) when its environment is not recorded:
    /// record the environment first.
    pub fn put_resource(&self, record: &ResourceRecord) -> Result<(), StateError> {
        let seal = record.sensitive || !record.secret_outputs.is_empty();
        let column = |value: &serde_json::Value| {
            let text = to_json(value);
            if seal {
                self.sealer().seal(text.as_bytes())
            } else {
                text
            }
        };
        self.write_env(Some(&record.environment), &[], |tx| {
            tx.execute(
                &format!(
                    "INSERT INTO resources ({COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                     ON CONFLICT (environment, name) DO UPDATE SET \
                       type_name = excluded.type_name, status = excluded.status, \
                       config = excluded.config, resolved_hash = excluded.resolved_hash, \
                       outputs = excluded.outputs, secret_outputs = excluded.secret_outputs, \
                       live = excluded.live, depends_on = excluded.depends_on, \
                       error = excluded.error, updated_at = excluded.updated_at"
                ),
                params![
                    record.environment.as_str(),
                    record.name,
                    record.type_name,
                    record.status.as_str(),
                    to_json(&record.config),
                    record.resolved_hash,
                    column(&record.outputs),
                    to_json(&record.secret_outputs),
                    column(&record.live),
                    to_json(&record.depends_on),
                    record.error,
                    record.updated_at,
                ],
            )
            .map_err(sql(format!(
                "record resource {}/{}",
                record.environment, record.name
            )))
        })?;
        Ok(())
    }

    /// Forgets a resource (its ports stay allocated until [`Store::release_ports`]). Returns
    /// whether it was recorded.
    pub fn delete_resource(&self, environment: &EnvName, name: &str) -> Result<bool, StateError> {
        let deleted = self.write_env(Some(environment), &[], |tx| {
            tx.execute(
                "DELETE FROM resources WHERE environment = ?1 AND name = ?2",
                params![environment, name],
            )
            .map_err(sql(format!("delete resource {environment}/{name}")))
        })?;
        Ok(deleted > 0)
    }
}
