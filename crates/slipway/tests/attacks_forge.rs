//! Attacks on the forge boundary, against the real `slipway serve` and fake GitHub, GitLab
//! and Gitea APIs:
//!
//! - Organisation- and group-level webhooks deliver every repository's events under one
//!   secret. A genuine `closed` of another repository's pull request carrying our pull
//!   request's number must not destroy our preview; an `opened` one must post nothing on our
//!   repository; `/slipway apply prod` commented on another repository's pull request must not
//!   apply ours.
//! - A forge API that redirects (301/302/307/308) to another address must not receive
//!   Slipway's token there (GitLab's `PRIVATE-TOKEN` used to follow the redirect).
//! - A git fetch failure quotes the server's repository path: the commit status that reports
//!   it must not.

mod util;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use slipway_testkit::forge::uuid;
use slipway_testkit::http::{Reply, Server as HttpServer};
use util::fake_gitea;
use util::fake_github;
use util::fake_gitlab::{self, DEVELOPER};
use util::world::{self, Served};
use util::{FakeForge, PrSpec};
use util::{Sandbox, git, wait_for};

const SECRET: &str = "webhook-secret-for-tests";
const TOKEN: &str = "test-token-never-elsewhere";
const T: Duration = Duration::from_secs(60);
const MARKER: &str = "<!-- slipway:plan -->";
const BOT: &str = "slipway-bot";
/// The repository an organisation hook also delivers events of.
const OTHER: &str = "acme/other";

use util::world::STACK;

/// One webhook delivery: the forge's event name and the payload.
struct Delivery {
    event: &'static str,
    body: Vec<u8>,
}

impl Delivery {
    /// The same delivery as the forge sends it for [`OTHER`], a repository of the same
    /// organisation: every path and id of our repository is the other one's.
    fn about_other_repository(&self, our_id: u64) -> Delivery {
        let mut v: Value = serde_json::from_slice(&self.body).expect("a JSON payload");
        move_to_other(&mut v, our_id);
        Delivery {
            event: self.event,
            body: serde_json::to_vec(&v).expect("serialize"),
        }
    }
}

fn move_to_other(v: &mut Value, our_id: u64) {
    match v {
        Value::String(s) => {
            *s = s
                .replace("acme/shop", OTHER)
                .replace("acme%2Fshop", "acme%2Fother");
        }
        Value::Number(n) if n.as_u64() == Some(our_id) => *v = json!(our_id + 17),
        Value::Array(items) => items.iter_mut().for_each(|x| move_to_other(x, our_id)),
        Value::Object(map) => map.values_mut().for_each(|x| move_to_other(x, our_id)),
        _ => {}
    }
}

/// A comment or a status, as the test reads them back from a fake.
#[derive(Debug, Clone)]
struct Said {
    author: String,
    body: String,
}

/// How each forge does each step.
trait Forge: Sized {
    const NAME: &'static str;
    const TOKEN_ENV: &'static str;
    /// Our repository's id in payloads.
    const REPO_ID: u64;
    /// The API's path under the fake's root.
    const API_PREFIX: &'static str;
    fn start() -> Self;
    fn api_url(&self) -> String;
    fn pr_ref(n: u64) -> String;
    fn grant_write(&self, user: &str);
    /// Registers pull request `n` on the fake.
    fn add(&self, n: u64, branch: &str, sha: &str);
    fn approve(&self, n: u64, reviewer: &str, sha: &str);
    /// A delivery of pull request `n` (`branch` at `sha`) being opened or closed (`action`
    /// `opened` or `closed`), whether or not the fake knows it.
    fn pr_event(&self, action: &str, n: u64, branch: &str, sha: &str) -> Delivery;
    /// A delivery of `author`'s new comment `body` on pull request `n` (known to the fake).
    fn comment(&self, n: u64, author: &str, body: &str) -> Delivery;
    fn comments(&self, n: u64) -> Vec<Said>;
    /// A delivery of a push of `branch` to `after`, where the fake has a builder for one.
    fn push_event(&self, _branch: &str, _before: &str, _after: &str) -> Option<Delivery> {
        None
    }
    /// `(state, description)` of every status of `sha`.
    fn statuses(&self, sha: &str) -> Vec<(String, String)>;
    fn send(addr: &str, delivery: &Delivery) -> (u16, String);
}

