//! Each provider's wire format, as pure functions over data: build the
//! refresh request, read the answer, classify failures. No sockets, no
//! clock reads — the caller passes `now` — so every case is table-tested
//! against the canned bodies in `fixtures/`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

use crate::credential::{Claims, ProviderConfig};
use crate::secret::Secret;
use crate::{jwt, rfc3339};

pub mod claude;
pub mod codex;
pub mod google;
pub mod oauth2;
pub mod usage;

// The provider settings' enums are credential data: they live in
// `credential`, which names nothing of `provider` (ARCHITECTURE.md).
pub use crate::credential::{ClientAuth, Encoding, ProviderKind};

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

// ---------------------------------------------------------------------------
// What differs between providers. Everything below it is shared, so a
// provider file holds only its constants and its claims reader.
// ---------------------------------------------------------------------------

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

fn dialect(kind: ProviderKind) -> &'static Dialect {
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

/// The longest `expires_in` believed (ten years); longer values are capped.
const MAX_LIFETIME_SECS: f64 = 10.0 * 365.0 * 86_400.0;

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

// ---------------------------------------------------------------------------
// Building the refresh request.
// ---------------------------------------------------------------------------

/// Percent-encodes one component the `application/x-www-form-urlencoded`
/// way: `A-Z a-z 0-9 * - . _` stay, a space becomes `+`, every other byte
/// of the UTF-8 text becomes `%XX`.
pub fn form_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Encodes name/value pairs as an `application/x-www-form-urlencoded` body.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_component(k), form_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Decodes an `application/x-www-form-urlencoded` body into name/value
/// pairs, in order. Lenient, for mock servers and tests: a malformed `%`
/// escape is kept as it is, and bytes that are not UTF-8 become U+FFFD.
pub fn form_decode(body: &str) -> Vec<(String, String)> {
    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = b
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (b[i], hex) {
                (b'+', _) => out.push(b' '),
                (b'%', Some(v)) => {
                    out.push(v);
                    i += 2;
                }
                (c, _) => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

/// The host of a URL authority (`host[:port]`, `[v6][:port]`), if well formed.
/// User info is refused by the caller before this is reached.
pub(crate) fn url_host(authority: &str) -> Option<&str> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let end = rest.find(']')?;
            rest[..end].parse::<Ipv6Addr>().ok()?;
            (&authority[..end + 2], &rest[end + 1..])
        }
        None => {
            let host = authority.split(':').next().unwrap_or_default();
            let ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            (ok.then_some(host)?, &authority[host.len()..])
        }
    };
    if !port.is_empty() {
        let p = port.strip_prefix(':')?;
        let ok = (1..=5).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65_535).contains(&n));
        if !ok {
            return None;
        }
    }
    Some(host)
}

/// `localhost`, an address in 127.0.0.0/8, or `[::1]`.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    }
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks a token endpoint URL: absolute `https://`, or plain `http://` only
/// for a loopback host (127.0.0.0/8, `localhost`, `[::1]`). User info
/// (`user:pass@`), whitespace and malformed hosts or ports are refused. The
/// error names the host at most, never the path or query.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("token URL contains whitespace or control characters".into());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("token URL is not an absolute URL; expected https://host/path".into());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "token URL may not contain user info (user:password@); set client_id/client_secret instead"
                .into(),
        );
    }
    let host = url_host(authority).ok_or("token URL has no valid host[:port]")?;
    if scheme.eq_ignore_ascii_case("https") {
        Ok(())
    } else if scheme.eq_ignore_ascii_case("http") {
        if is_loopback_host(host) {
            Ok(())
        } else {
            Err(format!(
                "token URL uses plain http:// for {host}; use https:// \
                 (http:// is allowed only for loopback hosts: 127.0.0.0/8, localhost, [::1])"
            ))
        }
    } else {
        Err("token URL must start with https:// (or http:// for a loopback host)".into())
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.trim().is_empty())
}

/// The client authentication in effect: the configured one, else `post`
/// when a client secret is set, else `none`.
pub fn effective_client_auth(cfg: &ProviderConfig) -> ClientAuth {
    cfg.client_auth.unwrap_or(
        if non_empty(cfg.client_secret.as_ref().map(Secret::expose)).is_some() {
            ClientAuth::Post
        } else {
            ClientAuth::None
        },
    )
}

/// Checks a credential's token endpoint settings on their own: the
/// `token_url` rule of [`check_url`], `token_url` + `client_id` for
/// `oauth2`, `client_id` for `google`, and a client secret (plus a client
/// id for `basic`) when the client authentication needs one. The error
/// names the setting, never a secret.
pub fn check_config(cfg: &ProviderConfig) -> Result<(), String> {
    let (kind, d) = (cfg.kind, dialect(cfg.kind));
    match &cfg.token_url {
        Some(url) => check_url(url)?,
        None if (d.token_url)(&Endpoints::default()).is_none() => {
            return Err(format!("{kind} credentials need a token_url"));
        }
        None => {}
    }
    let client_id = non_empty(cfg.client_id.as_deref());
    if d.needs_client_id && client_id.is_none() {
        return Err(format!("{kind} credentials need a client_id"));
    }
    let has_secret = non_empty(cfg.client_secret.as_ref().map(Secret::expose)).is_some();
    match effective_client_auth(cfg) {
        ClientAuth::None => Ok(()),
        auth @ (ClientAuth::Post | ClientAuth::Basic) if !has_secret => Err(format!(
            "client_auth {} needs a client_secret",
            auth.as_str()
        )),
        ClientAuth::Basic if client_id.or(d.client_id).is_none() => {
            Err("client_auth basic needs a client_id".into())
        }
        _ => Ok(()),
    }
}

/// Builds the refresh grant (RFC 6749 §6) for a credential.
///
/// The token URL is the credential's `token_url`, else the provider's entry
/// in `endpoints` (`oauth2` has none). The body is the provider's encoding
/// unless the credential sets one; the client authenticates as
/// [`effective_client_auth`] says (`basic`:
/// `Authorization: Basic base64(urlenc(id):urlenc(secret))`, and then no
/// client id in the body). Every request carries `Content-Type` and
/// `Accept: application/json`.
///
/// The error explains a configuration problem (see [`check_config`]) and
/// never contains a secret.
pub fn refresh_request(
    cfg: &ProviderConfig,
    refresh_token: &Secret,
    endpoints: &Endpoints,
) -> Result<HttpRequest, String> {
    check_config(cfg)?;
    if refresh_token.expose().trim().is_empty() {
        return Err("the credential has no refresh token".into());
    }
    let (kind, d) = (cfg.kind, dialect(cfg.kind));
    let url = match &cfg.token_url {
        Some(url) => url.as_str(),
        None => (d.token_url)(endpoints)
            .ok_or_else(|| format!("{kind} credentials need a token_url"))?,
    };
    check_url(url)?;
    let client_id = non_empty(cfg.client_id.as_deref()).or(d.client_id);
    let secret = non_empty(cfg.client_secret.as_ref().map(Secret::expose));
    let encoding = cfg.encoding.unwrap_or(d.encoding);

    let mut fields = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose()),
    ];
    let mut headers = vec![];
    match (effective_client_auth(cfg), client_id, secret) {
        (ClientAuth::Basic, Some(id), Some(secret)) => {
            let pair = format!("{}:{}", form_component(id), form_component(secret));
            headers.push((
                "Authorization".to_owned(),
                format!("Basic {}", STANDARD.encode(pair)),
            ));
        }
        (ClientAuth::Post, id, Some(secret)) => {
            fields.extend(id.map(|id| ("client_id", id)));
            fields.push(("client_secret", secret));
        }
        // `check_config` has refused `basic`/`post` without what they need.
        (_, id, _) => fields.extend(id.map(|id| ("client_id", id))),
    }
    let default_scope = if encoding == Encoding::Form {
        d.form_scope
    } else {
        None
    };
    fields.extend(
        non_empty(cfg.scope.as_deref())
            .or(default_scope)
            .map(|s| ("scope", s)),
    );

    let (content_type, body) = match encoding {
        Encoding::Form => (
            "application/x-www-form-urlencoded",
            form_encode(&fields).into_bytes(),
        ),
        Encoding::Json => {
            let map: Map<String, Value> = fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                .collect();
            (
                "application/json",
                Value::Object(map).to_string().into_bytes(),
            )
        }
    };
    headers.insert(0, ("Content-Type".to_owned(), content_type.to_owned()));
    headers.insert(1, ("Accept".to_owned(), "application/json".to_owned()));
    Ok(HttpRequest {
        method: "POST",
        url: url.to_owned(),
        headers,
        body,
    })
}

