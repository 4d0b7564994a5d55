//! Notifications (`[notify.NAME]`) end to end: the real `slipway serve` following a real
//! repository, real processes, and recording receivers that are real HTTP servers on
//! 127.0.0.1: what a receiver hears, once per state change, in JSON and in Slack's format;
//! a failing receiver retried while reconciliation carries on; one down for good given up
//! with a `notify.failed` event; pending notifications across a restart; configuration
//! errors that name the section and the variable, never a URL.

mod util;

use std::time::Duration;

use serde_json::Value;
use util::receiver::{Receiver, dead_url};
use util::world::{append_config, page};
use util::*;

const T: Duration = Duration::from_secs(90);

/// Stack `shop`: `environments`, and an exposed process serving `greeting.txt`, plus `extra`
/// resources.
fn stack(environments: &str, extra: &str) -> String {
    format!(
        "version: 1\nstack: shop\nenvironments: {environments}\nresources:\n  web:\n    type: process\n    command: [\"python3\", \"-m\", \"http.server\", \"${{ports.http}}\", \"--bind\", \"127.0.0.1\"]\n    ports: [http]\n    health: {{ http: /greeting.txt }}\n    expose: http\n{extra}"
    )
}

const DEV: &str = "{ dev: { track: main } }";

/// A file the drift test edits.
const CONF: &str = "  conf:\n    type: file\n    path: etc/app.toml\n    content: \"a = 1\\n\"\n";

/// A sandbox with `stack` and `greeting.txt` = `v1` committed on `main` (that commit's sha),
/// polling fast, with `notify` appended to its configuration.
fn sandbox(stack: &str, notify: &str) -> (Sandbox, String) {
    let s = Sandbox::new();
    append_config(
        &s,
        &format!(
            "[repo]\npoll_interval = \"300ms\"\n[controller]\ndrift_interval = \"500ms\"\n{notify}"
        ),
    );
    s.write("slipway.yaml", stack).write("greeting.txt", "v1");
    let sha = s.commit("v1");
    (s, sha)
}

/// The events of `kind` the state records.
fn events(s: &Sandbox, kind: &str) -> Vec<slipway_state::EventRecord> {
    stored_events(s, kind)
}

/// Every event's kind and message, for failure reports.
fn all_events(s: &Sandbox) -> Vec<(String, String)> {
    let store = slipway_state::Store::open(&s.home).expect("open the store");
    store
        .events(&slipway_state::EventQuery {
            limit: 10_000,
            ..slipway_state::EventQuery::default()
        })
        .expect("read events")
        .into_iter()
        .map(|e| (e.kind.to_string(), e.message))
        .collect()
}

