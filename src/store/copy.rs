//! `tokenwarden migrate --to`: copying a whole database to another backend
//! (SQLite ⇄ PostgreSQL) as it is stored — sealed columns stay sealed,
//! fingerprints and the fingerprint key stay what they were, events keep
//! their sequence numbers — refusing a target that holds anything, and
//! counting every table on both sides afterwards.
//!
//! The tables and their columns are listed once here, with the kind of
//! each column; each backend reads (`Backend::dump`) and writes
//! (`Backend::load`) them in its own dialect.

use super::Store;
use crate::error::{Error, Result};

/// The kind of a column, the same on every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A 64-bit integer.
    Int,
    /// A 32-bit integer (an HTTP status).
    Int4,
    /// Text.
    Text,
    /// A boolean (an INTEGER 0/1 on SQLite).
    Bool,
}

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// An integer (of either width).
    Int(i64),
    /// Text.
    Text(String),
    /// A boolean.
    Bool(bool),
}

/// A table copied by `migrate`: its name, its columns with their kinds,
/// and the order rows are read in.
#[derive(Debug)]
pub struct Table {
    /// The table's name.
    pub name: &'static str,
    /// Its columns.
    pub columns: &'static [(&'static str, Kind)],
    /// The ORDER BY of the dump (parents before children).
    pub order_by: &'static str,
}

