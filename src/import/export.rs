//! The export formats: a Codex CLI `auth.json`, a CLIProxyAPI auth file,
//! Claude Code's `.credentials.json` and Gemini CLI's `oauth_creds.json`,
//! written from a stored credential.

use serde::Serialize;
use thiserror::Error;

use crate::credential::Credential;
use crate::provider::{claude, google, ProviderKind};
use crate::rfc3339;
use crate::secret::Secret;

/// Why a credential cannot be exported in a format.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExportError {
    /// The format cannot hold this provider's credentials.
    #[error("a {provider} credential cannot be exported as {format}; that format holds only {supported} credentials")]
    Unsupported {
        /// `codex`, `cliproxy`, `claude-code` or `gemini`.
        format: &'static str,
        /// The credential's provider.
        provider: ProviderKind,
        /// What the format holds.
        supported: &'static str,
    },
    /// Serialising failed (not expected to happen).
    #[error("cannot write JSON: {0}")]
    Json(String),
}

#[derive(Serialize)]
struct CodexAuthOut<'a> {
    #[serde(rename = "OPENAI_API_KEY")]
    openai_api_key: Option<&'a str>,
    tokens: CodexTokensOut<'a>,
    last_refresh: String,
}

#[derive(Serialize)]
struct CodexTokensOut<'a> {
    id_token: Option<&'a str>,
    access_token: Option<&'a str>,
    refresh_token: &'a str,
    account_id: Option<&'a str>,
}

#[derive(Serialize)]
struct CliProxyOut<'a> {
    id_token: &'a str,
    access_token: &'a str,
    refresh_token: &'a str,
    account_id: &'a str,
    last_refresh: String,
    email: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    expired: String,
}

#[derive(Serialize)]
struct ClaudeCodeOut<'a> {
    #[serde(rename = "claudeAiOauth")]
    oauth: ClaudeCodeOauthOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClaudeCodeOauthOut<'a> {
    access_token: Option<&'a str>,
    refresh_token: &'a str,
    expires_at: Option<i64>,
    scopes: Vec<&'a str>,
    subscription_type: Option<&'a str>,
}

#[derive(Serialize)]
struct GeminiOut<'a> {
    access_token: Option<&'a str>,
    refresh_token: &'a str,
    scope: &'a str,
    token_type: &'static str,
    id_token: Option<&'a str>,
    expiry_date: Option<i64>,
}

/// When the credential last refreshed, else when it last changed.
fn last_refresh_ms(c: &Credential) -> i64 {
    c.status.last_refresh_ms.unwrap_or(c.updated_ms)
}

fn pretty(value: &impl Serialize) -> Result<String, ExportError> {
    serde_json::to_string_pretty(value).map_err(|e| ExportError::Json(e.to_string()))
}

/// Writes a Codex credential as a Codex CLI `auth.json` (pretty JSON):
/// `OPENAI_API_KEY` (`null` if none), `tokens` (`id_token`, `access_token`,
/// `refresh_token`, `account_id`; `null` when absent) and `last_refresh`
/// (RFC 3339; the last refresh, else the last change). The caller writes it with mode 0600: it holds secrets.
pub fn export_codex(c: &Credential) -> Result<String, ExportError> {
    if c.provider.kind != ProviderKind::Codex {
        return Err(ExportError::Unsupported {
            format: "codex",
            provider: c.provider.kind,
            supported: "codex",
        });
    }
    pretty(&CodexAuthOut {
        openai_api_key: c.api_key.as_ref().map(Secret::expose),
        tokens: CodexTokensOut {
            id_token: c.id_token.as_ref().map(Secret::expose),
            access_token: c.access_token.as_ref().map(Secret::expose),
            refresh_token: c.refresh_token.expose(),
            account_id: c.claims.account_id.as_deref(),
        },
        last_refresh: rfc3339::format(last_refresh_ms(c)),
    })
}

/// Writes a Codex or Claude credential as a CLIProxyAPI auth file (pretty
/// JSON). Absent values are empty strings, as CLIProxyAPI writes them;
/// `expired` is the access token's expiry (RFC 3339), empty when unknown.
pub fn export_cliproxy(c: &Credential) -> Result<String, ExportError> {
    let kind = match c.provider.kind {
        ProviderKind::Codex | ProviderKind::Claude => c.provider.kind.as_str(),
        other => {
            return Err(ExportError::Unsupported {
                format: "cliproxy",
                provider: other,
                supported: "codex and claude",
            })
        }
    };
    let expose = |s: &'_ Option<Secret>| s.as_ref().map_or("", Secret::expose).to_owned();
    let (id_token, access_token) = (expose(&c.id_token), expose(&c.access_token));
    let expired = match (&c.access_token, c.status.expires_at_ms) {
        (Some(_), Some(ms)) => rfc3339::format(ms),
        _ => String::new(),
    };
    pretty(&CliProxyOut {
        id_token: &id_token,
        access_token: &access_token,
        refresh_token: c.refresh_token.expose(),
        account_id: c.claims.account_id.as_deref().unwrap_or_default(),
        last_refresh: rfc3339::format(last_refresh_ms(c)),
        email: c.claims.email.as_deref().unwrap_or_default(),
        kind,
        expired,
    })
}

