//! Attacks on the pull-request gate (issue 10, §2), each performed end to end against the real
//! `slipway serve`, a real git repository carrying GitHub's pull request refs, GitHub's own
//! webhook payloads and the fake GitHub API; each shows the attack fails, and where it matters
//! that the legitimate path still works.
//!
//! The rules checked here (which branch an environment is judged by, who may approve, which
//! rules are in force, what a refused apply leaves behind) are the controller's and the
//! engine's, shared by every forge adapter through the `Forge` trait: one forge (GitHub) is
//! enough to attack them.

mod util;

use std::time::Duration;

use util::fake_github::{pull_request_payload, push_payload};
use util::world::{self, ForgeWorld, GitHubDelivered, Served};
use util::{Forge, PrSpec};
use util::{git, wait_for};

const SECRET: &str = "webhook-secret-for-tests";
const T: Duration = Duration::from_secs(60);
const MARKER: &str = "<!-- slipway:plan -->";

const STACK: &str = concat!(
    world::pr_stack!("{ pull_requests: true }"),
    "  note: { type: file, path: note.txt, content: \"kept\" }\n"
);

/// The stack without the `note` resource: applying it deletes `note`.
fn without_note(stack: &str) -> String {
    stack.replace(
        "  note: { type: file, path: note.txt, content: \"kept\" }\n",
        "",
    )
}

/// The GitHub world: [`ForgeWorld`] with a fake GitHub.
struct World(ForgeWorld);

impl std::ops::Deref for World {
    type Target = ForgeWorld;
    fn deref(&self) -> &ForgeWorld {
        &self.0
    }
}

impl World {
    fn with_stack(stack: &str) -> World {
        let w = World(ForgeWorld::start(
            Forge::GitHub,
            stack,
            "test-token",
            SECRET,
        ));
        // alice and carol maintain the repository; mallory has no access at all.
        w.forge.set_permission("alice", "write");
        w.forge.set_permission("carol", "write");
        w
    }

    /// [`STACK`], with prod and qa serving v1.
    fn new() -> World {
        let w = World::with_stack(STACK);
        w.serves("prod", "v1");
        w.serves("qa", "v1");
        w
    }

    /// A commit on `branch` (from `from`) with `greeting.txt` = `text` and, when given,
    /// `slipway.yaml` = `stack`; published as the pull request ref of PR `number` if any.
    fn commit_on(
        &self,
        from: &str,
        branch: &str,
        text: &str,
        stack: Option<&str>,
        number: Option<u64>,
    ) -> String {
        let pr_ref = number.map(|n| self.pr_ref(n));
        world::commit_on(&self.s, from, branch, text, stack, pr_ref.as_deref())
    }

    /// Opens PR `spec` (its branch pushed by its author first, unless it is a fork's) and
    /// waits for its plan comment.
    fn open(&self, spec: PrSpec) {
        let number = spec.number;
        let fork = spec.fork;
        self.forge.add_pr(spec);
        if !fork {
            self.pushed_branch(number);
        }
        self.accepted(
            "pull_request",
            &pull_request_payload("opened", &self.forge.pr(number), false, None),
        );
        self.forge
            .wait_for_comment(number, |c| c.body.contains(MARKER), T);
    }

    /// PR `number` from `feature-<number>`, a commit on main setting `greeting.txt` to `text`
    /// (and `slipway.yaml` to `stack` when given), opened: its head.
    fn open_feature(&self, number: u64, text: &str, stack: Option<&str>) -> String {
        let branch = format!("feature-{number}");
        let head = self.commit_on("main", &branch, text, stack, Some(number));
        self.open(PrSpec {
            head_ref: branch,
            ..PrSpec::new(number, &head)
        });
        head
    }

    /// alice's `/slipway apply prod` on PR `number` is applied, and prod serves `text`.
    fn applies_to_prod(&self, number: u64, text: &str) {
        let answer = self.command(number, "alice", "/slipway apply prod");
        assert!(answer.contains(&format!("Applied #{number}")), "{answer}");
        self.serves("prod", text);
    }

