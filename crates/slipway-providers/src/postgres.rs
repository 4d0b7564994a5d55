//! The `postgres.database` and `postgres.role` resource types: a database with its owner role,
//! or a role alone, per environment, on a PostgreSQL server named in the engine config.
//!
//! Start with [`PgServers`] (the configured servers and this Slipway home's id), then
//! [`DatabaseProvider`] and [`RoleProvider`]; [`names`] says what the objects are called.
//!
//! # Guarantees
//! - Every database and role is named by [`names`] from the home's instance id, the environment
//!   and the resource, and carries the comment `slipway:<instance_id>:<environment>/<resource>`
//!   (its *marker*). A role gets its marker in the transaction that creates it. A database
//!   cannot (`CREATE DATABASE` runs outside transactions), so a database counts as ours when it
//!   has our marker, or when its owner is a role with our marker: what a create interrupted
//!   between `CREATE DATABASE` and `COMMENT ON` leaves, and what the environment's code may
//!   make of its database's comment (its role owns it). Only a role that may act as ours
//!   (a superuser, the admin, before PostgreSQL 16 any role with `CREATEROLE`) and may create
//!   databases can give one of our roles a database.
//! - A role's marker cannot be changed by the role (that takes `CREATEROLE`), nor its oid
//!   (but by a superuser's `pg_upgrade`, which keeps the marker too). A delete whose live
//!   record keeps the role's oid (a create's or an update's since it was recorded), for the
//!   names this resource's objects have, checks that oid instead of the markers: the role of
//!   that oid, and a database of our name absent or owned by it, are ours, whatever their
//!   comments say now (the role Slipway made is dropped with its environment even if someone
//!   re-commented it); anything else is looked at by marker.
//! - Nothing else is ever adopted, altered or dropped: a database or role of the same name
//!   without our marker makes `create` fail with a terminal error naming it, and `delete`
//!   leaves it alone.
//! - Before touching a server, `create` records its name in
//!   `<run>/<name>.postgres.database.json` (or `.postgres.role.json`), so that `delete` with
//!   `live: None` knows where an interrupted create may have left something, without having to
//!   reach every configured server. A successful delete removes that file.
//! - An environment's database lets in, besides its owner, only its environment's
//!   `postgres.role`s (named by this node's records of intent, or finding it on the server
//!   themselves; checked by marker either way) and the roles `[postgres.NAME] connect`
//!   lists, not `PUBLIC`; it is made refusing every connection until then (see
//!   `catalog::let_in`).
//! - Only names and values quoted by `sql::ident` and `sql::literal` reach SQL text;
//!   everything else goes as a query parameter.
//! - No message carries a server's admin password: URLs are shown through [`redact_url`], and
//!   the password is scrubbed from every error text as well.
//! - A server that cannot be reached gives a retryable error, never a drift report.
//!
//! # Assumptions
//! - The admin URL's user may create databases and roles and comment on them (a superuser, or
//!   a role with `CREATEDB` and `CREATEROLE` that is granted the roles it creates).
//! - The providers block (the `postgres` client runs its own small runtime per connection): the
//!   engine calls them from a thread of its own, never from inside an async runtime.
//!
//! # Caveats
//! - Whether an object is ours is read, then acted on by another statement: another client
//!   able to drop it and make one of the same name in between (a superuser, or the owner and
//!   a role with `CREATEDB` together) could have Slipway alter or drop theirs. The read may
//!   be the one a connection made ahead asked (`sql::Ahead`), up to 50 ms earlier, never
//!   before a statement of Slipway's own. A first create reads nothing (the server refuses a
//!   second role or database of a name, so what it makes is ours); when its database is not
//!   made, it drops the role it made a moment before only if that role still carries its
//!   marker, checked and dropped in one statement (the window between the check and the drop
//!   is no longer a round trip, but not closed).
//! - Objects cloned from a `template` keep their owners: tables the admin created in the
//!   template are the admin's in the clone, not the generated role's.
//! - Extensions are created in `public` of the environment's database, with `CREATE EXTENSION
//!   IF NOT EXISTS`: one PostgreSQL marks trusted as the environment's role (its install
//!   script runs in a database the environment's code controls, and the role could create it
//!   itself), any other by the admin, and only when the operator lists it
//!   (`[postgres.NAME] extensions`). Removing one from `extensions` drops it without
//!   `CASCADE`, so it fails (terminally) while objects use it.

mod catalog;
mod database;
mod names;
mod role;
mod sql;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Applied, Provider, ProviderError, ResourceContext, ResourceKey};

