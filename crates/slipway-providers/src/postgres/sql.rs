//! Talking to a PostgreSQL server safely: connections, quoting, errors, redaction.
//!
//! Nothing from a configuration or a name ever reaches SQL text except through [`ident`] (a
//! double-quoted identifier) or [`literal`] (a quoted string constant), and values go as query
//! parameters wherever PostgreSQL accepts one (utility statements like `CREATE DATABASE` and
//! `COMMENT ON` take none).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use postgres::config::{Host, SslMode};
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Row};

pub use slipway_core::redact::redact_url;

use super::names::MAX_NAME_BYTES;
use crate::{ProviderError, Retry};

/// The setting every admin session starts with, added to the URL's own options: every name
/// its statements use (functions, operators, types, catalogs) is the system's.
/// - On the admin URL's database, with the default `"$user", public`, a function of the same
///   name in `public` (which any role may create in, on PostgreSQL 14 and older) can be the
///   better match for a call (`shobj_description(oid, 'pg_authid')` takes `text` over
///   `pg_catalog`'s `name`), and run as the admin: an environment's role, whose password its
///   code holds, could plant one.
/// - On an environment's own database its role may even set the database's `search_path`
///   (`ALTER DATABASE … SET search_path = its_schema, pg_catalog`), after which its
///   `pg_extension` or `=` would be found before the system's. A setting the client sends at
///   connection overrides the database's. (Extensions are created `SCHEMA public`, or in
///   their control file's schema, never in the default one.)
const CATALOG_ONLY: &str = "-c search_path=pg_catalog";

/// What an admin session to the admin URL's database sends first (the URL's own options,
/// after it, win): waiting for a lock is bounded. Any role that can connect there, an
/// environment's whose password its code holds, can take the advisory locks Slipway takes
/// (`pg_advisory_lock`, the names are readable), or hold a catalog row of its own in an open
/// transaction: an unbounded wait hung the apply, the environment's lock and a controller's
/// worker for ever. The statement fails instead (55P03, retryable).
const ADMIN_LOCK_WAIT: &str = "-c lock_timeout=10s";

/// What an admin session to another database than the admin URL's sends besides
/// [`CATALOG_ONLY`]: that database's owner, an environment's role for an environment's
/// database, may set these for every session to it (`ALTER DATABASE … SET`), and would have
/// the admin's statements run as itself (`role`), refuse to write, time out at once, or not
/// connect at all (a library that does not load). A setting the client sends at connection
/// overrides the database's; the admin URL's own options, sent after these, still win.
/// Waiting for a lock is bounded (a transaction its owner leaves open on what a statement
/// must lock would hold it for ever): the statement then fails, retryable. The settings some
/// versions lack are set once connected ([`SESSION_TIMEOUTS`]).
const ON_ANOTHER_DATABASE: &str = "-c role=none -c default_transaction_read_only=off \
    -c statement_timeout=0 -c lock_timeout=10s -c idle_in_transaction_session_timeout=0 \
    -c local_preload_libraries= -c exit_on_error=off";

/// The timeouts a database's owner may set that end an idle session or a transaction
/// (PostgreSQL 14 and 17), off where the database set them and the server has them (an
/// unknown setting sent at connection would be refused).
const SESSION_TIMEOUTS: &str = "SELECT pg_catalog.set_config(name, '0', false) \
    FROM pg_catalog.pg_settings \
    WHERE name OPERATOR(pg_catalog.=) ANY (ARRAY['idle_session_timeout', 'transaction_timeout']) \
    AND source OPERATOR(pg_catalog.=) 'database'";

/// How long connecting may take before the server counts as unreachable.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an admin connection made ahead ([`Server::warm`]) waits to be used; then the
/// thread that made it closes it. (Shorter in unit tests, which wait for it.)
const WARM_FOR: Duration = Duration::from_secs(if cfg!(test) { 6 } else { 30 });

/// How long the check that a connection made ahead still works may take.
const WARM_CHECK: Duration = Duration::from_secs(2);

/// How recent the answer of a connection made ahead to its question ([`Ahead`]) must be for
/// the session's first query, when it is that question, to take it instead of asking again.
/// A command that waits for its connection takes the answer within a millisecond or so; the
/// bound keeps what the answer may have missed (see `Session::query`) to a few tens of
/// milliseconds whatever the caller does meanwhile. An answer this recent also vouches that
/// the connection is alive (`take_warm` checks it with a round trip otherwise). (Longer in
/// unit tests, which change the server between the answer and the query.)
const AHEAD_FRESH: Duration = Duration::from_millis(if cfg!(test) { 2000 } else { 50 });

/// How recent a failure to connect ahead must be for the `connect` that takes it to report
/// it rather than try again: a connect that just failed would fail the same way (and wait as
/// long), one from seconds ago is no evidence (the server may be back).
const WARM_FAILURE_FRESH: Duration = Duration::from_secs(1);

/// Admin connections made ahead of the statements that will use them, at most one per
/// server, each taken by the next [`Server::connect`]. A new backend costs milliseconds (the
/// server forks it, and its first query loads the catalogs it reads), which an apply would
/// otherwise wait for after its records; made ahead, they overlap.
#[derive(Default)]
pub(crate) struct Warm {
    slots: Mutex<BTreeMap<String, Asks>>,
    /// When a session of these servers last ran a statement (one that may change things):
    /// an answer asked ahead before it is void, on every server (two configured servers may
    /// be one, and a resource that moves from one to the other is dropped from the first
    /// before the second is asked).
    changed: Mutex<Option<Instant>>,
}

