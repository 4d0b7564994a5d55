//! The engine's own sections of the configuration file (SPEC §6): where things run and the
//! credentials, never in the repository. Every key has a default, so no file is needed to
//! start.
//!
//! Each section is a type that reads itself (durations in `slipway_core::duration`'s
//! grammar, ranges as `"LOW-HIGH"`, unknown keys refused): the binary composes them with the
//! server's, the controller's and the forge's sections into the whole file, and hands the
//! engine its part, [`EngineConfig`].

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// What the engine reads of the configuration file.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// `[postgres.NAME]`: servers that `postgres.*` resources may use.
    pub postgres: BTreeMap<String, PostgresServer>,
    /// `[kubernetes.NAME]`: clusters that `kubernetes.manifests` resources may use.
    pub kubernetes: BTreeMap<String, slipway_providers::kubernetes::ClusterConfig>,
    /// `[secrets]`: how the engine decrypts the repository's secrets.
    pub secrets: SecretsConfig,
    /// `[local]`
    pub local: LocalConfig,
    /// `[environments]`: limits on environments people make (ad-hoc) and extend.
    pub environments: EnvironmentsConfig,
    /// `[state]`: SQLite in the home, or a PostgreSQL database shared by replicas.
    pub state: StateConfig,
    /// `[policies]`: where the policy gate reads its Rego files, and who may approve `soft`
    /// denials.
    pub policies: PoliciesConfig,
}

/// `[policies]`: the policy gate on plans (docs/policies.md). The policies themselves are
/// Rego files in the repository, read at the default branch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesConfig {
    /// The folder of the Rego files, relative to the one holding `slipway.yaml`.
    #[serde(default = "default_policies_path")]
    pub path: String,
    /// The default branch the policies are read from; unset: what the repository's `HEAD`
    /// names (the remote's default branch in the controller's mirror of a URL, but the
    /// branch checked out in a local working repository, which is why it can be named here).
    #[serde(default)]
    pub branch: Option<String>,
    /// Who may approve `soft` denials (`/slipway approve-policies`, `apply
    /// --approve-policies`): forge logins, or the names `slipway apply` records as `who`.
    #[serde(default)]
    pub owners: Vec<String>,
    /// How long evaluating every policy of one plan may take.
    #[serde(
        default = "default_policy_timeout",
        deserialize_with = "slipway_core::duration::positive"
    )]
    pub timeout: Duration,
    /// The address space of the process that evaluates them, in MiB.
    #[serde(default = "default_policy_memory")]
    pub memory_mib: u64,
}

fn default_policies_path() -> String {
    "policies".into()
}

fn default_policy_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_policy_memory() -> u64 {
    1024
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        PoliciesConfig {
            path: default_policies_path(),
            branch: None,
            owners: Vec::new(),
            timeout: default_policy_timeout(),
            memory_mib: default_policy_memory(),
        }
    }
}

impl PoliciesConfig {
    fn check(&self) -> Result<(), String> {
        let path = self.path.trim_matches('/');
        if path.is_empty() || path.split('/').any(|part| part == ".." || part.is_empty()) {
            return Err(format!(
                "[policies] path `{}` must be a folder inside the repository (no `..`)",
                self.path
            ));
        }
        if let Some(branch) = &self.branch
            && (branch.is_empty() || branch.starts_with('-') || branch.contains(".."))
        {
            return Err(format!("[policies] branch `{branch}` is not a branch name"));
        }
        if !(64..=65536).contains(&self.memory_mib) {
            return Err(format!(
                "[policies] memory_mib {} must be between 64 and 65536",
                self.memory_mib
            ));
        }
        Ok(())
    }
}

/// `[environments]`: how long environments made or extended by hand may live, and what a
/// generated or ad-hoc environment may hold. Anyone with the developer role makes ad-hoc
/// environments, and anyone who can push a branch a generated one, so their life and their
/// share of what production uses are bounded by the operator, not by the request or by the
/// repository.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentsConfig {
    /// The longest an ad-hoc environment lives, and the furthest `extend` moves any expiry
    /// from now. A longer `ttl` is refused; a family's longer `ttl` is cut to this.
    #[serde(
        default = "default_max_ttl",
        deserialize_with = "slipway_core::duration::positive"
    )]
    max_ttl: Duration,
    /// The life of an ad-hoc environment when neither the request nor its family's `ttl`
    /// says (cut to `max_ttl`).
    #[serde(
        default = "default_ttl",
        deserialize_with = "slipway_core::duration::deserialize"
    )]
    default_ttl: Duration,
    /// How many PostgreSQL roles a generated or ad-hoc environment may have (its
    /// `postgres.database` and `postgres.role` resources together, each one role): each may
    /// hold `[postgres.NAME] preview_connection_limit` connections, so this bounds what one
    /// such environment takes of a server. 0: none.
    #[serde(default = "default_max_postgres_roles")]
    max_postgres_roles: u32,
}

