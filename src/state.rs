//! The credential state machine of DESIGN.md §2, as pure functions of
//! (status, event, now). No I/O and no clock reads: the store applies the
//! [`Transition`] this module computes with a compare-and-swap, and the
//! refresher decides what to do with [`decide`].
//!
//! `expiring` is never stored: a `valid` row whose token has entered the
//! refresh window *is* expiring, so the state is derived from the clock
//! ([`Status::effective`]) instead of being written by a timer that could
//! lag behind it. Likewise a `refreshing` row whose lease has run out
//! behaves as the state it came from until someone takes the lease over.

use std::fmt;

/// The reason of the event a successful refresh writes (the console
/// measures refresh latency up to it).
pub const REFRESHED: &str = "refreshed";

/// The states of a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum State {
    /// Token good and outside the refresh window.
    #[default]
    Valid,
    /// Inside the refresh window (derived, never stored).
    Expiring,
    /// One owner holds the lease and is calling the token endpoint.
    Refreshing,
    /// An upstream API answered 401 for the current access token.
    Rejected,
    /// The refresh token was refused for good.
    Dead,
}

impl State {
    /// Every state, in the order of DESIGN.md §2.
    pub const ALL: [State; 5] = [
        State::Valid,
        State::Expiring,
        State::Refreshing,
        State::Rejected,
        State::Dead,
    ];

    /// The lower-case name used in the database and every interface.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Valid => "valid",
            State::Expiring => "expiring",
            State::Refreshing => "refreshing",
            State::Rejected => "rejected",
            State::Dead => "dead",
        }
    }

    /// Parses [`State::as_str`]'s names.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest a lease may run. A stored lease whose end lies further
/// ahead than this on its clock is out of range (a corrupt row, or a clock
/// that jumped) and reads as expired, so no credential can be held in
/// `refreshing` by a deadline nobody will live to see.
pub const MAX_LEASE_MS: i64 = 3_600_000;

/// A reading of the lease clock: the one clock every process that may take
/// a lease over agrees on. On one box that is the kernel's boot-time clock
/// (`CLOCK_BOOTTIME`: never stepped, counts suspend), named by a value
/// derived from the boot id; a reading of another clock (another boot, or a
/// lease written before leases had a clock) cannot be compared with it.
/// Never a process's wall clock: an NTP step or a `faketime` must not hand
/// a live lease to a second refresher or rob an owner of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LeaseTime {
    /// Which clock (e.g. a hash of the boot id); readings of different
    /// clocks never compare.
    pub clock: i64,
    /// Milliseconds on that clock.
    pub ms: i64,
}

/// The shell's reading of both clocks at one instant: the pure core is
/// handed this, and reads no clock itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Wall clock, unix ms: token expiries, backoff, events.
    pub wall_ms: i64,
    /// Lease clock: lease deadlines only.
    pub lease: LeaseTime,
}

impl Now {
    /// `ms` milliseconds later on both clocks.
    pub fn plus(self, ms: i64) -> Now {
        Now {
            wall_ms: self.wall_ms.saturating_add(ms),
            lease: LeaseTime {
                clock: self.lease.clock,
                ms: self.lease.ms.saturating_add(ms),
            },
        }
    }
}

/// The right to call the token endpoint for one credential until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it (`pid:1234/thread:5`, `sweep`, …): for events and logs.
    pub owner: String,
    /// Unique per claim: the owner's writes are fenced by it, so a writer
    /// whose lease was taken over can never overwrite a newer state.
    pub id: String,
    /// When the lease ends, on the lease clock; after that anyone may take
    /// it over.
    pub until: LeaseTime,
}

impl Lease {
    /// Milliseconds left in the lease at `now`, `None` if it has ended —
    /// or cannot be judged: a reading of another clock (another boot) or
    /// a deadline further away than [`MAX_LEASE_MS`] counts as ended.
    pub fn left_ms(&self, now: LeaseTime) -> Option<i64> {
        if self.until.clock != now.clock {
            return None;
        }
        let left = self.until.ms.checked_sub(now.ms)?;
        (0..=MAX_LEASE_MS).contains(&left).then_some(left)
    }
}

/// Everything the state machine looks at in a credential row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// The stored state (never [`State::Expiring`]).
    pub state: State,
    /// Bumped by every change; callers' writes are guarded by it.
    pub version: i64,
    /// When the access token expires (unix ms); `None` means unknown, which
    /// is treated as due for refresh.
    pub expires_at_ms: Option<i64>,
    /// Whether there is an access token at all.
    pub has_access_token: bool,
    /// The lease, while `refreshing`.
    pub lease: Option<Lease>,
    /// While `refreshing`: the state to return to if the refresh fails.
    pub resume: Option<State>,
    /// Consecutive failed refreshes.
    pub failures: u32,
    /// No automatic refresh before this time (unix ms).
    pub next_attempt_at_ms: Option<i64>,
    /// Last successful refresh (unix ms).
    pub last_refresh_ms: Option<i64>,
    /// The upstream code that killed the credential.
    pub dead_reason: Option<String>,
}

