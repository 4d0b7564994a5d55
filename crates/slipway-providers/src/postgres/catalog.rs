//! What exists on a server under our names, whether it is ours, and the statements that
//! create and drop it. Every function here checks nothing itself: callers decide with
//! [`role_and_database`] and [`role`] first, but for the statements the server itself
//! refuses over an existing name ([`create_role_without_login`], a first create's database).

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::sql::{Ahead, PgError, Server, Session, ident, literal};
use crate::{ProviderError, Retry};

/// Who a database or role of our name belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ownership {
    /// Nothing has the name.
    Absent,
    /// It carries our marker (see the module's guarantees).
    Ours,
    /// Something else has the name; the text says what it carries, for messages.
    Foreign(String),
}

/// A role of our name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoleFound {
    pub ownership: Ownership,
    /// Whether it may log in, when it was asked (`None`: absent, or not asked).
    pub can_login: Option<bool>,
    /// Its oid (`None`: absent).
    pub oid: Option<u32>,
}

/// A database of our name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DatabaseFound {
    pub ownership: Ownership,
    /// Its owner role (empty when absent).
    pub owner: String,
}

fn foreign(comment: Option<&str>) -> Ownership {
    Ownership::Foreign(match comment {
        Some(comment) => format!("its comment is {comment:?}"),
        None => "it has no Slipway comment".to_owned(),
    })
}

/// [`role`]'s query.
const ROLE: &str = "select pg_catalog.shobj_description(oid, 'pg_authid'::pg_catalog.name), rolcanlogin, \
     oid from pg_roles where rolname = $1";

/// [`role`] of `name`, asked by a connection made ahead (see [`Ahead`]).
pub(crate) fn role_ahead(name: &str) -> Ahead {
    Ahead {
        sql: ROLE,
        params: vec![name.to_owned()],
    }
}

/// The role called `name`, judged against `marker`.
pub(crate) fn role(s: &mut Session<'_>, name: &str, marker: &str) -> Result<RoleFound, PgError> {
    let rows = s.query(&format!("look up role {name:?}"), ROLE, &[name])?;
    Ok(match rows.first() {
        None => RoleFound::ABSENT,
        Some(row) => RoleFound::judged(row.get(2), row.get(0), row.get(1), marker),
    })
}

/// The role called `role_name` (as [`role`]) and the database called `database_name`, each
/// judged against `marker`; a database is ours with our marker, or when its owner role
/// carries our marker (see the module's guarantees). One round trip, which also keeps
/// the server's version for the session: a create asked three questions before it changed
/// anything, and the first queries of a new backend are its slowest (each loads the catalogs
/// it reads).
pub(crate) fn role_and_database(
    s: &mut Session<'_>,
    role_name: &str,
    database_name: &str,
    marker: &str,
    login: Login,
) -> Result<(RoleFound, DatabaseFound), PgError> {
    let rows = s.query(
        &format!("look up role {role_name:?} and database {database_name:?}"),
        match login {
            Login::Skip => ROLE_AND_DATABASE,
            Login::Read => ROLE_AND_DATABASE_AND_LOGIN,
        },
        &[role_name, database_name],
    )?;
    // One row always: the joins are on unique names, from a row of nothing.
    let Some(row) = rows.first() else {
        return Ok((RoleFound::ABSENT, DatabaseFound::ABSENT));
    };
    s.learned_version(row.get(0));
    let role = match row.get(1) {
        Some(oid) => RoleFound::judged(oid, row.get(2), row.get(3), marker),
        None => RoleFound::ABSENT,
    };
    let database = if row.get(4) {
        DatabaseFound::judged(row.get(5), row.get(6), row.get(7), marker)
    } else {
        DatabaseFound::ABSENT
    };
    Ok((role, database))
}

/// Whether [`role_and_database`] reads whether the role may log in: only a drift check needs
/// it, and it costs `pg_roles`, a view whose planning is most of what a new backend's first
/// query spends (1.5 ms against 0.75 ms here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Login {
    Skip,
    Read,
}

/// The query of [`role_and_database`], with `$login` the column of `rolcanlogin`: `$1` the
/// role's name, `$2` the database's. The role is found by `to_regrole`, a lookup in the
/// catalog's cache, on its quoted name; a name PostgreSQL would cut short (over 63 bytes)
/// names no role. `shobj_description` is named with its schema, its second argument typed:
/// an untyped one would make a `public.shobj_description(oid, text)` the better match
/// wherever the session's `search_path` (`sql::CATALOG_ONLY`) did not reach the server.
macro_rules! role_and_database_sql {
    ($login:literal) => {
        concat!(
            "select current_setting('server_version_num')::int4, r.oid, \
                pg_catalog.shobj_description(r.oid, 'pg_authid'::pg_catalog.name), ",
            $login,
            ", d.oid is not null, \
                pg_catalog.shobj_description(d.oid, 'pg_database'::pg_catalog.name), \
                pg_get_userbyid(d.datdba)::text, \
                pg_catalog.shobj_description(d.datdba, 'pg_authid'::pg_catalog.name) \
             from (select case when octet_length($1) <= 63 \
                               then to_regrole(quote_ident($1))::oid end as oid) r \
             left join pg_database d on d.datname = $2"
        )
    };
}

