//! The web UI in a real headless Chromium, against a real `slipway serve` on a real
//! repository: log in with a token, watch environments change live from the event stream,
//! create one from the form, roll it back, see drift in its plan, sync it, destroy it; a
//! viewer sees no action; a forged change carrying the session cookie is refused. With two
//! replicas on one PostgreSQL state, each row names the replica holding it and the Replicas
//! page lists them, one going silent when killed; one controller on SQLite shows none of it.
//! With 2,000 environments the dashboard's table holds only the rows in view, the right ones
//! wherever it is scrolled, filtered or moved through with Tab, and HTML in their messages
//! and owners stays text. A sleeping environment shows a chip, and its page wakes it and puts it
//! to sleep. A change a policy holds shows each policy's verdict under the plan, what blocks
//! first, with the resource and where it is declared.
//!
//! With `SLIPWAY_SCREENSHOTS=1` the tests also write `docs/screenshots/*.png` (tracked files:
//! normal runs leave them alone).

mod util;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use util::browser::{Browser, BrowserOptions, ENTER, TAB};
use util::*;

/// Deadline for anything that waits on a deployment (a process must start and answer).
const DEPLOY: Duration = Duration::from_secs(90);
/// Deadline for what only waits on the page.
const PAGE: Duration = Duration::from_secs(20);

/// A name the test knows to be valid.
fn env(name: &str) -> slipway_core::EnvName {
    slipway_core::EnvName::parse(name).expect("the test's environment names are DNS labels")
}

fn stack(version: u32) -> String {
    // The variables follow the environments here; their order in the file means nothing.
    slipway_testkit::stack::main_and_previews(
        "shop",
        &format!(
            r#"variables: {{ greeting: hello }}
resources:
  config: {{ type: file, path: etc/app.toml, content: "greeting = \"${{vars.greeting}}\"\nversion = {version}\n" }}
  web:
    type: process
    command: ["python3", "-m", "http.server", "${{ports.http}}", "--bind", "127.0.0.1"]
    ports: [http]
    health: {{ http: / }}
    expose: http
"#
        ),
    )
}

/// A repository with `main` and a `feature/login` branch, a controller that polls it often
/// and never repairs drift on its own (so the test can see drift in a plan). Returns the first
/// commit of `main`.
fn setup() -> (Sandbox, String) {
    let s = Sandbox::new();
    s.write("slipway.yaml", &stack(1));
    let first = s.commit("version 1");
    git(&s.repo, &["checkout", "-q", "-b", "feature/login"]);
    s.write("slipway.yaml", &stack(100));
    s.commit("login page");
    git(&s.repo, &["checkout", "-q", "main"]);
    let config = std::fs::read_to_string(&s.config).expect("read the engine config")
        + "[repo]\npoll_interval = \"300ms\"\n[controller]\ndrift_interval = \"1h\"\n";
    std::fs::write(&s.config, config).expect("write the engine config");
    (s, first)
}

fn token(s: &Sandbox, role: &str, name: &str) -> String {
    let out = s.ok(&["token", "create", "--role", role, "--name", name]);
    String::from_utf8(out.stdout)
        .expect("a UTF-8 token")
        .trim()
        .to_string()
}

