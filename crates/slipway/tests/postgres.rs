//! A database per environment, end to end: the real binary, a real git repository and the
//! PostgreSQL server of this machine (`.ci/run` starts one when none answers on 5432).

mod util;

use serde_json::Value;
use util::{Sandbox, pg_url};

fn admin() -> postgres::Client {
    postgres::Client::connect(&pg_url(), postgres::NoTls).expect(
        "PostgreSQL answers on 127.0.0.1:5432 (`.ci/run` starts it; or set SLIPWAY_TEST_PG_URL)",
    )
}

/// A connection to database `db` as the admin.
fn admin_to(db: &str) -> postgres::Client {
    let mut config: postgres::Config = pg_url().parse().expect("a URL");
    config.dbname(db);
    config
        .connect(postgres::NoTls)
        .expect("connect to the database")
}

fn database_exists(name: &str) -> bool {
    admin()
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .expect("query")
        .is_some()
}

fn role_exists(name: &str) -> bool {
    admin()
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .expect("query")
        .is_some()
}

/// The outputs of resource `resource` of `env`, from `status --output json`.
fn outputs(s: &Sandbox, env: &str, resource: &str) -> Value {
    let status = s.json(&["status", "--env", env, "--output", "json"]);
    status["environments"][0]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["name"] == resource)
        .unwrap_or_else(|| panic!("no {resource} in {status}"))["outputs"]
        .clone()
}

const STACK: &str = r#"version: 1
stack: pgshop
environments:
  dev: { track: main }
  qa: { track: main }
  prod: { track: main, protected: true }
resources:
  db: { type: postgres.database, extensions: [citext] }
  migrate:
    type: job
    command: ["sh", "-c", "psql \"$DATABASE_URL\" -v ON_ERROR_STOP=1 -q -c 'CREATE TABLE IF NOT EXISTS visits (who citext); INSERT INTO visits VALUES (current_user)'"]
    env: { DATABASE_URL: "${resources.db.url}" }
"#;

#[test]
fn each_environment_gets_its_own_migrated_database_and_destroy_drops_it_with_connections_open() {
    let s = Sandbox::new();
    s.write("slipway.yaml", STACK)
        .commit("a database and a migration");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let dev = outputs(&s, "dev", "db");
    let db = dev["database"].as_str().expect("database").to_string();
    let user = dev["user"].as_str().expect("user").to_string();
    assert_eq!(dev["password"], "<redacted>", "{dev}");
    assert_eq!(dev["url"], "<redacted>", "{dev}");
    assert!(db.starts_with("sw_dev_db_") && db.len() <= 63, "{db}");
    // The migration connected with the output URL, as the generated role.
    let owner: String = admin()
        .query_one(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
            &[&db],
        )
        .expect("the database exists")
        .get(0);
    assert_eq!(owner, user, "the database belongs to its generated role");
    let who: String = admin_to(&db)
        .query_one("SELECT who::text FROM visits", &[])
        .expect("the migration made the table")
        .get(0);
    assert_eq!(who, user, "the job ran as the generated role");

    s.ok(&["apply", "--env", "qa", "--yes"]);
    let qa = outputs(&s, "qa", "db")["database"]
        .as_str()
        .expect("database")
        .to_string();
    assert_ne!(qa, db, "another environment, another database");
    assert!(database_exists(&qa));

    // An idle client keeps a connection open: destroy still drops the database and role.
    let mut holder = admin_to(&db);
    holder.simple_query("SELECT 1").expect("connected");
    s.ok(&["destroy", "--env", "dev", "--yes"]);
    assert!(!database_exists(&db), "dev's database is dropped");
    assert!(!role_exists(&user), "dev's role is dropped");
    assert!(
        holder.simple_query("SELECT 1").is_err(),
        "the open connection was terminated"
    );
    assert!(database_exists(&qa), "qa's database is untouched");
    s.ok(&["destroy", "--env", "qa", "--yes"]);
    assert!(!database_exists(&qa));
}

