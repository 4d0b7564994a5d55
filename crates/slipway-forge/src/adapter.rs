//! What the adapters share: [`Adapter`] implements [`Forge`] once (comment upsert, commit
//! statuses, the approval policy, Slipway's own login, the input checks) over a [`Wire`], the
//! little each forge's module says about its API's paths and answers.

use std::sync::OnceLock;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::api::{CommentId, CommitStatus, Forge, PrState, PreviewDeployment, PullRequestDetails};
use crate::approvals::{Approval, Verdict, latest_approvals};
use crate::config::{ConfigError, ForgeConfig};
use crate::error::ForgeError;
use crate::event::{ForgeKind, PullRequestInfo};
use crate::http::{Api, Method};
use crate::names;

/// How a forge's adapter is built: its profile's `connect`.
pub(crate) type Connect = fn(Api, &ForgeConfig) -> Box<dyn Forge>;

/// Builds the adapter for `config.kind`.
pub fn connect(config: ForgeConfig) -> Result<Box<dyn Forge>, ConfigError> {
    let api = Api::new(&config)?;
    Ok((config.kind.profile().connect)(api, &config))
}

/// The adapter over `W`: what a profile's `connect` points at.
pub(crate) fn connect_wire<W: Wire>(api: Api, config: &ForgeConfig) -> Box<dyn Forge> {
    let login = OnceLock::new();
    if let Some(bot) = &config.bot_login {
        let _ = login.set(bot.clone());
    }
    Box::new(Adapter {
        api,
        login,
        repo: Repository {
            name: config.repository.clone(),
            path: W::repo_path(&config.repository),
        },
        wire: W::default(),
    })
}

/// The repository an adapter works on.
pub(crate) struct Repository {
    /// As configured: `owner/name` (GitLab: `group/project`, or the project's numeric id).
    pub(crate) name: String,
    /// Its API path, percent-encoded (`/repos/{owner}/{name}`, GitLab's `/projects/{id}`).
    pub(crate) path: String,
}

/// A comment already on a pull request, as the forge lists it.
pub(crate) struct PostedComment {
    /// Its id.
    pub(crate) id: u64,
    /// Its author's login (`None`: a deleted account).
    pub(crate) author: Option<String>,
    /// Its Markdown.
    pub(crate) body: String,
}

