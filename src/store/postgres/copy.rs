//! `migrate` on PostgreSQL: a table's rows as stored, and loading a whole
//! database's tables in one transaction (see `store/copy.rs`).

use postgres::types::ToSql;

use super::errors::pg_err;
use super::Postgres;
use crate::error::Result;
use crate::store::copy::{not_empty, Cell, Kind, Table};

/// One table's rows, read in the caller's transaction.
fn dump_one(tx: &mut postgres::Transaction<'_>, t: &Table) -> Result<Vec<Vec<Cell>>> {
    let sql = format!(
        "SELECT {} FROM {} ORDER BY {}",
        t.column_list(),
        t.name,
        t.order_by
    );
    let rows = tx.query(sql.as_str(), &[]).map_err(pg_err)?;
    rows.iter()
        .map(|r| {
            t.columns
                .iter()
                .enumerate()
                .map(|(i, (_, kind))| {
                    Ok(match kind {
                        Kind::Int => r.try_get::<_, Option<i64>>(i).map(|v| v.map(Cell::Int)),
                        Kind::Int4 => r
                            .try_get::<_, Option<i32>>(i)
                            .map(|v| v.map(|v| Cell::Int(i64::from(v)))),
                        Kind::Bool => r.try_get::<_, Option<bool>>(i).map(|v| v.map(Cell::Bool)),
                        Kind::Text => r.try_get::<_, Option<String>>(i).map(|v| v.map(Cell::Text)),
                    }
                    .map_err(pg_err)?
                    .unwrap_or(Cell::Null))
                })
                .collect()
        })
        .collect()
}

/// Runs `f` in one REPEATABLE READ, read-only transaction: one snapshot.
fn in_snapshot<T>(
    db: &Postgres,
    f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T>,
) -> Result<T> {
    let mut conn = db.conn()?;
    let mut tx = conn
        .client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(pg_err)?;
    let out = f(&mut tx)?;
    tx.commit().map_err(pg_err)?;
    Ok(out)
}

pub(super) fn dump(db: &Postgres, tables: &[Table]) -> Result<Vec<Vec<Vec<Cell>>>> {
    in_snapshot(db, |tx| tables.iter().map(|t| dump_one(tx, t)).collect())
}

pub(super) fn scalars(db: &Postgres, queries: &[String]) -> Result<Vec<i64>> {
    in_snapshot(db, |tx| {
        queries
            .iter()
            .map(|q| {
                tx.query_one(q.as_str(), &[])
                    .map(|r| r.get::<_, i64>(0))
                    .map_err(pg_err)
            })
            .collect()
    })
}

/// A cell as a parameter of the column's type.
fn param(c: &Cell, kind: Kind) -> Box<dyn ToSql + Sync> {
    match (c, kind) {
        (Cell::Null, Kind::Int) => Box::new(None::<i64>),
        (Cell::Null, Kind::Int4) => Box::new(None::<i32>),
        (Cell::Null, Kind::Bool) => Box::new(None::<bool>),
        (Cell::Null, Kind::Text) => Box::new(None::<String>),
        (Cell::Int(i), Kind::Int4) => Box::new(i32::try_from(*i).ok()),
        (Cell::Int(i), Kind::Bool) => Box::new(*i != 0),
        (Cell::Int(i), _) => Box::new(*i),
        (Cell::Bool(b), _) => Box::new(*b),
        (Cell::Text(t), _) => Box::new(t.clone()),
    }
}

pub(super) fn load(
    db: &Postgres,
    tables: &[(&Table, Vec<Vec<Cell>>)],
    before_commit: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    db.write_tx(|tx| {
        for (t, _) in tables.iter().filter(|(t, _)| t.name != "meta") {
            let n: i64 = tx
                .query_one(format!("SELECT count(*) FROM {}", t.name).as_str(), &[])
                .map_err(pg_err)?
                .get(0);
            if n > 0 {
                return Err(not_empty(t.name, n));
            }
        }
        for (t, rows) in tables {
            let marks = (1..=t.columns.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let columns = t.column_list();
            let sql = match t.name {
                "meta" => format!(
                    "INSERT INTO meta ({columns}) VALUES ({marks}) \
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
                ),
                // Keep the sequence numbers.
                "events" | "quota_snapshots" | "notifications" => format!(
                    "INSERT INTO {} ({columns}) OVERRIDING SYSTEM VALUE VALUES ({marks})",
                    t.name
                ),
                _ => format!("INSERT INTO {} ({columns}) VALUES ({marks})", t.name),
            };
            let stmt = tx.prepare(&sql).map_err(pg_err)?;
            for row in rows {
                let params: Vec<Box<dyn ToSql + Sync>> = row
                    .iter()
                    .zip(t.columns)
                    .map(|(c, (_, kind))| param(c, *kind))
                    .collect();
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
                tx.execute(&stmt, &refs).map_err(pg_err)?;
            }
            if matches!(t.name, "events" | "quota_snapshots" | "notifications") {
                tx.execute(
                    format!(
                        "SELECT setval(pg_get_serial_sequence('{0}', 'seq'), \
                         coalesce((SELECT max(seq) FROM {0}), 0) + 1, false)",
                        t.name
                    )
                    .as_str(),
                    &[],
                )
                .map_err(pg_err)?;
            }
        }
        before_commit()
    })
}
