//! The engine's own configuration (SPEC §6): where things run and the credentials, never in
//! the repository. A TOML file; every key has a default, so no file is needed to start.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::Path;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// `[server]`
    #[serde(default)]
    pub server: ServerConfig,
    /// `[repo]`
    #[serde(default)]
    pub repo: RepoConfig,
    /// `[forge.NAME]`, kept for the controller.
    #[serde(default)]
    pub forge: BTreeMap<String, toml::Table>,
    /// `[postgres.NAME]`, kept for the postgres provider.
    #[serde(default)]
    pub postgres: BTreeMap<String, toml::Table>,
    /// `[local]`
    #[serde(default)]
    pub local: LocalConfig,
    /// `[controller]`: how `slipway serve` paces itself.
    #[serde(default)]
    pub controller: ControllerConfig,
}

/// `[controller]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// How often every environment is observed for drift.
    #[serde(default = "default_drift")]
    pub drift_interval: String,
    /// The safety-net requeue of every environment.
    #[serde(default = "default_requeue")]
    pub requeue_interval: String,
    /// Most environments reconciled at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            drift_interval: default_drift(),
            requeue_interval: default_requeue(),
            concurrency: default_concurrency(),
        }
    }
}

fn default_drift() -> String {
    "30s".into()
}
fn default_requeue() -> String {
    "5m".into()
}
fn default_concurrency() -> usize {
    4
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// API, UI, webhooks and the preview router.
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:7300".into()
}

/// `[repo]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// A local path or a `file://`, `https://`, `ssh://` URL; default: the current repository.
    pub url: Option<String>,
    /// The folder holding `slipway.yaml`.
    #[serde(default = "default_path")]
    pub path: String,
    /// How often the controller fetches.
    #[serde(default = "default_poll")]
    pub poll_interval: String,
}

impl Default for RepoConfig {
    fn default() -> Self {
        RepoConfig {
            url: None,
            path: default_path(),
            poll_interval: default_poll(),
        }
    }
}

fn default_path() -> String {
    ".".into()
}

fn default_poll() -> String {
    "15s".into()
}

/// `[local]`: the embedded local runtime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// The range ports are allocated from, `"LOW-HIGH"`.
    #[serde(default = "default_ports")]
    pub ports: String,
    /// How many resources apply changes at once.
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
    /// Time between SIGTERM and SIGKILL.
    #[serde(default = "default_grace")]
    pub stop_grace: String,
    /// How long a process may take to become healthy, or a job to finish.
    #[serde(default = "default_ready")]
    pub ready_timeout: String,
    /// A resource's log is rotated past this many bytes.
    #[serde(default = "default_log_bytes")]
    pub log_max_bytes: u64,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            ports: default_ports(),
            parallelism: default_parallelism(),
            stop_grace: default_grace(),
            ready_timeout: default_ready(),
            log_max_bytes: default_log_bytes(),
        }
    }
}

fn default_ports() -> String {
    "20000-29999".into()
}
fn default_parallelism() -> usize {
    8
}
fn default_grace() -> String {
    "10s".into()
}
fn default_ready() -> String {
    "60s".into()
}
fn default_log_bytes() -> u64 {
    10 * 1024 * 1024
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not readable.
    #[error("cannot read the engine configuration {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or an unknown or mistyped key.
    #[error("invalid engine configuration {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What toml said, with line and column.
        message: String,
    },
}

impl EngineConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<EngineConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<EngineConfig, String> {
        let config: EngineConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.port_range()?;
        for (key, value) in [
            ("local.stop_grace", &config.local.stop_grace),
            ("local.ready_timeout", &config.local.ready_timeout),
            ("repo.poll_interval", &config.repo.poll_interval),
            (
                "controller.drift_interval",
                &config.controller.drift_interval,
            ),
            (
                "controller.requeue_interval",
                &config.controller.requeue_interval,
            ),
        ] {
            if slipway_core::stack::parse_duration(value).is_none() {
                return Err(format!(
                    "`{key}` = {value:?} is not a duration such as \"10s\""
                ));
            }
        }
        if config.local.parallelism == 0 {
            return Err("`local.parallelism` must be at least 1".into());
        }
        Ok(config)
    }

    /// `[local] ports` as a range.
    pub fn port_range(&self) -> Result<RangeInclusive<u16>, String> {
        let bad = || {
            format!(
                "`local.ports` = {:?} is not a range such as \"20000-29999\"",
                self.local.ports
            )
        };
        let (lo, hi) = self.local.ports.split_once('-').ok_or_else(bad)?;
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if lo == 0 || lo > hi {
            return Err(bad());
        }
        Ok(lo..=hi)
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
        let config = EngineConfig::parse(text).expect("the SPEC §6 example parses");
        assert_eq!(config.port_range().expect("a range"), 20000..=29999);
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        assert!(
            EngineConfig::parse("[local]\nprots = \"1-2\"")
                .unwrap_err()
                .contains("prots")
        );
        assert!(
            EngineConfig::parse("[local]\nports = \"9-1\"")
                .unwrap_err()
                .contains("local.ports")
        );
        assert!(
            EngineConfig::parse("[local]\nstop_grace = \"soon\"")
                .unwrap_err()
                .contains("stop_grace")
        );
    }
}
