//! CLIProxyAPI's codex and claude auth files (other fields ignored: these
//! files carry more).

use serde_json::{Map, Value};

use super::error::{ImportError, Result};
use super::fields::{bad, opt_secret, opt_str, opt_string, opt_time, req_secret};
use super::{agree, Draft, ImportOptions};
use crate::credential::{Claims, NewCredential, ProviderConfig};
use crate::provider::{codex, ProviderKind};

pub(super) fn cliproxy(map: &Map<String, Value>, opts: &ImportOptions) -> Result<Draft> {
    let kind = match opt_str(map, "type", "type")? {
        Some("codex") => ProviderKind::Codex,
        Some("claude") => ProviderKind::Claude,
        Some(_) => {
            return Err(bad(
                "type",
                "this CLIProxyAPI file type is not supported; tokenwarden imports type codex and claude",
            ))
        }
        None => return Err(ImportError::MissingField("type".into())),
    };
    agree(opts, "CLIProxyAPI", kind)?;
    let id_token = opt_secret(map, "id_token", "id_token")?;
    let from_file = Claims {
        account_id: opt_string(map, "account_id", "account_id")?,
        email: opt_string(map, "email", "email")?,
        ..Claims::default()
    };
    let claims = match (&id_token, kind) {
        (Some(t), ProviderKind::Codex) => codex::id_token_claims(t.expose()).or(&from_file),
        _ => from_file,
    };
    Ok(Draft {
        record_id: None,
        cred: NewCredential {
            id: String::new(),
            provider: ProviderConfig::new(kind),
            refresh_token: req_secret(map, "refresh_token", "refresh_token")?,
            access_token: opt_secret(map, "access_token", "access_token")?,
            id_token,
            expires_at_ms: opt_time(map, "expired", "expired")?,
            claims,
            last_refresh_ms: opt_time(map, "last_refresh", "last_refresh")?,
            api_key: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::testkit::*;
    use crate::provider::testkit::jwt;
    use crate::secret::Secret;

    #[test]
    fn cliproxy_files() {
        let c = one(include_str!("../../fixtures/import/cliproxy_codex.json"));
        assert_eq!(
            (c.id.as_str(), c.provider.kind),
            ("dev@example.com", ProviderKind::Codex)
        );
        assert_eq!(c.refresh_token.expose(), "rt_cliproxy_1");
        assert_eq!(
            c.expires_at_ms,
            Some(NOW + 10 * 86_400_000),
            "from `expired`, not the JWT"
        );
        assert_eq!(c.claims, codex_claims("acc-1234"));
        assert_eq!(c.last_refresh_ms, Some(NOW));

        let c = one(include_str!("../../fixtures/import/cliproxy_claude.json"));
        assert_eq!(
            (c.id.as_str(), c.provider.kind),
            ("claude-user@example.com", ProviderKind::Claude)
        );
        assert_eq!(
            c.access_token.as_ref().map(Secret::expose),
            Some("sk-ant-oat01-test-access-token")
        );
        assert_eq!(c.expires_at_ms, Some(NOW + 8 * 3_600_000));
        assert_eq!(c.claims.email.as_deref(), Some("claude-user@example.com"));
        assert_eq!(c.id_token, None);

        // The file's fields fill what the id token lacks.
        let id = jwt(r#"{"https://api.openai.com/auth":{"chatgpt_plan_type":"pro"}}"#);
        let text = format!(
            r#"{{"type":"codex","refresh_token":"r","id_token":"{id}","account_id":"acc-9","email":"x@example.com","expired":""}}"#
        );
        let c = one(&text);
        assert_eq!(
            (
                c.claims.account_id.as_deref(),
                c.claims.email.as_deref(),
                c.claims.plan_type.as_deref()
            ),
            (Some("acc-9"), Some("x@example.com"), Some("pro"))
        );
        assert_eq!((c.access_token, c.expires_at_ms), (None, None));
    }
}
