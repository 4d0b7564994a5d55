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
use slipway_testkit::http::{Reply, Server as HttpServer};
use util::fake_github;
use util::world::{ForgeWorld, Served};
use util::{Delivery, Event, FakeForge, Forge, PrSpec};
use util::{git, wait_for};

const SECRET: &str = "webhook-secret-for-tests";
const TOKEN: &str = "test-token-never-elsewhere";
const T: Duration = Duration::from_secs(60);
const MARKER: &str = "<!-- slipway:plan -->";
const BOT: &str = "slipway-bot";
/// The repository an organisation hook also delivers events of.
const OTHER: &str = "acme/other";

use util::world::STACK;

/// The same delivery as the forge sends it for [`OTHER`], a repository of the same
/// organisation: every path and id of our repository is the other one's.
fn about_other_repository(d: &Delivery, our_id: u64) -> Delivery {
    let mut v: Value = serde_json::from_slice(&d.body).expect("a JSON payload");
    move_to_other(&mut v, our_id);
    Delivery {
        event: d.event,
        body: serde_json::to_vec(&v).expect("serialize"),
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

/// A world on one forge, and the forge's side of each step.
struct World(ForgeWorld);

impl std::ops::Deref for World {
    type Target = ForgeWorld;
    fn deref(&self) -> &ForgeWorld {
        &self.0
    }
}

impl World {
    /// `slipway serve` on a repository with [`STACK`], its forge pointing at a fresh fake.
    fn new(kind: Forge) -> World {
        let forge = FakeForge::start(kind, BOT);
        let api = forge.url();
        World::with_api(forge, &api, "repository = \"acme/shop\"")
    }

    /// … its forge's `api_url` being `api`, its repository given by the `repository` lines.
    fn with_api(forge: FakeForge, api: &str, repository: &str) -> World {
        World(ForgeWorld::serve(
            forge, STACK, api, repository, TOKEN, SECRET,
        ))
    }

    /// Registers pull request `n` on the fake.
    fn add(&self, n: u64, branch: &str, sha: &str) {
        self.forge.add_pr(PrSpec {
            head_ref: branch.into(),
            ..PrSpec::new(n, sha)
        });
    }

    /// A delivery of pull request `n` (`branch` at `sha`) being opened or closed, whether or
    /// not the fake knows it.
    fn pr_event(&self, event: Event, n: u64, branch: &str, sha: &str) -> Delivery {
        let spec = PrSpec {
            head_ref: branch.into(),
            ..PrSpec::new(n, sha)
        };
        self.forge.delivery(&spec, &event)
    }

    /// A delivery of `author`'s new comment `body` on pull request `n` (known to the fake).
    fn comment(&self, n: u64, author: &str, body: &str) -> Delivery {
        let comment = self.forge.add_comment(n, author, body);
        self.forge
            .delivery(&self.forge.pr(n), &Event::Commented { comment })
    }

    /// A delivery of a push of `branch` to `after`, where the kit builds one (GitHub).
    fn push_event(&self, branch: &str, before: &str, after: &str) -> Option<Delivery> {
        (self.kind() == Forge::GitHub).then(|| Delivery {
            event: "push",
            body: fake_github::push_payload(branch, before, after),
        })
    }

    /// `(state, description)` of every status of `sha`.
    fn statuses(&self, sha: &str) -> Vec<(String, String)> {
        self.forge
            .statuses(sha)
            .into_iter()
            .map(|s| (s.state, s.description.unwrap_or_default()))
            .collect()
    }

    /// Sends `d` about another repository: acknowledged (so that the forge does not retry or
    /// disable the hook) and not acted on.
    fn ignored(&self, d: &Delivery, what: &str) {
        let (status, reply) = self.send(d);
        assert_eq!(
            status,
            202,
            "{} acknowledges {what} from {OTHER}: {reply}",
            self.kind().name()
        );
        let answer: Value = serde_json::from_str(&reply).expect("a JSON answer");
        assert_eq!(
            answer["handled"],
            false,
            "{}: {what} from {OTHER} is not acted on: {reply}",
            self.kind().name()
        );
        assert!(
            answer["event"]
                .as_str()
                .is_some_and(|e| e.ends_with(".other_repository")),
            "{}: the answer says why: {reply}",
            self.kind().name()
        );
    }

    fn bot_replies(&self, n: u64) -> Vec<String> {
        self.comments(n)
            .into_iter()
            .filter(|c| c.author == BOT && !c.body.contains(MARKER))
            .map(|c| c.body)
            .collect()
    }
}

/// Our pull request #1 is open, previewed as `pr-1` and approved; then another repository's
/// pull request #1 is opened, commented `/slipway apply prod` on, and closed, all through
/// the same (organisation) hook: none of it touches ours.
fn events_about_another_repository_are_not_acted_on(kind: Forge) {
    let w = World::new(kind);
    w.serves("prod", "v1");
    w.forge.grant("alice", true);
    w.forge.grant("carol", true);
    let ours = w.push_pr(1, "feature-1", "ours");
    w.add(1, "feature-1", &ours);
    w.accepted(&w.pr_event(Event::Opened, 1, "feature-1", &ours));
    w.serves("pr-1", "ours");
    // Approved by someone else with write access: an apply of #1 would be allowed.
    w.forge.approve(1, "carol", &ours);

    let theirs = "f".repeat(40);
    let opened = w.pr_event(Event::Opened, 1, "their-branch", &theirs);
    w.ignored(
        &about_other_repository(&opened, w.forge.repo_id()),
        "an opened pull request",
    );
    let apply = w.comment(1, "alice", "/slipway apply prod");
    w.ignored(
        &about_other_repository(&apply, w.forge.repo_id()),
        "`/slipway apply prod`",
    );
    let closed = w.pr_event(Event::Closed, 1, "their-branch", &theirs);
    w.ignored(
        &about_other_repository(&closed, w.forge.repo_id()),
        "a closed pull request",
    );
    let mut refused = 3;
    let main = git(&w.s.repo, &["rev-parse", "main"]);
    if let Some(push) = w.push_event("main", &main, &theirs) {
        w.ignored(
            &about_other_repository(&push, w.forge.repo_id()),
            "a push to main",
        );
        refused += 1;
    }

    // Our own events still work, and are handled after anything the others could have
    // started (events are handled one at a time): `/slipway help` is answered…
    w.accepted(&w.comment(1, "alice", "/slipway help"));
    wait_for("the answer to /slipway help", T, || {
        w.bot_replies(1)
            .into_iter()
            .find(|b| b.contains("/slipway apply"))
    });
    assert!(
        w.environments().contains(&"pr-1".to_string()),
        "{}: our pr-1 was not destroyed by {OTHER}'s close",
        kind.name()
    );
    // … and a push to #1 is previewed.
    let next = w.push_pr(1, "feature-1", "ours-2");
    w.accepted(&w.pr_event(Event::Opened, 1, "feature-1", &next));
    w.serves("pr-1", "ours-2");
    assert_eq!(
        w.page("prod").as_deref(),
        Some("v1"),
        "{}: prod was not applied from another repository's comment",
        kind.name()
    );
    let replies = w.bot_replies(1);
    assert_eq!(
        replies.len(),
        1,
        "{}: the only answer on our #1 is to our `/slipway help`, none to the other \
         repository's apply: {replies:#?}",
        kind.name()
    );
    assert!(
        w.statuses(&theirs).is_empty(),
        "{}: no status was posted on our repository for {OTHER}'s commit: {:?}",
        kind.name(),
        w.statuses(&theirs)
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
        kind.name()
    );
}

#[test]
fn github_events_about_another_repository_are_not_acted_on() {
    events_about_another_repository_are_not_acted_on(Forge::GitHub);
}

#[test]
fn gitlab_events_about_another_repository_are_not_acted_on() {
    events_about_another_repository_are_not_acted_on(Forge::GitLab);
}

#[test]
fn gitea_events_about_another_repository_are_not_acted_on() {
    events_about_another_repository_are_not_acted_on(Forge::Gitea);
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
fn the_token_never_follows_a_redirect(kind: Forge, status: u16) {
    let (other, seen_elsewhere) = elsewhere();
    let (api, seen_by_api) = redirector(status, other.addr().to_string());
    let forge = FakeForge::start(kind, BOT);
    let prefix = forge
        .url()
        .replacen(&format!("http://{}", forge.addr()), "", 1);
    let w = World::with_api(
        forge,
        &format!("http://{}{prefix}", api.addr()),
        "repository = \"acme/shop\"",
    );
    let sha = w.push_pr(1, "feature-1", "one");
    w.accepted(&w.pr_event(Event::Opened, 1, "feature-1", &sha));
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
        kind.name()
    );
    assert!(
        seen_elsewhere.lock().expect("not poisoned").is_empty(),
        "{} ({status}): redirects are not followed at all",
        kind.name()
    );
}

#[test]
fn github_token_never_follows_a_redirect() {
    the_token_never_follows_a_redirect(Forge::GitHub, 302);
    the_token_never_follows_a_redirect(Forge::GitHub, 307);
}

#[test]
fn gitlab_token_never_follows_a_redirect() {
    the_token_never_follows_a_redirect(Forge::GitLab, 302);
    the_token_never_follows_a_redirect(Forge::GitLab, 307);
}

#[test]
fn gitea_token_never_follows_a_redirect() {
    the_token_never_follows_a_redirect(Forge::Gitea, 302);
    the_token_never_follows_a_redirect(Forge::Gitea, 308);
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
fn a_fetch_failure_shows_no_server_path(kind: Forge) {
    let w = World::new(kind);
    let repo_path = w.s.repo.display().to_string();
    let sandbox_path = w.s.dir.path().display().to_string();
    // A head the server has not fetched: it fetches, and the fetch fails.
    let sha = "a".repeat(40);
    w.add(1, "feature-1", &sha);
    let moved = MovedAway::new(&w.s.repo);
    w.accepted(&w.pr_event(Event::Opened, 1, "feature-1", &sha));
    let failed = wait_for("a failed slipway/plan status", T, || {
        w.statuses(&sha)
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
            kind.name()
        );
    }
    assert!(
        description.contains("[repository]"),
        "{}: the status still says what failed: {description:?}",
        kind.name()
    );
    for c in w.comments(1) {
        assert!(
            !c.body.contains(&sandbox_path),
            "{}: no comment names a server path: {}",
            kind.name(),
            c.body
        );
    }
}

#[test]
fn github_fetch_failure_shows_no_server_path() {
    a_fetch_failure_shows_no_server_path(Forge::GitHub);
}

#[test]
fn gitlab_fetch_failure_shows_no_server_path() {
    a_fetch_failure_shows_no_server_path(Forge::GitLab);
}

#[test]
fn gitea_fetch_failure_shows_no_server_path() {
    a_fetch_failure_shows_no_server_path(Forge::Gitea);
}

/// With `repository_id`, a repository renamed since the configuration was written is still
/// ours, and another one is still not.
#[test]
fn a_configured_repository_id_matches_a_renamed_repository_only() {
    let gh = FakeForge::start(Forge::GitHub, BOT);
    let api = gh.url();
    let w = World::with_api(
        gh,
        &api,
        &format!(
            "repository = \"acme/old-name\"\nrepository_id = {}",
            fake_github::REPO_ID
        ),
    );
    let sha = w.push_pr(1, "feature-1", "one");
    let opened = w.pr_event(Event::Opened, 1, "feature-1", &sha);
    w.accepted(&opened);
    w.ignored(
        &about_other_repository(&opened, fake_github::REPO_ID),
        "an opened pull request",
    );
}
