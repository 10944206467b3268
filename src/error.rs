//! The crate's error type: one enum whose messages say what happened and
//! what to do, and which maps onto the CLI's exit codes and HTTP statuses.
//!
//! The conditions below tokenwarden are typed, with the error that raised
//! them kept as the `source()`:
//!
//! - [`Error::Db`] and [`Error::DiskFull`] carry a [`DbError`]: a
//!   backend-neutral [`DbKind`] (busy, read-only, corrupt, …), what to do,
//!   and the backend's own error. Each backend maps its errors onto it
//!   (SQLite's codes in `store/sqlite/errors.rs`).
//! - [`Error::Io`] carries an [`IoError`]: what was being done, to which
//!   path (ripgrep's `WithPath`), and the `io::Error` beneath.
//! - [`Error::Internal`] is a broken invariant: tokenwarden's own bug,
//!   named by a fixed string, not a condition of the database.
//!
//! [`Error::BadInput`] and [`Error::Config`] stay text: their message,
//! written for the user (which flag, which setting, what it must be), is
//! the whole error; there is nothing beneath it to keep.
//!
//! Errors are `Clone` (a failed group commit is every one of its writes'
//! failure), and every message, exit code and API code is pinned by the
//! table in `error/tests.rs`.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The error beneath one of ours, shared so that ours can be cloned.
type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong for a caller of tokenwarden.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No credential with that id.
    #[error("unknown credential '{0}'; `tokenwarden list` shows the ids there are")]
    NotFound(String),
    /// The refresh token was refused for good.
    #[error(
        "credential '{id}' is dead ({reason}): sign in again with `{}` (or import a newer \
         login file with --replace), or retry with `{}`",
        crate::login::login_command(*provider, id),
        force_refresh_command(id)
    )]
    Dead {
        /// Credential id.
        id: String,
        /// Its provider, for the `tokenwarden login` command that fixes it.
        provider: crate::credential::ProviderKind,
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
    /// The text, written for the user, is the whole error.
    #[error("{0}")]
    BadInput(String),
    /// An import would overwrite an existing credential.
    #[error("credential '{0}' already exists; pass --replace (HTTP: ?replace=1) to overwrite it")]
    Exists(String),
    /// The configuration is unusable. The text, written for the user
    /// (which setting, what it must be), is the whole error.
    #[error("configuration: {0}")]
    Config(String),
    /// The disk holding the database is full; nothing was written. Its
    /// [`DbError`] is of kind [`DbKind::DiskFull`].
    #[error("database: the disk is full; free some space and retry (nothing was written) ({0})")]
    DiskFull(#[source] DbError),
    /// The database failed: [`DbError::kind`] says how (busy, read-only,
    /// corrupt, another application's, …).
    #[error("database: {0}")]
    Db(#[source] DbError),
    /// A broken invariant: a row written in this transaction is gone, a
    /// write panicked, a served row has no token. A bug in tokenwarden,
    /// neither the database's condition nor the caller's mistake; one
    /// raised inside a transaction rolls it back.
    ///
    /// It reads `database: …` and has the database's exit and API codes,
    /// which is how these surfaced before they had a variant of their own.
    #[error("database: {0}")]
    Internal(&'static str),
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
    /// A file, a socket, a thread or the OS's randomness failed.
    #[error(transparent)]
    Io(#[from] IoError),
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
    /// One record of an array imported over HTTP was refused: its position
    /// (zero-based, shown one-based), how many records before it were
    /// imported, and why. Its exit and API codes are its cause's.
    #[error(
        "record {} of the array: {source}; {}",
        .index + 1,
        imported_before(*imported)
    )]
    InRecord {
        /// The refused record's position in the array.
        index: usize,
        /// Records imported before it.
        imported: usize,
        /// Why it was refused.
        source: Box<Error>,
    },
    /// An import of several records of which some were refused (each said
    /// on stderr with its file and position).
    #[error("{}", partly_imported(*refused, *imported, *total))]
    PartlyImported {
        /// Records refused.
        refused: usize,
        /// Records imported.
        imported: usize,
        /// Records read.
        total: usize,
    },
    /// A `tokenwarden login` that did not sign in: refused consent, an
    /// expired device code, a refused code exchange, a timeout. `code` is
    /// the API code (`access_denied`, `expired_token`, …).
    #[error("sign-in failed: {message}")]
    Login {
        /// Machine-readable: `access_denied`, `expired_token`,
        /// `no_refresh_token`, `bad_callback`, `exchange_failed`,
        /// `upstream_unreachable`, `timed_out`.
        code: &'static str,
        /// What happened and what to do (never a secret).
        message: String,
    },
    /// A pool with no members (or no pool of that name: a pool exists
    /// while it has members).
    #[error(
        "pool '{0}' has no members; add one with `tokenwarden pool add ID {0}` \
         (or `tokenwarden import FILE --pool {0}`)"
    )]
    EmptyPool(String),
    /// No member of a pool can be served now (each is dead, rejected,
    /// cooling down, backing off or refreshing without a usable token).
    #[error("pool '{pool}' has no usable member right now: {members}{}", retry_hint(*retry_after_s))]
    PoolUnavailable {
        /// The pool.
        pool: String,
        /// Each member and why it was passed over (`a: dead, b: cooling down`).
        members: String,
        /// Whole seconds until a member's cooldown or backoff ends, if one
        /// may end by itself.
        retry_after_s: Option<u64>,
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

/// The end of [`Error::PoolUnavailable`]'s message.
fn retry_hint(retry_after_s: Option<u64>) -> String {
    match retry_after_s {
        Some(s) => format!("; retry in {s} s"),
        None => {
            "; every member needs a human (`tokenwarden list --pool NAME` shows why)".to_owned()
        }
    }
}

/// The end of [`Error::InRecord`]'s message.
fn imported_before(imported: usize) -> String {
    match imported {
        0 => "nothing was imported".to_owned(),
        1 => "the record before it was imported".to_owned(),
        n => format!("the {n} records before it were imported"),
    }
}

/// [`Error::PartlyImported`]'s message.
fn partly_imported(refused: usize, imported: usize, total: usize) -> String {
    let kept = match imported {
        0 => "none was imported".to_owned(),
        1 => "the other one was imported".to_owned(),
        n => format!("the other {n} were imported"),
    };
    format!(
        "{refused} of {total} records were refused (each is named above); {kept}. Fix or \
         remove the refused ones and import them again"
    )
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

/// `tokenwarden refresh ID --force`, written to run as printed: an id that
/// starts with `-` after `--`, one a shell treats specially quoted.
fn force_refresh_command(id: &str) -> String {
    let word = crate::login::shell_word(id);
    match id.starts_with('-') {
        true => format!("tokenwarden refresh --force -- {word}"),
        false => format!("tokenwarden refresh {word} --force"),
    }
}

impl Error {
    /// The CLI exit code of DESIGN.md §5.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadInput(_) | Error::Config(_) => 2,
            Error::NotFound(_) | Error::EmptyPool(_) => 3,
            Error::PoolUnavailable { .. } => 5,
            Error::Dead { .. } => 4,
            Error::Unavailable { .. } => 5,
            Error::Db(d) if d.kind() == DbKind::NoConnection => 5,
            Error::InRecord { source, .. } => source.exit_code(),
            Error::Exists(_)
            | Error::Db(_)
            | Error::DiskFull(_)
            | Error::Internal(_)
            | Error::Io(_)
            | Error::NoQuota(_)
            | Error::QuotaUnsupported { .. }
            | Error::RefreshInProgress { .. }
            | Error::SpentToken { .. }
            | Error::PartlyImported { .. }
            | Error::TokenHeldElsewhere { .. }
            | Error::Login { .. } => 1,
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
            Error::Db(d) if d.kind() == DbKind::NoConnection => "store_unavailable",
            Error::Db(_) | Error::Internal(_) => "database",
            Error::DiskFull(_) => "disk_full",
            Error::Io(_) => "io",
            Error::NoQuota(_) => "no_quota",
            Error::EmptyPool(_) => "pool_empty",
            Error::PoolUnavailable { .. } => "pool_unavailable",
            Error::QuotaUnsupported { .. } => "quota_unsupported",
            Error::RefreshInProgress { .. } => "refresh_in_progress",
            Error::SpentToken { .. } => "refresh_token_spent",
            Error::TokenHeldElsewhere { .. } => "refresh_token_in_use",
            Error::PartlyImported { .. } => "partly_imported",
            Error::InRecord { source, .. } => source.code(),
            Error::Login { code, .. } => code,
        }
    }
}

/// What went wrong with the database, in terms any backend can report:
/// each maps its own errors onto these (SQLite's result codes in
/// `store/sqlite/errors.rs`; PostgreSQL would map its SQLSTATEs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DbKind {
    /// Another writer held the lock past the busy timeout; a retry may
    /// succeed.
    Busy,
    /// The database refuses writes: the file's or its directory's
    /// permissions, a read-only mount or replica.
    ReadOnly,
    /// No room left on the storage. [`Error::DiskFull`] carries this kind;
    /// so may an [`Error::Db`] whose message predates that variant (a
    /// migration step that ran out of space).
    DiskFull,
    /// An I/O error beneath the database.
    Io,
    /// The database cannot be opened: missing, or no access.
    CannotOpen,
    /// No connection to the database within the timeout.
    NoConnection,
    /// Not a database at all, or a damaged one.
    Corrupt,
    /// A database whose schema this build cannot use: another
    /// application's, or a newer tokenwarden's.
    Schema,
    /// A sealed (encrypted) value, or the fingerprint key, that does not
    /// open: the wrong key, no key, or an altered value.
    Sealed,
    /// Anything else: a constraint, a statement the database refused, a
    /// value it could not convert.
    Other,
}