    /// Merges `branch` into main with a merge commit, as PR `number` on the forge.
    fn merge(&self, number: u64, branch: &str) -> String {
        let (merge, delivery) = self.merge_into(number, branch, "main");
        self.accepted(delivery.event, &delivery.body);
        merge
    }

    /// Posts `command` on `pr` as `author` and returns Slipway's answer to it (the first new
    /// comment of Slipway's that is not the plan).
    fn command(&self, pr: u64, author: &str, command: &str) -> String {
        self.answer_to(
            pr,
            &util::fake_github::issue_comment_payload(pr, author, command),
        )
    }

    /// Delivers `comment` (an `issue_comment` payload) on `pr` and returns Slipway's answer.
    fn answer_to(&self, pr: u64, comment: &[u8]) -> String {
        let seen = self
            .forge
            .comments(pr)
            .iter()
            .map(|c| c.id)
            .max()
            .unwrap_or(0);
        self.accepted("issue_comment", comment);
        self.forge
            .wait_for_comment(
                pr,
                |c| c.id > seen && c.author == "slipway-bot" && !c.body.contains(MARKER),
                T,
            )
            .body
    }

    /// [`STACK`] with a `fresh_head` of one second (a minute by default), qa serving v1, and
    /// alice a maintainer.
    fn fresh_after_a_second() -> World {
        let forge = util::FakeForge::start(Forge::GitHub, "slipway-bot");
        let api = forge.url();
        let section = "repository = \"acme/shop\"\nfresh_head = \"1s\"";
        let w = World(ForgeWorld::serve(
            forge,
            STACK,
            &api,
            section,
            "test-token",
            SECRET,
            |_| {},
        ));
        w.forge.set_permission("alice", "write");
        w.serves("qa", "v1");
        w
    }

    /// mallory's pull request `number` from her fork's `fork-work` at `head`, opened.
    fn open_fork(&self, number: u64, head: &str) {
        self.open(PrSpec {
            author: "mallory".into(),
            fork: true,
            head_ref: "fork-work".into(),
            ..PrSpec::new(number, head)
        });
    }

    /// Waits until Slipway saw the head of pull request `number` at least `age` ago, by the
    /// time it recorded.
    fn head_older_than(&self, number: u64, age: Duration) {
        let store = slipway_state::Store::open(&self.s.home).expect("store");
        let age = i64::try_from(age.as_millis()).expect("a short age");
        wait_for("the head grows old", T, || {
            let seen = store.pull_request(number as i64).ok()??.head_seen_at?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_millis() as i64;
            (now - seen >= age).then_some(())
        });
    }

    /// Waits until `env`'s message mentions every one of `needles`, and returns it.
    fn held(&self, env: &str, needles: &[&str]) -> String {
        wait_for(&format!("{env} is held ({needles:?})"), T, || {
            self.environment(env)["message"]
                .as_str()
                .filter(|m| needles.iter().all(|n| m.contains(n)))
                .map(str::to_string)
        })
    }

    fn note_exists(&self, env: &str) -> bool {
        let status = self.s.json(&["status", "--env", env, "--output", "json"]);
        status["environments"][0]["resources"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["name"] == "note"))
    }
}

