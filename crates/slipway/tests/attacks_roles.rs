//! Attacks on roles, ad-hoc environments, expiry, templates and the first admin token, each
//! performed against the real `slipway` binary and server, each shown to fail, with the
//! legitimate path beside it:
//! - a developer's `env create --like prod` (prod's secret overrides, no time limit), under a
//!   stack name (`prod`, a family), a generated one's (`pr-7`, `br-x`), or longer than the
//!   operator allows; also through a branch whose `slipway.yaml` redefines `prod`;
//! - a deployer's `extend prod --by 1ms` (which used to get protected prod destroyed by the
//!   controller within a second), an extension past the maximum, and an old record of prod
//!   holding an expiry in the past;
//! - `template:` naming an unlisted database or another environment's database;
//! - the first admin token, which must be in a 0600 file and never in the server's output.

mod util;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use util::world::append_config;
use util::*;

const T: Duration = Duration::from_secs(60);

/// A name the test knows to be valid.
fn env(name: &str) -> slipway_core::EnvName {
    slipway_core::EnvName::parse(name).expect("the test's environment names are DNS labels")
}

/// The environment `name` as the API shows it, when it exists.
fn environment(server: &Server, token: &str, name: &str) -> Option<Value> {
    let (status, body) = api_request(
        &server.addr,
        "GET",
        &format!("/api/v1/environments/{name}"),
        token,
        None,
    );
    (status == 200).then_some(body)
}

fn synced(server: &Server, token: &str, name: &str) -> Option<Value> {
    environment(server, token, name).filter(|e| e["sync"] == "synced" && e["health"] == "healthy")
}

