//! `postgres.database`: a database, optionally cloned from a template, owned by a login role
//! of the same name, with extensions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::catalog::{self, Login, Ownership};
use super::sql::{self, Server, ident, literal};
use super::{Intent, Names, OnServer, PgServers, Recorded, parse_live};
use crate::{
    Action, Applied, Observation, Provider, ProviderError, ResourceContext, ResourceKey, Retry,
};

pub(super) const TYPE: &str = "postgres.database";

/// Configuration of a `postgres.database` resource.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The `[postgres.NAME]` server of the engine config; the only one if absent.
    #[serde(default)]
    pub server: Option<String>,
    /// A database to clone instead of `template0` (see `create_database`).
    #[serde(default)]
    pub template: Option<String>,
    /// Extensions to create in the database.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// How to clone `template` (PostgreSQL 15 and later; earlier ones always copy files).
    #[serde(default)]
    pub strategy: Option<Strategy>,
    #[serde(default, rename = "description")]
    _description: Option<IgnoredAny>,
    #[serde(default, rename = "depends_on")]
    _depends_on: Option<IgnoredAny>,
}

/// `CREATE DATABASE ... STRATEGY`: how PostgreSQL 15+ copies the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Copy the files after a checkpoint: fast for a large template, heavy on the server (the
    /// default here when a template is given, as before PostgreSQL 15).
    FileCopy,
    /// Copy block by block through the WAL: fast for a small template, no checkpoint.
    WalLog,
}

/// The `postgres.database` provider.
#[derive(Debug, Clone)]
pub struct DatabaseProvider {
    servers: Arc<PgServers>,
}

impl DatabaseProvider {
    /// A provider creating databases on `servers`.
    pub fn new(servers: Arc<PgServers>) -> Self {
        DatabaseProvider { servers }
    }
}

/// What `create` and `update` record as the live object (the engine keeps it sealed: it holds
/// the password).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LiveDatabase {
    server: String,
    database: String,
    role: String,
    password: String,
    /// The extensions this resource created, so that an update drops only those.
    #[serde(default)]
    extensions: Vec<String>,
    /// The role's oid, when the create or update knew it: a delete that finds the role of
    /// this oid, and the database absent or its own, needs no marker (`recorded_owner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role_oid: Option<u32>,
}

impl OnServer for DatabaseConfig {
    fn server(&self) -> Option<&str> {
        self.server.as_deref()
    }
}

impl Recorded for LiveDatabase {
    fn server(&self) -> &str {
        &self.server
    }
}

impl LiveDatabase {
    fn names(&self) -> Names {
        Names {
            database: self.database.clone(),
            role: self.role.clone(),
        }
    }
}

impl DatabaseConfig {
    /// The configuration's extensions, checked, without duplicates.
    fn checked_extensions(&self) -> Result<Vec<String>, ProviderError> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for name in &self.extensions {
            if name.is_empty() || name.contains('\0') || name.len() > super::MAX_NAME_BYTES {
                return Err(ProviderError::Config(format!(
                    "{TYPE}: {name:?} in `extensions` is not an extension name"
                )));
            }
            if seen.insert(name.as_str()) {
                out.push(name.clone());
            }
        }
        Ok(out)
    }
}

impl Provider for DatabaseProvider {
    type Config = DatabaseConfig;
    const TYPE: &'static str = TYPE;

    /// Nothing to wait for once made.
    fn ready_at_once(&self, _config: &Self::Config) -> bool {
        true
    }

