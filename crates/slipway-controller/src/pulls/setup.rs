//! The forge a controller works with, read from the configuration's `[forge.NAME]` section.

use std::collections::BTreeMap;
use std::sync::Arc;

use slipway_forge::{Forge, ForgeConfig, ForgeKind, ForgeSection, WebhookVerifier};

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
    /// How recent a head a command naming no commit does not approve (`fresh_head`).
    pub fresh_head: std::time::Duration,
    /// Automation accounts whose pushes leave approvals counting (`trusted_bots`).
    pub trusted_bots: Vec<String>,
}

/// Connects to the forge of the configuration's `[forge.NAME]` (`github`, `gitlab`, `gitea`
/// or `forgejo`; at most one), reading its token and webhook secret from the environment
/// variables it names. `None` when no forge is configured.
///
/// `private_texts` (`(text, stand-in)`: the repository's URL and paths, the home) are replaced
/// in everything posted to the forge (see `ForgeConfig::private_texts`).
pub fn setup_from_config(
    forges: &BTreeMap<String, ForgeSection>,
    private_texts: Vec<(String, String)>,
) -> Result<Option<ForgeSetup>, String> {
    let Some((name, section)) = forges.iter().next() else {
        return Ok(None);
    };
    if forges.len() > 1 {
        return Err(format!(
            "several forges are configured ({}); Slipway works with one repository, on one forge",
            forges.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let kind: ForgeKind = name
        .parse()
        .map_err(|_| format!("[forge.{name}]: the forges are github, gitlab and gitea"))?;
    let repository = section.repository.clone();
    let token_env = section
        .token_env
        .clone()
        .unwrap_or_else(|| kind.profile().token_env.into());
    let token = std::env::var(&token_env).map_err(|_| {
        format!("[forge.{name}] reads its API token from ${token_env}, which is not set")
    })?;
    let secret_env = section
        .webhook_secret_env
        .clone()
        .unwrap_or_else(|| "SLIPWAY_WEBHOOK_SECRET".into());
    let secret = std::env::var(&secret_env).map_err(|_| {
        format!(
            "[forge.{name}] reads its webhook secret from ${secret_env}, which is not set; \
             webhooks are refused without one"
        )
    })?;
    let mut forge_config = ForgeConfig::new(kind, repository, token);
    forge_config.api_url = section.api_url.clone();
    forge_config.bot_login = section.bot_login.clone();
    forge_config.webhook_secret = secret.into();
    forge_config.private_texts = private_texts;
    forge_config.repository_id = section.repository_id.map(u64::from);
    let verifier = forge_config.webhook_verifier();
    let forge = slipway_forge::connect(forge_config).map_err(|e| format!("[forge.{name}]: {e}"))?;
    Ok(Some(ForgeSetup {
        forge: Arc::from(forge),
        verifier,
        kind,
        fork_allow: section.fork_allow.clone(),
        fresh_head: section.fresh_head,
        trusted_bots: section.trusted_bots.clone(),
    }))
}
