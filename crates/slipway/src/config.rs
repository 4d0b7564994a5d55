//! The configuration file (`--config`, `SLIPWAY_CONFIG`; SPEC §6), composed of the sections
//! each crate owns: `[server]` (slipway-server), `[controller]` (slipway-controller),
//! `[forge.NAME]` (slipway-forge), `[postgres.NAME]`, `[kubernetes.NAME]`, `[secrets]`, `[local]` and
//! `[environments]` (slipway-engine), `[notify.NAME]` (slipway-controller), and `[repo]` (here). Each section reads and checks
//! itself; an unknown key anywhere is refused. Every key has a default.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;
use slipway_controller::ControllerConfig;
use slipway_controller::notify::NotifySection;
use slipway_engine::EngineConfig;
use slipway_engine::config::{
    EnvironmentsConfig, LocalConfig, PoliciesConfig, PostgresServer, SecretsConfig, StateConfig,
};
use slipway_forge::ForgeSection;
use slipway_server::ServerConfig;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`
    #[serde(default)]
    pub server: ServerConfig,
    /// `[repo]`
    #[serde(default)]
    pub repo: RepoConfig,
    /// `[forge.NAME]`: at most one.
    #[serde(default)]
    pub forge: BTreeMap<String, ForgeSection>,
    /// `[postgres.NAME]`: servers that `postgres.*` resources may use.
    #[serde(default)]
    pub postgres: BTreeMap<String, PostgresServer>,
    /// `[kubernetes.NAME]`: clusters that `kubernetes.manifests` resources may use.
    #[serde(default)]
    pub kubernetes: BTreeMap<String, slipway_providers::kubernetes::ClusterConfig>,
    /// `[secrets]`: how the engine decrypts the repository's secrets.
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// `[local]`
    #[serde(default)]
    pub local: LocalConfig,
    /// `[controller]`: how `slipway serve` paces itself.
    #[serde(default)]
    pub controller: ControllerConfig,
    /// `[environments]`: limits on environments people make (ad-hoc) and extend.
    #[serde(default)]
    pub environments: EnvironmentsConfig,
    /// `[state]`: where the state is kept (the home's SQLite file, or PostgreSQL).
    #[serde(default)]
    pub state: StateConfig,
    /// `[notify.NAME]`: receivers of notifications (`slipway serve`).
    #[serde(default)]
    pub notify: BTreeMap<String, NotifySection>,
    /// `[policies]`: the policy gate on plans.
    #[serde(default)]
    pub policies: PoliciesConfig,
}

/// `[repo]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepoConfig {
    /// A local path or a `file://`, `https://`, `ssh://` URL; default: the current repository.
    pub url: Option<String>,
    /// The folder holding `slipway.yaml`.
    pub path: String,
    /// How often the controller fetches.
    #[serde(deserialize_with = "slipway_core::duration::positive")]
    pub poll_interval: Duration,
}