    fn expect_change(&self, resource: ResourceKey<'_>, action: Action, config: &Value) {
        // The server it names, or the only one; a reference (`${…}`) names none yet. Its
        // question is the one the change asks first: a create, the server's version (it
        // looks nothing up unless a name is taken, see `first_create`); an update, the role
        // and the database with their markers; a delete, the role's oid and the database's
        // owner (a record without the oid, older than it, looks at markers after). Of the
        // names they use unless a live record says others (made by another home id, which
        // the names include).
        let names = self.servers.names_of(resource);
        let ahead = match action {
            Action::Create => sql::Ahead::server_version(),
            Action::Delete => catalog::recorded_owner_ahead(&names.role, &names.database),
            _ => catalog::role_and_database_ahead(&names.role, &names.database),
        };
        self.servers
            .warm(TYPE, config.get("server").and_then(Value::as_str), ahead);
    }

    fn create(
        &self,
        ctx: ResourceContext<'_>,
        config: &DatabaseConfig,
    ) -> Result<Applied, ProviderError> {
        let server = self.servers.choose(TYPE, config.server.as_deref())?;
        let password = sql::generate_password()?;
        let names = self.servers.names(ctx);
        self.ensure(ctx, &server, &names, config, &password, &[], true)
    }

    fn update(
        &self,
        ctx: ResourceContext<'_>,
        config: &DatabaseConfig,
        live: &Value,
    ) -> Result<Applied, ProviderError> {
        self.servers
            .update(self, ctx, config, live, |server, recorded: LiveDatabase| {
                self.ensure(
                    ctx,
                    server,
                    &recorded.names(),
                    config,
                    &recorded.password,
                    &recorded.extensions,
                    false,
                )
            })
    }

    fn delete(&self, ctx: ResourceContext<'_>, live: Option<&Value>) -> Result<(), ProviderError> {
        let recorded = live
            .map(|live| parse_live::<LiveDatabase>(TYPE, live))
            .transpose()?;
        // The oid the record gives the role of `names` on `server`, when those are the names
        // this resource's objects have: a record naming others (another home id's, or one
        // written wrong) is judged by the markers, which say whose the objects are.
        let own = self.servers.names(ctx);
        let recorded_oid = |server: &str, names: &Names| {
            recorded
                .as_ref()
                .filter(|r| r.server == server && r.names() == *names && *names == own)
                .and_then(|r| r.role_oid)
        };
        let target = recorded.as_ref().map(|r| (r.server.clone(), r.names()));
        let environment = self.servers.environment_marker(ctx);
        self.servers
            .delete_each(ctx, TYPE, target, Names::clone, |s, names, marker| {
                let by_oid = match recorded_oid(&s.server.name, names) {
                    Some(oid) => catalog::recorded_owner(s, &names.role, &names.database, oid)
                        .map_err(|e| s.fail(e))?,
                    None => None,
                };
                let (role, database) = match by_oid {
                    Some(found) => found,
                    None => {
                        let (role, database) = catalog::role_and_database(
                            s,
                            &names.role,
                            &names.database,
                            marker,
                            Login::Skip,
                        )
                        .map_err(|e| s.fail(e))?;
                        (role.ownership, database.ownership)
                    }
                };
                if database == Ownership::Ours {
                    catalog::drop_database(s, &names.database)?;
                }
                if role == Ownership::Ours {
                    catalog::drop_role(s, &names.role, &environment)?;
                }
                Ok(())
            })
    }

