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
    /// `[postgres.NAME]`: servers that `postgres.*` resources may use.
    #[serde(default)]
    pub postgres: BTreeMap<String, PostgresServer>,
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
}

/// `[environments]`: how long environments made or extended by hand may live. Anyone with
/// the developer role makes ad-hoc environments, so their life is bounded by the operator,
/// not by the request or by the repository.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentsConfig {
    /// The longest an ad-hoc environment lives, and the furthest `extend` moves any expiry
    /// from now. A longer `ttl` is refused; a family's longer `ttl` is cut to this.
    #[serde(default = "default_max_ttl")]
    pub max_ttl: String,
    /// The life of an ad-hoc environment when neither the request nor its family's `ttl`
    /// says (cut to `max_ttl`).
    #[serde(default = "default_ttl")]
    pub default_ttl: String,
}

impl Default for EnvironmentsConfig {
    fn default() -> Self {
        EnvironmentsConfig {
            max_ttl: default_max_ttl(),
            default_ttl: default_ttl(),
        }
    }
}

impl EnvironmentsConfig {
    /// `max_ttl` as a duration (checked when the file was parsed).
    pub fn max_ttl(&self) -> std::time::Duration {
        slipway_core::stack::parse_duration(&self.max_ttl)
            .unwrap_or(std::time::Duration::from_secs(7 * 24 * 3600))
    }

    /// `default_ttl` as a duration, never longer than `max_ttl`.
    pub fn default_ttl(&self) -> std::time::Duration {
        slipway_core::stack::parse_duration(&self.default_ttl)
            .unwrap_or(std::time::Duration::from_secs(24 * 3600))
            .min(self.max_ttl())
    }
}

fn default_max_ttl() -> String {
    "7d".into()
}
fn default_ttl() -> String {
    "24h".into()
}

/// `[postgres.NAME]`: one PostgreSQL server, by a connection URL with the right to create
/// databases and roles. The URL comes from an environment variable or a file, so that no
/// password sits in the configuration; `url` is accepted only without a password.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresServer {
    /// The environment variable holding the URL.
    pub url_env: Option<String>,
    /// A file holding the URL (first line).
    pub url_file: Option<String>,
    /// The URL itself, when it holds no password (trust or peer authentication, a
    /// `~/.pgpass`).
    pub url: Option<String>,
    /// The databases `postgres.database` resources may clone with `template:`. Default:
    /// none. A database Slipway made (another environment's) is refused even when listed.
    #[serde(default)]
    pub templates: Vec<String>,
}

impl PostgresServer {
    /// The server's URL, read from where the configuration says.
    pub fn resolve_url(&self, name: &str) -> Result<String, String> {
        self.check(name)?;
        if let Some(var) = &self.url_env {
            return std::env::var(var).map_err(|_| {
                format!("[postgres.{name}] reads its URL from ${var}, which is not set")
            });
        }
        if let Some(file) = &self.url_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("[postgres.{name}] cannot read url_file {file}: {e}"))?;
            return text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("[postgres.{name}] url_file {file} is empty"));
        }
        Ok(self.url.clone().unwrap_or_default())
    }

    fn check(&self, name: &str) -> Result<(), String> {
        let set = [&self.url_env, &self.url_file, &self.url]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set != 1 {
            return Err(format!(
                "[postgres.{name}] needs exactly one of `url_env`, `url_file` or `url`"
            ));
        }
        if let Some(url) = &self.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(format!(
                    "[postgres.{name}] url must start with postgres:// or postgresql://"
                ));
            }
            let authority = url.split_once("://").map_or("", |(_, r)| r);
            let userinfo = authority.split(['/', '?']).next().unwrap_or("");
            if userinfo
                .rsplit_once('@')
                .is_some_and(|(user, _)| user.contains(':'))
            {
                return Err(format!(
                    "[postgres.{name}] url holds a password; credentials never go in the \
                     configuration: use url_env = \"VAR\" or url_file = \"/path\" instead"
                ));
            }
        }
        Ok(())
    }
}

/// `[secrets]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// An age identity file (`AGE-SECRET-KEY-1...` lines, as `age-keygen` or
    /// `slipway secret keygen` write). Default: `<home>/age.key`, when it exists.
    pub identity_file: Option<String>,
    /// An environment variable holding the identity itself (for containers).
    pub identity_env: Option<String>,
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
    /// How long audit entries and events are kept; older ones are deleted hourly.
    #[serde(default = "default_retention")]
    pub retention: String,
    /// How long the ids of handled webhook deliveries are kept (a delivery replayed after
    /// that is handled again, so keep it longer than anyone could hold on to a delivery).
    #[serde(default = "default_delivery_retention")]
    pub delivery_retention: String,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            drift_interval: default_drift(),
            requeue_interval: default_requeue(),
            concurrency: default_concurrency(),
            retention: default_retention(),
            delivery_retention: default_delivery_retention(),
        }
    }
}

