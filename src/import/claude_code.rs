//! Claude Code's login file, `~/.claude/.credentials.json`:
//! `{"claudeAiOauth":{"accessToken","refreshToken","expiresAt" (unix ms),
//! "scopes","subscriptionType"}}` (other fields ignored).

use serde_json::{Map, Value};

use super::error::{ImportError, Result};
use super::fields::{bad, opt_ms, opt_secret, opt_string, req_secret, type_name};
use super::{agree, Draft, ImportOptions};
use crate::credential::{Claims, NewCredential, ProviderConfig};
use crate::provider::ProviderKind;

/// The key that marks the format.
pub(super) const KEY: &str = "claudeAiOauth";

/// The id a Claude Code login gets when `--id` names none: the file holds
/// no e-mail or account id to name it by.
pub(super) const DEFAULT_ID: &str = "claude";

pub(super) fn claude_code(map: &Map<String, Value>, opts: &ImportOptions) -> Result<Draft> {
    agree(opts, "Claude Code .credentials.json", ProviderKind::Claude)?;
    let inner = match map.get(KEY) {
        Some(Value::Object(o)) => o,
        None | Some(Value::Null) => return Err(ImportError::MissingField(KEY.into())),
        Some(other) => {
            return Err(bad(
                KEY,
                format!("expected an object, found {}", type_name(other)),
            ))
        }
    };
    let path = |f: &str| format!("{KEY}.{f}");
    Ok(Draft {
        record_id: Some(DEFAULT_ID.to_owned()),
        cred: NewCredential {
            id: String::new(),
            provider: ProviderConfig::new(ProviderKind::Claude),
            refresh_token: req_secret(inner, "refreshToken", &path("refreshToken"))?,
            access_token: opt_secret(inner, "accessToken", &path("accessToken"))?,
            id_token: None,
            expires_at_ms: opt_ms(inner, "expiresAt", &path("expiresAt"))?,
            claims: Claims {
                plan_type: opt_string(inner, "subscriptionType", &path("subscriptionType"))?,
                ..Claims::default()
            },
            last_refresh_ms: None,
            api_key: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::testkit::*;
    use crate::secret::Secret;

    #[test]
    fn claude_code_credentials() {
        let c = one(include_str!(
            "../../fixtures/import/claude_code_credentials.json"
        ));
        assert_eq!(
            (c.id.as_str(), c.provider.kind),
            (DEFAULT_ID, ProviderKind::Claude)
        );
        assert_eq!(c.provider, ProviderConfig::new(ProviderKind::Claude));
        assert_eq!(c.refresh_token.expose(), "sk-ant-ort01-claude-code-refresh");
        assert_eq!(
            c.access_token.as_ref().map(Secret::expose),
            Some("sk-ant-oat01-claude-code-access")
        );
        assert_eq!(c.expires_at_ms, Some(1_700_028_800_000), "milliseconds");
        assert_eq!(c.claims.plan_type.as_deref(), Some("max"));

        // (file, error)
        let table = [
            (
                r#"{"claudeAiOauth":{}}"#,
                "missing field \"claudeAiOauth.refreshToken\"",
            ),
            (
                r#"{"claudeAiOauth":"x"}"#,
                "field \"claudeAiOauth\": expected an object, found a string",
            ),
            (
                r#"{"claudeAiOauth":{"refreshToken":"r","expiresAt":"soon"}}"#,
                "field \"claudeAiOauth.expiresAt\": expected unix milliseconds, found a string",
            ),
        ];
        for (text, want) in table {
            assert_eq!(import(text).unwrap_err().to_string(), want, "{text}");
        }
        let with_id = import_with(
            r#"{"claudeAiOauth":{"refreshToken":"r"}}"#,
            Some("team-claude"),
            None,
        )
        .unwrap();
        assert_eq!(with_id[0].id, "team-claude");
        let err = import_with(
            r#"{"claudeAiOauth":{"refreshToken":"r"}}"#,
            None,
            Some(ProviderKind::Codex),
        )
        .unwrap_err();
        assert!(err.to_string().contains("Claude Code"), "{err}");
    }
}