fn commits(notifications: &[Value]) -> Vec<String> {
    notifications
        .iter()
        .map(|n| n["commit"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn a_receiver_hears_each_state_change_once_in_json_or_slack() {
    let (hook, chat) = (Receiver::start(), Receiver::start());
    let (s, v1) = sandbox(
        &stack(DEV, CONF),
        "[notify.hook]\nurl_env = \"HOOK_URL\"\n\
         [notify.chat]\nurl_env = \"CHAT_URL\"\nformat = \"slack\"\nevents = [\"failed\", \"drift\"]\n",
    );
    let (hook_url, chat_url) = (
        hook.url("/hooks/T0/SECRET-HOOK"),
        chat.url("/services/T0/SECRET-CHAT"),
    );
    let (server, logs) = serve_from(
        {
            let mut c = s.cmd(&[
                "serve",
                "--repo",
                &format!("file://{}", s.repo.display()),
                "--listen",
                "127.0.0.1:0",
            ]);
            c.env("HOOK_URL", &hook_url).env("CHAT_URL", &chat_url);
            c
        },
        Duration::from_secs(40),
    );
    let port = server.port();
    let first = wait_for("the JSON receiver hears that dev deployed v1", T, || {
        hook.events("deployed").into_iter().next()
    });
    let request = &hook.received()[0];
    assert_eq!(request.path, "/hooks/T0/SECRET-HOOK");
    assert!(request.content_type.starts_with("application/json"));
    assert_eq!(first["environment"], "dev");
    assert_eq!(first["stack"], "shop");
    assert_eq!(first["commit"], v1.as_str());
    assert_eq!(
        first["author"], "Slipway Test",
        "the author's name, not the address"
    );
    assert_eq!(
        first["url"],
        format!("http://dev.shop.localhost:{port}/"),
        "the preview URL of the exposed process"
    );
    assert!(
        first["at"]
            .as_str()
            .is_some_and(|at| at.ends_with('Z') && at.contains('T')),
        "an RFC 3339 time: {first}"
    );
    assert!(
        first["message"]
            .as_str()
            .is_some_and(|m| m.contains("dev is at"))
    );

    // Drift, repaired: one `drift`; the repair's apply of the same commit is no new deploy.
    let conf = {
        let store = slipway_state::Store::open(&s.home).expect("open the store");
        let dev: slipway_core::EnvName = "dev".parse().expect("a name");
        let resources = store.resources(&dev).expect("dev's resources");
        let conf = resources.iter().find(|r| r.name == "conf").expect("conf");
        std::path::PathBuf::from(conf.outputs["path"].as_str().expect("its path"))
    };
    std::fs::write(&conf, "edited by hand, longer than before\n").expect("edit the file");
    let drift = wait_for_explained(
        "the Slack receiver hears of the drift",
        T,
        || {
            format!(
                "events: {:?}\nJSON receiver: {:?}",
                all_events(&s),
                hook.accepted()
            )
        },
        || chat.accepted().into_iter().next(),
    );
    assert!(
        drift["text"]
            .as_str()
            .is_some_and(|t| t.contains("dev drifted")),
        "Slack's fallback text: {drift}"
    );
    assert_eq!(drift["blocks"][0]["type"], "section");
    assert_eq!(drift["blocks"][0]["text"]["type"], "mrkdwn");
    wait_for("dev serves again", T, || {
        page(port, "dev").filter(|p| p == "v1")
    });

    // A new commit: one `deployed` more.
    s.write("greeting.txt", "v2");
    let v2 = s.commit("v2");
    wait_for("the receiver hears that v2 deployed", T, || {
        hook.events("deployed")
            .iter()
            .any(|n| n["commit"] == v2.as_str())
            .then_some(())
    });

    // A commit whose job fails for good, its command carrying Slack markup: one `failed`.
    let hostile = "  check:\n    type: job\n    command: [\"sh\", \"-c\", \"exit 3 # <!channel> <https://evil.example|click> & co\"]\n";
    s.write("slipway.yaml", &stack(DEV, &format!("{CONF}{hostile}")));
    let bad = s.commit("a failing job");
    let failed = wait_for("the Slack receiver hears of the failure", T, || {
        chat.accepted()
            .into_iter()
            .find(|n| n["text"].as_str().is_some_and(|t| t.contains("dev failed")))
    });
    let text = failed.to_string();
    for injected in ["<!channel>", "<https://evil.example"] {
        assert!(
            !text.contains(injected),
            "{injected} reaches Slack escaped: {text}"
        );
    }
    assert!(
        text.contains("&lt;!channel&gt;"),
        "the branch's text is shown, escaped: {text}"
    );
    s.write("slipway.yaml", &stack(DEV, CONF));
    s.write("greeting.txt", "v3");
    let v3 = s.commit("fixed");
    wait_for("the receiver hears that the fix deployed", T, || {
        hook.events("deployed")
            .iter()
            .any(|n| n["commit"] == v3.as_str())
            .then_some(())
    });

    assert_eq!(
        commits(&hook.events("deployed")),
        [v1.clone(), v2, v3],
        "one `deployed` per new commit: not per poll, drift pass or repair"
    );
    assert_eq!(hook.events("drift").len(), 1, "one `drift` for one drift");
    assert_eq!(
        commits(&hook.events("failed")),
        [bad],
        "one `failed` for the failing commit"
    );
    assert_eq!(
        chat.accepted()
            .iter()
            .filter(|n| n["text"].as_str().is_some_and(|t| t.contains("deployed")))
            .count(),
        0,
        "a receiver hears only the events it asked for"
    );
    let logged = logs.lock().expect("logs").join("\n");
    assert!(
        !logged.contains("SECRET-HOOK") && !logged.contains("SECRET-CHAT"),
        "receivers' URLs are never logged: {logged}"
    );
    drop(server);
    let _ = s.run(&["destroy", "--env", "dev", "--yes"]);
}

#[test]
fn a_failing_receiver_is_retried_while_other_environments_deploy_and_one_down_for_good_is_given_up()
{
    let flaky = Receiver::start();
    flaky.set_failing(true);
    let down = dead_url("/services/T0/SECRET-DOWN");
    let (s, _) = sandbox(
        &stack("{ dev: { track: main }, stage: { track: stage } }", ""),
        "[notify.flaky]\nurl_env = \"FLAKY_URL\"\nenvironments = [\"dev\"]\n\
         [notify.down]\nurl_env = \"DOWN_URL\"\nattempts = 2\nevents = [\"deployed\"]\n",
    );
    git(&s.repo, &["branch", "stage"]);
    let server = start_serve_with(
        &s,
        &[("FLAKY_URL", &flaky.url("/hook")), ("DOWN_URL", &down)],
    );
    let port = server.port();
    wait_for("the receiver refused dev's deploy twice", T, || {
        (flaky.received().len() >= 2).then_some(())
    });
    assert!(flaky.accepted().is_empty());
    // Meanwhile, reconciliation carries on: a push to stage deploys.
    git(&s.repo, &["checkout", "-q", "stage"]);
    s.write("greeting.txt", "stage v2");
    s.commit("stage v2");
    git(&s.repo, &["checkout", "-q", "main"]);
    wait_for("stage deploys while the receiver fails", T, || {
        page(port, "stage").filter(|p| p == "stage v2")
    });
    assert!(
        flaky.accepted().is_empty(),
        "the receiver was still failing while stage deployed"
    );
    flaky.set_failing(false);
    let heard = wait_for("the receiver hears dev's deploy after a retry", T, || {
        flaky.events("deployed").into_iter().next()
    });
    assert_eq!(heard["environment"], "dev");
    assert!(
        flaky
            .events("deployed")
            .iter()
            .all(|n| n["environment"] == "dev"),
        "`environments = [\"dev\"]` keeps stage's notifications away"
    );

    let given_up = wait_for("the receiver down for good is given up", T, || {
        let failed = events(&s, "notify.failed");
        (failed.len() >= 2).then_some(failed)
    });
    for event in &given_up {
        assert!(
            event.message.contains("`down`") && event.message.contains("2 attempt"),
            "the event names the receiver and its attempts: {}",
            event.message
        );
        assert!(
            !event.message.contains("SECRET-DOWN") && !event.message.contains("127.0.0.1"),
            "never its URL: {}",
            event.message
        );
    }
    drop(server);
    for env in ["dev", "stage"] {
        let _ = s.run(&["destroy", "--env", env, "--yes"]);
    }
}

#[test]
fn a_notification_waiting_when_serve_is_killed_is_sent_after_it_restarts() {
    let receiver = Receiver::start();
    receiver.set_failing(true);
    let (s, v1) = sandbox(
        &stack(DEV, ""),
        "[notify.hook]\nurl_env = \"HOOK_URL\"\nevents = [\"deployed\"]\n",
    );
    let url = receiver.url("/hook");
    let server = start_serve_with(&s, &[("HOOK_URL", &url)]);
    wait_for("the receiver refused the notification", T, || {
        (!receiver.received().is_empty()).then_some(())
    });
    drop(server); // SIGKILL
    receiver.set_failing(false);
    let server = start_serve_with(&s, &[("HOOK_URL", &url)]);
    let heard = wait_for("the restarted serve delivers it", T, || {
        receiver.events("deployed").into_iter().next()
    });
    assert_eq!(heard["commit"], v1.as_str());
    s.write("greeting.txt", "v2");
    let v2 = s.commit("v2");
    wait_for("the next deploy is heard", T, || {
        receiver
            .events("deployed")
            .iter()
            .any(|n| n["commit"] == v2.as_str())
            .then_some(())
    });
    assert_eq!(
        commits(&receiver.events("deployed")),
        [v1, v2],
        "the waiting notification is sent once, from the outbox, and not announced again"
    );
    drop(server);
    let _ = s.run(&["destroy", "--env", "dev", "--yes"]);
}

#[test]
fn notification_settings_that_cannot_work_stop_serve_naming_the_section() {
    let secret = "https://hooks.example/services/T0/SECRET-VALUE";
    for (section, envs, named) in [
        (
            "[notify.chat]\nurl_env = \"CHAT_URL\"\n",
            vec![],
            "[notify.chat] reads its URL from $CHAT_URL, which is not set",
        ),
        (
            "[notify.chat]\nurl_env = \"CHAT_URL\"\n",
            vec![("CHAT_URL", "")],
            "$CHAT_URL, which is not set or empty",
        ),
        (
            "[notify.chat]\nurl_env = \"CHAT_URL\"\n",
            vec![("CHAT_URL", "ftp://SECRET-VALUE@example")],
            "is not an http:// or https:// URL",
        ),
        (
            "[notify.chat]\nurl_env = \"CHAT_URL\"\nevents = [\"deployed\", \"exploded\"]\n",
            vec![("CHAT_URL", secret)],
            "expected one of `deployed`, `failed`, `expired`, `drift`, `held`, `woke`",
        ),
        (
            "[notify.chat]\nurl_env = \"CHAT_URL\"\nformat = \"teams\"\n",
            vec![("CHAT_URL", secret)],
            "expected `json` or `slack`",
        ),
        (
            "[notify.chat]\nurl = \"https://hooks.example/x\"\n",
            vec![],
            "unknown field `url`",
        ),
        (
            "[notify.chat]\nurl_env = \"CHAT_URL\"\nevents = []\n",
            vec![("CHAT_URL", secret)],
            "[notify.chat] events = []: it would hear nothing",
        ),
    ] {
        let (s, _) = sandbox(&stack(DEV, ""), section);
        let mut command = s.cmd(&["serve", "--listen", "127.0.0.1:0"]);
        for (k, v) in &envs {
            command.env(k, v);
        }
        let out = command.output().expect("serve runs");
        let said = text(&out);
        assert!(!out.status.success(), "{section} stops serve: {said}");
        assert!(said.contains(named), "{section:?} says {named:?}: {said}");
        assert!(!said.contains("SECRET-VALUE"), "never the URL: {said}");
    }
}

#[test]
fn a_github_preview_is_a_deployment_whose_status_carries_the_preview_url() {
    use util::world::{ForgeWorld, GitHubDelivered, STACK, Served};
    use util::{Event, Forge, PrState};
    let w = ForgeWorld::start(Forge::GitHub, STACK, "test-token", "webhook-secret");
    w.serves("qa", "v1");
    let head = w.push_pr(5, "feature-5", "pr5-a");
    let opened = w.opened(5, "feature-5", &head);
    w.accepted(opened.event, &opened.body);
    let url = format!("http://pr-5.shop.localhost:{}/", w.port);

    // The plan comment carries the preview URL from its first version on.
    let plan = w
        .forge
        .wait_for_comment(5, |c| c.body.contains("<!-- slipway:plan -->"), T);
    assert!(
        plan.body.contains(&format!("[open]({url})")),
        "the plan comment links the preview:\n{}",
        plan.body
    );
    w.serves("pr-5", "pr5-a");
    let deployment = wait_for_explained(
        "GitHub shows pr-5's deployment succeeded at its preview URL",
        T,
        || format!("{:#?}", w.forge.deployments()),
        || {
            w.forge
                .deployments()
                .into_iter()
                .find(|d| d.statuses.last().is_some_and(|s| s.state == "success"))
        },
    );
    assert_eq!(deployment.environment, "pr-5");
    assert_eq!(deployment.sha, head);
    assert!(deployment.transient_environment && !deployment.auto_merge);
    assert_eq!(deployment.required_contexts, Some(Vec::new()));
    assert_eq!(
        deployment
            .statuses
            .iter()
            .map(|s| s.state.as_str())
            .collect::<Vec<_>>(),
        ["in_progress", "success"]
    );
    assert_eq!(
        deployment.statuses[1].environment_url.as_deref(),
        Some(url.as_str()),
        "the success carries the preview URL"
    );

    // Closed: the preview is destroyed, and its deployment inactive.
    w.forge.set_state(5, PrState::Closed);
    let closed = w.pr_event(Event::Closed, 5, "feature-5", &head);
    w.accepted(closed.event, &closed.body);
    wait_for_explained(
        "pr-5's deployment is inactive once the pull request closed",
        T,
        || format!("{:#?}", w.forge.deployments()),
        || {
            w.forge
                .deployments()
                .iter()
                .any(|d| d.statuses.last().is_some_and(|s| s.state == "inactive"))
                .then_some(())
        },
    );
    let deployments = w.forge.deployments();
    assert_eq!(
        deployments.len(),
        1,
        "one deployment for one commit: {deployments:#?}"
    );
    for r in w.forge.requests() {
        if r.path.contains("/deployments") {
            assert!(
                matches!(
                    r.operation,
                    Some(
                        "repos/list-deployments"
                            | "repos/create-deployment"
                            | "repos/create-deployment-status"
                    )
                ) && (200..300).contains(&r.status),
                "{}: a deployments call GitHub accepts",
                r.line()
            );
        }
    }
    assert!(w.forge.unhandled().is_empty(), "{:?}", w.forge.unhandled());
}

#[test]
fn two_replicas_on_one_state_notify_each_deploy_once() {
    use slipway_testkit::pg::TestDatabase;
    use util::replicas::{ReplicaSettings, replica_config, replica_home, serve_command};
    const ENVS: usize = 4;
    let stack = |content: &str| {
        let envs: Vec<String> = (1..=ENVS)
            .map(|i| format!("e{i}: {{ track: main }}"))
            .collect();
        format!(
            "version: 1\nstack: shared\nenvironments: {{ {} }}\nresources:\n  conf: {{ type: file, path: conf.txt, content: \"{content}\" }}\n",
            envs.join(", ")
        )
    };
    let receiver = Receiver::start();
    let database = TestDatabase::create("slipway_notify_replicas");
    let s = Sandbox::new();
    s.with_local("advertise = \"127.0.0.1\"");
    append_config(
        &s,
        "[notify.hook]\nurl_env = \"HOOK_URL\"\nevents = [\"deployed\"]\n",
    );
    s.write("slipway.yaml", &stack("one"));
    let mut commits = vec![s.commit("one")];
    let url = receiver.url("/hook");
    let start = |name: &str| {
        let config = replica_config(&s, &database, ReplicaSettings::named(name));
        let home = replica_home(&s, name);
        let mut command = serve_command(&s, &home, &config);
        command.env("HOOK_URL", &url);
        (home, command)
    };
    let (home1, command1) = start("r1");
    let (r1, _) = serve_from(command1, Duration::from_secs(40));
    wait_for("r1 makes the state key", T, || {
        home1.join("state.key").is_file().then_some(())
    });
    let (home2, command2) = start("r2");
    std::fs::copy(home1.join("state.key"), home2.join("state.key")).expect("copy the key");
    let (r2, _) = serve_from(command2, Duration::from_secs(40));
    let heard = |commit: &str| {
        receiver
            .events("deployed")
            .iter()
            .filter(|n| n["commit"] == commit)
            .count()
    };
    for content in ["", "two", "three"] {
        if !content.is_empty() {
            s.write("slipway.yaml", &stack(content));
            commits.push(s.commit(content));
        }
        let commit = commits.last().expect("a commit").clone();
        wait_for_explained(
            &format!("every environment's deploy of {content:?} is heard"),
            T,
            || format!("{:#?}", receiver.accepted()),
            || (heard(&commit) >= ENVS).then_some(()),
        );
    }
    let mut seen = std::collections::BTreeMap::new();
    for n in receiver.events("deployed") {
        *seen
            .entry((n["environment"].to_string(), n["commit"].to_string()))
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), ENVS * commits.len(), "{seen:?}");
    assert!(
        seen.values().all(|&n| n == 1),
        "each deploy is heard once, whichever replica read and sent it: {seen:?}"
    );
    drop((r1, r2));
}
