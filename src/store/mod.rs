//! The SQLite store: credentials as rows changed only by compare-and-swap.
//!
//! The interface is deliberately narrow — read a row, write a
//! [`Transition`] (claim, commit, reject…) guarded by version or lease,
//! insert, delete, list, read events — so that another database (PostgreSQL
//! is planned) can implement the same protocol. Every write is one
//! transaction that changes the row, bumps its version and appends the
//! event row; a lost compare-and-swap is `Ok(None)`, not an error.

mod schema;
mod sealing;

use std::path::{Path, PathBuf};
use std::time::Duration;

use r2d2::{Pool, PooledConnection};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{params, ErrorCode, OptionalExtension, Row, TransactionBehavior};

use crate::credential::{Claims, Credential, LastError, NewCredential, ProviderConfig};
use crate::error::{Error, Result};
use crate::provider::usage::Quota;
use crate::provider::{ClientAuth, Encoding, ProviderKind, Tokens};
use crate::seal::Sealer;
use crate::secret::Secret;
use crate::state::{Guard, Lease, State, Status, Transition};

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

/// A pool of connections to one database file.
#[derive(Clone)]
pub struct Store {
    pool: Pool<SqliteConnectionManager>,
    path: PathBuf,
    codec: Codec,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.path.display())
    }
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
    last_error_message, last_error_at_ms, last_refresh_ms, created_ms, updated_ms";

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
    let id: String = r.get(0)?;
    let secret = |i: usize| -> rusqlite::Result<Option<Secret>> {
        r.get::<_, Option<String>>(i)?
            .map(|v| codec.open(&id, sealing::column(i), v, i))
            .transpose()
    };
    let access_token = secret(4)?;
    let lease = match (
        r.get::<_, Option<String>>(20)?,
        r.get::<_, Option<String>>(21)?,
    ) {
        (Some(owner), Some(id)) => Some(Lease {
            owner,
            id,
            until_ms: r.get::<_, Option<i64>>(22)?.unwrap_or(0),
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
            client_secret: secret(10)?,
            scope: r.get(11)?,
            encoding: parsed(r, 12, Encoding::parse)?,
            client_auth: parsed(r, 13, ClientAuth::parse)?,
        },
        status: Status {
            state: required(parsed(r, 2, State::parse)?, 2)?,
            version: r.get(3)?,
            expires_at_ms: r.get(7)?,
            has_access_token: access_token.as_ref().is_some_and(|t| !t.is_empty()),
            lease,
            resume: parsed(r, 23, State::parse)?,
            failures: r.get(24)?,
            next_attempt_at_ms: r.get(25)?,
            last_refresh_ms: r.get(30)?,
            dead_reason: r.get(26)?,
        },
        access_token,
        refresh_token: required(secret(5)?, 5)?,
        id_token: secret(6)?,
        claims: Claims {
            account_id: r.get(15)?,
            email: r.get(16)?,
            plan_type: r.get(17)?,
            user_id: r.get(18)?,
            organization_id: r.get(19)?,
        },
        last_error,
        api_key: secret(14)?,
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
    conn: &rusqlite::Connection,
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

fn select_one(
    conn: &rusqlite::Connection,
    id: &str,
    codec: &Codec,
) -> rusqlite::Result<Option<Credential>> {
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

impl Store {
    /// Frees the space reserve, so that a commit of rotated tokens that hit
    /// a full disk can go through; `false` if there was none left.
    pub fn release_reserve(&self) -> bool {
        std::fs::remove_file(reserve_path(&self.path)).is_ok()
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
        let mut conn = rusqlite::Connection::open(path).map_err(db_err)?;
        schema::configure(&conn, busy_ms).map_err(db_err)?;
        schema::migrate(&mut conn, path)?;
        sealing::check_key(&mut conn, path, sealer.as_ref())?;
        drop(conn);
        ensure_reserve(path);
        let manager =
            SqliteConnectionManager::file(path).with_init(move |c| schema::configure(c, busy_ms));
        let pool = Pool::builder()
            .max_size(pool_size)
            .min_idle(Some(0))
            .connection_timeout(busy_timeout.max(Duration::from_secs(1)))
            .build(manager)
            .map_err(|e| Error::Db(format!("cannot open {}: {e}", path.display())))?;
        Ok(Store {
            pool,
            path: path.to_owned(),
            codec: Codec::new(sealer),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> Result<PooledConnection<SqliteConnectionManager>> {
        self.pool
            .get()
            .map_err(|e| Error::Db(format!("no database connection: {e}")))
    }

    /// Reads one credential.
    pub fn get(&self, id: &str) -> Result<Option<Credential>> {
        select_one(&*self.conn()?, id, &self.codec).map_err(db_err)
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
            .query_map([], |r| read_credential(r, &self.codec))
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)
    }

    /// Inserts a credential, or with `replace` overwrites an existing one
    /// (its version keeps counting up, so no stale compare-and-swap can hit
    /// the new row, and any lease on the old one is voided).
    pub fn insert(
        &self,
        c: &NewCredential,
        replace: bool,
        actor: &str,
        now_ms: i64,
    ) -> Result<Credential> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let old: Option<(String, i64)> = tx
            .query_row(
                "SELECT state, version FROM credentials WHERE id = ?1",
                [&c.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)?;
        if old.is_some() && !replace {
            return Err(Error::Exists(c.id.clone()));
        }
        let version = old.as_ref().map_or(1, |(_, v)| v + 1);
        let p = &c.provider;
        let seal = |col: &str, s: &Secret| self.codec.seal(&c.id, col, s.expose());
        let seal_opt = |col: &str, s: &Option<Secret>| s.as_ref().map(|s| seal(col, s));
        tx.execute(
            "INSERT OR REPLACE INTO credentials (id, provider, state, version, access_token, \
             refresh_token, id_token, expires_at_ms, token_url, client_id, client_secret, scope, \
             encoding, client_auth, api_key, account_id, email, plan_type, user_id, \
             organization_id, failures, last_refresh_ms, created_ms, updated_ms) \
             VALUES (?1, ?2, 'valid', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, \
             ?16, ?17, ?18, ?19, 0, ?20, ?21, ?21)",
            params![
                c.id,
                p.kind.as_str(),
                version,
                seal_opt("access_token", &c.access_token),
                seal("refresh_token", &c.refresh_token),
                seal_opt("id_token", &c.id_token),
                c.expires_at_ms,
                p.token_url,
                p.client_id,
                seal_opt("client_secret", &p.client_secret),
                p.scope,
                p.encoding.map(Encoding::as_str),
                p.client_auth.map(ClientAuth::as_str),
                seal_opt("api_key", &c.api_key),
                c.claims.account_id,
                c.claims.email,
                c.claims.plan_type,
                c.claims.user_id,
                c.claims.organization_id,
                c.last_refresh_ms,
                now_ms,
            ],
        )
        .map_err(db_err)?;
        let reason = if old.is_some() {
            "re-imported"
        } else {
            "imported"
        };
        let from = old.as_ref().map(|(s, _)| s.as_str());
        let change = Change {
            from,
            to: "valid",
            version,
            reason,
        };
        append_event(&tx, &c.id, &change, actor, now_ms).map_err(db_err)?;
        let row = select_one(&tx, &c.id, &self.codec)
            .map_err(db_err)?
            .ok_or_else(|| Error::Db("imported row vanished".into()))?;
        tx.commit().map_err(db_err)?;
        Ok(row)
    }

    /// Writes `t` if its guard still holds: `Ok(Some(row))` with the new row,
    /// or `Ok(None)` when another writer got there first (a lost CAS).
    pub fn apply(
        &self,
        id: &str,
        t: &Transition,
        write: Write<'_>,
        actor: &str,
        now_ms: i64,
    ) -> Result<Option<Credential>> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let (guard_version, guard_lease) = match &t.guard {
            Guard::Version(v) => (Some(*v), None),
            Guard::Lease { id, version } => (*version, Some(id.as_str())),
        };
        let tok = write.tokens;
        let seal = |col: &str, s: &Secret| self.codec.seal(id, col, s.expose());
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
                 last_error_at_ms = CASE WHEN ?20 THEN ?23 ELSE last_error_at_ms END \
                 WHERE id = ?24 AND (?25 IS NULL OR version = ?25) AND (?26 IS NULL OR lease_id = ?26)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    t.to.as_str(),
                    t.resume.map(State::as_str),
                    t.lease.as_ref().map(|l| &l.owner),
                    t.lease.as_ref().map(|l| &l.id),
                    t.lease.as_ref().map(|l| l.until_ms),
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
                ])
            })
            .map_err(db_err)?;
        if changed == 0 {
            return Ok(None);
        }
        let row = select_one(&tx, id, &self.codec)
            .map_err(db_err)?
            .ok_or_else(|| Error::Db("updated row vanished".into()))?;
        let change = Change {
            from: Some(t.from.as_str()),
            to: t.to.as_str(),
            version: row.status.version,
            reason: &t.reason,
        };
        append_event(&tx, id, &change, actor, now_ms).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Some(row))
    }

    /// Deletes a credential (its events stay). `false` if there was none.
    pub fn delete(&self, id: &str, actor: &str, now_ms: i64) -> Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let old: Option<(String, i64)> = tx
            .query_row(
                "DELETE FROM credentials WHERE id = ?1 RETURNING state, version",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)?;
        let Some((state, version)) = old else {
            return Ok(false);
        };
        let change = Change {
            from: Some(&state),
            to: "deleted",
            version: version + 1,
            reason: "deleted",
        };
        append_event(&tx, id, &change, actor, now_ms).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(true)
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
        let mut conn = self.conn()?;
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
        self.conn()?
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
        self.conn()?
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
        self.conn()?
            .prepare_cached(
                "UPDATE handles SET last_used_ms = ?2, served_token = ?3 WHERE hash = ?1",
            )
            .and_then(|mut s| s.execute(params![hash, now_ms, served_token]))
            .map(drop)
            .map_err(db_err)
    }
}