/// [`role_and_database`] without whether the role may log in (`Login::Skip`).
const ROLE_AND_DATABASE: &str = role_and_database_sql!("null::bool");

/// [`role_and_database`] of `role` and `database`, without the login, asked by a connection
/// made ahead (see [`Ahead`]): what an update of a database asks first.
pub(crate) fn role_and_database_ahead(role: &str, database: &str) -> Ahead {
    Ahead {
        sql: ROLE_AND_DATABASE,
        params: vec![role.to_owned(), database.to_owned()],
    }
}

/// [`recorded_owner`]'s query: `$1` the role's name, `$2` the database's.
const RECORDED_OWNER: &str = "select case when octet_length($1) <= 63 \
                                   then to_regrole(quote_ident($1))::oid end, \
            (select datdba from pg_database where datname = $2)";

/// [`recorded_owner`] of `role` and `database`, asked by a connection made ahead (see
/// [`Ahead`]): what a delete asks first.
pub(crate) fn recorded_owner_ahead(role: &str, database: &str) -> Ahead {
    Ahead {
        sql: RECORDED_OWNER,
        params: vec![role.to_owned(), database.to_owned()],
    }
}

/// Whether the role called `role_name` is still the one of oid `oid` that a create recorded,
/// and so ours (only a superuser's binary upgrade, `pg_upgrade`, sets a role's oid; it
/// keeps the role's comment too), and the database called
/// `database_name` absent or owned by it, and so ours (see the module's guarantees): their
/// ownership then, `None` otherwise, for the caller to look at the markers
/// ([`role_and_database`]). It reads no comment: on a new backend it costs half that look-up
/// (0.85 ms against 1.6 ms here, with 0.3 ms of it any query's round trip).
pub(crate) fn recorded_owner(
    s: &mut Session<'_>,
    role_name: &str,
    database_name: &str,
    oid: u32,
) -> Result<Option<(Ownership, Ownership)>, PgError> {
    let rows = s.query(
        &format!("look up role {role_name:?} and database {database_name:?}"),
        RECORDED_OWNER,
        &[role_name, database_name],
    )?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    if row.get::<_, Option<u32>>(0) != Some(oid) {
        return Ok(None);
    }
    Ok(match row.get::<_, Option<u32>>(1) {
        None => Some((Ownership::Ours, Ownership::Absent)),
        Some(owner) if owner == oid => Some((Ownership::Ours, Ownership::Ours)),
        Some(_) => None,
    })
}

/// [`role_and_database`] with it (`Login::Read`).
const ROLE_AND_DATABASE_AND_LOGIN: &str =
    role_and_database_sql!("(select rolcanlogin from pg_roles where oid = r.oid)");

impl RoleFound {
    const ABSENT: RoleFound = RoleFound {
        ownership: Ownership::Absent,
        can_login: None,
        oid: None,
    };

    /// A role that exists, with its `oid`, its `comment` and its `rolcanlogin` (if read).
    fn judged(
        oid: u32,
        comment: Option<String>,
        can_login: Option<bool>,
        marker: &str,
    ) -> RoleFound {
        RoleFound {
            ownership: if comment.as_deref() == Some(marker) {
                Ownership::Ours
            } else {
                foreign(comment.as_deref())
            },
            can_login,
            oid: Some(oid),
        }
    }
}

impl DatabaseFound {
    const ABSENT: DatabaseFound = DatabaseFound {
        ownership: Ownership::Absent,
        owner: String::new(),
    };

    /// A database that exists, with its `comment`, its `owner` role and that role's comment.
    fn judged(
        comment: Option<String>,
        owner: Option<String>,
        owner_comment: Option<String>,
        marker: &str,
    ) -> DatabaseFound {
        // Its owner, the environment's role, may change the database's comment: ours all the
        // same, or its code could make it outlive the environment.
        let ours = comment.as_deref() == Some(marker) || owner_comment.as_deref() == Some(marker);
        DatabaseFound {
            ownership: if ours {
                Ownership::Ours
            } else {
                foreign(comment.as_deref())
            },
            owner: owner.unwrap_or_default(),
        }
    }
}

/// Whether the database `name` was made by Slipway (any home): its comment, or its owner
/// role's, is a `slipway:` marker. Returns the marker, for messages.
pub(crate) fn slipway_made(s: &mut Session<'_>, name: &str) -> Result<Option<String>, PgError> {
    let rows = s.query(
        &format!("look up database {name:?}"),
        "select pg_catalog.shobj_description(d.oid, 'pg_database'::pg_catalog.name), \
                pg_catalog.shobj_description(r.oid, 'pg_authid'::pg_catalog.name) \
         from pg_database d left join pg_roles r on r.oid = d.datdba \
         where d.datname = $1",
        &[name],
    )?;
    Ok(rows.first().and_then(|row| {
        let comment: Option<String> = row.get(0);
        let owner_comment: Option<String> = row.get(1);
        [comment, owner_comment]
            .into_iter()
            .flatten()
            .find(|c| c.starts_with("slipway:"))
            .map(|c| format!("marked {c:?}"))
    }))
}

