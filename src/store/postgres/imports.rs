//! Imports on PostgreSQL: a new credential, or a replace guarded by the
//! version read — the rules of SQLite's `imports.rs` (see
//! [`Backend::replace`](crate::store::Backend::replace)), in this dialect.
//! Imports of one database take turns on an advisory lock, so two boxes
//! importing one refresh token under two ids cannot both pass the
//! "held elsewhere" check.

use postgres::Transaction;

use super::errors::pg_err;
use super::rows::decode;
use super::Postgres;
use crate::credential::{Credential, NewCredential};
use crate::error::{Error, Result, Spent};
use crate::provider::{ClientAuth, Encoding};
use crate::secret::Secret;
use crate::state::State;
use crate::store::codec::Codec;
use crate::store::fpkey::spent_error;
use crate::store::rowdata::{Secrets, COLUMNS};

/// `spent_tokens.reason` of an access token an upstream API refused.
const REJECTED_ACCESS: &str = "rejected access token";

fn turn(tx: &mut Transaction<'_>, db: &Postgres) -> Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&db.import_lock])
        .map(drop)
        .map_err(pg_err)
}

fn select_one(tx: &mut Transaction<'_>, db: &Postgres, id: &str) -> Result<Option<Credential>> {
    let row = tx
        .query_opt(
            format!("SELECT {COLUMNS} FROM credentials WHERE id = $1").as_str(),
            &[&id],
        )
        .map_err(pg_err)?;
    row.map(|r| decode(db, &r, Secrets::Keep)).transpose()
}

/// Refuses `fp` for credential `id` if another credential holds it or it
/// was spent.
fn check_token(tx: &mut Transaction<'_>, id: &str, fp: &str) -> Result<()> {
    if let Some(r) = tx
        .query_opt(
            "SELECT id FROM credentials WHERE refresh_fp = $1 AND id <> $2",
            &[&fp, &id],
        )
        .map_err(pg_err)?
    {
        return Err(Error::TokenHeldElsewhere {
            id: id.to_owned(),
            holder: r.get(0),
        });
    }
    if let Some(r) = tx
        .query_opt(
            "SELECT credential_id, spent_at_ms, reason FROM spent_tokens WHERE fp = $1",
            &[&fp],
        )
        .map_err(pg_err)?
    {
        let reason: String = r.get(2);
        return Err(spent_error(id, r.get(0), r.get(1), &reason));
    }
    Ok(())
}

pub(super) fn record_spent(
    tx: &mut Transaction<'_>,
    fp: &str,
    id: &str,
    now_ms: i64,
    reason: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO spent_tokens (fp, credential_id, spent_at_ms, reason) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (fp) DO NOTHING",
        &[&fp, &id, &now_ms, &reason],
    )
    .map(drop)
    .map_err(pg_err)
}

pub(super) fn append_event(
    tx: &mut Transaction<'_>,
    id: &str,
    (from, to, version, reason): (Option<&str>, &str, i64, &str),
    actor: &str,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO events (credential_id, at_ms, from_state, to_state, version, actor, reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&id, &now_ms, &from, &to, &version, &actor, &reason],
    )
    .map(drop)
    .map_err(pg_err)
}

/// The secret columns of an import, sealed; an access token once reported
/// rejected is left out (the first use refreshes).
struct Sealed {
    access_token: Option<String>,
    refresh_token: String,
    id_token: Option<String>,
    client_secret: Option<String>,
    api_key: Option<String>,
}

fn sealed(tx: &mut Transaction<'_>, codec: &Codec, c: &NewCredential) -> Result<Sealed> {
    let seal = |col: &str, s: &Secret| codec.seal(&c.id, col, s.expose());
    let seal_opt = |col: &str, s: &Option<Secret>| s.as_ref().map(|s| seal(col, s));
    let access = match &c.access_token {
        Some(t) => {
            let fp = codec.fingerprint(t.expose())?;
            let rejected = tx
                .query_opt(
                    "SELECT 1 FROM spent_tokens WHERE fp = $1 AND reason = $2",
                    &[&fp, &REJECTED_ACCESS],
                )
                .map_err(pg_err)?
                .is_some();
            if rejected {
                log::warn!(
                    "{}: the imported access token was reported rejected before; it is left out \
                     (the first use refreshes)",
                    c.id
                );
                None
            } else {
                Some(t.clone())
            }
        }
        None => None,
    };
    Ok(Sealed {
        access_token: seal_opt("access_token", &access),
        refresh_token: seal("refresh_token", &c.refresh_token),
        id_token: seal_opt("id_token", &c.id_token),
        client_secret: seal_opt("client_secret", &c.provider.client_secret),
        api_key: seal_opt("api_key", &c.api_key),
    })
}

