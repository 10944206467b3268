//! How credentials, tokens and events look from outside: the JSON shapes of
//! DESIGN.md §5/§7, shared by the CLI's `--json` and the HTTP API. Nothing
//! here can hold a refresh token, id token or client secret.

use serde::Serialize;

use crate::credential::Credential;
use crate::provider::usage::{Credits, Window};
use crate::state::{Now, Policy};
use crate::warden::Grant;
use crate::EventRow;
use crate::{Cooldown, HandleRow, NotificationRow, QuotaRow};

/// Unix seconds, rounded down (an expiry is never overstated).
pub fn secs_floor(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// Unix seconds, rounded up (a "not before" is never understated).
pub fn secs_ceil(ms: i64) -> i64 {
    -(-ms).div_euclid(1000)
}

/// The answer to token, reject and refresh.
#[derive(Debug, Serialize)]
pub struct TokenResponse<'a> {
    /// The access token itself (the one secret shown, to the caller who asked).
    pub access_token: &'a str,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Expiry, unix seconds.
    pub expires_at: i64,
    /// Seconds left.
    pub expires_in: i64,
    /// Credential id.
    pub credential_id: &'a str,
    /// Upstream account id, when known.
    pub account_id: Option<&'a str>,
    /// Row version the token was read at.
    pub version: i64,
}

impl<'a> TokenResponse<'a> {
    /// The response for `grant` at `now_ms`.
    pub fn new(grant: &'a Grant, now_ms: i64) -> Self {
        TokenResponse {
            access_token: grant.access_token.expose(),
            token_type: "Bearer",
            expires_at: secs_floor(grant.expires_at_ms),
            // Both in whole seconds, so `expires_at - now == expires_in`.
            expires_in: (secs_floor(grant.expires_at_ms) - secs_floor(now_ms)).max(0),
            credential_id: &grant.credential_id,
            account_id: grant.account_id.as_deref(),
            version: grant.version,
        }
    }
}

/// The last error in a summary.
#[derive(Debug, Serialize)]
pub struct ErrorView<'a> {
    /// Machine-readable code.
    pub code: &'a str,
    /// What happened.
    pub message: &'a str,
    /// When, unix seconds.
    pub at: i64,
}

/// A credential as listed and shown: never a secret.
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    /// Credential id.
    pub id: &'a str,
    /// Provider name.
    pub provider: &'static str,
    /// Effective state (`expiring` derived from the clock).
    pub state: &'static str,
    /// Row version.
    pub version: i64,
    /// Access-token expiry, unix seconds.
    pub expires_at: Option<i64>,
    /// Upstream account id.
    pub account_id: Option<&'a str>,
    /// Account e-mail.
    pub email: Option<&'a str>,
    /// Plan (ChatGPT).
    pub plan_type: Option<&'a str>,
    /// Last successful refresh, unix seconds.
    pub last_refresh_at: Option<i64>,
    /// Consecutive failed refreshes.
    pub failures: u32,
    /// No automatic refresh before this, unix seconds.
    pub next_attempt_at: Option<i64>,
    /// The last failure.
    pub last_error: Option<ErrorView<'a>>,
    /// Why it is dead (the upstream code), if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<&'a str>,
    /// The command that signs a dead credential in again
    /// (`tokenwarden login PROVIDER --id ID`), if it is dead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relogin: Option<String>,
    /// The newest quota snapshot, briefly, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaBrief<'a>>,
    /// The pools it belongs to (absent when none).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub pools: &'a [String],
    /// Its cooldown, while one runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<CooldownView<'a>>,
}

/// A running cooldown: `{"until","reason","source","set_at"}`.
#[derive(Debug, Serialize)]
pub struct CooldownView<'a> {
    /// The credential.
    pub credential_id: &'a str,
    /// Its end, unix seconds (rounded up).
    pub until: i64,
    /// Why.
    pub reason: &'a str,
    /// `manual` or `quota`.
    pub source: &'static str,
    /// When it was set, unix seconds.
    pub set_at: i64,
}

