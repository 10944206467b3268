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
            | Error::QuotaUnsupported { .. } => 1,
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
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