impl Warm {
    fn changed_now(&self) {
        *self.changed.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Whether a session ran a statement at `at` or later.
    fn changed_since(&self, at: Instant) -> bool {
        self.changed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|changed| changed >= at)
    }
}

/// When a connection ahead was started, and where to ask its thread for it.
type Asks = (Instant, Sender<Sender<Made>>);

/// What a thread making a connection ahead hands over: the connection with its answer to
/// the question it was asked ahead, or why it could not be made and when that was known.
type Made = Result<(Client, Option<Answered>), (Instant, postgres::Error)>;

/// The query a connection made ahead asks as soon as it is made: the change's own first
/// look-up (`catalog` makes them). The new backend's slowest query (it loads the catalogs it
/// reads) then overlaps what comes before the change, and the session that takes the
/// connection, when it asks exactly this first, is answered at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ahead {
    pub sql: &'static str,
    pub params: Vec<String>,
}

/// [`Session::server_version`]'s query, which also reads `template1`'s encoding and locale
/// ([`Session::template1_locale`]; nulls when there is no `template1`).
const SERVER_VERSION: &str = "select current_setting('server_version_num')::int4, \
    pg_catalog.pg_encoding_to_char(d.encoding)::pg_catalog.text, \
    d.datcollate::pg_catalog.text, d.datctype::pg_catalog.text \
    from (select 1) one left join pg_catalog.pg_database d \
    on d.datname operator(pg_catalog.=) 'template1'";

/// A database's encoding and locale, as `CREATE DATABASE` takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Locale {
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
}

impl Ahead {
    /// The server's version ([`Session::server_version`]): what a first create asks before
    /// anything else, and about the cheapest query a new backend answers.
    pub(crate) fn server_version() -> Ahead {
        Ahead {
            sql: SERVER_VERSION,
            params: Vec::new(),
        }
    }
}

/// A connection made ahead's answer to its [`Ahead`], and when it was asked.
struct Answered {
    ahead: Ahead,
    rows: Vec<Row>,
    /// Before the query was sent: nothing the server did before this is missing from it.
    asked: Instant,
}

/// One configured server: its name in the engine config and how to reach it as an admin.
#[derive(Clone)]
pub(crate) struct Server {
    /// The `NAME` of `[postgres.NAME]`.
    pub name: String,
    /// How to reach the admin URL's database, names resolved in `pg_catalog` alone (see
    /// [`CATALOG_ONLY`]).
    config: postgres::Config,
    /// The admin URL with its password hidden, for messages.
    pub shown: String,
    /// The admin password, removed from every message as a last line of defence.
    password: Option<String>,
    /// Where clients connect: the first host of the admin URL (a host name, an address, or a
    /// Unix socket directory) and its port.
    pub host: String,
    /// See `host`.
    pub port: u16,
    /// Whether `host` is a Unix socket directory.
    pub unix: bool,
    /// Where [`Server::warm`] leaves its connection, shared by every `Server` of the same
    /// servers (`None`: never made ahead).
    warm: Option<Arc<Warm>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.name)
            .field("url", &self.shown)
            .finish()
    }
}

impl Server {
    /// Parses the admin connection string of server `name`.
    pub fn parse(name: &str, url: &str) -> Result<Server, ProviderError> {
        let shown = redact_url(url);
        let invalid = |why: String| {
            ProviderError::Config(format!(
                "the URL of PostgreSQL server {name} ({shown}) {why}; give one like \
                 postgres://USER:PASSWORD@HOST:5432/postgres in the variable its `url_env` names"
            ))
        };
        let mut config = postgres::Config::from_str(url).map_err(|e| {
            invalid(format!(
                "is not a PostgreSQL connection string ({})",
                scrub(&e.to_string(), textual_password(url).as_deref())
            ))
        })?;
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        if config.get_ssl_mode() == SslMode::Require {
            return Err(invalid(
                "requires TLS (sslmode=require), which Slipway's PostgreSQL client does not \
                 support yet; use sslmode=disable or prefer on a trusted network"
                    .to_owned(),
            ));
        }
        let (host, unix) = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => (host.clone(), false),
            Some(Host::Unix(dir)) => (dir.display().to_string(), true),
            None => return Err(invalid("names no host".to_owned())),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let options = config.get_options().map(str::to_owned);
        config.options(&match &options {
            Some(given) => format!("{ADMIN_LOCK_WAIT} {given} {CATALOG_ONLY}"),
            None => format!("{ADMIN_LOCK_WAIT} {CATALOG_ONLY}"),
        });
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .application_name("slipway")
            // Notices ("extension already exists, skipping") are expected and not news.
            .notice_callback(|_| {});
        Ok(Server {
            name: name.to_owned(),
            config,
            shown,
            password,
            host,
            port,
            unix,
            warm: None,
        })
    }

    /// This server, leaving connections made ahead in `warm`.
    pub fn with_warm(mut self, warm: Arc<Warm>) -> Server {
        self.warm = Some(warm);
        self
    }

