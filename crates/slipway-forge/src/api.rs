//! The [`Forge`] trait and the values it takes and gives. What the three adapters share is in
//! `adapter.rs` (comment upsert, statuses, approvals), how they reach the forge in `http.rs`
//! (requests, errors: `error.rs`) and `paging.rs` (lists), how they are configured in
//! `config.rs`.

use std::fmt;

use crate::approvals::Approval;
#[cfg(doc)]
use crate::config::ForgeConfig;
use crate::error::ForgeError;
use crate::event::{ForgeKind, PullRequestInfo};

/// A comment's id on its forge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommentId(pub u64);

impl fmt::Display for CommentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A commit status's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusState {
    /// Work is under way.
    Pending,
    /// Done, and good.
    Success,
    /// Done, and the change is not acceptable (the plan failed, a rule refused it).
    Failure,
    /// Slipway itself could not finish (GitLab has no such state: it shows `failed`).
    Error,
}

impl StatusState {
    /// The name GitHub and Gitea give it (`pending`, `success`, `failure`, `error`); each
    /// forge's spelling is its profile's [`crate::StatusNames`].
    pub const fn as_str(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Success => "success",
            StatusState::Failure => "failure",
            StatusState::Error => "error",
        }
    }
}

/// A commit status to set on a pull request's head commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatus {
    /// The commit (40 or 64 hex digits).
    pub sha: String,
    /// The check's name, e.g. `slipway/plan`; one status per context is shown.
    pub context: String,
    /// Its state.
    pub state: StatusState,
    /// One line for the forge's UI (cut to 140 characters, GitHub's limit).
    pub description: String,
    /// A link to the details, if any.
    pub target_url: Option<String>,
}

/// A preview environment's deployment state on the forge (GitHub's deployment statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentState {
    /// It is being deployed.
    InProgress,
    /// It runs the commit, at its `environment_url`.
    Success,
    /// Deploying the commit failed.
    Failure,
    /// It is gone (its pull request closed, its time to live passed).
    Inactive,
}

impl DeploymentState {
    /// GitHub's word for it.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeploymentState::InProgress => "in_progress",
            DeploymentState::Success => "success",
            DeploymentState::Failure => "failure",
            DeploymentState::Inactive => "inactive",
        }
    }
}

/// A preview environment's deployment of a pull request's commit, as the forge shows it on
/// the pull request (GitHub: "This branch was successfully deployed", with a link to the
/// preview).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewDeployment {
    /// The commit (40 or 64 hex digits).
    pub sha: String,
    /// The preview environment's name, e.g. `pr-42`.
    pub environment: String,
    /// Its state.
    pub state: DeploymentState,
    /// Its preview URL, when it has one.
    pub environment_url: Option<String>,
    /// One line for the forge's UI (cut to 140 characters).
    pub description: String,
}

/// A pull request as the forge's API describes it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestDetails {
    /// What every forge says about a pull request.
    pub info: PullRequestInfo,
    /// Whether the forge says it can be merged now: nothing conflicts and (GitHub, GitLab)
    /// what the base branch's protection requires holds, its required checks included (for
    /// Gitea, see [`Forge::checks_green`]); `None` while the forge is still computing it
    /// (GitHub computes it lazily: ask again a few seconds later; GitLab while a required
    /// pipeline runs).
    pub mergeable: Option<bool>,
    /// Open, closed or merged.
    pub state: PrState,
    /// Once merged: the commit the merge made on the base branch (a merge, squash or rebase
    /// commit; GitLab's squash commit when it squashed).
    pub merge_commit_sha: Option<String>,
}

impl PullRequestDetails {
    /// `info` in `state`; the merge commit is kept only when it is merged.
    pub(crate) fn new(
        info: PullRequestInfo,
        state: PrState,
        mergeable: Option<bool>,
        merge_commit_sha: Option<String>,
    ) -> Self {
        PullRequestDetails {
            info,
            mergeable,
            merge_commit_sha: merge_commit_sha.filter(|_| state == PrState::Merged),
            state,
        }
    }
}

/// A pull request's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrState {
    /// Open (GitLab: `opened`, or `locked`).
    Open,
    /// Closed without being merged.
    Closed,
    /// Merged.
    Merged,
}

impl PrState {
    /// Merged if `merged`, else open if `open`, else closed.
    pub(crate) fn of(merged: bool, open: bool) -> PrState {
        if merged {
            PrState::Merged
        } else if open {
            PrState::Open
        } else {
            PrState::Closed
        }
    }
}

