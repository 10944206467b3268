//! What an operator's tools ask of a [`Warden`] beyond tokens: listings and
//! summaries with their newest quota, quota snapshots, facade handles, and
//! sealing or re-keying a database. The CLI and the HTTP API read and write
//! only through these methods and those of `warden.rs`, never the store
//! itself (architecture invariant A3), so the list and show code exists
//! once.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use crate::clock;
use crate::credential::{validate_id, Credential, NewCredential};
use crate::error::Error;
use crate::error::Result;
use crate::provider::ProviderKind;
use crate::seal::Sealer;
use crate::secret::Secret;
use crate::state::{Now, Policy, State};
use crate::store::{self, HandleRow, NotificationRow, QuotaRow, Scan};
use crate::view::Summary;
use crate::warden::Warden;

/// Rows a page reads per scan (see [`Warden::each_summary_page`]).
pub const PAGE_CHUNK: usize = 500;

/// One page of a listing (`GET /v1/credentials?limit=&after=&state=&provider=`,
/// `tokenwarden list --limit … --after …`): in id order, after a cursor,
/// filtered by effective state and provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    /// The cursor: only ids after this one (the `next` of the page before).
    pub after: Option<String>,
    /// At most this many summaries.
    pub limit: usize,
    /// Only credentials in this effective state (`expiring` included).
    pub state: Option<State>,
    /// Only this provider's credentials.
    pub provider: Option<ProviderKind>,
    /// Only the members of this pool.
    pub pool: Option<String>,
}

impl Default for PageQuery {
    /// Everything, in one page.
    fn default() -> PageQuery {
        PageQuery {
            after: None,
            limit: usize::MAX,
            state: None,
            provider: None,
            pool: None,
        }
    }
}

/// One credential as shown: its row and its newest quota snapshot, with the
/// instant and policy its effective state is judged at.
#[derive(Debug)]
pub struct Detail {
    credential: Credential,
    quota: Option<QuotaRow>,
    pools: Option<Vec<String>>,
    cooldown: Option<crate::Cooldown>,
    now: Now,
    policy: Policy,
}

impl Detail {
    /// What `show` shows (never a secret).
    pub fn summary(&self) -> Summary<'_> {
        Summary::new(&self.credential, self.now, &self.policy)
            .with_quota(self.quota.as_ref())
            .with_pools(self.pools.as_ref())
            .with_cooldown(self.cooldown.as_ref(), self.now.wall_ms)
    }

    /// The newest quota snapshot read with it.
    pub fn quota(&self) -> Option<&QuotaRow> {
        self.quota.as_ref()
    }

    /// The [`crate::facade::fingerprint`] of the access token this detail
    /// was read with, if it has one: names that token without showing it.
    pub fn token_fingerprint(&self) -> Option<String> {
        self.credential
            .access_token
            .as_ref()
            .map(|t| crate::facade::fingerprint(t.expose()))
    }
}

