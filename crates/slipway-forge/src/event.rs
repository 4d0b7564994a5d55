//! What a forge tells Slipway: one closed set of events, the same for every forge.

use std::fmt;
use std::str::FromStr;

/// Which forge a webhook came from, or an adapter talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForgeKind {
    /// github.com or GitHub Enterprise Server.
    GitHub,
    /// gitlab.com or a self-managed GitLab.
    GitLab,
    /// Gitea, or Forgejo (which speaks Gitea's API and webhooks).
    Gitea,
}

impl ForgeKind {
    /// Every forge, in a stable order (for tables, fuzzing and tests).
    pub const ALL: [ForgeKind; 3] = [ForgeKind::GitHub, ForgeKind::GitLab, ForgeKind::Gitea];

    /// The lowercase name used in configuration (`[forge.github]`) and webhook paths
    /// (`/webhooks/github`).
    pub fn as_str(self) -> &'static str {
        self.profile().name
    }
}

impl fmt::Display for ForgeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not one of `github`, `gitlab`, `gitea` (or `forgejo`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown forge {0:?}: expected one of github, gitlab, gitea (or forgejo)")]
pub struct UnknownForge(pub String);

impl FromStr for ForgeKind {
    type Err = UnknownForge;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ForgeKind::ALL
            .into_iter()
            .find(|kind| {
                let profile = kind.profile();
                profile.name == s || profile.aliases.contains(&s)
            })
            .ok_or_else(|| UnknownForge(s.to_owned()))
    }
}

/// One verified webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The forge that sent it.
    pub forge: ForgeKind,
    /// The forge's delivery id (`X-GitHub-Delivery`, `X-Gitea-Delivery`, GitLab's
    /// `Idempotency-Key` or `X-Gitlab-Event-UUID`), or `sha256:<hex of the body>` when the forge
    /// sent none. A redelivery of the same event carries the same id on GitHub, Gitea and GitLab
    /// 17.4+, so it is the key for deduplication.
    ///
    /// # Caveats
    /// Headers are not covered by the signature: the id deduplicates honest redeliveries, it
    /// does not stop a replay of a captured body under a new id. Deduplicate on
    /// [`crate::body_digest`] as well for that (Slipway's receiver does).
    pub id: String,
    /// What happened. An event about another repository than the verifier's (see
    /// [`Delivery::other_repository`]) is [`ForgeEvent::Ignored`], with a kind ending in
    /// `.other_repository`.
    pub event: ForgeEvent,
    /// The repository the payload says the event is about (GitHub and Gitea: `repository`;
    /// GitLab: `project`), `None` when it names none (an organisation's `ping`).
    pub repository: Option<RepositoryRef>,
    /// Set when the verifier was given the configured repository
    /// ([`crate::WebhookVerifier::with_repository`]) and the event is about another one (or
    /// names none): what the payload named, for the log. Organisation- and group-level hooks
    /// deliver every repository's events under one secret, so such a delivery is genuine, but
    /// its numbers are another repository's: its [`Delivery::event`] is
    /// [`ForgeEvent::Ignored`].
    pub other_repository: Option<String>,
}

/// A repository as a webhook payload names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepositoryRef {
    /// `owner/name` (GitLab: `group/subgroup/project`), as the payload spells it.
    pub full_name: Option<String>,
    /// The forge's numeric id of the repository (GitLab: the project's id). Ids survive
    /// renames and transfers.
    pub id: Option<u64>,
}

impl fmt::Display for RepositoryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self
            .full_name
            .as_deref()
            .map(|n| crate::names::short_text(n, 120));
        match (name, self.id) {
            (Some(name), Some(id)) => write!(f, "{name} (id {id})"),
            (Some(name), None) => f.write_str(&name),
            (None, Some(id)) => write!(f, "id {id}"),
            (None, None) => f.write_str("(no repository)"),
        }
    }
}

/// The one repository a controller works with, as webhooks are checked against it.
///
/// # Guarantees
/// [`ExpectedRepository::matches`] is `false` for a payload that names no repository: an
/// event Slipway cannot place is not acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedRepository {
    /// `owner/name` (GitLab: `group/subgroup/project`, or the project's numeric id).
    pub name: String,
    /// The repository's numeric id, when known: it then decides, so that a renamed or
    /// transferred repository still matches and another one that took its old name does not.
    pub id: Option<u64>,
}

