//! The SQLite store: credentials as rows changed only by compare-and-swap.
//!
//! The interface is deliberately narrow — read a row, write a
//! [`Transition`] (claim, commit, reject…) guarded by version or lease,
//! insert, delete, list, read events — so that another database (PostgreSQL
//! is planned) can implement the same protocol. Every write is one
//! transaction that changes the row, bumps its version and appends the
//! event row; a lost compare-and-swap is `Ok(None)`, not an error.

mod fingerprint;
mod imports;
mod schema;
mod sealing;

use std::fs::File;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{MappedMutexGuard, Mutex, MutexGuard};
use r2d2::{Pool, PooledConnection};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior};

use crate::credential::{Claims, Credential, LastError, ProviderConfig};
use crate::error::{Error, Result};
use crate::provider::usage::Quota;
use crate::provider::{ClientAuth, Encoding, ProviderKind, Tokens};
use crate::seal::Sealer;
use crate::secret::Secret;
use crate::state::{Guard, Lease, LeaseTime, State, Status, Transition};

pub use schema::VERSION as SCHEMA_VERSION;
use sealing::Codec;
pub use sealing::{encrypt_in_place, rekey};

/// What a transition does to `last_error`.
#[derive(Debug, Clone, Copy)]
pub enum ErrorUpdate<'a> {
    /// Leave it as it is.
    Keep,
    /// Erase it (after a success).
    Clear,
    /// Record this failure.
    Set(&'a LastError),
}

/// Data written together with a transition, in the same UPDATE.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    /// New tokens and claims (a successful refresh).
    pub tokens: Option<&'a Tokens>,
    /// What happens to `last_error`.
    pub error: ErrorUpdate<'a>,
}

impl Write<'_> {
    /// A transition that writes nothing but the state.
    pub const STATE_ONLY: Write<'static> = Write {
        tokens: None,
        error: ErrorUpdate::Keep,
    };
}

/// One row of a credential's audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Global sequence number.
    pub seq: i64,
    /// The credential (which may since have been deleted).
    pub credential_id: String,
    /// When (unix ms).
    pub at_ms: i64,
    /// State before (`None` for an import).
    pub from: Option<String>,
    /// State after (`deleted` for a delete).
    pub to: String,
    /// Row version after the change.
    pub version: i64,
    /// Who made the change.
    pub actor: String,
    /// Why (never a secret).
    pub reason: String,
}

/// One quota snapshot, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaRow {
    /// The credential.
    pub credential_id: String,
    /// When it was fetched (unix ms).
    pub fetched_at_ms: i64,
    /// `ok`, or the failure's code.
    pub status: String,
    /// Upstream's HTTP status, when there was an answer.
    pub http_status: Option<u16>,
    /// The snapshot, when the fetch succeeded.
    pub quota: Option<Quota>,
    /// What went wrong, when it did not.
    pub error_message: Option<String>,
}

/// Largest quota answer body kept verbatim.
const QUOTA_BODY_CAP: usize = 64 * 1024;

fn read_quota(r: &Row) -> rusqlite::Result<QuotaRow> {
    let status: String = r.get(2)?;
    let windows: Option<String> = r.get(6)?;
    let credits: Option<String> = r.get(7)?;
    // Written by this module as JSON; unreadable values read as absent.
    let quota = (status == "ok").then(|| Quota {
        plan_type: r.get(4).ok().flatten(),
        limit_reached: r.get::<_, Option<bool>>(5).ok().flatten(),
        windows: windows
            .and_then(|w| serde_json::from_str(&w).ok())
            .unwrap_or_default(),
        credits: credits.and_then(|c| serde_json::from_str(&c).ok()),
    });
    Ok(QuotaRow {
        credential_id: r.get(0)?,
        fetched_at_ms: r.get(1)?,
        status,
        http_status: r.get(3)?,
        quota,
        error_message: r.get(8)?,
    })
}

const QUOTA_COLUMNS: &str = "credential_id, fetched_at_ms, status, http_status, plan_type, \
    limit_reached, windows, credits, error_message";

/// A facade handle, as stored (the handle itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleRow {
    /// SHA-256 of the handle, hex; its first 12 characters name it in lists.
    pub hash: String,
    /// The credential it stands for.
    pub credential_id: String,
    /// Who it was made for.
    pub label: String,
    /// When it was made (unix ms).
    pub created_ms: i64,
    /// When a client last presented it (unix ms).
    pub last_used_ms: Option<i64>,
    /// Fingerprint of the access token this client was last answered with.
    pub served_token: Option<String>,
    /// When it was revoked (unix ms).
    pub revoked_ms: Option<i64>,
}

fn read_handle(r: &Row) -> rusqlite::Result<HandleRow> {
    Ok(HandleRow {
        hash: r.get(0)?,
        credential_id: r.get(1)?,
        label: r.get(2)?,
        created_ms: r.get(3)?,
        last_used_ms: r.get(4)?,
        served_token: r.get(5)?,
        revoked_ms: r.get(6)?,
    })
}

const HANDLE_COLUMNS: &str =
    "hash, credential_id, label, created_ms, last_used_ms, served_token, revoked_ms";

