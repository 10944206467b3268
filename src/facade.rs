//! The Codex token-endpoint facade: many Codex CLIs share one login.
//!
//! Each client gets a *handle* (`twh_…`) in place of the real refresh
//! token; the Codex CLI sends it to `CODEX_REFRESH_TOKEN_URL_OVERRIDE`
//! (tokenwarden's `POST /oauth/token`) as if it were one. tokenwarden answers
//! with the credential's current access token — refreshing through the normal
//! CAS path when needed — and the same handle, so the real refresh token never
//! leaves tokenwarden and a fleet of clients can never burn it.
//!
//! A client coming back cannot say why (its proactive refresh, or a 401
//! upstream). So: a client that has not seen the newest token gets it; one
//! that has gets a real refresh, at most once per interval per credential,
//! so N clients coming back at once cause one refresh, not N.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::clock;
use crate::credential::Credential;
use crate::error::{Error, IoError, Result};
use crate::provider::{form_decode, ProviderKind};
use crate::secret::Secret;
use crate::state::Need;
use crate::warden::Warden;
use crate::HandleRow;

/// Every handle starts with this.
pub const HANDLE_PREFIX: &str = "twh_";

/// Hex digits of a handle's hash that name it in lists and `handle revoke`.
pub const SHORT_ID_LEN: usize = 12;

/// A new random handle: `twh_` + 32 bytes from the OS, base64url.
pub fn new_handle() -> Result<Secret> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut bytes[..])
        .map_err(|e| IoError::new("no randomness from the OS", e.to_string()))?;
    Ok(Secret::new(format!(
        "{HANDLE_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(&bytes[..])
    )))
}

/// What is stored for a handle: SHA-256, hex. The handle carries 256 random
/// bits, so a fast hash is enough to make a stolen table useless.
pub fn hash_handle(handle: &str) -> String {
    Sha256::digest(handle.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes a handle for credential `id`, labelled for the client it is for.
/// The handle is shown once: only its hash is kept.
pub fn create_handle(warden: &Warden, id: &str, label: &str) -> Result<Secret> {
    warden.get(id)?;
    if label.trim().is_empty() || label.len() > 200 {
        return Err(Error::BadInput(
            "--label must be 1 to 200 characters".into(),
        ));
    }
    let handle = new_handle()?;
    warden.add_handle(&hash_handle(handle.expose()), id, label, clock::now_ms())?;
    Ok(handle)
}

/// Revokes a handle, named by itself or by the short id `handle list`
/// shows.
pub fn revoke_handle(warden: &Warden, handle_or_id: &str) -> Result<()> {
    let prefix = if handle_or_id.starts_with(HANDLE_PREFIX) {
        hash_handle(handle_or_id)
    } else if handle_or_id.len() >= SHORT_ID_LEN
        && handle_or_id.bytes().all(|b| b.is_ascii_hexdigit())
    {
        handle_or_id.to_ascii_lowercase()
    } else {
        return Err(Error::BadInput(format!(
            "give the handle (twh_…) or its {SHORT_ID_LEN}-digit id from `tokenwarden handle list`"
        )));
    };
    match warden.revoke_handles(&prefix, clock::now_ms())? {
        0 => Err(Error::BadInput("no such active handle".into())),
        _ => Ok(()),
    }
}

/// What the facade does for a client that presents a valid handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Hand out the current token (refreshed only if it would not outlive
    /// the client's proactive refresh window).
    ServeCurrent,
    /// The client already has the current token and came back: refresh.
    Refresh,
}

/// A short fingerprint of an access token, to remember which one a client
/// was given without storing it.
pub fn fingerprint(token: &str) -> String {
    hash_handle(token)[..16].to_owned()
}

/// Decides for one client (pure): `served` is the fingerprint of the token
/// it was last given, `current` the stored token's, `last_refresh` when the
/// credential was last refreshed.
pub fn decide(
    served: Option<&str>,
    current: Option<&str>,
    last_refresh: Option<i64>,
    now_ms: i64,
    interval_ms: i64,
) -> Action {
    let has_current = served.is_some() && served == current;
    let recent = last_refresh.is_some_and(|l| l >= now_ms - interval_ms);
    if !has_current || recent {
        Action::ServeCurrent
    } else {
        Action::Refresh
    }
}

/// Why the facade refuses, rendered in OpenAI's error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a refresh-token grant, or no handle: 400 `invalid_request`.
    BadRequest(String),
    /// Unknown or revoked handle: 401 `refresh_token_invalidated`, which the
    /// Codex CLI treats as permanent (its user is told to log in again).
    InvalidHandle,
    /// The credential behind it is dead: 401 with the reason.
    Dead(String),
    /// Try again later: 503 `temporarily_unavailable`.
    Unavailable(u64),
    /// tokenwarden failed: 500 `server_error`.
    Internal,
}