pub use database::{DatabaseConfig, DatabaseProvider, Strategy};
pub use names::{MAX_NAME_BYTES, Names, names};
pub use role::{RoleConfig, RoleProvider};
pub use sql::redact_url;

use sql::{Server, Session};

/// The PostgreSQL servers that `postgres.*` resources may use, by the `NAME` of their
/// `[postgres.NAME]` section in the engine config, and the id of this Slipway home.
///
/// The URLs are checked when a resource uses them, so that one bad server does not stop the
/// others. Its `Debug` form hides their passwords.
pub struct PgServers {
    servers: BTreeMap<String, String>,
    /// Servers configured but unusable (their URL's variable unset, say), with why.
    unavailable: BTreeMap<String, String>,
    /// The databases each server allows as `template:`.
    templates: BTreeMap<String, Vec<String>>,
    /// The untrusted extensions each server allows in `extensions:`.
    extensions: BTreeMap<String, Vec<String>>,
    /// The roles each server's environment databases let connect besides their own.
    connect: BTreeMap<String, Vec<String>>,
    /// How many connections at once each server lets a role of a static environment and a
    /// role of any other have ([`PgServers::with_connection_limits`]); a server not listed
    /// has the defaults.
    limits: BTreeMap<String, ConnectionLimits>,
    /// How many roles a generated or ad-hoc environment may have on a server
    /// ([`PgServers::with_role_cap`]); `None`: no cap.
    role_cap: Option<u32>,
    instance_id: String,
    /// Admin connections made ahead ([`PgServers::warm`]).
    warm: Arc<sql::Warm>,
}

/// How many connections at once each role Slipway makes on a server may have (PostgreSQL's
/// `CONNECTION LIMIT`, `-1` for none), by whether anyone reviewed its environment's code.
///
/// Whoever can push a branch holds its preview's role passwords: without a limit its code
/// could open every connection the server allows (`max_connections`, less the superusers'
/// reserve) and leave production's roles none. Static environments' roles get none set by
/// default: what they have (a limit an operator set by hand) stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A static environment's roles (`[postgres.NAME] connection_limit`); `None`: left as
    /// they are.
    pub reviewed: Option<i32>,
    /// A generated or ad-hoc environment's (`[postgres.NAME] preview_connection_limit`).
    pub unreviewed: i32,
}

impl ConnectionLimits {
    /// The default of a generated or ad-hoc environment's roles: a pool of five, a
    /// migration and a few sessions by hand, each.
    pub const PREVIEW_DEFAULT: i32 = 10;
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            reviewed: None,
            unreviewed: ConnectionLimits::PREVIEW_DEFAULT,
        }
    }
}

impl fmt::Debug for PgServers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: BTreeMap<&str, String> = self
            .servers
            .iter()
            .map(|(name, url)| (name.as_str(), redact_url(url)))
            .collect();
        f.debug_struct("PgServers")
            .field("servers", &shown)
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

/// What the operator lists for server `name` in one of its settings (none if it lists nothing).
fn listed<'a>(lists: &'a BTreeMap<String, Vec<String>>, name: &str) -> &'a [String] {
    lists.get(name).map(Vec::as_slice).unwrap_or(&[])
}

impl PgServers {
    /// `servers` maps each server's name to its admin connection string (a
    /// `postgres://user:password@host:port/database` URL or a libpq key-value string);
    /// `instance_id` is a random id unique to this Slipway home, mixed into every name so that
    /// two homes sharing a server never touch each other's objects.
    pub fn new(servers: BTreeMap<String, String>, instance_id: &str) -> Self {
        PgServers {
            servers,
            unavailable: BTreeMap::new(),
            templates: BTreeMap::new(),
            extensions: BTreeMap::new(),
            connect: BTreeMap::new(),
            limits: BTreeMap::new(),
            role_cap: None,
            instance_id: instance_id.to_owned(),
            warm: Arc::default(),
        }
    }

    /// Starts an admin connection to the server a `type_name` resource whose `server:` field
    /// is `requested` would use, for its change to take, asking `ahead` (see `Server::warm`);
    /// nothing when that server cannot be chosen (the change reports why).
    fn warm(&self, type_name: &str, requested: Option<&str>, ahead: sql::Ahead) {
        if let Ok(server) = self.choose(type_name, requested) {
            server.warm(ahead);
        }
    }

    /// Allows `postgres.database` resources on server `name` to clone the databases
    /// `templates` (`[postgres.NAME] templates`). Without it, no template is allowed: a
    /// template is read by whoever's environment clones it, so the operator says which.
    pub fn with_templates(mut self, name: &str, templates: Vec<String>) -> Self {
        self.templates.insert(name.to_owned(), templates);
        self
    }