fn screenshots() -> Option<PathBuf> {
    (std::env::var("SLIPWAY_SCREENSHOTS").as_deref() == Ok("1"))
        .then(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots"))
}

/// `GET path` on the API with a bearer token: (status, JSON body).
fn api(server: &Server, token: &str, path: &str) -> (u16, Value) {
    util::api_request(&server.addr, "GET", path, token, None)
}

/// A request as a forger would send it: the stolen session cookie, a form body, and no
/// (or a wrong) CSRF header. Returns the status and body.
fn forged_post(server: &Server, path: &str, cookie: &str, csrf: Option<&str>) -> (u16, String) {
    let csrf = csrf
        .map(|c| format!("X-Slipway-CSRF: {c}\r\n"))
        .unwrap_or_default();
    let body = "deployment=1";
    raw_call(
        server,
        &format!(
            "POST {path} HTTP/1.0\r\nHost: {}\r\nCookie: slipway_session={cookie}\r\n{csrf}\
             Origin: http://evil.invalid\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n\r\n{body}",
            server.addr,
            body.len()
        ),
    )
}

/// Sends `request` as it is; the answer's status and the whole answer.
fn raw_call(server: &Server, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&server.addr).expect("connect to the API");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a timeout");
    stream
        .write_all(request.as_bytes())
        .expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// The header of the login page: the brand alone, no navigation, no session's buttons.
fn assert_login_page_has_no_session_controls(browser: &Browser) {
    assert_eq!(
        browser.js(
            "return [...document.querySelectorAll('header.top a, header.top button')] \
             .filter((e) => e.offsetParent !== null && !e.classList.contains('brand')) \
             .map((e) => e.textContent.trim());",
            vec![],
        ),
        json!([]),
        "the login page shows no navigation and no session's buttons"
    );
}

fn log_in(browser: &Browser, token: &str, name: &str) {
    browser.goto("/");
    browser.wait_until_exists("the login form is shown", PAGE, "#login #token");
    assert_login_page_has_no_session_controls(browser);
    assert_eq!(
        browser.attr("#token", "type").as_deref(),
        Some("password"),
        "the token field hides what is typed"
    );
    browser.fill("#token", token);
    browser.click("#login-submit");
    browser.wait_for(&format!("{name} is logged in"), PAGE, |b| {
        (b.text("#who-name").as_deref() == Some(name)).then_some(())
    });
    browser.wait_for("the event stream is live", PAGE, |b| {
        (b.attr("#live", "data-state").as_deref() == Some("live")).then_some(())
    });
}

/// The state the row of `env` shows: (sync, health, commit).
fn row(browser: &Browser, env: &str) -> Option<(String, String, String)> {
    let found = browser.js(
        "const tr = document.querySelector(`tr[data-env=\"${arguments[0]}\"]`); \
         if (!tr) return null; \
         const code = tr.querySelector('[data-col=commit] code'); \
         return [tr.dataset.sync, tr.dataset.health, code ? code.title : ''];",
        vec![json!(env)],
    );
    let cells = found.as_array()?;
    let text = |i: usize| {
        cells
            .get(i)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    Some((text(0), text(1), text(2)))
}

fn wait_healthy(browser: &Browser, env: &str, commit: Option<&str>) {
    browser.wait_for(
        &format!(
            "the row of {env} shows it synced and healthy{}",
            commit.map(|c| format!(" at {c}")).unwrap_or_default()
        ),
        DEPLOY,
        |b| {
            let (sync, health, running) = row(b, env)?;
            (sync == "synced" && health == "healthy" && commit.is_none_or(|c| running == c))
                .then_some(())
        },
    );
}

#[test]
fn an_admin_creates_watches_rolls_back_and_destroys_an_environment_without_reloading() {
    let (s, v1) = setup();
    let admin = token(&s, "admin", "alice");
    let server = start_serve(&s);
    let browser = Browser::start(
        &s.dir.path().join("browser"),
        &format!("http://{}", server.addr),
    );

    log_in(&browser, &admin, "alice");
    assert_eq!(
        browser.text("#who-role").as_deref(),
        Some("admin"),
        "the page shows the role whoami names"
    );
    assert!(
        browser.cookie("slipway_session").is_some(),
        "the session is a cookie"
    );
    assert_eq!(
        browser.js("return document.cookie;", vec![]),
        json!(""),
        "the session cookie is HttpOnly: scripts cannot read it"
    );
    assert!(
        browser
            .js("return document.documentElement.outerHTML;", vec![])
            .as_str()
            .is_some_and(|html| !html.contains(&admin)),
        "the page keeps no copy of the token"
    );

    // Every environment at a glance: the static one and the branch's.
    wait_healthy(&browser, "main", Some(&v1));
    wait_healthy(&browser, "br-feature-login", None);
    assert_eq!(browser.title(), "Environments — Slipway");
    // From here on, a reload would reset this marker: the page must update by itself.
    browser.js("window.__sameDocument = 'yes';", vec![]);

    // Create an ad-hoc environment from the form, and watch it become healthy.
    browser.click("#create-open");
    browser.wait_until_exists("the create form opens", PAGE, "dialog[open] #create-name");
    // A name that is taken: the form stays open and says why.
    browser.fill("#create-name", "main");
    browser.fill("#create-ref", "main");
    browser.fill("#create-like", "previews");
    browser.fill("#create-ttl", "8h");
    browser.click("#dialog-submit");
    browser.wait_for("the form says the name is taken", PAGE, |b| {
        b.text("#dialog-error")
            .filter(|t| t.contains("already exists"))
            .map(|_| ())
    });
    browser.fill("#create-name", "demo");
    browser.click("#dialog-submit");
    browser.wait_until_exists("the new environment has a row", PAGE, "tr[data-env=demo]");
    wait_healthy(&browser, "demo", Some(&v1));
    assert!(
        browser
            .text("tr[data-env=demo] [data-col=owner]")
            .is_some_and(|o| o.contains("alice")),
        "the creator owns it"
    );
    assert!(
        browser
            .text("tr[data-env=demo] [data-col=ttl]")
            .is_some_and(|t| t.contains("left")),
        "its TTL counts down"
    );
    // main, static and made by the controller, has none of these: each says so, rather than
    // leaving a label without a value on a phone's card.
    for (column, meaning) in [
        ("owner", "no owner"),
        ("ttl", "does not expire"),
        ("lock", "not locked"),
    ] {
        let css = format!("tr[data-env=main] [data-col={column}] span");
        assert_eq!(
            (browser.text(&css), browser.attr(&css, "title")),
            (Some("—".to_owned()), Some(meaning.to_owned())),
            "main's {column}"
        );
    }
    assert!(
        browser
            .attr("tr[data-env=demo] [data-col=url] a", "href")
            .is_some_and(|u| u.starts_with("http://demo.shop.localhost:")),
        "its preview URL is a link"
    );
    browser.wait_for("the toast reports the deployment", PAGE, |b| {
        b.exists("#toasts .toast[data-state=ok]").then_some(())
    });
    if let Some(dir) = screenshots() {
        browser.screenshot(&dir.join("dashboard.png"));
        browser.resize(390, 844);
        browser.screenshot(&dir.join("dashboard-phone.png"));
        browser.resize(1440, 900);
    }

    // A push to main reaches demo (it follows main), and the row follows, live.
    s.write("slipway.yaml", &stack(2));
    let v2 = s.commit("version 2");
    wait_healthy(&browser, "demo", Some(&v2));

    let (edge, placeholder) = search_field_contrast(&browser);
    assert!(edge >= 3.0, "a field's edge stands out: {edge:.2}:1");
    assert!(
        placeholder >= 4.5,
        "a placeholder is readable: {placeholder:.2}:1"
    );

    // Filters: by state, by kind, by text.
    // main may still be deploying version 2: the filter follows it live.
    browser.click("#counts [data-count='health:healthy']");
    browser.wait_for("the healthy filter shows all three", DEPLOY, |b| {
        (b.count("#environments tr[data-env]") == 3
            && b.attr("#counts [data-count='health:healthy']", "aria-pressed")
                .as_deref()
                == Some("true"))
        .then_some(())
    });
    assert_eq!(
        browser.js(
            "return document.activeElement.matches(\"#counts [data-count='health:healthy']\");",
            vec![],
        ),
        json!(true),
        "the chip pressed keeps the keyboard focus, drawn again"
    );
    browser.click("#counts [data-count='health:healthy']");
    browser.fill("#filter-q", "feature");
    browser.wait_for("the search keeps only the branch's", PAGE, |b| {
        (b.count("#environments tr[data-env]") == 1 && b.exists("tr[data-env=br-feature-login]"))
            .then_some(())
    });
    browser.fill("#filter-q", "");
    browser.js(
        "const s = document.querySelector('#filter-kind'); s.value = 'adhoc'; s.dispatchEvent(new Event('change'));",
        vec![],
    );
    browser.wait_for("the kind filter keeps only demo", PAGE, |b| {
        (b.count("#environments tr[data-env]") == 1 && b.exists("tr[data-env=demo]")).then_some(())
    });

    // Its page: resources, plan, deployments and events.
    browser.click("tr[data-env=demo] a.env-link");
    browser.wait_for("the environment page lists two deployments", DEPLOY, |b| {
        (b.count("#deployments tr[data-deployment]") >= 2).then_some(())
    });
    assert_eq!(browser.title(), "demo — Slipway");
    assert_eq!(
        browser.js(
            "return document.activeElement.matches('#env-header h1');",
            vec![]
        ),
        json!(true),
        "the page's heading has the focus, once the environment is drawn too"
    );
    assert!(
        browser.exists("#resources tr[data-resource=web]"),
        "web is listed"
    );
    browser.wait_for("the plan says there is nothing to do", DEPLOY, |b| {
        b.text("#plan-summary")
            .filter(|t| t.contains("no changes"))
            .map(|_| ())
    });
    browser.wait_for("the page lists its events", PAGE, |b| {
        b.exists("#env-events li[data-kind='apply.succeeded']")
            .then_some(())
    });
    assert!(
        browser
            .text("#last-change")
            .is_some_and(|t| t.contains("succeeded")),
        "the page says when it last changed"
    );
    // web's log: its last lines, then what it writes while the dialog is open.
    browser.click("#resources tr[data-resource=web] button[data-log=web]");
    browser.wait_for("the log dialog lists web's lines", PAGE, |b| {
        b.text("#log-lines")
            .filter(|t| t.contains("process started") && t.contains("\"GET / HTTP"))
            .map(|_| ())
    });
    assert!(
        !browser.exists("#resources tr[data-resource=config] button[data-log]"),
        "a file has no log"
    );
    let preview = browser
        .attr("#env-header a[href^='http://demo.shop.localhost']", "href")
        .expect("demo's preview link");
    let port: u16 = preview
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the preview URL's port");
    let marker = format!("/live-line-{}", std::process::id());
    // demo is ad-hoc, so its preview is private: a Slipway token lets the request in.
    {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(
            stream,
            "GET {marker} HTTP/1.0\r\nHost: demo.shop.localhost\r\nAuthorization: Bearer {admin}\r\n\r\n"
        )
        .expect("send");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
    }
    browser.wait_for("a request made now shows in the open log", PAGE, |b| {
        b.text("#log-lines")
            .filter(|t| t.contains(&marker))
            .map(|_| ())
    });
    assert_accessible(&browser, "the log dialog");
    browser.click("#dialog-cancel");

    // Roll back to the deployment of version 1.
    let first = browser
        .js(
            "const rows = [...document.querySelectorAll('#deployments tr[data-deployment]')]; \
             const row = rows.find((r) => r.querySelector('[data-col=commit] code').title === arguments[0]); \
             return row ? row.dataset.deployment : null;",
            vec![json!(v1)],
        )
        .as_str()
        .expect("a deployment of version 1 is listed")
        .to_string();
    browser.click(&format!(
        "button[data-action=rollback][data-deployment='{first}']"
    ));
    browser.wait_until_exists(
        "the rollback asks for confirmation",
        PAGE,
        "dialog[open] #dialog-submit",
    );
    browser.click("#dialog-submit");
    browser.wait_for("demo is rolled back to version 1 and pinned", DEPLOY, |b| {
        let header = b.text("#env-header")?;
        let runs = b.js(
            "const c = [...document.querySelectorAll('#env-header dt')].find((d) => d.textContent === 'Runs'); \
             return c ? c.nextElementSibling.querySelector('code')?.title ?? null : null;",
            vec![],
        );
        (header.contains("pinned") && header.contains("healthy") && runs == json!(v1)).then_some(())
    });
    let (_, status) = api(&server, &admin, "/api/v1/environments/demo");
    assert_eq!(status["pinned"], true, "the API agrees: {status:#}");
    assert_eq!(status["commit"], json!(v1), "the API agrees: {status:#}");

    // Drift shows in the plan as a readable diff; Sync repairs it.
    let path = status["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "config"))
        .and_then(|r| r["outputs"]["path"].as_str())
        .expect("the config file's path is an output")
        .to_string();
    let _ = std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644));
    std::fs::write(&path, "edited by hand\n").expect("edit the config file");
    browser.click("#plan-refresh");
    browser.wait_for("the plan shows the drifted file", PAGE, |b| {
        b.text("#env-plan .diff")
            .filter(|t| t.contains("config"))
            .map(|_| ())
    });
    if let Some(dir) = screenshots() {
        browser.js(
            "document.querySelectorAll('#toasts .toast').forEach((t) => t.remove()); window.scrollTo(0, 0);",
            vec![],
        );
        // Tall enough to show the deployments and events too.
        browser.resize(1440, 1500);
        browser.screenshot(&dir.join("environment.png"));
        browser.resize(1440, 900);
    }
    browser.click("#env-header button[data-action=sync]");
    browser.wait_for("the sync repairs the drift", DEPLOY, |b| {
        b.text("#plan-summary")
            .filter(|t| t.contains("no changes"))
            .map(|_| ())
    });
    assert_eq!(
        std::fs::read_to_string(&path).ok().as_deref(),
        Some("greeting = \"hello\"\nversion = 1\n"),
        "the file is back as version 1 wrote it"
    );
    // A sync with nothing left to do says so, instead of waiting for a deployment that
    // never comes.
    browser.js(
        "document.querySelectorAll('#toasts .toast').forEach((t) => t.remove());",
        vec![],
    );
    browser.js(
        "document.querySelector('#env-header button[data-action=sync]').focus();",
        vec![],
    );
    // A live update may re-render the header as the click lands, and the click is lost
    // with the old button: no toast within a few seconds means clicking again, as a person
    // would (a second sync of an environment with nothing to do is harmless).
    let deadline = Instant::now() + DEPLOY;
    loop {
        browser.click("#env-header button[data-action=sync]");
        let answered = Instant::now() + Duration::from_secs(5);
        while Instant::now() < answered && browser.text("#toasts").is_none_or(|t| t.is_empty()) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if browser.text("#toasts").is_some_and(|t| !t.is_empty()) || Instant::now() > deadline {
            break;
        }
    }
    browser.wait_for("the sync says demo is up to date", DEPLOY, |b| {
        b.text("#toasts")
            .filter(|t| t.contains("is up to date at") && !t.contains("waiting for the deployment"))
            .map(|_| ())
    });
    assert_eq!(
        browser.js(
            "return document.activeElement.matches('#env-header button[data-action=sync]');",
            vec![],
        ),
        json!(true),
        "Sync keeps the keyboard focus while it works and after"
    );

    // Extend its life; unpin it (it follows main again); pin it where it runs.
    let expires = |b: &Browser| {
        b.attr("#env-header [data-expires]", "datetime")
            .and_then(|t| humantime::parse_rfc3339(&t).ok())
    };
    let before = expires(&browser).expect("demo's expiry is shown");
    browser.click("#env-header button[data-action=extend]");
    browser.wait_until_exists("the extend form opens", PAGE, "dialog[open] #extend-by");
    browser.fill("#extend-by", "2h");
    browser.click("#dialog-submit");
    browser.wait_for("demo expires two hours later", PAGE, |b| {
        expires(b)
            .filter(|after| {
                after
                    .duration_since(before)
                    .is_ok_and(|d| d >= Duration::from_secs(7000))
            })
            .map(|_| ())
    });
    browser.click("#env-header button[data-action=unpin]");
    browser.wait_for("demo follows main again, at version 2", DEPLOY, |b| {
        let header = b.text("#env-header")?;
        let runs = b.js(
            "const c = [...document.querySelectorAll('#env-header dt')].find((d) => d.textContent === 'Runs'); \
             return c ? c.nextElementSibling.querySelector('code')?.title ?? null : null;",
            vec![],
        );
        (!header.contains("pinned") && header.contains("healthy") && runs == json!(v2))
            .then_some(())
    });
    // Roll back is offered to the other commits only: never to the one running (Pin is that).
    browser.wait_for("the deployments table has caught up", PAGE, |b| {
        b.exists("#deployments tr[data-deployment] [data-action=rollback]")
            .then_some(())
    });
    assert_eq!(
        browser.js(
            "return [...document.querySelectorAll('#deployments tr[data-deployment]')] \
             .filter((tr) => tr.querySelector('[data-action=rollback]') \
               && tr.querySelector('[data-col=commit] code').title === arguments[0]) \
             .map((tr) => tr.dataset.deployment);",
            vec![json!(v2)],
        ),
        json!([]),
        "no deployment of the running commit offers a roll back"
    );
    browser.click("#env-header button[data-action=pin]");
    browser.wait_until_exists("the pin form opens", PAGE, "dialog[open] #pin-commit");
    browser.click("#dialog-submit");
    browser.wait_for("demo is pinned where it runs", PAGE, |b| {
        b.text("#env-header")
            .filter(|h| h.contains("pinned"))
            .map(|_| ())
    });
    let (_, status) = api(&server, &admin, "/api/v1/environments/demo");
    assert_eq!(status["pinned"], true, "{status:#}");
    assert_eq!(status["commit"], json!(v2), "{status:#}");

    // A forged change made with the session cookie but without its CSRF token is refused,
    // from the page itself (same origin, the cookie attached) and from elsewhere.
    let statuses = browser.js_async(
        "const url = '/api/v1/environments/demo/sync'; \
         const bare = await fetch(url, {method: 'POST', credentials: 'same-origin'}); \
         const wrong = await fetch(url, {method: 'POST', credentials: 'same-origin', headers: {'X-Slipway-CSRF': 'forged'}}); \
         return [bare.status, wrong.status];",
    );
    assert_eq!(
        statuses,
        json!([403, 403]),
        "cookie calls without the right CSRF token are refused"
    );
    let cookie = browser
        .cookie("slipway_session")
        .expect("the session cookie");
    for csrf in [None, Some("forged")] {
        let (status, answer) =
            forged_post(&server, "/api/v1/environments/demo/rollback", &cookie, csrf);
        assert_eq!(status, 403, "a forged form post is refused: {answer}");
    }

    // Destroy it, confirmed.
    browser.click("#env-header button[data-action=destroy]");
    browser.wait_until_exists(
        "the destroy asks for confirmation",
        PAGE,
        "dialog[open] #dialog-submit",
    );
    browser.click("#dialog-submit");
    browser.wait_for("demo is gone from the dashboard", DEPLOY, |b| {
        (b.exists("#environments") && !b.exists("tr[data-env=demo]")).then_some(())
    });
    assert_eq!(
        browser.js(
            "return document.querySelector('#filter-kind').value;",
            vec![]
        ),
        json!("adhoc"),
        "back on the dashboard, the filters it had are kept"
    );
    let (status, _) = api(&server, &admin, "/api/v1/environments/demo");
    assert_eq!(status, 404, "the API agrees demo is destroyed");
    assert_eq!(
        browser.js("return window.__sameDocument || null;", vec![]),
        json!("yes"),
        "all of it happened without reloading the page"
    );
    assert!(
        browser
            .attr("#live", "data-events")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n > 0),
        "the page received server-sent events"
    );
}

