//! API keys: where they come from, and a constant-time check of the
//! `Authorization: Bearer KEY` header against every one of them.

use std::fmt;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// The environment variable holding admin API keys, comma-separated.
pub const API_KEY_ENV: &str = "TOKENWARDEN_API_KEY";

/// The environment variable holding read-only API keys, comma-separated.
pub const READ_KEY_ENV: &str = "TOKENWARDEN_READ_API_KEY";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Fetch tokens (token, reject, refresh without force), read summaries,
    /// events, quota and metrics — what a proxy needs.
    Read,
    /// Everything, including import, delete and forced refresh.
    Admin,
}

/// Keys shorter than this are called weak at start-up: the API does not
/// throttle wrong keys (refusing before the compare would let one client
/// with a typo in its key lock every other client out), so a key's length
/// is what stands against guessing — a web page reached by DNS rebinding
/// can try keys as fast as it sends requests. 20 random characters of
/// `openssl rand -hex 32`'s alphabet are 80 bits.
pub const MIN_STRONG_KEY: usize = 20;

/// Largest API key file read.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// The API keys a server accepts. Several may be valid at once, so a key
/// can be rotated without downtime. `Debug` shows only how many there are.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<(Secret, Scope)>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} key(s))", self.keys.len())
    }
}

impl ApiKeys {
    /// These admin keys; surrounding whitespace is trimmed and empty ones
    /// dropped.
    pub fn new<I, S>(keys: I) -> ApiKeys
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ApiKeys::with_scope(keys, Scope::Admin)
    }

    /// These keys, all with `scope`.
    pub fn with_scope<I, S>(keys: I, scope: Scope) -> ApiKeys
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ApiKeys {
            keys: keys
                .into_iter()
                .map(|k| k.as_ref().trim().to_owned())
                .filter(|k| !k.is_empty())
                .map(|k| (Secret::new(k), scope))
                .collect(),
        }
    }

    /// How many keys are shorter than [`MIN_STRONG_KEY`] characters.
    pub fn weak(&self) -> usize {
        self.keys
            .iter()
            .filter(|(k, _)| k.expose().chars().count() < MIN_STRONG_KEY)
            .count()
    }

    /// Keys written one per line, each optionally prefixed `read:` or
    /// `admin:` (the default).
    pub(crate) fn parse_lines(text: &str) -> ApiKeys {
        ApiKeys {
            keys: text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| match l.split_once(':') {
                    Some(("read", k)) => (Secret::new(k.trim()), Scope::Read),
                    Some(("admin", k)) => (Secret::new(k.trim()), Scope::Admin),
                    _ => (Secret::new(l), Scope::Admin),
                })
                .filter(|(k, _)| !k.is_empty())
                .collect(),
        }
    }

    /// The keys of [`API_KEY_ENV`] (comma-separated; unset or empty means
    /// none) plus those of `file` (one per line; blank lines and `#`
    /// comments ignored). A file that cannot be read, or holds no key, is a
    /// configuration error.
    pub fn load(file: Option<&Path>) -> Result<ApiKeys> {
        let from_env = |name: &str, scope: Scope| match std::env::var(name) {
            Ok(v) => Ok(ApiKeys::with_scope(v.split(','), scope).keys),
            Err(std::env::VarError::NotPresent) => Ok(Vec::new()),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(Error::Config(format!("{name} is not valid UTF-8")))
            }
        };
        let mut keys = ApiKeys {
            keys: from_env(API_KEY_ENV, Scope::Admin)?,
        };
        keys.keys.extend(from_env(READ_KEY_ENV, Scope::Read)?);
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
        let keys = ApiKeys::parse_lines(&text);
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
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        self.scope_of(authorization).is_some()
    }

    /// The scope of the key an `Authorization` header value carries, if
    /// any. Every key is compared, each in time that depends only on its
    /// own length, so the answer's timing says nothing about which part of
    /// a guess was right.
    pub fn scope_of(&self, authorization: Option<&str>) -> Option<Scope> {
        let presented = authorization.and_then(bearer)?;
        let mut best = None;
        for (key, scope) in &self.keys {
            if ct_eq(presented.as_bytes(), key.expose().as_bytes()) {
                best = best.max(Some(*scope));
            }
        }
        best
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
    fn scopes_from_key_files() {
        let keys = ApiKeys::parse_lines("# comment\nread:r-key\nadmin:a-key\nplain-key\n\n");
        assert_eq!(keys.len(), 3);
        assert_eq!(keys.scope_of(Some("Bearer r-key")), Some(Scope::Read));
        assert_eq!(keys.scope_of(Some("Bearer a-key")), Some(Scope::Admin));
        assert_eq!(keys.scope_of(Some("Bearer plain-key")), Some(Scope::Admin));
        assert_eq!(keys.scope_of(Some("Bearer read:r-key")), None);
        assert_eq!(keys.scope_of(None), None);
    }

    #[test]
    fn short_keys_are_weak() {
        let strong = "0123456789abcdef0123";
        let keys = ApiKeys::parse_lines(&format!("{strong}\nread:{}\nshort\n", &strong[1..]));
        assert_eq!(keys.weak(), 2);
        assert_eq!(ApiKeys::new([strong]).weak(), 0);
    }

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
