-- tokenwarden's PostgreSQL schema, version 2: SQLite's
-- migrations/0003_pools_cooldowns_notifications.sql (issue 15) — see that
-- file for what each table means. Applied by
-- src/store/postgres/schema.rs after version 1. Times are unix ms.

-- When the current run of failed refreshes began; NULL while the last
-- refresh did not fail (kept by apply's UPDATE).
ALTER TABLE credentials ADD COLUMN IF NOT EXISTS failing_since_ms BIGINT;

CREATE TABLE IF NOT EXISTS pool_members (
    pool            TEXT COLLATE "C" NOT NULL,
    credential_id   TEXT COLLATE "C" NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    added_ms        BIGINT NOT NULL,
    last_served_ms  BIGINT,
    PRIMARY KEY (pool, credential_id)
);
CREATE INDEX IF NOT EXISTS pool_members_by_credential ON pool_members (credential_id);

CREATE TABLE IF NOT EXISTS pool_sticky (
    pool            TEXT COLLATE "C" NOT NULL,
    sticky_key      TEXT NOT NULL,
    credential_id   TEXT COLLATE "C" NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    used_ms         BIGINT NOT NULL,
    PRIMARY KEY (pool, sticky_key)
);

CREATE TABLE IF NOT EXISTS cooldowns (
    credential_id   TEXT COLLATE "C" PRIMARY KEY NOT NULL
                        REFERENCES credentials (id) ON DELETE CASCADE,
    until_ms        BIGINT NOT NULL,
    reason          TEXT NOT NULL,
    source          TEXT NOT NULL CHECK (source IN ('manual', 'quota')),
    set_ms          BIGINT NOT NULL,
    actor           TEXT NOT NULL
);

-- No foreign key: a notification outlives its credential.
CREATE TABLE IF NOT EXISTS notifications (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL,
    credential_id    TEXT,
    created_ms       BIGINT NOT NULL,
    payload          TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms  BIGINT NOT NULL,
    delivered_ms     BIGINT,
    failed_ms        BIGINT,
    last_error       TEXT
);
CREATE INDEX IF NOT EXISTS notifications_pending
    ON notifications (next_attempt_ms) WHERE delivered_ms IS NULL AND failed_ms IS NULL;