/// The contrast ratios (WCAG 2.1) of the dashboard's search field: its border against the
/// page and against its own background (the smaller), and its placeholder's text against
/// its background.
fn search_field_contrast(browser: &Browser) -> (f64, f64) {
    let ratios = browser.js(
        "const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
         const lum = (c) => { const [r, g, b] = rgb(c).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
         const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
         const field = document.querySelector('#filter-q');
         const own = getComputedStyle(field);
         const page = getComputedStyle(document.body).backgroundColor;
         const edge = Math.min(ratio(own.borderTopColor, own.backgroundColor), ratio(own.borderTopColor, page));
         return [edge, ratio(getComputedStyle(field, '::placeholder').color, own.backgroundColor)];",
        vec![],
    );
    (
        ratios[0].as_f64().expect("a ratio"),
        ratios[1].as_f64().expect("a ratio"),
    )
}

#[test]
fn a_viewer_sees_everything_but_no_action_and_logging_out_ends_the_session() {
    let (s, _) = setup();
    let viewer = token(&s, "viewer", "victor");
    let server = start_serve(&s);
    // This one in a dark colour scheme: the page follows it.
    let browser = Browser::start_with(
        &s.dir.path().join("browser"),
        &format!("http://{}", server.addr),
        &BrowserOptions { dark: true },
    );

    log_in(&browser, &viewer, "victor");
    wait_healthy(&browser, "main", None);
    wait_healthy(&browser, "br-feature-login", None);
    let background = browser.js(
        "return getComputedStyle(document.body).backgroundColor;",
        vec![],
    );
    assert_eq!(
        background,
        json!("rgb(13, 17, 23)"),
        "with prefers-color-scheme: dark the page is dark"
    );
    let (edge, placeholder) = search_field_contrast(&browser);
    assert!(
        edge >= 3.0,
        "a field's edge stands out in the dark too: {edge:.2}:1"
    );
    assert!(
        placeholder >= 4.5,
        "a placeholder is readable in the dark too: {placeholder:.2}:1"
    );
    if let Some(dir) = screenshots() {
        browser.screenshot(&dir.join("dashboard-dark.png"));
    }
    assert_eq!(browser.text("#who-role").as_deref(), Some("viewer"));
    // One controller on SQLite: no replica anywhere on the page.
    browser.goto("/#/replicas");
    browser.wait_until_exists(
        "the replicas page, reached by its address, says there are none",
        PAGE,
        "#no-replicas",
    );
    browser.goto("/#/");
    wait_healthy(&browser, "main", None);
    assert!(
        !browser
            .text("#environments thead")
            .is_some_and(|t| t.to_lowercase().contains("replica")),
        "with a SQLite state the dashboard has no Replica column"
    );
    assert_eq!(
        browser.count("[data-col=replica]"),
        0,
        "with a SQLite state no row names a replica"
    );
    for hidden in ["#nav-replicas", "#served-by"] {
        assert_eq!(
            browser.js(
                "return getComputedStyle(document.querySelector(arguments[0])).display;",
                vec![json!(hidden)]
            ),
            json!("none"),
            "with a SQLite state {hidden} is not shown"
        );
    }
    assert!(!browser.exists("#create-open"), "a viewer cannot create");
    assert_eq!(
        browser.count("#environments button[data-action]"),
        0,
        "a viewer sees no action on the dashboard"
    );
    // Keyboard only: from the search field, Tab reaches main's link, and Enter opens it.
    browser.js("document.querySelector('#filter-q').focus();", vec![]);
    let mut tabs = 0;
    while browser.js(
        "return document.activeElement.matches('tr[data-env=main] a.env-link');",
        vec![],
    ) != json!(true)
    {
        tabs += 1;
        assert!(
            tabs <= 40,
            "Tab reaches main's link from the search field (stuck at `{}`)",
            browser.focused()
        );
        browser.press(TAB);
    }
    browser.press(ENTER);
    browser.wait_for("main's page lists its deployment", DEPLOY, |b| {
        b.exists("#deployments tr[data-deployment]").then_some(())
    });
    browser.wait_until_exists("main's plan is shown", DEPLOY, "#plan-summary");
    assert!(
        !browser.exists("#env-replica"),
        "with a SQLite state an environment's page names no replica"
    );
    assert_eq!(
        browser.count("main button[data-action]"),
        0,
        "a viewer sees no action on an environment's page"
    );
    // The pull request page: an open pull request, as the forge's webhook would have recorded
    // it, holding a lock on main.
    let store = slipway_state::Store::open(&s.home).expect("open the controller's store");
    store
        .upsert_pull_request(&slipway_state::PullRequestRecord {
            number: 7,
            title: "Faster checkout".into(),
            author: "octocat".into(),
            head_sha: "0123456789abcdef0123456789abcdef01234567".into(),
            head_ref: "feature/checkout".into(),
            base_ref: "main".into(),
            is_fork: false,
            state: "open".into(),
            preview_allowed: true,
            url: "https://forge.invalid/acme/shop/pull/7".into(),
            updated_at: slipway_state::now_ms(),
            stale_approvers: Vec::new(),
            labels: Vec::new(),
            head_seen_at: None,
        })
        .expect("record a pull request");
    store
        .lock_environment(&env("main"), 7, "octocat", slipway_state::now_ms())
        .expect("lock main to it");
    browser.click("#nav-pulls");
    browser.wait_until_exists(
        "the pull request is listed",
        PAGE,
        "#pull-requests tr[data-pr='7']",
    );
    assert_eq!(browser.title(), "Pull requests — Slipway");
    let row = browser
        .text("#pull-requests tr[data-pr='7']")
        .unwrap_or_default();
    for shown in [
        "#7",
        "Faster checkout",
        "octocat",
        "feature/checkout",
        "main",
        "No preview environment",
    ] {
        assert!(row.contains(shown), "the row shows {shown}: {row}");
    }
    assert!(
        browser.exists("#pull-requests tr[data-pr='7'] [data-col=locks] a[href='#/env/main']"),
        "the row links the environment it holds"
    );
    assert!(
        browser.exists("#lock-list tr[data-lock=main]"),
        "the locks table lists main"
    );

    // Even with the CSRF token, the server refuses what the role may not do.
    let refused = browser.js_async(
        "const who = await (await fetch('/api/v1/whoami')).json(); \
         const r = await fetch('/api/v1/environments/main/sync', {method: 'POST', headers: {'X-Slipway-CSRF': who.csrf}}); \
         return r.status;",
    );
    assert_eq!(refused, json!(403), "a viewer's session changes nothing");

    // Logging out clears the cookie and ends the session on the server.
    let cookie = browser
        .cookie("slipway_session")
        .expect("the session cookie");
    browser.click("#logout");
    browser.wait_until_exists("the login form is back", PAGE, "#login #token");
    assert_login_page_has_no_session_controls(&browser);
    assert!(
        browser
            .cookie("slipway_session")
            .is_none_or(|c| c.is_empty()),
        "the cookie is cleared"
    );
    let (status, _) = forged_post(&server, "/api/v1/session", &cookie, None);
    assert_eq!(status, 401, "the old session id is worth nothing");
}

/// `(environment, holder)` of every unexpired lease of the state.
fn lease_holders(db: &slipway_testkit::pg::TestDatabase) -> Vec<(String, String)> {
    db.connect()
        .query(
            "SELECT environment, holder FROM leases \
             WHERE expires_at > EXTRACT(EPOCH FROM clock_timestamp()) * 1000 ORDER BY environment",
            &[],
        )
        .expect("read the leases")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The replica each row of the dashboard names, by environment.
fn shown_holders(browser: &Browser) -> Vec<(String, String)> {
    let found = browser.js(
        "return [...document.querySelectorAll('#environments tr[data-env]')].map((tr) => { \
           const cell = tr.querySelector('[data-col=replica]'); \
           return [tr.dataset.env, cell ? cell.innerText.trim() : '']; });",
        vec![],
    );
    serde_json::from_value(found).unwrap_or_default()
}

#[test]
fn replicas_sharing_a_postgresql_state_are_listed_and_each_row_names_its_holder() {
    // Four floating environments (a database each, on the shared server): rendezvous hashing
    // gives web and api to r1, docs and shop to r2.
    const ENVS: [&str; 4] = ["api", "docs", "shop", "web"];
    let database = slipway_testkit::pg::TestDatabase::create("slipway_ui_replicas");
    let s = Sandbox::new();
    s.write(
        "slipway.yaml",
        "version: 1\nstack: split\nenvironments: { web: { track: main }, api: { track: main }, \
         docs: { track: main }, shop: { track: main } }\nresources:\n  db: { type: postgres.database }\n",
    );
    s.commit("four environments");
    let shared = std::fs::read_to_string(&s.config).expect("read the engine config")
        + &format!("[state]\nurl = \"{}\"\n", database.url());
    std::fs::write(&s.config, &shared).expect("write the engine config");
    // The token is made in the state before any replica runs, in r1's home (which makes the
    // state's key); r2 gets a copy of the key, as an operator would.
    let viewer = token(&s, "viewer", "vera");
    let start = |name: &str, home: &std::path::Path| {
        std::fs::create_dir_all(home).expect("make the replica's home");
        let file = s.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "{shared}[controller]\nreplica = \"{name}\"\nlease = \"1s\"\n\
                 [repo]\npoll_interval = \"300ms\"\n"
            ),
        )
        .expect("write the replica's config");
        let url = format!("file://{}", s.repo.display());
        let mut command = s.cmd(&["serve", "--repo", &url, "--listen", "127.0.0.1:0"]);
        command
            .env("SLIPWAY_HOME", home)
            .env("SLIPWAY_CONFIG", &file);
        serve_from(command, DEPLOY).0
    };
    let r1 = start("r1", &s.home);
    let home2 = s.dir.path().join("home-r2");
    std::fs::create_dir_all(&home2).expect("make r2's home");
    std::fs::copy(s.home.join("state.key"), home2.join("state.key")).expect("copy the key");
    let r2 = start("r2", &home2);
    let expected: Vec<(String, String)> =
        [("api", "r1"), ("docs", "r2"), ("shop", "r2"), ("web", "r1")]
            .iter()
            .map(|(e, r)| (e.to_string(), r.to_string()))
            .collect();
    wait_for(
        "the environments are shared out between r1 and r2",
        DEPLOY,
        || (lease_holders(&database) == expected).then_some(()),
    );

    let browser = Browser::start(
        &s.dir.path().join("browser"),
        &format!("http://{}", r2.addr),
    );
    log_in(&browser, &viewer, "vera");
    browser.wait_for("the header says which replica answers", PAGE, |b| {
        (b.text("#served-by").as_deref() == Some("replica r2")).then_some(())
    });
    // Each row names the replica holding the environment: what the API says, too.
    browser.wait_for("each row names the replica that holds it", DEPLOY, |b| {
        (shown_holders(b) == expected).then_some(())
    });
    assert!(
        browser
            .text("#env-columns")
            .is_some_and(|t| t.to_lowercase().contains("replica")),
        "the dashboard has a Replica column"
    );
    let (_, list) = api(&r2, &viewer, "/api/v1/environments");
    for (env, holder) in &expected {
        let shown = list["environments"]
            .as_array()
            .and_then(|all| all.iter().find(|e| e["name"] == env.as_str()))
            .map(|e| e["replica"].clone());
        assert_eq!(
            shown,
            Some(json!(holder)),
            "the API agrees on {env}: {list:#}"
        );
    }

    // The Replicas page: both alive, r2 marked as the one answering.
    browser.click("#nav-replicas");
    browser.wait_for("the replicas page lists r1 and r2, alive", PAGE, |b| {
        (b.count("#replicas tr[data-replica]") == 2
            && b.exists("#replicas tr[data-replica=r1][data-alive=true]")
            && b.exists("#replicas tr[data-replica=r2][data-alive=true]"))
        .then_some(())
    });
    assert_eq!(browser.title(), "Replicas — Slipway");
    let r2_row = browser
        .text("#replicas tr[data-replica=r2]")
        .unwrap_or_default();
    for shown in ["r2", "this page", "alive", "just now", "2 held"] {
        assert!(r2_row.contains(shown), "r2's row shows {shown}: {r2_row}");
    }
    let r1_row = browser
        .text("#replicas tr[data-replica=r1]")
        .unwrap_or_default();
    assert!(
        !r1_row.contains("this page"),
        "only the replica answering is marked: {r1_row}"
    );

    // r1 dies: the page shows it silent, its heartbeat ageing, and r2 taking its environments.
    drop(r1);
    browser.wait_for("r1 is shown silent, last heard seconds ago", DEPLOY, |b| {
        let row = b.text("#replicas tr[data-replica=r1][data-alive=false]")?;
        (row.contains("silent") && row.contains("s ago") && row.contains("none held")).then_some(())
    });
    assert!(
        browser.exists("#replicas tr[data-replica=r2][data-alive=true]"),
        "r2 is still alive"
    );
    browser.click("#nav-environments");
    browser.wait_for(
        "every row names r2 once it has taken r1's environments",
        DEPLOY,
        |b| {
            let all_r2: Vec<(String, String)> = ENVS
                .iter()
                .map(|e| (e.to_string(), "r2".to_string()))
                .collect();
            (shown_holders(b) == all_r2).then_some(())
        },
    );
    browser.click("tr[data-env=web] a.env-link");
    browser.wait_for("web's page says r2 holds it", PAGE, |b| {
        b.text("#env-replica")
            .filter(|t| t.contains("r2"))
            .map(|_| ())
    });
}

