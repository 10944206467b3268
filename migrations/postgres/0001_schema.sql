-- tokenwarden's PostgreSQL schema, version 1: the tables of SQLite's
-- schema.sql and migrations/0002 in one step, in the schema named by the
-- database URL (`schema=`, default tokenwarden; the search path points
-- there). Applied by src/store/postgres/schema.rs, which records the
-- version in schema_migrations. All times are unix milliseconds.

CREATE TABLE IF NOT EXISTS credentials (
    -- "C": ids sort bytewise, as in SQLite (list pages, scan cursors).
    id                  TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    provider            TEXT NOT NULL,
    -- Stored state; 'expiring' is derived from expires_at_ms, never stored.
    state               TEXT NOT NULL CHECK (state IN ('valid', 'refreshing', 'rejected', 'dead')),
    -- Bumped by every change; callers compare-and-swap on it.
    version             BIGINT NOT NULL,
    access_token        TEXT,
    refresh_token       TEXT NOT NULL,
    id_token            TEXT,
    expires_at_ms       BIGINT,
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
    -- The lease's end on the lease clock `lease_clock`: on PostgreSQL the
    -- server's clock_timestamp() in ms, named by the cluster's
    -- system identifier (never a box's own clock).
    lease_until_ms      BIGINT,
    lease_clock         BIGINT,
    resume_state        TEXT CHECK (resume_state IN ('valid', 'rejected', 'dead')),
    failures            BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms  BIGINT,
    dead_reason         TEXT,
    last_error_code     TEXT,
    last_error_message  TEXT,
    last_error_at_ms    BIGINT,
    last_refresh_ms     BIGINT,
    created_ms          BIGINT NOT NULL,
    updated_ms          BIGINT NOT NULL,
    -- Keyed fingerprint of the current refresh token (see fpkey.rs): one
    -- refresh token lives under one id only.
    refresh_fp          TEXT UNIQUE
);

-- Append-only audit trail; outlives a deleted credential. Never a secret.
CREATE TABLE IF NOT EXISTS events (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    credential_id  TEXT NOT NULL,
    at_ms          BIGINT NOT NULL,
    from_state     TEXT,
    to_state       TEXT NOT NULL,
    version        BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    reason         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_credential ON events (credential_id, seq);

CREATE TABLE IF NOT EXISTS quota_snapshots (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    credential_id  TEXT NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    fetched_at_ms  BIGINT NOT NULL,
    status         TEXT NOT NULL,
    http_status    INTEGER,
    plan_type      TEXT,
    limit_reached  BOOLEAN,
    windows        TEXT,
    credits        TEXT,
    error_message  TEXT,
    body           TEXT
);
CREATE INDEX IF NOT EXISTS quota_by_credential ON quota_snapshots (credential_id, seq);

-- 'key_check' (encryption), 'fingerprint_key', 'lease_clock' (the id of
-- the lease clock when the server's system identifier cannot be read).
CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY NOT NULL,
    value  TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS handles (
    hash              TEXT PRIMARY KEY NOT NULL,
    credential_id     TEXT NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    label             TEXT NOT NULL,
    created_ms        BIGINT NOT NULL,
    last_used_ms      BIGINT,
    served_token      TEXT,
    revoked_ms        BIGINT
);
CREATE INDEX IF NOT EXISTS handles_by_credential ON handles (credential_id);

CREATE TABLE IF NOT EXISTS spent_tokens (
    fp             TEXT PRIMARY KEY NOT NULL,
    credential_id  TEXT NOT NULL,
    spent_at_ms    BIGINT NOT NULL,
    reason         TEXT NOT NULL CHECK (reason IN ('rotated', 'replaced',
                       'deleted during a refresh', 'rejected access token'))
);
