//! This process's connections to the database: the primary one opened at
//! start-up, the r2d2 pool behind it, and the writers' turn — one write
//! transaction of the process at a time, at the durability it needs.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use parking_lot::{MappedMutexGuard, MutexGuard};
use r2d2::{Pool, PooledConnection};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::errors::{busy, db_err};
use super::{fingerprint, reserve, schema, Sqlite};
use crate::error::{DbError, DbKind, Error, Result};

/// A connection of the store: the primary one, or one from the pool.
pub(crate) enum Conn<'a> {
    Primary(MutexGuard<'a, Connection>),
    Pooled(PooledConnection<SqliteConnectionManager>),
    Writer(MappedMutexGuard<'a, Connection>),
}

impl Deref for Conn<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            Conn::Primary(c) => c,
            Conn::Pooled(c) => c,
            Conn::Writer(c) => c,
        }
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        match self {
            Conn::Primary(c) => c,
            Conn::Pooled(c) => c,
            Conn::Writer(c) => c,
        }
    }
}

/// A connection holding this process's turn to write. The connection goes
/// back before the turn is released (fields drop in order).
pub(crate) struct Writer<'a> {
    conn: Conn<'a>,
    _turn: MutexGuard<'a, ()>,
}

impl Deref for Writer<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// How durable a write transaction must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sync {
    /// `synchronous=FULL`: the WAL is fsynced at commit. Everything a
    /// power cut must not undo: rotated tokens, rejections, imports,
    /// deletes, deaths.
    Full,
    /// `synchronous=NORMAL`: committed (every process sees it at once) but
    /// made durable only by the next `FULL` commit or checkpoint. Only for
    /// a claim of the refresh lease: losing one in a power cut leaves the
    /// row as it was before the claim, which was durable, and the claim's
    /// own refresh can only end in a `FULL` commit, whose fsync also covers
    /// the claim (the WAL is one file, synced whole).
    Normal,
}

