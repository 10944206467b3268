//! Reading credential rows: the column list, decoding a row (opening its
//! sealed columns, refusing values this build does not know), and the
//! point and full reads.

use std::ops::ControlFlow;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::errors::db_err;
use super::sealing::{self, Codec};
use super::Sqlite;
use crate::credential::{Claims, Credential, LastError, ProviderConfig};
use crate::error::Result;
use crate::provider::{ClientAuth, Encoding, ProviderKind};
use crate::secret::Secret;
use crate::state::{Lease, LeaseTime, State, Status};
use crate::store::Scan;

pub(super) const COLUMNS: &str =
    "id, provider, state, version, access_token, refresh_token, id_token, \
    expires_at_ms, token_url, client_id, client_secret, scope, encoding, client_auth, api_key, \
    account_id, email, plan_type, user_id, organization_id, lease_owner, lease_id, \
    lease_until_ms, resume_state, failures, next_attempt_at_ms, dead_reason, last_error_code, \
    last_error_message, last_error_at_ms, last_refresh_ms, created_ms, updated_ms, lease_clock, \
    failing_since_ms";

/// Converts a TEXT column through `parse`, failing on values this build
/// does not know (a corrupt row, never silently a default).
fn parsed<T>(row: &Row, idx: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<Option<T>> {
    let raw: Option<String> = row.get(idx)?;
    raw.map(|s| {
        parse(&s).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                idx,
                rusqlite::types::Type::Text,
                format!("unknown value {s:?}").into(),
            )
        })
    })
    .transpose()
}

fn required<T>(v: Option<T>, idx: usize) -> rusqlite::Result<T> {
    v.ok_or(rusqlite::Error::InvalidColumnType(
        idx,
        "NULL".into(),
        rusqlite::types::Type::Null,
    ))
}

pub(super) fn read_credential(r: &Row, codec: &Codec) -> rusqlite::Result<Credential> {
    read_row(r, codec, Secrets::Keep)
}

/// Whether a row is read with its secret columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Secrets {
    Keep,
    /// Left out (the refresh token reads as empty); only whether there is
    /// an access token is kept, in the status.
    Drop,
}

pub(super) fn read_row(r: &Row, codec: &Codec, secrets: Secrets) -> rusqlite::Result<Credential> {
    let id: String = r.get(0)?;
    let keep = secrets == Secrets::Keep;
    let secret = |i: usize| -> rusqlite::Result<Option<Secret>> {
        r.get::<_, Option<String>>(i)?
            .map(|v| codec.open(&id, sealing::column(i), v, i))
            .transpose()
    };
    let secret_kept = |i: usize| if keep { secret(i) } else { Ok(None) };
    let access_token = secret(4)?;
    let has_access_token = access_token.as_ref().is_some_and(|t| !t.is_empty());
    let access_token = if keep { access_token } else { None };
    let lease = match (
        r.get::<_, Option<String>>(20)?,
        r.get::<_, Option<String>>(21)?,
    ) {
        (Some(owner), Some(id)) => Some(Lease {
            owner,
            id,
            // No clock (a lease of schema version 1): judged expired.
            until: LeaseTime {
                clock: r.get::<_, Option<i64>>(33)?.unwrap_or(0),
                ms: r.get::<_, Option<i64>>(22)?.unwrap_or(0),
            },
        }),
        _ => None,
    };
    let last_error = match r.get::<_, Option<String>>(27)? {
        Some(code) => Some(LastError {
            code,
            message: r.get::<_, Option<String>>(28)?.unwrap_or_default(),
            at_ms: r.get::<_, Option<i64>>(29)?.unwrap_or(0),
        }),
        None => None,
    };
    Ok(Credential {
        id: id.clone(),
        provider: ProviderConfig {
            kind: required(parsed(r, 1, ProviderKind::parse)?, 1)?,
            token_url: r.get(8)?,
            client_id: r.get(9)?,
            client_secret: secret_kept(10)?,
            scope: r.get(11)?,
            encoding: parsed(r, 12, Encoding::parse)?,
            client_auth: parsed(r, 13, ClientAuth::parse)?,
        },
        status: Status {
            state: required(parsed(r, 2, State::parse)?, 2)?,
            version: r.get(3)?,
            expires_at_ms: r.get(7)?,
            has_access_token,
            lease,
            resume: parsed(r, 23, State::parse)?,
            failures: r.get(24)?,
            next_attempt_at_ms: r.get(25)?,
            last_refresh_ms: r.get(30)?,
            dead_reason: r.get(26)?,
        },
        access_token,
        refresh_token: match secrets {
            Secrets::Keep => required(secret(5)?, 5)?,
            Secrets::Drop => Secret::new(String::new()),
        },
        id_token: secret_kept(6)?,
        claims: Claims {
            account_id: r.get(15)?,
            email: r.get(16)?,
            plan_type: r.get(17)?,
            user_id: r.get(18)?,
            organization_id: r.get(19)?,
        },
        last_error,
        api_key: secret_kept(14)?,
        created_ms: r.get(31)?,
        updated_ms: r.get(32)?,
        failing_since_ms: r.get(34)?,
    })
}

