//! GitLab: webhook payloads (`X-Gitlab-Event`) and the REST API v4. GitLab says "merge
//! request" and numbers them by `iid` within the project; Slipway calls them pull requests and
//! uses the `iid` as their number.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde::Deserialize;
use serde_json::json;

use crate::api::{
    self, Api, Approval, CommentId, CommitStatus, Forge, ForgeConfig, ForgeError, Method, PrState,
    PullRequestDetails, StatusState,
};
use crate::event::{self, ForgeEvent, ForgeKind, PrAction, PullRequestInfo, ReviewState};
use crate::names::{path_segment, short_text};
use crate::webhook::{WebhookError, decode};

#[derive(Deserialize)]
struct UserName {
    username: String,
}

#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
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
}

#[derive(Deserialize)]
struct MergeRequestPayload {
    user: UserName,
    object_attributes: MergeRequestAttributes,
}

#[derive(Deserialize)]
struct NoteAttributes {
    id: u64,
    note: String,
    noteable_type: String,
    #[serde(default)]
    action: Option<String>,
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
        "Push Hook" | "Tag Push Hook" => {
            let p: PushPayload = decode("gitlab push", body)?;
            event::push_event(&p.git_ref, &p.before, &p.after).map_err(malformed)
        }
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
            };
            pr.check().map_err(malformed)?;
            Ok(ForgeEvent::PullRequest { action, pr })
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
            })
        }
        other => Ok(ForgeEvent::Ignored {
            kind: short_text(other, 60),
        }),
    }
}

/// The GitLab adapter.
pub(crate) struct GitLab {
    api: Api,
    /// `/projects/{url-encoded path}`.
    project_path: String,
    /// The configured repository: a path, or the project's numeric id.
    repository: String,
    /// The project's path, asked once when `repository` is its numeric id.
    resolved_path: OnceLock<String>,
    login: OnceLock<String>,
    /// Source project paths of forks, by project id.
    fork_paths: Mutex<HashMap<u64, Option<String>>>,
}

#[derive(Deserialize)]
struct MergeRequest {
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
}

#[derive(Deserialize)]
struct Note {
    id: u64,
    body: String,
    author: Option<UserName>,
    #[serde(default)]
    system: bool,
}

impl GitLab {
    pub(crate) fn new(api: Api, config: &ForgeConfig) -> GitLab {
        let login = OnceLock::new();
        if let Some(bot) = &config.bot_login {
            let _ = login.set(bot.clone());
        }
        GitLab {
            api,
            project_path: format!("/projects/{}", path_segment(&config.repository)),
            repository: config.repository.clone(),
            resolved_path: OnceLock::new(),
            login,
            fork_paths: Mutex::new(HashMap::new()),
        }
    }

    fn own_login(&self) -> Result<&str, ForgeError> {
        if let Some(login) = self.login.get() {
            return Ok(login);
        }
        let me: UserName = self.api.get("/user")?;
        Ok(self.login.get_or_init(|| me.username))
    }

    /// The project's `group/project` path: the configured one, or, when the configuration
    /// names the project by its numeric id, the path the forge gives it (asked once).
    fn repository_path(&self) -> Result<String, ForgeError> {
        if !api::is_numeric_id(&self.repository) {
            return Ok(self.repository.clone());
        }
        if let Some(path) = self.resolved_path.get() {
            return Ok(path.clone());
        }
        let project: ProjectPath = self.api.get(&self.project_path)?;
        Ok(self
            .resolved_path
            .get_or_init(|| project.path_with_namespace)
            .clone())
    }

    /// The path of the merge request's source project: ours, or a fork's (asked once per
    /// fork; `None` when it was deleted or is not visible to the token).
    fn source_path(&self, mr: &MergeRequest) -> Result<Option<String>, ForgeError> {
        let Some(id) = mr.source_project_id else {
            return Ok(None);
        };
        if id == mr.target_project_id {
            return self.repository_path().map(Some);
        }
        if let Some(known) = self
            .fork_paths
            .lock()
            .expect("no panics while held")
            .get(&id)
        {
            return Ok(known.clone());
        }
        let project: Option<ProjectPath> = self.api.get_optional(&format!("/projects/{id}"))?;
        let path = project.map(|p| p.path_with_namespace);
        self.fork_paths
            .lock()
            .expect("no panics while held")
            .insert(id, path.clone());
        Ok(path)
    }

    fn info(&self, mr: &MergeRequest) -> Result<PullRequestInfo, ForgeError> {
        let path = format!("{}/merge_requests/{}", self.project_path, mr.iid);
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
            head_repo_full_name: self.source_path(mr)?,
            base_repo_full_name: self.repository_path()?,
            is_fork: mr.source_project_id != Some(mr.target_project_id),
            url: mr.web_url.clone(),
        };
        info.check().map_err(|reason| ForgeError::Decode {
            method: "GET",
            path,
            reason,
        })?;
        Ok(info)
    }
}

impl Forge for GitLab {
    fn kind(&self) -> ForgeKind {
        ForgeKind::GitLab
    }

