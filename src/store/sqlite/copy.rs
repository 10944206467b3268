//! `migrate` on SQLite: a table's rows as stored, and loading a whole
//! database's tables in one transaction (see `store/copy.rs`).

use rusqlite::params_from_iter;
use rusqlite::types::Value;

use super::conn::Sync;
use super::errors::db_err;
use super::Sqlite;
use crate::error::Result;
use crate::store::copy::{not_empty, Cell, Kind, Table};

fn cell(v: Value, kind: Kind) -> Cell {
    match (v, kind) {
        (Value::Null, _) => Cell::Null,
        (Value::Integer(i), Kind::Bool) => Cell::Bool(i != 0),
        (Value::Integer(i), _) => Cell::Int(i),
        (Value::Text(t), _) => Cell::Text(t),
        (Value::Real(f), _) => Cell::Text(f.to_string()),
        (Value::Blob(b), _) => Cell::Text(String::from_utf8_lossy(&b).into_owned()),
    }
}

fn value(c: &Cell) -> Value {
    match c {
        Cell::Null => Value::Null,
        Cell::Int(i) => Value::Integer(*i),
        Cell::Bool(b) => Value::Integer(i64::from(*b)),
        Cell::Text(t) => Value::Text(t.clone()),
    }
}

/// One table's rows, read on `conn` (inside the caller's transaction).
fn dump_one(conn: &rusqlite::Connection, t: &Table) -> Result<Vec<Vec<Cell>>> {
    let sql = format!(
        "SELECT {} FROM {} ORDER BY {}",
        t.column_list(),
        t.name,
        t.order_by
    );
    let mut stmt = conn.prepare(&sql).map_err(db_err)?;
    let rows = stmt
        .query_map([], |r| {
            t.columns
                .iter()
                .enumerate()
                .map(|(i, (_, kind))| r.get::<_, Value>(i).map(|v| cell(v, *kind)))
                .collect::<rusqlite::Result<Vec<Cell>>>()
        })
        .map_err(db_err)?;
    rows.collect::<rusqlite::Result<_>>().map_err(db_err)
}

/// Runs `f` inside one read transaction: one snapshot of the file (WAL).
fn in_snapshot<T>(db: &Sqlite, f: impl FnOnce(&rusqlite::Connection) -> Result<T>) -> Result<T> {
    let conn = db.conn()?;
    let tx = conn.unchecked_transaction().map_err(db_err)?;
    let out = f(&tx)?;
    tx.commit().map_err(db_err)?;
    Ok(out)
}

pub(super) fn dump(db: &Sqlite, tables: &[Table]) -> Result<Vec<Vec<Vec<Cell>>>> {
    in_snapshot(db, |conn| {
        tables.iter().map(|t| dump_one(conn, t)).collect()
    })
}

pub(super) fn scalars(db: &Sqlite, queries: &[String]) -> Result<Vec<i64>> {
    in_snapshot(db, |conn| {
        queries
            .iter()
            .map(|q| conn.query_row(q, [], |r| r.get(0)).map_err(db_err))
            .collect()
    })
}

pub(super) fn load(
    db: &Sqlite,
    tables: &[(&Table, Vec<Vec<Cell>>)],
    before_commit: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    db.write_tx(Sync::Full, |tx| {
        for (t, _) in tables.iter().filter(|(t, _)| t.name != "meta") {
            let n: i64 = tx
                .query_row(&format!("SELECT count(*) FROM {}", t.name), [], |r| {
                    r.get(0)
                })
                .map_err(db_err)?;
            if n > 0 {
                return Err(not_empty(t.name, n));
            }
        }
        for (t, rows) in tables {
            let marks = (1..=t.columns.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let verb = if t.name == "meta" {
                "INSERT OR REPLACE"
            } else {
                "INSERT"
            };
            let sql = format!(
                "{verb} INTO {} ({}) VALUES ({marks})",
                t.name,
                t.column_list()
            );
            let mut stmt = tx.prepare(&sql).map_err(db_err)?;
            for row in rows {
                stmt.execute(params_from_iter(row.iter().map(value)))
                    .map_err(db_err)?;
            }
        }
        before_commit()
    })
}
