//! Pull requests end to end on GitLab and Gitea, as `pull_requests.rs` does on GitHub: the real
//! `slipway serve`, a real git repository carrying the forge's pull request refs
//! (`refs/merge-requests/N/head` on GitLab, `refs/pull/N/head` on Gitea), real processes, the
//! forges' documented webhook payloads (`slipway-forge/tests/fixtures/{gitlab,gitea}`, with
//! GitLab's secret token or Gitea's HMAC signature) and fake GitLab and Gitea APIs that record
//! what Slipway asks of them (`util::fake_gitlab`, `util::fake_gitea`).
//!
//! The flow is the same on both forges ([`a_pull_request_is_planned_previewed_applied_locked_and_merged`]),
//! written once against [`Forge`], which says how each forge does each step.

mod util;

use std::time::Duration;

use serde_json::{Value, json};
use slipway_forge::{
    Approval, CommitStatus, ForgeConfig, ForgeEvent, ForgeKind, PrAction, PrState as ApiPrState,
    ReviewState, StatusState, verify_and_parse,
};
use util::fake_gitea;
use util::fake_gitlab::{self, DEVELOPER, REPORTER};
use util::wait_for;
use util::world::{ForgeWorld, Served};
use util::{Delivery, Event, FakeForge, Forge, PrSpec, PrState};

const SECRET: &str = "webhook-secret-for-tests";
const T: Duration = Duration::from_secs(60);
const MARKER: &str = "<!-- slipway:plan -->";
const BOT: &str = "slipway-bot";

use util::world::STACK;

/// A repository with the stack at `v1` on `main`, and `slipway serve` on it with
/// `[forge.KIND]` pointing at a fresh fake.
fn world(kind: Forge) -> ForgeWorld {
    ForgeWorld::start(kind, STACK, "test-token", SECRET)
}

/// Open → plan comment and status, `pr-N` → push → the same comment edited, `pr-N` follows →
/// apply before approval refused → approved: applied, locked → another pull request's apply
/// refused naming the lock → merge: lock released, prod follows main, `pr-N` destroyed.
fn a_pull_request_is_planned_previewed_applied_locked_and_merged(kind: Forge) {
    let w = world(kind);
    w.serves("prod", "v1");
    w.serves("qa", "v1");
    w.forge.grant("alice", true);
    w.forge.grant("bob", false);
    // Approvals count from reviewers with write access only.
    w.forge.grant("carol", true);

    // Open #1: one plan comment for prod, qa and the preview, a status, and pr-1 serving it.
    let first = w.push_pr(1, "feature-1", "pr1-a");
    w.handled(&w.opened(1, "feature-1", &first));
    let plan = w.wait_for_comment(1, |c| c.body.contains(MARKER));
    assert_eq!(plan.author, BOT);
    for env in ["prod", "qa", "pr-1"] {
        assert!(
            plan.body.contains(env),
            "the plan covers {env}:\n{}",
            plan.body
        );
    }
    wait_for("a successful slipway/plan status on the head", T, || {
        (w.plan_status(&first).as_deref() == Some("success")).then_some(())
    });
    w.serves("pr-1", "pr1-a");

    // Push again: the same comment is edited, and pr-1 follows.
    let second = w.push_pr(1, "feature-1", "pr1-b");
    w.handled(&w.pushed(1, &second));
    w.wait_for_comment(1, |c| {
        c.body.contains(MARKER) && c.body.contains(&second[..12])
    });
    w.serves("pr-1", "pr1-b");
    let plans = w.plans(1);
    assert_eq!(
        plans.len(),
        1,
        "one plan comment, edited in place: {plans:#?}"
    );
    assert!(plans[0].edits >= 1, "{plans:#?}");
    wait_for(
        "a successful slipway/plan status on the new head",
        T,
        || (w.plan_status(&second).as_deref() == Some("success")).then_some(()),
    );

    // Someone without write access: refused.
    w.handled(&w.commented(1, "bob", "/slipway apply qa"));
    let refusal = w.reply(1, "only people with write access");
    assert!(refusal.contains("bob"), "{refusal}");

    // Apply to prod before approval: refused; prod untouched.
    w.handled(&w.commented(1, "alice", "/slipway apply prod"));
    let refused = w.reply(1, "apply requirements are not met");
    assert!(refused.contains("approved"), "{refused}");
    assert_eq!(w.page("prod").as_deref(), Some("v1"));

    // Approved: applied, and prod is locked to #1.
    w.handled(&w.approved(1, "carol", &second));
    w.handled(&w.commented(1, "alice", "/slipway apply prod"));
    let applied = w.reply(1, "Applied #1");
    assert!(applied.contains("locked"), "{applied}");
    w.serves("prod", "pr1-b");
    assert_eq!(w.page("qa").as_deref(), Some("v1"), "only prod was applied");

    // A second pull request may not apply to prod while #1 holds it.
    let other = w.push_pr(2, "feature-2", "pr2");
    w.handled(&w.opened(2, "feature-2", &other));
    w.wait_for_comment(2, |c| c.body.contains(MARKER));
    w.handled(&w.approved(2, "carol", &other));
    w.handled(&w.commented(2, "alice", "/slipway apply prod"));
    let locked = w.reply(2, "locked by #1");
    assert!(locked.contains("prod"), "{locked}");
    assert_eq!(w.page("prod").as_deref(), Some("pr1-b"));

    // Merge #1: the lock goes, prod follows main again, pr-1 is destroyed.
    let (merge, merged) = w.merge_into(1, "feature-1", "main");
    w.handled(&merged);
    w.wait_merged("pr-1", &merge);
    w.serves("prod", "pr1-b");
    // #2 may apply now that the lock is gone.
    w.handled(&w.commented(2, "alice", "/slipway apply prod"));
    w.reply(2, "Applied #2");
    w.serves("prod", "pr2");
    assert_eq!(w.plans(2).len(), 1, "one plan comment on #2");
    let unhandled = w.unhandled_lines();
    assert!(
        unhandled.is_empty(),
        "Slipway only called the {} API as documented:\n{}\n{}",
        kind.name(),
        unhandled.join("\n"),
        w.forge.recent_requests(30)
    );
}