impl<'a> CooldownView<'a> {
    /// The view of `c`.
    pub fn new(c: &'a Cooldown) -> Self {
        CooldownView {
            credential_id: &c.credential_id,
            until: secs_ceil(c.until_ms),
            reason: &c.reason,
            source: c.source.as_str(),
            set_at: secs_floor(c.set_ms),
        }
    }
}

/// One row of the outbox, as listed (`notifications`, `GET
/// /v1/notifications`): the delivered JSON is `payload`.
#[derive(Debug, Serialize)]
pub struct NotificationView<'a> {
    /// The stable event id.
    pub id: &'a str,
    /// Its kind.
    pub kind: &'a str,
    /// The credential, if it is about one.
    pub credential_id: Option<&'a str>,
    /// When it was written, unix seconds.
    pub created_at: i64,
    /// `pending`, `delivered` or `failed` (given up).
    pub status: &'static str,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When it was delivered, unix seconds.
    pub delivered_at: Option<i64>,
    /// The last attempt's error.
    pub last_error: Option<&'a str>,
    /// The body delivered (never a secret).
    pub payload: serde_json::Value,
}

/// `{"notifications":[…]}`.
#[derive(Debug, Serialize)]
pub struct NotificationList<'a> {
    /// Oldest first.
    pub notifications: Vec<NotificationView<'a>>,
}

impl<'a> NotificationList<'a> {
    /// The list of `rows`.
    pub fn new(rows: &'a [NotificationRow]) -> Self {
        let notifications = rows
            .iter()
            .map(|r| NotificationView {
                id: &r.notice.event_id,
                kind: &r.notice.kind,
                credential_id: r.notice.credential_id.as_deref(),
                created_at: secs_floor(r.notice.at_ms),
                status: match (r.delivered_ms, r.failed_ms) {
                    (Some(_), _) => "delivered",
                    (None, Some(_)) => "failed",
                    (None, None) => "pending",
                },
                attempts: r.attempts,
                delivered_at: r.delivered_ms.map(secs_floor),
                last_error: r.last_error.as_deref(),
                payload: serde_json::from_str(&r.notice.payload).unwrap_or_default(),
            })
            .collect();
        NotificationList { notifications }
    }
}

/// One window of a quota snapshot, briefly.
#[derive(Debug, Serialize)]
pub struct WindowBrief<'a> {
    /// Window name.
    pub name: &'a str,
    /// Percent used.
    pub used_percent: f64,
    /// Reset time, unix seconds.
    pub resets_at: Option<i64>,
}

/// A summary's quota line.
#[derive(Debug, Serialize)]
pub struct QuotaBrief<'a> {
    /// When it was fetched, unix seconds.
    pub fetched_at: i64,
    /// `ok` or the failure's code.
    pub status: &'a str,
    /// Windows of the last good snapshot.
    pub windows: Vec<WindowBrief<'a>>,
}

impl<'a> QuotaBrief<'a> {
    /// The brief form of `q`.
    pub fn new(q: &'a QuotaRow) -> Self {
        QuotaBrief {
            fetched_at: secs_floor(q.fetched_at_ms),
            status: &q.status,
            windows: q
                .quota
                .iter()
                .flat_map(|q| &q.windows)
                .map(|w| WindowBrief {
                    name: &w.name,
                    used_percent: w.used_percent,
                    resets_at: w.resets_at,
                })
                .collect(),
        }
    }

