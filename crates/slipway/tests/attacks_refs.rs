//! Attacks on how refs reach a protected environment, found by the review of the pull-request
//! gate, each performed end to end against the real `slipway serve`, a real git repository
//! and (where the forge matters) GitHub's own webhook payloads and the fake GitHub API:
//!
//! - a tag named like a tracked branch (`main`) replaced the branch: git reads `main` as the
//!   tag when both exist, so any manual sync, unpin or closed pull request deployed the tag's
//!   commit to protected prod;
//! - `require_pr` took the merge commit of a pull request merged into any branch (a scratch
//!   branch its author merges alone), pushed on to the tracked branch;
//! - a deployer's pin skipped `require_pr`, and a pin's ancestry check held only for
//!   `protected`.

mod util;

use std::time::Duration;

use serde_json::json;
use util::fake_github::{pull_request_payload, push_payload};
use util::world::{self, ForgeWorld, GitHubDelivered, append_config, environment, page, serves};
use util::{FakeForge, Forge, PrSpec};
use util::{Sandbox, api_request, git, role_token, start_serve, stored_events, wait_for};

const SECRET: &str = "webhook-secret-for-tests";
const T: Duration = Duration::from_secs(60);
const MARKER: &str = "<!-- slipway:plan -->";

const STACK: &str = world::pr_stack!("{ branches: [\"feature/*\"] }");

/// Waits until `env` records `sha` as the commit it runs.
fn runs(s: &Sandbox, env: &str, sha: &str, why: &str) {
    wait_for(&format!("{env} runs {sha}: {why}"), T, || {
        (environment(s, env)["commit"] == sha).then_some(())
    });
}

/// A commit on a new branch `branch` from `from`, with `greeting.txt` = `text`; back on main.
fn commit_on(s: &Sandbox, from: &str, branch: &str, text: &str) -> String {
    world::commit_on(s, from, branch, text, None, None)
}

/// A tag `main` at a commit only it reaches, beside the branch `main`: a deployer's manual
/// sync, an unpin and the plan view all take the branch; a pin to `main` is refused as
/// ambiguous (naming both), a pin to the tag's commit as not on prod's branch, and an ad-hoc
/// environment from `main` as ambiguous.
#[test]
fn a_tag_named_like_the_tracked_branch_never_reaches_prod() {
    let s = Sandbox::new();
    s.write("slipway.yaml", STACK)
        .write("greeting.txt", "v1")
        .commit("v1");
    // No polling: only what a person asks for moves an environment here.
    append_config(&s, "[repo]\npoll_interval = \"1h\"\n");
    let deployer = role_token(&s, "deployer");
    let developer = role_token(&s, "developer");
    let server = start_serve(&s);
    let port = server.port();
    serves(port, "prod", "v1");

    // The attack: a commit reachable only from a tag named `main`, and a new commit on the
    // branch `main`.
    let evil = commit_on(&s, "main", "evil", "evil");
    git(&s.repo, &["tag", "main", &evil]);
    git(&s.repo, &["branch", "-D", "evil"]);
    s.write("greeting.txt", "v2");
    let v2 = s.commit("v2");

    // A deployer's manual sync of prod, which is accepted.
    let sync = |what: &str| {
        let (status, body) = api_request(
            &server.addr,
            "POST",
            "/api/v1/environments/prod/sync",
            &deployer,
            Some(json!({})),
        );
        assert_eq!(status, 202, "{what}: {body}");
    };
    sync("a deployer may sync prod");
    serves(port, "prod", "v2");
    runs(
        &s,
        "prod",
        &v2,
        "a manual sync deploys the branch `main`, not the tag `main`",
    );

    let (status, plan) = api_request(
        &server.addr,
        "GET",
        "/api/v1/environments/prod/plan",
        &deployer,
        None,
    );
    assert_eq!(status, 200, "{plan}");
    assert_eq!(
        plan["commit"],
        v2.as_str(),
        "the plan view reads the branch, not the tag"
    );

    // A pin by name: ambiguous, both named.
    // A deployer's pin of prod to `commit`: the status, and the answer as text.
    let pin = |commit: &str| {
        let (status, answer) = api_request(
            &server.addr,
            "POST",
            "/api/v1/environments/prod/pin",
            &deployer,
            Some(json!({ "commit": commit })),
        );
        (status, answer.to_string())
    };
    let (status, text) = pin("main");
    assert!(
        status == 422 && text.contains("refs/heads/main") && text.contains("refs/tags/main"),
        "a pin to `main`, both a branch and a tag, is refused naming both: {status} {text}"
    );
    // A pin to the tag's commit, by its full name or its id: not on prod's branch.
    for commit in ["refs/tags/main", evil.as_str()] {
        let (status, text) = pin(commit);
        assert!(
            status == 422 && text.contains("takes only commits on `main`"),
            "a pin of protected prod to {commit}, only reachable from the tag, is refused: \
             {status} {text}"
        );
    }
    // An ad-hoc environment from the ambiguous name.
    let (status, refused) = api_request(
        &server.addr,
        "POST",
        "/api/v1/environments",
        &developer,
        Some(json!({"name": "demo", "ref": "main", "like": "previews"})),
    );
    let text = refused.to_string();
    assert!(
        status == 422 && text.contains("refs/heads/main") && text.contains("refs/tags/main"),
        "an environment from `main`, both a branch and a tag, is refused naming both: \
         {status} {text}"
    );

    // Pin and unpin (what a closed pull request's lock release does too): prod follows the
    // branch again.
    for (path, what) in [("pin", "pinned"), ("unpin", "unpinned")] {
        let (status, body) = api_request(
            &server.addr,
            "POST",
            &format!("/api/v1/environments/prod/{path}"),
            &deployer,
            Some(json!({})),
        );
        assert_eq!(status, 200, "prod is {what}: {body}");
    }
    s.write("greeting.txt", "v3");
    let v3 = s.commit("v3");
    sync("a deployer syncs prod again");
    serves(port, "prod", "v3");
    runs(&s, "prod", &v3, "after an unpin, prod follows the branch");
    assert_ne!(page(port, "prod").as_deref(), Some("evil"));
}

