//! GitLab: webhook payloads (`X-Gitlab-Event`) and the REST API v4. GitLab says "merge
//! request" and numbers them by `iid` within the project; Slipway calls them pull requests and
//! uses the `iid` as their number.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde::Deserialize;

use crate::adapter::{PostedComment, Repository, Wire, connect_wire};
use crate::api::PrState;
use crate::approvals::Verdict;
use crate::error::ForgeError;
use crate::event::{
    self, ForgeEvent, ForgeKind, PrAction, PullRequestInfo, PushPayload, RepositoryRef, ReviewState,
};
use crate::http::{Api, Method};
use crate::names::{self, path_segment, short_text};
use crate::profile::{ForgeProfile, SignatureScheme, StatusNames};
use crate::webhook::{WebhookError, decode};

/// GitLab's facts.
pub(crate) static PROFILE: ForgeProfile = ForgeProfile {
    kind: ForgeKind::GitLab,
    name: "gitlab",
    aliases: &[],
    event_headers: &["X-Gitlab-Event"],
    // Idempotency-Key (GitLab 17.4+) stays the same across retries of one event, which is what
    // deduplication needs; the event UUID is the older, per-event header.
    delivery_headers: &["Idempotency-Key", "X-Gitlab-Event-UUID"],
    signature_headers: &["X-Gitlab-Token"],
    signature: SignatureScheme::Token,
    auth_header: "PRIVATE-TOKEN",
    auth_prefix: "",
    api_headers: &[("Accept", "application/json")],
    default_api_url: Some("https://gitlab.com/api/v4"),
    token_env: "GITLAB_TOKEN",
    numeric_repository_ids: true,
    page_size_param: "per_page",
    page_size: 100,
    pr_ref_namespace: "refs/merge-requests",
    status_context_field: "name",
    // GitLab has no "error": a status that could not be computed is a failed one.
    status_names: StatusNames {
        pending: "pending",
        success: "success",
        failure: "failed",
        error: "failed",
    },
    // A merge request hook names whoever triggered the event, not the author.
    webhook_names_pr_author: false,
    parse_event,
    payload_repository,
    connect: connect_wire::<GitLab>,
};

#[derive(Deserialize)]
pub(crate) struct UserName {
    username: String,
}

#[derive(Deserialize)]
struct ProjectPath {
    path_with_namespace: String,
}

#[derive(Deserialize)]
struct Commit {
    id: String,
}

#[derive(Deserialize)]
struct MergeRequestAttributes {
    iid: u64,
    title: String,
    source_branch: String,
    target_branch: String,
    source_project_id: Option<u64>,
    target_project_id: u64,
    last_commit: Commit,
    url: String,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    oldrev: Option<String>,
    #[serde(default)]
    source: Option<ProjectPath>,
    target: ProjectPath,
    /// The labels after the event (GitLab 13.x and later); the payload's top-level `labels`
    /// say the same.
    #[serde(default)]
    labels: Option<Vec<LabelTitle>>,
}

#[derive(Deserialize)]
struct LabelTitle {
    title: String,
}

#[derive(Deserialize)]
struct MergeRequestPayload {
    user: UserName,
    object_attributes: MergeRequestAttributes,
    #[serde(default)]
    labels: Option<Vec<LabelTitle>>,
}

#[derive(Deserialize)]
struct NoteAttributes {
    id: u64,
    note: String,
    noteable_type: String,
    #[serde(default)]
    action: Option<String>,
    /// `2015-05-17 18:21:36 UTC` in GitLab's examples; RFC 3339 elsewhere.
    #[serde(default)]
    created_at: Option<String>,
}

#[derive(Deserialize)]
struct Iid {
    iid: u64,
}

#[derive(Deserialize)]
struct NotePayload {
    user: UserName,
    object_attributes: NoteAttributes,
    #[serde(default)]
    merge_request: Option<Iid>,
    #[serde(default)]
    issue: Option<Iid>,
}

