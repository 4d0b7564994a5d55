//! The fake forge's state, the same for every forge: one repository's pull (merge) requests,
//! their comments, reviews and approvals, the commit statuses, the people and their roles, the
//! injected failures and the request log; and [`FakeForge`], the handle a test holds, which
//! changes that state, reads it back and waits on it.
//!
//! What differs between forges is a [`Dialect`] (one `static` in each forge's module): how a
//! request is routed and answered, how the forge spells roles and review states, its URLs,
//! and whether it writes system notes and treats an approval as a toggle (GitLab).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::{Forge, Log, Recorded, Reply, Request, Server, now_iso, poll};

/// The one repository every fake serves, and every payload names.
pub const REPO: &str = "acme/shop";
/// [`REPO`]'s owner (namespace).
pub const OWNER: &str = "acme";
/// [`REPO`]'s name.
pub const NAME: &str = "shop";
/// [`REPO`]'s default branch.
pub const DEFAULT_BRANCH: &str = "main";

/// A pull request (GitLab: merge request) to put on a fake, and into payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrSpec {
    /// Its number (GitLab: `iid`; Gitea: its issue's index).
    pub number: u64,
    /// The head commit (40 hex digits for anything an adapter should accept).
    pub head_sha: String,
    /// The source branch.
    pub head_ref: String,
    /// The target branch.
    pub base_ref: String,
    /// The author's login.
    pub author: String,
    /// The head lives in a fork: `<author>/shop` (`<author>-fork/shop` when the author is
    /// `acme`), with another repository id.
    pub fork: bool,
    /// Its title.
    pub title: String,
    /// Its labels' names (none unless set).
    pub labels: Vec<String>,
}

impl PrSpec {
    /// Pull request `number` at `head_sha`: branch `feature-<number>` into `main`, by `alice`,
    /// not from a fork, titled `Change <number>`. Change fields with struct update syntax.
    pub fn new(number: u64, head_sha: &str) -> PrSpec {
        PrSpec {
            number,
            head_sha: head_sha.to_owned(),
            head_ref: format!("feature-{number}"),
            base_ref: DEFAULT_BRANCH.to_owned(),
            author: "alice".to_owned(),
            fork: false,
            title: format!("Change {number}"),
            labels: Vec::new(),
        }
    }

    /// The head repository's `owner/name`: [`REPO`], or the fork's.
    pub fn head_repo_full_name(&self) -> String {
        if !self.fork {
            REPO.to_owned()
        } else if self.author.eq_ignore_ascii_case(OWNER) {
            format!("{}-fork/{NAME}", self.author)
        } else {
            format!("{}/{NAME}", self.author)
        }
    }
}

/// A pull request's state on a fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrState {
    /// Open (the state [`FakeForge::add_pr`] gives).
    Open,
    /// Closed without merging.
    Closed,
    /// Merged as `merge_sha`.
    Merged {
        /// The merge commit (`merge_commit_sha`).
        merge_sha: String,
    },
}

/// A comment (GitLab: note) on a pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    /// Its id.
    pub id: u64,
    /// Its author's login (the bot's for comments posted through the API).
    pub author: String,
    /// Its body now.
    pub body: String,
    /// A system note ("added 1 commit", "approved this merge request"): GitLab only.
    pub system: bool,
    /// How many times it was edited.
    pub edits: u32,
}

/// A commit status posted to a fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Its context (GitLab: `name`), e.g. `slipway/plan`.
    pub context: String,
    /// Its state as the forge spells it (`success`; GitLab `failed`, GitHub `failure`…).
    pub state: String,
    /// Its description, if one was sent.
    pub description: Option<String>,
    /// Its link, if one was sent.
    pub target_url: Option<String>,
}

/// A deployment (GitHub's Deployments API), with its statuses, as the fake keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// Its id.
    pub id: u64,
    /// The commit deployed, lower case.
    pub sha: String,
    /// The `ref` it was created with.
    pub reference: String,
    /// Its environment.
    pub environment: String,
    /// The request's `transient_environment` (`false` when not sent).
    pub transient_environment: bool,
    /// The request's `production_environment` (`None` when not sent).
    pub production_environment: Option<bool>,
    /// The request's `auto_merge` (GitHub's default, `true`, when not sent).
    pub auto_merge: bool,
    /// The request's `required_contexts` (`None` when not sent: every context is required).
    pub required_contexts: Option<Vec<String>>,
    /// Its statuses, oldest first.
    pub statuses: Vec<DeploymentStatus>,
}

