//! Each provider's wire format, as pure functions over data: build the
//! refresh request, read the answer, classify failures. No sockets, no
//! clock reads — the caller passes `now` — so every case is table-tested
//! against the canned bodies in `fixtures/`.

use std::fmt;

use crate::credential::{Claims, ProviderConfig};
use crate::secret::Secret;

pub mod claude;
pub mod codex;
pub mod google;
pub mod oauth2;

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

/// An HTTP request to send upstream, built purely.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `POST` or `GET`.
    pub method: &'static str,
    /// Absolute URL; `http://` only for loopback hosts.
    pub url: String,
    /// Header name/value pairs (may hold secrets: never log them).
    pub headers: Vec<(String, String)>,
    /// Request body (holds the refresh token: never log it).
    pub body: Vec<u8>,
}

impl fmt::Debug for HttpRequest {
    // The headers and body carry secrets; only the target is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpRequest({} {})", self.method, self.url)
    }
}

/// What came back from upstream, read by the shell with a size cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// The raw `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The body (possibly truncated at the shell's cap).
    pub body: Vec<u8>,
}

/// A successful refresh, ready to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// The new access token.
    pub access_token: Secret,
    /// The rotated refresh token, or the old one when none came back.
    pub refresh_token: Secret,
    /// New id token, if one came back.
    pub id_token: Option<Secret>,
    /// Absolute expiry of the access token (unix ms).
    pub expires_at_ms: i64,
    /// Claims found in the answer (unset fields: keep the stored ones).
    pub claims: Claims,
}

/// Whether a failure may clear up by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permanence {
    /// The refresh token is refused for good: the credential is dead.
    Permanent,
    /// Worth retrying later, with backoff.
    Transient,
}

/// A refresh that did not produce tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Permanent or transient.
    pub permanence: Permanence,
    /// Machine-readable code: the upstream's (`invalid_grant`, …) or ours
    /// (`http_503`, `bad_json`, `connect_failed`, `timeout_after_send`, …).
    pub code: String,
    /// Human-readable text; never contains a secret.
    pub message: String,
    /// From `Retry-After`, relative to the answer (ms).
    pub retry_after_ms: Option<i64>,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
}

impl Failure {
    /// A transient failure with no answer from upstream.
    pub fn transient(code: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            permanence: Permanence::Transient,
            code: code.into(),
            message: message.into(),
            retry_after_ms: None,
            status: None,
        }
    }
}

/// The classified answer of a token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// New tokens.
    Success(Tokens),
    /// No tokens, and why.
    Failure(Failure),
}
