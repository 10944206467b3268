//! The values that cross the store's boundary: what a write carries beside
//! its transition, and the rows of events, quota snapshots and handles.
//! Plain data, the same for every backend.

use crate::credential::LastError;
use crate::provider::usage::Quota;
use crate::provider::{ProviderKind, Tokens};

/// What a transition does to `last_error`.
#[derive(Debug, Clone, Copy)]
pub enum ErrorUpdate<'a> {
    /// Leave it as it is.
    Keep,
    /// Erase it (after a success).
    Clear,
    /// Record this failure.
    Set(&'a LastError),
}

/// Data written together with a transition, in the same UPDATE.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    /// New tokens and claims (a successful refresh).
    pub tokens: Option<&'a Tokens>,
    /// What happens to `last_error`.
    pub error: ErrorUpdate<'a>,
    /// A notification the change calls for (a death, a run of failures
    /// past the threshold, a recovery), written to the outbox in the same
    /// transaction, so a crash cannot lose it; ignored if its event id is
    /// already there.
    pub notify: Option<&'a Notice>,
}

impl Write<'_> {
    /// A transition that writes nothing but the state.
    pub const STATE_ONLY: Write<'static> = Write {
        tokens: None,
        error: ErrorUpdate::Keep,
        notify: None,
    };
}

/// One row of a credential's audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Global sequence number.
    pub seq: i64,
    /// The credential (which may since have been deleted).
    pub credential_id: String,
    /// When (unix ms).
    pub at_ms: i64,
    /// State before (`None` for an import).
    pub from: Option<String>,
    /// State after (`deleted` for a delete).
    pub to: String,
    /// Row version after the change.
    pub version: i64,
    /// Who made the change.
    pub actor: String,
    /// Why (never a secret).
    pub reason: String,
}

/// One quota snapshot, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaRow {
    /// The credential.
    pub credential_id: String,
    /// When it was fetched (unix ms).
    pub fetched_at_ms: i64,
    /// `ok`, or the failure's code.
    pub status: String,
    /// Upstream's HTTP status, when there was an answer.
    pub http_status: Option<u16>,
    /// The snapshot, when the fetch succeeded.
    pub quota: Option<Quota>,
    /// What went wrong, when it did not.
    pub error_message: Option<String>,
}

/// A facade handle, as stored (the handle itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleRow {
    /// SHA-256 of the handle, hex; its first 12 characters name it in lists.
    pub hash: String,
    /// The credential it stands for.
    pub credential_id: String,
    /// Who it was made for.
    pub label: String,
    /// When it was made (unix ms).
    pub created_ms: i64,
    /// When a client last presented it (unix ms).
    pub last_used_ms: Option<i64>,
    /// Fingerprint of the access token this client was last answered with.
    pub served_token: Option<String>,
    /// When it was revoked (unix ms).
    pub revoked_ms: Option<i64>,
}

/// What [`Backend::delete`](super::Backend::delete) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// Deleted (its events stay).
    Done,
    /// No such credential.
    NotFound,
    /// The row changed since the version given: nothing deleted.
    Changed,
}

/// A backend's mark of its commit history, from
/// [`Backend::stamp`](super::Backend::stamp): two equal stamps taken at two instants prove
/// that nothing was committed in between, by any process. Opaque; SQLite's
/// is its WAL-index header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp([u8; Stamp::LEN]);

impl Stamp {
    /// Bytes a stamp holds.
    pub(crate) const LEN: usize = 48;

    /// A stamp of these bytes.
    pub(crate) fn new(bytes: [u8; Stamp::LEN]) -> Stamp {
        Stamp(bytes)
    }
}

/// Which credentials a [`Backend::scan`](super::Backend::scan) reads, in id
/// order: those after the cursor `after` (exclusive), of `provider` if
/// given. The default reads them all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scan<'a> {
    /// Only ids greater than this one (the last id of the previous page).
    pub after: Option<&'a str>,
    /// Only this provider's credentials.
    pub provider: Option<ProviderKind>,
    /// Only the members of this pool.
    pub pool: Option<&'a str>,
}

// ---- pools, cooldowns, notifications (issue 15) ----

