//! Gitea and Forgejo: webhook payloads (`X-Gitea-Event`, or Forgejo's `X-Forgejo-Event`) and
//! the REST API v1 (`/api/v1`).

use serde::Deserialize;

use crate::adapter::connect_wire;
use crate::approvals::Verdict;
use crate::event::{self, ForgeEvent, ForgeKind, PrAction, PushPayload, ReviewState};
use crate::names::short_text;
use crate::profile::{ForgeProfile, STATUS_NAMES, SignatureScheme};
use crate::pull_wire::{
    CommentPayload, Flavor, GitHubLike, PullRequestNumber, PullRequestPayload, WireUser,
};
use crate::webhook::{WebhookError, decode, repository_object};

/// Gitea's (and Forgejo's) facts.
pub(crate) static PROFILE: ForgeProfile = ForgeProfile {
    kind: ForgeKind::Gitea,
    name: "gitea",
    aliases: &["forgejo"],
    event_headers: &["X-Gitea-Event", "X-Forgejo-Event"],
    delivery_headers: &["X-Gitea-Delivery", "X-Forgejo-Delivery"],
    signature_headers: &["X-Gitea-Signature", "X-Forgejo-Signature"],
    signature: SignatureScheme::HmacSha256 { prefix: "" },
    auth_header: "Authorization",
    auth_prefix: "token ",
    api_headers: &[("Accept", "application/json")],
    // Gitea has no public instance to default to.
    default_api_url: None,
    token_env: "GITEA_TOKEN",
    numeric_repository_ids: false,
    // Gitea's pages hold at most 50 items unless its administrator raised
    // `MAX_RESPONSE_ITEMS`.
    page_size_param: "limit",
    page_size: 50,
    pr_ref_namespace: "refs/pull",
    status_context_field: "context",
    status_names: STATUS_NAMES,
    webhook_names_pr_author: true,
    parse_event,
    payload_repository: repository_object,
    connect: connect_wire::<GitHubLike<Gitea>>,
};

/// A user: `login`, or the older `username` (Gitea sends both; old versions only the latter).
#[derive(Deserialize)]
pub(crate) struct User {
    #[serde(default)]
    login: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

impl WireUser for User {
    fn name(&self) -> String {
        self.login
            .clone()
            .filter(|l| !l.is_empty())
            .or_else(|| self.username.clone())
            .unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct DeletePayload {
    #[serde(rename = "ref")]
    git_ref: String,
    ref_type: String,
    #[serde(default)]
    sender: Option<event::Sender>,
}

#[derive(Deserialize)]
struct ReviewPayload {
    pull_request: PullRequestNumber,
    sender: User,
}

/// Parses a Gitea payload for the `X-Gitea-Event` value `event`.
pub(crate) fn parse_event(event: &str, body: &[u8]) -> Result<ForgeEvent, WebhookError> {
    let malformed = |e: String| WebhookError::Malformed(format!("gitea {event}: {e}"));
    let review = |state: ReviewState| -> Result<ForgeEvent, WebhookError> {
        let p: ReviewPayload = decode("gitea pull request review", body)?;
        let author = event::checked_login("reviewer", &p.sender.name()).map_err(malformed)?;
        Ok(ForgeEvent::Review {
            pr_number: p.pull_request.number,
            state,
            author,
        })
    };
    match event {
        "push" => decode::<PushPayload>("gitea push", body)?
            .event()
            .map_err(malformed),
        // Gitea reports a deleted branch as a `delete` event, with the short name.
        "delete" => {
            let p: DeletePayload = decode("gitea delete", body)?;
            if p.ref_type != "branch" {
                return Ok(ForgeEvent::Ignored {
                    kind: format!("delete.{}", short_text(&p.ref_type, 40)),
                });
            }
            let full = if p.git_ref.starts_with("refs/") {
                p.git_ref
            } else {
                format!("refs/heads/{}", p.git_ref)
            };
            let pusher = p.sender.as_ref().and_then(event::Sender::login);
            event::push_event(&full, "", &"0".repeat(40), pusher).map_err(malformed)
        }
        "pull_request" => {
            let p: PullRequestPayload<User> = decode("gitea pull_request", body)?;
            let action = match p.action.as_str() {
                "opened" => PrAction::Opened,
                "synchronized" => PrAction::Synchronized,
                "reopened" => PrAction::Reopened,
                "closed" if p.pull_request.merged() => PrAction::Merged,
                "closed" => PrAction::Closed,
                other => PrAction::Other(short_text(other, 40)),
            };
            let pr = p.pull_request.info().map_err(malformed)?;
            let sender = p.sender.as_ref().and_then(event::Sender::login);
            Ok(ForgeEvent::PullRequest { action, pr, sender })
        }
        // `X-Gitea-Event` names review events `pull_request_approved` & co.;
        // `X-Gitea-Event-Type` spells them `pull_request_review_approved`.
        "pull_request_approved" | "pull_request_review_approved" => review(ReviewState::Approved),
        "pull_request_rejected" | "pull_request_review_rejected" => {
            review(ReviewState::ChangesRequested)
        }
        "pull_request_comment" | "pull_request_review_comment" => {
            // In `X-Gitea-Event-Type`'s spelling, `pull_request_comment` is a plain comment on
            // a pull request; tell the two apart by their payload.
            let value: serde_json::Value = decode("gitea pull_request_comment", body)?;
            if value.get("comment").is_some() && value.get("issue").is_some() {
                parse_comment(body, &malformed)
            } else {
                review(ReviewState::Commented)
            }
        }
        "issue_comment" => parse_comment(body, &malformed),
        other => Ok(ForgeEvent::Ignored {
            kind: short_text(other, 60),
        }),
    }
}

fn parse_comment(
    body: &[u8],
    malformed: &dyn Fn(String) -> WebhookError,
) -> Result<ForgeEvent, WebhookError> {
    decode::<CommentPayload<User>>("gitea issue_comment", body)?.event(malformed)
}

/// What Gitea's REST API v1 does its own way.
#[derive(Default)]
pub(crate) struct Gitea;

impl Flavor for Gitea {
    type User = User;
    // Gitea lists an issue's comments in one answer: the endpoint takes no page.
    const COMMENTS_PAGED: bool = false;
    // Gitea has no deployments API.
    const DEPLOYMENTS: bool = false;
    const CHECKS_APART: bool = true;

    type Review = Review;
    type Permission = Permission;

    fn verdict(r: Review) -> Option<Verdict> {
        let state = if r.dismissed {
            ReviewState::Dismissed
        } else {
            match r.state.as_str() {
                "APPROVED" => ReviewState::Approved,
                "REQUEST_CHANGES" => ReviewState::ChangesRequested,
                "COMMENT" => ReviewState::Commented,
                // PENDING (a draft) and REQUEST_REVIEW are not verdicts.
                _ => return None,
            }
        };
        Some(Verdict {
            author: r.user?.name(),
            state,
            commit_sha: Some(crate::approvals::named_commit(r.commit_id)),
        })
    }

    fn writes(p: &Permission) -> bool {
        matches!(p.permission.as_str(), "write" | "admin" | "owner")
    }
}

#[derive(Deserialize)]
pub(crate) struct Review {
    user: Option<User>,
    state: String,
    #[serde(default)]
    commit_id: Option<String>,
    #[serde(default)]
    dismissed: bool,
}

#[derive(Deserialize)]
pub(crate) struct Permission {
    permission: String,
}
