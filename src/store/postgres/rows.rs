//! Reading credential rows: point reads (which also read the server's
//! lease clock, in the same round trip), the full list and the streaming
//! scan. Decoding is the shared [`rowdata::decode`].

use std::ops::ControlFlow;

use postgres::fallible_iterator::FallibleIterator;
use postgres::Row;

use super::clock::{self, SERVER_NOW_MS};
use super::Postgres;
use crate::credential::Credential;
use crate::error::Result;
use crate::provider::ProviderKind;
use crate::store::rowdata::{self, Secrets, COLUMNS};
use crate::store::Scan;

/// A driver row, read by [`rowdata::decode`]. Every integer column is
/// BIGINT.
pub(super) struct Cells<'a>(pub(super) &'a Row);

impl rowdata::Cells for Cells<'_> {
    type Error = crate::error::Error;

    fn text(&self, i: usize) -> Result<Option<String>> {
        self.0.try_get(i).map_err(super::errors::pg_err)
    }

    fn int(&self, i: usize) -> Result<Option<i64>> {
        self.0.try_get(i).map_err(super::errors::pg_err)
    }

    fn bad(&self, i: usize, why: String) -> crate::error::Error {
        crate::error::Error::Db(crate::error::DbError::new(
            crate::error::DbKind::Corrupt,
            format!("credential row, column {i}: {why}"),
        ))
    }
}

/// Decodes a row read with [`COLUMNS`].
/// Every lease on PostgreSQL is on the server's clock (ms since the
/// epoch by `clock_timestamp()`), whatever id it was written under — a box
/// of an older release, a row restored from another cluster: the lease is
/// read as this database's clock, so a foreign id never makes a live lease
/// look over (a box's boot-clock value, as `migrate` might carry from
/// SQLite, reads as long past).
pub(super) fn decode(db: &Postgres, row: &Row, secrets: Secrets) -> Result<Credential> {
    let mut c = rowdata::decode(&Cells(row), &db.codec, secrets)?;
    if let Some(lease) = c.status.lease.as_mut() {
        lease.until.clock = db.clock.id();
    }
    Ok(c)
}

/// The point read: the row (all NULL if there is none) and the server's
/// clock, in one round trip.
fn point_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "SELECT {COLUMNS}, t.now_ms FROM (SELECT {SERVER_NOW_MS} AS now_ms) t \
             LEFT JOIN credentials ON credentials.id = $1"
        )
    })
}

/// Index of the server clock column in [`point_sql`]: just after
/// [`COLUMNS`].
fn now_column() -> usize {
    COLUMNS.split(',').count()
}

fn point(db: &Postgres, id: &str, secrets: Secrets) -> Result<Option<Credential>> {
    let (sent, row) = db.read(|c| {
        let stmt = c.stmt(point_sql())?;
        let sent = clock::local_ms();
        Ok((sent, c.client.query_one(&stmt, &[&id])?))
    })?;
    db.clock.observe(sent, row.get(now_column()));
    match row.get::<_, Option<String>>(0) {
        None => Ok(None),
        Some(_) => decode(db, &row, secrets).map(Some),
    }
}

pub(super) fn get(db: &Postgres, id: &str) -> Result<Option<Credential>> {
    point(db, id, Secrets::Keep)
}

pub(super) fn get_without_secrets(db: &Postgres, id: &str) -> Result<Option<Credential>> {
    point(db, id, Secrets::Drop)
}

/// Only the version (and the server's clock): the cheap poll of a waiter.
pub(super) fn version(db: &Postgres, id: &str) -> Result<Option<i64>> {
    const SQL: &str =
        "SELECT credentials.version, (extract(epoch from clock_timestamp()) * 1000)::int8 \
                       FROM (SELECT 1) t LEFT JOIN credentials ON credentials.id = $1";
    let (sent, row) = db.read(|c| {
        let stmt = c.stmt(SQL)?;
        let sent = clock::local_ms();
        Ok((sent, c.client.query_one(&stmt, &[&id])?))
    })?;
    db.clock.observe(sent, row.get(1));
    Ok(row.get(0))
}

/// Every credential, by id.
pub(super) fn list(db: &Postgres) -> Result<Vec<Credential>> {
    let sql = format!("SELECT {COLUMNS} FROM credentials ORDER BY id");
    let rows = db.read(|c| c.client.query(sql.as_str(), &[]))?;
    rows.iter().map(|r| decode(db, r, Secrets::Keep)).collect()
}

/// Hands the credentials `scan` selects, by id and without their secrets,
/// to `f` as they arrive, until `f` breaks.
pub(super) fn scan(
    db: &Postgres,
    scan: Scan<'_>,
    f: &mut dyn FnMut(Credential) -> ControlFlow<()>,
) -> Result<()> {
    let sql = format!(
        "SELECT {COLUMNS} FROM credentials WHERE ($1::text IS NULL OR id > $1) \
         AND ($2::text IS NULL OR provider = $2) AND ($3::text IS NULL OR id IN \
         (SELECT credential_id FROM pool_members WHERE pool = $3)) ORDER BY id"
    );
    let provider = scan.provider.map(ProviderKind::as_str);
    let mut conn = db.conn()?;
    let params: [&(dyn postgres::types::ToSql + Sync); 3] = [&scan.after, &provider, &scan.pool];
    let mut rows = conn
        .client
        .query_raw(sql.as_str(), params)
        .map_err(super::errors::pg_err)?;
    while let Some(r) = rows.next().map_err(super::errors::pg_err)? {
        if f(decode(db, &r, Secrets::Drop)?).is_break() {
            break;
        }
    }
    Ok(())
}