/// A deployment status as posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentStatus {
    /// Its id.
    pub id: u64,
    /// `in_progress`, `success`, `failure`, `inactive`…
    pub state: String,
    /// Its `environment_url`, if one was sent.
    pub environment_url: Option<String>,
    /// Its description, if one was sent.
    pub description: Option<String>,
    /// ISO 8601.
    pub created_at: String,
}

/// Something that happened to a pull request, as a webhook delivery tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// It was opened.
    Opened,
    /// Its branch was pushed to; its head was `before`.
    Pushed {
        /// The head before the push.
        before: String,
        /// Who pushed (the delivery's sender); `None`: its author.
        by: Option<String>,
    },
    /// Its branch (a branch of the repository, not a fork's) was pushed to its head from
    /// `before` (all zeros: the branch was made): a push delivery, not a pull request's.
    BranchPushed {
        /// The branch's commit before the push.
        before: String,
        /// Who pushed; `None`: its author.
        by: Option<String>,
    },
    /// `reviewer` approved it.
    Approved {
        /// Who approved.
        reviewer: String,
    },
    /// Comment `comment` (as [`FakeForge::add_comment`] returned it) was written on it.
    Commented {
        /// The comment.
        comment: Comment,
    },
    /// Its labels were changed (to what [`FakeForge::set_labels`] set): GitHub `labeled`,
    /// Gitea `label_updated`, GitLab `update` without `oldrev`.
    Labelled,
    /// It was closed without merging.
    Closed,
    /// It was merged as `merge_sha`.
    Merged {
        /// The merge commit.
        merge_sha: String,
    },
}

/// One webhook delivery: the forge's event name and the payload.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event header's value (`pull_request`, `Merge Request Hook`…).
    pub event: &'static str,
    /// The payload.
    pub body: Vec<u8>,
}

/// What differs between the forges behind one [`FakeForge`].
pub struct Dialect {
    /// Which forge it is.
    pub forge: Forge,
    /// Its name in messages: `GitHub`.
    pub label: &'static str,
    /// What a pull request is called with its number's sign: `pull request #`.
    pub pr_word: &'static str,
    /// Where its API sits under the server's root (`/api/v4`), or `""`.
    pub api_prefix: &'static str,
    /// Where `slipway serve` receives its deliveries.
    pub webhook_path: &'static str,
    /// Ids of comments, reviews and statuses start after this.
    pub first_id: u64,
    /// The roles [`FakeForge::set_permission`] takes.
    pub roles: &'static [&'static str],
    /// The role the bot starts with, if it has one.
    pub bot_role: Option<&'static str>,
    /// The review states [`FakeForge::review`] takes (as given, upper case).
    pub review_states: &'static [&'static str],
    /// A push, an approval and its withdrawal leave system notes; an approval is a toggle
    /// per user (GitLab), not one review among others.
    pub approval_toggles: bool,
    /// The pull request's web page.
    pub pr_url: fn(u64) -> String,
    /// The ref under which the forge publishes pull request `n`'s head.
    pub pr_ref: fn(u64) -> String,
    /// [`REPO`]'s id in answers and payloads.
    pub repo_id: u64,
    /// The lowest role that may push, and one that may only read.
    pub write_role: &'static str,
    /// A role that may read, not push.
    pub read_role: &'static str,
    /// The delivery the forge sends when `event` happens to pull request `pr` (as it is now).
    pub delivery: fn(&PrSpec, &Event) -> Delivery,
    /// The headers the forge sends a delivery with (signed or with its token, from
    /// `secret`), delivery id `id`.
    pub headers: fn(secret: &str, delivery: &Delivery, id: &str) -> Vec<(String, String)>,
    /// Answers a request: its reply and the operation it matched.
    pub respond: fn(&Core, &mut State, &Request) -> (Reply, Option<&'static str>),
    /// The answer to a request whose answering panicked (a bug in the fake).
    pub bug: fn() -> Reply,
}