struct GitHub(FakeForge);

impl Forge for GitHub {
    const NAME: &'static str = "github";
    const TOKEN_ENV: &'static str = "GITHUB_TOKEN";
    const REPO_ID: u64 = fake_github::REPO_ID;
    const API_PREFIX: &'static str = "";

    fn start() -> Self {
        GitHub(FakeForge::start(util::Forge::GitHub, BOT))
    }
    fn api_url(&self) -> String {
        self.0.url()
    }
    fn pr_ref(n: u64) -> String {
        format!("refs/pull/{n}/head")
    }
    fn grant_write(&self, user: &str) {
        self.0.set_permission(user, "write");
    }
    fn add(&self, n: u64, branch: &str, sha: &str) {
        self.0.add_pr(fake_github::PrSpec {
            head_ref: branch.into(),
            ..fake_github::PrSpec::new(n, sha)
        });
    }
    fn approve(&self, n: u64, reviewer: &str, sha: &str) {
        self.0.approve(n, reviewer, sha);
    }
    fn pr_event(&self, action: &str, n: u64, branch: &str, sha: &str) -> Delivery {
        let spec = fake_github::PrSpec {
            head_ref: branch.into(),
            ..fake_github::PrSpec::new(n, sha)
        };
        Delivery {
            event: "pull_request",
            body: fake_github::pull_request_payload(action, &spec, false, None),
        }
    }
    fn comment(&self, n: u64, author: &str, body: &str) -> Delivery {
        Delivery {
            event: "issue_comment",
            body: fake_github::issue_comment_payload(n, author, body),
        }
    }
    fn comments(&self, n: u64) -> Vec<Said> {
        self.0
            .comments(n)
            .into_iter()
            .map(|c| Said {
                author: c.author,
                body: c.body,
            })
            .collect()
    }
    fn push_event(&self, branch: &str, before: &str, after: &str) -> Option<Delivery> {
        Some(Delivery {
            event: "push",
            body: fake_github::push_payload(branch, before, after),
        })
    }
    fn statuses(&self, sha: &str) -> Vec<(String, String)> {
        self.0
            .statuses(sha)
            .into_iter()
            .map(|s| (s.state, s.description.unwrap_or_default()))
            .collect()
    }
    fn send(addr: &str, d: &Delivery) -> (u16, String) {
        fake_github::send_webhook(addr, SECRET.as_bytes(), d.event, &uuid(), &d.body)
    }
}

struct GitLab(FakeForge);

impl Forge for GitLab {
    const NAME: &'static str = "gitlab";
    const TOKEN_ENV: &'static str = "GITLAB_TOKEN";
    const REPO_ID: u64 = fake_gitlab::PROJECT_ID;
    const API_PREFIX: &'static str = fake_gitlab::API_PREFIX;

    fn start() -> Self {
        GitLab(FakeForge::start(util::Forge::GitLab, BOT))
    }
    fn api_url(&self) -> String {
        self.0.url()
    }
    fn pr_ref(n: u64) -> String {
        format!("refs/merge-requests/{n}/head")
    }
    fn grant_write(&self, user: &str) {
        self.0.set_permission(user, DEVELOPER);
    }
    fn add(&self, n: u64, branch: &str, sha: &str) {
        self.0.add_pr(PrSpec {
            head_ref: branch.into(),
            ..PrSpec::new(n, sha)
        });
    }
    fn approve(&self, n: u64, reviewer: &str, _sha: &str) {
        self.0.approve(n, reviewer, &self.0.pr(n).head_sha);
    }
    fn pr_event(&self, action: &str, n: u64, branch: &str, sha: &str) -> Delivery {
        let spec = PrSpec {
            head_ref: branch.into(),
            ..PrSpec::new(n, sha)
        };
        let action = match action {
            "opened" => "open",
            "closed" => "close",
            other => panic!("no GitLab action for {other}"),
        };
        Delivery {
            event: "Merge Request Hook",
            body: fake_gitlab::merge_request_payload(action, &spec, &spec.author, None, None),
        }
    }
    fn comment(&self, n: u64, author: &str, body: &str) -> Delivery {
        let note = self.0.add_comment(n, author, body);
        Delivery {
            event: "Note Hook",
            body: fake_gitlab::note_payload(&self.0.pr(n), &note),
        }
    }
    fn comments(&self, n: u64) -> Vec<Said> {
        self.0
            .comments(n)
            .into_iter()
            .filter(|n| !n.system)
            .map(|n| Said {
                author: n.author,
                body: n.body,
            })
            .collect()
    }
    fn statuses(&self, sha: &str) -> Vec<(String, String)> {
        self.0
            .statuses(sha)
            .into_iter()
            .map(|s| (s.state, s.description.unwrap_or_default()))
            .collect()
    }
    fn send(addr: &str, d: &Delivery) -> (u16, String) {
        fake_gitlab::send_webhook(addr, SECRET, d.event, &uuid(), &d.body)
    }
}