/// Parses a GitLab payload for the `X-Gitlab-Event` value `event`.
pub(crate) fn parse_event(event: &str, body: &[u8]) -> Result<ForgeEvent, WebhookError> {
    let malformed = |e: String| WebhookError::Malformed(format!("gitlab {event}: {e}"));
    match event {
        "Push Hook" | "Tag Push Hook" => decode::<PushPayload>("gitlab push", body)?
            .event()
            .map_err(malformed),
        "Merge Request Hook" => {
            let p: MergeRequestPayload = decode("gitlab merge request", body)?;
            let a = &p.object_attributes;
            let action = a.action.as_deref().unwrap_or("");
            let review = |state| {
                let author = event::checked_login("reviewer", &p.user.username)?;
                Ok(ForgeEvent::Review {
                    pr_number: a.iid,
                    state,
                    author,
                })
            };
            let action = match action {
                "open" => PrAction::Opened,
                "reopen" => PrAction::Reopened,
                "close" => PrAction::Closed,
                "merge" => PrAction::Merged,
                // `oldrev` is there only when the source branch moved.
                "update" if a.oldrev.is_some() => PrAction::Synchronized,
                "approved" | "approval" => return review(ReviewState::Approved).map_err(malformed),
                "unapproved" | "unapproval" => {
                    return review(ReviewState::Dismissed).map_err(malformed);
                }
                other => PrAction::Other(short_text(other, 40)),
            };
            let is_fork = a.source_project_id != Some(a.target_project_id);
            let pr = PullRequestInfo {
                number: a.iid,
                title: a.title.clone(),
                author: p.user.username.clone(),
                head_sha: a.last_commit.id.clone(),
                head_ref: a.source_branch.clone(),
                base_ref: a.target_branch.clone(),
                head_repo_full_name: a.source.as_ref().map(|s| s.path_with_namespace.clone()),
                base_repo_full_name: a.target.path_with_namespace.clone(),
                is_fork,
                url: a.url.clone(),
                labels: event::label_set(
                    a.labels
                        .as_ref()
                        .or(p.labels.as_ref())
                        .into_iter()
                        .flatten()
                        .map(|l| l.title.clone()),
                ),
            };
            pr.check().map_err(malformed)?;
            let sender = event::valid_login(Some(&p.user.username));
            Ok(ForgeEvent::PullRequest { action, pr, sender })
        }
        "Note Hook" | "Confidential Note Hook" => {
            let p: NotePayload = decode("gitlab note", body)?;
            let a = &p.object_attributes;
            // GitLab before 16.11 sent notes only when created, without an action.
            let action = a.action.as_deref().unwrap_or("create");
            if action != "create" {
                return Ok(ForgeEvent::Ignored {
                    kind: format!("note.{}", short_text(action, 40)),
                });
            }
            let (number, is_pull_request) =
                match (a.noteable_type.as_str(), &p.merge_request, &p.issue) {
                    ("MergeRequest", Some(mr), _) => (mr.iid, true),
                    ("Issue", _, Some(issue)) => (issue.iid, false),
                    (other, _, _) => {
                        return Ok(ForgeEvent::Ignored {
                            kind: format!("note.{}", short_text(&other.to_ascii_lowercase(), 40)),
                        });
                    }
                };
            let author = event::checked_login("commenter", &p.user.username).map_err(malformed)?;
            Ok(ForgeEvent::Comment {
                pr_number: number,
                comment_id: a.id,
                author,
                body: a.note.clone(),
                is_pull_request,
                created_at: a.created_at.as_deref().and_then(event::unix_ms),
            })
        }
        other => Ok(ForgeEvent::Ignored {
            kind: short_text(other, 60),
        }),
    }
}

/// GitLab's REST API v4.
#[derive(Default)]
pub(crate) struct GitLab {
    /// The project's path, asked once when the configured repository is its numeric id.
    resolved_path: OnceLock<String>,
    /// Source project paths of forks, by project id.
    fork_paths: Mutex<HashMap<u64, Option<String>>>,
}

#[derive(Deserialize)]
pub(crate) struct MergeRequest {
    iid: u64,
    title: String,
    author: Option<UserName>,
    sha: Option<String>,
    source_branch: String,
    target_branch: String,
    source_project_id: Option<u64>,
    target_project_id: u64,
    web_url: String,
    state: String,
    #[serde(default)]
    merge_status: Option<String>,
    #[serde(default)]
    detailed_merge_status: Option<String>,
    #[serde(default)]
    has_conflicts: Option<bool>,
    #[serde(default)]
    merge_commit_sha: Option<String>,
    #[serde(default)]
    squash_commit_sha: Option<String>,
    /// Label names (without `with_labels_details`).
    #[serde(default)]
    labels: Option<Vec<String>>,
}

#[derive(Deserialize)]
pub(crate) struct Note {
    id: u64,
    body: String,
    author: Option<UserName>,
    #[serde(default)]
    system: bool,
}

impl GitLab {
    /// The project's `group/project` path: the configured one, or, when the configuration
    /// names the project by its numeric id, the path the forge gives it (asked once).
    fn repository_path(&self, api: &Api, repo: &Repository) -> Result<String, ForgeError> {
        if !names::is_numeric_id(&repo.name) {
            return Ok(repo.name.clone());
        }
        if let Some(path) = self.resolved_path.get() {
            return Ok(path.clone());
        }
        let project: ProjectPath = api.get(&repo.path)?;
        Ok(self
            .resolved_path
            .get_or_init(|| project.path_with_namespace)
            .clone())
    }