#[test]
fn a_gitlab_merge_request_is_planned_previewed_applied_locked_and_merged() {
    a_pull_request_is_planned_previewed_applied_locked_and_merged(Forge::GitLab);
}

#[test]
fn a_gitea_pull_request_is_planned_previewed_applied_locked_and_merged() {
    a_pull_request_is_planned_previewed_applied_locked_and_merged(Forge::Gitea);
}

/// `approved` means "a review approving the head commit" (docs/pull-requests.md). GitLab's
/// approvals name no commit, and GitLab keeps them when commits are pushed unless the project
/// has the Premium setting "Remove all approvals when commits are added to the source branch"
/// (and even then for the seconds it takes to remove them): an approval of reviewed code then
/// lets code nobody reviewed into a protected environment.
#[test]
fn a_gitlab_approval_of_an_older_commit_does_not_let_the_head_into_prod() {
    let w = world(Forge::GitLab);
    w.serves("prod", "v1");
    w.forge.grant("alice", true);
    w.forge.grant("carol", true);
    let reviewed = w.push_pr(1, "feature-1", "reviewed");
    w.handled(&w.opened(1, "feature-1", &reviewed));
    w.wait_for_comment(1, |c| c.body.contains(MARKER));
    w.handled(&w.approved(1, "carol", &reviewed));
    let unreviewed = w.push_pr(1, "feature-1", "not reviewed");
    w.handled(&w.pushed(1, &unreviewed));
    w.wait_for_comment(1, |c| {
        c.body.contains(MARKER) && c.body.contains(&unreviewed[..12])
    });
    w.handled(&w.commented(1, "alice", "/slipway apply prod"));
    let answer = w
        .wait_for_comment(1, |c| c.author == BOT && !c.body.contains(MARKER))
        .body;
    assert!(
        answer.contains("apply requirements are not met") && answer.contains("approved"),
        "carol approved {}, not {}: {answer}",
        &reviewed[..12],
        &unreviewed[..12]
    );
    assert_eq!(w.page("prod").as_deref(), Some("v1"));
}

/// Counts the deliveries the audit log shows as refused.
/// How many deliveries were refused: identical refusals within a minute are one audit entry
/// with a count.
fn refused_deliveries(audit: &[Value]) -> u64 {
    audit
        .iter()
        .filter(|e| e["action"] == "webhook.receive" && e["outcome"] == "refused")
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum()
}

