//! Keyed fingerprints of refresh tokens: how the store knows, without
//! keeping any old token, that an import carries a refresh token another id
//! holds (`credentials.refresh_fp`, unique) or one that was already spent
//! (`spent_tokens`).
//!
//! A fingerprint is HMAC-SHA-256 under a random 32-byte key made for each
//! database and kept in `meta` as `fingerprint_key` (sealed with the
//! encryption key when the database is encrypted), in hex. Keyed, so that a
//! copy of the database without the key tells nothing about tokens seen
//! elsewhere; a plain hash of a high-entropy token would be safe too, but
//! the key costs nothing and keeps fingerprints from matching across
//! databases.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use zeroize::Zeroizing;

use super::errors::{db_err, sealed};
use crate::error::{Error, Result, Spent};
#[cfg(test)]
use crate::seal::hmac_sha256;
use crate::seal::{is_sealed, Sealer};
pub(crate) use crate::store::fpkey::{FpKey, META_KEY, SEAL_COLUMN};

/// Records the fingerprint `fp` as spent by credential `id`, for `reason`
/// (a `spent_tokens.reason` value; the table's CHECK lists them). A
/// fingerprint already recorded keeps its first record. `ON CONFLICT`, not
/// `OR IGNORE`: OR IGNORE would also skip, silently, a row the CHECK
/// refuses.
pub(super) fn record_spent(
    tx: &Connection,
    fp: &str,
    id: &str,
    now_ms: i64,
    reason: &str,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO spent_tokens (fp, credential_id, spent_at_ms, reason) \
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (fp) DO NOTHING",
    )
    .and_then(|mut s| s.execute(params![fp, id, now_ms, reason]))
    .map(drop)
    .map_err(db_err)
}

/// Re-seals the fingerprint key for `encrypt` / `rekey` (inside their
/// transaction): `convert` maps the stored value to the new one.
pub(super) fn convert_key(
    tx: &Connection,
    convert: impl Fn(&str, &str, String) -> Result<String>,
) -> Result<()> {
    let stored: Option<String> = tx
        .query_row("SELECT value FROM meta WHERE key = ?1", [META_KEY], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db_err)?;
    if let Some(stored) = stored {
        let value = convert("", SEAL_COLUMN, stored)?;
        tx.execute(
            "UPDATE meta SET value = ?2 WHERE key = ?1",
            params![META_KEY, value],
        )
        .map_err(db_err)?;
    }
    Ok(())
}

/// Opens a stored refresh token for fingerprinting.
fn open_token(sealer: Option<&Sealer>, id: &str, stored: String) -> Result<Zeroizing<String>> {
    match (sealer, is_sealed(&stored)) {
        (Some(s), true) => s
            .open(id, "refresh_token", &stored)
            .map(Zeroizing::new)
            .map_err(|e| sealed(id, "refresh_token", e)),
        (None, true) => Err(Error::Config(
            "the database holds encrypted tokens and no key is configured".into(),
        )),
        (_, false) => Ok(Zeroizing::new(stored)),
    }
}

/// What [`prepare`] found to do.
struct Pending {
    /// Rows without a fingerprint, with the one to give them.
    rows: Vec<(String, String)>,
    /// Rows left without one, each with the id that holds its token.
    twins: Vec<(String, String)>,
}