/// One forge's API, as far as it differs from the others by more than a fact of its profile:
/// its paths, and the shapes of its answers. Each method is one or a few requests through
/// `api`, or a conversion of an answer; the arguments are checked already.
pub(crate) trait Wire: Default + Send + Sync + Sized + 'static {
    /// A user, as `GET /user` answers.
    type User: DeserializeOwned;
    /// A comment, as the forge lists them.
    type Comment: DeserializeOwned;
    /// A pull request, as the forge's API gives one and lists them.
    type PullRequest: DeserializeOwned;

    /// The method that edits a comment (`PATCH`, GitLab's `PUT`).
    const EDIT_COMMENT: Method;
    /// The comment list is paged (Gitea's answers every comment at once and takes no page).
    const COMMENTS_PAGED: bool;
    /// It has GitHub's Deployments API (`…/deployments`, `…/deployments/{id}/statuses`).
    const DEPLOYMENTS: bool = false;

    /// The API path of the repository named `name`, percent-encoded (GitHub and Gitea:
    /// `/repos/{owner}/{name}`).
    fn repo_path(name: &str) -> String {
        let parts: Vec<String> = name.split('/').map(names::path_segment).collect();
        format!("/repos/{}", parts.join("/"))
    }

    /// The user's login.
    fn login(user: Self::User) -> String;

    /// Where pull request `pr`'s comments are created (GitHub and Gitea: as an issue's).
    fn comments_path(repo: &Repository, pr: u64) -> String {
        format!("{}/issues/{pr}/comments", repo.path)
    }

    /// Where pull request `pr`'s comments are listed, oldest first.
    fn comments_list_path(repo: &Repository, pr: u64) -> String {
        Self::comments_path(repo, pr)
    }

    /// Where comment `id` of pull request `pr` is edited (GitHub and Gitea: by its id alone).
    fn comment_path(repo: &Repository, pr: u64, id: u64) -> String {
        let _ = pr;
        format!("{}/issues/comments/{id}", repo.path)
    }

    /// The comment, unless it is the forge's own (GitLab's system notes).
    fn posted(comment: Self::Comment) -> Option<PostedComment>;

    /// Where pull request `number` is read.
    fn pull_request_path(repo: &Repository, number: u64) -> String {
        format!("{}/pulls/{number}", repo.path)
    }

    /// Where the open pull requests are listed.
    fn open_pull_requests_path(repo: &Repository) -> String {
        format!("{}/pulls?state=open", repo.path)
    }

    /// What every forge says about `pr`, checked; `path` is where it was read, for the error.
    fn info(
        &self,
        api: &Api,
        repo: &Repository,
        pr: &Self::PullRequest,
        path: &str,
    ) -> Result<PullRequestInfo, ForgeError>;

    /// `pr`'s state, whether it can be merged, and the commit its merge made.
    fn state(pr: Self::PullRequest) -> (PrState, Option<bool>, Option<String>);

    /// Whether the checks of commit `sha`, the head of an open pull request that merges
    /// cleanly, are green where [`Wire::state`] could not tell (`None`: some still run).
    fn checks_green(api: &Api, repo: &Repository, sha: &str) -> Result<Option<bool>, ForgeError> {
        let _ = (api, repo, sha);
        Ok(Some(true))
    }

    /// The verdicts on pull request `number`, oldest first (a forge that only lists who
    /// approves now gives an `Approved` verdict for each).
    fn reviews(api: &Api, repo: &Repository, number: u64) -> Result<Vec<Verdict>, ForgeError>;

    /// Whether `user` (a checked login) may push.
    fn has_write_access(api: &Api, repo: &Repository, user: &str) -> Result<bool, ForgeError>;
}

/// A [`Forge`] over one forge's [`Wire`].
pub(crate) struct Adapter<W> {
    api: Api,
    /// Slipway's own login: configured, or asked once.
    login: OnceLock<String>,
    repo: Repository,
    /// What the forge's wire keeps between calls (GitLab: project paths).
    wire: W,
}

impl<W: Wire> Adapter<W> {
    fn own_login(&self) -> Result<&str, ForgeError> {
        if let Some(login) = self.login.get() {
            return Ok(login);
        }
        let me = W::login(self.api.get("/user")?);
        Ok(self.login.get_or_init(|| me))
    }
}

/// What the forges answer to a comment created or edited: its id is all that is read.
#[derive(Deserialize)]
struct Written {
    id: u64,
}

impl<W: Wire> Forge for Adapter<W> {
    fn kind(&self) -> ForgeKind {
        self.api.profile.kind
    }

