//! Gemini CLI's login file, `~/.gemini/oauth_creds.json`: `{"access_token",
//! "refresh_token","scope","token_type","id_token","expiry_date" (unix ms)}`,
//! a Google login refreshed with Gemini CLI's installed-app client
//! ([`crate::provider::google::GEMINI_CLI_CLIENT_ID`] and its secret).

use serde_json::{Map, Value};

use super::error::Result;
use super::fields::{opt_ms, opt_secret, req_secret};
use super::{agree, Draft, ImportOptions};
use crate::credential::{NewCredential, ProviderConfig};
use crate::provider::{self, google, ProviderKind};
use crate::secret::Secret;

/// Every field google-auth-library writes to `oauth_creds.json`.
const GEMINI_FIELDS: &[&str] = &[
    "access_token",
    "refresh_token",
    "scope",
    "token_type",
    "id_token",
    "expiry_date",
    "refresh_token_expires_in",
];

/// Whether `map` is Gemini CLI's file, by its exact shape: `expiry_date` or `token_type`, and no field google-auth-library does not
/// write. A record that names anything else — a `provider`, a `token_url`,
/// a client — is not one, whatever else it holds: taking it for Gemini's
/// would send its refresh token to Google, a server that never issued it.
pub(super) fn detect(map: &Map<String, Value>) -> bool {
    (map.contains_key("expiry_date") || map.contains_key("token_type"))
        && map.keys().all(|k| GEMINI_FIELDS.contains(&k.as_str()))
}

/// Gemini CLI's client, as the provider settings of a Google credential.
pub(super) fn gemini_provider() -> ProviderConfig {
    ProviderConfig {
        client_id: Some(google::GEMINI_CLI_CLIENT_ID.to_owned()),
        client_secret: Some(Secret::new(google::GEMINI_CLI_CLIENT_SECRET)),
        ..ProviderConfig::new(ProviderKind::Google)
    }
}

pub(super) fn gemini(map: &Map<String, Value>, opts: &ImportOptions) -> Result<Draft> {
    agree(opts, "Gemini CLI oauth_creds.json", ProviderKind::Google)?;
    let id_token = opt_secret(map, "id_token", "id_token")?;
    let claims = id_token
        .as_ref()
        .map(|t| provider::oidc_claims(t.expose()))
        .unwrap_or_default();
    Ok(Draft {
        record_id: None,
        cred: NewCredential {
            id: String::new(),
            provider: gemini_provider(),
            refresh_token: req_secret(map, "refresh_token", "refresh_token")?,
            access_token: opt_secret(map, "access_token", "access_token")?,
            id_token,
            expires_at_ms: opt_ms(map, "expiry_date", "expiry_date")?,
            claims,
            last_refresh_ms: None,
            api_key: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Claims;
    use crate::import::testkit::*;
    use crate::provider::{refresh_request, Endpoints};

    #[test]
    fn gemini_oauth_creds() {
        let c = one(include_str!(
            "../../fixtures/import/gemini_oauth_creds.json"
        ));
        assert_eq!(c.id, "dev@gmail.com", "named by the id token's e-mail");
        assert_eq!(c.provider, gemini_provider());
        assert_eq!(c.refresh_token.expose(), "1//0g-gemini-refresh");
        assert_eq!(c.expires_at_ms, Some(1_700_003_599_000));
        assert_eq!(
            c.claims,
            Claims {
                email: Some("dev@gmail.com".into()),
                user_id: Some("109876543210".into()),
                ..Claims::default()
            }
        );
        // Refreshed as Gemini CLI does: Google's token endpoint, a form
        // body with its client id and secret.
        let req = refresh_request(&c.provider, &c.refresh_token, &Endpoints::default()).unwrap();
        assert_eq!(req.url, "https://oauth2.googleapis.com/token");
        let body = String::from_utf8(req.body).unwrap();
        let fields = provider::form_decode(&body);
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        // (field, value)
        let table = [
            ("grant_type", Some("refresh_token")),
            ("refresh_token", Some("1//0g-gemini-refresh")),
            ("client_id", Some(google::GEMINI_CLI_CLIENT_ID)),
            ("client_secret", Some(google::GEMINI_CLI_CLIENT_SECRET)),
        ];
        for (field, want) in table {
            assert_eq!(get(field), want, "{field}");
        }
        // No id token: nothing to name it by.
        let err = import(r#"{"refresh_token":"r","token_type":"Bearer"}"#).unwrap_err();
        assert!(err.to_string().contains("pass --id"), "{err}");
        // A record that names its own provider or token endpoint is never
        // taken for Gemini's file, whatever token fields it also holds.
        for record in [
            r#"{"provider":"oauth2","token_url":"https://idp/t","client_id":"c","refresh_token":"r","token_type":"Bearer"}"#,
            r#"{"id":"x","refresh_token":"r","expiry_date":1}"#,
        ] {
            assert!(!detect(&serde_json::from_str(record).unwrap()), "{record}");
        }
    }
}