    fn observe(
        &self,
        ctx: ResourceContext<'_>,
        _config: &DatabaseConfig,
        live: &Value,
    ) -> Result<Observation, ProviderError> {
        let recorded: LiveDatabase = parse_live(TYPE, live)?;
        let marker = self.servers.marker(ctx);
        let server = self.servers.recorded(TYPE, &recorded.server)?;
        let on = &server.name;
        let mut s = server.connect()?;
        let (role, database) = catalog::role_and_database(
            &mut s,
            &recorded.role,
            &recorded.database,
            &marker,
            Login::Read,
        )
        .map_err(|e| s.fail(e))?;
        let name = &recorded.database;
        match database.ownership {
            Ownership::Absent => {
                return Ok(Observation::Missing {
                    reason: format!(
                        "database \"{name}\" was dropped on server {on}; recreating it starts \
                         empty: its data is lost"
                    ),
                });
            }
            Ownership::Foreign(why) => {
                return Ok(Observation::Drifted {
                    reason: format!(
                        "database \"{name}\" on server {on} was replaced by one Slipway did not \
                         create ({why})"
                    ),
                });
            }
            Ownership::Ours => {}
        }
        let role_name = &recorded.role;
        let drift = match role.ownership {
            Ownership::Absent => Some(format!(
                "role \"{role_name}\" was dropped on server {on}; it is created again with the \
                 same password and given database \"{name}\" back, whose data is kept"
            )),
            Ownership::Foreign(why) => Some(format!(
                "role \"{role_name}\" on server {on} was replaced by one Slipway did not create \
                 ({why})"
            )),
            Ownership::Ours if database.owner != recorded.role => Some(format!(
                "database \"{name}\" on server {on} is now owned by \"{}\" instead of \
                 \"{role_name}\"",
                database.owner
            )),
            Ownership::Ours if role.can_login == Some(false) => Some(format!(
                "role \"{role_name}\" on server {on} can no longer log in"
            )),
            Ownership::Ours => None,
        };
        if let Some(reason) = drift {
            return Ok(Observation::Drifted { reason });
        }
        drop(s);
        if !recorded.extensions.is_empty() {
            let mut s = server.connect_to(Some(name))?;
            let installed = installed_extensions(&mut s)?;
            if let Some(gone) = recorded.extensions.iter().find(|e| !installed.contains(*e)) {
                return Ok(Observation::Drifted {
                    reason: format!(
                        "extension \"{gone}\" was dropped from database \"{name}\" on server {on}"
                    ),
                });
            }
        }
        Ok(Observation::InSync)
    }
}