// ---------------------------------------------------------------------------
// Reading the answer.
// ---------------------------------------------------------------------------

/// Upstream codes that refuse a refresh token for good (→ `dead`) when they
/// come with status 400 or 401 (or in a 200 with an `error` field).
pub const PERMANENT_CODES: [&str; 9] = [
    "invalid_grant",
    "refresh_token_reused",
    "refresh_token_expired",
    "refresh_token_invalidated",
    "refresh_token_revoked",
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
];

/// Upstream codes that mean "try again later", whatever the status: RFC
/// 6749's `temporarily_unavailable`/`server_error`, RFC 8628's `slow_down`,
/// and the rate-limit / overload codes and error types of OpenAI and
/// Anthropic.
pub const TRANSIENT_CODES: [&str; 9] = [
    "temporarily_unavailable",
    "server_error",
    "slow_down",
    "rate_limit_exceeded",
    "rate_limit_error",
    "overloaded_error",
    "api_error",
    "internal_server_error",
    "service_unavailable",
];

/// Whether `code` is one of [`PERMANENT_CODES`].
pub fn is_permanent_code(code: &str) -> bool {
    PERMANENT_CODES.contains(&code)
}

/// Whether `code` is one of [`TRANSIENT_CODES`].
pub fn is_transient_code(code: &str) -> bool {
    TRANSIENT_CODES.contains(&code)
}

/// The longest upstream message kept in a [`Failure`] (characters).
const MAX_MESSAGE_CHARS: usize = 200;
/// The longest excerpt of a non-JSON body kept in a [`Failure`].
const MAX_EXCERPT_CHARS: usize = 100;
/// A non-JSON body longer than this is described by its size only.
const MAX_EXCERPT_BODY: usize = 200;
/// The longest `Retry-After` honoured (one day), in ms.
pub const MAX_RETRY_AFTER_MS: i64 = 86_400_000;

/// Reads a token endpoint's answer.
///
/// Success is a 2xx JSON object with a non-empty string `access_token` and
/// no (non-null) `error` field. A missing or empty `refresh_token` keeps
/// `old_refresh`. The expiry is `expires_in` (number or numeric string) if
/// positive, floored at 1 s and capped at ten years; else the access
/// token's JWT `exp`; else [`default_lifetime_secs`]. Claims come from the
/// provider's reader (id token or body).
///
/// Anything else is a [`Failure`], classified once for every provider:
///
/// | status | body | outcome |
/// |---|---|---|
/// | 2xx | not a JSON object | transient `bad_json` |
/// | 2xx | a known code (permanent or transient list), with `error` or without `access_token` | as a 400 with that code |
/// | 2xx | `error` with no code or an unknown one | transient `upstream_error` |
/// | 2xx | no usable `access_token` | transient `no_access_token` |
/// | 400 | permanent code | permanent, that code |
/// | 400 | other code | transient, that code |
/// | 400 | no code / not JSON | transient `http_400` / `bad_json` |
/// | 401 | known transient code | transient, that code |
/// | 401 | any other code | permanent, that code |
/// | 401 | JSON with no code, or an empty body | permanent `unauthorized` |
/// | 401 | a non-empty body that is not JSON | transient `bad_json` |
/// | 408, 429, 5xx, other | anything | transient `http_<status>` |
///
/// The 401 rule (DESIGN.md §6, §7): a JSON 401 is the token endpoint
/// itself refusing the grant, so it is final even without a code (as the
/// Codex CLI treats it), and so is a bare 401 with nothing in its body. A
/// 401 whose body is an HTML (or any other non-JSON) page comes from a
/// gateway, proxy or captive portal in front of it, which says nothing
/// about the refresh token: killing the credential over it would force a
/// human to log in again for a network problem, so it backs off instead.
///
/// The code is read from `error.code`, then `error` (a string), then a
/// top-level `code`; `error.type` counts only when it is a known transient
/// code (Anthropic's `rate_limit_error`, `overloaded_error`, …), since
/// OpenAI's `invalid_request_error` says nothing about the token. Codes are
/// lower-cased. A `Retry-After` header, when present and readable, is
/// attached to every failure.
///
/// Nothing of a 2xx body reaches the failure (it may carry new tokens, even
/// when truncated or malformed): no excerpt, no upstream message, and a
/// code only when it is one of ours ([`PERMANENT_CODES`],
/// [`TRANSIENT_CODES`]). For other statuses the message quotes
/// `error_description` / `error.message` / `message` (200 characters at
/// most), or a short non-JSON body (printable ASCII, 100 characters), after
/// [`scrub`] has replaced `old_refresh`, the values of `access_token`,
/// `refresh_token` and `id_token`, and anything that looks like a token
/// with `***`.
pub fn parse_refresh(
    kind: ProviderKind,
    resp: &HttpResponse,
    old_refresh: &Secret,
    now_ms: i64,
) -> Outcome {
    let body = match serde_json::from_slice::<Value>(&resp.body) {
        Ok(Value::Object(map)) => Body::Object(map),
        Ok(_) => Body::OtherJson,
        Err(_) => Body::NotJson,
    };
    if let (true, Body::Object(map)) = ((200..300).contains(&resp.status), &body) {
        if !has_error(map) {
            if let Some(tokens) = read_tokens(kind, map, old_refresh, now_ms) {
                return Outcome::Success(tokens);
            }
        }
    }
    let mut failure = classify(resp.status, &body, &resp.body, old_refresh);
    failure.retry_after_ms = resp
        .retry_after
        .as_deref()
        .and_then(|v| parse_retry_after(v, now_ms));
    Outcome::Failure(failure)
}

/// What the body of an answer turned out to be.
enum Body {
    Object(Map<String, Value>),
    OtherJson,
    NotJson,
}

fn has_error(map: &Map<String, Value>) -> bool {
    map.get("error").is_some_and(|e| !e.is_null())
}

