//! Resources: the inventory of what the engine created in each environment.

use crate::db::{DbError, DecodeError, Exec, Row, params};
use serde::{Deserialize, Serialize};
use slipway_core::EnvName;
use std::borrow::Cow;

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

/// The resources of one or more environments as a status shows them: what showing and
/// observing them needs, and no more, read for every environment at once by a listing. Their
/// texts are kept in one buffer, not one allocation per row and column, and their JSON columns
/// as the text stored (unsealed), parsed by whoever needs them ([`ResourceSummary::live`],
/// …): a listing of ten thousand environments parses each once, and neither `depends_on`,
/// `resolved_hash` nor, for most types, `config`.
#[derive(Default)]
pub struct ResourceSummaries {
    text: String,
    rows: Vec<SummaryRow>,
    /// Each environment's name and its rows, sorted by name.
    environments: Vec<(Span, std::ops::Range<usize>)>,
}

/// Where a text is in [`ResourceSummaries::text`].
#[derive(Clone, Copy)]
struct Span(usize, usize);

struct SummaryRow {
    name: Span,
    type_name: Span,
    status: ResourceStatus,
    error: Option<Span>,
    config: Span,
    outputs: Span,
    secret_outputs: Span,
    live: Span,
    resolved_hash: Option<Span>,
    depends_on: Span,
}

/// One resource of [`ResourceSummaries`].
///
/// `Debug` prints neither its outputs nor its live record (either may hold a secret).
#[derive(Clone, Copy)]
pub struct ResourceSummary<'a> {
    /// The environment it belongs to.
    pub environment: &'a str,
    /// Its name in `slipway.yaml`.
    pub name: &'a str,
    /// Its type, e.g. `process`.
    pub type_name: &'a str,
    /// An operation in flight, or its outcome.
    pub status: ResourceStatus,
    /// The last error, when `status` is `failed`.
    pub error: Option<&'a str>,
    /// Hash of its config with every reference resolved, when it was last applied
    /// ([`ResourceRecord::resolved_hash`]).
    pub resolved_hash: Option<&'a str>,
    config: &'a str,
    outputs: &'a str,
    secret_outputs: &'a str,
    live: &'a str,
    depends_on: &'a str,
}

impl std::fmt::Debug for ResourceSummary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceSummary")
            .field("environment", &self.environment)
            .field("name", &self.name)
            .field("type_name", &self.type_name)
            .field("status", &self.status)
            .field("error", &self.error)
            .field("secret_outputs", &self.secret_outputs)
            .finish_non_exhaustive()
    }
}

impl<'a> ResourceSummary<'a> {
    /// The desired configuration, symbolic ([`ResourceRecord::config`]).
    pub fn config(&self) -> Result<serde_json::Value, StateError> {
        self.parse(self.config, "config")
    }

    /// Whether the stored configuration is `config`, as the store writes it: a reader that
    /// holds the configuration it would compare with spares parsing the stored one.
    pub fn config_is(&self, config: &serde_json::Value) -> bool {
        crate::store::json_text_is(config, self.config)
    }

    /// What it depended on when last applied ([`ResourceRecord::depends_on`]).
    pub fn depends_on(&self) -> Result<Vec<String>, StateError> {
        self.parse(self.depends_on, "depends_on")
    }

    /// Its outputs, secret ones included ([`ResourceRecord::outputs`]).
    pub fn outputs(&self) -> Result<serde_json::Value, StateError> {
        self.parse(self.outputs, "outputs")
    }

    /// Checks that its outputs are JSON, as [`ResourceSummary::outputs`] would, without
    /// building them: a reader that needs none of them still reports a damaged column.
    pub fn check_outputs(&self) -> Result<(), StateError> {
        self.parse::<serde::de::IgnoredAny>(self.outputs, "outputs")
            .map(drop)
    }

    /// The names of the outputs that are secret ([`ResourceRecord::secret_outputs`]).
    pub fn secret_outputs(&self) -> Result<Vec<String>, StateError> {
        self.parse(self.secret_outputs, "secret_outputs")
    }