/// §2.1: a pull request into a branch nobody reviews, whose stack says prod needs nothing,
/// asks for `/slipway apply prod`. Before, the rules came from the base branch (`[]`) and the
/// code went to protected prod. Now prod is judged by the branch it tracks, and only a pull
/// request into that branch can be applied to it.
#[test]
fn a_pull_request_into_an_unreviewed_branch_cannot_apply_to_prod() {
    let w = World::new();
    let lax = STACK.replace(
        "prod: { track: main, protected: true }",
        "prod: { track: main, protected: true, apply_requirements: [] }",
    );
    // The attacker's own branch, which no review protects, lowers prod's rules…
    w.commit_on("main", "wild", "wild base", Some(&lax), None);
    // …and a pull request into it carries the code meant for prod.
    // (Its stack also claims that prod tracks `wild`.)
    let evil = w.commit_on(
        "wild",
        "evil",
        "evil",
        Some(&lax.replace("prod: { track: main", "prod: { track: wild")),
        Some(6),
    );
    w.open(PrSpec {
        head_ref: "evil".into(),
        base_ref: "wild".into(),
        author: "alice".into(),
        ..PrSpec::new(6, &evil)
    });
    let plan = w.forge.wait_for_comment(6, |c| c.body.contains(MARKER), T);
    assert!(
        !plan.body.contains("prod"),
        "prod tracks main, whatever the pull request's stack says; no plan for it:\n{}",
        plan.body
    );
    let answer = w.command(6, "alice", "/slipway apply prod");
    assert!(
        answer.contains("tracks `main`") && answer.contains("into `wild`"),
        "a pull request into another branch than prod's is refused: {answer}"
    );
    assert_eq!(
        w.page("prod").as_deref(),
        Some("v1"),
        "prod runs main's code"
    );
    assert_eq!(w.environment("prod")["pinned"], false, "prod is not pinned");
    assert!(!w.locked("prod"), "and not locked");

    // The same lowered rules in a pull request into main: main's rules apply (approval).
    let sneaky = w.commit_on("main", "sneaky", "sneaky", Some(&lax), Some(7));
    w.open(PrSpec {
        head_ref: "sneaky".into(),
        ..PrSpec::new(7, &sneaky)
    });
    let answer = w.command(7, "alice", "/slipway apply prod");
    assert!(
        answer.contains("apply requirements are not met") && answer.contains("approved"),
        "main's rules apply, not the pull request's: {answer}"
    );
    assert_eq!(w.page("prod").as_deref(), Some("v1"));

    // The legitimate path: approved by a maintainer, into main, it applies.
    w.forge.approve(7, "carol", &sneaky);
    w.applies_to_prod(7, "sneaky");
}

/// §2.2: an APPROVE review from an account without access (or from the author) satisfied
/// `approved`. Now only reviewers with write access who did not open the pull request count.
#[test]
fn approvals_count_only_from_maintainers_who_are_not_the_author() {
    let w = World::new();
    let head = w.commit_on("main", "feature-1", "unreviewed", None, Some(1));
    w.open(PrSpec {
        head_ref: "feature-1".into(),
        author: "alice".into(),
        ..PrSpec::new(1, &head)
    });
    // Anyone may leave an approving review on a public repository.
    w.forge.approve(1, "mallory", &head);
    let answer = w.command(1, "alice", "/slipway apply prod");
    assert!(
        answer.contains("apply requirements are not met") && answer.contains("write access"),
        "an approval without write access does not count: {answer}"
    );
    // The author, who has write access, approves their own change.
    w.forge.approve(1, "alice", &head);
    let answer = w.command(1, "alice", "/slipway apply prod");
    assert!(
        answer.contains("apply requirements are not met"),
        "the author's own approval does not count: {answer}"
    );
    assert_eq!(w.page("prod").as_deref(), Some("v1"), "prod is untouched");
    assert!(!w.locked("prod"), "and not locked");

    // A maintainer who is not the author approves: applied.
    w.forge.approve(1, "carol", &head);
    w.applies_to_prod(1, "unreviewed");
}