/// The terminal error for a name taken by something that is not ours.
pub(crate) fn not_ours(server: &Server, kind: &str, name: &str, why: &str) -> ProviderError {
    server.error(
        format!(
            "{kind} \"{name}\" already exists on PostgreSQL server {} and was not created by \
             this Slipway home ({why}); Slipway never adopts or drops what it did not create: \
             drop or rename it yourself if it is not needed",
            server.name
        ),
        Retry::Terminal,
    )
}

/// A role's password on its way to the server, which stores only its SCRAM-SHA-256 verifier
/// (salted, 4,096 iterations: what `password_encryption = scram-sha-256` makes, and what
/// psql's `\password` sends). Made here, not by the server: the plain password never crosses
/// the connection, so no `log_statement` or `pg_stat_activity` shows it; and the hashing runs
/// on a thread of its own from [`RolePassword::hashing`] on, while the connection is made and
/// the role created or the catalog looked up, instead of in the server's backend after them.
pub(crate) struct RolePassword {
    plain: String,
    verifier: Option<JoinHandle<String>>,
    /// [`RolePassword::literal`]'s answer, once made.
    made: Option<String>,
}

impl RolePassword {
    /// Starts hashing `password`.
    pub fn hashing(password: &str) -> RolePassword {
        let plain = password.to_owned();
        let verifier = std::thread::Builder::new()
            .name("scram".to_owned())
            .spawn({
                let plain = plain.clone();
                move || postgres_protocol::password::scram_sha_256(plain.as_bytes())
            })
            .ok();
        RolePassword {
            plain,
            verifier,
            made: None,
        }
    }

    /// The `PASSWORD` clause's literal: the verifier, or the plain password for a server
    /// older than PostgreSQL 10 (which knows no SCRAM, and would store the verifier as the
    /// password itself).
    /// Made once: a second call gives the same literal.
    pub fn literal(&mut self, s: &mut Session<'_>) -> Result<String, ProviderError> {
        if let Some(made) = &self.made {
            return Ok(made.clone());
        }
        let version = s.server_version().map_err(|e| s.fail(e))?;
        let made = if version < 100_000 {
            literal(&self.plain)?
        } else {
            let verifier = match self.verifier.take().map(JoinHandle::join) {
                Some(Ok(verifier)) => verifier,
                // No thread could be started (or it died): hash here.
                _ => postgres_protocol::password::scram_sha_256(self.plain.as_bytes()),
            };
            literal(&verifier)?
        };
        self.made = Some(made.clone());
        Ok(made)
    }
}

/// Makes the role `name` exist with our marker, `login` and `password`: creates it (with its
/// marker, in one transaction) when absent, or sets both on our existing one; and with
/// `limit` as its `CONNECTION LIMIT` when given (see `ConnectionLimits`).
///
/// # Assumptions
/// The caller checked that any role of this name is ours.
///
/// `cap`, when given ([`role_cap`]), runs first in the same transaction when the role is
/// made.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ensure_role(
    s: &mut Session<'_>,
    found: &RoleFound,
    name: &str,
    marker: &str,
    login: bool,
    mut password: RolePassword,
    limit: Option<i32>,
    cap: Option<&str>,
) -> Result<(), ProviderError> {
    let role = ident(name)?;
    let login = if login { "LOGIN" } else { "NOLOGIN" };
    let limit = connection_limit(limit);
    let password = password.literal(s)?;
    let comment = format!("COMMENT ON ROLE {role} IS {}", literal(marker)?);
    let (action, change) = match found.ownership {
        Ownership::Absent => ("create", "CREATE"),
        _ => ("update", "ALTER"),
    };
    let mut statements = Vec::with_capacity(3);
    if let Some(cap) = cap.filter(|_| found.ownership == Ownership::Absent) {
        statements.push(cap.to_owned());
    }
    statements.push(format!(
        "{change} ROLE {role} {login} PASSWORD {password}{limit}"
    ));
    statements.push(comment);
    s.execute_atomically(&format!("{action} role {name:?}"), &statements)
        .map_err(|e| s.fail(e))
}

/// The first key of [`role_cap`]'s lock ("SLRC").
const ROLE_CAP_LOCK: i32 = 0x534c_5243;

/// A `DO` block that fails (`P0001`, saying why) when the server already holds `max` roles
/// whose marker starts with `prefix` (an environment's, see `PgServers::environment_marker`),
/// under a lock of that prefix held until the transaction ends, so that two creates of one
/// environment count in turn. Run first in the transaction that makes a role: the roles a
/// generated or ad-hoc environment has are counted where they are, so one whose drop failed
/// (it still owns something its code made) counts as long as it exists, whatever the
/// branch's `slipway.yaml` now declares.
///
/// The role `role` about to be made is not counted: one of that name that exists already
/// makes the `CREATE ROLE` fail as it should (a name taken, looked up then), not the cap.
pub(crate) fn role_cap(
    prefix: &str,
    max: u32,
    role: &str,
    environment: &str,
    server: &str,
) -> Result<String, ProviderError> {
    let refusal = format!(
        "slipway: environment {environment} has {max} PostgreSQL roles on server {server} \
         already, as many as a generated or ad-hoc environment may have ([environments] \
         max_postgres_roles); a role its delete could not drop (it still owns something) \
         counts until it is gone"
    );
    let body = format!(
        "BEGIN PERFORM pg_catalog.pg_advisory_xact_lock({ROLE_CAP_LOCK}, \
         pg_catalog.hashtext({prefix_literal})); \
         IF (SELECT pg_catalog.count(*) FROM pg_catalog.pg_roles d WHERE {starts} \
         AND d.rolname OPERATOR(pg_catalog.<>) {role_literal}) \
         OPERATOR(pg_catalog.>=) {max} THEN RAISE EXCEPTION USING MESSAGE = {refusal}; \
         END IF; END",
        prefix_literal = literal(prefix)?,
        role_literal = literal(role)?,
        starts = comment_starts("d.oid", "pg_authid", prefix)?,
        refusal = literal(&refusal)?,
    );
    Ok(format!("DO {}", literal(&body)?))
}

