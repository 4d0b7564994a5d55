//! The database under the store: one connection to SQLite (the embedded default) or to
//! PostgreSQL (several replicas sharing one state), behind one small interface the record
//! modules use: [`Conn::execute`], [`Conn::query`], [`Conn::query_opt`], [`Conn::query_one`]
//! and [`Conn::transaction`], with [`Value`] parameters and [`Row`]s of them.
//!
//! The SQL is written once, in the dialect both accept, with SQLite's numbered parameters
//! (`?1`); for PostgreSQL they become `$1` ([`to_postgres`]), and the schema's types are
//! mapped (`INTEGER` to `BIGINT`, `AUTOINCREMENT` keys to identity columns, no `STRICT`).
//! Every value is an integer, a text or NULL: booleans are stored as 0 and 1 on both.
//!
//! Once the store has opened a database, its connection guards the schema
//! ([`Conn::guard_schema`]): every write proves, in its own transaction, that the schema is
//! still one this binary understands, so that a newer Slipway migrating the database under a
//! running older one is never followed by a write of the older one (see `schema.rs`).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;

use bytes::BytesMut;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{GenericClient, NoTls, Statement};
use rusqlite::types::{ToSqlOutput, ValueRef};

/// Which database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite, the embedded default (`<home>/state.db`).
    Sqlite,
    /// PostgreSQL, shared by several replicas.
    Postgres,
}

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said no.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL said no, or could not be reached. (Its causes are in the message, not
    /// chained: the client's own chain repeats them.)
    #[error("{}", postgres_message(.0))]
    Postgres(postgres::Error),
    /// The write was not made: a newer Slipway migrated the schema past the version this one
    /// understands (the connection writes nothing more, see [`Conn::guard_schema`]).
    #[error(
        "the schema was migrated to version {found} by a newer slipway, past the {understood} \
         this one understands; it writes nothing more"
    )]
    SchemaMoved {
        /// The version the database has now.
        found: i64,
        /// The newest version this binary knows.
        understood: i64,
    },
    /// A column held something its reader does not take (a database edited by hand or
    /// damaged).
    #[error("column {index}: {reason}")]
    Decode {
        /// The column's position in the row.
        index: usize,
        /// What it held and what was expected.
        reason: DecodeError,
    },
}

/// What a column held that its reader refused.
#[derive(Debug)]
pub enum DecodeError {
    /// A word outside its vocabulary.
    Word(slipway_core::vocab::UnknownWord),
    /// Not an environment name.
    Name(slipway_core::env_name::InvalidEnvName),
    /// Another type than expected.
    Type(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Word(w) => write!(f, "{w}"),
            DecodeError::Name(n) => write!(f, "{n}"),
            DecodeError::Type(t) => f.write_str(t),
        }
    }
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> DbError {
        DbError::Postgres(e)
    }
}

/// PostgreSQL's own message (its `DETAIL` too) where the server sent one: the client's
/// `Display` says only "db error"; else the client's message and its causes.
fn postgres_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {} ({detail})", db.severity(), db.message()),
            None => format!("{}: {}", db.severity(), db.message()),
        },
        None => {
            let mut text = e.to_string();
            let mut cause = StdError::source(e);
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            text
        }
    }
}

impl DbError {
    /// Whether the same call may succeed later with nobody changing anything: SQLite's lock
    /// held by another process, PostgreSQL unreachable or restarting, a serialization
    /// failure or deadlock.
    pub fn retryable(&self) -> bool {
        match self {
            DbError::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            DbError::Postgres(e) => match e.code() {
                None => true,
                Some(code) => {
                    let code = code.code();
                    // 40: transaction rollback (serialization, deadlock); 08: connection;
                    // 57P: operator intervention (shutdown, restart); 53: resources.
                    code.starts_with("40")
                        || code.starts_with("08")
                        || code.starts_with("57P")
                        || code.starts_with("53")
                }
            },
            DbError::SchemaMoved { .. } | DbError::Decode { .. } => false,
        }
    }
}

/// One value of a parameter or a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `NULL`.
    Null,
    /// An integer (booleans are 0 and 1).
    Int(i64),
    /// A text.
    Text(String),
}