/// How many reconciles the controller has finished.
fn reconciles(server: &Server, token: &str) -> u64 {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(&server.addr).expect("connect");
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
        .lines()
        .find_map(|l| l.strip_prefix("slipway_reconcile_duration_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the controller has finished `passes` more reconciles and at least `at_least`
/// has passed (so that the TTL tick, every second, and the drift interval have run).
fn wait_for_passes(server: &Server, token: &str, passes: u64, at_least: Duration) {
    let start = Instant::now();
    let before = reconciles(server, token);
    wait_for("the controller reconciles several more times", T, || {
        (start.elapsed() >= at_least && reconciles(server, token) >= before + passes).then_some(())
    });
}

fn events(s: &Sandbox, env: &str) -> Vec<(String, String)> {
    let store = slipway_state::Store::open(&s.home).expect("open the store");
    store
        .events(&slipway_state::EventQuery {
            environment: Some(self::env(env)),
            after_id: None,
            limit: 1000,
        })
        .expect("events")
        .into_iter()
        .map(|e| (e.kind.to_string(), e.message))
        .collect()
}

fn conf(s: &Sandbox, env: &str) -> Option<String> {
    std::fs::read_to_string(s.home.join("envs").join(env).join("data").join("conf.txt")).ok()
}

struct Setup {
    s: Sandbox,
    prod_secret: String,
    default_secret: String,
    admin: String,
    deployer: String,
    developer: String,
}

/// A stack with protected `prod` (a secret override of its own) and the family `previews`
/// (whose `ttl` is longer than the operator allows), and an engine allowing at most 2h.
fn setup() -> Setup {
    let s = Sandbox::new();
    let keygen = s.ok(&["secret", "keygen"]);
    let recipient = String::from_utf8_lossy(&keygen.stdout).trim().to_string();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let prod_secret = format!("PRODSECRET-{stamp}");
    let default_secret = format!("DEFAULTSECRET-{stamp}");
    s.write(
        "slipway.yaml",
        &format!(
            r#"version: 1
stack: roles
secrets: {{ recipients: [{recipient}] }}
environments:
  prod: {{ track: main, protected: true, variables: {{ tier: production }} }}
  previews: {{ generate: {{ branches: ["feature/*"] }}, ttl: 30d, variables: {{ tier: preview }} }}
  nightly: {{ generate: {{ branches: ["nightly/*"] }} }}
variables:
  tier: none
resources:
  conf: {{ type: file, path: conf.txt, content: "tier=${{vars.tier}} token=${{secrets.api_token}}" }}
"#
        ),
    );
    s.set_secret("api_token", None, &default_secret);
    s.set_secret("api_token", Some("prod"), &prod_secret);
    s.commit("a stack with prod's own secret");
    append_config(
        &s,
        "[repo]\npoll_interval = \"300ms\"\n[controller]\ndrift_interval = \"500ms\"\n\
         [environments]\nmax_ttl = \"2h\"\ndefault_ttl = \"1h\"\n",
    );
    let admin = role_token(&s, "admin");
    let deployer = role_token(&s, "deployer");
    let developer = role_token(&s, "developer");
    Setup {
        s,
        prod_secret,
        default_secret,
        admin,
        deployer,
        developer,
    }
}

#[test]
fn a_developer_cannot_copy_prod_take_its_names_or_live_forever() {
    let Setup {
        s,
        prod_secret,
        default_secret,
        admin,
        developer,
        ..
    } = setup();
    // A branch whose stack turns `prod` into a family and drops the static one: the names
    // and families that count are the default branch's.
    git(&s.repo, &["checkout", "-q", "-b", "evil"]);
    let yaml = std::fs::read_to_string(s.repo.join("slipway.yaml")).expect("stack");
    s.write(
        "slipway.yaml",
        &yaml.replace(
            "prod: { track: main, protected: true, variables: { tier: production } }",
            "prod: { generate: { branches: [\"nothing/*\"] }, variables: { tier: production } }",
        )
        .replace("  nightly: { generate: { branches: [\"nightly/*\"] } }\n", ""),
    );
    s.commit("prod is a family here");
    git(&s.repo, &["checkout", "-q", "main"]);
    // A branch that copies prod's override ciphertext into its own secrets file as the
    // default: its preview would decrypt prod's secret if ciphertexts were not bound.
    git(&s.repo, &["checkout", "-q", "-b", "feature/steal"]);
    let secrets = std::fs::read_to_string(s.repo.join("slipway.secrets.yaml")).expect("secrets");
    let prod_block: String = secrets
        .split("      prod: |\n")
        .nth(1)
        .expect("prod's override is in the secrets file")
        .lines()
        .take_while(|l| l.starts_with("        "))
        .map(|l| format!("      {}\n", &l[8..]))
        .collect();
    s.write(
        "slipway.secrets.yaml",
        &format!("version: 1\nsecrets:\n  api_token:\n    value: |\n{prod_block}"),
    );
    s.commit("prod's ciphertext as the default");
    git(&s.repo, &["checkout", "-q", "main"]);

    let server = start_serve(&s);
    let url = format!("http://{}", server.addr);
    wait_for("prod runs", T, || synced(&server, &admin, "prod"));
    assert!(
        conf(&s, "prod").is_some_and(|c| c.contains(&prod_secret)),
        "prod has its own secret (the override this test tries to steal)"
    );
    let stolen = wait_for("the copied ciphertext is refused", T, || {
        environment(&server, &admin, "br-feature-steal").filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("set for `prod` only"))
        })
    });
    assert!(
        !stolen.to_string().contains(&prod_secret)
            && conf(&s, "br-feature-steal").is_none_or(|c| !c.contains(&prod_secret)),
        "the branch's preview never gets prod's secret: {stolen}"
    );

    let create = |body: Value| {
        api_request(
            &server.addr,
            "POST",
            "/api/v1/environments",
            &developer,
            Some(body),
        )
    };
    // --like prod: refused, listing the families.
    for reference in ["main", "evil"] {
        let (status, body) = create(json!({"name": "copy", "ref": reference, "like": "prod"}));
        assert_eq!(
            status, 422,
            "a developer's copy of prod at `{reference}` is refused: {body}"
        );
        assert!(
            body.to_string().contains("previews"),
            "the refusal lists the families: {body}"
        );
    }
    let cli = s.run(&[
        "--server", &url, "--token", &developer, "env", "create", "copy", "--ref", "main",
        "--like", "prod",
    ]);
    assert!(
        !cli.status.success() && text(&cli).contains("static environment"),
        "the CLI's `env create --like prod` is refused: {}",
        text(&cli)
    );
    // The same through the CLI on the home (no server): the default branch decides.
    let local = s.run(&["env", "create", "copy", "--ref", "evil", "--like", "prod"]);
    assert!(
        !local.status.success() && text(&local).contains("static environment"),
        "the local `env create --ref evil --like prod` is refused: {}",
        text(&local)
    );
    // `nightly` is a family of main that evil's stack leaves out: main's names count.
    let local = s.run(&[
        "env", "create", "nightly", "--ref", "evil", "--like", "previews",
    ]);
    assert!(
        !local.status.success() && text(&local).contains("environment of the stack itself"),
        "the local `env create nightly --ref evil` is refused: {}",
        text(&local)
    );
    assert!(
        environment(&server, &admin, "copy").is_none(),
        "no copy of prod exists"
    );

    // Names that belong to the stack or to generated environments.
    for (name, reference) in [
        ("prod", "main"),
        ("prod", "evil"),
        ("previews", "main"),
        ("nightly", "evil"),
        ("pr-7", "main"),
        ("br-x", "main"),
    ] {
        let (status, body) = create(json!({"name": name, "ref": reference, "like": "previews"}));
        assert_eq!(
            status, 409,
            "an ad-hoc environment named `{name}` (ref {reference}) is refused: {body}"
        );
    }
    let prod = environment(&server, &admin, "prod").expect("prod");
    assert_eq!(
        prod["kind"], "static",
        "prod is still the static prod: {prod}"
    );

    // A life longer than the operator allows.
    let (status, body) =
        create(json!({"name": "long", "ref": "main", "like": "previews", "ttl": "3h"}));
    assert_eq!(
        status, 422,
        "a ttl above [environments] max_ttl is refused: {body}"
    );
    assert!(
        body.to_string().contains("2h"),
        "the refusal says the maximum: {body}"
    );

    // The legitimate path: a member of the family, with the family's variables and the
    // default secret, living at most max_ttl (the family's 30d is cut to 2h).
    let (status, body) = create(json!({"name": "scratch", "ref": "main", "like": "previews"}));
    assert_eq!(
        status, 201,
        "a developer makes a preview-like environment: {body}"
    );
    assert_eq!(
        body["ttl_seconds"], 7200,
        "the family's 30d ttl is cut to max_ttl: {body}"
    );
    assert!(!body["expires_at"].is_null(), "it expires: {body}");
    wait_for("scratch runs", T, || synced(&server, &admin, "scratch"));
    let scratch = conf(&s, "scratch").expect("scratch's file");
    assert!(
        scratch.contains(&default_secret)
            && !scratch.contains(&prod_secret)
            && scratch.contains("tier=preview"),
        "the ad-hoc environment has the default secret and the family's variables, never \
         prod's: {scratch}"
    );
    // With no ttl and a family without one, the default applies; with one, it is kept.
    let (status, body) =
        create(json!({"name": "short", "ref": "main", "like": "previews", "ttl": "90m"}));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["ttl_seconds"], 5400, "{body}");
}