/// A `kind` world with pull request #4 pushed: the world and the forge's delivery opening it.
fn world_with_pr_4(kind: Forge) -> (ForgeWorld, Delivery) {
    let w = world(kind);
    let sha = w.push_pr(4, "feature-4", "four");
    let opened = w.opened(4, "feature-4", &sha);
    (w, opened)
}

/// Posts `body` to the `kind` webhook of `addr` with the forge's event header, delivery id
/// `id` and `extra` headers: a refusal (401) is what it expects, and `what` says why.
fn refused(kind: Forge, addr: &str, id: &str, extra: &[(&str, &str)], body: &[u8], what: &str) {
    let mut headers = match kind {
        Forge::GitLab => vec![
            ("X-Gitlab-Event", "Merge Request Hook"),
            ("X-Gitlab-Event-UUID", id),
        ],
        Forge::Gitea => vec![("X-Gitea-Event", "pull_request"), ("X-Gitea-Delivery", id)],
        other => panic!("the raw deliveries here are GitLab's and Gitea's, not {other:?}'s"),
    };
    headers.extend_from_slice(extra);
    let (status, reply) = match kind {
        Forge::GitLab => fake_gitlab::send_webhook_raw(addr, &headers, body),
        _ => fake_gitea::send_webhook_raw(addr, &headers, body),
    };
    assert_eq!(status, 401, "{what}: {reply}");
}

/// After `refusals` refused deliveries: each is audited, and `opened` sent with the secret
/// (delivery id `id`) is handled.
fn refusals_are_audited_and_the_secret_is_taken(
    w: &ForgeWorld,
    refusals: u64,
    opened: &Delivery,
    id: &str,
) {
    assert_eq!(
        refused_deliveries(&w.audit()),
        refusals,
        "every refusal is audited"
    );
    let (status, reply) = w.forge.send(&w.server.addr, SECRET, opened, id);
    assert_eq!(status, 202, "{reply}");
    w.wait_for_comment(4, |c| c.body.contains(MARKER));
}

#[test]
fn gitlab_deliveries_without_the_secret_token_are_refused() {
    let (w, opened) = world_with_pr_4(Forge::GitLab);
    let addr = &w.server.addr;
    let refused = |id, extra: &[(&str, &str)], what| {
        refused(Forge::GitLab, addr, id, extra, &opened.body, what)
    };
    refused("x-1", &[], "a delivery without a token is refused");
    let (status, reply) =
        fake_gitlab::send_webhook(addr, "forged-token", opened.event, "x-2", &opened.body);
    assert_eq!(status, 401, "a forged token is refused: {reply}");
    let almost = &SECRET[..SECRET.len() - 1];
    let (status, reply) =
        fake_gitlab::send_webhook(addr, almost, opened.event, "x-3", &opened.body);
    assert_eq!(status, 401, "a prefix of the token is refused: {reply}");
    // Gitea's and GitHub's signatures are no GitLab token.
    let signature = slipway_forge::sign(SECRET.as_bytes(), &opened.body);
    refused(
        "x-4",
        &[("X-Gitea-Signature", &signature)],
        "a signature is no token",
    );

    // The secret token: handled.
    refusals_are_audited_and_the_secret_is_taken(&w, 4, &opened, "x-5");
}

#[test]
fn gitea_deliveries_without_a_valid_signature_are_refused() {
    let (w, opened) = world_with_pr_4(Forge::Gitea);
    let addr = &w.server.addr;
    let refused = |id, extra: &[(&str, &str)], body: &[u8], what| {
        refused(Forge::Gitea, addr, id, extra, body, what)
    };
    refused("x-1", &[], &opened.body, "an unsigned delivery is refused");
    let forged = "0".repeat(64);
    refused(
        "x-2",
        &[("X-Gitea-Signature", &forged)],
        &opened.body,
        "a forged signature is refused",
    );
    let (status, reply) =
        fake_gitea::send_webhook(addr, b"another secret", opened.event, "x-3", &opened.body);
    assert_eq!(
        status, 401,
        "a signature under another secret is refused: {reply}"
    );
    // Signed, then altered: the author of the pull request changed on the way.
    let mut altered: Value = serde_json::from_slice(&opened.body).expect("json");
    altered["pull_request"]["user"]["login"] = json!("mallory");
    let altered = serde_json::to_vec(&altered).expect("json");
    let signature = slipway_forge::sign(SECRET.as_bytes(), &opened.body);
    refused(
        "x-4",
        &[("X-Gitea-Signature", &signature)],
        &altered,
        "a body altered after signing is refused",
    );
    // GitLab's token header is no signature.
    refused(
        "x-5",
        &[("X-Gitlab-Token", SECRET)],
        &opened.body,
        "a token is no signature",
    );

    // Signed with the secret: handled.
    refusals_are_audited_and_the_secret_is_taken(&w, 5, &opened, "x-6");
}