struct Gitea(FakeForge);

impl Forge for Gitea {
    const NAME: &'static str = "gitea";
    const TOKEN_ENV: &'static str = "GITEA_TOKEN";
    const REPO_ID: u64 = fake_gitea::REPO_ID;
    const API_PREFIX: &'static str = fake_gitea::API_PREFIX;

    fn start() -> Self {
        Gitea(FakeForge::start(util::Forge::Gitea, BOT))
    }
    fn api_url(&self) -> String {
        self.0.url()
    }
    fn pr_ref(n: u64) -> String {
        format!("refs/pull/{n}/head")
    }
    fn grant_write(&self, user: &str) {
        self.0.set_permission(user, "write");
    }
    fn add(&self, n: u64, branch: &str, sha: &str) {
        self.0.add_pr(fake_gitea::PrSpec {
            head_ref: branch.into(),
            ..fake_gitea::PrSpec::new(n, sha)
        });
    }
    fn approve(&self, n: u64, reviewer: &str, sha: &str) {
        self.0.approve(n, reviewer, sha);
    }
    fn pr_event(&self, action: &str, n: u64, branch: &str, sha: &str) -> Delivery {
        let spec = fake_gitea::PrSpec {
            head_ref: branch.into(),
            ..fake_gitea::PrSpec::new(n, sha)
        };
        Delivery {
            event: "pull_request",
            body: fake_gitea::pull_request_payload(action, &spec, false, None),
        }
    }
    fn comment(&self, n: u64, author: &str, body: &str) -> Delivery {
        let comment = self.0.add_comment(n, author, body);
        Delivery {
            event: "issue_comment",
            body: fake_gitea::issue_comment_payload(&self.0.pr(n), &comment),
        }
    }
    fn comments(&self, n: u64) -> Vec<Said> {
        self.0
            .comments(n)
            .into_iter()
            .map(|c| Said {
                author: c.author,
                body: c.body,
            })
            .collect()
    }
    fn statuses(&self, sha: &str) -> Vec<(String, String)> {
        self.0
            .statuses(sha)
            .into_iter()
            .map(|s| (s.state, s.description.unwrap_or_default()))
            .collect()
    }
    fn send(addr: &str, d: &Delivery) -> (u16, String) {
        fake_gitea::send_webhook(addr, SECRET.as_bytes(), d.event, &uuid(), &d.body)
    }
}

struct World<F: Forge> {
    // Fields drop in order: the controller stops before the sandbox cleans up, so that it
    // starts nothing after the cleanup.
    server: util::Server,
    s: Sandbox,
    forge: F,
    port: u16,
}

impl<F: Forge> World<F> {
    /// `slipway serve` on a repository with [`STACK`], its forge pointing at a fresh fake.
    fn new() -> World<F> {
        let forge = F::start();
        let api = forge.api_url();
        World::with_api(forge, &api, "repository = \"acme/shop\"")
    }

    /// … its forge's `api_url` being `api`, its repository given by the `repository` lines.
    fn with_api(forge: F, api: &str, repository: &str) -> World<F> {
        let section = world::forge_section(F::NAME, repository, api, BOT);
        let (server, s, port) = world::serve_stack(
            STACK,
            &section,
            &[(F::TOKEN_ENV, TOKEN), ("SLIPWAY_WEBHOOK_SECRET", SECRET)],
        );
        World {
            s,
            forge,
            server,
            port,
        }
    }