    /// Starts an admin connection, on a thread of its own, for the next [`Server::connect`]
    /// to take, unless one is being made or waits already. It changes nothing on the server:
    /// its one query is `ahead`, a read of the catalogs (see [`Ahead`]). Nothing is reported:
    /// the `connect` that takes it reports its failure. Not taken within `WARM_FOR`, it is
    /// closed (a long-lived `serve` keeps no idle session).
    pub fn warm(&self, ahead: Ahead) {
        let Some(warm) = &self.warm else {
            return;
        };
        let mut slots = warm.slots.lock().unwrap_or_else(PoisonError::into_inner);
        // One started `WARM_FOR` ago or more is closed, or about to be.
        if slots
            .get(&self.name)
            .is_some_and(|(started, _)| started.elapsed() < WARM_FOR)
        {
            return;
        }
        let config = self.config.clone();
        let (asks, asked) = channel::<Sender<Made>>();
        let started = std::thread::Builder::new()
            .name("pg-warm".to_owned())
            .spawn(move || {
                let deadline = Instant::now() + WARM_FOR;
                let made = config.connect(NoTls).map(|mut client| {
                    let params: Vec<&str> = ahead.params.iter().map(String::as_str).collect();
                    let asked = Instant::now();
                    // A failure leaves no answer, and the session usable: the session asks
                    // again, and meets the failure itself.
                    let rows = client.query_typed(ahead.sql, &typed(&params)).ok();
                    let answered = rows.map(|rows| Answered { ahead, rows, asked });
                    (client, answered)
                });
                let made = made.map_err(|e| (Instant::now(), e));
                // Handed to whoever asks first; at the deadline (or with the slot gone),
                // dropped: the connection closes.
                let left = deadline.saturating_duration_since(Instant::now());
                if let Ok(reply) = asked.recv_timeout(left) {
                    let _ = reply.send(made);
                }
            });
        if started.is_ok() {
            slots.insert(self.name.clone(), (Instant::now(), asks));
        }
    }

    /// The connection [`Server::warm`] made for this server and still holds (waiting for it
    /// if it is still being made): its client, or why it could not be made a moment ago.
    /// `None` when there is none to take, or it is no longer usable.
    fn take_warm(&self) -> Option<Result<(Client, Option<Answered>), postgres::Error>> {
        let (started, asks) = self
            .warm
            .as_ref()?
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.name)?;
        if started.elapsed() >= WARM_FOR {
            return None;
        }
        let (reply, made) = channel();
        asks.send(reply).ok()?;
        // Nothing when its thread reached its deadline meanwhile.
        match made.recv().ok()? {
            // The server may have ended it meanwhile (a restart, an idle timeout,
            // `pg_terminate_backend`), and then a new one is made: one round trip says, unless
            // its answer came less than `AHEAD_FRESH` ago, which said as much. (Ended within
            // that, its first statement fails, retryable, as one ended a moment later would.)
            Ok((mut client, answered)) => {
                let proven = answered
                    .as_ref()
                    .is_some_and(|answered| answered.asked.elapsed() < AHEAD_FRESH);
                (proven || client.is_valid(WARM_CHECK).is_ok()).then_some(Ok((client, answered)))
            }
            Err((failed, e)) => (failed.elapsed() < WARM_FAILURE_FRESH).then_some(Err(e)),
        }
    }

    /// Connects as the admin to the database of the admin URL.
    pub fn connect(&self) -> Result<Session<'_>, ProviderError> {
        self.connect_to(None)
    }

    /// Connects as the admin to `database`, or to the admin URL's database.
    pub fn connect_to(&self, database: Option<&str>) -> Result<Session<'_>, ProviderError> {
        self.try_connect_to(database)
            .map_err(|source| self.connect_error(database, source))
    }

    /// Connects as the admin to `database`: `None` when it no longer exists, or does not
    /// allow connections (`ALLOW_CONNECTIONS false`).
    pub fn connect_to_open(&self, database: &str) -> Result<Option<Session<'_>>, ProviderError> {
        match self.try_connect_to(Some(database)) {
            Ok(session) => Ok(Some(session)),
            // invalid_catalog_name; object_not_in_prerequisite_state ("not currently accepting
            // connections")
            Err(e)
                if matches!(
                    e.code().map(postgres::error::SqlState::code),
                    Some("3D000" | "55000")
                ) =>
            {
                Ok(None)
            }
            Err(source) => Err(self.connect_error(Some(database), source)),
        }
    }

    fn try_connect_to(&self, database: Option<&str>) -> Result<Session<'_>, postgres::Error> {
        let (client, answered) = match database {
            // To another database: never the admin connection made ahead, and what its owner
            // set for its sessions does not hold for the admin's.
            Some(database) => {
                let mut config = self.config.clone();
                let options = config.get_options().unwrap_or_default().to_owned();
                // First: what the admin URL's own options say wins (the operator's).
                config
                    .dbname(database)
                    .options(&format!("{ON_ANOTHER_DATABASE} {options}"));
                let mut client = config.connect(NoTls)?;
                client.batch_execute(SESSION_TIMEOUTS)?;
                (client, None)
            }
            None => self
                .take_warm()
                .unwrap_or_else(|| self.config.connect(NoTls).map(|client| (client, None)))?,
        };
        Ok(Session {
            server: self,
            client,
            version: None,
            template1: None,
            answered,
        })
    }

    fn connect_error(&self, database: Option<&str>, source: postgres::Error) -> ProviderError {
        let e = PgError::Connect {
            server: self.name.clone(),
            url: self.shown.clone(),
            target: database
                .map(|d| format!(" (database {d:?})"))
                .unwrap_or_default(),
            source,
        };
        self.error(e.to_string(), e.retry())
    }

    /// A failure whose message has any trace of the admin password removed.
    pub fn error(&self, message: String, retry: Retry) -> ProviderError {
        ProviderError::Failed {
            message: scrub(&message, self.password.as_deref()),
            log_tail: None,
            retry,
        }
    }

    /// `postgres://user:password@host:port/database` for a client of this server.
    pub fn client_url(&self, user: &str, password: &str, database: &str) -> String {
        let host = if self.unix {
            encode(&self.host)
        } else if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "postgres://{}:{}@{host}:{}/{}",
            encode(user),
            encode(password),
            self.port,
            encode(database)
        )
    }
}

