//! `slipway serve` end to end: a real controller process following a real repository, real
//! services answering HTTP, and the controller killed with SIGKILL and restarted.

mod util;

use std::time::Duration;

use serde_json::Value;
use util::*;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart");
const T: Duration = Duration::from_secs(30);

fn status(s: &Sandbox, server: &Server, token: &str) -> Value {
    let url = format!("http://{}", server.addr);
    s.json(&[
        "--server", &url, "--token", token, "status", "--output", "json",
    ])
}

fn env_port(v: &Value, env: &str) -> Option<u16> {
    let e = v["environments"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == env)?;
    if e["sync"] != "synced" {
        return None;
    }
    let web = e["resources"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == "web")?;
    u16::try_from(web["outputs"]["ports"]["http"].as_u64()?).ok()
}

fn answer(s: &Sandbox, server: &Server, token: &str, env: &str, needle: &str) -> Option<u16> {
    let port = env_port(&status(s, server, token), env)?;
    http_get(port, "/")
        .filter(|b| b.contains(needle))
        .map(|_| port)
}

fn setup() -> (Sandbox, String) {
    let s = Sandbox::new();
    for name in ["app.py", "seed.py", "migrate.sql"] {
        s.write(
            name,
            &std::fs::read_to_string(format!("{EXAMPLE}/{name}")).expect("example"),
        );
    }
    let yaml = std::fs::read_to_string(format!("{EXAMPLE}/slipway.yaml")).expect("example").replace("  prod: { track: main, protected: true, variables: { greeting: \"Hello from prod\", workers: 2 } }\n", "");
    s.write("slipway.yaml", &yaml);
    s.commit("stack");
    util::world::append_config(
        &s,
        "[repo]\npoll_interval = \"300ms\"\n[controller]\ndrift_interval = \"500ms\"\n",
    );
    let token = named_token(&s, "admin", "test");
    assert!(
        token.starts_with("slw_"),
        "token create prints only the token: {token:?}"
    );
    (s, token)
}

#[test]
fn serve_follows_pushes_and_branches_repairs_drift_and_survives_sigkill() {
    let (s, token) = setup();
    let server = start_serve(&s);
    let port = wait_for("dev serves the first commit", T, || {
        answer(&s, &server, &token, "dev", "Hello from Slipway (dev")
    });

    // A push to main reaches dev with no command run.
    let yaml = std::fs::read_to_string(s.repo.join("slipway.yaml"))
        .expect("read")
        .replace("Hello from Slipway", "Pushed");
    s.write("slipway.yaml", &yaml);
    s.commit("push to main");
    wait_for("dev runs the pushed commit", T, || {
        http_get(port, "/").filter(|b| b.contains("Pushed (dev"))
    });

    // A feature branch gets its own environment serving its own version; deleting it destroys it.
    git(&s.repo, &["checkout", "-q", "-b", "feature/login"]);
    s.write("slipway.yaml", &yaml.replace("Pushed", "Feature"));
    s.commit("feature");
    git(&s.repo, &["checkout", "-q", "main"]);
    let branch_port = wait_for("the branch environment answers", T, || {
        answer(
            &s,
            &server,
            &token,
            "br-feature-login",
            "Feature (br-feature-login",
        )
    });
    assert_ne!(branch_port, port);
    git(&s.repo, &["branch", "-q", "-D", "feature/login"]);
    wait_for(
        "the branch environment is destroyed with its branch",
        T,
        || {
            let v = status(&s, &server, &token);
            let gone = !v["environments"]
                .as_array()?
                .iter()
                .any(|e| e["name"] == "br-feature-login");
            (gone && port_is_free(branch_port)).then_some(())
        },
    );

    // Drift: kill the supervisor and its service; the controller brings them back.
    let state = supervisor_state(&s.home, "dev", "web").expect("a supervisor");
    for pid in [
        state["supervisor"]["pid"].as_i64(),
        state["child"]["pid"].as_i64(),
    ]
    .into_iter()
    .flatten()
    {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    let port = wait_for(
        "the killed service is repaired within a drift interval",
        T,
        || {
            // The repaired service may run in its other instance slot, on its other port:
            // ask the controller where it is.
            let fresh = supervisor_state(&s.home, "dev", "web")?;
            (fresh["supervisor"]["pid"] != state["supervisor"]["pid"]).then_some(())?;
            answer(&s, &server, &token, "dev", "(dev")
        },
    );

    // SIGKILL the controller: services keep running; a new controller converges without
    // duplicating anything.
    drop(server);
    assert!(
        http_get(port, "/").is_some(),
        "services keep running while the controller is down"
    );
    let yaml2 = yaml.replace("Pushed", "After restart");
    s.write("slipway.yaml", &yaml2);
    s.commit("while the controller was down");
    let server = start_serve(&s);
    wait_for("the restarted controller catches up", T, || {
        answer(&s, &server, &token, "dev", "After restart (dev")
    });
    let supervisors: Vec<_> = s
        .processes()
        .into_iter()
        .filter(|(_, c)| c.contains("__supervise") && c.contains("/envs/dev/run"))
        .collect();
    assert_eq!(
        supervisors.len(),
        1,
        "one supervisor for dev (and so for its web), nothing duplicated: {supervisors:?}"
    );
    drop(server);
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

/// The port serve listens on at 127.0.0.1 is held at `[::1]` too, where browsers reach
/// `localhost` first: no program of an environment can be the UI's origin there.
#[test]
fn the_servers_port_on_ipv6_loopback_is_nobody_elses() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    }
    let (s, _) = setup();
    let server = start_serve(&s);
    let taken = std::net::TcpListener::bind(("::1", server.port()));
    assert!(
        taken
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse),
        "{taken:?}"
    );
    // And a browser going to ::1 first is refused there, not served by someone else.
    assert!(std::net::TcpStream::connect(("::1", server.port())).is_err());
}