impl DatabaseProvider {
    /// Makes the database and its role exist as `config` says, with `password`: creates what
    /// is missing, takes back what is ours, refuses what is not. `previous` lists the
    /// extensions this resource created before; those no longer wanted are dropped. `create`:
    /// a create, which tries [`DatabaseProvider::first_create`] before it looks anything up.
    #[allow(clippy::too_many_arguments)]
    fn ensure(
        &self,
        ctx: ResourceContext<'_>,
        server: &Server,
        names: &Names,
        config: &DatabaseConfig,
        password: &str,
        previous: &[String],
        create: bool,
    ) -> Result<Applied, ProviderError> {
        let extensions = config.checked_extensions()?;
        if let Some(template) = config
            .template
            .as_ref()
            .filter(|t| t.is_empty() || t.contains('\0'))
        {
            return Err(ProviderError::Config(format!(
                "{TYPE}: `template` {template:?} is not a database name"
            )));
        }
        if let Some(template) = &config.template {
            // Before anything is made: one PostgreSQL would cut short names another database.
            ident(template)?;
        }
        if let Some(template) = &config.template
            && let Some(why) = self.servers.template_refused(&server.name, template)
        {
            return Err(ProviderError::Config(format!("{TYPE}: {why}")));
        }
        let marker = self.servers.marker(ctx);
        let limit = self.servers.connection_limit(&server.name, ctx.kind);
        let cap = self.servers.role_cap(ctx, &server.name, &names.role)?;
        let mut hashed = catalog::RolePassword::hashing(password);
        // Connected while the intent is written: a connection (and the query it may have made
        // ahead) changes nothing on the server, and nothing is changed before the intent is
        // durable.
        let (recorded, connected) = std::thread::scope(|scope| {
            let connecting = std::thread::Builder::new()
                .name("pg-connect".to_owned())
                .spawn_scoped(scope, || server.connect());
            let recorded = Intent::record(ctx, &self.servers.names(ctx), TYPE, &server.name);
            let connected = match connecting {
                Ok(thread) => thread.join().unwrap_or_else(|_| {
                    Err(server.error(
                        "a bug in Slipway: connecting panicked".to_owned(),
                        Retry::Retryable,
                    ))
                }),
                // No thread to spare: after the intent, then.
                Err(_) if recorded.is_ok() => server.connect(),
                Err(_) => Err(server.error("not connected".to_owned(), Retry::Retryable)),
            };
            (recorded, connected)
        });
        recorded?;
        let mut s = connected?;
        if let Some(template) = &config.template
            && let Some(made_by) = catalog::slipway_made(&mut s, template).map_err(|e| s.fail(e))?
        {
            // Another environment's database holds its data and secrets: cloning it would
            // hand them to this one, whatever the configuration lists.
            return Err(server.error(
                format!(
                    "{TYPE}: `template: {template}` is a database Slipway made ({made_by}); \
                     another environment's database is never a template"
                ),
                Retry::Terminal,
            ));
        }
        // The database's marker and its privileges, in one transaction, wherever the marker
        // is set (a create, and every update), its privileges' changes in turn (see
        // `catalog::privileges_in_turn`). By default every role may connect to a new database
        // (and make temporary tables in it), so another environment's role, whose password its
        // code holds, could read its catalog (functions' source included) and, on PostgreSQL
        // 14 and older, create in its `public` what its code would call: `PUBLIC` loses both.
        // A database is made refusing every connection (`create_database`), and lets them in
        // here, once `PUBLIC` is out: no session opened in between outlives the `REVOKE`. Its
        // environment's `postgres.role`s connect all the same (`catalog::let_in`): those this
        // node has records of, listed once the database exists, so that a role made meanwhile
        // is either listed here or finds the database itself.
        let marked = format!(
            "{};\n\
             COMMENT ON DATABASE {db} IS {};\n\
             REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC;\n\
             ALTER DATABASE {db} ALLOW_CONNECTIONS true",
            catalog::privileges_in_turn(&names.database)?,
            literal(&marker)?,
            db = ident(&names.database)?,
        );
        let prefix = self.servers.environment_marker(ctx);
        let mark_and_close = || -> Result<String, ProviderError> {
            let roles = Intent::of_environment(ctx, super::role::TYPE)?;
            Ok(match catalog::let_in(&names.database, &roles, &prefix)? {
                Some(grant) => format!("{marked};\n{grant}"),
                None => marked.clone(),
            })
        };
        // The roles the operator lists (`[postgres.NAME] connect`), let in once the database
        // is marked and closed to the rest: one that does not exist fails the change, which
        // leaves the database closed.
        let listed = self.servers.connect(&server.name);
        let let_listed_in = if listed.is_empty() {
            None
        } else {
            let roles = listed
                .iter()
                .map(|r| ident(r))
                .collect::<Result<Vec<_>, _>>()?;
            Some(format!(
                "GRANT CONNECT ON DATABASE {} TO {}",
                ident(&names.database)?,
                roles.join(", ")
            ))
        };
        // Both names ours: the session ends, then the extensions (on a session of the new
        // database's), then the record.
        let finish = |mut s: sql::Session<'_>, role_oid: Option<u32>| {
            if let Some(grant) = &let_listed_in {
                s.execute(
                    &format!(
                        "let in the roles `[postgres.{}] connect` lists (each must exist: create \
                         it, or take it off the list)",
                        server.name
                    ),
                    grant,
                )
                .map_err(|e| s.fail(e))?;
            }
            drop(s);
            reconcile_extensions(
                server,
                names,
                &extensions,
                previous,
                self.servers.untrusted_extensions(&server.name),
            )?;
            applied(server, names, password, extensions, role_oid)
        };
        // A first create tries without looking. A name taken, or its database's failure (a
        // foreign database and a bad template fail on the template first), and it looks: to
        // refuse what is not ours by name, or take back what is; its failure is the answer
        // when the look finds both names free (or cannot look).
        let mut failed_first = None;
        if create {
            match self.first_create(
                &mut s,
                names,
                config,
                &mut hashed,
                (&marker, limit, cap.as_deref()),
                &mark_and_close,
            )? {
                First::Made(role_oid) => return finish(s, Some(role_oid)),
                First::Taken => {}
                First::Failed(e) => failed_first = Some(e),
            }
        }
        let (role, database) = match catalog::role_and_database(
            &mut s,
            &names.role,
            &names.database,
            &marker,
            Login::Skip,
        ) {
            Ok(found) => found,
            Err(e) => return Err(failed_first.unwrap_or_else(|| s.fail(e))),
        };
        // Refuse before changing anything.
        if let Ownership::Foreign(why) = &database.ownership {
            return Err(catalog::not_ours(server, "database", &names.database, why));
        }
        if let Ownership::Foreign(why) = &role.ownership {
            return Err(catalog::not_ours(server, "role", &names.role, why));
        }
        if role.ownership == Ownership::Absent && database.ownership == Ownership::Absent {
            if let Some(failed) = failed_first {
                return Err(failed);
            }
            // Free a moment ago: taken meanwhile is someone else's doing, looked at again by
            // the next try.
            match self.first_create(
                &mut s,
                names,
                config,
                &mut hashed,
                (&marker, limit, cap.as_deref()),
                &mark_and_close,
            )? {
                First::Made(role_oid) => return finish(s, Some(role_oid)),
                First::Taken => return Err(made_meanwhile(server, names)),
                First::Failed(e) => return Err(e),
            }
        } else {
            // One of the two is ours already: with the database absent, the role is ours (and
            // stays, the database being made again for it); with the role absent, the
            // database is ours (and goes back to the role made here).
            catalog::ensure_role(
                &mut s,
                &role,
                &names.role,
                &marker,
                true,
                hashed,
                limit,
                cap.as_deref(),
            )?;
            match database.ownership {
                Ownership::Absent => {
                    create_database(&mut s, names, config).and_then(|made| {
                        made.then_some(())
                            .ok_or_else(|| made_meanwhile(server, names))
                    })?;
                    s.execute(
                        &format!(
                            "mark database {:?} and keep other roles out",
                            names.database
                        ),
                        &mark_and_close()?,
                    )
                    .map_err(|e| s.fail(e))?;
                }
                _ => {
                    // Ours already (an interrupted create, or a role recreated after drift):
                    // give it back to the role, data untouched.
                    s.execute_atomically(
                        &format!("give database {:?} back to its role", names.database),
                        &[
                            catalog::privileges_in_turn(&names.database)?,
                            format!(
                                "ALTER DATABASE {} OWNER TO {}",
                                ident(&names.database)?,
                                ident(&names.role)?
                            ),
                            mark_and_close()?,
                        ],
                    )
                    .map_err(|e| s.fail(e))?;
                }
            }
        }
        // The oid of a role made again here is not read: a delete looks at its marker.
        let role_oid = role.oid.filter(|_| role.ownership == Ownership::Ours);
        finish(s, role_oid)
    }
}