/// Creates the role `name` with our marker (one transaction), unable to log in and without
/// a password: [`set_login`] gives it both, from another session.
///
/// A `PASSWORD` clause costs the server as much as the rest of a role's creation: it checks
/// that the password is not the empty one by hashing `""` with the verifier's salt and
/// iterations (4,096 rounds of PBKDF2, a few milliseconds of its backend). Made this way, the
/// role's password is set on a second session while the first creates its database.
///
/// `None`, with nothing made, when a role of this name exists already (whoever's): the
/// server refuses a second one, so a role this makes is ours whatever anyone else does. The
/// role's oid otherwise, read in the same round trip (some 0.07 ms of the server's), which a
/// delete checks instead of the marker ([`recorded_owner`]).
pub(crate) fn create_role_without_login(
    s: &mut Session<'_>,
    name: &str,
    marker: &str,
    cap: Option<&str>,
) -> Result<Option<u32>, ProviderError> {
    let role = ident(name)?;
    let mut statements: Vec<String> = cap.map(str::to_owned).into_iter().collect();
    statements.push(format!("CREATE ROLE {role} NOLOGIN"));
    statements.push(format!("COMMENT ON ROLE {role} IS {}", literal(marker)?));
    match s.execute_atomically_then(
        &format!("create role {name:?}"),
        &statements,
        &format!(
            "SELECT pg_catalog.to_regrole({}::pg_catalog.text)::pg_catalog.oid",
            literal(&role)?
        ),
    ) {
        Ok(oid) => match oid.as_deref().map(str::parse) {
            Some(Ok(oid)) => Ok(Some(oid)),
            _ => Err(s.server.error(
                format!("the server did not say the oid of the role {name:?} it made: {oid:?}"),
                Retry::Retryable,
            )),
        },
        // duplicate_object; unique_violation when another session makes it at the same time
        Err(e) if matches!(e.code(), Some("42710" | "23505")) => Ok(None),
        Err(e) => Err(s.fail(e)),
    }
}

/// Lets the roles `roles` connect to the database `database`, and make temporary tables in
/// it, each only if it exists and carries a marker starting with `prefix` (one of this
/// home's roles of the database's environment): the statement, `None` when `roles` is empty.
///
/// By default every role may do both in every database. An environment's database takes
/// both back from `PUBLIC`, since another environment's role, whose password that
/// environment's code holds, could otherwise read its catalog (its functions' source) and,
/// on PostgreSQL 14 and older, create in its `public` what its code calls. Its own
/// environment's `postgres.role`s connected to it before and still do: the database lets in
/// the roles already made that this node has records of intent of ([`let_in`], when it is
/// made or updated: a `DO` block, some 0.7 ms on a new backend, only when there is one); a
/// role is let into the databases already made, which it finds on the server
/// ([`let_in_to`], when it is made or updated); a role's delete takes back what they granted
/// it ([`drop_role`]'s `DROP OWNED BY`, or it could not be dropped). Whatever names them,
/// the marker, which only the admin sets, says they are the environment's.
pub(crate) fn let_in(
    database: &str,
    roles: &[String],
    prefix: &str,
) -> Result<Option<String>, ProviderError> {
    if roles.is_empty() {
        return Ok(None);
    }
    let database = ident(database)?;
    let prefix = literal(prefix)?;
    // The block's body goes as a string literal: every name and value in it quoted inside,
    // then the whole quoted again.
    let mut body = String::from("BEGIN\n");
    for role in roles {
        body.push_str(&format!(
            "IF pg_catalog.left(pg_catalog.shobj_description(pg_catalog.to_regrole({}::\
             pg_catalog.text)::pg_catalog.oid, 'pg_authid'::pg_catalog.name), \
             pg_catalog.length({prefix})) = {prefix} THEN \
             GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {}; END IF;\n",
            literal(&ident(role)?)?,
            ident(role)?
        ));
    }
    body.push_str("END");
    Ok(Some(format!("DO {}", literal(&body)?)))
}

/// Lets the role `role` into every database of the server whose name starts with `names`
/// (`names::environment_prefix`) and whose owner carries a marker starting with `prefix`
/// (its environment's: the owner's marker, which the database's own code cannot change),
/// found on the server, not in this node's records: another replica may have made them. See
/// [`let_in`].
pub(crate) fn let_in_to(role: &str, names: &str, prefix: &str) -> Result<String, ProviderError> {
    let statement = format!(
        "GRANT CONNECT, TEMPORARY ON DATABASE %I TO {}",
        ident(role)?.replace('%', "%%")
    );
    let databases = format!(
        "SELECT datname::pg_catalog.text FROM pg_catalog.pg_database WHERE {}",
        of_the_environment(names, prefix)?
    );
    on_each_database(&databases, &statement)
}

