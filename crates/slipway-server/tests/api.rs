//! The API over real HTTP: `serve` on 127.0.0.1:0, a real controller running its loop over a
//! real git repository made with the `git` CLI, and tokens of every role in its store.
//!
//! Every response of a happy path is validated against the schema the OpenAPI document gives
//! for it, so the document is checked against what the server really sends.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_controller::{Controller, Options};
use slipway_core::EnvName;
use slipway_core::vocab::{EnvKind, EventKind, ResourceStatus, SyncState};
use slipway_engine::{Engine, EngineConfig};
use slipway_git::GitRepository;
use slipway_testkit::git::git;
use tempfile::TempDir;
use tokio::sync::watch;

const ROLES: [&str; 4] = ["viewer", "developer", "deployer", "admin"];

/// A name the test knows to be valid.
fn env(name: &str) -> EnvName {
    EnvName::parse(name).expect("the test's environment names are DNS labels")
}

fn stack(version: u32) -> String {
    slipway_testkit::stack::main_and_previews(
        "demo",
        &format!(
            r#"resources:
  config: {{ type: file, path: etc/app.toml, content: "version = {version}\n" }}
"#
        ),
    )
}

/// A response: status, headers we look at, and the body.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "the body of a {} response is JSON ({e}): {}",
                self.status, self.body
            )
        })
    }

    /// Asserts the status, and for an error the JSON error shape.
    fn expect(self, status: u16, what: &str) -> Reply {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        if status >= 400 {
            let body = self.json();
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{what}: an error response says what went wrong in `error`: {body}"
            );
        }
        self
    }

    /// Asserts that the error's `hint` mentions `needle`, saying `what` when it does not.
    fn assert_hint(&self, needle: &str, what: &str) {
        assert!(
            self.json()["hint"]
                .as_str()
                .is_some_and(|h| h.contains(needle)),
            "{what}: {}",
            self.body
        );
    }

    /// The JSON body, validated against the schema the document gives for `method route`
    /// answering this status.
    fn documented(self, doc: &Value, method: &str, route: &str) -> Value {
        let body = self.json();
        assert_matches_schema(doc, method, route, self.status, &body);
        body
    }
}

/// A server and a controller over a fresh repository and home.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    controller: Controller,
    stop: watch::Sender<bool>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    looping: Option<tokio::task::JoinHandle<()>>,
    repo: PathBuf,
    /// Token by role; its holder's name is `<role>-token`.
    tokens: BTreeMap<&'static str, String>,
    revoked: String,
    agent: ureq::Agent,
    _dir: TempDir,
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).expect("create the repository directory");
        git(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("slipway.yaml"), stack(1)).expect("write slipway.yaml");
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "version 1"]);

        let engine = Engine::open(&dir.path().join("home"), EngineConfig::default(), vec![])
            .expect("open the engine");
        let source = GitRepository::open(
            repo.to_str().expect("a UTF-8 temporary path"),
            &dir.path().join("cache"),
        )
        .expect("open the repository");
        let options = Options {
            poll_interval: Duration::from_secs(3600),
            drift_interval: Duration::from_secs(3600),
            requeue_interval: Duration::from_secs(3600),
            concurrency: 2,
            ..Options::default()
        };
        let controller = Controller::new(
            Arc::new(engine),
            Arc::new(source),
            repo.to_str().expect("a UTF-8 temporary path"),
            "",
            options,
        );
        let store = controller.engine().store();
        let mut tokens = BTreeMap::new();
        for role in ROLES {
            let token = slipway_state::new_token();
            store
                .create_token(
                    &slipway_state::hash_token(&token),
                    role,
                    &format!("{role}-token"),
                    slipway_state::now_ms(),
                )
                .expect("record a token");
            tokens.insert(role, token);
        }
        let revoked = slipway_state::new_token();
        let id = store
            .create_token(
                &slipway_state::hash_token(&revoked),
                "admin",
                "revoked-token",
                slipway_state::now_ms(),
            )
            .expect("record a token");
        store
            .revoke_token(id, slipway_state::now_ms())
            .expect("revoke it");

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("the bound address");
        let (stop, stop_rx) = watch::channel(false);
        let server = runtime.spawn(slipway_server::serve(
            listener,
            controller.clone(),
            stopped(stop_rx.clone()),
        ));
        let looping = runtime.spawn({
            let controller = controller.clone();
            async move { controller.run(stopped(stop_rx)).await }
        });
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .build(),
        );
        let fixture = Fixture {
            runtime,
            addr,
            controller,
            stop,
            server: Some(server),
            looping: Some(looping),
            repo,
            tokens,
            revoked,
            agent,
            _dir: dir,
        };
        // The controller's first refresh records the static environment `main`.
        fixture.wait_for("the controller records `main` from the repository", || {
            fixture
                .controller
                .engine()
                .store()
                .environment(&env("main"))
                .ok()
                .flatten()
        });
        fixture
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn token(&self, role: &str) -> &str {
        &self.tokens[role]
    }

    /// One call; `token` `None` sends no Authorization header.
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = Vec::new();
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth.as_str()));
        }
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let reply = self.raw(method, path, &headers, body);
        Reply {
            status: reply.status,
            content_type: reply.header("content-type").unwrap_or_default().to_string(),
            body: reply.body,
        }
    }

    fn as_role(&self, role: &str, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.call(method, path, Some(self.token(role)), body)
    }

    /// Polls `probe` until it returns something, or fails after 30 s.
    fn wait_for<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(found) = probe() {
                return found;
            }
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the controller has deployed `env` and recorded it synced.
    fn wait_synced(&self, env: &str) {
        self.wait_for(&format!("{env} is deployed and synced"), || {
            let store = self.controller.engine().store();
            let record = store.environment(&self::env(env)).ok().flatten()?;
            let deployed = !store.deployments(&self::env(env), 1).ok()?.is_empty();
            (record.sync == SyncState::Synced && deployed).then_some(())
        });
    }

    fn commit(&self, version: u32) -> String {
        std::fs::write(self.repo.join("slipway.yaml"), stack(version)).expect("write slipway.yaml");
        git(
            &self.repo,
            &["commit", "-q", "-am", &format!("version {version}")],
        );
        git(&self.repo, &["rev-parse", "HEAD"])
    }

    /// The last thousand entries of the audit log, read by an admin.
    fn audit(&self) -> Value {
        self.as_role("admin", "GET", "/api/v1/audit?limit=1000", None)
            .expect(200, "an admin reads the audit log")
            .json()
    }

    fn openapi(&self) -> Value {
        self.call("GET", "/api/v1/openapi.json", None, None)
            .expect(200, "the OpenAPI document is served without a token")
            .json()
    }

    /// Stops the server and the controller; returns whether both ended within 10 s.
    fn shut_down(&mut self) -> bool {
        let _ = self.stop.send(true);
        let server = self.server.take();
        let looping = self.looping.take();
        self.runtime.block_on(async move {
            let ended = async {
                if let Some(server) = server {
                    let _ = server.await;
                }
                if let Some(looping) = looping {
                    let _ = looping.await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), ended)
                .await
                .is_ok()
        })
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if self.server.is_some() {
            self.shut_down();
        }
    }
}

/// Validates `body` against the schema the document gives for `method path` answering
/// `status`.
fn assert_matches_schema(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let schema = &doc["paths"][path][method.to_ascii_lowercase()]["responses"][status.to_string()]
        ["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "the document describes the {status} JSON response of {method} {path}"
    );
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema]
    });
    let validator = jsonschema::validator_for(&root).expect("the document's schemas compile");
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "the {status} response of {method} {path} matches its schema in the OpenAPI document: {errors:#?}\n{body:#}"
    );
}

