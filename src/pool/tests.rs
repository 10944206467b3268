//! The pick's tables: every member condition × every cooldown, the
//! ranking, stickiness, exclusion, the standing a snapshot gives, and what
//! a snapshot does to a cooldown.

use super::*;
use crate::provider::usage::Window;
use crate::state::{Lease, LeaseTime};

const NOW: i64 = 1_000_000_000;
const HOUR: i64 = 3_600_000;
const P: Policy = Policy {
    refresh_ahead_ms: 300_000,
    backoff_min_ms: 5_000,
    backoff_max_ms: 300_000,
};
const CLOCK: i64 = 42;
const AT: Now = Now {
    wall_ms: NOW,
    lease: LeaseTime {
        clock: CLOCK,
        ms: NOW,
    },
};

fn lease(until_ms: i64) -> Option<Lease> {
    Some(Lease {
        owner: "o".into(),
        id: "L".into(),
        until: LeaseTime {
            clock: CLOCK,
            ms: until_ms,
        },
    })
}

/// The member conditions, named as in `state::tests`.
fn status(name: &str) -> Status {
    let base = Status {
        state: State::Valid,
        version: 7,
        expires_at_ms: Some(NOW + HOUR),
        has_access_token: true,
        ..Status::default()
    };
    let expiring = Status {
        expires_at_ms: Some(NOW + 60_000),
        ..base.clone()
    };
    match name {
        "valid" => base,
        "expiring" => expiring,
        "expired" => Status {
            expires_at_ms: Some(NOW - 1),
            ..base
        },
        "no-token" => Status {
            has_access_token: false,
            expires_at_ms: None,
            ..base
        },
        "valid-backoff" => Status {
            next_attempt_at_ms: Some(NOW + 10_000),
            failures: 1,
            ..expiring
        },
        "expired-backoff" => Status {
            expires_at_ms: Some(NOW - 1),
            next_attempt_at_ms: Some(NOW + 10_000),
            failures: 1,
            ..base
        },
        "refreshing" => Status {
            state: State::Refreshing,
            resume: Some(State::Valid),
            lease: lease(NOW + 30_000),
            ..expiring
        },
        "refreshing-expired" => Status {
            state: State::Refreshing,
            resume: Some(State::Valid),
            lease: lease(NOW + 30_000),
            expires_at_ms: Some(NOW - 1),
            ..base
        },
        "refreshing-rejected" => Status {
            state: State::Refreshing,
            resume: Some(State::Rejected),
            lease: lease(NOW + 30_000),
            ..expiring
        },
        "refreshing-lease-over" => Status {
            state: State::Refreshing,
            resume: Some(State::Valid),
            lease: lease(NOW - 1),
            ..expiring
        },
        "refreshing-dead" => Status {
            state: State::Refreshing,
            resume: Some(State::Dead),
            lease: lease(NOW + 30_000),
            ..expiring
        },
        "rejected" => Status {
            state: State::Rejected,
            ..base
        },
        "rejected-lease-over" => Status {
            state: State::Refreshing,
            resume: Some(State::Rejected),
            lease: lease(NOW - 1),
            ..base
        },
        "dead" => Status {
            state: State::Dead,
            dead_reason: Some("refresh_token_reused".into()),
            ..base
        },
        other => panic!("no status {other}"),
    }
}

fn member<'a>(id: &'a str, status: &'a Status) -> Member<'a> {
    Member {
        credential_id: id,
        account_id: Some("acct"),
        status,
        cooldown_until_ms: None,
        standing: Standing::Unknown,
        last_served_ms: None,
    }
}