// ---- The fakes against the adapters, without Slipway -------------------------------------------

fn sha(c: char) -> String {
    c.to_string().repeat(40)
}

fn adapter(kind: ForgeKind, api_url: String, bot: Option<&str>) -> Box<dyn slipway_forge::Forge> {
    let mut config = ForgeConfig::new(kind, "acme/shop", "test-token");
    config.api_url = Some(api_url);
    config.bot_login = bot.map(str::to_owned);
    config.timeout = Duration::from_secs(10);
    slipway_forge::connect(config).expect("the adapter takes the fake's URL")
}

fn parse(kind: ForgeKind, headers: Vec<(String, String)>, body: &[u8]) -> ForgeEvent {
    verify_and_parse(kind, &headers, body, SECRET.as_bytes())
        .unwrap_or_else(|e| panic!("the delivery verifies and parses: {e}"))
        .event
}

/// The plan comment through `forge` on #1: created, then edited in place (the same id, which
/// it returns).
fn upsert_plan_twice(forge: &dyn slipway_forge::Forge) -> slipway_forge::CommentId {
    let first = forge.upsert_comment(1, MARKER, "plan v1").expect("upsert");
    let again = forge.upsert_comment(1, MARKER, "plan v2").expect("upsert");
    assert_eq!(first, again);
    first
}

/// Sets a failed `slipway/plan` status on `a…` through `forge`.
fn set_plan_error(forge: &dyn slipway_forge::Forge, target_url: Option<String>) {
    forge
        .set_status(&CommitStatus {
            sha: sha('a'),
            context: "slipway/plan".into(),
            state: StatusState::Error,
            description: "planned".into(),
            target_url,
        })
        .expect("status");
}

/// The numbers of the open pull requests `forge` lists, in its order.
fn open_numbers(forge: &dyn slipway_forge::Forge) -> Vec<u64> {
    forge
        .open_pull_requests()
        .expect("open")
        .iter()
        .map(|p| p.number)
        .collect()
}

/// The action of a pull request event; any other event fails the test.
fn pr_action(event: &ForgeEvent) -> &PrAction {
    match event {
        ForgeEvent::PullRequest { action, .. } => action,
        other => panic!("a pull request event, not {other:?}"),
    }
}

/// A fake `kind` that takes only `test-token`, with pull request #1 by alice at `a…`, #2
/// from mallory's fork at `b…` and #3, closed.
fn fake_with_prs(kind: Forge) -> FakeForge {
    let fake = FakeForge::start(kind, BOT);
    fake.require_token("test-token");
    fake.add_pr(PrSpec::new(1, &sha('a')));
    fake.add_pr(PrSpec {
        author: "mallory".into(),
        fork: true,
        ..PrSpec::new(2, &sha('b'))
    });
    fake.add_pr(PrSpec::new(3, &sha('c')));
    fake.set_state(3, PrState::Closed);
    fake
}