impl Default for EnvironmentsConfig {
    fn default() -> Self {
        EnvironmentsConfig {
            max_ttl: default_max_ttl(),
            default_ttl: default_ttl(),
            max_postgres_roles: default_max_postgres_roles(),
        }
    }
}

fn default_max_postgres_roles() -> u32 {
    4
}

impl EnvironmentsConfig {
    /// `max_ttl`: never zero.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// `default_ttl`, never longer than `max_ttl`.
    pub fn default_ttl(&self) -> Duration {
        self.default_ttl.min(self.max_ttl)
    }

    /// `max_postgres_roles`.
    pub fn max_postgres_roles(&self) -> u32 {
        self.max_postgres_roles
    }
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// `[postgres.NAME]`: one PostgreSQL server, by a connection URL with the right to create
/// databases and roles. The URL comes from an environment variable or a file, so that no
/// password sits in the configuration; `url` is accepted only without a password.
#[derive(Debug, Clone, Deserialize)]
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
    /// The extensions PostgreSQL does not mark trusted that `postgres.database` resources may
    /// ask for: the admin creates those, and their scripts run with its rights in a database
    /// the environment's code controls. Default: none (trusted extensions need no listing:
    /// they are created as the environment's role, which could create them itself).
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Roles every environment's database lets connect besides its owner and its
    /// environment's roles (every other role is kept out): a pooler's `auth_user`, a
    /// monitoring or backup role. Default: none.
    #[serde(default)]
    pub connect: Vec<String>,
    /// How many connections at once each role of a static environment may have (its
    /// `CONNECTION LIMIT`): `-1` for no limit, else at least 1. Unset (the default), Slipway
    /// sets none and leaves what a role has (a limit set by hand stays).
    #[serde(default, deserialize_with = "some_connection_limit")]
    pub connection_limit: Option<i32>,
    /// The same for each role of a generated or ad-hoc environment, whose code nobody
    /// reviewed: 10 by default, so that a branch cannot take every connection the server
    /// allows from production's roles (`[environments] max_postgres_roles` bounds how many
    /// roles such an environment has).
    #[serde(
        default = "preview_connection_limit",
        deserialize_with = "connection_limit"
    )]
    pub preview_connection_limit: i32,
}

impl Default for PostgresServer {
    fn default() -> Self {
        PostgresServer {
            url_env: None,
            url_file: None,
            url: None,
            templates: Vec::new(),
            extensions: Vec::new(),
            connect: Vec::new(),
            connection_limit: None,
            preview_connection_limit: preview_connection_limit(),
        }
    }
}

fn preview_connection_limit() -> i32 {
    slipway_providers::postgres::ConnectionLimits::PREVIEW_DEFAULT
}

/// [`connection_limit`], given.
fn some_connection_limit<'de, D: Deserializer<'de>>(de: D) -> Result<Option<i32>, D::Error> {
    connection_limit(de).map(Some)
}

/// A role's `CONNECTION LIMIT`: `-1` for none, or at least 1 (0 would let it in nowhere).
fn connection_limit<'de, D: Deserializer<'de>>(de: D) -> Result<i32, D::Error> {
    match i32::deserialize(de)? {
        n if n == -1 || n >= 1 => Ok(n),
        n => Err(serde::de::Error::custom(format!(
            "{n} is not a connection limit: give -1 for none, or at least 1"
        ))),
    }
}

impl PostgresServer {
    /// The server's URL, read from where the configuration says.
    pub fn resolve_url(&self, name: &str) -> Result<String, String> {
        self.check(name)?;
        let url = resolve_url(&format!("[postgres.{name}]"), &self.url_env, &self.url_file);
        Ok(url?.unwrap_or_else(|| self.url.clone().unwrap_or_default()))
    }

    /// Refuses a server with other than exactly one source for its URL, or a password in
    /// `url`.
    pub fn check(&self, name: &str) -> Result<(), String> {
        check_url_source(
            &format!("[postgres.{name}]"),
            [&self.url_env, &self.url_file, &self.url],
            self.url.as_deref(),
            true,
        )
    }
}

/// `[state]`: where the controller's state is kept. Nothing set: `<home>/state.db`
/// (SQLite, one machine). A PostgreSQL URL: every `slipway serve` given the same one shares
/// one state (SPEC §4).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The environment variable holding the `postgres://` URL.
    pub url_env: Option<String>,
    /// A file holding the URL (first line).
    pub url_file: Option<String>,
    /// The URL itself, when it holds no password.
    pub url: Option<String>,
}