    /// Allows `postgres.database` resources on server `name` to ask for the extensions
    /// `extensions` that PostgreSQL does not mark trusted (`[postgres.NAME] extensions`): the
    /// admin creates those, so the operator says which. Trusted ones need no listing.
    pub fn with_extensions(mut self, name: &str, extensions: Vec<String>) -> Self {
        self.extensions.insert(name.to_owned(), extensions);
        self
    }

    /// Lets the roles `roles` connect to every environment's database on server `name`
    /// (`[postgres.NAME] connect`) besides its owner and its environment's roles, the only
    /// others it lets in: a pooler's `auth_user`, a monitoring role.
    pub fn with_connect(mut self, name: &str, roles: Vec<String>) -> Self {
        self.connect.insert(name.to_owned(), roles);
        self
    }

    /// Sets how many connections at once a role Slipway makes on server `name` may have
    /// (`[postgres.NAME] connection_limit` and `preview_connection_limit`).
    pub fn with_connection_limits(mut self, name: &str, limits: ConnectionLimits) -> Self {
        self.limits.insert(name.to_owned(), limits);
        self
    }

    /// Caps how many roles a generated or ad-hoc environment may have on each server
    /// (`[environments] max_postgres_roles`), counted on the server when one is made.
    pub fn with_role_cap(mut self, max: u32) -> Self {
        self.role_cap = Some(max);
        self
    }

    /// The statement that refuses to make the role `role` of `ctx`'s environment on
    /// `server` past the cap ([`catalog::role_cap`]); `None` for a static environment, one
    /// of no known kind, or with no cap.
    fn role_cap(
        &self,
        ctx: ResourceContext<'_>,
        server: &str,
        role: &str,
    ) -> Result<Option<String>, ProviderError> {
        let capped = matches!(
            ctx.kind,
            Some(slipway_core::vocab::EnvKind::Generated | slipway_core::vocab::EnvKind::Adhoc)
        );
        match self.role_cap.filter(|_| capped) {
            Some(max) => catalog::role_cap(
                &self.environment_marker(ctx),
                max,
                role,
                ctx.environment.as_str(),
                server,
            )
            .map(Some),
            None => Ok(None),
        }
    }

    /// How many connections at once a role of an environment of `kind` may have on server
    /// `name` (`-1`: no limit), as PostgreSQL's `CONNECTION LIMIT` takes it; `None` when
    /// nothing is to be set: the kind is not known (a delete), or a static environment's
    /// limit is not configured.
    fn connection_limit(
        &self,
        name: &str,
        kind: Option<slipway_core::vocab::EnvKind>,
    ) -> Option<i32> {
        let limits = self.limits.get(name).copied().unwrap_or_default();
        match kind? {
            slipway_core::vocab::EnvKind::Static => limits.reviewed,
            slipway_core::vocab::EnvKind::Generated | slipway_core::vocab::EnvKind::Adhoc => {
                Some(limits.unreviewed)
            }
        }
    }

    /// The roles server `name`'s environment databases let connect besides their own.
    fn connect(&self, name: &str) -> &[String] {
        listed(&self.connect, name)
    }

    /// The untrusted extensions server `name` allows.
    fn untrusted_extensions(&self, name: &str) -> &[String] {
        listed(&self.extensions, name)
    }

    /// Why `template` may not be cloned on server `name`, if it may not.
    fn template_refused(&self, name: &str, template: &str) -> Option<String> {
        let allowed = listed(&self.templates, name);
        if allowed.iter().any(|t| t == template) {
            return None;
        }
        Some(format!(
            "`template: {template}` is not allowed on PostgreSQL server {name}: the engine \
             config's `[postgres.{name}] templates` lists the databases that may be cloned ({}); \
             add it there if it is meant to be a template",
            if allowed.is_empty() {
                "none is listed".to_string()
            } else {
                format!("it lists: {}", allowed.join(", "))
            }
        ))
    }

    /// Adds a configured server that cannot be used, with the reason: resources that choose it
    /// fail with that reason, and the others are unaffected.
    pub fn with_unavailable(mut self, name: &str, reason: &str) -> Self {
        self.servers.insert(name.to_owned(), String::new());
        self.unavailable.insert(name.to_owned(), reason.to_owned());
        self
    }

    fn server(&self, name: &str, url: &str) -> Result<Server, ProviderError> {
        match self.unavailable.get(name) {
            Some(reason) => Err(ProviderError::Config(reason.clone())),
            None => Server::parse(name, url).map(|s| s.with_warm(self.warm.clone())),
        }
    }