/// Every member condition × every cooldown (none, run out, running): the
/// eligibility. A running cooldown excludes a member that is otherwise
/// fine; a dead or rejected one is reported as that first.
#[test]
fn eligibility_grid() {
    let ok: Result<(), Unfit> = Ok(());
    let cooling = Err(Unfit::CoolingDown {
        until_ms: NOW + 1_000,
    });
    let backoff = Err(Unfit::BackingOffWithoutToken {
        retry_at_ms: NOW + 10_000,
    });
    let busy = Err(Unfit::RefreshingWithoutToken);
    let dead = Err(Unfit::Dead);
    let rejected = Err(Unfit::Rejected);
    // (condition, [no cooldown, cooldown over (NOW), cooldown running])
    #[rustfmt::skip]
    let grid: [(&str, [Result<(), Unfit>; 3]); 14] = [
        ("valid",                 [ok, ok, cooling]),
        // Inside the window: serving it refreshes it first (once).
        ("expiring",              [ok, ok, cooling]),
        ("expired",               [ok, ok, cooling]),
        ("no-token",              [ok, ok, cooling]),
        // Stale-while-revalidate: a usable token during backoff is fine.
        ("valid-backoff",         [ok, ok, cooling]),
        ("expired-backoff",       [backoff, backoff, cooling]),
        // Someone is refreshing; its old token is still usable.
        ("refreshing",            [ok, ok, cooling]),
        ("refreshing-expired",    [busy, busy, cooling]),
        ("refreshing-rejected",   [rejected, rejected, rejected]),
        // A crashed owner's lease: a caller takes it over.
        ("refreshing-lease-over", [ok, ok, cooling]),
        ("refreshing-dead",       [dead, dead, dead]),
        ("rejected",              [rejected, rejected, rejected]),
        ("rejected-lease-over",   [rejected, rejected, rejected]),
        ("dead",                  [dead, dead, dead]),
    ];
    let cooldowns = [None, Some(NOW), Some(NOW + 1_000)];
    for (name, want) in grid {
        let s = status(name);
        for (cooldown, want) in cooldowns.iter().zip(want) {
            let m = Member {
                cooldown_until_ms: *cooldown,
                ..member("a", &s)
            };
            assert_eq!(
                eligible(&m, 0, AT, &P),
                want,
                "{name} cooldown {cooldown:?}"
            );
        }
    }
    // A min_ttl the token cannot meet: still eligible (refreshed first),
    // unless backing off (then the old token does not meet it either).
    let s = status("valid-backoff");
    assert_eq!(eligible(&member("a", &s), 2 * HOUR, AT, &P), backoff);
    let s = status("refreshing");
    assert_eq!(eligible(&member("a", &s), 2 * HOUR, AT, &P), busy);
}

/// Standing, from the snapshot: (windows as (used %, resets_at s), limit
/// flag) → standing at NOW.
#[test]
fn standing_table() {
    let past = NOW / 1000 - 1;
    let future = NOW / 1000 + 3600;
    let q = |windows: &[(f64, Option<i64>)], limit: Option<bool>| Quota {
        plan_type: None,
        limit_reached: limit,
        windows: windows
            .iter()
            .enumerate()
            .map(|(i, &(used_percent, resets_at))| Window {
                name: format!("w{i}"),
                used_percent,
                window_seconds: None,
                resets_at,
            })
            .collect(),
        credits: None,
    };
    let table: Vec<(Option<Quota>, Standing)> = vec![
        (None, Standing::Unknown),
        (Some(q(&[], None)), Standing::Unknown),
        (Some(q(&[], Some(false))), Standing::Unknown),
        (Some(q(&[], Some(true))), Standing::Exhausted),
        (Some(q(&[(20.0, Some(future))], None)), Standing::Left(80.0)),
        // The tightest window decides.
        (
            Some(q(&[(20.0, None), (70.0, Some(future))], None)),
            Standing::Left(30.0),
        ),
        (
            Some(q(&[(100.0, Some(future)), (10.0, None)], None)),
            Standing::Exhausted,
        ),
        (Some(q(&[(120.0, None)], None)), Standing::Exhausted),
        // A window whose reset has passed counts as unused.
        (
            Some(q(&[(100.0, Some(past)), (40.0, None)], None)),
            Standing::Left(60.0),
        ),
        (
            Some(q(&[(100.0, Some(past))], Some(true))),
            Standing::Left(100.0),
        ),
        (
            Some(q(&[(30.0, Some(future))], Some(true))),
            Standing::Exhausted,
        ),
    ];
    for (quota, want) in table {
        assert_eq!(standing(quota.as_ref(), NOW), want, "{quota:?}");
    }
}

