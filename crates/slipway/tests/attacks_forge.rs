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
use util::{Delivery, Event, FakeForge, Forge};
use util::{git, wait_for};

const SECRET: &str = "webhook-secret-for-tests";
const TOKEN: &str = "test-token-never-elsewhere";
const T: Duration = Duration::from_secs(60);
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

/// `slipway serve` on a repository with [`STACK`], its forge pointing at a fresh fake.
fn world(kind: Forge) -> ForgeWorld {
    ForgeWorld::start(kind, STACK, TOKEN, SECRET)
}

/// A delivery of a push of `branch` to `after`, where the kit builds one (GitHub).
fn push_event(kind: Forge, branch: &str, before: &str, after: &str) -> Option<Delivery> {
    (kind == Forge::GitHub).then(|| Delivery {
        event: "push",
        body: fake_github::push_payload(branch, before, after),
    })
}

/// Sends `d` about another repository: acknowledged (so that the forge does not retry or
/// disable the hook) and not acted on.
fn ignored(w: &ForgeWorld, d: &Delivery, what: &str) {
    let (status, reply) = w.send(d);
    assert_eq!(
        status,
        202,
        "{} acknowledges {what} from {OTHER}: {reply}",
        w.kind().name()
    );
    let answer: Value = serde_json::from_str(&reply).expect("a JSON answer");
    assert_eq!(
        answer["handled"],
        false,
        "{}: {what} from {OTHER} is not acted on: {reply}",
        w.kind().name()
    );
    assert!(
        answer["event"]
            .as_str()
            .is_some_and(|e| e.ends_with(".other_repository")),
        "{}: the answer says why: {reply}",
        w.kind().name()
    );
}

/// Our pull request #1 is open, previewed as `pr-1` and approved; then another repository's
/// pull request #1 is opened, commented `/slipway apply prod` on, and closed, all through
/// the same (organisation) hook: none of it touches ours.
fn events_about_another_repository_are_not_acted_on(kind: Forge) {
    let w = world(kind);
    w.serves("prod", "v1");
    w.forge.grant("alice", true);
    w.forge.grant("carol", true);
    let ours = w.push_pr(1, "feature-1", "ours");
    w.add(1, "feature-1", &ours);
    w.handled(&w.pr_event(Event::Opened, 1, "feature-1", &ours));
    w.serves("pr-1", "ours");
    // Approved by someone else with write access: an apply of #1 would be allowed.
    w.forge.approve(1, "carol", &ours);

    let theirs = "f".repeat(40);
    let opened = w.pr_event(Event::Opened, 1, "their-branch", &theirs);
    ignored(
        &w,
        &about_other_repository(&opened, w.forge.repo_id()),
        "an opened pull request",
    );
    let apply = w.commented(1, "alice", "/slipway apply prod");
    ignored(
        &w,
        &about_other_repository(&apply, w.forge.repo_id()),
        "`/slipway apply prod`",
    );
    let closed = w.pr_event(Event::Closed, 1, "their-branch", &theirs);
    ignored(
        &w,
        &about_other_repository(&closed, w.forge.repo_id()),
        "a closed pull request",
    );
    let mut refused = 3;
    let main = git(&w.s.repo, &["rev-parse", "main"]);
    if let Some(push) = push_event(kind, "main", &main, &theirs) {
        ignored(
            &w,
            &about_other_repository(&push, w.forge.repo_id()),
            "a push to main",
        );
        refused += 1;
    }

    // Our own events still work, and are handled after anything the others could have
    // started (events are handled one at a time): `/slipway help` is answered…
    w.handled(&w.commented(1, "alice", "/slipway help"));
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
    w.handled(&w.pr_event(Event::Opened, 1, "feature-1", &next));
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
    let w = ForgeWorld::serve(
        forge,
        STACK,
        &format!("http://{}{prefix}", api.addr()),
        "repository = \"acme/shop\"",
        TOKEN,
        SECRET,
        |_| {},
    );
    let sha = w.push_pr(1, "feature-1", "one");
    w.handled(&w.pr_event(Event::Opened, 1, "feature-1", &sha));
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
    let w = world(kind);
    let repo_path = w.s.repo.display().to_string();
    let sandbox_path = w.s.dir.path().display().to_string();
    // A head the server has not fetched: it fetches, and the fetch fails.
    let sha = "a".repeat(40);
    w.add(1, "feature-1", &sha);
    let moved = MovedAway::new(&w.s.repo);
    w.handled(&w.pr_event(Event::Opened, 1, "feature-1", &sha));
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
    let w = ForgeWorld::serve(
        gh,
        STACK,
        &api,
        &format!(
            "repository = \"acme/old-name\"\nrepository_id = {}",
            fake_github::REPO_ID
        ),
        TOKEN,
        SECRET,
        |_| {},
    );
    let sha = w.push_pr(1, "feature-1", "one");
    let opened = w.pr_event(Event::Opened, 1, "feature-1", &sha);
    w.handled(&opened);
    ignored(
        &w,
        &about_other_repository(&opened, fake_github::REPO_ID),
        "an opened pull request",
    );
}