/// §2.2, for `require_pr`: a pull request merged with an approval from an account without
/// access does not count as approved, so its merge commit does not reach a `require_pr`
/// environment; one approved by a maintainer does.
#[test]
fn require_pr_counts_only_approvals_by_maintainers() {
    let w = World::with_stack(&STACK.replace(
        "prod: { track: main, protected: true }",
        "prod: { track: main, protected: true, require_pr: true }",
    ));
    w.serves("qa", "v1");
    let head = w.open_feature(2, "approved by nobody", None);
    w.forge.approve(2, "mallory", &head);
    w.forge.approve(2, "alice", &head);
    let merge = w.merge(2, "feature-2");
    w.serves("qa", "approved by nobody");
    let held = w.held("prod", &[&merge[..12], "without an approval"]);
    assert!(held.contains("require_pr"), "{held}");
    assert!(w.page("prod").is_none(), "nothing runs in prod");

    // The legitimate path: approved by a maintainer and merged.
    let head = w.open_feature(3, "reviewed", None);
    w.forge.approve(3, "carol", &head);
    w.merge(3, "feature-3");
    w.serves("prod", "reviewed");
}

/// A pull request reviewed against an unreviewed branch, then retargeted to `main` and
/// merged there, brought that branch's commits (which nobody approved) into `main` with its
/// approval: `require_pr` took the merge. Its merge counts as not approved now, as
/// `/slipway apply` already refused it.
#[test]
fn a_pull_request_retargeted_after_its_approval_merges_as_not_approved() {
    let w = World::with_stack(&STACK.replace(
        "prod: { track: main, protected: true }",
        "prod: { track: main, protected: true, require_pr: true }",
    ));
    w.serves("qa", "v1");
    // The backdoor on a branch nobody reviews; the pull request's own diff is small.
    w.commit_on("main", "dev", "backdoor", None, None);
    let head = w.commit_on("dev", "feature-5", "backdoor and typo", None, Some(5));
    w.open(PrSpec {
        head_ref: "feature-5".into(),
        base_ref: "dev".into(),
        ..PrSpec::new(5, &head)
    });
    // Retargeted to main (the fake forgets reviews then: approved again, as a review given
    // against `dev` stays on GitHub), then merged there.
    w.forge.add_pr(PrSpec {
        head_ref: "feature-5".into(),
        ..PrSpec::new(5, &head)
    });
    w.forge.approve(5, "carol", &head);
    let merge = w.merge(5, "feature-5");
    w.serves("qa", "backdoor and typo");
    let held = w.held("prod", &[&merge[..12], "require_pr"]);
    assert!(held.contains("without an approval"), "{held}");
    assert!(w.page("prod").is_none(), "nothing runs in prod");
}

/// §2.3: a maintainer's `/slipway preview` on a fork's pull request approved the fork forever:
/// its author pushed new code afterwards and it was deployed. Now the approval is for that
/// head commit: a new push gets plans, and the preview keeps the approved commit until a
/// maintainer approves again.
#[test]
fn a_fork_preview_runs_only_the_commit_a_maintainer_approved() {
    let w = World::new();
    let approved = w.commit_on("main", "fork-work", "looked at", None, Some(3));
    w.open_fork(3, &approved);
    // A head pushed moments ago may not be what the maintainer read: not approved unnamed.
    let answer = w.command(3, "alice", "/slipway preview");
    assert!(
        answer.contains("Nothing was approved")
            && answer.contains(&format!("`/slipway preview {approved}`")),
        "{answer}"
    );
    assert!(w.page("pr-3").is_none(), "no preview yet");
    // Named by its first digits (which a commit made to look alike can share), neither.
    let answer = w.command(3, "alice", &format!("/slipway preview {}", &approved[..7]));
    assert!(answer.contains("Nothing was approved"), "{answer}");
    // Named whole, it is.
    let answer = w.command(3, "alice", &format!("/slipway preview {approved}"));
    assert!(answer.contains("allowed a preview"), "{answer}");
    w.serves("pr-3", "looked at");

    // The fork's author pushes again after the approval.
    let pushed = w.commit_on(
        "fork-work",
        "fork-work",
        "reads your secrets",
        None,
        Some(3),
    );
    w.forge.set_head(3, &pushed);
    // A maintainer who read the first head approves it by name after the push landed, before
    // its webhook came: the push is not approved with it (and the approval of the first head
    // does not carry over to the new one).
    let answer = w.command(3, "alice", &format!("/slipway preview {approved}"));
    assert!(
        answer.contains("Nothing was approved") && answer.contains(&pushed[..12]),
        "{answer}"
    );
    w.accepted(
        "pull_request",
        &pull_request_payload("synchronize", &w.forge.pr(3), false, None),
    );
    let plan = w.forge.wait_for_comment(
        3,
        |c| c.body.contains(MARKER) && c.body.contains(&pushed[..12]),
        T,
    );
    assert!(
        !plan.body.contains("pr-3"),
        "the new head gets plans, no preview:\n{}",
        plan.body
    );
    let held = w.held("pr-3", &[&pushed[..12], "/slipway preview"]);
    assert!(held.contains("held"), "{held}");
    assert_eq!(
        w.page("pr-3").as_deref(),
        Some("looked at"),
        "the approved commit keeps running; the new one is not deployed"
    );
    assert_eq!(w.environment("pr-3")["commit"], approved.as_str());

    // Someone without write access cannot approve it.
    let answer = w.command(3, "mallory", "/slipway preview");
    assert!(answer.contains("only people with write access"), "{answer}");
    assert_eq!(w.page("pr-3").as_deref(), Some("looked at"));

    // The legitimate path: a maintainer looks at the new head and approves it.
    let answer = w.command(3, "alice", &format!("/slipway preview {pushed}"));
    assert!(answer.contains(&pushed[..12]), "{answer}");
    w.serves("pr-3", "reads your secrets");
}

