//! The front channel: the authorize URL sent to the browser, and the
//! redirect that comes back (a loopback request's target, or what the user
//! pasted in the manual variant).

use super::client::LoginClient;
use crate::provider::{form_decode, form_encode};

/// The authorize URL (RFC 6749 §4.1.1 with PKCE, RFC 7636 §4.3):
/// `leading…, response_type=code, client_id, redirect_uri, scope,
/// code_challenge, code_challenge_method=S256, extra…, state, trailing…`,
/// percent-encoded (a space as `%20`).
pub fn authorize_url(
    client: &LoginClient,
    redirect_uri: &str,
    state: &str,
    challenge: &str,
) -> String {
    let mut q: Vec<(&str, &str)> = client
        .leading
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    q.extend([
        ("response_type", "code"),
        ("client_id", client.client_id.as_str()),
        ("redirect_uri", redirect_uri),
        ("scope", client.scope.as_str()),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]);
    q.extend(client.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    q.push(("state", state));
    q.extend(
        client
            .trailing
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    // In form encoding `+` is only ever a space (a literal one is `%2B`).
    let query = form_encode(&q).replace('+', "%20");
    let sep = if client.authorize_url.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{}{sep}{query}", client.authorize_url)
}

/// Why a redirect back did not carry a usable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackError {
    /// Not the callback path (a favicon, a probe): answer 404, keep waiting.
    NotCallback,
    /// `state` is missing or not this flow's: someone else's redirect, or a
    /// forged one. Answer 400 and keep waiting; never exchange its code.
    StateMismatch,
    /// The server says no (`error`, e.g. `access_denied` when the user
    /// refused consent): the flow ends.
    Refused {
        /// The `error` code.
        error: String,
        /// `error_description`, if any (shown to the user; no secret).
        description: Option<String>,
    },
    /// The right state but no code: the flow ends.
    MissingCode,
}

impl std::fmt::Display for CallbackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallbackError::NotCallback => f.write_str("not the sign-in callback"),
            CallbackError::StateMismatch => f.write_str(
                "the redirect's state is not this sign-in's (a stale tab, or a forged request); \
                 it was ignored",
            ),
            CallbackError::Refused { error, description } => {
                write!(f, "the server refused the sign-in ({error})")?;
                match description {
                    Some(d) => write!(f, ": {d}"),
                    None => Ok(()),
                }
            }
            CallbackError::MissingCode => f.write_str("the redirect carries no authorization code"),
        }
    }
}

/// Reads a loopback request's target (`/callback?code=…&state=…`). The
/// state is checked first, as the Codex CLI does: an `error` with a wrong
/// state is a stranger's, and must not end this flow.
pub fn parse_callback(target: &str, path: &str, state: &str) -> Result<String, CallbackError> {
    let (got_path, query) = target.split_once('?').unwrap_or((target, ""));
    if got_path != path {
        return Err(CallbackError::NotCallback);
    }
    from_query(query, state)
}

fn from_query(query: &str, state: &str) -> Result<String, CallbackError> {
    let params = form_decode(query);
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    if get("state") != Some(state) {
        return Err(CallbackError::StateMismatch);
    }
    if let Some(error) = get("error") {
        return Err(CallbackError::Refused {
            error: clip(error),
            description: get("error_description").map(clip),
        });
    }
    get("code")
        .map(str::to_owned)
        .ok_or(CallbackError::MissingCode)
}

/// A server's words, shown to the user: printable, and short.
fn clip(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Reads what the user pasted in the manual variant: Claude's `code#state`,
/// the whole redirect URL, or its query. A bare code (no state to check)
/// is refused: the state is what ties the code to this flow.
pub fn parse_pasted(text: &str, state: &str) -> Result<String, CallbackError> {
    let text = text.trim();
    if let Some((_, query)) = text.split_once('?') {
        return from_query(query.split('#').next().unwrap_or(""), state);
    }
    if let Some((code, got)) = text.split_once('#') {
        let query = form_encode(&[("code", code), ("state", got)]);
        return from_query(&query, state);
    }
    if text.contains("code=") {
        return from_query(text, state);
    }
    Err(CallbackError::StateMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Endpoints;

    fn query_pairs(url: &str) -> (String, Vec<(String, String)>) {
        let (base, q) = url.split_once('?').unwrap();
        let mut v = form_decode(q);
        v.sort();
        (base.to_owned(), v)
    }

    #[test]
    fn authorize_urls_match_the_official_clients() {
        let e = Endpoints::default();
        // (client, redirect uri, fixture: the URL the official client builds
        // for the same state and challenge)
        let table = [
            (
                LoginClient::codex(&e),
                "http://localhost:1455/auth/callback",
                include_str!("../../fixtures/login/codex_authorize.txt"),
            ),
            (
                LoginClient::claude(),
                "http://localhost:54545/callback",
                include_str!("../../fixtures/login/claude_authorize.txt"),
            ),
        ];
        for (client, redirect, fixture) in table {
            let url = authorize_url(&client, redirect, "STATE-1", "CHALLENGE-1");
            assert_eq!(query_pairs(&url), query_pairs(fixture.trim()), "{url}");
            assert!(!url.contains('+'), "spaces as %20: {url}");
        }
        let url = authorize_url(&LoginClient::codex(&e), "r", "s", "c");
        assert!(url.contains("&code_challenge_method=S256&id_token_add_organizations=true&codex_cli_simplified_flow=true&state=s&originator=codex_cli_rs"), "{url}");
    }

    #[test]
    fn callbacks() {
        use CallbackError::*;
        let refused = |e: &str, d: Option<&str>| Refused {
            error: e.into(),
            description: d.map(str::to_owned),
        };
        // (target, result)
        let table = [
            ("/callback?code=c-1&state=S", Ok("c-1".to_owned())),
            ("/callback?state=S&code=a%2Bb%20c", Ok("a+b c".to_owned())),
            ("/callback?code=c-1&state=T", Err(StateMismatch)),
            ("/callback?code=c-1", Err(StateMismatch)),
            ("/callback?error=access_denied&state=T", Err(StateMismatch)),
            (
                "/callback?error=access_denied&state=S",
                Err(refused("access_denied", None)),
            ),
            (
                "/callback?error=access_denied&error_description=End-User%20aborted&state=S",
                Err(refused("access_denied", Some("End-User aborted"))),
            ),
            ("/callback?state=S", Err(MissingCode)),
            ("/callback?state=S&code=", Err(MissingCode)),
            ("/favicon.ico", Err(NotCallback)),
            ("/callbackx?code=c&state=S", Err(NotCallback)),
        ];
        for (target, want) in table {
            assert_eq!(parse_callback(target, "/callback", "S"), want, "{target}");
        }
        // (pasted, result)
        let table = [
            ("c-1#S", Ok("c-1".to_owned())),
            ("  c-1#S\n", Ok("c-1".to_owned())),
            ("c-1#T", Err(StateMismatch)),
            ("c-1", Err(StateMismatch)),
            (
                "http://localhost:1/callback?code=c-2&state=S",
                Ok("c-2".to_owned()),
            ),
            ("code=c-3&state=S", Ok("c-3".to_owned())),
            (
                "https://x/cb?error=access_denied&state=S",
                Err(refused("access_denied", None)),
            ),
        ];
        for (text, want) in table {
            assert_eq!(parse_pasted(text, "S"), want, "{text}");
        }
    }
}
