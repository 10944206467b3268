//! The shell's clock and unique ids. The pure core never reads the clock:
//! the shell reads it here and passes `now` in.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A duration in whole milliseconds, saturating (the unit of every time
/// the core compares).
pub fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A 64-bit value unique to this process and call: lease ids and jitter.
/// Not for secrets (std's hasher keys are random per process, but this is
/// no CSPRNG).
pub fn unique_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_i64(now_ms());
    h.finish()
}

/// Who is acting, for events and lease owners: `ACTOR pid:N thread:NAME`.
pub fn actor(role: &str) -> String {
    let t = std::thread::current();
    match t.name() {
        Some(name) => format!("{role} pid:{} thread:{name}", std::process::id()),
        None => format!("{role} pid:{} {:?}", std::process::id(), t.id()),
    }
}