#[test]
fn a_dropped_database_is_drift_that_apply_recreates_and_says_data_was_lost() {
    let s = Sandbox::new();
    s.write("slipway.yaml", STACK)
        .commit("a database and a migration");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let db = outputs(&s, "dev", "db")["database"]
        .as_str()
        .expect("database")
        .to_string();
    s.expect_code(&["plan", "--env", "dev", "--detailed-exitcode"], 0);
    admin()
        .batch_execute(&format!("DROP DATABASE \"{db}\" WITH (FORCE)"))
        .expect("drop it behind slipway's back");
    let plan = s.expect_code(&["plan", "--env", "dev", "--detailed-exitcode"], 2);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.contains("was dropped") && text.contains("data is lost"),
        "the plan says why, and what it costs:\n{text}"
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    assert!(database_exists(&db), "recreated under the same name");
    let rows: i64 = admin_to(&db)
        .query_one("SELECT count(*) FROM visits", &[])
        .expect("the migration ran again on the new database")
        .get(0);
    assert_eq!(rows, 1);
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

#[test]
fn a_template_is_cloned_with_either_strategy() {
    let s = Sandbox::new();
    let template = format!(
        "slipway_test_tmpl_{}_{}",
        std::process::id(),
        fastrand_suffix()
    );
    admin()
        .batch_execute(&format!("CREATE DATABASE \"{template}\""))
        .expect("create the template");
    admin_to(&template)
        .batch_execute("CREATE TABLE seed (n int); INSERT INTO seed VALUES (42)")
        .expect("seed it");
    allow_templates(&s, &[&template]);
    s.write(
        "slipway.yaml",
        &format!(
            "version: 1\nstack: clones\nenvironments:\n  dev: {{ track: main }}\nresources:\n  fast: {{ type: postgres.database, template: {template} }}\n  logged: {{ type: postgres.database, template: {template}, strategy: wal_log }}\n"
        ),
    )
    .commit("clones");
    let applied = s.run(&["apply", "--env", "dev", "--yes"]);
    let mut seen = Vec::new();
    if applied.status.success() {
        for r in ["fast", "logged"] {
            let db = outputs(&s, "dev", r)["database"]
                .as_str()
                .expect("database")
                .to_string();
            let n: i32 = admin_to(&db)
                .query_one("SELECT n FROM seed", &[])
                .expect("the clone has the template's table")
                .get(0);
            seen.push(n);
        }
        s.ok(&["destroy", "--env", "dev", "--yes"]);
    }
    admin()
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{template}\" WITH (FORCE)"
        ))
        .expect("drop the template");
    assert!(
        applied.status.success(),
        "{}",
        s.report(&["apply"], &applied, "apply with templates")
    );
    assert_eq!(seen, vec![42, 42]);
}

#[test]
fn a_protected_environment_keeps_its_database_until_a_person_confirms() {
    let s = Sandbox::new();
    s.write("slipway.yaml", STACK)
        .commit("a database and a migration");
    s.ok(&["apply", "--env", "prod", "--yes"]);
    let db = outputs(&s, "prod", "db")["database"]
        .as_str()
        .expect("database")
        .to_string();

    // The database leaves the stack: `--yes` alone does not drop it.
    s.write(
        "slipway.yaml",
        "version: 1\nstack: pgshop\nenvironments:\n  prod: { track: main, protected: true }\nresources:\n  note: { type: file, path: note.txt, content: hi }\n",
    )
    .commit("no database any more");
    let refused = s.expect_code(&["apply", "--env", "prod", "--yes"], 1);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("protected") && err.contains("--confirm-destroy prod"),
        "{err}"
    );
    assert!(database_exists(&db), "nothing was applied");
    let wrong = s.expect_code(
        &[
            "apply",
            "--env",
            "prod",
            "--yes",
            "--confirm-destroy",
            "dev",
        ],
        1,
    );
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("does not name"));
    assert!(database_exists(&db));
    s.ok(&[
        "apply",
        "--env",
        "prod",
        "--yes",
        "--confirm-destroy",
        "prod",
    ]);
    assert!(!database_exists(&db), "dropped once confirmed");

    // Destroying the protected environment itself needs the same confirmation.
    let refused = s.expect_code(&["destroy", "--env", "prod", "--yes"], 1);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("protected"));
    s.ok(&[
        "destroy",
        "--env",
        "prod",
        "--yes",
        "--confirm-destroy",
        "prod",
    ]);
}

