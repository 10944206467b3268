//! `tokenwarden login`: signing in to a provider, as pure functions over
//! data — PKCE and state, the authorize URL, the redirect, the code
//! exchange, the device flow, OpenID discovery, which stored credential
//! an account is — with one thin shell ([`run`]) that listens on loopback,
//! sends the requests and stores the result through [`crate::Warden`].
//!
//! One file per concern:
//!
//! - `pkce` — the verifier, its `S256` challenge, `state`.
//! - `client` — [`LoginClient`]: each provider's client (Codex CLI's and
//!   Claude Code's, from their public sources; any `oauth2` server's).
//! - `authorize` — the authorize URL, and reading the redirect back
//!   (loopback target or pasted `code#state`).
//! - `exchange` — the code exchange and its answer.
//! - `device` — RFC 8628, and the Codex CLI's variant.
//! - `discovery` — OpenID discovery.
//! - `account` — same account, same server, the default id.

mod account;
mod authorize;
mod client;
mod device;
mod discovery;
mod exchange;
mod pkce;
pub mod run;

pub use account::{default_id, is_account, matching, same_account, same_server};
pub use authorize::{authorize_url, parse_callback, parse_pasted, CallbackError};
pub use client::{openid_scope, DeviceDialect, LoginClient, OAuth2Settings};
pub use device::{
    next_interval, parse_poll, parse_start, poll_request, start_request, Poll, Started,
    DEFAULT_INTERVAL_MS, DEVICE_GRANT, SLOW_DOWN_MS,
};
pub use discovery::{discovery_request, parse_discovery, Discovery};
pub use exchange::{code_request, parse_tokens};
pub use pkce::{challenge_of, state_from, Pkce};

use crate::credential::ProviderKind;

/// Why a sign-in did not produce a credential. No message holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// The settings cannot make a sign-in (a flag, a URL, no device flow).
    #[error("{0}")]
    Config(String),
    /// The user (or the server) refused consent.
    #[error("the sign-in was refused: {0}")]
    Denied(String),
    /// The device code ran out before the user finished.
    #[error("the device code expired before the sign-in was finished; run the command again")]
    Expired,
    /// The redirect came back unusable.
    #[error("{0}")]
    Callback(CallbackError),
    /// The token endpoint refused the code, or answered nonsense.
    #[error("the token endpoint refused the sign-in ({code}): {message}")]
    Exchange {
        /// The upstream error code, or ours (`http_500`, `bad_json`, …).
        code: String,
        /// What it said (scrubbed).
        message: String,
    },
    /// Tokens without a refresh token: useless for keeping.
    #[error(
        "the server issued no refresh token; an OpenID server needs the offline_access scope \
         (with consent) for one"
    )]
    NoRefreshToken,
}

/// The command that signs `id` (a `provider` credential) in again: what a
/// dead credential's error and summary tell the user to run, written to
/// run as printed in a POSIX shell — an id that starts with `-` as
/// `--id=-ID` (else the argument parser takes it for a flag), and an id
/// with any character a shell treats specially single-quoted.
pub fn login_command(provider: ProviderKind, id: &str) -> String {
    let word = shell_word(id);
    match id.starts_with('-') {
        true => format!("tokenwarden login {provider} --id={word}"),
        false => format!("tokenwarden login {provider} --id {word}"),
    }
}

/// What a server said (a device flow's user code and page), fit for a
/// terminal: each control character written as its Rust escape
/// (`\u{1b}`), so a lying server cannot clear the screen, retitle the
/// terminal or hide text.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| match c.is_control() {
            true => c.escape_unicode().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// `s` as one POSIX shell word: as it is when every character is plain,
/// else in single quotes (a `'` written `'\''`).
pub fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._@+-=/:,%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relogin command runs as printed: a dashed id as `--id=`, a
    /// shell's special characters quoted.
    #[test]
    fn login_commands_run_as_printed() {
        // (id, command)
        let table = [
            ("me", "tokenwarden login codex --id me"),
            (
                "dev@example.com",
                "tokenwarden login codex --id dev@example.com",
            ),
            ("-dash", "tokenwarden login codex --id=-dash"),
            ("a b$`x`", "tokenwarden login codex --id 'a b$`x`'"),
            ("it's", r"tokenwarden login codex --id 'it'\''s'"),
        ];
        for (id, want) in table {
            assert_eq!(login_command(ProviderKind::Codex, id), want, "{id}");
        }
    }

    /// A server's control characters never reach the terminal.
    #[test]
    fn printable_escapes_control_characters() {
        // (said, shown)
        let table = [
            ("ABCD-EFGH", "ABCD-EFGH"),
            ("AB\u{1b}[2J\u{7}CD", r"AB\u{1b}[2J\u{7}CD"),
            ("line\nbreak", r"line\u{a}break"),
        ];
        for (said, shown) in table {
            assert_eq!(printable(said), shown, "{said:?}");
        }
    }
}