/// Every route, with a path and body that are valid but harmless, for the authorization
/// tests: `(method, path, body, public)`.
fn every_route() -> Vec<(&'static str, &'static str, Option<&'static str>, bool)> {
    vec![
        ("GET", "/healthz", None, true),
        ("GET", "/metrics", None, true),
        ("GET", "/api/v1/openapi.json", None, true),
        ("GET", "/api/v1/environments", None, false),
        (
            "POST",
            "/api/v1/environments",
            Some(r#"{"name":"refused","ref":"main","like":"previews"}"#),
            false,
        ),
        ("GET", "/api/v1/environments/main", None, false),
        ("DELETE", "/api/v1/environments/main", None, false),
        ("POST", "/api/v1/environments/main/sync", None, false),
        ("GET", "/api/v1/environments/main/plan", None, false),
        (
            "POST",
            "/api/v1/environments/main/rollback",
            Some(r#"{"deployment":1}"#),
            false,
        ),
        (
            "POST",
            "/api/v1/environments/main/extend",
            Some(r#"{"by":"2h"}"#),
            false,
        ),
        ("POST", "/api/v1/environments/main/pin", Some("{}"), false),
        ("POST", "/api/v1/environments/main/unpin", None, false),
        ("GET", "/api/v1/environments/main/deployments", None, false),
        ("GET", "/api/v1/environments/main/logs/config", None, false),
        (
            "GET",
            "/api/v1/environments/main/logs/config/follow",
            None,
            false,
        ),
        ("GET", "/api/v1/deployments/1", None, false),
        ("GET", "/api/v1/events", None, false),
        ("POST", "/api/v1/refresh", None, false),
        ("GET", "/api/v1/audit", None, false),
        ("GET", "/api/v1/replicas", None, false),
        ("GET", "/api/v1/whoami", None, false),
        ("GET", "/api/v1/pull-requests", None, false),
        ("POST", "/api/v1/session", None, false),
        ("DELETE", "/api/v1/session", None, false),
    ]
}

/// The routes the document must list, written out here rather than read from the server.
const DOCUMENTED: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/environments"),
    ("post", "/api/v1/environments"),
    ("get", "/api/v1/environments/{name}"),
    ("delete", "/api/v1/environments/{name}"),
    ("post", "/api/v1/environments/{name}/sync"),
    ("get", "/api/v1/environments/{name}/plan"),
    ("post", "/api/v1/environments/{name}/rollback"),
    ("post", "/api/v1/environments/{name}/extend"),
    ("post", "/api/v1/environments/{name}/link"),
    ("post", "/api/v1/environments/{name}/pin"),
    ("post", "/api/v1/environments/{name}/unpin"),
    ("post", "/api/v1/environments/{name}/sleep"),
    ("post", "/api/v1/environments/{name}/wake"),
    ("get", "/api/v1/environments/{name}/deployments"),
    ("get", "/api/v1/environments/{name}/logs/{resource}"),
    ("get", "/api/v1/environments/{name}/logs/{resource}/follow"),
    ("get", "/api/v1/deployments/{id}"),
    ("get", "/api/v1/events"),
    ("post", "/api/v1/refresh"),
    ("get", "/api/v1/audit"),
    ("get", "/api/v1/replicas"),
    ("post", "/webhooks/{forge}"),
    ("post", "/api/v1/session"),
    ("delete", "/api/v1/session"),
    ("get", "/api/v1/whoami"),
    ("get", "/api/v1/pull-requests"),
];

#[test]
fn every_endpoint_but_the_public_ones_refuses_a_call_without_a_valid_token() {
    let f = Fixture::new();
    for (method, path, body, public) in every_route() {
        if public {
            f.call(method, path, None, body)
                .expect(200, &format!("{method} {path} needs no token"));
            continue;
        }
        let reply = f
            .call(method, path, None, body)
            .expect(401, &format!("{method} {path} without a token is refused"));
        reply.assert_hint("Bearer", "a 401 says how to authenticate");
        f.call(method, path, Some("slw_not-a-token"), body).expect(
            401,
            &format!("{method} {path} with an unknown token is refused"),
        );
        f.call(method, path, Some(&f.revoked), body).expect(
            401,
            &format!("{method} {path} with a revoked token is refused"),
        );
    }
    // A token in another scheme is no bearer token.
    let reply = f
        .agent
        .get(f.url("/api/v1/environments"))
        .header("Authorization", format!("Basic {}", f.token("admin")))
        .call()
        .expect("a response");
    assert_eq!(reply.status().as_u16(), 401, "only `Bearer` is accepted");
    assert_eq!(
        f.controller
            .engine()
            .store()
            .environment(&env("main"))
            .expect("read main")
            .map(|e| e.pinned),
        Some(false),
        "no refused call changed anything"
    );
}

#[test]
fn every_endpoint_refuses_a_role_too_weak_for_it() {
    let f = Fixture::new();
    // The GETs below read `main`'s first deployment.
    f.wait_synced("main");
    // Any token may start and end its own browser session: those are not changes to refuse.
    let mutating: Vec<_> = every_route()
        .into_iter()
        .filter(|(method, path, _, public)| {
            *method != "GET" && !public && *path != "/api/v1/session"
        })
        .collect();
    for (method, path, body, _) in &mutating {
        let reply = f
            .as_role("viewer", method, path, *body)
            .expect(403, &format!("a viewer may not {method} {path}"));
        reply.assert_hint("role", "a 403 names the role needed");
    }
    // `main` is a static environment: changing it needs a deployer.
    for (method, path, body, _) in mutating
        .iter()
        .filter(|(_, path, _, _)| path.starts_with("/api/v1/environments/main"))
    {
        f.as_role("developer", method, path, *body).expect(
            403,
            &format!("a developer may not {method} {path} of a static environment"),
        );
    }
    for role in ["viewer", "developer", "deployer"] {
        f.as_role(role, "GET", "/api/v1/audit", None)
            .expect(403, &format!("a {role} may not read the audit log"));
    }
    // Every GET but the audit log is open to a viewer.
    for (method, path, _, _) in every_route().into_iter().filter(|(m, p, _, public)| {
        *m == "GET"
            && !public
            && *p != "/api/v1/audit"
            && *p != "/api/v1/events"
            // The stack's one resource is a file, which keeps no log: a 404, tested below.
            && !p.contains("/logs/")
    }) {
        f.as_role("viewer", method, path, None)
            .expect(200, &format!("a viewer may {method} {path}"));
    }
    // Refusals are audited, with who was refused.
    let audit = f.audit();
    let entries = audit["entries"].as_array().expect("entries");
    assert!(
        entries.iter().any(|e| e["who"] == "viewer-token"
            && e["action"] == "environment.destroy"
            && e["target"] == "main"
            && e["outcome"] == "refused"),
        "a refused destroy is in the audit log with who, what and its target: {audit:#}"
    );
    assert!(
        entries.iter().any(|e| e["who"] == "developer-token"
            && e["action"] == "environment.sync"
            && e["outcome"] == "refused"),
        "a developer refused on a static environment is audited: {audit:#}"
    );
}

#[test]
fn an_environment_lives_its_whole_life_through_the_api() {
    let f = Fixture::new();
    let doc = f.openapi();
    let first = git(&f.repo, &["rev-parse", "HEAD"]);

    // Create, as a developer: the token's name owns it.
    let created = f
        .as_role(
            "developer",
            "POST",
            "/api/v1/environments",
            Some(r#"{"name":"demo","ref":"main","like":"previews","ttl":"8h"}"#),
        )
        .expect(201, "a developer creates an ad-hoc environment")
        .documented(&doc, "POST", "/api/v1/environments");
    assert_eq!(
        created["owner"], "developer-token",
        "the creator's token owns it"
    );
    assert_eq!(created["kind"], "adhoc");
    assert_eq!(
        created["ttl_seconds"],
        8 * 3600,
        "it lives as long as asked"
    );

    let list = f
        .as_role("viewer", "GET", "/api/v1/environments", None)
        .expect(200, "a viewer lists environments")
        .documented(&doc, "GET", "/api/v1/environments");
    let names: Vec<&str> = list["environments"]
        .as_array()
        .expect("environments")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        names.contains(&"demo"),
        "a created environment is listed: {names:?}"
    );

    let synced_at = |commit: &str| {
        let commit = commit.to_string();
        f.wait_for(&format!("demo runs {commit}"), || {
            let env = f
                .as_role("viewer", "GET", "/api/v1/environments/demo", None)
                .json();
            (env["commit"] == commit.as_str() && env["sync"] == "synced").then_some(env)
        })
    };
    let env = synced_at(&first);
    assert_matches_schema(&doc, "GET", "/api/v1/environments/{name}", 200, &env);
    assert_eq!(
        env["resources"][0]["name"], "config",
        "its resources are shown"
    );

    // A new commit on its ref, then a sync: it moves.
    let second = f.commit(2);
    f.as_role("developer", "POST", "/api/v1/environments/demo/sync", None)
        .expect(202, "a developer syncs an ad-hoc environment")
        .documented(&doc, "POST", "/api/v1/environments/{name}/sync");
    synced_at(&second);

    let read_history = |what: &str| {
        f.as_role(
            "viewer",
            "GET",
            "/api/v1/environments/demo/deployments",
            None,
        )
        .expect(200, what)
    };
    let history = read_history("a viewer reads the history").documented(
        &doc,
        "GET",
        "/api/v1/environments/{name}/deployments",
    );
    let deployments = history["deployments"].as_array().expect("deployments");
    assert_eq!(
        deployments.first().map(|d| &d["commit"]),
        Some(&json!(second)),
        "the newest deployment comes first"
    );
    let earlier = deployments
        .iter()
        .find(|d| d["commit"] == first.as_str() && d["status"] == "succeeded")
        .unwrap_or_else(|| panic!("the first commit's deployment is in the history: {history:#}"));
    let earlier_id = earlier["id"].as_i64().expect("an id");
    let deployment = f
        .as_role(
            "viewer",
            "GET",
            &format!("/api/v1/deployments/{earlier_id}"),
            None,
        )
        .expect(200, "a viewer reads one deployment")
        .documented(&doc, "GET", "/api/v1/deployments/{id}");
    assert!(
        deployment["plan"].is_object(),
        "one deployment comes with its plan"
    );

    let plan = f
        .as_role("viewer", "GET", "/api/v1/environments/demo/plan", None)
        .expect(200, "a viewer reads the plan")
        .documented(&doc, "GET", "/api/v1/environments/{name}/plan");
    assert_eq!(
        plan["has_changes"], false,
        "a synced environment plans no changes: {plan:#}"
    );
    assert_eq!(plan["commit"], second.as_str());

    let before = env["expires_at"].as_str().expect("an expiry").to_string();
    let extended = f
        .as_role(
            "developer",
            "POST",
            "/api/v1/environments/demo/extend",
            Some(r#"{"by":"2h"}"#),
        )
        .expect(200, "a developer extends an ad-hoc environment")
        .documented(&doc, "POST", "/api/v1/environments/{name}/extend");
    assert!(
        extended["expires_at"].as_str().expect("an expiry") > before.as_str(),
        "extend pushes the expiry later: {before} -> {}",
        extended["expires_at"]
    );

    let pinned = f
        .as_role(
            "developer",
            "POST",
            "/api/v1/environments/demo/pin",
            Some("{}"),
        )
        .expect(200, "a developer pins an ad-hoc environment")
        .documented(&doc, "POST", "/api/v1/environments/{name}/pin");
    assert_eq!(pinned["pinned"], true);
    assert_eq!(
        pinned["desired_commit"],
        second.as_str(),
        "pinning keeps the commit it runs"
    );
    let unpinned = f
        .as_role("developer", "POST", "/api/v1/environments/demo/unpin", None)
        .expect(200, "a developer unpins an ad-hoc environment")
        .documented(&doc, "POST", "/api/v1/environments/{name}/unpin");
    assert_eq!(unpinned["pinned"], false);

    let rolled = f
        .as_role(
            "developer",
            "POST",
            "/api/v1/environments/demo/rollback",
            Some(&format!(r#"{{"deployment":{earlier_id}}}"#)),
        )
        .expect(200, "a developer rolls an ad-hoc environment back")
        .documented(&doc, "POST", "/api/v1/environments/{name}/rollback");
    assert_eq!(rolled["pinned"], true, "a rollback pins the environment");
    let back = synced_at(&first);
    assert_eq!(
        back["desired_commit"],
        first.as_str(),
        "it runs the earlier commit again"
    );

    f.as_role("developer", "DELETE", "/api/v1/environments/demo", None)
        .expect(200, "a developer destroys an ad-hoc environment")
        .documented(&doc, "DELETE", "/api/v1/environments/{name}");
    f.as_role("viewer", "GET", "/api/v1/environments/demo", None)
        .expect(404, "a destroyed environment is gone");
    let history = read_history("the history of a destroyed environment stays readable").json();
    assert!(
        !history["deployments"]
            .as_array()
            .expect("deployments")
            .is_empty(),
        "history outlives the environment"
    );

    f.as_role("developer", "POST", "/api/v1/refresh", None)
        .expect(200, "a developer asks for a refresh")
        .documented(&doc, "POST", "/api/v1/refresh");

    // Every change is in the audit log with who asked.
    let audit = f
        .as_role("admin", "GET", "/api/v1/audit", None)
        .expect(200, "an admin reads the audit log")
        .documented(&doc, "GET", "/api/v1/audit");
    let done: Vec<(String, String)> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["who"] == "developer-token" && e["outcome"] == "ok")
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_string(),
                e["target"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for action in [
        "environment.create",
        "environment.sync",
        "environment.extend",
        "environment.pin",
        "environment.unpin",
        "environment.rollback",
        "environment.destroy",
    ] {
        assert!(
            done.contains(&(action.to_string(), "demo".to_string())),
            "{action} of demo by the developer is audited: {done:?}"
        );
    }
    assert!(
        done.contains(&("refresh".to_string(), String::new())),
        "a refresh is audited: {done:?}"
    );
}

#[test]
fn a_deployer_changes_static_environments() {
    let f = Fixture::new();
    let reply = f
        .as_role("deployer", "POST", "/api/v1/environments/main/sync", None)
        .expect(202, "a deployer syncs a static environment");
    assert_eq!(reply.json()["environment"], "main");
    // The role allows it; a static environment has no time to live, so the answer is a
    // conflict rather than a time bomb (the controller would destroy it at expiry).
    let reply = f
        .as_role(
            "deployer",
            "POST",
            "/api/v1/environments/main/extend",
            Some(r#"{"by":"1h"}"#),
        )
        .expect(409, "a static environment is never given an expiry");
    assert!(
        reply.body.contains("static environment"),
        "the refusal says why: {}",
        reply.body
    );
}

#[test]
fn malformed_bodies_are_refused_with_what_is_wrong() {
    let f = Fixture::new();
    let create = |body: &str| f.as_role("developer", "POST", "/api/v1/environments", Some(body));

    let reply = create("{not json").expect(400, "malformed JSON is a 400");
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("invalid JSON"),
        "the error says the JSON is invalid: {}",
        reply.body
    );
    let reply =
        create(r#"{"name": 5, "ref": "main"}"#).expect(400, "a wrongly typed field is a 400");
    assert!(
        reply.body.contains("`name`"),
        "the error names the field: {}",
        reply.body
    );
    let reply =
        create(r#"{"name":"x","ref":"main","tll":"8h"}"#).expect(400, "an unknown field is a 400");
    assert!(
        reply.body.contains("tll"),
        "the error names the unknown field: {}",
        reply.body
    );
    let reply = create(r#"{"name":"x"}"#).expect(400, "a missing field is a 400");
    assert!(
        reply.body.contains("ref"),
        "the error names the missing field: {}",
        reply.body
    );
    create(r#"{"name":"x","ref":"main"} trailing"#)
        .expect(400, "trailing bytes after the JSON are a 400");
    create(r#"[1, 2]"#).expect(400, "a JSON array where an object is wanted is a 400");
    let reply = create(r#"{"name":"x","ref":"main","like":"previews","ttl":"8 parsecs"}"#)
        .expect(400, "a ttl that is no duration is a 400");
    assert!(
        reply.body.contains("ttl"),
        "the error names the field: {}",
        reply.body
    );
    for (body, status, what) in [
        (
            r#"{"name":"x","ref":"main","like":"previews","ttl":"0s"}"#,
            400,
            "a zero ttl is a 400",
        ),
        (
            r#"{"name":"x","ref":"main","like":"previews","ttl":"99999d"}"#,
            400,
            "a ttl of centuries is a 400",
        ),
        (
            r#"{"name":"x","ref":"--upload-pack=touch /tmp/pwned","like":"previews"}"#,
            422,
            "a ref that looks like an option is refused by the git layer",
        ),
        (
            r#"{"name":"x","ref":"no-such-branch","like":"previews"}"#,
            422,
            "an unknown ref is a 422",
        ),
        (
            r#"{"name":"x","ref":"main","like":"nope"}"#,
            422,
            "an unknown `like` is a 422",
        ),
        (
            r#"{"name":"main","ref":"main","like":"previews"}"#,
            409,
            "creating an environment that exists is a conflict",
        ),
    ] {
        create(body).expect(status, what);
    }

    for (path, body, status, what) in [
        (
            "/api/v1/environments/main/extend",
            r#"{"by":"soon"}"#,
            400,
            "an extension that is no duration is a 400",
        ),
        (
            "/api/v1/environments/main/rollback",
            r#"{"deployment":"one"}"#,
            400,
            "a deployment id that is no integer is a 400",
        ),
        (
            "/api/v1/environments/main/sync",
            r#"{"force":true}"#,
            400,
            "a field a call does not take is a 400",
        ),
        (
            "/api/v1/environments/main/rollback",
            r#"{"deployment":987654}"#,
            422,
            "rolling back to another environment's or no deployment is a 422",
        ),
    ] {
        f.as_role("deployer", "POST", path, Some(body))
            .expect(status, what);
    }
}

/// Sends a request head and `size` bytes of body over a raw socket (the body from another
/// thread, as a client that does not wait for the answer would) and returns the status line
/// and the rest of what came back.
fn raw_upload(addr: SocketAddr, token: &str, size: usize, chunked: bool) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a read timeout");
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {size}")
    };
    let head = format!(
        "POST /api/v1/environments HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nConnection: close\r\n{framing}\r\n\r\n"
    );
    let mut writer = stream.try_clone().expect("clone the socket");
    let sender = std::thread::spawn(move || {
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < size {
            let framed = if chunked {
                let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                framed.extend_from_slice(&chunk);
                framed.extend_from_slice(b"\r\n");
                framed
            } else {
                chunk.clone()
            };
            // The server may answer and close before all of it is sent.
            if writer.write_all(&framed).is_err() {
                return;
            }
            sent += chunk.len();
        }
        if chunked {
            let _ = writer.write_all(b"0\r\n\r\n");
        }
    });
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            // A signal (a child of another test exiting) interrupts the read: not an answer.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // The server may reset the connection after answering: what came is the answer.
            Err(_) => break,
        }
    }
    let _ = sender.join();
    let text = String::from_utf8_lossy(&received).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP status line came back: {text:?}"));
    (status, text)
}

#[test]
fn a_body_over_one_mebibyte_is_refused_with_413() {
    let f = Fixture::new();
    let token = f.token("developer").to_string();
    let (status, text) = raw_upload(f.addr, &token, 2 * 1024 * 1024, false);
    assert_eq!(status, 413, "a declared 2 MiB body is refused: {text}");
    assert!(
        text.contains("\"error\""),
        "the 413 is a JSON error: {text}"
    );
    let (status, text) = raw_upload(f.addr, &token, 2 * 1024 * 1024, true);
    assert_eq!(
        status, 413,
        "a chunked 2 MiB body is refused once over the limit: {text}"
    );
    f.call("GET", "/healthz", None, None)
        .expect(200, "the server still answers after refusing large bodies");
}

/// A socket to the server: its writing half, and its reading half buffered.
fn connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let socket = TcpStream::connect(addr).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a read timeout");
    let writer = socket.try_clone().expect("clone the socket");
    (writer, BufReader::new(socket))
}

/// One response read off a kept-alive socket: its status, its headers (names lower-cased)
/// and its body (by `Content-Length`, which every answer of this API has).
fn read_response(reader: &mut BufReader<TcpStream>) -> (u16, BTreeMap<String, String>, String) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("a status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP status line: {status_line:?}"));
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("a header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("a header is `name: value`");
        headers.insert(name.to_ascii_lowercase(), value.trim().to_string());
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the answer has a Content-Length: {headers:?}"));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("the whole body");
    (status, headers, String::from_utf8_lossy(&body).to_string())
}

#[test]
fn a_refused_request_whose_body_was_never_read_says_its_connection_closes() {
    let f = Fixture::new();
    // The attack on the client: a refusal that leaves a kept-alive connection unusable
    // without saying so. A client then sends its next request into a closed socket.
    let (mut writer, mut reader) = connect(f.addr);
    // The head of a POST whose body is still to come, without a token: it is refused first.
    write!(
        writer,
        "POST /api/v1/environments HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 64\r\n\r\n",
        f.addr
    )
    .expect("send the head");
    let (status, headers, body) = read_response(&mut reader);
    assert_eq!(status, 401, "no token, refused: {body}");
    assert_eq!(
        headers.get("connection").map(String::as_str),
        Some("close"),
        "the refusal says the connection ends, as its body was never read: {headers:?}"
    );
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing follows the refusal: {rest:?}");

    // Requests whose bodies are read keep their connection: a GET, then a POST with a body
    // (a pin, which needs `main` deployed).
    f.wait_synced("main");
    let (mut writer, mut reader) = connect(f.addr);
    let token = f.token("admin");
    write!(
        writer,
        "GET /api/v1/environments/main HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
        f.addr
    )
    .expect("send a GET");
    let (status, headers, body) = read_response(&mut reader);
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers.get("connection"), None, "kept alive: {headers:?}");
    write!(
        writer,
        "POST /api/v1/environments/main/pin HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
        f.addr
    )
    .expect("send a POST on the same connection");
    let (status, headers, body) = read_response(&mut reader);
    assert_eq!(
        status, 200,
        "the same connection carries a second request: {body}"
    );
    assert_eq!(headers.get("connection"), None, "kept alive: {headers:?}");

    // What a client with a connection pool sees: refused POSTs one after another, each
    // answered (before, one in a few dozen met a closed socket: "Peer disconnected").
    for round in 0..40 {
        f.call(
            "POST",
            "/api/v1/environments",
            Some("slw_not-a-token"),
            Some(r#"{"name":"refused","ref":"main","like":"previews"}"#),
        )
        .expect(401, &format!("round {round}: a refused POST is answered"));
    }
}

#[test]
fn unknown_environments_deployments_and_routes_are_404() {
    let f = Fixture::new();
    for (method, path, body) in [
        ("GET", "/api/v1/environments/nope", None),
        ("GET", "/api/v1/environments/nope/plan", None),
        ("GET", "/api/v1/environments/nope/deployments", None),
        ("DELETE", "/api/v1/environments/nope", None),
        ("POST", "/api/v1/environments/nope/sync", None),
        (
            "POST",
            "/api/v1/environments/nope/extend",
            Some(r#"{"by":"1h"}"#),
        ),
        ("POST", "/api/v1/environments/nope/pin", None),
        ("POST", "/api/v1/environments/nope/unpin", None),
        (
            "POST",
            "/api/v1/environments/nope/rollback",
            Some(r#"{"deployment":1}"#),
        ),
        ("GET", "/api/v1/deployments/987654", None),
    ] {
        let reply = f.as_role("deployer", method, path, body).expect(
            404,
            &format!("{method} {path} of something unknown is a 404"),
        );
        assert!(
            reply.json()["hint"].is_string(),
            "a 404 says where to look: {}",
            reply.body
        );
    }
    f.as_role("viewer", "GET", "/api/v1/deployments/abc", None)
        .expect(400, "a deployment id that is no integer is a 400");
    let reply = f
        .as_role("viewer", "GET", "/api/v1/nothing-here", None)
        .expect(404, "an unknown route is a 404");
    assert!(
        reply.content_type.starts_with("application/json"),
        "even a 404 route is JSON"
    );
    f.as_role("admin", "PUT", "/api/v1/environments", Some("{}"))
        .expect(405, "a method a route does not take is a 405");
}

#[test]
fn logs_are_only_of_a_recorded_process_or_job_and_hostile_names_find_nothing() {
    let f = Fixture::new();
    for path in [
        // A file keeps no log; a resource that is not there has none.
        "/api/v1/environments/main/logs/config",
        "/api/v1/environments/main/logs/config/follow",
        "/api/v1/environments/main/logs/web",
        "/api/v1/environments/nope/logs/web",
    ] {
        let reply = f
            .as_role("viewer", "GET", path, None)
            .expect(404, &format!("GET {path} finds no log"));
        assert!(
            reply.json()["hint"].is_string(),
            "a 404 says where to look: {}",
            reply.body
        );
    }
    let long = "a".repeat(64);
    for resource in [
        "..%2F..%2Fstate.key",
        "..",
        "config.log",
        "a%00b",
        "%E2%80%AEweb",
        long.as_str(),
    ] {
        for suffix in ["", "/follow"] {
            let path = format!("/api/v1/environments/main/logs/{resource}{suffix}");
            let reply = f
                .as_role("viewer", "GET", &path, None)
                .expect(400, &format!("GET {path}: not a resource name"));
            assert!(
                !reply.body.contains("state.key") || reply.body.contains("not a resource name"),
                "nothing is read: {}",
                reply.body
            );
        }
    }
    for query in ["tail=10001", "tail=-1", "tail=abc", "tail=1.5"] {
        let path = format!("/api/v1/environments/main/logs/config?{query}");
        f.as_role("viewer", "GET", &path, None)
            .expect(400, &format!("GET {path}: a tail out of bounds"));
    }
}

#[test]
fn hostile_environment_names_are_refused_before_any_lookup() {
    let f = Fixture::new();
    let long = "a".repeat(200);
    for (name, encoded) in [
        ("../x", "..%2Fx".to_string()),
        ("200 characters", long.clone()),
        ("64 characters, one over a DNS label", "a".repeat(64)),
        ("a trailing hyphen", "main-".to_string()),
        ("an encoded dot-dot", "%2E%2E".to_string()),
        ("unicode", "%C3%A9t%C3%A9".to_string()),
        ("upper case", "Main".to_string()),
        ("shell", "%24(reboot)".to_string()),
        ("a NUL byte", "a%00b".to_string()),
        ("invalid UTF-8", "%FF%FE".to_string()),
    ] {
        for (method, suffix) in [
            ("GET", ""),
            ("GET", "/plan"),
            ("POST", "/sync"),
            ("POST", "/unpin"),
            ("GET", "/deployments"),
            ("DELETE", ""),
        ] {
            let path = format!("/api/v1/environments/{encoded}{suffix}");
            let reply = f.as_role("admin", method, &path, None).expect(
                400,
                &format!("{method} of an environment named with {name} is a 400"),
            );
            reply.assert_hint("DNS label", "the 400 says what a name may be");
        }
    }
    for name in ["../x", long.as_str(), "été", "-x", "x y", ""] {
        let body = json!({"name": name, "ref": "main", "like": "previews"}).to_string();
        f.as_role("developer", "POST", "/api/v1/environments", Some(&body))
            .expect(
                400,
                &format!("creating an environment named {name:?} is a 400"),
            );
    }
    f.as_role("viewer", "GET", "/api/v1/events?environment=..%2Fx", None)
        .expect(400, "an event filter that is no environment name is a 400");
    assert_eq!(
        f.controller
            .engine()
            .store()
            .environments()
            .expect("list")
            .len(),
        1,
        "no hostile name created anything"
    );
}

/// Reads server-sent events until one satisfies `wanted`, returning `(id, data)` of each
/// event read on the way.
fn read_events(
    reader: &mut impl BufRead,
    mut wanted: impl FnMut(&Value) -> bool,
) -> Vec<(i64, Value)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut id = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out reading events: {seen:?}"
        );
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .expect("the event stream is readable");
        assert!(n > 0, "the event stream stays open: {seen:?}");
        let line = line.trim_end();
        if let Some(value) = line.strip_prefix("id:") {
            id = value.trim().parse::<i64>().ok();
        } else if let Some(data) = line.strip_prefix("data:") {
            let data: Value = serde_json::from_str(data.trim()).expect("event data is JSON");
            let event_id = id.take().expect("every event has an id");
            assert_eq!(data["id"], event_id, "the SSE id is the event's id");
            let done = wanted(&data);
            seen.push((event_id, data));
            if done {
                return seen;
            }
        }
    }
}

impl Fixture {
    /// Opens the event stream at `path` as a viewer, with `headers` besides the token.
    fn events(&self, path: &str, headers: &[(&str, &str)]) -> ureq::http::Response<ureq::Body> {
        let mut request = self
            .agent
            .get(self.url(path))
            .header("Authorization", format!("Bearer {}", self.token("viewer")));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.call().expect("the event stream opens")
    }
}

#[test]
fn the_event_stream_delivers_events_recorded_after_connecting_and_replays_after_a_cursor() {
    let f = Fixture::new();
    let doc = f.openapi();
    let response = f.events("/api/v1/events?environment=main", &[]);
    assert_eq!(
        response.status().as_u16(),
        200,
        "a viewer may stream events"
    );
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream")),
        "events are server-sent events"
    );
    let store = f.controller.engine().store();
    let other = store
        .record_event(
            Some(&env("other")),
            EventKind::ChangeHeld,
            "not for main",
            &json!({}),
            slipway_state::now_ms(),
        )
        .expect("record an event");
    let mine = store
        .record_event(
            Some(&env("main")),
            EventKind::DriftDetected,
            "hello main",
            &json!({"n": 1}),
            slipway_state::now_ms(),
        )
        .expect("record an event");
    let mut reader = BufReader::new(response.into_body().into_reader());
    let seen = read_events(&mut reader, |data| data["kind"] == "drift.detected");
    let (id, data) = seen.last().expect("an event");
    assert_eq!(
        *id, mine,
        "the event recorded after connecting is delivered with its id"
    );
    assert_eq!(data["data"]["n"], 1, "with its data");
    assert!(
        seen.iter().all(|(_, d)| d["environment"] == "main"),
        "the environment filter holds: {seen:?}"
    );
    let event_schema = json!({
        "components": doc["components"],
        "$ref": "#/components/schemas/Event"
    });
    let validator = jsonschema::validator_for(&event_schema).expect("the Event schema compiles");
    assert!(
        validator.is_valid(data),
        "an event matches the Event schema: {data}"
    );

    // Reconnecting with the last id seen before `mine` replays it.
    let response = f.events("/api/v1/events", &[("Last-Event-ID", &other.to_string())]);
    let mut reader = BufReader::new(response.into_body().into_reader());
    let seen = read_events(&mut reader, |_| true);
    assert_eq!(
        seen[0].0, mine,
        "the stream replays from after `Last-Event-ID`"
    );
    let response = f.events(&format!("/api/v1/events?after={}", other - 1), &[]);
    let mut reader = BufReader::new(response.into_body().into_reader());
    let seen = read_events(&mut reader, |_| true);
    assert_eq!(seen[0].0, other, "the stream replays from after `?after=`");
}

#[test]
fn stopping_the_server_ends_open_event_streams() {
    let mut f = Fixture::new();
    let response = f.events("/api/v1/events", &[]);
    let mut reader = BufReader::new(response.into_body().into_reader());
    assert!(
        f.shut_down(),
        "the server and controller stop within 10 s with a stream open"
    );
    let mut rest = String::new();
    let ended = reader.read_to_string(&mut rest);
    assert!(ended.is_ok(), "the stream ends cleanly: {ended:?}");
}

#[test]
fn metrics_and_health_need_no_token() {
    let f = Fixture::new();
    f.wait_synced("main");
    let metrics = f
        .call("GET", "/metrics", None, None)
        .expect(200, "metrics need no token");
    assert!(
        metrics.content_type.starts_with("text/plain"),
        "metrics are Prometheus text: {}",
        metrics.content_type
    );
    for name in [
        "slipway_reconcile_duration_seconds_bucket",
        "slipway_reconcile_duration_seconds_count",
        "slipway_queue_depth",
        "slipway_drift_repairs_total",
        "slipway_reconcile_failures_total",
    ] {
        assert!(
            metrics.body.contains(name),
            "/metrics has {name}:\n{}",
            metrics.body
        );
    }
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l.starts_with("slipway_environments{sync=\"synced\"") && l.ends_with(" 1")),
        "the synced environment is counted by state:\n{}",
        metrics.body
    );
    let doc = f.openapi();
    f.call("GET", "/healthz", None, None)
        .expect(200, "health needs no token")
        .documented(&doc, "GET", "/healthz");
}

#[test]
fn the_openapi_document_lists_every_route_the_server_serves() {
    let f = Fixture::new();
    let doc = f.openapi();
    assert_eq!(doc["openapi"], "3.1.0", "an OpenAPI 3.1 document");
    let paths = doc["paths"].as_object().expect("paths");
    for (method, path) in DOCUMENTED {
        let op = &paths
            .get(*path)
            .unwrap_or_else(|| panic!("the document lists {path}"))[*method];
        assert!(op.is_object(), "the document lists {method} {path}");
        assert!(
            op["operationId"].is_string(),
            "{method} {path} has an operationId"
        );
        assert!(
            op["x-slipway-role"].is_string(),
            "{method} {path} says which role it needs"
        );
        assert!(
            op["responses"]["500"].is_object(),
            "{method} {path} documents its errors"
        );
    }
    // And nothing it lists is missing from the server: an unauthenticated call reaches the
    // route's guard (401), or the route itself when it is public.
    let mut listed = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("a path item") {
            listed += 1;
            let concrete = path
                .replace("{name}", "main")
                .replace("{id}", "1")
                .replace("{forge}", "github");
            let public = op["security"] == json!([]);
            let reply = f.call(&method.to_ascii_uppercase(), &concrete, None, None);
            // Webhooks are public (their signature is the authentication); this controller
            // has no forge, and says so.
            let expected = match (public, path.starts_with("/webhooks/")) {
                (true, true) => 503,
                (true, false) => 200,
                (false, _) => 401,
            };
            assert_eq!(
                reply.status, expected,
                "{method} {path}, listed in the document, is served: {}",
                reply.body
            );
        }
    }
    assert_eq!(
        listed,
        DOCUMENTED.len(),
        "the document lists no route that is not expected"
    );
}

