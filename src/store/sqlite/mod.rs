//! The SQLite backend: one database file, shared by every process of the
//! box through SQLite's own locking, in WAL mode.
//!
//! One file per concern: `conn` (this process's connections and its
//! writers' turn), `rows` (decoding and reading rows), `group` (the
//! guarded UPDATE and the group commit of [`Backend::apply`]), `imports`
//! and `delete` (rows in and out, with the refresh-token fingerprint rules
//! of `fingerprint`), `events`, `quota`, `handles`, `watch` (the lock-free
//! freshness stamp), `reserve` (space for a commit on a full disk),
//! `schema` (file mode, pragmas, migrations), `sealing` (encryption at
//! rest), `errors`, and issue 15's `pools` (memberships, the pick's read),
//! `cooldowns` and `notifications` (the outbox). This file holds the state they share and the
//! [`Backend`] implementation, which only dispatches to them.

mod conn;
mod cooldowns;
mod copy;
mod delete;
mod errors;
mod events;
mod fingerprint;
mod group;
mod handles;
mod imports;
mod notifications;
mod pools;
mod quota;
mod reserve;
mod rows;
mod schema;
mod sealing;
mod watch;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use r2d2::Pool;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::Connection;

use super::{
    Backend, Cooldown, CooldownWrite, Deleted, Delivery, EventRow, HandleRow, Notice,
    NotificationCounts, NotificationRow, PoolRead, QuotaRow, Scan, Stamp, Startup, Write,
};
use crate::credential::{Credential, NewCredential};
use crate::error::Result;
use crate::seal::Sealer;
use crate::state::Transition;
use errors::db_err;
use group::Group;
use sealing::Codec;
pub use sealing::{encrypt_in_place, rekey};
use watch::Watch;

/// Connections to one database file: the one opened (and migrated) at
/// start-up, kept for the store's whole life, and an r2d2 pool for the
/// callers that find it busy.
///
/// Keeping the first connection means a one-shot CLI command opens one
/// connection on its own thread (no pool threads, and the WAL and its
/// index are not deleted and recreated between the migration check and
/// the query); a server uses the pool as before. Write transactions of this
/// process take turns on a mutex before asking SQLite for its write lock,
/// so they queue instead of sleeping in SQLite's busy handler.
pub(crate) struct Sqlite {
    path: PathBuf,
    codec: Codec,
    busy_timeout: Duration,
    busy_ms: u64,
    pool_size: u32,
    /// The start-up connection, used whenever it is free.
    primary: Mutex<Connection>,
    /// Built on first need, when the primary connection is busy.
    pool: OnceLock<Pool<SqliteConnectionManager>>,
    /// One write transaction of this process at a time.
    writer: Mutex<()>,
    /// The writers' connection, for when the primary one is busy (opened
    /// with the pool).
    write_conn: Mutex<Option<Connection>>,
    /// The WAL-index reader behind [`Backend::stamp`], opened on first use.
    watch: OnceLock<Option<Watch>>,
    /// Group commit of [`Backend::apply`].
    group: Group,
}

impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sqlite({})", self.path.display())
    }
}

