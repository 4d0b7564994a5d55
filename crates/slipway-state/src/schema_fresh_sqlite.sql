-- What the 22 migrations of schema.rs make (FRESH_SQLITE), written by
-- `SLIPWAY_BLESS=1 cargo test -p slipway-state fresh_schema`, never by hand.
CREATE TABLE environments (
    name           TEXT PRIMARY KEY NOT NULL,
    kind           TEXT NOT NULL,
    stack          TEXT NOT NULL,
    repo           TEXT NOT NULL,
    tracked_ref    TEXT,
    desired_commit TEXT,
    current_commit TEXT,
    hash           TEXT,
    sync           TEXT NOT NULL,
    health         TEXT NOT NULL,
    message        TEXT,
    owner          TEXT,
    ttl_ms         INTEGER,
    expires_at     INTEGER,
    pinned         INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
, definition TEXT, protected INTEGER NOT NULL DEFAULT 0, activity TEXT NOT NULL DEFAULT 'awake', activity_since INTEGER, queued_at INTEGER, last_request_at INTEGER, access TEXT, sleep_after_ms INTEGER, idle_ttl_ms INTEGER, touched_at INTEGER, idle_warned_at INTEGER) STRICT;
CREATE TABLE deployments (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    environment    TEXT NOT NULL,
    commit_sha     TEXT NOT NULL,
    hash           TEXT NOT NULL,
    reference      TEXT,
    plan           TEXT NOT NULL,
    status         TEXT NOT NULL,
    error          TEXT,
    who            TEXT NOT NULL,
    started_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    summary        TEXT NOT NULL
, rules TEXT) STRICT;
CREATE INDEX deployments_by_environment ON deployments (environment, id);
CREATE TABLE resources (
    environment    TEXT NOT NULL
                   REFERENCES environments (name) ON DELETE CASCADE ON UPDATE CASCADE,
    name           TEXT NOT NULL,
    type_name      TEXT NOT NULL,
    status         TEXT NOT NULL,
    config         TEXT NOT NULL,
    resolved_hash  TEXT,
    outputs        TEXT NOT NULL,
    secret_outputs TEXT NOT NULL,
    live           TEXT NOT NULL,
    depends_on     TEXT NOT NULL,
    error          TEXT,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (environment, name)
) STRICT;
CREATE TABLE ports (
    environment    TEXT NOT NULL
                   REFERENCES environments (name) ON DELETE CASCADE ON UPDATE CASCADE,
    resource       TEXT NOT NULL,
    name           TEXT NOT NULL,
    port           INTEGER NOT NULL UNIQUE CHECK (port BETWEEN 1 AND 65535),
    PRIMARY KEY (environment, resource, name)
) STRICT;
CREATE TABLE events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    environment    TEXT,
    kind           TEXT NOT NULL,
    message        TEXT NOT NULL,
    data           TEXT NOT NULL,
    at             INTEGER NOT NULL
) STRICT;
CREATE INDEX events_by_environment ON events (environment, id);
CREATE TABLE tokens (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    hash           TEXT NOT NULL UNIQUE,
    role           TEXT NOT NULL,
    name           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    last_used_at   INTEGER,
    revoked_at     INTEGER
) STRICT;
CREATE TABLE audit (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at             INTEGER NOT NULL,
    who            TEXT NOT NULL,
    action         TEXT NOT NULL,
    target         TEXT,
    outcome        TEXT NOT NULL,
    detail         TEXT NOT NULL
, count INTEGER NOT NULL DEFAULT 1) STRICT;
CREATE INDEX audit_by_time ON audit (at);
CREATE TABLE pull_requests (
    number          INTEGER PRIMARY KEY,
    title           TEXT NOT NULL,
    author          TEXT NOT NULL,
    head_sha        TEXT NOT NULL,
    head_ref        TEXT NOT NULL,
    base_ref        TEXT NOT NULL,
    is_fork         INTEGER NOT NULL,
    state           TEXT NOT NULL,
    preview_allowed INTEGER NOT NULL,
    url             TEXT NOT NULL,
    updated_at      INTEGER NOT NULL,
    stale_approvers TEXT NOT NULL DEFAULT '[]'
, opened_base TEXT, labels TEXT NOT NULL DEFAULT '[]', head_seen_at INTEGER) STRICT;
CREATE TABLE deliveries (
    id             TEXT PRIMARY KEY,
    received_at    INTEGER NOT NULL
) STRICT;
CREATE TABLE locks (
    environment    TEXT PRIMARY KEY,
    pull_request   INTEGER NOT NULL,
    who            TEXT NOT NULL,
    at             INTEGER NOT NULL
) STRICT;
CREATE TABLE merged_commits (
    sha            TEXT PRIMARY KEY,
    pull_request   INTEGER NOT NULL,
    approved       INTEGER NOT NULL,
    at             INTEGER NOT NULL
, base_ref TEXT) STRICT;
CREATE INDEX events_by_kind ON events (kind, environment, id);
CREATE INDEX events_by_time ON events (at);
CREATE INDEX deliveries_by_time ON deliveries (received_at);
CREATE TABLE env_uids (
    environment    TEXT PRIMARY KEY NOT NULL,
    uid            INTEGER NOT NULL UNIQUE,
    allocated_at   INTEGER NOT NULL
) STRICT;
CREATE TABLE uid_cursor (
    id             INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    last           INTEGER NOT NULL
) STRICT;
CREATE TABLE replicas (
    name           TEXT PRIMARY KEY NOT NULL,
    advertise      TEXT,
    started_at     INTEGER NOT NULL,
    heartbeat_at   INTEGER NOT NULL
) STRICT;
CREATE TABLE leases (
    environment    TEXT PRIMARY KEY NOT NULL,
    holder         TEXT NOT NULL,
    epoch          INTEGER NOT NULL,
    acquired_at    INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
) STRICT;
CREATE TABLE browser_sessions (
    id_hash        TEXT PRIMARY KEY NOT NULL,
    token_hash     TEXT NOT NULL,
    csrf           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
) STRICT;
CREATE INDEX browser_sessions_by_end ON browser_sessions (expires_at);
CREATE TABLE handoffs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    environment    TEXT NOT NULL,
    work           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    taken_by       TEXT,
    taken_epoch    INTEGER
) STRICT;
CREATE TABLE state_key (
    id             INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    instance       TEXT NOT NULL,
    recorded_at    INTEGER NOT NULL
) STRICT;
CREATE TABLE notify_cursor (
    id             INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    last_event     INTEGER NOT NULL
) STRICT;
CREATE TABLE notify_last (
    receiver       TEXT NOT NULL,
    environment    TEXT NOT NULL,
    kind           TEXT NOT NULL,
    state_key      TEXT NOT NULL,
    PRIMARY KEY (receiver, environment, kind)
) STRICT;
CREATE TABLE notify_outbox (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    receiver       TEXT NOT NULL,
    environment    TEXT,
    kind           TEXT NOT NULL,
    payload        TEXT NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_attempt   INTEGER NOT NULL,
    claimed_until  INTEGER,
    last_error     TEXT,
    created_at     INTEGER NOT NULL
) STRICT;
CREATE INDEX notify_outbox_due ON notify_outbox (next_attempt);
CREATE TABLE policy_approvals (
    pull_request   INTEGER NOT NULL,
    head_sha       TEXT NOT NULL,
    who            TEXT NOT NULL,
    at             INTEGER NOT NULL,
    PRIMARY KEY (pull_request, head_sha)
) STRICT;
CREATE TABLE sealed_formats (
    format         TEXT PRIMARY KEY NOT NULL
) STRICT;
CREATE TABLE head_pushes (
    source         TEXT NOT NULL,
    sha            TEXT NOT NULL,
    pusher         TEXT NOT NULL,
    at             INTEGER NOT NULL,
    PRIMARY KEY (source, sha, pusher)
) STRICT;
INSERT INTO "sealed_formats" VALUES ('v1');
INSERT INTO "sealed_formats" VALUES ('v2');
