//! The device authorization grant (RFC 8628), and the Codex CLI's own
//! variant of it: start, poll, and read each answer. The shell sleeps
//! between polls for [`Started::interval_ms`] (grown by `slow_down`) and
//! gives up at [`Started::expires_in_ms`].

use serde_json::{Map, Value};

use super::client::{DeviceDialect, LoginClient};
use super::exchange::parse_tokens;
use super::LoginError;
use crate::provider::{grant_request, str_at, Endpoints, HttpRequest, HttpResponse, Tokens};
use crate::secret::Secret;

/// The RFC 8628 device grant type.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The poll interval when the server names none (RFC 8628 §3.2).
pub const DEFAULT_INTERVAL_MS: i64 = 5_000;
/// How much `slow_down` adds to the interval (RFC 8628 §3.5).
pub const SLOW_DOWN_MS: i64 = 5_000;
/// How long the Codex CLI waits for a device code (it names no expiry).
pub const CODEX_DEVICE_WAIT_MS: i64 = 15 * 60 * 1000;

/// A started device flow: what to show the user, and what to poll with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The code the user types.
    pub user_code: String,
    /// Where the user types it.
    pub verification_uri: String,
    /// The same page with the code filled in, if the server gives one.
    pub verification_uri_complete: Option<String>,
    /// RFC 8628's `device_code`, or Codex's `device_auth_id` (secret: whoever
    /// holds it gets the tokens once the user approves).
    pub device_code: Secret,
    /// How long the codes live.
    pub expires_in_ms: i64,
    /// The pause between polls.
    pub interval_ms: i64,
}

/// What one poll said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// The user has not finished yet: poll again after the interval.
    Pending,
    /// Too fast: add [`SLOW_DOWN_MS`] to the interval, then poll again.
    SlowDown,
    /// Done: the tokens (RFC 8628).
    Tokens(Tokens),
    /// Done, Codex: an authorization code and the PKCE verifier it was made
    /// with, to exchange with the redirect URI `{issuer}/deviceauth/callback`.
    Code {
        /// The authorization code.
        code: String,
        /// Its PKCE verifier.
        verifier: Secret,
    },
}

fn codex_base(issuer: &str) -> String {
    format!("{}/api/accounts/deviceauth", issuer.trim_end_matches('/'))
}

fn json_post(url: String, body: Value) -> HttpRequest {
    HttpRequest {
        method: "POST",
        url,
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("Accept".into(), "application/json".into()),
        ],
        body: body.to_string().into_bytes(),
    }
}

fn no_device(client: &LoginClient) -> LoginError {
    LoginError::Config(format!(
        "{} sign-in has no device flow here; drop --device (use --no-browser to open the URL elsewhere)",
        client.provider.kind
    ))
}

/// The request that starts the flow: RFC 8628 §3.1 (`client_id`, `scope`,
/// the client's authentication, as a form), or Codex's JSON `client_id`.
pub fn start_request(
    client: &LoginClient,
    endpoints: &Endpoints,
) -> Result<HttpRequest, LoginError> {
    match &client.device {
        None => Err(no_device(client)),
        Some(DeviceDialect::Rfc8628 { url }) => {
            let cfg = crate::credential::ProviderConfig {
                token_url: Some(url.clone()),
                encoding: Some(crate::credential::Encoding::Form),
                ..client.exchange.clone()
            };
            grant_request(&cfg, &[("scope", client.scope.as_str())], endpoints, false)
                .map_err(LoginError::Config)
        }
        Some(DeviceDialect::Codex { issuer }) => Ok(json_post(
            format!("{}/usercode", codex_base(issuer)),
            serde_json::json!({ "client_id": client.client_id }),
        )),
    }
}