fn default_retention() -> String {
    "90d".into()
}
fn default_delivery_retention() -> String {
    "365d".into()
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
    /// How long a client has to send a request's head (and, on a kept-alive connection, the
    /// next one) before its connection is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: String,
    /// Most connections open at once; beyond it the oldest idle one is closed to make room.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a request's body may take to arrive (past it, and the allowance of
    /// `body_min_rate`, the client gets `408` and the connection closes).
    #[serde(default = "default_body_timeout")]
    pub body_timeout: String,
    /// Bytes per second a request body must average beyond `body_timeout`: each this many
    /// bytes received give it a second more; 0 makes `body_timeout` a hard limit.
    #[serde(default = "default_body_min_rate")]
    pub body_min_rate: u64,
    /// How long a write to a client that reads nothing may stall before the connection is
    /// closed.
    #[serde(default = "default_write_timeout")]
    pub write_timeout: String,
    /// How long the preview router waits to connect to an application.
    #[serde(default = "default_preview_connect_timeout")]
    pub preview_connect_timeout: String,
    /// How long the preview router waits for an application's response (its head); past it
    /// the client gets `504`.
    #[serde(default = "default_preview_timeout")]
    pub preview_timeout: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            header_timeout: default_header_timeout(),
            max_connections: default_max_connections(),
            body_timeout: default_body_timeout(),
            body_min_rate: default_body_min_rate(),
            write_timeout: default_write_timeout(),
            preview_connect_timeout: default_preview_connect_timeout(),
            preview_timeout: default_preview_timeout(),
        }
    }
}

fn default_header_timeout() -> String {
    "10s".into()
}
fn default_max_connections() -> usize {
    1024
}
fn default_body_timeout() -> String {
    "30s".into()
}
fn default_body_min_rate() -> u64 {
    32 * 1024
}
fn default_write_timeout() -> String {
    "30s".into()
}
fn default_preview_connect_timeout() -> String {
    "5s".into()
}
fn default_preview_timeout() -> String {
    "60s".into()
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
    /// How environments' code is isolated: `auto` (the default: `uid` when the engine runs as
    /// root, else `landlock` when the kernel has it, else `none`), `uid`, `landlock` or
    /// `none` (which must be said explicitly to run generated and ad-hoc environments without
    /// isolation).
    #[serde(default)]
    pub isolation: IsolationSetting,
    /// The range each environment's own uid (= gid) is allocated from, `"LOW-HIGH"`.
    #[serde(default = "default_uids")]
    pub uids: String,
}

/// `[local] isolation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationSetting {
    /// The strongest this engine can have.
    #[default]
    Auto,
    /// A uid per environment (needs root), plus Landlock where the kernel has it.
    Uid,
    /// Landlock only (needs a kernel with Landlock).
    Landlock,
    /// No isolation, said explicitly.
    None,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            ports: default_ports(),
            parallelism: default_parallelism(),
            stop_grace: default_grace(),
            ready_timeout: default_ready(),
            log_max_bytes: default_log_bytes(),
            isolation: IsolationSetting::default(),
            uids: default_uids(),
        }
    }
}

fn default_uids() -> String {
    "200000-299999".into()
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
        config.uid_range()?;
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
            ("environments.max_ttl", &config.environments.max_ttl),
            ("environments.default_ttl", &config.environments.default_ttl),
        ] {
            if slipway_core::stack::parse_duration(value).is_none() {
                return Err(format!(
                    "`{key}` = {value:?} is not a duration such as \"10s\""
                ));
            }
        }
        for (name, server) in &config.postgres {
            server.check(name)?;
        }
        if slipway_core::stack::parse_duration(&config.environments.max_ttl)
            .is_some_and(|d| d.is_zero())
        {
            return Err("`environments.max_ttl` must be longer than zero".into());
        }
        if config.local.parallelism == 0 {
            return Err("`local.parallelism` must be at least 1".into());
        }
        Ok(config)
    }

    /// `[local] uids` as a range. Uid 0 and the top uid (`(uid_t)-1`, "no change") are never
    /// in it.
    pub fn uid_range(&self) -> Result<RangeInclusive<u32>, String> {
        let bad = || {
            format!(
                "`local.uids` = {:?} is not a range of unused uids such as \"200000-299999\"",
                self.local.uids
            )
        };
        let (lo, hi) = self.local.uids.split_once('-').ok_or_else(bad)?;
        let lo: u32 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u32 = hi.trim().parse().map_err(|_| bad())?;
        if lo == 0 || lo > hi || hi == u32::MAX {
            return Err(bad());
        }
        Ok(lo..=hi)
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
    fn postgres_servers_never_take_a_password_inline() {
        let e = EngineConfig::parse("[postgres.main]\nurl = \"postgres://u:pw@db/x\"").unwrap_err();
        assert!(e.contains("holds a password") && !e.contains("pw@"), "{e}");
        assert!(
            EngineConfig::parse(
                "[postgres.main]\nurl = \"postgres://postgres@127.0.0.1/postgres\""
            )
            .is_ok()
        );
        let e = EngineConfig::parse("[postgres.main]\nurl = \"postgres://a@b/c\"\nurl_env = \"X\"")
            .unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        let server = PostgresServer {
            url_env: Some("SLIPWAY_TEST_SURELY_UNSET_VAR".into()),
            ..Default::default()
        };
        assert!(server.resolve_url("main").unwrap_err().contains("not set"));
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
            EngineConfig::parse("[local]\nuids = \"0-10\"")
                .unwrap_err()
                .contains("local.uids")
        );
        assert!(
            EngineConfig::parse("[local]\nisolation = \"chroot\"")
                .unwrap_err()
                .contains("isolation")
        );
        let config = EngineConfig::parse("[local]\nisolation = \"none\"\nuids = \"5-9\"")
            .expect("isolation and uids parse");
        assert_eq!(config.local.isolation, IsolationSetting::None);
        assert_eq!(config.uid_range().expect("a range"), 5..=9);
        assert!(
            EngineConfig::parse("[local]\nstop_grace = \"soon\"")
                .unwrap_err()
                .contains("stop_grace")
        );
    }
}
