//! `postgres.role`: a role with a generated password, for an application that shares a
//! database made elsewhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::catalog::{self, Ownership};
use super::sql::{self, Server};
use super::{Intent, Names, OnServer, PgServers, Recorded, parse_live};
use crate::{Action, Applied, Observation, Provider, ProviderError, ResourceContext, ResourceKey};

pub(super) const TYPE: &str = "postgres.role";

/// Configuration of a `postgres.role` resource.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// The `[postgres.NAME]` server of the engine config; the only one if absent.
    #[serde(default)]
    pub server: Option<String>,
    /// Whether the role may log in; true if absent.
    #[serde(default)]
    pub login: Option<bool>,
    #[serde(default, rename = "description")]
    _description: Option<IgnoredAny>,
    #[serde(default, rename = "depends_on")]
    _depends_on: Option<IgnoredAny>,
}

impl RoleConfig {
    fn login(&self) -> bool {
        self.login.unwrap_or(true)
    }
}

/// The `postgres.role` provider.
#[derive(Debug, Clone)]
pub struct RoleProvider {
    servers: Arc<PgServers>,
}

impl RoleProvider {
    /// A provider creating roles on `servers`.
    pub fn new(servers: Arc<PgServers>) -> Self {
        RoleProvider { servers }
    }
}

/// What `create` and `update` record as the live object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LiveRole {
    server: String,
    role: String,
    password: String,
    login: bool,
}

impl OnServer for RoleConfig {
    fn server(&self) -> Option<&str> {
        self.server.as_deref()
    }
}

impl Recorded for LiveRole {
    fn server(&self) -> &str {
        &self.server
    }
}

impl Provider for RoleProvider {
    type Config = RoleConfig;
    const TYPE: &'static str = TYPE;

    /// Nothing to wait for once made.
    fn ready_at_once(&self, _config: &Self::Config) -> bool {
        true
    }

    fn expect_change(&self, resource: ResourceKey<'_>, _action: Action, config: &Value) {
        // The server it names, or the only one; a reference (`${…}`) names none yet. Its
        // question is the one a create and a delete ask first.
        let names = self.servers.names_of(resource);
        self.servers.warm(
            TYPE,
            config.get("server").and_then(Value::as_str),
            catalog::role_ahead(&names.role),
        );
    }

    fn create(
        &self,
        ctx: ResourceContext<'_>,
        config: &RoleConfig,
    ) -> Result<Applied, ProviderError> {
        let server = self.servers.choose(TYPE, config.server.as_deref())?;
        let password = sql::generate_password()?;
        let role = self.servers.names(ctx).role;
        self.ensure(ctx, &server, &role, config.login(), &password)
    }

    fn update(
        &self,
        ctx: ResourceContext<'_>,
        config: &RoleConfig,
        live: &Value,
    ) -> Result<Applied, ProviderError> {
        self.servers
            .update(self, ctx, config, live, |server, recorded: LiveRole| {
                self.ensure(
                    ctx,
                    server,
                    &recorded.role,
                    config.login(),
                    &recorded.password,
                )
            })
    }

    fn delete(&self, ctx: ResourceContext<'_>, live: Option<&Value>) -> Result<(), ProviderError> {
        let recorded = live
            .map(|live| parse_live::<LiveRole>(TYPE, live))
            .transpose()?
            .map(|recorded| (recorded.server, recorded.role));
        let current = |names: &Names| names.role.clone();
        let environment = self.servers.environment_marker(ctx);
        self.servers
            .delete_each(ctx, TYPE, recorded, current, |s, role, marker| {
                let found = catalog::role(s, role, marker).map_err(|e| s.fail(e))?;
                if found.ownership == Ownership::Ours {
                    // What its environment's databases granted it goes with it (see
                    // `catalog::drop_role`).
                    catalog::drop_role(s, role, &environment)?;
                }
                Ok(())
            })
    }

    fn observe(
        &self,
        ctx: ResourceContext<'_>,
        _config: &RoleConfig,
        live: &Value,
    ) -> Result<Observation, ProviderError> {
        let recorded: LiveRole = parse_live(TYPE, live)?;
        let server = self.servers.recorded(TYPE, &recorded.server)?;
        let mut s = server.connect()?;
        let found = catalog::role(&mut s, &recorded.role, &self.servers.marker(ctx))
            .map_err(|e| s.fail(e))?;
        let (name, on) = (&recorded.role, &server.name);
        Ok(match found.ownership {
            Ownership::Absent => Observation::Missing {
                reason: format!(
                    "role \"{name}\" was dropped on server {on}; recreating it gives it a new \
                     password"
                ),
            },
            Ownership::Foreign(why) => Observation::Drifted {
                reason: format!(
                    "role \"{name}\" on server {on} was replaced by one Slipway did not create \
                     ({why})"
                ),
            },
            Ownership::Ours if found.can_login != Some(recorded.login) => Observation::Drifted {
                reason: if recorded.login {
                    format!("role \"{name}\" on server {on} can no longer log in")
                } else {
                    format!("role \"{name}\" on server {on} can now log in")
                },
            },
            Ownership::Ours => match catalog::shut_out(
                &mut s,
                name,
                &super::names::environment_prefix(ctx.environment),
                &self.servers.environment_marker(ctx),
            )? {
                Some(database) => Observation::Drifted {
                    reason: format!(
                        "role \"{name}\" may not connect to its environment's database \
                         \"{database}\" on server {on} (made after it by another replica, or \
                         its owner revoked it): the update lets it in"
                    ),
                },
                None => Observation::InSync,
            },
        })
    }
}

impl RoleProvider {
    /// Makes the role exist with `login` and `password`, refusing one that is not ours.
    fn ensure(
        &self,
        ctx: ResourceContext<'_>,
        server: &Server,
        role: &str,
        login: bool,
        password: &str,
    ) -> Result<Applied, ProviderError> {
        let marker = self.servers.marker(ctx);
        let hashed = catalog::RolePassword::hashing(password);
        Intent::record(ctx, &self.servers.names(ctx), TYPE, &server.name)?;
        let mut s = server.connect()?;
        let found = catalog::role(&mut s, role, &marker).map_err(|e| s.fail(e))?;
        if let Ownership::Foreign(why) = &found.ownership {
            return Err(catalog::not_ours(server, "role", role, why));
        }
        let limit = self.servers.connection_limit(&server.name, ctx.kind);
        let cap = self.servers.role_cap(ctx, &server.name, role)?;
        catalog::ensure_role(
            &mut s,
            &found,
            role,
            &marker,
            login,
            hashed,
            limit,
            cap.as_deref(),
        )?;
        // Its environment's databases let it in, as they did before they kept every other
        // role out (see `catalog::let_in`).
        let grant = catalog::let_in_to(
            role,
            &super::names::environment_prefix(ctx.environment),
            &self.servers.environment_marker(ctx),
        )?;
        s.execute(
            &format!("let role {role:?} into its environment's databases"),
            &grant,
        )
        .map_err(|e| s.fail(e))?;
        let live = LiveRole {
            server: server.name.clone(),
            role: role.to_owned(),
            password: password.to_owned(),
            login,
        };
        Ok(Applied {
            outputs: BTreeMap::from([
                ("user".to_owned(), json!(role)),
                ("password".to_owned(), json!(password)),
                ("host".to_owned(), json!(server.host)),
                ("port".to_owned(), json!(server.port)),
            ]),
            secret_outputs: vec!["password".to_owned()],
            live: serde_json::to_value(&live).expect("a record of strings serializes"),
            ready: false,
        })
    }
}