    /// The id given to [`PgServers::new`].
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The configured servers' names, sorted.
    pub fn server_names(&self) -> impl Iterator<Item = &str> {
        self.servers.keys().map(String::as_str)
    }

    /// The server a resource's `server:` field asks for, or the only one configured.
    fn choose(&self, type_name: &str, requested: Option<&str>) -> Result<Server, ProviderError> {
        let listed = || self.server_names().collect::<Vec<_>>().join(", ");
        match requested {
            Some(name) => match self.servers.get(name) {
                Some(url) => self.server(name, url),
                None if self.servers.is_empty() => Err(ProviderError::Config(format!(
                    "{type_name}: `server: {name}` names a PostgreSQL server, but none is \
                     configured; add `[postgres.{name}]` with `url_env = \"SLIPWAY_PG_{}_URL\"` \
                     to the engine config",
                    env_suffix(name)
                ))),
                None => Err(ProviderError::Config(format!(
                    "{type_name}: `server: {name}` is not a configured PostgreSQL server; the \
                     configured ones are: {} (or add `[postgres.{name}]` to the engine config)",
                    listed()
                ))),
            },
            None => {
                let mut all = self.servers.iter();
                match (all.next(), all.next()) {
                    (Some((name, url)), None) => self.server(name, url),
                    (None, _) => Err(ProviderError::Config(format!(
                        "{type_name}: no PostgreSQL server is configured; add `[postgres.main]` \
                         with `url_env = \"SLIPWAY_PG_MAIN_URL\"` to the engine config (and set \
                         that variable to the server's admin URL)"
                    ))),
                    (Some(_), Some(_)) => Err(ProviderError::Config(format!(
                        "{type_name}: several PostgreSQL servers are configured ({}); say which \
                         one with `server:`",
                        listed()
                    ))),
                }
            }
        }
    }

    /// The server a resource was created on, as recorded.
    fn recorded(&self, type_name: &str, name: &str) -> Result<Server, ProviderError> {
        match self.servers.get(name) {
            Some(url) => self.server(name, url),
            None => Err(ProviderError::Config(format!(
                "{type_name}: this resource lives on PostgreSQL server {name}, which is no longer \
                 configured; add `[postgres.{name}]` back to the engine config so that Slipway \
                 can reach it ({})",
                match self.server_names().collect::<Vec<_>>().join(", ") {
                    none if none.is_empty() => "none is configured now".to_string(),
                    some => format!("the configured ones are: {some}"),
                }
            ))),
        }
    }

    /// An update of `provider`'s resource as its live record `live` says: `ensure` on the
    /// server it was made on, or a delete and a create when its `server:` now names another
    /// one (`server` forces a replacement, so the engine replaces instead; an update asked
    /// for it all the same gets the same result).
    fn update<P, L>(
        &self,
        provider: &P,
        ctx: ResourceContext<'_>,
        config: &P::Config,
        live: &Value,
        ensure: impl FnOnce(&Server, L) -> Result<Applied, ProviderError>,
    ) -> Result<Applied, ProviderError>
    where
        P: Provider,
        P::Config: OnServer,
        L: Recorded,
    {
        let recorded: L = parse_live(P::TYPE, live)?;
        let server = self.choose(P::TYPE, config.server())?;
        if server.name != recorded.server() {
            provider.delete(ctx, Some(live))?;
            return provider.create(ctx, config);
        }
        ensure(&server, recorded)
    }