/// What the dashboard's table holds now, checked against the list it shows (`sorted`: every
/// environment's name, by name): the rows in the document are consecutive environments of the
/// list, each where its place in the list puts it, and those in the window fill it without a
/// gap. Returns (the names of the rows in view, how many rows the document holds), or what is
/// wrong (between a scroll and the frame that follows it, the rows of the last frame are).
fn rows_in_view(browser: &Browser, sorted: &[String]) -> Result<(Vec<String>, usize), String> {
    let found = browser.js(
        "const tbody = document.querySelector('#environments tbody'); \
         const rows = [...tbody.querySelectorAll('tr[data-env]')]; \
         const origin = tbody.getBoundingClientRect().top; \
         const header = document.querySelector('header.top').getBoundingClientRect().bottom; \
         const head = document.querySelector('#environments thead').getBoundingClientRect(); \
         const from = Math.max(origin, header, head.bottom); \
         const to = Math.min(tbody.getBoundingClientRect().bottom, window.innerHeight); \
         return { rows: rows.map((tr) => { const r = tr.getBoundingClientRect(); \
                    return [tr.dataset.env, Number(tr.getAttribute('aria-rowindex')), \
                            r.top - origin, r.top, r.bottom]; }), from, to };",
        vec![],
    );
    let rows = found["rows"].as_array().cloned().unwrap_or_default();
    let (from, to) = (
        found["from"].as_f64().unwrap_or(0.0),
        found["to"].as_f64().unwrap_or(0.0),
    );
    if rows.len() < 2 {
        return Err(format!("the table holds rows: {found}"));
    }
    let first = (rows[0][1].as_u64().unwrap_or(0) as usize).saturating_sub(2);
    let pitch = (rows[rows.len() - 1][2].as_f64().unwrap_or(0.0)
        - rows[0][2].as_f64().unwrap_or(0.0))
        / (rows.len() - 1) as f64;
    let mut in_view = Vec::new();
    let mut covered = from;
    for (i, row) in rows.iter().enumerate() {
        let name = row[0].as_str().unwrap_or("");
        let index = first + i;
        if Some(name) != sorted.get(index).map(String::as_str) {
            return Err(format!(
                "the rows in the document are consecutive environments of the list, by name \
                 (row {i} of the document, {name}, is #{index} of the list): {found}"
            ));
        }
        if row[1].as_u64() != Some(index as u64 + 2) {
            return Err(format!(
                "each row says its place in the list (aria-rowindex): {found}"
            ));
        }
        let offset = row[2].as_f64().unwrap_or(0.0);
        if (offset - index as f64 * pitch).abs() >= pitch / 2.0 {
            return Err(format!(
                "{name}, #{index} of the list, is where its place puts it ({offset} px below \
                 the top of the list, {pitch} px a row): {found}"
            ));
        }
        let (top, bottom) = (
            row[3].as_f64().unwrap_or(0.0),
            row[4].as_f64().unwrap_or(0.0),
        );
        if bottom > from && top < to {
            if top > covered + 2.0 {
                return Err(format!(
                    "no gap in the window above {name} (covered to {covered}, it starts at \
                     {top}): {found}"
                ));
            }
            covered = covered.max(bottom);
            in_view.push(name.to_string());
        }
    }
    if covered + 2.0 < to {
        return Err(format!(
            "the rows in view fill the window down to {to} (they stop at {covered}): {found}"
        ));
    }
    Ok((in_view, rows.len()))
}