/// A maintainer's `/slipway apply qa` on a fork's pull request applied whatever head the fork
/// had when the comment was handled: its author, pushing between the maintainer's read and
/// the handling (a late delivery gives minutes), had code nobody read deployed to qa, with
/// qa's secrets. Now a fork's head is applied as `/slipway preview` approves one: named by
/// its whole id, or not pushed moments before the comment or after it.
#[test]
fn a_fork_head_pushed_after_the_maintainers_read_is_not_applied() {
    let w = World::fresh_after_a_second();
    let read = w.commit_on("main", "fork-work", "looked at", None, Some(4));
    w.open_fork(4, &read);
    w.head_older_than(4, Duration::from_millis(2_500));
    // alice reads the head and comments `/slipway apply qa`; the delivery is held up.
    let late = util::fake_github::issue_comment_payload(4, "alice", "/slipway apply qa");
    // Meanwhile the fork's author pushes, and Slipway sees it at once.
    let pushed = w.commit_on(
        "fork-work",
        "fork-work",
        "reads your secrets",
        None,
        Some(4),
    );
    w.forge.set_head(4, &pushed);
    w.accepted(
        "pull_request",
        &pull_request_payload("synchronize", &w.forge.pr(4), false, None),
    );
    w.forge.wait_for_comment(
        4,
        |c| c.body.contains(MARKER) && c.body.contains(&pushed[..12]),
        T,
    );
    w.head_older_than(4, Duration::from_millis(2_500));
    let answer = w.answer_to(4, &late);
    assert!(
        answer.contains("Nothing was applied")
            && answer.contains(&pushed[..12])
            && answer.contains(&format!("`/slipway apply qa {pushed}`")),
        "{answer}"
    );
    assert!(!w.locked("qa"), "qa is not locked");
    assert_eq!(w.page("qa").as_deref(), Some("v1"), "qa runs main's code");

    // Naming the head alice read, now not the head, applies nothing either.
    let answer = w.command(4, "alice", &format!("/slipway apply qa {read}"));
    assert!(
        answer.contains("Nothing was applied") && answer.contains(&pushed[..12]),
        "{answer}"
    );
    assert!(!w.locked("qa"));

    // The legitimate path: alice reads the new head and names it.
    let answer = w.command(4, "alice", &format!("/slipway apply qa {pushed}"));
    assert!(answer.contains("Applied #4"), "{answer}");
    w.serves("qa", "reads your secrets");
}

