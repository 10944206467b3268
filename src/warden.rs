//! The library API: a blocking, `Send + Sync` handle on one database.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::clock;
use crate::config::Config;
use crate::credential::{validate_id, Credential, NewCredential};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
pub use crate::refresh::Via;
use crate::refresh::{Refresher, Transport};
use crate::seal::Sealer;
use crate::secret::Secret;
use crate::state::{self, Decision, Event, Need, Refusal};
use crate::store::{Deleted, EventRow, Startup, Store, Write};
use crate::upstream::{RequestSlots, Upstream};

/// How often a replace waiting on a refresh lease looks at the row even
/// if nothing woke it (a crashed owner's lease runs out without a write).
const REPLACE_RECHECK: Duration = Duration::from_millis(100);
/// The first pause between two polls of the row's version.
const POLL: Duration = Duration::from_millis(5);

/// An access token handed to a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token to send upstream as `Authorization: Bearer`.
    pub access_token: Secret,
    /// When it expires (unix ms).
    pub expires_at_ms: i64,
    /// The credential it belongs to.
    pub credential_id: String,
    /// The upstream account, when known.
    pub account_id: Option<String>,
    /// The row version it was read at.
    pub version: i64,
}

impl Grant {
    fn from_row(row: &Credential) -> Result<Grant> {
        match (&row.access_token, row.status.expires_at_ms) {
            (Some(token), Some(expires_at_ms)) => Ok(Grant {
                access_token: token.clone(),
                expires_at_ms,
                credential_id: row.id.clone(),
                account_id: row.claims.account_id.clone(),
                version: row.status.version,
            }),
            // decide() serves only rows with a token and an expiry.
            _ => {
                log::error!("{}: served row has no access token", row.id);
                Err(Error::Internal("served row has no access token"))
            }
        }
    }
}

/// Keeps credentials in one database — a SQLite file, or a PostgreSQL
/// database shared by several boxes — and hands out working tokens.
///
/// Every method blocks and is safe to call from any number of threads and
/// processes at once: a refresh happens once per need, whoever asks.
///
/// ```no_run
/// use std::time::Duration;
/// use tokenwarden::{Config, Warden};
///
/// let warden = Warden::open("tokenwarden.db", Config::from_env()?)?;
/// let grant = warden.token("me@example.com", Duration::from_secs(60))?;
/// // send `grant.access_token.expose()` as a Bearer token; on a 401:
/// let fresh = warden.reject("me@example.com", grant.access_token.expose())?;
/// # Ok::<(), tokenwarden::Error>(())
/// ```
pub struct Warden {
    core: Refresher,
}

fn checked(id: &str) -> Result<&str> {
    validate_id(id).map_err(Error::BadInput)?;
    Ok(id)
}

/// Each pool member's cooldown end as the pick honours it: a cooldown is
/// the account's (issue 15), so every login of one provider account (same
/// provider, same account id) gets the latest end set on any of them; a
/// member without an account id has only its own.
fn account_cooldowns(members: &[crate::store::PoolMember]) -> Vec<Option<i64>> {
    fn account(m: &crate::store::PoolMember) -> Option<(crate::credential::ProviderKind, &str)> {
        m.credential
            .claims
            .account_id
            .as_deref()
            .map(|a| (m.credential.provider.kind, a))
    }
    members
        .iter()
        .map(|m| {
            let own = m.cooldown.as_ref().map(|c| c.until_ms);
            let Some(key) = account(m) else { return own };
            members
                .iter()
                .filter(|o| account(o) == Some(key))
                .filter_map(|o| o.cooldown.as_ref().map(|c| c.until_ms))
                .max()
        })
        .collect()
}

impl Warden {
    /// Opens (creating if needed) the database at `path`: a SQLite file, or
    /// a `postgres://` / `postgresql://` URL (its schema created or
    /// migrated).
    pub fn open(path: impl AsRef<Path>, config: Config) -> Result<Warden> {
        Warden::open_with(path.as_ref(), config, Startup::Eager)
    }