impl StateConfig {
    /// PostgreSQL's URL when the state is there; `None` for the home's SQLite file.
    pub fn resolve_url(&self) -> Result<Option<String>, String> {
        self.check()?;
        Ok(resolve_url("[state]", &self.url_env, &self.url_file)?.or_else(|| self.url.clone()))
    }

    /// Refuses more than one source for the URL, or a password in `url`.
    pub fn check(&self) -> Result<(), String> {
        check_url_source(
            "[state]",
            [&self.url_env, &self.url_file, &self.url],
            self.url.as_deref(),
            false,
        )
    }
}

/// The URL in `$url_env` or the first line of `url_file`, whichever is set.
fn resolve_url(
    section: &str,
    url_env: &Option<String>,
    url_file: &Option<String>,
) -> Result<Option<String>, String> {
    if let Some(var) = url_env {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| format!("{section} reads its URL from ${var}, which is not set"));
    }
    if let Some(file) = url_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("{section} cannot read url_file {file}: {e}"))?;
        return text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(|url| Some(url.to_string()))
            .ok_or_else(|| format!("{section} url_file {file} is empty"));
    }
    Ok(None)
}

/// Refuses other than exactly one source of a URL (at most one unless `required`), and a
/// `url` that is not PostgreSQL's or holds a password.
fn check_url_source(
    section: &str,
    sources: [&Option<String>; 3],
    url: Option<&str>,
    required: bool,
) -> Result<(), String> {
    let set = sources.iter().filter(|v| v.is_some()).count();
    if set > 1 || (required && set == 0) {
        return Err(format!(
            "{section} needs {} one of `url_env`, `url_file` or `url`",
            if required { "exactly" } else { "at most" }
        ));
    }
    if let Some(url) = url {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(format!(
                "{section} url must start with postgres:// or postgresql://"
            ));
        }
        let authority = url.split_once("://").map_or("", |(_, r)| r);
        let userinfo = authority.split(['/', '?']).next().unwrap_or("");
        // In the user info, or as a `password=` query parameter.
        if userinfo
            .rsplit_once('@')
            .is_some_and(|(user, _)| user.contains(':'))
            || slipway_core::redact::redact_url(url) != url
        {
            return Err(format!(
                "{section} url holds a password; credentials never go in the \
                 configuration: use url_env = \"VAR\" or url_file = \"/path\" instead"
            ));
        }
    }
    Ok(())
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

/// `[local]`: the embedded local runtime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// The range ports are allocated from, `"LOW-HIGH"`.
    #[serde(default = "default_ports")]
    pub ports: PortRange,
    /// How many resources apply changes at once (at least 1).
    #[serde(default = "default_parallelism", deserialize_with = "at_least_one")]
    pub parallelism: usize,
    /// Time between SIGTERM and SIGKILL.
    #[serde(
        default = "default_grace",
        deserialize_with = "slipway_core::duration::deserialize"
    )]
    pub stop_grace: Duration,
    /// How long a process may take to become healthy, or a job to finish.
    #[serde(
        default = "default_ready",
        deserialize_with = "slipway_core::duration::deserialize"
    )]
    pub ready_timeout: Duration,
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
    pub uids: UidRange,
    /// uid mode: how many processes and threads one environment's code may have at once
    /// (its uid's `RLIMIT_NPROC`), so that a fork bomb in a branch takes no pid the
    /// controller or another environment needs; 0: no limit.
    #[serde(default = "default_max_processes")]
    pub max_processes: u32,
    /// uid mode: where each environment's control group goes, which bounds its memory and
    /// CPU: `"auto"` (the default: `/slipway` at the top of each cgroup v1 hierarchy; none
    /// with v2, which needs a group named for Slipway), `"off"`, or a group path such as
    /// `"/slipway"` (under v2, delegated to Slipway and holding no process).
    #[serde(default)]
    pub cgroup: CgroupSetting,
    /// uid mode: the most memory one environment's processes may hold together: a share of
    /// the machine (`"50%"`, the default, applied where the environment gets a group), a
    /// size (`"512MiB"`, `"2G"`: binary units), or `"none"`. A limit set here that cannot be
    /// enforced (no group) stops the environment's code from starting.
    #[serde(default, deserialize_with = "max_memory")]
    pub max_memory: Option<SizeLimit>,
    /// uid mode: how many cores one environment's processes may take together (`1.5`); none
    /// by default (each environment still takes one share of the machine against the
    /// others, however many processes it runs, where it gets a group).
    #[serde(default, deserialize_with = "cores")]
    pub max_cpu: Option<u32>,
    /// uid and landlock modes: the most one environment's data and temporary directories may
    /// hold together (the only places its code may write under Landlock): a share of the file
    /// system holding the home (`"50%"`, the default), a size (`"10GiB"`), or `"none"`. No
    /// file of its code may grow past it (`RLIMIT_FSIZE`); past it all together, its code
    /// is stopped and none starts until it holds less (`slipway_providers::disk`).
    #[serde(default, deserialize_with = "max_disk")]
    pub max_disk: Option<SizeLimit>,
    /// uid mode: whether the packet filter keeps environments' code from other environments'
    /// ports on this host and from `deny_networks` (an nftables table,
    /// `slipway_providers::network`): `"auto"` (the default: where `nft` is installed),
    /// `"nftables"` (required: the engine does not start without), or `"off"`.
    #[serde(default)]
    pub network: NetworkSetting,
    /// uid mode, with `network`: the networks environments' code may not connect to (CIDRs);
    /// by default the clouds' metadata services, which hand the machine's credentials to
    /// whoever asks.
    #[serde(default = "default_denied", deserialize_with = "networks")]
    pub deny_networks: Vec<ipnet::IpNet>,
    /// Where the other replicas sharing a PostgreSQL state reach this replica's listener (its
    /// router), to forward the preview requests of environments whose processes run on this
    /// node; none by default, and then they cannot (see [`Advertise`]).
    #[serde(default)]
    pub advertise: Option<Advertise>,
    /// How many generated and ad-hoc environments of this home may run at once, all families
    /// together (at least 1; none by default): more wait in a queue, in order of arrival, as
    /// beyond a family's `max_environments`. Static environments never wait and take no slot.
    #[serde(default, deserialize_with = "some_at_least_one")]
    pub max_environments: Option<u32>,
}