/// A command naming no commit is judged by when its comment was made, not by when it came: a
/// delivery that comes minutes late (a backlog, a redelivery) does not approve a head pushed
/// after the comment, however old that head is by then.
#[test]
fn a_late_delivery_does_not_approve_a_head_pushed_after_its_comment() {
    let w = World::fresh_after_a_second();
    let read = w.commit_on("main", "fork-work", "looked at", None, Some(3));
    w.open_fork(3, &read);
    // alice reads the head and comments `/slipway preview`, naming none; the delivery of her
    // comment is held up somewhere.
    let late = util::fake_github::issue_comment_payload(3, "alice", "/slipway preview");
    // Meanwhile the fork's author pushes, and Slipway sees it at once.
    let pushed = w.commit_on(
        "fork-work",
        "fork-work",
        "reads your secrets",
        None,
        Some(3),
    );
    w.forge.set_head(3, &pushed);
    w.accepted(
        "pull_request",
        &pull_request_payload("synchronize", &w.forge.pr(3), false, None),
    );
    w.forge.wait_for_comment(
        3,
        |c| c.body.contains(MARKER) && c.body.contains(&pushed[..12]),
        T,
    );
    // The new head grows older than `fresh_head` (with a margin for the comment times'
    // whole seconds) before alice's comment comes.
    w.head_older_than(3, Duration::from_millis(2_500));
    let answer = w.answer_to(3, &late);
    assert!(
        answer.contains("Nothing was approved")
            && answer.contains(&pushed[..12])
            && answer.contains(&format!("`/slipway preview {pushed}`")),
        "{answer}"
    );
    assert!(w.page("pr-3").is_none(), "no preview of the pushed head");

    // The same command made now, long after the push was seen, approves it.
    let answer = w.command(3, "alice", "/slipway preview");
    assert!(answer.contains("allowed a preview"), "{answer}");
    w.serves("pr-3", "reads your secrets");
}

/// A head pushed back to an earlier commit is new to a reader too: the fork's author pushes
/// new code whose webhook is lost, a maintainer reads it and comments `/slipway preview`
/// naming no commit, and the author pushes the old head back before the comment is handled.
/// Slipway had recorded that old head long ago; the push back counts as seen now.
#[test]
fn a_head_pushed_back_to_an_old_commit_is_not_approved_unseen() {
    let w = World::fresh_after_a_second();
    let first = w.commit_on("main", "fork-work", "never reviewed", None, Some(3));
    w.open_fork(3, &first);
    // The first head grows old.
    w.head_older_than(3, Duration::from_millis(2_500));
    // A new head, whose webhook never comes; alice reads it and comments.
    let read = w.commit_on("fork-work", "fork-work", "looked at", None, Some(3));
    w.forge.set_head(3, &read);
    let comment = util::fake_github::issue_comment_payload(3, "alice", "/slipway preview");
    // The first head is pushed back, and its webhook comes before alice's comment.
    w.forge.set_head(3, &first);
    // Each push handled is an event of the pull request's ("#3 … at <head>").
    let store = slipway_state::Store::open(&w.s.home).expect("store");
    let updates = || {
        let query = slipway_state::EventQuery {
            limit: 1000,
            ..slipway_state::EventQuery::default()
        };
        let events = store.events(&query).expect("events");
        events
            .iter()
            .filter(|e| {
                e.message
                    .starts_with(&format!("#3 {}", w.forge.pr(3).title))
            })
            .count()
    };
    let before = updates();
    w.accepted(
        "pull_request",
        &pull_request_payload("synchronize", &w.forge.pr(3), false, None),
    );
    wait_for("the push back is handled", T, || {
        (updates() > before).then_some(())
    });
    let answer = w.answer_to(3, &comment);
    assert!(
        answer.contains("Nothing was approved") && answer.contains(&first[..12]),
        "{answer}"
    );
    assert!(
        w.page("pr-3").is_none(),
        "no preview of the head pushed back"
    );
}