/// Writes the whole row of `c` (an insert, or a replace with another
/// refresh token): `sql` binds $1..$21 as SQLite's `whole_row` does.
fn write_whole(
    tx: &mut Transaction<'_>,
    sql: &str,
    c: &NewCredential,
    s: &Sealed,
    now_ms: i64,
    fp: &str,
) -> Result<()> {
    let p = &c.provider;
    tx.execute(
        sql,
        &[
            &c.id,
            &p.kind.as_str(),
            &s.access_token,
            &s.refresh_token,
            &s.id_token,
            &c.expires_at_ms,
            &p.token_url,
            &p.client_id,
            &s.client_secret,
            &p.scope,
            &p.encoding.map(Encoding::as_str),
            &p.client_auth.map(ClientAuth::as_str),
            &s.api_key,
            &c.claims.account_id,
            &c.claims.email,
            &c.claims.plan_type,
            &c.claims.user_id,
            &c.claims.organization_id,
            &c.last_refresh_ms,
            &now_ms,
            &fp,
        ],
    )
    .map(drop)
    .map_err(pg_err)
}

/// Remembers that an upstream API refused `token`, an access token of `id`.
pub(super) fn remember_rejected(db: &Postgres, id: &str, token: &str, now_ms: i64) -> Result<()> {
    let fp = db.codec.fingerprint(token)?;
    db.write_tx(|tx| record_spent(tx, &fp, id, now_ms, REJECTED_ACCESS))
}

pub(super) fn insert(
    db: &Postgres,
    c: &NewCredential,
    actor: &str,
    now_ms: i64,
) -> Result<Credential> {
    db.write_tx(|tx| {
        turn(tx, db)?;
        insert_in(tx, db, c, actor, now_ms)
    })
}

/// [`insert`], unless a row of `c`'s provider that `taken` accepts is
/// already stored: that row (without secrets) and nothing written. The
/// scan runs inside the insert's transaction after its import turn (the
/// advisory lock every insert and replace takes first), so no other
/// insert or replace of any box commits between the look and the insert.
pub(super) fn insert_unless(
    db: &Postgres,
    c: &NewCredential,
    taken: &dyn Fn(&Credential) -> bool,
    actor: &str,
    now_ms: i64,
) -> Result<std::result::Result<Credential, Credential>> {
    db.write_tx(|tx| {
        turn(tx, db)?;
        let rows = tx
            .query(
                format!("SELECT {COLUMNS} FROM credentials WHERE provider = $1 ORDER BY id")
                    .as_str(),
                &[&c.provider.kind.as_str()],
            )
            .map_err(pg_err)?;
        for r in &rows {
            let row = decode(db, r, Secrets::Drop)?;
            if taken(&row) {
                return Ok(Err(row));
            }
        }
        insert_in(tx, db, c, actor, now_ms).map(Ok)
    })
}

