//! Secrets in Git, end to end: `slipway secret keygen/set/list`, decryption at apply, and the
//! redaction test: every value a secret or a generated password takes is searched for in every
//! channel Slipway speaks through, and found in none.

mod util;

use std::io::Write;

use util::{Sandbox, http_get, start_serve, text, wait_for};

/// Every file under `dir`, as bytes, except where secrets are meant to be: `file` resources'
/// data, and the supervisors' private spec files (mode 0600: the environment a process is
/// started with, which its supervisor needs to restart it).
fn home_bytes(dir: &std::path::Path, out: &mut Vec<(String, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.to_string_lossy().to_string();
        if path.is_dir() {
            if name.ends_with("/data") {
                continue;
            }
            home_bytes(&path, out);
        } else if !name.ends_with(".spec.json") && !is_state_file(&path) {
            out.push((name, std::fs::read(&path).unwrap_or_default()));
        }
    }
}

/// A supervisor's state file (`envs/E/run/R.json`), which carries its spec, the child's
/// environment with its secrets.
fn is_state_file(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
        && path
            .parent()
            .and_then(|dir| dir.file_name())
            .is_some_and(|dir| dir == "run")
}

/// `slipway secret keygen` in `s`: the engine's age recipient it prints.
fn keygen(s: &Sandbox) -> String {
    let keygen = s.ok(&["secret", "keygen"]);
    let recipient = String::from_utf8_lossy(&keygen.stdout).trim().to_string();
    assert!(recipient.starts_with("age1"), "{}", text(&keygen));
    recipient
}

/// A branch's checkout holding `slipway.secrets.yaml.tmp`, a symlink to a file of the person
/// who sets a secret there: the file is left alone (it was overwritten with the secrets'
/// YAML), and the secret is set.
#[test]
fn setting_a_secret_writes_through_no_symlink_the_checkout_holds() {
    let s = Sandbox::new();
    let recipient = keygen(&s);
    s.write(
        "slipway.yaml",
        &format!(
            "version: 1\nstack: vault\nsecrets: {{ recipients: [{recipient}] }}\n\
             environments: {{ dev: {{ track: main }} }}\nresources: {{}}\n"
        ),
    );
    let precious = s.dir.path().join("id_ed25519");
    std::fs::write(&precious, "the person's own key").expect("written");
    std::os::unix::fs::symlink(&precious, s.repo.join("slipway.secrets.yaml.tmp"))
        .expect("a symlink");
    s.commit("a stack, and a trap");
    s.set_secret("api_token", None, "s3cret");
    assert_eq!(
        std::fs::read_to_string(&precious).expect("still there"),
        "the person's own key"
    );
    let file = std::fs::read_to_string(s.repo.join("slipway.secrets.yaml")).expect("written");
    assert!(
        file.contains("api_token") && !file.contains("s3cret"),
        "{file}"
    );
}

