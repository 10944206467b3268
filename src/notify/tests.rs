//! The notification core's tables: which transitions need a human, the
//! ids that make them deduplicate, the signature, the retry schedule, and
//! that no payload carries a secret.

use super::*;
use crate::credential::{Claims, ProviderConfig};
use crate::provider::ProviderKind;
use crate::secret::Secret;
use crate::state::{apply, LeaseTime, Now, Policy, Status};

const NOW: i64 = 1_000_000_000;
const MIN30: i64 = 30 * 60_000;

fn cred(status: Status, failing_since_ms: Option<i64>, last_error_at: Option<i64>) -> Credential {
    Credential {
        id: "c1".into(),
        provider: ProviderConfig::new(ProviderKind::Codex),
        status,
        access_token: Some(Secret::new("at-SECRET".to_owned())),
        refresh_token: Secret::new("rt-SECRET".to_owned()),
        id_token: None,
        claims: Claims {
            account_id: Some("acct-1".into()),
            ..Claims::default()
        },
        last_error: last_error_at.map(|at_ms| LastError {
            code: "http_503".into(),
            message: "upstream answered 503".into(),
            at_ms,
        }),
        api_key: None,
        created_ms: 0,
        updated_ms: 0,
        failing_since_ms,
    }
}

fn refreshing(resume: State, failures: u32) -> Status {
    Status {
        state: State::Refreshing,
        version: 4,
        resume: Some(resume),
        lease: Some(crate::state::Lease {
            owner: "o".into(),
            id: "L".into(),
            until: LeaseTime {
                clock: 1,
                ms: NOW + 30_000,
            },
        }),
        failures,
        has_access_token: true,
        expires_at_ms: Some(NOW + 60_000),
        ..Status::default()
    }
}

const AT: Now = Now {
    wall_ms: NOW,
    lease: LeaseTime { clock: 1, ms: NOW },
};

/// (the row before, the owner's event) → the notice's id, or none.
#[test]
fn transitions_that_need_a_human() {
    let error = LastError {
        code: "http_503".into(),
        message: "upstream answered 503".into(),
        at_ms: NOW,
    };
    let permanent = |code: &str| Event::FailPermanent {
        lease_id: "L".into(),
        code: code.into(),
    };
    let transient = Event::FailTransient {
        lease_id: "L".into(),
        retry_after_ms: None,
    };
    let succeed = Event::Succeed {
        lease_id: "L".into(),
    };
    #[rustfmt::skip]
    let table: Vec<(&str, Credential, Event, Option<&str>)> = vec![
        ("dies", cred(refreshing(State::Valid, 0), None, None), permanent("invalid_grant"), Some("dead:c1:v5")),
        ("reuse", cred(refreshing(State::Valid, 2), Some(NOW - 5), None), permanent("refresh_token_reused"), Some("reuse_detected:c1:v5")),
        // A first failure: not yet failing long.
        ("first failure", cred(refreshing(State::Valid, 0), None, None), transient.clone(), None),
        ("failing 29 min", cred(refreshing(State::Valid, 3), Some(NOW - MIN30 + 60_000), Some(NOW - 1)), transient.clone(), None),
        // Past the threshold: one notice per run (its id is the run's start).
        ("failing 30 min", cred(refreshing(State::Valid, 4), Some(NOW - MIN30), Some(NOW - 1)), transient.clone(), Some(&*Box::leak(format!("failing:c1:{}", NOW - MIN30).into_boxed_str()))),
        // A success after a notified run, and after a death.
        ("recovers", cred(refreshing(State::Valid, 5), Some(NOW - 2 * MIN30), Some(NOW - MIN30)), succeed.clone(), Some(&*Box::leak(format!("recovered:c1:{}", NOW - 2 * MIN30).into_boxed_str()))),
        ("revived", cred(refreshing(State::Dead, 0), None, None), succeed.clone(), Some("recovered:c1:v5")),
        // A success after failures nobody was told of: nothing to say.
        ("quiet recovery", cred(refreshing(State::Valid, 2), Some(NOW - 60_000), Some(NOW - 1)), succeed.clone(), None),
        ("plain refresh", cred(refreshing(State::Valid, 0), None, None), succeed, None),
    ];
    for (name, before, event, want) in table {
        let t = apply(&before.status, &event, AT, &Policy::default()).expect(name);
        let err = matches!(
            event,
            Event::FailTransient { .. } | Event::FailPermanent { .. }
        )
        .then_some(&error);
        let got = on_transition(&before, &event, &t, err, NOW, MIN30);
        assert_eq!(got.as_ref().map(|n| n.event_id.as_str()), want, "{name}");
        if let Some(n) = got {
            let body: serde_json::Value = serde_json::from_str(&n.payload).unwrap();
            assert_eq!(body["id"], n.event_id.as_str(), "{name}");
            assert_eq!(body["kind"], n.kind.as_str(), "{name}");
            assert_eq!(body["credential_id"], "c1");
            assert_eq!(body["account_id"], "acct-1");
            assert!(!n.payload.contains("SECRET"), "{name}: {}", n.payload);
            if n.kind == "dead" || n.kind == "reuse_detected" {
                assert_eq!(body["fix"], "tokenwarden login codex --id c1", "{name}");
                assert!(body["reason"].as_str().is_some());
            }
        }
    }
}

/// RFC 4231 test case 2, in the header's form.
#[test]
fn the_signature_is_hex_hmac_sha256() {
    assert_eq!(
        signature(b"Jefe", b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

/// 5 s doubling to an hour, then given up after MAX_ATTEMPTS.
#[test]
fn retries_back_off_then_give_up() {
    let table = [
        (1, Some(5_000)),
        (2, Some(10_000)),
        (3, Some(20_000)),
        (10, Some(2_560_000)),
        (11, Some(3_600_000)),
        (29, Some(3_600_000)),
        (30, None),
    ];
    for (attempts, want) in table {
        assert_eq!(retry_delay_ms(attempts, 5_000), want, "{attempts}");
    }
}

/// Quota notices: one per reset time (exhausted), one per clear (reset).
#[test]
fn quota_notices() {
    let c = cred(refreshing(State::Valid, 0), None, None);
    let n = on_quota_cooldown(
        &c,
        true,
        Some(NOW + 5_000),
        "quota window primary exhausted",
        NOW,
    );
    assert_eq!(n.event_id, format!("quota_exhausted:c1:{}", NOW + 5_000));
    let n = on_quota_cooldown(
        &c,
        false,
        None,
        "a quota snapshot shows no window exhausted",
        NOW,
    );
    assert_eq!(
        (n.kind.as_str(), n.event_id),
        ("quota_reset", format!("quota_reset:c1:{NOW}"))
    );
    assert!(!n.payload.contains("SECRET"));
}
