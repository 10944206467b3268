//! The PostgreSQL backend (issue 14) on a real server started by the tests
//! (common/pg.rs): several processes and boxes on one database, database
//! faults, and the server's clock deciding leases. The invariant suite runs
//! on it too (tests/invariants.rs, `postgres::` half).

use std::process::Stdio;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::pg;
use crate::common::tw::{code, text, Backend, Env, Tuning};
use tokenwarden::state::State;

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// The basics on PostgreSQL: import, token, a forced refresh that rotates,
/// reject, list, events, delete — through the library and the binary.
#[test]
fn the_library_and_the_binary_work_on_postgres() {
    let Some(env) = Env::on(Backend::Postgres) else { return };
    let old = env.login("a", 3600);
    let w = env.warden();
    let g = w.token("a", Duration::ZERO).unwrap();
    assert_eq!(g.access_token.expose(), old.access_token);
    let out = env.run(&["token", "a"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), old.access_token);
    let fresh = w.reject("a", &old.access_token).unwrap();
    assert_ne!(fresh.access_token.expose(), old.access_token);
    let family = env.fake.family_state("a");
    let row = w.get("a").unwrap();
    assert_eq!(row.refresh_token.expose(), family.current_refresh_token);
    assert_eq!(row.status.state, State::Valid);
    let out = env.run(&["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let events = w.store().events("a", None, None).unwrap();
    let reasons: Vec<_> = events.iter().map(|e| e.to.as_str()).collect();
    assert_eq!(reasons.first(), Some(&"valid"));
    assert!(reasons.contains(&"refreshing"), "{reasons:?}");
    let out = env.run(&["delete", "a"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(w.store().get("a").unwrap().is_none());
    assert_eq!(env.fake.stats().token_requests, 1);
}