/// A `slipway serve` with the fake GitHub, a deployer's token and the stack
/// `prod: { track: main, protected: true, require_pr: true }`.
/// The GitHub world: [`ForgeWorld`] with a fake GitHub, and a deployer's token.
struct World {
    f: ForgeWorld,
    deployer: String,
}

impl std::ops::Deref for World {
    type Target = ForgeWorld;
    fn deref(&self) -> &ForgeWorld {
        &self.f
    }
}

impl World {
    fn new() -> World {
        let gh = FakeForge::start(Forge::GitHub, "slipway-bot");
        let api = gh.url();
        let stack = STACK.replace(
            "prod: { track: main, protected: true }",
            "prod: { track: main, protected: true, require_pr: true }",
        );
        let mut deployer = String::new();
        let f = ForgeWorld::serve(
            gh,
            &stack,
            &api,
            "repository = \"acme/shop\"",
            "test-token",
            SECRET,
            |s| deployer = role_token(s, "deployer"),
        );
        f.forge.set_permission("alice", "write");
        f.forge.set_permission("carol", "write");
        World { f, deployer }
    }

    /// Merges `branch` into `base` with a merge commit, as PR `number` on the forge, and
    /// returns the merge commit.
    fn merge(&self, number: u64, branch: &str, base: &str) -> String {
        let (merge, delivery) = self.merge_into(number, branch, base);
        self.accepted(delivery.event, &delivery.body);
        merge
    }

    /// A pull request from `feature-N` into main, approved by a maintainer and merged.
    fn reviewed(&self, number: u64, text: &str) -> String {
        let head = commit_on(&self.s, "main", &format!("feature-{number}"), text);
        git(
            &self.s.repo,
            &["update-ref", &format!("refs/pull/{number}/head"), &head],
        );
        self.forge.add_pr(PrSpec::new(number, &head));
        // Its author pushed its branch: the push webhook says who.
        self.pushed_branch(number);
        self.accepted(
            "pull_request",
            &pull_request_payload("opened", &self.forge.pr(number), false, None),
        );
        self.forge
            .wait_for_comment(number, |c| c.body.contains(MARKER), T);
        self.forge.approve(number, "carol", &head);
        self.merge(number, &format!("feature-{number}"), "main")
    }

    /// Publishes main's new tip `after` (from `before`) with a push webhook.
    fn pushed(&self, before: &str, after: &str) {
        self.accepted("push", &push_payload("main", before, after));
    }