pub(super) fn select_one(
    conn: &Connection,
    id: &str,
    codec: &Codec,
) -> rusqlite::Result<Option<Credential>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM credentials WHERE id = ?1"))?
        .query_row([id], |r| read_credential(r, codec))
        .optional()
}

/// Reads one credential.
pub(super) fn get(db: &Sqlite, id: &str) -> Result<Option<Credential>> {
    select_one(&*db.conn()?, id, &db.codec).map_err(db_err)
}

/// Reads one credential without its secrets (as
/// [`Store::list_without_secrets`]): enough for the state machine.
pub(super) fn get_without_secrets(db: &Sqlite, id: &str) -> Result<Option<Credential>> {
    db.conn()?
        .prepare_cached(&format!("SELECT {COLUMNS} FROM credentials WHERE id = ?1"))
        .and_then(|mut s| {
            s.query_row([id], |r| read_row(r, &db.codec, Secrets::Drop))
                .optional()
        })
        .map_err(db_err)
}

/// Reads only a credential's version: the cheap poll of a waiter.
pub(super) fn version(db: &Sqlite, id: &str) -> Result<Option<i64>> {
    db.conn()?
        .prepare_cached("SELECT version FROM credentials WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(db_err)
}

/// Every credential, by id.
pub(super) fn list(db: &Sqlite) -> Result<Vec<Credential>> {
    let conn = db.conn()?;
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM credentials ORDER BY id"))
        .map_err(db_err)?;
    let rows = stmt
        .query_map([], |r| read_credential(r, &db.codec))
        .map_err(db_err)?;
    rows.collect::<rusqlite::Result<_>>().map_err(db_err)
}

/// Hands the credentials `scan` selects, by id and without their secrets,
/// to `f`, one at a time, until `f` breaks: the rows after the cursor come
/// from the primary key's order, so a page costs what it reads, not the
/// table.
pub(super) fn scan(
    db: &Sqlite,
    scan: Scan<'_>,
    f: &mut dyn FnMut(Credential) -> ControlFlow<()>,
) -> Result<()> {
    let conn = db.conn()?;
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM credentials WHERE (?1 IS NULL OR id > ?1) \
             AND (?2 IS NULL OR provider = ?2) AND (?3 IS NULL OR id IN \
             (SELECT credential_id FROM pool_members WHERE pool = ?3)) ORDER BY id"
        ))
        .map_err(db_err)?;
    let provider = scan.provider.map(ProviderKind::as_str);
    let mut rows = stmt
        .query(params![scan.after, provider, scan.pool])
        .map_err(db_err)?;
    while let Some(r) = rows.next().map_err(db_err)? {
        if f(read_row(r, &db.codec, Secrets::Drop).map_err(db_err)?).is_break() {
            break;
        }
    }
    Ok(())
}