/// A Rust value given as a parameter.
pub trait ToValue {
    /// The value.
    fn to_value(&self) -> Value;
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(i64::from(*self))
            }
        }
    )*};
}
int_value!(i64, i32, u32, u16, bool);

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl ToValue for slipway_core::EnvName {
    fn to_value(&self) -> Value {
        Value::Text(self.as_str().to_owned())
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

/// `params![a, b]`: the parameters of a statement, each turned into a [`Value`] (taken by
/// reference, as rusqlite's macro does).
macro_rules! params {
    () => { &[] as &[$crate::db::Value] };
    ($($v:expr),+ $(,)?) => {
        &[$($crate::db::ToValue::to_value(&$v)),+] as &[$crate::db::Value]
    };
}
pub(crate) use params;

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
        }))
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                _ => Err(format!("an integer for a column of type {ty}").into()),
            },
            Value::Text(s) => escape_nul(s).as_ref().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// PostgreSQL's text cannot hold NUL, which SQLite's can (an error message may carry one):
/// NUL is written as U+FFFF `0`, and U+FFFF (a noncharacter nobody types) as itself twice.
const ESCAPE: char = '\u{FFFF}';

fn escape_nul(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\0', ESCAPE]) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\0' => out.extend([ESCAPE, '0']),
            ESCAPE => out.extend([ESCAPE, ESCAPE]),
            c => out.push(c),
        }
    }
    out.into()
}

fn unescape_nul(text: String) -> String {
    if !text.contains(ESCAPE) {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, c == ESCAPE) {
            (_, true) => match chars.next() {
                Some('0') => out.push('\0'),
                Some(other) => out.push(other),
                None => out.push(ESCAPE),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

/// A row read, its columns in the order of the query's select list.
#[derive(Debug)]
pub struct Row(Vec<Value>);

impl Row {
    /// Its values, in order (to write the row elsewhere).
    pub fn values(&self) -> &[Value] {
        &self.0
    }

    /// Column `index`, as a `T`.
    pub fn get<T: FromValue>(&self, index: usize) -> Result<T, DbError> {
        let value = self.0.get(index).unwrap_or(&Value::Null);
        T::from_value(value).map_err(|reason| DbError::Decode {
            index,
            reason: DecodeError::Type(reason),
        })
    }

    /// Column `index` as text, borrowed from the row.
    pub fn text(&self, index: usize) -> Result<&str, DbError> {
        match self.0.get(index) {
            Some(Value::Text(text)) => Ok(text),
            other => Err(DbError::Decode {
                index,
                reason: DecodeError::Type(format!(
                    "expected a text, found {:?}",
                    other.unwrap_or(&Value::Null)
                )),
            }),
        }
    }

    /// Column `index`, as a `T`, taken out of the row rather than copied (a text is moved);
    /// the column reads as `NULL` afterwards. For reads of many rows with long texts
    /// ([`Exec::query_owned`]).
    pub fn take<T: FromValue>(&mut self, index: usize) -> Result<T, DbError> {
        let value = self
            .0
            .get_mut(index)
            .map_or(Value::Null, |v| std::mem::replace(v, Value::Null));
        T::from_owned(value).map_err(|reason| DbError::Decode {
            index,
            reason: DecodeError::Type(reason),
        })
    }

    /// Column `index` as text parsed by `parse`; its refusal is `reason`'s.
    pub fn parse<T, E>(
        &self,
        index: usize,
        parse: impl FnOnce(String) -> Result<T, E>,
        reason: impl FnOnce(E) -> DecodeError,
    ) -> Result<T, DbError> {
        let text: String = self.get(index)?;
        parse(text).map_err(|e| DbError::Decode {
            index,
            reason: reason(e),
        })
    }

    fn from_sqlite(row: &rusqlite::Row<'_>, width: usize) -> rusqlite::Result<Row> {
        (0..width)
            .map(|i| {
                Ok(match row.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => Value::Int(n),
                    ValueRef::Text(t) => Value::Text(text(t).into_owned()),
                    other => {
                        return Err(rusqlite::Error::InvalidColumnType(
                            i,
                            format!("column {i}"),
                            other.data_type(),
                        ));
                    }
                })
            })
            .collect::<rusqlite::Result<Vec<_>>>()
            .map(Row)
    }

    fn from_postgres(row: &postgres::Row) -> Result<Row, DbError> {
        let mut values = Vec::with_capacity(row.len());
        for (i, column) in row.columns().iter().enumerate() {
            let value = match *column.type_() {
                Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
                Type::INT4 => row
                    .try_get::<_, Option<i32>>(i)?
                    .map(|n| Value::Int(n.into())),
                Type::INT2 => row
                    .try_get::<_, Option<i16>>(i)?
                    .map(|n| Value::Int(n.into())),
                Type::BOOL => row
                    .try_get::<_, Option<bool>>(i)?
                    .map(|b| Value::Int(b.into())),
                _ => row
                    .try_get::<_, Option<String>>(i)?
                    .map(|text| Value::Text(unescape_nul(text))),
            };
            values.push(value.unwrap_or(Value::Null));
        }
        Ok(Row(values))
    }
}

/// A Rust value read from a column.
pub trait FromValue: Sized {
    /// The value, or why it is not one.
    fn from_value(value: &Value) -> Result<Self, String>;

    /// The value from one given away, or why it is not one: a text is moved, not copied.
    fn from_owned(value: Value) -> Result<Self, String> {
        Self::from_value(&value)
    }
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Result<i64, String> {
        match value {
            Value::Int(n) => Ok(*n),
            other => Err(format!("expected an integer, found {other:?}")),
        }
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Result<bool, String> {
        i64::from_value(value).map(|n| n != 0)
    }
}

macro_rules! narrow_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: &Value) -> Result<$t, String> {
                let n = i64::from_value(value)?;
                <$t>::try_from(n).map_err(|_| format!("{n} is out of range"))
            }
        }
    )*};
}
narrow_value!(u16, u32, i32);

