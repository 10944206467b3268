//! Signing in again over the API: `POST /v1/credentials/{id}/login` starts
//! a sign-in for an `oauth2` credential whose client registered this
//! server's `/oauth/callback`, and answers the authorize URL for the
//! operator's browser; `GET /oauth/callback` is where the browser comes
//! back (public: the 256-bit `state` it carries is its credential, and it is
//! good once). The flow itself is `crate::login::run`'s `begin`/`finish`.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;
use serde_json::Value;

use super::response::{ApiError, Reply};
use crate::login::run::{self, OAuth2Flags, PendingLogin, PENDING_TTL};
use crate::provider::form_decode;
use crate::warden::Warden;

/// Sign-ins waiting for their redirect, by state; at most [`MAX_PENDING`],
/// each for [`PENDING_TTL`].
#[derive(Debug, Default)]
pub(crate) struct PendingLogins {
    by_state: Mutex<HashMap<String, PendingLogin>>,
}

/// The most sign-ins waiting at once: an admin key is needed to start one,
/// and each holds a little memory until it is used or expires.
pub const MAX_PENDING: usize = 64;

impl PendingLogins {
    fn insert(&self, p: PendingLogin) -> Result<(), ApiError> {
        let mut map = self.by_state.lock();
        map.retain(|_, p| p.started.elapsed() < PENDING_TTL);
        if map.len() >= MAX_PENDING {
            return Err(ApiError {
                retry_after_s: Some(60),
                ..ApiError::new(
                    503,
                    "unavailable",
                    format!("{MAX_PENDING} sign-ins are already waiting for their browsers; retry later"),
                )
            });
        }
        map.insert(p.state.clone(), p);
        Ok(())
    }

    /// The sign-in this state belongs to, taken (a state is good once).
    fn take(&self, state: &str) -> Option<PendingLogin> {
        self.by_state
            .lock()
            .remove(state)
            .filter(|p| p.started.elapsed() < PENDING_TTL)
    }
}

/// The JSON body's optional fields, as `login oauth2`'s flags.
fn flags(body: &[u8]) -> Result<(OAuth2Flags, Option<String>), ApiError> {
    let bad = |m: String| ApiError::bad_request(m);
    let map = match body.iter().all(u8::is_ascii_whitespace) {
        true => serde_json::Map::new(),
        false => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            _ => return Err(bad("the body must be a JSON object (or empty)".into())),
        },
    };
    const FIELDS: [&str; 4] = ["issuer", "authorize_url", "scope", "redirect_uri"];
    if let Some(k) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown field {:?}; accepted: {}",
            k.chars().take(64).collect::<String>(),
            FIELDS.join(", ")
        )));
    }
    let get = |k: &str| -> Result<Option<String>, ApiError> {
        match map.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
            Some(_) => Err(bad(format!("field {k:?} must be a non-empty string"))),
        }
    };
    Ok((
        OAuth2Flags {
            issuer: get("issuer")?,
            authorize_url: get("authorize_url")?,
            scope: get("scope")?,
            ..OAuth2Flags::default()
        },
        get("redirect_uri")?,
    ))
}

/// `POST /v1/credentials/{id}/login`: `{"authorize_url","redirect_uri",
/// "expires_at"}`. The redirect URI is the body's `redirect_uri`, else this
/// server's own `/oauth/callback` at the `Host` the request was sent to.
pub(crate) fn start(
    w: &Warden,
    pending: &PendingLogins,
    id: &str,
    host: Option<&str>,
    tls: bool,
    body: &[u8],
) -> Result<Reply, ApiError> {
    // An unknown credential is 404 whatever the body.
    w.get(id)?;
    let (flags, redirect) = flags(body)?;
    let (url, redirect, expires_at) = begin(w, pending, id, host, tls, &flags, redirect)?;
    Ok(Reply::json(
        200,
        &serde_json::json!({
            "authorize_url": url,
            "redirect_uri": redirect,
            "expires_at": expires_at,
        }),
    ))
}

/// Starts a sign-in of `id` (`oauth2` only) and keeps it pending: the
/// authorize URL, the redirect URI (`redirect`, else this server's own
/// `/oauth/callback` at `host`) and when the sign-in expires (unix s).
/// Shared by `POST /v1/credentials/{id}/login` and the console's re-login
/// button.
pub(crate) fn begin(
    w: &Warden,
    pending: &PendingLogins,
    id: &str,
    host: Option<&str>,
    tls: bool,
    flags: &OAuth2Flags,
    redirect: Option<String>,
) -> Result<(String, String, i64), ApiError> {
    w.get(id)?;
    let redirect = match (redirect, host) {
        (Some(r), _) => r,
        (None, Some(host)) => {
            format!(
                "{}://{host}/oauth/callback",
                if tls { "https" } else { "http" }
            )
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "no Host to build the redirect URI from; pass \"redirect_uri\"",
            ))
        }
    };
    let (url, p) = run::begin(w, id, &redirect, flags)?;
    let expires_at = crate::clock::now_ms() / 1000 + PENDING_TTL.as_secs() as i64;
    pending.insert(p)?;
    Ok((url, redirect, expires_at))
}

/// `GET /oauth/callback?code&state`: finishes the sign-in the state names,
/// and answers a page for the browser.
pub(crate) fn callback(w: &Warden, pending: &PendingLogins, target: &str) -> Reply {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let state = form_decode(query)
        .into_iter()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v);
    let Some(p) = state.as_deref().and_then(|s| pending.take(s)) else {
        return Reply::html(
            400,
            run::page_html(
                "Unknown sign-in",
                "This sign-in was not started here, was already finished, or expired; start it again.",
            ),
        );
    };
    let started = Instant::now();
    match run::finish(w, &p, target) {
        Ok((row, _)) => {
            log::info!(
                "{}: signed in again over the API in {} ms",
                row.id,
                started.elapsed().as_millis()
            );
            Reply::html(200, run::page_html(run::SIGNED_IN.0, run::SIGNED_IN.1))
        }
        Err(e) => Reply::html(400, run::page_html("Sign-in failed", &e.to_string())),
    }
}