/// What [`DatabaseProvider::first_create`] did.
enum First {
    /// The role (of this oid) and the database, both ours.
    Made(u32),
    /// A name is taken: nothing made, or the role it made dropped again as far as it could.
    Taken,
    /// The database failed so: the role it made dropped again as far as it could.
    Failed(ProviderError),
}

impl DatabaseProvider {
    /// A first create, which looks nothing up: the role (with its marker), then the database
    /// it owns (then its marker), each made only if its name is free, since the server refuses
    /// a second of either; so what this makes is ours, and nothing else is touched. The role is
    /// made without its password, which a second session sets while this one copies the
    /// database (see `create_role_without_login`). Unless the database is made, the role it
    /// made is dropped again, best effort (one that came to own something meanwhile, a
    /// database another replica of this home made for it, stays: it is ours, and the caller's
    /// look takes it back). An error is returned when the version, the role or the role's
    /// password could not be had; what it made then stays, ours, for the next try to take
    /// back.
    fn first_create(
        &self,
        s: &mut sql::Session<'_>,
        names: &Names,
        config: &DatabaseConfig,
        hashed: &mut catalog::RolePassword,
        (marker, limit, cap): (&str, Option<i32>, Option<&str>),
        mark_and_close: &dyn Fn() -> Result<String, ProviderError>,
    ) -> Result<First, ProviderError> {
        let server = s.server;
        // Asked first, as the connection made ahead asked it; the password's hashing goes on
        // meanwhile, until the role is made.
        s.server_version().map_err(|e| s.fail(e))?;
        let Some(role_oid) = catalog::create_role_without_login(s, &names.role, marker, cap)?
        else {
            return Ok(First::Taken);
        };
        let password = match hashed.literal(s) {
            Ok(password) => password,
            Err(e) => {
                drop_again(s, &names.role, marker);
                return Ok(First::Failed(e));
            }
        };
        let (made, login) = std::thread::scope(|scope| {
            let login = std::thread::Builder::new()
                .name("pg-login".to_owned())
                .spawn_scoped(scope, || {
                    let mut other = server.connect()?;
                    catalog::set_login(&mut other, &names.role, &password, limit)
                });
            let made = create_database(s, names, config).and_then(|made| {
                if made {
                    s.execute(
                        &format!(
                            "mark database {:?} and keep other roles out",
                            names.database
                        ),
                        &mark_and_close()?,
                    )
                    .map_err(|e| s.fail(e))?;
                }
                Ok(made)
            });
            let login = match login {
                Ok(thread) => thread.join().unwrap_or_else(|_| {
                    Err(server.error(
                        "a bug in Slipway: setting the role's password panicked".to_owned(),
                        Retry::Retryable,
                    ))
                }),
                // No thread to spare: here, after the database.
                Err(_) => catalog::set_login(s, &names.role, &password, limit),
            };
            (made, login)
        });
        let failed = match made {
            Ok(true) => None,
            Ok(false) => Some(First::Taken),
            Err(e) => Some(First::Failed(e)),
        };
        if let Some(failed) = failed {
            // Best effort: `delete` finds it by its marker otherwise.
            drop_again(s, &names.role, marker);
            return Ok(failed);
        }
        // Both ours now. A password the second session could not set (it could not connect,
        // say) is set here; failing that too, a retry finds both and sets it again.
        login.or_else(|_| catalog::set_login(s, &names.role, &password, limit))?;
        Ok(First::Made(role_oid))
    }
}