impl ExpectedRepository {
    /// The repository `name` (a path, or GitLab's numeric project id), id unknown.
    pub fn new(name: impl Into<String>) -> Self {
        ExpectedRepository {
            name: name.into(),
            id: None,
        }
    }

    /// Whether `payload` names this repository: by id when both ids are known (or the
    /// configured name is a numeric id), else by full name, compared without regard to case
    /// (GitHub, GitLab and Gitea route names case-insensitively).
    pub fn matches(&self, payload: Option<&RepositoryRef>) -> bool {
        let Some(payload) = payload else {
            return false;
        };
        let numeric = crate::names::is_numeric_id(&self.name)
            .then(|| self.name.parse::<u64>().ok())
            .flatten();
        match (self.id.or(numeric), payload.id) {
            (Some(expected), Some(got)) => expected == got,
            // A numeric name can only be compared with an id.
            (Some(_), None) if numeric.is_some() => false,
            _ => payload
                .full_name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(&self.name)),
        }
    }
}

/// Everything a forge's webhook can tell Slipway, for every forge.
///
/// Unknown or irrelevant deliveries are [`ForgeEvent::Ignored`], never errors: the forge should
/// get a `2xx` for them, or it retries and eventually disables the hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForgeEvent {
    /// Commits were pushed to a ref, or the ref was created or deleted.
    Push {
        /// The full ref name, e.g. `refs/heads/main` or `refs/tags/v1`.
        git_ref: String,
        /// The branch name when `git_ref` is under `refs/heads/`, else `None` (a tag).
        branch: Option<String>,
        /// The object id before the push: all zeros for a new ref, empty when the forge does
        /// not say (Gitea's `delete` event).
        before: String,
        /// The object id after the push: all zeros when the ref was deleted.
        after: String,
        /// The ref was deleted.
        deleted: bool,
        /// Who pushed (GitHub and Gitea `sender`, GitLab `user_username`), when the payload
        /// names a valid login: the pull-request gate never counts a pusher's approval of
        /// what they pushed.
        pusher: Option<String>,
    },
    /// A pull (merge) request was opened, updated, closed, merged, etc.
    PullRequest {
        /// What happened to it.
        action: PrAction,
        /// The pull request as it is after the action.
        pr: PullRequestInfo,
        /// Who made it happen (GitHub and Gitea `sender`, GitLab `user`), when the payload
        /// names a valid login. For [`PrAction::Synchronized`] that is who pushed the new
        /// head; for [`PrAction::Opened`], who opened it.
        sender: Option<String>,
    },
    /// Someone reviewed a pull request.
    Review {
        /// The pull request's number (GitLab: the merge request's `iid`).
        pr_number: u64,
        /// The review's verdict.
        state: ReviewState,
        /// The reviewer's login.
        author: String,
    },
    /// A new comment on an issue or a pull request (edits and deletions are
    /// [`ForgeEvent::Ignored`], so that editing an old comment never re-runs its command).
    Comment {
        /// The or pull request's number (GitLab: the `iid`).
        pr_number: u64,
        /// The comment's id, for replying or reacting.
        comment_id: u64,
        /// The commenter's login.
        author: String,
        /// The comment's Markdown, as typed.
        body: String,
        /// The comment is on a pull request, not on an issue.
        is_pull_request: bool,
        /// When the forge says the comment was made, unix milliseconds by the forge's clock;
        /// `None` when the payload does not say or says it in a form not read here. A
        /// command's freshness rules judge the head against it: a delivery can come long
        /// after the comment.
        created_at: Option<i64>,
    },
    /// The forge checks that the hook works (GitHub's `ping`).
    Ping,
    /// A delivery Slipway has no use for; `kind` names it for the log, e.g. `issues` or
    /// `issue_comment.edited`.
    Ignored {
        /// The forge's event name, with the action when there is one.
        kind: String,
    },
}

/// What happened to a pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrAction {
    /// It was opened (GitLab: `open`).
    Opened,
    /// Its head moved: new commits, a force-push (GitHub `synchronize`, Gitea `synchronized`,
    /// GitLab `update` with `oldrev`).
    Synchronized,
    /// It was reopened.
    Reopened,
    /// It was closed without being merged.
    Closed,
    /// It was merged (GitHub and Gitea: `closed` with `merged: true`; GitLab: `merge`).
    Merged,
    /// Anything else (labels, title, assignees…): the forge's action name.
    Other(String),
}