    /// `primary 42% (resets …), secondary 17% (…)`, or the failure.
    pub fn line(&self) -> String {
        if self.windows.is_empty() {
            return format!(
                "{} (fetched {})",
                self.status,
                crate::rfc3339::format(self.fetched_at * 1000)
            );
        }
        self.windows
            .iter()
            .map(|w| match w.resets_at {
                Some(r) => format!(
                    "{} {}% (resets {})",
                    w.name,
                    w.used_percent,
                    crate::rfc3339::format(r * 1000)
                ),
                None => format!("{} {}%", w.name, w.used_percent),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A full quota snapshot (`GET …/quota`, `tokenwarden quota ID --json`).
#[derive(Debug, Serialize)]
pub struct QuotaView<'a> {
    /// Credential id.
    pub credential_id: &'a str,
    /// When it was fetched, unix seconds.
    pub fetched_at: i64,
    /// `ok` or the failure's code.
    pub status: &'a str,
    /// Upstream's HTTP status.
    pub http_status: Option<u16>,
    /// Plan, if upstream said.
    pub plan_type: Option<&'a str>,
    /// Whether a limit is reached.
    pub limit_reached: Option<bool>,
    /// The windows.
    pub windows: &'a [Window],
    /// Credits, if upstream said.
    pub credits: Option<&'a Credits>,
    /// What went wrong, if it did.
    pub error: Option<&'a str>,
}

impl<'a> QuotaView<'a> {
    /// The view of `q`.
    pub fn new(q: &'a QuotaRow) -> Self {
        let quota = q.quota.as_ref();
        QuotaView {
            credential_id: &q.credential_id,
            fetched_at: secs_floor(q.fetched_at_ms),
            status: &q.status,
            http_status: q.http_status,
            plan_type: quota.and_then(|q| q.plan_type.as_deref()),
            limit_reached: quota.and_then(|q| q.limit_reached),
            windows: quota.map_or(&[], |q| q.windows.as_slice()),
            credits: quota.and_then(|q| q.credits.as_ref()),
            error: q.error_message.as_deref(),
        }
    }
}

impl<'a> Summary<'a> {
    /// The summary of `c` at `now`.
    pub fn new(c: &'a Credential, now: Now, policy: &Policy) -> Self {
        let s = &c.status;
        let now_ms = now.wall_ms;
        let state = s.effective(now, policy);
        Summary {
            id: &c.id,
            provider: c.provider.kind.as_str(),
            state: state.as_str(),
            version: s.version,
            expires_at: s.expires_at_ms.map(secs_floor),
            account_id: c.claims.account_id.as_deref(),
            email: c.claims.email.as_deref(),
            plan_type: c.claims.plan_type.as_deref(),
            last_refresh_at: s.last_refresh_ms.map(secs_floor),
            failures: s.failures,
            next_attempt_at: s.next_attempt_at_ms.filter(|&t| t > now_ms).map(secs_ceil),
            last_error: c.last_error.as_ref().map(|e| ErrorView {
                code: &e.code,
                message: &e.message,
                at: secs_floor(e.at_ms),
            }),
            dead_reason: (state == crate::state::State::Dead)
                .then_some(s.dead_reason.as_deref())
                .flatten(),
            relogin: (state == crate::state::State::Dead)
                .then(|| crate::login::login_command(c.provider.kind, &c.id)),
            quota: None,
            pools: &[],
            cooldown: None,
        }
    }

    /// Adds the pools it belongs to.
    pub fn with_pools(mut self, pools: Option<&'a Vec<String>>) -> Self {
        self.pools = pools.map_or(&[], Vec::as_slice);
        self
    }

    /// Adds its cooldown, if one runs at `now_ms`.
    pub fn with_cooldown(mut self, c: Option<&'a Cooldown>, now_ms: i64) -> Self {
        self.cooldown = c.filter(|c| c.until_ms > now_ms).map(CooldownView::new);
        self
    }

    /// Adds the quota line from the newest snapshot, if any.
    pub fn with_quota(mut self, q: Option<&'a QuotaRow>) -> Self {
        self.quota = q.map(QuotaBrief::new);
        self
    }
}

/// `{"credentials":[summary…],"next":"ID"}`: a page of summaries and,
/// when more follow, the cursor of the next page (absent on the last).
#[derive(Debug, Serialize)]
pub struct SummaryList<'a> {
    /// The summaries.
    pub credentials: Vec<Summary<'a>>,
    /// The `after` of the next page, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Writes a [`SummaryList`] one summary at a time — the same bytes as
/// serialising it whole — so that a listing of any size holds one decoded
/// row at a time, never the list.
#[derive(Debug)]
pub struct SummaryWriter<W: std::io::Write> {
    out: W,
    first: bool,
    failed: Option<serde_json::Error>,
}

impl<W: std::io::Write> SummaryWriter<W> {
    /// Starts the list on `out`.
    pub fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(b"{\"credentials\":[")?;
        Ok(SummaryWriter {
            out,
            first: true,
            failed: None,
        })
    }

    /// Writes one summary (after a failure, nothing more).
    pub fn push(&mut self, summary: &Summary<'_>) {
        if self.failed.is_some() {
            return;
        }
        let comma = if std::mem::take(&mut self.first) {
            Ok(())
        } else {
            self.out.write_all(b",").map_err(serde_json::Error::io)
        };
        if let Err(e) = comma.and_then(|()| serde_json::to_writer(&mut self.out, summary)) {
            self.failed = Some(e);
        }
    }

    /// Ends the list, with the next page's cursor if there is one; the
    /// first failure of any write, if there was one.
    pub fn finish(mut self, next: Option<&str>) -> serde_json::Result<W> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let io = serde_json::Error::io;
        self.out.write_all(b"]").map_err(io)?;
        if let Some(next) = next {
            self.out.write_all(b",\"next\":").map_err(io)?;
            serde_json::to_writer(&mut self.out, next)?;
        }
        self.out.write_all(b"}").map_err(io)?;
        Ok(self.out)
    }
}

/// One event as shown.
#[derive(Debug, Serialize)]
pub struct EventView<'a> {
    /// Sequence number.
    pub seq: i64,
    /// When, unix seconds.
    pub at: i64,
    /// State before.
    pub from: Option<&'a str>,
    /// State after.
    pub to: &'a str,
    /// Version after.
    pub version: i64,
    /// Who.
    pub actor: &'a str,
    /// Why.
    pub reason: &'a str,
}