impl Refusal {
    /// HTTP status, body (OpenAI's error shape) and Retry-After seconds.
    pub fn render(&self) -> (u16, String, Option<u64>) {
        let (status, code, message, retry) = match self {
            Refusal::BadRequest(m) => (400, "invalid_request", m.clone(), None),
            Refusal::InvalidHandle => (
                401,
                "refresh_token_invalidated",
                "This refresh token is not valid (unknown or revoked handle). Please try signing in again.".to_owned(),
                None,
            ),
            Refusal::Dead(reason) => (
                401,
                "refresh_token_invalidated",
                format!("The shared login is no longer valid ({reason}). Please try signing in again."),
                None,
            ),
            Refusal::Unavailable(s) => (
                503,
                "temporarily_unavailable",
                format!("Token refresh is temporarily unavailable; retry in {s} s."),
                Some(*s),
            ),
            Refusal::Internal => (500, "server_error", "Internal error.".to_owned(), None),
        };
        let body = json!({"error": {
            "message": message,
            "type": "invalid_request_error",
            "param": Value::Null,
            "code": code,
        }});
        (status, body.to_string(), retry)
    }
}

/// Reads the handle out of a refresh grant, JSON or form-encoded.
pub fn parse_request(content_type: Option<&str>, body: &[u8]) -> Result<String, Refusal> {
    let is_form = content_type.is_some_and(|c| c.contains("x-www-form-urlencoded"));
    let fields: Vec<(String, String)> = if is_form {
        form_decode(&String::from_utf8_lossy(body))
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => map
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                .collect(),
            _ => {
                return Err(Refusal::BadRequest(
                    "the body must be a JSON object or form-encoded".into(),
                ))
            }
        }
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    match field("grant_type") {
        Some("refresh_token") => {}
        _ => {
            return Err(Refusal::BadRequest(
                "grant_type must be refresh_token".into(),
            ))
        }
    }
    match field("refresh_token") {
        Some(h) if !h.is_empty() => Ok(h.to_owned()),
        _ => Err(Refusal::BadRequest("refresh_token is missing".into())),
    }
}

/// Tuning of the facade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FacadeOptions {
    /// At most one forced refresh per credential per this interval.
    pub interval: Duration,
    /// The answered token lives at least this long: more than the Codex
    /// CLI's proactive refresh window (5 minutes), or every CLI would come
    /// back on every request.
    pub min_ttl: Duration,
    /// How long to wait on a refresh in flight.
    pub wait: Duration,
}

impl FacadeOptions {
    /// The options in `warden`'s configuration.
    pub fn from_config(c: &crate::Config) -> Self {
        FacadeOptions {
            interval: c.facade_interval,
            min_ttl: c.facade_min_ttl,
            wait: c.wait,
        }
    }
}

/// The answer to a client: `{"id_token","access_token","refresh_token"}`.
pub fn answer(row: &Credential, handle: &str) -> String {
    let mut body = json!({
        "access_token": row.access_token.as_ref().map(Secret::expose),
        "refresh_token": handle,
        "token_type": "Bearer",
    });
    if let Some(id_token) = &row.id_token {
        body["id_token"] = Value::from(id_token.expose());
    }
    if let Some(e) = row.status.expires_at_ms {
        body["expires_in"] = Value::from(((e - clock::now_ms()) / 1000).max(0));
    }
    body.to_string()
}

fn refusal(e: Error) -> Refusal {
    match e {
        Error::Dead { reason, .. } => Refusal::Dead(reason),
        Error::Unavailable { retry_after_s, .. } => Refusal::Unavailable(retry_after_s),
        Error::NotFound(_) => Refusal::InvalidHandle,
        other => {
            log::error!("facade: {other}");
            Refusal::Internal
        }
    }
}

