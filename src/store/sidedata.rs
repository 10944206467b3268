//! Pools, cooldowns and the notifications outbox as every backend stores
//! them, minus the SQL (as `rowdata` for credential rows): the column
//! lists, what a membership or cooldown change writes to the audit trail,
//! whether a cooldown change changes anything, and how long a sticky key
//! is kept. Each backend runs the statements in its own dialect.

use crate::store::{Cooldown, CooldownWrite};

/// Sticky keys unused this long are forgotten.
pub(crate) const STICKY_KEEP_MS: i64 = 86_400_000;

/// The columns of a cooldown row, in the order the backends read them.
pub(crate) const COOLDOWN_COLUMNS: &str = "credential_id, until_ms, reason, source, set_ms, actor";

/// The columns of a notification row, in the order the backends read them.
pub(crate) const NOTIFICATION_COLUMNS: &str = "seq, event_id, kind, credential_id, created_ms, \
    payload, attempts, next_attempt_ms, delivered_ms, failed_ms, last_error";

/// The event row's reason for credential joining (`member`) or leaving `pool`.
pub(crate) fn membership_reason(pool: &str, member: bool) -> String {
    match member {
        true => format!("joined pool {pool}"),
        false => format!("left pool {pool}"),
    }
}

/// The event row's reason for revoking the facade handle whose hash is
/// `hash` (named by its short id, never the handle).
pub(crate) fn handle_revoked_reason(hash: &str) -> String {
    let short = &hash[..crate::facade::SHORT_ID_LEN.min(hash.len())];
    format!("handle {short} revoked")
}

/// What `change` does to a credential whose cooldown is `current`: the
/// event row's reason, or `None` when it changes nothing (that very
/// cooldown is already set; nothing to clear, or one set after
/// `set_before_ms`, which a stale snapshot must not clear).
pub(crate) fn cooldown_reason(
    current: Option<&Cooldown>,
    change: CooldownWrite<'_>,
) -> Option<String> {
    match change {
        CooldownWrite::Set {
            until_ms,
            reason,
            source,
        } => {
            let same = current.is_some_and(|c| {
                c.until_ms == until_ms && c.reason == reason && c.source == source
            });
            (!same).then(|| {
                format!(
                    "cooldown ({}) until {}: {reason}",
                    source.as_str(),
                    crate::rfc3339::format(until_ms)
                )
            })
        }
        CooldownWrite::Clear {
            set_before_ms,
            reason,
        } => current
            .is_some_and(|c| c.set_ms <= set_before_ms)
            .then(|| format!("cooldown cleared: {reason}")),
    }
}