#[test]
fn extending_prod_is_refused_and_expiry_never_destroys_it() {
    let Setup {
        s,
        prod_secret,
        admin,
        deployer,
        developer,
        ..
    } = setup();
    let server = start_serve(&s);
    let url = format!("http://{}", server.addr);
    wait_for("prod runs", T, || synced(&server, &admin, "prod"));

    // The attack of the issue: a deployer's 1ms extension of prod, by the API and the CLI.
    for by in ["1ms", "2h"] {
        let (status, body) = api_request(
            &server.addr,
            "POST",
            "/api/v1/environments/prod/extend",
            &deployer,
            Some(json!({"by": by})),
        );
        assert_eq!(status, 409, "extending prod by {by} is refused: {body}");
        assert!(
            body.to_string().contains("static environment"),
            "the refusal says why: {body}"
        );
    }
    let cli = s.run(&[
        "--server", &url, "--token", &deployer, "env", "extend", "prod", "--by", "1ms",
    ]);
    assert!(
        !cli.status.success() && text(&cli).contains("static environment"),
        "the CLI's `env extend prod` is refused through the API: {}",
        text(&cli)
    );
    let local = s.run(&["env", "extend", "prod", "--by", "1ms"]);
    assert!(
        !local.status.success() && text(&local).contains("static environment"),
        "the CLI's `env extend prod` on the home is refused: {}",
        text(&local)
    );
    // The controller goes on: several passes, past the TTL tick and drift intervals.
    wait_for_passes(&server, &admin, 4, Duration::from_secs(3));
    let prod = synced(&server, &admin, "prod").expect("prod is still running and healthy");
    assert!(prod["expires_at"].is_null(), "prod has no expiry: {prod}");
    assert!(
        conf(&s, "prod").is_some_and(|c| c.contains(&prod_secret)),
        "prod's resources are intact"
    );

    // Extensions of an ad-hoc environment are capped by max_ttl.
    let (status, body) = api_request(
        &server.addr,
        "POST",
        "/api/v1/environments",
        &developer,
        Some(json!({"name": "scratch", "ref": "main", "like": "previews", "ttl": "1h"})),
    );
    assert_eq!(status, 201, "{body}");
    let extend = |by: &str| {
        api_request(
            &server.addr,
            "POST",
            "/api/v1/environments/scratch/extend",
            &developer,
            Some(json!({"by": by})),
        )
    };
    let (status, body) = extend("3h");
    assert_eq!(status, 422, "an extension above max_ttl is refused: {body}");
    assert!(
        body.to_string().contains("2h"),
        "it says the maximum: {body}"
    );
    let asked_at = std::time::SystemTime::now();
    let (status, body) = extend("90m");
    assert_eq!(status, 200, "{body}");
    let expires: std::time::SystemTime =
        humantime::parse_rfc3339(body["expires_at"].as_str().expect("an expiry"))
            .expect("an RFC 3339 time");
    assert!(
        expires <= asked_at + Duration::from_secs(2 * 3600 + 5),
        "1h + 90m is capped at now + max_ttl (2h): {body}"
    );
    assert!(
        expires >= asked_at + Duration::from_secs(2 * 3600 - 60),
        "the extension still happened, to the cap: {body}"
    );

    // An old record of prod with an expiry in the past (as the attack left it): held, never
    // destroyed. Written with the controller stopped, as an older version would have.
    drop(server);
    {
        let store = slipway_state::Store::open(&s.home).expect("open the store");
        let mut record = store
            .environment(&env("prod"))
            .expect("read prod")
            .expect("prod's record");
        record.expires_at = Some(slipway_state::now_ms() - 1000);
        record.ttl_ms = Some(1);
        store.upsert_environment(&record).expect("write prod");
    }
    let server = start_serve(&s);
    let held = wait_for("prod's expiry is held", T, || {
        events(&s, "prod")
            .into_iter()
            .find(|(kind, _)| kind == "expiry.held")
    });
    assert!(
        held.1.contains("protected") && held.1.contains("--confirm-destroy prod"),
        "the hold says why and what a person would do: {held:?}"
    );
    wait_for_passes(&server, &admin, 4, Duration::from_secs(3));
    let all = events(&s, "prod");
    assert!(
        !all.iter()
            .any(|(kind, _)| kind == "environment.destroyed" || kind == "environment.expired"),
        "prod was never destroyed: {all:?}"
    );
    let prod = wait_for("prod runs on after the held expiry", T, || {
        synced(&server, &admin, "prod")
    });
    assert!(
        prod["expires_at"].is_null(),
        "the expiry is dropped: {prod}"
    );
    assert!(
        conf(&s, "prod").is_some_and(|c| c.contains(&prod_secret)),
        "prod's resources are intact"
    );
}