    fn held(&self, env: &str, needles: &[&str]) -> String {
        wait_for(&format!("{env} is held ({needles:?})"), T, || {
            environment(&self.s, env)["message"]
                .as_str()
                .filter(|m| needles.iter().all(|n| m.contains(n)))
                .map(str::to_string)
        })
    }

    fn pin(&self, commit: &str) -> (u16, String) {
        let (status, body) = api_request(
            &self.server.addr,
            "POST",
            "/api/v1/environments/prod/pin",
            &self.deployer,
            Some(json!({ "commit": commit })),
        );
        (status, body.to_string())
    }
}

/// A pull request self-merged (even approved) into a scratch branch, whose merge commit is
/// then fast-forwarded onto main: prod (`require_pr`) holds it, since its merge was not into
/// the branch prod tracks; qa, which has no `require_pr`, shows the commit did reach main.
/// Then a deployer's pin cannot take what the reconcile holds: a direct push, or that merge
/// commit, are refused naming `require_pr`; a rollback to an earlier deployment still works.
/// Ad-hoc environments made from a tag and from an abbreviated commit id stay at that
/// commit: a branch pushed later under the tag's name or the id's (anyone who can push may)
/// replaces it neither on a poll nor on a person's sync. Each used to be kept as the name
/// given, and names are looked up as branches first.
#[test]
fn a_branch_named_like_an_ad_hoc_environments_tag_or_commit_id_never_replaces_it() {
    let s = Sandbox::new();
    s.write("slipway.yaml", STACK)
        .write("greeting.txt", "v1")
        .commit("v1");
    append_config(&s, "[repo]\npoll_interval = \"1h\"\n");
    let developer = role_token(&s, "developer");
    let server = start_serve(&s);
    serves(server.port(), "prod", "v1");
    let v1 = git(&s.repo, &["rev-parse", "HEAD"]);
    git(&s.repo, &["tag", "v1.0", &v1]);
    let call = |method: &str, path: &str, body: serde_json::Value| {
        let (status, answer) = api_request(&server.addr, method, path, &developer, Some(body));
        assert!(status / 100 == 2, "{method} {path}: {status} {answer}");
        answer
    };
    let short = &v1[..10];
    for (env, reference) in [("demo-tag", "v1.0"), ("demo-id", short)] {
        call(
            "POST",
            "/api/v1/environments",
            json!({"name": env, "ref": reference, "like": "previews"}),
        );
        runs(&s, env, &v1, "made from the tag, and from the commit's id");
    }

    // The attack: branches named `v1.0` and like the commit's id, at a commit of its own.
    let evil = commit_on(&s, "main", "v1.0", "evil");
    git(&s.repo, &["branch", short, &evil]);
    call("POST", "/api/v1/refresh", json!({}));
    let unchanged = |env: &str| {
        stored_events(&s, "sync.unchanged")
            .iter()
            .filter(|e| e.environment.as_ref().is_some_and(|n| n.as_str() == env))
            .count()
    };
    for env in ["demo-tag", "demo-id"] {
        let before = unchanged(env);
        call(
            "POST",
            &format!("/api/v1/environments/{env}/sync"),
            json!({}),
        );
        wait_for(&format!("{env}'s sync is done"), T, || {
            (unchanged(env) > before).then_some(())
        });
        assert_eq!(environment(&s, env)["commit"], v1.as_str(), "{env}");
    }
}

/// A repository URL with a token in it (`https://x-token:TOKEN@host/...`): git is never
/// given the token as an argument, which anyone on the machine (a branch's code included)
/// reads in `/proc/PID/cmdline` while a clone or fetch runs; it gets it in its environment,
/// as an `Authorization` header. Nor does a message print it. A `git` on PATH records what it
/// is given.
#[test]
fn a_token_in_the_repository_url_is_in_no_process_arguments() {
    use base64::Engine as _;
    let s = Sandbox::new();
    let bin = s.dir.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    let log = s.dir.path().join("git.log");
    let real = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .expect("sh runs")
            .stdout,
    )
    .expect("utf-8");
    let wrapper = bin.join("git");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf 'args: %s\\n' \"$*\" >> '{log}'\n\
             printf 'header: %s\\n' \"$GIT_CONFIG_VALUE_0\" >> '{log}'\nexec {real} \"$@\"\n",
            log = log.display(),
            real = real.trim()
        ),
    )
    .expect("written");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Nothing listens on port 9: the clone fails, once git has been given the URL.
    let out = s
        .cmd(&[
            "validate",
            "--repo",
            "https://x-token:s3cr%40t-TOKEN@127.0.0.1:9/acme/shop.git",
        ])
        .env("PATH", &path)
        .output()
        .expect("slipway runs");
    assert!(!out.status.success(), "nothing to clone from");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let logged = std::fs::read_to_string(&log).expect("git ran");
    for text in [&said, &logged] {
        assert!(!text.contains("TOKEN") && !text.contains("s3cr"), "{text}");
    }
    assert!(
        logged.contains("https://127.0.0.1:9/acme/shop.git"),
        "git is given the URL without its credentials: {logged}"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode("x-token:s3cr@t-TOKEN");
    assert!(
        logged.contains(&format!("header: Authorization: Basic {basic}")),
        "and the credentials in its environment: {logged}"
    );
}