/// What a fake knows and what its requests left.
#[derive(Default)]
pub struct State {
    next_id: u64,
    /// The pull requests, in the order they were added.
    pub prs: Vec<Pr>,
    /// Every comment, oldest first.
    pub comments: Vec<StoredComment>,
    /// Every review (GitLab: approval), oldest first.
    pub reviews: Vec<StoredReview>,
    /// Every commit status, oldest first.
    pub statuses: Vec<StoredStatus>,
    /// Every deployment (GitHub), oldest first.
    pub deployments: Vec<Deployment>,
    /// Lowercased login → (login as set, role as the forge spells it).
    pub permissions: HashMap<String, (String, String)>,
    /// Lowercased login → login as first seen: everyone the forge knows.
    pub users: HashMap<String, String>,
    /// Every request answered.
    pub requests: Log,
    failures: Vec<Failure>,
    /// The token every request must carry, if one is required.
    pub token: Option<String>,
    reset_approvals_on_push: bool,
}

/// A pull request on a fake.
pub struct Pr {
    /// As added, its head moved since.
    pub spec: PrSpec,
    /// Open, closed or merged.
    pub state: PrState,
    /// `None`: the forge is still computing it.
    pub mergeable: Option<bool>,
    /// A check its head commit must pass fails (GitHub shows it `blocked` by the branch's
    /// protection, GitLab `ci_must_pass`, Gitea a failing commit status `ci/tests`).
    pub checks_failing: bool,
    /// Each head it had, with when it was pushed (unix ms), oldest first: GitLab's diff
    /// versions.
    pub versions: Vec<(String, i64)>,
    /// ISO 8601.
    pub created_at: String,
    /// ISO 8601.
    pub updated_at: String,
    /// ISO 8601, once closed or merged.
    pub closed_at: Option<String>,
}

/// A pull request's state as GitHub and Gitea show it.
pub struct Shown {
    /// `open` or `closed` (merged too).
    pub state: &'static str,
    /// Whether it was merged.
    pub merged: bool,
    /// When it was merged.
    pub merged_at: Option<String>,
    /// The merge commit.
    pub merge_sha: Option<String>,
}

impl Pr {
    /// Its state as GitHub and Gitea show it.
    pub fn shown(&self) -> Shown {
        let (state, merged, merged_at, merge_sha) = match &self.state {
            PrState::Open => ("open", false, None, None),
            PrState::Closed => ("closed", false, None, None),
            PrState::Merged { merge_sha } => (
                "closed",
                true,
                self.closed_at.clone(),
                Some(merge_sha.clone()),
            ),
        };
        Shown {
            state,
            merged,
            merged_at,
            merge_sha,
        }
    }
}

/// A comment as stored.
pub struct StoredComment {
    /// Its id.
    pub id: u64,
    /// Its pull request's number.
    pub pr: u64,
    /// Its author's login.
    pub author: String,
    /// Its body now.
    pub body: String,
    /// A system note.
    pub system: bool,
    /// How many times it was edited.
    pub edits: u32,
    /// ISO 8601.
    pub created_at: String,
    /// The same, in milliseconds since the Unix epoch (GitLab shows them).
    pub created_ms: i64,
    /// ISO 8601.
    pub updated_at: String,
}

/// A review (GitLab: approval) as stored.
pub struct StoredReview {
    /// Its id.
    pub id: u64,
    /// Its pull request's number.
    pub pr: u64,
    /// The reviewer's login.
    pub reviewer: String,
    /// As the forge spells it, upper case: `APPROVED`…
    pub state: String,
    /// The commit it was given at.
    pub commit_id: String,
    /// Dismissed (GitLab: withdrawn or reset by a push).
    pub dismissed: bool,
    /// ISO 8601.
    pub submitted_at: String,
}

/// A commit status as stored.
pub struct StoredStatus {
    /// Its id.
    pub id: u64,
    /// The commit, lower case.
    pub sha: String,
    /// What was posted.
    pub status: Status,
    /// ISO 8601.
    pub created_at: String,
}

struct Failure {
    method: String,
    path_contains: String,
    status: u16,
    remaining: u32,
}

/// Why a request is refused before it is answered.
pub enum Unauthorized {
    /// It carries no token.
    Missing,
    /// It carries another token than the one required.
    Wrong,
}

/// Why a comment could not be edited.
pub enum EditRefused {
    /// No comment has that id (on that pull request).
    NotFound,
    /// Someone else wrote it, or it is a system note.
    NotAuthor,
}

impl State {
    /// A fresh id for a comment, review or status.
    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Pull request `number`, if the fake has it.
    pub fn pr(&self, number: u64) -> Option<&Pr> {
        self.prs.iter().find(|p| p.spec.number == number)
    }

    fn pr_mut(&mut self, number: u64, dialect: &Dialect) -> &mut Pr {
        self.prs
            .iter_mut()
            .find(|p| p.spec.number == number)
            .unwrap_or_else(|| {
                panic!(
                    "the fake {} has no {}{number}: add_pr it",
                    dialect.label, dialect.pr_word
                )
            })
    }