#[test]
fn secrets_are_set_listed_decrypted_at_apply_and_never_shown() {
    let s = Sandbox::new();
    let recipient = keygen(&s);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let token = format!("TOPSECRET-default-{stamp}");
    let prod_token = format!("TOPSECRET-prod-{stamp}");

    s.write(
        "slipway.yaml",
        &format!(
            r#"version: 1
stack: vault
secrets: {{ recipients: [{recipient}] }}
environments:
  dev: {{ track: main }}
  prod: {{ track: main }}
resources:
  db: {{ type: postgres.database }}
  secret_file: {{ type: file, path: pw.txt, content: "${{resources.db.password}}" }}
  web:
    type: process
    command: ["python3", "-c", "import http.server as h, os; print('token', os.environ['TOKEN'], 'db', os.environ['DATABASE_URL'], 'reversed', os.environ['TOKEN'][::-1], os.environ['DATABASE_URL'][::-1], flush=True); h.test(h.SimpleHTTPRequestHandler, port=int(os.environ['PORT']), bind='127.0.0.1')"]
    ports: [http]
    env: {{ TOKEN: "${{secrets.api_token}}", DATABASE_URL: "${{resources.db.url}}", PORT: "${{ports.http}}" }}
    expose: http
    health: {{ tcp: http }}
  leaky:
    type: job
    command: ["sh", "-c", "echo \"leaking $TOKEN and $DATABASE_URL\"; exit 3"]
    env: {{ TOKEN: "${{secrets.api_token}}", DATABASE_URL: "${{resources.db.url}}" }}
"#
        ),
    );
    // Validation names the secret that is missing, before any is set.
    s.commit("a stack that needs a secret");
    let invalid = s.run(&["validate"]);
    assert!(
        text(&invalid).contains("secret `api_token` is not set"),
        "{}",
        text(&invalid)
    );
    s.set_secret("api_token", None, &token);
    s.set_secret("api_token", Some("prod"), &prod_token);
    let file = std::fs::read_to_string(s.repo.join("slipway.secrets.yaml")).expect("written");
    assert!(file.contains("BEGIN AGE ENCRYPTED FILE") && !file.contains("TOPSECRET"));
    let listed = s.json(&["secret", "list", "--output", "json"]);
    assert_eq!(listed["secrets"][0]["name"], "api_token");
    assert_eq!(listed["secrets"][0]["default"], true);
    assert_eq!(listed["secrets"][0]["environments"][0], "prod");
    assert!(!listed.to_string().contains("TOPSECRET"));
    s.commit("secrets");
    s.ok(&["validate"]);

    // Apply: `leaky` fails on purpose, printing both secrets; everything else runs.
    let mut seen = Vec::new();
    let apply = s.expect_code(&["apply", "--env", "dev", "--yes"], 1);
    seen.push(("apply dev".to_string(), text(&apply)));
    let apply_prod = s.expect_code(&["apply", "--env", "prod", "--yes"], 1);
    seen.push(("apply prod".to_string(), text(&apply_prod)));
    // The process got the decrypted values (each environment its own).
    let password = std::fs::read_to_string(s.home.join("envs/dev/data/pw.txt"))
        .expect("the file resource holds the generated password");
    assert!(password.len() >= 16, "{password}");
    let log = wait_for(
        "the web process logs its environment",
        std::time::Duration::from_secs(20),
        || {
            let log = std::fs::read_to_string(s.home.join("envs/dev/logs/web.log")).ok()?;
            log.contains("token").then_some(log)
        },
    );
    let reversed = |s: &str| s.chars().rev().collect::<String>();
    assert!(
        log.contains(&reversed(&token)) && log.contains(&reversed(&password)),
        "the program itself received the values: {log}"
    );
    assert!(
        log.contains("token <redacted> db <redacted>") && !log.contains(&token),
        "what it printed of them is redacted on its way to the log file: {log}"
    );
    let prod_log = wait_for(
        "prod's web logs",
        std::time::Duration::from_secs(20),
        || {
            let log = std::fs::read_to_string(s.home.join("envs/prod/logs/web.log")).ok()?;
            log.contains("token").then_some(log)
        },
    );
    assert!(
        prod_log.contains(&reversed(&prod_token)) && !prod_log.contains(&reversed(&token)),
        "prod gets its override: {prod_log}"
    );
    let prod_password =
        std::fs::read_to_string(s.home.join("envs/prod/data/pw.txt")).expect("prod's password");

    for args in [
        vec!["plan", "--env", "dev"],
        vec!["plan", "--env", "dev", "--output", "json"],
        vec!["render", "--env", "dev"],
        vec!["status", "--output", "json"],
        vec!["status"],
        vec!["history", "--env", "dev", "--output", "json"],
        vec!["logs", "--env", "dev"],
        vec!["logs", "--env", "prod"],
        vec!["secret", "list"],
    ] {
        let out = s.run(&args);
        seen.push((args.join(" "), text(&out)));
    }
    let logs = &seen
        .iter()
        .find(|(c, _)| c == "logs --env dev")
        .expect("logs")
        .1;
    assert!(
        logs.contains("token <redacted>"),
        "slipway logs hides what the program printed: {logs}"
    );
    let failed = &seen[0].1;
    assert!(
        failed.contains("leaking <redacted>"),
        "the failed job's log tail is shown, redacted: {failed}"
    );

    // The API and its events, through a running controller.
    let server = start_serve(&s);
    let port = server.port();
    let token_out = s.ok(&["token", "create", "--role", "viewer"]);
    let api_token = String::from_utf8_lossy(&token_out.stdout)
        .trim()
        .to_string();
    for path in [
        "/api/v1/environments",
        "/api/v1/environments/dev",
        "/api/v1/environments/dev/deployments",
        "/api/v1/environments/dev/plan",
        "/api/v1/audit",
    ] {
        let body = authed_get(port, path, &api_token).unwrap_or_default();
        seen.push((format!("GET {path}"), body));
    }
    // A process's and a job's log through the API: the tail, and followed (server-sent
    // events, read until the client's timeout), redacted as `slipway logs` shows them.
    let web_log = authed_get(
        port,
        "/api/v1/environments/dev/logs/web?tail=50",
        &api_token,
    )
    .unwrap_or_default();
    assert!(
        web_log.starts_with("HTTP/1.0 200") && web_log.contains("token <redacted>"),
        "the API serves web's log, redacted: {web_log}"
    );
    seen.push(("GET logs of web".into(), web_log));
    let followed = authed_get(
        port,
        "/api/v1/environments/dev/logs/leaky/follow",
        &api_token,
    )
    .unwrap_or_default();
    assert!(
        followed.contains("text/event-stream") && followed.contains("leaking <redacted>"),
        "the API streams the failed job's log, redacted: {followed}"
    );
    seen.push(("GET logs of leaky, followed".into(), followed));
    let events = authed_get(port, "/api/v1/events?after=0", &api_token).unwrap_or_default();
    seen.push(("events".into(), events));
    let _ = http_get(port, "/metrics").map(|m| seen.push(("metrics".into(), m)));
    drop(server);

    let mut files = Vec::new();
    home_bytes(&s.home, &mut files);
    assert!(files.iter().any(|(n, _)| n.ends_with("state.db")));

    let secrets = [&token, &prod_token, &password, &prod_password];
    for secret in secrets {
        for (channel, out) in &seen {
            assert!(
                !out.contains(secret.as_str()),
                "a secret appears in `{channel}`:\n{out}"
            );
        }
        for (name, bytes) in &files {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret appears in {name}"
            );
        }
    }
    // The supervisor's spec, which must hold the environment, is private to its owner: the
    // state file carries it (a spec sent with its start has no file of its own).
    use std::os::unix::fs::PermissionsExt;
    let state_file = s.home.join("envs/dev/run/web.json");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).expect("state")).expect("JSON");
    assert!(
        state["spec"]["env"].is_object(),
        "the state file carries the spec: {state}"
    );
    assert!(
        !s.home.join("envs/dev/run/web.spec.json").exists(),
        "and no spec file is written"
    );
    let mode = std::fs::metadata(&state_file)
        .expect("state")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the state file is 0600");
}

