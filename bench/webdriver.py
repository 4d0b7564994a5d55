"""Debian's chromedriver spoken to over the W3C WebDriver protocol with urllib and JSON (no
client library), for section 8 (bench/sections/ui.py)."""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

from common import free_port, stop


class WebDriverError(Exception):
    pass


class WebDriver:
    """Debian's chromedriver on a free port of 127.0.0.1, spoken to over the W3C WebDriver
    protocol with urllib and JSON (no client library), plus chromedriver's CDP passthrough
    (`goog/cdp/execute`). Its working directory and log are under `work`, so every process it
    and Chromium start is found there (measure.py reap)."""

    def __init__(self, chromedriver, work):
        self.work = work
        self.port = free_port()
        self.log = os.path.join(work, "chromedriver.log")
        self.base = f"http://127.0.0.1:{self.port}"
        self.sid = None
        self.proc = subprocess.Popen(
            [chromedriver, f"--port={self.port}", f"--log-path={self.log}"],
            cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.perf_counter() + 30
        while True:
            try:
                if (self.call("GET", "/status", timeout=2) or {}).get("ready"):
                    break
            except (WebDriverError, OSError):
                pass
            if self.proc.poll() is not None:
                raise WebDriverError(f"chromedriver exited with {self.proc.returncode}: "
                                     f"{self.log_tail()}")
            if time.perf_counter() > deadline:
                raise WebDriverError(f"chromedriver not ready after 30 s: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, n=1500):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return "(no log)"

    def call(self, method, path, body=None, timeout=120):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"{}").get("value")
        except urllib.error.HTTPError as e:
            try:
                value = json.loads(e.read()).get("value", {})
                why = f"{value.get('error')}: {value.get('message', '')[:1500]}"
            except ValueError:
                why = str(e)
            raise WebDriverError(f"{method} {path}: {e.code} {why}") from None

    def session(self, chromium, profile, window="1440,900"):
        """A new session: headless Chromium on a fresh profile (as crates/slipway/tests/util/
        browser.rs starts it), its JS heap figures precise (`performance.memory`)."""
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": [
                "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--hide-scrollbars",
                "--force-device-scale-factor=1", f"--window-size={window}", "--lang=en-US",
                "--enable-precise-memory-info", f"--user-data-dir={profile}",
            ]},
        }}}
        value = self.call("POST", "/session", caps)
        self.sid = value["sessionId"]
        return value.get("capabilities", {})

    def s(self, method, path, body=None, timeout=120):
        return self.call(method, f"/session/{self.sid}{path}", body, timeout)

    def js(self, script, *args, timeout=120):
        """Runs script (a function body) in the page; a returned promise is awaited."""
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)}, timeout)

    def cdp(self, cmd, **params):
        return self.s("POST", "/goog/cdp/execute", {"cmd": cmd, "params": params})

    def goto(self, url):
        self.s("POST", "/url", {"url": url})

    def element(self, css):
        value = self.s("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(value.values()))

    def type_into(self, css, text):
        self.s("POST", f"/element/{self.element(css)}/value", {"text": text})

    def click(self, css):
        self.s("POST", f"/element/{self.element(css)}/click", {})

    def wait_js(self, script, what, timeout=60, args=()):
        """Polls script until it returns a true value; returns it."""
        deadline = time.perf_counter() + timeout
        while True:
            got = self.js(script, *args)
            if got:
                return got
            if time.perf_counter() > deadline:
                state = self.js("return [location.href, document.title, "
                                "(document.querySelector('#main') || document.body)"
                                ".innerText.slice(0, 400)];")
                raise WebDriverError(f"timed out waiting for {what}; the page: {state}")
            time.sleep(0.02)

    def end_session(self):
        if self.sid:
            sid, self.sid = self.sid, None
            try:
                self.call("DELETE", f"/session/{sid}", timeout=30)
            except (WebDriverError, OSError):
                pass
    def close(self):
        self.end_session()
        stop(self.proc, timeout=10)
