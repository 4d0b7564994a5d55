//! Caps with a visible queue (`max_environments`), end to end: the real binary serving a real
//! repository, branches made and deleted with the real `git`, preview environments whose real
//! processes answer HTTP through the router, and the queue as status, the API and the CLI show
//! it.

mod util;

use std::time::Duration;

use serde_json::Value;
use util::*;

const T: Duration = Duration::from_secs(60);

/// A tiny HTTP server saying which environment it is.
const SERVER: &str = r#"import http.server, sys
port, name = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('hello from ' + name).encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(('127.0.0.1', port), H).serve_forever()
"#;

/// The stack: `dev` tracking main, a family of `feature/*` branches capped at `cap`, each
/// environment one process answering at its preview URL.
fn stack(cap: u32) -> String {
    format!(
        "version: 1\nstack: shop\nenvironments:\n  dev: {{ track: main }}\n  previews:\n    \
         generate: {{ branches: [\"feature/*\"] }}\n    ttl: 24h\n    max_environments: {cap}\n    \
         access: public\nresources:\n  web:\n    type: process\n    command: [\"python3\", \
         \"server.py\", \"${{ports.http}}\", \"${{env.name}}\"]\n    ports: [http]\n    \
         health: {{ http: / }}\n    expose: http\n"
    )
}

fn setup(cap: u32) -> (Sandbox, String) {
    let s = Sandbox::new();
    s.write("server.py", SERVER);
    s.write("slipway.yaml", &stack(cap));
    s.commit("stack");
    world::append_config(
        &s,
        "[repo]\npoll_interval = \"300ms\"\n[controller]\ndrift_interval = \"2s\"\n",
    );
    let token = named_token(&s, "admin", "test");
    (s, token)
}

fn branch(s: &Sandbox, name: &str) {
    git(&s.repo, &["branch", "-q", name, "main"]);
}

/// `slipway status --output json` of the sandbox's home.
fn status(s: &Sandbox) -> Value {
    s.json(&["status", "--output", "json"])
}

