//! Pools, the pure core: which member of a pool a caller gets, and what a
//! quota snapshot does to a credential's cooldown. Plain data in, a choice
//! out; no I/O, no clock (the shell, `Warden::pool_token`, reads the rows
//! and the time and hands them in).
//!
//! The pick (issue 15):
//!
//! 1. Never a member that is **dead**, **in backoff without a usable
//!    token**, or **cooling down** (an account-level cooldown not yet
//!    over: the shell gives every login of one provider account the
//!    account's latest cooldown); a **rejected** member or one
//!    **refreshing without a usable token** only as in 5. A member whose token has merely expired is
//!    fine: serving it refreshes it first, once, through the refresher.
//! 2. Among the rest: most quota left in the tightest window of the
//!    latest snapshot (a window whose reset time has passed counts as
//!    unused); unknown quota ranks below known-available and above
//!    exhausted.
//! 3. Then the one handed out least recently (never handed out first),
//!    which spreads the load; then the id, so the answer is one.
//! 4. A sticky key's member is kept while it stays eligible, whatever the
//!    ranking; otherwise the key moves to the new pick.
//! 5. When no member is servable as it is, a member that one refresh
//!    makes servable — **rejected** (not dead, not cooling down) or
//!    **refreshing without a usable token** — is chosen (ranked as
//!    above): the shell serves it through the refresher, which refreshes
//!    it once or waits for the refresh in flight, never handing out the
//!    rejected token. Only then is the pool unavailable.

use std::cmp::Ordering;

use crate::provider::usage::Quota;
use crate::state::{self, Decision, Need, Now, Policy, State, Status};

/// How much quota a member has left, from its latest snapshot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Standing {
    /// Percent left in the tightest window (0 < left ≤ 100).
    Left(f64),
    /// No snapshot, a failed fetch, or no window in it.
    Unknown,
    /// A window is used up and has not reset yet.
    Exhausted,
}

impl Standing {
    /// The order of the ranking: more left first, unknown between
    /// available and exhausted.
    fn rank(self) -> (u8, f64) {
        match self {
            Standing::Left(left) => (2, left),
            Standing::Unknown => (1, 0.0),
            Standing::Exhausted => (0, 0.0),
        }
    }
}

/// The standing a snapshot gives at `now_ms`: windows whose reset time has
/// passed count as unused; the tightest of the others decides.
pub fn standing(quota: Option<&Quota>, now_ms: i64) -> Standing {
    let Some(q) = quota else {
        return Standing::Unknown;
    };
    let reset =
        |resets_at: Option<i64>| resets_at.is_some_and(|s| s.saturating_mul(1000) <= now_ms);
    let live: Vec<f64> = q
        .windows
        .iter()
        .filter(|w| !reset(w.resets_at))
        .map(|w| w.used_percent)
        .collect();
    let all_reset = !q.windows.is_empty() && live.is_empty();
    if q.limit_reached == Some(true) && !all_reset {
        return Standing::Exhausted;
    }
    if q.windows.is_empty() {
        return Standing::Unknown;
    }
    let used = live.iter().copied().fold(0.0_f64, f64::max);
    let left = 100.0 - used;
    if left <= 0.0 {
        Standing::Exhausted
    } else {
        Standing::Left(left.min(100.0))
    }
}

/// One member of a pool, as the pick sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member<'a> {
    /// The credential.
    pub credential_id: &'a str,
    /// Its upstream account, when known.
    pub account_id: Option<&'a str>,
    /// Its row's state-machine view.
    pub status: &'a Status,
    /// The end of its cooldown, if one is set (unix ms; may have passed).
    pub cooldown_until_ms: Option<i64>,
    /// Its quota standing.
    pub standing: Standing,
    /// When the pool last handed it out (unix ms).
    pub last_served_ms: Option<i64>,
}

/// Why a member cannot be picked now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    /// Dead (or being force-refreshed back from dead).
    Dead,
    /// Its access token was rejected (or it is refreshing back to that).
    Rejected,
    /// Another caller is refreshing it and its token is not usable.
    RefreshingWithoutToken,
    /// Backing off after failed refreshes, and its token is not usable;
    /// the backoff ends at `retry_at_ms`.
    BackingOffWithoutToken {
        /// When a refresh may be tried again (unix ms).
        retry_at_ms: i64,
    },
    /// Cooling down until `until_ms`.
    CoolingDown {
        /// The cooldown's end (unix ms).
        until_ms: i64,
    },
}

impl Unfit {
    /// When this member may become eligible by itself (unix ms), if it may.
    pub fn retry_at_ms(self) -> Option<i64> {
        match self {
            Unfit::BackingOffWithoutToken { retry_at_ms } => Some(retry_at_ms),
            Unfit::CoolingDown { until_ms } => Some(until_ms),
            Unfit::Dead | Unfit::Rejected | Unfit::RefreshingWithoutToken => None,
        }
    }