/// The condition on a row of `pg_database` that it is a database of the server whose name
/// starts with `names` and whose owner's marker starts with `prefix`. The names are narrowed
/// with `LIKE` first (a scan of names, about a millisecond at 10,000 databases), the markers
/// read only for those. `LIKE`'s own escape, a backslash, goes in a string that says it is
/// one (`E''`, which [`literal`] makes of a text with a backslash), whatever
/// `standard_conforming_strings` is.
fn of_the_environment(names: &str, prefix: &str) -> Result<String, ProviderError> {
    Ok(format!(
        "datname::pg_catalog.text LIKE {} AND {}",
        like_prefix(names)?,
        comment_starts("datdba", "pg_authid", prefix)?,
    ))
}

/// The condition that the comment of the shared object `oid` (an SQL expression) of
/// `catalog` (`pg_database`, `pg_authid`) starts with `prefix` (false without a comment).
fn comment_starts(oid: &str, catalog: &str, prefix: &str) -> Result<String, ProviderError> {
    Ok(format!(
        "pg_catalog.left(COALESCE(pg_catalog.shobj_description({oid}, \
         '{catalog}'::pg_catalog.name), ''), pg_catalog.length({prefix})) \
         OPERATOR(pg_catalog.=) {prefix}",
        prefix = literal(prefix)?,
    ))
}

/// The statement that makes the changes of one database's privileges take turns, until the
/// transaction ends: a database's own (its create or update) and its environment's roles'
/// (made beside it, by the same apply) would otherwise change its row of `pg_database` at
/// once, and one of them fail (`tuple concurrently updated`).
pub(crate) fn privileges_in_turn(database: &str) -> Result<String, ProviderError> {
    Ok(format!(
        "SELECT pg_catalog.pg_advisory_xact_lock({PRIVILEGES_LOCK}, pg_catalog.hashtext({}))",
        literal(database)?
    ))
}

/// The first key of [`privileges_in_turn`]'s lock ("SLDP").
const PRIVILEGES_LOCK: i32 = 0x534c_4450;

/// `LIKE`'s pattern of the names that start with `start`, as a string literal.
fn like_prefix(start: &str) -> Result<String, ProviderError> {
    let escaped = start
        .replace('\\', "\\\\")
        .replace('_', "\\_")
        .replace('%', "\\%");
    literal(&format!("{escaped}%"))
}

/// A `DO` block that runs `statement` (a `format` of `%I`, the database's name) on every
/// database `query` lists, each under its [`privileges_in_turn`] lock, taken in the order of
/// the names (two blocks over the same databases then wait for each other rather than
/// deadlock); one dropped meanwhile is passed over.
fn on_each_database(query: &str, statement: &str) -> Result<String, ProviderError> {
    let body = format!(
        "DECLARE d pg_catalog.text;\n\
         BEGIN\n\
         FOR d IN {query} ORDER BY 1 LOOP\n\
         PERFORM pg_catalog.pg_advisory_xact_lock({PRIVILEGES_LOCK}, pg_catalog.hashtext(d));\n\
         BEGIN EXECUTE pg_catalog.format({}, d); \
         EXCEPTION WHEN invalid_catalog_name THEN NULL; END;\n\
         END LOOP;\n\
         END",
        literal(statement)?
    );
    Ok(format!("DO {}", literal(&body)?))
}

/// A database of `role`'s environment (as [`let_in_to`] finds them) that it may not connect
/// to: one another replica made after the role, which could not let it in (see [`let_in`]).
pub(crate) fn shut_out(
    s: &mut Session<'_>,
    role: &str,
    names: &str,
    prefix: &str,
) -> Result<Option<String>, ProviderError> {
    // By oid: a database dropped meanwhile is then no error, but no row.
    let query = format!(
        "SELECT datname::pg_catalog.text FROM pg_catalog.pg_database WHERE {} \
         AND NOT pg_catalog.has_database_privilege({}::pg_catalog.name, oid, \
         'CONNECT'::pg_catalog.text) LIMIT 1",
        of_the_environment(names, prefix)?,
        literal(role)?
    );
    let rows = s
        .query(
            &format!("look up the databases role {role:?} may connect to"),
            &query,
            &[],
        )
        .map_err(|e| s.fail(e))?;
    Ok(rows.first().map(|row| row.get(0)))
}

/// Lets our role `name` log in with `password` (a literal of [`RolePassword::literal`]),
/// and `limit` connections at once when given.
pub(crate) fn set_login(
    s: &mut Session<'_>,
    name: &str,
    password: &str,
    limit: Option<i32>,
) -> Result<(), ProviderError> {
    s.execute(
        &format!("set the password of role {name:?}"),
        &format!(
            "ALTER ROLE {} LOGIN PASSWORD {password}{}",
            ident(name)?,
            connection_limit(limit)
        ),
    )
    .map_err(|e| s.fail(e))
}

/// The ` CONNECTION LIMIT n` clause of `limit` (nothing for none given; `-1` lifts one).
fn connection_limit(limit: Option<i32>) -> String {
    limit.map_or_else(String::new, |n| format!(" CONNECTION LIMIT {}", n.max(-1)))
}

