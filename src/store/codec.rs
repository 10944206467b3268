//! What every backend does to a credential's secret columns on their way
//! in and out: sealing them (encryption at rest, when the database has a
//! key) and fingerprinting refresh tokens with the database's key. The
//! backends store the sealed text as it is.

use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};
use crate::seal::{is_sealed, Sealer};
use crate::secret::Secret;
use crate::store::fpkey::FpKey;

/// The secret columns, by their index in the column list [`super::rowdata::COLUMNS`].
pub(crate) const SECRET_COLUMNS: [(usize, &str); 5] = [
    (4, "access_token"),
    (5, "refresh_token"),
    (6, "id_token"),
    (10, "client_secret"),
    (14, "api_key"),
];

/// The plain text sealed as the key check (`meta` 'key_check'): a key
/// that opens it to this is the database's key.
pub(crate) const KEY_CHECK: &str = "tokenwarden";

/// The column name of index `i` (for the associated data).
pub(crate) fn column(i: usize) -> &'static str {
    SECRET_COLUMNS
        .iter()
        .find(|(idx, _)| *idx == i)
        .map_or("?", |(_, name)| name)
}

/// Seals on write and opens on read, or passes values through when the
/// database is not encrypted; and fingerprints refresh tokens with the
/// database's key (see [`super::fpkey`]). The key is loaded at open,
/// or — for a store opened with its start-up writes deferred
/// ([`crate::store::Startup::Deferred`]) — before its first write: reads never
/// need it.
#[derive(Clone)]
pub(crate) struct Codec(Option<Arc<Sealer>>, Arc<OnceLock<FpKey>>);

impl Codec {
    pub(crate) fn new(sealer: Option<Arc<Sealer>>, fingerprints: Option<FpKey>) -> Codec {
        let key = OnceLock::new();
        if let Some(k) = fingerprints {
            let _ = key.set(k);
        }
        Codec(sealer, Arc::new(key))
    }

    /// The sealer, if the database is encrypted.
    pub(crate) fn sealer(&self) -> Option<&Sealer> {
        self.0.as_deref()
    }

    /// Whether the fingerprint key is loaded.
    pub(crate) fn has_fingerprints(&self) -> bool {
        self.1.get().is_some()
    }

    /// Sets the fingerprint key loaded before a first write (a key loaded
    /// already stays: it is the database's one key either way).
    pub(crate) fn set_fingerprints(&self, key: FpKey) {
        let _ = self.1.set(key);
    }

    pub(crate) fn seal(&self, id: &str, column: &str, plain: &str) -> String {
        match &self.0 {
            Some(s) => s.seal(id, column, plain),
            None => plain.to_owned(),
        }
    }

    /// The keyed fingerprint of a refresh token.
    pub(crate) fn fingerprint(&self, refresh_token: &str) -> Result<String> {
        Ok(self.fingerprints()?.fingerprint(refresh_token))
    }

    /// The fingerprint key, for the writes that keep fingerprints current.
    /// Every backend loads it before its first write, so it is missing
    /// only if that rule was broken.
    pub(crate) fn fingerprints(&self) -> Result<&FpKey> {
        self.1.get().ok_or(Error::Internal(
            "the fingerprint key was not loaded before a write",
        ))
    }

    /// Opens a stored value. A plain value in an encrypted database (written
    /// by a process without the key) is accepted as it is. The error says
    /// why a value does not open (never the value).
    pub(crate) fn open(
        &self,
        id: &str,
        column: &str,
        stored: String,
    ) -> std::result::Result<Secret, String> {
        match (&self.0, is_sealed(&stored)) {
            (Some(s), true) => s
                .open(id, column, &stored)
                .map(Secret::new)
                .map_err(|e| e.to_string()),
            (None, true) => Err("the value is encrypted and no key is configured".into()),
            (_, false) => Ok(Secret::new(stored)),
        }
    }
}