/// Connections to one database file: the one opened (and migrated) at
/// start-up, kept for the store's whole life, and an r2d2 pool for the
/// callers that find it busy.
///
/// Keeping the first connection means a one-shot CLI command opens one
/// connection on its own thread (no pool threads, and the WAL and its
/// index are not deleted and recreated between the migration check and
/// the query); a server uses the pool as before. Write transactions of this
/// process take turns on a mutex before asking SQLite for its write lock,
/// so they queue instead of sleeping in SQLite's busy handler.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    codec: Codec,
    busy_timeout: Duration,
    busy_ms: u64,
    pool_size: u32,
    /// The start-up connection, used whenever it is free.
    primary: Mutex<Connection>,
    /// Built on first need, when the primary connection is busy.
    pool: OnceLock<Pool<SqliteConnectionManager>>,
    /// One write transaction of this process at a time.
    writer: Mutex<()>,
    /// The writers' connection, for when the primary one is busy (opened
    /// with the pool).
    write_conn: Mutex<Option<Connection>>,
    /// The WAL-index reader behind [`Store::stamp`], opened on first use.
    watch: OnceLock<Option<Watch>>,
    /// Group commit of [`Store::apply`].
    group: Group,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.inner.path.display())
    }
}

/// A connection of the store: the primary one, or one from the pool.
pub(crate) enum Conn<'a> {
    Primary(MutexGuard<'a, Connection>),
    Pooled(PooledConnection<SqliteConnectionManager>),
    Writer(MappedMutexGuard<'a, Connection>),
}

impl Deref for Conn<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            Conn::Primary(c) => c,
            Conn::Pooled(c) => c,
            Conn::Writer(c) => c,
        }
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        match self {
            Conn::Primary(c) => c,
            Conn::Pooled(c) => c,
            Conn::Writer(c) => c,
        }
    }
}

/// A connection holding this process's turn to write. The connection goes
/// back before the turn is released (fields drop in order).
pub(crate) struct Writer<'a> {
    conn: Conn<'a>,
    _turn: MutexGuard<'a, ()>,
}

impl Deref for Writer<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// What [`Store::delete`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// Deleted (its events stay).
    Done,
    /// No such credential.
    NotFound,
    /// The row changed since the version given: nothing deleted.
    Changed,
}

/// How durable a write transaction must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// `synchronous=FULL`: the WAL is fsynced at commit. Everything a
    /// power cut must not undo: rotated tokens, rejections, imports,
    /// deletes, deaths.
    Full,
    /// `synchronous=NORMAL`: committed (every process sees it at once) but
    /// made durable only by the next `FULL` commit or checkpoint. Only for
    /// a claim of the refresh lease: losing one in a power cut leaves the
    /// row as it was before the claim, which was durable, and the claim's
    /// own refresh can only end in a `FULL` commit, whose fsync also covers
    /// the claim (the WAL is one file, synced whole).
    Normal,
}

/// A snapshot of the database's WAL-index header (see [`Store::stamp`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp([u8; WAL_HDR]);

/// Size of one copy of the WAL-index header (`WalIndexHdr` in SQLite's
/// wal.c, documented in its file format as the wal-index header).
const WAL_HDR: usize = 48;
/// `WALINDEX_MAX_VERSION`, the header's first field.
const WAL_INDEX_VERSION: u32 = 3_007_000;

/// Reads the header of the database's WAL-index (`-shm` file) with one
/// `pread`.
///
/// SQLite keeps two copies of a 48-byte header at the start of the
/// wal-index, which every connection of every process maps shared. Each
/// commit, by any connection, bumps its `iChange` counter and `mxFrame`
/// (and a WAL restart its salts) and rewrites both copies (second, then
/// first) before the commit returns; readers compare the copies to detect
/// a write in progress. So two equal, consistent reads of the header mean
/// nothing was committed in between — the same proof `PRAGMA data_version`
/// gives, which reads the same header but only inside a read transaction
/// (two `fcntl` locks and an `fstat`: ~2 µs here, as long as a whole point
/// SELECT).
///
/// The descriptor is never closed (see [`shm_file`]): SQLite's locks are
/// POSIX advisory locks, which belong to the process, and closing any
/// descriptor of the `-shm` file would drop every one of them — the write
/// lock a connection of this process holds included.
struct Watch {
    shm: &'static File,
}

/// This process's read-only descriptors of `-shm` files, by device and
/// inode: each opened once and never closed.
///
/// `close()` of any descriptor of a file releases every POSIX advisory lock
/// the process holds on it, whichever descriptor took them ("How To Corrupt
/// An SQLite Database File", §2.2). SQLite's own descriptors are safe (it
/// tracks its files by inode and defers closes while a connection of the
/// process holds a lock), but one opened beside SQLite is not: closing it
/// while another connection of this process — another store, or any
/// `rusqlite` connection — holds SQLite's write lock lets a second process
/// write at the same time, and one of the two commits is lost. No store
/// can know that no connection of its process is open, so the descriptor
/// is leaked on purpose: one per `-shm` inode the process ever watches (a
/// server watches one; the inode changes only when every connection of
/// every process has closed the database and SQLite deleted the file).
fn shm_file(path: &Path) -> Option<&'static File> {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    static FILES: OnceLock<Mutex<HashMap<(u64, u64), &'static File>>> = OnceLock::new();
    let key = |m: std::fs::Metadata| (m.dev(), m.ino());
    let mut files = FILES.get_or_init(Mutex::default).lock();
    // `stat` first: no descriptor is opened on a file already watched.
    let known = std::fs::metadata(path).ok().map(key);
    if let Some(file) = known.and_then(|k| files.get(&k)) {
        return Some(file);
    }
    let file: &'static File = Box::leak(Box::new(File::open(path).ok()?));
    // Keyed by what was opened (the path may have been replaced since the
    // `stat`). Should it already be known, this second descriptor stays
    // open all the same.
    if let Ok(k) = file.metadata().map(key) {
        files.entry(k).or_insert(file);
    }
    Some(file)
}

