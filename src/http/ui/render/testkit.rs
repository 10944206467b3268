//! Credentials for the rendering tests: every secret field filled with a
//! value the tests look for in the HTML (and must never find).

use crate::credential::{Claims, Credential, LastError, ProviderConfig};
use crate::provider::ProviderKind;
use crate::secret::Secret;
use crate::state::{LeaseTime, Now, Policy, State, Status};
use crate::view::Summary;

/// The secrets [`credential`] holds, to grep rendered pages for.
pub const SECRETS: [&str; 5] = [
    "ACCESS-SECRET-at-1",
    "REFRESH-SECRET-rt-1",
    "IDTOKEN-SECRET-it-1",
    "APIKEY-SECRET-sk-1",
    "CLIENT-SECRET-cs-1",
];

/// A codex credential `id` stored in `state` (`expiring` stored as valid
/// near its expiry), with tokens, claims holding markup, and for `dead` a
/// death by reuse.
pub fn credential(id: &str, state: &str, now_ms: i64) -> Credential {
    let stored = match state {
        "expiring" => State::Valid,
        other => State::parse(other).expect("a state"),
    };
    let expires = match state {
        "expiring" => now_ms + 60_000,
        _ => now_ms + 3_600_000,
    };
    let mut provider = ProviderConfig::new(ProviderKind::Codex);
    provider.client_secret = Some(Secret::new(SECRETS[4]));
    let dead = stored == State::Dead;
    Credential {
        id: id.to_owned(),
        provider,
        status: Status {
            state: stored,
            version: 7,
            expires_at_ms: Some(expires),
            has_access_token: true,
            lease: None,
            resume: None,
            failures: 0,
            next_attempt_at_ms: None,
            last_refresh_ms: Some(now_ms - 600_000),
            dead_reason: dead.then(|| "refresh_token_reused".to_owned()),
        },
        access_token: Some(Secret::new(SECRETS[0])),
        refresh_token: Secret::new(SECRETS[1]),
        id_token: Some(Secret::new(SECRETS[2])),
        claims: Claims {
            account_id: Some("acct-<b>1</b>".into()),
            email: Some("o'brien@example.com".into()),
            plan_type: Some("pro".into()),
            ..Claims::default()
        },
        last_error: Some(LastError {
            code: "refresh_token_reused".into(),
            message: "reused <script>alert(1)</script>".into(),
            at_ms: now_ms - 1000,
        })
        .filter(|_| dead || state == "valid"),
        api_key: Some(Secret::new(SECRETS[3])),
        created_ms: now_ms - 86_400_000,
        updated_ms: now_ms,
        failing_since_ms: None,
    }
}

/// `c`'s summary at `now_ms`, shown in `state` (a `refreshing` row's
/// lease is not modelled here).
pub fn summary_of<'a>(c: &'a Credential, now_ms: i64, state: &'static str) -> Summary<'a> {
    let now = Now {
        wall_ms: now_ms,
        lease: LeaseTime { clock: 1, ms: 0 },
    };
    let mut s = Summary::new(c, now, &Policy::default());
    s.state = state;
    s
}