    /// A word for logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Unfit::Dead => "dead",
            Unfit::Rejected => "rejected",
            Unfit::RefreshingWithoutToken => "refreshing without a usable token",
            Unfit::BackingOffWithoutToken { .. } => "backing off without a usable token",
            Unfit::CoolingDown { .. } => "cooling down",
        }
    }
}

/// Whether `m` may be handed to a caller needing `min_ttl_ms` now.
pub fn eligible(m: &Member<'_>, min_ttl_ms: i64, now: Now, policy: &Policy) -> Result<(), Unfit> {
    let s = m.status;
    // A live lease back to `rejected`/`dead`, or the state itself.
    let heading = match s.lease_left_ms(now.lease) {
        Some(_) => s.resume,
        None => None,
    };
    match s.effective(now, policy) {
        State::Dead => return Err(Unfit::Dead),
        State::Rejected => return Err(Unfit::Rejected),
        _ => {}
    }
    match heading {
        Some(State::Dead) => return Err(Unfit::Dead),
        Some(State::Rejected) => return Err(Unfit::Rejected),
        _ => {}
    }
    if let Some(until_ms) = m.cooldown_until_ms.filter(|&u| u > now.wall_ms) {
        return Err(Unfit::CoolingDown { until_ms });
    }
    match state::decide(s, Need::Token { min_ttl_ms }, now, policy) {
        Decision::Serve | Decision::Claim | Decision::Wait { fallback: true, .. } => Ok(()),
        Decision::Wait {
            fallback: false, ..
        } => Err(Unfit::RefreshingWithoutToken),
        Decision::Unavailable { retry_at_ms } => Err(Unfit::BackingOffWithoutToken { retry_at_ms }),
        Decision::Dead { .. } => Err(Unfit::Dead),
    }
}

/// The member a pick chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The credential to serve.
    pub credential_id: String,
    /// Its upstream account, when known.
    pub account_id: Option<String>,
    /// Whether it is the sticky key's member, kept.
    pub kept_sticky: bool,
}

/// What a pick came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// Serve this member.
    Chosen(Choice),
    /// The pool has no members (or every one was excluded by the caller).
    Empty,
    /// No member can be served now: each one's reason, by id, and the
    /// soonest time one may become eligible by itself, if any may.
    NoneUsable {
        /// Each member and why it was passed over.
        unfit: Vec<(String, Unfit)>,
        /// The soonest end of a cooldown or backoff (unix ms).
        retry_at_ms: Option<i64>,
    },
}

/// The ranking of two eligible members: `Less` is better.
fn better(a: &Member<'_>, b: &Member<'_>) -> Ordering {
    let (ca, la) = a.standing.rank();
    let (cb, lb) = b.standing.rank();
    cb.cmp(&ca)
        .then(lb.total_cmp(&la))
        // Never handed out (None) before any time.
        .then(a.last_served_ms.cmp(&b.last_served_ms))
        .then(a.credential_id.cmp(b.credential_id))
}

/// Picks the member of `members` to serve a caller needing `min_ttl_ms`,
/// passing over those in `exclude` (members this call already tried), and
/// keeping `sticky` (the member the caller's sticky key last got) while it
/// is eligible.
pub fn pick(
    members: &[Member<'_>],
    exclude: &[&str],
    sticky: Option<&str>,
    min_ttl_ms: i64,
    now: Now,
    policy: &Policy,
) -> Pick {
    let mut unfit = Vec::new();
    let mut best: Option<&Member<'_>> = None;
    // The best member that a refresh (one, through the refresher) would
    // make servable: served only when no member is servable as it is.
    let mut after_refresh: Option<&Member<'_>> = None;
    let mut considered = 0usize;
    for m in members
        .iter()
        .filter(|m| !exclude.contains(&m.credential_id))
    {
        considered += 1;
        match eligible(m, min_ttl_ms, now, policy) {
            Err(why) => {
                if refreshable(m, why, now)
                    && after_refresh.is_none_or(|b| better(m, b) == Ordering::Less)
                {
                    after_refresh = Some(m);
                }
                unfit.push((m.credential_id.to_owned(), why))
            }
            Ok(()) if sticky == Some(m.credential_id) => {
                return Pick::Chosen(choice(m, true));
            }
            Ok(()) => {
                if best.is_none_or(|b| better(m, b) == Ordering::Less) {
                    best = Some(m);
                }
            }
        }
    }
    match best.or(after_refresh) {
        Some(m) => Pick::Chosen(choice(m, false)),
        None if considered == 0 => Pick::Empty,
        None => {
            let retry_at_ms = unfit.iter().filter_map(|(_, u)| u.retry_at_ms()).min();
            Pick::NoneUsable { unfit, retry_at_ms }
        }
    }
}

/// Whether a member unfit for `why` becomes servable by a refresh (or by
/// waiting for the one in flight): rejected (its token is never served:
/// the refresher replaces it first) or refreshing without a usable token,
/// and not cooling down. Serving one goes through [`crate::Warden::token`]'s
/// path, single flight, like any expired member.
fn refreshable(m: &Member<'_>, why: Unfit, now: Now) -> bool {
    matches!(why, Unfit::Rejected | Unfit::RefreshingWithoutToken)
        && m.cooldown_until_ms.is_none_or(|u| u <= now.wall_ms)
}

fn choice(m: &Member<'_>, kept_sticky: bool) -> Choice {
    Choice {
        credential_id: m.credential_id.to_owned(),
        account_id: m.account_id.map(str::to_owned),
        kept_sticky,
    }
}

/// What a quota snapshot does to a credential's cooldown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CooldownChange {
    /// Nothing.
    Keep,
    /// Cool down until `until_ms` (an exhausted window's reset).
    Set {
        /// The reset (unix ms).
        until_ms: i64,
        /// Which window, and why.
        reason: String,
    },
    /// Clear the cooldown: the snapshot shows no window exhausted.
    Clear {
        /// Why.
        reason: String,
    },
}

