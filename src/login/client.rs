//! What a sign-in needs to know about a provider's OAuth client: where to
//! send the browser, which redirect URI it registered, what to ask for, and
//! how to send the code exchange. One value per provider, built here; the
//! flow functions (`authorize`, `exchange`, `device`) are the same for all.

use crate::credential::{Encoding, ProviderConfig, ProviderKind};
use crate::provider::{claude, codex, google, Endpoints};
use crate::secret::Secret;

/// Which device authorization dialect a provider speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceDialect {
    /// RFC 8628: a form POST to the device authorization endpoint, then
    /// the `urn:ietf:params:oauth:grant-type:device_code` grant.
    Rfc8628 {
        /// The device authorization endpoint.
        url: String,
    },
    /// The Codex CLI's own: `POST {issuer}/api/accounts/deviceauth/usercode`
    /// (JSON `client_id`), polled at `…/deviceauth/token` until it answers
    /// an authorization code and the PKCE pair it was made with, which is
    /// then exchanged like a browser's code with the redirect URI
    /// `{issuer}/deviceauth/callback`.
    Codex {
        /// The issuer (`https://auth.openai.com`).
        issuer: String,
    },
}

/// A provider's OAuth client, as a sign-in uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginClient {
    /// The settings stored with the credential (its refreshes use them).
    pub provider: ProviderConfig,
    /// The settings of the code exchange (Codex CLI sends it as a form,
    /// its refreshes as JSON).
    pub exchange: ProviderConfig,
    /// Whether the code exchange carries `state` too (Claude Code's does).
    pub exchange_state: bool,
    /// The authorization endpoint.
    pub authorize_url: String,
    /// The client id put in the authorize URL.
    pub client_id: String,
    /// The scopes asked for, space-separated.
    pub scope: String,
    /// Authorize parameters before the standard ones.
    pub leading: Vec<(String, String)>,
    /// Authorize parameters after `code_challenge_method`, before `state`.
    pub extra: Vec<(String, String)>,
    /// Authorize parameters after `state`.
    pub trailing: Vec<(String, String)>,
    /// The redirect URI's host (`127.0.0.1`, or `localhost` where a client
    /// registered that).
    pub redirect_host: String,
    /// The redirect URI's path.
    pub redirect_path: String,
    /// The ports the client registered, in order of preference; empty
    /// means any (an ephemeral port, RFC 8252 §7.3).
    pub redirect_ports: Vec<u16>,
    /// The redirect URI of the manual variant, where the provider's page
    /// shows `code#state` for the user to paste back.
    pub manual_redirect: Option<String>,
    /// The device flow, if the provider has one.
    pub device: Option<DeviceDialect>,
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The settings of an `oauth2` sign-in (`--authorize-url`, `--token-url`,
/// `--client-id`, `--client-secret-file`, `--scope`, or the endpoints read
/// from OpenID discovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Settings {
    /// The authorization endpoint.
    pub authorize_url: String,
    /// The token endpoint.
    pub token_url: String,
    /// The device authorization endpoint, if known.
    pub device_url: Option<String>,
    /// The client id.
    pub client_id: String,
    /// The client secret of a confidential client.
    pub client_secret: Option<Secret>,
    /// The scopes, space-separated.
    pub scope: String,
    /// OpenID: ask for consent, which an OpenID server needs before it
    /// issues a refresh token for `offline_access` (OpenID Connect Core
    /// §11). Set when the scope holds `offline_access`.
    pub consent: bool,
}

impl LoginClient {
    /// The Codex CLI's client. The issuer follows the Codex token endpoint
    /// in `endpoints` (`TOKENWARDEN_CODEX_TOKEN_URL`), so a test or mirror
    /// that moves one moves all.
    pub fn codex(endpoints: &Endpoints) -> LoginClient {
        let issuer = endpoints
            .codex_token
            .strip_suffix("/oauth/token")
            .unwrap_or(codex::ISSUER)
            .to_owned();
        let provider = ProviderConfig::new(ProviderKind::Codex);
        LoginClient {
            exchange: ProviderConfig {
                encoding: Some(Encoding::Form),
                ..provider.clone()
            },
            provider,
            exchange_state: false,
            authorize_url: format!("{issuer}/oauth/authorize"),
            client_id: codex::CLIENT_ID.to_owned(),
            scope: codex::SCOPES.to_owned(),
            leading: vec![],
            extra: pairs(&codex::AUTHORIZE_EXTRA),
            trailing: pairs(&[("originator", codex::ORIGINATOR)]),
            redirect_host: codex::REDIRECT_HOST.to_owned(),
            redirect_path: codex::REDIRECT_PATH.to_owned(),
            redirect_ports: vec![codex::REDIRECT_PORT, codex::FALLBACK_PORT],
            manual_redirect: None,
            device: Some(DeviceDialect::Codex { issuer }),
        }
    }

