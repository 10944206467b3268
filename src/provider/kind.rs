//! The default endpoints and the per-provider facts of
//! the refresh grant (`Dialect`) with the claims readers dialects share.
//! Everything else is shared, so a provider file holds only its constants
//! and its claims reader.

use serde_json::{Map, Value};

use super::{claude, codex, google, oauth2};
use crate::credential::{Claims, Encoding, ProviderKind};
use crate::jwt;

/// Upstream URLs, defaulting to the real services; the shell fills them from
/// `TOKENWARDEN_*_URL` overrides. A credential's own `token_url` wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Codex token endpoint.
    pub codex_token: String,
    /// Codex usage (quota) endpoint.
    pub codex_usage: String,
    /// Claude token endpoint.
    pub claude_token: String,
    /// Claude usage (quota) endpoint.
    pub claude_usage: String,
    /// Google token endpoint.
    pub google_token: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints {
            codex_token: "https://auth.openai.com/oauth/token".into(),
            codex_usage: "https://chatgpt.com/backend-api/wham/usage".into(),
            claude_token: "https://console.anthropic.com/v1/oauth/token".into(),
            claude_usage: "https://api.anthropic.com/api/oauth/usage".into(),
            google_token: "https://oauth2.googleapis.com/token".into(),
        }
    }
}

/// The per-provider facts of the refresh grant; the logic is shared.
pub(crate) struct Dialect {
    /// The default token endpoint, from the environment's endpoints; `None`
    /// means the credential must configure `token_url`.
    pub(crate) token_url: fn(&Endpoints) -> Option<&str>,
    /// The public client id sent when the credential sets none.
    pub(crate) client_id: Option<&'static str>,
    /// Whether the credential must configure a `client_id`.
    pub(crate) needs_client_id: bool,
    /// The body encoding when the credential sets none.
    pub(crate) encoding: Encoding,
    /// The `scope` sent with a form-encoded grant when the credential sets none.
    pub(crate) form_scope: Option<&'static str>,
    /// Reads account details from a successful answer's body and id token.
    pub(crate) claims: fn(&Map<String, Value>, Option<&str>) -> Claims,
}

pub(super) fn dialect(kind: ProviderKind) -> &'static Dialect {
    match kind {
        ProviderKind::Codex => &codex::DIALECT,
        ProviderKind::Claude => &claude::DIALECT,
        ProviderKind::Google => &google::DIALECT,
        ProviderKind::OAuth2 => &oauth2::DIALECT,
    }
}

/// How long an access token lives when the answer gives neither
/// `expires_in` nor a JWT `exp` (seconds). One hour everywhere: the common
/// OAuth default, and short enough that a wrong guess costs one early
/// refresh rather than a stream of 401s.
pub fn default_lifetime_secs(kind: ProviderKind) -> i64 {
    match kind {
        ProviderKind::Codex => 3600,
        ProviderKind::Claude => 3600,
        ProviderKind::Google => 3600,
        ProviderKind::OAuth2 => 3600,
    }
}

/// A non-empty string at `path` inside a JSON value (surrounding whitespace
/// removed).
pub(crate) fn str_at(value: &Value, path: &[&str]) -> Option<String> {
    let mut cur = value;
    for key in path {
        cur = cur.get(key)?;
    }
    let s = cur.as_str()?.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// The standard OpenID claims of an id token (payload read, signature not
/// checked): `email`, and `sub` as the user id.
pub fn oidc_claims(id_token: &str) -> Claims {
    let Some(p) = jwt::payload(id_token) else {
        return Claims::default();
    };
    Claims {
        email: str_at(&p, &["email"]),
        user_id: str_at(&p, &["sub"]),
        ..Claims::default()
    }
}

/// [`Dialect::claims`] for providers whose only source is an OpenID id token.
pub(crate) fn oidc_answer_claims(_body: &Map<String, Value>, id_token: Option<&str>) -> Claims {
    id_token.map(oidc_claims).unwrap_or_default()
}