impl FromValue for String {
    fn from_value(value: &Value) -> Result<String, String> {
        match value {
            Value::Text(s) => Ok(s.clone()),
            other => Err(format!("expected a text, found {other:?}")),
        }
    }

    fn from_owned(value: Value) -> Result<String, String> {
        match value {
            Value::Text(s) => Ok(s),
            other => Err(format!("expected a text, found {other:?}")),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Option<T>, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }

    fn from_owned(value: Value) -> Result<Option<T>, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_owned(other).map(Some),
        }
    }
}

/// A connection, and what it knows of the schema once the store opened it.
pub struct Conn {
    link: Link,
    /// Set once the schema is migrated ([`Conn::guard_schema`]).
    schema: Option<SchemaGuard>,
}

enum Link {
    /// To SQLite.
    Sqlite(rusqlite::Connection),
    /// To PostgreSQL, with its prepared statements.
    Postgres(Box<PgConn>),
}

/// The schema version a connection's writes are made for, and a newer one once seen.
#[derive(Debug, Clone, Copy)]
struct SchemaGuard {
    understood: i64,
    moved: Option<i64>,
}

/// A PostgreSQL connection, its URL (to reconnect after the server restarted or the network
/// cut it) and the statements prepared on it.
pub struct PgConn {
    url: String,
    client: Option<postgres::Client>,
    statements: HashMap<String, Statement>,
    /// How long a session of this connection may sit in a transaction or wait for a lock
    /// ([`Conn::bound_sessions`]).
    limit: Option<std::time::Duration>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.link {
            Link::Sqlite(_) => "Conn::Sqlite",
            Link::Postgres(_) => "Conn::Postgres",
        })
    }
}

impl PgConn {
    /// Connects to `url` (a `postgres://` URL or a libpq key/value string).
    pub fn connect(url: &str) -> Result<PgConn, DbError> {
        let mut conn = PgConn {
            url: url.to_owned(),
            client: None,
            statements: HashMap::new(),
            limit: None,
        };
        outside_async(|| conn.ensure_connected())?;
        Ok(conn)
    }

    /// Connects again if the last client was lost.
    fn ensure_connected(&mut self) -> Result<(), DbError> {
        if self
            .client
            .as_ref()
            .is_some_and(postgres::Client::is_closed)
        {
            self.client = None;
        }
        if self.client.is_none() {
            self.statements.clear();
            let mut config: postgres::Config = self.url.parse()?;
            // The operator's own name (`?application_name=` in the URL) is kept: with several
            // replicas, it says which one a session in `pg_stat_activity` is.
            if config.get_application_name().is_none() {
                config.application_name("slipway");
            }
            if config.get_connect_timeout().is_none() {
                config.connect_timeout(std::time::Duration::from_secs(10));
            }
            if let Some(limit) = self.limit {
                let ms = limit.as_millis().max(1);
                // After the URL's own (a `search_path` of the state's schema, say), not instead.
                let given = config
                    .get_options()
                    .map(|o| format!("{o} "))
                    .unwrap_or_default();
                config.options(&format!(
                    "{given}-c idle_in_transaction_session_timeout={ms} -c lock_timeout={ms}"
                ));
            }
            self.client = Some(config.connect(NoTls)?);
        }
        Ok(())
    }