/// An admin connection to one server.
pub(crate) struct Session<'a> {
    pub server: &'a Server,
    client: Client,
    /// [`Session::server_version`], once asked.
    version: Option<i32>,
    /// `template1`'s encoding and locale, once [`SERVER_VERSION`] has read them.
    template1: Option<Option<Locale>>,
    /// The answer of the connection made ahead to its question, until the session's first
    /// statement: only that statement may take it (see [`Session::query`]).
    answered: Option<Answered>,
}

impl Session<'_> {
    /// Runs one statement (or several, in one implicit transaction) with no parameters, by the
    /// simple query protocol: what utility statements like `CREATE DATABASE` need.
    pub fn execute(&mut self, action: &str, sql: &str) -> Result<(), PgError> {
        self.will_change();
        self.client
            .batch_execute(sql)
            .map_err(|source| self.statement_error(action, source))
    }

    /// Runs a query whose parameters are text, in one round trip (its parameters' types are
    /// given, so it needs no statement prepared first).
    ///
    /// The session's first statement, when it is the query its connection asked ahead with
    /// the same parameters, takes that answer instead, if it was asked less than
    /// `AHEAD_FRESH` ago and before no statement of any session of these servers. What a
    /// look-up finds may change before the statement it decides (another client's drop and
    /// create of the same name), as it always could between two round trips; this widens
    /// that gap by at most `AHEAD_FRESH`, and never past a change of Slipway's own.
    pub fn query(&mut self, action: &str, sql: &str, params: &[&str]) -> Result<Vec<Row>, PgError> {
        if let Some(answered) = self.answered.take()
            && answered.ahead.sql == sql
            && answered.ahead.params.iter().eq(params.iter().copied())
            && answered.asked.elapsed() < AHEAD_FRESH
            && !self
                .server
                .warm
                .as_ref()
                .is_some_and(|warm| warm.changed_since(answered.asked))
        {
            return Ok(answered.rows);
        }
        self.client
            .query_typed(sql, &typed(params))
            .map_err(|source| self.statement_error(action, source))
    }

    /// Runs statements in one transaction: all of them take effect or none. They go in one
    /// simple query, one round trip: the server runs a query of several statements as one
    /// implicit transaction, and rolls all of it back when one fails.
    ///
    /// # Assumptions
    /// Each statement is whole and has no `BEGIN`/`COMMIT` of its own (its identifiers and
    /// literals quoted by [`ident`] and [`literal`]).
    pub fn execute_atomically(
        &mut self,
        action: &str,
        statements: &[String],
    ) -> Result<(), PgError> {
        self.execute(action, &statements.join(";\n"))
    }

    /// As [`Session::execute_atomically`], with `query` last in the same round trip and
    /// transaction: the first column of its first row, as text (`None`: no row, or null).
    pub fn execute_atomically_then(
        &mut self,
        action: &str,
        statements: &[String],
        query: &str,
    ) -> Result<Option<String>, PgError> {
        self.will_change();
        let sql = [statements, &[query.to_owned()]].concat().join(";\n");
        let messages = self
            .client
            .simple_query(&sql)
            .map_err(|source| self.statement_error(action, source))?;
        Ok(messages
            .iter()
            .find_map(|message| match message {
                postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
                _ => None,
            })
            .flatten())
    }

    /// Before a statement that may change things: no later query takes an answer asked
    /// ahead, on any session of these servers (see [`Session::query`]).
    fn will_change(&mut self) {
        self.answered = None;
        if let Some(warm) = &self.server.warm {
            warm.changed_now();
        }
    }

    /// Keeps `version`, read with another query, as [`Session::server_version`]'s answer.
    pub fn learned_version(&mut self, version: i32) {
        self.version = Some(version);
    }

    /// `server_version_num`, e.g. 150004 (asked once per session).
    pub fn server_version(&mut self) -> Result<i32, PgError> {
        if let Some(version) = self.version {
            return Ok(version);
        }
        self.read_version()
    }

    fn read_version(&mut self) -> Result<i32, PgError> {
        let rows = self.query("read the server version", SERVER_VERSION, &[])?;
        let version = rows.first().map(|row| row.get(0)).unwrap_or(0);
        self.version = Some(version);
        self.template1 = Some(rows.first().and_then(|row| {
            Some(Locale {
                encoding: row.get::<_, Option<String>>(1)?,
                collate: row.get::<_, Option<String>>(2)?,
                ctype: row.get::<_, Option<String>>(3)?,
            })
        }));
        Ok(version)
    }

    /// `template1`'s encoding and locale (`None` when the server has no `template1`): what
    /// a database made without a template had when it was cloned from it.
    pub fn template1_locale(&mut self) -> Result<Option<Locale>, PgError> {
        if self.template1.is_none() {
            self.read_version()?;
        }
        Ok(self.template1.clone().flatten())
    }

    fn statement_error(&self, action: &str, source: postgres::Error) -> PgError {
        PgError::Statement {
            server: self.server.name.clone(),
            action: action.to_owned(),
            source,
        }
    }

    /// Turns a failure of this session into the provider's error, scrubbed of the password.
    pub fn fail(&self, e: PgError) -> ProviderError {
        let retry = e.retry();
        self.server.error(e.to_string(), retry)
    }
}