/// Finds the rows without a fingerprint (written by schema version 1) and
/// computes theirs; a row whose token another row already holds is left
/// without one and reported (one of them is burnt already, or will be at
/// its next refresh).
fn pending(conn: &Connection, key: &FpKey, sealer: Option<&Sealer>) -> Result<Pending> {
    let missing: Vec<(String, String)> = {
        let mut stmt = conn
            .prepare(
                "SELECT id, refresh_token FROM credentials WHERE refresh_fp IS NULL ORDER BY id",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)?
    };
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut twins = Vec::new();
    for (id, stored) in missing {
        let fp = key.fingerprint(&open_token(sealer, &id, stored)?);
        let holder: Option<String> = conn
            .query_row(
                "SELECT id FROM credentials WHERE refresh_fp = ?1",
                [&fp],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        let twin = rows.iter().find(|(_, f)| *f == fp).map(|(i, _)| i.clone());
        match holder.or(twin) {
            Some(holder) => twins.push((id, holder)),
            None => rows.push((id, fp)),
        }
    }
    Ok(Pending { rows, twins })
}

fn warn_twins(p: &Pending) {
    for (id, holder) in &p.twins {
        log::warn!(
            "credentials '{holder}' and '{id}' hold the same refresh token: the first to \
             refresh spends it for both, and the other dies of reuse. Keep one \
             (`tokenwarden delete {id}`), or log in again and re-import one of them"
        );
    }
}

/// Makes sure the database has a fingerprint key and every row its
/// fingerprint, and returns the key. Reads first and takes the write lock
/// only when there is something to write (a new key, rows of schema
/// version 1), then does it all in one transaction.
pub(super) fn prepare(conn: &mut Connection, sealer: Option<&Sealer>) -> Result<FpKey> {
    let read_key = |c: &Connection| -> Result<Option<FpKey>> {
        c.query_row("SELECT value FROM meta WHERE key = ?1", [META_KEY], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .map_err(db_err)?
        .map(|s| FpKey::from_stored(&s, sealer))
        .transpose()
    };
    if let Some(key) = read_key(conn)? {
        let todo = pending(conn, &key, sealer)?;
        if todo.rows.is_empty() {
            warn_twins(&todo);
            return Ok(key);
        }
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    // Another process may have done it while this one waited for the lock.
    let key = match read_key(&tx)? {
        Some(key) => key,
        None => {
            let key = FpKey::random()?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                params![META_KEY, key.stored(sealer)],
            )
            .map_err(db_err)?;
            key
        }
    };
    let todo = pending(&tx, &key, sealer)?;
    for (id, fp) in &todo.rows {
        tx.execute(
            "UPDATE credentials SET refresh_fp = ?2 WHERE id = ?1",
            params![id, fp],
        )
        .map_err(db_err)?;
    }
    tx.commit().map_err(db_err)?;
    warn_twins(&todo);
    if !todo.rows.is_empty() {
        log::info!(
            "computed the refresh-token fingerprints of {} credential(s)",
            todo.rows.len()
        );
    }
    Ok(key)
}

/// Inside the transaction of a commit that wrote `refresh_token` to `id`:
/// if it is a new token, the old one's fingerprint becomes spent (a refresh
/// rotated it away) and the new one's becomes current.
pub(super) fn rotated(
    tx: &Connection,
    key: &FpKey,
    id: &str,
    refresh_token: &str,
    now_ms: i64,
) -> Result<()> {
    let new = key.fingerprint(refresh_token);
    let old: Option<String> = tx
        .prepare_cached("SELECT refresh_fp FROM credentials WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)))
        .map_err(db_err)?;
    if old.as_deref() == Some(new.as_str()) {
        return Ok(());
    }
    if let Some(old) = &old {
        record_spent(tx, old, id, now_ms, Spent::Rotated.as_str())?;
    }
    // Another row holding the new token cannot happen (tokens are unique per
    // id and upstream mints new ones); should it, the rotated tokens must
    // still be committed: the row goes without a fingerprint instead.
    let set = tx
        .prepare_cached("UPDATE OR IGNORE credentials SET refresh_fp = ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![id, new]))
        .map_err(db_err)?;
    if set == 0 {
        log::error!("{id}: another credential holds the refresh token a refresh just returned");
        tx.execute(
            "UPDATE credentials SET refresh_fp = NULL WHERE id = ?1",
            [id],
        )
        .map_err(db_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// RFC 4231 test cases 1, 2, 4 and 6 (key longer than a block).
    #[test]
    fn hmac_matches_rfc_4231() {
        let cases: [(&[u8], &[u8], &str); 4] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[
                    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                    23, 24, 25,
                ],
                &[0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for (key, msg, want) in cases {
            assert_eq!(hex(&hmac_sha256(key, msg)), want);
        }
    }

    #[test]
    fn keys_round_trip_plain_and_sealed() {
        let key = FpKey::random().unwrap();
        let fp = key.fingerprint("rt-1");
        assert_eq!(fp.len(), 64);
        assert_ne!(fp, key.fingerprint("rt-2"));
        assert_ne!(fp, FpKey::random().unwrap().fingerprint("rt-1"), "keyed");

        let plain = FpKey::from_stored(&key.stored(None), None).unwrap();
        assert_eq!(plain.fingerprint("rt-1"), fp);
        let sealer = Sealer::from_base64(&crate::seal::generate_key()).unwrap();
        let sealed = key.stored(Some(&sealer));
        assert!(is_sealed(&sealed));
        let opened = FpKey::from_stored(&sealed, Some(&sealer)).unwrap();
        assert_eq!(opened.fingerprint("rt-1"), fp);
        assert!(FpKey::from_stored(&sealed, None).is_err());
        assert!(FpKey::from_stored("not base64!", None).is_err());
        assert!(FpKey::from_stored(&STANDARD.encode([0u8; 16]), None).is_err());
        assert_eq!(format!("{key:?}"), "FpKey(***)");
    }

    /// A store opened with its start-up writes deferred (a one-shot
    /// `token`) reads a schema-v1 database as migrated, but makes the
    /// fingerprint key, fingerprints the old rows and keeps the space
    /// reserve only before its first write — and then exactly as an eager
    /// open would have.
    #[test]
    fn a_deferred_store_does_the_fingerprint_work_before_its_first_write() {
        use crate::credential::{NewCredential, ProviderConfig};
        use crate::provider::ProviderKind;
        use crate::secret::Secret;
        use crate::store::{Backend, Startup};
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(include_str!("../../../schema.sql"))
                .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO credentials (id, provider, state, version, refresh_token, \
                 failures, created_ms, updated_ms) VALUES ('old', 'codex', 'valid', 1, 'rt-old', 0, 1, 1)",
                [],
            )
            .unwrap();
        }
        let store =
            super::super::Sqlite::open(&path, Duration::from_secs(5), 2, None, Startup::Deferred)
                .unwrap();
        let look = |sql: &str| -> Option<String> {
            Connection::open(&path)
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .optional()
                .unwrap()
                .flatten()
        };
        let fp_of_old = "SELECT refresh_fp FROM credentials WHERE id = 'old'";
        let key = "SELECT value FROM meta WHERE key = 'fingerprint_key'";
        let reserve = dir.path().join("v1.db-reserve");
        let version: i64 = Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, super::super::schema::VERSION, "migrated at open");
        assert_eq!(
            store.get("old").unwrap().unwrap().refresh_token.expose(),
            "rt-old"
        );
        assert_eq!(look(key), None, "no key made by a read");
        assert_eq!(look(fp_of_old), None);
        assert!(!reserve.exists());

        let new = NewCredential {
            id: "new".into(),
            provider: ProviderConfig::new(ProviderKind::Codex),
            refresh_token: Secret::new("rt-new"),
            access_token: None,
            id_token: None,
            expires_at_ms: None,
            claims: Default::default(),
            last_refresh_ms: None,
            api_key: None,
        };
        store.insert(&new, "t", 2).unwrap();
        let stored = FpKey::from_stored(&look(key).expect("a key made"), None).unwrap();
        assert_eq!(look(fp_of_old), Some(stored.fingerprint("rt-old")));
        assert_eq!(
            store.codec.fingerprint("rt-new").unwrap(),
            stored.fingerprint("rt-new")
        );
        assert!(reserve.exists());
        // The old row's token is now known: a second id cannot take it.
        let dup = NewCredential {
            id: "dup".into(),
            refresh_token: Secret::new("rt-old"),
            ..new
        };
        assert!(matches!(
            store.insert(&dup, "t", 3),
            Err(Error::TokenHeldElsewhere { .. })
        ));
    }
}
