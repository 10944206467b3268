//! The console's sessions and CSRF tokens, in `serve`'s memory.
//!
//! Signing in trades an API key for a random session id (256 bits from
//! the OS), sent back as the `tw_session` cookie: the cookie is never the
//! key, so a leaked cookie dies with its session (sign-out, 12 h idle, a
//! restart), and the key stays out of the browser's cookie jar. The map is
//! keyed by the SHA-256 of the id, so looking one up takes time that says
//! nothing about how close a guess was. Each session keeps the key it was
//! opened with and is dropped as soon as that key is no longer one the
//! server accepts.
//!
//! CSRF: every session has its own random token, compared in constant
//! time. Before a session exists, the sign-in form carries a token derived
//! from a short-lived pre-session cookie (`tw_pre`) and a secret made when
//! the server starts, so a page of another site can neither read nor
//! forge it. Clocks are parameters ([`Instant`]), so expiry is tested
//! without waiting.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::error::{IoError, Result};
use crate::secret::Secret;

use super::super::auth::{ApiKeys, Scope};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "tw_session";

/// The pre-session cookie's name (sign-in form only).
pub const PRE_COOKIE: &str = "tw_pre";

/// A session unused this long is over.
pub const IDLE: Duration = Duration::from_secs(12 * 3600);

/// A sign-in form is good this long after it was served.
pub const PRE_TTL: Duration = Duration::from_secs(3600);

/// The most sessions kept at once for each scope; past it, the least
/// recently used of that scope goes. Only holders of an API key can open
/// one, and a read-only key's sign-ins never push an admin out.
pub const MAX_SESSIONS: usize = 1024;

/// 32 random bytes from the OS, base64url (43 characters).
pub fn random_token() -> Result<String> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut bytes[..])
        .map_err(|e| IoError::new("no randomness from the OS", e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(&bytes[..]))
}

/// SHA-256, hex.
fn digest(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time equality: runs over `want`'s bytes whatever `got` holds.
pub fn ct_eq(got: &[u8], want: &[u8]) -> bool {
    let mut diff = u8::from(got.len() != want.len());
    for (i, w) in want.iter().enumerate() {
        let g = got.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(g ^ w);
    }
    diff == 0
}

/// What a signed-in browser may do, as seen by one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The key's scope.
    pub scope: Scope,
    /// The session's CSRF token (put in every form).
    pub csrf: String,
    /// A message left by the last action, shown once.
    pub flash: Option<Flash>,
}

/// A one-time message after an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    /// Whether it reports a failure.
    pub error: bool,
    /// What happened (never a secret).
    pub message: String,
}

struct Session {
    /// The key it was opened with (checked against the server's keys on
    /// every use).
    key: Secret,
    /// The key's scope when it was opened: the pool it counts against.
    opened_as: Scope,
    csrf: String,
    last_used: Instant,
    flash: Option<Flash>,
}

impl Session {
    /// Its key's scope among `keys` at `now`, unless the key is gone or
    /// the session has been idle too long.
    fn live_scope(&self, keys: &ApiKeys, now: Instant) -> Option<Scope> {
        let idle = now.saturating_duration_since(self.last_used) >= IDLE;
        scope_of_key(keys, self.key.expose()).filter(|_| !idle)
    }
}

/// The sessions of one server.
pub struct Sessions {
    by_hash: Mutex<HashMap<String, Session>>,
    /// Keys the pre-session CSRF tokens (made at start, never shown).
    secret: String,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sessions({})", self.by_hash.lock().len())
    }
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new()
    }
}

impl Sessions {
    /// No session yet. The pre-session secret comes from the OS; without
    /// randomness it is a per-process value from the standard library's
    /// seeded hasher, and signing in fails anyway (session ids need it).
    pub fn new() -> Sessions {
        let secret = random_token().unwrap_or_else(|_| {
            format!(
                "{:x}{:x}",
                crate::clock::unique_u64(),
                crate::clock::unique_u64()
            )
        });
        Sessions {
            by_hash: Mutex::new(HashMap::new()),
            secret,
        }
    }