/// The adapter reads [`fake_with_prs`]'s pull requests as the fake has them: author, head,
/// fork, mergeability, a merge.
fn the_adapter_reads_pull_requests_as_the_fake_has_them(
    fake: &FakeForge,
    forge: &dyn slipway_forge::Forge,
) {
    let pr = forge.pull_request(1).expect("pr");
    assert_eq!(
        (
            pr.info.author.as_str(),
            pr.info.head_sha.as_str(),
            pr.info.head_ref.as_str(),
            pr.info.is_fork
        ),
        ("alice", sha('a').as_str(), "feature-1", false)
    );
    assert_eq!((pr.mergeable, pr.state), (Some(true), ApiPrState::Open));
    let fork = forge.pull_request(2).expect("fork");
    assert!(fork.info.is_fork);
    assert_eq!(
        fork.info.head_repo_full_name.as_deref(),
        Some("mallory/shop")
    );
    fake.set_mergeable(1, Some(false));
    assert_eq!(forge.pull_request(1).expect("pr").mergeable, Some(false));
    fake.set_mergeable(1, Some(true));
    // No conflict, but a check fails: GitLab's `merge_status` says it can be merged and its
    // `detailed_merge_status` that the pipeline must pass; Gitea's `mergeable` is true and
    // a status of the head `failure`. Not mergeable either way, as an apply judges it.
    let mergeable_now = || {
        let pr = forge.pull_request(1).expect("pr");
        match pr.mergeable {
            Some(true) => forge.checks_green(&pr.info.head_sha).expect("checks"),
            other => other,
        }
    };
    assert_eq!(mergeable_now(), Some(true));
    fake.set_checks_failing(1, true);
    assert_eq!(mergeable_now(), Some(false));
    fake.set_checks_failing(1, false);
    assert_eq!(mergeable_now(), Some(true));
    fake.set_state(
        1,
        PrState::Merged {
            merge_sha: sha('d'),
        },
    );
    assert_eq!(forge.pull_request(1).expect("pr").state, ApiPrState::Merged);
    fake.set_state(1, PrState::Open);
}

/// The fake's deliveries about pull request #1 (opened, pushed, merged, approved, commented
/// on) and #2 (a fork, opened) verify and parse into what the flow relies on.
fn the_deliveries_parse_as_the_flow_expects(fake: &FakeForge, kind: ForgeKind) {
    let pr1 = fake.pr(1);
    let hook = |pr: &PrSpec, event: Event| {
        let delivery = fake.delivery(pr, &event);
        let id = slipway_testkit::forge::uuid();
        parse(
            kind,
            fake.webhook_headers(SECRET, &delivery, &id),
            &delivery.body,
        )
    };
    let opened = hook(&pr1, Event::Opened);
    let ForgeEvent::PullRequest { action, pr, sender } = opened else {
        panic!("{opened:?}")
    };
    assert_eq!(action, PrAction::Opened);
    assert_eq!(
        (
            pr.number,
            pr.head_sha.as_str(),
            pr.head_ref.as_str(),
            pr.base_ref.as_str()
        ),
        (1, pr1.head_sha.as_str(), "feature-1", "main")
    );
    assert_eq!((pr.author.as_str(), pr.is_fork), ("alice", false));
    assert_eq!(pr.base_repo_full_name, "acme/shop");
    assert_eq!(pr.url, fake.pr_url(1));
    assert_eq!(sender.as_deref(), Some("alice"), "who opened it");
    let before = sha('a');
    let by = Some("mallory".to_owned());
    let pushed = hook(&pr1, Event::Pushed { before, by });
    assert_eq!(pr_action(&pushed), &PrAction::Synchronized);
    let ForgeEvent::PullRequest { sender, .. } = &pushed else {
        panic!("{pushed:?}")
    };
    assert_eq!(sender.as_deref(), Some("mallory"), "who pushed");
    let merge_sha = sha('d');
    let merged = hook(&pr1, Event::Merged { merge_sha });
    assert_eq!(pr_action(&merged), &PrAction::Merged);
    let reviewer = "carol".to_owned();
    let approved = hook(&pr1, Event::Approved { reviewer });
    assert_eq!(
        approved,
        ForgeEvent::Review {
            pr_number: 1,
            state: ReviewState::Approved,
            author: "carol".into()
        }
    );
    let fork = hook(&fake.pr(2), Event::Opened);
    let ForgeEvent::PullRequest { pr, .. } = fork else {
        panic!("{fork:?}")
    };
    assert!(pr.is_fork);
    assert_eq!(pr.head_repo_full_name.as_deref(), Some("mallory/shop"));
    let comment = fake.add_comment(1, "alice", "/slipway plan");
    let id = comment.id;
    let commented = hook(&pr1, Event::Commented { comment });
    let created_at = util::made_just_now(&commented);
    assert_eq!(
        commented,
        ForgeEvent::Comment {
            pr_number: 1,
            comment_id: id,
            author: "alice".into(),
            body: "/slipway plan".into(),
            is_pull_request: true,
            created_at,
        }
    );
}