    /// The path of the merge request's source project: ours, or a fork's (asked once per
    /// fork; `None` when it was deleted or is not visible to the token).
    fn source_path(
        &self,
        api: &Api,
        repo: &Repository,
        mr: &MergeRequest,
    ) -> Result<Option<String>, ForgeError> {
        let Some(id) = mr.source_project_id else {
            return Ok(None);
        };
        if id == mr.target_project_id {
            return self.repository_path(api, repo).map(Some);
        }
        if let Some(known) = self
            .fork_paths
            .lock()
            .expect("no panics while held")
            .get(&id)
        {
            return Ok(known.clone());
        }
        let project: Option<ProjectPath> = api.get_optional(&format!("/projects/{id}"))?;
        let path = project.map(|p| p.path_with_namespace);
        self.fork_paths
            .lock()
            .expect("no panics while held")
            .insert(id, path.clone());
        Ok(path)
    }
}

impl Wire for GitLab {
    type User = UserName;
    type Comment = Note;
    type PullRequest = MergeRequest;

    const EDIT_COMMENT: Method = Method::Put;
    const COMMENTS_PAGED: bool = true;

    fn repo_path(name: &str) -> String {
        format!("/projects/{}", path_segment(name))
    }

    fn login(user: UserName) -> String {
        user.username
    }

    fn comments_path(repo: &Repository, pr: u64) -> String {
        format!("{}/merge_requests/{pr}/notes", repo.path)
    }

    fn comments_list_path(repo: &Repository, pr: u64) -> String {
        format!(
            "{}?sort=asc&order_by=created_at",
            Self::comments_path(repo, pr)
        )
    }

    fn comment_path(repo: &Repository, pr: u64, id: u64) -> String {
        format!("{}/merge_requests/{pr}/notes/{id}", repo.path)
    }

    /// System notes ("added 1 commit") are the forge's, whatever account they name.
    fn posted(n: Note) -> Option<PostedComment> {
        (!n.system).then(|| PostedComment {
            id: n.id,
            author: n.author.map(|a| a.username),
            body: n.body,
        })
    }

    fn pull_request_path(repo: &Repository, number: u64) -> String {
        format!("{}/merge_requests/{number}", repo.path)
    }

    fn open_pull_requests_path(repo: &Repository) -> String {
        format!("{}/merge_requests?state=opened", repo.path)
    }

    /// The path in an error is always the merge request's own.
    fn info(
        &self,
        api: &Api,
        repo: &Repository,
        mr: &MergeRequest,
        _: &str,
    ) -> Result<PullRequestInfo, ForgeError> {
        let path = Self::pull_request_path(repo, mr.iid);
        let info = PullRequestInfo {
            number: mr.iid,
            title: mr.title.clone(),
            author: mr
                .author
                .as_ref()
                .map_or_else(|| "ghost".to_owned(), |u| u.username.clone()),
            head_sha: mr.sha.clone().unwrap_or_default(),
            head_ref: mr.source_branch.clone(),
            base_ref: mr.target_branch.clone(),
            head_repo_full_name: self.source_path(api, repo, mr)?,
            base_repo_full_name: self.repository_path(api, repo)?,
            is_fork: mr.source_project_id != Some(mr.target_project_id),
            url: mr.web_url.clone(),
            labels: event::label_set(mr.labels.iter().flatten().cloned()),
        };
        info.check()
            .map_err(|reason| ForgeError::unexpected_answer(path, reason))?;
        Ok(info)
    }

    fn state(mr: MergeRequest) -> (PrState, Option<bool>, Option<String>) {
        let state = PrState::of(mr.state == "merged", mr.state != "closed");
        // `detailed_merge_status` (GitLab 15.6 on) says what blocks the merge, a failed
        // pipeline the project requires included; `merge_status` only whether it conflicts,
        // so it is read only where the other is missing.
        let mergeable = if mr.has_conflicts == Some(true) {
            Some(false)
        } else {
            match (
                mr.detailed_merge_status.as_deref(),
                mr.merge_status.as_deref(),
            ) {
                (Some("mergeable"), _) => Some(true),
                (
                    Some(
                        "checking" | "unchecked" | "preparing" | "approvals_syncing"
                        | "ci_still_running",
                    ),
                    _,
                ) => None,
                (Some(_), _) => Some(false),
                (None, Some("can_be_merged")) => Some(true),
                (None, Some("cannot_be_merged")) => Some(false),
                (None, _) => None,
            }
        };
        // A squash merge's commit on the base branch is the squash commit.
        (
            state,
            mergeable,
            mr.squash_commit_sha.or(mr.merge_commit_sha),
        )
    }