impl Table {
    /// The column names, comma-separated.
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

use Kind::{Bool, Int, Int4, Text};

/// Every table, in the order they are loaded (credentials before the
/// tables that refer to them).
pub const TABLES: &[Table] = &[
    Table {
        name: "meta",
        columns: &[("key", Text), ("value", Text)],
        order_by: "key",
    },
    Table {
        name: "credentials",
        columns: &[
            ("id", Text),
            ("provider", Text),
            ("state", Text),
            ("version", Int),
            ("access_token", Text),
            ("refresh_token", Text),
            ("id_token", Text),
            ("expires_at_ms", Int),
            ("token_url", Text),
            ("client_id", Text),
            ("client_secret", Text),
            ("scope", Text),
            ("encoding", Text),
            ("client_auth", Text),
            ("api_key", Text),
            ("account_id", Text),
            ("email", Text),
            ("plan_type", Text),
            ("user_id", Text),
            ("organization_id", Text),
            ("lease_owner", Text),
            ("lease_id", Text),
            ("lease_until_ms", Int),
            ("lease_clock", Int),
            ("resume_state", Text),
            ("failures", Int),
            ("next_attempt_at_ms", Int),
            ("dead_reason", Text),
            ("last_error_code", Text),
            ("last_error_message", Text),
            ("last_error_at_ms", Int),
            ("last_refresh_ms", Int),
            ("created_ms", Int),
            ("updated_ms", Int),
            ("refresh_fp", Text),
            ("failing_since_ms", Int),
        ],
        order_by: "id",
    },
    Table {
        name: "events",
        columns: &[
            ("seq", Int),
            ("credential_id", Text),
            ("at_ms", Int),
            ("from_state", Text),
            ("to_state", Text),
            ("version", Int),
            ("actor", Text),
            ("reason", Text),
        ],
        order_by: "seq",
    },
    Table {
        name: "quota_snapshots",
        columns: &[
            ("seq", Int),
            ("credential_id", Text),
            ("fetched_at_ms", Int),
            ("status", Text),
            ("http_status", Int4),
            ("plan_type", Text),
            ("limit_reached", Bool),
            ("windows", Text),
            ("credits", Text),
            ("error_message", Text),
            ("body", Text),
        ],
        order_by: "seq",
    },
    Table {
        name: "handles",
        columns: &[
            ("hash", Text),
            ("credential_id", Text),
            ("label", Text),
            ("created_ms", Int),
            ("last_used_ms", Int),
            ("served_token", Text),
            ("revoked_ms", Int),
        ],
        order_by: "hash",
    },
    Table {
        name: "spent_tokens",
        columns: &[
            ("fp", Text),
            ("credential_id", Text),
            ("spent_at_ms", Int),
            ("reason", Text),
        ],
        order_by: "fp",
    },
    Table {
        name: "pool_members",
        columns: &[
            ("pool", Text),
            ("credential_id", Text),
            ("added_ms", Int),
            ("last_served_ms", Int),
        ],
        order_by: "pool, credential_id",
    },
    Table {
        name: "pool_sticky",
        columns: &[
            ("pool", Text),
            ("sticky_key", Text),
            ("credential_id", Text),
            ("used_ms", Int),
        ],
        order_by: "pool, sticky_key",
    },
    Table {
        name: "cooldowns",
        columns: &[
            ("credential_id", Text),
            ("until_ms", Int),
            ("reason", Text),
            ("source", Text),
            ("set_ms", Int),
            ("actor", Text),
        ],
        order_by: "credential_id",
    },
    Table {
        name: "notifications",
        columns: &[
            ("seq", Int),
            ("event_id", Text),
            ("kind", Text),
            ("credential_id", Text),
            ("created_ms", Int),
            ("payload", Text),
            ("attempts", Int),
            ("next_attempt_ms", Int),
            ("delivered_ms", Int),
            ("failed_ms", Int),
            ("last_error", Text),
        ],
        order_by: "seq",
    },
];

/// The `meta` keys that belong to one backend's database and are not
/// copied (PostgreSQL's fallback lease clock id).
pub const LOCAL_META: &[&str] = &["lease_clock"];

/// The refusal of a target whose `table` holds `n` rows.
pub fn not_empty(table: &str, n: i64) -> Error {
    Error::Config(format!(
        "the target database is not empty ({table} holds {n} rows); migrate only into a new \
         database"
    ))
}

/// Rows copied, per table, in [`TABLES`] order.
pub type Counts = Vec<(&'static str, i64)>;

/// What a database's content is at one moment, for telling whether it
/// changed: every copied table's row count (`meta` aside), the sum of the
/// credentials' versions (every change bumps one) and the last event's
/// sequence number (every change writes one).
type Mark = Vec<i64>;

/// The queries whose answers, read in one snapshot, are the [`Mark`] —
/// the same SQL on both backends.
fn mark_sql() -> Vec<String> {
    let mut q: Vec<String> = TABLES
        .iter()
        .filter(|t| t.name != "meta")
        .map(|t| format!("SELECT count(*) FROM {}", t.name))
        .collect();
    q.push("SELECT CAST(coalesce(sum(version), 0) AS BIGINT) FROM credentials".into());
    q.push("SELECT CAST(coalesce(max(seq), 0) AS BIGINT) FROM events".into());
    q
}

/// The [`Mark`] of `dumped` (rows of [`TABLES`], in order), as
/// [`mark_sql`] reads it from a database.
fn mark_of(dumped: &[Vec<Vec<Cell>>]) -> Mark {
    let column = |table: &str, column: &str| -> Option<(usize, usize)> {
        let t = TABLES.iter().position(|t| t.name == table)?;
        let c = TABLES[t].columns.iter().position(|(n, _)| *n == column)?;
        Some((t, c))
    };
    let ints = |(t, c): (usize, usize)| {
        dumped[t].iter().filter_map(move |row| match row[c] {
            Cell::Int(i) => Some(i),
            _ => None,
        })
    };
    let mut mark: Mark = TABLES
        .iter()
        .zip(dumped)
        .filter(|(t, _)| t.name != "meta")
        .map(|(_, rows)| rows.len() as i64)
        .collect();
    mark.push(column("credentials", "version").map_or(0, |tc| ints(tc).sum()));
    mark.push(column("events", "seq").map_or(0, |tc| ints(tc).max().unwrap_or(0)));
    mark
}

/// Copies everything in `from` to `to`, which must hold no credential,
/// event, quota snapshot, handle or spent token; then counts both sides.
/// The source is read in one snapshot, and the target's transaction
/// commits only if the source still is what was read (its [`Mark`]):
/// a process still refreshing on the source during the copy makes
/// `migrate` refuse, writing nothing, instead of leaving the target with
/// a refresh token the source has already spent. Refused while a refresh
/// is in flight in `from` (its lease would mean nothing on the target's
/// clock).
pub fn migrate(from: &Store, to: &Store) -> Result<Counts> {
    let dumped = from.dump(TABLES)?;
    let mark = mark_of(&dumped);
    let mut tables = Vec::with_capacity(TABLES.len());
    // Rows of the source's own backend (LOCAL_META), not copied.
    let mut local_rows = 0;
    for (t, mut rows) in TABLES.iter().zip(dumped) {
        if t.name == "meta" {
            let all = rows.len();
            rows.retain(|r| !matches!(&r[0], Cell::Text(k) if LOCAL_META.contains(&k.as_str())));
            local_rows = (all - rows.len()) as i64;
        }
        if t.name == "credentials" {
            if let Some(r) = rows
                .iter()
                .find(|r| r[2] == Cell::Text("refreshing".into()))
            {
                let id = match &r[0] {
                    Cell::Text(id) => id.clone(),
                    _ => String::new(),
                };
                return Err(Error::RefreshInProgress {
                    id,
                    retry_after_s: 1,
                });
            }
        }
        tables.push((t, rows));
    }
    let marks = mark_sql();
    to.load(&tables, &mut || {
        if from.scalars(&marks)? == mark {
            Ok(())
        } else {
            Err(Error::BadInput(
                "migrate: the source database changed while it was copied: a process still uses it \
                 (serve, sweep, a cron job). Stop every process that uses it and run migrate \
                 again; nothing was written to the target"
                    .into(),
            ))
        }
    })?;
    let count_sql: Vec<String> = TABLES
        .iter()
        .map(|t| format!("SELECT count(*) FROM {}", t.name))
        .collect();
    let (sources, targets) = (from.scalars(&count_sql)?, to.scalars(&count_sql)?);
    let mut counts = Vec::with_capacity(TABLES.len());
    for (((t, rows), source), target) in tables.iter().zip(sources).zip(targets) {
        let want = rows.len() as i64;
        let (source, target) = if t.name == "meta" {
            // Either side may keep rows of its own backend (LOCAL_META).
            (source - local_rows, target.min(want))
        } else {
            (source, target)
        };
        if source != want || target != want {
            return Err(Error::Internal(
                "migrate: the row counts of the source and the target differ",
            ));
        }
        counts.push((t.name, want));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{Claims, NewCredential, ProviderConfig, ProviderKind};
    use crate::secret::Secret;
    use std::time::Duration;

    /// The mark computed from a dump is the mark the database answers —
    /// on an empty database and after each insert — and each insert moves
    /// it.
    #[test]
    fn the_mark_of_a_dump_is_the_mark_the_database_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("tw.db"), Duration::from_secs(5), 2).unwrap();
        let read = |s: &Store| {
            (
                mark_of(&s.dump(TABLES).unwrap()),
                s.scalars(&mark_sql()).unwrap(),
            )
        };
        let (dumped, asked) = read(&store);
        assert_eq!(dumped, asked);
        let mut marks = vec![asked];
        for id in ["a", "b"] {
            let c = NewCredential {
                id: id.into(),
                provider: ProviderConfig::new(ProviderKind::Codex),
                refresh_token: Secret::new(format!("rt-{id}")),
                access_token: Some(Secret::new(format!("at-{id}"))),
                id_token: None,
                expires_at_ms: Some(9_000_000_000_000),
                claims: Claims::default(),
                last_refresh_ms: None,
                api_key: None,
            };
            store.insert(&c, "test", 1_000).unwrap();
            let (dumped, asked) = read(&store);
            assert_eq!(dumped, asked);
            assert!(!marks.contains(&asked), "{asked:?} seen before");
            marks.push(asked);
        }
    }
}
