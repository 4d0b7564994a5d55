//! Attacks on how the pull-request gate judges approvals and pull requests (the security review
//! of the gate), each performed end to end against the real `slipway serve`, a real git
//! repository carrying the forge's pull request refs, the forges' own webhook payloads and the
//! fake GitHub and GitLab APIs; each shows the attack fails, and where it matters that the
//! legitimate path still works.
//!
//! - An approval of an old head counted for a new one (GitLab approvals name no commit) when
//!   something other than the push's own webhook saw the new head first, or when the forge
//!   could not list the approvals then.
//! - An approval given while a pull request was into an unreviewed branch counted after its
//!   base was changed to `main`.
//! - GitLab's merge request webhooks name whoever triggered them, and that was taken for the
//!   author: someone else's push made the author's own approval count.
//! - A pull request missing from the forge's (page-capped) list of open ones, or whose details
//!   could not be read, was taken for closed: its locks released.
//! - A captured signed `closed` delivery, replayed under a fresh delivery id, released a lock.
//! - A pull request padded with 2,000 comment reviews pushed a reviewer's later "changes
//!   requested" past the pages Slipway read (20), so that their earlier approval stood.
//! - Someone with write access pushed to another's pull request (or to its branch before it
//!   was opened), approved that head, and applied it: only the author's approval was left
//!   out.

mod util;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use slipway_testkit::http::{Reply, Request, Server as HttpServer};
use util::fake_github::{self as gh, issue_comment_payload, pull_request_payload};
use util::fake_gitlab::{self as gl, DEVELOPER};
use util::world::{self, Served};
use util::{Event, FakeForge, Forge, PrSpec, PrState};
use util::{Sandbox, git, stored_events, wait_for};

const SECRET: &str = "webhook-secret-for-tests";
const T: Duration = Duration::from_secs(60);
const MARKER: &str = "<!-- slipway:plan -->";
const BOT: &str = "slipway-bot";

use util::world::STACK;

/// A real HTTP proxy in front of a fake forge: it forwards every request, and can leave pull
/// requests out of the list of open ones (as a forge's last page would) and fail requests.
struct Proxy {
    server: HttpServer,
    /// The API's path prefix (GitLab's `/api/v4`).
    prefix: String,
    /// Pull request numbers left out of `GET …/pulls` (the list of open ones).
    hidden: Arc<Mutex<BTreeSet<u64>>>,
    /// Path suffixes answered `502` instead of forwarded.
    failing: Arc<Mutex<Vec<String>>>,
    /// `METHOD path status` of every request, in order.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// In front of the forge API at `upstream` (`http://HOST:PORT/PREFIX`).
    fn start(upstream: &str) -> Proxy {
        let rest = upstream
            .strip_prefix("http://")
            .expect("the fake forges speak plain HTTP");
        let (upstream, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (upstream, prefix) = (upstream.to_string(), prefix.to_string());
        let hidden: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
        let failing: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let (h, f, s) = (hidden.clone(), failing.clone(), seen.clone());
        let server = HttpServer::start("forge proxy", move |_| {
            move |req: Request| {
                let fail = f
                    .lock()
                    .expect("no panics while held")
                    .iter()
                    .any(|p| req.path.ends_with(p.as_str()));
                if fail {
                    s.lock()
                        .expect("no panics while held")
                        .push(format!("{} {} 502", req.method, req.path));
                    return Reply::json(502, json!({"message": "bad gateway"}));
                }
                let target = if req.query.is_empty() {
                    req.path.clone()
                } else {
                    format!("{}?{}", req.path, req.query)
                };
                let headers: Vec<(&str, &str)> = req
                    .headers
                    .iter()
                    .filter(|(k, _)| {
                        !["host", "content-length", "connection", "transfer-encoding"]
                            .contains(&k.to_ascii_lowercase().as_str())
                    })
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let answer = gh::http_request(&upstream, &req.method, &target, &headers, &req.body)
                    .expect("the fake forge answers");
                s.lock()
                    .expect("no panics while held")
                    .push(format!("{} {} {}", req.method, req.path, answer.status));
                let mut body: Option<Value> = serde_json::from_str(&answer.body).ok();
                if req.method == "GET"
                    && req.path.ends_with("/pulls")
                    && let Some(Value::Array(items)) = body.as_mut()
                {
                    let hidden = h.lock().expect("no panics while held");
                    items.retain(|p| p["number"].as_u64().is_none_or(|n| !hidden.contains(&n)));
                }
                let mut reply = Reply {
                    status: answer.status,
                    body,
                    headers: Vec::new(),
                };
                if let Some(link) = answer.header("link") {
                    reply = reply.header("Link", link.to_string());
                }
                reply
            }
        });
        Proxy {
            server,
            prefix,
            hidden,
            failing,
            seen,
        }
    }

    fn url(&self) -> String {
        format!("http://{}{}", self.server.addr(), self.prefix)
    }

    /// How many requests so far were `GET` of a path ending in `suffix`.
    fn count(&self, suffix: &str) -> usize {
        self.seen
            .lock()
            .expect("no panics while held")
            .iter()
            .filter(|l| {
                l.split(' ')
                    .nth(1)
                    .is_some_and(|p| l.starts_with("GET ") && p.ends_with(suffix))
            })
            .count()
    }

    /// Waits until `n` more `GET`s of a path ending in `suffix` were made.
    fn wait_for_more(&self, suffix: &str, n: usize) {
        let from = self.count(suffix);
        wait_for(&format!("{n} more GET …{suffix}"), T, || {
            (self.count(suffix) >= from + n).then_some(())
        });
    }
}

/// `slipway serve` with a forge configured.
struct Engine {
    s: Sandbox,
    server: util::Server,
    port: u16,
}

impl Engine {
    /// `[forge.NAME]` at `api_url`; `extra` is appended to the engine configuration.
    fn start(forge: &str, api_url: &str, token_env: &str, extra: &str) -> Engine {
        let section = world::forge_section(forge, "repository = \"acme/shop\"", api_url, BOT);
        let (server, s, port) = world::serve_stack(
            STACK,
            &format!("{section}{extra}"),
            &[
                (token_env, "test-token"),
                ("SLIPWAY_WEBHOOK_SECRET", SECRET),
            ],
        );
        Engine { s, server, port }
    }

