//! The pull-request objects of GitHub's webhooks and REST API, which Gitea and Forgejo copy
//! field for field: one set of shapes and one [`Wire`] for both adapters ([`GitHubLike`]),
//! generic over what differs ([`Flavor`]: the user object, as Gitea's carries an older
//! `username` beside `login`; whether comments are paged; reviews and permissions).

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::adapter::{PostedComment, Repository, Wire};
use crate::api::PrState;
use crate::approvals::Verdict;
use crate::error::ForgeError;
use crate::event::{self, ForgeEvent, PullRequestInfo};
use crate::http::{Api, Method};
use crate::names::{path_segment, short_text};
use crate::webhook::WebhookError;

/// A user object: what its name is.
pub(crate) trait WireUser {
    /// The login.
    fn name(&self) -> String;
}

#[derive(Deserialize)]
pub(crate) struct Repo {
    #[serde(default)]
    id: Option<u64>,
    full_name: String,
}

#[derive(Deserialize)]
pub(crate) struct Branch {
    /// GitHub: `owner:branch`; Gitea: the branch, or empty for a pull request of its AGit
    /// flow (see [`PullRequest::info`]).
    #[serde(default)]
    label: Option<String>,
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    /// Gitea only; 0 where it does not know.
    #[serde(default)]
    repo_id: Option<u64>,
    #[serde(default)]
    repo: Option<Repo>,
}

impl Branch {
    /// The id of the branch's repository, where the forge says it.
    fn repository_id(&self) -> Option<u64> {
        (self.repo_id.filter(|&id| id != 0)).or(self.repo.as_ref().and_then(|r| r.id))
    }
}

/// A pull request, in webhooks and the API alike (GitHub's `pull-request` and
/// `pull-request-simple`, Gitea's `PullRequest`).
#[derive(Deserialize)]
pub(crate) struct PullRequest<U> {
    number: u64,
    title: String,
    user: Option<U>,
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
    /// GitHub's verdict with the base branch's protection (its required checks and reviews):
    /// `clean`, `unstable` (a check that is not required fails), `has_hooks`, `blocked`,
    /// `behind`, `dirty`, `draft`, `unknown`. Gitea has none.
    #[serde(default)]
    mergeable_state: Option<String>,
    #[serde(default)]
    merge_commit_sha: Option<String>,
    /// GitHub and Gitea alike: `[{"name": ...}, ...]`; `null` or absent on some Gitea objects.
    #[serde(default)]
    labels: Option<Vec<Label>>,
}

#[derive(Deserialize)]
pub(crate) struct Label {
    name: String,
}

impl<U: WireUser> PullRequest<U> {
    /// The checked facts Slipway keeps.
    pub(crate) fn info(&self) -> Result<PullRequestInfo, String> {
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
            Some(head) => match (self.head.repository_id(), self.base.repository_id()) {
                (Some(h), Some(b)) => h != b,
                _ => !head.full_name.eq_ignore_ascii_case(&base_repo.full_name),
            },
        } || self.is_agit();
        let info = PullRequestInfo {
            number: self.number,
            title: self.title.clone(),
            // Both forges show a deleted account as "ghost".
            author: self
                .user
                .as_ref()
                .map_or_else(|| "ghost".to_owned(), U::name),
            head_sha: self.head.sha.clone(),
            head_ref: self.head.git_ref.clone(),
            base_ref: self.base.git_ref.clone(),
            head_repo_full_name: head_repo.map(|r| r.full_name.clone()),
            base_repo_full_name: base_repo.full_name.clone(),
            is_fork,
            url: self.html_url.clone(),
            labels: event::label_set(self.labels.iter().flatten().map(|l| l.name.clone())),
        };
        info.check()?;
        Ok(info)
    }

    /// Whether it is a Gitea (Forgejo) pull request of the AGit flow, which anyone who can
    /// *read* the repository opens by pushing to `refs/for/<base>/<topic>`. Its head then lives
    /// in the base repository (at `refs/pull/N/head`), so it looks like a branch of it, but
    /// nobody with write access pushed it: it is someone else's code, as a fork's is. Gitea
    /// shows it with an empty head `label`, and its head `ref` is that ref (or the topic, in
    /// lists, when a branch of that name exists). A head `ref` under `refs/` is no branch
    /// anyone pushed either (GitHub refuses such branch names).
    fn is_agit(&self) -> bool {
        self.head.label.as_deref() == Some("") || self.head.git_ref.starts_with("refs/")
    }

    /// `merged` where the object has it (webhooks, `pulls/get`), else `merged_at` (lists).
    pub(crate) fn merged(&self) -> bool {
        self.merged.unwrap_or(self.merged_at.is_some())
    }

    /// Its state, whether it can be merged, and its merge commit. On GitHub, what the base
    /// branch's protection requires counts (a failing required check is `blocked`), as
    /// Atlantis reads it; `mergeable` alone says only that nothing conflicts.
    pub(crate) fn state(self) -> (PrState, Option<bool>, Option<String>) {
        let state = PrState::of(self.merged(), self.state == "open");
        let mergeable = match self.mergeable_state.as_deref() {
            None | Some("clean" | "unstable" | "has_hooks") => self.mergeable,
            Some("blocked" | "behind" | "dirty" | "draft") => Some(false),
            // `unknown`, or a word this release does not know: not decided.
            Some(_) => None,
        };
        (state, mergeable, self.merge_commit_sha)
    }
}