/// `[local] advertise`: `"HOST:PORT"`, or `"HOST"` alone for the port `slipway serve` listens
/// on (`[server] listen` or `--listen`), as the other replicas reach it: the address of this
/// replica's own listener, where its preview router serves this node's processes. Never an
/// application's port: applications listen on the loopback interface, and whatever reaches
/// them goes through a router, which strips Slipway's credentials on the way.
///
/// A host is a DNS name or an IP address (IPv6 in brackets, `"[fd00::5]:7300"`); no scheme,
/// path or user, no port 0, and never an unspecified address (`0.0.0.0`, `[::]`), which names
/// no machine to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertise {
    host: String,
    port: Option<u16>,
}

impl Advertise {
    /// Reads `"HOST:PORT"` or `"HOST"`.
    pub fn parse(text: &str) -> Result<Advertise, String> {
        let bad = |why: &str| {
            format!(
                "[local] advertise {text:?} {why}; give this replica's listen address as the \
                 other replicas reach it, such as \"10.0.0.11:7300\" or \"10.0.0.11\""
            )
        };
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("opens a `[` it does not close"))?;
            let v6: std::net::Ipv6Addr = v6.parse().map_err(|_| bad("is not an IPv6 address"))?;
            if v6.is_unspecified() {
                return Err(bad("is the unspecified address"));
            }
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("has something after `]` that is not `:PORT`"))?,
                ),
            };
            (format!("[{v6}]"), port)
        } else {
            let (host, port) = match text.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            };
            let name_like = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                });
            if !name_like {
                return Err(bad(
                    "is not a host name or IP address (IPv6 goes in brackets), with an optional \
                     :PORT",
                ));
            }
            if host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_unspecified())
            {
                return Err(bad("is the unspecified address"));
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("has a port that is not a number from 1 to 65535"))
            })
            .transpose()?;
        Ok(Advertise { host, port })
    }

    /// The address advertised, `HOST:PORT`, taking `listening` (the port this replica's
    /// listener is bound to) when the configuration names a host alone.
    pub fn address(&self, listening: u16) -> String {
        format!("{}:{}", self.host, self.port.unwrap_or(listening))
    }
}

impl<'de> Deserialize<'de> for Advertise {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        Advertise::parse(&text).map_err(serde::de::Error::custom)
    }
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
            max_processes: default_max_processes(),
            cgroup: CgroupSetting::default(),
            max_memory: None,
            max_cpu: None,
            max_disk: None,
            network: NetworkSetting::default(),
            deny_networks: default_denied(),
            advertise: None,
            max_environments: None,
        }
    }
}

fn default_max_processes() -> u32 {
    4096
}