    /// Opens a session for `key` (already checked, of `scope`) at `now`;
    /// returns its id, the cookie's value. Past [`MAX_SESSIONS`] of the
    /// same scope, that scope's least recently used session goes.
    pub fn open(&self, key: &str, scope: Scope, now: Instant) -> Result<String> {
        let id = random_token()?;
        let csrf = random_token()?;
        let mut map = self.by_hash.lock();
        map.retain(|_, s| now.saturating_duration_since(s.last_used) < IDLE);
        while map.values().filter(|s| s.opened_as == scope).count() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .filter(|(_, s)| s.opened_as == scope)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(h, _)| h.clone());
            match oldest {
                Some(h) => map.remove(&h),
                None => break,
            };
        }
        map.insert(
            digest(&[id.as_bytes()]),
            Session {
                key: Secret::new(key),
                opened_as: scope,
                csrf,
                last_used: now,
                flash: None,
            },
        );
        Ok(id)
    }

    /// The session of cookie value `id` at `now`, if it is live and its
    /// key still accepted by `keys`; marks it used. `take_flash` hands over
    /// (and forgets) its flash message. A session whose key is gone is
    /// dropped.
    pub fn get(&self, id: &str, keys: &ApiKeys, now: Instant, take_flash: bool) -> Option<Seen> {
        let hash = digest(&[id.as_bytes()]);
        let mut map = self.by_hash.lock();
        let s = map.get_mut(&hash)?;
        let Some(scope) = s.live_scope(keys, now) else {
            map.remove(&hash);
            return None;
        };
        s.last_used = now;
        let flash = match take_flash {
            true => s.flash.take(),
            false => None,
        };
        Some(Seen {
            scope,
            csrf: s.csrf.clone(),
            flash,
        })
    }

    /// Of the `tw_session` values a browser sent (several when a page of
    /// another port or path planted its own: cookies are not kept apart
    /// by port), the one naming a live session, an admin's before a
    /// read-only one, else the first live; planted values are ignored.
    /// Touches nothing.
    pub fn pick<'c>(&self, ids: &[&'c str], keys: &ApiKeys, now: Instant) -> Option<&'c str> {
        if ids.is_empty() {
            // No cookie (a sign-in page, a script): no lock taken.
            return None;
        }
        let map = self.by_hash.lock();
        let live = |id: &&str| map.get(&digest(&[id.as_bytes()]))?.live_scope(keys, now);
        let mut best: Option<(&'c str, Scope)> = None;
        for id in ids {
            match (live(id), best) {
                (Some(Scope::Admin), _) => return Some(id),
                (Some(scope), None) => best = Some((id, scope)),
                _ => {}
            }
        }
        best.map(|(id, _)| id)
    }

    /// Leaves a message for the session's next page.
    pub fn flash(&self, id: &str, flash: Flash) {
        let hash = digest(&[id.as_bytes()]);
        if let Some(s) = self.by_hash.lock().get_mut(&hash) {
            s.flash = Some(flash);
        }
    }

    /// Ends the session of cookie value `id`.
    pub fn close(&self, id: &str) {
        self.by_hash.lock().remove(&digest(&[id.as_bytes()]));
    }

    /// How many sessions are kept.
    pub fn len(&self) -> usize {
        self.by_hash.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A pre-session cookie value for a sign-in form served at
    /// `issued_s` (any monotonic seconds count): `issued.random`.
    pub fn pre_cookie(&self, issued_s: u64) -> Result<String> {
        Ok(format!("{issued_s}.{}", random_token()?))
    }

    /// The CSRF token a sign-in form carries for pre-session cookie `pre`.
    pub fn pre_csrf(&self, pre: &str) -> String {
        digest(&[self.secret.as_bytes(), b"sign-in", pre.as_bytes()])
    }

    /// Whether `csrf` is the token of pre-session cookie `pre`, and the
    /// cookie was issued less than [`PRE_TTL`] before `now_s`.
    pub fn pre_ok(&self, pre: Option<&str>, csrf: Option<&str>, now_s: u64) -> bool {
        let (Some(pre), Some(csrf)) = (pre, csrf) else {
            return false;
        };
        let fresh = pre
            .split_once('.')
            .and_then(|(t, _)| t.parse::<u64>().ok())
            .is_some_and(|t| t <= now_s && now_s - t < PRE_TTL.as_secs());
        let right = ct_eq(csrf.as_bytes(), self.pre_csrf(pre).as_bytes());
        fresh && right
    }

    /// Of the `tw_pre` values a browser sent (see [`Sessions::pick`]), the
    /// one `csrf` was made for, if any is and it is fresh.
    pub fn pre_pick<'c>(
        &self,
        pres: &[&'c str],
        csrf: Option<&str>,
        now_s: u64,
    ) -> Option<&'c str> {
        pres.iter()
            .copied()
            .find(|pre| self.pre_ok(Some(pre), csrf, now_s))
    }
}

