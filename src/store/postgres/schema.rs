//! Creating and migrating the schema (versioned, like SQLite's
//! `user_version`: `schema_migrations` records each version applied), the
//! encryption key check and the refresh-token fingerprint key — all at
//! open, each in one transaction under an advisory lock, so that boxes
//! starting together migrate once.

use postgres::Client;

use super::clock::SERVER_NOW_MS;
use super::errors::pg_err;
use crate::error::{DbError, DbKind, Error, Result};
use crate::seal::Sealer;
use crate::store::codec::KEY_CHECK as CHECK;
use crate::store::fpkey::{FpKey, META_KEY};

/// Each entry takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/postgres/0001_schema.sql"),
    include_str!("../../../migrations/postgres/0002_pools_cooldowns_notifications.sql"),
];

/// The schema version this build writes.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

/// The advisory lock key of schema work in `schema` (any number unique to
/// it; two schemas of one database do not wait on each other).
fn lock_key(schema: &str) -> i64 {
    crate::seal::hmac_sha256(b"tokenwarden schema lock", schema.as_bytes())[..8]
        .iter()
        .fold(0i64, |acc, b| (acc << 8) | i64::from(*b))
}

/// Brings `schema` to [`VERSION`], refusing one from a newer release.
pub(super) fn migrate(client: &mut Client, schema: &str, shown: &str) -> Result<()> {
    let ctx = |e: postgres::Error| match pg_err(e) {
        Error::Db(d) => Error::Db(d.with_context(shown.to_owned())),
        other => other,
    };
    let mut tx = client.transaction().map_err(ctx)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(schema)])
        .map_err(ctx)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; \
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations \
         (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)"
    ))
    .map_err(ctx)?;
    let found: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .map_err(ctx)?
        .get(0);
    if found > VERSION {
        return Err(Error::Db(DbError::new(
            DbKind::Schema,
            format!(
                "{shown}: schema {schema} has version {found}, newer than this build's \
                 {VERSION}; upgrade tokenwarden"
            ),
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let step = i as i64 + 1;
        tx.batch_execute(sql).map_err(|e| {
            Error::Db(
                DbError::caused_by(super::errors::kind_of(&e), e)
                    .with_context(format!("{shown}: migrating {schema} to version {step}")),
            )
        })?;
        tx.execute(
            &format!(
                "INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, {SERVER_NOW_MS})"
            ),
            &[&step],
        )
        .map_err(ctx)?;
    }
    tx.commit().map_err(ctx)
}

fn meta(client: &mut Client, key: &str) -> Result<Option<String>> {
    Ok(client
        .query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
        .map_err(pg_err)?
        .map(|r| r.get(0)))
}

/// Refuses a key that does not fit the database; seals a new, empty
/// database with the key it is first opened with. (The rules of SQLite's
/// `sealing::check_key`, on this schema.)
pub(super) fn check_key(client: &mut Client, shown: &str, sealer: Option<&Sealer>) -> Result<()> {
    match (sealer, meta(client, "key_check")?) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(Error::Config(format!(
            "{shown} is encrypted; set TOKENWARDEN_ENCRYPTION_KEY or pass --encryption-key-file"
        ))),
        (Some(s), Some(check)) => match s.open("", "key_check", &check) {
            Ok(v) if v == CHECK => Ok(()),
            _ => Err(Error::Config(format!(
                "the encryption key does not open {shown}; use the key it was encrypted with"
            ))),
        },
        (Some(s), None) => {
            let mut tx = client.transaction().map_err(pg_err)?;
            tx.execute("LOCK TABLE credentials IN SHARE ROW EXCLUSIVE MODE", &[])
                .map_err(pg_err)?;
            let rows: i64 = tx
                .query_one("SELECT count(*) FROM credentials", &[])
                .map_err(pg_err)?
                .get(0);
            if rows > 0 {
                return Err(Error::Config(format!(
                    "{shown} is not encrypted; encrypting a PostgreSQL store in place is not \
                     supported yet (migrate it to an encrypted SQLite file and back)"
                )));
            }
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('key_check', $1) \
                 ON CONFLICT (key) DO NOTHING",
                &[&s.seal("", "key_check", CHECK)],
            )
            .map_err(pg_err)?;
            tx.commit().map_err(pg_err)?;
            // Another box may have sealed it first, with another key.
            check_key(client, shown, sealer)
        }
    }
}

/// The database's fingerprint key, made (once, whichever box is first) if
/// missing.
pub(super) fn fingerprint_key(client: &mut Client, sealer: Option<&Sealer>) -> Result<FpKey> {
    if let Some(stored) = meta(client, META_KEY)? {
        return FpKey::from_stored(&stored, sealer);
    }
    let key = FpKey::random()?;
    client
        .execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&META_KEY, &key.stored(sealer)],
        )
        .map_err(pg_err)?;
    // Whichever insert won is the key.
    let stored = meta(client, META_KEY)?.ok_or(Error::Internal("fingerprint key vanished"))?;
    FpKey::from_stored(&stored, sealer)
}

/// The id of the server's lease clock: ONE id per database, kept in `meta`
/// and read by every box, whatever its role may see — two boxes that named
/// the clock differently would each take the other's leases for readings
/// of another clock, that is, over. The first box to open the database
/// picks it: the cluster's system identifier (shared by a physical standby,
/// so a failover keeps it) where `pg_control_system()` is granted, else a
/// random id. Never 0.
pub(super) fn clock_id(client: &mut Client) -> Result<i64> {
    let stored = |client: &mut Client| -> Result<Option<i64>> {
        match meta(client, "lease_clock")? {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                Error::Db(DbError::new(
                    DbKind::Corrupt,
                    format!("meta lease_clock is not a number: {v:?}"),
                ))
            }),
        }
    };
    let id = match stored(client)? {
        Some(id) => id,
        None => {
            let made = client
                .query_one("SELECT system_identifier FROM pg_control_system()", &[])
                .ok()
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or_else(|| crate::clock::unique_u64() as i64);
            client
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('lease_clock', $1) \
                     ON CONFLICT (key) DO NOTHING",
                    &[&made.to_string()],
                )
                .map_err(pg_err)?;
            // Whichever insert won is the id.
            stored(client)?.ok_or(Error::Internal("lease clock id vanished"))?
        }
    };
    Ok(match id {
        0 => 1,
        id => id,
    })
}