impl Sqlite {
    /// Opens a database whose secrets are sealed with `sealer` (or not, with
    /// `None`), creating it with mode 0600 and migrating it as needed. A
    /// key that does not match the database, a key for a plain database, or
    /// no key for an encrypted one is refused here, at start-up, never by
    /// serving garbage later. With [`Startup::Deferred`], what only writes
    /// need — the refresh-token fingerprint key (made if missing), the
    /// fingerprints of rows of schema version 1, the space reserve — is
    /// done before this store's first write instead (see [`Sqlite::writer`]).
    pub(crate) fn open(
        path: &Path,
        busy_timeout: Duration,
        pool_size: u32,
        sealer: Option<Sealer>,
        startup: Startup,
    ) -> Result<Sqlite> {
        schema::create_private(path)?;
        schema::warn_if_exposed(path);
        let busy_ms = u64::try_from(busy_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut conn = Connection::open(path).map_err(db_err)?;
        schema::configure(&conn, busy_ms).map_err(db_err)?;
        schema::migrate(&mut conn, path)?;
        sealing::check_key(&mut conn, path, sealer.as_ref())?;
        let sealer = sealer.map(Arc::new);
        let fingerprints = match startup {
            Startup::Eager => {
                let key = fingerprint::prepare(&mut conn, sealer.as_deref())?;
                reserve::ensure_reserve(path);
                Some(key)
            }
            Startup::Deferred => None,
        };
        Ok(Sqlite {
            path: path.to_owned(),
            codec: Codec::new(sealer, fingerprints),
            busy_timeout,
            busy_ms,
            pool_size,
            primary: Mutex::new(conn),
            pool: OnceLock::new(),
            writer: Mutex::new(()),
            write_conn: Mutex::new(None),
            watch: OnceLock::new(),
            group: Group::default(),
        })
    }
}

impl Backend for Sqlite {
    fn get(&self, id: &str) -> Result<Option<Credential>> {
        rows::get(self, id)
    }

    fn get_without_secrets(&self, id: &str) -> Result<Option<Credential>> {
        rows::get_without_secrets(self, id)
    }

    fn version(&self, id: &str) -> Result<Option<i64>> {
        rows::version(self, id)
    }

    fn list(&self) -> Result<Vec<Credential>> {
        rows::list(self)
    }

    fn scan(&self, scan: Scan<'_>, f: &mut dyn FnMut(Credential) -> ControlFlow<()>) -> Result<()> {
        rows::scan(self, scan, f)
    }

    fn stamp(&self) -> Option<Stamp> {
        watch::stamp(self)
    }

    fn apply(
        &self,
        id: &str,
        t: &Transition,
        write: Write<'_>,
        actor: &str,
        now_ms: i64,
    ) -> Result<Option<Credential>> {
        group::apply(self, id, t, write, actor, now_ms)
    }

    fn insert(&self, c: &NewCredential, actor: &str, now_ms: i64) -> Result<Credential> {
        imports::insert(self, c, actor, now_ms)
    }

    fn insert_unless(
        &self,
        c: &NewCredential,
        taken: &dyn Fn(&Credential) -> bool,
        actor: &str,
        now_ms: i64,
    ) -> Result<std::result::Result<Credential, Credential>> {
        imports::insert_unless(self, c, taken, actor, now_ms)
    }

    fn insert_many(
        &self,
        creds: &[&NewCredential],
        all_or_nothing: bool,
        actor: &str,
        now_ms: i64,
    ) -> Result<Vec<Result<Credential>>> {
        imports::insert_many(self, creds, all_or_nothing, actor, now_ms)
    }

    fn replace(
        &self,
        c: &NewCredential,
        version: i64,
        actor: &str,
        now_ms: i64,
    ) -> Result<Option<Credential>> {
        imports::replace(self, c, version, actor, now_ms)
    }

    fn delete(&self, id: &str, version: i64, actor: &str, now_ms: i64) -> Result<Deleted> {
        delete::delete(self, id, version, actor, now_ms)
    }

    fn remember_rejected(&self, id: &str, token: &str, now_ms: i64) -> Result<()> {
        imports::remember_rejected(self, id, token, now_ms)
    }

    fn release_reserve(&self) -> bool {
        reserve::release_reserve(self)
    }

    fn dump(
        &self,
        tables: &[crate::store::copy::Table],
    ) -> Result<Vec<Vec<Vec<crate::store::copy::Cell>>>> {
        copy::dump(self, tables)
    }

    fn scalars(&self, queries: &[String]) -> Result<Vec<i64>> {
        copy::scalars(self, queries)
    }

