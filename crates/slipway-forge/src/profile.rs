//! What each forge is, stated once: one [`ForgeProfile`] per forge (`github::PROFILE`,
//! `gitlab::PROFILE`, `gitea::PROFILE`), and the one `match` on [`ForgeKind`] that finds it.
//!
//! Code that differs between forges only by a fact (a header's name, the auth scheme, the
//! default API URL, how a commit status's state is spelled) reads the profile; what differs by
//! the shape of a payload or an answer lives in the forge's module (its wire shapes).

use crate::adapter::Connect;
use crate::api::StatusState;
use crate::event::{ForgeEvent, ForgeKind, RepositoryRef};
use crate::webhook::WebhookError;
use crate::{gitea, github, gitlab};

/// How a forge proves that a webhook delivery is its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureScheme {
    /// The lowercase (or uppercase) hex of HMAC-SHA256 over the raw body under the secret,
    /// after `prefix` (GitHub: `sha256=`; Gitea: nothing).
    HmacSha256 {
        /// What stands before the hex digits.
        prefix: &'static str,
    },
    /// The secret itself, compared in constant time (GitLab's `X-Gitlab-Token`).
    Token,
}

/// How a forge spells a commit status's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusNames {
    /// [`crate::StatusState::Pending`].
    pub pending: &'static str,
    /// [`crate::StatusState::Success`].
    pub success: &'static str,
    /// [`crate::StatusState::Failure`].
    pub failure: &'static str,
    /// [`crate::StatusState::Error`] (GitLab has none: `failed`).
    pub error: &'static str,
}

impl StatusNames {
    /// How `state` is spelled.
    pub fn of(&self, state: StatusState) -> &'static str {
        match state {
            StatusState::Pending => self.pending,
            StatusState::Success => self.success,
            StatusState::Failure => self.failure,
            StatusState::Error => self.error,
        }
    }
}

/// One forge's facts: what its webhooks and API look like from outside.
///
/// # Guarantees
/// Every list of header names is tried in order, and its first name is the one error messages
/// give (the others are a fork's spellings: Forgejo's `X-Forgejo-*`).
pub struct ForgeProfile {
    /// Which forge.
    pub kind: ForgeKind,
    /// Its lowercase name in configuration (`[forge.github]`) and webhook paths
    /// (`/webhooks/github`).
    pub name: &'static str,
    /// Other names it answers to in configuration (`forgejo` for Gitea).
    pub aliases: &'static [&'static str],
    /// The headers naming a delivery's event (`X-GitHub-Event`).
    pub event_headers: &'static [&'static str],
    /// The headers carrying a delivery's id, the one that stays the same across redeliveries
    /// first (GitLab's `Idempotency-Key` before its per-event `X-Gitlab-Event-UUID`).
    pub delivery_headers: &'static [&'static str],
    /// The headers carrying the signature (or token).
    pub signature_headers: &'static [&'static str],
    /// What the signature header holds.
    pub signature: SignatureScheme,
    /// The header the API token goes in (never the URL).
    pub auth_header: &'static str,
    /// What stands before the token in it (`Bearer `, `token `, nothing).
    pub auth_prefix: &'static str,
    /// Headers every API request carries besides the token and `User-Agent`.
    pub api_headers: &'static [(&'static str, &'static str)],
    /// The public API's root, `None` when the forge has no public instance to default to.
    pub default_api_url: Option<&'static str>,
    /// The environment variable that holds the API token unless the configuration names
    /// another (`token_env`).
    pub token_env: &'static str,
    /// The repository may be named by its numeric id instead of its path (GitLab's project
    /// id).
    pub numeric_repository_ids: bool,
    /// The query parameter that sets a list's page size (`per_page`, Gitea's `limit`).
    pub page_size_param: &'static str,
    /// The page size asked for: the most the forge gives by default.
    pub page_size: usize,
    /// Where the forge publishes pull request N's head: `{namespace}/N/head`.
    pub pr_ref_namespace: &'static str,
    /// The field of a commit status that names its check (`context`, GitLab's `name`).
    pub status_context_field: &'static str,
    /// How the API spells a commit status's states.
    pub status_names: StatusNames,
    /// A pull request webhook names the pull request's author (GitLab's names whoever
    /// triggered the event instead: ask the API for the author).
    pub webhook_names_pr_author: bool,
    /// Parses a payload for the event header's value (the forge's wire shapes).
    pub(crate) parse_event: fn(&str, &[u8]) -> Result<ForgeEvent, WebhookError>,
    /// The repository a payload (already JSON) is about.
    pub(crate) payload_repository: fn(&serde_json::Value) -> Option<RepositoryRef>,
    /// Builds the adapter.
    pub(crate) connect: Connect,
}

impl std::fmt::Debug for ForgeProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForgeProfile")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ForgeKind {
    /// This forge's facts. The one place a [`ForgeKind`] is matched to find them: adding a
    /// forge adds a variant, its module with its `PROFILE`, and an arm here.
    pub fn profile(self) -> &'static ForgeProfile {
        match self {
            ForgeKind::GitHub => &github::PROFILE,
            ForgeKind::GitLab => &gitlab::PROFILE,
            ForgeKind::Gitea => &gitea::PROFILE,
        }
    }
}

/// The spellings of GitHub and Gitea: [`StatusState::as_str`].
pub(crate) const STATUS_NAMES: StatusNames = StatusNames {
    pending: StatusState::Pending.as_str(),
    success: StatusState::Success.as_str(),
    failure: StatusState::Failure.as_str(),
    error: StatusState::Error.as_str(),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_is_its_own_kinds_and_names_parse_back() {
        for kind in ForgeKind::ALL {
            let profile = kind.profile();
            assert_eq!(
                profile.kind, kind,
                "{} is filed under its own kind",
                profile.name
            );
            for name in std::iter::once(&profile.name).chain(profile.aliases) {
                assert_eq!(name.parse::<ForgeKind>(), Ok(kind), "{name} names {kind}");
            }
            for headers in [
                profile.event_headers,
                profile.delivery_headers,
                profile.signature_headers,
            ] {
                assert!(!headers.is_empty(), "{} names its headers", profile.name);
            }
        }
    }
}