    /// What the provider recorded of the live object ([`ResourceRecord::live`]), as the
    /// JSON text stored (unsealed): for a reader that borrows from it rather than build a
    /// `Value`.
    pub fn live_text(&self) -> &'a str {
        self.live
    }

    /// What the provider recorded of the live object ([`ResourceRecord::live`]).
    pub fn live(&self) -> Result<serde_json::Value, StateError> {
        self.parse(self.live, "live")
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        text: &str,
        column: &'static str,
    ) -> Result<T, StateError> {
        from_json(
            text,
            || format!("resource {}/{}", self.environment, self.name),
            column,
        )
    }
}

impl ResourceSummaries {
    /// The resources of `environment`, ordered by name; none for one not read.
    pub fn of(&self, environment: &str) -> impl ExactSizeIterator<Item = ResourceSummary<'_>> {
        let (environment, rows) = self
            .environments
            .binary_search_by(|(name, _)| self.at(*name).cmp(environment))
            .map_or(("", 0..0), |at| {
                let (name, rows) = &self.environments[at];
                (self.at(*name), rows.clone())
            });
        self.rows[rows].iter().map(move |row| ResourceSummary {
            environment,
            name: self.at(row.name),
            type_name: self.at(row.type_name),
            status: row.status,
            error: row.error.map(|span| self.at(span)),
            resolved_hash: row.resolved_hash.map(|span| self.at(span)),
            config: self.at(row.config),
            outputs: self.at(row.outputs),
            secret_outputs: self.at(row.secret_outputs),
            live: self.at(row.live),
            depends_on: self.at(row.depends_on),
        })
    }

    /// The environments read, sorted by name.
    pub fn environments(&self) -> impl Iterator<Item = &str> {
        self.environments.iter().map(|(name, _)| self.at(*name))
    }

    fn at(&self, span: Span) -> &str {
        &self.text[span.0..span.1]
    }

    /// Reads the rows of `sql` (selecting [`SUMMARY_COLUMNS`], ordered by environment and
    /// name) through `store`'s connection, their sealed columns opened; `operation` names the
    /// read in errors.
    fn read(
        store: &Store,
        sql: &str,
        params: &[crate::db::Value],
        operation: impl FnOnce() -> String,
    ) -> Result<ResourceSummaries, StateError> {
        let sealer = store.sealer();
        let mut out = ResourceSummaries::default();
        // Each environment's rows as read: the database orders them by its own collation,
        // which need not be Rust's, but puts an environment's together.
        let mut groups: Vec<(Span, std::ops::Range<usize>)> = Vec::new();
        let text = &mut out.text;
        let rows = &mut out.rows;
        store
            .conn()
            .each_row(sql, params, |row| {
                let required =
                    |text: &mut String, index: usize| column(text, &row, index)?.ok_or(null(index));
                // Each environment's name is kept once, for its first row.
                let environment = row.text(0)?.ok_or(null(0))?;
                let same = groups
                    .last_mut()
                    .filter(|(last, _)| text[last.0..last.1] == *environment);
                match same {
                    Some((_, rows_of)) => rows_of.end += 1,
                    None => {
                        let name = push(text, &environment);
                        groups.push((name, rows.len()..rows.len() + 1));
                    }
                }
                let name = required(text, 1)?;
                let type_name = required(text, 2)?;
                let status =
                    row.text(3)?
                        .ok_or(null(3))?
                        .parse()
                        .map_err(|word| DbError::Decode {
                            index: 3,
                            reason: DecodeError::Word(word),
                        })?;
                let config = required(text, 4)?;
                let outputs = required(text, 5)?;
                let secret_outputs = required(text, 6)?;
                let live = required(text, 7)?;
                let error = column(text, &row, 8)?;
                let resolved_hash = column(text, &row, 9)?;
                let depends_on = required(text, 10)?;
                rows.push(SummaryRow {
                    name,
                    type_name,
                    status,
                    error,
                    config,
                    outputs,
                    secret_outputs,
                    live,
                    resolved_hash,
                    depends_on,
                });
                Ok(())
            })
            .map(|()| {
                groups.sort_by(|a, b| out.at(a.0).cmp(out.at(b.0)));
                out.environments = groups;
            })
            .map_err(crate::store::sql(operation()))?;
        // Sealed columns opened after the read, not under the connection's lock.
        for at in 0..out.rows.len() {
            for column in ["outputs", "live"] {
                let row = &out.rows[at];
                let span = if column == "outputs" {
                    row.outputs
                } else {
                    row.live
                };
                let value = out.at(span);
                if !crate::seal::is_sealed(value) {
                    continue;
                }
                let record = || {
                    let environment = out
                        .environments
                        .iter()
                        .find(|(_, rows)| rows.contains(&at))
                        .map_or("", |(name, _)| out.at(*name));
                    format!("resource {environment}/{}", out.at(row.name))
                };
                let opened = match unseal(sealer, value, &record, column)? {
                    Cow::Owned(opened) => opened,
                    Cow::Borrowed(plain) => plain.to_owned(),
                };
                let span = push(&mut out.text, &opened);
                let row = &mut out.rows[at];
                if column == "outputs" {
                    row.outputs = span;
                } else {
                    row.live = span;
                }
            }
        }
        Ok(out)
    }
}

