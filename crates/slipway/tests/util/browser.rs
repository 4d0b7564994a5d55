//! A real headless Chromium, driven over WebDriver (Debian's `chromedriver`, through
//! `fantoccini`), for the web UI's tests. The test starts its own chromedriver on a free port
//! of 127.0.0.1 and installs nothing: without `chromium` and `chromium-driver` it fails and
//! says how to get them.
//!
//! Pages re-render as events arrive, so element handles go stale: reads go through small
//! scripts on `document.querySelector`, and actions find their element afresh and are retried
//! until a deadline. Every timeout prints what the page showed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// The WebDriver key codes of Tab and Enter.
pub const TAB: &str = "\u{E004}";
pub const ENTER: &str = "\u{E007}";

/// Where Debian puts them; `CHROMEDRIVER` and `CHROMIUM` override.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

fn program(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.exists(),
        "the web UI's tests drive a real headless Chromium, and `{}` is missing. Install \
         Debian's packages: `apt-get install -y chromium chromium-driver` (scripts/test.sh does \
         this), or point ${env} at it.",
        path.display()
    );
    path
}

/// How the browser starts.
#[derive(Debug, Clone, Default)]
pub struct BrowserOptions {
    /// Whether pages see `prefers-color-scheme: dark`.
    pub dark: bool,
}