    /// `login`'s role, as set.
    pub fn permission(&self, login: &str) -> Option<&str> {
        self.permissions
            .get(&login.to_ascii_lowercase())
            .map(|(_, level)| level.as_str())
    }

    /// Makes `login` known (as GitLab's `GET /users` finds it).
    fn know(&mut self, login: &str) {
        self.users
            .entry(login.to_ascii_lowercase())
            .or_insert_with(|| login.to_owned());
    }

    /// Comment `id`, if there is one.
    pub fn comment(&self, id: u64) -> Option<&StoredComment> {
        self.comments.iter().find(|c| c.id == id)
    }

    /// Adds a comment by `author` on pull request `pr`; its id.
    pub fn add_comment(&mut self, pr: u64, author: &str, body: String, system: bool) -> u64 {
        let now = now_iso();
        let id = self.id();
        self.comments.push(StoredComment {
            id,
            pr,
            author: author.to_owned(),
            body,
            system,
            edits: 0,
            created_at: now.clone(),
            created_ms: super::unix_now_ms(),
            updated_at: now,
        });
        id
    }

    /// Replaces the body of comment `id` (on pull request `pr` when given) by `editor`, who
    /// must have written it (when `author_only`).
    pub fn edit_comment(
        &mut self,
        id: u64,
        pr: Option<u64>,
        editor: &str,
        author_only: bool,
        body: String,
    ) -> Result<(), EditRefused> {
        let now = now_iso();
        let c = self
            .comments
            .iter_mut()
            .find(|c| c.id == id && pr.is_none_or(|n| c.pr == n))
            .ok_or(EditRefused::NotFound)?;
        if author_only && (c.system || !c.author.eq_ignore_ascii_case(editor)) {
            return Err(EditRefused::NotAuthor);
        }
        c.body = body;
        c.edits += 1;
        c.updated_at = now;
        Ok(())
    }

    /// Adds a comment by `author` (the bot) on pull request `pr`, as a create-comment request
    /// does: its id, or the refusal (`not_found` when the fake has no such pull request, else
    /// the error `body` carries: the forge's check of the request's body).
    pub fn create_comment(
        &mut self,
        pr: u64,
        author: &str,
        body: Result<String, Reply>,
        not_found: fn() -> Reply,
    ) -> Result<u64, Reply> {
        if self.pr(pr).is_none() {
            return Err(not_found());
        }
        Ok(self.add_comment(pr, author, body?, false))
    }

    /// Records a status on `sha` and returns it.
    pub fn add_status(&mut self, sha: &str, status: Status) -> &StoredStatus {
        let id = self.id();
        self.statuses.push(StoredStatus {
            id,
            sha: sha.to_ascii_lowercase(),
            status,
            created_at: now_iso(),
        });
        self.statuses.last().expect("just pushed")
    }

    /// The pull requests a list filtered by `state` shows, newest first (GitHub's and Gitea's
    /// order): `open`, `closed` (merged ones too) or `all`; `None` for another state.
    pub fn prs_in(&self, state: &str) -> Option<Vec<&Pr>> {
        let shown = |p: &&Pr| match state {
            "open" => p.state == PrState::Open,
            "closed" => p.state != PrState::Open,
            _ => true,
        };
        matches!(state, "open" | "closed" | "all")
            .then(|| self.prs.iter().rev().filter(shown).collect())
    }

    /// The comments on pull request `pr`, oldest first.
    pub fn comments_of(&self, pr: u64) -> impl Iterator<Item = &StoredComment> {
        self.comments.iter().filter(move |c| c.pr == pr)
    }

    /// The reviews of pull request `pr`, oldest first.
    pub fn reviews_of(&self, pr: u64) -> impl Iterator<Item = &StoredReview> {
        self.reviews.iter().filter(move |r| r.pr == pr)
    }

    /// Whether a request carrying `token` may be answered.
    pub fn authorize(&self, token: Option<&str>) -> Result<(), Unauthorized> {
        match (token, &self.token) {
            (None, _) => Err(Unauthorized::Missing),
            (Some(given), Some(wanted)) if given != wanted => Err(Unauthorized::Wrong),
            _ => Ok(()),
        }
    }