#[test]
fn an_adhoc_environment_under_a_name_the_stack_later_defines_is_never_adopted() {
    let Setup {
        s,
        admin,
        developer,
        ..
    } = setup();
    let server = start_serve(&s);
    wait_for("prod runs", T, || synced(&server, &admin, "prod"));
    let (status, body) = api_request(
        &server.addr,
        "POST",
        "/api/v1/environments",
        &developer,
        Some(json!({"name": "qa", "ref": "main", "like": "previews"})),
    );
    assert_eq!(status, 201, "`qa` is free when it is made: {body}");
    wait_for("the ad-hoc qa runs", T, || synced(&server, &admin, "qa"));

    // Later, main defines a static `qa`: the ad-hoc one must not become it (nor it the ad-hoc
    // one), whatever reconciles first.
    let yaml = std::fs::read_to_string(s.repo.join("slipway.yaml")).expect("stack");
    s.write(
        "slipway.yaml",
        &yaml.replace(
            "  previews:",
            "  qa: { track: main, variables: { tier: qa } }\n  previews:",
        ),
    );
    s.commit("a static qa");
    let qa = wait_for("the conflict is reported on qa", T, || {
        environment(&server, &admin, "qa").filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("not adopted"))
        })
    });
    assert_eq!(qa["kind"], "adhoc", "qa stays what it was: {qa}");
    assert_eq!(qa["owner"], "developer", "{qa}");
    wait_for_passes(&server, &admin, 4, Duration::from_secs(2));
    let qa = environment(&server, &admin, "qa").expect("qa");
    assert_eq!(
        qa["kind"], "adhoc",
        "still not adopted after more passes: {qa}"
    );
    let conflicts: Vec<_> = events(&s, "qa")
        .into_iter()
        .filter(|(kind, _)| kind == "environment.conflict")
        .collect();
    assert_eq!(
        conflicts.len(),
        1,
        "the conflict is reported as an event, once: {conflicts:?}"
    );
    assert!(
        conf(&s, "qa").is_some_and(|c| c.contains("tier=preview")),
        "the ad-hoc qa was never deployed as the static qa"
    );
    let apply = s.run(&["apply", "--env", "qa", "--yes"]);
    assert!(
        !apply.status.success() && text(&apply).contains("not adopted"),
        "the engine refuses to deploy the ad-hoc qa as the stack's: {}",
        text(&apply)
    );

    // A person destroys the ad-hoc one; the static qa is made in its place.
    let (status, body) = api_request(
        &server.addr,
        "DELETE",
        "/api/v1/environments/qa",
        &developer,
        None,
    );
    assert_eq!(status, 200, "the ad-hoc qa's owner destroys it: {body}");
    let qa = wait_for("the static qa runs", T, || {
        synced(&server, &admin, "qa").filter(|e| e["kind"] == "static")
    });
    assert!(
        conf(&s, "qa").is_some_and(|c| c.contains("tier=qa")),
        "the static qa has its own variables: {qa}"
    );
}

