// Slipway's web UI: every environment at a glance, live, with the actions a developer needs.
//
// A client of the same HTTP API as the CLI (/api/v1, described by /api/v1/openapi.json). It
// logs in by exchanging an API token for a session cookie (POST /api/v1/session); the token is
// not kept by the page. Every call sends the session's CSRF token in X-Slipway-CSRF (an
// EventSource, which cannot send a header, as `?csrf=`): the cookie alone is refused, since a
// browser sends it to every port of this host, where an environment's processes may listen.
// The token is kept in this origin's localStorage, which no other port's page can read. Live
// updates come from the server-sent events of /api/v1/events: an event names the environment
// it concerns, and that environment is read again.
//
// The page is built with DOM calls and text nodes only (no HTML parsed from strings), and the server's
// Content-Security-Policy forbids any script but this file.
"use strict";

(function () {
  const ROLES = ["viewer", "developer", "deployer", "admin"];
  const SYNC = {
    synced: ["ok", "✓"],
    out_of_sync: ["warn", "≠"],
    syncing: ["busy", "⟳"],
    failed: ["bad", "✗"],
  };
  const HEALTH = {
    healthy: ["ok", "♥"],
    progressing: ["busy", "◔"],
    degraded: ["bad", "▲"],
    missing: ["idle", "○"],
  };
  // Shown only when it is not `awake` (what nearly every environment is).
  const ACTIVITY = {
    sleeping: ["idle", "☾"],
    queued: ["idle", "…"],
  };
  const RESOURCE = {
    ready: ["ok", "✓"],
    creating: ["busy", "⟳"],
    updating: ["busy", "⟳"],
    deleting: ["busy", "⟳"],
    failed: ["bad", "✗"],
    missing: ["bad", "○"],
    drifted: ["warn", "≠"],
  };
  const DEPLOYMENT = {
    succeeded: ["ok", "✓"],
    running: ["busy", "⟳"],
    failed: ["bad", "✗"],
    interrupted: ["warn", "⚠"],
  };
  const KINDS = { static: "static", generated: "generated", adhoc: "ad-hoc" };
  const REPLICA = {
    alive: ["ok", "●"],
    silent: ["bad", "○"],
  };
  // A safety net for a missed event (a proxy that dropped the stream unnoticed): the whole
  // list is read again this often while the page is visible.
  const FULL_REFRESH_MS = 60000;
  // Replicas sharing a PostgreSQL state beat every third of their lease, and no event says
  // that one went silent or that an environment changed hands: while there are replicas,
  // their list is read again this often.
  const REPLICAS_REFRESH_MS = 5000;
  // After the set of live replicas changes, environments change hands over the next leases:
  // the environments are read again with the replicas for this long.
  const REPLICAS_SETTLE_MS = 30000;

  const state = {
    me: null, // {name, role, csrf, via}
    envs: new Map(), // name -> Environment, as the API answers
    loaded: false,
    filters: { state: "", kind: "", owner: "", q: "" },
    view: null, // what is on screen: {name, env?, ...}
    stream: null, // the EventSource of /api/v1/events
    streamOpen: false, // whether it is open now
    rows: new Map(), // name -> the dashboard row last built for it, shown or not
    version: 0, // counts changes of `envs`: what is derived from them is made again
    derived: null, // {version, sorted, counts, families, owners, anyReplica}: see `derived`
    shown: null, // {version, filters, list}: the environments the filters leave, by name
    rowHeight: 0, // the dashboard's row pitch in px, measured (0: not yet)
    renderQueued: false, // a scroll or resize has asked for the rows in view
    lastEventId: null,
    eventCount: 0,
    watches: [], // operations waiting for an event: {env, since, kinds, done}
    timers: new Map(), // debounced refreshes by key
    replicas: [], // the replicas sharing the state, as /api/v1/replicas answered; none with SQLite
    replicasAt: 0, // Date.now() when that answer came
    replicasLive: null, // the names of the live ones then, to notice a change
    settleUntil: 0, // read the environments with the replicas until then
  };

  const $ = (selector, root) => (root || document).querySelector(selector);

  // ---------------------------------------------------------------- DOM helpers

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value);
      } else if (key === "class") {
        el.className = value;
      } else if (key === "dataset") {
        Object.assign(el.dataset, value);
      } else if (key === "value") {
        el.value = value;
      } else if (value === true) {
        el.setAttribute(key, "");
      } else {
        el.setAttribute(key, String(value));
      }
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  /**
   * Marks `button` busy (or not) while what it started runs. Not `disabled`: a disabled
   * button loses keyboard focus to the page's body; `aria-disabled` keeps it where the person
   * is, says it is unavailable, and the click guard in `boot` swallows clicks meanwhile.
   */
  function busy(button, on) {
    if (!button) return;
    if (on) button.setAttribute("aria-disabled", "true");
    else button.removeAttribute("aria-disabled");
  }

  /** A link only to http(s) URLs: text from the API never becomes a `javascript:` link. */
  function link(url, text, attrs) {
    if (typeof url !== "string" || !/^https?:\/\//i.test(url) || rawAddress(url)) return text || url || "";
    return h("a", Object.assign({ href: url, rel: "noopener noreferrer", target: "_blank" }, attrs || {}), text || url);
  }

  /**
   * Whether `url` is a process's own address rather than a page: a loopback or unspecified
   * IP, bare `localhost`, or this page's host on another port. Cookies are not port-scoped, so
   * the session cookie would go along to whatever listens there; such addresses stay text and
   * the preview URL (through the router, which strips the cookie) is what gets linked.
   */
  function rawAddress(url) {
    let parsed;
    try {
      parsed = new URL(url);
    } catch (_) {
      return true;
    }
    const host = parsed.hostname.toLowerCase();
    if (host === "localhost" || host === "[::1]" || host === "[::]" || host === "0.0.0.0" || /^127\./.test(host)) return true;
    return host === location.hostname.toLowerCase() && parsed.port !== location.port;
  }

  function badge(table, value, label) {
    const [tone, icon] = table[value] || ["idle", "•"];
    return h(
      "span",
      { class: `badge ${tone}`, dataset: { value: value || "" }, title: label ? `${label}: ${value}` : null },
      h("span", { class: "icon", "aria-hidden": "true" }, icon),
      " ",
      (value || "unknown").replace(/_/g, " "),
    );
  }

  /** A queued environment's chip, with its place in its family's line; null for any other. */
  function queuedChip(env) {
    if (env.activity !== "queued") return null;
    const place = env.queue_position ? ` (#${env.queue_position})` : "";
    return h(
      "span",
      {
        class: "badge warn",
        dataset: { activity: "queued" },
        title: `Queued${place}: its family runs as many environments as max_environments allows; it starts when one of them goes. Nothing runs for it yet.`,
      },
      h("span", { class: "icon", "aria-hidden": "true" }, "⏳"),
      " ",
      `queued${place}`,
    );
  }

  function short(sha) {
    return sha ? sha.slice(0, 8) : "";
  }

  /** Whether a ref is a full commit id (a pinned environment plans one). */
  function isSha(ref) {
    return typeof ref === "string" && /^[0-9a-f]{40}([0-9a-f]{24})?$/.test(ref);
  }

  function commit(sha) {
    return sha ? h("code", { title: sha, class: "mono" }, short(sha)) : h("span", { class: "muted" }, "none yet");
  }

  function duration(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${s % 60}s`;
    const hrs = Math.floor(m / 60);
    if (hrs < 48) return `${hrs}h ${m % 60}m`;
    return `${Math.floor(hrs / 24)}d ${hrs % 24}h`;
  }

  function ago(iso) {
    return iso ? since(Date.parse(iso)) : "";
  }

  function time(iso, text) {
    return iso ? h("time", { datetime: iso, title: new Date(iso).toLocaleString() }, text || ago(iso)) : "";
  }

  /** A TTL countdown, kept current by `tick`. */
  function countdown(iso) {
    if (!iso) return h("span", { class: "muted" }, "no expiry");
    const el = h("time", { datetime: iso, title: `expires ${new Date(iso).toLocaleString()}`, dataset: { expires: iso } });
    el.textContent = remaining(iso);
    return el;
  }

  function remaining(iso) {
    const left = Date.parse(iso) - Date.now();
    return left <= 0 ? "expired" : `${duration(left)} left`;
  }

  function tick() {
    for (const el of document.querySelectorAll("[data-expires]")) {
      const text = remaining(el.dataset.expires);
      if (el.textContent !== text) el.textContent = text;
    }
    for (const el of document.querySelectorAll("[data-heard]")) {
      const text = since(Number(el.dataset.heard));
      if (el.textContent !== text) el.textContent = text;
    }
  }

  /** How long ago `at` (this page's clock, in ms) was. */
  function since(at) {
    const ms = Date.now() - at;
    return ms < 5000 ? "just now" : `${duration(ms)} ago`;
  }

  // ---------------------------------------------------------------- the API

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error) || `the server answered ${status}`);
      this.status = status;
      this.hint = body && body.hint;
    }
  }

  /** Where the session's CSRF token is kept: this origin's own storage, port included. */
  const CSRF_KEY = "slipway.csrf";

  /** The session's CSRF token: the one stored (another tab may have logged in again since). */
  function csrfToken() {
    let stored = null;
    try {
      stored = localStorage.getItem(CSRF_KEY);
    } catch (_) {
      // Storage refused (a private window's policy): the token this page was given.
    }
    return stored || (state.me && state.me.csrf) || null;
  }

  function keepCsrf(token) {
    try {
      if (token) localStorage.setItem(CSRF_KEY, token);
      else localStorage.removeItem(CSRF_KEY);
    } catch (_) {
      // Kept in `state.me` only: a reload logs in again.
    }
  }

  /** `path` with the session's CSRF token, for an EventSource (which sends no header). */
  function streamPath(path) {
    const token = csrfToken();
    if (!token) return path;
    return `${path}${path.includes("?") ? "&" : "?"}csrf=${encodeURIComponent(token)}`;
  }

  function describe(error) {
    if (error instanceof ApiError) return error.hint ? `${error.message} (${error.hint})` : error.message;
    return `cannot reach the server: ${error.message || error}`;
  }

  async function api(method, path, body, extraHeaders) {
    const headers = Object.assign({ Accept: "application/json" }, extraHeaders || {});
    const bearer = extraHeaders && extraHeaders.Authorization;
    const csrf = csrfToken();
    if (csrf && !bearer) headers["X-Slipway-CSRF"] = csrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = { error: text.slice(0, 300) };
      }
    }
    if (response.status === 401 && !bearer) {
      loggedOut(state.me ? "Your session has ended (logged out, expired, or its token revoked): log in again." : "");
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  // ---------------------------------------------------------------- roles

  function atLeast(role) {
    return state.me !== null && ROLES.indexOf(state.me.role) >= ROLES.indexOf(role);
  }

  /** Whether the caller may change `env`: a developer ad-hoc and generated ones, a deployer all. */
  function mayChange(env) {
    return env.kind === "static" ? atLeast("deployer") : atLeast("developer");
  }

  // ---------------------------------------------------------------- toasts (progress and outcome)

  function toast(text, stateName) {
    const body = h("span", { class: "text" }, text);
    const el = h(
      "div",
      { class: "toast", dataset: { state: stateName || "busy" } },
      body,
      h("button", { type: "button", class: "close", "aria-label": "Dismiss", onclick: () => el.remove() }, "×"),
    );
    $("#toasts").append(el);
    const handle = {
      el,
      update(next, nextState) {
        body.textContent = next;
        el.dataset.state = nextState || "busy";
        if (nextState === "ok") setTimeout(() => el.remove(), 8000);
      },
    };
    if (stateName === "ok") setTimeout(() => el.remove(), 8000);
    return handle;
  }

  /**
   * Runs one action: `button` disabled and `working` shown while the call runs; the toast then
   * says how it ended. `follow` (an environment) keeps the toast open until that environment's
   * next deployment ends, as the event stream reports it.
   */
  async function act({ button, working, call, done, follow }) {
    const note = toast(`${working}…`, "busy");
    busy(button, true);
    // Watching starts before the call: the deployment's events may arrive before its answer.
    const watching = follow ? watch(follow, note, working) : null;
    try {
      const result = await call();
      const text = typeof done === "function" ? done(result) : done;
      if (watching && state.watches.includes(watching)) {
        watching.prefix = text;
        note.update(`${text}; waiting for the deployment…`, "busy");
      } else if (!watching) {
        note.update(text, "ok");
      }
      return result;
    } catch (error) {
      unwatch(watching);
      note.update(`${working} failed: ${describe(error)}`, "error");
      return null;
    } finally {
      busy(button, false);
    }
  }

  function watch(env, note, prefix) {
    const watching = { env, note, prefix };
    state.watches.push(watching);
    return watching;
  }

  function unwatch(watching) {
    state.watches = state.watches.filter((w) => w !== watching);
  }

  function settleWatches(event) {
    state.watches = state.watches.filter((w) => {
      if (w.env !== event.environment) return true;
      if (event.kind === "apply.succeeded") {
        w.note.update(`${w.prefix}: deployed. ${event.message}`, "ok");
      } else if (event.kind === "apply.failed" || event.kind === "destroy.failed") {
        w.note.update(`${w.prefix}: the deployment failed: ${event.message}`, "error");
      } else if (event.kind === "change.held" || event.kind === "commit.invalid") {
        w.note.update(`${w.prefix}: held: ${event.message}`, "error");
      } else if (event.kind === "sync.unchanged" || event.kind === "environment.queued") {
        w.note.update(`${w.prefix}: ${event.message}.`, "ok");
      } else if (event.kind === "environment.destroyed" || event.kind === "environment.expired") {
        w.note.update(`${w.prefix}: ${event.message}`, "ok");
      } else {
        if (event.kind === "apply.started") w.note.update(`${w.prefix}: ${event.message}…`, "busy");
        return true;
      }
      return false;
    });
  }

  // ---------------------------------------------------------------- session

  async function boot() {
    // A busy button (see `busy`) does nothing until what it started has ended.
    document.addEventListener(
      "click",
      (e) => {
        if (e.target instanceof Element && e.target.closest('[aria-disabled="true"]')) {
          e.preventDefault();
          e.stopImmediatePropagation();
        }
      },
      true,
    );
    $("#skip").addEventListener("click", (e) => {
      e.preventDefault();
      $("#main").focus();
    });
    $("#logout").addEventListener("click", logout);
    window.addEventListener("hashchange", route);
    window.addEventListener("scroll", () => queueRows(false), { passive: true });
    window.addEventListener("resize", () => queueRows(true));
    setInterval(tick, 1000);
    setInterval(() => {
      if (state.me && document.visibilityState === "visible") {
        refreshList();
        refreshReplicas();
      }
    }, FULL_REFRESH_MS);
    setInterval(() => {
      // With SQLite there are no replicas: nothing is asked but the one read at login and
      // the full refresh's, unless the replicas' page is open.
      const wanted = state.replicas.length > 0 || (state.view && state.view.name === "replicas");
      if (state.me && wanted && document.visibilityState === "visible") refreshReplicas();
    }, REPLICAS_REFRESH_MS);
    if (!csrfToken()) {
      // No session this page can prove (the cookie alone is refused): log in.
      showLogin("");
      return;
    }
    try {
      state.me = await api("GET", "/api/v1/whoami");
      keepCsrf(state.me.csrf);
      loggedIn(false);
    } catch (error) {
      if (error instanceof ApiError && error.status === 403) {
        // A token of a session that ended here or was replaced: log in again.
        keepCsrf(null);
        showLogin("");
      } else if (!(error instanceof ApiError && error.status === 401)) {
        showLogin(describe(error));
      }
    }
  }

  // The sign-in to a private preview sends a browser without a session here with
  // `?next=/.slipway/preview-sign-in?...`: once signed in, it goes back there (that path
  // only: `next` is no open redirect).
  const SIGN_IN = "/.slipway/preview-sign-in?";

  /** The preview sign-in this page was asked to go on to once logged in (`?next=`), if any. */
  function signInNext() {
    const next = new URLSearchParams(location.search).get("next");
    return next && next.startsWith(SIGN_IN) ? next : null;
  }

  /**
   * Logged in: `fresh` when the person has just submitted the login form. A private
   * preview's sign-in sent them to it (`?next=`), and goes on at once. Already logged in, a
   * page asking to go on is any site's link (the URL is plain): the person is asked, so that
   * the code of one preview cannot sign its visitor in to another's.
   */
  function loggedIn(fresh) {
    const next = signInNext();
    if (next && fresh) {
      const form = signInForm(next);
      form.hidden = true;
      document.body.append(form);
      form.submit();
      return;
    }
    $("#who").hidden = false;
    clear($("#who")).append(h("span", { id: "who-name" }, state.me.name), " ", h("span", { class: "tag", id: "who-role" }, state.me.role));
    $("#logout").hidden = false;
    $("#nav").hidden = false;
    connect();
    if (next) {
      history.replaceState(null, "", location.pathname + location.hash);
      showContinue(next);
    } else {
      route();
    }
  }

  /**
   * The form that signs this session in to the preview `next` (a sign-in URL) asks for: a
   * `POST` with the session's CSRF token, which no other page can read (a preview's page can
   * make the browser send the session cookie to the sign-in, never the token).
   */
  function signInForm(next) {
    const asked = new URL(next, location.origin).searchParams;
    const form = h("form", { method: "post", action: SIGN_IN.slice(0, -1), id: "continue-form" });
    for (const name of ["env", "stack", "next"]) {
      form.append(h("input", { type: "hidden", name, value: asked.get(name) || "" }));
    }
    form.append(h("input", { type: "hidden", name: "csrf", value: csrfToken() || "" }));
    return form;
  }

  /** What the login page says of the preview a sign-in will open: which one, and where. */
  function previewNote(next) {
    const asked = new URL(next, location.origin).searchParams;
    return h("p", { id: "preview-note" }, "Logging in opens the private preview of ",
      h("code", {}, asked.get("env") || "?"), " (stack ", h("code", {}, asked.get("stack") || "?"),
      "), at ", h("code", {}, asked.get("next") || "/"), ".");
  }

  function showContinue(next) {
    closeViewStreams();
    state.view = { name: "continue" };
    const asked = new URL(next, location.origin).searchParams;
    const form = signInForm(next);
    // Enabled a moment after it shows: a click meant for another page (one that moved its
    // opener here under the pointer) does not land on it.
    const open = h("button", { id: "continue-sign-in", type: "submit", disabled: true }, "Open the preview");
    setTimeout(() => { open.disabled = false; }, 1000);
    form.append(
      h("div", { class: "row" },
        open,
        " ",
        h("a", { id: "continue-dashboard", href: "#/" }, "Go to the dashboard"),
      ),
    );
    clear($("#main")).append(
      h("h1", {}, "Open a private preview?"),
      h("p", { id: "continue-note" }, "A link asks to sign you in to the private preview of ",
        h("code", { id: "continue-env" }, asked.get("env") || "?"), " (stack ", h("code", {}, asked.get("stack") || "?"),
        "). Go on only if you meant to open it."),
      form,
    );
  }

  function loggedOut(why) {
    if (state.stream) state.stream.close();
    state.streamOpen = false;
    state.stream = null;
    state.me = null;
    keepCsrf(null);
    setEnvs([]);
    state.rows.clear();
    state.loaded = false;
    state.replicas = [];
    state.replicasLive = null;
    state.settleUntil = 0;
    $("#nav-replicas").hidden = true;
    $("#served-by").hidden = true;
    $("#who").hidden = true;
    $("#logout").hidden = true;
    $("#nav").hidden = true;
    live("offline");
    showLogin(why);
  }

  function showLogin(why) {
    if (state.view && state.view.name === "login") {
      if (why) clear($("#login-error")).append(why);
      return;
    }
    closeViewStreams();
    state.view = { name: "login" };
    document.title = "Log in — Slipway";
    const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "off", required: true, spellcheck: "false", "aria-describedby": "token-hint login-error" });
    const submit = h("button", { type: "submit", class: "primary", id: "login-submit" }, "Log in");
    const error = h("p", { id: "login-error", class: "error", role: "alert" }, why || "");
    const form = h(
      "form",
      { class: "panel login", id: "login" },
      h("h1", { tabindex: "-1" }, "Log in to Slipway"),
      signInNext() ? previewNote(signInNext()) : null,
      h("label", { for: "token" }, "API token"),
      input,
      h("p", { class: "hint", id: "token-hint" }, "A token made with ", h("code", {}, "slipway token create --role developer"), ". It is exchanged for a session cookie and not kept by this page."),
      error,
      h("div", { class: "row" }, submit),
    );
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      submit.disabled = true;
      clear(error);
      try {
        const token = input.value.trim();
        const session = await api("POST", "/api/v1/session", undefined, { Authorization: `Bearer ${token}` });
        input.value = "";
        state.me = { name: session.name, role: session.role, csrf: session.csrf, via: "session" };
        keepCsrf(session.csrf);
        if (location.hash.startsWith("#/login")) location.hash = "#/";
        loggedIn(true);
      } catch (err) {
        error.append(err instanceof ApiError && err.status === 401 ? "That token is unknown or revoked." : describe(err));
        submit.disabled = false;
        input.focus();
      }
    });
    clear($("#main")).append(form);
    input.focus();
  }

  async function logout() {
    try {
      await api("DELETE", "/api/v1/session");
    } catch (_) {
      // Ended already (expired, or logged out elsewhere): the page logs out all the same.
    }
    loggedOut("");
  }

  // ---------------------------------------------------------------- live events

  function live(stateName, text) {
    const el = $("#live");
    el.dataset.state = stateName;
    el.dataset.events = String(state.eventCount);
    el.textContent = text || stateName;
  }

  function connect() {
    if (state.stream) state.stream.close();
    // After a drop, resume after the last event seen: nothing is lost, nothing seen twice.
    const url = state.lastEventId === null ? "/api/v1/events" : `/api/v1/events?after=${state.lastEventId}`;
    const stream = new EventSource(streamPath(url));
    state.stream = stream;
    live("reconnecting", "connecting");
    stream.onopen = () => {
      state.streamOpen = true;
      live("live");
      // Whatever changed before the stream was open is read now: the list is read only once
      // the stream is open, so no event falls between the two.
      refreshList();
      refreshReplicas();
      refreshView();
    };
    stream.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (_) {
        return;
      }
      state.lastEventId = event.id;
      state.eventCount += 1;
      $("#live").dataset.events = String(state.eventCount);
      onEvent(event);
    };
    stream.onerror = () => {
      state.streamOpen = false;
      if (stream.readyState === EventSource.CLOSED) {
        // Refused (a session that ended) or the server is gone: find out which, then retry.
        live("offline");
        state.stream = null;
        setTimeout(async () => {
          if (!state.me) return;
          try {
            await api("GET", "/api/v1/whoami");
            if (state.me && !state.stream) connect();
          } catch (_) {
            // `api` shows the login page on a 401; otherwise try again later.
            if (state.me && !state.stream) setTimeout(connect, 5000);
          }
        }, 2000);
      } else {
        live("reconnecting");
      }
    };
  }

  function later(key, delay, fn) {
    clearTimeout(state.timers.get(key));
    state.timers.set(
      key,
      setTimeout(() => {
        state.timers.delete(key);
        fn();
      }, delay),
    );
  }

  function onEvent(event) {
    settleWatches(event);
    const env = event.environment;
    if (env) {
      later(`env:${env}`, 150, () => refreshEnvironment(env));
    } else {
      later("list", 300, refreshList);
    }
    const view = state.view || {};
    if (view.name === "env" && env === view.env) {
      later("env-page", 200, () => refreshEnvPage(/^apply\.|^destroy|^environment\.(pinned|unpinned|dequeued)|^drift\./.test(event.kind)));
    }
    if (view.name === "pulls" && (!env || env.startsWith("pr-") || event.kind.startsWith("pull_request") || event.kind.startsWith("lock."))) {
      later("pulls", 300, refreshPulls);
    }
  }

  // ---------------------------------------------------------------- data

  async function refreshList() {
    if (!state.me) return;
    try {
      const list = await api("GET", "/api/v1/environments");
      setEnvs(list.environments);
      state.loaded = true;
      renderDashboardData();
      renderReplicas();
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401) && state.view && state.view.name === "dashboard") {
        showError(describe(error));
      }
    }
  }

  async function refreshEnvironment(name) {
    if (!state.me) return;
    try {
      const env = await api("GET", `/api/v1/environments/${encodeURIComponent(name)}`);
      putEnv(env);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) dropEnv(name);
      else return;
    }
    renderDashboardData();
    const view = state.view || {};
    if (view.name === "env" && view.env === name) {
      renderEnvHeader();
      // The history marks the running commit and offers Roll back to the others: drawn
      // against an older commit, it would offer to roll back to the one now running.
      const env = state.envs.get(name);
      if (env && view.deployments && view.historyCommit !== env.commit) renderHistory(env);
    }
  }

  /**
   * Reads the replicas sharing the state (none with SQLite): the Replicas page, the nav link
   * to it, the header's "served by" and the Replica column follow. When the set of live
   * replicas changes, environments change hands over the next leases, and no event says so:
   * the environments are read again with the replicas for a while.
   */
  async function refreshReplicas() {
    if (!state.me) return;
    let list;
    try {
      list = await api("GET", "/api/v1/replicas");
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401) && state.view && state.view.name === "replicas") {
        showError(describe(error));
      }
      return;
    }
    if (!state.me) return;
    const wasMulti = multiReplica();
    const wasServing = servingReplica();
    state.replicas = list.replicas;
    state.replicasAt = Date.now();
    const live = JSON.stringify(list.replicas.filter((r) => r.alive).map((r) => r.name));
    if (state.replicasLive !== null && state.replicasLive !== live) state.settleUntil = Date.now() + REPLICAS_SETTLE_MS;
    state.replicasLive = live;
    if (Date.now() < state.settleUntil) {
      refreshList();
      const view = state.view || {};
      if (view.name === "env") refreshEnvironment(view.env);
    }
    const nav = $("#nav-replicas");
    nav.hidden = list.replicas.length === 0;
    clear(nav).append("Replicas ", h("span", { class: "muted" }, `(${list.replicas.length})`));
    const serving = servingReplica();
    const servedBy = $("#served-by");
    servedBy.hidden = !serving;
    servedBy.textContent = serving ? `replica ${serving}` : "";
    if (wasMulti !== multiReplica() || wasServing !== serving) {
      renderDashboardData();
      const view = state.view || {};
      if (view.name === "env") renderEnvHeader();
    }
    renderReplicas();
  }

  /** Whether several replicas may share the state (PostgreSQL): then who holds what is shown. */
  function multiReplica() {
    return state.replicas.length > 0 || derived().anyReplica;
  }

  /** The name of the replica answering this page, when there are replicas. */
  function servingReplica() {
    const me = state.replicas.find((r) => r.this);
    return me ? me.name : null;
  }

  function refreshView() {
    const view = state.view || {};
    if (view.name === "env") refreshEnvPage(true);
    if (view.name === "pulls") refreshPulls();
  }

  function showError(text) {
    const slot = $("#view-error");
    if (slot) clear(slot).append(text);
  }

  // ---------------------------------------------------------------- routing

  function route() {
    if (!state.me) return;
    const hash = location.hash || "#/";
    if (!hash.startsWith("#/")) return;
    closeViewStreams();
    const [path, query] = hash.slice(1).split("?");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    for (const a of document.querySelectorAll("#nav a")) a.removeAttribute("aria-current");
    if (parts[0] === "env" && parts[1]) {
      $("#nav-environments").setAttribute("aria-current", "page");
      showEnvironment(parts[1]);
    } else if (parts[0] === "pulls") {
      $("#nav-pulls").setAttribute("aria-current", "page");
      showPulls();
    } else if (parts[0] === "replicas") {
      $("#nav-replicas").setAttribute("aria-current", "page");
      showReplicas();
    } else {
      $("#nav-environments").setAttribute("aria-current", "page");
      showDashboard(new URLSearchParams(query || ""));
    }
  }

  function closeViewStreams() {
    if (state.view && state.view.stream) state.view.stream.close();
  }

  function focusHeading() {
    const heading = $("#main h1");
    if (heading) heading.focus({ preventScroll: true });
  }

  // ---------------------------------------------------------------- dashboard

  function showDashboard(params) {
    state.view = { name: "dashboard" };
    document.title = "Environments — Slipway";
    // The filters are the URL's: a link or a bookmark shows the same list.
    for (const key of Object.keys(state.filters)) state.filters[key] = params.get(key) || "";
    $("#nav-environments").setAttribute("href", dashboardHref());
    const f = state.filters;
    const search = h("input", { type: "search", id: "filter-q", placeholder: "name, ref, commit, owner, message", value: f.q });
    for (const kind of ["input", "change", "search"]) search.addEventListener(kind, () => setFilter("q", search.value));
    const stateSelect = h(
      "select",
      { id: "filter-state" },
      h("option", { value: "" }, "any state"),
      h("optgroup", { label: "Sync" }, Object.keys(SYNC).map((s) => h("option", { value: `sync:${s}` }, s.replace(/_/g, " ")))),
      h("optgroup", { label: "Health" }, Object.keys(HEALTH).map((s) => h("option", { value: `health:${s}` }, s))),
    );
    stateSelect.value = f.state;
    stateSelect.addEventListener("change", () => setFilter("state", stateSelect.value));
    const kindSelect = h("select", { id: "filter-kind" }, h("option", { value: "" }, "any kind or family"));
    kindSelect.addEventListener("change", () => setFilter("kind", kindSelect.value));
    const ownerSelect = h("select", { id: "filter-owner" }, h("option", { value: "" }, "anyone"));
    ownerSelect.addEventListener("change", () => setFilter("owner", ownerSelect.value));
    const create = atLeast("developer")
      ? h("button", { type: "button", class: "primary", id: "create-open", onclick: openCreate }, "New environment")
      : null;
    const main = clear($("#main"));
    main.append(
      h("h1", { tabindex: "-1" }, "Environments ", h("span", { class: "muted", id: "env-count" })),
      h(
        "div",
        { class: "toolbar", role: "search", "aria-label": "Filter environments" },
        h("div", { class: "field grow" }, h("label", { for: "filter-q" }, "Search"), search),
        h("div", { class: "field" }, h("label", { for: "filter-state" }, "State"), stateSelect),
        h("div", { class: "field" }, h("label", { for: "filter-kind" }, "Kind or family"), kindSelect),
        h("div", { class: "field" }, h("label", { for: "filter-owner" }, "Owner"), ownerSelect),
        h("div", { class: "field actions" }, create),
      ),
      h("ul", { class: "counts", id: "counts", "aria-label": "Environments by state" }),
      h("p", { id: "view-error", class: "error", role: "alert" }),
      h(
        "table",
        { class: "cards", id: "environments" },
        h("caption", { class: "sr-only" }, "Environments"),
        h("thead", {}, h("tr", { id: "env-columns", "aria-rowindex": "1" })),
        h("tbody", {}),
      ),
    );
    focusHeading();
    renderDashboardData();
    // The stream's opening reads the list (once); read it here only when the stream is
    // already open, or has not opened after a while (a proxy that holds event streams).
    if (!state.loaded) {
      if (state.streamOpen) refreshList();
      else setTimeout(() => { if (!state.loaded) refreshList(); }, 2000);
    }
  }

  function setFilter(key, value) {
    state.filters[key] = value;
    history.replaceState(null, "", dashboardHref());
    $("#nav-environments").setAttribute("href", dashboardHref());
    renderDashboardData();
  }

  /** The dashboard with the current filters. */
  function dashboardHref() {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(state.filters)) if (v) params.set(k, v);
    const text = params.toString();
    return text ? `#/?${text}` : "#/";
  }

  function family(env) {
    // The `environments:` entry it follows, when the API says (a generated or ad-hoc one's
    // family); the kind otherwise.
    return env.family || env.definition || null;
  }

  function matches(env, f) {
    if (f.state) {
      const [field, value] = f.state.split(":");
      if (env[field] !== value) return false;
    }
    if (f.kind && env.kind !== f.kind && family(env) !== f.kind) return false;
    if (f.owner && (env.owner || "") !== f.owner) return false;
    if (f.q) {
      const q = f.q.toLowerCase();
      const text = [env.name, env.kind, env.tracked_ref, env.commit, env.desired_commit, env.owner, env.message, env.url, family(env), env.replica]
        .filter(Boolean)
        .join(" ")
        .toLowerCase();
      if (!text.includes(q)) return false;
    }
    return true;
  }

  /** The dashboard's columns, [title, key]: Replica only when several replicas may share the state. */
  function dashboardColumns() {
    const columns = [["Environment", "name"], ["Kind", "kind"], ["Ref", "ref"], ["Commit", "commit"], ["Sync", "sync"], ["Health", "health"], ["Preview", "url"], ["Owner", "owner"], ["TTL", "ttl"], ["Lock", "lock"]];
    if (multiReplica()) columns.push(["Replica", "replica"]);
    columns.push(["Message", "message"], ["", "actions"]);
    return columns;
  }

  // ---------------------------------------------------------------- the environments, and what the dashboard derives from them

  /** Every environment anew, as the list answered. */
  function setEnvs(list) {
    state.envs = new Map(list.map((e) => [e.name, e]));
    state.version += 1;
  }

  /** One environment, new or read again. */
  function putEnv(env) {
    state.envs.set(env.name, env);
    state.version += 1;
  }

  function dropEnv(name) {
    if (state.envs.delete(name)) state.version += 1;
  }

  /** By name, as the API lists them (names are DNS labels: plain code-unit order). */
  function byName(a, b) {
    return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
  }

  /**
   * What the dashboard shows of all the environments, made once per change of them (not per
   * filter change or scroll): sorted by name, counted by state, their families and owners.
   */
  function derived() {
    if (state.derived && state.derived.version === state.version) return state.derived;
    // Nearly sorted already (the list comes sorted, a new one is appended): the sort's
    // merge of runs makes this about linear.
    const sorted = [...state.envs.values()].sort(byName);
    const counts = new Map();
    const families = new Set();
    const owners = new Set();
    let anyReplica = false;
    for (const env of sorted) {
      for (const key of [`sync:${env.sync}`, `health:${env.health}`]) counts.set(key, (counts.get(key) || 0) + 1);
      const f = family(env);
      if (f) families.add(f);
      if (env.owner) owners.add(env.owner);
      if (env.replica) anyReplica = true;
    }
    state.derived = { version: state.version, sorted, counts, families: [...families].sort(), owners: [...owners].sort(), anyReplica };
    return state.derived;
  }

  /** The environments the filters leave, by name: filtered again only when they or the filters change. */
  function shownEnvs() {
    const key = JSON.stringify(state.filters);
    if (state.shown && state.shown.version === state.version && state.shown.filters === key) return state.shown.list;
    const f = state.filters;
    const list = f.state || f.kind || f.owner || f.q ? derived().sorted.filter((e) => matches(e, f)) : derived().sorted;
    state.shown = { version: state.version, filters: key, list };
    return list;
  }

  // The lower-cased text the search looks in, per environment object (a new object when it
  // is read again, so never stale).
  const searchText = new WeakMap();
  // Its JSON, which says whether its row must be built again.
  const envText = new WeakMap();

  function matches(env, f) {
    if (f.state) {
      const [field, value] = f.state.split(":");
      if (env[field] !== value) return false;
    }
    if (f.kind && env.kind !== f.kind && family(env) !== f.kind) return false;
    if (f.owner && (env.owner || "") !== f.owner) return false;
    if (f.q) {
      let text = searchText.get(env);
      if (text === undefined) {
        text = [env.name, env.kind, env.tracked_ref, env.commit, env.desired_commit, env.owner, env.message, env.url, family(env), env.replica]
          .filter(Boolean)
          .join(" ")
          .toLowerCase();
        searchText.set(env, text);
      }
      if (!text.includes(f.q.toLowerCase())) return false;
    }
    return true;
  }

  function renderDashboardData() {
    if (!state.view || state.view.name !== "dashboard") return;
    const table = $("#environments");
    if (!table) return;
    const columns = dashboardColumns();
    const head = $("#env-columns");
    const signature = columns.map(([title]) => title).join("|");
    if (head.dataset.columns !== signature) {
      head.dataset.columns = signature;
      append(clear(head), columns.map(([title, key]) => h("th", { scope: "col", dataset: { column: key } }, title || h("span", { class: "sr-only" }, "Actions"))));
      // Another set of columns lays the rows out anew.
      state.rowHeight = 0;
    }
    const all = derived();
    const shown = shownEnvs();
    $("#env-count").textContent = state.loaded ? `(${shown.length} of ${all.sorted.length})` : "";
    // How many rows the filters leave (the table holds only those in view): for assistive
    // technology, and for the tests and benchmarks that wait on the list.
    table.setAttribute("aria-rowcount", String(shown.length + 1));
    table.dataset.shown = state.loaded ? String(shown.length) : "";

    // Filter choices from what exists.
    syncOptions($("#filter-kind"), [
      ...Object.keys(KINDS).map((k) => [k, KINDS[k]]),
      ...all.families.map((f) => [f, `family ${f}`]),
    ], state.filters.kind);
    syncOptions($("#filter-owner"), all.owners.map((o) => [o, o]), state.filters.owner);

    // Counts per state; each is a filter too.
    const counts = $("#counts");
    const countsKey = JSON.stringify([...all.counts, state.filters.state]);
    if (counts.dataset.drawn !== countsKey) {
      counts.dataset.drawn = countsKey;
      // The chip pressed is drawn again (its state changed): focus goes to its new self.
      const focused = counts.contains(document.activeElement) ? document.activeElement.dataset.count : null;
      clear(counts);
      const chip = (field, value, table) => {
        const key = `${field}:${value}`;
        const n = all.counts.get(key) || 0;
        const pressed = state.filters.state === key;
        const [tone, icon] = table[value];
        return h(
          "li",
          {},
          h(
            "button",
            {
              type: "button",
              class: `badge ${tone}`,
              "aria-pressed": pressed ? "true" : "false",
              dataset: { count: key },
              title: `${pressed ? "Show all" : "Show only"} ${value.replace(/_/g, " ")}`,
              onclick: () => {
                $("#filter-state").value = pressed ? "" : key;
                setFilter("state", pressed ? "" : key);
              },
            },
            h("span", { "aria-hidden": "true" }, icon),
            ` ${value.replace(/_/g, " ")}`,
            h("span", { class: "n" }, String(n)),
          ),
        );
      };
      for (const s of Object.keys(SYNC)) counts.append(chip("sync", s, SYNC));
      for (const s of Object.keys(HEALTH)) counts.append(chip("health", s, HEALTH));
      if (focused) {
        const again = counts.querySelector(`[data-count="${CSS.escape(focused)}"]`);
        if (again) again.focus();
      }
    }

    for (const name of state.rows.keys()) {
      if (!state.envs.has(name)) state.rows.delete(name);
    }
    renderRows();
  }

  // The rows the dashboard keeps in the document beyond those in view, above and below, in
  // px: scrolling, and moving through the rows with Tab, finds the next ones already there.
  const OVERSCAN_PX = 800;

  /**
   * Puts the rows in view (and OVERSCAN_PX around them) into the table, between two spacer
   * rows as tall as the rows left out, so the page scrolls as if every row were there: with
   * ten thousand environments the document holds a few dozen rows, and a filter change or a
   * scroll builds only those. Every row has the same height (app.css); it is measured from
   * the rows themselves.
   */
  function renderRows() {
    if (!state.view || state.view.name !== "dashboard") return;
    const tbody = $("#environments tbody");
    if (!tbody) return;
    const columns = dashboardColumns();
    const shown = shownEnvs();
    const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest("tr[data-env]");
    const focusKey = focused && document.activeElement.dataset.focus;
    const focusEnv = focused && focused.dataset.env;
    if (!state.loaded || shown.length === 0) {
      const text = !state.loaded ? "Loading…" : state.envs.size ? "No environment matches these filters." : "No environments yet.";
      const only = tbody.children.length === 1 && tbody.firstElementChild.dataset.note === text ? null : h("tr", { dataset: { note: text } }, h("td", { colspan: String(columns.length), class: "empty" }, text));
      if (only) tbody.replaceChildren(only);
      return;
    }
    const spacers = state.view.spacers || (state.view.spacers = [spacer("top"), spacer("bottom")]);
    for (const sp of spacers) sp.firstElementChild.colSpan = columns.length;
    // Three passes at most: the first may find the row height not measured yet, or the page
    // scrolled past a list that just became shorter.
    for (let pass = 0; pass < 3; pass += 1) {
      const pitch = state.rowHeight || 48;
      const top = tbody.getBoundingClientRect().top;
      const from = Math.max(0, -top - OVERSCAN_PX);
      const to = Math.max(0, window.innerHeight - top + OVERSCAN_PX);
      let first = Math.min(shown.length, Math.floor(from / pitch));
      let last = Math.min(shown.length, Math.ceil(to / pitch));
      if (last <= first) {
        // Scrolled past the end (the list shrank): the last rows, until the page follows.
        last = shown.length;
        first = Math.max(0, last - Math.ceil((window.innerHeight + 2 * OVERSCAN_PX) / pitch));
      }
      const rows = [];
      const replica = columns.some(([, key]) => key === "replica");
      const serving = servingReplica();
      const role = state.me && state.me.role;
      for (let i = first; i < last; i += 1) {
        const env = shown[i];
        let text = envText.get(env);
        if (text === undefined) envText.set(env, (text = JSON.stringify(env)));
        const signature = JSON.stringify([text, role, columns.length, serving]);
        const old = state.rows.get(env.name);
        const row = old && old.dataset.signature === signature ? old : environmentRow(env, signature, replica);
        state.rows.set(env.name, row);
        row.setAttribute("aria-rowindex", String(i + 2));
        rows.push(row);
      }
      spacers[0].firstElementChild.style.height = `${first * pitch}px`;
      spacers[1].firstElementChild.style.height = `${(shown.length - last) * pitch}px`;
      place(tbody, [spacers[0], ...rows, spacers[1]]);
      state.view.window = [first, last];
      // Measured once per layout (a resize, other columns): a pitch that changed with every
      // scroll would move rows under the reader.
      const measured = state.rowHeight ? 0 : measurePitch(rows);
      if (measured) {
        state.rowHeight = measured;
        if (Math.abs(measured - pitch) > 0.5) continue;
      }
      // Laid out again with the new spacers: is what is in view what was rendered?
      const after = tbody.getBoundingClientRect().top;
      if (Math.abs(after - top) < 1 || last - first >= shown.length) break;
    }
    if (focusEnv && focusKey && !tbody.contains(document.activeElement)) {
      const target = tbody.querySelector(`tr[data-env="${CSS.escape(focusEnv)}"] [data-focus="${CSS.escape(focusKey)}"]`);
      if (target) target.focus({ preventScroll: true });
    }
  }

  /** A row standing for the rows left out above (`top`) or below (`bottom`) those in view. */
  function spacer(edge) {
    return h("tr", { class: "spacer", "aria-hidden": "true", dataset: { edge } }, h("td", {}));
  }

  /** The distance from one row to the next, from rows in the document; 0 if it cannot tell. */
  function measurePitch(rows) {
    if (rows.length < 2) return 0;
    const a = rows[0].getBoundingClientRect();
    const b = rows[rows.length - 1].getBoundingClientRect();
    const pitch = (b.top - a.top) / (rows.length - 1);
    return pitch > 0 ? pitch : 0;
  }

  /**
   * Makes `wanted` the children of `parent`, in order, moving as few as it can: a row that
   * stays is never taken out (and keeps the keyboard focus).
   */
  function place(parent, wanted) {
    const keep = new Set(wanted);
    for (const child of [...parent.children]) if (!keep.has(child)) child.remove();
    let cursor = parent.firstChild;
    for (const node of wanted) {
      if (node === cursor) {
        cursor = cursor.nextSibling;
      } else {
        parent.insertBefore(node, cursor);
      }
    }
  }

  /** A scroll or a resize asks for the rows in view, at most once a frame. */
  function queueRows(resized) {
    if (resized) state.rowHeight = 0;
    if (state.renderQueued) return;
    state.renderQueued = true;
    requestAnimationFrame(() => {
      state.renderQueued = false;
      renderRows();
    });
  }

  function syncOptions(select, choices, current) {
    if (!select) return;
    const wanted = JSON.stringify(choices);
    if (select.dataset.choices === wanted) return;
    select.dataset.choices = wanted;
    while (select.options.length > 1) select.remove(1);
    for (const [value, label] of choices) select.append(h("option", { value }, label));
    select.value = current;
  }

  /** Which replica holds `env`'s lease (several replicas on one PostgreSQL state). */
  function holder(env) {
    if (!env.replica) {
      return h("span", { class: "muted", title: "No replica holds its lease now: the next one to work on it takes it" }, "none");
    }
    const here = env.replica === servingReplica();
    return h("span", { title: here ? `Held by ${env.replica}, the replica answering this page` : `Held by ${env.replica}` }, env.replica);
  }

  /** A dash for a value that is not there, saying what that means on hover. */
  function none(meaning) {
    return h("span", { class: "muted", title: meaning }, "—");
  }

  function cell(label, column, ...children) {
    return h("td", { "data-label": label, dataset: { col: column } }, h("div", {}, ...children));
  }

  function environmentRow(env, signature, replica) {
    const desired = env.desired_commit && env.desired_commit !== env.commit;
    const tr = h(
      "tr",
      { dataset: { env: env.name, signature, sync: env.sync, health: env.health } },
      cell(
        "Environment",
        "name",
        h("a", { href: `#/env/${encodeURIComponent(env.name)}`, class: "env-link", dataset: { focus: "link" } }, env.name),
        env.pinned ? [" ", h("span", { class: "tag", title: "Pinned: it does not follow its ref" }, "pinned")] : null,
        env.protected ? [" ", h("span", { class: "tag", title: "Protected: destroying it needs its name typed" }, "protected")] : null,
        env.activity === "queued" ? [" ", queuedChip(env)] : null,
      ),
      cell("Kind", "kind", KINDS[env.kind] || env.kind, family(env) ? h("span", { class: "sub" }, family(env)) : null),
      cell("Ref", "ref", env.tracked_ref ? h("code", { title: env.tracked_ref }, env.tracked_ref) : h("span", { class: "muted" }, "—")),
      cell(
        "Commit",
        "commit",
        commit(env.commit),
        desired ? h("span", { class: "sub", title: `should run ${env.desired_commit}` }, "→ ", h("code", {}, short(env.desired_commit))) : null,
      ),
      cell("Sync", "sync", badge(SYNC, env.sync, "sync")),
      cell("Health", "health", badge(HEALTH, env.health, "health"), asleep(env)),
      cell("Preview", "url", env.url ? link(env.url, env.url.replace(/^https?:\/\//, "").replace(/\/$/, "")) : ""),
      // A value that is not there says so (a phone's card shows every label, a value beside it).
      cell("Owner", "owner", env.owner ? h("span", { title: env.owner }, env.owner) : none("no owner")),
      cell("TTL", "ttl", env.expires_at ? countdown(env.expires_at) : none("does not expire")),
      cell("Lock", "lock", env.locked_by ? h("span", { class: "tag", title: `locked by pull request #${env.locked_by}` }, `locked by #${env.locked_by}`) : none("not locked")),
      replica ? cell("Replica", "replica", holder(env)) : null,
      h("td", { "data-label": "Message", class: "message", dataset: { col: "message" } }, h("div", { title: env.message || null }, env.message || "")),
      cell(
        "Actions",
        "actions",
        mayChange(env)
          ? h(
              "button",
              {
                type: "button",
                class: "small",
                dataset: { action: "sync", focus: "sync" },
                "aria-label": `Sync ${env.name} now`,
                onclick: (e) => syncNow(env, e.currentTarget),
              },
              "Sync",
            )
          : null,
      ),
    );
    return tr;
  }

  // ---------------------------------------------------------------- actions

  function dialog(title, build) {
    const dlg = $("#dialog");
    clear(dlg);
    const close = () => dlg.close();
    append(dlg, [h("h2", { id: "dialog-title" }, title), build(close)]);
    dlg.showModal();
    const first = dlg.querySelector("input, select, button.primary, button");
    if (first) first.focus();
  }

  function formDialog(title, { fields, submitText, danger, onSubmit, intro, valid }) {
    dialog(title, (close) => {
      const submit = h("button", { type: "submit", class: danger ? "primary danger" : "primary", id: "dialog-submit" }, submitText);
      const error = h("p", { class: "error", role: "alert", id: "dialog-error" });
      const form = h(
        "form",
        { method: "dialog", id: "dialog-form" },
        intro ? h("p", {}, intro) : null,
        fields,
        error,
        h("div", { class: "row" }, h("button", { type: "button", onclick: close, id: "dialog-cancel" }, "Cancel"), submit),
      );
      if (valid) {
        const check = () => {
          submit.disabled = !valid(form);
        };
        form.addEventListener("input", check);
        check();
      }
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        submit.disabled = true;
        clear(error);
        const problem = await onSubmit(form, close);
        if (problem) {
          error.append(problem);
          submit.disabled = false;
        }
      });
      return form;
    });
  }

  function field(id, label, attrs, hint) {
    return [
      h("label", { for: id }, label, hint ? h("span", { class: "hint" }, ` — ${hint}`) : null),
      h("input", Object.assign({ id, name: id, type: "text", autocomplete: "off", spellcheck: "false" }, attrs || {})),
    ];
  }

  function openCreate() {
    const families = [...new Set([...state.envs.values()].map(family).filter(Boolean))];
    formDialog("New environment", {
      intro: "An ad-hoc environment running any branch, tag or commit, with the variables of an entry of `environments:`. It expires on its own.",
      fields: [
        field("create-name", "Name", { required: true, pattern: "[a-z0-9]([a-z0-9\\-]{0,61}[a-z0-9])?", maxlength: "63", placeholder: "demo" }, "lowercase letters, digits and -"),
        field("create-ref", "Ref", { required: true, placeholder: "main, a tag or a commit" }),
        field("create-like", "Like", { placeholder: families[0] || "previews", list: "families" }, "the environments: entry whose variables it takes; empty: the generated family"),
        h("datalist", { id: "families" }, families.map((f) => h("option", { value: f }))),
        field("create-ttl", "Time to live", { placeholder: "8h" }, "e.g. 30m, 8h, 2d; empty: the entry's ttl"),
      ],
      submitText: "Create",
      onSubmit: async (form, close) => {
        const value = (id) => form.querySelector(`#${id}`).value.trim();
        const body = { name: value("create-name"), ref: value("create-ref") };
        if (value("create-like")) body.like = value("create-like");
        if (value("create-ttl")) body.ttl = value("create-ttl");
        const note = toast(`Creating ${body.name} from ${body.ref}…`, "busy");
        const watching = watch(body.name, note, `Created ${body.name}`);
        try {
          const env = await api("POST", "/api/v1/environments", body);
          close();
          putEnv(env);
          renderDashboardData();
          if (state.watches.includes(watching)) note.update(`Created ${env.name} from ${body.ref}; first deployment queued…`, "busy");
          return null;
        } catch (error) {
          unwatch(watching);
          note.el.remove();
          return describe(error);
        }
      },
    });
  }

  function syncNow(env, button) {
    return act({
      button,
      working: `Syncing ${env.name}`,
      call: () => api("POST", `/api/v1/environments/${encodeURIComponent(env.name)}/sync`),
      done: `Sync of ${env.name} queued`,
      follow: env.name,
    });
  }

  function openExtend(env) {
    formDialog(`Extend ${env.name}`, {
      intro: env.expires_at ? `It expires ${new Date(env.expires_at).toLocaleString()} (${remaining(env.expires_at)}).` : "It has no expiry yet; it will expire this long from now.",
      fields: field("extend-by", "By", { required: true, value: "2h" }, "e.g. 30m, 8h, 2d"),
      submitText: "Extend",
      onSubmit: async (form, close) => {
        const by = form.querySelector("#extend-by").value.trim();
        close();
        await act({
          working: `Extending ${env.name} by ${by}`,
          call: () => api("POST", `/api/v1/environments/${encodeURIComponent(env.name)}/extend`, { by }),
          done: (e) => `${env.name} now expires ${new Date(e.expires_at).toLocaleString()}`,
        });
        return null;
      },
    });
  }

  // A signed link opens the preview without a Slipway login until it expires (for a
  // private preview: someone without an account, a phone).
  function openShare(env) {
    formDialog(`Share ${env.name}'s preview`, {
      intro: "A link that opens the preview without a Slipway login until it expires. Anyone holding it can open the preview: hand it over as you would a password.",
      fields: field("share-for", "Holds for", { required: true, value: "24h" }, "e.g. 1h, 24h, 7d; at most 30d"),
      submitText: "Make link",
      onSubmit: async (form) => {
        const valid = form.querySelector("#share-for").value.trim();
        try {
          const made = await api("POST", `/api/v1/environments/${encodeURIComponent(env.name)}/link`, { for: valid });
          dialog(`Link to ${env.name}'s preview`, (close) =>
            h(
              "div",
              {},
              h("label", { for: "share-url" }, "Link"),
              h("input", { id: "share-url", type: "text", readonly: true, value: made.url, "aria-describedby": "share-until" }),
              h("p", { class: "hint", id: "share-until" }, `Holds until ${new Date(made.expires_at).toLocaleString()}.`),
              h("div", { class: "row" }, h("button", { type: "button", class: "primary", id: "dialog-cancel", onclick: close }, "Done")),
            ),
          );
          const input = $("#share-url");
          if (input) input.select();
          return null;
        } catch (error) {
          return describe(error);
        }
      },
    });
  }

  function openPin(env) {
    formDialog(`Pin ${env.name}`, {
      intro: "A pinned environment stays on one commit instead of following its ref, until unpinned.",
      fields: field("pin-commit", "Commit", { placeholder: env.commit ? short(env.commit) : "" }, "a ref or commit; empty: the commit it runs"),
      submitText: "Pin",
      onSubmit: async (form, close) => {
        const commitText = form.querySelector("#pin-commit").value.trim();
        close();
        await act({
          working: `Pinning ${env.name}`,
          call: () => api("POST", `/api/v1/environments/${encodeURIComponent(env.name)}/pin`, commitText ? { commit: commitText } : {}),
          done: (e) => `${env.name} is pinned to ${short(e.desired_commit || e.commit)}`,
        });
        return null;
      },
    });
  }

  function unpin(env, button) {
    return act({
      button,
      working: `Unpinning ${env.name}`,
      call: () => api("POST", `/api/v1/environments/${encodeURIComponent(env.name)}/unpin`),
      done: `${env.name} follows ${env.tracked_ref || "its ref"} again`,
      follow: env.name,
    });
  }

  function openRollback(env, deployment) {
    formDialog(`Roll back ${env.name}`, {
      intro: `Deploy commit ${short(deployment.commit)} again (deployment #${deployment.id}, ${new Date(deployment.started_at).toLocaleString()}). ${env.name} is pinned to it; unpin it to follow ${env.tracked_ref || "its ref"} again.`,
      fields: [],
      submitText: `Roll back to #${deployment.id}`,
      danger: true,
      onSubmit: async (_form, close) => {
        close();
        await act({
          working: `Rolling ${env.name} back to #${deployment.id}`,
          call: () => api("POST", `/api/v1/environments/${encodeURIComponent(env.name)}/rollback`, { deployment: deployment.id }),
          done: `${env.name} is pinned to ${short(deployment.commit)}`,
          follow: env.name,
        });
        return null;
      },
    });
  }

  function openDestroy(env) {
    const fields = env.protected
      ? field("destroy-confirm", `Type ${env.name} to confirm`, { required: true, autocomplete: "off" }, "it is protected")
      : [];
    formDialog(`Destroy ${env.name}?`, {
      intro: `Every resource of ${env.name} is deleted, then its record. Its deployment history stays.`,
      fields,
      submitText: "Destroy",
      danger: true,
      valid: env.protected ? (form) => form.querySelector("#destroy-confirm").value === env.name : null,
      onSubmit: async (form, close) => {
        const confirm = env.protected ? `?confirm=${encodeURIComponent(form.querySelector("#destroy-confirm").value)}` : "";
        close();
        const done = await act({
          working: `Destroying ${env.name}`,
          call: () => api("DELETE", `/api/v1/environments/${encodeURIComponent(env.name)}${confirm}`),
          done: `${env.name} is destroyed`,
        });
        if (done) {
          dropEnv(env.name);
          if (state.view && state.view.name === "env" && state.view.env === env.name) location.hash = dashboardHref();
          else renderDashboardData();
        }
        return null;
      },
    });
  }

  // ---------------------------------------------------------------- environment page

  function showEnvironment(name) {
    state.view = { name: "env", env: name, events: [], deployments: null, plan: null, driftOnly: false };
    document.title = `${name} — Slipway`;
    const main = clear($("#main"));
    main.append(
      h("p", {}, h("a", { href: dashboardHref(), id: "back" }, "← Environments")),
      h("div", { id: "env-header" }, h("h1", { tabindex: "-1", dataset: { focus: "heading" } }, name)),
      h("p", { id: "view-error", class: "error", role: "alert" }),
      h("section", { "aria-labelledby": "resources-title" }, h("h2", { id: "resources-title" }, "Resources"), h("div", { id: "env-resources" }, h("p", { class: "loading" }, "Loading…"))),
      h(
        "section",
        { "aria-labelledby": "plan-title" },
        h("h2", { id: "plan-title" }, "Plan ", h("button", { type: "button", class: "small", id: "plan-refresh", onclick: () => refreshPlan() }, "Plan again")),
        h("div", { id: "env-plan", "aria-live": "polite" }, h("p", { class: "loading" }, "Planning…")),
      ),
      h("section", { "aria-labelledby": "history-title" }, h("h2", { id: "history-title" }, "Deployments"), h("div", { id: "env-history" }, h("p", { class: "loading" }, "Loading…"))),
      h(
        "section",
        { "aria-labelledby": "events-title" },
        h("h2", { id: "events-title" }, "Events"),
        h(
          "label",
          { class: "inline" },
          h("input", {
            type: "checkbox",
            id: "drift-only",
            onchange: (e) => {
              state.view.driftOnly = e.currentTarget.checked;
              renderEvents();
            },
          }),
          " Only drift",
        ),
        // It scrolls (see app.css): focusable, so that a keyboard can scroll it too.
        h("ul", { class: "events", id: "env-events", tabindex: "0", "aria-label": `Events of ${name}` }, h("li", { class: "muted" }, "Waiting for events…")),
      ),
    );
    focusHeading();
    refreshEnvPage(true);
    // This environment's events, from the first: drift, deployments, changes. Live after that.
    const view = state.view;
    const stream = new EventSource(streamPath(`/api/v1/events?environment=${encodeURIComponent(name)}&after=0`));
    view.stream = stream;
    stream.onmessage = (message) => {
      try {
        view.events.push(JSON.parse(message.data));
      } catch (_) {
        return;
      }
      if (view.events.length > 500) view.events.splice(0, view.events.length - 500);
      later("render-events", 100, renderEvents);
    };
  }

  async function refreshEnvPage(withPlan) {
    const view = state.view;
    if (!view || view.name !== "env") return;
    const name = view.env;
    const path = `/api/v1/environments/${encodeURIComponent(name)}`;
    try {
      const [env, history] = await Promise.all([api("GET", path), api("GET", `${path}/deployments?limit=50`)]);
      if (state.view !== view) return;
      putEnv(env);
      view.deployments = history.deployments;
      renderEnvHeader();
      renderResources(env);
      renderHistory(env);
    } catch (error) {
      if (state.view !== view) return;
      if (error instanceof ApiError && error.status === 404) {
        dropEnv(name);
        clear($("#env-header")).append(h("h1", { tabindex: "-1" }, name), h("p", { class: "callout" }, `${name} does not exist (any more). `, h("a", { href: "#/" }, "All environments")));
        for (const id of ["#env-resources", "#env-plan"]) clear($(id));
        // History outlives the environment.
        try {
          const history = await api("GET", `${path}/deployments?limit=50`);
          view.deployments = history.deployments;
          renderHistory(null);
        } catch (_) {
          clear($("#env-history"));
        }
        return;
      }
      showError(describe(error));
      return;
    }
    if (withPlan) refreshPlan();
  }

  /** Its activity's badge when it is not simply awake (sleeping, queued). */
  function asleep(env) {
    return env.activity && env.activity !== "awake" ? [" ", badge(ACTIVITY, env.activity, "activity")] : null;
  }

  /** Starts a sleeping environment's processes again, or stops them (`to`: "wake", "sleep"). */
  function sleepOrWake(env, to, button) {
    return act({
      button,
      working: to === "wake" ? `Waking ${env.name}` : `Putting ${env.name} to sleep`,
      call: async () => {
        const result = await api("POST", `/api/v1/environments/${encodeURIComponent(env.name)}/${to}`);
        putEnv(result);
        if (state.view && state.view.name === "env" && state.view.env === env.name) {
          renderEnvHeader();
          renderResources(result);
        }
        return result;
      },
      done: (e) => (e.activity === "sleeping" ? `${env.name} is asleep; a request through its preview URL wakes it` : `${env.name} is awake`),
    });
  }

  function renderEnvHeader() {
    const view = state.view;
    const env = state.envs.get(view.env);
    if (!env) return;
    const header = $("#env-header");
    const hadFocus = header.contains(document.activeElement) ? document.activeElement.dataset.focus : null;
    const desired = env.desired_commit && env.desired_commit !== env.commit;
    const fact = (term, ...value) => h("div", {}, h("dt", {}, term), h("dd", {}, ...value));
    const actions = [];
    if (mayChange(env)) {
      actions.push(
        h("button", { type: "button", class: "primary", dataset: { action: "sync", focus: "sync" }, onclick: (e) => syncNow(env, e.currentTarget) }, "Sync now"),
        // Static environments have no time to live: the API refuses to give them one.
        env.kind === "static" ? null : h("button", { type: "button", dataset: { action: "extend", focus: "extend" }, onclick: () => openExtend(env) }, "Extend TTL"),
        env.url ? h("button", { type: "button", dataset: { action: "share", focus: "share" }, onclick: () => openShare(env) }, "Share link…") : null,
        env.activity === "sleeping"
          ? h("button", { type: "button", dataset: { action: "wake", focus: "wake" }, onclick: (e) => sleepOrWake(env, "wake", e.currentTarget) }, "Wake")
          : env.commit && env.activity !== "queued"
            ? h("button", { type: "button", dataset: { action: "sleep", focus: "sleep" }, onclick: (e) => sleepOrWake(env, "sleep", e.currentTarget) }, "Sleep")
            : null,
        env.pinned
          ? h("button", { type: "button", dataset: { action: "unpin", focus: "unpin" }, onclick: (e) => unpin(env, e.currentTarget) }, "Unpin")
          : h("button", { type: "button", dataset: { action: "pin", focus: "pin" }, onclick: () => openPin(env) }, "Pin"),
        h("button", { type: "button", class: "danger", dataset: { action: "destroy", focus: "destroy" }, onclick: () => openDestroy(env) }, "Destroy…"),
      );
    }
    append(clear(header), [
      h(
        "h1",
        { tabindex: "-1", dataset: { focus: "heading" } },
        env.name,
        " ",
        badge(SYNC, env.sync, "sync"),
        badge(HEALTH, env.health, "health"),
        asleep(env),
        env.pinned ? h("span", { class: "tag", title: "It does not follow its ref" }, "pinned") : null,
        env.protected ? h("span", { class: "tag", title: "Destroying it needs its name typed" }, "protected") : null,
        queuedChip(env),
      ),
      env.message ? h("p", { class: env.sync === "failed" ? "callout bad" : "callout", id: "env-message" }, env.message) : null,
      h(
        "dl",
        { class: "facts" },
        fact("Kind", KINDS[env.kind] || env.kind, family(env) ? ` (${family(env)})` : ""),
        fact("Tracks", env.tracked_ref ? h("code", {}, env.tracked_ref) : "—", env.pinned ? " (pinned)" : ""),
        fact("Runs", commit(env.commit)),
        desired ? fact("Should run", commit(env.desired_commit)) : null,
        fact(
          "Preview",
          env.url ? link(env.url) : h("span", { class: "muted" }, "no exposed port"),
          env.url && env.access === "private" ? h("span", { class: "tag", id: "env-access", title: "It opens for people signed in to Slipway and for signed links" }, "private") : null,
        ),
        fact("Owner", env.owner || h("span", { class: "muted" }, "—")),
        fact("Expires", countdown(env.expires_at), env.ttl_seconds ? h("span", { class: "sub muted" }, `TTL ${duration(env.ttl_seconds * 1000)}`) : null),
        env.locked_by ? fact("Locked by", `pull request #${env.locked_by}`) : null,
        env.activity === "queued"
          ? fact("Queue", env.queue_position ? `#${env.queue_position} in its family's line` : "waiting", h("span", { class: "sub muted" }, "nothing runs until a slot frees"))
          : null,
        multiReplica() ? h("div", { id: "env-replica" }, h("dt", {}, "Replica"), h("dd", {}, holder(env))) : null,
        lastChange(view.deployments),
      ),
      actions.length ? h("div", { class: "env-actions", role: "group", "aria-label": "Actions" }, actions) : null,
    ]);
    if (hadFocus) {
      const target = header.querySelector(`[data-focus="${CSS.escape(hadFocus)}"]`);
      if (target) target.focus();
    }
  }

  /** The newest deployment: when the environment last changed, how, and by whom. */
  function lastChange(deployments) {
    const last = deployments && deployments[0];
    if (!last) return null;
    return h(
      "div",
      { id: "last-change" },
      h("dt", {}, "Last change"),
      h("dd", {}, `#${last.id} `, badge(DEPLOYMENT, last.status, "result"), " ", time(last.finished_at || last.started_at), h("span", { class: "sub muted" }, `by ${last.who}`)),
    );
  }

  function renderResources(env) {
    const slot = clear($("#env-resources"));
    if (!env.resources.length) {
      slot.append(h("p", { class: "muted" }, "No resources yet."));
      return;
    }
    slot.append(
      h(
        "table",
        { class: "cards", id: "resources" },
        h("thead", {}, h("tr", {}, ["Resource", "Type", "Status", "Outputs", "Message"].map((t) => h("th", { scope: "col" }, t)))),
        h(
          "tbody",
          {},
          env.resources.map((r) =>
            h(
              "tr",
              { dataset: { resource: r.name } },
              cell(
                "Resource",
                "name",
                h("strong", {}, r.name),
                LOGGED.has(r.type)
                  ? [" ", h("button", { type: "button", class: "small", dataset: { log: r.name, focus: `logs-${r.name}` }, "aria-label": `Logs of ${r.name}`, onclick: () => openLogs(env.name, r.name) }, "Logs")]
                  : null,
              ),
              cell("Type", "type", h("code", {}, r.type)),
              cell("Status", "status", badge(RESOURCE, r.status, "status")),
              cell("Outputs", "outputs", outputs(r.outputs)),
              h("td", { "data-label": "Message", class: "message" }, r.message ? h("div", {}, r.message) : ""),
            ),
          ),
        ),
      ),
    );
  }

  /** The resource types that keep a log (`GET …/logs/{resource}`). */
  const LOGGED = new Set(["process", "job"]);

  /** The log of the process or job a failed deployment names first in its error (`web: …`). */
  function failedLog(env, deployment) {
    if (!env || deployment.status !== "failed") return null;
    const name = deployment.error.split(":", 1)[0];
    const resource = (env.resources || []).find((r) => r.name === name && LOGGED.has(r.type));
    if (!resource) return null;
    return [" ", h("button", { type: "button", class: "small", dataset: { log: name }, "aria-label": `The log of ${name}, which failed`, onclick: () => openLogs(env.name, name) }, `Log of ${name}`)];
  }

  /**
   * A dialog with the last lines of a process's or job's log, then each new line as it is
   * written (`…/logs/{resource}/follow`, server-sent events; redacted by the server). A
   * reconnection starts over from the last lines, so none shows twice.
   */
  function openLogs(envName, resource) {
    const MAX_LINES = 5000;
    const path = `/api/v1/environments/${encodeURIComponent(envName)}/logs/${encodeURIComponent(resource)}/follow?tail=200`;
    dialog(`Log of ${resource}`, (close) => {
      const out = h("pre", { class: "log", id: "log-lines", tabindex: "0", "aria-label": `The log of ${resource} in ${envName}` });
      const status = h("p", { class: "muted", id: "log-state", role: "status" }, "Connecting…");
      const stream = new EventSource(streamPath(path));
      stream.onopen = () => {
        clear(out);
        status.textContent = "Live: new lines appear as they are written.";
      };
      stream.onmessage = (e) => {
        const atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
        out.append(`${JSON.parse(e.data).line}\n`);
        while (out.childNodes.length > MAX_LINES) out.firstChild.remove();
        if (atEnd) out.scrollTop = out.scrollHeight;
      };
      stream.onerror = () => {
        status.textContent = "Disconnected; trying again…";
      };
      const dlg = $("#dialog");
      const stop = () => {
        stream.close();
        dlg.removeEventListener("close", stop);
      };
      dlg.addEventListener("close", stop);
      return h("div", {}, status, out, h("div", { class: "row" }, h("button", { type: "button", onclick: close, id: "dialog-cancel" }, "Close")));
    });
    $("#dialog").classList.add("wide");
    $("#dialog").addEventListener("close", () => $("#dialog").classList.remove("wide"), { once: true });
  }

  function outputs(values) {
    if (!values || typeof values !== "object") return h("span", { class: "muted" }, "—");
    const items = [];
    const walk = (prefix, value) => {
      if (value && typeof value === "object" && !Array.isArray(value)) {
        for (const [k, v] of Object.entries(value)) walk(prefix ? `${prefix}.${k}` : k, v);
      } else {
        const text = typeof value === "string" ? value : JSON.stringify(value);
        // Outputs are shown, never linked: a process's `url` is its raw 127.0.0.1 address.
        items.push(h("li", {}, h("span", { class: "k" }, `${prefix}: `), h("span", { class: "mono" }, text)));
      }
    };
    walk("", values);
    return items.length ? h("ul", { class: "outputs" }, items) : h("span", { class: "muted" }, "—");
  }

  async function refreshPlan() {
    const view = state.view;
    if (!view || view.name !== "env") return;
    const slot = $("#env-plan");
    if (!slot.firstChild) slot.append(h("p", { class: "loading" }, "Planning…"));
    try {
      const plan = await api("GET", `/api/v1/environments/${encodeURIComponent(view.env)}/plan`);
      if (state.view !== view) return;
      renderPlan(plan);
    } catch (error) {
      if (state.view !== view) return;
      clear(slot).append(h("p", { class: "callout bad" }, `No plan: ${describe(error)}`));
    }
  }

  function renderPlan(plan) {
    const slot = clear($("#env-plan"));
    const changes = plan.changes.filter((c) => c.action !== "noop");
    const count = (a) => changes.filter((c) => c.action === a).length;
    slot.append(
      h(
        "p",
        { id: "plan-summary" },
        isSha(plan.reference) ? "From the pinned commit " : [`From `, h("code", {}, plan.reference), " at "],
        commit(plan.commit),
        ": ",
        plan.has_changes
          ? `${count("create")} to create, ${count("update")} to update, ${count("replace")} to replace, ${count("delete")} to delete`
          : "no changes; it runs what its ref asks for",
        plan.changes.length > changes.length ? h("span", { class: "muted" }, ` (${plan.changes.length - changes.length} unchanged)`) : null,
      ),
    );
    if (plan.window && !plan.window.allowed) slot.append(windowCallout(plan.window));
    if (plan.policies) slot.append(policiesView(plan.policies));
    if (!changes.length) return;
    const sign = { create: "+", update: "~", replace: "-/+", delete: "-" };
    const lines = [];
    const show = (v) => (v === undefined ? "(none)" : JSON.stringify(v));
    for (const c of changes) {
      const tone = c.action === "create" ? "add" : c.action === "delete" ? "del" : "";
      lines.push(h("div", { class: `line head ${tone}` }, `${sign[c.action] || "?"} ${c.resource} (${c.type}) — ${c.action}`, c.reason ? `: ${c.reason}` : ""));
      for (const d of c.diff || []) {
        const forces = d.forces_replace ? "  (forces replacement)" : "";
        if (d.before !== undefined) lines.push(h("div", { class: "line del" }, `    - ${d.path}: ${show(d.before)}${d.after === undefined ? forces : ""}`));
        if (d.after !== undefined) lines.push(h("div", { class: "line add" }, `    + ${d.path}: ${show(d.after)}${forces}`));
      }
    }
    slot.append(h("div", { class: "diff", role: "region", "aria-label": "Plan as a diff" }, lines));
  }

  /** Why a deploy window holds the change now, and until when. */
  function windowCallout(win) {
    const w = win.window;
    return h(
      "p",
      { class: "callout", id: "plan-window" },
      "A deploy window denies changes now",
      win.until ? [" until ", h("time", { datetime: win.until }, new Date(win.until).toLocaleString())] : "",
      w ? [" (", h("code", {}, `${w.kind} "${w.schedule}" for ${w.duration}, ${w.time_zone}`), ")"] : "",
      ": the controller holds the change. A deployer can override it (Sync with the window overridden, or `slipway apply --override-window`).",
    );
  }

  const POLICY_GATE = {
    pass: ["ok", "✓", "the policies let it through"],
    soft_fail: ["warn", "✗", "held: soft policies deny it; a policy owner may approve this commit (/slipway approve-policies on its pull request, or slipway apply --approve-policies)"],
    hard_fail: ["bad", "✗", "blocked: a hard policy denies it"],
  };
  const POLICY_OUTCOME = { failed: ["bad", "✗"], warned: ["warn", "⚠"], passed: ["ok", "✓"] };

  /** The policies' verdict on a plan: the gate, then each policy with what it said and where. */
  function policiesView(policies) {
    const [tone, icon, says] = POLICY_GATE[policies.gate] || ["idle", "•", policies.gate];
    // What blocks first, then what warns, then what passed.
    const rank = { failed: 0, warned: 1, passed: 2 };
    const results = policies.results.slice().sort((a, b) => (rank[a.outcome] ?? 3) - (rank[b.outcome] ?? 3));
    const findings = (r) => {
      const items = [];
      if (r.error) items.push(h("li", { class: "bad" }, h("strong", {}, "error: "), r.error));
      for (const [kind, list] of [["deny", r.denies || []], ["warn", r.warns || []]]) {
        for (const f of list) {
          items.push(
            h(
              "li",
              { dataset: { finding: kind } },
              h("strong", {}, `${kind}: `),
              f.msg,
              f.resource ? [" — ", h("code", {}, f.resource)] : "",
              f.location ? [" at ", h("code", { class: "location" }, f.location)] : "",
            ),
          );
        }
      }
      return items.length ? h("ul", { class: "findings" }, items) : h("span", { class: "muted" }, "nothing to say");
    };
    return h(
      "section",
      { id: "plan-policies", "aria-labelledby": "policies-title", dataset: { gate: policies.gate } },
      h("h3", { id: "policies-title" }, "Policies"),
      h(
        "p",
        { class: tone === "ok" ? "" : `callout ${tone === "bad" ? "bad" : ""}` },
        h("span", { class: `badge ${tone}` }, h("span", { class: "icon", "aria-hidden": "true" }, icon), " ", policies.gate.replace(/_/g, " ")),
        ` ${says}. Policies read from the default branch at `,
        commit(policies.policies_at),
        ".",
      ),
      h(
        "table",
        { class: "cards", id: "policy-results" },
        h("thead", {}, h("tr", {}, ["Policy", "Enforcement", "Outcome", "Said"].map((t) => h("th", { scope: "col" }, t)))),
        h(
          "tbody",
          {},
          results.map((r) =>
            h(
              "tr",
              { dataset: { policy: r.policy, outcome: r.outcome } },
              cell("Policy", "policy", h("code", {}, r.policy), r.title ? h("span", { class: "sub" }, r.title) : null),
              cell("Enforcement", "enforcement", r.enforcement),
              cell("Outcome", "outcome", badge(POLICY_OUTCOME, r.outcome, "outcome")),
              h("td", { "data-label": "Said", class: "message" }, findings(r)),
            ),
          ),
        ),
      ),
    );
  }

  function renderHistory(env) {
    if (state.view) state.view.historyCommit = env ? env.commit : null;
    const view = state.view;
    const slot = clear($("#env-history"));
    const list = view.deployments || [];
    if (!list.length) {
      slot.append(h("p", { class: "muted" }, "No deployments yet."));
      return;
    }
    const canRollBack = env && mayChange(env);
    // The deployment that put the running commit in place: the newest success at it.
    const running = env && list.find((d) => d.status === "succeeded" && d.commit === env.commit);
    slot.append(
      h(
        "table",
        { class: "cards", id: "deployments" },
        h("thead", {}, h("tr", {}, ["#", "Commit", "Ref", "Who", "When", "Result", "Duration", "Error", ""].map((t) => h("th", { scope: "col" }, t || h("span", { class: "sr-only" }, "Actions"))))),
        h(
          "tbody",
          {},
          list.map((d) =>
            h(
              "tr",
              { dataset: { deployment: String(d.id), status: d.status } },
              cell("#", "id", String(d.id)),
              cell("Commit", "commit", commit(d.commit), running === d ? h("span", { class: "sub" }, "running") : null),
              cell("Ref", "ref", d.reference ? h("code", { class: "wrap", title: d.reference }, isSha(d.reference) ? short(d.reference) : d.reference) : ""),
              cell("Who", "who", d.who),
              cell("When", "when", time(d.started_at)),
              cell("Result", "status", badge(DEPLOYMENT, d.status, "result")),
              cell("Duration", "duration", d.finished_at ? duration(Date.parse(d.finished_at) - Date.parse(d.started_at)) : h("span", { class: "muted" }, "running")),
              h("td", { "data-label": "Error", class: "message" }, d.error ? h("div", {}, d.error, failedLog(env, d)) : ""),
              cell(
                "Actions",
                "actions",
                canRollBack && d.status === "succeeded" && d.commit !== env.commit
                  ? h("button", { type: "button", class: "small", dataset: { action: "rollback", deployment: String(d.id) }, "aria-label": `Roll back to deployment ${d.id}`, onclick: () => openRollback(env, d) }, "Roll back")
                  : null,
              ),
            ),
          ),
        ),
      ),
    );
  }

  function renderEvents() {
    const view = state.view;
    if (!view || view.name !== "env") return;
    const list = $("#env-events");
    const events = view.events.filter((e) => !view.driftOnly || e.kind.startsWith("drift.")).slice().reverse();
    clear(list);
    if (!events.length) {
      list.append(h("li", { class: "muted" }, view.driftOnly ? "No drift recorded." : "No events yet."));
      return;
    }
    for (const e of events.slice(0, 200)) {
      list.append(
        h(
          "li",
          { class: e.kind.startsWith("drift.") ? "drift" : "", dataset: { kind: e.kind, id: String(e.id) } },
          time(e.at, new Date(e.at).toLocaleString()),
          h("span", { class: "kind" }, e.kind.startsWith("drift.") ? `⚠ ${e.kind}` : e.kind),
          h("span", { class: "msg" }, e.message),
        ),
      );
    }
  }

  // ---------------------------------------------------------------- pull requests

  function showPulls() {
    state.view = { name: "pulls" };
    document.title = "Pull requests — Slipway";
    clear($("#main")).append(
      h("h1", { tabindex: "-1" }, "Pull requests"),
      h("p", { class: "hint" }, "Open pull requests as the controller last heard of them. The full plan of each is the comment Slipway keeps on it."),
      h("p", { id: "view-error", class: "error", role: "alert" }),
      h("div", { id: "pulls" }, h("p", { class: "loading" }, "Loading…")),
      h("h2", {}, "Locks"),
      h("div", { id: "locks" }),
    );
    focusHeading();
    refreshPulls();
  }

  async function refreshPulls() {
    const view = state.view;
    if (!view || view.name !== "pulls") return;
    let data;
    try {
      data = await api("GET", "/api/v1/pull-requests");
    } catch (error) {
      showError(describe(error));
      return;
    }
    if (state.view !== view) return;
    const slot = clear($("#pulls"));
    if (!data.pull_requests.length) {
      slot.append(h("p", { class: "muted" }, "No open pull requests (or no forge configured)."));
    } else {
      slot.append(
        h(
          "table",
          { class: "cards", id: "pull-requests" },
          h("thead", {}, h("tr", {}, ["Pull request", "Author", "Branch", "Head", "Plan and preview", "Locks"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, data.pull_requests.map(pullRow)),
        ),
      );
    }
    const locks = clear($("#locks"));
    if (!data.locks.length) {
      locks.append(h("p", { class: "muted" }, "No environment is locked."));
    } else {
      locks.append(
        h(
          "table",
          { class: "cards", id: "lock-list" },
          h("thead", {}, h("tr", {}, ["Environment", "Pull request", "Who", "Since"].map((t) => h("th", { scope: "col" }, t)))),
          h(
            "tbody",
            {},
            data.locks.map((l) =>
              h(
                "tr",
                { dataset: { lock: l.environment } },
                cell("Environment", "env", h("a", { href: `#/env/${encodeURIComponent(l.environment)}` }, l.environment)),
                cell("Pull request", "pr", `#${l.pull_request}`),
                cell("Who", "who", l.who),
                cell("Since", "at", time(l.at)),
              ),
            ),
          ),
        ),
      );
    }
  }

  function pullRow(pr) {
    const p = pr.preview;
    const planSlot = h("div", { class: "plan-slot" });
    let preview;
    if (p) {
      preview = [
        h("a", { href: `#/env/${encodeURIComponent(p.environment)}` }, p.environment),
        " ",
        badge(SYNC, p.sync, "sync"),
        " ",
        badge(HEALTH, p.health, "health"),
        h("span", { class: "sub" }, p.at_head ? "runs the head" : `runs ${p.commit ? short(p.commit) : "nothing yet"}; head not deployed yet`),
        p.url ? h("span", { class: "sub" }, link(p.url)) : null,
        p.message ? h("span", { class: "sub error" }, p.message) : null,
        h(
          "button",
          {
            type: "button",
            class: "small",
            dataset: { action: "plan" },
            onclick: async (e) => {
              const button = e.currentTarget;
              busy(button, true);
              clear(planSlot).append(h("span", { class: "muted" }, "Planning…"));
              try {
                const plan = await api("GET", `/api/v1/environments/${encodeURIComponent(p.environment)}/plan`);
                const n = plan.changes.filter((c) => c.action !== "noop").length;
                clear(planSlot).append(plan.has_changes ? h("span", { class: "badge warn" }, `≠ ${n} change(s) to apply`) : h("span", { class: "badge ok" }, "✓ up to date"));
              } catch (error) {
                clear(planSlot).append(h("span", { class: "badge bad" }, `✗ ${describe(error)}`));
              } finally {
                busy(button, false);
              }
            },
          },
          "Plan preview",
        ),
        planSlot,
      ];
    } else if (pr.is_fork && !pr.preview_allowed) {
      preview = h("span", { class: "muted" }, "From a fork: plans only, no preview until a maintainer comments /slipway preview");
    } else {
      preview = h("span", { class: "muted" }, "No preview environment");
    }
    return h(
      "tr",
      { dataset: { pr: String(pr.number) } },
      cell("Pull request", "title", link(pr.url, `#${pr.number}`), " ", pr.title, pr.is_fork ? [" ", h("span", { class: "tag" }, "fork")] : null),
      cell("Author", "author", pr.author),
      cell("Branch", "branch", h("code", {}, pr.head_ref), " → ", h("code", {}, pr.base_ref)),
      cell("Head", "head", commit(pr.head_sha), h("span", { class: "sub" }, `updated ${ago(pr.updated_at)}`)),
      cell("Plan and preview", "preview", preview),
      cell("Locks", "locks", pr.locks.length ? pr.locks.map((l) => [h("a", { href: `#/env/${encodeURIComponent(l.environment)}` }, `locked: ${l.environment}`), " "]) : h("span", { class: "muted" }, "none")),
    );
  }

  // ---------------------------------------------------------------- replicas

  function showReplicas() {
    state.view = { name: "replicas" };
    document.title = "Replicas — Slipway";
    clear($("#main")).append(
      h("h1", { tabindex: "-1" }, "Replicas"),
      h(
        "p",
        { class: "hint" },
        "The ",
        h("code", {}, "slipway serve"),
        " replicas sharing this PostgreSQL state. Each environment is worked on by one replica at a time, under a lease; a replica not heard from within two leases is silent, and the others take its floating environments over.",
      ),
      h("p", { id: "view-error", class: "error", role: "alert" }),
      h("div", { id: "replica-list" }, h("p", { class: "loading" }, "Loading…")),
    );
    focusHeading();
    refreshReplicas();
  }

  function renderReplicas() {
    const view = state.view;
    if (!view || view.name !== "replicas" || !state.replicasAt) return;
    const slot = clear($("#replica-list"));
    if (!state.replicas.length) {
      slot.append(h("p", { class: "muted", id: "no-replicas" }, "This controller keeps its state in SQLite: it is the only one, and there are no replicas."));
      return;
    }
    const held = new Map();
    for (const env of state.envs.values()) if (env.replica) held.set(env.replica, (held.get(env.replica) || 0) + 1);
    slot.append(
      h(
        "table",
        { class: "cards", id: "replicas" },
        h("thead", {}, h("tr", {}, ["Replica", "Advertise", "State", "Last heartbeat", "Started", "Environments"].map((t) => h("th", { scope: "col" }, t)))),
        h(
          "tbody",
          {},
          state.replicas.map((r) => {
            // The database's clock timed the silence and both times; this page's clock counts
            // on from the answer, so a skew between the two clocks does not show.
            const heard = state.replicasAt - r.silent_ms;
            const started = heard - (Date.parse(r.heartbeat_at) - Date.parse(r.started_at));
            const n = held.get(r.name) || 0;
            return h(
              "tr",
              { dataset: { replica: r.name, alive: String(r.alive), this: String(r.this) } },
              cell("Replica", "name", h("strong", {}, r.name), r.this ? [" ", h("span", { class: "tag", title: "The replica answering this page" }, "this page")] : null),
              cell("Advertise", "advertise", r.advertise ? h("code", {}, r.advertise) : h("span", { class: "muted", title: "[local] advertise is not set" }, "—")),
              cell("State", "state", badge(REPLICA, r.alive ? "alive" : "silent", "state")),
              cell("Last heartbeat", "heartbeat", h("time", { datetime: r.heartbeat_at, title: `${new Date(r.heartbeat_at).toLocaleString()} (the database's clock)`, dataset: { heard: String(heard) } }, since(heard))),
              cell("Started", "started", h("time", { datetime: r.started_at, title: `${new Date(r.started_at).toLocaleString()} (the database's clock)` }, since(started))),
              cell("Environments", "held", n ? `${n} held` : h("span", { class: "muted" }, "none held")),
            );
          }),
        ),
      ),
    );
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