    fn upsert_comment(&self, pr: u64, marker: &str, body: &str) -> Result<CommentId, ForgeError> {
        check_marker(marker)?;
        let body = self.api.scrub(&body_with_marker(marker, body));
        let me = self.own_login()?;
        let path = W::comments_list_path(&self.repo, pr);
        let comments: Vec<W::Comment> = if W::COMMENTS_PAGED {
            self.api.get_all(&path)?
        } else {
            self.api.get(&path)?
        };
        let ours = comments.into_iter().filter_map(W::posted).find(|c| {
            c.author
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(me))
                && c.body.contains(marker)
        });
        match ours {
            Some(c) if c.body == body => Ok(CommentId(c.id)),
            Some(c) => {
                let updated: Written = self.api.send(
                    W::EDIT_COMMENT,
                    &W::comment_path(&self.repo, pr, c.id),
                    &json!({ "body": body }),
                )?;
                Ok(CommentId(updated.id))
            }
            None => self.post_comment(pr, &body),
        }
    }

    fn post_comment(&self, pr: u64, body: &str) -> Result<CommentId, ForgeError> {
        let created: Written = self.api.send(
            Method::Post,
            &W::comments_path(&self.repo, pr),
            &json!({ "body": body }),
        )?;
        Ok(CommentId(created.id))
    }

    fn set_status(&self, status: &CommitStatus) -> Result<(), ForgeError> {
        check_sha(&status.sha)?;
        check_context(&status.context)?;
        let profile = self.api.profile;
        let mut body = json!({
            "state": profile.status_names.of(status.state),
            "description": status_description(&self.api.scrub(&status.description)),
        });
        body[profile.status_context_field] = json!(status.context);
        if let Some(url) = &status.target_url {
            body["target_url"] = json!(url);
        }
        let _: serde_json::Value = self.api.send(
            Method::Post,
            &format!("{}/statuses/{}", self.repo.path, status.sha),
            &body,
        )?;
        Ok(())
    }

    fn pull_request(&self, number: u64) -> Result<PullRequestDetails, ForgeError> {
        let path = W::pull_request_path(&self.repo, number);
        let pr: W::PullRequest = self.api.get(&path)?;
        let info = self.wire.info(&self.api, &self.repo, &pr, &path)?;
        let (state, mergeable, merge_commit_sha) = W::state(pr);
        Ok(PullRequestDetails::new(
            info,
            state,
            mergeable,
            merge_commit_sha,
        ))
    }

    fn checks_green(&self, sha: &str) -> Result<Option<bool>, ForgeError> {
        check_sha(sha)?;
        W::checks_green(&self.api, &self.repo, sha)
    }

    fn approvals(&self, number: u64) -> Result<Vec<Approval>, ForgeError> {
        Ok(latest_approvals(W::reviews(&self.api, &self.repo, number)?))
    }

    fn has_write_access(&self, user: &str) -> Result<bool, ForgeError> {
        check_login(user)?;
        W::has_write_access(&self.api, &self.repo, user)
    }

    fn open_pull_requests(&self) -> Result<Vec<PullRequestInfo>, ForgeError> {
        let path = W::open_pull_requests_path(&self.repo);
        let prs: Vec<W::PullRequest> = self.api.get_all(&path)?;
        let list = path.split('?').next().unwrap_or_default();
        // One that cannot be read (a branch name Slipway refuses, which git may take) is left
        // out, and said in the log: it must not keep the others from being caught up. A call
        // that may work later (GitLab reads more of each) fails the list, to be tried again.
        let mut open = Vec::with_capacity(prs.len());
        for pr in &prs {
            match self.wire.info(&self.api, &self.repo, pr, list) {
                Ok(info) => open.push(info),
                Err(error) if error.retryable() => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, "a pull request the forge lists open is left out");
                }
            }
        }
        Ok(open)
    }

    fn has_deployments(&self) -> bool {
        W::DEPLOYMENTS
    }

    fn set_deployment(&self, deployment: &PreviewDeployment) -> Result<(), ForgeError> {
        if !W::DEPLOYMENTS {
            return Ok(());
        }
        check_sha(&deployment.sha)?;
        check_environment(&deployment.environment)?;
        let (sha, environment) = (&deployment.sha, &deployment.environment);
        let description = status_description(&self.api.scrub(&deployment.description));
        // One deployment per commit and environment: the one made before, if any.
        let made: Vec<Written> = self.api.get(&format!(
            "{}/deployments?sha={sha}&environment={}&per_page=1",
            self.repo.path,
            names::path_segment(environment)
        ))?;
        let id = match made.first() {
            Some(d) => d.id,
            None => {
                let created: Written = self.api.send(
                    Method::Post,
                    &format!("{}/deployments", self.repo.path),
                    &json!({
                        "ref": sha,
                        "environment": environment,
                        "description": description,
                        // A preview: GitHub may mark it gone, and it is never production.
                        "transient_environment": true,
                        "production_environment": false,
                        // Deploying a pull request's head must never merge anything into it,
                        // nor wait for checks: Slipway has already decided to run it.
                        "auto_merge": false,
                        "required_contexts": [],
                    }),
                )?;
                created.id
            }
        };
        let mut body = json!({
            "state": deployment.state.as_str(),
            "description": description,
        });
        if let Some(url) = &deployment.environment_url {
            body["environment_url"] = json!(url);
        }
        let _: serde_json::Value = self.api.send(
            Method::Post,
            &format!("{}/deployments/{id}/statuses", self.repo.path),
            &body,
        )?;
        Ok(())
    }

    fn pr_head_ref(&self, number: u64) -> String {
        format!("{}/{number}/head", self.api.profile.pr_ref_namespace)
    }
}