/// The access token's expiry when there is an access token.
fn access_expiry(c: &Credential) -> Option<i64> {
    c.access_token.as_ref().and(c.status.expires_at_ms)
}

/// Writes a Claude credential as Claude Code's `~/.claude/.credentials.json`
/// (pretty JSON): `claudeAiOauth` with `accessToken`, `refreshToken`,
/// `expiresAt` (unix ms; `null` when unknown), `scopes` (the credential's
/// scope, else Claude Code's own, which include `user:inference`: Claude
/// Code takes a login without it for a console one) and `subscriptionType`
/// (the plan). The caller writes it with mode 0600.
pub fn export_claude_code(c: &Credential) -> Result<String, ExportError> {
    if c.provider.kind != ProviderKind::Claude {
        return Err(ExportError::Unsupported {
            format: "claude-code",
            provider: c.provider.kind,
            supported: "claude",
        });
    }
    let scopes = c.provider.scope.as_deref().unwrap_or(claude::SCOPES);
    pretty(&ClaudeCodeOut {
        oauth: ClaudeCodeOauthOut {
            access_token: c.access_token.as_ref().map(Secret::expose),
            refresh_token: c.refresh_token.expose(),
            expires_at: access_expiry(c),
            scopes: scopes.split_whitespace().collect(),
            subscription_type: c.claims.plan_type.as_deref(),
        },
    })
}