#[test]
fn env_commands_work_through_the_api_with_roles() {
    let (s, admin) = setup();
    let server = start_serve(&s);
    let url = format!("http://{}", server.addr);
    let viewer = String::from_utf8(s.ok(&["token", "create", "--role", "viewer"]).stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    let out = s.expect_code(
        &[
            "--server", &url, "--token", &viewer, "env", "create", "demo", "--ref", "main",
            "--like", "previews",
        ],
        1,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "a viewer cannot create environments"
    );
    s.ok(&[
        "--server", &url, "--token", &admin, "env", "create", "demo", "--ref", "main", "--like",
        "previews", "--ttl", "1h",
    ]);
    wait_for("the ad-hoc environment answers", T, || {
        answer(&s, &server, &admin, "demo", "(demo")
    });
    let listed = s.json(&[
        "--server", &url, "--token", &viewer, "env", "list", "--output", "json",
    ]);
    let demo = listed["environments"]
        .as_array()
        .expect("list")
        .iter()
        .find(|e| e["name"] == "demo")
        .expect("demo is listed")
        .clone();
    assert_eq!(demo["kind"], "adhoc");
    assert!(
        demo["expires_at"].is_string(),
        "an ad-hoc environment shows its expiry: {demo}"
    );
    s.ok(&[
        "--server", &url, "--token", &admin, "env", "extend", "demo", "--by", "2h",
    ]);
    s.ok(&[
        "--server", &url, "--token", &admin, "env", "destroy", "demo", "--yes",
    ]);
    let out = s.expect_code(&["--server", &url, "env", "list"], 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token"),
        "without a token the CLI says how to get one"
    );
    drop(server);
    let _ = s.run(&["destroy", "--env", "dev", "--yes"]);
}

#[test]
fn a_deploy_of_an_exposed_process_fails_no_request_at_its_preview_url() {
    let (s, token) = setup();
    let server = start_serve(&s);
    wait_for("dev is up", T, || {
        answer(&s, &server, &token, "dev", "(dev")
    });
    let port = server.port();
    let host = format!("dev.quickstart.localhost:{port}");
    let listed = status(&s, &server, &token);
    let dev = listed["environments"]
        .as_array()
        .expect("environments")
        .iter()
        .find(|e| e["name"] == "dev")
        .expect("dev")
        .clone();
    assert_eq!(
        dev["url"],
        format!("http://{host}/"),
        "the API shows the preview URL of an environment with an exposed process"
    );
    assert!(
        http_get_host(port, &host, "/").is_some_and(|b| b.contains("(dev")),
        "the preview URL serves dev"
    );

    // Keep requesting the preview URL while three deploys replace the process.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (flag, h) = (stop.clone(), host.clone());
    let hammer = std::thread::spawn(move || {
        let (mut ok, mut failed) = (0u32, Vec::new());
        let mut seen = std::collections::BTreeSet::new();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            match http_get_host(port, &h, "/") {
                Some(body) => {
                    ok += 1;
                    // The greeting names the version; the rest (visits) changes every time.
                    seen.insert(body.split(" (").next().unwrap_or_default().to_owned());
                }
                None => failed.push(ok),
            }
        }
        (ok, failed, seen)
    });
    let yaml = std::fs::read_to_string(s.repo.join("slipway.yaml")).expect("read");
    for round in 1..=3 {
        s.write(
            "slipway.yaml",
            &yaml.replace("Hello from Slipway", &format!("Version {round}")),
        );
        s.commit(&format!("version {round}"));
        let want = format!("Version {round} (dev");
        wait_for("the new version serves at the preview URL", T, || {
            http_get_host(port, &host, "/").filter(|b| b.contains(&want))
        });
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, seen) = hammer.join().expect("the request loop ends");
    // Requests flowed across the switches: the loop was served the first version and the two
    // that a later deploy replaced (the last may have come after its final request; how many
    // requests fit in a deploy depends on the machine, so that is not counted).
    assert!(
        seen.len() >= 3,
        "requests kept flowing through the three deploys: {ok} served, versions seen: {seen:?}"
    );
    assert!(
        failed.is_empty(),
        "no request failed during three deploys ({ok} succeeded; failures after {failed:?})"
    );
    drop(server);
    s.ok(&["destroy", "--env", "dev", "--yes"]);
    assert!(
        s.processes().is_empty(),
        "both instances are gone after destroy"
    );
}

