//! Pull requests end to end: the real `slipway serve`, a real git repository carrying GitHub's
//! pull request refs (`refs/pull/N/head`), real processes, GitHub's own webhook payloads
//! (from `@octokit/webhooks-examples`, signed here) and a fake GitHub API that records what
//! Slipway asks of it.

mod util;

use std::time::Duration;

use serde_json::Value;
use util::fake_github::{pull_request_payload, send_webhook, send_webhook_raw};
use util::world::{ForgeWorld, GitHubDelivered, Served};
use util::{FakeForge, Forge, PrSpec};
use util::{api_request, http_get_host, role_token, start_serve_with, wait_for};

const SECRET: &str = "webhook-secret-for-tests";
const T: Duration = Duration::from_secs(60);
const MARKER: &str = "<!-- slipway:plan -->";

use util::world::STACK;

/// The GitHub world with prod and qa serving v1.
fn world() -> ForgeWorld {
    let w = world_with(STACK);
    w.serves("prod", "v1");
    w.serves("qa", "v1");
    w
}

/// Pull request `n` from `branch` (off main), whose commit sets `greeting.txt` to `text` and
/// the stack to `stack`, is opened: its head.
fn open_with_stack(w: &ForgeWorld, n: u64, branch: &str, text: &str, stack: &str) -> String {
    let pr_ref = w.pr_ref(n);
    let sha = util::world::commit_on(&w.s, "main", branch, text, Some(stack), Some(&pr_ref));
    open(w, n, branch, &sha);
    sha
}

/// Pull request `n` from `branch` at `sha` is opened on the fake, and the forge says so.
fn open(w: &ForgeWorld, n: u64, branch: &str, sha: &str) {
    let opened = w.opened(n, branch, sha);
    w.accepted(opened.event, &opened.body);
}

/// A GitHub world serving `stack`.
fn world_with(stack: &str) -> ForgeWorld {
    ForgeWorld::start(Forge::GitHub, stack, "test-token", SECRET)
}

/// What a pull request's own files put in Slipway's answers (here a key of its stack, quoted
/// in the validation error) comes as inert text in a code block: no mention of a team, no
/// words that pass for Slipway's, no comment marker that passes for the plan comment.
#[test]
fn a_pull_request_s_own_words_in_a_reply_stay_quoted_text() {
    let w = world();
    w.forge.set_permission("alice", "write");
    let hostile = format!(
        "{STACK}{}\n",
        r#""x`\n@org/team **Applied #7 to `prod`** <!-- slipway:plan -->": 1"#
    );
    open_with_stack(&w, 7, "feature-7", "x", &hostile);
    w.comment(7, "alice", "/slipway apply qa");
    // Not `w.reply`, which passes over what carries the plan's marker.
    let bot = w.forge.bot_login();
    let refused = w
        .wait_for_comment(7, |c| {
            c.author == bot && c.body.contains("does not validate")
        })
        .body;
    assert!(!refused.contains("<!--"), "no comment marker: {refused}");
    let fence = "```";
    let mut parts = refused.split(fence);
    let outside: String = parts.clone().step_by(2).collect();
    let quoted: String = parts.by_ref().skip(1).step_by(2).collect();
    assert!(
        quoted.contains("@org/team **Applied #7"),
        "the stack's words are quoted: {refused}"
    );
    assert!(
        !outside.contains("@org") && !outside.contains("Applied #7"),
        "nothing of them outside the code block: {refused}"
    );
    assert_eq!(w.page("qa").as_deref(), Some("v1"), "qa is untouched");
}