#[test]
fn require_pr_takes_only_merges_into_the_tracked_branch_and_a_pin_cannot_skip_it() {
    let w = World::new();
    serves(w.port, "qa", "v1");
    let first = w.reviewed(3, "reviewed");
    serves(w.port, "prod", "reviewed");
    let second = w.reviewed(4, "reviewed again");
    serves(w.port, "prod", "reviewed again");

    // The attack of point 2: a pull request into `scratch`, approved and merged there, then
    // its merge commit pushed to main.
    git(&w.s.repo, &["branch", "scratch", "main"]);
    let head = commit_on(&w.s, "main", "feature-5", "merged into scratch");
    git(&w.s.repo, &["update-ref", "refs/pull/5/head", &head]);
    w.forge.add_pr(PrSpec {
        base_ref: "scratch".into(),
        ..PrSpec::new(5, &head)
    });
    w.forge.approve(5, "carol", &head);
    let scratch_merge = w.merge(5, "feature-5", "scratch");
    git(&w.s.repo, &["merge", "-q", "--ff-only", &scratch_merge]);
    w.pushed(&second, &scratch_merge);
    serves(w.port, "qa", "merged into scratch");
    let held = w.held("prod", &[&scratch_merge[..12], "scratch"]);
    assert!(
        held.contains("require_pr"),
        "a merge into another branch is not prod's gate: {held}"
    );
    assert_eq!(
        page(w.port, "prod").as_deref(),
        Some("reviewed again"),
        "prod keeps running what it ran"
    );

    // The attack of point 3: a direct push to main, held; then a deployer pins prod to it.
    let before = git(&w.s.repo, &["rev-parse", "HEAD"]);
    w.s.write("greeting.txt", "pushed directly");
    let direct = w.s.commit("pushed directly");
    w.pushed(&before, &direct);
    serves(w.port, "qa", "pushed directly");
    w.held("prod", &[&direct[..12], "require_pr"]);
    for commit in [direct.as_str(), scratch_merge.as_str()] {
        let (status, refused) = w.pin(commit);
        assert!(
            status == 422 && refused.contains("require_pr"),
            "a deployer's pin of {commit} to require_pr prod is refused naming require_pr: \
             {status} {refused}"
        );
    }
    assert_eq!(
        environment(&w.s, "prod")["commit"],
        second.as_str(),
        "prod still runs the last reviewed merge"
    );
    assert_eq!(page(w.port, "prod").as_deref(), Some("reviewed again"));

    // The legitimate paths: a pin to an approved merge into main, and a rollback to an
    // earlier deployment.
    let (status, body) = w.pin(&second);
    assert_eq!(status, 200, "a pin to a reviewed merge into main: {body}");
    let (status, list) = api_request(
        &w.server.addr,
        "GET",
        "/api/v1/environments/prod/deployments",
        &w.deployer,
        None,
    );
    assert_eq!(status, 200, "{list}");
    let earlier = list["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .find(|d| d["commit"] == first.as_str())
        .and_then(|d| d["id"].as_i64())
        .expect("prod deployed the first reviewed merge");
    let (status, body) = api_request(
        &w.server.addr,
        "POST",
        "/api/v1/environments/prod/rollback",
        &w.deployer,
        Some(json!({ "deployment": earlier })),
    );
    assert_eq!(
        status, 200,
        "a rollback to an earlier deployment works: {body}"
    );
    serves(w.port, "prod", "reviewed");
}
