//! How to reach one forge repository: [`ForgeConfig`], its [`Secret`]s, and why a
//! configuration cannot work ([`ConfigError`]).

use std::fmt;
use std::time::Duration;

use crate::event::{ExpectedRepository, ForgeKind};
use crate::names;
use crate::webhook::WebhookVerifier;
#[cfg(doc)]
use crate::{Forge, connect};

/// A secret string (a token, a webhook secret) whose `Debug` output is redacted.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// How to reach one forge repository. Build it with [`ForgeConfig::new`], change the public
/// fields, then [`connect`].
#[derive(Debug, Clone)]
pub struct ForgeConfig {
    /// Which forge.
    pub kind: ForgeKind,
    /// The repository: `owner/name` (GitLab: `group/subgroup/project`, or the project's
    /// numeric id). Webhooks about any other repository are ignored.
    pub repository: String,
    /// The repository's numeric id on the forge (GitHub's and Gitea's `repository.id`,
    /// GitLab's project id), when known: webhooks are then matched by id, which survives
    /// renames and transfers, so that another repository that takes the old name is not
    /// taken for ours. `None`: matched by [`ForgeConfig::repository`].
    pub repository_id: Option<u64>,
    /// The API's root URL, without a trailing `/`. `None` means `https://api.github.com` or
    /// `https://gitlab.com/api/v4`; Gitea has no default and needs its `https://host/api/v1`.
    pub api_url: Option<String>,
    /// The API token (GitHub: a fine-grained or installation token; GitLab: a project access
    /// token with `api`; Gitea: an access token).
    pub token: Secret,
    /// The webhook's secret (GitLab: its secret token).
    pub webhook_secret: Secret,
    /// Slipway's own login on the forge, whose comments [`Forge::upsert_comment`] may edit.
    /// `None` asks the forge once (`GET /user`); set it for a GitHub App, whose installation
    /// token cannot read `/user` (its login is `<app-slug>[bot]`).
    pub bot_login: Option<String>,
    /// The time limit for one HTTP request, connection included.
    pub timeout: Duration,
    /// The most pages read from one list.
    pub max_pages: u32,
    /// Texts that must never reach the forge, each with the neutral word that replaces it in
    /// comments and status descriptions: the server's repository URL and local paths, its home
    /// directory. A URL is also replaced without its credentials, a `file://` URL also as its
    /// path.
    pub private_texts: Vec<(String, String)>,
}

impl ForgeConfig {
    /// A configuration with the defaults: the forge's public API URL, a 30 s timeout, 20
    /// pages per list (2,000 items on GitHub and GitLab).
    pub fn new(kind: ForgeKind, repository: impl Into<String>, token: impl Into<Secret>) -> Self {
        ForgeConfig {
            kind,
            repository: repository.into(),
            repository_id: None,
            api_url: None,
            token: token.into(),
            webhook_secret: Secret::default(),
            bot_login: None,
            timeout: Duration::from_secs(30),
            max_pages: 20,
            private_texts: Vec::new(),
        }
    }

    /// The API root in force: `api_url`, or the forge's public default.
    pub fn api_base(&self) -> Result<String, ConfigError> {
        let url = match (&self.api_url, self.kind.profile().default_api_url) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(default)) => default.to_owned(),
            (None, None) => return Err(ConfigError::ApiUrlRequired(self.kind)),
        };
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or(ConfigError::InvalidApiUrl {
                reason: "it must start with https:// (or http:// for a forge on this machine)",
            })?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(ConfigError::InvalidApiUrl {
                reason: "it has no host",
            });
        }
        if authority.contains('@') {
            return Err(ConfigError::InvalidApiUrl {
                reason: "it must not carry credentials: put the token in `token`",
            });
        }
        if url.contains(['?', '#', ' ']) {
            return Err(ConfigError::InvalidApiUrl {
                reason: "it must be a plain URL, without query, fragment or spaces",
            });
        }
        if url.starts_with("https://") && !cfg!(feature = "tls") {
            return Err(ConfigError::TlsNotCompiled);
        }
        Ok(url)
    }

    /// A webhook verifier for this forge with [`ForgeConfig::webhook_secret`], that acts only
    /// on events about [`ForgeConfig::repository`] (or [`ForgeConfig::repository_id`]).
    pub fn webhook_verifier(&self) -> WebhookVerifier {
        WebhookVerifier::new(self.kind, self.webhook_secret.expose().as_bytes()).with_repository(
            ExpectedRepository {
                name: self.repository.clone(),
                id: self.repository_id,
            },
        )
    }

    /// Whether [`ForgeConfig::repository`] is usable: `owner/name`, or on GitLab also a
    /// numeric project id.
    pub(crate) fn repository_is_valid(&self) -> bool {
        names::is_repository_path(&self.repository)
            || (self.kind.profile().numeric_repository_ids
                && names::is_numeric_id(&self.repository))
    }
}

/// A [`ForgeConfig`] that cannot work. Each message names the setting to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The forge has no public instance to default to (Gitea): `api_url` must say where it is.
    #[error("forge.{0} needs api_url, e.g. \"https://{0}.example.com/api/v1\"")]
    ApiUrlRequired(ForgeKind),
    /// `api_url` is not a usable URL.
    #[error("forge api_url is not usable: {reason}")]
    InvalidApiUrl {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// This build cannot speak HTTPS.
    #[error(
        "forge api_url is https:// but this build of Slipway has no TLS support (build \
         slipway-forge with its `tls` feature)"
    )]
    TlsNotCompiled,
    /// The repository is not `owner/name`.
    #[error(
        "forge repository {0:?} is not of the form owner/name (GitLab: group/subgroup/project, \
         or the project's numeric id), each part of A-Z a-z 0-9 . _ -"
    )]
    InvalidRepository(String),
    /// No token: Slipway could not comment or set statuses.
    #[error("forge token is empty: set it (token_env names the variable that holds it)")]
    MissingToken,
    /// `bot_login` is not a login.
    #[error("forge bot_login {0:?} is not a login")]
    InvalidBotLogin(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_are_checked() {
        let mut config = ForgeConfig::new(ForgeKind::Gitea, "a/b", "t");
        assert_eq!(
            config.api_base(),
            Err(ConfigError::ApiUrlRequired(ForgeKind::Gitea))
        );
        assert_eq!(
            config.api_base().unwrap_err().to_string(),
            "forge.gitea needs api_url, e.g. \"https://gitea.example.com/api/v1\""
        );
        config.api_url = Some("http://127.0.0.1:3000/api/v1/".into());
        assert_eq!(
            config.api_base().as_deref(),
            Ok("http://127.0.0.1:3000/api/v1")
        );
        config.api_url = Some("http://user:pw@host/api".into());
        assert!(matches!(
            config.api_base(),
            Err(ConfigError::InvalidApiUrl { .. })
        ));
        config.api_url = Some("ftp://host".into());
        assert!(matches!(
            config.api_base(),
            Err(ConfigError::InvalidApiUrl { .. })
        ));
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let mut config = ForgeConfig::new(ForgeKind::GitHub, "a/b", "ghp_supersecret");
        config.webhook_secret = Secret::new("hook-secret");
        let debug = format!("{config:?} {:?}", config.webhook_verifier());
        assert!(!debug.contains("supersecret"), "{debug}");
        assert!(!debug.contains("hook-secret"), "{debug}");
    }
}