    fn upsert_comment(&self, pr: u64, marker: &str, body: &str) -> Result<CommentId, ForgeError> {
        api::check_marker(marker)?;
        let body = self.api.scrub(&api::body_with_marker(marker, body));
        let me = self.own_login()?.to_owned();
        let notes: Vec<Note> = self.api.get_all(
            &format!(
                "{}/merge_requests/{pr}/notes?sort=asc&order_by=created_at",
                self.project_path
            ),
            "per_page",
            100,
        )?;
        let ours = notes.into_iter().find(|n| {
            !n.system
                && n.author
                    .as_ref()
                    .is_some_and(|a| a.username.eq_ignore_ascii_case(&me))
                && n.body.contains(marker)
        });
        match ours {
            Some(n) if n.body == body => Ok(CommentId(n.id)),
            Some(n) => {
                let updated: Note = self.api.send(
                    Method::Put,
                    &format!("{}/merge_requests/{pr}/notes/{}", self.project_path, n.id),
                    &json!({ "body": body }),
                )?;
                Ok(CommentId(updated.id))
            }
            None => self.post_comment(pr, &body),
        }
    }

    fn post_comment(&self, pr: u64, body: &str) -> Result<CommentId, ForgeError> {
        let created: Note = self.api.send(
            Method::Post,
            &format!("{}/merge_requests/{pr}/notes", self.project_path),
            &json!({ "body": body }),
        )?;
        Ok(CommentId(created.id))
    }

    fn set_status(&self, status: &CommitStatus) -> Result<(), ForgeError> {
        api::check_sha(&status.sha)?;
        api::check_context(&status.context)?;
        let state = match status.state {
            StatusState::Pending => "pending",
            StatusState::Success => "success",
            // GitLab has no "error": a status that could not be computed is a failed one.
            StatusState::Failure | StatusState::Error => "failed",
        };
        let mut body = json!({
            "state": state,
            "name": status.context,
            "description": api::status_description(&self.api.scrub(&status.description)),
        });
        if let Some(url) = &status.target_url {
            body["target_url"] = json!(url);
        }
        let _: serde_json::Value = self.api.send(
            Method::Post,
            &format!("{}/statuses/{}", self.project_path, status.sha),
            &body,
        )?;
        Ok(())
    }

    fn pull_request(&self, number: u64) -> Result<PullRequestDetails, ForgeError> {
        let mr: MergeRequest = self
            .api
            .get(&format!("{}/merge_requests/{number}", self.project_path))?;
        let info = self.info(&mr)?;
        let state = match mr.state.as_str() {
            "merged" => PrState::Merged,
            "closed" => PrState::Closed,
            _ => PrState::Open,
        };
        let mergeable = if mr.has_conflicts == Some(true) {
            Some(false)
        } else {
            match (
                mr.merge_status.as_deref(),
                mr.detailed_merge_status.as_deref(),
            ) {
                (Some("can_be_merged"), _) | (_, Some("mergeable")) => Some(true),
                (Some("cannot_be_merged"), _) | (_, Some("conflict" | "broken_status")) => {
                    Some(false)
                }
                _ => None,
            }
        };
        Ok(PullRequestDetails {
            info,
            mergeable,
            merge_commit_sha: (state == PrState::Merged)
                .then(|| mr.squash_commit_sha.clone().or(mr.merge_commit_sha.clone()))
                .flatten(),
            state,
        })
    }

    fn approvals(&self, number: u64) -> Result<Vec<Approval>, ForgeError> {
        #[derive(Deserialize)]
        struct ApprovedBy {
            user: UserName,
        }
        #[derive(Deserialize)]
        struct Approvals {
            #[serde(default)]
            approved_by: Vec<ApprovedBy>,
        }
        let a: Approvals = self.api.get(&format!(
            "{}/merge_requests/{number}/approvals",
            self.project_path
        ))?;
        Ok(a.approved_by
            .into_iter()
            .map(|a| Approval {
                author: a.user.username,
                commit_sha: None,
            })
            .collect())
    }

    fn has_write_access(&self, user: &str) -> Result<bool, ForgeError> {
        api::check_login(user)?;
        #[derive(Deserialize)]
        struct UserId {
            id: u64,
            username: String,
        }
        #[derive(Deserialize)]
        struct Member {
            access_level: u32,
        }
        let users: Vec<UserId> = self
            .api
            .get(&format!("/users?username={}", path_segment(user)))?;
        let Some(found) = users
            .into_iter()
            .find(|u| u.username.eq_ignore_ascii_case(user))
        else {
            return Ok(false);
        };
        let member: Option<Member> = self
            .api
            .get_optional(&format!("{}/members/all/{}", self.project_path, found.id))?;
        // 30 is Developer: the lowest role that may push.
        Ok(member.is_some_and(|m| m.access_level >= 30))
    }

    fn open_pull_requests(&self) -> Result<Vec<PullRequestInfo>, ForgeError> {
        let mrs: Vec<MergeRequest> = self.api.get_all(
            &format!("{}/merge_requests?state=opened", self.project_path),
            "per_page",
            100,
        )?;
        mrs.iter().map(|mr| self.info(mr)).collect()
    }

    fn pr_head_ref(&self, number: u64) -> String {
        format!("refs/merge-requests/{number}/head")
    }
}
