//! GitHub: webhook payloads (`X-GitHub-Event`) and the REST API (`2022-11-28`).

use serde::Deserialize;

use crate::adapter::connect_wire;
use crate::approvals::Verdict;
use crate::event::{self, ForgeEvent, ForgeKind, PrAction, PushPayload, ReviewState};
use crate::profile::{ForgeProfile, STATUS_NAMES, SignatureScheme};
use crate::pull_wire::{
    CommentPayload, Flavor, GitHubLike, PullRequestNumber, PullRequestPayload, WireUser,
};
use crate::webhook::{WebhookError, decode, repository_object};

/// GitHub's facts.
pub(crate) static PROFILE: ForgeProfile = ForgeProfile {
    kind: ForgeKind::GitHub,
    name: "github",
    aliases: &[],
    event_headers: &["X-GitHub-Event"],
    delivery_headers: &["X-GitHub-Delivery"],
    signature_headers: &["X-Hub-Signature-256"],
    signature: SignatureScheme::HmacSha256 { prefix: "sha256=" },
    auth_header: "Authorization",
    auth_prefix: "Bearer ",
    api_headers: &[
        ("Accept", "application/vnd.github+json"),
        ("X-GitHub-Api-Version", "2022-11-28"),
    ],
    default_api_url: Some("https://api.github.com"),
    token_env: "GITHUB_TOKEN",
    numeric_repository_ids: false,
    page_size_param: "per_page",
    page_size: 100,
    pr_ref_namespace: "refs/pull",
    status_context_field: "context",
    status_names: STATUS_NAMES,
    webhook_names_pr_author: true,
    parse_event,
    payload_repository: repository_object,
    connect: connect_wire::<GitHubLike<GitHub>>,
};

#[derive(Deserialize)]
pub(crate) struct User {
    login: String,
}

impl WireUser for User {
    fn name(&self) -> String {
        self.login.clone()
    }
}

#[derive(Deserialize)]
pub(crate) struct Review {
    state: String,
    user: Option<User>,
    #[serde(default)]
    commit_id: Option<String>,
}

#[derive(Deserialize)]
struct ReviewPayload {
    review: Review,
    pull_request: PullRequestNumber,
}

/// Parses a GitHub payload for the `X-GitHub-Event` value `event`.
pub(crate) fn parse_event(event: &str, body: &[u8]) -> Result<ForgeEvent, WebhookError> {
    let malformed = |e: String| WebhookError::Malformed(format!("github {event}: {e}"));
    match event {
        "ping" => Ok(ForgeEvent::Ping),
        "push" => decode::<PushPayload>("github push", body)?
            .event()
            .map_err(malformed),
        "pull_request" => {
            let p: PullRequestPayload<User> = decode("github pull_request", body)?;
            let action = match p.action.as_str() {
                "opened" => PrAction::Opened,
                "synchronize" => PrAction::Synchronized,
                "reopened" => PrAction::Reopened,
                "closed" if p.pull_request.merged() => PrAction::Merged,
                "closed" => PrAction::Closed,
                other => PrAction::Other(other.to_owned()),
            };
            let pr = p.pull_request.info().map_err(malformed)?;
            let sender = p.sender.as_ref().and_then(event::Sender::login);
            Ok(ForgeEvent::PullRequest { action, pr, sender })
        }
        "pull_request_review" => {
            let p: ReviewPayload = decode("github pull_request_review", body)?;
            let state = review_state(&p.review.state).ok_or_else(|| {
                malformed(format!(
                    "unknown review state {:?}",
                    crate::names::short_text(&p.review.state, 40)
                ))
            })?;
            let login = p.review.user.map(|u| u.login).unwrap_or_default();
            let author = event::checked_login("reviewer", &login).map_err(malformed)?;
            Ok(ForgeEvent::Review {
                pr_number: p.pull_request.number,
                state,
                author,
            })
        }
        "issue_comment" => {
            decode::<CommentPayload<User>>("github issue_comment", body)?.event(&malformed)
        }
        other => Ok(ForgeEvent::Ignored {
            kind: crate::names::short_text(other, 60),
        }),
    }
}

/// A review state, as webhooks (`approved`) and the API (`APPROVED`) spell it. `PENDING` (a
/// review not yet submitted) is not a verdict.
fn review_state(state: &str) -> Option<ReviewState> {
    match state.to_ascii_lowercase().as_str() {
        "approved" => Some(ReviewState::Approved),
        "changes_requested" => Some(ReviewState::ChangesRequested),
        "commented" => Some(ReviewState::Commented),
        "dismissed" => Some(ReviewState::Dismissed),
        _ => None,
    }
}

/// What GitHub's REST API does its own way.
#[derive(Default)]
pub(crate) struct GitHub;

impl Flavor for GitHub {
    type User = User;
    const COMMENTS_PAGED: bool = true;
    const DEPLOYMENTS: bool = true;
    const CHECKS_APART: bool = false;

    type Review = Review;
    type Permission = Permission;

    fn verdict(r: Review) -> Option<Verdict> {
        Some(Verdict {
            state: review_state(&r.state)?,
            author: r.user?.login,
            commit_sha: Some(crate::approvals::named_commit(r.commit_id)),
        })
    }

    /// `permission` is the legacy summary (admin/write/read/none; maintain shows as write),
    /// `role_name` the actual role; either one granting write is enough.
    fn writes(p: &Permission) -> bool {
        let writes = |s: &str| matches!(s, "admin" | "maintain" | "write");
        writes(&p.permission) || p.role_name.as_deref().is_some_and(writes)
    }
}

#[derive(Deserialize)]
pub(crate) struct Permission {
    permission: String,
    #[serde(default)]
    role_name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pull_wire::Flavor;

    #[test]
    fn an_approval_github_names_no_commit_for_counts_for_no_head() {
        // GitHub answers `commit_id: null` once the reviewed commit is gone (force-pushed
        // away, then collected): that approval was of older code.
        let head = "b".repeat(40);
        for commit in [serde_json::Value::Null, serde_json::json!("a".repeat(40))] {
            let review: Review = serde_json::from_value(serde_json::json!({
                "state": "APPROVED",
                "user": {"login": "carol"},
                "commit_id": commit,
            }))
            .expect("a review");
            let verdict = GitHub::verdict(review).expect("a verdict");
            let approvals = crate::approvals::latest_approvals([verdict]);
            assert!(!approvals[0].counts_for(&head, &[]), "{commit}");
        }
    }
}