/// The scope of `key` among `keys` (none configured: any key is admin,
/// as the API answers everyone then).
pub fn scope_of_key(keys: &ApiKeys, key: &str) -> Option<Scope> {
    if keys.is_empty() {
        return Some(Scope::Admin);
    }
    if key.is_empty() {
        return None;
    }
    keys.scope_of(Some(&format!("Bearer {key}")))
}

/// Every value of cookie `name` in a `Cookie` header value, in the order
/// sent (RFC 6265 §5.4 `name=value; name2=value2`). A browser sends
/// several of one name when pages of other ports (same host, so the same
/// cookies) or paths set their own: which one is ours is for the caller
/// to find out, never "the first".
pub fn cookies<'a>(header: Option<&'a str>, name: &str) -> Vec<&'a str> {
    header
        .unwrap_or_default()
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v.trim())
        .collect()
}

/// A `Set-Cookie` value: `HttpOnly; SameSite=Strict`, `Secure` over TLS;
/// `max_age` `Some(0)` deletes it.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: Option<u64>, tls: bool) -> String {
    let mut c = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if tls {
        c.push_str("; Secure");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys::parse_lines("admin-key\nread:read-key\n")
    }

    #[test]
    fn a_session_is_random_maps_to_its_scope_and_ends() {
        let s = Sessions::new();
        let t0 = Instant::now();
        let keys = keys();
        let a = s.open("admin-key", Scope::Admin, t0).expect("open");
        let r = s.open("read-key", Scope::Read, t0).expect("open");
        assert_ne!(a, r);
        assert_eq!(a.len(), 43);
        assert!(!a.contains("admin-key"));
        let seen = s.get(&a, &keys, t0, false).expect("live");
        assert_eq!(seen.scope, Scope::Admin);
        assert_eq!(
            s.get(&r, &keys, t0, false).expect("live").scope,
            Scope::Read
        );
        assert!(s.get("nope", &keys, t0, false).is_none());
        // Used within the idle time: kept, and the clock restarts.
        let later = t0 + IDLE - Duration::from_secs(1);
        assert!(s.get(&a, &keys, later, false).is_some());
        assert!(s
            .get(&a, &keys, later + IDLE - Duration::from_secs(1), false)
            .is_some());
        // Idle too long: gone.
        assert!(s.get(&r, &keys, t0 + IDLE, false).is_none());
        assert!(
            s.get(&r, &keys, t0, false).is_none(),
            "removed, not just hidden"
        );
        s.close(&a);
        assert!(s.get(&a, &keys, later, false).is_none());
    }

    #[test]
    fn a_session_whose_key_is_gone_is_dropped() {
        let s = Sessions::new();
        let t0 = Instant::now();
        let id = s.open("admin-key", Scope::Admin, t0).expect("open");
        let rotated = ApiKeys::new(["new-key"]);
        assert!(s.get(&id, &rotated, t0, false).is_none());
        assert!(s.get(&id, &keys(), t0, false).is_none(), "dropped for good");
    }

    #[test]
    fn flash_is_shown_once() {
        let s = Sessions::new();
        let t0 = Instant::now();
        let id = s.open("admin-key", Scope::Admin, t0).expect("open");
        let f = Flash {
            error: false,
            message: "done".into(),
        };
        s.flash(&id, f.clone());
        assert_eq!(s.get(&id, &keys(), t0, false).expect("live").flash, None);
        assert_eq!(s.get(&id, &keys(), t0, true).expect("live").flash, Some(f));
        assert_eq!(s.get(&id, &keys(), t0, true).expect("live").flash, None);
    }

    #[test]
    fn sessions_are_bounded_per_scope() {
        let s = Sessions::new();
        let t0 = Instant::now();
        let at = |i: usize| t0 + Duration::from_millis(i as u64);
        let admin = s.open("admin-key", Scope::Admin, t0).expect("open");
        let first = s.open("read-key", Scope::Read, t0).expect("open");
        for i in 1..=MAX_SESSIONS {
            s.open("read-key", Scope::Read, at(i)).expect("open");
        }
        assert_eq!(s.len(), MAX_SESSIONS + 1);
        let later = t0 + Duration::from_secs(1);
        assert!(
            s.get(&first, &keys(), later, false).is_none(),
            "the least recently used read-only session went"
        );
        assert_eq!(
            s.get(&admin, &keys(), later, false).map(|x| x.scope),
            Some(Scope::Admin),
            "read-only sign-ins never push an admin out"
        );
        // Admins past the cap push out the oldest admin, never a reader.
        let readers = s.len() - 1;
        for i in 1..=MAX_SESSIONS {
            s.open(
                "admin-key",
                Scope::Admin,
                later + Duration::from_millis(i as u64),
            )
            .expect("open");
        }
        assert!(s.get(&admin, &keys(), later, false).is_none());
        assert_eq!(s.len(), MAX_SESSIONS + readers);
    }

    #[test]
    fn of_several_cookies_the_live_admin_session_is_picked() {
        let s = Sessions::new();
        let t0 = Instant::now();
        let keys = keys();
        let admin = s.open("admin-key", Scope::Admin, t0).expect("open");
        let read = s.open("read-key", Scope::Read, t0).expect("open");
        let planted = "planted-elsewhere";
        let table: [(&[&str], Option<&str>); 6] = [
            (&[planted, &admin], Some(&admin)),
            (&[&admin, planted], Some(&admin)),
            (&[&read, &admin], Some(&admin)),
            (&[planted, &read], Some(&read)),
            (&[planted], None),
            (&[], None),
        ];
        for (sent, want) in table {
            assert_eq!(s.pick(sent, &keys, t0), want, "{sent:?}");
        }
        // An idle session is not picked, and picking touches nothing.
        assert_eq!(s.pick(&[&admin], &keys, t0 + IDLE), None);
        assert!(s.get(&admin, &keys, t0, false).is_some());
    }

    #[test]
    fn pre_session_tokens() {
        let s = Sessions::new();
        let pre = s.pre_cookie(1000).expect("pre");
        let csrf = s.pre_csrf(&pre);
        assert!(s.pre_ok(Some(&pre), Some(&csrf), 1000));
        assert!(s.pre_ok(Some(&pre), Some(&csrf), 1000 + PRE_TTL.as_secs() - 1));
        assert!(!s.pre_ok(Some(&pre), Some(&csrf), 1000 + PRE_TTL.as_secs()));
        assert!(
            !s.pre_ok(Some(&pre), Some(&csrf), 999),
            "issued in the future"
        );
        assert!(!s.pre_ok(Some(&pre), Some("x"), 1000));
        assert!(!s.pre_ok(None, Some(&csrf), 1000));
        assert!(!s.pre_ok(Some(&pre), None, 1000));
        let other = s.pre_cookie(1000).expect("pre");
        assert!(!s.pre_ok(Some(&other), Some(&csrf), 1000));
        // Of several sent, the one the form was made for.
        let sent = ["planted", other.as_str(), pre.as_str()];
        assert_eq!(s.pre_pick(&sent, Some(&csrf), 1000), Some(pre.as_str()));
        assert_eq!(s.pre_pick(&sent[..2], Some(&csrf), 1000), None);
        // Another server's secret makes other tokens.
        assert_ne!(Sessions::new().pre_csrf(&pre), csrf);
    }

    #[test]
    fn cookies_are_read_and_written() {
        let h = Some("a=1; tw_session=abc ; tw_pre=9.x; tw_session=def");
        assert_eq!(cookies(h, SESSION_COOKIE), ["abc", "def"]);
        assert_eq!(cookies(h, PRE_COOKIE), ["9.x"]);
        assert!(cookies(h, "b").is_empty());
        assert!(cookies(None, "a").is_empty());
        assert_eq!(
            set_cookie(SESSION_COOKIE, "v", "/", None, false),
            "tw_session=v; Path=/; HttpOnly; SameSite=Strict"
        );
        assert_eq!(
            set_cookie(SESSION_COOKIE, "", "/", Some(0), true),
            "tw_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0; Secure"
        );
    }

    #[test]
    fn keys_map_to_scopes() {
        let k = keys();
        assert_eq!(scope_of_key(&k, "admin-key"), Some(Scope::Admin));
        assert_eq!(scope_of_key(&k, "read-key"), Some(Scope::Read));
        assert_eq!(scope_of_key(&k, "wrong"), None);
        assert_eq!(scope_of_key(&k, ""), None);
        assert_eq!(scope_of_key(&ApiKeys::default(), ""), Some(Scope::Admin));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abd", b"abc"));
        assert!(!ct_eq(b"abcd", b"abc"));
    }
}