/// One forge, one repository: what Slipway needs to gate changes on pull requests.
///
/// Every method is a blocking HTTP call (or a few): call them from a blocking thread
/// (`tokio::task::spawn_blocking`), not from an async task.
///
/// # Guarantees
/// - Every request carries the token in a header (never in the URL), and no error or `Debug`
///   output contains it.
/// - The token goes to the configured API only: redirects are not followed (a `3xx` is
///   [`ForgeError::Redirected`], naming where it pointed), and lists are paged by asking the
///   configured API for `page=N`, never by following the URLs of a `Link` header.
/// - Every text sent (comments, status descriptions) has [`ForgeConfig::private_texts`]
///   replaced by their stand-ins, whichever method sends it.
/// - Every value put into a URL path is percent-encoded as one segment.
/// - Lists are read `per_page=100` (Gitea: `limit=50`) for at most
///   [`ForgeConfig::max_pages`] pages.
pub trait Forge: Send + Sync {
    /// Which forge this is.
    fn kind(&self) -> ForgeKind;

    /// Creates or updates Slipway's comment on pull request `pr` that carries `marker` (an
    /// HTML comment such as `<!-- slipway:plan -->`, invisible in the rendered page), so that
    /// each pull request has one such comment however many times it is pushed to.
    ///
    /// Only comments written by Slipway's own account are considered (a comment that anyone
    /// else wrote with the marker in it is left alone); the oldest one is updated, and it is
    /// not written at all when its body is already `body`. `body` is posted as is when it
    /// contains `marker`, else with `marker` on a first line of its own.
    ///
    /// # Caveats
    /// Read-then-write, not atomic: two concurrent calls for the same pull request may both
    /// create a comment. Call it from one place per pull request (the controller's queue).
    fn upsert_comment(&self, pr: u64, marker: &str, body: &str) -> Result<CommentId, ForgeError>;

    /// Posts a new comment on pull request (or issue) `pr`.
    fn post_comment(&self, pr: u64, body: &str) -> Result<CommentId, ForgeError>;

    /// Sets a commit status (GitHub and Gitea: a commit status; GitLab: a commit status whose
    /// `name` is the context).
    fn set_status(&self, status: &CommitStatus) -> Result<(), ForgeError>;

    /// Reads pull request `number`.
    fn pull_request(&self, number: u64) -> Result<PullRequestDetails, ForgeError>;

    /// Whether the checks of commit `sha`, the head of a pull request the forge says merges
    /// cleanly, are green, where [`PullRequestDetails::mergeable`] does not say (Gitea's is
    /// about conflicts only; GitHub's and GitLab's say it with the branch's protection).
    /// Slipway's own statuses (`slipway/…`) do not count. `None`: some still run.
    fn checks_green(&self, sha: &str) -> Result<Option<bool>, ForgeError>;

    /// Reviewers whose latest verdict (approve, request changes or dismissed; plain comments do
    /// not count) is an approval.
    fn approvals(&self, number: u64) -> Result<Vec<Approval>, ForgeError>;

    /// Whether `user` may push to the repository (GitHub: `admin`, `maintain` or `write`;
    /// GitLab: Developer or above; Gitea: `write`, `admin` or `owner`). A user the forge does
    /// not know is `false`, not an error.
    fn has_write_access(&self, user: &str) -> Result<bool, ForgeError>;

    /// Every open pull request (a reconciliation pass uses it to catch missed webhooks).
    fn open_pull_requests(&self) -> Result<Vec<PullRequestInfo>, ForgeError>;

    /// Shows a preview environment's deployment on the forge. GitHub: a deployment of
    /// `sha` to the environment (made once per commit and environment: transient, not
    /// production, no auto-merge, no required contexts), and a deployment status with the
    /// preview URL as its `environment_url` (a later `success` makes the earlier ones
    /// inactive). GitLab and Gitea do nothing: GitLab's environments belong to its CI
    /// pipelines, and Gitea has no deployments API.
    fn set_deployment(&self, deployment: &PreviewDeployment) -> Result<(), ForgeError> {
        let _ = deployment;
        Ok(())
    }

    /// Whether [`Forge::set_deployment`] shows anything on this forge (GitHub).
    fn has_deployments(&self) -> bool {
        false
    }

    /// The ref under which the forge publishes pull request `number`'s head, for `git fetch`:
    /// `refs/pull/N/head` (GitHub, Gitea) or `refs/merge-requests/N/head` (GitLab).
    fn pr_head_ref(&self, number: u64) -> String;
}