/// Drops our role `name` of the environment whose databases carry `environment` (the
/// environment's marker, see `PgServers::environment_marker`) if it exists, with the
/// privileges it holds, and what it owns that holds nobody's data: its large objects that
/// no other role may write (`lomacl`) and default privileges, outside its environment's
/// databases. Fails, naming the databases, while it owns anything else there (a table
/// someone else may have written to), anything in its environment's databases (the
/// environment's data: a migrator's tables, say), or anything in a database the admin may
/// not connect to: `REASSIGN OWNED BY` or `DROP OWNED BY` there first.
///
/// Its environment's code logs in as it, and may connect to every database that lets
/// `PUBLIC` in (all but Slipway's, unless the operator revoked it): a large object (which
/// any role may make) or default privileges left there would keep `DROP ROLE` failing, and
/// the environment from ever being destroyed; another environment's role, owner of its
/// database, may grant it something there. Only when `DROP ROLE` fails so (2BP01), and
/// nothing is kept, as far as the shared catalog tells: the role may no longer log in, its
/// sessions end (where the admin may end them), and `DROP OWNED BY` runs on a session of
/// each database it has something in, each time only if the server finds nothing kept
/// there, checked in the same statement; last in the admin URL's database, with the
/// `DROP ROLE`, where it also revokes what the role holds on shared objects (its databases'
/// `CONNECT`). A Slipway database whose owner made it refuse connections is opened for that
/// and closed again. A database is an environment's when its comment, or its owner's,
/// carries the environment's marker (its owner may change the database's comment, not its
/// own).
///
/// A database of the environment dropped at the same moment (its own delete, beside this one
/// in a destroy) changes the catalog rows that this drop reads and revokes from: see
/// [`across_catalog_races`].
pub(crate) fn drop_role(
    s: &mut Session<'_>,
    name: &str,
    environment: &str,
) -> Result<(), ProviderError> {
    across_catalog_races(|| drop_role_once(s, name, environment))
}

/// Runs `drop` (a role's or a database's), again when the server failed it for another
/// session's change of the same catalog row (`tuple concurrently deleted` or `updated`, an
/// internal error PostgreSQL raises rather than wait): at a destroy a database and its
/// environment's role are dropped side by side, and the role's drop revokes what the
/// database granted it, in the database's own row. The next try finds the other's change
/// done. Three tries more at most, a moment apart.
fn across_catalog_races(
    mut drop: impl FnMut() -> Result<(), ProviderError>,
) -> Result<(), ProviderError> {
    let mut pauses = [20, 100, 300].into_iter().map(Duration::from_millis);
    loop {
        match drop() {
            Err(e) if e.retryable() && e.to_string().contains("tuple concurrently") => {
                match pauses.next() {
                    Some(pause) => std::thread::sleep(pause),
                    None => return Err(e),
                }
            }
            done => return done,
        }
    }
}