#[test]
fn hostile_names_make_safe_identifiers_and_injection_goes_nowhere() {
    let s = Sandbox::new();
    // Environment names are DNS labels, so the hostile part is the resource name's length and
    // the fields: a template and an extension that try to break out of their quotes.
    let long = "r".repeat(60);
    s.write(
        "slipway.yaml",
        &format!(
            "version: 1\nstack: hostile\nenvironments:\n  dev: {{ track: main }}\nresources:\n  {long}: {{ type: postgres.database }}\n  evil: {{ type: postgres.database, template: 'x\"; DROP DATABASE postgres; --' }}\n"
        ),
    )
    .commit("hostile");
    // Listed, so that the name reaches PostgreSQL and its quoting is what is tested.
    allow_templates(&s, &["x\"; DROP DATABASE postgres; --"]);
    let out = s.expect_code(&["apply", "--env", "dev", "--yes"], 1);
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        err.contains("template") && err.contains("does not exist"),
        "the quoted template is simply not found: {err}"
    );
    assert!(database_exists("postgres"), "nothing was injected");
    let db = outputs(&s, "dev", &long)["database"]
        .as_str()
        .expect("database")
        .to_string();
    assert!(db.len() <= 63 && database_exists(&db), "{db}");
    s.ok(&["destroy", "--env", "dev", "--yes"]);
    assert!(!database_exists(&db));
}