fn read_tokens(
    kind: ProviderKind,
    map: &Map<String, Value>,
    old_refresh: &Secret,
    now_ms: i64,
) -> Option<Tokens> {
    let string = |key: &str| {
        map.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
    };
    let access = string("access_token")?;
    let id_token = string("id_token");
    let expires_at_ms = match expires_in_secs(map.get("expires_in")) {
        Some(secs) => now_ms.saturating_add((secs * 1000.0) as i64),
        None => jwt::expiry_ms(access)
            .unwrap_or_else(|| now_ms.saturating_add(default_lifetime_secs(kind) * 1000)),
    };
    Some(Tokens {
        access_token: Secret::new(access),
        refresh_token: string("refresh_token").map_or_else(|| old_refresh.clone(), Secret::new),
        id_token: id_token.map(Secret::new),
        expires_at_ms,
        claims: (dialect(kind).claims)(map, id_token),
    })
}

/// `expires_in` as seconds, if it is a positive number (or numeric string);
/// floored at 1 s, capped at [`MAX_LIFETIME_SECS`].
fn expires_in_secs(value: Option<&Value>) -> Option<f64> {
    let secs = match value? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (secs.is_finite() && secs > 0.0).then(|| secs.clamp(1.0, MAX_LIFETIME_SECS))
}

/// An error code as upstream sent it, normalised: trimmed, lower-cased,
/// characters outside `a-z 0-9 _ . : -` replaced by `_`, at most 64 long.
fn normalize_code(raw: &str) -> Option<String> {
    let code: String = raw
        .trim()
        .chars()
        .take(64)
        .map(|c| c.to_ascii_lowercase())
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '.' | ':' | '-' => c,
            _ => '_',
        })
        .collect();
    (!code.is_empty()).then_some(code)
}

/// The code and message of an error body, in any of the three shapes.
fn upstream_error(map: &Map<String, Value>, secrets: &[&str]) -> (Option<String>, Option<String>) {
    let err = map.get("error");
    let nested = |key: &str| err.and_then(|e| e.get(key)).and_then(Value::as_str);
    let code_of = |s: &str| normalize_code(&scrub(s, secrets));
    let code = nested("code")
        .and_then(code_of)
        .or_else(|| err.and_then(Value::as_str).and_then(code_of))
        .or_else(|| map.get("code").and_then(Value::as_str).and_then(code_of))
        .or_else(|| {
            nested("type")
                .and_then(code_of)
                .filter(|t| is_transient_code(t))
        });
    let message = map
        .get("error_description")
        .and_then(Value::as_str)
        .or_else(|| nested("message"))
        .or_else(|| map.get("message").and_then(Value::as_str))
        .map(|m| clean(&scrub(m, secrets), MAX_MESSAGE_CHARS, false))
        .filter(|m| !m.is_empty());
    (code, message)
}

fn classify(status: u16, body: &Body, raw: &[u8], old_refresh: &Secret) -> Failure {
    use Permanence::{Permanent, Transient};
    let secrets = [old_refresh.expose()];
    let success = (200..300).contains(&status);
    let (code, message) = match body {
        Body::Object(map) => upstream_error(map, &secrets),
        _ => (None, None),
    };
    // A 2xx body may hold new tokens: only a code we know, which is our own
    // constant rather than upstream's text, comes out of it.
    let (code, message) = match success {
        true => (
            code.filter(|c| is_permanent_code(c) || is_transient_code(c)),
            None,
        ),
        false => (code, message),
    };
    let is_object = matches!(body, Body::Object(_));
    let by_400 = |c: &String| {
        let p = if is_permanent_code(c) {
            Permanent
        } else {
            Transient
        };
        (p, c.clone())
    };
    let blank = raw.iter().all(u8::is_ascii_whitespace);
    let (permanence, our_code) = match status {
        200..=299 if !is_object => (Transient, "bad_json".to_owned()),
        200..=299 => match (&code, body) {
            (Some(c), _) => by_400(c),
            (None, Body::Object(map)) if has_error(map) => (Transient, "upstream_error".into()),
            (None, _) => (Transient, "no_access_token".into()),
        },
        400 => match &code {
            Some(c) => by_400(c),
            None if !is_object => (Transient, "bad_json".into()),
            None => (Transient, "http_400".into()),
        },
        401 => match &code {
            Some(c) if is_transient_code(c) => (Transient, c.clone()),
            Some(c) => (Permanent, c.clone()),
            // A gateway's or proxy's page, not the token endpoint's answer.
            None if matches!(body, Body::NotJson) && !blank => (Transient, "bad_json".into()),
            None => (Permanent, "unauthorized".into()),
        },
        _ => (Transient, format!("http_{status}")),
    };

    let mut text = format!("token endpoint answered HTTP {status}");
    match body {
        Body::NotJson if blank => text.push_str(" with an empty body"),
        Body::NotJson if success => text.push_str(&format!(
            " with a {}-byte body that is not JSON (not quoted: a 2xx body may hold new tokens)",
            raw.len()
        )),
        Body::NotJson if raw.len() <= MAX_EXCERPT_BODY => {
            let excerpt = clean(
                &scrub(&String::from_utf8_lossy(raw), &secrets),
                MAX_EXCERPT_CHARS,
                true,
            );
            text.push_str(&format!(" with a body that is not JSON: {excerpt:?}"));
        }
        Body::NotJson => {
            text.push_str(&format!(" with a {}-byte body that is not JSON", raw.len()))
        }
        Body::OtherJson => text.push_str(" with JSON that is not an object"),
        Body::Object(_) if our_code == "no_access_token" => {
            text.push_str(" without an access_token")
        }
        Body::Object(_) if success && code.is_none() => text.push_str(
            " with an error and no known code (not quoted: a 2xx body may hold new tokens)",
        ),
        Body::Object(_) => {}
    }
    if let Some(c) = &code {
        text.push_str(&format!(" ({c})"));
    }
    if let Some(m) = message {
        text.push_str(": ");
        text.push_str(&m);
    }
    Failure {
        permanence,
        code: our_code,
        message: text,
        retry_after_ms: None,
        status: Some(status),
    }
}

/// Whether a run of token characters looks like a credential: long, with
/// both letters and digits (JWTs, opaque tokens, keys); anything that
/// starts like a JWT (`eyJ`, base64 of `{"`), even cut short; or a long
/// run of the base64url alphabet alone.
fn looks_like_token(run: &str) -> bool {
    let b64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    (run.len() >= 24
        && run.bytes().any(|b| b.is_ascii_digit())
        && run.bytes().any(|b| b.is_ascii_alphabetic()))
        || (run.len() >= 8
            && run
                .split(['.', '/', '=', '+', '~'])
                .any(|p| p.starts_with("eyJ")))
        || (run.len() >= 32 && run.bytes().all(b64url))
}

/// The names whose values are always secret, wherever they appear.
const TOKEN_FIELDS: [&str; 3] = ["access_token", "refresh_token", "id_token"];

/// Replaces the value after each `access_token`, `refresh_token` or
/// `id_token` (as a JSON member, `"name": "value"`, or a form or header
/// pair, `name=value`) with `***`, whatever it looks like: the value may be
/// short or cut off.
fn redact_token_fields(text: &str) -> String {
    // ASCII lower-casing keeps every byte offset.
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let skip = |mut j: usize, set: &[u8]| {
        while j < bytes.len() && set.contains(&bytes[j]) {
            j += 1;
        }
        j
    };
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some((at, len)) = TOKEN_FIELDS
        .iter()
        .filter_map(|f| lower[i..].find(f).map(|at| (i + at, f.len())))
        .min()
    {
        let name_end = at + len;
        let j = skip(name_end, b"\"'\\ \t");
        if j >= bytes.len() || !matches!(bytes[j], b':' | b'=') {
            out.push_str(&text[i..name_end]);
            i = name_end;
            continue;
        }
        let start = skip(j + 1, b" \t\"'\\");
        let mut end = start;
        // Every delimiter is ASCII, so `end` stays on a char boundary.
        while end < bytes.len() && !b"\"'\\,;&}]) \t\r\n<>".contains(&bytes[end]) {
            end += 1;
        }
        out.push_str(&text[i..start]);
        if end > start {
            out.push_str("***");
        }
        i = end;
    }
    out.push_str(&text[i..]);
    out
}

