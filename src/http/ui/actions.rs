//! The console's actions, each through the same [`Warden`] call as the
//! API's route for it: a forced refresh (`refresh_within` with `force`),
//! rejecting the current access token (`reject_within`), setting and
//! clearing a cooldown, revoking a facade handle, deleting
//! (`delete_within`, refused at once during a refresh, as over the API).
//! Only admin sessions get here (`mod.rs` refuses read-only ones); the
//! answer is the one line the flash message shows — never a token.

use std::time::Duration;

use crate::error::Error;
use crate::facade;
use crate::warden::{Grant, Warden};

use super::form::Form;

/// The longest cooldown the console sets (as the API: within a year).
pub const MAX_COOLDOWN_S: u64 = 366 * 86_400;

/// One action of the credential page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Force a refresh now (also retries a dead credential).
    Refresh,
    /// Report the current access token as rejected (then get a fresh one).
    Reject,
    /// Cool the account down for `seconds`.
    Cooldown,
    /// Lift its cooldown.
    ClearCooldown,
    /// Revoke one facade handle (`handle`: its short id).
    RevokeHandle,
    /// Delete the credential.
    Delete,
    /// Sign a dead `oauth2` credential in again over the API: answered by
    /// a page linking to the authorize URL (run by `mod.rs`, which has the
    /// request's `Host` and the pending sign-ins).
    Relogin,
}

impl Action {
    /// Every action, by its path segment.
    pub const ALL: [(&'static str, Action); 7] = [
        ("refresh", Action::Refresh),
        ("reject", Action::Reject),
        ("cooldown", Action::Cooldown),
        ("clear-cooldown", Action::ClearCooldown),
        ("revoke-handle", Action::RevokeHandle),
        ("delete", Action::Delete),
        ("relogin", Action::Relogin),
    ];

    /// The action a path segment names.
    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
    }

    /// The fields its form sends.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Action::Cooldown => &["csrf", "seconds"],
            Action::RevokeHandle => &["csrf", "handle"],
            Action::Reject => &["csrf", "token"],
            _ => &["csrf"],
        }
    }
}

fn valid_until(g: &Grant) -> String {
    format!(
        "valid until {} (version {})",
        crate::rfc3339::format(g.expires_at_ms.div_euclid(1000) * 1000),
        g.version
    )
}

/// Runs `action` on credential `id` at `now_ms`; `wait` bounds waiting on
/// someone else's refresh. `Ok` is the flash message.
pub fn run(
    w: &Warden,
    id: &str,
    action: Action,
    form: &Form,
    wait: Duration,
    now_ms: i64,
) -> Result<String, Error> {
    match action {
        Action::Refresh => {
            let g = w.refresh_within(id, true, wait)?;
            Ok(format!("Refreshed {id}: {}.", valid_until(&g)))
        }
        Action::Reject => {
            // The token the page showed, by fingerprint: a second click
            // on the same page finds it replaced and rejects nothing.
            let shown = form
                .get("token")
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    Error::BadInput("the form names no token; reload the page".to_owned())
                })?;
            let current = w
                .get(id)?
                .access_token
                .ok_or_else(|| Error::BadInput(format!("{id} has no access token to reject")))?;
            if facade::fingerprint(current.expose()) != shown {
                return Ok(format!(
                    "The access token this page showed for {id} was already replaced; \
                     nothing more was rejected (reload to see the current one)."
                ));
            }
            // Replaced between the read and here: `reject_within` then
            // rejects nothing and answers the current token.
            let g = w.reject_within(id, current.expose(), wait)?;
            Ok(format!(
                "Rejected the access token of {id}; the new one is {}.",
                valid_until(&g)
            ))
        }
        Action::Cooldown => {
            let secs = form
                .get("seconds")
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|s| (1..=MAX_COOLDOWN_S).contains(s))
                .ok_or_else(|| {
                    Error::BadInput(format!(
                        "seconds must be a whole number from 1 to {MAX_COOLDOWN_S}"
                    ))
                })?;
            w.get(id)?;
            let until = now_ms.saturating_add(secs as i64 * 1000);
            w.set_cooldown(id, until, "set from the console")?;
            Ok(format!(
                "{id} cools down until {}.",
                crate::rfc3339::format(until.div_euclid(1000) * 1000)
            ))
        }
        Action::ClearCooldown => {
            w.get(id)?;
            Ok(match w.clear_cooldown(id, "cleared from the console")? {
                true => format!("Cleared the cooldown of {id}."),
                false => format!("{id} had no cooldown."),
            })
        }
        Action::RevokeHandle => {
            let short = form
                .get("handle")
                .map(str::trim)
                .filter(|h| {
                    h.len() == facade::SHORT_ID_LEN && h.bytes().all(|b| b.is_ascii_hexdigit())
                })
                .ok_or_else(|| {
                    Error::BadInput(format!(
                        "handle must be the {}-digit id of a handle",
                        facade::SHORT_ID_LEN
                    ))
                })?
                .to_ascii_lowercase();
            // Only a handle of this credential, and an active one.
            let ours = w
                .handles(id)?
                .iter()
                .any(|h| h.hash.starts_with(&short) && h.revoked_ms.is_none());
            if !ours {
                return Err(Error::BadInput(format!(
                    "{id} has no active handle {short}"
                )));
            }
            facade::revoke_handle(w, &short)?;
            Ok(format!("Revoked handle {short} of {id}."))
        }
        Action::Delete => {
            w.delete_within(id, Duration::ZERO)?;
            Ok(format!("Deleted {id}; its events stay."))
        }
        Action::Relogin => Err(Error::Internal(
            "a re-login is answered by the console itself",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (name, a) in Action::ALL {
            assert_eq!(Action::parse(name), Some(a));
            assert!(a.fields().contains(&"csrf"));
        }
        assert_eq!(Action::parse("Refresh"), None);
        assert_eq!(Action::parse(""), None);
    }
}
