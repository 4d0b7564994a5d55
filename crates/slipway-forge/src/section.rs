//! `[forge.NAME]` of the engine configuration file: which repository on which forge, and
//! where the credentials are (environment variables, never the file itself).

use std::num::NonZeroU64;
use std::time::Duration;

use serde::Deserialize;

/// One `[forge.NAME]` table (`NAME`: `github`, `gitlab`, `gitea` or `forgejo`). An unknown or
/// mistyped key is refused when the file is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgeSection {
    /// `owner/name` (GitLab: `group/subgroup/project`, or the project's numeric id).
    pub repository: String,
    /// The repository's numeric id on the forge: webhooks are then matched by id (see
    /// [`crate::ForgeConfig::repository_id`]).
    pub repository_id: Option<NonZeroU64>,
    /// The API's root URL; the forge's public one when absent.
    pub api_url: Option<String>,
    /// The environment variable holding the API token (default: the forge's own, e.g.
    /// `GITHUB_TOKEN`).
    pub token_env: Option<String>,
    /// The environment variable holding the webhook secret (default
    /// `SLIPWAY_WEBHOOK_SECRET`).
    pub webhook_secret_env: Option<String>,
    /// Slipway's own login on the forge (see [`crate::ForgeConfig::bot_login`]).
    pub bot_login: Option<String>,
    /// Logins whose pull requests from forks get previews.
    #[serde(default)]
    pub fork_allow: Vec<String>,
    /// How long after Slipway first sees a pull request's head a `/slipway preview` or
    /// `/slipway approve-policies` that names no commit still refuses to approve it (default
    /// 60 s), counted to when the comment was made (as the forge says) and to when it is
    /// handled: its author may not have seen that push. One that names the commit is taken at
    /// once.
    #[serde(
        default = "default_fresh_head",
        deserialize_with = "slipway_core::duration::deserialize"
    )]
    pub fresh_head: Duration,
    /// Automation accounts trusted to push to pull requests (an autofix bot that pushes only
    /// for their authors, `pre-commit-ci[bot]`): their pushes do not stop approvals from
    /// counting, as another bot's do. They still never approve what they pushed.
    #[serde(default)]
    pub trusted_bots: Vec<String>,
}

fn default_fresh_head() -> Duration {
    Duration::from_secs(60)
}