/// Drops again, best effort, the role `role` a first create just made: one left, if this
/// fails, is found by its marker by the next try or a delete, and the failure is logged.
fn drop_again(s: &mut sql::Session<'_>, role: &str, marker: &str) {
    if let Err(e) = catalog::drop_role_if_ours(s, role, marker) {
        tracing::warn!(role, error = %e, "the role a first create made could not be dropped again");
    }
}

/// Names taken between a look that found them free and the statement that made one.
fn made_meanwhile(server: &Server, names: &Names) -> ProviderError {
    server.error(
        format!(
            "{TYPE}: role \"{}\" or database \"{}\" was made by someone else while Slipway \
             made them; the next try looks again",
            names.role, names.database
        ),
        Retry::Retryable,
    )
}

/// `CREATE DATABASE`, with the template and strategy of `config`. `false`, with nothing
/// made, when a database of the name exists already (whoever's): the server refuses a second
/// one, so a database this makes is ours whatever anyone else does.
fn create_database(
    s: &mut sql::Session<'_>,
    names: &Names,
    config: &DatabaseConfig,
) -> Result<bool, ProviderError> {
    // Refusing every connection until it is marked and closed to `PUBLIC` (see `ensure`).
    let mut statement = format!(
        "CREATE DATABASE {} OWNER {} ALLOW_CONNECTIONS false",
        ident(&names.database)?,
        ident(&names.role)?
    );
    // Without a template, `template0`, not PostgreSQL's default `template1`: every role may
    // connect to `template1` (unless the operator revoked it), so every environment's code
    // may, and what it left there (a large object, which any role may make; a function in
    // `public`, before PostgreSQL 15) would be in every environment's database made after.
    // Nothing connects to `template0`. With `template1`'s encoding and locale, which may
    // differ (a `template1` made again in UTF-8 on a cluster made in SQL_ASCII).
    match &config.template {
        None => {
            statement.push_str(" TEMPLATE template0");
            if let Some(locale) = s.template1_locale().map_err(|e| s.fail(e))? {
                statement.push_str(&format!(
                    " ENCODING {} LC_COLLATE {} LC_CTYPE {}",
                    literal(&locale.encoding)?,
                    literal(&locale.collate)?,
                    literal(&locale.ctype)?
                ));
            }
        }
        Some(template) => {
            statement.push_str(&format!(" TEMPLATE {}", ident(template)?));
            if s.server_version().map_err(|e| s.fail(e))? >= 150000 {
                statement.push_str(match config.strategy.unwrap_or(Strategy::FileCopy) {
                    Strategy::FileCopy => " STRATEGY FILE_COPY",
                    Strategy::WalLog => " STRATEGY WAL_LOG",
                });
            }
        }
    }
    let action = match &config.template {
        Some(template) => format!(
            "create database {:?} from template {template:?}",
            names.database
        ),
        None => format!("create database {:?}", names.database),
    };
    // Alone in its query: CREATE DATABASE cannot run inside a transaction block.
    let Err(e) = s.execute(&action, &statement) else {
        return Ok(true);
    };
    let server = s.server;
    let template = config.template.as_deref().unwrap_or_default();
    Err(match e.code() {
        // duplicate_database; unique_violation when another session makes it at the same time
        Some("42P04" | "23505") => return Ok(false),
        Some("3D000") => server.error(
            format!(
                "template database \"{template}\" does not exist on PostgreSQL server {}; \
                 create it, or fix `template` ({e})",
                server.name
            ),
            Retry::Terminal,
        ),
        Some("55006") => server.error(
            format!(
                "template database \"{template}\" is being accessed by other users on \
                 PostgreSQL server {}: PostgreSQL clones a database only while no one is \
                 connected to it; retrying once they disconnect succeeds ({e})",
                server.name
            ),
            Retry::Retryable,
        ),
        _ => s.fail(e),
    })
}