fn object(resp: &HttpResponse) -> Option<Map<String, Value>> {
    match serde_json::from_slice(&resp.body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// A number of seconds, as a JSON number or a string of digits (Codex
/// sends its interval as a string).
fn secs(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|s| *s > 0 && *s < 86_400)
}

/// An OAuth error answer of the device endpoints; its code and message
/// scrubbed of `client`'s secret and anything that looks like a token,
/// control characters dropped.
fn oauth_error(client: &LoginClient, resp: &HttpResponse) -> LoginError {
    let map = object(resp).unwrap_or_default();
    let v = Value::Object(map);
    let secrets = client.secrets();
    let shown = |text: String, max: usize| -> String {
        crate::provider::scrub(&text, &secrets)
            .chars()
            .filter(|c| !c.is_control())
            .take(max)
            .collect()
    };
    let code = str_at(&v, &["error"])
        .or_else(|| str_at(&v, &["error", "code"]))
        .map(|c| shown(c, 64))
        .unwrap_or_else(|| format!("http_{}", resp.status));
    let message = str_at(&v, &["error_description"])
        .or_else(|| str_at(&v, &["error", "message"]))
        .map(|m| shown(m, 200))
        .unwrap_or_else(|| format!("HTTP {}", resp.status));
    LoginError::Exchange { code, message }
}

/// Reads the start answer (RFC 8628 §3.2, or Codex's `device_auth_id`,
/// `user_code`/`usercode`, `interval`; its page is `{issuer}/codex/device`).
pub fn parse_start(client: &LoginClient, resp: &HttpResponse) -> Result<Started, LoginError> {
    if !(200..300).contains(&resp.status) {
        if resp.status == 404 {
            if let Some(DeviceDialect::Codex { .. }) = client.device {
                return Err(LoginError::Config(
                    "device code sign-in is not enabled for this account or server; use the browser sign-in".into(),
                ));
            }
        }
        return Err(oauth_error(client, resp));
    }
    let map = object(resp).ok_or_else(|| LoginError::Exchange {
        code: "bad_json".into(),
        message: "the device authorization answer is not a JSON object".into(),
    })?;
    let v = Value::Object(map);
    let missing = |field: &str| LoginError::Exchange {
        code: "bad_answer".into(),
        message: format!("the device authorization answer has no {field}"),
    };
    let interval_ms = secs(v.get("interval")).map_or(DEFAULT_INTERVAL_MS, |s| s * 1000);
    match &client.device {
        None => Err(no_device(client)),
        Some(DeviceDialect::Rfc8628 { .. }) => Ok(Started {
            user_code: str_at(&v, &["user_code"]).ok_or_else(|| missing("user_code"))?,
            verification_uri: str_at(&v, &["verification_uri"])
                .or_else(|| str_at(&v, &["verification_url"]))
                .ok_or_else(|| missing("verification_uri"))?,
            verification_uri_complete: str_at(&v, &["verification_uri_complete"]),
            device_code: Secret::new(
                str_at(&v, &["device_code"]).ok_or_else(|| missing("device_code"))?,
            ),
            expires_in_ms: secs(v.get("expires_in")).ok_or_else(|| missing("expires_in"))? * 1000,
            interval_ms,
        }),
        Some(DeviceDialect::Codex { issuer }) => Ok(Started {
            user_code: str_at(&v, &["user_code"])
                .or_else(|| str_at(&v, &["usercode"]))
                .ok_or_else(|| missing("user_code"))?,
            verification_uri: format!("{}/codex/device", issuer.trim_end_matches('/')),
            verification_uri_complete: None,
            device_code: Secret::new(
                str_at(&v, &["device_auth_id"]).ok_or_else(|| missing("device_auth_id"))?,
            ),
            expires_in_ms: CODEX_DEVICE_WAIT_MS,
            interval_ms,
        }),
    }
}

/// One poll: the device grant (RFC 8628 §3.4) to the token endpoint, or
/// Codex's JSON `device_auth_id` + `user_code`.
pub fn poll_request(
    client: &LoginClient,
    started: &Started,
    endpoints: &Endpoints,
) -> Result<HttpRequest, LoginError> {
    match &client.device {
        None => Err(no_device(client)),
        Some(DeviceDialect::Rfc8628 { .. }) => grant_request(
            &client.exchange,
            &[
                ("grant_type", DEVICE_GRANT),
                ("device_code", started.device_code.expose()),
            ],
            endpoints,
            false,
        )
        .map_err(LoginError::Config),
        Some(DeviceDialect::Codex { issuer }) => Ok(json_post(
            format!("{}/token", codex_base(issuer)),
            serde_json::json!({
                "device_auth_id": started.device_code.expose(),
                "user_code": started.user_code,
            }),
        )),
    }
}

/// Reads one poll's answer (RFC 8628 §3.5): `authorization_pending` →
/// [`Poll::Pending`], `slow_down` → [`Poll::SlowDown`], `expired_token` →
/// [`LoginError::Expired`], `access_denied` → [`LoginError::Denied`],
/// tokens → [`Poll::Tokens`]. Codex: 403 and 404 are pending, a 2xx is
/// [`Poll::Code`].
pub fn parse_poll(
    client: &LoginClient,
    resp: &HttpResponse,
    now_ms: i64,
) -> Result<Poll, LoginError> {
    match &client.device {
        None => Err(no_device(client)),
        Some(DeviceDialect::Codex { .. }) => match resp.status {
            403 | 404 => Ok(Poll::Pending),
            200..=299 => {
                let v = Value::Object(object(resp).unwrap_or_default());
                match (
                    str_at(&v, &["authorization_code"]),
                    str_at(&v, &["code_verifier"]),
                ) {
                    (Some(code), Some(verifier)) => Ok(Poll::Code {
                        code,
                        verifier: Secret::new(verifier),
                    }),
                    _ => Err(LoginError::Exchange {
                        code: "bad_answer".into(),
                        message: "the device token answer has no authorization code".into(),
                    }),
                }
            }
            _ => Err(oauth_error(client, resp)),
        },
        Some(DeviceDialect::Rfc8628 { .. }) => {
            if (200..300).contains(&resp.status) {
                return parse_tokens(client, resp, &[], now_ms).map(Poll::Tokens);
            }
            match oauth_error(client, resp) {
                LoginError::Exchange { code, .. } if code == "authorization_pending" => {
                    Ok(Poll::Pending)
                }
                LoginError::Exchange { code, .. } if code == "slow_down" => Ok(Poll::SlowDown),
                LoginError::Exchange { code, .. } if code == "expired_token" => {
                    Err(LoginError::Expired)
                }
                LoginError::Exchange { code, message } if code == "access_denied" => {
                    Err(LoginError::Denied(message))
                }
                other => Err(other),
            }
        }
    }
}

/// The interval after a poll's answer: `slow_down` adds 5 s.
pub fn next_interval(interval_ms: i64, poll: &Poll) -> i64 {
    match poll {
        Poll::SlowDown => interval_ms + SLOW_DOWN_MS,
        _ => interval_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::client::OAuth2Settings;
    use crate::provider::form_decode;

    fn resp(status: u16, body: &str) -> HttpResponse {
        crate::provider::testkit::resp(status, body, None)
    }

    fn rfc() -> LoginClient {
        LoginClient::oauth2(OAuth2Settings {
            authorize_url: "https://idp.example/auth".into(),
            token_url: "https://idp.example/token".into(),
            device_url: Some("https://idp.example/device".into()),
            client_id: "cli".into(),
            client_secret: None,
            scope: "openid offline_access".into(),
            consent: true,
        })
    }

    #[test]
    fn rfc_8628() {
        let e = Endpoints::default();
        let c = rfc();
        let req = start_request(&c, &e).unwrap();
        assert_eq!(req.url, "https://idp.example/device");
        let mut f = form_decode(std::str::from_utf8(&req.body).unwrap());
        f.sort();
        assert_eq!(
            f,
            [
                ("client_id".into(), "cli".into()),
                ("scope".into(), "openid offline_access".into())
            ]
        );
        let s = parse_start(
            &c,
            &resp(
                200,
                r#"{"device_code":"dc","user_code":"WDJB-MJHT","verification_uri":"https://idp.example/device","verification_uri_complete":"https://idp.example/device?user_code=WDJB-MJHT","expires_in":1800}"#,
            ),
        )
        .unwrap();
        assert_eq!(
            (s.user_code.as_str(), s.expires_in_ms, s.interval_ms),
            ("WDJB-MJHT", 1_800_000, DEFAULT_INTERVAL_MS)
        );
        let poll = poll_request(&c, &s, &e).unwrap();
        assert_eq!(poll.url, "https://idp.example/token");
        let body = String::from_utf8(poll.body).unwrap();
        assert!(
            body.contains(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code=dc"
            ),
            "{body}"
        );
        // (status, body, poll)
        let table = [
            (
                400,
                r#"{"error":"authorization_pending"}"#,
                Ok(Poll::Pending),
            ),
            (400, r#"{"error":"slow_down"}"#, Ok(Poll::SlowDown)),
            (
                400,
                r#"{"error":"expired_token"}"#,
                Err(LoginError::Expired),
            ),
            (
                400,
                r#"{"error":"access_denied","error_description":"End-User aborted interaction"}"#,
                Err(LoginError::Denied("End-User aborted interaction".into())),
            ),
            (
                200,
                r#"{"access_token":"a","expires_in":60}"#,
                Err(LoginError::NoRefreshToken),
            ),
        ];
        for (status, body, want) in table {
            assert_eq!(parse_poll(&c, &resp(status, body), 0), want, "{body}");
        }
        assert!(matches!(
            parse_poll(
                &c,
                &resp(200, r#"{"access_token":"a","refresh_token":"r"}"#),
                0
            ),
            Ok(Poll::Tokens(_))
        ));
        assert_eq!(next_interval(5_000, &Poll::SlowDown), 10_000);
        assert_eq!(next_interval(5_000, &Poll::Pending), 5_000);
        // A missing field is named.
        let err = parse_start(&c, &resp(200, r#"{"device_code":"dc"}"#)).unwrap_err();
        assert!(err.to_string().contains("user_code"), "{err}");
    }

    #[test]
    fn codex_device_flow() {
        let e = Endpoints::default();
        let c = LoginClient::codex(&e);
        let req = start_request(&c, &e).unwrap();
        assert_eq!(
            req.url,
            "https://auth.openai.com/api/accounts/deviceauth/usercode"
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&req.body).unwrap(),
            serde_json::json!({"client_id": "app_EMoamEEZ73f0CkXaXp7hrann"})
        );
        let s = parse_start(
            &c,
            &resp(
                200,
                include_str!("../../fixtures/login/codex_device_usercode.json"),
            ),
        )
        .unwrap();
        assert_eq!(
            (
                s.user_code.as_str(),
                s.verification_uri.as_str(),
                s.interval_ms,
                s.expires_in_ms
            ),
            (
                "ABCD-1234",
                "https://auth.openai.com/codex/device",
                5_000,
                CODEX_DEVICE_WAIT_MS
            )
        );
        let poll = poll_request(&c, &s, &e).unwrap();
        assert_eq!(
            poll.url,
            "https://auth.openai.com/api/accounts/deviceauth/token"
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&poll.body).unwrap(),
            serde_json::json!({"device_auth_id": "dev-auth-1", "user_code": "ABCD-1234"})
        );
        // (status, body, poll)
        let table = [
            (403, "", Ok(Poll::Pending)),
            (404, "", Ok(Poll::Pending)),
            (
                200,
                include_str!("../../fixtures/login/codex_device_token.json"),
                Ok(Poll::Code {
                    code: "ac-device-1".into(),
                    verifier: Secret::new("verifier-device-1"),
                }),
            ),
        ];
        for (status, body, want) in table {
            assert_eq!(parse_poll(&c, &resp(status, body), 0), want, "{status}");
        }
        assert!(parse_poll(&c, &resp(500, "oops"), 0).is_err());
        let no = LoginClient::claude();
        assert!(start_request(&no, &e)
            .unwrap_err()
            .to_string()
            .contains("no device flow"));
    }
}