    /// A commit on `branch` (from `from`) with `greeting.txt` = `text`, published as
    /// `pr_ref` when given.
    fn commit_on(&self, from: &str, branch: &str, text: &str, pr_ref: Option<&str>) -> String {
        world::commit_on(&self.s, from, branch, text, None, pr_ref)
    }

    // ---- GitHub ----

    fn gh_deliver(&self, event: &str, id: &str, body: &[u8]) -> (u16, String) {
        gh::send_webhook(&self.server.addr, SECRET.as_bytes(), event, id, body)
    }

    fn gh_accepted(&self, event: &str, body: &[u8]) {
        let (status, reply) = self.gh_deliver(event, &fresh_id(), body);
        assert_eq!(status, 202, "{event}: {reply}");
        assert!(reply.contains("\"handled\":true"), "{event}: {reply}");
    }

    /// Opens `spec` on the fake and tells Slipway as GitHub would: its author's push of its
    /// branch (unless it is a fork's), then the opening; waits for the plan.
    fn gh_open(&self, forge: &FakeForge, spec: PrSpec) {
        let pushed = (!spec.fork).then(|| {
            gh::push_payload_by(
                &spec.head_ref,
                &"0".repeat(40),
                &spec.head_sha,
                &spec.author,
            )
        });
        if let Some(pushed) = pushed {
            // The same push of a branch that two pull requests share is one delivery.
            let (status, reply) = self.gh_deliver("push", &fresh_id(), &pushed);
            assert_eq!(status, 202, "push: {reply}");
        }
        self.gh_opened(forge, spec);
    }

    /// Opens `spec` on the fake and tells Slipway of the opening only; waits for the plan.
    fn gh_opened(&self, forge: &FakeForge, spec: PrSpec) {
        let number = spec.number;
        forge.add_pr(spec);
        self.gh_accepted(
            "pull_request",
            &pull_request_payload("opened", &forge.pr(number), false, None),
        );
        forge.wait_for_comment(number, |c| c.body.contains(MARKER), T);
    }

    /// Posts `command` on `pr` as `author`; returns Slipway's answer (its next comment that is
    /// not the plan).
    fn gh_command(&self, forge: &FakeForge, pr: u64, author: &str, command: &str) -> String {
        let seen = forge.comments(pr).iter().map(|c| c.id).max().unwrap_or(0);
        self.gh_accepted("issue_comment", &issue_comment_payload(pr, author, command));
        forge
            .wait_for_comment(
                pr,
                |c| c.id > seen && c.author == BOT && !c.body.contains(MARKER),
                T,
            )
            .body
    }

    // ---- GitLab ----

    fn gl_accepted(&self, event: &str, body: &[u8]) {
        let (status, reply) = gl::send_webhook(&self.server.addr, SECRET, event, &fresh_id(), body);
        assert_eq!(status, 202, "{event}: {reply}");
        assert!(reply.contains("\"handled\":true"), "{event}: {reply}");
    }

    /// A `Merge Request Hook` for `action` on merge request `iid`, triggered by `actor`.
    fn gl_event(
        &self,
        forge: &FakeForge,
        action: &str,
        iid: u64,
        actor: &str,
        oldrev: Option<&str>,
    ) {
        self.gl_accepted(
            "Merge Request Hook",
            &gl::merge_request_payload(action, &forge.pr(iid), actor, oldrev, None),
        );
    }

    fn gl_command(&self, forge: &FakeForge, iid: u64, author: &str, command: &str) -> String {
        let seen = forge.comments(iid).iter().map(|n| n.id).max().unwrap_or(0);
        let note = forge.add_comment(iid, author, command);
        self.gl_accepted("Note Hook", &gl::note_payload(&forge.pr(iid), &note));
        forge
            .wait_for_comment(
                iid,
                |n| n.id > seen && n.author == BOT && !n.system && !n.body.contains(MARKER),
                T,
            )
            .body
    }

    /// Merge request `iid`, from `branch` at a new commit off `main` with `text`, opened by
    /// `author` and planned: its head.
    fn gl_opened(
        &self,
        forge: &FakeForge,
        iid: u64,
        branch: &str,
        text: &str,
        author: &str,
    ) -> String {
        let head = self.commit_on("main", branch, text, Some(&mr_ref(iid)));
        forge.add_pr(PrSpec {
            head_ref: branch.into(),
            ..PrSpec::new(iid, &head)
        });
        self.gl_event(forge, "open", iid, author, None);
        self.gl_planned(forge, &head);
        head
    }

    /// `pusher` pushes a new commit with `text` to merge request `iid`'s branch, its webhook
    /// delivered, and Slipway plans it: the new head.
    fn gl_pushed(&self, forge: &FakeForge, iid: u64, text: &str, pusher: &str) -> String {
        let pr = forge.pr(iid);
        let head = self.commit_on(&pr.head_ref, &pr.head_ref, text, Some(&mr_ref(iid)));
        forge.set_head(iid, &head);
        self.gl_event(forge, "update", iid, pusher, Some(&pr.head_sha));
        self.gl_planned(forge, &head);
        head
    }