    fn load(
        &self,
        tables: &[(
            &crate::store::copy::Table,
            Vec<Vec<crate::store::copy::Cell>>,
        )],
        before_commit: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        copy::load(self, tables, before_commit)
    }

    fn events(&self, id: &str, after: Option<i64>, limit: Option<u32>) -> Result<Vec<EventRow>> {
        events::events(self, id, after, limit)
    }

    fn insert_quota(&self, q: &QuotaRow, body: Option<&[u8]>, keep_since_ms: i64) -> Result<()> {
        quota::insert_quota(self, q, body, keep_since_ms)
    }

    fn latest_quota(&self, id: &str) -> Result<Option<QuotaRow>> {
        quota::latest_quota(self, id)
    }

    fn latest_quotas(&self) -> Result<HashMap<String, QuotaRow>> {
        quota::latest_quotas(self)
    }

    fn quota_history_len(&self, id: &str) -> Result<i64> {
        quota::quota_history_len(self, id)
    }

    fn quota_history(&self, id: &str, limit: u32) -> Result<Vec<QuotaRow>> {
        quota::quota_history(self, id, limit)
    }

    fn insert_handle(
        &self,
        hash: &str,
        credential_id: &str,
        label: &str,
        now_ms: i64,
    ) -> Result<()> {
        handles::insert_handle(self, hash, credential_id, label, now_ms)
    }

    fn handle(&self, hash: &str) -> Result<Option<HandleRow>> {
        handles::handle(self, hash)
    }

    fn handles(&self, credential_id: &str) -> Result<Vec<HandleRow>> {
        handles::handles(self, credential_id)
    }

    fn revoke_handles(&self, hash_prefix: &str, actor: &str, now_ms: i64) -> Result<usize> {
        handles::revoke_handles(self, hash_prefix, actor, now_ms)
    }

    fn touch_handle(&self, hash: &str, now_ms: i64, served_token: &str) -> Result<()> {
        handles::touch_handle(self, hash, now_ms, served_token)
    }

    fn set_pool_member(
        &self,
        id: &str,
        pool: &str,
        member: bool,
        actor: &str,
        now_ms: i64,
    ) -> Result<bool> {
        pools::set_pool_member(self, id, pool, member, actor, now_ms)
    }

    fn memberships(&self) -> Result<HashMap<String, Vec<String>>> {
        pools::memberships(self)
    }

    fn pool(&self, pool: &str, sticky_key: Option<&str>) -> Result<PoolRead> {
        pools::pool(self, pool, sticky_key)
    }

    fn pool_served(
        &self,
        pool: &str,
        id: &str,
        sticky_key: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        pools::pool_served(self, pool, id, sticky_key, now_ms)
    }

    fn cooldown(
        &self,
        id: &str,
        change: CooldownWrite<'_>,
        notify: Option<&Notice>,
        actor: &str,
        now_ms: i64,
    ) -> Result<bool> {
        cooldowns::cooldown(self, id, change, notify, actor, now_ms)
    }

    fn cooldowns(&self) -> Result<Vec<Cooldown>> {
        cooldowns::cooldowns(self)
    }

    fn take_notifications(
        &self,
        now_ms: i64,
        hold_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<NotificationRow>> {
        notifications::take_notifications(self, now_ms, hold_until_ms, limit)
    }

    fn insert_notice(&self, n: &Notice) -> Result<()> {
        self.write_tx(conn::Sync::Full, |tx| notifications::insert_notice(tx, n))
    }

    fn notification_delivery(
        &self,
        event_id: &str,
        delivery: Delivery<'_>,
        now_ms: i64,
    ) -> Result<()> {
        notifications::notification_delivery(self, event_id, delivery, now_ms)
    }

    fn notifications(&self, pending_only: bool, limit: u32) -> Result<Vec<NotificationRow>> {
        notifications::notifications(self, pending_only, limit)
    }

    fn notification_counts(&self) -> Result<NotificationCounts> {
        notifications::notification_counts(self)
    }
}