/// A review's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewState {
    /// Approved (GitLab: `approved`/`approval`).
    Approved,
    /// Changes requested (Gitea: rejected).
    ChangesRequested,
    /// A comment without a verdict.
    Commented,
    /// An earlier review was dismissed (GitLab: `unapproved`/`unapproval`).
    Dismissed,
}

/// A pull request, as every forge describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestInfo {
    /// Its number (GitLab: the merge request's `iid`, not its global `id`).
    pub number: u64,
    /// Its title (attacker-controlled: escape it before showing it anywhere).
    pub title: String,
    /// Its author's login.
    ///
    /// # Caveats
    /// GitLab's merge request webhook names only the user who triggered the event (and the
    /// author's numeric id), not the author's login; for GitLab webhooks this is that user,
    /// NOT the author: never decide anything on it. [`crate::Forge::pull_request`] returns
    /// the real author on every forge.
    pub author: String,
    /// The commit at the head of the source branch.
    pub head_sha: String,
    /// The source branch's name (attacker input: derive names from it safely).
    pub head_ref: String,
    /// The target branch's name.
    pub base_ref: String,
    /// The source repository (`owner/name`, GitLab `group/project`), `None` when the forge no
    /// longer knows it (a deleted fork).
    pub head_repo_full_name: Option<String>,
    /// The target repository.
    pub base_repo_full_name: String,
    /// The source is another repository than the target (or a deleted one): its code is not
    /// ours to run without a maintainer's say-so.
    pub is_fork: bool,
    /// The pull request's web page.
    pub url: String,
    /// Its labels' names, sorted, each once. Only people with triage or write access set
    /// labels on GitHub and Gitea (developers and above on GitLab), so a policy may require
    /// one; they are still text to escape before showing.
    pub labels: Vec<String>,
}

/// At most this many labels are kept of a pull request (GitHub allows 100).
pub const MAX_LABELS: usize = 100;

/// Sorts and deduplicates label names as [`PullRequestInfo::labels`] keeps them.
pub(crate) fn label_set(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut labels: Vec<String> = names.into_iter().collect();
    labels.sort();
    labels.dedup();
    labels
}

impl PullRequestInfo {
    /// Checks what the rest of Slipway relies on (see `names.rs`): a hex head sha, branch
    /// names that are valid refs and cannot pass for options, a login without control
    /// characters. The error says which field is wrong, without quoting it at length.
    pub(crate) fn check(&self) -> Result<(), String> {
        use crate::names;
        if self.number == 0 {
            return Err("pull request number 0".into());
        }
        if !names::is_object_id(&self.head_sha) {
            return Err(format!(
                "pull request {}: head sha {:?} is not 40 or 64 hex digits",
                self.number,
                names::short_text(&self.head_sha, 80)
            ));
        }
        for (field, value) in [("head ref", &self.head_ref), ("base ref", &self.base_ref)] {
            if !names::is_ref_name(value) {
                return Err(format!(
                    "pull request {}: {field} {:?} is not a valid branch name",
                    self.number,
                    names::short_text(value, 80)
                ));
            }
        }
        if !names::is_login(&self.author) {
            return Err(format!(
                "pull request {}: author {:?} is not a login",
                self.number,
                names::short_text(&self.author, 80)
            ));
        }
        let repos = std::iter::once(&self.base_repo_full_name).chain(&self.head_repo_full_name);
        for repo in repos {
            if !names::is_repository_path(repo) {
                return Err(format!(
                    "pull request {}: repository {:?} is not owner/name",
                    self.number,
                    names::short_text(repo, 80)
                ));
            }
        }
        if self.labels.len() > MAX_LABELS {
            return Err(format!(
                "pull request {}: {} labels, more than the {MAX_LABELS} a forge allows",
                self.number,
                self.labels.len()
            ));
        }
        if let Some(bad) = self
            .labels
            .iter()
            .find(|l| l.is_empty() || l.chars().count() > 100 || l.chars().any(char::is_control))
        {
            return Err(format!(
                "pull request {}: label {:?} is empty, longer than 100 characters or holds a \
                 control character",
                self.number,
                names::short_text(bad, 80)
            ));
        }
        Ok(())
    }
}

/// A push payload's fields, which every forge names alike, and who pushed, which they do not.
#[derive(serde::Deserialize)]
pub(crate) struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    /// GitHub and Gitea: the account that pushed.
    #[serde(default)]
    sender: Option<Sender>,
    /// GitLab: the pusher's username.
    #[serde(default)]
    user_username: Option<String>,
}

