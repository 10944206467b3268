//! The protocol of DESIGN.md §1, as the one trait every database
//! implements.
//!
//! Everything above the store (`refresh`, `Warden` and its admin
//! operations) sees a credential only through these methods, so a second
//! backend (PostgreSQL) is one more `impl Backend`. The rules each
//! implementation keeps:
//!
//! - Every change is one transaction that changes the row, bumps its
//!   version and appends its event row; a lost compare-and-swap is
//!   `Ok(None)` (or [`Deleted::Changed`]), never an error, and writes
//!   nothing.
//! - A write is guarded by the version the caller read, or by the lease it
//!   holds ([`crate::state::Guard`]): a takeover voids a late owner's
//!   commit.
//! - A refresh token's keyed fingerprint is kept with its row (unique: one
//!   token, one id), and a replaced, rotated or possibly-sent one is
//!   recorded as spent in the same transaction that replaces it; imports
//!   of a held or spent token are refused inside their transaction.
//! - Errors are the database's own trouble ([`crate::Error::Db`],
//!   [`crate::Error::DiskFull`], whose backend-neutral
//!   [`DbKind`](crate::error::DbKind) each backend maps its errors onto), a
//!   broken invariant ([`crate::Error::Internal`]) or an import's refusal;
//!   never a decision about a credential.

use std::ops::ControlFlow;
use std::sync::Arc;

use super::copy::{Cell, Table};
use super::records::{
    Cooldown, CooldownWrite, Deleted, Delivery, EventRow, HandleRow, Notice, NotificationCounts,
    NotificationRow, PoolRead, QuotaRow, Scan, Stamp, Write,
};
use crate::credential::{Credential, NewCredential};
use crate::error::Result;
use crate::state::{LeaseTime, Transition};

/// A subscriber to [`Backend::on_commit`]: called with the id of each
/// credential another process committed a change to.
pub type Wake = dyn Fn(&str) + Send + Sync;

/// A database holding credentials, changed only by compare-and-swap.
pub trait Backend: Send + Sync + std::fmt::Debug {
    // ---- reading a row ----

    /// Reads one credential, secrets included.
    fn get(&self, id: &str) -> Result<Option<Credential>>;

    /// Reads one credential without its secrets (as
    /// [`Backend::each_without_secrets`]): enough for the state machine.
    fn get_without_secrets(&self, id: &str) -> Result<Option<Credential>>;

    /// Reads only a credential's version: the cheap poll of a waiter.
    fn version(&self, id: &str) -> Result<Option<i64>>;

    /// Every credential, by id, secrets included.
    fn list(&self) -> Result<Vec<Credential>>;

