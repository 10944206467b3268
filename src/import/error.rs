//! Why bytes could not be imported, with the one message list every
//! format's errors come from.

use thiserror::Error;

use crate::provider::ProviderKind;

/// The formats [`parse_import`](super::parse_import) reads, for error messages.
const ACCEPTED: &str = "a tokenwarden JSON record (or an array of them), \
    a Codex CLI auth.json, a CLIProxyAPI codex/claude auth file, \
    a Claude Code .credentials.json or a Gemini CLI oauth_creds.json";

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
        /// Why (from [`validate_id`](crate::credential::validate_id)).
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
    /// One record larger than the bound (bytes).
    #[error("the record is larger than {} MiB; is it the right file?", .0 / (1024 * 1024))]
    TooLarge(usize),
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

pub(super) type Result<T, E = ImportError> = std::result::Result<T, E>;