/// Regression: a resource recorded as `creating` has `null` outputs until its provider
/// answers, and a list taken mid-apply once failed the schema that wanted an object.
#[test]
fn an_environment_listed_while_a_resource_is_being_created_matches_the_schema() {
    let f = Fixture::new();
    let doc = f.openapi();
    f.controller
        .engine()
        .store()
        .put_resource(&slipway_state::ResourceRecord {
            environment: env("main"),
            name: "half-made".into(),
            type_name: "file".into(),
            status: ResourceStatus::Creating,
            config: json!({}),
            resolved_hash: None,
            outputs: Value::Null,
            secret_outputs: Vec::new(),
            live: Value::Null,
            depends_on: Vec::new(),
            error: None,
            updated_at: slipway_state::now_ms(),
            sensitive: false,
        })
        .expect("record a resource being created");
    let list = f
        .as_role("viewer", "GET", "/api/v1/environments", None)
        .expect(200, "a viewer lists environments mid-apply")
        .json();
    assert!(
        list.to_string().contains("half-made"),
        "the resource being created is listed: {list}"
    );
    assert_matches_schema(&doc, "GET", "/api/v1/environments", 200, &list);
}

/// A response with every header, for the browser-session tests.
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("a {} body is JSON ({e}): {}", self.status, self.body))
    }

    /// Asserts the status, saying `what` and the body when it differs.
    fn expect(self, status: u16, what: &str) -> RawReply {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        self
    }
}