impl Watch {
    /// Opens the wal-index of the database `conn` has open, if it is in WAL
    /// mode; `None` otherwise (callers then simply never get a stamp). A
    /// header that does not read well now (a commit writing it, or not set
    /// up as SQLite sets it up) only means no stamp until it does.
    fn open(conn: &Connection) -> Option<Watch> {
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .ok()?;
        if !mode.eq_ignore_ascii_case("wal") {
            return None;
        }
        // A read opens (and, if needed, initialises) the wal-index.
        conn.query_row("SELECT count(*) FROM meta", [], |r| r.get::<_, i64>(0))
            .ok()?;
        // The name SQLite itself derives the -shm name from.
        let db = conn.path().filter(|p| !p.is_empty())?;
        let shm = shm_file(Path::new(&format!("{db}-shm")))?;
        Some(Watch { shm })
    }

    fn read(&self) -> Option<Stamp> {
        let mut buf = [0u8; 2 * WAL_HDR];
        self.shm.read_exact_at(&mut buf, 0).ok()?;
        let (first, second) = buf.split_at(WAL_HDR);
        // Unequal copies: a commit is writing the header right now.
        if first != second {
            return None;
        }
        let version = u32::from_ne_bytes([first[0], first[1], first[2], first[3]]);
        let initialised = first[12] == 1;
        if version != WAL_INDEX_VERSION || !initialised {
            return None;
        }
        let mut stamp = [0u8; WAL_HDR];
        stamp.copy_from_slice(first);
        Some(Stamp(stamp))
    }
}

/// The same database error again, for each op of a batch that failed as a
/// whole (the store fails only with these two).
fn copy_of(e: &Error) -> Error {
    match e {
        Error::DiskFull(m) => Error::DiskFull(m.clone()),
        Error::Db(m) => Error::Db(m.clone()),
        other => Error::Db(other.to_string()),
    }
}

/// SQLite's own "database is locked" error, for a write that could not get
/// this process's turn within the busy timeout.
fn busy() -> Error {
    db_err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
        Some("database is locked".into()),
    ))
}

/// Turns SQLite's errors into messages that say what to do.
pub(crate) fn db_err(e: rusqlite::Error) -> Error {
    /// SQLITE_IOERR_SHMSIZE: no room to grow the -shm file.
    const IOERR_SHMSIZE: i32 = 4874;
    let extended = match &e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.extended_code),
        _ => None,
    };
    let hint = match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => return Error::DiskFull(e.to_string()),
        _ if extended == Some(IOERR_SHMSIZE) => return Error::DiskFull(e.to_string()),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "the database stayed locked by another process past the busy timeout; retry"
        }
        Some(ErrorCode::ReadOnly) => {
            "the database is read-only; check the file's and its directory's permissions"
        }
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            "the file is not a tokenwarden database, or it is corrupt"
        }
        Some(ErrorCode::CannotOpen) => "the database file cannot be opened",
        Some(ErrorCode::SystemIoFailure) => "an I/O error hit the database file",
        _ => "",
    };
    if hint.is_empty() {
        Error::Db(e.to_string())
    } else {
        Error::Db(format!("{hint} ({e})"))
    }
}

const COLUMNS: &str = "id, provider, state, version, access_token, refresh_token, id_token, \
    expires_at_ms, token_url, client_id, client_secret, scope, encoding, client_auth, api_key, \
    account_id, email, plan_type, user_id, organization_id, lease_owner, lease_id, \
    lease_until_ms, resume_state, failures, next_attempt_at_ms, dead_reason, last_error_code, \
    last_error_message, last_error_at_ms, last_refresh_ms, created_ms, updated_ms, lease_clock";

/// Converts a TEXT column through `parse`, failing on values this build
/// does not know (a corrupt row, never silently a default).
fn parsed<T>(row: &Row, idx: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<Option<T>> {
    let raw: Option<String> = row.get(idx)?;
    raw.map(|s| {
        parse(&s).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                idx,
                rusqlite::types::Type::Text,
                format!("unknown value {s:?}").into(),
            )
        })
    })
    .transpose()
}

fn required<T>(v: Option<T>, idx: usize) -> rusqlite::Result<T> {
    v.ok_or(rusqlite::Error::InvalidColumnType(
        idx,
        "NULL".into(),
        rusqlite::types::Type::Null,
    ))
}

fn read_credential(r: &Row, codec: &Codec) -> rusqlite::Result<Credential> {
    read_row(r, codec, Secrets::Keep)
}

/// Whether a row is read with its secret columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrets {
    Keep,
    /// Left out (the refresh token reads as empty); only whether there is
    /// an access token is kept, in the status.
    Drop,
}