    /// Runs `f` on the client (connected again if the last one was lost) and its prepared
    /// statements; forgets the client after an error that may have broken it, so that the
    /// next call connects again.
    fn run<T>(
        &mut self,
        f: impl FnOnce(&mut postgres::Client, &mut HashMap<String, Statement>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        outside_async(|| self.run_blocking(f))
    }

    fn run_blocking<T>(
        &mut self,
        f: impl FnOnce(&mut postgres::Client, &mut HashMap<String, Statement>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.ensure_connected()?;
        let client = self.client.as_mut().expect("connected just above");
        let result = f(client, &mut self.statements);
        let broken = match &result {
            Err(DbError::Postgres(e)) => e.code().is_none() || e.is_closed(),
            _ => false,
        } || client.is_closed();
        if broken {
            self.client = None;
            self.statements.clear();
        }
        result
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // The client owns a runtime, which refuses to be dropped on an async worker.
        if let Some(client) = self.client.take() {
            outside_async(move || drop(client));
        }
    }
}

/// Runs `f`, which blocks on the PostgreSQL client's own runtime: on a worker of a
/// multi-threaded runtime (the controller's, which calls the store from async code), through
/// `block_in_place`, since a runtime refuses to block a thread that drives another's tasks.
fn outside_async<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A transaction: the same calls as a connection, committed by [`Conn::transaction`] when
/// its closure succeeds and rolled back otherwise.
pub enum Tx<'c> {
    /// On SQLite.
    Sqlite(rusqlite::Transaction<'c>),
    /// On PostgreSQL.
    Postgres(
        postgres::Transaction<'c>,
        &'c mut HashMap<String, Statement>,
    ),
}

/// The calls a connection and a transaction share.
pub trait Exec {
    /// Runs `sql`; returns how many rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError>;

    /// Runs `sql`; returns its rows.
    fn rows(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError>;

    /// Runs several statements without parameters (a migration).
    fn batch(&mut self, sql: &str) -> Result<(), DbError>;

    /// Which database it is.
    fn dialect(&self) -> Dialect;

    /// Runs `sql`; returns its rows read by `read`.
    fn query<T>(
        &mut self,
        sql: &str,
        params: &[Value],
        read: impl FnMut(&Row) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        self.rows(sql, params)?.iter().map(read).collect()
    }

    /// Runs `sql`; returns its rows read by `read`, which is given each row to take its
    /// values out of ([`Row::take`]) instead of copying them: for reads of many rows with
    /// long texts.
    fn query_owned<T>(
        &mut self,
        sql: &str,
        params: &[Value],
        read: impl FnMut(Row) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        self.rows(sql, params)?.into_iter().map(read).collect()
    }

    /// Runs `sql`; returns its first row read by `read`, if there is one.
    fn query_opt<T>(
        &mut self,
        sql: &str,
        params: &[Value],
        read: impl FnOnce(&Row) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        self.rows(sql, params)?.first().map(read).transpose()
    }

    /// Runs `sql`; returns its first row read by `read`. A query that returns no row is an
    /// error (SQLite's `QueryReturnedNoRows`).
    fn query_one<T>(
        &mut self,
        sql: &str,
        params: &[Value],
        read: impl FnOnce(&Row) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        match self.query_opt(sql, params, read)? {
            Some(value) => Ok(value),
            None => Err(DbError::Sqlite(rusqlite::Error::QueryReturnedNoRows)),
        }
    }
}

fn sqlite_execute(c: &rusqlite::Connection, sql: &str, params: &[Value]) -> Result<u64, DbError> {
    let mut statement = c.prepare_cached(sql)?;
    let changed = statement.execute(rusqlite::params_from_iter(params))?;
    Ok(changed as u64)
}

fn sqlite_rows(c: &rusqlite::Connection, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
    let mut statement = c.prepare_cached(sql)?;
    let width = statement.column_count();
    let rows = statement
        .query_map(rusqlite::params_from_iter(params), |row| {
            Row::from_sqlite(row, width)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

fn pg_params(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

fn pg_statement<C: GenericClient>(
    client: &mut C,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
) -> Result<Statement, postgres::Error> {
    if let Some(statement) = statements.get(sql) {
        return Ok(statement.clone());
    }
    let statement = client.prepare(&to_postgres(sql))?;
    statements.insert(sql.to_owned(), statement.clone());
    Ok(statement)
}

fn pg_execute<C: GenericClient>(
    client: &mut C,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    params: &[Value],
) -> Result<u64, postgres::Error> {
    let statement = pg_statement(client, statements, sql)?;
    client.execute(&statement, &pg_params(params))
}

fn pg_rows<C: GenericClient>(
    client: &mut C,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    params: &[Value],
) -> Result<Vec<Row>, DbError> {
    let statement = pg_statement(client, statements, sql)?;
    let rows = client.query(&statement, &pg_params(params))?;
    rows.iter().map(Row::from_postgres).collect()
}

impl Exec for Conn {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        if self.schema.is_some() && is_write(sql) {
            return self.transaction(&[], |tx| tx.execute(sql, params));
        }
        match &mut self.link {
            Link::Sqlite(c) => sqlite_execute(c, sql, params),
            Link::Postgres(pg) => {
                pg.run(|c, statements| Ok(pg_execute(c, statements, sql, params)?))
            }
        }
    }

    fn rows(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        if self.schema.is_some() && is_write(sql) {
            return self.transaction(&[], |tx| tx.rows(sql, params));
        }
        match &mut self.link {
            Link::Sqlite(c) => sqlite_rows(c, sql, params),
            Link::Postgres(pg) => pg.run(|c, statements| pg_rows(c, statements, sql, params)),
        }
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        if self.schema.is_some() {
            return self.transaction(&[], |tx| tx.batch(sql));
        }
        match &mut self.link {
            Link::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Link::Postgres(pg) => pg.run(|c, _| Ok(c.batch_execute(&to_postgres(sql))?)),
        }
    }

    fn dialect(&self) -> Dialect {
        match self.link {
            Link::Sqlite(_) => Dialect::Sqlite,
            Link::Postgres(_) => Dialect::Postgres,
        }
    }
}

/// Whether `sql` changes the database (and so must prove the schema once it is guarded).
/// Reads, and `VACUUM INTO` (which writes another file), do not.
fn is_write(sql: &str) -> bool {
    let first = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    [
        "INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "ALTER", "DROP", "TRUNCATE",
    ]
    .iter()
    .any(|w| first.eq_ignore_ascii_case(w))
}

impl Tx<'_> {
    /// Takes `tables`' write locks now, as [`Conn::transaction`] takes them at its start:
    /// `SHARE ROW EXCLUSIVE` on PostgreSQL; nothing on SQLite, whose transaction holds the
    /// write lock from its start.
    pub fn lock_tables(&mut self, tables: &[&str]) -> Result<(), DbError> {
        match self {
            Tx::Postgres(t, _) if !tables.is_empty() => Ok(t.batch_execute(&format!(
                "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
                tables.join(", ")
            ))?),
            _ => Ok(()),
        }
    }
}

impl Exec for Tx<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        match self {
            Tx::Sqlite(t) => sqlite_execute(t, sql, params),
            Tx::Postgres(t, statements) => Ok(pg_execute(t, statements, sql, params)?),
        }
    }

    fn rows(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        match self {
            Tx::Sqlite(t) => sqlite_rows(t, sql, params),
            Tx::Postgres(t, statements) => pg_rows(t, statements, sql, params),
        }
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(t) => Ok(t.execute_batch(sql)?),
            Tx::Postgres(t, _) => Ok(t.batch_execute(&to_postgres(sql))?),
        }
    }

    fn dialect(&self) -> Dialect {
        match self {
            Tx::Sqlite(_) => Dialect::Sqlite,
            Tx::Postgres(..) => Dialect::Postgres,
        }
    }
}

/// A text column's bytes as text: SQLite does not check that they are UTF-8, so those that
/// are not are read with replacement characters. (`from_utf8` checks a word at a time where
/// `from_utf8_lossy` checks a byte at a time: a listing reads megabytes.)
fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// One row of a result, borrowed from the driver while [`Conn::each_row`] reads it: its
/// texts are read in place, not copied into a [`Row`] of their own.
pub enum RowRef<'a> {
    /// SQLite's row.
    Sqlite(&'a rusqlite::Row<'a>),
    /// PostgreSQL's row.
    Postgres(&'a postgres::Row),
}

impl RowRef<'_> {
    /// Column `index` as text, `None` for `NULL`: borrowed from the driver where it can be
    /// (text that is not UTF-8 is read as [`Row`] reads it, with replacement characters).
    pub fn text(&self, index: usize) -> Result<Option<std::borrow::Cow<'_, str>>, DbError> {
        use std::borrow::Cow;
        match self {
            RowRef::Sqlite(row) => match row.get_ref(index)? {
                ValueRef::Null => Ok(None),
                ValueRef::Text(bytes) => Ok(Some(text(bytes))),
                other => Err(DbError::Decode {
                    index,
                    reason: DecodeError::Type(format!(
                        "expected a text, found {}",
                        other.data_type()
                    )),
                }),
            },
            RowRef::Postgres(row) => {
                Ok(row
                    .try_get::<_, Option<&str>>(index)?
                    .map(|text| match text.contains(ESCAPE) {
                        true => Cow::Owned(unescape_nul(text.to_owned())),
                        false => Cow::Borrowed(text),
                    }))
            }
        }
    }
}