/// Replaces every known secret (at least 4 characters long), the values of
/// `access_token`, `refresh_token` and `id_token`, and every token-looking
/// run of `A-Z a-z 0-9 - _ . ~ + / =` in `text` with `***`.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut s = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        s = s.replace(secret, "***");
    }
    let s = redact_token_fields(&s);
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "-_.~+/=".contains(c);
    let mut out = String::with_capacity(s.len());
    let mut run_start = None;
    let flush = |run: &str, out: &mut String| {
        out.push_str(if looks_like_token(run) { "***" } else { run });
    };
    for (i, c) in s.char_indices() {
        match (is_token_char(c), run_start) {
            (true, None) => run_start = Some(i),
            (true, Some(_)) => {}
            (false, start) => {
                if let Some(start) = start {
                    flush(&s[start..i], &mut out);
                }
                run_start = None;
                out.push(c);
            }
        }
    }
    if let Some(start) = run_start {
        flush(&s[start..], &mut out);
    }
    out
}

/// Collapses whitespace and control characters to single spaces (and, with
/// `ascii_only`, anything outside printable ASCII to `?`), then truncates to
/// `max` characters with a `...` marker.
fn clean(text: &str, max: usize, ascii_only: bool) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut last_space = true;
    for c in text.chars() {
        let c = if c.is_whitespace() || c.is_control() {
            ' '
        } else if ascii_only && !c.is_ascii_graphic() {
            '?'
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        if count == max {
            out.push_str("...");
            return out.trim_end().to_owned();
        }
        last_space = c == ' ';
        out.push(c);
        count += 1;
    }
    out.trim_end().to_owned()
}

// ---------------------------------------------------------------------------
// Retry-After.
// ---------------------------------------------------------------------------

/// Reads a `Retry-After` value (RFC 9110 §10.2.3) as milliseconds from
/// `now_ms`: delta-seconds, or an HTTP-date (IMF-fixdate, plus the obsolete
/// RFC 850 and asctime forms recipients must accept). A date in the past
/// gives 0; anything over a day is capped at [`MAX_RETRY_AFTER_MS`].
/// Unreadable values give `None`.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<i64> {
    let v = value.trim();
    let ms = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for an i64 is still "very long": cap it.
        v.parse::<i64>()
            .map_or(i64::MAX, |s| s.saturating_mul(1000))
    } else {
        http_date_ms(v, now_ms)?.saturating_sub(now_ms)
    };
    Some(ms.clamp(0, MAX_RETRY_AFTER_MS))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

fn month_number(name: &str) -> Option<u32> {
    let i = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(name))?;
    u32::try_from(i + 1).ok()
}

/// A weekday name, short (`Sun`) or long (`Sunday`); it is not checked
/// against the date.
fn is_weekday(name: &str) -> bool {
    WEEKDAYS
        .iter()
        .any(|d| d.eq_ignore_ascii_case(name) || d[..3].eq_ignore_ascii_case(name))
}

fn number(s: &str, min_len: usize, max_len: usize) -> Option<u32> {
    let ok = (min_len..=max_len).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| s.parse().ok()).flatten()
}

/// An HTTP-date as unix ms. RFC 850's two-digit year is read as the latest
/// year with those digits that is not more than 50 years after `now_ms`.
fn http_date_ms(s: &str, now_ms: i64) -> Option<i64> {
    let tokens: Vec<&str> = s.split_ascii_whitespace().collect();
    let weekday = |t: &str| t.strip_suffix(',').is_some_and(is_weekday);
    let (year, month, day, time) = match tokens.as_slice() {
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        [wd, d, m, y, time, "GMT"] if weekday(wd) => (
            i64::from(number(y, 4, 4)?),
            month_number(m)?,
            number(d, 1, 2)?,
            *time,
        ),
        // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        [wd, date, time, "GMT"] if weekday(wd) => {
            let mut parts = date.split('-');
            let (d, m, y) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            let yy = i64::from(number(y, 2, 2)?);
            let (this_year, _, _) =
                rfc3339::civil_from_days(now_ms.div_euclid(rfc3339::MS_PER_DAY));
            let mut year = this_year - this_year.rem_euclid(100) + yy;
            if year > this_year + 50 {
                year -= 100;
            }
            (year, month_number(m)?, number(d, 1, 2)?, *time)
        }
        // asctime: Sun Nov  6 08:49:37 1994
        [wd, m, d, time, y] if is_weekday(wd) => (
            i64::from(number(y, 4, 4)?),
            month_number(m)?,
            number(d, 1, 2)?,
            *time,
        ),
        _ => return None,
    };
    let mut hms = time.split(':');
    let (h, mi, sec) = (hms.next()?, hms.next()?, hms.next()?);
    if hms.next().is_some() {
        return None;
    }
    let (h, mi, sec) = (number(h, 2, 2)?, number(mi, 2, 2)?, number(sec, 2, 2)?);
    rfc3339::timestamp_ms(year, month, day, h, mi, sec, 0)
}

/// Helpers shared by the provider files' tests.
#[cfg(test)]
pub(crate) mod testkit {
    use std::collections::BTreeMap;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    use super::*;

    /// The clock of every test: 2023-11-14T22:13:20Z.
    pub const NOW: i64 = 1_700_000_000_000;
    /// The refresh token every test sends.
    pub const OLD_REFRESH: &str = "rt_old_secret";