pub(super) fn insert_many(
    db: &Postgres,
    creds: &[&NewCredential],
    all_or_nothing: bool,
    actor: &str,
    now_ms: i64,
) -> Result<Vec<Result<Credential>>> {
    db.write_tx(|tx| {
        turn(tx, db)?;
        let mut out = Vec::with_capacity(creds.len());
        for c in creds {
            tx.batch_execute("SAVEPOINT import").map_err(pg_err)?;
            match insert_in(tx, db, c, actor, now_ms) {
                Ok(row) => {
                    tx.batch_execute("RELEASE import").map_err(pg_err)?;
                    out.push(Ok(row));
                }
                Err(
                    e @ (Error::Exists(_)
                    | Error::SpentToken { .. }
                    | Error::TokenHeldElsewhere { .. }),
                ) if !all_or_nothing => {
                    tx.batch_execute("ROLLBACK TO import; RELEASE import")
                        .map_err(pg_err)?;
                    out.push(Err(e));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    })
}

fn insert_in(
    tx: &mut Transaction<'_>,
    db: &Postgres,
    c: &NewCredential,
    actor: &str,
    now_ms: i64,
) -> Result<Credential> {
    let fp = db.codec.fingerprint(c.refresh_token.expose())?;
    check_token(tx, &c.id, &fp)?;
    let exists = tx
        .query_opt("SELECT 1 FROM credentials WHERE id = $1", &[&c.id])
        .map_err(pg_err)?
        .is_some();
    if exists {
        return Err(Error::Exists(c.id.clone()));
    }
    let s = sealed(tx, &db.codec, c)?;
    write_whole(
        tx,
        "INSERT INTO credentials (id, provider, state, version, access_token, \
         refresh_token, id_token, expires_at_ms, token_url, client_id, client_secret, scope, \
         encoding, client_auth, api_key, account_id, email, plan_type, user_id, \
         organization_id, failures, last_refresh_ms, created_ms, updated_ms, refresh_fp) \
         VALUES ($1, $2, 'valid', 1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
         $15, $16, $17, $18, 0, $19, $20, $20, $21)",
        c,
        &s,
        now_ms,
        &fp,
    )?;
    append_event(tx, &c.id, (None, "valid", 1, "imported"), actor, now_ms)?;
    select_one(tx, db, &c.id)?.ok_or(Error::Internal("imported row vanished"))
}

/// See [`Backend::replace`](crate::store::Backend::replace).
pub(super) fn replace(
    db: &Postgres,
    c: &NewCredential,
    version: i64,
    actor: &str,
    now_ms: i64,
) -> Result<Option<Credential>> {
    db.write_tx(|tx| {
        turn(tx, db)?;
        let fp = db.codec.fingerprint(c.refresh_token.expose())?;
        // Locks the row: nothing changes it between this read and the write.
        let locked = tx
            .query_opt(
                "SELECT version, refresh_fp FROM credentials WHERE id = $1 FOR UPDATE",
                &[&c.id],
            )
            .map_err(pg_err)?;
        let Some(locked) = locked else {
            return Ok(None);
        };
        if locked.get::<_, i64>(0) != version {
            return Ok(None);
        }
        let stored_fp: Option<String> = locked.get(1);
        let stored = select_one(tx, db, &c.id)?.ok_or(Error::Internal("locked row vanished"))?;
        let same = match &stored_fp {
            Some(old) => *old == fp,
            None => stored.refresh_token == c.refresh_token,
        };
        let p = &c.provider;
        let s = sealed(tx, &db.codec, c)?;
        let (from, to, reason);
        if same {
            // Settings and claims only: the tokens, state, failures,
            // backoff and lease are about the refresh token, which has not
            // changed (see SQLite's imports.rs).
            tx.execute(
                "UPDATE credentials SET version = version + 1, provider = $2, token_url = $3, \
                 client_id = $4, client_secret = $5, scope = $6, encoding = $7, \
                 client_auth = $8, api_key = $9, account_id = COALESCE($10, account_id), \
                 email = COALESCE($11, email), plan_type = COALESCE($12, plan_type), \
                 user_id = COALESCE($13, user_id), \
                 organization_id = COALESCE($14, organization_id), updated_ms = $15, \
                 refresh_fp = COALESCE(refresh_fp, CASE WHEN EXISTS (SELECT 1 FROM credentials x \
                     WHERE x.refresh_fp = $16 AND x.id <> $1) THEN NULL ELSE $16 END) \
                 WHERE id = $1",
                &[
                    &c.id,
                    &p.kind.as_str(),
                    &p.token_url,
                    &p.client_id,
                    &s.client_secret,
                    &p.scope,
                    &p.encoding.map(Encoding::as_str),
                    &p.client_auth.map(ClientAuth::as_str),
                    &s.api_key,
                    &c.claims.account_id,
                    &c.claims.email,
                    &c.claims.plan_type,
                    &c.claims.user_id,
                    &c.claims.organization_id,
                    &now_ms,
                    &fp,
                ],
            )
            .map_err(pg_err)?;
            (from, to) = (stored.status.state, stored.status.state);
            reason = "re-imported, same refresh token";
        } else {
            check_token(tx, &c.id, &fp)?;
            if let Some(old) = &stored_fp {
                record_spent(tx, old, &c.id, now_ms, Spent::Replaced.as_str())?;
            }
            write_whole(
                tx,
                "UPDATE credentials SET provider = $2, state = 'valid', version = version + 1, \
                 access_token = $3, refresh_token = $4, id_token = $5, expires_at_ms = $6, \
                 token_url = $7, client_id = $8, client_secret = $9, scope = $10, \
                 encoding = $11, client_auth = $12, api_key = $13, account_id = $14, \
                 email = $15, plan_type = $16, user_id = $17, organization_id = $18, \
                 lease_owner = NULL, lease_id = NULL, lease_until_ms = NULL, lease_clock = NULL, \
                 resume_state = NULL, failures = 0, next_attempt_at_ms = NULL, \
                 dead_reason = NULL, last_error_code = NULL, last_error_message = NULL, \
                 last_error_at_ms = NULL, last_refresh_ms = $19, updated_ms = $20, \
                 refresh_fp = $21 WHERE id = $1",
                c,
                &s,
                now_ms,
                &fp,
            )?;
            (from, to) = (stored.status.state, State::Valid);
            reason = "re-imported";
        }
        append_event(
            tx,
            &c.id,
            (Some(from.as_str()), to.as_str(), version + 1, reason),
            actor,
            now_ms,
        )?;
        db.notify_in(tx, &c.id, version + 1)?;
        select_one(tx, db, &c.id)
    })
}
