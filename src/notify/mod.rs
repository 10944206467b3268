//! Notifications, the pure core: which state changes need a human, the
//! JSON a receiver gets, its signature, and the retry schedule. The outbox
//! rows are written by the store in the same transaction as the change
//! (the `notify` field of a transition's write, and the cooldown writes);
//! `deliver` is the shell that sends them.
//!
//! Kinds: `dead` (with the reason and the command that fixes it),
//! `reuse_detected` (a death whose reason is refresh-token reuse),
//! `failing` (refreshes failing for longer than
//! `TOKENWARDEN_NOTIFY_FAILING_AFTER`, once per run of failures),
//! `quota_exhausted` / `quota_reset` (a cooldown set or cleared by a quota
//! snapshot), `recovered` (a refresh succeeded after a death or a notified
//! run of failures), and `test` (`tokenwarden notify test`). A payload
//! never holds a secret: it is built from ids, states, codes and scrubbed
//! messages only.

pub mod deliver;

use serde::Serialize;

use crate::credential::{Credential, LastError};
use crate::state::{Event, State, Transition};
use crate::Notice;

/// The header carrying a body's signature.
pub const SIGNATURE_HEADER: &str = "X-Tokenwarden-Signature";

/// The JSON body of a notification.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    /// The stable event id (deduplicate on it).
    id: &'a str,
    kind: &'a str,
    /// RFC 3339.
    at: String,
    credential_id: Option<&'a str>,
    provider: Option<&'a str>,
    account_id: Option<&'a str>,
    /// The credential's state after the change.
    state: Option<&'a str>,
    /// The upstream code or cause.
    reason: Option<&'a str>,
    /// One line for a human.
    message: String,
    /// The command that fixes it, when one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

/// What a notice is about, beside its kind.
struct About<'a> {
    credential: Option<&'a Credential>,
    state: Option<&'a str>,
    reason: Option<&'a str>,
    message: String,
    fix: Option<String>,
}

fn notice(event_id: String, kind: &str, about: About<'_>, at_ms: i64) -> Notice {
    let c = about.credential;
    let payload = Payload {
        id: &event_id,
        kind,
        at: crate::rfc3339::format(at_ms.div_euclid(1000) * 1000),
        credential_id: c.map(|c| c.id.as_str()),
        provider: c.map(|c| c.provider.kind.as_str()),
        account_id: c.and_then(|c| c.claims.account_id.as_deref()),
        state: about.state,
        reason: about.reason,
        message: about.message,
        fix: about.fix,
    };
    Notice {
        // Serialising a struct of strings cannot fail.
        payload: serde_json::to_string(&payload).unwrap_or_default(),
        event_id,
        kind: kind.to_owned(),
        credential_id: c.map(|c| c.id.clone()),
        at_ms,
    }
}

/// The command that brings a dead credential back: the same `tokenwarden
/// login` its error and summary name.
pub fn fix_for_dead(c: &Credential) -> String {
    crate::login::login_command(c.provider.kind, &c.id)
}

/// Whether a death's code means the refresh token was used twice.
fn is_reuse(code: &str) -> bool {
    code.contains("reuse")
}