#[test]
fn a_template_must_be_listed_and_never_another_environments_database() {
    let s = Sandbox::new();
    let stack = "version: 1\nstack: tmpl\nenvironments:\n  prod: { track: main }\n  dev: { track: main }\nresources:\n  db: { type: postgres.database }\n";
    s.write("slipway.yaml", stack).commit("a database");
    s.ok(&["apply", "--env", "prod", "--yes"]);
    let status = s.json(&["status", "--env", "prod", "--output", "json"]);
    let prod_db = status["environments"][0]["resources"][0]["outputs"]["database"]
        .as_str()
        .expect("prod's database")
        .to_string();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let listed = format!("slipway_attack_tmpl_{}_{stamp}", std::process::id());
    let mut admin =
        postgres::Client::connect(&pg_url(), postgres::NoTls).expect("connect to PostgreSQL");
    admin
        .batch_execute(&format!("CREATE DATABASE \"{listed}\""))
        .expect("create a template");
    // The operator lists a real template and, by mistake, prod's database.
    append_config(&s, &format!("templates = ['{listed}', '{prod_db}']\n"));

    let attempt = |template: &str| {
        s.write(
            "slipway.yaml",
            &format!("{stack}  copy: {{ type: postgres.database, template: '{template}' }}\n"),
        )
        .commit("a copy");
        s.run(&["apply", "--env", "dev", "--yes"])
    };
    let out = attempt(&prod_db);
    assert!(
        !out.status.success() && text(&out).contains("database Slipway made"),
        "prod's database is never a template, even listed: {}",
        text(&out)
    );
    let out = attempt("postgres");
    assert!(
        !out.status.success() && text(&out).contains("[postgres.main] templates"),
        "an unlisted template is refused, naming the key: {}",
        text(&out)
    );
    let out = attempt(&listed);
    let worked = out.status.success();
    s.ok(&["destroy", "--env", "dev", "--yes"]);
    s.ok(&["destroy", "--env", "prod", "--yes"]);
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{listed}\" WITH (FORCE)"
        ))
        .expect("drop the template");
    assert!(worked, "a listed template is cloned: {}", text(&out));
}

#[test]
fn the_first_admin_token_is_in_a_private_file_and_never_in_the_log() {
    let s = Sandbox::new();
    s.write(
        "slipway.yaml",
        "version: 1\nstack: tok\nenvironments:\n  dev: { track: main }\nresources:\n  conf: { type: file, path: c.txt, content: x }\n",
    )
    .commit("a stack");
    let log = s.dir.path().join("serve.log");
    let url = format!("file://{}", s.repo.display());
    let mut child = s
        .cmd(&["serve", "--repo", &url, "--listen", "127.0.0.1:0"])
        .stdout(std::fs::File::create(&log).expect("the log"))
        .stderr(std::fs::File::create(s.dir.path().join("serve.err")).expect("the log"))
        .spawn()
        .expect("serve starts");
    let err_path = s.dir.path().join("serve.err");
    let addr = wait_for("serve says where it listens", T, || {
        let err = std::fs::read_to_string(&err_path).ok()?;
        err.split("API http://")
            .nth(1)
            .map(|rest| rest.split('/').next().unwrap_or("").to_string())
    });
    let file = s.home.join("admin-token");
    let mode = std::fs::metadata(&file)
        .expect("the admin token file exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the admin token file is private");
    let token = std::fs::read_to_string(&file)
        .expect("read it")
        .trim()
        .to_string();
    assert!(token.starts_with("slw_"), "the file holds the token");
    let (status, who) = api_request(&addr, "GET", "/api/v1/whoami", &token, None);
    assert_eq!(status, 200, "the token in the file works: {who}");
    assert_eq!(who["role"], "admin", "{who}");
    let _ = child.kill();
    let _ = child.wait();
    let output = std::fs::read_to_string(&log).unwrap_or_default()
        + &std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        !output.contains(&token),
        "the server's output never shows the token: {output}"
    );
    assert!(
        output.contains(&file.display().to_string()),
        "it says where the token is: {output}"
    );
}
