//! The PostgreSQL backend (feature `postgres`): one schema in one
//! database, shared by every process of every box.
//!
//! The protocol is SQLite's (DESIGN.md §1): each change one transaction
//! that changes the row guarded by its version or lease, appends the event
//! row and spends a rotated token's fingerprint. What differs:
//!
//! - Leases run on the server's clock (`clock`), never a box's own.
//! - A commit wakes waiters on every box (`notify`: LISTEN/NOTIFY).
//! - [`Backend::stamp`] is `None`: no process-local proof that nothing was
//!   committed exists, so every `token` call reads the row (one round trip
//!   on a prepared statement).
//!
//! One file per concern, as `sqlite/`: `url` (the database URL), `tls`,
//! `conn` (the pool and prepared statements), `errors`, `schema`
//! (migrations, key check, fingerprint key, clock id), `rows`, `apply`
//! (the guarded write), `imports`, `delete`, `events`, `quota`, `handles`,
//! and issue 15's `pools`, `cooldowns` and `notifications` (the outbox).
//! Everything that is not SQL is shared with SQLite: `rowdata` (decoding,
//! the transition's columns), `sidedata` (pools, cooldowns, the outbox),
//! `codec` (sealing, fingerprints), `fpkey`.

mod apply;
mod clock;
mod conn;
mod cooldowns;
mod copy;
mod delete;
mod errors;
mod events;
mod handles;
mod imports;
mod notifications;
mod notify;
mod pools;
mod quota;
mod rows;
mod schema;
mod tls;
mod url;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use r2d2::Pool;

use super::{
    Backend, Cooldown, CooldownWrite, Deleted, Delivery, EventRow, HandleRow, Notice,
    NotificationCounts, NotificationRow, PoolRead, QuotaRow, Scan, Stamp, Wake, Write,
};
use crate::credential::{Credential, NewCredential};
use crate::error::{Error, Result};
use crate::seal::Sealer;
use crate::state::{LeaseTime, Transition};
use crate::store::codec::Codec;
use clock::ServerClock;
use conn::Manager;
use errors::pg_err;
use url::{PgUrl, SslMode};

/// A PostgreSQL store.
pub(crate) struct Postgres {
    url: PgUrl,
    pool: Pool<Manager>,
    codec: Codec,
    clock: ServerClock,
    listener: notify::Listener,
    /// The channel of this schema's notifications.
    channel: String,
    /// [`apply::statement`] for this channel.
    apply_sql: String,
    /// The advisory lock imports take turns on.
    import_lock: i64,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Postgres({}, schema {})",
            self.url.shown, self.url.schema
        )
    }
}

impl Postgres {
    /// Connects to the database at `url`, creating or migrating its schema,
    /// checking the encryption key and loading the fingerprint key.
    pub(crate) fn open(
        url: &str,
        timeout: Duration,
        pool_size: u32,
        sealer: Option<Sealer>,
    ) -> Result<Postgres> {
        let url = PgUrl::parse(url)?;
        let mut config = postgres::Config::from_str(&url.driver_url)
            .map_err(|e| Error::Config(format!("{}: {e}", url.shown)))?;
        config.ssl_mode(match url.ssl {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Require | SslMode::VerifyFull => postgres::config::SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout.max(Duration::from_secs(1)));
        }
        config.keepalives(true);
        // Every connection works in the schema; a statement stuck behind a
        // lock or a dying server gives up instead of hanging a refresh.
        let timeout_ms = timeout.as_millis().max(1000);
        let options = format!(
            "{} -c search_path={} -c lock_timeout={timeout_ms} -c statement_timeout={}",
            config.get_options().unwrap_or(""),
            url.schema,
            timeout_ms * 4,
        );
        config.options(options.trim());
        if config.get_application_name().is_none() {
            config.application_name("tokenwarden");
        }
        let tls = tls::connector(&url)?;
        let ctx = |e: Error| match e {
            Error::Db(d) => Error::Db(d.with_context(url.shown.clone())),
            other => other,
        };
        let mut first = config.connect(tls.clone()).map_err(pg_err).map_err(ctx)?;
        schema::migrate(&mut first, &url.schema, &url.shown)?;
        schema::check_key(&mut first, &url.shown, sealer.as_ref())?;
        let key = schema::fingerprint_key(&mut first, sealer.as_ref())?;
        let clock = ServerClock::new(schema::clock_id(&mut first)?);
        let sent = clock::local_ms();
        let now: i64 = first
            .query_one(&format!("SELECT {}", clock::SERVER_NOW_MS), &[])
            .map_err(pg_err)?
            .get(0);
        clock.observe(sent, now);
        drop(first);
        let channel = format!("tokenwarden_{}", url.schema);
        let manager = Manager {
            config: config.clone(),
            tls: tls.clone(),
        };
        let import_lock = i64::from_be_bytes(
            crate::seal::hmac_sha256(b"imports", url.schema.as_bytes())[..8]
                .try_into()
                .expect("8 bytes"),
        );
        Ok(Postgres {
            pool: conn::pool(manager, pool_size, timeout),
            codec: Codec::new(sealer.map(Arc::new), Some(key)),
            clock,
            listener: notify::Listener::new(config, tls, channel.clone()),
            apply_sql: apply::statement(&channel),
            channel,
            import_lock,
            url,
        })
    }

    /// Wakes every box's waiters on `id` when `tx` commits.
    fn notify_in(&self, tx: &mut postgres::Transaction<'_>, id: &str, version: i64) -> Result<()> {
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&self.channel, &format!("{id} {version}")],
        )
        .map(drop)
        .map_err(pg_err)
    }
}

impl Backend for Postgres {
    fn get(&self, id: &str) -> Result<Option<Credential>> {
        rows::get(self, id)
    }

    fn get_without_secrets(&self, id: &str) -> Result<Option<Credential>> {
        rows::get_without_secrets(self, id)
    }

    fn version(&self, id: &str) -> Result<Option<i64>> {
        // Someone waits: from now on, commits on other boxes wake it.
        self.listener.start();
        rows::version(self, id)
    }

    fn list(&self) -> Result<Vec<Credential>> {
        rows::list(self)
    }

    fn scan(&self, scan: Scan<'_>, f: &mut dyn FnMut(Credential) -> ControlFlow<()>) -> Result<()> {
        rows::scan(self, scan, f)
    }

    fn stamp(&self) -> Option<Stamp> {
        None
    }

    fn lease_now(&self) -> Option<LeaseTime> {
        Some(self.clock.now())
    }

    fn lease_latest(&self) -> Option<LeaseTime> {
        Some(self.clock.latest())
    }

    fn on_commit(&self, wake: &Arc<Wake>) {
        self.listener.subscribe(wake);
    }

    fn apply(
        &self,
        id: &str,
        t: &Transition,
        write: Write<'_>,
        actor: &str,
        now_ms: i64,
    ) -> Result<Option<Credential>> {
        apply::apply(self, id, t, write, actor, now_ms)
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
        false
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
        self.write_tx(|tx| notifications::insert_notice(tx, n))
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