#[test]
fn the_fake_gitlab_answers_what_the_gitlab_adapter_expects() {
    let gl = fake_with_prs(Forge::GitLab);
    gl.set_permission("alice", DEVELOPER);
    gl.set_permission("bob", REPORTER);
    gl.add_comment(1, BOT, &format!("{MARKER}\nby hand, not through the API"));
    gl.add_comment(1, "mallory", &format!("{MARKER}\nnot Slipway's"));
    let forge = adapter(ForgeKind::GitLab, gl.url(), None);

    // The plan note: created once, then edited in place; nobody else's note is touched.
    let first = upsert_plan_twice(forge.as_ref());
    let notes = gl.comments(1);
    let ours: Vec<_> = notes.iter().filter(|n| n.id == first.0).collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].body, format!("{MARKER}\nplan v2"));
    assert!(notes.iter().any(|n| n.author == "mallory" && n.edits == 0));
    forge.post_comment(1, "a reply").expect("post");
    assert!(
        gl.comments(1)
            .iter()
            .any(|n| n.body == "a reply" && n.author == BOT)
    );

    set_plan_error(forge.as_ref(), None);
    assert_eq!(gl.statuses(&sha('a'))[0].state, "failed");
    assert_eq!(gl.statuses(&sha('a'))[0].context, "slipway/plan");

    the_adapter_reads_pull_requests_as_the_fake_has_them(&gl, forge.as_ref());
    gl.set_mergeable(1, None);
    assert_eq!(forge.pull_request(1).expect("mr").mergeable, None);

    assert!(forge.approvals(1).expect("approvals").is_empty());
    gl.approve(1, "carol", &gl.pr(1).head_sha);
    assert_eq!(
        forge.approvals(1).expect("approvals"),
        [Approval {
            author: "carol".into(),
            commit_sha: None
        }]
    );
    // GitLab (Free) keeps approvals across a push, but one given before the last push is
    // for no head Slipway can name: GitLab's approvals name none.
    gl.set_head(1, &sha('e'));
    assert!(
        forge.approvals(1).expect("approvals").is_empty(),
        "an approval older than the last push does not count"
    );
    gl.dismiss(1, "carol");
    gl.approve(1, "carol", &sha('e'));
    assert_eq!(
        forge.approvals(1).expect("approvals").len(),
        1,
        "given again after it, it counts"
    );
    gl.reset_approvals_on_push(true);
    gl.set_head(1, &sha('e'));
    assert!(
        forge.approvals(1).expect("approvals").is_empty(),
        "a push removes the approvals (the Premium setting)"
    );

    assert!(forge.has_write_access("alice").expect("developer"));
    assert!(!forge.has_write_access("bob").expect("reporter"));
    assert!(!forge.has_write_access("mallory").expect("not a member"));
    assert!(!forge.has_write_access("nobody").expect("unknown"));

    let open = open_numbers(forge.as_ref());
    assert_eq!(open, [2, 1], "opened ones, newest first");
    assert!(gl.unhandled().is_empty(), "{}", gl.recent_requests(40));

    // Many notes: the adapter pages through them and still finds the plan.
    for i in 0..120 {
        gl.add_comment(1, "alice", &format!("chatter {i}"));
    }
    let third = forge.upsert_comment(1, MARKER, "plan v3").expect("upsert");
    assert_eq!(third, first);
    assert!(
        gl.requests()
            .iter()
            .any(|r| r.query_param("page") == Some("2")),
        "{}",
        gl.recent_requests(10)
    );

    // A token the fake does not take: a 401 the adapter reports.
    let wrong = {
        let mut config = ForgeConfig::new(ForgeKind::GitLab, "acme/shop", "wrong");
        config.api_url = Some(gl.url());
        slipway_forge::connect(config).expect("connect")
    };
    assert_eq!(wrong.pull_request(1).expect_err("401").status(), Some(401));

    // The payloads verify (secret token) and parse into what the flow relies on.
    the_deliveries_parse_as_the_flow_expects(&gl, ForgeKind::GitLab);
    let mr1 = gl.pr(1);
    let hook = |event: &str, body: &[u8]| {
        parse(
            ForgeKind::GitLab,
            fake_gitlab::webhook_headers(SECRET, event, &slipway_testkit::forge::uuid()),
            body,
        )
    };
    let edited = hook(
        "Merge Request Hook",
        &fake_gitlab::merge_request_payload("update", &mr1, "alice", None, None),
    );
    assert!(matches!(pr_action(&edited), PrAction::Other(_)));
}