/// [`drop_role`], one try.
fn drop_role_once(s: &mut Session<'_>, name: &str, environment: &str) -> Result<(), ProviderError> {
    let role = ident(name)?;
    let action = format!(
        "drop role {name:?} (what it owns in its environment's databases, tables or other \
         objects elsewhere, or anything in a database the admin may not connect to, is not \
         dropped for it: drop or reassign it there first, with `REASSIGN OWNED BY` or \
         `DROP OWNED BY` in that database)"
    );
    match s.execute(&action, &format!("DROP ROLE IF EXISTS {role}")) {
        Err(e) if e.code() == Some("2BP01") => {}
        done => return done.map_err(|e| s.fail(e)),
    }
    let regrole = format!("pg_catalog.to_regrole({})::pg_catalog.oid", literal(&role)?);
    // A database's comment, or its owner's (which its owner cannot change), says whose it is.
    let marked = |prefix: &str| -> Result<String, ProviderError> {
        Ok(format!(
            "({} OR {})",
            comment_starts("d.oid", "pg_database", prefix)?,
            comment_starts("d.datdba", "pg_authid", prefix)?
        ))
    };
    // What the role owns that holds nobody's data.
    let not_data = "dep.classid OPERATOR(pg_catalog.=) ANY (ARRAY['pg_catalog.pg_largeobject'::\
                    pg_catalog.regclass, 'pg_catalog.pg_default_acl'::pg_catalog.regclass])";
    let owned = "dep.deptype OPERATOR(pg_catalog.=) 'o'::pg_catalog.\"char\"";
    // By oid: a role or database dropped meanwhile is no error, but no row.
    let elsewhere = format!(
        "SELECT d.datname::pg_catalog.text AS name, {} AS own, {} AS slipway, \
         d.datallowconn AS open, pg_catalog.bool_or({owned}) AS owns, \
         pg_catalog.bool_or({owned} AND NOT {not_data}) AS owns_data \
         FROM pg_catalog.pg_shdepend dep JOIN pg_catalog.pg_database d \
         ON d.oid OPERATOR(pg_catalog.=) dep.dbid \
         WHERE dep.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_authid'::pg_catalog.regclass \
         AND dep.refobjid OPERATOR(pg_catalog.=) {regrole} \
         AND d.datname OPERATOR(pg_catalog.<>) pg_catalog.current_database() \
         GROUP BY d.oid, d.datname, d.datdba, d.datallowconn ORDER BY 1",
        marked(environment)?,
        marked("slipway:")?,
    );
    let databases = s
        .query(
            &format!("look up the other databases role {name:?} owns or holds something in"),
            &elsewhere,
            &[],
        )
        .map_err(|e| s.fail(e))?;
    // Nothing changes while something is kept: the role logs in as before. Kept: in its
    // environment's databases, anything it owns; elsewhere, what holds data; and anything in
    // a database that refuses connections and is not Slipway's.
    let kept: Vec<String> = databases
        .iter()
        .filter(|row| {
            let owns_kept = if row.get("own") {
                row.get("owns")
            } else {
                row.get("owns_data")
            };
            owns_kept || !(row.get::<_, bool>("open") || row.get("slipway"))
        })
        .map(|row| row.get("name"))
        .collect();
    if !kept.is_empty() {
        return Err(s.server.error(
            format!(
                "cannot drop role {name:?}: it owns what is kept in database {}, or has \
                 something in one that refuses connections (its environment's data, or a \
                 table or other object someone else may have written to): reassign or drop \
                 it there first, with `REASSIGN OWNED BY` or `DROP OWNED BY` in that database, \
                 then try again",
                kept.join(", ")
            ),
            Retry::Terminal,
        ));
    }
    s.execute(
        &format!("keep role {name:?} from logging in"),
        &format!("ALTER ROLE {role} NOLOGIN"),
    )
    .map_err(|e| s.fail(e))?;
    // An admin that is not a superuser may lack the right to end them (PostgreSQL 16 makes
    // it a member of the roles it creates without their privileges): what they make
    // meanwhile then fails the drop, which the next try repeats.
    match s.query(
        &format!("end the sessions of role {name:?}"),
        &format!(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
             WHERE usesysid OPERATOR(pg_catalog.=) {regrole}"
        ),
        &[],
    ) {
        Err(e) if e.code() == Some("42501") => {}
        done => drop(done.map_err(|e| s.fail(e))?),
    }
    // `DROP OWNED BY`, unless the role owns what is kept in the session's database: in its
    // environment's, anything; elsewhere, anything but default privileges and large objects
    // no other role may write.
    let unless_it_keeps = |own: bool| -> Result<String, ProviderError> {
        let owns = |which: &str| {
            format!(
                "EXISTS (SELECT FROM pg_catalog.pg_shdepend dep \
                 WHERE dep.dbid OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_database \
                 WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database()) \
                 AND dep.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_authid'::pg_catalog.regclass \
                 AND dep.refobjid OPERATOR(pg_catalog.=) {regrole} AND {owned}{which})"
            )
        };
        let kept = if own {
            owns("")
        } else {
            format!(
                "{} OR EXISTS (SELECT FROM pg_catalog.pg_largeobject_metadata \
                 WHERE lomowner OPERATOR(pg_catalog.=) {regrole} AND (lomacl IS NOT NULL \
                 OR pg_catalog.current_setting('lo_compat_privileges')::pg_catalog.bool))",
                owns(&format!(" AND NOT {not_data}"))
            )
        };
        Ok(format!(
            "DO {}",
            literal(&format!(
                "BEGIN IF NOT ({kept}) THEN DROP OWNED BY {role}; END IF; END"
            ))?
        ))
    };
    for row in &databases {
        let (database, own, open): (String, bool, bool) =
            (row.get("name"), row.get("own"), row.get("open"));
        let opened = !open;
        if opened {
            // Closed to `PUBLIC` first, as every Slipway database is once made: one still
            // being made (refusing connections until it is) lets in no stranger meanwhile.
            s.execute(
                &format!("let the admin into database {database:?} for a moment"),
                &format!(
                    "REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC;\n\
                     ALTER DATABASE {db} ALLOW_CONNECTIONS true",
                    db = ident(&database)?
                ),
            )
            .map_err(|e| s.fail(e))?;
        }
        // One dropped meanwhile has nothing left; one that refuses connections now keeps
        // what it has, which the `DROP ROLE` below names.
        let cleaned = match s.server.connect_to_open(&database) {
            Ok(Some(mut there)) => there
                .execute(
                    &format!("drop what role {name:?} has in database {database:?}"),
                    &unless_it_keeps(own)?,
                )
                .map_err(|e| there.fail(e)),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if opened {
            s.execute(
                &format!("close database {database:?} again"),
                &format!(
                    "ALTER DATABASE {} ALLOW_CONNECTIONS false",
                    ident(&database)?
                ),
            )
            .map_err(|e| s.fail(e))?;
        }
        cleaned?;
    }
    s.execute(
        &action,
        &format!("{};\nDROP ROLE {role}", unless_it_keeps(false)?),
    )
    .map_err(|e| s.fail(e))
}

/// Drops the role `name` if it carries `marker` (its comment), the check and the drop in one
/// statement run by the server: what a create drops again, best effort, of a role it has just
/// made, when its database could not be made. By name alone, a role of that name someone made
/// after dropping ours, between two round trips, would go too; in one statement, the window
/// is narrowed to the two commands of one block. (A PL/pgSQL block: some 0.7 ms
/// on a new backend, which loads the language; the paths that use this are rare ones.)
/// Fails, without `CASCADE`, while the role owns objects.
pub(crate) fn drop_role_if_ours(
    s: &mut Session<'_>,
    name: &str,
    marker: &str,
) -> Result<(), ProviderError> {
    let body = format!(
        "BEGIN IF pg_catalog.shobj_description(to_regrole(quote_ident({}))::oid, \
         'pg_authid'::pg_catalog.name) = {} \
         THEN DROP ROLE {}; END IF; END",
        literal(name)?,
        literal(marker)?,
        ident(name)?
    );
    s.execute(
        &format!("drop role {name:?} if it is ours"),
        &format!("DO {}", literal(&body)?),
    )
    .map_err(|e| s.fail(e))
}

/// Ends every other session on database `name`, then drops it if it exists.
///
/// Its environment's roles, dropped at the same moment, revoke what it granted them in its
/// row: see [`across_catalog_races`].
pub(crate) fn drop_database(s: &mut Session<'_>, name: &str) -> Result<(), ProviderError> {
    across_catalog_races(|| drop_database_once(s, name))
}

/// [`drop_database`], one try.
fn drop_database_once(s: &mut Session<'_>, name: &str) -> Result<(), ProviderError> {
    let database = ident(name)?;
    let action = format!("drop database {name:?}");
    // Its owner, the environment's role, may have made it a template (`ALTER DATABASE …
    // IS_TEMPLATE true` needs only ownership), which `DROP DATABASE` refuses for good: the
    // database, and its role's login, would outlive the environment.
    let template = s
        .query(
            &action,
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1 AND datistemplate",
            &[name],
        )
        .map_err(|e| s.fail(e))?;
    if !template.is_empty() {
        s.execute(
            &action,
            &format!("ALTER DATABASE {database} IS_TEMPLATE false"),
        )
        .map_err(|e| s.fail(e))?;
    }
    let version = s.server_version().map_err(|e| s.fail(e))?;
    if version >= 130000 {
        // `FORCE` ends the sessions, atomically with the drop: no query of its own first.
        return s
            .execute(
                &action,
                &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
            )
            .map_err(|e| s.fail(e));
    }
    // Before PostgreSQL 13, terminated sessions take a moment to go, and the drop fails with
    // "being accessed by other users" until they have.
    terminate_sessions(s, name)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.execute(&action, &format!("DROP DATABASE IF EXISTS {database}")) {
            Err(e) if e.code() == Some("55006") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
                terminate_sessions(s, name)?;
            }
            done => return done.map_err(|e| s.fail(e)),
        }
    }
}