impl Sqlite {
    /// The primary connection if it is free, else one from the pool (built
    /// on first need, holding at most `pool_size - 1` more connections).
    pub(super) fn conn(&self) -> Result<Conn<'_>> {
        if let Some(c) = self.primary.try_lock() {
            return Ok(Conn::Primary(c));
        }
        let pool = self.pool.get_or_init(|| {
            // Concurrency has begun: open the writers' connection now rather
            // than on the path of the first write that needs it.
            if let Some(mut slot) = self.write_conn.try_lock() {
                if slot.is_none() {
                    *slot = self.open_conn().ok();
                }
            }
            let busy_ms = self.busy_ms;
            let manager = SqliteConnectionManager::file(&self.path)
                .with_init(move |c| schema::configure(c, busy_ms));
            Pool::builder()
                .max_size(self.pool_size.saturating_sub(1).max(1))
                .min_idle(Some(0))
                .connection_timeout(self.busy_timeout.max(Duration::from_secs(1)))
                .build_unchecked(manager)
        });
        pool.get().map(Conn::Pooled).map_err(|e| {
            Error::Db(
                DbError::caused_by(DbKind::NoConnection, e).with_context("no database connection"),
            )
        })
    }

    /// A new connection to the database, set up like every other.
    pub(super) fn open_conn(&self) -> Result<Connection> {
        let conn = Connection::open(&self.path).map_err(db_err)?;
        schema::configure(&conn, self.busy_ms).map_err(db_err)?;
        Ok(conn)
    }

    /// A connection for one write transaction at `sync`, once this
    /// process's earlier writes are done. Waiting for the turn counts
    /// against the busy timeout like waiting for SQLite's lock does.
    ///
    /// Every write of the store gets its connection here, so this is where
    /// a store opened with [`Startup::Deferred`](crate::store::Startup)
    /// does, before its first write, what [`Sqlite::open`] would have done
    /// at start-up: load (or make) the fingerprint key, fingerprint rows of
    /// schema version 1, and keep the space reserve.
    pub(super) fn writer(&self, sync: Sync) -> Result<Writer<'_>> {
        let turn = self
            .writer
            .try_lock_for(self.busy_timeout)
            .ok_or_else(busy)?;
        // The primary connection if it is free, else the writers' own, which
        // no reader ever holds: a write never queues behind reads for a
        // connection.
        let mut conn = match self.primary.try_lock() {
            Some(c) => Conn::Primary(c),
            None => {
                // Only the holder of the turn takes this lock.
                let mut slot = self.write_conn.lock();
                if slot.is_none() {
                    *slot = Some(self.open_conn()?);
                }
                Conn::Writer(MutexGuard::map(slot, |c| {
                    c.as_mut().expect("opened just above")
                }))
            }
        };
        if !self.codec.has_fingerprints() {
            // The deferred start-up work, under this process's turn: its
            // own transaction (when there is something to write), durable.
            conn.execute_batch("PRAGMA synchronous = FULL")
                .map_err(db_err)?;
            let key = fingerprint::prepare(&mut conn, self.codec.sealer())?;
            self.codec.set_fingerprints(key);
            reserve::ensure_reserve(&self.path);
        }
        // Set on every write (a PRAGMA takes effect when it is prepared, so
        // it is never a cached statement): no connection is ever left at
        // the level of an earlier write.
        conn.execute_batch(match sync {
            Sync::Full => "PRAGMA synchronous = FULL",
            Sync::Normal => "PRAGMA synchronous = NORMAL",
        })
        .map_err(db_err)?;
        Ok(Writer { conn, _turn: turn })
    }

    /// Runs `f` in one `IMMEDIATE` write transaction at `sync`, committed
    /// if `f` returns `Ok` and rolled back otherwise: every write of the
    /// store but the group commit's goes through here (or through
    /// [`Sqlite::batch_tx`], the same for a large batch).
    pub(super) fn write_tx<T>(
        &self,
        sync: Sync,
        f: impl FnOnce(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.writer(sync)?;
        in_tx(&mut conn, f)
    }

    /// [`Sqlite::write_tx`] at `FULL` for a large batch of rows (an
    /// import's): for the transaction and its commit the connection's page
    /// cache is [`BATCH_CACHE_KIB`], so that the batch's pages go to the
    /// WAL once, at commit, instead of being spilled as a small cache
    /// fills; and the WAL is checkpointed into the database only past
    /// [`BATCH_CHECKPOINT_PAGES`], not at every batch's commit (each
    /// checkpoint costs two more fsyncs). Both are bounded, and set back to
    /// the connection's own when the batch ends, committed or not.
    pub(super) fn batch_tx<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.writer(Sync::Full)?;
        let usual: (i64, i64) = conn
            .query_row("PRAGMA cache_size", [], |r| r.get(0))
            .and_then(|cache| {
                conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
                    .map(|pages| (cache, pages))
            })
            .map_err(db_err)?;
        conn.execute_batch(&format!(
            "PRAGMA cache_size = -{BATCH_CACHE_KIB}; \
             PRAGMA wal_autocheckpoint = {BATCH_CHECKPOINT_PAGES};"
        ))
        .map_err(db_err)?;
        let out = in_tx(&mut conn, f);
        // A failure here leaves this connection a larger cache and rarer
        // checkpoints: more memory and a longer WAL, nothing wrong.
        let _ = conn.execute_batch(&format!(
            "PRAGMA cache_size = {}; PRAGMA wal_autocheckpoint = {};",
            usual.0, usual.1
        ));
        out
    }
}

/// The page cache of a [`Sqlite::batch_tx`], in KiB: a batch of 1,000
/// imported rows dirties about 3.5 MiB of pages.
const BATCH_CACHE_KIB: i64 = 16 * 1024;

/// The WAL's length, in pages, past which a [`Sqlite::batch_tx`]'s commit
/// checkpoints it (SQLite's default is 1,000): about ten batches of
/// imports, 32 MiB of WAL at 4 KiB pages.
const BATCH_CHECKPOINT_PAGES: i64 = 8192;

/// `f` in one `IMMEDIATE` transaction on `conn`, committed if it returns
/// `Ok`, rolled back otherwise.
fn in_tx<T>(conn: &mut Connection, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let out = f(&tx)?;
    tx.commit().map_err(db_err)?;
    Ok(out)
}