impl Fixture {
    /// One call with exactly `headers` (no Authorization unless given), as a browser makes it.
    fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> RawReply {
        let url = self.url(path);
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let result = match method {
            "GET" | "DELETE" => self.agent.run(request.body(()).expect("a valid request")),
            // A POST or PUT without a body sends an empty one.
            "POST" | "PUT" => self
                .agent
                .run(request.body(body.unwrap_or("")).expect("a valid request")),
            other => panic!("the tests use GET, POST, PUT and DELETE, not {other}"),
        };
        let mut response =
            result.unwrap_or_else(|e| panic!("{method} {path} gets an HTTP response: {e}"));
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("{method} {path}: the body is readable: {e}"));
        RawReply {
            status,
            headers,
            body,
        }
    }

    /// Logs `role`'s token in as a browser does; returns the cookie to send and the CSRF token.
    fn log_in(&self, role: &str) -> (String, String, Value) {
        let auth = format!("Bearer {}", self.token(role));
        let reply = self.raw("POST", "/api/v1/session", &[("Authorization", &auth)], None);
        assert_eq!(
            reply.status, 201,
            "a {role} token starts a session: {}",
            reply.body
        );
        let set_cookie = reply
            .header("set-cookie")
            .unwrap_or_else(|| panic!("logging in sets a cookie: {:?}", reply.headers))
            .to_string();
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(
                set_cookie.contains(attribute),
                "the session cookie is {attribute}: {set_cookie}"
            );
        }
        let cookie = set_cookie
            .split(';')
            .next()
            .expect("a cookie pair")
            .to_string();
        assert!(
            cookie.starts_with("slipway_session=") && !cookie.contains(self.token(role)),
            "the cookie carries a session id, never the API token: {cookie}"
        );
        let body = reply.json();
        let csrf = body["csrf"].as_str().expect("a CSRF token").to_string();
        (cookie, csrf, body)
    }
}

