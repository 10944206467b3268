//! OpenID Connect discovery (OpenID Connect Discovery 1.0 §4): the
//! endpoints of an issuer, read from `{issuer}/.well-known/openid-configuration`.

use serde_json::Value;

use super::LoginError;
use crate::provider::{check_url, str_at, HttpRequest, HttpResponse};

/// What a sign-in needs from a discovery document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The authorization endpoint.
    pub authorization_endpoint: String,
    /// The token endpoint.
    pub token_endpoint: String,
    /// The device authorization endpoint (RFC 8628 §4), if any.
    pub device_authorization_endpoint: Option<String>,
    /// `scopes_supported` (empty when not given).
    pub scopes_supported: Vec<String>,
}

/// The discovery request for `issuer` (a trailing `/` is dropped).
pub fn discovery_request(issuer: &str) -> Result<HttpRequest, LoginError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    check_url(&url).map_err(|why| LoginError::Config(format!("--issuer: {why}")))?;
    Ok(HttpRequest {
        method: "GET",
        url,
        headers: vec![("Accept".into(), "application/json".into())],
        body: vec![],
    })
}

/// Reads a discovery document. The document's `issuer` must be the one
/// asked for (§4.3: otherwise another issuer's endpoints could be slipped
/// in), and every endpoint must pass the URL rule of refreshes (`https`, or
/// `http` to loopback).
pub fn parse_discovery(issuer: &str, resp: &HttpResponse) -> Result<Discovery, LoginError> {
    let bad = |why: String| LoginError::Config(format!("OpenID discovery for {issuer}: {why}"));
    if resp.status != 200 {
        return Err(bad(format!("HTTP {}", resp.status)));
    }
    let v: Value =
        serde_json::from_slice(&resp.body).map_err(|_| bad("the document is not JSON".into()))?;
    let want = issuer.trim_end_matches('/');
    match str_at(&v, &["issuer"]) {
        Some(got) if got.trim_end_matches('/') == want => {}
        _ => return Err(bad("the document names another issuer".into())),
    }
    let endpoint = |key: &str| -> Result<Option<String>, LoginError> {
        str_at(&v, &[key])
            .map(|url| {
                check_url(&url)
                    .map(|()| url)
                    .map_err(|why| bad(format!("{key}: {why}")))
            })
            .transpose()
    };
    let need = |key: &str| endpoint(key)?.ok_or_else(|| bad(format!("no {key}")));
    Ok(Discovery {
        authorization_endpoint: need("authorization_endpoint")?,
        token_endpoint: need("token_endpoint")?,
        device_authorization_endpoint: endpoint("device_authorization_endpoint")?,
        scopes_supported: v
            .get("scopes_supported")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str) -> HttpResponse {
        crate::provider::testkit::resp(status, body, None)
    }

    #[test]
    fn documents() {
        assert_eq!(
            discovery_request("http://127.0.0.1:4000/").unwrap().url,
            "http://127.0.0.1:4000/.well-known/openid-configuration"
        );
        assert!(
            discovery_request("http://idp.example").is_err(),
            "plain http off loopback"
        );
        let doc = r#"{"issuer":"https://idp.example","authorization_endpoint":"https://idp.example/auth",
            "token_endpoint":"https://idp.example/token","device_authorization_endpoint":"https://idp.example/device/auth",
            "scopes_supported":["openid","offline_access"]}"#;
        let d = parse_discovery("https://idp.example/", &resp(200, doc)).unwrap();
        assert_eq!(d.token_endpoint, "https://idp.example/token");
        assert_eq!(
            d.device_authorization_endpoint.as_deref(),
            Some("https://idp.example/device/auth")
        );
        assert_eq!(d.scopes_supported, ["openid", "offline_access"]);
        // (issuer asked, status, body, error contains)
        let table = [
            ("https://other.example", 200, doc, "another issuer"),
            ("https://idp.example", 404, "", "HTTP 404"),
            ("https://idp.example", 200, "<html>", "not JSON"),
            (
                "https://idp.example",
                200,
                r#"{"issuer":"https://idp.example","token_endpoint":"https://idp.example/t"}"#,
                "no authorization_endpoint",
            ),
            (
                "https://idp.example",
                200,
                r#"{"issuer":"https://idp.example","authorization_endpoint":"http://evil.example/a","token_endpoint":"https://idp.example/t"}"#,
                "authorization_endpoint",
            ),
        ];
        for (issuer, status, body, want) in table {
            let err = parse_discovery(issuer, &resp(status, body))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