/// Timing knobs of the state machine (all milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A token is `expiring` this long before it expires.
    pub refresh_ahead_ms: i64,
    /// First cross-refresh backoff after a transient failure.
    pub backoff_min_ms: i64,
    /// The backoff doubles per failure up to this.
    pub backoff_max_ms: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            refresh_ahead_ms: 300_000,
            backoff_min_ms: 5_000,
            backoff_max_ms: 300_000,
        }
    }
}

impl Status {
    /// Milliseconds left in a live lease (`refreshing` only), on the lease
    /// clock; `None` when there is no live lease.
    pub fn lease_left_ms(&self, now: LeaseTime) -> Option<i64> {
        match self.state {
            State::Refreshing => self.lease.as_ref()?.left_ms(now),
            _ => None,
        }
    }

    fn lease_live(&self, now: LeaseTime) -> bool {
        self.lease_left_ms(now).is_some()
    }

    /// The stored state, with an abandoned `refreshing` (lease run out) seen
    /// as the state it came from.
    pub(crate) fn base(&self, now: LeaseTime) -> State {
        match self.state {
            State::Refreshing if !self.lease_live(now) => self.resume.unwrap_or(State::Valid),
            s => s,
        }
    }

    /// The token's lifetime, measured from the refresh that minted it, when
    /// both ends are known.
    fn lifetime_ms(&self) -> Option<i64> {
        match (self.expires_at_ms, self.last_refresh_ms) {
            (Some(e), Some(minted)) if e > minted => Some(e - minted),
            _ => None,
        }
    }

    /// The refresh window: `refresh_ahead`, but never more than half the
    /// token's lifetime, so that a token living no longer than
    /// `refresh_ahead` (a 120 s token, Keycloak's 300 s default) is
    /// refreshed once per lifetime instead of on every call.
    pub fn window_ms(&self, policy: &Policy) -> i64 {
        match self.lifetime_ms() {
            Some(life) => policy.refresh_ahead_ms.min(life / 2),
            None => policy.refresh_ahead_ms,
        }
    }

    /// A caller's `min_ttl`, capped the same way: no token can outlive its
    /// own lifetime, so asking a 120 s token for 10 minutes would refresh it
    /// on every call; half its lifetime is the most it is held to.
    fn min_ttl_capped(&self, min_ttl_ms: i64) -> i64 {
        match self.lifetime_ms() {
            Some(life) => min_ttl_ms.min(life / 2),
            None => min_ttl_ms,
        }
    }

    /// Whether the refresh window has been entered (or the expiry is unknown).
    fn due(&self, now_ms: i64, policy: &Policy) -> bool {
        !self.has_access_token
            || self
                .expires_at_ms
                .is_none_or(|e| now_ms >= e.saturating_sub(self.window_ms(policy)))
    }

    /// The state to show: `valid` inside the window reads `expiring`, and a
    /// `refreshing` whose lease ran out reads as the state it came from.
    pub fn effective(&self, now: Now, policy: &Policy) -> State {
        match self.base(now.lease) {
            State::Valid if self.due(now.wall_ms, policy) => State::Expiring,
            s => s,
        }
    }

    /// Whether the current access token may be handed to a caller that needs
    /// it for `min_ttl_ms` more: it exists, lives long enough, and was never
    /// reported rejected (nor belongs to a dead credential).
    pub fn usable(&self, now_ms: i64, min_ttl_ms: i64) -> bool {
        let state_ok = match self.state {
            State::Valid => true,
            State::Refreshing => self.resume == Some(State::Valid),
            _ => false,
        };
        state_ok
            && self.has_access_token
            && self
                .expires_at_ms
                .is_some_and(|e| now_ms.saturating_add(min_ttl_ms) < e)
    }

    fn backing_off(&self, now_ms: i64) -> Option<i64> {
        self.next_attempt_at_ms.filter(|&t| t > now_ms)
    }
}

/// What a caller wants from a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A token that stays valid for at least `min_ttl_ms`.
    Token {
        /// Remaining lifetime the caller needs (ms).
        min_ttl_ms: i64,
    },
    /// A token from a refresh that finished after `since_ms` (an
    /// operator's "refresh now"); `force` also revives a dead credential and
    /// ignores the backoff.
    Refresh {
        /// A refresh committed after this instant (unix ms) satisfies
        /// the caller, whoever did it.
        since_ms: i64,
        /// Retry a dead credential and ignore backoff.
        force: bool,
    },
}