impl Warden {
    /// The summary of every credential, by id, handed to `f` one at a
    /// time, so that no more than one decoded row (and no secret) is held
    /// at once: for answers written as they are read.
    pub fn each_summary(&self, mut f: impl FnMut(Summary<'_>)) -> Result<()> {
        let quotas = self.store().latest_quotas()?;
        let (pools, cooldowns) = self.pools_and_cooldowns()?;
        let (now, policy) = (self.now(), self.config().policy);
        self.store().each_without_secrets(&mut |c| {
            f(Summary::new(&c, now, &policy)
                .with_quota(quotas.get(&c.id))
                .with_pools(pools.get(&c.id))
                .with_cooldown(cooldowns.get(&c.id), now.wall_ms));
        })
    }

    /// Every membership and every cooldown, by credential id: what the
    /// summaries show beside a row.
    #[allow(clippy::type_complexity)]
    fn pools_and_cooldowns(
        &self,
    ) -> Result<(
        std::collections::HashMap<String, Vec<String>>,
        std::collections::HashMap<String, crate::Cooldown>,
    )> {
        let pools = self.store().memberships()?;
        let cooldowns = self
            .store()
            .cooldowns()?
            .into_iter()
            .map(|c| (c.credential_id.clone(), c))
            .collect();
        Ok((pools, cooldowns))
    }

    /// Hands the summaries of one page to `f`, in id order: the
    /// credentials after `q.after` whose effective state and provider match
    /// the filters, at most `q.limit` of them. Returns the cursor of the
    /// next page — the last id handed — when another matching credential
    /// follows, else `None`. Reads the rows after the cursor only as far as
    /// the page needs, so a page costs what it holds, not the table.
    ///
    /// The rows are read in chunks of [`PAGE_CHUNK`], and each chunk's
    /// quota snapshots are looked up after its scan has given its
    /// connection back: a scan that waited for a second connection while
    /// holding one would, with every connection of the pool held by such a
    /// scan, wait out the pool's timeout (`scale::concurrent_pages_…`).
    pub fn each_summary_page(
        &self,
        q: &PageQuery,
        mut f: impl FnMut(Summary<'_>),
    ) -> Result<Option<String>> {
        let (now, policy) = (self.now(), self.config().policy);
        let (pools, cooldowns) = self.pools_and_cooldowns()?;
        let mut after = q.after.clone();
        let (mut handed, mut last) = (0usize, None::<String>);
        loop {
            let (mut rows, mut scanned, mut scanned_last) = (Vec::new(), 0usize, None);
            let scan = Scan {
                after: after.as_deref(),
                provider: q.provider,
                pool: q.pool.as_deref(),
            };
            self.store().scan(scan, &mut |c| {
                scanned += 1;
                scanned_last = Some(c.id.clone());
                if q.state
                    .is_none_or(|s| c.status.effective(now, &policy) == s)
                {
                    rows.push(c);
                }
                match scanned < PAGE_CHUNK {
                    true => ControlFlow::Continue(()),
                    false => ControlFlow::Break(()),
                }
            })?;
            for c in rows {
                if handed == q.limit {
                    // Another match follows the page.
                    return Ok(last);
                }
                let quota = self.store().latest_quota(&c.id)?;
                f(Summary::new(&c, now, &policy)
                    .with_quota(quota.as_ref())
                    .with_pools(pools.get(&c.id))
                    .with_cooldown(cooldowns.get(&c.id), now.wall_ms));
                handed += 1;
                last = Some(c.id);
            }
            if scanned < PAGE_CHUNK {
                return Ok(None);
            }
            after = scanned_last;
        }
    }

    /// Imports a batch of credentials in one transaction (one fsync, for
    /// migrations of many): each is refused on its own, as
    /// [`Warden::import`] refuses it, its refusal returned in its place.
    /// With `replace`, the ones whose id exists are replaced one at a time
    /// through [`Warden::import_within`] (waiting out a live refresh lease
    /// up to `wait`), in file order: the new records between two replaces
    /// are inserted together, after the replace before them and before the
    /// one after them — so a refresh token handed from one record to a
    /// later one lands where the file says last. `Err` only for the
    /// database's own trouble, which fails an insert run as a whole.
    pub fn import_batch(
        &self,
        creds: &[NewCredential],
        replace: bool,
        wait: Duration,
    ) -> Result<Vec<Result<Credential>>> {
        let mut out = Vec::with_capacity(creds.len());
        let mut seen = std::collections::HashSet::new();
        let mut start = 0;
        while start < creds.len() {
            // A run of records that insert: without `replace`, the rest;
            // with it, up to a record whose id is stored (or came earlier in
            // this batch), which is replaced in its place.
            let mut end = start;
            while end < creds.len() {
                let id = &creds[end].id;
                let stored = replace
                    && (seen.contains(id.as_str())
                        || (validate_id(id).is_ok() && self.store().version(id)?.is_some()));
                if stored {
                    break;
                }
                seen.insert(id.as_str());
                end += 1;
            }
            self.insert_run(&creds[start..end], replace, wait, &mut out)?;
            if let Some(c) = creds.get(end) {
                out.push(self.import_one(c, true, wait));
            }
            start = end + 1;
        }
        Ok(out)
    }

    /// [`Warden::import_batch`]'s run of records to insert in one
    /// transaction, their results pushed to `out` in order; one that exists
    /// by now (another process's import since the look) is replaced after
    /// the run, with `replace`.
    fn insert_run(
        &self,
        creds: &[NewCredential],
        replace: bool,
        wait: Duration,
        out: &mut Vec<Result<Credential>>,
    ) -> Result<()> {
        let valid: Vec<Result<()>> = creds
            .iter()
            .map(|c| validate_id(&c.id).map_err(Error::BadInput))
            .collect();
        let to_insert: Vec<&NewCredential> = creds
            .iter()
            .zip(&valid)
            .filter(|(_, v)| v.is_ok())
            .map(|(c, _)| c)
            .collect();
        if to_insert.is_empty() {
            // Every record refused by its id (or none): no transaction.
            out.extend(valid.into_iter().filter_map(Result::err).map(Err));
            return Ok(());
        }
        let actor = clock::actor(&self.config().actor);
        let mut inserted = self
            .store()
            .insert_many(&to_insert, false, &actor, clock::now_ms())?
            .into_iter();
        for (c, v) in creds.iter().zip(valid) {
            let result = match v {
                Err(e) => Err(e),
                // One result per credential inserted, in order.
                Ok(()) => inserted.next().unwrap_or(Err(Error::Internal(
                    "a batch insert answered fewer rows than it was given",
                ))),
            };
            out.push(match result {
                Err(Error::Exists(_)) if replace => self.import_one(c, true, wait),
                other => other,
            });
        }
        Ok(())
    }

    /// Imports the records of an HTTP array: without `replace`, every one
    /// or none — new ones in one transaction that the first refusal rolls
    /// back whole. With `replace`, one at a time through
    /// [`Warden::import_within`] (a replace waits out, or with `wait` zero
    /// refuses, a live lease), stopping at the first refusal. Either way a
    /// refusal of an array's record is [`Error::InRecord`]: its position,
    /// how many records before it were imported, and why.
    pub fn import_all(
        &self,
        creds: &[NewCredential],
        replace: bool,
        wait: Duration,
    ) -> Result<Vec<Credential>> {
        let many = creds.len() > 1;
        let at = |index: usize, imported: usize, e: Error| match many {
            true => Error::InRecord {
                index,
                imported,
                source: Box::new(e),
            },
            false => e,
        };
        if !replace {
            for (i, c) in creds.iter().enumerate() {
                validate_id(&c.id).map_err(|e| at(i, 0, Error::BadInput(e)))?;
            }
            let actor = clock::actor(&self.config().actor);
            let all: Vec<&NewCredential> = creds.iter().collect();
            return match self
                .store()
                .insert_many(&all, true, &actor, clock::now_ms())
            {
                Ok(rows) => rows.into_iter().collect(),
                Err(e) => {
                    let id = match &e {
                        Error::Exists(id)
                        | Error::SpentToken { id, .. }
                        | Error::TokenHeldElsewhere { id, .. } => Some(id),
                        _ => None,
                    };
                    // Ids are unique within an array (parse_import refuses
                    // a repeat), so the id names the record.
                    match id.and_then(|id| creds.iter().position(|c| &c.id == id)) {
                        Some(index) => Err(at(index, 0, e)),
                        None => Err(e),
                    }
                }
            };
        }
        let mut rows = Vec::with_capacity(creds.len());
        for (i, c) in creds.iter().enumerate() {
            let row = self
                .import_one(c, true, wait)
                .map_err(|e| at(i, rows.len(), e))?;
            rows.push(row);
        }
        Ok(rows)
    }

    /// How many credentials are in each effective state now, for every
    /// state (read one row at a time, without secrets).
    pub fn count_by_state(&self) -> Result<[(&'static str, u64); State::ALL.len()]> {
        let (now, policy) = (self.now(), self.config().policy);
        let mut states = State::ALL.map(|s| (s.as_str(), 0u64));
        self.store().each_without_secrets(&mut |c| {
            let state = c.status.effective(now, &policy).as_str();
            if let Some((_, n)) = states.iter_mut().find(|(name, _)| *name == state) {
                *n += 1;
            }
        })?;
        Ok(states)
    }

    /// One credential with its newest quota snapshot, read now.
    pub fn detail(&self, id: &str) -> Result<Detail> {
        let credential = self.get(id)?;
        let quota = self.store().latest_quota(id)?;
        let (mut pools, mut cooldowns) = self.pools_and_cooldowns()?;
        Ok(Detail {
            credential,
            quota,
            pools: pools.remove(id),
            cooldown: cooldowns.remove(id),
            now: self.now(),
            policy: self.config().policy,
        })
    }

    /// The newest quota snapshot of `id`, if any (not checked to exist).
    pub fn latest_quota(&self, id: &str) -> Result<Option<QuotaRow>> {
        self.store().latest_quota(id)
    }

    /// The newest `limit` quota snapshots of `id`, oldest first (not
    /// checked to exist): the console's history chart.
    pub fn quota_history(&self, id: &str, limit: u32) -> Result<Vec<QuotaRow>> {
        self.store().quota_history(id, limit)
    }

    /// Records a quota snapshot (with the raw answer, if any) and drops the
    /// ones of its credential fetched before `drop_before_ms`.
    pub(crate) fn record_quota(
        &self,
        row: &QuotaRow,
        raw: Option<&[u8]>,
        drop_before_ms: i64,
    ) -> Result<()> {
        self.store().insert_quota(row, raw, drop_before_ms)
    }

    /// The facade handles of credential `id`, revoked ones too; an id that
    /// does not exist is `NotFound`.
    pub fn handles(&self, id: &str) -> Result<Vec<HandleRow>> {
        self.get(id)?;
        self.store().handles(id)
    }

    /// Records a new handle, by its hash, for credential `id`.
    pub(crate) fn add_handle(&self, hash: &str, id: &str, label: &str, now_ms: i64) -> Result<()> {
        self.store().insert_handle(hash, id, label, now_ms)
    }

    /// The handle with this hash, revoked or not.
    pub(crate) fn handle(&self, hash: &str) -> Result<Option<HandleRow>> {
        self.store().handle(hash)
    }

    /// Revokes the active handles whose hash starts with `hash_prefix`;
    /// says how many.
    pub(crate) fn revoke_handles(&self, hash_prefix: &str, now_ms: i64) -> Result<usize> {
        let actor = clock::actor(&self.config().actor);
        self.store().revoke_handles(hash_prefix, &actor, now_ms)
    }

    /// Records that the handle with this hash was just served the access
    /// token whose fingerprint is `served_token`.
    pub(crate) fn touch_handle(&self, hash: &str, now_ms: i64, served_token: &str) -> Result<()> {
        self.store().touch_handle(hash, now_ms, served_token)
    }

    /// Seals every secret column of the database at `path` with `key`, in
    /// one transaction; says how many credentials. The database is opened
    /// for this alone (no `Warden` on it is needed).
    pub fn encrypt(path: &Path, busy_timeout: Duration, key: &Sealer) -> Result<usize> {
        store::encrypt_in_place(path, millis_u64(busy_timeout), key)
    }

    /// Re-seals every secret column of the database at `path` from `old`
    /// to `new`, in one transaction; says how many credentials.
    pub fn rekey(path: &Path, busy_timeout: Duration, old: &Sealer, new: &Sealer) -> Result<usize> {
        store::rekey(path, millis_u64(busy_timeout), old, new)
    }

    /// Copies everything in this warden's database — credentials with
    /// their sealed columns as they are, events, handles, quota history,
    /// spent-token fingerprints and the keys' `meta` rows — to the
    /// database `to` (a SQLite file or a `postgres://` URL, either
    /// direction), which must be empty; then counts every table on both
    /// sides. Refused while a refresh is in flight. Stop the other
    /// processes on this database first: what they write meanwhile is not
    /// copied. Returns the rows copied per table.
    pub fn migrate_to(&self, to: &Path) -> Result<Vec<(&'static str, i64)>> {
        let c = self.config();
        let target =
            store::Store::open_with(to, c.busy_timeout, c.pool_size, None, store::Startup::Eager)?;
        store::copy::migrate(self.store(), &target)
    }

    /// The database `db` (a `--db` value) as it may be printed: a
    /// PostgreSQL URL without its password.
    pub fn shown_database(db: &Path) -> String {
        store::shown(db)
    }

    // ---- pools, cooldowns, notifications (issue 15) ----

    /// Adds credential `id` to `pool` (`member`) or takes it out; `false`
    /// when it already was (or was not) a member. An event row records it.
    pub fn set_pool_member(&self, id: &str, pool: &str, member: bool) -> Result<bool> {
        validate_id(id).map_err(Error::BadInput)?;
        crate::credential::validate_pool_name(pool).map_err(Error::BadInput)?;
        let actor = clock::actor(&self.config().actor);
        self.store()
            .set_pool_member(id, pool, member, &actor, clock::now_ms())
    }

    /// Every credential's pools, by credential id.
    pub fn memberships(&self) -> Result<std::collections::HashMap<String, Vec<String>>> {
        self.store().memberships()
    }

    /// Sets credential `id`'s account-level cooldown until `until_ms`
    /// (e.g. after upstream answered 429 `usage_limit_reached`): no pool
    /// hands it out before then. `false` if that very cooldown was set.
    pub fn set_cooldown(&self, id: &str, until_ms: i64, reason: &str) -> Result<bool> {
        validate_id(id).map_err(Error::BadInput)?;
        let set = store::CooldownWrite::Set {
            until_ms,
            reason,
            source: store::CooldownSource::Manual,
        };
        let actor = clock::actor(&self.config().actor);
        self.store()
            .cooldown(id, set, None, &actor, clock::now_ms())
    }

    /// [`Warden::set_cooldown`], but only ever lengthening: a cooldown that
    /// already ends at or after `until_ms` is kept as it is (`false`). What
    /// a read-only API key may do: cool an account down or longer, never
    /// lift nor shorten a cooldown (that needs an admin key). The current
    /// end is read, then the new one written: two sets racing in that gap
    /// end with the last one written, as two admin sets do.
    pub fn extend_cooldown(&self, id: &str, until_ms: i64, reason: &str) -> Result<bool> {
        validate_id(id).map_err(Error::BadInput)?;
        let current = self
            .store()
            .cooldowns()?
            .into_iter()
            .find(|c| c.credential_id == id);
        if current.is_some_and(|c| c.until_ms >= until_ms) {
            return Ok(false);
        }
        self.set_cooldown(id, until_ms, reason)
    }

    /// Clears credential `id`'s cooldown; `false` if it had none.
    pub fn clear_cooldown(&self, id: &str, reason: &str) -> Result<bool> {
        validate_id(id).map_err(Error::BadInput)?;
        let clear = store::CooldownWrite::Clear {
            set_before_ms: i64::MAX,
            reason,
        };
        let actor = clock::actor(&self.config().actor);
        self.store()
            .cooldown(id, clear, None, &actor, clock::now_ms())
    }

    /// Every cooldown set (run out or not).
    pub fn cooldowns(&self) -> Result<Vec<crate::Cooldown>> {
        self.store().cooldowns()
    }

    /// Applies what the quota snapshot `row` says to its credential's
    /// cooldown (see [`crate::pool::cooldown_from_snapshot`]): an exhausted
    /// window sets one until its reset, a snapshot with nothing exhausted
    /// clears one set before it was fetched; each with its event row and
    /// its `quota_exhausted` / `quota_reset` notification in one
    /// transaction. A failed fetch changes nothing. Returns whether
    /// anything changed.
    pub(crate) fn cooldown_from_quota(&self, row: &QuotaRow) -> Result<bool> {
        let Some(quota) = row.quota.as_ref() else {
            return Ok(false);
        };
        let id = row.credential_id.as_str();
        let current = self
            .store()
            .cooldowns()?
            .into_iter()
            .find(|c| c.credential_id == id);
        let change = crate::pool::cooldown_from_snapshot(
            quota,
            row.fetched_at_ms,
            current.as_ref().map(|c| c.until_ms),
        );
        let Some(credential) = self.store().get_without_secrets(id)? else {
            return Ok(false);
        };
        let now = clock::now_ms();
        let actor = clock::actor(&self.config().actor);
        match change {
            crate::pool::CooldownChange::Keep => Ok(false),
            crate::pool::CooldownChange::Set { until_ms, reason } => {
                // One exhaustion is one notice: moving the end of a quota
                // cooldown still running when the snapshot was fetched
                // (a window without a reset time is re-estimated on every
                // snapshot) is the same exhaustion, not news.
                let ongoing = current.as_ref().is_some_and(|c| {
                    c.source == store::CooldownSource::Quota && c.until_ms > row.fetched_at_ms
                });
                let note = (!ongoing).then(|| {
                    crate::notify::on_quota_cooldown(
                        &credential,
                        true,
                        Some(until_ms),
                        &reason,
                        now,
                    )
                });
                let set = store::CooldownWrite::Set {
                    until_ms,
                    reason: &reason,
                    source: store::CooldownSource::Quota,
                };
                self.store().cooldown(id, set, note.as_ref(), &actor, now)
            }
            crate::pool::CooldownChange::Clear { reason } => {
                // A reset is news only after an exhausted window.
                let was_quota = current
                    .as_ref()
                    .is_some_and(|c| c.source == store::CooldownSource::Quota);
                let note = was_quota.then(|| {
                    crate::notify::on_quota_cooldown(&credential, false, None, &reason, now)
                });
                let clear = store::CooldownWrite::Clear {
                    set_before_ms: row.fetched_at_ms,
                    reason: &reason,
                };
                self.store().cooldown(id, clear, note.as_ref(), &actor, now)
            }
        }
    }

    /// Garbage-collects the cooldowns that ended more than
    /// [`crate::pool::ENDED_COOLDOWN_KEPT_MS`] ago (each with its event row). Returns
    /// how many.
    ///
    /// Never the cooldowns that merely ended by this process's clock: every
    /// reader already ignores an ended cooldown by its own clock, and a
    /// process whose clock is fast (a cron `sweep` on a box a day ahead)
    /// must not delete, for every correctly clocked process, a cooldown
    /// that still runs.
    pub fn clear_ended_cooldowns(&self) -> Result<usize> {
        self.clear_ended_cooldowns_at(clock::now_ms())
    }

    /// [`Warden::clear_ended_cooldowns`] as if the clock read `now_ms`.
    #[doc(hidden)]
    pub fn clear_ended_cooldowns_at(&self, now_ms: i64) -> Result<usize> {
        let now = now_ms;
        let actor = clock::actor(&self.config().actor);
        let mut cleared = 0;
        for c in self.store().cooldowns()? {
            if c.until_ms
                .saturating_add(crate::pool::ENDED_COOLDOWN_KEPT_MS)
                > now
            {
                continue;
            }
            let clear = store::CooldownWrite::Clear {
                set_before_ms: c.set_ms,
                reason: "its time is over",
            };
            match self
                .store()
                .cooldown(&c.credential_id, clear, None, &actor, now)
            {
                Ok(true) => cleared += 1,
                Ok(false) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(cleared)
    }

    /// The newest `limit` notifications, oldest first (only the pending
    /// ones with `pending_only`).
    pub fn notifications(&self, pending_only: bool, limit: u32) -> Result<Vec<NotificationRow>> {
        self.store().notifications(pending_only, limit)
    }

    /// Takes the notifications due now for delivery (see
    /// `Backend::take_notifications`).
    pub(crate) fn take_notifications(
        &self,
        now_ms: i64,
        hold_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<NotificationRow>> {
        self.store()
            .take_notifications(now_ms, hold_until_ms, limit)
    }

    /// Records what a delivery attempt came to.
    pub(crate) fn notification_delivered(
        &self,
        event_id: &str,
        delivery: crate::Delivery<'_>,
        now_ms: i64,
    ) -> Result<()> {
        self.store()
            .notification_delivery(event_id, delivery, now_ms)
    }

    /// The gauges `/metrics` shows for pools and notifications.
    pub fn pool_gauges(&self) -> Result<crate::metrics::PoolGauges> {
        let now = clock::now_ms();
        let counts = self.store().notification_counts()?;
        let active = self
            .store()
            .cooldowns()?
            .iter()
            .filter(|c| c.until_ms > now)
            .count();
        Ok(crate::metrics::PoolGauges {
            cooldowns_active: active as u64,
            notifications_pending: counts.pending,
            notifications_delivered: counts.delivered,
            notifications_failed: counts.failed,
        })
    }
}

fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{NewCredential, ProviderConfig};
    use crate::secret::Secret;

    /// A credential `id` holding `rt`, its access token valid for an hour.
    fn new(id: String, kind: ProviderKind, rt: &str) -> NewCredential {
        NewCredential {
            provider: ProviderConfig::new(kind),
            refresh_token: Secret::new(rt),
            access_token: Some(Secret::new(format!("at-{id}"))),
            id_token: None,
            expires_at_ms: Some(clock::now_ms() + 3_600_000),
            claims: Default::default(),
            last_refresh_ms: None,
            api_key: None,
            id,
        }
    }

    /// A database of `n` Codex credentials `c00`… and `n` Claude ones
    /// `k00`…, all valid for an hour.
    fn warden(n: usize) -> (tempfile::TempDir, Warden) {
        let dir = tempfile::tempdir().unwrap();
        let w = Warden::open(dir.path().join("t.db"), crate::Config::default()).unwrap();
        let creds: Vec<_> = (0..n)
            .flat_map(|i| {
                let (c, k) = (format!("c{i:02}"), format!("k{i:02}"));
                [
                    new(c.clone(), ProviderKind::Codex, &format!("rt-{c}")),
                    new(k.clone(), ProviderKind::Claude, &format!("rt-{k}")),
                ]
            })
            .collect();
        w.import(&creds, false).unwrap();
        (dir, w)
    }

    fn page(w: &Warden, q: &PageQuery) -> (Vec<String>, Option<String>) {
        let mut ids = Vec::new();
        let next = w
            .each_summary_page(q, |s| ids.push(s.id.to_owned()))
            .unwrap();
        (ids, next)
    }

    /// Pages follow each other by cursor, in id order, without gaps or
    /// repeats; the last has no cursor; filters apply before the limit.
    #[test]
    fn pages_cover_every_credential_once_and_filters_apply_before_the_limit() {
        let (_dir, w) = warden(12);
        let mut q = PageQuery {
            limit: 5,
            ..PageQuery::default()
        };
        let mut seen = Vec::new();
        loop {
            let (ids, next) = page(&w, &q);
            assert!(ids.len() <= 5);
            seen.extend(ids);
            match next {
                Some(after) => {
                    assert_eq!(Some(&after), seen.last(), "the cursor is the last id");
                    q.after = Some(after);
                }
                None => break,
            }
        }
        let mut all: Vec<String> = (0..12)
            .flat_map(|i| [format!("c{i:02}"), format!("k{i:02}")])
            .collect();
        all.sort();
        assert_eq!(seen, all);
        // Exactly a page's worth left: no cursor to an empty page.
        let (ids, next) = page(
            &w,
            &PageQuery {
                limit: 12,
                provider: Some(ProviderKind::Claude),
                ..PageQuery::default()
            },
        );
        assert_eq!(ids.len(), 12);
        assert!(ids.iter().all(|id| id.starts_with('k')));
        assert_eq!(next, None);
        // A state filter skips what does not match before counting: c05's
        // new login carries an access token past its expiry, so it reads as
        // `expiring`.
        let mut stale = new("c05".into(), ProviderKind::Codex, "rt-c05-relogin");
        stale.expires_at_ms = Some(clock::now_ms() - 1_000);
        w.import(&[stale], true).unwrap();
        let expiring = PageQuery {
            limit: 10,
            state: Some(State::Expiring),
            ..PageQuery::default()
        };
        assert_eq!(page(&w, &expiring), (vec!["c05".to_owned()], None));
        let valid_after = page(
            &w,
            &PageQuery {
                limit: 3,
                after: Some("c02".into()),
                state: Some(State::Valid),
                ..PageQuery::default()
            },
        );
        assert_eq!(valid_after.0, ["c03", "c04", "c06"]);
        assert_eq!(valid_after.1.as_deref(), Some("c06"));
    }

    /// Pages that span several scan chunks (and a filter that skips a
    /// whole chunk) still cover every match once, in order.
    #[test]
    fn pages_cross_scan_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let w = Warden::open(dir.path().join("t.db"), crate::Config::default()).unwrap();
        let n = PAGE_CHUNK * 2 + 50;
        let creds: Vec<_> = (0..n)
            .map(|i| {
                // Claude only in the last 50: a provider filter skips whole chunks.
                let kind = if i < PAGE_CHUNK * 2 {
                    ProviderKind::Codex
                } else {
                    ProviderKind::Claude
                };
                new(format!("x{i:05}"), kind, &format!("rt-{i}"))
            })
            .collect();
        assert!(w
            .import_batch(&creds, false, Duration::ZERO)
            .unwrap()
            .iter()
            .all(Result::is_ok));
        let q = PageQuery {
            limit: PAGE_CHUNK + 7,
            ..PageQuery::default()
        };
        let (first, next) = page(&w, &q);
        assert_eq!(first.len(), PAGE_CHUNK + 7);
        let (second, next2) = page(
            &w,
            &PageQuery {
                after: next,
                ..q.clone()
            },
        );
        let (third, next3) = page(
            &w,
            &PageQuery {
                after: next2,
                ..q.clone()
            },
        );
        assert_eq!(next3, None);
        let all: Vec<String> = [first, second, third].concat();
        assert_eq!(all, (0..n).map(|i| format!("x{i:05}")).collect::<Vec<_>>());
        let claude = PageQuery {
            limit: 10,
            provider: Some(ProviderKind::Claude),
            ..PageQuery::default()
        };
        let (ids, next) = page(&w, &claude);
        assert_eq!(ids.first().map(String::as_str), Some("x01000"));
        assert_eq!(next.as_deref(), Some("x01009"));
    }

    /// A sign-in without --id for the account of a credential refreshed
    /// through a proxy (its own token URL) updates that credential and
    /// keeps its token URL.
    #[test]
    fn a_login_keeps_a_proxied_credentials_token_url() {
        let (_dir, w) = warden(0);
        let login = |rt: &str, token_url: &str| NewCredential {
            provider: ProviderConfig {
                token_url: Some(token_url.into()),
                client_id: Some("cli".into()),
                ..ProviderConfig::new(ProviderKind::OAuth2)
            },
            claims: crate::credential::Claims {
                user_id: Some("sub-1".into()),
                ..Default::default()
            },
            ..new(String::new(), ProviderKind::OAuth2, rt)
        };
        let mut proxied = login("rt-1", "http://127.0.0.1:9/proxy/token");
        proxied.id = "p".into();
        w.import(&[proxied], false).unwrap();
        let (row, how) = w
            .store_login(login("rt-2", "https://idp.example/token"), None)
            .unwrap();
        assert_eq!(
            (row.id.as_str(), how),
            ("p", Stored::Updated { revived: false })
        );
        assert_eq!(
            row.provider.token_url.as_deref(),
            Some("http://127.0.0.1:9/proxy/token")
        );
        // Another client's subject of the same name is another account.
        let mut other = login("rt-3", "https://idp.example/token");
        other.provider.client_id = Some("other".into());
        let (row, how) = w.store_login(other, Some("q")).unwrap();
        assert_eq!((row.id.as_str(), how), ("q", Stored::New));
    }

    /// Events page forward from a sequence number; without one, the tail.
    #[test]
    fn event_pages_follow_the_sequence_and_the_tail_has_no_cursor() {
        let (_dir, w) = warden(1);
        for n in 0..4 {
            let login = new("c00".into(), ProviderKind::Codex, &format!("rt-new-{n}"));
            w.import(&[login], true).unwrap();
        }
        let all = w.events("c00", None).unwrap();
        assert_eq!(all.len(), 5, "import and four replaces");
        let (first, next) = w.events_page("c00", Some(0), Some(2)).unwrap();
        assert_eq!(first, all[..2]);
        assert_eq!(next, Some(all[1].seq));
        let (second, next) = w.events_page("c00", next, Some(2)).unwrap();
        assert_eq!(second, all[2..4]);
        let (last, next) = w.events_page("c00", next, Some(2)).unwrap();
        assert_eq!(last, all[4..]);
        assert_eq!(next, None);
        let (tail, next) = w.events_page("c00", None, Some(2)).unwrap();
        assert_eq!(tail, all[3..]);
        assert_eq!(next, None);
        assert!(matches!(
            w.events_page("nobody", Some(0), Some(2)),
            Err(crate::Error::NotFound(_))
        ));
    }
}

/// What [`Warden::store_login`] did with a sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A new credential.
    New,
    /// The account's credential, updated in place (handles, events and
    /// quota history kept); `revived` when it was dead.
    Updated {
        /// It was dead and is alive again.
        revived: bool,
    },
}

impl Warden {
    /// Stores the credential of a `tokenwarden login`: the account's
    /// existing credential updated in place — the same account (account id,
    /// subject or e-mail, see [`crate::login::same_account`]) of the same
    /// server is never stored under a second id — or a new one.
    ///
    /// A new credential is inserted in the same write transaction that
    /// looks for the account (`Backend::insert_unless`): two logins for
    /// one account finishing at once — threads or processes — never both
    /// insert it. The one that finds the account stored looks again and
    /// updates it (without `--id`), or is refused (an `--id` that is not
    /// the account's).
    ///
    /// The update is `import --replace`'s compare-and-swap
    /// ([`Warden::import_within`]): it waits (up to the configured `wait`)
    /// for a refresh in flight to commit, so the refresh token that refresh
    /// sends is spent before the new one replaces it; a dead credential
    /// comes back to life (also when the server answered with the refresh
    /// token already stored: the sign-in's access token is then taken);
    /// handles, events and quota history survive.
    ///
    /// The id is `id` if given (refused when it holds another account, or
    /// when the account is already stored under another id), else the
    /// account's stored id, else [`crate::login::default_id`] — or, when a
    /// credential of another provider holds that, the first free
    /// `PROVIDER-DEFAULT[-N]`.
    pub fn store_login(
        &self,
        cred: NewCredential,
        id: Option<&str>,
    ) -> Result<(Credential, Stored)> {
        // Each retry follows another writer's commit (the account or the
        // id was stored meanwhile), so this ends; the bound is a guard.
        for _ in 0..LOGIN_RETRIES {
            if let Some(done) = self.store_login_once(cred.clone(), id)? {
                return Ok(done);
            }
        }
        Err(Error::Internal(
            "a sign-in kept losing the race to store its account",
        ))
    }

    /// One attempt of [`Warden::store_login`]: `None` when a concurrent
    /// writer stored the account, or took the id, between the look and the
    /// insert (nothing written: look again).
    fn store_login_once(
        &self,
        mut cred: NewCredential,
        id: Option<&str>,
    ) -> Result<Option<(Credential, Stored)>> {
        use crate::login::{default_id, is_account, matching, same_account};
        let mut rows = Vec::new();
        let mut ids = std::collections::HashSet::new();
        self.store().each_without_secrets(&mut |c| {
            ids.insert(c.id.clone());
            if c.provider.kind == cred.provider.kind {
                rows.push(c)
            }
        })?;
        let same = matching(&rows, &cred.provider, &cred.claims);
        let account = || {
            cred.claims
                .email
                .clone()
                .or_else(|| cred.claims.account_id.clone())
                .or_else(|| cred.claims.user_id.clone())
                .unwrap_or_else(|| "this account".into())
        };
        let target = match id {
            Some(id) => {
                validate_id(id).map_err(Error::BadInput)?;
                if let Some(other) = same.iter().find(|c| c.id != id) {
                    return Err(Error::BadInput(format!(
                        "{} is already stored as credential '{}'; one account is never kept \
                         under two ids (two ids would refresh one login twice). Sign in again \
                         with `--id {}`, or delete '{}' first",
                        account(),
                        other.id,
                        other.id,
                        other.id
                    )));
                }
                if let Some(existing) = rows.iter().find(|c| c.id == id) {
                    if same_account(&existing.claims, &cred.claims) == Some(false) {
                        return Err(Error::BadInput(format!(
                            "credential '{id}' holds another {} account; this sign-in is {}. \
                             Pick another --id",
                            cred.provider.kind,
                            account()
                        )));
                    }
                }
                id.to_owned()
            }
            None => match same.as_slice() {
                [one] => one.id.clone(),
                [] => free_login_id(
                    cred.provider.kind,
                    &default_id(cred.provider.kind, &cred.claims),
                    &rows,
                    &ids,
                ),
                many => {
                    return Err(Error::BadInput(format!(
                        "{} is stored under several ids ({}); name the one to update with --id",
                        account(),
                        many.iter()
                            .map(|c| c.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            },
        };
        let before = self.store().get_without_secrets(&target)?;
        let Some(existing) = before else {
            cred.id = target;
            let provider = cred.provider.clone();
            let claims = cred.claims.clone();
            let taken = |c: &Credential| is_account(c, &provider, &claims);
            return match self.insert_login(&cred, &taken) {
                Ok(Ok(row)) => Ok(Some((row, Stored::New))),
                // The account (or the id) was stored meanwhile: look again.
                Ok(Err(_)) | Err(Error::Exists(_)) => Ok(None),
                Err(e) => Err(e),
            };
        };
        if existing.provider.kind != cred.provider.kind {
            return Err(Error::BadInput(format!(
                "credential '{target}' is a {} credential, not {}; pick another --id",
                existing.provider.kind, cred.provider.kind
            )));
        }
        if id.is_none() && same_account(&existing.claims, &cred.claims) != Some(true) {
            return Err(Error::BadInput(format!(
                "credential '{target}' exists and is not known to be {}; name the credential \
                 to update, or a new id, with --id",
                account()
            )));
        }
        // Keep the settings a sign-in does not carry (an imported
        // credential's own token URL, for instance) when it has none — and
        // the credential's own token URL when the sign-in found it by its
        // subject through another one (a proxy's, see
        // `crate::login::is_account`): the user set it; `--id` names a
        // credential whose token URL the sign-in's may replace.
        let (new, old) = (&mut cred.provider, &existing.provider);
        let found_elsewhere =
            id.is_none() && old.token_url.is_some() && new.token_url != old.token_url;
        new.token_url = match found_elsewhere {
            true => old.token_url.clone(),
            false => new.token_url.take().or_else(|| old.token_url.clone()),
        };
        cred.claims = std::mem::take(&mut cred.claims).or(&existing.claims);
        cred.id = target;
        let mut row = self.import_one(&cred, true, self.config().wait)?;
        let fresh = |r: &Credential| {
            r.access_token.as_ref().map(Secret::expose)
                == cred.access_token.as_ref().map(Secret::expose)
                && r.status.state != State::Dead
        };
        if !fresh(&row) {
            // The same refresh token came back: the replace changed only
            // settings; the sign-in's tokens are taken here.
            if let Some(stored) = self.store().get(&row.id)? {
                if stored.refresh_token.expose() == cred.refresh_token.expose() && !fresh(&stored) {
                    if let Some(new) = self.take_login_tokens(&stored, &cred)? {
                        row = new;
                    }
                }
            }
        }
        // Revived: dead before, alive after — read from the row as stored.
        let revived = existing.status.state == State::Dead && row.status.state != State::Dead;
        Ok(Some((row, Stored::Updated { revived })))
    }
}

/// How many times [`Warden::store_login`] looks again after losing a race.
const LOGIN_RETRIES: usize = 16;

/// The id of a new sign-in without `--id`: `default`, unless a credential
/// of another provider holds it (one e-mail, two providers' accounts) —
/// then `PROVIDER-DEFAULT`, or `PROVIDER-DEFAULT-2`, … the first free one.
/// A `default` held by a credential of the same provider is left for the
/// caller to refuse (it may be this very account, not known to be).
fn free_login_id(
    kind: ProviderKind,
    default: &str,
    same_kind: &[Credential],
    ids: &std::collections::HashSet<String>,
) -> String {
    if !ids.contains(default) || same_kind.iter().any(|c| c.id == default) {
        return default.to_owned();
    }
    let base = format!("{kind}-{default}");
    std::iter::once(base.clone())
        .chain((2..=ids.len() + 2).map(|n| format!("{base}-{n}")))
        .find(|id| !ids.contains(id) && validate_id(id).is_ok())
        // Too long for an id: `default`, which the caller then refuses as
        // another provider's credential — before the update, nothing lost
        // but this sign-in, with an error that says to pass --id.
        .unwrap_or_else(|| default.to_owned())
}