    fn send(&self, d: &Delivery) -> (u16, String) {
        F::send(&self.server.addr, d)
    }

    /// Sends `d`, which must be acknowledged and acted on.
    fn accepted(&self, d: &Delivery) {
        let (status, reply) = self.send(d);
        assert_eq!(status, 202, "{} {}: {reply}", F::NAME, d.event);
        assert!(reply.contains("\"handled\":true"), "{}: {reply}", F::NAME);
    }

    /// Sends `d` about another repository: acknowledged (so that the forge does not retry or
    /// disable the hook) and not acted on.
    fn ignored(&self, d: &Delivery, what: &str) {
        let (status, reply) = self.send(d);
        assert_eq!(
            status,
            202,
            "{} acknowledges {what} from {OTHER}: {reply}",
            F::NAME
        );
        let answer: Value = serde_json::from_str(&reply).expect("a JSON answer");
        assert_eq!(
            answer["handled"],
            false,
            "{}: {what} from {OTHER} is not acted on: {reply}",
            F::NAME
        );
        assert!(
            answer["event"]
                .as_str()
                .is_some_and(|e| e.ends_with(".other_repository")),
            "{}: the answer says why: {reply}",
            F::NAME
        );
    }

    fn bot_replies(&self, n: u64) -> Vec<String> {
        self.forge
            .comments(n)
            .into_iter()
            .filter(|c| c.author == BOT && !c.body.contains(MARKER))
            .map(|c| c.body)
            .collect()
    }