fn read_row(r: &Row, codec: &Codec, secrets: Secrets) -> rusqlite::Result<Credential> {
    let id: String = r.get(0)?;
    let keep = secrets == Secrets::Keep;
    let secret = |i: usize| -> rusqlite::Result<Option<Secret>> {
        r.get::<_, Option<String>>(i)?
            .map(|v| codec.open(&id, sealing::column(i), v, i))
            .transpose()
    };
    let secret_kept = |i: usize| if keep { secret(i) } else { Ok(None) };
    let access_token = secret(4)?;
    let has_access_token = access_token.as_ref().is_some_and(|t| !t.is_empty());
    let access_token = if keep { access_token } else { None };
    let lease = match (
        r.get::<_, Option<String>>(20)?,
        r.get::<_, Option<String>>(21)?,
    ) {
        (Some(owner), Some(id)) => Some(Lease {
            owner,
            id,
            // No clock (a lease of schema version 1): judged expired.
            until: LeaseTime {
                clock: r.get::<_, Option<i64>>(33)?.unwrap_or(0),
                ms: r.get::<_, Option<i64>>(22)?.unwrap_or(0),
            },
        }),
        _ => None,
    };
    let last_error = match r.get::<_, Option<String>>(27)? {
        Some(code) => Some(LastError {
            code,
            message: r.get::<_, Option<String>>(28)?.unwrap_or_default(),
            at_ms: r.get::<_, Option<i64>>(29)?.unwrap_or(0),
        }),
        None => None,
    };
    Ok(Credential {
        id: id.clone(),
        provider: ProviderConfig {
            kind: required(parsed(r, 1, ProviderKind::parse)?, 1)?,
            token_url: r.get(8)?,
            client_id: r.get(9)?,
            client_secret: secret_kept(10)?,
            scope: r.get(11)?,
            encoding: parsed(r, 12, Encoding::parse)?,
            client_auth: parsed(r, 13, ClientAuth::parse)?,
        },
        status: Status {
            state: required(parsed(r, 2, State::parse)?, 2)?,
            version: r.get(3)?,
            expires_at_ms: r.get(7)?,
            has_access_token,
            lease,
            resume: parsed(r, 23, State::parse)?,
            failures: r.get(24)?,
            next_attempt_at_ms: r.get(25)?,
            last_refresh_ms: r.get(30)?,
            dead_reason: r.get(26)?,
        },
        access_token,
        refresh_token: match secrets {
            Secrets::Keep => required(secret(5)?, 5)?,
            Secrets::Drop => Secret::new(String::new()),
        },
        id_token: secret_kept(6)?,
        claims: Claims {
            account_id: r.get(15)?,
            email: r.get(16)?,
            plan_type: r.get(17)?,
            user_id: r.get(18)?,
            organization_id: r.get(19)?,
        },
        last_error,
        api_key: secret_kept(14)?,
        created_ms: r.get(31)?,
        updated_ms: r.get(32)?,
    })
}

/// What an event row records of a change.
struct Change<'a> {
    from: Option<&'a str>,
    to: &'a str,
    version: i64,
    reason: &'a str,
}

fn append_event(
    conn: &Connection,
    id: &str,
    change: &Change,
    actor: &str,
    at_ms: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO events (credential_id, at_ms, from_state, to_state, version, actor, reason) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        id,
        at_ms,
        change.from,
        change.to,
        change.version,
        actor,
        change.reason
    ])
    .map(drop)
}

fn select_one(conn: &Connection, id: &str, codec: &Codec) -> rusqlite::Result<Option<Credential>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM credentials WHERE id = ?1"))?
        .query_row([id], |r| read_credential(r, codec))
        .optional()
}

/// Space kept next to the database for the one write that must not fail
/// for want of space: committing rotated tokens, which exist nowhere else.
const RESERVE_BYTES: usize = 256 * 1024;

fn reserve_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-reserve");
    PathBuf::from(name)
}

/// Creates the reserve file if it is missing (best effort: on a full disk
/// there is nothing to reserve).
fn ensure_reserve(db: &Path) {
    let path = reserve_path(db);
    if path.exists() {
        return;
    }
    if let Err(e) = std::fs::write(&path, vec![0u8; RESERVE_BYTES]) {
        log::debug!("no space reserve next to {}: {e}", db.display());
        let _ = std::fs::remove_file(&path);
    }
}

/// One [`Store::apply`] call, owned, waiting in the group-commit queue.
struct Op {
    id: String,
    t: Transition,
    tokens: Option<Tokens>,
    error: OwnedError,
    actor: String,
    now_ms: i64,
    sync: Sync,
    result: Mutex<Option<Result<Option<Credential>>>>,
}

/// [`ErrorUpdate`], owned.
enum OwnedError {
    Keep,
    Clear,
    Set(LastError),
}

/// The queue of [`Store::apply`] calls and whether one is writing.
#[derive(Default)]
struct Group {
    state: Mutex<GroupState>,
    /// Signalled when a batch is written.
    done: parking_lot::Condvar,
}

#[derive(Default)]
struct GroupState {
    queue: Vec<Arc<Op>>,
    leading: bool,
}

/// The leader's batch. Dropped when it is written — or if writing it
/// panicked, when each op still without a result gets an error — it hands
/// the lead on and wakes the waiters.
struct Leading<'a> {
    group: &'a Group,
    batch: Vec<Arc<Op>>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        for op in &self.batch {
            let mut result = op.result.lock();
            if result.is_none() {
                *result = Some(Err(Error::Db(
                    "the write failed unexpectedly; retry".into(),
                )));
            }
        }
        self.group.state.lock().leading = false;
        self.group.done.notify_all();
    }
}