/// The ranking: most left first, unknown between known-available and
/// exhausted, then least recently handed out (never first), then the id.
#[test]
fn ranking_table() {
    let s = status("valid");
    let m = |id: &'static str, standing: Standing, served: Option<i64>| Member {
        standing,
        last_served_ms: served,
        ..member(id, &s)
    };
    // (members, the pick)
    let table: Vec<(Vec<Member<'_>>, &str)> = vec![
        (
            vec![
                m("a", Standing::Left(10.0), None),
                m("b", Standing::Left(90.0), None),
            ],
            "b",
        ),
        (
            vec![
                m("a", Standing::Unknown, None),
                m("b", Standing::Left(1.0), Some(NOW)),
            ],
            "b",
        ),
        (
            vec![
                m("a", Standing::Exhausted, None),
                m("b", Standing::Unknown, Some(NOW)),
            ],
            "b",
        ),
        (
            vec![
                m("a", Standing::Exhausted, None),
                m("b", Standing::Exhausted, Some(NOW)),
            ],
            "a",
        ),
        // Equal quota: least recently handed out.
        (
            vec![
                m("a", Standing::Left(50.0), Some(NOW - 5)),
                m("b", Standing::Left(50.0), Some(NOW - 9)),
            ],
            "b",
        ),
        (
            vec![
                m("a", Standing::Left(50.0), Some(NOW - 5)),
                m("b", Standing::Left(50.0), None),
            ],
            "b",
        ),
        (
            vec![
                m("a", Standing::Unknown, Some(NOW)),
                m("b", Standing::Unknown, Some(NOW - 1)),
            ],
            "b",
        ),
        // Everything equal: the id.
        (
            vec![
                m("b", Standing::Unknown, None),
                m("a", Standing::Unknown, None),
            ],
            "a",
        ),
    ];
    for (members, want) in table {
        let got = pick(&members, &[], None, 0, AT, &P);
        match got {
            Pick::Chosen(c) => assert_eq!(c.credential_id, want, "{members:?}"),
            other => panic!("{members:?}: {other:?}"),
        }
    }
}

/// A better member that is unfit is passed over for a worse fit one; the
/// answer names the member and its account.
#[test]
fn unfit_members_are_passed_over_whatever_their_quota() {
    for unfit in [
        "dead",
        "rejected",
        "refreshing-rejected",
        "refreshing-expired",
        "expired-backoff",
    ] {
        let bad = status(unfit);
        let good = status("valid");
        let members = [
            Member {
                standing: Standing::Left(100.0),
                ..member("best", &bad)
            },
            Member {
                standing: Standing::Exhausted,
                account_id: Some("acct-worst"),
                ..member("worst", &good)
            },
        ];
        let want = Pick::Chosen(Choice {
            credential_id: "worst".into(),
            account_id: Some("acct-worst".into()),
            kept_sticky: false,
        });
        assert_eq!(pick(&members, &[], None, 0, AT, &P), want, "{unfit}");
    }
}