/// [`rows_in_view`] once the page has drawn the frame after whatever it was asked last.
fn settled_rows(browser: &Browser, sorted: &[String]) -> (Vec<String>, usize) {
    browser.js_async(
        "await new Promise((ok) => requestAnimationFrame(() => setTimeout(ok, 0))); return true;",
    );
    rows_in_view(browser, sorted).unwrap_or_else(|e| panic!("{e}\n{}", browser.report()))
}

#[test]
fn a_dashboard_of_two_thousand_environments_holds_only_the_rows_in_view_and_shows_the_right_ones() {
    // The most rows the document may hold: those of a 900 px window and a margin around them,
    // whatever the number of environments.
    const BOUND: usize = 120;
    let s = Sandbox::new();
    s.write(
        "slipway.yaml",
        "version: 1\nstack: many\nenvironments: { main: { track: main } }\nresources:\n  \
         config: { type: file, path: etc/app.toml, content: \"x = 1\\n\" }\n",
    );
    let sha = s.commit("one file");
    let config = std::fs::read_to_string(&s.config).expect("read the engine config")
        + "[repo]\npoll_interval = \"1h\"\n[controller]\ndrift_interval = \"1h\"\n";
    std::fs::write(&s.config, config).expect("write the engine config");
    let viewer = token(&s, "viewer", "victor");
    let server = start_serve(&s);
    wait_for("main is synced", DEPLOY, || {
        let (_, env) = api(&server, &viewer, "/api/v1/environments/main");
        (env["sync"] == "synced").then_some(())
    });
    // 2,000 ad-hoc environments recorded straight into the store, as if made and synced:
    // pinned and never enqueued, the controller leaves them alone. One carries a message, and
    // one an owner, that are HTML.
    const MESSAGE: &str =
        "<img src=x onerror=\"window.__xss = 1\"><script>window.__xss = 2</script> & done";
    const OWNER: &str = "<b onmouseover=\"window.__xss = 3\">eve</b>";
    let store = slipway_state::Store::open(&s.home).expect("open the controller's store");
    let now = slipway_state::now_ms();
    for i in 0..2000 {
        let mut record = slipway_state::EnvironmentRecord::new(
            env(&format!("load-{i:04}")),
            slipway_core::vocab::EnvKind::Adhoc,
            "many".into(),
            format!("file://{}", s.repo.display()),
            now,
        );
        record.tracked_ref = Some("main".into());
        record.desired_commit = Some(sha.clone());
        record.commit = Some(sha.clone());
        record.sync = slipway_core::vocab::SyncState::Synced;
        record.health = slipway_core::vocab::Health::Healthy;
        record.pinned = true;
        record.definition = Some("main".into());
        record.owner = Some(if i == 1500 { OWNER } else { "victor" }.into());
        record.message = (i == 1234).then(|| MESSAGE.to_string());
        assert!(
            store
                .insert_environment(&record)
                .expect("record an environment"),
            "load-{i:04} is new"
        );
    }
    let mut sorted: Vec<String> = (0..2000).map(|i| format!("load-{i:04}")).collect();
    sorted.push("main".into());
    sorted.sort();

    let browser = Browser::start(
        &s.dir.path().join("browser"),
        &format!("http://{}", server.addr),
    );
    log_in(&browser, &viewer, "victor");
    browser.wait_for("the dashboard lists all 2,001", PAGE, |b| {
        (b.attr("#environments", "data-shown").as_deref() == Some("2001")
            && b.exists("#environments tr[data-env]"))
        .then_some(())
    });
    assert_eq!(
        browser.text("#env-count").as_deref(),
        Some("(2001 of 2001)"),
        "the count says how many there are"
    );
    let (top, held) = settled_rows(&browser, &sorted);
    assert_eq!(
        top.first().map(String::as_str),
        Some("load-0000"),
        "the first environment is at the top"
    );
    assert!(
        top.len() >= 5 && held <= BOUND,
        "the document holds the rows in view and a margin ({held} rows, {} in view), not \
         2,001",
        top.len()
    );

    // Scrolled to the middle, then to the end: the rows there, and still only those.
    browser.js(
        "window.scrollTo(0, document.documentElement.scrollHeight / 2);",
        vec![],
    );
    let middle = browser.wait_for("the rows of the middle of the list are shown", PAGE, |b| {
        let (in_view, held) = rows_in_view(b, &sorted).ok()?;
        let index = sorted.iter().position(|n| Some(n) == in_view.first())?;
        (index > 800 && index < 1200).then_some((in_view, held))
    });
    assert!(
        middle.1 <= BOUND,
        "scrolled, the document still holds {} rows at most: {}",
        BOUND,
        middle.1
    );
    browser.js(
        "window.scrollTo(0, document.documentElement.scrollHeight);",
        vec![],
    );
    browser.wait_for("the last environment is shown at the end", PAGE, |b| {
        let (in_view, held) = rows_in_view(b, &sorted).ok()?;
        (in_view.last().map(String::as_str) == Some("main") && held <= BOUND).then_some(())
    });

    // HTML in a message and an owner is shown as text, never parsed.
    browser.fill("#filter-q", "load-1234");
    browser.wait_for("the search finds the one environment", PAGE, |b| {
        (b.attr("#environments", "data-shown").as_deref() == Some("1")
            && b.count("#environments tr[data-env]") == 1
            && b.exists("tr[data-env=load-1234]"))
        .then_some(())
    });
    assert_eq!(
        browser.js(
            "return document.querySelector('tr[data-env=load-1234] [data-col=message] div').textContent;",
            vec![]
        ),
        json!(MESSAGE),
        "the message is shown as the text it is"
    );
    browser.js(
        "const s = document.querySelector('#filter-owner'); s.value = arguments[0]; \
         s.dispatchEvent(new Event('change'));",
        vec![json!(OWNER)],
    );
    browser.fill("#filter-q", "");
    browser.wait_for("the owner filter finds the one environment", PAGE, |b| {
        (b.attr("#environments", "data-shown").as_deref() == Some("1")
            && b.exists("tr[data-env=load-1500]"))
        .then_some(())
    });
    assert_eq!(
        browser
            .text("tr[data-env=load-1500] [data-col=owner]")
            .as_deref(),
        Some(OWNER),
        "the owner is shown as the text it is"
    );
    assert_eq!(
        browser.js(
            "return [document.querySelectorAll('#main img, #main script, #main b').length, \
             window.__xss === undefined];",
            vec![]
        ),
        json!([0, true]),
        "nothing of the HTML became an element, and none of its script ran"
    );

    // Filters cleared: every environment again, the rows in view and only those.
    browser.js(
        "const s = document.querySelector('#filter-owner'); s.value = ''; \
         s.dispatchEvent(new Event('change'));",
        vec![],
    );
    browser.wait_for("clearing the filters lists all 2,001 again", PAGE, |b| {
        (b.attr("#environments", "data-shown").as_deref() == Some("2001")).then_some(())
    });
    let (_, held) = settled_rows(&browser, &sorted);
    assert!(held <= BOUND, "cleared, the document holds {held} rows");
    browser.js(
        "window.scrollTo(0, document.documentElement.scrollHeight / 4);",
        vec![],
    );
    browser.wait_for("a quarter down, the rows there are shown", PAGE, |b| {
        let (in_view, _) = rows_in_view(b, &sorted).ok()?;
        let index = sorted.iter().position(|n| Some(n) == in_view.first())?;
        (index > 300 && index < 700).then_some(())
    });

    // Keyboard: Tab walks from row to row past the rows first in the document, the page
    // following, and the document still holds only the rows around the focus.
    browser.js("window.scrollTo(0, 0);", vec![]);
    browser.wait_for("back at the top", PAGE, |b| {
        let (in_view, _) = rows_in_view(b, &sorted).ok()?;
        (in_view.first().map(String::as_str) == Some("load-0000")).then_some(())
    });
    browser.js(
        "document.querySelector('tr[data-env=load-0000] a.env-link').focus();",
        vec![],
    );
    for _ in 0..80 {
        browser.press(TAB);
    }
    browser.wait_for("Tab reached the 81st environment's link", PAGE, |b| {
        (b.js(
            "return document.activeElement.matches('tr[data-env=load-0080] a.env-link');",
            vec![],
        ) == json!(true))
        .then_some(())
    });
    let (in_view, held) = settled_rows(&browser, &sorted);
    assert!(
        in_view.iter().any(|n| n == "load-0080") && held <= BOUND,
        "the focused row is in view, among at most {BOUND} rows ({held}): {in_view:?}"
    );
    browser.press(ENTER);
    browser.wait_for("Enter opens its page", PAGE, |b| {
        (b.title() == "load-0080 — Slipway").then_some(())
    });
}