    /// The status an injected failure gives this request, if one is due (and counts it).
    pub fn injected_failure(&mut self, method: &str, path: &str) -> Option<u16> {
        let f = self.failures.iter_mut().find(|f| {
            f.remaining > 0
                && f.method.eq_ignore_ascii_case(method)
                && path.contains(&f.path_contains)
        })?;
        f.remaining -= 1;
        Some(f.status)
    }

    fn approved(&self, pr: u64, user: &str) -> bool {
        self.reviews_of(pr)
            .any(|r| !r.dismissed && r.state == "APPROVED" && r.reviewer.eq_ignore_ascii_case(user))
    }
}

/// What a forge's `respond` has read of a request before answering it.
pub struct Call<'r, Op> {
    /// The operation its method and path matched.
    pub op: Op,
    /// The request.
    pub req: &'r Request,
    /// Its query parameters, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// Its body as JSON; `None` when it was empty or not JSON.
    pub json: Option<serde_json::Value>,
}

impl<Op> Call<'_, Op> {
    /// The first value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        super::query_param(&self.query, name)
    }
}

/// Routes `req` (its path under `prefix`) with `match_op` and answers it with `answer`, or
/// with `unknown` when no route matches; the reply and the operation's id.
pub fn route<Op>(
    req: &Request,
    prefix: &str,
    match_op: fn(&str, &[String]) -> Option<Op>,
    id: fn(&Op) -> &'static str,
    unknown: fn() -> Reply,
    answer: impl FnOnce(&Call<'_, Op>) -> Reply,
) -> (Reply, Option<&'static str>) {
    let Some(op) = super::segments(&req.path, prefix).and_then(|s| match_op(&req.method, &s))
    else {
        return (unknown(), None);
    };
    let call = Call {
        op,
        req,
        query: super::parse_query(&req.query),
        json: super::json_body(&req.body),
    };
    let reply = answer(&call);
    (reply, Some(id(&call.op)))
}

/// What the server's handler and the test's handle share.
pub struct Core {
    /// The forge's differences.
    pub dialect: &'static Dialect,
    /// The token holder: `GET /user` answers it, and comments posted through the API are its.
    pub bot_login: String,
    /// `http://127.0.0.1:PORT`: the server's root.
    pub base_url: String,
    state: Mutex<State>,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers one request and records it (before the client can see the answer, so that a
    /// test that looks right after a call sees every request of that call). A panic while
    /// answering is a `500`, and leaves the state usable.
    fn handle(&self, req: Request) -> Reply {
        let mut st = self.lock();
        let (reply, op) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (self.dialect.respond)(self, &mut st, &req)
        }))
        .unwrap_or_else(|_| ((self.dialect.bug)(), None));
        st.requests.push(Recorded::new(req, &reply, op));
        reply
    }
}

/// A fake forge for [`REPO`] on `127.0.0.1`, playing the forge of its [`Dialect`]: its
/// state, and the methods a test changes and reads it with. Stopped when dropped.
///
/// The server never panics on what a client sends (malformed requests get a `400`, oversized
/// ones a `413`/`431`, and a bug in an answer a `500`); its state sits behind a mutex that a
/// panicking test does not poison for the others. The test-side methods do panic on test bugs
/// (an unknown pull request number, an unknown role or review state).
pub struct FakeForge {
    core: Arc<Core>,
    server: Server,
}

impl FakeForge {
    /// Starts a fake `forge` on `127.0.0.1:0`; `bot_login` is the token holder: `GET /user`
    /// answers it and comments posted through the API are its.
    pub fn start(forge: Forge, bot_login: &str) -> FakeForge {
        FakeForge::start_on(forge, "127.0.0.1:0", bot_login)
    }

    /// [`FakeForge::start`] on `addr` (`host:port`).
    pub fn start_on(forge: Forge, addr: &str, bot_login: &str) -> FakeForge {
        let dialect = forge.dialect();
        let mut core_out = None;
        let name = format!("fake-{}", dialect.forge.name());
        let server = Server::start_on(addr, &name, |addr| {
            let mut state = State {
                next_id: dialect.first_id,
                ..State::default()
            };
            state.know(bot_login);
            if let Some(role) = dialect.bot_role {
                state.permissions.insert(
                    bot_login.to_ascii_lowercase(),
                    (bot_login.to_owned(), role.to_owned()),
                );
            }
            let core = Arc::new(Core {
                dialect,
                bot_login: bot_login.to_owned(),
                base_url: format!("http://{addr}"),
                state: Mutex::new(state),
            });
            core_out = Some(Arc::clone(&core));
            move |req: Request| core.handle(req)
        });
        FakeForge {
            core: core_out.expect("the handler was built"),
            server,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.core.lock()
    }

    fn dialect(&self) -> &'static Dialect {
        self.core.dialect
    }