/// Sticky: the key's member while it is eligible, even if another ranks
/// higher; a new pick when it is unfit, excluded or gone.
#[test]
fn sticky_table() {
    let good = status("valid");
    let dead = status("dead");
    let a = |s| Member {
        standing: Standing::Left(10.0),
        ..member("a", s)
    };
    let b = Member {
        standing: Standing::Left(90.0),
        ..member("b", &good)
    };
    // (a's status, a's cooldown, excluded, sticky, the pick, kept)
    type Row<'a> = (
        &'a Status,
        Option<i64>,
        &'a [&'a str],
        Option<&'a str>,
        &'a str,
        bool,
    );
    let table: [Row<'_>; 6] = [
        (&good, None, &[], Some("a"), "a", true),
        (&good, None, &[], None, "b", false),
        (&good, None, &[], Some("gone"), "b", false),
        (&dead, None, &[], Some("a"), "b", false),
        (&good, Some(NOW + 1), &[], Some("a"), "b", false),
        (&good, None, &["a"], Some("a"), "b", false),
    ];
    for (s, cooldown, exclude, sticky, want, kept) in table {
        let members = [
            Member {
                cooldown_until_ms: cooldown,
                ..a(s)
            },
            b.clone(),
        ];
        match pick(&members, exclude, sticky, 0, AT, &P) {
            Pick::Chosen(c) => {
                assert_eq!(
                    (c.credential_id.as_str(), c.kept_sticky),
                    (want, kept),
                    "{sticky:?}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}

/// No member: `Empty`; none usable: each one's reason and the soonest end
/// of a cooldown or backoff (none when only dead or rejected remain).
#[test]
fn nobody_to_serve() {
    assert_eq!(pick(&[], &[], None, 0, AT, &P), Pick::Empty);
    let good = status("valid");
    assert_eq!(
        pick(&[member("a", &good)], &["a"], None, 0, AT, &P),
        Pick::Empty
    );
    let dead = status("dead");
    let backoff = status("expired-backoff");
    let members = [
        member("d", &dead),
        Member {
            cooldown_until_ms: Some(NOW + 50_000),
            ..member("c", &good)
        },
        member("b", &backoff),
    ];
    assert_eq!(
        pick(&members, &[], None, 0, AT, &P),
        Pick::NoneUsable {
            unfit: vec![
                ("d".into(), Unfit::Dead),
                (
                    "c".into(),
                    Unfit::CoolingDown {
                        until_ms: NOW + 50_000
                    }
                ),
                (
                    "b".into(),
                    Unfit::BackingOffWithoutToken {
                        retry_at_ms: NOW + 10_000
                    }
                ),
            ],
            retry_at_ms: Some(NOW + 10_000),
        }
    );
    assert_eq!(
        pick(&members[..1], &[], None, 0, AT, &P),
        Pick::NoneUsable {
            unfit: vec![("d".into(), Unfit::Dead)],
            retry_at_ms: None,
        }
    );
}

/// What a snapshot does to a cooldown: (windows as (name, used %, resets
/// at s), limit flag, the current cooldown's end) → the change.
#[test]
fn cooldown_from_snapshot_table() {
    let fetched = NOW;
    let past = NOW / 1000 - 60;
    let soon = NOW / 1000 + 600;
    let later = NOW / 1000 + 7200;
    let q = |windows: &[(&str, f64, Option<i64>)], limit: Option<bool>| Quota {
        plan_type: None,
        limit_reached: limit,
        windows: windows
            .iter()
            .map(|&(name, used_percent, resets_at)| Window {
                name: name.into(),
                used_percent,
                window_seconds: None,
                resets_at,
            })
            .collect(),
        credits: None,
    };
    let set = |until_ms: i64, reason: &str| CooldownChange::Set {
        until_ms,
        reason: reason.into(),
    };
    let clear = |reason: &str| CooldownChange::Clear {
        reason: reason.into(),
    };
    let unknown = fetched + UNKNOWN_RESET_COOLDOWN_MS;
    let none_exhausted = "a quota snapshot shows no window exhausted";
    #[rustfmt::skip]
    let table: Vec<(Quota, Option<i64>, CooldownChange)> = vec![
        // Nothing exhausted: no cooldown stays none, one is cleared.
        (q(&[("primary", 40.0, Some(soon))], None), None, CooldownChange::Keep),
        (q(&[("primary", 40.0, Some(soon))], Some(false)), Some(soon * 1000), clear(none_exhausted)),
        // Exhausted: until its reset; the latest of several exhausted.
        (q(&[("primary", 100.0, Some(soon))], Some(true)), None, set(soon * 1000, "quota window primary exhausted")),
        (q(&[("primary", 100.0, Some(soon)), ("secondary", 100.0, Some(later))], None), None,
            set(later * 1000, "quota window primary, secondary exhausted")),
        (q(&[("primary", 100.0, Some(soon)), ("secondary", 20.0, Some(later))], None), None,
            set(soon * 1000, "quota window primary exhausted")),
        // The same cooldown again: nothing written.
        (q(&[("primary", 100.0, Some(soon))], None), Some(soon * 1000), CooldownChange::Keep),
        // ... read a second or two apart ("resets in N s" across a second's
        // edge): the same reset.
        (q(&[("primary", 100.0, Some(soon + 1))], None), Some(soon * 1000), CooldownChange::Keep),
        (q(&[("primary", 100.0, Some(soon - 2))], None), Some(soon * 1000), CooldownChange::Keep),
        (q(&[("primary", 100.0, Some(soon + 3))], None), Some(soon * 1000), set((soon + 3) * 1000, "quota window primary exhausted")),
        // Reset early: the window's new reset moved; the cooldown follows.
        (q(&[("primary", 100.0, Some(later))], None), Some(soon * 1000), set(later * 1000, "quota window primary exhausted")),
        // An exhausted window whose reset has passed is no longer exhausted.
        (q(&[("primary", 100.0, Some(past))], None), Some(past * 1000), clear(none_exhausted)),
        (q(&[("primary", 100.0, Some(past))], Some(true)), Some(past * 1000), clear("every quota window has reset")),
        // No reset time known: a short cooldown, decided again next sweep.
        (q(&[("primary", 100.0, None)], None), None, set(unknown, "quota window primary exhausted")),
        (q(&[], Some(true)), None, set(unknown, "quota limit reached")),
        // The limit flag with no window at 100 %: every window not reset holds.
        (q(&[("primary", 90.0, Some(soon)), ("secondary", 50.0, Some(later))], Some(true)), None,
            set(later * 1000, "quota window primary, secondary exhausted")),
    ];
    for (quota, current, want) in table {
        assert_eq!(
            cooldown_from_snapshot(&quota, fetched, current),
            want,
            "{quota:?} {current:?}"
        );
    }
}

/// No member servable as it is: a rejected member or one refreshing
/// without a usable token is chosen (to be refreshed or waited for),
/// the better ranked first; never a dead, backing-off or cooling one;
/// a servable member always beats them.
#[test]
fn refreshable_members_only_when_none_is_servable() {
    let dead = status("dead");
    let backoff = status("expired-backoff");
    let good = status("valid");
    for (refreshable, want) in [
        ("rejected", Some("r")),
        ("refreshing-expired", Some("r")),
        ("refreshing-rejected", Some("r")),
        ("rejected-lease-over", Some("r")),
        ("refreshing-dead", None),
        ("dead", None),
    ] {
        let s = status(refreshable);
        let members = [member("d", &dead), member("b", &backoff), member("r", &s)];
        match (pick(&members, &[], None, 0, AT, &P), want) {
            (Pick::Chosen(c), Some(w)) => assert_eq!(c.credential_id, w, "{refreshable}"),
            (Pick::NoneUsable { .. }, None) => {}
            (other, _) => panic!("{refreshable}: {other:?}"),
        }
        // Cooling down: not even then.
        let cooling = [Member {
            cooldown_until_ms: Some(NOW + 50_000),
            ..member("r", &s)
        }];
        assert!(
            matches!(
                pick(&cooling, &[], None, 0, AT, &P),
                Pick::NoneUsable { .. }
            ),
            "{refreshable}"
        );
        // A servable member first, even ranked lower and not sticky.
        let both = [
            Member {
                standing: Standing::Left(100.0),
                ..member("r", &s)
            },
            Member {
                standing: Standing::Exhausted,
                ..member("g", &good)
            },
        ];
        match pick(&both, &[], Some("r"), 0, AT, &P) {
            Pick::Chosen(c) => assert_eq!(c.credential_id, "g", "{refreshable}"),
            other => panic!("{refreshable}: {other:?}"),
        }
    }
}
