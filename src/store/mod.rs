//! The store: credentials as rows changed only by compare-and-swap
//! (DESIGN.md §1).
//!
//! [`Backend`] is the protocol and the one door: read a row, write a
//! [`Transition`](crate::state::Transition) (claim, fenced commit,
//! reject…) guarded by version or lease together with its event row,
//! insert, replace and delete under the refresh-token fingerprint rules,
//! list, events, handles, quota. [`Store`] is a shared handle on one
//! backend: SQLite (`sqlite/`), or PostgreSQL (`postgres/`, feature
//! `postgres`) for a `postgres://` URL; what is not SQL they share
//! (`rowdata`, `codec`, `fpkey`, `copy`). Only `refresh` and `Warden`
//! (warden.rs, admin.rs) hold a `Store` (architecture invariant A3).

mod backend;
mod codec;
pub mod copy;
mod fpkey;
#[cfg(feature = "postgres")]
mod postgres;
mod records;
mod rowdata;
mod sidedata;
mod sqlite;

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::seal::Sealer;

pub use backend::{Backend, Wake};
pub use records::{
    Cooldown, CooldownSource, CooldownWrite, Deleted, Delivery, ErrorUpdate, EventRow, HandleRow,
    Notice, NotificationCounts, NotificationRow, PoolMember, PoolRead, QuotaRow, Scan, Stamp,
    Write,
};

/// Seals every secret of a plain database with `key` (SQLite; see
/// `sqlite/sealing.rs`). A PostgreSQL database is refused: converting one
/// in place is not supported yet.
pub fn encrypt_in_place(path: &Path, busy_timeout_ms: u64, key: &Sealer) -> Result<usize> {
    refuse_postgres(path, "encrypt")?;
    sqlite::encrypt_in_place(path, busy_timeout_ms, key)
}

/// Re-seals every secret from `old` to `new` (SQLite; see
/// `sqlite/sealing.rs`). A PostgreSQL database is refused, as
/// [`encrypt_in_place`].
pub fn rekey(path: &Path, busy_timeout_ms: u64, old: &Sealer, new: &Sealer) -> Result<usize> {
    refuse_postgres(path, "rekey")?;
    sqlite::rekey(path, busy_timeout_ms, old, new)
}

fn refuse_postgres(path: &Path, what: &str) -> Result<()> {
    match path.to_str().filter(|p| is_postgres_url(p)) {
        Some(_) => Err(crate::error::Error::Config(format!(
            "`{what}` of a PostgreSQL database is not supported yet: set the key on a new, \
             empty database instead"
        ))),
        None => Ok(()),
    }
}

/// `db` as it may be shown: a database URL's password replaced by `***`.
pub fn shown(db: &Path) -> String {
    let text = db.display().to_string();
    if !is_postgres_url(&text) {
        return text;
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return text;
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => text.clone(),
        },
        None => text.clone(),
    }
}

/// Whether `db` (a `--db` value) names a PostgreSQL database
/// (`postgres://…` or `postgresql://…`) rather than a SQLite file.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// When a store does the start-up work that only writes need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Startup {
    /// At open (every store but a one-shot reader's).
    Eager,
    /// Before the store's first write: the refresh-token fingerprint key
    /// (made if missing), the fingerprints of rows of schema version 1
    /// and the space reserve. Opening still checks the schema (and
    /// migrates it) and the encryption key. For a one-shot process that
    /// will most likely only read (`tokenwarden token`).
    Deferred,
}

/// A shared handle on the database: cheap to clone, and every method is
/// the [`Backend`]'s.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &(dyn Backend + 'static) {
        &*self.backend
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.backend.fmt(f)
    }
}

impl Store {
    /// Opens (creating with mode 0600 if needed) and migrates a database
    /// that is not encrypted.
    pub fn open(path: &Path, busy_timeout: Duration, pool_size: u32) -> Result<Store> {
        Store::open_sealed(path, busy_timeout, pool_size, None)
    }

    /// Opens a database whose secrets are sealed with `sealer` (or not, with
    /// `None`). A key that does not match the database, a key for a plain
    /// database, or no key for an encrypted one is refused here, at start-up,
    /// never by serving garbage later.
    pub fn open_sealed(
        path: &Path,
        busy_timeout: Duration,
        pool_size: u32,
        sealer: Option<Sealer>,
    ) -> Result<Store> {
        Store::open_with(path, busy_timeout, pool_size, sealer, Startup::Eager)
    }

    /// [`Store::open_sealed`], doing the start-up work only writes need
    /// when `startup` says.
    pub fn open_with(
        path: &Path,
        busy_timeout: Duration,
        pool_size: u32,
        sealer: Option<Sealer>,
        startup: Startup,
    ) -> Result<Store> {
        // `postgres://…` / `postgresql://…`: a PostgreSQL database (its
        // start-up work is done at open either way).
        if let Some(url) = path.to_str().filter(|p| is_postgres_url(p)) {
            #[cfg(feature = "postgres")]
            {
                let _ = startup;
                let db = postgres::Postgres::open(url, busy_timeout, pool_size, sealer)?;
                return Ok(Store {
                    backend: Arc::new(db),
                });
            }
            #[cfg(not(feature = "postgres"))]
            {
                let _ = url;
                return Err(crate::error::Error::Config(
                    "this build of tokenwarden has no PostgreSQL support (built without the \
                     `postgres` feature); pass a SQLite file as --db"
                        .into(),
                ));
            }
        }
        let db = sqlite::Sqlite::open(path, busy_timeout, pool_size, sealer, startup)?;
        Ok(Store {
            backend: Arc::new(db),
        })
    }
}
