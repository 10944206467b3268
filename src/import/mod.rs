//! Import and export of credentials, as pure functions over bytes and data.
//!
//! Five formats are read, told apart by their fields (DESIGN.md §5):
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
//! - **Claude Code `.credentials.json`**: `{"claudeAiOauth":{"accessToken",
//!   "refreshToken","expiresAt" (unix ms),"scopes","subscriptionType"}}`
//!   (has `claudeAiOauth`); a `claude` credential, id `claude` unless
//!   `--id` says otherwise (the file names no account).
//! - **Gemini CLI `oauth_creds.json`**: `{"access_token","refresh_token",
//!   "scope","token_type","id_token","expiry_date" (unix ms)}` (has
//!   `expiry_date` or `token_type`); a `google` credential refreshed with
//!   Gemini CLI's own installed-app client.
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

mod claude_code;
mod cliproxy;
mod codex;
mod error;
mod export;
mod fields;
mod gemini;
mod own;
mod stream;

#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

pub use error::ImportError;
pub use export::{export_claude_code, export_cliproxy, export_codex, export_gemini, ExportError};
pub use stream::{check_stream, stream_import, MAX_RECORD};

use serde_json::{Map, Value};

use crate::credential::{validate_id, NewCredential};
use crate::jwt;
use crate::provider::ProviderKind;
use claude_code::claude_code;
use cliproxy::cliproxy;
use codex::codex_auth;
use error::Result;
use gemini::gemini;
use own::{tokenwarden, TOKENWARDEN_FIELDS};

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
    ClaudeCode,
    Gemini,
}

fn detect(map: &Map<String, Value>) -> Result<Format> {
    let has = |k: &str| map.contains_key(k);
    if has("tokens") || has("OPENAI_API_KEY") {
        Ok(Format::CodexAuth)
    } else if has(claude_code::KEY) {
        Ok(Format::ClaudeCode)
    } else if gemini::detect(map) {
        Ok(Format::Gemini)
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
        Format::ClaudeCode => claude_code(map, opts)?,
        Format::Gemini => gemini(map, opts)?,
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