/// Runs axe-core on the page as it is now; `place` names it in the failure message.
fn assert_accessible(browser: &Browser, place: &str) {
    let violations = browser.axe_violations();
    assert!(
        violations.is_empty(),
        "axe-core finds WCAG 2.1 A/AA violations on {place}:\n{:#}",
        json!(violations)
    );
}

#[test]
fn every_page_passes_axe_core_light_and_dark_on_a_desktop_and_a_phone() {
    let (s, _) = setup();
    let admin = token(&s, "admin", "alice");
    let server = start_serve(&s);
    // Enough events on main's page that its events list scrolls (a phone shows each on three
    // lines): each sync of an up-to-date environment records one.
    util::wait_for("main is deployed", DEPLOY, || {
        let (_, main) = api(&server, &admin, "/api/v1/environments/main");
        (main["sync"] == "synced").then_some(())
    });
    for _ in 0..15 {
        let (status, _) = util::api_request(
            &server.addr,
            "POST",
            "/api/v1/environments/main/sync",
            &admin,
            Some(json!({})),
        );
        assert_eq!(status, 202, "a sync is queued");
        std::thread::sleep(Duration::from_millis(100));
    }
    for dark in [false, true] {
        let scheme = if dark { "dark" } else { "light" };
        let browser = Browser::start_with(
            &s.dir.path().join(format!("browser-{scheme}")),
            &format!("http://{}", server.addr),
            &BrowserOptions { dark },
        );
        for (device, width, height) in [("desktop", 1440, 900), ("phone", 390, 844)] {
            browser.resize(width, height);
            browser.goto("/");
            browser.wait_until_exists("the login form is shown", PAGE, "#login #token");
            if !dark && device == "desktop" {
                // The check can fail: an image without a text alternative is found.
                browser.js(
                    "const i = document.createElement('img'); i.id = 'axe-bait'; \
                     i.src = '/ui/favicon.svg'; document.querySelector('main').append(i);",
                    vec![],
                );
                let found = browser.axe_violations();
                assert!(
                    found.iter().any(|v| v["id"] == "image-alt"),
                    "axe-core finds an image without alt: {found:#?}"
                );
                browser.js("document.querySelector('#axe-bait').remove();", vec![]);
            }
            assert_accessible(&browser, &format!("the login page ({scheme}, {device})"));
            if device == "desktop" {
                log_in(&browser, &admin, "alice");
            } else {
                browser.fill("#token", &admin);
                browser.click("#login-submit");
            }
            wait_healthy(&browser, "main", None);
            wait_healthy(&browser, "br-feature-login", None);
            assert_accessible(&browser, &format!("the dashboard ({scheme}, {device})"));
            if !dark && device == "desktop" {
                // A laptop's screen holds the whole table: no column, no Sync button, past
                // the window's right edge, and no sideways scrolling.
                for (width, height) in [(1024, 768), (1280, 800)] {
                    browser.resize(width, height);
                    let fit = browser.js(
                        "const w = document.documentElement.clientWidth; \
                         const out = [...document.querySelectorAll('#environments tr[data-env] td, #environments th')] \
                           .filter((c) => c.getBoundingClientRect().right > w + 0.5) \
                           .map((c) => c.dataset.col || c.textContent.trim()); \
                         return { page: document.documentElement.scrollWidth - w, out: [...new Set(out)] };",
                        vec![],
                    );
                    assert_eq!(
                        fit,
                        json!({ "page": 0, "out": [] }),
                        "the dashboard fits a {width} px window"
                    );
                }
                browser.resize(width, height);
            }

            browser.click("#create-open");
            browser.wait_until_exists("the create dialog opens", PAGE, "dialog[open]");
            assert_accessible(&browser, &format!("the create dialog ({scheme}, {device})"));
            browser.press("\u{E00C}");

            browser.goto("/#/env/main");
            browser.wait_for("main's page lists its events", DEPLOY, |b| {
                (b.exists("#env-events li[data-kind='apply.succeeded']")
                    && b.count("#env-events li[data-kind='sync.unchanged']") >= 10
                    && b.exists("#plan-summary"))
                .then_some(())
            });
            assert_eq!(
                browser.js(
                    "const e = document.querySelector('#env-events'); return e.scrollHeight > e.clientHeight;",
                    vec![],
                ),
                json!(true),
                "main's events list scrolls ({device})"
            );
            assert_accessible(&browser, &format!("main's page ({scheme}, {device})"));

            browser.goto("/#/pulls");
            browser.wait_until_exists("the pull requests' page", PAGE, "#main h1");
            assert_accessible(
                &browser,
                &format!("the pull requests' page ({scheme}, {device})"),
            );

            browser.goto("/#/replicas");
            browser.wait_until_exists("the replicas' page", PAGE, "#no-replicas");
            assert_accessible(
                &browser,
                &format!("the replicas' page ({scheme}, {device})"),
            );

            browser.click("#logout");
            browser.wait_until_exists("the login form is back", PAGE, "#login #token");
        }
    }
}

/// A private preview in a browser: a stranger's 401 page links to the sign-in, which goes
/// through the UI's login and lands on the page asked for; the environment page says the
/// preview is private and makes a signed link.
/// A process that answers every GET with the `Cookie` header it was sent: an environment's
/// app on another port of the host, as any branch can run. Killed when dropped.
struct CookieEcho {
    child: std::process::Child,
    port: u16,
}

impl CookieEcho {
    fn start() -> CookieEcho {
        use std::io::BufRead;
        const ECHO: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('cookie: ' + (self.headers.get('Cookie') or '')).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'text/plain')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
s = http.server.HTTPServer(('127.0.0.1', 0), H)
print(s.server_port, flush=True)
s.serve_forever()
"#;
        let mut child = std::process::Command::new("python3")
            .args(["-c", ECHO])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("the echo says its port");
        let port = line.trim().parse().expect("a port");
        CookieEcho { child, port }
    }
}

