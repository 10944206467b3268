//! Imports: a new credential (`INSERT`), or a replace (`UPDATE` guarded by
//! the version the caller read, like every other change — never a delete
//! and insert, so handles, quota history and the version count survive).
//!
//! Both refuse, inside their transaction, a refresh token another id holds
//! (`credentials.refresh_fp` is unique) or one that was already spent
//! (`spent_tokens`), comparing keyed fingerprints, never tokens.

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use super::conn::Sync;
use super::errors::db_err;
use super::events::{append_event, Change};
use super::fingerprint::record_spent;
use super::rows::{read_row, select_one, Secrets, COLUMNS};
use super::sealing::Codec;
use super::Sqlite;
use crate::credential::{Credential, NewCredential};
use crate::error::{Error, Result, Spent};
use crate::provider::{ClientAuth, Encoding};
use crate::secret::Secret;
use crate::state::{State, Status};

/// Refuses `fp` for credential `id` if another credential holds it or it
/// was spent.
fn check_token(tx: &Connection, id: &str, fp: &str) -> Result<()> {
    let holder: Option<String> = tx
        .prepare_cached("SELECT id FROM credentials WHERE refresh_fp = ?1 AND id <> ?2")
        .and_then(|mut s| s.query_row(params![fp, id], |r| r.get(0)).optional())
        .map_err(db_err)?;
    if let Some(holder) = holder {
        return Err(Error::TokenHeldElsewhere {
            id: id.to_owned(),
            holder,
        });
    }
    let spent: Option<(String, i64, String)> = tx
        .prepare_cached("SELECT credential_id, spent_at_ms, reason FROM spent_tokens WHERE fp = ?1")
        .and_then(|mut s| {
            s.query_row([fp], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(db_err)?;
    if let Some((spent_by, at_ms, reason)) = spent {
        return Err(Error::SpentToken {
            id: id.to_owned(),
            spent_by,
            at: crate::rfc3339::format(at_ms - at_ms.rem_euclid(1000)),
            how: Spent::parse(&reason).unwrap_or(Spent::Rotated),
        });
    }
    Ok(())
}

/// The columns an import writes, sealed as the database wants them, and
/// the access token as kept (see [`sealed`]).
struct Sealed {
    access_kept: Option<Secret>,
    access_token: Option<String>,
    refresh_token: String,
    id_token: Option<String>,
    client_secret: Option<String>,
    api_key: Option<String>,
}

/// `spent_tokens.reason` of an access token an upstream API refused: its
/// fingerprint is kept so that no import brings it back (a delete and a
/// re-import of an old file would otherwise serve it again).
pub(crate) const REJECTED_ACCESS: &str = "rejected access token";

/// Whether `token` was reported rejected (see [`REJECTED_ACCESS`]).
fn was_rejected(tx: &Connection, codec: &Codec, token: &str) -> Result<bool> {
    let fp = codec.fingerprint(token)?;
    tx.prepare_cached("SELECT 1 FROM spent_tokens WHERE fp = ?1 AND reason = ?2")
        .and_then(|mut s| s.exists(params![fp, REJECTED_ACCESS]))
        .map_err(db_err)
}

/// `c`'s secrets, sealed; an access token once reported rejected is left
/// out (the credential then refreshes before its first use).
fn sealed(tx: &Connection, codec: &Codec, c: &NewCredential) -> Result<Sealed> {
    let seal = |col: &str, s: &Secret| codec.seal(&c.id, col, s.expose());
    let seal_opt = |col: &str, s: &Option<Secret>| s.as_ref().map(|s| seal(col, s));
    let access = match &c.access_token {
        Some(t) if was_rejected(tx, codec, t.expose())? => {
            log::warn!(
                "{}: the imported access token was reported rejected before; it is left out \
                 (the first use refreshes)",
                c.id
            );
            None
        }
        other => other.clone(),
    };
    Ok(Sealed {
        access_token: seal_opt("access_token", &access),
        access_kept: access,
        refresh_token: seal("refresh_token", &c.refresh_token),
        id_token: seal_opt("id_token", &c.id_token),
        client_secret: seal_opt("client_secret", &c.provider.client_secret),
        api_key: seal_opt("api_key", &c.api_key),
    })
}

/// The values of a whole-row write (an insert, or a replace with another
/// refresh token), bound as `?1` to `?21` in that order: id, provider,
/// access, refresh and id tokens, expiry, token URL, client id and secret,
/// scope, encoding, client auth, API key, the five claims, last refresh,
/// now, fingerprint.
fn whole_row<'a>(
    c: &'a NewCredential,
    s: &'a Sealed,
    now_ms: i64,
    fp: &'a str,
) -> impl rusqlite::Params + 'a {
    let p = &c.provider;
    params_from_iter([
        Value::from(c.id.clone()),
        Value::from(p.kind.as_str().to_owned()),
        opt(s.access_token.clone()),
        Value::from(s.refresh_token.clone()),
        opt(s.id_token.clone()),
        c.expires_at_ms.map_or(Value::Null, Value::from),
        opt(p.token_url.clone()),
        opt(p.client_id.clone()),
        opt(s.client_secret.clone()),
        opt(p.scope.clone()),
        opt(p.encoding.map(|e| e.as_str().to_owned())),
        opt(p.client_auth.map(|a| a.as_str().to_owned())),
        opt(s.api_key.clone()),
        opt(c.claims.account_id.clone()),
        opt(c.claims.email.clone()),
        opt(c.claims.plan_type.clone()),
        opt(c.claims.user_id.clone()),
        opt(c.claims.organization_id.clone()),
        c.last_refresh_ms.map_or(Value::Null, Value::from),
        Value::from(now_ms),
        Value::from(fp.to_owned()),
    ])
}

fn opt(v: Option<String>) -> Value {
    v.map_or(Value::Null, Value::from)
}

/// Remembers that an upstream API refused `token`, an access token of
/// credential `id` (see [`REJECTED_ACCESS`]).
pub(super) fn remember_rejected(db: &Sqlite, id: &str, token: &str, now_ms: i64) -> Result<()> {
    let conn = db.writer(Sync::Full)?;
    let fp = db.codec.fingerprint(token)?;
    record_spent(&conn, &fp, id, now_ms, REJECTED_ACCESS)
}

/// Stores a new credential. Refused: an id that exists
/// ([`Error::Exists`]), a refresh token another id holds
/// ([`Error::TokenHeldElsewhere`]) or one already spent
/// ([`Error::SpentToken`]).
pub(super) fn insert(
    db: &Sqlite,
    c: &NewCredential,
    actor: &str,
    now_ms: i64,
) -> Result<Credential> {
    db.write_tx(Sync::Full, |tx| insert_in(tx, &db.codec, c, actor, now_ms))
}

/// [`insert`], unless a row of `c`'s provider that `taken` accepts is
/// already stored: that row (without secrets) and nothing written. The
/// scan runs inside the `IMMEDIATE` write transaction of the insert, under
/// SQLite's write lock: no other connection of any process commits between
/// the look and the insert.
pub(super) fn insert_unless(
    db: &Sqlite,
    c: &NewCredential,
    taken: &dyn Fn(&Credential) -> bool,
    actor: &str,
    now_ms: i64,
) -> Result<std::result::Result<Credential, Credential>> {
    db.write_tx(Sync::Full, |tx| {
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM credentials WHERE provider = ?1 ORDER BY id"
            ))
            .map_err(db_err)?;
        let mut rows = stmt.query([c.provider.kind.as_str()]).map_err(db_err)?;
        while let Some(r) = rows.next().map_err(db_err)? {
            let row = read_row(r, &db.codec, Secrets::Drop).map_err(db_err)?;
            if taken(&row) {
                return Ok(Err(row));
            }
        }
        insert_in(tx, &db.codec, c, actor, now_ms).map(Ok)
    })
}

