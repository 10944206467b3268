//! This process's connections: an r2d2 pool of driver clients, each with
//! the statements it has prepared (so a hot statement costs one round
//! trip, not a parse and an execute), and reads that retry once on a
//! connection found dead (a restart or failover of the server closes every
//! pooled connection; only the first use of each finds out).

use std::collections::HashMap;
use std::time::Duration;

use postgres::{Client, Statement};
use r2d2::{ManageConnection, Pool, PooledConnection};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::errors::{pg_err, pool_err};
use super::Postgres;
use crate::error::Result;

/// A pooled client and its prepared statements.
pub(crate) struct PgConn {
    pub(super) client: Client,
    prepared: HashMap<String, Statement>,
}

impl PgConn {
    /// `sql`, prepared on this connection once.
    pub(super) fn stmt(&mut self, sql: &str) -> std::result::Result<Statement, postgres::Error> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.prepared.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

/// Makes the pool's connections.
pub(super) struct Manager {
    pub(super) config: postgres::Config,
    pub(super) tls: MakeRustlsConnect,
}

impl ManageConnection for Manager {
    type Connection = PgConn;
    type Error = postgres::Error;

    fn connect(&self) -> std::result::Result<PgConn, postgres::Error> {
        Ok(PgConn {
            client: self.config.connect(self.tls.clone())?,
            prepared: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut PgConn) -> std::result::Result<(), postgres::Error> {
        conn.client.simple_query("").map(drop)
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.client.is_closed()
    }
}

/// The pool: at most `size` connections, made when needed, none checked
/// on check-out (a round trip each time); a dead one is found by its first
/// statement and dropped.
pub(super) fn pool(manager: Manager, size: u32, timeout: Duration) -> Pool<Manager> {
    Pool::builder()
        .max_size(size.max(1))
        .min_idle(Some(0))
        .test_on_check_out(false)
        .connection_timeout(timeout.max(Duration::from_secs(1)))
        .build_unchecked(manager)
}

impl Postgres {
    /// A connection from the pool.
    pub(super) fn conn(&self) -> Result<PooledConnection<Manager>> {
        self.pool.get().map_err(pool_err)
    }

    /// Runs `f`, a read, on a connection; once more on another if the
    /// connection turned out dead (`f` must not write).
    pub(super) fn read<T>(
        &self,
        mut f: impl FnMut(&mut PgConn) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let mut conn = self.conn()?;
        match f(&mut conn) {
            Ok(v) => Ok(v),
            Err(e) if conn.client.is_closed() || e.is_closed() => {
                drop(conn);
                let mut conn = self.conn()?;
                f(&mut conn).map_err(pg_err)
            }
            Err(e) => Err(pg_err(e)),
        }
    }

    /// Runs `f` in one transaction on a connection, committing if it
    /// returns `Ok`. Not retried: the caller decides (the refresher retries
    /// a rotated token's commit until it lands).
    pub(super) fn write_tx<T>(
        &self,
        f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn()?;
        let mut tx = conn.client.transaction().map_err(pg_err)?;
        let out = f(&mut tx)?;
        tx.commit().map_err(pg_err)?;
        Ok(out)
    }
}