/// What a caller should do next, given the row it just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Hand out the current access token.
    Serve,
    /// Try to become the refresher (CAS into `refreshing`).
    Claim,
    /// Someone else holds a live lease: wait for the row to change.
    Wait {
        /// How long until that lease ends and may be taken over (ms).
        lease_left_ms: i64,
        /// Whether the current token may be served if waiting runs out.
        fallback: bool,
    },
    /// The credential is dead.
    Dead {
        /// The upstream code that killed it.
        reason: String,
    },
    /// Backing off after failures and no usable token: retry later.
    Unavailable {
        /// When an attempt is allowed again (unix ms).
        retry_at_ms: i64,
    },
}

/// Decides the next step for a caller with `need` (DESIGN.md §4, steps 1–3).
pub fn decide(status: &Status, need: Need, now: Now, policy: &Policy) -> Decision {
    let now_ms = now.wall_ms;
    let dead = || Decision::Dead {
        reason: status.dead_reason.clone().unwrap_or_else(|| "dead".into()),
    };
    let need = match need {
        Need::Token { min_ttl_ms } => Need::Token {
            min_ttl_ms: status.min_ttl_capped(min_ttl_ms),
        },
        other => other,
    };
    if let Some(left) = status.lease_left_ms(now.lease) {
        let fallback = match need {
            Need::Token { min_ttl_ms } => status.usable(now_ms, min_ttl_ms),
            Need::Refresh { .. } => false,
        };
        return Decision::Wait {
            lease_left_ms: left,
            fallback,
        };
    }
    let base = status.base(now.lease);
    match need {
        Need::Token { min_ttl_ms } => {
            let usable = status.usable(now_ms, min_ttl_ms) && base == State::Valid;
            if base == State::Dead {
                dead()
            } else if usable && !status.due(now_ms, policy) {
                Decision::Serve
            } else if let Some(retry_at_ms) = status.backing_off(now_ms) {
                // Stale-while-revalidate: a usable token beats an error.
                if usable {
                    Decision::Serve
                } else {
                    Decision::Unavailable { retry_at_ms }
                }
            } else {
                Decision::Claim
            }
        }
        Need::Refresh { since_ms, force } => {
            let fresh = base == State::Valid
                && status.usable(now_ms, 0)
                && status.last_refresh_ms.is_some_and(|t| t > since_ms);
            if fresh {
                Decision::Serve
            } else if base == State::Dead && !force {
                dead()
            } else if let (Some(retry_at_ms), false) = (status.backing_off(now_ms), force) {
                Decision::Unavailable { retry_at_ms }
            } else {
                Decision::Claim
            }
        }
    }
}

/// Something that may change a credential's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An upstream API answered 401 for a token; `is_current` says whether
    /// it is the stored access token (else it was already rotated away).
    Reject {
        /// The rejected token is the stored access token.
        is_current: bool,
    },
    /// A caller tries to take the lease to refresh for `need`.
    Claim {
        /// The lease to take.
        lease: Lease,
        /// Why the caller refreshes.
        need: Need,
    },
    /// The lease owner got new tokens.
    Succeed {
        /// The owner's lease id.
        lease_id: String,
    },
    /// The lease owner failed in a way that may clear up.
    FailTransient {
        /// The owner's lease id.
        lease_id: String,
        /// Upstream's `Retry-After`, if any (ms from now).
        retry_after_ms: Option<i64>,
    },
    /// The refresh token was refused for good.
    FailPermanent {
        /// The owner's lease id.
        lease_id: String,
        /// The upstream code (`refresh_token_reused`, …).
        code: String,
    },
}

/// How the store must guard the write of a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// A caller's write: `WHERE version = ?`.
    Version(i64),
    /// The lease owner's write: `WHERE lease_id = ?`, so a takeover (which
    /// replaces the lease) voids it. A success is fenced by the lease alone:
    /// a rejection recorded meanwhile (which bumps the version) must not void
    /// it. A failure also pins the version, because the state it returns to
    /// depends on that rejection; the owner re-reads and retries.
    Lease {
        /// The owner's lease id.
        id: String,
        /// Also require this version (failures only).
        version: Option<i64>,
    },
}

/// The new status a successful event leads to, for the store to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// How to guard the write.
    pub guard: Guard,
    /// The stored state before.
    pub from: State,
    /// The stored state after.
    pub to: State,
    /// The state to return to, while `refreshing`.
    pub resume: Option<State>,
    /// The lease, while `refreshing`.
    pub lease: Option<Lease>,
    /// Consecutive failures after the event.
    pub failures: u32,
    /// No automatic attempt before this (unix ms).
    pub next_attempt_at_ms: Option<i64>,
    /// Why the credential is dead, if it is.
    pub dead_reason: Option<String>,
    /// The event row's reason text (never a secret).
    pub reason: String,
}

