-- tokenwarden schema, version 3 (applied after 0002 by
-- src/store/sqlite/schema.rs; PRAGMA user_version records it): pools,
-- account-level cooldowns and the notifications outbox (issue 15).

-- When the current run of failed refreshes began (unix ms): NULL while the
-- last refresh did not fail. Kept by every transition's UPDATE (set at the
-- first failure, i.e. when `failures` leaves 0, cleared when it goes back
-- to 0; an import that resets `failures` leaves a stale value that the
-- next failure overwrites), so "failing for
-- longer than TOKENWARDEN_NOTIFY_FAILING_AFTER" is a fact of the row.
ALTER TABLE credentials ADD COLUMN failing_since_ms INTEGER;

-- A credential may belong to any number of pools. `last_served_ms` is when
-- a pool last handed this member out (the pick's tie-break: least recently
-- served first, which spreads the load).
CREATE TABLE IF NOT EXISTS pool_members (
    pool            TEXT NOT NULL,
    credential_id   TEXT NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    added_ms        INTEGER NOT NULL,
    last_served_ms  INTEGER,
    PRIMARY KEY (pool, credential_id)
);
CREATE INDEX IF NOT EXISTS pool_members_by_credential ON pool_members (credential_id);

-- Session affinity: the member a pool last handed out for a sticky key.
-- Kept while that member stays usable; rows unused for a day are pruned.
CREATE TABLE IF NOT EXISTS pool_sticky (
    pool            TEXT NOT NULL,
    sticky_key      TEXT NOT NULL,
    credential_id   TEXT NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    used_ms         INTEGER NOT NULL,
    PRIMARY KEY (pool, sticky_key)
);

-- Account-level cooldowns: no pool hands the credential out before
-- `until_ms`. One per credential; setting and clearing it append an event
-- row in the same transaction. `source` is 'manual' (an operator or caller,
-- e.g. after a 429 usage_limit_reached) or 'quota' (a snapshot showed an
-- exhausted window; `until_ms` is its reset).
CREATE TABLE IF NOT EXISTS cooldowns (
    credential_id   TEXT PRIMARY KEY NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    until_ms        INTEGER NOT NULL,
    reason          TEXT NOT NULL,
    source          TEXT NOT NULL CHECK (source IN ('manual', 'quota')),
    set_ms          INTEGER NOT NULL,
    actor           TEXT NOT NULL
);

-- The notifications outbox: written in the same transaction as the state
-- change it tells of, delivered at least once afterwards (`event_id` is
-- stable: receivers deduplicate on it, and a second write of the same
-- event is ignored). `payload` is the JSON body sent; it never holds a
-- secret. No foreign key: a notification outlives its credential.
CREATE TABLE IF NOT EXISTS notifications (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL,
    credential_id    TEXT,
    created_ms       INTEGER NOT NULL,
    payload          TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    -- Not before this time: the backoff after a failed attempt, or the
    -- hold of a deliverer working on it (a crashed one's hold runs out).
    next_attempt_ms  INTEGER NOT NULL,
    delivered_ms     INTEGER,
    -- Given up on (after the retry budget); still listed.
    failed_ms        INTEGER,
    last_error       TEXT
);
CREATE INDEX IF NOT EXISTS notifications_pending
    ON notifications (next_attempt_ms) WHERE delivered_ms IS NULL AND failed_ms IS NULL;