    /// The audit log, through the API with an admin token.
    fn audit(&self) -> Vec<Value> {
        let out = self.s.ok(&["token", "create", "--role", "admin"]);
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let answer = fake_github::http_request(
            &self.server.addr,
            "GET",
            "/api/v1/audit?limit=1000",
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
        .expect("audit");
        let v: Value = serde_json::from_str(&answer.body).expect("json");
        v["entries"].as_array().cloned().unwrap_or_default()
    }
}

impl<F: Forge> world::Served for World<F> {
    fn sandbox(&self) -> &Sandbox {
        &self.s
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn pr_ref(&self, n: u64) -> String {
        F::pr_ref(n)
    }
}

/// Our pull request #1 is open, previewed as `pr-1` and approved; then another repository's
/// pull request #1 is opened, commented `/slipway apply prod` on, and closed, all through
/// the same (organisation) hook: none of it touches ours.
fn events_about_another_repository_are_not_acted_on<F: Forge>() {
    let w = World::<F>::new();
    w.serves("prod", "v1");
    w.forge.grant_write("alice");
    w.forge.grant_write("carol");
    let ours = w.push_pr(1, "feature-1", "ours");
    w.forge.add(1, "feature-1", &ours);
    w.accepted(&w.forge.pr_event("opened", 1, "feature-1", &ours));
    w.serves("pr-1", "ours");
    // Approved by someone else with write access: an apply of #1 would be allowed.
    w.forge.approve(1, "carol", &ours);

    let theirs = "f".repeat(40);
    let opened = w.forge.pr_event("opened", 1, "their-branch", &theirs);
    w.ignored(
        &opened.about_other_repository(F::REPO_ID),
        "an opened pull request",
    );
    let apply = w.forge.comment(1, "alice", "/slipway apply prod");
    w.ignored(
        &apply.about_other_repository(F::REPO_ID),
        "`/slipway apply prod`",
    );
    let closed = w.forge.pr_event("closed", 1, "their-branch", &theirs);
    w.ignored(
        &closed.about_other_repository(F::REPO_ID),
        "a closed pull request",
    );
    let mut refused = 3;
    let main = git(&w.s.repo, &["rev-parse", "main"]);
    if let Some(push) = w.forge.push_event("main", &main, &theirs) {
        w.ignored(&push.about_other_repository(F::REPO_ID), "a push to main");
        refused += 1;
    }

    // Our own events still work, and are handled after anything the others could have
    // started (events are handled one at a time): `/slipway help` is answered…
    w.accepted(&w.forge.comment(1, "alice", "/slipway help"));
    wait_for("the answer to /slipway help", T, || {
        w.bot_replies(1)
            .into_iter()
            .find(|b| b.contains("/slipway apply"))
    });
    assert!(
        w.environments().contains(&"pr-1".to_string()),
        "{}: our pr-1 was not destroyed by {OTHER}'s close",
        F::NAME
    );
    // … and a push to #1 is previewed.
    let next = w.push_pr(1, "feature-1", "ours-2");
    w.accepted(&w.forge.pr_event("opened", 1, "feature-1", &next));
    w.serves("pr-1", "ours-2");
    assert_eq!(
        w.page("prod").as_deref(),
        Some("v1"),
        "{}: prod was not applied from another repository's comment",
        F::NAME
    );
    let replies = w.bot_replies(1);
    assert_eq!(
        replies.len(),
        1,
        "{}: the only answer on our #1 is to our `/slipway help`, none to the other \
         repository's apply: {replies:#?}",
        F::NAME
    );
    assert!(
        w.forge.statuses(&theirs).is_empty(),
        "{}: no status was posted on our repository for {OTHER}'s commit: {:?}",
        F::NAME,
        w.forge.statuses(&theirs)
    );
    let refusals: Vec<String> = w
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "webhook.receive" && e["outcome"] == "refused")
        .filter_map(|e| e["detail"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        refusals.iter().filter(|d| d.contains(OTHER)).count(),
        refused,
        "{}: each delivery about {OTHER} is audited as refused: {refusals:#?}",
        F::NAME
    );
}

#[test]
fn github_events_about_another_repository_are_not_acted_on() {
    events_about_another_repository_are_not_acted_on::<GitHub>();
}

#[test]
fn gitlab_events_about_another_repository_are_not_acted_on() {
    events_about_another_repository_are_not_acted_on::<GitLab>();
}

#[test]
fn gitea_events_about_another_repository_are_not_acted_on() {
    events_about_another_repository_are_not_acted_on::<Gitea>();
}

/// The headers of every request a server received.
type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// A server that answers `200 {}` to anything and keeps the headers it saw.
fn elsewhere() -> (HttpServer, Seen) {
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let server = HttpServer::start("elsewhere", move |_| {
        move |req: slipway_testkit::http::Request| {
            log.lock().expect("not poisoned").push(req.headers.clone());
            Reply::json(200, json!({}))
        }
    });
    (server, seen)
}

/// A forge API that answers every request with `status` to the same path on `target`.
fn redirector(status: u16, target: String) -> (HttpServer, Seen) {
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let server = HttpServer::start("redirector", move |_| {
        move |req: slipway_testkit::http::Request| {
            log.lock().expect("not poisoned").push(req.headers.clone());
            Reply::json(status, json!({"message": "moved"}))
                .header("Location", format!("http://{target}{}", req.path))
        }
    });
    (server, seen)
}

fn carries_token(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(_, v)| v.contains(TOKEN))
}

/// The forge API redirects every call to another port (another origin): Slipway reaches the
/// forge (so the attack is performed), and the other server never sees the token.
fn the_token_never_follows_a_redirect<F: Forge>(status: u16) {
    let (other, seen_elsewhere) = elsewhere();
    let (api, seen_by_api) = redirector(status, other.addr().to_string());
    let w = World::<F>::with_api(
        F::start(),
        &format!("http://{}{}", api.addr(), F::API_PREFIX),
        "repository = \"acme/shop\"",
    );
    let sha = w.push_pr(1, "feature-1", "one");
    w.accepted(&w.forge.pr_event("opened", 1, "feature-1", &sha));
    // Two calls: the second starts after the first, and any redirect it followed, ended.
    wait_for("Slipway called the forge API twice", T, || {
        let seen = seen_by_api.lock().expect("not poisoned");
        (seen.iter().filter(|h| carries_token(h)).count() >= 2).then_some(())
    });
    let leaked: Vec<_> = seen_elsewhere
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|h| carries_token(h))
        .cloned()
        .collect();
    assert!(
        leaked.is_empty(),
        "{} ({status}): the other origin got the token: {leaked:#?}",
        F::NAME
    );
    assert!(
        seen_elsewhere.lock().expect("not poisoned").is_empty(),
        "{} ({status}): redirects are not followed at all",
        F::NAME
    );
}