#[test]
fn the_fake_gitea_answers_what_the_gitea_adapter_expects() {
    let gt = fake_with_prs(Forge::Gitea);
    gt.set_permission("alice", "write");
    gt.set_permission("bob", "read");
    gt.set_permission("olga", "owner");
    gt.add_comment(1, "mallory", &format!("{MARKER}\nnot Slipway's"));
    // No bot login configured: the adapter asks `GET /user` once.
    let forge = adapter(ForgeKind::Gitea, gt.url(), None);

    let first = upsert_plan_twice(forge.as_ref());
    let comments = gt.comments(1);
    assert_eq!(comments.len(), 2);
    assert_eq!(comments[1].body, format!("{MARKER}\nplan v2"));
    assert_eq!((comments[1].author.as_str(), comments[1].edits), (BOT, 1));
    assert_eq!(comments[0].edits, 0, "mallory's comment is not touched");
    assert_eq!(
        forge.upsert_comment(1, MARKER, "plan v2").expect("upsert"),
        first
    );
    assert_eq!(
        gt.comments(1)[1].edits,
        1,
        "an unchanged plan is not written"
    );
    forge.post_comment(1, "a reply").expect("post");

    set_plan_error(forge.as_ref(), Some("http://127.0.0.1:9/".into()));
    let status = gt.statuses(&sha('a'))[0].clone();
    assert_eq!(
        (status.context.as_str(), status.state.as_str()),
        ("slipway/plan", "error")
    );
    // Slipway's own status judges nothing of the checks, in error or pending.
    assert_eq!(forge.checks_green(&sha('a')).expect("checks"), Some(true));
    gt.set_checks_failing(1, true);
    assert_eq!(forge.checks_green(&sha('a')).expect("checks"), Some(false));
    gt.set_checks_failing(1, false);

    the_adapter_reads_pull_requests_as_the_fake_has_them(&gt, forge.as_ref());

    gt.approve(1, "carol", &sha('a'));
    gt.review(1, "dave", "REQUEST_CHANGES", &sha('a'));
    gt.approve(1, "erin", &sha('a'));
    gt.dismiss(1, "erin");
    gt.review(1, "frank", "PENDING", &sha('a'));
    assert_eq!(
        forge.approvals(1).expect("approvals"),
        [Approval {
            author: "carol".into(),
            commit_sha: Some(sha('a'))
        }]
    );

    assert!(forge.has_write_access("alice").expect("write"));
    assert!(forge.has_write_access("olga").expect("owner"));
    assert!(!forge.has_write_access("bob").expect("read"));
    assert!(!forge.has_write_access("nobody").expect("unknown"));
    // Gitea answers someone else's permission only to a repository admin: a bot with write
    // access alone cannot tell who may run commands.
    gt.set_permission(BOT, "write");
    let refused = forge.has_write_access("alice").expect_err("403");
    assert_eq!(refused.status(), Some(403), "{refused}");
    gt.set_permission(BOT, "admin");

    let open = open_numbers(forge.as_ref());
    assert_eq!(open, [2, 1], "open ones, newest first");
    let users = gt
        .requests()
        .iter()
        .filter(|r| r.operation == Some("userGetCurrent"))
        .count();
    assert_eq!(users, 1, "the bot's login is asked once");
    assert!(gt.unhandled().is_empty(), "{}", gt.recent_requests(40));

    // Many open pull requests: the adapter pages through them (50 a page).
    for n in 10..70 {
        gt.add_pr(PrSpec::new(n, &sha('f')));
    }
    assert_eq!(forge.open_pull_requests().expect("open").len(), 62);

    let wrong = {
        let mut config = ForgeConfig::new(ForgeKind::Gitea, "acme/shop", "wrong");
        config.api_url = Some(gt.url());
        config.bot_login = Some(BOT.into());
        slipway_forge::connect(config).expect("connect")
    };
    assert_eq!(wrong.pull_request(1).expect_err("401").status(), Some(401));

    // The payloads verify (HMAC signature) and parse into what the flow relies on.
    the_deliveries_parse_as_the_flow_expects(&gt, ForgeKind::Gitea);
    let closed = gt.delivery(&gt.pr(1), &Event::Closed);
    let closed = parse(
        ForgeKind::Gitea,
        gt.webhook_headers(SECRET, &closed, &slipway_testkit::forge::uuid()),
        &closed.body,
    );
    assert_eq!(pr_action(&closed), &PrAction::Closed);
}