impl Default for RepoConfig {
    fn default() -> Self {
        RepoConfig {
            url: None,
            path: ".".into(),
            poll_interval: Duration::from_secs(15),
        }
    }
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the engine configuration {}", path.display()))?;
        Self::parse(&text).map_err(|message| {
            anyhow::anyhow!("invalid engine configuration {}: {message}", path.display())
        })
    }

    /// Parses and checks configuration text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.engine().check()?;
        Ok(config)
    }

    /// The engine's part.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            postgres: self.postgres.clone(),
            kubernetes: self.kubernetes.clone(),
            secrets: self.secrets.clone(),
            local: self.local.clone(),
            environments: self.environments.clone(),
            state: self.state.clone(),
            policies: self.policies.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_configuration_parses() {
        let text = r#"
[server]
listen = "127.0.0.1:7300"
[repo]
url = "file:///srv/git/shop.git"
path = "."
poll_interval = "15s"
[forge.github]
repository = "acme/shop"
api_url = "https://api.github.com"
token_env = "GITHUB_TOKEN"
webhook_secret_env = "SLIPWAY_WEBHOOK_SECRET"
[postgres.main]
url_env = "SLIPWAY_PG_MAIN_URL"
[local]
ports = "20000-29999"
"#;
        let config = Config::parse(text).expect("the SPEC §6 example parses");
        assert_eq!(config.engine().port_range(), 20000..=29999);
        assert_eq!(config.forge["github"].repository, "acme/shop");
        assert_eq!(config.repo.poll_interval, Duration::from_secs(15));
    }

    #[test]
    fn static_environments_workers_are_configured_apart() {
        let config =
            Config::parse("[controller]\nconcurrency = 8\nstatic_concurrency = 0").expect("parses");
        let options = config.controller.options(Duration::from_secs(15), 8);
        assert_eq!((options.concurrency, options.static_concurrency), (8, 0));
        assert_eq!(options.author_limit(), 4, "one person: half the workers");
        let config =
            Config::parse("[controller]\nconcurrency = 3\nauthor_concurrency = 0").expect("parses");
        let options = config.controller.options(Duration::from_secs(15), 8);
        assert_eq!(options.author_limit(), 0, "no limit");
        let options = Config::parse("[controller]\nconcurrency = 3")
            .expect("parses")
            .controller
            .options(Duration::from_secs(15), 8);
        assert_eq!(options.author_limit(), 2);
    }

    #[test]
    fn no_file_means_every_default() {
        let config = Config::parse("").expect("an empty file parses");
        assert_eq!(config.server.listen, "127.0.0.1:7300");
        assert_eq!(config.server.header_timeout, Duration::from_secs(10));
        assert_eq!(config.controller.drift_interval, Duration::from_secs(30));
        assert_eq!(
            (
                config.controller.concurrency,
                config.controller.static_concurrency
            ),
            (4, 2)
        );
        assert_eq!(
            config.controller.retention,
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(config.engine().uid_range(), 200_000..=299_999);
        assert_eq!(
            config.environments.default_ttl(),
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        for (text, named) in [
            ("[local]\nprots = \"1-2\"", "prots"),
            ("[local]\nports = \"9-1\"", "ports"),
            ("[local]\nuids = \"0-10\"", "uids"),
            ("[local]\nisolation = \"chroot\"", "isolation"),
            ("[local]\nstop_grace = \"soon\"", "stop_grace"),
            ("[local]\nparallelism = 0", "parallelism"),
            ("[local]\nmax_environments = 0", "max_environments"),
            ("[local]\nmax_environments = -3", "max_environments"),
            ("[repo]\npoll_interval = \"0s\"", "poll_interval"),
            ("[server]\nheader_timeout = \"0s\"", "header_timeout"),
            ("[server]\npreview_timeout = \"1 m\"", "preview_timeout"),
            ("[controller]\nretention = \"forever\"", "retention"),
            (
                "[controller]\nstatic_concurrency = -1",
                "static_concurrency",
            ),
            (
                "[controller]\nauthor_concurrency = -1",
                "author_concurrency",
            ),
            ("[environments]\nmax_ttl = \"0s\"", "max_ttl"),
            (
                "[forge.github]\nrepository = \"a/b\"\ntoken = \"x\"",
                "token",
            ),
            (
                "[forge.github]\nrepository_id = 0\nrepository = \"a/b\"",
                "repository_id",
            ),
            (
                "[forge.github]\nfork_allow = \"bob\"\nrepository = \"a/b\"",
                "fork_allow",
            ),
            ("[forge.github]\napi_url = \"https://x\"", "repository"),
            (
                "[postgres.main]\nurl = \"postgres://u:pw@db/x\"",
                "holds a password",
            ),
            ("[servr]\nlisten = \"x\"", "servr"),
            ("[notify.chat]\nformat = \"json\"", "url_env"),
            (
                "[notify.chat]\nurl_env = \"U\"\nformat = \"teams\"",
                "slack",
            ),
            (
                "[notify.chat]\nurl_env = \"U\"\nevents = [\"deployed\", \"exploded\"]",
                "deployed`, `failed`, `expired`, `drift`, `held`, `woke",
            ),
            ("[notify.chat]\nurl_env = \"U\"\nurl = \"https://x\"", "url"),
        ] {
            let e = Config::parse(text).expect_err(text);
            assert!(e.contains(named), "{text:?} names {named}: {e}");
        }
        let config = Config::parse("[local]\nisolation = \"none\"\nuids = \"5-9\"")
            .expect("isolation and uids parse");
        assert_eq!(config.engine().uid_range(), 5..=9);
    }
}
