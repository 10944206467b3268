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

/// Copies everything in `from` to `to`, which must hold no credential,
/// event, quota snapshot, handle or spent token; then counts both sides.
/// Refused while a refresh is in flight in `from` (its lease would mean
/// nothing on the target's clock).
pub fn migrate(from: &Store, to: &Store) -> Result<Counts> {
    let mut tables = Vec::with_capacity(TABLES.len());
    // Rows of the source's own backend (LOCAL_META), not copied.
    let mut local_rows = 0;
    for t in TABLES {
        let mut rows = from.dump(t)?;
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
    to.load(&tables)?;
    let mut counts = Vec::with_capacity(TABLES.len());
    for (t, rows) in &tables {
        let want = rows.len() as i64;
        let (source, target) = (from.count(t)?, to.count(t)?);
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