/// The engine connects to the server ahead of a create (so that the connection overlaps its
/// records), but only once nothing can refuse the apply any more: an apply a deploy window
/// or a policy refuses never reaches the server with the admin's credentials.
#[test]
fn an_apply_refused_by_a_window_or_a_policy_never_connects_to_the_server() {
    let s = Sandbox::new();
    let pg = pg_url();
    let target = pg
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("the test server's host:port")
        .to_owned();
    let proxy = slipway_testkit::proxy::Proxy::start(&target);
    let config = std::fs::read_to_string(&s.config).expect("config");
    std::fs::write(
        &s.config,
        config.replace(
            &format!("url = \"{pg}\""),
            &format!(
                "url = \"{}\"",
                pg.replace(&target, &format!("127.0.0.1:{}", proxy.port()))
            ),
        ),
    )
    .expect("write the config");
    s.write(
        "slipway.yaml",
        r#"version: 1
stack: gate
environments:
  prod: { track: main, windows: [{ kind: deny, schedule: "* * * * *", duration: 1h }] }
  qa: { track: main }
resources:
  db: { type: postgres.database }
"#,
    )
    .write(
        "policies/no-db.rego",
        "package slipway\n\ndeny contains \"no databases in qa\" if {\n  input.env.name == \"qa\"\n}\n",
    )
    .commit("a database behind a freeze and a policy");

    let refused = s.run(&["apply", "--env", "prod", "--yes"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("window"),
        "the window refuses it: {said}"
    );
    let refused = s.run(&["apply", "--env", "qa", "--yes"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("no databases in qa"),
        "the policy refuses it: {said}"
    );
    // Both commands have exited: any connection they started completed its handshake
    // already, and sits ahead of this one in the proxy's queue of connections, which it
    // takes in order. So once this one is counted, every earlier one is.
    let probe = std::net::TcpStream::connect(("127.0.0.1", proxy.port())).expect("a probe");
    slipway_testkit::wait::wait_for(
        "the proxy counts the probe",
        std::time::Duration::from_secs(10),
        || (proxy.connections() >= 1).then_some(()),
    );
    drop(probe);
    let probes = 1;
    assert_eq!(
        proxy.connections() - probes,
        0,
        "no connection for a refused apply"
    );

    s.ok(&["apply", "--env", "prod", "--yes", "--override-window"]);
    assert!(proxy.connections() - probes >= 1);
    let db = outputs(&s, "prod", "db")["database"]
        .as_str()
        .expect("database")
        .to_string();
    assert!(database_exists(&db));
    s.ok(&["destroy", "--env", "prod", "--yes"]);
    assert!(!database_exists(&db));
}

/// An extension PostgreSQL does not mark trusted is one only the admin may create, its
/// install script running in a database the environment's code controls: the apply is
/// refused, naming the setting, until the operator lists it in `[postgres.main] extensions`.
#[test]
fn an_untrusted_extension_waits_for_the_operators_list() {
    let s = Sandbox::new();
    s.write(
        "slipway.yaml",
        "version: 1\nstack: ext\nenvironments:\n  qa: { track: main }\nresources:\n  \
         db: { type: postgres.database, extensions: [citext, pageinspect] }\n",
    )
    .commit("a database with a trusted and an untrusted extension");
    let refused = s.expect_code(&["apply", "--env", "qa", "--yes"], 1);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("\"pageinspect\" is not marked trusted")
            && said.contains("`[postgres.main] extensions`"),
        "{said}"
    );
    // `[postgres.main]` is the configuration's last table.
    util::world::append_config(&s, "extensions = ['pageinspect']\n");
    s.ok(&["apply", "--env", "qa", "--yes"]);
    let db = outputs(&s, "qa", "db")["database"]
        .as_str()
        .expect("database")
        .to_string();
    let installed: Vec<String> = admin_to(&db)
        .query("select extname::text from pg_extension order by 1", &[])
        .expect("list extensions")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(installed, ["citext", "pageinspect", "plpgsql"]);
    s.ok(&["destroy", "--env", "qa", "--yes"]);
    assert!(!database_exists(&db));
}

/// Lists `templates` in the sandbox's `[postgres.main]` (its last table).
fn allow_templates(s: &Sandbox, templates: &[&str]) {
    let config = std::fs::read_to_string(&s.config).expect("config");
    let list: Vec<String> = templates
        .iter()
        .map(|t| format!("'{}'", t.replace('\'', "")))
        .collect();
    assert!(
        config
            .trim_end()
            .ends_with(&format!("url = \"{}\"", pg_url()))
    );
    std::fs::write(
        &s.config,
        format!("{config}templates = [{}]\n", list.join(", ")),
    )
    .expect("write the config");
}

fn fastrand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// `[postgres.NAME] connect` in the engine config reaches every environment's database: the
/// role it lists connects, another role does not.
#[test]
fn the_roles_the_engine_config_lists_connect_to_the_environments_database() {
    let s = Sandbox::new();
    let tag = s.dir.path().file_name().and_then(|n| n.to_str()).map(|n| {
        n.chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase()
    });
    let tag = tag.unwrap_or_default();
    let (monitor, stranger) = (format!("swtest_mon_{tag}"), format!("swtest_str_{tag}"));
    admin()
        .batch_execute(&format!(
            "CREATE ROLE \"{monitor}\" LOGIN; CREATE ROLE \"{stranger}\" LOGIN"
        ))
        .expect("a monitoring role, and another");
    s.write(
        "slipway.yaml",
        "version: 1\nstack: mon\nenvironments:\n  qa: { track: main }\nresources:\n  \
         db: { type: postgres.database }\n",
    )
    .commit("a database");
    // `[postgres.main]` is the configuration's last table.
    util::world::append_config(&s, &format!("connect = ['{monitor}']\n"));
    s.ok(&["apply", "--env", "qa", "--yes"]);
    let db = outputs(&s, "qa", "db")["database"]
        .as_str()
        .expect("database")
        .to_string();
    let connects = |role: &str| {
        postgres::Client::connect(
            &format!("postgres://{role}@127.0.0.1:5432/{db}"),
            postgres::NoTls,
        )
        .is_ok()
    };
    let (listed, other) = (connects(&monitor), connects(&stranger));
    s.ok(&["destroy", "--env", "qa", "--yes"]);
    admin()
        .batch_execute(&format!(
            "DROP ROLE \"{monitor}\"; DROP ROLE \"{stranger}\""
        ))
        .expect("remove the test's roles");
    assert!(listed, "the listed role connects");
    assert!(!other, "another role is kept out");
}

/// [`STACK`] with a family of previews, which ad-hoc environments are made `--like`.
fn with_previews() -> String {
    let stack = STACK.replace(
        "  dev: { track: main }\n",
        "  dev: { track: main }\n  previews: { generate: { branches: [\"feature/*\"] } }\n",
    );
    assert_ne!(stack, STACK);
    stack
}

/// The `CONNECTION LIMIT` of role `role` (`-1`: none).
fn connection_limit_of(role: &str) -> i32 {
    admin()
        .query_one(
            "SELECT rolconnlimit FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .expect("the role exists")
        .get(0)
}

/// Whoever can make an environment of a branch holds its database's password: its role gets
/// `[postgres.NAME] preview_connection_limit` connections at once, a static environment's
/// none (`connection_limit`, unset).
#[test]
fn an_ad_hoc_environments_role_gets_the_preview_connection_limit() {
    let s = Sandbox::new();
    let config = std::fs::read_to_string(&s.config).expect("config");
    assert!(
        config
            .trim_end()
            .ends_with(&format!("url = \"{}\"", pg_url())),
        "[postgres.main] is the config's last table"
    );
    std::fs::write(
        &s.config,
        format!("{config}preview_connection_limit = 3\n[environments]\nmax_postgres_roles = 1\n"),
    )
    .expect("write the config");
    s.write("slipway.yaml", &with_previews())
        .commit("a database and a migration");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let dev = outputs(&s, "dev", "db")["user"]
        .as_str()
        .expect("user")
        .to_string();
    assert_eq!(connection_limit_of(&dev), -1, "a static environment's");
    s.ok(&[
        "env", "create", "scratch", "--ref", "main", "--like", "previews",
    ]);
    let scratch = outputs(&s, "scratch", "db")["user"]
        .as_str()
        .expect("user")
        .to_string();
    assert_eq!(connection_limit_of(&scratch), 3, "an ad-hoc environment's");
    // Each role holds its limit: how many an ad-hoc or generated environment may declare is
    // the operator's (`max_postgres_roles`), not the branch's. A static one has its own.
    s.write(
        "slipway.yaml",
        &format!("{}  app: {{ type: postgres.role }}\n", with_previews()),
    )
    .commit("a second role");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let refused = s.run(&[
        "env", "create", "other", "--ref", "main", "--like", "previews",
    ]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("max_postgres_roles"),
        "{}",
        s.report(&["env", "create"], &refused, "two roles are one too many")
    );
    let other = s.json(&["status", "--env", "other", "--output", "json"]);
    assert!(
        other["environments"][0]["resources"]
            .as_array()
            .is_none_or(|r| r.is_empty()),
        "nothing of it was made: {other}"
    );
    s.run(&["env", "destroy", "other", "--yes"]);
    s.ok(&["destroy", "--env", "scratch", "--yes"]);
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

/// `env create`, `env sleep --output json` and `env wake` show the environment's status once
/// done; with a database among its resources, its look (a connection of the synchronous
/// client, which runs a runtime of its own) panicked inside the command's runtime.
#[test]
fn env_commands_show_the_status_of_an_environment_with_a_database() {
    let s = Sandbox::new();
    s.write("slipway.yaml", &with_previews())
        .commit("a database and a migration");
    let created = s.ok(&[
        "env", "create", "scratch", "--ref", "main", "--like", "previews",
    ]);
    let shown = String::from_utf8_lossy(&created.stdout);
    assert!(shown.contains("scratch"), "its status is shown: {shown}");
    let slept = s.json(&["env", "sleep", "scratch", "--output", "json"]);
    assert_eq!(slept["environments"][0]["name"], "scratch", "{slept}");
    s.ok(&["env", "wake", "scratch"]);
    s.ok(&["destroy", "--env", "scratch", "--yes"]);
}

/// An environment's database and its `postgres.role` are deleted side by side at its destroy:
/// the role's drop, which revokes what the database granted it, met the database's drop on
/// the same catalog row, and the server failed it (`tuple concurrently deleted`), leaving a
/// destroy to run again.
#[test]
fn an_environment_of_a_database_and_a_role_is_destroyed_in_one_go() {
    let s = Sandbox::new();
    s.write(
        "slipway.yaml",
        &format!("{STACK}  app: {{ type: postgres.role }}\n"),
    )
    .commit("a database and a role");
    for round in 0..6 {
        s.ok(&["apply", "--env", "qa", "--yes"]);
        let out = s.run(&["destroy", "--env", "qa", "--yes"]);
        assert!(
            out.status.success(),
            "round {round}: {}",
            s.report(&["destroy"], &out, "destroyed in one go")
        );
    }
}