    /// Waits until Slipway planned `sha` (its `slipway/plan` status is final).
    fn gl_planned(&self, forge: &FakeForge, sha: &str) {
        forge.wait_for_status(
            sha,
            |s| s.context == "slipway/plan" && s.state != "pending" && s.state != "running",
            T,
        );
    }
}

impl world::Served for Engine {
    fn sandbox(&self) -> &Sandbox {
        &self.s
    }
    fn port(&self) -> u16 {
        self.port
    }
}

fn fresh_id() -> String {
    slipway_testkit::forge::uuid()
}

fn mr_ref(iid: u64) -> String {
    format!("refs/merge-requests/{iid}/head")
}

/// A project access token's user is a member with Developer access: a pipeline of the
/// author's own branch that holds the token approved the merge request as that user, and
/// the author's `/slipway apply prod` passed "approved" alone. An automation account's
/// approval counts for nothing.
#[test]
fn gitlab_an_access_token_s_approval_does_not_count() {
    let forge = FakeForge::start(Forge::GitLab, BOT);
    let w = Engine::start("gitlab", &forge.url(), "GITLAB_TOKEN", "");
    for user in ["alice", "bob", "project_7_bot_ci"] {
        forge.set_permission(user, DEVELOPER);
    }
    w.serves("prod", "v1");
    w.gl_opened(&forge, 3, "feature-3", "first", "alice");
    let head = w.gl_pushed(&forge, 3, "approved by a pipeline", "alice");
    forge.approve(3, "project_7_bot_ci", &head);
    let answer = w.gl_command(&forge, 3, "alice", "/slipway apply prod");
    assert!(
        answer.contains("apply requirements are not met") && answer.contains("automation"),
        "{answer}"
    );
    assert_eq!(w.page("prod").as_deref(), Some("v1"));
    // A person's approval counts.
    forge.approve(3, "bob", &head);
    let answer = w.gl_command(&forge, 3, "alice", "/slipway apply prod");
    assert!(answer.contains("Applied #3"), "{answer}");
}

/// GitLab's approvals name no commit: Slipway remembers who had approved when the head moved.
/// It did so only when the push's own webhook moved the recorded head: a `/slipway preview`
/// handled first (it records the head the forge shows) moved it without, so the reviewer of
/// the old head was never marked, and `/slipway apply prod` passed "approved" for code nobody
/// reviewed. And when the forge could not list the approvals as the head moved, the head moved
/// anyway and the list was lost. Now every path that moves the head marks them, and one that
/// cannot list them does not move it.
#[test]
fn gitlab_an_approval_of_an_old_head_never_counts_for_a_new_one() {
    let forge = FakeForge::start(Forge::GitLab, BOT);
    let proxy = Proxy::start(&forge.url());
    let w = Engine::start("gitlab", &proxy.url(), "GITLAB_TOKEN", "");
    for user in ["alice", "bob", "carol"] {
        forge.set_permission(user, DEVELOPER);
    }
    w.serves("prod", "v1");

    // bob reviews alice's merge request at h1 and approves it.
    let h1 = w.gl_opened(&forge, 1, "feature-1", "reviewed", "alice");
    forge.approve(1, "bob", &forge.pr(1).head_sha);
    // alice pushes h2 and at once asks for a preview, before GitLab's update webhook comes.
    let h2 = w.commit_on("feature-1", "feature-1", "unreviewed", Some(&mr_ref(1)));
    forge.set_head(1, &h2);
    let answer = w.gl_command(&forge, 1, "alice", "/slipway preview");
    assert!(
        answer.contains(&h2[..12]),
        "the preview is allowed at the new head: {answer}"
    );
    w.gl_event(&forge, "update", 1, "alice", Some(&h1));
    w.gl_planned(&forge, &h2);
    let answer = w.gl_command(&forge, 1, "alice", "/slipway apply prod");
    assert!(
        answer.contains("apply requirements are not met") && answer.contains("approved"),
        "bob approved h1, not h2: his approval does not count for h2: {answer}"
    );
    assert_eq!(
        w.page("prod").as_deref(),
        Some("v1"),
        "prod runs main's code"
    );
    assert!(!w.locked("prod"), "and is not locked");

    // The forge cannot list the approvals when the next push's webhook comes: the head is not
    // moved on half the facts, and the next look at the merge request (here the apply) moves it.
    let h3 = w.gl_opened(&forge, 3, "feature-3", "reviewed 3", "alice");
    forge.approve(3, "bob", &forge.pr(3).head_sha);
    let h4 = w.commit_on("feature-3", "feature-3", "unreviewed 3", Some(&mr_ref(3)));
    forge.set_head(3, &h4);
    let approvals = "/merge_requests/3/approvals";
    proxy
        .failing
        .lock()
        .expect("no panics while held")
        .push(approvals.into());
    let failed_before = proxy.count(approvals);
    w.gl_event(&forge, "update", 3, "alice", Some(&h3));
    wait_for("the update's approvals request failed", T, || {
        (proxy.count(approvals) > failed_before).then_some(())
    });
    proxy.failing.lock().expect("no panics while held").clear();
    let answer = w.gl_command(&forge, 3, "alice", "/slipway apply prod");
    assert!(
        answer.contains("apply requirements are not met"),
        "bob's approval of h3 does not count for h4, though the forge failed once: {answer}"
    );
    assert_eq!(w.page("prod").as_deref(), Some("v1"));

    // The legitimate path: carol approves the new head of !1; it applies.
    forge.approve(1, "carol", &forge.pr(1).head_sha);
    let answer = w.gl_command(&forge, 1, "alice", "/slipway apply prod");
    assert!(answer.contains("Applied #1"), "{answer}");
    w.serves("prod", "unreviewed");
}

/// GitLab's approvals name no commit, and Slipway marked an approver stale only as it saw the
/// head move. An author who pushed harmless code over their merge request's head, had it
/// approved, and pushed the old head back, with both webhooks late (or lost), had the
/// approval count for the old head: it was still the head Slipway recorded. Now an approval
/// counts only when GitLab's own times put it after the last push (its diff versions).
#[test]
fn gitlab_an_approval_does_not_survive_a_push_back_whose_webhook_is_late() {
    let forge = FakeForge::start(Forge::GitLab, BOT);
    let proxy = Proxy::start(&forge.url());
    let w = Engine::start("gitlab", &proxy.url(), "GITLAB_TOKEN", "");
    for user in ["alice", "bob"] {
        forge.set_permission(user, DEVELOPER);
    }
    w.serves("prod", "v1");
    w.gl_opened(&forge, 5, "feature-5", "first", "alice");
    // alice pushes code nobody reads; Slipway sees it, and who pushed it.
    let unread = w.gl_pushed(&forge, 5, "nobody read this", "alice");
    // alice pushes harmless code (its webhook late), bob reads and approves it, and alice
    // pushes the first head back (its webhook late too).
    let harmless = w.commit_on("feature-5", "feature-5", "harmless", Some(&mr_ref(5)));
    forge.set_head(5, &harmless);
    forge.approve(5, "bob", &harmless);
    git(&w.s.repo, &["update-ref", &mr_ref(5), &unread]);
    git(&w.s.repo, &["update-ref", "refs/heads/feature-5", &unread]);
    forge.set_head(5, &unread);
    let answer = w.gl_command(&forge, 5, "alice", "/slipway apply prod");
    assert!(
        answer.contains("apply requirements are not met")
            && answer.contains("no approval of the head commit"),
        "bob approved the harmless head, not the one pushed back after it: {answer}"
    );
    assert_eq!(
        w.page("prod").as_deref(),
        Some("v1"),
        "prod runs main's code"
    );

    // The legitimate path: bob reads the head as it is, and approves again.
    forge.dismiss(5, "bob");
    forge.approve(5, "bob", &unread);
    let answer = w.gl_command(&forge, 5, "alice", "/slipway apply prod");
    assert!(answer.contains("Applied #5"), "{answer}");
    w.serves("prod", "nobody read this");
}

/// A pull request from a branch carrying commits nobody reviewed (`dev`) into `dev` shows only
/// a small diff; a maintainer approves it; its base is then changed to `main`, so that it
/// carries dev's commits too. The approval, tied only to the head commit, counted, and
/// `/slipway apply prod` deployed them. Now a pull request whose base changed since Slipway
/// first saw it is not applied (a new pull request is reviewed afresh), whether or not the
/// `edited` webhook arrived.
#[test]
fn a_pull_request_retargeted_after_its_approval_is_not_applied() {
    let forge = FakeForge::start(Forge::GitHub, BOT);
    let w = Engine::start("github", &forge.url(), "GITHUB_TOKEN", "");
    forge.set_permission("alice", "write");
    forge.set_permission("carol", "write");
    w.serves("prod", "v1");

    w.commit_on("main", "dev", "backdoor from dev", None);
    let head = w.commit_on(
        "dev",
        "feature-5",
        "backdoor from dev, and a typo fixed",
        Some("refs/pull/5/head"),
    );
    let into = |base: &str| PrSpec {
        head_ref: "feature-5".into(),
        base_ref: base.into(),
        ..PrSpec::new(5, &head)
    };
    w.gh_open(&forge, into("dev"));
    // carol approves the small diff against dev; then the base becomes main (the fake keeps
    // reviews per pull request: approve again after the change, as the approval still is).
    forge.add_pr(into("main"));
    forge.approve(5, "carol", &head);
    let answer = w.gh_command(&forge, 5, "alice", "/slipway apply prod");
    assert!(
        answer.contains("opened into `dev`")
            && answer.contains("now merges into `main`")
            && answer.contains("new pull request"),
        "a retargeted pull request is refused, even before its `edited` webhook: {answer}"
    );
    assert_eq!(
        w.page("prod").as_deref(),
        Some("v1"),
        "prod runs main's code"
    );
    assert!(!w.locked("prod"), "and is not locked");

    // The same with the `edited` webhook delivered: the plan follows the new base (prod is
    // planned), the refusal stays.
    git(&w.s.repo, &["update-ref", "refs/pull/7/head", &head]);
    let seven = |base: &str| PrSpec {
        head_ref: "feature-5".into(),
        base_ref: base.into(),
        ..PrSpec::new(7, &head)
    };
    w.gh_open(&forge, seven("dev"));
    forge.add_pr(seven("main"));
    forge.approve(7, "carol", &head);
    w.gh_accepted(
        "pull_request",
        &pull_request_payload("edited", &forge.pr(7), false, None),
    );
    forge.wait_for_comment(
        7,
        |c| c.body.contains(MARKER) && c.body.contains("`prod`"),
        T,
    );
    let answer = w.gh_command(&forge, 7, "alice", "/slipway apply prod");
    assert!(
        answer.contains("now merges into `main`"),
        "refused after the edit too: {answer}"
    );
    assert_eq!(w.page("prod").as_deref(), Some("v1"));

    // The legitimate path: a new pull request into main, approved against main, applies.
    git(&w.s.repo, &["update-ref", "refs/pull/6/head", &head]);
    w.gh_open(
        &forge,
        PrSpec {
            head_ref: "feature-5".into(),
            ..PrSpec::new(6, &head)
        },
    );
    forge.approve(6, "carol", &head);
    let answer = w.gh_command(&forge, 6, "alice", "/slipway apply prod");
    assert!(answer.contains("Applied #6"), "{answer}");
    w.serves("prod", "backdoor from dev, and a typo fixed");
}

/// GitLab's merge request webhook names who triggered the event, and Slipway took that for the
/// author: after bob pushed to alice's merge request, bob was "the author", and alice's own
/// approval of her merge request counted. Now the author is the one GitLab's API names.
#[test]
fn gitlab_the_author_is_not_whoever_triggered_the_webhook() {
    let forge = FakeForge::start(Forge::GitLab, BOT);
    let w = Engine::start("gitlab", &forge.url(), "GITLAB_TOKEN", "");
    forge.set_permission("alice", DEVELOPER);
    forge.set_permission("bob", DEVELOPER);
    w.serves("prod", "v1");

    w.gl_opened(&forge, 2, "feature-2", "alice's", "alice");
    // bob pushes a fixup to alice's branch: the update webhook's `user` is bob.
    w.gl_pushed(&forge, 2, "with bob's fixup", "bob");
    // alice approves her own merge request (GitLab allows it unless the project forbids it).
    forge.approve(2, "alice", &forge.pr(2).head_sha);
    let answer = w.gl_command(&forge, 2, "alice", "/slipway apply prod");
    assert!(
        answer.contains("apply requirements are not met"),
        "the author's own approval does not count, whoever pushed last: {answer}"
    );
    assert_eq!(
        w.page("prod").as_deref(),
        Some("v1"),
        "prod runs main's code"
    );
    assert!(!w.locked("prod"), "and is not locked");
}

/// The same for the fork decision: `fork_allow` vouches for forks opened by the people it
/// names. A merge request from mallory's fork, closed and reopened by bob (whom `fork_allow`
/// names), was recorded as bob's, and mallory's code got a preview environment. Now the fork's
/// author is the one GitLab's API names.
#[test]
fn gitlab_a_fork_is_not_vouched_for_by_whoever_reopened_it() {
    let forge = FakeForge::start(Forge::GitLab, BOT);
    let w = Engine::start(
        "gitlab",
        &forge.url(),
        "GITLAB_TOKEN",
        "fork_allow = [\"bob\"]\n",
    );
    forge.set_permission("bob", DEVELOPER);
    let head = w.commit_on("main", "fork-work", "from mallory's fork", Some(&mr_ref(4)));
    forge.add_pr(PrSpec {
        author: "mallory".into(),
        fork: true,
        head_ref: "fork-work".into(),
        ..PrSpec::new(4, &head)
    });
    w.gl_event(&forge, "open", 4, "mallory", None);
    w.gl_planned(&forge, &head);
    let planned = |forge: &FakeForge| {
        forge
            .statuses(&head)
            .iter()
            .filter(|s| s.context == "slipway/plan" && s.state != "pending" && s.state != "running")
            .count()
    };
    let before = planned(&forge);
    forge.set_state(4, PrState::Closed);
    w.gl_event(&forge, "close", 4, "bob", None);
    forge.set_state(4, PrState::Open);
    w.gl_event(&forge, "reopen", 4, "bob", None);
    wait_for("the reopened merge request is planned", T, || {
        (planned(&forge) > before).then_some(())
    });
    let plan = forge.wait_for_comment(4, |n| n.body.contains(MARKER), T);
    assert!(
        plan.body.contains("`prod`") && !plan.body.contains("pr-4"),
        "mallory's fork gets plans and no preview, whoever reopened it:\n{}",
        plan.body
    );
    let status = w.s.json(&["status", "--output", "json"]);
    assert!(
        !status.to_string().contains("\"pr-4\""),
        "no preview environment for mallory's fork: {status:#}"
    );

    // The legitimate path: bob's own fork is vouched for.
    let head = w.commit_on("main", "bob-work", "from bob's fork", Some(&mr_ref(5)));
    forge.add_pr(PrSpec {
        author: "bob".into(),
        fork: true,
        head_ref: "bob-work".into(),
        ..PrSpec::new(5, &head)
    });
    w.gl_event(&forge, "open", 5, "bob", None);
    let plan = forge.wait_for_comment(5, |n| n.body.contains(MARKER), T);
    assert!(plan.body.contains("pr-5"), "{}", plan.body);
    w.serves("pr-5", "from bob's fork");

    // A maintainer's push to it (an "Update branch", a fixup) is theirs to vouch for.
    forge.set_permission("carol", DEVELOPER);
    let fixed = w.commit_on(
        "bob-work",
        "bob-work",
        "with carol's fixup",
        Some(&mr_ref(5)),
    );
    forge.set_head(5, &fixed);
    w.gl_event(&forge, "update", 5, "carol", Some(&head));
    w.serves("pr-5", "with carol's fixup");

    // Someone else pushes to bob's fork (a collaborator there, or bob's merge request from
    // their fork): fork_allow vouches for bob's code, not theirs.
    let pushed = w.commit_on("bob-work", "bob-work", "mallory's code", Some(&mr_ref(5)));
    forge.set_head(5, &pushed);
    w.gl_event(&forge, "update", 5, "mallory", Some(&fixed));
    w.gl_planned(&forge, &pushed);
    wait_for("pr-5 holds mallory's push", T, || {
        w.environment("pr-5")["message"]
            .as_str()
            .filter(|m| m.contains("nobody approved"))
            .map(str::to_owned)
    });
    assert_eq!(w.page("pr-5").as_deref(), Some("with carol's fixup"));
}

/// A fake GitHub behind a [`Proxy`], and `slipway serve` polling every second, with `qa`
/// applied from pull request `n` (branch `feature-n`, `locked in`) and locked to it.
fn qa_locked_by(n: u64) -> (FakeForge, Proxy, Engine) {
    let forge = FakeForge::start(Forge::GitHub, BOT);
    let proxy = Proxy::start(&forge.url());
    let w = Engine::start(
        "github",
        &proxy.url(),
        "GITHUB_TOKEN",
        "[repo]\npoll_interval = \"1s\"\n",
    );
    forge.set_permission("alice", "write");
    w.serves("qa", "v1");
    let branch = format!("feature-{n}");
    let pr_ref = format!("refs/pull/{n}/head");
    let head = w.commit_on("main", &branch, "locked in", Some(&pr_ref));
    w.gh_open(
        &forge,
        PrSpec {
            head_ref: branch,
            ..PrSpec::new(n, &head)
        },
    );
    let answer = w.gh_command(&forge, n, "alice", "/slipway apply qa");
    assert!(answer.contains(&format!("Applied #{n}")), "{answer}");
    assert!(w.locked("qa"));
    (forge, proxy, w)
}

/// The catch-up pass took a pull request missing from the forge's list of open ones (which a
/// forge cuts after so many pages) for closed, and so did it when the forge could not answer
/// for it: its lock was released. Now only the forge's answer that it is closed releases it.
#[test]
fn a_pull_request_missing_from_the_open_list_keeps_its_lock_until_the_forge_says_closed() {
    let (forge, proxy, w) = qa_locked_by(8);

    // #8 falls off the list (as past the last page fetched); the forge says it is open.
    proxy.hidden.lock().expect("no panics while held").insert(8);
    proxy.wait_for_more("/repos/acme/shop/pulls", 3);
    assert!(
        w.locked("qa"),
        "a pull request missing from the list, but open, keeps its lock"
    );
    // Nor when the forge cannot answer for it.
    proxy
        .failing
        .lock()
        .expect("no panics while held")
        .push("/pulls/8".into());
    proxy.wait_for_more("/repos/acme/shop/pulls", 3);
    assert!(
        w.locked("qa"),
        "a pull request the forge cannot answer for keeps its lock"
    );
    assert_eq!(w.page("qa").as_deref(), Some("locked in"));

    // The legitimate path: closed on the forge (its webhook missed), it is released.
    forge.set_state(8, PrState::Closed);
    proxy.failing.lock().expect("no panics while held").clear();
    wait_for("qa is released", T, || (!w.locked("qa")).then_some(()));
    w.serves("qa", "v1");
}

/// `sql` run on the state of `w` (SQLite), its output.
fn sql(w: &Engine, statement: &str) -> String {
    let out = std::process::Command::new("sqlite3")
        .arg(w.s.home.join("state.db"))
        .arg(statement)
        .output()
        .expect("sqlite3 runs");
    assert!(out.status.success(), "{statement}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// [`qa_locked_by`] `n`, whose record is then damaged (its list of approvers a push made
/// stale is not JSON), after which the catch-up pass and discovery ran a few times.
fn damaged_record_locking_qa(n: u64) -> (FakeForge, Proxy, Engine) {
    let (forge, proxy, w) = qa_locked_by(n);
    sql(
        &w,
        &format!("UPDATE pull_requests SET stale_approvers = 'bob' WHERE number = {n}"),
    );
    proxy.wait_for_more("/repos/acme/shop/pulls", 3);
    (forge, proxy, w)
}

/// The record is left as it was but for its state, its preview goes, and an event says why,
/// once.
fn left_as_it_was(w: &Engine, proxy: &Proxy, n: u64) {
    assert_eq!(
        sql(
            w,
            &format!("SELECT state, stale_approvers FROM pull_requests WHERE number = {n}")
        ),
        "closed|bob",
        "the damaged record is not written over, but for its state"
    );
    let preview = format!("pr-{n}");
    wait_for("its preview goes", T, || {
        (!w.environments().contains(&preview)).then_some(())
    });
    proxy.wait_for_more("/repos/acme/shop/pulls", 2);
    let said = stored_events(&w.s, "pull_request.failed")
        .into_iter()
        .filter(|e| {
            e.message
                .contains(&format!("#{n} is closed, but its record cannot be read"))
        })
        .count();
    assert_eq!(said, 1, "said once");
}

/// A pull request whose record is damaged was read as one seen for the first time and written
/// back so: the approvals a push had made stale counted again. Then, read strictly, it
/// stopped every pull request's listing (and discovery of every environment), and its own
/// close from releasing its lock. Now the record is left as it is, other pull requests go on,
/// its preview is not destroyed as if it were closed, and its close releases its lock.
#[test]
fn a_damaged_pull_request_record_is_not_written_over_and_its_close_releases_its_lock() {
    let (forge, proxy, w) = damaged_record_locking_qa(5);
    assert!(
        w.environments().contains(&"pr-5".to_owned()),
        "its preview runs on: {:?}",
        w.environments()
    );
    assert!(w.locked("qa"), "its lock holds while it is open");

    // Another pull request is planned as ever.
    let head = w.commit_on("main", "feature-7", "other", Some("refs/pull/7/head"));
    w.gh_open(
        &forge,
        PrSpec {
            head_ref: "feature-7".into(),
            ..PrSpec::new(7, &head)
        },
    );

    forge.set_state(5, PrState::Closed);
    w.gh_accepted(
        "pull_request",
        &pull_request_payload("closed", &forge.pr(5), false, None),
    );
    wait_for("qa is released", T, || (!w.locked("qa")).then_some(()));
    left_as_it_was(&w, &proxy, 5);
}

/// The same pull request closed while its webhook was missed: the catch-up pass, which asks
/// the forge, releases its lock.
#[test]
fn a_damaged_pull_request_record_closed_unseen_releases_its_lock_at_catch_up() {
    let (forge, proxy, w) = damaged_record_locking_qa(4);
    forge.set_state(4, PrState::Closed);
    wait_for("qa is released", T, || (!w.locked("qa")).then_some(()));
    left_as_it_was(&w, &proxy, 4);
}

/// A merge whose reviews cannot be read when its webhook comes (the forge fails, or the list
/// never ends) still releases the environments the pull request locked: it is recorded closed
/// first, so nothing would release them later. The merge counts as not approved until it is
/// recorded: an event says so, and the catch-up pass records it once the forge answers.
#[test]
fn a_merge_whose_reviews_cannot_be_read_still_releases_its_locks() {
    let (forge, proxy, w) = qa_locked_by(6);

    proxy
        .failing
        .lock()
        .expect("no panics while held")
        .push("/pulls/6/reviews".into());
    let merge = git(&w.s.repo, &["rev-parse", "main"]);
    forge.set_state(
        6,
        PrState::Merged {
            merge_sha: merge.trim().to_owned(),
        },
    );
    w.gh_accepted(
        "pull_request",
        &pull_request_payload("closed", &forge.pr(6), true, Some(merge.trim())),
    );
    wait_for("qa is released", T, || (!w.locked("qa")).then_some(()));
    let events = slipway_state::Store::open(&w.s.home)
        .expect("store")
        .events(&slipway_state::EventQuery {
            limit: 100,
            ..slipway_state::EventQuery::default()
        })
        .expect("events");
    assert!(
        events.iter().any(|e| e
            .message
            .contains("its merge could not be recorded, so it counts as not approved")),
        "{events:?}"
    );
    let store = slipway_state::Store::open(&w.s.home).expect("store");
    assert!(store.merged_commit(merge.trim()).expect("read").is_none());

    // The forge answers again: the next catch-up pass records the merge.
    proxy.failing.lock().expect("no panics while held").clear();
    let recorded = wait_for("the merge is recorded", T, || {
        store.merged_commit(merge.trim()).expect("read")
    });
    assert_eq!(recorded.pull_request, 6);
}

/// The delivery id is not covered by the signature: a captured `closed` delivery, replayed
/// under a fresh id after the pull request was reopened and applied again, released its lock.
/// Now a body seen before is a duplicate, whatever its id.
#[test]
fn a_replayed_delivery_under_a_fresh_id_is_not_handled() {
    let forge = FakeForge::start(Forge::GitHub, BOT);
    let w = Engine::start("github", &forge.url(), "GITHUB_TOKEN", "");
    forge.set_permission("alice", "write");
    w.serves("qa", "v1");
    let head = w.commit_on("main", "feature-9", "applied", Some("refs/pull/9/head"));
    w.gh_open(
        &forge,
        PrSpec {
            head_ref: "feature-9".into(),
            ..PrSpec::new(9, &head)
        },
    );
    let answer = w.gh_command(&forge, 9, "alice", "/slipway apply qa");
    assert!(answer.contains("Applied #9"), "{answer}");
    forge.set_state(9, PrState::Closed);
    let closed = pull_request_payload("closed", &forge.pr(9), false, None);
    w.gh_accepted("pull_request", &closed);
    wait_for("qa is released", T, || (!w.locked("qa")).then_some(()));

    forge.set_state(9, PrState::Open);
    w.gh_accepted(
        "pull_request",
        &pull_request_payload("reopened", &forge.pr(9), false, None),
    );
    let answer = w.gh_command(&forge, 9, "alice", "/slipway apply qa");
    assert!(answer.contains("Applied #9"), "{answer}");
    assert!(w.locked("qa"));

    // The attacker replays the captured `closed` under an id never seen.
    let (status, reply) = w.gh_deliver("pull_request", "replayed-delivery-1", &closed);
    assert_eq!(status, 202, "{reply}");
    assert!(
        reply.contains("\"duplicate\":true") && reply.contains("\"handled\":false"),
        "a body seen before is not handled again: {reply}"
    );
    assert!(w.locked("qa"), "qa stays locked to #9");
    assert_eq!(w.page("qa").as_deref(), Some("applied"));
}

/// Whoever pushed to a pull request cannot approve it. Mallory has write access: she pushes
/// her commit to Alice's pull request, approves it (she is not its author) and applies it to
/// `prod`, whose rules ask for an approval. Or Alice pushes on top of it first; or Mallory
/// pushes to Alice's branch before Alice opens the pull request. Each time her approval is of
/// her own push, and does not count. A push by an automation account (a workflow Mallory
/// wrote) makes no approval count, unless the operator trusts it (`trusted_bots`). A head
/// that no webhook showed being pushed has no known pusher: nobody's approval counts for it
/// until its push is seen. A reviewer who pushed nothing approves as before.
#[test]
fn whoever_pushed_the_head_cannot_approve_it() {
    let forge = FakeForge::start(Forge::GitHub, BOT);
    // An autofix bot the operator trusts to push only for the author.
    let trusted = "trusted_bots = [\"pre-commit-ci[bot]\"]\n";
    let w = Engine::start("github", &forge.url(), "GITHUB_TOKEN", trusted);
    for user in ["alice", "mallory", "carol"] {
        forge.set_permission(user, "write");
    }
    w.serves("prod", "v1");
    // `who`'s `/slipway apply prod` on `n` is refused for want of an approval, saying `why`.
    let refused = |n: u64, who: &str, why: &str| {
        let answer = w.gh_command(&forge, n, who, "/slipway apply prod");
        assert!(
            answer.contains("apply requirements are not met") && answer.contains(why),
            "#{n}: {answer}"
        );
        assert_eq!(
            w.page("prod").as_deref(),
            Some("v1"),
            "#{n}: prod runs main"
        );
        assert!(!w.locked("prod"), "#{n}: prod is not locked");
    };
    // Alice's pull request `n` from `feature-n`, at a commit setting `text`: opened as GitHub
    // tells it (her push of the branch first) when `pushed`, or the opening alone.
    let open = |n: u64, text: &str, pushed: bool| {
        let branch = format!("feature-{n}");
        let head = w.commit_on("main", &branch, text, Some(&format!("refs/pull/{n}/head")));
        let spec = PrSpec {
            head_ref: branch,
            ..PrSpec::new(n, &head)
        };
        if pushed {
            w.gh_open(&forge, spec);
        } else {
            w.gh_opened(&forge, spec);
        }
        head
    };
    // A commit setting `text` on `n`'s branch; its `synchronize` sent by `by` (`None`: the
    // author) unless `by` is `Some("")`, when no webhook tells of it.
    let push = |n: u64, text: &str, by: Option<&str>| {
        let branch = format!("feature-{n}");
        let before = forge.pr(n).head_sha;
        let head = w.commit_on(&branch, &branch, text, Some(&format!("refs/pull/{n}/head")));
        forge.set_head(n, &head);
        if by != Some("") {
            let event = Event::Pushed {
                before,
                by: by.map(str::to_owned),
            };
            let pushed = forge.delivery(&forge.pr(n), &event);
            w.gh_accepted(pushed.event, &pushed.body);
            forge.wait_for_comment(
                n,
                |c| c.body.contains(MARKER) && c.body.contains(&head[..12]),
                T,
            );
        }
        head
    };
    let pusher = "whoever pushed to it";
    let unknown = "nobody is known to have pushed";

    // Mallory pushes to Alice's open pull request, approves her push, and applies it.
    open(1, "alice's", true);
    let h = push(1, "mallory's", Some("mallory"));
    forge.approve(1, "mallory", &h);
    refused(1, "mallory", pusher);
    // Alice pushes on top of Mallory's commit (say GitHub's "Update branch"): the head is
    // Alice's push, and it still carries Mallory's code, which Mallory cannot approve.
    let h = push(1, "alice's on top", None);
    forge.approve(1, "mallory", &h);
    refused(1, "mallory", pusher);

    // Mallory pushes to Alice's branch before Alice opens the pull request.
    let h = w.commit_on(
        "main",
        "feature-2",
        "mallory's too",
        Some("refs/pull/2/head"),
    );
    w.gh_accepted(
        "push",
        &gh::push_payload_by("feature-2", &"0".repeat(40), &h, "mallory"),
    );
    w.gh_opened(
        &forge,
        PrSpec {
            head_ref: "feature-2".into(),
            ..PrSpec::new(2, &h)
        },
    );
    forge.approve(2, "mallory", &h);
    refused(2, "alice", pusher);

    // A workflow Mallory wrote pushes to Alice's pull request as `github-actions[bot]`: an
    // automation account pushes for whoever set it off, so no approval counts, not even
    // Carol's.
    open(4, "alice's 4", true);
    let h = push(4, "the bot's", Some("github-actions[bot]"));
    forge.approve(4, "carol", &h);
    refused(
        4,
        "alice",
        "@github-actions[bot] pushed to it, an automation account",
    );

    // Alice opens a pull request whose branch's push never reached Slipway: opening it says
    // nothing of who pushed it (Mallory may have), so Carol's approval does not count yet.
    let h = open(5, "pushed unseen", false);
    forge.approve(5, "carol", &h);
    refused(5, "alice", unknown);

    // Alice's new head reaches the forge, and no webhook of its push reaches Slipway: Carol's
    // approval of it cannot be told from its pusher's.
    let before = open(3, "alice's 3", true);
    let h = push(3, "reviewed", Some(""));
    forge.approve(3, "carol", &h);
    refused(3, "alice", unknown);
    // Its webhook comes: Alice pushed it. Then the trusted bot pushes a fix on top; Carol
    // approves that, and her approval counts.
    let pushed = forge.delivery(&forge.pr(3), &Event::Pushed { before, by: None });
    w.gh_accepted(pushed.event, &pushed.body);
    let h = push(3, "reviewed and tidied", Some("pre-commit-ci[bot]"));
    forge.approve(3, "carol", &h);
    let answer = w.gh_command(&forge, 3, "alice", "/slipway apply prod");
    assert!(answer.contains("Applied #3"), "{answer}");
    w.serves("prod", "reviewed and tidied");
    assert!(w.locked("prod"));
}

/// A reviewer's latest verdict counts, however many reviews come before it. Carol approves
/// Alice's pull request, then Alice pads it with 2,050 comment reviews (anyone may leave
/// those, its author included), then Carol asks for changes. The reviews were read from the
/// first page up to 20 pages of 100: Carol's change request was past them, and her approval
/// stood. The newest 20 pages are read now: Carol's approval is the one left out, and a later
/// approval by Dave still counts.
#[test]
fn a_pull_request_padded_with_reviews_cannot_hide_a_later_change_request() {
    let forge = FakeForge::start(Forge::GitHub, BOT);
    let w = Engine::start("github", &forge.url(), "GITHUB_TOKEN", "");
    for user in ["alice", "carol", "dave"] {
        forge.set_permission(user, "write");
    }
    w.serves("prod", "v1");
    let head = w.commit_on("main", "feature-1", "padded", Some("refs/pull/1/head"));
    w.gh_open(
        &forge,
        PrSpec {
            head_ref: "feature-1".into(),
            ..PrSpec::new(1, &head)
        },
    );
    forge.approve(1, "carol", &head);
    for _ in 0..2_050 {
        forge.review(1, "alice", "COMMENTED", &head);
    }
    forge.review(1, "carol", "CHANGES_REQUESTED", &head);
    let answer = w.gh_command(&forge, 1, "alice", "/slipway apply prod");
    assert!(
        answer.contains("apply requirements are not met") && answer.contains("approved"),
        "carol asked for changes after her approval: {answer}"
    );
    assert_eq!(w.page("prod").as_deref(), Some("v1"), "prod runs main");
    assert!(!w.locked("prod"));

    forge.approve(1, "dave", &head);
    let answer = w.gh_command(&forge, 1, "alice", "/slipway apply prod");
    assert!(
        answer.contains("Applied #1"),
        "dave's approval counts: {answer}"
    );
    w.serves("prod", "padded");
}
