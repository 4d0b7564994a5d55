//! GitHub: webhook payloads (`X-GitHub-Event`) and the REST API (`2022-11-28`).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::json;

use crate::api::{
    self, Api, Approval, CommentId, CommitStatus, Forge, ForgeConfig, ForgeError, Method, PrState,
    PullRequestDetails,
};
use crate::event::{self, ForgeEvent, ForgeKind, PrAction, PullRequestInfo, ReviewState};
use crate::names::path_segment;
use crate::webhook::{WebhookError, decode};

#[derive(Deserialize)]
struct User {
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
struct PullRequest {
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
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
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
struct Comment {
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
        "push" => {
            let p: PushPayload = decode("github push", body)?;
            event::push_event(&p.git_ref, &p.before, &p.after).map_err(malformed)
        }
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

/// The GitHub adapter.
pub(crate) struct GitHub {
    api: Api,
    /// `/repos/{owner}/{repo}`, percent-encoded.
    repo_path: String,
    login: OnceLock<String>,
}

impl GitHub {
    pub(crate) fn new(api: Api, config: &ForgeConfig) -> GitHub {
        let repo_path = format!(
            "/repos/{}",
            config
                .repository
                .split('/')
                .map(path_segment)
                .collect::<Vec<_>>()
                .join("/")
        );
        let login = OnceLock::new();
        if let Some(bot) = &config.bot_login {
            let _ = login.set(bot.clone());
        }
        GitHub {
            api,
            repo_path,
            login,
        }
    }

    /// Slipway's own login: configured, or asked once.
    fn own_login(&self) -> Result<&str, ForgeError> {
        if let Some(login) = self.login.get() {
            return Ok(login);
        }
        let me: User = self.api.get("/user")?;
        Ok(self.login.get_or_init(|| me.login))
    }
}

fn decode_error(method: &'static str, path: String, reason: String) -> ForgeError {
    ForgeError::Decode {
        method,
        path,
        reason,
    }
}

impl Forge for GitHub {
    fn kind(&self) -> ForgeKind {
        ForgeKind::GitHub
    }

    fn upsert_comment(&self, pr: u64, marker: &str, body: &str) -> Result<CommentId, ForgeError> {
        api::check_marker(marker)?;
        let body = self.api.scrub(&api::body_with_marker(marker, body));
        let me = self.own_login()?.to_owned();
        let comments: Vec<Comment> = self.api.get_all(
            &format!("{}/issues/{pr}/comments", self.repo_path),
            "per_page",
            100,
        )?;
        let ours = comments.into_iter().find(|c| {
            c.user
                .as_ref()
                .is_some_and(|u| u.login.eq_ignore_ascii_case(&me))
                && c.body.as_deref().is_some_and(|b| b.contains(marker))
        });
        match ours {
            Some(c) if c.body.as_deref() == Some(body.as_str()) => Ok(CommentId(c.id)),
            Some(c) => {
                let updated: Comment = self.api.send(
                    Method::Patch,
                    &format!("{}/issues/comments/{}", self.repo_path, c.id),
                    &json!({ "body": body }),
                )?;
                Ok(CommentId(updated.id))
            }
            None => self.post_comment(pr, &body),
        }
    }

    fn post_comment(&self, pr: u64, body: &str) -> Result<CommentId, ForgeError> {
        let created: Comment = self.api.send(
            Method::Post,
            &format!("{}/issues/{pr}/comments", self.repo_path),
            &json!({ "body": body }),
        )?;
        Ok(CommentId(created.id))
    }

    fn set_status(&self, status: &CommitStatus) -> Result<(), ForgeError> {
        api::check_sha(&status.sha)?;
        api::check_context(&status.context)?;
        let state = status.state.as_str();
        let mut body = json!({
            "state": state,
            "context": status.context,
            "description": api::status_description(&self.api.scrub(&status.description)),
        });
        if let Some(url) = &status.target_url {
            body["target_url"] = json!(url);
        }
        let _: serde_json::Value = self.api.send(
            Method::Post,
            &format!("{}/statuses/{}", self.repo_path, status.sha),
            &body,
        )?;
        Ok(())
    }