    /// Claude Code's client: a loopback redirect on any port, or the manual
    /// variant; the code exchange is JSON and carries `state`.
    pub fn claude() -> LoginClient {
        let provider = ProviderConfig::new(ProviderKind::Claude);
        LoginClient {
            exchange: provider.clone(),
            provider,
            exchange_state: true,
            authorize_url: claude::AUTHORIZE_URL.to_owned(),
            client_id: claude::CLIENT_ID.to_owned(),
            scope: claude::SCOPES.to_owned(),
            leading: pairs(&claude::AUTHORIZE_EXTRA),
            extra: vec![],
            trailing: vec![],
            redirect_host: claude::REDIRECT_HOST.to_owned(),
            redirect_path: claude::REDIRECT_PATH.to_owned(),
            redirect_ports: vec![],
            manual_redirect: Some(claude::MANUAL_REDIRECT_URL.to_owned()),
            device: None,
        }
    }

    /// Gemini CLI's client (a Google login, as `gemini` signs in): its
    /// installed-app client id and secret, its scopes, a loopback redirect
    /// on any port; the code exchange is a form with the secret, sent to
    /// Google's token endpoint (`TOKENWARDEN_GOOGLE_TOKEN_URL`).
    pub fn google() -> LoginClient {
        let provider = ProviderConfig {
            client_id: Some(google::GEMINI_CLI_CLIENT_ID.to_owned()),
            client_secret: Some(Secret::new(google::GEMINI_CLI_CLIENT_SECRET)),
            ..ProviderConfig::new(ProviderKind::Google)
        };
        LoginClient {
            exchange: provider.clone(),
            provider,
            exchange_state: false,
            authorize_url: google::AUTHORIZE_URL.to_owned(),
            client_id: google::GEMINI_CLI_CLIENT_ID.to_owned(),
            scope: google::GEMINI_CLI_SCOPES.to_owned(),
            leading: vec![],
            extra: pairs(&google::AUTHORIZE_EXTRA),
            trailing: vec![],
            redirect_host: "localhost".to_owned(),
            redirect_path: google::REDIRECT_PATH.to_owned(),
            redirect_ports: vec![],
            manual_redirect: None,
            device: None,
        }
    }

    /// Any RFC 6749 server: redirect `http://127.0.0.1:{port}/callback`.
    pub fn oauth2(s: OAuth2Settings) -> LoginClient {
        let provider = ProviderConfig {
            token_url: Some(s.token_url),
            client_id: Some(s.client_id.clone()),
            client_secret: s.client_secret,
            scope: Some(s.scope.clone()).filter(|s| !s.trim().is_empty()),
            ..ProviderConfig::new(ProviderKind::OAuth2)
        };
        LoginClient {
            exchange: provider.clone(),
            provider,
            exchange_state: false,
            authorize_url: s.authorize_url,
            client_id: s.client_id,
            scope: s.scope,
            leading: vec![],
            extra: match s.consent {
                true => pairs(&[("prompt", "consent")]),
                false => vec![],
            },
            trailing: vec![],
            redirect_host: "127.0.0.1".to_owned(),
            redirect_path: "/callback".to_owned(),
            redirect_ports: vec![],
            manual_redirect: None,
            device: s.device_url.map(|url| DeviceDialect::Rfc8628 { url }),
        }
    }

    /// The client secrets a request of this client may carry (the stored
    /// settings' and the exchange's): never quoted back in an error.
    pub fn secrets(&self) -> Vec<&str> {
        [&self.provider, &self.exchange]
            .iter()
            .filter_map(|p| p.client_secret.as_ref().map(Secret::expose))
            .collect()
    }

    /// The loopback redirect URI on `port`.
    pub fn redirect_uri(&self, port: u16) -> String {
        format!("http://{}:{port}{}", self.redirect_host, self.redirect_path)
    }
}

/// The scope an OpenID sign-in asks for: `scope` (default `openid email
/// profile`), with `offline_access` added when the server supports it and
/// it is missing — without it an OpenID server issues no refresh token.
pub fn openid_scope(scope: Option<&str>, supported: &[String]) -> String {
    let mut words: Vec<String> = scope
        .unwrap_or("openid email profile")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let offline = "offline_access";
    let supports = supported.is_empty() || supported.iter().any(|s| s == offline);
    if supports && !words.iter().any(|w| w == offline) {
        words.push(offline.to_owned());
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_and_scopes() {
        let e = Endpoints::default();
        // (client, port, redirect uri)
        let table = [
            (
                LoginClient::codex(&e),
                1455,
                "http://localhost:1455/auth/callback",
            ),
            (
                LoginClient::claude(),
                54545,
                "http://localhost:54545/callback",
            ),
            (
                LoginClient::google(),
                40123,
                "http://localhost:40123/oauth2callback",
            ),
        ];
        for (c, port, want) in table {
            assert_eq!(c.redirect_uri(port), want);
        }
        let moved = Endpoints {
            codex_token: "http://127.0.0.1:9/oauth/token".into(),
            ..Endpoints::default()
        };
        assert_eq!(
            LoginClient::codex(&moved).authorize_url,
            "http://127.0.0.1:9/oauth/authorize"
        );
        let supported = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (scope, supported, asked)
        let table = [
            (None, supported(&[]), "openid email profile offline_access"),
            (Some("openid"), supported(&["openid"]), "openid"),
            (
                Some("openid offline_access"),
                supported(&["openid", "offline_access"]),
                "openid offline_access",
            ),
            (
                Some("openid api"),
                supported(&["offline_access"]),
                "openid api offline_access",
            ),
        ];
        for (scope, supported, want) in table {
            assert_eq!(openid_scope(scope, &supported), want, "{scope:?}");
        }
    }
}