fn default_uids() -> UidRange {
    UidRange(200_000..=299_999)
}
fn default_ports() -> PortRange {
    PortRange(20_000..=29_999)
}
fn default_parallelism() -> usize {
    8
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_ready() -> Duration {
    Duration::from_secs(60)
}
fn default_log_bytes() -> u64 {
    10 * 1024 * 1024
}

fn at_least_one<'de, D: Deserializer<'de>>(de: D) -> Result<usize, D::Error> {
    match usize::deserialize(de)? {
        0 => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

fn some_at_least_one<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u32>, D::Error> {
    match u32::deserialize(de)? {
        0 => Err(serde::de::Error::custom(
            "must be at least 1 (leave `max_environments` out for no cap)",
        )),
        n => Ok(Some(n)),
    }
}

/// `LOW-HIGH` as two numbers, `LOW <= HIGH`.
fn range<'de, D: Deserializer<'de>, T: std::str::FromStr + PartialOrd>(
    de: D,
    example: &str,
    valid: impl Fn(&T, &T) -> bool,
) -> Result<RangeInclusive<T>, D::Error> {
    let text = String::deserialize(de)?;
    let parsed = text.split_once('-').and_then(|(lo, hi)| {
        let (lo, hi) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
        (lo <= hi && valid(&lo, &hi)).then_some(lo..=hi)
    });
    parsed.ok_or_else(|| {
        serde::de::Error::custom(format!("{text:?} is not a range such as \"{example}\""))
    })
}

/// `[local] ports`: the TCP ports resources are given, never port 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRange(pub RangeInclusive<u16>);

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        range(de, "20000-29999", |lo, _| *lo != 0).map(PortRange)
    }
}

/// `[local] cgroup`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupSetting(pub slipway_providers::cgroup::Setting);

impl<'de> Deserialize<'de> for CgroupSetting {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        slipway_providers::cgroup::Setting::parse(&text)
            .map(CgroupSetting)
            .map_err(serde::de::Error::custom)
    }
}

/// `[local] max_memory` and `max_disk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeLimit {
    /// `"none"`.
    Unlimited,
    /// `"N%"` of the whole (the machine's memory, the file system's size; 1 to 100).
    Share(u8),
    /// A size, in bytes.
    Bytes(u64),
}

impl SizeLimit {
    /// The default: half of the whole (the machine's memory, where a group can hold it; the
    /// file system holding the home).
    pub const DEFAULT: SizeLimit = SizeLimit::Share(50);

    /// Reads `[local] KEY`: `"none"`, `"N%"` or a size: digits, then nothing (bytes) or `K`,
    /// `M`, `G`, `T` (with or without `i`/`iB`/`B`, all binary: `512M` = `512MiB`).
    pub fn parse(key: &str, text: &str) -> Result<SizeLimit, String> {
        let bad = |why: &str| {
            format!(
                "[local] {key} {text:?} {why}; give \"none\", a share (\"50%\") or a size \
                 (\"512MiB\", \"2G\")"
            )
        };
        let trimmed = text.trim();
        if trimmed == "none" {
            return Ok(SizeLimit::Unlimited);
        }
        if let Some(share) = trimmed.strip_suffix('%') {
            return match share.trim().parse::<u8>() {
                Ok(n @ 1..=100) => Ok(SizeLimit::Share(n)),
                _ => Err(bad("is not a share from 1% to 100%")),
            };
        }
        let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = trimmed.split_at(digits);
        let number: u64 = number.parse().map_err(|_| bad("is not a size"))?;
        let shift = match unit.trim() {
            "" | "B" => 0,
            "K" | "KB" | "Ki" | "KiB" => 10,
            "M" | "MB" | "Mi" | "MiB" => 20,
            "G" | "GB" | "Gi" | "GiB" => 30,
            "T" | "TB" | "Ti" | "TiB" => 40,
            _ => return Err(bad("has a unit other than K, M, G or T")),
        };
        let bytes = number
            .checked_mul(1u64 << shift)
            .ok_or_else(|| bad("is too large"))?;
        // Below a few MiB nothing starts at all: almost surely a unit forgotten.
        if bytes < 4 << 20 {
            return Err(bad("is less than 4MiB"));
        }
        Ok(SizeLimit::Bytes(bytes))
    }

    /// In bytes of a whole of `whole` bytes; `None`: no limit.
    pub fn bytes(self, whole: u64) -> Option<u64> {
        match self {
            SizeLimit::Unlimited => None,
            SizeLimit::Share(n) => Some((u128::from(whole) * u128::from(n) / 100) as u64),
            SizeLimit::Bytes(b) => Some(b),
        }
    }
}

/// `[local] network`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkSetting {
    /// The packet filter where this engine can have it (uid mode, `nft` installed).
    #[default]
    Auto,
    /// The packet filter, or no start.
    Nftables,
    /// None: environments' code connects wherever the engine's machine can.
    Off,
}

fn default_denied() -> Vec<ipnet::IpNet> {
    slipway_providers::network::DEFAULT_DENIED
        .iter()
        .map(|n| n.parse().expect("the default networks parse"))
        .collect()
}

/// `[local] deny_networks`: networks in CIDR notation (`"10.0.0.0/8"`, `"fd00::/8"`); an
/// address alone is a network of one.
fn networks<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(de)?
        .iter()
        .map(|text| {
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "[local] deny_networks: `{}` is not a network (such as \"10.0.0.0/8\", \
                         \"fd00::/8\" or an address alone)",
                        text.escape_debug()
                    ))
                })
        })
        .collect()
}

