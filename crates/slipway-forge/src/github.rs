//! GitHub: webhook payloads (`X-GitHub-Event`) and the REST API (`2022-11-28`).

use serde::Deserialize;

use crate::adapter::{PostedComment, Repository, Wire, connect_wire};
use crate::api::PrState;
use crate::approvals::Verdict;
use crate::error::ForgeError;
use crate::event::{
    self, ForgeEvent, ForgeKind, PrAction, PullRequestInfo, PushPayload, ReviewState,
};
use crate::http::{Api, Method};
use crate::names::path_segment;
use crate::profile::{ForgeProfile, STATUS_NAMES, SignatureScheme};
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
    connect: connect_wire::<GitHub>,
};

#[derive(Deserialize)]
pub(crate) struct User {
    login: String,
}

#[derive(Deserialize)]
struct Repo {
    id: Option<u64>,
    full_name: String,
}

#[derive(Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    repo: Option<Repo>,
}

/// A pull request, as both the webhooks and the REST API (`pull-request`,
/// `pull-request-simple`) describe it.
#[derive(Deserialize)]
pub(crate) struct PullRequest {
    number: u64,
    title: String,
    user: Option<User>,
    head: Branch,
    base: Branch,
    html_url: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    merged: Option<bool>,
    #[serde(default)]
    merged_at: Option<String>,
    #[serde(default)]
    mergeable: Option<bool>,
    #[serde(default)]
    merge_commit_sha: Option<String>,
}

impl PullRequest {
    fn info(&self) -> Result<PullRequestInfo, String> {
        let base_repo = self
            .base
            .repo
            .as_ref()
            .ok_or_else(|| format!("pull request {}: base.repo is null", self.number))?;
        let head_repo = self.head.repo.as_ref();
        // A fork is another repository than the base; a deleted head repository counts as
        // one, since nothing says whose code it was. Ids survive renames, so they decide when
        // both are there.
        let is_fork = match head_repo {
            None => true,
            Some(head) => match (head.id, base_repo.id) {
                (Some(h), Some(b)) => h != b,
                _ => !head.full_name.eq_ignore_ascii_case(&base_repo.full_name),
            },
        };
        let info = PullRequestInfo {
            number: self.number,
            title: self.title.clone(),
            // GitHub shows a deleted account as "ghost".
            author: self
                .user
                .as_ref()
                .map_or_else(|| "ghost".to_owned(), |u| u.login.clone()),
            head_sha: self.head.sha.clone(),
            head_ref: self.head.git_ref.clone(),
            base_ref: self.base.git_ref.clone(),
            head_repo_full_name: head_repo.map(|r| r.full_name.clone()),
            base_repo_full_name: base_repo.full_name.clone(),
            is_fork,
            url: self.html_url.clone(),
        };
        info.check()?;
        Ok(info)
    }

    /// `merged` where the object has it (webhooks, `pulls/get`), else `merged_at` (lists).
    fn merged(&self) -> bool {
        self.merged.unwrap_or(self.merged_at.is_some())
    }
}

#[derive(Deserialize)]
struct PullRequestPayload {
    action: String,
    pull_request: PullRequest,
}

#[derive(Deserialize)]
struct Review {
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

#[derive(Deserialize)]
struct PullRequestNumber {
    number: u64,
}

#[derive(Deserialize)]
struct Issue {
    number: u64,
    #[serde(default)]
    pull_request: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub(crate) struct Comment {
    id: u64,
    #[serde(default)]
    body: Option<String>,
    user: Option<User>,
}

#[derive(Deserialize)]
struct CommentPayload {
    action: String,
    issue: Issue,
    comment: Comment,
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
            let p: PullRequestPayload = decode("github pull_request", body)?;
            let action = match p.action.as_str() {
                "opened" => PrAction::Opened,
                "synchronize" => PrAction::Synchronized,
                "reopened" => PrAction::Reopened,
                "closed" if p.pull_request.merged() => PrAction::Merged,
                "closed" => PrAction::Closed,
                other => PrAction::Other(other.to_owned()),
            };
            let pr = p.pull_request.info().map_err(malformed)?;
            Ok(ForgeEvent::PullRequest { action, pr })
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
            let p: CommentPayload = decode("github issue_comment", body)?;
            if p.action != "created" {
                return Ok(ForgeEvent::Ignored {
                    kind: format!("issue_comment.{}", crate::names::short_text(&p.action, 40)),
                });
            }
            let login = p.comment.user.map(|u| u.login).unwrap_or_default();
            let author = event::checked_login("commenter", &login).map_err(malformed)?;
            Ok(ForgeEvent::Comment {
                pr_number: p.issue.number,
                comment_id: p.comment.id,
                author,
                body: p.comment.body.unwrap_or_default(),
                is_pull_request: p.issue.pull_request.is_some_and(|v| !v.is_null()),
            })
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

/// GitHub's REST API.
#[derive(Default)]
pub(crate) struct GitHub;

impl Wire for GitHub {
    type User = User;
    type Comment = Comment;
    type PullRequest = PullRequest;

    const EDIT_COMMENT: Method = Method::Patch;
    const COMMENTS_PAGED: bool = true;

    fn login(user: User) -> String {
        user.login
    }

    fn posted(c: Comment) -> Option<PostedComment> {
        Some(PostedComment {
            id: c.id,
            author: c.user.map(|u| u.login),
            body: c.body.unwrap_or_default(),
        })
    }

    fn info(
        &self,
        _: &Api,
        _: &Repository,
        pr: &PullRequest,
        path: &str,
    ) -> Result<PullRequestInfo, ForgeError> {
        pr.info()
            .map_err(|e| ForgeError::unexpected_answer(path.to_owned(), e))
    }

    fn state(pr: PullRequest) -> (PrState, Option<bool>, Option<String>) {
        let state = PrState::of(pr.merged(), pr.state == "open");
        (state, pr.mergeable, pr.merge_commit_sha)
    }

    fn reviews(api: &Api, repo: &Repository, number: u64) -> Result<Vec<Verdict>, ForgeError> {
        let reviews: Vec<Review> = api.get_all(&format!("{}/pulls/{number}/reviews", repo.path))?;
        Ok(reviews
            .into_iter()
            .filter_map(|r| {
                Some(Verdict {
                    state: review_state(&r.state)?,
                    author: r.user?.login,
                    commit_sha: r.commit_id,
                })
            })
            .collect())
    }

    fn has_write_access(api: &Api, repo: &Repository, user: &str) -> Result<bool, ForgeError> {
        #[derive(Deserialize)]
        struct Permission {
            permission: String,
            #[serde(default)]
            role_name: Option<String>,
        }
        let p: Option<Permission> = api.get_optional(&format!(
            "{}/collaborators/{}/permission",
            repo.path,
            path_segment(user)
        ))?;
        // `permission` is the legacy summary (admin/write/read/none; maintain shows as write),
        // `role_name` the actual role; either one granting write is enough.
        let writes = |s: &str| matches!(s, "admin" | "maintain" | "write");
        Ok(p.is_some_and(|p| writes(&p.permission) || p.role_name.as_deref().is_some_and(writes)))
    }
}