fn terminate_sessions(s: &mut Session<'_>, name: &str) -> Result<(), ProviderError> {
    s.query(
        &format!("end the sessions on database {name:?}"),
        "select pg_terminate_backend(pid) from pg_stat_activity \
         where datname = $1 and pid <> pg_backend_pid()",
        &[name],
    )
    .map(drop)
    .map_err(|e| s.fail(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::postgres::sql::Server;

    fn exists(name: &str) -> bool {
        postgres::Client::connect(slipway_testkit::pg::ADMIN_URL, postgres::NoTls)
            .unwrap()
            .query_opt("select 1 from pg_roles where rolname = $1", &[&name])
            .unwrap()
            .is_some()
    }

    /// What a first create drops again goes only while it carries the marker: a role of the
    /// name without it (someone's, made after ours went) stays, and so does a role marked
    /// for another resource. Names and markers are quoted whatever they hold.
    #[test]
    fn a_role_is_dropped_again_only_while_it_carries_our_marker() {
        let server = Server::parse("main", slipway_testkit::pg::ADMIN_URL).unwrap();
        let mut s = server.connect().unwrap();
        let suffix = std::process::id();
        let ours = format!("swtest_ours_{suffix}");
        let theirs = format!("swtest_theirs \"'{suffix}");
        let marker = format!("slipway:test{suffix}:qa/db 'quoted' \\ too");
        for name in [&ours, &theirs] {
            // What a failed run of this test with the same pid left, first.
            let name = ident(name).unwrap();
            s.execute(
                "make",
                &format!("DROP ROLE IF EXISTS {name}; CREATE ROLE {name}"),
            )
            .unwrap();
        }
        s.execute(
            "mark",
            &format!(
                "COMMENT ON ROLE {} IS {}",
                ident(&ours).unwrap(),
                literal(&marker).unwrap()
            ),
        )
        .unwrap();
        s.execute(
            "mark",
            &format!(
                "COMMENT ON ROLE {} IS {}",
                ident(&theirs).unwrap(),
                literal(&format!("{marker}-other")).unwrap()
            ),
        )
        .unwrap();

        drop_role_if_ours(&mut s, &theirs, &marker).unwrap();
        assert!(exists(&theirs), "another marker: left alone");
        drop_role_if_ours(&mut s, &ours, &marker).unwrap();
        assert!(!exists(&ours), "ours: dropped");
        drop_role_if_ours(&mut s, &ours, &marker).unwrap();
        s.execute(
            "unmark",
            &format!("COMMENT ON ROLE {} IS NULL", ident(&theirs).unwrap()),
        )
        .unwrap();
        drop_role_if_ours(&mut s, &theirs, &marker).unwrap();
        assert!(exists(&theirs), "no marker: left alone");
        s.execute(
            "clean up",
            &format!("DROP ROLE {}", ident(&theirs).unwrap()),
        )
        .unwrap();
    }
}