/// Appends column `index` of `row` to `text`: where it is, or `None` for `NULL`.
fn column(
    text: &mut String,
    row: &crate::db::RowRef<'_>,
    index: usize,
) -> Result<Option<Span>, DbError> {
    Ok(row.text(index)?.map(|value| push(text, &value)))
}

/// The error of column `index` holding `NULL` where a text is expected.
fn null(index: usize) -> DbError {
    DbError::Decode {
        index,
        reason: DecodeError::Type("expected a text, found NULL".into()),
    }
}

/// Appends `value` to `text`; where it is.
fn push(text: &mut String, value: &str) -> Span {
    let start = text.len();
    text.push_str(value);
    Span(start, text.len())
}

/// The columns [`ResourceSummaries`] are read from.
const SUMMARY_COLUMNS: &str = "environment, name, type_name, status, config, outputs, \
                               secret_outputs, live, error, resolved_hash, depends_on";

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
    if !crate::seal::is_sealed(text) {
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
        let sensitive = crate::seal::is_sealed(&self.outputs);
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
            .map_err(crate::store::sql(operation()))?;
        raw.into_iter().map(|r| r.decode(self.sealer())).collect()
    }

    /// The resources of an environment as a status shows them
    /// ([`ResourceSummaries::of`] it), ordered by name.
    pub fn resource_summaries(
        &self,
        environment: &EnvName,
    ) -> Result<ResourceSummaries, StateError> {
        ResourceSummaries::read(
            self,
            &format!(
                "SELECT {SUMMARY_COLUMNS} FROM resources WHERE environment = ?1 ORDER BY name"
            ),
            params![environment],
            || format!("list the resources of {environment}"),
        )
    }

    /// The resources of the environments named `first` to `last` (both included, in the
    /// order `environments` lists them) as a status shows them, each environment's ordered by
    /// name: one query where a listing of many environments would otherwise make one per
    /// environment, and a bounded one, so a listing of every environment reads them a range
    /// at a time.
    pub fn resources_between(
        &self,
        first: &EnvName,
        last: &EnvName,
    ) -> Result<ResourceSummaries, StateError> {
        ResourceSummaries::read(
            self,
            &format!(
                "SELECT {SUMMARY_COLUMNS} FROM resources \
                 WHERE environment >= ?1 AND environment <= ?2 ORDER BY environment, name"
            ),
            params![first, last],
            || format!("list the resources of {first} to {last}"),
        )
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

    /// Forgets a deleted resource: its record and its ports, in one transaction (a delete's
    /// last write). Returns whether it was recorded.
    pub fn forget_resource(&self, environment: &EnvName, name: &str) -> Result<bool, StateError> {
        let deleted = self.write_env(Some(environment), &[], |tx| {
            tx.execute(
                "DELETE FROM ports WHERE environment = ?1 AND resource = ?2",
                params![environment, name],
            )
            .map_err(sql(format!("release the ports of {environment}/{name}")))?;
            tx.execute(
                "DELETE FROM resources WHERE environment = ?1 AND name = ?2",
                params![environment, name],
            )
            .map_err(sql(format!("delete resource {environment}/{name}")))
        })?;
        Ok(deleted > 0)
    }
}
