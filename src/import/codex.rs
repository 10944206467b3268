//! The Codex CLI's `auth.json` (ChatGPT login tokens, and the API key when
//! there is one).

use serde_json::{Map, Value};

use super::error::{ImportError, Result};
use super::fields::{bad, opt_secret, opt_string, opt_time, req_secret, type_name};
use super::{agree, Draft, ImportOptions};
use crate::credential::{NewCredential, ProviderConfig};
use crate::jwt;
use crate::provider::{codex, ProviderKind};

pub(super) fn codex_auth(map: &Map<String, Value>, opts: &ImportOptions) -> Result<Draft> {
    agree(opts, "Codex auth.json", ProviderKind::Codex)?;
    let api_key = opt_secret(map, "OPENAI_API_KEY", "OPENAI_API_KEY")?;
    let tokens = match map.get("tokens") {
        None | Some(Value::Null) => return Err(ImportError::NoTokens),
        Some(Value::Object(t)) => t,
        Some(other) => {
            return Err(bad(
                "tokens",
                format!("expected an object, found {}", type_name(other)),
            ))
        }
    };
    let access_token = opt_secret(tokens, "access_token", "tokens.access_token")?;
    let id_token = opt_secret(tokens, "id_token", "tokens.id_token")?;
    let mut claims = id_token
        .as_ref()
        .map(|t| codex::id_token_claims(t.expose()))
        .unwrap_or_default();
    if let Some(account) = opt_string(tokens, "account_id", "tokens.account_id")? {
        claims.account_id = Some(account);
    }
    Ok(Draft {
        record_id: None,
        cred: NewCredential {
            id: String::new(),
            provider: ProviderConfig::new(ProviderKind::Codex),
            refresh_token: req_secret(tokens, "refresh_token", "tokens.refresh_token")?,
            expires_at_ms: access_token
                .as_ref()
                .and_then(|t| jwt::expiry_ms(t.expose())),
            access_token,
            id_token,
            claims,
            last_refresh_ms: opt_time(map, "last_refresh", "last_refresh")?,
            api_key,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::testkit::*;
    use crate::secret::Secret;

    #[test]
    fn codex_auth_json() {
        let c = one(include_str!("../../fixtures/import/codex_auth.json"));
        assert_eq!(c.id, "dev@example.com");
        assert_eq!(c.provider, ProviderConfig::new(ProviderKind::Codex));
        assert_eq!(c.refresh_token.expose(), "rt_codex_1");
        assert!(c.access_token.is_some() && c.id_token.is_some());
        assert_eq!(
            c.expires_at_ms,
            Some(1_700_864_000_000),
            "the access token's JWT exp"
        );
        assert_eq!(c.claims, codex_claims("acc-1234"));
        assert_eq!(c.last_refresh_ms, Some(NOW + 123));
        assert_eq!(c.api_key, None);

        let c = one(include_str!(
            "../../fixtures/import/codex_auth_api_key.json"
        ));
        assert_eq!(
            c.api_key.as_ref().map(Secret::expose),
            Some("sk-proj-test-api-key")
        );
        assert_eq!(
            c.expires_at_ms, None,
            "an opaque access token has no known expiry"
        );
        assert_eq!(
            c.claims,
            codex_claims("acc-from-tokens"),
            "tokens.account_id wins"
        );
        assert_eq!(c.last_refresh_ms, Some(NOW));
    }
}