/// The preview environments (`br-…`) in `status`, by name: (activity, queue_position).
fn previews(status: &Value) -> Vec<(String, String, Option<u64>)> {
    status["environments"]
        .as_array()
        .map(|envs| {
            envs.iter()
                .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with("br-")))
                .map(|e| {
                    (
                        e["name"].as_str().unwrap_or_default().to_string(),
                        e["activity"].as_str().unwrap_or_default().to_string(),
                        e["queue_position"].as_u64(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The queued previews in `status`, in queue order: (name, position).
fn queued(status: &Value) -> Vec<(String, u64)> {
    let mut q: Vec<(String, u64)> = previews(status)
        .into_iter()
        .filter(|(_, activity, _)| activity == "queued")
        .map(|(name, _, place)| (name, place.unwrap_or(0)))
        .collect();
    q.sort_by_key(|(_, place)| *place);
    q
}

/// The previews in `status` that hold a slot (awake or sleeping), by name.
fn running(status: &Value) -> Vec<String> {
    previews(status)
        .into_iter()
        .filter(|(_, activity, _)| activity != "queued")
        .map(|(name, _, _)| name)
        .collect()
}

fn answers(server: &Server, env: &str) -> bool {
    http_get_host(server.port(), &format!("{env}.shop.localhost"), "/")
        .is_some_and(|body| body == format!("hello from {env}"))
}

/// Whether anything of `env` was made in the home: its directory (checkout, data, run).
fn has_directory(s: &Sandbox, env: &str) -> bool {
    s.home.join("envs").join(env).exists()
}

#[test]
fn beyond_max_environments_branches_wait_in_order_and_start_when_a_slot_frees() {
    let (s, token) = setup(2);
    branch(&s, "feature/a");
    branch(&s, "feature/b");
    branch(&s, "feature/c");
    let server = start_serve(&s);
    for env in ["br-feature-a", "br-feature-b"] {
        wait_for(&format!("{env} answers at its preview URL"), T, || {
            answers(&server, env).then_some(())
        });
    }
    let seen = wait_for("br-feature-c waits first in line", T, || {
        let v = status(&s);
        (queued(&v) == [("br-feature-c".to_string(), 1)]).then_some(v)
    });
    let c = status_environment(&seen, "br-feature-c").expect("br-feature-c in status");
    assert_eq!(
        (&c["activity"], &c["queue_position"], &c["resources"]),
        (
            &Value::from("queued"),
            &Value::from(1),
            &Value::Array(vec![])
        ),
        "a queued environment shows its place and has nothing running: {c}"
    );
    assert!(
        c["message"].as_str().is_some_and(
            |m| m.contains("1st in line") && m.contains("one of its 2 environments goes")
        ),
        "its message says its place and what it waits for: {c}"
    );
    assert!(
        !has_directory(&s, "br-feature-c"),
        "nothing is made for a queued environment"
    );
    assert!(!answers(&server, "br-feature-c"));
    // Its preview URL says so, with its place, and when to ask again (to those let in: a
    // preview never applied is private until its commit says otherwise).
    let answer = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&server.addr).expect("connect");
        write!(
            stream,
            "GET / HTTP/1.0\r\nHost: br-feature-c.shop.localhost\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        )
        .expect("send");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    assert_eq!(answer.split_whitespace().nth(1), Some("503"), "{answer}");
    assert!(
        answer.contains("is queued (#1 in line)")
            && answer.to_ascii_lowercase().contains("retry-after: 30"),
        "the preview URL of a queued environment says its place: {answer}"
    );
    // Static environments take no slot.
    assert!(status_environment(&seen, "dev").is_some_and(|d| d["activity"] == "awake"));

    // Later arrivals queue behind, whatever their names: a name sorting first does not jump
    // the line.
    branch(&s, "feature/d");
    wait_for("br-feature-d queues second", T, || {
        (queued(&status(&s)).len() == 2).then_some(())
    });
    branch(&s, "feature/0-first");
    let v = wait_for("br-feature-0-first queues third", T, || {
        let v = status(&s);
        (queued(&v).len() == 3).then_some(v)
    });
    assert_eq!(
        queued(&v),
        [
            ("br-feature-c".to_string(), 1),
            ("br-feature-d".to_string(), 2),
            ("br-feature-0-first".to_string(), 3)
        ],
        "the queue is in order of arrival"
    );
    // The API says the same.
    let (code, listed) = api_request(&server.addr, "GET", "/api/v1/environments", &token, None);
    assert_eq!(code, 200, "{listed}");
    let api_env = |name: &str| {
        listed
            .as_array()
            .or_else(|| listed["environments"].as_array())
            .and_then(|envs| envs.iter().find(|e| e["name"] == name).cloned())
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        (
            &api_env("br-feature-d")["activity"],
            &api_env("br-feature-d")["queue_position"]
        ),
        (&Value::from("queued"), &Value::from(2)),
        "the API shows the queue: {listed}"
    );
    assert_eq!(api_env("br-feature-a")["activity"], "awake", "{listed}");
    // A person's apply of a queued environment is refused, and makes nothing.
    let out = s.run(&["apply", "--env", "br-feature-d", "--yes"]);
    assert!(
        !out.status.success() && text(&out).contains("`br-feature-d` is queued"),
        "apply refuses a queued environment: {}",
        text(&out)
    );
    assert!(!has_directory(&s, "br-feature-d"), "{}", text(&out));
    assert_eq!(
        status_environment(&status(&s), "br-feature-d").expect("d")["activity"],
        "queued"
    );
    // The text status says it too.
    let out = s.ok(&["status", "--env", "br-feature-d"]);
    assert!(
        text(&out).contains("queued (#2)"),
        "status text shows the place: {}",
        text(&out)
    );

    // A branch deleted frees its slot: the first in line starts and answers, the others move
    // up.
    git(&s.repo, &["branch", "-q", "-D", "feature/a"]);
    wait_for("br-feature-c starts once br-feature-a is gone", T, || {
        answers(&server, "br-feature-c").then_some(())
    });
    let v = wait_for("the queue moved up", T, || {
        let v = status(&s);
        (queued(&v)
            == [
                ("br-feature-d".to_string(), 1),
                ("br-feature-0-first".to_string(), 2),
            ])
        .then_some(v)
    });
    assert_eq!(running(&v), ["br-feature-b", "br-feature-c"], "{v}");

    // A queued branch deleted leaves the line; those behind move up.
    git(&s.repo, &["branch", "-q", "-D", "feature/d"]);
    wait_for("br-feature-d left the queue", T, || {
        (queued(&status(&s)) == [("br-feature-0-first".to_string(), 1)]).then_some(())
    });

    // Killed at any moment, the controller converges on restart: a slot freed while it was
    // down goes to the first in line, and exactly the cap runs.
    drop(server);
    git(&s.repo, &["branch", "-q", "-D", "feature/b"]);
    let server = start_serve(&s);
    wait_for("br-feature-0-first starts after the restart", T, || {
        answers(&server, "br-feature-0-first").then_some(())
    });
    let v = status(&s);
    assert_eq!(
        running(&v),
        ["br-feature-0-first", "br-feature-c"],
        "exactly max_environments run: {v}"
    );
    assert!(queued(&v).is_empty(), "{v}");

    // Killed with SIGKILL in the middle of freeing a slot (the branch just deleted: its destroy
    // and the promotion after it under way or not begun), the restarted controller converges
    // to exactly max_environments running, the first in line among them.
    branch(&s, "feature/e");
    branch(&s, "feature/f");
    wait_for("br-feature-e and br-feature-f wait", T, || {
        (queued(&status(&s)).len() == 2).then_some(())
    });
    git(&s.repo, &["branch", "-q", "-D", "feature/c"]);
    wait_for("the controller starts destroying br-feature-c", T, || {
        let v = status(&s);
        let c = status_environment(&v, "br-feature-c");
        (c.is_none() || c.is_some_and(|c| c["sync"] != "synced")).then_some(())
    });
    drop(server);
    let server = start_serve(&s);
    wait_for("br-feature-e starts after the restart", T, || {
        answers(&server, "br-feature-e").then_some(())
    });
    let v = wait_for("exactly max_environments run, the rest queued", T, || {
        let v = status(&s);
        (running(&v) == ["br-feature-0-first", "br-feature-e"]
            && queued(&v) == [("br-feature-f".to_string(), 1)])
        .then_some(v)
    });
    assert!(!answers(&server, "br-feature-c"), "{v}");
}

#[test]
fn fifty_branches_pushed_at_once_with_a_cap_of_two_run_two_and_allocate_nothing_for_the_rest() {
    let (s, _token) = setup(2);
    let names: Vec<String> = (0..50).map(|i| format!("feature/x{i:02}")).collect();
    for name in &names {
        branch(&s, name);
    }
    let server = start_serve(&s);
    let v = wait_for("two run and forty-eight wait", T, || {
        let v = status(&s);
        let r = running(&v);
        assert!(
            r.len() <= 2,
            "never more than max_environments hold a slot: {r:?}"
        );
        (r.len() == 2 && queued(&v).len() == 48).then_some(v)
    });
    // Arrived together: their order is by name, every place once.
    let places: Vec<u64> = queued(&v).iter().map(|(_, p)| *p).collect();
    assert_eq!(places, (1..=48).collect::<Vec<u64>>());
    assert_eq!(running(&v), ["br-feature-x00", "br-feature-x01"], "{v}");
    for env in ["br-feature-x00", "br-feature-x01"] {
        wait_for(&format!("{env} answers"), T, || {
            answers(&server, env).then_some(())
        });
    }
    // The sandbox has 20 uids and 20 ports: had the queued ones been given any, the home
    // would have run out. None has a directory either.
    let made: Vec<String> = (2..50)
        .map(|i| format!("br-feature-x{i:02}"))
        .filter(|env| has_directory(&s, env))
        .collect();
    assert!(
        made.is_empty(),
        "queued environments have directories: {made:?}"
    );
    let v = status(&s);
    assert_eq!(running(&v).len(), 2, "{v}");

    // Raising the cap in a new commit of main lets the queue in, in order.
    s.write("slipway.yaml", &stack(4));
    s.commit("four previews");
    let v = wait_for("four run once the cap is raised", T, || {
        let v = status(&s);
        (running(&v).len() == 4 && queued(&v).len() == 46).then_some(v)
    });
    assert_eq!(
        running(&v),
        [
            "br-feature-x00",
            "br-feature-x01",
            "br-feature-x02",
            "br-feature-x03"
        ],
        "the first two in line took the new slots"
    );
    for env in ["br-feature-x02", "br-feature-x03"] {
        wait_for(&format!("{env} answers"), T, || {
            answers(&server, env).then_some(())
        });
    }
    assert_eq!(queued(&v)[0], ("br-feature-x04".to_string(), 1));
    // Lowering it stops nothing: the four keep running, and a branch gone among them frees
    // no slot while three still run above the cap of one.
    s.write("slipway.yaml", &stack(1));
    let lowered = s.commit("one preview");
    wait_for("dev runs the lowered cap's commit", T, || {
        let v = status(&s);
        (status_environment(&v, "dev")?["commit"] == lowered.as_str()).then_some(())
    });
    git(&s.repo, &["branch", "-q", "-D", "feature/x00"]);
    let v = wait_for("br-feature-x00 is destroyed", T, || {
        let v = status(&s);
        status_environment(&v, "br-feature-x00")
            .is_none()
            .then_some(v)
    });
    assert_eq!(
        running(&v),
        ["br-feature-x01", "br-feature-x02", "br-feature-x03"],
        "a lowered cap kills nothing and lets nobody in above it: {v}"
    );
    for env in ["br-feature-x01", "br-feature-x02", "br-feature-x03"] {
        assert!(answers(&server, env), "{env} still answers");
    }
}

#[test]
fn the_homes_max_environments_caps_every_family_and_ad_hoc_environments_queue_with_their_place() {
    let (s, token) = setup(10);
    s.with_local("max_environments = 1");
    branch(&s, "feature/a");
    let server = start_serve(&s);
    wait_for("br-feature-a answers", T, || {
        answers(&server, "br-feature-a").then_some(())
    });
    // dev (static) runs beside it: the home's cap counts generated and ad-hoc ones only.
    let v = status(&s);
    assert_eq!(
        status_environment(&v, "dev").expect("dev")["activity"],
        "awake"
    );
    // An ad-hoc environment beyond the home's cap is answered queued, with its place.
    let (code, created) = api_request(
        &server.addr,
        "POST",
        "/api/v1/environments",
        &token,
        Some(serde_json::json!({"name": "demo", "ref": "main", "like": "previews"})),
    );
    assert_eq!(code, 201, "{created}");
    assert_eq!(
        (&created["activity"], &created["queue_position"]),
        (&Value::from("queued"), &Value::from(1)),
        "the create answers queued with its place: {created}"
    );
    branch(&s, "feature/b");
    let v = wait_for("br-feature-b queues behind demo", T, || {
        let v = status(&s);
        let b = status_environment(&v, "br-feature-b")?;
        (b["activity"] == "queued").then_some(v.clone())
    });
    let b = status_environment(&v, "br-feature-b").expect("b");
    assert_eq!(
        b["queue_position"], 2,
        "one queue per family: demo (like previews) is ahead: {v}"
    );
    // The CLI on the home answers the same: made, queued, with its place.
    let out = s.ok(&[
        "env", "create", "demo2", "--ref", "main", "--like", "previews", "--output", "json",
    ]);
    let made: Value = serde_json::from_slice(&out.stdout).expect("env create prints JSON");
    assert_eq!(
        (
            &made["environments"][0]["activity"],
            &made["environments"][0]["queue_position"]
        ),
        (&Value::from("queued"), &Value::from(3)),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("queued: 3rd in line"),
        "the CLI says it queued: {}",
        text(&out)
    );
    // Destroying the running one by hand frees the home's slot: demo, first in line, starts.
    let url = format!("http://{}", server.addr);
    s.ok(&[
        "--server",
        &url,
        "--token",
        &token,
        "env",
        "destroy",
        "br-feature-a",
        "--yes",
    ]);
    wait_for("demo starts when br-feature-a is destroyed", T, || {
        answers(&server, "demo").then_some(())
    });
    let v = status(&s);
    assert_eq!(
        (
            &status_environment(&v, "br-feature-b").expect("b")["queue_position"],
            &status_environment(&v, "demo2").expect("demo2")["queue_position"]
        ),
        (&Value::from(1), &Value::from(2)),
        "{v}"
    );
}

/// Generated environments holding a slot (not queued) and those deployed, in the state.
fn slots_taken(db: &slipway_testkit::pg::TestDatabase) -> (i64, i64) {
    let row = db
        .connect()
        .query_one(
            "SELECT COUNT(*) FILTER (WHERE activity <> 'queued'), \
                    COUNT(*) FILTER (WHERE current_commit IS NOT NULL) \
             FROM environments WHERE kind = 'generated'",
            &[],
        )
        .expect("count the slots taken");
    (row.get(0), row.get(1))
}

#[test]
fn two_replicas_on_one_postgresql_state_never_run_more_than_the_cap_between_them() {
    use util::replicas::*;
    let database = slipway_testkit::pg::TestDatabase::create("slipway_queue");
    let s = Sandbox::new();
    s.with_local("advertise = \"127.0.0.1\"");
    // A file per environment: nothing to allocate but the environment's own directory.
    s.write(
        "slipway.yaml",
        "version: 1\nstack: shop\nenvironments:\n  previews:\n    generate: { branches: \
         [\"feature/*\"] }\n    max_environments: 2\nresources:\n  f: { type: file, path: f.txt, \
         content: \"${env.name}\" }\n",
    );
    s.commit("capped");
    for i in 0..10 {
        branch(&s, &format!("feature/r{i}"));
    }
    let start = |name: &str| {
        let config = replica_config(&s, &database, ReplicaSettings::named(name));
        (replica_home(&s, name), config)
    };
    let (home1, config1) = start("r1");
    let (r1, _log1) = serve_from(serve_command(&s, &home1, &config1), T);
    let (home2, config2) = start("r2");
    wait_for("r1 makes the state key", T, || {
        home1.join("state.key").is_file().then_some(())
    });
    std::fs::copy(home1.join("state.key"), home2.join("state.key")).expect("copy the key");
    let (r2, _log2) = serve_from(serve_command(&s, &home2, &config2), T);
    // Both replicas refresh every 300 ms and see every branch: each admission and promotion
    // is decided by one of them at a time.
    let mut deleted = 0;
    let deadline = std::time::Instant::now() + T;
    while deleted < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue drained in time"
        );
        let (taken, deployed) = slots_taken(&database);
        assert!(
            taken <= 2 && deployed <= 2,
            "never more than max_environments hold a slot or run: {taken} hold, {deployed} run"
        );
        if deployed == 2 {
            // Free a slot: delete a branch whose environment runs.
            let running: String = database
                .connect()
                .query_one(
                    "SELECT tracked_ref FROM environments WHERE kind = 'generated' \
                     AND current_commit IS NOT NULL ORDER BY name LIMIT 1",
                    &[],
                )
                .expect("a running environment")
                .get(0);
            git(&s.repo, &["branch", "-q", "-D", &running]);
            deleted += 1;
            wait_for("its environment is gone", T, || {
                let gone = database
                    .connect()
                    .query_opt(
                        "SELECT 1 FROM environments WHERE tracked_ref = $1",
                        &[&running],
                    )
                    .expect("read")
                    .is_none();
                gone.then_some(())
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for("the last two run", T, || {
        (slots_taken(&database) == (2, 2)).then_some(())
    });
    drop((r1, r2));
}
