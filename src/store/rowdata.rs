//! A credential row as every backend stores it, minus the SQL: the column
//! list, decoding a row into a [`Credential`] (opening its sealed columns,
//! refusing values this build does not know), and the column values of a
//! guarded transition write. Each backend reads its own rows through
//! [`Cells`] and binds [`Update`] in its own dialect.

use crate::credential::{Claims, Credential, LastError, ProviderConfig};
use crate::provider::{ClientAuth, Encoding, ProviderKind};
use crate::secret::Secret;
use crate::state::{Guard, Lease, LeaseTime, State, Status, Transition};
use crate::store::codec::{self, Codec};
use crate::store::{ErrorUpdate, Write};

/// The columns of a credential row, in the order [`decode`] reads them.
pub(crate) const COLUMNS: &str =
    "id, provider, state, version, access_token, refresh_token, id_token, \
    expires_at_ms, token_url, client_id, client_secret, scope, encoding, client_auth, api_key, \
    account_id, email, plan_type, user_id, organization_id, lease_owner, lease_id, \
    lease_until_ms, resume_state, failures, next_attempt_at_ms, dead_reason, last_error_code, \
    last_error_message, last_error_at_ms, last_refresh_ms, created_ms, updated_ms, lease_clock, \
    failing_since_ms";

/// Whether a row is read with its secret columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Secrets {
    Keep,
    /// Left out (the refresh token reads as empty); only whether there is
    /// an access token is kept, in the status.
    Drop,
}

/// One row of a backend's result, read by column index (of [`COLUMNS`]).
pub(crate) trait Cells {
    /// The backend's error.
    type Error;
    /// A text column.
    fn text(&self, i: usize) -> Result<Option<String>, Self::Error>;
    /// An integer column.
    fn int(&self, i: usize) -> Result<Option<i64>, Self::Error>;
    /// The error of column `i` holding a value that cannot be used.
    fn bad(&self, i: usize, why: String) -> Self::Error;
}

/// Decodes a row read with [`COLUMNS`].
pub(crate) fn decode<R: Cells>(
    r: &R,
    codec: &Codec,
    secrets: Secrets,
) -> Result<Credential, R::Error> {
    let required_text = |i: usize| r.text(i)?.ok_or_else(|| r.bad(i, "NULL".into()));
    let parsed = |i: usize, parse: &dyn Fn(&str) -> bool| -> Result<Option<String>, R::Error> {
        match r.text(i)? {
            Some(s) if !parse(&s) => Err(r.bad(i, format!("unknown value {s:?}"))),
            other => Ok(other),
        }
    };
    let state_at = |i: usize| -> Result<Option<State>, R::Error> {
        Ok(parsed(i, &|s| State::parse(s).is_some())?.and_then(|s| State::parse(&s)))
    };
    let id = required_text(0)?;
    let keep = secrets == Secrets::Keep;
    let secret = |i: usize| -> Result<Option<Secret>, R::Error> {
        r.text(i)?
            .map(|v| {
                codec
                    .open(&id, codec::column(i), v)
                    .map_err(|e| r.bad(i, e))
            })
            .transpose()
    };
    let secret_kept = |i: usize| if keep { secret(i) } else { Ok(None) };
    let access_token = secret(4)?;
    let has_access_token = access_token.as_ref().is_some_and(|t| !t.is_empty());
    let access_token = if keep { access_token } else { None };
    let lease = match (r.text(20)?, r.text(21)?) {
        (Some(owner), Some(lease_id)) => Some(Lease {
            owner,
            id: lease_id,
            // No clock (a lease of schema version 1): judged expired.
            until: LeaseTime {
                clock: r.int(33)?.unwrap_or(0),
                ms: r.int(22)?.unwrap_or(0),
            },
        }),
        _ => None,
    };
    let last_error = match r.text(27)? {
        Some(code) => Some(LastError {
            code,
            message: r.text(28)?.unwrap_or_default(),
            at_ms: r.int(29)?.unwrap_or(0),
        }),
        None => None,
    };
    let kind = required_text(1)?;
    let kind =
        ProviderKind::parse(&kind).ok_or_else(|| r.bad(1, format!("unknown value {kind:?}")))?;
    let encoding = parsed(12, &|s| Encoding::parse(s).is_some())?.and_then(|s| Encoding::parse(&s));
    let client_auth =
        parsed(13, &|s| ClientAuth::parse(s).is_some())?.and_then(|s| ClientAuth::parse(&s));
    let failures = r.int(24)?.unwrap_or(0);
    let failures =
        u32::try_from(failures).map_err(|_| r.bad(24, format!("out of range: {failures}")))?;
    Ok(Credential {
        id: id.clone(),
        provider: ProviderConfig {
            kind,
            token_url: r.text(8)?,
            client_id: r.text(9)?,
            client_secret: secret_kept(10)?,
            scope: r.text(11)?,
            encoding,
            client_auth,
        },
        status: Status {
            state: state_at(2)?.ok_or_else(|| r.bad(2, "NULL".into()))?,
            version: r.int(3)?.ok_or_else(|| r.bad(3, "NULL".into()))?,
            expires_at_ms: r.int(7)?,
            has_access_token,
            lease,
            resume: state_at(23)?,
            failures,
            next_attempt_at_ms: r.int(25)?,
            last_refresh_ms: r.int(30)?,
            dead_reason: r.text(26)?,
        },
        access_token,
        refresh_token: match secrets {
            Secrets::Keep => secret(5)?.ok_or_else(|| r.bad(5, "NULL".into()))?,
            Secrets::Drop => Secret::new(String::new()),
        },
        id_token: secret_kept(6)?,
        claims: Claims {
            account_id: r.text(15)?,
            email: r.text(16)?,
            plan_type: r.text(17)?,
            user_id: r.text(18)?,
            organization_id: r.text(19)?,
        },
        last_error,
        api_key: secret_kept(14)?,
        created_ms: r.int(31)?.ok_or_else(|| r.bad(31, "NULL".into()))?,
        updated_ms: r.int(32)?.ok_or_else(|| r.bad(32, "NULL".into()))?,
        failing_since_ms: r.int(34)?,
    })
}