#[test]
fn a_browser_session_needs_its_csrf_token_for_every_change() {
    let f = Fixture::new();
    let doc = f.openapi();
    let (cookie, csrf, session) = f.log_in("admin");
    assert_matches_schema(&doc, "POST", "/api/v1/session", 201, &session);
    assert_eq!(session["name"], "admin-token");
    assert_eq!(session["role"], "admin");

    // The cookie alone reads nothing either: a browser sends it to every port of the host,
    // so to a process of an environment that a page sends the browser to.
    for path in ["/api/v1/whoami", "/api/v1/environments", "/api/v1/events"] {
        let reply = f
            .raw("GET", path, &[("Cookie", &cookie)], None)
            .expect(403, "a read with the cookie alone");
        assert!(!reply.body.contains(&csrf), "{path} gives no token away");
    }
    let who = f
        .raw(
            "GET",
            "/api/v1/whoami",
            &[("Cookie", &cookie), ("X-Slipway-CSRF", &csrf)],
            None,
        )
        .expect(200, "the cookie with its token authenticates a read");
    assert_matches_schema(&doc, "GET", "/api/v1/whoami", 200, &who.json());
    assert_eq!(who.json()["via"], "session");
    assert_eq!(who.json()["csrf"], csrf);
    // Only an event stream's GET may carry the token in its query, as an EventSource must (a
    // query is what proxies log): not another read, nor a change. (The UI's Chromium tests
    // follow the event stream with it.)
    f.raw(
        "GET",
        &format!("/api/v1/environments?csrf={csrf}"),
        &[("Cookie", &cookie)],
        None,
    )
    .expect(403, "a read with the token in its query");
    f.raw(
        "POST",
        &format!("/api/v1/environments/main/sync?csrf={csrf}"),
        &[("Cookie", &cookie)],
        None,
    )
    .expect(403, "a change with the token in its query");

    // A change with the cookie but without the CSRF token, with a wrong one, or as a forged
    // HTML form would post it, is refused before its handler runs.
    let sync = "/api/v1/environments/main/sync";
    let forged: [&[(&str, &str)]; 3] = [
        &[("Cookie", &cookie)],
        &[("Cookie", &cookie), ("X-Slipway-CSRF", "not-the-token")],
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
    ];
    for headers in forged {
        let reply = f
            .raw("POST", sync, headers, Some("a=1"))
            .expect(403, "a cookie call without the right CSRF token is refused");
        assert!(
            reply.json()["hint"]
                .as_str()
                .is_some_and(|h| h.contains("X-Slipway-CSRF") || h.contains("x-slipway-csrf")),
            "the refusal says which header is missing: {}",
            reply.body
        );
    }
    f.raw(
        "DELETE",
        "/api/v1/environments/main?confirm=main",
        &[("Cookie", &cookie)],
        None,
    )
    .expect(403, "a destroy without CSRF");
    assert!(
        f.controller
            .engine()
            .store()
            .environment(&env("main"))
            .expect("read main")
            .is_some(),
        "no refused call destroyed anything"
    );
    let audit = f.audit();
    assert!(
        audit["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| {
                e["who"] == "admin-token"
                    && e["action"] == "environment.sync"
                    && e["outcome"] == "refused"
                    && e["detail"].as_str().is_some_and(|d| d.contains("CSRF"))
            }),
        "a CSRF refusal is audited under the session's token: {audit:#}"
    );

    let sync_with = |headers: &[(&str, &str)], status: u16, what: &str| {
        f.raw("POST", sync, headers, None).expect(status, what);
    };
    // With the token, the same call goes through.
    sync_with(
        &[("Cookie", &cookie), ("X-Slipway-CSRF", &csrf)],
        202,
        "a cookie call with its CSRF token",
    );
    // A bearer token wins over a cookie: API clients are not asked for a CSRF token.
    let auth = format!("Bearer {}", f.token("admin"));
    sync_with(
        &[("Cookie", &cookie), ("Authorization", &auth)],
        202,
        "a bearer call with a cookie",
    );

    // Another token's session carries that token's role.
    let (viewer_cookie, viewer_csrf, _) = f.log_in("viewer");
    sync_with(
        &[("Cookie", &viewer_cookie), ("X-Slipway-CSRF", &viewer_csrf)],
        403,
        "a viewer's session changes nothing",
    );
    sync_with(
        &[("Cookie", &viewer_cookie), ("X-Slipway-CSRF", &csrf)],
        403,
        "another session's CSRF token is no good",
    );

    // Logging out ends the session: its cookie no longer authenticates anything.
    let reply = f
        .raw(
            "DELETE",
            "/api/v1/session",
            &[("Cookie", &cookie), ("X-Slipway-CSRF", &csrf)],
            None,
        )
        .expect(200, "logout");
    assert_matches_schema(&doc, "DELETE", "/api/v1/session", 200, &reply.json());
    assert_eq!(reply.json()["ended"], true);
    assert!(
        reply
            .header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0")),
        "logout clears the cookie: {:?}",
        reply.headers
    );
    f.raw("GET", "/api/v1/whoami", &[("Cookie", &cookie)], None)
        .expect(401, "an ended session is refused");

    // A revoked token ends its sessions at once.
    let store = f.controller.engine().store();
    let id = store
        .tokens()
        .expect("list tokens")
        .into_iter()
        .find(|t| t.name == "viewer-token")
        .expect("the viewer token")
        .id;
    store
        .revoke_token(id, slipway_state::now_ms())
        .expect("revoke it");
    f.raw("GET", "/api/v1/whoami", &[("Cookie", &viewer_cookie)], None)
        .expect(401, "a revoked token's session");
}