/// Why an event changes nothing. These are normal outcomes, not errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A claim when the caller can be served as things are.
    NotNeeded,
    /// A claim while someone else holds a live lease.
    Busy {
        /// How long until that lease ends (ms).
        lease_left_ms: i64,
    },
    /// The credential is dead.
    Dead,
    /// A claim during backoff with no usable token.
    BackingOff {
        /// When an attempt is allowed again (unix ms).
        retry_at_ms: i64,
    },
    /// A reject of a token that was already rotated away.
    NotCurrent,
    /// A reject of a token already recorded as rejected.
    AlreadyRejected,
    /// An owner's write without (or with someone else's) lease.
    LeaseLost,
}

/// The cross-refresh backoff after `failures` consecutive failures:
/// `backoff_min` doubling per failure, capped at `backoff_max`.
pub fn backoff_ms(failures: u32, policy: &Policy) -> i64 {
    let doublings = failures.saturating_sub(1).min(32);
    policy
        .backoff_min_ms
        .saturating_mul(1i64 << doublings)
        .min(policy.backoff_max_ms)
}

/// Applies `event` to `status` at `now_ms`: the transition to write, or why
/// nothing changes.
pub fn apply(
    status: &Status,
    event: &Event,
    now: Now,
    policy: &Policy,
) -> Result<Transition, Refusal> {
    let now_ms = now.wall_ms;
    let unchanged = |guard: Guard, to: State, reason: String| Transition {
        guard,
        from: status.state,
        to,
        resume: status.resume,
        lease: status.lease.clone(),
        failures: status.failures,
        next_attempt_at_ms: status.next_attempt_at_ms,
        dead_reason: status.dead_reason.clone(),
        reason,
    };
    let by_caller = Guard::Version(status.version);
    match event {
        Event::Reject { is_current: false } => Err(Refusal::NotCurrent),
        Event::Reject { is_current: true } => match status.state {
            State::Dead => Err(Refusal::Dead),
            State::Rejected => Err(Refusal::AlreadyRejected),
            State::Refreshing if status.resume == Some(State::Rejected) => {
                Err(Refusal::AlreadyRejected)
            }
            // An operator's forced refresh of a dead credential: its token
            // was never servable, and marking it rejected would make a
            // failed retry return to `rejected` — reviving the credential.
            State::Refreshing if status.resume == Some(State::Dead) => Err(Refusal::Dead),
            State::Refreshing => Ok(Transition {
                // The refresh goes on; if it fails, the token stays rejected.
                resume: Some(State::Rejected),
                ..unchanged(
                    by_caller,
                    State::Refreshing,
                    "upstream rejected the access token during a refresh".into(),
                )
            }),
            State::Valid | State::Expiring => Ok(unchanged(
                by_caller,
                State::Rejected,
                "upstream rejected the access token".into(),
            )),
        },
        Event::Claim { lease, need } => match decide(status, *need, now, policy) {
            Decision::Claim => {
                let takeover = status.state == State::Refreshing;
                let resume = if takeover {
                    status.resume.unwrap_or(State::Valid)
                } else {
                    status.state
                };
                let reason = match (&status.lease, need) {
                    (Some(old), _) if takeover => {
                        format!("lease taken over from {} (expired)", old.owner)
                    }
                    (_, Need::Refresh { force: true, .. }) => "forced refresh".into(),
                    (_, Need::Refresh { .. }) => "refresh requested".into(),
                    _ if resume == State::Rejected => "refresh of a rejected token".into(),
                    _ => "refresh due".into(),
                };
                Ok(Transition {
                    resume: Some(resume),
                    lease: Some(lease.clone()),
                    ..unchanged(by_caller, State::Refreshing, reason)
                })
            }
            Decision::Serve => Err(Refusal::NotNeeded),
            Decision::Wait { lease_left_ms, .. } => Err(Refusal::Busy { lease_left_ms }),
            Decision::Dead { .. } => Err(Refusal::Dead),
            Decision::Unavailable { retry_at_ms } => Err(Refusal::BackingOff { retry_at_ms }),
        },
        Event::Succeed { lease_id }
        | Event::FailTransient { lease_id, .. }
        | Event::FailPermanent { lease_id, .. } => {
            let owns = status.state == State::Refreshing
                && status.lease.as_ref().is_some_and(|l| &l.id == lease_id);
            if !owns {
                return Err(Refusal::LeaseLost);
            }
            let by_owner = Guard::Lease {
                id: lease_id.clone(),
                version: match event {
                    Event::Succeed { .. } => None,
                    _ => Some(status.version),
                },
            };
            let resume = status.resume.unwrap_or(State::Valid);
            let done = |to: State, reason: String| Transition {
                resume: None,
                lease: None,
                ..unchanged(by_owner.clone(), to, reason)
            };
            Ok(match event {
                Event::Succeed { .. } => Transition {
                    failures: 0,
                    next_attempt_at_ms: None,
                    dead_reason: None,
                    ..done(State::Valid, REFRESHED.into())
                },
                Event::FailTransient { retry_after_ms, .. } => {
                    let failures = status.failures.saturating_add(1);
                    let wait = backoff_ms(failures, policy).max(retry_after_ms.unwrap_or(0));
                    Transition {
                        failures,
                        next_attempt_at_ms: Some(now_ms.saturating_add(wait)),
                        ..done(
                            resume,
                            format!("refresh failed transiently; retry in {} s", wait / 1000),
                        )
                    }
                }
                Event::FailPermanent { code, .. } => Transition {
                    failures: status.failures.saturating_add(1),
                    next_attempt_at_ms: None,
                    dead_reason: Some(code.clone()),
                    ..done(State::Dead, format!("refresh refused: {code}"))
                },
                // Matched by the outer arm.
                _ => unreachable!("only owner events reach here"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000_000;
    const HOUR: i64 = 3_600_000;
    const P: Policy = Policy {
        refresh_ahead_ms: 300_000,
        backoff_min_ms: 5_000,
        backoff_max_ms: 300_000,
    };

    /// The lease clock of the tests' box.
    const CLOCK: i64 = 42;
    /// The tests' instant: the lease clock reads the same number as the
    /// wall clock (tests that step one of them say so).
    const AT: Now = Now {
        wall_ms: NOW,
        lease: LeaseTime {
            clock: CLOCK,
            ms: NOW,
        },
    };

    fn lease(id: &str, until_ms: i64) -> Lease {
        Lease {
            owner: format!("owner-{id}"),
            id: id.into(),
            until: LeaseTime {
                clock: CLOCK,
                ms: until_ms,
            },
        }
    }

    /// The starting rows of the table, named.
    fn row(name: &str) -> Status {
        let base = Status {
            state: State::Valid,
            version: 7,
            expires_at_ms: Some(NOW + HOUR),
            has_access_token: true,
            ..Status::default()
        };
        match name {
            "valid" => base,
            "expiring" => Status {
                expires_at_ms: Some(NOW + 60_000),
                ..base
            },
            "no-token" => Status {
                has_access_token: false,
                expires_at_ms: None,
                ..base
            },
            "valid-backoff" => Status {
                expires_at_ms: Some(NOW + 60_000),
                next_attempt_at_ms: Some(NOW + 10_000),
                failures: 1,
                ..base
            },
            "refreshing" => Status {
                state: State::Refreshing,
                resume: Some(State::Valid),
                lease: Some(lease("L", NOW + 30_000)),
                ..row("expiring")
            },
            "refreshing-rejected" => Status {
                resume: Some(State::Rejected),
                ..row("refreshing")
            },
            "refreshing-expired-lease" => Status {
                lease: Some(lease("L", NOW - 1)),
                ..row("refreshing")
            },
            "rejected" => Status {
                state: State::Rejected,
                ..base
            },
            "rejected-backoff" => Status {
                next_attempt_at_ms: Some(NOW + 10_000),
                failures: 2,
                ..row("rejected")
            },
            "dead" => Status {
                state: State::Dead,
                dead_reason: Some("refresh_token_reused".into()),
                ..base
            },
            "refreshing-dead" => Status {
                resume: Some(State::Dead),
                ..row("refreshing")
            },
            other => panic!("no row {other}"),
        }
    }

    fn token(min_ttl_ms: i64) -> Need {
        Need::Token { min_ttl_ms }
    }

    fn refresh(force: bool) -> Need {
        Need::Refresh {
            since_ms: NOW,
            force,
        }
    }

    fn claim(need: Need) -> Event {
        Event::Claim {
            lease: lease("NEW", NOW + 60_000),
            need,
        }
    }

    /// A transition in short: the stored state after, and the resume state.
    type Short = Result<(State, Option<State>), Refusal>;

    fn short(r: Result<Transition, Refusal>) -> Short {
        r.map(|t| (t.to, t.resume))
    }

    use State::*;

    #[test]
    fn effective_states() {
        let expect = [
            ("valid", Valid),
            ("expiring", Expiring),
            ("no-token", Expiring),
            ("valid-backoff", Expiring),
            ("refreshing", Refreshing),
            ("refreshing-rejected", Refreshing),
            ("refreshing-expired-lease", Expiring),
            ("rejected", Rejected),
            ("rejected-backoff", Rejected),
            ("dead", Dead),
        ];
        for (name, state) in expect {
            assert_eq!(row(name).effective(AT, &P), state, "{name}");
        }
    }

    #[test]
    fn decisions() {
        let busy = Decision::Wait {
            lease_left_ms: 30_000,
            fallback: true,
        };
        let busy_no_fallback = Decision::Wait {
            lease_left_ms: 30_000,
            fallback: false,
        };
        let dead = Decision::Dead {
            reason: "refresh_token_reused".into(),
        };
        let later = Decision::Unavailable {
            retry_at_ms: NOW + 10_000,
        };
        // (row, need, decision)
        let table = [
            ("valid", token(0), Decision::Serve),
            ("valid", token(2 * HOUR), Decision::Claim),
            ("expiring", token(0), Decision::Claim),
            ("no-token", token(0), Decision::Claim),
            ("valid-backoff", token(0), Decision::Serve),
            ("valid-backoff", token(HOUR), later.clone()),
            ("refreshing", token(0), busy.clone()),
            ("refreshing", token(HOUR), busy_no_fallback.clone()),
            ("refreshing-rejected", token(0), busy_no_fallback.clone()),
            ("refreshing-expired-lease", token(0), Decision::Claim),
            ("rejected", token(0), Decision::Claim),
            ("rejected-backoff", token(0), later.clone()),
            ("dead", token(0), dead.clone()),
            ("valid", refresh(false), Decision::Claim),
            ("valid-backoff", refresh(false), later.clone()),
            ("valid-backoff", refresh(true), Decision::Claim),
            ("refreshing", refresh(false), busy_no_fallback.clone()),
            ("rejected-backoff", refresh(true), Decision::Claim),
            ("dead", refresh(false), dead),
            ("dead", refresh(true), Decision::Claim),
        ];
        for (name, need, expect) in table {
            assert_eq!(decide(&row(name), need, AT, &P), expect, "{name} {need:?}");
        }
    }

    #[test]
    fn refresh_adopts_a_refresh_committed_since_the_request() {
        let done = Status {
            last_refresh_ms: Some(NOW + 5),
            ..row("valid")
        };
        assert_eq!(decide(&done, refresh(false), AT, &P), Decision::Serve);
        let older = Status {
            last_refresh_ms: Some(NOW - 5),
            ..row("valid")
        };
        assert_eq!(decide(&older, refresh(false), AT, &P), Decision::Claim);
    }

    /// Every (row, event) pair of the transition table.
    #[test]
    fn transitions() {
        let own = |id: &str| Event::Succeed {
            lease_id: id.into(),
        };
        let transient = |id: &str| Event::FailTransient {
            lease_id: id.into(),
            retry_after_ms: None,
        };
        let permanent = |id: &str| Event::FailPermanent {
            lease_id: id.into(),
            code: "invalid_grant".into(),
        };
        let events: Vec<(&str, Event)> = vec![
            ("reject-current", Event::Reject { is_current: true }),
            ("reject-stale", Event::Reject { is_current: false }),
            ("claim-token", claim(token(0))),
            ("claim-token-long", claim(token(2 * HOUR))),
            ("claim-refresh", claim(refresh(false))),
            ("claim-force", claim(refresh(true))),
            ("succeed", own("L")),
            ("succeed-other-lease", own("X")),
            ("transient", transient("L")),
            ("permanent", permanent("L")),
        ];
        let lost: Short = Err(Refusal::LeaseLost);
        let busy: Short = Err(Refusal::Busy {
            lease_left_ms: 30_000,
        });
        let backoff: Short = Err(Refusal::BackingOff {
            retry_at_ms: NOW + 10_000,
        });
        let claimed = |from: State| -> Short { Ok((Refreshing, Some(from))) };
        #[rustfmt::skip]
        let expect: [(&str, [Short; 10]); 11] = [
            // reject-current, reject-stale, claim-token, claim-token-long, claim-refresh, claim-force, succeed, succeed-other, transient, permanent
            ("valid", [Ok((Rejected, None)), Err(Refusal::NotCurrent), Err(Refusal::NotNeeded), claimed(Valid), claimed(Valid), claimed(Valid), lost.clone(), lost.clone(), lost.clone(), lost.clone()]),
            ("expiring", [Ok((Rejected, None)), Err(Refusal::NotCurrent), claimed(Valid), claimed(Valid), claimed(Valid), claimed(Valid), lost.clone(), lost.clone(), lost.clone(), lost.clone()]),
            ("no-token", [Ok((Rejected, None)), Err(Refusal::NotCurrent), claimed(Valid), claimed(Valid), claimed(Valid), claimed(Valid), lost.clone(), lost.clone(), lost.clone(), lost.clone()]),
            ("valid-backoff", [Ok((Rejected, None)), Err(Refusal::NotCurrent), Err(Refusal::NotNeeded), backoff.clone(), backoff.clone(), claimed(Valid), lost.clone(), lost.clone(), lost.clone(), lost.clone()]),
            ("refreshing", [Ok((Refreshing, Some(Rejected))), Err(Refusal::NotCurrent), busy.clone(), busy.clone(), busy.clone(), busy.clone(), Ok((Valid, None)), lost.clone(), Ok((Valid, None)), Ok((Dead, None))]),
            ("refreshing-rejected", [Err(Refusal::AlreadyRejected), Err(Refusal::NotCurrent), busy.clone(), busy.clone(), busy.clone(), busy.clone(), Ok((Valid, None)), lost.clone(), Ok((Rejected, None)), Ok((Dead, None))]),
            ("refreshing-expired-lease", [Ok((Refreshing, Some(Rejected))), Err(Refusal::NotCurrent), claimed(Valid), claimed(Valid), claimed(Valid), claimed(Valid), Ok((Valid, None)), lost.clone(), Ok((Valid, None)), Ok((Dead, None))]),
            ("rejected", [Err(Refusal::AlreadyRejected), Err(Refusal::NotCurrent), claimed(Rejected), claimed(Rejected), claimed(Rejected), claimed(Rejected), lost.clone(), lost.clone(), lost.clone(), lost.clone()]),
            ("rejected-backoff", [Err(Refusal::AlreadyRejected), Err(Refusal::NotCurrent), backoff.clone(), backoff.clone(), backoff.clone(), claimed(Rejected), lost.clone(), lost.clone(), lost.clone(), lost.clone()]),
            ("dead", [Err(Refusal::Dead), Err(Refusal::NotCurrent), Err(Refusal::Dead), Err(Refusal::Dead), Err(Refusal::Dead), claimed(Dead), lost.clone(), lost.clone(), lost.clone(), lost.clone()]),
            // An operator's forced refresh of a dead credential: a reject cannot revive it.
            ("refreshing-dead", [Err(Refusal::Dead), Err(Refusal::NotCurrent), busy.clone(), busy.clone(), busy.clone(), busy.clone(), Ok((Valid, None)), lost.clone(), Ok((Dead, None)), Ok((Dead, None))]),
        ];
        for (name, outcomes) in expect {
            for ((ev_name, ev), want) in events.iter().zip(outcomes) {
                let got = short(apply(&row(name), ev, AT, &P));
                assert_eq!(got, want, "{name} × {ev_name}");
            }
        }
    }

    #[test]
    fn guards_fence_callers_by_version_and_owners_by_lease() {
        let t = apply(&row("expiring"), &claim(token(0)), AT, &P).unwrap();
        assert_eq!(t.guard, Guard::Version(7));
        assert_eq!(t.lease.unwrap().id, "NEW");
        let t = apply(
            &row("refreshing"),
            &Event::Reject { is_current: true },
            AT,
            &P,
        )
        .unwrap();
        assert_eq!(t.guard, Guard::Version(7));
        assert_eq!(t.lease.unwrap().id, "L", "a reject keeps the owner's lease");
        let ok = Event::Succeed {
            lease_id: "L".into(),
        };
        let t = apply(&row("refreshing"), &ok, AT, &P).unwrap();
        assert_eq!(
            t.guard,
            Guard::Lease {
                id: "L".into(),
                version: None
            }
        );
        assert_eq!((t.lease, t.failures, t.next_attempt_at_ms), (None, 0, None));
        let failed = Event::FailTransient {
            lease_id: "L".into(),
            retry_after_ms: None,
        };
        let t = apply(&row("refreshing"), &failed, AT, &P).unwrap();
        assert_eq!(
            t.guard,
            Guard::Lease {
                id: "L".into(),
                version: Some(7)
            },
            "a failure's resume state depends on rejections: pin the version"
        );
    }

    #[test]
    fn takeover_keeps_the_resume_state_and_names_the_old_owner() {
        let r = Status {
            resume: Some(Rejected),
            ..row("refreshing-expired-lease")
        };
        let t = apply(&r, &claim(token(0)), AT, &P).unwrap();
        assert_eq!((t.to, t.resume), (Refreshing, Some(Rejected)));
        assert!(t.reason.contains("owner-L"), "{}", t.reason);
        assert_eq!(t.lease.unwrap().id, "NEW");
    }

    #[test]
    fn transient_failures_back_off_and_honour_retry_after() {
        let mut r = row("refreshing");
        let mut waits = vec![];
        for _ in 0..8 {
            let ev = Event::FailTransient {
                lease_id: "L".into(),
                retry_after_ms: None,
            };
            let t = apply(&r, &ev, AT, &P).unwrap();
            waits.push(t.next_attempt_at_ms.unwrap() - NOW);
            r.failures = t.failures;
        }
        assert_eq!(
            waits,
            [5_000, 10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000]
        );
        let ev = Event::FailTransient {
            lease_id: "L".into(),
            retry_after_ms: Some(120_000),
        };
        let t = apply(&row("refreshing"), &ev, AT, &P).unwrap();
        assert_eq!(t.next_attempt_at_ms, Some(NOW + 120_000));
        assert_eq!(t.failures, 1);
        assert_eq!(backoff_ms(u32::MAX, &P), 300_000);
    }

    #[test]
    fn permanent_failure_records_the_reason() {
        let ev = Event::FailPermanent {
            lease_id: "L".into(),
            code: "refresh_token_reused".into(),
        };
        let t = apply(&row("refreshing"), &ev, AT, &P).unwrap();
        assert_eq!(t.dead_reason.as_deref(), Some("refresh_token_reused"));
        assert_eq!(t.to, Dead);
    }

    #[test]
    fn usable_never_serves_rejected_or_dead_tokens() {
        assert!(row("valid").usable(NOW, 0));
        assert!(row("expiring").usable(NOW, 0));
        assert!(!row("expiring").usable(NOW, 60_000));
        assert!(row("refreshing").usable(NOW, 0));
        for name in ["refreshing-rejected", "rejected", "dead", "no-token"] {
            assert!(!row(name).usable(NOW, 0), "{name}");
        }
    }

    /// Leases are judged on the lease clock alone: a step of the wall clock
    /// (either way) changes nothing; a reading of another clock (another
    /// boot) or a deadline out of range reads as ended.
    #[test]
    fn leases_follow_the_lease_clock_not_the_wall_clock() {
        let busy = |left| Decision::Wait {
            lease_left_ms: left,
            fallback: true,
        };
        for step in [-60_000, -1, 0, 1, 60_000, 86_400_000] {
            let stepped = Now {
                wall_ms: NOW + step,
                ..AT
            };
            // The token itself expires by the wall clock (60 s ahead): only
            // whether the old token may be served as a fallback follows it.
            let want = Decision::Wait {
                lease_left_ms: 30_000,
                fallback: step < 60_000,
            };
            assert_eq!(
                decide(&row("refreshing"), token(0), stepped, &P),
                want,
                "{step}"
            );
        }
        let other_boot = Now {
            lease: LeaseTime {
                clock: CLOCK + 1,
                ms: NOW,
            },
            ..AT
        };
        assert_eq!(
            decide(&row("refreshing"), token(0), other_boot, &P),
            Decision::Claim
        );
        assert_eq!(row("refreshing").effective(other_boot, &P), Expiring);
        let far = Status {
            lease: Some(lease("L", NOW + MAX_LEASE_MS + 1)),
            ..row("refreshing")
        };
        assert_eq!(decide(&far, token(0), AT, &P), Decision::Claim);
        let at_max = Status {
            lease: Some(lease("L", NOW + MAX_LEASE_MS)),
            ..row("refreshing")
        };
        assert_eq!(decide(&at_max, token(0), AT, &P), busy(MAX_LEASE_MS));
        // The lease clock moving past the deadline ends it, whatever the
        // wall clock says (here: not moved at all).
        let later = Now {
            lease: LeaseTime {
                clock: CLOCK,
                ms: NOW + 30_001,
            },
            wall_ms: NOW,
        };
        assert_eq!(
            decide(&row("refreshing"), token(0), later, &P),
            Decision::Claim
        );
    }

    /// The refresh window is min(refresh_ahead, lifetime / 2), lifetime
    /// measured from the refresh that minted the token; a caller's min_ttl
    /// is capped the same way.
    #[test]
    fn short_lived_tokens_get_half_their_lifetime_as_window() {
        let minted = |ago: i64, left: i64| Status {
            last_refresh_ms: Some(NOW - ago),
            expires_at_ms: Some(NOW + left),
            ..row("valid")
        };
        let table = [
            // (minted ago, left, need, decision)
            (1_000, 119_000, token(0), Decision::Serve),
            (59_000, 61_000, token(0), Decision::Serve),
            (61_000, 59_000, token(0), Decision::Claim),
            (1_000, 119_000, token(600_000), Decision::Serve),
            (1_000, 119_000, token(61_000), Decision::Serve),
            (70_000, 50_000, token(55_000), Decision::Claim),
            // A long-lived token keeps refresh_ahead (300 s).
            (HOUR, 301_000, token(0), Decision::Serve),
            (HOUR, 299_000, token(0), Decision::Claim),
        ];
        for (ago, left, need, want) in table {
            assert_eq!(
                decide(&minted(ago, left), need, AT, &P),
                want,
                "minted {ago} ms ago, {left} ms left, {need:?}"
            );
        }
        assert_eq!(minted(1_000, 119_000).window_ms(&P), 60_000);
        assert_eq!(minted(HOUR, 301_000).window_ms(&P), 300_000);
        // Nonsense data (expiry before the refresh) falls back to refresh_ahead.
        assert_eq!(minted(-10_000, 5_000).window_ms(&P), 300_000);
        let unknown = Status {
            last_refresh_ms: None,
            ..minted(0, 100_000)
        };
        assert_eq!(unknown.window_ms(&P), 300_000);
        assert_eq!(unknown.effective(AT, &P), Expiring);
    }

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("bogus"), None);
    }
}