#[derive(Deserialize)]
pub(crate) struct PullRequestPayload<U> {
    pub(crate) action: String,
    pub(crate) pull_request: PullRequest<U>,
    #[serde(default)]
    pub(crate) sender: Option<crate::event::Sender>,
}

#[derive(Deserialize)]
pub(crate) struct PullRequestNumber {
    pub(crate) number: u64,
}

#[derive(Deserialize)]
pub(crate) struct Issue {
    number: u64,
    #[serde(default)]
    pull_request: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub(crate) struct Comment<U> {
    id: u64,
    #[serde(default)]
    body: Option<String>,
    user: Option<U>,
    /// RFC 3339.
    #[serde(default)]
    created_at: Option<String>,
}

impl<U: WireUser> Comment<U> {
    /// The comment as the adapter lists it.
    pub(crate) fn posted(self) -> PostedComment {
        PostedComment {
            id: self.id,
            author: self.user.as_ref().map(U::name),
            body: self.body.unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct CommentPayload<U> {
    action: String,
    issue: Issue,
    comment: Comment<U>,
    /// Gitea only.
    #[serde(default)]
    is_pull: bool,
}

impl<U: WireUser> CommentPayload<U> {
    /// The event: a comment on an issue or pull request when one was created, else ignored.
    pub(crate) fn event(
        self,
        malformed: &dyn Fn(String) -> WebhookError,
    ) -> Result<ForgeEvent, WebhookError> {
        if self.action != "created" {
            return Ok(ForgeEvent::Ignored {
                kind: format!("issue_comment.{}", short_text(&self.action, 40)),
            });
        }
        let login = self.comment.user.as_ref().map(U::name).unwrap_or_default();
        let author = event::checked_login("commenter", &login).map_err(malformed)?;
        Ok(ForgeEvent::Comment {
            pr_number: self.issue.number,
            comment_id: self.comment.id,
            author,
            body: self.comment.body.unwrap_or_default(),
            is_pull_request: self.is_pull || self.issue.pull_request.is_some_and(|v| !v.is_null()),
            created_at: self.comment.created_at.as_deref().and_then(event::unix_ms),
        })
    }
}

/// What GitHub and Gitea do differently on the same paths.
pub(crate) trait Flavor: Default + Send + Sync + 'static {
    /// A user, as `GET /user` and every object carrying one give it.
    type User: WireUser + DeserializeOwned + Send;
    /// The comment list is paged (Gitea's answers every comment at once and takes no page).
    const COMMENTS_PAGED: bool;
    /// It has GitHub's Deployments API.
    const DEPLOYMENTS: bool;
    /// Whether a pull request can be merged says nothing of its checks (Gitea's `mergeable`
    /// is about conflicts only): the head commit's combined status is read as well. GitHub's
    /// `mergeable_state` says it with the branch's protection.
    const CHECKS_APART: bool;

    /// A review, as `GET …/pulls/{number}/reviews` lists them.
    type Review: DeserializeOwned;
    /// A collaborator's permission, as `GET …/collaborators/{user}/permission` answers.
    type Permission: DeserializeOwned;

    /// The review's verdict, unless it is none (a draft).
    fn verdict(review: Self::Review) -> Option<Verdict>;

    /// Whether the permission lets its holder push.
    fn writes(permission: &Self::Permission) -> bool;
}

/// The API of a forge shaped like GitHub's.
#[derive(Default)]
pub(crate) struct GitHubLike<F>(F);

impl<F: Flavor> Wire for GitHubLike<F> {
    type User = F::User;
    type Comment = Comment<F::User>;
    type PullRequest = PullRequest<F::User>;

    const EDIT_COMMENT: Method = Method::Patch;
    const COMMENTS_PAGED: bool = F::COMMENTS_PAGED;
    const DEPLOYMENTS: bool = F::DEPLOYMENTS;

    fn login(user: F::User) -> String {
        user.name()
    }

    fn posted(c: Self::Comment) -> Option<PostedComment> {
        Some(c.posted())
    }

    fn info(
        &self,
        _: &Api,
        _: &Repository,
        pr: &Self::PullRequest,
        path: &str,
    ) -> Result<PullRequestInfo, ForgeError> {
        pr.info()
            .map_err(|e| ForgeError::unexpected_answer(path.to_owned(), e))
    }

    fn state(pr: Self::PullRequest) -> (PrState, Option<bool>, Option<String>) {
        pr.state()
    }

    fn checks_green(api: &Api, repo: &Repository, sha: &str) -> Result<Option<bool>, ForgeError> {
        if !F::CHECKS_APART {
            return Ok(Some(true));
        }
        #[derive(Deserialize)]
        struct Status {
            #[serde(default)]
            status: Option<String>,
            #[serde(default)]
            context: Option<String>,
        }
        #[derive(Deserialize)]
        struct Combined {
            #[serde(default)]
            statuses: Option<Vec<Status>>,
        }
        // The latest status of each context, page by page; Slipway's own (`slipway/plan`,
        // failing for a preview's plan or pending while it plans) judges nothing here.
        const LIMIT: usize = 50;
        let mut states: Vec<String> = Vec::new();
        let mut first_context: Option<String> = None;
        // Until a page comes back empty: a server whose most items a page (`[api]
        // MAX_RESPONSE_ITEMS`) is below the limit asked answers shorter pages before the last.
        for page in 1..=10 {
            let combined: Combined = api.get(&format!(
                "{}/commits/{sha}/status?page={page}&limit={LIMIT}",
                repo.path
            ))?;
            let statuses = combined.statuses.unwrap_or_default();
            if statuses.is_empty() {
                break;
            }
            // A server that does not page answers the first page again: it was all.
            let first = statuses.first().and_then(|s| s.context.clone());
            if page > 1 && first == first_context {
                break;
            }
            if page == 1 {
                first_context = first;
            }
            states.extend(
                statuses
                    .into_iter()
                    .filter(|s| !s.context.as_deref().unwrap_or("").starts_with("slipway/"))
                    .map(|s| s.status.unwrap_or_default()),
            );
            if page == 10 {
                // More contexts than are read: not decided, rather than green unread.
                return Ok(None);
            }
        }
        // Green: `success`, and `warning` and `skipped` (a job an `if:` left out), which
        // Gitea's merge lets through.
        let green = |s: &String| matches!(s.as_str(), "success" | "warning" | "skipped");
        Ok(if states.iter().all(green) {
            Some(true)
        } else if states.iter().all(|s| green(s) || s == "pending") {
            None
        } else {
            // `failure`, `error`, or a word this release does not know.
            Some(false)
        })
    }

    fn reviews(api: &Api, repo: &Repository, number: u64) -> Result<Vec<Verdict>, ForgeError> {
        // The newest reviews: a pull request padded with old ones cannot push a reviewer's
        // latest verdict past the pages read.
        let reviews: Vec<F::Review> =
            api.get_newest(&format!("{}/pulls/{number}/reviews", repo.path))?;
        Ok(reviews.into_iter().filter_map(F::verdict).collect())
    }

    fn has_write_access(api: &Api, repo: &Repository, user: &str) -> Result<bool, ForgeError> {
        let permission: Option<F::Permission> = api.get_optional(&format!(
            "{}/collaborators/{}/permission",
            repo.path,
            path_segment(user)
        ))?;
        Ok(permission.as_ref().is_some_and(F::writes))
    }
}

#[cfg(test)]
mod tests {
    use super::PullRequest;
    use crate::gitea::User;

    /// A Gitea pull request into `acme/shop` (id 7) whose head is `head`, as Gitea's
    /// `convert.ToAPIPullRequest` writes one.
    fn gitea_pr(head: serde_json::Value) -> PullRequest<User> {
        let repo = serde_json::json!({"id": 7, "full_name": "acme/shop"});
        serde_json::from_value(serde_json::json!({
            "number": 12,
            "title": "Change",
            "user": {"login": "mallory", "username": "mallory"},
            "html_url": "https://gitea.example/acme/shop/pulls/12",
            "state": "open",
            "base": {"label": "main", "ref": "main", "sha": "b".repeat(40), "repo_id": 7, "repo": repo},
            "head": head,
        }))
        .expect("a pull request")
    }

    /// An AGit pull request (`git push origin HEAD:refs/for/main/topic`, which needs only read
    /// access) is someone else's code, as a fork's is, though its head is in the repository.
    #[test]
    fn a_gitea_agit_pull_request_counts_as_a_fork() {
        let repo = serde_json::json!({"id": 7, "full_name": "acme/shop"});
        let sha = "a".repeat(40);
        // One pull request (the API's `pulls/12`, webhooks): the head is the forge's ref.
        let single = gitea_pr(serde_json::json!({
            "label": "", "ref": "refs/pull/12/head", "sha": sha, "repo_id": 7, "repo": repo,
        }));
        let info = single.info().expect("valid");
        assert!(
            info.is_fork,
            "an AGit head is not a branch anyone with write access pushed"
        );
        assert_eq!(info.head_repo_full_name.as_deref(), Some("acme/shop"));
        // A list, where Gitea names the topic when a branch of that name exists.
        let listed = gitea_pr(serde_json::json!({
            "label": "", "ref": "release", "sha": sha, "repo_id": 7, "repo": repo,
        }));
        assert!(
            listed.info().expect("valid").is_fork,
            "an existing branch's name"
        );
        // A branch of the repository (Gitea's own flow) is not a fork.
        let branch = gitea_pr(serde_json::json!({
            "label": "feature-12", "ref": "feature-12", "sha": sha, "repo_id": 7, "repo": repo,
        }));
        assert!(!branch.info().expect("valid").is_fork);
    }
}