#[test]
fn a_pull_request_is_planned_previewed_applied_locked_and_merged() {
    let w = world();
    w.forge.set_permission("alice", "write");
    // Approvals count from reviewers with write access only.
    w.forge.set_permission("carol", "write");
    w.forge.set_permission("bob", "read");

    // Open #1: one plan comment for prod, qa and the preview, a status, and pr-1 serving it.
    let first = w.push_pr(1, "feature-1", "pr1-a");
    open(&w, 1, "feature-1", &first);
    let plan = w.forge.wait_for_comment(1, |c| c.body.contains(MARKER), T);
    for env in ["prod", "qa", "pr-1"] {
        assert!(
            plan.body.contains(env),
            "the plan covers {env}:\n{}",
            plan.body
        );
    }
    w.forge.wait_for_status(
        &first,
        |s| s.context == "slipway/plan" && s.state == "success",
        T,
    );
    w.serves("pr-1", "pr1-a");

    // Push again: the same comment is updated, and pr-1 follows.
    let second = w.push_pr(1, "feature-1", "pr1-b");
    w.forge.set_head(1, &second);
    w.accepted(
        "pull_request",
        &pull_request_payload("synchronize", &w.forge.pr(1), false, None),
    );
    w.forge.wait_for_comment(
        1,
        |c| c.body.contains(MARKER) && c.body.contains(&second[..12]),
        T,
    );
    w.serves("pr-1", "pr1-b");
    let plans: Vec<_> = w
        .forge
        .comments(1)
        .into_iter()
        .filter(|c| c.body.contains(MARKER))
        .collect();
    assert_eq!(plans.len(), 1, "one plan comment, edited in place");
    assert!(plans[0].edits >= 1);

    // Apply to prod before approval: refused; prod untouched.
    w.comment(1, "alice", "/slipway apply prod");
    let refused = w.reply(1, "apply requirements are not met");
    assert!(refused.contains("approved"), "{refused}");
    assert_eq!(w.page("prod").as_deref(), Some("v1"));

    // Approved, but a check that main's protection requires fails: GitHub says `blocked`,
    // and prod's `mergeable` requirement is not met.
    w.forge.approve(1, "carol", &second);
    w.forge.set_checks_failing(1, true);
    w.comment(1, "alice", "/slipway apply prod");
    let refused = w.reply(1, "a check or review the base branch requires");
    assert!(
        refused.contains("apply requirements are not met") && !refused.contains("approved ("),
        "{refused}"
    );
    assert_eq!(w.page("prod").as_deref(), Some("v1"));
    w.forge.set_checks_failing(1, false);

    // Approved: applied, and prod is locked to #1.
    w.forge.approve(1, "carol", &second);
    w.comment(1, "alice", "/slipway apply prod");
    let applied = w.reply(1, "Applied #1");
    assert!(applied.contains("locked"), "{applied}");
    w.serves("prod", "pr1-b");
    assert_eq!(w.page("qa").as_deref(), Some("v1"), "only prod was applied");

    // A second PR may not apply to prod while #1 holds it.
    let other = w.push_pr(2, "feature-2", "pr2");
    open(&w, 2, "feature-2", &other);
    w.forge.wait_for_comment(2, |c| c.body.contains(MARKER), T);
    w.forge.approve(2, "carol", &other);
    w.comment(2, "alice", "/slipway apply prod");
    let locked = w.reply(2, "locked by #1");
    assert!(locked.contains("prod"), "{locked}");
    assert_eq!(w.page("prod").as_deref(), Some("pr1-b"));

    // Merge #1: the lock goes, prod follows main again, pr-1 is destroyed.
    let (merge, merged) = w.merge_into(1, "feature-1", "main");
    w.accepted(merged.event, &merged.body);
    w.wait_merged("pr-1", &merge);
    w.serves("prod", "pr1-b");
    // #2 may apply now that the lock is gone.
    w.comment(2, "alice", "/slipway apply prod");
    w.reply(2, "Applied #2");
    w.serves("prod", "pr2");
    assert!(
        w.forge.unhandled().is_empty(),
        "Slipway only called GitHub's API as documented:\n{}",
        w.forge.recent_requests(20)
    );
}

