-- tokenwarden schema, version 2 (applied after schema.sql by
-- src/store/schema.rs; PRAGMA user_version records it).

-- Leases no longer follow any process's wall clock. `lease_until_ms` now
-- counts on the lease clock named here: on one box, CLOCK_BOOTTIME of the
-- boot whose id hashes to this value (so every process of the box agrees,
-- whatever its wall clock says). A lease on another clock (another boot,
-- or NULL: written by schema version 1) reads as expired.
ALTER TABLE credentials ADD COLUMN lease_clock INTEGER;

-- Keyed fingerprint (HMAC-SHA-256 under meta 'fingerprint_key') of the
-- credential's current refresh token, never the token. Unique: one refresh
-- token can live under one id only. NULL until computed (rows of schema
-- version 1 get theirs when a build of version 2 opens the database).
ALTER TABLE credentials ADD COLUMN refresh_fp TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS credentials_by_refresh_fp ON credentials (refresh_fp);

-- Fingerprints of every refresh token a credential has spent (sent to the
-- token endpoint and rotated away, or replaced). Importing one again is
-- refused: the provider would revoke the login on its reuse. No foreign
-- key: a spent token stays spent after its credential is deleted.
CREATE TABLE IF NOT EXISTS spent_tokens (
    fp             TEXT PRIMARY KEY NOT NULL,
    credential_id  TEXT NOT NULL,
    spent_at_ms    INTEGER NOT NULL,
    -- 'rotated': a refresh answered with another refresh token;
    -- 'replaced': an import put another refresh token in its place.
    -- 'rotated', 'replaced', 'deleted during a refresh' (src/error.rs `Spent`),
    -- or 'rejected access token': an access token an upstream API refused,
    -- never taken from an import again.
    reason         TEXT NOT NULL CHECK (reason IN ('rotated', 'replaced',
                       'deleted during a refresh', 'rejected access token'))
);