/// Writes a Google credential of Gemini CLI's client as Gemini CLI's
/// `~/.gemini/oauth_creds.json` (pretty JSON): `access_token`,
/// `refresh_token`, `scope`, `token_type` (`Bearer`), `id_token`,
/// `expiry_date` (unix ms). A Google credential of another client is
/// refused: Gemini CLI refreshes with its own client id, which Google
/// refuses for another client's refresh token.
pub fn export_gemini(c: &Credential) -> Result<String, ExportError> {
    if c.provider.kind != ProviderKind::Google
        || c.provider.client_id.as_deref() != Some(google::GEMINI_CLI_CLIENT_ID)
    {
        return Err(ExportError::Unsupported {
            format: "gemini",
            provider: c.provider.kind,
            supported:
                "google credentials of Gemini CLI's client (imported from its oauth_creds.json)",
        });
    }
    pretty(&GeminiOut {
        access_token: c.access_token.as_ref().map(Secret::expose),
        refresh_token: c.refresh_token.expose(),
        scope: c
            .provider
            .scope
            .as_deref()
            .unwrap_or(google::GEMINI_CLI_SCOPES),
        token_type: "Bearer",
        id_token: c.id_token.as_ref().map(Secret::expose),
        expiry_date: access_expiry(c),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::credential::{NewCredential, ProviderConfig};
    use crate::import::testkit::*;
    use crate::state::Status;

    fn stored(kind: ProviderKind, new: &NewCredential, last_refresh_ms: i64) -> Credential {
        Credential {
            failing_since_ms: None,
            id: new.id.clone(),
            provider: ProviderConfig {
                kind,
                ..new.provider.clone()
            },
            status: Status {
                expires_at_ms: new.expires_at_ms,
                has_access_token: new.access_token.is_some(),
                last_refresh_ms: Some(last_refresh_ms),
                ..Status::default()
            },
            access_token: new.access_token.clone(),
            refresh_token: new.refresh_token.clone(),
            id_token: new.id_token.clone(),
            claims: new.claims.clone(),
            last_error: None,
            api_key: new.api_key.clone(),
            created_ms: NOW,
            updated_ms: NOW + 5,
        }
    }

    #[test]
    fn codex_export_round_trips() {
        for fixture in [
            include_str!("../../fixtures/import/codex_auth.json"),
            include_str!("../../fixtures/import/codex_auth_api_key.json"),
        ] {
            let original = one(fixture);
            let cred = stored(ProviderKind::Codex, &original, NOW + 42);
            let text = export_codex(&cred).unwrap();
            let back = one(&text);
            assert_eq!(
                back,
                NewCredential {
                    last_refresh_ms: Some(NOW + 42),
                    ..original
                }
            );
            let v: Value = serde_json::from_str(&text).unwrap();
            assert!(v["tokens"]["refresh_token"].is_string() && v.get("last_refresh").is_some());
        }
        // Nothing known: nulls, and the last change as last_refresh.
        let mut bare = stored(
            ProviderKind::Codex,
            &one(r#"{"id":"x","provider":"codex","refresh_token":"r"}"#),
            0,
        );
        bare.status.last_refresh_ms = None;
        let v: Value = serde_json::from_str(&export_codex(&bare).unwrap()).unwrap();
        assert_eq!(v["OPENAI_API_KEY"], Value::Null);
        assert_eq!(v["tokens"]["access_token"], Value::Null);
        assert_eq!(v["tokens"]["account_id"], Value::Null);
        assert_eq!(v["last_refresh"], "2023-11-14T22:13:20.005Z");
    }

    #[test]
    fn cliproxy_export_round_trips() {
        for fixture in [
            include_str!("../../fixtures/import/cliproxy_codex.json"),
            include_str!("../../fixtures/import/cliproxy_claude.json"),
        ] {
            let original = one(fixture);
            let cred = stored(original.provider.kind, &original, NOW + 1);
            let text = export_cliproxy(&cred).unwrap();
            let back = one(&text);
            assert_eq!(
                back,
                NewCredential {
                    last_refresh_ms: Some(NOW + 1),
                    ..original
                }
            );
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["type"], cred.provider.kind.as_str());
        }
        // Unknown values are empty strings, as CLIProxyAPI writes them.
        let bare = stored(
            ProviderKind::Claude,
            &one(r#"{"id":"x","provider":"claude","refresh_token":"r"}"#),
            NOW,
        );
        let v: Value = serde_json::from_str(&export_cliproxy(&bare).unwrap()).unwrap();
        for key in ["access_token", "id_token", "account_id", "email", "expired"] {
            assert_eq!(v[key], "", "{key}");
        }
        assert_eq!(v["last_refresh"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn claude_code_and_gemini_exports_round_trip() {
        // (fixture, writer)
        type Writer = fn(&Credential) -> Result<String, ExportError>;
        let table: [(&str, Writer); 2] = [
            (
                include_str!("../../fixtures/import/claude_code_credentials.json"),
                export_claude_code,
            ),
            (
                include_str!("../../fixtures/import/gemini_oauth_creds.json"),
                export_gemini,
            ),
        ];
        for (fixture, write) in table {
            let original = one(fixture);
            let cred = stored(original.provider.kind, &original, NOW);
            let text = write(&cred).unwrap();
            assert_eq!(one(&text), original, "{text}");
        }
        let claude = one(include_str!(
            "../../fixtures/import/claude_code_credentials.json"
        ));
        let v: Value = serde_json::from_str(
            &export_claude_code(&stored(ProviderKind::Claude, &claude, NOW)).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v["claudeAiOauth"]["scopes"],
            serde_json::json!(["org:create_api_key", "user:profile", "user:inference"])
        );
        assert_eq!(v["claudeAiOauth"]["expiresAt"], 1_700_028_800_000_i64);
        let gemini = one(include_str!(
            "../../fixtures/import/gemini_oauth_creds.json"
        ));
        let v: Value = serde_json::from_str(
            &export_gemini(&stored(ProviderKind::Google, &gemini, NOW)).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (v["token_type"].as_str(), v["expiry_date"].as_i64()),
            (Some("Bearer"), Some(1_700_003_599_000))
        );
    }

    #[test]
    fn export_refuses_other_providers() {
        let base = one(r#"{"id":"x","provider":"google","client_id":"c","refresh_token":"r"}"#);
        // (provider, codex ok, cliproxy ok, claude-code ok); gemini: only
        // Gemini CLI's client (the round-trip test above)
        let table = [
            (ProviderKind::Codex, true, true, false),
            (ProviderKind::Claude, false, true, true),
            (ProviderKind::Google, false, false, false),
            (ProviderKind::OAuth2, false, false, false),
        ];
        for (kind, codex_ok, cliproxy_ok, claude_ok) in table {
            let c = stored(kind, &base, NOW);
            assert_eq!(export_codex(&c).is_ok(), codex_ok, "{kind}");
            assert_eq!(export_cliproxy(&c).is_ok(), cliproxy_ok, "{kind}");
            assert_eq!(export_claude_code(&c).is_ok(), claude_ok, "{kind}");
            assert!(export_gemini(&c).is_err(), "{kind}: client id c");
        }
        let err = export_cliproxy(&stored(ProviderKind::Google, &base, NOW)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a google credential cannot be exported as cliproxy; that format holds only codex and claude credentials"
        );
    }
}
