//! The refresh-token fingerprint key, shared by every backend: what a
//! fingerprint is (HMAC-SHA-256 under a random key per database), how the
//! key is made and how it is kept in a `meta` row (base64, sealed with the
//! encryption key when there is one). The backends only store and load the
//! row; see `sqlite/fingerprint.rs` for the rules around it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

use crate::error::{DbError, DbKind, Error, IoError, Result};
use crate::seal::{hmac_sha256, is_sealed, Sealer};

/// The `meta` key of the fingerprint key.
pub(crate) const META_KEY: &str = "fingerprint_key";

/// The sealing context of the fingerprint key (no credential id).
pub(crate) const SEAL_COLUMN: &str = "fingerprint_key";

/// A database's fingerprint key.
pub(crate) struct FpKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for FpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FpKey(***)")
    }
}

impl FpKey {
    pub(crate) fn random() -> Result<FpKey> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut key[..])
            .map_err(|e| IoError::new("no randomness from the OS", e.to_string()))?;
        Ok(FpKey(key))
    }

    /// The key as stored in `meta`: base64, sealed if `sealer` is given.
    pub(crate) fn stored(&self, sealer: Option<&Sealer>) -> String {
        let plain = Zeroizing::new(STANDARD.encode(&self.0[..]));
        match sealer {
            Some(s) => s.seal("", SEAL_COLUMN, &plain),
            None => plain.to_string(),
        }
    }

    /// Reads the key as stored in `meta`.
    pub(crate) fn from_stored(stored: &str, sealer: Option<&Sealer>) -> Result<FpKey> {
        let bad = |kind, why: &str| {
            Error::Db(DbError::new(
                kind,
                format!("the refresh-token fingerprint key in the database's meta table {why}"),
            ))
        };
        let plain = match (sealer, is_sealed(stored)) {
            (Some(s), true) => Zeroizing::new(
                s.open("", SEAL_COLUMN, stored)
                    .map_err(|_| bad(DbKind::Sealed, "does not open with the encryption key"))?,
            ),
            (None, true) => {
                return Err(bad(DbKind::Sealed, "is encrypted and no key is configured"))
            }
            (_, false) => Zeroizing::new(stored.to_owned()),
        };
        let bytes = Zeroizing::new(
            STANDARD
                .decode(plain.trim())
                .map_err(|_| bad(DbKind::Corrupt, "is not base64"))?,
        );
        let key: [u8; 32] = bytes[..]
            .try_into()
            .map_err(|_| bad(DbKind::Corrupt, "is not 32 bytes long"))?;
        Ok(FpKey(Zeroizing::new(key)))
    }

    /// The fingerprint of `token`: HMAC-SHA-256, 64 hex digits.
    pub(crate) fn fingerprint(&self, token: &str) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mac = hmac_sha256(&self.0[..], token.as_bytes());
        let mut hex = String::with_capacity(2 * mac.len());
        for b in mac {
            hex.push(char::from(HEX[usize::from(b >> 4)]));
            hex.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        hex
    }
}

/// The refusal of an import whose refresh token was spent: by credential
/// `spent_by`, at `at_ms`, for `reason` (a `spent_tokens.reason` value).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn spent_error(id: &str, spent_by: String, at_ms: i64, reason: &str) -> Error {
    Error::SpentToken {
        id: id.to_owned(),
        spent_by,
        at: crate::rfc3339::format(at_ms - at_ms.rem_euclid(1000)),
        how: crate::error::Spent::parse(reason).unwrap_or(crate::error::Spent::Rotated),
    }
}