    /// Drops what a resource may have left: `drop` gets a session on each server a delete must
    /// look at (the recorded `(server, target)` first, then those the record of intent names,
    /// with the target `current` gives for a create there) and the resource's marker; then the
    /// record of intent goes.
    fn delete_each<T: Clone + PartialEq>(
        &self,
        ctx: ResourceContext<'_>,
        type_name: &str,
        recorded: Option<(String, T)>,
        current: impl FnOnce(&Names) -> T,
        mut drop: impl FnMut(&mut Session<'_>, &T, &str) -> Result<(), ProviderError>,
    ) -> Result<(), ProviderError> {
        let names = self.names(ctx);
        let marker = self.marker(ctx);
        let targets = Intent::delete_targets(ctx, &names, type_name, recorded, &current(&names))?;
        for (server, target) in &targets {
            let server = self.recorded(type_name, server)?;
            let mut s = server.connect()?;
            drop(&mut s, target, &marker)?;
        }
        Intent::remove(ctx, &names, type_name)
    }

    /// The names of the objects of the resource `ctx` is about.
    fn names(&self, ctx: ResourceContext<'_>) -> Names {
        self.names_of(ctx.into())
    }

    /// The names of the objects of `resource`.
    fn names_of(&self, resource: ResourceKey<'_>) -> Names {
        names(&self.instance_id, resource.environment, resource.resource)
    }

    /// The start of every marker of this home's objects in `ctx`'s environment.
    fn environment_marker(&self, ctx: ResourceContext<'_>) -> String {
        format!("slipway:{}:{}/", self.instance_id, ctx.environment)
    }

    /// The comment that marks an object as this resource's.
    fn marker(&self, ctx: ResourceContext<'_>) -> String {
        format!(
            "slipway:{}:{}/{}",
            self.instance_id, ctx.environment, ctx.resource
        )
    }
}

/// A resource's configuration: the `[postgres.NAME]` server it asks for.
trait OnServer {
    fn server(&self) -> Option<&str>;
}

/// A live record: the server the resource was made on.
trait Recorded: DeserializeOwned {
    fn server(&self) -> &str;
}

/// Reads the live record a `create` or `update` of `type_name` wrote.
fn parse_live<T: DeserializeOwned>(type_name: &str, live: &Value) -> Result<T, ProviderError> {
    T::deserialize(live)
        .map_err(|e| ProviderError::Config(format!("{type_name}: unreadable live record: {e}")))
}

/// `main` → `MAIN`, for the suggested variable name.
fn env_suffix(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The servers a create of one resource has touched, recorded before touching them.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Intent {
    servers: BTreeSet<String>,
}

impl Intent {
    fn path(ctx: ResourceContext<'_>, names: &Names, type_name: &str) -> PathBuf {
        // The generated name, not the resource's: it is a plain file name whatever the input.
        ctx.dirs
            .run
            .join(format!("{}.{type_name}.json", names.role))
    }

    fn load(
        ctx: ResourceContext<'_>,
        names: &Names,
        type_name: &str,
    ) -> Result<Intent, ProviderError> {
        let path = Self::path(ctx, names, type_name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ProviderError::Config(format!("{type_name}: unreadable {}: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Intent::default()),
            Err(source) => Err(ProviderError::Io {
                context: format!("failed to read {}", path.display()),
                source,
            }),
        }
    }

    /// The names of the objects the resources of type `type_name` in `ctx`'s environment
    /// made or may have made through this node, on any server: each records its intent
    /// before it touches one, and removes it once deleted (another replica's are not here). Only names of our making are taken (`[a-z0-9_]`, 63
    /// bytes at most); the caller checks on the server that an object of the name is there,
    /// and the environment's (by its marker), before it grants anything.
    fn of_environment(
        ctx: ResourceContext<'_>,
        type_name: &str,
    ) -> Result<Vec<String>, ProviderError> {
        let suffix = format!(".{type_name}.json");
        let entries = match std::fs::read_dir(&ctx.dirs.run) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ProviderError::Io {
                    context: format!("failed to list {}", ctx.dirs.run.display()),
                    source,
                });
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let file = entry.file_name().into_string().ok()?;
                let name = file.strip_suffix(&suffix)?;
                let ours = !name.is_empty()
                    && name.len() <= MAX_NAME_BYTES
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                ours.then(|| name.to_owned())
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// What a delete must look at: the recorded `(server, name)` first, then every server the
    /// record of intent names, with the name `current` a create there would have used.
    fn delete_targets<T: Clone + PartialEq>(
        ctx: ResourceContext<'_>,
        names: &Names,
        type_name: &str,
        recorded: Option<(String, T)>,
        current: &T,
    ) -> Result<Vec<(String, T)>, ProviderError> {
        let mut targets: Vec<(String, T)> = recorded.into_iter().collect();
        for server in Self::load(ctx, names, type_name)?.servers {
            let target = (server, current.clone());
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        Ok(targets)
    }

    /// Adds `server` to the record, durably, unless it is there already.
    fn record(
        ctx: ResourceContext<'_>,
        names: &Names,
        type_name: &str,
        server: &str,
    ) -> Result<(), ProviderError> {
        let mut intent = Self::load(ctx, names, type_name)?;
        if !intent.servers.insert(server.to_owned()) {
            return Ok(());
        }
        let path = Self::path(ctx, names, type_name);
        let bytes = serde_json::to_vec(&intent).expect("a set of strings serializes");
        crate::atomic_write(&path, &bytes).map_err(|source| ProviderError::Io {
            context: format!("failed to write {}", path.display()),
            source,
        })
    }

    fn remove(
        ctx: ResourceContext<'_>,
        names: &Names,
        type_name: &str,
    ) -> Result<(), ProviderError> {
        let path = Self::path(ctx, names, type_name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ProviderError::Io {
                context: format!("failed to remove {}", path.display()),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}
