//! Import and export of credentials, as pure functions over bytes and data.
//!
//! Three formats are read, told apart by their fields (DESIGN.md §5):
//!
//! - **tokenwarden JSON**: `{"id","provider","refresh_token","access_token",
//!   "id_token","expires_at","token_url","client_id","client_secret",
//!   "scope","encoding","client_auth"}`, or a JSON array of such records.
//!   Strict: an unknown field is an error (typo protection).
//! - **Codex CLI `auth.json`**: `{"OPENAI_API_KEY","tokens":{"id_token",
//!   "access_token","refresh_token","account_id"},"last_refresh"}` (has
//!   `tokens` or `OPENAI_API_KEY`).
//! - **CLIProxyAPI auth file**: `{"type":"codex"|"claude","access_token",
//!   "refresh_token","id_token","account_id","email","expired",
//!   "last_refresh"}` (has `type` or `expired`). Other fields are ignored:
//!   these files carry more.
//!
//! Only `refresh_token` (plus the provider's settings) is required. Empty
//! strings and `null` count as absent. An expiry without an access token is
//! dropped: such a credential is refreshed before first use anyway. An
//! access token without an expiry (`expires_at`, `expired`) takes its JWT
//! `exp` if it has one; an opaque one has no known expiry and is refreshed
//! before first use.
//!
//! Errors name the field and say what is expected; they never quote a token,
//! secret or key.

use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::credential::{validate_id, Claims, Credential, NewCredential, ProviderConfig};
use crate::provider::{self, codex, ClientAuth, Encoding, ProviderKind};
use crate::secret::Secret;
use crate::{jwt, rfc3339};

/// What the command line (`--id`, `--provider`) or the query string adds to
/// an import.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// The id to store the credential under; only for a single record.
    pub id: Option<String>,
    /// Sets or overrides a tokenwarden record's provider; for the Codex and
    /// CLIProxyAPI formats it must agree with the file.
    pub provider: Option<ProviderKind>,
}

/// The formats [`parse_import`] reads, for error messages.
const ACCEPTED: &str = "a tokenwarden JSON record (or an array of them), \
    a Codex CLI auth.json, or a CLIProxyAPI codex/claude auth file";

/// Why bytes could not be imported. No message quotes a secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ImportError {
    /// The input is not JSON at all.
    #[error("input is not JSON ({0}); expected {ACCEPTED}")]
    NotJson(String),
    /// JSON, but none of the accepted formats.
    #[error("unrecognised format; expected {ACCEPTED}")]
    UnknownFormat,
    /// An empty array.
    #[error("the array holds no records: nothing to import")]
    Empty,
    /// A required field is absent, `null` or empty.
    #[error("missing field {0:?}")]
    MissingField(String),
    /// A field has the wrong type or an unusable value.
    #[error("field {field:?}: {why}")]
    BadField {
        /// The field, as a path (`tokens.refresh_token`).
        field: String,
        /// What is wrong and what is expected.
        why: String,
    },
    /// A tokenwarden record has a field it does not know.
    #[error(
        "unknown field {0:?} in a tokenwarden record; accepted fields: id, provider, \
         refresh_token, access_token, id_token, expires_at, token_url, client_id, \
         client_secret, scope, encoding, client_auth"
    )]
    UnknownField(String),
    /// The provider settings do not work together.
    #[error("provider settings: {0}")]
    BadSettings(String),
    /// The Codex auth.json holds no ChatGPT tokens (API-key login only).
    #[error(
        "this auth.json holds no ChatGPT tokens (API-key login only); \
         run `codex login` with ChatGPT first"
    )]
    NoTokens,
    /// `--provider` contradicts the file.
    #[error(
        "--provider {given} does not match this {format} file, which holds a {found} credential"
    )]
    ProviderMismatch {
        /// What `--provider` said.
        given: ProviderKind,
        /// The detected format.
        format: &'static str,
        /// The provider the file is for.
        found: ProviderKind,
    },
    /// The credential id is not acceptable.
    #[error("bad credential id {id:?}: {why}; pass a valid one with --id")]
    BadId {
        /// The id that was refused.
        id: String,
        /// Why (from [`validate_id`]).
        why: String,
    },
    /// No id given and none derivable.
    #[error("no id: the record has no id, e-mail or account id; pass --id")]
    NoId,
    /// `--id` with several records.
    #[error(
        "--id names one credential but the input holds {0} records; \
         drop --id and give each record an \"id\""
    )]
    IdForMany(usize),
    /// The same id twice in one import.
    #[error("id {0:?} appears more than once in the input")]
    DuplicateId(String),
    /// An error in one record of an array.
    #[error("record {} of the array: {source}", .index + 1)]
    InRecord {
        /// Zero-based position in the array (shown one-based).
        index: usize,
        /// What is wrong with it.
        source: Box<ImportError>,
    },
}

