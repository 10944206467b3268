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
}

impl Write<'_> {
    /// A transition that writes nothing but the state.
    pub const STATE_ONLY: Write<'static> = Write {
        tokens: None,
        error: ErrorUpdate::Keep,
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
}