#[test]
fn a_missing_or_wrong_key_is_a_clear_error_naming_the_secret() {
    let s = Sandbox::new();
    let recipient = keygen(&s);
    s.write(
        "slipway.yaml",
        &format!(
            "version: 1\nstack: keys\nsecrets: {{ recipients: [{recipient}] }}\nenvironments:\n  dev: {{ track: main }}\nresources:\n  f: {{ type: file, path: f.txt, content: \"${{secrets.db_password}}\" }}\n"
        ),
    );
    s.set_secret("db_password", None, "hunter2-but-longer");
    s.commit("a secret");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    assert_eq!(
        std::fs::read_to_string(s.home.join("envs/dev/data/f.txt")).expect("written"),
        "hunter2-but-longer"
    );

    // Another engine (another home, its own key) was never a recipient.
    let other_key = s.dir.path().join("other.key");
    let mut config = std::fs::read_to_string(&s.config).expect("config");
    config.push_str(&format!(
        "[secrets]\nidentity_file = \"{}\"\n",
        other_key.display()
    ));
    std::fs::write(&s.config, &config).expect("config");
    let out = s.expect_code(&["plan", "--env", "dev"], 1);
    let err = text(&out);
    assert!(
        err.contains("db_password") && err.contains("secret keygen"),
        "no identity at all: {err}"
    );
    s.ok(&["secret", "keygen"]);
    let out = s.expect_code(&["apply", "--env", "dev", "--yes"], 1);
    let err = text(&out);
    assert!(
        err.contains("secret `db_password` cannot be decrypted") && err.contains("recipients"),
        "a key that is not a recipient: {err}"
    );
    assert!(!err.contains("hunter2"));
    assert!(!err.contains("panicked"), "an error, not a crash: {err}");
}

fn authed_get(port: u16, path: &str, token: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    Some(buf)
}