/// Checks an environment's name: one line of at most 255 bytes.
fn check_environment(name: &str) -> Result<(), ForgeError> {
    let ok = !name.trim().is_empty() && name.len() <= 255 && !name.chars().any(char::is_control);
    check(ok, "deployment environment", || {
        "it must be one non-empty line of at most 255 bytes, e.g. `pr-42`".into()
    })
}

/// `ok`, or an [`ForgeError::InvalidInput`] about `what`.
fn check(ok: bool, what: &'static str, reason: impl FnOnce() -> String) -> Result<(), ForgeError> {
    if ok {
        Ok(())
    } else {
        Err(ForgeError::InvalidInput {
            what,
            reason: reason(),
        })
    }
}

/// Checks `sha` before it goes into a URL.
fn check_sha(sha: &str) -> Result<(), ForgeError> {
    check(names::is_object_id(sha), "commit sha", || {
        format!(
            "{:?} is not 40 or 64 hex digits",
            names::short_text(sha, 80)
        )
    })
}

/// Checks a login before it goes into a URL.
fn check_login(user: &str) -> Result<(), ForgeError> {
    check(names::is_login(user), "login", || {
        format!("{:?} is not a login", names::short_text(user, 80))
    })
}

/// Checks a status context.
fn check_context(context: &str) -> Result<(), ForgeError> {
    let ok = !context.trim().is_empty()
        && context.len() <= 255
        && !context.chars().any(char::is_control);
    check(ok, "status context", || {
        "it must be one non-empty line of at most 255 bytes, e.g. `slipway/plan`".into()
    })
}

/// Checks a comment marker: an HTML comment on one line, so that it stays invisible and
/// cannot end early.
fn check_marker(marker: &str) -> Result<(), ForgeError> {
    let inner = marker
        .strip_prefix("<!--")
        .and_then(|m| m.strip_suffix("-->"))
        .filter(|inner| {
            !inner.trim().is_empty()
                && !inner.contains("--")
                && !inner.contains('>')
                && !inner.chars().any(char::is_control)
        });
    check(
        inner.is_some() && marker.len() <= 200,
        "comment marker",
        || "it must be a one-line HTML comment such as `<!-- slipway:plan -->`".into(),
    )
}

/// The body to post for `upsert_comment`: `body`, with `marker` on its own first line unless
/// `body` already carries it.
fn body_with_marker(marker: &str, body: &str) -> String {
    if body.contains(marker) {
        body.to_owned()
    } else {
        format!("{marker}\n{body}")
    }
}

/// Cuts a status description to GitHub's 140 characters.
fn status_description(text: &str) -> String {
    names::short_text(text, 139)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_must_be_one_line_html_comments() {
        assert!(check_marker("<!-- slipway:plan -->").is_ok());
        for bad in [
            "slipway",
            "<!-- -->",
            "<!-- a -- b -->",
            "<!-- a\nb -->",
            "<!-- a > -->",
        ] {
            assert!(check_marker(bad).is_err(), "{bad:?} is refused as a marker");
        }
    }
}
