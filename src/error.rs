//! The crate's error type: one enum whose messages say what happened and
//! what to do, and which maps onto the CLI's exit codes and HTTP statuses.

/// Everything that can go wrong for a caller of tokenwarden.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No credential with that id.
    #[error("unknown credential '{0}'; `tokenwarden list` shows the ids there are")]
    NotFound(String),
    /// The refresh token was refused for good.
    #[error(
        "credential '{id}' is dead ({reason}): log in again and re-import it \
         (`tokenwarden import FILE --replace`), or retry with `tokenwarden refresh {id} --force`"
    )]
    Dead {
        /// Credential id.
        id: String,
        /// The upstream code that killed it.
        reason: String,
    },
    /// No usable token right now; a later call may succeed.
    #[error("credential '{id}' is temporarily unavailable: {message}; retry in {retry_after_s} s")]
    Unavailable {
        /// Credential id.
        id: String,
        /// What went wrong (never a secret).
        message: String,
        /// Whole seconds until a retry makes sense.
        retry_after_s: u64,
    },
    /// The request itself is wrong: bad id, malformed import, bad flag.
    #[error("{0}")]
    BadInput(String),
    /// An import would overwrite an existing credential.
    #[error("credential '{0}' already exists; pass --replace (HTTP: ?replace=1) to overwrite it")]
    Exists(String),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The disk holding the database is full.
    #[error("database: the disk is full; free some space and retry (nothing was written) ({0})")]
    DiskFull(String),
    /// The database failed (busy, read-only, corrupt, foreign…).
    #[error("database: {0}")]
    Db(String),
    /// No quota snapshot has been fetched for the credential yet.
    #[error("no quota snapshot for '{0}' yet; fetch one with `tokenwarden quota {0} --refresh`")]
    NoQuota(String),
    /// The credential's provider has no quota endpoint.
    #[error("credential '{id}' is a {provider} credential, which has no quota endpoint")]
    QuotaUnsupported {
        /// Credential id.
        id: String,
        /// Its provider.
        provider: String,
    },
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// An operator's change (replace, delete, encrypt, rekey) while a
    /// refresh of the credential is in flight: it could get the refresh
    /// token sent twice, or the rotated one lost.
    #[error(
        "credential '{id}' is being refreshed right now; changing it mid-refresh could get its \
         refresh token sent twice and the login revoked. Nothing was changed; retry in \
         {retry_after_s} s (if it stays so, another tokenwarden process is refreshing it, or \
         one that crashed left it: `tokenwarden token {id}` settles that)"
    )]
    RefreshInProgress {
        /// Credential id.
        id: String,
        /// Whole seconds until the lease ends.
        retry_after_s: u64,
    },
    /// An import carrying a refresh token that was already spent.
    #[error(
        "refusing to import '{id}': its refresh token is spent, it was {how} of credential \
         '{spent_by}' at {at}. Providers that rotate refresh tokens treat a spent one that comes \
         back as stolen and revoke the whole login, so importing it would log out every copy of \
         that account. '{id}' was not imported; import a newer file (while '{spent_by}' exists, \
         `tokenwarden export {spent_by} --format codex` writes its current token) or log in again"
    )]
    SpentToken {
        /// The id the import was for.
        id: String,
        /// The credential that spent the token (it may since be deleted).
        spent_by: String,
        /// When (RFC 3339, whole seconds).
        at: String,
        /// How it was spent.
        how: Spent,
    },
    /// An import carrying the refresh token another credential holds.
    #[error(
        "refusing to import '{id}': credential '{holder}' already holds this refresh token. \
         Under two ids it would be refreshed twice, and the second refresh is reuse: the \
         provider revokes the login. '{id}' was not imported; use '{holder}' (`tokenwarden token \
         {holder}`), or move it: `tokenwarden delete {holder}`, then import again"
    )]
    TokenHeldElsewhere {
        /// The id the import was for.
        id: String,
        /// The credential holding the token.
        holder: String,
    },
}

/// How a refresh token came to be spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// A refresh answered with another refresh token.
    Rotated,
    /// An import put another refresh token in its place.
    Replaced,
    /// Its credential was deleted while left `refreshing`: it may have
    /// reached upstream.
    DeletedInRefresh,
}

impl Spent {
    /// The `spent_tokens.reason` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Spent::Rotated => "rotated",
            Spent::Replaced => "replaced",
            Spent::DeletedInRefresh => "deleted during a refresh",
        }
    }

    /// Parses [`Spent::as_str`]'s values.
    pub fn parse(s: &str) -> Option<Spent> {
        match s {
            "rotated" => Some(Spent::Rotated),
            "replaced" => Some(Spent::Replaced),
            "deleted during a refresh" => Some(Spent::DeletedInRefresh),
            _ => None,
        }
    }
}

impl std::fmt::Display for Spent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Spent::Rotated => "rotated away by a refresh",
            Spent::Replaced => "replaced by an import",
            Spent::DeletedInRefresh => {
                "sent upstream by a refresh whose credential was then deleted"
            }
        })
    }
}

impl Error {
    /// The CLI exit code of DESIGN.md §5.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadInput(_) | Error::Config(_) => 2,
            Error::NotFound(_) => 3,
            Error::Dead { .. } => 4,
            Error::Unavailable { .. } => 5,
            Error::Exists(_)
            | Error::Db(_)
            | Error::DiskFull(_)
            | Error::Io(_)
            | Error::NoQuota(_)
            | Error::QuotaUnsupported { .. }
            | Error::RefreshInProgress { .. }
            | Error::SpentToken { .. }
            | Error::TokenHeldElsewhere { .. } => 1,
        }
    }

    /// A short machine-readable code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "not_found",
            Error::Dead { .. } => "credential_dead",
            Error::Unavailable { .. } => "unavailable",
            Error::BadInput(_) => "bad_request",
            Error::Exists(_) => "exists",
            Error::Config(_) => "config_error",
            Error::Db(_) => "database",
            Error::DiskFull(_) => "disk_full",
            Error::Io(_) => "io",
            Error::NoQuota(_) => "no_quota",
            Error::QuotaUnsupported { .. } => "quota_unsupported",
            Error::RefreshInProgress { .. } => "refresh_in_progress",
            Error::SpentToken { .. } => "refresh_token_spent",
            Error::TokenHeldElsewhere { .. } => "refresh_token_in_use",
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;