#[test]
fn serve_keeps_its_state_in_postgres_when_configured() {
    let database = slipway_testkit::pg::TestDatabase::create("slipway_serve");
    let (s, _) = setup();
    util::world::append_config(&s, "[state]\nurl_env = \"SLIPWAY_TEST_STATE_URL\"\n");
    let url = database.url();
    let out = s.ok_with(
        &["token", "create", "--role", "admin", "--name", "pg"],
        &[("SLIPWAY_TEST_STATE_URL", &url)],
    );
    let token = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let server = start_serve_with(&s, &[("SLIPWAY_TEST_STATE_URL", &url)]);
    let api = format!("http://{}", server.addr);
    wait_for(
        "dev serves its commit, from a state in PostgreSQL",
        T,
        || {
            let out = s
                .cmd(&[
                    "--server", &api, "--token", &token, "status", "--output", "json",
                ])
                .output()
                .ok()?;
            let status: Value = serde_json::from_slice(&out.stdout).ok()?;
            let port = env_port(&status, "dev")?;
            http_get(port, "/").filter(|b| b.contains("Hello from Slipway (dev"))
        },
    );
    let sync: String = database
        .connect()
        .query_one("SELECT sync FROM environments WHERE name = 'dev'", &[])
        .expect("dev is recorded in PostgreSQL")
        .get(0);
    assert_eq!(sync, "synced");
    let deployments: i64 = database
        .connect()
        .query_one(
            "SELECT COUNT(*) FROM deployments WHERE environment = 'dev' AND status = 'succeeded'",
            &[],
        )
        .expect("count")
        .get(0);
    assert!(deployments >= 1, "the deployment is recorded in PostgreSQL");
}

/// Waits until `path`'s last change is further in the past than an observation may remember a
/// file's hash from (`slipway_providers::file::SETTLED`): from then on, a listing reuses the
/// hash while the file's stat fingerprint stays the same.
fn wait_settled(path: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let settled = slipway_providers::file::SETTLED + Duration::from_millis(100);
    wait_for("the file's last change is settled", settled * 3, || {
        let meta = std::fs::symlink_metadata(path).ok()?;
        let changed = std::time::UNIX_EPOCH
            + Duration::new(
                u64::try_from(meta.ctime()).ok()?,
                u32::try_from(meta.ctime_nsec()).ok()?,
            );
        changed
            .elapsed()
            .is_ok_and(|age| age > settled)
            .then_some(())
    });
}

/// Sets the modification time of `path` to `when`.
fn set_mtime(path: &std::path::Path, when: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open the file")
        .set_modified(when)
        .expect("set its modification time");
}