    /// Hands the credentials `scan` selects, in id order and without their
    /// secrets, to `f`, one at a time, until `f` breaks: no access, refresh
    /// or id token, client secret or API key (the refresh token reads as
    /// empty); `status.has_access_token` still says whether there is an
    /// access token. Nothing but the row at hand is held in memory, and a
    /// scan that breaks early reads no further (a page after a cursor costs
    /// what it reads, not the table). `f` must not call the store: the scan
    /// holds a connection while it runs, and a call that needs a second one
    /// waits on the pool — with every connection held by such a scan, for
    /// ever (collect what the rows need, then read it after the scan).
    fn scan(&self, scan: Scan<'_>, f: &mut dyn FnMut(Credential) -> ControlFlow<()>) -> Result<()>;

    /// Every credential, as [`Backend::scan`] with no cursor or filter.
    fn each_without_secrets(&self, f: &mut dyn FnMut(Credential)) -> Result<()> {
        self.scan(Scan::default(), &mut |c| {
            f(c);
            ControlFlow::Continue(())
        })
    }

    /// Every credential, by id, without its secrets (see
    /// [`Backend::each_without_secrets`]): what listings, summaries and the
    /// refresh scheduler need, at a fraction of the memory of
    /// [`Backend::list`].
    fn list_without_secrets(&self) -> Result<Vec<Credential>> {
        let mut rows = Vec::new();
        self.each_without_secrets(&mut |c| rows.push(c))?;
        Ok(rows)
    }

    /// A [`Stamp`] of the database's commit history: equal stamps taken at
    /// two instants prove that no connection of any process committed
    /// anything in between. `None` when it cannot be proven: then nothing
    /// may be assumed unchanged. Cheap (no lock, no query): this is how
    /// [`crate::Warden::token`] knows its cached row is still the row.
    fn stamp(&self) -> Option<Stamp>;

    /// The lease clock now, when the database keeps it (PostgreSQL: the
    /// server's clock, so that boxes whose clocks disagree agree on leases);
    /// `None`: the box's own (`CLOCK_BOOTTIME`, see [`crate::clock`]),
    /// which every process of one box shares. No round trip: a backend
    /// that keeps the clock estimates it from its reads.
    fn lease_now(&self) -> Option<LeaseTime> {
        None
    }

    /// The lease clock now at the latest it can be, where
    /// [`lease_now`](Self::lease_now) is the earliest: a backend that
    /// estimates the clock from its reads knows it only within an
    /// interval. A lease holder judges the time left in its own lease on
    /// this, so it never believes it has more left than the clock that
    /// decides will grant (PostgreSQL: a slow answer widens the interval).
    /// `None`: the same as `lease_now`.
    fn lease_latest(&self) -> Option<LeaseTime> {
        None
    }

    /// Calls `wake` (while someone else holds it) with the id of each
    /// credential whose row a commit changed, in any process of any box —
    /// a hint that saves a waiter its polls; the row stays the truth. A
    /// backend without such news (SQLite: waiters poll the file) ignores
    /// it.
    fn on_commit(&self, wake: &Arc<Wake>) {
        let _ = wake;
    }

    // ---- the compare-and-swap writes ----

    /// Writes `t` if its guard still holds: `Ok(Some(row))` with the new
    /// row, or `Ok(None)` when another writer got there first (a lost CAS).
    /// A new refresh token in `write` spends the old one's fingerprint in
    /// the same transaction. The same UPDATE keeps `failing_since_ms`
    /// (issue 15): `now_ms` when `failures` leaves 0, unchanged while it
    /// stays above 0, `NULL` when the transition's `failures` is 0; and
    /// `write.notify`, if any, is written to the outbox in the same
    /// transaction (`INSERT` ignored when its event id is already there),
    /// only if the guard held.
    fn apply(
        &self,
        id: &str,
        t: &Transition,
        write: Write<'_>,
        actor: &str,
        now_ms: i64,
    ) -> Result<Option<Credential>>;

    /// Stores a new credential. Refused: an id that exists
    /// ([`crate::Error::Exists`]), a refresh token another id holds
    /// ([`crate::Error::TokenHeldElsewhere`]) or one already spent
    /// ([`crate::Error::SpentToken`]).
    fn insert(&self, c: &NewCredential, actor: &str, now_ms: i64) -> Result<Credential>;

    /// [`Backend::insert`], unless a stored credential of `c`'s provider
    /// (read without secrets, as [`Backend::scan`]) is one `taken` accepts:
    /// then `Ok(Err(that row))`, having written nothing. The look and the
    /// insert are one write transaction, so no other writer — thread or
    /// process — can store a row `taken` would accept in between: this is
    /// how a sign-in never stores one account under two ids
    /// ([`crate::Warden::store_login`]). `taken` must not call the store.
    fn insert_unless(
        &self,
        c: &NewCredential,
        taken: &dyn Fn(&Credential) -> bool,
        actor: &str,
        now_ms: i64,
    ) -> Result<std::result::Result<Credential, Credential>>;

    /// Stores many new credentials in one transaction, each refused on its
    /// own as [`Backend::insert`] refuses it (its refusal in its place, the
    /// others kept) — or, `all_or_nothing`, the first refusal is the
    /// error and nothing is written. The database's own trouble fails the
    /// whole batch, which then wrote nothing.
    fn insert_many(
        &self,
        creds: &[&NewCredential],
        all_or_nothing: bool,
        actor: &str,
        now_ms: i64,
    ) -> Result<Vec<Result<Credential>>>;

    /// Replaces credential `c.id` if its version is still `version` (the
    /// caller read it and saw no live refresh lease): `Ok(None)`, having
    /// written nothing, when another writer got there first or the row is
    /// gone.
    ///
    /// - The refresh token already stored: only settings and metadata
    ///   change — provider settings and API key as imported, claims filled
    ///   in. Its tokens, state, failures, backoff and a death stay: they
    ///   are about that refresh token, which has not changed, and the
    ///   file's access token is not taken (it may be one reported rejected
    ///   since the file was written).
    /// - Another refresh token (refused if another id holds it or it was
    ///   spent): the row takes the import whole and becomes `valid` with
    ///   no lease, failures or error — a dead credential is revived. The
    ///   old token's fingerprint is kept as spent (`replaced`).
    ///
    /// Either way the row keeps its id, creation time, events, handles and
    /// quota history, and its version counts on.
    fn replace(
        &self,
        c: &NewCredential,
        version: i64,
        actor: &str,
        now_ms: i64,
    ) -> Result<Option<Credential>>;

    /// Deletes a credential (its events stay) if it is still at `version`.
    /// A row left `refreshing` spends its refresh token: it may have
    /// reached upstream.
    fn delete(&self, id: &str, version: i64, actor: &str, now_ms: i64) -> Result<Deleted>;

    /// Remembers that an upstream API refused `token`, an access token of
    /// credential `id`, so that no import brings it back.
    fn remember_rejected(&self, id: &str, token: &str, now_ms: i64) -> Result<()>;

    /// Frees the space kept for committing rotated tokens on a full disk;
    /// `false` if there was none left (or the backend keeps none).
    fn release_reserve(&self) -> bool;

    // ---- copying a whole database (`migrate`, store/copy.rs) ----

    /// Every row of each of `tables`, as stored (sealed columns sealed),
    /// in its `order_by` order — all of them read in ONE snapshot of the
    /// database, so that a copy is of one moment (a refresh committed
    /// between two tables' reads would otherwise leave a credential's old
    /// refresh token beside the spent-token row that records it spent).
    fn dump(&self, tables: &[Table]) -> Result<Vec<Vec<Vec<Cell>>>>;

    /// The integer each of `queries` (one row of one column) answers, all
    /// read in one snapshot.
    fn scalars(&self, queries: &[String]) -> Result<Vec<i64>>;

    /// Writes `tables` into this database in one transaction, refused
    /// ([`crate::Error::Config`]) if it holds any credential, event, quota
    /// snapshot, handle or spent token; `meta` rows replace this
    /// database's own. Sequence numbers are kept. `before_commit` runs
    /// last inside the transaction: its error rolls everything back.
    fn load(
        &self,
        tables: &[(&Table, Vec<Vec<Cell>>)],
        before_commit: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()>;

    // ---- history ----

    /// A credential's events, oldest first: with `after`, the first
    /// `limit` whose sequence number follows it; without, the newest
    /// `limit` (all, without a limit).
    fn events(&self, id: &str, after: Option<i64>, limit: Option<u32>) -> Result<Vec<EventRow>>;

    // ---- quota snapshots ----

    /// Records a quota snapshot (with the raw answer, capped) and prunes
    /// that credential's snapshots older than `keep_since_ms`, always
    /// keeping the newest.
    fn insert_quota(&self, q: &QuotaRow, body: Option<&[u8]>, keep_since_ms: i64) -> Result<()>;

    /// The newest quota snapshot of a credential.
    fn latest_quota(&self, id: &str) -> Result<Option<QuotaRow>>;

    /// The newest quota snapshot of every credential that has one.
    fn latest_quotas(&self) -> Result<std::collections::HashMap<String, QuotaRow>>;

    /// How many quota snapshots a credential has (history depth).
    fn quota_history_len(&self, id: &str) -> Result<i64>;

    /// A credential's newest `limit` quota snapshots, oldest first (the
    /// console's history chart).
    fn quota_history(&self, id: &str, limit: u32) -> Result<Vec<QuotaRow>>;

    // ---- facade handles ----

    /// Records a new handle for `credential_id` ([`crate::Error::NotFound`]
    /// if there is no such credential).
    fn insert_handle(
        &self,
        hash: &str,
        credential_id: &str,
        label: &str,
        now_ms: i64,
    ) -> Result<()>;

    /// The handle with this hash.
    fn handle(&self, hash: &str) -> Result<Option<HandleRow>>;

    /// A credential's handles, oldest first.
    fn handles(&self, credential_id: &str) -> Result<Vec<HandleRow>>;

    /// Revokes the handles whose hash starts with `hash_prefix` (at least
    /// 12 hex digits, so one handle is meant); returns how many.
    ///
    /// Each revoked handle leaves an event row on its credential (state
    /// and version as they are; reason `handle SHORT_ID revoked`), in the
    /// same transaction; `actor` is who asked.
    fn revoke_handles(&self, hash_prefix: &str, actor: &str, now_ms: i64) -> Result<usize>;

    /// Notes that a client was answered with the token whose fingerprint
    /// is `served_token`.
    fn touch_handle(&self, hash: &str, now_ms: i64, served_token: &str) -> Result<()>;

    // ---- pools (issue 15) ----

    /// Adds credential `id` to `pool` (`member`) or removes it, appending
    /// an event row (`joined pool P` / `left pool P`, the state unchanged,
    /// the version not bumped) in the same transaction. `Ok(false)`,
    /// writing nothing, when it already was (or was not) a member;
    /// [`crate::Error::NotFound`] if there is no such credential. Deleting a
    /// credential removes its memberships.
    fn set_pool_member(
        &self,
        id: &str,
        pool: &str,
        member: bool,
        actor: &str,
        now_ms: i64,
    ) -> Result<bool>;

    /// Every pool membership: credential id → its pools, sorted.
    fn memberships(&self) -> Result<std::collections::HashMap<String, Vec<String>>>;

    /// Everything a pick in `pool` needs, read together: each member
    /// without its secrets (as [`Backend::scan`]), with its cooldown, its
    /// newest quota snapshot and when this pool last handed it out; and,
    /// given a sticky key, the member last handed out for it. No members:
    /// an empty [`PoolRead`], not an error.
    fn pool(&self, pool: &str, sticky_key: Option<&str>) -> Result<PoolRead>;

    /// Records that `pool` handed out member `id` at `now_ms` (and, with a
    /// sticky key, that the key now means this member). Not durable across
    /// a power cut (it only spreads load); never bumps the version.
    fn pool_served(
        &self,
        pool: &str,
        id: &str,
        sticky_key: Option<&str>,
        now_ms: i64,
    ) -> Result<()>;

    // ---- cooldowns (issue 15) ----

    /// Sets or clears credential `id`'s account-level cooldown, with an
    /// event row (`cooldown until T: reason` / `cooldown cleared: reason`,
    /// the state unchanged, the version not bumped) and `notify`'s outbox
    /// row in the same transaction. `Ok(false)`, writing nothing (and no
    /// notification), when it changes nothing: setting the very cooldown
    /// already set (same end, reason and source), or clearing one that is
    /// not there or was set after `set_before_ms`.
    /// [`crate::Error::NotFound`] if there is no such credential.
    fn cooldown(
        &self,
        id: &str,
        change: CooldownWrite<'_>,
        notify: Option<&Notice>,
        actor: &str,
        now_ms: i64,
    ) -> Result<bool>;

    /// Every cooldown set, run out or not, by credential id.
    fn cooldowns(&self) -> Result<Vec<Cooldown>>;

    // ---- the notifications outbox (issue 15) ----

    /// Takes up to `limit` notifications due at `now_ms` (not delivered,
    /// not given up, `next_attempt_ms <= now_ms`), oldest first, and holds
    /// them until `hold_until_ms` (their `next_attempt_ms`) in one
    /// transaction, so two deliverers do not take the same one at once; a
    /// deliverer that dies leaves a hold that runs out. Each taken row's
    /// `attempts` is counted up.
    fn take_notifications(
        &self,
        now_ms: i64,
        hold_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<NotificationRow>>;

    /// Writes `n` to the outbox in a transaction of its own (ignored when
    /// its event id is already there): for a notice about a change made
    /// by an operation that takes none (a re-import that revives a dead
    /// credential: `recovered`).
    fn insert_notice(&self, n: &Notice) -> Result<()>;

    /// Records what an attempt to deliver notification `event_id` came to.
    fn notification_delivery(
        &self,
        event_id: &str,
        delivery: Delivery<'_>,
        now_ms: i64,
    ) -> Result<()>;

    /// The newest `limit` notifications, oldest first; only those neither
    /// delivered nor given up with `pending_only`.
    fn notifications(&self, pending_only: bool, limit: u32) -> Result<Vec<NotificationRow>>;

    /// How many notifications are pending, delivered and given up.
    fn notification_counts(&self) -> Result<NotificationCounts>;
}