impl Drop for CookieEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `method path` with the session cookie alone, as a process that was sent it would call.
fn with_cookie_alone(server: &Server, method: &str, path: &str, cookie: &str) -> (u16, String) {
    raw_call(
        server,
        &format!(
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nCookie: {cookie}\r\n\
             Content-Length: 0\r\n\r\n",
            server.addr
        ),
    )
}

#[test]
fn a_page_on_another_port_of_the_host_is_sent_the_session_cookie_and_can_do_nothing_with_it() {
    let (s, _) = setup();
    let admin = token(&s, "admin", "ada");
    let server = start_serve(&s);
    let browser = Browser::start(
        &s.dir.path().join("browser"),
        &format!("http://{}", server.addr),
    );
    log_in(&browser, &admin, "ada");
    // A preview's page sends the browser to its app's own port on the same host: a browser
    // sends a host's cookies to all its ports, so the app is sent the session cookie.
    let echo = CookieEcho::start();
    browser.js(
        "setTimeout(() => { location.href = arguments[0]; }, 0);",
        vec![json!(format!("http://127.0.0.1:{}/", echo.port))],
    );
    let sent = browser.wait_for("the app's page is open", PAGE, |b| {
        b.text("body").filter(|t| t.starts_with("cookie:"))
    });
    let cookie = sent
        .trim_start_matches("cookie:")
        .split(';')
        .map(str::trim)
        .find(|c| c.starts_with("slipway_session="))
        .unwrap_or_else(|| panic!("the cookie goes to the other port: {sent}"))
        .to_string();
    // What the app can do with it: nothing, a read included.
    for path in ["/api/v1/whoami", "/api/v1/environments", "/api/v1/audit"] {
        let (status, answer) = with_cookie_alone(&server, "GET", path, &cookie);
        assert_eq!(status, 403, "GET {path}: {answer}");
    }
    let (status, answer) = with_cookie_alone(
        &server,
        "DELETE",
        "/api/v1/environments/main?confirm=main",
        &cookie,
    );
    assert_eq!(status, 403, "{answer}");
    // The person, back on the UI, is still logged in.
    browser.goto("/");
    browser.wait_for("ada is still logged in", PAGE, |b| {
        (b.text("#who-name").as_deref() == Some("ada")).then_some(())
    });
    let (status, _) = api(&server, &admin, "/api/v1/environments/main");
    assert_eq!(status, 200, "main is still there");
}

#[test]
fn a_private_preview_signs_a_person_in_through_the_ui_and_shares_a_link() {
    let (s, _) = setup();
    let admin = token(&s, "admin", "alice");
    let server = start_serve(&s);
    let port = server.port();
    let browser = Browser::start(
        &s.dir.path().join("browser"),
        &format!("http://localhost:{port}"),
    );
    let preview = format!("http://br-feature-login.shop.localhost:{port}");
    wait_for("the feature branch's preview runs", DEPLOY, || {
        let (status, body) = api(&server, &admin, "/api/v1/environments/br-feature-login");
        (status == 200 && body["health"] == "healthy").then_some(())
    });

    // A stranger gets the private page, which passes axe-core too.
    browser.js(
        "location.href = arguments[0];",
        vec![json!(format!("{preview}/?from=sign-in"))],
    );
    browser.wait_until_exists(
        "the private preview's page",
        PAGE,
        "main a[href*='preview-sign-in']",
    );
    assert_eq!(browser.text("h1").as_deref(), Some("Private preview"));
    assert_accessible(&browser, "a private preview's sign-in page");

    // Signing in goes through the UI's login and comes back to the page asked for.
    browser.click("main a[href*='preview-sign-in']");
    browser.wait_until_exists("the UI's login, told why", PAGE, "#login #preview-note");
    assert!(
        browser
            .text("#preview-note")
            .is_some_and(|t| t.contains("br-feature-login") && t.contains("/?from=sign-in")),
        "it names the preview and the page: {:?}",
        browser.text("#preview-note")
    );
    browser.fill("#token", &admin);
    browser.click("#login-submit");
    browser.wait_for("the browser is back on the preview's page", DEPLOY, |b| {
        let at = b.js(
            "return location.href + ' ' + document.body.innerText;",
            vec![],
        );
        let at = at.as_str().unwrap_or_default();
        (at.starts_with(&format!("{preview}/?from=sign-in")) && at.contains("slipway.yaml"))
            .then_some(())
    });
    assert!(
        browser
            .cookie("slipway_preview")
            .is_some_and(|c| c.starts_with("br-feature-login.shop.")),
        "the preview host keeps the link in its cookie"
    );

    // Logged in already, a link asking the UI to go on to a preview's sign-in (any page can
    // make one: a sibling preview's, to sign its visitor in to this one) goes on only on the
    // person's click.
    browser.goto(
        "/?next=%2F.slipway%2Fpreview-sign-in%3Fenv%3Dbr-feature-login%26stack%3Dshop%26next%3D%252F%253Fasked",
    );
    browser.wait_until_exists("the UI asks before going on", PAGE, "#continue-sign-in");
    assert_eq!(
        browser.text("#continue-env").as_deref(),
        Some("br-feature-login"),
        "it names the preview"
    );
    let here = browser.js("return location.href;", vec![]);
    assert_eq!(
        here.as_str(),
        Some(format!("http://localhost:{port}/").as_str()),
        "still on the UI, its `next` dropped"
    );
    assert_accessible(&browser, "the question before a preview's sign-in");
    browser.wait_for("its button is enabled a moment after", PAGE, |b| {
        let enabled = b.js(
            "return !document.querySelector('#continue-sign-in').disabled;",
            vec![],
        );
        (enabled.as_bool() == Some(true)).then_some(())
    });
    browser.click("#continue-sign-in");
    browser.wait_for("the preview opens on the click", DEPLOY, |b| {
        let at = b.js("return location.href;", vec![]);
        at.as_str()
            .is_some_and(|at| at.starts_with(&format!("{preview}/?asked")))
            .then_some(())
    });

    // The environment page says it is private, and shares a link.
    browser.goto("/#/env/br-feature-login");
    browser.wait_until_exists("the environment page", PAGE, "#env-access");
    assert_eq!(browser.text("#env-access").as_deref(), Some("private"));
    browser.click("[data-action=share]");
    browser.wait_until_exists("the share dialog", PAGE, "#share-for");
    browser.fill("#share-for", "2h");
    browser.click("#dialog-submit");
    browser.wait_until_exists("the link is shown", PAGE, "#share-url");
    let link = browser
        .js("return document.querySelector('#share-url').value;", vec![])
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        link.starts_with(&format!(
            "{preview}/.slipway/auth?link=br-feature-login.shop."
        )),
        "{link}"
    );
    assert_eq!(
        browser.focused(),
        "share-url",
        "the link is focused (and selected) for copying"
    );
    assert_accessible(&browser, "the share dialog");
    // The link opens the preview for someone with no session and no cookie.
    let path = &link[link.find("/.slipway").expect("the link's path")..];
    let host = format!("br-feature-login.shop.localhost:{port}");
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&server.addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    assert!(
        answer.split_whitespace().nth(1) == Some("303") && answer.contains("slipway_preview="),
        "{answer}"
    );
}

/// The text of the queued chip in `env`'s dashboard row, if it shows one.
fn queued_chip(browser: &Browser, env: &str) -> Option<String> {
    browser
        .js(
            "const c = document.querySelector(`tr[data-env=\"${arguments[0]}\"] [data-activity=queued]`); \
             return c ? c.textContent.trim() : null;",
            vec![json!(env)],
        )
        .as_str()
        .map(str::to_string)
}