#[test]
fn whoami_names_the_caller_and_its_role() {
    let f = Fixture::new();
    let doc = f.openapi();
    for role in ROLES {
        let who = f
            .as_role(role, "GET", "/api/v1/whoami", None)
            .expect(200, "any token may ask who it is")
            .documented(&doc, "GET", "/api/v1/whoami");
        assert_eq!(who["name"], format!("{role}-token"));
        assert_eq!(who["role"], role);
        assert_eq!(who["via"], "bearer");
        assert!(
            who.get("csrf").is_none(),
            "a bearer call has no CSRF token: {who}"
        );
    }
}

#[test]
fn the_pull_request_list_shows_open_ones_with_their_preview_and_locks() {
    let f = Fixture::new();
    f.wait_synced("main");
    let doc = f.openapi();
    let store = f.controller.engine().store();
    let pr = |number: i64, state: &str, head: &str| slipway_state::PullRequestRecord {
        number,
        title: format!("change {number}"),
        author: "octocat".into(),
        head_sha: head.into(),
        head_ref: format!("feature/{number}"),
        base_ref: "main".into(),
        is_fork: false,
        state: state.into(),
        preview_allowed: true,
        url: format!("https://forge.invalid/acme/shop/pull/{number}"),
        updated_at: slipway_state::now_ms(),
        stale_approvers: Vec::new(),
        labels: Vec::new(),
        head_seen_at: None,
    };
    let main = store
        .environment(&env("main"))
        .expect("read")
        .expect("main");
    let running = main.commit.clone().expect("main runs a commit");
    store
        .upsert_pull_request(&pr(7, "open", &running))
        .expect("record #7");
    store
        .upsert_pull_request(&pr(8, "open", "0123456789abcdef"))
        .expect("record #8");
    store
        .upsert_pull_request(&pr(9, "closed", "fedcba"))
        .expect("record #9");
    // #7's preview, as discovery would record it.
    let mut preview = main.clone();
    preview.name = env("pr-7");
    preview.kind = EnvKind::Generated;
    store.upsert_environment(&preview).expect("record pr-7");
    store
        .lock_environment(&env("main"), 8, "octocat", slipway_state::now_ms())
        .expect("lock main to #8");

    let list = f
        .as_role("viewer", "GET", "/api/v1/pull-requests", None)
        .expect(200, "a viewer lists pull requests")
        .documented(&doc, "GET", "/api/v1/pull-requests");
    let prs = list["pull_requests"].as_array().expect("pull_requests");
    let numbers: Vec<i64> = prs.iter().filter_map(|p| p["number"].as_i64()).collect();
    assert_eq!(
        numbers,
        vec![7, 8],
        "only open pull requests, by number: {list:#}"
    );
    assert_eq!(prs[0]["preview"]["environment"], "pr-7", "{list:#}");
    assert_eq!(
        prs[0]["preview"]["at_head"], true,
        "the preview runs the head: {list:#}"
    );
    assert!(prs[1]["preview"].is_null(), "#8 has no preview: {list:#}");
    assert_eq!(prs[1]["locks"][0]["environment"], "main", "{list:#}");
    assert_eq!(list["locks"][0]["pull_request"], 8, "{list:#}");
}