impl Conn {
    /// Runs `sql`, a read, and hands each of its rows to `each` as it is read, borrowed
    /// ([`RowRef`]): for reads of many rows with long texts, whose reader copies what it
    /// keeps into a buffer of its own rather than one allocation per column.
    pub fn each_row(
        &mut self,
        sql: &str,
        params: &[Value],
        mut each: impl FnMut(RowRef<'_>) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        debug_assert!(!is_write(sql), "each_row reads: {sql}");
        match &mut self.link {
            Link::Sqlite(c) => {
                let mut statement = c.prepare_cached(sql)?;
                let mut rows = statement.query(rusqlite::params_from_iter(params))?;
                while let Some(row) = rows.next()? {
                    each(RowRef::Sqlite(row))?;
                }
                Ok(())
            }
            Link::Postgres(pg) => pg.run(|c, statements| {
                let statement = pg_statement(c, statements, sql)?;
                for row in c.query(&statement, &pg_params(params))? {
                    each(RowRef::Postgres(&row))?;
                }
                Ok(())
            }),
        }
    }

    /// A connection to SQLite.
    pub fn sqlite(connection: rusqlite::Connection) -> Conn {
        Conn {
            link: Link::Sqlite(connection),
            schema: None,
        }
    }

    /// Bounds how long this connection's sessions may hold a transaction open while idle, or
    /// wait for a lock, to `limit` (PostgreSQL only; the session in use is replaced). With
    /// several replicas on one server a replica frozen in the middle of a transaction (a
    /// pause, SIGSTOP) would otherwise keep its row locks for as long as it is frozen, and
    /// every other replica touching those rows would wait on it, its single connection with
    /// it: the server ends the frozen session instead, and a waiter gives up and tries again.
    pub fn bound_sessions(&mut self, limit: std::time::Duration) {
        if let Link::Postgres(pg) = &mut self.link {
            pg.limit = Some(limit);
            if let Some(client) = pg.client.take() {
                outside_async(move || drop(client));
            }
            pg.statements.clear();
        }
    }

    /// The URL of the PostgreSQL server it talks to, `None` on SQLite.
    pub(crate) fn postgres_url(&self) -> Option<&str> {
        match &self.link {
            Link::Sqlite(_) => None,
            Link::Postgres(pg) => Some(&pg.url),
        }
    }

    /// A connection to PostgreSQL.
    pub fn postgres(connection: PgConn) -> Conn {
        Conn {
            link: Link::Postgres(Box::new(connection)),
            schema: None,
        }
    }

    /// From now on, every write proves in its own transaction that the schema's version is
    /// still at most `understood` (the newest this binary knows), and a newer one refuses it
    /// with [`DbError::SchemaMoved`] and every write after it: once a newer Slipway migrated
    /// the database, this process writes nothing more. Reads go on (migrations are additive,
    /// see `schema.rs`).
    ///
    /// # Guarantees
    /// A write's transaction takes `slipway_schema` in `SHARE` mode before anything else
    /// (SQLite's `BEGIN IMMEDIATE` is one lock for everything); a migration takes it in
    /// `SHARE ROW EXCLUSIVE` mode first. So a write either commits before the migration
    /// begins, or waits for it and reads the new version: none of this process's writes
    /// commits after a migration it does not know. Both lock `slipway_schema` first, so they
    /// cannot deadlock on each other's tables.
    pub fn guard_schema(&mut self, understood: i64) {
        self.schema = Some(SchemaGuard {
            understood,
            moved: None,
        });
    }

    /// The newer schema version found, once one was: this connection writes nothing more.
    pub fn schema_moved(&self) -> Option<i64> {
        self.schema.and_then(|g| g.moved)
    }

    /// Records that the database's schema is at version `found` (read by the caller): past
    /// the guarded version, the connection writes nothing more. Returns the newer version
    /// found, now or before.
    pub fn notice_schema(&mut self, found: i64) -> Option<i64> {
        if let Some(guard) = &mut self.schema
            && found > guard.understood
            && guard.moved.is_none()
        {
            guard.moved = Some(found);
        }
        self.schema_moved()
    }

    /// Runs `body` in a transaction that takes the write lock at once: SQLite's
    /// `BEGIN IMMEDIATE`; on PostgreSQL, `tables` locked `SHARE ROW EXCLUSIVE` (writers of
    /// those tables wait, readers do not), so a read-then-write in `body` sees no concurrent
    /// writer of them. Commits when `body` succeeds, rolls back otherwise. With the schema
    /// guarded, it first proves the schema has not moved (see [`Conn::guard_schema`]).
    pub fn transaction<T, E: From<DbError>>(
        &mut self,
        tables: &[&str],
        body: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let guard = self.schema;
        if let Some(SchemaGuard {
            understood,
            moved: Some(found),
        }) = guard
        {
            return Err(DbError::SchemaMoved { found, understood }.into());
        }
        let understood = guard.map(|g| g.understood);
        let mut newer = None;
        let result = match &mut self.link {
            Link::Sqlite(c) => (|| {
                let tx = c
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(DbError::from)?;
                let mut tx = Tx::Sqlite(tx);
                if let Some(understood) = understood {
                    let found: i64 = tx.query_one("PRAGMA user_version", &[], |r| r.get(0))?;
                    if found > understood {
                        newer = Some(found);
                        return Err(DbError::SchemaMoved { found, understood }.into());
                    }
                }
                let value = body(&mut tx)?;
                let Tx::Sqlite(tx) = tx else {
                    unreachable!("made above")
                };
                tx.commit().map_err(DbError::from)?;
                Ok(value)
            })(),
            Link::Postgres(pg) => {
                let mut failure = None;
                let outcome = pg.run(|client, statements| {
                    let mut tx = client.transaction()?;
                    let mut locks = String::new();
                    if understood.is_some() {
                        locks.push_str("LOCK TABLE slipway_schema IN SHARE MODE; ");
                    }
                    if !tables.is_empty() {
                        locks.push_str(&format!(
                            "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE; ",
                            tables.join(", ")
                        ));
                    }
                    if let Some(understood) = understood {
                        // One round trip: the locks, then the version they protect.
                        locks.push_str("SELECT version FROM slipway_schema WHERE id = 1");
                        let found = tx
                            .simple_query(&locks)?
                            .iter()
                            .find_map(|m| match m {
                                postgres::SimpleQueryMessage::Row(row) => row.get(0),
                                _ => None,
                            })
                            .and_then(|v| v.parse::<i64>().ok())
                            .unwrap_or(0);
                        if found > understood {
                            newer = Some(found);
                            return Err(DbError::SchemaMoved { found, understood });
                        }
                    } else if !locks.is_empty() {
                        tx.batch_execute(&locks)?;
                    }
                    let mut tx = Tx::Postgres(tx, statements);
                    match body(&mut tx) {
                        Ok(value) => {
                            let Tx::Postgres(tx, _) = tx else {
                                unreachable!("made above")
                            };
                            tx.commit()?;
                            Ok(Some(value))
                        }
                        Err(e) => {
                            failure = Some(e);
                            Ok(None)
                        }
                    }
                });
                match (outcome, failure) {
                    (Ok(Some(value)), _) => Ok(value),
                    (Err(e), _) => Err(e.into()),
                    (Ok(None), Some(e)) => Err(e),
                    (Ok(None), None) => unreachable!("no value only when the body failed"),
                }
            }
        };
        if let Some(found) = newer {
            self.notice_schema(found);
        }
        result
    }
}

/// `sql` in PostgreSQL's dialect: `?N` parameters become `$N`, and a schema's SQLite types
/// and table options become PostgreSQL's. Quoted strings are copied as they are.
pub fn to_postgres(sql: &str) -> String {
    let sql = sql
        .replace(
            "INTEGER PRIMARY KEY AUTOINCREMENT",
            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        )
        .replace(") STRICT;", ");");
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(c),
        }
    }
    replace_word(&out, "INTEGER", "BIGINT")
}