/// [`STACK`] with `require_pr` on prod, serving pull request #1 (`reviewed`), approved by
/// carol and merged: the world, that stack, and the merge commit.
fn reviewed_under_require_pr() -> (World, String, String) {
    let strict = STACK.replace(
        "prod: { track: main, protected: true }",
        "prod: { track: main, protected: true, require_pr: true }",
    );
    let w = World::with_stack(&strict);
    w.serves("qa", "v1");
    let head = w.open_feature(1, "reviewed", None);
    w.forge.approve(1, "carol", &head);
    let reviewed = w.merge(1, "feature-1");
    w.serves("prod", "reviewed");
    (w, strict, reviewed)
}

/// §2.4, `require_pr`: a direct push that also set `require_pr: false` was deployed. Now a
/// commit is judged by the rules in force (those of what prod runs), so it is held; the rule
/// is lowered legitimately by merging that change through an approved pull request, after
/// which direct pushes reach prod.
#[test]
fn a_direct_push_cannot_switch_off_require_pr() {
    let (w, strict, reviewed) = reviewed_under_require_pr();

    // Straight to main, with the rule switched off in the same commit.
    let lax = strict.replace(", require_pr: true", "");
    w.s.write("slipway.yaml", &lax)
        .write("greeting.txt", "straight to main");
    let direct = w.s.commit("no review, and no rule requiring one");
    w.accepted("push", &push_payload("main", &reviewed, &direct));
    w.serves("qa", "straight to main");
    let held = w.held("prod", &[&direct[..12]]);
    assert!(
        held.contains("require_pr") && held.contains("in force"),
        "the rule in force judges the commit that lowers it: {held}"
    );
    assert_eq!(w.page("prod").as_deref(), Some("reviewed"));

    // The legitimate path: the lowered rule merged through an approved pull request…
    let head = w.open_feature(2, "rule lowered by review", None);
    w.forge.approve(2, "carol", &head);
    let merged = w.merge(2, "feature-2");
    w.serves("prod", "rule lowered by review");
    // …is in force now: a direct push reaches prod.
    w.s.write("greeting.txt", "direct, allowed now");
    let after = w.s.commit("direct");
    w.accepted("push", &push_payload("main", &merged, &after));
    w.serves("prod", "direct, allowed now");
}

/// §2.4, `protected`: a commit that dropped `protected: true` and a resource deleted it without
/// confirmation. Now the commit is judged as protected (the rule in force), so the delete is
/// held until a person confirms, and so is dropping the protection alone (or one commit could
/// drop it and the next delete freely); once confirmed and deployed, the lowered rule is in
/// force.
#[test]
fn a_commit_that_drops_protected_cannot_delete_without_confirmation() {
    let w = World::new();
    assert!(w.note_exists("prod"));
    let unprotected = STACK.replace(", protected: true", "");
    let before = git(&w.s.repo, &["rev-parse", "HEAD"]);
    w.s.write("slipway.yaml", &unprotected)
        .write("greeting.txt", "v2");
    let first = w.s.commit("prod is not protected any more");
    w.accepted("push", &push_payload("main", &before, &first));
    w.serves("qa", "v2");
    let held = w.held("prod", &["removes its `protected` setting"]);
    assert!(held.contains("--confirm-destroy prod"), "{held}");
    assert_eq!(w.page("prod").as_deref(), Some("v1"));

    // The next commit deletes, counting on the protection being gone.
    w.s.write("slipway.yaml", &without_note(&unprotected))
        .write("greeting.txt", "v3");
    let second = w.s.commit("and note goes");
    w.accepted("push", &push_payload("main", &first, &second));
    w.serves("qa", "v3");
    assert!(!w.note_exists("qa"), "qa, never protected, took it");
    let held = w.held("prod", &["protected", "note"]);
    assert!(held.contains("held"), "{held}");
    assert!(w.note_exists("prod"), "nothing was deleted in prod");
    assert_eq!(w.page("prod").as_deref(), Some("v1"));

    // The legitimate path: a person confirms.
    let url = format!("file://{}", w.s.repo.display());
    let apply = [
        "apply", "--repo", &url, "--ref", "main", "--env", "prod", "--yes",
    ];
    let refused = w.s.expect_code(&apply, 1);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--confirm-destroy prod"),
        "the command line asks for the confirmation too"
    );
    let mut confirmed = apply.to_vec();
    confirmed.extend(["--confirm-destroy", "prod"]);
    w.s.ok(&confirmed);
    assert!(!w.note_exists("prod"), "deleted once confirmed");
    w.serves("prod", "v3");
    assert_eq!(
        w.environment("prod")["protected"],
        false,
        "the confirmed commit's rules are in force"
    );
}