/// Writes one op inside `tx`: the guarded UPDATE, the row as it now is and
/// the event row. `Ok(None)`, having written nothing, if the guard failed.
fn apply_op(tx: &Connection, codec: &Codec, op: &Op) -> Result<Option<Credential>> {
    let (id, t, actor, now_ms) = (op.id.as_str(), &op.t, op.actor.as_str(), op.now_ms);
    let write = Write {
        tokens: op.tokens.as_ref(),
        error: match &op.error {
            OwnedError::Keep => ErrorUpdate::Keep,
            OwnedError::Clear => ErrorUpdate::Clear,
            OwnedError::Set(e) => ErrorUpdate::Set(e),
        },
    };
    let (guard_version, guard_lease) = match &t.guard {
        Guard::Version(v) => (Some(*v), None),
        Guard::Lease { id, version } => (*version, Some(id.as_str())),
    };
    let tok = write.tokens;
    let seal = |col: &str, s: &Secret| codec.seal(id, col, s.expose());
    let claims = tok.map(|t| &t.claims);
    let (set_error, error) = match write.error {
        ErrorUpdate::Keep => (false, None),
        ErrorUpdate::Clear => (true, None),
        ErrorUpdate::Set(e) => (true, Some(e)),
    };
    let changed = tx
        .prepare_cached(
            "UPDATE credentials SET state = ?1, version = version + 1, resume_state = ?2, \
             lease_owner = ?3, lease_id = ?4, lease_until_ms = ?5, failures = ?6, \
             next_attempt_at_ms = ?7, dead_reason = ?8, updated_ms = ?9, \
             access_token = COALESCE(?10, access_token), \
             refresh_token = COALESCE(?11, refresh_token), \
             id_token = COALESCE(?12, id_token), \
             expires_at_ms = COALESCE(?13, expires_at_ms), \
             last_refresh_ms = COALESCE(?14, last_refresh_ms), \
             account_id = COALESCE(?15, account_id), email = COALESCE(?16, email), \
             plan_type = COALESCE(?17, plan_type), user_id = COALESCE(?18, user_id), \
             organization_id = COALESCE(?19, organization_id), \
             last_error_code = CASE WHEN ?20 THEN ?21 ELSE last_error_code END, \
             last_error_message = CASE WHEN ?20 THEN ?22 ELSE last_error_message END, \
             last_error_at_ms = CASE WHEN ?20 THEN ?23 ELSE last_error_at_ms END, \
             lease_clock = ?27 \
             WHERE id = ?24 AND (?25 IS NULL OR version = ?25) AND (?26 IS NULL OR lease_id = ?26)",
        )
        .and_then(|mut s| {
            s.execute(params![
                t.to.as_str(),
                t.resume.map(State::as_str),
                t.lease.as_ref().map(|l| &l.owner),
                t.lease.as_ref().map(|l| &l.id),
                t.lease.as_ref().map(|l| l.until.ms),
                t.failures,
                t.next_attempt_at_ms,
                t.dead_reason,
                now_ms,
                tok.map(|t| seal("access_token", &t.access_token)),
                tok.map(|t| seal("refresh_token", &t.refresh_token)),
                tok.and_then(|t| t.id_token.as_ref())
                    .map(|s| seal("id_token", s)),
                tok.map(|t| t.expires_at_ms),
                tok.map(|_| now_ms),
                claims.and_then(|c| c.account_id.as_deref()),
                claims.and_then(|c| c.email.as_deref()),
                claims.and_then(|c| c.plan_type.as_deref()),
                claims.and_then(|c| c.user_id.as_deref()),
                claims.and_then(|c| c.organization_id.as_deref()),
                set_error,
                error.map(|e| &e.code),
                error.map(|e| &e.message),
                error.map(|e| e.at_ms),
                id,
                guard_version,
                guard_lease,
                t.lease.as_ref().map(|l| l.until.clock),
            ])
        })
        .map_err(db_err)?;
    if changed == 0 {
        return Ok(None);
    }
    // A new refresh token: the old one's fingerprint is spent, the new one's
    // current (same transaction).
    if let Some(tok) = tok {
        fingerprint::rotated(
            tx,
            codec.fingerprints(),
            id,
            tok.refresh_token.expose(),
            now_ms,
        )?;
    }
    let row = select_one(tx, id, codec)
        .map_err(db_err)?
        .ok_or_else(|| Error::Db("updated row vanished".into()))?;
    let change = Change {
        from: Some(t.from.as_str()),
        to: t.to.as_str(),
        version: row.status.version,
        reason: &t.reason,
    };
    append_event(tx, id, &change, actor, now_ms).map_err(db_err)?;
    Ok(Some(row))
}

impl Store {
    /// Frees the space reserve, so that a commit of rotated tokens that hit
    /// a full disk can go through; `false` if there was none left.
    pub fn release_reserve(&self) -> bool {
        std::fs::remove_file(reserve_path(&self.inner.path)).is_ok()
    }

    /// Opens (creating with mode 0600 if needed) and migrates a database
    /// that is not encrypted.
    pub fn open(path: &Path, busy_timeout: Duration, pool_size: u32) -> Result<Store> {
        Store::open_sealed(path, busy_timeout, pool_size, None)
    }