#[test]
fn github_token_never_follows_a_redirect() {
    the_token_never_follows_a_redirect::<GitHub>(302);
    the_token_never_follows_a_redirect::<GitHub>(307);
}

#[test]
fn gitlab_token_never_follows_a_redirect() {
    the_token_never_follows_a_redirect::<GitLab>(302);
    the_token_never_follows_a_redirect::<GitLab>(307);
}

#[test]
fn gitea_token_never_follows_a_redirect() {
    the_token_never_follows_a_redirect::<Gitea>(302);
    the_token_never_follows_a_redirect::<Gitea>(308);
}

/// Moves a directory away, and back when dropped (the sandbox needs it back to clean up).
struct MovedAway {
    from: PathBuf,
    to: PathBuf,
}

impl MovedAway {
    fn new(from: &std::path::Path) -> MovedAway {
        let to = from.with_extension("moved-away");
        std::fs::rename(from, &to).expect("move the repository away");
        MovedAway {
            from: from.to_path_buf(),
            to,
        }
    }
}

impl Drop for MovedAway {
    fn drop(&mut self) {
        let _ = std::fs::rename(&self.to, &self.from);
    }
}

/// The repository cannot be fetched (it moved): the status that says planning failed names no
/// path of the server, not the repository's, not the home's.
fn a_fetch_failure_shows_no_server_path<F: Forge>() {
    let w = World::<F>::new();
    let repo_path = w.s.repo.display().to_string();
    let sandbox_path = w.s.dir.path().display().to_string();
    // A head the server has not fetched: it fetches, and the fetch fails.
    let sha = "a".repeat(40);
    w.forge.add(1, "feature-1", &sha);
    let moved = MovedAway::new(&w.s.repo);
    w.accepted(&w.forge.pr_event("opened", 1, "feature-1", &sha));
    let failed = wait_for("a failed slipway/plan status", T, || {
        w.forge
            .statuses(&sha)
            .into_iter()
            .find(|(state, _)| state != "pending")
    });
    drop(moved);
    let (_, description) = &failed;
    for private in [
        repo_path.as_str(),
        sandbox_path.as_str(),
        "file://",
        &sandbox_path[..sandbox_path.len().min(10)],
    ] {
        assert!(
            !description.contains(private),
            "{}: the status names no server path ({private}): {description:?}",
            F::NAME
        );
    }
    assert!(
        description.contains("[repository]"),
        "{}: the status still says what failed: {description:?}",
        F::NAME
    );
    for c in w.forge.comments(1) {
        assert!(
            !c.body.contains(&sandbox_path),
            "{}: no comment names a server path: {}",
            F::NAME,
            c.body
        );
    }
}

#[test]
fn github_fetch_failure_shows_no_server_path() {
    a_fetch_failure_shows_no_server_path::<GitHub>();
}

#[test]
fn gitlab_fetch_failure_shows_no_server_path() {
    a_fetch_failure_shows_no_server_path::<GitLab>();
}

#[test]
fn gitea_fetch_failure_shows_no_server_path() {
    a_fetch_failure_shows_no_server_path::<Gitea>();
}

/// With `repository_id`, a repository renamed since the configuration was written is still
/// ours, and another one is still not.
#[test]
fn a_configured_repository_id_matches_a_renamed_repository_only() {
    let gh = GitHub::start();
    let api = gh.api_url();
    let w = World::<GitHub>::with_api(
        gh,
        &api,
        &format!(
            "repository = \"acme/old-name\"\nrepository_id = {}",
            fake_github::REPO_ID
        ),
    );
    let sha = w.push_pr(1, "feature-1", "one");
    let opened = w.forge.pr_event("opened", 1, "feature-1", &sha);
    w.accepted(&opened);
    w.ignored(
        &opened.about_other_repository(fake_github::REPO_ID),
        "an opened pull request",
    );
}