/// An account-level cooldown: no pool hands the credential out before
/// `until_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cooldown {
    /// The credential.
    pub credential_id: String,
    /// Until when (unix ms).
    pub until_ms: i64,
    /// Why (never a secret): the caller's words, or the exhausted window.
    pub reason: String,
    /// Who set it: [`CooldownSource`].
    pub source: CooldownSource,
    /// When it was set (unix ms).
    pub set_ms: i64,
    /// Who set it (as in event rows).
    pub actor: String,
}

/// Where a cooldown came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CooldownSource {
    /// An operator or a caller (`POST …/cooldown`, `tokenwarden cooldown`).
    Manual,
    /// A quota snapshot that showed an exhausted window.
    Quota,
}

impl CooldownSource {
    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            CooldownSource::Manual => "manual",
            CooldownSource::Quota => "quota",
        }
    }

    /// The source named `s`, if it is one.
    pub fn parse(s: &str) -> Option<CooldownSource> {
        match s {
            "manual" => Some(CooldownSource::Manual),
            "quota" => Some(CooldownSource::Quota),
            _ => None,
        }
    }
}

/// A change to a credential's cooldown, for [`Backend::cooldown`](super::Backend::cooldown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CooldownWrite<'a> {
    /// Set (or replace) the cooldown.
    Set {
        /// Until when (unix ms).
        until_ms: i64,
        /// Why.
        reason: &'a str,
        /// Who asked.
        source: CooldownSource,
    },
    /// Clear the cooldown if it was set at or before `set_before_ms` (a
    /// snapshot fetched at that time cannot speak for a later cooldown).
    Clear {
        /// Only a cooldown set no later than this (unix ms).
        set_before_ms: i64,
        /// Why (the event row's reason).
        reason: &'a str,
    },
}

/// A notification to write to the outbox. Built by `crate::notify`; the
/// store only keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Stable id: receivers deduplicate on it; writing one whose id is
    /// already in the outbox does nothing.
    pub event_id: String,
    /// `dead`, `reuse_detected`, `failing`, `quota_exhausted`,
    /// `quota_reset`, `recovered`.
    pub kind: String,
    /// The credential it is about.
    pub credential_id: Option<String>,
    /// The JSON body delivered (never a secret).
    pub payload: String,
    /// When it was made (unix ms).
    pub at_ms: i64,
}

/// One row of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRow {
    /// Sequence number (outbox order).
    pub seq: i64,
    /// The notice as written.
    pub notice: Notice,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// Not before this time (unix ms): backoff, or a deliverer's hold.
    pub next_attempt_ms: i64,
    /// When it was delivered (unix ms).
    pub delivered_ms: Option<i64>,
    /// When delivery was given up (unix ms).
    pub failed_ms: Option<i64>,
    /// The last attempt's error (never a secret).
    pub last_error: Option<String>,
}

/// What one delivery attempt of a notification came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery<'a> {
    /// Every target took it.
    Delivered,
    /// Failed; try again at `at_ms`.
    Retry {
        /// The next attempt (unix ms).
        at_ms: i64,
        /// What went wrong (never a secret).
        error: &'a str,
    },
    /// Failed, and the retry budget is spent.
    GiveUp {
        /// What went wrong (never a secret).
        error: &'a str,
    },
}

/// How many notifications are in each condition (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotificationCounts {
    /// Not delivered yet, still being tried.
    pub pending: u64,
    /// Delivered.
    pub delivered: u64,
    /// Given up on.
    pub failed: u64,
}

/// One member of a pool, as a pick needs it.
#[derive(Debug, Clone)]
pub struct PoolMember {
    /// The credential, without its secrets.
    pub credential: crate::credential::Credential,
    /// Its cooldown, if one is set (it may have run out).
    pub cooldown: Option<Cooldown>,
    /// Its newest quota snapshot.
    pub quota: Option<QuotaRow>,
    /// When this pool last handed it out (unix ms).
    pub last_served_ms: Option<i64>,
}

/// A pool as read for one pick.
#[derive(Debug, Clone, Default)]
pub struct PoolRead {
    /// Its members, by id.
    pub members: Vec<PoolMember>,
    /// The member last handed out for the sticky key asked about.
    pub sticky: Option<String>,
}