/// §2.5: a `/slipway apply prod` held (a protected delete awaiting confirmation) locked prod to
/// the pull request anyway, so prod stopped following main and the next pull request was
/// refused "because of the lock". Now a refused or held apply leaves no lock and no pin.
#[test]
fn a_held_apply_leaves_no_lock_and_no_pin() {
    let w = World::new();
    // #1 is approved, but deletes a resource of protected prod (and says prod is not
    // protected: the rule in force says it is).
    let deleting = without_note(&STACK.replace(", protected: true", ""));
    let head = w.open_feature(1, "deletes", Some(&deleting));
    w.forge.approve(1, "carol", &head);
    let answer = w.command(1, "alice", "/slipway apply prod");
    assert!(
        answer.contains("protected") && answer.contains("note") && answer.contains("not locked"),
        "a protected delete is not applied from a comment: {answer}"
    );
    assert!(w.note_exists("prod"));
    assert_eq!(w.page("prod").as_deref(), Some("v1"));
    assert!(!w.locked("prod"), "no lock is left behind");
    assert_eq!(
        w.environment("prod")["pinned"],
        false,
        "no pin is left behind"
    );

    // prod still follows main…
    w.s.write("greeting.txt", "v2");
    let v2 = w.s.commit("v2");
    w.accepted(
        "push",
        &push_payload("main", &git(&w.s.repo, &["rev-parse", "HEAD~1"]), &v2),
    );
    w.serves("prod", "v2");
    // …and the next pull request applies.
    let head = w.open_feature(2, "next", None);
    w.forge.approve(2, "carol", &head);
    w.applies_to_prod(2, "next");
    assert!(
        w.environments().contains(&"pr-2".to_string()),
        "previews still work"
    );
}

/// §2.4, through `/slipway apply`: a pull request whose stack says `require_pr: false` is
/// approved and applied to prod before merge; main gets a direct push, and the pull request
/// unlocks prod. prod runs the pull request's commit, but its rules were never accepted on
/// main, so the direct push is still held (the rules in force include those of the last
/// commit prod took from main).
#[test]
fn rules_of_a_pull_request_applied_before_merge_are_not_in_force() {
    let (w, strict, reviewed) = reviewed_under_require_pr();

    let lax = strict.replace(", require_pr: true", "");
    let head = w.open_feature(2, "lax", Some(&lax));
    w.forge.approve(2, "carol", &head);
    w.applies_to_prod(2, "lax");
    // While prod is locked to #2, main gets a push nobody reviewed; then prod is unlocked and
    // follows main again, from the pull request's commit.
    w.s.write("slipway.yaml", &lax)
        .write("greeting.txt", "straight to main");
    let direct = w.s.commit("no review");
    w.accepted("push", &push_payload("main", &reviewed, &direct));
    w.serves("qa", "straight to main");
    assert_eq!(w.page("prod").as_deref(), Some("lax"), "locked to #2");
    let answer = w.command(2, "alice", "/slipway unlock prod");
    assert!(answer.contains("Unlocked"), "{answer}");
    let held = w.held("prod", &[&direct[..12], "require_pr"]);
    assert!(held.contains("in force"), "{held}");
    assert_ne!(w.page("prod").as_deref(), Some("straight to main"));
}