    /// [`Warden::open`] for a process that will most likely only read, such
    /// as a one-shot `tokenwarden token`: the start-up work that only
    /// writes need — the refresh-token fingerprint key, the fingerprints of
    /// rows of schema version 1, the space reserve — is done before this
    /// warden's first write (a claim, before any refresh) instead of at
    /// open. The schema is still checked (and migrated) and the encryption
    /// key verified at open, and every write is the same.
    pub fn open_for_reads(path: impl AsRef<Path>, config: Config) -> Result<Warden> {
        Warden::open_with(path.as_ref(), config, Startup::Deferred)
    }

    fn open_with(path: &Path, config: Config, startup: Startup) -> Result<Warden> {
        config.validate()?;
        let sealer = config
            .encryption_key
            .as_ref()
            .map(|k| Sealer::from_base64(k.expose()))
            .transpose()
            .map_err(|e| Error::Config(e.to_string()))?;
        let store = Store::open_with(path, config.busy_timeout, config.pool_size, sealer, startup)?;
        // Leases on the store's clock where it keeps one (PostgreSQL).
        let (earliest, latest) = (store.clone(), store.clone());
        let clock =
            clock::with_lease_source(move || earliest.lease_now(), move || latest.lease_latest());
        Ok(Warden {
            core: Refresher::new(store, config, Box::new(Upstream::new()), clock),
        })
    }

    /// Both clocks now, as this warden's protocol reads them: the lease
    /// clock is the store's where it keeps one (PostgreSQL's server clock),
    /// so every decision about a lease — a reject, a listing's state, the
    /// sweep's due list — judges it on the clock it was written on.
    pub(crate) fn now(&self) -> state::Now {
        self.core.clock.now()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// This process's counters (for `/metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.core.metrics
    }

    /// The HTTP client (for the usage endpoints).
    pub(crate) fn upstream(&self) -> &dyn Transport {
        &*self.core.upstream
    }

    /// The underlying store. Tests and benches only: the crate's callers,
    /// and the CLI and HTTP API above all, go through `Warden`'s methods
    /// (here and in `admin.rs`; architecture invariant A3), and an embedder
    /// should too. Kept public, hidden, for the integration tests that look
    /// at rows directly (`attack`, `hardening`, `import_replace`,
    /// `shm_locks`).
    #[doc(hidden)]
    pub fn store(&self) -> &Store {
        &self.core.store
    }

    /// A token valid for at least `min_ttl`, refreshing first if needed;
    /// waits up to the configured `wait` on another caller's refresh.
    pub fn token(&self, id: &str, min_ttl: Duration) -> Result<Grant> {
        self.token_within(id, min_ttl, self.core.config.wait)
    }

    /// [`Warden::token`], waiting at most `wait` on another caller's refresh.
    pub fn token_within(&self, id: &str, min_ttl: Duration, wait: Duration) -> Result<Grant> {
        let id = checked(id)?;
        let need = Need::Token {
            min_ttl_ms: clock::millis(min_ttl),
        };
        // Served from memory when the row read lately is still the row
        // (see `Rows`) and the state machine, on it and the current clock,
        // says serve; anything else takes the ordinary path.
        let rows = &self.core.rows;
        if let Some(stamp) = rows.stamp(&self.core.store) {
            let policy = &self.core.config.policy;
            let served = rows.with(stamp, id, |row| {
                match state::decide(&row.status, need, self.now(), policy) {
                    Decision::Serve => Some(Grant::from_row(row)),
                    _ => None,
                }
            });
            if let Some(Some(grant)) = served {
                return grant;
            }
        }
        Grant::from_row(&self.core.obtain(id, need, wait)?.0)
    }