/// A database failure: its [`DbKind`], what to do, and the backend's own
/// error as [`source`](std::error::Error::source).
///
/// Shown as `[context: ]message (source)`, or without the parts it lacks:
/// `context` says where (the database file, the migration step), `message`
/// what to do; with neither the backend's error speaks alone.
#[derive(Debug, Clone)]
pub struct DbError {
    kind: DbKind,
    context: Option<String>,
    message: Cow<'static, str>,
    source: Option<Cause>,
}

impl DbError {
    /// An error of `kind` that the message says in full (no error beneath).
    pub(crate) fn new(kind: DbKind, message: impl Into<Cow<'static, str>>) -> DbError {
        DbError {
            kind,
            context: None,
            message: message.into(),
            source: None,
        }
    }

    /// The backend's error `source`, of `kind`, with no message of ours yet.
    pub(crate) fn caused_by(
        kind: DbKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> DbError {
        DbError {
            source: Some(Arc::from(source.into())),
            ..DbError::new(kind, "")
        }
    }

    /// What to do, shown before the source in parentheses.
    pub(crate) fn with_message(self, message: impl Into<Cow<'static, str>>) -> DbError {
        DbError {
            message: message.into(),
            ..self
        }
    }

    /// Where it happened, shown first: `{context}: …` (outermost first).
    pub(crate) fn with_context(self, context: impl Into<String>) -> DbError {
        let context = match self.context {
            Some(inner) => format!("{}: {inner}", context.into()),
            None => context.into(),
        };
        DbError {
            context: Some(context),
            ..self
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> DbKind {
        self.kind
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(context) = &self.context {
            write!(f, "{context}: ")?;
        }
        match (&*self.message, &self.source) {
            ("", Some(source)) => write!(f, "{source}"),
            (message, Some(source)) => write!(f, "{message} ({source})"),
            (message, None) => f.write_str(message),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// An I/O failure: what was being done, to which path when there is one
/// (ripgrep's `WithPath`), and the error beneath as
/// [`source`](std::error::Error::source), usually an [`std::io::Error`].
///
/// Shown as `{doing} {path}: {source}`, `{doing}: {source}` without a
/// path (a thread, signals, randomness, a socket address), or the source
/// alone when `doing` is empty.
#[derive(Debug, Clone)]
pub struct IoError {
    doing: Cow<'static, str>,
    path: Option<PathBuf>,
    source: Cause,
}

impl IoError {
    /// `source` while `doing` something that has no path.
    pub(crate) fn new(
        doing: impl Into<Cow<'static, str>>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> IoError {
        IoError {
            doing: doing.into(),
            path: None,
            source: Arc::from(source.into()),
        }
    }

    /// `source` while `doing` something to `path`.
    pub(crate) fn with_path(
        doing: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> IoError {
        IoError {
            path: Some(path.into()),
            ..IoError::new(doing, source)
        }
    }

    /// The file or directory it happened to, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The [`std::io::ErrorKind`], when the error beneath is an
    /// [`std::io::Error`].
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        self.source
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
    }
}

impl std::fmt::Display for IoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&*self.doing, &self.path) {
            ("", _) => {}
            (doing, None) => write!(f, "{doing}: ")?,
            (doing, Some(path)) => write!(f, "{doing} {}: ", path.display())?,
        }
        write!(f, "{}", self.source)
    }
}

impl std::error::Error for IoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;