/// `[local] max_memory`.
fn max_memory<'de, D: Deserializer<'de>>(de: D) -> Result<Option<SizeLimit>, D::Error> {
    SizeLimit::parse("max_memory", &String::deserialize(de)?)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `[local] max_disk`.
fn max_disk<'de, D: Deserializer<'de>>(de: D) -> Result<Option<SizeLimit>, D::Error> {
    SizeLimit::parse("max_disk", &String::deserialize(de)?)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `[local] max_cpu`: cores (a number above 0, at most 4096), in thousandths.
fn cores<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u32>, D::Error> {
    let cores = f64::deserialize(de)?;
    if !(cores > 0.0 && cores <= 4096.0) {
        return Err(serde::de::Error::custom(format!(
            "[local] max_cpu {cores} is not a number of cores above 0 (such as 0.5 or 2)"
        )));
    }
    Ok(Some(((cores * 1000.0).round() as u32).max(1)))
}

/// `[local] uids`: the uids environments run as. Uid 0 and the top uid (`(uid_t)-1`, "no
/// change") are never in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidRange(pub RangeInclusive<u32>);

impl<'de> Deserialize<'de> for UidRange {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        range(de, "200000-299999", |lo, hi| *lo != 0 && *hi != u32::MAX).map(UidRange)
    }
}

impl EngineConfig {
    /// What a section's own type cannot check: each `[postgres.NAME]` names one source for
    /// its URL, and no password; each `[kubernetes.NAME]` one source for its kubeconfig.
    pub fn check(&self) -> Result<(), String> {
        self.state.check()?;
        self.policies.check()?;
        for (name, server) in &self.postgres {
            server.check(name)?;
        }
        for (name, cluster) in &self.kubernetes {
            cluster.check(name)?;
        }
        Ok(())
    }

    /// `[local] uids`.
    pub fn uid_range(&self) -> RangeInclusive<u32> {
        self.local.uids.0.clone()
    }

    /// The uids environments are given: `[local] uids` but its last, which is kept for the
    /// process that kills an environment's processes ([`EngineConfig::killer_uid`]). A range
    /// of one uid keeps none.
    pub fn environment_uids(&self) -> RangeInclusive<u32> {
        let range = self.uid_range();
        match self.killer_uid() {
            Some(kept) => *range.start()..=kept - 1,
            None => range,
        }
    }

    /// The last uid of `[local] uids`, never given to an environment: the uid killer's real
    /// and saved uid, so that the uid it kills cannot signal it (see
    /// `slipway_providers::sandbox::kill_everything_of`). `None` for a range of one uid.
    pub fn killer_uid(&self) -> Option<u32> {
        let range = self.uid_range();
        (range.end() > range.start()).then_some(*range.end())
    }

    /// `[local] ports`.
    pub fn port_range(&self) -> RangeInclusive<u16> {
        self.local.ports.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_last_uid_of_the_range_is_kept_for_the_killer_unless_it_is_the_only_one() {
        let mut config = EngineConfig::default();
        config.local.uids = UidRange(5..=9);
        assert_eq!(config.environment_uids(), 5..=8);
        assert_eq!(config.killer_uid(), Some(9));
        config.local.uids = UidRange(5..=5);
        assert_eq!(
            config.environment_uids(),
            5..=5,
            "a range of one keeps none"
        );
        assert_eq!(config.killer_uid(), None);
    }

    fn local(value: serde_json::Value) -> Result<LocalConfig, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    #[test]
    fn memory_disk_and_cpu_limits_read_as_an_operator_writes_them() {
        let memory = |text: &str| local(json!({ "max_memory": text })).map(|l| l.max_memory);
        assert_eq!(memory("none"), Ok(Some(SizeLimit::Unlimited)));
        assert_eq!(memory("25%"), Ok(Some(SizeLimit::Share(25))));
        assert_eq!(memory("512MiB"), Ok(Some(SizeLimit::Bytes(512 << 20))));
        assert_eq!(memory("2G"), Ok(Some(SizeLimit::Bytes(2 << 30))));
        assert_eq!(memory("8388608"), Ok(Some(SizeLimit::Bytes(8 << 20))));
        for bad in [
            "0%",
            "101%",
            "-1G",
            "1.5G",
            "2 furlongs",
            "",
            "512",
            "3K",
            "99999999999T",
        ] {
            let e = memory(bad).expect_err(bad);
            assert!(
                e.contains("max_memory") && e.contains("512MiB"),
                "{bad}: {e}"
            );
        }
        assert_eq!(local(json!({})).map(|l| l.max_memory), Ok(None), "default");
        assert_eq!(SizeLimit::DEFAULT.bytes(8 << 30), Some(4 << 30), "half");
        assert_eq!(SizeLimit::Unlimited.bytes(8 << 30), None);

        let disk = |text: &str| local(json!({ "max_disk": text })).map(|l| l.max_disk);
        assert_eq!(disk("10GiB"), Ok(Some(SizeLimit::Bytes(10 << 30))));
        assert_eq!(disk("25%"), Ok(Some(SizeLimit::Share(25))));
        assert_eq!(disk("none"), Ok(Some(SizeLimit::Unlimited)));
        let e = disk("10 parsecs").expect_err("a unit it does not know");
        assert!(
            e.contains("[local] max_disk") && !e.contains("max_memory"),
            "the message names the key it is about: {e}"
        );
        assert_eq!(local(json!({})).map(|l| l.max_disk), Ok(None), "default");

        let cpu = |v: serde_json::Value| local(json!({ "max_cpu": v })).map(|l| l.max_cpu);
        assert_eq!(cpu(json!(1.5)), Ok(Some(1500)));
        assert_eq!(cpu(json!(2)), Ok(Some(2000)));
        assert_eq!(cpu(json!(0.0001)), Ok(Some(1)), "never zero");
        for bad in [json!(0), json!(-1), json!(5000), json!("1")] {
            assert!(cpu(bad.clone()).is_err(), "{bad}");
        }
        let group = |text: &str| local(json!({ "cgroup": text })).map(|l| l.cgroup);
        assert!(group("/slipway").is_ok() && group("off").is_ok());
        assert!(group("../x").is_err_and(|e| e.contains("[local] cgroup")));
    }

    #[test]
    fn the_network_fence_and_its_denied_networks_read_as_an_operator_writes_them() {
        let deny = |v: serde_json::Value| {
            local(json!({ "deny_networks": v })).map(|l| {
                l.deny_networks
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            deny(json!([
                "10.0.0.0/8",
                "fd00::/8",
                "192.0.2.7",
                "::1",
                "10.1.2.3/16"
            ])),
            Ok([
                "10.0.0.0/8",
                "fd00::/8",
                "192.0.2.7/32",
                "::1/128",
                "10.1.0.0/16"
            ]
            .map(String::from)
            .to_vec()),
            "an address alone is a network of one; host bits are dropped"
        );
        assert_eq!(deny(json!([])), Ok(vec![]), "nothing denied");
        for bad in [
            "10.0.0.0/33",
            "metadata.google.internal",
            "10.0.0.0/8; flush ruleset",
            "",
        ] {
            let e = deny(json!([bad])).expect_err(bad);
            assert!(
                e.contains("[local] deny_networks") && e.contains("is not a network"),
                "{bad}: {e}"
            );
        }
        let defaults = local(json!({})).expect("defaults");
        assert_eq!(defaults.network, NetworkSetting::Auto);
        assert!(
            defaults
                .deny_networks
                .iter()
                .any(|n| n.contains(&"169.254.169.254".parse::<std::net::IpAddr>().expect("ip"))),
            "the metadata service is denied by default: {:?}",
            defaults.deny_networks
        );
        let network = |text: &str| local(json!({ "network": text })).map(|l| l.network);
        assert_eq!(network("nftables"), Ok(NetworkSetting::Nftables));
        assert_eq!(network("off"), Ok(NetworkSetting::Off));
        assert!(network("iptables").is_err());
    }

    #[test]
    fn postgres_servers_never_take_a_password_inline() {
        let server = |value| -> PostgresServer { serde_json::from_value(value).expect("parses") };
        let e = server(json!({"url": "postgres://u:pw@db/x"}))
            .check("main")
            .unwrap_err();
        assert!(e.contains("holds a password") && !e.contains("pw@"), "{e}");
        for hidden in [
            "postgres://u@db/x?password=pw",
            "postgres://u@db/x?sslmode=disable&PASSWORD=pw",
        ] {
            let e = server(json!({ "url": hidden })).check("main").unwrap_err();
            assert!(
                e.contains("holds a password") && !e.contains("=pw"),
                "{hidden}: {e}"
            );
            let state: StateConfig =
                serde_json::from_value(json!({ "url": hidden })).expect("parses");
            assert!(state.check().is_err(), "[state] refuses {hidden} too");
        }
        assert!(
            server(json!({"url": "postgres://postgres@127.0.0.1/postgres"}))
                .check("main")
                .is_ok()
        );
        let e = server(json!({"url": "postgres://a@b/c", "url_env": "X"}))
            .check("main")
            .unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        let server = PostgresServer {
            url_env: Some("SLIPWAY_TEST_SURELY_UNSET_VAR".into()),
            ..Default::default()
        };
        assert!(server.resolve_url("main").unwrap_err().contains("not set"));
    }

    #[test]
    fn postgres_connection_limits_default_to_none_for_static_and_ten_for_previews() {
        let server = |value| serde_json::from_value::<PostgresServer>(value);
        let plain = server(json!({"url": "postgres://a@b/c"})).expect("parses");
        assert_eq!(
            (plain.connection_limit, plain.preview_connection_limit),
            (None, 10)
        );
        let default = PostgresServer::default();
        assert_eq!(
            (default.connection_limit, default.preview_connection_limit),
            (None, 10),
            "the same without a file"
        );
        let set = server(json!({"url": "postgres://a@b/c", "connection_limit": 200,
                                "preview_connection_limit": -1}))
        .expect("parses");
        assert_eq!(
            (set.connection_limit, set.preview_connection_limit),
            (Some(200), -1)
        );
        for bad in [0, -2] {
            let e = server(json!({"url": "postgres://a@b/c", "preview_connection_limit": bad}))
                .unwrap_err()
                .to_string();
            assert!(e.contains("-1 for none, or at least 1"), "{bad}: {e}");
        }
    }

    #[test]
    fn local_reads_its_ranges_durations_and_isolation_typed() {
        let config = local(json!({
            "ports": "20000-29999",
            "uids": "5-9",
            "stop_grace": "1m30s",
            "isolation": "none"
        }))
        .expect("parses");
        assert_eq!(config.ports, PortRange(20_000..=29_999));
        assert_eq!(config.uids, UidRange(5..=9));
        assert_eq!(config.stop_grace, Duration::from_secs(90));
        assert_eq!(config.ready_timeout, Duration::from_secs(60), "the default");
        assert_eq!(config.isolation, IsolationSetting::None);
        assert_eq!(config.max_environments, None, "no cap by default");
        assert_eq!(
            local(json!({"max_environments": 12}))
                .expect("parses")
                .max_environments,
            Some(12)
        );
        for (bad, named) in [
            (json!({"prots": "1-2"}), "prots"),
            (json!({"ports": "9-1"}), "9-1"),
            (json!({"ports": "0-10"}), "0-10"),
            (json!({"ports": "1-70000"}), "1-70000"),
            (json!({"uids": "0-10"}), "0-10"),
            (json!({"uids": "1-4294967295"}), "4294967295"),
            (json!({"isolation": "chroot"}), "chroot"),
            (json!({"stop_grace": "soon"}), "soon"),
            (json!({"parallelism": 0}), "at least 1"),
            (json!({"max_environments": 0}), "at least 1"),
            (json!({"max_environments": "ten"}), "ten"),
        ] {
            let e = local(bad.clone()).expect_err("refused");
            assert!(e.contains(named), "{bad}: {e}");
        }
    }

    #[test]
    fn advertise_is_a_host_with_an_optional_port_and_never_more() {
        let address = |text: &str, listening| {
            local(json!({ "advertise": text }))
                .map(|c| c.advertise.expect("set").address(listening))
        };
        assert_eq!(
            address("10.0.0.11:7300", 1).as_deref(),
            Ok("10.0.0.11:7300")
        );
        assert_eq!(
            address("10.0.0.11", 7301).as_deref(),
            Ok("10.0.0.11:7301"),
            "a host alone takes the port this replica listens on"
        );
        assert_eq!(
            address("S1.example.com", 7300).as_deref(),
            Ok("s1.example.com:7300")
        );
        assert_eq!(address("[fd00::5]:80", 1).as_deref(), Ok("[fd00::5]:80"));
        assert_eq!(address("[fd00::5]", 7300).as_deref(), Ok("[fd00::5]:7300"));
        assert_eq!(
            local(json!({})).expect("parses").advertise,
            None,
            "none by default"
        );
        for bad in [
            "",
            "http://10.0.0.11:7300",
            "10.0.0.11:7300/x",
            "user@10.0.0.11:7300",
            "10.0.0.11:0",
            "10.0.0.11:70000",
            "10.0.0.11:",
            "0.0.0.0:7300",
            "[::]:7300",
            "fd00::5",
            "[fd00::5",
            "[fd00::5]x",
            "-bad.example",
            "a..b",
        ] {
            let e = local(json!({ "advertise": bad })).expect_err(bad);
            assert!(e.contains("[local] advertise"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_default_ttl_is_cut_to_the_max_and_the_max_is_never_zero() {
        let limits: EnvironmentsConfig =
            serde_json::from_value(json!({"max_ttl": "2h", "default_ttl": "1d"})).expect("parses");
        assert_eq!(limits.max_ttl(), Duration::from_secs(7200));
        assert_eq!(limits.default_ttl(), Duration::from_secs(7200));
        let e = serde_json::from_value::<EnvironmentsConfig>(json!({"max_ttl": "0s"}))
            .expect_err("a zero max_ttl is refused");
        assert!(e.to_string().contains("longer than 0"), "{e}");
    }
}