/// The notice a transition of `before` (the row it was computed from)
/// calls for, if any; `error` is the failure it records. `failing_after_ms`
/// is `TOKENWARDEN_NOTIFY_FAILING_AFTER`.
pub fn on_transition(
    before: &Credential,
    event: &Event,
    t: &Transition,
    error: Option<&LastError>,
    now_ms: i64,
    failing_after_ms: i64,
) -> Option<Notice> {
    let id = before.id.as_str();
    let version = before.status.version + 1;
    let failing_since = |s: &Credential| match s.status.failures {
        0 => None,
        _ => Some(s.failing_since_ms.unwrap_or(now_ms)),
    };
    match event {
        Event::FailPermanent { code, .. } if t.to == State::Dead => {
            let kind = if is_reuse(code) {
                "reuse_detected"
            } else {
                "dead"
            };
            let message = match kind {
                "reuse_detected" => format!(
                    "credential '{id}' is dead: its refresh token was used twice ({code}); the \
                     provider revoked the login. Something else refreshed this login: find it \
                     and let tokenwarden be the only refresher"
                ),
                _ => format!("credential '{id}' is dead: the refresh token was refused ({code})"),
            };
            Some(notice(
                format!("{kind}:{id}:v{version}"),
                kind,
                About {
                    credential: Some(before),
                    state: Some("dead"),
                    reason: Some(code),
                    message,
                    fix: Some(fix_for_dead(before)),
                },
                now_ms,
            ))
        }
        Event::FailTransient { .. } => {
            let since = failing_since(before).unwrap_or(now_ms);
            (now_ms - since >= failing_after_ms).then(|| {
                let reason = error.map(|e| e.code.as_str());
                let minutes = (now_ms - since) / 60_000;
                notice(
                    format!("failing:{id}:{since}"),
                    "failing",
                    About {
                        credential: Some(before),
                        state: Some(t.to.as_str()),
                        reason,
                        message: format!(
                            "credential '{id}': refreshes have failed for {minutes} min \
                             ({} failures; last: {})",
                            t.failures,
                            error.map_or("unknown", |e| e.message.as_str())
                        ),
                        fix: Some(format!(
                            "`tokenwarden show {id}` and `tokenwarden events {id}`"
                        )),
                    },
                    now_ms,
                )
            })
        }
        Event::Succeed { .. } if t.to == State::Valid => {
            let was_dead =
                before.status.state == State::Dead || before.status.resume == Some(State::Dead);
            let notified_failing = failing_since(before).is_some_and(|since| {
                before
                    .last_error
                    .as_ref()
                    .is_some_and(|e| e.at_ms - since >= failing_after_ms)
            });
            (was_dead || notified_failing).then(|| {
                let key = match failing_since(before) {
                    Some(since) if !was_dead => since.to_string(),
                    _ => format!("v{version}"),
                };
                notice(
                    format!("recovered:{id}:{key}"),
                    "recovered",
                    About {
                        credential: Some(before),
                        state: Some("valid"),
                        reason: None,
                        message: format!("credential '{id}' refreshes again"),
                        fix: None,
                    },
                    now_ms,
                )
            })
        }
        _ => None,
    }
}

/// The `recovered` notice of a dead credential that an import brought
/// back (`before` is the row before the import, `version` the new row's).
pub fn on_revived(before: &Credential, version: i64, now_ms: i64) -> Notice {
    let id = before.id.as_str();
    notice(
        format!("recovered:{id}:v{version}"),
        "recovered",
        About {
            credential: Some(before),
            state: Some("valid"),
            reason: Some("reimported"),
            message: format!("credential '{id}' was re-imported and is usable again"),
            fix: None,
        },
        now_ms,
    )
}

/// The notice of a cooldown a quota snapshot set (`exhausted`) or cleared.
pub fn on_quota_cooldown(
    c: &Credential,
    exhausted: bool,
    until_ms: Option<i64>,
    reason: &str,
    now_ms: i64,
) -> Notice {
    let id = c.id.as_str();
    let (kind, message, key) = match (exhausted, until_ms) {
        (true, Some(until)) => (
            "quota_exhausted",
            format!(
                "credential '{id}': {reason}; cooling down until {}",
                crate::rfc3339::format(until)
            ),
            until.to_string(),
        ),
        _ => (
            "quota_reset",
            format!("credential '{id}': {reason}; back in its pools"),
            now_ms.to_string(),
        ),
    };
    notice(
        format!("{kind}:{id}:{key}"),
        kind,
        About {
            credential: Some(c),
            state: None,
            reason: Some(reason),
            message,
            fix: None,
        },
        now_ms,
    )
}

/// The sample `tokenwarden notify test` sends.
pub fn sample(now_ms: i64) -> Notice {
    notice(
        format!("test:{now_ms}"),
        "test",
        About {
            credential: None,
            state: None,
            reason: None,
            message: "a test notification from tokenwarden".into(),
            fix: None,
        },
        now_ms,
    )
}

/// `sha256=<hex HMAC-SHA-256 of body under secret>`: the value of
/// [`SIGNATURE_HEADER`].
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mac = crate::seal::hmac_sha256(secret, body);
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Attempts before a notification is given up on (about a day of tries).
pub const MAX_ATTEMPTS: u32 = 30;

/// The pause after failed attempt number `attempts` (1-based): `min_ms`
/// (5 s by default) doubling up to an hour; `None` once [`MAX_ATTEMPTS`]
/// are spent.
pub fn retry_delay_ms(attempts: u32, min_ms: i64) -> Option<i64> {
    if attempts >= MAX_ATTEMPTS {
        return None;
    }
    let doubled = min_ms.saturating_mul(1_i64 << attempts.saturating_sub(1).min(20));
    Some(doubled.min(3_600_000))
}

#[cfg(test)]
mod tests;