/// Serves one client presenting `handle`: the credential row whose access
/// token to answer with.
pub fn exchange(
    warden: &Warden,
    handle: &str,
    opts: &FacadeOptions,
) -> Result<Credential, Refusal> {
    if !handle.starts_with(HANDLE_PREFIX) {
        return Err(Refusal::InvalidHandle);
    }
    let hash = hash_handle(handle);
    let h: HandleRow = match warden.handle(&hash) {
        Ok(Some(h)) if h.revoked_ms.is_none() => h,
        Ok(_) => return Err(Refusal::InvalidHandle),
        Err(e) => return Err(refusal(e)),
    };
    let id = &h.credential_id;
    let row = warden.get(id).map_err(refusal)?;
    if row.provider.kind != ProviderKind::Codex {
        log::warn!(
            "facade: handle {} stands for a non-Codex credential",
            &hash[..SHORT_ID_LEN]
        );
    }
    let now = clock::now_ms();
    let interval = clock::millis(opts.interval);
    let current = row.access_token.as_ref().map(|t| fingerprint(t.expose()));
    let action = decide(
        h.served_token.as_deref(),
        current.as_deref(),
        row.status.last_refresh_ms,
        now,
        interval,
    );
    let need = match action {
        Action::ServeCurrent => Need::Token {
            min_ttl_ms: clock::millis(opts.min_ttl),
        },
        Action::Refresh => {
            log::info!(
                "facade: client {} came back with the current token; refreshing",
                &hash[..SHORT_ID_LEN]
            );
            // Any refresh newer than the one this client saw will do: a herd
            // coming back at once shares one.
            Need::Refresh {
                since_ms: row.status.last_refresh_ms.unwrap_or(0),
                force: false,
            }
        }
    };
    let (row, _) = warden.ensure(id, need, opts.wait).map_err(refusal)?;
    let served = row.access_token.as_ref().map(|t| fingerprint(t.expose()));
    if let Err(e) = warden.touch_handle(&hash, now, served.as_deref().unwrap_or("")) {
        log::warn!("facade: could not record handle use: {e}");
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        const NOW: i64 = 1_000_000;
        const I: i64 = 30_000;
        let old = Some(NOW - 100_000);
        let table = [
            // (served, current, last_refresh) → action
            (None, Some("a"), old, Action::ServeCurrent),
            (Some("a"), Some("b"), old, Action::ServeCurrent),
            (Some("a"), Some("a"), old, Action::Refresh),
            (Some("a"), Some("a"), None, Action::Refresh),
            (
                Some("a"),
                Some("a"),
                Some(NOW - 10_000),
                Action::ServeCurrent,
            ),
            (None, None, None, Action::ServeCurrent),
        ];
        for (served, current, last, want) in table {
            assert_eq!(
                decide(served, current, last, NOW, I),
                want,
                "{served:?} {current:?} {last:?}"
            );
        }
    }

    #[test]
    fn handles_are_random_prefixed_and_hashed() {
        let a = new_handle().unwrap();
        let b = new_handle().unwrap();
        assert!(a.expose().starts_with(HANDLE_PREFIX));
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 4 + 43);
        let h = hash_handle(a.expose());
        assert_eq!(h.len(), 64);
        assert_eq!(h, hash_handle(a.expose()));
        assert!(!h.contains(a.expose()));
    }

    #[test]
    fn requests() {
        let json = br#"{"client_id":"app","grant_type":"refresh_token","refresh_token":"twh_x"}"#;
        assert_eq!(
            parse_request(Some("application/json"), json),
            Ok("twh_x".into())
        );
        assert_eq!(parse_request(None, json), Ok("twh_x".into()));
        let form = b"grant_type=refresh_token&refresh_token=twh_y&scope=openid+profile";
        assert_eq!(
            parse_request(Some("application/x-www-form-urlencoded"), form),
            Ok("twh_y".into())
        );
        for (ct, body) in [
            (None, &b"garbage"[..]),
            (
                None,
                br#"{"grant_type":"authorization_code","refresh_token":"x"}"#,
            ),
            (None, br#"{"grant_type":"refresh_token"}"#),
            (None, br#"[1]"#),
        ] {
            assert!(
                matches!(parse_request(ct, body), Err(Refusal::BadRequest(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn refusals_use_openais_error_shape() {
        let (status, body, _) = Refusal::InvalidHandle.render();
        assert_eq!(status, 401);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "refresh_token_invalidated");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["param"].is_null());
        let (status, _, retry) = Refusal::Unavailable(7).render();
        assert_eq!((status, retry), (503, Some(7)));
    }
}