#[test]
fn hostile_webhooks_and_commands_are_refused_and_audited() {
    let w = world();
    w.forge.set_permission("alice", "write");
    w.forge.set_permission("bob", "read");
    // The forge announces a branch name no shell should ever see (git itself would refuse it
    // as a local branch: the commit is made on a plain one).
    let sha = w.push_pr(5, "hostile", "hostile");
    // (A name with a space is no git ref at all: the forge adapter refuses such a payload as
    // malformed, 400; this one is a valid ref name.)
    w.forge.add_pr(PrSpec {
        head_ref: "$(touch${IFS}/tmp/pwned)".into(),
        ..PrSpec::new(5, &sha)
    });
    let opened = pull_request_payload("opened", &w.forge.pr(5), false, None);

    // No signature, a forged one, a wrong secret: 401, nothing handled.
    let addr = &w.server.addr;
    let (status, _) = send_webhook_raw(
        addr,
        &[
            ("X-GitHub-Event", "pull_request"),
            ("X-GitHub-Delivery", "x-1"),
        ],
        &opened,
    );
    assert_eq!(status, 401, "a missing signature is refused");
    let forged = format!("sha256={}", "0".repeat(64));
    let (status, _) = send_webhook_raw(
        addr,
        &[
            ("X-GitHub-Event", "pull_request"),
            ("X-GitHub-Delivery", "x-2"),
            ("X-Hub-Signature-256", &forged),
        ],
        &opened,
    );
    assert_eq!(status, 401, "a forged signature is refused");
    let (status, _) = send_webhook(addr, b"another secret", "pull_request", "x-3", &opened);
    assert_eq!(status, 401, "another secret is refused");
    // Malformed JSON, signed: 400; a 10 MB body: 413 before it is read whole.
    let (status, _) = send_webhook(addr, SECRET.as_bytes(), "pull_request", "x-4", b"{not json");
    assert_eq!(status, 400);
    let big = vec![b' '; 10 * 1024 * 1024];
    let (status, _) = send_webhook(addr, SECRET.as_bytes(), "pull_request", "x-5", &big);
    assert_eq!(status, 413);
    // An event Slipway does not use: acknowledged, not handled.
    let (status, reply) = send_webhook(addr, SECRET.as_bytes(), "star", "x-6", b"{}");
    assert_eq!(status, 202, "{reply}");
    assert!(reply.contains("\"handled\":false"), "{reply}");

    // Signed and fresh: handled; the same delivery again: acknowledged as a duplicate.
    let (status, _) = send_webhook(addr, SECRET.as_bytes(), "pull_request", "x-7", &opened);
    assert_eq!(status, 202);
    let (status, reply) = send_webhook(addr, SECRET.as_bytes(), "pull_request", "x-7", &opened);
    assert_eq!(status, 202);
    assert!(reply.contains("\"duplicate\":true"), "{reply}");
    w.forge.wait_for_comment(5, |c| c.body.contains(MARKER), T);
    assert!(
        !std::path::Path::new("/tmp/pwned").exists(),
        "a branch name is never run"
    );

    // A commenter without write access, and a command with extra arguments.
    w.comment(5, "bob", "/slipway apply qa");
    let refusal = w.reply(5, "only people with write access");
    assert!(refusal.contains("bob"), "{refusal}");
    w.comment(5, "alice", "/slipway apply qa; rm -rf /");
    w.reply(5, "/slipway apply ENV");
    w.comment(5, "alice", "/slipway apply prod now");
    assert_eq!(w.page("qa").as_deref(), Some("v1"), "nothing was applied");

    // Everything above is in the audit log.
    let token = String::from_utf8_lossy(&w.s.ok(&["token", "create", "--role", "admin"]).stdout)
        .trim()
        .to_string();
    let audit = util::fake_github::http_request(
        addr,
        "GET",
        "/api/v1/audit?limit=1000",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    )
    .expect("audit");
    let entries: Value = serde_json::from_str(&audit.body).expect("json");
    let text = entries.to_string();
    // Identical refusals within a minute are one entry with a count (the forged signature
    // and the other secret are the same refusal).
    let refused: u64 = entries["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "webhook.receive" && e["outcome"] == "refused")
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum();
    assert!(refused >= 5, "every refused delivery is audited: {text}");
    assert!(text.contains("duplicate delivery x-7"), "{text}");
    assert!(
        text.contains("without write access"),
        "the refused command is audited: {text}"
    );
}

#[test]
fn a_fork_gets_plans_but_no_preview_until_a_maintainer_says_so() {
    // Any head is old enough for a command naming no commit (`fresh_head = "0s"`; the
    // default's refusal is in attacks_gate.rs).
    let forge = FakeForge::start(Forge::GitHub, "slipway-bot");
    let api = forge.url();
    let section = "repository = \"acme/shop\"\nfresh_head = \"0s\"";
    let w = ForgeWorld::serve(forge, STACK, &api, section, "test-token", SECRET, |_| {});
    w.serves("prod", "v1");
    w.forge.set_permission("alice", "write");
    let sha = w.push_pr(3, "fork-work", "from a fork");
    w.forge.add_pr(PrSpec {
        author: "mallory".into(),
        fork: true,
        head_ref: "fork-work".into(),
        ..PrSpec::new(3, &sha)
    });
    w.accepted(
        "pull_request",
        &pull_request_payload("opened", &w.forge.pr(3), false, None),
    );
    let plan = w.forge.wait_for_comment(3, |c| c.body.contains(MARKER), T);
    assert!(
        plan.body.contains("prod") && !plan.body.contains("pr-3"),
        "plans, and no preview for a fork:\n{}",
        plan.body
    );
    assert!(!w.environments().contains(&"pr-3".to_string()));
    w.comment(3, "alice", "/slipway preview");
    w.reply(3, "allowed a preview environment");
    w.serves("pr-3", "from a fork");
}

#[test]
fn pull_requests_missed_while_the_controller_was_down_are_caught_up_on_start() {
    let w = world();
    // Opened while nobody listened: no webhook is sent at all.
    let sha = w.push_pr(9, "feature-9", "missed");
    w.forge.add_pr(PrSpec {
        head_ref: "feature-9".into(),
        ..PrSpec::new(9, &sha)
    });
    let ForgeWorld {
        s,
        forge: gh,
        server,
        ..
    } = w;
    drop(server);
    let server = start_serve_with(
        &s,
        &[
            ("GITHUB_TOKEN", "test-token"),
            ("SLIPWAY_WEBHOOK_SECRET", SECRET),
        ],
    );
    let port = server.port();
    gh.wait_for_comment(9, |c| c.body.contains(MARKER), T);
    wait_for("pr-9 serves the missed pull request", T, || {
        http_get_host(port, "pr-9.shop.localhost", "/greeting.txt").filter(|p| p == "missed")
    });
}

#[test]
fn require_pr_takes_only_commits_merged_through_an_approved_pull_request() {
    let w = world_with(&STACK.replace(
        "prod: { track: main, protected: true }",
        "prod: { track: main, protected: true, require_pr: true }",
    ));
    w.serves("qa", "v1");
    // The first commit did not come through a pull request: prod holds, and says why.
    let held = wait_for("prod is held", T, || {
        let prod = w.environment("prod");
        prod["message"]
            .as_str()
            .filter(|m| m.contains("require_pr"))
            .map(str::to_string)
    });
    assert!(
        held.contains("did not arrive through a merged pull request"),
        "{held}"
    );
    assert!(w.page("prod").is_none(), "nothing runs in prod");

    // Merged through an approved pull request: prod takes the merge commit.
    let head = w.push_pr(4, "feature-4", "reviewed");
    open(&w, 4, "feature-4", &head);
    w.forge.wait_for_comment(4, |c| c.body.contains(MARKER), T);
    w.forge.set_permission("carol", "write");
    w.forge.approve(4, "carol", &head);
    let (merge, merged) = w.merge_into(4, "feature-4", "main");
    w.accepted(merged.event, &merged.body);
    w.serves("prod", "reviewed");

    // A commit pushed straight to main: qa takes it, prod does not.
    w.s.write("greeting.txt", "straight to main");
    let direct = w.s.commit("no review");
    w.accepted(
        "push",
        &util::fake_github::push_payload("main", &merge, &direct),
    );
    w.serves("qa", "straight to main");
    let held = wait_for("prod holds the direct commit", T, || {
        let prod = w.environment("prod");
        prod["message"]
            .as_str()
            .filter(|m| m.contains(&direct[..12]))
            .map(str::to_string)
    });
    assert!(held.contains("require_pr"), "{held}");
    assert_eq!(w.page("prod").as_deref(), Some("reviewed"));

    // Carol pushes to Alice's pull request and approves her own push: it is merged as not
    // approved, and prod holds that merge.
    let first = w.push_pr(5, "feature-5", "alice's");
    open(&w, 5, "feature-5", &first);
    let pushed = w.push_pr(5, "feature-5", "carol's");
    let sync = w.pushed_as(5, &pushed, Some("carol"));
    w.accepted(sync.event, &sync.body);
    w.forge.wait_for_comment(
        5,
        |c| c.body.contains(MARKER) && c.body.contains(&pushed[..12]),
        T,
    );
    w.forge.approve(5, "carol", &pushed);
    let (merge, merged) = w.merge_into(5, "feature-5", "main");
    w.accepted(merged.event, &merged.body);
    let held = wait_for("prod holds the merge of carol's own push", T, || {
        let prod = w.environment("prod");
        prod["message"]
            .as_str()
            .filter(|m| m.contains(&merge[..12]))
            .map(str::to_string)
    });
    assert!(held.contains("merged without an approval"), "{held}");
    assert_eq!(w.page("prod").as_deref(), Some("reviewed"));
}

#[test]
fn a_pull_request_cannot_lower_its_own_apply_requirements() {
    let w = world();
    w.forge.set_permission("alice", "write");
    // The PR rewrites prod's rules to need nothing.
    let lax = STACK.replace(
        "prod: { track: main, protected: true }",
        "prod: { track: main, protected: true, apply_requirements: [] }",
    );
    open_with_stack(&w, 6, "sneaky", "unreviewed", &lax);
    w.forge.wait_for_comment(6, |c| c.body.contains(MARKER), T);
    w.comment(6, "alice", "/slipway apply prod");
    let refused = w.reply(6, "apply requirements are not met");
    assert!(
        refused.contains("approved"),
        "main's rules apply: {refused}"
    );
    assert_eq!(w.page("prod").as_deref(), Some("v1"));
}

/// Anyone may comment on a public repository: a flood of commands from someone without
/// write access got one answer each, in Slipway's name and against its token's limits on
/// comments (which then stopped plans on every pull request). One answer, each audited.
#[test]
fn a_flood_of_refused_commands_gets_one_answer() {
    let w = world();
    let head = w.push_pr(9, "feature-9", "pr9");
    open(&w, 9, "feature-9", &head);
    w.forge.wait_for_comment(9, |c| c.body.contains(MARKER), T);
    for _ in 0..20 {
        w.comment(9, "mallory", "/slipway apply prod");
    }
    let refused = || -> u64 {
        w.audit()
            .iter()
            .filter(|e| {
                e["action"] == "pr.command"
                    && e["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("without write access"))
            })
            .map(|e| e["count"].as_u64().unwrap_or(1))
            .sum()
    };
    wait_for("every command is audited", T, || {
        (refused() == 20).then_some(())
    });
    let answers = w.bot_replies(9);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(answers[0].contains("mallory"), "{answers:?}");
}

/// A signed comment delivered again long after it was said (captured, and replayed once its
/// delivery id was no longer kept; a redelivery days later) is not acted on: the pull
/// request's head and rules are not those its author saw. A fresh one is.
#[test]
fn a_command_said_long_before_its_delivery_is_not_acted_on() {
    let w = world();
    w.forge.set_permission("alice", "write");
    let head = w.push_pr(8, "feature-8", "pr8");
    open(&w, 8, "feature-8", &head);
    w.forge.wait_for_comment(8, |c| c.body.contains(MARKER), T);
    let mut old: Value = serde_json::from_slice(&util::fake_github::issue_comment_payload(
        8,
        "alice",
        "/slipway apply qa",
    ))
    .expect("json");
    old["comment"]["created_at"] = serde_json::json!("2025-12-01T10:00:00Z");
    old["comment"]["updated_at"] = serde_json::json!("2025-12-01T10:00:00Z");
    w.accepted("issue_comment", &serde_json::to_vec(&old).expect("json"));
    wait_for("the old command is audited", T, || {
        w.audit()
            .iter()
            .any(|e| {
                e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("over an hour before"))
            })
            .then_some(())
    });
    assert!(!w.locked("qa"), "not applied");
    assert_eq!(w.page("qa").as_deref(), Some("v1"));
    w.comment(8, "alice", "/slipway apply qa");
    w.reply(8, "Applied #8");
}

/// A delivery that comes late, after the pull request was closed (a push's `synchronize`
/// redelivered, an `opened` delayed), reopened its record and made its preview again until
/// the next catch-up pass. The forge is asked, and a closed pull request stays closed.
#[test]
fn a_late_delivery_after_the_close_does_not_reopen_the_pull_request() {
    let w = world();
    let head = w.push_pr(6, "feature-6", "pr6");
    open(&w, 6, "feature-6", &head);
    w.serves("pr-6", "pr6");
    w.forge.set_state(6, util::PrState::Closed);
    w.accepted(
        "pull_request",
        &pull_request_payload("closed", &w.forge.pr(6), false, None),
    );
    wait_for("pr-6 is destroyed", T, || {
        w.s.json(&["status", "--output", "json"])["environments"]
            .as_array()
            .is_some_and(|envs| envs.iter().all(|e| e["name"] != "pr-6"))
            .then_some(())
    });
    w.accepted(
        "pull_request",
        &pull_request_payload("synchronize", &w.forge.pr(6), false, None),
    );
    wait_for("the late delivery is answered", T, || {
        util::stored_events(&w.s, "pull_request.updated")
            .iter()
            .any(|e| e.message.contains("late delivery"))
            .then_some(())
    });
    let status = w.s.json(&["status", "--output", "json"]);
    assert!(
        !status.to_string().contains("\"pr-6\""),
        "no preview for a closed pull request: {status}"
    );
}

/// A person's pin of a pull request's preview (or a rollback), to stop a bad head, holds: the
/// preview runs its pin, not the pull request's head, until unpinned (the reconcile ran the
/// head, and recorded it as the new pin).
#[test]
fn a_pinned_preview_runs_its_pin_not_the_pull_request_s_head() {
    let w = world();
    let first = w.push_pr(3, "feature-3", "pr3-a");
    open(&w, 3, "feature-3", &first);
    w.serves("pr-3", "pr3-a");
    let deployer = role_token(&w.s, "deployer");
    let call = |path: &str, body: serde_json::Value| {
        let (code, answer) = api_request(w.addr(), "POST", path, &deployer, Some(body));
        assert!((200..300).contains(&code), "{path}: {code} {answer}");
    };
    call(
        "/api/v1/environments/pr-3/pin",
        serde_json::json!({ "commit": first }),
    );
    let second = w.push_pr(3, "feature-3", "pr3-b");
    w.forge.set_head(3, &second);
    w.accepted(
        "pull_request",
        &pull_request_payload("synchronize", &w.forge.pr(3), false, None),
    );
    w.forge.wait_for_comment(
        3,
        |c| c.body.contains(MARKER) && c.body.contains(&second[..12]),
        T,
    );
    call("/api/v1/environments/pr-3/sync", serde_json::json!({}));
    let moved =
        slipway_testkit::wait::poll(Duration::from_secs(4), Duration::from_millis(100), || {
            (w.page("pr-3").as_deref() == Some("pr3-b")).then_some(())
        });
    assert_eq!(moved, None, "the pinned preview stays on its pin");
    let record = w.environment("pr-3");
    assert_eq!(record["pinned"], true, "{record}");
    // Unpinned, it follows the pull request's head again.
    call("/api/v1/environments/pr-3/unpin", serde_json::json!({}));
    w.serves("pr-3", "pr3-b");
}

/// A deployer's pin (or rollback) of an environment a pull request locked ends the lock:
/// the pull request's close no longer unpins it, back to the branch's tip the deployer left.
#[test]
fn a_deployer_s_pin_of_a_locked_environment_outlasts_the_pull_request() {
    let w = world();
    w.forge.set_permission("alice", "write");
    // Served once its process is up; recorded once its deployment is done.
    let v1 = wait_for("qa's commit is recorded", T, || {
        w.environment("qa")["commit"].as_str().map(str::to_string)
    });
    let head = w.push_pr(1, "feature-1", "pr1");
    open(&w, 1, "feature-1", &head);
    w.forge.wait_for_comment(1, |c| c.body.contains(MARKER), T);
    w.comment(1, "alice", "/slipway apply qa");
    w.reply(1, "Applied #1");
    w.serves("qa", "pr1");
    assert!(w.locked("qa"));
    // The deployer takes qa back to what it ran; main moves on meanwhile.
    let deployer = role_token(&w.s, "deployer");
    let (code, answer) = api_request(
        w.addr(),
        "POST",
        "/api/v1/environments/qa/pin",
        &deployer,
        Some(serde_json::json!({ "commit": v1 })),
    );
    assert!((200..300).contains(&code), "{code} {answer}");
    w.serves("qa", "v1");
    assert!(!w.locked("qa"), "the pin ended #1's lock");
    util::world::commit_on(&w.s, "main", "main", "v2", None, None);
    w.serves("prod", "v2");
    // #1 closes: its preview goes, and qa stays where the deployer put it.
    w.forge.set_state(1, util::PrState::Closed);
    w.accepted(
        "pull_request",
        &pull_request_payload("closed", &w.forge.pr(1), false, None),
    );
    wait_for("pr-1 is destroyed", T, || {
        (!w.environments().contains(&"pr-1".to_string())).then_some(())
    });
    let qa = w.environment("qa");
    assert_eq!(qa["pinned"], true, "{qa}");
    assert_eq!(qa["desired_commit"], v1.as_str(), "{qa}");
    assert_eq!(w.page("qa").as_deref(), Some("v1"));
}

/// `/slipway apply` is judged by the deploy windows of the environment's rules as its
/// branch's head has them, in force yet or not: a pull request opened from a main before a
/// freeze is not applied inside it (a comment is no deployer's override).
#[test]
fn a_pull_request_from_before_a_freeze_is_not_applied_inside_it() {
    let w = world();
    w.forge.set_permission("alice", "write");
    let head = w.push_pr(4, "feature-4", "pr4");
    open(&w, 4, "feature-4", &head);
    w.forge.wait_for_comment(4, |c| c.body.contains(MARKER), T);
    // main's head freezes qa, for the hour from every minute (held: qa stays on v1).
    let frozen = STACK.replace(
        "qa: { track: main }",
        "qa: { track: main, windows: [{ kind: deny, schedule: \"* * * * *\", duration: 1h }] }",
    );
    util::world::commit_on(&w.s, "main", "main", "v1", Some(&frozen), None);
    w.comment(4, "alice", "/slipway apply qa");
    let refused = w.reply(4, "Not applied #4");
    assert!(refused.contains("takes no change now"), "{refused}");
    assert_eq!(w.page("qa").as_deref(), Some("v1"));
    assert!(!w.locked("qa"), "not locked to #4");
}

#[test]
fn an_apply_that_takes_a_while_holds_up_no_other_webhook_and_is_answered_when_it_ends() {
    let w = world();
    w.forge.set_permission("alice", "write");
    // #1 adds a job that keeps qa's apply busy for a while.
    let slow = STACK.replace(
        "resources:\n",
        "resources:\n  warmup: { type: job, command: [\"sleep\", \"12\"] }\n",
    );
    let head = open_with_stack(&w, 1, "slow", "v1", &slow);
    w.forge.wait_for_comment(1, |c| c.body.contains(MARKER), T);

    w.comment(1, "alice", "/slipway apply qa");
    wait_for("qa is pinned to #1's head, its apply under way", T, || {
        (w.environment("qa")["pinned"] == true).then_some(())
    });
    // The next event is handled while the apply runs, not after it.
    w.comment(1, "alice", "/slipway help");
    let help = w
        .forge
        .wait_for_comment(1, |c| c.body.contains("/slipway unlock ENV"), T);
    let applied = w
        .forge
        .wait_for_comment(1, |c| c.body.contains("Applied #1"), T);
    assert!(
        help.id < applied.id,
        "the help was answered while the apply ran (help #{}, apply's answer #{})",
        help.id,
        applied.id
    );
    assert!(applied.body.contains("locked"), "{}", applied.body);
    assert_eq!(
        w.environment("qa")["commit"],
        head.as_str(),
        "qa runs #1's head"
    );
}

/// A push to the base branch moves what prod and qa run, and so what an open pull request
/// would change once merged: its plan comment is edited to compare with what runs now,
/// without the head's status going back to pending meanwhile. A pull request into another
/// branch is left alone.
#[test]
fn a_push_to_the_base_branch_plans_its_open_pull_requests_again() {
    let notes = |text: &str| {
        format!("{STACK}  notes:\n    type: file\n    path: notes.txt\n    content: \"{text}\"\n")
    };
    let w = world_with(&notes("main-1"));
    w.serves("prod", "v1");
    let head = open_with_stack(&w, 1, "feature-1", "pr1", &notes("pr-1"));
    let first = w.forge.wait_for_comment(
        1,
        |c| c.body.contains(MARKER) && c.body.contains("\"main-1\" → \"pr-1\""),
        T,
    );
    w.forge.wait_for_status(
        &head,
        |s| s.context == "slipway/plan" && s.state == "success",
        T,
    );
    let plan_states = || -> Vec<String> {
        w.forge
            .statuses(&head)
            .into_iter()
            .filter(|s| s.context == "slipway/plan")
            .map(|s| s.state)
            .collect()
    };
    let statuses = plan_states().len();
    // #2 merges into another branch, which no environment tracks.
    let other = util::world::commit_on(
        &w.s,
        "main",
        "feature-2",
        "pr2",
        Some(&notes("pr-2")),
        Some(&w.pr_ref(2)),
    );
    w.forge.add_pr(PrSpec {
        head_ref: "feature-2".into(),
        base_ref: "release".into(),
        ..PrSpec::new(2, &other)
    });
    w.accepted(
        "pull_request",
        &pull_request_payload("opened", &w.forge.pr(2), false, None),
    );
    w.forge.wait_for_comment(2, |c| c.body.contains(MARKER), T);
    let second_before = w.plans(2);

    // main moves: prod and qa deploy it, and #1's plan is made again against it.
    let before = util::git(&w.s.repo, &["rev-parse", "main"]);
    let moved = util::world::commit_on(&w.s, "main", "main", "v2", Some(&notes("main-2")), None);
    w.accepted(
        "push",
        &util::fake_github::push_payload("main", &before, &moved),
    );
    w.serves("prod", "v2");
    let replanned = w.forge.wait_for_comment(
        1,
        |c| c.body.contains(MARKER) && c.body.contains("\"main-2\" → \"pr-1\""),
        T,
    );
    assert_eq!(replanned.id, first.id, "the same comment, edited");
    assert!(
        replanned.body.contains(&head[..12]),
        "still the head's plan"
    );
    assert_eq!(w.plans(1).len(), 1, "one plan comment");
    let after = plan_states()[statuses..].to_vec();
    assert!(
        !after.iter().any(|s| s == "pending"),
        "the last plans stood until the new ones were in: {after:?}"
    );
    assert_eq!(w.plan_status(&head).as_deref(), Some("success"));
    assert_eq!(
        w.plans(2).iter().map(|c| &c.body).collect::<Vec<_>>(),
        second_before.iter().map(|c| &c.body).collect::<Vec<_>>(),
        "a pull request into another branch is not planned again"
    );
}

#[test]
fn a_preview_beyond_max_environments_is_queued_and_its_comment_says_its_place_until_it_starts() {
    let w = world_with(util::world::pr_stack!(
        "{ pull_requests: true }, max_environments: 1"
    ));
    let first = w.push_pr(1, "feature-1", "pr1");
    open(&w, 1, "feature-1", &first);
    w.serves("pr-1", "pr1");

    // #2 finds the family's one slot taken: its preview waits, and its plan comment says so.
    let second = w.push_pr(2, "feature-2", "pr2");
    open(&w, 2, "feature-2", &second);
    let plan = w.forge.wait_for_comment(
        2,
        |c| c.body.contains(MARKER) && c.body.contains("queued"),
        T,
    );
    assert!(
        plan.body.contains(
            "preview queued: 1st in line; family \\`previews\\` runs 1; starts when its one \
             environment goes"
        ) || plan.body.contains(
            "preview queued: 1st in line; family `previews` runs 1; starts when its one \
             environment goes"
        ),
        "the comment says the preview's place and what it waits for:\n{}",
        plan.body
    );
    let pr2 = w.environment("pr-2");
    assert_eq!(
        (&pr2["activity"], &pr2["queue_position"]),
        (&Value::from("queued"), &Value::from(1)),
        "{pr2}"
    );
    assert_eq!(w.page("pr-2"), None, "nothing runs for a queued preview");

    // #1 closes: its slot goes to #2, which starts, and #2's comment links its preview.
    w.forge.set_state(1, util::PrState::Closed);
    w.accepted(
        "pull_request",
        &pull_request_payload("closed", &w.forge.pr(1), false, None),
    );
    w.serves("pr-2", "pr2");
    let plan = w.forge.wait_for_comment(
        2,
        |c| c.body.contains(MARKER) && !c.body.contains("queued"),
        T,
    );
    assert!(
        plan.body.contains("pr-2.shop.localhost"),
        "once started, the comment links the preview:\n{}",
        plan.body
    );
}

/// A private preview's plan comment carries a signed link that opens it for a reviewer with
/// no Slipway login; the plain preview URL asks for one.
#[test]
fn a_private_previews_plan_comment_links_it_with_a_signed_link() {
    let stack = util::world::STACK.replace("access: public", "access: private");
    let w = world_with(&stack);
    let first = w.push_pr(3, "feature-3", "pr3-a");
    open(&w, 3, "feature-3", &first);
    wait_for("pr-3 runs", T, || {
        (w.environments().iter().any(|e| e == "pr-3")
            && w.environment("pr-3")["health"] == "healthy")
            .then_some(())
    });
    assert_eq!(
        w.page("pr-3"),
        None,
        "a stranger does not get the private preview"
    );
    // The next plan (a push) finds pr-3 recorded, and links it with a signed link.
    let second = w.push_pr(3, "feature-3", "pr3-b");
    w.forge.set_head(3, &second);
    w.accepted(
        "pull_request",
        &pull_request_payload("synchronize", &w.forge.pr(3), false, None),
    );
    let plan = w.forge.wait_for_comment(
        3,
        |c| c.body.contains(MARKER) && c.body.contains("/.slipway/auth?link=pr-3.shop."),
        T,
    );
    let start = plan
        .body
        .find("http://pr-3.shop.localhost:")
        .expect("the link");
    let link: String = plan.body[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, ')' | '"' | '<' | '>' | ']'))
        .collect();
    let path = &link[link.find("/.slipway").expect("its path")..];
    use std::io::{Read, Write};
    let get = |path: &str, cookie: &str| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", w.port)).expect("connect");
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: pr-3.shop.localhost\r\n{cookie}\r\n"
        )
        .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        answer
    };
    let answer = get(path, "");
    assert_eq!(answer.split_whitespace().nth(1), Some("303"), "{answer}");
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("the preview cookie")
        .to_string();
    wait_for("the reviewer sees the new version", T, || {
        let answer = get("/greeting.txt", &format!("Cookie: {cookie}\r\n"));
        answer.ends_with("pr3-b").then_some(())
    });
}