/// A payload's `sender`: `login` on GitHub and Gitea (Gitea also sends `username`).
#[derive(serde::Deserialize)]
pub(crate) struct Sender {
    #[serde(default)]
    login: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

impl Sender {
    /// The sender's login, when it is one.
    pub(crate) fn login(&self) -> Option<String> {
        valid_login(
            self.login
                .as_deref()
                .filter(|l| !l.is_empty())
                .or(self.username.as_deref()),
        )
    }
}

/// `login` when it is a valid login. Who acted is never a reason to refuse a delivery: an
/// odd one is left unknown, which the gate reads as "not known who pushed" and refuses on.
pub(crate) fn valid_login(login: Option<&str>) -> Option<String> {
    login
        .filter(|l| crate::names::is_login(l))
        .map(str::to_owned)
}

impl PushPayload {
    /// The checked [`ForgeEvent::Push`].
    pub(crate) fn event(&self) -> Result<ForgeEvent, String> {
        let pusher = match &self.sender {
            Some(sender) => sender.login(),
            None => valid_login(self.user_username.as_deref()),
        };
        push_event(&self.git_ref, &self.before, &self.after, pusher)
    }
}

/// Builds a checked [`ForgeEvent::Push`] from a push payload's fields.
pub(crate) fn push_event(
    git_ref: &str,
    before: &str,
    after: &str,
    pusher: Option<String>,
) -> Result<ForgeEvent, String> {
    use crate::names;
    if !git_ref.starts_with("refs/") || !names::is_ref_name(git_ref) {
        return Err(format!(
            "push: ref {:?} is not a full ref name",
            names::short_text(git_ref, 80)
        ));
    }
    for (field, value) in [("before", before), ("after", after)] {
        let ok = names::is_object_id(value) || (field == "before" && value.is_empty());
        if !ok {
            return Err(format!(
                "push: {field} {:?} is not 40 or 64 hex digits",
                names::short_text(value, 80)
            ));
        }
    }
    Ok(ForgeEvent::Push {
        git_ref: git_ref.to_owned(),
        branch: git_ref.strip_prefix("refs/heads/").map(str::to_owned),
        before: before.to_owned(),
        after: after.to_owned(),
        deleted: names::is_null_object_id(after),
        pusher,
    })
}

/// A time as forges write it in payloads, as unix milliseconds: RFC 3339
/// (`2019-05-15T15:20:33Z`, `2017-03-13T13:52:11-04:00`), or GitLab's `2015-05-17 18:08:09
/// UTC` and `2015-05-17 18:08:09 +0200`. `None` for anything else.
pub(crate) fn unix_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let timestamp = match text.strip_suffix(" UTC") {
        Some(utc) => format!("{utc}Z").parse::<jiff::Timestamp>().ok(),
        None => text.parse::<jiff::Timestamp>().ok().or_else(|| {
            jiff::fmt::strtime::parse("%Y-%m-%d %H:%M:%S %z", text)
                .and_then(|parsed| parsed.to_timestamp())
                .ok()
        }),
    };
    timestamp.map(|t| t.as_millisecond())
}

/// Checks a login from a payload.
pub(crate) fn checked_login(what: &str, login: &str) -> Result<String, String> {
    if crate::names::is_login(login) {
        Ok(login.to_owned())
    } else {
        Err(format!(
            "{what} {:?} is not a login",
            crate::names::short_text(login, 80)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::unix_ms;

    #[test]
    fn a_comment_time_is_read_in_every_form_the_forges_write() {
        // GitHub and Gitea: RFC 3339, in UTC or with an offset; GitLab's API: with a fraction.
        assert_eq!(unix_ms("2019-05-15T15:20:33Z"), Some(1_557_933_633_000));
        assert_eq!(
            unix_ms("2019-05-15T17:20:33+02:00"),
            Some(1_557_933_633_000)
        );
        assert_eq!(unix_ms("2019-06-05T14:32:20.211Z"), Some(1_559_745_140_211));
        // GitLab's webhooks.
        assert_eq!(unix_ms("2019-05-15 15:20:33 UTC"), Some(1_557_933_633_000));
        assert_eq!(
            unix_ms("2019-05-15 17:20:33 +0200"),
            Some(1_557_933_633_000)
        );
        for unreadable in [
            "",
            "yesterday",
            "2019-05-15",
            "2019-05-15T15:20:33",
            "2019-13-45T99:99:99Z",
            "1557933633",
            " UTC",
        ] {
            assert_eq!(unix_ms(unreadable), None, "{unreadable:?}");
        }
    }
}