#[test]
fn the_web_ui_is_served_at_the_root_under_a_strict_content_security_policy() {
    let f = Fixture::new();
    for (path, content_type) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let reply = f
            .raw("GET", path, &[], None)
            .expect(200, "{path} needs no token");
        assert!(
            reply
                .header("content-type")
                .is_some_and(|t| t.starts_with(content_type)),
            "{path} is {content_type}: {:?}",
            reply.headers
        );
        assert!(
            reply
                .header("content-security-policy")
                .is_some_and(|c| c.contains("default-src 'self'")),
            "{path} carries the CSP: {:?}",
            reply.headers
        );
    }
    let page = f.raw("GET", "/", &[], None);
    assert!(
        page.body.contains("/ui/app.js") && !page.body.contains("slw_"),
        "the page loads its script and holds no data: {}",
        page.body
    );
    f.raw("GET", "/ui/nope.js", &[], None)
        .expect(404, "an unknown UI file");
}

/// The document and the server agree on input: a body the server needs is required in the
/// document, and what the document refuses the server refuses too (Schemathesis found each
/// of these).
#[test]
fn the_server_refuses_what_its_document_refuses() {
    let f = Fixture::new();
    let doc = f.openapi();
    let body_required = |path: &str| doc["paths"][path]["post"]["requestBody"]["required"].clone();
    for (path, concrete) in [
        ("/api/v1/environments", "/api/v1/environments"),
        (
            "/api/v1/environments/{name}/extend",
            "/api/v1/environments/main/extend",
        ),
        (
            "/api/v1/environments/{name}/rollback",
            "/api/v1/environments/main/rollback",
        ),
    ] {
        assert_eq!(
            body_required(path),
            json!(true),
            "the body of POST {path} is required in the document"
        );
        f.as_role("deployer", "POST", concrete, None)
            .expect(400, &format!("POST {path} without a body is refused"));
    }
    assert_eq!(
        body_required("/api/v1/environments/{name}/pin"),
        json!(false),
        "pin's body may be left out (it pins the commit it runs)"
    );

    // `commit` is a string: `null` is refused, not read as left out.
    let reply = f
        .as_role(
            "deployer",
            "POST",
            "/api/v1/environments/main/pin",
            Some(r#"{"commit": null}"#),
        )
        .expect(400, "a null commit is refused");
    assert!(
        reply.body.contains("commit"),
        "the error names the field: {}",
        reply.body
    );
    assert!(
        !f.controller
            .engine()
            .store()
            .environment(&env("main"))
            .expect("read main")
            .expect("main exists")
            .pinned,
        "the refused pin pinned nothing"
    );

    // An integer is what JSON Schema calls one: `987654.0` is read as 987654 (here: no
    // deployment of main, a 422), where serde alone answered a 400 to schema-valid input.
    f.as_role(
        "deployer",
        "POST",
        "/api/v1/environments/main/rollback",
        Some(r#"{"deployment": 987654.0}"#),
    )
    .expect(422, "an integral number is an integer");

    // Cursors are 0 or more, as `minimum: 0` says.
    for path in ["/api/v1/audit?after=-1", "/api/v1/events?after=-1"] {
        let reply = f
            .as_role("admin", "GET", path, None)
            .expect(400, &format!("GET {path} is refused"));
        assert!(
            reply.body.contains("after"),
            "the error names the parameter: {}",
            reply.body
        );
    }
    let audit_after = &doc["paths"]["/api/v1/audit"]["get"]["parameters"];
    assert!(
        audit_after
            .as_array()
            .expect("parameters")
            .iter()
            .any(|p| p["name"] == "after" && p["schema"]["minimum"] == 0),
        "the document says so: {audit_after:#}"
    );
}

/// Create answers what it created, even when the environment is gone by the time the answer
/// is written (here: it expires at once, and its first reconcile destroys it), and the audit
/// log records the create as done. It once read the environment back, and answered a 404 the
/// document did not list, audited as a failure, for a create that had happened.
#[test]
fn create_answers_what_it_created_even_when_it_is_gone_already() {
    let f = Fixture::new();
    let doc = f.openapi();
    let names: Vec<String> = (0..8).map(|i| format!("brief-{i}")).collect();
    for name in &names {
        let body = format!(r#"{{"name":"{name}","ref":"main","like":"previews","ttl":"1ms"}}"#);
        let reply = f
            .as_role("developer", "POST", "/api/v1/environments", Some(&body))
            .expect(201, "a create answers 201 with what it created");
        let created = reply.json();
        assert_eq!(created["name"], json!(name), "{created:#}");
        assert_eq!(created["kind"], "adhoc", "{created:#}");
        assert_eq!(created["owner"], "developer-token", "{created:#}");
        assert_matches_schema(&doc, "POST", "/api/v1/environments", 201, &created);
    }
    let audit = f.audit();
    for name in &names {
        let outcomes: Vec<&Value> = audit["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["action"] == "environment.create" && e["target"] == json!(name))
            .map(|e| &e["outcome"])
            .collect();
        assert_eq!(
            outcomes,
            vec![&json!("ok")],
            "the create of {name} is audited once, as done: {audit:#}"
        );
    }
}

/// Hostile input to the endpoints that take some: wrong types, huge numbers, deep or long
/// values, control characters. Each is a 4xx naming what is wrong, never a 500, and changes
/// nothing.
#[test]
fn hostile_input_is_refused_with_a_client_error() {
    let f = Fixture::new();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let long = "a".repeat(100_000);
    let bodies: Vec<(&str, String)> = vec![
        (
            "/api/v1/environments",
            r#"{"name":["x"],"ref":"main"}"#.into(),
        ),
        ("/api/v1/environments", r#"{"name":"x","ref":null}"#.into()),
        ("/api/v1/environments", r#"{"name":"x","ref":""}"#.into()),
        (
            "/api/v1/environments",
            format!(r#"{{"name":"{long}","ref":"main"}}"#),
        ),
        (
            "/api/v1/environments",
            r#"{"name":"x\u0000y","ref":"main"}"#.into(),
        ),
        (
            "/api/v1/environments",
            format!(r#"{{"name":"x","ref":"main","ttl":{deep}}}"#),
        ),
        (
            "/api/v1/environments",
            r#"{"name":"x","ref":"main","ttl":"99999999999999999999d"}"#.into(),
        ),
        ("/api/v1/environments", "\u{feff}{}".into()),
        ("/api/v1/environments", "null".into()),
        ("/api/v1/environments", r#""a string""#.into()),
        (
            "/api/v1/environments/main/rollback",
            r#"{"deployment":1e400}"#.into(),
        ),
        (
            "/api/v1/environments/main/rollback",
            r#"{"deployment":99999999999999999999}"#.into(),
        ),
        (
            "/api/v1/environments/main/rollback",
            r#"{"deployment":-1.5}"#.into(),
        ),
        ("/api/v1/environments/main/extend", r#"{"by":2}"#.into()),
        ("/api/v1/environments/main/extend", r#"{"by":"-5h"}"#.into()),
        (
            "/api/v1/environments/main/extend",
            r#"{"by":"18446744073709551616s"}"#.into(),
        ),
        ("/api/v1/environments/main/pin", r#"{"commit":7}"#.into()),
        (
            "/api/v1/environments/main/pin",
            r#"{"commit":"   "}"#.into(),
        ),
        (
            "/api/v1/environments/main/pin",
            r#"{"commit":"x","commit":"y"}"#.into(),
        ),
    ];
    for (path, body) in &bodies {
        let reply = f.as_role("deployer", "POST", path, Some(body));
        assert!(
            (400..500).contains(&reply.status) && reply.json()["error"].is_string(),
            "POST {path} with {} is a client error saying why: {} {}",
            &body[..body.len().min(80)],
            reply.status,
            reply.body
        );
    }
    for query in [
        "/api/v1/audit?after=99999999999999999999",
        "/api/v1/audit?limit=0",
        "/api/v1/audit?limit=-1",
        "/api/v1/audit?limit=1001",
        "/api/v1/audit?after=1.5",
        "/api/v1/events?after=x",
        "/api/v1/events?environment=..%2F..",
        "/api/v1/environments/main/deployments?limit=99999999999999999999999",
        "/api/v1/deployments/99999999999999999999",
        "/api/v1/deployments/-1%00",
    ] {
        let reply = f.as_role("admin", "GET", query, None);
        assert!(
            (400..500).contains(&reply.status) && reply.json()["error"].is_string(),
            "GET {query} is a client error saying why: {} {}",
            reply.status,
            reply.body
        );
    }
    let store = f.controller.engine().store();
    let main = store
        .environment(&env("main"))
        .expect("read main")
        .expect("main exists");
    assert!(!main.pinned, "no hostile call pinned main");
    assert!(
        store.environment(&env("x")).expect("read x").is_none(),
        "no hostile call created an environment"
    );
}

/// Each event or log stream is a connection held for as long as its client reads: one token
/// holds at most a sixteenth of `max_connections` of them (64 of 1,024), so that a viewer's
/// token cannot hold every connection. A closed stream gives its place back, and another
/// token has places of its own.
#[test]
fn one_token_holds_at_most_a_sixteenth_of_the_connections_in_streams() {
    let f = Fixture::new();
    let mut open = Vec::new();
    for _ in 0..64 {
        let response = f.events("/api/v1/events", &[]);
        assert_eq!(response.status().as_u16(), 200);
        open.push(response);
    }
    let refused = f.events("/api/v1/events", &[]);
    assert_eq!(
        refused.status().as_u16(),
        429,
        "the 65th stream of one token"
    );
    let body = refused
        .into_body()
        .read_to_string()
        .expect("the refusal's body");
    assert!(body.contains("max_connections"), "{body}");
    let other = f
        .agent
        .get(f.url("/api/v1/events"))
        .header("Authorization", format!("Bearer {}", f.token("admin")))
        .call()
        .expect("another token's stream");
    assert_eq!(
        other.status().as_u16(),
        200,
        "another token has its own places"
    );
    drop(open.pop());
    f.wait_for("a closed stream gives its place back", || {
        (f.events("/api/v1/events", &[]).status().as_u16() == 200).then_some(())
    });
}
