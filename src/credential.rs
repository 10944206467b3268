//! The data a credential is made of, as the store keeps it and as imports
//! produce it. Plain data: no I/O.
//!
//! The provider settings' enums ([`ProviderKind`], [`Encoding`],
//! [`ClientAuth`]) are defined here and re-exported by `provider`, so the
//! dependency goes one way: `provider` uses `credential`, never the
//! reverse (ARCHITECTURE.md, architecture invariants).

use std::fmt;

use crate::secret::Secret;
use crate::state::Status;

/// Longest credential id accepted.
pub const MAX_ID_LEN: usize = 128;

/// Checks a pool name: the rules of a credential id (it appears in URLs
/// too), the messages naming a pool.
pub fn validate_pool_name(name: &str) -> Result<(), String> {
    validate_id(name).map_err(|e| e.replacen("credential id", "pool name", 1))
}

/// Checks a credential id: 1–128 characters of `A-Z a-z 0-9 . _ @ + -`.
///
/// Ids appear in URLs and file names, so anything that could be normalised
/// into another path (`/`, `%`, NUL, spaces) is refused rather than escaped.
/// `.` and `..` alone are refused too.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!(
            "credential id must be 1 to {MAX_ID_LEN} characters long"
        ));
    }
    if id == "." || id == ".." {
        return Err("credential id may not be '.' or '..'".into());
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '+' | '-')))
    {
        return Err(format!(
            "credential id contains {bad:?}; use only A-Z a-z 0-9 . _ @ + -"
        ));
    }
    Ok(())
}

/// Which token endpoint dialect a credential speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// OpenAI's auth server, as the Codex CLI uses it.
    Codex,
    /// Anthropic's OAuth server, as Claude Code uses it.
    Claude,
    /// Google's OAuth 2.0 server.
    Google,
    /// Any RFC 6749 server, configured per credential.
    OAuth2,
}

impl ProviderKind {
    /// Every provider, in a stable order.
    pub const ALL: [ProviderKind; 4] = [
        ProviderKind::Codex,
        ProviderKind::Claude,
        ProviderKind::Google,
        ProviderKind::OAuth2,
    ];

    /// The name used in import files, the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Codex => "codex",
            ProviderKind::Claude => "claude",
            ProviderKind::Google => "google",
            ProviderKind::OAuth2 => "oauth2",
        }
    }

    /// Parses [`ProviderKind::as_str`]'s names.
    pub fn parse(s: &str) -> Option<ProviderKind> {
        ProviderKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the refresh grant's body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    Form,
    /// `application/json` (OpenAI's and Anthropic's clients).
    Json,
}

impl Encoding {
    /// `form` or `json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Form => "form",
            Encoding::Json => "json",
        }
    }

    /// Parses [`Encoding::as_str`]'s names.
    pub fn parse(s: &str) -> Option<Encoding> {
        match s {
            "form" => Some(Encoding::Form),
            "json" => Some(Encoding::Json),
            _ => None,
        }
    }
}

/// How a client authenticates to the token endpoint (RFC 6749 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Public client: only `client_id` in the body.
    None,
    /// `client_secret_post`: id and secret in the body.
    Post,
    /// `client_secret_basic`: id and secret in an `Authorization: Basic` header.
    Basic,
}

impl ClientAuth {
    /// `none`, `post` or `basic`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::None => "none",
            ClientAuth::Post => "post",
            ClientAuth::Basic => "basic",
        }
    }

    /// Parses [`ClientAuth::as_str`]'s names.
    pub fn parse(s: &str) -> Option<ClientAuth> {
        match s {
            "none" => Some(ClientAuth::None),
            "post" => Some(ClientAuth::Post),
            "basic" => Some(ClientAuth::Basic),
            _ => None,
        }
    }
}