/// The list stays live though it reuses a file's hash while the file's stat fingerprint is
/// unchanged (issue 14): a file edited after a listing shows drifted at the next one, as the
/// environment's own view shows it, whether the edit keeps its size and its modification time
/// or comes right after the listing that read it; a directory on its way replaced by a symlink
/// to it (the very same file behind) too.
#[test]
fn a_file_edited_after_a_listing_shows_drifted_in_the_next_one() {
    let s = Sandbox::new();
    s.commit_dev_stack(
        "lists",
        "  conf:\n    type: file\n    path: etc/app.toml\n    content: \"a = 1\\n\"\n",
        "a file",
    );
    // No drift pass, no poll: nothing repairs the file meanwhile.
    util::world::append_config(
        &s,
        "[repo]\npoll_interval = \"1h\"\n[controller]\ndrift_interval = \"1h\"\n",
    );
    let token = named_token(&s, "viewer", "lister");
    let server = start_serve(&s);
    let listed = || {
        let (code, list) = api_request(&server.addr, "GET", "/api/v1/environments", &token, None);
        assert_eq!(code, 200, "the list answers: {list}");
        status_environment(&list, "dev")
            .and_then(|dev| status_resource(dev, "conf"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let alone = || {
        let (code, dev) = api_request(
            &server.addr,
            "GET",
            "/api/v1/environments/dev",
            &token,
            None,
        );
        assert_eq!(code, 200, "dev answers: {dev}");
        status_resource(&dev, "conf")
            .cloned()
            .unwrap_or(Value::Null)
    };
    let ready = wait_for("dev runs its file", T, || {
        let conf = listed();
        (conf["status"] == "ready").then_some(conf)
    });
    let path = std::path::PathBuf::from(ready["outputs"]["path"].as_str().expect("its path"));
    wait_settled(&path);
    for pass in ["read and hashed", "from its fingerprint"] {
        let conf = listed();
        assert_eq!(conf["status"], "ready", "listed, {pass}: {conf}");
    }

    // The same size, the modification time put back: only the change time tells.
    let mtime = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("its mtime");
    std::fs::write(&path, "a = 2\n").expect("edit the file");
    set_mtime(&path, mtime);
    for (view, conf) in [
        ("listed", listed()),
        ("alone", alone()),
        ("listed again", listed()),
    ] {
        assert_eq!(conf["status"], "drifted", "{view}: {conf}");
        assert_eq!(conf["message"], "content changed on disk", "{view}: {conf}");
    }

    // Put back, then edited right after the listing that read it (the same clock tick).
    std::fs::write(&path, "a = 1\n").expect("restore the file");
    assert_eq!(
        listed()["status"],
        "ready",
        "the content put back is in sync"
    );
    std::fs::write(&path, "a = 3\n").expect("edit it again at once");
    assert_eq!(
        listed()["status"],
        "drifted",
        "an edit right after a listing shows at the next one"
    );
    std::fs::write(&path, "a = 1\n").expect("restore the file");
    wait_settled(&path);
    assert_eq!(listed()["status"], "ready", "settled again");
    assert_eq!(listed()["status"], "ready", "from its fingerprint again");

    // The directory on its way moved aside and replaced by a symlink to it: the very same
    // file, unchanged, is behind the link.
    let etc = path.parent().expect("etc");
    let aside = etc.with_file_name("etc-aside");
    std::fs::rename(etc, &aside).expect("move etc aside");
    std::os::unix::fs::symlink(&aside, etc).expect("link etc to it");
    let conf = listed();
    assert_eq!(conf["status"], "drifted", "{conf}");
    assert!(
        conf["message"]
            .as_str()
            .is_some_and(|m| m.contains("symlink")),
        "the message names the symlink: {conf}"
    );
    drop(server);
    let _ = s.run(&["destroy", "--env", "dev", "--yes"]);
}

/// An exec program that makes a secret token, and says at every read that it drifted, quoting
/// it (as a program's own words may).
const TATTLER: &str = r#"import json, sys
request = json.load(sys.stdin)
token = "tok-" + "wh1sp3r-" + request["environment"]
if request["op"] in ("create", "update"):
    print(json.dumps({"outputs": {"token": token}, "secret_outputs": ["token"], "state": {}}))
elif request["op"] == "read":
    print(json.dumps({"status": "drifted", "reason": "token " + token + " was rotated"}))
else:
    print("{}")
"#;

/// A drift's reason, the provider's words, is redacted of the environment's secret values
/// before it is the environment's message and its `drift.detected` event, which every viewer
/// reads and notifications carry.
#[test]
fn a_drift_s_reason_quoting_a_secret_is_redacted() {
    let s = Sandbox::new();
    s.write("tattler.py", TATTLER);
    s.commit_stack(
        "tattle",
        "{ dev: { track: main, self_heal: false } }",
        "  tok: { type: exec, program: [\"python3\", \"tattler.py\"] }\n",
        "an exec resource whose reads quote its secret",
    );
    util::world::append_config(
        &s,
        "[repo]\npoll_interval = \"1h\"\n[controller]\ndrift_interval = \"300ms\"\n",
    );
    let secret = "tok-wh1sp3r-dev";
    let server = start_serve(&s);
    let token = named_token(&s, "viewer", "reader");
    let message = wait_for("dev reports its drift", T, || {
        let (code, dev) = api_request(
            &server.addr,
            "GET",
            "/api/v1/environments/dev",
            &token,
            None,
        );
        assert!(code == 200 || code == 404, "dev answers: {dev}");
        let message = dev["message"].as_str().unwrap_or_default().to_owned();
        let tok = status_resource(&dev, "tok").cloned().unwrap_or(Value::Null);
        message.contains("drift").then_some((message, tok))
    });
    let (message, tok) = message;
    assert_eq!(tok["status"], "drifted", "{tok}");
    assert!(!tok.to_string().contains(secret), "{tok}");
    assert!(!message.contains(secret), "{message}");
    assert!(message.contains("was rotated"), "{message}");
    let events = stored_events(&s, "drift.detected");
    assert!(!events.is_empty(), "the drift's event");
    for event in events {
        assert!(!event.message.contains(secret), "{}", event.message);
    }
    drop(server);
    let _ = s.run(&["destroy", "--env", "dev", "--yes"]);
}