    fn pull_request(&self, number: u64) -> Result<PullRequestDetails, ForgeError> {
        let path = format!("{}/pulls/{number}", self.repo_path);
        let pr: PullRequest = self.api.get(&path)?;
        let info = pr.info().map_err(|e| decode_error("GET", path, e))?;
        let state = if pr.merged() {
            PrState::Merged
        } else if pr.state == "open" {
            PrState::Open
        } else {
            PrState::Closed
        };
        Ok(PullRequestDetails {
            info,
            mergeable: pr.mergeable,
            merge_commit_sha: (state == PrState::Merged)
                .then(|| pr.merge_commit_sha.clone())
                .flatten(),
            state,
        })
    }

    fn approvals(&self, number: u64) -> Result<Vec<Approval>, ForgeError> {
        let reviews: Vec<Review> = self.api.get_all(
            &format!("{}/pulls/{number}/reviews", self.repo_path),
            "per_page",
            100,
        )?;
        Ok(latest_approvals(reviews.into_iter().filter_map(|r| {
            let state = review_state(&r.state)?;
            Some((r.user?.login, state, r.commit_id))
        })))
    }

    fn has_write_access(&self, user: &str) -> Result<bool, ForgeError> {
        api::check_login(user)?;
        #[derive(Deserialize)]
        struct Permission {
            permission: String,
            #[serde(default)]
            role_name: Option<String>,
        }
        let p: Option<Permission> = self.api.get_optional(&format!(
            "{}/collaborators/{}/permission",
            self.repo_path,
            path_segment(user)
        ))?;
        // `permission` is the legacy summary (admin/write/read/none; maintain shows as write),
        // `role_name` the actual role; either one granting write is enough.
        let writes = |s: &str| matches!(s, "admin" | "maintain" | "write");
        Ok(p.is_some_and(|p| writes(&p.permission) || p.role_name.as_deref().is_some_and(writes)))
    }

    fn open_pull_requests(&self) -> Result<Vec<PullRequestInfo>, ForgeError> {
        let path = format!("{}/pulls?state=open", self.repo_path);
        let prs: Vec<PullRequest> = self.api.get_all(&path, "per_page", 100)?;
        prs.iter()
            .map(|pr| {
                pr.info()
                    .map_err(|e| decode_error("GET", format!("{}/pulls", self.repo_path), e))
            })
            .collect()
    }

    fn pr_head_ref(&self, number: u64) -> String {
        format!("refs/pull/{number}/head")
    }
}

/// Approvals from a chronological list of `(reviewer, verdict, commit)`: a reviewer's latest
/// approve / request-changes / dismissed verdict counts; plain comments do not change it (on
/// GitHub, commenting after approving leaves the approval in place).
pub(crate) fn latest_approvals(
    reviews: impl IntoIterator<Item = (String, ReviewState, Option<String>)>,
) -> Vec<Approval> {
    let mut order: Vec<String> = Vec::new();
    let mut latest: HashMap<String, (ReviewState, Option<String>)> = HashMap::new();
    for (author, state, commit) in reviews {
        if state == ReviewState::Commented {
            continue;
        }
        let key = author.to_ascii_lowercase();
        if !latest.contains_key(&key) {
            order.push(author.clone());
        }
        latest.insert(key, (state, commit));
    }
    order
        .into_iter()
        .filter_map(|author| {
            let (state, commit) = latest.remove(&author.to_ascii_lowercase())?;
            (state == ReviewState::Approved).then_some(Approval {
                author,
                commit_sha: commit,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_request_for_changes_or_dismissal_cancels_an_approval_but_a_comment_does_not() {
        let sha = |c: &str| Some(c.repeat(40));
        let reviews = vec![
            ("alice".to_owned(), ReviewState::Approved, sha("a")),
            ("bob".to_owned(), ReviewState::Approved, sha("a")),
            ("alice".to_owned(), ReviewState::Commented, sha("b")),
            ("bob".to_owned(), ReviewState::ChangesRequested, sha("b")),
            ("carol".to_owned(), ReviewState::ChangesRequested, sha("a")),
            ("carol".to_owned(), ReviewState::Approved, sha("b")),
            ("dave".to_owned(), ReviewState::Approved, sha("a")),
            ("Dave".to_owned(), ReviewState::Dismissed, sha("a")),
        ];
        let approvals = latest_approvals(reviews);
        let who: Vec<_> = approvals.iter().map(|a| a.author.as_str()).collect();
        assert_eq!(who, ["alice", "carol"]);
        assert_eq!(approvals[1].commit_sha, sha("b"));
    }
}