    /// The stored token of `id` if it can be served as it is — valid for at
    /// least `min_ttl`, not due for a refresh, no refresh in flight — else
    /// `None`: then [`Warden::token`] does what it takes (refresh, wait).
    /// Reads one row and writes nothing: what a one-shot `tokenwarden
    /// token` tries before it sets up what a refresh needs.
    pub fn stored_token(&self, id: &str, min_ttl: Duration) -> Result<Option<Grant>> {
        let id = checked(id)?;
        let need = Need::Token {
            min_ttl_ms: clock::millis(min_ttl),
        };
        let core = &self.core;
        let row = core
            .read(id)?
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        core.rows.arm();
        match state::decide(&row.status, need, core.clock.now(), &core.config.policy) {
            Decision::Serve => Grant::from_row(&row).map(Some),
            _ => Ok(None),
        }
    }

    /// Whether [`Warden::token`] would answer `id` from memory right now: the
    /// row it keeps is still the row, and serves. For tests and diagnostics.
    #[doc(hidden)]
    pub fn token_cached(&self, id: &str) -> bool {
        let rows = &self.core.rows;
        let need = Need::Token { min_ttl_ms: 0 };
        let policy = &self.core.config.policy;
        rows.stamp(&self.core.store).is_some_and(|stamp| {
            rows.with(stamp, id, |row| {
                state::decide(&row.status, need, self.now(), policy) == Decision::Serve
            }) == Some(true)
        })
    }

    /// Records that upstream answered 401 for `token`, and returns a token
    /// that is not it: refreshed if `token` was current, else the current one.
    pub fn reject(&self, id: &str, token: &str) -> Result<Grant> {
        self.reject_within(id, token, self.core.config.wait)
    }

    /// [`Warden::reject`], waiting at most `wait` on the refresh.
    pub fn reject_within(&self, id: &str, token: &str, wait: Duration) -> Result<Grant> {
        let id = checked(id)?;
        self.record_reject(id, token)?;
        self.token_within(id, Duration::ZERO, wait)
    }