#[test]
fn a_queued_environment_shows_its_place_on_the_dashboard_and_its_page_and_starts_live() {
    let s = Sandbox::new();
    let yaml = slipway_testkit::stack::main_and_previews(
        "shop",
        "    max_environments: 1\nresources:\n  web:\n    type: process\n    command: [\"python3\", \
         \"-m\", \"http.server\", \"${ports.http}\", \"--bind\", \"127.0.0.1\"]\n    ports: \
         [http]\n    health: { http: / }\n    expose: http\n",
    );
    s.write("slipway.yaml", &yaml);
    s.commit("capped previews");
    git(&s.repo, &["branch", "-q", "feature/a", "main"]);
    git(&s.repo, &["branch", "-q", "feature/b", "main"]);
    util::world::append_config(
        &s,
        "[repo]\npoll_interval = \"300ms\"\n[controller]\ndrift_interval = \"1h\"\n",
    );
    let admin = token(&s, "admin", "alice");
    let server = start_serve(&s);
    for dark in [false, true] {
        let scheme = if dark { "dark" } else { "light" };
        let browser = Browser::start_with(
            &s.dir.path().join(format!("browser-{scheme}")),
            &format!("http://{}", server.addr),
            &BrowserOptions { dark },
        );
        log_in(&browser, &admin, "alice");
        wait_healthy(&browser, "br-feature-a", None);
        let chip = browser.wait_for("br-feature-b's row shows it queued", PAGE, |b| {
            queued_chip(b, "br-feature-b")
        });
        assert_eq!(chip, "⏳ queued (#1)", "the chip says the place in line");
        assert_eq!(
            queued_chip(&browser, "br-feature-a"),
            None,
            "a running environment has no queued chip"
        );
        assert_accessible(
            &browser,
            &format!("a dashboard with a queued row ({scheme})"),
        );

        // The keyboard reaches the queued environment's page as any other's.
        browser.js(
            "document.querySelector('tr[data-env=\"br-feature-b\"] a.env-link').focus();",
            vec![],
        );
        assert_eq!(browser.focused(), "env-link");
        browser.press(ENTER);
        browser.wait_for("br-feature-b's page says it is queued", PAGE, |b| {
            let heading = b.text("#main h1")?;
            (heading.contains("queued (#1)") && b.exists("h1 [data-activity=queued]")).then_some(())
        });
        let facts = browser.text("dl.facts").unwrap_or_default();
        assert!(
            facts.contains("#1 in its family's line") && facts.contains("nothing runs"),
            "the page says its place and that nothing runs: {facts}"
        );
        assert_accessible(&browser, &format!("a queued environment's page ({scheme})"));
        if !dark {
            // Syncing it by hand deploys nothing, and the toast says why rather than wait.
            browser.click("button[data-action=sync]");
            browser.wait_for("the toast says it is still queued", PAGE, |b| {
                let toasts = b.text("#toasts")?;
                (toasts.contains("still queued: 1st in line")
                    && b.exists("#toasts .toast[data-state=ok]"))
                .then_some(())
            });
            assert!(
                !s.home.join("envs").join("br-feature-b").exists(),
                "a sync of a queued environment makes nothing"
            );
        }
        browser.goto("/");
        browser.click("#logout");
        browser.wait_until_exists("the login form is back", PAGE, "#login #token");
    }

    // Its branch deleted, br-feature-a's slot goes to br-feature-b: the dashboard shows it
    // start without a reload.
    let browser = Browser::start(
        &s.dir.path().join("browser-live"),
        &format!("http://{}", server.addr),
    );
    log_in(&browser, &admin, "alice");
    browser.wait_for("br-feature-b is queued", PAGE, |b| {
        queued_chip(b, "br-feature-b")
    });
    git(&s.repo, &["branch", "-q", "-D", "feature/a"]);
    wait_healthy(&browser, "br-feature-b", None);
    assert_eq!(queued_chip(&browser, "br-feature-b"), None);
}

#[test]
fn a_sleeping_environment_shows_so_and_wakes_and_sleeps_from_its_page() {
    let (s, _) = setup();
    let admin = token(&s, "admin", "alice");
    let server = start_serve(&s);
    let preview = "br-feature-login";
    util::wait_for("the preview is deployed", DEPLOY, || {
        let (_, env) = api(&server, &admin, &format!("/api/v1/environments/{preview}"));
        (env["sync"] == "synced").then_some(())
    });
    let (status, env) = util::api_request(
        &server.addr,
        "POST",
        &format!("/api/v1/environments/{preview}/sleep"),
        &admin,
        Some(json!({})),
    );
    assert_eq!(
        (status, &env["activity"]),
        (200, &json!("sleeping")),
        "{env}"
    );

    let browser = Browser::start(
        &s.dir.path().join("browser"),
        &format!("http://{}", server.addr),
    );
    log_in(&browser, &admin, "alice");
    let chip = format!("tr[data-env='{preview}'] .badge[data-value='sleeping']");
    browser.wait_until_exists("the dashboard marks the preview asleep", PAGE, &chip);
    assert!(
        !browser.exists("tr[data-env='main'] .badge[data-value='sleeping']"),
        "an awake environment shows no activity chip"
    );
    assert_accessible(&browser, "the dashboard with a sleeping environment");

    browser.goto(&format!("/#/env/{preview}"));
    browser.wait_until_exists(
        "its page shows it asleep with a Wake button",
        PAGE,
        "#env-header .badge[data-value='sleeping']",
    );
    browser.wait_until_exists("a Wake button", PAGE, "#env-header [data-action='wake']");
    assert!(
        !browser.exists("#env-header [data-action='sleep']"),
        "no Sleep button while it sleeps"
    );
    assert_accessible(&browser, "a sleeping environment's page");

    browser.click("#env-header [data-action='wake']");
    browser.wait_for(
        "the page shows it awake, with a Sleep button",
        DEPLOY,
        |b| {
            (b.exists("#env-header [data-action='sleep']")
                && !b.exists("#env-header .badge[data-value='sleeping']"))
            .then_some(())
        },
    );
    let (_, env) = api(&server, &admin, &format!("/api/v1/environments/{preview}"));
    assert_eq!(env["activity"], "awake", "the Wake button woke it: {env}");
    let url = env["url"].as_str().expect("a preview URL").to_string();
    let host = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    // The preview is private (a family's): a Slipway token lets the request in.
    let answer = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&server.addr).expect("connect");
        write!(
            stream,
            "GET / HTTP/1.0\r\nHost: {host}\r\nAuthorization: Bearer {admin}\r\n\r\n"
        )
        .expect("send");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    assert_eq!(
        answer.split_whitespace().nth(1),
        Some("200"),
        "awake, it serves at its preview URL: {answer}"
    );

    browser.click("#env-header [data-action='sleep']");
    browser.wait_until_exists(
        "the Sleep button puts it to sleep",
        DEPLOY,
        "#env-header [data-action='wake']",
    );
    let (_, env) = api(&server, &admin, &format!("/api/v1/environments/{preview}"));
    assert_eq!(env["activity"], "sleeping", "{env}");
    drop(browser);
    drop(server);
    for name in ["main", preview] {
        let _ = s.run(&["destroy", "--env", name, "--yes"]);
    }
}

/// A preview never writes its config file (hard): the policy that holds the preview below.
const PREVIEW_CONFIG: &str = r#"# METADATA
# title: A preview keeps the config of main
package slipway

deny contains {"msg": sprintf("%s may not change %s", [input.env.name, c.address]), "resource": c.address} if {
    input.env.kind == "generated"
    some c in input.resource_changes
    c.type == "file"
}
"#;

/// Says something without blocking (advisory).
const COUNT_WARNING: &str = r#"# METADATA
# title: Large changes get a second look
# custom:
#   enforcement: advisory
package slipway

warn contains sprintf("%d resources change", [count(input.resource_changes)]) if {
    count(input.resource_changes) > 1
}
"#;

#[test]
fn a_change_a_policy_holds_shows_each_policy_with_its_word_and_where_on_the_environments_page() {
    let (s, _) = setup();
    s.write("policies/preview-config.rego", PREVIEW_CONFIG);
    s.write("policies/count.rego", COUNT_WARNING);
    let policies_at = s.commit("policies");
    let admin = token(&s, "admin", "alice");
    let server = start_serve(&s);
    let preview = "br-feature-login";
    util::wait_for("the preview is held by the policy", DEPLOY, || {
        let (_, env) = api(&server, &admin, &format!("/api/v1/environments/{preview}"));
        env["message"]
            .as_str()
            .is_some_and(|m| m.contains("policies/preview-config.rego (hard)"))
            .then_some(())
    });

    let browser = Browser::start(
        &s.dir.path().join("browser"),
        &format!("http://{}", server.addr),
    );
    log_in(&browser, &admin, "alice");
    browser.goto(&format!("/#/env/{preview}"));
    browser.wait_until_exists(
        "the plan shows the policies' verdict",
        DEPLOY,
        "#plan-policies[data-gate='hard_fail']",
    );
    let failed = "#policy-results tr[data-policy='policies/preview-config.rego']";
    assert_eq!(
        browser.attr(failed, "data-outcome").as_deref(),
        Some("failed"),
        "the hard policy failed"
    );
    let said = browser.text(failed).unwrap_or_default();
    assert!(
        said.contains("A preview keeps the config of main")
            && said.contains(&format!("deny: {preview} may not change config"))
            && said.contains("slipway.yaml:"),
        "the row gives the policy's title, its message, the resource and where it is declared: {said}"
    );
    let warned = "#policy-results tr[data-policy='policies/count.rego']";
    assert_eq!(
        browser.attr(warned, "data-outcome").as_deref(),
        Some("warned"),
        "the advisory policy warned"
    );
    assert!(
        browser
            .text(warned)
            .is_some_and(|t| t.contains("warn: 2 resources change")),
        "{:?}",
        browser.text(warned)
    );
    // What blocks comes first, and the policies' commit is the default branch's.
    let order = browser.js(
        "return [...document.querySelectorAll('#policy-results tbody tr')].map((r) => r.dataset.outcome);",
        vec![],
    );
    assert_eq!(order, json!(["failed", "warned"]));
    let at = browser.attr("#plan-policies code.mono", "title");
    assert_eq!(at.as_deref(), Some(policies_at.as_str()));
    let message = browser.text("#env-message").unwrap_or_default();
    assert!(
        message.contains("held: the policies deny"),
        "the page says the change is held: {message}"
    );
    assert_accessible(&browser, "an environment held by a policy");
    drop(browser);
    drop(server);
    for name in ["main", preview] {
        let _ = s.run(&["destroy", "--env", name, "--yes"]);
    }
}