impl<'a> From<&'a EventRow> for EventView<'a> {
    fn from(e: &'a EventRow) -> Self {
        EventView {
            seq: e.seq,
            at: secs_floor(e.at_ms),
            from: e.from.as_deref(),
            to: &e.to,
            version: e.version,
            actor: &e.actor,
            reason: &e.reason,
        }
    }
}

/// `{"events":[…],"next":SEQ}` (`next` only when more follow).
#[derive(Debug, Serialize)]
pub struct EventList<'a> {
    /// The events, oldest first.
    pub events: Vec<EventView<'a>>,
    /// The `after` of the next page, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        assert_eq!((secs_floor(1999), secs_ceil(1999)), (1, 2));
        assert_eq!((secs_floor(2000), secs_ceil(2000)), (2, 2));
        assert_eq!((secs_floor(-1), secs_ceil(-1)), (-1, 0));
    }
}

/// A facade handle as listed: never the handle itself.
#[derive(Debug, Serialize)]
pub struct HandleView<'a> {
    /// Short id (first hex digits of the handle's hash).
    pub id: &'a str,
    /// The credential it stands for.
    pub credential_id: &'a str,
    /// Who it is for.
    pub label: &'a str,
    /// Made at, unix seconds.
    pub created_at: i64,
    /// Last presented, unix seconds.
    pub last_used_at: Option<i64>,
    /// Revoked at, unix seconds.
    pub revoked_at: Option<i64>,
}

impl<'a> From<&'a HandleRow> for HandleView<'a> {
    fn from(h: &'a HandleRow) -> Self {
        HandleView {
            id: &h.hash[..crate::facade::SHORT_ID_LEN.min(h.hash.len())],
            credential_id: &h.credential_id,
            label: &h.label,
            created_at: secs_floor(h.created_ms),
            last_used_at: h.last_used_ms.map(secs_floor),
            revoked_at: h.revoked_ms.map(secs_floor),
        }
    }
}