    /// Which forge it plays.
    pub fn forge(&self) -> Forge {
        self.dialect().forge
    }

    /// The API root to configure (`api_url`): `http://127.0.0.1:PORT` and the forge's prefix.
    pub fn url(&self) -> String {
        format!("{}{}", self.core.base_url, self.dialect().api_prefix)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.server.addr().to_string()
    }

    /// The HTTP server it answers on.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Where `slipway serve` receives this forge's deliveries.
    pub fn webhook_path(&self) -> &'static str {
        self.dialect().webhook_path
    }

    /// The bot's login, as given when started.
    pub fn bot_login(&self) -> &str {
        &self.core.bot_login
    }

    /// Pull request `number`'s web page.
    pub fn pr_url(&self, number: u64) -> String {
        (self.dialect().pr_url)(number)
    }

    /// The ref under which the forge publishes pull request `n`'s head.
    pub fn pr_ref(&self, n: u64) -> String {
        (self.dialect().pr_ref)(n)
    }

    /// [`REPO`]'s id in answers and payloads.
    pub fn repo_id(&self) -> u64 {
        self.dialect().repo_id
    }

    /// Gives `user` the lowest role that may push (`write`; GitLab: Developer), or one that
    /// may only read.
    pub fn grant(&self, user: &str, write: bool) {
        let dialect = self.dialect();
        let role = if write {
            dialect.write_role
        } else {
            dialect.read_role
        };
        self.set_permission(user, role);
    }

    /// The delivery the forge sends when `event` happens to pull request `pr` (known to the
    /// fake or not: [`FakeForge::pr`] for one it has, after changing it).
    pub fn delivery(&self, pr: &PrSpec, event: &Event) -> Delivery {
        (self.dialect().delivery)(pr, event)
    }

    /// Sends `delivery` as the forge does (with `secret`, and delivery id `id`) to
    /// `slipway serve` at `addr`: its status and body.
    pub fn send(&self, addr: &str, secret: &str, delivery: &Delivery, id: &str) -> (u16, String) {
        let headers = self.webhook_headers(secret, delivery, id);
        super::deliver(addr, self.dialect().webhook_path, &headers, &delivery.body)
    }

    /// The headers the forge sends `delivery` with (signed or with its token, from
    /// `secret`), delivery id `id`.
    pub fn webhook_headers(
        &self,
        secret: &str,
        delivery: &Delivery,
        id: &str,
    ) -> Vec<(String, String)> {
        (self.dialect().headers)(secret, delivery, id)
    }

    /// Requires this token on every request (where the forge takes it); another token, or
    /// none, gets a `401`.
    pub fn require_token(&self, token: &str) {
        self.lock().token = Some(token.to_owned());
    }

    /// Adds (or replaces) an open pull request, mergeable, with no reviews.
    pub fn add_pr(&self, spec: PrSpec) {
        let now = now_iso();
        let mut st = self.lock();
        st.know(&spec.author);
        st.prs.retain(|p| p.spec.number != spec.number);
        st.reviews.retain(|r| r.pr != spec.number);
        let head = spec.head_sha.clone();
        st.prs.push(Pr {
            spec,
            state: PrState::Open,
            mergeable: Some(true),
            checks_failing: false,
            versions: vec![(head, super::unix_now_ms())],
            created_at: now.clone(),
            updated_at: now,
            closed_at: None,
        });
    }

    /// Pull request `number` as added and changed since, if the fake has it.
    pub fn find_pr(&self, number: u64) -> Option<PrSpec> {
        self.lock().pr(number).map(|p| p.spec.clone())
    }

    /// The pull request as added and changed since (its head), for payload builders.
    pub fn pr(&self, number: u64) -> PrSpec {
        self.lock().pr_mut(number, self.dialect()).spec.clone()
    }

    /// Moves pull request `number`'s head to `sha` (a push to its branch). Reviews stay
    /// unless [`FakeForge::reset_approvals_on_push`]; GitLab adds a system note by the author.
    pub fn set_head(&self, number: u64, sha: &str) {
        let dialect = self.dialect();
        let now = now_iso();
        let mut st = self.lock();
        let pr = st.pr_mut(number, dialect);
        pr.spec.head_sha = sha.to_owned();
        pr.updated_at = now;
        pr.versions.push((sha.to_owned(), super::unix_now_ms()));
        let author = pr.spec.author.clone();
        if dialect.approval_toggles {
            let short: String = sha.chars().take(8).collect();
            let note = format!("added 1 commit\n\n<ul><li>{short}</li></ul>");
            st.add_comment(number, &author, note, true);
        }
        if st.reset_approvals_on_push {
            st.reviews.retain(|r| r.pr != number);
        }
    }

    /// Sets pull request `number`'s labels (as someone with triage access does; the test
    /// sends the `labeled`/`unlabeled` delivery itself).
    pub fn set_labels(&self, number: u64, labels: &[&str]) {
        let dialect = self.dialect();
        let now = now_iso();
        let mut st = self.lock();
        let pr = st.pr_mut(number, dialect);
        pr.spec.labels = labels.iter().map(|l| (*l).to_owned()).collect();
        pr.updated_at = now;
    }

    /// A push removes the pull request's approvals: GitLab's project setting "Remove all
    /// approvals when commits are added to the source branch" (Premium and Ultimate), GitHub's
    /// "Dismiss stale pull request approvals"; off unless set.
    pub fn reset_approvals_on_push(&self, reset: bool) {
        self.lock().reset_approvals_on_push = reset;
    }

    /// Opens, closes or merges pull request `number`.
    pub fn set_state(&self, number: u64, state: PrState) {
        let now = now_iso();
        let mut st = self.lock();
        let pr = st.pr_mut(number, self.dialect());
        pr.closed_at = (state != PrState::Open).then(|| now.clone());
        pr.state = state;
        pr.updated_at = now;
    }

    /// Whether pull request `number` can be merged: `None` is the forge still computing it
    /// (Gitea shows it as `false`).
    pub fn set_mergeable(&self, number: u64, mergeable: Option<bool>) {
        self.lock().pr_mut(number, self.dialect()).mergeable = mergeable;
    }

    /// Whether a check that pull request `number`'s head must pass fails.
    pub fn set_checks_failing(&self, number: u64, failing: bool) {
        self.lock().pr_mut(number, self.dialect()).checks_failing = failing;
    }

    /// `reviewer` approves pull request `number` at `commit_sha` (GitLab's approvals name no
    /// commit: it keeps the commit but never shows it).
    pub fn approve(&self, number: u64, reviewer: &str, commit_sha: &str) {
        self.review(number, reviewer, "APPROVED", commit_sha);
    }

    /// `reviewer` reviews pull request `number` at `commit_sha` with `state`, one of the
    /// forge's review states (either case). On GitLab, a second approval by the same user
    /// changes nothing, and an approval leaves a system note.
    pub fn review(&self, number: u64, reviewer: &str, state: &str, commit_sha: &str) {
        let dialect = self.dialect();
        let state = state.to_ascii_uppercase();
        assert!(
            dialect.review_states.contains(&state.as_str()),
            "unknown {} review state {state:?}: {:?}",
            dialect.label,
            dialect.review_states
        );
        let now = now_iso();
        let mut st = self.lock();
        st.pr_mut(number, dialect);
        st.know(reviewer);
        if dialect.approval_toggles {
            if st.approved(number, reviewer) {
                return;
            }
            st.add_comment(number, reviewer, "approved this merge request".into(), true);
        }
        let id = st.id();
        st.reviews.push(StoredReview {
            id,
            pr: number,
            reviewer: reviewer.to_owned(),
            state,
            commit_id: commit_sha.to_owned(),
            dismissed: false,
            submitted_at: now,
        });
    }

    /// Dismisses `reviewer`'s reviews of pull request `number` (GitLab: withdraws their
    /// approval, with a system note).
    pub fn dismiss(&self, number: u64, reviewer: &str) {
        let dialect = self.dialect();
        let mut st = self.lock();
        let was_approved = st.approved(number, reviewer);
        for r in st
            .reviews
            .iter_mut()
            .filter(|r| r.pr == number && r.reviewer.eq_ignore_ascii_case(reviewer))
        {
            r.dismissed = true;
        }
        if dialect.approval_toggles && was_approved {
            st.add_comment(
                number,
                reviewer,
                "unapproved this merge request".into(),
                true,
            );
        }
    }

    /// Sets `user`'s role on the repository, as the forge spells it (GitHub `write`, GitLab
    /// [`super::gitlab::DEVELOPER`]…). A user never set is unknown to the repository (`404`).
    pub fn set_permission(&self, user: &str, role: &str) {
        let dialect = self.dialect();
        assert!(
            dialect.roles.contains(&role),
            "unknown {} role {role:?}: {:?}",
            dialect.label,
            dialect.roles
        );
        let mut st = self.lock();
        st.know(user);
        st.permissions.insert(
            user.to_ascii_lowercase(),
            (user.to_owned(), role.to_owned()),
        );
    }

    /// Adds a comment by `author` (someone other than the bot, say) on pull request `pr`,
    /// for the comment payload builders.
    pub fn add_comment(&self, pr: u64, author: &str, body: &str) -> Comment {
        let mut st = self.lock();
        st.pr_mut(pr, self.dialect());
        st.know(author);
        let id = st.add_comment(pr, author, body.to_owned(), false);
        comment(st.comment(id).expect("just added"))
    }

    /// The comments on pull request `pr`, oldest first (GitLab's system notes included).
    pub fn comments(&self, pr: u64) -> Vec<Comment> {
        let st = self.lock();
        st.comments
            .iter()
            .filter(|c| c.pr == pr)
            .map(comment)
            .collect()
    }

    /// Every deployment made (GitHub's Deployments API), oldest first, with its statuses.
    pub fn deployments(&self) -> Vec<Deployment> {
        self.lock().deployments.clone()
    }

    /// The statuses posted for commit `sha` (any case), oldest first.
    pub fn statuses(&self, sha: &str) -> Vec<Status> {
        let sha = sha.to_ascii_lowercase();
        let st = self.lock();
        st.statuses
            .iter()
            .filter(|s| s.sha == sha)
            .map(|s| s.status.clone())
            .collect()
    }

    /// The latest status of `context` on `sha`: what the forge shows.
    pub fn latest_status(&self, sha: &str, context: &str) -> Option<Status> {
        self.statuses(sha)
            .into_iter()
            .rev()
            .find(|s| s.context == context)
    }

    /// Every request so far, in the order they were answered.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.all()
    }

    /// The requests for paths or methods the fake does not implement.
    pub fn unhandled(&self) -> Vec<Recorded> {
        self.lock().requests.unhandled()
    }

    /// Forgets the requests recorded so far.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// The next `times` requests whose method is `method` and whose path contains
    /// `path_contains` get `status` (GitHub: `403`/`429` with `X-RateLimit-Remaining: 0`),
    /// after the authentication check, instead of their answer.
    pub fn fail_next(&self, method: &str, path_contains: &str, status: u16, times: u32) {
        self.lock().failures.push(Failure {
            method: method.to_owned(),
            path_contains: path_contains.to_owned(),
            status,
            remaining: times,
        });
    }

    /// Waits until a comment on pull request `pr` satisfies `predicate` (edits count), and
    /// returns it; panics after `timeout`, listing the comments and the latest requests.
    pub fn wait_for_comment(
        &self,
        pr: u64,
        predicate: impl Fn(&Comment) -> bool,
        timeout: Duration,
    ) -> Comment {
        poll(timeout, || {
            self.comments(pr).into_iter().find(|c| predicate(c))
        })
        .unwrap_or_else(|| {
            panic!(
                "timed out after {timeout:?} waiting for a comment on {}{pr}\ncomments:\n{:#?}\n{}",
                self.dialect().pr_word,
                self.comments(pr),
                self.recent_requests(30)
            )
        })
    }

    /// Waits until a status on `sha` satisfies `predicate`, and returns it; panics after
    /// `timeout`, listing the statuses and the latest requests.
    pub fn wait_for_status(
        &self,
        sha: &str,
        predicate: impl Fn(&Status) -> bool,
        timeout: Duration,
    ) -> Status {
        poll(timeout, || {
            self.statuses(sha).into_iter().find(|s| predicate(s))
        })
        .unwrap_or_else(|| {
            panic!(
                "timed out after {timeout:?} waiting for a status on {sha}\nstatuses:\n{:#?}\n{}",
                self.statuses(sha),
                self.recent_requests(30)
            )
        })
    }

    /// The last `n` requests, one line each, for failure messages.
    pub fn recent_requests(&self, n: usize) -> String {
        self.lock().requests.recent(n, self.dialect().label)
    }
}

fn comment(c: &StoredComment) -> Comment {
    Comment {
        id: c.id,
        author: c.author.clone(),
        body: c.body.clone(),
        system: c.system,
        edits: c.edits,
    }
}