    /// Records that upstream refused `token` of credential `id` (a no-op
    /// if it is no longer the current token); [`Error::Dead`] if the
    /// credential is dead.
    fn record_reject(&self, id: &str, token: &str) -> Result<()> {
        let store = &self.core.store;
        loop {
            let row = store
                .get(id)?
                .ok_or_else(|| Error::NotFound(id.to_owned()))?;
            let is_current = row
                .access_token
                .as_ref()
                .is_some_and(|t| t.expose() == token);
            let now = self.now();
            let event = Event::Reject { is_current };
            match state::apply(&row.status, &event, now, &self.core.config.policy) {
                Ok(t) => {
                    // Never taken from an import again: remembered before
                    // the rejection is recorded, and a reject that cannot
                    // remember it fails (the caller is told, and nothing
                    // says rejected), so no rejection stands without it —
                    // a delete + re-import of an old file cannot bring the
                    // token back, whatever kills this process between the
                    // two writes. (Idempotent: a retry writes nothing.)
                    store.remember_rejected(id, token, now.wall_ms)?;
                    let actor = clock::actor(&self.core.config.actor);
                    if store
                        .apply(id, &t, Write::STATE_ONLY, &actor, now.wall_ms)?
                        .is_some()
                    {
                        log::info!("{id}: access token rejected upstream; {}", t.reason);
                        break;
                    }
                    // Lost a race with another writer: look again.
                }
                Err(Refusal::Dead) => {
                    return Err(Error::Dead {
                        id: id.to_owned(),
                        provider: row.provider.kind,
                        reason: row.status.dead_reason.unwrap_or_else(|| "dead".into()),
                    })
                }
                // Already rotated, or already recorded: just get a good token.
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// The token of the best member of `pool` right now (see
    /// [`crate::pool`]): never a dead or cooling-down member (a cooldown
    /// covers every login of the account), nor a rejected token, nor one
    /// backing off without a usable token; a rejected member or one
    /// refreshing without a usable token only when nothing else is
    /// servable, refreshed or waited for first; most
    /// quota left, then least recently handed out. With `sticky`, the
    /// member this key got last time while it stays usable. The grant
    /// names the member (`credential_id`, `account_id`). The member's token
    /// comes through [`Warden::token_within`], so a member that needs a
    /// refresh is refreshed once, whoever asks; a member that turns out
    /// dead or unavailable meanwhile — or, served only after a refresh,
    /// cooling down by the cooldowns as committed then — is passed over
    /// for the next best, within the call.
    pub fn pool_token(&self, pool: &str, min_ttl: Duration, sticky: Option<&str>) -> Result<Grant> {
        self.pool_token_within(pool, min_ttl, sticky, self.core.config.wait)
    }

    /// [`Warden::pool_token`], waiting at most `wait` on a member's refresh.
    pub fn pool_token_within(
        &self,
        pool: &str,
        min_ttl: Duration,
        sticky: Option<&str>,
        wait: Duration,
    ) -> Result<Grant> {
        crate::credential::validate_pool_name(pool).map_err(Error::BadInput)?;
        let store = &self.core.store;
        let metrics = &self.core.metrics;
        let min_ttl_ms = clock::millis(min_ttl);
        let mut tried: Vec<String> = Vec::new();
        loop {
            let read = store.pool(pool, sticky)?;
            let now = self.now();
            let cooldowns = account_cooldowns(&read.members);
            let members: Vec<crate::pool::Member<'_>> = read
                .members
                .iter()
                .zip(&cooldowns)
                .map(|(m, &cooldown_until_ms)| crate::pool::Member {
                    credential_id: &m.credential.id,
                    account_id: m.credential.claims.account_id.as_deref(),
                    status: &m.credential.status,
                    cooldown_until_ms,
                    standing: crate::pool::standing(
                        m.quota.as_ref().and_then(|q| q.quota.as_ref()),
                        now.wall_ms,
                    ),
                    last_served_ms: m.last_served_ms,
                })
                .collect();
            let exclude: Vec<&str> = tried.iter().map(String::as_str).collect();
            let policy = &self.core.config.policy;
            let choice = match crate::pool::pick(
                &members,
                &exclude,
                read.sticky.as_deref(),
                min_ttl_ms,
                now,
                policy,
            ) {
                crate::pool::Pick::Chosen(c) => c,
                crate::pool::Pick::Empty if tried.is_empty() => {
                    // No series: any caller may name any pool, and a
                    // series per made-up name would grow without bound.
                    // Only pools with members are counted.
                    return Err(Error::EmptyPool(pool.to_owned()));
                }
                crate::pool::Pick::Empty => {
                    metrics.pool_pick(pool, "unavailable");
                    return Err(Error::PoolUnavailable {
                        pool: pool.to_owned(),
                        members: format!("{}: unavailable when tried", tried.join(", ")),
                        retry_after_s: Some(1),
                    });
                }
                crate::pool::Pick::NoneUsable { unfit, retry_at_ms } => {
                    metrics.pool_pick(pool, "unavailable");
                    let members = unfit
                        .iter()
                        .map(|(id, why)| format!("{id}: {}", why.as_str()))
                        .chain(
                            tried
                                .iter()
                                .map(|id| format!("{id}: unavailable when tried")),
                        )
                        .collect::<Vec<_>>()
                        .join(", ");
                    let retry_after_s = retry_at_ms
                        .map(|at| ((at - now.wall_ms).max(1) as u64).div_ceil(1000).max(1));
                    return Err(Error::PoolUnavailable {
                        pool: pool.to_owned(),
                        members,
                        retry_after_s,
                    });
                }
            };
            let id = choice.credential_id;
            // Served as read, or only after a refresh (ours or another's)?
            // Only the latter leaves time for a cooldown to be committed
            // between the pick and the hand-out.
            let as_read = members.iter().any(|m| {
                m.credential_id == id
                    && state::decide(m.status, Need::Token { min_ttl_ms }, now, policy)
                        == Decision::Serve
            });
            match self.token_within(&id, min_ttl, wait) {
                Ok(_) if !as_read && self.cooling_now(pool, &id)? => {
                    // Cooled down while it refreshed: the next best.
                    metrics.pool_pick(pool, "skipped");
                    tried.push(id);
                }
                Ok(grant) => {
                    // Only spreads load: losing it is not worth an error.
                    if let Err(e) = store.pool_served(pool, &id, sticky, clock::now_ms()) {
                        log::warn!("pool {pool}: could not record serving {id}: {e}");
                    }
                    metrics.pool_pick(pool, "served");
                    return Ok(grant);
                }
                // Changed since the pick (died, backing off, deleted): the
                // next best, within this call.
                Err(Error::Dead { .. } | Error::Unavailable { .. } | Error::NotFound(_)) => {
                    metrics.pool_pick(pool, "skipped");
                    tried.push(id);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether credential `id`'s current access token is `token`.
    fn holds(&self, id: &str, token: &str) -> Result<bool> {
        Ok(self.core.store.get(id)?.is_some_and(|row| {
            row.access_token
                .as_ref()
                .is_some_and(|t| t.expose() == token)
        }))
    }

    /// The member of `pool` whose current access token is `token`, if any
    /// (one row read per member: only for a reject that named the wrong
    /// member or a token already replaced).
    fn pool_holder(&self, pool: &str, token: &str) -> Result<Option<String>> {
        for m in self.core.store.pool(pool, None)?.members {
            if self.holds(&m.credential.id, token)? {
                return Ok(Some(m.credential.id));
            }
        }
        Ok(None)
    }

    /// Whether member `id` of `pool` is cooling down now, by the cooldowns
    /// as committed (its own or another login's of its account).
    fn cooling_now(&self, pool: &str, id: &str) -> Result<bool> {
        let read = self.core.store.pool(pool, None)?;
        let now_ms = clock::now_ms();
        Ok(read
            .members
            .iter()
            .zip(account_cooldowns(&read.members))
            .any(|(m, until)| m.credential.id == id && until.is_some_and(|u| u > now_ms)))
    }

    /// A reject through a pool: records that upstream refused `token` of
    /// member `id` (as [`Warden::reject`]), then answers with the pool's
    /// best member now — the rejected one only if its token had already
    /// been replaced. One call, so the caller can retry its request at once.
    pub fn pool_reject_within(
        &self,
        pool: &str,
        id: &str,
        token: &str,
        sticky: Option<&str>,
        wait: Duration,
    ) -> Result<Grant> {
        let id = checked(id)?;
        crate::credential::validate_pool_name(pool).map_err(Error::BadInput)?;
        // The caller may name the wrong member: the one whose current
        // token was refused is the one rejected, so that token is never
        // the answer.
        let id = match self.holds(id, token)? {
            true => id.to_owned(),
            false => self
                .pool_holder(pool, token)?
                .unwrap_or_else(|| id.to_owned()),
        };
        match self.record_reject(&id, token) {
            // A dead member is passed over by the pick anyway.
            Ok(()) | Err(Error::Dead { .. }) => {}
            Err(e) => return Err(e),
        }
        self.pool_token_within(pool, Duration::ZERO, sticky, wait)
    }

    /// Refreshes now even if the token is valid (a refresh that someone
    /// else finishes meanwhile counts); `force` also retries a dead
    /// credential and ignores the backoff.
    pub fn refresh(&self, id: &str, force: bool) -> Result<Grant> {
        self.refresh_within(id, force, self.core.config.wait)
    }

    /// [`Warden::refresh`], waiting at most `wait` on another caller's refresh.
    pub fn refresh_within(&self, id: &str, force: bool, wait: Duration) -> Result<Grant> {
        let need = Need::Refresh {
            since_ms: clock::now_ms(),
            force,
        };
        Grant::from_row(&self.core.obtain(checked(id)?, need, wait)?.0)
    }

    /// Brings a credential to a state that satisfies `need` (the sweep's and
    /// background refresher's entry point), waiting at most `wait` on another
    /// caller's refresh; says whether this call refreshed it.
    pub fn ensure(&self, id: &str, need: Need, wait: Duration) -> Result<(Credential, Via)> {
        self.core.obtain(checked(id)?, need, wait)
    }

    /// [`Warden::ensure`], sending the refresh request (each attempt) only
    /// with one of `slots` taken: the sweep's limit on requests in flight,
    /// shared by more threads than it has slots (see [`RequestSlots`]).
    pub fn ensure_with_slots(
        &self,
        id: &str,
        need: Need,
        wait: Duration,
        slots: &RequestSlots,
    ) -> Result<(Credential, Via)> {
        self.core.obtain_with(checked(id)?, need, wait, Some(slots))
    }

    /// Stores credentials; an existing id is an error unless `replace`. A
    /// replace waits up to the configured `wait` for a refresh in flight
    /// (see [`Warden::import_within`]).
    pub fn import(&self, creds: &[NewCredential], replace: bool) -> Result<Vec<Credential>> {
        self.import_within(creds, replace, self.core.config.wait)
    }

    /// Stores credentials, each in its own transaction, in order.
    ///
    /// A refresh token that another id holds, or that was already spent (a
    /// refresh rotated it away, or an import replaced it), is refused
    /// ([`Error::TokenHeldElsewhere`], [`Error::SpentToken`]). An existing
    /// id is [`Error::Exists`] unless `replace`; a replace is a
    /// compare-and-swap on the version read (see `Backend::replace` in the store), made
    /// only while no refresh lease is live: it waits up to `wait` for the
    /// refresh in flight to end, then refuses with
    /// [`Error::RefreshInProgress`].
    pub fn import_within(
        &self,
        creds: &[NewCredential],
        replace: bool,
        wait: Duration,
    ) -> Result<Vec<Credential>> {
        creds
            .iter()
            .map(|c| self.import_one(c, replace, wait))
            .collect()
    }

    /// One credential of [`Warden::import_within`]: inserted, or with
    /// `replace` the existing row replaced once no lease on it is live; the
    /// waiters of this process are woken to re-read it.
    pub(crate) fn import_one(
        &self,
        c: &NewCredential,
        replace: bool,
        wait: Duration,
    ) -> Result<Credential> {
        let row = self.import_row(c, replace, wait)?;
        self.core.signals.notify(&c.id);
        Ok(row)
    }

    /// Inserts sign-in `c` unless a stored credential `taken` accepts (see
    /// `Backend::insert_unless`): the look and the insert are one write
    /// transaction. The waiters of this process are woken on an insert.
    pub(crate) fn insert_login(
        &self,
        c: &NewCredential,
        taken: &dyn Fn(&Credential) -> bool,
    ) -> Result<std::result::Result<Credential, Credential>> {
        let id = checked(&c.id)?;
        let actor = clock::actor(&self.core.config.actor);
        let out = self
            .core
            .store
            .insert_unless(c, taken, &actor, clock::now_ms())?;
        if out.is_ok() {
            self.core.signals.notify(id);
        }
        Ok(out)
    }

    /// Makes `row` (just replaced by sign-in `c`, whose refresh token it
    /// holds) serve the sign-in's tokens: a server that answers a login
    /// with the refresh token it already issued leaves the replace with
    /// nothing to change (the same refresh token keeps its state, see
    /// `Backend::replace`), but the sign-in proved that token good and
    /// brought a fresh access token. A compare-and-swap on `row`'s version:
    /// `None` when another writer got there first (a refresh claimed the
    /// live credential meanwhile: its own tokens will do).
    pub(crate) fn take_login_tokens(
        &self,
        row: &Credential,
        c: &NewCredential,
    ) -> Result<Option<Credential>> {
        let Some(access_token) = c.access_token.clone() else {
            return Ok(None);
        };
        let now = clock::now_ms();
        let tokens = crate::provider::Tokens {
            access_token,
            refresh_token: c.refresh_token.clone(),
            id_token: c.id_token.clone(),
            // No lifetime said: expiring now, so the next use refreshes.
            expires_at_ms: c.expires_at_ms.unwrap_or(now),
            claims: c.claims.clone(),
        };
        let t = state::Transition {
            guard: state::Guard::Version(row.status.version),
            from: row.status.state,
            to: state::State::Valid,
            resume: None,
            lease: None,
            failures: 0,
            next_attempt_at_ms: None,
            dead_reason: None,
            reason: "signed in again".into(),
        };
        let write = Write {
            tokens: Some(&tokens),
            error: crate::store::ErrorUpdate::Clear,
            notify: None,
        };
        let actor = clock::actor(&self.core.config.actor);
        let Some(new) = self.core.store.apply(&row.id, &t, write, &actor, now)? else {
            return Ok(None);
        };
        if row.status.state == state::State::Dead {
            // As in an import's revival: its own transaction; a crash right
            // here loses this one notice, never the sign-in.
            let note = crate::notify::on_revived(row, new.status.version, now);
            if let Err(e) = self.core.store.insert_notice(&note) {
                log::warn!(
                    "{}: could not write the recovered notification: {e}",
                    row.id
                );
            }
        }
        self.core.signals.notify(&row.id);
        Ok(Some(new))
    }

    fn import_row(&self, c: &NewCredential, replace: bool, wait: Duration) -> Result<Credential> {
        let id = checked(&c.id)?;
        let store = &self.core.store;
        let actor = clock::actor(&self.core.config.actor);
        // On the refresher's clock, like the waits on it.
        let deadline = self.core.clock.instant() + wait;
        loop {
            let current = match replace {
                true => self.without_live_lease(id, deadline)?,
                false => None,
            };
            let now = clock::now_ms();
            let Some(row) = current else {
                match store.insert(c, &actor, now) {
                    // Imported by someone else meanwhile: replace that.
                    Err(Error::Exists(_)) if replace => continue,
                    other => return other,
                }
            };
            if let Some(new) = store.replace(c, row.status.version, &actor, now)? {
                if row.status.state == state::State::Dead && new.status.state != state::State::Dead
                {
                    // Its own transaction (the replace takes none): a crash
                    // right here loses this one notice, never the import.
                    let note = crate::notify::on_revived(&row, new.status.version, now);
                    if let Err(e) = store.insert_notice(&note) {
                        log::warn!("{id}: could not write the recovered notification: {e}");
                    }
                }
                return Ok(new);
            }
            // Lost a race with another writer: look again.
        }
    }

    /// The row of `id` (without secrets) once no refresh lease on it is
    /// live, for an operator's change (replace, delete): while one is, its
    /// owner may be sending the refresh token right now, and its commit
    /// must land first. Waits until `deadline` (woken by the owner's commit
    /// or a poll of the version, and at least every [`REPLACE_RECHECK`] to
    /// see a crashed owner's lease run out), then refuses with
    /// [`Error::RefreshInProgress`]. `None` if there is no such credential.
    fn without_live_lease(&self, id: &str, deadline: Instant) -> Result<Option<Credential>> {
        loop {
            let Some(row) = self.core.store.get_without_secrets(id)? else {
                return Ok(None);
            };
            let need = Need::Token { min_ttl_ms: 0 };
            let now = self.core.clock.now();
            let Decision::Wait { lease_left_ms, .. } =
                state::decide(&row.status, need, now, &self.core.config.policy)
            else {
                return Ok(Some(row));
            };
            let left = deadline.saturating_duration_since(self.core.clock.instant());
            if left.is_zero() {
                let lease_s = self.core.config.lease_ttl.as_secs().max(1);
                let retry_after_s = (lease_left_ms.max(1) as u64)
                    .div_ceil(1000)
                    .clamp(1, lease_s);
                return Err(Error::RefreshInProgress {
                    id: id.to_owned(),
                    retry_after_s,
                });
            }
            self.core
                .wait_for_change(id, row.status.version, left.min(REPLACE_RECHECK), POLL)?;
        }
    }

    /// One credential.
    pub fn get(&self, id: &str) -> Result<Credential> {
        let row = self.core.read(checked(id)?);
        self.core.rows.arm();
        row?.ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    /// Every credential, by id.
    pub fn list(&self) -> Result<Vec<Credential>> {
        self.core.store.list()
    }

    /// Every credential, by id, without its secrets (see
    /// `Backend::list_without_secrets`): for listings and schedulers.
    pub fn list_without_secrets(&self) -> Result<Vec<Credential>> {
        self.core.store.list_without_secrets()
    }

    /// The database's mark of its commit history: equal stamps taken at two
    /// instants prove that nothing was committed in between, by any
    /// process (`None` when it cannot be had). For the background
    /// scheduler, which need not read the table again while nothing changed.
    pub(crate) fn stamp(&self) -> Option<crate::Stamp> {
        self.core.store.stamp()
    }

    /// Every credential without its secrets, by id, handed to `f` one at a
    /// time as it is read (the sweep's and the background scheduler's
    /// scan): the memory it takes does not grow with the table.
    pub fn each_without_secrets(&self, mut f: impl FnMut(Credential)) -> Result<()> {
        self.core.store.each_without_secrets(&mut f)
    }

    /// Deletes a credential; its events stay. Waits up to the configured
    /// `wait` for a refresh in flight (see [`Warden::delete_within`]).
    pub fn delete(&self, id: &str) -> Result<()> {
        self.delete_within(id, self.core.config.wait)
    }

    /// Deletes a credential once no refresh lease on it is live (waiting at
    /// most `wait`, then [`Error::RefreshInProgress`]): deleting under a
    /// live lease would discard the owner's rotated tokens, and an import
    /// of the same file would then send the spent token again. A row left
    /// `refreshing` by a lease that ran out has its refresh token recorded
    /// as spent (it may have reached upstream).
    pub fn delete_within(&self, id: &str, wait: Duration) -> Result<()> {
        let id = checked(id)?;
        let actor = clock::actor(&self.core.config.actor);
        // On the refresher's clock, like the waits on it.
        let deadline = self.core.clock.instant() + wait;
        loop {
            let row = self
                .without_live_lease(id, deadline)?
                .ok_or_else(|| Error::NotFound(id.to_owned()))?;
            let version = row.status.version;
            match self
                .core
                .store
                .delete(id, version, &actor, clock::now_ms())?
            {
                Deleted::Done => {
                    self.core.signals.notify(id);
                    return Ok(());
                }
                Deleted::NotFound => return Err(Error::NotFound(id.to_owned())),
                // Changed meanwhile (a claim, a refresh): look again.
                Deleted::Changed => {}
            }
        }
    }

    /// A credential's events (the newest `limit`), oldest first. Works for
    /// deleted credentials too; an id that never existed is `NotFound`.
    pub fn events(&self, id: &str, limit: Option<u32>) -> Result<Vec<EventRow>> {
        self.events_page(id, None, limit).map(|(events, _)| events)
    }

    /// One page of a credential's events, oldest first: with `after` (a
    /// sequence number, 0 for the start), the first `limit` that follow it,
    /// and the `after` of the next page when more follow; without, the
    /// newest `limit` (the tail: no next page). Works for deleted
    /// credentials too; an id that never existed is `NotFound`.
    pub fn events_page(
        &self,
        id: &str,
        after: Option<i64>,
        limit: Option<u32>,
    ) -> Result<(Vec<EventRow>, Option<i64>)> {
        let store = &self.core.store;
        let id = checked(id)?;
        // One more than asked, to learn whether a next page exists.
        let probe = limit
            .filter(|_| after.is_some())
            .map(|n| n.saturating_add(1));
        let mut events = store.events(id, after, probe.or(limit))?;
        let next = match (probe, limit) {
            (Some(p), Some(n)) if events.len() as u64 >= u64::from(p) => {
                events.truncate(n as usize);
                events.last().map(|e| e.seq)
            }
            _ => None,
        };
        if events.is_empty()
            && store.get(id)?.is_none()
            && store.events(id, None, Some(1))?.is_empty()
        {
            return Err(Error::NotFound(id.to_owned()));
        }
        Ok((events, next))
    }
}