/// How long an ended cooldown's row is kept before `sweep` / `serve`
/// delete it: readers ignore it from its end on (each by its own clock),
/// so deleting it is only garbage collection, and done this late it is
/// never one process's fast clock ending a cooldown that still runs for
/// the others.
pub const ENDED_COOLDOWN_KEPT_MS: i64 = 24 * 60 * 60 * 1000;

/// How long a cooldown lasts when a snapshot shows a window exhausted but
/// no reset time: long enough not to hammer the account, short enough
/// that the next sweep's snapshot decides again.
pub const UNKNOWN_RESET_COOLDOWN_MS: i64 = 15 * 60 * 1000;

/// How far two readings of one window's reset time may differ and still be
/// the same reset (ms).
const RESET_JITTER_MS: u64 = 2_000;

/// What a snapshot fetched at `fetched_at_ms` does to a credential whose
/// cooldown (if any) ends at `current_until_ms`: an exhausted window that
/// has not reset sets a cooldown until its reset (the latest reset among
/// the exhausted windows: the account is usable only when all have
/// reset); a snapshot with nothing exhausted clears one. Unchanged is
/// [`CooldownChange::Keep`], so repeated snapshots write nothing.
pub fn cooldown_from_snapshot(
    quota: &Quota,
    fetched_at_ms: i64,
    current_until_ms: Option<i64>,
) -> CooldownChange {
    let exhausted: Vec<&crate::provider::usage::Window> = quota
        .windows
        .iter()
        .filter(|w| w.used_percent >= 100.0)
        .filter(|w| {
            w.resets_at
                .is_none_or(|s| s.saturating_mul(1000) > fetched_at_ms)
        })
        .collect();
    let limit_reached = quota.limit_reached == Some(true);
    if exhausted.is_empty() && !limit_reached {
        return match current_until_ms {
            Some(_) => CooldownChange::Clear {
                reason: "a quota snapshot shows no window exhausted".into(),
            },
            None => CooldownChange::Keep,
        };
    }
    // The windows that hold the account: the exhausted ones, or (upstream
    // says the limit is reached but no window reads 100 %) every window
    // not yet reset.
    let holding: Vec<&crate::provider::usage::Window> = if exhausted.is_empty() {
        quota
            .windows
            .iter()
            .filter(|w| {
                w.resets_at
                    .is_none_or(|s| s.saturating_mul(1000) > fetched_at_ms)
            })
            .collect()
    } else {
        exhausted
    };
    if limit_reached && holding.is_empty() && !quota.windows.is_empty() {
        // Every window has reset since: upstream's flag is stale.
        return match current_until_ms {
            Some(_) => CooldownChange::Clear {
                reason: "every quota window has reset".into(),
            },
            None => CooldownChange::Keep,
        };
    }
    let known: Vec<i64> = holding
        .iter()
        .filter_map(|w| w.resets_at)
        .map(|s| s.saturating_mul(1000))
        .collect();
    let until_ms = match known.iter().max() {
        Some(&at) if known.len() == holding.len() => at,
        // A holding window without a reset time: a short cooldown, decided
        // again by the next snapshot.
        _ => fetched_at_ms + UNKNOWN_RESET_COOLDOWN_MS,
    };
    // Reset times come in whole seconds, often as "resets in N s" read
    // against the fetch's clock: two readings of one window differ by a
    // second or so, which is no change.
    if current_until_ms.is_some_and(|c| c.abs_diff(until_ms) <= RESET_JITTER_MS) {
        return CooldownChange::Keep;
    }
    let names: Vec<&str> = holding.iter().map(|w| w.name.as_str()).collect();
    let reason = match names.is_empty() {
        true => "quota limit reached".to_owned(),
        false => format!("quota window {} exhausted", names.join(", ")),
    };
    CooldownChange::Set { until_ms, reason }
}

#[cfg(test)]
mod tests;