/// The column values of one guarded transition write
/// ([`Backend::apply`](super::Backend::apply)): the row's new state, its
/// lease, failures and backoff, the new tokens (sealed) and claims when the
/// write carries them (`None`: keep the stored value), what happens to the
/// last error, and the guard — the version read, and the lease id for an
/// owner's write.
#[derive(Debug)]
pub(crate) struct Update<'a> {
    pub state: &'static str,
    pub resume: Option<&'static str>,
    pub lease_owner: Option<&'a str>,
    pub lease_id: Option<&'a str>,
    pub lease_until_ms: Option<i64>,
    pub lease_clock: Option<i64>,
    pub failures: i64,
    pub next_attempt_at_ms: Option<i64>,
    pub dead_reason: Option<&'a str>,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    pub expires_at_ms: Option<i64>,
    pub last_refresh_ms: Option<i64>,
    pub account_id: Option<&'a str>,
    pub email: Option<&'a str>,
    pub plan_type: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub organization_id: Option<&'a str>,
    /// Whether `last_error_*` are written (then with the three below).
    pub set_error: bool,
    pub error_code: Option<&'a str>,
    pub error_message: Option<&'a str>,
    pub error_at_ms: Option<i64>,
    /// Only if the row is still at this version.
    pub guard_version: Option<i64>,
    /// Only if the row still holds this lease.
    pub guard_lease: Option<&'a str>,
}

impl<'a> Update<'a> {
    /// The values of writing `t` with `write` to credential `id` at `now_ms`.
    pub(crate) fn of(
        id: &str,
        t: &'a Transition,
        write: Write<'a>,
        codec: &Codec,
        now_ms: i64,
    ) -> Update<'a> {
        let (guard_version, guard_lease) = match &t.guard {
            Guard::Version(v) => (Some(*v), None),
            Guard::Lease { id, version } => (*version, Some(id.as_str())),
        };
        let tok = write.tokens;
        let seal = |col: &str, s: &Secret| codec.seal(id, col, s.expose());
        let claims = tok.map(|t| &t.claims);
        let (set_error, error) = match write.error {
            ErrorUpdate::Keep => (false, None),
            ErrorUpdate::Clear => (true, None),
            ErrorUpdate::Set(e) => (true, Some(e)),
        };
        let lease = t.lease.as_ref();
        Update {
            state: t.to.as_str(),
            resume: t.resume.map(State::as_str),
            lease_owner: lease.map(|l| l.owner.as_str()),
            lease_id: lease.map(|l| l.id.as_str()),
            lease_until_ms: lease.map(|l| l.until.ms),
            lease_clock: lease.map(|l| l.until.clock),
            failures: i64::from(t.failures),
            next_attempt_at_ms: t.next_attempt_at_ms,
            dead_reason: t.dead_reason.as_deref(),
            access_token: tok.map(|t| seal("access_token", &t.access_token)),
            refresh_token: tok.map(|t| seal("refresh_token", &t.refresh_token)),
            id_token: tok
                .and_then(|t| t.id_token.as_ref())
                .map(|s| seal("id_token", s)),
            expires_at_ms: tok.map(|t| t.expires_at_ms),
            last_refresh_ms: tok.map(|_| now_ms),
            account_id: claims.and_then(|c| c.account_id.as_deref()),
            email: claims.and_then(|c| c.email.as_deref()),
            plan_type: claims.and_then(|c| c.plan_type.as_deref()),
            user_id: claims.and_then(|c| c.user_id.as_deref()),
            organization_id: claims.and_then(|c| c.organization_id.as_deref()),
            set_error,
            error_code: error.map(|e| e.code.as_str()),
            error_message: error.map(|e| e.message.as_str()),
            error_at_ms: error.map(|e| e.at_ms),
            guard_version,
            guard_lease,
        }
    }
}
