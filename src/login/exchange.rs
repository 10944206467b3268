//! The back channel: the code exchange (RFC 6749 §4.1.3 with the PKCE
//! verifier) and reading its answer into tokens.

use super::client::LoginClient;
use super::LoginError;
use crate::provider::{
    grant_request, parse_answer, Endpoints, HttpRequest, HttpResponse, Outcome, Tokens,
};
use crate::secret::Secret;

/// The code exchange: `grant_type=authorization_code`, `code`,
/// `redirect_uri`, `code_verifier` (and `state` for a client that sends it),
/// then the client's authentication, in the exchange's encoding.
pub fn code_request(
    client: &LoginClient,
    code: &str,
    verifier: &Secret,
    redirect_uri: &str,
    state: &str,
    endpoints: &Endpoints,
) -> Result<HttpRequest, LoginError> {
    let mut grant = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
    ];
    // `grant_request` puts the client's authentication after these (the
    // Codex CLI sends its client_id before code_verifier: the order means
    // nothing to a server, and the fixture test compares the fields).
    grant.push(("code_verifier", verifier.expose()));
    if client.exchange_state {
        grant.push(("state", state));
    }
    grant_request(&client.exchange, &grant, endpoints, false).map_err(LoginError::Config)
}

/// Reads a token endpoint's answer to a code exchange (or a device grant):
/// the tokens, which must include a refresh token — a sign-in without one
/// is of no use here (OpenID: ask for `offline_access`) — or why not. No
/// error quotes the client's secret or any of `sent` (the code, the PKCE
/// verifier, the device code: what the request carried).
pub fn parse_tokens(
    client: &LoginClient,
    resp: &HttpResponse,
    sent: &[&str],
    now_ms: i64,
) -> Result<Tokens, LoginError> {
    let mut secrets = client.secrets();
    secrets.extend_from_slice(sent);
    match parse_answer(
        client.provider.kind,
        resp,
        &Secret::new(""),
        &secrets,
        now_ms,
    ) {
        Outcome::Success(t) if t.access_token.expose().is_empty() => Err(LoginError::Exchange {
            code: "no_access_token".into(),
            message: "the token endpoint answered without an access token".into(),
        }),
        Outcome::Success(t) if t.refresh_token.expose().is_empty() => {
            Err(LoginError::NoRefreshToken)
        }
        Outcome::Success(t) => Ok(t),
        Outcome::Failure(f) => Err(LoginError::Exchange {
            code: f.code,
            message: f.message,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::client::OAuth2Settings;
    use crate::provider::form_decode;
    use serde_json::Value;

    fn resp(status: u16, body: &str) -> HttpResponse {
        crate::provider::testkit::resp(status, body, None)
    }

    fn sorted_form(body: &[u8]) -> Vec<(String, String)> {
        let mut v = form_decode(std::str::from_utf8(body).unwrap());
        v.sort();
        v
    }

    fn oauth2(secret: Option<&str>) -> LoginClient {
        LoginClient::oauth2(OAuth2Settings {
            authorize_url: "https://idp.example/auth".into(),
            token_url: "https://idp.example/token".into(),
            device_url: None,
            client_id: "cli".into(),
            client_secret: secret.map(Secret::new),
            scope: "openid offline_access".into(),
            consent: true,
        })
    }

    #[test]
    fn exchanges_match_the_official_clients() {
        let e = Endpoints::default();
        let v = Secret::new("VERIFIER-1");
        let codex = code_request(
            &LoginClient::codex(&e),
            "CODE-1",
            &v,
            "http://localhost:1455/auth/callback",
            "STATE-1",
            &e,
        )
        .unwrap();
        assert_eq!(codex.url, "https://auth.openai.com/oauth/token");
        assert_eq!(
            sorted_form(&codex.body),
            sorted_form(include_bytes!("../../fixtures/login/codex_exchange.txt").trim_ascii())
        );
        let claude = code_request(
            &LoginClient::claude(),
            "CODE-1",
            &v,
            "http://localhost:54545/callback",
            "STATE-1",
            &e,
        )
        .unwrap();
        assert_eq!(claude.url, "https://console.anthropic.com/v1/oauth/token");
        let body: Value = serde_json::from_slice(&claude.body).unwrap();
        let want: Value =
            serde_json::from_str(include_str!("../../fixtures/login/claude_exchange.json"))
                .unwrap();
        assert_eq!(body, want);
        // (client, content type, has Authorization, fields)
        let grant = [
            ("code", "CODE-1"),
            ("code_verifier", "VERIFIER-1"),
            ("grant_type", "authorization_code"),
            ("redirect_uri", "http://127.0.0.1:1/callback"),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut v: Vec<(String, String)> = grant
                .iter()
                .chain(extra)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            v.sort();
            v
        };
        let basic = LoginClient {
            exchange: crate::credential::ProviderConfig {
                client_auth: Some(crate::credential::ClientAuth::Basic),
                ..oauth2(Some("s3")).exchange
            },
            ..oauth2(Some("s3"))
        };
        let table = [
            (oauth2(None), false, with(&[("client_id", "cli")])),
            (
                oauth2(Some("s3")),
                false,
                with(&[("client_id", "cli"), ("client_secret", "s3")]),
            ),
            (basic, true, with(&[])),
        ];
        for (client, auth, want) in table {
            let req = code_request(
                &client,
                "CODE-1",
                &v,
                "http://127.0.0.1:1/callback",
                "S",
                &e,
            )
            .unwrap();
            assert_eq!(req.url, "https://idp.example/token");
            assert_eq!(sorted_form(&req.body), want);
            assert_eq!(req.headers.iter().any(|(k, _)| k == "Authorization"), auth);
        }
    }

    /// An error that echoes the request quotes none of its secrets: the
    /// client secret, the code, the verifier.
    #[test]
    fn an_echoed_request_is_scrubbed() {
        let c = oauth2(Some("hunter2"));
        let body = r#"{"error":"invalid_client","error_description":"secret hunter2 code c0de verifier v3rifier"}"#;
        let err = parse_tokens(&c, &resp(401, body), &["c0de", "v3rifier"], 0).unwrap_err();
        let shown = err.to_string();
        for secret in ["hunter2", "c0de", "v3rifier"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("invalid_client"), "{shown}");
    }

    #[test]
    fn answers() {
        let c = oauth2(None);
        let ok = parse_tokens(
            &c,
            &resp(
                200,
                r#"{"access_token":"a","refresh_token":"r","expires_in":60}"#,
            ),
            &[],
            1_000,
        )
        .unwrap();
        assert_eq!(
            (
                ok.access_token.expose(),
                ok.refresh_token.expose(),
                ok.expires_at_ms
            ),
            ("a", "r", 61_000)
        );
        // (status, body, error)
        let table = [
            (
                200,
                r#"{"access_token":"a","expires_in":60}"#,
                LoginError::NoRefreshToken,
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#,
                LoginError::Exchange {
                    code: "invalid_grant".into(),
                    message: "grant request is invalid".into(),
                },
            ),
        ];
        for (status, body, want) in table {
            let got = parse_tokens(&c, &resp(status, body), &[], 0).unwrap_err();
            match (&got, &want) {
                (LoginError::Exchange { code: a, .. }, LoginError::Exchange { code: b, .. }) => {
                    assert_eq!(a, b, "{body}")
                }
                _ => assert_eq!(got, want, "{body}"),
            }
        }
    }
}
