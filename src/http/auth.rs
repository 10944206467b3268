//! API keys: where they come from, and a constant-time check of the
//! `Authorization: Bearer KEY` header against every one of them.

use std::fmt;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// The environment variable holding API keys, comma-separated.
pub const API_KEY_ENV: &str = "TOKENWARDEN_API_KEY";

/// Largest API key file read.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// The API keys a server accepts. Several may be valid at once, so a key
/// can be rotated without downtime. `Debug` shows only how many there are.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<Secret>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} key(s))", self.keys.len())
    }
}

impl ApiKeys {
    /// These keys; surrounding whitespace is trimmed and empty ones dropped.
    pub fn new<I, S>(keys: I) -> ApiKeys
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ApiKeys {
            keys: keys
                .into_iter()
                .map(|k| k.as_ref().trim().to_owned())
                .filter(|k| !k.is_empty())
                .map(Secret::new)
                .collect(),
        }
    }

    /// The keys of [`API_KEY_ENV`] (comma-separated; unset or empty means
    /// none) plus those of `file` (one per line; blank lines and `#`
    /// comments ignored). A file that cannot be read, or holds no key, is a
    /// configuration error.
    pub fn load(file: Option<&Path>) -> Result<ApiKeys> {
        let mut keys = match std::env::var(API_KEY_ENV) {
            Ok(v) => ApiKeys::new(v.split(',')),
            Err(std::env::VarError::NotPresent) => ApiKeys::default(),
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Error::Config(format!("{API_KEY_ENV} is not valid UTF-8")))
            }
        };
        if let Some(path) = file {
            let from_file = ApiKeys::from_file(path)?;
            keys.keys.extend(from_file.keys);
        }
        Ok(keys)
    }

    /// The keys of a key file: one per line, blank lines and `#` comments
    /// ignored; at least one is required.
    pub fn from_file(path: &Path) -> Result<ApiKeys> {
        let shown = path.display();
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_KEY_FILE).read_to_string(&mut text))
            .map_err(|e| Error::Config(format!("cannot read the API key file {shown}: {e}")))?;
        let keys = ApiKeys::new(text.lines().map(str::trim).filter(|l| !l.starts_with('#')));
        if keys.is_empty() {
            return Err(Error::Config(format!(
                "the API key file {shown} holds no key; put one key per line"
            )));
        }
        Ok(keys)
    }

    /// No key configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether an `Authorization` header value carries one of the keys.
    /// Every key is compared, each in time that depends only on its own
    /// length, so the answer's timing says nothing about which part of a
    /// guess was right.
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        let Some(presented) = authorization.and_then(bearer) else {
            return false;
        };
        let mut ok = false;
        for key in &self.keys {
            ok |= ct_eq(presented.as_bytes(), key.expose().as_bytes());
        }
        ok
    }
}

/// The credentials of a `Bearer` authorization (scheme case-insensitive).
fn bearer(header: &str) -> Option<&str> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// Constant-time equality of a presented value and a key: runs over the
/// key's bytes whatever the presented value holds, without an early exit.
fn ct_eq(presented: &[u8], key: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != key.len());
    for (i, k) in key.iter().enumerate() {
        let p = presented.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(p ^ k);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_is_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abd", b"abc"));
        assert!(!ct_eq(b"ab", b"abc"));
        assert!(!ct_eq(b"abc\0", b"abc"));
        assert!(!ct_eq(b"", b"abc"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn any_key_of_several_is_accepted() {
        let keys = ApiKeys::new(["old-key", " new-key ", ""]);
        assert_eq!(keys.len(), 2);
        assert!(keys.allows(Some("Bearer old-key")));
        assert!(keys.allows(Some("bearer   new-key")));
        assert!(!keys.allows(Some("Bearer other")));
        assert!(!keys.allows(Some("Basic old-key")));
        assert!(!keys.allows(Some("Bearer")));
        assert!(!keys.allows(Some("old-key")));
        assert!(!keys.allows(None));
        assert!(!format!("{keys:?}").contains("key-"));
    }

    #[test]
    fn key_files_skip_comments_and_need_a_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keys");
        std::fs::write(&path, "# rotated 2025-01\n\n first \nsecond\n").expect("write");
        let keys = ApiKeys::from_file(&path).expect("keys");
        assert_eq!(keys.len(), 2);
        assert!(keys.allows(Some("Bearer first")));
        std::fs::write(&path, "# nothing\n\n").expect("write");
        assert!(matches!(ApiKeys::from_file(&path), Err(Error::Config(_))));
        assert!(matches!(
            ApiKeys::from_file(&dir.path().join("missing")),
            Err(Error::Config(_))
        ));
    }
}