/// `text` with every whole-word `word` outside quotes replaced by `with`.
fn replace_word(text: &str, word: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quoted = false;
    let mut rest = text;
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    while let Some(c) = rest.chars().next() {
        if c == '\'' {
            quoted = !quoted;
        }
        let before_ok = !out.chars().last().is_some_and(is_word);
        if !quoted
            && before_ok
            && rest.starts_with(word)
            && !rest[word.len()..].chars().next().is_some_and(is_word)
        {
            out.push_str(with);
            rest = &rest[word.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_frozen_in_a_transaction_is_ended_by_the_server_and_holds_no_one_up() {
        let database = slipway_testkit::pg::TestDatabase::create("slipway_bounded");
        let connect = || Conn::postgres(PgConn::connect(&database.url()).expect("connect"));
        let mut frozen = connect();
        frozen
            .batch("CREATE TABLE t (id BIGINT PRIMARY KEY, n BIGINT NOT NULL); INSERT INTO t VALUES (1, 0);")
            .expect("a table");
        frozen.bound_sessions(std::time::Duration::from_millis(300));
        let (locked, wait_locked) = std::sync::mpsc::channel();
        let (woke, wait_woke) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            frozen.transaction(&[], |tx| {
                tx.execute("UPDATE t SET n = n + 1 WHERE id = 1", params![])?;
                locked.send(()).expect("the test waits");
                // Frozen with the row locked, far longer than the bound.
                let _ = wait_woke.recv();
                tx.execute("UPDATE t SET n = n + 10 WHERE id = 1", params![])
            })
        });
        wait_locked.recv().expect("the row is locked");
        // Another session writes the same row: it gets it once the server ended the frozen
        // session, while the holder is still frozen.
        let mut other = connect();
        let n = other
            .transaction(&[], |tx| {
                tx.execute("UPDATE t SET n = n + 100 WHERE id = 1", params![])?;
                tx.query_one("SELECT n FROM t WHERE id = 1", params![], |r| {
                    r.get::<i64>(0)
                })
            })
            .expect("the other session writes past the frozen one");
        assert_eq!(n, 100, "the frozen transaction's write was rolled back");
        woke.send(()).expect("the holder waits");
        let frozen_result = holder.join().expect("no panic");
        assert!(
            frozen_result.is_err(),
            "the frozen transaction cannot commit once it woke: {frozen_result:?}"
        );
    }

    #[test]
    fn parameters_and_schema_types_become_postgres_dialect_outside_quotes() {
        assert_eq!(
            to_postgres("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $12"
        );
        assert_eq!(
            to_postgres(
                "CREATE TABLE t (\n  id INTEGER PRIMARY KEY AUTOINCREMENT,\n  n INTEGER NOT NULL,\n  \
                 INTEGERS TEXT DEFAULT 'INTEGER'\n) STRICT;"
            ),
            "CREATE TABLE t (\n  id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,\n  \
             n BIGINT NOT NULL,\n  INTEGERS TEXT DEFAULT 'INTEGER'\n);"
        );
    }

    #[test]
    fn nul_survives_postgres_text_and_the_escape_character_itself_too() {
        for text in [
            "",
            "plain",
            "a\0b",
            "\0",
            "\u{FFFF}",
            "\u{FFFF}0",
            "x\u{FFFF}\0\u{FFFF}",
        ] {
            let escaped = escape_nul(text);
            assert!(!escaped.contains('\0'), "{text:?} escaped holds no NUL");
            assert_eq!(
                unescape_nul(escaped.into_owned()),
                text,
                "{text:?} round-trips"
            );
        }
    }

    #[test]
    fn values_read_back_as_the_types_asked_for_or_say_why_not() {
        let row = Row(vec![
            Value::Int(1),
            Value::Null,
            Value::Text("x".into()),
            Value::Int(70_000),
        ]);
        assert!(row.get::<bool>(0).expect("an integer is a bool"));
        assert_eq!(row.get::<Option<String>>(1).expect("null"), None);
        assert_eq!(row.get::<String>(2).expect("text"), "x");
        assert!(row.get::<i64>(2).is_err(), "a text is not an integer");
        assert!(row.get::<u16>(3).is_err(), "70000 is no port");
        assert!(row.get::<String>(1).is_err(), "null is not a text");
    }
}