/// What went wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PgError {
    /// The server could not be reached, or refused the admin.
    #[error(
        "cannot connect to PostgreSQL server {server} at {url}{target}: {}",
        describe(source)
    )]
    Connect {
        /// The server's name in the engine config.
        server: String,
        /// Its redacted URL.
        url: String,
        /// ` (database "x")` when not the admin URL's database.
        target: String,
        /// The client's error.
        #[source]
        source: postgres::Error,
    },
    /// A statement failed.
    #[error(
        "failed to {action} on PostgreSQL server {server}: {}",
        describe(source)
    )]
    Statement {
        /// The server's name in the engine config.
        server: String,
        /// What was being done, e.g. `create database "x"`.
        action: String,
        /// The client's error.
        #[source]
        source: postgres::Error,
    },
}

impl PgError {
    /// The SQLSTATE the server answered, if it answered.
    pub fn code(&self) -> Option<&str> {
        let (PgError::Connect { source, .. } | PgError::Statement { source, .. }) = self;
        source.code().map(|c| c.code())
    }

    /// Whether the same operation may succeed later: see [`retry_for`]. Also an internal
    /// error (XX000) that is two sessions changing one catalog row at once: Slipway's own
    /// changes of a database's privileges take turns (`catalog::privileges_in_turn`), but an
    /// operator's `GRANT` at the same moment does not.
    pub fn retry(&self) -> Retry {
        let (PgError::Connect { source, .. } | PgError::Statement { source, .. }) = self;
        let concurrent = source.as_db_error().is_some_and(|db| {
            db.code().code() == "XX000" && db.message().starts_with("tuple concurrently")
        });
        if concurrent {
            return Retry::Retryable;
        }
        retry_for(self.code())
    }
}

/// Whether an error with this SQLSTATE (`None`: no answer from the server) may pass.
///
/// No SQLSTATE means the connection itself failed (refused, timed out, closed): that passes.
/// So do the classes that describe the server's condition rather than the request: connection
/// exceptions (08), transaction rollbacks like deadlocks (40), insufficient resources (53),
/// operator intervention like a restart (57), I/O errors (58000, 58030); and an object in use
/// or locked (55006, 55P03), or a name taken between our look-up and our create (42P04,
/// 42710, and 23505: two `CREATE DATABASE`/`CREATE ROLE` of one name at once meet on the
/// catalog's unique index instead; the statements here write no table of their own, only the
/// catalogs, so a unique violation can only be that), which the next attempt sees and judges
/// (one replica's create still in flight when its lease passed to another is the usual cause);
/// and a read-only transaction (25006): a standby answered, during a failover, or through a
/// connection made before it. Anything else (a bad password, a missing template or extension
/// file, dependent objects) needs someone to change something.
fn retry_for(code: Option<&str>) -> Retry {
    match code {
        None => Retry::Retryable,
        Some("55006" | "55P03" | "42P04" | "42710" | "23505" | "25006" | "58000" | "58030") => {
            Retry::Retryable
        }
        Some(code) if ["08", "40", "53", "57"].iter().any(|c| code.starts_with(c)) => {
            Retry::Retryable
        }
        Some(_) => Retry::Terminal,
    }
}

/// The server's own words and SQLSTATE for a server error; the client's description otherwise.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        // "error connecting to server", with its causes: "Connection refused (os error 111)".
        None => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                let c_text = c.to_string();
                if !text.contains(&c_text) {
                    text.push_str(": ");
                    text.push_str(&c_text);
                }
                cause = c.source();
            }
            text
        }
    }
}

