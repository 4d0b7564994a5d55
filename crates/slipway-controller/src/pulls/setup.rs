//! The forge a controller works with, read from the engine configuration.

use std::sync::Arc;

use slipway_engine::EngineConfig;
use slipway_forge::{Forge, ForgeConfig, ForgeKind, WebhookVerifier};

/// The forge a controller works with, and its policy.
pub struct ForgeSetup {
    /// The forge's API.
    pub forge: Arc<dyn Forge>,
    /// Checks its webhooks.
    pub verifier: WebhookVerifier,
    /// Which forge.
    pub kind: ForgeKind,
    /// Authors whose pull requests from forks get a preview environment anyway.
    pub fork_allow: Vec<String>,
}

/// Reads the first `[forge.NAME]` of the engine configuration (`github`, `gitlab`, `gitea`
/// or `forgejo`): `repository`, `repository_id`, `api_url`, `token_env` (default
/// `GITHUB_TOKEN`, `GITLAB_TOKEN`, `GITEA_TOKEN`), `webhook_secret_env` (default
/// `SLIPWAY_WEBHOOK_SECRET`), `bot_login`, `fork_allow`. `None` when no forge is configured.
///
/// `private_texts` (`(text, stand-in)`: the repository's URL and paths, the home) are replaced
/// in everything posted to the forge (see `ForgeConfig::private_texts`).
pub fn setup_from_config(
    config: &EngineConfig,
    private_texts: Vec<(String, String)>,
) -> Result<Option<ForgeSetup>, String> {
    let Some((name, table)) = config.forge.iter().next() else {
        return Ok(None);
    };
    if config.forge.len() > 1 {
        return Err(format!(
            "several forges are configured ({}); Slipway works with one repository, on one forge",
            config.forge.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let kind: ForgeKind = name
        .parse()
        .map_err(|_| format!("[forge.{name}]: the forges are github, gitlab and gitea"))?;
    let string = |key: &str| -> Result<Option<String>, String> {
        match table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("[forge.{name}] {key} must be a string")),
        }
    };
    for key in table.keys() {
        if ![
            "repository",
            "repository_id",
            "api_url",
            "token_env",
            "webhook_secret_env",
            "bot_login",
            "fork_allow",
        ]
        .contains(&key.as_str())
        {
            return Err(format!(
                "[forge.{name}] has an unknown key `{key}`; the keys are repository, \
                 repository_id, api_url, token_env, webhook_secret_env, bot_login, fork_allow"
            ));
        }
    }
    let repository = string("repository")?
        .ok_or_else(|| format!("[forge.{name}] needs `repository`, e.g. \"acme/shop\""))?;
    let token_env = string("token_env")?.unwrap_or_else(|| kind.profile().token_env.into());
    let token = std::env::var(&token_env).map_err(|_| {
        format!("[forge.{name}] reads its API token from ${token_env}, which is not set")
    })?;
    let secret_env =
        string("webhook_secret_env")?.unwrap_or_else(|| "SLIPWAY_WEBHOOK_SECRET".into());
    let secret = std::env::var(&secret_env).map_err(|_| {
        format!(
            "[forge.{name}] reads its webhook secret from ${secret_env}, which is not set; \
             webhooks are refused without one"
        )
    })?;
    let fork_allow = match table.get("fork_allow") {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("[forge.{name}] fork_allow lists logins (strings)"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(format!(
                "[forge.{name}] fork_allow must be a list of logins"
            ));
        }
    };
    let mut forge_config = ForgeConfig::new(kind, repository, token);
    forge_config.api_url = string("api_url")?;
    forge_config.bot_login = string("bot_login")?;
    forge_config.webhook_secret = secret.into();
    forge_config.private_texts = private_texts;
    forge_config.repository_id = match table.get("repository_id") {
        None => None,
        Some(toml::Value::Integer(id)) if *id > 0 => Some(*id as u64),
        Some(_) => {
            return Err(format!(
                "[forge.{name}] repository_id must be the repository's numeric id on the \
                 forge (a positive integer)"
            ));
        }
    };
    let verifier = forge_config.webhook_verifier();
    let forge = slipway_forge::connect(forge_config).map_err(|e| format!("[forge.{name}]: {e}"))?;
    Ok(Some(ForgeSetup {
        forge: Arc::from(forge),
        verifier,
        kind,
        fork_allow,
    }))
}