    pub fn resp(status: u16, body: &str, retry_after: Option<&str>) -> HttpResponse {
        HttpResponse {
            status,
            retry_after: retry_after.map(str::to_owned),
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn outcome(
        kind: ProviderKind,
        status: u16,
        body: &str,
        retry_after: Option<&str>,
    ) -> Outcome {
        parse_refresh(
            kind,
            &resp(status, body, retry_after),
            &Secret::new(OLD_REFRESH),
            NOW,
        )
    }

    pub fn success(kind: ProviderKind, status: u16, body: &str) -> Tokens {
        match outcome(kind, status, body, None) {
            Outcome::Success(t) => t,
            Outcome::Failure(f) => panic!("expected success, got {f:?}"),
        }
    }

    pub fn failure(
        kind: ProviderKind,
        status: u16,
        body: &str,
        retry_after: Option<&str>,
    ) -> Failure {
        match outcome(kind, status, body, retry_after) {
            Outcome::Failure(f) => f,
            Outcome::Success(t) => panic!("expected failure, got {t:?}"),
        }
    }

    /// An unsigned JWT carrying `payload`.
    pub fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    pub fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
        req.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body's fields, decoded according to its Content-Type.
    pub fn fields(req: &HttpRequest) -> BTreeMap<String, String> {
        let body = String::from_utf8(req.body.clone()).expect("utf-8 body");
        match header(req, "Content-Type") {
            Some("application/x-www-form-urlencoded") => form_decode(&body).into_iter().collect(),
            Some("application/json") => {
                let v: Map<String, Value> = serde_json::from_str(&body).expect("JSON object body");
                v.into_iter()
                    .map(|(k, v)| (k, v.as_str().expect("string field").to_owned()))
                    .collect()
            }
            other => panic!("unexpected content type {other:?}"),
        }
    }

    /// `fields` as a sorted list of `(name, value)` for comparisons.
    pub fn pairs(req: &HttpRequest) -> Vec<(String, String)> {
        fields(req).into_iter().collect()
    }

    /// Builds the expected `pairs`.
    pub fn expect(list: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<_> = list
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        v.sort();
        v
    }

    /// Builds a request for `cfg`, or panics with the error.
    pub fn build(cfg: &ProviderConfig) -> HttpRequest {
        refresh_request(cfg, &Secret::new(OLD_REFRESH), &Endpoints::default())
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;

    const K: ProviderKind = ProviderKind::OAuth2;

    #[test]
    fn form_encoding() {
        let table = [
            ("abc-._*XYZ019", "abc-._*XYZ019"),
            ("a b", "a+b"),
            ("a+b&c=d/e?f#g%", "a%2Bb%26c%3Dd%2Fe%3Ff%23g%25"),
            ("é~", "%C3%A9%7E"),
            ("", ""),
        ];
        for (raw, enc) in table {
            assert_eq!(form_component(raw), enc, "{raw:?}");
            let body = form_encode(&[("k y", raw)]);
            assert_eq!(form_decode(&body), vec![("k y".to_owned(), raw.to_owned())]);
        }
        assert_eq!(
            form_decode("a=%ZZ&b=%4&c&=x&&d=%41%42"),
            [("a", "%ZZ"), ("b", "%4"), ("c", ""), ("", "x"), ("d", "AB")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn url_rule() {
        let table = [
            ("https://auth.openai.com/oauth/token", true),
            ("HTTPS://auth.openai.com:443/oauth/token?x=1", true),
            ("https://[2001:db8::1]:8443/token", true),
            ("http://127.0.0.1:8719/token", true),
            ("http://127.255.0.9/token", true),
            ("http://localhost:1234/oauth/token", true),
            ("http://LOCALHOST/token", true),
            ("http://[::1]:9000/token", true),
            ("http://[::1]", true),
            ("http://example.com/token", false),
            ("http://10.0.0.1/token", false),
            ("http://128.0.0.1/token", false),
            ("http://[::2]/token", false),
            ("http://127.0.0.1.evil.com/token", false),
            ("http://localhost.evil.com/token", false),
            ("http://localhost@evil.com/token", false),
            ("https://user:pw@example.com/token", false),
            ("ftp://example.com/token", false),
            ("example.com/token", false),
            ("https://", false),
            ("https:///token", false),
            ("https://exa mple.com/token", false),
            ("https://example.com:0/token", false),
            ("https://example.com:65536/token", false),
            ("https://example.com:/token", false),
            ("https://example.com:12ab/token", false),
            ("https://[::1/token", false),
            ("https://[nope]/token", false),
            ("https://ex%61mple.com/token", false),
            ("", false),
        ];
        for (url, ok) in table {
            assert_eq!(check_url(url).is_ok(), ok, "{url}: {:?}", check_url(url));
        }
        let err = check_url("http://example.com/token?secret=abc").unwrap_err();
        assert!(
            err.contains("example.com") && !err.contains("secret=abc"),
            "{err}"
        );
    }

    fn cfg(kind: ProviderKind) -> ProviderConfig {
        ProviderConfig::new(kind)
    }

    #[test]
    fn config_errors() {
        let url = Some("https://idp.example.com/token".to_owned());
        let id = Some("client".to_owned());
        let secret = Some(Secret::new("s3cret-value"));
        let table: Vec<(ProviderConfig, Option<&str>)> = vec![
            (cfg(ProviderKind::Codex), None),
            (cfg(ProviderKind::Claude), None),
            (
                cfg(ProviderKind::Google),
                Some("google credentials need a client_id"),
            ),
            (
                ProviderConfig {
                    client_id: id.clone(),
                    ..cfg(ProviderKind::Google)
                },
                None,
            ),
            (cfg(K), Some("oauth2 credentials need a token_url")),
            (
                ProviderConfig {
                    token_url: url.clone(),
                    ..cfg(K)
                },
                Some("oauth2 credentials need a client_id"),
            ),
            (
                ProviderConfig {
                    token_url: url.clone(),
                    client_id: Some("  ".into()),
                    ..cfg(K)
                },
                Some("need a client_id"),
            ),
            (
                ProviderConfig {
                    token_url: url.clone(),
                    client_id: id.clone(),
                    ..cfg(K)
                },
                None,
            ),
            (
                ProviderConfig {
                    token_url: url.clone(),
                    client_id: id.clone(),
                    client_auth: Some(ClientAuth::Basic),
                    ..cfg(K)
                },
                Some("client_auth basic needs a client_secret"),
            ),
            (
                ProviderConfig {
                    token_url: url.clone(),
                    client_id: id.clone(),
                    client_auth: Some(ClientAuth::Post),
                    ..cfg(K)
                },
                Some("client_auth post needs a client_secret"),
            ),
            (
                ProviderConfig {
                    token_url: url.clone(),
                    client_id: id.clone(),
                    client_secret: secret.clone(),
                    client_auth: Some(ClientAuth::Basic),
                    ..cfg(K)
                },
                None,
            ),
            (
                ProviderConfig {
                    token_url: Some("http://idp.example.com/token".into()),
                    client_id: id.clone(),
                    ..cfg(K)
                },
                Some("plain http://"),
            ),
            (
                ProviderConfig {
                    token_url: Some("not a url".into()),
                    ..cfg(ProviderKind::Codex)
                },
                Some("whitespace"),
            ),
            (
                ProviderConfig {
                    token_url: Some("http://127.0.0.1:9/t".into()),
                    ..cfg(ProviderKind::Codex)
                },
                None,
            ),
        ];
        for (c, want) in table {
            let got = check_config(&c);
            match want {
                None => assert!(got.is_ok(), "{c:?}: {got:?}"),
                Some(text) => {
                    let err = got.expect_err(text);
                    assert!(err.contains(text), "{err}");
                    assert!(!err.contains("s3cret"), "{err}");
                    let built =
                        refresh_request(&c, &Secret::new(OLD_REFRESH), &Endpoints::default());
                    assert_eq!(built.err(), Some(err));
                }
            }
        }
    }

    #[test]
    fn request_url_and_headers() {
        let endpoints = Endpoints {
            codex_token: "http://127.0.0.1:1/codex".into(),
            claude_token: "http://127.0.0.1:1/claude".into(),
            google_token: "http://127.0.0.1:1/google".into(),
            ..Endpoints::default()
        };
        let rt = Secret::new(OLD_REFRESH);
        let google = ProviderConfig {
            client_id: Some("g".into()),
            ..cfg(ProviderKind::Google)
        };
        for (c, url) in [
            (cfg(ProviderKind::Codex), "http://127.0.0.1:1/codex"),
            (cfg(ProviderKind::Claude), "http://127.0.0.1:1/claude"),
            (google.clone(), "http://127.0.0.1:1/google"),
            (
                ProviderConfig {
                    token_url: Some("https://mirror.example/t".into()),
                    ..google
                },
                "https://mirror.example/t",
            ),
        ] {
            let req = refresh_request(&c, &rt, &endpoints).unwrap();
            assert_eq!((req.method, req.url.as_str()), ("POST", url));
            assert_eq!(header(&req, "Accept"), Some("application/json"));
            assert!(header(&req, "Content-Type").is_some());
            assert!(!format!("{req:?}").contains(OLD_REFRESH));
        }
        // An environment override that is not https for a remote host is refused.
        let bad = Endpoints {
            codex_token: "http://example.com/t".into(),
            ..Endpoints::default()
        };
        assert!(refresh_request(&cfg(ProviderKind::Codex), &rt, &bad).is_err());
        // No refresh token, no request.
        let err =
            refresh_request(&cfg(ProviderKind::Codex), &Secret::new(" "), &endpoints).unwrap_err();
        assert!(err.contains("no refresh token"), "{err}");
    }

    /// Every permanent code, in every error shape, at 400 and 401 (and in a
    /// 200 with an `error` field), kills the credential with that code.
    #[test]
    fn permanent_codes_in_every_shape() {
        let shapes: [fn(&str) -> String; 4] = [
            |c| {
                format!(
                    r#"{{"error":{{"message":"nope","type":"invalid_request_error","param":null,"code":"{c}"}}}}"#
                )
            },
            |c| format!(r#"{{"error":"{c}","error_description":"nope"}}"#),
            |c| format!(r#"{{"code":"{c}"}}"#),
            |c| {
                format!(
                    r#"{{"error":"{}","error_description":"nope"}}"#,
                    c.to_uppercase()
                )
            },
        ];
        for code in PERMANENT_CODES {
            for (i, shape) in shapes.iter().enumerate() {
                let body = shape(code);
                for status in [400, 401, 200] {
                    if status == 200 && i == 2 {
                        continue; // no `error` field: covered below
                    }
                    let f = failure(K, status, &body, None);
                    assert_eq!(
                        (f.permanence, f.code.as_str(), f.status),
                        (Permanence::Permanent, code, Some(status)),
                        "{status} {body}"
                    );
                    assert!(
                        f.message.contains(&format!("HTTP {status}")),
                        "{}",
                        f.message
                    );
                }
            }
        }
    }

    #[test]
    fn classification() {
        use Permanence::{Permanent as P, Transient as T};
        let reused = include_str!("../../fixtures/oauth/openai_refresh_token_reused.json");
        let expired = include_str!("../../fixtures/oauth/openai_refresh_token_expired.json");
        let no_code = include_str!("../../fixtures/oauth/openai_401_no_code.json");
        let grant = include_str!("../../fixtures/oauth/rfc_invalid_grant.json");
        let invalid_request = include_str!("../../fixtures/oauth/rfc_invalid_request.json");
        let unavailable = include_str!("../../fixtures/oauth/rfc_temporarily_unavailable.json");
        let code_only = include_str!("../../fixtures/oauth/code_refresh_token_expired.json");
        let in_200 = include_str!("../../fixtures/oauth/error_in_200.json");
        let no_token = include_str!("../../fixtures/oauth/no_access_token.json");
        let rate = include_str!("../../fixtures/oauth/anthropic_rate_limit.json");
        let garbage = include_str!("../../fixtures/oauth/garbage.html");
        // (status, body, Retry-After) → (permanence, code, retry_after_ms)
        type Row = (
            u16,
            &'static str,
            Option<&'static str>,
            Permanence,
            &'static str,
            Option<i64>,
        );
        let table: &[Row] = &[
            (401, reused, None, P, "refresh_token_reused", None),
            (400, reused, None, P, "refresh_token_reused", None),
            (401, expired, None, P, "refresh_token_expired", None),
            (400, grant, None, P, "invalid_grant", None),
            (401, code_only, None, P, "refresh_token_expired", None),
            (200, code_only, None, P, "refresh_token_expired", None),
            (200, in_200, None, P, "refresh_token_revoked", None),
            // 401 without a code, or with one nobody knows: permanent.
            (401, no_code, None, P, "unauthorized", None),
            (401, "{}", None, P, "unauthorized", None),
            (401, "", None, P, "unauthorized", None),
            (401, " \r\n", None, P, "unauthorized", None),
            (401, "null", None, P, "unauthorized", None),
            (401, "[]", None, P, "unauthorized", None),
            // ... but a page that is not JSON comes from a gateway or proxy
            // in front of the token endpoint: transient.
            (401, garbage, None, T, "bad_json", None),
            (401, "Unauthorized", None, T, "bad_json", None),
            (401, r#"{"error":"invalid_gr"#, None, T, "bad_json", None),
            (401, invalid_request, None, P, "invalid_request", None),
            (
                401,
                r#"{"error":"weird_new_code"}"#,
                None,
                P,
                "weird_new_code",
                None,
            ),
            // ... unless the code is a known transient one.
            (
                401,
                unavailable,
                Some("7"),
                T,
                "temporarily_unavailable",
                Some(7_000),
            ),
            (401, rate, None, T, "rate_limit_error", None),
            (
                401,
                r#"{"error":{"code":"server_error"}}"#,
                None,
                T,
                "server_error",
                None,
            ),
            // 400 with an unknown code, or none: transient.
            (400, invalid_request, None, T, "invalid_request", None),
            (400, no_code, None, T, "http_400", None),
            (400, unavailable, None, T, "temporarily_unavailable", None),
            (400, garbage, None, T, "bad_json", None),
            (400, "[1,2]", None, T, "bad_json", None),
            // 2xx without a usable token.
            (200, no_token, None, T, "no_access_token", None),
            (200, "{}", None, T, "no_access_token", None),
            (
                200,
                r#"{"access_token":42}"#,
                None,
                T,
                "no_access_token",
                None,
            ),
            (
                200,
                r#"{"access_token":"ok","error":{"message":"hm"}}"#,
                None,
                T,
                "upstream_error",
                None,
            ),
            (
                200,
                r#"{"error":"slow_down"}"#,
                Some("3"),
                T,
                "slow_down",
                Some(3_000),
            ),
            (200, garbage, None, T, "bad_json", None),
            (201, "null", None, T, "bad_json", None),
            // A 2xx names a known code, or none of its text counts.
            (
                200,
                r#"{"error":"weird_new_code"}"#,
                None,
                T,
                "upstream_error",
                None,
            ),
            // Status-driven transients, whatever the body says.
            (408, "", None, T, "http_408", None),
            (429, rate, Some("120"), T, "http_429", Some(120_000)),
            (
                429,
                "",
                Some("Tue, 14 Nov 2023 22:14:20 GMT"),
                T,
                "http_429",
                Some(60_000),
            ),
            (500, grant, None, T, "http_500", None),
            (502, garbage, None, T, "http_502", None),
            (503, "", Some("bogus"), T, "http_503", None),
            (529, rate, None, T, "http_529", None),
            (403, grant, None, T, "http_403", None),
            (404, "", None, T, "http_404", None),
            (302, "", None, T, "http_302", None),
            // Retry-After rides along on permanent failures too.
            (
                401,
                reused,
                Some("30"),
                P,
                "refresh_token_reused",
                Some(30_000),
            ),
        ];
        for &(status, body, retry_after, permanence, code, retry_ms) in table {
            let f = failure(K, status, body, retry_after);
            assert_eq!(
                (f.permanence, f.code.as_str(), f.retry_after_ms, f.status),
                (permanence, code, retry_ms, Some(status)),
                "{status} {body:?} {retry_after:?}: {}",
                f.message
            );
            assert!(!f.message.contains(OLD_REFRESH), "{}", f.message);
        }
    }

    #[test]
    fn messages_quote_upstream_but_no_secrets() {
        let reused = include_str!("../../fixtures/oauth/openai_refresh_token_reused.json");
        let f = failure(K, 401, reused, None);
        assert_eq!(
            f.message,
            "token endpoint answered HTTP 401 (refresh_token_reused): Your refresh token has \
             already been used to generate a new access token. Please try signing in again."
        );

        let leaky = include_str!("../../fixtures/oauth/leaky_description.json");
        let f = failure(K, 400, leaky, None);
        assert!(
            f.message
                .contains("refresh_token *** is malformed near ***"),
            "{}",
            f.message
        );
        assert!(!f.message.contains("eyJ"), "{}", f.message);

        let garbage = include_str!("../../fixtures/oauth/garbage.html");
        let f = failure(K, 502, garbage, None);
        assert_eq!(
            f.message,
            "token endpoint answered HTTP 502 with a body that is not JSON: \
             \"<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>\""
        );

        // Short garbage that echoes the token: scrubbed, ASCII only, cut.
        let body = format!("oops {OLD_REFRESH}\u{1}\u{e9}{}", "x ".repeat(75));
        let f = failure(K, 400, &body, None);
        assert!(f.message.contains("oops *** ?"), "{}", f.message);
        assert!(f.message.ends_with("...\""), "{}", f.message);
        assert!(!f.message.contains(OLD_REFRESH));

        // Long garbage: only its size.
        let f = failure(K, 503, &"<p>".repeat(100), None);
        assert!(
            f.message.ends_with("with a 300-byte body that is not JSON"),
            "{}",
            f.message
        );

        // Long upstream descriptions are cut at 200 characters.
        let body = format!(
            r#"{{"error":"invalid_request","error_description":"{}"}}"#,
            "word ".repeat(100)
        );
        let f = failure(K, 400, &body, None);
        let quoted = f.message.split(": ").nth(1).unwrap();
        assert!(
            quoted.chars().count() <= 203 && quoted.ends_with("..."),
            "{quoted}"
        );

        // A code carrying the token is scrubbed too.
        let body = format!(r#"{{"error":"{OLD_REFRESH}"}}"#);
        let f = failure(K, 401, &body, None);
        assert!(
            !f.code.contains(OLD_REFRESH) && !f.message.contains(OLD_REFRESH),
            "{f:?}"
        );
    }

    /// A 2xx body may carry new tokens, so no part of it reaches a failure:
    /// not truncated JSON, not HTML, not an `error` field's text, not an
    /// unknown code.
    #[test]
    fn a_2xx_body_is_never_quoted() {
        const FRAG: &str = "at_FRAG7q"; // short: no "looks like a token" rule catches it
        let bodies = [
            format!(r#"{{"access_token":"{FRAG}"#),
            format!(r#"{{"refresh_token":"{FRAG}","access_tok"#),
            format!("<html>{FRAG}</html>"),
            FRAG.to_string(),
            format!(r#"["{FRAG}"]"#),
            format!(r#""{FRAG}""#),
            format!(r#"{{"error":"{FRAG}","access_token":"{FRAG}"}}"#),
            format!(r#"{{"error":{{"message":"{FRAG}"}},"access_token":"{FRAG}"}}"#),
            format!(r#"{{"error_description":"{FRAG}","refresh_token":"{FRAG}"}}"#),
            format!(r#"{{"error":"invalid_grant","error_description":"{FRAG}"}}"#),
            format!(r#"{{"message":"{FRAG}","id_token":"{FRAG}"}}"#),
            format!(r#"{{"code":"{FRAG}"}}"#),
            format!(r#"{{"access_token":"","refresh_token":"{FRAG}"}}"#),
        ];
        for status in [200, 201, 204, 299] {
            for body in &bodies {
                let f = failure(K, status, body, None);
                assert!(
                    !f.message.to_lowercase().contains(&FRAG.to_lowercase())
                        && !f.code.contains(&FRAG.to_lowercase()),
                    "{status} {body}: {f:?}"
                );
            }
        }
        // A known code still classifies (it is our constant, not their text).
        let f = failure(
            K,
            200,
            &format!(r#"{{"error":"invalid_grant","error_description":"{FRAG}"}}"#),
            None,
        );
        assert_eq!(
            (f.permanence, f.code.as_str()),
            (Permanence::Permanent, "invalid_grant")
        );
        assert!(
            f.message.contains("HTTP 200") && f.message.contains("invalid_grant"),
            "{}",
            f.message
        );
    }

    /// Bodies of other statuses are quoted, with token values redacted.
    #[test]
    fn excerpts_redact_token_values() {
        let jwtish = jwt(r#"{"sub":"1"}"#);
        let cases = [
            (
                502,
                r#"{"access_token":"short1","refresh_token":"x"#.to_owned(),
            ),
            (
                502,
                "access_token=abc&refresh_token=def&id_token=ghi".to_owned(),
            ),
            (502, format!("<p>{}</p>", &jwtish[..12])),
            (
                502,
                format!("<p>{}</p>", "Abc-def_GhiJklMnoPqrStuVwxYzAbcDef"),
            ),
            (
                400,
                r#"{"error":"invalid_request","error_description":"bad access_token: short1"}"#
                    .to_owned(),
            ),
            (
                401,
                r#"{"error":"invalid_grant","error_description":"id_token='zz9' refused"}"#
                    .to_owned(),
            ),
        ];
        for (status, body) in cases {
            let f = failure(K, status, &body, None);
            for leak in ["short1", "=abc", "=def", "=ghi", "eyJ", "GhiJkl", "zz9"] {
                assert!(!f.message.contains(leak), "{body}: {}", f.message);
            }
            assert!(f.message.contains("***"), "{body}: {}", f.message);
        }
    }

    #[test]
    fn token_fields_are_redacted() {
        let table = [
            (
                r#"{"access_token":"abc","x":1}"#,
                r#"{"access_token":"***","x":1}"#,
            ),
            (
                r#"{"Refresh_Token" : "abc"}"#,
                r#"{"Refresh_Token" : "***"}"#,
            ),
            ("a=1&id_token=abc&b=2", "a=1&id_token=***&b=2"),
            (r#"{"access_token":"cut off"#, r#"{"access_token":"*** off"#),
            ("access_token", "access_token"),
            ("access_token=", "access_token="),
            ("the access_token is wrong", "the access_token is wrong"),
            (
                "access_tokenrefresh_token=zz",
                "access_tokenrefresh_token=***",
            ),
            ("é access_token: ü", "é access_token: ***"),
        ];
        for (text, want) in table {
            assert_eq!(redact_token_fields(text), want, "{text}");
        }
    }

    #[test]
    fn scrubbing() {
        let jwtish = jwt(r#"{"sub":"123456"}"#);
        let table = [
            ("plain words stay", "plain words stay"),
            ("token rt_old_secret here", "token *** here"),
            (
                "see https://platform.openai.com/docs/guides/error-codes",
                "see https://platform.openai.com/docs/guides/error-codes",
            ),
            ("id 9d1c250a-e61b-44d9-88ed-5944d1962f5e.", "id ***"),
            ("short abc123 stays", "short abc123 stays"),
        ];
        for (text, want) in table {
            assert_eq!(scrub(text, &[OLD_REFRESH]), want, "{text}");
        }
        assert_eq!(scrub(&format!("bearer {jwtish}!"), &[]), "bearer ***!");
        assert_eq!(
            scrub("abc", &["a"]),
            "abc",
            "secrets under 4 characters are not replaced"
        );
    }

    #[test]
    fn success_and_expiry() {
        let opaque = r#""access_token":"opaque""#;
        let with_exp = jwt(r#"{"exp":1700007200}"#);
        // (body, expected expires_at_ms)
        let table = [
            (
                format!(r#"{{{opaque},"expires_in":3600}}"#),
                NOW + 3_600_000,
            ),
            (format!(r#"{{{opaque},"expires_in":"120"}}"#), NOW + 120_000),
            (format!(r#"{{{opaque},"expires_in":" 90 "}}"#), NOW + 90_000),
            (format!(r#"{{{opaque},"expires_in":1.5}}"#), NOW + 1_500),
            // Floored at one second.
            (format!(r#"{{{opaque},"expires_in":0.2}}"#), NOW + 1_000),
            (format!(r#"{{{opaque},"expires_in":"0.001"}}"#), NOW + 1_000),
            // Capped at ten years.
            (
                format!(r#"{{{opaque},"expires_in":1e300}}"#),
                NOW + 315_360_000_000,
            ),
            // Unusable expires_in: the JWT exp, else the default.
            (
                format!(r#"{{"access_token":"{with_exp}","expires_in":0}}"#),
                1_700_007_200_000,
            ),
            (
                format!(r#"{{"access_token":"{with_exp}","expires_in":-5}}"#),
                1_700_007_200_000,
            ),
            (
                format!(r#"{{"access_token":"{with_exp}","expires_in":"soon"}}"#),
                1_700_007_200_000,
            ),
            (
                format!(r#"{{"access_token":"{with_exp}","expires_in":null}}"#),
                1_700_007_200_000,
            ),
            (
                format!(r#"{{"access_token":"{with_exp}"}}"#),
                1_700_007_200_000,
            ),
            (format!(r#"{{{opaque}}}"#), NOW + 3_600_000),
            (
                format!(r#"{{{opaque},"expires_in":"NaN"}}"#),
                NOW + 3_600_000,
            ),
            (
                format!(r#"{{{opaque},"expires_in":true}}"#),
                NOW + 3_600_000,
            ),
        ];
        for (body, want) in table {
            assert_eq!(success(K, 200, &body).expires_at_ms, want, "{body}");
        }
        for kind in ProviderKind::ALL {
            assert_eq!(default_lifetime_secs(kind), 3600);
        }
        let minimal = include_str!("../../fixtures/oauth/oauth2_minimal.json");
        let t = success(K, 200, minimal);
        assert_eq!(t.expires_at_ms, NOW + default_lifetime_secs(K) * 1000);
        assert_eq!(t.access_token.expose(), "opaque-access-token");
        assert_eq!((t.id_token, t.claims), (None, Claims::default()));
        // Any 2xx is a success; `error: null` is no error.
        success(K, 201, r#"{"access_token":"a","error":null}"#);
    }

    #[test]
    fn refresh_token_rotation() {
        // (body, refresh token after)
        let table = [
            (r#"{"access_token":"a","refresh_token":"rt_new"}"#, "rt_new"),
            (r#"{"access_token":"a"}"#, OLD_REFRESH),
            (r#"{"access_token":"a","refresh_token":""}"#, OLD_REFRESH),
            (r#"{"access_token":"a","refresh_token":null}"#, OLD_REFRESH),
            (r#"{"access_token":"a","refresh_token":7}"#, OLD_REFRESH),
        ];
        for (body, want) in table {
            assert_eq!(success(K, 200, body).refresh_token.expose(), want, "{body}");
        }
    }

    #[test]
    fn oidc_claims_from_id_token() {
        let id = jwt(r#"{"sub":"u-1","email":"a@example.com"}"#);
        let t = success(
            K,
            200,
            &format!(r#"{{"access_token":"a","id_token":"{id}"}}"#),
        );
        assert_eq!(t.id_token.as_ref().map(Secret::expose), Some(id.as_str()));
        assert_eq!(t.claims.email.as_deref(), Some("a@example.com"));
        assert_eq!(t.claims.user_id.as_deref(), Some("u-1"));
        assert_eq!(oidc_claims("not-a-jwt"), Claims::default());
    }

    #[test]
    fn retry_after() {
        // 2023-11-14T22:13:20Z is NOW, a Tuesday.
        let table = [
            ("0", Some(0)),
            ("5", Some(5_000)),
            (" 120 ", Some(120_000)),
            ("86400", Some(MAX_RETRY_AFTER_MS)),
            ("86401", Some(MAX_RETRY_AFTER_MS)),
            ("99999999999999999999999", Some(MAX_RETRY_AFTER_MS)),
            ("Tue, 14 Nov 2023 22:13:50 GMT", Some(30_000)),
            ("Tue, 14 Nov 2023 22:13:00 GMT", Some(0)),
            ("Wed, 21 Oct 2015 07:28:00 GMT", Some(0)),
            ("Fri, 17 Nov 2023 22:13:20 GMT", Some(MAX_RETRY_AFTER_MS)),
            ("Tuesday, 14-Nov-23 22:14:20 GMT", Some(60_000)),
            ("Tue Nov 14 22:15:20 2023", Some(120_000)),
            ("Tue Nov  4 22:15:20 2023", Some(0)),
            ("-5", None),
            ("1.5", None),
            ("", None),
            ("soon", None),
            ("Tue, 14 Nov 2023 22:13:50 UTC", None),
            ("Tue, 31 Nov 2023 22:13:50 GMT", None),
            ("Tue, 14 Foo 2023 22:13:50 GMT", None),
            ("Xyz, 14 Nov 2023 22:13:50 GMT", None),
            ("Tue, 14 Nov 2023 25:13:50 GMT", None),
            ("Tue, 14 Nov 2023 22:13 GMT", None),
        ];
        for (value, want) in table {
            assert_eq!(parse_retry_after(value, NOW), want, "{value:?}");
        }
    }

    #[test]
    fn http_dates() {
        let imf = http_date_ms("Wed, 21 Oct 2015 07:28:00 GMT", NOW);
        assert_eq!(imf, Some(1_445_412_480_000));
        assert_eq!(
            http_date_ms("Sunday, 06-Nov-94 08:49:37 GMT", NOW),
            Some(784_111_777_000)
        );
        assert_eq!(
            http_date_ms("Sun Nov  6 08:49:37 1994", NOW),
            Some(784_111_777_000)
        );
        // RFC 850 years: no more than 50 years ahead of now (2023).
        assert_eq!(
            http_date_ms("Monday, 01-Jan-73 00:00:00 GMT", NOW),
            rfc3339::parse("2073-01-01T00:00:00Z")
        );
        assert_eq!(
            http_date_ms("Monday, 01-Jan-74 00:00:00 GMT", NOW),
            rfc3339::parse("1974-01-01T00:00:00Z")
        );
        assert_eq!(http_date_ms("Sunday, 06-Nov-1994 08:49:37 GMT", NOW), None);
    }
}