/// A browser session on a fresh profile, with its chromedriver. Both end when dropped.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    driver_log: PathBuf,
    /// `http://127.0.0.1:PORT` of the server under test.
    pub base: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium whose profile lives in `dir` (inside the
    /// test's sandbox, so that nothing outlives the test), sized like a laptop screen.
    pub fn start(dir: &Path, base: &str) -> Browser {
        Browser::start_with(dir, base, &BrowserOptions::default())
    }

    /// [`Browser::start`] with `options`.
    pub fn start_with(dir: &Path, base: &str, options: &BrowserOptions) -> Browser {
        let chromedriver = program("CHROMEDRIVER", CHROMEDRIVER);
        let chromium = program("CHROMIUM", CHROMIUM);
        std::fs::create_dir_all(dir).expect("make the browser's directory");
        let driver_log = dir.join("chromedriver.log");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port for chromedriver")
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", driver_log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", chromedriver.display()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the WebDriver client");
        let mut browser = Browser {
            runtime,
            client: None,
            driver,
            driver_log,
            base: base.trim_end_matches('/').to_string(),
        };
        super::wait_for(
            "chromedriver answers on its port",
            Duration::from_secs(30),
            || driver_ready(port).then_some(()),
        );
        let profile = dir.join("profile");
        // Blink's PreferredColorScheme: 0 is dark, 1 light.
        let scheme = format!(
            "--blink-settings=preferredColorScheme={}",
            if options.dark { 0 } else { 1 }
        );
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Tests run as root, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-extensions",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--hide-scrollbars",
                    "--force-device-scale-factor=1",
                    "--window-size=1440,900",
                    "--lang=en-US",
                    scheme,
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        });
        let capabilities = match capabilities {
            Value::Object(map) => map,
            _ => unreachable!("a JSON object literal"),
        };
        let url = format!("http://127.0.0.1:{port}");
        let client = browser.runtime.block_on(async {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities)
                .connect(&url)
                .await
        });
        let client = client.unwrap_or_else(|e| {
            panic!(
                "chromedriver starts a Chromium session: {e}\n--- chromedriver log (tail)\n{}",
                browser.driver_log_tail()
            )
        });
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the session is open until dropped")
    }

    /// Opens `path` of the server under test.
    pub fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.runtime
            .block_on(self.client().goto(&url))
            .unwrap_or_else(|e| panic!("open {url}: {e}\n{}", self.report()));
        // Collect the page's script errors, for reports.
        self.js(
            "window.__errors = window.__errors || []; \
             window.addEventListener('error', (e) => window.__errors.push(String(e.message))); \
             window.addEventListener('unhandledrejection', (e) => window.__errors.push(String(e.reason)));",
            vec![],
        );
    }

    /// Runs `script` in the page (a function body; `arguments` are `args`) and returns what
    /// it returns; a returned promise is awaited.
    pub fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.runtime
            .block_on(self.client().execute(script, args))
            .unwrap_or_else(|e| panic!("run a script in the page: {e}\nscript: {script}"))
    }

    /// The document's title.
    pub fn title(&self) -> String {
        self.runtime
            .block_on(self.client().title())
            .unwrap_or_else(|e| panic!("read the title: {e}"))
    }

    /// Runs `body` as the body of an async function in the page and returns what it returns
    /// (it may `await`).
    pub fn js_async(&self, body: &str) -> Value {
        self.js(&format!("return (async () => {{ {body} }})();"), vec![])
    }

    /// Whether `css` matches an element now.
    pub fn exists(&self, css: &str) -> bool {
        self.js(
            "return document.querySelector(arguments[0]) !== null;",
            vec![json!(css)],
        ) == json!(true)
    }

    /// How many elements match `css` now.
    pub fn count(&self, css: &str) -> usize {
        self.js(
            "return document.querySelectorAll(arguments[0]).length;",
            vec![json!(css)],
        )
        .as_u64()
        .unwrap_or(0) as usize
    }

    /// The text of the first element matching `css` (as rendered), if there is one.
    pub fn text(&self, css: &str) -> Option<String> {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
            vec![json!(css)],
        )
        .as_str()
        .map(str::to_string)
    }

    /// An attribute of the first element matching `css`.
    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
            vec![json!(css), json!(name)],
        )
        .as_str()
        .map(str::to_string)
    }

    /// Clicks the element matching `css` as a person would (a WebDriver click: it must be
    /// visible and not covered), retrying while the page re-renders, until `timeout`.
    pub fn click(&self, css: &str) {
        self.act(&format!("click {css}"), || async move {
            let element = self.client().find(Locator::Css(css)).await?;
            element.click().await
        });
    }

    /// Replaces the value of the input matching `css` by typing `text`.
    pub fn fill(&self, css: &str, text: &str) {
        self.act(&format!("type into {css}"), || async move {
            let element = self.client().find(Locator::Css(css)).await?;
            element.clear().await?;
            element.send_keys(text).await
        });
    }

    /// Types `keys` (WebDriver key codes allowed: [`TAB`], [`ENTER`]) into the focused element.
    pub fn press(&self, keys: &str) {
        self.act(&format!("press {keys:?}"), || async move {
            self.client().active_element().await?.send_keys(keys).await
        });
    }

    /// The focused element's `id`, else its `class`, else its tag, for keyboard tests.
    pub fn focused(&self) -> String {
        self.js(
            "const e = document.activeElement; \
             return e ? (e.id || e.className || e.tagName) : '';",
            vec![],
        )
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    fn act<F, Fut>(&self, what: &str, mut attempt: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), fantoccini::error::CmdError>>,
    {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let result = self.runtime.block_on(attempt());
            match result {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{what}: {e}\n{}", self.report()),
            }
        }
    }

    /// Polls `probe` until it returns something, or fails after `timeout` with what the page
    /// showed.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&Browser) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = probe(self) {
                return found;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting until {what}\n{}",
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `css` matches an element.
    pub fn wait_until_exists(&self, what: &str, timeout: Duration, css: &str) {
        self.wait_for(what, timeout, |b| b.exists(css).then_some(()));
    }

    /// The value of cookie `name`, HttpOnly ones included (WebDriver sees them; scripts do
    /// not).
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.runtime
            .block_on(self.client().get_named_cookie(name))
            .ok()
            .map(|c| c.value().to_string())
    }

    /// Resizes the window (a phone: 390×844).
    pub fn resize(&self, width: u32, height: u32) {
        self.runtime
            .block_on(self.client().set_window_size(width, height))
            .unwrap_or_else(|e| panic!("resize the window: {e}"));
    }

    /// Writes a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = self
            .runtime
            .block_on(self.client().screenshot())
            .unwrap_or_else(|e| panic!("take a screenshot: {e}"));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("make the screenshot's directory");
        }
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("write the screenshot {}: {e}", path.display()));
    }

    /// The WCAG 2.1 A and AA violations axe-core finds in the page as it is now (the rules
    /// of those tags, as Deque's own audits run them): each `{id, impact, help, nodes}`, with
    /// the nodes' selectors and what is wrong with each. Empty when it passes.
    pub fn axe_violations(&self) -> Vec<Value> {
        static AXE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let axe = AXE.get_or_init(|| {
            let dir = slipway_testkit::fixtures::fetched_once(
                "axe-core",
                &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fetch-axe.sh"),
            );
            std::fs::read_to_string(dir.join("axe.min.js")).expect("read axe.min.js")
        });
        // Run through WebDriver, not a <script> the page's Content-Security-Policy would
        // refuse; the source sets `window.axe`.
        let result = self.js(
            &format!(
                "{axe}\n;return window.axe.run(document, {{ runOnly: {{ type: 'tag', values: \
                 ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] }}, resultTypes: ['violations'] }}) \
                 .then((r) => r.violations.map((v) => ({{ id: v.id, impact: v.impact, help: v.help, \
                 nodes: v.nodes.map((n) => ({{ target: n.target, why: n.failureSummary }})) }})));"
            ),
            vec![],
        );
        result
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("axe-core did not run: it answered {result:#}"))
    }

    /// What the page shows, for failure messages: URL, title, the main region's text, the
    /// toasts, script errors, and the tail of chromedriver's log.
    pub fn report(&self) -> String {
        let page = self
            .runtime
            .block_on(self.client().execute(
                "return {url: location.href, title: document.title, \
                 main: (document.querySelector('main') || document.body).innerText.slice(0, 4000), \
                 toasts: (document.querySelector('#toasts') || {}).innerText || '', \
                 live: (document.querySelector('#live') || {}).outerHTML || '', \
                 errors: window.__errors || []};",
                vec![],
            ))
            .map(|v| format!("{v:#}"))
            .unwrap_or_else(|e| format!("(the page cannot be read: {e})"));
        format!(
            "--- page\n{page}\n--- chromedriver log (tail)\n{}",
            self.driver_log_tail()
        )
    }

    fn driver_log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.driver_log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), client.close()).await
            });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Whether chromedriver at `port` says it is ready (`GET /status`).
fn driver_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(
        stream,
        "GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"ready\":true") || answer.contains("\"ready\": true")
}