/// Why a credential cannot be exported in a format.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExportError {
    /// The format cannot hold this provider's credentials.
    #[error("a {provider} credential cannot be exported as {format}; that format holds only {supported} credentials")]
    Unsupported {
        /// `codex` or `cliproxy`.
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

type Result<T, E = ImportError> = std::result::Result<T, E>;

/// Parses an import file (see the module docs for the formats) into the
/// credentials it holds: one for a single object, one per element for an
/// array.
///
/// The id is `opts.id`, else the record's `id`, else the e-mail claim, else
/// the account id; it must pass [`validate_id`]. `opts.id` with several
/// records, or the same id twice, is an error. `now_ms` is not needed by
/// any current format (expiries are absolute) and is kept so callers need
/// not change when one is.
pub fn parse_import(
    bytes: &[u8],
    opts: &ImportOptions,
    _now_ms: i64,
) -> Result<Vec<NewCredential>> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ImportError::NotJson(e.to_string()))?;
    let records: Vec<&Value> = match &value {
        Value::Array(items) if items.is_empty() => return Err(ImportError::Empty),
        Value::Array(items) => items.iter().collect(),
        Value::Object(_) => vec![&value],
        _ => return Err(ImportError::UnknownFormat),
    };
    if opts.id.is_some() && records.len() > 1 {
        return Err(ImportError::IdForMany(records.len()));
    }
    let many = matches!(value, Value::Array(_));
    let mut out: Vec<NewCredential> = Vec::with_capacity(records.len());
    for (index, record) in records.into_iter().enumerate() {
        let parsed = match record {
            Value::Object(map) => parse_record(map, opts),
            _ => Err(ImportError::UnknownFormat),
        };
        let cred = parsed.map_err(|e| match many {
            true => ImportError::InRecord {
                index,
                source: Box::new(e),
            },
            false => e,
        })?;
        if out.iter().any(|c| c.id == cred.id) {
            return Err(ImportError::DuplicateId(cred.id));
        }
        out.push(cred);
    }
    Ok(out)
}

/// The formats, as detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Tokenwarden,
    CodexAuth,
    CliProxy,
}

const TOKENWARDEN_FIELDS: [&str; 12] = [
    "id",
    "provider",
    "refresh_token",
    "access_token",
    "id_token",
    "expires_at",
    "token_url",
    "client_id",
    "client_secret",
    "scope",
    "encoding",
    "client_auth",
];

fn detect(map: &Map<String, Value>) -> Result<Format> {
    let has = |k: &str| map.contains_key(k);
    if has("tokens") || has("OPENAI_API_KEY") {
        Ok(Format::CodexAuth)
    } else if has("type") || has("expired") {
        Ok(Format::CliProxy)
    } else if map.keys().any(|k| TOKENWARDEN_FIELDS.contains(&k.as_str())) {
        Ok(Format::Tokenwarden)
    } else {
        Err(ImportError::UnknownFormat)
    }
}

/// A credential before its id is settled.
struct Draft {
    record_id: Option<String>,
    cred: NewCredential,
}

fn parse_record(map: &Map<String, Value>, opts: &ImportOptions) -> Result<NewCredential> {
    let Draft {
        record_id,
        mut cred,
    } = match detect(map)? {
        Format::Tokenwarden => tokenwarden(map, opts)?,
        Format::CodexAuth => codex_auth(map, opts)?,
        Format::CliProxy => cliproxy(map, opts)?,
    };
    let id = opts
        .id
        .clone()
        .or(record_id)
        .or_else(|| cred.claims.email.clone())
        .or_else(|| cred.claims.account_id.clone())
        .ok_or(ImportError::NoId)?;
    validate_id(&id).map_err(|why| ImportError::BadId {
        id: id.chars().take(140).collect(),
        why,
    })?;
    match &cred.access_token {
        // Refreshed before first use anyway.
        None => cred.expires_at_ms = None,
        // No expiry given: the access token's own, if it is a JWT with `exp`.
        Some(token) if cred.expires_at_ms.is_none() => {
            cred.expires_at_ms = jwt::expiry_ms(token.expose());
        }
        Some(_) => {}
    }
    cred.id = id;
    Ok(cred)
}