fn installed_extensions(s: &mut sql::Session<'_>) -> Result<BTreeSet<String>, ProviderError> {
    let rows = s
        .query(
            "list the extensions",
            "select extname::text from pg_extension",
            &[],
        )
        .map_err(|e| s.fail(e))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Creates the `wanted` extensions missing from the database of `names`, and drops those of
/// `previous` no longer wanted (without `CASCADE`).
///
/// An extension's install script runs in a database the environment's code controls (its
/// role owns it, and its `public` schema): one PostgreSQL marks trusted is created as that
/// role (`SET ROLE`), which could create it itself, so Slipway lends it nothing; another only
/// when the operator lists it in `allowed` (`[postgres.NAME] extensions`), by the admin, and
/// refused otherwise, naming the setting. Either goes in `public`.
fn reconcile_extensions(
    server: &Server,
    names: &Names,
    wanted: &[String],
    previous: &[String],
    allowed: &[String],
) -> Result<(), ProviderError> {
    let database = &names.database;
    let removed: Vec<&String> = previous.iter().filter(|e| !wanted.contains(e)).collect();
    if wanted.is_empty() && removed.is_empty() {
        return Ok(());
    }
    let mut s = server.connect_to(Some(database))?;
    let installed = installed_extensions(&mut s)?;
    for extension in wanted.iter().filter(|e| !installed.contains(*e)) {
        let Some(available) = available(&mut s, extension)? else {
            return Err(ProviderError::Config(format!(
                "{TYPE}: extension {extension:?} is not available on server {} \
                 (`select name from pg_available_extensions` lists those it has)",
                server.name
            )));
        };
        // Where its control file says, or `public`: never the session's default schema.
        let create = format!(
            "CREATE EXTENSION IF NOT EXISTS {}{}",
            ident(extension)?,
            if available.fixed_schema {
                ""
            } else {
                " SCHEMA public"
            }
        );
        let statement = if available.by_owner {
            format!("SET ROLE {}; {create}; RESET ROLE", ident(&names.role)?)
        } else if allowed.contains(extension) {
            create
        } else {
            return Err(ProviderError::Config(format!(
                "{TYPE}: extension {extension:?} is not marked trusted by PostgreSQL on server \
                 {}: only the admin may create it, and its install script would run with the \
                 admin's rights in a database the environment's code controls; list it in \
                 the engine config's `[postgres.{}] extensions` to allow it",
                server.name, server.name
            )));
        };
        s.execute(
            &format!("create extension {extension:?} in database {database:?}"),
            &statement,
        )
        .map_err(|e| s.fail(e))?;
    }
    for extension in removed.into_iter().filter(|e| installed.contains(*e)) {
        s.execute(
            &format!(
                "drop extension {extension:?} from database {database:?} (Slipway drops \
                 without CASCADE: remove what uses it first)"
            ),
            &format!("DROP EXTENSION IF EXISTS {}", ident(extension)?),
        )
        .map_err(|e| s.fail(e))?;
    }
    Ok(())
}

/// What the server says of an extension, in the version `CREATE EXTENSION` installs.
struct Available {
    /// The database's owner may create it: PostgreSQL marks it trusted (13 and later), or it
    /// needs no superuser at all. (PostgreSQL checks this again when the role creates it.)
    by_owner: bool,
    /// Its control file fixes its schema.
    fixed_schema: bool,
}

/// [`Available`] of `extension`, or `None` when the server does not have it.
fn available(
    s: &mut sql::Session<'_>,
    extension: &str,
) -> Result<Option<Available>, ProviderError> {
    let by_owner = if s.server_version().map_err(|e| s.fail(e))? >= 130000 {
        "v.trusted or not v.superuser"
    } else {
        "not v.superuser"
    };
    let rows = s
        .query(
            &format!("read what the server says of extension {extension:?}"),
            &format!(
                "select {by_owner}, v.schema is not null \
                 from pg_catalog.pg_available_extension_versions v \
                 join pg_catalog.pg_available_extensions e \
                   on e.name = v.name and e.default_version = v.version \
                 where v.name = $1"
            ),
            &[extension],
        )
        .map_err(|e| s.fail(e))?;
    Ok(rows.first().map(|row| Available {
        by_owner: row.get(0),
        fixed_schema: row.get(1),
    }))
}

fn applied(
    server: &Server,
    names: &Names,
    password: &str,
    extensions: Vec<String>,
    role_oid: Option<u32>,
) -> Result<Applied, ProviderError> {
    let live = LiveDatabase {
        server: server.name.clone(),
        database: names.database.clone(),
        role: names.role.clone(),
        password: password.to_owned(),
        extensions,
        role_oid,
    };
    Ok(Applied {
        outputs: BTreeMap::from([
            (
                "url".to_owned(),
                json!(server.client_url(&names.role, password, &names.database)),
            ),
            ("host".to_owned(), json!(server.host)),
            ("port".to_owned(), json!(server.port)),
            ("database".to_owned(), json!(names.database)),
            ("user".to_owned(), json!(names.role)),
            ("password".to_owned(), json!(password)),
        ]),
        secret_outputs: vec!["password".to_owned(), "url".to_owned()],
        live: serde_json::to_value(&live).expect("a record of strings serializes"),
        ready: false,
    })
}