    /// Opens a database whose secrets are sealed with `sealer` (or not, with
    /// `None`). A key that does not match the database, a key for a plain
    /// database, or no key for an encrypted one is refused here, at start-up,
    /// never by serving garbage later.
    pub fn open_sealed(
        path: &Path,
        busy_timeout: Duration,
        pool_size: u32,
        sealer: Option<Sealer>,
    ) -> Result<Store> {
        schema::create_private(path)?;
        schema::warn_if_exposed(path);
        let busy_ms = u64::try_from(busy_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut conn = Connection::open(path).map_err(db_err)?;
        schema::configure(&conn, busy_ms).map_err(db_err)?;
        schema::migrate(&mut conn, path)?;
        sealing::check_key(&mut conn, path, sealer.as_ref())?;
        let sealer = sealer.map(Arc::new);
        let fingerprints = fingerprint::prepare(&mut conn, sealer.as_deref())?;
        ensure_reserve(path);
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                codec: Codec::new(sealer, fingerprints),
                busy_timeout,
                busy_ms,
                pool_size,
                primary: Mutex::new(conn),
                pool: OnceLock::new(),
                writer: Mutex::new(()),
                write_conn: Mutex::new(None),
                watch: OnceLock::new(),
                group: Group::default(),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The primary connection if it is free, else one from the pool (built
    /// on first need, holding at most `pool_size - 1` more connections).
    fn conn(&self) -> Result<Conn<'_>> {
        let inner = &*self.inner;
        if let Some(c) = inner.primary.try_lock() {
            return Ok(Conn::Primary(c));
        }
        let pool = inner.pool.get_or_init(|| {
            // Concurrency has begun: open the writers' connection now rather
            // than on the path of the first write that needs it.
            if let Some(mut slot) = inner.write_conn.try_lock() {
                if slot.is_none() {
                    *slot = self.open_conn().ok();
                }
            }
            let busy_ms = inner.busy_ms;
            let manager = SqliteConnectionManager::file(&inner.path)
                .with_init(move |c| schema::configure(c, busy_ms));
            Pool::builder()
                .max_size(inner.pool_size.saturating_sub(1).max(1))
                .min_idle(Some(0))
                .connection_timeout(inner.busy_timeout.max(Duration::from_secs(1)))
                .build_unchecked(manager)
        });
        pool.get()
            .map(Conn::Pooled)
            .map_err(|e| Error::Db(format!("no database connection: {e}")))
    }

    /// A new connection to the database, set up like every other.
    fn open_conn(&self) -> Result<Connection> {
        let conn = Connection::open(&self.inner.path).map_err(db_err)?;
        schema::configure(&conn, self.inner.busy_ms).map_err(db_err)?;
        Ok(conn)
    }

    /// A connection for one write transaction at `sync`, once this
    /// process's earlier writes are done. Waiting for the turn counts
    /// against the busy timeout like waiting for SQLite's lock does.
    fn writer(&self, sync: Sync) -> Result<Writer<'_>> {
        let inner = &*self.inner;
        let turn = inner
            .writer
            .try_lock_for(inner.busy_timeout)
            .ok_or_else(busy)?;
        // The primary connection if it is free, else the writers' own, which
        // no reader ever holds: a write never queues behind reads for a
        // connection.
        let conn = match inner.primary.try_lock() {
            Some(c) => Conn::Primary(c),
            None => {
                // Only the holder of the turn takes this lock.
                let mut slot = inner.write_conn.lock();
                if slot.is_none() {
                    *slot = Some(self.open_conn()?);
                }
                Conn::Writer(MutexGuard::map(slot, |c| {
                    c.as_mut().expect("opened just above")
                }))
            }
        };
        // Set on every write (a PRAGMA takes effect when it is prepared, so
        // it is never a cached statement): no connection is ever left at
        // the level of an earlier write.
        conn.execute_batch(match sync {
            Sync::Full => "PRAGMA synchronous = FULL",
            Sync::Normal => "PRAGMA synchronous = NORMAL",
        })
        .map_err(db_err)?;
        Ok(Writer { conn, _turn: turn })
    }

    /// A [`Stamp`] of the database's commit history: equal stamps taken at
    /// two instants prove that no connection of any process committed
    /// anything in between. `None` when it cannot be proven (not in WAL
    /// mode, or a commit is writing the header at this instant): then
    /// nothing may be assumed unchanged.
    ///
    /// One `pread` of 96 bytes, no lock: this is how [`crate::Warden::token`]
    /// knows its cached row is still the row.
    pub fn stamp(&self) -> Option<Stamp> {
        let inner = &*self.inner;
        inner
            .watch
            .get_or_init(|| self.conn().ok().and_then(|c| Watch::open(&c)))
            .as_ref()?
            .read()
    }

    /// Reads one credential.
    pub fn get(&self, id: &str) -> Result<Option<Credential>> {
        select_one(&*self.conn()?, id, &self.inner.codec).map_err(db_err)
    }

    /// Reads one credential without its secrets (as
    /// [`Store::list_without_secrets`]): enough for the state machine.
    pub fn get_without_secrets(&self, id: &str) -> Result<Option<Credential>> {
        self.conn()?
            .prepare_cached(&format!("SELECT {COLUMNS} FROM credentials WHERE id = ?1"))
            .and_then(|mut s| {
                s.query_row([id], |r| read_row(r, &self.inner.codec, Secrets::Drop))
                    .optional()
            })
            .map_err(db_err)
    }

    /// Reads only a credential's version: the cheap poll of a waiter.
    pub fn version(&self, id: &str) -> Result<Option<i64>> {
        self.conn()?
            .prepare_cached("SELECT version FROM credentials WHERE id = ?1")
            .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
            .map_err(db_err)
    }

    /// Every credential, by id.
    pub fn list(&self) -> Result<Vec<Credential>> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM credentials ORDER BY id"))
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| read_credential(r, &self.inner.codec))
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)
    }

    /// Every credential, by id, without its secrets: no access, refresh or
    /// id token, client secret or API key (the refresh token reads as
    /// empty); `status.has_access_token` still says whether there is an
    /// access token. What listings, summaries and the refresh scheduler
    /// need, at a fraction of the memory of [`Store::list`].
    pub fn list_without_secrets(&self) -> Result<Vec<Credential>> {
        let mut rows = Vec::new();
        self.each_without_secrets(|c| rows.push(c))?;
        Ok(rows)
    }

    /// Hands every credential, by id and without its secrets (as
    /// [`Store::list_without_secrets`]), to `f`, one at a time: nothing
    /// but the row at hand is held in memory.
    pub fn each_without_secrets(&self, mut f: impl FnMut(Credential)) -> Result<()> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM credentials ORDER BY id"))
            .map_err(db_err)?;
        let mut rows = stmt.query([]).map_err(db_err)?;
        while let Some(r) = rows.next().map_err(db_err)? {
            f(read_row(r, &self.inner.codec, Secrets::Drop).map_err(db_err)?);
        }
        Ok(())
    }

    /// Writes `t` if its guard still holds: `Ok(Some(row))` with the new row,
    /// or `Ok(None)` when another writer got there first (a lost CAS).
    ///
    /// Concurrent calls of this process are committed together (group
    /// commit): while one transaction commits, the calls that arrive queue
    /// up, and the next transaction writes them all, each under its own
    /// guard and savepoint, with one commit (one fsync). Every call returns
    /// only after the commit that holds its write, so nothing changes for a
    /// caller but the wait.
    pub fn apply(
        &self,
        id: &str,
        t: &Transition,
        write: Write<'_>,
        actor: &str,
        now_ms: i64,
    ) -> Result<Option<Credential>> {
        // A fresh claim of the lease need not survive a power cut (see
        // [`Sync::Normal`]); everything else must. A takeover stays FULL.
        let claim = t.to == State::Refreshing && t.from != State::Refreshing;
        let op = Arc::new(Op {
            id: id.to_owned(),
            t: t.clone(),
            tokens: write.tokens.cloned(),
            error: match write.error {
                ErrorUpdate::Keep => OwnedError::Keep,
                ErrorUpdate::Clear => OwnedError::Clear,
                ErrorUpdate::Set(e) => OwnedError::Set(e.clone()),
            },
            actor: actor.to_owned(),
            now_ms,
            sync: if claim { Sync::Normal } else { Sync::Full },
            result: Mutex::new(None),
        });
        let group = &self.inner.group;
        let mut state = group.state.lock();
        state.queue.push(op.clone());
        loop {
            if let Some(result) = op.result.lock().take() {
                return result;
            }
            if !state.leading {
                // Lead: write everything queued so far, ours included.
                state.leading = true;
                let lead = Leading {
                    group,
                    batch: std::mem::take(&mut state.queue),
                };
                drop(state);
                // Claims first, in a transaction of their own that needs no
                // fsync, so that they are not kept waiting for the others'.
                // (The calls of one batch are all in flight at once: any
                // order of them is one a caller could have seen.)
                let (claims, others): (Vec<_>, Vec<_>) =
                    lead.batch.iter().partition(|op| op.sync == Sync::Normal);
                if !claims.is_empty() {
                    self.write_batch(&claims, Sync::Normal);
                    if !others.is_empty() {
                        // Through the lock: a waiter that found no result
                        // before it was set is waiting by now.
                        drop(group.state.lock());
                        group.done.notify_all();
                    }
                }
                if !others.is_empty() {
                    self.write_batch(&others, Sync::Full);
                }
                drop(lead);
                state = group.state.lock();
                continue;
            }
            group.done.wait(&mut state);
        }
    }

    /// Writes `batch` in one transaction and hands each op its result.
    fn write_batch(&self, batch: &[&Arc<Op>], sync: Sync) {
        let results = self.try_batch(batch, sync);
        match results {
            Ok(results) => {
                for (op, r) in batch.iter().zip(results) {
                    *op.result.lock() = Some(r);
                }
            }
            Err(e) if batch.len() == 1 => *batch[0].result.lock() = Some(Err(e)),
            Err(e) => {
                // Nothing was written: every op fails alike.
                for op in batch {
                    *op.result.lock() = Some(Err(copy_of(&e)));
                }
            }
        }
    }

    /// The ops' results if the transaction committed; a lost CAS or a
    /// failed op writes nothing of its own.
    fn try_batch(&self, batch: &[&Arc<Op>], sync: Sync) -> Result<Vec<Result<Option<Credential>>>> {
        let mut conn = self.writer(sync)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let codec = &self.inner.codec;
        let mut results = Vec::with_capacity(batch.len());
        let mut wrote = false;
        if let [op] = batch {
            let r = apply_op(&tx, codec, op)?;
            wrote = r.is_some();
            results.push(Ok(r));
        } else {
            for op in batch {
                tx.execute_batch("SAVEPOINT op").map_err(db_err)?;
                match apply_op(&tx, codec, op) {
                    Ok(r) => {
                        wrote |= r.is_some();
                        tx.execute_batch("RELEASE op").map_err(db_err)?;
                        results.push(Ok(r));
                    }
                    Err(e) => {
                        tx.execute_batch("ROLLBACK TO op; RELEASE op")
                            .map_err(db_err)?;
                        results.push(Err(e));
                    }
                }
            }
        }
        if wrote {
            tx.commit().map_err(db_err)?;
        }
        Ok(results)
    }

    /// Deletes a credential (its events stay) if it is still at `version`.
    pub fn delete(&self, id: &str, version: i64, actor: &str, now_ms: i64) -> Result<Deleted> {
        let mut conn = self.writer(Sync::Full)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let old: Option<(String, i64, Option<String>)> = tx
            .query_row(
                "SELECT state, version, refresh_fp FROM credentials WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(db_err)?;
        let Some((state, current, fp)) = old else {
            return Ok(Deleted::NotFound);
        };
        if current != version {
            return Ok(Deleted::Changed);
        }
        // Left `refreshing` (its lease over, or its owner gone): the
        // refresh token may have reached upstream and rotated, so it counts
        // as spent — an old file holding it must not come back under this
        // or another id.
        if state == State::Refreshing.as_str() {
            if let Some(fp) = fp {
                let reason = crate::error::Spent::DeletedInRefresh.as_str();
                fingerprint::record_spent(&tx, &fp, id, now_ms, reason)?;
            }
        }
        tx.execute("DELETE FROM credentials WHERE id = ?1", [id])
            .map_err(db_err)?;
        let change = Change {
            from: Some(&state),
            to: "deleted",
            version: version + 1,
            reason: "deleted",
        };
        append_event(&tx, id, &change, actor, now_ms).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Deleted::Done)
    }

    /// A credential's events, newest last; `limit` keeps the newest N.
    pub fn events(&self, id: &str, limit: Option<u32>) -> Result<Vec<EventRow>> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, credential_id, at_ms, from_state, to_state, version, actor, reason \
                 FROM (SELECT * FROM events WHERE credential_id = ?1 ORDER BY seq DESC LIMIT ?2) \
                 ORDER BY seq",
            )
            .map_err(db_err)?;
        let limit = limit.map_or(-1, i64::from);
        let rows = stmt
            .query_map(params![id, limit], |r| {
                Ok(EventRow {
                    seq: r.get(0)?,
                    credential_id: r.get(1)?,
                    at_ms: r.get(2)?,
                    from: r.get(3)?,
                    to: r.get(4)?,
                    version: r.get(5)?,
                    actor: r.get(6)?,
                    reason: r.get(7)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)
    }

    /// Records a quota snapshot (with the raw answer, capped) and prunes
    /// that credential's snapshots older than `keep_since_ms`, always
    /// keeping the newest.
    pub fn insert_quota(
        &self,
        q: &QuotaRow,
        body: Option<&[u8]>,
        keep_since_ms: i64,
    ) -> Result<()> {
        let mut conn = self.writer(Sync::Full)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let quota = q.quota.as_ref();
        let body =
            body.map(|b| String::from_utf8_lossy(&b[..b.len().min(QUOTA_BODY_CAP)]).into_owned());
        tx.prepare_cached(
            "INSERT INTO quota_snapshots (credential_id, fetched_at_ms, status, http_status, \
             plan_type, limit_reached, windows, credits, error_message, body) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .and_then(|mut st| {
            st.execute(params![
                q.credential_id,
                q.fetched_at_ms,
                q.status,
                q.http_status,
                quota.and_then(|q| q.plan_type.as_deref()),
                quota.and_then(|q| q.limit_reached),
                // Serialising plain structs of numbers and strings cannot fail.
                quota.and_then(|q| serde_json::to_string(&q.windows).ok()),
                quota
                    .and_then(|q| q.credits.as_ref())
                    .and_then(|c| serde_json::to_string(c).ok()),
                q.error_message,
                body,
            ])
        })
        .map_err(db_err)?;
        tx.execute(
            "DELETE FROM quota_snapshots WHERE credential_id = ?1 AND fetched_at_ms < ?2 \
             AND seq < (SELECT max(seq) FROM quota_snapshots WHERE credential_id = ?1)",
            params![q.credential_id, keep_since_ms],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// The newest quota snapshot of a credential.
    pub fn latest_quota(&self, id: &str) -> Result<Option<QuotaRow>> {
        self.conn()?
            .prepare_cached(&format!(
                "SELECT {QUOTA_COLUMNS} FROM quota_snapshots WHERE credential_id = ?1 \
                 ORDER BY seq DESC LIMIT 1"
            ))
            .and_then(|mut s| s.query_row([id], read_quota).optional())
            .map_err(db_err)
    }

    /// The newest quota snapshot of every credential that has one.
    pub fn latest_quotas(&self) -> Result<std::collections::HashMap<String, QuotaRow>> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {QUOTA_COLUMNS} FROM quota_snapshots WHERE seq IN \
                 (SELECT max(seq) FROM quota_snapshots GROUP BY credential_id)"
            ))
            .map_err(db_err)?;
        let rows = stmt.query_map([], read_quota).map_err(db_err)?;
        rows.map(|r| r.map(|q| (q.credential_id.clone(), q)))
            .collect::<rusqlite::Result<_>>()
            .map_err(db_err)
    }

    /// How many quota snapshots a credential has (history depth).
    pub fn quota_history_len(&self, id: &str) -> Result<i64> {
        self.conn()?
            .query_row(
                "SELECT count(*) FROM quota_snapshots WHERE credential_id = ?1",
                [id],
                |r| r.get(0),
            )
            .map_err(db_err)
    }

    /// Records a new handle for `credential_id`.
    pub fn insert_handle(
        &self,
        hash: &str,
        credential_id: &str,
        label: &str,
        now_ms: i64,
    ) -> Result<()> {
        self.writer(Sync::Full)?
            .execute(
                "INSERT INTO handles (hash, credential_id, label, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![hash, credential_id, label, now_ms],
            )
            .map(drop)
            .map_err(|e| match e.sqlite_error_code() {
                Some(ErrorCode::ConstraintViolation) => Error::NotFound(credential_id.to_owned()),
                _ => db_err(e),
            })
    }

    /// The handle with this hash.
    pub fn handle(&self, hash: &str) -> Result<Option<HandleRow>> {
        self.conn()?
            .prepare_cached(&format!(
                "SELECT {HANDLE_COLUMNS} FROM handles WHERE hash = ?1"
            ))
            .and_then(|mut s| s.query_row([hash], read_handle).optional())
            .map_err(db_err)
    }

    /// A credential's handles, oldest first.
    pub fn handles(&self, credential_id: &str) -> Result<Vec<HandleRow>> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {HANDLE_COLUMNS} FROM handles WHERE credential_id = ?1 ORDER BY created_ms, hash"
            ))
            .map_err(db_err)?;
        let rows = stmt
            .query_map([credential_id], read_handle)
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)
    }

    /// Revokes the handles whose hash starts with `hash_prefix` (at least 12
    /// hex digits, so one handle is meant); returns how many.
    pub fn revoke_handles(&self, hash_prefix: &str, now_ms: i64) -> Result<usize> {
        self.writer(Sync::Full)?
            .execute(
                "UPDATE handles SET revoked_ms = ?2 WHERE substr(hash, 1, length(?1)) = ?1 \
                 AND revoked_ms IS NULL",
                params![hash_prefix, now_ms],
            )
            .map_err(db_err)
    }

    /// Notes that a client was answered with the token whose fingerprint is
    /// `served_token`.
    pub fn touch_handle(&self, hash: &str, now_ms: i64, served_token: &str) -> Result<()> {
        self.writer(Sync::Full)?
            .prepare_cached(
                "UPDATE handles SET last_used_ms = ?2, served_token = ?3 WHERE hash = ?1",
            )
            .and_then(|mut s| s.execute(params![hash, now_ms, served_token]))
            .map(drop)
            .map_err(db_err)
    }
}