// ---------------------------------------------------------------------------
// Field readers: typed, naming the field, never quoting the value.
// ---------------------------------------------------------------------------

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn bad(field: &str, why: impl Into<String>) -> ImportError {
    ImportError::BadField {
        field: field.to_owned(),
        why: why.into(),
    }
}

/// An optional string field (`null`, absent and blank are all `None`),
/// trimmed. `path` names it in errors.
fn opt_str<'a>(map: &'a Map<String, Value>, key: &str, path: &str) -> Result<Option<&'a str>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim()).filter(|s| !s.is_empty())),
        Some(other) => Err(bad(
            path,
            format!("expected a string, found {}", type_name(other)),
        )),
    }
}

fn opt_string(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<String>> {
    Ok(opt_str(map, key, path)?.map(str::to_owned))
}

fn opt_secret(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<Secret>> {
    Ok(opt_str(map, key, path)?.map(Secret::new))
}

fn req_secret(map: &Map<String, Value>, key: &str, path: &str) -> Result<Secret> {
    opt_secret(map, key, path)?.ok_or_else(|| ImportError::MissingField(path.to_owned()))
}

/// An optional RFC 3339 timestamp field.
fn opt_time(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<i64>> {
    opt_str(map, key, path)?
        .map(|s| {
            rfc3339::parse(s).ok_or_else(|| {
                bad(
                    path,
                    "not an RFC 3339 timestamp (like 2025-01-31T12:00:00Z)",
                )
            })
        })
        .transpose()
}

/// Latest unix second accepted for `expires_at` (9999-12-31T23:59:59Z):
/// anything larger is probably milliseconds.
const MAX_UNIX_SECS: f64 = 253_402_300_799.0;

/// `expires_at`: unix seconds (number or digits) or an RFC 3339 string; 0
/// means unknown.
fn expires_at(map: &Map<String, Value>) -> Result<Option<i64>> {
    const FIELD: &str = "expires_at";
    let secs = match map.get(FIELD) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) if s.trim().bytes().all(|b| b.is_ascii_digit()) => {
            if s.trim().is_empty() {
                return Ok(None);
            }
            s.trim().parse::<f64>().ok()
        }
        Some(Value::String(_)) => return opt_time(map, FIELD, FIELD),
        Some(other) => {
            return Err(bad(
                FIELD,
                format!(
                    "expected unix seconds or an RFC 3339 string, found {}",
                    type_name(other)
                ),
            ))
        }
    };
    match secs {
        Some(0.0) => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= MAX_UNIX_SECS => Ok(Some((s * 1000.0) as i64)),
        Some(s) if s > MAX_UNIX_SECS => Err(bad(
            FIELD,
            "too large for unix seconds (milliseconds?); give unix seconds or an RFC 3339 string",
        )),
        _ => Err(bad(
            FIELD,
            "must be positive unix seconds or an RFC 3339 string",
        )),
    }
}

/// A key name fit to quote in an error: short, and scrubbed in case
/// someone pasted a token where a name belongs.
fn quote_key(key: &str) -> String {
    provider::scrub(&key.chars().take(64).collect::<String>(), &[])
}

// ---------------------------------------------------------------------------
// The three formats.
// ---------------------------------------------------------------------------

fn tokenwarden(map: &Map<String, Value>, opts: &ImportOptions) -> Result<Draft> {
    if let Some(key) = map
        .keys()
        .find(|k| !TOKENWARDEN_FIELDS.contains(&k.as_str()))
    {
        return Err(ImportError::UnknownField(quote_key(key)));
    }
    let named = opt_str(map, "provider", "provider")?
        .map(|name| {
            ProviderKind::parse(name).ok_or_else(|| {
                bad(
                    "provider",
                    "unknown provider; use codex, claude, google or oauth2",
                )
            })
        })
        .transpose()?;
    let kind = opts
        .provider
        .or(named)
        .ok_or_else(|| ImportError::MissingField("provider (or pass --provider)".into()))?;
    let encoding = opt_str(map, "encoding", "encoding")?
        .map(|s| Encoding::parse(s).ok_or_else(|| bad("encoding", "use form or json")))
        .transpose()?;
    let client_auth = opt_str(map, "client_auth", "client_auth")?
        .map(|s| ClientAuth::parse(s).ok_or_else(|| bad("client_auth", "use none, post or basic")))
        .transpose()?;
    let provider = ProviderConfig {
        kind,
        token_url: opt_string(map, "token_url", "token_url")?,
        client_id: opt_string(map, "client_id", "client_id")?,
        client_secret: opt_secret(map, "client_secret", "client_secret")?,
        scope: opt_string(map, "scope", "scope")?,
        encoding,
        client_auth,
    };
    check_settings(&provider)?;

    let id_token = opt_secret(map, "id_token", "id_token")?;
    let claims = match (&id_token, kind) {
        (Some(t), ProviderKind::Codex) => codex::id_token_claims(t.expose()),
        (Some(t), _) => provider::oidc_claims(t.expose()),
        (None, _) => Claims::default(),
    };
    Ok(Draft {
        record_id: opt_string(map, "id", "id")?,
        cred: NewCredential {
            id: String::new(),
            provider,
            refresh_token: req_secret(map, "refresh_token", "refresh_token")?,
            access_token: opt_secret(map, "access_token", "access_token")?,
            id_token,
            expires_at_ms: expires_at(map)?,
            claims,
            last_refresh_ms: None,
            api_key: None,
        },
    })
}

/// The provider settings a tokenwarden record needs, with the field named.
fn check_settings(cfg: &ProviderConfig) -> Result<()> {
    let needs_url = cfg.kind == ProviderKind::OAuth2;
    let needs_id = matches!(cfg.kind, ProviderKind::OAuth2 | ProviderKind::Google);
    if needs_url && cfg.token_url.is_none() {
        return Err(ImportError::MissingField("token_url".into()));
    }
    if needs_id && cfg.client_id.is_none() {
        return Err(ImportError::MissingField("client_id".into()));
    }
    if let Some(url) = &cfg.token_url {
        provider::check_url(url).map_err(|why| bad("token_url", why))?;
    }
    provider::check_config(cfg).map_err(ImportError::BadSettings)
}

/// `--provider` must agree with a format that fixes the provider.
fn agree(opts: &ImportOptions, format: &'static str, found: ProviderKind) -> Result<()> {
    match opts.provider {
        Some(given) if given != found => Err(ImportError::ProviderMismatch {
            given,
            format,
            found,
        }),
        _ => Ok(()),
    }
}

fn codex_auth(map: &Map<String, Value>, opts: &ImportOptions) -> Result<Draft> {
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

fn cliproxy(map: &Map<String, Value>, opts: &ImportOptions) -> Result<Draft> {
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

// ---------------------------------------------------------------------------
// Export.
// ---------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::testkit::jwt;
    use crate::state::Status;

    const NOW: i64 = 1_700_000_000_000;

    fn import(text: &str) -> Result<Vec<NewCredential>> {
        parse_import(text.as_bytes(), &ImportOptions::default(), NOW)
    }

    fn import_with(
        text: &str,
        id: Option<&str>,
        provider: Option<ProviderKind>,
    ) -> Result<Vec<NewCredential>> {
        let opts = ImportOptions {
            id: id.map(str::to_owned),
            provider,
        };
        parse_import(text.as_bytes(), &opts, NOW)
    }

    fn one(text: &str) -> NewCredential {
        let mut v = import(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    fn codex_claims(account: &str) -> Claims {
        Claims {
            account_id: Some(account.into()),
            email: Some("dev@example.com".into()),
            plan_type: Some("plus".into()),
            user_id: Some("user-abcd".into()),
            organization_id: None,
        }
    }

    #[test]
    fn codex_auth_json() {
        let c = one(include_str!("../fixtures/import/codex_auth.json"));
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

        let c = one(include_str!("../fixtures/import/codex_auth_api_key.json"));
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

    #[test]
    fn cliproxy_files() {
        let c = one(include_str!("../fixtures/import/cliproxy_codex.json"));
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

        let c = one(include_str!("../fixtures/import/cliproxy_claude.json"));
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

    #[test]
    fn tokenwarden_records() {
        let c = one(include_str!("../fixtures/import/tokenwarden_oauth2.json"));
        assert_eq!(c.id, "my-idp");
        assert_eq!(
            c.provider,
            ProviderConfig {
                kind: ProviderKind::OAuth2,
                token_url: Some("https://idp.example.com/oauth/token".into()),
                client_id: Some("cli".into()),
                client_secret: Some(Secret::new("s3cret")),
                scope: Some("offline_access".into()),
                encoding: Some(Encoding::Form),
                client_auth: Some(ClientAuth::Basic),
            }
        );
        assert_eq!(c.expires_at_ms, Some(1_700_003_600_000));
        assert_eq!(
            c.access_token.as_ref().map(Secret::expose),
            Some("at-oauth2")
        );

        let v = import(include_str!("../fixtures/import/tokenwarden_array.json")).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].id.as_str(), v[0].provider.kind),
            ("a", ProviderKind::Claude)
        );
        assert_eq!(
            (v[0].access_token.as_ref(), v[0].expires_at_ms),
            (None, None)
        );
        assert_eq!(
            (v[1].id.as_str(), v[1].provider.kind),
            ("b", ProviderKind::Google)
        );
        assert_eq!(v[1].expires_at_ms, Some(NOW + 3_600_000));
        assert_eq!(v[1].claims.email.as_deref(), Some("dev@gmail.com"));
        assert_eq!(v[1].claims.user_id.as_deref(), Some("109876543210"));

        // expires_at forms; dropped without an access token.
        let table = [
            (r#"1700003600"#, Some(1_700_003_600_000)),
            (r#"1700003600.5"#, Some(1_700_003_600_500)),
            (r#""1700003600""#, Some(1_700_003_600_000)),
            (r#""2023-11-14T23:13:20+01:00""#, Some(NOW)),
            (r#"0"#, None),
            (r#""""#, None),
            (r#"null"#, None),
        ];
        for (value, want) in table {
            let text = format!(
                r#"{{"id":"x","provider":"codex","refresh_token":"r","access_token":"a","expires_at":{value}}}"#
            );
            assert_eq!(one(&text).expires_at_ms, want, "{value}");
            let text = format!(
                r#"{{"id":"x","provider":"codex","refresh_token":"r","expires_at":{value}}}"#
            );
            assert_eq!(one(&text).expires_at_ms, None, "{value}");
        }
        // A UTF-8 byte order mark is fine; blank strings are absent.
        let c = one("\u{feff}{\"id\":\"x\",\"provider\":\"codex\",\"refresh_token\":\" r \",\"access_token\":\"  \"}");
        assert_eq!((c.refresh_token.expose(), c.access_token), ("r", None));
    }

    #[test]
    fn an_access_tokens_jwt_exp_stands_in_for_a_missing_expiry() {
        let at = jwt(r#"{"exp":1700003600}"#);
        for text in [
            format!(r#"{{"id":"x","provider":"codex","refresh_token":"r","access_token":"{at}"}}"#),
            format!(
                r#"{{"type":"codex","refresh_token":"r","access_token":"{at}","email":"x@example.com"}}"#
            ),
            format!(
                r#"{{"tokens":{{"refresh_token":"r","access_token":"{at}","account_id":"x"}}}}"#
            ),
        ] {
            assert_eq!(one(&text).expires_at_ms, Some(1_700_003_600_000), "{text}");
        }
        // An expiry given in the file wins over the JWT's.
        let text = format!(
            r#"{{"id":"x","provider":"codex","refresh_token":"r","access_token":"{at}","expires_at":1700000000}}"#
        );
        assert_eq!(one(&text).expires_at_ms, Some(NOW));
        let text = format!(
            r#"{{"type":"codex","refresh_token":"r","access_token":"{at}","email":"x@example.com","expired":"2023-11-14T22:13:20Z"}}"#
        );
        assert_eq!(one(&text).expires_at_ms, Some(NOW));
        // An opaque access token has no known expiry.
        let text = r#"{"id":"x","provider":"codex","refresh_token":"r","access_token":"opaque"}"#;
        assert_eq!(one(text).expires_at_ms, None);
    }

    #[test]
    fn ids_and_options() {
        let claude = r#"{"provider":"claude","refresh_token":"r"}"#;
        // (text, --id, --provider) → (id, provider)
        type Row = (
            &'static str,
            Option<&'static str>,
            Option<ProviderKind>,
            &'static str,
            ProviderKind,
        );
        let table: [Row; 6] = [
            (
                r#"{"id":"a","provider":"claude","refresh_token":"r"}"#,
                None,
                None,
                "a",
                ProviderKind::Claude,
            ),
            (
                r#"{"id":"a","provider":"claude","refresh_token":"r"}"#,
                Some("b"),
                None,
                "b",
                ProviderKind::Claude,
            ),
            (
                r#"{"id":"a","refresh_token":"r"}"#,
                None,
                Some(ProviderKind::Codex),
                "a",
                ProviderKind::Codex,
            ),
            (
                r#"{"id":"a","provider":"claude","refresh_token":"r"}"#,
                None,
                Some(ProviderKind::Codex),
                "a",
                ProviderKind::Codex,
            ),
            (
                include_str!("../fixtures/import/codex_auth.json"),
                Some("work"),
                Some(ProviderKind::Codex),
                "work",
                ProviderKind::Codex,
            ),
            (
                claude,
                Some("me+1@x.io"),
                None,
                "me+1@x.io",
                ProviderKind::Claude,
            ),
        ];
        for (text, id, provider, want_id, want_kind) in table {
            let v = import_with(text, id, provider).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                (v[0].id.as_str(), v[0].provider.kind),
                (want_id, want_kind),
                "{text}"
            );
        }
        // Account id when there is no e-mail.
        let text = r#"{"type":"claude","refresh_token":"r","account_id":"acct-7"}"#;
        assert_eq!(one(text).id, "acct-7");
    }

    /// Every error path, with what its message must say.
    #[test]
    fn errors() {
        use ImportError as E;
        let auth = include_str!("../fixtures/import/codex_auth.json");
        let array = include_str!("../fixtures/import/tokenwarden_array.json");
        let oauth2 = r#""provider":"oauth2","refresh_token":"r""#;
        let bad_field = |field: &str| -> Box<dyn Fn(&E) -> bool> {
            let field = field.to_owned();
            Box::new(move |e| matches!(e, E::BadField { field: f, .. } if *f == field))
        };
        let missing = |field: &'static str| -> Box<dyn Fn(&E) -> bool> {
            Box::new(move |e| matches!(e, E::MissingField(f) if f == field))
        };
        // (input, --id, --provider, matcher, text the message must contain)
        type Matcher = Box<dyn Fn(&E) -> bool>;
        type Row = (
            String,
            Option<&'static str>,
            Option<ProviderKind>,
            Matcher,
            &'static str,
        );
        let table: Vec<Row> = vec![
            ("not json".into(), None, None, Box::new(|e| matches!(e, E::NotJson(_))), "not JSON"),
            ("".into(), None, None, Box::new(|e| matches!(e, E::NotJson(_))), "Codex CLI auth.json"),
            ("42".into(), None, None, Box::new(|e| *e == E::UnknownFormat), "CLIProxyAPI"),
            (r#"{"foo":1}"#.into(), None, None, Box::new(|e| *e == E::UnknownFormat), "tokenwarden JSON"),
            ("[]".into(), None, None, Box::new(|e| *e == E::Empty), "nothing to import"),
            (array.into(), Some("x"), None, Box::new(|e| *e == E::IdForMany(2)), "--id"),
            (
                r#"[{"id":"a","provider":"codex","refresh_token":"r"},{"id":"a","provider":"codex","refresh_token":"s"}]"#.into(),
                None, None, Box::new(|e| *e == E::DuplicateId("a".into())), "more than once",
            ),
            (
                r#"[{"id":"a","provider":"codex","refresh_token":"r"},{"id":"b","provider":"codex"}]"#.into(),
                None, None,
                Box::new(|e| matches!(e, E::InRecord { index: 1, source } if **source == E::MissingField("refresh_token".into()))),
                "record 2 of the array: missing field \"refresh_token\"",
            ),
            (r#"[{"id":"a","provider":"codex","refresh_token":"r"}, 7]"#.into(), None, None, Box::new(|e| matches!(e, E::InRecord { index: 1, .. })), "record 2 of the array"),
            // tokenwarden JSON
            (r#"{"id":"a","provider":"codex"}"#.into(), None, None, missing("refresh_token"), "refresh_token"),
            (r#"{"id":"a","provider":"codex","refresh_token":""}"#.into(), None, None, missing("refresh_token"), "refresh_token"),
            (r#"{"id":"a","refresh_token":"r"}"#.into(), None, None, missing("provider (or pass --provider)"), "--provider"),
            (r#"{"id":"a","provider":"github","refresh_token":"r"}"#.into(), None, None, bad_field("provider"), "codex, claude, google or oauth2"),
            (r#"{"id":"a","provider":"codex","refresh_token":"r","expires":1}"#.into(), None, None, Box::new(|e| *e == E::UnknownField("expires".into())), "unknown field \"expires\""),
            (r#"{"id":"a","provider":"codex","refresh_token":7}"#.into(), None, None, bad_field("refresh_token"), "expected a string, found a number"),
            (r#"{"id":["a"],"provider":"codex","refresh_token":"r"}"#.into(), None, None, bad_field("id"), "found an array"),
            (r#"{"id":"a","provider":"codex","refresh_token":"r","encoding":"xml"}"#.into(), None, None, bad_field("encoding"), "form or json"),
            (r#"{"id":"a","provider":"codex","refresh_token":"r","client_auth":"jwt"}"#.into(), None, None, bad_field("client_auth"), "none, post or basic"),
            (r#"{"id":"a","provider":"codex","refresh_token":"r","expires_at":1700000000000}"#.into(), None, None, bad_field("expires_at"), "milliseconds"),
            (r#"{"id":"a","provider":"codex","refresh_token":"r","expires_at":-1}"#.into(), None, None, bad_field("expires_at"), "positive"),
            (r#"{"id":"a","provider":"codex","refresh_token":"r","expires_at":"tomorrow"}"#.into(), None, None, bad_field("expires_at"), "RFC 3339"),
            (r#"{"id":"a","provider":"codex","refresh_token":"r","expires_at":true}"#.into(), None, None, bad_field("expires_at"), "found true/false"),
            (format!("{{\"id\":\"a\",{oauth2}}}"), None, None, missing("token_url"), "token_url"),
            (format!("{{\"id\":\"a\",{oauth2},\"token_url\":\"https://i.example/t\"}}"), None, None, missing("client_id"), "client_id"),
            (r#"{"id":"a","provider":"google","refresh_token":"r"}"#.into(), None, None, missing("client_id"), "client_id"),
            (
                format!("{{\"id\":\"a\",{oauth2},\"token_url\":\"http://i.example/t\",\"client_id\":\"c\"}}"),
                None, None, bad_field("token_url"), "plain http://",
            ),
            (
                format!("{{\"id\":\"a\",{oauth2},\"token_url\":\"https://i.example/t\",\"client_id\":\"c\",\"client_auth\":\"basic\"}}"),
                None, None, Box::new(|e| matches!(e, E::BadSettings(_))), "needs a client_secret",
            ),
            // ids
            (r#"{"provider":"claude","refresh_token":"r"}"#.into(), None, None, Box::new(|e| *e == E::NoId), "pass --id"),
            (r#"{"id":"a/b","provider":"claude","refresh_token":"r"}"#.into(), None, None, Box::new(|e| matches!(e, E::BadId { .. })), "\"a/b\""),
            (r#"{"id":"a","provider":"claude","refresh_token":"r"}"#.into(), Some(".."), None, Box::new(|e| matches!(e, E::BadId { .. })), "--id"),
            (r#"{"type":"claude","refresh_token":"r","email":"o'neil@example.com"}"#.into(), None, None, Box::new(|e| matches!(e, E::BadId { .. })), "pass a valid one with --id"),
            // Codex auth.json
            (include_str!("../fixtures/import/codex_auth_api_key_only.json").into(), None, None, Box::new(|e| *e == E::NoTokens), "codex login"),
            (r#"{"tokens":[]}"#.into(), None, None, bad_field("tokens"), "expected an object"),
            (r#"{"tokens":{"access_token":"a"}}"#.into(), None, None, missing("tokens.refresh_token"), "tokens.refresh_token"),
            (r#"{"tokens":{"refresh_token":"r","account_id":5}}"#.into(), None, None, bad_field("tokens.account_id"), "found a number"),
            (r#"{"tokens":{"refresh_token":"r"},"last_refresh":"yesterday"}"#.into(), Some("a"), None, bad_field("last_refresh"), "RFC 3339"),
            (auth.into(), None, Some(ProviderKind::Claude), Box::new(|e| matches!(e, E::ProviderMismatch { .. })), "--provider claude"),
            // CLIProxyAPI
            (include_str!("../fixtures/import/cliproxy_gemini.json").into(), None, None, bad_field("type"), "codex and claude"),
            (r#"{"expired":"2023-11-14T22:13:20Z","refresh_token":"r"}"#.into(), None, None, missing("type"), "type"),
            (r#"{"type":"claude","refresh_token":"r","email":"a@b.c","expired":"later"}"#.into(), None, None, bad_field("expired"), "RFC 3339"),
            (r#"{"type":"claude","email":"a@b.c"}"#.into(), None, None, missing("refresh_token"), "refresh_token"),
            (
                include_str!("../fixtures/import/cliproxy_claude.json").into(), None, Some(ProviderKind::Codex),
                Box::new(|e| matches!(e, E::ProviderMismatch { found: ProviderKind::Claude, .. })), "holds a claude credential",
            ),
        ];
        for (text, id, provider, matches, says) in table {
            let err = import_with(&text, id, provider).expect_err(&text);
            assert!(matches(&err), "{text}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(says), "{text}: {msg}");
        }
    }

    /// Secrets never reach an error message, even when they sit in the
    /// offending field or were pasted as a field name.
    #[test]
    fn errors_never_quote_secrets() {
        let secret = "rt_SECRET_0123456789abcdefghijklmnop";
        let texts = [
            format!(r#"{{"id":"a","provider":"codex","refresh_token":"r","{secret}":1}}"#),
            format!(r#"{{"id":"a","provider":"{secret}","refresh_token":"r"}}"#),
            format!(
                r#"{{"id":"a","provider":"codex","refresh_token":"r","expires_at":"{secret}"}}"#
            ),
            format!(r#"{{"id":"a","provider":"codex","refresh_token":"r","encoding":"{secret}"}}"#),
            format!(r#"{{"type":"{secret}","refresh_token":"r"}}"#),
            format!(
                r#"{{"id":"a","provider":"oauth2","refresh_token":"r","client_id":"c","token_url":"http://x.example/{secret}"}}"#
            ),
            format!(
                r#"{{"id":"a","provider":"oauth2","refresh_token":"r","client_id":"c","token_url":"https://x.example/t","client_secret":"{secret}","client_auth":"basic","scope":7}}"#
            ),
            format!(r#"{{"id":"a","provider":"codex","refresh_token":"{secret}" "#),
        ];
        for text in texts {
            let err = import(&text).expect_err(&text);
            assert!(!err.to_string().contains("SECRET"), "{err}");
            assert!(!format!("{err:?}").contains("SECRET"), "{err:?}");
        }
    }

    fn stored(kind: ProviderKind, new: &NewCredential, last_refresh_ms: i64) -> Credential {
        Credential {
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
            include_str!("../fixtures/import/codex_auth.json"),
            include_str!("../fixtures/import/codex_auth_api_key.json"),
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
            include_str!("../fixtures/import/cliproxy_codex.json"),
            include_str!("../fixtures/import/cliproxy_claude.json"),
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
    fn export_refuses_other_providers() {
        let base = one(r#"{"id":"x","provider":"google","client_id":"c","refresh_token":"r"}"#);
        // (provider, codex ok, cliproxy ok)
        let table = [
            (ProviderKind::Codex, true, true),
            (ProviderKind::Claude, false, true),
            (ProviderKind::Google, false, false),
            (ProviderKind::OAuth2, false, false),
        ];
        for (kind, codex_ok, cliproxy_ok) in table {
            let c = stored(kind, &base, NOW);
            assert_eq!(export_codex(&c).is_ok(), codex_ok, "{kind}");
            assert_eq!(export_cliproxy(&c).is_ok(), cliproxy_ok, "{kind}");
        }
        let err = export_cliproxy(&stored(ProviderKind::Google, &base, NOW)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a google credential cannot be exported as cliproxy; that format holds only codex and claude credentials"
        );
    }
}
