//! Encryption at rest: every token column and client secret sealed with
//! ChaCha20-Poly1305 (RustCrypto), a fresh random nonce per write, and the
//! credential id and column name as associated data — so a sealed value
//! copied to another row or column does not open.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// SHA-256's block size, for HMAC.
const HMAC_BLOCK: usize = 64;

/// Marks a sealed value (format version 1): `tw1:` + base64(nonce ‖ ciphertext).
const PREFIX: &str = "tw1:";
const NONCE_LEN: usize = 12;

/// A database encryption key, ready to seal and open column values.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(***)")
    }
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The key is not 32 bytes of base64.
    #[error("an encryption key is 32 random bytes in base64 (make one with `tokenwarden keygen`)")]
    BadKey,
    /// Wrong key, or the value was tampered with or moved.
    #[error("a sealed value does not open with this key (wrong key, or the value was altered)")]
    Open,
    /// Not in the sealed format.
    #[error("a value that should be sealed is not")]
    NotSealed,
}

/// Whether `value` is in the sealed format.
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(PREFIX)
}

/// A new random key, base64-encoded.
pub fn generate_key() -> String {
    STANDARD.encode(ChaCha20Poly1305::generate_key(&mut OsRng))
}

fn aad(id: &str, column: &str) -> Vec<u8> {
    // NUL cannot occur in an id or a column name: the split is unambiguous.
    [id.as_bytes(), b"\0", column.as_bytes()].concat()
}

impl Sealer {
    /// A sealer from a base64 key of 32 bytes (surrounding white space ignored).
    pub fn from_base64(key: &str) -> Result<Sealer, SealError> {
        let bytes = Zeroizing::new(STANDARD.decode(key.trim()).map_err(|_| SealError::BadKey)?);
        if bytes.len() != 32 {
            return Err(SealError::BadKey);
        }
        Ok(Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)),
        })
    }

    /// Seals `plain` for `column` of credential `id`.
    pub fn seal(&self, id: &str, column: &str, plain: &str) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plain.as_bytes(),
            aad: &aad(id, column),
        };
        // Encryption only fails for messages over ~256 GiB.
        let sealed = self
            .cipher
            .encrypt(&nonce, payload)
            .expect("ChaCha20-Poly1305 encrypts any message under 256 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", STANDARD.encode(out))
    }

    /// Opens a value sealed for `column` of credential `id`.
    pub fn open(&self, id: &str, column: &str, sealed: &str) -> Result<String, SealError> {
        let body = sealed.strip_prefix(PREFIX).ok_or(SealError::NotSealed)?;
        let bytes = STANDARD.decode(body).map_err(|_| SealError::Open)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ct,
            aad: &aad(id, column),
        };
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain).map_err(|_| SealError::Open)
    }
}

/// HMAC-SHA-256 (RFC 2104) of `message` under `key`, written over `sha2`:
/// the keyed fingerprints of refresh tokens (`store/sqlite/fingerprint.rs`,
/// where RFC 4231's vectors test it) and the signature of a notification
/// (`notify`). Two hashes and a key pad over the `sha2` crate already
/// used: not worth another dependency.
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = Zeroizing::new([0u8; HMAC_BLOCK]);
    if key.len() > HMAC_BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut pad = Zeroizing::new([0u8; HMAC_BLOCK]);
    for (p, k) in pad.iter_mut().zip(block.iter()) {
        *p = k ^ 0x36;
    }
    let inner = Sha256::new()
        .chain_update(&pad[..])
        .chain_update(message)
        .finalize();
    for (p, k) in pad.iter_mut().zip(block.iter()) {
        *p = k ^ 0x5c;
    }
    Sha256::new()
        .chain_update(&pad[..])
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_bound_to_row_and_column() {
        let s = Sealer::from_base64(&generate_key()).unwrap();
        let sealed = s.seal("me", "refresh_token", "rt-secret");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("rt-secret"));
        assert_eq!(s.open("me", "refresh_token", &sealed).unwrap(), "rt-secret");
        assert_ne!(
            sealed,
            s.seal("me", "refresh_token", "rt-secret"),
            "fresh nonce"
        );
        assert_eq!(
            s.open("other", "refresh_token", &sealed),
            Err(SealError::Open)
        );
        assert_eq!(s.open("me", "access_token", &sealed), Err(SealError::Open));
        let other = Sealer::from_base64(&generate_key()).unwrap();
        assert_eq!(
            other.open("me", "refresh_token", &sealed),
            Err(SealError::Open)
        );
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(s.open("me", "refresh_token", &tampered).is_err());
        assert_eq!(
            s.open("me", "refresh_token", "plain"),
            Err(SealError::NotSealed)
        );
        assert_eq!(
            s.open("me", "refresh_token", "tw1:!!"),
            Err(SealError::Open)
        );
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(Sealer::from_base64(&generate_key()).is_ok());
        assert_eq!(
            Sealer::from_base64(&format!(" {}\n", generate_key())).map(|_| ()),
            Ok(())
        );
        for bad in ["", "not base64!", &STANDARD.encode([0u8; 16])] {
            assert_eq!(
                Sealer::from_base64(bad).map(|_| ()),
                Err(SealError::BadKey),
                "{bad}"
            );
        }
    }
}