/// `name` as a double-quoted SQL identifier, with any `"` doubled.
///
/// # Errors
/// A NUL character, which no identifier can hold (and which would cut the statement short).
pub(crate) fn ident(name: &str) -> Result<String, ProviderError> {
    if name.contains('\0') {
        return Err(ProviderError::Config(format!(
            "the name {name:?} contains a NUL character, which PostgreSQL names cannot hold"
        )));
    }
    // PostgreSQL cuts a longer identifier short, so it would name another object than the
    // one the name's checks were made for (a template looked up by its whole name, say).
    if name.len() > MAX_NAME_BYTES {
        return Err(ProviderError::Config(format!(
            "the name {name:?} is {} bytes long; PostgreSQL names hold at most \
             {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// `text` as a SQL string constant: single quotes doubled; if it holds a backslash, written as
/// an escape string (`E'...'`) with backslashes doubled too, so that it reads the same whatever
/// `standard_conforming_strings` is (as libpq's `PQescapeLiteral` does).
///
/// # Errors
/// A NUL character, which no string constant can hold.
pub(crate) fn literal(text: &str) -> Result<String, ProviderError> {
    if text.contains('\0') {
        return Err(ProviderError::Config(
            "a value for PostgreSQL contains a NUL character, which SQL strings cannot hold"
                .to_owned(),
        ));
    }
    let quoted = text.replace('\'', "''");
    Ok(if quoted.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    })
}

/// The password as written in a URL that may not parse, to scrub it from parse errors.
fn textual_password(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let userinfo = &rest[..rest.rfind('@')?];
    userinfo
        .split_once(':')
        .map(|(_, p)| p.to_owned())
        .filter(|p| !p.is_empty())
}

/// `message` with every occurrence of `password` replaced by `***`.
///
/// A defence in depth: URLs are already shown redacted, and PostgreSQL never echoes a password.
/// Passwords shorter than 4 bytes are left alone, or every `p` of a message would go for `p`.
fn scrub(message: &str, password: Option<&str>) -> String {
    match password {
        Some(p) if p.len() >= 4 => message.replace(p, "***"),
        _ => message.to_owned(),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Text parameters with their type given, for `query_typed`.
fn typed<'a>(params: &'a [&'a str]) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|p| (p as &(dyn ToSql + Sync), Type::TEXT))
        .collect()
}

/// A new password: 32 characters of `[A-Za-z0-9]` from the operating system's generator,
/// without modulo bias.
pub(crate) fn generate_password() -> Result<String, ProviderError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // The largest multiple of 62 that fits a byte: bytes at or above it are drawn again.
    const LIMIT: u8 = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    let mut password = String::with_capacity(32);
    let mut buf = [0u8; 64];
    while password.len() < 32 {
        getrandom::fill(&mut buf).map_err(|e| ProviderError::Failed {
            message: format!(
                "cannot generate a password: the system's random generator failed ({e})"
            ),
            log_tail: None,
            retry: Retry::Retryable,
        })?;
        for &b in buf.iter().filter(|&&b| b < LIMIT) {
            if password.len() == 32 {
                break;
            }
            password.push(ALPHABET[usize::from(b) % ALPHABET.len()] as char);
        }
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    use slipway_testkit::pg::TestRole;

    fn target_name(role: &TestRole) -> String {
        role.url()
            .strip_prefix("postgres://")
            .and_then(|rest| rest.split('@').next())
            .unwrap()
            .to_owned()
    }

    /// What a connection made ahead asks when the test does not care: nothing is found.
    fn nothing() -> Ahead {
        super::super::catalog::role_and_database_ahead("", "")
    }

    /// A server reached as `role`, which makes connections ahead.
    fn server_as(role: &TestRole) -> Server {
        Server::parse("main", &role.url())
            .unwrap()
            .with_warm(Arc::default())
    }

    fn backend_pid(s: &mut Session<'_>) -> i32 {
        s.query("read the backend's pid", "select pg_backend_pid()", &[])
            .unwrap()[0]
            .get(0)
    }

    #[test]
    fn the_connection_made_ahead_is_the_one_the_next_connect_gets_and_only_it() {
        let role = TestRole::create("swtest_warm", "LOGIN");
        let server = server_as(&role);
        server.warm(nothing());
        // Asked again while it is made, or waits: still the one.
        server.warm(nothing());
        let made = role.wait_for_sessions(1)[0];
        server.clone().warm(nothing());
        assert_eq!(role.sessions(), [made]);

        let mut first = server.connect().unwrap();
        assert_eq!(backend_pid(&mut first), made);
        let mut second = server.connect().unwrap();
        assert_ne!(backend_pid(&mut second), made);
        // A session to another database is never it.
        server.warm(nothing());
        let waiting = role.wait_for_sessions(3);
        let mut other = server.connect_to(Some("template1")).unwrap();
        assert!(!waiting.contains(&backend_pid(&mut other)));
    }

    /// The pid of the one session of `role`, a connection made ahead, once it has answered
    /// its question.
    fn answered_ahead(role: &TestRole) -> i32 {
        let pid = role.wait_for_sessions(1)[0];
        let mut admin = Client::connect(slipway_testkit::pg::ADMIN_URL, NoTls).unwrap();
        slipway_testkit::wait::wait_for(
            "the connection made ahead to answer its question",
            Duration::from_secs(20),
            || {
                let row = admin
                    .query_one(
                        "select state = 'idle' and query like 'select %' \
                         from pg_stat_activity where pid = $1",
                        &[&pid],
                    )
                    .ok()?;
                row.get::<_, bool>(0).then_some(pid)
            },
        )
    }

    /// Whether the role of `ahead`'s look-up exists, as `s` finds it with that same query.
    fn role_found(s: &mut Session<'_>, ahead: &Ahead) -> bool {
        let params: Vec<&str> = ahead.params.iter().map(String::as_str).collect();
        s.query("look up", ahead.sql, &params).unwrap()[0]
            .get::<_, Option<u32>>(1)
            .is_some()
    }

    /// The session's first query, when it is the one asked ahead, takes the answer: the test
    /// sees it by dropping the role in between (the answer still has it).
    #[test]
    fn the_first_query_of_a_session_made_ahead_takes_the_answer_to_the_same_question() {
        let role = TestRole::create("swtest_warm", "LOGIN");
        let target = TestRole::create("swtest_target", "NOLOGIN");
        let server = server_as(&role);
        let ahead = super::super::catalog::role_and_database_ahead(&target_name(&target), "");
        server.warm(ahead.clone());
        let made = answered_ahead(&role);
        drop(target);

        let mut s = server.connect().unwrap();
        assert!(role_found(&mut s, &ahead), "the answer given ahead");
        assert_eq!(backend_pid(&mut s), made);
        assert!(!role_found(&mut s, &ahead), "asked again: the role is gone");
    }

    /// A function planted in `public` of the admin database (where any role may create on
    /// PostgreSQL 14 and older) that a look-up would call instead of the system's, as the
    /// admin, is never called; every admin session, to any database, resolves names in
    /// `pg_catalog` alone, whatever the database's own setting, and keeps the URL's options.
    #[test]
    fn an_admin_session_calls_the_systems_functions_whatever_public_holds() {
        let db = slipway_testkit::pg::TestDatabase::create("swtest_planted");
        let mut planter = db.connect();
        planter
            .batch_execute(
                "create sequence public.calls; \
                 create function public.shobj_description(oid, text) returns text \
                 language sql as $$ select 'slipway:' || nextval('public.calls') $$",
            )
            .unwrap();
        let calls = |c: &mut Client| -> i64 {
            c.query_one(
                "select case when is_called then last_value else 0 end from public.calls",
                &[],
            )
            .unwrap()
            .get(0)
        };
        let server = Server::parse(
            "main",
            &format!(
                "{}?options=-c%20work_mem%3D8MB%20-c%20lock_timeout%3D3s",
                db.url()
            ),
        )
        .unwrap();
        let mut s = server.connect().unwrap();
        let (_, database) = super::super::catalog::role_and_database(
            &mut s,
            "postgres",
            "template1",
            "slipway:1",
            super::super::catalog::Login::Skip,
        )
        .unwrap();
        assert_eq!(
            calls(&mut planter),
            0,
            "the planted function ran: {database:?}"
        );
        let setting = |s: &mut Session<'_>, name: &str| -> String {
            s.query("show", "select current_setting($1)", &[name])
                .unwrap()[0]
                .get(0)
        };
        assert_eq!(setting(&mut s, "search_path"), "pg_catalog");
        assert_eq!(
            setting(&mut s, "work_mem"),
            "8MB",
            "the URL's own options stay"
        );
        // A database's own settings (its owner may make them) give way to the session's, and
        // those to the URL's.
        planter
            .batch_execute(&format!(
                "alter database {name} set search_path = public, pg_catalog; \
                 alter database {name} set lock_timeout = '1ms'; \
                 alter database {name} set statement_timeout = '1ms'; \
                 alter database {name} set idle_session_timeout = '1s'",
                name = db.name()
            ))
            .unwrap();
        let mut other = server.connect_to(Some(db.name())).unwrap();
        assert_eq!(setting(&mut other, "search_path"), "pg_catalog");
        assert_eq!(setting(&mut other, "work_mem"), "8MB");
        assert_eq!(setting(&mut other, "lock_timeout"), "3s", "the URL's");
        assert_eq!(setting(&mut other, "statement_timeout"), "0");
        assert_eq!(setting(&mut other, "idle_session_timeout"), "0");
    }

    /// Any other statement first, other parameters, an answer older than `AHEAD_FRESH`, or
    /// one asked before a statement of another session of the same servers: the server is
    /// asked.
    #[test]
    fn an_answer_made_ahead_serves_no_other_statement_nor_a_later_one() {
        let role = TestRole::create("swtest_warm", "LOGIN");
        let server = server_as(&role);
        // A role asked about ahead, then dropped; `first` runs on the session that takes the
        // connection, then the same question must find the role gone.
        let check = |first: &dyn Fn(&mut Session<'_>, &Ahead, i32)| {
            let target = TestRole::create("swtest_target", "NOLOGIN");
            let ahead = super::super::catalog::role_and_database_ahead(&target_name(&target), "");
            server.warm(ahead.clone());
            let made = answered_ahead(&role);
            drop(target);
            let mut s = server.connect().unwrap();
            first(&mut s, &ahead, made);
            assert!(!role_found(&mut s, &ahead), "asked again: the role is gone");
            drop(s);
            role.wait_for_sessions(0);
        };
        check(&|s, _, _| s.execute("do nothing", "select 1").unwrap());
        check(&|s, _, made| assert_eq!(backend_pid(s), made, "another query is asked"));
        check(&|s, ahead, _| {
            let params: Vec<&str> = ahead.params.iter().map(String::as_str).collect();
            let rows = s.query("join", "select $1 || '/' || $2", &params).unwrap();
            let joined: String = rows[0].get(0);
            assert_eq!(
                joined,
                format!("{}/", ahead.params[0]),
                "another query, same params"
            );
        });
        check(&|s, ahead, _| {
            let params = [ahead.params[0].as_str(), "postgres"];
            let rows = s.query("look up", ahead.sql, &params).unwrap();
            assert!(
                rows[0].get::<_, Option<u32>>(1).is_none(),
                "other parameters are asked: role gone"
            );
            assert!(rows[0].get::<_, bool>(4), "and database postgres found");
        });
        check(&|_, _, _| std::thread::sleep(AHEAD_FRESH));
        // Another configured server sharing the connections made ahead (the same cluster
        // under two names, say) ran a statement after the answer was asked.
        let other = Server::parse("other", &role.url())
            .unwrap()
            .with_warm(server.warm.clone().unwrap());
        check(&|_, _, _| {
            let mut s = other.connect().unwrap();
            s.execute("do nothing", "select 1").unwrap();
        });
    }

    /// The pid of a connection made ahead for `server` as `role`, which the server ended once
    /// it had answered.
    fn ended_after_its_answer(role: &TestRole, server: &Server) -> i32 {
        server.warm(nothing());
        let made = answered_ahead(role);
        Client::connect(slipway_testkit::pg::ADMIN_URL, NoTls)
            .unwrap()
            .execute("select pg_terminate_backend($1)", &[&made])
            .unwrap();
        role.wait_for_sessions(0);
        made
    }

    #[test]
    fn a_connection_made_ahead_that_the_server_ended_is_replaced() {
        let role = TestRole::create("swtest_warm", "LOGIN");
        let server = server_as(&role);
        let made = ended_after_its_answer(&role, &server);
        // Its answer no longer vouches for it.
        std::thread::sleep(AHEAD_FRESH);

        let mut s = server.connect().unwrap();
        let now = backend_pid(&mut s);
        assert_ne!(now, made);
        assert_eq!(role.sessions(), [now]);
    }

    /// Ended while its answer is fresh, it is taken unchecked: its first statement fails,
    /// retryable, as it would had the server ended it a moment after the check.
    #[test]
    fn a_connection_ended_while_its_answer_is_fresh_fails_its_first_statement_retryably() {
        let role = TestRole::create("swtest_warm", "LOGIN");
        let server = server_as(&role);
        ended_after_its_answer(&role, &server);

        let mut s = server.connect().unwrap();
        let e = s
            .execute("do nothing", "select 1")
            .expect_err("the session was ended");
        assert!(s.fail(e).retryable());
    }

    /// In a long-lived process (`serve`) nothing may take it: it is closed after `WARM_FOR`.
    #[test]
    fn a_connection_made_ahead_and_never_taken_is_closed() {
        let role = TestRole::create("swtest_warm", "LOGIN");
        let server = server_as(&role);
        server.warm(nothing());
        let made = role.wait_for_sessions(1)[0];
        let closed = Instant::now();
        role.wait_for_sessions(0);
        assert!(closed.elapsed() > WARM_FOR / 2, "{:?}", closed.elapsed());
        let mut s = server.connect().unwrap();
        assert_ne!(backend_pid(&mut s), made);
        // And a new one can be made ahead again.
        drop(s);
        server.warm(nothing());
        let again = role.wait_for_sessions(1)[0];
        let mut s = server.connect().unwrap();
        assert_eq!(backend_pid(&mut s), again);
    }

    /// A failure to connect ahead is the `connect`'s answer only while it is fresh: the
    /// connect does not wait for a second refusal, nor holds on to an old one.
    #[test]
    fn a_failure_to_connect_ahead_is_reported_while_fresh_then_tried_again() {
        // A "server" that takes each connection and closes it at once, counting them.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        {
            let taken = taken.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    drop(stream);
                }
            });
        }
        let count = || taken.load(std::sync::atomic::Ordering::SeqCst);
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let server = Server::parse("main", &url)
            .unwrap()
            .with_warm(Arc::default());
        server.warm(nothing());
        assert!(server.connect().is_err());
        assert_eq!(count(), 1, "the failure ahead is the answer");
        server.warm(nothing());
        let deadline = Instant::now() + Duration::from_secs(10);
        while count() < 2 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(WARM_FAILURE_FRESH + Duration::from_millis(200));
        assert!(server.connect().is_err());
        assert_eq!(count(), 3, "an old failure is tried again");
    }

    #[test]
    fn a_server_that_cannot_be_reached_ahead_is_reported_by_the_connect_as_without() {
        let url = "postgres://postgres@127.0.0.1:1/postgres";
        let ahead = Server::parse("main", url)
            .unwrap()
            .with_warm(Arc::default());
        ahead.warm(nothing());
        let with = ahead.connect().map(drop).unwrap_err();
        let without = Server::parse("main", url)
            .unwrap()
            .connect()
            .map(drop)
            .unwrap_err();
        assert_eq!(with.to_string(), without.to_string());
        assert!(with.to_string().contains("main"), "{with}");
        assert!(with.retryable(), "{with}");
    }

    #[test]
    fn parse_errors_and_connect_errors_hide_the_password() {
        let err = Server::parse("main", "postgres://admin:hunter2@host:notaport/db")
            .expect_err("a bad port is refused");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("main"), "{err} names the server");
        assert_eq!(
            scrub("auth failed for hunter2", Some("hunter2")),
            "auth failed for ***",
            "a password echoed by an error is removed"
        );
    }

    #[test]
    fn server_conditions_are_retryable_and_requests_terminal() {
        for code in [
            None,
            Some("08006"),
            Some("40P01"),
            Some("53300"),
            Some("57P03"),
        ] {
            assert_eq!(retry_for(code), Retry::Retryable, "{code:?} may pass");
        }
        for code in ["55006", "55P03", "42P04", "23505", "25006"] {
            assert_eq!(retry_for(Some(code)), Retry::Retryable, "{code} may pass");
        }
        for code in [
            "28P01", "28000", "3D000", "2BP01", "42501", "0A000", "58P01",
        ] {
            assert_eq!(
                retry_for(Some(code)),
                Retry::Terminal,
                "{code} needs a change"
            );
        }
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(
            ident("a\"b").expect("plain"),
            "\"a\"\"b\"",
            "quotes doubled"
        );
        assert!(ident("a\0b").is_err(), "NUL refused in an identifier");
        assert!(ident(&"a".repeat(63)).is_ok(), "63 bytes are kept whole");
        // 64 bytes: PostgreSQL would cut it to the first 63, another object's name.
        let long = ident(&format!("{}b", "a".repeat(63))).expect_err("64 bytes refused");
        assert!(long.to_string().contains("at most 63"), "{long}");
        assert!(
            ident(&"é".repeat(32)).is_err(),
            "bytes count, not characters"
        );
        assert_eq!(literal("it's").expect("plain"), "'it''s'", "quotes doubled");
        assert_eq!(
            literal("a\\'b").expect("plain"),
            "E'a\\\\''b'",
            "a backslash makes an escape string"
        );
        assert!(literal("a\0b").is_err(), "NUL refused in a literal");
    }

    #[test]
    fn passwords_are_32_alphanumerics() {
        let a = generate_password().expect("random");
        let b = generate_password().expect("random");
        assert_eq!(a.len(), 32, "length");
        assert!(
            a.bytes().all(|c| c.is_ascii_alphanumeric()),
            "{a} is alphanumeric"
        );
        assert_ne!(a, b, "two passwords differ");
    }

    #[test]
    fn client_urls_are_percent_encoded() {
        let server = Server::parse("main", "postgres://postgres@[::1]:6543/postgres")
            .expect("an IPv6 URL parses");
        assert_eq!(
            server.client_url("sw_qa_db", "a b", "sw_qa_db"),
            "postgres://sw_qa_db:a%20b@[::1]:6543/sw_qa_db",
            "IPv6 hosts are bracketed and the password encoded"
        );
    }
}
