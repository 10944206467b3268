//! Reading credential rows: the column list, decoding a row (opening its
//! sealed columns, refusing values this build does not know), and the
//! point and full reads.

use std::ops::ControlFlow;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::errors::db_err;
use super::sealing::Codec;
use super::Sqlite;
use crate::credential::Credential;
use crate::error::Result;
use crate::provider::ProviderKind;
use crate::store::{rowdata, Scan};

pub(super) use crate::store::rowdata::{Secrets, COLUMNS};

/// A SQLite row, read by [`rowdata::decode`].
struct Cells<'a, 'b>(&'a Row<'b>);

impl rowdata::Cells for Cells<'_, '_> {
    type Error = rusqlite::Error;

    fn text(&self, i: usize) -> rusqlite::Result<Option<String>> {
        self.0.get(i)
    }

    fn int(&self, i: usize) -> rusqlite::Result<Option<i64>> {
        self.0.get(i)
    }

    fn bad(&self, i: usize, why: String) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, why.into())
    }
}

pub(super) fn read_credential(r: &Row, codec: &Codec) -> rusqlite::Result<Credential> {
    read_row(r, codec, Secrets::Keep)
}

pub(super) fn read_row(r: &Row, codec: &Codec, secrets: Secrets) -> rusqlite::Result<Credential> {
    rowdata::decode(&Cells(r), codec, secrets)
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
