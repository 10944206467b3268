-- tokenwarden schema, version 1. Applied by src/store/schema.rs on open;
-- PRAGMA user_version records the version so later releases can migrate
-- an existing file without losing rows. All times are unix milliseconds.

CREATE TABLE IF NOT EXISTS credentials (
    id                  TEXT PRIMARY KEY NOT NULL,
    provider            TEXT NOT NULL,
    -- Stored state; 'expiring' is derived from expires_at_ms, never stored.
    state               TEXT NOT NULL CHECK (state IN ('valid', 'refreshing', 'rejected', 'dead')),
    -- Bumped by every change; callers compare-and-swap on it.
    version             INTEGER NOT NULL,
    access_token        TEXT,
    refresh_token       TEXT NOT NULL,
    id_token            TEXT,
    expires_at_ms       INTEGER,
    token_url           TEXT,
    client_id           TEXT,
    client_secret       TEXT,
    scope               TEXT,
    encoding            TEXT,
    client_auth         TEXT,
    api_key             TEXT,
    account_id          TEXT,
    email               TEXT,
    plan_type           TEXT,
    user_id             TEXT,
    organization_id     TEXT,
    -- The lease, while refreshing. The owner's writes are fenced by lease_id.
    lease_owner         TEXT,
    lease_id            TEXT,
    lease_until_ms      INTEGER,
    -- While refreshing: the state to return to if the refresh fails.
    resume_state        TEXT CHECK (resume_state IN ('valid', 'rejected', 'dead')),
    failures            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms  INTEGER,
    dead_reason         TEXT,
    last_error_code     TEXT,
    last_error_message  TEXT,
    last_error_at_ms    INTEGER,
    last_refresh_ms     INTEGER,
    created_ms          INTEGER NOT NULL,
    updated_ms          INTEGER NOT NULL
);

-- Append-only audit trail. No foreign key: events outlive a deleted
-- credential. Never holds a secret.
CREATE TABLE IF NOT EXISTS events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    credential_id  TEXT NOT NULL,
    at_ms          INTEGER NOT NULL,
    from_state     TEXT,
    to_state       TEXT NOT NULL,
    version        INTEGER NOT NULL,
    actor          TEXT NOT NULL,
    reason         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_credential ON events (credential_id, seq);

-- Quota snapshots, with history (pruned by age; the newest is always kept).
CREATE TABLE IF NOT EXISTS quota_snapshots (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    credential_id  TEXT NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    fetched_at_ms  INTEGER NOT NULL,
    -- 'ok', or the failure's code (http_503, bad_json, unauthorized, ...).
    status         TEXT NOT NULL,
    http_status    INTEGER,
    plan_type      TEXT,
    limit_reached  INTEGER,
    -- JSON: [{"name","used_percent","window_seconds","resets_at"}...]
    windows        TEXT,
    -- JSON: {"has_credits","unlimited","balance"}
    credits        TEXT,
    error_message  TEXT,
    -- The answer as received (capped), for what the columns do not hold.
    body           TEXT
);
CREATE INDEX IF NOT EXISTS quota_by_credential ON quota_snapshots (credential_id, seq);

-- Database-wide settings: 'key_check' (a value sealed with the encryption
-- key) marks an encrypted database and detects a wrong key at start-up.
CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY NOT NULL,
    value  TEXT NOT NULL
);

-- Handles of the Codex token-endpoint facade: what a client presents as its
-- "refresh token". Only a SHA-256 of each handle is stored.
CREATE TABLE IF NOT EXISTS handles (
    hash              TEXT PRIMARY KEY NOT NULL,
    credential_id     TEXT NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    label             TEXT NOT NULL,
    created_ms        INTEGER NOT NULL,
    last_used_ms      INTEGER,
    -- Fingerprint (SHA-256 prefix) of the access token last answered to
    -- this client: tells "has not seen the current token" from "came back".
    served_token      TEXT,
    revoked_ms        INTEGER
);
CREATE INDEX IF NOT EXISTS handles_by_credential ON handles (credential_id);