/// How to reach a credential's token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// Which wire format the token endpoint speaks.
    pub kind: ProviderKind,
    /// Overrides the provider's (or the environment's) token endpoint.
    pub token_url: Option<String>,
    /// Overrides the provider's public client id; required for `oauth2`/`google`.
    pub client_id: Option<String>,
    /// Confidential clients only.
    pub client_secret: Option<Secret>,
    /// Sent with the refresh grant when set.
    pub scope: Option<String>,
    /// Body encoding; `None` means the provider's default.
    pub encoding: Option<Encoding>,
    /// How the client authenticates; `None` means the provider's default.
    pub client_auth: Option<ClientAuth>,
}

impl ProviderConfig {
    /// A provider with all settings at their defaults.
    pub fn new(kind: ProviderKind) -> Self {
        ProviderConfig {
            kind,
            token_url: None,
            client_id: None,
            client_secret: None,
            scope: None,
            encoding: None,
            client_auth: None,
        }
    }
}

/// Who the credential belongs to, read from an id token or a token response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// ChatGPT account id (Codex) or account uuid (Claude).
    pub account_id: Option<String>,
    /// The account's e-mail address.
    pub email: Option<String>,
    /// ChatGPT plan (`plus`, `pro`, …).
    pub plan_type: Option<String>,
    /// ChatGPT user id.
    pub user_id: Option<String>,
    /// Claude organization uuid.
    pub organization_id: Option<String>,
}

impl Claims {
    /// Fills every field `self` lacks from `older`: a refresh answer that
    /// carries no id token must not erase what an earlier one told us.
    pub fn or(self, older: &Claims) -> Claims {
        Claims {
            account_id: self.account_id.or_else(|| older.account_id.clone()),
            email: self.email.or_else(|| older.email.clone()),
            plan_type: self.plan_type.or_else(|| older.plan_type.clone()),
            user_id: self.user_id.or_else(|| older.user_id.clone()),
            organization_id: self
                .organization_id
                .or_else(|| older.organization_id.clone()),
        }
    }
}

/// A credential as an import produces it, before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCredential {
    /// Unique id, checked by [`validate_id`].
    pub id: String,
    /// Token endpoint settings.
    pub provider: ProviderConfig,
    /// The only required secret.
    pub refresh_token: Secret,
    /// Absent → the credential is refreshed before first use.
    pub access_token: Option<Secret>,
    /// OpenID id token, kept for export and claims.
    pub id_token: Option<Secret>,
    /// Absent → the credential is refreshed before first use.
    pub expires_at_ms: Option<i64>,
    /// Account details.
    pub claims: Claims,
    /// When the source says it last refreshed.
    pub last_refresh_ms: Option<i64>,
    /// Codex auth.json `OPENAI_API_KEY`, kept so export round-trips it.
    pub api_key: Option<Secret>,
}

/// The last failure of a credential, as shown in its summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// Machine-readable code (`refresh_token_reused`, `http_503`, …).
    pub code: String,
    /// Human-readable text, scrubbed of secrets.
    pub message: String,
    /// When it happened (unix ms).
    pub at_ms: i64,
}

/// A stored credential: the row of the `credentials` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Unique id.
    pub id: String,
    /// Token endpoint settings.
    pub provider: ProviderConfig,
    /// Everything the state machine looks at.
    pub status: Status,
    /// Current access token, if any.
    pub access_token: Option<Secret>,
    /// Current refresh token.
    pub refresh_token: Secret,
    /// Current id token, if any.
    pub id_token: Option<Secret>,
    /// Account details.
    pub claims: Claims,
    /// The last failure, if the last attempt failed or the credential is dead.
    pub last_error: Option<LastError>,
    /// Codex auth.json `OPENAI_API_KEY`, if imported.
    pub api_key: Option<Secret>,
    /// Creation time (unix ms).
    pub created_ms: i64,
    /// Last change (unix ms).
    pub updated_ms: i64,
    /// When the current run of failed refreshes began (unix ms); `None`
    /// while the last refresh did not fail.
    pub failing_since_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "me@example.com", "team+1", "A.b_c-d", &"x".repeat(128)] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a%2fb",
            "a\0b",
            "a b",
            "é",
            "a?b",
            &"x".repeat(129),
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