    fn reviews(api: &Api, repo: &Repository, number: u64) -> Result<Vec<Verdict>, ForgeError> {
        #[derive(Deserialize)]
        struct ApprovedBy {
            user: UserName,
        }
        #[derive(Deserialize)]
        struct Approvals {
            #[serde(default)]
            approved_by: Vec<ApprovedBy>,
        }
        // GitLab lists who approves now, not a history of verdicts; its approvals name no
        // commit.
        let a: Approvals = api.get(&format!("{}/merge_requests/{number}/approvals", repo.path))?;
        if a.approved_by.is_empty() {
            return Ok(Vec::new());
        }
        // So an approval counts only when it was given after the merge request's last push,
        // by GitLab's own clock: the newest of its diff versions (one per push) against the
        // approver's latest "approved" system note. Slipway also marks approvers stale as it
        // sees the head move, but a push (or a push back to a head it saw long ago) whose
        // webhook comes late or never is seen here.
        #[derive(Deserialize)]
        struct Version {
            #[serde(default)]
            created_at: Option<String>,
        }
        #[derive(Deserialize)]
        struct TimedNote {
            body: String,
            author: Option<UserName>,
            #[serde(default)]
            system: bool,
            #[serde(default)]
            created_at: Option<String>,
        }
        let versions: Vec<Version> =
            api.get(&format!("{}/merge_requests/{number}/versions", repo.path))?;
        let Some(pushed) = versions
            .iter()
            .filter_map(|v| event::unix_ms(v.created_at.as_deref()?))
            .max()
        else {
            // No push GitLab can date: no approval can be judged newer than it.
            return Ok(Vec::new());
        };
        // Newest first: a merge request padded with notes past the pages read loses its
        // oldest, whose approvals are older than any push worth judging anyway.
        let notes: Vec<TimedNote> = api.get_all(&format!(
            "{}/merge_requests/{number}/notes?sort=desc&order_by=created_at",
            repo.path
        ))?;
        let approved_at = |user: &str| {
            notes
                .iter()
                .filter(|n| {
                    n.system
                        && n.body == "approved this merge request"
                        && n.author
                            .as_ref()
                            .is_some_and(|a| a.username.eq_ignore_ascii_case(user))
                })
                .filter_map(|n| event::unix_ms(n.created_at.as_deref()?))
                .max()
        };
        Ok(a.approved_by
            .into_iter()
            .filter(|a| approved_at(&a.user.username).is_some_and(|at| at > pushed))
            .map(|a| Verdict {
                author: a.user.username,
                state: ReviewState::Approved,
                commit_sha: None,
            })
            .collect())
    }

    fn has_write_access(api: &Api, repo: &Repository, user: &str) -> Result<bool, ForgeError> {
        #[derive(Deserialize)]
        struct UserId {
            id: u64,
            username: String,
        }
        #[derive(Deserialize)]
        struct Member {
            access_level: u32,
        }
        let users: Vec<UserId> = api.get(&format!("/users?username={}", path_segment(user)))?;
        let Some(found) = users
            .into_iter()
            .find(|u| u.username.eq_ignore_ascii_case(user))
        else {
            return Ok(false);
        };
        let member: Option<Member> =
            api.get_optional(&format!("{}/members/all/{}", repo.path, found.id))?;
        // 30 is Developer: the lowest role that may push.
        Ok(member.is_some_and(|m| m.access_level >= 30))
    }
}

/// The repository a GitLab payload is about: its `project` (`path_with_namespace`, `id`;
/// else `project_id`, else a merge request's `target` and `target_project_id`).
fn payload_repository(v: &serde_json::Value) -> Option<RepositoryRef> {
    use serde_json::Value;
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let number = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64);
    let attributes = v.get("object_attributes");
    let project = v.get("project").filter(|p| p.is_object());
    let target = attributes
        .and_then(|a| a.get("target"))
        .filter(|t| t.is_object());
    Some(RepositoryRef {
        full_name: project
            .and_then(|p| text(p, "path_with_namespace"))
            .or_else(|| target.and_then(|t| text(t, "path_with_namespace"))),
        id: project
            .and_then(|p| number(p, "id"))
            .or_else(|| number(v, "project_id"))
            .or_else(|| attributes.and_then(|a| number(a, "target_project_id"))),
    })
}