/// Stores many new credentials in one transaction (one fsync): a refused
/// one ([`insert`]'s refusals) has its refusal returned in its place — or,
/// `all_or_nothing`, the first refusal fails the whole batch. The
/// database's own trouble fails the whole batch, which then wrote nothing.
///
/// No savepoint per record: [`insert_in`] decides every refusal by reading
/// before it writes anything, so a refused record has nothing to roll
/// back, and an error after its first write is the database's own, which
/// rolls the whole transaction back. (A savepoint made SQLite copy every
/// page a record touched to a statement journal first: a tenth of an
/// import's time.) The transaction is a [`Sqlite::batch_tx`]: a wider
/// page cache and fewer checkpoints while it writes.
pub(super) fn insert_many(
    db: &Sqlite,
    creds: &[&NewCredential],
    all_or_nothing: bool,
    actor: &str,
    now_ms: i64,
) -> Result<Vec<Result<Credential>>> {
    db.batch_tx(|tx| {
        let mut out = Vec::with_capacity(creds.len());
        for c in creds {
            match insert_in(tx, &db.codec, c, actor, now_ms) {
                Ok(row) => out.push(Ok(row)),
                Err(
                    e @ (Error::Exists(_)
                    | Error::SpentToken { .. }
                    | Error::TokenHeldElsewhere { .. }),
                ) if !all_or_nothing => out.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    })
}

/// [`insert`] inside the caller's transaction. Every refusal is decided
/// before the first write ([`insert_many`] relies on it), and the row
/// answered is the one written, built from the values bound to the INSERT
/// rather than read back (the read, with its secrets opened again, was a
/// tenth of an import's time; `insert_answers_the_row_it_stored` holds the
/// two equal).
fn insert_in(
    tx: &Connection,
    codec: &Codec,
    c: &NewCredential,
    actor: &str,
    now_ms: i64,
) -> Result<Credential> {
    let fp = codec.fingerprint(c.refresh_token.expose())?;
    check_token(tx, &c.id, &fp)?;
    let exists = tx
        .prepare_cached("SELECT 1 FROM credentials WHERE id = ?1")
        .and_then(|mut s| s.exists([&c.id]))
        .map_err(db_err)?;
    if exists {
        return Err(Error::Exists(c.id.clone()));
    }
    let s = sealed(tx, codec, c)?;
    // The first write: nothing below refuses the record.
    tx.prepare_cached(
        "INSERT INTO credentials (id, provider, state, version, access_token, \
     refresh_token, id_token, expires_at_ms, token_url, client_id, client_secret, scope, \
     encoding, client_auth, api_key, account_id, email, plan_type, user_id, \
     organization_id, failures, last_refresh_ms, created_ms, updated_ms, refresh_fp) \
     VALUES (?1, ?2, 'valid', 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, \
     ?15, ?16, ?17, ?18, 0, ?19, ?20, ?20, ?21)",
    )
    .and_then(|mut st| st.execute(whole_row(c, &s, now_ms, &fp)))
    .map_err(db_err)?;
    let change = Change {
        from: None,
        to: "valid",
        version: 1,
        reason: "imported",
    };
    append_event(tx, &c.id, &change, actor, now_ms).map_err(db_err)?;
    Ok(inserted_row(c, s.access_kept, now_ms))
}

/// The row [`insert_in`] wrote for `c`, as a read would decode it: `valid`
/// at version 1, no lease, failures or error, created and updated at
/// `now_ms`, holding `access` (the import's access token unless it was
/// reported rejected).
fn inserted_row(c: &NewCredential, access: Option<Secret>, now_ms: i64) -> Credential {
    Credential {
        id: c.id.clone(),
        provider: c.provider.clone(),
        status: Status {
            state: State::Valid,
            version: 1,
            expires_at_ms: c.expires_at_ms,
            has_access_token: access.as_ref().is_some_and(|t| !t.is_empty()),
            lease: None,
            resume: None,
            failures: 0,
            next_attempt_at_ms: None,
            last_refresh_ms: c.last_refresh_ms,
            dead_reason: None,
        },
        access_token: access,
        refresh_token: c.refresh_token.clone(),
        id_token: c.id_token.clone(),
        claims: c.claims.clone(),
        last_error: None,
        failing_since_ms: None,
        api_key: c.api_key.clone(),
        created_ms: now_ms,
        updated_ms: now_ms,
    }
}

/// Replaces credential `c.id` if its version is still `version` (the
/// caller read it and saw no live refresh lease): `Ok(None)`, having
/// written nothing, when another writer got there first or the row is
/// gone.
///
/// - The refresh token already stored: only settings and metadata
///   change — provider settings and API key as imported, claims filled
///   in, and the access token if the import's is newer (which also ends
///   a `rejected`). The state, failures, backoff and a death stay: they
///   are about that refresh token, which has not changed.
/// - Another refresh token (refused if another id holds it or it was
///   spent): the row takes the import whole and becomes `valid` with no
///   lease, failures or error — a dead credential is revived. The old
///   token's fingerprint is kept as spent (`replaced`).
///
/// Either way the row keeps its id, creation time, events, handles and
/// quota history, and its version counts on.
pub(super) fn replace(
    db: &Sqlite,
    c: &NewCredential,
    version: i64,
    actor: &str,
    now_ms: i64,
) -> Result<Option<Credential>> {
    let codec = &db.codec;
    db.write_tx(Sync::Full, |tx| {
        let fp = codec.fingerprint(c.refresh_token.expose())?;
        let Some(stored) = select_one(tx, &c.id, codec).map_err(db_err)? else {
            return Ok(None);
        };
        if stored.status.version != version {
            return Ok(None);
        }
        let stored_fp: Option<String> = tx
            .query_row(
                "SELECT refresh_fp FROM credentials WHERE id = ?1",
                [&c.id],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        let same = match &stored_fp {
            Some(old) => *old == fp,
            None => stored.refresh_token == c.refresh_token,
        };
        let p = &c.provider;
        let s = sealed(tx, codec, c)?;
        let (change_from, change_to, reason);
        if same {
            // The refresh token already stored: settings and claims only.
            // Its tokens, state, failures, backoff and lease stay as they
            // are — they are about that refresh token — and the file's
            // access token is not taken: it may be one reported rejected
            // (and rotated away) since the file was written, which must
            // never be served again. `refresh ID` gets a new one.
            let state = stored.status.state;
            let resume = stored.status.resume;
            tx.execute(
                "UPDATE credentials SET version = version + 1, provider = ?2, token_url = ?3, \
             client_id = ?4, client_secret = ?5, scope = ?6, encoding = ?7, \
             client_auth = ?8, api_key = ?9, account_id = COALESCE(?10, account_id), \
             email = COALESCE(?11, email), plan_type = COALESCE(?12, plan_type), \
             user_id = COALESCE(?13, user_id), \
             organization_id = COALESCE(?14, organization_id), state = ?15, \
             resume_state = ?16, updated_ms = ?17 WHERE id = ?1",
                params![
                    c.id,
                    p.kind.as_str(),
                    p.token_url,
                    p.client_id,
                    s.client_secret,
                    p.scope,
                    p.encoding.map(Encoding::as_str),
                    p.client_auth.map(ClientAuth::as_str),
                    s.api_key,
                    c.claims.account_id,
                    c.claims.email,
                    c.claims.plan_type,
                    c.claims.user_id,
                    c.claims.organization_id,
                    state.as_str(),
                    resume.map(State::as_str),
                    now_ms,
                ],
            )
            .map_err(db_err)?;
            if stored_fp.is_none() {
                // A row left without a fingerprint (see `fingerprint::prepare`)
                // gets it if nobody else holds the token.
                tx.execute(
                    "UPDATE OR IGNORE credentials SET refresh_fp = ?2 WHERE id = ?1",
                    params![c.id, fp],
                )
                .map_err(db_err)?;
            }
            (change_from, change_to) = (stored.status.state, state);
            reason = "re-imported, same refresh token";
        } else {
            check_token(tx, &c.id, &fp)?;
            if let Some(old) = &stored_fp {
                record_spent(tx, old, &c.id, now_ms, Spent::Replaced.as_str())?;
            }
            tx.execute(
                "UPDATE credentials SET provider = ?2, state = 'valid', version = version + 1, \
             access_token = ?3, refresh_token = ?4, id_token = ?5, expires_at_ms = ?6, \
             token_url = ?7, client_id = ?8, client_secret = ?9, scope = ?10, \
             encoding = ?11, client_auth = ?12, api_key = ?13, account_id = ?14, \
             email = ?15, plan_type = ?16, user_id = ?17, organization_id = ?18, \
             lease_owner = NULL, lease_id = NULL, lease_until_ms = NULL, lease_clock = NULL, \
             resume_state = NULL, failures = 0, next_attempt_at_ms = NULL, \
             dead_reason = NULL, last_error_code = NULL, last_error_message = NULL, \
             last_error_at_ms = NULL, last_refresh_ms = ?19, updated_ms = ?20, \
             refresh_fp = ?21 WHERE id = ?1",
                whole_row(c, &s, now_ms, &fp),
            )
            .map_err(db_err)?;
            (change_from, change_to) = (stored.status.state, State::Valid);
            reason = "re-imported";
        }
        let change = Change {
            from: Some(change_from.as_str()),
            to: change_to.as_str(),
            version: version + 1,
            reason,
        };
        append_event(tx, &c.id, &change, actor, now_ms).map_err(db_err)?;
        let row = select_one(tx, &c.id, codec)
            .map_err(db_err)?
            .ok_or(Error::Internal("replaced row vanished"))?;
        Ok(Some(row))
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::credential::ProviderConfig;
    use crate::provider::{ProviderKind, Tokens};
    use crate::state::{self, Event, Lease, Need, Policy};
    use crate::store::{Backend, ErrorUpdate, Write};

    const NOW: i64 = 1_700_000_000_000;

    fn new(id: &str, rt: &str, at: Option<(&str, i64)>) -> NewCredential {
        NewCredential {
            id: id.into(),
            provider: ProviderConfig::new(ProviderKind::Codex),
            refresh_token: Secret::new(rt),
            access_token: at.map(|(t, _)| Secret::new(t)),
            id_token: None,
            expires_at_ms: at.map(|(_, e)| e),
            claims: Default::default(),
            last_refresh_ms: None,
            api_key: None,
        }
    }

    fn open() -> (tempfile::TempDir, Sqlite) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Sqlite::open(
            &path,
            Duration::from_secs(5),
            2,
            None,
            crate::store::Startup::Eager,
        )
        .unwrap();
        (dir, store)
    }

    fn fp_of(store: &Sqlite, id: &str) -> Option<String> {
        store
            .conn()
            .unwrap()
            .query_row(
                "SELECT refresh_fp FROM credentials WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn spent(store: &Sqlite) -> Vec<(String, String)> {
        let conn = store.conn().unwrap();
        let mut stmt = conn
            .prepare("SELECT credential_id, reason FROM spent_tokens ORDER BY spent_at_ms")
            .unwrap();
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    /// A refresh by the lease owner that returns `rt`.
    fn rotate(store: &Sqlite, id: &str, rt: &str, at: i64) -> Credential {
        let p = Policy::default();
        let row = store.get(id).unwrap().unwrap();
        let now = crate::state::Now {
            wall_ms: at,
            lease: crate::clock::lease_now(),
        };
        let lease = Lease {
            owner: "o".into(),
            id: format!("l-{rt}"),
            until: now.plus(60_000).lease,
        };
        let need = Need::Refresh {
            since_ms: at,
            force: true,
        };
        let t = state::apply(&row.status, &Event::Claim { lease, need }, now, &p).unwrap();
        store
            .apply(id, &t, Write::STATE_ONLY, "o", at)
            .unwrap()
            .unwrap();
        let row = store.get(id).unwrap().unwrap();
        let ev = Event::Succeed {
            lease_id: format!("l-{rt}"),
        };
        let t = state::apply(&row.status, &ev, now, &p).unwrap();
        let tokens = Tokens {
            access_token: Secret::new(format!("at-{rt}")),
            refresh_token: Secret::new(rt),
            id_token: None,
            expires_at_ms: at + 3_600_000,
            claims: Default::default(),
        };
        let write = Write {
            tokens: Some(&tokens),
            error: ErrorUpdate::Clear,
            notify: None,
        };
        store.apply(id, &t, write, "o", at).unwrap().unwrap()
    }

    /// The rows `insert` and `insert_many` answer are the rows a read
    /// decodes from the database, in a plain and in an encrypted store:
    /// every setting, claim and secret, an empty access token, and one
    /// reported rejected (left out of the row and out of the answer).
    #[test]
    fn insert_answers_the_row_it_stored() {
        use crate::credential::Claims;
        use crate::provider::{ClientAuth, Encoding};

        let full = |id: &str, rt: &str, at: Option<&str>| NewCredential {
            provider: ProviderConfig {
                kind: ProviderKind::OAuth2,
                token_url: Some("https://auth.example.com/token".into()),
                client_id: Some("client".into()),
                client_secret: Some(Secret::new("cs")),
                scope: Some("openid".into()),
                encoding: Some(Encoding::Json),
                client_auth: Some(ClientAuth::Basic),
            },
            access_token: at.map(Secret::new),
            id_token: Some(Secret::new(format!("idt-{id}"))),
            expires_at_ms: Some(NOW + 3_600_000),
            claims: Claims {
                account_id: Some("acct".into()),
                email: Some("me@example.com".into()),
                plan_type: Some("plus".into()),
                user_id: Some("user".into()),
                organization_id: Some("org".into()),
            },
            last_refresh_ms: Some(NOW - 1000),
            api_key: Some(Secret::new("sk-1")),
            ..new(id, rt, None)
        };
        let sealer =
            || Some(crate::seal::Sealer::from_base64(&crate::seal::generate_key()).unwrap());
        for key in [None, sealer()] {
            let dir = tempfile::tempdir().unwrap();
            let store = Sqlite::open(
                &dir.path().join("t.db"),
                Duration::from_secs(5),
                2,
                key,
                crate::store::Startup::Eager,
            )
            .unwrap();
            store.remember_rejected("old", "at-rejected", NOW).unwrap();
            let one = store
                .insert(&full("one", "rt-one", Some("at-one")), "t", NOW)
                .unwrap();
            assert_eq!(Some(&one), store.get("one").unwrap().as_ref());
            let creds = [
                full("a", "rt-a", Some("at-a")),
                full("b", "rt-b", Some("")),
                full("c", "rt-c", Some("at-rejected")),
                new("d", "rt-d", None),
                new("e", "rt-one", None),
            ];
            let refs: Vec<&NewCredential> = creds.iter().collect();
            let rows = store.insert_many(&refs, false, "t", NOW).unwrap();
            assert!(matches!(rows[4], Err(Error::TokenHeldElsewhere { .. })));
            // The refused record wrote nothing, with no savepoint to undo it.
            assert_eq!(store.get("e").unwrap(), None);
            assert!(store.events("e", None, None).unwrap().is_empty());
            for row in rows.into_iter().take(4) {
                let row = row.unwrap();
                assert_eq!(
                    Some(&row),
                    store.get(&row.id).unwrap().as_ref(),
                    "{}",
                    row.id
                );
            }
            let c = store.get("c").unwrap().unwrap();
            assert_eq!(c.access_token, None, "a rejected access token is left out");
            assert!(!c.status.has_access_token);
        }
    }

    #[test]
    fn a_rotation_spends_the_old_fingerprint_in_its_own_commit() {
        let (_dir, store) = open();
        store.insert(&new("a", "rt-1", None), "t", NOW).unwrap();
        let fp1 = fp_of(&store, "a").unwrap();
        assert_eq!(fp1, store.codec.fingerprint("rt-1").unwrap());
        rotate(&store, "a", "rt-2", NOW + 1000);
        assert_eq!(
            fp_of(&store, "a"),
            Some(store.codec.fingerprint("rt-2").unwrap())
        );
        assert_eq!(spent(&store), [("a".to_owned(), "rotated".to_owned())]);
        // A refresh that keeps the refresh token spends nothing.
        rotate(&store, "a", "rt-2", NOW + 2000);
        assert_eq!(spent(&store).len(), 1);

        for (id, rt) in [("a", "rt-1"), ("b", "rt-1")] {
            match store.insert(&new(id, rt, None), "t", NOW) {
                Err(Error::SpentToken {
                    spent_by, at, how, ..
                }) => {
                    assert_eq!((spent_by.as_str(), how), ("a", Spent::Rotated));
                    assert_eq!(at, "2023-11-14T22:13:21Z");
                }
                other => panic!("{other:?}"),
            }
        }
        match store.insert(&new("b", "rt-2", None), "t", NOW) {
            Err(Error::TokenHeldElsewhere { holder, .. }) => assert_eq!(holder, "a"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.insert(&new("a", "rt-9", None), "t", NOW),
            Err(Error::Exists(_))
        ));
        let v = store.get("a").unwrap().unwrap().status.version;
        match store.replace(&new("a", "rt-1", None), v, "t", NOW) {
            Err(Error::SpentToken { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(store.get("a").unwrap().unwrap().status.version, v);
    }

    #[test]
    fn a_replace_is_a_compare_and_swap_that_keeps_the_row() {
        let (_dir, store) = open();
        let row = store
            .insert(&new("a", "rt-1", Some(("at-1", NOW + 10_000))), "t", NOW)
            .unwrap();
        store.insert_handle("h", "a", "laptop", NOW).unwrap();
        let v = row.status.version;
        assert!(store
            .replace(&new("a", "rt-2", None), v + 1, "t", NOW)
            .unwrap()
            .is_none());

        // The same refresh token: the file's access token is never taken
        // (newer or older: it may be one reported rejected since), and the
        // state of a dead credential stays.
        let newer = new("a", "rt-1", Some(("at-2", NOW + 20_000)));
        let row = store.replace(&newer, v, "t", NOW).unwrap().unwrap();
        assert_eq!(row.access_token, Some(Secret::new("at-1")));
        assert_eq!(row.status.version, v + 1);
        let older = new("a", "rt-1", Some(("at-0", NOW + 5_000)));
        let row = store.replace(&older, v + 1, "t", NOW).unwrap().unwrap();
        assert_eq!(row.access_token, Some(Secret::new("at-1")));
        store
            .conn()
            .unwrap()
            .execute(
                "UPDATE credentials SET state = 'dead', dead_reason = 'invalid_grant' \
                 WHERE id = 'a'",
                [],
            )
            .unwrap();
        let row = store
            .replace(&new("a", "rt-1", None), v + 2, "t", NOW)
            .unwrap()
            .unwrap();
        assert_eq!(row.status.state, State::Dead);
        assert!(spent(&store).is_empty());

        // A new refresh token revives it and spends the old one.
        let row = store
            .replace(&new("a", "rt-3", None), v + 3, "t", NOW + 1)
            .unwrap()
            .unwrap();
        assert_eq!(row.status.state, State::Valid);
        assert_eq!(row.status.dead_reason, None);
        assert_eq!(row.refresh_token, Secret::new("rt-3"));
        assert_eq!(row.created_ms, NOW);
        assert_eq!(spent(&store), [("a".to_owned(), "replaced".to_owned())]);
        assert_eq!(store.handles("a").unwrap().len(), 1, "handles kept");
        let reasons: Vec<String> = store
            .events("a", None, None)
            .unwrap()
            .into_iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(
            reasons,
            [
                "imported",
                "re-imported, same refresh token",
                "re-imported, same refresh token",
                "re-imported, same refresh token",
                "re-imported"
            ]
        );
    }
}
