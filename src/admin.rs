//! What an operator's tools ask of a [`Warden`] beyond tokens: listings and
//! summaries with their newest quota, quota snapshots, facade handles, and
//! sealing or re-keying a database. The CLI and the HTTP API read and write
//! only through these methods and those of `warden.rs`, never the store
//! itself (architecture invariant A3), so the list and show code exists
//! once.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::clock;
use crate::credential::Credential;
use crate::error::Result;
use crate::seal::Sealer;
use crate::state::{Now, Policy, State};
use crate::store::{self, HandleRow, QuotaRow};
use crate::view::Summary;
use crate::warden::Warden;

/// Every credential as listed: its row without secrets and its newest
/// quota snapshot, with the instant and policy its effective state is
/// judged at. [`Listing::summaries`] is what `list` shows.
#[derive(Debug)]
pub struct Listing {
    credentials: Vec<Credential>,
    quotas: HashMap<String, QuotaRow>,
    now: Now,
    policy: Policy,
}

impl Listing {
    /// The credentials, by id, without their secrets.
    pub fn credentials(&self) -> &[Credential] {
        &self.credentials
    }

    /// The newest quota snapshot of `id`, if it has one.
    pub fn quota(&self, id: &str) -> Option<&QuotaRow> {
        self.quotas.get(id)
    }

    /// When the listing was read: effective states are judged at it.
    pub fn now(&self) -> Now {
        self.now
    }

    /// The policy effective states are judged by.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// One summary per credential, by id.
    pub fn summaries(&self) -> Vec<Summary<'_>> {
        self.credentials
            .iter()
            .map(|c| Summary::new(c, self.now, &self.policy).with_quota(self.quota(&c.id)))
            .collect()
    }
}

/// One credential as shown: its row and its newest quota snapshot, with the
/// instant and policy its effective state is judged at.
#[derive(Debug)]
pub struct Detail {
    credential: Credential,
    quota: Option<QuotaRow>,
    now: Now,
    policy: Policy,
}

impl Detail {
    /// What `show` shows (never a secret).
    pub fn summary(&self) -> Summary<'_> {
        Summary::new(&self.credential, self.now, &self.policy).with_quota(self.quota.as_ref())
    }
}

impl Warden {
    /// Every credential with its newest quota snapshot, read now (rows
    /// without secrets): for listings and the sweep's report.
    pub fn listing(&self) -> Result<Listing> {
        let credentials = self.list_without_secrets()?;
        let quotas = self.store().latest_quotas()?;
        Ok(Listing {
            credentials,
            quotas,
            now: clock::now(),
            policy: self.config().policy,
        })
    }

    /// The summary of every credential, by id, handed to `f` one at a
    /// time, so that no more than one decoded row (and no secret) is held
    /// at once: for answers written as they are read.
    pub fn each_summary(&self, mut f: impl FnMut(Summary<'_>)) -> Result<()> {
        let quotas = self.store().latest_quotas()?;
        let (now, policy) = (clock::now(), self.config().policy);
        self.store().each_without_secrets(&mut |c| {
            f(Summary::new(&c, now, &policy).with_quota(quotas.get(&c.id)));
        })
    }

    /// How many credentials are in each effective state now, for every
    /// state (read one row at a time, without secrets).
    pub fn count_by_state(&self) -> Result<[(&'static str, u64); State::ALL.len()]> {
        let (now, policy) = (clock::now(), self.config().policy);
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
        Ok(Detail {
            credential,
            quota,
            now: clock::now(),
            policy: self.config().policy,
        })
    }

    /// The newest quota snapshot of `id`, if any (not checked to exist).
    pub fn latest_quota(&self, id: &str) -> Result<Option<QuotaRow>> {
        self.store().latest_quota(id)
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
        self.store().revoke_handles(hash_prefix, now_ms)
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
}

fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
